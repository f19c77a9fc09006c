package servertls

import (
	"crypto/tls"
	"errors"
	"testing"
)

func TestClone(t *testing.T) {
	if _, err := Clone(&tls.Config{}); !errors.Is(err, ErrNoCertificate) {
		t.Fatalf("no certificate: %v", err)
	}
	orig := &tls.Config{Certificates: []tls.Certificate{{}}, MinVersion: tls.VersionTLS10}
	c, err := Clone(orig)
	if err != nil || c == orig || c.MinVersion != tls.VersionTLS12 || orig.MinVersion != tls.VersionTLS10 {
		t.Fatalf("got %+v, %v (original %v)", c, err, orig.MinVersion)
	}
	c, err = Clone(&tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil },
		MinVersion: tls.VersionTLS13})
	if err != nil || c.MinVersion != tls.VersionTLS13 {
		t.Fatalf("TLS 1.3 kept: %+v, %v", c, err)
	}
}
