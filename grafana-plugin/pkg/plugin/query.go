package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Query types of the query model.
const (
	QueryTypeTimeseries = "timeseries"
	QueryTypeSummary    = "summary"
)

// CurrentSchemaVersion is the query model version this backend writes about;
// older models are migrated on read because alert rules keep them unchanged.
const CurrentSchemaVersion = 1

// Aggregates the API can compute, in the order the editor offers them.
var Aggregates = []string{"mean", "max", "min", "count", "sum"}

// Query is one Grafana query of this datasource (the shared query model).
type Query struct {
	SchemaVersion int      `json:"schemaVersion"`
	QueryType     string   `json:"queryType"`
	Devices       []string `json:"devices"`
	LabelSelector string   `json:"labelSelector"`
	Metric        string   `json:"metric"`
	Aggregates    []string `json:"aggregates"`
	WindowSeconds int64    `json:"windowSeconds"`
	Fleet         bool     `json:"fleet"`
	Unit          string   `json:"unit"`
}

// legacyQuery holds the fields of schemaVersion 0, before the contract.
type legacyQuery struct {
	Device    string `json:"device"`
	Aggregate string `json:"aggregate"`
}

// errBadQuery marks a query the user must fix (a downstream 400).
var errBadQuery = errors.New("bad query")

func badQuery(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errBadQuery}, args...)...)
}

// ParseQuery decodes raw query JSON, migrates schemaVersion 0 and validates
// and normalises the result. queryType is DataQuery.QueryType, which Grafana
// sends beside the JSON and which wins when the JSON has none.
func ParseQuery(raw []byte, queryType string) (Query, error) {
	var q Query
	if err := json.Unmarshal(raw, &q); err != nil {
		return Query{}, badQuery("query is not valid JSON of this datasource: %v", err)
	}
	if q.SchemaVersion < 0 || q.SchemaVersion > CurrentSchemaVersion {
		return Query{}, badQuery("schemaVersion %d is not supported (this plugin reads 0 to %d); update the plugin", q.SchemaVersion, CurrentSchemaVersion)
	}
	if q.SchemaVersion == 0 {
		var old legacyQuery
		if err := json.Unmarshal(raw, &old); err != nil {
			return Query{}, badQuery("query is not valid JSON of this datasource: %v", err)
		}
		if len(q.Devices) == 0 && old.Device != "" {
			q.Devices = []string{old.Device}
		}
		if len(q.Aggregates) == 0 && old.Aggregate != "" {
			q.Aggregates = []string{old.Aggregate}
		}
		q.SchemaVersion = CurrentSchemaVersion
	}
	if q.QueryType == "" {
		q.QueryType = queryType
	}
	if q.QueryType == "" {
		q.QueryType = QueryTypeTimeseries
	}
	if err := q.normalise(); err != nil {
		return Query{}, err
	}
	return q, nil
}

func (q *Query) normalise() error {
	if q.QueryType != QueryTypeTimeseries && q.QueryType != QueryTypeSummary {
		return badQuery("queryType %q: want %q or %q", q.QueryType, QueryTypeTimeseries, QueryTypeSummary)
	}
	q.Metric = strings.TrimSpace(q.Metric)
	if q.Metric == "" {
		return badQuery("metric is required")
	}
	q.Devices = dedupe(trimAll(q.Devices))
	q.LabelSelector = strings.TrimSpace(q.LabelSelector)
	if len(q.Devices) == 0 && q.LabelSelector == "" {
		return badQuery("choose at least one device (or \"*\" for all, or a label selector)")
	}
	if _, err := ParseLabelSelector(q.LabelSelector); err != nil {
		return err
	}
	q.Aggregates = dedupe(trimAll(q.Aggregates))
	if len(q.Aggregates) == 0 {
		q.Aggregates = []string{"mean"}
	}
	for _, a := range q.Aggregates {
		if !slices.Contains(Aggregates, a) {
			return badQuery("aggregate %q: want one of %s", a, strings.Join(Aggregates, ", "))
		}
	}
	if q.WindowSeconds < 0 {
		return badQuery("windowSeconds %d must be 0 (auto) or a stored window size", q.WindowSeconds)
	}
	if q.QueryType != QueryTypeSummary {
		q.Fleet = false // only summaries combine devices
	}
	return nil
}

func trimAll(ss []string) []string {
	out := ss[:0:0]
	for _, s := range ss {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// dedupe keeps the first occurrence of each string, in order.
func dedupe(ss []string) []string {
	seen := make(map[string]bool, len(ss))
	out := ss[:0:0]
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// ParseLabelSelector splits "site=a,floor=2" into ["site=a", "floor=2"], the
// form of the API's repeated label parameter. Empty means no selector.
func ParseLabelSelector(s string) ([]string, error) {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return nil, badQuery("label selector %q: want key=value pairs separated by commas", s)
		}
		out = append(out, k+"="+v)
	}
	return out, nil
}

// StepChoice is the outcome of the step rule for a time series query.
type StepChoice struct {
	Window int64  // stored window size to read, seconds
	Step   int64  // bucket size, seconds, a multiple of Window
	Notice string // set when the step had to be rounded up to the finest window
}

// ChooseStep applies the step rule of the contract. step0 = max(interval,
// span/maxDataPoints, span/maxPoints); the window is the explicit one (which
// must be stored) or the coarsest stored size ≤ step0, else the finest; the
// step is step0 rounded up to a multiple of the window. sizes are the stored
// window sizes in seconds; maxPoints is the API's limit (0 = none).
func ChooseStep(span, interval time.Duration, maxDataPoints int64, sizes []int64, windowSeconds int64, maxPoints int) (StepChoice, error) {
	if len(sizes) == 0 {
		return StepChoice{}, errors.New("the iotpipe API reported no stored window sizes")
	}
	sorted := slices.Clone(sizes)
	slices.Sort(sorted)
	if maxDataPoints <= 0 {
		maxDataPoints = 1000 // Grafana always sends one; this is only for hand-made requests
	}
	step0 := max(interval, span/time.Duration(maxDataPoints))
	if maxPoints > 0 {
		// Never ask for more buckets than the API serves (alert rules may ask
		// for tens of thousands of points).
		step0 = max(step0, span/time.Duration(maxPoints))
	}
	var c StepChoice
	switch {
	case windowSeconds > 0:
		if !slices.Contains(sorted, windowSeconds) {
			return StepChoice{}, badQuery("windowSeconds %d is not a stored window size; stored: %s", windowSeconds, FormatSizes(sorted))
		}
		c.Window = windowSeconds
	default:
		c.Window = sorted[0]
		for _, s := range sorted {
			if time.Duration(s)*time.Second <= step0 {
				c.Window = s
			}
		}
		if time.Duration(c.Window)*time.Second > step0 {
			c.Notice = fmt.Sprintf("step rounded up to the finest stored window, %ds", c.Window)
		}
	}
	w := time.Duration(c.Window) * time.Second
	n := max(1, int64((step0+w-1)/w))
	c.Step = n * c.Window
	if maxPoints > 0 && span > 0 {
		// Integer rounding of step0 can still leave one bucket too many.
		for span/(time.Duration(c.Step)*time.Second) > time.Duration(maxPoints) {
			c.Step += c.Window
		}
	}
	return c, nil
}

// FormatSizes renders window sizes as "10s, 1m" for messages.
func FormatSizes(secs []int64) string {
	parts := make([]string, len(secs))
	for i, s := range secs {
		parts[i] = FormatSeconds(s)
	}
	return strings.Join(parts, ", ")
}

// FormatSeconds renders whole seconds in the largest exact unit: 10s, 1m, 2h, 1d.
func FormatSeconds(s int64) string {
	switch {
	case s != 0 && s%86400 == 0:
		return strconv.FormatInt(s/86400, 10) + "d"
	case s != 0 && s%3600 == 0:
		return strconv.FormatInt(s/3600, 10) + "h"
	case s != 0 && s%60 == 0:
		return strconv.FormatInt(s/60, 10) + "m"
	}
	return strconv.FormatInt(s, 10) + "s"
}

// UnitFor is the Grafana unit of an aggregate of metric: the override if
// set, "none" for counts, else one guessed from the metric name.
func UnitFor(metric, aggregate, override string) string {
	if aggregate == "count" {
		return "none"
	}
	if override != "" {
		return override
	}
	m := strings.ToLower(metric)
	for _, u := range []struct{ sub, unit string }{
		{"temperature", "celsius"},
		{"humidity", "humidity"},
		{"pressure", "pressurehpa"},
		{"voltage", "volt"},
		{"battery", "percent"},
	} {
		if strings.Contains(m, u.sub) {
			return u.unit
		}
	}
	return ""
}

// CombineFleet combines per-device values of one aggregate into the fleet's
// value exactly as if computed over all readings: mean = Σ(value·count)/Σcount,
// max of maxes, min of mins, Σ counts, Σ sums. ok is false without data.
func CombineFleet(aggregate string, vals []DeviceValue) (v float64, ok bool) {
	var n uint64
	var acc float64
	switch aggregate {
	case "max":
		acc = math.Inf(-1)
	case "min":
		acc = math.Inf(1)
	}
	for _, dv := range vals {
		if dv.Count == 0 {
			continue
		}
		n += dv.Count
		switch aggregate {
		case "mean":
			acc += dv.Value * float64(dv.Count)
		case "max":
			acc = max(acc, dv.Value)
		case "min":
			acc = min(acc, dv.Value)
		case "count", "sum":
			acc += dv.Value
		}
	}
	if n == 0 {
		return 0, false
	}
	if aggregate == "mean" {
		acc /= float64(n)
	}
	return acc, true
}
