package window

import (
	"testing"
	"time"
)

// TestNotIdleDefersIdleAdvance: a partition whose silence comes from not
// reading (NotIdle called) keeps its windows open, and closes them once it
// really was quiet for the idle timeout.
func TestNotIdleDefersIdleAdvance(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	now := t0
	e, err := New(Config{Sizes: []time.Duration{10 * time.Second}, AllowedLateness: time.Second,
		IdleTimeout: 2 * time.Second, Clock: func() time.Time { return now }}, Checkpoint{Offset: -1, Next: -1})
	if err != nil {
		t.Fatal(err)
	}
	e.Add(Record{Offset: 0, Device: "d", Time: t0.Add(-time.Hour), Values: []Value{{Metric: "m", Value: 1}}})
	now = t0.Add(5 * time.Second)
	e.NotIdle(now)
	if e.AdvanceIdle(now) {
		t.Fatal("advanced right after NotIdle")
	}
	if e.Open() != 1 {
		t.Fatalf("open windows = %d, want 1", e.Open())
	}
	now = now.Add(2 * time.Second)
	if !e.AdvanceIdle(now) {
		t.Fatal("did not advance after a real idle timeout")
	}
	if got := e.Final(nil); len(got) != 1 || got[0].Count != 1 {
		t.Fatalf("final = %+v", got)
	}
	// NotIdle never moves the clock back.
	e.NotIdle(t0)
	if e.lastSeen.Before(now.Add(-2 * time.Second)) {
		t.Errorf("NotIdle moved lastSeen back to %v", e.lastSeen)
	}
}
