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
//	p, err := processor.New(processor.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(seeds...)}, Sink: store, ...})
//	if err != nil { ... }
//	err = p.Run(ctx) // until ctx is done
package processor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

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
	WindowSizes     []time.Duration // positive, whole seconds, distinct; default 10s and 1m
	AllowedLateness time.Duration   // default 5s
	IdleTimeout     time.Duration   // default 30s
	FlushInterval   time.Duration   // default 1s
	MaxBatchRows    int             // windows + readings per WriteBatch, default 50000
	// MaxOpenWindows caps the open windows (device × metric × size) over all
	// owned partitions, default 1,000,000 (about 200 MB at the accounted
	// ~200 B each). When it is reached the processor stops fetching: it
	// polls no more records, keeps storing and committing what is final, and
	// lets idle advance (IdleTimeout without records) close windows by wall
	// clock, then resumes. Nothing is dropped or force-closed, so exactly-once
	// holds; the cap is checked before each poll, so one poll's records may
	// exceed it.
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

	mu        sync.Mutex // guards everything below; held by the poll loop and the rebalance callbacks
	parts     map[int32]*partition
	rows      int // pending windows + readings over all partitions
	lastFlush time.Time
	fatal     error
	dlMu      sync.Mutex
	dlErr     error // first failed dead-letter produce
	dec       *decoder
	finalBuf  []window.Window
	open      int // open windows at the last maybeFlush
}

type partition struct {
	eng       *window.Engine
	committed window.Checkpoint // last committed, to skip commits that change nothing
	windows   []storage.Window
	readings  []storage.Reading
	closed    []closeMark // when part.windows became final, for freshness
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
		dec:   newDecoder(),
		wcfg: window.Config{Sizes: cfg.WindowSizes, AllowedLateness: cfg.AllowedLateness,
			IdleTimeout: cfg.IdleTimeout},
		backoff: func(attempt int) time.Duration {
			return min(100*time.Millisecond<<min(attempt, 10), 5*time.Second)
		},
		lastFlush: time.Now(),
	}
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
		c.WindowSizes = []time.Duration{10 * time.Second, time.Minute}
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
func (p *Processor) Run(ctx context.Context) error {
	defer p.cl.Close()
	tick := min(p.cfg.FlushInterval, p.cfg.IdleTimeout)
	for ctx.Err() == nil {
		if p.open >= p.cfg.MaxOpenWindows {
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
		pollCtx, cancel := context.WithTimeout(ctx, tick)
		fs := p.cl.PollRecords(pollCtx, p.cfg.MaxBatchRows)
		cancel()
		if fs.IsClientClosed() {
			return errors.New("processor: kafka client closed")
		}
		fs.EachError(func(t string, part int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				p.log.Warn().Err(err).Str("topic", t).Int32("partition", part).Msg("fetch")
			}
		})
		p.mu.Lock()
		err := p.fatal
		if err == nil {
			fs.EachPartition(func(ft kgo.FetchTopicPartition) {
				// A poll that ends by its deadline reports the context error
				// as partition -1 of topic "": no partition to process.
				if ft.Topic == p.cfg.Topics.Telemetry && ft.Partition >= 0 {
					err = errors.Join(err, p.process(ctx, ft))
				}
			})
		}
		if err == nil {
			err = p.maybeFlush(ctx, false)
		}
		p.mu.Unlock()
		p.cl.AllowRebalance()
		if err != nil && ctx.Err() == nil {
			return err
		}
	}
	// Store and commit what is final; open windows are rebuilt by the next
	// owner from the committed offset and watermark.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	p.mu.Lock()
	err := p.maybeFlush(sctx, true)
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("processor: final flush: %w", err)
	}
	return nil
}

// process runs one fetched partition's records through decoding and its engine.
func (p *Processor) process(ctx context.Context, ft kgo.FetchTopicPartition) error {
	part := p.parts[ft.Partition]
	if part == nil {
		// OnPartitionsAssigned runs before fetches start, so this is a bug;
		// restoring here keeps the exactly-once rule anyway.
		if err := p.restore(ctx, []int32{ft.Partition}); err != nil {
			return err
		}
		part = p.parts[ft.Partition]
	}
	for _, r := range ft.Records {
		p.m.consumed.Inc()
		p.handle(part, r)
		if p.rows >= p.cfg.MaxBatchRows {
			if err := p.maybeFlush(ctx, true); err != nil {
				return err
			}
		}
	}
	if n := len(ft.Records); n > 0 {
		lag := max(ft.HighWatermark-ft.Records[n-1].Offset-1, 0)
		p.m.lag.WithLabelValues(strconv.Itoa(int(ft.Partition))).Set(float64(lag))
	}
	return nil
}

// header returns the value of the first header named key, without copying.
func header(r *kgo.Record, key string) []byte {
	for _, h := range r.Headers {
		if h.Key == key {
			return h.Value
		}
	}
	return nil
}

func (p *Processor) handle(part *partition, r *kgo.Record) {
	var device string
	if h := header(r, bus.HeaderDevice); len(h) > 0 {
		device = p.dec.intern(h)
	} else if len(r.Key) > 0 {
		device = p.dec.intern(r.Key)
	}
	if device == "" {
		if !part.eng.Skip(r.Offset) {
			p.deadLetter(r, ReasonMissingDevice, "no iot-device header and no record key")
		}
		return
	}
	var recv time.Time
	ms, err := strconv.ParseInt(string(header(r, bus.HeaderReceivedAt)), 10, 64)
	if err == nil {
		recv = time.UnixMilli(ms).UTC()
	}
	var mqttTopic string
	if d := header(r, bus.HeaderTopic); len(d) > 0 && len(r.Value) > 0 && r.Value[0] != '{' {
		mqttTopic = string(d) // only a bare number needs the topic
	}
	d, derr := p.dec.decode(r.Value, mqttTopic, recv, err == nil)
	if derr != nil {
		if !part.eng.Skip(r.Offset) {
			p.m.ignored.Add(float64(d.ignored))
			p.deadLetter(r, derr.reason, derr.detail)
		}
		return
	}
	out := part.eng.Add(window.Record{Offset: r.Offset, Device: device, Time: d.time, Values: d.values})
	if !out.Replayed {
		p.m.ignored.Add(float64(d.ignored))
		for i, v := range d.values {
			if out.Counted[i] {
				at := d.time
				if !v.Time.IsZero() {
					at = v.Time
				}
				part.readings = append(part.readings, storage.Reading{Device: device, Metric: v.Metric, Time: at, Value: v.Value})
				p.rows++
			}
		}
		if len(out.TooLate) > 0 {
			p.deadLetter(r, ReasonTooLate, fmt.Sprintf("event time %s is past the %v window(s) closed by watermark %s",
				d.time.Format(time.RFC3339Nano), out.TooLate, part.eng.Watermark().Format(time.RFC3339Nano)))
		}
	}
	p.takeFinal(part)
}

func (p *Processor) takeFinal(part *partition) {
	if part.eng.Pending() == 0 {
		return
	}
	n := len(part.windows)
	p.finalBuf = part.eng.Final(p.finalBuf[:0])
	for _, w := range p.finalBuf {
		part.windows = append(part.windows, storage.Window(w))
	}
	p.rows += len(part.windows) - n
	part.closed = append(part.closed, closeMark{len(part.windows) - n, time.Now()})
}

// deadLetter produces the original record, bytes and headers intact, to the
// dead-letter topic. Produces are awaited (Flush) before any commit.
func (p *Processor) deadLetter(r *kgo.Record, reason, detail string) {
	p.m.deadletter.WithLabelValues(reason).Inc()
	dl := &kgo.Record{
		Topic: p.cfg.Topics.DeadLetter,
		Key:   r.Key,
		Value: r.Value,
		Headers: append(slices.Clone(r.Headers),
			kgo.RecordHeader{Key: bus.HeaderReason, Value: []byte(reason)},
			kgo.RecordHeader{Key: bus.HeaderDetail, Value: []byte(detail)},
			kgo.RecordHeader{Key: bus.HeaderSource, Value: fmt.Appendf(nil, "%s/%d/%d", r.Topic, r.Partition, r.Offset)},
		),
	}
	p.cl.Produce(context.Background(), dl, func(_ *kgo.Record, err error) {
		if err != nil {
			p.dlMu.Lock()
			p.dlErr = errors.Join(p.dlErr, err)
			p.dlMu.Unlock()
		}
	})
}

// maybeFlush closes idle windows and, when forced, when the batch is full or
// FlushInterval passed, stores all pending rows and then commits every
// partition's checkpoint. Called with p.mu held.
func (p *Processor) maybeFlush(ctx context.Context, force bool) error {
	now := time.Now()
	open, bytes := 0, 0
	for _, part := range p.parts {
		if part.eng.AdvanceIdle(now) {
			p.takeFinal(part)
		}
		open += part.eng.Open()
		bytes += part.eng.StateBytes()
	}
	p.open = open
	p.m.open.Set(float64(open))
	p.m.stateBytes.Set(float64(bytes))
	if !force && p.rows < p.cfg.MaxBatchRows && now.Sub(p.lastFlush) < p.cfg.FlushInterval {
		return nil
	}
	if err := p.store(ctx, p.parts); err != nil {
		return err
	}
	p.lastFlush = now
	return p.commit(ctx, p.parts)
}

// store writes the pending rows of parts, retrying with backoff until it
// succeeds or ctx ends. No records are fetched meanwhile: the caller holds
// the poll.
func (p *Processor) store(ctx context.Context, parts map[int32]*partition) error {
	var ws []storage.Window
	var rs []storage.Reading
	for _, part := range parts {
		ws = append(ws, part.windows...)
		rs = append(rs, part.readings...)
	}
	if len(ws)+len(rs) > 0 {
		for attempt := 0; ; attempt++ {
			start := time.Now()
			err := p.cfg.Sink.WriteBatch(ctx, ws, rs)
			p.m.writeLatency.Observe(time.Since(start).Seconds())
			if err == nil {
				break
			}
			p.m.writeErrors.Inc()
			p.log.Warn().Err(err).Int("attempt", attempt+1).Int("windows", len(ws)).Int("readings", len(rs)).Msg("storage write failed, retrying")
			select {
			case <-ctx.Done():
				return fmt.Errorf("processor: store batch: %w (last error: %w)", ctx.Err(), err)
			case <-time.After(p.backoff(attempt)):
			}
		}
		p.m.windowsWritten.Add(float64(len(ws)))
	}
	stored := time.Now()
	for _, part := range parts {
		for _, c := range part.closed {
			d := stored.Sub(c.at).Seconds()
			for range c.n {
				p.m.freshness.Observe(d)
			}
		}
		p.rows -= len(part.windows) + len(part.readings)
		clear(part.windows)
		clear(part.readings)
		part.windows, part.readings, part.closed = part.windows[:0], part.readings[:0], part.closed[:0]
	}
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

// commit waits for the dead letters, then commits the checkpoint of every
// partition in parts with the watermark in the commit metadata. It uses
// kgo's commit (which fills in member id, generation and topic ids) and
// rewrites the metadata just before the request goes out: kgo would
// otherwise send the member id there.
func (p *Processor) commit(ctx context.Context, parts map[int32]*partition) error {
	if err := p.cl.Flush(ctx); err != nil {
		return fmt.Errorf("processor: wait for dead letters: %w", err)
	}
	p.dlMu.Lock()
	dlErr := p.dlErr
	p.dlMu.Unlock()
	if dlErr != nil {
		return fmt.Errorf("processor: dead-letter produce failed, not committing: %w", dlErr)
	}
	offsets := map[int32]kgo.EpochOffset{}
	meta := map[int32]string{}
	cps := map[int32]window.Checkpoint{}
	for id, part := range parts {
		cp := part.eng.Checkpoint()
		if cp.Offset < 0 || cp == part.committed {
			continue
		}
		offsets[id] = kgo.EpochOffset{Epoch: -1, Offset: cp.Offset}
		meta[id] = formatMeta(cp)
		cps[id] = cp
	}
	if len(offsets) == 0 {
		return nil
	}
	topic := p.cfg.Topics.Telemetry
	cctx := kgo.PreCommitFnContext(ctx, func(req *kmsg.OffsetCommitRequest) error {
		for i := range req.Topics {
			for j := range req.Topics[i].Partitions {
				rp := &req.Topics[i].Partitions[j]
				if m, ok := meta[rp.Partition]; ok && req.Topics[i].Topic == topic {
					rp.Metadata = &m
				}
			}
		}
		return nil
	})
	var cerr error
	p.cl.CommitOffsetsSync(cctx, map[string]map[int32]kgo.EpochOffset{topic: offsets},
		func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
			if err != nil {
				cerr = err
				clear(cps)
				return
			}
			for _, t := range resp.Topics {
				for _, rp := range t.Partitions {
					if err := kerr.ErrorForCode(rp.ErrorCode); err != nil {
						cerr = errors.Join(cerr, fmt.Errorf("partition %d: %w", rp.Partition, err))
						delete(cps, rp.Partition)
					}
				}
			}
		})
	for id, cp := range cps {
		parts[id].committed = cp
	}
	if cerr != nil {
		// Not fatal: the data is stored, a later commit covers it, and a
		// restart in between only replays (identical rows).
		p.m.commitErrors.Inc()
		p.log.Warn().Err(cerr).Msg("offset commit failed")
	}
	return nil
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
		eng, err := window.New(p.wcfg, cp)
		if err != nil {
			return fmt.Errorf("processor: window engine: %w", err)
		}
		p.parts[id] = &partition{eng: eng, committed: cp}
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

// onRevoked stores and commits what the revoked partitions closed, then
// drops their state; the next owner rebuilds open windows by replay.
func (p *Processor) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	<-p.clSet
	p.mu.Lock()
	defer p.mu.Unlock()
	parts := map[int32]*partition{}
	for _, id := range revoked[p.cfg.Topics.Telemetry] {
		if part := p.parts[id]; part != nil {
			parts[id] = part
		}
	}
	if len(parts) > 0 {
		// Bounded: the rebalance waits for us. If storage stays down the
		// state is dropped uncommitted and the next owner replays.
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := p.store(sctx, parts)
		if err == nil {
			err = p.commit(sctx, parts)
		}
		cancel()
		if err != nil {
			p.log.Warn().Err(err).Msg("revoke: could not store and commit, next owner replays")
		}
	}
	p.drop(slices.Collect(maps.Keys(parts)))
}

// onLost drops state: the partitions belong to someone else already.
func (p *Processor) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drop(lost[p.cfg.Topics.Telemetry])
}

func (p *Processor) drop(ids []int32) {
	for _, id := range ids {
		if part := p.parts[id]; part != nil {
			p.rows -= len(part.windows) + len(part.readings)
			delete(p.parts, id)
			p.m.lag.DeleteLabelValues(strconv.Itoa(int(id)))
		}
	}
}
