package api

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client calls an iotpipe API. The CLI uses it; so can other Go programs.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
	// pageSize is the page_size Devices lists with; 0 is MaxPageSize (tests
	// make it small to cross page boundaries).
	pageSize int
}

// NewClient returns a client for the API at baseURL (e.g. http://127.0.0.1:8080).
func NewClient(baseURL, token string) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("api url %q: want http(s)://host:port", baseURL)
	}
	return &Client{base: u, token: token, http: &http.Client{Timeout: 60 * time.Second}}, nil
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body, out any) error {
	u := *c.base
	u.Path += path
	u.RawQuery = q.Encode()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("iotpipe api at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		apiErr := &Error{Status: resp.StatusCode}
		if json.Unmarshal(data, apiErr) != nil || apiErr.Message == "" {
			apiErr.Message, apiErr.Code = strings.TrimSpace(string(data)), http.StatusText(resp.StatusCode)
		}
		return apiErr
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode %s response: %w", path, err)
	}
	return nil
}

// StatusOf returns the HTTP status of an error returned by the client, or 0.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// CreateDevice registers a device and returns it with its token.
func (c *Client) CreateDevice(ctx context.Context, d NewDevice) (CreatedDevice, error) {
	var out CreatedDevice
	err := c.do(ctx, http.MethodPost, "/api/v1/devices", nil, d, &out)
	return out, err
}

// UpdateDevice changes a device's name and/or labels.
func (c *Client) UpdateDevice(ctx context.Context, id string, u DeviceUpdate) (Device, error) {
	var out Device
	err := c.do(ctx, http.MethodPatch, "/api/v1/devices/"+url.PathEscape(id), nil, u, &out)
	return out, err
}

// Devices lists every registered device whose labels match selector
// ("site=a,floor=2"; empty: all), following the pages of the listing.
func (c *Client) Devices(ctx context.Context, selector string) ([]Device, error) {
	var all []Device
	p := DevicesPageParams{Selector: selector, PageSize: cmp.Or(c.pageSize, MaxPageSize)}
	for {
		page, err := c.DevicesPage(ctx, p)
		if err != nil {
			return nil, err
		}
		all = append(all, page.Devices...)
		if page.NextPageToken == "" {
			return all, nil
		}
		if page.NextPageToken == p.PageToken {
			return nil, fmt.Errorf("list devices: the API returned the same page token twice (%q)", p.PageToken)
		}
		p.PageToken = page.NextPageToken
	}
}

// DevicesPageParams selects one page of the device listing.
type DevicesPageParams struct {
	Selector  string // "site=a,floor=2"; empty: all
	PageSize  int    // 0: the server's default (DefaultPageSize)
	PageToken string // NextPageToken of the previous page; empty: the first page
}

// DevicesPage returns one page of the devices matching p.Selector, in id
// order.
func (c *Client) DevicesPage(ctx context.Context, p DevicesPageParams) (DevicePage, error) {
	q := url.Values{}
	if p.Selector != "" {
		q.Set("label", p.Selector)
	}
	if p.PageSize != 0 {
		q.Set("page_size", strconv.Itoa(p.PageSize))
	}
	if p.PageToken != "" {
		q.Set("page_token", p.PageToken)
	}
	var out DevicePage
	err := c.do(ctx, http.MethodGet, "/api/v1/devices", q, nil, &out)
	return out, err
}

// Info returns what the server stores: window sizes and aggregates.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var out Info
	err := c.do(ctx, http.MethodGet, "/api/v1/info", nil, nil, &out)
	return out, err
}

// Metrics lists the metrics with stored windows (of one device, or all).
func (c *Client) Metrics(ctx context.Context, device string) ([]string, error) {
	var out struct {
		Metrics []string `json:"metrics"`
	}
	q := url.Values{}
	if device != "" {
		q.Set("device", device)
	}
	err := c.do(ctx, http.MethodGet, "/api/v1/metrics", q, nil, &out)
	return out.Metrics, err
}

// WindowsParams selects stored windows; empty fields take server defaults.
type WindowsParams struct {
	Device, Metric string
	Window         string // window size, e.g. 10s; empty: all sizes
	From, To       string
	Limit          int
}

// Windows lists stored windows of one device's metric.
func (c *Client) Windows(ctx context.Context, p WindowsParams) ([]Window, error) {
	q := url.Values{}
	for k, v := range map[string]string{"device": p.Device, "metric": p.Metric, "window": p.Window, "from": p.From, "to": p.To} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if p.Limit > 0 {
		q.Set("limit", strconv.Itoa(p.Limit))
	}
	var out struct {
		Windows []Window `json:"windows"`
	}
	err := c.do(ctx, http.MethodGet, "/api/v1/windows", q, nil, &out)
	return out.Windows, err
}

// Device returns one device.
func (c *Client) Device(ctx context.Context, id string) (Device, error) {
	var out Device
	err := c.do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(id), nil, nil, &out)
	return out, err
}

// DeleteDevice removes a device.
func (c *Client) DeleteDevice(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/devices/"+url.PathEscape(id), nil, nil, nil)
}

// AddCredential adds a public key for JWT authentication to a device and
// returns the device.
func (c *Client) AddCredential(ctx context.Context, id string, cr NewCredential) (Device, error) {
	var out Device
	err := c.do(ctx, http.MethodPost, "/api/v1/devices/"+url.PathEscape(id)+"/credentials", nil, cr, &out)
	return out, err
}

// RemoveCredential removes a device's credential by its index in
// Device.Credentials.
func (c *Client) RemoveCredential(ctx context.Context, id string, index int) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/devices/"+url.PathEscape(id)+"/credentials/"+strconv.Itoa(index), nil, nil, nil)
}

// SetBlocked blocks (true) or unblocks a device and returns it. Blocking
// also ends the device's live MQTT sessions.
func (c *Client) SetBlocked(ctx context.Context, id string, blocked bool) (Device, error) {
	verb := "/unblock"
	if blocked {
		verb = "/block"
	}
	var out Device
	err := c.do(ctx, http.MethodPost, "/api/v1/devices/"+url.PathEscape(id)+verb, nil, nil, &out)
	return out, err
}

// SeriesParams selects a series; empty fields take the server defaults.
type SeriesParams struct {
	Device, Metric, Aggregate string
	From, To                  string // RFC 3339, Unix s/ms, now, now-1h
	Step                      string // e.g. 1m
	Window                    string // stored window size to read, e.g. 1m; empty: coarsest dividing Step
}

// Series fetches one device's metric re-aggregated into steps.
func (c *Client) Series(ctx context.Context, p SeriesParams) (Series, error) {
	q := url.Values{}
	for k, v := range map[string]string{"device": p.Device, "metric": p.Metric, "aggregate": p.Aggregate, "from": p.From, "to": p.To, "step": p.Step, "window": p.Window} {
		if v != "" {
			q.Set(k, v)
		}
	}
	var out Series
	err := c.do(ctx, http.MethodGet, "/api/v1/series", q, nil, &out)
	return out, err
}

// SummaryParams selects a per-device summary over a range.
type SummaryParams struct {
	Metric, Aggregate string
	From, To          string
	Devices           []string // empty: all
	Window            string   // read only this window size; empty: the coarsest that tile the range
}

// Summary fetches one value per device over the whole range.
func (c *Client) Summary(ctx context.Context, p SummaryParams) (Summary, error) {
	q := url.Values{"device": p.Devices}
	for k, v := range map[string]string{"metric": p.Metric, "aggregate": p.Aggregate, "from": p.From, "to": p.To, "window": p.Window} {
		if v != "" {
			q.Set(k, v)
		}
	}
	var out Summary
	err := c.do(ctx, http.MethodGet, "/api/v1/summary", q, nil, &out)
	return out, err
}
