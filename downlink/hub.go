package downlink

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/bus"
)

// Outcomes of a command; the error each maps to is what SendCommand returns.
var (
	ErrNotConnected  = errors.New("device is not connected")
	ErrNotSubscribed = errors.New("device is not subscribed to its commands topic")
	ErrDeviceTimeout = errors.New("device did not acknowledge the command in time")
	ErrRejected      = errors.New("device refused the command")
	ErrBusy          = errors.New("too many commands in flight")
	// ErrNoReply: the instance holding the device did not answer in time
	// (crashed, or Kafka too slow).
	ErrNoReply = errors.New("no answer from the instance holding the device")
)

// Defaults for zero Config fields.
const (
	DefaultAckTimeout       = 10 * time.Second
	DefaultReplyMargin      = 5 * time.Second
	DefaultHeartbeat        = 5 * time.Second
	DefaultActivityInterval = time.Minute
	DefaultMaxWaiting       = 1024
	DefaultMaxDeliveries    = 256
)

// Deliverer delivers a command to a device connected to this instance, as
// *broker.Broker does. It returns the QoS used, or an error wrapping one of
// ErrNotConnected, ErrNotSubscribed, ErrDeviceTimeout, ErrRejected, ErrBusy.
// ctx ends at the command's deadline.
type Deliverer interface {
	DeliverCommand(ctx context.Context, device, topic string, payload []byte) (qos byte, err error)
}

// Config configures a Hub.
type Config struct {
	Kafka         []kgo.Opt // base client options (seeds, TLS, SASL)
	Topic         string    // the downlink topic
	PresenceTopic string    // the compacted presence topic
	// Instance names this process on the topics; empty picks a random one
	// (one per process start, see the package doc).
	Instance string
	// AckTimeout is how long the holding instance waits for a QoS 1 PUBACK;
	// the requester waits AckTimeout+ReplyMargin for the reply.
	AckTimeout  time.Duration
	ReplyMargin time.Duration
	// Heartbeat is how often an instance with a broker says it is alive;
	// Lease (default 3×Heartbeat) is how long silence is tolerated.
	Heartbeat time.Duration
	Lease     time.Duration
	// ActivityInterval throttles last_heartbeat/last_event writes per device.
	ActivityInterval time.Duration
	MaxWaiting       int // requests this instance waits on at once
	MaxDeliveries    int // commands this instance delivers at once
	Logger           zerolog.Logger
	Metrics          prometheus.Registerer // nil: none
	Now              func() time.Time
}

// Result describes a delivered command.
type Result struct {
	QoS      byte   // QoS the device got it with (its subscription's)
	Instance string // instance that delivered it
}

// Hub is one instance's end of the downlink and presence topics.
type Hub struct {
	cfg  Config
	log  zerolog.Logger
	m    *metrics
	now  func() time.Time
	prod *kgo.Client
	cons *kgo.Client
	// presenceEnd is what WaitReady waits for: the presence topic's end
	// offsets when New ran.
	presenceEnd map[int32]int64

	deliverer Deliverer
	slots     chan struct{} // MaxDeliveries
	closeOnce sync.Once

	mu        sync.Mutex
	presence  map[string]record    // followed device records
	instances map[string]time.Time // followed instance heartbeats
	local     map[string]*local    // devices with clients on this instance
	waiting   map[string]chan reply
	applied   map[int32]int64 // presence offsets applied
	ready     chan struct{}   // closed once presence caught up
	readyDone bool
}

// record is a device's presence record as stored on the topic.
type record struct {
	Instance         string    `json:"instance"`
	Connected        bool      `json:"connected"`
	LastConnected    time.Time `json:"last_connected,omitzero"`
	LastDisconnected time.Time `json:"last_disconnected,omitzero"`
	LastHeartbeat    time.Time `json:"last_heartbeat,omitzero"`
	LastEvent        time.Time `json:"last_event,omitzero"`
	written          time.Time // Kafka record timestamp
}

type local struct {
	clients     int
	rec         record
	lastWritten time.Time
}

type reply struct {
	outcome, detail, instance string
	qos                       byte
}

const instanceKeyPrefix = "instance/"

// New validates cfg, connects to Kafka, creates the two topics if missing and
// pins the downlink read position to the current end (see the package doc).
func New(cfg Config) (*Hub, error) {
	switch {
	case len(cfg.Kafka) == 0:
		return nil, errors.New("downlink: Config.Kafka has no options")
	case cfg.Topic == "" || cfg.PresenceTopic == "":
		return nil, errors.New("downlink: Topic and PresenceTopic are required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.AckTimeout, DefaultAckTimeout)
	def(&cfg.ReplyMargin, DefaultReplyMargin)
	def(&cfg.Heartbeat, DefaultHeartbeat)
	def(&cfg.Lease, 3*cfg.Heartbeat)
	def(&cfg.ActivityInterval, DefaultActivityInterval)
	if cfg.MaxWaiting == 0 {
		cfg.MaxWaiting = DefaultMaxWaiting
	}
	if cfg.MaxDeliveries == 0 {
		cfg.MaxDeliveries = DefaultMaxDeliveries
	}
	switch {
	case cfg.AckTimeout < 0 || cfg.ReplyMargin < 0 || cfg.Heartbeat < 0 || cfg.ActivityInterval < 0:
		return nil, errors.New("downlink: durations must not be negative")
	case cfg.Lease <= cfg.Heartbeat:
		return nil, fmt.Errorf("downlink: Lease %v must exceed Heartbeat %v", cfg.Lease, cfg.Heartbeat)
	case cfg.MaxWaiting < 1 || cfg.MaxDeliveries < 1:
		return nil, errors.New("downlink: MaxWaiting and MaxDeliveries must be positive")
	}
	if cfg.Instance == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		cfg.Instance = hex.EncodeToString(b[:])
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Hub{
		cfg: cfg, now: cfg.Now, m: newMetrics(cfg.Metrics),
		log:       cfg.Logger.With().Str("component", "downlink").Str("instance", cfg.Instance).Logger(),
		slots:     make(chan struct{}, cfg.MaxDeliveries),
		presence:  map[string]record{},
		instances: map[string]time.Time{},
		local:     map[string]*local{},
		waiting:   map[string]chan reply{},
		applied:   map[int32]int64{},
		ready:     make(chan struct{}),
	}
	var err error
	h.prod, err = kgo.NewClient(append(slices.Clone(cfg.Kafka),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(0), // commands are latency-bound, not throughput-bound
		// A command nobody waits for any more is worthless; presence is
		// rewritten on the next change anyway.
		kgo.RecordDeliveryTimeout(max(cfg.AckTimeout+cfg.ReplyMargin, 5*time.Second)), // kgo allows >= 1 s
		kgo.MaxBufferedRecords(10000),
	)...)
	if err != nil {
		return nil, fmt.Errorf("downlink: kafka client: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	compact, hour := "compact", "3600000"
	if err := bus.EnsureTopics(ctx, h.prod, []bus.TopicSpec{
		{Name: cfg.Topic, Partitions: 1, Configs: map[string]*string{"retention.ms": &hour}},
		{Name: cfg.PresenceTopic, Partitions: 1, Configs: map[string]*string{"cleanup.policy": &compact}},
	}, -1); err != nil {
		h.prod.Close()
		return nil, fmt.Errorf("downlink: %w", err)
	}
	downEnd, err := endOffsets(ctx, h.prod, cfg.Topic)
	if err == nil {
		h.presenceEnd, err = endOffsets(ctx, h.prod, cfg.PresenceTopic)
	}
	if err != nil {
		h.prod.Close()
		return nil, fmt.Errorf("downlink: %w", err)
	}
	parts := map[string]map[int32]kgo.Offset{cfg.Topic: {}, cfg.PresenceTopic: {}}
	for p, o := range downEnd {
		parts[cfg.Topic][p] = kgo.NewOffset().At(o)
	}
	for p := range h.presenceEnd {
		parts[cfg.PresenceTopic][p] = kgo.NewOffset().AtStart()
	}
	h.cons, err = kgo.NewClient(append(slices.Clone(cfg.Kafka), kgo.ConsumePartitions(parts),
		// Apache Kafka answers a fetch as soon as data arrives, but the
		// embedded kfake waits out FetchMaxWait (measured: 5 s per command
		// with the default); a short wait costs a few empty fetches a second.
		kgo.FetchMaxWait(100*time.Millisecond))...)
	if err != nil {
		h.prod.Close()
		return nil, fmt.Errorf("downlink: kafka follower client: %w", err)
	}
	h.checkReady()
	return h, nil
}

// endOffsets lists a topic's end offsets, retrying while a just-created
// topic is not in the metadata yet.
func endOffsets(ctx context.Context, cl *kgo.Client, topic string) (map[int32]int64, error) {
	adm := kadm.NewClient(cl)
	for {
		ends, err := adm.ListEndOffsets(ctx, topic)
		if err == nil {
			err = ends.Error()
		}
		if err == nil && len(ends[topic]) > 0 {
			out := map[int32]int64{}
			for p, o := range ends[topic] {
				out[p] = o.Offset
			}
			return out, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("end offsets of %s: %w", topic, errors.Join(err, ctx.Err()))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Instance is this hub's instance id.
func (h *Hub) Instance() string { return h.cfg.Instance }

// SetDeliverer makes this instance deliver commands for the devices
// connected to it and heartbeat its liveness. Call it before Run.
func (h *Hub) SetDeliverer(d Deliverer) { h.deliverer = d }

// WaitReady returns once the presence known at New has been read.
func (h *Hub) WaitReady(ctx context.Context) error {
	select {
	case <-h.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("downlink: presence not caught up: %w", ctx.Err())
	}
}

// Run follows both topics and heartbeats until ctx ends, then writes this
// instance's tombstone, flushes and closes the clients.
func (h *Hub) Run(ctx context.Context) error {
	defer h.Close()
	beats := make(chan struct{})
	if h.deliverer != nil {
		h.heartbeat()
		go func() {
			defer close(beats)
			t := time.NewTicker(h.cfg.Heartbeat)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					h.heartbeat()
				}
			}
		}()
	} else {
		close(beats)
	}
	ferr := bus.Follow(ctx, h.cons, h.log, func(r *kgo.Record) {
		if r.Topic == h.cfg.PresenceTopic {
			h.applyPresence(r)
		} else {
			h.handleDownlink(r)
		}
	}, h.checkReady)
	if ferr != nil {
		return fmt.Errorf("downlink: %w", ferr) // heartbeats end with ctx
	}
	<-beats // no heartbeat after the tombstone
	fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if h.deliverer != nil {
		// Devices already wrote their disconnections (the broker stopped
		// first); saying the instance is gone ends its lease at once.
		h.prod.Produce(fctx, &kgo.Record{Topic: h.cfg.PresenceTopic, Key: []byte(instanceKeyPrefix + h.cfg.Instance)}, nil)
	}
	if err := h.prod.Flush(fctx); err != nil {
		h.log.Warn().Err(err).Msg("flush presence at shutdown")
	}
	return nil
}

// Close closes the Kafka clients; Run does it when it returns. For a Hub
// that never ran.
func (h *Hub) Close() {
	h.closeOnce.Do(func() {
		h.cons.Close()
		h.prod.Close()
	})
}

func (h *Hub) checkReady() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.readyDone {
		return
	}
	for p, end := range h.presenceEnd {
		if h.applied[p] < end {
			return
		}
	}
	h.readyDone = true
	close(h.ready)
}

func (h *Hub) heartbeat() {
	v := strconv.AppendInt(nil, h.now().UnixMilli(), 10)
	h.tryProduce(&kgo.Record{Topic: h.cfg.PresenceTopic, Key: []byte(instanceKeyPrefix + h.cfg.Instance), Value: v,
		Timestamp: h.now()})
}

// tryProduce never blocks the caller (MQTT hooks, the consumer loop): when
// the producer buffer is full the record is dropped and logged.
func (h *Hub) tryProduce(r *kgo.Record) {
	h.prod.TryProduce(context.Background(), r, func(r *kgo.Record, err error) {
		if err != nil {
			h.m.presenceDrops.Inc()
			h.log.Warn().Err(err).Str("topic", r.Topic).Str("key", string(r.Key)).Msg("downlink write failed")
		}
	})
}
