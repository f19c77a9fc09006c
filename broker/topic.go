package broker

import (
	"errors"
	"strings"
)

// topicKind is what a device topic is for.
type topicKind uint8

const (
	kindEvents   topicKind = iota + 1 // telemetry, device → cloud
	kindState                         // device state, device → cloud
	kindConfig                        // configuration, cloud → device
	kindCommands                      // commands, cloud → device
)

// deviceTopic is a parsed Cloud IoT Core style topic.
type deviceTopic struct {
	Device    string
	Kind      topicKind
	Subfolder string // events/commands subfolder, "" if none; "#" for the commands wildcard filter
}

// parseTopic parses a topic name (filter=false: a PUBLISH topic) or a
// subscription filter (filter=true). Accepted:
//
//	/devices/D/events            /devices/D/events/<sub/folders>
//	/devices/D/state             /devices/D/config
//	/devices/D/commands          /devices/D/commands/<sub/folders>   /devices/D/commands/#  (filter only)
//
// Invariants (checked by FuzzParseTopic): a parsed topic has a valid device
// id; formatting it back gives the input; wildcards appear only as the final
// "#" of a commands filter; subfolders have no empty levels.
func parseTopic(s string, filter bool) (deviceTopic, bool) {
	rest, ok := strings.CutPrefix(s, "/devices/")
	if !ok {
		return deviceTopic{}, false
	}
	dev, rest, ok := strings.Cut(rest, "/")
	if !ok || validDeviceID(dev) != nil {
		return deviceTopic{}, false
	}
	kindStr, sub, hasSub := strings.Cut(rest, "/")
	t := deviceTopic{Device: dev}
	switch kindStr {
	case "events":
		t.Kind = kindEvents
	case "state":
		t.Kind = kindState
	case "config":
		t.Kind = kindConfig
	case "commands":
		t.Kind = kindCommands
	default:
		return deviceTopic{}, false
	}
	if !hasSub {
		return t, true
	}
	if t.Kind != kindEvents && t.Kind != kindCommands {
		return deviceTopic{}, false
	}
	if filter && t.Kind == kindCommands && sub == "#" {
		t.Subfolder = sub
		return t, true
	}
	if !validSubfolder(sub) {
		return deviceTopic{}, false
	}
	t.Subfolder = sub
	return t, true
}

func (t deviceTopic) String() string {
	var k string
	switch t.Kind {
	case kindEvents:
		k = "events"
	case kindState:
		k = "state"
	case kindConfig:
		k = "config"
	case kindCommands:
		k = "commands"
	}
	s := "/devices/" + t.Device + "/" + k
	if t.Subfolder != "" {
		s += "/" + t.Subfolder
	}
	return s
}

func validSubfolder(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for _, level := range strings.Split(s, "/") {
		if level == "" {
			return false
		}
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+' || c == '#' || c < 0x20 || c == 0x7f:
			return false
		}
	}
	return true
}

var errBadClientID = errors.New("client id is neither a device id nor projects/P/locations/L/registries/R/devices/D")

// validDeviceID accepts 1–128 characters of [A-Za-z0-9._~%-] starting with a
// letter or digit: Cloud IoT Core's device id alphabet minus '+', which MQTT
// reserves as a wildcard and so cannot appear in a device's topics.
func validDeviceID(id string) error {
	if id == "" || len(id) > 128 {
		return errBadClientID
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return errBadClientID
		}
		if !alnum && c != '.' && c != '_' && c != '~' && c != '%' && c != '-' {
			return errBadClientID
		}
	}
	return nil
}

// deviceFromClientID returns the device id of an MQTT client id: either the
// device id itself or a Cloud IoT Core path
// projects/P/locations/L/registries/R/devices/D.
func deviceFromClientID(cid string) (string, error) {
	if !strings.Contains(cid, "/") {
		if err := validDeviceID(cid); err != nil {
			return "", err
		}
		return cid, nil
	}
	p := strings.Split(cid, "/")
	if len(p) != 8 || p[0] != "projects" || p[2] != "locations" || p[4] != "registries" || p[6] != "devices" ||
		p[1] == "" || p[3] == "" || p[5] == "" {
		return "", errBadClientID
	}
	if err := validDeviceID(p[7]); err != nil {
		return "", err
	}
	return p[7], nil
}
