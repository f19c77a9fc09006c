package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/internal/testkafka"
)

// The crash tests run real `iotpipe processor` processes against a Kafka
// hosted by the test (kfake in this process, or Apache Kafka when
// IOTPIPE_KAFKA_BROKERS is set), SIGKILL them at random moments while a
// million readings flow, and require the windows they stored to be exactly
// the brute-force aggregation of the readings produced: none missing, none
// extra, none double-counted.
//
// Event times run crashAhead ahead of the wall clock. Idle advance moves a
// partition's watermark to wall clock − lateness, so it closes the tail of
// the stream once production stops but can never make a reading late, however
// long a restart takes (up to crashAhead): the expectation is then exact.

const (
	crashDevices    = 200
	crashTicks      = 2500 // records per device, two readings each: 1,000,000 readings
	crashTick       = 10 * time.Millisecond
	crashAhead      = 10 * time.Second
	crashLateness   = 2 * time.Second
	crashIdle       = 2 * time.Second
	crashPartitions = 6
)

var crashSizes = []time.Duration{2 * time.Second, 10 * time.Second}

// crashSeed returns the run's seed: IOTPIPE_CRASH_SEED, else the clock.
func crashSeed(t *testing.T) uint64 {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("IOTPIPE_CRASH_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("IOTPIPE_CRASH_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("seed %d (rerun with IOTPIPE_CRASH_SEED=%d)", seed, seed)
	return seed
}

// producing is the producer's progress: finished is closed once every
// record is acknowledged, and err is then set.
type producing struct {
	finished chan struct{}
	err      error
}

func (p *producing) done() bool {
	select {
	case <-p.finished:
		return true
	default:
		return false
	}
}

// crashSetup builds the stream and starts producing it.
func crashSetup(t *testing.T, rng *rand.Rand) (*crashRig, *crashStream, *producing) {
	requireChdb(t)
	ticks := crashTicks
	if testing.Short() {
		ticks /= 10
	}
	r := newCrashRig(t, crashPartitions, crashSizes)
	t.Cleanup(r.cleanup)
	start := time.Now().Add(500 * time.Millisecond)
	s := newCrashStream(rng, crashDevices, ticks, crashTick, start.Add(crashAhead))
	t.Logf("%d records (%d delayed up to 500ms, %d duplicates), %d distinct readings, %d devices, %d partitions, sizes %v",
		s.records, s.delayed, s.dups, s.readings, s.devices, crashPartitions, crashSizes)
	prod := &producing{finished: make(chan struct{})}
	go func() {
		behind, err := r.produce(s, start)
		t.Logf("producer done after %v (at worst %v behind its schedule)", time.Since(start).Round(time.Millisecond), behind)
		prod.err = err
		close(prod.finished)
	}()
	return r, s, prod
}

// crashFinish waits for the producer and for every partition to be drained,
// stops the processes cleanly and checks that nothing was dead-lettered.
func crashFinish(t *testing.T, r *crashRig, prod *producing, procs ...*procHandle) {
	t.Helper()
	<-prod.finished
	if err := prod.err; err != nil {
		t.Fatalf("produce: %v", err)
	}
	r.waitDrained(3*time.Minute, procs...)
	for _, p := range procs {
		p.stop(t)
	}
	if dl := r.deadLetters(); len(dl) > 0 {
		t.Errorf("%d dead letters, want none (no reading of the stream is bad or too late)", len(dl))
		for i, rec := range dl[:min(len(dl), 10)] {
			t.Logf("dead letter %d: %s %s", i, rec.Headers, rec.Value)
		}
	}
}

func TestCrashSIGKILLExactlyOnce(t *testing.T) {
	began := time.Now()
	rng := rand.New(rand.NewPCG(crashSeed(t), 1))
	r, s, prod := crashSetup(t, rng)
	want := s.expected(crashSizes)
	dir := t.TempDir()

	const minKills = 5
	kills := 0
	for kills < minKills || !prod.done() {
		p := r.startProc("processor#"+strconv.Itoa(kills+1), dir, crashLateness, crashIdle)
		var after time.Duration
		if rng.IntN(5) == 0 {
			// during start-up: storage open, group join, restore
			after = time.Duration(rng.Int64N(int64(1500 * time.Millisecond)))
			time.Sleep(after) // the random kill moment
		} else {
			// after the process joined the group (Apache Kafka delays a new
			// group's first rebalance by 3s), so that it processes between
			// kills and the backlog stays within crashAhead
			p.waitReady(t)
			testkafka.Eventually(t, 60*time.Second, p.name+" joins the group", func() bool { return len(r.members()) > 0 })
			after = time.Duration(rng.Int64N(int64(4*time.Second))) + 200*time.Millisecond
			time.Sleep(after) // the random kill moment
		}
		p.kill(t)
		gone := r.evict()
		kills++
		committed, end := r.progress()
		t.Logf("kill %d at %v after start or join (%v into the test); evicted %d member(s); committed %v of %v",
			kills, after.Round(time.Millisecond), time.Since(began).Round(time.Millisecond), len(gone), committed, end)
		if kills >= 30 {
			t.Fatalf("still producing after %d kills", kills)
		}
	}
	p := r.startProc("processor#final", dir, crashLateness, crashIdle)
	crashFinish(t, r, prod, p)
	drained := time.Since(began)
	got := readStore(t, dir+"/chdb")
	compareWindows(t, got, want)
	t.Logf("%d kills; %d windows compared; drained after %v, total %v",
		kills, len(want), drained.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
}

func TestCrashTwoInstancesOneKilled(t *testing.T) {
	began := time.Now()
	rng := rand.New(rand.NewPCG(crashSeed(t), 2))
	r, s, prod := crashSetup(t, rng)
	want := s.expected(crashSizes)
	dirA, dirB := t.TempDir(), t.TempDir()

	a := r.startProc("processor-A", dirA, crashLateness, crashIdle)
	a.waitReady(t)
	var idA []string
	testkafka.Eventually(t, 30*time.Second, "A joins the group", func() bool {
		idA = r.members()
		return len(idA) == 1
	})
	b := r.startProc("processor-B", dirB, crashLateness, crashIdle)
	b.waitReady(t)
	var idB string
	testkafka.Eventually(t, 30*time.Second, "B joins the group", func() bool {
		ids := r.members()
		for _, id := range ids {
			if id != idA[0] {
				idB = id
			}
		}
		return len(ids) == 2 && idB != ""
	})
	after := time.Duration(rng.Int64N(int64(8*time.Second))) + time.Second
	time.Sleep(after) // the random kill moment, mid-stream
	a.kill(t)
	gone := r.evict(idB)
	committed, end := r.progress()
	t.Logf("A killed %v after B joined (%v into the test); evicted %v; committed %v of %v",
		after.Round(time.Millisecond), time.Since(began).Round(time.Millisecond), gone, committed, end)

	// A comes back on its data dir a moment later and takes partitions back
	// from B (B hands them over: store, commit, revoke).
	again := time.Duration(rng.Int64N(int64(4 * time.Second)))
	time.Sleep(again) // random restart moment
	a2 := r.startProc("processor-A#2", dirA, crashLateness, crashIdle)
	t.Logf("A restarted %v after the kill", again.Round(time.Millisecond))

	crashFinish(t, r, prod, a2, b)
	drained := time.Since(began)
	storeA := readStore(t, dirA+"/chdb")
	storeB := readStore(t, dirB+"/chdb")
	union, both, differ, conflicts := unionStores(storeA, storeB)
	t.Logf("A stored %d windows, B %d; %d in both stores, %d of them with different contents", len(storeA), len(storeB), both, differ)
	if len(conflicts) > 0 {
		t.Errorf("%d windows stored by both with the same version but different contents; first ones:\n%s",
			len(conflicts), strings.Join(conflicts[:min(len(conflicts), 20)], "\n"))
	}
	compareWindows(t, union, want)
	t.Logf("%d windows compared; drained after %v, total %v", len(want), drained.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
}

// unionStores merges two stores as one ReplacingMergeTree would: per window
// the highest Version wins. Equal versions mean the same contributing
// offsets, so the two rows must be identical: each one that is not is
// reported in conflicts.
func unionStores(a, b map[crashWin]crashAgg) (out map[crashWin]crashAgg, both, differ int, conflicts []string) {
	out = make(map[crashWin]crashAgg, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		old, ok := out[k]
		if !ok {
			out[k] = v
			continue
		}
		both++
		if old.equal(v) && old.Sum == v.Sum && old.Version == v.Version {
			continue
		}
		differ++
		switch {
		case v.Version > old.Version:
			out[k] = v
		case v.Version == old.Version:
			conflicts = append(conflicts, fmt.Sprintf("%+v: A %+v, B %+v", k, old, v))
		}
	}
	return out, both, differ, conflicts
}
