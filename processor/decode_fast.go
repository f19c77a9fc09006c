package processor

import (
	"bytes"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/iotpipe/iotpipe/processor/window"
)

// decoder decodes telemetry payloads without allocating in the common case:
// a JSON object of numbers (nested objects flattened with dots) with plain
// ASCII keys. It scans such payloads itself and interns metric names; any
// payload outside that subset (escapes, non-ASCII or duplicate keys, arrays,
// colliding flattened names, syntax errors, SenML, bare numbers) goes to
// decodeSlow, the encoding/json implementation that defines the semantics.
// FuzzDecodeFast checks that both agree on every input the fast path takes.
//
// A decoder is not safe for concurrent use; the values it returns are valid
// until the next call.
type decoder struct {
	names  map[string]string // interned metric names, bounded by maxNames
	recent []string          // the interned name of each value position of the last payload
	name   []byte            // the current flattened name prefix
	keys   [][2]int          // key spans of the objects being scanned (duplicate check)
	vals   []window.Value
}

const (
	maxNames = 1 << 16
	maxDepth = 32
)

func newDecoder() *decoder { return &decoder{names: make(map[string]string)} }

// decode is decodeSlow's result, computed faster when possible.
func (dc *decoder) decode(payload []byte, mqttTopic string, receivedAt time.Time, haveReceived bool) (decoded, *decodeError) {
	trimmed := bytes.TrimSpace(payload)
	if len(trimmed) > 0 && trimmed[0] == '{' {
		if d, ok := dc.fast(trimmed, receivedAt, haveReceived); ok {
			return d, nil
		}
	}
	return decodeSlow(payload, mqttTopic, receivedAt, haveReceived)
}

func (dc *decoder) intern(b []byte) string {
	if s, ok := dc.names[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(dc.names) >= maxNames {
		clear(dc.names) // a flood of distinct names must not grow memory
	}
	dc.names[s] = s
	return s
}

// fast decodes p (trimmed, starting with '{'); ok=false means "ask
// decodeSlow", also for errors, whose details decodeSlow words.
func (dc *decoder) fast(p []byte, recv time.Time, haveRecv bool) (d decoded, ok bool) {
	dc.name = dc.name[:0]
	dc.keys = dc.keys[:0]
	dc.vals = dc.vals[:0]
	var ts []byte // raw "ts" value: a number, or a quoted string
	i, ok := dc.object(p, 0, 0, &d, &ts)
	if !ok || i != len(p) {
		return d, false
	}
	d.values = dc.vals
	if len(d.values) == 2 { // the common case, without the sort's machinery
		if d.values[0].Metric > d.values[1].Metric {
			d.values[0], d.values[1] = d.values[1], d.values[0]
		}
	} else {
		slices.SortFunc(d.values, func(a, b window.Value) int { return strings.Compare(a.Metric, b.Metric) })
	}
	for j := 1; j < len(d.values); j++ {
		if d.values[j].Metric == d.values[j-1].Metric {
			return d, false // collision: which one wins is decodeSlow's rule
		}
	}
	switch {
	case ts != nil && ts[0] == '"':
		t, err := time.Parse(time.RFC3339Nano, string(ts[1:len(ts)-1]))
		if err != nil {
			return d, false
		}
		d.time = t.UTC()
	case ts != nil:
		f, err := parseFloat(ts)
		if err != nil || f < 0 || f >= msThreshold && f > float64(maxEventTime.UnixMilli()) {
			return d, false
		}
		d.time = tsFromFloat(f)
	case haveRecv:
		d.time = recv
	default:
		return d, false
	}
	if len(d.values) == 0 || checkTime(d) != nil {
		return d, false
	}
	return d, true
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(p []byte, i int) int {
	for i < len(p) && isSpace(p[i]) {
		i++
	}
	return i
}

// object scans the object at p[i] ('{'); depth 0 is the top level, where
// "ts" is the event time, not a metric.
func (dc *decoder) object(p []byte, i, depth int, d *decoded, ts *[]byte) (int, bool) {
	if depth > maxDepth {
		return i, false
	}
	i = skipSpace(p, i+1)
	level := len(dc.keys) // failures need no cleanup: fast starts afresh
	prefix := len(dc.name)
	if i < len(p) && p[i] == '}' {
		return i + 1, true
	}
	for {
		if i >= len(p) || p[i] != '"' {
			return i, false
		}
		ks := i + 1
		i = ks
		for i < len(p) && p[i] != '"' {
			if c := p[i]; c == '\\' || c < 0x20 || c >= 0x80 {
				return i, false
			}
			i++
		}
		if i >= len(p) {
			return i, false
		}
		key := p[ks:i]
		for _, k := range dc.keys[level:] {
			if bytes.Equal(p[k[0]:k[1]], key) {
				return i, false // duplicate key: encoding/json keeps the last
			}
		}
		dc.keys = append(dc.keys, [2]int{ks, i})
		i = skipSpace(p, i+1)
		if i >= len(p) || p[i] != ':' {
			return i, false
		}
		i = skipSpace(p, i+1)
		if i >= len(p) {
			return i, false
		}
		isTS := depth == 0 && string(key) == "ts"
		switch c := p[i]; {
		case c == '{':
			if isTS {
				return i, false
			}
			// decodeSlow joins with '.' only after a non-empty prefix.
			if dc.name = append(dc.name[:prefix], key...); len(dc.name) > 0 {
				dc.name = append(dc.name, '.')
			}
			var ok bool
			if i, ok = dc.object(p, i, depth+1, d, ts); !ok {
				return i, false
			}
			dc.name = dc.name[:prefix]
		case c == '-' || (c >= '0' && c <= '9'):
			s := i
			if i = number(p, i); i < 0 {
				return s, false
			}
			if isTS {
				*ts = p[s:i]
				break
			}
			f, err := parseFloat(p[s:i])
			if err != nil || len(key) == 0 {
				d.ignored++ // out of float64 range, or unnamed
				break
			}
			dc.name = append(dc.name[:prefix], key...)
			dc.vals = append(dc.vals, window.Value{Metric: dc.internAt(len(dc.vals), dc.name), Value: f})
			dc.name = dc.name[:prefix]
		case c == '"':
			s := i
			for i++; i < len(p) && p[i] != '"'; i++ {
				if c := p[i]; c == '\\' || c < 0x20 {
					return i, false
				}
			}
			if i >= len(p) {
				return i, false
			}
			i++
			if isTS {
				*ts = p[s:i]
				break
			}
			d.ignored++
		case c == 't' && bytes.HasPrefix(p[i:], []byte("true")), c == 'n' && bytes.HasPrefix(p[i:], []byte("null")):
			if isTS {
				return i, false
			}
			i += 4
			d.ignored++
		case c == 'f' && bytes.HasPrefix(p[i:], []byte("false")):
			if isTS {
				return i, false
			}
			i += 5
			d.ignored++
		default: // arrays and anything else
			return i, false
		}
		i = skipSpace(p, i)
		if i >= len(p) {
			return i, false
		}
		switch p[i] {
		case ',':
			i = skipSpace(p, i+1)
		case '}':
			dc.keys = dc.keys[:level]
			return i + 1, true
		default:
			return i, false
		}
	}
}

// internAt interns the name of the k-th value of a payload. Payloads of a
// fleet repeat their layout, so it first compares with the k-th name of
// the previous payload: a comparison instead of a map lookup.
func (dc *decoder) internAt(k int, b []byte) string {
	if k < len(dc.recent) && dc.recent[k] == string(b) {
		return dc.recent[k]
	}
	s := dc.intern(b)
	if k < len(dc.recent) {
		dc.recent[k] = s
	} else if k == len(dc.recent) && k < 64 {
		dc.recent = append(dc.recent, s)
	}
	return s
}

// pow10 holds the powers of ten that float64 represents exactly.
var pow10 = [...]float64{1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
	1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22}

// parseFloat is strconv.ParseFloat(string(b), 64) for a JSON number b (as
// number validated it), computed without strconv for plain decimals with
// at most 19 digits, a mantissa up to 2^53 and at most 22 decimals — what
// sensors send. There the result is exact: the mantissa and the power of
// ten are both exact float64s and one division rounds correctly (Clinger's
// fast path, the one strconv takes first too).
func parseFloat(b []byte) (float64, error) {
	i, neg := 0, len(b) > 0 && b[0] == '-'
	if neg {
		i = 1
	}
	var m uint64
	digits, frac := 0, -1 // frac: digits after the point, -1 before it
	for ; i < len(b); i++ {
		switch c := b[i]; {
		case c >= '0' && c <= '9':
			if digits++; digits > 19 {
				return strconv.ParseFloat(string(b), 64)
			}
			m = m*10 + uint64(c-'0')
			if frac >= 0 {
				frac++
			}
		case c == '.' && frac < 0:
			frac = 0
		default: // an exponent
			return strconv.ParseFloat(string(b), 64)
		}
	}
	if digits == 0 || m > 1<<53 || frac > 22 {
		return strconv.ParseFloat(string(b), 64)
	}
	f := float64(m)
	if frac > 0 {
		f /= pow10[frac]
	}
	if neg {
		f = -f
	}
	return f, nil
}

// number returns the end of the JSON number at p[i], or -1 if it is not one.
func number(p []byte, i int) int {
	if i < len(p) && p[i] == '-' {
		i++
	}
	switch {
	case i < len(p) && p[i] == '0':
		i++
	case i < len(p) && p[i] >= '1' && p[i] <= '9':
		for i < len(p) && p[i] >= '0' && p[i] <= '9' {
			i++
		}
	default:
		return -1
	}
	if i < len(p) && p[i] == '.' {
		i++
		d := i
		for i < len(p) && p[i] >= '0' && p[i] <= '9' {
			i++
		}
		if i == d {
			return -1
		}
	}
	if i < len(p) && (p[i] == 'e' || p[i] == 'E') {
		i++
		if i < len(p) && (p[i] == '+' || p[i] == '-') {
			i++
		}
		d := i
		for i < len(p) && p[i] >= '0' && p[i] <= '9' {
			i++
		}
		if i == d {
			return -1
		}
	}
	if i < len(p) && !isSpace(p[i]) && p[i] != ',' && p[i] != '}' && p[i] != ']' {
		return -1
	}
	return i
}

// finite is used by SenML: a value sum (base value + value) may overflow.
func finite(f float64) bool { return !math.IsInf(f, 0) && !math.IsNaN(f) }
