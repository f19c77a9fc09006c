package simulator

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// History describes a backfill: the fleet's readings from From to To, one
// per device every Step, as the sensors of Run would have produced them.
type History struct {
	Devices  []string
	From, To time.Time
	Step     time.Duration
	Seed     int64
	// Send hands on one message (the device's payload, with its event time
	// in "ts"). It may block for backpressure; an error stops the backfill.
	// The payload is not reused after Send returns.
	Send func(ctx context.Context, device string, at time.Time, payload []byte) error
}

// Backfill generates h in time order — every device's reading at one instant
// before any reading of the next — so each Kafka partition receives event
// times in order and the processor's watermark does not reject any of them.
// It returns how many messages Send accepted.
func Backfill(ctx context.Context, h History) (int, error) {
	switch {
	case len(h.Devices) == 0:
		return 0, errors.New("simulator: backfill needs devices")
	case h.Step <= 0:
		return 0, fmt.Errorf("simulator: backfill step %v must be positive", h.Step)
	case !h.From.Before(h.To):
		return 0, fmt.Errorf("simulator: backfill from %v must be before to %v", h.From, h.To)
	case h.Send == nil:
		return 0, errors.New("simulator: backfill needs Send")
	}
	sensors := make([]*Sensor, len(h.Devices))
	for i, d := range h.Devices {
		sensors[i] = NewSensor(d, h.Seed)
	}
	n := 0
	for at := h.From; at.Before(h.To); at = at.Add(h.Step) {
		for i, d := range h.Devices {
			if err := ctx.Err(); err != nil {
				return n, err
			}
			payload := appendPayload(make([]byte, 0, 64), sensors[i].Next(at))
			if err := h.Send(ctx, d, at, payload); err != nil {
				return n, fmt.Errorf("simulator: backfill %s at %s: %w", d, at.Format(time.RFC3339), err)
			}
			n++
		}
	}
	return n, nil
}
