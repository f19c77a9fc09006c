package storage

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// TestTilesCoverExactly checks tiles against brute force: the finest
// windows inside [from, to) are each covered by exactly one tile window, the
// tiles are aligned, and the coarse sizes are used when they fit.
func TestTilesCoverExactly(t *testing.T) {
	sizeSets := [][]time.Duration{
		{10 * time.Second},
		{10 * time.Second, time.Minute},
		{10 * time.Second, time.Minute, time.Hour},
		{10 * time.Second, 15 * time.Second, time.Minute}, // 15s breaks the chain: skipped
		{time.Minute, time.Hour, 24 * time.Hour},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	for iter := range 1000 {
		sizes := sizeSets[iter%len(sizeSets)]
		span := []int64{30, 600, 7200, 86400}[rng.IntN(4)]
		if sizes[0] >= time.Minute { // keeps brute force cheap: 40 days of minutes
			span *= 40
		}
		from := time.Unix(base+rng.Int64N(86400), int64(rng.IntN(1000))*1e6).UTC()
		to := from.Add(time.Duration(rng.Int64N(span)) * time.Second)
		if rng.IntN(4) == 0 { // aligned ends are the common case in dashboards
			from, to = from.Truncate(time.Hour), to.Truncate(time.Minute)
		}
		ts := tiles(sizes, from, to)

		fine := int64(sizes[0] / time.Second)
		lo, hi := ceilTo(from, sizes[0]), floorTo(to, sizes[0])
		covered := map[int64]int{}
		for _, tl := range ts {
			sz := int64(tl.size / time.Second)
			if tl.lo%sz != 0 || tl.hi%sz != 0 || tl.lo >= tl.hi {
				t.Fatalf("sizes %v [%v,%v): tile %+v not aligned or empty", sizes, from, to, tl)
			}
			for w := tl.lo; w < tl.hi; w += sz {
				for f := w; f < w+sz; f += fine {
					covered[f]++
				}
			}
		}
		want := 0
		for f := lo; f < hi; f += fine {
			want++
			if covered[f] != 1 {
				t.Fatalf("sizes %v [%v,%v): finest window %d covered %d times; tiles %+v", sizes, from, to, f, covered[f], ts)
			}
		}
		if len(covered) != want {
			t.Fatalf("sizes %v [%v,%v): tiles cover %d finest windows, want %d (outside the range?)", sizes, from, to, len(covered), want)
		}
		// The coarsest chain size that has a whole window in range is used.
		coarsest := sizes[len(sizes)-1]
		if coarsest%sizes[0] == 0 && (len(sizes) < 3 || coarsest%sizes[len(sizes)-2] == 0) &&
			ceilTo(from, coarsest) < floorTo(to, coarsest) {
			used := false
			for _, tl := range ts {
				used = used || tl.size == coarsest
			}
			if !used {
				t.Fatalf("sizes %v [%v,%v): coarsest size fits but is not used: %+v", sizes, from, to, ts)
			}
		}
	}
}

func TestTilesThirtyDays(t *testing.T) {
	sizes := []time.Duration{10 * time.Second, time.Minute, time.Hour}
	from := time.Date(2026, 3, 1, 12, 34, 56, 0, time.UTC)
	to := from.Add(30 * 24 * time.Hour)
	ts := tiles(sizes, from, to)
	windows := 0
	for _, tl := range ts {
		windows += int(tl.hi-tl.lo) / int(tl.size/time.Second)
	}
	// 719 hours + 58 + 34 minutes at the edges + 0 + 5 ten-second windows.
	if want := 719 + 25 + 34 + 0 + 5; windows != want {
		t.Errorf("30 days from %v read %d windows per device, want %d: %+v", from, windows, want, ts)
	}
}

// TestSummaryTilesMatchFinest: with consistent windows of every size (as the
// processor writes them), the tiled summary equals the one read from the
// finest windows alone, for every aggregate and unaligned ranges.
func TestSummaryTilesMatchFinest(t *testing.T) {
	forEngines(t, func(t *testing.T, cfg func(testing.TB) Config) {
		ctx := ctxT(t)
		c := cfg(t)
		sizes := []time.Duration{10 * time.Second, time.Minute, time.Hour}
		c.WindowSizes = sizes
		s := openT(t, c)
		rng := rand.New(rand.NewPCG(3, 4))
		start := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
		var ws []Window
		for _, dev := range []string{"t-a", "t-b", "t-c"} {
			// One reading every 10 s for three hours; integers keep sums exact.
			vals := map[time.Duration]map[time.Time][]float64{}
			for _, sz := range sizes {
				vals[sz] = map[time.Time][]float64{}
			}
			for i := range 3 * 360 {
				at := start.Add(time.Duration(i) * 10 * time.Second)
				v := float64(rng.IntN(1000))
				for _, sz := range sizes {
					vals[sz][at.Truncate(sz)] = append(vals[sz][at.Truncate(sz)], v)
				}
			}
			for sz, byStart := range vals {
				for st, vs := range byStart {
					ws = append(ws, win(dev, "m", sz, st, vs...))
				}
			}
		}
		if err := s.WriteBatch(ctx, ws, nil); err != nil {
			t.Fatal(err)
		}
		for i := range 12 {
			from := start.Add(time.Duration(rng.Int64N(int64(time.Hour))))
			to := from.Add(time.Duration(rng.Int64N(int64(2 * time.Hour))))
			if i == 0 {
				from, to = start.Add(-time.Minute), start.Add(4*time.Hour) // everything
			}
			for _, agg := range []Aggregate{Mean, Max, Min, Count, Sum} {
				q := SummaryQuery{Metric: "m", Aggregate: agg, From: from, To: to}
				tiled, err := s.Summary(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				q.WindowSize = 10 * time.Second
				fine, err := s.Summary(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				if len(tiled) != len(fine) {
					t.Fatalf("%s [%v, %v): tiled %v, finest %v", agg, from, to, tiled, fine)
				}
				for j := range fine {
					if tiled[j].Device != fine[j].Device || tiled[j].Count != fine[j].Count ||
						math.Abs(tiled[j].Value-fine[j].Value) > 1e-9*math.Max(1, math.Abs(fine[j].Value)) {
						t.Errorf("%s [%v, %v): tiled %+v, finest %+v", agg, from, to, tiled[j], fine[j])
					}
				}
			}
		}
	})
}
