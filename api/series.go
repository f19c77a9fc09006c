package api

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/iotpipe/iotpipe/registry"
	"github.com/iotpipe/iotpipe/storage"
)

type Point struct {
	Time  time.Time `json:"time"`
	Value float64   `json:"value"`
	Count uint64    `json:"count"`
}

type Series struct {
	Device      string    `json:"device"`
	Metric      string    `json:"metric"`
	Aggregate   string    `json:"aggregate"`
	From        time.Time `json:"from"`
	To          time.Time `json:"to"`
	StepSeconds float64   `json:"step_seconds"`
	// WindowSeconds is the stored window size the series was computed from.
	WindowSeconds float64 `json:"window_seconds"`
	Points        []Point `json:"points"`
}

func (s *Server) series(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	device, metric := q.Get("device"), q.Get("metric")
	if device == "" || metric == "" {
		writeError(w, http.StatusBadRequest, "bad_request", "device and metric are required")
		return
	}
	agg, from, to, err := s.rangeParams(q)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	step, err := s.stepParam(q.Get("step"), from, to)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	want, err := windowParam(q)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	size, err := s.cfg.Store.WindowSize(step, want)
	if err != nil {
		s.storageError(w, err)
		return
	}
	if n := to.Sub(from) / step; int(n) > s.cfg.MaxPoints {
		writeError(w, http.StatusBadRequest, "too_many_points",
			fmt.Sprintf("range/step gives %d points, more than the limit %d: use a larger step", n, s.cfg.MaxPoints))
		return
	}
	points, err := s.cfg.Store.Series(r.Context(), storage.SeriesQuery{
		Device: device, Metric: metric, Aggregate: agg, From: from, To: to, Step: step, WindowSize: size,
	})
	if err != nil {
		s.storageError(w, err)
		return
	}
	// An empty answer for a device the registry never heard of is most
	// likely a typo: say so. A deleted device's history still answers.
	if len(points) == 0 {
		if _, err := s.cfg.Registry.Get(device); errors.Is(err, registry.ErrNotFound) {
			writeError(w, http.StatusNotFound, "unknown_device",
				fmt.Sprintf("device %q is not registered and has no data in this range", device))
			return
		}
	}
	out := make([]Point, 0, len(points))
	for _, p := range points {
		out = append(out, Point{Time: p.Time.UTC(), Value: p.Value, Count: p.Count})
	}
	writeJSON(w, http.StatusOK, Series{
		Device: device, Metric: metric, Aggregate: string(agg), From: from, To: to,
		StepSeconds: step.Seconds(), WindowSeconds: size.Seconds(), Points: out,
	})
}

type Summary struct {
	Metric    string        `json:"metric"`
	Aggregate string        `json:"aggregate"`
	From      time.Time     `json:"from"`
	To        time.Time     `json:"to"`
	Devices   []DeviceValue `json:"devices"`
}

type DeviceValue struct {
	Device string  `json:"device"`
	Value  float64 `json:"value"`
	Count  uint64  `json:"count"`
}

func (s *Server) summary(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	metric := q.Get("metric")
	if metric == "" {
		writeError(w, http.StatusBadRequest, "bad_request", "metric is required")
		return
	}
	agg, from, to, err := s.rangeParams(q)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	size, err := windowParam(q)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	vals, err := s.cfg.Store.Summary(r.Context(), storage.SummaryQuery{
		Metric: metric, Aggregate: agg, From: from, To: to, Devices: q["device"], WindowSize: size,
	})
	if err != nil {
		s.storageError(w, err)
		return
	}
	out := make([]DeviceValue, 0, len(vals))
	for _, v := range vals {
		out = append(out, DeviceValue{Device: v.Device, Value: v.Value, Count: v.Count})
	}
	writeJSON(w, http.StatusOK, Summary{Metric: metric, Aggregate: string(agg), From: from, To: to, Devices: out})
}

func (s *Server) storageError(w http.ResponseWriter, err error) {
	if errors.Is(err, storage.ErrBadStep) || errors.Is(err, storage.ErrBadAggregate) {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	s.cfg.Logger.Error().Err(err).Msg("storage query failed")
	writeError(w, http.StatusServiceUnavailable, "unavailable", "storage unavailable: "+err.Error())
}

// rangeParams reads aggregate (default mean), from (default now-1h) and to
// (default now).
func (s *Server) rangeParams(q url.Values) (storage.Aggregate, time.Time, time.Time, error) {
	agg := storage.Aggregate(q.Get("aggregate"))
	switch agg {
	case "":
		agg = storage.Mean
	case storage.Mean, storage.Max, storage.Min, storage.Count, storage.Sum:
	default:
		return "", time.Time{}, time.Time{}, fmt.Errorf("aggregate %q: want mean, max, min, count or sum", agg)
	}
	now := time.Now().UTC()
	from, err := parseTime(q.Get("from"), now, now.Add(-time.Hour))
	if err != nil {
		return "", time.Time{}, time.Time{}, fmt.Errorf("from: %w", err)
	}
	to, err := parseTime(q.Get("to"), now, now)
	if err != nil {
		return "", time.Time{}, time.Time{}, fmt.Errorf("to: %w", err)
	}
	if !from.Before(to) {
		return "", time.Time{}, time.Time{}, fmt.Errorf("from (%s) must be before to (%s)", from.Format(time.RFC3339), to.Format(time.RFC3339))
	}
	return agg, from, to, nil
}

// stepParam parses a step ("1m", "90s" or plain seconds). Without one it picks
// the smallest multiple of the finest window size giving at most 1000 points.
func (s *Server) stepParam(v string, from, to time.Time) (time.Duration, error) {
	finest := s.cfg.WindowSizes[0]
	if v == "" {
		n := to.Sub(from)/(1000*finest) + 1
		return n * finest, nil
	}
	return parseDuration("step", v)
}

// windowParam reads the optional "window" parameter: a stored window size
// to read (0 when absent).
func windowParam(q url.Values) (time.Duration, error) {
	v := q.Get("window")
	if v == "" {
		return 0, nil
	}
	return parseDuration("window", v)
}

// parseDuration reads "1m", "90s" or plain seconds ("120"); it must be
// positive.
func parseDuration(name, v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		secs, perr := strconv.ParseFloat(v, 64)
		if perr != nil || math.IsNaN(secs) || math.IsInf(secs, 0) || math.Abs(secs) > 1e12 {
			return 0, fmt.Errorf("%s %q: want a duration like 1m or a number of seconds", name, v)
		}
		d = time.Duration(secs * float64(time.Second))
	}
	if d <= 0 {
		return 0, fmt.Errorf("%s %q must be positive", name, v)
	}
	return d, nil
}

// parseAgo reads Go durations plus the day and week units Grafana users
// type: "30d", "2w", "1d12h".
func parseAgo(v string) (time.Duration, error) {
	if v == "" {
		return 0, errors.New("missing duration")
	}
	var total time.Duration
	for _, unit := range []struct {
		suffix string
		d      time.Duration
	}{{"w", 7 * 24 * time.Hour}, {"d", 24 * time.Hour}} {
		if i := strings.Index(v, unit.suffix); i > 0 {
			n, err := strconv.ParseUint(v[:i], 10, 16)
			if err != nil {
				return 0, fmt.Errorf("bad number of %s in %q", unit.suffix, v)
			}
			total += time.Duration(n) * unit.d
			v = v[i+1:]
		}
	}
	if v == "" {
		return total, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, err
	}
	return total + d, nil
}

// parseTime accepts RFC 3339, Unix seconds or milliseconds, "now" and
// "now-<duration>" (as Grafana and Prometheus users type them).
func parseTime(v string, now, def time.Time) (time.Time, error) {
	switch {
	case v == "":
		return def, nil
	case v == "now":
		return now, nil
	case strings.HasPrefix(v, "now-"):
		d, err := parseAgo(v[len("now-"):])
		if err != nil {
			return time.Time{}, fmt.Errorf("%q: %w", v, err)
		}
		return now.Add(-d), nil
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		// Below 1e11 a number is seconds (that is until year 5138); above, milliseconds.
		if n < 1e11 && n > -1e11 {
			return time.Unix(n, 0).UTC(), nil
		}
		return time.UnixMilli(n).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q: want RFC 3339, Unix seconds/milliseconds or now-<duration>", v)
	}
	return t.UTC(), nil
}
