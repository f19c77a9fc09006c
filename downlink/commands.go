package downlink

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/internal/bus"
)

// Record headers on the downlink topic (see the package doc).
const (
	hKind     = "iot-kind"
	hRequest  = "iot-request"
	hReplyTo  = "iot-reply-to"
	hTarget   = "iot-target"
	hDeadline = "iot-deadline"
	hOutcome  = "iot-outcome"
	hQoS      = "iot-qos"
	hDetail   = "iot-detail"
	hFrom     = "iot-instance"

	kindCommand = "command"
	kindReply   = "reply"
)

// Outcome names on the wire, one per error.
const (
	outDelivered     = "delivered"
	outNotConnected  = "not_connected"
	outNotSubscribed = "not_subscribed"
	outTimeout       = "device_timeout"
	outRejected      = "rejected"
	outBusy          = "busy"
	outFailed        = "failed"
)

var outcomeErrs = []struct {
	name string
	err  error
}{
	{outNotConnected, ErrNotConnected},
	{outNotSubscribed, ErrNotSubscribed},
	{outTimeout, ErrDeviceTimeout},
	{outRejected, ErrRejected},
	{outBusy, ErrBusy},
}

func outcomeOf(err error) string {
	if err == nil {
		return outDelivered
	}
	for _, o := range outcomeErrs {
		if errors.Is(err, o.err) {
			return o.name
		}
	}
	return outFailed
}

// SendCommand delivers payload on topic (a /devices/D/commands[/sub] topic)
// to device, on whichever instance holds its connection, and waits for the
// outcome. A device not connected by this instance's presence view fails
// at once with ErrNotConnected, without touching Kafka. Other errors wrap
// ErrNotSubscribed, ErrDeviceTimeout, ErrRejected, ErrBusy, ErrNoReply, or
// are Kafka failures.
func (h *Hub) SendCommand(ctx context.Context, device, topic string, payload []byte) (Result, error) {
	res, err := h.sendCommand(ctx, device, topic, payload)
	outcome := outcomeOf(err)
	switch {
	case errors.Is(err, ErrNoReply):
		outcome = "no_reply"
	case outcome == outFailed:
		outcome = "error"
	}
	h.m.sent.WithLabelValues(outcome).Inc()
	return res, err
}

func (h *Hub) sendCommand(ctx context.Context, device, topic string, payload []byte) (Result, error) {
	p := h.Presence(device)
	if !p.Connected {
		return Result{}, ErrNotConnected
	}
	if p.Instance == h.cfg.Instance && h.deliverer != nil {
		return h.deliverHere(ctx, device, topic, payload)
	}
	var b [12]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	ch := make(chan reply, 1)
	h.mu.Lock()
	if len(h.waiting) >= h.cfg.MaxWaiting {
		h.mu.Unlock()
		return Result{}, fmt.Errorf("%w: %d commands wait for an answer on this instance", ErrBusy, h.cfg.MaxWaiting)
	}
	h.waiting[id] = ch
	h.m.waiting.Set(float64(len(h.waiting)))
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.waiting, id)
		h.m.waiting.Set(float64(len(h.waiting)))
		h.mu.Unlock()
	}()

	deadline := h.now().Add(h.cfg.AckTimeout)
	wait := time.NewTimer(h.cfg.AckTimeout + h.cfg.ReplyMargin)
	defer wait.Stop()
	rec := &kgo.Record{Topic: h.cfg.Topic, Key: []byte(device), Value: payload, Headers: []kgo.RecordHeader{
		{Key: hKind, Value: []byte(kindCommand)},
		{Key: hRequest, Value: []byte(id)},
		{Key: hReplyTo, Value: []byte(h.cfg.Instance)},
		{Key: hTarget, Value: []byte(p.Instance)},
		{Key: bus.HeaderTopic, Value: []byte(topic)},
		{Key: hDeadline, Value: bus.FormatMillis(deadline)},
	}}
	// Bounded like the wait below: with Kafka down the caller gets an
	// answer, not a hang (the client's delivery timeout bounds it too).
	pctx, cancel := context.WithTimeout(ctx, h.cfg.AckTimeout+h.cfg.ReplyMargin)
	defer cancel()
	if err := h.prod.ProduceSync(pctx, rec).FirstErr(); err != nil {
		return Result{}, fmt.Errorf("downlink: produce command: %w", err)
	}
	select {
	case r := <-ch:
		if r.outcome == outDelivered {
			return Result{QoS: r.qos, Instance: r.instance}, nil
		}
		for _, o := range outcomeErrs {
			if o.name == r.outcome {
				if r.detail != "" {
					return Result{}, fmt.Errorf("%w: %s", o.err, r.detail)
				}
				return Result{}, o.err
			}
		}
		return Result{}, fmt.Errorf("downlink: delivery failed on instance %s: %s (%s)", r.instance, r.detail, r.outcome)
	case <-wait.C:
		return Result{}, fmt.Errorf("%w (instance %s, %v)", ErrNoReply, p.Instance, h.cfg.AckTimeout+h.cfg.ReplyMargin)
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
}

// deliverHere delivers a command for a device connected to this very
// instance without the round trip through Kafka (`iotpipe run`, or an API
// beside the broker holding the device), with the same bounds.
func (h *Hub) deliverHere(ctx context.Context, device, topic string, payload []byte) (Result, error) {
	select {
	case h.slots <- struct{}{}:
	default:
		err := fmt.Errorf("%w: %d deliveries in progress on instance %s", ErrBusy, h.cfg.MaxDeliveries, h.cfg.Instance)
		h.m.delivered.WithLabelValues(outcomeOf(err)).Inc()
		return Result{}, err
	}
	h.m.deliveries.Inc()
	defer func() { <-h.slots; h.m.deliveries.Dec() }()
	dctx, cancel := context.WithTimeout(ctx, h.cfg.AckTimeout)
	defer cancel()
	qos, err := h.deliverer.DeliverCommand(dctx, device, topic, payload)
	h.m.delivered.WithLabelValues(outcomeOf(err)).Inc()
	if err != nil {
		return Result{}, err
	}
	return Result{QoS: qos, Instance: h.cfg.Instance}, nil
}

// handleDownlink runs on the consumer loop: it must not wait for devices.
func (h *Hub) handleDownlink(r *kgo.Record) {
	switch bus.Header(r, hKind) {
	case kindReply:
		if bus.Header(r, hReplyTo) != h.cfg.Instance {
			return
		}
		id := bus.Header(r, hRequest)
		q, _ := strconv.Atoi(bus.Header(r, hQoS))
		h.mu.Lock()
		ch, ok := h.waiting[id]
		h.mu.Unlock()
		if ok {
			select { // buffered 1; a duplicate reply is dropped
			case ch <- reply{outcome: bus.Header(r, hOutcome), detail: bus.Header(r, hDetail),
				instance: bus.Header(r, hFrom), qos: byte(q)}:
			default:
			}
		}
	case kindCommand:
		if bus.Header(r, hTarget) != h.cfg.Instance || h.deliverer == nil {
			return
		}
		deadline, err := bus.ParseMillis(bus.Header(r, hDeadline))
		if err != nil || !h.now().Before(deadline) {
			return // the requester has given up: delivering now would surprise it
		}
		select {
		case h.slots <- struct{}{}:
		default:
			h.reply(r, 0, fmt.Errorf("%w: %d deliveries in progress on instance %s", ErrBusy, h.cfg.MaxDeliveries, h.cfg.Instance))
			return
		}
		h.m.deliveries.Inc()
		go func() {
			defer func() { <-h.slots; h.m.deliveries.Dec() }()
			ctx, cancel := context.WithDeadline(context.Background(), deadline)
			defer cancel()
			qos, err := h.deliverer.DeliverCommand(ctx, string(r.Key), bus.Header(r, bus.HeaderTopic), r.Value)
			h.reply(r, qos, err)
		}()
	}
}

func (h *Hub) reply(req *kgo.Record, qos byte, err error) {
	h.m.delivered.WithLabelValues(outcomeOf(err)).Inc()
	hdr := []kgo.RecordHeader{
		{Key: hKind, Value: []byte(kindReply)},
		{Key: hRequest, Value: []byte(bus.Header(req, hRequest))},
		{Key: hReplyTo, Value: []byte(bus.Header(req, hReplyTo))},
		{Key: hFrom, Value: []byte(h.cfg.Instance)},
		{Key: hOutcome, Value: []byte(outcomeOf(err))},
		{Key: hQoS, Value: strconv.AppendInt(nil, int64(qos), 10)},
	}
	if err != nil {
		// The outcome names the sentinel; the detail is what the error adds.
		detail := err.Error()
		for _, o := range outcomeErrs {
			if errors.Is(err, o.err) {
				detail = strings.TrimPrefix(strings.TrimPrefix(detail, o.err.Error()), ": ")
			}
		}
		if detail != "" {
			hdr = append(hdr, kgo.RecordHeader{Key: hDetail, Value: []byte(detail)})
		}
	}
	h.tryProduce(&kgo.Record{Topic: h.cfg.Topic, Key: req.Key, Headers: hdr})
}
