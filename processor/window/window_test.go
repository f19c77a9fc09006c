package window

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 15, 0, 0, 0, time.UTC)

type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }

func newEngine(t testing.TB, cfg Config, from Checkpoint) *Engine {
	t.Helper()
	e, err := New(cfg, from)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func rec(off int64, dev string, at time.Time, vals ...any) Record {
	r := Record{Offset: off, Device: dev, Time: at}
	for i := 0; i < len(vals); i += 2 {
		r.Values = append(r.Values, Value{Metric: vals[i].(string), Value: float64(vals[i+1].(int))})
	}
	return r
}

func TestNewValidates(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no sizes":  {},
		"zero size": {Sizes: []time.Duration{0}},
		"duplicate": {Sizes: []time.Duration{time.Second, time.Second}},
		"lateness":  {Sizes: []time.Duration{time.Second}, AllowedLateness: -1},
	} {
		if _, err := New(cfg, Checkpoint{}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestAggregates(t *testing.T) {
	e := newEngine(t, Config{Sizes: []time.Duration{10 * time.Second, time.Minute}}, Checkpoint{Offset: -1})
	e.Add(rec(0, "d", t0.Add(3*time.Second), "t", 5))
	e.Add(rec(1, "d", t0.Add(1*time.Second), "t", 7)) // earlier event time: becomes First
	e.Add(rec(2, "d", t0.Add(9*time.Second), "t", -2))
	e.Add(rec(3, "d", t0.Add(5*time.Second), "t", 4))
	e.Add(rec(4, "d", t0.Add(5*time.Second), "t", 100)) // duplicate identity: ignored
	e.Add(rec(5, "d", t0.Add(75*time.Second), "t", 1))  // closes both windows of the first minute
	got := e.Final(nil)
	want := []Window{
		{Device: "d", Metric: "t", Size: 10 * time.Second, Start: t0, Count: 4, Sum: 14, Min: -2, Max: 7, First: 7, Last: -2,
			FirstAt: t0.Add(time.Second), LastAt: t0.Add(9 * time.Second), Version: 4},
		{Device: "d", Metric: "t", Size: time.Minute, Start: t0, Count: 4, Sum: 14, Min: -2, Max: 7, First: 7, Last: -2,
			FirstAt: t0.Add(time.Second), LastAt: t0.Add(9 * time.Second), Version: 4},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	if e.Open() != 2 {
		t.Fatalf("open = %d, want 2", e.Open())
	}
	if cp := e.Checkpoint(); cp.Offset != 5 || cp.Next != 6 || !cp.Watermark.Equal(t0.Add(75*time.Second)) {
		t.Fatalf("checkpoint %+v", cp)
	}
}

// TestDeviceName: a device is named while it has open windows, by the
// string the engine keeps (the one its windows carry), and not after they
// closed.
func TestDeviceName(t *testing.T) {
	e := newEngine(t, Config{Sizes: []time.Duration{10 * time.Second}}, Checkpoint{Offset: -1})
	if _, ok := e.DeviceName([]byte("d")); ok {
		t.Fatal("unknown device named")
	}
	e.Add(rec(0, "d", t0, "t", 1))
	name, ok := e.DeviceName([]byte("d"))
	if !ok || name != "d" {
		t.Fatalf("DeviceName = %q, %v", name, ok)
	}
	e.Add(rec(1, name, t0.Add(time.Second), "t", 2))
	e.Add(rec(2, "other", t0.Add(30*time.Second), "t", 3)) // closes d's only window
	if got := e.Final(nil); len(got) != 1 || got[0].Device != "d" || got[0].Count != 2 {
		t.Fatalf("final %+v", got)
	}
	if _, ok := e.DeviceName([]byte("d")); ok {
		t.Fatal("device without open windows named")
	}
	e.Add(rec(3, "d", t0.Add(31*time.Second), "t", 4)) // back: found again, counted once
	if name, ok := e.DeviceName([]byte("d")); !ok || name != "d" || e.Open() != 2 {
		t.Fatalf("DeviceName = %q, %v; open %d", name, ok, e.Open())
	}
}

// TestExactEdge pins the window boundary to the nanosecond: 15:00:00Z is the
// first instant of the next window and closes the previous one at lateness 0.
func TestExactEdge(t *testing.T) {
	edge := t0
	tests := []struct {
		name     string
		lateness time.Duration
		closer   time.Time // reading that should (or should not) close [14:59:50, 15:00:00)
		closes   bool
	}{
		{"at edge, no lateness", 0, edge, true},
		{"1ns before edge, no lateness", 0, edge.Add(-time.Nanosecond), false},
		{"at edge, 1ns lateness", time.Nanosecond, edge, false},
		{"1ns after edge, 1ns lateness", time.Nanosecond, edge.Add(time.Nanosecond), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEngine(t, Config{Sizes: []time.Duration{10 * time.Second}, AllowedLateness: tt.lateness}, Checkpoint{Offset: -1})
			e.Add(rec(0, "d", edge.Add(-5*time.Second), "m", 1))
			e.Add(rec(1, "d", tt.closer, "m", 2))
			got := e.Final(nil)
			if closed := len(got) == 1; closed != tt.closes {
				t.Fatalf("closed=%v want %v (%+v)", closed, tt.closes, got)
			}
			if tt.closes && (!got[0].Start.Equal(edge.Add(-10*time.Second)) || got[0].Count != 1) {
				t.Fatalf("window %+v", got[0])
			}
			// The last nanosecond of the previous window is too late exactly when it closed.
			o := e.Add(rec(2, "d", edge.Add(-time.Nanosecond), "m", 3))
			if late := len(o.TooLate) == 1; late != tt.closes {
				t.Fatalf("too late=%v want %v", late, tt.closes)
			}
		})
	}
	// 15:00:00Z starts a window, 15:00:00.000000001Z is inside it.
	e := newEngine(t, Config{Sizes: []time.Duration{10 * time.Second}}, Checkpoint{Offset: -1})
	e.Add(rec(0, "d", edge, "m", 1))
	e.Add(rec(1, "d", edge.Add(time.Nanosecond), "m", 1))
	e.Add(rec(2, "d", edge.Add(10*time.Second), "m", 1))
	if w := e.Final(nil); len(w) != 1 || !w[0].Start.Equal(edge) || w[0].Count != 2 {
		t.Fatalf("%+v", w)
	}
}

func TestTooLatePerSize(t *testing.T) {
	e := newEngine(t, Config{Sizes: []time.Duration{10 * time.Second, time.Minute}}, Checkpoint{Offset: -1})
	e.Add(rec(0, "d", t0.Add(5*time.Second), "m", 1))
	e.Add(rec(1, "d", t0.Add(20*time.Second), "m", 1))
	o := e.Add(rec(2, "d", t0.Add(7*time.Second), "m", 1))
	if !slices.Equal(o.TooLate, []time.Duration{10 * time.Second}) || !o.Counted[0] {
		t.Fatalf("outcome %+v", o)
	}
	e.Add(rec(3, "d", t0.Add(2*time.Minute), "m", 1))
	for _, w := range e.Final(nil) {
		if w.Size == time.Minute && w.Start.Equal(t0) && w.Count != 3 {
			t.Fatalf("minute window %+v", w)
		}
	}
	o = e.Add(rec(4, "d", t0.Add(30*time.Second), "m", 1))
	if len(o.TooLate) != 2 || o.Counted[0] {
		t.Fatalf("outcome %+v", o)
	}
}

func TestAdvanceIdle(t *testing.T) {
	clk := &fakeClock{now: t0}
	e := newEngine(t, Config{Sizes: []time.Duration{10 * time.Second}, AllowedLateness: 5 * time.Second,
		IdleTimeout: 30 * time.Second, Clock: clk.Now}, Checkpoint{Offset: -1})
	e.Add(rec(0, "d", t0.Add(time.Second), "m", 1))
	if e.AdvanceIdle(t0.Add(29 * time.Second)) {
		t.Fatal("advanced before idle timeout")
	}
	if !e.AdvanceIdle(t0.Add(30 * time.Second)) {
		t.Fatal("did not close the last window")
	}
	if w := e.Final(nil); len(w) != 1 || w[0].Count != 1 {
		t.Fatalf("%+v", w)
	}
	if !e.Watermark().Equal(t0.Add(25 * time.Second)) {
		t.Fatalf("watermark %v", e.Watermark())
	}
}

// stream generation and the brute-force reference

var sizes = []time.Duration{10 * time.Second, time.Minute, 7 * time.Second}

const lateness = 5 * time.Second

func randomStream(rng *rand.Rand, n int) []Record {
	devices := []string{"a", "b", "c"}
	metrics := []string{"t", "h", "env.p"}
	cursor := t0.Add(time.Duration(rng.IntN(60)) * time.Second)
	var out []Record
	for i := range n {
		cursor = cursor.Add(time.Duration(rng.IntN(3000)) * time.Millisecond)
		r := Record{Offset: int64(i), Device: devices[rng.IntN(len(devices))]}
		switch p := rng.Float64(); {
		case p < 0.1 && len(out) > 0: // redelivery / duplicate identity, maybe another value
			prev := out[rng.IntN(len(out))]
			r.Device, r.Time = prev.Device, prev.Time
		case p < 0.2: // well beyond the allowed lateness
			r.Time = cursor.Add(-time.Duration(rng.IntN(120)) * time.Second)
		default: // out of order within the lateness, also at window edges
			r.Time = cursor.Add(-time.Duration(rng.Int64N(int64(lateness))))
			if rng.IntN(10) == 0 {
				r.Time = r.Time.Truncate(10 * time.Second)
			}
		}
		perValue := rng.IntN(8) == 0 // a SenML pack: readings at their own times
		for _, m := range metrics {
			if rng.IntN(2) == 0 || m == "t" {
				v := Value{Metric: m, Value: float64(rng.IntN(200) - 100)}
				if perValue {
					v.Time = r.Time.Add(-time.Duration(rng.Int64N(int64(3 * lateness))))
				}
				r.Values = append(r.Values, v)
			}
		}
		out = append(out, r)
	}
	return out
}

type wkey struct {
	dev, metric string
	size        time.Duration
	start       time.Time
}

type refReading struct {
	at  time.Time
	v   float64
	off int64
}

// bruteForce recomputes the windows from the definition: a sequential
// watermark, per size end ≤ watermark means too late, first identity wins,
// and aggregation over the kept readings at the very end.
func bruteForce(recs []Record) (map[wkey]Window, map[int64]int) {
	wm := time.Time{}
	maxT := time.Time{}
	kept := map[wkey][]refReading{}
	seen := map[string]bool{}
	tooLate := map[int64]int{}
	for _, r := range recs {
		late := map[time.Duration]bool{}
		newest := time.Time{}
		for _, v := range r.Values {
			at := r.Time
			if !v.Time.IsZero() {
				at = v.Time
			}
			if at.After(newest) {
				newest = at
			}
			for _, s := range sizes {
				start := time.Unix(0, at.UnixNano()-at.UnixNano()%int64(s)).UTC()
				if !wm.IsZero() && !start.Add(s).After(wm) {
					late[s] = true
					continue
				}
				k := wkey{r.Device, v.Metric, s, start}
				id := fmt.Sprint(k, at.UnixNano())
				if seen[id] {
					continue
				}
				seen[id] = true
				kept[k] = append(kept[k], refReading{at, v.Value, r.Offset})
			}
		}
		if len(late) > 0 {
			tooLate[r.Offset] = len(late)
		}
		if newest.After(maxT) {
			maxT = newest
			if w := maxT.Add(-lateness); w.After(wm) {
				wm = w
			}
		}
	}
	out := map[wkey]Window{}
	for k, rs := range kept {
		w := Window{Device: k.dev, Metric: k.metric, Size: k.size, Start: k.start, Min: rs[0].v, Max: rs[0].v}
		first, last := rs[0], rs[0]
		for _, r := range rs {
			w.Count++
			w.Sum += r.v
			w.Min, w.Max = min(w.Min, r.v), max(w.Max, r.v)
			if r.at.Before(first.at) {
				first = r
			}
			if r.at.After(last.at) {
				last = r
			}
			w.Version = max(w.Version, uint64(r.off)+1)
		}
		w.First, w.FirstAt, w.Last, w.LastAt = first.v, first.at, last.v, last.at
		out[k] = w
	}
	return out, tooLate
}

func keyOf(w Window) wkey { return wkey{w.Device, w.Metric, w.Size, w.Start} }

func testConfig(clk *fakeClock) Config {
	return Config{Sizes: sizes, AllowedLateness: lateness, IdleTimeout: time.Second, Clock: clk.Now}
}

// drainAll closes every open window as an idle partition would.
func drainAll(e *Engine, clk *fakeClock, dst []Window) []Window {
	e.AdvanceIdle(clk.now.Add(1000 * time.Hour))
	return e.Final(dst)
}

func TestPropertyMatchesBruteForce(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 42))
		recs := randomStream(rng, 1+rng.IntN(400))
		clk := &fakeClock{now: t0}
		e := newEngine(t, testConfig(clk), Checkpoint{Offset: -1})
		gotLate := map[int64]int{}
		var got []Window
		for _, r := range recs {
			o := e.Add(r)
			if len(o.TooLate) > 0 {
				gotLate[r.Offset] = len(o.TooLate)
			}
			got = e.Final(got)
		}
		got = drainAll(e, clk, got)
		want, wantLate := bruteForce(recs)
		compare(t, fmt.Sprintf("seed %d", seed), got, want)
		if fmt.Sprint(gotLate) != fmt.Sprint(wantLate) {
			t.Fatalf("seed %d: too late %v, want %v", seed, gotLate, wantLate)
		}
	}
}

func compare(t *testing.T, name string, got []Window, want map[wkey]Window) {
	t.Helper()
	seen := map[wkey]bool{}
	for _, w := range got {
		k := keyOf(w)
		if seen[k] {
			t.Fatalf("%s: window %v emitted twice", name, k)
		}
		seen[k] = true
		if want[k] != w {
			t.Fatalf("%s: window %v\n got  %+v\n want %+v", name, k, w, want[k])
		}
	}
	if len(seen) != len(want) {
		t.Fatalf("%s: %d windows, want %d", name, len(seen), len(want))
	}
}

type recOutcome struct {
	late    int
	counted string
}

// TestRestartExactlyOnce splits random streams at random commit points,
// restarts from the committed offset + watermark each time, and expects the
// stored windows, raw readings and dead letters of an uninterrupted run.
func TestRestartExactlyOnce(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 7))
		recs := randomStream(rng, 1+rng.IntN(300))

		clk := &fakeClock{now: t0}
		run := func(e *Engine, rs []Record, outs map[int64]recOutcome) {
			for _, r := range rs {
				o := e.Add(r)
				if o.Replayed {
					continue // already stored before the commit
				}
				if _, dup := outs[r.Offset]; dup {
					t.Fatalf("seed %d: offset %d handled twice", seed, r.Offset)
				}
				outs[r.Offset] = recOutcome{len(o.TooLate), fmt.Sprint(o.Counted)}
			}
		}

		ref := newEngine(t, testConfig(clk), Checkpoint{Offset: -1})
		refOut := map[int64]recOutcome{}
		run(ref, recs, refOut)
		want := map[wkey]Window{}
		for _, w := range drainAll(ref, clk, nil) {
			want[keyOf(w)] = w
		}

		splits := []int{rng.IntN(len(recs)), rng.IntN(len(recs)), rng.IntN(len(recs))}
		slices.Sort(splits)
		var stored []Window
		outs := map[int64]recOutcome{}
		cp := Checkpoint{Offset: -1}
		for _, k := range append(splits, len(recs)) {
			e := newEngine(t, testConfig(clk), cp)
			from := max(cp.Offset, 0)
			run(e, recs[from:k], outs)
			if k < len(recs) {
				stored = e.Final(stored)
				cp = e.Checkpoint()
				if k > 0 && (cp.Offset > int64(k) || cp.Next != int64(k)) {
					t.Fatalf("seed %d: checkpoint %+v at %d", seed, cp, k)
				}
				continue
			}
			stored = drainAll(e, clk, stored)
		}
		compare(t, fmt.Sprintf("seed %d splits %v", seed, splits), stored, want)
		if len(outs) != len(refOut) {
			t.Fatalf("seed %d: %d records handled, want %d", seed, len(outs), len(refOut))
		}
		for off, o := range refOut {
			if outs[off] != o {
				t.Fatalf("seed %d: offset %d outcome %+v, want %+v", seed, off, outs[off], o)
			}
		}
	}
}

func BenchmarkEngine(b *testing.B) {
	const devices = 1000
	recs := make([]Record, 100_000)
	for i := range recs {
		recs[i] = Record{
			Offset: int64(i),
			Device: "dev-" + strings.Repeat("x", 4) + fmt.Sprint(i%devices),
			Time:   t0.Add(time.Duration(i) * 10 * time.Millisecond), // 100 readings/s per partition
			Values: []Value{{Metric: "t", Value: float64(i % 50)}, {Metric: "h", Value: float64(i % 7)}},
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	var sink []Window
	readings := 0
	for i := 0; b.Loop(); i++ {
		e, _ := New(Config{Sizes: []time.Duration{10 * time.Second, time.Minute}, AllowedLateness: 5 * time.Second}, Checkpoint{Offset: -1})
		for _, r := range recs {
			e.Add(r)
			sink = e.Final(sink[:0])
		}
		readings += len(recs) * 2
	}
	b.ReportMetric(float64(readings)/b.Elapsed().Seconds(), "readings/s")
}
