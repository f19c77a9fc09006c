package plugin

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/grafana/grafana-plugin-sdk-go/backend"
)

// Benchmark data: IOTPIPE_BENCH_DEVICES devices (default 3), each sending a
// temperature reading every IOTPIPE_BENCH_INTERVAL (default 2h) for the 30
// days before the data's end (2 hours ago, on the hour). The defaults keep
// `go test -bench` fast; scale with e.g. IOTPIPE_BENCH_DEVICES=100
// IOTPIPE_BENCH_INTERVAL=1m.
type benchFixture struct {
	p        *pipeline
	pp       *pluginProc
	ds       backend.DataSourceInstanceSettings
	devices  []string
	from, to time.Time
	readings int
}

var (
	benchOnce sync.Once
	benchFx   *benchFixture
)

func envInt(b *testing.B, name string, def int) int {
	if v := os.Getenv(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("%s=%q: want a positive integer", name, v)
		}
		return n
	}
	return def
}

func envDuration(b *testing.B, name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second {
			b.Fatalf("%s=%q: want a duration of at least 1s", name, v)
		}
		return d
	}
	return def
}

// externalBench uses a running iotpipe instead of publishing data:
// IOTPIPE_BENCH_API_URL and IOTPIPE_BENCH_TOKEN (a read token), for example
// one filled by `iotpipe simulate --devices 1000 --backfill 720h`. The 30
// days end at IOTPIPE_BENCH_TO (RFC 3339; default: now).
func externalBench(b *testing.B) *benchFixture {
	url, token := os.Getenv("IOTPIPE_BENCH_API_URL"), os.Getenv("IOTPIPE_BENCH_TOKEN")
	if url == "" {
		return nil
	}
	buildBinaries(b)
	pp, err := startPlugin(b)
	if err != nil {
		b.Fatal(err)
	}
	f := &benchFixture{pp: pp, ds: dsSettings("iotpipe-bench", url, token), to: time.Now().UTC()}
	if v := os.Getenv("IOTPIPE_BENCH_TO"); v != "" {
		if f.to, err = time.Parse(time.RFC3339, v); err != nil {
			b.Fatalf("IOTPIPE_BENCH_TO: %v", err)
		}
	}
	f.from = f.to.Add(-30 * 24 * time.Hour)
	req, _ := http.NewRequest(http.MethodGet, strings.TrimSuffix(url, "/")+"/api/v1/devices", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct {
		Devices []struct {
			ID string `json:"id"`
		} `json:"devices"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("list devices at %s: %d %v", url, resp.StatusCode, err)
	}
	for _, d := range list.Devices {
		f.devices = append(f.devices, d.ID)
	}
	if len(f.devices) == 0 {
		b.Fatalf("no devices at %s", url)
	}
	b.Logf("bench data: the running iotpipe at %s, %d devices, 30 days to %s", url, len(f.devices), f.to.Format(time.RFC3339))
	return f
}

func getBench(b *testing.B) *benchFixture {
	b.Helper()
	if benchFx != nil {
		return benchFx
	}
	if f := externalBench(b); f != nil {
		benchFx = f
		return f
	}
	requireChDB(b)
	buildBinaries(b)
	benchOnce.Do(func() {
		nDev := envInt(b, "IOTPIPE_BENCH_DEVICES", 3)
		every := envDuration(b, "IOTPIPE_BENCH_INTERVAL", 2*time.Hour)
		// Generous lateness: devices publish concurrently, so a partition
		// may see one device's reading after a slightly later one of
		// another. The data ends 2 h ago so the idle advance (now minus
		// lateness) still closes every window.
		p, err := startPipeline(b, "--allowed-lateness", "1h")
		if err != nil {
			b.Fatal(err)
		}
		pp, err := startPlugin(b)
		if err != nil {
			b.Fatal(err)
		}
		f := &benchFixture{p: p, pp: pp, ds: dsSettings("iotpipe-bench", p.url, p.readToken)}
		f.to = time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)
		f.from = f.to.Add(-30 * 24 * time.Hour)
		tokens := map[string]string{}
		for i := range nDev {
			id := fmt.Sprintf("bench-%04d", i)
			f.devices = append(f.devices, id)
			tokens[id] = p.createDevice(b, id, map[string]string{"fleet": "bench"})
		}
		start := time.Now()
		f.readings = publishHistory(b, p, tokens, f.devices, f.from, f.to, every, 30*time.Minute)
		var rs []reading // only the counts matter to waitStored
		n := f.readings / nDev
		for _, d := range f.devices {
			for range n {
				rs = append(rs, reading{device: d, metric: "temperature"})
			}
		}
		p.waitStored(b, rs, f.from, f.to)
		b.Logf("bench data: %d devices × %d readings (every %v over 30 days), published and stored in %v",
			nDev, n, every, time.Since(start).Round(time.Millisecond))
		benchFx = f
	})
	if benchFx == nil {
		b.Fatal("the benchmark fixture failed to start earlier")
	}
	return benchFx
}

// publishHistory sends every device's readings in time order across the
// fleet, pipelined (up to 1024 unacknowledged publishes) since one round
// trip per message would take hours at scale. Connections are independent,
// so it waits for every acknowledgement whenever event time moved on by
// maxSkew: no partition then sees a reading later than the allowed
// lateness behind another. It returns the readings sent.
func publishHistory(b *testing.B, p *pipeline, tokens map[string]string, devices []string, from, to time.Time, every, maxSkew time.Duration) int {
	b.Helper()
	clients := make([]mqtt.Client, len(devices))
	for i, d := range devices {
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + p.mqttAddr).SetClientID(d).
			SetUsername(d).SetPassword(tokens[d]).SetProtocolVersion(4).SetAutoReconnect(false))
		if tk := c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			b.Fatalf("connect %s: %v", d, tk.Error())
		}
		defer c.Disconnect(100)
		clients[i] = c
	}
	var pending []mqtt.Token
	flush := func() {
		for _, tk := range pending {
			if !tk.WaitTimeout(60*time.Second) || tk.Error() != nil {
				b.Fatalf("publish: %v", tk.Error())
			}
		}
		pending = pending[:0]
	}
	n := 0
	flushed := from
	for k := 0; from.Add(time.Duration(k) * every).Before(to); k++ {
		at := from.Add(time.Duration(k) * every)
		if at.Sub(flushed) >= maxSkew {
			flush()
			flushed = at
		}
		for i, d := range devices {
			v := math.Round((20+float64(i%10)+5*math.Sin(float64(k)/7))*1000) / 1000
			payload, _ := json.Marshal(map[string]any{"ts": at.UnixMilli(), "temperature": v})
			pending = append(pending, clients[i].Publish("/devices/"+d+"/events", 1, false, payload))
			n++
			if len(pending) >= 1024 {
				flush()
			}
		}
	}
	flush()
	return n
}

// runTimed calls f b.N times and reports the 95th percentile latency.
func runTimed(b *testing.B, f func()) {
	b.Helper()
	var lat []time.Duration
	for b.Loop() {
		t0 := time.Now()
		f()
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		p95 := lat[min(len(lat)-1, int(math.Ceil(0.95*float64(len(lat))))-1)]
		b.ReportMetric(float64(p95.Microseconds())/1000, "p95-ms")
	}
}

var benchSink *backend.QueryDataResponse

// BenchmarkQueryDay is one panel refresh through the plugin process: one
// device × one metric × the last 24 h of data at maxDataPoints 1000
// (step 2m from the 1m windows).
func BenchmarkQueryDay(b *testing.B) {
	f := getBench(b)
	js, _ := json.Marshal(map[string]any{"schemaVersion": 1, "devices": []string{f.devices[0]}, "metric": "temperature", "aggregates": []string{"mean"}})
	q := backend.DataQuery{RefID: "A", JSON: js, MaxDataPoints: 1000, Interval: time.Second,
		TimeRange: backend.TimeRange{From: f.to.Add(-24 * time.Hour), To: f.to}}
	first := f.pp.query(b, f.ds, q)
	if r := first.Responses["A"]; r.Error != nil || len(r.Frames) != 1 || r.Frames[0].Rows() == 0 {
		b.Fatalf("query: %v (%d frames)", r.Error, len(r.Frames))
	}
	runTimed(b, func() { benchSink = f.pp.query(b, f.ds, q) })
}

// BenchmarkSummary30d is a stat panel: the 30-day mean of every device.
func BenchmarkSummary30d(b *testing.B) {
	f := getBench(b)
	js, _ := json.Marshal(map[string]any{"schemaVersion": 1, "queryType": "summary", "devices": []string{"*"}, "metric": "temperature"})
	q := backend.DataQuery{RefID: "A", JSON: js, MaxDataPoints: 1000, Interval: time.Second,
		TimeRange: backend.TimeRange{From: f.from, To: f.to}}
	first := f.pp.query(b, f.ds, q)
	if r := first.Responses["A"]; r.Error != nil || len(r.Frames) != 1 || r.Frames[0].Rows() != len(f.devices) {
		b.Fatalf("summary: %v (%d frames)", r.Error, len(r.Frames))
	}
	runTimed(b, func() { benchSink = f.pp.query(b, f.ds, q) })
}
