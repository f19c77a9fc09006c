package storage

// This file is a minimal, lazy binding to libchdb's C API via purego.
//
// Why not github.com/chdb-io/chdb-go: its chdb-purego package dlopens
// libchdb.so in init() and panics when the library is missing, so merely
// linking it would crash every iotpipe binary at start on machines that use a
// ClickHouse server and have no libchdb. Here the library is loaded only when
// a chDB store is opened, and a missing library is an ordinary error.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// chdbLib holds the resolved C entry points. Signatures follow chdb.h
// (libchdb 26.x): chdb_connection is an opaque pointer; chdb_connect returns
// a pointer to it.
type chdbLib struct {
	connect       func(argc int32, argv **byte) unsafe.Pointer            // chdb_connection*
	closeConn     func(conn unsafe.Pointer)                               // (chdb_connection*)
	query         func(conn unsafe.Pointer, query, format string) uintptr // chdb_result*
	destroyResult func(res uintptr)
	resultBuffer  func(res uintptr) unsafe.Pointer
	resultLength  func(res uintptr) uintptr
	resultError   func(res uintptr) unsafe.Pointer // const char*, NULL = ok
}

var (
	chdbLoadOnce sync.Once
	chdbLoaded   *chdbLib
	chdbLoadErr  error
)

// chdbLibCandidates lists where libchdb.so is looked for: CHDB_LIB_PATH first,
// then the cache scripts/chdb.sh installs into, then system locations.
func chdbLibCandidates() []string {
	var c []string
	if p := os.Getenv("CHDB_LIB_PATH"); p != "" {
		return []string{p} // explicit wins; don't silently use another copy
	}
	cache := os.Getenv("IOTPIPE_CACHE")
	if cache == "" {
		if home, err := os.UserHomeDir(); err == nil {
			cache = filepath.Join(home, ".cache", "iotpipe")
		}
	}
	if cache != "" {
		c = append(c, filepath.Join(cache, "chdb", chdbVersion, "libchdb.so"))
	}
	return append(c, "/usr/local/lib/libchdb.so", "/usr/lib/libchdb.so")
}

// chdbVersion is the libchdb version scripts/chdb.sh installs by default.
const chdbVersion = "26.5.3"

func loadChdb() (*chdbLib, error) {
	chdbLoadOnce.Do(func() { chdbLoaded, chdbLoadErr = doLoadChdb() })
	return chdbLoaded, chdbLoadErr
}

func doLoadChdb() (*chdbLib, error) {
	var path string
	for _, p := range chdbLibCandidates() {
		if _, err := os.Stat(p); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		return nil, fmt.Errorf("storage: libchdb.so not found (looked in %v); run `export CHDB_LIB_PATH=$(scripts/chdb.sh)` or configure a ClickHouse server address", chdbLibCandidates())
	}
	h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		return nil, fmt.Errorf("storage: load libchdb from %s (CHDB_LIB_PATH; install with scripts/chdb.sh): %w", path, err)
	}
	l := &chdbLib{}
	syms := []struct {
		fn   any
		name string
	}{
		{&l.connect, "chdb_connect"},
		{&l.closeConn, "chdb_close_conn"},
		{&l.query, "chdb_query"},
		{&l.destroyResult, "chdb_destroy_query_result"},
		{&l.resultBuffer, "chdb_result_buffer"},
		{&l.resultLength, "chdb_result_length"},
		{&l.resultError, "chdb_result_error"},
	}
	for _, s := range syms {
		addr, err := purego.Dlsym(h, s.name)
		if err != nil {
			return nil, fmt.Errorf("storage: %s lacks symbol %s (need libchdb >= 3.x; scripts/chdb.sh installs %s): %w", path, s.name, chdbVersion, err)
		}
		purego.RegisterFunc(s.fn, addr)
	}
	return l, nil
}

// cString returns a NUL-terminated copy of s. The returned slice must stay
// referenced until the C call using it returns.
func cString(s string) []byte {
	b := make([]byte, len(s)+1)
	copy(b, s)
	return b
}

// chdbSession is the process-wide chDB session. libchdb supports one session
// (one data path) per process, so every chDB Store shares it, reference
// counted.
//
// Every call into libchdb is made with mu held. libchdb itself queues
// concurrent chdb_query calls onto its one query thread, so mu costs no
// parallelism; it makes connect, query and close mutually exclusive (conn is
// read and nilled under it, so no query can use a closed connection), and it
// keeps the signal-handler save/restore around each call (chdb_signals_*.go)
// from interleaving with another call's.
//
// Memory handed to C: query and format are Go strings, which purego copies
// into NUL-terminated buffers kept alive for the duration of the call; libchdb
// copies the text before the call returns and keeps no pointer to it. Results
// are copied into Go memory before chdb_destroy_query_result.
type chdbSession struct {
	mu   sync.Mutex
	lib  *chdbLib
	conn unsafe.Pointer // chdb_connection*; nil when closed
	path string
	refs int
	// files are the insert batch files (chdb_insert.go); own lock, so a
	// batch is encoded while another statement runs.
	files batchFiles
}

var session chdbSession

// acquire opens the session at path, or joins it when already open there.
func (s *chdbSession) acquire(path string) error {
	lib, err := loadChdb()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		if s.path != path {
			return fmt.Errorf("storage: chDB already open at %s in this process; it supports one data path per process (asked for %s)", s.path, path)
		}
		s.refs++
		return nil
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return fmt.Errorf("storage: create chDB dir: %w", err)
	}
	args := [][]byte{cString("clickhouse"), cString("--path=" + path)}
	argv := []*byte{&args[0][0], &args[1][0], nil}
	// ClickHouse's server start-up installs its crash handlers over the Go
	// runtime's; put those back (see chdb_signals_linux.go).
	sig := saveSignals()
	conn := lib.connect(int32(len(args)), &argv[0])
	sig.restore()
	runtime.KeepAlive(args) // argv points into args; both must outlive the call
	runtime.KeepAlive(argv)
	if conn == nil {
		return fmt.Errorf("storage: chdb_connect(%s) failed (is another process using this directory?)", path)
	}
	s.lib, s.conn, s.path, s.refs = lib, conn, path, 1
	// After connect: chDB holds the data path's lock now, so stale batch
	// files there are this path's own leftovers, never another process's.
	if err := s.files.open(path); err != nil {
		s.closeLocked()
		return err
	}
	// Statements may be long (Summary's device list), so lift the 256 KiB
	// parser limit for this session.
	if _, err := s.runLocked("SET max_query_size = 1073741824", "TabSeparated"); err != nil {
		s.closeLocked()
		return fmt.Errorf("storage: configure chDB session: %w", err)
	}
	return nil
}

// release drops one reference and closes the session with the last one.
func (s *chdbSession) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return
	}
	s.refs--
	if s.refs > 0 {
		return
	}
	s.closeLocked()
}

func (s *chdbSession) closeLocked() {
	sig := saveSignals()
	s.lib.closeConn(s.conn)
	sig.restore()
	s.files.close()
	s.conn, s.path, s.refs = nil, "", 0
}

var errChdbClosed = errors.New("storage: chDB session closed")

// run executes one statement and returns its output in format.
func (s *chdbSession) run(query, format string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runLocked(query, format)
}

func (s *chdbSession) runLocked(query, format string) ([]byte, error) {
	if s.conn == nil {
		return nil, errChdbClosed
	}
	if strings.IndexByte(query, 0) >= 0 || strings.IndexByte(format, 0) >= 0 {
		// C would see the text only up to the NUL and run a truncated statement.
		return nil, errors.New("storage: chDB statement contains a NUL byte")
	}
	sig := saveSignals()
	res := s.lib.query(*(*unsafe.Pointer)(s.conn), query, format)
	sig.restore()
	if res == 0 {
		// libchdb returns no result only when the connection is shutting down;
		// the statement may not have run, so this must not read as success.
		return nil, errors.New("chdb: no result (connection shutting down)")
	}
	defer s.lib.destroyResult(res)
	if e := s.lib.resultError(res); e != nil {
		return nil, fmt.Errorf("chdb: %s", goString(e))
	}
	n := int(s.lib.resultLength(res))
	buf := s.lib.resultBuffer(res)
	if n == 0 || buf == nil {
		return nil, nil
	}
	return append([]byte(nil), unsafe.Slice((*byte)(buf), n)...), nil
}

func goString(p unsafe.Pointer) string {
	var n int
	for *(*byte)(unsafe.Add(p, n)) != 0 {
		n++
	}
	return string(unsafe.Slice((*byte)(p), n))
}
