package storage

import (
	"context"
	"fmt"
	"strings"
)

// migration is one schema step. Versions are applied in order and recorded in
// schema_migrations; statements must be idempotent (IF NOT EXISTS) because two
// processes opening a fresh server database may race to apply the same step.
type migration struct {
	version uint64
	name    string
	stmts   []string
}

// migrations is append-only: never edit an applied step, add a new one.
var migrations = []migration{
	{1, "windows", []string{`
CREATE TABLE IF NOT EXISTS {db}.windows (
	device       String,
	metric       LowCardinality(String),
	window_size  UInt32,                 -- seconds
	window_start DateTime('UTC'),
	count        UInt64,
	sum          Float64,
	min          Float64,
	max          Float64,
	first        Float64,
	last         Float64,
	first_at     DateTime64(3, 'UTC'),
	last_at      DateTime64(3, 'UTC'),
	version      UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (device, metric, window_size, window_start)`}},
	// No version column: a redelivered reading is identical, so keeping any
	// one copy is right. TTL is not here because it follows config; see
	// reconcileRetention.
	{2, "readings", []string{`
CREATE TABLE IF NOT EXISTS {db}.readings (
	device String,
	metric LowCardinality(String),
	ts     DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD),
	value  Float64 CODEC(Gorilla, ZSTD)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (device, metric, ts)`}},
	// Windows ordered by (metric, size, device, start): a fleet summary over
	// hourly windows then reads only those rows instead of scanning every
	// device's 10 s windows, and one device's series is still one key range.
	// The data is copied; a re-run after a crash copies again, and
	// ReplacingMergeTree collapses the identical rows. Stop processors of older
	// versions first: what they write to the old table is not copied.
	{3, "window_aggregates", []string{`
CREATE TABLE IF NOT EXISTS {db}.window_aggregates (
	device       String,
	metric       LowCardinality(String),
	window_size  UInt32,                 -- seconds
	window_start DateTime('UTC'),
	count        UInt64,
	sum          Float64,
	min          Float64,
	max          Float64,
	first        Float64,
	last         Float64,
	first_at     DateTime64(3, 'UTC'),
	last_at      DateTime64(3, 'UTC'),
	version      UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (metric, window_size, device, window_start)`, `
INSERT INTO {db}.window_aggregates (` + windowColumnList + `)
SELECT ` + windowColumnList + ` FROM {db}.windows`, `
DROP TABLE IF EXISTS {db}.windows`}},
	// Which device has which metric, kept by a materialized view so that the
	// pickers of a dashboard do not scan the windows.
	{4, "device_metrics", []string{`
CREATE TABLE IF NOT EXISTS {db}.device_metrics (
	device String,
	metric LowCardinality(String)
) ENGINE = ReplacingMergeTree
ORDER BY (device, metric)`, `
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.device_metrics_mv TO {db}.device_metrics
AS SELECT DISTINCT device, metric FROM {db}.window_aggregates`, `
INSERT INTO {db}.device_metrics (device, metric)
SELECT DISTINCT device, metric FROM {db}.window_aggregates`}},
	// The view ran on every windows insert and wrote a second part each
	// time: on chDB ~40% of a windows insert. WriteBatch now inserts only
	// the (device, metric) pairs this process has not written yet. Stop
	// processors of older versions first: with the view gone they would
	// add no new pairs.
	{5, "device_metrics_by_writer", []string{`
DROP TABLE IF EXISTS {db}.device_metrics_mv`}},
}

// windowColumnList is every column of the windows table, for the copy.
var windowColumnList = strings.Join(windowCols, ", ")

// migrate applies pending migrations and returns how many it applied.
func (s *Store) migrate(ctx context.Context) (int, error) {
	err := s.eng.exec(ctx, s.sql(`
CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
	version    UInt64,
	name       String,
	applied_at DateTime('UTC') DEFAULT now()
) ENGINE = ReplacingMergeTree ORDER BY version`))
	if err != nil {
		return 0, fmt.Errorf("storage: create schema_migrations: %w", err)
	}
	rows, err := s.eng.query(ctx, s.sql("SELECT toUInt64(version) FROM {db}.schema_migrations"))
	if err != nil {
		return 0, fmt.Errorf("storage: read schema_migrations: %w", err)
	}
	applied := map[uint64]bool{}
	for rows.Next() {
		var v uint64
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return 0, fmt.Errorf("storage: read schema_migrations: %w", err)
		}
		applied[v] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("storage: read schema_migrations: %w", err)
	}
	n := 0
	for _, m := range migrations {
		if applied[m.version] {
			continue
		}
		for _, stmt := range m.stmts {
			if err := s.eng.exec(ctx, s.sql(stmt)); err != nil {
				return n, fmt.Errorf("storage: migration %d (%s): %w", m.version, m.name, err)
			}
		}
		err := s.eng.insert(ctx, s.sql("{db}.schema_migrations"), []string{"version", "name"}, 1,
			func(int) []any { return []any{m.version, m.name} })
		if err != nil {
			return n, fmt.Errorf("storage: record migration %d: %w", m.version, err)
		}
		n++
	}
	return n, nil
}

// reconcileRetention makes the readings TTL match RawRetention. The TTL is
// configuration, not schema, so it is compared and altered on every Open
// rather than frozen into a migration.
func (s *Store) reconcileRetention(ctx context.Context) error {
	rows, err := s.eng.query(ctx,
		"SELECT engine_full FROM system.tables WHERE database = ? AND name = 'readings'", s.dbName)
	if err != nil {
		return fmt.Errorf("storage: read readings TTL: %w", err)
	}
	var engineFull string
	for rows.Next() {
		if err := rows.Scan(&engineFull); err != nil {
			rows.Close()
			return fmt.Errorf("storage: read readings TTL: %w", err)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("storage: read readings TTL: %w", err)
	}
	hasTTL := strings.Contains(engineFull, " TTL ")
	var stmt string
	if s.retention == 0 {
		if !hasTTL {
			return nil
		}
		stmt = "ALTER TABLE {db}.readings REMOVE TTL"
	} else {
		want := fmt.Sprintf("toIntervalSecond(%d)", int64(s.retention.Seconds()))
		if hasTTL && strings.Contains(engineFull, want) {
			return nil
		}
		// toDateTime: TTL expressions must be Date or DateTime.
		stmt = "ALTER TABLE {db}.readings MODIFY TTL toDateTime(ts) + " + want
	}
	if err := s.eng.exec(ctx, s.sql(stmt)); err != nil {
		return fmt.Errorf("storage: set readings retention %v: %w", s.retention, err)
	}
	s.log.Info().Dur("raw_retention", s.retention).Msg("readings retention updated")
	return nil
}
