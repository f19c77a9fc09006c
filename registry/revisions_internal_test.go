package registry

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// follower is a Registry with no Kafka, fed records by hand.
func follower() *Registry {
	return &Registry{devices: map[string]*entry{}, changed: make(chan struct{})}
}

func rec(t *testing.T, off int64, rev uint64, name string) *kgo.Record {
	t.Helper()
	b, err := encodeRecord(Device{ID: "d1", Name: name}, rev)
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Key: []byte("d1"), Value: b, Offset: off}
}

// The compare-and-set is decided by applying: a record whose revision is
// not above the applied one is refused, identically on every replay; after
// compaction a follower that sees a refused record first converges at the
// writer's re-assertion.
func TestApplyRevisions(t *testing.T) {
	log := []*kgo.Record{
		rec(t, 0, 1, "created"),
		rec(t, 1, 2, "winner"),
		rec(t, 2, 2, "loser"),       // same base as the winner: refused
		rec(t, 3, 1, "stale"),       // an older base still: refused
		rec(t, 4, 0, "legacy"),      // no revision (older binary): applied
		rec(t, 5, 3, "reasserted"),  // the loser's re-assertion of the state it found
		rec(t, 6, 4, "next update"), // an ordinary later write
	}
	replay := func(rs ...*kgo.Record) *Registry {
		r := follower()
		for _, x := range rs {
			r.apply(x)
		}
		return r
	}
	name := func(r *Registry) string { return r.devices["d1"].dev.Name }

	r := replay(log[:4]...)
	if name(r) != "winner" || !r.refused.has(2) || !r.refused.has(3) || r.refused.has(1) {
		t.Fatalf("after the race: %q, refused 2 %v 3 %v 1 %v", name(r), r.refused.has(2), r.refused.has(3), r.refused.has(1))
	}
	if r = replay(log[:5]...); name(r) != "legacy" {
		t.Errorf("a record without revision: %q, want it applied", name(r))
	}
	if r = replay(log...); name(r) != "next update" {
		t.Errorf("full replay: %q", name(r))
	}
	// Compaction kept the loser and everything after it: the follower takes
	// the loser first (nothing to compare with) and converges.
	if r = replay(log[2], log[5], log[6]); name(r) != "next update" {
		t.Errorf("compacted replay: %q", name(r))
	}
	if r = replay(log[2], log[5]); name(r) != "reasserted" {
		t.Errorf("compacted replay up to the re-assertion: %q", name(r))
	}
	// A tombstone always applies; a create after it starts over.
	r = replay(log[0], log[1], &kgo.Record{Key: []byte("d1"), Offset: 7}, rec(t, 8, 1, "again"))
	if name(r) != "again" {
		t.Errorf("create after delete: %q", name(r))
	}
}

func TestRefusalsBounded(t *testing.T) {
	var f refusals
	for i := range int64(refusedKept + 10) {
		f.add(i)
	}
	if len(f.set) != refusedKept || f.has(0) || f.has(9) || !f.has(10) || !f.has(refusedKept+9) {
		t.Fatalf("kept %d, has 0 %v 10 %v", len(f.set), f.has(0), f.has(10))
	}
}
