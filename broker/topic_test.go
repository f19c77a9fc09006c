package broker

import (
	"strings"
	"testing"
)

func TestParseTopic(t *testing.T) {
	for _, tc := range []struct {
		in     string
		filter bool
		ok     bool
		want   deviceTopic
	}{
		{"/devices/d1/events", false, true, deviceTopic{"d1", kindEvents, ""}},
		{"/devices/d1/events/temp", false, true, deviceTopic{"d1", kindEvents, "temp"}},
		{"/devices/d1/events/a/b/c", false, true, deviceTopic{"d1", kindEvents, "a/b/c"}},
		{"/devices/d1/state", false, true, deviceTopic{"d1", kindState, ""}},
		{"/devices/d1/config", true, true, deviceTopic{"d1", kindConfig, ""}},
		{"/devices/d1/commands/#", true, true, deviceTopic{"d1", kindCommands, "#"}},
		{"/devices/d1/commands", true, true, deviceTopic{"d1", kindCommands, ""}},
		{"/devices/d1/commands/reboot", true, true, deviceTopic{"d1", kindCommands, "reboot"}},
		{"/devices/d1/commands/#", false, false, deviceTopic{}}, // wildcard in a topic name
		{"/devices/d1/events/#", true, false, deviceTopic{}},
		{"/devices/d1/events/+", false, false, deviceTopic{}},
		{"/devices/+/events", true, false, deviceTopic{}},
		{"/devices/d1/events/", false, false, deviceTopic{}},
		{"/devices/d1/events//x", false, false, deviceTopic{}},
		{"/devices/d1/state/x", false, false, deviceTopic{}},
		{"/devices/d1/config/x", true, false, deviceTopic{}},
		{"/devices/d1", false, false, deviceTopic{}},
		{"/devices//events", false, false, deviceTopic{}},
		{"devices/d1/events", false, false, deviceTopic{}},
		{"/devices/d1/telemetry", false, false, deviceTopic{}},
		{"/devices/-d/events", false, false, deviceTopic{}},
		{"", false, false, deviceTopic{}},
		{"/devices/" + strings.Repeat("a", 129) + "/events", false, false, deviceTopic{}},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, ok := parseTopic(tc.in, tc.filter)
			if ok != tc.ok || got != tc.want {
				t.Fatalf("parseTopic(%q, %v) = %+v, %v; want %+v, %v", tc.in, tc.filter, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestDeviceFromClientID(t *testing.T) {
	for in, want := range map[string]string{
		"dev-1": "dev-1",
		"projects/p/locations/us-central1/registries/r/devices/dev-1": "dev-1",
		"": "",
		"projects/p/locations/l/registries/r/devices/": "",
		"projects/p/locations/l/registries/r/device/d": "",
		"projects//locations/l/registries/r/devices/d": "",
		"a/b":   "",
		"dev+1": "",
		"projects/p/locations/l/registries/r/devices/d/x": "",
	} {
		got, err := deviceFromClientID(in)
		if got != want || (err == nil) != (want != "") {
			t.Errorf("deviceFromClientID(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// FuzzParseTopic checks the parser's invariants: it never panics; a parsed
// topic has a valid device id and formats back to its input; wildcards only
// appear as a commands filter's final "#"; an accepted topic name is
// accepted as a filter too, with the same meaning.
func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{"/devices/d1/events", "/devices/d1/events/a/b", "/devices/d1/state",
		"/devices/d1/config", "/devices/d1/commands/#", "/devices/+/events", "/devices/d1/events//"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, s string, filter bool) {
		got, ok := parseTopic(s, filter)
		if !ok {
			if got != (deviceTopic{}) {
				t.Fatalf("rejected %q but returned %+v", s, got)
			}
			return
		}
		if validDeviceID(got.Device) != nil {
			t.Fatalf("%q: invalid device %q accepted", s, got.Device)
		}
		if got.String() != s {
			t.Fatalf("%q round-trips to %q", s, got.String())
		}
		if strings.ContainsAny(s, "+") || (strings.Contains(s, "#") && !(filter && got.Kind == kindCommands && got.Subfolder == "#")) {
			t.Fatalf("%q: wildcard accepted", s)
		}
		if !filter {
			if g2, ok2 := parseTopic(s, true); !ok2 || g2 != got {
				t.Fatalf("%q accepted as name but not as the same filter", s)
			}
		}
	})
}
