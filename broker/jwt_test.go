package broker

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/ingest"
	"github.com/iotpipe/iotpipe/internal/testjwt"
	"github.com/iotpipe/iotpipe/registry"
)

const jwtAud = "my-project"

// jwtEnv is a broker authenticating against a real registry on kfake.
type jwtEnv struct {
	b     *Broker
	reg   *registry.Registry
	kafka *kfake.Cluster
}

func newJWTEnv(t *testing.T, skew time.Duration) *jwtEnv {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, testTopic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	b, reg := startInstance(t, c, skew)
	return &jwtEnv{b: b, reg: reg, kafka: c}
}

// startInstance starts what one iotpipe instance runs for devices on c: a
// registry following the registry topic, a forwarder and a broker.
func startInstance(t *testing.T, c *kfake.Cluster, skew time.Duration) (*Broker, *registry.Registry) {
	t.Helper()
	seeds := []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}
	reg, err := registry.New(registry.Config{Kafka: seeds, Topic: "iot.registry", Logger: testLogger(),
		JWTAudience: jwtAud, ClockSkew: skew})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	regDone := make(chan error, 1)
	go func() { regDone <- reg.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-regDone; reg.Close() })
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	if err := reg.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	fw, err := ingest.New(ingest.Config{Kafka: seeds, Topic: testTopic, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fw.Close(context.Background()) })
	b, err := New(Config{TCPAddr: "127.0.0.1:0", Auth: reg, Forwarder: fw, Logger: testLogger(), Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithCancel(context.Background())
	bDone := make(chan error, 1)
	go func() { bDone <- b.Run(bctx) }()
	t.Cleanup(func() { bcancel(); <-bDone })
	return b, reg
}

// addKey registers pub on the device as typ.
func (e *jwtEnv) addKey(t *testing.T, id string, typ registry.CredentialType, pub any) {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	spec := registry.CredentialSpec{Type: typ, PEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}
	if err := e.reg.AddCredential(ctx, id, spec); err != nil {
		t.Fatal(err)
	}
}

// signJWT signs Cloud IoT Core style claims with an RSA (RS256) or P-256
// (ES256) private key, as a device does.
func signJWT(t *testing.T, key crypto.Signer, aud string, iat, exp time.Time) string {
	t.Helper()
	jwt, err := testjwt.Sign(testjwt.AlgFor(key), key, map[string]any{"aud": aud, "iat": iat.Unix(), "exp": exp.Unix()})
	if err != nil {
		t.Fatal(err)
	}
	return jwt
}

// A device that ran Google's samples: Paho, Cloud IoT Core client id, any
// username, an ES256 or RS256 JWT as password; it publishes telemetry.
// Wrong key, wrong aud and expired JWTs get "bad user name or password".
func TestJWTConnect(t *testing.T) {
	e := newJWTEnv(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, _, err := e.reg.Create(ctx, registry.Spec{ID: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	e.addKey(t, "dev-1", registry.CredentialES256PEM, &ec.PublicKey)
	e.addKey(t, "dev-1", registry.CredentialRSAPEM, &rk.PublicKey)
	now := time.Now()

	for i, key := range []crypto.Signer{ec, rk} {
		jwt := signJWT(t, key, jwtAud, now, now.Add(time.Hour))
		opts := pahov3.NewClientOptions().AddBroker("tcp://" + e.b.Addr()).SetClientID(cloudID).
			SetUsername("unused").SetPassword(jwt).SetProtocolVersion(4).SetAutoReconnect(false)
		cl := pahov3.NewClient(opts)
		if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect with %T: %v", key, tok.Error())
		}
		payload := []byte{byte('0' + i)}
		if tok := cl.Publish("/devices/dev-1/events", 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish with %T: %v", key, tok.Error())
		}
		cl.Disconnect(0)
	}
	rs := consumeN(t, e, 2)
	if string(rs[0].Value) != "0" || string(rs[1].Value) != "1" || string(rs[0].Key) != "dev-1" {
		t.Fatalf("records %q %q", rs[0].Value, rs[1].Value)
	}

	// dev-2 has its own key; dev-1's JWT must not open dev-2.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, _, err := e.reg.Create(ctx, registry.Spec{ID: "dev-2"}); err != nil {
		t.Fatal(err)
	}
	e.addKey(t, "dev-2", registry.CredentialES256PEM, &other.PublicKey)
	if _, _, err := e.reg.Create(ctx, registry.Spec{ID: "blocked"}); err != nil {
		t.Fatal(err)
	}
	e.addKey(t, "blocked", registry.CredentialES256PEM, &ec.PublicKey)
	if err := e.reg.SetBlocked(ctx, "blocked", true); err != nil {
		t.Fatal(err)
	}
	valid := signJWT(t, ec, jwtAud, now, now.Add(time.Hour))
	for _, tc := range []struct {
		name, id, jwt string
		v5, v3        byte
	}{
		{"wrong key", cloudID, signJWT(t, other, jwtAud, now, now.Add(time.Hour)), 0x86, 4},
		{"wrong aud", cloudID, signJWT(t, ec, "other-project", now, now.Add(time.Hour)), 0x86, 4},
		{"expired", cloudID, signJWT(t, ec, jwtAud, now.Add(-2*time.Hour), now.Add(-time.Hour)), 0x86, 4},
		{"lifetime > 24 h", cloudID, signJWT(t, rk, jwtAud, now, now.Add(25*time.Hour)), 0x86, 4},
		{"dev-1's JWT presented by dev-2", "dev-2", valid, 0x86, 4},
		{"blocked device with a valid JWT", "blocked", valid, 0x87, 5},
	} {
		for _, v := range []byte{3, 5} {
			c, ack := dialRaw(t, e.b.Addr(), v, tc.id, tc.jwt, nil)
			want := tc.v5
			if v == 3 {
				want = tc.v3
			}
			if ack.ReasonCode != want {
				t.Errorf("%s v%d: CONNACK %#x, want %#x", tc.name, v, ack.ReasonCode, want)
			}
			c.expectClosed()
		}
	}
}

func consumeN(t *testing.T, e *jwtEnv, n int) []*kgo.Record {
	t.Helper()
	return (&env{kafka: e.kafka}).records(t, n)
}

// The connection opened with a JWT is closed when the JWT expires: MQTT 5
// gets DISCONNECT 0xA0 (maximum connect time), 3.1.1 a closed socket; and
// not before exp.
func TestJWTExpiryClosesConnection(t *testing.T) {
	const skew = time.Millisecond // the session ends at exp + skew
	e := newJWTEnv(t, skew)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, _, err := e.reg.Create(ctx, registry.Spec{ID: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	e.addKey(t, "dev-1", registry.CredentialES256PEM, &ec.PublicKey)
	for _, tc := range []struct {
		v    byte
		code int
	}{{5, 0xA0}, {3, -1}} {
		now := time.Now()
		// JWT times are whole seconds: exp is 2 to 3 s ahead.
		exp := now.Truncate(time.Second).Add(3 * time.Second)
		jwt := signJWT(t, ec, jwtAud, now.Add(-time.Second), exp)
		c, ack := dialRaw(t, e.b.Addr(), tc.v, "dev-1", jwt, nil)
		if ack.ReasonCode != 0 {
			t.Fatalf("v%d: CONNACK %#x", tc.v, ack.ReasonCode)
		}
		// The connection works until then.
		c.publish(1, 1, "/devices/dev-1/events", []byte("before"))
		if pk, err := c.read(); err != nil || pk.ReasonCode != 0 {
			t.Fatalf("v%d: publish before expiry: %+v %v", tc.v, pk, err)
		}
		if got := c.expectClosed(); got != tc.code { // bounded by raw's 15 s read deadline
			t.Errorf("v%d: DISCONNECT code %d, want %d", tc.v, got, tc.code)
		}
		if closed := time.Now(); closed.Before(exp) {
			t.Errorf("v%d: closed at %v, before exp %v", tc.v, closed, exp)
		}
	}
}
