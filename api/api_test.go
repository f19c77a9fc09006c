package api

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/testkafka"
	"github.com/iotpipe/iotpipe/registry"
	"github.com/iotpipe/iotpipe/storage"
)

const adminTok = "test-admin-token-0123456789"

// newServer runs the API over a real registry (on Kafka) and a real store
// (chDB), as iotpipe run does.
func newServer(t *testing.T) (*Server, *storage.Store, string) {
	t.Helper()
	return newServerWith(t, nil)
}

// newServerWith is newServer with edit applied to the API's Config; the
// base URL is https:// when edit sets TLS.
func newServerWith(t *testing.T, edit func(*Config)) (*Server, *storage.Store, string) {
	t.Helper()
	if os.Getenv("CHDB_LIB_PATH") == "" {
		if os.Getenv("IOTPIPE_REQUIRE_ALL") == "1" {
			t.Fatal("CHDB_LIB_PATH is not set (run scripts/chdb.sh)")
		}
		t.Skip("SKIP: API tests need the embedded ClickHouse engine: export CHDB_LIB_PATH=$(scripts/chdb.sh)")
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	seeds := testkafka.Seeds(t)
	reg, err := registry.New(registry.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(seeds...)}, Topic: testkafka.Prefix(t) + "registry", Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	go reg.Run(ctx)
	st := sharedStore(t)
	cfg := Config{Addr: "127.0.0.1:0", Registry: reg, Store: st, AdminToken: adminTok,
		WindowSizes: []time.Duration{10 * time.Second, time.Minute}, Ready: reg.WaitReady, Logger: testLogger()}
	if edit != nil {
		edit(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	scheme := "http://"
	if cfg.TLS != nil {
		scheme = "https://"
	}
	return srv, st, scheme + srv.Addr()
}

var store *storage.Store

// sharedStore opens one chDB store per test process: chDB allows one data
// path per process.
func sharedStore(t *testing.T) *storage.Store {
	t.Helper()
	if store == nil {
		dir, err := os.MkdirTemp("", "iotpipe-api-test")
		if err != nil {
			t.Fatal(err)
		}
		store, err = storage.Open(context.Background(), storage.Config{Path: dir, Logger: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
	}
	return store
}

func TestAuthRequired(t *testing.T) {
	_, _, base := newServer(t)
	for _, tok := range []string{"", "wrong", adminTok + "x", strings.ToUpper(adminTok)} {
		req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/devices", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("token %q: status %d, want 401", tok, resp.StatusCode)
		}
	}
	// Health, readiness and metrics are open: probes and scrapers have no token.
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		testkafka.Eventually(t, 30*time.Second, path+" answers 200", func() bool {
			resp, err := http.Get(base + path)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
	}
}

func TestDevicesLifecycle(t *testing.T) {
	_, _, base := newServer(t)
	cl, err := NewClient(base, adminTok)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	created, err := cl.CreateDevice(ctx, NewDevice{ID: "pump-7"})
	if err != nil {
		t.Fatal(err)
	}
	if created.Device.ID != "pump-7" || !strings.HasPrefix(created.Token, registry.TokenPrefix) {
		t.Fatalf("created %+v", created)
	}
	if _, err := cl.CreateDevice(ctx, NewDevice{ID: "pump-7"}); StatusOf(err) != http.StatusConflict {
		t.Errorf("duplicate create: %v, want 409", err)
	}
	if _, err := cl.CreateDevice(ctx, NewDevice{ID: "7-starts-with-digit"}); StatusOf(err) != http.StatusBadRequest {
		t.Errorf("invalid id: %v, want 400", err)
	}
	list, err := cl.Devices(ctx, "")
	if err != nil || len(list) != 1 || list[0].ID != "pump-7" {
		t.Errorf("list = %+v, %v", list, err)
	}
	if d, err := cl.Device(ctx, "pump-7"); err != nil || d.ID != "pump-7" {
		t.Errorf("get = %+v, %v", d, err)
	}
	if err := cl.DeleteDevice(ctx, "pump-7"); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Device(ctx, "pump-7"); StatusOf(err) != http.StatusNotFound {
		t.Errorf("get after delete: %v, want 404", err)
	}
	if err := cl.DeleteDevice(ctx, "pump-7"); StatusOf(err) != http.StatusNotFound {
		t.Errorf("delete twice: %v, want 404", err)
	}
	var apiErr *Error
	_, err = cl.Device(ctx, "nope")
	if !errors.As(err, &apiErr) || apiErr.Code != "not_found" {
		t.Errorf("error body: %v", err)
	}
}

func TestSeriesAndSummary(t *testing.T) {
	_, st, base := newServer(t)
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	// Six 10 s windows of "api-dev"/"temp" in the minute from t0, with
	// counts 1..6 and sums chosen so means differ per window.
	var ws []storage.Window
	for i := range 6 {
		n := uint64(i + 1)
		ws = append(ws, storage.Window{Device: "api-dev", Metric: "temp", Size: 10 * time.Second,
			Start: t0.Add(time.Duration(i) * 10 * time.Second), Count: n, Sum: float64(n) * float64(10+i),
			Min: float64(i), Max: float64(100 + i), First: 1, Last: 1, FirstAt: t0, LastAt: t0, Version: 1})
	}
	ws = append(ws, storage.Window{Device: "api-dev", Metric: "temp", Size: time.Minute, Start: t0,
		Count: 21, Sum: 1*10 + 2*11 + 3*12 + 4*13 + 5*14 + 6*15, Min: 0, Max: 105, First: 1, Last: 1, FirstAt: t0, LastAt: t0, Version: 1})
	if err := st.WriteBatch(ctx, ws, nil); err != nil {
		t.Fatal(err)
	}
	cl, _ := NewClient(base, adminTok)
	from, to := t0.Format(time.RFC3339), t0.Add(time.Minute).Format(time.RFC3339)
	s, err := cl.Series(ctx, SeriesParams{Device: "api-dev", Metric: "temp", Aggregate: "mean", From: from, To: to, Step: "10s"})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Points) != 6 {
		t.Fatalf("10s series has %d points, want 6: %+v", len(s.Points), s.Points)
	}
	for i, pt := range s.Points {
		if want := float64(10 + i); pt.Value != want || pt.Count != uint64(i+1) {
			t.Errorf("point %d = %+v, want mean %v count %d", i, pt, want, i+1)
		}
	}
	// One minute: Σsum/Σcount, not the mean of the six means (12.5).
	s, err = cl.Series(ctx, SeriesParams{Device: "api-dev", Metric: "temp", Aggregate: "mean", From: from, To: to, Step: "1m"})
	if err != nil {
		t.Fatal(err)
	}
	if want := 280.0 / 21; len(s.Points) != 1 || s.Points[0].Value != want {
		t.Errorf("1m mean = %+v, want %v", s.Points, want)
	}
	sum, err := cl.Summary(ctx, SummaryParams{Metric: "temp", Aggregate: "max", From: from, To: to})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Devices) != 1 || sum.Devices[0].Device != "api-dev" || sum.Devices[0].Value != 105 {
		t.Errorf("summary max = %+v, want api-dev 105", sum.Devices)
	}
	// Pinned to 10 s windows the same answer comes from the six small ones.
	sum, err = cl.Summary(ctx, SummaryParams{Metric: "temp", Aggregate: "count", From: from, To: to, Window: "10s"})
	if err != nil || len(sum.Devices) != 1 || sum.Devices[0].Value != 21 {
		t.Errorf("summary count from 10s windows = %+v, %v; want 21", sum.Devices, err)
	}
	if _, err := cl.Summary(ctx, SummaryParams{Metric: "temp", Window: "soon"}); StatusOf(err) != http.StatusBadRequest {
		t.Errorf("summary bad window: %v, want 400", err)
	}
}

func TestSeriesBadRequests(t *testing.T) {
	_, _, base := newServer(t)
	cl, _ := NewClient(base, adminTok)
	ctx := context.Background()
	cases := map[string]SeriesParams{
		"no device":         {Metric: "temp"},
		"bad aggregate":     {Device: "d", Metric: "temp", Aggregate: "median"},
		"bad from":          {Device: "d", Metric: "temp", From: "last tuesday"},
		"from after to":     {Device: "d", Metric: "temp", From: "now", To: "now-1h"},
		"step below window": {Device: "d", Metric: "temp", Step: "1s"},
		"step not multiple": {Device: "d", Metric: "temp", Step: "15s"},
		"negative step":     {Device: "d", Metric: "temp", Step: "-1m"},
		"too many points":   {Device: "d", Metric: "temp", From: "now-3650h", Step: "10s"},
	}
	for name, p := range cases {
		if _, err := cl.Series(ctx, p); StatusOf(err) != http.StatusBadRequest {
			t.Errorf("%s: %v, want 400", name, err)
		}
	}
	// A registered device with no data in range is not an error: an empty series.
	if _, err := cl.CreateDevice(ctx, NewDevice{ID: "quiet-1"}); err != nil {
		t.Fatal(err)
	}
	s, err := cl.Series(ctx, SeriesParams{Device: "quiet-1", Metric: "temp", Step: "1m"})
	if err != nil || len(s.Points) != 0 {
		t.Errorf("empty range: %+v, %v", s, err)
	}
	// A device nobody registered and with no data is most likely a typo.
	if _, err := cl.Series(ctx, SeriesParams{Device: "nobody", Metric: "temp", Step: "1m"}); StatusOf(err) != http.StatusNotFound {
		t.Errorf("unknown device: %v, want 404", err)
	}
}

func TestParseTime(t *testing.T) {
	now := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	cases := map[string]time.Time{
		"":                          now.Add(-time.Hour), // the default passed below
		"now":                       now,
		"now-90m":                   now.Add(-90 * time.Minute),
		"now-30d":                   now.Add(-30 * 24 * time.Hour),
		"now-2w":                    now.Add(-14 * 24 * time.Hour),
		"now-1d12h":                 now.Add(-36 * time.Hour),
		"now-1w2d3h":                now.Add(-(9*24 + 3) * time.Hour),
		"1767225600":                time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		"1767225600123":             time.Date(2026, 1, 1, 0, 0, 0, 123e6, time.UTC),
		"2026-01-01T01:00:00+01:00": time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	for in, want := range cases {
		got, err := parseTime(in, now, now.Add(-time.Hour))
		if err != nil || !got.Equal(want) {
			t.Errorf("parseTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"now-", "now-abc", "yesterday", "2026-13-01T00:00:00Z", "now-d", "now-1.5d", "now--1d", "now-3d2w", "now-99999999d"} {
		if _, err := parseTime(bad, now, now); err == nil {
			t.Errorf("parseTime(%q) accepted", bad)
		}
	}
}
