package main

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/internal/bus"
)

// mosquittoPub runs mosquitto_pub with args and returns its exit code and
// combined output.
func (p *pipeline) mosquittoPub(args ...string) (int, string) {
	all := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(p.mqttPort), "-q", "1"}, args...)
	out, err := exec.Command("mosquitto_pub", all...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		p.t.Fatalf("mosquitto_pub: %v", err)
	}
	return 0, string(out)
}

// TestBadInputGetsDeliberateAnswers sends every kind of bad input through a
// real MQTT client, checks each answer, and checks that a well-behaved
// device's data still arrives exactly.
func TestBadInputGetsDeliberateAnswers(t *testing.T) {
	p := newPipeline(t)
	p.start("--max-payload", "65536")
	good, victim := p.createDevice("good"), p.createDevice("victim")

	refusals := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
	}{
		{"wrong token", []string{"-i", "good", "-u", "good", "-P", "itk_wrong", "-t", "/devices/good/events", "-m", `{"t": 1}`},
			4, "bad user name or password"},
		{"unknown device", []string{"-i", "stranger", "-u", "stranger", "-P", good, "-t", "/devices/stranger/events", "-m", `{"t": 1}`},
			4, "bad user name or password"},
		{"no password", []string{"-i", "good", "-u", "good", "-t", "/devices/good/events", "-m", `{"t": 1}`},
			4, "bad user name or password"},
		{"another device's token", []string{"-i", "victim", "-u", "victim", "-P", good, "-t", "/devices/victim/events", "-m", `{"t": 1}`},
			4, "bad user name or password"},
		// MQTT 3.1.1 has no negative PUBACK: the broker closes the connection.
		{"other device's topic, MQTT 3.1.1", []string{"-i", "good", "-u", "good", "-P", good, "-t", "/devices/victim/events", "-m", `{"t": 1}`},
			2, "protocol error"},
		// MQTT 5: PUBACK reason 0x87, the connection stays.
		{"other device's topic, MQTT 5", []string{"-V", "mqttv5", "-i", "good", "-u", "good", "-P", good, "-t", "/devices/victim/events", "-m", `{"t": 1}`},
			0, "Not authorized"},
		{"oversized payload, MQTT 5", []string{"-V", "mqttv5", "-i", "good", "-u", "good", "-P", good, "-t", "/devices/good/events", "-m", strings.Repeat("x", 70000)},
			4, "not currently connected"},
	}
	for _, tc := range refusals {
		code, out := p.mosquittoPub(tc.args...)
		if code != tc.wantCode || !strings.Contains(out, tc.wantOut) {
			t.Errorf("%s: mosquitto_pub exit %d, output %q; want exit %d and %q", tc.name, code, out, tc.wantCode, tc.wantOut)
		}
	}

	// Payloads the broker accepts (it forwards bytes as they are) and the
	// processor cannot use: each becomes a dead letter with its reason.
	unusable := map[string]string{
		`{"temperature": 21.5`:                        "malformed_json",
		`[1, 2, 3]`:                                   "malformed_json",
		`{"status": "ok", "door": true}`:              "no_numeric_values",
		`{"ts": "yesterday", "temperature": 20}`:      "bad_timestamp",
		`{"ts": 99999999999999999, "temperature": 1}`: "bad_timestamp",
	}
	for payload := range unusable {
		if code, out := p.mosquittoPub("-i", "victim", "-u", "victim", "-P", victim, "-t", "/devices/victim/events", "-m", payload); code != 0 {
			t.Fatalf("publish %q: exit %d: %s", payload, code, out)
		}
	}

	// Meanwhile a good device keeps flowing, exactly.
	base := time.Now().UTC().Add(-time.Minute)
	rs := fleetReadings([]string{"good"}, base, 20, 500*time.Millisecond)
	publishAll(t, p, map[string]string{"good": good}, payloads(rs))
	cl := p.client()
	from, to := base.Add(-time.Minute), time.Now().Add(time.Hour)
	waitAll(t, cl, rs, from, to)
	checkWindows(t, cl, rs, 10*time.Second, from, to)

	dls := p.deadLetters(t, len(unusable))
	got := map[string]string{}
	for _, r := range dls {
		got[string(r.Value)] = bus.Header(r, bus.HeaderReason)
		if d := bus.Header(r, bus.HeaderDevice); d != "victim" {
			t.Errorf("dead letter %q: device header %q, want victim", r.Value, d)
		}
	}
	for payload, reason := range unusable {
		if got[payload] != reason {
			t.Errorf("payload %q: dead-letter reason %q, want %q", payload, got[payload], reason)
		}
	}
	if len(dls) != len(unusable) {
		t.Errorf("%d dead letters, want %d: %v", len(dls), len(unusable), got)
	}
}
