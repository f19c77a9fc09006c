package simulator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"
)

// ErrRefused is wrapped by the error Run returns when the broker answers a
// device's CONNECT with a refusal; the message carries the reason, such as a
// bad token.
var ErrRefused = errors.New("connection refused")

const (
	connectParallel = 32               // concurrent handshakes, so a big fleet does not SYN-flood the broker
	connectTimeout  = 10 * time.Second // dial + CONNACK
	// writeTimeout bounds a publish waiting for the connection's writer. Paho
	// does not wake such a publish when the connection drops, so this is also
	// how long a lost connection can hold a device (and the end of Run) up.
	writeTimeout = 5 * time.Second
	// drainTimeout bounds the wait for acknowledgements still in flight when
	// publishing stops; what is left is counted as failed.
	drainTimeout    = 5 * time.Second
	disconnectGrace = 250 // ms for the DISCONNECT packet
)

// Run connects every device, publishes until Duration, Messages or ctx ends
// the run, waits briefly for outstanding acknowledgements and returns the
// report.
//
// Cancelling ctx is a normal way to stop: Run returns the report so far and a
// nil error. Run fails before publishing if the config is invalid or any
// device cannot connect (errors.Is(err, ErrRefused) for a refusal). A device
// whose connection drops later stops publishing and is counted in
// Report.Disconnects; only if every device is lost does Run return an error,
// together with the report.
func Run(ctx context.Context, cfg Config) (Report, error) {
	if err := cfg.validate(); err != nil {
		return Report{}, err
	}
	cfg.ensureDefaults()
	r := &runner{cfg: cfg, log: cfg.Logger.With().Str("component", "simulator").Logger()}
	devs := r.newDevices()
	defer func() {
		var wg sync.WaitGroup
		for _, d := range devs {
			wg.Go(func() { d.client.Disconnect(disconnectGrace) })
		}
		wg.Wait()
	}()

	if err := r.connect(ctx, devs); err != nil {
		if ctx.Err() != nil {
			return r.report(0), nil
		}
		return r.report(0), err
	}
	r.log.Info().Int("devices", len(devs)).Str("broker", cfg.Broker).Float64("rate", cfg.Rate).
		Int("messages", cfg.Messages).Dur("duration", cfg.Duration).Msg("fleet connected, publishing")

	rep := r.publish(ctx, devs)
	if rep.Disconnects == len(devs) {
		return rep, fmt.Errorf("simulator: lost the connection to broker %s on all %d devices: %w",
			cfg.Broker, len(devs), *r.lostErr.Load())
	}
	return rep, nil
}

type runner struct {
	cfg  Config
	log  zerolog.Logger
	hist histogram

	sent, acked, failed atomic.Uint64
	disconnects         atomic.Int64
	lostErr             atomic.Pointer[error] // the first connection loss, for Run's error
	start               time.Time
}

// device is one simulated device's connection and generator state.
type device struct {
	index  int
	id     string
	topic  string
	client mqtt.Client
	quota  int64 // messages this device sends, -1 for no limit

	// mu makes generating and handing over a payload one step, so payload
	// timestamps follow wire order and the k-th message keeps its pacing slot.
	mu        sync.Mutex
	sensor    *Sensor
	k         int64       // messages published so far
	lastMs    int64       // event time of the last payload, Unix ms
	timer     *time.Timer // reused for pacing
	lost      atomic.Bool
	warnedErr atomic.Bool
}

func (r *runner) newDevices() []*device {
	scheme := "tcp://"
	if r.cfg.TLS != nil {
		scheme = "ssl://"
	}
	n := len(r.cfg.Devices)
	devs := make([]*device, n)
	for i, dc := range r.cfg.Devices {
		d := &device{
			index:  i,
			id:     dc.ID,
			topic:  "/devices/" + dc.ID + "/events",
			quota:  -1,
			sensor: NewSensor(dc.ID, r.cfg.Seed),
			timer:  time.NewTimer(time.Hour),
		}
		d.timer.Stop()
		if m := int64(r.cfg.Messages); m > 0 {
			d.quota = m / int64(n)
			if int64(i) < m%int64(n) {
				d.quota++
			}
		}
		opts := mqtt.NewClientOptions().
			AddBroker(scheme + r.cfg.Broker).
			SetTLSConfig(r.cfg.TLS).
			SetClientID(dc.ID).
			SetUsername(dc.ID).
			SetPassword(dc.Token).
			// Explicit 3.1.1: otherwise paho retries a refused CONNECT as
			// MQTT 3.1 and reports that attempt's answer instead.
			SetProtocolVersion(4).
			SetCleanSession(true).
			// A load generator should show a broken broker, not paper over it.
			SetAutoReconnect(false).
			SetConnectRetry(false).
			SetConnectTimeout(connectTimeout).
			SetWriteTimeout(writeTimeout).
			SetKeepAlive(30 * time.Second).
			SetOrderMatters(false).
			SetConnectionLostHandler(func(_ mqtt.Client, err error) {
				d.lost.Store(true)
				err = fmt.Errorf("device %q: %w", d.id, err)
				r.lostErr.CompareAndSwap(nil, &err) // before counting: Run reads it once all are counted
				r.disconnects.Add(1)
				r.log.Warn().Str("device", d.id).Err(err).Msg("connection lost; device stops publishing")
			})
		d.client = mqtt.NewClient(opts)
		devs[i] = d
	}
	return devs
}

// connect connects all devices, failing on the first device that cannot.
func (r *runner) connect(ctx context.Context, devs []*device) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(connectParallel)
	for _, d := range devs {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return r.connectOne(gctx, d) })
	}
	return g.Wait()
}

func (r *runner) connectOne(ctx context.Context, d *device) error {
	tok := d.client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return ctx.Err()
	}
	err := tok.Error()
	if err == nil {
		return nil
	}
	rc := tok.(*mqtt.ConnectToken).ReturnCode()
	if rc == packets.Accepted || rc == packets.ErrNetworkError {
		return fmt.Errorf("simulator: device %q: connect to broker %s: %w", d.id, r.cfg.Broker, err)
	}
	hint := ""
	if rc == packets.ErrRefusedBadUsernameOrPassword || rc == packets.ErrRefusedNotAuthorised {
		hint = " (check the device's token)"
	}
	return fmt.Errorf("simulator: device %q: broker %s: %w: %w%s", d.id, r.cfg.Broker, ErrRefused, err, hint)
}

// publish runs the workers: MaxInflight per device, each publishing and then
// waiting for its acknowledgement, so a connection has up to MaxInflight
// messages in flight while goroutines stay bounded by devices × MaxInflight.
func (r *runner) publish(ctx context.Context, devs []*device) Report {
	sendCtx, cancelSend := context.WithCancel(ctx)
	if r.cfg.Duration > 0 {
		sendCtx, cancelSend = context.WithTimeout(ctx, r.cfg.Duration)
	}
	defer cancelSend()
	drainCtx, cancelDrain := context.WithCancel(context.Background())
	defer cancelDrain()

	r.start = time.Now()
	var wg sync.WaitGroup
	for _, d := range devs {
		workers := int64(r.cfg.MaxInflight)
		if d.quota >= 0 {
			workers = min(workers, d.quota)
		}
		for range workers {
			wg.Go(func() { r.worker(sendCtx, drainCtx, d) })
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	progressDone := make(chan struct{})
	if r.cfg.Progress != nil {
		go r.progress(done, progressDone)
	} else {
		close(progressDone)
	}

	select {
	case <-done:
	case <-sendCtx.Done():
		drain := time.NewTimer(drainTimeout)
		select {
		case <-done:
		case <-drain.C:
			cancelDrain()
			<-done
		}
		drain.Stop()
	}
	elapsed := time.Since(r.start)
	<-progressDone
	return r.report(elapsed)
}

func (r *runner) worker(sendCtx, drainCtx context.Context, d *device) {
	for {
		tok, t0, ok := r.publishNext(sendCtx, d)
		if !ok {
			return
		}
		select {
		case <-tok.Done():
		case <-drainCtx.Done():
			r.failed.Add(1) // abandoned at shutdown
			return
		}
		if err := tok.Error(); err != nil {
			r.failed.Add(1)
			if !d.client.IsConnectionOpen() {
				d.lost.Store(true)
				return
			}
			if d.warnedErr.CompareAndSwap(false, true) { // once per device: this runs per message
				r.log.Warn().Str("device", d.id).Err(err).Msg("publish failed")
			}
			continue
		}
		r.acked.Add(1)
		r.hist.record(time.Since(t0))
	}
}

// publishNext waits for d's next pacing slot and hands one message to the
// client. It returns false when d is done: quota reached, connection lost, or
// sendCtx over.
func (r *runner) publishNext(sendCtx context.Context, d *device) (mqtt.Token, time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lost.Load() || (d.quota >= 0 && d.k >= d.quota) {
		return nil, time.Time{}, false
	}
	if r.cfg.Rate > 0 {
		// Device i owns the fleet-wide slots i, i+n, i+2n, ... at 1/Rate
		// apart: the devices interleave evenly and, computed from the start
		// rather than the last send, the aggregate rate does not drift.
		slot := float64(int64(d.index)+d.k*int64(len(r.cfg.Devices))) / r.cfg.Rate
		if wait := time.Until(r.start.Add(time.Duration(slot * float64(time.Second)))); wait > 0 {
			d.timer.Reset(wait)
			select {
			case <-d.timer.C:
			case <-sendCtx.Done():
				d.timer.Stop()
				return nil, time.Time{}, false
			}
		}
	}
	if sendCtx.Err() != nil {
		return nil, time.Time{}, false
	}
	// Millisecond time, as in the payload, so the sensor can be replayed
	// from what the broker received.
	// A reading is identified by device, metric and event time, so two
	// readings of one device in the same millisecond would count once: above
	// 1000 msg/s per device the clock is nudged forward instead.
	ms := max(time.Now().UnixMilli(), d.lastMs+1)
	d.lastMs = ms
	ts := time.UnixMilli(ms)
	payload := appendPayload(make([]byte, 0, 64), d.sensor.Next(ts))
	t0 := time.Now()
	tok := d.client.Publish(d.topic, r.cfg.QoS, false, payload)
	d.k++
	r.sent.Add(1)
	return tok, t0, true
}

func (r *runner) progress(done <-chan struct{}, exited chan<- struct{}) {
	defer close(exited)
	t := time.NewTicker(r.cfg.ProgressEvery)
	defer t.Stop()
	last, lastAt := uint64(0), r.start
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			rep := r.report(now.Sub(r.start))
			fmt.Fprintf(r.cfg.Progress, "%7.1fs sent=%d acked=%d failed=%d inflight=%d rate=%.1f/s p50=%s p99=%s\n",
				rep.Elapsed.Seconds(), rep.Sent, rep.Acked, rep.Failed, rep.Sent-rep.Acked-rep.Failed,
				float64(rep.Acked-last)/now.Sub(lastAt).Seconds(), roundDur(rep.P50), roundDur(rep.P99))
			last, lastAt = rep.Acked, now
		}
	}
}

func (r *runner) report(elapsed time.Duration) Report {
	s := r.hist.snapshot()
	rep := Report{
		Devices:     len(r.cfg.Devices),
		Sent:        r.sent.Load(),
		Acked:       r.acked.Load(),
		Failed:      r.failed.Load(),
		Disconnects: int(r.disconnects.Load()),
		Elapsed:     elapsed,
		Mean:        s.mean(),
		P50:         s.quantile(0.50),
		P90:         s.quantile(0.90),
		P99:         s.quantile(0.99),
		Max:         time.Duration(s.max),
	}
	if elapsed > 0 {
		rep.Rate = float64(rep.Acked) / elapsed.Seconds()
	}
	return rep
}
