package broker

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/rs/zerolog"

	"github.com/iotpipe/iotpipe/registry"
)

// ConfigSource is what config delivery needs from the registry, as
// *registry.Registry provides it. When Config.Auth implements it, the broker
// delivers device configs (see the package doc, "Config").
type ConfigSource interface {
	Get(deviceID string) (registry.Device, error)
	AckConfig(ctx context.Context, deviceID string, version int64, at time.Time) error
	Watch(fn func(deviceID string)) (stop func())
}

// Config delivery limits.
const (
	// configAckQueue bounds the acks waiting for their registry write; when
	// full, an ack is dropped (counted): it is a timestamp, the device has
	// its config either way.
	configAckQueue = 1024
	// configAckTimeout bounds one ack's registry write.
	configAckTimeout = 10 * time.Second
)

// configHook delivers each device's latest config to its subscriptions of
// /devices/D/config on this instance: at once after the SUBACK, and again
// whenever the registry applied a newer version (Watch fires on every
// instance). It writes the PUBLISH itself rather than through mochi's
// Server.Publish, so a new subscription gets the config alone (not every
// other subscriber of the topic) and the hook knows which packet id carries
// which version: it assigns the id and puts the packet into mochi's inflight
// store, so mochi matches the PUBACK (OnQosComplete), resends on a resumed
// session and expires it as its own. A PUBACK queues a registry write of the
// version's ack time (AckConfig: only the first ack of a version writes).
type configHook struct {
	mqtt.HookBase
	srv         *mqtt.Server
	src         ConfigSource
	maxInflight int
	log         zerolog.Logger
	acks        chan configAck

	sent, acked, deferred prometheus.Counter
	dropped               *prometheus.CounterVec

	mu      sync.Mutex
	subs    map[string][]*configSub       // device → its config subscriptions here
	pending map[*mqtt.Client][]*configSub // granted, waiting for their SUBACK to be written
	ids     map[string]map[uint16]int64   // client id → packet id → config version in flight
}

// configSub is one client's subscription to its device's config topic.
type configSub struct {
	cl    *mqtt.Client
	dev   string
	topic string
	qos   byte

	mu   sync.Mutex // serialises deliveries to this client, so versions go out in order
	last int64      // version last written
	// waiting: a newer version could not be sent because the device has as
	// many unacknowledged messages as it allows; its next PUBACK sends it.
	waiting atomic.Bool
}

type configAck struct {
	dev     string
	version int64
	at      time.Time
}

func newConfigHook(srv *mqtt.Server, src ConfigSource, maxInflight int, reg prometheus.Registerer, log zerolog.Logger) *configHook {
	f := promauto.With(reg)
	return &configHook{srv: srv, src: src, maxInflight: maxInflight, log: log, acks: make(chan configAck, configAckQueue),
		sent: f.NewCounter(prometheus.CounterOpts{Name: "iotpipe_mqtt_config_sent_total",
			Help: "Config messages written to devices."}),
		acked: f.NewCounter(prometheus.CounterOpts{Name: "iotpipe_mqtt_config_acked_total",
			Help: "Config messages a device acknowledged (QoS 1 PUBACK)."}),
		deferred: f.NewCounter(prometheus.CounterOpts{Name: "iotpipe_mqtt_config_deferred_total",
			Help: "Config deliveries put off until the device acknowledges a message (its unacknowledged messages were at its Receive Maximum or the broker's limit)."}),
		dropped: f.NewCounterVec(prometheus.CounterOpts{Name: "iotpipe_mqtt_config_dropped_total",
			Help: "Config acks not recorded (reason ack_queue_full, registry)."}, []string{"reason"}),
		subs: map[string][]*configSub{}, pending: map[*mqtt.Client][]*configSub{}, ids: map[string]map[uint16]int64{}}
}

func (h *configHook) ID() string { return "iotpipe-config" }

func (h *configHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnSessionEstablished, mqtt.OnSubscribed, mqtt.OnUnsubscribed, mqtt.OnPacketSent, mqtt.OnQosPublish,
		mqtt.OnQosComplete, mqtt.OnQosDropped, mqtt.OnDisconnect, mqtt.OnClientExpired}, []byte{b})
}

// start follows the registry and records acks until ctx ends; stop ends
// the Watch.
func (h *configHook) start(ctx context.Context) (stop func()) {
	go h.ackLoop(ctx)
	return h.src.Watch(h.deviceChanged)
}

// OnSubscribed notes granted subscriptions of the config topic; the config
// goes out once the SUBACK is written (OnPacketSent), as retained messages
// do, so the device sees its SUBACK first.
func (h *configHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	dev, err := deviceFromClientID(cl.ID)
	if err != nil {
		return
	}
	topic := "/devices/" + dev + "/config"
	for i, f := range pk.Filters {
		if f.Filter != topic || i >= len(codes) || codes[i] > 1 {
			continue
		}
		s := &configSub{cl: cl, dev: dev, topic: topic, qos: codes[i]}
		h.mu.Lock()
		// A repeated SUBSCRIBE replaces the subscription (MQTT-3.8.4-3).
		h.subs[dev] = append(slices.DeleteFunc(h.subs[dev], func(o *configSub) bool { return o.cl == cl }), s)
		h.pending[cl] = append(h.pending[cl], s)
		h.mu.Unlock()
	}
}

// OnSessionEstablished picks up a config subscription a resumed session
// (clean start off) brought along without a new SUBSCRIBE, and sends the
// latest config unless the device has it: the registry records that it
// acknowledged that version, or mochi has just resent it (a config still
// unacknowledged in the session; ResendInflightMessages runs before this
// hook). An acknowledgement not yet recorded sends the version once more,
// which QoS 1 allows.
func (h *configHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	dev, err := deviceFromClientID(cl.ID)
	if err != nil {
		return
	}
	topic := "/devices/" + dev + "/config"
	sub, ok := cl.State.Subscriptions.Get(topic)
	if !ok {
		return
	}
	s := &configSub{cl: cl, dev: dev, topic: topic, qos: min(sub.Qos, 1)}
	if d, err := h.src.Get(dev); err == nil {
		if c := d.DeviceConfig(); !c.DeviceAckTime.IsZero() {
			s.last = c.Version
		}
	}
	h.mu.Lock()
	for id, v := range h.ids[cl.ID] {
		// Only what the new connection's store holds was resent: a
		// delivery racing the takeover may have landed in the old one.
		if pk, ok := cl.State.Inflight.Get(id); ok && pk.TopicName == topic && v > s.last {
			s.last = v
		}
	}
	h.subs[dev] = append(slices.DeleteFunc(h.subs[dev], func(o *configSub) bool { return o.cl == cl }), s)
	h.mu.Unlock()
	h.deliver(s)
}

func (h *configHook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type != packets.Suback {
		return
	}
	h.mu.Lock()
	subs := h.pending[cl]
	delete(h.pending, cl)
	h.mu.Unlock()
	for _, s := range subs {
		h.deliver(s) // on the client's read goroutine, like mochi's retained messages
	}
}

func (h *configHook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	dev, err := deviceFromClientID(cl.ID)
	if err != nil {
		return
	}
	for _, f := range pk.Filters {
		if f.Filter == "/devices/"+dev+"/config" {
			h.drop(dev, cl)
		}
	}
}

func (h *configHook) drop(dev string, cl *mqtt.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if list := slices.DeleteFunc(h.subs[dev], func(o *configSub) bool { return o.cl == cl }); len(list) > 0 {
		h.subs[dev] = list
	} else {
		delete(h.subs, dev)
	}
	delete(h.pending, cl)
}

// OnDisconnect forgets the client's subscriptions; the packet ids in flight
// stay while its session may be resumed (mochi resends them then).
func (h *configHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if dev, err := deviceFromClientID(cl.ID); err == nil {
		h.drop(dev, cl)
	}
	if expire {
		h.mu.Lock()
		delete(h.ids, cl.ID)
		h.mu.Unlock()
	}
}

func (h *configHook) OnClientExpired(cl *mqtt.Client) {
	h.mu.Lock()
	delete(h.ids, cl.ID)
	h.mu.Unlock()
}

// deviceChanged is the registry's Watch callback, on the follower's
// goroutine: it only looks, and delivers from a goroutine.
func (h *configHook) deviceChanged(dev string) {
	h.mu.Lock()
	subs := slices.Clone(h.subs[dev])
	h.mu.Unlock()
	if len(subs) > 0 {
		go func() {
			for _, s := range subs {
				h.deliver(s)
			}
		}()
	}
}

// deliver writes the device's latest config to the subscription if it did
// not get that version yet.
func (h *configHook) deliver(s *configSub) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, err := h.src.Get(s.dev)
	if err != nil {
		return // deleted: the auth hook ends the session
	}
	c := d.DeviceConfig()
	if c.Version <= s.last || s.cl.Closed() {
		return
	}
	cl := s.cl
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: s.qos},
		TopicName: s.topic, Payload: c.Data, Created: time.Now().Unix()}
	if s.qos > 0 {
		// An MQTT 5 device may allow fewer unacknowledged messages (its
		// Receive Maximum); sending more would be a protocol error. Wait
		// for its next PUBACK instead (OnQosComplete): only the latest
		// version is sent then.
		limit := h.maxInflight
		if rm := int(cl.Properties.Props.ReceiveMaximum); cl.Properties.ProtocolVersion == 5 && rm > 0 {
			limit = min(limit, rm)
		}
		if cl.State.Inflight.Len() >= limit {
			s.waiting.Store(true)
			h.deferred.Inc()
			return
		}
		id, err := cl.NextPacketID()
		if err != nil {
			s.waiting.Store(true)
			h.deferred.Inc()
			return
		}
		pk.PacketID = uint16(id)
		h.mu.Lock()
		if h.ids[cl.ID] == nil {
			h.ids[cl.ID] = map[uint16]int64{}
		}
		h.ids[cl.ID][pk.PacketID] = c.Version
		h.mu.Unlock()
		// Mirrors mochi's publishToClient: the PUBACK is matched against
		// the inflight store, which also resends on a resumed session.
		if cl.State.Inflight.Set(pk) {
			atomic.AddInt64(&h.srv.Info.Inflight, 1)
			cl.State.Inflight.DecreaseSendQuota()
		}
	}
	s.waiting.Store(false)
	if err := cl.WritePacket(pk); err != nil {
		return // connection gone; a resumed session gets it resent, a new one re-subscribes
	}
	s.last = c.Version
	h.sent.Inc()
}

// sendWaiting delivers the configs that waited for cl to acknowledge
// something (see deliver), off the client's read goroutine.
func (h *configHook) sendWaiting(cl *mqtt.Client) {
	dev, err := deviceFromClientID(cl.ID)
	if err != nil {
		return
	}
	h.mu.Lock()
	var todo []*configSub
	for _, s := range h.subs[dev] {
		if s.cl == cl && s.waiting.Load() {
			todo = append(todo, s)
		}
	}
	h.mu.Unlock()
	for _, s := range todo {
		go h.deliver(s)
	}
}

// OnQosPublish sees every other QoS 1 message mochi sends (commands, and
// resends on reconnect): a packet id reused for something other than a
// config is no longer ours.
func (h *configHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if pk.TopicName != "" && pk.TopicName == configTopicOf(cl) {
		return
	}
	h.forget(cl.ID, pk.PacketID)
}

// OnQosDropped: an expired config is no longer in flight. A session taken
// over by a new connection clears its old connection's store after cloning
// it into the new one's: those packets are still in flight under the same
// client id, and their PUBACKs must still find their versions.
func (h *configHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if cl.IsTakenOver() {
		return
	}
	h.forget(cl.ID, pk.PacketID)
}

func (h *configHook) forget(client string, id uint16) (int64, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, ok := h.ids[client][id]
	if ok {
		delete(h.ids[client], id)
		if len(h.ids[client]) == 0 {
			delete(h.ids, client)
		}
	}
	return v, ok
}

// OnQosComplete: the device's PUBACK of a config; its registry write is
// queued, never done on the read goroutine.
func (h *configHook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Type != packets.Puback {
		return
	}
	h.sendWaiting(cl) // a slot is free: any PUBACK, config or command
	v, ok := h.forget(cl.ID, pk.PacketID)
	if !ok {
		return
	}
	dev, err := deviceFromClientID(cl.ID)
	if err != nil {
		return
	}
	h.acked.Inc()
	select {
	case h.acks <- configAck{dev: dev, version: v, at: time.Now()}:
	default:
		h.dropped.WithLabelValues("ack_queue_full").Inc()
	}
}

func (h *configHook) ackLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case a := <-h.acks:
			actx, cancel := context.WithTimeout(ctx, configAckTimeout)
			if err := h.src.AckConfig(actx, a.dev, a.version, a.at); err != nil {
				h.dropped.WithLabelValues("registry").Inc()
				h.log.Debug().Err(err).Str("device", a.dev).Int64("version", a.version).Msg("recording config ack failed")
			}
			cancel()
		}
	}
}

func configTopicOf(cl *mqtt.Client) string {
	dev, err := deviceFromClientID(cl.ID)
	if err != nil {
		return ""
	}
	return "/devices/" + dev + "/config"
}
