package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotpipe/iotpipe/api"
)

// opsServer serves health and metrics for subcommands without the API.
type opsServer struct {
	ln  net.Listener
	srv *http.Server
}

func newOpsServer(addr string, g prometheus.Gatherer, ready func(context.Context) error) (*opsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return &opsServer{ln: ln, srv: &http.Server{Handler: api.Operational(g, ready), ReadHeaderTimeout: 10 * time.Second}}, nil
}

func (s *opsServer) run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.srv.Shutdown(sctx)
}
