package registry

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/internal/testjwt"
)

const testAud = "my-project"

func pubPEM(t testing.TB, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func certPEM(t testing.TB, priv crypto.Signer) string {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "unused"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// sign makes a compact JWS with alg over claims, using key (an *rsa or
// *ecdsa private key, or []byte for HS256).
func sign(t testing.TB, alg string, key any, claims map[string]any) string {
	t.Helper()
	jwt, err := testjwt.Sign(alg, key, claims)
	if err != nil {
		t.Fatal(err)
	}
	return jwt
}

func claims(aud any, iat, exp time.Time) map[string]any {
	return map[string]any{"aud": aud, "iat": iat.Unix(), "exp": exp.Unix()}
}

func TestVerifyJWT(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecOther, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecExpired, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Unix(1_800_000_000, 0)
	credExp := now.Add(30 * time.Minute)

	mk := func(specs ...CredentialSpec) (Device, []crypto.PublicKey) {
		d := Device{ID: "dev-a"}
		keys := make([]crypto.PublicKey, len(specs))
		for i, s := range specs {
			k, err := parsePublicKey(s.Type, s.PEM)
			if err != nil {
				t.Fatal(err)
			}
			keys[i] = k
			d.Credentials = append(d.Credentials, Credential{Type: s.Type, PublicKey: s.PEM, ExpiresAt: s.ExpiresAt})
		}
		return d, keys
	}
	devA, keysA := mk(
		CredentialSpec{Type: CredentialRSAPEM, PEM: pubPEM(t, &rsaKey.PublicKey)},
		CredentialSpec{Type: CredentialES256PEM, PEM: pubPEM(t, &ecKey.PublicKey), ExpiresAt: credExp},
		CredentialSpec{Type: CredentialES256PEM, PEM: pubPEM(t, &ecExpired.PublicKey), ExpiresAt: now.Add(-time.Second)},
	)
	devB, keysB := mk(CredentialSpec{Type: CredentialES256X509PEM, PEM: certPEM(t, ecOther)})
	devB.ID = "dev-b"

	good := claims(testAud, now, now.Add(time.Hour))
	rsaPEM := pubPEM(t, &rsaKey.PublicKey)
	tests := []struct {
		name      string
		dev       *Device
		keys      []crypto.PublicKey
		token     string
		wantUntil time.Time // zero: must fail
	}{
		{"valid RS256", &devA, keysA, sign(t, "RS256", rsaKey, good), now.Add(time.Hour + DefaultClockSkew)},
		// The credential expires before the JWT: the session ends with it.
		{"valid ES256", &devA, keysA, sign(t, "ES256", ecKey, good), credExp},
		{"valid ES256 from certificate", &devB, keysB, sign(t, "ES256", ecOther, good), now.Add(time.Hour + DefaultClockSkew)},
		{"aud as array", &devA, keysA, sign(t, "RS256", rsaKey, claims([]string{"x", testAud}, now, now.Add(time.Hour))), now.Add(time.Hour + DefaultClockSkew)},
		{"exp just past, within skew", &devA, keysA, sign(t, "RS256", rsaKey, claims(testAud, now.Add(-time.Hour), now.Add(-5*time.Minute))), now.Add(5 * time.Minute)},
		{"iat ahead within skew", &devA, keysA, sign(t, "RS256", rsaKey, claims(testAud, now.Add(5*time.Minute), now.Add(time.Hour))), now.Add(time.Hour + DefaultClockSkew)},
		{"lifetime exactly 24 h", &devA, keysA, sign(t, "RS256", rsaKey, claims(testAud, now, now.Add(24*time.Hour))), now.Add(24*time.Hour + DefaultClockSkew)},

		{"wrong key", &devA, keysA, sign(t, "ES256", ecOther, good), time.Time{}},
		{"ES256 alg on the RSA key's signature", &devA, keysA, strings.Replace(sign(t, "RS256", rsaKey, good), b64([]byte(`{"alg":"RS256","typ":"JWT"}`)), b64([]byte(`{"alg":"ES256","typ":"JWT"}`)), 1), time.Time{}},
		{"wrong aud", &devA, keysA, sign(t, "RS256", rsaKey, claims("other-project", now, now.Add(time.Hour))), time.Time{}},
		{"no aud", &devA, keysA, sign(t, "RS256", rsaKey, map[string]any{"iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}), time.Time{}},
		{"expired", &devA, keysA, sign(t, "RS256", rsaKey, claims(testAud, now.Add(-2*time.Hour), now.Add(-11*time.Minute))), time.Time{}},
		{"lifetime > 24 h", &devA, keysA, sign(t, "RS256", rsaKey, claims(testAud, now, now.Add(24*time.Hour+time.Second))), time.Time{}},
		{"iat in the future beyond skew", &devA, keysA, sign(t, "RS256", rsaKey, claims(testAud, now.Add(11*time.Minute), now.Add(time.Hour))), time.Time{}},
		{"exp before iat", &devA, keysA, sign(t, "RS256", rsaKey, claims(testAud, now, now.Add(-time.Minute))), time.Time{}},
		{"no iat", &devA, keysA, sign(t, "RS256", rsaKey, map[string]any{"aud": testAud, "exp": now.Add(time.Hour).Unix()}), time.Time{}},
		{"no exp", &devA, keysA, sign(t, "RS256", rsaKey, map[string]any{"aud": testAud, "iat": now.Unix()}), time.Time{}},
		{"alg none", &devA, keysA, sign(t, "none", nil, good), time.Time{}},
		{"HS256 with the public key as secret", &devA, keysA, sign(t, "HS256", []byte(rsaPEM), good), time.Time{}},
		{"malformed: two parts", &devA, keysA, "abc.def", time.Time{}},
		{"malformed: not base64", &devA, keysA, "a!b.c.d", time.Time{}},
		{"malformed: header not JSON", &devA, keysA, b64([]byte("x")) + "." + b64([]byte("{}")) + ".", time.Time{}},
		{"JWT for device A presented by device B", &devB, keysB, sign(t, "RS256", rsaKey, good), time.Time{}},
		{"expired credential", &devA, keysA, sign(t, "ES256", ecExpired, good), time.Time{}},
		{"signature truncated", &devA, keysA, sign(t, "ES256", ecKey, good)[:40], time.Time{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			until, _, err := verifyJWT([]byte(tc.token), tc.dev, tc.keys, testAud, now, DefaultClockSkew)
			if tc.wantUntil.IsZero() {
				if !errors.Is(err, ErrBadCredentials) {
					t.Fatalf("verifyJWT = %v, %v; want ErrBadCredentials", until, err)
				}
				return
			}
			if err != nil || !until.Equal(tc.wantUntil) {
				t.Fatalf("verifyJWT = %v, %v; want %v", until, err, tc.wantUntil)
			}
		})
	}
}

func TestParsePublicKey(t *testing.T) {
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for _, tc := range []struct {
		name string
		typ  CredentialType
		pem  string
		ok   bool
	}{
		{"RSA_PEM", CredentialRSAPEM, pubPEM(t, &rsa2048.PublicKey), true},
		{"RSA_X509_PEM", CredentialRSAX509PEM, certPEM(t, rsa2048), true},
		{"ES256_PEM", CredentialES256PEM, pubPEM(t, &p256.PublicKey), true},
		{"ES256_X509_PEM", CredentialES256X509PEM, certPEM(t, p256), true},
		{"RSA 1024 bits", CredentialRSAPEM, pubPEM(t, &rsa1024.PublicKey), false},
		{"EC P-384", CredentialES256PEM, pubPEM(t, &p384.PublicKey), false},
		{"EC key as RSA_PEM", CredentialRSAPEM, pubPEM(t, &p256.PublicKey), false},
		{"RSA key as ES256_PEM", CredentialES256PEM, pubPEM(t, &rsa2048.PublicKey), false},
		{"certificate as RSA_PEM", CredentialRSAPEM, certPEM(t, rsa2048), false},
		{"public key as RSA_X509_PEM", CredentialRSAX509PEM, pubPEM(t, &rsa2048.PublicKey), false},
		{"RSA certificate as ES256_X509_PEM", CredentialES256X509PEM, certPEM(t, rsa2048), false},
		{"not PEM", CredentialES256PEM, "hello", false},
		{"two blocks", CredentialES256PEM, pubPEM(t, &p256.PublicKey) + pubPEM(t, &p256.PublicKey), false},
		{"token type", CredentialToken, pubPEM(t, &p256.PublicKey), false},
		{"unknown type", "ED25519_PEM", pubPEM(t, &p256.PublicKey), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parsePublicKey(tc.typ, tc.pem)
			if tc.ok != (err == nil) || err != nil && !errors.Is(err, ErrInvalidCredential) {
				t.Fatalf("parsePublicKey = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// BenchmarkVerifyJWT is the CPU cost of one JWT CONNECT's verification.
func BenchmarkVerifyJWT(b *testing.B) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	now := time.Now()
	for _, tc := range []struct {
		typ CredentialType
		alg string
		key crypto.Signer
	}{{CredentialES256PEM, "ES256", ec}, {CredentialRSAPEM, "RS256", rk}} {
		b.Run(tc.alg, func(b *testing.B) {
			p := pubPEM(b, tc.key.Public())
			k, err := parsePublicKey(tc.typ, p)
			if err != nil {
				b.Fatal(err)
			}
			d := Device{ID: "d", Credentials: []Credential{{Type: tc.typ, PublicKey: p}}}
			tok := []byte(sign(b, tc.alg, tc.key, claims(testAud, now, now.Add(time.Hour))))
			for b.Loop() {
				if _, _, err := verifyJWT(tok, &d, []crypto.PublicKey{k}, testAud, now, DefaultClockSkew); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
