package registry_test

import (
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/iotpipe/iotpipe/registry"
)

func TestValidateLabels(t *testing.T) {
	many := map[string]string{}
	for i := range registry.MaxLabels + 1 {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		ok     bool
	}{
		{"nil", nil, true},
		{"plain", map[string]string{"site": "berlin", "floor": "2", "model_x-1": ""}, true},
		{"max length", map[string]string{"k" + strings.Repeat("a", 62): strings.Repeat("b", 63)}, true},
		{"key too long", map[string]string{"k" + strings.Repeat("a", 63): "v"}, false},
		{"value too long", map[string]string{"k": strings.Repeat("b", 64)}, false},
		{"empty key", map[string]string{"": "v"}, false},
		{"key starts with digit", map[string]string{"1a": "v"}, false},
		{"uppercase key", map[string]string{"Site": "v"}, false},
		{"uppercase value", map[string]string{"site": "Berlin"}, false},
		{"separator in value", map[string]string{"site": "a,b"}, false},
		{"equals in value", map[string]string{"site": "a=b"}, false},
		{"too many", many, false},
	} {
		err := registry.ValidateLabels(tc.labels)
		if tc.ok != (err == nil) {
			t.Errorf("%s: ValidateLabels = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, registry.ErrInvalidLabels) {
			t.Errorf("%s: %v is not ErrInvalidLabels", tc.name, err)
		}
	}
}

func TestSelector(t *testing.T) {
	dev := registry.Device{ID: "d-1", Labels: map[string]string{"site": "a", "floor": "2"}}
	for _, tc := range []struct {
		sel     string
		match   bool
		wantErr bool
	}{
		{"", true, false},
		{" , ", true, false},
		{"site=a", true, false},
		{" site = a , floor=2 ", true, false},
		{"site=b", false, false},
		{"site=a,room=1", false, false},
		{"floor=", false, false},
		{"site", false, true},
		{"Site=a", false, true},
		{"site=a,site=b", false, true},
		{"site=a,site=a", true, false},
	} {
		sel, err := registry.ParseSelector(tc.sel)
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseSelector(%q) = %v, wantErr %v", tc.sel, err, tc.wantErr)
			continue
		}
		if err == nil && sel.Matches(dev) != tc.match {
			t.Errorf("ParseSelector(%q).Matches = %v, want %v", tc.sel, !tc.match, tc.match)
		}
	}
	// A label with an empty value matches only an empty selector value.
	empty := registry.Device{ID: "d-2", Labels: map[string]string{"floor": ""}}
	sel, _ := registry.ParseSelector("floor=")
	if !sel.Matches(empty) || sel.Matches(registry.Device{ID: "d-3"}) {
		t.Error("floor= must match a device with floor=\"\" and not one without the label")
	}
}

func TestNameAndLabelsPropagateAndUpdate(t *testing.T) {
	seeds, topic := setup(t)
	a := start(t, seeds, topic)
	ctx := ctxT(t)
	labels := map[string]string{"site": "berlin", "floor": "2"}
	dev, _, err := a.Create(ctx, registry.Spec{ID: "lab-1", Name: "Boiler room ☕", Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	labels["site"] = "changed-after-create"
	if dev.Labels["site"] != "berlin" || dev.Name != "Boiler room ☕" {
		t.Fatalf("Create returned %+v; the caller's map must be copied", dev)
	}
	// A second instance reading the topic sees the same metadata.
	b := start(t, seeds, topic)
	got, err := b.Get("lab-1")
	if err != nil || got.Name != "Boiler room ☕" || !maps.Equal(got.Labels, map[string]string{"site": "berlin", "floor": "2"}) {
		t.Fatalf("second instance Get = %+v, %v", got, err)
	}

	if err := a.SetMetadata(ctx, "lab-1", "Boiler", map[string]string{"site": "hamburg"}); err != nil {
		t.Fatal(err)
	}
	got, _ = a.Get("lab-1")
	if got.Name != "Boiler" || !maps.Equal(got.Labels, map[string]string{"site": "hamburg"}) || got.UpdatedAt.Before(got.CreatedAt) {
		t.Fatalf("after SetMetadata: %+v", got)
	}
	if len(got.Credentials) != 1 {
		t.Fatalf("SetMetadata changed credentials: %+v", got.Credentials)
	}

	for _, bad := range []registry.Spec{
		{ID: "lab-2", Labels: map[string]string{"Bad": "x"}},
		{ID: "lab-3", Name: "tab\there"},
		{ID: "lab-4", Name: strings.Repeat("n", registry.MaxNameLen+1)},
	} {
		if _, _, err := a.Create(ctx, bad); !errors.Is(err, registry.ErrInvalidLabels) {
			t.Errorf("Create(%+v) = %v, want ErrInvalidLabels", bad, err)
		}
		if _, err := a.Get(bad.ID); !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("rejected %s was created anyway", bad.ID)
		}
	}
	if err := a.SetMetadata(ctx, "lab-1", "", map[string]string{"x": "UPPER"}); !errors.Is(err, registry.ErrInvalidLabels) {
		t.Errorf("SetMetadata bad label = %v", err)
	}
	if err := a.SetMetadata(ctx, "nope-1", "", nil); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("SetMetadata unknown = %v, want ErrNotFound", err)
	}
}
