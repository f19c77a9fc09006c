package storage

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// Engines under test. chDB runs when CHDB_LIB_PATH is set
// (export CHDB_LIB_PATH=$(scripts/chdb.sh)); a server when CLICKHOUSE_ADDR is
// set (export CLICKHOUSE_ADDR=$(scripts/clickhouse-server.sh start)). With
// IOTPIPE_REQUIRE_ALL=1 a missing engine fails the test instead of skipping.

// chdbDir is the one chDB data path of this test process (chDB allows one per
// process); tests isolate themselves by database.
var chdbDir string

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "iotpipe-storage-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		chdbDir = dir
		return m.Run()
	}()
	os.Exit(code)
}

func requireAll() bool { return os.Getenv("IOTPIPE_REQUIRE_ALL") == "1" }

func missing(t testing.TB, msg string) {
	t.Helper()
	if requireAll() {
		t.Fatalf("IOTPIPE_REQUIRE_ALL=1 but %s", msg)
	}
	t.Skipf("SKIPPED: %s", msg)
}

var dbSeq atomic.Int64

// testDB returns a fresh database name for t.
func testDB(t testing.TB) string {
	name := regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(t.Name(), "_")
	return fmt.Sprintf("t%d_%d_%s", os.Getpid(), dbSeq.Add(1), strings.ToLower(name))
}

type engineKind struct {
	name string
	// full is false for servers too old for the schema (DateTime64, codecs,
	// TTL): only the engine adapter is tested there.
	full bool
	cfg  func(t testing.TB) Config
}

func chdbKind() engineKind {
	return engineKind{name: "chdb", full: true, cfg: func(t testing.TB) Config {
		if os.Getenv("CHDB_LIB_PATH") == "" {
			missing(t, "CHDB_LIB_PATH is unset: chDB tests not run (export CHDB_LIB_PATH=$(scripts/chdb.sh))")
		}
		return Config{Path: chdbDir, Database: testDB(t), Logger: zerolog.Nop()}
	}}
}

func serverKind() engineKind {
	addr := os.Getenv("CLICKHOUSE_ADDR")
	k := engineKind{name: "server", cfg: func(t testing.TB) Config {
		if addr == "" {
			missing(t, "CLICKHOUSE_ADDR is unset: ClickHouse server tests not run (export CLICKHOUSE_ADDR=$(scripts/clickhouse-server.sh start))")
		}
		return Config{ClickHouseAddr: strings.Split(addr, ","), Database: testDB(t), Logger: zerolog.Nop()}
	}}
	k.full = addr != "" && serverMajor(addr) >= 22
	return k
}

var serverMajorCache atomic.Int64

// serverMajor asks the server its major version (0 if unknown).
func serverMajor(addr string) int {
	if v := serverMajorCache.Load(); v != 0 {
		return int(v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	e, err := openServer(ctx, Config{ClickHouseAddr: strings.Split(addr, ",")})
	if err != nil {
		return 0
	}
	defer e.close()
	rows, err := e.query(ctx, "SELECT version()")
	if err != nil {
		return 0
	}
	defer rows.Close()
	var v string
	for rows.Next() {
		if rows.Scan(&v) != nil {
			return 0
		}
	}
	major, _ := strconv.Atoi(strings.SplitN(v, ".", 2)[0])
	serverMajorCache.Store(int64(major))
	return major
}

// forEngines runs f as a subtest on every engine (full schema only where the
// engine supports it; a too-old server is reported as skipped).
func forEngines(t *testing.T, f func(t *testing.T, cfg func(testing.TB) Config)) {
	for _, k := range []engineKind{chdbKind(), serverKind()} {
		t.Run(k.name, func(t *testing.T) {
			cfg := k.cfg(t)
			_ = cfg
			if !k.full {
				t.Skipf("SKIPPED: server at %s predates DateTime64/codecs/TTL; only the adapter test runs there", os.Getenv("CLICKHOUSE_ADDR"))
			}
			f(t, k.cfg)
		})
	}
}

func openT(t testing.TB, cfg Config) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		_ = s.eng.exec(context.Background(), s.sql("DROP DATABASE IF EXISTS {db}"))
		s.Close()
	})
	return s
}
