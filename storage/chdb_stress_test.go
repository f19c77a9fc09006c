package storage

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// goSignals is the Go runtime's handlers for the signals libchdb takes,
// recorded at package init, before any test opens chDB.
var goSignals = saveSignals()

// requireGoSignalHandlers fails t unless the Go runtime's handlers for the
// fatal signals are still installed. Without them a Go nil dereference, even
// one that would be recovered, sends the process into libchdb's crash handler,
// which hangs for minutes and then kills it with a bare "Segmentation fault";
// failing here first gives a readable failure instead.
func requireGoSignalHandlers(t testing.TB) {
	t.Helper()
	now := saveSignals()
	for i, sig := range chdbGuardedSignals {
		if now[i] != goSignals[i] {
			t.Fatalf("signal %v: sigaction %+x, want the Go runtime's %+x: libchdb replaced it", sig, now[i], goSignals[i])
		}
	}
}

type nilStringer struct{ s string }

func (n *nilStringer) String() string { return n.s } // faults for a nil *nilStringer

// recoveredNilDeref faults in Go code the way fmt does when it prints a nil
// Stringer: SIGSEGV, turned into a panic by the Go runtime and recovered.
func recoveredNilDeref() string {
	var p *nilStringer
	return fmt.Sprint(p) // "<nil>"
}

// TestChdbKeepsGoSignalHandlers: opening, using, closing and reopening the
// chDB session leaves the Go runtime's signal handlers in place, so a Go nil
// dereference is still an ordinary (recoverable) panic.
func TestChdbKeepsGoSignalHandlers(t *testing.T) {
	c := chdbKind().cfg(t)
	ctx := ctxT(t)
	for round := range 2 { // the second round reconnects when no other Store holds the session
		s, err := Open(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		requireGoSignalHandlers(t)
		if err := s.WriteBatch(ctx, []Window{win("sig", "m", 10*time.Second, t0, 1)}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Devices(ctx); err != nil {
			t.Fatal(err)
		}
		requireGoSignalHandlers(t)
		if got := recoveredNilDeref(); got != "<nil>" {
			t.Fatalf("round %d: fmt of a nil Stringer = %q", round, got)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		requireGoSignalHandlers(t)
	}
}

// TestConcurrentReadWriteStress runs the production access pattern of
// `iotpipe run` against chDB: one goroutine writing batches (the processor)
// while several read (the HTTP API), with the GC forced often and Go code
// faulting and recovering meanwhile. Bounded: IOTPIPE_STRESS (a duration,
// default 4s) or 400 batches, whichever ends first.
func TestConcurrentReadWriteStress(t *testing.T) {
	c := chdbKind().cfg(t)
	dur := 4 * time.Second
	if v := os.Getenv("IOTPIPE_STRESS"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("IOTPIPE_STRESS: %v", err)
		}
		dur = d
	}
	s := openT(t, c)
	requireGoSignalHandlers(t)

	const (
		devices    = 8
		windows    = 30 // per device, 10s each: 5 one-minute buckets
		perWindow  = 4  // readings per window
		maxBatches = 400
	)
	ctx, cancel := context.WithTimeout(ctxT(t), dur)
	defer cancel()
	var (
		wg       sync.WaitGroup
		version  atomic.Uint64 // highest version fully written
		reads    atomic.Int64
		faults   atomic.Int64
		errMu    sync.Mutex
		firstErr error
	)
	fail := func(err error) {
		errMu.Lock()
		defer errMu.Unlock()
		if firstErr == nil {
			firstErr = err
			cancel()
		}
	}
	live := func() bool { return ctx.Err() == nil }

	// Writer: every batch re-emits all windows at the next version (values =
	// version, so a window's mean is its version) plus fresh readings.
	wg.Go(func() {
		for v := uint64(1); v <= maxBatches && live(); v++ {
			var ws []Window
			var rs []Reading
			for d := range devices {
				dev := fmt.Sprintf("stress-%d", d)
				for w := range windows {
					start := t0.Add(time.Duration(w) * 10 * time.Second)
					vals := make([]float64, perWindow)
					for i := range vals {
						vals[i] = float64(v)
					}
					x := win(dev, "temp", 10*time.Second, start, vals...)
					x.Version = v
					ws = append(ws, x)
					rs = append(rs, Reading{Device: dev, Metric: "temp", Time: start.Add(time.Duration(v) * time.Millisecond), Value: float64(v)})
				}
			}
			if err := s.WriteBatch(context.Background(), ws, rs); err != nil {
				fail(fmt.Errorf("WriteBatch v%d: %w", v, err))
				return
			}
			version.Store(v)
		}
		cancel() // enough batches
	})

	check := func(what string, ok bool, format string, args ...any) {
		if !ok {
			fail(fmt.Errorf("%s: "+format, append([]any{what}, args...)...))
		}
	}
	// Readers: each result must be one a committed batch could produce.
	for r := range 4 {
		wg.Go(func() {
			for i := 0; live(); i++ {
				dev := fmt.Sprintf("stress-%d", (r+i)%devices)
				floor := version.Load() // every version <= floor is committed
				switch i % 4 {
				case 0:
					pts, err := s.Series(ctx, SeriesQuery{Device: dev, Metric: "temp", Aggregate: Mean,
						From: t0, To: t0.Add(windows * 10 * time.Second), Step: time.Minute, WindowSize: 10 * time.Second})
					if err != nil {
						check("Series", ctx.Err() != nil, "%v", err)
						continue
					}
					check("Series", floor == 0 || len(pts) == windows/6, "%d points, want %d", len(pts), windows/6)
					for _, p := range pts {
						check("Series", p.Count == 6*perWindow && p.Value >= float64(max(floor, 1)), "bad point %+v (floor v%d)", p, floor)
					}
				case 1:
					got, err := s.Summary(ctx, SummaryQuery{Metric: "temp", Aggregate: Count, From: t0, To: t0.Add(time.Hour), WindowSize: 10 * time.Second})
					if err != nil {
						check("Summary", ctx.Err() != nil, "%v", err)
						continue
					}
					check("Summary", floor == 0 || len(got) == devices, "%d devices, want %d", len(got), devices)
					for _, g := range got {
						check("Summary", g.Value == windows*perWindow, "bad %+v", g)
					}
				case 2:
					got, err := s.Devices(ctx)
					if err != nil {
						check("Devices", ctx.Err() != nil, "%v", err)
						continue
					}
					check("Devices", floor == 0 || len(got) == devices, "%v", got)
				case 3:
					got, err := s.Metrics(ctx, dev)
					if err != nil {
						check("Metrics", ctx.Err() != nil, "%v", err)
						continue
					}
					check("Metrics", floor == 0 || fmt.Sprint(got) == "[temp]", "%v", got)
				}
				reads.Add(1)
			}
		})
	}
	// GC pressure: memory passed to or returned from C must not depend on
	// the collector's timing.
	wg.Go(func() {
		for live() {
			runtime.GC()
			time.Sleep(5 * time.Millisecond)
		}
	})
	// Go code faulting and recovering while chDB runs, as fmt and net/http do.
	wg.Go(func() {
		for live() {
			if got := recoveredNilDeref(); got != "<nil>" {
				fail(fmt.Errorf("fmt of a nil Stringer = %q", got))
			}
			faults.Add(1)
			time.Sleep(time.Millisecond)
		}
	})
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	v := version.Load()
	t.Logf("%d batches (%d windows + %d readings each), %d reads, %d recovered faults in %v",
		v, devices*windows, devices*windows, reads.Load(), faults.Load(), dur)
	if v == 0 || reads.Load() == 0 {
		t.Fatalf("no progress: %d batches, %d reads", v, reads.Load())
	}
	// Final state: the last version everywhere.
	got, err := s.Summary(ctxT(t), SummaryQuery{Metric: "temp", Aggregate: Mean, From: t0, To: t0.Add(time.Hour), WindowSize: 10 * time.Second})
	if err != nil || len(got) != devices {
		t.Fatalf("final summary: %v %v", got, err)
	}
	for _, g := range got {
		if g.Value != float64(v) || g.Count != windows*perWindow {
			t.Errorf("final %+v, want mean %d over %d", g, v, windows*perWindow)
		}
	}
}
