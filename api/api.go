// Package api serves iotpipe's HTTP API: the device registry admin, series
// and summary queries re-aggregated from stored windows, and the operational
// endpoints /healthz, /readyz and /metrics.
//
//	srv, err := api.New(api.Config{Addr: ":8080", Registry: reg, Store: store, AdminToken: tok, ...})
//	go srv.Run(ctx)
//
// Every /api/v1 route requires "Authorization: Bearer <token>": the admin
// token may do everything, the optional read token (for dashboards) only
// GET. Errors are JSON {"error": "...", "code": "..."} with a deliberate
// status: 400 for bad parameters, 401 for a missing or wrong token, 403 for
// a write with the read token, 404 for an unknown device, 409 for a
// duplicate or a stale config version, 413 for a config above 64 KiB, 503
// when a dependency is down. Commands add 409 for a device not connected or
// not subscribed, 413, 502 and 504 (commands.go).
package api

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/iotpipe/iotpipe/devicestate"
	"github.com/iotpipe/iotpipe/downlink"
	"github.com/iotpipe/iotpipe/registry"
	"github.com/iotpipe/iotpipe/storage"
)

// Config configures the API server.
type Config struct {
	Addr     string // listen address, e.g. ":8080"; "127.0.0.1:0" picks a free port
	Registry *registry.Registry
	Store    *storage.Store
	// States, if set, serves GET /api/v1/devices/{id}/state and the
	// devices' last_state_time; nil answers 503 there.
	States     *devicestate.Store
	AdminToken string // required: bearer token for /api/v1
	// ReadToken, if set, is a second bearer token that may only read (GET):
	// what a Grafana datasource should hold.
	ReadToken string
	// WindowSizes are the stored window sizes, finest first after New; used
	// to choose a default step.
	WindowSizes []time.Duration
	// MaxPoints caps the buckets a series may return (default 11000) so one
	// request cannot make the server build an unbounded response.
	MaxPoints int
	// Ready reports whether the process can serve traffic (Kafka, storage,
	// registry caught up); nil means always ready.
	Ready    func(context.Context) error
	Gatherer prometheus.Gatherer // served on /metrics; nil = prometheus.DefaultGatherer
	Logger   zerolog.Logger
	// TLS, if set, serves HTTPS (TLS 1.2 or later) instead of HTTP.
	TLS *tls.Config

	// Commands, if set, sends commands to devices and tells their presence
	// (POST /api/v1/devices/{id}/commands, "connected" in the device JSON).
	Commands *downlink.Hub
}

// Server is the HTTP API.
type Server struct {
	cfg Config
	ln  net.Listener
	srv *http.Server
	// patterns are the routes routes() registered, in order: what the
	// OpenAPI test checks the document against (routes.go).
	patterns []string
}

// New validates cfg and binds the listen address, so a port clash fails here
// and Addr is known before Run.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Registry == nil:
		return nil, errors.New("api: Registry is required")
	case cfg.Store == nil:
		return nil, errors.New("api: Store is required")
	case len(cfg.AdminToken) < 16:
		return nil, errors.New("api: AdminToken must be at least 16 characters")
	case cfg.ReadToken != "" && len(cfg.ReadToken) < 16:
		return nil, errors.New("api: ReadToken must be empty or at least 16 characters")
	case cfg.ReadToken != "" && cfg.ReadToken == cfg.AdminToken:
		return nil, errors.New("api: ReadToken must differ from AdminToken")
	case len(cfg.WindowSizes) == 0:
		return nil, errors.New("api: WindowSizes is required")
	}
	if cfg.Addr == "" {
		cfg.Addr = ":8080"
	}
	if cfg.MaxPoints <= 0 {
		cfg.MaxPoints = 11000
	}
	if cfg.Gatherer == nil {
		cfg.Gatherer = prometheus.DefaultGatherer
	}
	finest := cfg.WindowSizes[0]
	for _, s := range cfg.WindowSizes {
		if s <= 0 {
			return nil, fmt.Errorf("api: window size %v must be positive", s)
		}
		finest = min(finest, s)
	}
	cfg.WindowSizes = append([]time.Duration{finest}, cfg.WindowSizes...)
	var tlsCfg *tls.Config
	if cfg.TLS != nil {
		var err error
		if tlsCfg, err = serverTLS(cfg.TLS); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("api: listen %s: %w", cfg.Addr, err)
	}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	cfg.Logger = cfg.Logger.With().Str("component", "api").Logger()
	s := &Server{cfg: cfg, ln: ln}
	s.srv = &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          nil,
	}
	return s, nil
}

// Addr is the bound listen address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Run serves until ctx is done, then shuts down, letting requests in flight
// finish for up to five seconds.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("api: serve: %w", err)
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(shutCtx); err != nil {
		return fmt.Errorf("api: shutdown: %w", err)
	}
	return nil
}

func (s *Server) routes() http.Handler {
	mux := s.newMux()
	ops := Operational(s.cfg.Gatherer, s.cfg.Ready)
	for _, p := range []string{"GET /healthz", "GET /readyz", "GET /metrics"} {
		mux.Handle(p, ops)
	}

	mux.HandleFunc("GET /api/v1/openapi.json", serveOpenAPI) // no token: it is the contract, no data

	v1 := s.newMux()
	v1.HandleFunc("POST /api/v1/devices", s.createDevice)
	v1.HandleFunc("GET /api/v1/devices", s.listDevices)
	v1.HandleFunc("GET /api/v1/devices/{id}", s.getDevice)
	v1.HandleFunc("PATCH /api/v1/devices/{id}", s.updateDevice)
	v1.HandleFunc("DELETE /api/v1/devices/{id}", s.deleteDevice)
	v1.HandleFunc("POST /api/v1/devices/{id}/credentials", s.addCredential)
	v1.HandleFunc("DELETE /api/v1/devices/{id}/credentials/{index}", s.removeCredential)
	v1.HandleFunc("POST /api/v1/devices/{id}/block", s.setBlocked(true))
	v1.HandleFunc("POST /api/v1/devices/{id}/unblock", s.setBlocked(false))
	v1.HandleFunc("POST /api/v1/devices/{id}/config", s.setConfig)
	v1.HandleFunc("GET /api/v1/devices/{id}/config", s.getConfig)
	v1.HandleFunc("GET /api/v1/devices/{id}/config/versions", s.configVersions)
	v1.HandleFunc("GET /api/v1/devices/{id}/state", s.getState)
	v1.HandleFunc("POST /api/v1/devices/{id}/commands", s.sendCommand)
	v1.HandleFunc("GET /api/v1/series", s.series)
	v1.HandleFunc("GET /api/v1/summary", s.summary)
	v1.HandleFunc("GET /api/v1/windows", s.windows)
	v1.HandleFunc("GET /api/v1/metrics", s.metrics)
	v1.HandleFunc("GET /api/v1/info", s.info)
	mux.Handle("/api/", s.authenticate(v1))
	return s.logRequests(mux)
}

// Operational serves /healthz (the process is up), /readyz (ready reports
// nil; nil ready means always) and /metrics. The scale-out subcommands that
// have no API serve it alone.
func Operational(g prometheus.Gatherer, ready func(context.Context) error) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ready != nil {
			ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
			defer cancel()
			if err := ready(ctx); err != nil {
				writeError(w, http.StatusServiceUnavailable, "not_ready", err.Error())
				return
			}
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	return mux
}

func (s *Server) authenticate(next http.Handler) http.Handler {
	admin := []byte("Bearer " + s.cfg.AdminToken)
	var read []byte
	if s.cfg.ReadToken != "" {
		read = []byte("Bearer " + s.cfg.ReadToken)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		// Both comparisons always run, so timing tells nothing about which
		// token came close.
		isAdmin := subtle.ConstantTimeCompare(got, admin) == 1
		isRead := read != nil && subtle.ConstantTimeCompare(got, read) == 1
		switch {
		case isAdmin:
		case isRead && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		case isRead:
			writeError(w, http.StatusForbidden, "forbidden", "the read-only token may not "+r.Method+"; use the admin token")
			return
		default:
			w.Header().Set("WWW-Authenticate", `Bearer realm="iotpipe"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "missing or invalid bearer token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	code   string // the error code, if writeError answered
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		// Query strings are not logged: they are user input of unbounded size.
		// r.Pattern is the innermost route matched (the muxes set it on r).
		s.cfg.Logger.Debug().Str("method", r.Method).Str("path", r.URL.Path).Str("route", r.Pattern).
			Int("status", rec.status).Str("code", rec.code).Dur("took", time.Since(start)).Msg("http request")
	})
}
