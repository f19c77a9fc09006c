package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// checkBlockAndSecrets runs last in TestEndToEnd. A device connected with
// its token is cut when `iotpipe devices block` runs and refused until
// `unblock`. Then iotpipe is stopped (so everything is flushed) and no file
// under the data directory, nor the log, holds any of the secrets (device
// tokens, a JWT) in plaintext.
func checkBlockAndSecrets(t *testing.T, p *pipeline, tokens map[string]string, jwt string) {
	t.Helper()
	token := p.createDevice("sec-1")
	secrets := []string{token, jwt}
	for _, tok := range tokens {
		secrets = append(secrets, tok)
	}
	lost := make(chan time.Time, 1)
	connect := func() (mqtt.Client, error) {
		opts := mqtt.NewClientOptions().AddBroker(fmt.Sprintf("tcp://127.0.0.1:%d", p.mqttPort)).
			SetClientID("sec-1").SetUsername("unused").SetPassword(token).SetProtocolVersion(4).SetAutoReconnect(false).
			SetConnectionLostHandler(func(mqtt.Client, error) { lost <- time.Now() })
		cl := mqtt.NewClient(opts)
		if tok := cl.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
			return nil, fmt.Errorf("connect: %v", tok.Error())
		}
		if tok := cl.Publish("/devices/sec-1/events", 1, false, []byte(`{"temperature": 19}`)); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
			cl.Disconnect(0)
			return nil, fmt.Errorf("publish: %v", tok.Error())
		}
		return cl, nil
	}
	cl, err := connect()
	if err != nil {
		t.Fatalf("sec-1 before block: %v", err)
	}
	start := time.Now()
	if out, err := p.cli("devices", "block", "sec-1"); err != nil || !strings.Contains(out, "blocked device sec-1") {
		t.Fatalf("devices block: %q %v", out, err)
	}
	// The CLI returns once this instance applied the write; the cut follows.
	select {
	case at := <-lost:
		t.Logf("sec-1 cut %v after `devices block` started (includes the CLI process)", at.Sub(start).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("sec-1 still connected 5 s after `devices block`")
	}
	if cl, err := connect(); err == nil {
		cl.Disconnect(0)
		t.Fatal("blocked device connected")
	}
	if _, err := p.cli("devices", "unblock", "sec-1"); err != nil {
		t.Fatal(err)
	}
	if cl, err = connect(); err != nil {
		t.Fatalf("sec-1 after unblock: %v", err)
	}
	cl.Disconnect(100)

	p.stop()
	var files int
	err = filepath.WalkDir(p.dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		files++
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s holds a device secret in plaintext (%.12s...)", path, s)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files == 0 {
		t.Fatal("the data directory holds no files: nothing was checked")
	}
	logs := p.logs.String()
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("the log holds a device secret in plaintext (%.12s...)", s)
		}
	}
	t.Logf("searched %d files under the data directory and %d bytes of log for %d secrets", files, len(logs), len(secrets))
}
