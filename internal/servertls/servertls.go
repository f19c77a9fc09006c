// Package servertls holds what every iotpipe TLS listener (MQTT, WebSocket,
// HTTP API) requires of its configuration, so the policy is written once.
package servertls

import (
	"crypto/tls"
	"errors"
)

// ErrNoCertificate: the configuration cannot present a server certificate.
var ErrNoCertificate = errors.New("TLS has no server certificate")

// Clone returns a copy of c that requires at least TLS 1.2, or
// ErrNoCertificate when c has no way to present a server certificate.
// Callers adjust the copy for their protocol.
func Clone(c *tls.Config) (*tls.Config, error) {
	if len(c.Certificates) == 0 && c.GetCertificate == nil && c.GetConfigForClient == nil {
		return nil, ErrNoCertificate
	}
	c = c.Clone()
	if c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12
	}
	return c, nil
}
