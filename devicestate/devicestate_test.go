package devicestate_test

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/devicestate"
	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/internal/testkafka"
)

// The store follows every partition: the latest record of each device wins,
// its receive time comes from the header, a tombstone forgets the device and
// a record above MaxBytes is skipped.
func TestStoreFollowsLatestState(t *testing.T) {
	seeds := testkafka.Seeds(t)
	topic := testkafka.Prefix(t) + "state"
	cl := testkafka.Client(t, seeds)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.EnsureTopics(ctx, cl, []bus.TopicSpec{{Name: topic, Partitions: 3}}, -1); err != nil {
		t.Fatal(err)
	}
	at := time.UnixMilli(1_700_000_000_000).UTC()
	rec := func(dev, v string, ms int64) *kgo.Record {
		r := &kgo.Record{Topic: topic, Key: []byte(dev), Value: []byte(v)}
		if ms != 0 {
			r.Headers = []kgo.RecordHeader{{Key: bus.HeaderReceivedAt, Value: bus.FormatMillis(at.Add(time.Duration(ms) * time.Millisecond))}}
		}
		return r
	}
	produce := func(rs ...*kgo.Record) {
		t.Helper()
		if err := cl.ProduceSync(ctx, rs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	produce(rec("a", "a1", 1), rec("b", "b1", 2), rec("a", "a2", 3), rec("c", "c1", 4))
	st, err := devicestate.New(devicestate.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(seeds...)}, Topic: topic, MaxBytes: 10, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- st.Run(rctx) }()
	t.Cleanup(func() { stop(); <-done; st.Close() })

	if err := st.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	// Ready means everything produced before New was read.
	if c, ok := st.Get("c"); !ok || string(c.Data) != "c1" {
		t.Fatalf("c after WaitReady: %q %v", c.Data, ok)
	}
	if a, _ := st.Get("a"); string(a.Data) != "a2" {
		t.Fatalf("a after WaitReady: %q, want the latest a2", a.Data)
	}
	if a, _ := st.Get("a"); !a.UpdateTime.Equal(at.Add(3 * time.Millisecond)) {
		t.Errorf("update time %v, want %v", a.UpdateTime, at.Add(3*time.Millisecond))
	}
	produce(&kgo.Record{Topic: topic, Key: []byte("b")}, rec("c", "much too large", 5), rec("a", "a3", 0))
	testkafka.Eventually(t, 20*time.Second, "tombstone and new state applied", func() bool {
		_, okB := st.Get("b")
		a, _ := st.Get("a")
		return !okB && string(a.Data) == "a3"
	})
	if c, _ := st.Get("c"); string(c.Data) != "c1" {
		t.Errorf("c = %q: a state above MaxBytes replaced it", c.Data)
	}
	if a, _ := st.Get("a"); a.UpdateTime.IsZero() || a.UpdateTime.Equal(at.Add(3*time.Millisecond)) {
		t.Errorf("without the header the record time counts; got %v", a.UpdateTime)
	}
	if _, ok := st.Get("nobody"); ok {
		t.Error("state of a device that never reported")
	}
}

// A state topic that does not exist yet has nothing to read back.
func TestStoreReadyWithoutTopic(t *testing.T) {
	seeds := testkafka.Seeds(t)
	st, err := devicestate.New(devicestate.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(seeds...)}, Topic: testkafka.Prefix(t) + "nostate", Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := st.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}
