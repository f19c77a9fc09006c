package storage

import (
	"context"
	"fmt"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// engine is the whole engine-specific surface: run a statement, read rows,
// insert a batch. Statements use ? placeholders; values are string, float64,
// int, int64, uint32, uint64 or time.Time. Scan destinations are *string,
// *float64, *uint64, *int64 and *time.Time, and queries cast their columns to
// exactly those types (clickhouse-go scans strictly by type).
type engine interface {
	exec(ctx context.Context, query string, args ...any) error
	query(ctx context.Context, query string, args ...any) (rows, error)
	// insert writes n rows into table's cols; row(i) returns row i's values.
	insert(ctx context.Context, table string, cols []string, n int, row func(i int) []any) error
	close() error
}

type rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close() error
}

// chdbEngine runs on the process-wide chDB session. The C calls cannot be
// interrupted, so ctx is only checked before each call.
type chdbEngine struct {
	closed bool
}

func openChdb(path string) (*chdbEngine, error) {
	if err := session.acquire(path); err != nil {
		return nil, err
	}
	return &chdbEngine{}, nil
}

func (e *chdbEngine) run(ctx context.Context, query string, args []any) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	q, err := bindLiterals(query, args)
	if err != nil {
		return nil, err
	}
	return session.run(q, "TabSeparated")
}

func (e *chdbEngine) exec(ctx context.Context, query string, args ...any) error {
	_, err := e.run(ctx, query, args)
	return err
}

func (e *chdbEngine) query(ctx context.Context, query string, args ...any) (rows, error) {
	out, err := e.run(ctx, query, args)
	if err != nil {
		return nil, err
	}
	return newTSVRows(out), nil
}

// chdbEngine.insert (RowBinary through a batch file) is in chdb_insert.go.

func (e *chdbEngine) close() error {
	if !e.closed {
		e.closed = true
		session.release()
	}
	return nil
}

// serverEngine talks to a ClickHouse server over the native protocol.
type serverEngine struct {
	conn driver.Conn
}

// serverInsertBatch is rows per native-protocol batch (one INSERT each).
const serverInsertBatch = 50000

func openServer(ctx context.Context, cfg Config) (*serverEngine, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr: cfg.ClickHouseAddr,
		Auth: clickhouse.Auth{
			Database: "default", // ours may not exist yet; queries qualify tables
			Username: cfg.Username,
			Password: cfg.Password,
		},
		DialTimeout: dialTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("storage: clickhouse %v: %w", cfg.ClickHouseAddr, err)
	}
	pctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if err := conn.Ping(pctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("storage: clickhouse %v unreachable: %w", cfg.ClickHouseAddr, err)
	}
	return &serverEngine{conn: conn}, nil
}

func (e *serverEngine) exec(ctx context.Context, query string, args ...any) error {
	return e.conn.Exec(ctx, query, args...)
}

func (e *serverEngine) query(ctx context.Context, query string, args ...any) (rows, error) {
	return e.conn.Query(ctx, query, args...)
}

func (e *serverEngine) insert(ctx context.Context, table string, cols []string, n int, row func(int) []any) error {
	stmt := "INSERT INTO " + table + " (" + strings.Join(cols, ", ") + ")"
	for lo := 0; lo < n; lo += serverInsertBatch {
		hi := min(lo+serverInsertBatch, n)
		batch, err := e.conn.PrepareBatch(ctx, stmt)
		if err != nil {
			return err
		}
		for i := lo; i < hi; i++ {
			if err := batch.Append(row(i)...); err != nil {
				batch.Abort()
				return err
			}
		}
		if err := batch.Send(); err != nil {
			return err
		}
	}
	return nil
}

func (e *serverEngine) close() error { return e.conn.Close() }
