package plugin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grafana/grafana-plugin-sdk-go/backend"
)

// testCA is a throwaway CA for an API served over TLS.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// serverFiles writes a certificate for 127.0.0.1 signed by ca and its key
// as PEM files, for iotpipe's --api-tls-cert and --api-tls-key.
func (ca *testCA) serverFiles(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "iotpipe"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestParseSettingsCACert(t *testing.T) {
	ca := newTestCA(t, "settings CA")
	in := func(url, caPEM string) backend.DataSourceInstanceSettings {
		return backend.DataSourceInstanceSettings{JSONData: []byte(`{"url":"` + url + `"}`),
			DecryptedSecureJSONData: map[string]string{"token": "t", "tlsCACert": caPEM}}
	}
	s, err := ParseSettings(in("https://iotpipe:8080", string(ca.pem)))
	if err != nil {
		t.Fatal(err)
	}
	if s.RootCAs == nil || !s.RootCAs.Equal(func() *x509.CertPool { p := x509.NewCertPool(); p.AddCert(ca.cert); return p }()) {
		t.Errorf("RootCAs do not hold exactly the configured CA")
	}
	if s, err := ParseSettings(in("https://iotpipe:8080", "")); err != nil || s.RootCAs != nil {
		t.Errorf("no CA: RootCAs %v err %v, want nil (the system's CAs)", s.RootCAs, err)
	}
	for _, tc := range []struct{ url, ca, want string }{
		{"https://iotpipe:8080", "not a certificate", "holds no PEM certificate"},
		{"http://iotpipe:8080", string(ca.pem), "is not https"},
	} {
		if _, err := ParseSettings(in(tc.url, tc.ca)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s with CA %.20q: err %v, want %q", tc.url, tc.ca, err, tc.want)
		}
	}
}

// The plugin executable reaches an iotpipe API served over TLS with a
// certificate from a private CA when the datasource holds that CA, and
// says what to set when it does not.
func TestAPIOverTLSWithPrivateCA(t *testing.T) {
	requireChDB(t)
	buildBinaries(t)
	ca := newTestCA(t, "iotpipe test CA")
	certFile, keyFile := ca.serverFiles(t)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	p, err := startPipelineTLS(t, &tls.Config{RootCAs: pool}, "--api-tls-cert", certFile, "--api-tls-key", keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pp, err := startPlugin(t)
	if err != nil {
		t.Fatal(err)
	}
	p.createDevice(t, "tls-dev", nil)

	ds := dsSettings("iotpipe-tls", p.url, p.readToken)
	ds.DecryptedSecureJSONData["tlsCACert"] = string(ca.pem)
	if h := pp.health(t, ds); h.Status != backend.HealthStatusOk || !strings.Contains(h.Message, "1 devices") {
		t.Fatalf("health with the CA: %v %q", h.Status, h.Message)
	}
	if status, body := pp.resource(t, ds, "GET", "devices"); status != 200 || !strings.Contains(string(body), "tls-dev") {
		t.Fatalf("devices resource with the CA: %d %s", status, body)
	}

	other := newTestCA(t, "another CA")
	for name, caPEM := range map[string]string{"no CA": "", "another CA": string(other.pem)} {
		ds := dsSettings("iotpipe-tls-"+strings.ReplaceAll(name, " ", "-"), p.url, p.readToken)
		ds.DecryptedSecureJSONData["tlsCACert"] = caPEM
		h := pp.health(t, ds)
		if h.Status != backend.HealthStatusError || !strings.Contains(h.Message, "set the CA certificate") {
			t.Errorf("health with %s: %v %q, want an error saying to set the CA certificate", name, h.Status, h.Message)
		}
	}
}
