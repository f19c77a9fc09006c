package processor

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/processor/window"
)

var recv = time.Date(2026, 3, 1, 15, 0, 0, 0, time.UTC)

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		topic   string
		noRecv  bool
		reason  string
		time    time.Time
		values  []window.Value
		ignored int
	}{
		{name: "flat", payload: `{"t":21.5,"h":40}`, time: recv, values: []window.Value{{Metric: "h", Value: 40}, {Metric: "t", Value: 21.5}}},
		{name: "nested", payload: `{"env":{"t":1,"deep":{"x":-2}},"s":"on","b":true,"a":[1],"n":null}`, time: recv,
			values: []window.Value{{Metric: "env.deep.x", Value: -2}, {Metric: "env.t", Value: 1}}, ignored: 4},
		{name: "collision keeps first in key order", payload: `{"a":{"b":2},"a.b":1}`, time: recv,
			values: []window.Value{{Metric: "a.b", Value: 2}}, ignored: 1},
		{name: "ts seconds", payload: `{"ts":1772377200,"t":1}`, time: recv, values: []window.Value{{Metric: "t", Value: 1}}},
		{name: "ts fractional seconds", payload: `{"ts":1772377200.25,"t":1}`, time: recv.Add(250 * time.Millisecond), values: []window.Value{{Metric: "t", Value: 1}}},
		{name: "ts milliseconds", payload: `{"ts":1772377200123,"t":1}`, time: recv.Add(123 * time.Millisecond), values: []window.Value{{Metric: "t", Value: 1}}},
		{name: "ts threshold is ms", payload: `{"ts":100000000000,"t":1}`, time: time.UnixMilli(1e11).UTC(), values: []window.Value{{Metric: "t", Value: 1}}},
		{name: "ts below threshold is s", payload: `{"ts":99999999999,"t":1}`, reason: ReasonBadTimestamp},
		{name: "ts rfc3339", payload: `{"ts":"2026-03-01T16:00:00.000000001+01:00","t":1}`, time: recv.Add(time.Nanosecond), values: []window.Value{{Metric: "t", Value: 1}}},
		{name: "ts bad string", payload: `{"ts":"yesterday","t":1}`, reason: ReasonBadTimestamp},
		{name: "ts bool", payload: `{"ts":true,"t":1}`, reason: ReasonBadTimestamp},
		{name: "ts negative", payload: `{"ts":-1,"t":1}`, reason: ReasonBadTimestamp},
		{name: "no ts no header", payload: `{"t":1}`, noRecv: true, reason: ReasonBadTimestamp},
		{name: "not json", payload: `hello`, reason: ReasonMalformedJSON},
		{name: "array", payload: `[1,2]`, reason: ReasonMalformedJSON},
		{name: "null", payload: `null`, reason: ReasonMalformedJSON},
		{name: "empty", payload: ``, reason: ReasonMalformedJSON},
		{name: "trailing", payload: `{"t":1}{"t":2}`, reason: ReasonMalformedJSON},
		{name: "truncated", payload: `{"t":1`, reason: ReasonMalformedJSON},
		{name: "no numbers", payload: `{"s":"x","b":false}`, reason: ReasonNoNumericValues},
		{name: "empty object", payload: `{}`, reason: ReasonNoNumericValues},
		{name: "huge number ignored", payload: `{"t":1e999,"h":1}`, time: recv, values: []window.Value{{Metric: "h", Value: 1}}, ignored: 1},
		{name: "bare number on events subfolder", payload: ` 21.5 `, topic: "/devices/d1/events/env/t", time: recv, values: []window.Value{{Metric: "env.t", Value: 21.5}}},
		{name: "bare number on events", payload: `21.5`, topic: "/devices/d1/events", reason: ReasonMalformedJSON},
		{name: "bare non-json number", payload: `0x10`, topic: "/devices/d1/events/t", reason: ReasonMalformedJSON},
		{name: "bare Inf", payload: `Inf`, topic: "/devices/d1/events/t", reason: ReasonMalformedJSON},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := decode([]byte(tt.payload), tt.topic, recv, !tt.noRecv)
			if tt.reason != "" {
				if err == nil || err.reason != tt.reason {
					t.Fatalf("err = %v, want reason %s", err, tt.reason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !d.time.Equal(tt.time) || !slices.Equal(d.values, tt.values) || d.ignored != tt.ignored {
				t.Fatalf("got %v %v ignored %d, want %v %v ignored %d", d.time, d.values, d.ignored, tt.time, tt.values, tt.ignored)
			}
		})
	}
}

func TestParseMeta(t *testing.T) {
	cp := window.Checkpoint{Offset: 7, Next: 12, Watermark: recv.Add(time.Nanosecond)}
	if got := parseMeta(7, formatMeta(cp)); got != cp {
		t.Fatalf("round trip %+v", got)
	}
	none := window.Checkpoint{Offset: 7, Next: 7}
	if got := parseMeta(7, formatMeta(none)); got != none {
		t.Fatalf("no watermark %+v", got)
	}
	for _, m := range []string{"", "member-1", "iotpipe1 w=x n=9", "iotpipe1 w=1 n=3"} {
		if got := parseMeta(7, m); got != none {
			t.Errorf("%q: %+v", m, got)
		}
	}
}

// FuzzDecode checks decode's invariants: no panic; on success at least one
// value, metric names non-empty, unique and sorted, values finite, time in
// 1970..2106; on failure a known reason.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"t":1}`, `{"env":{"t":1},"ts":1772377200}`, `{"ts":"2026-03-01T15:00:00Z","a":[1]}`, `12.5`, `{"a.b":1,"a":{"b":2}}`} {
		f.Add([]byte(s), "/devices/d/events/x", true)
	}
	f.Fuzz(func(t *testing.T, payload []byte, topic string, haveRecv bool) {
		d, err := decode(payload, topic, recv, haveRecv)
		if err != nil {
			switch err.reason {
			case ReasonMalformedJSON, ReasonNoNumericValues, ReasonBadTimestamp:
				return
			}
			t.Fatalf("unknown reason %q", err.reason)
		}
		if len(d.values) == 0 {
			t.Fatal("success without values")
		}
		for i, v := range d.values {
			if v.Metric == "" || math.IsNaN(v.Value) || math.IsInf(v.Value, 0) {
				t.Fatalf("bad value %+v", v)
			}
			if i > 0 && strings.Compare(d.values[i-1].Metric, v.Metric) >= 0 {
				t.Fatalf("not sorted/unique: %v", d.values)
			}
		}
		if d.time.Before(minEventTime) || d.time.After(maxEventTime) {
			t.Fatalf("time %v out of range", d.time)
		}
	})
}
