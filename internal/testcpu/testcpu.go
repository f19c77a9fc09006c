// Package testcpu measures the CPU the test process uses, for benchmarks
// that report cores used or must start from a quiet process (chDB merges
// in the background long after an insert returned).
package testcpu

import (
	"syscall"
	"testing"
	"time"
)

// Time is the process's user+system CPU time so far: every goroutine and
// every thread of the process (kfake, the Kafka client, chDB's threads).
func Time(tb testing.TB) time.Duration {
	tb.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// WaitQuiet waits until the process uses under 5% of a core over 250 ms
// and reports whether that happened within limit.
func WaitQuiet(tb testing.TB, limit time.Duration) bool {
	tb.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		c0, w0 := Time(tb), time.Now()
		time.Sleep(250 * time.Millisecond) // sampling CPU use, not synchronising
		if float64(Time(tb)-c0) < 0.05*float64(time.Since(w0)) {
			return true
		}
	}
	return false
}
