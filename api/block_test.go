package api

import (
	"context"
	"net/http"
	"testing"
)

// Block and unblock answer 200 with the device, 404 for an unknown device,
// and 403 for the read-only token; the registry holds the flag.
func TestBlockRoutes(t *testing.T) {
	_, base := newReadServer(t)
	admin, _ := NewClient(base, adminTok)
	reader, _ := NewClient(base, readTok)
	ctx := context.Background()
	if _, err := admin.CreateDevice(ctx, NewDevice{ID: "blk-1"}); err != nil {
		t.Fatal(err)
	}
	d, err := admin.SetBlocked(ctx, "blk-1", true)
	if err != nil || !d.Blocked || d.ID != "blk-1" {
		t.Fatalf("block: %+v %v", d, err)
	}
	if d, err = admin.Device(ctx, "blk-1"); err != nil || !d.Blocked {
		t.Fatalf("get after block: %+v %v", d, err)
	}
	if list, err := reader.Devices(ctx, ""); err != nil || len(list) == 0 || !blockedIn(list, "blk-1") {
		t.Fatalf("list after block: %+v %v", list, err)
	}
	if _, err := reader.SetBlocked(ctx, "blk-1", false); StatusOf(err) != http.StatusForbidden {
		t.Errorf("unblock with the read token: %v, want 403", err)
	}
	if d, err = admin.SetBlocked(ctx, "blk-1", false); err != nil || d.Blocked {
		t.Fatalf("unblock: %+v %v", d, err)
	}
	if d, err = admin.Device(ctx, "blk-1"); err != nil || d.Blocked {
		t.Fatalf("get after unblock: %+v %v", d, err)
	}
	for _, blocked := range []bool{true, false} {
		if _, err := admin.SetBlocked(ctx, "nobody", blocked); StatusOf(err) != http.StatusNotFound {
			t.Errorf("SetBlocked(nobody, %v): %v, want 404", blocked, err)
		}
	}
	// GET is not a route for these: they are actions.
	req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/devices/blk-1/block", nil)
	req.Header.Set("Authorization", "Bearer "+adminTok)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET block: %v %v, want 405", resp, err)
	} else {
		resp.Body.Close()
	}
}

func blockedIn(list []Device, id string) bool {
	for _, d := range list {
		if d.ID == id {
			return d.Blocked
		}
	}
	return false
}
