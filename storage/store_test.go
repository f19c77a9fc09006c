package storage

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2025, 3, 14, 12, 0, 0, 0, time.UTC) // minute-aligned

func win(dev, metric string, size time.Duration, start time.Time, vals ...float64) Window {
	w := Window{Device: dev, Metric: metric, Size: size, Start: start, Version: 1,
		Min: math.Inf(1), Max: math.Inf(-1), First: vals[0], Last: vals[len(vals)-1],
		FirstAt: start, LastAt: start.Add(size - time.Millisecond)}
	for _, v := range vals {
		w.Count++
		w.Sum += v
		w.Min = math.Min(w.Min, v)
		w.Max = math.Max(w.Max, v)
	}
	return w
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{},
		{Path: "/x", ClickHouseAddr: []string{"a:1"}},
		{Path: "/x", RawRetention: -time.Hour},
		{Path: "/x", WindowSizes: []time.Duration{1500 * time.Millisecond}},
	} {
		if err := c.validate(); err == nil {
			t.Errorf("%+v: want error", c)
		}
	}
}

func TestOpenBadAddressFailsFast(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, err := Open(ctx, Config{ClickHouseAddr: []string{"127.0.0.1:1"}})
	if err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("want unreachable error, got %v", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestMigrationsIdempotent(t *testing.T) {
	forEngines(t, func(t *testing.T, cfg func(testing.TB) Config) {
		ctx := ctxT(t)
		c := cfg(t)
		s := openT(t, c)
		if n, err := s.migrate(ctx); err != nil || n != 0 {
			t.Fatalf("re-run applied %d (%v), want 0", n, err)
		}
		s2, err := Open(ctx, c) // a second Open of the same database
		if err != nil {
			t.Fatal(err)
		}
		s2.Close()
		got, err := s.strings(ctx, "SELECT toString(version) FROM {db}.schema_migrations ORDER BY version")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(migrations) {
			t.Fatalf("schema_migrations has %v, want %d versions", got, len(migrations))
		}
		tables, err := s.strings(ctx, "SELECT name FROM system.tables WHERE database = ? ORDER BY name", c.Database)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(tables) != "[device_metrics readings schema_migrations window_aggregates]" {
			t.Fatalf("tables %v", tables)
		}
	})
}

func TestSeriesAggregates(t *testing.T) {
	forEngines(t, func(t *testing.T, cfg func(testing.TB) Config) {
		ctx := ctxT(t)
		s := openT(t, cfg(t))
		tenS := 10 * time.Second
		// Minute 0: six 10s windows with unequal counts, so the mean of
		// means (≈ 3.4) differs from Σsum/Σcount.
		ws := []Window{
			win("d1", "temp", tenS, t0, 1, 2, 3),                // sum 6, n 3
			win("d1", "temp", tenS, t0.Add(10*time.Second), 10), // sum 10, n 1
			win("d1", "temp", tenS, t0.Add(20*time.Second), -4, 4),
			win("d1", "temp", tenS, t0.Add(50*time.Second), 0.5),
			// Minute 2 (minute 1 empty): one window.
			win("d1", "temp", tenS, t0.Add(2*time.Minute+30*time.Second), 7, 9),
			// Other series that must not leak in.
			win("d2", "temp", tenS, t0, 1000),
			win("d1", "hum", tenS, t0, 1000),
			// A 1m window with different content: selected only by size.
			win("d1", "temp", time.Minute, t0, 42),
		}
		if err := s.WriteBatch(ctx, ws, nil); err != nil {
			t.Fatal(err)
		}
		// Minute 0: values 1,2,3,10,-4,4,0.5 → n 7, sum 16.5.
		want := map[Aggregate][]float64{
			Mean:  {16.5 / 7, 16.0 / 2},
			Max:   {10, 9},
			Min:   {-4, 7},
			Sum:   {16.5, 16},
			Count: {7, 2},
		}
		for agg, vals := range want {
			pts, err := s.Series(ctx, SeriesQuery{Device: "d1", Metric: "temp", Aggregate: agg,
				From: t0.Add(-time.Hour), To: t0.Add(time.Hour), Step: time.Minute, WindowSize: tenS})
			if err != nil {
				t.Fatal(err)
			}
			if len(pts) != 2 {
				t.Fatalf("%s: %d points %+v, want 2", agg, len(pts), pts)
			}
			for i, p := range pts {
				wantT := t0.Add(time.Duration(2*i) * time.Minute)
				wantN := []uint64{7, 2}[i]
				if !p.Time.Equal(wantT) || p.Value != vals[i] || p.Count != wantN {
					t.Errorf("%s point %d: %+v, want %v %v n=%d", agg, i, p, wantT, vals[i], wantN)
				}
			}
		}
		// Auto size: step 1m reads the 1m window; step 30s the 10s ones.
		pts, err := s.Series(ctx, SeriesQuery{Device: "d1", Metric: "temp", Aggregate: Sum, From: t0, To: t0.Add(time.Minute), Step: time.Minute})
		if err != nil || len(pts) != 1 || pts[0].Value != 42 {
			t.Errorf("auto 1m: %+v %v", pts, err)
		}
		pts, err = s.Series(ctx, SeriesQuery{Device: "d1", Metric: "temp", Aggregate: Sum, From: t0, To: t0.Add(time.Minute), Step: 30 * time.Second})
		if err != nil || len(pts) != 2 || pts[0].Value != 16 || pts[1].Value != 0.5 {
			t.Errorf("auto 30s: %+v %v", pts, err)
		}
		// Unaligned From/To widen to whole buckets.
		pts, err = s.Series(ctx, SeriesQuery{Device: "d1", Metric: "temp", Aggregate: Count, From: t0.Add(25 * time.Second), To: t0.Add(26 * time.Second), Step: time.Minute, WindowSize: tenS})
		if err != nil || len(pts) != 1 || pts[0].Count != 7 {
			t.Errorf("unaligned range: %+v %v", pts, err)
		}
	})
}

func TestBadStepAndAggregate(t *testing.T) {
	forEngines(t, func(t *testing.T, cfg func(testing.TB) Config) {
		ctx := ctxT(t)
		s := openT(t, cfg(t))
		q := SeriesQuery{Device: "d", Metric: "m", Aggregate: Mean, From: t0, To: t0.Add(time.Hour)}
		for _, c := range []struct {
			step, size time.Duration
		}{{5 * time.Second, 0}, {15 * time.Second, 0}, {0, 0}, {time.Minute, 7 * time.Second}} {
			q.Step, q.WindowSize = c.step, c.size
			if _, err := s.Series(ctx, q); !errors.Is(err, ErrBadStep) {
				t.Errorf("step %v size %v: err %v, want ErrBadStep", c.step, c.size, err)
			}
		}
		q.Step, q.Aggregate = time.Minute, "median"
		if _, err := s.Series(ctx, q); !errors.Is(err, ErrBadAggregate) {
			t.Errorf("series: err %v, want ErrBadAggregate", err)
		}
		if _, err := s.Summary(ctx, SummaryQuery{Metric: "m", Aggregate: "", From: t0, To: t0.Add(time.Hour), WindowSize: 10 * time.Second}); !errors.Is(err, ErrBadAggregate) {
			t.Errorf("summary: err %v, want ErrBadAggregate", err)
		}
	})
}

func TestReemittedWindowReplaces(t *testing.T) {
	forEngines(t, func(t *testing.T, cfg func(testing.TB) Config) {
		ctx := ctxT(t)
		s := openT(t, cfg(t))
		w1 := win("d", "m", 10*time.Second, t0, 1)
		w2 := win("d", "m", 10*time.Second, t0, 1, 5) // late reading arrived
		w2.Version = 2
		stale := win("d", "m", 10*time.Second, t0, 100)
		stale.Version = 1 // a redelivered old emission must not win
		for _, w := range []Window{w1, w2, w1, stale} {
			if err := s.WriteBatch(ctx, []Window{w}, nil); err != nil {
				t.Fatal(err)
			}
		}
		pts, err := s.Series(ctx, SeriesQuery{Device: "d", Metric: "m", Aggregate: Sum, From: t0, To: t0.Add(time.Minute), Step: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if len(pts) != 1 || pts[0].Value != 6 || pts[0].Count != 2 {
			t.Fatalf("got %+v, want sum 6 count 2", pts)
		}
	})
}

func TestDuplicateReadingsDedupe(t *testing.T) {
	forEngines(t, func(t *testing.T, cfg func(testing.TB) Config) {
		ctx := ctxT(t)
		s := openT(t, cfg(t))
		var rs []Reading
		for i := range 100 {
			rs = append(rs, Reading{Device: "d", Metric: "m", Time: t0.Add(time.Duration(i) * 1500 * time.Microsecond), Value: float64(i) / 3})
		}
		for range 3 { // redelivery
			if err := s.WriteBatch(ctx, nil, rs); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.strings(ctx, "SELECT toString(count()) FROM {db}.readings FINAL")
		if err != nil {
			t.Fatal(err)
		}
		// 1.5ms steps at millisecond precision: ts i and i+1 never collide.
		if got[0] != "100" {
			t.Fatalf("%s distinct readings after 3 deliveries, want 100", got[0])
		}
		rows, err := s.eng.query(ctx, s.sql("SELECT ts, value FROM {db}.readings FINAL ORDER BY ts"))
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for i := 0; rows.Next(); i++ {
			var (
				ts time.Time
				v  float64
			)
			if err := rows.Scan(&ts, &v); err != nil {
				t.Fatal(err)
			}
			if !ts.Equal(rs[i].Time.Truncate(time.Millisecond)) || v != rs[i].Value {
				t.Fatalf("reading %d: %v %v, want %v %v", i, ts, v, rs[i].Time, rs[i].Value)
			}
		}
	})
}

func TestSummary(t *testing.T) {
	forEngines(t, func(t *testing.T, cfg func(testing.TB) Config) {
		ctx := ctxT(t)
		s := openT(t, cfg(t))
		tenS := 10 * time.Second
		ws := []Window{
			win("a", "temp", tenS, t0, 10, 20),
			win("a", "temp", tenS, t0.Add(10*time.Second), 30),
			win("a", "temp", tenS, t0.Add(time.Hour), 1000), // outside range
			win("b", "temp", tenS, t0, 5),
			win("c", "temp", tenS, t0, 7),
			win("a", "hum", tenS, t0, 99),
			win("a", "temp", time.Minute, t0, 555), // other size: ignored
		}
		if err := s.WriteBatch(ctx, ws, nil); err != nil {
			t.Fatal(err)
		}
		got, err := s.Summary(ctx, SummaryQuery{Metric: "temp", Aggregate: Mean, From: t0, To: t0.Add(time.Minute), WindowSize: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != "[{a 20 3} {b 5 1} {c 7 1}]" {
			t.Errorf("all devices: %v", got)
		}
		got, err = s.Summary(ctx, SummaryQuery{Metric: "temp", Aggregate: Max, From: t0, To: t0.Add(time.Minute), Devices: []string{"a", "c", "zz"}, WindowSize: 10 * time.Second})
		if err != nil || fmt.Sprint(got) != "[{a 30 3} {c 7 1}]" {
			t.Errorf("filtered: %v %v", got, err)
		}
		// Edges: only windows wholly inside [From, To) count.
		got, err = s.Summary(ctx, SummaryQuery{Metric: "temp", Aggregate: Sum, From: t0.Add(time.Second), To: t0.Add(20 * time.Second), Devices: []string{"a"}, WindowSize: 10 * time.Second})
		if err != nil || fmt.Sprint(got) != "[{a 30 1}]" {
			t.Errorf("edges: %v %v", got, err)
		}
		devs, err := s.Devices(ctx)
		if err != nil || fmt.Sprint(devs) != "[a b c]" {
			t.Errorf("Devices: %v %v", devs, err)
		}
		ms, err := s.Metrics(ctx, "a")
		if err != nil || fmt.Sprint(ms) != "[hum temp]" {
			t.Errorf("Metrics: %v %v", ms, err)
		}
	})
}

func TestNastyStrings(t *testing.T) {
	forEngines(t, func(t *testing.T, cfg func(testing.TB) Config) {
		ctx := ctxT(t)
		s := openT(t, cfg(t))
		var ws []Window
		for i, d := range nasty {
			ws = append(ws, win(d, nasty[len(nasty)-1-i], 10*time.Second, t0, float64(i)))
		}
		if err := s.WriteBatch(ctx, ws, []Reading{{Device: nasty[5], Metric: nasty[6], Time: t0, Value: 1}}); err != nil {
			t.Fatal(err)
		}
		devs, err := s.Devices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(devs) != len(nasty) {
			t.Fatalf("Devices: %q", devs)
		}
		for i, d := range nasty {
			m := nasty[len(nasty)-1-i]
			ms, err := s.Metrics(ctx, d)
			if err != nil || len(ms) != 1 || ms[0] != m {
				t.Errorf("Metrics(%q) = %q %v, want [%q]", d, ms, err, m)
			}
			pts, err := s.Series(ctx, SeriesQuery{Device: d, Metric: m, Aggregate: Sum, From: t0, To: t0.Add(time.Minute), Step: time.Minute, WindowSize: 10 * time.Second})
			if err != nil || len(pts) != 1 || pts[0].Value != float64(i) {
				t.Errorf("Series(%q, %q) = %+v %v", d, m, pts, err)
			}
			sum, err := s.Summary(ctx, SummaryQuery{Metric: m, Aggregate: Count, From: t0, To: t0.Add(time.Minute), Devices: []string{d}, WindowSize: 10 * time.Second})
			if err != nil || len(sum) != 1 || sum[0].Device != d {
				t.Errorf("Summary(%q, %q) = %+v %v", d, m, sum, err)
			}
		}
	})
}

func TestRetentionReconciled(t *testing.T) {
	forEngines(t, func(t *testing.T, cfg func(testing.TB) Config) {
		ctx := ctxT(t)
		c := cfg(t)
		c.RawRetention = 48 * time.Hour
		s := openT(t, c)
		ttl := func() string {
			got, err := s.strings(ctx, "SELECT engine_full FROM system.tables WHERE database = ? AND name = 'readings'", c.Database)
			if err != nil || len(got) != 1 {
				t.Fatalf("%v %v", got, err)
			}
			return got[0]
		}
		if e := ttl(); !strings.Contains(e, "toIntervalSecond(172800)") {
			t.Fatalf("TTL not set: %s", e)
		}
		c.RawRetention = 0
		s2, err := Open(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		s2.Close()
		if e := ttl(); strings.Contains(e, " TTL ") {
			t.Fatalf("TTL not removed: %s", e)
		}
	})
}

func TestConcurrentWriteBatch(t *testing.T) {
	forEngines(t, func(t *testing.T, cfg func(testing.TB) Config) {
		ctx := ctxT(t)
		s := openT(t, cfg(t))
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var ws []Window
				for i := range 50 {
					ws = append(ws, win(fmt.Sprintf("g%d", g), "m", 10*time.Second, t0.Add(time.Duration(i)*10*time.Second), 1))
				}
				errs <- s.WriteBatch(ctx, ws, []Reading{{Device: "x", Metric: "m", Time: t0.Add(time.Duration(g) * time.Millisecond), Value: 1}})
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.Summary(ctx, SummaryQuery{Metric: "m", Aggregate: Count, From: t0, To: t0.Add(time.Hour), WindowSize: 10 * time.Second})
		if err != nil || len(got) != 8 {
			t.Fatalf("%v %v", got, err)
		}
		for _, v := range got {
			if v.Value != 50 {
				t.Errorf("%v", v)
			}
		}
	})
}

// TestChdbPersistence closes the process's chDB session completely and
// reopens the same directory: the data must come back from disk.
func TestChdbPersistence(t *testing.T) {
	c := chdbKind().cfg(t)
	ctx := ctxT(t)
	if session.refs != 0 {
		t.Fatalf("another Store still holds the chDB session (%d refs)", session.refs)
	}
	s, err := Open(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WriteBatch(ctx, []Window{win("p", "m", 10*time.Second, t0, 3, 4)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if session.conn != nil {
		t.Fatal("session still open after last Close")
	}
	if _, err := os.Stat(filepath.Join(c.Path, "metadata")); err != nil {
		t.Fatalf("nothing on disk: %v", err)
	}
	s = openT(t, c)
	if n, err := s.migrate(ctx); err != nil || n != 0 {
		t.Fatalf("reopen re-applied %d migrations (%v)", n, err)
	}
	got, err := s.Summary(ctx, SummaryQuery{Metric: "m", Aggregate: Sum, From: t0, To: t0.Add(time.Minute), WindowSize: 10 * time.Second})
	if err != nil || fmt.Sprint(got) != "[{p 7 2}]" {
		t.Fatalf("after reopen: %v %v", got, err)
	}
}

func TestChdbOnePathPerProcess(t *testing.T) {
	c := chdbKind().cfg(t)
	s := openT(t, c)
	_ = s
	c.Path = t.TempDir()
	if _, err := Open(ctxT(t), c); err == nil || !strings.Contains(err.Error(), "one data path per process") {
		t.Fatalf("want one-path error, got %v", err)
	}
}

// device_metrics gets a (device, metric) pair once per Store, not once per
// windows insert (each insert is a part: a fixed cost); a new pair later is
// added.
func TestDeviceMetricsWrittenOnce(t *testing.T) {
	forEngines(t, func(t *testing.T, cfg func(testing.TB) Config) {
		ctx := ctxT(t)
		s := openT(t, cfg(t))
		rows := func() string {
			t.Helper()
			got, err := s.strings(ctx, "SELECT toString(count()) FROM {db}.device_metrics")
			if err != nil {
				t.Fatal(err)
			}
			return fmt.Sprint(got)
		}
		batch := []Window{win("a", "temp", 10*time.Second, t0, 1), win("a", "hum", 10*time.Second, t0, 2),
			win("b", "temp", 10*time.Second, t0, 3), win("a", "temp", time.Minute, t0, 1)}
		for i := range 3 {
			for j := range batch {
				batch[j].Start = t0.Add(time.Duration(i) * time.Minute)
			}
			if err := s.WriteBatch(ctx, batch, nil); err != nil {
				t.Fatal(err)
			}
		}
		if got := rows(); got != "[3]" {
			t.Fatalf("device_metrics rows after 3 batches of 3 pairs: %s, want [3]", got)
		}
		if err := s.WriteBatch(ctx, []Window{win("c", "co2", 10*time.Second, t0, 4), win("a", "hum", 10*time.Second, t0, 5)}, nil); err != nil {
			t.Fatal(err)
		}
		if got := rows(); got != "[4]" {
			t.Fatalf("device_metrics rows after a new pair: %s, want [4]", got)
		}
		if ms, err := s.AllMetrics(ctx); err != nil || fmt.Sprint(ms) != "[co2 hum temp]" {
			t.Errorf("AllMetrics: %v %v", ms, err)
		}
	})
}
