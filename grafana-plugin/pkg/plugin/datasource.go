// Package plugin is the backend of the iotpipe Grafana datasource
// (iotpipe-iotpipe-datasource). Grafana starts it as its own process; each
// configured datasource becomes a Datasource instance that answers queries,
// health checks, resource calls and live streams by calling the iotpipe HTTP
// API v1:
//
//	datasource.Manage("iotpipe-iotpipe-datasource", plugin.NewDatasource, datasource.ManageOpts{})
//
// The query model, step rule, frames and errors follow the shared contract
// (the plugin spec): user-caused problems are downstream errors with a clear
// message, never a crash.
package plugin

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/grafana/grafana-plugin-sdk-go/backend"
	"github.com/grafana/grafana-plugin-sdk-go/backend/instancemgmt"
	"github.com/grafana/grafana-plugin-sdk-go/backend/log"
)

// PluginID is the id in plugin.json.
const PluginID = "iotpipe-iotpipe-datasource"

var (
	_ backend.QueryDataHandler      = (*Datasource)(nil)
	_ backend.CheckHealthHandler    = (*Datasource)(nil)
	_ backend.CallResourceHandler   = (*Datasource)(nil)
	_ backend.StreamHandler         = (*Datasource)(nil)
	_ instancemgmt.InstanceDisposer = (*Datasource)(nil)
)

// Limits of one datasource instance.
const (
	queryConcurrency  = 8  // queries of one request run at most this many at once
	seriesConcurrency = 8  // series calls of one query at once
	apiMaxInFlight    = 16 // API requests of the whole instance at once
	infoTTL           = 30 * time.Second
)

// Settings are a datasource instance's settings.
type Settings struct {
	URL   *url.URL
	Token string
	// RootCAs, when set, are the only CAs trusted for an https URL: the
	// iotpipe API's certificate from a private CA (secureJsonData.tlsCACert,
	// PEM, the name Grafana's own HTTP datasources use).
	RootCAs *x509.CertPool
}

// ParseSettings reads jsonData.url (or the instance URL when it is empty),
// secureJsonData.token and the optional secureJsonData.tlsCACert.
func ParseSettings(s backend.DataSourceInstanceSettings) (Settings, error) {
	var jd struct {
		URL string `json:"url"`
	}
	if len(s.JSONData) > 0 {
		if err := json.Unmarshal(s.JSONData, &jd); err != nil {
			return Settings{}, fmt.Errorf("jsonData is not valid JSON: %w", err)
		}
	}
	raw := strings.TrimSpace(jd.URL)
	if raw == "" {
		raw = strings.TrimSpace(s.URL)
	}
	if raw == "" {
		return Settings{}, errors.New("the iotpipe API URL is not set (e.g. http://iotpipe:8080)")
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return Settings{}, fmt.Errorf("the iotpipe API URL %q: want http(s)://host:port", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return Settings{}, fmt.Errorf("the iotpipe API URL %q must not have a query or fragment", raw)
	}
	// Users paste the API root or a path of it; the client adds /api/v1.
	u.Path = strings.TrimRight(u.Path, "/")
	for _, suffix := range []string{"/api/v1", "/api"} {
		u.Path = strings.TrimSuffix(u.Path, suffix)
	}
	u.RawPath = ""
	tok := strings.TrimSpace(s.DecryptedSecureJSONData["token"])
	if tok == "" {
		return Settings{}, errors.New("the API token is not set (secureJsonData.token: a read-only or admin token)")
	}
	set := Settings{URL: u, Token: tok}
	if ca := strings.TrimSpace(s.DecryptedSecureJSONData["tlsCACert"]); ca != "" {
		if u.Scheme != "https" {
			return Settings{}, fmt.Errorf("a CA certificate is set but the iotpipe API URL %q is not https", raw)
		}
		set.RootCAs = x509.NewCertPool()
		if !set.RootCAs.AppendCertsFromPEM([]byte(ca)) {
			return Settings{}, errors.New("the CA certificate (secureJsonData.tlsCACert) holds no PEM certificate")
		}
	}
	return set, nil
}

// Datasource is one configured iotpipe datasource.
type Datasource struct {
	settings    Settings
	settingsErr error // invalid settings are reported by every call, not by a failed instance
	api         *apiClient
	logger      log.Logger

	// ctx ends when Grafana disposes the instance, stopping its streams.
	ctx    context.Context
	cancel context.CancelFunc

	// streamInterval is how often RunStream polls; a field so tests can speed it up.
	streamInterval time.Duration
	now            func() time.Time

	infoMu sync.Mutex
	info   Info
	infoAt time.Time
}

// NewDatasource is the instance factory for datasource.Manage. It does not
// fail on bad settings: a failed factory shows Grafana users only a generic
// plugin error, so the reason is reported by CheckHealth and every query.
func NewDatasource(_ context.Context, s backend.DataSourceInstanceSettings) (instancemgmt.Instance, error) {
	return newDatasource(s), nil
}

func newDatasource(s backend.DataSourceInstanceSettings) *Datasource {
	ctx, cancel := context.WithCancel(context.Background())
	d := &Datasource{
		logger:         log.DefaultLogger.With("datasource", s.UID),
		ctx:            ctx,
		cancel:         cancel,
		streamInterval: time.Second,
		now:            time.Now,
	}
	d.settings, d.settingsErr = ParseSettings(s)
	if d.settingsErr == nil {
		d.api = newAPIClient(d.settings, apiMaxInFlight)
	}
	return d
}

// Dispose stops the instance's streams and idle connections; Grafana calls it
// when the settings changed and a new instance replaces this one.
func (d *Datasource) Dispose() {
	d.cancel()
	if d.api != nil {
		d.api.close()
	}
}

// apiInfo returns the API's window sizes and limits, cached briefly: they
// change only when iotpipe restarts with other flags.
//
// The lock is not held during the call: with an unreachable API, concurrent
// queries would otherwise wait for each other's timeouts in turn.
func (d *Datasource) apiInfo(ctx context.Context) (Info, error) {
	d.infoMu.Lock()
	if !d.infoAt.IsZero() && d.now().Sub(d.infoAt) < infoTTL {
		defer d.infoMu.Unlock()
		return d.info, nil
	}
	d.infoMu.Unlock()
	info, err := d.api.info(ctx)
	if err != nil {
		return Info{}, err
	}
	if len(info.WindowSizesSeconds) == 0 {
		return Info{}, &APIError{Status: http.StatusBadGateway, URL: d.settings.URL.String() + "/api/v1/info",
			Message: "no window_sizes_seconds in the answer"}
	}
	d.infoMu.Lock()
	d.info, d.infoAt = info, d.now()
	d.infoMu.Unlock()
	return info, nil
}

// CheckHealth calls /api/v1/info and /api/v1/devices with the configured token.
func (d *Datasource) CheckHealth(ctx context.Context, _ *backend.CheckHealthRequest) (*backend.CheckHealthResult, error) {
	if d.settingsErr != nil {
		return healthError("invalid settings: " + d.settingsErr.Error()), nil
	}
	d.infoMu.Lock()
	d.infoAt = time.Time{} // a health check must see the API as it is now
	d.infoMu.Unlock()
	info, err := d.apiInfo(ctx)
	if err != nil {
		return healthError(healthMessage(err)), nil
	}
	devs, err := d.api.devices(ctx, nil)
	if err != nil {
		return healthError(healthMessage(err)), nil
	}
	return &backend.CheckHealthResult{
		Status: backend.HealthStatusOk,
		Message: fmt.Sprintf("iotpipe API reachable: %d devices, windows %s",
			len(devs), FormatSizes(info.WindowSizesSeconds)),
	}, nil
}

func healthError(msg string) *backend.CheckHealthResult {
	return &backend.CheckHealthResult{Status: backend.HealthStatusError, Message: msg}
}

func healthMessage(err error) string {
	var ae *APIError
	if errors.As(err, &ae) {
		switch {
		case ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden:
			return "token rejected by the iotpipe API"
		case ae.Status == http.StatusNotFound && strings.HasSuffix(ae.URL, "/api/v1/info"):
			// A URL that is not iotpipe's API root, or an iotpipe from before the plugin.
			return err.Error() + " (is the URL the iotpipe API root, e.g. http://iotpipe:8080, and iotpipe recent enough to serve /api/v1/info?)"
		}
	}
	var unknownCA x509.UnknownAuthorityError
	if errors.As(err, &unknownCA) {
		return err.Error() + " (set the CA certificate that signed the iotpipe API's certificate in the datasource's TLS settings)"
	}
	return err.Error()
}

// errorResponse turns any error of a query into a DataResponse with a status
// and a message saying what to fix. Everything here is downstream: the
// query, the settings or the iotpipe API, not the plugin.
func errorResponse(err error) backend.DataResponse {
	status := backend.StatusBadGateway
	msg := err.Error()
	var ae *APIError
	var ue *UnreachableError
	switch {
	case errors.Is(err, errBadQuery):
		status = backend.StatusBadRequest
		msg = strings.TrimPrefix(msg, errBadQuery.Error()+": ")
	case errors.As(err, &ae):
		// Keep the context the query added ("device x: ") but not the URL:
		// users see the API's message.
		prefix := strings.TrimSuffix(msg, ae.Error())
		msg = prefix + ae.Message
		if ae.Code == "" {
			// Not an iotpipe error body (a proxy, or a URL that is not the
			// API root): the URL is the useful part.
			msg = prefix + ae.Error()
		}
		switch {
		case ae.Status == http.StatusUnauthorized:
			status, msg = backend.StatusUnauthorized, "token rejected by the iotpipe API: "+ae.Message
		case ae.Status == http.StatusForbidden:
			status, msg = backend.StatusForbidden, "token not allowed by the iotpipe API: "+ae.Message
		case ae.Status == http.StatusNotFound:
			status = backend.StatusNotFound
		case ae.Status == http.StatusTooManyRequests:
			status = backend.StatusTooManyRequests
		case ae.Status >= 400 && ae.Status < 500:
			status = backend.StatusBadRequest
		default:
			// 5xx: name the URL, the problem is on the API's side.
			status, msg = backend.StatusBadGateway, prefix+ae.Error()
		}
	case errors.As(err, &ue):
		status = backend.StatusBadGateway
	case errors.Is(err, context.DeadlineExceeded):
		status = backend.StatusTimeout
	}
	return backend.ErrDataResponseWithSource(status, backend.ErrorSourceDownstream, msg)
}
