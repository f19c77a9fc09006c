package processor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/iotpipe/iotpipe/processor/window"
)

// senmlRelative: SenML times (base time + time, in seconds) below 2^28 are
// relative to "now" (RFC 8428 §4.5.3).
const senmlRelative = 1 << 28

// decodeSenML decodes a SenML JSON pack (RFC 8428): an array of records
// whose base fields (bn, bt, bv, bs; bu and bver are read and ignored) apply
// to their record and every later one until changed.
//
//   - Metric: base name + name, as the RFC resolves names, except that a base
//     name ending in ':' or '/' — the RFC's device-identifier form, e.g.
//     "urn:dev:ow:10e2073a01080063:" — is dropped: the device is the record's
//     (authenticated) device, and its id in every metric name would split the
//     same quantity across devices. A sum (s, plus bs) is stored as metric
//     "<name>.sum", a value (v, plus bv) as "<name>".
//   - Time: base time + time in seconds. Below 2^28 it is relative to the
//     broker's receive time (iot-received-at), not to the processor's clock,
//     so a replay decodes the record identically; without that header a
//     relative time is a bad_timestamp.
//   - vs, vb, vd and fields we do not know are ignored and counted; a field
//     ending in '_' (must-understand), a record that is not an object or a
//     wrongly typed field makes the pack malformed.
//   - Readings with the same name and time: the first counts, the others are
//     ignored and counted.
func decodeSenML(p []byte, recv time.Time, haveRecv bool) (decoded, *decodeError) {
	var d decoded
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.UseNumber()
	var pack []map[string]any
	if err := dec.Decode(&pack); err != nil {
		return d, &decodeError{ReasonMalformedJSON, "senml: " + err.Error()}
	}
	if dec.More() || dec.InputOffset() != int64(len(p)) {
		return d, &decodeError{ReasonMalformedJSON, "senml: trailing data after the pack"}
	}
	var bn string
	var bt, bv, bs float64
	num := func(rec map[string]any, k string, i int) (float64, bool, *decodeError) {
		v, ok := rec[k]
		if !ok {
			return 0, false, nil
		}
		n, isNum := v.(json.Number)
		f, err := n.Float64()
		if !isNum || err != nil {
			return 0, false, &decodeError{ReasonMalformedJSON, fmt.Sprintf("senml record %d: %s is not a finite number", i, k)}
		}
		return f, true, nil
	}
	str := func(rec map[string]any, k string, i int) (string, bool, *decodeError) {
		v, ok := rec[k]
		if !ok {
			return "", false, nil
		}
		s, isStr := v.(string)
		if !isStr {
			return "", false, &decodeError{ReasonMalformedJSON, fmt.Sprintf("senml record %d: %s is not a string", i, k)}
		}
		return s, true, nil
	}
	for i, rec := range pack {
		if rec == nil {
			return d, &decodeError{ReasonMalformedJSON, fmt.Sprintf("senml record %d is not an object", i)}
		}
		for k := range rec {
			switch k {
			case "bn", "bt", "bv", "bs", "bu", "bver", "n", "t", "v", "s", "u", "ut":
			case "vs", "vb", "vd":
				d.ignored++
			default:
				if strings.HasSuffix(k, "_") {
					return d, &decodeError{ReasonMalformedJSON, fmt.Sprintf("senml record %d: must-understand field %q", i, k)}
				}
				d.ignored++
			}
		}
		var err *decodeError
		if s, ok, e := str(rec, "bn", i); e != nil {
			return d, e
		} else if ok {
			bn = s
		}
		for _, b := range []struct {
			k string
			p *float64
		}{{"bt", &bt}, {"bv", &bv}, {"bs", &bs}} {
			if f, ok, e := num(rec, b.k, i); e != nil {
				return d, e
			} else if ok {
				*b.p = f
			}
		}
		n, _, err := str(rec, "n", i)
		if err != nil {
			return d, err
		}
		if _, _, err := str(rec, "bu", i); err != nil {
			return d, err
		}
		if _, _, err := str(rec, "u", i); err != nil {
			return d, err
		}
		t, _, err := num(rec, "t", i)
		if err != nil {
			return d, err
		}
		v, hasV, err := num(rec, "v", i)
		if err != nil {
			return d, err
		}
		sum, hasS, err := num(rec, "s", i)
		if err != nil {
			return d, err
		}
		if !hasV && !hasS {
			continue
		}
		name := n
		if !strings.HasSuffix(bn, ":") && !strings.HasSuffix(bn, "/") {
			name = bn + n
		}
		at, terr := senmlTime(bt+t, recv, haveRecv)
		if terr != nil {
			return d, terr
		}
		add := func(metric string, f float64) {
			if metric == "" || !finite(f) {
				d.ignored++
				return
			}
			d.values = append(d.values, window.Value{Metric: metric, Value: f, Time: at})
		}
		if hasV {
			add(name, bv+v)
		}
		if hasS {
			add(name+".sum", bs+sum)
		}
	}
	if len(d.values) == 0 {
		return d, &decodeError{ReasonNoNumericValues, fmt.Sprintf("senml: no numeric values (%d ignored)", d.ignored)}
	}
	slices.SortStableFunc(d.values, func(a, b window.Value) int {
		if c := strings.Compare(a.Metric, b.Metric); c != 0 {
			return c
		}
		return a.Time.Compare(b.Time)
	})
	n := len(d.values)
	d.values = slices.CompactFunc(d.values, func(a, b window.Value) bool { return a.Metric == b.Metric && a.Time.Equal(b.Time) })
	d.ignored += n - len(d.values)
	d.time = d.values[0].Time
	for _, v := range d.values {
		if v.Time.Before(d.time) {
			d.time = v.Time
		}
		if v.Time.Before(minEventTime) || v.Time.After(maxEventTime) {
			return d, &decodeError{ReasonBadTimestamp, fmt.Sprintf("senml: event time %s outside 1970..2106", v.Time.Format(time.RFC3339Nano))}
		}
	}
	return d, nil
}

// senmlTime resolves a SenML time in seconds.
func senmlTime(sec float64, recv time.Time, haveRecv bool) (time.Time, *decodeError) {
	if !finite(sec) || math.Abs(sec) > 9e9 { // time.Duration holds ±292 years
		return time.Time{}, &decodeError{ReasonBadTimestamp, fmt.Sprintf("senml: time %g out of range", sec)}
	}
	whole, frac := math.Modf(sec)
	d := time.Duration(whole)*time.Second + time.Duration(math.Round(frac*1e9))
	if sec >= senmlRelative {
		return time.Unix(0, 0).Add(d).UTC(), nil
	}
	if !haveRecv {
		return time.Time{}, &decodeError{ReasonBadTimestamp, "senml: relative time and no iot-received-at header"}
	}
	return recv.Add(d).UTC(), nil
}
