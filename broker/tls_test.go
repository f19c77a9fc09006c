package broker

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/ingest"
	"github.com/iotpipe/iotpipe/internal/testcert"
	"github.com/iotpipe/iotpipe/registry"
)

// tlsEnv is a broker with TCP, TLS and WebSocket (wss) listeners in front of
// a real registry whose client CA is devCA. Clients trust serverCA.
type tlsEnv struct {
	b        *Broker
	reg      *registry.Registry
	kafka    *kfake.Cluster
	serverCA *testcert.Cert
	devCA    *testcert.Cert
}

func newTLSEnv(t *testing.T, withTLS bool, mods ...func(*Config)) *tlsEnv {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, testTopic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	e := &tlsEnv{kafka: c, serverCA: testcert.NewCA(t, "server CA"), devCA: testcert.NewCA(t, "device CA")}
	seeds := []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}
	e.reg, err = registry.New(registry.Config{Kafka: seeds, Topic: "iot.registry", Logger: testLogger(),
		JWTAudience: jwtAud, ClientCAs: e.devCA.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	regDone := make(chan error, 1)
	go func() { regDone <- e.reg.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-regDone; e.reg.Close() })
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	if err := e.reg.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	fw, err := ingest.New(ingest.Config{Kafka: seeds, Topic: testTopic, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fw.Close(context.Background()) })
	cfg := Config{TCPAddr: "127.0.0.1:0", WSAddr: "127.0.0.1:0", Auth: e.reg, Forwarder: fw,
		Logger: testLogger(), Metrics: prometheus.NewRegistry()}
	if withTLS {
		server := testcert.Issue(t, e.serverCA, testcert.Options{CommonName: "broker", Server: true})
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{server.TLS()}}
		cfg.TLSAddr = "127.0.0.1:0"
	}
	for _, m := range mods {
		m(&cfg)
	}
	e.b, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithCancel(context.Background())
	bDone := make(chan error, 1)
	go func() { bDone <- e.b.Run(bctx) }()
	t.Cleanup(func() { bcancel(); <-bDone })
	return e
}

// clientTLS trusts the server CA and presents cert (none when nil).
func (e *tlsEnv) clientTLS(cert *testcert.Cert) *tls.Config {
	c := &tls.Config{RootCAs: e.serverCA.Pool(), ServerName: "127.0.0.1"}
	if cert != nil {
		c.Certificates = []tls.Certificate{cert.TLS()}
	}
	return c
}

func (e *tlsEnv) create(t *testing.T, id string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, tok, err := e.reg.Create(ctx, registry.Spec{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (e *tlsEnv) pin(t *testing.T, id string, c *testcert.Cert) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := e.reg.AddCredential(ctx, id, registry.CredentialSpec{Type: registry.CredentialX509CertPEM, PEM: c.CertPEM()}); err != nil {
		t.Fatal(err)
	}
}

// dialRawTLS is dialRaw over TLS.
func dialRawTLS(t *testing.T, addr string, cfg *tls.Config, v byte, clientID, password string) (*raw, byte) {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &raw{t: t, conn: conn, r: bufio.NewReader(conn), v: v}
	pk := connectPacket(v, clientID, password)
	c.write(pk)
	ack, err := c.read()
	if err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	return c, ack.ReasonCode
}

func connectPacket(v byte, clientID, password string) packets.Packet {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: v,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: clientID, Clean: true, Keepalive: 60}}
	if v == 3 {
		pk.ProtocolVersion = 4 // 3.1.1 is protocol level 4
	}
	if password != "" {
		pk.Connect.Password, pk.Connect.PasswordFlag = []byte(password), true
	}
	return pk
}

// connectV5On connects a paho.golang (MQTT 5) client over conn.
func connectV5On(t *testing.T, conn net.Conn, name, clientID, password string) *liveConn {
	t.Helper()
	t.Cleanup(func() { conn.Close() })
	lc := &liveConn{name: name, gone: make(chan struct{})}
	c := paho.NewClient(paho.ClientConfig{Conn: conn,
		OnServerDisconnect: func(d *paho.Disconnect) { lc.ended(int(d.ReasonCode)) }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cp := &paho.Connect{ClientID: clientID, KeepAlive: 60, CleanStart: true}
	if password != "" {
		cp.PasswordFlag, cp.Password = true, []byte(password)
	}
	ca, err := c.Connect(ctx, cp)
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("%s: connect: %v %+v", name, err, ca)
	}
	lc.publish = func(ctx context.Context, topic string) error {
		_, err := c.Publish(ctx, &paho.Publish{QoS: 1, Topic: topic, Payload: []byte("alive")})
		return err
	}
	return lc
}

// pahoV3 connects an Eclipse Paho 3.1.1 client to url (tcp://, ssl://,
// ws://, wss://) and publishes one QoS 1 message, which returns only after
// the PUBACK, i.e. once Kafka has the record.
func pahoV3(t *testing.T, url string, cfg *tls.Config, clientID, password, topic, payload string) error {
	t.Helper()
	opts := pahov3.NewClientOptions().AddBroker(url).SetClientID(clientID).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetTLSConfig(cfg)
	if password != "" {
		opts.SetUsername("unused").SetPassword(password)
	}
	c := pahov3.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return tok.Error()
	}
	defer c.Disconnect(0)
	tok := c.Publish(topic, 1, false, []byte(payload))
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("%s: no PUBACK", url)
	}
	return tok.Error()
}

// Every listener carries devices with every kind of credential: token over
// plain TCP, WebSocket (ws://) and TLS, a JWT over TLS (MQTT 5 and 3.1.1),
// a CA-signed and a pinned self-signed client certificate over TLS and
// wss:// with no password. Each message lands in Kafka.
func TestTLSAndWebSocketListeners(t *testing.T) {
	e := newTLSEnv(t, true)
	tok := e.create(t, "dev-1")
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	(&jwtEnv{reg: e.reg}).addKey(t, "dev-1", registry.CredentialES256PEM, &ec.PublicKey)
	now := time.Now()
	jwt := signJWT(t, ec, jwtAud, now, now.Add(time.Hour))
	caSigned := testcert.Issue(t, e.devCA, testcert.Options{CommonName: "dev-1"})
	self := testcert.Issue(t, nil, testcert.Options{CommonName: "whatever"})
	e.pin(t, "dev-1", self)

	const topic = "/devices/dev-1/events"
	cases := []struct {
		name, url string
		tls       *tls.Config
		password  string
	}{
		{"token tcp", "tcp://" + e.b.Addr(), nil, tok},
		{"token tls", "ssl://" + e.b.TLSAddr(), e.clientTLS(nil), tok},
		{"JWT tls", "ssl://" + e.b.TLSAddr(), e.clientTLS(nil), jwt},
		{"CA cert tls", "ssl://" + e.b.TLSAddr(), e.clientTLS(caSigned), ""},
		{"pinned cert tls", "ssl://" + e.b.TLSAddr(), e.clientTLS(self), ""},
		{"CA cert wss", "wss://" + e.b.WSAddr() + "/mqtt", e.clientTLS(caSigned), ""},
		{"token wss", "wss://" + e.b.WSAddr() + "/mqtt", e.clientTLS(nil), tok},
	}
	for _, tc := range cases {
		if err := pahoV3(t, tc.url, tc.tls, "dev-1", tc.password, topic, tc.name); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	// MQTT 5 over TLS with a JWT.
	conn, err := tls.Dial("tcp", e.b.TLSAddr(), e.clientTLS(nil))
	if err != nil {
		t.Fatal(err)
	}
	expectAlive(t, connectV5On(t, conn, "v5 JWT tls", "projects/p/locations/l/registries/r/devices/dev-1", jwt), topic)

	rs := consumeN(t, &jwtEnv{kafka: e.kafka}, len(cases)+1)
	got := map[string]bool{}
	for _, r := range rs {
		got[string(r.Value)] = true
	}
	for _, tc := range cases {
		if !got[tc.name] {
			t.Errorf("no record from %q", tc.name)
		}
	}
}

// Without TLS the WebSocket listener is plain ws://, and TCP can be off.
func TestWebSocketPlain(t *testing.T) {
	e := newTLSEnv(t, false)
	tok := e.create(t, "dev-ws")
	if e.b.TLSAddr() != "" {
		t.Fatalf("TLS listener without TLS: %s", e.b.TLSAddr())
	}
	if err := pahoV3(t, "ws://"+e.b.WSAddr()+"/mqtt", nil, "dev-ws", tok, "/devices/dev-ws/events", "over ws"); err != nil {
		t.Fatal(err)
	}
	if err := pahoV3(t, "ws://"+e.b.WSAddr()+"/mqtt", nil, "dev-ws", "wrong", "/devices/dev-ws/events", "x"); err == nil {
		t.Fatal("wrong token over ws connected")
	}
	rs := consumeN(t, &jwtEnv{kafka: e.kafka}, 1)
	if string(rs[0].Value) != "over ws" || string(rs[0].Key) != "dev-ws" {
		t.Fatalf("record %q %q", rs[0].Key, rs[0].Value)
	}
}

func TestListenerConfig(t *testing.T) {
	fw := newEnv(t, envOpt{}).fw
	_, err := New(Config{TCPAddr: Off, Auth: testDevices, Forwarder: fw})
	if err == nil {
		t.Error("no listener at all: no error")
	}
	_, err = New(Config{TCPAddr: "127.0.0.1:0", TLS: &tls.Config{}, Auth: testDevices, Forwarder: fw})
	if err == nil {
		t.Error("TLS without a certificate: no error")
	}
	ca := testcert.NewCA(t, "ca")
	server := testcert.Issue(t, ca, testcert.Options{Server: true})
	b, err := New(Config{TCPAddr: Off, TLSAddr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{server.TLS()}},
		Auth: testDevices, Forwarder: fw, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.closeListeners()
	if b.Addr() != "" || b.TLSAddr() == "" {
		t.Fatalf("TCP off: Addr %q, TLSAddr %q", b.Addr(), b.TLSAddr())
	}
	// TLS 1.1 is refused in the handshake.
	_, err = tls.Dial("tcp", b.TLSAddr(), &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", MaxVersion: tls.VersionTLS11})
	if err == nil {
		t.Error("TLS 1.1 handshake succeeded")
	}
	// A busy port fails in New.
	if _, err := New(Config{TCPAddr: Off, WSAddr: b.TLSAddr(), Auth: testDevices, Forwarder: fw}); err == nil {
		t.Error("WebSocket on a busy port: no error")
	}
}

// Refused client certificates get the codes of bad credentials (0x86 / 4);
// a blocked device with a valid certificate 0x87 / 5. A valid certificate
// needs no password and outweighs a wrong one; a certificate that does not
// admit the device is refused even with the right token.
func TestMutualTLSCodes(t *testing.T) {
	e := newTLSEnv(t, true)
	tok := e.create(t, "dev-1")
	e.create(t, "dev-2")
	e.create(t, "blocked")
	caSigned := testcert.Issue(t, e.devCA, testcert.Options{CommonName: "dev-1"})
	self := testcert.Issue(t, nil, testcert.Options{CommonName: "dev-1"})
	e.pin(t, "dev-1", self)
	blockedCert := testcert.Issue(t, e.devCA, testcert.Options{CommonName: "blocked"})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := e.reg.SetBlocked(ctx, "blocked", true); err != nil {
		t.Fatal(err)
	}
	expired := testcert.Issue(t, e.devCA, testcert.Options{CommonName: "dev-1", NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	otherCA := testcert.Issue(t, testcert.NewCA(t, "rogue CA"), testcert.Options{CommonName: "dev-1"})
	unpinned := testcert.Issue(t, nil, testcert.Options{CommonName: "dev-1"})
	serverEKU := testcert.Issue(t, e.devCA, testcert.Options{CommonName: "dev-1", Server: true})

	for _, tc := range []struct {
		name, id, password string
		cert               *testcert.Cert
		v5, v3             byte
	}{
		{"CA-signed, no password", "dev-1", "", caSigned, 0, 0},
		{"pinned self-signed, no password", "dev-1", "", self, 0, 0},
		{"CA-signed, wrong password", "dev-1", "wrong", caSigned, 0, 0},
		{"JWT-style client id", "projects/p/locations/l/registries/r/devices/dev-1", "", caSigned, 0, 0},
		{"dev-1's CA certificate as dev-2", "dev-2", "", caSigned, 0x86, 4},
		{"dev-1's pinned certificate as dev-2", "dev-2", "", self, 0x86, 4},
		{"expired", "dev-1", "", expired, 0x86, 4},
		{"signed by another CA", "dev-1", "", otherCA, 0x86, 4},
		{"self-signed, not pinned, right token", "dev-1", tok, unpinned, 0x86, 4},
		{"server certificate", "dev-1", "", serverEKU, 0x86, 4},
		{"unknown device", "nobody", "", testcert.Issue(t, e.devCA, testcert.Options{CommonName: "nobody"}), 0x86, 4},
		{"no certificate, no password", "dev-1", "", nil, 0x86, 4},
		{"no certificate, token", "dev-1", tok, nil, 0, 0},
		{"blocked, valid certificate", "blocked", "", blockedCert, 0x87, 5},
	} {
		for _, v := range []byte{3, 5} {
			c, code := dialRawTLS(t, e.b.TLSAddr(), e.clientTLS(tc.cert), v, tc.id, tc.password)
			want := tc.v5
			if v == 3 {
				want = tc.v3
			}
			if code != want {
				t.Errorf("%s v%d: CONNACK %#x, want %#x", tc.name, v, code, want)
			}
			if code != 0 {
				c.expectClosed()
			}
			c.conn.Close()
		}
	}
	if got := e.b.auth.m.connectRefused.WithLabelValues("bad_certificate"); counterValue(t, got) < 12 {
		t.Errorf("bad_certificate refusals %v, want >= 12", counterValue(t, got))
	}
}

// Removing the pinned certificate a session used cuts it (v5 DISCONNECT
// 0x98); blocking cuts a CA-admitted session; a session ends when its
// certificate expires (0xA0).
func TestMutualTLSSessionEnds(t *testing.T) {
	e := newTLSEnv(t, true)
	e.create(t, "pin-1")
	e.create(t, "ca-1")
	self := testcert.Issue(t, nil, testcert.Options{CommonName: "pin-1"})
	e.pin(t, "pin-1", self) // credential 1, after the token
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	dial := func(c *testcert.Cert) net.Conn {
		conn, err := tls.Dial("tcp", e.b.TLSAddr(), e.clientTLS(c))
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}

	pinned := connectV5On(t, dial(self), "pinned", "pin-1", "")
	caCert := testcert.Issue(t, e.devCA, testcert.Options{CommonName: "ca-1"})
	byCA := connectV5On(t, dial(caCert), "CA", "ca-1", "")
	expectAlive(t, pinned, "/devices/pin-1/events")

	start := time.Now()
	if err := e.reg.RemoveCredential(ctx, "pin-1", 1); err != nil {
		t.Fatal(err)
	}
	expectCut(t, pinned, start, 0x98)
	if _, code := dialRawTLS(t, e.b.TLSAddr(), e.clientTLS(self), 5, "pin-1", ""); code != 0x86 {
		t.Errorf("removed pin: CONNACK %#x, want 0x86", code)
	}

	// A metadata change keeps the CA session; a block cuts it.
	if err := e.reg.SetMetadata(ctx, "ca-1", "renamed", nil); err != nil {
		t.Fatal(err)
	}
	expectAlive(t, byCA, "/devices/ca-1/events")
	start = time.Now()
	if err := e.reg.SetBlocked(ctx, "ca-1", true); err != nil {
		t.Fatal(err)
	}
	expectCut(t, byCA, start, 0x98)
	if err := e.reg.SetBlocked(ctx, "ca-1", false); err != nil {
		t.Fatal(err)
	}

	// A certificate that expires soon: the connection ends then.
	// Certificate times are whole seconds: it expires 1 to 2 s from now.
	short := testcert.Issue(t, e.devCA, testcert.Options{CommonName: "ca-1", NotAfter: time.Now().Truncate(time.Second).Add(2 * time.Second)})
	notAfter := short.Cert.NotAfter
	c, code := dialRawTLS(t, e.b.TLSAddr(), e.clientTLS(short), 5, "ca-1", "")
	if code != 0 {
		t.Fatalf("short-lived certificate: CONNACK %#x", code)
	}
	if got := c.expectClosed(); got != 0xA0 {
		t.Errorf("certificate expiry: DISCONNECT %#x, want 0xA0", got)
	}
	if time.Now().Before(notAfter) {
		t.Errorf("closed before the certificate expired")
	}
}

// mosquitto_pub, as a device would run it: --cafile, --cert, --key over
// TLS with a CA-signed certificate, and refused with another device's.
func TestMosquittoPubMutualTLS(t *testing.T) {
	bin, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		t.Skip("mosquitto_pub not installed (apt-get install mosquitto-clients); CI installs it")
	}
	e := newTLSEnv(t, true)
	e.create(t, "mosq-1")
	dir := t.TempDir()
	caFile := filepath.Join(dir, "server-ca.crt")
	if err := os.WriteFile(caFile, []byte(e.serverCA.CertPEM()), 0o600); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := testcert.Issue(t, e.devCA, testcert.Options{CommonName: "mosq-1"}).Files(t, dir, "mosq-1")
	otherCert, otherKey := testcert.Issue(t, e.devCA, testcert.Options{CommonName: "mosq-2"}).Files(t, dir, "mosq-2")
	host, port := splitAddr(t, e.b.TLSAddr())
	run := func(cert, key, payload string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return exec.CommandContext(ctx, bin, "-h", host, "-p", port, "--cafile", caFile, "--cert", cert, "--key", key,
			"-i", "mosq-1", "-q", "1", "-V", "mqttv311", "-t", "/devices/mosq-1/events", "-m", payload).CombinedOutput()
	}
	if out, err := run(certFile, keyFile, "from mosquitto"); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, out)
	}
	rs := consumeN(t, &jwtEnv{kafka: e.kafka}, 1)
	if string(rs[0].Value) != "from mosquitto" || string(rs[0].Key) != "mosq-1" {
		t.Fatalf("record %q %q", rs[0].Key, rs[0].Value)
	}
	if out, err := run(otherCert, otherKey, "impostor"); err == nil {
		t.Fatalf("mosquitto_pub with mosq-2's certificate as mosq-1 succeeded:\n%s", out)
	}
}

// A TLS or WebSocket client that connects and sends nothing is dropped
// after the connect timeout; one that sent its CONNECT lives by its
// keepalive instead.
func TestConnectTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, withTLS := range []bool{true, false} {
		e := newTLSEnv(t, withTLS, func(c *Config) { c.connectTimeout = timeout })
		idle := []net.Conn{dialTCP(t, e.b.WSAddr())}
		if e.b.Addr() != "" {
			idle = append(idle, dialTCP(t, e.b.Addr())) // plain MQTT, silent
		}
		if withTLS {
			idle = append(idle, dialTCP(t, e.b.TLSAddr()))
		} else {
			// Upgraded to WebSocket, then silent.
			ws, _, err := websocket.DefaultDialer.Dial("ws://"+e.b.WSAddr()+"/mqtt", nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ws.Close() })
			idle = append(idle, ws.UnderlyingConn())
		}
		start := time.Now()
		for i, c := range idle {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Fatalf("TLS %v, idle connection %d: read data, want closed", withTLS, i)
			} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("TLS %v, idle connection %d: still open after 10 s", withTLS, i)
			}
		}
		t.Logf("TLS %v: idle connections closed after %v", withTLS, time.Since(start).Round(time.Millisecond))
		if withTLS {
			tok := e.create(t, "keep-1")
			conn, err := tls.Dial("tcp", e.b.TLSAddr(), e.clientTLS(nil))
			if err != nil {
				t.Fatal(err)
			}
			lc := connectV5On(t, conn, "keepalive", "keep-1", tok)
			time.Sleep(3 * timeout) // past the connect deadline: a deadline, not synchronisation
			expectAlive(t, lc, "/devices/keep-1/events")
		} else {
			// A plain connection that sent its CONNECT in time lives on.
			tok := e.create(t, "keep-2")
			lc := connectV5On(t, dialTCP(t, e.b.Addr()), "keepalive", "keep-2", tok)
			time.Sleep(3 * timeout) // past the connect deadline: a deadline, not synchronisation
			expectAlive(t, lc, "/devices/keep-2/events")
		}
	}
}
