package broker

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotpipe/iotpipe/downlink"
)

// subscribeRaw subscribes a raw client and checks the SUBACK grants qos.
func (c *raw) subscribe(filter string, qos byte) {
	c.t.Helper()
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter, Qos: qos}}})
	pk, err := c.read()
	if err != nil || pk.FixedHeader.Type != packets.Suback || len(pk.ReasonCodes) != 1 || pk.ReasonCodes[0] != qos {
		c.t.Fatalf("subscribe %s: %+v %v", filter, pk, err)
	}
}

func deliver(t *testing.T, b *Broker, timeout time.Duration, device, topic, payload string) (byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return b.DeliverCommand(ctx, device, topic, []byte(payload))
}

// A Paho v5 device subscribed to /devices/D/commands/# gets commands with and
// without subfolder at QoS 1, and DeliverCommand returns only after Paho
// acknowledged each.
func TestCommandPahoV5(t *testing.T) {
	e := newEnv(t, envOpt{})
	got := make(chan *paho.Publish, 4)
	c := paho.NewClient(paho.ClientConfig{Conn: dialTCP(t, e.b.Addr()),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			got <- pr.Packet
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ca, err := c.Connect(ctx, &paho.Connect{ClientID: "projects/p/locations/l/registries/r/devices/dev-1", KeepAlive: 30,
		CleanStart: true, PasswordFlag: true, Password: []byte("tok-1")}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	defer c.Disconnect(&paho.Disconnect{})
	subID := 7
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Properties: &paho.SubscribeProperties{SubscriptionIdentifier: &subID},
		Subscriptions: []paho.SubscribeOptions{{Topic: "/devices/dev-1/commands/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"/devices/dev-1/commands", "/devices/dev-1/commands/opt/sub"} {
		qos, err := deliver(t, e.b, 5*time.Second, "dev-1", topic, "reboot "+topic)
		if err != nil || qos != 1 {
			t.Fatalf("%s: qos %d, %v", topic, qos, err)
		}
		select {
		case pk := <-got:
			if pk.Topic != topic || string(pk.Payload) != "reboot "+topic || pk.QoS != 1 {
				t.Fatalf("got %s %q QoS %d", pk.Topic, pk.Payload, pk.QoS)
			}
			if pk.Properties == nil || pk.Properties.SubscriptionIdentifier == nil || *pk.Properties.SubscriptionIdentifier != subID {
				t.Fatalf("subscription identifier %+v, want %d", pk.Properties, subID)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: device got nothing", topic)
		}
	}
}

// MQTT 3.1.1 with a QoS 0 subscription to exactly /devices/D/commands: that
// topic is delivered at QoS 0 (answered once written), a subfolder is not
// subscribed.
func TestCommandRawV3QoS0(t *testing.T) {
	e := newEnv(t, envOpt{})
	c, _ := dialRaw(t, e.b.Addr(), 3, "dev-2", "tok-2", nil)
	c.subscribe("/devices/dev-2/commands", 0)
	qos, err := deliver(t, e.b, 5*time.Second, "dev-2", "/devices/dev-2/commands", "hello")
	if err != nil || qos != 0 {
		t.Fatalf("qos %d, %v", qos, err)
	}
	pk, err := c.read()
	if err != nil || pk.FixedHeader.Type != packets.Publish || pk.TopicName != "/devices/dev-2/commands" || string(pk.Payload) != "hello" {
		t.Fatalf("got %+v %v", pk, err)
	}
	if _, err := deliver(t, e.b, 5*time.Second, "dev-2", "/devices/dev-2/commands/sub", "x"); !errors.Is(err, downlink.ErrNotSubscribed) {
		t.Fatalf("subfolder not subscribed: %v", err)
	}
}

func TestCommandNotSubscribedOrGone(t *testing.T) {
	e := newEnv(t, envOpt{})
	if _, err := deliver(t, e.b, time.Second, "dev-3", "/devices/dev-3/commands", "x"); !errors.Is(err, downlink.ErrNotConnected) {
		t.Fatalf("never connected: %v", err)
	}
	c, _ := dialRaw(t, e.b.Addr(), 5, "dev-3", "tok-3", nil)
	eventually(t, "session established", func() bool {
		_, err := deliver(t, e.b, time.Second, "dev-3", "/devices/dev-3/commands", "x")
		return errors.Is(err, downlink.ErrNotSubscribed)
	})
	c.conn.Close()
	eventually(t, "device gone", func() bool {
		_, err := deliver(t, e.b, time.Second, "dev-3", "/devices/dev-3/commands", "x")
		return errors.Is(err, downlink.ErrNotConnected)
	})
}

// A QoS 1 subscriber that never acknowledges: DeliverCommand ends with
// ErrDeviceTimeout at its deadline and frees the inflight slot; one that
// answers PUBACK 0x80 (v5) is reported as rejected; one that disconnects
// while a command waits fails it at once with ErrNotConnected.
func TestCommandAckOutcomes(t *testing.T) {
	e := newEnv(t, envOpt{})
	c, _ := dialRaw(t, e.b.Addr(), 5, "dev-4", "tok-4", nil)
	c.subscribe("/devices/dev-4/commands/#", 1)

	start := time.Now()
	if _, err := deliver(t, e.b, 300*time.Millisecond, "dev-4", "/devices/dev-4/commands", "t"); !errors.Is(err, downlink.ErrDeviceTimeout) {
		t.Fatalf("no PUBACK: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("timeout took %v", d)
	}
	e.b.cmd.mu.Lock()
	cl := e.b.cmd.clients["dev-4"][0]
	e.b.cmd.mu.Unlock()
	if n := cl.State.Inflight.Len(); n != 0 {
		t.Fatalf("%d inflight messages left after the timeout", n)
	}
	if n := atomic.LoadInt64(&e.b.srv.Info.Inflight); n != 0 {
		t.Fatalf("server inflight count %d after the timeout, want 0", n)
	}
	if pk, err := c.read(); err != nil || pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos != 1 {
		t.Fatalf("device got %+v %v", pk, err)
	}

	res := make(chan error, 1)
	go func() {
		_, err := deliver(t, e.b, 5*time.Second, "dev-4", "/devices/dev-4/commands/x", "r")
		res <- err
	}()
	pk, err := c.read()
	if err != nil || pk.TopicName != "/devices/dev-4/commands/x" {
		t.Fatalf("device got %+v %v", pk, err)
	}
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID, ReasonCode: 0x80})
	if err := <-res; !errors.Is(err, downlink.ErrRejected) {
		t.Fatalf("PUBACK 0x80: %v", err)
	}
	if n := atomic.LoadInt64(&e.b.srv.Info.Inflight); n != 0 {
		t.Fatalf("server inflight count %d after the PUBACK, want 0", n)
	}

	go func() {
		_, err := deliver(t, e.b, 10*time.Second, "dev-4", "/devices/dev-4/commands", "d")
		res <- err
	}()
	if _, err := c.read(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	c.conn.Close()
	if err := <-res; !errors.Is(err, downlink.ErrNotConnected) || time.Since(start) > 5*time.Second {
		t.Fatalf("disconnect while waiting: %v after %v", err, time.Since(start))
	}
}

func TestCommandTopic(t *testing.T) {
	for _, tc := range []struct {
		dev, sub, want string
		ok             bool
	}{
		{"dev-1", "", "/devices/dev-1/commands", true},
		{"dev-1", "opt/sub", "/devices/dev-1/commands/opt/sub", true},
		{"dev-1", "a//b", "", false},
		{"dev-1", "a/#", "", false},
		{"dev-1", "+", "", false},
		{"dev-1", "/lead", "", false},
		{"dev-1", "bad\x01", "", false},
		{"bad/id", "", "", false},
	} {
		got, err := CommandTopic(tc.dev, tc.sub)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("CommandTopic(%q, %q) = %q, %v", tc.dev, tc.sub, got, err)
		}
	}
}

// An MQTT 5 device with Receive Maximum 1 gets no second QoS 1 command while
// the first awaits its PUBACK: ErrBusy instead of a protocol violation.
func TestCommandRespectsReceiveMaximum(t *testing.T) {
	e := newEnv(t, envOpt{})
	c, _ := dialRaw(t, e.b.Addr(), 5, "dev-5", "tok-5", &packets.Properties{ReceiveMaximum: 1})
	c.subscribe("/devices/dev-5/commands/#", 1)
	first := make(chan error, 1)
	go func() {
		_, err := deliver(t, e.b, 10*time.Second, "dev-5", "/devices/dev-5/commands", "1")
		first <- err
	}()
	pk, err := c.read()
	if err != nil || pk.FixedHeader.Type != packets.Publish {
		t.Fatalf("device got %+v %v", pk, err)
	}
	if _, err := deliver(t, e.b, time.Second, "dev-5", "/devices/dev-5/commands", "2"); !errors.Is(err, downlink.ErrBusy) {
		t.Fatalf("second command: %v, want ErrBusy", err)
	}
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	if err := <-first; err != nil {
		t.Fatalf("first command: %v", err)
	}
	if _, err := deliver(t, e.b, time.Second, "dev-5", "/devices/dev-5/commands", "3"); !errors.Is(err, downlink.ErrDeviceTimeout) {
		t.Fatalf("after the PUBACK a third is sent (and times out unacknowledged): %v", err)
	}
}
