package storage

import (
	"cmp"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// sameWindow is exact equality of every field, floats by bit pattern.
func sameWindow(a, b Window) bool {
	fb := math.Float64bits
	return a.Device == b.Device && a.Metric == b.Metric && a.Size == b.Size && a.Start.Equal(b.Start) &&
		a.Count == b.Count && fb(a.Sum) == fb(b.Sum) && fb(a.Min) == fb(b.Min) && fb(a.Max) == fb(b.Max) &&
		fb(a.First) == fb(b.First) && fb(a.Last) == fb(b.Last) &&
		a.FirstAt.Equal(b.FirstAt) && a.LastAt.Equal(b.LastAt) && a.Version == b.Version
}

func TestWindows(t *testing.T) {
	forEngines(t, func(t *testing.T, cfg func(testing.TB) Config) {
		ctx := ctxT(t)
		s := openT(t, cfg(t))
		rng := rand.New(rand.NewPCG(3, 4))
		anyFloat := func() float64 { // any bit pattern but NaN (whose payload is not kept)
			for {
				if f := math.Float64frombits(rng.Uint64()); !math.IsNaN(f) {
					return f
				}
			}
		}
		special := []float64{math.Copysign(0, -1), 0, 0.1, 1.0 / 3, math.MaxFloat64, math.SmallestNonzeroFloat64,
			math.Inf(1), math.Inf(-1), 2.2250738585072009e-308, -1e-323}
		fl := func(i int) float64 {
			if i < len(special) {
				return special[i]
			}
			return anyFloat()
		}
		var want []Window
		var batch []Window
		i := 0
		for d, dev := range nasty {
			for _, metric := range []string{"temp", nasty[len(nasty)-1-d]} {
				for _, size := range []time.Duration{10 * time.Second, time.Minute} {
					for k := range 2 {
						start := t0.Add(time.Duration(k+d) * size)
						w := Window{Device: dev, Metric: metric, Size: size, Start: start,
							Count: rng.Uint64(), Sum: fl(i), Min: fl(i + 1), Max: fl(i + 2), First: fl(i + 3), Last: fl(i + 4),
							FirstAt: start.Add(time.Duration(rng.Int64N(int64(size))).Truncate(time.Millisecond)),
							LastAt:  start.Add(size - time.Millisecond), Version: rng.Uint64N(1 << 40)}
						i += 5
						batch = append(batch, w)
						want = append(want, w)
					}
				}
			}
		}
		if err := s.WriteBatch(ctx, batch, nil); err != nil {
			t.Fatal(err)
		}
		// Re-emissions: a higher version replaces the row in a later batch;
		// a stale (lower) version written after it does not, nor a copy.
		newer := want[3]
		newer.Count, newer.Sum, newer.Last, newer.LastAt, newer.Version = newer.Count+1, anyFloat(), anyFloat(), newer.Start.Add(time.Millisecond), newer.Version+1
		stale := want[3]
		stale.Count, stale.Version = 7, stale.Version-1
		for _, b := range [][]Window{{newer}, {stale, want[3]}, {want[5]}} {
			if err := s.WriteBatch(ctx, b, nil); err != nil {
				t.Fatal(err)
			}
		}
		want[3] = newer
		slices.SortFunc(want, func(a, b Window) int {
			return cmp.Or(cmp.Compare(a.Device, b.Device), cmp.Compare(a.Metric, b.Metric),
				cmp.Compare(a.Size, b.Size), a.Start.Compare(b.Start))
		})
		check := func(name string, q WindowsQuery, keep func(Window) bool) {
			t.Helper()
			got, err := s.Windows(ctx, q)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			var exp []Window
			for _, w := range want {
				if keep(w) {
					exp = append(exp, w)
				}
			}
			if len(got) != len(exp) {
				t.Fatalf("%s: %d windows, want %d", name, len(got), len(exp))
			}
			for j := range got {
				if !sameWindow(got[j], exp[j]) {
					t.Errorf("%s: window %d:\n got %+v\nwant %+v", name, j, got[j], exp[j])
				}
				if got[j].Start.Location() != time.UTC || got[j].FirstAt.Location() != time.UTC {
					t.Errorf("%s: window %d: times not in UTC", name, j)
				}
			}
		}
		check("all", WindowsQuery{}, func(Window) bool { return true })
		for _, dev := range nasty {
			if dev == "" { // means all devices
				continue
			}
			check("device "+dev, WindowsQuery{Device: dev}, func(w Window) bool { return w.Device == dev })
		}
		check("metric", WindowsQuery{Metric: nasty[3]}, func(w Window) bool { return w.Metric == nasty[3] })
		check("device+metric+size", WindowsQuery{Device: nasty[2], Metric: "temp", Size: time.Minute},
			func(w Window) bool { return w.Device == nasty[2] && w.Metric == "temp" && w.Size == time.Minute })
		from, to := t0.Add(30*time.Second), t0.Add(2*time.Minute)
		check("range", WindowsQuery{From: from, To: to}, func(w Window) bool { return !w.Start.Before(from) && w.Start.Before(to) })
		// Unaligned bounds: start in [From, To) exactly, to the second.
		from, to = t0.Add(29*time.Second+time.Millisecond), t0.Add(2*time.Minute+time.Nanosecond)
		check("unaligned range", WindowsQuery{Size: 10 * time.Second, From: from, To: to},
			func(w Window) bool { return w.Size == 10*time.Second && !w.Start.Before(from) && w.Start.Before(to) })
		check("from only", WindowsQuery{From: t0.Add(10 * time.Minute)}, func(w Window) bool { return !w.Start.Before(t0.Add(10 * time.Minute)) })
		check("to only", WindowsQuery{To: t0.Add(time.Minute)}, func(w Window) bool { return w.Start.Before(t0.Add(time.Minute)) })
		check("empty range", WindowsQuery{From: to, To: from}, func(Window) bool { return false })
		check("before 1970", WindowsQuery{To: time.Unix(-5, 0)}, func(Window) bool { return false })
		check("far bounds", WindowsQuery{From: time.Unix(-1e9, 0), To: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)}, func(Window) bool { return true })
		check("no such device", WindowsQuery{Device: "nobody"}, func(Window) bool { return false })
		if _, err := s.Windows(ctx, WindowsQuery{Size: 1500 * time.Millisecond}); !errors.Is(err, ErrBadStep) {
			t.Errorf("fractional size: err %v, want ErrBadStep", err)
		}
	})
}
