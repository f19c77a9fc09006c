package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"
)

func ids(list []Device) []string {
	out := make([]string, len(list))
	for i, d := range list {
		out[i] = d.ID
	}
	return out
}

// walk lists every page of p and returns the ids and the page sizes seen.
func walk(t *testing.T, cl *Client, p DevicesPageParams) ([]string, []int) {
	t.Helper()
	var got []string
	var sizes []int
	for range 10000 {
		page, err := cl.DevicesPage(context.Background(), p)
		if err != nil {
			t.Fatalf("page %d of %+v: %v", len(sizes)+1, p, err)
		}
		got = append(got, ids(page.Devices)...)
		sizes = append(sizes, len(page.Devices))
		if page.NextPageToken == "" {
			return got, sizes
		}
		p.PageToken = page.NextPageToken
	}
	t.Fatal("listing did not end")
	return nil, nil
}

func TestDevicePages(t *testing.T) {
	_, _, base := newServer(t)
	cl, err := NewClient(base, adminTok)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const n = 230
	var all, siteA []string
	for i := range n {
		id := fmt.Sprintf("dev-%03d", i)
		labels := map[string]string{"site": "b"}
		if i%3 == 0 {
			labels["site"] = "a"
			siteA = append(siteA, id)
		}
		if _, err := cl.CreateDevice(ctx, NewDevice{ID: id, Labels: labels}); err != nil {
			t.Fatal(err)
		}
		all = append(all, id)
	}

	// The client follows every page.
	list, err := cl.Devices(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(list), all) {
		t.Fatalf("Devices: %d devices %v..., want the %d created in id order", len(list), ids(list)[:min(5, len(list))], n)
	}
	for _, size := range []int{1, 7, n - 1, n} { // what the CLI's `devices list` does, across page boundaries
		cl.pageSize = size
		for _, sel := range []string{"", "site=a"} {
			list, err := cl.Devices(ctx, sel)
			want := all
			if sel != "" {
				want = siteA
			}
			if err != nil || !slices.Equal(ids(list), want) {
				t.Fatalf("Devices(%q) with page size %d: %d devices, %v; want %d", sel, size, len(list), err, len(want))
			}
		}
	}
	cl.pageSize = 0

	for _, tc := range []struct {
		name      string
		p         DevicesPageParams
		want      []string
		wantSizes []int
	}{
		{"default size", DevicesPageParams{}, all, []int{DefaultPageSize, DefaultPageSize, n - 2*DefaultPageSize}},
		{"max size", DevicesPageParams{PageSize: MaxPageSize}, all, []int{n}},
		{"exactly all", DevicesPageParams{PageSize: n}, all, []int{n}},
		{"one less than all", DevicesPageParams{PageSize: n - 1}, all, []int{n - 1, 1}},
		// The filter applies before paging: full pages, and no empty last
		// page when the matches divide evenly (77 = 7 × 11).
		{"filter, size divides", DevicesPageParams{Selector: "site=a", PageSize: 7}, siteA, slices.Repeat([]int{7}, 11)},
		{"filter, one page", DevicesPageParams{Selector: "site=a", PageSize: len(siteA)}, siteA, []int{len(siteA)}},
		{"filter, size 1", DevicesPageParams{Selector: "site=a", PageSize: 1}, siteA, slices.Repeat([]int{1}, len(siteA))},
		{"no match", DevicesPageParams{Selector: "site=c", PageSize: 5}, nil, []int{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, sizes := walk(t, cl, tc.p)
			if !slices.Equal(got, tc.want) {
				t.Errorf("ids %v, want %v", got, tc.want)
			}
			if !slices.Equal(sizes, tc.wantSizes) {
				t.Errorf("page sizes %v, want %v", sizes, tc.wantSizes)
			}
		})
	}

	// Devices created and deleted between pages: nothing that existed
	// throughout is skipped or repeated; a device created after the cursor
	// shows up, one deleted before it was reached does not.
	first, err := cl.DevicesPage(ctx, DevicesPageParams{PageSize: 50})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"dev-010", "dev-150"} {
		if err := cl.DeleteDevice(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"dev-000a", "dev-200a"} { // before and after the cursor
		if _, err := cl.CreateDevice(ctx, NewDevice{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	rest, _ := walk(t, cl, DevicesPageParams{PageSize: 50, PageToken: first.NextPageToken})
	got := append(ids(first.Devices), rest...)
	want := slices.Concat(all[:50], slices.DeleteFunc(slices.Clone(all[50:]), func(id string) bool { return id == "dev-150" }))
	want = slices.Insert(want, slices.Index(want, "dev-201"), "dev-200a")
	if !slices.Equal(got, want) {
		t.Errorf("listing across changes: %d ids, want %d\n got %v\nwant %v", len(got), len(want), got, want)
	}

	// Bad parameters are a 400 with a code saying which one.
	for _, tc := range []struct{ query, code string }{
		{"page_size=0", "bad_page_size"},
		{"page_size=-1", "bad_page_size"},
		{"page_size=1001", "bad_page_size"},
		{"page_size=ten", "bad_page_size"},
		{"page_size=", ""}, // empty is absent: the default
		{"page_token=%21%21", "bad_page_token"},
		{"page_token=" + base64.RawURLEncoding.EncodeToString([]byte("no spaces allowed")), "bad_page_token"},
		{"page_token=" + base64.StdEncoding.EncodeToString([]byte("dev-1")), "bad_page_token"}, // padded, not ours
		{"label=site&page_size=5", "bad_request"},
	} {
		req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/devices?"+tc.query, nil)
		req.Header.Set("Authorization", "Bearer "+adminTok)
		var e Error
		status := doJSON(t, req, &e)
		switch {
		case tc.code == "" && status != http.StatusOK:
			t.Errorf("%s: status %d, want 200", tc.query, status)
		case tc.code != "" && (status != http.StatusBadRequest || e.Code != tc.code || e.Message == ""):
			t.Errorf("%s: status %d %+v, want 400 %s with a message", tc.query, status, e, tc.code)
		}
	}
}

// doJSON sends req and decodes a JSON answer into out; it returns the status.
func doJSON(t *testing.T, req *http.Request, out any) int {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("%s %s: %d, body not JSON: %v", req.Method, req.URL, resp.StatusCode, err)
	}
	return resp.StatusCode
}
