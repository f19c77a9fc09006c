package deploy

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
)

// stage is one FROM … [AS name] section of the Dockerfile, with line
// continuations joined.
type stage struct {
	name         string
	base         string // FROM image, ${ARG}s resolved from the global ARG defaults
	index        int
	instructions [][2]string // (INSTRUCTION, rest)
	text         string      // the stage's joined instructions, for substring checks
	env          map[string]string
}

func (s stage) all(instr string) []string {
	var out []string
	for _, in := range s.instructions {
		if in[0] == instr {
			out = append(out, in[1])
		}
	}
	return out
}

var (
	dfOnce   sync.Once
	dfStages map[string]stage
	dfOrder  []string
	dfErr    error
)

func dockerfileStages(t *testing.T) map[string]stage {
	t.Helper()
	dfOnce.Do(func() { dfStages, dfOrder, dfErr = parseDockerfile(filepath.Join(repoRoot, "Dockerfile")) })
	if dfErr != nil {
		t.Fatalf("Dockerfile: %v", dfErr)
	}
	return dfStages
}

func dockerfileStage(t *testing.T, name string) stage {
	t.Helper()
	s, ok := dockerfileStages(t)[name]
	if !ok {
		t.Fatalf("Dockerfile has no stage %q (stages %v)", name, dfOrder)
	}
	return s
}

var argRef = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`)

func parseDockerfile(path string) (map[string]stage, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	var lines []string
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if strings.HasPrefix(line, "#") { // comment inside a continued instruction
			continue
		}
		if rest, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(rest + " ")
			continue
		}
		cur.WriteString(line)
		lines = append(lines, cur.String())
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	globalArgs := map[string]string{}
	stages := map[string]stage{}
	var order []string
	var st *stage
	flush := func() {
		if st != nil {
			stages[st.name] = *st
			order = append(order, st.name)
		}
	}
	for _, l := range lines {
		instr, rest, _ := strings.Cut(l, " ")
		instr = strings.ToUpper(instr)
		rest = strings.TrimSpace(rest)
		if instr == "ARG" && st == nil {
			k, v, _ := strings.Cut(rest, "=")
			globalArgs[k] = v
			continue
		}
		if instr == "FROM" {
			flush()
			fields := strings.Fields(rest)
			var image string
			for _, fl := range fields {
				if !strings.HasPrefix(fl, "--") {
					image = fl
					break
				}
			}
			image = argRef.ReplaceAllStringFunc(image, func(ref string) string {
				return globalArgs[argRef.FindStringSubmatch(ref)[1]]
			})
			name := ""
			if n := len(fields); n >= 3 && strings.EqualFold(fields[n-2], "AS") {
				name = fields[n-1]
			}
			if name == "" {
				name = "#" + string(rune('0'+len(order)))
			}
			st = &stage{name: name, base: image, index: len(order), env: map[string]string{}}
			continue
		}
		if st == nil {
			continue
		}
		st.instructions = append(st.instructions, [2]string{instr, rest})
		st.text += l + "\n"
		if instr == "ENV" {
			for _, kv := range strings.Fields(rest) {
				if k, v, ok := strings.Cut(kv, "="); ok {
					st.env[k] = strings.Trim(v, `"`)
				}
			}
		}
	}
	flush()
	return stages, order, nil
}

func TestDockerfileStages(t *testing.T) {
	stages := dockerfileStages(t)
	for _, name := range []string{"build", "plugin-frontend", "plugin-backend", "plugin", "runtime"} {
		if _, ok := stages[name]; !ok {
			t.Errorf("Dockerfile: no stage %q (stages %v)", name, dfOrder)
		}
	}
	// `docker build .` without --target builds the last stage: that must be the runtime.
	if last := dfOrder[len(dfOrder)-1]; last != "runtime" {
		t.Errorf("Dockerfile: last stage is %q; make it runtime so a plain `docker build` gives the iotpipe image", last)
	}
	wantBase := map[string]string{
		"build":           "golang:1.26-bookworm",
		"plugin-backend":  "golang:1.26-bookworm",
		"plugin-frontend": "node:20-bookworm",
	}
	for name, want := range wantBase {
		if got := stages[name].base; got != want {
			t.Errorf("Dockerfile stage %s: FROM %q, want %q", name, got, want)
		}
	}
	for _, s := range stages {
		if _, isStage := stages[s.base]; isStage {
			continue
		}
		if !strings.Contains(s.base, ":") || strings.HasSuffix(s.base, ":latest") {
			t.Errorf("Dockerfile stage %s: base image %q is not pinned to a tag", s.name, s.base)
		}
	}
}

// The Go images must be new enough for the go directives of both modules.
func TestDockerfileGoVersion(t *testing.T) {
	for _, mod := range []struct{ stage, gomod string }{
		{"build", "go.mod"},
		{"plugin-backend", filepath.Join("grafana-plugin", "go.mod")},
	} {
		base := dockerfileStage(t, mod.stage).base
		tag := strings.TrimPrefix(base, "golang:")
		have, ok := parseVersion(tag)
		if !ok {
			t.Errorf("stage %s: cannot read a Go version from %q", mod.stage, base)
			continue
		}
		b, err := os.ReadFile(filepath.Join(repoRoot, mod.gomod))
		if os.IsNotExist(err) {
			t.Logf("%s does not exist yet", mod.gomod)
			continue
		} else if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(b)
		if m == nil {
			t.Errorf("%s: no go directive", mod.gomod)
			continue
		}
		want, _ := parseVersion(string(m[1]))
		if compareVersions(have[:min(2, len(have))], want) < 0 {
			t.Errorf("stage %s: %s is older than %s's go %s", mod.stage, base, mod.gomod, m[1])
		}
	}
}

func TestDockerfileRuntime(t *testing.T) {
	rt := dockerfileStage(t, "runtime")
	// purego (chDB's binding) links iotpipe against glibc even with CGO_ENABLED=0.
	for _, bad := range []string{"alpine", "distroless/static", "scratch", "busybox"} {
		if strings.Contains(rt.base, bad) {
			t.Errorf("runtime stage: base %q has no glibc, which the iotpipe binary links", rt.base)
		}
	}
	users := rt.all("USER")
	if len(users) == 0 {
		t.Fatalf("runtime stage: no USER; it would run as root")
	}
	user, _, _ := strings.Cut(users[len(users)-1], ":")
	if user == "root" || user == "0" || user == "" {
		t.Errorf("runtime stage: USER %q is root", users[len(users)-1])
	}
	if len(rt.all("HEALTHCHECK")) > 0 {
		t.Errorf("runtime stage: HEALTHCHECK belongs in docker-compose.yml, not the image")
	}
	ep := rt.all("ENTRYPOINT")
	if len(ep) == 0 || !strings.Contains(ep[len(ep)-1], "iotpipe") {
		t.Errorf("runtime stage: ENTRYPOINT %v, want iotpipe", ep)
	}
	exposed := strings.Fields(strings.Join(rt.all("EXPOSE"), " "))
	for _, p := range []string{"1883", "8080"} {
		if !slices.Contains(exposed, p) && !slices.Contains(exposed, p+"/tcp") {
			t.Errorf("runtime stage: EXPOSE %v lacks %s", exposed, p)
		}
	}
	vol := strings.Join(rt.all("VOLUME"), " ")
	dataDir := rt.env["IOTPIPE_DATA_DIR"]
	if dataDir == "" || !strings.Contains(vol, dataDir) {
		t.Errorf("runtime stage: VOLUME %q should hold the data dir IOTPIPE_DATA_DIR=%q", vol, dataDir)
	}
	if !strings.Contains(rt.text, "--from=build") {
		t.Errorf("runtime stage: does not copy the binary from the build stage")
	}
	if b := dockerfileStage(t, "build"); !strings.Contains(b.text, "CGO_ENABLED=0") || !strings.Contains(b.text, "./cmd/iotpipe") {
		t.Errorf("build stage: want a static (CGO_ENABLED=0) build of ./cmd/iotpipe")
	}
}

func TestDockerfilePlugin(t *testing.T) {
	exe := "gpx_iotpipe"
	if pj, ok := loadPluginJSON(t); ok {
		exe = pj.Executable
	}
	be := dockerfileStage(t, "plugin-backend")
	for _, arch := range []string{"amd64", "arm64"} {
		if name := exe + "_linux_" + arch; !strings.Contains(be.text, name) {
			t.Errorf("plugin-backend stage does not build %s (plugin.json executable %q)", name, exe)
		}
	}
	if !strings.Contains(be.text, "./pkg") {
		t.Errorf("plugin-backend stage: want `go build ./pkg` of grafana-plugin")
	}
	fe := dockerfileStage(t, "plugin-frontend")
	for _, want := range []string{"npm ci", "npm run build"} {
		if !strings.Contains(fe.text, want) {
			t.Errorf("plugin-frontend stage: no %q", want)
		}
	}
	pl := dockerfileStage(t, "plugin")
	for _, from := range []string{"--from=plugin-frontend", "--from=plugin-backend"} {
		if !strings.Contains(pl.text, from) {
			t.Errorf("plugin stage: does not COPY %s", from)
		}
	}
}

func TestDockerignore(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	// node_modules is ~830 MB and host-built (wrong platform); .env holds secrets.
	for _, want := range []string{".git", "**/node_modules", ".env"} {
		if !slices.Contains(lines, want) {
			t.Errorf(".dockerignore lacks %q", want)
		}
	}
	// The build needs these in the context.
	for _, need := range []string{"go.mod", "go.sum", "cmd", "grafana-plugin"} {
		for _, l := range lines {
			if strings.TrimPrefix(strings.TrimSuffix(l, "/"), "/") == need {
				t.Errorf(".dockerignore excludes %s, which the build needs", need)
			}
		}
	}
}
