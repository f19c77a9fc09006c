package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func ecPEM(t *testing.T) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func TestCredentialRoutes(t *testing.T) {
	_, _, base := newServer(t)
	cl, err := NewClient(base, adminTok)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := cl.CreateDevice(ctx, NewDevice{ID: "cam-1"}); err != nil {
		t.Fatal(err)
	}
	key := ecPEM(t)
	exp := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
	d, err := cl.AddCredential(ctx, "cam-1", NewCredential{Type: "ES256_PEM", PublicKey: key, ExpiresAt: &exp})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Credentials) != 2 || d.Credentials[0].Type != "token" || d.Credentials[1].Type != "ES256_PEM" ||
		!d.Credentials[1].ExpiresAt.Equal(exp) || d.Credentials[1].CreatedAt.IsZero() {
		t.Fatalf("device after add: %+v", d.Credentials)
	}

	// The device JSON lists credentials but never a hash or the key.
	req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/devices/cam-1", nil)
	req.Header.Set("Authorization", "Bearer "+adminTok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, bad := range []string{"sha256", "public_key", "BEGIN"} {
		if strings.Contains(string(body), bad) {
			t.Errorf("device JSON contains %q: %s", bad, body)
		}
	}

	for _, tc := range []struct {
		name   string
		id     string
		cr     NewCredential
		status int
	}{
		{"bad PEM", "cam-1", NewCredential{Type: "ES256_PEM", PublicKey: "not a key"}, 400},
		{"bad type", "cam-1", NewCredential{Type: "ED25519", PublicKey: key}, 400},
		{"EC key as RSA_PEM", "cam-1", NewCredential{Type: "RSA_PEM", PublicKey: key}, 400},
		{"unknown device", "nobody", NewCredential{Type: "ES256_PEM", PublicKey: key}, 404},
	} {
		if _, err := cl.AddCredential(ctx, tc.id, tc.cr); StatusOf(err) != tc.status {
			t.Errorf("%s: %v, want %d", tc.name, err, tc.status)
		}
	}
	if _, err := cl.AddCredential(ctx, "cam-1", NewCredential{Type: "ES256_PEM", PublicKey: ecPEM(t)}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.AddCredential(ctx, "cam-1", NewCredential{Type: "ES256_PEM", PublicKey: ecPEM(t)}); StatusOf(err) != 400 ||
		!strings.Contains(err.Error(), "too many") {
		t.Fatalf("fourth credential: %v, want 400 too many", err)
	}

	if err := cl.RemoveCredential(ctx, "cam-1", 1); err != nil {
		t.Fatal(err)
	}
	d, err = cl.Device(ctx, "cam-1")
	if err != nil || len(d.Credentials) != 2 || d.Credentials[1].ExpiresAt.Equal(exp) {
		t.Fatalf("after remove: %+v %v", d.Credentials, err)
	}
	if err := cl.RemoveCredential(ctx, "cam-1", 5); StatusOf(err) != 404 {
		t.Errorf("remove index 5: %v, want 404", err)
	}
	if err := cl.RemoveCredential(ctx, "nobody", 0); StatusOf(err) != 404 {
		t.Errorf("remove on unknown device: %v, want 404", err)
	}
	req, _ = http.NewRequest(http.MethodDelete, base+"/api/v1/devices/cam-1/credentials/x", nil)
	req.Header.Set("Authorization", "Bearer "+adminTok)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 400 {
		t.Errorf("remove index x: %v %v, want 400", resp.StatusCode, err)
	} else {
		resp.Body.Close()
	}
}
