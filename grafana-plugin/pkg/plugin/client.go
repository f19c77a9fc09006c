package plugin

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// apiClient is a small client of the iotpipe HTTP API v1. The plugin is a
// separate module from iotpipe on purpose (it must stay lean and build for
// every Grafana platform), so it speaks the documented HTTP contract rather
// than importing the server's packages.
type apiClient struct {
	base  *url.URL
	token string
	http  *http.Client
	// slots bounds the requests this datasource instance has in flight, so a
	// dashboard with many devices cannot flood the API.
	slots chan struct{}
	// pageSize is the page_size of device listings (tests make it small).
	pageSize int
}

// devicePageSize is the API's largest page_size: the fewest requests for a
// fleet.
const devicePageSize = 1000

// maxResponseBytes bounds what the plugin reads of one answer; a series is at
// most max_points points, far below this.
const maxResponseBytes = 64 << 20

func newAPIClient(s Settings, maxInFlight int) *apiClient {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   maxInFlight,
	}
	if s.RootCAs != nil {
		tr.TLSClientConfig = &tls.Config{RootCAs: s.RootCAs, MinVersion: tls.VersionTLS12}
	}
	return &apiClient{
		base:  s.URL,
		token: s.Token,
		// The overall timeout backs up Grafana's own request deadline, which
		// arrives through the context.
		http:     &http.Client{Transport: tr, Timeout: 90 * time.Second},
		slots:    make(chan struct{}, maxInFlight),
		pageSize: devicePageSize,
	}
}

func (c *apiClient) close() { c.http.CloseIdleConnections() }

// APIError is a non-2xx answer of the API, with its JSON error body.
type APIError struct {
	Status  int
	Code    string
	Message string
	URL     string // scheme://host/path of the request, no query (it may be long)
}

func (e *APIError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("iotpipe API %s answered %d %s: %s", e.URL, e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("iotpipe API %s answered %d: %s", e.URL, e.Status, e.Message)
}

// UnreachableError is a request that got no HTTP answer at all.
type UnreachableError struct {
	URL string
	Err error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("iotpipe API unreachable at %s: %v", e.URL, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// pathQuery is what frames report as ExecutedQueryString: the request path and
// query without host or token.
func pathQuery(path string, q url.Values) string {
	if len(q) == 0 {
		return path
	}
	return path + "?" + q.Encode()
}

func (c *apiClient) get(ctx context.Context, path string, q url.Values, out any) error {
	u := *c.base
	u.Path = strings.TrimRight(u.Path, "/") + path
	u.RawQuery = q.Encode()
	short := u.Scheme + "://" + u.Host + u.Path
	select {
	case c.slots <- struct{}{}:
		defer func() { <-c.slots }()
	case <-ctx.Done():
		return fmt.Errorf("waiting to call %s: %w", short, ctx.Err())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("request %s: %w", short, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("call %s: %w", short, ctx.Err())
		}
		// url.Error repeats the full URL; keep only the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return &UnreachableError{URL: short, Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return &UnreachableError{URL: short, Err: fmt.Errorf("read answer: %w", err)}
	}
	if resp.StatusCode/100 != 2 {
		ae := &APIError{Status: resp.StatusCode, URL: short}
		var eb struct {
			Error string `json:"error"`
			Code  string `json:"code"`
		}
		if json.Unmarshal(body, &eb) == nil && eb.Error != "" {
			ae.Message, ae.Code = eb.Error, eb.Code
		} else {
			ae.Message = strings.TrimSpace(string(body[:min(len(body), 200)]))
			if ae.Message == "" {
				ae.Message = http.StatusText(resp.StatusCode)
			}
		}
		return ae
	}
	if err := json.Unmarshal(body, out); err != nil {
		return &APIError{Status: http.StatusBadGateway, URL: short,
			Message: fmt.Sprintf("answer is not the expected JSON: %v", err)}
	}
	return nil
}

// Info is GET /api/v1/info.
type Info struct {
	WindowSizesSeconds []int64  `json:"window_sizes_seconds"`
	Aggregates         []string `json:"aggregates"`
	MaxPoints          int      `json:"max_points"`
}

func (c *apiClient) info(ctx context.Context) (Info, error) {
	var out Info
	err := c.get(ctx, "/api/v1/info", nil, &out)
	return out, err
}

// Device is one entry of GET /api/v1/devices.
type Device struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Labels  map[string]string `json:"labels"`
	Blocked bool              `json:"blocked"`
}

// devices lists every registered device whose labels match every "k=v"
// selector, following the API's pages (in id order).
func (c *apiClient) devices(ctx context.Context, labels []string) ([]Device, error) {
	var all []Device
	token := ""
	for {
		q := url.Values{}
		for _, l := range labels {
			q.Add("label", l)
		}
		q.Set("page_size", strconv.Itoa(c.pageSize))
		if token != "" {
			q.Set("page_token", token)
		}
		var out struct {
			Devices       []Device `json:"devices"`
			NextPageToken string   `json:"next_page_token"`
		}
		if err := c.get(ctx, "/api/v1/devices", q, &out); err != nil {
			return nil, err
		}
		all = append(all, out.Devices...)
		if out.NextPageToken == "" {
			return all, nil
		}
		if out.NextPageToken == token {
			return nil, &APIError{Status: http.StatusBadGateway, URL: c.base.String() + "/api/v1/devices",
				Message: "the API returned the same next_page_token twice"}
		}
		token = out.NextPageToken
	}
}

func (c *apiClient) metrics(ctx context.Context, device string) ([]string, error) {
	q := url.Values{}
	if device != "" {
		q.Set("device", device)
	}
	var out struct {
		Metrics []string `json:"metrics"`
	}
	err := c.get(ctx, "/api/v1/metrics", q, &out)
	return out.Metrics, err
}

// Point is one bucket of a series.
type Point struct {
	Time  time.Time `json:"time"`
	Value float64   `json:"value"`
	Count uint64    `json:"count"`
}

type seriesParams struct {
	Device, Metric, Aggregate string
	From, To                  time.Time
	StepSeconds, Window       int64
}

func (p seriesParams) values() url.Values {
	q := url.Values{}
	q.Set("device", p.Device)
	q.Set("metric", p.Metric)
	q.Set("aggregate", p.Aggregate)
	q.Set("from", formatTime(p.From))
	q.Set("to", formatTime(p.To))
	q.Set("step", strconv.FormatInt(p.StepSeconds, 10))
	q.Set("window", strconv.FormatInt(p.Window, 10))
	return q
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

const seriesPath = "/api/v1/series"

func (c *apiClient) series(ctx context.Context, p seriesParams) ([]Point, error) {
	var out struct {
		Points []Point `json:"points"`
	}
	err := c.get(ctx, seriesPath, p.values(), &out)
	return out.Points, err
}

// DeviceValue is one device's value in a summary.
type DeviceValue struct {
	Device string  `json:"device"`
	Value  float64 `json:"value"`
	Count  uint64  `json:"count"`
}

const summaryPath = "/api/v1/summary"

func summaryValues(metric, aggregate string, from, to time.Time, devices []string) url.Values {
	q := url.Values{}
	q.Set("metric", metric)
	q.Set("aggregate", aggregate)
	q.Set("from", formatTime(from))
	q.Set("to", formatTime(to))
	for _, d := range devices {
		q.Add("device", d)
	}
	return q
}

func (c *apiClient) summary(ctx context.Context, q url.Values) ([]DeviceValue, error) {
	var out struct {
		Devices []DeviceValue `json:"devices"`
	}
	err := c.get(ctx, summaryPath, q, &out)
	return out.Devices, err
}

// Window is one stored window of GET /api/v1/windows.
type Window struct {
	Device        string    `json:"device"`
	Metric        string    `json:"metric"`
	WindowSeconds int64     `json:"window_seconds"`
	Start         time.Time `json:"start"`
	Count         uint64    `json:"count"`
	Sum           float64   `json:"sum"`
	Min           float64   `json:"min"`
	Max           float64   `json:"max"`
	Mean          float64   `json:"mean"`
	Version       uint64    `json:"version"`
}

func (c *apiClient) windows(ctx context.Context, device, metric string, window int64, from, to time.Time, limit int) ([]Window, error) {
	q := url.Values{}
	q.Set("device", device)
	q.Set("metric", metric)
	q.Set("window", strconv.FormatInt(window, 10))
	q.Set("from", formatTime(from))
	q.Set("to", formatTime(to))
	q.Set("limit", strconv.Itoa(limit))
	var out struct {
		Windows []Window `json:"windows"`
	}
	err := c.get(ctx, "/api/v1/windows", q, &out)
	return out.Windows, err
}
