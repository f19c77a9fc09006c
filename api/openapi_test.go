package api

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// The OpenAPI document (openapi.json) is checked against the code three
// ways: the routes registered by routes() and the documented operations are
// the same set; every status the package's code names and every status and
// error code a test of this package observed is documented for the
// operation that answered it (TestMain); the document is well formed.

// oaDoc is the part of an OpenAPI 3.1 document these tests read.
type oaDoc struct {
	OpenAPI    string                                `json:"openapi"`
	Security   []map[string][]string                 `json:"security"`
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		Schemas         map[string]json.RawMessage `json:"schemas"`
		SecuritySchemes map[string]json.RawMessage `json:"securitySchemes"`
	} `json:"components"`
}

type oaParam struct {
	Name     string `json:"name"`
	In       string `json:"in"`
	Required bool   `json:"required"`
}

type oaResponse struct {
	Content map[string]struct {
		Schema struct {
			AllOf []struct {
				Properties struct {
					Code struct {
						Enum []string `json:"enum"`
					} `json:"code"`
				} `json:"properties"`
			} `json:"allOf"`
		} `json:"schema"`
	} `json:"content"`
}

type oaOp struct {
	OperationID string                 `json:"operationId"`
	Security    *[]map[string][]string `json:"security"`
	Parameters  []oaParam              `json:"parameters"`
	Responses   map[string]oaResponse  `json:"responses"`
}

// codes are the error codes a response documents (its code enum).
func (r oaResponse) codes() []string {
	var out []string
	for _, c := range r.Content {
		for _, a := range c.Schema.AllOf {
			out = append(out, a.Properties.Code.Enum...)
		}
	}
	return out
}

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// operations returns "METHOD /path" → operation and the path-level parameters.
func loadDoc(t testing.TB) (map[string]oaOp, map[string][]oaParam, oaDoc) {
	t.Helper()
	var doc oaDoc
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		t.Fatalf("api/openapi.json does not parse: %v", err)
	}
	ops := map[string]oaOp{}
	pathParams := map[string][]oaParam{}
	for path, item := range doc.Paths {
		for key, raw := range item {
			switch {
			case key == "parameters":
				if err := json.Unmarshal(raw, new([]oaParam)); err != nil {
					t.Fatalf("api/openapi.json paths[%q].parameters: %v", path, err)
				}
				var ps []oaParam
				_ = json.Unmarshal(raw, &ps)
				pathParams[path] = ps
			case slices.Contains(httpMethods, key):
				var op oaOp
				if err := json.Unmarshal(raw, &op); err != nil {
					t.Fatalf("api/openapi.json paths[%q].%s: %v", path, key, err)
				}
				ops[strings.ToUpper(key)+" "+path] = op
			case strings.HasPrefix(key, "x-") || key == "summary" || key == "description" || key == "servers":
			default:
				t.Errorf("api/openapi.json paths[%q] has %q, which is not an OpenAPI path item field", path, key)
			}
		}
	}
	return ops, pathParams, doc
}

// registeredRoutes runs routes() and returns the "METHOD /path" patterns it
// registered, and those without a method (mounts).
func registeredRoutes(t testing.TB) (routes, mounts []string) {
	t.Helper()
	s := &Server{cfg: Config{AdminToken: adminTok, ReadToken: readTok, WindowSizes: []time.Duration{time.Second},
		Gatherer: prometheus.NewRegistry(), Logger: zerolog.Nop()}}
	s.routes()
	for _, p := range s.patterns {
		if m, path, ok := strings.Cut(p, " "); ok {
			routes = append(routes, m+" "+strings.TrimSpace(path))
		} else {
			mounts = append(mounts, p)
		}
	}
	return routes, mounts
}

// Every route the server registers is documented, and every documented
// operation is registered. The messages say exactly what to add where, for
// whoever merges a branch that adds routes.
func TestOpenAPICoversEveryRoute(t *testing.T) {
	ops, _, _ := loadDoc(t)
	routes, mounts := registeredRoutes(t)
	if len(routes) < 10 {
		t.Fatalf("routes() registered only %v: the route list is not derived from it", routes)
	}
	if !slices.Equal(mounts, []string{"/api/"}) {
		t.Errorf("patterns without a method %v, want only the /api/ mount: give every route a method so it can be documented", mounts)
	}
	for _, r := range routes {
		if _, ok := ops[r]; !ok {
			m, path, _ := strings.Cut(r, " ")
			t.Errorf("route %q is registered in api/api.go but not documented: add paths[%q].%s to api/openapi.json "+
				"(parameters, request body, every status the handler writes, security)", r, path, strings.ToLower(m))
		}
	}
	for op := range ops {
		if !slices.Contains(routes, op) {
			t.Errorf("api/openapi.json documents %q but api/api.go registers no such route: remove it or register the route", op)
		}
	}
}

// The document is well formed: OpenAPI 3.1, every $ref resolves, operation
// ids are unique, path template parameters are declared, every operation
// answers something and names its security.
func TestOpenAPIDocumentIsWellFormed(t *testing.T) {
	ops, pathParams, doc := loadDoc(t)
	if doc.OpenAPI != "3.1.0" {
		t.Errorf("openapi %q, want 3.1.0", doc.OpenAPI)
	}
	var all any
	if err := json.Unmarshal(openAPI, &all); err != nil {
		t.Fatal(err)
	}
	var walk func(at string, v any)
	walk = func(at string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				name, ok := strings.CutPrefix(ref, "#/components/schemas/")
				if _, found := doc.Components.Schemas[name]; !ok || !found {
					t.Errorf("%s: $ref %q does not resolve", at, ref)
				}
			}
			for k, x := range v {
				walk(at+"/"+k, x)
			}
		case []any:
			for i, x := range v {
				walk(at+"/"+strconv.Itoa(i), x)
			}
		}
	}
	walk("#", all)
	ids := map[string]string{}
	tmpl := regexp.MustCompile(`\{([^}]+)\}`)
	for key, op := range ops {
		if op.OperationID == "" {
			t.Errorf("%s: no operationId", key)
		} else if other, dup := ids[op.OperationID]; dup {
			t.Errorf("%s and %s share operationId %q", key, other, op.OperationID)
		}
		ids[op.OperationID] = key
		if len(op.Responses) == 0 {
			t.Errorf("%s: no responses", key)
		}
		if op.Security == nil && doc.Security == nil {
			t.Errorf("%s: no security requirement", key)
		}
		_, path, _ := strings.Cut(key, " ")
		declared := map[string]bool{}
		for _, p := range append(slices.Clone(pathParams[path]), op.Parameters...) {
			if p.In == "path" {
				if !p.Required {
					t.Errorf("%s: path parameter %q must be required", key, p.Name)
				}
				declared[p.Name] = true
			}
		}
		for _, m := range tmpl.FindAllStringSubmatch(path, -1) {
			if !declared[m[1]] {
				t.Errorf("%s: path parameter {%s} is not declared", key, m[1])
			}
			delete(declared, m[1])
		}
		for name := range declared {
			t.Errorf("%s: declares path parameter %q that is not in the path", key, name)
		}
		for status := range op.Responses {
			if n, err := strconv.Atoi(status); err != nil || n < 100 || n > 599 {
				t.Errorf("%s: response %q is not a status code", key, status)
			}
		}
	}
	for _, name := range []string{"adminToken", "readToken"} {
		if _, ok := doc.Components.SecuritySchemes[name]; !ok {
			t.Errorf("securitySchemes.%s missing", name)
		}
	}
}

// fillPath makes a request path from a template.
func fillPath(path string) string {
	return regexp.MustCompile(`\{[^}]+\}`).ReplaceAllString(path, "0x")
}

// The documented security is what the server does: an operation without
// security answers without a token, every other one answers 401 without
// one; an operation open to readToken is not a 403 with it, and one only for
// adminToken is a 403 with the read token (and documents 401 and 403).
func TestOpenAPISecurityMatchesServer(t *testing.T) {
	ops, _, doc := loadDoc(t)
	s := &Server{cfg: Config{AdminToken: adminTok, ReadToken: readTok, WindowSizes: []time.Duration{time.Second},
		Gatherer: prometheus.NewRegistry(), Logger: zerolog.Nop()}}
	h := s.routes()
	do := func(method, path, token string) int {
		req := httptest.NewRequest(method, fillPath(path), nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		defer func() { _ = recover() }() // a handler past auth may need the registry; only the auth answer matters here
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	for key, op := range ops {
		method, path, _ := strings.Cut(key, " ")
		sec := doc.Security
		if op.Security != nil {
			sec = *op.Security
		}
		schemes := map[string]bool{}
		for _, req := range sec {
			for name := range req {
				schemes[name] = true
			}
		}
		if len(sec) == 0 {
			if got := do(method, path, ""); got == http.StatusUnauthorized || got == http.StatusForbidden {
				t.Errorf("%s is documented without security but answers %d without a token", key, got)
			}
			continue
		}
		if got := do(method, path, ""); got != http.StatusUnauthorized {
			t.Errorf("%s is documented with security but answers %d without a token, not 401", key, got)
		}
		if _, ok := op.Responses["401"]; !ok {
			t.Errorf("%s: 401 not documented", key)
		}
		got := do(method, path, readTok)
		switch {
		case schemes["readToken"] && got == http.StatusForbidden:
			t.Errorf("%s is documented for readToken but answers 403 with it", key)
		case !schemes["readToken"] && got != http.StatusForbidden:
			t.Errorf("%s is documented for adminToken only but answers %d with the read token, not 403", key, got)
		case !schemes["readToken"]:
			if _, ok := op.Responses["403"]; !ok {
				t.Errorf("%s: 403 not documented", key)
			}
		}
	}
}

// Every http.Status constant the package's code writes appears in the
// document; TestMain checks per operation what the tests observed.
func TestOpenAPIDocumentsEveryStatusInCode(t *testing.T) {
	ops, _, _ := loadDoc(t)
	documented := map[string]bool{}
	for _, op := range ops {
		for st := range op.Responses {
			documented[st] = true
		}
	}
	fset := token.NewFileSet()
	files, _ := filepath.Glob("*.go")
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || f == "client.go" {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(af, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok || !strings.HasPrefix(sel.Sel.Name, "Status") {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "http" {
				return true
			}
			code, ok := statusByName[sel.Sel.Name]
			if !ok {
				t.Errorf("%s: add http.%s to statusByName in openapi_test.go", fset.Position(sel.Pos()), sel.Sel.Name)
				return true
			}
			if !documented[strconv.Itoa(code)] {
				t.Errorf("%s: http.%s (%d) is written but no operation in api/openapi.json documents it",
					fset.Position(sel.Pos()), sel.Sel.Name, code)
			}
			return true
		})
	}
}

var statusByName = map[string]int{
	"StatusOK": 200, "StatusCreated": 201, "StatusNoContent": 204, "StatusBadRequest": 400, "StatusUnauthorized": 401,
	"StatusForbidden": 403, "StatusNotFound": 404, "StatusMethodNotAllowed": 405, "StatusConflict": 409, "StatusRequestEntityTooLarge": 413,
	"StatusInternalServerError": 500, "StatusBadGateway": 502, "StatusServiceUnavailable": 503, "StatusGatewayTimeout": 504,
}

// ---- what the tests observe ----

// observed collects every answer the API servers of this package's tests
// gave, from their request log: method, route, status and error code.
var observed = struct {
	sync.Mutex
	answers map[string]int // "METHOD path|route|status|code" → count
}{answers: map[string]int{}}

type observer struct{}

func (observer) Write(p []byte) (int, error) {
	var e struct {
		Message, Method, Path, Route, Code string
		Status                             int
	}
	if json.Unmarshal(p, &e) == nil && e.Message == "http request" {
		observed.Lock()
		observed.answers[fmt.Sprintf("%s|%s|%s|%d|%s", e.Method, e.Path, e.Route, e.Status, e.Code)]++
		observed.Unlock()
	}
	return len(p), nil
}

// testLogger is the logger of the tests' API servers: it records their
// answers for checkObserved.
func testLogger() zerolog.Logger { return zerolog.New(observer{}).Level(zerolog.DebugLevel) }

// checkObserved returns one line per observed answer the document does not
// describe: an operation that is not documented, a status it does not list,
// or an error code not in that status's code enum.
func checkObserved() []string {
	var doc oaDoc
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		return []string{"api/openapi.json does not parse: " + err.Error()}
	}
	ops, _, _ := loadDoc(fatalTB{})
	type tmpl struct {
		re  *regexp.Regexp
		key string
	}
	var tmpls []tmpl
	for key := range ops {
		m, path, _ := strings.Cut(key, " ")
		re := "^" + m + " " + regexp.MustCompile(`\\\{[^}]+\\\}`).ReplaceAllString(regexp.QuoteMeta(path), `[^/]+`) + "$"
		tmpls = append(tmpls, tmpl{regexp.MustCompile(re), key})
	}
	var bad []string
	observed.Lock()
	defer observed.Unlock()
	for a := range observed.answers {
		f := strings.Split(a, "|")
		method, path, route, status, code := f[0], f[1], f[2], f[3], f[4]
		if route == "" {
			continue // no route matched: the router's own 404/405
		}
		if method == http.MethodHead {
			method = http.MethodGet
		}
		key := ""
		for _, t := range tmpls {
			if t.re.MatchString(method + " " + path) {
				key = t.key
			}
		}
		if key == "" {
			bad = append(bad, fmt.Sprintf("%s %s (route %q) answered %s but is not documented", method, path, route, status))
			continue
		}
		resp, ok := ops[key].Responses[status]
		if !ok {
			bad = append(bad, fmt.Sprintf("%s answered %s (code %q), which api/openapi.json does not list for it", key, status, code))
			continue
		}
		if code != "" && !slices.Contains(resp.codes(), code) {
			bad = append(bad, fmt.Sprintf("%s answered %s with code %q, not in its documented codes %v", key, status, code, resp.codes()))
		}
	}
	sort.Strings(bad)
	return bad
}

// fatalTB lets loadDoc run outside a test; the document parsed once already.
type fatalTB struct{ testing.TB }

func (fatalTB) Helper()                        {}
func (fatalTB) Fatalf(format string, a ...any) { panic(fmt.Sprintf(format, a...)) }
func (fatalTB) Errorf(format string, a ...any) { panic(fmt.Sprintf(format, a...)) }

func TestMain(m *testing.M) {
	code := m.Run()
	if bad := checkObserved(); len(bad) > 0 {
		fmt.Fprintf(os.Stderr, "--- FAIL: answers observed by the tests that api/openapi.json does not document:\n  %s\n",
			strings.Join(bad, "\n  "))
		code = 1
	}
	observed.Lock()
	n := len(observed.answers)
	observed.Unlock()
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "checked %d distinct observed answers against api/openapi.json\n", n)
	}
	os.Exit(code)
}

// GET /api/v1/openapi.json answers the embedded document without a token,
// as JSON; other /api/v1 routes still need one.
func TestOpenAPIServed(t *testing.T) {
	s := &Server{cfg: Config{AdminToken: adminTok, WindowSizes: []time.Duration{time.Second},
		Gatherer: prometheus.NewRegistry(), Logger: testLogger()}}
	srv := httptest.NewServer(s.routes())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/api/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != http.StatusOK ||
		resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content type %q, decode %v", resp.StatusCode, resp.Header.Get("Content-Type"), err)
	}
	if got["openapi"] != "3.1.0" || len(got["paths"].(map[string]any)) == 0 {
		t.Fatalf("served document: openapi %v, %d paths", got["openapi"], len(got["paths"].(map[string]any)))
	}
	resp, err = http.Get(srv.URL + "/api/v1/info")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/api/v1/info without a token: %d, want 401", resp.StatusCode)
	}
}
