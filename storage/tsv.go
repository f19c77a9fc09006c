package storage

import (
	"bytes"
	"fmt"
	"strconv"
	"time"
)

// tsvRows iterates ClickHouse TabSeparated output, which chDB returns as one
// buffer. TSV keeps string bytes exact (unlike JSON formats, which may mangle
// invalid UTF-8, quote 64-bit ints, or turn NaN/Inf into null) and prints
// floats with shortest round-trip digits.
type tsvRows struct {
	rest []byte
	cur  [][]byte
	err  error
}

func newTSVRows(out []byte) *tsvRows { return &tsvRows{rest: out} }

func (r *tsvRows) Next() bool {
	if r.err != nil || len(r.rest) == 0 {
		return false
	}
	line := r.rest
	if i := bytes.IndexByte(r.rest, '\n'); i >= 0 {
		line, r.rest = r.rest[:i], r.rest[i+1:]
	} else {
		r.rest = nil
	}
	r.cur = bytes.Split(line, []byte{'\t'})
	return true
}

func (r *tsvRows) Scan(dest ...any) error {
	if len(dest) != len(r.cur) {
		return fmt.Errorf("storage: scan %d columns into %d destinations", len(r.cur), len(dest))
	}
	for i, d := range dest {
		f := r.cur[i]
		var err error
		switch p := d.(type) {
		case *string:
			*p = tsvUnescape(f)
		case *float64:
			// ParseFloat accepts ClickHouse's nan/inf/-inf spellings.
			*p, err = strconv.ParseFloat(string(f), 64)
		case *uint64:
			*p, err = strconv.ParseUint(string(f), 10, 64)
		case *int64:
			*p, err = strconv.ParseInt(string(f), 10, 64)
		case *time.Time:
			// Columns are declared in UTC; fractional seconds are optional
			// when parsing, so this reads both DateTime and DateTime64.
			*p, err = time.ParseInLocation("2006-01-02 15:04:05", string(f), time.UTC)
		default:
			return fmt.Errorf("storage: cannot scan into %T", d)
		}
		if err != nil {
			return fmt.Errorf("storage: column %d: %w", i, err)
		}
	}
	return nil
}

func (r *tsvRows) Err() error   { return r.err }
func (r *tsvRows) Close() error { return nil }

// tsvUnescape reverses ClickHouse's TSV string escaping.
func tsvUnescape(f []byte) string {
	if bytes.IndexByte(f, '\\') < 0 {
		return string(f)
	}
	out := make([]byte, 0, len(f))
	for i := 0; i < len(f); i++ {
		c := f[i]
		if c != '\\' || i+1 == len(f) {
			out = append(out, c)
			continue
		}
		i++
		switch e := f[i]; e {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case '0':
			out = append(out, 0)
		case 'a':
			out = append(out, '\a')
		case 'v':
			out = append(out, '\v')
		case 'x':
			if i+2 < len(f) {
				if v, err := strconv.ParseUint(string(f[i+1:i+3]), 16, 8); err == nil {
					out = append(out, byte(v))
					i += 2
					continue
				}
			}
			out = append(out, e)
		default:
			out = append(out, e)
		}
	}
	return string(out)
}
