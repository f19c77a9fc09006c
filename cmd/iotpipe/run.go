package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/api"
	"github.com/iotpipe/iotpipe/broker"
	"github.com/iotpipe/iotpipe/devicestate"
	"github.com/iotpipe/iotpipe/downlink"
	"github.com/iotpipe/iotpipe/ingest"
	"github.com/iotpipe/iotpipe/internal/bus"
	"github.com/iotpipe/iotpipe/processor"
	"github.com/iotpipe/iotpipe/registry"
	"github.com/iotpipe/iotpipe/storage"
)

// env is what every server subcommand builds first: logger, metrics registry,
// Kafka options (embedded or external) and a stack of closers.
type env struct {
	o       *options
	log     zerolog.Logger
	metrics *prometheus.Registry
	kafka   []kgo.Opt
	topics  bus.Topics
	closers []func()
	hub     *downlink.Hub // see downlink.go
}

func (e *env) close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
}

func newEnv(ctx context.Context, o *options, stderr io.Writer, name string, allowEmbedded bool) (*env, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	log, err := o.logger(stderr)
	if err != nil {
		return nil, err
	}
	e := &env{o: o, log: log, metrics: prometheus.NewRegistry(), topics: bus.TopicNames(o.topicPrefix)}
	e.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	seeds := bus.ParseBrokers(o.kafkaBrokers)
	if len(seeds) == 0 {
		if !allowEmbedded {
			return nil, fmt.Errorf("--kafka-brokers is required for `iotpipe %s` (the embedded Kafka lives in `iotpipe run`)", name)
		}
		cl, err := startEmbeddedKafka(o.path("kafka"), o.embeddedKafkaAddr)
		if err != nil {
			return nil, err
		}
		e.closers = append(e.closers, cl.Close)
		seeds = cl.ListenAddrs()
		log.Info().Strs("addrs", seeds).Str("dir", o.path("kafka")).Msg("embedded Kafka started")
	}
	e.kafka = []kgo.Opt{kgo.SeedBrokers(seeds...), kgo.ClientID("iotpipe-" + name)}

	// Fail fast on a wrong address, and create our topics.
	adminCl, err := kgo.NewClient(e.kafka...)
	if err != nil {
		e.close()
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	defer adminCl.Close()
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := adminCl.Ping(pctx); err != nil {
		e.close()
		return nil, fmt.Errorf("kafka %v unreachable: %w", seeds, err)
	}
	if err := bus.EnsureTopics(pctx, adminCl, e.topics.Specs(int32(o.partitions)), int16(o.replication)); err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

func startEmbeddedKafka(dir, addr string) (*kfake.Cluster, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--embedded-kafka-addr %q: %w", addr, err)
	}
	if host != "127.0.0.1" && host != "localhost" {
		return nil, fmt.Errorf("--embedded-kafka-addr %q: the embedded Kafka only listens on 127.0.0.1", addr)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("--embedded-kafka-addr %q: bad port: %w", addr, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded kafka dir: %w", err)
	}
	cl, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(dir))
	if err != nil {
		return nil, fmt.Errorf("start embedded kafka on %s (is another iotpipe running? use --embedded-kafka-addr): %w", addr, err)
	}
	return cl, nil
}

func (e *env) openStore(ctx context.Context) (*storage.Store, error) {
	o := e.o
	cfg := storage.Config{
		ClickHouseAddr: bus.ParseBrokers(o.clickhouseAddr),
		Database:       o.clickhouseDatabase,
		Username:       o.clickhouseUser,
		Password:       o.clickhousePassword,
		RawRetention:   o.rawRetention,
		WindowSizes:    o.windowSizes,
		Logger:         e.log,
	}
	if len(cfg.ClickHouseAddr) == 0 {
		cfg.Path = o.path("chdb")
	}
	st, err := storage.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	e.closers = append(e.closers, func() {
		if err := st.Close(); err != nil {
			e.log.Error().Err(err).Msg("close storage")
		}
	})
	return st, nil
}

func (e *env) newRegistry() (*registry.Registry, error) {
	return registry.New(registry.Config{Kafka: e.kafka, Topic: e.topics.Registry, Logger: e.log, JWTAudience: e.o.jwtAudience,
		ClientCAs: e.o.tls.clientCAs})
}

func (e *env) newAPI(reg *registry.Registry, st *storage.Store, states *devicestate.Store, ready func(context.Context) error) (*api.Server, error) {
	tok, err := adminToken(e.o.dataDir, e.o.adminToken)
	if err != nil {
		return nil, err
	}
	rtok, err := readToken(e.o.dataDir, e.o.readToken)
	if err != nil {
		return nil, err
	}
	return api.New(api.Config{
		Addr: e.o.httpAddr, Registry: reg, Store: st, States: states, AdminToken: tok, ReadToken: rtok, WindowSizes: e.o.windowSizes,
		Ready: ready, Gatherer: e.metrics, Logger: e.log, TLS: e.o.tls.api, Commands: e.hub,
	})
}

// newStates follows the device state topic for the API; its client is
// closed with the env.
func (e *env) newStates() (*devicestate.Store, error) {
	st, err := devicestate.New(devicestate.Config{Kafka: e.kafka, Topic: e.topics.State, MaxBytes: max(e.o.maxPayload, devicestate.DefaultMaxBytes), Logger: e.log})
	if err != nil {
		return nil, err
	}
	e.closers = append(e.closers, st.Close)
	return st, nil
}

// readyAll is ready when every check is.
func readyAll(checks ...func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		for _, c := range checks {
			if err := c(ctx); err != nil {
				return err
			}
		}
		return nil
	}
}

func (e *env) newProcessor(st *storage.Store) (*processor.Processor, error) {
	if e.o.sessionTimeout <= 0 {
		return nil, fmt.Errorf("--session-timeout %v must be positive", e.o.sessionTimeout)
	}
	if e.o.flushInterval <= 0 {
		return nil, fmt.Errorf("--flush-interval %v must be positive", e.o.flushInterval)
	}
	return processor.New(processor.Config{
		Kafka:  append(slices.Clone(e.kafka), kgo.SessionTimeout(e.o.sessionTimeout)),
		Topics: e.topics, Group: e.o.group, WindowSizes: e.o.windowSizes,
		AllowedLateness: e.o.lateness, IdleTimeout: e.o.idleTimeout, Sink: st,
		WindowsOnly: !e.o.rawReadings, FlushInterval: e.o.flushInterval,
		Logger: e.log, Metrics: e.metrics,
	})
}

// newBroker builds the ingest forwarder and the MQTT broker in front of it.
func (e *env) newBroker(reg *registry.Registry) (*broker.Broker, *ingest.Forwarder, error) {
	fwd, err := ingest.New(ingest.Config{
		Kafka: e.kafka, Topic: e.topics.Telemetry, Logger: e.log, Metrics: e.metrics,
	})
	if err != nil {
		return nil, nil, err
	}
	tcp := e.o.mqttAddr
	if tcp == "" {
		tcp = broker.Off
	}
	br, err := broker.New(broker.Config{
		TCPAddr: tcp, TLS: e.o.tls.broker, TLSAddr: e.o.tls.mqttAddr, WSAddr: e.o.tls.mqttWSAddr, Auth: reg, Forwarder: fwd,
		StateTopic: e.topics.State, MaxInflightPerClient: e.o.maxInflight,
		MaxPayloadBytes: e.o.maxPayload, Logger: e.log, Metrics: e.metrics, Presence: e.presence(),
	})
	if err != nil {
		closeForwarder(fwd, e.log)
		return nil, nil, err
	}
	if e.hub != nil {
		e.hub.SetDeliverer(br)
	}
	return br, fwd, nil
}

func closeForwarder(fwd *ingest.Forwarder, log zerolog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := fwd.Close(ctx); err != nil {
		log.Error().Err(err).Msg("flush ingest")
	}
}

// setup parses a server subcommand's flags (common and Kafka ones, plus what
// add registers) and builds its env. Only `run` embeds Kafka and ClickHouse;
// the scale-out subcommands that store need a ClickHouse server, because chDB
// allows one process per data directory.
func setup(ctx context.Context, name string, args []string, stderr io.Writer, add func(*options, *flag.FlagSet)) (*env, error) {
	embedded := name == "run"
	o := defaultOptions()
	fs := newFlagSet(name, stderr)
	o.addCommon(fs)
	o.addKafka(fs, embedded)
	add(o, fs)
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	// A lone processor may keep its windows in its own embedded engine (one
	// process per data directory); the API must read what processors wrote,
	// so it needs the shared server.
	if name == "api" && strings.TrimSpace(o.clickhouseAddr) == "" {
		return nil, fmt.Errorf("--clickhouse-addr is required for `iotpipe %s` (the embedded engine lives in `iotpipe run`)", name)
	}
	return newEnv(ctx, o, stderr, name, embedded)
}

func runAll(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	e, err := setup(ctx, "run", args, stderr, func(o *options, fs *flag.FlagSet) {
		o.addStorage(fs, true)
		o.addProcessor(fs)
		o.addBroker(fs)
		o.addAPI(fs)
	})
	if err != nil {
		return err
	}
	defer e.close()

	st, err := e.openStore(ctx)
	if err != nil {
		return err
	}
	reg, err := e.newRegistry()
	if err != nil {
		return err
	}
	proc, err := e.newProcessor(st)
	if err != nil {
		return err
	}
	hub, err := e.newHub()
	if err != nil {
		return err
	}
	br, fwd, err := e.newBroker(reg)
	if err != nil {
		return err
	}
	states, err := e.newStates()
	if err != nil {
		closeForwarder(fwd, e.log)
		return err
	}
	srv, err := e.newAPI(reg, st, states, readyAll(reg.WaitReady, states.WaitReady, hub.WaitReady))
	if err != nil {
		closeForwarder(fwd, e.log)
		return err
	}
	e.log.Info().Str("mqtt", br.Addr()).Str("mqtt_tls", br.TLSAddr()).Str("mqtt_ws", br.WSAddr()).Str("http", srv.Addr()).Str("data_dir", e.o.dataDir).
		Msg("iotpipe running; create a device with `iotpipe devices create <id>`")
	return runGroups(ctx, e.log, []group{
		// The broker goes first so no message is taken after ingest is flushed.
		{stages: []stage{{"broker", br.Run}}, after: func() { closeForwarder(fwd, e.log) }},
		{stages: []stage{{"api", srv.Run}, {"processor", proc.Run}}},
		{stages: []stage{{"registry", reg.Run}, {"devicestate", states.Run}, {"downlink", hub.Run}}},
	})
}

func runBroker(ctx context.Context, args []string, _, stderr io.Writer) error {
	e, err := setup(ctx, "broker", args, stderr, func(o *options, fs *flag.FlagSet) {
		o.addBroker(fs)
		o.addOps(fs, ":8081")
	})
	if err != nil {
		return err
	}
	defer e.close()
	reg, err := e.newRegistry()
	if err != nil {
		return err
	}
	hub, err := e.newHub()
	if err != nil {
		return err
	}
	br, fwd, err := e.newBroker(reg)
	if err != nil {
		return err
	}
	ops, err := newOpsServer(e.o.httpAddr, e.metrics, readyAll(reg.WaitReady, hub.WaitReady))
	if err != nil {
		closeForwarder(fwd, e.log)
		return err
	}
	return runGroups(ctx, e.log, []group{
		{stages: []stage{{"broker", br.Run}}, after: func() { closeForwarder(fwd, e.log) }},
		{stages: []stage{{"ops", ops.run}, {"registry", reg.Run}, {"downlink", hub.Run}}},
	})
}

func runProcessor(ctx context.Context, args []string, _, stderr io.Writer) error {
	e, err := setup(ctx, "processor", args, stderr, func(o *options, fs *flag.FlagSet) {
		o.addStorage(fs, true)
		o.addProcessor(fs)
		o.addOps(fs, ":8082")
	})
	if err != nil {
		return err
	}
	defer e.close()
	st, err := e.openStore(ctx)
	if err != nil {
		return err
	}
	proc, err := e.newProcessor(st)
	if err != nil {
		return err
	}
	ops, err := newOpsServer(e.o.httpAddr, e.metrics, nil)
	if err != nil {
		return err
	}
	return runGroups(ctx, e.log, []group{{stages: []stage{{"processor", proc.Run}, {"ops", ops.run}}}})
}

func runAPI(ctx context.Context, args []string, _, stderr io.Writer) error {
	e, err := setup(ctx, "api", args, stderr, func(o *options, fs *flag.FlagSet) {
		o.addStorage(fs, false)
		o.addAPI(fs)
	})
	if err != nil {
		return err
	}
	defer e.close()
	st, err := e.openStore(ctx)
	if err != nil {
		return err
	}
	reg, err := e.newRegistry()
	if err != nil {
		return err
	}
	states, err := e.newStates()
	if err != nil {
		return err
	}
	hub, err := e.newHub()
	if err != nil {
		return err
	}
	srv, err := e.newAPI(reg, st, states, readyAll(reg.WaitReady, states.WaitReady, hub.WaitReady))
	if err != nil {
		return err
	}
	return runGroups(ctx, e.log, []group{
		{stages: []stage{{"api", srv.Run}}},
		{stages: []stage{{"registry", reg.Run}, {"devicestate", states.Run}, {"downlink", hub.Run}}},
	})
}

func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := defaultOptions()
	fs := newFlagSet("migrate", stderr)
	o.addCommon(fs)
	o.addStorage(fs, true)
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := o.logger(stderr)
	if err != nil {
		return err
	}
	e := &env{o: o, log: log}
	defer e.close()
	if _, err := e.openStore(ctx); err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, "storage schema is up to date")
	return err
}
