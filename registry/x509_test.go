package registry_test

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/testcert"
	"github.com/iotpipe/iotpipe/registry"
)

// startCA makes a running Registry that admits certificates chaining to cas
// (none when nil).
func startCA(t *testing.T, seeds []string, topic string, cas *x509.CertPool) *registry.Registry {
	t.Helper()
	r, err := registry.New(registry.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(seeds...)}, Topic: topic,
		Logger: zerolog.Nop(), ClientCAs: cas})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; r.Close() })
	if err := r.WaitReady(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	return r
}

func chain(cs ...*testcert.Cert) []*x509.Certificate {
	out := make([]*x509.Certificate, len(cs))
	for i, c := range cs {
		out[i] = c.Cert
	}
	return out
}

// A certificate chaining to the client CA admits the device named by its
// CommonName; the CA's sessions end only by block or delete.
func TestCertificateFromCA(t *testing.T) {
	seeds, topic := setup(t)
	ca := testcert.NewCA(t, "registry CA")
	r := startCA(t, seeds, topic, ca.Pool())
	ctx := ctxT(t)
	if _, _, err := r.Create(ctx, registry.Spec{ID: "cert-dev"}); err != nil {
		t.Fatal(err)
	}
	good := testcert.Issue(t, ca, testcert.Options{CommonName: "cert-dev"})
	sess, err := r.AuthenticateCertificate("cert-dev", chain(good))
	if err != nil {
		t.Fatalf("CA-signed certificate: %v", err)
	}
	if !sess.Until.Equal(good.Cert.NotAfter) {
		t.Errorf("Until %v, want the certificate's NotAfter %v", sess.Until, good.Cert.NotAfter)
	}
	if !r.SessionValid("cert-dev", sess.Credential) {
		t.Fatal("CA session not valid right after authentication")
	}

	other := testcert.NewCA(t, "another CA")
	refused := map[string][]*x509.Certificate{
		"another device's certificate": chain(testcert.Issue(t, ca, testcert.Options{CommonName: "someone-else"})),
		"expired":                      chain(testcert.Issue(t, ca, testcert.Options{CommonName: "cert-dev", NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})),
		"not yet valid":                chain(testcert.Issue(t, ca, testcert.Options{CommonName: "cert-dev", NotBefore: time.Now().Add(time.Hour)})),
		"server-only key usage":        chain(testcert.Issue(t, ca, testcert.Options{CommonName: "cert-dev", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})),
		"other CA":                     chain(testcert.Issue(t, other, testcert.Options{CommonName: "cert-dev"})),
		"self-signed, not pinned":      chain(testcert.Issue(t, nil, testcert.Options{CommonName: "cert-dev"})),
		"none":                         nil,
	}
	for name, c := range refused {
		if _, err := r.AuthenticateCertificate("cert-dev", c); !errors.Is(err, registry.ErrBadCredentials) {
			t.Errorf("%s: %v, want ErrBadCredentials", name, err)
		}
	}
	if _, err := r.AuthenticateCertificate("nobody", chain(testcert.Issue(t, ca, testcert.Options{CommonName: "nobody"}))); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("unknown device: %v, want ErrNotFound", err)
	}

	if err := r.SetBlocked(ctx, "cert-dev", true); err != nil {
		t.Fatal(err)
	}
	if r.SessionValid("cert-dev", sess.Credential) {
		t.Error("CA session still valid after block")
	}
	if _, err := r.AuthenticateCertificate("cert-dev", chain(good)); !errors.Is(err, registry.ErrBlocked) {
		t.Errorf("blocked, valid certificate: %v, want ErrBlocked", err)
	}
	if _, err := r.AuthenticateCertificate("cert-dev", refused["other CA"]); !errors.Is(err, registry.ErrBadCredentials) {
		t.Errorf("blocked, bad certificate: %v, want ErrBadCredentials (a stranger learns nothing)", err)
	}
}

// An intermediate CA the client sends along is used to build the chain.
func TestCertificateThroughIntermediate(t *testing.T) {
	seeds, topic := setup(t)
	root := testcert.NewCA(t, "root")
	inter := testcert.IssueCA(t, root, "intermediate")
	r := startCA(t, seeds, topic, root.Pool())
	if _, _, err := r.Create(ctxT(t), registry.Spec{ID: "leafy"}); err != nil {
		t.Fatal(err)
	}
	leaf := testcert.Issue(t, inter, testcert.Options{CommonName: "leafy"})
	if _, err := r.AuthenticateCertificate("leafy", chain(leaf, inter)); err != nil {
		t.Fatalf("leaf + intermediate: %v", err)
	}
	if _, err := r.AuthenticateCertificate("leafy", chain(leaf)); !errors.Is(err, registry.ErrBadCredentials) {
		t.Fatalf("leaf without its intermediate: %v, want ErrBadCredentials", err)
	}
}

// A pinned certificate (X509_CERT_PEM) admits its device whoever signed it,
// counts among the three credentials, shows its fingerprint, honours its
// expiry, and its session ends when it is removed.
func TestPinnedCertificate(t *testing.T) {
	seeds, topic := setup(t)
	r := startCA(t, seeds, topic, nil) // no CA: pins only
	ctx := ctxT(t)
	if _, _, err := r.Create(ctx, registry.Spec{ID: "pinned"}); err != nil {
		t.Fatal(err)
	}
	self := testcert.Issue(t, nil, testcert.Options{CommonName: "any name at all"})
	if _, err := r.AuthenticateCertificate("pinned", chain(self)); !errors.Is(err, registry.ErrBadCredentials) {
		t.Fatalf("before pinning: %v", err)
	}
	if err := r.AddCredential(ctx, "pinned", registry.CredentialSpec{Type: registry.CredentialX509CertPEM, PEM: self.CertPEM()}); err != nil {
		t.Fatal(err)
	}
	d, _ := r.Get("pinned")
	if got := d.Credentials[1].Fingerprint(); got != self.Fingerprint() {
		t.Fatalf("fingerprint %q, want %q", got, self.Fingerprint())
	}
	if d.Credentials[0].Fingerprint() != "" {
		t.Fatal("a token has a fingerprint")
	}
	sess, err := r.AuthenticateCertificate("pinned", chain(self))
	if err != nil {
		t.Fatalf("pinned certificate: %v", err)
	}
	if !sess.Until.Equal(self.Cert.NotAfter) || !r.SessionValid("pinned", sess.Credential) {
		t.Fatalf("session %+v", sess)
	}

	// A second pin with an expiry earlier than the certificate's.
	soon := time.Now().Add(time.Hour).Truncate(time.Second)
	second := testcert.Issue(t, nil, testcert.Options{CommonName: "pinned"})
	if err := r.AddCredential(ctx, "pinned", registry.CredentialSpec{Type: registry.CredentialX509CertPEM, PEM: second.CertPEM(), ExpiresAt: soon}); err != nil {
		t.Fatal(err)
	}
	s2, err := r.AuthenticateCertificate("pinned", chain(second))
	if err != nil || !s2.Until.Equal(soon) {
		t.Fatalf("second pin: %v, until %v, want %v", err, s2.Until, soon)
	}
	// Token + two pins: full.
	third := testcert.Issue(t, nil, testcert.Options{CommonName: "pinned"})
	if err := r.AddCredential(ctx, "pinned", registry.CredentialSpec{Type: registry.CredentialX509CertPEM, PEM: third.CertPEM()}); !errors.Is(err, registry.ErrTooManyCredentials) {
		t.Fatalf("fourth credential: %v, want ErrTooManyCredentials", err)
	}

	// Removing the first pin ends its session, not the other's.
	if err := r.RemoveCredential(ctx, "pinned", 1); err != nil {
		t.Fatal(err)
	}
	if r.SessionValid("pinned", sess.Credential) {
		t.Error("session of a removed pin still valid")
	}
	if !r.SessionValid("pinned", s2.Credential) {
		t.Error("session of the remaining pin cut")
	}
	if _, err := r.AuthenticateCertificate("pinned", chain(self)); !errors.Is(err, registry.ErrBadCredentials) {
		t.Errorf("removed pin: %v, want ErrBadCredentials", err)
	}
}

func TestPinnedCertificateInvalid(t *testing.T) {
	seeds, topic := setup(t)
	r := startCA(t, seeds, topic, nil)
	ctx := ctxT(t)
	if _, _, err := r.Create(ctx, registry.Spec{ID: "bad-pins"}); err != nil {
		t.Fatal(err)
	}
	good := testcert.Issue(t, nil, testcert.Options{CommonName: "bad-pins"})
	expired := testcert.Issue(t, nil, testcert.Options{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	for name, spec := range map[string]registry.CredentialSpec{
		"expired certificate": {PEM: expired.CertPEM()},
		"private key":         {PEM: good.KeyPEM(t)},
		"two certificates":    {PEM: good.CertPEM() + expired.CertPEM()},
		"not PEM":             {PEM: "hello"},
		"expiry in the past":  {PEM: good.CertPEM(), ExpiresAt: time.Now().Add(-time.Minute)},
	} {
		spec.Type = registry.CredentialX509CertPEM
		err := r.AddCredential(ctx, "bad-pins", spec)
		if !errors.Is(err, registry.ErrInvalidCredential) {
			t.Errorf("%s: %v, want ErrInvalidCredential", name, err)
		} else if !strings.Contains(err.Error(), "X509_CERT_PEM") && name != "expiry in the past" {
			t.Errorf("%s: error %q does not name the type", name, err)
		}
	}
}
