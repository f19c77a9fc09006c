package main

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotpipe/iotpipe/api"
	"github.com/iotpipe/iotpipe/internal/bruteforce"
)

// fleetReadings makes n readings of temperature and humidity for each device,
// every step from base, with values that differ per device and reading.
func fleetReadings(devices []string, base time.Time, n int, step time.Duration) []reading {
	var rs []reading
	for d, dev := range devices {
		for i := 0; i < n; i++ {
			at := base.Add(time.Duration(i)*step + time.Duration(d*37)*time.Millisecond)
			temp := math.Round((20+float64(d)+5*math.Sin(float64(i)/3))*1000) / 1000
			hum := math.Round((40+float64(3*d)+10*math.Cos(float64(i)/5))*1000) / 1000
			rs = append(rs, reading{dev, "temperature", at, temp}, reading{dev, "humidity", at, hum})
		}
	}
	return rs
}

// payloads turns readings (temperature and humidity pairs, in order) into
// the JSON lines each device publishes.
func payloads(rs []reading) map[string][]string {
	out := map[string][]string{}
	for i := 0; i+1 < len(rs); i += 2 {
		t, h := rs[i], rs[i+1]
		out[t.device] = append(out[t.device], fmt.Sprintf(`{"ts": %d, "temperature": %v, "humidity": %v}`, t.at.UnixMilli(), t.value, h.value))
	}
	return out
}

// publishAll publishes every device's lines concurrently, one connection each.
func publishAll(t *testing.T, p *pipeline, tokens map[string]string, lines map[string][]string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(lines))
	for dev, ls := range lines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- p.publish(dev, tokens[dev], "/devices/"+dev+"/events", ls)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// publishInOrder publishes every reading pair in event-time order across the
// fleet, one Paho connection per device, each QoS 1 publish awaiting its
// PUBACK. Devices share partitions, whose watermark is the maximum event time
// seen, so a fleet replaying history must send it in time order, as live
// devices do.
func publishInOrder(t *testing.T, p *pipeline, tokens map[string]string, rs []reading) {
	t.Helper()
	clients := map[string]mqtt.Client{}
	for dev, tok := range tokens {
		opts := mqtt.NewClientOptions().AddBroker(fmt.Sprintf("tcp://127.0.0.1:%d", p.mqttPort)).
			SetClientID(dev).SetUsername(dev).SetPassword(tok).SetProtocolVersion(4).SetAutoReconnect(false)
		c := mqtt.NewClient(opts)
		if tk := c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			t.Fatalf("connect %s: %v", dev, tk.Error())
		}
		defer c.Disconnect(100)
		clients[dev] = c
	}
	pairs := make([][2]reading, 0, len(rs)/2)
	for i := 0; i+1 < len(rs); i += 2 {
		pairs = append(pairs, [2]reading{rs[i], rs[i+1]})
	}
	sort.SliceStable(pairs, func(i, j int) bool { return pairs[i][0].at.Before(pairs[j][0].at) })
	for _, pr := range pairs {
		tm, h := pr[0], pr[1]
		msg := fmt.Sprintf(`{"ts": %d, "temperature": %v, "humidity": %v}`, tm.at.UnixMilli(), tm.value, h.value)
		tk := clients[tm.device].Publish("/devices/"+tm.device+"/events", 1, false, msg)
		if !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			t.Fatalf("publish %s: %v", tm.device, tk.Error())
		}
	}
}

func waitAll(t *testing.T, cl *api.Client, rs []reading, from, to time.Time) {
	t.Helper()
	counts := map[[2]string]uint64{}
	for _, r := range rs {
		counts[[2]string{r.device, r.metric}]++
	}
	for dm, n := range counts {
		waitSeries(t, cl, dm[0], dm[1], from, to, n)
	}
}

func TestEndToEnd(t *testing.T) {
	p := newPipeline(t)
	p.start("--jwt-audience", e2eJWTAudience)
	devices := []string{"thermo-1", "thermo-2", "thermo-3"}
	tokens := map[string]string{}
	for _, d := range devices {
		tokens[d] = p.createDevice(d)
	}
	// Readings over three minutes a few minutes ago, every 3.5 s, so 10 s
	// windows hold 2 or 3 readings and 1 min windows about 17.
	base := time.Now().UTC().Truncate(time.Minute).Add(-6 * time.Minute)
	rs := fleetReadings(devices, base, 52, 3500*time.Millisecond)
	publishInOrder(t, p, tokens, rs)

	cl := p.client()
	from, to := base.Add(-time.Minute), base.Add(5*time.Minute)
	waitAll(t, cl, rs, from, to)
	for _, step := range []time.Duration{10 * time.Second, time.Minute, 2 * time.Minute} {
		checkWindows(t, cl, rs, step, from, to)
	}

	// `iotpipe query`: the seed's analysis, mean temperature and max humidity.
	out, err := p.cli("query", "--from", from.Format(time.RFC3339), "--to", to.Format(time.RFC3339), "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var sums []api.Summary
	if err := json.Unmarshal([]byte(out), &sums); err != nil {
		t.Fatalf("query -o json: %v\n%s", err, out)
	}
	wantMean, wantMax := summaries(rs, "temperature", "mean"), summaries(rs, "humidity", "max")
	if len(sums) != 2 || sums[0].Metric != "temperature" || sums[0].Aggregate != "mean" || sums[1].Metric != "humidity" || sums[1].Aggregate != "max" {
		t.Fatalf("query returned %+v, want temperature:mean then humidity:max", sums)
	}
	for i, want := range []map[string]float64{wantMean, wantMax} {
		if len(sums[i].Devices) != len(want) {
			t.Errorf("%s: %d devices, want %d", sums[i].Metric, len(sums[i].Devices), len(want))
		}
		for _, dv := range sums[i].Devices {
			if !bruteforce.Near(dv.Value, want[dv.Device]) {
				t.Errorf("%s %s of %s = %v, want %v", sums[i].Aggregate, sums[i].Metric, dv.Device, dv.Value, want[dv.Device])
			}
		}
	}
	text, err := p.cli("query", "--from", from.Format(time.RFC3339), "--to", to.Format(time.RFC3339))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devices {
		want := fmt.Sprintf("%s  %s", d, formatValue(wantMean[d]))
		if !strings.Contains(strings.Join(strings.Fields(text), "  "), want) {
			t.Errorf("query table lacks %q:\n%s", want, text)
		}
	}

	checkDeviceMetadataCLI(t, p)
	checkReadToken(t, p)
	checkConfigStateCLI(t, p)
	jwt := checkJWTCLI(t, p)
	checkBlockAndSecrets(t, p, tokens, jwt)
}

// checkDeviceMetadataCLI: names and labels through `iotpipe devices`, and
// label selection in `devices list`.
func checkDeviceMetadataCLI(t *testing.T, p *pipeline) {
	t.Helper()
	if _, err := p.cli("devices", "create", "meta-1", "--name", "Cellar", "--labels", "site=north,floor=1", "-o", "token"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.cli("devices", "create", "meta-2", "--labels", "site=south"); err != nil {
		t.Fatal(err)
	}
	out, err := p.cli("devices", "list", "--labels", "site=north", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var list []api.Device
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("devices list -o json: %v\n%s", err, out)
	}
	if len(list) != 1 || list[0].ID != "meta-1" || list[0].Name != "Cellar" || list[0].Labels["floor"] != "1" {
		t.Fatalf("list --labels site=north = %+v", list)
	}
	if out, err = p.cli("devices", "set", "meta-2", "--labels", "site=north,floor=3"); err != nil {
		t.Fatal(err)
	}
	text, err := p.cli("devices", "list", "--labels", "site=north")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, "meta-2") || !strings.Contains(text, "floor=3,site=north") {
		t.Errorf("after set, list site=north lacks meta-2 floor=3:\n%s", text)
	}
	if _, err := p.cli("devices", "create", "meta-3", "--labels", "Site=x"); err == nil {
		t.Error("create with an invalid label key succeeded")
	}
}

// checkReadToken: iotpipe run keeps a read-only token beside the admin token;
// it reads series and may not write.
func checkReadToken(t *testing.T, p *pipeline) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.dataDir, readTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(p.dataDir, readTokenFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("read-token file mode: %v, %v; want 0600", fi.Mode(), err)
	}
	cl, err := api.NewClient(p.apiURL, strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Devices(t.Context(), ""); err != nil {
		t.Errorf("read token cannot list devices: %v", err)
	}
	if _, err := cl.CreateDevice(t.Context(), api.NewDevice{ID: "ro-x"}); api.StatusOf(err) != http.StatusForbidden {
		t.Errorf("read token create: %v, want 403", err)
	}
}

func TestRestartKeepsDevicesReadingsAndWindows(t *testing.T) {
	p := newPipeline(t)
	p.start()
	tokens := map[string]string{"keeper": p.createDevice("keeper")}
	base := time.Now().UTC().Truncate(time.Minute).Add(-4 * time.Minute)
	first := fleetReadings([]string{"keeper"}, base, 30, 2*time.Second)
	publishAll(t, p, tokens, payloads(first))
	cl := p.client()
	from := base.Add(-time.Minute)
	waitAll(t, cl, first, from, time.Now().Add(time.Hour))
	p.stop()

	p.start()
	cl = p.client()
	// The device and its token survived: publish again with the old token.
	// These readings are newer than the watermark the first run committed.
	second := fleetReadings([]string{"keeper"}, time.Now().UTC(), 12, 250*time.Millisecond)
	publishAll(t, p, tokens, payloads(second))
	all := append(append([]reading{}, first...), second...)
	to := time.Now().Add(time.Hour)
	waitAll(t, cl, all, from, to)
	checkWindows(t, cl, all, 10*time.Second, from, to)
	checkWindows(t, cl, all, time.Minute, from, to)
}
