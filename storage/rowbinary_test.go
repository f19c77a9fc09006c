package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// decodeRB is an independent RowBinary decoder for the encoder's layouts:
// strings come back as string, Float64 as its bits (uint64, so NaN payloads
// compare), UInt32 as uint32, UInt64 as uint64, Int64 and times as int64.
func decodeRB(b []byte, types []rbType) ([][]any, error) {
	var rows [][]any
	for len(b) > 0 {
		row := make([]any, len(types))
		for j, t := range types {
			switch t {
			case rbString:
				n, k := binary.Uvarint(b)
				if k <= 0 || uint64(len(b)-k) < n {
					return rows, fmt.Errorf("row %d col %d: bad string length", len(rows), j)
				}
				row[j] = string(b[k : k+int(n)])
				b = b[k+int(n):]
			case rbUInt32:
				if len(b) < 4 {
					return rows, errors.New("short UInt32")
				}
				row[j] = binary.LittleEndian.Uint32(b)
				b = b[4:]
			default:
				if len(b) < 8 {
					return rows, errors.New("short 8-byte value")
				}
				v := binary.LittleEndian.Uint64(b)
				if t == rbInt64 || t == rbTimeMilli {
					row[j] = int64(v)
				} else {
					row[j] = v // UInt64, or Float64 bits
				}
				b = b[8:]
			}
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// rbWant is what decodeRB returns for an encoded value.
func rbWant(v any) any {
	switch x := v.(type) {
	case float64:
		return math.Float64bits(x)
	case int:
		return int64(x)
	case time.Time:
		return x.UnixMilli()
	}
	return v
}

// Edge values shared by the tests and the fuzz seeds.
var (
	edgeFloats = []float64{0, math.Copysign(0, -1), math.NaN(), math.Float64frombits(0x7ff8_dead_beef_0001), // NaN with a payload
		math.Float64frombits(0xfff0_0000_0000_0001), // signalling NaN, sign set
		math.Inf(1), math.Inf(-1), math.SmallestNonzeroFloat64, -math.SmallestNonzeroFloat64,
		math.MaxFloat64, -math.MaxFloat64, 2.2250738585072009e-308, 0.1, 1.0 / 3, 21.37, 123456789.123456789,
		9007199254740993, // 2^53+1: not a float64, rounds to 2^53
		5e-324}
	edgeTimes = []time.Time{
		time.Date(2025, 3, 14, 12, 0, 0, 123_000_000, time.UTC),
		time.UnixMilli(-1).UTC(),                    // 1969-12-31 23:59:59.999
		time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), // DateTime64 minimum
		time.Date(1955, 11, 5, 6, 15, 30, 999_000_000, time.UTC),
		time.Date(2299, 12, 31, 23, 59, 59, 999_000_000, time.UTC), // DateTime64 maximum
		time.UnixMilli(0).UTC(),
	}
)

// edgeStrings: every single byte, all bytes 1..255 in one string, the
// nasty list, multi-byte and invalid UTF-8, long strings (multi-byte
// length prefix).
func edgeStrings() []string {
	out := append([]string{}, nasty...)
	var all []byte
	for c := range 256 {
		out = append(out, string([]byte{byte(c)}))
		if c > 0 {
			all = append(all, byte(c))
		}
	}
	return append(out, string(all), "", "温度 🌡️ ünïcödé Ω≈ç√∫", "\xff\xfe invalid \xc3\x28 utf-8",
		"'\\'\\\\''", strings.Repeat("x", 127), strings.Repeat("é", 64), strings.Repeat("\\'\"", 30000))
}

// TestRowBinaryEncoder pins the encoding: a known row's exact bytes, and
// edge values through the independent decoder.
func TestRowBinaryEncoder(t *testing.T) {
	row := []any{"ab", 1.5, uint32(7), uint64(1) << 63, int64(-2), -3, time.UnixMilli(-1)}
	sch, err := newRBSchema(row)
	if err != nil {
		t.Fatal(err)
	}
	if want := "c0 String, c1 Float64, c2 UInt32, c3 UInt64, c4 Int64, c5 Int64, c6 Int64"; sch.structure != want {
		t.Errorf("structure %q, want %q", sch.structure, want)
	}
	if want := "c0, c1, c2, c3, c4, c5, fromUnixTimestamp64Milli(c6, 'UTC')"; sch.exprs != want {
		t.Errorf("exprs %q, want %q", sch.exprs, want)
	}
	got, err := sch.appendRow(nil, row)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{2, 'a', 'b',
		0, 0, 0, 0, 0, 0, 0xf8, 0x3f, // 1.5
		7, 0, 0, 0,
		0, 0, 0, 0, 0, 0, 0, 0x80,
		0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	if !bytes.Equal(got, want) {
		t.Fatalf("bytes\n got %x\nwant %x", got, want)
	}
	if _, err := sch.appendRow(nil, []any{"ab", float32(1), uint32(7), uint64(1), int64(1), 1, time.Now()}); err == nil {
		t.Error("a float32 in a Float64 column was encoded")
	}
	if _, err := sch.appendRow(nil, row[:3]); err == nil {
		t.Error("a short row was encoded")
	}
	if _, err := newRBSchema([]any{int32(1)}); err == nil {
		t.Error("an int32 column was accepted")
	}

	var rows [][]any
	strs := edgeStrings()
	for i := range max(len(strs), len(edgeFloats), len(edgeTimes)) {
		rows = append(rows, []any{strs[i%len(strs)], edgeFloats[i%len(edgeFloats)], edgeTimes[i%len(edgeTimes)], uint64(i)})
	}
	sch = mustRBSchema(rows[0])
	var b []byte
	for _, r := range rows {
		if b, err = sch.appendRow(b, r); err != nil {
			t.Fatal(err)
		}
	}
	dec, err := decodeRB(b, sch.types)
	if err != nil {
		t.Fatal(err)
	}
	if len(dec) != len(rows) {
		t.Fatalf("decoded %d rows, want %d", len(dec), len(rows))
	}
	for i := range rows {
		for j := range rows[i] {
			if dec[i][j] != rbWant(rows[i][j]) {
				t.Errorf("row %d col %d: decoded %#v, want %#v", i, j, dec[i][j], rbWant(rows[i][j]))
			}
		}
	}
}

// TestTypedEncodersMatchGeneric: the struct encoders WriteBatch uses on chDB
// write exactly what the generic encoder writes for the same row.
func TestTypedEncodersMatchGeneric(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	strs := edgeStrings()
	for i := range 2000 {
		f := func() float64 {
			if i%2 == 0 {
				return edgeFloats[rng.IntN(len(edgeFloats))]
			}
			return math.Float64frombits(rng.Uint64())
		}
		tm := func() time.Time { return time.UnixMilli(rng.Int64N(1<<45) - 1<<44).Add(time.Duration(rng.IntN(1e6))) }
		r := Reading{Device: strs[rng.IntN(len(strs))], Metric: strs[rng.IntN(len(strs))], Time: tm(), Value: f()}
		checkTyped(t, readingRB, readingRow(&r), appendReadingRB(nil, &r))
		w := Window{Device: r.Device, Metric: r.Metric, Size: time.Duration(rng.IntN(1e6)) * time.Second, Start: tm(),
			Count: rng.Uint64(), Sum: f(), Min: f(), Max: f(), First: f(), Last: f(), FirstAt: tm(), LastAt: tm(), Version: rng.Uint64()}
		checkTyped(t, windowRB, windowRow(&w), appendWindowRB(nil, &w))
	}
}

func checkTyped(t testing.TB, sch *rbSchema, row []any, typed []byte) {
	t.Helper()
	generic, err := sch.appendRow(nil, row)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(typed, generic) {
		t.Fatalf("row %v: typed %x, generic %x", row, typed, generic)
	}
	dec, err := decodeRB(typed, sch.types)
	if err != nil || len(dec) != 1 {
		t.Fatalf("row %v: decoded %v %v", row, dec, err)
	}
	for j := range row {
		if dec[0][j] != rbWant(row[j]) {
			t.Fatalf("row %v col %d: decoded %#v", row, j, dec[0][j])
		}
	}
}

// rbTable is a table with every column type the encoder writes, read back
// as RowBinary in the encoder's own layout.
const rbTable = `(id UInt64, s String, lc LowCardinality(String), f Float64, fg Float64 CODEC(Gorilla, ZSTD),
	t DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD), i Int64, u UInt32) ENGINE = MergeTree ORDER BY id`

var (
	rbCols   = []string{"id", "s", "lc", "f", "fg", "t", "i", "u"}
	rbSelect = "SELECT id, s, lc, f, fg, toUnixTimestamp64Milli(t), i, u FROM %s ORDER BY id"
)

// readBackRB reads table's rows as RowBinary, in ClickHouse's own encoding.
func readBackRB(t testing.TB, table string) [][]any {
	t.Helper()
	out, err := session.run(fmt.Sprintf(rbSelect, table), "RowBinary")
	if err != nil {
		t.Fatal(err)
	}
	rows, err := decodeRB(out, []rbType{rbUInt64, rbString, rbString, rbFloat64, rbFloat64, rbInt64, rbInt64, rbUInt32})
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func compareRB(t testing.TB, got [][]any, want [][]any) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("read back %d rows, want %d", len(got), len(want))
	}
	for i := range want {
		for j := range want[i] {
			if got[i][j] != rbWant(want[i][j]) {
				t.Errorf("row %d (%s): read back %#v, wrote %#v (%#v)", i, rbCols[j], got[i][j], want[i][j], rbWant(want[i][j]))
			}
		}
	}
}

// TestRowBinaryChdbRoundTrip writes edge values through the chDB insert and
// reads them back as ClickHouse's RowBinary output: every float bit pattern
// (NaN payloads, -0, subnormals, ±Inf, ±max), every byte of every string and
// every millisecond (1900 to 2299, before 1970 too) comes back identical,
// through plain, LowCardinality and codec (Gorilla, DoubleDelta, ZSTD)
// columns.
func TestRowBinaryChdbRoundTrip(t *testing.T) {
	s := openT(t, chdbKind().cfg(t))
	ctx := ctxT(t)
	if err := s.eng.exec(ctx, s.sql("CREATE TABLE {db}.rb "+rbTable)); err != nil {
		t.Fatal(err)
	}
	strs := edgeStrings()
	var rows [][]any
	for i := range 3 * len(strs) {
		f := edgeFloats[i%len(edgeFloats)]
		rows = append(rows, []any{uint64(i), strs[i%len(strs)], strs[(i/2)%len(strs)], f, f,
			edgeTimes[i%len(edgeTimes)], int64(i) - math.MaxInt64, uint32(math.MaxUint32 - i)})
	}
	if err := s.eng.insert(ctx, s.sql("{db}.rb"), rbCols, len(rows), func(i int) []any { return rows[i] }); err != nil {
		t.Fatal(err)
	}
	compareRB(t, readBackRB(t, s.sql("{db}.rb")), rows)

	// The typed reading path into the real readings table (codecs,
	// ReplacingMergeTree): the key (device, metric, ts) is unique per row.
	var rs []Reading
	for i, str := range strs {
		rs = append(rs, Reading{Device: str, Metric: strs[(i*7)%len(strs)], Time: edgeTimes[i%len(edgeTimes)].Add(time.Duration(i) * time.Millisecond), Value: edgeFloats[i%len(edgeFloats)]})
	}
	if err := s.WriteBatch(ctx, nil, rs); err != nil {
		t.Fatal(err)
	}
	out, err := session.run(s.sql("SELECT device, metric, toUnixTimestamp64Milli(ts), value FROM {db}.readings FINAL ORDER BY ts"), "RowBinary")
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeRB(out, readingRB.types)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int64]Reading{}
	for _, r := range rs {
		want[r.Time.UnixMilli()] = r
	}
	if len(got) != len(rs) {
		t.Fatalf("read back %d readings, wrote %d", len(got), len(rs))
	}
	for _, g := range got {
		r, ok := want[g[2].(int64)]
		if !ok || g[0] != r.Device || g[1] != r.Metric || g[3] != math.Float64bits(r.Value) {
			t.Errorf("read back %q %q %v %x; wrote %q %q %v %x", g[0], g[1], g[2], g[3], r.Device, r.Metric, r.Time, math.Float64bits(r.Value))
		}
	}
}

// TestChdbBatchFiles: batch files are reused, left empty, and gone when the
// session closes.
func TestChdbBatchFiles(t *testing.T) {
	c := chdbKind().cfg(t)
	ctx := ctxT(t)
	if session.refs != 0 {
		t.Fatalf("another Store still holds the chDB session (%d refs)", session.refs)
	}
	s, err := Open(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	dir := session.files.dir
	for i := range 5 {
		if err := s.WriteBatch(ctx, []Window{win("f", "m", 10*time.Second, t0, float64(i))},
			[]Reading{{Device: "f", Metric: "m", Time: t0.Add(time.Duration(i) * time.Second), Value: float64(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 { // one WriteBatch at a time reuses one file
		t.Errorf("%d batch files after 5 batches, want 1: %v", len(ents), ents)
	}
	for _, e := range ents {
		if fi, err := e.Info(); err != nil || fi.Size() != 0 {
			t.Errorf("batch file %s not emptied: %v %v", e.Name(), fi, err)
		}
	}
	got, err := s.Summary(ctx, SummaryQuery{Metric: "m", Aggregate: Sum, From: t0, To: t0.Add(time.Minute), WindowSize: 10 * time.Second})
	if err != nil || fmt.Sprint(got) != "[{f 4 1}]" { // the last version of the re-emitted window
		t.Fatalf("summary %v %v", got, err)
	}
	s.eng.exec(ctx, s.sql("DROP DATABASE {db}"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("batch files left after Close: %v", ents)
	}
}

// FuzzRowBinary: for any reading, the typed and generic encoders agree and
// the decoder returns the input; with chDB (CHDB_LIB_PATH set) the row also
// goes through an INSERT and comes back identical as ClickHouse's RowBinary.
//
//	go test ./storage -run '^$' -fuzz FuzzRowBinary -fuzztime 60s -fuzzminimizetime 20x
//
// With chDB each input costs an INSERT and a SELECT (~100 inputs/s), so keep
// minimizing short; without CHDB_LIB_PATH it runs ~7,000 inputs/s.
func FuzzRowBinary(f *testing.F) {
	f.Add("dev-1", "temperature", int64(1741953600123), math.Float64bits(21.37))
	f.Add("", "", int64(-1), uint64(0x8000000000000000))
	f.Add("it's \\ \x00 nul", "温度 🌡️", int64(-2208988800000), uint64(0x7ff8deadbeef0001))
	f.Add("\xff\xfe", "'", int64(10413791999999), uint64(1))
	var (
		st  *Store
		tbl string
		ids atomic.Uint64
	)
	if os.Getenv("CHDB_LIB_PATH") != "" {
		st = openT(f, chdbKind().cfg(f))
		tbl = st.sql("{db}.rb")
		if err := st.eng.exec(ctxT(f), "CREATE TABLE "+tbl+" "+rbTable); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, device, metric string, ms int64, bits uint64) {
		r := Reading{Device: device, Metric: metric, Time: time.UnixMilli(ms), Value: math.Float64frombits(bits)}
		checkTyped(t, readingRB, readingRow(&r), appendReadingRB(nil, &r))
		w := Window{Device: device, Metric: metric, Size: time.Duration(bits>>40) * time.Second, Start: r.Time, Count: bits,
			Sum: r.Value, Min: -r.Value, Max: r.Value, First: r.Value, Last: r.Value, FirstAt: r.Time, LastAt: r.Time, Version: uint64(ms)}
		checkTyped(t, windowRB, windowRow(&w), appendWindowRB(nil, &w))
		if st == nil || ms < -2208988800000 || ms > 10413791999999 {
			return // no chDB, or outside DateTime64's range, which ClickHouse clamps (rowbinary.go)
		}
		id := ids.Add(1)
		row := []any{id, device, metric, r.Value, r.Value, r.Time, ms, uint32(bits)}
		if err := st.eng.insert(t.Context(), tbl, rbCols, 1, func(int) []any { return row }); err != nil {
			t.Fatal(err)
		}
		compareRB(t, readBackRB(t, tbl+" WHERE id = "+fmt.Sprint(id)), [][]any{row})
	})
}
