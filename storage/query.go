package storage

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// SummaryQuery asks for one value per device of a metric over a range.
type SummaryQuery struct {
	Metric    string
	Aggregate Aggregate
	From, To  time.Time // [From, To); see Summary for edge alignment
	Devices   []string  // empty = all devices
	// WindowSize reads only windows of this size; zero tiles the range with
	// the coarsest sizes that fit (see Summary).
	WindowSize time.Duration
}

// DeviceValue is one device's summary. Count is the readings behind Value.
type DeviceValue struct {
	Device string
	Value  float64
	Count  uint64
}

// aggExpr re-aggregates stored windows: partial aggregates combine exactly
// (mean = Σsum/Σcount, never a mean of means).
func aggExpr(a Aggregate) (string, error) {
	switch a {
	case Mean:
		return "sum(sum) / sum(count)", nil
	case Max:
		return "max(max)", nil
	case Min:
		return "min(min)", nil
	case Sum:
		return "sum(sum)", nil
	case Count:
		return "toFloat64(sum(count))", nil
	}
	return "", fmt.Errorf("%w %q (want mean, max, min, count or sum)", ErrBadAggregate, a)
}

// WindowSize returns the stored window size a series with this step reads:
// want if it is non-zero and divides step, else the coarsest configured size
// that divides step (fewest rows). ErrBadStep otherwise.
func (s *Store) WindowSize(step, want time.Duration) (time.Duration, error) {
	if step <= 0 {
		return 0, fmt.Errorf("%w: step %v must be positive", ErrBadStep, step)
	}
	if want != 0 {
		if want < time.Second || want%time.Second != 0 || step%want != 0 {
			return 0, fmt.Errorf("%w: step %v is not a multiple of window size %v", ErrBadStep, step, want)
		}
		return want, nil
	}
	for i := len(s.sizes) - 1; i >= 0; i-- { // coarsest first: fewest rows
		if step%s.sizes[i] == 0 {
			return s.sizes[i], nil
		}
	}
	return 0, fmt.Errorf("%w: step %v is not a multiple of any stored window size %v", ErrBadStep, step, s.sizes)
}

func floorTo(t time.Time, d time.Duration) int64 {
	sec, ds := t.Unix(), int64(d/time.Second)
	q := sec / ds
	if sec%ds != 0 && sec < 0 {
		q--
	}
	return q * ds
}

func ceilTo(t time.Time, d time.Duration) int64 {
	f := floorTo(t, d)
	if time.Unix(f, 0).Before(t) {
		f += int64(d / time.Second)
	}
	return f
}

// Series re-aggregates one device's metric into buckets of q.Step aligned to
// the Unix epoch (UTC). The range is widened to whole buckets,
// [floor(From), ceil(To)), so the first and last buckets are complete rather
// than silently partial. Only buckets with data are returned, in time order.
func (s *Store) Series(ctx context.Context, q SeriesQuery) ([]Point, error) {
	agg, err := aggExpr(q.Aggregate)
	if err != nil {
		return nil, err
	}
	size, err := s.WindowSize(q.Step, q.WindowSize)
	if err != nil {
		return nil, err
	}
	step := int64(q.Step / time.Second)
	lo, hi := floorTo(q.From, q.Step), ceilTo(q.To, q.Step)
	if lo >= hi {
		return nil, nil
	}
	// FINAL collapses re-emitted windows to the highest version.
	rows, err := s.eng.query(ctx, s.sql(`
SELECT toInt64(intDiv(toInt64(toUnixTimestamp(window_start)), ?) * ?) AS bucket,
	toFloat64(`+agg+`) AS value,
	toUInt64(sum(count)) AS n
FROM {db}.window_aggregates FINAL
WHERE device = ? AND metric = ? AND window_size = ?
	AND window_start >= toDateTime(?, 'UTC') AND window_start < toDateTime(?, 'UTC')
GROUP BY bucket
ORDER BY bucket`),
		step, step, q.Device, q.Metric, uint32(size/time.Second), lo, hi)
	if err != nil {
		return nil, fmt.Errorf("storage: series %s/%s: %w", q.Device, q.Metric, err)
	}
	defer rows.Close()
	var out []Point
	for rows.Next() {
		var (
			b int64
			p Point
		)
		if err := rows.Scan(&b, &p.Value, &p.Count); err != nil {
			return nil, fmt.Errorf("storage: series %s/%s: %w", q.Device, q.Metric, err)
		}
		p.Time = time.Unix(b, 0).UTC()
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("storage: series %s/%s: %w", q.Device, q.Metric, err)
	}
	return out, nil
}

// Summary computes q.Aggregate of q.Metric per device over [From, To).
//
// Range alignment: windows are the unit of storage, so a window counts only
// if it lies entirely inside [From, To) — no reading outside the range is
// ever included. The range is effectively [ceil(From), floor(To)) to the
// finest configured window size (10s by default): exact when From and To
// are aligned to it, and otherwise short by less than one window at each
// edge. Devices with no data in range are absent.
//
// Speed: the range is tiled with the coarsest windows that fit (see tiles),
// so a 30-day summary reads hourly windows in the middle and finer ones only
// at the edges. Every size holds the same readings, except one too late for
// a fine window but in time for a coarser one: it counts where a coarse
// window covers its time.
func (s *Store) Summary(ctx context.Context, q SummaryQuery) ([]DeviceValue, error) {
	agg, err := aggExpr(q.Aggregate)
	if err != nil {
		return nil, err
	}
	sizes := s.sizes
	if q.WindowSize != 0 {
		if q.WindowSize < time.Second || q.WindowSize%time.Second != 0 {
			return nil, fmt.Errorf("%w: window size %v must be whole seconds", ErrBadStep, q.WindowSize)
		}
		sizes = []time.Duration{q.WindowSize}
	}
	ts := tiles(sizes, q.From, q.To)
	if len(ts) == 0 {
		return nil, nil
	}
	// One subquery per tile, each a single key range (metric, size, start
	// between): ClickHouse prunes parts and granules for each, where one OR
	// of ranges made it scan every window of the metric.
	devFilter := ""
	var devArgs []any
	if len(q.Devices) > 0 {
		devFilter = " AND device IN (" + strings.TrimSuffix(strings.Repeat("?, ", len(q.Devices)), ", ") + ")"
		for _, d := range q.Devices {
			devArgs = append(devArgs, d)
		}
	}
	var (
		parts []string
		args  []any
	)
	for _, t := range ts {
		parts = append(parts, `
	SELECT device, count, sum, min, max FROM {db}.window_aggregates FINAL
	WHERE metric = ? AND window_size = ?
		AND window_start >= toDateTime(?, 'UTC') AND window_start < toDateTime(?, 'UTC')`+devFilter)
		args = append(args, q.Metric, uint32(t.size/time.Second), t.lo, t.hi)
		args = append(args, devArgs...)
	}
	rows, err := s.eng.query(ctx, s.sql(`
SELECT device, toFloat64(`+agg+`) AS value, toUInt64(sum(count)) AS n
FROM (`+strings.Join(parts, "\n\tUNION ALL")+`
)
GROUP BY device
ORDER BY device`), args...)
	if err != nil {
		return nil, fmt.Errorf("storage: summary %s: %w", q.Metric, err)
	}
	defer rows.Close()
	var out []DeviceValue
	for rows.Next() {
		var v DeviceValue
		if err := rows.Scan(&v.Device, &v.Value, &v.Count); err != nil {
			return nil, fmt.Errorf("storage: summary %s: %w", q.Metric, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("storage: summary %s: %w", q.Metric, err)
	}
	return out, nil
}

// Devices lists devices that have stored windows, sorted.
func (s *Store) Devices(ctx context.Context) ([]string, error) {
	return s.strings(ctx, "SELECT DISTINCT device FROM {db}.device_metrics ORDER BY device")
}

// Metrics lists the metrics a device has stored windows for, sorted.
func (s *Store) Metrics(ctx context.Context, device string) ([]string, error) {
	return s.strings(ctx, "SELECT DISTINCT toString(metric) AS m FROM {db}.device_metrics WHERE device = ? ORDER BY m", device)
}

// AllMetrics lists the metrics of all devices, sorted.
func (s *Store) AllMetrics(ctx context.Context) ([]string, error) {
	return s.strings(ctx, "SELECT DISTINCT toString(metric) AS m FROM {db}.device_metrics ORDER BY m")
}

func (s *Store) strings(ctx context.Context, q string, args ...any) ([]string, error) {
	rows, err := s.eng.query(ctx, s.sql(q), args...)
	if err != nil {
		return nil, fmt.Errorf("storage: list: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("storage: list: %w", err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("storage: list: %w", err)
	}
	return out, nil
}

// maxDateTime is the last second a DateTime column holds (2106-02-07).
const maxDateTime = 1<<32 - 1

// Windows lists stored windows as they stand after deduplication (FINAL: per
// window the row with the highest Version), every field filled, ordered by
// device, metric, size and start. It reads whole rows, so it is meant for
// drill-down and verification, not for wide ranges on a busy store.
func (s *Store) Windows(ctx context.Context, q WindowsQuery) ([]Window, error) {
	if q.Size < 0 || q.Size%time.Second != 0 {
		return nil, fmt.Errorf("%w: window size %v must be whole seconds", ErrBadStep, q.Size)
	}
	if q.Limit < 0 {
		return nil, fmt.Errorf("storage: windows: negative limit %d", q.Limit)
	}
	var (
		conds []string
		args  []any
	)
	if q.Device != "" {
		conds, args = append(conds, "device = ?"), append(args, q.Device)
	}
	if q.Metric != "" {
		conds, args = append(conds, "metric = ?"), append(args, q.Metric)
	}
	if q.Size != 0 {
		conds, args = append(conds, "window_size = ?"), append(args, uint32(q.Size/time.Second))
	}
	// window_start is whole seconds, so start >= From ⇔ start >= ceil(From)
	// and start < To ⇔ start < ceil(To). Bounds outside DateTime's range
	// (1970 to 2106) are left out rather than sent to wrap around.
	var lo, hi int64 = 0, maxDateTime + 1
	if !q.From.IsZero() {
		lo = max(lo, ceilTo(q.From, time.Second))
	}
	if !q.To.IsZero() {
		hi = min(hi, ceilTo(q.To, time.Second))
	}
	if lo >= hi {
		return nil, nil
	}
	if lo > 0 {
		conds, args = append(conds, "window_start >= toDateTime(?, 'UTC')"), append(args, lo)
	}
	if hi <= maxDateTime {
		conds, args = append(conds, "window_start < toDateTime(?, 'UTC')"), append(args, hi)
	}
	where := ""
	if len(conds) > 0 {
		where = "\nWHERE " + strings.Join(conds, " AND ")
	}
	limit := ""
	if q.Limit > 0 {
		limit = fmt.Sprintf("\nLIMIT %d", q.Limit)
	}
	// Times are read as integers (seconds, milliseconds): exact on both
	// engines, independent of text or driver time handling.
	rows, err := s.eng.query(ctx, s.sql(`
SELECT device, toString(metric), toUInt64(window_size), toInt64(toUnixTimestamp(window_start)),
	toUInt64(count), toFloat64(sum), toFloat64(min), toFloat64(max), toFloat64(first), toFloat64(last),
	toInt64(toUnixTimestamp64Milli(first_at)), toInt64(toUnixTimestamp64Milli(last_at)), toUInt64(version)
FROM {db}.window_aggregates FINAL`+where+`
ORDER BY device, metric, window_size, window_start`+limit), args...)
	if err != nil {
		return nil, fmt.Errorf("storage: windows: %w", err)
	}
	defer rows.Close()
	var out []Window
	for rows.Next() {
		var (
			w                  Window
			size               uint64
			start, first, last int64
		)
		if err := rows.Scan(&w.Device, &w.Metric, &size, &start, &w.Count, &w.Sum, &w.Min, &w.Max,
			&w.First, &w.Last, &first, &last, &w.Version); err != nil {
			return nil, fmt.Errorf("storage: windows: %w", err)
		}
		w.Size = time.Duration(size) * time.Second
		w.Start = time.Unix(start, 0).UTC()
		w.FirstAt = time.UnixMilli(first).UTC()
		w.LastAt = time.UnixMilli(last).UTC()
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("storage: windows: %w", err)
	}
	return out, nil
}

// tile is one run of windows of one size: starts in [lo, hi) (Unix seconds).
type tile struct {
	size   time.Duration
	lo, hi int64
}

// tiles covers [ceil(from, s0), floor(to, s0)) exactly, s0 the finest size,
// with as few windows as possible: the coarsest size of the chain s0 | s1 |
// s2 ... (each dividing the next; other sizes are skipped) takes the middle,
// each finer size the pieces left at both edges. No two tiles overlap, so
// every reading counts once.
func tiles(sizes []time.Duration, from, to time.Time) []tile {
	if len(sizes) == 0 {
		return nil
	}
	chain := []time.Duration{sizes[0]}
	for _, sz := range sizes[1:] {
		if sz%chain[len(chain)-1] == 0 && sz > chain[len(chain)-1] {
			chain = append(chain, sz)
		}
	}
	lo, hi := ceilTo(from, chain[0]), floorTo(to, chain[0])
	if lo >= hi {
		return nil
	}
	// top: the coarsest size with at least one whole window inside.
	top := 0
	for i := len(chain) - 1; i > 0; i-- {
		if ceilTo(from, chain[i]) < floorTo(to, chain[i]) {
			top = i
			break
		}
	}
	var out []tile
	add := func(size time.Duration, a, b int64) {
		if a < b {
			out = append(out, tile{size, a, b})
		}
	}
	add(chain[top], ceilTo(from, chain[top]), floorTo(to, chain[top]))
	for j := top - 1; j >= 0; j-- {
		add(chain[j], ceilTo(from, chain[j]), ceilTo(from, chain[j+1]))
		add(chain[j], floorTo(to, chain[j+1]), floorTo(to, chain[j]))
	}
	return out
}
