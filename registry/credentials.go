package registry

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
	"time"
)

// Public-key credential types, named as Cloud IoT Core named them so an
// exported device list maps one to one. The key is stored as PEM text: it is
// public, so unlike a token it may sit on the topic as is.
const (
	CredentialRSAPEM       CredentialType = "RSA_PEM"        // PKIX "PUBLIC KEY" of an RSA key: RS256
	CredentialRSAX509PEM   CredentialType = "RSA_X509_PEM"   // certificate with an RSA key: RS256
	CredentialES256PEM     CredentialType = "ES256_PEM"      // PKIX "PUBLIC KEY" on P-256: ES256
	CredentialES256X509PEM CredentialType = "ES256_X509_PEM" // certificate with a P-256 key: ES256
)

// minRSABits is the smallest RSA key accepted, as in Cloud IoT Core.
const minRSABits = 2048

// CredentialSpec is a public-key or certificate credential to add to a device.
type CredentialSpec struct {
	Type CredentialType
	PEM  string
	// ExpiresAt is zero for a credential that does not expire.
	ExpiresAt time.Time
}

// jwtAlg is the JWT "alg" a key type verifies, or "" for a type that is not
// a public key (or unknown to this binary, which then ignores it).
func (t CredentialType) jwtAlg() string {
	switch t {
	case CredentialRSAPEM, CredentialRSAX509PEM:
		return "RS256"
	case CredentialES256PEM, CredentialES256X509PEM:
		return "ES256"
	}
	return ""
}

// parsePublicKey parses and checks the PEM of a public-key credential: the
// block type must fit the credential type, RSA keys have at least 2048 bits
// and EC keys are on P-256. It returns *rsa.PublicKey or *ecdsa.PublicKey.
func parsePublicKey(t CredentialType, text string) (crypto.PublicKey, error) {
	alg := t.jwtAlg()
	if alg == "" {
		return nil, fmt.Errorf("%w: unknown type %q (want RSA_PEM, RSA_X509_PEM, ES256_PEM, ES256_X509_PEM or X509_CERT_PEM)", ErrInvalidCredential, t)
	}
	block, rest := pem.Decode([]byte(text))
	if block == nil {
		return nil, fmt.Errorf("%w: %s: no PEM block", ErrInvalidCredential, t)
	}
	if len(pemTrim(rest)) != 0 {
		return nil, fmt.Errorf("%w: %s: more than one PEM block", ErrInvalidCredential, t)
	}
	var key any
	switch t {
	case CredentialRSAPEM, CredentialES256PEM:
		if block.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("%w: %s needs a \"PUBLIC KEY\" PEM block, got %q", ErrInvalidCredential, t, block.Type)
		}
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrInvalidCredential, t, err)
		}
		key = k
	default:
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: %s needs a \"CERTIFICATE\" PEM block, got %q", ErrInvalidCredential, t, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrInvalidCredential, t, err)
		}
		key = c.PublicKey
	}
	switch k := key.(type) {
	case *rsa.PublicKey:
		if alg != "RS256" {
			return nil, fmt.Errorf("%w: %s holds an RSA key", ErrInvalidCredential, t)
		}
		if k.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("%w: %s: RSA key has %d bits, at least %d needed", ErrInvalidCredential, t, k.N.BitLen(), minRSABits)
		}
		return k, nil
	case *ecdsa.PublicKey:
		if alg != "ES256" {
			return nil, fmt.Errorf("%w: %s holds an EC key", ErrInvalidCredential, t)
		}
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%w: %s: EC key is on %s, ES256 needs P-256", ErrInvalidCredential, t, k.Curve.Params().Name)
		}
		return k, nil
	default:
		return nil, fmt.Errorf("%w: %s: unsupported key type %T", ErrInvalidCredential, t, key)
	}
}

func pemTrim(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\n' || b[0] == '\r' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}

// AddCredential adds a public-key credential (for JWTs) or a pinned TLS
// client certificate (X509_CERT_PEM, see x509.go) to a device.
//
// A binary older than public keys keeps ignoring them on authentication, but
// its read-modify-write updates (SetBlocked, SetMetadata) drop the
// public_key field it does not know: upgrade every instance before adding
// keys in a mixed fleet.
// It returns
// ErrInvalidCredential for a bad type, PEM or key, ErrTooManyCredentials
// when the device already holds MaxCredentials, or ErrNotFound.
func (r *Registry) AddCredential(ctx context.Context, id string, spec CredentialSpec) error {
	now := r.now().UTC()
	if spec.Type == CredentialX509CertPEM {
		if _, err := parseCertCredential(spec.PEM, now); err != nil {
			return err
		}
	} else if _, err := parsePublicKey(spec.Type, spec.PEM); err != nil {
		return err
	}
	if !spec.ExpiresAt.IsZero() && !spec.ExpiresAt.After(now) {
		return fmt.Errorf("%w: expiry %s is in the past", ErrInvalidCredential, spec.ExpiresAt.Format(time.RFC3339))
	}
	var full bool
	err := r.update(ctx, id, func(d *Device) bool {
		if len(d.Credentials) >= MaxCredentials {
			full = true
			return false
		}
		d.Credentials = append(d.Credentials, Credential{Type: spec.Type, CreatedAt: now,
			ExpiresAt: spec.ExpiresAt.UTC(), PublicKey: spec.PEM})
		return true
	})
	if full {
		return fmt.Errorf("%w: device %s already has %d", ErrTooManyCredentials, id, MaxCredentials)
	}
	return err
}

// RemoveCredential removes the device's credential at index (0-based, in
// the order Device.Credentials lists them). ErrNotFound for an unknown
// device or index.
func (r *Registry) RemoveCredential(ctx context.Context, id string, index int) error {
	var bad bool
	var want string // the credential the caller meant, found again by identity on a retry
	err := r.update(ctx, id, func(d *Device) bool {
		i := index
		if want != "" {
			i = slices.IndexFunc(d.Credentials, func(c Credential) bool { return c.ref() == want })
		}
		if i < 0 || i >= len(d.Credentials) {
			bad = true
			return false
		}
		want = d.Credentials[i].ref()
		d.Credentials = slices.Delete(d.Credentials, i, i+1)
		return true
	})
	if bad {
		return fmt.Errorf("%w: device %s has no credential %d", ErrNotFound, id, index)
	}
	return err
}
