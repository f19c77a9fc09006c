package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/iotpipe/iotpipe/registry"
)

type Device struct {
	ID        string    `json:"id"`
	Blocked   bool      `json:"blocked"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

func toDeviceJSON(d registry.Device) Device {
	return Device{ID: d.ID, Blocked: d.Blocked, CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt}
}

type createDeviceRequest struct {
	ID string `json:"id"`
}

type CreatedDevice struct {
	Device Device `json:"device"`
	// Token is shown once; only its hash is stored.
	Token string `json:"token"`
}

func (s *Server) createDevice(w http.ResponseWriter, r *http.Request) {
	var req createDeviceRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "body must be JSON {\"id\": \"...\"}: "+err.Error())
		return
	}
	d, token, err := s.cfg.Registry.Create(r.Context(), req.ID)
	if err != nil {
		s.registryError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, CreatedDevice{Device: toDeviceJSON(d), Token: token})
}

func (s *Server) listDevices(w http.ResponseWriter, _ *http.Request) {
	list := s.cfg.Registry.List()
	out := make([]Device, 0, len(list))
	for _, d := range list {
		out = append(out, toDeviceJSON(d))
	}
	writeJSON(w, http.StatusOK, map[string]any{"devices": out})
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request) {
	d, err := s.cfg.Registry.Get(r.PathValue("id"))
	if err != nil {
		s.registryError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, toDeviceJSON(d))
}

func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request) {
	if err := s.cfg.Registry.Delete(r.Context(), r.PathValue("id")); err != nil {
		s.registryError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) registryError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, registry.ErrInvalidID):
		writeError(w, http.StatusBadRequest, "invalid_id", err.Error())
	case errors.Is(err, registry.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, registry.ErrExists):
		writeError(w, http.StatusConflict, "exists", err.Error())
	default:
		s.cfg.Logger.Error().Err(err).Msg("registry write failed")
		writeError(w, http.StatusServiceUnavailable, "unavailable", "registry unavailable: "+err.Error())
	}
}
