package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotpipe/iotpipe/downlink"
)

// Presence is told about device connections and activity, as
// *downlink.Hub is. Its methods are called from mochi's goroutines and must
// not block.
type Presence interface {
	DeviceConnected(device string)
	DeviceDisconnected(device string)
	DevicePinged(device string)
	DevicePublished(device string)
}

// CommandTopic returns the MQTT topic of a command for device in subfolder
// ("" for none), validated by the same rules as the topics devices use.
func CommandTopic(device, subfolder string) (string, error) {
	if err := validDeviceID(device); err != nil {
		return "", fmt.Errorf("device id %q is not valid in an MQTT topic", device)
	}
	if subfolder != "" && !validSubfolder(subfolder) {
		return "", fmt.Errorf("subfolder %q: want 1-256 characters, levels separated by '/', no empty level, no '+', '#' or control characters", subfolder)
	}
	return deviceTopic{Device: device, Kind: kindCommands, Subfolder: subfolder}.String(), nil
}

// commandHook knows each device's connected clients (for delivery and
// presence) and which server→device QoS 1 commands wait for a PUBACK.
//
// Commands are written to the client directly rather than through mochi's
// publish path, which fans out to every subscriber and cannot tell the
// caller whether the PUBACK came: the hook takes a packet id, registers the
// message in the client's mochi inflight store (so ids never collide and
// mochi's PUBACK handling calls OnQosComplete) and waits for that.
type commandHook struct {
	mqtt.HookBase
	srv         *mqtt.Server
	presence    Presence // nil: none
	maxInflight int      // mochi's per-client server→device inflight cap

	mu      sync.Mutex
	clients map[string][]*mqtt.Client // device → clients whose session is established
	acks    map[ackKey]chan byte      // PUBACK reason code per waiting command
}

type ackKey struct {
	cl *mqtt.Client
	id uint16
}

func (h *commandHook) ID() string { return "iotpipe-commands" }

func (h *commandHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnPacketRead, mqtt.OnQosComplete}, []byte{b})
}

// OnSessionEstablished runs after the CONNACK was sent.
func (h *commandHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	dev, err := deviceFromClientID(cl.ID)
	if err != nil {
		return
	}
	h.mu.Lock()
	if h.clients == nil {
		h.clients = map[string][]*mqtt.Client{}
	}
	h.clients[dev] = append(h.clients[dev], cl)
	h.mu.Unlock()
	if h.presence != nil {
		h.presence.DeviceConnected(dev)
	}
}

func (h *commandHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	dev, err := deviceFromClientID(cl.ID)
	if err != nil {
		return
	}
	h.mu.Lock()
	list := h.clients[dev]
	n := len(list)
	list = slices.DeleteFunc(list, func(c *mqtt.Client) bool { return c == cl })
	found := len(list) < n
	if len(list) == 0 {
		delete(h.clients, dev)
	} else {
		h.clients[dev] = list
	}
	// Commands waiting for this client's PUBACK fail now, not at their
	// deadline.
	for k, ch := range h.acks {
		if k.cl == cl {
			close(ch)
			delete(h.acks, k)
		}
	}
	h.mu.Unlock()
	if found && h.presence != nil {
		h.presence.DeviceDisconnected(dev)
	}
}

func (h *commandHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if h.presence == nil {
		return pk, nil
	}
	switch pk.FixedHeader.Type {
	case packets.Pingreq:
		h.presence.DevicePinged(connectedDevice(cl))
	case packets.Publish:
		h.presence.DevicePublished(connectedDevice(cl))
	}
	return pk, nil
}

// connectedDevice is the device id of an authenticated client: its client
// id was checked at CONNECT, so the id is what follows the last '/'. Unlike
// deviceFromClientID it does not allocate, which matters per PUBLISH.
func connectedDevice(cl *mqtt.Client) string {
	id := cl.ID
	if i := strings.LastIndexByte(id, '/'); i >= 0 {
		id = id[i+1:]
	}
	return id
}

// OnQosComplete is called by mochi on the client's read goroutine when a
// PUBACK matched an inflight message.
func (h *commandHook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	h.mu.Lock()
	k := ackKey{cl, pk.PacketID}
	ch, ok := h.acks[k]
	delete(h.acks, k)
	h.mu.Unlock()
	if ok {
		ch <- pk.ReasonCode // buffered 1
	}
}

// DeliverCommand writes payload on topic to device's client on this broker
// and, for a QoS 1 subscription, waits until ctx ends for its PUBACK. It
// returns the QoS used, or an error wrapping downlink.ErrNotConnected (no
// client here, or it left before acknowledging), ErrNotSubscribed (no
// subscription matches topic), ErrDeviceTimeout, ErrRejected (an MQTT 5
// PUBACK with a reason code ≥ 0x80) or ErrBusy (the client's inflight
// store is full). With several clients of one device (different client id
// forms), the most recent subscribed one gets it.
func (b *Broker) DeliverCommand(ctx context.Context, device, topic string, payload []byte) (byte, error) {
	return b.cmd.deliver(ctx, device, topic, payload)
}

func (h *commandHook) deliver(ctx context.Context, device, topic string, payload []byte) (byte, error) {
	h.mu.Lock()
	clients := slices.Clone(h.clients[device])
	h.mu.Unlock()
	if len(clients) == 0 {
		return 0, downlink.ErrNotConnected
	}
	var cl *mqtt.Client
	var ids []int
	qos := -1
	for i := len(clients) - 1; i >= 0 && cl == nil; i-- {
		if q, subIDs, ok := subscribedQoS(clients[i], device, topic); ok {
			cl, qos, ids = clients[i], int(q), subIDs
		}
	}
	if cl == nil {
		return 0, fmt.Errorf("%w: no subscription matches %s (subscribe to /devices/%s/commands/#)", downlink.ErrNotSubscribed, topic, device)
	}
	qos = min(qos, 1) // the broker grants at most QoS 1
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: byte(qos)},
		TopicName: topic, Payload: payload, Created: time.Now().Unix()}
	if cl.Properties.ProtocolVersion == 5 {
		pk.Properties.SubscriptionIdentifier = ids // MQTT-3.3.4-3
	}
	if qos == 0 {
		if err := cl.WritePacket(pk); err != nil {
			return 0, writeErr(err)
		}
		return 0, nil
	}
	// An MQTT 5 device may allow fewer unacknowledged messages (its Receive
	// Maximum); sending more would be a protocol error.
	limit := h.maxInflight
	if rm := int(cl.Properties.Props.ReceiveMaximum); cl.Properties.ProtocolVersion == 5 && rm > 0 {
		limit = min(limit, rm)
	}
	if cl.State.Inflight.Len() >= limit {
		return 0, fmt.Errorf("%w: %d messages to this device await a PUBACK", downlink.ErrBusy, limit)
	}
	id, err := cl.NextPacketID()
	if err != nil {
		return 0, fmt.Errorf("%w: no free packet id", downlink.ErrBusy)
	}
	pk.PacketID = uint16(id)
	ch := make(chan byte, 1)
	k := ackKey{cl, pk.PacketID}
	h.mu.Lock()
	if h.acks == nil {
		h.acks = map[ackKey]chan byte{}
	}
	h.acks[k] = ch
	h.mu.Unlock()
	forget := func() {
		h.mu.Lock()
		delete(h.acks, k)
		h.mu.Unlock()
		if cl.State.Inflight.Delete(pk.PacketID) {
			cl.State.Inflight.IncreaseSendQuota()
			atomic.AddInt64(&h.srv.Info.Inflight, -1)
		}
	}
	// As mochi's own publish path does: its PUBACK handling undoes these.
	if cl.State.Inflight.Set(pk) {
		atomic.AddInt64(&h.srv.Info.Inflight, 1)
		cl.State.Inflight.DecreaseSendQuota()
	}
	if err := cl.WritePacket(pk); err != nil {
		forget()
		return 0, writeErr(err)
	}
	select {
	case code, ok := <-ch:
		if !ok {
			return 0, fmt.Errorf("%w: disconnected before acknowledging", downlink.ErrNotConnected)
		}
		if code >= packets.ErrUnspecifiedError.Code {
			return 0, fmt.Errorf("%w: PUBACK reason code 0x%02x", downlink.ErrRejected, code)
		}
		return 1, nil
	case <-ctx.Done():
		forget()
		return 0, fmt.Errorf("%w: no PUBACK", downlink.ErrDeviceTimeout)
	}
}

func writeErr(err error) error {
	if errors.Is(err, mqtt.ErrConnectionClosed) {
		return fmt.Errorf("%w: connection closed", downlink.ErrNotConnected)
	}
	if errors.Is(err, packets.ErrPacketTooLarge) {
		return fmt.Errorf("%w: larger than the device's Maximum Packet Size", downlink.ErrRejected)
	}
	return fmt.Errorf("write command: %w", err)
}

// subscribedQoS returns the highest QoS of cl's subscriptions matching a
// commands topic, and their MQTT 5 subscription identifiers. The ACL admits
// only the device's own /devices/D/commands, /devices/D/commands/<sub> and
// /devices/D/commands/# filters, so matching is equality or the '#' filter,
// which also matches /devices/D/commands itself (MQTT 4.7.1.2).
func subscribedQoS(cl *mqtt.Client, device, topic string) (byte, []int, bool) {
	all := "/devices/" + device + "/commands/#"
	best, ok := byte(0), false
	var ids []int
	for filter, sub := range cl.State.Subscriptions.GetAll() {
		if filter == topic || filter == all {
			best, ok = max(best, sub.Qos), true
			if sub.Identifier > 0 {
				ids = append(ids, sub.Identifier)
			}
		}
	}
	slices.Sort(ids)
	return best, ids, ok
}
