// Package window is iotpipe's event-time tumbling window engine. It is pure:
// no Kafka, no I/O, an injected clock. The processor runs one Engine per Kafka
// partition.
//
// # Semantics
//
// Windows of every configured size (the processor defaults to 10s, 1m and 1h) are aligned to the
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
// A record's readings usually share its event time; a SenML pack gives each
// reading its own (Value.Time). Every reading of a record is decided against
// the watermark as it stood before the record, and only then does the
// record's newest event time raise the watermark, so a record's outcome does
// not depend on the order of its values.
//
// # State
//
// Open windows are kept per series (device × metric, one map entry) as a
// short linked list of windows of every size. Each window holds its
// aggregates and the exact set of event times it counted (for the dedupe),
// encoded as runs of equal gaps (see seen): readings in event-time order
// cost O(1) and, at a regular cadence, no memory; out-of-order readings are
// exact but slower. StateBytes reports an accounted estimate of this
// memory, about 200 bytes per open window at one reading per second.
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
//     [Next, o] − lateness), a record's event time being its newest
//     reading's. So every window with end > W accepts exactly the
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
	"unsafe"
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

// Value is one reading within a Record.
type Value struct {
	Metric string
	Value  float64
	// Time is this reading's event time; the zero Time means the Record's.
	// A SenML pack carries readings at several times in one record.
	Time time.Time
}

// Record is one decoded Kafka record: every value shares the device, and the
// event time unless the value has its own.
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

// device holds the series of one device that have open windows. Records
// carry one device and a few metrics, so the engine looks the device up
// once per record and finds each metric in its short list: one map lookup
// per record instead of one per reading.
type device struct {
	name   string
	series []*series
}

// series holds the open windows (of every size) of one device × metric.
type series struct {
	dev    *device
	metric string
	wins   *win // linked through win.next
}

// win is one open window's state.
type win struct {
	s                 *series
	next              *win // the series' next open window
	start             int64
	count             uint64
	sum, min, max     float64
	first, last       float64
	firstAt, lastAt   int64
	firstOff, lastOff int64
	seen              seen // event times counted, for the dedupe
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

	devices map[string]*device
	lastDev *device // the last DeviceName found, cleared when dropped
	nSeries int     // series with open windows, over all devices
	nOpen   int
	ends    endHeap
	byEnd   map[int64][]*win
	final   []Window

	// recycled allocations: closed windows, empty series, end buckets
	freeWins   []*win
	freeSeries []*series
	freeDevs   []*device
	freeBucket [][]*win
	seenBytes  int // Σ seen.bytes() over open windows
	scratch    []int64

	tooLate []time.Duration
	late    uint64 // bit i: sizes[i] was too late for the current record (≤ 64 sizes)
	counted []bool
}

// New returns an engine resuming from a checkpoint. A Checkpoint with a
// negative Offset starts fresh at an unknown position; the zero Checkpoint
// starts fresh at offset 0.
func New(cfg Config, from Checkpoint) (*Engine, error) {
	if len(cfg.Sizes) == 0 {
		return nil, errors.New("window: no sizes")
	}
	if len(cfg.Sizes) > 64 {
		return nil, errors.New("window: more than 64 sizes") // Engine.late is a bit set
	}
	e := &Engine{
		lateness:  int64(cfg.AllowedLateness),
		idle:      cfg.IdleTimeout,
		clock:     cfg.Clock,
		watermark: noWatermark,
		maxEvent:  noWatermark,
		position:  from.Offset,
		next0:     from.Next,
		devices:   make(map[string]*device),
		byEnd:     make(map[int64][]*win),
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

// Add feeds one record. Records must come in offset order. Each value is
// decided against the watermark as it was before the record; the record's
// newest event time then raises the watermark.
func (e *Engine) Add(r Record) Outcome {
	rt := r.Time.UnixNano()
	replayed := r.Offset < e.next0
	e.tooLate = e.tooLate[:0]
	e.late = 0
	e.counted = slices.Grow(e.counted[:0], len(r.Values))[:len(r.Values)]
	clear(e.counted)
	newest := int64(noWatermark)
	var cur *series
	var dev *device
	for i := range r.Values {
		v := &r.Values[i]
		t := rt
		if !v.Time.IsZero() {
			t = v.Time.UnixNano()
		}
		newest = max(newest, t)
		if cur == nil || cur.metric != v.Metric {
			cur = nil // looked up on the first size that is not too late
		}
		for j, size := range e.sizes {
			start := align(t, size)
			if start+size <= e.watermark {
				// Replayed: the window was stored (or the reading dead-lettered)
				// before the checkpoint, so this is not news.
				if !replayed {
					e.late |= 1 << j
				}
				continue
			}
			if cur == nil {
				if dev == nil {
					dev = e.deviceFor(r.Device)
				}
				cur = e.seriesFor(dev, v.Metric)
			}
			if e.add(cur, uint8(j), size, start, t, v.Value, r.Offset) {
				e.counted[i] = true
			}
		}
	}
	for j, size := range e.sizes {
		if e.late&(1<<j) != 0 {
			e.tooLate = append(e.tooLate, time.Duration(size))
		}
	}
	if newest > e.maxEvent {
		e.maxEvent = newest
		if wm := newest - e.lateness; wm > e.watermark {
			e.watermark = wm
		}
	}
	e.processed(r.Offset)
	e.closeFinal()
	return Outcome{Replayed: replayed, TooLate: e.tooLate, Counted: e.counted}
}

// DeviceName returns the name of the device b if it has open windows, the
// same string every time, so a caller can skip interning it; Add of a
// record of that device then finds it without a second lookup.
func (e *Engine) DeviceName(b []byte) (string, bool) {
	d := e.devices[string(b)]
	if d == nil {
		return "", false
	}
	e.lastDev = d
	return d.name, true
}

func (e *Engine) deviceFor(name string) *device {
	if d := e.lastDev; d != nil && d.name == name {
		return d
	}
	d := e.devices[name]
	if d == nil {
		d = reuse(&e.freeDevs)
		d.name = name
		e.devices[name] = d
	}
	return d
}

func (e *Engine) seriesFor(d *device, metric string) *series {
	for _, s := range d.series {
		if s.metric == metric {
			return s
		}
	}
	s := reuse(&e.freeSeries)
	s.dev, s.metric = d, metric
	d.series = append(d.series, s)
	e.nSeries++
	return s
}

func (e *Engine) dropSeries(s *series) {
	d := s.dev
	if i := slices.Index(d.series, s); i >= 0 {
		last := len(d.series) - 1
		d.series[i], d.series[last] = d.series[last], nil
		d.series = d.series[:last]
	}
	e.nSeries--
	*s = series{}
	release(&e.freeSeries, s)
	if len(d.series) == 0 {
		if e.lastDev == d {
			e.lastDev = nil
		}
		delete(e.devices, d.name)
		d.name = ""
		release(&e.freeDevs, d)
	}
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

// add counts the reading (t, v) in the series' window [start, start+size)
// unless its identity (device, metric, t) was counted there already.
func (e *Engine) add(s *series, sizeIdx uint8, size, start, t int64, v float64, off int64) bool {
	w := s.wins
	for w != nil && (w.start != start || w.seen.sizeIdx != sizeIdx) {
		w = w.next
	}
	if w == nil {
		e.open(s, sizeIdx, size, start, t, v, off)
		return true
	}
	before := w.seen.bytes()
	switch {
	case t > w.lastAt: // in order: the common case
		if !w.seen.appendMax(t, w.lastAt) {
			e.insert(w, t)
		}
		w.last, w.lastAt = v, t
	case w.seen.contains(t, w.firstAt, w.lastAt):
		return false
	default:
		e.insert(w, t)
		if t < w.firstAt {
			w.first, w.firstAt = v, t
		}
	}
	e.seenBytes += w.seen.bytes() - before
	w.count++
	w.sum += v
	w.min = min(w.min, v)
	w.max = max(w.max, v)
	w.lastOff = max(w.lastOff, off)
	return true
}

// insert adds an out-of-order time to w's set (slow path: rebuilds it).
func (e *Engine) insert(w *win, t int64) {
	ms := w.seen.members(e.scratch[:0], w.firstAt)
	i, _ := slices.BinarySearch(ms, t)
	ms = slices.Insert(ms, i, t)
	w.seen.rebuild(ms)
	e.scratch = ms[:0]
}

func (e *Engine) open(s *series, sizeIdx uint8, size, start, t int64, v float64, off int64) {
	w := reuse(&e.freeWins)
	buf := w.seen.buf[:0]
	*w = win{s: s, next: s.wins, start: start, count: 1, sum: v, min: v, max: v, first: v, last: v,
		firstAt: t, lastAt: t, firstOff: off, lastOff: off}
	w.seen.buf = buf
	w.seen.nano = t%msNanos != 0
	w.seen.sizeIdx = sizeIdx
	e.seenBytes += w.seen.bytes()
	s.wins = w
	e.nOpen++
	end := start + size
	b, ok := e.byEnd[end]
	if !ok {
		heap.Push(&e.ends, end)
		if n := len(e.freeBucket); n > 0 {
			b = e.freeBucket[n-1]
			e.freeBucket = e.freeBucket[:n-1]
		}
	}
	e.byEnd[end] = append(b, w)
}

// AdvanceIdle moves the watermark to now − AllowedLateness when no record
// arrived for IdleTimeout and windows are open, so a device that stopped
// sending still gets its last windows. It reports whether windows closed.
func (e *Engine) AdvanceIdle(now time.Time) bool {
	if e.idle <= 0 || e.nOpen == 0 || now.Sub(e.lastSeen) < e.idle {
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
		b := e.byEnd[end]
		for i, w := range b {
			s := w.s
			e.final = append(e.final, Window{
				Device: s.dev.name, Metric: s.metric, Size: time.Duration(e.sizes[w.seen.sizeIdx]),
				Start: time.Unix(0, w.start).UTC(), Count: w.count, Sum: w.sum,
				Min: w.min, Max: w.max, First: w.first, Last: w.last,
				FirstAt: time.Unix(0, w.firstAt).UTC(), LastAt: time.Unix(0, w.lastAt).UTC(),
				Version: uint64(w.lastOff) + 1,
			})
			for p := &s.wins; *p != nil; p = &(*p).next {
				if *p == w {
					*p = w.next
					break
				}
			}
			if s.wins == nil {
				e.dropSeries(s)
			}
			e.seenBytes -= w.seen.bytes()
			e.recycle(w)
			b[i] = nil
			e.nOpen--
		}
		delete(e.byEnd, end)
		if len(e.freeBucket) < 64 {
			e.freeBucket = append(e.freeBucket, b[:0])
		}
	}
}

// maxFree bounds each free list: recycling saves allocations when windows
// close and reopen a few at a time; a mass close (every device's window
// ends at the same instant) leaves the rest to the GC instead of holding a
// second copy of the state.
const maxFree = 4096

// reuse takes a recycled struct from a free list, or allocates one.
func reuse[T any](free *[]*T) *T {
	if n := len(*free); n > 0 {
		x := (*free)[n-1]
		(*free)[n-1] = nil
		*free = (*free)[:n-1]
		return x
	}
	return new(T)
}

// release puts x, cleared by the caller, on its free list unless the list
// holds maxFree already.
func release[T any](free *[]*T, x *T) {
	if len(*free) < maxFree {
		*free = append(*free, x)
	}
}

func (e *Engine) recycle(w *win) {
	e.seenBytes -= w.seen.bytes()
	if len(e.freeWins) >= maxFree {
		return
	}
	buf := w.seen.buf[:0]
	if cap(buf) > 256 {
		buf = nil // do not keep a burst's buffer
	}
	*w = win{}
	w.seen.buf = buf
	e.freeWins = append(e.freeWins, w)
}

// Final appends the windows that became final since the last call to dst
// and forgets them.
func (e *Engine) Final(dst []Window) []Window {
	dst = append(dst, e.final...)
	if cap(e.final) > 16384 {
		e.final = nil // a mass close's buffer is not kept
	} else {
		clear(e.final)
		e.final = e.final[:0]
	}
	return dst
}

// Pending is the number of final windows not yet taken by Final.
func (e *Engine) Pending() int { return len(e.final) }

// Open is the number of open windows (device × metric × size × start).
func (e *Engine) Open() int { return e.nOpen }

// Accounted sizes for StateBytes. A Go map entry costs its key and value
// plus a control byte, at up to 7/8 load: ≈ (32+8)·8/7 + 1 ≈ 48 bytes.
const (
	winBytes      = int(unsafe.Sizeof(win{}))
	seriesBytes   = int(unsafe.Sizeof(series{}))
	deviceBytes   = int(unsafe.Sizeof(device{}))
	mapEntryBytes = 48
	ptrBytes      = int(unsafe.Sizeof(uintptr(0)))
)

// StateBytes is an accounted estimate of the memory held by open windows:
// per open window its struct, its event-time set's buffer and its pointer
// in the end bucket; per series (device × metric with an open window) its
// struct and its pointer in the device's list; per device with an open
// window its struct and its map entry. It
// leaves out the strings (shared with the decoder's interned names), the
// end heap (one entry per distinct window end) and the free lists of
// recycled structs (bounded by the open state plus a constant).
func (e *Engine) StateBytes() int {
	return e.nOpen*(winBytes+ptrBytes) + e.seenBytes + e.nSeries*(seriesBytes+ptrBytes) +
		len(e.devices)*(deviceBytes+mapEntryBytes)
}

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
	for _, b := range e.byEnd {
		for _, w := range b {
			off = min(off, w.firstOff)
		}
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
