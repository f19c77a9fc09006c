package registry

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// # Revisions: compare-and-set decided when the log is applied
//
// Every device record carries a revision (record.Rev). A writer reads the
// device and its revision from this instance's applied state and writes the
// new record with revision+1. A follower applies a record only if its
// revision is higher than the one it holds (accepts); otherwise the record
// lost a race with a write applied before it and is ignored. Every instance
// applies the same records in the same order, so every instance accepts and
// refuses the same records, and a writer learns whether it won by looking,
// after its own record was applied here, at whether the device now comes from
// its record (won). A writer that lost re-reads and tries again (updateRev),
// so concurrent admin writes through different instances no longer overwrite
// each other, and a config write with an expected version is decided once,
// identically everywhere (config.go).
//
// Compaction keeps only the last record of a key, which may be one that lost.
// An instance that starts after such a compaction sees that record alone and
// accepts it (it holds nothing to compare with). To keep that from ever being
// the final word, a writer that lost and does not retry writes the accepted
// state again with a higher revision (reassert): the last record of the key
// is then one every instance accepts. A crash between the lost write and the
// reassert leaves the gap open until the device's next write.
//
// Records without a revision (written by older binaries) and deletions are
// applied unconditionally: last write wins, as before.

// accepts reports whether a record of revision rev replaces e.
func accepts(e *entry, rev uint64) bool {
	return e == nil || rev == 0 || rev > e.rev
}

// maxAttempts bounds how often updateRev retries after losing to a
// concurrent writer; each loss means another write of the device succeeded.
const maxAttempts = 10

// errContended is returned when a device kept changing under every attempt.
var errContended = errors.New("registry: device changed concurrently on every attempt; try again")

// getEntry returns a copy of the device and its revision.
func (r *Registry) getEntry(id string) (Device, uint64, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.devices[id]
	if !ok {
		return Device{}, 0, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return e.dev.clone(), e.rev, nil
}

// won reports whether the record at offset off was accepted (called after
// it was applied; a later write may have replaced it since, which still
// counts as won).
func (r *Registry) won(_ string, off int64) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return !r.refused.has(off)
}

// refusals remembers the offsets of the last refusedKept refused records,
// for writers that check right after their record was applied. Refusals are
// rare (a race between two instances), so the bound is never near.
type refusals struct {
	set  map[int64]struct{}
	ring [refusedKept]int64
	n    int
}

const refusedKept = 1024

func (f *refusals) add(off int64) {
	if f.set == nil {
		f.set = make(map[int64]struct{})
	}
	i := f.n % refusedKept
	if f.n >= refusedKept {
		delete(f.set, f.ring[i])
	}
	f.ring[i] = off
	f.set[off] = struct{}{}
	f.n++
}

func (f *refusals) has(off int64) bool {
	_, ok := f.set[off]
	return ok
}

// updateRev applies fn to the current device and writes it with the next
// revision; touch sets UpdatedAt (admin changes do, device acks do not). If
// another write of the device was applied first, it calls fn again on the
// new state and retries. fn returns false to write nothing (and may then
// report why through its closure).
func (r *Registry) updateRev(ctx context.Context, id string, touch bool, fn func(*Device) bool) error {
	lost := false
	for range maxAttempts {
		dev, rev, err := r.getEntry(id)
		if err != nil {
			return err
		}
		if !fn(&dev) {
			if lost {
				r.reassert(id)
			}
			return nil
		}
		if touch {
			dev.UpdatedAt = r.now().UTC()
		}
		off, err := r.write(ctx, id, &dev, rev+1)
		if err != nil {
			return err
		}
		if r.won(id, off) {
			return nil
		}
		lost = true
	}
	r.reassert(id)
	return fmt.Errorf("%w: %s", errContended, id)
}

// reassert writes the device as this instance holds it with a higher
// revision, after a write of ours lost (see above). It runs in the
// background with its own timeout: the caller's answer does not depend on it.
func (r *Registry) reassert(id string) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		dev, rev, err := r.getEntry(id)
		if err != nil {
			return // deleted meanwhile: the tombstone is the last record
		}
		if _, err := r.write(ctx, id, &dev, rev+1); err != nil {
			r.log.Warn().Err(err).Str("device", id).Msg("re-asserting a device after a lost concurrent write failed")
		}
	}()
}
