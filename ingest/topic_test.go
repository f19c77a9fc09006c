package ingest_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/ingest"
	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/internal/testkafka"
)

// Message.KafkaTopic sends one message elsewhere (device state to the state
// topic) with the same record shape; a missing topic fails its done.
func TestForwardToOtherTopic(t *testing.T) {
	c := cluster(t)
	f, _ := newForwarder(t, c, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := bus.EnsureTopics(ctx, testkafka.Client(t, c.ListenAddrs()), []bus.TopicSpec{{Name: "iot.state", Partitions: 2}}, -1); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	f.Forward(ctx, ingest.Message{Device: "d1", Topic: "/devices/d1/state", Payload: []byte("on"), ReceivedAt: time.Now(),
		KafkaTopic: "iot.state"}, func(err error) { res <- err })
	if err := <-res; err != nil {
		t.Fatal(err)
	}
	r := testkafka.Consume(t, c.ListenAddrs(), "iot.state", 1, 10*time.Second)[0]
	if string(r.Key) != "d1" || string(r.Value) != "on" || bus.Header(r, bus.HeaderTopic) != "/devices/d1/state" {
		t.Fatalf("record %q=%q %v", r.Key, r.Value, r.Headers)
	}
	if got := testkafka.Consume(t, c.ListenAddrs(), topic, 0, 5*time.Second); len(got) != 0 {
		t.Errorf("%d records on the telemetry topic", len(got))
	}
}

// The error names the topic the message was for.
func TestForwardErrorNamesTopic(t *testing.T) {
	c := cluster(t)
	f, _ := newForwarder(t, c, func(cfg *ingest.Config) { cfg.DeliveryTimeout = time.Second })
	res := make(chan error, 1)
	f.Forward(context.Background(), ingest.Message{Device: "d1", Payload: []byte("x"), ReceivedAt: time.Now(),
		KafkaTopic: "no-such-topic"}, func(err error) { res <- err })
	if err := <-res; err == nil || !strings.Contains(err.Error(), "no-such-topic") {
		t.Fatalf("err %v, want a failure naming no-such-topic", err)
	}
}
