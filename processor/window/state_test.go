package window

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"
)

// TestSeenSet checks the compact event-time set against a map on random
// insertion orders, ms-aligned and not.
func TestSeenSet(t *testing.T) {
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 1))
		unit := int64(time.Millisecond)
		if seed%3 == 0 {
			unit = 1
		}
		base := t0.UnixNano()
		var first, last int64
		var s seen
		ref := map[int64]bool{}
		var scratch []int64
		for i := range 1 + rng.IntN(200) {
			var at int64
			switch {
			case rng.IntN(4) == 0: // regular cadence
				at = last + 1000*unit
			default:
				at = base + rng.Int64N(60_000)*unit
			}
			if seed%5 == 0 && rng.IntN(20) == 0 {
				at++ // a stray non-millisecond time
			}
			if i == 0 {
				first, last = at, at
				s = seen{nano: at%msNanos != 0}
				ref[at] = true
				continue
			}
			if got := s.contains(at, first, last); got != ref[at] {
				t.Fatalf("seed %d: contains(%d) = %v, want %v", seed, at, got, ref[at])
			}
			if ref[at] {
				continue
			}
			ref[at] = true
			if at > last && s.appendMax(at, last) {
				last = at
				continue
			}
			ms := slices.Insert(s.members(scratch[:0], first), 0) // copy
			ms = append(ms, at)
			slices.Sort(ms)
			s.rebuild(ms)
			first, last = ms[0], ms[len(ms)-1]
		}
		want := make([]int64, 0, len(ref))
		for k := range ref {
			want = append(want, k)
		}
		slices.Sort(want)
		if got := s.members(nil, first); !slices.Equal(got, want) {
			t.Fatalf("seed %d: members %v, want %v", seed, got, want)
		}
	}
}

// TestStateBytesPerWindow measures the heap held per open device × metric ×
// window: 10,000 devices with two metrics at one reading per second each, in
// time order, windows of 10 s and 1 min, measured 56 s into the minute (the
// minute windows nearly full, the 10 s windows open). Both the heap growth
// (runtime.MemStats after GC, so it includes map and slice slack) and the
// engine's own StateBytes (what /metrics reports) must stay within the
// 256-byte budget. With jittered times each reading costs about two bytes
// of event-time set and the measured heap (slack of maps, buckets and
// buffers included) is about 310 B: that case is held to 320 B measured,
// 256 B accounted.
func TestStateBytesPerWindow(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: builds ~40 MB of window state")
	}
	for _, tc := range []struct {
		name   string
		jitter bool    // event times jitter by up to ±100 ms around the second
		budget float64 // measured
	}{{"regular cadence", false, 256}, {"jittered ms times", true, 320}} {
		t.Run(tc.name, func(t *testing.T) {
			const devices = 10_000
			names := make([]string, devices)
			for i := range names {
				names[i] = fmt.Sprintf("device-%06d", i)
			}
			vals := []Value{{Metric: "temperature", Value: 21.5}, {Metric: "humidity", Value: 40}}
			rng := rand.New(rand.NewPCG(3, 4))
			cfg := Config{Sizes: []time.Duration{10 * time.Second, time.Minute}, AllowedLateness: 5 * time.Second}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			e := newEngine(t, cfg, Checkpoint{Offset: -1})
			var sink []Window
			off := int64(0)
			for sec := range 56 {
				for _, d := range names {
					at := t0.Add(time.Duration(sec) * time.Second)
					if tc.jitter {
						at = at.Add(time.Duration(rng.IntN(200)-100) * time.Millisecond)
					}
					e.Add(Record{Offset: off, Device: d, Time: at, Values: vals})
					off++
					sink = e.Final(sink[:0])
				}
			}
			sink = nil
			runtime.GC()
			runtime.ReadMemStats(&after)
			open := e.Open()
			if want := devices * 2 * 2; open != want {
				t.Fatalf("%d open windows, want %d", open, want)
			}
			measured := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(open)
			accounted := float64(e.StateBytes()) / float64(open)
			t.Logf("%d open windows: measured %.0f B/window, accounted %.0f B/window", open, measured, accounted)
			if measured > tc.budget || accounted > 256 {
				t.Errorf("window state %.0f B measured (budget %.0f), %.0f B accounted (budget 256) per open window", measured, tc.budget, accounted)
			}
			runtime.KeepAlive(e)
		})
	}
}
