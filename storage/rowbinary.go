package storage

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"time"
)

// chDB inserts travel as ClickHouse RowBinary (see chdbEngine.insert): every
// value is written in its binary form, so nothing is escaped or parsed as
// text. A float64 is its 8 IEEE-754 bytes, so NaN payloads, -0, subnormals
// and infinities arrive bit for bit; a string is its length (unsigned LEB128)
// and its bytes, so quotes, backslashes, NUL, invalid UTF-8 and any unicode
// arrive byte for byte.
//
// Each column's RowBinary type follows the Go type of its value:
//
//	string    String
//	float64   Float64  (little-endian IEEE-754 bits)
//	uint32    UInt32
//	uint64    UInt64
//	int/int64 Int64
//	time.Time Int64    Unix milliseconds (UnixMilli: truncated toward zero),
//	                   read back with fromUnixTimestamp64Milli(c, 'UTC') so it
//	                   fits both DateTime64(3) and DateTime columns.
//
// Time range: the value lands in the column's type, so a DateTime64(3) column
// (readings.ts, windows.first_at/last_at) holds 1900-01-01 to 2299-12-31 and
// a DateTime column (windows.window_start) 1970-01-01 to 2106-02-07;
// ClickHouse clamps or wraps values outside them, as it did for the text
// inserts before.

// rbType is the RowBinary type of one column.
type rbType uint8

const (
	rbString rbType = iota
	rbFloat64
	rbUInt32
	rbUInt64
	rbInt64
	rbTimeMilli
)

// rbTypeOf maps a value to its column type.
func rbTypeOf(v any) (rbType, error) {
	switch v.(type) {
	case string:
		return rbString, nil
	case float64:
		return rbFloat64, nil
	case uint32:
		return rbUInt32, nil
	case uint64:
		return rbUInt64, nil
	case int, int64:
		return rbInt64, nil
	case time.Time:
		return rbTimeMilli, nil
	}
	return 0, fmt.Errorf("storage: cannot insert %T", v)
}

// chType is the ClickHouse type of t's bytes, for a file() structure.
func (t rbType) chType() string {
	return [...]string{rbString: "String", rbFloat64: "Float64", rbUInt32: "UInt32", rbUInt64: "UInt64",
		rbInt64: "Int64", rbTimeMilli: "Int64"}[t]
}

// rbSchema is a batch's column layout: the file() structure and the SELECT
// list that turns it into the table's columns.
type rbSchema struct {
	types     []rbType
	structure string // "c0 String, c1 Float64, ..."
	exprs     string // "c0, c1, fromUnixTimestamp64Milli(c2, 'UTC'), ..."
}

// newRBSchema derives the layout from a batch's first row.
func newRBSchema(first []any) (*rbSchema, error) {
	s := &rbSchema{types: make([]rbType, len(first))}
	structure := make([]string, len(first))
	exprs := make([]string, len(first))
	for j, v := range first {
		t, err := rbTypeOf(v)
		if err != nil {
			return nil, err
		}
		c := fmt.Sprintf("c%d", j)
		s.types[j] = t
		structure[j] = c + " " + t.chType()
		exprs[j] = c
		if t == rbTimeMilli {
			exprs[j] = "fromUnixTimestamp64Milli(" + c + ", 'UTC')"
		}
	}
	s.structure = strings.Join(structure, ", ")
	s.exprs = strings.Join(exprs, ", ")
	return s, nil
}

// appendRow appends row's RowBinary encoding to b. Every value must have its
// column's type: a batch whose rows disagree is an error, not garbage bytes.
func (s *rbSchema) appendRow(b []byte, row []any) ([]byte, error) {
	if len(row) != len(s.types) {
		return b, fmt.Errorf("storage: %d values for %d columns", len(row), len(s.types))
	}
	for j, v := range row {
		ok := true
		switch s.types[j] {
		case rbString:
			var x string
			if x, ok = v.(string); ok {
				b = appendRBString(b, x)
			}
		case rbFloat64:
			var x float64
			if x, ok = v.(float64); ok {
				b = binary.LittleEndian.AppendUint64(b, math.Float64bits(x))
			}
		case rbUInt32:
			var x uint32
			if x, ok = v.(uint32); ok {
				b = binary.LittleEndian.AppendUint32(b, x)
			}
		case rbUInt64:
			var x uint64
			if x, ok = v.(uint64); ok {
				b = binary.LittleEndian.AppendUint64(b, x)
			}
		case rbInt64:
			switch x := v.(type) {
			case int64:
				b = binary.LittleEndian.AppendUint64(b, uint64(x))
			case int:
				b = binary.LittleEndian.AppendUint64(b, uint64(int64(x)))
			default:
				ok = false
			}
		case rbTimeMilli:
			var x time.Time
			if x, ok = v.(time.Time); ok {
				b = binary.LittleEndian.AppendUint64(b, uint64(x.UnixMilli()))
			}
		}
		if !ok {
			return b, fmt.Errorf("storage: column %d: %T in a column of %s", j, v, s.types[j].chType())
		}
	}
	return b, nil
}

func appendRBString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// readingRow and windowRow are the values of one row in readingCols and
// windowCols order, for engines that take rows of values.
func readingRow(r *Reading) []any {
	return []any{r.Device, r.Metric, r.Time.UTC(), r.Value}
}

func windowRow(w *Window) []any {
	return []any{w.Device, w.Metric, uint32(w.Size / time.Second), w.Start.UTC(), w.Count,
		w.Sum, w.Min, w.Max, w.First, w.Last, w.FirstAt.UTC(), w.LastAt.UTC(), w.Version}
}

// readingRB and windowRB are the layouts of those rows; appendReadingRB and
// appendWindowRB encode the same bytes as appendRow on readingRow and
// windowRow (TestTypedEncodersMatchGeneric, FuzzRowBinary) without boxing.
var (
	readingRB = mustRBSchema(readingRow(&Reading{}))
	windowRB  = mustRBSchema(windowRow(&Window{}))
)

func mustRBSchema(row []any) *rbSchema {
	s, err := newRBSchema(row)
	if err != nil {
		panic(err)
	}
	return s
}

func appendReadingRB(b []byte, r *Reading) []byte {
	b = appendRBString(b, r.Device)
	b = appendRBString(b, r.Metric)
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Time.UnixMilli()))
	return binary.LittleEndian.AppendUint64(b, math.Float64bits(r.Value))
}

func appendWindowRB(b []byte, w *Window) []byte {
	le := binary.LittleEndian
	b = appendRBString(b, w.Device)
	b = appendRBString(b, w.Metric)
	b = le.AppendUint32(b, uint32(w.Size/time.Second))
	b = le.AppendUint64(b, uint64(w.Start.UnixMilli()))
	b = le.AppendUint64(b, w.Count)
	for _, f := range [...]float64{w.Sum, w.Min, w.Max, w.First, w.Last} {
		b = le.AppendUint64(b, math.Float64bits(f))
	}
	b = le.AppendUint64(b, uint64(w.FirstAt.UnixMilli()))
	b = le.AppendUint64(b, uint64(w.LastAt.UnixMilli()))
	return le.AppendUint64(b, w.Version)
}
