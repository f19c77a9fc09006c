package processor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/bruteforce"
	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/internal/testkafka"
	"github.com/iotpipe/iotpipe/storage"
)

// The storage-outage tests run a processor over a stream of real-time
// readings (event time = wall clock when produced, as devices send them),
// switch its storage off for a while as records keep coming, and check:
//
//   - nothing is committed past unstored data: at every commit observed, the
//     readings of every record before the committed replay position are
//     stored, and every window that the committed watermark closed is stored
//     with exactly its brute-force content;
//   - during the outage consumption stops (records consumed grow by at most
//     one batch, MaxBatchRows, while the backlog grows by thousands), nothing
//     is committed, and the client's buffered fetch stays bounded;
//   - after storage returns the backlog drains (committed = end offsets) and
//     the stored windows equal the brute-force aggregation exactly, with no
//     reading dead-lettered.

const (
	outageDevices    = 24
	outagePartitions = 3
	outageEvery      = 5 * time.Millisecond // one record per device per tick
	outageBatch      = 2000                 // MaxBatchRows
	outageLateness   = 500 * time.Millisecond
)

var outageSizes = []time.Duration{time.Second, 5 * time.Second}

// TestStorageOutage: storage down for 2s, shorter than the idle timeout.
func TestStorageOutage(t *testing.T) {
	runOutage(t, 5*time.Second, 2*time.Second)
}

// TestStorageOutageLongerThanIdleTimeout: storage down for longer than the
// idle timeout (the default idle timeout of `iotpipe processor` is 10s; an
// outage of a minute is ordinary). The backlog built up meanwhile is not
// idle and must not be dead-lettered as too late.
//
// Known failure (processor bug): idle is measured as wall time since the
// partition's last processed record, and the poll loop is blocked while
// store retries. When the store returns, maybeFlush runs AdvanceIdle for
// partitions that the next poll did not bring records for yet, moves their
// watermark to wall clock − lateness and dead-letters their backlog as
// too_late.
func TestStorageOutageLongerThanIdleTimeout(t *testing.T) {
	runOutage(t, 300*time.Millisecond, 3*time.Second)
}

// outageSink wraps the real store and fails every write while down. It
// remembers what was acknowledged, to check commits against.
type outageSink struct {
	inner    Sink
	down     atomic.Bool
	failures atomic.Int64

	mu       sync.Mutex
	readings map[outageID]bool
	windows  map[outageWin]storage.Window // highest version acknowledged
}

type outageID struct {
	device, metric string
	at             int64 // Unix ms
}

type outageWin struct {
	device, metric string
	size           time.Duration
	start          int64 // Unix ms
}

func (s *outageSink) WriteBatch(ctx context.Context, ws []storage.Window, rs []storage.Reading) error {
	if s.down.Load() {
		s.failures.Add(1)
		return errors.New("injected outage: storage unavailable")
	}
	if err := s.inner.WriteBatch(ctx, ws, rs); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range rs {
		s.readings[outageID{r.Device, r.Metric, r.Time.UnixMilli()}] = true
	}
	for _, w := range ws {
		k := outageWin{w.Device, w.Metric, w.Size, w.Start.UnixMilli()}
		if old, ok := s.windows[k]; !ok || w.Version >= old.Version {
			s.windows[k] = w
		}
	}
	return nil
}

// outageRec is one produced record: its offset is its index in its
// partition's slice (one producer, no transactions: offsets are dense).
type outageRec struct {
	device string
	at     time.Time
	vals   [2]float64
}

var outageMetrics = [2]string{"temperature", "humidity"}

type outageAgg = bruteforce.Agg

// aggregate is the brute force: distinct readings by (device, metric, event
// time), first in offset order wins, per window of every size.
func aggregate(recs []outageRec, keep func(outageWin) bool) map[outageWin]outageAgg {
	out := map[outageWin]outageAgg{}
	seen := map[outageID]bool{}
	for _, r := range recs {
		for i, v := range r.vals {
			id := outageID{r.device, outageMetrics[i], r.at.UnixMilli()}
			if seen[id] {
				continue
			}
			seen[id] = true
			for _, size := range outageSizes {
				k := outageWin{r.device, outageMetrics[i], size, r.at.Truncate(size).UnixMilli()}
				if keep == nil || keep(k) {
					out[k] = out[k].Add(v)
				}
			}
		}
	}
	return out
}

type outageRig struct {
	t      *testing.T
	seeds  []string
	topics bus.Topics
	group  string
	adm    *kadm.Client
	prefix string // device name prefix, unique per test (the store is shared)

	mu    sync.Mutex
	parts map[int32][]outageRec // acknowledged records by partition, index = offset

	dead      map[string]bool // dead letters' sources, "topic/partition/offset"
	deadFresh bool            // dead was read during this check
}

// committedCheckpoint is what the processor committed for a partition:
// offset, and watermark and next offset from the metadata.
type committedCheckpoint struct {
	offset, next int64
	watermark    time.Time // zero: none
}

func (r *outageRig) committed() map[int32]committedCheckpoint {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := map[int32]committedCheckpoint{}
	resp, err := r.adm.FetchOffsets(ctx, r.group)
	if errors.Is(err, kerr.GroupIDNotFound) || errors.Is(err, kerr.CoordinatorNotAvailable) ||
		errors.Is(err, kerr.CoordinatorLoadInProgress) || errors.Is(err, kerr.NotCoordinator) {
		return out // not joined yet, or a new group's coordinator is still loading (Apache Kafka)
	}
	if err != nil {
		r.t.Fatalf("fetch offsets: %v", err)
	}
	resp.Each(func(o kadm.OffsetResponse) {
		if o.Topic != r.topics.Telemetry || o.Err != nil || o.At < 0 {
			return
		}
		// "iotpipe1 w=<unix ns or -> n=<next>", parsed here independently
		// of the processor's own parser.
		f := strings.Fields(o.Metadata)
		if len(f) != 3 || f[0] != "iotpipe1" || !strings.HasPrefix(f[1], "w=") || !strings.HasPrefix(f[2], "n=") {
			r.t.Fatalf("partition %d: committed metadata %q is not the processor's", o.Partition, o.Metadata)
		}
		cp := committedCheckpoint{offset: o.At}
		if w := strings.TrimPrefix(f[1], "w="); w != "-" {
			ns, err := strconv.ParseInt(w, 10, 64)
			if err != nil {
				r.t.Fatalf("metadata %q: %v", o.Metadata, err)
			}
			cp.watermark = time.Unix(0, ns)
		}
		if cp.next, err = strconv.ParseInt(strings.TrimPrefix(f[2], "n="), 10, 64); err != nil {
			r.t.Fatalf("metadata %q: %v", o.Metadata, err)
		}
		out[o.Partition] = cp
	})
	return out
}

func (r *outageRig) endOffsets() map[int32]int64 {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := r.adm.ListEndOffsets(ctx, r.topics.Telemetry)
	if err != nil {
		r.t.Fatalf("end offsets: %v", err)
	}
	out := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
	return out
}

// checkCommitted verifies that nothing is committed past stored data: for
// each partition, every reading of the records before the committed next
// offset is stored, and every window the committed watermark closed is
// stored with its full brute-force content. It returns the checkpoints.
func (r *outageRig) checkCommitted(sink *outageSink) map[int32]committedCheckpoint {
	r.t.Helper()
	cps := r.committed()
	r.deadFresh = false
	r.mu.Lock()
	defer r.mu.Unlock()
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for p, cp := range cps {
		recs := r.parts[p]
		if cp.offset > cp.next {
			r.t.Fatalf("partition %d: committed offset %d is past its next %d", p, cp.offset, cp.next)
		}
		if cp.next > int64(len(recs)) {
			continue // the producer's acknowledgements are behind; check later
		}
		before := recs[:cp.next]
		for off, rec := range before {
			for i := range rec.vals {
				if !sink.readings[outageID{rec.device, outageMetrics[i], rec.at.UnixMilli()}] && !r.deadLettered(p, int64(off)) {
					r.t.Fatalf("partition %d committed next=%d but the %s reading of offset %d (%s at %s) is not stored",
						p, cp.next, outageMetrics[i], off, rec.device, rec.at.Format(time.RFC3339Nano))
				}
			}
		}
		if cp.watermark.IsZero() {
			continue
		}
		wm := cp.watermark
		closed := aggregate(before, func(k outageWin) bool {
			return !time.UnixMilli(k.start).Add(k.size).After(wm)
		})
		for k, want := range closed {
			w, ok := sink.windows[k]
			got := outageAgg{Count: w.Count, Sum: w.Sum, Min: w.Min, Max: w.Max}
			if (!ok || !got.Equal(want)) && !r.touchedByDeadLetter(p, before, k) {
				r.t.Fatalf("partition %d committed watermark %s, but window %+v is stored as %+v (present %v), want %+v",
					p, wm.Format(time.RFC3339Nano), k, got, ok, want)
			}
		}
	}
	return cps
}

// deadLettered reports whether the record at partition/offset was sent to
// the dead-letter topic (then its readings are not stored, by design; the
// test fails on dead letters at the end anyway).
func (r *outageRig) deadLettered(partition int32, offset int64) bool {
	r.t.Helper()
	src := fmt.Sprintf("%s/%d/%d", r.topics.Telemetry, partition, offset)
	if !r.dead[src] && !r.deadFresh {
		// re-read the topic at most once per check
		r.deadFresh = true
		r.dead = map[string]bool{}
		for _, dl := range testkafka.Consume(r.t, r.seeds, r.topics.DeadLetter, 0, 10*time.Second) {
			r.dead[bus.Header(dl, bus.HeaderSource)] = true
		}
	}
	return r.dead[src]
}

// touchedByDeadLetter reports whether a dead-lettered record (too late for
// some size) has a reading in window k: then its content is not the plain
// brute force, and the test fails on the dead letters at the end anyway.
func (r *outageRig) touchedByDeadLetter(partition int32, recs []outageRec, k outageWin) bool {
	for off, rec := range recs {
		if rec.device == k.device && rec.at.Truncate(k.size).UnixMilli() == k.start && r.deadLettered(partition, int64(off)) {
			return true
		}
	}
	return false
}

func gatherCounter(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue()
			}
		}
	}
	return v
}

// readStored reads the test's windows back from the store, or from the
// in-memory stand-in without chDB.
func readStored(t *testing.T, sink *outageSink, devices []string, from, to time.Time) map[outageWin]outageAgg {
	t.Helper()
	out := map[outageWin]outageAgg{}
	st, ok := sink.inner.(*storage.Store)
	if !ok {
		m := sink.inner.(*memSink)
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, w := range m.ws {
			if slices.Contains(devices, w.Device) {
				out[outageWin{w.Device, w.Metric, w.Size, w.Start.UnixMilli()}] = outageAgg{Count: w.Count, Sum: w.Sum, Min: w.Min, Max: w.Max}
			}
		}
		return out
	}
	for _, d := range devices {
		for _, m := range outageMetrics {
			for _, size := range outageSizes {
				for _, a := range []storage.Aggregate{storage.Sum, storage.Min, storage.Max} {
					pts, err := st.Series(context.Background(), storage.SeriesQuery{Device: d, Metric: m, Aggregate: a,
						From: from, To: to, Step: size, WindowSize: size})
					if err != nil {
						t.Fatalf("series: %v", err)
					}
					for _, p := range pts {
						k := outageWin{d, m, size, p.Time.UnixMilli()}
						g := out[k]
						switch a {
						case storage.Sum:
							g.Sum, g.Count = p.Value, p.Count
						case storage.Min:
							g.Min = p.Value
						case storage.Max:
							g.Max = p.Value
						}
						out[k] = g
					}
				}
			}
		}
	}
	return out
}

func runOutage(t *testing.T, idle, down time.Duration) {
	began := time.Now()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d, idle timeout %v, outage %v", seed, idle, down)
	rng := rand.New(rand.NewPCG(seed, 3))

	seeds := testkafka.Seeds(t)
	prefix := testkafka.Prefix(t)
	r := &outageRig{t: t, seeds: seeds, topics: bus.TopicNames(prefix), group: prefix + "group",
		prefix: fmt.Sprintf("outage-%d-%s-", os.Getpid(), strings.TrimSuffix(prefix[len(prefix)-9:], ".")),
		parts:  map[int32][]outageRec{}}
	cl := testkafka.Client(t, seeds)
	r.adm = kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	if err := bus.EnsureTopics(ctx, cl, r.topics.Specs(outagePartitions), 1); err != nil {
		t.Fatal(err)
	}
	cancel()
	testkafka.WaitTopic(t, seeds, r.topics.Telemetry)
	testkafka.WaitTopic(t, seeds, r.topics.DeadLetter)

	// The sink: the real store (chDB) when available.
	sink := &outageSink{readings: map[outageID]bool{}, windows: map[outageWin]storage.Window{}}
	if os.Getenv("CHDB_LIB_PATH") == "" {
		t.Log("CHDB_LIB_PATH is not set: the outage sink wraps an in-memory sink, not storage.Store (export CHDB_LIB_PATH=$(scripts/chdb.sh))")
		sink.inner = &memSink{ws: map[string]storage.Window{}}
	} else {
		st, err := testStore(t)
		if err != nil {
			t.Fatalf("open storage: %v", err)
		}
		sink.inner = st
	}

	reg := prometheus.NewRegistry()
	p, err := New(Config{Kafka: []kgo.Opt{kgo.SeedBrokers(seeds...)}, Topics: r.topics, Group: r.group,
		WindowSizes: outageSizes, AllowedLateness: outageLateness, IdleTimeout: idle,
		FlushInterval: 50 * time.Millisecond, MaxBatchRows: outageBatch, Sink: sink,
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- p.Run(runCtx) }()
	defer func() {
		stopRun()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	consumed := func() float64 { return gatherCounter(t, reg, "iotpipe_processor_records_consumed_total") }

	// The producer: one record per device per tick, event time = now, a few
	// records held back up to 200ms (within the 500ms lateness) and a few
	// delivered twice. It runs until stopProducing is closed.
	devices := make([]string, outageDevices)
	for i := range devices {
		devices[i] = fmt.Sprintf("%sd%02d", r.prefix, i)
	}
	stopProducing := make(chan struct{})
	produced := make(chan error, 1)
	var sent atomic.Int64
	go func() {
		pcl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ProducerLinger(2*time.Millisecond))
		if err != nil {
			produced <- err
			return
		}
		defer pcl.Close()
		var failed atomic.Pointer[error]
		type held struct {
			due time.Time
			rec outageRec
		}
		var later []held
		send := func(rec outageRec) {
			v := fmt.Appendf(nil, `{"ts":%d,"temperature":%s,"humidity":%s}`, rec.at.UnixMilli(),
				strconv.FormatFloat(rec.vals[0], 'g', -1, 64), strconv.FormatFloat(rec.vals[1], 'g', -1, 64))
			kr := &kgo.Record{Topic: r.topics.Telemetry, Key: []byte(rec.device), Value: v, Headers: []kgo.RecordHeader{
				{Key: bus.HeaderDevice, Value: []byte(rec.device)},
				{Key: bus.HeaderTopic, Value: []byte("/devices/" + rec.device + "/events")},
				{Key: bus.HeaderReceivedAt, Value: bus.FormatMillis(time.Now())},
			}}
			sent.Add(1)
			pcl.Produce(context.Background(), kr, func(kr *kgo.Record, err error) {
				if err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				// Promises run in order per partition: index = offset.
				r.mu.Lock()
				defer r.mu.Unlock()
				if int64(len(r.parts[kr.Partition])) != kr.Offset {
					e := fmt.Errorf("partition %d: offset %d acknowledged after %d records", kr.Partition, kr.Offset, len(r.parts[kr.Partition]))
					failed.CompareAndSwap(nil, &e)
				}
				r.parts[kr.Partition] = append(r.parts[kr.Partition], rec)
			})
		}
		lastAt := map[string]int64{}
		for tick := time.NewTicker(outageEvery); ; {
			select {
			case <-stopProducing:
				tick.Stop()
				for _, h := range later {
					send(h.rec)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				err := pcl.Flush(ctx)
				if p := failed.Load(); p != nil {
					err = errors.Join(err, *p)
				}
				produced <- err
				return
			case now := <-tick.C:
				kept := later[:0]
				for _, h := range later {
					if now.After(h.due) {
						send(h.rec)
					} else {
						kept = append(kept, h)
					}
				}
				later = kept
				for _, d := range devices {
					at := now.UnixMilli()
					if at <= lastAt[d] { // one reading per device per millisecond
						at = lastAt[d] + 1
					}
					lastAt[d] = at
					rec := outageRec{device: d, at: time.UnixMilli(at).UTC(),
						vals: [2]float64{math.Round(rng.NormFloat64()*1e4) / 1e3, rng.Float64() * 100}}
					switch rng.IntN(100) {
					case 0: // held back: out of order, within the lateness
						later = append(later, held{now.Add(time.Duration(rng.Int64N(int64(200 * time.Millisecond)))), rec})
						continue
					case 1: // delivered twice
						later = append(later, held{now.Add(time.Duration(rng.Int64N(int64(200 * time.Millisecond)))), rec})
					}
					send(rec)
				}
			}
		}
	}()
	producing := true
	defer func() {
		if producing {
			close(stopProducing)
			<-produced
		}
	}()

	// Normal operation first: windows stored and committed.
	testkafka.Eventually(t, 30*time.Second, "a first commit with a watermark", func() bool {
		for _, cp := range r.checkCommitted(sink) {
			if !cp.watermark.IsZero() {
				return true
			}
		}
		return false
	})

	// Outage.
	sink.down.Store(true)
	downAt := time.Now()
	testkafka.Eventually(t, 10*time.Second, "a write fails", func() bool { return sink.failures.Load() > 0 })
	c1, cps1, end1 := consumed(), r.checkCommitted(sink), r.endOffsets()
	var maxBuffered int64
	for time.Since(downAt) < down {
		if c := consumed(); c-c1 > outageBatch {
			t.Fatalf("storage down: %v records consumed since the first failed write, more than one batch (%d)", c-c1, outageBatch)
		}
		maxBuffered = max(maxBuffered, p.cl.BufferedFetchRecords())
		cps := r.checkCommitted(sink)
		for part, cp := range cps {
			if cp != cps1[part] {
				t.Fatalf("storage down: partition %d committed %+v after %+v", part, cp, cps1[part])
			}
		}
		time.Sleep(50 * time.Millisecond) // sampling interval of the observation, not synchronisation
	}
	c2, end2 := consumed(), r.endOffsets()
	var backlog int64
	for part, e := range end2 {
		backlog += e - end1[part]
	}
	t.Logf("outage of %v: %d failed writes, %v records consumed meanwhile, %d records produced meanwhile, at most %d records in the client's fetch buffer",
		time.Since(downAt).Round(time.Millisecond), sink.failures.Load(), c2-c1, backlog, maxBuffered)
	if backlog < 4*outageBatch {
		t.Fatalf("only %d records produced during the outage: the test proves nothing about backpressure", backlog)
	}
	if maxBuffered > backlog/2 {
		t.Errorf("the fetch buffer held %d records, more than half the outage's backlog of %d: consumption did not pause", maxBuffered, backlog)
	}

	// Storage is back; produce a little more, then stop.
	sink.down.Store(false)
	upAt := time.Now()
	testkafka.Eventually(t, 30*time.Second, "first commit after the outage", func() bool {
		for part, cp := range r.checkCommitted(sink) {
			if cp != cps1[part] {
				return true
			}
		}
		return false
	})
	t.Logf("first commit %v after storage returned", time.Since(upAt).Round(time.Millisecond))
	time.Sleep(500 * time.Millisecond) // keep producing for a while: live data on top of the backlog
	close(stopProducing)
	producing = false
	if err := <-produced; err != nil {
		t.Fatalf("produce: %v", err)
	}

	// Drain: every partition committed up to its end (all windows final:
	// idle advance closes the tail).
	var last string
	testkafka.Eventually(t, 60*time.Second, "backlog drained", func() bool {
		cps, end := r.checkCommitted(sink), r.endOffsets()
		offs := map[int32]int64{}
		for part, cp := range cps {
			offs[part] = cp.offset
		}
		last = fmt.Sprintf("committed %v, end %v", offs, end)
		for part, e := range end {
			if cps[part].offset != e || cps[part].next != e {
				return false
			}
		}
		return true
	})
	drained := time.Since(upAt)

	r.mu.Lock()
	var all []outageRec
	total := 0
	for _, recs := range r.parts {
		all = append(all, recs...) // devices do not span partitions: per-device order kept
		total += len(recs)
	}
	r.mu.Unlock()
	if int64(total) != sent.Load() {
		t.Fatalf("%d records acknowledged, %d sent", total, sent.Load())
	}
	want := aggregate(all, nil)
	from, to := began.Add(-time.Minute), time.Now().Add(time.Minute)
	got := readStored(t, sink, devices, from, to)
	var diffs []string
	for k, w := range want {
		if g, ok := got[k]; !ok || !g.Equal(w) {
			diffs = append(diffs, fmt.Sprintf("%s/%s %v@%s: stored %+v (present %v), want %+v", k.device, k.metric, k.size,
				time.UnixMilli(k.start).UTC().Format("15:04:05.000"), g, ok, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("extra %+v: %+v", k, g))
		}
	}
	if len(diffs) > 0 {
		t.Errorf("%d of %d windows differ from the brute force; first ones:\n%s", len(diffs), len(want), strings.Join(diffs[:min(len(diffs), 15)], "\n"))
	}
	if dl := testkafka.Consume(t, seeds, r.topics.DeadLetter, 0, 30*time.Second); len(dl) > 0 {
		reasons := map[string]int{}
		for _, rec := range dl {
			reasons[bus.Header(rec, bus.HeaderReason)]++
		}
		t.Errorf("%d readings dead-lettered, want none: %v; first: %s %s", len(dl), reasons,
			bus.Header(dl[0], bus.HeaderDetail), dl[0].Value)
	}
	t.Logf("%d records (%d readings) in %d windows; drained %v after storage returned; %s; total %v",
		total, 2*total, len(want), drained.Round(time.Millisecond), last, time.Since(began).Round(time.Millisecond))
}
