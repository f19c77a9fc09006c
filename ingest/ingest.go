// Package ingest forwards device messages from the MQTT broker to the Kafka
// telemetry topic, losslessly and asynchronously.
//
// A Forwarder produces one record per message: key = device id, value = the
// payload bytes exactly as published, headers as described in internal/bus.
// The producer runs with acks=all and idempotence, so the done callback given
// to Forward reports nil only once every in-sync replica has the record; the
// broker acknowledges the device only then.
//
// Memory is bounded: at most Config.MaxBufferedRecords records are buffered.
// When Kafka is slow or down, Forward blocks (backpressure on the caller)
// instead of growing, and a record that is not delivered within
// Config.DeliveryTimeout fails its done callback.
//
//	fw, err := ingest.New(ingest.Config{Kafka: []kgo.Opt{kgo.SeedBrokers("localhost:9092")}, Topic: "iot.telemetry"})
//	...
//	fw.Forward(ctx, ingest.Message{Device: "d1", Topic: "/devices/d1/events", Payload: b, ReceivedAt: now},
//		func(err error) { /* ack the device if err == nil */ })
//	defer fw.Close(ctx)
package ingest

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/bus"
)

// ErrClosed is passed to done for messages forwarded after Close.
var ErrClosed = errors.New("ingest: forwarder closed")

// Defaults for zero Config fields.
const (
	DefaultMaxBufferedRecords = 10_000
	DefaultDeliveryTimeout    = 30 * time.Second
	DefaultLinger             = 2 * time.Millisecond
	DefaultPingTimeout        = 10 * time.Second
)

// Config configures a Forwarder.
type Config struct {
	// Kafka holds the base client options (seeds, TLS, SASL...). The
	// producer settings below are added after them and win.
	Kafka []kgo.Opt `yaml:"-"`
	// Topic is the telemetry topic, normally bus.TopicNames(prefix).Telemetry.
	Topic string `yaml:"topic"`
	// MaxBufferedRecords bounds the records waiting for Kafka; when full,
	// Forward blocks. Default DefaultMaxBufferedRecords.
	MaxBufferedRecords int `yaml:"max_buffered_records"`
	// DeliveryTimeout fails a record that Kafka has not acknowledged in
	// this time (also bounds how long Forward blocks on a full buffer).
	// Default DefaultDeliveryTimeout.
	DeliveryTimeout time.Duration `yaml:"delivery_timeout"`
	// Linger lets records of the same partition share a request. A few ms
	// costs little latency and saves many requests. Default DefaultLinger;
	// negative disables lingering.
	Linger time.Duration `yaml:"linger"`
	// PingTimeout bounds the start-up check that Kafka is reachable.
	PingTimeout time.Duration `yaml:"ping_timeout"`

	Logger  zerolog.Logger        `yaml:"-"`
	Metrics prometheus.Registerer `yaml:"-"`
}

// Message is one device message to forward.
type Message struct {
	Device      string    // device id: record key and iot-device header
	Topic       string    // MQTT topic it was published to
	ContentType string    // MQTT 5 content type, may be empty
	Payload     []byte    // forwarded untouched; must not be modified until done runs
	ReceivedAt  time.Time // broker receive time
	// KafkaTopic overrides Config.Topic for this message (the broker sends
	// device state to the state topic); empty means Config.Topic.
	KafkaTopic string
}

// Forwarder produces device messages to Kafka. It is safe for concurrent use.
type Forwarder struct {
	cl      *kgo.Client
	topic   string
	timeout time.Duration
	log     zerolog.Logger

	closed atomic.Bool // after Close, Forward fails at once (kgo would too, less clearly)

	latency  prometheus.Histogram
	produced prometheus.Counter
	failed   prometheus.Counter
}

// New validates cfg, creates the producer and pings Kafka, so a wrong address
// fails here rather than on the first message.
func New(cfg Config) (*Forwarder, error) {
	if cfg.Topic == "" {
		return nil, errors.New("ingest: Topic is required")
	}
	if len(cfg.Kafka) == 0 {
		return nil, errors.New("ingest: Kafka options (at least the seed brokers) are required")
	}
	if cfg.MaxBufferedRecords < 0 || cfg.DeliveryTimeout < 0 || cfg.PingTimeout < 0 {
		return nil, errors.New("ingest: MaxBufferedRecords, DeliveryTimeout and PingTimeout must not be negative")
	}
	if cfg.MaxBufferedRecords == 0 {
		cfg.MaxBufferedRecords = DefaultMaxBufferedRecords
	}
	if cfg.DeliveryTimeout == 0 {
		cfg.DeliveryTimeout = DefaultDeliveryTimeout
	}
	if cfg.Linger == 0 {
		cfg.Linger = DefaultLinger
	}
	if cfg.PingTimeout == 0 {
		cfg.PingTimeout = DefaultPingTimeout
	}

	opts := append([]kgo.Opt{}, cfg.Kafka...)
	opts = append(opts,
		kgo.DefaultProduceTopic(cfg.Topic),
		kgo.RequiredAcks(kgo.AllISRAcks()), // the device is acked only after every in-sync replica has it
		kgo.MaxBufferedRecords(cfg.MaxBufferedRecords),
		kgo.RecordDeliveryTimeout(cfg.DeliveryTimeout),
		// Idempotence is kgo's default and must stay on (do not pass
		// DisableIdempotentWrite): retries then cannot duplicate or reorder a
		// device's records, and promises complete in order per partition.
	)
	if cfg.Linger > 0 {
		opts = append(opts, kgo.ProducerLinger(cfg.Linger))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("ingest: kafka client: %w", err)
	}
	pctx, cancel := context.WithTimeout(context.Background(), cfg.PingTimeout)
	defer cancel()
	if err := cl.Ping(pctx); err != nil {
		cl.Close()
		return nil, fmt.Errorf("ingest: ping kafka: %w", err)
	}

	f := auto(cfg.Metrics)
	return &Forwarder{
		cl:      cl,
		topic:   cfg.Topic,
		timeout: cfg.DeliveryTimeout,
		log:     cfg.Logger.With().Str("component", "ingest").Logger(),
		latency: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "iotpipe_kafka_produce_latency_seconds",
			Help:    "Time from Forward to Kafka's acks=all acknowledgement (or failure).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		produced: f.NewCounter(prometheus.CounterOpts{
			Name: "iotpipe_kafka_produced_records_total",
			Help: "Telemetry records acknowledged by Kafka.",
		}),
		failed: f.NewCounter(prometheus.CounterOpts{
			Name: "iotpipe_kafka_produce_failures_total",
			Help: "Telemetry records that could not be delivered to Kafka.",
		}),
	}, nil
}

func auto(reg prometheus.Registerer) promauto.Factory {
	return promauto.With(reg) // a nil Registerer creates unregistered metrics
}

// Forward produces m asynchronously. done is called exactly once: with nil
// after Kafka acknowledged the record with acks=all, otherwise with the error.
// Forward blocks while the producer buffer is full (backpressure), at most
// until ctx is done or DeliveryTimeout passes. done must be fast and must
// not block: franz-go calls it on its promise goroutine.
func (f *Forwarder) Forward(ctx context.Context, m Message, done func(error)) {
	if f.closed.Load() {
		f.failed.Inc()
		done(ErrClosed)
		return
	}
	topic := m.KafkaTopic
	if topic == "" {
		topic = f.topic
	}
	r := &kgo.Record{
		Topic: topic,
		Key:   []byte(m.Device),
		Value: m.Payload,
		Headers: []kgo.RecordHeader{
			{Key: bus.HeaderDevice, Value: []byte(m.Device)},
			{Key: bus.HeaderTopic, Value: []byte(m.Topic)},
			{Key: bus.HeaderContentType, Value: []byte(m.ContentType)},
			{Key: bus.HeaderReceivedAt, Value: bus.FormatMillis(m.ReceivedAt)},
		},
		// Timestamp stays unset: kgo sets it to now and measures
		// RecordDeliveryTimeout from it; the receive time is in a header.
	}
	// The timeout bounds the wait for buffer space; RecordDeliveryTimeout
	// bounds the time in the buffer and in flight.
	rctx, cancel := context.WithTimeout(ctx, f.timeout)
	start := time.Now()
	f.cl.Produce(rctx, r, func(_ *kgo.Record, err error) {
		cancel()
		f.latency.Observe(time.Since(start).Seconds())
		if err != nil {
			f.failed.Inc()
			done(fmt.Errorf("ingest: produce to %s: %w", topic, err))
			return
		}
		f.produced.Inc()
		done(nil)
	})
}

// Close stops accepting messages, waits (bounded by ctx) for buffered
// records to be acknowledged, then closes the client; records still
// unacknowledged then fail their done callbacks.
func (f *Forwarder) Close(ctx context.Context) error {
	if f.closed.Swap(true) {
		return nil
	}
	err := f.cl.Flush(ctx)
	f.cl.Close()
	if err != nil {
		return fmt.Errorf("ingest: flush on close: %w", err)
	}
	return nil
}
