// Package bruteforce is the tests' oracle for window aggregates: the plain
// running count, sum, min and max that stored windows are compared with.
package bruteforce

import "math"

// Agg is one window's aggregate computed the obvious way.
type Agg struct {
	Count    uint64  `json:"count"`
	Sum      float64 `json:"sum"`
	Min, Max float64
}

// Add returns a with v counted.
func (a Agg) Add(v float64) Agg {
	if a.Count == 0 {
		a.Min, a.Max = v, v
	}
	a.Count++
	a.Sum += v
	a.Min = math.Min(a.Min, v)
	a.Max = math.Max(a.Max, v)
	return a
}

// Equal compares exactly, but for Sum, whose float additions may run in
// another order: within 1e-9 relative.
func (a Agg) Equal(b Agg) bool {
	return a.Count == b.Count && Near(a.Sum, b.Sum) && a.Min == b.Min && a.Max == b.Max
}

// Near reports a and b equal within 1e-9 relative (absolute below 1).
func Near(a, b float64) bool {
	return math.Abs(a-b) <= 1e-9*math.Max(1, math.Max(math.Abs(a), math.Abs(b)))
}
