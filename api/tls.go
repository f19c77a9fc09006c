package api

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/iotpipe/iotpipe/internal/servertls"
)

// serverTLS is the API's copy of Config.TLS: at least TLS 1.2, HTTP/1.1
// and HTTP/2 offered.
func serverTLS(c *tls.Config) (*tls.Config, error) {
	c, err := servertls.Clone(c)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	if len(c.NextProtos) == 0 {
		c.NextProtos = []string{"h2", "http/1.1"}
	}
	return c, nil
}

// NewClientTLS is NewClient for an https:// API whose certificate is
// checked against tc's RootCAs (nil tc: the system roots).
func NewClientTLS(baseURL, token string, tc *tls.Config) (*Client, error) {
	c, err := NewClient(baseURL, token)
	if err != nil {
		return nil, err
	}
	if tc != nil {
		if c.base.Scheme != "https" {
			return nil, fmt.Errorf("api url %q: TLS settings need an https:// URL", baseURL)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tc.Clone()
		c.http = &http.Client{Timeout: 60 * time.Second, Transport: tr}
	}
	return c, nil
}

// CAPool reads PEM certificates (a CA bundle) from file.
func CAPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificate found", file)
	}
	return p, nil
}
