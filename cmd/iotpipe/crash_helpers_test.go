package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/internal/testkafka"
	"github.com/iotpipe/iotpipe/storage"
)

// Helpers of the crash tests (crash_test.go): a paced producer of a known
// stream, real `iotpipe processor` processes that can be SIGKILLed, group
// eviction of killed members, and a reader of a processor's chDB store that
// runs in its own process (chDB allows one data path per process).

// crashWin identifies a stored window.
type crashWin struct {
	Device string        `json:"device"`
	Metric string        `json:"metric"`
	Size   time.Duration `json:"size"`
	Start  int64         `json:"start"` // Unix seconds
}

// crashStream is the stream a crash test produces: crashDevices devices, one
// record per device per tick carrying two metrics, event time ahead of the
// wall clock by ahead (so an idle advance, which moves the watermark to wall
// clock − lateness, never makes a reading late), some records delayed by up
// to maxDelay ticks (out of order within the allowed lateness) and some
// produced twice (redelivery).
type crashStream struct {
	devices, ticks int
	tick           time.Duration
	t0             time.Time // event time of tick 0
	slots          [][]crashRecord
	readings       int // distinct readings
	records        int // records produced, duplicates included
	delayed, dups  int
}

type crashRecord struct {
	device string
	at     time.Time
	temp   float64
	hum    float64
}

var crashMetrics = [2]string{"temperature", "humidity"}

func newCrashStream(rng *rand.Rand, devices, ticks int, tick time.Duration, t0 time.Time) *crashStream {
	const maxDelay = 50 // ticks
	s := &crashStream{devices: devices, ticks: ticks, tick: tick, t0: t0.Truncate(time.Millisecond),
		slots: make([][]crashRecord, ticks+maxDelay+1)}
	for i := range ticks {
		for d := range devices {
			r := crashRecord{
				device: fmt.Sprintf("crash-dev-%03d", d),
				// distinct per device: ticks are ≥ 10ms apart, offsets < 10ms
				at:   s.t0.Add(time.Duration(i)*tick + time.Duration(d%10)*time.Millisecond),
				temp: math.Round((20+5*math.Sin(float64(i)/50+float64(d))+rng.NormFloat64())*1e3) / 1e3,
				hum:  rng.Float64() * 100,
			}
			slot := i
			if rng.IntN(50) == 0 { // 2% out of order, up to maxDelay ticks late
				slot += 1 + rng.IntN(maxDelay)
				s.delayed++
			}
			s.slots[slot] = append(s.slots[slot], r)
			s.readings += 2
			if rng.IntN(200) == 0 { // 0.5% delivered twice
				dup := i + 1 + rng.IntN(maxDelay)
				s.slots[dup] = append(s.slots[dup], r)
				s.dups++
			}
		}
	}
	for _, sl := range s.slots {
		s.records += len(sl)
	}
	return s
}

// crashAgg is one window as the crash tests compare it: the brute-force
// aggregate plus first and last by event time (ties: the earlier record
// wins, as in package window) and, for stored windows, the Version (0 in
// expectations, which cannot know offsets).
type crashAgg struct {
	agg
	First   float64   `json:"first"`
	Last    float64   `json:"last"`
	FirstAt time.Time `json:"first_at"`
	LastAt  time.Time `json:"last_at"`
	Version uint64    `json:"version"`
}

// add counts v at event time at, read after every reading added before it.
func (a crashAgg) add(v float64, at time.Time) crashAgg {
	at = at.UTC()
	if a.Count == 0 || at.Before(a.FirstAt) {
		a.First, a.FirstAt = v, at
	}
	if a.Count == 0 || at.After(a.LastAt) {
		a.Last, a.LastAt = v, at
	}
	a.agg = a.agg.Add(v)
	return a
}

// equal compares everything but Version: counts, min, max, first and last
// exactly, sums up to rounding.
func (a crashAgg) equal(b crashAgg) bool {
	return a.agg.Equal(b.agg) && a.First == b.First && a.Last == b.Last &&
		a.FirstAt.Equal(b.FirstAt) && a.LastAt.Equal(b.LastAt)
}

// expected is the brute-force aggregation of the stream's distinct readings
// ((device, metric, event time) identifies a reading; duplicates are exact
// copies here) for each size, in production order (a device's records keep
// it in Kafka: one key, one partition, one producer).
func (s *crashStream) expected(sizes []time.Duration) map[crashWin]crashAgg {
	out := map[crashWin]crashAgg{}
	type id struct {
		device string
		at     int64
	}
	seen := map[id]bool{}
	for _, sl := range s.slots {
		for _, r := range sl {
			k := id{r.device, r.at.UnixMilli()}
			if seen[k] {
				continue
			}
			seen[k] = true
			for _, size := range sizes {
				start := r.at.Truncate(size).Unix()
				for i, v := range [2]float64{r.temp, r.hum} {
					w := crashWin{r.device, crashMetrics[i], size, start}
					out[w] = out[w].add(v, r.at)
				}
			}
		}
	}
	return out
}

func (r crashRecord) kafka(topic string, now time.Time) *kgo.Record {
	v := fmt.Appendf(nil, `{"ts":%d,"temperature":%s,"humidity":%s}`, r.at.UnixMilli(),
		strconv.FormatFloat(r.temp, 'g', -1, 64), strconv.FormatFloat(r.hum, 'g', -1, 64))
	return &kgo.Record{Topic: topic, Key: []byte(r.device), Value: v, Headers: []kgo.RecordHeader{
		{Key: bus.HeaderDevice, Value: []byte(r.device)},
		{Key: bus.HeaderTopic, Value: []byte("/devices/" + r.device + "/events")},
		{Key: bus.HeaderReceivedAt, Value: bus.FormatMillis(now)},
	}}
}

// crashRig is the Kafka side of a crash test: topics, group, admin client.
type crashRig struct {
	t      *testing.T
	seeds  []string
	prefix string
	topics bus.Topics
	group  string
	cl     *kgo.Client
	adm    *kadm.Client
	sizes  []time.Duration
	procs  []*procHandle
}

func newCrashRig(t *testing.T, partitions int32, sizes []time.Duration) *crashRig {
	t.Helper()
	seeds := testkafka.Seeds(t) // kfake in this process, or IOTPIPE_KAFKA_BROKERS
	prefix := testkafka.Prefix(t)
	r := &crashRig{t: t, seeds: seeds, prefix: prefix, topics: bus.TopicNames(prefix), group: prefix + "processor", sizes: sizes}
	r.cl = testkafka.Client(t, seeds)
	r.adm = kadm.NewClient(r.cl)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.EnsureTopics(ctx, r.cl, r.topics.Specs(partitions), 1); err != nil {
		t.Fatal(err)
	}
	testkafka.WaitTopic(t, seeds, r.topics.Telemetry)
	testkafka.WaitTopic(t, seeds, r.topics.DeadLetter)
	return r
}

// produce sends the stream paced to the wall clock (slot i at start + i·tick)
// and returns when every record is acknowledged. It reports how far behind
// its schedule it fell at worst.
func (r *crashRig) produce(s *crashStream, start time.Time) (behind time.Duration, err error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(r.seeds...), kgo.MaxBufferedRecords(1<<20), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	var failed atomic.Pointer[error]
	for i, sl := range s.slots {
		due := start.Add(time.Duration(i) * s.tick)
		if d := time.Until(due); d > 0 {
			time.Sleep(d) // pacing the producer, not synchronising with the system under test
		} else {
			behind = max(behind, -d)
		}
		now := time.Now()
		for _, rec := range sl {
			cl.Produce(context.Background(), rec.kafka(r.topics.Telemetry, now), func(_ *kgo.Record, err error) {
				if err != nil {
					failed.CompareAndSwap(nil, &err)
				}
			})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := cl.Flush(ctx); err != nil {
		return behind, err
	}
	if p := failed.Load(); p != nil {
		return behind, *p
	}
	return behind, nil
}

// procHandle is one `iotpipe processor` process.
type procHandle struct {
	name    string
	cmd     *exec.Cmd
	logs    *syncBuffer
	exited  chan error
	httpURL string
	started time.Time
}

// startProc launches `iotpipe processor` on dataDir (its own chDB).
func (r *crashRig) startProc(name, dataDir string, lateness, idle time.Duration) *procHandle {
	t := r.t
	t.Helper()
	port := freePort(t)
	sizes := make([]string, len(r.sizes))
	for i, s := range r.sizes {
		sizes[i] = s.String()
	}
	p := &procHandle{name: name, logs: &syncBuffer{}, exited: make(chan error, 1),
		httpURL: fmt.Sprintf("http://127.0.0.1:%d", port), started: time.Now()}
	p.cmd = exec.Command(binary, "processor", "--kafka-brokers", strings.Join(r.seeds, ","),
		"--topic-prefix", r.prefix, "--consumer-group", r.group, "--data-dir", dataDir,
		"--partitions", "6", "--window-sizes", strings.Join(sizes, ","),
		"--allowed-lateness", lateness.String(), "--idle-timeout", idle.String(),
		"--http-addr", fmt.Sprintf("127.0.0.1:%d", port), "--log-format", "json", "--log-level", "info")
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	r.procs = append(r.procs, p)
	return p
}

// waitReady polls /readyz; it fails the test if the process exits first.
func (p *procHandle) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-p.exited:
			p.exited <- err
			t.Fatalf("%s exited before ready: %v\n%s", p.name, err, tail(p.logs.String(), 40))
		default:
		}
		if resp, err := http.Get(p.httpURL + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 60s\n%s", p.name, tail(p.logs.String(), 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill SIGKILLs the process and waits for it to be gone. A process that
// exited on its own before is a failure: processors do not stop by themselves.
func (p *procHandle) kill(t *testing.T) {
	t.Helper()
	select {
	case err := <-p.exited:
		p.exited <- err
		t.Fatalf("%s exited by itself before the kill: %v\n%s", p.name, err, tail(p.logs.String(), 40))
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s: %v", p.name, err)
	}
	err := <-p.exited
	p.exited <- err
}

// stop sends SIGTERM and requires a clean exit.
func (p *procHandle) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("signal %s: %v", p.name, err)
	}
	select {
	case err := <-p.exited:
		p.exited <- err
		if err != nil {
			t.Fatalf("%s exited with %v after SIGTERM\n%s", p.name, err, tail(p.logs.String(), 40))
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not stop within 60s of SIGTERM\n%s", p.name, tail(p.logs.String(), 40))
	}
}

// cleanup kills what still runs and, on failure, shows the processes' logs.
func (r *crashRig) cleanup() {
	for _, p := range r.procs {
		if p.cmd.ProcessState == nil {
			select {
			case err := <-p.exited:
				p.exited <- err
			default:
				_ = p.cmd.Process.Kill()
				<-p.exited
			}
		}
		if r.t.Failed() || os.Getenv("IOTPIPE_TEST_LOGS") != "" {
			r.t.Logf("%s output (last lines):\n%s", p.name, tail(p.logs.String(), 30))
		}
	}
}

// members lists the group's current member ids.
func (r *crashRig) members() []string {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dg, err := r.adm.DescribeGroups(ctx, r.group)
	if err != nil {
		r.t.Fatalf("describe group: %v", err)
	}
	var ids []string
	for _, g := range dg {
		if g.Err != nil && !errorsIsGroupMissing(g.Err) {
			r.t.Fatalf("describe group %s: %v", g.Group, g.Err)
		}
		for _, m := range g.Members {
			ids = append(ids, m.MemberID)
		}
	}
	slices.Sort(ids)
	return ids
}

func errorsIsGroupMissing(err error) bool {
	return err == kerr.GroupIDNotFound || err == kerr.CoordinatorNotAvailable
}

// evict removes the group's members other than keep, as the coordinator does
// when a dead member's session times out. A SIGKILLed consumer cannot leave;
// without this every restart would wait out kgo's 45 s session timeout (the
// processor has no flag for it).
func (r *crashRig) evict(keep ...string) []string {
	r.t.Helper()
	var gone []string
	for _, id := range r.members() {
		if !slices.Contains(keep, id) {
			gone = append(gone, id)
		}
	}
	if len(gone) == 0 {
		return nil
	}
	req := kmsg.NewPtrLeaveGroupRequest()
	req.Group = r.group
	for _, id := range gone {
		m := kmsg.NewLeaveGroupRequestMember()
		m.MemberID = id
		reason := "crash test: member was SIGKILLed"
		m.Reason = &reason
		req.Members = append(req.Members, m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := req.RequestWith(ctx, r.cl)
	if err == nil {
		err = kerr.ErrorForCode(resp.ErrorCode)
	}
	if err != nil {
		r.t.Fatalf("evict %v: %v", gone, err)
	}
	for _, m := range resp.Members {
		if e := kerr.ErrorForCode(m.ErrorCode); e != nil && e != kerr.UnknownMemberID {
			r.t.Fatalf("evict %s: %v", m.MemberID, e)
		}
	}
	return gone
}

// progress reports, per partition, the committed offset and the end offset.
func (r *crashRig) progress() (committed, end map[int32]int64) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := r.adm.ListEndOffsets(ctx, r.topics.Telemetry)
	if err != nil {
		r.t.Fatalf("end offsets: %v", err)
	}
	end = map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) { end[o.Partition] = o.Offset })
	committed = map[int32]int64{}
	offs, err := r.adm.FetchOffsets(ctx, r.group)
	if err != nil {
		return committed, end
	}
	offs.Each(func(o kadm.OffsetResponse) {
		if o.Topic == r.topics.Telemetry && o.Err == nil {
			committed[o.Partition] = o.At
		}
	})
	return committed, end
}

// waitDrained waits until every partition's committed offset is its end
// offset: every record processed, and (since a checkpoint's offset stays at
// the first record of the oldest open window) every window final and stored.
func (r *crashRig) waitDrained(timeout time.Duration, procs ...*procHandle) {
	r.t.Helper()
	var last string
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, p := range procs {
			select {
			case err := <-p.exited:
				p.exited <- err
				r.t.Fatalf("%s exited while draining: %v\n%s", p.name, err, tail(p.logs.String(), 40))
			default:
			}
		}
		committed, end := r.progress()
		done := len(end) > 0
		for part, e := range end {
			if committed[part] != e {
				done = false
			}
		}
		if done {
			return
		}
		last = fmt.Sprintf("committed %v, end %v", committed, end)
		time.Sleep(200 * time.Millisecond)
	}
	r.t.Fatalf("not drained after %v: %s", timeout, last)
}

// deadLetters returns the dead-letter topic's records (there should be none:
// the stream has no bad or too-late readings).
func (r *crashRig) deadLetters() []*kgo.Record {
	return testkafka.Consume(r.t, r.seeds, r.topics.DeadLetter, 0, 30*time.Second)
}

// The store reader runs in a child process (this test binary again): chDB
// allows one data path per process, and a test reads two stores.
const (
	envDumpPath = "IOTPIPE_CRASH_DUMP_PATH"
	envDumpOut  = "IOTPIPE_CRASH_DUMP_OUT"
)

// readStore returns every stored window of the chDB store at path as
// storage.Windows lists it (FINAL: per window the highest version).
func readStore(t *testing.T, path string) map[crashWin]crashAgg {
	t.Helper()
	out := filepath.Join(t.TempDir(), "dump.jsonl")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashStoreDumpHelper$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), envDumpPath+"="+path, envDumpOut+"="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("read store %s: %v\n%s", path, err, tail(string(b), 40))
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := map[crashWin]crashAgg{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var w storage.Window
		if err := json.Unmarshal(sc.Bytes(), &w); err != nil {
			t.Fatalf("dump line %q: %v", sc.Text(), err)
		}
		k := crashWin{w.Device, w.Metric, w.Size, w.Start.Unix()}
		if _, dup := got[k]; dup {
			t.Errorf("store %s: window %+v listed twice", path, k)
		}
		if w.Version == 0 {
			t.Errorf("store %s: window %+v has version 0 (versions are 1 + an offset)", path, k)
		}
		got[k] = crashAgg{agg: agg{Count: w.Count, Sum: w.Sum, Min: w.Min, Max: w.Max},
			First: w.First, Last: w.Last, FirstAt: w.FirstAt.UTC(), LastAt: w.LastAt.UTC(), Version: w.Version}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestCrashStoreDumpHelper is not a test: it is the child process of
// readStore. It writes every stored window of one chDB store
// (storage.Windows) as JSON lines; encoding/json round-trips finite floats
// and times exactly.
func TestCrashStoreDumpHelper(t *testing.T) {
	path := os.Getenv(envDumpPath)
	if path == "" {
		t.Skip("helper process of the crash tests")
	}
	ctx := context.Background()
	st, err := storage.Open(ctx, storage.Config{Path: path, RawRetention: storage.DefaultRawRetention, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ws, err := st.Windows(ctx, storage.WindowsQuery{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(os.Getenv(envDumpOut))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for _, win := range ws {
		if err := enc.Encode(win); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
}

// compareWindows reports every difference between stored and expected
// windows: missing, extra, and wrong (a count above the expected one is a
// double count).
func compareWindows(t *testing.T, got, want map[crashWin]crashAgg) {
	t.Helper()
	var missing, extra, doubled, wrong int
	var report []string
	note := func(s string) {
		if len(report) < 20 {
			report = append(report, s)
		}
	}
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			missing++
			note(fmt.Sprintf("missing %+v (want %+v)", k, w))
		case g.Count > w.Count:
			doubled++
			note(fmt.Sprintf("double-counted %+v: got %+v, want %+v", k, g, w))
		case !g.equal(w):
			wrong++
			note(fmt.Sprintf("wrong %+v: got %+v, want %+v", k, g, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			extra++
			note(fmt.Sprintf("extra %+v: %+v", k, g))
		}
	}
	if missing+extra+doubled+wrong > 0 {
		t.Errorf("stored windows differ from the expectation (%d windows): %d missing, %d extra, %d double-counted, %d wrong; first ones:\n%s",
			len(want), missing, extra, doubled, wrong, strings.Join(report, "\n"))
	}
}

// requireChdb skips (or fails under IOTPIPE_REQUIRE_ALL=1) without libchdb:
// the processors store into their own embedded engine.
func requireChdb(t *testing.T) {
	t.Helper()
	if os.Getenv("CHDB_LIB_PATH") != "" {
		return
	}
	if os.Getenv("IOTPIPE_REQUIRE_ALL") == "1" {
		t.Fatal("crash test needs CHDB_LIB_PATH (export CHDB_LIB_PATH=$(scripts/chdb.sh))")
	}
	t.Skip("SKIP: crash test needs CHDB_LIB_PATH (export CHDB_LIB_PATH=$(scripts/chdb.sh)); the processors store into chDB")
}
