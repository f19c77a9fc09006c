package registry

import "errors"

// Sentinel errors. The broker maps them to CONNACK reason codes and the API to
// HTTP statuses, so each means exactly one thing.
var (
	ErrNotFound       = errors.New("device not found")
	ErrExists         = errors.New("device already exists")
	ErrInvalidID      = errors.New("invalid device id")
	ErrInvalidLabels  = errors.New("invalid device name or labels")
	ErrBadCredentials = errors.New("bad credentials")
	ErrBlocked        = errors.New("device is blocked")
	// ErrInvalidCredential is a public key the registry refuses to add (bad
	// type, PEM, key size or curve, or an expiry in the past).
	ErrInvalidCredential = errors.New("invalid credential")
	// ErrTooManyCredentials: the device already holds MaxCredentials.
	ErrTooManyCredentials = errors.New("too many credentials")
	// ErrConfigVersionMismatch: a config write expected a version that is
	// no longer (or not yet) the latest.
	ErrConfigVersionMismatch = errors.New("config version mismatch")
	// ErrConfigTooLarge: a config above MaxConfigBytes.
	ErrConfigTooLarge = errors.New("config too large")
	// ErrInvalidConfig: a config write with bad parameters.
	ErrInvalidConfig = errors.New("invalid config")
)
