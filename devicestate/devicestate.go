// Package devicestate keeps the latest state each device reported, by
// following the compacted state topic (iot.state: key = device id, value = the
// payload the device published to /devices/D/state, headers as telemetry).
// Every API instance reads all partitions from the start and keeps following,
// as the registry follows its topic; there is no consumer group, so every
// instance holds every device's latest state.
//
//	st, err := devicestate.New(devicestate.Config{Kafka: opts, Topic: "iot.state"})
//	go st.Run(ctx)
//	err = st.WaitReady(ctx) // read back what the topic held at start
//	s, ok := st.Get("sensor-1")
//
// Memory: one payload per device that ever reported state, plus about 100
// bytes. Payloads are bounded by the broker's max payload (256 KiB default)
// and here by Config.MaxBytes; a device's state is replaced, never
// accumulated. 10k devices with 1 KiB states cost about 11 MB per instance.
// Forget (the API calls it on device deletion) writes a tombstone.
package devicestate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/bus"
)

// DefaultMaxBytes is the largest state kept, the broker's default max payload.
const DefaultMaxBytes = 256 << 10

// Config configures a Store.
type Config struct {
	// Kafka are the base client options (at least kgo.SeedBrokers).
	Kafka []kgo.Opt
	// Topic is the state topic, normally bus.TopicNames(p).State.
	Topic string
	// MaxBytes: a larger state record (only a foreign writer could make
	// one) is skipped and logged. Default DefaultMaxBytes.
	MaxBytes int
	Logger   zerolog.Logger
}

// State is a device's latest reported state.
type State struct {
	Data []byte
	// UpdateTime is when the broker received it (the iot-received-at
	// header), or the record's timestamp if the header is missing.
	UpdateTime time.Time
}

// Store is the in-memory view of the state topic. Safe for concurrent use.
type Store struct {
	cfg Config
	log zerolog.Logger
	cl  *kgo.Client

	mu     sync.RWMutex
	states map[string]State
	behind map[int32]int64 // partition → end offset at New not yet reached
	ready  chan struct{}   // closed once behind is empty
}

// New validates cfg and creates the consumer; Run reads.
func New(cfg Config) (*Store, error) {
	if cfg.Topic == "" {
		return nil, errors.New("devicestate: Config.Topic is empty")
	}
	if len(cfg.Kafka) == 0 {
		return nil, errors.New("devicestate: Config.Kafka has no options (at least kgo.SeedBrokers)")
	}
	if cfg.MaxBytes < 0 {
		return nil, errors.New("devicestate: Config.MaxBytes must not be negative")
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	cl, err := kgo.NewClient(append(slices.Clone(cfg.Kafka),
		kgo.ConsumeTopics(cfg.Topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)...)
	if err != nil {
		return nil, fmt.Errorf("devicestate: kafka client: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := cl.Ping(ctx); err != nil {
		cl.Close()
		return nil, fmt.Errorf("devicestate: ping kafka: %w", err)
	}
	s := &Store{cfg: cfg, log: cfg.Logger.With().Str("component", "devicestate").Str("topic", cfg.Topic).Logger(),
		cl: cl, states: map[string]State{}, behind: map[int32]int64{}, ready: make(chan struct{})}
	// What WaitReady waits for: the end offsets now. A topic that does not
	// exist yet has nothing to catch up with.
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, cfg.Topic)
	if err == nil {
		err = ends.Error()
	}
	switch {
	case errors.Is(err, kerr.UnknownTopicOrPartition):
	case err != nil:
		cl.Close()
		return nil, fmt.Errorf("devicestate: end offsets of %s: %w", cfg.Topic, err)
	default:
		ends.Each(func(o kadm.ListedOffset) {
			if o.Offset > 0 {
				s.behind[o.Partition] = o.Offset
			}
		})
	}
	if len(s.behind) == 0 {
		close(s.ready)
	}
	return s, nil
}

// WaitReady blocks until the store read everything the topic held when New
// ran (so a device's state is not reported missing while it is still being
// read back), or ctx ends.
func (s *Store) WaitReady(ctx context.Context) error {
	select {
	case <-s.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("devicestate: still reading %s back: %w", s.cfg.Topic, ctx.Err())
	}
}

// Run follows the topic until ctx ends (then it returns nil). Close after.
func (s *Store) Run(ctx context.Context) error {
	if err := bus.Follow(ctx, s.cl, s.log, s.apply, nil); err != nil {
		return fmt.Errorf("devicestate: %w", err)
	}
	return nil
}

func (s *Store) apply(r *kgo.Record) {
	defer s.caughtUp(r.Partition, r.Offset)
	id := string(r.Key)
	if r.Value != nil && len(r.Value) > s.cfg.MaxBytes {
		s.log.Warn().Str("device", id).Int("bytes", len(r.Value)).Int("max", s.cfg.MaxBytes).Msg("state too large; skipped")
		return
	}
	at := r.Timestamp.UTC()
	if h := bus.Header(r, bus.HeaderReceivedAt); h != "" {
		if t, err := bus.ParseMillis(h); err == nil {
			at = t
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.Value == nil {
		delete(s.states, id)
		return
	}
	// Partitions are read concurrently but a key lives on one partition, in
	// order, so the last applied record of a device is its latest state.
	// Cloned: r.Value points into the fetch buffer, which would stay alive.
	s.states[id] = State{Data: slices.Clone(r.Value), UpdateTime: at}
}

// caughtUp notes that the partition was read up to offset (inclusive). The
// record at end-1 always exists: it is in the active segment, which
// compaction never cleans (as for the registry's WaitReady).
func (s *Store) caughtUp(p int32, offset int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	end, ok := s.behind[p]
	if !ok || offset+1 < end {
		return
	}
	delete(s.behind, p)
	if len(s.behind) == 0 {
		close(s.ready)
	}
}

// Get returns the device's latest state, if it reported one.
func (s *Store) Get(id string) (State, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st, ok := s.states[id]
	return st, ok // Data is never modified after apply
}

// Forget writes a tombstone for the device's state (the API calls it when
// the device is deleted), so a device later created with the same id does
// not inherit it and compaction drops it. It returns after Kafka has the
// tombstone; every instance forgets the state when it reads it. The
// tombstone lands on the state's partition because this client hashes keys
// as the broker's producer does (kgo's default partitioner).
func (s *Store) Forget(ctx context.Context, id string) error {
	if err := s.cl.ProduceSync(ctx, &kgo.Record{Topic: s.cfg.Topic, Key: []byte(id)}).FirstErr(); err != nil {
		return fmt.Errorf("devicestate: forget %s: %w", id, err)
	}
	return nil
}

// Close releases the Kafka client. Run returns after Close.
func (s *Store) Close() { s.cl.Close() }
