package downlink

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	sent          *prometheus.CounterVec // requester side, by outcome
	delivered     *prometheus.CounterVec // target side, by outcome
	waiting       prometheus.Gauge
	deliveries    prometheus.Gauge
	presenceDrops prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg) // nil registers nothing
	return &metrics{
		sent: f.NewCounterVec(prometheus.CounterOpts{
			Name: "iotpipe_commands_total",
			Help: "Commands sent through this instance, by outcome (delivered, not_connected, ..., no_reply, error).",
		}, []string{"outcome"}),
		delivered: f.NewCounterVec(prometheus.CounterOpts{
			Name: "iotpipe_command_deliveries_total",
			Help: "Commands this instance delivered or tried to, for devices connected to it, by outcome.",
		}, []string{"outcome"}),
		waiting: f.NewGauge(prometheus.GaugeOpts{
			Name: "iotpipe_commands_waiting",
			Help: "Commands waiting for their outcome on this instance (bounded by MaxWaiting).",
		}),
		deliveries: f.NewGauge(prometheus.GaugeOpts{
			Name: "iotpipe_command_deliveries_in_progress",
			Help: "Deliveries waiting for a device on this instance (bounded by MaxDeliveries).",
		}),
		presenceDrops: f.NewCounter(prometheus.CounterOpts{
			Name: "iotpipe_downlink_write_errors_total",
			Help: "Presence, heartbeat and reply records that could not be written (Kafka failing or the producer buffer full).",
		}),
	}
}
