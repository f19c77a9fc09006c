package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotpipe/iotpipe/internal/testjwt"
)

// e2eJWTAudience is the --jwt-audience TestEndToEnd starts iotpipe with.
const e2eJWTAudience = "e2e-project"

// checkJWTCLI: a Cloud IoT Core style device end to end. Its ES256 public
// key is added with `iotpipe devices credentials add`, it connects with
// Paho, its Cloud IoT Core client id and a JWT and publishes; after
// `credentials remove` the same JWT is refused. It returns the JWT.
func checkJWTCLI(t *testing.T, p *pipeline) string {
	t.Helper()
	p.createDevice("gcp-1")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	keyFile := filepath.Join(t.TempDir(), "ec_public.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := p.cli("devices", "credentials", "add", "gcp-1", "--type", "ES256_PEM", "--public-key-file", keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `"ES256_PEM"`) {
		t.Fatalf("credentials add printed %s", out)
	}

	now := time.Now()
	jwt := es256JWT(t, key, map[string]any{"aud": e2eJWTAudience, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
	connect := func() error {
		opts := mqtt.NewClientOptions().AddBroker(fmt.Sprintf("tcp://127.0.0.1:%d", p.mqttPort)).
			SetClientID("projects/e2e-project/locations/us-central1/registries/r/devices/gcp-1").
			SetUsername("unused").SetPassword(jwt).SetProtocolVersion(4).SetAutoReconnect(false)
		cl := mqtt.NewClient(opts)
		if tok := cl.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
			return fmt.Errorf("connect: %v", tok.Error())
		}
		defer cl.Disconnect(0)
		if tok := cl.Publish("/devices/gcp-1/events", 1, false, []byte(`{"temperature": 20}`)); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
			return fmt.Errorf("publish: %v", tok.Error())
		}
		return nil
	}
	if err := connect(); err != nil {
		t.Fatalf("JWT device: %v", err)
	}
	if _, err := p.cli("devices", "credentials", "remove", "gcp-1", "1"); err != nil {
		t.Fatal(err)
	}
	if err := connect(); err == nil {
		t.Fatal("JWT accepted after its key was removed")
	}
	if strings.Contains(p.logs.String(), jwt) || strings.Contains(p.logs.String(), strings.Split(jwt, ".")[2]) {
		t.Error("the JWT appears in the logs")
	}
	return jwt
}

func es256JWT(t *testing.T, key *ecdsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	jwt, err := testjwt.Sign("ES256", key, claims)
	if err != nil {
		t.Fatal(err)
	}
	return jwt
}
