package broker

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/ingest"
	"github.com/iotpipe/iotpipe/registry"
)

// TestBrokerConnections measures connects per second through the real
// registry authentication path and the resident memory the broker spends
// per connected idle device. IOTPIPE_BENCH_CONNS sets the number of devices
// (default 100, so `go test ./...` stays fast); the docs use 10000:
//
//	IOTPIPE_BENCH_CONNS=10000 go test -run '^TestBrokerConnections$' -v -timeout 20m ./broker
//
// Three processes keep the memory honest. This test starts one broker
// process per profile (a fresh Go heap, so memory freed by an earlier
// profile cannot hide the cost of the next); that process runs kfake, the
// registry and the broker, and starts a third process, the Paho clients. The
// broker process samples its own VmRSS and Go memory statistics before the
// clients connect and once all N are connected and idle; the difference
// divided by N is the cost per device, with no client memory in it. Kernel
// socket buffers are not in VmRSS and not counted.
func TestBrokerConnections(t *testing.T) {
	switch os.Getenv(benchRoleEnv) {
	case "broker":
		connBenchBroker(t)
		return
	case "clients":
		connBenchClients(t)
		return
	}
	n := 100
	if s := os.Getenv("IOTPIPE_BENCH_CONNS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("IOTPIPE_BENCH_CONNS=%q: want a positive number", s)
		}
		n = v
	}
	var results []connBenchResult
	for _, p := range connBenchProfiles {
		for _, c := range connBenchCredentials {
			r := runConnBenchBroker(t, p.name, c.name, n)
			results = append(results, r)
			t.Logf("%-14s %-6s devices=%d register=%.0f/s connects=%.0f/s reconnects=%.0f/s | per device: RSS %.1f KiB (after GC+release %.1f), after reconnect wave %.1f KiB (after GC %.1f); heap %.1f KiB, stacks %.1f KiB, goroutines %.2f",
				r.Profile, r.Credential, r.Devices, r.RegisterPerSec, r.ConnectsPerSec, r.ReconnectsPerSec,
				r.RSSPerDevice/1024, r.RSSAfterGCPerDevice/1024, r.RSSReconnectPerDevice/1024, r.RSSReconnectGCPerDev/1024,
				r.HeapPerDevice/1024, r.StackPerDevice/1024, r.GoroutinesPerDevice)
		}
	}
	// Below a few thousand devices the per-device figures are dominated by
	// noise in the process baseline, so the target is only checked at scale.
	if n >= 2000 {
		for _, r := range results {
			if r.Profile == "tuned" && max(r.RSSPerDevice, r.RSSReconnectPerDevice) > connBenchTargetBytes {
				t.Errorf("%s/%s: %.0f bytes resident per idle device, target ≤ %d",
					r.Profile, r.Credential, max(r.RSSPerDevice, r.RSSReconnectPerDevice), connBenchTargetBytes)
			}
		}
	}
}

const (
	benchRoleEnv         = "IOTPIPE_BENCH_ROLE"
	benchArgEnv          = "IOTPIPE_BENCH_ARG" // JSON connBenchArgs for the child processes
	benchResultPrefix    = "IOTPIPE_BENCH_RESULT "
	benchConnectedPrefix = "IOTPIPE_BENCH_CONNECTED "
	connBenchTargetBytes = 40_000 // "40 KB"
	connBenchParallel    = 64     // clients connecting at the same time
)

// connBenchProfile is a set of per-connection settings to compare.
type connBenchProfile struct {
	name  string
	apply func(*Config)
}

var connBenchProfiles = []connBenchProfile{
	// mochi's own defaults for the per-client settings.
	{"mochi-defaults", func(c *Config) {
		c.mochiOptions = func(o *mqtt.Options) {
			d := mqtt.NewDefaultServerCapabilities()
			o.Capabilities.MaximumClientWritesPending = d.MaximumClientWritesPending
			o.ClientNetReadBufferSize, o.ClientNetWriteBufferSize = 2<<10, 2<<10
		}
	}},
	// What iotpipe set before the settings became Config fields.
	{"previous", func(c *Config) { c.ClientReadBufferBytes, c.ClientWritesPending = 4<<10, 64 }},
	// The defaults.
	{"tuned", func(*Config) {}},
}

// connBenchCredential provisions one device in the registry and returns the
// MQTT password it connects with (made in the broker process, so the clients
// only send it and the connect rate measures the broker's checking).
type connBenchCredential struct {
	name      string
	provision func(t *testing.T, ctx context.Context, r *registry.Registry, id string) (password string, err error)
}

var connBenchCredentials = []connBenchCredential{
	{"token", func(_ *testing.T, ctx context.Context, r *registry.Registry, id string) (string, error) {
		_, tok, err := r.Create(ctx, registry.Spec{ID: id})
		return tok, err
	}},
	// A device with an ES256 public key (ES256_PEM) and a JWT valid for an
	// hour, as a Cloud IoT Core device connects.
	{"es256", func(t *testing.T, ctx context.Context, r *registry.Registry, id string) (string, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", fmt.Errorf("generate key: %w", err)
		}
		der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			return "", fmt.Errorf("marshal key: %w", err)
		}
		if _, _, err := r.Create(ctx, registry.Spec{ID: id}); err != nil {
			return "", err
		}
		spec := registry.CredentialSpec{Type: registry.CredentialES256PEM,
			PEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}
		if err := r.AddCredential(ctx, id, spec); err != nil {
			return "", err
		}
		now := time.Now()
		return signJWT(t, key, jwtAud, now, now.Add(time.Hour)), nil
	}},
}

type connBenchArgs struct {
	Profile    string
	Credential string
	Devices    int
	Addr       string // clients: broker address
	CredsFile  string // clients: "id password" lines
}

type connBenchResult struct {
	Profile             string
	Credential          string
	Devices             int
	RegisterPerSec      float64
	ConnectsPerSec      float64
	RSSPerDevice        float64 // VmRSS delta right after all connected
	RSSAfterGCPerDevice float64 // VmRSS delta after runtime.GC and debug.FreeOSMemory
	ReconnectsPerSec    float64 // second wave
	// VmRSS delta after every device disconnected and connected again,
	// right away and after a GC (no FreeOSMemory).
	RSSReconnectPerDevice float64
	RSSReconnectGCPerDev  float64
	HeapPerDevice         float64 // HeapInuse delta after GC
	StackPerDevice        float64 // StackInuse delta after GC
	GoroutinesPerDevice   float64
}

// childCmd re-runs this test binary as role with args.
func childCmd(t *testing.T, role string, args connBenchArgs) *exec.Cmd {
	t.Helper()
	b, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestBrokerConnections$", "-test.timeout=30m")
	cmd.Env = append(os.Environ(), benchRoleEnv+"="+role, benchArgEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	return cmd
}

func childArgs(t *testing.T) connBenchArgs {
	t.Helper()
	var a connBenchArgs
	if err := json.Unmarshal([]byte(os.Getenv(benchArgEnv)), &a); err != nil {
		t.Fatalf("%s: %v", benchArgEnv, err)
	}
	return a
}

// runConnBenchBroker runs one broker process and returns its result line.
func runConnBenchBroker(t *testing.T, profile, cred string, n int) connBenchResult {
	t.Helper()
	cmd := childCmd(t, "broker", connBenchArgs{Profile: profile, Credential: cred, Devices: n})
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("broker process %s/%s: %v\n%s", profile, cred, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if s, ok := strings.CutPrefix(line, benchResultPrefix); ok {
			var r connBenchResult
			if err := json.Unmarshal([]byte(s), &r); err != nil {
				t.Fatalf("result %q: %v", s, err)
			}
			return r
		}
	}
	t.Fatalf("broker process %s/%s printed no result:\n%s", profile, cred, out)
	return connBenchResult{}
}

// raiseFileLimit lifts the soft open-files limit to the hard one.
func raiseFileLimit(t *testing.T, need int) {
	t.Helper()
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		t.Fatal(err)
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			t.Fatal(err)
		}
	}
	if l.Cur < uint64(need) {
		t.Fatalf("open files limit %d < %d needed; raise the hard limit (ulimit -Hn)", l.Cur, need)
	}
}

type memSample struct {
	rss, heap, stack uint64
	goroutines       int
}

// sample reads VmRSS and, after a GC, the Go heap and stack in use. With
// release it first returns freed memory to the OS.
func sample(t *testing.T, release bool) memSample {
	t.Helper()
	runtime.GC()
	if release {
		debug.FreeOSMemory()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{rss: vmRSS(t), heap: ms.HeapInuse, stack: ms.StackInuse, goroutines: runtime.NumGoroutine()}
}

func vmRSS(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatalf("read VmRSS: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if s, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("parse VmRSS %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

func perDevice(after, before uint64, n int) float64 {
	return (float64(after) - float64(before)) / float64(n)
}

// connBenchBroker is the broker process: kfake, the registry with N devices,
// the broker with one profile, and the clients process.
func connBenchBroker(t *testing.T) {
	a := childArgs(t)
	raiseFileLimit(t, a.Devices+1000)
	var cred connBenchCredential
	for _, c := range connBenchCredentials {
		if c.name == a.Credential {
			cred = c
		}
	}
	var apply func(*Config)
	for _, p := range connBenchProfiles {
		if p.name == a.Profile {
			apply = p.apply
		}
	}
	if cred.provision == nil || apply == nil {
		t.Fatalf("unknown profile %q or credential %q", a.Profile, a.Credential)
	}

	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, testTopic))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seeds := []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}
	reg, err := registry.New(registry.Config{Kafka: seeds, Topic: "iot.registry", Logger: testLogger(), JWTAudience: jwtAud})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	regDone := make(chan error, 1)
	go func() { regDone <- reg.Run(ctx) }()
	if err := reg.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	// Register the fleet through the registry (Kafka write, then applied),
	// in parallel, and keep the passwords for the clients.
	dir := t.TempDir()
	credsFile := filepath.Join(dir, "creds")
	passwords := make([]string, a.Devices)
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < a.Devices; i = int(next.Add(1)) - 1 {
				pw, err := cred.provision(t, ctx, reg, benchDeviceID(i))
				if err != nil {
					errs <- fmt.Errorf("provision %s: %w", benchDeviceID(i), err)
					return
				}
				passwords[i] = pw
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	registerPerSec := float64(a.Devices) / time.Since(start).Seconds()
	var sb strings.Builder
	for i, pw := range passwords {
		fmt.Fprintf(&sb, "%s %s\n", benchDeviceID(i), pw)
	}
	if err := os.WriteFile(credsFile, []byte(sb.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	fw, err := ingest.New(ingest.Config{Kafka: seeds, Topic: testTopic, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fw.Close(context.Background()) }()
	cfg := Config{TCPAddr: "127.0.0.1:0", Auth: reg, Forwarder: fw, Logger: testLogger()}
	apply(&cfg)
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runDone := make(chan error, 1)
	go func() { runDone <- b.Run(ctx) }()
	// The listener is bound already; connections made before Serve runs wait
	// in the accept backlog.

	before := sample(t, true)

	cmd := childCmd(t, "clients", connBenchArgs{Devices: a.Devices, Addr: b.Addr(), CredsFile: credsFile})
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	// connected waits for the clients process to report a finished wave and
	// for the broker to hold exactly that many connections: the previous
	// wave's have ended. (Not Clients.Len(): when a clean-session client
	// reconnects while its old connection is ending, mochi's check of the
	// old one's takeover can race the new one's Clients.Add, and the old
	// one's Clients.Delete then removes the new entry.)
	connected := func() float64 {
		for lines.Scan() {
			if s, ok := strings.CutPrefix(lines.Text(), benchConnectedPrefix); ok {
				rate, err := strconv.ParseFloat(s, 64)
				if err != nil {
					t.Fatalf("clients: %q: %v", lines.Text(), err)
				}
				eventually(t, "all clients connected", func() bool {
					return atomic.LoadInt64(&b.srv.Info.ClientsConnected) == int64(a.Devices)
				})
				return rate
			}
		}
		_ = cmd.Wait()
		t.Fatal("clients process ended without connecting")
		return 0
	}
	connectsPerSec := connected()
	fresh := memSample{rss: vmRSS(t)} // before any GC: what the connect storm left resident
	freshGC := sample(t, true)

	// Everyone reconnects: the second wave's allocations reuse memory the
	// first one freed, as in a long-running broker with churn.
	if _, err := io.WriteString(stdin, "again\n"); err != nil {
		t.Fatal(err)
	}
	reconnectsPerSec := connected()
	again := memSample{rss: vmRSS(t)}
	againGC := sample(t, false)

	_ = stdin.Close() // the clients process disconnects and exits
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("clients process: %v", err)
	}
	cancel()
	if err := <-runDone; err != nil {
		t.Errorf("broker: %v", err)
	}
	if err := <-regDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("registry: %v", err)
	}

	res := connBenchResult{
		Profile: a.Profile, Credential: a.Credential, Devices: a.Devices,
		RegisterPerSec: registerPerSec, ConnectsPerSec: connectsPerSec, ReconnectsPerSec: reconnectsPerSec,
		RSSPerDevice:          perDevice(fresh.rss, before.rss, a.Devices),
		RSSAfterGCPerDevice:   perDevice(freshGC.rss, before.rss, a.Devices),
		RSSReconnectPerDevice: perDevice(again.rss, before.rss, a.Devices),
		RSSReconnectGCPerDev:  perDevice(againGC.rss, before.rss, a.Devices),
		HeapPerDevice:         perDevice(freshGC.heap, before.heap, a.Devices),
		StackPerDevice:        perDevice(freshGC.stack, before.stack, a.Devices),
		GoroutinesPerDevice:   float64(freshGC.goroutines-before.goroutines) / float64(a.Devices),
	}
	js, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(benchResultPrefix + string(js))
}

func benchDeviceID(i int) string { return fmt.Sprintf("bench-%05d", i) }

// connBenchClients is the clients process: it connects every device with
// Paho (MQTT 3.1.1, as Cloud IoT Core devices do), connBenchParallel at a
// time, prints the connect rate, then holds the idle connections until its
// stdin closes.
func connBenchClients(t *testing.T) {
	a := childArgs(t)
	raiseFileLimit(t, a.Devices+100)
	b, err := os.ReadFile(a.CredsFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != a.Devices {
		t.Fatalf("%d credentials, want %d", len(lines), a.Devices)
	}
	connect := func(id, pw string) (pahov3.Client, error) {
		opts := pahov3.NewClientOptions().AddBroker("tcp://" + a.Addr).
			SetClientID("projects/p/locations/l/registries/r/devices/" + id).
			SetUsername("unused").SetPassword(pw).SetProtocolVersion(4).
			SetKeepAlive(5 * time.Minute).SetAutoReconnect(false).SetConnectRetry(false).
			SetConnectTimeout(time.Minute)
		cl := pahov3.NewClient(opts)
		tok := cl.Connect()
		if !tok.WaitTimeout(time.Minute) {
			return nil, errors.New("no CONNACK within a minute")
		}
		return cl, tok.Error()
	}
	// The password is checked: a wrong one is refused.
	if id, pw, _ := strings.Cut(lines[0], " "); true {
		if _, err := connect(id, pw+"x"); err == nil {
			t.Fatal("a wrong password was accepted")
		}
	}
	clients := make([]pahov3.Client, len(lines))
	// wave connects every device, connBenchParallel at a time, and prints
	// the connect rate.
	wave := func() {
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, connBenchParallel)
		start := time.Now()
		for w := 0; w < connBenchParallel; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1)) - 1; i < len(lines); i = int(next.Add(1)) - 1 {
					id, pw, _ := strings.Cut(lines[i], " ")
					cl, err := connect(id, pw)
					if err != nil {
						errs <- fmt.Errorf("connect %s: %w", id, err)
						return
					}
					clients[i] = cl
				}
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		fmt.Printf("%s%f\n", benchConnectedPrefix, float64(len(lines))/elapsed.Seconds())
	}
	// Each line on stdin asks for another wave: everyone disconnects, then
	// reconnects. EOF ends the process.
	in := bufio.NewScanner(os.Stdin)
	for {
		wave()
		if !in.Scan() {
			break
		}
		for _, cl := range clients {
			cl.Disconnect(0)
		}
	}
	for _, cl := range clients {
		cl.Disconnect(0)
	}
}
