package processor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/internal/testkafka"
	"github.com/iotpipe/iotpipe/storage"
)

// chdbDir is this test process's one chDB path (chDB allows one per process);
// tests isolate themselves by database.
var chdbDir string

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "iotpipe-processor-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		chdbDir = dir
		defer func() {
			if anchor != nil {
				anchor.Close()
			}
		}()
		return m.Run()
	}()
	os.Exit(code)
}

var (
	t0    = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	sizes = []time.Duration{10 * time.Second, time.Minute}
)

type agg struct {
	count         uint64
	sum, min, max float64
}

// countingSink wraps the sink under test: it counts window emissions per key
// (a window stored twice would be re-emitted work, a different content a
// double count) and can fail the first failN writes.
type countingSink struct {
	Sink
	mu       sync.Mutex
	emitted  map[string][]storage.Window
	readings int // stored
	fails    int
	failN    int
	onFail   func()
}

func (c *countingSink) WriteBatch(ctx context.Context, ws []storage.Window, rs []storage.Reading) error {
	c.mu.Lock()
	if c.fails < c.failN {
		c.fails++
		c.mu.Unlock()
		if c.onFail != nil {
			c.onFail()
		}
		return errors.New("injected storage failure")
	}
	c.mu.Unlock()
	if err := c.Sink.WriteBatch(ctx, ws, rs); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range ws {
		k := fmt.Sprint(w.Device, w.Metric, w.Size, w.Start)
		c.emitted[k] = append(c.emitted[k], w)
	}
	c.readings += len(rs)
	return nil
}

func (c *countingSink) storedReadings() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readings
}

// memSink is the stand-in when no chDB is available: ReplacingMergeTree
// semantics (highest version wins).
type memSink struct {
	mu sync.Mutex
	ws map[string]storage.Window
}

func (m *memSink) WriteBatch(_ context.Context, ws []storage.Window, _ []storage.Reading) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range ws {
		k := fmt.Sprint(w.Device, w.Metric, w.Size, w.Start)
		if old, ok := m.ws[k]; !ok || w.Version >= old.Version {
			m.ws[k] = w
		}
	}
	return nil
}

// The chDB session is opened once per process and kept open by an anchor
// Store: reopening it after the last Store closed crashed libchdb here.
var (
	anchorOnce sync.Once
	anchor     *storage.Store
	anchorErr  error
	storeSeq   atomic.Int64
)

// testStore opens a Store on a database of its own, closed when tb ends,
// so a test starts from empty tables also when repeated (-count).
func testStore(tb testing.TB) (*storage.Store, error) {
	anchorOnce.Do(func() {
		anchor, anchorErr = storage.Open(context.Background(), storage.Config{Path: chdbDir,
			Database: fmt.Sprintf("processor_test_%d", os.Getpid()), WindowSizes: sizes, Logger: zerolog.Nop()})
	})
	if anchorErr != nil {
		return nil, anchorErr
	}
	st, err := storage.Open(context.Background(), storage.Config{Path: chdbDir,
		Database: fmt.Sprintf("processor_test_%d_%d", os.Getpid(), storeSeq.Add(1)), WindowSizes: sizes, Logger: zerolog.Nop()})
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { _ = st.Close() })
	return st, nil
}

type lookupFn func(device, metric string, size time.Duration) map[time.Time]agg

// newSink returns the real chDB store when CHDB_LIB_PATH is set, else an
// in-memory sink, and a function reading stored windows back.
func newSink(t *testing.T) (*countingSink, lookupFn) {
	t.Helper()
	cs := &countingSink{emitted: map[string][]storage.Window{}}
	if os.Getenv("CHDB_LIB_PATH") == "" {
		t.Log("CHDB_LIB_PATH is not set: asserting on an in-memory sink, not storage.Store (export CHDB_LIB_PATH=$(scripts/chdb.sh))")
		m := &memSink{ws: map[string]storage.Window{}}
		cs.Sink = m
		return cs, func(device, metric string, size time.Duration) map[time.Time]agg {
			m.mu.Lock()
			defer m.mu.Unlock()
			out := map[time.Time]agg{}
			for _, w := range m.ws {
				if w.Device == device && w.Metric == metric && w.Size == size {
					out[w.Start] = agg{w.Count, w.Sum, w.Min, w.Max}
				}
			}
			return out
		}
	}
	st, err := testStore(t)
	if err != nil {
		t.Fatalf("open storage: %v", err)
	}
	cs.Sink = st
	return cs, func(device, metric string, size time.Duration) map[time.Time]agg {
		out := map[time.Time]agg{}
		for _, a := range []storage.Aggregate{storage.Count, storage.Sum, storage.Min, storage.Max} {
			pts, err := st.Series(context.Background(), storage.SeriesQuery{Device: device, Metric: metric, Aggregate: a,
				From: t0.Add(-time.Hour), To: t0.Add(time.Hour), Step: size, WindowSize: size})
			if err != nil {
				t.Fatalf("series: %v", err)
			}
			for _, p := range pts {
				g := out[p.Time]
				switch a {
				case storage.Count:
					g.count = uint64(p.Value)
				case storage.Sum:
					g.sum = p.Value
				case storage.Min:
					g.min = p.Value
				case storage.Max:
					g.max = p.Value
				}
				out[p.Time] = g
			}
		}
		return out
	}
}

type env struct {
	seeds  []string
	topics bus.Topics
	cl     *kgo.Client
	group  string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	seeds := testkafka.Seeds(t)
	e := &env{seeds: seeds, topics: bus.TopicNames(testkafka.Prefix(t)), cl: testkafka.Client(t, seeds)}
	e.group = e.topics.Telemetry + ".group"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.EnsureTopics(ctx, e.cl, e.topics.Specs(1), 1); err != nil {
		t.Fatal(err)
	}
	testkafka.WaitTopic(t, seeds, e.topics.Telemetry)
	testkafka.WaitTopic(t, seeds, e.topics.DeadLetter)
	return e
}

func (e *env) record(device, payload string) *kgo.Record {
	r := &kgo.Record{Topic: e.topics.Telemetry, Key: []byte(device), Value: []byte(payload)}
	if device != "" {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: bus.HeaderDevice, Value: []byte(device)})
	}
	r.Headers = append(r.Headers,
		kgo.RecordHeader{Key: bus.HeaderTopic, Value: []byte("/devices/" + device + "/events")},
		kgo.RecordHeader{Key: bus.HeaderReceivedAt, Value: bus.FormatMillis(t0)})
	return r
}

func ts(sec int) int64 { return t0.Unix() + int64(sec) }

func (e *env) produce(t *testing.T, recs ...*kgo.Record) {
	t.Helper()
	if err := e.cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// start runs a processor until the returned stop is called; stop returns Run's error.
func (e *env) start(t *testing.T, sink Sink, idle time.Duration) (stop func() error) {
	t.Helper()
	return e.startWith(t, sink, idle, func(*Config) {})
}

// startWith is start with the config changed by edit.
func (e *env) startWith(t *testing.T, sink Sink, idle time.Duration, edit func(*Config)) (stop func() error) {
	t.Helper()
	cfg := Config{Kafka: []kgo.Opt{kgo.SeedBrokers(e.seeds...)}, Topics: e.topics, Group: e.group,
		WindowSizes: sizes, IdleTimeout: idle, FlushInterval: 20 * time.Millisecond, Sink: sink, Logger: zerolog.New(io.Discard)}
	edit(&cfg)
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() { stop() })
	return stop
}

func (e *env) committed(t *testing.T) (kadm.OffsetResponse, bool) {
	t.Helper()
	resp, err := kadm.NewClient(e.cl).FetchOffsets(context.Background(), e.group)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Lookup(e.topics.Telemetry, 0)
}

func waitWindows(t *testing.T, lookup lookupFn, device, metric string, size time.Duration, want map[time.Time]agg) {
	t.Helper()
	var got map[time.Time]agg
	testkafka.Eventually(t, 20*time.Second, fmt.Sprintf("%s/%s/%v windows %v", device, metric, size, want), func() bool {
		got = lookup(device, metric, size)
		return fmt.Sprint(got) == fmt.Sprint(want)
	})
}

func TestKnownRecordsExactWindows(t *testing.T) {
	e := newEnv(t)
	sink, lookup := newSink(t)
	e.start(t, sink, time.Hour)
	e.produce(t,
		e.record("d1", fmt.Sprintf(`{"ts":%d,"t":1,"env":{"h":10},"name":"x"}`, ts(1))),
		e.record("d1", fmt.Sprintf(`{"ts":%d,"t":3}`, ts(2))),
		e.record("d1", fmt.Sprintf(`{"ts":%d,"t":100}`, ts(2))), // same identity: not counted again
		e.record("d1", fmt.Sprintf(`{"ts":"%s","t":5}`, t0.Add(12*time.Second).Format(time.RFC3339))),
		e.record("d1", fmt.Sprintf(`{"ts":%d,"t":0}`, ts(300)*1000)), // ms; closes everything before t0+295s
	)
	waitWindows(t, lookup, "d1", "t", 10*time.Second, map[time.Time]agg{
		t0: {2, 4, 1, 3}, t0.Add(10 * time.Second): {1, 5, 5, 5}})
	waitWindows(t, lookup, "d1", "t", time.Minute, map[time.Time]agg{t0: {3, 9, 1, 5}})
	waitWindows(t, lookup, "d1", "env.h", 10*time.Second, map[time.Time]agg{t0: {1, 10, 10, 10}})
	// The watermark is committed with the offset of the first open window's record.
	testkafka.Eventually(t, 10*time.Second, "commit with watermark", func() bool {
		o, ok := e.committed(t)
		return ok && o.At == 4 && o.Metadata == formatMetaFor(t0.Add(295*time.Second), 5)
	})
}

// TestWindowsOnly: the same windows either way; raw readings are stored by
// default and not at all with WindowsOnly, even once every record is
// committed.
func TestWindowsOnly(t *testing.T) {
	for _, only := range []bool{false, true} {
		t.Run(fmt.Sprint("WindowsOnly=", only), func(t *testing.T) {
			e := newEnv(t)
			sink, lookup := newSink(t)
			e.startWith(t, sink, time.Hour, func(c *Config) { c.WindowsOnly = only })
			dev := fmt.Sprint("windows-only-", only)
			e.produce(t,
				e.record(dev, fmt.Sprintf(`{"ts":%d,"t":1,"h":5}`, ts(1))),
				e.record(dev, fmt.Sprintf(`{"ts":%d,"t":3}`, ts(2))),
				e.record(dev, fmt.Sprintf(`{"ts":%d,"t":0}`, ts(300))))
			waitWindows(t, lookup, dev, "t", 10*time.Second, map[time.Time]agg{t0: {2, 4, 1, 3}})
			waitWindows(t, lookup, dev, "h", 10*time.Second, map[time.Time]agg{t0: {1, 5, 5, 5}})
			testkafka.Eventually(t, 10*time.Second, "every record committed", func() bool {
				o, ok := e.committed(t)
				return ok && parseMeta(o.At, o.Metadata).Next == 3
			})
			want := 4 // t, h, t, t
			if only {
				want = 0
			}
			if got := sink.storedReadings(); got != want {
				t.Fatalf("%d readings stored, want %d", got, want)
			}
		})
	}
}

func formatMetaFor(w time.Time, next int64) string {
	return fmt.Sprintf("%sw=%d n=%d", metaPrefix, w.UnixNano(), next)
}

func TestDeadLetters(t *testing.T) {
	e := newEnv(t)
	sink, lookup := newSink(t)
	e.start(t, sink, time.Hour)
	noDevice := e.record("", `{"t":1}`)
	noDevice.Key = nil
	bad := []*kgo.Record{
		e.record("d2", `not json`),
		e.record("d2", `{"s":"x","on":true}`),
		e.record("d2", `{"ts":"yesterday","t":1}`),
		noDevice,
	}
	e.produce(t, bad...)
	e.produce(t,
		e.record("d2", fmt.Sprintf(`{"ts":%d,"t":1}`, ts(100))),
		e.record("d2", fmt.Sprintf(`{"ts":%d,"t":2}`, ts(200))), // watermark t0+195s
	)
	late := e.record("d2", fmt.Sprintf(`{"ts":%d,"t":7}`, ts(101)))
	e.produce(t, late, e.record("d2", fmt.Sprintf(`{"ts":%d,"t":0}`, ts(400))))
	waitWindows(t, lookup, "d2", "t", 10*time.Second, map[time.Time]agg{
		t0.Add(100 * time.Second): {1, 1, 1, 1}, t0.Add(200 * time.Second): {1, 2, 2, 2}})

	want := []struct {
		rec    *kgo.Record
		reason string
		offset int
	}{{bad[0], ReasonMalformedJSON, 0}, {bad[1], ReasonNoNumericValues, 1}, {bad[2], ReasonBadTimestamp, 2},
		{bad[3], ReasonMissingDevice, 3}, {late, ReasonTooLate, 6}}
	got := testkafka.Consume(t, e.seeds, e.topics.DeadLetter, len(want), 20*time.Second)
	if len(got) != len(want) {
		t.Fatalf("%d dead letters, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if string(g.Value) != string(w.rec.Value) || string(g.Key) != string(w.rec.Key) {
			t.Errorf("%d: value %q key %q, want %q %q", i, g.Value, g.Key, w.rec.Value, w.rec.Key)
		}
		if r := bus.Header(g, bus.HeaderReason); r != w.reason {
			t.Errorf("%d: reason %q, want %q", i, r, w.reason)
		}
		if s := bus.Header(g, bus.HeaderSource); s != fmt.Sprintf("%s/0/%d", e.topics.Telemetry, w.offset) {
			t.Errorf("%d: source %q", i, s)
		}
		if bus.Header(g, bus.HeaderDetail) == "" || bus.Header(g, bus.HeaderReceivedAt) != bus.Header(w.rec, bus.HeaderReceivedAt) ||
			bus.Header(g, bus.HeaderTopic) != bus.Header(w.rec, bus.HeaderTopic) {
			t.Errorf("%d: headers %v", i, g.Headers)
		}
	}
}

func TestRestartRebuildsOpenWindows(t *testing.T) {
	e := newEnv(t)
	sink, lookup := newSink(t)
	stop := e.start(t, sink, time.Hour)
	e.produce(t,
		e.record("d3", fmt.Sprintf(`{"ts":%d,"t":1}`, ts(1))),
		e.record("d3", fmt.Sprintf(`{"ts":%d,"t":2}`, ts(11))),
		e.record("d3", fmt.Sprintf(`{"ts":%d,"t":4}`, ts(65))), // watermark t0+60s: [60,70) and [60,120) stay open
	)
	waitWindows(t, lookup, "d3", "t", time.Minute, map[time.Time]agg{t0: {2, 3, 1, 2}})
	testkafka.Eventually(t, 10*time.Second, "commit at the open windows' first offset", func() bool {
		o, ok := e.committed(t)
		return ok && o.At == 2 && o.Metadata == formatMetaFor(t0.Add(60*time.Second), 3)
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	e.start(t, sink, time.Hour)
	e.produce(t,
		e.record("d3", fmt.Sprintf(`{"ts":%d,"t":4}`, ts(65))), // redelivery: same identity
		e.record("d3", fmt.Sprintf(`{"ts":%d,"t":8}`, ts(66))),
		e.record("d3", fmt.Sprintf(`{"ts":%d,"t":50}`, ts(2))), // too late after the restored watermark
		e.record("d3", fmt.Sprintf(`{"ts":%d,"t":0}`, ts(500))),
	)
	waitWindows(t, lookup, "d3", "t", 10*time.Second, map[time.Time]agg{
		t0: {1, 1, 1, 1}, t0.Add(10 * time.Second): {1, 2, 2, 2}, t0.Add(60 * time.Second): {2, 12, 4, 8}})
	waitWindows(t, lookup, "d3", "t", time.Minute, map[time.Time]agg{t0: {2, 3, 1, 2}, t0.Add(time.Minute): {2, 12, 4, 8}})
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for k, ws := range sink.emitted {
		if len(ws) != 1 {
			t.Errorf("window %s emitted %d times: %+v", k, len(ws), ws)
		}
	}
}

func TestFailingSinkCommitsNothingUntilStored(t *testing.T) {
	e := newEnv(t)
	sink, lookup := newSink(t)
	sink.failN = 3
	var committedDuringFailure bool
	sink.onFail = func() {
		if _, ok := e.committed(t); ok {
			committedDuringFailure = true
		}
	}
	e.start(t, sink, 200*time.Millisecond) // idle closes the last window too
	e.produce(t,
		e.record("d4", fmt.Sprintf(`{"ts":%d,"t":1}`, ts(1))),
		e.record("d4", fmt.Sprintf(`{"ts":%d,"t":2}`, ts(30))),
	)
	waitWindows(t, lookup, "d4", "t", 10*time.Second, map[time.Time]agg{t0: {1, 1, 1, 1}, t0.Add(30 * time.Second): {1, 2, 2, 2}})
	waitWindows(t, lookup, "d4", "t", time.Minute, map[time.Time]agg{t0: {2, 3, 1, 2}})
	sink.mu.Lock()
	fails := sink.fails
	sink.mu.Unlock()
	if fails != 3 || committedDuringFailure {
		t.Fatalf("fails=%d committedDuringFailure=%v", fails, committedDuringFailure)
	}
	testkafka.Eventually(t, 10*time.Second, "commit after the store succeeded", func() bool {
		o, ok := e.committed(t)
		return ok && o.At == 2
	})
}
