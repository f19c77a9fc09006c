package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotpipe/iotpipe/internal/testjwt"
)

// TestMQTTRefusalMatrix checks every row of the MQTT refusal table in
// docs/architecture.md against the built binary: `iotpipe run`, devices,
// keys, blocks and deletes made with the CLI, and real clients — Eclipse
// Paho Go v5 (paho.golang) and v3 (paho.mqtt.golang) for the exact reason
// codes of each protocol version, mosquitto_pub for the CONNECT rows, and a
// raw MQTT 5 client where Paho refuses to send the bad packet itself (QoS 2
// when the server announced Maximum QoS 1). The expectations are written
// here; refusalTableMatches checks that they are exactly the table.
func TestMQTTRefusalMatrix(t *testing.T) {
	p := newPipeline(t)
	const aud = "matrix-project"
	const maxPayload = 4096
	p.start("--jwt-audience", aud, "--max-payload", strconv.Itoa(maxPayload))
	m := &refusalMatrix{t: t, p: p, aud: aud}

	// Devices, credentials and blocks through the CLI, as an operator does.
	m.token = p.createDevice("mx-dev")
	ec, rk := m.newEC(), m.newRSA()
	m.addKey("mx-dev", "ES256_PEM", &ec.PublicKey, "")
	m.addKey("mx-dev", "RSA_PEM", &rk.PublicKey, "")
	p.createDevice("mx-other")
	m.addKey("mx-other", "ES256_PEM", &m.newEC().PublicKey, "")
	blockedToken := p.createDevice("mx-blocked")
	m.addKey("mx-blocked", "ES256_PEM", &ec.PublicKey, "")
	if _, err := p.cli("devices", "block", "mx-blocked"); err != nil {
		t.Fatal(err)
	}
	cutTokens := map[string]string{}
	for _, id := range []string{"mx-cut-block", "mx-cut-delete", "mx-cut-cred"} {
		cutTokens[id] = p.createDevice(id)
	}
	// A key that expires in a few seconds: sessions opened with it now must
	// end at its expiry (0xA0), and JWTs it signs are refused after it.
	p.createDevice("mx-exp")
	credExpiry := time.Now().Truncate(time.Second).Add(8 * time.Second)
	m.addKey("mx-exp", "ES256_PEM", &ec.PublicKey, credExpiry.Format(time.RFC3339))
	// Two client ids of one device (plain and Cloud IoT Core path): with one
	// id, the second connection would take the first one over (0x8E).
	expV5 := m.connectV5("mx-exp", m.jwt(ec, nil))
	expV3 := m.connectV3(cloudPath("mx-exp"), m.jwt(ec, nil))
	if expV5.connack != 0 || expV3.connack != 0 {
		t.Fatalf("mx-exp before its key expired: CONNACK v5 %#x, v3 %d", expV5.connack, expV3.connack)
	}

	now := time.Now()
	other := m.newEC()
	tok := func(s string) func() string { return func() string { return s } }
	jwt := func(key any, claims map[string]any) func() string { return func() string { return m.jwt(key, claims) } }
	hs256, err := testjwt.Sign("HS256", []byte("a shared secret the broker must not accept"), m.claims(nil))
	if err != nil {
		t.Fatal(err)
	}
	none, err := testjwt.Sign("none", nil, m.claims(nil))
	if err != nil {
		t.Fatal(err)
	}
	cases := []refusalCase{
		{row: "access token", v5: "CONNACK 0x00", v3: "CONNACK 0", id: "mx-dev", pw: tok(m.token)},
		{row: "RS256 JWT signed by a key of the device", v5: "CONNACK 0x00", v3: "CONNACK 0", id: cloudPath("mx-dev"), pw: jwt(rk, nil)},
		{row: "ES256 JWT signed by a key of the device", v5: "CONNACK 0x00", v3: "CONNACK 0", id: cloudPath("mx-dev"), pw: jwt(ec, nil)},
		{row: "client id neither a device id nor a Cloud IoT Core device path", v5: "CONNACK 0x85", v3: "CONNACK 2",
			id: "projects/p/devices/mx-dev", pw: tok(m.token)},
		{row: "unknown device", v5: "CONNACK 0x86", v3: "CONNACK 4", id: "mx-nobody", pw: tok(m.token)},
		{row: "wrong token", v5: "CONNACK 0x86", v3: "CONNACK 4", id: "mx-dev", pw: tok(cutTokens["mx-cut-block"])},
		{row: "no password", v5: "CONNACK 0x86", v3: "CONNACK 4", id: "mx-dev", pw: tok("")},
		{row: "JWT signed by a key the device does not have", v5: "CONNACK 0x86", v3: "CONNACK 4", id: cloudPath("mx-dev"), pw: jwt(other, nil)},
		{row: "JWT with alg HS256 or none", v5: "CONNACK 0x86", v3: "CONNACK 4", id: cloudPath("mx-dev"), pw: tok(hs256),
			run: func(v int) string {
				return sameOutcome(m.connectOutcome(v, cloudPath("mx-dev"), hs256), m.connectOutcome(v, cloudPath("mx-dev"), none))
			}},
		{row: "JWT with another `aud`", v5: "CONNACK 0x86", v3: "CONNACK 4", id: cloudPath("mx-dev"),
			pw: jwt(ec, map[string]any{"aud": "another-project"})},
		{row: "expired JWT", v5: "CONNACK 0x86", v3: "CONNACK 4", id: cloudPath("mx-dev"),
			pw: jwt(ec, map[string]any{"iat": now.Add(-2 * time.Hour).Unix(), "exp": now.Add(-time.Hour).Unix()})},
		{row: "JWT lifetime > 24 h", v5: "CONNACK 0x86", v3: "CONNACK 4", id: cloudPath("mx-dev"),
			pw: jwt(rk, map[string]any{"exp": now.Add(25 * time.Hour).Unix()})},
		{row: "JWT of another device", v5: "CONNACK 0x86", v3: "CONNACK 4", id: cloudPath("mx-other"), pw: jwt(ec, nil)},
		{row: "JWT whose credential expired", v5: "CONNACK 0x86", v3: "CONNACK 4", id: cloudPath("mx-exp"), pw: jwt(ec, nil),
			run: func(v int) string {
				sleepUntil(credExpiry.Add(100 * time.Millisecond))
				return m.connectOutcome(v, cloudPath("mx-exp"), m.jwt(ec, nil))
			}},
		{row: "blocked device (valid token or JWT)", v5: "CONNACK 0x87", v3: "CONNACK 5", id: "mx-blocked", pw: tok(blockedToken),
			run: func(v int) string {
				return sameOutcome(m.connectOutcome(v, "mx-blocked", blockedToken), m.connectOutcome(v, cloudPath("mx-blocked"), m.jwt(ec, nil)))
			}},
		{row: "publish to another device's topic", v5: "PUBACK 0x87, connection stays", v3: "connection closed",
			run: func(v int) string {
				return m.afterConnect(v, publishTo("/devices/mx-other/events", 1, []byte(`{"t": 1}`)))
			}},
		{row: "subscribe to another device's topic", v5: "SUBACK 0x87", v3: "SUBACK 0x80",
			run: func(v int) string { return m.afterConnect(v, subscribeTo("/devices/mx-other/commands/#")) }},
		{row: "QoS 2 publish", v5: "DISCONNECT 0x9B", v3: "connection closed", run: func(v int) string {
			if v == 5 { // paho.golang will not send QoS 2 to a server that announced Maximum QoS 1
				return m.rawV5QoS2("mx-dev", m.token)
			}
			return m.afterConnect(v, publishTo("/devices/mx-dev/events", 2, []byte(`{"t": 1}`)))
		}},
		{row: "packet above `--max-payload`", v5: "DISCONNECT 0x95", v3: "connection closed",
			run: func(v int) string {
				return m.afterConnect(v, publishTo("/devices/mx-dev/events", 1, bytes.Repeat([]byte("x"), maxPayload+1)))
			}},
		{row: "the session's JWT or credential expired", v5: "DISCONNECT 0xA0", v3: "connection closed", run: func(v int) string {
			s := expV5
			if v == 3 {
				s = expV3
			}
			out := s.ended(t, time.Until(credExpiry)+10*time.Second)
			if s.endedAt.Before(credExpiry) {
				return fmt.Sprintf("%s at %s, before the credential expired at %s", out, s.endedAt.Format(time.StampMilli), credExpiry.Format(time.StampMilli))
			}
			return out
		}},
		{row: "live session, device blocked", v5: "DISCONNECT 0x98", v3: "connection closed",
			run: m.cut("mx-cut-block", cutTokens, "devices", "block", "mx-cut-block")},
		{row: "live session, device deleted", v5: "DISCONNECT 0x98", v3: "connection closed",
			run: m.cut("mx-cut-delete", cutTokens, "devices", "delete", "mx-cut-delete")},
		{row: "live session, the credential it used removed", v5: "DISCONNECT 0x98", v3: "connection closed",
			run: m.cut("mx-cut-cred", cutTokens, "devices", "credentials", "remove", "mx-cut-cred", "0")},
	}
	// The last row restarts iotpipe without --jwt-audience.
	cases = append(cases, refusalCase{row: "JWT while iotpipe runs without `--jwt-audience`", v5: "CONNACK 0x86", v3: "CONNACK 4",
		id: cloudPath("mx-dev"), pw: jwt(ec, nil), run: func(v int) string {
			if v == 5 {
				before := p.logs // newPipeline's cleanup shows the last process's log only
				t.Cleanup(func() {
					if t.Failed() {
						t.Logf("iotpipe run output before the restart:\n%s", tail(before.String(), 150))
					}
				})
				p.stop()
				p.start("--max-payload", strconv.Itoa(maxPayload))
				// The device and its key survived the restart: its token still opens.
				if got := m.connectOutcome(5, "mx-dev", m.token); got != "CONNACK 0x00" {
					t.Fatalf("mx-dev's token after the restart: %s", got)
				}
			}
			return m.connectOutcome(v, cloudPath("mx-dev"), m.jwt(ec, nil))
		}})
	for i, tc := range cases {
		if tc.run == nil {
			cases[i].run = func(v int) string { return m.connectOutcome(v, tc.id, tc.pw()) }
		}
	}
	refusalTableMatches(t, cases)

	for _, tc := range cases {
		for _, v := range []int{5, 3} {
			want := tc.v5
			if v == 3 {
				want = tc.v3
			}
			got := tc.run(v)
			if got != want {
				t.Errorf("%s, MQTT %s: %s, want %s", tc.row, versionName(v), got, want)
			}
			// mosquitto_pub, where a CONNACK is the answer, must see the same.
			if tc.pw != nil {
				m.mosquittoAgrees(tc, v, want)
			}
		}
	}
}

// refusalCase is one row of the refusal table: what MQTT 5 and 3.1.1
// clients observe, and how to provoke it (v is 5 or 3).
type refusalCase struct {
	row    string
	v5, v3 string
	run    func(v int) string
	// id and pw, for CONNECT rows: the client id and password, which
	// mosquitto_pub also tries; run defaults to a Paho CONNECT with them.
	id string
	pw func() string
}

// notOnBinary are rows of the table this test cannot provoke through the
// binary, with the test that covers them.
var notOnBinary = map[string]string{
	"registry unavailable, broker stopping": "broker.TestConnackUnavailable (an Authenticator that fails, a broker draining)",
}

// refusalTableMatches reads the refusal table of docs/architecture.md and
// requires its rows to be exactly the cases (plus notOnBinary), each with
// the same MQTT 5 and 3.1.1 outcome. A cell's outcome is its text before
// any " (" explanation.
func refusalTableMatches(t *testing.T, cases []refusalCase) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	const header = "| case | MQTT 5 | MQTT 3.1.1 |"
	_, table, ok := strings.Cut(string(b), header)
	if !ok {
		t.Fatalf("docs/architecture.md has no table starting %q", header)
	}
	doc := map[string][2]string{}
	var order []string
	for _, line := range strings.Split(table, "\n")[2:] {
		if !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if len(cells) != 3 {
			t.Fatalf("docs/architecture.md refusal table: %q does not have 3 cells", line)
		}
		outcome := func(c string) string { before, _, _ := strings.Cut(c, " ("); return before }
		doc[cells[0]] = [2]string{outcome(cells[1]), outcome(cells[2])}
		order = append(order, cells[0])
	}
	seen := map[string]bool{}
	for _, tc := range cases {
		seen[tc.row] = true
		d, ok := doc[tc.row]
		switch {
		case !ok:
			t.Errorf("refusal table in docs/architecture.md has no row %q (MQTT 5 %s, 3.1.1 %s)", tc.row, tc.v5, tc.v3)
		case d != [2]string{tc.v5, tc.v3}:
			t.Errorf("refusal table row %q says MQTT 5 %q, 3.1.1 %q; the test expects %q, %q", tc.row, d[0], d[1], tc.v5, tc.v3)
		}
	}
	for _, row := range order {
		if _, skip := notOnBinary[row]; !seen[row] && !skip {
			t.Errorf("refusal table row %q has no case in TestMQTTRefusalMatrix", row)
		}
	}
	for row := range notOnBinary {
		if _, ok := doc[row]; !ok {
			t.Errorf("notOnBinary lists %q, which is not a row of the refusal table", row)
		}
	}
}

func versionName(v int) string {
	if v == 3 {
		return "3.1.1"
	}
	return "5"
}

func cloudPath(id string) string {
	return "projects/matrix-project/locations/l/registries/r/devices/" + id
}

// sameOutcome returns the outcome when every attempt of a row agrees.
func sameOutcome(outcomes ...string) string {
	for _, o := range outcomes[1:] {
		if o != outcomes[0] {
			return "different outcomes: " + strings.Join(outcomes, " / ")
		}
	}
	return outcomes[0]
}

func sleepUntil(t time.Time) {
	if d := time.Until(t); d > 0 {
		time.Sleep(d) // a wall-clock expiry: there is no condition to poll
	}
}

// refusalMatrix holds what the cases share.
type refusalMatrix struct {
	t     *testing.T
	p     *pipeline
	aud   string
	token string // mx-dev's access token
}

func (m *refusalMatrix) addr() string { return fmt.Sprintf("127.0.0.1:%d", m.p.mqttPort) }

func (m *refusalMatrix) newEC() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		m.t.Fatal(err)
	}
	return k
}

func (m *refusalMatrix) newRSA() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		m.t.Fatal(err)
	}
	return k
}

// addKey adds pub to the device with `iotpipe devices credentials add`.
func (m *refusalMatrix) addKey(id, typ string, pub any, expires string) {
	m.t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		m.t.Fatal(err)
	}
	f := filepath.Join(m.t.TempDir(), "key.pem")
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		m.t.Fatal(err)
	}
	args := []string{"devices", "credentials", "add", id, "--type", typ, "--public-key-file", f}
	if expires != "" {
		args = append(args, "--expires", expires)
	}
	if _, err := m.p.cli(args...); err != nil {
		m.t.Fatal(err)
	}
}

// claims are valid Cloud IoT Core claims (aud, iat now, exp in an hour)
// with over's entries replacing them.
func (m *refusalMatrix) claims(over map[string]any) map[string]any {
	now := time.Now()
	c := map[string]any{"aud": m.aud, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	for k, v := range over {
		c[k] = v
	}
	return c
}

func (m *refusalMatrix) jwt(key any, over map[string]any) string {
	m.t.Helper()
	s, err := testjwt.Sign(testjwt.AlgFor(key), key, m.claims(over))
	if err != nil {
		m.t.Fatal(err)
	}
	return s
}

// mqttSession is a connection of a Paho client (v5 or v3) that notes how it
// ended: the v5 DISCONNECT reason code, or a closed connection.
type mqttSession struct {
	v       int
	connack byte
	err     error
	v5      *paho.Client
	v3      mqtt.Client

	once    sync.Once
	done    chan struct{}
	endedAt time.Time
	how     string
}

func (s *mqttSession) end(how string) {
	s.once.Do(func() { s.endedAt, s.how = time.Now(), how; close(s.done) })
}

// ended waits up to d for the end of the session and returns it.
func (s *mqttSession) ended(t *testing.T, d time.Duration) string {
	select { // first, so a d already past does not race an ended session
	case <-s.done:
		return s.how
	default:
	}
	select {
	case <-s.done:
		return s.how
	case <-time.After(d):
		return fmt.Sprintf("still connected %v later", d)
	}
}

func (m *refusalMatrix) connectV5(clientID, password string) *mqttSession {
	m.t.Helper()
	s := &mqttSession{v: 5, done: make(chan struct{})}
	conn, err := net.Dial("tcp", m.addr())
	if err != nil {
		m.t.Fatal(err)
	}
	s.v5 = paho.NewClient(paho.ClientConfig{Conn: conn,
		OnServerDisconnect: func(d *paho.Disconnect) { s.end(fmt.Sprintf("DISCONNECT 0x%02X", d.ReasonCode)) },
		OnClientError:      func(error) { s.end("connection closed") }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cp := &paho.Connect{ClientID: clientID, KeepAlive: 60, CleanStart: true, UsernameFlag: true, Username: "unused"}
	if password != "" {
		cp.PasswordFlag, cp.Password = true, []byte(password)
	}
	ca, err := s.v5.Connect(ctx, cp)
	if ca == nil {
		s.err = fmt.Errorf("no CONNACK: %w", err)
	} else {
		s.connack = ca.ReasonCode
	}
	m.t.Cleanup(func() { conn.Close() })
	return s
}

func (m *refusalMatrix) connectV3(clientID, password string) *mqttSession {
	m.t.Helper()
	s := &mqttSession{v: 3, done: make(chan struct{})}
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + m.addr()).SetClientID(clientID).SetUsername("unused").
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).
		SetConnectionLostHandler(func(mqtt.Client, error) { s.end("connection closed") })
	if password != "" {
		opts.SetPassword(password)
	}
	s.v3 = mqtt.NewClient(opts)
	tok := s.v3.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		s.err = errors.New("no CONNACK within 15 s")
	}
	s.connack = tok.(*mqtt.ConnectToken).ReturnCode()
	m.t.Cleanup(func() { s.v3.Disconnect(0) })
	return s
}

func (s *mqttSession) connackOutcome() string {
	switch {
	case s.err != nil:
		return s.err.Error()
	case s.v == 5:
		return fmt.Sprintf("CONNACK 0x%02X", s.connack)
	}
	return fmt.Sprintf("CONNACK %d", s.connack)
}

func (m *refusalMatrix) connectOutcome(v int, clientID, password string) string {
	m.t.Helper()
	var s *mqttSession
	if v == 5 {
		s = m.connectV5(clientID, password)
		if s.connack == 0 && s.err == nil {
			_ = s.v5.Disconnect(&paho.Disconnect{})
		}
	} else {
		s = m.connectV3(clientID, password)
		s.v3.Disconnect(0)
	}
	return s.connackOutcome()
}

// afterConnect connects mx-dev with its token, does act and returns what
// the client observed.
func (m *refusalMatrix) afterConnect(v int, act func(m *refusalMatrix, s *mqttSession) string) string {
	m.t.Helper()
	var s *mqttSession
	if v == 5 {
		s = m.connectV5("mx-dev", m.token)
	} else {
		s = m.connectV3("mx-dev", m.token)
	}
	if s.err != nil || s.connack != 0 {
		m.t.Fatalf("mx-dev with its token, MQTT %s: %s", versionName(v), s.connackOutcome())
	}
	return act(m, s)
}

// publishTo publishes and returns "PUBACK 0x87, connection stays" when a
// v5 PUBACK refuses it and a publish to the device's own topic still
// succeeds afterwards; else how the connection ended.
func publishTo(topic string, qos byte, payload []byte) func(m *refusalMatrix, s *mqttSession) string {
	return func(m *refusalMatrix, s *mqttSession) string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if s.v == 5 {
			pr, err := s.v5.Publish(ctx, &paho.Publish{QoS: qos, Topic: topic, Payload: payload})
			if pr == nil {
				return s.ended(m.t, 10*time.Second) // no PUBACK: the server ended the connection
			}
			if pr.ReasonCode < 0x80 {
				return fmt.Sprintf("PUBACK 0x%02X (accepted, err %v)", pr.ReasonCode, err)
			}
			ok, err := s.v5.Publish(ctx, &paho.Publish{QoS: 1, Topic: "/devices/mx-dev/events", Payload: []byte(`{"t": 2}`)})
			if err != nil || ok.ReasonCode != 0 {
				return fmt.Sprintf("PUBACK 0x%02X, then the own topic failed: %v", pr.ReasonCode, err)
			}
			_ = s.v5.Disconnect(&paho.Disconnect{})
			return fmt.Sprintf("PUBACK 0x%02X, connection stays", pr.ReasonCode)
		}
		tok := s.v3.Publish(topic, qos, false, payload)
		select {
		case <-s.done:
			return s.how
		case <-tok.Done():
			if tok.Error() == nil {
				return "acknowledged"
			}
			return s.ended(m.t, 10*time.Second)
		case <-ctx.Done():
			return "no answer within 10 s"
		}
	}
}

// subscribeTo subscribes at QoS 1 and returns the SUBACK reason code.
func subscribeTo(filter string) func(m *refusalMatrix, s *mqttSession) string {
	return func(m *refusalMatrix, s *mqttSession) string {
		defer func() {
			if s.v == 5 {
				_ = s.v5.Disconnect(&paho.Disconnect{})
			} else {
				s.v3.Disconnect(0)
			}
		}()
		if s.v == 5 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			sa, err := s.v5.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
			if sa == nil || len(sa.Reasons) != 1 {
				return fmt.Sprintf("no SUBACK: %v", err)
			}
			return fmt.Sprintf("SUBACK 0x%02X", sa.Reasons[0])
		}
		tok := s.v3.Subscribe(filter, 1, nil)
		if !tok.WaitTimeout(10 * time.Second) {
			return "no SUBACK within 10 s"
		}
		return fmt.Sprintf("SUBACK 0x%02X", tok.(*mqtt.SubscribeToken).Result()[filter])
	}
}

// cut connects the device with its token over v5 and v3 (the first call
// connects both, then runs the CLI command), and returns how the session
// of version v ended.
func (m *refusalMatrix) cut(id string, tokens map[string]string, cli ...string) func(v int) string {
	var sessions map[int]*mqttSession
	var start time.Time
	return func(v int) string {
		if sessions == nil {
			sessions = map[int]*mqttSession{5: m.connectV5(id, tokens[id]), 3: m.connectV3(cloudPath(id), tokens[id])}
			for v, s := range sessions {
				if s.err != nil || s.connack != 0 {
					m.t.Fatalf("%s, MQTT %s: %s", id, versionName(v), s.connackOutcome())
				}
			}
			start = time.Now()
			if _, err := m.p.cli(cli...); err != nil {
				m.t.Fatal(err)
			}
		}
		s := sessions[v]
		out := s.ended(m.t, 5*time.Second)
		if s.how != "" {
			m.t.Logf("%s MQTT %s: %s %v after `iotpipe %s` started", id, versionName(v), s.how,
				s.endedAt.Sub(start).Round(time.Millisecond), strings.Join(cli, " "))
		}
		return out
	}
}

// rawV5QoS2 connects with a raw MQTT 5 client, sends a QoS 2 PUBLISH and
// returns how the server ended the connection.
func (m *refusalMatrix) rawV5QoS2(id, token string) string {
	m.t.Helper()
	conn, err := net.Dial("tcp", m.addr())
	if err != nil {
		m.t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	write := func(pk packets.Packet, enc func(*packets.Packet, *bytes.Buffer) error) {
		var buf bytes.Buffer
		if err := enc(&pk, &buf); err != nil {
			m.t.Fatal(err)
		}
		if _, err := conn.Write(buf.Bytes()); err != nil {
			m.t.Fatal(err)
		}
	}
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Clean: true, Keepalive: 60,
			PasswordFlag: true, Password: []byte(token)}}, (*packets.Packet).ConnectEncode)
	if pk, err := readRawV5(conn, r); err != nil || pk.FixedHeader.Type != packets.Connack || pk.ReasonCode != 0 {
		m.t.Fatalf("raw v5 connect: %+v %v", pk, err)
	}
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, ProtocolVersion: 5, PacketID: 1,
		TopicName: "/devices/" + id + "/events", Payload: []byte(`{"t": 1}`)}, (*packets.Packet).PublishEncode)
	out := "connection closed"
	for {
		pk, err := readRawV5(conn, r)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return "still connected 10 s later"
			}
			return out
		}
		if pk.FixedHeader.Type == packets.Disconnect {
			out = fmt.Sprintf("DISCONNECT 0x%02X", pk.ReasonCode)
		} else {
			return fmt.Sprintf("packet type %d", pk.FixedHeader.Type)
		}
	}
}

// readRawV5 reads one MQTT 5 packet (CONNACK or DISCONNECT are decoded).
func readRawV5(conn net.Conn, r *bufio.Reader) (packets.Packet, error) {
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	hb, err := r.ReadByte()
	if err != nil {
		return packets.Packet{}, err
	}
	var fh packets.FixedHeader
	if err := fh.Decode(hb); err != nil {
		return packets.Packet{}, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return packets.Packet{}, err
	}
	fh.Remaining = n
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return packets.Packet{}, err
	}
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: 5}
	switch fh.Type {
	case packets.Connack:
		err = pk.ConnackDecode(b)
	case packets.Disconnect:
		err = pk.DisconnectDecode(b)
	}
	return pk, err
}

// mosquittoConnack is how mosquitto_pub (libmosquitto 2) words each CONNACK
// refusal: the MQTT 5 reason string, or the 3.1.1 return code's text.
var mosquittoConnack = map[string]string{
	"CONNACK 0x85": "Client Identifier not valid",
	"CONNACK 0x86": "Bad User Name or Password",
	"CONNACK 0x87": "Not authorized",
	"CONNACK 2":    "identifier rejected",
	"CONNACK 4":    "bad user name or password",
	"CONNACK 5":    "not authorised",
}

// mosquittoAgrees repeats a CONNECT row with mosquitto_pub: the same client
// id and password must be accepted (exit 0) or refused with the same code.
func (m *refusalMatrix) mosquittoAgrees(tc refusalCase, v int, want string) {
	m.t.Helper()
	row, id, password := tc.row, tc.id, tc.pw()
	args := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(m.p.mqttPort), "-q", "1", "-i", id, "-u", "unused",
		"-t", "/devices/mx-dev/events", "-m", `{"t": 3}`, "-V", map[int]string{5: "mqttv5", 3: "mqttv311"}[v]}
	if password != "" {
		args = append(args, "-P", password)
	}
	out, err := exec.Command("mosquitto_pub", args...).CombinedOutput()
	if want == "CONNACK 0x00" || want == "CONNACK 0" {
		if err != nil {
			m.t.Errorf("%s, MQTT %s, mosquitto_pub: %v: %s", row, versionName(v), err, out)
		}
		return
	}
	if text := mosquittoConnack[want]; err == nil || !strings.Contains(string(out), text) {
		m.t.Errorf("%s, MQTT %s, mosquitto_pub: %v %q, want a refusal saying %q", row, versionName(v), err, out, text)
	}
}
