package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/api"
	"github.com/iotpipe/iotpipe/internal/bruteforce"
	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/internal/testkafka"
)

// The end-to-end tests run the real binary, as a user would: `iotpipe run`
// with its embedded Kafka (or Apache Kafka when IOTPIPE_KAFKA_BROKERS is set)
// and the embedded ClickHouse engine, devices publishing through
// mosquitto_pub, and answers read through the HTTP API and `iotpipe query`.

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "iotpipe-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "iotpipe")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build iotpipe: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireTools skips (or fails under IOTPIPE_REQUIRE_ALL=1) when the real
// dependencies of an end-to-end test are missing.
func requireTools(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Getenv("CHDB_LIB_PATH") == "" {
		missing = append(missing, "CHDB_LIB_PATH (run scripts/chdb.sh)")
	}
	if _, err := exec.LookPath("mosquitto_pub"); err != nil {
		missing = append(missing, "mosquitto_pub (apt-get install mosquitto-clients)")
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("IOTPIPE_REQUIRE_ALL") == "1" {
		t.Fatalf("end-to-end test needs %s", strings.Join(missing, ", "))
	}
	t.Skipf("SKIP: end-to-end test needs %s", strings.Join(missing, ", "))
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
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

// pipeline is one `iotpipe run` process and what a test needs to talk to it.
type pipeline struct {
	t        *testing.T
	dataDir  string
	kafkaArg []string
	seeds    []string
	topics   bus.Topics
	mqttPort int
	apiURL   string
	cmd      *exec.Cmd
	logs     *syncBuffer
	exited   chan error
}

// newPipeline prepares a data directory and Kafka settings that survive
// restarts of the process.
func newPipeline(t *testing.T) *pipeline {
	requireTools(t)
	p := &pipeline{t: t, dataDir: t.TempDir()}
	p.topics = bus.TopicNames(bus.DefaultPrefix)
	if seeds := testkafka.Real(); len(seeds) > 0 {
		prefix := testkafka.Prefix(t)
		p.seeds, p.topics = seeds, bus.TopicNames(prefix)
		p.kafkaArg = []string{"--kafka-brokers", strings.Join(seeds, ","), "--topic-prefix", prefix,
			"--consumer-group", prefix + "processor", "--partitions", "3"}
	} else {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		p.seeds = []string{addr}
		p.kafkaArg = []string{"--embedded-kafka-addr", addr}
	}
	t.Cleanup(func() {
		if t.Failed() && p.logs != nil {
			t.Logf("iotpipe metrics:\n%s", p.metrics())
			for _, r := range p.deadLetters(t, 0) {
				t.Logf("dead letter %s: %s %s", bus.Header(r, bus.HeaderReason), bus.Header(r, bus.HeaderDetail), r.Value)
			}
			t.Logf("iotpipe run output:\n%s", tail(p.logs.String(), 60))
		}
		if os.Getenv("IOTPIPE_TEST_LOGS") != "" && p.logs != nil {
			t.Logf("iotpipe run output:\n%s", p.logs.String())
		}
		if p.cmd != nil && p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// start launches `iotpipe run` and waits until /readyz answers 200.
func (p *pipeline) start(extra ...string) {
	p.t.Helper()
	args := append(append([]string{"--idle-timeout", "3s", "--allowed-lateness", "2s"}, p.kafkaArg...), extra...)
	p.launch(http.DefaultClient, "http", args)
}

// launch runs `iotpipe run` on the pipeline's data directory and fresh MQTT
// and HTTP ports with args after those, and waits until /readyz, asked over
// scheme with hc, answers 200.
func (p *pipeline) launch(hc *http.Client, scheme string, args []string) {
	t := p.t
	t.Helper()
	p.mqttPort = freePort(t)
	httpPort := freePort(t)
	p.apiURL = fmt.Sprintf("%s://127.0.0.1:%d", scheme, httpPort)
	args = append([]string{"run", "--data-dir", p.dataDir, "--log-format", "json", "--log-level", "debug",
		"--mqtt-addr", fmt.Sprintf("127.0.0.1:%d", p.mqttPort), "--http-addr", fmt.Sprintf("127.0.0.1:%d", httpPort)}, args...)
	p.logs = &syncBuffer{}
	p.cmd = exec.Command(binary, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start iotpipe: %v", err)
	}
	p.exited = make(chan error, 1)
	go func() { p.exited <- p.cmd.Wait() }()
	deadline := time.Now().Add(90 * time.Second)
	for {
		select {
		case err := <-p.exited:
			p.exited <- err
			t.Fatalf("iotpipe run exited before ready: %v\n%s", err, tail(p.logs.String(), 40))
		default:
		}
		resp, err := hc.Get(p.apiURL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("iotpipe run not ready after 90s (last: %v)\n%s", err, tail(p.logs.String(), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// deadLetters reads the dead-letter topic until it holds at least n records
// (n = 0: whatever is there now).
func (p *pipeline) deadLetters(t *testing.T, n int) []*kgo.Record {
	return testkafka.Consume(t, p.seeds, p.topics.DeadLetter, n, 30*time.Second)
}

// metrics returns the pipeline's own iotpipe_* metrics, for failure reports.
func (p *pipeline) metrics() string {
	resp, err := http.Get(p.apiURL + "/metrics")
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

// stop sends SIGTERM and requires a clean exit.
func (p *pipeline) stop() {
	t := p.t
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("signal: %v", err)
	}
	select {
	case err := <-p.exited:
		p.exited <- err
		if err != nil {
			t.Fatalf("iotpipe run exited with %v after SIGTERM\n%s", err, tail(p.logs.String(), 40))
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("iotpipe run did not stop within 60s of SIGTERM\n%s", tail(p.logs.String(), 40))
	}
}

// cli runs another iotpipe subcommand against this pipeline's API.
func (p *pipeline) cli(args ...string) (string, error) {
	args = append(args, "--api", p.apiURL, "--data-dir", p.dataDir)
	cmd := exec.Command(binary, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("iotpipe %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

func (p *pipeline) createDevice(id string) string {
	p.t.Helper()
	out, err := p.cli("devices", "create", id, "-o", "token")
	if err != nil {
		p.t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func (p *pipeline) client() *api.Client {
	p.t.Helper()
	tok, err := os.ReadFile(filepath.Join(p.dataDir, adminTokenFile))
	if err != nil {
		p.t.Fatal(err)
	}
	cl, err := api.NewClient(p.apiURL, strings.TrimSpace(string(tok)))
	if err != nil {
		p.t.Fatal(err)
	}
	return cl
}

// publish sends lines as QoS 1 messages of one device over one MQTT
// connection with mosquitto_pub, which exits non-zero if a message is not
// acknowledged.
func (p *pipeline) publish(device, token, topic string, lines []string, extra ...string) error {
	args := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(p.mqttPort), "-i", device, "-u", device,
		"-P", token, "-t", topic, "-q", "1", "-l"}, extra...)
	cmd := exec.Command("mosquitto_pub", args...)
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("mosquitto_pub %s: %w: %s", device, err, out)
	}
	return nil
}

// reading is one value a test publishes, and the source of its expectations.
type reading struct {
	device, metric string
	at             time.Time
	value          float64
}

type winKey struct {
	device, metric string
	start          time.Time
}

// agg is a window's brute-force aggregate: what the tests compare with the
// stored windows.
type agg = bruteforce.Agg

func expected(rs []reading, size time.Duration) map[winKey]agg {
	out := map[winKey]agg{}
	for _, r := range rs {
		k := winKey{r.device, r.metric, r.at.Truncate(size).UTC()}
		out[k] = out[k].Add(r.value)
	}
	return out
}

// aggValue is the value of aggregate for a, as the API computes it.
func aggValue(a agg, aggregate string) float64 {
	switch aggregate {
	case "count":
		return float64(a.Count)
	case "sum":
		return a.Sum
	case "min":
		return a.Min
	case "max":
		return a.Max
	}
	return a.Sum / float64(a.Count)
}

// waitSeries polls the API until device/metric has want readings (count
// aggregate over [from, to)) and fails if it never does or overshoots.
func waitSeries(t *testing.T, cl *api.Client, device, metric string, from, to time.Time, want uint64) {
	t.Helper()
	var got uint64
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		s, err := cl.Series(context.Background(), api.SeriesParams{Device: device, Metric: metric, Aggregate: "count",
			From: from.Format(time.RFC3339), To: to.Format(time.RFC3339), Step: "1m"})
		if err != nil {
			t.Fatalf("series %s/%s: %v", device, metric, err)
		}
		got = 0
		for _, pt := range s.Points {
			got += uint64(pt.Value)
		}
		if got == want {
			return
		}
		if got > want {
			t.Fatalf("%s/%s: %d readings stored, more than the %d published", device, metric, got, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s/%s: %d of %d readings stored after 90s", device, metric, got, want)
}

// checkWindows compares every aggregate of the API's series at step with the
// brute-force expectation.
func checkWindows(t *testing.T, cl *api.Client, rs []reading, step time.Duration, from, to time.Time) {
	t.Helper()
	want := expected(rs, step)
	series := map[[2]string]bool{}
	for k := range want {
		series[[2]string{k.device, k.metric}] = true
	}
	for dm := range series {
		for _, aggregate := range []string{"count", "mean", "max", "min", "sum"} {
			s, err := cl.Series(context.Background(), api.SeriesParams{Device: dm[0], Metric: dm[1], Aggregate: aggregate,
				From: from.Format(time.RFC3339), To: to.Format(time.RFC3339), Step: step.String()})
			if err != nil {
				t.Fatalf("series %v %s: %v", dm, aggregate, err)
			}
			var n int
			for k := range want {
				if k.device == dm[0] && k.metric == dm[1] {
					n++
				}
			}
			if len(s.Points) != n {
				t.Errorf("%s/%s %s step %v: %d points, want %d", dm[0], dm[1], aggregate, step, len(s.Points), n)
			}
			for _, pt := range s.Points {
				a, ok := want[winKey{dm[0], dm[1], pt.Time.UTC()}]
				if !ok {
					t.Errorf("%s/%s %s: unexpected bucket %s", dm[0], dm[1], aggregate, pt.Time)
					continue
				}
				if !bruteforce.Near(pt.Value, aggValue(a, aggregate)) || pt.Count != a.Count {
					t.Errorf("%s/%s %s at %s: got %v (count %d), want %v (count %d)", dm[0], dm[1], aggregate,
						pt.Time.Format(time.RFC3339), pt.Value, pt.Count, aggValue(a, aggregate), a.Count)
				}
			}
		}
	}
}

// summaries is the brute-force per-device value of metric:aggregate.
func summaries(rs []reading, metric, aggregate string) map[string]float64 {
	per := map[string]agg{}
	for _, r := range rs {
		if r.metric != metric {
			continue
		}
		per[r.device] = per[r.device].Add(r.value)
	}
	out := map[string]float64{}
	for d, a := range per {
		out[d] = aggValue(a, aggregate)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
