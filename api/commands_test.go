package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/broker"
	"github.com/iotpipe/iotpipe/downlink"
	"github.com/iotpipe/iotpipe/ingest"
	"github.com/iotpipe/iotpipe/internal/testkafka"
	"github.com/iotpipe/iotpipe/registry"
)

// cmdEnv is an API with commands, and a broker on another downlink hub (a
// second instance) on the same Kafka.
type cmdEnv struct {
	cl       *Client
	base     string
	mqtt     string
	seeds    []string
	presence string
	reg      *registry.Registry
}

func newCommandServer(t *testing.T, mod func(*downlink.Config)) *cmdEnv {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	seeds := testkafka.Seeds(t)
	p := testkafka.Prefix(t)
	kafka := []kgo.Opt{kgo.SeedBrokers(seeds...)}
	reg, err := registry.New(registry.Config{Kafka: kafka, Topic: p + "registry", Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	go reg.Run(ctx)
	hub := func(mod func(*downlink.Config)) *downlink.Hub {
		cfg := downlink.Config{Kafka: kafka, Topic: p + "downlink", PresenceTopic: p + "presence",
			AckTimeout: time.Second, ReplyMargin: time.Second, Logger: zerolog.Nop()}
		if mod != nil {
			mod(&cfg)
		}
		h, err := downlink.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	apiHub, brokerHub := hub(mod), hub(nil)
	fw, err := ingest.New(ingest.Config{Kafka: kafka, Topic: p + "telemetry"})
	if err != nil {
		t.Fatal(err)
	}
	br, err := broker.New(broker.Config{TCPAddr: "127.0.0.1:0", Auth: reg, Forwarder: fw, Presence: brokerHub, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	brokerHub.SetDeliverer(br)
	srv, err := New(Config{Addr: "127.0.0.1:0", Registry: reg, Store: sharedStore(t), AdminToken: adminTok,
		ReadToken: "test-read-token-0123456789", WindowSizes: []time.Duration{10 * time.Second},
		Commands: apiHub, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	var dones []chan error
	for _, run := range []func(context.Context) error{apiHub.Run, brokerHub.Run, br.Run, srv.Run} {
		done := make(chan error, 1)
		dones = append(dones, done)
		go func() { done <- run(ctx) }()
	}
	t.Cleanup(func() {
		cancel()
		for _, d := range dones {
			<-d
		}
		_ = fw.Close(context.Background())
	})
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	for _, w := range []func(context.Context) error{reg.WaitReady, apiHub.WaitReady, brokerHub.WaitReady} {
		if err := w(wctx); err != nil {
			t.Fatal(err)
		}
	}
	base := "http://" + srv.Addr()
	cl, err := NewClient(base, adminTok)
	if err != nil {
		t.Fatal(err)
	}
	return &cmdEnv{cl: cl, base: base, mqtt: br.Addr(), seeds: seeds, presence: p + "presence", reg: reg}
}

func (e *cmdEnv) create(t *testing.T, id string) string {
	t.Helper()
	d, err := e.cl.CreateDevice(context.Background(), NewDevice{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	return d.Token
}

// connect connects a Paho v5 device, subscribed to filter at QoS 1 unless
// filter is empty, and waits until the API shows it connected.
func (e *cmdEnv) connect(t *testing.T, id, tok, filter string, manualAcks bool) chan *paho.Publish {
	t.Helper()
	conn, err := net.Dial("tcp", e.mqtt)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *paho.Publish, 8)
	c := paho.NewClient(paho.ClientConfig{Conn: conn, EnableManualAcknowledgment: manualAcks,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			got <- pr.Packet
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ca, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true, PasswordFlag: true,
		Password: []byte(tok)}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	if filter != "" {
		if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	e.waitConnected(t, id, true)
	return got
}

func (e *cmdEnv) waitConnected(t *testing.T, id string, want bool) {
	t.Helper()
	testkafka.Eventually(t, 10*time.Second, id+" connected="+strconv.FormatBool(want), func() bool {
		d, err := e.cl.Device(context.Background(), id)
		return err == nil && d.Connected == want
	})
}

// post sends a raw body and returns status and error code.
func (e *cmdEnv) post(t *testing.T, id, body, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.base+"/api/v1/devices/"+id+"/commands", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var er Error
	_ = json.NewDecoder(resp.Body).Decode(&er)
	return resp.StatusCode, er.Code
}

func codeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

func TestCommandStatuses(t *testing.T) {
	e := newCommandServer(t, nil)
	ctx := context.Background()
	tok := e.create(t, "pump-1")
	tok2 := e.create(t, "pump-2")

	// Not connected: 409 at once, and the device JSON says so.
	d, err := e.cl.Device(ctx, "pump-1")
	if err != nil || d.Connected || !d.LastConnectedTime.IsZero() {
		t.Fatalf("fresh device %+v %v", d, err)
	}
	start := time.Now()
	_, err = e.cl.SendCommand(ctx, "pump-1", []byte("x"), "")
	if StatusOf(err) != http.StatusConflict || codeOf(err) != "device_not_connected" || time.Since(start) > time.Second {
		t.Fatalf("offline: %v after %v", err, time.Since(start))
	}

	got := e.connect(t, "pump-1", tok, "/devices/pump-1/commands/#", false)
	d, _ = e.cl.Device(ctx, "pump-1")
	if !d.Connected || d.LastConnectedTime.IsZero() {
		t.Fatalf("connected device %+v", d)
	}
	res, err := e.cl.SendCommand(ctx, "pump-1", []byte{0, 1, 0xff}, "opt/sub")
	if err != nil || res.QoS != 1 || res.Topic != "/devices/pump-1/commands/opt/sub" {
		t.Fatalf("send: %+v %v", res, err)
	}
	if pk := <-got; pk.Topic != res.Topic || !bytes.Equal(pk.Payload, []byte{0, 1, 0xff}) {
		t.Fatalf("device got %s %x", pk.Topic, pk.Payload)
	}

	for _, tc := range []struct {
		name, id, body string
		status         int
		code           string
	}{
		{"not JSON", "pump-1", `{`, 400, "bad_request"},
		{"unknown field", "pump-1", `{"data": "eA=="}`, 400, "bad_request"},
		{"not base64", "pump-1", `{"binary_data": "%%%"}`, 400, "bad_request"},
		{"bad subfolder", "pump-1", `{"binary_data": "eA==", "subfolder": "a/+/b"}`, 400, "invalid_subfolder"},
		{"empty level", "pump-1", `{"binary_data": "eA==", "subfolder": "a//b"}`, 400, "invalid_subfolder"},
		{"unknown device", "nope", `{"binary_data": "eA=="}`, 404, "not_found"},
		{"too large", "pump-1", `{"binary_data": "` + strings.Repeat("A", (MaxCommandBytes+3)/3*4+4) + `"}`, 413, "payload_too_large"},
		{"much too large", "pump-1", `{"binary_data": "` + strings.Repeat("A", 2*MaxCommandBytes) + `"}`, 413, "payload_too_large"},
	} {
		if status, code := e.post(t, tc.id, tc.body, adminTok); status != tc.status || code != tc.code {
			t.Errorf("%s: %d %s, want %d %s", tc.name, status, code, tc.status, tc.code)
		}
	}
	if status, _ := e.post(t, "pump-1", `{"binary_data": "eA=="}`, "test-read-token-0123456789"); status != http.StatusForbidden {
		t.Errorf("read token: %d, want 403", status)
	}
	// Exactly 256 KiB is allowed.
	if _, err := e.cl.SendCommand(ctx, "pump-1", bytes.Repeat([]byte("z"), MaxCommandBytes), ""); err != nil {
		t.Errorf("256 KiB: %v", err)
	}

	e.connect(t, "pump-2", tok2, "", false)
	if _, err := e.cl.SendCommand(ctx, "pump-2", []byte("x"), ""); StatusOf(err) != http.StatusConflict || codeOf(err) != "device_not_subscribed" {
		t.Fatalf("not subscribed: %v", err)
	}
}

// A device that never acknowledges: 504 device_timeout after the command
// timeout; meanwhile a second command is refused with 503 busy when the API
// may wait for only one.
func TestCommandTimeoutAndBusy(t *testing.T) {
	e := newCommandServer(t, func(c *downlink.Config) { c.AckTimeout, c.MaxWaiting = 500*time.Millisecond, 1 })
	ctx := context.Background()
	tok := e.create(t, "pump-3")
	got := e.connect(t, "pump-3", tok, "/devices/pump-3/commands/#", true)
	first := make(chan error, 1)
	go func() { _, err := e.cl.SendCommand(ctx, "pump-3", []byte("1"), ""); first <- err }()
	<-got // the first command is with the device, unacknowledged
	if _, err := e.cl.SendCommand(ctx, "pump-3", []byte("2"), ""); StatusOf(err) != http.StatusServiceUnavailable || codeOf(err) != "busy" {
		t.Fatalf("second command: %v, want 503 busy", err)
	}
	if err := <-first; StatusOf(err) != http.StatusGatewayTimeout || codeOf(err) != "device_timeout" {
		t.Fatalf("unacknowledged: %v, want 504 device_timeout", err)
	}
}

// An MQTT 5 device answering PUBACK 0x80: 502 device_rejected.
func TestCommandRejected(t *testing.T) {
	e := newCommandServer(t, nil)
	tok := e.create(t, "pump-4")
	conn, err := net.Dial("tcp", e.mqtt)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	write := func(pk packets.Packet) {
		pk.ProtocolVersion = 5
		var buf bytes.Buffer
		switch pk.FixedHeader.Type {
		case packets.Connect:
			err = pk.ConnectEncode(&buf)
		case packets.Subscribe:
			err = pk.SubscribeEncode(&buf)
		case packets.Puback:
			err = pk.PubackEncode(&buf)
		}
		if err == nil {
			_, err = conn.Write(buf.Bytes())
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	read := func() packets.Packet {
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		hb, err := r.ReadByte()
		if err != nil {
			t.Fatal(err)
		}
		var fh packets.FixedHeader
		_ = fh.Decode(hb)
		n, _, _ := packets.DecodeLength(r)
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			t.Fatal(err)
		}
		pk := packets.Packet{FixedHeader: fh, ProtocolVersion: 5}
		if fh.Type == packets.Publish {
			if err := pk.PublishDecode(b); err != nil {
				t.Fatal(err)
			}
		}
		return pk
	}
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
		ProtocolName: []byte("MQTT"), ClientIdentifier: "pump-4", Clean: true, Keepalive: 60,
		Password: []byte(tok), PasswordFlag: true}})
	if pk := read(); pk.FixedHeader.Type != packets.Connack {
		t.Fatalf("got %+v", pk)
	}
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "/devices/pump-4/commands/#", Qos: 1}}})
	if pk := read(); pk.FixedHeader.Type != packets.Suback {
		t.Fatalf("got %+v", pk)
	}
	e.waitConnected(t, "pump-4", true)
	res := make(chan error, 1)
	go func() { _, err := e.cl.SendCommand(context.Background(), "pump-4", []byte("x"), ""); res <- err }()
	pk := read()
	if pk.FixedHeader.Type != packets.Publish {
		t.Fatalf("got %+v", pk)
	}
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID, ReasonCode: 0x80})
	if err := <-res; StatusOf(err) != http.StatusBadGateway || codeOf(err) != "device_rejected" {
		t.Fatalf("PUBACK 0x80: %v, want 502 device_rejected", err)
	}
	conn.Close()
	e.waitConnected(t, "pump-4", false)
	if d, _ := e.cl.Device(context.Background(), "pump-4"); d.LastDisconnectedTime.Before(d.LastConnectedTime) {
		t.Fatalf("after disconnect %+v", d)
	}
}

// Presence claims the device is held by an instance that does not answer
// (crashed within its lease): 504 no_reply.
func TestCommandNoReply(t *testing.T) {
	e := newCommandServer(t, func(c *downlink.Config) { c.AckTimeout, c.ReplyMargin = 200*time.Millisecond, 200*time.Millisecond })
	e.create(t, "pump-5")
	now := time.Now()
	rec, _ := json.Marshal(map[string]any{"instance": "ghost", "connected": true, "last_connected": now})
	cl := testkafka.Client(t, e.seeds)
	if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: e.presence, Key: []byte("pump-5"), Value: rec, Timestamp: now}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	e.waitConnected(t, "pump-5", true)
	if _, err := e.cl.SendCommand(context.Background(), "pump-5", []byte("x"), ""); StatusOf(err) != http.StatusGatewayTimeout || codeOf(err) != "no_reply" {
		t.Fatalf("ghost instance: %v, want 504 no_reply", err)
	}
}

// Without a downlink hub the route answers 503.
func TestCommandNotConfigured(t *testing.T) {
	_, _, base := newServer(t)
	cl, _ := NewClient(base, adminTok)
	if _, err := cl.CreateDevice(context.Background(), NewDevice{ID: "pump-6"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.SendCommand(context.Background(), "pump-6", []byte("x"), ""); StatusOf(err) != http.StatusServiceUnavailable {
		t.Fatalf("%v, want 503", err)
	}
}
