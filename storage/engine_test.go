package storage

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// nasty are strings that break naive quoting or escaping.
var nasty = []string{
	"plain", "", "it's", `back\slash`, `\'`, `'; DROP TABLE x; --`, "tab\there", "new\nline",
	"nul\x00byte", "ünïcödé 温度 🌡️", "?", "{db}", "`tick`", `"dq"`, "\\x41", "\x7f\x01", "trailing\\",
}

// TestEngineAdapter checks the engine-specific layer alone (exec, batch insert
// with explicit columns, query rows) on plain types, so it also runs on old
// servers such as Debian's clickhouse-server 18.16.
func TestEngineAdapter(t *testing.T) {
	for _, k := range []engineKind{chdbKind(), serverKind()} {
		t.Run(k.name, func(t *testing.T) {
			cfg := k.cfg(t)
			if err := cfg.validate(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
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
				t.Fatal(err)
			}
			defer eng.close()
			db := quoteIdent(cfg.Database)
			if err := eng.exec(ctx, "CREATE DATABASE IF NOT EXISTS "+db); err != nil {
				t.Fatal(err)
			}
			defer eng.exec(context.Background(), "DROP DATABASE IF EXISTS "+db)
			if err := eng.exec(ctx, "CREATE TABLE "+db+".plain (id UInt64, s String, f Float64, i Int64, t DateTime('UTC')) ENGINE = MergeTree ORDER BY id"); err != nil {
				t.Fatal(err)
			}
			floats := []float64{0, -0.0, 0.1, 1.0 / 3, math.MaxFloat64, math.SmallestNonzeroFloat64, -1e-300, 123456789.123456789, math.Inf(1), math.Inf(-1),
				-math.SmallestNonzeroFloat64, 2.2250738585072009e-308, 1e-323}
			rng := rand.New(rand.NewPCG(1, 2))
			for len(floats) < 200 { // random bit patterns: text round trip must be exact
				if f := math.Float64frombits(rng.Uint64()); !math.IsNaN(f) {
					floats = append(floats, f)
				}
			}
			n := len(nasty) * len(floats)
			ts := time.Date(2024, 2, 29, 23, 59, 58, 0, time.UTC)
			row := func(i int) []any {
				return []any{uint64(i) + math.MaxUint64 - uint64(n), nasty[i%len(nasty)], floats[i%len(floats)], int64(-i), ts.Add(time.Duration(i) * time.Second)}
			}
			if err := eng.insert(ctx, db+".plain", []string{"id", "s", "f", "i", "t"}, n, row); err != nil {
				t.Fatal(err)
			}
			rows, err := eng.query(ctx, "SELECT id, s, f, i, t FROM "+db+".plain WHERE s != ? ORDER BY id", "no such ' string")
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			got := 0
			for ; rows.Next(); got++ {
				var (
					id   uint64
					s    string
					f    float64
					i    int64
					tm   time.Time
					want = row(got)
				)
				if err := rows.Scan(&id, &s, &f, &i, &tm); err != nil {
					t.Fatal(err)
				}
				if id != want[0] || s != want[1] || math.Float64bits(f) != math.Float64bits(want[2].(float64)) && !(f == 0 && want[2].(float64) == 0) || i != want[3] || !tm.Equal(want[4].(time.Time)) {
					t.Errorf("row %d: got %v %q %v %v %v, want %v", got, id, s, f, i, tm, want)
				}
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			if got != n {
				t.Fatalf("got %d rows, want %d", got, n)
			}
			// NaN round trip and bound parameters in WHERE.
			// (An INSERT ... VALUES through exec hangs on 18.16 with
			// clickhouse-go; inserts always go through insert.)
			nanRow := func(int) []any { return []any{uint64(1), "nan-row", math.NaN(), int64(0), ts} }
			if err := eng.insert(ctx, db+".plain", []string{"id", "s", "f", "i", "t"}, 1, nanRow); err != nil {
				t.Fatal(err)
			}
			for _, s := range nasty {
				rows, err := eng.query(ctx, "SELECT toUInt64(count()) FROM "+db+".plain WHERE s = ?", s)
				if err != nil {
					t.Fatalf("%q: %v", s, err)
				}
				var c uint64
				for rows.Next() {
					if err := rows.Scan(&c); err != nil {
						t.Fatal(err)
					}
				}
				rows.Close()
				if c != uint64(len(floats)) {
					t.Errorf("WHERE s = %q matched %d rows, want %d", s, c, len(floats))
				}
			}
			rows2, err := eng.query(ctx, "SELECT f FROM "+db+".plain WHERE s = ?", "nan-row")
			if err != nil {
				t.Fatal(err)
			}
			defer rows2.Close()
			var f float64
			for rows2.Next() {
				if err := rows2.Scan(&f); err != nil {
					t.Fatal(err)
				}
			}
			if !math.IsNaN(f) {
				t.Errorf("NaN came back as %v", f)
			}
		})
	}
}
