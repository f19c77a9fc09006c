package plugin

import (
	"context"
	"slices"
	"sort"
	"testing"
)

// The device pickers and "*" need every device, however many pages the API
// answers in: with a page size of 1 and 2 against the real binary, the
// plugin's listing equals the fixture, with and without a label filter.
func TestDevicesFollowsPages(t *testing.T) {
	f := getFixture(t)
	d := f.inProcess(t)
	var all, siteA []string
	for _, fd := range fixtureDevices {
		all = append(all, fd.id)
		if fd.labels["site"] == "a" {
			siteA = append(siteA, fd.id)
		}
	}
	sort.Strings(all)
	sort.Strings(siteA)
	for _, size := range []int{1, 2, devicePageSize} {
		d.api.pageSize = size
		for _, tc := range []struct {
			labels []string
			want   []string
		}{{nil, all}, {[]string{"site=a"}, siteA}} {
			devs, err := d.api.devices(context.Background(), tc.labels)
			if err != nil {
				t.Fatalf("page size %d, labels %v: %v", size, tc.labels, err)
			}
			var got []string
			for _, dv := range devs {
				got = append(got, dv.ID)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("page size %d, labels %v: %v, want %v", size, tc.labels, got, tc.want)
			}
		}
	}
}
