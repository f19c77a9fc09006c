package api

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/url"
)

// SetConfig writes a new config version for the device and returns it.
// versionToUpdate 0 writes unconditionally; otherwise the write fails with
// status 409 (code config_version_mismatch) unless the latest version is
// versionToUpdate.
func (c *Client) SetConfig(ctx context.Context, id string, data []byte, versionToUpdate int64) (DeviceConfig, error) {
	var out DeviceConfig
	body := ConfigUpdate{BinaryData: base64.StdEncoding.EncodeToString(data), VersionToUpdate: versionToUpdate}
	err := c.do(ctx, http.MethodPost, "/api/v1/devices/"+url.PathEscape(id)+"/config", nil, body, &out)
	return out, err
}

// Config returns the device's latest config.
func (c *Client) Config(ctx context.Context, id string) (DeviceConfig, error) {
	var out DeviceConfig
	err := c.do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(id)+"/config", nil, nil, &out)
	return out, err
}

// ConfigVersions returns the kept config versions, newest first.
func (c *Client) ConfigVersions(ctx context.Context, id string) ([]DeviceConfig, error) {
	var out ConfigVersions
	err := c.do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(id)+"/config/versions", nil, nil, &out)
	return out.DeviceConfigs, err
}

// State returns the device's latest reported state; status 404 with code
// no_state if it never reported one.
func (c *Client) State(ctx context.Context, id string) (DeviceState, error) {
	var out DeviceState
	err := c.do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(id)+"/state", nil, nil, &out)
	return out, err
}
