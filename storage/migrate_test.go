package storage

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMigrateVersion2Data: a database written by a version that stored
// windows in the old `windows` table keeps every window after the upgrade,
// and the metric pickers see its devices.
func TestMigrateVersion2Data(t *testing.T) {
	forEngines(t, func(t *testing.T, cfg func(testing.TB) Config) {
		ctx := ctxT(t)
		c := cfg(t)
		// Build the version-2 schema by hand with the first two migrations.
		boot := openT(t, cfg(t)) // any store on the engine, to run statements
		oldDB := quoteIdent(c.Database)
		if err := boot.eng.exec(ctx, "CREATE DATABASE IF NOT EXISTS "+oldDB); err != nil {
			t.Fatal(err)
		}
		sqlFor := func(q string) string { return strings.ReplaceAll(q, "{db}", oldDB) }
		for _, m := range migrations[:2] {
			for _, stmt := range m.stmts {
				if err := boot.eng.exec(ctx, sqlFor(stmt)); err != nil {
					t.Fatalf("migration %d: %v", m.version, err)
				}
			}
		}
		if err := boot.eng.exec(ctx, sqlFor(`CREATE TABLE {db}.schema_migrations (version UInt64, name String,
			applied_at DateTime('UTC') DEFAULT now()) ENGINE = ReplacingMergeTree ORDER BY version`)); err != nil {
			t.Fatal(err)
		}
		if err := boot.eng.exec(ctx, sqlFor(`INSERT INTO {db}.schema_migrations (version, name) VALUES (1, 'windows'), (2, 'readings')`)); err != nil {
			t.Fatal(err)
		}
		t0 := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
		var want []Window
		for i := range 5 {
			w := win(fmt.Sprintf("old-%d", i%2), []string{"temp", "hum"}[i%2], 10*time.Second, t0.Add(time.Duration(i)*10*time.Second), float64(i), 2*float64(i))
			w.Version = uint64(10 + i)
			want = append(want, w)
		}
		for _, w := range want {
			err := boot.eng.exec(ctx, sqlFor(fmt.Sprintf(`INSERT INTO {db}.windows (`+windowColumnList+`) VALUES
				('%s', '%s', 10, toDateTime(%d, 'UTC'), %d, %v, %v, %v, %v, %v, fromUnixTimestamp64Milli(%d, 'UTC'), fromUnixTimestamp64Milli(%d, 'UTC'), %d)`,
				w.Device, w.Metric, w.Start.Unix(), w.Count, w.Sum, w.Min, w.Max, w.First, w.Last, w.FirstAt.UnixMilli(), w.LastAt.UnixMilli(), w.Version)))
			if err != nil {
				t.Fatal(err)
			}
		}

		s := openT(t, c) // applies 3 and 4
		got, err := s.Windows(ctx, WindowsQuery{})
		if err != nil {
			t.Fatal(err)
		}
		// Windows orders by device, metric, size, start.
		slices.SortFunc(want, func(a, b Window) int {
			return cmp.Or(cmp.Compare(a.Device, b.Device), cmp.Compare(a.Metric, b.Metric), a.Start.Compare(b.Start))
		})
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("after migration:\n got %v\nwant %v", got, want)
		}
		if ms, err := s.Metrics(ctx, "old-1"); err != nil || fmt.Sprint(ms) != "[hum]" {
			t.Errorf("Metrics(old-1) = %v, %v", ms, err)
		}
		if ds, err := s.Devices(ctx); err != nil || fmt.Sprint(ds) != "[old-0 old-1]" {
			t.Errorf("Devices = %v, %v", ds, err)
		}
		tables, err := s.strings(ctx, "SELECT name FROM system.tables WHERE database = ? AND name = 'windows'", c.Database)
		if err != nil || len(tables) != 0 {
			t.Errorf("old windows table still there: %v %v", tables, err)
		}
		// New writes reach the pickers through the materialized view.
		if err := s.WriteBatch(ctx, []Window{win("new-1", "co2", time.Minute, t0, 400)}, nil); err != nil {
			t.Fatal(err)
		}
		if ms, err := s.AllMetrics(ctx); err != nil || fmt.Sprint(ms) != "[co2 hum temp]" {
			t.Errorf("AllMetrics = %v, %v", ms, err)
		}
	})
}
