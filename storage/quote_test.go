package storage

import (
	"context"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// unquoteCH decodes a ClickHouse string literal the way ClickHouse's lexer
// does, for the escapes quoteString emits; it is the reference the fuzz test
// checks quoteString against without needing an engine.
func unquoteCH(t *testing.T, lit string) string {
	t.Helper()
	if len(lit) < 2 || lit[0] != '\'' || lit[len(lit)-1] != '\'' {
		t.Fatalf("not a literal: %q", lit)
	}
	body := lit[1 : len(lit)-1]
	var b strings.Builder
	for i := 0; i < len(body); i++ {
		c := body[i]
		if c == '\'' {
			t.Fatalf("unescaped quote at %d in %q", i, lit)
		}
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		i++
		if i == len(body) {
			t.Fatalf("dangling backslash in %q", lit)
		}
		switch body[i] {
		case '\\', '\'':
			b.WriteByte(body[i])
		case 'x':
			v, err := strconv.ParseUint(body[i+1:i+3], 16, 8)
			if err != nil {
				t.Fatalf("bad \\x in %q", lit)
			}
			b.WriteByte(byte(v))
			i += 2
		default:
			t.Fatalf("unexpected escape \\%c in %q", body[i], lit)
		}
	}
	return b.String()
}

func TestQuoteString(t *testing.T) {
	for in, want := range map[string]string{
		"":           `''`,
		"a":          `'a'`,
		"it's":       `'it\'s'`,
		`a\b`:        `'a\\b'`,
		"nul\x00":    `'nul\x00'`,
		"tab\t\n":    `'tab\x09\x0a'`,
		"温度":         `'温度'`,
		"bad\xffutf": `'bad\xffutf'`,
	} {
		if got := quoteString(in); got != want {
			t.Errorf("quoteString(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestQuoteIdent(t *testing.T) {
	if got := quoteIdent("a`b\\c"); got != "`a\\`b\\\\c`" {
		t.Errorf("got %s", got)
	}
}

func TestBindLiterals(t *testing.T) {
	got, err := bindLiterals("SELECT '?', `?`, ? WHERE x = ? AND t = ? AND f = ?",
		[]any{"it's ?", uint64(7), time.Date(2024, 1, 2, 3, 4, 5, 6e6, time.UTC), math.Inf(-1)})
	if err != nil {
		t.Fatal(err)
	}
	want := `SELECT '?', ` + "`?`" + `, 'it\'s ?' WHERE x = 7 AND t = '2024-01-02 03:04:05.006' AND f = -inf`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if _, err := bindLiterals("? ?", []any{1}); err == nil {
		t.Error("too few args: want error")
	}
	if _, err := bindLiterals("?", []any{1, 2}); err == nil {
		t.Error("too many args: want error")
	}
	if _, err := bindLiterals("?", []any{struct{}{}}); err == nil {
		t.Error("unsupported type: want error")
	}
}

func TestTSVUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`a\tb\nc\\d\'e\0f\x41`: "a\tb\nc\\d'e\x00fA",
		`plain`:                "plain",
		`trailing\`:            `trailing\`,
	} {
		if got := tsvUnescape([]byte(in)); got != want {
			t.Errorf("tsvUnescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFloorCeil(t *testing.T) {
	m := time.Minute
	for _, c := range []struct {
		t           time.Time
		floor, ceil int64
	}{
		{time.Unix(120, 0), 120, 120},
		{time.Unix(121, 0), 120, 180},
		{time.Unix(120, 1), 120, 180},
		{time.Unix(-1, 0), -60, 0},
	} {
		if f, cl := floorTo(c.t, m), ceilTo(c.t, m); f != c.floor || cl != c.ceil {
			t.Errorf("%v: floor %d ceil %d, want %d %d", c.t.Unix(), f, cl, c.floor, c.ceil)
		}
	}
}

// FuzzQuoteString checks that every string survives quoteString: the
// literal is well-formed, free of NUL and raw control bytes, valid UTF-8, and
// decodes to the input. When CHDB_LIB_PATH is set it also asks chDB to parse
// the literal and checks the bytes it returns. Seeds: testdata/fuzz.
func FuzzQuoteString(f *testing.F) {
	for _, s := range nasty {
		f.Add(s)
	}
	var eng *chdbEngine
	if os.Getenv("CHDB_LIB_PATH") != "" {
		e, err := openChdb(chdbDir)
		if err != nil {
			f.Fatal(err)
		}
		defer e.close()
		eng = e
	}
	f.Fuzz(func(t *testing.T, s string) {
		q := quoteString(s)
		if strings.IndexByte(q, 0) >= 0 || !utf8.ValidString(q) {
			t.Fatalf("quoteString(%q) = %q has NUL or invalid UTF-8", s, q)
		}
		for i := 0; i < len(q); i++ {
			if q[i] < 0x20 || q[i] == 0x7f {
				t.Fatalf("raw control byte in %q", q)
			}
		}
		if got := unquoteCH(t, q); got != s {
			t.Fatalf("round trip %q -> %s -> %q", s, q, got)
		}
		if eng == nil {
			return
		}
		rows, err := eng.query(context.Background(), "SELECT ?, toUInt64(length(?))", s, s)
		if err != nil {
			t.Fatalf("chDB rejected %s: %v", q, err)
		}
		var (
			got string
			n   uint64
		)
		for rows.Next() {
			if err := rows.Scan(&got, &n); err != nil {
				t.Fatal(err)
			}
		}
		if got != s || n != uint64(len(s)) {
			t.Fatalf("chDB returned %q (len %d) for %q", got, n, s)
		}
	})
}
