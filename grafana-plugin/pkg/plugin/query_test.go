package plugin

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/grafana/grafana-plugin-sdk-go/backend"
)

func TestChooseStep(t *testing.T) {
	sizes := []int64{60, 10} // unsorted on purpose: the rule must not depend on order
	for _, tc := range []struct {
		name          string
		span          time.Duration
		interval      time.Duration
		maxDataPoints int64
		window        int64
		maxPoints     int
		want          StepChoice
		wantErr       string
	}{
		{name: "finer than finest rounds up with notice", span: 10 * time.Minute, maxDataPoints: 1000,
			want: StepChoice{Window: 10, Step: 10, Notice: "step rounded up to the finest stored window, 10s"}},
		{name: "exactly finest", span: 10000 * time.Second, maxDataPoints: 1000, want: StepChoice{Window: 10, Step: 10}},
		{name: "between sizes uses finest, rounds step up", span: 25000 * time.Second, maxDataPoints: 1000,
			want: StepChoice{Window: 10, Step: 30}},
		{name: "coarsest that fits", span: 24 * time.Hour, maxDataPoints: 1000, want: StepChoice{Window: 60, Step: 120}},
		{name: "exactly coarsest", span: 60000 * time.Second, maxDataPoints: 1000, want: StepChoice{Window: 60, Step: 60}},
		{name: "interval wins", span: time.Hour, interval: 5 * time.Minute, maxDataPoints: 1000,
			want: StepChoice{Window: 60, Step: 300}},
		{name: "interval not multiple", span: time.Hour, interval: 90 * time.Second, maxDataPoints: 1000,
			want: StepChoice{Window: 60, Step: 120}},
		{name: "maxDataPoints zero means 1000", span: 24 * time.Hour, want: StepChoice{Window: 60, Step: 120}},
		{name: "explicit window, step rounded to it", span: 24 * time.Hour, maxDataPoints: 1000, window: 10,
			want: StepChoice{Window: 10, Step: 90}},
		{name: "explicit window coarser than step0, no notice", span: time.Hour, maxDataPoints: 1000, window: 60,
			want: StepChoice{Window: 60, Step: 60}},
		{name: "explicit window not stored", span: time.Hour, maxDataPoints: 1000, window: 30,
			wantErr: "windowSeconds 30 is not a stored window size; stored: 10s, 1m"},
		{name: "API point limit raises the step", span: 30 * 24 * time.Hour, maxDataPoints: 43200, maxPoints: 11000,
			want: StepChoice{Window: 60, Step: 240}},
		{name: "zero span", span: 0, maxDataPoints: 1000,
			want: StepChoice{Window: 10, Step: 10, Notice: "step rounded up to the finest stored window, 10s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ChooseStep(tc.span, tc.interval, tc.maxDataPoints, sizes, tc.window, tc.maxPoints)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, errBadQuery) {
					t.Fatalf("err = %v, want bad query containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			if got.Step%got.Window != 0 {
				t.Fatalf("step %d not a multiple of window %d", got.Step, got.Window)
			}
			if tc.maxPoints > 0 && tc.span/(time.Duration(got.Step)*time.Second) > time.Duration(tc.maxPoints) {
				t.Fatalf("step %d gives more than %d points", got.Step, tc.maxPoints)
			}
		})
	}
	if _, err := ChooseStep(time.Hour, 0, 1000, nil, 0, 0); err == nil {
		t.Fatal("no sizes: want an error")
	}
}

// TestChooseStepInvariants checks the rule's promises on random inputs: the
// step covers step0, is the smallest multiple of the window that does, and
// the auto window is the coarsest ≤ step0 (or the finest).
func TestChooseStepInvariants(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	sizes := []int64{10, 60, 300, 3600}
	for range 5000 {
		span := time.Duration(r.Int64N(int64(90 * 24 * time.Hour)))
		interval := time.Duration(r.Int64N(int64(time.Hour)))
		mdp := 1 + r.Int64N(5000)
		c, err := ChooseStep(span, interval, mdp, sizes, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		step0 := max(interval, span/time.Duration(mdp))
		step := time.Duration(c.Step) * time.Second
		w := time.Duration(c.Window) * time.Second
		if step < step0 || (step-w >= step0 && step > w) {
			t.Fatalf("span %v interval %v mdp %d: step %v is not the least multiple of %v ≥ %v", span, interval, mdp, step, w, step0)
		}
		for _, s := range sizes {
			if s > c.Window && time.Duration(s)*time.Second <= step0 {
				t.Fatalf("step0 %v: window %d chosen but %d also fits", step0, c.Window, s)
			}
		}
		if (c.Notice != "") != (w > step0) {
			t.Fatalf("step0 %v window %v: notice %q", step0, w, c.Notice)
		}
	}
}

func TestParseQuery(t *testing.T) {
	for _, tc := range []struct {
		name, json, queryType string
		want                  Query
		wantErr               string
	}{
		{name: "full", json: `{"refId":"A","schemaVersion":1,"queryType":"summary","devices":["a","b","a"],"labelSelector":" site=x ",
			"metric":"temperature","aggregates":["max","mean","max"],"windowSeconds":60,"fleet":true,"unit":"kelvin"}`,
			want: Query{SchemaVersion: 1, QueryType: "summary", Devices: []string{"a", "b"}, LabelSelector: "site=x",
				Metric: "temperature", Aggregates: []string{"max", "mean"}, WindowSeconds: 60, Fleet: true, Unit: "kelvin"}},
		{name: "defaults", json: `{"schemaVersion":1,"devices":["a"],"metric":"m"}`,
			want: Query{SchemaVersion: 1, QueryType: "timeseries", Devices: []string{"a"}, Metric: "m", Aggregates: []string{"mean"}}},
		{name: "query type from DataQuery", json: `{"schemaVersion":1,"devices":["*"],"metric":"m"}`, queryType: "summary",
			want: Query{SchemaVersion: 1, QueryType: "summary", Devices: []string{"*"}, Metric: "m", Aggregates: []string{"mean"}}},
		{name: "legacy v0", json: `{"refId":"A","device":"sim-001","metric":"temperature","aggregate":"max"}`,
			want: Query{SchemaVersion: 1, QueryType: "timeseries", Devices: []string{"sim-001"}, Metric: "temperature", Aggregates: []string{"max"}}},
		{name: "legacy v0 without aggregate", json: `{"device":"sim-001","metric":"temperature"}`,
			want: Query{SchemaVersion: 1, QueryType: "timeseries", Devices: []string{"sim-001"}, Metric: "temperature", Aggregates: []string{"mean"}}},
		{name: "legacy fields ignored in v1", json: `{"schemaVersion":1,"device":"x","devices":["a"],"metric":"m"}`,
			want: Query{SchemaVersion: 1, QueryType: "timeseries", Devices: []string{"a"}, Metric: "m", Aggregates: []string{"mean"}}},
		{name: "fleet only for summary", json: `{"schemaVersion":1,"devices":["a"],"metric":"m","fleet":true}`,
			want: Query{SchemaVersion: 1, QueryType: "timeseries", Devices: []string{"a"}, Metric: "m", Aggregates: []string{"mean"}}},
		{name: "selector only", json: `{"schemaVersion":1,"labelSelector":"site=a","metric":"m"}`,
			want: Query{SchemaVersion: 1, QueryType: "timeseries", LabelSelector: "site=a", Metric: "m", Aggregates: []string{"mean"}}},
		{name: "malformed", json: `{"metric":`, wantErr: "not valid JSON"},
		{name: "wrong type", json: `{"devices":"a","metric":"m"}`, wantErr: "not valid JSON"},
		{name: "no metric", json: `{"schemaVersion":1,"devices":["a"]}`, wantErr: "metric is required"},
		{name: "no device", json: `{"schemaVersion":1,"devices":[" "],"metric":"m"}`, wantErr: "at least one device"},
		{name: "bad aggregate", json: `{"schemaVersion":1,"devices":["a"],"metric":"m","aggregates":["avg"]}`, wantErr: `aggregate "avg"`},
		{name: "bad legacy aggregate", json: `{"device":"a","metric":"m","aggregate":"p99"}`, wantErr: `aggregate "p99"`},
		{name: "bad query type", json: `{"schemaVersion":1,"queryType":"logs","devices":["a"],"metric":"m"}`, wantErr: `queryType "logs"`},
		{name: "future schema", json: `{"schemaVersion":2,"devices":["a"],"metric":"m"}`, wantErr: "schemaVersion 2"},
		{name: "negative window", json: `{"schemaVersion":1,"devices":["a"],"metric":"m","windowSeconds":-1}`, wantErr: "windowSeconds -1"},
		{name: "bad selector", json: `{"schemaVersion":1,"labelSelector":"site","metric":"m"}`, wantErr: "label selector"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseQuery([]byte(tc.json), tc.queryType)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, errBadQuery) {
					t.Fatalf("err = %v, want bad query containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestParseLabelSelector(t *testing.T) {
	got, err := ParseLabelSelector(" site = a ,, floor=2,empty= ")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"site=a", "floor=2", "empty="}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for _, bad := range []string{"site", "=a", "a=1,b"} {
		if _, err := ParseLabelSelector(bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

func TestUnitFor(t *testing.T) {
	for _, tc := range []struct{ metric, agg, override, want string }{
		{"temperature", "mean", "", "celsius"},
		{"Room_Temperature_C", "max", "", "celsius"},
		{"humidity", "min", "", "humidity"},
		{"pressure", "sum", "", "pressurehpa"},
		{"supply_voltage", "mean", "", "volt"},
		{"battery", "mean", "", "percent"},
		{"rpm", "mean", "", ""},
		{"temperature", "count", "", "none"},
		{"temperature", "count", "kelvin", "none"},
		{"temperature", "mean", "kelvin", "kelvin"},
	} {
		if got := UnitFor(tc.metric, tc.agg, tc.override); got != tc.want {
			t.Errorf("UnitFor(%q, %q, %q) = %q, want %q", tc.metric, tc.agg, tc.override, got, tc.want)
		}
	}
}

func TestFormatSeconds(t *testing.T) {
	if got := FormatSizes([]int64{10, 60, 90, 3600, 86400, 0}); got != "10s, 1m, 90s, 1h, 1d, 0s" {
		t.Fatal(got)
	}
}

// TestCombineFleet compares the fleet combination of per-device values with
// the aggregate computed over all readings at once.
func TestCombineFleet(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for trial := range 200 {
		var all []float64
		per := map[string][]float64{}
		for d := range 1 + r.IntN(8) {
			dev := string(rune('a' + d))
			for range r.IntN(20) { // some devices have no readings
				v := math.Round((r.Float64()*100-50)*1000) / 1000
				per[dev] = append(per[dev], v)
				all = append(all, v)
			}
		}
		for _, agg := range Aggregates {
			var vals []DeviceValue
			for dev, vs := range per {
				vals = append(vals, DeviceValue{Device: dev, Value: brute(vs, agg), Count: uint64(len(vs))})
			}
			got, ok := CombineFleet(agg, vals)
			if ok != (len(all) > 0) {
				t.Fatalf("trial %d %s: ok = %v with %d readings", trial, agg, ok, len(all))
			}
			if ok && !near(got, brute(all, agg)) {
				t.Fatalf("trial %d %s: fleet %v, brute force %v", trial, agg, got, brute(all, agg))
			}
		}
	}
}

// brute is an aggregate over raw readings, the reference for every test.
func brute(vs []float64, agg string) float64 {
	var sum float64
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, v := range vs {
		sum += v
		lo, hi = min(lo, v), max(hi, v)
	}
	switch agg {
	case "count":
		return float64(len(vs))
	case "sum":
		return sum
	case "min":
		return lo
	case "max":
		return hi
	}
	return sum / float64(len(vs))
}

// near allows for the different summation orders of the API and the test.
func near(a, b float64) bool {
	return math.Abs(a-b) <= 1e-9*max(1, math.Abs(a), math.Abs(b))
}

func TestParseSettings(t *testing.T) {
	ok := func(jsonData, url, token string) backend.DataSourceInstanceSettings {
		return backend.DataSourceInstanceSettings{JSONData: []byte(jsonData), URL: url,
			DecryptedSecureJSONData: map[string]string{"token": token}}
	}
	for _, tc := range []struct {
		name     string
		in       backend.DataSourceInstanceSettings
		wantURL  string
		wantErr  string
		wantTok  string
		wantPath string
	}{
		{name: "jsonData url", in: ok(`{"url":"http://iotpipe:8080"}`, "", "t"), wantURL: "http://iotpipe:8080", wantTok: "t"},
		{name: "instance URL fallback", in: ok(`{}`, "https://x.example:1/", " t "), wantURL: "https://x.example:1", wantTok: "t"},
		{name: "jsonData wins", in: ok(`{"url":"http://a:1"}`, "http://b:2", "t"), wantURL: "http://a:1", wantTok: "t"},
		{name: "api suffix trimmed", in: ok(`{"url":"http://a:1/prefix/api/v1/"}`, "", "t"), wantURL: "http://a:1/prefix", wantTok: "t"},
		{name: "no jsonData", in: ok(``, "http://a:1", "t"), wantURL: "http://a:1", wantTok: "t"},
		{name: "missing url", in: ok(`{}`, "", "t"), wantErr: "URL is not set"},
		{name: "bad scheme", in: ok(`{"url":"iotpipe:8080"}`, "", "t"), wantErr: "want http(s)://host:port"},
		{name: "query", in: ok(`{"url":"http://a:1/?x=1"}`, "", "t"), wantErr: "query"},
		{name: "missing token", in: ok(`{"url":"http://a:1"}`, "", ""), wantErr: "token is not set"},
		{name: "bad jsonData", in: ok(`{`, "", "t"), wantErr: "jsonData"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSettings(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.URL.String() != tc.wantURL || s.Token != tc.wantTok {
				t.Fatalf("got %s %q, want %s %q", s.URL, s.Token, tc.wantURL, tc.wantTok)
			}
		})
	}
}

func TestErrorResponse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		status backend.Status
		msg    string
	}{
		{"bad query", badQuery("metric is required"), backend.StatusBadRequest, "metric is required"},
		{"unknown device", fmt.Errorf("device \"x\": %w", &APIError{Status: 404, Code: "unknown_device", Message: "device \"x\" is not registered", URL: "http://a/api/v1/series"}),
			backend.StatusNotFound, "device \"x\": device \"x\" is not registered"},
		{"401", &APIError{Status: 401, Message: "missing or invalid bearer token"}, backend.StatusUnauthorized, "token rejected by the iotpipe API: missing or invalid bearer token"},
		{"403", &APIError{Status: 403, Message: "read-only"}, backend.StatusForbidden, "token not allowed by the iotpipe API: read-only"},
		{"400", &APIError{Status: 400, Code: "too_many_points", Message: "too many"}, backend.StatusBadRequest, "too many"},
		{"503", &APIError{Status: 503, Code: "unavailable", Message: "storage down", URL: "http://a/api/v1/series"}, backend.StatusBadGateway,
			"iotpipe API http://a/api/v1/series answered 503 unavailable: storage down"},
		{"unreachable", &UnreachableError{URL: "http://a/api/v1/info", Err: errors.New("connection refused")}, backend.StatusBadGateway,
			"iotpipe API unreachable at http://a/api/v1/info: connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := errorResponse(tc.err)
			if r.Status != tc.status || r.ErrorSource != backend.ErrorSourceDownstream || r.Error == nil || r.Error.Error() != tc.msg {
				t.Fatalf("got %d %s %v, want %d downstream %q", r.Status, r.ErrorSource, r.Error, tc.status, tc.msg)
			}
		})
	}
}
