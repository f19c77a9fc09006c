package plugin

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/grafana/grafana-plugin-sdk-go/backend"
	"github.com/grafana/grafana-plugin-sdk-go/backend/grpcplugin"
	"github.com/grafana/grafana-plugin-sdk-go/genproto/pluginv2"
	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
)

// The integration tests run what production runs: the iotpipe binary built
// from the root module (`iotpipe run`: embedded Kafka and chDB), devices
// publishing over MQTT with Paho, and the plugin executable started the way
// Grafana starts it (hashicorp/go-plugin, the SDK's handshake, gRPC),
// called through the SDK's generated pluginv2 clients.

var (
	buildOnce  sync.Once
	buildDir   string
	iotpipeBin string
	pluginBin  string
	buildErr   error

	// cleanups run after every test of the package (shared processes).
	cleanupMu sync.Mutex
	cleanups  []func()
)

func TestMain(m *testing.M) {
	code := m.Run()
	cleanupMu.Lock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	cleanupMu.Unlock()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func atExit(f func()) {
	cleanupMu.Lock()
	defer cleanupMu.Unlock()
	cleanups = append(cleanups, f)
}

// requireChDB skips (or fails under IOTPIPE_REQUIRE_ALL=1) without the
// embedded ClickHouse library that `iotpipe run` needs.
func requireChDB(tb testing.TB) {
	tb.Helper()
	if os.Getenv("CHDB_LIB_PATH") != "" {
		return
	}
	msg := "integration test needs CHDB_LIB_PATH (export CHDB_LIB_PATH=$(scripts/chdb.sh) in the repo root)"
	if os.Getenv("IOTPIPE_REQUIRE_ALL") == "1" {
		tb.Fatal(msg)
	}
	tb.Skip("SKIP: " + msg)
}

// buildBinaries builds iotpipe (root module) and the plugin executable once.
func buildBinaries(tb testing.TB) {
	tb.Helper()
	buildOnce.Do(func() {
		pluginRoot, err := filepath.Abs("../..")
		if err != nil {
			buildErr = err
			return
		}
		if buildDir, buildErr = os.MkdirTemp("", "iotpipe-plugin-test"); buildErr != nil {
			return
		}
		iotpipeBin = filepath.Join(buildDir, "iotpipe")
		pluginBin = filepath.Join(buildDir, fmt.Sprintf("gpx_iotpipe_%s_%s", runtime.GOOS, runtime.GOARCH))
		for _, b := range []struct{ dir, out, pkg string }{
			{filepath.Dir(pluginRoot), iotpipeBin, "./cmd/iotpipe"},
			{pluginRoot, pluginBin, "./pkg"},
		} {
			cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
			cmd.Dir = b.dir
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s in %s: %w\n%s", b.pkg, b.dir, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
}

func freePort(tb testing.TB) int {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// syncBuffer collects a process's output for failure messages.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// pipeline is one `iotpipe run` process.
type pipeline struct {
	url        string
	client     *http.Client // trusts the API's CA when it serves TLS
	mqttAddr   string
	adminToken string
	readToken  string
	logs       *syncBuffer
	cmd        *exec.Cmd
	exited     chan error
}

// startPipeline starts `iotpipe run` and waits for /readyz. Short idle
// timeout and lateness let windows of past readings close within seconds;
// extra flags override the defaults.
func startPipeline(tb testing.TB, extra ...string) (*pipeline, error) {
	return startPipelineTLS(tb, nil, extra...)
}

// startPipelineTLS is startPipeline for an API served over TLS (extra gives
// its certificate flags) when clientTLS is not nil: the harness's own calls
// use clientTLS.
func startPipelineTLS(tb testing.TB, clientTLS *tls.Config, extra ...string) (*pipeline, error) {
	dataDir, err := os.MkdirTemp("", "iotpipe-plugin-data")
	if err != nil {
		return nil, err
	}
	p := &pipeline{
		mqttAddr:   fmt.Sprintf("127.0.0.1:%d", freePort(tb)),
		adminToken: "admin-token-for-plugin-tests-0123456789",
		readToken:  "read-token-for-plugin-tests-0123456789",
		logs:       &syncBuffer{},
		exited:     make(chan error, 1),
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(tb))
	p.url, p.client = "http://"+httpAddr, http.DefaultClient
	if clientTLS != nil {
		p.url = "https://" + httpAddr
		p.client = &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS}}
	}
	args := []string{"run", "--data-dir", dataDir, "--log-format", "json", "--log-level", "info",
		"--mqtt-addr", p.mqttAddr, "--http-addr", httpAddr,
		"--embedded-kafka-addr", fmt.Sprintf("127.0.0.1:%d", freePort(tb)),
		"--admin-token", p.adminToken, "--read-token", p.readToken,
		"--window-sizes", "10s,1m", "--idle-timeout", "3s", "--allowed-lateness", "1s"}
	p.cmd = exec.Command(iotpipeBin, append(args, extra...)...) // later flags win
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start iotpipe: %w", err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	atExit(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		os.RemoveAll(dataDir)
	})
	deadline := time.Now().Add(90 * time.Second)
	for {
		select {
		case err := <-p.exited:
			p.exited <- err
			return nil, fmt.Errorf("iotpipe run exited before ready: %v\n%s", err, tail(p.logs.String(), 40))
		default:
		}
		resp, err := p.client.Get(p.url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("iotpipe run not ready after 90s (last: %v)\n%s", err, tail(p.logs.String(), 40))
		}
		time.Sleep(100 * time.Millisecond) // polling /readyz
	}
}

// call is a request to the API with the admin token, outside the plugin.
func (p *pipeline) call(method, path string, q url.Values, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	u := p.url + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+p.adminToken)
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return json.Unmarshal(b, out)
}

// metrics returns iotpipe's own counters, for failure messages.
func (p *pipeline) metrics() string {
	resp, err := p.client.Get(p.url + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "iotpipe_") && !strings.Contains(l, "_bucket") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// createDevice registers a device and returns its MQTT token.
func (p *pipeline) createDevice(tb testing.TB, id string, labels map[string]string) string {
	tb.Helper()
	var out struct {
		Token string `json:"token"`
	}
	if err := p.call(http.MethodPost, "/api/v1/devices", nil, map[string]any{"id": id, "labels": labels}, &out); err != nil {
		tb.Fatal(err)
	}
	return out.Token
}

// reading is one published value: the source of every expectation.
type reading struct {
	device, metric string
	at             time.Time
	value          float64
}

// publish sends readings in event-time order across devices (a partition's
// watermark is the latest event time it saw, so history must be replayed in
// order), one Paho connection per device, each QoS 1 publish awaiting its
// PUBACK. Readings of one device with the same time go in one message.
func (p *pipeline) publish(tb testing.TB, tokens map[string]string, rs []reading) {
	tb.Helper()
	clients := map[string]mqtt.Client{}
	defer func() {
		for _, c := range clients {
			c.Disconnect(100)
		}
	}()
	type msg struct {
		device string
		at     time.Time
		fields map[string]float64
	}
	var msgs []*msg
	idx := map[string]*msg{}
	for _, r := range rs {
		k := r.device + "|" + r.at.Format(time.RFC3339Nano)
		m := idx[k]
		if m == nil {
			m = &msg{device: r.device, at: r.at, fields: map[string]float64{}}
			idx[k] = m
			msgs = append(msgs, m)
		}
		m.fields[r.metric] = r.value
	}
	sort.SliceStable(msgs, func(i, j int) bool { return msgs[i].at.Before(msgs[j].at) })
	for _, m := range msgs {
		c := clients[m.device]
		if c == nil {
			opts := mqtt.NewClientOptions().AddBroker("tcp://" + p.mqttAddr).SetClientID(m.device).
				SetUsername(m.device).SetPassword(tokens[m.device]).SetProtocolVersion(4).SetAutoReconnect(false)
			c = mqtt.NewClient(opts)
			if tk := c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
				tb.Fatalf("connect %s: %v", m.device, tk.Error())
			}
			clients[m.device] = c
		}
		payload := map[string]any{"ts": m.at.UnixMilli()}
		for k, v := range m.fields {
			payload[k] = v
		}
		b, _ := json.Marshal(payload)
		tk := c.Publish("/devices/"+m.device+"/events", 1, false, b)
		if !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			tb.Fatalf("publish %s: %v", m.device, tk.Error())
		}
	}
}

// waitStored polls /summary (count, finest windows) until every device's
// metric holds exactly the readings published in [from, to), which must be
// aligned to the finest window.
func (p *pipeline) waitStored(tb testing.TB, rs []reading, from, to time.Time) {
	tb.Helper()
	want := map[string]map[string]uint64{} // metric → device → count
	for _, r := range rs {
		if want[r.metric] == nil {
			want[r.metric] = map[string]uint64{}
		}
		want[r.metric][r.device]++
	}
	deadline := time.Now().Add(120 * time.Second)
	for metric, devs := range want {
		for {
			var out struct {
				Devices []DeviceValue `json:"devices"`
			}
			if err := p.call(http.MethodGet, "/api/v1/summary", summaryValues(metric, "count", from, to, nil), nil, &out); err != nil {
				tb.Fatal(err)
			}
			done := true
			got := map[string]uint64{}
			for _, dv := range out.Devices {
				got[dv.Device] = uint64(dv.Value)
			}
			for d, n := range devs {
				if got[d] > n {
					tb.Fatalf("%s/%s: %d readings stored, more than the %d published", d, metric, got[d], n)
				}
				done = done && got[d] == n
			}
			if done {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("%s: stored counts %v, want %v after 120s\nmetrics:\n%s\nlog:\n%s", metric, got, devs, p.metrics(), tail(p.logs.String(), 40))
			}
			time.Sleep(200 * time.Millisecond) // polling the API
		}
	}
}

// pluginProc is the plugin executable under go-plugin, as Grafana runs it.
type pluginProc struct {
	client *goplugin.Client
	logs   *syncBuffer
	data   pluginv2.DataClient
	diag   pluginv2.DiagnosticsClient
	res    pluginv2.ResourceClient
	stream pluginv2.StreamClient
}

func startPlugin(tb testing.TB) (*pluginProc, error) {
	pp := &pluginProc{logs: &syncBuffer{}}
	cmd := exec.Command(pluginBin)
	// A standalone-address variable would make the SDK act as a locator for
	// a debugger-run plugin instead of serving.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GF_PLUGIN_GRPC_ADDRESS_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "GF_PLUGIN_VERSION=test", "GF_VERSION=12.4.2")
	pp.client = goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig: goplugin.HandshakeConfig{
			ProtocolVersion:  grpcplugin.ProtocolVersion,
			MagicCookieKey:   grpcplugin.MagicCookieKey,
			MagicCookieValue: grpcplugin.MagicCookieValue,
		},
		VersionedPlugins: map[int]goplugin.PluginSet{
			grpcplugin.ProtocolVersion: {
				"diagnostics": &grpcplugin.DiagnosticsGRPCPlugin{},
				"resource":    &grpcplugin.ResourceGRPCPlugin{},
				"data":        &grpcplugin.DataGRPCPlugin{},
				"stream":      &grpcplugin.StreamGRPCPlugin{},
			},
		},
		Cmd:              cmd,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		Logger:           hclog.New(&hclog.LoggerOptions{Name: "plugin", Output: pp.logs, Level: hclog.Debug}),
		StartTimeout:     30 * time.Second,
	})
	atExit(pp.client.Kill)
	rpc, err := pp.client.Client()
	if err != nil {
		return nil, fmt.Errorf("start plugin: %w\n%s", err, pp.logs.String())
	}
	for name, dst := range map[string]any{"data": &pp.data, "diagnostics": &pp.diag, "resource": &pp.res, "stream": &pp.stream} {
		raw, err := rpc.Dispense(name)
		if err != nil {
			return nil, fmt.Errorf("dispense %s: %w", name, err)
		}
		switch d := dst.(type) {
		case *pluginv2.DataClient:
			*d = raw.(pluginv2.DataClient)
		case *pluginv2.DiagnosticsClient:
			*d = raw.(pluginv2.DiagnosticsClient)
		case *pluginv2.ResourceClient:
			*d = raw.(pluginv2.ResourceClient)
		case *pluginv2.StreamClient:
			*d = raw.(pluginv2.StreamClient)
		}
	}
	return pp, nil
}

// runSeq makes names unique within the test process, so a test repeated
// with -count meets nothing a previous run left.
var runSeq atomic.Int64

// dsSettings is a datasource as Grafana would configure it. Its UID gets a
// unique suffix: the plugin process keeps an instance per UID (and update
// time), which a repeated test must not inherit with other settings.
func dsSettings(uid, apiURL, token string) backend.DataSourceInstanceSettings {
	uid = fmt.Sprintf("%s-%d", uid, runSeq.Add(1))
	return backend.DataSourceInstanceSettings{
		UID: uid, Name: uid, Type: PluginID, JSONData: []byte(fmt.Sprintf(`{"url":%q}`, apiURL)),
		DecryptedSecureJSONData: map[string]string{"token": token}, Updated: time.Unix(1700000000, 0),
	}
}

func pctx(ds backend.DataSourceInstanceSettings) backend.PluginContext {
	return backend.PluginContext{OrgID: 1, PluginID: PluginID, DataSourceInstanceSettings: &ds}
}

func (pp *pluginProc) query(tb testing.TB, ds backend.DataSourceInstanceSettings, qs ...backend.DataQuery) *backend.QueryDataResponse {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := pp.data.QueryData(ctx, backend.ToProto().QueryDataRequest(&backend.QueryDataRequest{PluginContext: pctx(ds), Queries: qs}))
	if err != nil {
		tb.Fatalf("QueryData: %v\n%s", err, tail(pp.logs.String(), 30))
	}
	out, err := backend.FromProto().QueryDataResponse(resp)
	if err != nil {
		tb.Fatalf("decode QueryData response: %v", err)
	}
	return out
}

func (pp *pluginProc) health(tb testing.TB, ds backend.DataSourceInstanceSettings) *backend.CheckHealthResult {
	tb.Helper()
	resp, err := pp.diag.CheckHealth(context.Background(), &pluginv2.CheckHealthRequest{PluginContext: backend.ToProto().PluginContext(pctx(ds))})
	if err != nil {
		tb.Fatalf("CheckHealth: %v\n%s", err, tail(pp.logs.String(), 30))
	}
	return backend.FromProto().CheckHealthResponse(resp)
}

// resource calls GET <pathQuery> and returns the status and body.
func (pp *pluginProc) resource(tb testing.TB, ds backend.DataSourceInstanceSettings, method, pathQuery string) (int, []byte) {
	tb.Helper()
	path, _, _ := strings.Cut(pathQuery, "?")
	req := backend.ToProto().CallResourceRequest(&backend.CallResourceRequest{
		PluginContext: pctx(ds), Path: path, Method: method, URL: pathQuery})
	stream, err := pp.res.CallResource(context.Background(), req)
	if err != nil {
		tb.Fatalf("CallResource %s: %v", pathQuery, err)
	}
	var status int
	var body []byte
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			tb.Fatalf("CallResource %s: %v", pathQuery, err)
		}
		resp := backend.FromProto().CallResourceResponse(r)
		if resp.Status != 0 {
			status = resp.Status
		}
		body = append(body, resp.Body...)
	}
	return status, body
}
