package processor

import (
	"math"
	"slices"
	"strconv"
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
		{name: "fast path ws and kinds", payload: "{ \"a\" : -0.5e1 ,\n\"b\":{\"c\":0,\"d\":\"x\u00e9\"},\"e\":null,\"f\":false}", time: recv,
			values: []window.Value{{Metric: "a", Value: -5}, {Metric: "b.c", Value: 0}}, ignored: 3},
		{name: "duplicate key last wins", payload: `{"a":1,"a":"x","b":2}`, time: recv, values: []window.Value{{Metric: "b", Value: 2}}, ignored: 1},
		{name: "leading zero", payload: `{"a":01}`, reason: ReasonMalformedJSON},
		{name: "unnamed", payload: `{"":1,"b":2}`, time: recv, values: []window.Value{{Metric: "b", Value: 2}}, ignored: 1},
		// SenML (RFC 8428)
		{name: "senml rfc example", payload: `[{"bn":"urn:dev:ow:10e2073a01080063:","bt":1.320067464e+09,"bu":"%RH","v":20},
			{"u":"lon","v":24.30621},{"u":"lat","v":60.07965},{"t":60,"v":20.3},{"u":"lon","t":60,"v":24.30622},
			{"u":"lat","t":60,"v":60.07965},{"t":120,"v":20.7},{"u":"lon","t":120,"v":24.30623},{"u":"lat","t":120,"v":60.07966},
			{"u":"%EL","t":150,"v":98},{"t":180,"v":21.2},{"u":"lon","t":180,"v":24.30628},{"u":"lat","t":180,"v":60.07967}]`,
			// The base name is a device identifier and the records have no
			// names: every reading resolves to the empty name.
			reason: ReasonNoNumericValues},
		{name: "senml names and times", payload: `[{"bn":"room1.","bt":1772377200,"n":"temp","v":21.5},{"n":"temp","t":10,"v":22},{"n":"hum","t":10.5,"v":40,"u":"%RH"}]`,
			time: recv, values: []window.Value{
				{Metric: "room1.hum", Value: 40, Time: recv.Add(10500 * time.Millisecond)},
				{Metric: "room1.temp", Value: 21.5, Time: recv},
				{Metric: "room1.temp", Value: 22, Time: recv.Add(10 * time.Second)}}},
		{name: "senml device base name dropped", payload: `[{"bn":"urn:dev:mac:0024befffe804ff1/","n":"t","bt":1772377200,"v":1}]`,
			time: recv, values: []window.Value{{Metric: "t", Value: 1, Time: recv}}},
		{name: "senml relative to receive time", payload: `[{"n":"t","t":-5,"v":1},{"n":"t","v":2}]`,
			time: recv.Add(-5 * time.Second), values: []window.Value{{Metric: "t", Value: 1, Time: recv.Add(-5 * time.Second)}, {Metric: "t", Value: 2, Time: recv}}},
		{name: "senml relative without header", payload: `[{"n":"t","v":2}]`, noRecv: true, reason: ReasonBadTimestamp},
		{name: "senml base value and sum", payload: `[{"bn":"e","bt":1772377200,"bv":100,"bs":1000,"v":1,"s":5},{"n":"x","v":2,"vs":"s","vb":true,"vd":"AA","zz":1}]`,
			time: recv, ignored: 4, values: []window.Value{{Metric: "e", Value: 101, Time: recv}, {Metric: "e.sum", Value: 1005, Time: recv}, {Metric: "ex", Value: 102, Time: recv}}},
		{name: "senml duplicate name and time", payload: `[{"bt":1772377200,"n":"t","v":1},{"n":"t","v":2}]`,
			time: recv, ignored: 1, values: []window.Value{{Metric: "t", Value: 1, Time: recv}}},
		{name: "senml must understand", payload: `[{"n":"t","v":1,"bx_":1}]`, reason: ReasonMalformedJSON},
		{name: "senml wrong type", payload: `[{"n":"t","v":"1"}]`, reason: ReasonMalformedJSON},
		{name: "senml not objects", payload: `[1,2]`, reason: ReasonMalformedJSON},
		{name: "senml only strings", payload: `[{"n":"t","vs":"on"}]`, reason: ReasonNoNumericValues},
		{name: "senml empty", payload: `[]`, reason: ReasonNoNumericValues},
		{name: "senml time out of range", payload: `[{"n":"t","bt":1e10,"v":1}]`, reason: ReasonBadTimestamp},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := decode([]byte(tt.payload), tt.topic, recv, !tt.noRecv)
			ds, serr := decodeSlow([]byte(tt.payload), tt.topic, recv, !tt.noRecv)
			if (err == nil) != (serr == nil) || (err == nil && !sameDecoded(d, ds)) {
				t.Fatalf("fast and slow decoders disagree: %v %v / %v %v", d, err, ds, serr)
			}
			if tt.reason != "" {
				if err == nil || err.reason != tt.reason {
					t.Fatalf("err = %v, want reason %s", err, tt.reason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !d.time.Equal(tt.time) || !sameValues(d.values, tt.values) || d.ignored != tt.ignored {
				t.Fatalf("got %v %v ignored %d, want %v %v ignored %d", d.time, d.values, d.ignored, tt.time, tt.values, tt.ignored)
			}
		})
	}
}

func sameValues(a, b []window.Value) bool {
	return slices.EqualFunc(a, b, func(x, y window.Value) bool {
		return x.Metric == y.Metric && x.Value == y.Value && x.Time.Equal(y.Time)
	})
}

func sameDecoded(a, b decoded) bool {
	return a.time.Equal(b.time) && a.ignored == b.ignored && sameValues(a.values, b.values)
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
// value, sorted by (metric, time) with each pair unique, metric names
// non-empty, values finite, times in 1970..2106 (Value.Time set on all
// values or none); on failure a known reason. And the fast decoder agrees
// with decodeSlow (encoding/json) on every input: same outcome, same values.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"t":1}`, `{"env":{"t":1},"ts":1772377200}`, `{"ts":"2026-03-01T15:00:00Z","a":[1]}`, `12.5`, `{"a.b":1,"a":{"b":2}}`,
		`[{"bn":"a.","bt":1772377200,"n":"t","v":1},{"n":"t","t":1,"v":2,"s":3}]`, `[{"n":"t","t":-1,"v":1,"vs":"x"}]`} {
		f.Add([]byte(s), "/devices/d/events/x", true)
	}
	dc := newDecoder()
	f.Fuzz(func(t *testing.T, payload []byte, topic string, haveRecv bool) {
		d, err := dc.decode(payload, topic, recv, haveRecv)
		ds, serr := decodeSlow(payload, topic, recv, haveRecv)
		if (err == nil) != (serr == nil) || (err != nil && err.reason != serr.reason) || (err == nil && !sameDecoded(d, ds)) {
			t.Fatalf("fast %+v %v, slow %+v %v", d, err, ds, serr)
		}
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
		own := !d.values[0].Time.IsZero()
		for i, v := range d.values {
			if v.Metric == "" || math.IsNaN(v.Value) || math.IsInf(v.Value, 0) || v.Time.IsZero() == own {
				t.Fatalf("bad value %+v", v)
			}
			at := d.time
			if own {
				at = v.Time
			}
			if at.Before(minEventTime) || at.After(maxEventTime) {
				t.Fatalf("time %v out of range", at)
			}
			if i > 0 {
				p := d.values[i-1]
				if c := strings.Compare(p.Metric, v.Metric); c > 0 || c == 0 && !p.Time.Before(v.Time) {
					t.Fatalf("not sorted/unique: %v", d.values)
				}
			}
		}
	})
}

// FuzzParseFloat checks parseFloat against strconv.ParseFloat, bit for bit,
// on every JSON number.
func FuzzParseFloat(f *testing.F) {
	for _, s := range []string{"0", "-0", "21.37", "-40.5", "1772323200000", "9007199254740993", "0.1", "1e3",
		"123456789012345678901", "0.0000000000000000000001", "-9007199254740992.5", "1.7976931348623157e308"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := []byte(s)
		if len(b) == 0 || number(b, 0) != len(b) {
			return // not a JSON number: parseFloat never sees it
		}
		got, gerr := parseFloat(b)
		want, werr := strconv.ParseFloat(s, 64)
		if (gerr == nil) != (werr == nil) || math.Float64bits(got) != math.Float64bits(want) {
			t.Fatalf("%q: got %v (%x) %v, want %v (%x) %v", s, got, math.Float64bits(got), gerr, want, math.Float64bits(want), werr)
		}
	})
}
