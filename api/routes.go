package api

import (
	_ "embed"
	"net/http"
)

// openAPI is the OpenAPI 3.1 document of this API, served at
// GET /api/v1/openapi.json. openapi_test.go keeps it honest: every route
// registered in routes() is documented and every documented one exists.
//
//go:embed openapi.json
var openAPI []byte

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(openAPI)
}

// routeMux is a ServeMux that notes the patterns registered on it, so the
// list of routes is derived from the code that registers them.
type routeMux struct {
	*http.ServeMux
	patterns *[]string
}

func (s *Server) newMux() routeMux { return routeMux{http.NewServeMux(), &s.patterns} }

func (m routeMux) Handle(pattern string, h http.Handler) {
	*m.patterns = append(*m.patterns, pattern)
	m.ServeMux.Handle(pattern, h)
}

func (m routeMux) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	m.Handle(pattern, http.HandlerFunc(h))
}
