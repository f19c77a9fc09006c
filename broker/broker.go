package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/iotpipe/iotpipe/internal/bus"
)

// Authenticator checks a device's access token. It returns nil, or an error
// wrapping registry.ErrNotFound, registry.ErrBadCredentials,
// registry.ErrBlocked or registry.ErrInvalidID; any other error is taken as
// the registry being unavailable.
type Authenticator interface {
	Authenticate(deviceID string, password []byte) error
}

// Defaults for zero Config fields.
const (
	DefaultTCPAddr              = ":1883"
	DefaultMaxInflightPerClient = 64
	DefaultMaxPayloadBytes      = 256 << 10
	DefaultDrainTimeout         = 35 * time.Second // a little above ingest's default delivery timeout

	// Per-connection memory. An idle device costs the broker its read
	// buffer, mochi's outbound queue, two goroutine stacks (read loop and
	// write loop) and the socket; at fleet scale the buffers and the queue
	// are what we choose. See docs/benchmarks.md, "Broker connections".
	DefaultClientReadBufferBytes = 1 << 10
	DefaultClientWritesPending   = 64
)

// Config configures a Broker.
type Config struct {
	TCPAddr string `yaml:"tcp_addr"` // default DefaultTCPAddr; "127.0.0.1:0" picks a free port; Off disables
	// TLS, if set, serves MQTT over TLS on TLSAddr and makes the WebSocket
	// listener wss. It needs a server certificate; the broker uses a copy
	// with at least TLS 1.2 that requests client certificates, verified by
	// Auth if it is a CertAuthenticator (see listeners.go). Certificates are
	// read once: rotate them by restarting, or set GetCertificate.
	TLS     *tls.Config `yaml:"-"`
	TLSAddr string      `yaml:"tls_addr"` // default DefaultTLSAddr, used when TLS is set
	// WSAddr, if set, serves MQTT over WebSocket (wss when TLS is set).
	WSAddr    string        `yaml:"ws_addr"`
	Auth      Authenticator `yaml:"-"`
	Forwarder Forwarder     `yaml:"-"` // normally *ingest.Forwarder
	// StateTopic is the Kafka topic device state (/devices/D/state) goes
	// to, normally bus.TopicNames(p).State; events go to the forwarder's
	// own topic. Default iot.state.
	StateTopic string `yaml:"state_topic"`
	// Presence, if set, is told about connections and activity (normally
	// *downlink.Hub); see commands.go.
	Presence Presence `yaml:"-"`
	// MaxInflightPerClient bounds the messages of one connection waiting for
	// Kafka; a further PUBLISH blocks that connection's reader. Also sent
	// to v5 clients as Receive Maximum.
	MaxInflightPerClient int `yaml:"max_inflight_per_client"`
	// MaxPayloadBytes is the largest accepted payload.
	MaxPayloadBytes int `yaml:"max_payload_bytes"`
	// DrainTimeout bounds how long Run waits at shutdown for in-flight
	// messages to be answered.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// ClientReadBufferBytes is each connection's read buffer, allocated for
	// as long as the connection lives. A packet larger than the buffer is
	// read straight into its own slice, so this bounds nothing; it only
	// sets how many small packets one read syscall can bring in.
	ClientReadBufferBytes int `yaml:"client_read_buffer_bytes"`
	// ClientWritesPending is the capacity of mochi's per-connection
	// outbound queue (downlink: config, commands), allocated at connect.
	// When it is full mochi drops further downlink messages to that client.
	// PUBACKs do not use it: the forwarder writes them directly.
	ClientWritesPending int `yaml:"client_writes_pending"`

	// mochiOptions, if set, edits mochi's options last (tests: mochi's own
	// defaults as a benchmark baseline).
	mochiOptions func(*mqtt.Options)
	// connectTimeout replaces defaultConnectTimeout (tests).
	connectTimeout time.Duration

	Logger  zerolog.Logger        `yaml:"-"`
	Metrics prometheus.Registerer `yaml:"-"`
}

// Broker is the device-facing MQTT server.
type Broker struct {
	srv     *mqtt.Server
	ln      *listeners.Net // nil when TCPAddr is Off
	tlsLn   *listeners.Net // nil without TLS
	ws      *wsListener    // nil without WSAddr
	lns     []listeners.Listener
	fwd     *forwardHook
	auth    *authHook
	config  *configHook // nil unless Auth is a ConfigSource
	cmd     *commandHook
	drainTO time.Duration
	log     zerolog.Logger
}

// headroom is what a PUBLISH may carry besides its payload (topic,
// properties). Packets larger than MaxPayloadBytes+headroom are refused by
// mochi before it reads them, so a client cannot make us buffer them.
const headroom = 64 << 10

// New validates cfg, configures the MQTT server and binds the listener (so
// Addr is known and a busy port fails here). Call Run to serve.
func New(cfg Config) (*Broker, error) {
	if cfg.Auth == nil || cfg.Forwarder == nil {
		return nil, errors.New("broker: Auth and Forwarder are required")
	}
	if cfg.StateTopic == "" {
		cfg.StateTopic = bus.TopicNames(bus.DefaultPrefix).State
	}
	if cfg.TCPAddr == "" {
		cfg.TCPAddr = DefaultTCPAddr
	}
	if cfg.TLSAddr == "" {
		cfg.TLSAddr = DefaultTLSAddr
	}
	var tlsCfg *tls.Config
	if cfg.TLS != nil {
		var err error
		if tlsCfg, err = serverTLS(cfg.TLS); err != nil {
			return nil, err
		}
	}
	if cfg.TCPAddr == Off && tlsCfg == nil && cfg.WSAddr == "" {
		return nil, errors.New("broker: no listener: TCPAddr is off and neither TLS nor WSAddr is set")
	}
	if cfg.MaxInflightPerClient == 0 {
		cfg.MaxInflightPerClient = DefaultMaxInflightPerClient
	}
	if cfg.MaxPayloadBytes == 0 {
		cfg.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.ClientReadBufferBytes == 0 {
		cfg.ClientReadBufferBytes = DefaultClientReadBufferBytes
	}
	if cfg.ClientWritesPending == 0 {
		cfg.ClientWritesPending = DefaultClientWritesPending
	}
	if cfg.MaxInflightPerClient < 1 || cfg.MaxInflightPerClient > 65535 {
		return nil, fmt.Errorf("broker: MaxInflightPerClient %d not in 1..65535", cfg.MaxInflightPerClient)
	}
	if cfg.MaxPayloadBytes < 1 || cfg.MaxPayloadBytes > 256<<20-headroom {
		return nil, fmt.Errorf("broker: MaxPayloadBytes %d not in 1..%d", cfg.MaxPayloadBytes, 256<<20-headroom)
	}
	if cfg.DrainTimeout < 0 {
		return nil, errors.New("broker: DrainTimeout must not be negative")
	}
	if cfg.ClientReadBufferBytes < 64 || cfg.ClientReadBufferBytes > 1<<20 {
		return nil, fmt.Errorf("broker: ClientReadBufferBytes %d not in 64..%d", cfg.ClientReadBufferBytes, 1<<20)
	}
	if cfg.ClientWritesPending < 1 || cfg.ClientWritesPending > 1<<16 {
		return nil, fmt.Errorf("broker: ClientWritesPending %d not in 1..%d", cfg.ClientWritesPending, 1<<16)
	}
	log := cfg.Logger.With().Str("component", "broker").Logger()

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumQos = 1 // QoS 2 is refused, see package doc
	caps.MaximumPacketSize = uint32(cfg.MaxPayloadBytes + headroom)
	caps.ReceiveMaximum = uint16(cfg.MaxInflightPerClient)
	caps.MaximumInflight = 256 // server→device QoS 1 (config/commands) per client
	// mochi makes each connection's outbound channel with this capacity at
	// connect: its default 8192 is 64 KiB of pointers per device.
	caps.MaximumClientWritesPending = int32(cfg.ClientWritesPending)
	caps.MaximumSessionExpiryInterval = 3600 // do not keep abandoned v5 sessions forever
	caps.SharedSubAvailable = 0
	caps.Compatibilities.ObscureNotAuthorized = false
	opts := &mqtt.Options{
		Capabilities: caps,
		// The read buffer is allocated per connection for its whole life;
		// telemetry packets are small and larger ones bypass it (see
		// ClientReadBufferBytes).
		ClientNetReadBufferSize: cfg.ClientReadBufferBytes,
		// Not memory per idle device: mochi allocates its write buffer only
		// while writes queue up and frees it after the flush. It is the
		// batch size for queued PUBACKs, so it stays at mochi's 2 KiB.
		ClientNetWriteBufferSize: 2 << 10,
		Logger:                   slog.New(zerolog.NewSlogHandler(log.With().Str("source", "mochi").Logger())),
		SysTopicResendInterval:   3600, // nobody may read $SYS anyway (ACL)
	}
	if cfg.mochiOptions != nil {
		cfg.mochiOptions(opts)
	}
	srv := mqtt.New(opts)

	m := newMetrics(cfg.Metrics, srv)
	fwd := newForwardHook(srv, cfg.Forwarder, cfg.MaxInflightPerClient, cfg.MaxPayloadBytes, cfg.StateTopic, m, log)
	auth := &authHook{auth: cfg.Auth, m: m, draining: fwd.isDraining, log: log}
	cmd := &commandHook{srv: srv, presence: cfg.Presence, maxInflight: int(caps.MaximumInflight)}
	hooks := []mqtt.Hook{
		auth,
		&aclHook{m: m},
		fwd,
		cmd,
	}
	var cfgHook *configHook
	if cs, ok := cfg.Auth.(ConfigSource); ok {
		cfgHook = newConfigHook(srv, cs, int(caps.MaximumInflight), cfg.Metrics, log)
		hooks = append(hooks, cfgHook)
	}
	for _, h := range hooks {
		if err := srv.AddHook(h, nil); err != nil {
			return nil, fmt.Errorf("broker: add hook %s: %w", h.ID(), err)
		}
	}
	b := &Broker{srv: srv, fwd: fwd, auth: auth, config: cfgHook, cmd: cmd, drainTO: cfg.DrainTimeout, log: log}
	if err := b.listen(cfg, tlsCfg); err != nil {
		b.closeListeners()
		return nil, err
	}
	return b, nil
}

// Addr is the address of the plain TCP listener ("" when it is Off).
func (b *Broker) Addr() string {
	if b.ln == nil {
		return ""
	}
	return b.ln.Address()
}

// Run serves until ctx is done, then shuts down: it stops accepting
// connections and publishes, waits (up to DrainTimeout) until every
// forwarded message is answered — acknowledged after Kafka has it, or
// refused — and then disconnects the clients. A message not yet forwarded
// gets no acknowledgement, so the device sends it again after reconnecting.
func (b *Broker) Run(ctx context.Context) error {
	if sa, ok := b.auth.auth.(SessionAuthenticator); ok {
		// Every instance follows the registry, so a block, delete or
		// credential removal written anywhere cuts the sessions held here.
		defer sa.Watch(b.auth.deviceChanged)()
	}
	if b.config != nil {
		cctx, cancel := context.WithCancel(context.Background())
		defer cancel() // after the drain below: acks that arrive while draining are still recorded
		defer b.config.start(cctx)()
	}
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("broker: serve: %w", err)
	}
	b.log.Info().Str("addr", b.Addr()).Str("tls_addr", b.TLSAddr()).Str("ws_addr", b.WSAddr()).Msg("serving MQTT")
	<-ctx.Done()

	for _, ln := range b.lns {
		ln.Close(func(string) {}) // stop accepting; clients are closed below, after draining
	}
	err := b.fwd.drain(b.drainTO)
	for _, cl := range b.srv.Clients.GetAll() {
		_ = b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
	}
	_ = b.srv.Close()
	if err != nil {
		return fmt.Errorf("broker: shutdown: %w", err)
	}
	return nil
}
