package simulator

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"

	"github.com/iotpipe/iotpipe/internal/testcert"
)

// tokenAuth accepts a client whose id is in tokens and whose password is its
// token.
type tokenAuth struct {
	mqtt.HookBase
	tokens map[string]string
}

func (h *tokenAuth) ID() string { return "token-auth" }
func (h *tokenAuth) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (h *tokenAuth) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	want, ok := h.tokens[cl.ID]
	return ok && subtle.ConstantTimeCompare([]byte(want), pk.Connect.Password) == 1
}
func (h *tokenAuth) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

type published struct {
	client, topic string
	qos           byte
	payload       []byte
}

// recorder keeps every message the broker accepted.
type recorder struct {
	mqtt.HookBase
	mu   sync.Mutex
	msgs []published
}

func (h *recorder) ID() string           { return "recorder" }
func (h *recorder) Provides(b byte) bool { return b == mqtt.OnPublished }
func (h *recorder) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, published{cl.ID, pk.TopicName, pk.FixedHeader.Qos, bytes.Clone(pk.Payload)})
}

func (h *recorder) snapshot() []published {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.msgs)
}

// waitFor polls until at least n messages were recorded.
func (h *recorder) waitFor(t *testing.T, n int) []published {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		msgs := h.snapshot()
		if len(msgs) >= n {
			return msgs
		}
		if time.Now().After(deadline) {
			t.Fatalf("broker recorded %d messages, want %d", len(msgs), n)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
}

// startBroker runs a real mochi broker on a free local port.
func startBroker(t *testing.T, tokens map[string]string) (addr string, rec *recorder) {
	t.Helper()
	addr, rec, _ = startServer(t, tokens)
	return addr, rec
}

// startServer also returns a stop function, safe to call again at cleanup.
func startServer(t *testing.T, tokens map[string]string) (addr string, rec *recorder, stop func()) {
	t.Helper()
	return startServerTLS(t, tokens, nil)
}

// startServerTLS listens with MQTT over TLS when tlsCfg is not nil.
func startServerTLS(t *testing.T, tokens map[string]string, tlsCfg *tls.Config) (addr string, rec *recorder, stop func()) {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	rec = &recorder{}
	if err := srv.AddHook(&tokenAuth{tokens: tokens}, nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddHook(rec, nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0", TLSConfig: tlsCfg})
	if err := srv.AddListener(l); err != nil { // AddListener binds the socket
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	stop = sync.OnceFunc(func() { srv.Close() }) // mochi panics on a second Close
	t.Cleanup(stop)
	return l.Address(), rec, stop
}

func fleet(n int) ([]Device, map[string]string) {
	devs := make([]Device, n)
	tokens := make(map[string]string, n)
	for i := range devs {
		devs[i] = Device{ID: fmt.Sprintf("dev-%02d", i), Token: fmt.Sprintf("tok-%d", i)}
		tokens[devs[i].ID] = devs[i].Token
	}
	return devs, tokens
}

func quiet() zerolog.Logger { return zerolog.New(io.Discard) }

type payload struct {
	TS          *int64   `json:"ts"`
	Temperature *float64 `json:"temperature"`
	Humidity    *float64 `json:"humidity"`
}

func TestRunDeliversFleet(t *testing.T) {
	const devices, perDevice, seed = 4, 25, 99
	devs, tokens := fleet(devices)
	addr, rec := startBroker(t, tokens)

	rep, err := Run(t.Context(), Config{
		Broker: addr, Devices: devs, Messages: devices * perDevice, QoS: 1, MaxInflight: 8, Seed: seed, Logger: quiet(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent != devices*perDevice || rep.Acked != rep.Sent || rep.Failed != 0 || rep.Devices != devices {
		t.Fatalf("report %+v, want %d sent and acked, none failed", rep, devices*perDevice)
	}
	if rep.P50 <= 0 || rep.P50 > rep.P99 || rep.P99 > rep.Max || rep.Rate <= 0 {
		t.Errorf("implausible latency summary %+v", rep)
	}

	msgs := rec.waitFor(t, devices*perDevice)
	byDevice := map[string][]payload{}
	for _, m := range msgs {
		if want := "/devices/" + m.client + "/events"; m.topic != want {
			t.Fatalf("client %q published to %q, want %q", m.client, m.topic, want)
		}
		if m.qos != 1 {
			t.Errorf("qos %d, want 1", m.qos)
		}
		var p payload
		if err := json.Unmarshal(m.payload, &p); err != nil || p.TS == nil || p.Temperature == nil || p.Humidity == nil {
			t.Fatalf("payload %s: %+v %v", m.payload, p, err)
		}
		byDevice[m.client] = append(byDevice[m.client], p)
	}
	for _, d := range devs {
		got := byDevice[d.ID]
		if len(got) != perDevice {
			t.Fatalf("device %s: %d messages, want %d", d.ID, len(got), perDevice)
		}
		// The payloads are exactly what the device's sensor gives for the
		// received timestamps: deterministic given Seed.
		s := NewSensor(d.ID, seed)
		for i, p := range got {
			want := s.Next(time.UnixMilli(*p.TS))
			if *p.Temperature != want.Temperature || *p.Humidity != want.Humidity {
				t.Fatalf("device %s message %d: %.2f °C %.1f %%, sensor predicts %.2f °C %.1f %%",
					d.ID, i, *p.Temperature, *p.Humidity, want.Temperature, want.Humidity)
			}
			// Publish time, nudged at most one millisecond per message ahead
			// so a device's event times stay unique.
			if now := time.Now().UnixMilli(); *p.TS > now+int64(perDevice) || *p.TS < now-60_000 {
				t.Fatalf("ts %d is not the publish time", *p.TS)
			}
			if i > 0 && *p.TS <= *got[i-1].TS {
				t.Fatalf("device %s message %d: ts %d not after the previous %d", d.ID, i, *p.TS, *got[i-1].TS)
			}
		}
	}
}

// Over TLS the fleet connects when it trusts the broker's CA, and fails
// naming the certificate problem when it does not.
func TestRunOverTLS(t *testing.T) {
	ca := testcert.NewCA(t, "broker CA")
	server := testcert.Issue(t, ca, testcert.Options{CommonName: "broker", Server: true})
	devs, tokens := fleet(3)
	addr, rec, _ := startServerTLS(t, tokens, &tls.Config{Certificates: []tls.Certificate{server.TLS()}, MinVersion: tls.VersionTLS12})

	rep, err := Run(t.Context(), Config{Broker: addr, TLS: &tls.Config{RootCAs: ca.Pool()}, Devices: devs,
		Messages: 30, QoS: 1, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent != 30 || rep.Acked != 30 {
		t.Fatalf("report %+v, want 30 sent and acked", rep)
	}
	rec.waitFor(t, 30)

	other := testcert.NewCA(t, "another CA")
	_, err = Run(t.Context(), Config{Broker: addr, TLS: &tls.Config{RootCAs: other.Pool()}, Devices: devs,
		Messages: 3, QoS: 1, Logger: quiet()})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("err = %v, want a certificate error", err)
	}
	if _, err := Run(t.Context(), Config{Broker: addr, Devices: devs, Messages: 3, QoS: 1, Logger: quiet()}); err == nil {
		t.Fatal("plain TCP to a TLS listener connected")
	}
}

func TestRunWrongToken(t *testing.T) {
	devs, tokens := fleet(3)
	addr, rec := startBroker(t, tokens)
	devs[1].Token = "stolen"

	_, err := Run(t.Context(), Config{Broker: addr, Devices: devs, Messages: 10, QoS: 1, Logger: quiet()})
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("err = %v, want ErrRefused", err)
	}
	for _, want := range []string{addr, `"dev-01"`, "token"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if n := len(rec.snapshot()); n != 0 {
		t.Errorf("%d messages published although the fleet could not connect", n)
	}
}

func TestRunUnreachableBroker(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens here now

	devs, _ := fleet(1)
	_, err = Run(t.Context(), Config{Broker: addr, Devices: devs, Logger: quiet()})
	if err == nil || errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), addr) {
		t.Fatalf("err = %v, want a connection error naming %s", err, addr)
	}
}

func TestRunMessagesLimitExact(t *testing.T) {
	devs, tokens := fleet(7) // 1000 does not divide by 7
	addr, rec := startBroker(t, tokens)
	rep, err := Run(t.Context(), Config{Broker: addr, Devices: devs, Messages: 1000, QoS: 1, MaxInflight: 64, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent != 1000 || rep.Acked != 1000 {
		t.Fatalf("sent %d acked %d, want exactly 1000", rep.Sent, rep.Acked)
	}
	counts := map[string]int{}
	for _, m := range rec.waitFor(t, 1000) {
		counts[m.client]++
	}
	for i, d := range devs {
		if want := 1000/7 + min(1, max(0, 1000%7-i)); counts[d.ID] != want {
			t.Errorf("device %s sent %d, want %d", d.ID, counts[d.ID], want)
		}
	}
	if n := len(rec.snapshot()); n != 1000 {
		t.Errorf("broker got %d messages, want 1000", n)
	}
}

// The fleet never runs ahead of Rate: the last of n messages is due (n-1)/Rate
// after the start.
func TestRunRate(t *testing.T) {
	devs, tokens := fleet(5)
	addr, _ := startBroker(t, tokens)
	const rate, n = 400.0, 200
	rep, err := Run(t.Context(), Config{Broker: addr, Devices: devs, Rate: rate, Messages: n, QoS: 1, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if min := time.Duration(float64(n-1) / rate * float64(time.Second)); rep.Elapsed < min {
		t.Errorf("%d messages took %v at rate %v; the schedule needs at least %v", n, rep.Elapsed, rate, min)
	}
	if rep.Elapsed > 5*time.Second || rep.Acked != n {
		t.Errorf("report %+v: want %d acked in about %v", rep, n, time.Duration(n/rate*float64(time.Second)))
	}
}

func TestRunCancelReturnsReport(t *testing.T) {
	devs, tokens := fleet(3)
	addr, rec := startBroker(t, tokens)
	ctx, cancel := context.WithCancel(t.Context())
	type result struct {
		rep Report
		err error
	}
	done := make(chan result)
	go func() {
		rep, err := Run(ctx, Config{Broker: addr, Devices: devs, Rate: 300, QoS: 1, Logger: quiet()}) // no limit
		done <- result{rep, err}
	}()
	rec.waitFor(t, 20)
	cancel()
	select {
	case res := <-done:
		if res.err != nil {
			t.Fatalf("cancelled run: %v, want a nil error", res.err)
		}
		if res.rep.Sent < 20 || res.rep.Sent != res.rep.Acked+res.rep.Failed {
			t.Fatalf("report %+v: want ≥ 20 sent, all accounted for", res.rep)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestRunDurationAndProgress(t *testing.T) {
	devs, tokens := fleet(2)
	addr, _ := startBroker(t, tokens)
	var progress bytes.Buffer // written only by Run's progress goroutine, which ends before Run returns
	rep, err := Run(t.Context(), Config{
		Broker: addr, Devices: devs, Rate: 100, Duration: 300 * time.Millisecond, QoS: 1,
		Progress: &progress, ProgressEvery: 50 * time.Millisecond, Logger: quiet(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent == 0 || rep.Sent > 31 || rep.Acked != rep.Sent {
		t.Errorf("300ms at 100 msg/s sent %d (acked %d), want 1..31 all acked", rep.Sent, rep.Acked)
	}
	if !strings.Contains(progress.String(), "sent=") {
		t.Errorf("no progress lines in %q", progress.String())
	}
}

func TestRunQoS0(t *testing.T) {
	devs, tokens := fleet(2)
	addr, rec := startBroker(t, tokens)
	rep, err := Run(t.Context(), Config{Broker: addr, Devices: devs, Messages: 50, QoS: 0, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent != 50 || rep.Acked != 50 {
		t.Fatalf("report %+v, want 50 sent and written", rep)
	}
	for _, m := range rec.waitFor(t, 50) {
		if m.qos != 0 {
			t.Fatalf("qos %d, want 0", m.qos)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	ok := Config{Broker: "localhost:1883", Devices: []Device{{ID: "a", Token: "t"}}}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no port", func(c *Config) { c.Broker = "localhost" }, "host:port"},
		{"no devices", func(c *Config) { c.Devices = nil }, "no devices"},
		{"duplicate", func(c *Config) { c.Devices = append(c.Devices, c.Devices[0]) }, "twice"},
		{"slash in id", func(c *Config) { c.Devices[0].ID = "a/b" }, "must not contain"},
		{"no token", func(c *Config) { c.Devices[0].Token = "" }, "empty token"},
		{"negative rate", func(c *Config) { c.Rate = -1 }, "rate"},
		{"qos 2", func(c *Config) { c.QoS = 2 }, "qos"},
		{"inflight", func(c *Config) { c.MaxInflight = 70000 }, "inflight"},
		{"messages", func(c *Config) { c.Messages = -1 }, "messages"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			c.Devices = append([]Device(nil), ok.Devices...)
			tc.change(&c)
			_, err := Run(t.Context(), c) // fails before dialling anything
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	if err := ok.validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
}

func TestRunBrokerGoesAway(t *testing.T) {
	devs, tokens := fleet(3)
	addr, rec, stop := startServer(t, tokens)
	done := make(chan error, 1)
	var rep Report
	go func() {
		var err error
		rep, err = Run(t.Context(), Config{Broker: addr, Devices: devs, Rate: 300, QoS: 1, Logger: quiet()})
		done <- err
	}()
	rec.waitFor(t, 10)
	stop()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "all 3 devices") {
			t.Fatalf("err = %v, want the broker lost on all devices", err)
		}
		if rep.Disconnects != 3 || rep.Sent < 10 || rep.Sent != rep.Acked+rep.Failed {
			t.Fatalf("report %+v: want 3 disconnects and every message accounted for", rep)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run kept going after the broker closed")
	}
}
