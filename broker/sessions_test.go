package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/iotpipe/iotpipe/registry"
)

// cutBound is what the tests allow for a cut (the target is 1 s; the slack
// keeps a loaded CI machine from flaking). The measured time is logged.
const cutBound = 3 * time.Second

// liveConn is a connected Paho client (MQTT 5 or 3.1.1) that notes when and
// how the broker ended its connection.
type liveConn struct {
	name    string
	publish func(ctx context.Context, topic string) error

	once sync.Once
	gone chan struct{} // closed when the broker ended the connection
	at   time.Time
	code int // v5 DISCONNECT reason code; -1 for 3.1.1
}

func (c *liveConn) ended(code int) {
	c.once.Do(func() { c.at, c.code = time.Now(), code; close(c.gone) })
}

// connectV5 connects a paho.golang client; the connection counts as ended
// when the server's DISCONNECT arrives (the code is what v5 tests check).
func connectV5(t *testing.T, addr, clientID, password string) *liveConn {
	t.Helper()
	lc := &liveConn{name: "v5 " + clientID, gone: make(chan struct{})}
	c := paho.NewClient(paho.ClientConfig{Conn: dialTCP(t, addr),
		OnServerDisconnect: func(d *paho.Disconnect) { lc.ended(int(d.ReasonCode)) }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: clientID, KeepAlive: 60, CleanStart: true,
		PasswordFlag: true, Password: []byte(password)})
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("%s: connect: %v %+v", lc.name, err, ca)
	}
	lc.publish = func(ctx context.Context, topic string) error {
		_, err := c.Publish(ctx, &paho.Publish{QoS: 1, Topic: topic, Payload: []byte("alive")})
		return err
	}
	return lc
}

// connectV3 connects an Eclipse Paho 3.1.1 client; the connection counts as
// ended when Paho reports it lost.
func connectV3(t *testing.T, addr, clientID, password string) *liveConn {
	t.Helper()
	lc := &liveConn{name: "v3 " + clientID, gone: make(chan struct{})}
	opts := pahov3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(clientID).
		SetUsername("unused").SetPassword(password).SetProtocolVersion(4).SetAutoReconnect(false).
		SetConnectionLostHandler(func(pahov3.Client, error) { lc.ended(-1) })
	c := pahov3.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: connect: %v", lc.name, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	lc.publish = func(ctx context.Context, topic string) error {
		tok := c.Publish(topic, 1, false, []byte("alive"))
		<-tok.Done()
		return tok.Error()
	}
	return lc
}

// expectCut waits (bounded) until the broker ended c after start, checks
// the v5 code and returns how long the cut took.
func expectCut(t *testing.T, c *liveConn, start time.Time, wantCode int) time.Duration {
	t.Helper()
	select {
	case <-c.gone:
	case <-time.After(cutBound):
		t.Fatalf("%s: still connected %v after the change", c.name, cutBound)
	}
	if c.code != wantCode {
		t.Errorf("%s: ended with code %#x, want %#x", c.name, c.code, wantCode)
	}
	took := c.at.Sub(start)
	t.Logf("%s cut %v after the registry call started", c.name, took.Round(time.Millisecond))
	return took
}

// expectAlive checks c is still connected and can publish (a QoS 1 PUBACK
// round trip, which also orders after any cut already in flight).
func expectAlive(t *testing.T, c *liveConn, topic string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.publish(ctx, topic); err != nil {
		t.Fatalf("%s: publish: %v", c.name, err)
	}
	select {
	case <-c.gone:
		t.Fatalf("%s: was disconnected (code %#x)", c.name, c.code)
	default:
	}
}

// Blocking, deleting, or removing the credential a session used cuts the
// live session (v5: DISCONNECT 0x98, 3.1.1: closed socket) within the bound;
// removing another credential of the device does not, though it shifts the
// remaining credentials' indexes.
func TestSessionsCut(t *testing.T) {
	e := newJWTEnv(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tokens := map[string]string{}
	for _, id := range []string{"blk-1", "del-1", "rm-1"} {
		_, tok, err := e.reg.Create(ctx, registry.Spec{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		tokens[id] = tok
		e.addKey(t, id, registry.CredentialES256PEM, &ec.PublicKey) // credential 1, after the token
	}
	now := time.Now()
	jwt := signJWT(t, ec, jwtAud, now, now.Add(time.Hour))
	cloud := func(id string) string { return "projects/p/locations/l/registries/r/devices/" + id }
	var worst time.Duration
	note := func(d time.Duration) { worst = max(worst, d) }

	t.Run("block", func(t *testing.T) {
		v5 := connectV5(t, e.b.Addr(), "blk-1", tokens["blk-1"])
		v3 := connectV3(t, e.b.Addr(), cloud("blk-1"), jwt)
		start := time.Now()
		if err := e.reg.SetBlocked(ctx, "blk-1", true); err != nil {
			t.Fatal(err)
		}
		note(expectCut(t, v5, start, 0x98))
		note(expectCut(t, v3, start, -1))
		c, ack := dialRaw(t, e.b.Addr(), 5, "blk-1", tokens["blk-1"], nil)
		if ack.ReasonCode != 0x87 {
			t.Errorf("reconnect while blocked: CONNACK %#x, want 0x87", ack.ReasonCode)
		}
		c.expectClosed()
		// Unblocking lets it back in.
		if err := e.reg.SetBlocked(ctx, "blk-1", false); err != nil {
			t.Fatal(err)
		}
		expectAlive(t, connectV5(t, e.b.Addr(), "blk-1", tokens["blk-1"]), "/devices/blk-1/events")
	})

	t.Run("delete", func(t *testing.T) {
		v5 := connectV5(t, e.b.Addr(), cloud("del-1"), jwt)
		v3 := connectV3(t, e.b.Addr(), "del-1", tokens["del-1"])
		start := time.Now()
		if err := e.reg.Delete(ctx, "del-1"); err != nil {
			t.Fatal(err)
		}
		note(expectCut(t, v5, start, 0x98))
		note(expectCut(t, v3, start, -1))
	})

	t.Run("remove credential", func(t *testing.T) {
		// Two sessions of one device under its two client ids: one with the
		// token (credential 0), one with the JWT (credential 1).
		byToken := connectV5(t, e.b.Addr(), "rm-1", tokens["rm-1"])
		byJWT := connectV5(t, e.b.Addr(), cloud("rm-1"), jwt)
		start := time.Now()
		if err := e.reg.RemoveCredential(ctx, "rm-1", 0); err != nil { // the token; the key becomes 0
			t.Fatal(err)
		}
		note(expectCut(t, byToken, start, 0x98))
		expectAlive(t, byJWT, "/devices/rm-1/events")
		// An unrelated change (metadata) cuts nothing.
		if err := e.reg.SetMetadata(ctx, "rm-1", "renamed", nil); err != nil {
			t.Fatal(err)
		}
		expectAlive(t, byJWT, "/devices/rm-1/events")
		v3 := connectV3(t, e.b.Addr(), "rm-1", jwt)
		start = time.Now()
		if err := e.reg.RemoveCredential(ctx, "rm-1", 0); err != nil { // the key, now at index 0
			t.Fatal(err)
		}
		note(expectCut(t, byJWT, start, 0x98))
		note(expectCut(t, v3, start, -1))
	})
	t.Logf("slowest cut: %v", worst.Round(time.Millisecond))
	if got := counterValue(t, e.b.auth.m.sessionsCut); got < 7 {
		t.Errorf("iotpipe_mqtt_sessions_cut_total = %v, want >= 7", got)
	}
}

// Two instances on one Kafka: a device blocked through instance A's
// registry loses its session on instance B's broker.
func TestSessionCutOnOtherInstance(t *testing.T) {
	e := newJWTEnv(t, 0) // instance A
	bB, regB := startInstance(t, e.kafka, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, tok, err := e.reg.Create(ctx, registry.Spec{ID: "dev-x"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "instance B knows dev-x", func() bool { _, err := regB.Get("dev-x"); return err == nil })
	v5 := connectV5(t, bB.Addr(), "dev-x", tok)
	v3 := connectV3(t, bB.Addr(), "projects/p/locations/l/registries/r/devices/dev-x", tok)
	start := time.Now()
	if err := e.reg.SetBlocked(ctx, "dev-x", true); err != nil {
		t.Fatal(err)
	}
	expectCut(t, v5, start, 0x98)
	expectCut(t, v3, start, -1)
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
