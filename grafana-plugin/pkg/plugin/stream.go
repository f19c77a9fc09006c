package plugin

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/grafana/grafana-plugin-sdk-go/backend"
	"github.com/grafana/grafana-plugin-sdk-go/data"
)

// Channel is a parsed live channel path:
// windows/<device b64url>/<metric b64url>/<windowSeconds>/<agg1.agg2>[/<historySeconds>].
// Device and metric are base64url (no padding) because ids may contain
// characters a channel path cannot. The optional history is how far back
// the first message reaches (the frontend serves a live panel's whole range
// from the stream); without it, max(10 windows, 5 minutes).
type Channel struct {
	Device         string
	Metric         string
	WindowSeconds  int64
	Aggregates     []string
	HistorySeconds int64 // 0 = the default look-back
}

var errBadChannel = errors.New("bad channel path")

// b64 is strict so every channel has exactly one path (no alternate
// encodings with stray trailing bits).
var b64 = base64.RawURLEncoding.Strict()

// ParseChannel parses a channel path. It accepts only canonical paths:
// for every c it returns without error, FormatChannel(c) == path.
func ParseChannel(path string) (Channel, error) {
	parts := strings.Split(path, "/")
	if (len(parts) != 5 && len(parts) != 6) || parts[0] != "windows" {
		return Channel{}, fmt.Errorf("%w %q: want windows/<device>/<metric>/<windowSeconds>/<aggregates>[/<historySeconds>]", errBadChannel, path)
	}
	dev, ok := decodeSegment(parts[1])
	if !ok {
		return Channel{}, fmt.Errorf("%w %q: device is not base64url without padding", errBadChannel, path)
	}
	met, ok := decodeSegment(parts[2])
	if !ok {
		return Channel{}, fmt.Errorf("%w %q: metric is not base64url without padding", errBadChannel, path)
	}
	ws, ok := positiveInt(parts[3])
	if !ok {
		return Channel{}, fmt.Errorf("%w %q: window seconds must be a positive integer", errBadChannel, path)
	}
	var history int64
	if len(parts) == 6 {
		if history, ok = positiveInt(parts[5]); !ok {
			return Channel{}, fmt.Errorf("%w %q: history seconds must be a positive integer", errBadChannel, path)
		}
	}
	aggs := strings.Split(parts[4], ".")
	for i, a := range aggs {
		if !slices.Contains(Aggregates, a) || slices.Contains(aggs[:i], a) {
			return Channel{}, fmt.Errorf("%w %q: aggregates must be distinct of %s joined by dots", errBadChannel, path, strings.Join(Aggregates, ", "))
		}
	}
	return Channel{Device: dev, Metric: met, WindowSeconds: ws, Aggregates: aggs, HistorySeconds: history}, nil
}

// positiveInt parses a canonical positive decimal (no sign, no leading zeros).
func positiveInt(s string) (int64, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n > 0 && strconv.FormatInt(n, 10) == s
}

// decodeSegment decodes a non-empty canonical base64url segment. The
// decoder skips CR and LF, so canonical means re-encoding gives it back.
func decodeSegment(s string) (string, bool) {
	b, err := b64.DecodeString(s)
	if err != nil || len(b) == 0 || b64.EncodeToString(b) != s {
		return "", false
	}
	return string(b), true
}

// FormatChannel is the inverse of ParseChannel.
func FormatChannel(c Channel) string {
	p := "windows/" + b64.EncodeToString([]byte(c.Device)) + "/" + b64.EncodeToString([]byte(c.Metric)) +
		"/" + strconv.FormatInt(c.WindowSeconds, 10) + "/" + strings.Join(c.Aggregates, ".")
	if c.HistorySeconds > 0 {
		p += "/" + strconv.FormatInt(c.HistorySeconds, 10)
	}
	return p
}

// SubscribeStream allows channels whose path parses; anything else does not exist.
func (d *Datasource) SubscribeStream(_ context.Context, req *backend.SubscribeStreamRequest) (*backend.SubscribeStreamResponse, error) {
	if d.settingsErr != nil {
		return &backend.SubscribeStreamResponse{Status: backend.SubscribeStreamStatusNotFound}, nil
	}
	if _, err := ParseChannel(req.Path); err != nil {
		d.logger.Debug("subscribe refused", "path", req.Path, "error", err)
		return &backend.SubscribeStreamResponse{Status: backend.SubscribeStreamStatusNotFound}, nil
	}
	return &backend.SubscribeStreamResponse{Status: backend.SubscribeStreamStatusOK}, nil
}

// PublishStream is refused: channels carry what iotpipe stored, nothing else.
func (d *Datasource) PublishStream(context.Context, *backend.PublishStreamRequest) (*backend.PublishStreamResponse, error) {
	return &backend.PublishStreamResponse{Status: backend.PublishStreamStatusPermissionDenied}, nil
}

// streamLimit bounds the windows one poll reads; the look-back holds far fewer.
const streamLimit = 10000

// RunStream polls the stored windows of the channel every streamInterval over
// the last max(10 windows, 5 minutes) and sends those whose (start, version)
// it has not sent, as one frame per message. The first message covers the
// channel's history when it is longer, and is sent even without windows so
// the panel gets its fields. Later polls read only the short look-back: a
// late reading re-emits a window within the allowed lateness, far inside it.
// It stops when Grafana ends the stream or disposes the instance; API errors
// are logged and retried.
func (d *Datasource) RunStream(ctx context.Context, req *backend.RunStreamRequest, sender *backend.StreamSender) error {
	ch, err := ParseChannel(req.Path)
	if err != nil {
		return err
	}
	if d.settingsErr != nil {
		return fmt.Errorf("invalid datasource settings: %w", d.settingsErr)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(d.ctx, cancel)
	defer stop()

	size := time.Duration(ch.WindowSeconds) * time.Second
	lookback := max(10*size, 5*time.Minute)
	// One answer holds at most streamLimit windows, oldest first: a longer
	// history would lose the newest.
	history := min(max(lookback, time.Duration(ch.HistorySeconds)*time.Second), streamLimit*size)
	first := true
	tr := newWindowTracker()
	tick := time.NewTicker(d.streamInterval)
	defer tick.Stop()
	var failing bool
	for {
		now := d.now()
		back := lookback
		if first {
			back = history
		}
		ws, err := d.api.windows(ctx, ch.Device, ch.Metric, ch.WindowSeconds, now.Add(-back), now.Add(time.Hour), streamLimit)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			// Log a failure once, not every second, until it recovers.
			if !failing {
				d.logger.Warn("stream poll failed; retrying", "path", req.Path, "error", err)
			}
			failing = true
		default:
			if failing {
				d.logger.Info("stream poll recovered", "path", req.Path)
			}
			failing = false
			if fresh := tr.fresh(ws, now.Add(-lookback)); len(fresh) > 0 || first {
				if err := sender.SendFrame(windowsFrame(ch, fresh), data.IncludeAll); err != nil {
					return fmt.Errorf("send stream frame: %w", err)
				}
			}
			first = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// windowTracker remembers the (start, version) already sent.
type windowTracker struct {
	sent map[int64]uint64 // window start (unix seconds) → version sent
}

func newWindowTracker() *windowTracker { return &windowTracker{sent: map[int64]uint64{}} }

// fresh returns the windows not sent yet (new starts, or changed versions of
// a start), ordered by start, and forgets starts before horizon.
func (t *windowTracker) fresh(ws []Window, horizon time.Time) []Window {
	var out []Window
	for _, w := range ws {
		start := w.Start.Unix()
		if v, ok := t.sent[start]; ok && v == w.Version {
			continue
		}
		t.sent[start] = w.Version
		out = append(out, w)
	}
	for s := range t.sent {
		if s < horizon.Unix() {
			delete(t.sent, s)
		}
	}
	slices.SortStableFunc(out, func(a, b Window) int { return a.Start.Compare(b.Start) })
	return out
}

func windowsFrame(ch Channel, ws []Window) *data.Frame {
	times := make([]time.Time, len(ws))
	for i, w := range ws {
		times[i] = w.Start.UTC()
	}
	fields := []*data.Field{data.NewField("time", nil, times)}
	for _, agg := range ch.Aggregates {
		vals := make([]float64, len(ws))
		for i, w := range ws {
			vals[i] = windowValue(w, agg)
		}
		f := data.NewField(agg, nil, vals)
		f.Config = &data.FieldConfig{DisplayNameFromDS: ch.Device + " " + agg, Unit: UnitFor(ch.Metric, agg, "")}
		fields = append(fields, f)
	}
	return data.NewFrame(ch.Device, fields...)
}

func windowValue(w Window, agg string) float64 {
	switch agg {
	case "max":
		return w.Max
	case "min":
		return w.Min
	case "count":
		return float64(w.Count)
	case "sum":
		return w.Sum
	}
	if w.Count == 0 {
		return 0
	}
	// Σsum/Σcount as the API's series does, whatever the mean field holds.
	return w.Sum / float64(w.Count)
}
