package storage

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// quoteString renders s as a ClickHouse string literal. It is the only way
// user strings reach SQL text on chDB (which has no bound parameters in its
// C API), so it escapes conservatively: backslash and quote, every control
// byte and every byte of invalid UTF-8 as \xHH. The result therefore contains
// no NUL (the C API takes NUL-terminated text) and is valid UTF-8, while
// decoding back to exactly the bytes of s.
func quoteString(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('\'')
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\\' || c == '\'':
			b.WriteByte('\\')
			b.WriteByte(c)
			i++
		case c < 0x20 || c == 0x7f:
			writeHexByte(&b, c)
			i++
		case c < utf8.RuneSelf:
			b.WriteByte(c)
			i++
		default:
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				writeHexByte(&b, c)
			} else {
				b.WriteString(s[i : i+n])
			}
			i += n
		}
	}
	b.WriteByte('\'')
	return b.String()
}

func writeHexByte(b *strings.Builder, c byte) {
	const hex = "0123456789abcdef"
	b.WriteString(`\x`)
	b.WriteByte(hex[c>>4])
	b.WriteByte(hex[c&0xf])
}

// quoteIdent renders an identifier (database name) in backquotes.
func quoteIdent(s string) string {
	return "`" + strings.NewReplacer(`\`, `\\`, "`", "\\`").Replace(s) + "`"
}

// formatFloat renders f so ClickHouse's SQL parser reads back the identical
// float64: shortest round-trip digits, and ClickHouse's spelling of NaN and
// infinities. Only for SQL text: the data-format parsers (VALUES, TSV, JSON)
// are not correctly rounded, so chDB inserts send floats as RowBinary bytes.
func formatFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// chTimeLayout is how DateTime/DateTime64 values are written and read as text;
// columns are declared with the 'UTC' time zone so the text is UTC.
const chTimeLayout = "2006-01-02 15:04:05.000"

// literal renders one Go value as a ClickHouse literal.
func literal(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return quoteString(x), nil
	case float64:
		return formatFloat(x), nil
	case int:
		return strconv.Itoa(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case uint32:
		return strconv.FormatUint(uint64(x), 10), nil
	case uint64:
		return strconv.FormatUint(x, 10), nil
	case time.Time:
		return "'" + x.UTC().Format(chTimeLayout) + "'", nil
	default:
		return "", fmt.Errorf("storage: no literal for %T", v)
	}
}

// bindLiterals replaces each ? placeholder in query (outside quoted
// strings and identifiers) with the literal of the matching arg.
func bindLiterals(query string, args []any) (string, error) {
	if len(args) == 0 {
		return query, nil
	}
	var b strings.Builder
	n := 0
	var quote byte // current quote char, 0 outside quotes
	for i := 0; i < len(query); i++ {
		c := query[i]
		switch {
		case quote != 0:
			b.WriteByte(c)
			if c == '\\' && i+1 < len(query) {
				i++
				b.WriteByte(query[i])
			} else if c == quote {
				quote = 0
			}
		case c == '\'' || c == '`' || c == '"':
			quote = c
			b.WriteByte(c)
		case c == '?':
			if n >= len(args) {
				return "", fmt.Errorf("storage: query has more placeholders than %d args", len(args))
			}
			lit, err := literal(args[n])
			if err != nil {
				return "", err
			}
			b.WriteString(lit)
			n++
		default:
			b.WriteByte(c)
		}
	}
	if n != len(args) {
		return "", fmt.Errorf("storage: query has %d placeholders, got %d args", n, len(args))
	}
	return b.String(), nil
}
