// Package testcert makes X.509 certificates for the TLS tests of the
// registry, broker, API and binary: a CA, server certificates for 127.0.0.1,
// CA-signed and self-signed device certificates, expired ones. Keys are
// ECDSA P-256 (fast to generate); everything lives in memory or in files
// under a test's temporary directory.
package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Cert is a certificate with its private key.
type Cert struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// Options shape a certificate; zero values give a certificate valid from an
// hour ago for a day.
type Options struct {
	CommonName string
	NotBefore  time.Time
	NotAfter   time.Time
	// Server makes a server certificate for 127.0.0.1 and localhost
	// (ExtKeyUsageServerAuth); otherwise it is a client certificate
	// (ExtKeyUsageClientAuth) unless ExtKeyUsage says otherwise.
	Server      bool
	ExtKeyUsage []x509.ExtKeyUsage
}

// NewCA returns a self-signed CA certificate.
func NewCA(t testing.TB, name string) *Cert {
	t.Helper()
	return IssueCA(t, nil, name)
}

// IssueCA returns an intermediate CA signed by parent (nil: self-signed).
func IssueCA(t testing.TB, parent *Cert, name string) *Cert {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	return sign(t, tmpl, newKey(t), parent)
}

// Issue returns a certificate signed by ca, or self-signed when ca is nil.
func Issue(t testing.TB, ca *Cert, o Options) *Cert {
	t.Helper()
	if o.NotBefore.IsZero() {
		o.NotBefore = time.Now().Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = time.Now().Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: o.CommonName},
		NotBefore:    o.NotBefore,
		NotAfter:     o.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  o.ExtKeyUsage,
	}
	if o.Server {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
		tmpl.DNSNames = []string{"localhost"}
		if tmpl.ExtKeyUsage == nil {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}
	} else if tmpl.ExtKeyUsage == nil {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	return sign(t, tmpl, newKey(t), ca)
}

func sign(t testing.TB, tmpl *x509.Certificate, key *ecdsa.PrivateKey, ca *Cert) *Cert {
	t.Helper()
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca.Cert, ca.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &Cert{Cert: c, Key: key}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// CertPEM is the certificate as PEM text.
func (c *Cert) CertPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Cert.Raw}))
}

// KeyPEM is the private key as PEM text (PKCS #8).
func (c *Cert) KeyPEM(t testing.TB) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// TLS is the certificate for a tls.Config, with chain appended (e.g. an
// intermediate CA).
func (c *Cert) TLS(chain ...*Cert) tls.Certificate {
	tc := tls.Certificate{Certificate: [][]byte{c.Cert.Raw}, PrivateKey: c.Key, Leaf: c.Cert}
	for _, x := range chain {
		tc.Certificate = append(tc.Certificate, x.Cert.Raw)
	}
	return tc
}

// Fingerprint is the lowercase hex SHA-256 of the certificate's DER.
func (c *Cert) Fingerprint() string {
	s := sha256.Sum256(c.Cert.Raw)
	return hex.EncodeToString(s[:])
}

// Pool is a pool holding c.
func (c *Cert) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Cert)
	return p
}

// Files writes the certificate and key as PEM files named name.crt and
// name.key under dir and returns their paths.
func (c *Cert) Files(t testing.TB, dir, name string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, []byte(c.CertPEM()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, []byte(c.KeyPEM(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// PoolFromPEM is a pool of the PEM certificates in text.
func PoolFromPEM(t testing.TB, text string) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM([]byte(text)) {
		t.Fatal("testcert: no certificate in PEM")
	}
	return p
}
