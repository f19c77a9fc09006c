package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/iotpipe/iotpipe/broker"
	"github.com/iotpipe/iotpipe/downlink"
)

// MaxCommandBytes caps a command's payload, as Cloud IoT Core did (256 KiB).
const MaxCommandBytes = 256 << 10

// Command is the body of POST /api/v1/devices/{id}/commands, Cloud IoT
// Core's sendCommandToDevice: the payload base64 encoded, an optional
// subfolder (the device gets it on /devices/D/commands/<subfolder>).
type Command struct {
	BinaryData string `json:"binary_data"`
	Subfolder  string `json:"subfolder,omitempty"`
}

// CommandResult is the answer of a delivered command.
type CommandResult struct {
	Topic string `json:"topic"` // the MQTT topic the device got it on
	QoS   int    `json:"qos"`   // 1: the device acknowledged it; 0: written to its connection
}

// DevicePresence is the connection state in the device JSON (package
// downlink). Heartbeat and event times are written at most once a minute per
// device, so they lag by up to that.
type DevicePresence struct {
	Connected            bool      `json:"connected"`
	LastConnectedTime    time.Time `json:"last_connected_time,omitzero"`
	LastDisconnectedTime time.Time `json:"last_disconnected_time,omitzero"`
	LastHeartbeatTime    time.Time `json:"last_heartbeat_time,omitzero"`
	LastEventTime        time.Time `json:"last_event_time,omitzero"`
}

// withPresence fills d's presence fields when this API knows presence.
func (s *Server) withPresence(d Device) Device {
	if s.cfg.Commands == nil {
		return d
	}
	p := s.cfg.Commands.Presence(d.ID)
	d.DevicePresence = DevicePresence{Connected: p.Connected, LastConnectedTime: p.LastConnected,
		LastDisconnectedTime: p.LastDisconnected, LastHeartbeatTime: p.LastHeartbeat, LastEventTime: p.LastEvent}
	return d
}

// sendCommand answers POST /api/v1/devices/{id}/commands:
//
//	200 delivered (QoS 1: acknowledged by the device; QoS 0: written)
//	400 bad_request (body, base64), invalid_subfolder
//	404 not_found         413 payload_too_large
//	409 device_not_connected, device_not_subscribed (Cloud IoT Core: FAILED_PRECONDITION)
//	502 device_rejected   (MQTT 5 PUBACK with an error reason code)
//	503 busy, unavailable (limits reached, Kafka failing, commands not configured)
//	504 device_timeout    (no PUBACK in time), no_reply (the holding instance did not answer)
func (s *Server) sendCommand(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Commands == nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", "commands are not configured on this API instance")
		return
	}
	// The payload is base64 in JSON: 256 KiB become 342 KiB, plus room for
	// the subfolder and whitespace.
	const maxBody = MaxCommandBytes*4/3 + 8<<10
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "read body: "+err.Error())
		return
	}
	if len(body) > maxBody {
		writeError(w, http.StatusRequestEntityTooLarge, "payload_too_large", "the command payload may be at most 256 KiB")
		return
	}
	var req Command
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", `body must be JSON {"binary_data": "<base64>", "subfolder": "optional/sub"}: `+err.Error())
		return
	}
	payload, err := base64.StdEncoding.DecodeString(req.BinaryData)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "binary_data is not standard base64: "+err.Error())
		return
	}
	if len(payload) > MaxCommandBytes {
		writeError(w, http.StatusRequestEntityTooLarge, "payload_too_large", "the command payload may be at most 256 KiB")
		return
	}
	id := r.PathValue("id")
	if _, err := s.cfg.Registry.Get(id); err != nil {
		s.registryError(w, err)
		return
	}
	topic, err := broker.CommandTopic(id, req.Subfolder)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_subfolder", err.Error())
		return
	}
	res, err := s.cfg.Commands.SendCommand(r.Context(), id, topic, payload)
	if err != nil {
		s.commandError(w, id, err)
		return
	}
	writeJSON(w, http.StatusOK, CommandResult{Topic: topic, QoS: int(res.QoS)})
}

func (s *Server) commandError(w http.ResponseWriter, id string, err error) {
	switch {
	case errors.Is(err, downlink.ErrNotConnected):
		writeError(w, http.StatusConflict, "device_not_connected", "device "+id+" has no MQTT session on any iotpipe instance")
	case errors.Is(err, downlink.ErrNotSubscribed):
		writeError(w, http.StatusConflict, "device_not_subscribed", err.Error())
	case errors.Is(err, downlink.ErrRejected):
		writeError(w, http.StatusBadGateway, "device_rejected", err.Error())
	case errors.Is(err, downlink.ErrDeviceTimeout):
		writeError(w, http.StatusGatewayTimeout, "device_timeout", err.Error())
	case errors.Is(err, downlink.ErrNoReply):
		writeError(w, http.StatusGatewayTimeout, "no_reply", err.Error())
	case errors.Is(err, downlink.ErrBusy):
		writeError(w, http.StatusServiceUnavailable, "busy", err.Error())
	case errors.Is(err, context.Canceled):
		// The caller went away; nobody reads this.
		writeError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
	default:
		s.cfg.Logger.Error().Err(err).Str("device", id).Msg("command failed")
		writeError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
	}
}

// SendCommand calls POST /api/v1/devices/{id}/commands with payload.
func (c *Client) SendCommand(ctx context.Context, id string, payload []byte, subfolder string) (CommandResult, error) {
	var out CommandResult
	err := c.do(ctx, http.MethodPost, "/api/v1/devices/"+url.PathEscape(id)+"/commands", nil,
		Command{BinaryData: base64.StdEncoding.EncodeToString(payload), Subfolder: subfolder}, &out)
	return out, err
}
