package window

import (
	"encoding/binary"
	"slices"
)

// seen is the exact set of event times counted in one window, stored
// compactly. The smallest and largest member are the window's firstAt and
// lastAt (kept by the window itself); seen holds the gaps between
// consecutive members, in order, as runs of equal gaps:
//
//   - buf: completed runs, each uvarint(gap<<1 | more) followed by
//     uvarint(count) only when more is set (count ≥ 2);
//   - gap, n: the run being extended (n == 0: none yet).
//
// Gaps are in milliseconds while every member is a whole millisecond (the
// common case: devices send Unix ms), else in nanoseconds.
//
// Readings that arrive in event-time order per device × metric (t > lastAt)
// are added in O(1) and cost nothing when the cadence is regular (one run)
// or about two bytes each when it jitters. A reading at or before lastAt is
// looked up by walking the runs, and inserting one rebuilds the encoding:
// O(members), paid only for out-of-order readings.
type seen struct {
	buf  []byte
	gap  int64
	n    uint32
	nano bool // gaps in ns (some member is not a whole millisecond)
	// sizeIdx is the owning window's index into Engine.sizes; it lives here
	// because it fits the struct's padding (win stays in the 144-byte class).
	sizeIdx uint8
}

const msNanos = int64(1_000_000)

func (s *seen) unit() int64 {
	if s.nano {
		return 1
	}
	return msNanos
}

// appendMax records t > last (the current maximum).
func (s *seen) appendMax(t, last int64) bool {
	if !s.nano && t%msNanos != 0 {
		return false // caller rebuilds in ns
	}
	g := (t - last) / s.unit()
	if s.n > 0 && g == s.gap {
		s.n++
		return true
	}
	s.flush()
	s.gap, s.n = g, 1
	return true
}

func (s *seen) flush() {
	if s.n == 0 {
		return
	}
	if s.n == 1 {
		s.buf = binary.AppendUvarint(s.buf, uint64(s.gap)<<1)
	} else {
		s.buf = binary.AppendUvarint(s.buf, uint64(s.gap)<<1|1)
		s.buf = binary.AppendUvarint(s.buf, uint64(s.n))
	}
	s.n = 0
}

// contains reports whether t is a member; first and last are the window's
// smallest and largest member.
func (s *seen) contains(t, first, last int64) bool {
	if t == first || t == last {
		return true
	}
	if t < first || t > last {
		return false
	}
	u := s.unit()
	if t%u != 0 {
		return false
	}
	cur := first
	check := func(g int64, n uint64) (found, past bool) {
		step := g * u
		end := cur + step*int64(n)
		if t <= end {
			return step != 0 && (t-cur)%step == 0, true
		}
		cur = end
		return false, false
	}
	for b := s.buf; len(b) > 0; {
		v, k := binary.Uvarint(b)
		b = b[k:]
		n := uint64(1)
		if v&1 == 1 {
			n, k = binary.Uvarint(b)
			b = b[k:]
		}
		if found, past := check(int64(v>>1), n); past {
			return found
		}
	}
	if s.n > 0 {
		found, _ := check(s.gap, uint64(s.n))
		return found
	}
	return false
}

// members appends every member in ascending order to dst.
func (s *seen) members(dst []int64, first int64) []int64 {
	dst = append(dst, first)
	cur := first
	u := s.unit()
	for b := s.buf; len(b) > 0; {
		v, k := binary.Uvarint(b)
		b = b[k:]
		n := uint64(1)
		if v&1 == 1 {
			n, k = binary.Uvarint(b)
			b = b[k:]
		}
		for range n {
			cur += int64(v>>1) * u
			dst = append(dst, cur)
		}
	}
	for range s.n {
		cur += s.gap * u
		dst = append(dst, cur)
	}
	return dst
}

// rebuild re-encodes the set from sorted, distinct members (at least one).
func (s *seen) rebuild(ms []int64) {
	s.buf, s.gap, s.n, s.nano = s.buf[:0], 0, 0, false
	for _, t := range ms {
		if t%msNanos != 0 {
			s.nano = true
			break
		}
	}
	for i := 1; i < len(ms); i++ {
		s.appendMax(ms[i], ms[i-1])
	}
	if cap(s.buf) > 2*len(s.buf)+64 {
		s.buf = slices.Clone(s.buf) // give back what a burst grew
	}
}

func (s *seen) reset() {
	s.buf, s.gap, s.n, s.nano, s.sizeIdx = s.buf[:0], 0, 0, false, 0
}

// bytes is the heap memory the set holds beyond its struct.
func (s *seen) bytes() int { return cap(s.buf) }
