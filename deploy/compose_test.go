// Package deploy holds static checks of the docker compose stack, the
// Dockerfile and the Grafana provisioning. No Docker is needed: the files are
// parsed and cross-checked against each other and against the code (the
// iotpipe binary's flags, the simulator's payload, the plugin's plugin.json).
package deploy

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// repoRoot is where docker-compose.yml lives; tests run in deploy/.
const repoRoot = ".."

// pluginIDFallback is the spec's plugin id, used only while
// grafana-plugin/src/plugin.json does not exist yet.
const pluginIDFallback = "iotpipe-iotpipe-datasource"

// ---- compose model. Compose accepts several spellings for most keys; these
// types accept the ones the file may reasonably use and normalise them.

type composeFile struct {
	Name     string                    `yaml:"name"`
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Build       *buildSpec        `yaml:"build"`
	Command     stringList        `yaml:"command"`
	Entrypoint  stringList        `yaml:"entrypoint"`
	Environment envMap            `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Volumes     []string          `yaml:"volumes"`
	Healthcheck *healthcheck      `yaml:"healthcheck"`
	DependsOn   dependsOn         `yaml:"depends_on"`
	Profiles    []string          `yaml:"profiles"`
	Ulimits     map[string]ulimit `yaml:"ulimits"`
	Restart     string            `yaml:"restart"`
}

type buildSpec struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
	Target     string `yaml:"target"`
}

func (b *buildSpec) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode { // build: .
		b.Context = n.Value
		return nil
	}
	type plain buildSpec
	return n.Decode((*plain)(b))
}

type healthcheck struct {
	Test        stringList `yaml:"test"`
	Interval    string     `yaml:"interval"`
	Timeout     string     `yaml:"timeout"`
	Retries     int        `yaml:"retries"`
	StartPeriod string     `yaml:"start_period"`
	Disable     bool       `yaml:"disable"`
}

type ulimit struct{ Soft, Hard int }

func (u *ulimit) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		v, err := strconv.Atoi(n.Value)
		u.Soft, u.Hard = v, v
		return err
	}
	var m struct{ Soft, Hard int }
	err := n.Decode(&m)
	u.Soft, u.Hard = m.Soft, m.Hard
	return err
}

// stringList is a command, entrypoint or healthcheck test: a list, or a
// string (split on blanks, as compose does for command).
type stringList []string

func (s *stringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*s = strings.Fields(n.Value)
		return nil
	}
	var l []string
	if err := n.Decode(&l); err != nil {
		return err
	}
	*s = l
	return nil
}

// envMap is environment as a map or a list of KEY=VALUE.
type envMap map[string]string

func (e *envMap) UnmarshalYAML(n *yaml.Node) error {
	out := envMap{}
	switch n.Kind {
	case yaml.MappingNode:
		var m map[string]any
		if err := n.Decode(&m); err != nil {
			return err
		}
		for k, v := range m {
			if v == nil {
				out[k] = ""
			} else {
				out[k] = fmt.Sprint(v)
			}
		}
	case yaml.SequenceNode:
		var l []string
		if err := n.Decode(&l); err != nil {
			return err
		}
		for _, kv := range l {
			k, v, _ := strings.Cut(kv, "=")
			out[k] = v
		}
	default:
		return fmt.Errorf("environment: unexpected %v", n.Tag)
	}
	*e = out
	return nil
}

// dependsOn maps a service to its condition; the short list form means
// service_started.
type dependsOn map[string]string

func (d *dependsOn) UnmarshalYAML(n *yaml.Node) error {
	out := dependsOn{}
	switch n.Kind {
	case yaml.SequenceNode:
		var l []string
		if err := n.Decode(&l); err != nil {
			return err
		}
		for _, s := range l {
			out[s] = "service_started"
		}
	case yaml.MappingNode:
		var m map[string]struct {
			Condition string `yaml:"condition"`
		}
		if err := n.Decode(&m); err != nil {
			return err
		}
		for s, c := range m {
			if c.Condition == "" {
				c.Condition = "service_started"
			}
			out[s] = c.Condition
		}
	default:
		return fmt.Errorf("depends_on: unexpected %v", n.Tag)
	}
	*d = out
	return nil
}

// mount is one short-syntax volume entry: source:target[:mode].
type mount struct{ source, target, mode string }

func (m mount) named() bool {
	return m.source != "" && !strings.HasPrefix(m.source, ".") && !strings.HasPrefix(m.source, "/") && !strings.HasPrefix(m.source, "~")
}

func (s composeService) mounts(t *testing.T) []mount {
	t.Helper()
	var out []mount
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		switch len(parts) {
		case 1: // anonymous volume
			out = append(out, mount{target: parts[0]})
		case 2:
			out = append(out, mount{source: parts[0], target: parts[1]})
		case 3:
			out = append(out, mount{source: parts[0], target: parts[1], mode: parts[2]})
		default:
			t.Errorf("volume %q: want source:target[:mode]", v)
		}
	}
	return out
}

func (s composeService) mountAt(t *testing.T, target string) (mount, bool) {
	for _, m := range s.mounts(t) {
		if m.target == target {
			return m, true
		}
	}
	return mount{}, false
}

var (
	composeOnce   sync.Once
	composeParsed composeFile
	composeRaw    []byte
	composeErr    error
)

func loadCompose(t *testing.T) (composeFile, []byte) {
	t.Helper()
	composeOnce.Do(func() {
		composeRaw, composeErr = os.ReadFile(filepath.Join(repoRoot, "docker-compose.yml"))
		if composeErr != nil {
			return
		}
		dec := yaml.NewDecoder(bytes.NewReader(composeRaw))
		composeErr = dec.Decode(&composeParsed)
	})
	if composeErr != nil {
		t.Fatalf("docker-compose.yml: %v", composeErr)
	}
	return composeParsed, composeRaw
}

func service(t *testing.T, name string) composeService {
	t.Helper()
	c, _ := loadCompose(t)
	s, ok := c.Services[name]
	if !ok {
		t.Fatalf("docker-compose.yml has no service %q", name)
	}
	return s
}

// The services of the stack and what they are for.
var (
	coreServices = []string{"kafka", "clickhouse", "iotpipe", "grafana-plugin", "grafana"}
	// Services built from this repository's Dockerfile, running the iotpipe binary.
	iotpipeServices = []string{"iotpipe", "simulate"}
	healthChecked   = []string{"kafka", "clickhouse", "iotpipe", "grafana"}
)

func TestComposeServicesExist(t *testing.T) {
	c, _ := loadCompose(t)
	for _, name := range append(slices.Clone(coreServices), "simulate") {
		if _, ok := c.Services[name]; !ok {
			t.Errorf("service %q missing", name)
		}
	}
	for name := range c.Services {
		if !slices.Contains(coreServices, name) && name != "simulate" {
			t.Logf("service %q is not one the tests know; add its checks here", name)
		}
	}
}

func TestComposeProfiles(t *testing.T) {
	// `docker compose up` must start the whole stack; only the simulator waits for its profile.
	for _, name := range coreServices {
		if p := service(t, name).Profiles; len(p) > 0 {
			t.Errorf("service %q has profiles %v; `docker compose up` would not start it", name, p)
		}
	}
	if p := service(t, "simulate").Profiles; !slices.Equal(p, []string{"simulate"}) {
		t.Errorf("service simulate: profiles %v, want [simulate]", p)
	}
}

var pinnedTag = regexp.MustCompile(`^[a-z0-9][a-z0-9._/-]*:([A-Za-z0-9][A-Za-z0-9._-]*)(@sha256:[0-9a-f]{64})?$`)

func TestComposeImagesPinned(t *testing.T) {
	c, _ := loadCompose(t)
	for name, s := range c.Services {
		if s.Image == "" {
			t.Errorf("service %q: no image name; give every service an explicit name:tag (built ones too, so they are predictable)", name)
			continue
		}
		m := pinnedTag.FindStringSubmatch(s.Image)
		switch {
		case m == nil:
			t.Errorf("service %q: image %q has no explicit tag", name, s.Image)
		case m[1] == "latest":
			t.Errorf("service %q: image %q uses :latest", name, s.Image)
		case s.Build == nil && !regexp.MustCompile(`\d`).MatchString(m[1]):
			t.Errorf("service %q: pulled image %q must be pinned to a version, not %q", name, s.Image, m[1])
		}
	}
	want := map[string]string{
		"kafka":      "apache/kafka:",
		"clickhouse": "clickhouse/clickhouse-server:",
		"grafana":    "grafana/grafana:12.",
	}
	for name, prefix := range want {
		if img := service(t, name).Image; !strings.HasPrefix(img, prefix) {
			t.Errorf("service %q: image %q, want %s…", name, img, prefix)
		}
	}
}

// The Grafana image must be at least the Grafana the plugin is built against
// (@grafana/runtime in package.json) and satisfy plugin.json's grafanaDependency.
func TestComposeGrafanaVersionFitsPlugin(t *testing.T) {
	img := service(t, "grafana").Image
	_, tag, _ := strings.Cut(img, ":")
	have, ok := parseVersion(tag)
	if !ok {
		t.Fatalf("grafana image tag %q is not a version", tag)
	}
	pkgPath := filepath.Join(repoRoot, "grafana-plugin", "package.json")
	var pkg struct {
		Dependencies map[string]string `json:"dependencies"`
	}
	if readJSON(t, pkgPath, &pkg) {
		dep := pkg.Dependencies["@grafana/runtime"]
		if want, ok := parseVersion(strings.TrimLeft(dep, "^~=")); !ok {
			t.Errorf("package.json @grafana/runtime %q: not a version", dep)
		} else if compareVersions(have, want) < 0 {
			t.Errorf("grafana image %s is older than the @grafana/runtime %s the plugin is built with", tag, dep)
		}
	} else {
		t.Logf("%s does not exist yet; Grafana version not checked against it", pkgPath)
	}
	if pj, ok := loadPluginJSON(t); ok {
		dep := pj.Dependencies.GrafanaDependency
		if rest, found := strings.CutPrefix(dep, ">="); found {
			want, ok := parseVersion(strings.TrimSpace(rest))
			if !ok {
				t.Errorf("plugin.json grafanaDependency %q: not understood", dep)
			} else if compareVersions(have, want) < 0 {
				t.Errorf("grafana image %s does not satisfy plugin.json grafanaDependency %q", tag, dep)
			}
		} else if dep != "" {
			t.Logf("plugin.json grafanaDependency %q: only >=X.Y.Z is checked", dep)
		}
	}
}

func TestComposeHealthchecks(t *testing.T) {
	// What each check must probe, so a check cannot degrade into `true`.
	probes := map[string][]string{
		"kafka":      {"kafka-broker-api-versions", "kafka-topics", "kafka-cluster"},
		"clickhouse": {"SELECT 1", "/ping"},
		"iotpipe":    {"/readyz"},
		"grafana":    {"/api/health"},
	}
	for _, name := range healthChecked {
		hc := service(t, name).Healthcheck
		if hc == nil || hc.Disable || len(hc.Test) == 0 {
			t.Errorf("service %q: no healthcheck", name)
			continue
		}
		if kind := hc.Test[0]; kind != "CMD" && kind != "CMD-SHELL" {
			t.Errorf("service %q: healthcheck test %q must start with CMD or CMD-SHELL", name, hc.Test)
			continue
		}
		cmd := strings.Join(hc.Test[1:], " ")
		if !slices.ContainsFunc(probes[name], func(p string) bool { return strings.Contains(cmd, p) }) {
			t.Errorf("service %q: healthcheck %q probes none of %q", name, cmd, probes[name])
		}
		if hc.Interval == "" || hc.Retries == 0 {
			t.Errorf("service %q: healthcheck needs an interval and retries (got %q, %d)", name, hc.Interval, hc.Retries)
		}
	}
	// iotpipe's check runs inside our own image: the tool it calls must be installed there.
	hc := service(t, "iotpipe").Healthcheck
	if hc != nil && len(hc.Test) > 1 {
		tool := strings.Fields(strings.Join(hc.Test[1:], " "))[0]
		rt := dockerfileStage(t, "runtime")
		if !strings.Contains(rt.text, " "+tool) {
			t.Errorf("iotpipe healthcheck calls %q, which the Dockerfile's runtime stage does not install", tool)
		}
		if port := "8080"; !strings.Contains(strings.Join(hc.Test, " "), ":"+port+"/") {
			t.Errorf("iotpipe healthcheck %q does not probe the API port %s", hc.Test, port)
		}
	}
}

func TestComposeDependsOn(t *testing.T) {
	want := map[string]map[string]string{
		"iotpipe":  {"kafka": "service_healthy", "clickhouse": "service_healthy"},
		"grafana":  {"iotpipe": "service_healthy", "grafana-plugin": "service_completed_successfully"},
		"simulate": {"iotpipe": "service_healthy"},
	}
	for name, deps := range want {
		got := service(t, name).DependsOn
		for dep, cond := range deps {
			if got[dep] != cond {
				t.Errorf("service %q depends_on %q: condition %q, want %q", name, dep, got[dep], cond)
			}
		}
	}
	c, _ := loadCompose(t)
	for name, s := range c.Services {
		for dep, cond := range s.DependsOn {
			target, ok := c.Services[dep]
			switch {
			case !ok:
				t.Errorf("service %q depends on unknown service %q", name, dep)
			case cond == "service_healthy" && target.Healthcheck == nil:
				t.Errorf("service %q waits for %q to be healthy, which has no healthcheck", name, dep)
			case cond == "service_completed_successfully" && (target.Restart == "always" || target.Restart == "unless-stopped"):
				t.Errorf("service %q waits for %q to complete, but restart: %s never lets it", name, dep, target.Restart)
			case cond != "service_healthy" && cond != "service_started" && cond != "service_completed_successfully":
				t.Errorf("service %q depends on %q with unknown condition %q", name, dep, cond)
			}
			if len(target.Profiles) > 0 && !slices.Equal(target.Profiles, s.Profiles) {
				t.Errorf("service %q depends on %q, which only runs with profiles %v", name, dep, target.Profiles)
			}
		}
	}
}

func TestComposeVolumes(t *testing.T) {
	c, _ := loadCompose(t)
	used := map[string]bool{}
	for name, s := range c.Services {
		for _, m := range s.mounts(t) {
			if m.source == "" {
				t.Errorf("service %q: anonymous volume at %s; use a named volume so data survives `down`/`up`", name, m.target)
				continue
			}
			if m.named() {
				used[m.source] = true
				if _, ok := c.Volumes[m.source]; !ok {
					t.Errorf("service %q mounts volume %q, which is not declared under volumes:", name, m.source)
				}
			}
			if m.mode != "" && m.mode != "ro" && m.mode != "rw" && !strings.Contains(m.mode, "z") {
				t.Errorf("service %q: volume %s:%s has mode %q", name, m.source, m.target, m.mode)
			}
		}
	}
	for v := range c.Volumes {
		if !used[v] {
			t.Errorf("volume %q declared but no service mounts it", v)
		}
	}

	// Data lives where each program writes it.
	kafka := service(t, "kafka")
	logDirs := kafka.Environment["KAFKA_LOG_DIRS"]
	if logDirs == "" {
		t.Errorf("kafka: set KAFKA_LOG_DIRS (the image's default is under /tmp)")
	} else if m, ok := kafka.mountAt(t, logDirs); !ok || !m.named() {
		t.Errorf("kafka: KAFKA_LOG_DIRS %s is not on a named volume", logDirs)
	}
	if m, ok := service(t, "clickhouse").mountAt(t, "/var/lib/clickhouse"); !ok || !m.named() {
		t.Errorf("clickhouse: /var/lib/clickhouse is not on a named volume")
	}
	dataDir := dockerfileStage(t, "runtime").env["IOTPIPE_DATA_DIR"]
	if dataDir == "" {
		t.Errorf("Dockerfile runtime stage: no ENV IOTPIPE_DATA_DIR")
	} else if m, ok := service(t, "iotpipe").mountAt(t, dataDir); !ok || !m.named() {
		t.Errorf("iotpipe: data dir %s is not on a named volume", dataDir)
	}
	if m, ok := service(t, "grafana").mountAt(t, "/var/lib/grafana"); !ok || !m.named() {
		t.Errorf("grafana: /var/lib/grafana is not on a named volume")
	}

	// The plugin volume: filled by grafana-plugin, loaded by grafana from plugins/<id>.
	id := pluginID(t)
	gm, ok := service(t, "grafana").mountAt(t, "/var/lib/grafana/plugins/"+id)
	if !ok || !gm.named() {
		t.Fatalf("grafana: no named volume at /var/lib/grafana/plugins/%s", id)
	}
	var filled bool
	for _, m := range service(t, "grafana-plugin").mounts(t) {
		if m.source == gm.source {
			filled = true
			if m.mode == "ro" {
				t.Errorf("grafana-plugin mounts %s read-only; it must write the plugin there", m.source)
			}
			if !strings.Contains(dockerfileStage(t, "plugin").text, m.target) {
				t.Errorf("grafana-plugin mounts %s at %s, but the Dockerfile's plugin stage does not copy to %s", m.source, m.target, m.target)
			}
		}
	}
	if !filled {
		t.Errorf("grafana-plugin does not mount the plugin volume %q", gm.source)
	}
}

func TestComposeHostPathsExist(t *testing.T) {
	c, _ := loadCompose(t)
	for name, s := range c.Services {
		for _, m := range s.mounts(t) {
			if m.named() || m.source == "" {
				continue
			}
			if !strings.HasPrefix(m.source, "./") {
				t.Errorf("service %q: bind mount %q must be relative to the repository (./…)", name, m.source)
				continue
			}
			if _, err := os.Stat(filepath.Join(repoRoot, m.source)); err != nil {
				t.Errorf("service %q: bind mount source %s: %v", name, m.source, err)
			}
		}
		if s.Build != nil {
			ctx := filepath.Join(repoRoot, s.Build.Context)
			df := s.Build.Dockerfile
			if df == "" {
				df = "Dockerfile"
			}
			if _, err := os.Stat(filepath.Join(ctx, df)); err != nil {
				t.Errorf("service %q: build %s: %v", name, df, err)
			}
			if s.Build.Target == "" {
				t.Errorf("service %q: name the build target explicitly", name)
			} else if _, ok := dockerfileStages(t)[s.Build.Target]; !ok {
				t.Errorf("service %q: build target %q is not a stage of the Dockerfile", name, s.Build.Target)
			}
		}
	}
	for _, name := range iotpipeServices {
		if b := service(t, name).Build; b == nil || b.Target != "runtime" {
			t.Errorf("service %q must build the Dockerfile's runtime target", name)
		}
	}
	if b := service(t, "grafana-plugin").Build; b == nil || b.Target != "plugin" {
		t.Errorf("service grafana-plugin must build the Dockerfile's plugin target")
	}
	// Both iotpipe services share one image: the same build must produce it.
	if a, b := service(t, "iotpipe"), service(t, "simulate"); a.Image != b.Image {
		t.Errorf("iotpipe and simulate use images %q and %q; they run the same binary", a.Image, b.Image)
	}
}

func TestComposeGrafana(t *testing.T) {
	g := service(t, "grafana")
	id := pluginID(t)
	allowed := strings.Split(g.Environment["GF_PLUGINS_ALLOW_LOADING_UNSIGNED_PLUGINS"], ",")
	if !slices.Contains(allowed, id) {
		t.Errorf("grafana: GF_PLUGINS_ALLOW_LOADING_UNSIGNED_PLUGINS=%v does not allow %s", allowed, id)
	}
	prov, ok := g.mountAt(t, "/etc/grafana/provisioning")
	if !ok || prov.source != "./deploy/grafana/provisioning" || prov.mode != "ro" {
		t.Errorf("grafana: want ./deploy/grafana/provisioning mounted read-only at /etc/grafana/provisioning, got %+v", prov)
	}
	if !slices.Contains(g.Ports, "3000:3000") {
		t.Errorf("grafana: port 3000 not published (ports %v)", g.Ports)
	}
	if home := g.Environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]; home != "" {
		if _, err := os.Stat(hostPathOf(t, g, home)); err != nil {
			t.Errorf("grafana: home dashboard %s: %v", home, err)
		}
	}
}

// hostPathOf maps a path inside a service's container to the repository file
// a bind mount puts there.
func hostPathOf(t *testing.T, s composeService, inContainer string) string {
	t.Helper()
	for _, m := range s.mounts(t) {
		if m.named() || m.source == "" {
			continue
		}
		if rel, ok := strings.CutPrefix(inContainer, m.target+"/"); ok {
			return filepath.Join(repoRoot, m.source, rel)
		}
		if inContainer == m.target {
			return filepath.Join(repoRoot, m.source)
		}
	}
	t.Fatalf("no bind mount of the repository covers %s", inContainer)
	return ""
}

// Variables used in the compose file must have defaults, so `docker compose
// up` works without a .env file.
func TestComposeVariablesHaveDefaults(t *testing.T) {
	_, raw := loadCompose(t)
	text := regexp.MustCompile(`\$\$`).ReplaceAllString(string(raw), "") // $$ is a literal $
	for _, m := range regexp.MustCompile(`\$(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)`).FindAllString(text, -1) {
		if !strings.Contains(m, ":-") {
			t.Errorf("docker-compose.yml uses %s without a default (${VAR:-default})", m)
		}
	}
}

// Secrets shared between services must come from the same variable with the
// same default, or the stack starts with mismatched credentials.
func TestComposeSharedSecretsAgree(t *testing.T) {
	iot, graf, sim, ch := service(t, "iotpipe"), service(t, "grafana"), service(t, "simulate"), service(t, "clickhouse")
	pairs := []struct {
		what, a, b string
	}{
		{"read token (iotpipe IOTPIPE_READ_TOKEN, grafana IOTPIPE_READ_TOKEN)", iot.Environment["IOTPIPE_READ_TOKEN"], graf.Environment["IOTPIPE_READ_TOKEN"]},
		{"admin token (iotpipe IOTPIPE_ADMIN_TOKEN, simulate IOTPIPE_API_TOKEN)", iot.Environment["IOTPIPE_ADMIN_TOKEN"], sim.Environment["IOTPIPE_API_TOKEN"]},
		{"ClickHouse password (clickhouse CLICKHOUSE_PASSWORD, iotpipe IOTPIPE_CLICKHOUSE_PASSWORD)", ch.Environment["CLICKHOUSE_PASSWORD"], iot.Environment["IOTPIPE_CLICKHOUSE_PASSWORD"]},
	}
	for _, p := range pairs {
		if p.a == "" || p.a != p.b {
			t.Errorf("%s: %q vs %q", p.what, p.a, p.b)
		}
	}
	if p := iot.Environment["IOTPIPE_READ_TOKEN"]; p != "" && p == iot.Environment["IOTPIPE_ADMIN_TOKEN"] {
		t.Errorf("iotpipe: read and admin tokens are the same (%q)", p)
	}
	if user := commandFlags(t, iot.Command)["clickhouse-user"]; user != ch.Environment["CLICKHOUSE_USER"] {
		t.Errorf("iotpipe --clickhouse-user %q, clickhouse CLICKHOUSE_USER %q", user, ch.Environment["CLICKHOUSE_USER"])
	}
}

// TestComposeCommandFlags builds the iotpipe binary and checks that every
// flag and IOTPIPE_* variable the compose services pass is one the subcommand
// really has (`iotpipe <sub> -h`).
func TestComposeCommandFlags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the iotpipe binary")
	}
	bin := filepath.Join(t.TempDir(), "iotpipe")
	build := exec.Command("go", "build", "-o", bin, "./cmd/iotpipe")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/iotpipe: %v\n%s", err, out)
	}
	for _, name := range iotpipeServices {
		s := service(t, name)
		if len(s.Entrypoint) > 0 {
			t.Errorf("service %q overrides the entrypoint; the image's is iotpipe", name)
		}
		if len(s.Command) == 0 {
			t.Errorf("service %q: no command (subcommand and flags)", name)
			continue
		}
		sub := s.Command[0]
		known := subcommandFlags(t, bin, sub)
		for _, arg := range s.Command[1:] {
			if !strings.HasPrefix(arg, "-") {
				continue // a value, or a positional argument
			}
			f := strings.TrimLeft(arg, "-")
			f, _, _ = strings.Cut(f, "=")
			if !known[f] {
				t.Errorf("service %q: `iotpipe %s` has no flag --%s (flags: %v)", name, sub, f, sortedKeys(known))
			}
		}
		for k := range s.Environment {
			rest, ok := strings.CutPrefix(k, "IOTPIPE_")
			if !ok {
				continue
			}
			f := strings.ToLower(strings.ReplaceAll(rest, "_", "-"))
			if !known[f] {
				t.Errorf("service %q: %s names no flag of `iotpipe %s` (--%s); it would be ignored", name, k, sub, f)
			}
		}
	}
}

// subcommandFlags parses the flag names from `iotpipe <sub> -h`.
func subcommandFlags(t *testing.T, bin, sub string) map[string]bool {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin, sub, "-h")
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = cleanEnv()
	if err := cmd.Run(); err != nil {
		t.Fatalf("iotpipe %s -h: %v\n%s", sub, err, out.String())
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+-{1,2}([A-Za-z0-9][A-Za-z0-9-]*)`).FindAllStringSubmatch(out.String(), -1) {
		flags[m[1]] = true
	}
	if len(flags) == 0 {
		t.Fatalf("iotpipe %s -h listed no flags:\n%s", sub, out.String())
	}
	return flags
}

// cleanEnv drops IOTPIPE_* variables of the test's environment, which the
// binary would apply (and might reject) before printing its help.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "IOTPIPE_") {
			env = append(env, kv)
		}
	}
	return env
}

// commandFlags maps --flag=value and --flag value arguments to their values.
func commandFlags(t *testing.T, args []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !hasVal && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			val = args[i+1]
			i++
		}
		out[name] = val
	}
	return out
}

// The addresses in the commands point at the services that serve them.
func TestComposeAddresses(t *testing.T) {
	c, _ := loadCompose(t)
	iot := commandFlags(t, service(t, "iotpipe").Command)

	checkAddr := func(what, addr, svc, port string) {
		t.Helper()
		host, p, err := net.SplitHostPort(addr)
		if err != nil {
			t.Errorf("%s %q: %v", what, addr, err)
			return
		}
		if _, ok := c.Services[host]; !ok || host != svc || p != port {
			t.Errorf("%s %q, want %s:%s", what, addr, svc, port)
		}
	}
	checkAddr("iotpipe --kafka-brokers", iot["kafka-brokers"], "kafka", "9092")
	if adv := service(t, "kafka").Environment["KAFKA_ADVERTISED_LISTENERS"]; !strings.Contains(adv, "//"+iot["kafka-brokers"]) {
		t.Errorf("kafka advertises %q, but iotpipe connects to %q", adv, iot["kafka-brokers"])
	}
	checkAddr("iotpipe --clickhouse-addr", iot["clickhouse-addr"], "clickhouse", "9000")

	sim := commandFlags(t, service(t, "simulate").Command)
	checkAddr("simulate --broker", sim["broker"], "iotpipe", "1883")
	if sim["api"] != "http://iotpipe:8080" {
		t.Errorf("simulate --api %q, want http://iotpipe:8080", sim["api"])
	}
	ports := service(t, "iotpipe").Ports
	for _, p := range []string{"1883:1883", "8080:8080"} {
		if !slices.Contains(ports, p) {
			t.Errorf("iotpipe: port %s not published (ports %v)", p, ports)
		}
	}
	if d := sim["duration"]; d == "" {
		t.Errorf("simulate: set --duration (the default is one minute)")
	}

	// Year-long dashboard ranges need a coarse stored window (≤ 11000 points per series).
	sizes := composeWindowSizes(t)
	if slices.Max(sizes) < 3600 {
		t.Errorf("iotpipe --window-sizes %v: add 1h, so a year is ~9k buckets instead of ~53k", sizes)
	}
}

// composeWindowSizes is iotpipe's --window-sizes in seconds.
func composeWindowSizes(t *testing.T) []int {
	t.Helper()
	v := commandFlags(t, service(t, "iotpipe").Command)["window-sizes"]
	if v == "" {
		t.Fatalf("iotpipe: no --window-sizes in the command")
	}
	var out []int
	for _, p := range strings.Split(v, ",") {
		d, err := parseGoDuration(strings.TrimSpace(p))
		if err != nil {
			t.Fatalf("--window-sizes %q: %v", v, err)
		}
		out = append(out, d)
	}
	return out
}

func TestComposeClickHouse(t *testing.T) {
	ch := service(t, "clickhouse")
	nofile, ok := ch.Ulimits["nofile"]
	if !ok || nofile.Soft < 262144 || nofile.Hard < nofile.Soft {
		t.Errorf("clickhouse: ulimits nofile %+v, want soft and hard ≥ 262144", nofile)
	}
	if ch.Environment["CLICKHOUSE_USER"] == "" || ch.Environment["CLICKHOUSE_PASSWORD"] == "" {
		t.Errorf("clickhouse: set CLICKHOUSE_USER and CLICKHOUSE_PASSWORD (the image limits `default` to localhost otherwise)")
	}
}

func TestComposeKafka(t *testing.T) {
	env := service(t, "kafka").Environment
	if roles := env["KAFKA_PROCESS_ROLES"]; roles != "broker,controller" && roles != "controller,broker" {
		t.Errorf("kafka: KAFKA_PROCESS_ROLES %q, want a combined KRaft node", roles)
	}
	for _, k := range []string{"KAFKA_NODE_ID", "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_CONTROLLER_LISTENER_NAMES", "KAFKA_LISTENERS", "CLUSTER_ID"} {
		if env[k] == "" {
			t.Errorf("kafka: %s not set", k)
		}
	}
	if id := env["CLUSTER_ID"]; strings.HasPrefix(id, "-") || len(id) != 22 {
		t.Errorf("kafka: CLUSTER_ID %q must be a 22-character base64url UUID not starting with '-'", id)
	}
	for _, k := range []string{"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"} {
		if env[k] != "1" {
			t.Errorf("kafka: %s=%q, want 1 on a single node", k, env[k])
		}
	}
	if rf := commandFlags(t, service(t, "iotpipe").Command)["replication-factor"]; rf != "" && rf != "1" {
		t.Errorf("iotpipe --replication-factor %s on a single Kafka node", rf)
	}
}

// ---- small helpers

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// parseVersion reads "12.4.2" (or a tag like "12.4.2-ubuntu") as numbers.
func parseVersion(s string) ([]int, bool) {
	s, _, _ = strings.Cut(s, "-")
	parts := strings.Split(s, ".")
	out := make([]int, 0, len(parts))
	for _, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return nil, false
		}
		out = append(out, n)
	}
	return out, len(out) > 0
}

func compareVersions(a, b []int) int {
	for i := range max(len(a), len(b)) {
		var x, y int
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			return x - y
		}
	}
	return 0
}

// parseGoDuration parses a whole-second Go duration ("10s", "1m", "1h") into seconds.
func parseGoDuration(s string) (int, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d <= 0 || d%time.Second != 0 {
		return 0, fmt.Errorf("%s is not a positive whole number of seconds", d)
	}
	return int(d / time.Second), nil
}
