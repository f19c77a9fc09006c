// Package processor consumes raw telemetry from Kafka, decodes it, aggregates
// it into event-time windows (package window, one engine per partition),
// writes closed windows and raw readings to storage, and commits offsets only
// after the store succeeded.
//
// Exactly-once window results rest on one rule: a partition's offset is
// committed together with its watermark and replay position (in the offset
// commit metadata, "iotpipe1 w=<unix ns> n=<next offset>") and only after
// every window, reading and dead letter that the commit covers is stored or
// acknowledged. On assignment the processor reads that metadata back and
// resumes the partition's engine from it; the window package doc explains
// why the replay then reproduces exactly the windows of an uninterrupted run.
//
// Storage writes overlap consumption: the poll loop seals rows and
// checkpoints into batches (see batch) and one writer goroutine stores and
// commits them in order (see writer.go). Fetching overlaps processing too:
// the loop polls the next records while the current ones are processed
// (see processPollingAhead).
//
//	p, err := processor.New(processor.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(seeds...)}, Sink: store, ...})
//	if err != nil { ... }
//	err = p.Run(ctx) // until ctx is done
package processor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/processor/window"
	"github.com/iotpipe/iotpipe/storage"
)

// Sink stores window results and raw readings; *storage.Store is one. When
// WriteBatch returns nil the rows must be durable.
type Sink interface {
	WriteBatch(ctx context.Context, windows []storage.Window, readings []storage.Reading) error
}

// Config configures a Processor. Zero values take the documented defaults.
type Config struct {
	Kafka           []kgo.Opt       // base client options: seeds, TLS, SASL
	Topics          bus.Topics      // default bus.TopicNames(bus.DefaultPrefix)
	Group           string          // consumer group, default "iotpipe-processor"
	WindowSizes     []time.Duration // positive, whole seconds, distinct; default 10s, 1m and 1h
	AllowedLateness time.Duration   // default 5s
	IdleTimeout     time.Duration   // default 30s
	FlushInterval   time.Duration   // how long pending rows wait to be stored, default 1s; final windows wait a quarter of it
	MaxBatchRows    int             // windows + readings per WriteBatch, default 50000
	// WindowsOnly stores window results without the raw readings: every
	// raw reading costs about as much again to store as to aggregate, so on
	// an embedded engine sharing the processor's cores this roughly quadruples
	// the rate (docs/benchmarks.md). Exactly-once holds either way.
	WindowsOnly bool
	// MaxOpenWindows caps the open windows (device × metric × size) over all
	// owned partitions, default 1,000,000 (about 200 MB at the accounted
	// ~200 B each). When it is reached the processor stops fetching: it
	// polls no more records, keeps storing and committing what is final, and
	// lets idle advance (IdleTimeout without records) close windows by wall
	// clock, then resumes. Nothing is dropped or force-closed, so exactly-once
	// holds; the cap is checked before each poll, so the records of the
	// poll being processed and the one polled ahead may exceed it.
	MaxOpenWindows int
	Sink           Sink // required
	Logger         zerolog.Logger
	Metrics        prometheus.Registerer // nil: metrics are not registered
}

// Processor is the stream processing stage. Create it with New, run it with Run.
type Processor struct {
	cfg     Config
	log     zerolog.Logger
	cl      *kgo.Client
	clSet   chan struct{} // closed once cl is set; the group may call back before New returns
	m       *metrics
	wcfg    window.Config
	backoff func(attempt int) time.Duration

	w           *writer      // stores sealed batches and commits them, in order
	commitMu    sync.Mutex   // guards partition.gone and .committed; held while committing
	retryCommit atomic.Bool  // a commit failed: seal the next flush even if nothing changed
	rows        atomic.Int64 // pending windows + readings over all partitions (workers add)
	// rebalanceWaiting: a rebalance waits for our polled records to be
	// processed; stop polling ahead so it can run.
	rebalanceWaiting atomic.Bool
	stalled          atomic.Int64 // ns the poll loop waited for the writer (see clock)
	open             atomic.Int64 // open windows at the last maybeFlush
	roundEnd         atomic.Int64 // unix ns: when the processing round under way ends

	mu        sync.Mutex // guards everything below; held by the poll loop and the rebalance callbacks
	parts     map[int32]*partition
	lastFlush time.Time
	fatal     error
	dl        *dlGroup // dead letters of the batch being built
	work      []*fetched
	cpBuf     []batchCheckpoint
}

// partition is one owned partition. Between seals its engine, decoder and
// pending rows are used by one goroutine at a time: a poll's worker for the
// partition, or the poll loop (with mu held) otherwise.
type partition struct {
	eng      *window.Engine
	wcfg     window.Config // the engine's, with Clock reading now
	now      time.Time     // the processing-time clock (see clock), set by handleAll every rowSync records
	dec      *decoder
	finalBuf []window.Window
	sealed   window.Checkpoint // checkpoint in the last sealed batch
	windows  []storage.Window
	readings []storage.Reading
	closed   []closeMark // when part.windows became final, for freshness

	// guarded by Processor.commitMu
	gone      bool              // revoked or lost: never commit for it again
	committed window.Checkpoint // last committed, to skip commits that change nothing
}

// newPartition returns a partition without its engine, whose clock starts
// at now; create the engine from its wcfg.
func newPartition(wcfg window.Config, now time.Time) *partition {
	part := &partition{dec: newDecoder(), now: now}
	part.wcfg = wcfg
	part.wcfg.Clock = func() time.Time { return part.now }
	return part
}

// fetched is one partition's share of a poll still to be processed.
type fetched struct {
	id      int32
	part    *partition
	recs    []*kgo.Record
	highWM  int64
	handled int
	// lastOffset is the last handled record's: handled records are
	// recycled, their fields zeroed.
	lastOffset int64
}

// closeMark: the next n windows of partition.windows became final at at.
type closeMark struct {
	n  int
	at time.Time
}

// New validates cfg, connects to Kafka (pinging it so a bad address fails
// now) and joins the consumer group; records are processed by Run.
func New(cfg Config) (*Processor, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	p := &Processor{
		cfg:   cfg,
		log:   cfg.Logger.With().Str("component", "processor").Logger(),
		m:     newMetrics(),
		parts: make(map[int32]*partition),
		w:     newWriter(),
		dl:    newDLGroup(),
		backoff: func(attempt int) time.Duration {
			return min(100*time.Millisecond<<min(attempt, 10), 5*time.Second)
		},
		lastFlush: time.Now(),
	}
	p.wcfg = window.Config{Sizes: cfg.WindowSizes, AllowedLateness: cfg.AllowedLateness,
		IdleTimeout: cfg.IdleTimeout}
	if cfg.Metrics != nil {
		if err := p.m.register(cfg.Metrics); err != nil {
			return nil, fmt.Errorf("processor: register metrics: %w", err)
		}
	}
	opts := append(slices.Clone(cfg.Kafka),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topics.Telemetry),
		kgo.DisableAutoCommit(),
		// Polls and rebalance callbacks exclude each other, so engine state
		// and partition ownership change together.
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsAssigned(p.onAssigned),
		kgo.OnPartitionsRevoked(p.onRevoked),
		kgo.OnPartitionsLost(p.onLost),
		kgo.OnPartitionsCallbackBlocked(func(context.Context, *kgo.Client) { p.rebalanceWaiting.Store(true) }),
		kgo.WithPools(&fetchPools{}),
	)
	// The consumer group starts inside NewClient, so a rebalance callback
	// can run before p.cl is set: callbacks wait for clSet.
	p.clSet = make(chan struct{})
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("processor: kafka client: %w", err)
	}
	p.cl = cl
	close(p.clSet)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := cl.Ping(ctx); err != nil {
		cl.Close()
		return nil, fmt.Errorf("processor: ping kafka: %w", err)
	}
	return p, nil
}

func (c *Config) defaults() error {
	if c.Sink == nil {
		return errors.New("processor: Config.Sink is required")
	}
	if c.Topics.Telemetry == "" && c.Topics.DeadLetter == "" {
		c.Topics = bus.TopicNames(bus.DefaultPrefix)
	}
	if c.Topics.Telemetry == "" || c.Topics.DeadLetter == "" {
		return errors.New("processor: Topics.Telemetry and Topics.DeadLetter are required")
	}
	if c.Group == "" {
		c.Group = "iotpipe-processor"
	}
	if len(c.WindowSizes) == 0 {
		c.WindowSizes = []time.Duration{10 * time.Second, time.Minute, time.Hour}
	}
	for i, s := range c.WindowSizes {
		if s <= 0 || s%time.Second != 0 {
			return fmt.Errorf("processor: window size %v must be a positive whole number of seconds", s)
		}
		if slices.Contains(c.WindowSizes[:i], s) {
			return fmt.Errorf("processor: window size %v given twice", s)
		}
	}
	if c.AllowedLateness < 0 || c.IdleTimeout < 0 || c.FlushInterval < 0 || c.MaxBatchRows < 0 || c.MaxOpenWindows < 0 {
		return errors.New("processor: durations, MaxBatchRows and MaxOpenWindows must not be negative")
	}
	if c.MaxOpenWindows == 0 {
		c.MaxOpenWindows = 1_000_000
	}
	if c.AllowedLateness == 0 {
		c.AllowedLateness = 5 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 30 * time.Second
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = time.Second
	}
	if c.MaxBatchRows == 0 {
		c.MaxBatchRows = 50_000
	}
	return nil
}

// Run consumes until ctx is done, then stores and commits what is closed and
// leaves the group. It returns nil after a clean shutdown, or the error that
// stopped processing (nothing past unstored data is ever committed).
//
// The poll loop decodes and aggregates (each fetched partition on its own
// goroutine), and seals the rows into batches; a writer goroutine stores the
// batches and commits their checkpoints in order, so consumption goes on
// while a batch is written. When the writer is behind the poll loop waits
// (see maxInFlight): storage down stops consumption.
func (p *Processor) Run(ctx context.Context) error {
	wctx, stopWrites := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWrites()
	p.startWriter(wctx)
	err := p.run(ctx)
	// Store and commit what is final; open windows are rebuilt by the next
	// owner from the committed offset and watermark.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	p.mu.Lock()
	ferr := p.maybeFlush(sctx, true)
	if ferr == nil {
		ferr = p.w.waitQueue(sctx, 0)
	}
	p.mu.Unlock()
	if ferr != nil {
		stopWrites() // give up the queue: nothing more is committed
	}
	// Leaving the group revokes everything; the writer still runs for it.
	p.cl.Close()
	stopWrites()
	p.stopWriter()
	if err != nil {
		return err
	}
	if ferr != nil {
		return fmt.Errorf("processor: final flush: %w", ferr)
	}
	return nil
}

func (p *Processor) run(ctx context.Context) error {
	tick := min(p.cfg.FlushInterval, p.cfg.IdleTimeout)
	// next holds records polled while the previous poll's were processed.
	// Rebalances stay blocked while we hold them (BlockRebalanceOnPoll), so
	// the partitions they belong to are still ours when they are processed.
	var next kgo.Fetches
	wait := tick // until the next poll returns at the latest
	// Records still held when we stop are dropped (never committed: the
	// next owner replays them); the client must not keep blocking
	// rebalances for them, or leaving the group would wait forever.
	defer p.cl.AllowRebalance()
	for ctx.Err() == nil {
		if err := p.w.failed(); err != nil {
			return err
		}
		if p.full() && next.NumRecords() == 0 {
			// Full: fetch nothing until windows close (see MaxOpenWindows).
			p.m.paused.Set(1)
			select {
			case <-ctx.Done():
			case <-time.After(tick):
			}
			p.mu.Lock()
			err := p.maybeFlush(ctx, false)
			p.mu.Unlock()
			if err != nil && ctx.Err() == nil {
				return err
			}
			continue
		}
		p.m.paused.Set(0)
		fs := next
		next = nil
		if fs.NumRecords() == 0 {
			pollCtx, cancel := context.WithTimeout(ctx, wait)
			fs = p.cl.PollFetches(pollCtx)
			cancel()
		}
		if fs.IsClientClosed() {
			return errors.New("processor: kafka client closed")
		}
		p.logFetchErrors(fs)
		p.mu.Lock()
		err := p.fatal
		if err == nil {
			next, err = p.processPollingAhead(ctx, fs)
		}
		if err == nil {
			err = p.maybeFlush(ctx, false)
		}
		// A quiet topic must not hold due rows back for a whole tick.
		wait = min(tick, max(time.Until(p.nextFlush()), 5*time.Millisecond))
		p.mu.Unlock()
		if next.NumRecords() == 0 {
			p.rebalanceWaiting.Store(false)
			p.cl.AllowRebalance()
		}
		if err != nil && ctx.Err() == nil {
			return err
		}
	}
	return nil
}

func (p *Processor) logFetchErrors(fs kgo.Fetches) {
	fs.EachError(func(t string, part int32, err error) {
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			p.log.Warn().Err(err).Str("topic", t).Int32("partition", part).Msg("fetch")
		}
	})
}

// processPollingAhead processes fs and, meanwhile, polls the next records
// and feeds them to the processing under way (see feed); a poll that
// process can no longer take is returned, to be processed next. The Kafka
// client fetches from a broker only after the previous fetch was polled, so
// polling ahead is what keeps fetching (and decoding the fetch) running in
// parallel with processing; otherwise the two take turns and half the
// machine idles. It stops polling ahead when a rebalance is waiting for us,
// the context is done, MaxOpenWindows is reached or maxHeld records wait.
// Called with p.mu held; rebalances are blocked because fs came from a
// poll, and stay blocked while we hold polled records.
func (p *Processor) processPollingAhead(ctx context.Context, fs kgo.Fetches) (kgo.Fetches, error) {
	if err := p.restoreUnknown(ctx, fs); err != nil {
		return nil, err
	}
	fd := newFeed()
	fd.add(p, fs)
	if p.rebalanceWaiting.Load() || ctx.Err() != nil || p.full() {
		return nil, p.process(ctx, fd)
	}
	pollCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- p.process(ctx, fd)
		cancel() // stop polling ahead: nothing is processing
	}()
	var next kgo.Fetches
	var err error
	for pollCtx.Err() == nil && !p.rebalanceWaiting.Load() && !p.full() {
		if fd.records() >= p.maxHeld() {
			select {
			case <-fd.room:
			case <-pollCtx.Done():
			}
			continue
		}
		fs := p.cl.PollFetches(pollCtx)
		if fs.IsClientClosed() {
			err = errors.New("processor: kafka client closed")
			break
		}
		p.logFetchErrors(fs)
		if fs.NumRecords() > 0 && !fd.add(p, fs) {
			next = fs
			break
		}
	}
	if perr := <-done; perr != nil {
		err = perr
	}
	return next, err
}

// maxHeld bounds the records polled ahead and not yet handled.
func (p *Processor) maxHeld() int { return 4 * p.cfg.MaxBatchRows }

// full reports whether MaxOpenWindows is reached (see run).
func (p *Processor) full() bool { return p.open.Load() >= int64(p.cfg.MaxOpenWindows) }

// restoreUnknown restores the partitions of fs that we do not know yet.
// OnPartitionsAssigned runs before fetches start, so this is a bug;
// restoring here keeps the exactly-once rule anyway. Called with p.mu held
// and nothing processing.
func (p *Processor) restoreUnknown(ctx context.Context, fs kgo.Fetches) error {
	if ids := p.unknownPartitions(fs); len(ids) > 0 {
		return p.restore(ctx, ids)
	}
	return nil
}

// unknownPartitions lists the partitions of fs with records that we have
// no state for.
func (p *Processor) unknownPartitions(fs kgo.Fetches) []int32 {
	var ids []int32
	fs.EachPartition(func(ft kgo.FetchTopicPartition) {
		if p.hasRecords(ft) && p.parts[ft.Partition] == nil {
			ids = append(ids, ft.Partition)
		}
	})
	return ids
}

// hasRecords reports whether ft holds telemetry records. A poll that ends
// by its deadline reports the context error as partition -1 of topic "".
func (p *Processor) hasRecords(ft kgo.FetchTopicPartition) bool {
	return ft.Topic == p.cfg.Topics.Telemetry && ft.Partition >= 0 && len(ft.Records) > 0
}

// process runs the feed's records through decoding and the partitions'
// engines in rounds, until the feed is empty: in a round each partition
// with records has its own goroutine, in offset order within it, taking
// the partition's next records from the feed as it finishes some. A round
// ends when the pending rows reach MaxBatchRows or after an eighth of
// FlushInterval (so seals and idle advances are not held up); then
// maybeFlush seals a batch if one is due (waiting for the writer if it is
// behind) and the next round starts. Called with p.mu held.
func (p *Processor) process(ctx context.Context, fd *feed) error {
	for {
		work := fd.heads(p.work[:0])
		if len(work) == 0 {
			p.work = work
			return nil
		}
		p.roundEnd.Store(time.Now().Add(p.cfg.FlushInterval / 8).UnixNano())
		if len(work) == 1 {
			p.handlePartition(fd, work[0])
		} else {
			var wg sync.WaitGroup
			for _, f := range work[1:] {
				wg.Go(func() { p.handlePartition(fd, f) })
			}
			p.handlePartition(fd, work[0])
			wg.Wait()
		}
		clear(work)
		p.work = work[:0]
		if err := p.maybeFlush(ctx, false); err != nil {
			return err
		}
	}
}

// handlePartition handles f and the partition's records queued after it
// until the feed has none or the round ends.
func (p *Processor) handlePartition(fd *feed, f *fetched) {
	for f != nil && p.handleAll(f) {
		lag := max(f.highWM-f.lastOffset-1, 0)
		p.m.lag.WithLabelValues(strconv.Itoa(int(f.id))).Set(float64(lag))
		f = fd.next(f)
	}
}

// rowSync is how many records a worker handles between adding its rows to
// the shared count (and checking it against MaxBatchRows) and checking the
// round's end.
const rowSync = 32

// handleAll handles f's records from f.handled on until all are handled
// (true) or the round ends: the pending rows reach MaxBatchRows or its time
// is up.
func (p *Processor) handleAll(f *fetched) bool {
	limit, end := int64(p.cfg.MaxBatchRows), p.roundEnd.Load()
	start, rows := f.handled, 0
	// The engine's clock is read per record; the time is taken here, every
	// rowSync records, which is precise enough for IdleTimeout.
	tick := func() bool {
		now := time.Now()
		f.part.now = now.Add(-time.Duration(p.stalled.Load()))
		return now.UnixNano() >= end
	}
	stop := tick() || p.rows.Load() >= limit
	for f.handled < len(f.recs) && !stop {
		r := f.recs[f.handled]
		f.lastOffset = r.Offset
		rows += p.handle(f.part, r)
		r.Recycle() // see fetchPools
		f.handled++
		if (f.handled-start)%rowSync == 0 || f.handled == len(f.recs) {
			stop = p.rows.Add(int64(rows)) >= limit
			stop = tick() || stop
			rows = 0
		}
	}
	if rows > 0 {
		p.rows.Add(int64(rows))
	}
	p.m.consumed.Add(float64(f.handled - start))
	return f.handled == len(f.recs)
}

// recordHeaders are the values of the headers the processor reads (the
// first of each name), without copying.
type recordHeaders struct{ device, receivedAt, topic []byte }

func headersOf(r *kgo.Record) recordHeaders {
	var hs recordHeaders
	var seen uint8
	for _, h := range r.Headers {
		switch {
		case seen&1 == 0 && h.Key == bus.HeaderDevice:
			hs.device, seen = h.Value, seen|1
		case seen&2 == 0 && h.Key == bus.HeaderReceivedAt:
			hs.receivedAt, seen = h.Value, seen|2
		case seen&4 == 0 && h.Key == bus.HeaderTopic:
			hs.topic, seen = h.Value, seen|4
		}
	}
	return hs
}

// parseMillis is strconv.ParseInt(string(b), 10, 64) without the string:
// plain digits (the broker's format) are parsed here, anything else by
// strconv.
func parseMillis(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		n, err := strconv.ParseInt(string(b), 10, 64)
		return n, err == nil
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			n, err := strconv.ParseInt(string(b), 10, 64)
			return n, err == nil
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// handle runs one record through the partition's decoder and engine and
// returns the rows it added. It touches only part (and thread-safe state).
func (p *Processor) handle(part *partition, r *kgo.Record) int {
	hs := headersOf(r)
	id := hs.device
	if len(id) == 0 {
		id = r.Key
	}
	var device string
	if len(id) > 0 {
		var ok bool
		if device, ok = part.eng.DeviceName(id); !ok {
			device = part.dec.intern(id)
		}
	}
	if device == "" {
		if !part.eng.Skip(r.Offset) {
			p.deadLetter(r, ReasonMissingDevice, "no iot-device header and no record key")
		}
		return 0
	}
	var recv time.Time
	ms, ok := parseMillis(hs.receivedAt)
	if ok {
		recv = time.UnixMilli(ms).UTC()
	}
	var mqttTopic string
	if len(hs.topic) > 0 && len(r.Value) > 0 && r.Value[0] != '{' {
		mqttTopic = string(hs.topic) // only a bare number needs the topic
	}
	d, derr := part.dec.decode(r.Value, mqttTopic, recv, ok)
	if derr != nil {
		if !part.eng.Skip(r.Offset) {
			if d.ignored > 0 {
				p.m.ignored.Add(float64(d.ignored))
			}
			p.deadLetter(r, derr.reason, derr.detail)
		}
		return 0
	}
	rows := 0
	out := part.eng.Add(window.Record{Offset: r.Offset, Device: device, Time: d.time, Values: d.values})
	if !out.Replayed {
		if d.ignored > 0 {
			p.m.ignored.Add(float64(d.ignored))
		}
		for i, v := range d.values {
			if out.Counted[i] && !p.cfg.WindowsOnly {
				at := d.time
				if !v.Time.IsZero() {
					at = v.Time
				}
				part.readings = append(part.readings, storage.Reading{Device: device, Metric: v.Metric, Time: at, Value: v.Value})
				rows++
			}
		}
		if len(out.TooLate) > 0 {
			p.deadLetter(r, ReasonTooLate, fmt.Sprintf("event time %s is past the %v window(s) closed by watermark %s",
				d.time.Format(time.RFC3339Nano), out.TooLate, part.eng.Watermark().Format(time.RFC3339Nano)))
		}
	}
	return rows + takeFinal(part)
}

// takeFinal moves the engine's final windows to part.windows and returns
// how many.
func takeFinal(part *partition) int {
	if part.eng.Pending() == 0 {
		return 0
	}
	n := len(part.windows)
	part.finalBuf = part.eng.Final(part.finalBuf[:0])
	for _, w := range part.finalBuf {
		part.windows = append(part.windows, storage.Window(w))
	}
	clear(part.finalBuf)
	part.closed = append(part.closed, closeMark{len(part.windows) - n, time.Now()})
	return len(part.windows) - n
}

// deadLetter produces the original record, bytes and headers intact, to the
// dead-letter topic. The batch being built waits for its acknowledgement
// before its checkpoints are committed. Safe for concurrent use.
func (p *Processor) deadLetter(r *kgo.Record, reason, detail string) {
	p.m.deadletter.WithLabelValues(reason).Inc()
	// Copies: r is recycled once handled (see fetchPools), before the
	// produce completes.
	hs := make([]kgo.RecordHeader, 0, len(r.Headers)+3)
	for _, h := range r.Headers {
		hs = append(hs, kgo.RecordHeader{Key: h.Key, Value: bytes.Clone(h.Value)})
	}
	dl := &kgo.Record{
		Topic: p.cfg.Topics.DeadLetter,
		Key:   bytes.Clone(r.Key),
		Value: bytes.Clone(r.Value),
		Headers: append(hs,
			kgo.RecordHeader{Key: bus.HeaderReason, Value: []byte(reason)},
			kgo.RecordHeader{Key: bus.HeaderDetail, Value: []byte(detail)},
			kgo.RecordHeader{Key: bus.HeaderSource, Value: fmt.Appendf(nil, "%s/%d/%d", r.Topic, r.Partition, r.Offset)},
		),
	}
	g := p.dl // stable while records are handled: only seal replaces it
	g.add()
	p.cl.Produce(context.Background(), dl, func(_ *kgo.Record, err error) { g.done(err) })
}

// maybeFlush closes idle windows and, when forced, when the batch is full or
// FlushInterval passed, seals the pending rows into a batch for the writer.
// A batch due only by time is not sealed while the writer is busy: it keeps
// growing instead. Called with p.mu held.
func (p *Processor) maybeFlush(ctx context.Context, force bool) error {
	now := time.Now()
	open, bytes := 0, 0
	for _, part := range p.parts {
		if part.eng.AdvanceIdle(p.clock()) {
			p.rows.Add(int64(takeFinal(part)))
		}
		open += part.eng.Open()
		bytes += part.eng.StateBytes()
	}
	p.open.Store(int64(open))
	p.m.open.Set(float64(open))
	p.m.stateBytes.Set(float64(bytes))
	full := p.rows.Load() >= int64(p.cfg.MaxBatchRows)
	if !force && !full && now.Before(p.nextFlush()) {
		return nil
	}
	return p.seal(ctx, force || full)
}

// nextFlush is when the pending rows are due to be sealed: FlushInterval
// after the last seal, or a quarter of it after a window became final.
// Final windows are what dashboards wait for (freshness), so they do not
// wait for a full interval; readings and commits alone do. Called with
// p.mu held and no records being handled.
func (p *Processor) nextFlush() time.Time {
	due := p.lastFlush.Add(p.cfg.FlushInterval)
	for _, part := range p.parts {
		if len(part.closed) > 0 {
			if at := part.closed[0].at.Add(p.cfg.FlushInterval / 4); at.Before(due) {
				due = at
			}
		}
	}
	return due
}

// seal moves every partition's pending rows into a new batch with the
// partitions' checkpoints taken now, and queues it for the writer. With
// wait it first waits until the writer has room (maxInFlight); without, it
// seals nothing while the writer has no room. Called with p.mu held and no
// records being handled.
func (p *Processor) seal(ctx context.Context, wait bool) error {
	if wait {
		start := time.Now()
		err := p.w.waitQueue(ctx, maxInFlight-1)
		p.stalled.Add(int64(time.Since(start)))
		if err != nil {
			return err
		}
	}
	return p.enqueue(wait)
}

// clock is the engines' processing-time clock: wall time minus the time the
// poll loop waited for the writer. Idle detection (IdleTimeout) runs on it,
// so a partition is idle when no record arrived while we were consuming,
// not while storage held consumption up: a backlog that built up during a
// storage outage is not dead-lettered as too late.
func (p *Processor) clock() time.Time {
	return time.Now().Add(-time.Duration(p.stalled.Load()))
}

// enqueue seals the batch; without anyway only when the writer has room
// for it. Called with p.mu held.
func (p *Processor) enqueue(anyway bool) error {
	w := p.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	if !anyway && len(w.queue) >= maxInFlight {
		return nil
	}
	retry := p.retryCommit.Load()
	changed := retry
	nw, nr := 0, 0
	cps := p.cpBuf[:0]
	for id, part := range p.parts {
		p.rows.Add(int64(takeFinal(part)))
		nw += len(part.windows)
		nr += len(part.readings)
		cp := part.eng.Checkpoint()
		cps = append(cps, batchCheckpoint{id: id, part: part, cp: cp})
		changed = changed || cp != part.sealed
	}
	p.cpBuf = cps
	p.lastFlush = time.Now()
	if nw+nr == 0 && !changed {
		return nil // nothing to store or commit; p.dl carries over
	}
	if !w.running {
		return errors.New("processor: storage writer is not running")
	}
	var b *batch
	if n := len(w.free); n > 0 {
		b, w.free = w.free[n-1], w.free[:n-1]
	} else {
		b = &batch{}
	}
	b.done = make(chan struct{})
	b.windows = slices.Grow(b.windows, nw)
	b.readings = slices.Grow(b.readings, nr)
	b.cps = append(b.cps[:0], cps...)
	clear(cps)
	for _, c := range b.cps {
		part := c.part
		part.sealed = c.cp
		b.windows = append(b.windows, part.windows...)
		b.readings = append(b.readings, part.readings...)
		b.closed = append(b.closed, part.closed...)
		clear(part.windows)
		clear(part.readings)
		part.windows, part.readings, part.closed = part.windows[:0], part.readings[:0], part.closed[:0]
	}
	p.rows.Store(0)
	if retry {
		p.retryCommit.Store(false)
	}
	b.dl, p.dl = p.dl, newDLGroup()
	b.dl.seal()
	w.queue = append(w.queue, b)
	w.cond.Broadcast()
	return nil
}

const metaPrefix = "iotpipe1 "

func formatMeta(cp window.Checkpoint) string {
	w := "-"
	if !cp.Watermark.IsZero() {
		w = strconv.FormatInt(cp.Watermark.UnixNano(), 10)
	}
	return fmt.Sprintf("%sw=%s n=%d", metaPrefix, w, cp.Next)
}

// parseMeta reads a checkpoint back from a committed offset. Metadata that is
// not ours (e.g. another tool's commit) gives watermark none and Next = offset.
func parseMeta(offset int64, meta string) window.Checkpoint {
	cp := window.Checkpoint{Offset: offset, Next: offset}
	rest, ok := strings.CutPrefix(meta, metaPrefix)
	if !ok {
		return cp
	}
	var w, n string
	if _, err := fmt.Sscanf(rest, "w=%s n=%s", &w, &n); err != nil {
		return cp
	}
	next, err := strconv.ParseInt(n, 10, 64)
	if err != nil || next < offset {
		return cp
	}
	if w != "-" {
		ns, err := strconv.ParseInt(w, 10, 64)
		if err != nil {
			return cp
		}
		cp.Watermark = time.Unix(0, ns).UTC()
	}
	cp.Next = next
	return cp
}

// restore builds the engines of newly assigned partitions from their
// committed offsets and metadata. Called with p.mu held.
func (p *Processor) restore(ctx context.Context, ids []int32) error {
	var resp kadm.OffsetResponses
	var err error
	adm := kadm.NewClient(p.cl)
	for attempt := 0; attempt < 10; attempt++ {
		if resp, err = adm.FetchOffsets(ctx, p.cfg.Group); err == nil {
			err = resp.Error()
		}
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(p.backoff(attempt)) // bounded: at most ~10 tries inside a rebalance callback
	}
	if err != nil {
		return fmt.Errorf("processor: fetch committed offsets: %w", err)
	}
	for _, id := range ids {
		cp := window.Checkpoint{Offset: -1, Next: -1}
		if o, ok := resp.Lookup(p.cfg.Topics.Telemetry, id); ok && o.At >= 0 {
			cp = parseMeta(o.At, o.Metadata)
		}
		part := newPartition(p.wcfg, p.clock())
		if part.eng, err = window.New(part.wcfg, cp); err != nil {
			return fmt.Errorf("processor: window engine: %w", err)
		}
		part.sealed, part.committed = cp, cp
		p.parts[id] = part
		p.log.Debug().Int32("partition", id).Int64("offset", cp.Offset).Int64("next", cp.Next).
			Time("watermark", cp.Watermark).Msg("partition assigned")
	}
	return nil
}

func (p *Processor) onAssigned(ctx context.Context, _ *kgo.Client, assigned map[string][]int32) {
	<-p.clSet
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.restore(ctx, assigned[p.cfg.Topics.Telemetry]); err != nil {
		// Without the checkpoint the partitions cannot be processed
		// exactly once: stop, Run returns the error.
		p.fatal = err
		p.log.Error().Err(err).Msg("restore partitions")
	}
}

// onRevoked seals what the revoked partitions (and the others) have pending
// and waits until the writer has stored and committed it and every earlier
// batch, then drops their state; the next owner rebuilds open windows by
// replay.
func (p *Processor) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	<-p.clSet
	p.mu.Lock()
	defer p.mu.Unlock()
	var ids []int32
	for _, id := range revoked[p.cfg.Topics.Telemetry] {
		if p.parts[id] != nil {
			ids = append(ids, id)
		}
	}
	if len(ids) > 0 {
		// Bounded: the rebalance waits for us. If storage stays down the
		// state is dropped uncommitted and the next owner replays; the
		// queued batches are still stored for the partitions we keep.
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := p.enqueue(true) // one batch over maxInFlight at most: rebalances are rare
		if err == nil {
			err = p.w.waitQueue(sctx, 0)
		}
		cancel()
		if err != nil {
			p.log.Warn().Err(err).Msg("revoke: could not store and commit, next owner replays")
		}
	}
	p.drop(ids)
}

// onLost drops state: the partitions belong to someone else already.
func (p *Processor) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	<-p.clSet
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drop(lost[p.cfg.Topics.Telemetry])
}

// drop forgets partitions: their pending rows, and any commit for them
// still queued with the writer. Called with p.mu held.
func (p *Processor) drop(ids []int32) {
	p.commitMu.Lock()
	defer p.commitMu.Unlock()
	for _, id := range ids {
		if part := p.parts[id]; part != nil {
			part.gone = true
			p.rows.Add(-int64(len(part.windows) + len(part.readings)))
			delete(p.parts, id)
			p.m.lag.DeleteLabelValues(strconv.Itoa(int(id)))
		}
	}
}
