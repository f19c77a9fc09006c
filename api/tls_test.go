package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/internal/testcert"
)

// newTLSServer is newServer serving HTTPS with a certificate of ca.
func newTLSServer(t *testing.T, ca *testcert.Cert) string {
	t.Helper()
	server := testcert.Issue(t, ca, testcert.Options{CommonName: "api", Server: true})
	_, _, base := newServerWith(t, func(c *Config) {
		c.TLS = &tls.Config{Certificates: []tls.Certificate{server.TLS()}}
	})
	return base
}

// The API over HTTPS with api.Client trusting a private CA: pinning a
// device certificate (X509_CERT_PEM) shows its fingerprint; a client that
// does not trust the CA is refused by its own TLS check.
func TestHTTPSAndPinnedCertificate(t *testing.T) {
	ca := testcert.NewCA(t, "api CA")
	base := newTLSServer(t, ca)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, []byte(ca.CertPEM()), 0o600); err != nil {
		t.Fatal(err)
	}
	pool, err := CAPool(caFile)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := NewClientTLS(base, adminTok, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := cl.CreateDevice(ctx, NewDevice{ID: "tls-dev"}); err != nil {
		t.Fatal(err)
	}
	dc := testcert.Issue(t, nil, testcert.Options{CommonName: "tls-dev"})
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	d, err := cl.AddCredential(ctx, "tls-dev", NewCredential{Type: "X509_CERT_PEM", PublicKey: dc.CertPEM(), ExpiresAt: &exp})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Credentials) != 2 || d.Credentials[1].Type != "X509_CERT_PEM" ||
		d.Credentials[1].SHA256Fingerprint != dc.Fingerprint() || !d.Credentials[1].ExpiresAt.Equal(exp) {
		t.Fatalf("credentials %+v, want the pin with fingerprint %s", d.Credentials, dc.Fingerprint())
	}
	if d.Credentials[0].SHA256Fingerprint != "" {
		t.Errorf("token has a fingerprint: %+v", d.Credentials[0])
	}
	list, err := cl.Devices(ctx, "")
	if err != nil || len(list) != 1 || list[0].Credentials[1].SHA256Fingerprint != dc.Fingerprint() {
		t.Fatalf("list: %v %+v", err, list)
	}
	// A key is not a certificate.
	_, err = cl.AddCredential(ctx, "tls-dev", NewCredential{Type: "X509_CERT_PEM", PublicKey: dc.KeyPEM(t)})
	if StatusOf(err) != http.StatusBadRequest {
		t.Errorf("private key as X509_CERT_PEM: %v, want 400", err)
	}

	// Without the CA the client refuses the server.
	plain, err := NewClient(base, adminTok)
	if err != nil {
		t.Fatal(err)
	}
	var unknown x509.UnknownAuthorityError
	if _, err := plain.Devices(ctx, ""); !errors.As(err, &unknown) {
		t.Errorf("client without the CA: %v, want an unknown authority error", err)
	}
	if _, err := NewClientTLS("http://127.0.0.1:1", adminTok, &tls.Config{RootCAs: pool}); err == nil {
		t.Error("TLS settings with an http:// URL: no error")
	}
	if _, err := CAPool(filepath.Join(t.TempDir(), "missing.pem")); err == nil {
		t.Error("missing CA file: no error")
	}
}
