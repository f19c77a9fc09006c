package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

const (
	adminTokenFile = "admin-token"
	// readTokenFile holds the read-only token a Grafana datasource uses.
	readTokenFile = "read-token"
)

// adminToken returns the configured token, or the one kept in the data
// directory, creating it on first start. The file is owner-only because it
// grants full control of the registry.
func adminToken(dataDir, given string) (string, error) {
	return keptToken(dataDir, adminTokenFile, "iat_", given)
}

// readToken is adminToken's read-only sibling.
func readToken(dataDir, given string) (string, error) {
	return keptToken(dataDir, readTokenFile, "irt_", given)
}

func keptToken(dataDir, file, prefix, given string) (string, error) {
	if given != "" {
		return given, nil
	}
	path := filepath.Join(dataDir, file)
	b, err := os.ReadFile(path)
	if err == nil {
		if tok := strings.TrimSpace(string(b)); tok != "" {
			return tok, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read %s: %w", file, err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", fmt.Errorf("create data dir: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("generate %s: %w", file, err)
	}
	tok := prefix + base64.RawURLEncoding.EncodeToString(raw)
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", file, err)
	}
	return tok, nil
}

// readAdminToken finds the token a CLI command should send: flag or env
// first, then the data directory of a local `iotpipe run`.
func readAdminToken(dataDir, given string) (string, error) {
	if given != "" {
		return given, nil
	}
	b, err := os.ReadFile(filepath.Join(dataDir, adminTokenFile))
	if err != nil {
		return "", fmt.Errorf("no API token: pass --api-token (or IOTPIPE_API_TOKEN), or run where --data-dir holds the %s of `iotpipe run`: %w", adminTokenFile, err)
	}
	return strings.TrimSpace(string(b)), nil
}
