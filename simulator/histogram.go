package simulator

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// histogram records latencies in log-linear buckets, in the manner of
// HdrHistogram: values below 2^histPrecision nanoseconds get a bucket each,
// and every power-of-two range above is split into 2^histPrecision equal
// buckets. A quantile is answered with the midpoint of the bucket that holds
// the exact nearest-rank sample, so it is within 2^-(histPrecision+1) ≈ 0.39%
// of the true value, for any number of samples, in a fixed 58 KiB.
//
// Recording is lock-free (one atomic add per counter) because every in-flight
// publish of the fleet records into the same histogram.
type histogram struct {
	counts [histBuckets]atomic.Uint64
	sum    atomic.Uint64 // nanoseconds
	max    atomic.Int64
}

const (
	histPrecision = 7
	histSub       = 1 << histPrecision
	// The largest int64 lands in bucket (64-p-2)<<p + 2^(p+1) - 1.
	histBuckets = (64 - histPrecision) << histPrecision
)

// histRelError is the documented bound on a quantile's relative error.
const histRelError = 1.0 / (2 * histSub)

func bucketOf(v uint64) int {
	e := max(bits.Len64(v)-histPrecision-1, 0)
	return e<<histPrecision + int(v>>e)
}

// bucketBounds returns the smallest and largest value that bucketOf maps to i.
func bucketBounds(i int) (lo, hi uint64) {
	if i < histSub {
		return uint64(i), uint64(i)
	}
	e := i>>histPrecision - 1
	m := uint64(i - e<<histPrecision)
	lo = m << e
	return lo, lo + 1<<e - 1
}

func (h *histogram) record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[bucketOf(uint64(v))].Add(1)
	h.sum.Add(uint64(v))
	for m := h.max.Load(); v > m && !h.max.CompareAndSwap(m, v); m = h.max.Load() {
	}
}

// histSnapshot is a copy of a histogram's counts, taken while recording may
// continue.
type histSnapshot struct {
	counts [histBuckets]uint64
	n, sum uint64
	max    int64
}

func (h *histogram) snapshot() *histSnapshot {
	s := &histSnapshot{sum: h.sum.Load(), max: h.max.Load()}
	for i := range h.counts {
		c := h.counts[i].Load()
		s.counts[i] = c
		s.n += c
	}
	return s
}

// quantile returns the nearest-rank q-quantile (0 < q ≤ 1): the value of the
// ceil(q·n)-th smallest sample, within histRelError.
func (s *histSnapshot) quantile(q float64) time.Duration {
	if s.n == 0 {
		return 0
	}
	rank := max(uint64(math.Ceil(q*float64(s.n))), 1)
	var seen uint64
	for i, c := range s.counts {
		if seen += c; seen >= rank {
			lo, hi := bucketBounds(i)
			// Clamping to the exact max keeps p100 exact and only ever
			// moves the answer towards the true value.
			return time.Duration(min(lo+(hi-lo)/2, uint64(s.max)))
		}
	}
	return time.Duration(s.max)
}

func (s *histSnapshot) mean() time.Duration {
	if s.n == 0 {
		return 0
	}
	return time.Duration(s.sum / s.n)
}
