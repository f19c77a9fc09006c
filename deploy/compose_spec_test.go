package deploy

import (
	"context"
	"slices"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

// TestComposeSpec loads docker-compose.yml with compose-go, the loader of
// `docker compose` itself: it is validated against the Compose
// specification's JSON schema, every ${VAR:-default} is interpolated with
// an empty environment (no .env), and dependencies and profiles resolve.
func TestComposeSpec(t *testing.T) {
	ctx := context.Background()
	details, err := loader.LoadConfigFiles(ctx, []string{"../docker-compose.yml"}, "..")
	if err != nil {
		t.Fatal(err)
	}
	details.Environment = types.Mapping{}
	for _, profiles := range [][]string{nil, {"simulate"}} {
		project, err := loader.LoadWithContext(ctx, *details, loader.WithProfiles(profiles), func(o *loader.Options) {
			o.SetProjectName("iotpipe", true)
		})
		if err != nil {
			t.Fatalf("profiles %v: docker compose would refuse the file: %v", profiles, err)
		}
		want := []string{"clickhouse", "grafana", "grafana-plugin", "iotpipe", "kafka"}
		if profiles != nil {
			want = append(want, "simulate")
			slices.Sort(want)
		}
		if got := project.ServiceNames(); !slices.Equal(sorted(got), want) {
			t.Errorf("profiles %v: services %v, want %v", profiles, sorted(got), want)
		}
		for name, svc := range project.Services {
			for dep := range svc.DependsOn {
				if _, ok := project.Services[dep]; !ok {
					t.Errorf("profiles %v: %s depends on %s, which is not started", profiles, name, dep)
				}
			}
			for _, v := range svc.Environment {
				if v != nil && *v == "" {
					t.Errorf("profiles %v: %s has an empty environment value; give its ${VAR} a default", profiles, name)
				}
			}
		}
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
