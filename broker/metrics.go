package broker

import (
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	received       prometheus.Counter
	acked          prometheus.Counter
	rejected       *prometheus.CounterVec
	connectRefused *prometheus.CounterVec
	inflight       prometheus.Gauge
	sessionsCut    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, srv *mqtt.Server) *metrics {
	f := promauto.With(reg) // nil registers nothing
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "iotpipe_mqtt_connected_clients",
		Help: "MQTT clients currently connected.",
	}, func() float64 { return float64(atomic.LoadInt64(&srv.Info.ClientsConnected)) })
	return &metrics{
		received: f.NewCounter(prometheus.CounterOpts{
			Name: "iotpipe_mqtt_messages_received_total",
			Help: "PUBLISH packets received from devices.",
		}),
		acked: f.NewCounter(prometheus.CounterOpts{
			Name: "iotpipe_mqtt_messages_acked_total",
			Help: "QoS 1 messages acknowledged to devices after Kafka acknowledged them.",
		}),
		rejected: f.NewCounterVec(prometheus.CounterOpts{
			Name: "iotpipe_mqtt_messages_rejected_total",
			Help: "Messages not forwarded or not acknowledged, by reason.",
		}, []string{"reason"}),
		connectRefused: f.NewCounterVec(prometheus.CounterOpts{
			Name: "iotpipe_mqtt_connect_refused_total",
			Help: "Refused CONNECTs, by reason.",
		}, []string{"reason"}),
		inflight: f.NewGauge(prometheus.GaugeOpts{
			Name: "iotpipe_mqtt_inflight_messages",
			Help: "Messages forwarded to Kafka and not yet answered, all clients.",
		}),
		sessionsCut: f.NewCounter(prometheus.CounterOpts{
			Name: "iotpipe_mqtt_sessions_cut_total",
			Help: "Connections closed because their device was blocked or deleted or lost the credential they used.",
		}),
	}
}
