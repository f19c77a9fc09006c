package processor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/iotpipe/iotpipe/processor/window"
	"github.com/iotpipe/iotpipe/storage"
)

// maxInFlight is how many sealed batches may wait for storage: the one the
// writer is storing. The poll loop fills the next one meanwhile and blocks
// when that one is full (backpressure), so at most two batches of rows
// exist at a time (three for the moment a revoke seals one extra).
const maxInFlight = 1

// batch is a sealed unit of work for the writer: the rows every owned
// partition produced since the previous batch, and each partition's
// checkpoint taken at the moment of sealing. The checkpoint of partition p
// in batch n covers exactly the records whose rows are in batches ≤ n and
// whose dead letters are in dead-letter groups ≤ n: sealing moves all rows
// out of the partitions and starts a new dead-letter group, with the poll
// loop stopped (p.mu held, workers joined).
type batch struct {
	windows  []storage.Window
	readings []storage.Reading
	closed   []closeMark // freshness: when windows became final
	cps      []batchCheckpoint
	dl       *dlGroup
	done     chan struct{} // closed when stored and committed, or abandoned
}

type batchCheckpoint struct {
	id   int32
	part *partition
	cp   window.Checkpoint
}

// dlGroup tracks the dead letters produced for the records of one batch.
type dlGroup struct {
	mu     sync.Mutex
	n      int  // produces not yet acknowledged
	sealed bool // no more produces join the group
	err    error
	zero   chan struct{} // closed once sealed and n == 0
}

func newDLGroup() *dlGroup { return &dlGroup{zero: make(chan struct{})} }

func (g *dlGroup) add() {
	g.mu.Lock()
	g.n++
	g.mu.Unlock()
}

func (g *dlGroup) done(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n--
	if err != nil {
		g.err = errors.Join(g.err, err)
	}
	if g.sealed && g.n == 0 {
		close(g.zero)
	}
}

func (g *dlGroup) seal() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sealed = true
	if g.n == 0 {
		close(g.zero)
	}
}

func (g *dlGroup) wait(ctx context.Context) error {
	select {
	case <-g.zero:
	case <-ctx.Done():
		return fmt.Errorf("processor: wait for dead letters: %w", ctx.Err())
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return fmt.Errorf("processor: dead-letter produce failed, not committing: %w", g.err)
	}
	return nil
}

// writer stores sealed batches and commits their checkpoints, one batch at
// a time and in order, on its own goroutine. After the first failure it
// stores and commits nothing more: a later checkpoint would cover the rows
// of the failed batch.
type writer struct {
	mu      sync.Mutex
	cond    *sync.Cond
	queue   []*batch // sealed, not yet done; queue[0] is being written
	err     error    // first failure
	running bool
	closing bool
	free    []*batch // recycled row buffers
	exited  chan struct{}
}

func newWriter() *writer {
	w := &writer{}
	w.cond = sync.NewCond(&w.mu)
	return w
}

// start runs the writer goroutine; ctx bounds its storage retries.
func (p *Processor) startWriter(ctx context.Context) {
	w := p.w
	w.mu.Lock()
	w.running, w.exited = true, make(chan struct{})
	w.mu.Unlock()
	go func() {
		defer close(w.exited)
		for {
			w.mu.Lock()
			for len(w.queue) == 0 && !w.closing {
				w.cond.Wait()
			}
			if len(w.queue) == 0 {
				w.running = false
				w.cond.Broadcast()
				w.mu.Unlock()
				return
			}
			b, failed := w.queue[0], w.err != nil
			w.mu.Unlock()
			var err error
			if !failed {
				err = p.write(ctx, b)
			}
			w.mu.Lock()
			w.queue = w.queue[1:]
			if err != nil && w.err == nil {
				w.err = err
			}
			close(b.done)
			if len(w.free) < maxInFlight+1 {
				clear(b.windows)
				clear(b.readings)
				clear(b.cps)
				w.free = append(w.free, &batch{windows: b.windows[:0], readings: b.readings[:0],
					closed: b.closed[:0], cps: b.cps[:0]})
			}
			w.cond.Broadcast()
			w.mu.Unlock()
		}
	}()
}

// stopWriter lets the writer finish its queue (or abandon it, once ctx of
// startWriter is done) and waits for it to exit.
func (p *Processor) stopWriter() {
	w := p.w
	w.mu.Lock()
	exited := w.exited
	w.closing = true
	w.cond.Broadcast()
	w.mu.Unlock()
	if exited != nil {
		<-exited
	}
}

// failed returns the writer's first error.
func (w *writer) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// waitQueue waits until at most n batches are queued, the writer failed or
// stopped, or ctx is done.
func (w *writer) waitQueue(ctx context.Context, n int) error {
	stop := context.AfterFunc(ctx, func() {
		w.mu.Lock()
		w.cond.Broadcast()
		w.mu.Unlock()
	})
	defer stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		switch {
		case w.err != nil:
			return w.err
		case len(w.queue) <= n:
			return nil
		case !w.running:
			return errors.New("processor: storage writer is not running")
		case ctx.Err() != nil:
			return fmt.Errorf("processor: waiting for storage: %w", ctx.Err())
		}
		w.cond.Wait()
	}
}

// write stores b's windows, then its readings (each retried with backoff
// until it succeeds or ctx ends), waits for its dead letters and commits its
// checkpoints. Windows go first and alone: they are what dashboards wait
// for, and they are visible once their insert returns, whatever the
// (larger) readings insert after them takes. Freshness is measured there.
func (p *Processor) write(ctx context.Context, b *batch) error {
	if len(b.windows) > 0 {
		if err := p.store(ctx, b.windows, nil); err != nil {
			return err
		}
		p.m.windowsWritten.Add(float64(len(b.windows)))
		stored := time.Now()
		for _, c := range b.closed {
			d := stored.Sub(c.at).Seconds()
			for range c.n {
				p.m.freshness.Observe(d)
			}
		}
	}
	if len(b.readings) > 0 {
		if err := p.store(ctx, nil, b.readings); err != nil {
			return err
		}
	}
	if err := b.dl.wait(ctx); err != nil {
		return err
	}
	return p.commit(ctx, b.cps)
}

// store writes rows with Sink.WriteBatch, retrying with backoff until it
// succeeds or ctx ends.
func (p *Processor) store(ctx context.Context, windows []storage.Window, readings []storage.Reading) error {
	for attempt := 0; ; attempt++ {
		start := time.Now()
		err := p.cfg.Sink.WriteBatch(ctx, windows, readings)
		p.m.writeLatency.Observe(time.Since(start).Seconds())
		if err == nil {
			return nil
		}
		p.m.writeErrors.Inc()
		p.log.Warn().Err(err).Int("attempt", attempt+1).Int("windows", len(windows)).Int("readings", len(readings)).Msg("storage write failed, retrying")
		select {
		case <-ctx.Done():
			return fmt.Errorf("processor: store batch: %w (last error: %w)", ctx.Err(), err)
		case <-time.After(p.backoff(attempt)):
		}
	}
}

// commit commits the checkpoints of a stored batch with the watermark in the
// commit metadata, skipping partitions that were revoked or lost since (a
// stale commit would move the next owner's position back). It uses kgo's
// commit (which fills in member id, generation and topic ids) and rewrites
// the metadata just before the request goes out: kgo would otherwise send
// the member id there.
func (p *Processor) commit(ctx context.Context, bcps []batchCheckpoint) error {
	p.commitMu.Lock()
	defer p.commitMu.Unlock()
	offsets := map[int32]kgo.EpochOffset{}
	meta := map[int32]string{}
	cps := map[int32]batchCheckpoint{}
	for _, c := range bcps {
		if c.part.gone || c.cp.Offset < 0 || c.cp == c.part.committed {
			continue
		}
		offsets[c.id] = kgo.EpochOffset{Epoch: -1, Offset: c.cp.Offset}
		meta[c.id] = formatMeta(c.cp)
		cps[c.id] = c
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
	for _, c := range cps {
		c.part.committed = c.cp
	}
	if cerr != nil {
		// Not fatal: the data is stored, a later commit covers it, and a
		// restart in between only replays (identical rows). The next
		// flush seals a batch even without new rows, to retry.
		p.retryCommit.Store(true)
		p.m.commitErrors.Inc()
		p.log.Warn().Err(cerr).Msg("offset commit failed")
	}
	return nil
}
