package processor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/iotpipe/iotpipe/processor/window"
)

// Dead-letter reasons, the value of the iot-reason header.
const (
	ReasonMalformedJSON   = "malformed_json"
	ReasonNoNumericValues = "no_numeric_values"
	ReasonBadTimestamp    = "bad_timestamp"
	ReasonTooLate         = "too_late"
	ReasonMissingDevice   = "missing_device"
)

// msThreshold splits numeric "ts" values: below it they are Unix seconds
// (up to the year 5138), at or above it Unix milliseconds (from 1973-03-03).
// Millisecond timestamps before 1973 are therefore misread; devices do not
// send those.
const msThreshold = 1e11

// Event times must fit ClickHouse's DateTime, which the window table uses.
var (
	minEventTime = time.Unix(0, 0).UTC()
	maxEventTime = time.Unix(math.MaxUint32, 0).UTC()
)

// decodeError is a payload the processor cannot use; reason goes to the
// dead-letter header.
type decodeError struct {
	reason, detail string
}

func (e *decodeError) Error() string { return e.reason + ": " + e.detail }

// decoded is one telemetry record's readings.
type decoded struct {
	time    time.Time      // event time of values without their own
	values  []window.Value // sorted by metric (then time), (metric, time) unique
	ignored int            // fields that were not numbers
}

// decode parses a telemetry payload (see decodeSlow); the processor keeps a
// decoder instead, which reuses its buffers.
func decode(payload []byte, mqttTopic string, receivedAt time.Time, haveReceived bool) (decoded, *decodeError) {
	return newDecoder().decode(payload, mqttTopic, receivedAt, haveReceived)
}

// decodeSlow parses a telemetry payload with encoding/json and defines what
// a payload means; decoder.fast must agree with it. mqttTopic is the MQTT
// topic it was published to (a bare number is accepted on
// /devices/D/events/<metric>), receivedAt the broker's receive time used
// when the payload has no "ts". A JSON array is a SenML pack (decodeSenML).
//
// Invariants (checked by FuzzDecode): it never panics; on success there is at
// least one value, the values are sorted by (metric, time) and each pair is
// unique, metric names are non-empty, values are finite, and every time lies
// within [1970-01-01, 2106-02-07]. Only SenML sets Value.Time (on every value).
func decodeSlow(payload []byte, mqttTopic string, receivedAt time.Time, haveReceived bool) (decoded, *decodeError) {
	var d decoded
	trimmed := bytes.TrimSpace(payload)
	if len(trimmed) > 0 && trimmed[0] == '[' {
		return decodeSenML(trimmed, receivedAt, haveReceived)
	}
	if len(trimmed) > 0 && trimmed[0] != '{' {
		metric := eventsMetric(mqttTopic)
		f, err := strconv.ParseFloat(string(trimmed), 64)
		if metric == "" || err != nil || math.IsInf(f, 0) || math.IsNaN(f) || !json.Valid(trimmed) {
			return d, &decodeError{ReasonMalformedJSON, "payload is not a JSON object"}
		}
		if !haveReceived {
			return d, &decodeError{ReasonBadTimestamp, "no ts and no iot-received-at header"}
		}
		d.time = receivedAt
		d.values = []window.Value{{Metric: metric, Value: f}}
		return d, checkTime(d)
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil || obj == nil {
		return d, &decodeError{ReasonMalformedJSON, errDetail(err)}
	}
	if dec.More() || dec.InputOffset() != int64(len(trimmed)) {
		return d, &decodeError{ReasonMalformedJSON, "trailing data after the JSON object"}
	}
	ts, hasTS := obj["ts"]
	delete(obj, "ts")
	d.flatten("", obj)
	d.sortUnique()
	switch {
	case hasTS:
		t, err := parseTS(ts)
		if err != nil {
			return d, &decodeError{ReasonBadTimestamp, err.Error()}
		}
		d.time = t
	case haveReceived:
		d.time = receivedAt
	default:
		return d, &decodeError{ReasonBadTimestamp, "no ts and no iot-received-at header"}
	}
	if len(d.values) == 0 {
		return d, &decodeError{ReasonNoNumericValues, fmt.Sprintf("no numeric fields (%d ignored)", d.ignored)}
	}
	return d, checkTime(d)
}

func errDetail(err error) string {
	if err == nil {
		return "payload is JSON null, not an object"
	}
	return err.Error()
}

func checkTime(d decoded) *decodeError {
	if d.time.Before(minEventTime) || d.time.After(maxEventTime) {
		return &decodeError{ReasonBadTimestamp, fmt.Sprintf("event time %s outside 1970..2106", d.time.Format(time.RFC3339Nano))}
	}
	return nil
}

// flatten walks the object in sorted key order so the values (and which of
// two colliding names wins, e.g. {"a.b":1,"a":{"b":2}}) do not depend on map
// iteration: a replay must decode a record identically.
func (d *decoded) flatten(prefix string, obj map[string]any) {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		name := k
		if prefix != "" {
			name = prefix + "." + k
		}
		switch v := obj[k].(type) {
		case map[string]any:
			d.flatten(name, v)
		case json.Number:
			f, err := v.Float64()
			if err != nil || k == "" {
				d.ignored++ // out of float64 range, or unnamed
				continue
			}
			d.values = append(d.values, window.Value{Metric: name, Value: f})
		default:
			d.ignored++
		}
	}
}

// sortUnique sorts the values by metric; of colliding names the first in
// traversal order wins and the others count as ignored.
func (d *decoded) sortUnique() {
	slices.SortStableFunc(d.values, func(a, b window.Value) int { return strings.Compare(a.Metric, b.Metric) })
	n := len(d.values)
	d.values = slices.CompactFunc(d.values, func(a, b window.Value) bool { return a.Metric == b.Metric })
	d.ignored += n - len(d.values)
}

func parseTS(v any) (time.Time, error) {
	switch ts := v.(type) {
	case json.Number:
		f, err := ts.Float64()
		if err != nil || f < 0 {
			return time.Time{}, fmt.Errorf("ts %q is not a non-negative number", ts)
		}
		if f >= msThreshold && f > float64(maxEventTime.UnixMilli()) {
			return time.Time{}, fmt.Errorf("ts %s is beyond 2106", ts)
		}
		return tsFromFloat(f), nil
	case string:
		t, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			return time.Time{}, fmt.Errorf("ts: %w", err)
		}
		return t.UTC(), nil
	default:
		return time.Time{}, fmt.Errorf("ts is %T, want a number or an RFC 3339 string", v)
	}
}

// tsFromFloat reads a non-negative numeric "ts" as Unix seconds below
// msThreshold, else as Unix milliseconds (at most 2106's).
func tsFromFloat(f float64) time.Time {
	if f < msThreshold {
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(math.Round(frac*1e9))).UTC()
	}
	ms, frac := math.Modf(f)
	return time.UnixMilli(int64(ms)).Add(time.Duration(math.Round(frac * 1e6))).UTC()
}

// eventsMetric returns the metric named by an /devices/D/events/<metric...>
// topic (slashes become dots, like nested objects), or "".
func eventsMetric(topic string) string {
	parts := strings.Split(strings.TrimPrefix(topic, "/"), "/")
	if len(parts) < 4 || parts[0] != "devices" || parts[2] != "events" {
		return ""
	}
	for _, p := range parts[3:] {
		if p == "" {
			return ""
		}
	}
	return strings.Join(parts[3:], ".")
}
