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
)
