// Package window is iotpipe's event-time tumbling window engine. It is pure:
// no Kafka, no I/O, an injected clock. The processor runs one Engine per Kafka
// partition.
//
// # Semantics
//
// Windows of every configured size (default 10s and 1m) are aligned to the
// UTC epoch: a reading at event time t belongs, for size s, to the window
// [floor(t/s)·s, floor(t/s)·s+s). Per device × metric × size × window start
// the engine keeps count, sum, min, max, first and last (by event time, ties
// keep the earlier record) and the times of first and last.
//
// The watermark of a partition is max(event time seen) − allowed lateness,
// never decreasing, raised further by AdvanceIdle. A window is final when
// watermark ≥ window end; it is then emitted once (see Final) and forgotten.
// A reading whose window is already final is too late for that size: the
// decision is made per size, so a reading can be too late for its 10s window
// and still count in its 1m window (Outcome.TooLate lists the sizes).
//
// A reading is identified by (device, metric, event time): a second reading
// with the same identity in an open window is not counted again (the first,
// in offset order, wins).
//
// # Exactly-once window results
//
// The caller stores final windows and raw readings, and only after the store
// succeeded commits the Checkpoint taken at the same moment: Offset (where to
// replay from), Watermark W, and Next (the offset after the last record
// processed). On restart the engine is built from that checkpoint and the
// records from Offset on are replayed. Why the replay yields the windows of an
// uninterrupted run:
//
//  1. Windows with end ≤ W were final when the checkpoint was taken, so they
//     were emitted and stored by the batch that preceded the commit. Replay
//     drops every reading for them (per size), so they are never re-emitted
//     and never double counted.
//  2. Windows with end > W were open (or not yet started). Offset is the
//     minimum over open windows of the lowest offset that contributed, so
//     every reading counted in an open window lies at or after Offset. A
//     window cannot have received readings before Offset and be absent from
//     the open set: it is not final (end > W) and state is only dropped when
//     final. Duplicates always follow their original in offset order, so the
//     dedupe decision replays too.
//  3. The watermark during replay equals the original one record by record:
//     for a record at offset o in [Offset, Next) the original watermark was
//     ≤ W and the replayed one is exactly W (W already covers those records'
//     event times), and for o ≥ Next both are max(W, max event time in
//     [Next, o] − lateness). So every window with end > W accepts exactly the
//     same readings in both runs (accepted in [Offset, Next) since end > W ≥
//     original watermark), closes at the same record, and has the same
//     content. Its Version is 1 + the highest contributing offset, so an
//     identical re-emission carries an identical version.
//  4. Records in [Offset, Next) were fully handled before the commit: their
//     raw readings were in the stored batch and their dead letters were
//     acknowledged. The engine reports them as Outcome.Replayed so the caller
//     emits neither again; records from Next on are new.
//
// Because each size's decision is end(window) vs watermark, points 1–3 hold
// per size independently, which is why a reading may be partly too late.
//
// The one clock-driven input is AdvanceIdle. An idle advance that was
// committed is part of W and replays like any other. One that was lost in a
// crash before its commit is simply not repeated: the replay then behaves as
// an uninterrupted run without that advance; a window it had closed early
// may be re-emitted with more readings and therefore a higher Version (more
// contributing records means a higher last offset), which replaces the
// earlier row.
package window

import (
	"container/heap"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
)

// Config configures an Engine.
type Config struct {
	// Sizes are the window lengths, positive and distinct.
	Sizes []time.Duration
	// AllowedLateness is how far behind the newest event time a reading may
	// be and still count.
	AllowedLateness time.Duration
	// IdleTimeout: after this long without records AdvanceIdle moves the
	// watermark to now − AllowedLateness. Zero disables idle advance.
	IdleTimeout time.Duration
	// Clock is the processing-time clock; nil means time.Now.
	Clock func() time.Time
}

// Value is one metric's numeric value within a Record.
type Value struct {
	Metric string
	Value  float64
}

// Record is one decoded Kafka record: every value shares the device and the
// event time.
type Record struct {
	Offset int64
	Device string
	Time   time.Time
	Values []Value
}

// Window is a final window result.
type Window struct {
	Device  string
	Metric  string
	Size    time.Duration
	Start   time.Time // UTC
	Count   uint64
	Sum     float64
	Min     float64
	Max     float64
	First   float64
	Last    float64
	FirstAt time.Time
	LastAt  time.Time
	// Version is 1 + the highest offset that contributed: a replay that
	// rebuilds the same window gives the same version, one that adds
	// readings a higher one.
	Version uint64
}

// Checkpoint is the state that is committed with a partition's offset.
type Checkpoint struct {
	// Offset is where a restart replays from: the lowest offset that
	// contributed to an open window, else the offset after the last record
	// processed. Negative means nothing was processed yet.
	Offset int64
	// Next is the offset after the last record processed (≥ Offset).
	Next int64
	// Watermark; the zero Time means none.
	Watermark time.Time
}

// Outcome reports what Add did with a record.
type Outcome struct {
	// Replayed: the record was already handled before the checkpoint the
	// engine was restored from; its readings and dead letters exist.
	Replayed bool
	// TooLate lists the sizes whose window for this record was already
	// final. Valid until the next call.
	TooLate []time.Duration
	// Counted[i] says whether Values[i] counted in at least one window (not
	// too late everywhere, not a duplicate). Valid until the next call.
	Counted []bool
}

const noWatermark = math.MinInt64

type key struct {
	device, metric string
	size, start    int64
}

type state struct {
	key
	count             uint64
	sum, min, max     float64
	first, last       float64
	firstAt, lastAt   int64
	firstOff, lastOff int64
	seen              map[int64]struct{}
}

// Engine aggregates one partition's records. It is not safe for concurrent use.
type Engine struct {
	sizes    []int64
	lateness int64
	idle     time.Duration
	clock    func() time.Time

	watermark int64
	maxEvent  int64
	position  int64 // offset after the last record processed
	next0     int64 // Next of the restored checkpoint
	lastSeen  time.Time

	open  map[key]*state
	ends  endHeap
	byEnd map[int64][]*state
	final []Window

	tooLate []time.Duration
	counted []bool
}

// New returns an engine resuming from a checkpoint. A Checkpoint with a
// negative Offset starts fresh at an unknown position; the zero Checkpoint
// starts fresh at offset 0.
func New(cfg Config, from Checkpoint) (*Engine, error) {
	if len(cfg.Sizes) == 0 {
		return nil, errors.New("window: no sizes")
	}
	e := &Engine{
		lateness:  int64(cfg.AllowedLateness),
		idle:      cfg.IdleTimeout,
		clock:     cfg.Clock,
		watermark: noWatermark,
		maxEvent:  noWatermark,
		position:  from.Offset,
		next0:     from.Next,
		open:      make(map[key]*state),
		byEnd:     make(map[int64][]*state),
	}
	if cfg.AllowedLateness < 0 {
		return nil, errors.New("window: negative allowed lateness")
	}
	for _, s := range cfg.Sizes {
		if s <= 0 {
			return nil, fmt.Errorf("window: size %v is not positive", s)
		}
		if slices.Contains(e.sizes, int64(s)) {
			return nil, fmt.Errorf("window: size %v given twice", s)
		}
		e.sizes = append(e.sizes, int64(s))
	}
	if e.clock == nil {
		e.clock = time.Now
	}
	if from.Offset < 0 {
		e.position, e.next0 = -1, -1
	}
	if !from.Watermark.IsZero() {
		e.watermark = from.Watermark.UnixNano()
	}
	e.lastSeen = e.clock()
	return e, nil
}

// align aligns t down to a multiple of size, also for negative t.
func align(t, size int64) int64 {
	r := t % size
	if r < 0 {
		r += size
	}
	return t - r
}

// Add feeds one record. Records must come in offset order.
func (e *Engine) Add(r Record) Outcome {
	t := r.Time.UnixNano()
	replayed := r.Offset < e.next0
	e.tooLate = e.tooLate[:0]
	e.counted = slices.Grow(e.counted[:0], len(r.Values))[:len(r.Values)]
	clear(e.counted)
	for _, size := range e.sizes {
		start := align(t, size)
		end := start + size
		if end <= e.watermark {
			// Replayed: the window was stored (or the reading dead-lettered)
			// before the checkpoint, so this is not news.
			if !replayed {
				e.tooLate = append(e.tooLate, time.Duration(size))
			}
			continue
		}
		for i, v := range r.Values {
			if e.add(key{r.Device, v.Metric, size, start}, t, v.Value, r.Offset) {
				e.counted[i] = true
			}
		}
	}
	if t > e.maxEvent {
		e.maxEvent = t
		if wm := t - e.lateness; wm > e.watermark {
			e.watermark = wm
		}
	}
	e.processed(r.Offset)
	e.closeFinal()
	return Outcome{Replayed: replayed, TooLate: e.tooLate, Counted: e.counted}
}

// Skip records that the record at offset carried no readings (the caller
// dead-lettered it) so the position advances. It reports whether the record
// was already handled before the restored checkpoint (then the dead letter
// exists already).
func (e *Engine) Skip(offset int64) (replayed bool) {
	e.processed(offset)
	return offset < e.next0
}

func (e *Engine) processed(offset int64) {
	if offset+1 > e.position {
		e.position = offset + 1
	}
	e.lastSeen = e.clock()
}

func (e *Engine) add(k key, t int64, v float64, off int64) bool {
	s := e.open[k]
	if s == nil {
		s = &state{key: k, min: v, max: v, first: v, last: v, firstAt: t, lastAt: t,
			firstOff: off, lastOff: off, seen: make(map[int64]struct{}, 4)}
		e.open[k] = s
		end := k.start + k.size
		if _, ok := e.byEnd[end]; !ok {
			heap.Push(&e.ends, end)
		}
		e.byEnd[end] = append(e.byEnd[end], s)
	} else if _, dup := s.seen[t]; dup {
		return false
	}
	s.seen[t] = struct{}{}
	s.count++
	s.sum += v
	s.min = min(s.min, v)
	s.max = max(s.max, v)
	if t < s.firstAt {
		s.first, s.firstAt = v, t
	}
	if t > s.lastAt {
		s.last, s.lastAt = v, t
	}
	s.lastOff = max(s.lastOff, off)
	return true
}

// AdvanceIdle moves the watermark to now − AllowedLateness when no record
// arrived for IdleTimeout and windows are open, so a device that stopped
// sending still gets its last windows. It reports whether windows closed.
func (e *Engine) AdvanceIdle(now time.Time) bool {
	if e.idle <= 0 || len(e.open) == 0 || now.Sub(e.lastSeen) < e.idle {
		return false
	}
	if wm := now.UnixNano() - e.lateness; wm > e.watermark {
		e.watermark = wm
	}
	n := len(e.final)
	e.closeFinal()
	return len(e.final) > n
}

func (e *Engine) closeFinal() {
	for len(e.ends) > 0 && e.ends[0] <= e.watermark {
		end := heap.Pop(&e.ends).(int64)
		for _, s := range e.byEnd[end] {
			delete(e.open, s.key)
			e.final = append(e.final, Window{
				Device: s.device, Metric: s.metric, Size: time.Duration(s.size),
				Start: time.Unix(0, s.start).UTC(), Count: s.count, Sum: s.sum,
				Min: s.min, Max: s.max, First: s.first, Last: s.last,
				FirstAt: time.Unix(0, s.firstAt).UTC(), LastAt: time.Unix(0, s.lastAt).UTC(),
				Version: uint64(s.lastOff) + 1,
			})
		}
		delete(e.byEnd, end)
	}
}

// Final appends the windows that became final since the last call to dst
// and forgets them.
func (e *Engine) Final(dst []Window) []Window {
	dst = append(dst, e.final...)
	clear(e.final)
	e.final = e.final[:0]
	return dst
}

// Pending is the number of final windows not yet taken by Final.
func (e *Engine) Pending() int { return len(e.final) }

// Open is the number of open windows.
func (e *Engine) Open() int { return len(e.open) }

// Watermark returns the current watermark; the zero Time means none yet.
func (e *Engine) Watermark() time.Time {
	if e.watermark == noWatermark {
		return time.Time{}
	}
	return time.Unix(0, e.watermark).UTC()
}

// Checkpoint returns what to commit once every window returned by Final so
// far (and every reading and dead letter of the records added so far) is
// stored.
func (e *Engine) Checkpoint() Checkpoint {
	off := e.position
	for _, s := range e.open {
		off = min(off, s.firstOff)
	}
	return Checkpoint{Offset: off, Next: max(e.next0, e.position), Watermark: e.Watermark()}
}

type endHeap []int64

func (h endHeap) Len() int           { return len(h) }
func (h endHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h endHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *endHeap) Push(x any)        { *h = append(*h, x.(int64)) }
func (h *endHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
