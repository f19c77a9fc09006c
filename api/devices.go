package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/iotpipe/iotpipe/registry"
)

type Device struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels"`
	Blocked   bool              `json:"blocked"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	// Credentials in registry order: the index is what
	// DELETE /api/v1/devices/{id}/credentials/{index} takes.
	Credentials []Credential `json:"credentials"`
	// Config is the latest config version (see config.go).
	Config            ConfigSummary `json:"config"`
	LastConfigAckTime time.Time     `json:"last_config_ack_time,omitzero"`
	LastStateTime     time.Time     `json:"last_state_time,omitzero"`

	DevicePresence // connected, last_*_time: commands.go
}

// Credential describes one credential of a device, never its secret or key.
type Credential struct {
	Type      string    `json:"type"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// SHA256Fingerprint is the lowercase hex SHA-256 of the DER of a pinned
	// client certificate (type X509_CERT_PEM); absent for other types.
	SHA256Fingerprint string `json:"sha256_fingerprint,omitempty"`
}

func toDeviceJSON(d registry.Device) Device {
	labels := d.Labels
	if labels == nil {
		labels = map[string]string{} // always an object, so clients need no null check
	}
	creds := make([]Credential, len(d.Credentials))
	for i, c := range d.Credentials {
		creds[i] = Credential{Type: string(c.Type), CreatedAt: c.CreatedAt, ExpiresAt: c.ExpiresAt, SHA256Fingerprint: c.Fingerprint()}
	}
	c := d.DeviceConfig()
	return Device{ID: d.ID, Name: d.Name, Labels: labels, Blocked: d.Blocked, CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt,
		Credentials: creds, LastConfigAckTime: d.LastConfigAckTime,
		Config: ConfigSummary{Version: c.Version, CloudUpdateTime: c.CloudUpdateTime, DeviceAckTime: c.DeviceAckTime}}
}

// NewCredential is the body of POST /api/v1/devices/{id}/credentials: a
// public key for JWT authentication, typed as in Cloud IoT Core, or the
// device's TLS client certificate to pin (X509_CERT_PEM).
type NewCredential struct {
	Type      string     `json:"type"`       // RSA_PEM, RSA_X509_PEM, ES256_PEM, ES256_X509_PEM or X509_CERT_PEM
	PublicKey string     `json:"public_key"` // PEM text: the key, or the certificate for *_X509_PEM and X509_CERT_PEM
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

func (s *Server) addCredential(w http.ResponseWriter, r *http.Request) {
	var req NewCredential
	if !decodeBody(w, r, &req, `{"type": "ES256_PEM", "public_key": "-----BEGIN PUBLIC KEY-----...", "expires_at": "RFC 3339, optional"}`) {
		return
	}
	id := r.PathValue("id")
	spec := registry.CredentialSpec{Type: registry.CredentialType(req.Type), PEM: req.PublicKey}
	if req.ExpiresAt != nil {
		spec.ExpiresAt = *req.ExpiresAt
	}
	if err := s.cfg.Registry.AddCredential(r.Context(), id, spec); err != nil {
		s.registryError(w, err)
		return
	}
	s.writeDevice(w, http.StatusCreated, id)
}

// writeDevice answers with the device as this instance now holds it (after
// a write, which was applied here before the registry call returned).
func (s *Server) writeDevice(w http.ResponseWriter, status int, id string) {
	d, err := s.cfg.Registry.Get(id)
	if err != nil {
		s.registryError(w, err)
		return
	}
	writeJSON(w, status, s.deviceJSON(d))
}

func (s *Server) removeCredential(w http.ResponseWriter, r *http.Request) {
	index, err := strconv.Atoi(r.PathValue("index"))
	if err != nil || index < 0 {
		writeError(w, http.StatusBadRequest, "bad_request", "credential index must be a number from 0")
		return
	}
	if err := s.cfg.Registry.RemoveCredential(r.Context(), r.PathValue("id"), index); err != nil {
		s.registryError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// setBlocked answers POST /api/v1/devices/{id}/block and /unblock with the
// device. The write is applied on this instance before the answer, and every
// instance's broker then closes the device's live sessions (package broker).
func (s *Server) setBlocked(blocked bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := s.cfg.Registry.SetBlocked(r.Context(), id, blocked); err != nil {
			s.registryError(w, err)
			return
		}
		s.writeDevice(w, http.StatusOK, id)
	}
}

// NewDevice is the body of POST /api/v1/devices.
type NewDevice struct {
	ID     string            `json:"id"`
	Name   string            `json:"name,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}

// DeviceUpdate is the body of PATCH /api/v1/devices/{id}: fields left out
// keep their value; "labels" replaces the whole set.
type DeviceUpdate struct {
	Name   *string            `json:"name,omitempty"`
	Labels *map[string]string `json:"labels,omitempty"`
}

type CreatedDevice struct {
	Device Device `json:"device"`
	// Token is shown once; only its hash is stored.
	Token string `json:"token"`
}

func (s *Server) createDevice(w http.ResponseWriter, r *http.Request) {
	var req NewDevice
	if !decodeBody(w, r, &req, `{"id": "...", "name": "...", "labels": {"key": "value"}}`) {
		return
	}
	d, token, err := s.cfg.Registry.Create(r.Context(), registry.Spec{ID: req.ID, Name: req.Name, Labels: req.Labels})
	if err != nil {
		s.registryError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, CreatedDevice{Device: s.deviceJSON(d), Token: token})
}

// decodeBody reads a JSON body strictly (unknown fields are a 400, so a
// typo does not silently do nothing) and answers the error itself.
func decodeBody(w http.ResponseWriter, r *http.Request, v any, shape string) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "body must be JSON "+shape+": "+err.Error())
		return false
	}
	return true
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request) {
	d, err := s.cfg.Registry.Get(r.PathValue("id"))
	if err != nil {
		s.registryError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.deviceJSON(d))
}

func (s *Server) updateDevice(w http.ResponseWriter, r *http.Request) {
	var req DeviceUpdate
	if !decodeBody(w, r, &req, `{"name": "...", "labels": {"key": "value"}}`) {
		return
	}
	id := r.PathValue("id")
	d, err := s.cfg.Registry.Get(id)
	if err != nil {
		s.registryError(w, err)
		return
	}
	name, labels := d.Name, d.Labels
	if req.Name != nil {
		name = *req.Name
	}
	if req.Labels != nil {
		labels = *req.Labels
	}
	if err := s.cfg.Registry.SetMetadata(r.Context(), id, name, labels); err != nil {
		s.registryError(w, err)
		return
	}
	s.writeDevice(w, http.StatusOK, id)
}

func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request) {
	if err := s.cfg.Registry.Delete(r.Context(), r.PathValue("id")); err != nil {
		s.registryError(w, err)
		return
	}
	s.forgetState(r.Context(), r.PathValue("id"))
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) registryError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, registry.ErrInvalidID):
		writeError(w, http.StatusBadRequest, "invalid_id", err.Error())
	case errors.Is(err, registry.ErrInvalidLabels):
		writeError(w, http.StatusBadRequest, "invalid_labels", err.Error())
	case errors.Is(err, registry.ErrInvalidCredential):
		writeError(w, http.StatusBadRequest, "invalid_credential", err.Error())
	case errors.Is(err, registry.ErrTooManyCredentials):
		writeError(w, http.StatusBadRequest, "too_many_credentials", err.Error())
	case errors.Is(err, registry.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, registry.ErrExists):
		writeError(w, http.StatusConflict, "exists", err.Error())
	default:
		s.cfg.Logger.Error().Err(err).Msg("registry write failed")
		writeError(w, http.StatusServiceUnavailable, "unavailable", "registry unavailable: "+err.Error())
	}
}
