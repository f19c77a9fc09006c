package broker

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/ingest"
	"github.com/iotpipe/iotpipe/internal/testcert"
	"github.com/iotpipe/iotpipe/registry"
)

// TestTLSConnectionMemory measures the resident memory the broker spends
// per idle device connected over plain TCP with a token, over TLS with a
// token, and over TLS with a CA-signed client certificate, the way
// TestBrokerConnections does (a broker process per mode, the clients in a
// third process, VmRSS and Go memory sampled in the broker process). It
// runs only when IOTPIPE_BENCH_TLS_CONNS is set:
//
//	IOTPIPE_BENCH_TLS_CONNS=5000 go test -run '^TestTLSConnectionMemory$' -v -timeout 20m ./broker
func TestTLSConnectionMemory(t *testing.T) {
	switch os.Getenv(tlsBenchRoleEnv) {
	case "broker":
		tlsBenchBroker(t)
		return
	case "clients":
		tlsBenchClients(t)
		return
	}
	s := os.Getenv("IOTPIPE_BENCH_TLS_CONNS")
	if s == "" {
		t.Skip("set IOTPIPE_BENCH_TLS_CONNS=<devices> to measure memory per TLS connection")
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("IOTPIPE_BENCH_TLS_CONNS=%q: want a positive number", s)
	}
	for _, mode := range []string{"tcp-token", "tls-token", "tls-cert"} {
		cmd := tlsBenchChild(t, "broker", tlsBenchArgs{Mode: mode, Devices: n})
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v\n%s", mode, err, out)
		}
		found := false
		for _, line := range strings.Split(string(out), "\n") {
			if r, ok := strings.CutPrefix(line, benchResultPrefix); ok {
				t.Logf("%-10s devices=%d %s", mode, n, r)
				found = true
			}
		}
		if !found {
			t.Fatalf("%s printed no result:\n%s", mode, out)
		}
	}
}

const tlsBenchRoleEnv, tlsBenchArgEnv = "IOTPIPE_TLS_BENCH_ROLE", "IOTPIPE_TLS_BENCH_ARG"

type tlsBenchArgs struct {
	Mode    string
	Devices int
	Addr    string // clients: where to connect
	File    string // clients: JSON lines of tlsBenchDevice
	CAFile  string // clients: the server CA
}

type tlsBenchDevice struct {
	ID, Password, CertPEM, KeyPEM string
}

func tlsBenchChild(t *testing.T, role string, a tlsBenchArgs) *exec.Cmd {
	t.Helper()
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestTLSConnectionMemory$", "-test.timeout=30m", "-test.v")
	cmd.Env = append(os.Environ(), tlsBenchRoleEnv+"="+role, tlsBenchArgEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	return cmd
}

func tlsBenchBroker(t *testing.T) {
	var a tlsBenchArgs
	if err := json.Unmarshal([]byte(os.Getenv(tlsBenchArgEnv)), &a); err != nil {
		t.Fatal(err)
	}
	raiseFileLimit(t, a.Devices+1000)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, testTopic))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	serverCA, devCA := testcert.NewCA(t, "server CA"), testcert.NewCA(t, "device CA")
	seeds := []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}
	reg, err := registry.New(registry.Config{Kafka: seeds, Topic: "iot.registry", Logger: testLogger(), ClientCAs: devCA.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go reg.Run(ctx)
	if err := reg.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	fw, err := ingest.New(ingest.Config{Kafka: seeds, Topic: testTopic, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close(context.Background())
	server := testcert.Issue(t, serverCA, testcert.Options{Server: true})
	b, err := New(Config{TCPAddr: "127.0.0.1:0", TLSAddr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{server.TLS()}},
		Auth: reg, Forwarder: fw, Logger: testLogger(), Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	go b.Run(ctx)

	// The fleet, registered in parallel; certificates made here so the
	// clients only present them.
	devs := make([]tlsBenchDevice, a.Devices)
	var wg sync.WaitGroup
	errs := make(chan error, a.Devices)
	sem := make(chan struct{}, 64)
	for i := range devs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			id := fmt.Sprintf("dev-%06d", i)
			_, tok, err := reg.Create(ctx, registry.Spec{ID: id})
			if err != nil {
				errs <- err
				return
			}
			d := tlsBenchDevice{ID: id, Password: tok}
			if a.Mode == "tls-cert" {
				dc := testcert.Issue(t, devCA, testcert.Options{CommonName: id})
				d.CertPEM, d.KeyPEM, d.Password = dc.CertPEM(), dc.KeyPEM(t), ""
			}
			devs[i] = d
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file, caFile := filepath.Join(dir, "devices"), filepath.Join(dir, "ca.pem")
	var lines []byte
	for _, d := range devs {
		j, _ := json.Marshal(d)
		lines = append(append(lines, j...), '\n')
	}
	if err := os.WriteFile(file, lines, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, []byte(serverCA.CertPEM()), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := b.TLSAddr()
	if a.Mode == "tcp-token" {
		addr = b.Addr()
	}

	before := sample(t, true)
	cl := tlsBenchChild(t, "clients", tlsBenchArgs{Mode: a.Mode, Addr: addr, File: file, CAFile: caFile})
	stdin, _ := cl.StdinPipe()
	stdout, _ := cl.StdoutPipe()
	start := time.Now()
	if err := cl.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && !strings.HasPrefix(sc.Text(), benchConnectedPrefix) {
	}
	took := time.Since(start)
	after := sample(t, false)
	released := sample(t, true)
	if f := os.Getenv("IOTPIPE_TLS_BENCH_HEAP"); f != "" {
		w, err := os.Create(f + "." + a.Mode)
		if err != nil {
			t.Fatal(err)
		}
		_ = pprof.WriteHeapProfile(w)
		w.Close()
	}
	n := a.Devices
	fmt.Printf("%sconnects=%.0f/s | per device: RSS %.1f KiB (after GC+release %.1f); heap %.1f KiB, stacks %.1f KiB, goroutines %.2f\n",
		benchResultPrefix, float64(n)/took.Seconds(), perDevice(after.rss, before.rss, n)/1024, perDevice(released.rss, before.rss, n)/1024,
		perDevice(released.heap, before.heap, n)/1024, perDevice(released.stack, before.stack, n)/1024,
		float64(released.goroutines-before.goroutines)/float64(n))
	stdin.Close()
	_ = cl.Wait()
}

func tlsBenchClients(t *testing.T) {
	var a tlsBenchArgs
	if err := json.Unmarshal([]byte(os.Getenv(tlsBenchArgEnv)), &a); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(a.File)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(a.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	var devs []tlsBenchDevice
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var d tlsBenchDevice
		if err := json.Unmarshal([]byte(l), &d); err != nil {
			t.Fatal(err)
		}
		devs = append(devs, d)
	}
	raiseFileLimit(t, len(devs)+1000)
	roots := testcert.PoolFromPEM(t, string(ca))
	conns := make([]net.Conn, len(devs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, connBenchParallel)
	for i, d := range devs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var conn net.Conn
			var err error
			if a.Mode == "tcp-token" {
				conn, err = net.Dial("tcp", a.Addr)
			} else {
				cfg := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
				if d.CertPEM != "" {
					kp, kerr := tls.X509KeyPair([]byte(d.CertPEM), []byte(d.KeyPEM))
					if kerr != nil {
						t.Error(kerr)
						return
					}
					cfg.Certificates = []tls.Certificate{kp}
				}
				conn, err = tls.Dial("tcp", a.Addr, cfg)
			}
			if err != nil {
				t.Error(err)
				return
			}
			c := &raw{t: t, conn: conn, r: bufio.NewReader(conn), v: 5}
			pk := connectPacket(5, d.ID, d.Password)
			pk.Connect.Keepalive = 600
			c.write(pk)
			ack, err := c.read()
			if err != nil || ack.ReasonCode != 0 {
				t.Errorf("%s: CONNACK %#x %v", d.ID, ack.ReasonCode, err)
				return
			}
			conns[i] = conn
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	fmt.Println(benchConnectedPrefix)
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // until the broker process is done
	for _, c := range conns {
		c.Close()
	}
}
