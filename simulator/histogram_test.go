package simulator

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBucketBounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	check := func(v uint64) {
		i := bucketOf(v)
		if i < 0 || i >= histBuckets {
			t.Fatalf("bucketOf(%d) = %d, outside [0,%d)", v, i, histBuckets)
		}
		lo, hi := bucketBounds(i)
		if v < lo || v > hi {
			t.Fatalf("%d in bucket %d = [%d,%d]", v, i, lo, hi)
		}
		if lo > 0 && float64(hi-lo)/2/float64(lo) > histRelError {
			t.Fatalf("bucket %d = [%d,%d] wider than the documented error", i, lo, hi)
		}
		if bucketOf(lo) != i || bucketOf(hi) != i || (lo > 0 && bucketOf(lo-1) != i-1) {
			t.Fatalf("bucket %d = [%d,%d] is not contiguous", i, lo, hi)
		}
	}
	for v := range uint64(5000) {
		check(v)
	}
	for range 100000 {
		check(rng.Uint64N(math.MaxInt64) >> rng.UintN(63))
	}
	check(math.MaxInt64)
}

// The histogram's quantiles against the nearest-rank quantiles of the sorted
// samples: within histRelError, whatever the distribution and count.
func TestQuantilesMatchSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	dists := map[string]func() time.Duration{
		"lognormal": func() time.Duration { return time.Duration(math.Exp(13 + 1.5*rng.NormFloat64())) }, // ~0.5ms median, long tail
		"uniform":   func() time.Duration { return time.Duration(rng.Int64N(int64(time.Second))) },
		"small":     func() time.Duration { return time.Duration(rng.Int64N(300)) },
		"constant":  func() time.Duration { return 1234567 * time.Nanosecond },
		"bimodal": func() time.Duration {
			if rng.IntN(100) == 0 {
				return time.Duration(2e9 + rng.Int64N(1e9))
			}
			return time.Duration(1e5 + rng.Int64N(1e5))
		},
	}
	for name, gen := range dists {
		for _, n := range []int{1, 7, 1000, 300000} {
			var h histogram
			xs := make([]time.Duration, n)
			for i := range xs {
				xs[i] = gen()
				h.record(xs[i])
			}
			slices.Sort(xs)
			s := h.snapshot()
			if s.n != uint64(n) || time.Duration(s.max) != xs[n-1] {
				t.Fatalf("%s n=%d: count %d max %v, want %d %v", name, n, s.n, time.Duration(s.max), n, xs[n-1])
			}
			for _, q := range []float64{0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 1} {
				want := xs[max(int(math.Ceil(q*float64(n))), 1)-1]
				got := s.quantile(q)
				if diff := math.Abs(float64(got - want)); diff > histRelError*float64(want) {
					t.Errorf("%s n=%d q=%v: got %v, want %v (error %.3g%% > %.3g%%)",
						name, n, q, got, want, 100*diff/float64(want), 100*histRelError)
				}
			}
			var sum time.Duration
			for _, x := range xs {
				sum += x
			}
			if s.mean() != sum/time.Duration(n) {
				t.Errorf("%s n=%d: mean %v, want %v", name, n, s.mean(), sum/time.Duration(n))
			}
		}
	}
}

func TestQuantileEmpty(t *testing.T) {
	var h histogram
	if s := h.snapshot(); s.quantile(0.5) != 0 || s.mean() != 0 {
		t.Fatal("empty histogram should answer 0")
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	var h histogram
	b.RunParallel(func(pb *testing.PB) {
		d := time.Duration(0)
		for pb.Next() {
			d += 997
			h.record(d % time.Second)
		}
	})
}
