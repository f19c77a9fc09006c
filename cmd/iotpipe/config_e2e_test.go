package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotpipe/iotpipe/api"
)

// checkConfigStateCLI: config and state through the built binary. A Paho
// 3.1.1 device subscribed to its config gets the empty version 1 at once and
// the version set with `iotpipe devices config` while connected; its PUBACK
// shows up as device_ack_time in `devices config`; a stale
// --version-to-update fails with config_version_mismatch; a state published
// with mosquitto_pub is what `devices state` prints, and the device's
// last_state_time is set.
func checkConfigStateCLI(t *testing.T, p *pipeline) {
	t.Helper()
	const dev = "cfg-e2e"
	tok := p.createDevice(dev)
	got := make(chan []byte, 8)
	opts := mqtt.NewClientOptions().AddBroker(fmt.Sprintf("tcp://127.0.0.1:%d", p.mqttPort)).
		SetClientID(dev).SetUsername("unused").SetPassword(tok).SetProtocolVersion(4).SetAutoReconnect(false)
	cl := mqtt.NewClient(opts)
	if ct := cl.Connect(); !ct.WaitTimeout(15*time.Second) || ct.Error() != nil {
		t.Fatalf("connect: %v", ct.Error())
	}
	defer cl.Disconnect(0)
	st := cl.Subscribe("/devices/"+dev+"/config", 1, func(_ mqtt.Client, m mqtt.Message) { got <- m.Payload() })
	if !st.WaitTimeout(15*time.Second) || st.Error() != nil {
		t.Fatalf("subscribe: %v", st.Error())
	}
	next := func() []byte {
		t.Helper()
		select {
		case b := <-got:
			return b
		case <-time.After(15 * time.Second):
			t.Fatal("no config message")
			return nil
		}
	}
	if b := next(); len(b) != 0 {
		t.Fatalf("config on subscribe %q, want the empty version 1", b)
	}
	out, err := p.cli("devices", "config", dev, "--data", "mode=eco", "--version-to-update", "1")
	if err != nil {
		t.Fatal(err)
	}
	var c api.DeviceConfig
	if err := json.Unmarshal([]byte(out), &c); err != nil || c.Version != 2 || string(c.BinaryData) != "mode=eco" {
		t.Fatalf("devices config --data printed %s (%v)", out, err)
	}
	if b := next(); string(b) != "mode=eco" {
		t.Fatalf("config while subscribed %q, want mode=eco", b)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err = p.cli("devices", "config", dev)
		if err != nil {
			t.Fatal(err)
		}
		c = api.DeviceConfig{}
		if json.Unmarshal([]byte(out), &c) == nil && c.Version == 2 && !c.DeviceAckTime.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("device_ack_time never set: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := p.cli("devices", "config", dev, "--data", "late", "--version-to-update", "1"); err == nil ||
		!strings.Contains(err.Error(), "config_version_mismatch") {
		t.Fatalf("stale --version-to-update: %v, want config_version_mismatch", err)
	}
	out, err = p.cli("devices", "config-versions", dev)
	if err != nil {
		t.Fatal(err)
	}
	var vs api.ConfigVersions
	if err := json.Unmarshal([]byte(out), &vs); err != nil || len(vs.DeviceConfigs) != 2 || vs.DeviceConfigs[0].Version != 2 {
		t.Fatalf("config-versions printed %s (%v)", out, err)
	}

	if _, err := p.cli("devices", "state", dev); err == nil || !strings.Contains(err.Error(), "no_state") {
		t.Fatalf("state before any: %v, want no_state", err)
	}
	state := `{"firmware":"2.1","mode":"eco"}`
	if err := p.publish(dev, tok, "/devices/"+dev+"/state", []string{state}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		out, err = p.cli("devices", "state", dev)
		if err == nil && strings.Contains(out, base64.StdEncoding.EncodeToString([]byte(state))) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("devices state: %s %v", out, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, err = p.cli("devices", "get", dev)
	var d api.Device
	if err != nil || json.Unmarshal([]byte(out), &d) != nil || d.LastStateTime.IsZero() || d.LastConfigAckTime.IsZero() || d.Config.Version != 2 {
		t.Fatalf("devices get: %s %v", out, err)
	}
}
