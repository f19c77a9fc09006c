package registry_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/testkafka"
	"github.com/iotpipe/iotpipe/registry"
)

const aud = "my-project"

// startJWT makes a Registry on seeds/topic accepting JWTs for audience
// (none when empty), runs it until the test ends and waits until it caught up.
func startJWT(t *testing.T, seeds []string, topic, audience string) *registry.Registry {
	t.Helper()
	r, err := registry.New(registry.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(seeds...)}, Topic: topic,
		Logger: zerolog.Nop(), JWTAudience: audience})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		r.Close()
	})
	if err := r.WaitReady(ctxT(t)); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	return r
}

func TestCredentialsAddRemovePropagate(t *testing.T) {
	seeds, topic := setup(t)
	a := startJWT(t, seeds, topic, aud)
	b := startJWT(t, seeds, topic, aud)
	ctx := ctxT(t)
	_, token, err := a.Create(ctx, registry.Spec{ID: "jwt-dev"})
	if err != nil {
		t.Fatal(err)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	now := time.Now()
	ecJWT := registry.SignJWT(t, "ES256", ec, registry.JWTClaims(aud, now, now.Add(time.Hour)))
	rsaJWT := registry.SignJWT(t, "RS256", rk, registry.JWTClaims(aud, now, now.Add(time.Hour)))
	// b follows a's writes; on a real cluster that takes a moment.
	testkafka.Eventually(t, waitFor, "b sees the device", func() bool { _, err := b.Get("jwt-dev"); return err == nil })
	if err := b.Authenticate("jwt-dev", []byte(ecJWT)); !errors.Is(err, registry.ErrBadCredentials) {
		t.Fatalf("JWT before its key was added: %v", err)
	}

	if err := a.AddCredential(ctx, "jwt-dev", registry.CredentialSpec{Type: registry.CredentialES256PEM, PEM: registry.PubPEM(t, &ec.PublicKey)}); err != nil {
		t.Fatal(err)
	}
	if err := a.AddCredential(ctx, "jwt-dev", registry.CredentialSpec{Type: registry.CredentialRSAPEM, PEM: registry.PubPEM(t, &rk.PublicKey)}); err != nil {
		t.Fatal(err)
	}
	// a applied its own write before returning; b follows.
	sess, err := a.AuthenticateSession("jwt-dev", []byte(ecJWT))
	until := sess.Until
	if err != nil || until.Before(now.Add(time.Hour)) || until.After(now.Add(time.Hour+registry.DefaultClockSkew)) {
		t.Fatalf("ES256 JWT on a: %v, until %v", err, until)
	}
	testkafka.Eventually(t, waitFor, "keys added on a authenticate on b", func() bool {
		return b.Authenticate("jwt-dev", []byte(ecJWT)) == nil && b.Authenticate("jwt-dev", []byte(rsaJWT)) == nil
	})
	if err := b.Authenticate("jwt-dev", []byte(token)); err != nil {
		t.Fatalf("token after adding keys: %v", err)
	}

	// Three credentials is the limit.
	d, _ := a.Get("jwt-dev")
	if len(d.Credentials) != registry.MaxCredentials {
		t.Fatalf("%d credentials", len(d.Credentials))
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	err = a.AddCredential(ctx, "jwt-dev", registry.CredentialSpec{Type: registry.CredentialES256PEM, PEM: registry.PubPEM(t, &other.PublicKey)})
	if !errors.Is(err, registry.ErrTooManyCredentials) {
		t.Fatalf("fourth credential: %v, want ErrTooManyCredentials", err)
	}
	if err := a.AddCredential(ctx, "jwt-dev", registry.CredentialSpec{Type: registry.CredentialRSAPEM, PEM: registry.PubPEM(t, &other.PublicKey)}); !errors.Is(err, registry.ErrInvalidCredential) {
		t.Fatalf("EC key as RSA_PEM: %v, want ErrInvalidCredential", err)
	}
	if err := a.AddCredential(ctx, "nobody", registry.CredentialSpec{Type: registry.CredentialES256PEM, PEM: registry.PubPEM(t, &other.PublicKey)}); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("unknown device: %v, want ErrNotFound", err)
	}

	// Remove the ES256 key (index 1) through b: a stops accepting it, the
	// RSA key and the token keep working.
	if err := b.RemoveCredential(ctx, "jwt-dev", 1); err != nil {
		t.Fatal(err)
	}
	testkafka.Eventually(t, waitFor, "removal on b reaches a", func() bool {
		return errors.Is(a.Authenticate("jwt-dev", []byte(ecJWT)), registry.ErrBadCredentials)
	})
	if err := a.Authenticate("jwt-dev", []byte(rsaJWT)); err != nil {
		t.Fatalf("RSA JWT after removing the EC key: %v", err)
	}
	if err := a.Authenticate("jwt-dev", []byte(token)); err != nil {
		t.Fatalf("token after removing the EC key: %v", err)
	}
	if err := b.RemoveCredential(ctx, "jwt-dev", 2); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("remove index 2 of 2: %v, want ErrNotFound", err)
	}

	// Expired credential: added with an expiry in the past is refused.
	if err := a.AddCredential(ctx, "jwt-dev", registry.CredentialSpec{Type: registry.CredentialES256PEM,
		PEM: registry.PubPEM(t, &other.PublicKey), ExpiresAt: now.Add(-time.Minute)}); !errors.Is(err, registry.ErrInvalidCredential) {
		t.Fatalf("expiry in the past: %v", err)
	}

	// Blocked: a valid JWT learns of the block, a wrong one does not.
	if err := a.SetBlocked(ctx, "jwt-dev", true); err != nil {
		t.Fatal(err)
	}
	if err := a.Authenticate("jwt-dev", []byte(rsaJWT)); !errors.Is(err, registry.ErrBlocked) {
		t.Fatalf("blocked with valid JWT: %v", err)
	}
	if err := a.Authenticate("jwt-dev", []byte(ecJWT)); !errors.Is(err, registry.ErrBadCredentials) {
		t.Fatalf("blocked with removed key's JWT: %v", err)
	}
}

// With no audience configured every JWT is refused; tokens still work.
func TestJWTRefusedWithoutAudience(t *testing.T) {
	seeds, topic := setup(t)
	r := startJWT(t, seeds, topic, "")
	ctx := ctxT(t)
	_, token, err := r.Create(ctx, registry.Spec{ID: "no-aud"})
	if err != nil {
		t.Fatal(err)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := r.AddCredential(ctx, "no-aud", registry.CredentialSpec{Type: registry.CredentialES256PEM, PEM: registry.PubPEM(t, &ec.PublicKey)}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, a := range []string{"", aud} {
		jwt := registry.SignJWT(t, "ES256", ec, registry.JWTClaims(a, now, now.Add(time.Hour)))
		if err := r.Authenticate("no-aud", []byte(jwt)); !errors.Is(err, registry.ErrBadCredentials) {
			t.Fatalf("aud %q: %v", a, err)
		}
	}
	if err := r.Authenticate("no-aud", []byte(token)); err != nil {
		t.Fatal(err)
	}
}

// A follower that does not know a credential type ignores it: a record
// written by a newer binary with a key type this one lacks authenticates
// nothing with that key, and the device's token still works.
func TestUnknownCredentialTypeIgnored(t *testing.T) {
	seeds, topic := setup(t)
	r := startJWT(t, seeds, topic, aud)
	ctx := ctxT(t)
	dev, token, err := r.Create(ctx, registry.Spec{ID: "future"})
	if err != nil {
		t.Fatal(err)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	dev.Credentials = append(dev.Credentials, registry.Credential{Type: "ES256_FUTURE", CreatedAt: time.Now(), PublicKey: registry.PubPEM(t, &ec.PublicKey)})
	v, err := json.Marshal(struct {
		V int `json:"v"`
		registry.Device
	}{1, dev})
	if err != nil {
		t.Fatal(err)
	}
	cl := testkafka.Client(t, seeds)
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Key: []byte("future"), Value: v}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	testkafka.Eventually(t, waitFor, "hand-written record applied", func() bool {
		d, err := r.Get("future")
		return err == nil && len(d.Credentials) == 2
	})
	now := time.Now()
	jwt := registry.SignJWT(t, "ES256", ec, registry.JWTClaims(aud, now, now.Add(time.Hour)))
	if err := r.Authenticate("future", []byte(jwt)); !errors.Is(err, registry.ErrBadCredentials) {
		t.Fatalf("JWT against an unknown key type: %v, want ErrBadCredentials", err)
	}
	if err := r.Authenticate("future", []byte(token)); err != nil {
		t.Fatalf("token: %v", err)
	}
}
