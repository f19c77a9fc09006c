package main

import (
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"

	"github.com/iotpipe/iotpipe/internal/logging"
)

// options are the flags shared by the server subcommands. Each subcommand
// registers only the groups it uses.
type options struct {
	dataDir   string
	logLevel  string
	logFormat string

	kafkaBrokers      string
	embeddedKafkaAddr string
	topicPrefix       string
	partitions        int
	replication       int

	clickhouseAddr     string
	clickhouseDatabase string
	clickhouseUser     string
	clickhousePassword string
	rawRetention       time.Duration

	windowSizes durationList
	lateness    time.Duration
	idleTimeout time.Duration
	group       string
	// sessionTimeout bounds how long a crashed processor's partitions wait
	// for a new owner; the broker's group.min/max.session.timeout.ms apply.
	sessionTimeout time.Duration
	rawReadings    bool
	flushInterval  time.Duration

	mqttAddr    string
	maxPayload  int
	maxInflight int
	jwtAudience string

	httpAddr   string
	adminToken string
	readToken  string

	tls tlsOptions

	commandTimeout time.Duration
}

func defaultOptions() *options {
	return &options{windowSizes: durationList{10 * time.Second, time.Minute, time.Hour}}
}

func (o *options) addCommon(fs *flag.FlagSet) {
	fs.StringVar(&o.dataDir, "data-dir", "data", "directory for embedded Kafka and ClickHouse data and the admin token")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&o.logFormat, "log-format", "auto", "log format: auto (pretty on a terminal, else JSON), json, pretty")
}

func (o *options) addKafka(fs *flag.FlagSet, embedded bool) {
	help := "comma separated Kafka bootstrap brokers"
	if embedded {
		help += " (empty: run an embedded Kafka in the data directory)"
		fs.StringVar(&o.embeddedKafkaAddr, "embedded-kafka-addr", "127.0.0.1:9092", "listen address of the embedded Kafka (loopback only)")
	}
	fs.StringVar(&o.kafkaBrokers, "kafka-brokers", "", help)
	fs.StringVar(&o.topicPrefix, "topic-prefix", "iot.", "prefix of every Kafka topic name")
	fs.IntVar(&o.partitions, "partitions", 6, "partitions of the telemetry and state topics when iotpipe creates them")
	fs.IntVar(&o.replication, "replication-factor", 1, "replication factor of topics iotpipe creates (use 3 on a real cluster)")
}

func (o *options) addStorage(fs *flag.FlagSet, embedded bool) {
	help := "comma separated ClickHouse native addresses host:9000"
	if embedded {
		help += " (empty: embedded ClickHouse engine, chDB, in the data directory)"
	}
	fs.StringVar(&o.clickhouseAddr, "clickhouse-addr", "", help)
	fs.StringVar(&o.clickhouseDatabase, "clickhouse-database", "iotpipe", "ClickHouse database")
	fs.StringVar(&o.clickhouseUser, "clickhouse-user", "default", "ClickHouse user")
	fs.StringVar(&o.clickhousePassword, "clickhouse-password", "", "ClickHouse password")
	fs.DurationVar(&o.rawRetention, "raw-retention", 30*24*time.Hour, "how long raw readings are kept (0 = forever); windows are kept")
	fs.Var(&o.windowSizes, "window-sizes", "comma separated tumbling window sizes, whole seconds")
}

func (o *options) addProcessor(fs *flag.FlagSet) {
	fs.DurationVar(&o.lateness, "allowed-lateness", 5*time.Second, "how late (event time) a reading may arrive and still count")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", 10*time.Second, "after this long without records a partition's watermark follows the wall clock, closing its windows")
	fs.DurationVar(&o.flushInterval, "flush-interval", time.Second, "how long rows wait to be stored; a window is stored within a quarter of it after it closed. Longer: fewer, larger inserts (cheaper for ClickHouse), staler dashboards")
	fs.BoolVar(&o.rawReadings, "raw-readings", true, "store every raw reading (table readings, kept --raw-retention) as well as the windows; false stores windows only, at about four times the rate on the embedded engine")
	fs.StringVar(&o.group, "consumer-group", "iotpipe-processor", "Kafka consumer group of the processors")
	fs.DurationVar(&o.sessionTimeout, "session-timeout", 45*time.Second, "how long the group waits for a processor that stopped heartbeating (crashed) before giving its partitions to another")
}

func (o *options) addBroker(fs *flag.FlagSet) {
	fs.StringVar(&o.mqttAddr, "mqtt-addr", ":1883", "MQTT TCP listen address (empty or off: no plain TCP listener)")
	fs.IntVar(&o.maxPayload, "max-payload", 256<<10, "largest accepted MQTT packet in bytes; larger ones disconnect the client")
	fs.IntVar(&o.maxInflight, "max-inflight", 256, "QoS 1 messages per connection awaiting Kafka before the broker stops reading from it")
	fs.StringVar(&o.jwtAudience, "jwt-audience", "", "project id a device JWT's aud must equal (Cloud IoT Core's project id); empty refuses JWT passwords")
	o.tls.addBroker(fs)
}

func (o *options) addAPI(fs *flag.FlagSet) {
	fs.StringVar(&o.httpAddr, "http-addr", ":8080", "HTTP API listen address")
	fs.StringVar(&o.adminToken, "admin-token", "", "API admin bearer token (empty: generated once and kept in <data-dir>/admin-token)")
	fs.DurationVar(&o.commandTimeout, "command-timeout", 10*time.Second, "how long a command waits for the device's PUBACK (QoS 1) before the API answers 504")
	fs.StringVar(&o.readToken, "read-token", "", "API read-only bearer token for dashboards (empty: generated once and kept in <data-dir>/read-token)")
	o.tls.addAPI(fs)
}

// addOps is the health and metrics listener of subcommands without the API.
func (o *options) addOps(fs *flag.FlagSet, def string) {
	fs.StringVar(&o.httpAddr, "http-addr", def, "listen address for /healthz, /readyz and /metrics")
}

func (o *options) logger(stderr io.Writer) (zerolog.Logger, error) {
	return logging.New(stderr, o.logLevel, logging.Format(o.logFormat))
}

func (o *options) validate() error {
	for _, s := range o.windowSizes {
		if s <= 0 || s%time.Second != 0 {
			return fmt.Errorf("--window-sizes: %v is not a positive whole number of seconds", s)
		}
	}
	if o.partitions < 1 {
		return fmt.Errorf("--partitions must be at least 1")
	}
	return o.tls.load()
}

func (o *options) path(elem ...string) string {
	return filepath.Join(append([]string{o.dataDir}, elem...)...)
}
