// Package testjwt signs JWTs the way devices do, for the tests of the
// verifier, the broker and the binary. It is written from RFC 7515/7518
// directly so the tests do not share code with the verifier they test.
package testjwt

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
)

// Sign returns the compact JWS of claims with the header {"alg": alg}:
// RS256 with an *rsa.PrivateKey, ES256 with an *ecdsa.PrivateKey (P-256,
// signature r‖s), HS256 with a []byte secret (only to prove verifiers refuse
// it), and a nil key for an empty signature ("none"). The header's alg is
// taken as given, so a test can also lie about it.
func Sign(alg string, key any, claims map[string]any) (string, error) {
	enc := base64.RawURLEncoding.EncodeToString
	h, err := json.Marshal(map[string]string{"alg": alg, "typ": "JWT"})
	if err != nil {
		return "", err
	}
	c, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	in := enc(h) + "." + enc(c)
	d := sha256.Sum256([]byte(in))
	var sig []byte
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if sig, err = rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, d[:]); err != nil {
			return "", fmt.Errorf("testjwt: %w", err)
		}
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, k, d[:])
		if err != nil {
			return "", fmt.Errorf("testjwt: %w", err)
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	case []byte:
		m := hmac.New(sha256.New, k)
		m.Write([]byte(in))
		sig = m.Sum(nil)
	case nil:
	default:
		return "", fmt.Errorf("testjwt: unsupported key %T", key)
	}
	return in + "." + enc(sig), nil
}

// AlgFor is the alg a device uses with key: ES256 for ECDSA, else RS256.
func AlgFor(key any) string {
	if _, ok := key.(*ecdsa.PrivateKey); ok {
		return "ES256"
	}
	return "RS256"
}
