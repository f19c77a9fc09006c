package registry

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Device is one registered device as the registry holds it. Values returned
// by the registry are copies: changing them changes nothing.
type Device struct {
	ID          string       `json:"id"`
	CreatedAt   time.Time    `json:"created_at"`
	UpdatedAt   time.Time    `json:"updated_at"`
	Blocked     bool         `json:"blocked,omitempty"`
	Credentials []Credential `json:"credentials,omitempty"`
	// Name is a free display name for dashboards and pickers.
	Name string `json:"name,omitempty"`
	// Labels are key/value metadata (site, floor, model...) that dashboards
	// select devices by; see ValidateLabels for the rules.
	Labels map[string]string `json:"labels,omitempty"`
	// Configs are the kept config versions, oldest first; empty until the
	// first SetConfig or ack (see config.go).
	Configs []ConfigVersion `json:"configs,omitempty"`
	// LastConfigAckTime is the latest device acknowledgement of a config.
	LastConfigAckTime time.Time `json:"last_config_ack_time,omitzero"`
}

// Spec is what a caller chooses when creating a device.
type Spec struct {
	ID     string
	Name   string
	Labels map[string]string
}

// CredentialType says how a credential proves the device's identity: an
// access token, a public key for JWTs (see credentials.go) or a pinned TLS
// client certificate (x509.go). A follower that does not know a type
// ignores that credential, so an old instance fails closed instead of
// accepting it.
type CredentialType string

// CredentialToken is a random access token, stored only as its SHA-256.
const CredentialToken CredentialType = "token"

// Credential is one way a device may authenticate. Cloud IoT Core allowed up
// to three per device, each with an optional expiry.
type Credential struct {
	Type      CredentialType `json:"type"`
	CreatedAt time.Time      `json:"created_at"`
	// ExpiresAt is zero for a credential that does not expire.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// TokenSHA256 is the SHA-256 of the token (type token). The token
	// itself is never stored, logged or written to Kafka.
	TokenSHA256 []byte `json:"token_sha256,omitempty"`
	// PublicKey is the PEM text of a public-key credential (RSA_PEM,
	// ES256_PEM, ...) or of a pinned certificate (X509_CERT_PEM): public,
	// so stored as given.
	PublicKey string `json:"public_key,omitempty"`
}

// MaxCredentials is how many credentials one device may hold (as in Cloud IoT Core).
const MaxCredentials = 3

// recordVersion is the schema version of the JSON value on the registry
// topic. Additive fields (public keys, labels, metadata) keep version 1 since
// unknown JSON fields are ignored; bump it only for a change an old reader
// would misread, and teach the decoder both.
const recordVersion = 1

// record is the value written to the registry topic for a device; a
// tombstone (nil value) deletes it.
type record struct {
	Version int `json:"v"`
	// Rev is the device's revision (revisions.go); 0 in records written
	// before revisions existed.
	Rev uint64 `json:"rev,omitempty"`
	Device
}

func encodeRecord(d Device, rev uint64) ([]byte, error) {
	b, err := json.Marshal(record{Version: recordVersion, Rev: rev, Device: d})
	if err != nil {
		return nil, fmt.Errorf("encode device %s: %w", d.ID, err)
	}
	return b, nil
}

func decodeRecord(b []byte) (record, error) {
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("decode device record: %w", err)
	}
	if r.Version < 1 {
		return r, fmt.Errorf("decode device record: missing or bad version %d", r.Version)
	}
	return r, nil
}

func (d Device) clone() Device {
	d.Labels = maps.Clone(d.Labels)
	d.Credentials = slices.Clone(d.Credentials)
	d.Configs = slices.Clone(d.Configs) // ConfigVersion.Data is never modified in place
	for i := range d.Credentials {
		d.Credentials[i].TokenSHA256 = slices.Clone(d.Credentials[i].TokenSHA256)
	}
	return d
}

// ValidateID checks a device id against Cloud IoT Core's rule, so ids that
// worked there work here: it starts with a letter and has 3 to 255 characters
// from [a-zA-Z0-9_.~+%-]. It also keeps an id one MQTT topic level: no '/',
// no '#', and '+' is only a wildcard as a whole level, which an id never is.
func ValidateID(id string) error {
	if len(id) < 3 || len(id) > 255 {
		return fmt.Errorf("%w: %q must be 3 to 255 characters", ErrInvalidID, id)
	}
	if c := id[0]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
		return fmt.Errorf("%w: %q must start with a letter", ErrInvalidID, id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("_.~+%-", c) >= 0:
		default:
			return fmt.Errorf("%w: %q has a character outside [a-zA-Z0-9_.~+%%-]", ErrInvalidID, id)
		}
	}
	return nil
}

// TokenPrefix starts every access token, so a leaked token is recognisable
// (secret scanners, logs) and cannot be mistaken for a JWT.
const TokenPrefix = "itk_"

// newToken returns a fresh token and its stored hash.
func newToken() (token string, sum []byte, err error) {
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", nil, fmt.Errorf("generate token: %w", err)
	}
	token = TokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	return token, hashToken([]byte(token)), nil
}

// hashToken is a single SHA-256, not bcrypt/argon2: those slow hashes exist
// to make guessing low-entropy passwords expensive. A token has 256 random
// bits, so no amount of guessing finds it from its hash, and a fast hash
// keeps authentication cheap on the MQTT connect path.
func hashToken(token []byte) []byte {
	s := sha256.Sum256(token)
	return s[:]
}

// checkToken returns the index of d's unexpired token credential that
// password matches, or -1. It compares hashes in constant time and looks at
// every credential, so timing does not tell which one matched.
func (d *Device) checkToken(password []byte, now time.Time) int {
	sum := hashToken(password)
	match := -1
	for i, c := range d.Credentials {
		if c.Type != CredentialToken || len(c.TokenSHA256) != sha256.Size {
			continue
		}
		if !c.ExpiresAt.IsZero() && !now.Before(c.ExpiresAt) {
			continue
		}
		match = subtle.ConstantTimeSelect(subtle.ConstantTimeCompare(sum, c.TokenSHA256), i, match)
	}
	return match
}

// Label and name limits. Keys and values follow the rule Google Cloud uses
// for labels, so metadata exported from Cloud IoT Core fits.
const (
	MaxLabels       = 64
	maxLabelLen     = 63
	MaxNameLen      = 128
	labelCharsExtra = "_-"
)

// ValidateLabels checks labels: at most MaxLabels; keys of 1 to 63
// characters starting with a lowercase letter, values of 0 to 63, both from
// [a-z0-9_-]. Keeping them that plain lets a selector like site=a,floor=2 be
// parsed without quoting.
func ValidateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%w: %d labels, at most %d", ErrInvalidLabels, len(labels), MaxLabels)
	}
	for k, v := range labels {
		if k == "" || len(k) > maxLabelLen || k[0] < 'a' || k[0] > 'z' || !labelChars(k) {
			return fmt.Errorf("%w: key %q must be 1 to %d characters of [a-z0-9_-] starting with a lowercase letter", ErrInvalidLabels, k, maxLabelLen)
		}
		if len(v) > maxLabelLen || !labelChars(v) {
			return fmt.Errorf("%w: value %q of %q must be 0 to %d characters of [a-z0-9_-]", ErrInvalidLabels, v, k, maxLabelLen)
		}
	}
	return nil
}

func labelChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte(labelCharsExtra, c) >= 0) {
			return false
		}
	}
	return true
}

// validateName allows any printable UTF-8 up to MaxNameLen bytes.
func validateName(name string) error {
	if len(name) > MaxNameLen || !utf8.ValidString(name) {
		return fmt.Errorf("%w: name must be valid UTF-8 of at most %d bytes", ErrInvalidLabels, MaxNameLen)
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%w: name %q has a non-printable character", ErrInvalidLabels, name)
		}
	}
	return nil
}

// Selector matches devices by labels: every key=value pair must match.
// The zero Selector matches every device.
type Selector map[string]string

// ParseSelector parses "k=v,k2=v2" (spaces around pairs are ignored). An
// empty string is the selector that matches everything.
func ParseSelector(s string) (Selector, error) {
	sel := Selector{}
	for _, pair := range strings.Split(s, ",") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			return nil, fmt.Errorf("%w: selector term %q is not key=value", ErrInvalidLabels, pair)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if err := ValidateLabels(map[string]string{k: v}); err != nil {
			return nil, err
		}
		if old, dup := sel[k]; dup && old != v {
			return nil, fmt.Errorf("%w: selector asks %s=%s and %s=%s", ErrInvalidLabels, k, old, k, v)
		}
		sel[k] = v
	}
	return sel, nil
}

// Matches reports whether d has every label of the selector.
func (sel Selector) Matches(d Device) bool {
	for k, v := range sel {
		if got, ok := d.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
