package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grafana/grafana-plugin-sdk-go/backend"
	"github.com/grafana/grafana-plugin-sdk-go/data"
	"github.com/grafana/grafana-plugin-sdk-go/genproto/pluginv2"
)

// fixture is one iotpipe pipeline with known readings and one plugin
// process, shared by the integration tests (starting them takes seconds).
type fixture struct {
	p        *pipeline
	pp       *pluginProc
	ds       backend.DataSourceInstanceSettings // read-only token
	from, to time.Time                          // the readings' range, aligned to 10 minutes
	readings []reading
	tokens   map[string]string
}

var (
	fxOnce sync.Once
	fx     *fixture
)

// Devices of the fixture: three with readings, one registered without data,
// and one the streaming test publishes to.
var fixtureDevices = []struct {
	id     string
	labels map[string]string
}{
	{"dev-a", map[string]string{"site": "a"}},
	{"dev-b", map[string]string{"site": "a", "floor": "2"}},
	{"dev-c", map[string]string{"site": "b"}},
	{"dev-idle", map[string]string{"site": "c"}},
	{"dev-live", map[string]string{"site": "live"}},
}

// eighths rounds to a multiple of 1/8, so sums of readings are exact in
// float64 whatever the order, and every aggregate can be compared exactly.
func eighths(v float64) float64 { return math.Round(v*8) / 8 }

func getFixture(t *testing.T) *fixture {
	t.Helper()
	requireChDB(t)
	buildBinaries(t)
	fxOnce.Do(func() {
		p, err := startPipeline(t)
		if err != nil {
			t.Fatal(err)
		}
		pp, err := startPlugin(t)
		if err != nil {
			t.Fatal(err)
		}
		f := &fixture{p: p, pp: pp, ds: dsSettings("iotpipe-main", p.url, p.readToken), tokens: map[string]string{}}
		for _, d := range fixtureDevices {
			f.tokens[d.id] = p.createDevice(t, d.id, d.labels)
		}
		// 30-40 minutes ago: far behind the streaming test's look-back.
		f.from = time.Now().UTC().Truncate(10 * time.Minute).Add(-40 * time.Minute)
		f.to = f.from.Add(10 * time.Minute)
		for d, dev := range []string{"dev-a", "dev-b", "dev-c"} {
			for i := range 85 {
				at := f.from.Add(time.Duration(i)*7*time.Second + time.Duration(d)*1300*time.Millisecond)
				f.readings = append(f.readings,
					reading{dev, "temperature", at, eighths(20 + float64(d) + 5*math.Sin(float64(i)/3))},
					reading{dev, "humidity", at, eighths(40 + 3*float64(d) + 10*math.Cos(float64(i)/5))})
			}
		}
		p.publish(t, f.tokens, f.readings)
		p.waitStored(t, f.readings, f.from, f.to)
		fx = f
	})
	if fx == nil {
		t.Fatal("the shared fixture failed to start in an earlier test")
	}
	return fx
}

// agg is a brute-force aggregate of readings.
type agg struct {
	n             uint64
	sum, min, max float64
}

func (a agg) add(v float64) agg {
	if a.n == 0 {
		a.min, a.max = v, v
	}
	a.n++
	a.sum += v
	a.min, a.max = min(a.min, v), max(a.max, v)
	return a
}

func (a agg) value(aggregate string) float64 {
	switch aggregate {
	case "count":
		return float64(a.n)
	case "sum":
		return a.sum
	case "min":
		return a.min
	case "max":
		return a.max
	}
	return a.sum / float64(a.n)
}

// inProcess is a datasource instance of the fixture in this process,
// disposed when the test ends.
func (f *fixture) inProcess(t *testing.T) *Datasource {
	t.Helper()
	inst, err := NewDatasource(context.Background(), f.ds)
	if err != nil {
		t.Fatal(err)
	}
	d := inst.(*Datasource)
	t.Cleanup(d.Dispose)
	return d
}

// buckets is the brute-force series of device/metric at step (epoch-aligned
// buckets, as iotpipe's), ordered by time.
func (f *fixture) buckets(device, metric string, step time.Duration) ([]time.Time, map[time.Time]agg) {
	m := map[time.Time]agg{}
	for _, r := range f.readings {
		if r.device == device && r.metric == metric && !r.at.Before(f.from) && r.at.Before(f.to) {
			k := r.at.Truncate(step)
			m[k] = m[k].add(r.value)
		}
	}
	keys := make([]time.Time, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Before(keys[j]) })
	return keys, m
}

func (f *fixture) total(device, metric string) agg {
	var a agg
	for _, r := range f.readings {
		if r.device == device && r.metric == metric {
			a = a.add(r.value)
		}
	}
	return a
}

func (f *fixture) dq(refID string, model any, mod ...func(*backend.DataQuery)) backend.DataQuery {
	b, err := json.Marshal(model)
	if err != nil {
		panic(err)
	}
	q := backend.DataQuery{RefID: refID, JSON: b, MaxDataPoints: 1000, Interval: time.Second,
		TimeRange: backend.TimeRange{From: f.from, To: f.to}}
	for _, m := range mod {
		m(&q)
	}
	return q
}

func maxPoints(n int64) func(*backend.DataQuery) {
	return func(q *backend.DataQuery) { q.MaxDataPoints = n }
}

// checkSeries asserts one frame per (device, aggregate) in that order, with
// every bucket equal to the brute-force aggregate.
func (f *fixture) checkSeries(t *testing.T, r backend.DataResponse, devices []string, metric string, aggs []string, step time.Duration, window int64, unit string) {
	t.Helper()
	if r.Error != nil {
		t.Fatalf("unexpected error %d: %v", r.Status, r.Error)
	}
	if len(r.Frames) != len(devices)*len(aggs) {
		t.Fatalf("%d frames, want %d (%v × %v)", len(r.Frames), len(devices)*len(aggs), devices, aggs)
	}
	for i, dev := range devices {
		keys, want := f.buckets(dev, metric, step)
		for j, a := range aggs {
			fr := r.Frames[i*len(aggs)+j]
			name := dev + " " + a
			if fr.Name != dev || len(fr.Fields) != 2 || fr.Fields[0].Name != "time" || fr.Fields[1].Name != "value" {
				t.Fatalf("%s: frame %q with %d fields", name, fr.Name, len(fr.Fields))
			}
			v := fr.Fields[1]
			wantUnit := unit
			if a == "count" {
				wantUnit = "none"
			}
			if v.Config == nil || v.Config.DisplayNameFromDS != name || v.Config.Unit != wantUnit {
				t.Errorf("%s: config %+v, want display name %q unit %q", name, v.Config, name, wantUnit)
			}
			if wl := (data.Labels{"device": dev, "metric": metric, "aggregate": a}); !reflect.DeepEqual(v.Labels, wl) {
				t.Errorf("%s: labels %v, want %v", name, v.Labels, wl)
			}
			if fr.Meta == nil || fr.Meta.Type != data.FrameTypeTimeSeriesMulti ||
				!strings.Contains(fr.Meta.ExecutedQueryString, fmt.Sprintf("step=%d&to=", int64(step/time.Second))) ||
				!strings.Contains(fr.Meta.ExecutedQueryString, fmt.Sprintf("window=%d", window)) ||
				!strings.HasPrefix(fr.Meta.ExecutedQueryString, "/api/v1/series?") {
				t.Errorf("%s: meta %+v, want timeseries-multi from /api/v1/series step %v window %d", name, fr.Meta, step, window)
			}
			if fr.Rows() != len(keys) {
				t.Fatalf("%s step %v: %d rows, want %d", name, step, fr.Rows(), len(keys))
			}
			for k, at := range keys {
				gotT := fr.Fields[0].At(k).(time.Time)
				gotV := v.At(k).(float64)
				if !gotT.Equal(at) || gotV != want[at].value(a) {
					t.Errorf("%s row %d: %s %v, want %s %v", name, k, gotT.Format(time.RFC3339), gotV, at.Format(time.RFC3339), want[at].value(a))
				}
			}
		}
	}
}

func notices(r backend.DataResponse) []string {
	var out []string
	for _, f := range r.Frames {
		if f.Meta != nil {
			for _, n := range f.Meta.Notices {
				out = append(out, n.Text)
			}
		}
	}
	return out
}

// TestQueryTimeseries runs the step rule end to end: auto windows (finest
// with a notice; the coarsest that fits), an explicit finer window that must
// re-aggregate to the same values, label selectors, "*" and the legacy model,
// all in one request (queries run concurrently) and all exact.
func TestQueryTimeseries(t *testing.T) {
	f := getFixture(t)
	all := []string{"mean", "max", "min", "count", "sum"}
	resp := f.pp.query(t, f.ds,
		// 10 min / 1000 points = 0.6s: below the finest window.
		f.dq("fine", map[string]any{"schemaVersion": 1, "devices": []string{"dev-a", "dev-b"}, "metric": "temperature", "aggregates": all}),
		// 10 min / 5 points = 120s: the 1m windows, step 2m.
		f.dq("coarse", map[string]any{"schemaVersion": 1, "devices": []string{"dev-c"}, "metric": "humidity", "aggregates": all}, maxPoints(5)),
		// Same step from the 10s windows: identical values.
		f.dq("explicit", map[string]any{"schemaVersion": 1, "devices": []string{"dev-c"}, "metric": "humidity", "aggregates": all, "windowSeconds": 10}, maxPoints(5)),
		f.dq("selector", map[string]any{"schemaVersion": 1, "labelSelector": "site=a", "metric": "humidity", "aggregates": []string{"max"}}, maxPoints(10)),
		f.dq("selector2", map[string]any{"schemaVersion": 1, "devices": []string{"dev-c"}, "labelSelector": "site=a,floor=2", "metric": "temperature"}, maxPoints(10)),
		f.dq("legacy", map[string]any{"device": "dev-b", "metric": "temperature", "aggregate": "min"}, maxPoints(20)),
		f.dq("unit", map[string]any{"schemaVersion": 1, "devices": []string{"dev-a"}, "metric": "temperature", "aggregates": []string{"mean", "count"}, "unit": "fahrenheit"}, maxPoints(10)),
	)
	if len(resp.Responses) != 7 {
		t.Fatalf("%d responses, want 7", len(resp.Responses))
	}
	f.checkSeries(t, resp.Responses["fine"], []string{"dev-a", "dev-b"}, "temperature", all, 10*time.Second, 10, "celsius")
	if got := notices(resp.Responses["fine"]); !reflect.DeepEqual(got, []string{"step rounded up to the finest stored window, 10s"}) {
		t.Errorf("fine: notices %q", got)
	}
	f.checkSeries(t, resp.Responses["coarse"], []string{"dev-c"}, "humidity", all, 2*time.Minute, 60, "humidity")
	f.checkSeries(t, resp.Responses["explicit"], []string{"dev-c"}, "humidity", all, 2*time.Minute, 10, "humidity")
	if got := notices(resp.Responses["coarse"]); len(got) != 0 {
		t.Errorf("coarse: unexpected notices %q", got)
	}
	f.checkSeries(t, resp.Responses["selector"], []string{"dev-a", "dev-b"}, "humidity", []string{"max"}, time.Minute, 60, "humidity")
	f.checkSeries(t, resp.Responses["selector2"], []string{"dev-c", "dev-b"}, "temperature", []string{"mean"}, time.Minute, 60, "celsius")
	f.checkSeries(t, resp.Responses["legacy"], []string{"dev-b"}, "temperature", []string{"min"}, 30*time.Second, 10, "celsius")
	f.checkSeries(t, resp.Responses["unit"], []string{"dev-a"}, "temperature", []string{"mean", "count"}, time.Minute, 60, "fahrenheit")
}

// TestQueryAllDevicesAndEmpty: "*" lists every registered device (sorted),
// and no data (a device without readings, an unknown metric, a range before
// any reading) gives frames with zero rows, not errors.
func TestQueryAllDevicesAndEmpty(t *testing.T) {
	f := getFixture(t)
	resp := f.pp.query(t, f.ds,
		f.dq("all", map[string]any{"schemaVersion": 1, "devices": []string{"*"}, "metric": "temperature", "aggregates": []string{"count"}}, maxPoints(10)),
		f.dq("metric", map[string]any{"schemaVersion": 1, "devices": []string{"dev-a"}, "metric": "no-such-metric"}),
		f.dq("range", map[string]any{"schemaVersion": 1, "devices": []string{"dev-a"}, "metric": "temperature"}, func(q *backend.DataQuery) {
			q.TimeRange = backend.TimeRange{From: f.from.Add(-48 * time.Hour), To: f.from.Add(-24 * time.Hour)}
		}),
		f.dq("nomatch", map[string]any{"schemaVersion": 1, "labelSelector": "site=nowhere", "metric": "temperature"}),
	)
	r := resp.Responses["all"]
	if r.Error != nil {
		t.Fatal(r.Error)
	}
	var names []string
	for _, fr := range r.Frames {
		names = append(names, fr.Name)
	}
	if want := []string{"dev-a", "dev-b", "dev-c", "dev-idle", "dev-live"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("frames for %v, want %v", names, want)
	}
	f.checkSeries(t, backend.DataResponse{Frames: r.Frames[:3]}, []string{"dev-a", "dev-b", "dev-c"}, "temperature", []string{"count"}, time.Minute, 60, "")
	for _, fr := range r.Frames[3:] {
		if fr.Rows() != 0 {
			t.Errorf("%s: %d rows, want none", fr.Name, fr.Rows())
		}
	}
	for _, ref := range []string{"metric", "range"} {
		r := resp.Responses[ref]
		if r.Error != nil || len(r.Frames) != 1 || r.Frames[0].Rows() != 0 || len(r.Frames[0].Fields) != 2 {
			t.Errorf("%s: want one empty frame, got error %v, %d frames", ref, r.Error, len(r.Frames))
		}
	}
	if r := resp.Responses["nomatch"]; r.Error != nil || len(r.Frames) != 0 {
		t.Errorf("nomatch: want no frames, got error %v, %d frames", r.Error, len(r.Frames))
	}
}

// TestQuerySummary compares per-device summaries and the fleet row with
// aggregates over all published readings.
func TestQuerySummary(t *testing.T) {
	f := getFixture(t)
	all := []string{"mean", "max", "min", "count", "sum"}
	resp := f.pp.query(t, f.ds,
		f.dq("per", map[string]any{"schemaVersion": 1, "queryType": "summary", "devices": []string{"*"}, "metric": "temperature", "aggregates": all}),
		f.dq("fleet", map[string]any{"schemaVersion": 1, "queryType": "summary", "labelSelector": "site=a", "metric": "humidity", "aggregates": all, "fleet": true}),
		f.dq("two", map[string]any{"schemaVersion": 1, "queryType": "summary", "devices": []string{"dev-c", "dev-a", "dev-idle"}, "metric": "humidity"}),
		f.dq("none", map[string]any{"schemaVersion": 1, "queryType": "summary", "labelSelector": "site=nowhere", "metric": "humidity"}),
	)
	check := func(ref, metric string, aggs []string, rows []string, want func(row int, a string) float64, exact bool) {
		t.Helper()
		r := resp.Responses[ref]
		if r.Error != nil {
			t.Fatalf("%s: %v", ref, r.Error)
		}
		if len(r.Frames) != 1 {
			t.Fatalf("%s: %d frames, want 1", ref, len(r.Frames))
		}
		fr := r.Frames[0]
		if fr.Name != metric || len(fr.Fields) != 1+len(aggs) || fr.Fields[0].Name != "device" || fr.Rows() != len(rows) {
			t.Fatalf("%s: frame %q fields %d rows %d, want %q 1+%d %d", ref, fr.Name, len(fr.Fields), fr.Rows(), metric, len(aggs), len(rows))
		}
		if len(rows) > 0 && (fr.Meta == nil || !strings.Contains(fr.Meta.ExecutedQueryString, "/api/v1/summary?")) {
			t.Errorf("%s: meta %+v", ref, fr.Meta)
		}
		for i, row := range rows {
			if got := fr.Fields[0].At(i).(string); got != row {
				t.Errorf("%s row %d: device %q, want %q", ref, i, got, row)
			}
		}
		for j, a := range aggs {
			fld := fr.Fields[1+j]
			wantUnit := UnitFor(metric, a, "")
			if fld.Name != a || fld.Config == nil || fld.Config.DisplayNameFromDS != a+" "+metric || fld.Config.Unit != wantUnit {
				t.Errorf("%s: field %q config %+v", ref, fld.Name, fld.Config)
			}
			for i := range rows {
				got, w := fld.At(i).(float64), want(i, a)
				if (exact && got != w) || (!exact && !near(got, w)) {
					t.Errorf("%s %s %s: %v, want %v", ref, rows[i], a, got, w)
				}
			}
		}
	}
	rows := []string{"dev-a", "dev-b", "dev-c"}
	check("per", "temperature", all, rows, func(i int, a string) float64 { return f.total(rows[i], "temperature").value(a) }, true)
	check("fleet", "humidity", all, []string{"fleet"}, func(_ int, a string) float64 {
		var t agg
		for _, r := range f.readings {
			if r.metric == "humidity" && (r.device == "dev-a" || r.device == "dev-b") {
				t = t.add(r.value)
			}
		}
		return t.value(a)
	}, false)
	two := []string{"dev-c", "dev-a"} // query order; dev-idle has no data
	check("two", "humidity", []string{"mean"}, two, func(i int, a string) float64 { return f.total(two[i], "humidity").value(a) }, true)
	check("none", "humidity", []string{"mean"}, nil, nil, true)
}

// TestQueryErrors: user mistakes and API refusals are downstream errors with
// a clear message, one per query, and never take down the other queries or
// the plugin.
func TestQueryErrors(t *testing.T) {
	f := getFixture(t)
	raw := func(refID, js string) backend.DataQuery {
		q := f.dq(refID, nil)
		q.JSON = []byte(js)
		return q
	}
	resp := f.pp.query(t, f.ds,
		f.dq("device", map[string]any{"schemaVersion": 1, "devices": []string{"dev-a", "no-such-device"}, "metric": "temperature"}),
		f.dq("window", map[string]any{"schemaVersion": 1, "devices": []string{"dev-a"}, "metric": "temperature", "windowSeconds": 30}),
		raw("json", `{"schemaVersion":1,"devices":["dev-a"],`),
		f.dq("aggregate", map[string]any{"schemaVersion": 1, "devices": []string{"dev-a"}, "metric": "temperature", "aggregates": []string{"p99"}}),
		f.dq("nometric", map[string]any{"schemaVersion": 1, "devices": []string{"dev-a"}}),
		f.dq("selector", map[string]any{"schemaVersion": 1, "labelSelector": "site", "metric": "temperature"}),
		f.dq("range", map[string]any{"schemaVersion": 1, "devices": []string{"dev-a"}, "metric": "temperature"}, func(q *backend.DataQuery) {
			q.TimeRange.From = q.TimeRange.To
		}),
		f.dq("ok", map[string]any{"schemaVersion": 1, "devices": []string{"dev-a"}, "metric": "temperature"}),
	)
	for ref, want := range map[string]struct {
		status backend.Status
		msg    string
	}{
		"device":    {backend.StatusNotFound, `device "no-such-device"`},
		"window":    {backend.StatusBadRequest, "windowSeconds 30 is not a stored window size; stored: 10s, 1m"},
		"json":      {backend.StatusBadRequest, "query is not valid JSON"},
		"aggregate": {backend.StatusBadRequest, `aggregate "p99": want one of mean, max, min, count, sum`},
		"nometric":  {backend.StatusBadRequest, "metric is required"},
		"selector":  {backend.StatusBadRequest, `label selector "site"`},
		"range":     {backend.StatusBadRequest, "the time range is empty"},
	} {
		r := resp.Responses[ref]
		if r.Error == nil || r.Status != want.status || r.ErrorSource != backend.ErrorSourceDownstream || !strings.Contains(r.Error.Error(), want.msg) {
			t.Errorf("%s: got status %d source %q error %v; want %d downstream containing %q", ref, r.Status, r.ErrorSource, r.Error, want.status, want.msg)
		}
	}
	if r := resp.Responses["ok"]; r.Error != nil || len(r.Frames) != 1 || r.Frames[0].Rows() == 0 {
		t.Errorf("ok: a good query beside bad ones failed: %v", r.Error)
	}
}

// TestHealthAndBadSettings: CheckHealth reports the API's devices and
// windows; a wrong token, an unreachable URL and missing settings give
// health errors and downstream query errors that say what is wrong.
func TestHealthAndBadSettings(t *testing.T) {
	f := getFixture(t)
	h := f.pp.health(t, f.ds)
	if h.Status != backend.HealthStatusOk || h.Message != "iotpipe API reachable: 5 devices, windows 10s, 1m" {
		t.Errorf("health: %v %q", h.Status, h.Message)
	}
	down := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	q := f.dq("A", map[string]any{"schemaVersion": 1, "devices": []string{"dev-a"}, "metric": "temperature"})
	for _, tc := range []struct {
		name         string
		ds           backend.DataSourceInstanceSettings
		health       string
		status       backend.Status
		queryMessage string
	}{
		{"wrong token", dsSettings("bad-token", f.p.url, "not-the-token-0123456789"), "token rejected by the iotpipe API",
			backend.StatusUnauthorized, "token rejected by the iotpipe API"},
		{"unreachable", dsSettings("down", down, f.p.readToken), "iotpipe API unreachable at " + down + "/api/v1/info",
			backend.StatusBadGateway, "iotpipe API unreachable at " + down},
		{"not the API root", dsSettings("wrong-path", f.p.url+"/grafana", f.p.readToken), "is the URL the iotpipe API root",
			backend.StatusNotFound, "reading window sizes: iotpipe API " + f.p.url + "/grafana/api/v1/info answered 404"},
		{"no url", dsSettings("no-url", "", f.p.readToken), "invalid settings: the iotpipe API URL",
			backend.StatusBadRequest, "invalid datasource settings"},
		{"no token", dsSettings("no-token", f.p.url, ""), "invalid settings: the API token is not set",
			backend.StatusBadRequest, "invalid datasource settings"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "no url" {
				tc.ds.JSONData = []byte(`{}`)
			}
			h := f.pp.health(t, tc.ds)
			if h.Status != backend.HealthStatusError || !strings.Contains(h.Message, tc.health) {
				t.Errorf("health: %v %q, want error containing %q", h.Status, h.Message, tc.health)
			}
			r := f.pp.query(t, tc.ds, q).Responses["A"]
			if r.Error == nil || r.Status != tc.status || r.ErrorSource != backend.ErrorSourceDownstream || !strings.Contains(r.Error.Error(), tc.queryMessage) {
				t.Errorf("query: status %d source %q error %v; want %d downstream containing %q", r.Status, r.ErrorSource, r.Error, tc.status, tc.queryMessage)
			}
		})
	}
	// The plugin process survived all of it.
	if h := f.pp.health(t, f.ds); h.Status != backend.HealthStatusOk {
		t.Errorf("health after errors: %q", h.Message)
	}
}

// TestResources covers the editor's lookups and their errors.
func TestResources(t *testing.T) {
	f := getFixture(t)
	get := func(ds backend.DataSourceInstanceSettings, pathQuery string, out any) int {
		t.Helper()
		status, body := f.pp.resource(t, ds, http.MethodGet, pathQuery)
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("%s: %d %q: %v", pathQuery, status, body, err)
		}
		return status
	}
	var devs []ResourceDevice
	if s := get(f.ds, "devices?"+url.Values{"label": {"site=a,floor=2"}}.Encode(), &devs); s != 200 ||
		!reflect.DeepEqual(devs, []ResourceDevice{{ID: "dev-b", Labels: map[string]string{"site": "a", "floor": "2"}}}) {
		t.Errorf("devices?label=site=a,floor=2: %d %+v", s, devs)
	}
	if s := get(f.ds, "devices", &devs); s != 200 || len(devs) != len(fixtureDevices) || devs[0].ID != "dev-a" {
		t.Errorf("devices: %d %+v", s, devs)
	}
	var ms []string
	if s := get(f.ds, "metrics?device=dev-a", &ms); s != 200 || !reflect.DeepEqual(ms, []string{"humidity", "temperature"}) {
		t.Errorf("metrics?device=dev-a: %d %v", s, ms)
	}
	if s := get(f.ds, "metrics?device=dev-idle", &ms); s != 200 || len(ms) != 0 {
		t.Errorf("metrics?device=dev-idle: %d %v", s, ms)
	}
	var ws []int64
	if s := get(f.ds, "windows", &ws); s != 200 || !reflect.DeepEqual(ws, []int64{10, 60}) {
		t.Errorf("windows: %d %v", s, ws)
	}
	var e struct {
		Error string `json:"error"`
	}
	for _, tc := range []struct {
		ds     backend.DataSourceInstanceSettings
		method string
		path   string
		status int
		msg    string
	}{
		{f.ds, http.MethodGet, "nothing", 404, `unknown resource "nothing"`},
		{f.ds, http.MethodPost, "devices", 405, "resources are read with GET"},
		{f.ds, http.MethodGet, "devices?label=site", 400, "label selector"},
		{dsSettings("bad-token", f.p.url, "not-the-token-0123456789"), http.MethodGet, "metrics", 401, "bearer token"},
	} {
		status, body := f.pp.resource(t, tc.ds, tc.method, tc.path)
		if err := json.Unmarshal(body, &e); err != nil || status != tc.status || !strings.Contains(e.Error, tc.msg) {
			t.Errorf("%s %s: %d %s, want %d containing %q", tc.method, tc.path, status, body, tc.status, tc.msg)
		}
	}
}

// TestStream: subscribe validates the path, publish is denied, and RunStream
// first sends the stored windows, then each new window once it is stored.
func TestStream(t *testing.T) {
	f := getFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// A metric of this run's own: a repeated run (-count) must not find the
	// previous run's windows in the stream's history.
	metric := fmt.Sprintf("temperature_run%d", runSeq.Add(1))
	ch := Channel{Device: "dev-live", Metric: metric, WindowSeconds: 10, Aggregates: []string{"mean", "max", "count"}}
	path := FormatChannel(ch)
	pc := backend.ToProto().PluginContext(pctx(f.ds))

	for p, want := range map[string]pluginv2.SubscribeStreamResponse_Status{
		path:                       pluginv2.SubscribeStreamResponse_OK,
		"windows/x/y/10/mean":      pluginv2.SubscribeStreamResponse_NOT_FOUND,
		"windows/ZGV2/bQ/10/avg":   pluginv2.SubscribeStreamResponse_NOT_FOUND,
		"something/else/entirely/": pluginv2.SubscribeStreamResponse_NOT_FOUND,
	} {
		r, err := f.pp.stream.SubscribeStream(ctx, &pluginv2.SubscribeStreamRequest{PluginContext: pc, Path: p})
		if err != nil || r.Status != want {
			t.Errorf("subscribe %q: %v %v, want %v", p, r.GetStatus(), err, want)
		}
	}
	if r, err := f.pp.stream.PublishStream(ctx, &pluginv2.PublishStreamRequest{PluginContext: pc, Path: path, Data: []byte(`{}`)}); err != nil ||
		r.Status != pluginv2.PublishStreamResponse_PERMISSION_DENIED {
		t.Errorf("publish: %v %v, want permission denied", r.GetStatus(), err)
	}

	// A reading now, stored before the stream starts.
	first := reading{"dev-live", metric, time.Now().UTC(), 21.5}
	f.p.publish(t, f.tokens, []reading{first})
	f.waitWindow(t, ch, first.at.Truncate(10*time.Second))

	rs, err := f.pp.stream.RunStream(ctx, backend.ToProto().RunStreamRequest(&backend.RunStreamRequest{PluginContext: pctx(f.ds), Path: path}))
	if err != nil {
		t.Fatalf("RunStream: %v", err)
	}
	checkStreamFrame(t, recvFrame(t, rs), ch, []reading{first})

	// A later reading in a later window: exactly that window comes next.
	second := reading{"dev-live", metric, time.Now().UTC(), 23.25}
	if !second.at.Truncate(10 * time.Second).After(first.at.Truncate(10 * time.Second)) {
		t.Fatalf("second reading %s is in the first's window", second.at)
	}
	f.p.publish(t, f.tokens, []reading{second})
	f.waitWindow(t, ch, second.at.Truncate(10*time.Second))
	checkStreamFrame(t, recvFrame(t, rs), ch, []reading{second})
}

// waitWindow polls /api/v1/windows until the window starting at start is
// stored.
func (f *fixture) waitWindow(t *testing.T, ch Channel, start time.Time) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		var out struct {
			Windows []Window `json:"windows"`
		}
		q := url.Values{"device": {ch.Device}, "metric": {ch.Metric}, "window": {fmt.Sprint(ch.WindowSeconds)},
			"from": {formatTime(time.Now().Add(-5 * time.Minute))}}
		if err := f.p.call(http.MethodGet, "/api/v1/windows", q, nil, &out); err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(out.Windows, func(w Window) bool { return w.Start.Equal(start) }) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("window %s of %s/%s not stored after 90s: %+v", start, ch.Device, ch.Metric, out.Windows)
		}
		time.Sleep(200 * time.Millisecond) // polling the API
	}
}

func recvFrame(t *testing.T, rs pluginv2.Stream_RunStreamClient) *data.Frame {
	t.Helper()
	pkt, err := rs.Recv()
	if err != nil {
		t.Fatalf("stream receive: %v", err)
	}
	var fr data.Frame
	if err := json.Unmarshal(pkt.Data, &fr); err != nil {
		t.Fatalf("stream packet is not a frame: %v: %s", err, pkt.Data)
	}
	return &fr
}

// checkStreamFrame asserts one row per window of the readings, ordered by
// time, each aggregate computed by brute force from the readings.
func checkStreamFrame(t *testing.T, fr *data.Frame, ch Channel, rs []reading) {
	t.Helper()
	size := time.Duration(ch.WindowSeconds) * time.Second
	want := map[time.Time]agg{}
	var starts []time.Time
	for _, r := range rs {
		k := r.at.Truncate(size)
		if _, ok := want[k]; !ok {
			starts = append(starts, k)
		}
		want[k] = want[k].add(r.value)
	}
	slices.SortFunc(starts, time.Time.Compare)
	if fr.Name != ch.Device || len(fr.Fields) != 1+len(ch.Aggregates) || fr.Fields[0].Name != "time" {
		t.Fatalf("stream frame %q with %d fields", fr.Name, len(fr.Fields))
	}
	if fr.Rows() != len(starts) {
		t.Fatalf("stream frame has %d rows, want %d (windows %v)", fr.Rows(), len(starts), starts)
	}
	for j, a := range ch.Aggregates {
		fld := fr.Fields[1+j]
		if fld.Name != a || fld.Config == nil || fld.Config.DisplayNameFromDS != ch.Device+" "+a {
			t.Errorf("field %d: %q %+v", j, fld.Name, fld.Config)
		}
	}
	for i, start := range starts {
		if got := fr.Fields[0].At(i).(time.Time); !got.Equal(start) {
			t.Errorf("row %d: time %s, want %s", i, got, start)
		}
		for j, a := range ch.Aggregates {
			if got := fr.Fields[1+j].At(i).(float64); got != want[start].value(a) {
				t.Errorf("row %d %s: %v, want %v", i, a, got, want[start].value(a))
			}
		}
	}
}

// TestQueryInProcess runs many concurrent queries on an in-process instance
// (so `go test -race` sees the plugin's own goroutines) and requires the
// same frames as the plugin process answered over gRPC.
func TestQueryInProcess(t *testing.T) {
	f := getFixture(t)
	d := f.inProcess(t)
	var qs []backend.DataQuery
	for i, dev := range []string{"dev-a", "dev-b", "dev-c", "*"} {
		for j, typ := range []string{"timeseries", "summary"} {
			qs = append(qs, f.dq(fmt.Sprintf("q%d%d", i, j), map[string]any{"schemaVersion": 1, "queryType": typ,
				"devices": []string{dev}, "metric": "temperature", "aggregates": []string{"mean", "max", "count"}}, maxPoints(int64(10+i))))
		}
	}
	qs = append(qs, f.dq("bad", map[string]any{"schemaVersion": 1, "devices": []string{"nope"}, "metric": "temperature"}))
	got, err := d.QueryData(context.Background(), &backend.QueryDataRequest{PluginContext: pctx(f.ds), Queries: qs})
	if err != nil {
		t.Fatal(err)
	}
	want := f.pp.query(t, f.ds, qs...)
	if len(got.Responses) != len(qs) || len(want.Responses) != len(qs) {
		t.Fatalf("%d and %d responses, want %d", len(got.Responses), len(want.Responses), len(qs))
	}
	for ref, w := range want.Responses {
		g := got.Responses[ref]
		if (g.Error == nil) != (w.Error == nil) || (g.Error != nil && (g.Error.Error() != w.Error.Error() || g.Status != w.Status)) {
			t.Errorf("%s: in-process error %v (%d), over gRPC %v (%d)", ref, g.Error, g.Status, w.Error, w.Status)
			continue
		}
		// The SDK's serving side sets each frame's RefID and sends no
		// frames as an empty list; do the same here.
		for _, fr := range g.Frames {
			fr.RefID = ref
		}
		if g.Frames == nil {
			g.Frames = data.Frames{}
		}
		gj, err1 := json.Marshal(g.Frames)
		wj, err2 := json.Marshal(w.Frames)
		if err1 != nil || err2 != nil || string(gj) != string(wj) {
			t.Errorf("%s: frames differ in process and over gRPC (%v %v):\n%s\n%s", ref, err1, err2, gj, wj)
		}
	}
	if got.Responses["bad"].Error == nil || got.Responses["q30"].Error != nil || len(got.Responses["q30"].Frames) != len(fixtureDevices)*3 {
		t.Errorf("bad: %v; q30: %v with %d frames", got.Responses["bad"].Error, got.Responses["q30"].Error, len(got.Responses["q30"].Frames))
	}
}

type packetFunc func(*backend.StreamPacket) error

func (f packetFunc) Send(p *backend.StreamPacket) error { return f(p) }

// TestRunStreamInProcess follows the fixture's stored windows with the clock
// set just after them: the first message holds exactly the windows of the
// look-back (5 minutes, or the channel's history), also when there are none;
// nothing is sent twice; disposing the instance ends the stream.
func TestRunStreamInProcess(t *testing.T) {
	f := getFixture(t)
	now := f.to.Add(time.Minute)
	since := func(device, metric string, from time.Time) []reading {
		var out []reading
		for _, r := range f.readings {
			if r.device == device && r.metric == metric && !r.at.Before(from) {
				out = append(out, r)
			}
		}
		return out
	}
	for _, tc := range []struct {
		name string
		ch   Channel
		want []reading
	}{
		{"default look-back", Channel{Device: "dev-a", Metric: "humidity", WindowSeconds: 10, Aggregates: []string{"mean", "min", "sum"}},
			since("dev-a", "humidity", now.Add(-5*time.Minute))},
		{"history", Channel{Device: "dev-b", Metric: "temperature", WindowSeconds: 60, Aggregates: []string{"max", "count"}, HistorySeconds: 3600},
			since("dev-b", "temperature", f.from)},
		{"no windows", Channel{Device: "dev-idle", Metric: "temperature", WindowSeconds: 10, Aggregates: []string{"mean"}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDatasource(f.ds)
			d.now = func() time.Time { return now }
			d.streamInterval = 20 * time.Millisecond
			frames := make(chan *data.Frame, 100)
			sender := backend.NewStreamSender(packetFunc(func(p *backend.StreamPacket) error {
				var fr data.Frame
				if err := json.Unmarshal(p.Data, &fr); err != nil {
					return err
				}
				frames <- &fr
				return nil
			}))
			done := make(chan error, 1)
			go func() {
				done <- d.RunStream(context.Background(), &backend.RunStreamRequest{PluginContext: pctx(f.ds), Path: FormatChannel(tc.ch)}, sender)
			}()
			select {
			case fr := <-frames:
				checkStreamFrame(t, fr, tc.ch, tc.want)
			case err := <-done:
				t.Fatalf("RunStream ended before sending: %v", err)
			case <-time.After(30 * time.Second):
				t.Fatal("no stream message within 30s")
			}
			// A negative check: for half a second (some 25 polls at 20ms)
			// the unchanged windows must not be sent again.
			select {
			case fr := <-frames:
				t.Fatalf("unchanged windows sent again: %d rows", fr.Rows())
			case <-time.After(500 * time.Millisecond):
			}
			d.Dispose()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("RunStream after Dispose: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("RunStream did not stop after Dispose")
			}
		})
	}
}
