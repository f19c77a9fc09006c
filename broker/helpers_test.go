package broker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/iotpipe/iotpipe/ingest"
	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/internal/testkafka"
	"github.com/iotpipe/iotpipe/registry"
)

const testTopic = "iot.telemetry"

// devices is the test registry: device id → token; "blocked" is blocked.
type devices map[string]string

func (d devices) Authenticate(id string, pw []byte) error {
	tok, ok := d[id]
	switch {
	case !ok:
		return registry.ErrNotFound
	case id == "blocked":
		return registry.ErrBlocked
	case tok != string(pw):
		return registry.ErrBadCredentials
	}
	return nil
}

var testDevices = devices{"dev-1": "tok-1", "dev-2": "tok-2", "dev-3": "tok-3", "dev-4": "tok-4",
	"dev-5": "tok-5", "dev-6": "tok-6", "dev-7": "tok-7", "dev-8": "tok-8", "blocked": "tok-b"}

type env struct {
	t       *testing.T
	kafka   *kfake.Cluster
	fw      *ingest.Forwarder
	b       *Broker
	reg     *prometheus.Registry
	cancel  context.CancelFunc
	runErr  chan error
	stopped bool
}

type envOpt struct {
	inflight        int
	maxPayload      int
	deliveryTimeout time.Duration
}

func testLogger() zerolog.Logger {
	if os.Getenv("IOTPIPE_TEST_LOG") != "" {
		return zerolog.New(zerolog.NewConsoleWriter()).Level(zerolog.DebugLevel)
	}
	return zerolog.New(io.Discard)
}

func newEnv(t testing.TB, o envOpt) *env {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, testTopic))
	if err != nil {
		t.Fatal(err)
	}
	fw, err := ingest.New(ingest.Config{
		Kafka:           []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)},
		Topic:           testTopic,
		DeliveryTimeout: o.deliveryTimeout,
		Logger:          testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	b, err := New(Config{TCPAddr: "127.0.0.1:0", Auth: testDevices, Forwarder: fw,
		MaxInflightPerClient: o.inflight, MaxPayloadBytes: o.maxPayload, Logger: testLogger(), Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &env{kafka: c, fw: fw, b: b, reg: reg, cancel: cancel, runErr: make(chan error, 1)}
	go func() { e.runErr <- b.Run(ctx) }()
	t.Cleanup(func() {
		e.stop()
		_ = fw.Close(context.Background())
		c.Close()
	})
	return e
}

// stop cancels Run and waits for it.
func (e *env) stop() error {
	if e.stopped {
		return nil
	}
	e.stopped = true
	e.cancel()
	return <-e.runErr
}

func (e *env) metric(name string, labels ...string) float64 {
	mfs, _ := e.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || lp.GetName() == labels[i] && lp.GetValue() == labels[i+1]
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// records consumes the telemetry topic from the start until n records are read.
func (e *env) records(t testing.TB, n int) []*kgo.Record {
	t.Helper()
	return testkafka.Consume(t, e.kafka.ListenAddrs(), testTopic, n, 15*time.Second)
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// holdProduce makes kfake hold every produce request until the returned
// release is called, and counts the held requests.
func holdProduce(c *kfake.Cluster) (held func() int, release func()) {
	var mu sync.Mutex
	n := 0
	gate := make(chan struct{})
	var once sync.Once
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		mu.Lock()
		n++
		mu.Unlock()
		c.SleepControl(func() { <-gate })
		return nil, nil, false
	})
	return func() int { mu.Lock(); defer mu.Unlock(); return n }, func() { once.Do(func() { close(gate) }) }
}

// ---- a raw MQTT client over TCP, for exact assertions on reason codes,
// packet ids and order (the Paho clients hide these) ----

type raw struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
	v    byte
}

func dialRaw(t testing.TB, addr string, v byte, clientID, password string, props *packets.Properties) (*raw, packets.Packet) {
	t.Helper()
	pk := connectPacket(v, clientID, password)
	pk.Connect.Username, pk.Connect.UsernameFlag = []byte("ignored"), true
	if props != nil {
		pk.Properties = *props
	}
	return dialRawConnect(t, addr, pk)
}

// dialRawConnect connects a raw client with the CONNECT packet pk.
func dialRawConnect(t testing.TB, addr string, pk packets.Packet) (*raw, packets.Packet) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	v := pk.ProtocolVersion
	if v == 4 {
		v = 3
	}
	c := &raw{t: t, conn: conn, r: bufio.NewReader(conn), v: v}
	c.write(pk)
	ack, err := c.read()
	if err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	if ack.FixedHeader.Type != packets.Connack {
		t.Fatalf("got packet type %d, want CONNACK", ack.FixedHeader.Type)
	}
	return c, ack
}

func (c *raw) write(pk packets.Packet) {
	c.t.Helper()
	if pk.ProtocolVersion == 0 {
		pk.ProtocolVersion = c.v
		if c.v == 3 {
			pk.ProtocolVersion = 4
		}
	}
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	default:
		err = fmt.Errorf("raw client cannot encode type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.conn.Write(buf.Bytes()); err != nil {
		c.t.Fatal(err)
	}
}

func (c *raw) publish(id uint16, qos byte, topic string, payload []byte) {
	c.t.Helper()
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, PacketID: id,
		TopicName: topic, Payload: payload})
}

// read returns the next packet; the error is io.EOF-like when the broker
// closed the connection.
func (c *raw) read() (packets.Packet, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	hb, err := c.r.ReadByte()
	if err != nil {
		return packets.Packet{}, err
	}
	var fh packets.FixedHeader
	if err := fh.Decode(hb); err != nil {
		return packets.Packet{}, err
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		return packets.Packet{}, err
	}
	fh.Remaining = n
	b := make([]byte, n)
	if _, err := io.ReadFull(c.r, b); err != nil {
		return packets.Packet{}, err
	}
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: c.v}
	if c.v == 3 {
		pk.ProtocolVersion = 4
	}
	switch fh.Type {
	case packets.Connack:
		err = pk.ConnackDecode(b)
	case packets.Puback:
		err = pk.PubackDecode(b)
	case packets.Suback:
		err = pk.SubackDecode(b)
	case packets.Disconnect:
		err = pk.DisconnectDecode(b)
	case packets.Publish:
		err = pk.PublishDecode(b)
	default:
		err = fmt.Errorf("unexpected packet type %d", fh.Type)
	}
	return pk, err
}

// expectClosed reads until the broker closes the connection and returns the
// DISCONNECT reason code if one came first (-1 if none).
func (c *raw) expectClosed() int {
	c.t.Helper()
	code := -1
	for {
		pk, err := c.read()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatal("connection still open")
			}
			return code
		}
		if pk.FixedHeader.Type == packets.Disconnect {
			code = int(pk.ReasonCode)
		}
	}
}

func header(r *kgo.Record, k string) string { return bus.Header(r, k) }

func dialTCP(t testing.TB, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func splitAddr(t testing.TB, addr string) (string, string) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}
