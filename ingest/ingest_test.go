package ingest_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/iotpipe/iotpipe/ingest"
	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/internal/testkafka"
)

const topic = "iot.telemetry"

func cluster(t *testing.T) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func newForwarder(t *testing.T, c *kfake.Cluster, mod func(*ingest.Config)) (*ingest.Forwarder, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := ingest.Config{
		Kafka:   []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)},
		Topic:   topic,
		Logger:  zerolog.New(io.Discard),
		Metrics: reg,
	}
	if mod != nil {
		mod(&cfg)
	}
	f, err := ingest.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close(context.Background()) })
	return f, reg
}

func consume(t *testing.T, c *kfake.Cluster, n int) []*kgo.Record {
	t.Helper()
	return testkafka.Consume(t, c.ListenAddrs(), topic, n, 10*time.Second)
}

func TestNewValidates(t *testing.T) {
	if _, err := ingest.New(ingest.Config{Kafka: []kgo.Opt{kgo.SeedBrokers("127.0.0.1:1")}}); err == nil {
		t.Error("missing topic accepted")
	}
	if _, err := ingest.New(ingest.Config{Topic: topic}); err == nil {
		t.Error("missing kafka options accepted")
	}
	// Nothing listens on port 1: the ping must fail fast, not at first message.
	_, err := ingest.New(ingest.Config{Topic: topic, PingTimeout: 500 * time.Millisecond,
		Kafka: []kgo.Opt{kgo.SeedBrokers("127.0.0.1:1")}})
	if err == nil {
		t.Error("unreachable kafka accepted")
	}
}

func TestForwardRecordShape(t *testing.T) {
	c := cluster(t)
	f, reg := newForwarder(t, c, nil)
	at := time.UnixMilli(1_700_000_000_123)
	payload := []byte{0, 1, 2, 0xff, '{'}
	res := make(chan error, 1)
	f.Forward(context.Background(), ingest.Message{Device: "dev-1", Topic: "/devices/dev-1/events/a",
		ContentType: "application/json", Payload: payload, ReceivedAt: at}, func(err error) { res <- err })
	if err := <-res; err != nil {
		t.Fatal(err)
	}
	r := consume(t, c, 1)[0]
	if string(r.Key) != "dev-1" || string(r.Value) != string(payload) {
		t.Fatalf("key/value = %q/%q", r.Key, r.Value)
	}
	for k, want := range map[string]string{bus.HeaderDevice: "dev-1", bus.HeaderTopic: "/devices/dev-1/events/a",
		bus.HeaderContentType: "application/json", bus.HeaderReceivedAt: "1700000000123"} {
		if got := bus.Header(r, k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	if got := metricValue(t, reg, "iotpipe_kafka_produced_records_total"); got != 1 {
		t.Errorf("produced counter = %v", got)
	}
	if got := metricValue(t, reg, "iotpipe_kafka_produce_latency_seconds"); got != 1 {
		t.Errorf("latency observations = %v", got)
	}
}

func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// Kafka down: done fails within the delivery timeout instead of hanging, and
// never reports success.
func TestForwardFailsWhenKafkaDown(t *testing.T) {
	c := cluster(t)
	f, _ := newForwarder(t, c, func(cfg *ingest.Config) { cfg.DeliveryTimeout = time.Second })
	c.Close()
	res := make(chan error, 1)
	f.Forward(context.Background(), ingest.Message{Device: "d", Topic: "/devices/d/events", ReceivedAt: time.Now()},
		func(err error) { res <- err })
	select {
	case err := <-res:
		if err == nil {
			t.Fatal("success reported with kafka down")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("done not called within 20s of a 1s delivery timeout")
	}
}

// The buffer is bounded: with Kafka not answering, Forward blocks once
// MaxBufferedRecords are buffered (and gives up when its ctx ends).
func TestForwardBackpressure(t *testing.T) {
	c := cluster(t)
	f, _ := newForwarder(t, c, func(cfg *ingest.Config) { cfg.MaxBufferedRecords = 4 })
	release := make(chan struct{})
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		c.SleepControl(func() { <-release })
		return nil, nil, false
	})
	defer close(release)
	results := make(chan error, 10)
	for i := 0; i < 4; i++ {
		f.Forward(context.Background(), ingest.Message{Device: "d", ReceivedAt: time.Now()}, func(err error) { results <- err })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	f.Forward(ctx, ingest.Message{Device: "d", ReceivedAt: time.Now()}, func(err error) { results <- err })
	if ctx.Err() == nil {
		t.Fatal("fifth Forward returned before its ctx expired although the buffer holds 4")
	}
	if err := <-results; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("blocked record error = %v, want deadline exceeded", err)
	}
}
