package broker

import (
	"bufio"
	"context"
	"errors"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/ingest"
)

// failingAuth is a registry that cannot answer (e.g. its Kafka is down).
type failingAuth struct{}

func (failingAuth) Authenticate(string, []byte) error {
	return errors.New("registry: kafka unreachable")
}

// connectOn sends a CONNECT for dev-1 on an already accepted connection and
// returns the CONNACK reason code.
func connectOn(t *testing.T, c *raw) byte {
	t.Helper()
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "dev-1", Clean: true, Keepalive: 60,
			PasswordFlag: true, Password: []byte("tok-1")}})
	ack, err := c.read()
	if err != nil || ack.FixedHeader.Type != packets.Connack {
		t.Fatalf("v%d: no CONNACK: %+v %v", c.v, ack, err)
	}
	return ack.ReasonCode
}

// The row of the refusal table the binary test cannot provoke: a registry
// that fails, and a CONNECT that arrives while the broker drains, get
// CONNACK 0x88 Server unavailable (3.1.1: 3), not a blame on the device.
func TestConnackUnavailable(t *testing.T) {
	t.Run("registry failing", func(t *testing.T) {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, testTopic))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fw, err := ingest.New(ingest.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}, Topic: testTopic, Logger: testLogger()})
		if err != nil {
			t.Fatal(err)
		}
		defer fw.Close(context.Background())
		b, err := New(Config{TCPAddr: "127.0.0.1:0", Auth: failingAuth{}, Forwarder: fw, Logger: testLogger(), Metrics: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- b.Run(ctx) }()
		defer func() { cancel(); <-done }()
		for _, tc := range []struct{ v, want byte }{{5, 0x88}, {3, 3}} {
			conn, ack := dialRaw(t, b.Addr(), tc.v, "dev-1", "tok-1", nil)
			if ack.ReasonCode != tc.want {
				t.Errorf("v%d: CONNACK %#x, want %#x", tc.v, ack.ReasonCode, tc.want)
			}
			conn.expectClosed()
		}
	})

	t.Run("broker stopping", func(t *testing.T) {
		e := newEnv(t, envOpt{})
		held, release := holdProduce(e.kafka)
		defer release()
		// Two connections accepted before the stop, their CONNECT sent once
		// it drains. mochi accepts in order and drops a connection accepted
		// after its listener closed, so dev-2's CONNACK below (a later
		// connection) proves both were taken in.
		var late []*raw
		for _, v := range []byte{5, 3} {
			conn := dialTCP(t, e.b.Addr())
			late = append(late, &raw{t: t, conn: conn, r: bufio.NewReader(conn), v: v})
		}
		// A message waiting for Kafka keeps the broker draining.
		pub, _ := dialRaw(t, e.b.Addr(), 5, "dev-2", "tok-2", nil)
		pub.publish(1, 1, "/devices/dev-2/events", []byte("x"))
		eventually(t, "the produce is held", func() bool { return held() > 0 })
		stopped := make(chan error, 1)
		go func() { stopped <- e.stop() }()
		eventually(t, "the broker drains", e.b.fwd.isDraining)
		for _, c := range late {
			want := byte(0x88)
			if c.v == 3 {
				want = 3
			}
			if got := connectOn(t, c); got != want {
				t.Errorf("v%d CONNECT while stopping: CONNACK %#x, want %#x", c.v, got, want)
			}
		}
		release()
		if err := <-stopped; err != nil {
			t.Fatalf("Run: %v", err)
		}
	})
}
