package main

// Config and state, as Cloud IoT Core's /devices/ID/config and
// /devices/ID/state: kept apart from the telemetry loop in main.go.

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// configState applies the config iotpipe delivers and reports state.
// iotpipe sends the latest config when the device subscribes (an empty
// payload while none was set: version 1 is empty, as in Cloud IoT Core) and
// every new version while it is connected, at QoS 1; Paho acknowledges it
// after the handler returns, which iotpipe records as the version's
// device_ack_time.
type configState struct {
	state      string
	stateSet   bool
	waitConfig string
	waitSet    bool
	timeout    time.Duration

	mu      sync.Mutex
	config  []byte // the applied config
	changed chan struct{}
}

// newConfigState registers the config and state flags on fs.
func newConfigState(fs *flag.FlagSet) *configState {
	cs := &configState{changed: make(chan struct{})}
	fs.Func("state", "publish this string once to /devices/ID/state (QoS 1) after connecting",
		func(v string) error { cs.state, cs.stateSet = v, true; return nil })
	fs.Func("wait-config", "before exiting, wait until a config with exactly this data arrived; fail after --config-timeout",
		func(v string) error { cs.waitConfig, cs.waitSet = v, true; return nil })
	fs.DurationVar(&cs.timeout, "config-timeout", 30*time.Second, "how long --wait-config waits")
	return cs
}

// onConfig applies a config message.
func (cs *configState) onConfig(m mqtt.Message) {
	cs.mu.Lock()
	cs.config = bytes.Clone(m.Payload())
	close(cs.changed)
	cs.changed = make(chan struct{})
	cs.mu.Unlock()
	shown := string(m.Payload())
	if shown == "" {
		shown = "(empty)"
	}
	log.Printf("config applied (QoS %d): %s", m.Qos(), shown)
}

// publishState reports the state, waiting for its PUBACK.
func (cs *configState) publishState(cl mqtt.Client, deviceID string, timeout time.Duration) error {
	if !cs.stateSet {
		return nil
	}
	tok := cl.Publish("/devices/"+deviceID+"/state", 1, false, cs.state)
	if !tok.WaitTimeout(timeout) {
		return fmt.Errorf("state: no PUBACK within %v", timeout)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	log.Printf("state reported: %s", cs.state)
	return nil
}

// waitForConfig waits until the config --wait-config names was applied.
func (cs *configState) waitForConfig() error {
	if !cs.waitSet {
		return nil
	}
	deadline := time.After(cs.timeout)
	for {
		cs.mu.Lock()
		have, ch := cs.config, cs.changed
		cs.mu.Unlock()
		if string(have) == cs.waitConfig {
			log.Printf("config %q received", cs.waitConfig)
			return nil
		}
		select {
		case <-ch:
		case <-deadline:
			return fmt.Errorf("config %q not received within %v (have %q)", cs.waitConfig, cs.timeout, have)
		}
	}
}
