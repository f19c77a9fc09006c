package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// chDB inserts: the batch is written as RowBinary (rowbinary.go) to a file,
// and ClickHouse reads it with the file() table function in one synchronous
// INSERT ... SELECT. When that returns nil the rows are in the table.
//
// Why a file: the rows reach ClickHouse in a binary format it reads natively,
// so floats are exact bit patterns and strings raw bytes by construction,
// with nothing escaped or parsed as text (ClickHouse's data-format float
// parser is off by an ulp on some 17-digit values, even with
// precise_float_parsing). Measured on 20k readings (docs/benchmarks.md): the
// former Values text through format() ~150k rows/s; RowBinary inline after
// "INSERT ... FORMAT RowBinary" through chdb_query_n (which takes a length,
// so binary data is possible) ~520k rows/s; input() with inline data writes
// nothing in chDB; the file ~0.9M rows/s (1.3M at 100k rows). file() takes
// an absolute path in chDB wherever it is (user_files_path, which chDB
// reports as /var/lib/clickhouse/user_files/, does not restrict it).
//
// Batch files live in insertDirName under the chDB data path and are reused:
// on this project's machines creating a file costs about a millisecond, as
// much as encoding 40k readings. A file is truncated as soon as its INSERT
// returns, closed and removed when the session closes, and any left by a
// crash are removed when the session next opens.

const (
	insertDirName    = "iotpipe-insert"
	insertFilePrefix = "batch-"
	insertFileSuffix = ".rowbinary"
	// maxFreeBatchFiles bounds the reusable files kept open (one per
	// concurrent WriteBatch, which chDB runs one at a time anyway).
	maxFreeBatchFiles = 4
)

// file() expands these in its path argument (globs); a batch path must not
// contain them or ClickHouse could read other files, or none.
const fileGlobChars = "*?{}"

// rbEngine is an engine that takes RowBinary batches (chDB). WriteBatch uses
// it to encode readings and windows straight from their structs: the generic
// insert boxes every value in an interface, ten times the encoding cost.
type rbEngine interface {
	// insertRB inserts n rows of layout sch; appendRow appends row i.
	insertRB(ctx context.Context, table string, cols []string, sch *rbSchema, n int, appendRow func(b []byte, i int) ([]byte, error)) error
}

// insert derives the layout from the first row and encodes each row's values.
func (e *chdbEngine) insert(ctx context.Context, table string, cols []string, n int, row func(int) []any) error {
	if n == 0 {
		return nil
	}
	first := row(0)
	if len(first) != len(cols) {
		return fmt.Errorf("storage: %d values for %d columns", len(first), len(cols))
	}
	sch, err := newRBSchema(first)
	if err != nil {
		return err
	}
	return e.insertRB(ctx, table, cols, sch, n, func(b []byte, i int) ([]byte, error) {
		return sch.appendRow(b, row(i))
	})
}

func (e *chdbEngine) insertRB(ctx context.Context, table string, cols []string, sch *rbSchema, n int, appendRow func([]byte, int) ([]byte, error)) error {
	if n == 0 {
		return nil
	}
	if len(cols) != len(sch.types) {
		return fmt.Errorf("storage: %d columns for a layout of %d", len(cols), len(sch.types))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	f, gen, err := session.files.get()
	if err != nil {
		return err
	}
	ok := false
	defer func() { session.files.put(f, gen, ok) }()
	if err := writeBatchFile(f, n, appendRow); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		ok = true
		return err
	}
	// async_insert = 0: chDB enables asynchronous inserts by default; they
	// do not apply to INSERT ... SELECT, but this must never be one.
	// optimize_on_insert = 0: do not collapse the block as a Replacing merge
	// would (~10% of an insert's cost): merges collapse it later and every
	// query of a Replacing table reads it with FINAL.
	q := "INSERT INTO " + table + " (" + strings.Join(cols, ", ") + ") SELECT " + sch.exprs +
		" FROM file(" + quoteString(f.Name()) + ", 'RowBinary', " + quoteString(sch.structure) + ")" +
		" SETTINGS async_insert = 0, optimize_on_insert = 0"
	_, err = session.run(q, "TabSeparated")
	ok = true
	return err
}

const batchFileChunk = 256 << 10

var batchBufPool = sync.Pool{New: func() any { b := make([]byte, 0, batchFileChunk+4096); return &b }}

// writeBatchFile writes n rows into the empty file f, in chunks of about
// batchFileChunk bytes.
func writeBatchFile(f *os.File, n int, appendRow func([]byte, int) ([]byte, error)) error {
	bp := batchBufPool.Get().(*[]byte)
	b := (*bp)[:0]
	defer func() {
		if cap(b) <= 4*batchFileChunk { // don't keep a buffer one huge row grew
			*bp = b[:0]
			batchBufPool.Put(bp)
		}
	}()
	var off int64
	flush := func() error {
		if _, err := f.WriteAt(b, off); err != nil {
			return fmt.Errorf("storage: write insert batch file: %w", err)
		}
		off += int64(len(b))
		b = b[:0]
		return nil
	}
	for i := range n {
		var err error
		if b, err = appendRow(b, i); err != nil {
			return err
		}
		if len(b) >= batchFileChunk {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// batchFiles is the pool of reusable, empty batch files of the open session.
type batchFiles struct {
	mu   sync.Mutex
	dir  string // "" while the session is closed
	gen  uint64 // counts opens and closes: files of an earlier one are not reused
	free []*os.File
}

// open creates the batch directory under the data path, removing batch files
// a crashed process left there.
func (p *batchFiles) open(dataPath string) error {
	abs, err := filepath.Abs(dataPath)
	if err != nil {
		return fmt.Errorf("storage: chDB path: %w", err)
	}
	dir := filepath.Join(abs, insertDirName)
	if strings.ContainsAny(dir, fileGlobChars) {
		return fmt.Errorf("storage: chDB path %q contains one of %q, which ClickHouse's file() reads as a glob; choose another path", abs, fileGlobChars)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("storage: create chDB insert dir: %w", err)
	}
	stale, _ := filepath.Glob(filepath.Join(dir, insertFilePrefix+"*"+insertFileSuffix))
	for _, name := range stale {
		os.Remove(name)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dir = dir
	p.gen++
	return nil
}

// get returns an empty batch file and the generation to put it back with.
func (p *batchFiles) get() (*os.File, uint64, error) {
	p.mu.Lock()
	dir, gen := p.dir, p.gen
	if dir == "" {
		p.mu.Unlock()
		return nil, 0, errChdbClosed
	}
	if n := len(p.free); n > 0 {
		f := p.free[n-1]
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return f, gen, nil
	}
	p.mu.Unlock()
	f, err := os.CreateTemp(dir, insertFilePrefix+"*"+insertFileSuffix)
	if err != nil {
		return nil, 0, fmt.Errorf("storage: create insert batch file: %w", err)
	}
	return f, gen, nil
}

// put empties f and keeps it for reuse, or removes it (reuse false, a failed
// truncate, a full pool, or a session closed or reopened since get).
func (p *batchFiles) put(f *os.File, gen uint64, reuse bool) {
	if reuse && f.Truncate(0) == nil {
		p.mu.Lock()
		if p.dir != "" && p.gen == gen && len(p.free) < maxFreeBatchFiles {
			p.free = append(p.free, f)
			f = nil
		}
		p.mu.Unlock()
	}
	if f != nil {
		f.Close()
		os.Remove(f.Name())
	}
}

// close removes the pooled files; files in use are removed by their put.
func (p *batchFiles) close() {
	p.mu.Lock()
	free := p.free
	p.free, p.dir = nil, ""
	p.gen++
	p.mu.Unlock()
	for _, f := range free {
		f.Close()
		os.Remove(f.Name())
	}
}
