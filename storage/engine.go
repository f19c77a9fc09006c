package storage

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

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

// chdbInsertBatch bounds the size of one INSERT statement's text.
const chdbInsertBatch = 20000

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

// insert reads rows through the format() table function so each value is
// sent as exact text: floats as their IEEE-754 bits (ClickHouse's data-format
// float parser is off by an ulp on some 17-digit values, even with
// precise_float_parsing) and times as Unix milliseconds.
func (e *chdbEngine) insert(ctx context.Context, table string, cols []string, n int, row func(int) []any) error {
	if n == 0 {
		return nil
	}
	first := row(0)
	if len(first) != len(cols) {
		return fmt.Errorf("storage: %d values for %d columns", len(first), len(cols))
	}
	structure := make([]string, len(first))
	exprs := make([]string, len(first))
	for j, v := range first {
		c := fmt.Sprintf("c%d", j)
		exprs[j] = c
		switch v.(type) {
		case string:
			structure[j] = c + " String"
		case float64:
			structure[j] = c + " UInt64"
			exprs[j] = "reinterpretAsFloat64(" + c + ")"
		case uint32:
			structure[j] = c + " UInt32"
		case uint64:
			structure[j] = c + " UInt64"
		case int, int64:
			structure[j] = c + " Int64"
		case time.Time:
			structure[j] = c + " Int64"
			exprs[j] = "fromUnixTimestamp64Milli(" + c + ", 'UTC')"
		default:
			return fmt.Errorf("storage: cannot insert %T", v)
		}
	}
	// input() would avoid quoting the data twice, but chDB does not feed
	// inline data to it (the insert silently writes nothing).
	head := "INSERT INTO " + table + " (" + strings.Join(cols, ", ") + ") SELECT " + strings.Join(exprs, ", ") +
		" FROM format(Values, " + quoteString(strings.Join(structure, ", ")) + ", "
	var b strings.Builder
	for lo := 0; lo < n; lo += chdbInsertBatch {
		hi := min(lo+chdbInsertBatch, n)
		b.Reset()
		for i := lo; i < hi; i++ {
			if i > lo {
				b.WriteByte(',')
			}
			b.WriteByte('(')
			for j, v := range row(i) {
				if j > 0 {
					b.WriteByte(',')
				}
				switch x := v.(type) {
				case float64:
					b.WriteString(strconv.FormatUint(math.Float64bits(x), 10))
				case time.Time:
					b.WriteString(strconv.FormatInt(x.UnixMilli(), 10))
				default:
					lit, err := literal(v)
					if err != nil {
						return err
					}
					b.WriteString(lit)
				}
			}
			b.WriteByte(')')
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := session.run(head+quoteString(b.String())+")", "TabSeparated"); err != nil {
			return err
		}
	}
	return nil
}

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
