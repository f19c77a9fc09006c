package registry

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"time"
)

// CredentialX509CertPEM is a device's own TLS client certificate, pinned:
// a client presenting exactly this certificate (same SHA-256 of its DER)
// over TLS authenticates as the device, with no password. It need not chain
// to any CA, so self-signed device certificates work; its validity dates
// still apply. The PEM is stored in Credential.PublicKey (a certificate is
// public, as for RSA_X509_PEM).
const CredentialX509CertPEM CredentialType = "X509_CERT_PEM"

// caRefPrefix starts the Session.Credential of a device admitted by a
// certificate that chains to Config.ClientCAs. Such a session holds no
// registry credential: it stays valid while the device exists and is not
// blocked. Credential refs are hex, so the prefix cannot collide.
const caRefPrefix = "ca:"

// parseCertCredential checks the PEM of an X509_CERT_PEM credential: one
// CERTIFICATE block, a key TLS can use (RSA of at least 2048 bits, ECDSA on
// P-256/384/521, Ed25519), not expired at now.
func parseCertCredential(text string, now time.Time) (*x509.Certificate, error) {
	t := CredentialX509CertPEM
	block, rest := pem.Decode([]byte(text))
	if block == nil {
		return nil, fmt.Errorf("%w: %s: no PEM block", ErrInvalidCredential, t)
	}
	if len(pemTrim(rest)) != 0 {
		return nil, fmt.Errorf("%w: %s: more than one PEM block (give the device's own certificate only)", ErrInvalidCredential, t)
	}
	if block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%w: %s needs a \"CERTIFICATE\" PEM block, got %q", ErrInvalidCredential, t, block.Type)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidCredential, t, err)
	}
	switch k := c.PublicKey.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("%w: %s: RSA key has %d bits, at least %d needed", ErrInvalidCredential, t, k.N.BitLen(), minRSABits)
		}
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() && k.Curve != elliptic.P521() {
			return nil, fmt.Errorf("%w: %s: EC curve not supported by TLS", ErrInvalidCredential, t)
		}
	case ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("%w: %s: unsupported key type %T", ErrInvalidCredential, t, c.PublicKey)
	}
	if !now.Before(c.NotAfter) {
		return nil, fmt.Errorf("%w: %s: certificate expired at %s", ErrInvalidCredential, t, c.NotAfter.UTC().Format(time.RFC3339))
	}
	return c, nil
}

// Fingerprint is the lowercase hex SHA-256 of the DER certificate of an
// X509_CERT_PEM credential (what `openssl x509 -outform der | sha256sum`
// prints), or "" for any other type.
func (c Credential) Fingerprint() string {
	sum, ok := c.certSHA256()
	if !ok {
		return ""
	}
	return hex.EncodeToString(sum[:])
}

func (c Credential) certSHA256() ([sha256.Size]byte, bool) {
	if c.Type != CredentialX509CertPEM {
		return [sha256.Size]byte{}, false
	}
	block, _ := pem.Decode([]byte(c.PublicKey))
	if block == nil || block.Type != "CERTIFICATE" {
		return [sha256.Size]byte{}, false
	}
	return sha256.Sum256(block.Bytes), true
}

// AuthenticateCertificate authenticates a device by the certificate chain
// its TLS client presented (leaf first; the TLS handshake proved the client
// holds the leaf's private key). The leaf must be within its validity dates
// and either be pinned on the device as an unexpired X509_CERT_PEM
// credential, or chain to Config.ClientCAs with the device id as its
// subject CommonName (and, if it has extended key usages, client auth among
// them). A pin is tried first, so a session it admits ends when that
// credential is removed. Errors are ErrNotFound, ErrBadCredentials (a
// certificate that admits no device, or another device) and ErrBlocked,
// which, as for passwords, only a proven client learns. Session.Until is the
// leaf's NotAfter, or the credential's expiry if sooner.
func (r *Registry) AuthenticateCertificate(deviceID string, chain []*x509.Certificate) (Session, error) {
	if len(chain) == 0 {
		return Session{}, fmt.Errorf("%w: device %s: no client certificate", ErrBadCredentials, deviceID)
	}
	leaf := chain[0]
	r.mu.RLock()
	e, ok := r.devices[deviceID]
	var dev Device
	var refs []string
	if ok {
		dev, refs = e.dev, e.refs // read-only below
	}
	r.mu.RUnlock()
	if !ok {
		return Session{}, fmt.Errorf("%w: %s", ErrNotFound, deviceID)
	}
	now := r.now()
	if now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		return Session{}, fmt.Errorf("%w: device %s: client certificate valid %s to %s only", ErrBadCredentials, deviceID,
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	s := Session{Until: leaf.NotAfter}
	fp := sha256.Sum256(leaf.Raw)
	idx := -1
	for i, c := range dev.Credentials {
		sum, ok := c.certSHA256()
		if !ok || (!c.ExpiresAt.IsZero() && !now.Before(c.ExpiresAt)) {
			continue
		}
		if subtle.ConstantTimeCompare(sum[:], fp[:]) == 1 {
			idx = i
			break
		}
	}
	switch {
	case idx >= 0:
		s.Credential = refs[idx]
		if exp := dev.Credentials[idx].ExpiresAt; !exp.IsZero() && exp.Before(s.Until) {
			s.Until = exp
		}
	case r.cfg.ClientCAs == nil:
		return Session{}, fmt.Errorf("%w: device %s: client certificate %x is not pinned on the device (and no client CA is configured)", ErrBadCredentials, deviceID, fp[:8])
	default:
		if leaf.Subject.CommonName != deviceID {
			return Session{}, fmt.Errorf("%w: device %s: client certificate is for %q and not pinned on the device", ErrBadCredentials, deviceID, leaf.Subject.CommonName)
		}
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: r.cfg.ClientCAs, Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			return Session{}, fmt.Errorf("%w: device %s: client certificate is not pinned and does not verify against the client CA: %w", ErrBadCredentials, deviceID, err)
		}
		s.Credential = caRefPrefix + hex.EncodeToString(fp[:16])
	}
	if dev.Blocked {
		return Session{}, fmt.Errorf("%w: %s", ErrBlocked, deviceID)
	}
	return s, nil
}
