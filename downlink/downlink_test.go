package downlink_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/broker"
	"github.com/iotpipe/iotpipe/downlink"
	"github.com/iotpipe/iotpipe/ingest"
	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/internal/testkafka"
	"github.com/iotpipe/iotpipe/registry"
)

// tokens is the test devices' registry: id → token.
type tokens map[string]string

func (d tokens) Authenticate(id string, pw []byte) error {
	if tok, ok := d[id]; !ok || tok != string(pw) {
		return registry.ErrBadCredentials
	}
	return nil
}

type cluster struct {
	seeds           []string
	topic, presence string
}

func newCluster(t *testing.T) cluster {
	p := testkafka.Prefix(t)
	return cluster{seeds: testkafka.Seeds(t), topic: p + "downlink", presence: p + "presence"}
}

func (c cluster) hub(t *testing.T, mod func(*downlink.Config)) *downlink.Hub {
	t.Helper()
	cfg := downlink.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(c.seeds...)}, Topic: c.topic, PresenceTopic: c.presence,
		AckTimeout: 2 * time.Second, ReplyMargin: time.Second, Logger: zerolog.Nop()}
	if mod != nil {
		mod(&cfg)
	}
	h, err := downlink.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func run(t *testing.T, h *downlink.Hub) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("hub Run: %v", err)
		}
	})
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := h.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
}

// brokerWith runs a broker whose commands and presence go through hub.
func (c cluster) brokerWith(t *testing.T, hub *downlink.Hub) *broker.Broker {
	t.Helper()
	telemetry := testkafka.Prefix(t) + "telemetry"
	if err := bus.EnsureTopics(context.Background(), testkafka.Client(t, c.seeds), []bus.TopicSpec{{Name: telemetry, Partitions: 1}}, -1); err != nil {
		t.Fatal(err)
	}
	fw, err := ingest.New(ingest.Config{Kafka: []kgo.Opt{kgo.SeedBrokers(c.seeds...)}, Topic: telemetry})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{TCPAddr: "127.0.0.1:0", Auth: tokens{"dev-1": "tok-1", "dev-2": "tok-2"},
		Forwarder: fw, Presence: hub, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	hub.SetDeliverer(b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = fw.Close(context.Background())
	})
	return b
}

type device struct {
	c   *paho.Client
	got chan *paho.Publish
}

func connect(t *testing.T, addr, id, tok, filter string) *device {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	d := &device{got: make(chan *paho.Publish, 8)}
	d.c = paho.NewClient(paho.ClientConfig{Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			d.got <- pr.Packet
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ca, err := d.c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true, PasswordFlag: true,
		Password: []byte(tok)}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	t.Cleanup(func() { _ = d.c.Disconnect(&paho.Disconnect{}) })
	if filter != "" {
		if _, err := d.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// Two instances on one Kafka: A has no broker (an API instance), B holds the
// device. A sees B's presence, and A's command reaches the device on B.
func TestCommandAcrossInstances(t *testing.T) {
	c := newCluster(t)
	aMetrics, bMetrics := prometheus.NewRegistry(), prometheus.NewRegistry()
	a := c.hub(t, func(cfg *downlink.Config) { cfg.Metrics = aMetrics })
	run(t, a)
	bHub := c.hub(t, func(cfg *downlink.Config) { cfg.Metrics = bMetrics })
	br := c.brokerWith(t, bHub)
	run(t, bHub)

	send := func(dev, topic, payload string) (downlink.Result, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return a.SendCommand(ctx, dev, topic, []byte(payload))
	}
	start := time.Now()
	if _, err := send("dev-1", "/devices/dev-1/commands", "x"); !errors.Is(err, downlink.ErrNotConnected) || time.Since(start) > time.Second {
		t.Fatalf("offline device: %v after %v", err, time.Since(start))
	}

	d := connect(t, br.Addr(), "dev-1", "tok-1", "/devices/dev-1/commands/#")
	testkafka.Eventually(t, 10*time.Second, "A sees dev-1 connected", func() bool { return a.Presence("dev-1").Connected })
	p := a.Presence("dev-1")
	if p.Instance != bHub.Instance() || p.LastConnected.IsZero() {
		t.Fatalf("presence %+v, want instance %s", p, bHub.Instance())
	}
	res, err := send("dev-1", "/devices/dev-1/commands/opt/sub", "hello")
	if err != nil || res.QoS != 1 || res.Instance != bHub.Instance() {
		t.Fatalf("send: %+v %v", res, err)
	}
	select {
	case pk := <-d.got:
		if pk.Topic != "/devices/dev-1/commands/opt/sub" || string(pk.Payload) != "hello" {
			t.Fatalf("device got %s %q", pk.Topic, pk.Payload)
		}
	default:
		t.Fatal("SendCommand returned before the device got the command") // QoS 1: after its PUBACK
	}

	// The instance holding the device delivers its own API's commands
	// without the round trip through Kafka.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if res, err := bHub.SendCommand(ctx, "dev-1", "/devices/dev-1/commands", []byte("local")); err != nil || res.Instance != bHub.Instance() {
		t.Fatalf("local send: %+v %v", res, err)
	}
	if pk := <-d.got; string(pk.Payload) != "local" {
		t.Fatalf("device got %q", pk.Payload)
	}

	connect(t, br.Addr(), "dev-2", "tok-2", "")
	testkafka.Eventually(t, 10*time.Second, "A sees dev-2 connected", func() bool { return a.Presence("dev-2").Connected })
	if _, err := send("dev-2", "/devices/dev-2/commands", "x"); !errors.Is(err, downlink.ErrNotSubscribed) {
		t.Fatalf("unsubscribed device: %v", err)
	}

	_ = d.c.Disconnect(&paho.Disconnect{})
	testkafka.Eventually(t, 10*time.Second, "A sees dev-1 disconnected", func() bool { return !a.Presence("dev-1").Connected })
	if p := a.Presence("dev-1"); !p.LastDisconnected.After(p.LastConnected) {
		t.Fatalf("presence after disconnect %+v", p)
	}
	start = time.Now()
	if _, err := send("dev-1", "/devices/dev-1/commands", "x"); !errors.Is(err, downlink.ErrNotConnected) || time.Since(start) > time.Second {
		t.Fatalf("disconnected device: %v after %v", err, time.Since(start))
	}

	for _, m := range []struct {
		reg          *prometheus.Registry
		name, labels string
		want         float64
	}{
		{aMetrics, "iotpipe_commands_total", "delivered", 1},
		{aMetrics, "iotpipe_commands_total", "not_connected", 2},
		{aMetrics, "iotpipe_commands_total", "not_subscribed", 1},
		{aMetrics, "iotpipe_commands_waiting", "", 0},
		{bMetrics, "iotpipe_command_deliveries_total", "delivered", 2},
		{bMetrics, "iotpipe_commands_total", "delivered", 1},
		{bMetrics, "iotpipe_command_deliveries_total", "not_subscribed", 1},
		{bMetrics, "iotpipe_command_deliveries_in_progress", "", 0},
	} {
		if got := metricValue(t, m.reg, m.name, m.labels); got != m.want {
			t.Errorf("%s{%s} = %v, want %v", m.name, m.labels, got, m.want)
		}
	}
}

// metricValue reads a counter (with outcome label) or gauge; -1 if absent.
func metricValue(t *testing.T, reg *prometheus.Registry, name, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := outcome == ""
			for _, lp := range m.GetLabel() {
				match = match || lp.GetName() == "outcome" && lp.GetValue() == outcome
			}
			if !match {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// A crashed instance leaves "connected" records and a last heartbeat behind.
// Within the lease its devices still count as connected (and a command to
// one gets no reply: ErrNoReply); once the lease passed they are not, and
// the last heartbeat is their disconnection time.
func TestCrashedInstanceLease(t *testing.T) {
	c := newCluster(t)
	const lease = 2 * time.Second
	a := c.hub(t, func(cfg *downlink.Config) {
		cfg.Heartbeat, cfg.Lease, cfg.AckTimeout, cfg.ReplyMargin = lease/4, lease, 200*time.Millisecond, 200*time.Millisecond
	})
	run(t, a)
	cl := testkafka.Client(t, c.seeds)
	write := func(key string, v []byte, ts time.Time) {
		t.Helper()
		if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: c.presence, Key: []byte(key), Value: v, Timestamp: ts}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	rec, _ := json.Marshal(map[string]any{"instance": "ghost", "connected": true, "last_connected": now.Add(-time.Hour)})
	write("instance/ghost", strconv.AppendInt(nil, now.UnixMilli(), 10), now)
	write("dev-9", rec, now.Add(-time.Hour))
	testkafka.Eventually(t, 5*time.Second, "ghost's device connected within the lease", func() bool { return a.Presence("dev-9").Connected })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a.SendCommand(ctx, "dev-9", "/devices/dev-9/commands", []byte("x")); !errors.Is(err, downlink.ErrNoReply) {
		t.Fatalf("command to a crashed instance's device: %v", err)
	}
	testkafka.Eventually(t, 3*lease, "ghost's lease to end", func() bool { return !a.Presence("dev-9").Connected })
	if p := a.Presence("dev-9"); !p.LastDisconnected.Equal(time.UnixMilli(now.UnixMilli())) || p.Instance != "" {
		t.Fatalf("presence %+v, want disconnected at ghost's last heartbeat %v", p, now)
	}
}

// Heartbeats keep a running instance's devices connected beyond the lease,
// and its clean shutdown says they are gone at once.
func TestHeartbeatAndCleanShutdown(t *testing.T) {
	c := newCluster(t)
	fast := func(cfg *downlink.Config) { cfg.Heartbeat, cfg.Lease = 100*time.Millisecond, 400*time.Millisecond }
	a := c.hub(t, fast)
	run(t, a)
	bHub := c.hub(t, fast)
	br := c.brokerWith(t, bHub)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- bHub.Run(ctx) }()
	connect(t, br.Addr(), "dev-1", "tok-1", "/devices/dev-1/commands/#")
	testkafka.Eventually(t, 10*time.Second, "A sees dev-1 connected", func() bool { return a.Presence("dev-1").Connected })
	connectedAt := time.Now()
	for time.Since(connectedAt) < 1200*time.Millisecond { // three leases
		if !a.Presence("dev-1").Connected {
			t.Fatalf("dev-1 looked disconnected after %v while its instance heartbeats", time.Since(connectedAt))
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel() // the hub stops (tombstone) while the device is still connected to the broker
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	testkafka.Eventually(t, 300*time.Millisecond, "A to see the instance gone", func() bool { return !a.Presence("dev-1").Connected })
}

// PINGREQs and PUBLISHes reach presence as last_heartbeat/last_event, at
// most once per ActivityInterval per device: with an interval of an hour
// nothing after the connect is written; with 200 ms the times follow.
func TestActivityThrottled(t *testing.T) {
	for _, tc := range []struct {
		interval time.Duration
		written  bool
	}{{time.Hour, false}, {200 * time.Millisecond, true}} {
		t.Run(tc.interval.String(), func(t *testing.T) {
			c := newCluster(t)
			a := c.hub(t, nil)
			run(t, a)
			bHub := c.hub(t, func(cfg *downlink.Config) { cfg.ActivityInterval = tc.interval })
			br := c.brokerWith(t, bHub)
			run(t, bHub)
			conn, err := net.Dial("tcp", br.Addr())
			if err != nil {
				t.Fatal(err)
			}
			cl := paho.NewClient(paho.ClientConfig{Conn: conn})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			// KeepAlive 1 s: Paho sends a PINGREQ about every second.
			if ca, err := cl.Connect(ctx, &paho.Connect{ClientID: "dev-1", KeepAlive: 1, CleanStart: true, PasswordFlag: true,
				Password: []byte("tok-1")}); err != nil || ca.ReasonCode != 0 {
				t.Fatalf("connect: %v %+v", err, ca)
			}
			defer cl.Disconnect(&paho.Disconnect{})
			testkafka.Eventually(t, 5*time.Second, "connected", func() bool { return a.Presence("dev-1").Connected })
			deadline := time.Now().Add(3 * time.Second)
			var p downlink.Presence
			for time.Now().Before(deadline) {
				if _, err := cl.Publish(ctx, &paho.Publish{QoS: 0, Topic: "/devices/dev-1/events", Payload: []byte(`{"t": 1}`)}); err != nil {
					t.Fatal(err)
				}
				p = a.Presence("dev-1")
				if !p.LastEvent.IsZero() && !p.LastHeartbeat.IsZero() {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if got := !p.LastEvent.IsZero() && !p.LastHeartbeat.IsZero(); got != tc.written {
				t.Fatalf("after 3 s of publishes and pings: last event %v, last heartbeat %v; want written=%v", p.LastEvent, p.LastHeartbeat, tc.written)
			}
		})
	}
}

// A device that moved from instance A to B, where A's "disconnected" record
// lands after B's "connected" one (A noticed the old connection end late):
// every instance keeps the device connected on B, and B writes its record
// again so the topic's last record for the device (what compaction keeps)
// says so too.
func TestDeviceMovedDisconnectLandsLate(t *testing.T) {
	c := newCluster(t)
	a := c.hub(t, func(cfg *downlink.Config) { cfg.Instance = "inst-a" })
	run(t, a)
	b := c.hub(t, func(cfg *downlink.Config) { cfg.Instance = "inst-b" })
	run(t, b)
	a.DeviceConnected("dev-m")
	testkafka.Eventually(t, 5*time.Second, "B sees dev-m on A", func() bool { return b.Presence("dev-m").Instance == "inst-a" })
	b.DeviceConnected("dev-m")
	testkafka.Eventually(t, 5*time.Second, "A sees dev-m on B", func() bool { return a.Presence("dev-m").Instance == "inst-b" })

	// The connection on A ends; A has applied B's record, so it writes
	// nothing. Then A's record as A writes it when it has not yet applied
	// B's: the race this is about.
	a.DeviceDisconnected("dev-m")
	cl := testkafka.Client(t, c.seeds)
	late, _ := json.Marshal(map[string]any{"instance": "inst-a", "connected": false,
		"last_connected": time.Now().Add(-time.Minute), "last_disconnected": time.Now()})
	lateRec, err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: c.presence, Key: []byte("dev-m"), Value: late}).First()
	if err != nil {
		t.Fatal(err)
	}
	// last reads the topic to its end and returns dev-m's last record.
	last := func() (rec map[string]any, offset int64) {
		rd := testkafka.Client(t, c.seeds, kgo.ConsumeTopics(c.presence), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
		defer rd.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, c.presence)
		if err != nil {
			t.Fatal(err)
		}
		offset = -1
		seen := map[int32]int64{}
		reached := func() bool {
			done := true
			ends.Each(func(o kadm.ListedOffset) { done = done && seen[o.Partition] >= o.Offset })
			return done
		}
		for !reached() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			fs := rd.PollFetches(ctx)
			cancel()
			if err := fs.Err0(); err != nil {
				t.Fatal(err)
			}
			fs.EachRecord(func(r *kgo.Record) {
				seen[r.Partition] = r.Offset + 1
				if string(r.Key) == "dev-m" {
					rec, offset = nil, r.Offset
					if err := json.Unmarshal(r.Value, &rec); err != nil {
						t.Fatal(err)
					}
				}
			})
		}
		return rec, offset
	}
	testkafka.Eventually(t, 5*time.Second, "B to write dev-m's record again after A's late one", func() bool {
		rec, off := last()
		return off > lateRec.Offset && rec["connected"] == true && rec["instance"] == "inst-b"
	})
	for name, h := range map[string]*downlink.Hub{"A": a, "B": b} {
		if p := h.Presence("dev-m"); !p.Connected || p.Instance != "inst-b" {
			t.Errorf("%s: dev-m presence %+v, want connected on inst-b", name, p)
		}
	}
}
