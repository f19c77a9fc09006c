package plugin

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestChannelRoundTrip(t *testing.T) {
	for _, c := range []Channel{
		{Device: "sim-001", Metric: "temperature", WindowSeconds: 10, Aggregates: []string{"mean", "max"}},
		{Device: "projects/p/locations/l/registries/r/devices/d?x=1", Metric: "ünïcode metric/with slash", WindowSeconds: 86400, Aggregates: []string{"count"}},
		{Device: "a", Metric: "b", WindowSeconds: 1, Aggregates: []string{"sum", "min", "max", "mean", "count"}},
		{Device: "sim-001", Metric: "temperature", WindowSeconds: 60, Aggregates: []string{"mean"}, HistorySeconds: 86400},
	} {
		p := FormatChannel(c)
		if want := 4 + min(1, int(c.HistorySeconds)); strings.Count(p, "/") != want {
			t.Fatalf("%q: want exactly %d slashes", p, want)
		}
		got, err := ParseChannel(p)
		if err != nil {
			t.Fatalf("%q: %v", p, err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Fatalf("%q: got %+v, want %+v", p, got, c)
		}
	}
	// The contract's example.
	c, err := ParseChannel("windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10/mean.max")
	if err != nil || c.Device != "sim-001" || c.Metric != "temperature" || c.WindowSeconds != 10 || !reflect.DeepEqual(c.Aggregates, []string{"mean", "max"}) {
		t.Fatalf("contract example: %+v %v", c, err)
	}
}

func TestParseChannelRejects(t *testing.T) {
	for _, p := range []string{
		"",
		"windows",
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10",
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10/mean/extra",
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10/mean/0",
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10/mean/0600",
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10/mean/-600",
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10/mean/",
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10/mean/600/1",
		"series/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10/mean",
		"windows//dGVtcGVyYXR1cmU/10/mean",             // empty device
		"windows/c2ltLTAwMQ==/dGVtcGVyYXR1cmU/10/mean", // padding
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU+/10/mean",  // std alphabet
		"windows/c2ltLTAwMR/dGVtcGVyYXR1cmU/10/mean",   // non-canonical trailing bits
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/0/mean",
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/-10/mean",
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/010/mean",
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/+10/mean",
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10s/mean",
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10/",
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10/avg",
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10/mean.mean",
		"windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10/mean..max",
	} {
		if c, err := ParseChannel(p); err == nil {
			t.Errorf("%q: accepted as %+v", p, c)
		}
	}
}

// FuzzParseChannel: ParseChannel never panics, and whatever it accepts is
// canonical: FormatChannel(ParseChannel(p)) == p, with a non-empty device
// and metric, a positive window and distinct known aggregates.
func FuzzParseChannel(f *testing.F) {
	f.Add("windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10/mean.max")
	f.Add("windows/YQ/Yg/1/count")
	f.Add("windows/c2ltLTAwMQ==/dGVtcGVyYXR1cmU/10/mean")
	f.Add("windows/x/y/9223372036854775807/sum.min")
	f.Add("windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10/mean.max/3600")
	f.Fuzz(func(t *testing.T, p string) {
		c, err := ParseChannel(p)
		if err != nil {
			return
		}
		if got := FormatChannel(c); got != p {
			t.Fatalf("%q parsed to %+v formats as %q", p, c, got)
		}
		if c.Device == "" || c.Metric == "" || c.WindowSeconds <= 0 || len(c.Aggregates) == 0 || c.HistorySeconds < 0 {
			t.Fatalf("%q: accepted incomplete %+v", p, c)
		}
		seen := map[string]bool{}
		for _, a := range c.Aggregates {
			if seen[a] {
				t.Fatalf("%q: duplicate aggregate %s", p, a)
			}
			seen[a] = true
		}
	})
}

func TestWindowTracker(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	w := func(sec int, version uint64) Window {
		return Window{Start: base.Add(time.Duration(sec) * time.Second), Version: version, Count: 1}
	}
	starts := func(ws []Window) []int {
		var out []int
		for _, x := range ws {
			out = append(out, int(x.Start.Sub(base)/time.Second))
		}
		return out
	}
	tr := newWindowTracker()
	if got := starts(tr.fresh([]Window{w(20, 1), w(0, 1), w(10, 1)}, base)); !reflect.DeepEqual(got, []int{0, 10, 20}) {
		t.Fatalf("first poll: %v", got)
	}
	if got := tr.fresh([]Window{w(0, 1), w(10, 1), w(20, 1)}, base); len(got) != 0 {
		t.Fatalf("unchanged poll sent %v", starts(got))
	}
	// A late reading re-emits window 10 with a newer version; 30 is new.
	if got := starts(tr.fresh([]Window{w(0, 1), w(10, 2), w(20, 1), w(30, 1)}, base)); !reflect.DeepEqual(got, []int{10, 30}) {
		t.Fatalf("third poll: %v", got)
	}
	// Starts before the horizon are forgotten, so memory stays bounded.
	tr.fresh(nil, base.Add(25*time.Second))
	if len(tr.sent) != 1 {
		t.Fatalf("tracker holds %v after the horizon moved", tr.sent)
	}
}

func TestWindowsFrame(t *testing.T) {
	ch := Channel{Device: "d", Metric: "temperature", WindowSeconds: 10, Aggregates: []string{"mean", "count", "max"}}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := windowsFrame(ch, []Window{{Start: at, Count: 4, Sum: 10, Min: 1, Max: 4, Mean: 99}})
	if f.Name != "d" || len(f.Fields) != 4 || f.Fields[0].Name != "time" {
		t.Fatalf("frame %s fields %d", f.Name, len(f.Fields))
	}
	for i, want := range []struct {
		name, display, unit string
		v                   float64
	}{{"mean", "d mean", "celsius", 2.5}, {"count", "d count", "none", 4}, {"max", "d max", "celsius", 4}} {
		fld := f.Fields[i+1]
		if fld.Name != want.name || fld.Config.DisplayNameFromDS != want.display || fld.Config.Unit != want.unit || fld.At(0).(float64) != want.v {
			t.Errorf("field %d: %s %q %q %v, want %+v", i+1, fld.Name, fld.Config.DisplayNameFromDS, fld.Config.Unit, fld.At(0), want)
		}
	}
}
