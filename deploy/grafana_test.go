package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"

	"github.com/iotpipe/iotpipe/simulator"
	"github.com/iotpipe/iotpipe/storage"
)

const (
	provisioningDir = "deploy/grafana/provisioning"
	dashboardsDir   = "deploy/grafana/dashboards"
)

type pluginJSON struct {
	ID           string `json:"id"`
	Type         string `json:"type"`
	Backend      bool   `json:"backend"`
	Executable   string `json:"executable"`
	Dependencies struct {
		GrafanaDependency string `json:"grafanaDependency"`
	} `json:"dependencies"`
}

// readJSON decodes path into v; false when the file does not exist.
func readJSON(t *testing.T, path string, v any) bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return true
}

func loadPluginJSON(t *testing.T) (pluginJSON, bool) {
	t.Helper()
	var pj pluginJSON
	ok := readJSON(t, filepath.Join(repoRoot, "grafana-plugin", "src", "plugin.json"), &pj)
	return pj, ok
}

// pluginID is the id in grafana-plugin/src/plugin.json, or the spec's id
// while that file does not exist yet.
func pluginID(t *testing.T) string {
	t.Helper()
	pj, ok := loadPluginJSON(t)
	if !ok {
		t.Logf("grafana-plugin/src/plugin.json does not exist yet; using the spec's plugin id %s", pluginIDFallback)
		return pluginIDFallback
	}
	if pj.ID == "" || pj.Type != "datasource" {
		t.Fatalf("plugin.json: id %q type %q, want a datasource with an id", pj.ID, pj.Type)
	}
	return pj.ID
}

func TestPluginJSONMatchesSpec(t *testing.T) {
	pj, ok := loadPluginJSON(t)
	if !ok {
		t.Skip("grafana-plugin/src/plugin.json does not exist yet")
	}
	if pj.ID != pluginIDFallback || !pj.Backend || pj.Executable != "gpx_iotpipe" {
		t.Errorf("plugin.json: id %q backend %v executable %q; the spec says %s, backend, gpx_iotpipe", pj.ID, pj.Backend, pj.Executable, pluginIDFallback)
	}
}

// ---- provisioning

// The keys Grafana's provisioning documents; the decoders reject any other
// key, because Grafana silently ignores a misspelt one.
type datasourceProvisioning struct {
	APIVersion        int   `yaml:"apiVersion"`
	DeleteDatasources []any `yaml:"deleteDatasources"`
	Prune             bool  `yaml:"prune"`
	Datasources       []struct {
		Name            string            `yaml:"name"`
		UID             string            `yaml:"uid"`
		Type            string            `yaml:"type"`
		Access          string            `yaml:"access"`
		OrgID           int               `yaml:"orgId"`
		URL             string            `yaml:"url"`
		User            string            `yaml:"user"`
		Database        string            `yaml:"database"`
		BasicAuth       bool              `yaml:"basicAuth"`
		BasicAuthUser   string            `yaml:"basicAuthUser"`
		WithCredentials bool              `yaml:"withCredentials"`
		IsDefault       bool              `yaml:"isDefault"`
		Version         int               `yaml:"version"`
		Editable        bool              `yaml:"editable"`
		JSONData        map[string]any    `yaml:"jsonData"`
		SecureJSONData  map[string]string `yaml:"secureJsonData"`
	} `yaml:"datasources"`
}

type dashboardProvisioning struct {
	APIVersion int `yaml:"apiVersion"`
	Providers  []struct {
		Name                  string `yaml:"name"`
		OrgID                 int    `yaml:"orgId"`
		Folder                string `yaml:"folder"`
		FolderUID             string `yaml:"folderUid"`
		Type                  string `yaml:"type"`
		DisableDeletion       bool   `yaml:"disableDeletion"`
		UpdateIntervalSeconds int    `yaml:"updateIntervalSeconds"`
		AllowUIUpdates        bool   `yaml:"allowUiUpdates"`
		Options               struct {
			Path                      string `yaml:"path"`
			FoldersFromFilesStructure bool   `yaml:"foldersFromFilesStructure"`
		} `yaml:"options"`
	} `yaml:"providers"`
}

func readYAML(t *testing.T, rel string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, rel))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true) // a misspelt key is silently ignored by Grafana: fail here instead
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
}

// provisionedDatasource returns the uid and type of the one provisioned datasource.
func provisionedDatasource(t *testing.T) (uid, typ string) {
	t.Helper()
	var p datasourceProvisioning
	readYAML(t, provisioningDir+"/datasources/iotpipe.yaml", &p)
	if len(p.Datasources) != 1 {
		t.Fatalf("datasources/iotpipe.yaml: %d datasources, want 1", len(p.Datasources))
	}
	return p.Datasources[0].UID, p.Datasources[0].Type
}

var envRef = regexp.MustCompile(`^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$`)

func TestDatasourceProvisioning(t *testing.T) {
	var p datasourceProvisioning
	readYAML(t, provisioningDir+"/datasources/iotpipe.yaml", &p)
	if p.APIVersion != 1 || len(p.Datasources) != 1 {
		t.Fatalf("datasources/iotpipe.yaml: apiVersion %d, %d datasources; want 1 and 1", p.APIVersion, len(p.Datasources))
	}
	ds := p.Datasources[0]
	if ds.UID != "iotpipe" {
		t.Errorf("datasource uid %q, want iotpipe (dashboards refer to it)", ds.UID)
	}
	if id := pluginID(t); ds.Type != id {
		t.Errorf("datasource type %q, want the plugin id %q", ds.Type, id)
	}
	if !ds.IsDefault {
		t.Errorf("datasource is not the default")
	}
	// jsonData.url points at the iotpipe service's API port.
	raw, _ := ds.JSONData["url"].(string)
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.Hostname() != "iotpipe" || u.Port() != "8080" || strings.TrimSuffix(u.Path, "/") != "" {
		t.Errorf("jsonData.url %q, want http://iotpipe:8080 (the API base, no /api)", raw)
	}
	// The token comes from Grafana's environment, which compose must set.
	tok := ds.SecureJSONData["token"]
	m := envRef.FindStringSubmatch(tok)
	if m == nil {
		t.Fatalf("secureJsonData.token %q: want $VAR from Grafana's environment, not a literal", tok)
	}
	if m[1] != "IOTPIPE_READ_TOKEN" {
		t.Errorf("secureJsonData.token uses $%s, want $IOTPIPE_READ_TOKEN (the read-only token)", m[1])
	}
	if v, ok := service(t, "grafana").Environment[m[1]]; !ok || v == "" {
		t.Errorf("grafana service does not set %s, which the datasource token expands", m[1])
	}
}

func TestDashboardProvisioning(t *testing.T) {
	var p dashboardProvisioning
	readYAML(t, provisioningDir+"/dashboards/iotpipe.yaml", &p)
	if p.APIVersion != 1 || len(p.Providers) != 1 {
		t.Fatalf("dashboards/iotpipe.yaml: apiVersion %d, %d providers; want 1 and 1", p.APIVersion, len(p.Providers))
	}
	pr := p.Providers[0]
	if pr.Type != "file" || pr.Options.Path == "" {
		t.Fatalf("dashboard provider %+v: want type file with options.path", pr)
	}
	// The provider's path is where compose mounts the repository's dashboards.
	g := service(t, "grafana")
	m, ok := g.mountAt(t, pr.Options.Path)
	if !ok || filepath.Clean(m.source) != filepath.Clean("./"+dashboardsDir) {
		t.Errorf("provider path %s: grafana mounts %q there, want ./%s", pr.Options.Path, m.source, dashboardsDir)
	}
	if _, err := os.Stat(filepath.Join(repoRoot, dashboardsDir, "iotpipe.json")); err != nil {
		t.Error(err)
	}
}

// ---- dashboard

// queryModel is the spec's query model, exactly: decoding a target with a
// field outside it fails.
type queryModel struct {
	RefID      string `json:"refId"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Hide          bool     `json:"hide"`
	SchemaVersion *int     `json:"schemaVersion"`
	QueryType     string   `json:"queryType"`
	Devices       []string `json:"devices"`
	LabelSelector string   `json:"labelSelector"`
	Metric        string   `json:"metric"`
	Aggregates    []string `json:"aggregates"`
	WindowSeconds int      `json:"windowSeconds"`
	Fleet         bool     `json:"fleet"`
	Unit          string   `json:"unit"`
}

type dsRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	Refresh       string `json:"refresh"`
	SchemaVersion int    `json:"schemaVersion"`
	Time          struct {
		From string `json:"from"`
		To   string `json:"to"`
	} `json:"time"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Datasource *dsRef          `json:"datasource"`
			Query      json.RawMessage `json:"query"`
			Multi      bool            `json:"multi"`
			IncludeAll bool            `json:"includeAll"`
			AllValue   string          `json:"allValue"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID         int               `json:"id"`
		Type       string            `json:"type"`
		Title      string            `json:"title"`
		Datasource *dsRef            `json:"datasource"`
		Targets    []json.RawMessage `json:"targets"`
		Panels     []json.RawMessage `json:"panels"` // rows
	} `json:"panels"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if !readJSON(t, filepath.Join(repoRoot, dashboardsDir, "iotpipe.json"), &d) {
		t.Fatalf("%s/iotpipe.json missing", dashboardsDir)
	}
	return d
}

func decodeTarget(t *testing.T, panel string, raw json.RawMessage) queryModel {
	t.Helper()
	var q queryModel
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&q); err != nil {
		t.Fatalf("panel %q: target %s is not the spec's query model: %v", panel, raw, err)
	}
	return q
}

func TestDashboardSettings(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard needs a uid and a title (got %q, %q)", d.UID, d.Title)
	}
	if d.Refresh != "10s" {
		t.Errorf("refresh %q, want 10s", d.Refresh)
	}
	if d.Time.From != "now-15m" || d.Time.To != "now" {
		t.Errorf("time %s..%s, want now-15m..now", d.Time.From, d.Time.To)
	}
	for _, p := range d.Panels {
		if p.Type == "row" && len(p.Panels) > 0 {
			t.Errorf("collapsed row %q: the tests do not look inside rows; keep panels at the top level", p.Title)
		}
	}
}

func TestDashboardDeviceVariable(t *testing.T) {
	d := loadDashboard(t)
	uid, typ := provisionedDatasource(t)
	var found bool
	for _, v := range d.Templating.List {
		if v.Name != "device" {
			continue
		}
		found = true
		if v.Type != "query" || v.Datasource == nil || v.Datasource.UID != uid || v.Datasource.Type != typ {
			t.Errorf("variable device: type %q datasource %+v, want a query of {%s %s}", v.Type, v.Datasource, typ, uid)
		}
		var q map[string]any
		if err := json.Unmarshal(v.Query, &q); err != nil || q["type"] != "devices" {
			t.Errorf("variable device: query %s, want the datasource's {\"type\":\"devices\"}", v.Query)
		}
		if !v.Multi || !v.IncludeAll {
			t.Errorf("variable device: multi %v includeAll %v, want both", v.Multi, v.IncludeAll)
		}
		if v.AllValue != "" && v.AllValue != "*" {
			t.Errorf("variable device: allValue %q; the query model's all-devices id is \"*\"", v.AllValue)
		}
	}
	if !found {
		t.Errorf("no template variable named device")
	}
}

// panelSpec is the seed's analysis, as the dashboard must show it.
type panelSpec struct {
	typ, queryType, metric string
	aggregates             []string
	fleet                  bool
}

var wantPanels = map[string]panelSpec{
	"Temperature":      {"timeseries", "timeseries", "temperature", []string{"mean", "max"}, false},
	"Humidity":         {"timeseries", "timeseries", "humidity", []string{"mean", "max"}, false},
	"Mean temperature": {"stat", "summary", "temperature", []string{"mean"}, true},
	"Max humidity":     {"stat", "summary", "humidity", []string{"max"}, true},
}

func TestDashboardPanels(t *testing.T) {
	d := loadDashboard(t)
	seen := map[string]bool{}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		want, ok := wantPanels[p.Title]
		if !ok {
			continue
		}
		seen[p.Title] = true
		if p.Type != want.typ {
			t.Errorf("panel %q: type %q, want %q", p.Title, p.Type, want.typ)
		}
		if len(p.Targets) != 1 {
			t.Errorf("panel %q: %d targets, want 1", p.Title, len(p.Targets))
			continue
		}
		q := decodeTarget(t, p.Title, p.Targets[0])
		if q.QueryType != want.queryType || q.Metric != want.metric || !slices.Equal(q.Aggregates, want.aggregates) || q.Fleet != want.fleet {
			t.Errorf("panel %q: %s %s %v fleet=%v, want %s %s %v fleet=%v", p.Title,
				q.QueryType, q.Metric, q.Aggregates, q.Fleet, want.queryType, want.metric, want.aggregates, want.fleet)
		}
		if !slices.Equal(q.Devices, []string{"$device"}) && !slices.Equal(q.Devices, []string{"${device}"}) {
			t.Errorf("panel %q: devices %v, want [$device] (the dashboard's device variable)", p.Title, q.Devices)
		}
	}
	for title := range wantPanels {
		if !seen[title] {
			t.Errorf("no panel titled %q", title)
		}
	}
}

// Every query of every panel: the provisioned datasource, the spec's model
// (schemaVersion 1), metrics the simulator sends, valid aggregates, stored
// window sizes.
func TestDashboardQueries(t *testing.T) {
	d := loadDashboard(t)
	uid, typ := provisionedDatasource(t)
	if id := pluginID(t); typ != id {
		t.Errorf("provisioned datasource type %q is not the plugin id %q", typ, id)
	}
	metrics := simulatorMetrics(t)
	valid := []string{string(storage.Mean), string(storage.Max), string(storage.Min), string(storage.Count), string(storage.Sum)}
	sizes := composeWindowSizes(t)
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	var n int
	for _, p := range d.Panels {
		if p.Type == "row" || p.Type == "text" {
			continue
		}
		if p.Datasource != nil && (p.Datasource.UID != uid || p.Datasource.Type != typ) {
			t.Errorf("panel %q: datasource %+v, want {%s %s}", p.Title, *p.Datasource, typ, uid)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		refs := map[string]bool{}
		for _, raw := range p.Targets {
			n++
			q := decodeTarget(t, p.Title, raw)
			where := p.Title + "/" + q.RefID
			if q.RefID == "" || refs[q.RefID] {
				t.Errorf("panel %q: refId %q empty or repeated", p.Title, q.RefID)
			}
			refs[q.RefID] = true
			if q.Datasource == nil || q.Datasource.UID != uid || q.Datasource.Type != typ {
				t.Errorf("%s: datasource %+v, want {type %s uid %s}", where, q.Datasource, typ, uid)
			}
			if q.SchemaVersion == nil || *q.SchemaVersion != 1 {
				t.Errorf("%s: schemaVersion %v, want 1", where, q.SchemaVersion)
			}
			if q.QueryType != "timeseries" && q.QueryType != "summary" {
				t.Errorf("%s: queryType %q, want timeseries or summary", where, q.QueryType)
			}
			if q.Fleet && q.QueryType != "summary" {
				t.Errorf("%s: fleet is for summary queries only", where)
			}
			if !slices.Contains(metrics, q.Metric) {
				t.Errorf("%s: metric %q is not one the simulator sends %v", where, q.Metric, metrics)
			}
			if len(q.Aggregates) == 0 {
				t.Errorf("%s: no aggregates", where)
			}
			for _, a := range q.Aggregates {
				if !slices.Contains(valid, a) {
					t.Errorf("%s: aggregate %q, want one of %v", where, a, valid)
				}
			}
			if q.WindowSeconds != 0 && !slices.Contains(sizes, q.WindowSeconds) {
				t.Errorf("%s: windowSeconds %d is not a stored size %v", where, q.WindowSeconds, sizes)
			}
			if len(q.Devices) == 0 && q.LabelSelector == "" {
				t.Errorf("%s: no devices and no label selector", where)
			}
			for _, dev := range q.Devices {
				if name, isVar := strings.CutPrefix(dev, "$"); isVar && !vars[strings.Trim(name, "{}")] {
					t.Errorf("%s: device %q refers to no template variable", where, dev)
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("the dashboard has no queries")
	}
}

// ---- what the simulator sends

var (
	simOnce    sync.Once
	simMetrics []string
	simErr     error
)

// simulatorMetrics runs the simulator against an in-process MQTT broker and
// returns the numeric keys of its payload other than the timestamp: the
// metrics a simulated fleet produces.
func simulatorMetrics(t *testing.T) []string {
	t.Helper()
	simOnce.Do(func() { simMetrics, simErr = captureSimulatorMetrics() })
	if simErr != nil {
		t.Fatalf("simulator payload: %v", simErr)
	}
	return simMetrics
}

type capture struct {
	mqtt.HookBase
	got chan []byte
}

func (h *capture) ID() string           { return "capture" }
func (h *capture) Provides(b byte) bool { return b == mqtt.OnPublished }
func (h *capture) OnPublished(_ *mqtt.Client, pk packets.Packet) {
	select {
	case h.got <- bytes.Clone(pk.Payload):
	default:
	}
}

func captureSimulatorMetrics() ([]string, error) {
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer srv.Close()
	hook := &capture{got: make(chan []byte, 1)}
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, err
	}
	if err := srv.AddHook(hook, nil); err != nil {
		return nil, err
	}
	l := listeners.NewTCP(listeners.Config{ID: "deploy-test", Address: "127.0.0.1:0"})
	if err := srv.AddListener(l); err != nil {
		return nil, err
	}
	if err := srv.Serve(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := simulator.Run(ctx, simulator.Config{
		Broker: l.Address(), Devices: []simulator.Device{{ID: "sim-001", Token: "t"}},
		Messages: 1, QoS: 1, Seed: 1, Logger: zerolog.New(io.Discard),
	})
	if err != nil {
		return nil, err
	}
	var payload []byte
	select {
	case payload = <-hook.got:
	case <-time.After(10 * time.Second):
		return nil, errors.New("the broker received no message")
	}
	var m map[string]any
	if err := json.Unmarshal(payload, &m); err != nil {
		return nil, err
	}
	var out []string
	for k, v := range m {
		if _, numeric := v.(float64); numeric && k != "ts" {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	if len(out) == 0 {
		return nil, errors.New("payload " + string(payload) + " has no metrics")
	}
	return out, nil
}

func TestSimulatorMetrics(t *testing.T) {
	// A sanity check that the capture works: the README promises these two.
	got := simulatorMetrics(t)
	for _, m := range []string{"temperature", "humidity"} {
		if !slices.Contains(got, m) {
			t.Errorf("simulator metrics %v lack %s", got, m)
		}
	}
}
