// Package registry is iotpipe's device registry. Its source of truth is a
// compacted Kafka topic (iot.registry by default): key = device id, value =
// the device record as JSON, tombstone = deleted. Every Registry reads the
// topic's single partition from the start into memory and keeps following it,
// so any number of instances share one registry without a database (the
// pattern of Kafka Connect's config topic and Schema Registry's _schemas).
//
// Reads (Get, List, Authenticate) answer from memory. Writes (Create, Delete,
// SetBlocked, AddCredential, ...) produce to the topic with acks=all and
// return only after this instance's follower applied the produced record, so
// a caller reads its own writes. Other instances see the write once their followers get to it.
//
// Use:
//
//	reg, err := registry.New(registry.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(seeds...)}, Topic: "iot.registry", Logger: log})
//	go reg.Run(ctx)             // follow the topic until ctx ends
//	err = reg.WaitReady(ctx)    // caught up with what existed at start
//	dev, token, err := reg.Create(ctx, registry.Spec{ID: "sensor-1"})
//	err = reg.Authenticate("sensor-1", []byte(token))
//
// # Concurrent writers
//
// Every record carries a revision, and followers refuse a record that lost a
// race with one applied before it, so concurrent writes of one device through
// different instances are decided identically everywhere; the loser retries on
// the new state (or, for Create, reports ErrExists). See revisions.go, which
// also covers what compaction does to a losing record.
package registry

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/bus"
)

// Config configures a Registry.
type Config struct {
	// Kafka are the base client options (seed brokers, TLS, SASL, ...). The
	// registry adds its own consume and produce options on top.
	Kafka []kgo.Opt
	// Topic is the compacted registry topic, e.g. bus.TopicNames(p).Registry.
	// New creates it (one partition, cleanup.policy=compact, the broker's
	// default replication factor) if it does not exist.
	Topic string
	// Logger gets the registry's log lines; the zero value logs nothing.
	Logger zerolog.Logger
	// Now is the clock for record timestamps and credential expiry;
	// nil means time.Now.
	Now func() time.Time
	// JWTAudience is the project id a device JWT's aud must equal. Empty
	// refuses every JWT (tokens still work).
	JWTAudience string
	// ClockSkew is how far a JWT's iat may lie ahead and its exp behind;
	// zero means DefaultClockSkew.
	ClockSkew time.Duration
	// ClientCAs, if set, admit a TLS client certificate that chains to
	// them as the device named by its CommonName (AuthenticateCertificate).
	ClientCAs *x509.CertPool
}

// startTimeout bounds the work New does against Kafka (ping, topic
// creation, end offsets), so a wrong address fails at start, not later.
const startTimeout = 30 * time.Second

// Registry is the in-memory view of the registry topic plus the writer for
// it. It is safe for concurrent use.
type Registry struct {
	cfg   Config
	log   zerolog.Logger
	cl    *kgo.Client // produces and administers
	cons  *kgo.Client // follows the topic: a direct consumer of partition 0
	now   func() time.Time
	start int64 // end offset of the partition when New ran: WaitReady's target

	runOnce sync.Once

	mu      sync.RWMutex
	devices map[string]*entry
	applied int64         // offset after the last applied record
	changed chan struct{} // closed and replaced whenever applied advances
	refused refusals      // records that lost a concurrent write (revisions.go)

	noAudLogged atomic.Int64 // unix second of the last "no JWT audience" log line

	watch watchers // see Watch
}

// entry is an applied device plus the offset and revision of the record it
// came from.
type entry struct {
	dev    Device
	offset int64
	rev    uint64 // see revisions.go
	// keys[i] is the parsed public key of dev.Credentials[i], nil for a
	// token or a type this binary does not know: parsed once on apply so a
	// reconnecting fleet does not parse PEM on every CONNECT.
	keys []crypto.PublicKey
	// refs[i] is dev.Credentials[i].ref(), computed once on apply: every
	// session of the device shares these strings instead of its own copy.
	refs []string
}

// New validates cfg, connects to Kafka, makes sure the topic exists with a
// single partition, and notes its end offset for WaitReady. It does not read
// the topic yet: call Run.
func New(cfg Config) (*Registry, error) {
	if cfg.Topic == "" {
		return nil, errors.New("registry: Config.Topic is empty")
	}
	if len(cfg.Kafka) == 0 {
		return nil, errors.New("registry: Config.Kafka has no options (at least kgo.SeedBrokers)")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ClockSkew == 0 {
		cfg.ClockSkew = DefaultClockSkew
	}
	if cfg.ClockSkew < 0 {
		return nil, errors.New("registry: Config.ClockSkew must not be negative")
	}
	log := cfg.Logger.With().Str("component", "registry").Str("topic", cfg.Topic).Logger()

	opts := append(slices.Clone(cfg.Kafka),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		// One partition; the default partitioner would also pick 0, but
		// stating it keeps a mis-created topic from scattering keys.
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("registry: kafka client: %w", err)
	}
	r := &Registry{
		cfg:     cfg,
		log:     log,
		cl:      cl,
		now:     cfg.Now,
		devices: make(map[string]*entry),
		changed: make(chan struct{}),
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := r.prepare(ctx); err != nil {
		cl.Close()
		return nil, fmt.Errorf("registry: %w", err)
	}
	// The follower is its own client, made only now that the topic exists
	// (a direct consumer of a missing topic would back off on metadata).
	// No consumer group: every instance reads everything, from the start.
	r.cons, err = kgo.NewClient(append(slices.Clone(cfg.Kafka),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{cfg.Topic: {0: kgo.NewOffset().AtStart()}}),
	)...)
	if err != nil {
		cl.Close()
		return nil, fmt.Errorf("registry: kafka follower client: %w", err)
	}
	return r, nil
}

// prepare pings Kafka, creates the topic if needed and records the end offset
// that WaitReady waits for.
func (r *Registry) prepare(ctx context.Context) error {
	if err := r.cl.Ping(ctx); err != nil {
		return fmt.Errorf("ping kafka: %w", err)
	}
	compact := "compact"
	spec := bus.TopicSpec{Name: r.cfg.Topic, Partitions: 1, Configs: map[string]*string{"cleanup.policy": &compact}}
	if err := bus.EnsureTopics(ctx, r.cl, []bus.TopicSpec{spec}, -1); err != nil {
		return err
	}
	adm := kadm.NewClient(r.cl)
	// A topic just created may not be in every broker's metadata yet: retry
	// the listing until it shows up or the start timeout ends.
	for {
		ends, err := adm.ListEndOffsets(ctx, r.cfg.Topic)
		if err == nil {
			err = ends.Error()
		}
		if err == nil {
			parts := ends[r.cfg.Topic]
			if len(parts) != 1 {
				return fmt.Errorf("topic %s has %d partitions, the registry needs exactly 1 (keys must stay in one ordered log)", r.cfg.Topic, len(parts))
			}
			r.start = parts[0].Offset
			return nil
		}
		if !retriable(err) {
			return fmt.Errorf("end offsets of %s: %w", r.cfg.Topic, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("end offsets of %s: %w (last error: %w)", r.cfg.Topic, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func retriable(err error) bool {
	return errors.Is(err, kerr.UnknownTopicOrPartition) || errors.Is(err, kerr.LeaderNotAvailable) ||
		errors.Is(err, kerr.NotLeaderForPartition) || kerr.IsRetriable(err)
}

// Run follows the topic and applies every record to memory until ctx ends
// (then it returns nil) or the client fails. Writes and WaitReady need Run to
// be running. Call it once; Close after it returned.
func (r *Registry) Run(ctx context.Context) error {
	first := false
	r.runOnce.Do(func() { first = true })
	if !first {
		return errors.New("registry: Run called twice")
	}
	if err := bus.Follow(ctx, r.cons, r.log, r.apply, nil); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	return nil
}

// apply puts one record into memory. A record that does not decode is logged
// and skipped, not fatal: one bad write must not stop every instance.
func (r *Registry) apply(rec *kgo.Record) {
	id := string(rec.Key)
	var dev *Device
	var rev uint64
	var keys []crypto.PublicKey
	if rec.Value != nil {
		d, err := decodeRecord(rec.Value)
		switch {
		case err != nil:
			r.log.Error().Err(err).Int64("offset", rec.Offset).Str("device", id).Msg("skipping undecodable registry record")
		case d.ID != id:
			r.log.Error().Int64("offset", rec.Offset).Str("device", id).Str("value_id", d.ID).Msg("skipping registry record whose key and id differ")
		default:
			if d.Version > recordVersion {
				r.log.Warn().Int("version", d.Version).Int64("offset", rec.Offset).Str("device", id).Msg("registry record is newer than this binary; unknown fields ignored")
			}
			dev, rev = &d.Device, d.Rev
			keys = r.parseKeys(dev, rec.Offset)
		}
	}

	r.mu.Lock()
	switch {
	case rec.Value == nil:
		delete(r.devices, id)
	case dev != nil && !accepts(r.devices[id], rev):
		r.log.Debug().Int64("offset", rec.Offset).Str("device", id).Uint64("rev", rev).Msg("registry record lost a concurrent write; ignored")
		r.refused.add(rec.Offset)
		dev = nil
	case dev != nil:
		r.devices[id] = &entry{dev: *dev, offset: rec.Offset, rev: rev, keys: keys, refs: credentialRefs(dev.Credentials)}
	}
	if rec.Offset+1 > r.applied {
		r.applied = rec.Offset + 1
		close(r.changed)
		r.changed = make(chan struct{})
	}
	r.mu.Unlock()
	// Outside the lock: watchers read the registry (SessionValid).
	if rec.Value == nil || dev != nil {
		r.notify(id)
	}
}

// parseKeys parses the device's public keys. A key that does not parse
// (AddCredential validates, so only a hand-made record) is logged and
// ignored: that credential cannot authenticate, the others still can.
func (r *Registry) parseKeys(d *Device, offset int64) []crypto.PublicKey {
	var keys []crypto.PublicKey
	for i, c := range d.Credentials {
		if c.Type.jwtAlg() == "" {
			continue
		}
		k, err := parsePublicKey(c.Type, c.PublicKey)
		if err != nil {
			r.log.Error().Err(err).Int64("offset", offset).Str("device", d.ID).Int("credential", i).Msg("ignoring unusable public key")
			continue
		}
		if keys == nil {
			keys = make([]crypto.PublicKey, len(d.Credentials))
		}
		keys[i] = k
	}
	return keys
}

// waitApplied blocks until the follower applied every record before offset
// end (exclusive), or ctx ends.
func (r *Registry) waitApplied(ctx context.Context, end int64) error {
	for {
		r.mu.RLock()
		applied, ch := r.applied, r.changed
		r.mu.RUnlock()
		if applied >= end {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("registry: waiting for offset %d (applied %d; is Run running?): %w", end, applied, ctx.Err())
		case <-ch:
		}
	}
}

// WaitReady blocks until this instance applied everything that was on the
// topic when New ran, so Get and Authenticate answer with the full registry.
//
// It waits for a record at the end offset minus one. Compaction never removes
// that record, because the cleaner never touches the active segment and the
// last record is always in it; the one way around this would be a
// transaction marker at the end, and the registry does not use transactions.
func (r *Registry) WaitReady(ctx context.Context) error {
	return r.waitApplied(ctx, r.start)
}

// Close releases the Kafka clients. Run returns after Close.
func (r *Registry) Close() {
	r.cons.Close()
	r.cl.Close()
}

// Get returns the device with that id, or ErrNotFound.
func (r *Registry) Get(id string) (Device, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.devices[id]
	if !ok {
		return Device{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return e.dev.clone(), nil
}

// List returns all devices sorted by id.
func (r *Registry) List() []Device {
	r.mu.RLock()
	out := make([]Device, 0, len(r.devices))
	for _, e := range r.devices {
		out = append(out, e.dev.clone())
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b Device) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Authenticate checks a device's password and returns nil, ErrNotFound,
// ErrBadCredentials, or ErrBlocked. See AuthenticateSession.
func (r *Registry) Authenticate(deviceID string, password []byte) error {
	_, err := r.AuthenticateSession(deviceID, password)
	return err
}

// AuthenticateSession checks a device's password, an access token or a JWT
// signed by one of its public keys (Cloud IoT Core's rules, see verifyJWT),
// and returns the Session it admits. Errors are ErrNotFound,
// ErrBadCredentials, or ErrBlocked; blocked is only reported to a caller who
// proved the credentials, so it tells a stranger nothing.
func (r *Registry) AuthenticateSession(deviceID string, password []byte) (Session, error) {
	r.mu.RLock()
	e, ok := r.devices[deviceID]
	var dev Device
	var keys []crypto.PublicKey
	var refs []string
	if ok {
		dev, keys, refs = e.dev, e.keys, e.refs // read-only below; no clone needed on this hot path
	}
	r.mu.RUnlock()
	if !ok {
		return Session{}, fmt.Errorf("%w: %s", ErrNotFound, deviceID)
	}
	now := r.now()
	var s Session
	var idx int
	switch {
	case !isJWT(password):
		if idx = dev.checkToken(password, now); idx < 0 {
			return Session{}, fmt.Errorf("%w: device %s", ErrBadCredentials, deviceID)
		}
	case r.cfg.JWTAudience == "":
		r.logNoAudience()
		return Session{}, fmt.Errorf("%w: device %s: JWT refused, no JWT audience (project id) configured", ErrBadCredentials, deviceID)
	default:
		var err error
		if s.Until, idx, err = verifyJWT(password, &dev, keys, r.cfg.JWTAudience, now, r.cfg.ClockSkew); err != nil {
			return Session{}, err
		}
	}
	if dev.Blocked {
		return Session{}, fmt.Errorf("%w: %s", ErrBlocked, deviceID)
	}
	s.Credential = refs[idx]
	return s, nil
}

// logNoAudience says why JWTs fail, at most once a minute so a fleet
// retrying cannot flood the log.
func (r *Registry) logNoAudience() {
	now := time.Now().Unix()
	last := r.noAudLogged.Load()
	if now-last < 60 || !r.noAudLogged.CompareAndSwap(last, now) {
		return
	}
	r.log.Warn().Msg("refusing JWT passwords: no JWT audience configured (set --jwt-audience / IOTPIPE_JWT_AUDIENCE to the project id)")
}

// Create registers a device with one new access token and returns the device
// and the token. The token is shown only here: the registry keeps its hash.
// It returns ErrInvalidID, ErrInvalidLabels or ErrExists (see the package doc
// on races).
func (r *Registry) Create(ctx context.Context, spec Spec) (Device, string, error) {
	id := spec.ID
	if err := ValidateID(id); err != nil {
		return Device{}, "", err
	}
	if err := validateName(spec.Name); err != nil {
		return Device{}, "", err
	}
	if err := ValidateLabels(spec.Labels); err != nil {
		return Device{}, "", err
	}
	if _, err := r.Get(id); err == nil {
		return Device{}, "", fmt.Errorf("%w: %s", ErrExists, id)
	}
	token, sum, err := newToken()
	if err != nil {
		return Device{}, "", fmt.Errorf("registry: %w", err)
	}
	now := r.now().UTC()
	dev := Device{
		ID:          id,
		Name:        spec.Name,
		Labels:      maps.Clone(spec.Labels),
		CreatedAt:   now,
		UpdatedAt:   now,
		Credentials: []Credential{{Type: CredentialToken, CreatedAt: now, TokenSHA256: sum}},
	}
	if len(dev.Labels) == 0 {
		dev.Labels = nil
	}
	off, err := r.write(ctx, id, &dev, 1)
	if err != nil {
		return Device{}, "", err
	}
	// Another instance may have created the same id just before us; then
	// every follower refused ours (revisions.go) and the token would not work.
	if !r.won(id, off) {
		r.reassert(id)
		return Device{}, "", fmt.Errorf("%w: %s (created concurrently elsewhere)", ErrExists, id)
	}
	return dev.clone(), token, nil
}

// Delete removes a device (a tombstone on the topic). ErrNotFound if it is
// not known to this instance.
func (r *Registry) Delete(ctx context.Context, id string) error {
	if _, err := r.Get(id); err != nil {
		return err
	}
	_, err := r.write(ctx, id, nil, 0)
	return err
}

// SetBlocked blocks or unblocks a device: a blocked device fails
// Authenticate with ErrBlocked even with valid credentials.
func (r *Registry) SetBlocked(ctx context.Context, id string, blocked bool) error {
	return r.update(ctx, id, func(d *Device) bool { d.Blocked = blocked; return true })
}

// SetMetadata replaces a device's name and labels (nil labels: none).
func (r *Registry) SetMetadata(ctx context.Context, id, name string, labels map[string]string) error {
	if err := validateName(name); err != nil {
		return err
	}
	if err := ValidateLabels(labels); err != nil {
		return err
	}
	labels = maps.Clone(labels)
	if len(labels) == 0 {
		labels = nil
	}
	return r.update(ctx, id, func(d *Device) bool { d.Name, d.Labels = name, labels; return true })
}

// update applies fn to the current device and writes the result, setting
// UpdatedAt. fn returns false to write nothing. See updateRev for how
// concurrent writers are resolved.
func (r *Registry) update(ctx context.Context, id string, fn func(*Device) bool) error {
	return r.updateRev(ctx, id, true, fn)
}

// write produces the device record (nil: tombstone) with revision rev and
// waits until this instance applied it, returning its offset.
func (r *Registry) write(ctx context.Context, id string, dev *Device, rev uint64) (int64, error) {
	rec := &kgo.Record{Topic: r.cfg.Topic, Partition: 0, Key: []byte(id)}
	if dev != nil {
		b, err := encodeRecord(*dev, rev)
		if err != nil {
			return 0, fmt.Errorf("registry: %w", err)
		}
		rec.Value = b
	}
	res := r.cl.ProduceSync(ctx, rec)
	if err := res.FirstErr(); err != nil {
		return 0, fmt.Errorf("registry: write device %s: %w", id, err)
	}
	off := res[0].Record.Offset
	if err := r.waitApplied(ctx, off+1); err != nil {
		return 0, err
	}
	if dev == nil {
		r.log.Info().Str("device", id).Int64("offset", off).Msg("device deleted")
	} else {
		r.log.Info().Str("device", id).Int64("offset", off).Bool("blocked", dev.Blocked).Msg("device written")
	}
	return off, nil
}
