package registry

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strings"
	"time"
)

// JWT rules of Cloud IoT Core's MQTT bridge.
const (
	// DefaultClockSkew is how far a JWT's iat may lie in the future and its
	// exp in the past, as Google allowed.
	DefaultClockSkew = 10 * time.Minute
	// MaxJWTLifetime bounds exp − iat.
	MaxJWTLifetime = 24 * time.Hour
	// maxJWTLen refuses absurd passwords before any decoding; a 4096-bit RS256
	// JWT with Google's claims is under 1 KiB.
	maxJWTLen = 8 << 10
)

// isJWT tells a JWT from an access token: tokens start with TokenPrefix and
// are base64url, which has no '.', while a compact JWS has exactly two.
func isJWT(password []byte) bool {
	return !bytes.HasPrefix(password, []byte(TokenPrefix)) && bytes.Count(password, []byte(".")) == 2
}

type jwtHeader struct {
	Alg  string          `json:"alg"`
	Crit json.RawMessage `json:"crit"`
}

type jwtClaims struct {
	Aud json.RawMessage `json:"aud"`
	Iat *json.Number    `json:"iat"`
	Exp *json.Number    `json:"exp"`
}

// verifyJWT checks a compact JWS against the device's public keys (keys[i]
// is the parsed key of dev.Credentials[i], nil if that credential is not a
// usable public key) and Cloud IoT Core's claim rules. It returns when the
// session it opens must end: exp plus the skew, or earlier if the matching
// credential expires first, and the index of the credential that signed it.
// Every failure wraps ErrBadCredentials; the reason in the message is for
// the operator's log, never for the client.
func verifyJWT(token []byte, dev *Device, keys []crypto.PublicKey, aud string, now time.Time, skew time.Duration) (time.Time, int, error) {
	fail := func(format string, a ...any) (time.Time, int, error) {
		return time.Time{}, -1, fmt.Errorf("%w: device %s: JWT %s", ErrBadCredentials, dev.ID, fmt.Sprintf(format, a...))
	}
	if len(token) > maxJWTLen {
		return fail("too long")
	}
	parts := strings.Split(string(token), ".")
	if len(parts) != 3 {
		return fail("is not three dot-separated parts")
	}
	var h jwtHeader
	if err := decodePart(parts[0], &h); err != nil {
		return fail("header: %v", err)
	}
	// Only the asymmetric algorithms Cloud IoT Core took: "none" and HS256
	// (with the public key as HMAC secret) are the classic forgeries.
	if h.Alg != "RS256" && h.Alg != "ES256" {
		return fail("alg %q not accepted (RS256 or ES256)", h.Alg)
	}
	if len(h.Crit) > 0 { // RFC 7515: extensions we do not understand must fail
		return fail("has a crit header")
	}
	var c jwtClaims
	if err := decodePart(parts[1], &c); err != nil {
		return fail("claims: %v", err)
	}
	if !audMatches(c.Aud, aud) {
		return fail("aud is not the project id %q", aud)
	}
	iat, ok1 := unixTime(c.Iat)
	exp, ok2 := unixTime(c.Exp)
	switch {
	case !ok1 || !ok2:
		return fail("needs numeric iat and exp")
	case !exp.After(iat):
		return fail("exp is not after iat")
	case exp.Sub(iat) > MaxJWTLifetime:
		return fail("lifetime %v exceeds %v", exp.Sub(iat), MaxJWTLifetime)
	case iat.After(now.Add(skew)):
		return fail("iat is %v in the future", iat.Sub(now).Round(time.Second))
	case !now.Before(exp.Add(skew)):
		return fail("expired %v ago", now.Sub(exp).Round(time.Second))
	}
	sig, err := base64.RawURLEncoding.Strict().DecodeString(parts[2])
	if err != nil {
		return fail("signature: %v", err)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	for i, cr := range dev.Credentials {
		if i >= len(keys) || keys[i] == nil || cr.Type.jwtAlg() != h.Alg {
			continue
		}
		if !cr.ExpiresAt.IsZero() && !now.Before(cr.ExpiresAt) {
			continue
		}
		if !verifySig(keys[i], digest[:], sig) {
			continue
		}
		until := exp.Add(skew)
		if !cr.ExpiresAt.IsZero() && cr.ExpiresAt.Before(until) {
			until = cr.ExpiresAt
		}
		return until, i, nil
	}
	return fail("signature matches no unexpired %s key of the device", h.Alg)
}

func decodePart(s string, v any) error {
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after JSON object")
	}
	return nil
}

// audMatches accepts aud as a string (what Cloud IoT Core devices send) or
// as an array holding the project id (RFC 7519 allows both).
func audMatches(raw json.RawMessage, want string) bool {
	if want == "" || len(raw) == 0 {
		return false
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s == want
	}
	var list []string
	if json.Unmarshal(raw, &list) == nil {
		for _, a := range list {
			if a == want {
				return true
			}
		}
	}
	return false
}

// unixTime reads a NumericDate (seconds, possibly fractional).
func unixTime(n *json.Number) (time.Time, bool) {
	if n == nil {
		return time.Time{}, false
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || f < 0 || f > 1<<40 {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}

func verifySig(key crypto.PublicKey, digest, sig []byte) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(k, crypto.SHA256, digest, sig) == nil
	case *ecdsa.PublicKey:
		// JWS ES256 signatures are r||s, 32 bytes each, not ASN.1.
		if len(sig) != 64 {
			return false
		}
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		return ecdsa.Verify(k, digest, r, s)
	}
	return false
}
