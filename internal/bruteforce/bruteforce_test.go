package bruteforce

import (
	"math/rand/v2"
	"testing"
)

func TestAddMatchesDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	vals := make([]float64, 1000)
	var a Agg
	for i := range vals {
		vals[i] = r.NormFloat64() * 100
		a = a.Add(vals[i])
	}
	lo, hi, sum := vals[0], vals[0], 0.0
	for _, v := range vals {
		lo, hi, sum = min(lo, v), max(hi, v), sum+v
	}
	if a.Count != 1000 || a.Min != lo || a.Max != hi || a.Sum != sum {
		t.Errorf("Agg = %+v, want count 1000 min %v max %v sum %v", a, lo, hi, sum)
	}
	if one := (Agg{}).Add(-3); one.Min != -3 || one.Max != -3 {
		t.Errorf("first value must set min and max: %+v", one)
	}
}

func TestEqual(t *testing.T) {
	a := Agg{Count: 2, Sum: 1e12, Min: 1, Max: 2}
	b := a
	b.Sum += 1e-4 // within 1e-9 relative of 1e12
	if !a.Equal(b) {
		t.Error("sums within rounding compared unequal")
	}
	b.Sum += 1e4
	if a.Equal(b) {
		t.Error("different sums compared equal")
	}
	c := a
	c.Count++
	if a.Equal(c) {
		t.Error("different counts compared equal")
	}
}
