package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/iotpipe/iotpipe/registry"
)

// Device configuration and state, as Cloud IoT Core's
// modifyCloudToDeviceConfig, configVersions.list and states.list had them.
// Binary data travels as standard base64 (with padding) in JSON, which is
// also how encoding/json encodes []byte.

// DeviceConfig is one config version.
type DeviceConfig struct {
	Version         int64     `json:"version"`
	BinaryData      []byte    `json:"binary_data"`
	CloudUpdateTime time.Time `json:"cloud_update_time"`
	// DeviceAckTime is when the device first acknowledged this version
	// (MQTT PUBACK on /devices/D/config); absent if it did not.
	DeviceAckTime time.Time `json:"device_ack_time,omitzero"`
}

// ConfigSummary is the latest config of a Device answer, without its data.
type ConfigSummary struct {
	Version         int64     `json:"version"`
	CloudUpdateTime time.Time `json:"cloud_update_time"`
	DeviceAckTime   time.Time `json:"device_ack_time,omitzero"`
}

// ConfigUpdate is the body of POST /api/v1/devices/{id}/config.
type ConfigUpdate struct {
	// BinaryData is the config, standard base64; absent or "" is an empty
	// config.
	BinaryData string `json:"binary_data"`
	// VersionToUpdate, if not 0, makes the write a compare-and-set: it
	// fails with 409 config_version_mismatch unless the latest version is
	// this one.
	VersionToUpdate int64 `json:"version_to_update,omitempty"`
}

// DeviceState is the latest state a device published to /devices/D/state.
type DeviceState struct {
	BinaryData []byte    `json:"binary_data"`
	UpdateTime time.Time `json:"update_time"`
}

func toConfigJSON(c registry.ConfigVersion) DeviceConfig {
	data := c.Data
	if data == nil {
		data = []byte{} // "" rather than null
	}
	return DeviceConfig{Version: c.Version, BinaryData: data, CloudUpdateTime: c.CloudUpdateTime, DeviceAckTime: c.DeviceAckTime}
}

// maxConfigBody fits a maximal config in base64 plus the JSON around it.
const maxConfigBody = (registry.MaxConfigBytes+2)/3*4 + 1<<10

func (s *Server) setConfig(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxConfigBody+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "read body: "+err.Error())
		return
	}
	if len(body) > maxConfigBody {
		writeError(w, http.StatusRequestEntityTooLarge, "config_too_large",
			fmt.Sprintf("body above %d bytes; a config holds at most %d bytes", maxConfigBody, registry.MaxConfigBytes))
		return
	}
	var req ConfigUpdate
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", `body must be JSON {"binary_data": "<base64>", "version_to_update": 0}: `+err.Error())
		return
	}
	data, err := base64.StdEncoding.DecodeString(req.BinaryData)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_binary_data", "binary_data must be standard base64 with padding: "+err.Error())
		return
	}
	c, err := s.cfg.Registry.SetConfig(r.Context(), r.PathValue("id"), data, req.VersionToUpdate)
	if err != nil {
		s.configError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, toConfigJSON(c))
}

func (s *Server) configError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, registry.ErrConfigVersionMismatch):
		writeError(w, http.StatusConflict, "config_version_mismatch", err.Error())
	case errors.Is(err, registry.ErrConfigTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, "config_too_large", err.Error())
	case errors.Is(err, registry.ErrInvalidConfig):
		writeError(w, http.StatusBadRequest, "invalid_config", err.Error())
	default:
		s.registryError(w, err)
	}
}

func (s *Server) getConfig(w http.ResponseWriter, r *http.Request) {
	d, err := s.cfg.Registry.Get(r.PathValue("id"))
	if err != nil {
		s.registryError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, toConfigJSON(d.DeviceConfig()))
}

// ConfigVersions is the answer of GET /api/v1/devices/{id}/config/versions.
type ConfigVersions struct {
	DeviceConfigs []DeviceConfig `json:"device_configs"` // newest first
}

func (s *Server) configVersions(w http.ResponseWriter, r *http.Request) {
	d, err := s.cfg.Registry.Get(r.PathValue("id"))
	if err != nil {
		s.registryError(w, err)
		return
	}
	vs := d.ConfigVersions()
	out := ConfigVersions{DeviceConfigs: make([]DeviceConfig, len(vs))}
	for i, v := range vs {
		out.DeviceConfigs[i] = toConfigJSON(v)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getState(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := s.cfg.Registry.Get(id); err != nil {
		s.registryError(w, err)
		return
	}
	if s.cfg.States == nil {
		writeError(w, http.StatusServiceUnavailable, "state_unavailable", "this API instance does not follow the state topic")
		return
	}
	st, ok := s.cfg.States.Get(id)
	if !ok {
		writeError(w, http.StatusNotFound, "no_state", "device "+id+" has not reported state (or it was not read back yet)")
		return
	}
	writeJSON(w, http.StatusOK, DeviceState{BinaryData: st.Data, UpdateTime: st.UpdateTime})
}

// forgetState drops a deleted device's state. The device is gone either
// way, so a failure is logged, not answered: the state stays on the topic
// until a device of that id reports again.
func (s *Server) forgetState(ctx context.Context, id string) {
	if s.cfg.States == nil {
		return
	}
	if err := s.cfg.States.Forget(ctx, id); err != nil {
		s.cfg.Logger.Warn().Err(err).Str("device", id).Msg("deleted device's state not forgotten")
	}
}

// deviceJSON is toDeviceJSON plus what the registry does not hold.
func (s *Server) deviceJSON(d registry.Device) Device {
	out := toDeviceJSON(d)
	if s.cfg.States != nil {
		if st, ok := s.cfg.States.Get(d.ID); ok {
			out.LastStateTime = st.UpdateTime
		}
	}
	return s.withPresence(out) // commands.go
}
