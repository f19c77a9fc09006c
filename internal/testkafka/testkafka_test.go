package testkafka_test

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/testkafka"
)

func TestPrefixIsUniqueAndLegal(t *testing.T) {
	a, b := testkafka.Prefix(t), testkafka.Prefix(t)
	if a == b {
		t.Fatalf("two prefixes are equal: %s", a)
	}
	legal := regexp.MustCompile(`^[a-zA-Z0-9._-]+\.$`)
	if !legal.MatchString(a) || len(a) > 200 {
		t.Fatalf("prefix %q is not a legal topic name start", a)
	}
}

func TestSeedsServeProduceConsume(t *testing.T) {
	seeds := testkafka.Seeds(t)
	topic := testkafka.Prefix(t) + "roundtrip"
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := kadm.NewClient(testkafka.Client(t, seeds)).CreateTopic(ctx, 1, -1, nil, topic); err != nil {
		t.Fatal(err)
	}
	testkafka.WaitTopic(t, seeds, topic)
	p := testkafka.Client(t, seeds)
	if err := p.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte("hello")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	c := testkafka.Client(t, seeds, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	fs := c.PollRecords(ctx, 1)
	if err := fs.Err0(); err != nil {
		t.Fatal(err)
	}
	if recs := fs.Records(); len(recs) != 1 || string(recs[0].Value) != "hello" {
		t.Fatalf("got %v", recs)
	}
}

func TestClusterSkipsOnRealKafka(t *testing.T) {
	c := testkafka.Cluster(t) // skips loudly when IOTPIPE_KAFKA_BROKERS is set
	if len(c.ListenAddrs()) == 0 {
		t.Fatal("kfake cluster has no addresses")
	}
}
