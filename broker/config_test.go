package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/internal/testkafka"
	"github.com/iotpipe/iotpipe/registry"
)

// cfgOf reads the device's latest config from a registry.
func cfgOf(t *testing.T, reg *registry.Registry, id string) registry.ConfigVersion {
	t.Helper()
	d, err := reg.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return d.DeviceConfig()
}

// A Paho v5 device on instance B subscribes to its config: it gets the
// current (empty, version 1) config at once, then each version written
// through instance A's registry while connected; its PUBACKs are recorded as
// the versions' ack times, visible on both instances. Another device's
// config topic is refused.
func TestConfigDeliveryV5(t *testing.T) {
	e := newJWTEnv(t, 0) // instance A
	bB, regB := startInstance(t, e.kafka, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, tok, err := e.reg.Create(ctx, registry.Spec{ID: "cfg-v5"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "instance B knows the device", func() bool { _, err := regB.Get("cfg-v5"); return err == nil })

	got := make(chan *paho.Publish, 16)
	c := paho.NewClient(paho.ClientConfig{Conn: dialTCP(t, bB.Addr()),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
			got <- p.Packet
			return true, nil
		}}})
	if ca, err := c.Connect(ctx, &paho.Connect{ClientID: "cfg-v5", KeepAlive: 60, CleanStart: true,
		PasswordFlag: true, Password: []byte(tok)}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	next := func(what string) *paho.Publish {
		t.Helper()
		select {
		case p := <-got:
			return p
		case <-time.After(10 * time.Second):
			t.Fatalf("no config message: %s", what)
			return nil
		}
	}
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "/devices/cfg-v5/config", QoS: 1}}})
	if err != nil || len(sa.Reasons) != 1 || sa.Reasons[0] != 1 {
		t.Fatalf("subscribe: %v %+v", err, sa)
	}
	if p := next("on subscribe"); p.Topic != "/devices/cfg-v5/config" || len(p.Payload) != 0 || p.QoS != 1 {
		t.Fatalf("first config: %q %q QoS %d, want the empty version 1 at QoS 1", p.Topic, p.Payload, p.QoS)
	}
	eventually(t, "ack of version 1 recorded on A", func() bool { return !cfgOf(t, e.reg, "cfg-v5").DeviceAckTime.IsZero() })

	for i, data := range []string{"version two", "version three"} {
		written, err := e.reg.SetConfig(ctx, "cfg-v5", []byte(data), int64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		if p := next("after SetConfig"); string(p.Payload) != data {
			t.Fatalf("got %q, want %q", p.Payload, data)
		}
		eventually(t, "ack recorded on both instances", func() bool {
			a, b := cfgOf(t, e.reg, "cfg-v5"), cfgOf(t, regB, "cfg-v5")
			return a.Version == written.Version && !a.DeviceAckTime.IsZero() && !b.DeviceAckTime.IsZero()
		})
	}
	// A write that changes no config (metadata) sends nothing.
	if err := e.reg.SetMetadata(ctx, "cfg-v5", "renamed", nil); err != nil {
		t.Fatal(err)
	}
	sa, err = c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "/devices/dev-1/config", QoS: 1}}})
	if sa == nil || len(sa.Reasons) != 1 || sa.Reasons[0] != 0x87 {
		t.Fatalf("subscribe to another device's config: %v %+v, want 0x87", err, sa)
	}
	select {
	case p := <-got:
		t.Fatalf("unexpected message %q %q", p.Topic, p.Payload)
	case <-time.After(200 * time.Millisecond):
	}
	d, _ := e.reg.Get("cfg-v5")
	if d.LastConfigAckTime.IsZero() || !d.LastConfigAckTime.Equal(d.DeviceConfig().DeviceAckTime) {
		t.Errorf("last_config_ack_time %v, latest version acked %v", d.LastConfigAckTime, d.DeviceConfig().DeviceAckTime)
	}
}

// writePuback sends a PUBACK from a raw client.
func writePuback(t *testing.T, c *raw, id uint16) {
	t.Helper()
	var buf bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: id, ProtocolVersion: 4}
	if err := pk.PubackEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := c.conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
}

// A raw 3.1.1 device: SUBACK comes before the config; an unacknowledged
// version records no ack, the PUBACK of the next one records exactly that
// one; a QoS 0 subscription gets the config without ack tracking; another
// device's config topic gets SUBACK 0x80.
func TestConfigDeliveryV3Raw(t *testing.T) {
	e := newJWTEnv(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, tok, err := e.reg.Create(ctx, registry.Spec{ID: "cfg-v3"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.SetConfig(ctx, "cfg-v3", []byte("v2"), 0); err != nil {
		t.Fatal(err)
	}
	c, ack := dialRaw(t, e.b.Addr(), 3, "projects/p/locations/l/registries/r/devices/cfg-v3", tok, nil)
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %d", ack.ReasonCode)
	}
	sub := func(id uint16, topic string, qos byte) { subscribeRaw(c, id, topic, qos) }
	read := func(want byte) packets.Packet { t.Helper(); return expectPacket(t, c, want) }
	sub(1, "/devices/dev-1/config", 1)
	if sa := read(packets.Suback); len(sa.ReasonCodes) != 1 || sa.ReasonCodes[0] != 0x80 {
		t.Fatalf("SUBACK for another device's config: %v, want 0x80", sa.ReasonCodes)
	}
	sub(2, "/devices/cfg-v3/config", 1)
	if sa := read(packets.Suback); sa.ReasonCodes[0] != 1 {
		t.Fatalf("SUBACK %v", sa.ReasonCodes)
	}
	first := read(packets.Publish)
	if string(first.Payload) != "v2" || first.FixedHeader.Qos != 1 || first.TopicName != "/devices/cfg-v3/config" {
		t.Fatalf("config on subscribe: %+v", first)
	}
	// Not acknowledged; version 3 arrives while subscribed.
	if _, err := e.reg.SetConfig(ctx, "cfg-v3", []byte("v3"), 2); err != nil {
		t.Fatal(err)
	}
	second := read(packets.Publish)
	if string(second.Payload) != "v3" || second.PacketID == first.PacketID {
		t.Fatalf("second config %q id %d (first id %d)", second.Payload, second.PacketID, first.PacketID)
	}
	writePuback(t, c, second.PacketID)
	eventually(t, "ack of version 3", func() bool { return !cfgOf(t, e.reg, "cfg-v3").DeviceAckTime.IsZero() })
	d, _ := e.reg.Get("cfg-v3")
	for _, v := range d.ConfigVersions() {
		if v.Version == 2 && !v.DeviceAckTime.IsZero() {
			t.Errorf("version 2 was never acknowledged but has ack time %v", v.DeviceAckTime)
		}
	}
	// A repeated PUBACK of the same packet id records nothing new.
	writePuback(t, c, second.PacketID)

	// QoS 0: the config arrives at QoS 0 and nothing is tracked.
	c0, _ := dialRaw(t, e.b.Addr(), 3, "cfg-v3", tok, nil)
	c0.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "/devices/cfg-v3/config", Qos: 0}}})
	if pk, err := c0.read(); err != nil || pk.FixedHeader.Type != packets.Suback || pk.ReasonCodes[0] != 0 {
		t.Fatalf("QoS 0 SUBACK: %+v %v", pk, err)
	}
	if pk, err := c0.read(); err != nil || pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos != 0 || string(pk.Payload) != "v3" {
		t.Fatalf("QoS 0 config: %+v %v", pk, err)
	}
	// Only the never acknowledged version 2 is still in flight.
	e.b.config.mu.Lock()
	ids := fmt.Sprint(e.b.config.ids)
	e.b.config.mu.Unlock()
	if want := fmt.Sprintf("map[projects/p/locations/l/registries/r/devices/cfg-v3:map[%d:2]]", first.PacketID); ids != want {
		t.Errorf("config packet ids in flight %s, want %s", ids, want)
	}
}

// A device's state goes to the state topic (key = device id, value = the
// payload, headers as telemetry), acknowledged after Kafka has it, and not
// to the telemetry topic.
func TestStateToStateTopic(t *testing.T) {
	e := newEnv(t, envOpt{})
	cl := testkafka.Client(t, e.kafka.ListenAddrs())
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	const stateTopic = "iot.state"
	if err := bus.EnsureTopics(ctx, cl, []bus.TopicSpec{{Name: stateTopic, Partitions: 2}}, -1); err != nil {
		t.Fatal(err)
	}
	c, _ := dialRaw(t, e.b.Addr(), 5, "dev-1", "tok-1", nil)
	c.publish(7, 1, "/devices/dev-1/state", []byte(`{"fw":"1.2"}`))
	if pk, err := c.read(); err != nil || pk.FixedHeader.Type != packets.Puback || pk.PacketID != 7 || pk.ReasonCode != 0 {
		t.Fatalf("PUBACK: %+v %v", pk, err)
	}
	recs := testkafka.Consume(t, e.kafka.ListenAddrs(), stateTopic, 1, 10*time.Second)
	r := recs[0]
	if string(r.Key) != "dev-1" || string(r.Value) != `{"fw":"1.2"}` || header(r, bus.HeaderTopic) != "/devices/dev-1/state" ||
		header(r, bus.HeaderDevice) != "dev-1" || header(r, bus.HeaderReceivedAt) == "" {
		t.Fatalf("state record %q=%q headers %v", r.Key, r.Value, r.Headers)
	}
	if tel := testkafka.Consume(t, e.kafka.ListenAddrs(), testTopic, 0, 5*time.Second); len(tel) != 0 {
		t.Errorf("%d records on the telemetry topic, want 0", len(tel))
	}
}

// A 3.1.1 session resumed with clean session off keeps its config
// subscription without a new SUBSCRIBE: it gets the latest config at once
// and new versions while connected.
func TestConfigDeliveryResumedSession(t *testing.T) {
	e := newJWTEnv(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, tok, err := e.reg.Create(ctx, registry.Spec{ID: "cfg-keep"})
	if err != nil {
		t.Fatal(err)
	}
	// Each connection has its own channel: the broker may deliver a new
	// version to the old connection before it reads the DISCONNECT, and
	// Paho hands that to the handler even after Disconnect returned.
	var got chan string
	connect := func(subscribe bool) pahov3.Client {
		mine := make(chan string, 16)
		got = mine
		opts := pahov3.NewClientOptions().AddBroker("tcp://" + e.b.Addr()).SetClientID("cfg-keep").
			SetUsername("unused").SetPassword(tok).SetProtocolVersion(4).SetCleanSession(false).SetAutoReconnect(false).
			SetDefaultPublishHandler(func(_ pahov3.Client, m pahov3.Message) { mine <- string(m.Payload()) })
		c := pahov3.NewClient(opts)
		if ct := c.Connect(); !ct.WaitTimeout(10*time.Second) || ct.Error() != nil {
			t.Fatalf("connect: %v", ct.Error())
		}
		if subscribe {
			if st := c.Subscribe("/devices/cfg-keep/config", 1, nil); !st.WaitTimeout(10*time.Second) || st.Error() != nil {
				t.Fatalf("subscribe: %v", st.Error())
			}
		}
		return c
	}
	next := func(want string) {
		t.Helper()
		select {
		case p := <-got:
			if p != want {
				t.Fatalf("config %q, want %q", p, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no config %q", want)
		}
	}
	c := connect(true)
	next("")
	// Acknowledged before leaving, or the resumed session would resend it.
	eventually(t, "ack of version 1", func() bool { return !cfgOf(t, e.reg, "cfg-keep").DeviceAckTime.IsZero() })
	c.Disconnect(250)
	// Written once the broker has let the connection go, so that the
	// version is surely not delivered (and acknowledged) on it.
	eventually(t, "the broker let the first connection go", func() bool {
		cl, ok := e.b.srv.Clients.Get("cfg-keep")
		return ok && cl.Closed()
	})
	if _, err := e.reg.SetConfig(ctx, "cfg-keep", []byte("while away"), 0); err != nil {
		t.Fatal(err)
	}
	c = connect(false)
	defer c.Disconnect(0)
	next("while away")
	if _, err := e.reg.SetConfig(ctx, "cfg-keep", []byte("while resumed"), 0); err != nil {
		t.Fatal(err)
	}
	next("while resumed")
}

// A config still unacknowledged when the device went away reaches the
// resumed session once: mochi resends it (DUP set) and the broker does not
// send the same version again; a newer version follows as usual. A session
// resumed after the device acknowledged the latest version gets nothing
// until the next one.
func TestConfigResentOnceOnResume(t *testing.T) {
	e := newJWTEnv(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, tok, err := e.reg.Create(ctx, registry.Spec{ID: "cfg-resend"})
	if err != nil {
		t.Fatal(err)
	}
	dial := func() *raw {
		pk := connectPacket(3, "cfg-resend", tok)
		pk.Connect.Clean = false
		c, ack := dialRawConnect(t, e.b.Addr(), pk)
		if ack.ReasonCode != 0 {
			t.Fatalf("CONNACK %#x", ack.ReasonCode)
		}
		return c
	}
	c := dial()
	subscribeRaw(c, 1, "/devices/cfg-resend/config", 1)
	expectPacket(t, c, packets.Suback)
	first := expectPacket(t, c, packets.Publish)
	writePuback(t, c, first.PacketID)
	eventually(t, "ack of version 1", func() bool { return !cfgOf(t, e.reg, "cfg-resend").DeviceAckTime.IsZero() })
	if _, err := e.reg.SetConfig(ctx, "cfg-resend", []byte("unacked"), 0); err != nil {
		t.Fatal(err)
	}
	if pk := expectPacket(t, c, packets.Publish); string(pk.Payload) != "unacked" {
		t.Fatalf("config %q, want %q", pk.Payload, "unacked")
	}
	c.conn.Close() // gone without acknowledging it

	c = dial()
	resent := expectPacket(t, c, packets.Publish)
	if string(resent.Payload) != "unacked" || !resent.FixedHeader.Dup {
		t.Fatalf("resent config %q dup %v, want %q with DUP", resent.Payload, resent.FixedHeader.Dup, "unacked")
	}
	if _, err := e.reg.SetConfig(ctx, "cfg-resend", []byte("newer"), 0); err != nil {
		t.Fatal(err)
	}
	newer := expectPacket(t, c, packets.Publish)
	if string(newer.Payload) != "newer" {
		t.Fatalf("config after the resend %q, want %q (the resent version twice?)", newer.Payload, "newer")
	}
	// The resent packet's PUBACK still records its version's ack: the
	// takeover moved it to the new connection, it was not dropped.
	writePuback(t, c, resent.PacketID)
	eventually(t, "ack of the resent version 2", func() bool {
		d, err := e.reg.Get("cfg-resend")
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range d.ConfigVersions() {
			if v.Version == 2 {
				return !v.DeviceAckTime.IsZero()
			}
		}
		return false
	})
	writePuback(t, c, newer.PacketID)
	eventually(t, "ack of version 3", func() bool { return !cfgOf(t, e.reg, "cfg-resend").DeviceAckTime.IsZero() })
	c.conn.Close()

	// Resumed again with everything acknowledged: the device has the
	// latest version, so the next message is the next version.
	c = dial()
	if _, err := e.reg.SetConfig(ctx, "cfg-resend", []byte("after ack"), 0); err != nil {
		t.Fatal(err)
	}
	if pk := expectPacket(t, c, packets.Publish); string(pk.Payload) != "after ack" {
		t.Fatalf("config on a resumed session %q, want %q (an acknowledged version again?)", pk.Payload, "after ack")
	}
}

// An MQTT 5 device that allows one unacknowledged message (Receive Maximum
// 1) gets a newer config only after it acknowledged the one it holds: the
// broker defers the delivery to the PUBACK instead of breaking the limit
// (or dropping the version).
func TestConfigWaitsForReceiveMaximum(t *testing.T) {
	e := newJWTEnv(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, tok, err := e.reg.Create(ctx, registry.Spec{ID: "cfg-rm"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.SetConfig(ctx, "cfg-rm", []byte("v2"), 0); err != nil {
		t.Fatal(err)
	}
	c, ack := dialRaw(t, e.b.Addr(), 5, "cfg-rm", tok, &packets.Properties{ReceiveMaximum: 1})
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	subscribeRaw(c, 1, "/devices/cfg-rm/config", 1)
	next := func(want byte) packets.Packet { t.Helper(); return expectPacket(t, c, want) }
	next(packets.Suback)
	first := next(packets.Publish)
	if string(first.Payload) != "v2" {
		t.Fatalf("config on subscribe %q", first.Payload)
	}
	// Two newer versions while v2 is unacknowledged: nothing may be sent.
	for i, data := range []string{"v3", "v4"} {
		if _, err := e.reg.SetConfig(ctx, "cfg-rm", []byte(data), int64(i+2)); err != nil {
			t.Fatal(err)
		}
	}
	// Absence cannot be polled: a bounded read that must time out.
	_ = c.conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, err := c.conn.Read(make([]byte, 1)); n > 0 || !isReadTimeout(err) {
		t.Fatalf("read %d bytes (%v) while the device's one unacknowledged message is outstanding", n, err)
	}
	writePuback(t, c, first.PacketID)
	latest := next(packets.Publish)
	if string(latest.Payload) != "v4" {
		t.Fatalf("after the PUBACK: config %q, want the latest, v4", latest.Payload)
	}
	writePuback(t, c, latest.PacketID)
	eventually(t, "ack of version 4", func() bool {
		return cfgOf(t, e.reg, "cfg-rm").Version == 4 && !cfgOf(t, e.reg, "cfg-rm").DeviceAckTime.IsZero()
	})
}

func isReadTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// subscribeRaw sends c a SUBSCRIBE of one filter.
func subscribeRaw(c *raw, id uint16, filter string, qos byte) {
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: id,
		Filters: packets.Subscriptions{{Filter: filter, Qos: qos}}})
}

// expectPacket reads c's next packet and requires its type.
func expectPacket(t *testing.T, c *raw, want byte) packets.Packet {
	t.Helper()
	pk, err := c.read()
	if err != nil {
		t.Fatal(err)
	}
	if pk.FixedHeader.Type != want {
		t.Fatalf("got packet type %d, want %d", pk.FixedHeader.Type, want)
	}
	return pk
}
