package processor

import (
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/internal/testcpu"
	"github.com/iotpipe/iotpipe/internal/testkafka"
	"github.com/iotpipe/iotpipe/storage"
)

// discardSink stores nothing: it shows the processor's own rate, without
// storage.
type discardSink struct{}

func (discardSink) WriteBatch(context.Context, []storage.Window, []storage.Reading) error { return nil }

// BenchmarkProcessor preloads records like a fleet's — 1,000 devices, in
// event-time order, {"ts":<ms>,"temperature":..,"humidity":..} — into kfake
// (6 partitions, IOTPIPE_BENCH_PARTITIONS), then per iteration measures in
// the same run:
//
//   - raw-readings/s: a plain franz-go consumer (PollFetches, no processing)
//     reading every record back, counted as 2 readings per record;
//   - readings/s: the processor (two window sizes) from its first consumed
//     record until its group has committed 90% of every partition (commits
//     follow the store of everything they cover; see steady), into the
//     sink of the sub-benchmark: "discard" (stores nothing: the processor's
//     own rate), "chdb-windows" (storage.Store on embedded chDB, windows
//     only: WindowsOnly) or "chdb" (windows and every raw reading); the chDB
//     sinks need CHDB_LIB_PATH;
//   - freshness-p99-s: the p99 of iotpipe_processor_window_freshness_seconds
//     (upper bound of its histogram bucket);
//   - cpu-cores: the process's CPU time over the processor's interval.
//
// Run: go test -run '^$' -bench Processor -benchtime 2x ./processor
// (IOTPIPE_BENCH_RECORDS overrides the 1,000,000 records,
// IOTPIPE_BENCH_BATCH_ROWS the MaxBatchRows.)
func BenchmarkProcessor(b *testing.B) {
	records := 1_000_000
	if s := os.Getenv("IOTPIPE_BENCH_RECORDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		records = n
	}
	seeds := testkafka.Seeds(b)
	topics := bus.TopicNames(testkafka.Prefix(b))
	cl := testkafka.Client(b, seeds, kgo.ProducerLinger(5*time.Millisecond), kgo.MaxBufferedRecords(100_000))
	ctx := context.Background()
	partitions := int32(6) // iotpipe's default --partitions
	if s := os.Getenv("IOTPIPE_BENCH_PARTITIONS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		partitions = int32(n)
	}
	if err := bus.EnsureTopics(ctx, cl, topics.Specs(partitions), 1); err != nil {
		b.Fatal(err)
	}
	testkafka.WaitTopic(b, seeds, topics.Telemetry)
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	const devices = 1000
	names := make([]string, devices)
	for i := range names {
		names[i] = fmt.Sprintf("dev-%04d", i)
	}
	var perr atomic.Value
	for i := range records {
		// Each device reports once per second; all event times distinct per device.
		at := base.Add(time.Duration(i) * time.Millisecond)
		dev := names[i%devices]
		r := &kgo.Record{Topic: topics.Telemetry, Key: []byte(dev),
			Value: fmt.Appendf(nil, `{"ts":%d,"temperature":%.2f,"humidity":%.1f}`, at.UnixMilli(), 15+float64(i%2000)/100, 30+float64(i%400)/10),
			Headers: []kgo.RecordHeader{{Key: bus.HeaderDevice, Value: []byte(dev)},
				{Key: bus.HeaderTopic, Value: []byte("/devices/" + dev + "/events")},
				{Key: bus.HeaderReceivedAt, Value: bus.FormatMillis(at)}}}
		cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
			if err != nil {
				perr.Store(err)
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	if err, _ := perr.Load().(error); err != nil {
		b.Fatal(err)
	}
	readings := int64(records) * 2

	rawRate := func(b *testing.B) float64 {
		c := testkafka.Client(b, seeds, kgo.ConsumeTopics(topics.Telemetry), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
		start := time.Now()
		n := 0
		for n < records {
			fs := c.PollFetches(ctx)
			if err := fs.Err0(); err != nil {
				b.Fatal(err)
			}
			n += fs.NumRecords()
		}
		rate := float64(n*2) / time.Since(start).Seconds()
		c.Close()
		return rate
	}

	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(ctx, topics.Telemetry)
	if err != nil {
		b.Fatal(err)
	}
	// done reports whether the group has committed every record as
	// processed: the commit metadata's next offset (see parseMeta) is the
	// partition's end. Commits follow the store of everything they cover,
	// so this is the moment the last window that could close is stored
	// (and, with raw readings, the last reading).
	// The rate is taken until 90% of every partition is committed, then
	// the rest is waited for: the end of a finite backlog waits up to
	// FlushInterval for its last, partial batch to be sealed, a stop a
	// continuous stream never makes.
	const steady = 0.9
	done := func(b *testing.B, group string, share float64) bool {
		os, err := adm.FetchOffsets(ctx, group)
		if err != nil {
			b.Fatal(err)
		}
		all := true
		ends.Each(func(e kadm.ListedOffset) {
			o, ok := os.Lookup(e.Topic, e.Partition)
			all = all && ok && float64(parseMeta(o.At, o.Metadata).Next) >= share*float64(e.Offset)
		})
		return all
	}

	run := func(b *testing.B, sink Sink, windowsOnly bool) {
		var raw, proc, fresh, cores float64
		iter := 0
		for b.Loop() {
			iter++
			settle(b)
			raw += rawRate(b)
			reg := prometheus.NewRegistry()
			group := fmt.Sprintf("%s.bench.%s.%d", topics.Telemetry, b.Name(), iter)
			p, err := New(Config{Kafka: []kgo.Opt{kgo.SeedBrokers(seeds...)}, Topics: topics,
				Group: group, WindowSizes: sizes, IdleTimeout: time.Hour, MaxBatchRows: benchBatchRows(),
				WindowsOnly: windowsOnly, Sink: sink, Logger: zerolog.Nop(), Metrics: reg})
			if err != nil {
				b.Fatal(err)
			}
			rctx, cancel := context.WithCancel(ctx)
			stopped := make(chan error, 1)
			go func() { stopped <- p.Run(rctx) }()
			// The clock starts at the first consumed record: the group join
			// is not throughput (the raw consumer joins no group either).
			consumed := func() float64 {
				var m dto.Metric
				if err := p.m.consumed.Write(&m); err != nil {
					b.Fatal(err)
				}
				return m.GetCounter().GetValue()
			}
			deadline := time.Now().Add(10 * time.Minute)
			for consumed() == 0 {
				if time.Now().After(deadline) {
					b.Fatal("processor consumed nothing")
				}
				time.Sleep(100 * time.Microsecond) // polling a counter, not synchronising
			}
			committed := func(share float64) {
				for !done(b, group, share) {
					if time.Now().After(deadline) {
						b.Fatalf("%.0f%% not committed within 10 minutes (%v records consumed)", 100*share, consumed())
					}
					time.Sleep(2 * time.Millisecond) // polling the group's commits, not synchronising
				}
			}
			start, cpu0 := time.Now(), testcpu.Time(b)
			committed(steady)
			elapsed := time.Since(start)
			proc += steady * float64(readings) / elapsed.Seconds()
			cores += (testcpu.Time(b) - cpu0).Seconds() / elapsed.Seconds()
			committed(1)
			cancel()
			if err := <-stopped; err != nil {
				b.Fatal(err)
			}
			fresh = max(fresh, p99(b, reg, "iotpipe_processor_window_freshness_seconds"))
		}
		b.ReportMetric(raw/float64(iter), "raw-readings/s")
		b.ReportMetric(proc/float64(iter), "readings/s")
		b.ReportMetric(proc/raw, "ratio-to-raw")
		b.ReportMetric(fresh, "freshness-p99-s")
		b.ReportMetric(cores/float64(iter), "cpu-cores")
	}

	b.Run("sink=discard", func(b *testing.B) { run(b, discardSink{}, false) })
	chdb := func(b *testing.B) Sink {
		if os.Getenv("CHDB_LIB_PATH") == "" {
			b.Skip("SKIP: CHDB_LIB_PATH is not set (export CHDB_LIB_PATH=$(scripts/chdb.sh))")
		}
		st, err := testStore(b)
		if err != nil {
			b.Fatal(err)
		}
		return st
	}
	// Windows only (WindowsOnly, --raw-readings=false): Kafka → windows → storage.
	b.Run("sink=chdb-windows", func(b *testing.B) { run(b, chdb(b), true) })
	// Windows and every raw reading (the default).
	b.Run("sink=chdb", func(b *testing.B) { run(b, chdb(b), false) })
}

// settle waits until the process is quiet so that each iteration's raw
// consumer and processor start alike: chDB goes on merging the previous
// iteration's parts in the background.
func settle(b *testing.B) {
	b.StopTimer()
	defer b.StartTimer()
	if !testcpu.WaitQuiet(b, 2*time.Minute) {
		b.Log("the process did not settle within 2 minutes")
	}
}

// p99 returns the upper bound of the bucket holding the 99th percentile of
// a histogram in reg (+Inf if beyond the last bucket, 0 if empty).
func p99(b *testing.B, reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var h *dto.Histogram = mf.GetMetric()[0].GetHistogram()
		total := h.GetSampleCount()
		if total == 0 {
			return 0
		}
		want := uint64(math.Ceil(0.99 * float64(total)))
		for _, bk := range h.GetBucket() {
			if bk.GetCumulativeCount() >= want {
				return bk.GetUpperBound()
			}
		}
		return math.Inf(1)
	}
	b.Fatalf("metric %s not found", name)
	return 0
}

func benchBatchRows() int {
	n, _ := strconv.Atoi(os.Getenv("IOTPIPE_BENCH_BATCH_ROWS"))
	return n
}
