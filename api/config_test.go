package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/devicestate"
	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/internal/testkafka"
	"github.com/iotpipe/iotpipe/registry"
)

// newStateServer is newServer with a state store following its own state
// topic; produce writes to that topic as the broker would.
func newStateServer(t *testing.T) (base string, produce func(dev, payload string, at time.Time)) {
	t.Helper()
	srv, _, _ := newServer(t) // skips without chDB
	seeds := testkafka.Seeds(t)
	topic := testkafka.Prefix(t) + "state"
	cl := testkafka.Client(t, seeds)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := bus.EnsureTopics(ctx, cl, []bus.TopicSpec{{Name: topic, Partitions: 2}}, -1); err != nil {
		t.Fatal(err)
	}
	st, err := devicestate.New(devicestate.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(seeds...)}, Topic: topic, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = st.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; st.Close() })
	cfg := srv.cfg
	cfg.Addr, cfg.States = "127.0.0.1:0", st
	cfg.WindowSizes = cfg.WindowSizes[1:]
	s2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go s2.Run(ctx)
	return "http://" + s2.Addr(), func(dev, payload string, at time.Time) {
		t.Helper()
		rec := &kgo.Record{Topic: topic, Key: []byte(dev), Value: []byte(payload),
			Headers: []kgo.RecordHeader{{Key: bus.HeaderReceivedAt, Value: bus.FormatMillis(at)}}}
		if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
}

func apiCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

func TestConfigRoutes(t *testing.T) {
	base, _ := newStateServer(t)
	c, _ := NewClient(base, adminTok)
	ctx := context.Background()
	created, err := c.CreateDevice(ctx, NewDevice{ID: "cfg-api"})
	if err != nil {
		t.Fatal(err)
	}
	if s := created.Device.Config; s.Version != 1 || !s.CloudUpdateTime.Equal(created.Device.CreatedAt) {
		t.Errorf("new device's config summary %+v, want version 1 at creation", s)
	}
	got, err := c.Config(ctx, "cfg-api")
	if err != nil || got.Version != 1 || len(got.BinaryData) != 0 {
		t.Fatalf("initial config %+v %v", got, err)
	}
	v2, err := c.SetConfig(ctx, "cfg-api", []byte("hello\x00world"), 0)
	if err != nil || v2.Version != 2 || string(v2.BinaryData) != "hello\x00world" || v2.CloudUpdateTime.IsZero() {
		t.Fatalf("SetConfig: %+v %v", v2, err)
	}
	v3, err := c.SetConfig(ctx, "cfg-api", []byte("three"), 2)
	if err != nil || v3.Version != 3 {
		t.Fatalf("SetConfig(version_to_update 2): %+v %v", v3, err)
	}
	if _, err := c.SetConfig(ctx, "cfg-api", []byte("stale"), 2); StatusOf(err) != http.StatusConflict || apiCode(err) != "config_version_mismatch" {
		t.Errorf("stale version_to_update: %v, want 409 config_version_mismatch", err)
	}
	if got, _ := c.Config(ctx, "cfg-api"); got.Version != 3 || string(got.BinaryData) != "three" {
		t.Errorf("latest after a refused write: %+v", got)
	}
	vs, err := c.ConfigVersions(ctx, "cfg-api")
	if err != nil || len(vs) != 3 || vs[0].Version != 3 || vs[1].Version != 2 || vs[2].Version != 1 {
		t.Fatalf("versions %+v %v, want 3, 2, 1", vs, err)
	}
	d, err := c.Device(ctx, "cfg-api")
	if err != nil || d.Config.Version != 3 || !d.Config.CloudUpdateTime.Equal(v3.CloudUpdateTime) {
		t.Errorf("device summary %+v %v", d.Config, err)
	}
	for name, call := range map[string]func() error{
		"set":      func() error { _, err := c.SetConfig(ctx, "nobody", nil, 0); return err },
		"get":      func() error { _, err := c.Config(ctx, "nobody"); return err },
		"versions": func() error { _, err := c.ConfigVersions(ctx, "nobody"); return err },
	} {
		if err := call(); StatusOf(err) != http.StatusNotFound || apiCode(err) != "not_found" {
			t.Errorf("%s of an unknown device: %v, want 404 not_found", name, err)
		}
	}
	if _, err := c.SetConfig(ctx, "cfg-api", make([]byte, registry.MaxConfigBytes), 0); err != nil {
		t.Errorf("64 KiB config: %v", err)
	}
	if _, err := c.SetConfig(ctx, "cfg-api", make([]byte, registry.MaxConfigBytes+1), 0); StatusOf(err) != http.StatusRequestEntityTooLarge || apiCode(err) != "config_too_large" {
		t.Errorf("64 KiB + 1 config: %v, want 413 config_too_large", err)
	}
	for body, want := range map[string]string{
		`{"binary_data": "not base64!"}`:                          "invalid_binary_data",
		`{"binary_data": "aGk"}`:                                  "invalid_binary_data", // padding missing
		`{"binary_data": "aGk=", "version_to_update": -1}`:        "invalid_config",
		`{"binary_data": "aGk=", "version_to_update": "2"}`:       "bad_request",
		`{"data": "aGk="}`:                                        "bad_request",
		`not json`:                                                "bad_request",
		`{"binary_data": "` + strings.Repeat("A", 200<<10) + `"}`: "config_too_large",
	} {
		status, code := post(t, base+"/api/v1/devices/cfg-api/config", body)
		wantStatus := http.StatusBadRequest
		if want == "config_too_large" {
			wantStatus = http.StatusRequestEntityTooLarge
		}
		if status != wantStatus || code != want {
			t.Errorf("POST %.60s: %d %s, want %d %s", body, status, code, wantStatus, want)
		}
	}
}

func post(t *testing.T, url, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+adminTok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e Error
	_ = jsonUnmarshal(b, &e)
	return resp.StatusCode, e.Code
}

func TestStateRoute(t *testing.T) {
	base, produce := newStateServer(t)
	c, _ := NewClient(base, adminTok)
	ctx := context.Background()
	if _, err := c.CreateDevice(ctx, NewDevice{ID: "st-api"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.State(ctx, "st-api"); StatusOf(err) != http.StatusNotFound || apiCode(err) != "no_state" {
		t.Errorf("state before any: %v, want 404 no_state", err)
	}
	if _, err := c.State(ctx, "nobody"); StatusOf(err) != http.StatusNotFound || apiCode(err) != "not_found" {
		t.Errorf("state of an unknown device: %v, want 404 not_found", err)
	}
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	payload := "\x00\x01{\"on\":true}"
	produce("st-api", "old", at.Add(-time.Minute))
	produce("st-api", payload, at)
	var st DeviceState
	testkafka.Eventually(t, 20*time.Second, "state served", func() bool {
		var err error
		st, err = c.State(ctx, "st-api")
		return err == nil && bytes.Equal(st.BinaryData, []byte(payload))
	})
	if !st.UpdateTime.Equal(at) {
		t.Errorf("update_time %v, want %v", st.UpdateTime, at)
	}
	if d, err := c.Device(ctx, "st-api"); err != nil || !d.LastStateTime.Equal(at) {
		t.Errorf("device last_state_time %v %v, want %v", d.LastStateTime, err, at)
	}
	// The wire shape: binary_data is standard base64.
	req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/devices/st-api/state", nil)
	req.Header.Set("Authorization", "Bearer "+adminTok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf(`"binary_data": "%s"`, "AAF7Im9uIjp0cnVlfQ=="); !strings.Contains(string(b), want) {
		t.Errorf("state body %s lacks %s", b, want)
	}
	// Deleting the device forgets its state: a new device of the same id
	// starts without one.
	if err := c.DeleteDevice(ctx, "st-api"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateDevice(ctx, NewDevice{ID: "st-api"}); err != nil {
		t.Fatal(err)
	}
	testkafka.Eventually(t, 20*time.Second, "the old state forgotten", func() bool {
		_, err := c.State(ctx, "st-api")
		return apiCode(err) == "no_state"
	})
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
