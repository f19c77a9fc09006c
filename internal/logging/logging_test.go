package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestJSONLevelsAndFields(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "warn", JSON)
	if err != nil {
		t.Fatal(err)
	}
	log.Info().Msg("dropped below warn")
	log.Warn().Str("component", "broker").Msg("kept")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("got %d lines, want 1: %q", len(lines), buf.String())
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatalf("not JSON: %v: %s", err, lines[0])
	}
	if rec["level"] != "warn" || rec["component"] != "broker" || rec["message"] != "kept" || rec["time"] == nil {
		t.Errorf("record = %v", rec)
	}
}

func TestAutoIsJSONOffTerminal(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "info", Auto)
	if err != nil {
		t.Fatal(err)
	}
	log.Info().Msg("x")
	if !json.Valid(bytes.TrimSpace(buf.Bytes())) {
		t.Errorf("auto format to a buffer is not JSON: %q", buf.String())
	}
}

func TestPrettyIsNotJSON(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "info", Pretty)
	if err != nil {
		t.Fatal(err)
	}
	log.Info().Msg("hello")
	if json.Valid(bytes.TrimSpace(buf.Bytes())) || !strings.Contains(buf.String(), "hello") {
		t.Errorf("pretty output = %q", buf.String())
	}
}

func TestBadSettings(t *testing.T) {
	if _, err := New(&bytes.Buffer{}, "loud", JSON); err == nil {
		t.Error("bad level accepted")
	}
	if _, err := New(&bytes.Buffer{}, "info", "xml"); err == nil {
		t.Error("bad format accepted")
	}
}
