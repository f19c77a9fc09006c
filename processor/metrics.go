package processor

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	consumed       prometheus.Counter
	windowsWritten prometheus.Counter
	deadletter     *prometheus.CounterVec
	ignored        prometheus.Counter
	lag            *prometheus.GaugeVec
	open           prometheus.Gauge
	stateBytes     prometheus.Gauge
	paused         prometheus.Gauge
	freshness      prometheus.Histogram
	writeLatency   prometheus.Histogram
	writeErrors    prometheus.Counter
	commitErrors   prometheus.Counter
}

func newMetrics() *metrics {
	const ns, sub = "iotpipe", "processor"
	return &metrics{
		consumed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "records_consumed_total", Help: "Telemetry records consumed (replays included)."}),
		windowsWritten: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "windows_written_total", Help: "Window results written to storage."}),
		deadletter: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "deadletter_total", Help: "Records sent to the dead-letter topic, by reason."}, []string{"reason"}),
		ignored: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "ignored_fields_total", Help: "Payload fields ignored because they are not numbers."}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "consumer_lag", Help: "Records behind the partition's high watermark at the last fetch."}, []string{"partition"}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "open_windows", Help: "Windows not yet final, over all owned partitions."}),
		stateBytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "window_state_bytes", Help: "Accounted memory of open window state over all owned partitions " +
				"(window.Engine.StateBytes: per open window its struct, event-time set and bucket pointer; per device × metric its struct and map entry)."}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "consumption_paused", Help: "1 while fetching is stopped because MaxOpenWindows is reached."}),
		freshness: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "window_freshness_seconds", Help: "Per window: from the watermark passing its end to the insert that stored it (windows are inserted before readings) returning.",
			Buckets: prometheus.ExponentialBuckets(0.001, 1.5, 30)}),
		writeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "storage_write_seconds", Help: "Latency of one storage insert attempt (windows and readings are separate inserts).", Buckets: prometheus.DefBuckets}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "storage_write_errors_total", Help: "Failed WriteBatch attempts (retried)."}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "commit_errors_total", Help: "Failed offset commits (a later commit covers them)."}),
	}
}

func (m *metrics) register(r prometheus.Registerer) error {
	var err error
	for _, c := range []prometheus.Collector{m.consumed, m.windowsWritten, m.deadletter, m.ignored, m.lag,
		m.open, m.stateBytes, m.paused, m.freshness, m.writeLatency, m.writeErrors, m.commitErrors} {
		err = errors.Join(err, r.Register(c))
	}
	return err
}
