package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// DefaultRawRetention is the suggested RawRetention for flags and env.
const DefaultRawRetention = 30 * 24 * time.Hour

const dialTimeout = 10 * time.Second

// Config selects and configures the engine: set exactly one of Path (chDB)
// and ClickHouseAddr (server).
type Config struct {
	// Path is the chDB data directory (embedded engine). One per process.
	Path string
	// ClickHouseAddr lists native-protocol addresses, "host:9000".
	ClickHouseAddr     []string
	Username, Password string // server only
	// Database holds the tables; created if missing. Default "iotpipe".
	Database string
	// RawRetention is how long raw readings are kept; 0 keeps them forever
	// (see DefaultRawRetention). Reconciled on every Open.
	RawRetention time.Duration
	// WindowSizes are the window lengths the processor stores, whole
	// seconds; Series picks among them. Default 10s, 1m and 1h.
	WindowSizes []time.Duration
	Logger      zerolog.Logger
}

// Store reads and writes windows and readings. Safe for concurrent use.
type Store struct {
	eng       engine
	db        string // quoted database identifier
	dbName    string
	sizes     []time.Duration // ascending
	retention time.Duration
	log       zerolog.Logger
	closeOnce sync.Once
	closeErr  error

	pairsMu sync.Mutex
	pairs   map[devMetric]struct{} // in device_metrics, as far as this Store wrote them
}

// devMetric is one row of device_metrics.
type devMetric struct{ device, metric string }

// maxPairs bounds the pairs a Store remembers; past it, it forgets them all
// and writes each again once (ReplacingMergeTree keeps one row).
const maxPairs = 1 << 20

var (
	// ErrBadStep: Series' Step (or WindowSize) does not fit the stored
	// window sizes. Client error (HTTP 400).
	ErrBadStep = errors.New("storage: bad step")
	// ErrBadAggregate: unknown Aggregate. Client error (HTTP 400).
	ErrBadAggregate = errors.New("storage: bad aggregate")
)

func (c *Config) validate() error {
	switch {
	case c.Path == "" && len(c.ClickHouseAddr) == 0:
		return errors.New("storage: set Path (chDB) or ClickHouseAddr (server)")
	case c.Path != "" && len(c.ClickHouseAddr) > 0:
		return errors.New("storage: set only one of Path (chDB) and ClickHouseAddr (server)")
	case c.RawRetention < 0 || c.RawRetention%time.Second != 0:
		return fmt.Errorf("storage: RawRetention %v must be >= 0 whole seconds", c.RawRetention)
	}
	if c.Database == "" {
		c.Database = "iotpipe"
	}
	if len(c.WindowSizes) == 0 {
		c.WindowSizes = []time.Duration{10 * time.Second, time.Minute, time.Hour}
	}
	c.WindowSizes = slices.Clone(c.WindowSizes)
	slices.Sort(c.WindowSizes)
	c.WindowSizes = slices.Compact(c.WindowSizes)
	for _, s := range c.WindowSizes {
		if s < time.Second || s%time.Second != 0 {
			return fmt.Errorf("storage: window size %v must be whole seconds", s)
		}
	}
	return nil
}

// Open connects to the configured engine, creates the database and applies
// pending migrations. A bad server address fails here, not on first use.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var (
		eng engine
		err error
	)
	if cfg.Path != "" {
		eng, err = openChdb(cfg.Path)
	} else {
		eng, err = openServer(ctx, cfg)
	}
	if err != nil {
		return nil, err
	}
	s := &Store{
		eng:       eng,
		db:        quoteIdent(cfg.Database),
		dbName:    cfg.Database,
		sizes:     cfg.WindowSizes,
		retention: cfg.RawRetention,
		log:       cfg.Logger.With().Str("component", "storage").Logger(),
	}
	if err := s.init(ctx); err != nil {
		eng.close()
		return nil, err
	}
	return s, nil
}

func (s *Store) init(ctx context.Context) error {
	if err := s.eng.exec(ctx, s.sql("CREATE DATABASE IF NOT EXISTS {db}")); err != nil {
		return fmt.Errorf("storage: create database %s: %w", s.dbName, err)
	}
	n, err := s.migrate(ctx)
	if err != nil {
		return err
	}
	if n > 0 {
		s.log.Info().Int("applied", n).Msg("migrations applied")
	}
	return s.reconcileRetention(ctx)
}

// Close releases the engine (the chDB session when the last chDB Store closes).
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.eng.close() })
	return s.closeErr
}

// sql expands {db} to the quoted database name.
func (s *Store) sql(q string) string { return strings.ReplaceAll(q, "{db}", s.db) }

var windowCols = []string{"device", "metric", "window_size", "window_start", "count", "sum", "min", "max",
	"first", "last", "first_at", "last_at", "version"}

var readingCols = []string{"device", "metric", "ts", "value"}

// WriteBatch stores windows, then readings. When it returns nil the rows are
// committed to their tables (each INSERT is synchronous; no async inserts),
// so the caller may commit its Kafka offsets. Windows go first so that a
// failure never leaves readings without their aggregate; a retry re-inserts
// both, and the ReplacingMergeTree keys make that harmless.
func (s *Store) WriteBatch(ctx context.Context, windows []Window, readings []Reading) error {
	for i, w := range windows {
		if w.Size < time.Second || w.Size%time.Second != 0 {
			return fmt.Errorf("storage: window %d (%s/%s): size %v is not whole seconds", i, w.Device, w.Metric, w.Size)
		}
	}
	if len(windows) > 0 {
		err := s.insertRows(ctx, "{db}.window_aggregates", windowCols, len(windows), windowRB,
			func(i int) []any { return windowRow(&windows[i]) },
			func(b []byte, i int) []byte { return appendWindowRB(b, &windows[i]) })
		if err != nil {
			return fmt.Errorf("storage: insert %d windows: %w", len(windows), err)
		}
	}
	if err := s.notePairs(ctx, windows); err != nil {
		return err
	}
	if len(readings) > 0 {
		err := s.insertRows(ctx, "{db}.readings", readingCols, len(readings), readingRB,
			func(i int) []any { return readingRow(&readings[i]) },
			func(b []byte, i int) []byte { return appendReadingRB(b, &readings[i]) })
		if err != nil {
			return fmt.Errorf("storage: insert %d readings: %w", len(readings), err)
		}
	}
	return nil
}

// notePairs inserts into device_metrics the (device, metric) pairs of
// windows this Store has not written before (the dashboards' pickers read
// that table instead of scanning windows). After the first batches of a
// fleet there are none, so no insert: an insert is a new part, a fixed cost.
func (s *Store) notePairs(ctx context.Context, windows []Window) error {
	var fresh []devMetric
	var inBatch map[devMetric]struct{} // dedupes fresh, made when needed
	s.pairsMu.Lock()
	if s.pairs == nil || len(s.pairs) >= maxPairs {
		s.pairs = make(map[devMetric]struct{})
	}
	for i := range windows {
		k := devMetric{windows[i].Device, windows[i].Metric}
		if _, ok := s.pairs[k]; ok {
			continue
		}
		if inBatch == nil {
			inBatch = make(map[devMetric]struct{})
		}
		if _, ok := inBatch[k]; !ok {
			inBatch[k] = struct{}{}
			fresh = append(fresh, k)
		}
	}
	s.pairsMu.Unlock()
	if len(fresh) == 0 {
		return nil
	}
	err := s.eng.insert(ctx, s.sql("{db}.device_metrics"), []string{"device", "metric"}, len(fresh),
		func(i int) []any { return []any{fresh[i].device, fresh[i].metric} })
	if err != nil {
		return fmt.Errorf("storage: insert %d device metrics: %w", len(fresh), err)
	}
	s.pairsMu.Lock()
	for _, k := range fresh {
		s.pairs[k] = struct{}{}
	}
	s.pairsMu.Unlock()
	return nil
}

// insertRows inserts n rows into table: as typed RowBinary where the engine
// takes it (chDB; appendRB encodes row i in layout sch), else as values.
func (s *Store) insertRows(ctx context.Context, table string, cols []string, n int, sch *rbSchema,
	row func(i int) []any, appendRB func(b []byte, i int) []byte) error {
	if e, ok := s.eng.(rbEngine); ok {
		return e.insertRB(ctx, s.sql(table), cols, sch, n, func(b []byte, i int) ([]byte, error) { return appendRB(b, i), nil })
	}
	return s.eng.insert(ctx, s.sql(table), cols, n, row)
}
