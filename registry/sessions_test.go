package registry_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/registry"
)

// A session's credential stays identified when another credential's removal
// shifts the indexes; blocking, deleting and removing it end its validity;
// Watch reports changes written by another instance.
func TestSessionValidAndWatch(t *testing.T) {
	seeds, topic := setup(t)
	a := startJWT(t, seeds, topic, aud)
	b := startJWT(t, seeds, topic, aud)
	ctx := ctxT(t)
	changed := make(chan string, 64)
	stop := b.Watch(func(id string) { changed <- id })
	defer stop()
	waitChange := func(what string) {
		t.Helper()
		select {
		case id := <-changed:
			if id != "s-dev" {
				t.Fatalf("%s: Watch reported %q", what, id)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: Watch on b not called", what)
		}
	}

	_, token, err := a.Create(ctx, registry.Spec{ID: "s-dev"})
	if err != nil {
		t.Fatal(err)
	}
	waitChange("create")
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := a.AddCredential(ctx, "s-dev", registry.CredentialSpec{Type: registry.CredentialES256PEM, PEM: registry.PubPEM(t, &ec.PublicKey)}); err != nil {
		t.Fatal(err)
	}
	waitChange("add credential")
	now := time.Now()
	jwt := registry.SignJWT(t, "ES256", ec, registry.JWTClaims(aud, now, now.Add(time.Hour)))
	byToken, err := a.AuthenticateSession("s-dev", []byte(token))
	if err != nil || !byToken.Until.IsZero() {
		t.Fatalf("token session %+v %v", byToken, err)
	}
	byJWT, err := b.AuthenticateSession("s-dev", []byte(jwt))
	if err != nil || byJWT.Until.IsZero() {
		t.Fatalf("JWT session %+v %v", byJWT, err)
	}
	if byToken.Credential == "" || byToken.Credential == byJWT.Credential {
		t.Fatalf("credentials not told apart: %q %q", byToken.Credential, byJWT.Credential)
	}
	valid := func(s registry.Session) bool { return a.SessionValid("s-dev", s.Credential) }
	if !valid(byToken) || !valid(byJWT) || a.SessionValid("s-dev", "nonsense") || a.SessionValid("nobody", byJWT.Credential) {
		t.Fatal("SessionValid before changes")
	}

	if err := a.RemoveCredential(ctx, "s-dev", 0); err != nil { // the token; the key moves to 0
		t.Fatal(err)
	}
	waitChange("remove credential")
	if valid(byToken) || !valid(byJWT) {
		t.Fatalf("after removing the token: token %v, JWT %v", valid(byToken), valid(byJWT))
	}
	if err := a.SetBlocked(ctx, "s-dev", true); err != nil {
		t.Fatal(err)
	}
	waitChange("block")
	if valid(byJWT) || b.SessionValid("s-dev", byJWT.Credential) {
		t.Fatal("valid while blocked")
	}
	if err := a.SetBlocked(ctx, "s-dev", false); err != nil {
		t.Fatal(err)
	}
	waitChange("unblock")
	if !valid(byJWT) || !b.SessionValid("s-dev", byJWT.Credential) {
		t.Fatal("not valid after unblocking")
	}
	if err := a.Delete(ctx, "s-dev"); err != nil {
		t.Fatal(err)
	}
	waitChange("delete")
	if valid(byJWT) || b.SessionValid("s-dev", byJWT.Credential) {
		t.Fatal("valid after delete")
	}
}
