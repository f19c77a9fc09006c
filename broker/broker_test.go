package broker

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/iotpipe/iotpipe/internal/bus"
)

const cloudID = "projects/p/locations/l/registries/r/devices/dev-1"

func TestPahoV3PublishReachesKafka(t *testing.T) {
	e := newEnv(t, envOpt{})
	opts := pahov3.NewClientOptions().AddBroker("tcp://" + e.b.Addr()).SetClientID(cloudID).
		SetUsername("unused").SetPassword("tok-1").SetProtocolVersion(4).SetAutoReconnect(false)
	cl := pahov3.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer cl.Disconnect(0)
	payload := []byte(`{"temp":21.5}`)
	if tok := cl.Publish("/devices/dev-1/events/room", 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	r := e.records(t, 1)[0]
	if string(r.Key) != "dev-1" || !bytes.Equal(r.Value, payload) || header(r, bus.HeaderTopic) != "/devices/dev-1/events/room" ||
		header(r, bus.HeaderDevice) != "dev-1" || header(r, bus.HeaderReceivedAt) == "" {
		t.Fatalf("record key=%q value=%q headers=%v", r.Key, r.Value, r.Headers)
	}
	if got := e.metric("iotpipe_mqtt_messages_acked_total"); got != 1 {
		t.Errorf("acked metric = %v", got)
	}
}

func TestPahoV5PublishReachesKafka(t *testing.T) {
	e := newEnv(t, envOpt{})
	conn := dialTCP(t, e.b.Addr())
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: "dev-2", KeepAlive: 30, CleanStart: true,
		PasswordFlag: true, Password: []byte("tok-2")})
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	defer c.Disconnect(&paho.Disconnect{})
	if ca.Properties == nil || ca.Properties.MaximumQoS == nil || *ca.Properties.MaximumQoS != 1 {
		t.Errorf("CONNACK does not announce Maximum QoS 1: %+v", ca.Properties)
	}
	res, err := c.Publish(ctx, &paho.Publish{QoS: 1, Topic: "/devices/dev-2/events/power", Payload: []byte("on"),
		Properties: &paho.PublishProperties{ContentType: "text/plain"}})
	if err != nil || res.ReasonCode != 0 {
		t.Fatalf("publish: %v %+v", err, res)
	}
	r := e.records(t, 1)[0]
	if string(r.Key) != "dev-2" || string(r.Value) != "on" || header(r, bus.HeaderContentType) != "text/plain" {
		t.Fatalf("record %+v", r)
	}
	// Publishing to another device's topic: PUBACK 0x87, the connection stays up.
	res, err = c.Publish(ctx, &paho.Publish{QoS: 1, Topic: "/devices/dev-1/events", Payload: []byte("x")})
	if err == nil && res.ReasonCode != 0x87 || err != nil && res == nil {
		t.Fatalf("foreign publish: %v %+v, want PUBACK 0x87", err, res)
	}
	res, err = c.Publish(ctx, &paho.Publish{QoS: 1, Topic: "/devices/dev-2/events", Payload: []byte("after")})
	if err != nil || res.ReasonCode != 0 {
		t.Fatalf("publish after refusal: %v %+v", err, res)
	}
}

// PUBACK only after Kafka has the record: while kfake holds the produce
// request (the message has reached Kafka's door), no PUBACK arrives; after
// release it does, and the record is readable.
func TestPubackOnlyAfterKafka(t *testing.T) {
	e := newEnv(t, envOpt{})
	held, release := holdProduce(e.kafka)
	defer release()
	c, _ := dialRaw(t, e.b.Addr(), 5, "dev-1", "tok-1", nil)
	c.publish(1, 1, "/devices/dev-1/events", []byte("m1"))
	eventually(t, "produce request to reach kafka", func() bool { return held() > 0 })
	acked := make(chan packets.Packet, 1)
	go func() { pk, _ := c.read(); acked <- pk }()
	select {
	case pk := <-acked:
		t.Fatalf("got %d (reason %#x) before Kafka acknowledged", pk.FixedHeader.Type, pk.ReasonCode)
	default:
	}
	if got := e.metric("iotpipe_mqtt_messages_acked_total"); got != 0 {
		t.Fatalf("acked %v before Kafka answered", got)
	}
	release()
	pk := <-acked
	if pk.FixedHeader.Type != packets.Puback || pk.PacketID != 1 || pk.ReasonCode != 0 {
		t.Fatalf("got %+v", pk)
	}
	e.records(t, 1)
}

// Many messages in flight on one connection: with Kafka holding every
// produce request, N publishes from one connection are all forwarded at
// once (a blocking OnPublish would have exactly 1 in flight), and after the
// release the PUBACKs come back in publish order.
func TestManyInflightOneConnectionOrdered(t *testing.T) {
	const n = 32
	e := newEnv(t, envOpt{inflight: n})
	held, release := holdProduce(e.kafka)
	defer release()
	c, _ := dialRaw(t, e.b.Addr(), 5, "dev-1", "tok-1", nil)
	for i := 1; i <= n; i++ {
		c.publish(uint16(i), 1, "/devices/dev-1/events", []byte(strconv.Itoa(i)))
	}
	eventually(t, fmt.Sprintf("%d messages in flight", n), func() bool {
		return e.metric("iotpipe_mqtt_inflight_messages") == n
	})
	eventually(t, "produce request held", func() bool { return held() > 0 })
	release()
	for i := 1; i <= n; i++ {
		pk, err := c.read()
		if err != nil || pk.FixedHeader.Type != packets.Puback || pk.PacketID != uint16(i) || pk.ReasonCode != 0 {
			t.Fatalf("ack %d: %+v %v", i, pk, err)
		}
	}
	rs := e.records(t, n)
	for i, r := range rs { // one device = one partition = publish order
		if string(r.Value) != strconv.Itoa(i+1) {
			t.Fatalf("record %d = %q", i, r.Value)
		}
	}
}

// The per-client limit holds: with Kafka held, a connection gets exactly
// MaxInflightPerClient messages in flight, the rest waits in its socket,
// while another device is not affected.
func TestInflightBoundedPerClient(t *testing.T) {
	e := newEnv(t, envOpt{inflight: 4})
	held, release := holdProduce(e.kafka)
	defer release()
	c, _ := dialRaw(t, e.b.Addr(), 5, "dev-1", "tok-1", nil)
	for i := 1; i <= 10; i++ {
		c.publish(uint16(i), 1, "/devices/dev-1/events", []byte("x"))
	}
	eventually(t, "4 in flight", func() bool { return e.metric("iotpipe_mqtt_inflight_messages") == 4 })
	c2, _ := dialRaw(t, e.b.Addr(), 3, "dev-2", "tok-2", nil)
	c2.publish(1, 1, "/devices/dev-2/events", []byte("y"))
	eventually(t, "other device forwarded", func() bool { return e.metric("iotpipe_mqtt_inflight_messages") == 5 })
	_ = held
	release()
	for i := 1; i <= 10; i++ {
		if pk, err := c.read(); err != nil || pk.PacketID != uint16(i) || pk.ReasonCode != 0 {
			t.Fatalf("ack %d: %+v %v", i, pk, err)
		}
	}
	if pk, err := c2.read(); err != nil || pk.PacketID != 1 {
		t.Fatalf("dev-2 ack: %+v %v", pk, err)
	}
}

func TestConnackCodes(t *testing.T) {
	e := newEnv(t, envOpt{})
	for _, tc := range []struct {
		name, id, pw string
		v5           byte
		v3           byte
	}{
		{"ok", "dev-1", "tok-1", 0, 0},
		{"ok cloud path", cloudID, "tok-1", 0, 0},
		{"bad client id", "projects/p/devices/dev-1", "tok-1", 0x85, 2},
		{"bad client id chars", "dev+1", "tok-1", 0x85, 2},
		{"unknown device", "nobody", "tok", 0x86, 4},
		{"wrong token", "dev-1", "tok-2", 0x86, 4},
		{"no password", "dev-1", "", 0x86, 4},
		{"blocked", "blocked", "tok-b", 0x87, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, v := range []byte{3, 5} {
				c, ack := dialRaw(t, e.b.Addr(), v, tc.id, tc.pw, nil)
				want := tc.v5
				if v == 3 {
					want = tc.v3
				}
				if ack.ReasonCode != want {
					t.Errorf("v%d: CONNACK %#x, want %#x", v, ack.ReasonCode, want)
				}
				if want != 0 {
					c.expectClosed()
				}
				c.conn.Close()
			}
		})
	}
	if got := e.metric("iotpipe_mqtt_connect_refused_total", "reason", "blocked"); got != 2 {
		t.Errorf("refused{blocked} = %v", got)
	}
}

// MQTT 3.1.1 cannot refuse a PUBLISH: the connection is closed (documented),
// and nothing reaches Kafka; another device keeps flowing.
func TestV3ForeignPublishDisconnects(t *testing.T) {
	e := newEnv(t, envOpt{})
	bad, _ := dialRaw(t, e.b.Addr(), 3, "dev-1", "tok-1", nil)
	good, _ := dialRaw(t, e.b.Addr(), 3, "dev-2", "tok-2", nil)
	bad.publish(1, 1, "/devices/dev-2/events", []byte("spoof"))
	bad.expectClosed()
	good.publish(7, 1, "/devices/dev-2/events", []byte("real"))
	if pk, err := good.read(); err != nil || pk.FixedHeader.Type != packets.Puback || pk.PacketID != 7 {
		t.Fatalf("good device: %+v %v", pk, err)
	}
	rs := e.records(t, 1)
	if string(rs[0].Value) != "real" {
		t.Fatalf("record %q", rs[0].Value)
	}
}

func TestSubscribeACL(t *testing.T) {
	e := newEnv(t, envOpt{})
	for _, v := range []byte{3, 5} {
		c, _ := dialRaw(t, e.b.Addr(), v, "dev-1", "tok-1", nil)
		c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 3,
			Filters: packets.Subscriptions{{Filter: "/devices/dev-1/commands/#", Qos: 1},
				{Filter: "/devices/dev-1/config", Qos: 2}, {Filter: "/devices/dev-2/commands/#", Qos: 1},
				{Filter: "/devices/dev-1/events", Qos: 1}, {Filter: "#", Qos: 0}}})
		pk, err := c.read()
		if err != nil || pk.FixedHeader.Type != packets.Suback {
			t.Fatalf("v%d: %+v %v", v, pk, err)
		}
		deny := byte(0x87)
		if v == 3 {
			deny = 0x80
		}
		want := []byte{1, 1, deny, deny, deny} // QoS 2 granted as 1
		if !bytes.Equal(pk.ReasonCodes, want) {
			t.Errorf("v%d: SUBACK %x, want %x", v, pk.ReasonCodes, want)
		}
	}
}

func TestOversizedPayload(t *testing.T) {
	e := newEnv(t, envOpt{maxPayload: 1024})
	c, _ := dialRaw(t, e.b.Addr(), 5, "dev-1", "tok-1", nil)
	c.publish(1, 1, "/devices/dev-1/events", make([]byte, 1025))
	if code := c.expectClosed(); code != 0x95 {
		t.Fatalf("DISCONNECT reason %#x, want 0x95", code)
	}
	// Far above the limit: mochi refuses before reading the body.
	c, _ = dialRaw(t, e.b.Addr(), 5, "dev-1", "tok-1", nil)
	c.publish(2, 1, "/devices/dev-1/events", make([]byte, 1024+headroom+1))
	c.expectClosed()
	// At the limit it flows.
	c, _ = dialRaw(t, e.b.Addr(), 5, "dev-1", "tok-1", nil)
	c.publish(3, 1, "/devices/dev-1/events", make([]byte, 1024))
	if pk, err := c.read(); err != nil || pk.ReasonCode != 0 || pk.PacketID != 3 {
		t.Fatalf("%+v %v", pk, err)
	}
}

func TestQoS2Refused(t *testing.T) {
	e := newEnv(t, envOpt{})
	c, _ := dialRaw(t, e.b.Addr(), 5, "dev-1", "tok-1", nil)
	c.publish(1, 2, "/devices/dev-1/events", []byte("x"))
	if code := c.expectClosed(); code != 0x9B {
		t.Fatalf("DISCONNECT reason %#x, want 0x9B", code)
	}
}

// Kafka failing: v5 devices get a negative PUBACK (never 0x00), v3 devices
// get none, in-flight stays bounded; when Kafka recovers, flow resumes.
func TestKafkaFailing(t *testing.T) {
	e := newEnv(t, envOpt{inflight: 8, deliveryTimeout: time.Second})
	fh := e.kafka.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.NotEnoughReplicas, Count: -1})
	c5, _ := dialRaw(t, e.b.Addr(), 5, "dev-1", "tok-1", nil)
	c3, _ := dialRaw(t, e.b.Addr(), 3, "dev-2", "tok-2", nil)
	for i := 1; i <= 20; i++ {
		c5.publish(uint16(i), 1, "/devices/dev-1/events", []byte("x"))
	}
	c3.publish(1, 1, "/devices/dev-2/events", []byte("y"))
	for i := 1; i <= 20; i++ {
		if got := e.metric("iotpipe_mqtt_inflight_messages"); got > 8+1 {
			t.Fatalf("in flight %v exceeds the per-client bounds", got)
		}
		pk, err := c5.read()
		if err != nil || pk.FixedHeader.Type != packets.Puback || pk.PacketID != uint16(i) || pk.ReasonCode < 0x80 {
			t.Fatalf("ack %d: %+v %v, want a failure PUBACK", i, pk, err)
		}
	}
	eventually(t, "v3 message failed", func() bool { return e.metric("iotpipe_mqtt_messages_rejected_total", "reason", "kafka") >= 21 })
	if got := e.metric("iotpipe_mqtt_messages_acked_total"); got != 0 {
		t.Fatalf("acked %v while Kafka failed", got)
	}
	fh.Remove()
	c5.publish(100, 1, "/devices/dev-1/events", []byte("back"))
	if pk, err := c5.read(); err != nil || pk.PacketID != 100 || pk.ReasonCode != 0 {
		t.Fatalf("after recovery: %+v %v", pk, err)
	}
	c3.publish(2, 1, "/devices/dev-2/events", []byte("back"))
	if pk, err := c3.read(); err != nil || pk.PacketID != 2 {
		t.Fatalf("v3 after recovery: %+v %v (a v3 failure must send no PUBACK)", pk, err)
	}
}

// Graceful shutdown in mid-stream: every message that got a PUBACK is in Kafka.
func TestGracefulShutdown(t *testing.T) {
	e := newEnv(t, envOpt{inflight: 16})
	const devs = 4
	var mu sync.Mutex
	acked := map[string]bool{}
	var wg sync.WaitGroup
	for d := 0; d < devs; d++ {
		id := fmt.Sprintf("dev-%d", d+1)
		c, _ := dialRaw(t, e.b.Addr(), 5, id, testDevices[id], nil)
		wg.Add(2)
		go func() { // writer: publish until the broker goes away
			defer wg.Done()
			for i := 1; i <= 60000; i++ {
				pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
					PacketID: uint16(i%65535 + 1), TopicName: "/devices/" + id + "/events",
					Payload: []byte(fmt.Sprintf("%d-%d", d, i)), ProtocolVersion: 5}
				var buf bytes.Buffer
				_ = pk.PublishEncode(&buf)
				if _, err := c.conn.Write(buf.Bytes()); err != nil {
					return
				}
			}
		}()
		go func() { // reader: record acks; PUBACKs come in publish order
			defer wg.Done()
			i := 0
			for {
				pk, err := c.read()
				if err != nil || pk.FixedHeader.Type != packets.Puback {
					return
				}
				i++
				if pk.ReasonCode == 0 {
					mu.Lock()
					acked[fmt.Sprintf("%d-%d", d, i)] = true
					mu.Unlock()
				}
			}
		}()
	}
	eventually(t, "some acks", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) > 200 })
	if err := e.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	wg.Wait()
	mu.Lock()
	n := len(acked)
	mu.Unlock()
	if n == 0 {
		t.Fatal("nothing acked")
	}
	rs := e.records(t, n)
	in := map[string]bool{}
	for _, r := range rs {
		in[string(r.Value)] = true
	}
	for k := range acked {
		if !in[k] {
			t.Fatalf("message %s was acked but is not in Kafka (%d acked, %d records)", k, n, len(rs))
		}
	}
	t.Logf("%d acked before shutdown, all in Kafka", n)
}

func TestMosquittoClients(t *testing.T) {
	if _, err := exec.LookPath("mosquitto_pub"); err != nil {
		if os.Getenv("IOTPIPE_REQUIRE_ALL") == "1" {
			t.Fatal("mosquitto_pub not installed (IOTPIPE_REQUIRE_ALL=1)")
		}
		t.Skip("SKIP LOUDLY: mosquitto_pub not installed (apt-get install mosquitto-clients)")
	}
	e := newEnv(t, envOpt{})
	host, port := splitAddr(t, e.b.Addr())
	out, err := exec.Command("mosquitto_pub", "-h", host, "-p", port, "-V", "mqttv311", "-q", "1",
		"-i", cloudID, "-u", "x", "-P", "tok-1", "-t", "/devices/dev-1/events", "-m", "hello").CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, out)
	}
	if r := e.records(t, 1)[0]; string(r.Value) != "hello" {
		t.Fatalf("record %q", r.Value)
	}
	out, err = exec.Command("mosquitto_pub", "-h", host, "-p", port, "-V", "mqttv5", "-q", "1",
		"-i", "dev-1", "-P", "wrong", "-t", "/devices/dev-1/events", "-m", "x").CombinedOutput()
	if err == nil {
		t.Fatalf("mosquitto_pub with a wrong token succeeded: %s", out)
	}
	if !bytes.Contains(bytes.ToLower(out), []byte("bad user name or password")) {
		t.Errorf("mosquitto_pub output %q does not name the refusal", out)
	}
	out, err = exec.Command("mosquitto_sub", "-h", host, "-p", port, "-V", "mqttv5", "-i", "dev-1", "-P", "tok-1",
		"-t", "/devices/dev-2/commands/#", "-W", "2").CombinedOutput()
	if !bytes.Contains(bytes.ToLower(out), []byte("not authorized")) && !bytes.Contains(bytes.ToLower(out), []byte("denied")) {
		t.Errorf("mosquitto_sub to another device's commands: %v %q", err, out)
	}
}
