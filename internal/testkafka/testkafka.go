// Package testkafka gives tests a Kafka to talk to: an in-process kfake
// cluster by default, or a real Apache Kafka when IOTPIPE_KAFKA_BROKERS is set
// (comma separated, e.g. the 127.0.0.1:19092 that scripts/kafka.sh start
// prints). Tests written against Seeds run unchanged on both, like franz-go's
// integration tests with KGO_SEEDS.
//
//	seeds := testkafka.Seeds(t)
//	topic := testkafka.Prefix(t) + "registry"
//
// A real cluster is shared by every test and every run, so each test names
// its topics with Prefix and never assumes an empty cluster.
package testkafka

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/bus"
)

// EnvBrokers names the environment variable that points tests at a real
// Kafka instead of kfake.
const EnvBrokers = "IOTPIPE_KAFKA_BROKERS"

// Real returns the brokers from IOTPIPE_KAFKA_BROKERS, or nil when tests run
// on kfake.
func Real() []string { return bus.ParseBrokers(os.Getenv(EnvBrokers)) }

// Seeds returns broker addresses for the test: the real cluster's when
// IOTPIPE_KAFKA_BROKERS is set, else those of a fresh kfake cluster that is
// closed when the test ends.
func Seeds(t testing.TB) []string {
	t.Helper()
	if real := Real(); len(real) > 0 {
		return real
	}
	return newCluster(t).ListenAddrs()
}

// Cluster starts a kfake cluster for a test that needs its fault controls
// (Control, MoveTopicPartition, persistence, ...). Such a test cannot run
// against a real Kafka, so it is skipped when IOTPIPE_KAFKA_BROKERS is set.
func Cluster(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	if len(Real()) > 0 {
		t.Skipf("SKIP: %s is set (real Kafka); this test needs kfake's in-process fault controls", EnvBrokers)
	}
	return newCluster(t, opts...)
}

func newCluster(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1)}, opts...)...)
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// Prefix returns a topic prefix unique to this test and run, ending in '.',
// so tests can share one real Kafka without seeing each other's records.
func Prefix(t testing.TB) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("random prefix: %v", err)
	}
	name := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, t.Name())
	// Kafka allows 249 characters; leave room for the topic's own name.
	if len(name) > 150 {
		name = name[:150]
	}
	return "t." + name + "." + hex.EncodeToString(b[:]) + "."
}

// Client returns a kgo client on seeds plus opts, closed when the test ends.
func Client(t testing.TB, seeds []string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(seeds...)}, opts...)...)
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// WaitTopic waits until every broker's metadata lists topic with its leaders
// elected. On a real cluster CreateTopics returns before that, and a produce
// or a group join in that gap fails or waits out a metadata back-off.
func WaitTopic(t testing.TB, seeds []string, topic string) {
	t.Helper()
	adm := kadm.NewClient(Client(t, seeds))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		md, err := adm.Metadata(ctx, topic)
		if err == nil {
			td, ok := md.Topics[topic]
			switch {
			case !ok:
				err = kerr.UnknownTopicOrPartition
			case td.Err != nil:
				err = td.Err
			default:
				for _, p := range td.Partitions {
					if p.Err != nil || p.Leader < 0 {
						err = errors.Join(err, kerr.LeaderNotAvailable)
					}
				}
			}
			if err == nil && len(td.Partitions) > 0 {
				return
			}
		}
		last = err
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("topic %s not ready: %v", topic, last)
}

// Eventually polls cond every 10ms until it returns true or timeout passes,
// then fails the test with msg. Use it instead of sleeping.
func Eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: %s", timeout, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Consume reads topic from its start until at least n records arrived and
// returns them, failing the test after timeout. With n = 0 it returns what
// the topic holds once a one-second poll brings nothing more.
func Consume(t testing.TB, seeds []string, topic string, n int, timeout time.Duration) []*kgo.Record {
	t.Helper()
	cl := Client(t, seeds, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	defer cl.Close()
	deadline := time.Now().Add(timeout)
	var out []*kgo.Record
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		got := cl.PollFetches(ctx).Records()
		cancel()
		out = append(out, got...)
		switch {
		case n > 0 && len(out) >= n, n == 0 && len(got) == 0:
			return out
		case time.Now().After(deadline):
			t.Fatalf("consumed %d of %d records of %s in %v", len(out), n, topic, timeout)
		}
	}
}
