package api

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/storage"
)

// The routes a Grafana datasource uses: read token, labels, info, metrics,
// windows and the series window parameter.

const readTok = "test-read-token-0123456789"

// newReadServer is newServer with a read token configured.
func newReadServer(t *testing.T) (*storage.Store, string) {
	t.Helper()
	srv, st, _ := newServer(t)
	// A second server on the same registry and store, with a read token:
	// the first one's config cannot be changed after New.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg := srv.cfg
	cfg.Addr, cfg.ReadToken, cfg.Logger = "127.0.0.1:0", readTok, testLogger()
	cfg.WindowSizes = cfg.WindowSizes[1:] // New prepends the finest again
	rs, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go rs.Run(ctx)
	return st, "http://" + rs.Addr()
}

func TestNewRejectsWeakReadToken(t *testing.T) {
	srv, _, _ := newServer(t)
	for _, tok := range []string{"short", adminTok} {
		cfg := srv.cfg
		cfg.Addr, cfg.ReadToken = "127.0.0.1:0", tok
		if s, err := New(cfg); err == nil {
			s.ln.Close()
			t.Errorf("ReadToken %q accepted", tok)
		}
	}
}

func TestReadTokenMayOnlyRead(t *testing.T) {
	_, base := newReadServer(t)
	admin, _ := NewClient(base, adminTok)
	reader, _ := NewClient(base, readTok)
	ctx := context.Background()
	if _, err := admin.CreateDevice(ctx, NewDevice{ID: "ro-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := reader.Devices(ctx, ""); err != nil {
		t.Errorf("read token list devices: %v", err)
	}
	if _, err := reader.Info(ctx); err != nil {
		t.Errorf("read token info: %v", err)
	}
	if _, err := reader.CreateDevice(ctx, NewDevice{ID: "ro-2"}); StatusOf(err) != http.StatusForbidden {
		t.Errorf("read token create: %v, want 403", err)
	}
	name := "x"
	if _, err := reader.UpdateDevice(ctx, "ro-1", DeviceUpdate{Name: &name}); StatusOf(err) != http.StatusForbidden {
		t.Errorf("read token update: %v, want 403", err)
	}
	if err := reader.DeleteDevice(ctx, "ro-1"); StatusOf(err) != http.StatusForbidden {
		t.Errorf("read token delete: %v, want 403", err)
	}
	if _, err := admin.Device(ctx, "ro-1"); err != nil {
		t.Errorf("device gone after refused delete: %v", err)
	}
	wrong, _ := NewClient(base, readTok+"x")
	if _, err := wrong.Devices(ctx, ""); StatusOf(err) != http.StatusUnauthorized {
		t.Errorf("wrong read token: %v, want 401", err)
	}
}

func TestDeviceLabelsAndSelector(t *testing.T) {
	_, _, base := newServer(t)
	cl, _ := NewClient(base, adminTok)
	ctx := context.Background()
	for _, d := range []NewDevice{
		{ID: "lbl-a", Name: "Boiler A", Labels: map[string]string{"site": "north", "floor": "1"}},
		{ID: "lbl-b", Labels: map[string]string{"site": "north", "floor": "2"}},
		{ID: "lbl-c", Labels: map[string]string{"site": "south"}},
	} {
		got, err := cl.CreateDevice(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		if got.Device.Name != d.Name || !maps.Equal(got.Device.Labels, d.Labels) {
			t.Fatalf("created %+v from %+v", got.Device, d)
		}
	}
	ids := func(sel string) string {
		t.Helper()
		list, err := cl.Devices(ctx, sel)
		if err != nil {
			t.Fatalf("Devices(%q): %v", sel, err)
		}
		var out []string
		for _, d := range list {
			if strings.HasPrefix(d.ID, "lbl-") {
				out = append(out, d.ID)
			}
		}
		return strings.Join(out, ",")
	}
	for sel, want := range map[string]string{
		"":                   "lbl-a,lbl-b,lbl-c",
		"site=north":         "lbl-a,lbl-b",
		"site=north,floor=2": "lbl-b",
		"site=east":          "",
	} {
		if got := ids(sel); got != want {
			t.Errorf("selector %q: %s, want %s", sel, got, want)
		}
	}
	if _, err := cl.Devices(ctx, "site"); StatusOf(err) != http.StatusBadRequest {
		t.Errorf("malformed selector: %v, want 400", err)
	}
	if _, err := cl.CreateDevice(ctx, NewDevice{ID: "lbl-bad", Labels: map[string]string{"Site": "x"}}); StatusOf(err) != http.StatusBadRequest {
		t.Errorf("bad label key: %v, want 400", err)
	}

	// PATCH: name only keeps labels; labels replace the set.
	name := "Boiler B"
	d, err := cl.UpdateDevice(ctx, "lbl-b", DeviceUpdate{Name: &name})
	if err != nil || d.Name != name || d.Labels["floor"] != "2" {
		t.Fatalf("update name: %+v, %v", d, err)
	}
	labels := map[string]string{"site": "south"}
	if d, err = cl.UpdateDevice(ctx, "lbl-b", DeviceUpdate{Labels: &labels}); err != nil || !maps.Equal(d.Labels, labels) || d.Name != name {
		t.Fatalf("update labels: %+v, %v", d, err)
	}
	if got := ids("site=south"); got != "lbl-b,lbl-c" {
		t.Errorf("after relabel site=south: %s", got)
	}
	if _, err := cl.UpdateDevice(ctx, "lbl-zzz", DeviceUpdate{Name: &name}); StatusOf(err) != http.StatusNotFound {
		t.Errorf("update unknown: %v, want 404", err)
	}
	bad := map[string]string{"site": "UPPER"}
	if _, err := cl.UpdateDevice(ctx, "lbl-a", DeviceUpdate{Labels: &bad}); StatusOf(err) != http.StatusBadRequest {
		t.Errorf("update bad label: %v, want 400", err)
	}
}

func TestInfoMetricsWindows(t *testing.T) {
	st, base := newReadServer(t)
	cl, _ := NewClient(base, readTok)
	ctx := context.Background()

	info, err := cl.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(info.WindowSizesSeconds, []int64{10, 60}) || len(info.Aggregates) != 5 || info.MaxPoints <= 0 {
		t.Errorf("info = %+v", info)
	}

	t0 := time.Date(2026, 4, 2, 8, 0, 0, 0, time.UTC)
	w := func(metric string, size time.Duration, start time.Time, n uint64, sum float64, version uint64) storage.Window {
		return storage.Window{Device: "win-dev", Metric: metric, Size: size, Start: start, Count: n, Sum: sum,
			Min: 1, Max: sum, First: 1, Last: 2, FirstAt: start, LastAt: start.Add(time.Second), Version: version}
	}
	batch := []storage.Window{
		w("pressure", 10*time.Second, t0, 2, 10, 5),
		w("pressure", 10*time.Second, t0.Add(10*time.Second), 4, 12, 7),
		w("pressure", time.Minute, t0, 6, 22, 7),
		w("voltage", 10*time.Second, t0, 1, 3, 9),
	}
	if err := st.WriteBatch(ctx, batch, nil); err != nil {
		t.Fatal(err)
	}
	// A re-emission with a higher version replaces the window.
	if err := st.WriteBatch(ctx, []storage.Window{w("pressure", 10*time.Second, t0, 3, 15, 11)}, nil); err != nil {
		t.Fatal(err)
	}

	metrics, err := cl.Metrics(ctx, "win-dev")
	if err != nil || !slices.Equal(metrics, []string{"pressure", "voltage"}) {
		t.Errorf("metrics of win-dev = %v, %v", metrics, err)
	}
	if all, err := cl.Metrics(ctx, ""); err != nil || !slices.Contains(all, "pressure") || !slices.IsSorted(all) {
		t.Errorf("all metrics = %v, %v", all, err)
	}
	if none, err := cl.Metrics(ctx, "no-such-device"); err != nil || len(none) != 0 {
		t.Errorf("metrics of unknown device = %v, %v", none, err)
	}

	from, to := t0.Format(time.RFC3339), t0.Add(time.Minute).Format(time.RFC3339)
	got, err := cl.Windows(ctx, WindowsParams{Device: "win-dev", Metric: "pressure", Window: "10s", From: from, To: to})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("10s windows = %+v, want 2", got)
	}
	if g := got[0]; g.Count != 3 || g.Sum != 15 || g.Mean != 5 || g.Version != 11 || !g.Start.Equal(t0) || g.WindowSeconds != 10 || g.Last != 2 {
		t.Errorf("first window = %+v, want the re-emitted version 11 (count 3, sum 15, mean 5)", g)
	}
	if g := got[1]; g.Count != 4 || g.Mean != 3 || g.Version != 7 || !g.Start.Equal(t0.Add(10*time.Second)) {
		t.Errorf("second window = %+v", g)
	}
	if all, err := cl.Windows(ctx, WindowsParams{Device: "win-dev", Metric: "pressure", From: from, To: to}); err != nil || len(all) != 3 {
		t.Errorf("all sizes = %d windows, %v; want 3", len(all), err)
	}
	if one, err := cl.Windows(ctx, WindowsParams{Device: "win-dev", Metric: "pressure", Window: "10s", From: from, To: to, Limit: 1}); err != nil || len(one) != 1 || !one[0].Start.Equal(t0) {
		t.Errorf("limit 1 = %+v, %v", one, err)
	}
	for name, p := range map[string]WindowsParams{
		"no metric":   {Device: "win-dev"},
		"bad window":  {Device: "win-dev", Metric: "pressure", Window: "ten"},
		"half second": {Device: "win-dev", Metric: "pressure", Window: "1.5s"},
		"bad limit":   {Device: "win-dev", Metric: "pressure", Limit: maxWindows + 1},
	} {
		if _, err := cl.Windows(ctx, p); StatusOf(err) != http.StatusBadRequest {
			t.Errorf("%s: %v, want 400", name, err)
		}
	}

	// Series: window picks the stored size; the answer says which was read.
	s, err := cl.Series(ctx, SeriesParams{Device: "win-dev", Metric: "pressure", Aggregate: "sum", From: from, To: to, Step: "1m", Window: "10s"})
	if err != nil {
		t.Fatal(err)
	}
	if s.WindowSeconds != 10 || len(s.Points) != 1 || s.Points[0].Value != 27 || s.Points[0].Count != 7 {
		t.Errorf("1m from 10s windows = %+v, want sum 27 of 7 (re-emitted 15 + 12)", s)
	}
	s, err = cl.Series(ctx, SeriesParams{Device: "win-dev", Metric: "pressure", Aggregate: "sum", From: from, To: to, Step: "1m"})
	if err != nil || s.WindowSeconds != 60 || len(s.Points) != 1 || s.Points[0].Value != 22 {
		t.Errorf("1m auto = %+v, %v; want the 1m window (sum 22)", s, err)
	}
	for name, p := range map[string]SeriesParams{
		"window does not divide step": {Device: "win-dev", Metric: "pressure", Step: "10s", Window: "1m"},
		"window not a duration":       {Device: "win-dev", Metric: "pressure", Step: "1m", Window: "often"},
	} {
		if _, err := cl.Series(ctx, p); StatusOf(err) != http.StatusBadRequest {
			t.Errorf("%s: %v, want 400", name, err)
		}
	}
}
