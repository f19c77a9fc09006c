package main

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotpipe/iotpipe/internal/testcert"
	"github.com/iotpipe/iotpipe/internal/testkafka"
)

// tlsFiles are the PEM files a TLS deployment is started with.
type tlsFiles struct {
	dir                           string
	serverCA, deviceCA            *testcert.Cert
	serverCAFile, deviceCAFile    string
	serverCertFile, serverKeyFile string
}

func newTLSFiles(t *testing.T) *tlsFiles {
	t.Helper()
	f := &tlsFiles{dir: t.TempDir(), serverCA: testcert.NewCA(t, "server CA"), deviceCA: testcert.NewCA(t, "device CA")}
	f.serverCertFile, f.serverKeyFile = testcert.Issue(t, f.serverCA, testcert.Options{CommonName: "iotpipe", Server: true}).Files(t, f.dir, "server")
	f.serverCAFile, f.deviceCAFile = filepath.Join(f.dir, "server-ca.crt"), filepath.Join(f.dir, "device-ca.crt")
	for file, c := range map[string]*testcert.Cert{f.serverCAFile: f.serverCA, f.deviceCAFile: f.deviceCA} {
		if err := os.WriteFile(file, []byte(c.CertPEM()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// startTLS is pipeline.start with every TLS option: MQTT over TLS with the
// device CA, wss, and the API over HTTPS. It returns the TLS and wss ports.
func (p *pipeline) startTLS(f *tlsFiles) (tlsPort, wsPort int) {
	p.t.Helper()
	tlsPort, wsPort = freePort(p.t), freePort(p.t)
	args := append([]string{
		"--mqtt-tls-addr", fmt.Sprintf("127.0.0.1:%d", tlsPort), "--mqtt-ws-addr", fmt.Sprintf("127.0.0.1:%d", wsPort),
		"--mqtt-tls-cert", f.serverCertFile, "--mqtt-tls-key", f.serverKeyFile, "--mqtt-client-ca", f.deviceCAFile,
		"--api-tls-cert", f.serverCertFile, "--api-tls-key", f.serverKeyFile}, p.kafkaArg...)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.serverCA.Pool()}}}
	p.launch(hc, "https", args)
	return tlsPort, wsPort
}

// A TLS deployment end to end: the CLI talks to the HTTPS API with
// --api-ca (and fails without it), pins a self-signed device certificate
// and lists its fingerprint; mosquitto_pub publishes over TLS with it and no
// password; Paho publishes over wss with a certificate of the device CA;
// after `credentials remove` the pinned certificate is refused.
func TestTLSEndToEnd(t *testing.T) {
	p := newPipeline(t)
	f := newTLSFiles(t)
	tlsPort, wsPort := p.startTLS(f)
	ca := []string{"--api-ca", f.serverCAFile}

	if _, err := p.cli("devices", "list"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("CLI without --api-ca: %v, want a certificate error", err)
	}
	for _, id := range []string{"pin-1", "ca-1"} {
		if _, err := p.cli(append([]string{"devices", "create", id}, ca...)...); err != nil {
			t.Fatal(err)
		}
	}
	self := testcert.Issue(t, nil, testcert.Options{CommonName: "pin-1"})
	certFile, keyFile := self.Files(t, f.dir, "pin-1")
	out, err := p.cli(append([]string{"devices", "credentials", "add", "pin-1", "--type", "X509_CERT_PEM", "--public-key-file", certFile}, ca...)...)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, self.Fingerprint()) {
		t.Fatalf("credentials add printed no fingerprint %s:\n%s", self.Fingerprint(), out)
	}
	out, err = p.cli(append([]string{"devices", "credentials", "list", "pin-1"}, ca...)...)
	if err != nil || !strings.Contains(out, "X509_CERT_PEM") || !strings.Contains(out, self.Fingerprint()) {
		t.Fatalf("credentials list: %v\n%s", err, out)
	}

	pub := func(cert, key, payload string) (int, string) {
		cmd := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", strconv.Itoa(tlsPort), "--cafile", f.serverCAFile,
			"--cert", cert, "--key", key, "-i", "pin-1", "-q", "1", "-t", "/devices/pin-1/events", "-m", payload)
		b, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(b)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(b)
	}
	if code, out := pub(certFile, keyFile, `{"temperature": 1}`); code != 0 {
		t.Fatalf("mosquitto_pub with the pinned certificate: exit %d %s", code, out)
	}

	caCert := testcert.Issue(t, f.deviceCA, testcert.Options{CommonName: "ca-1"})
	opts := mqtt.NewClientOptions().AddBroker(fmt.Sprintf("wss://127.0.0.1:%d/mqtt", wsPort)).SetClientID("ca-1").
		SetProtocolVersion(4).SetAutoReconnect(false).
		SetTLSConfig(&tls.Config{RootCAs: f.serverCA.Pool(), Certificates: []tls.Certificate{caCert.TLS()}})
	cl := mqtt.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("wss connect: %v", tok.Error())
	}
	if tok := cl.Publish("/devices/ca-1/events", 1, false, []byte(`{"temperature": 2}`)); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("wss publish: %v", tok.Error())
	}
	cl.Disconnect(0)
	recs := testkafka.Consume(t, p.seeds, p.topics.Telemetry, 2, 30*time.Second)
	got := map[string]bool{}
	for _, r := range recs {
		got[string(r.Key)] = true
	}
	if !got["pin-1"] || !got["ca-1"] {
		t.Fatalf("telemetry from %v, want pin-1 and ca-1", got)
	}

	if _, err := p.cli(append([]string{"devices", "credentials", "remove", "pin-1", "1"}, ca...)...); err != nil {
		t.Fatal(err)
	}
	if code, out := pub(certFile, keyFile, `{"temperature": 3}`); code == 0 || !strings.Contains(out, "bad user name or password") {
		t.Fatalf("mosquitto_pub with the removed certificate: exit %d %q, want bad user name or password", code, out)
	}

	// The load generator over MQTT over TLS, trusting the server CA.
	sim := append([]string{"simulate", "--broker", fmt.Sprintf("127.0.0.1:%d", tlsPort), "--mqtt-ca", f.serverCAFile,
		"--devices", "2", "--messages", "10", "--rate", "0", "--duration", "30s"}, ca...)
	out, err = p.cli(sim...)
	if err != nil || !regexp.MustCompile(`(?m)^sent +10$`).MatchString(out) || !regexp.MustCompile(`(?m)^acked +10 `).MatchString(out) {
		t.Fatalf("simulate over TLS: %v\n%s", err, out)
	}
	p.stop()
}

// Bad TLS flags fail at start with a message naming the flag.
func TestTLSFlagErrors(t *testing.T) {
	f := newTLSFiles(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--mqtt-tls-cert", f.serverCertFile}, "--mqtt-tls-cert and --mqtt-tls-key must be given together"},
		{[]string{"--mqtt-client-ca", f.deviceCAFile}, "--mqtt-client-ca needs --mqtt-tls-cert"},
		{[]string{"--api-tls-cert", f.serverCertFile, "--api-tls-key", f.deviceCAFile}, "--api-tls-cert/--api-tls-key"},
		{[]string{"--mqtt-tls-cert", f.serverCertFile, "--mqtt-tls-key", f.serverKeyFile, "--mqtt-client-ca", f.serverKeyFile}, "--mqtt-client-ca"},
	} {
		args := append([]string{"run", "--data-dir", t.TempDir()}, tc.args...)
		out, err := exec.Command(binary, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("iotpipe %v: %v, output %q; want failure mentioning %q", tc.args, err, out, tc.want)
		}
	}
}
