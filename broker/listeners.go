package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/iotpipe/iotpipe/internal/servertls"
	"github.com/iotpipe/iotpipe/registry"
)

// Listener defaults and the value that turns the plain TCP listener off.
const (
	DefaultTLSAddr = ":8883"
	// Off as Config.TCPAddr disables the plain TCP listener (TLS or
	// WebSocket only).
	Off = "off"
)

// CertAuthenticator is an Authenticator that also admits a device by the
// TLS client certificate it presented, as *registry.Registry does
// (AuthenticateCertificate: a pinned X509_CERT_PEM credential, or a chain
// to the registry's client CA). Errors are as for Authenticate.
type CertAuthenticator interface {
	AuthenticateCertificate(deviceID string, chain []*x509.Certificate) (registry.Session, error)
}

// defaultConnectTimeout bounds the CONNECT of every connection (and the TLS
// handshake or WebSocket upgrade before it), so a client that opens a socket
// and sends nothing does not hold a goroutine, a buffer and a descriptor
// forever. After the
// CONNECT mochi's keepalive deadline (1.5 × keepalive) takes over.
const defaultConnectTimeout = 10 * time.Second

// deadlineListener sets the connect deadline on every accepted connection.
type deadlineListener struct {
	net.Listener
	timeout time.Duration
}

func (l deadlineListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(l.timeout))
	}
	return c, err
}

// serverTLS is the broker's copy of the configured TLS settings: at least
// TLS 1.2, and client certificates requested but not verified by the
// handshake. Verification is the auth hook's (registry's) job, because a
// pinned device certificate is typically self-signed and chains to nothing,
// and a device without a certificate may still log in with a JWT or token.
// The handshake does prove the client holds the certificate's private key.
func serverTLS(c *tls.Config) (*tls.Config, error) {
	c, err := servertls.Clone(c)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	c.ClientAuth = tls.RequestClientCert
	c.NextProtos = nil // MQTT, and WebSocket over HTTP/1.1 only
	return c, nil
}

// connState is what a TLS connection tells: *tls.Conn (TLS listener) and
// wsConn (wss) have it.
type connState interface {
	ConnectionState() tls.ConnectionState
}

// peerCertificates is the certificate chain cl presented in the TLS
// handshake, leaf first; nil without TLS or without a certificate. mochi
// read the CONNECT through the connection, so the handshake is complete.
func peerCertificates(cl *mqtt.Client) []*x509.Certificate {
	c, ok := cl.Net.Conn.(connState)
	if !ok {
		return nil
	}
	return c.ConnectionState().PeerCertificates
}

// wsListener serves MQTT over WebSocket (subprotocol "mqtt", binary frames,
// any path). It does what mochi's listeners.Websocket does, with two
// differences we need: it binds in Init, so a busy port fails in New and
// "127.0.0.1:0" reports the port it got; and it keeps the TLS state of a
// wss connection, so the auth hook sees the client certificate.
type wsListener struct {
	id, addr string
	tls      *tls.Config // nil: plain ws
	timeout  time.Duration

	ln        net.Listener
	srv       *http.Server
	log       *slog.Logger
	establish listeners.EstablishFn
	closeOnce sync.Once
}

var _ listeners.Listener = (*wsListener)(nil)

var wsUpgrader = websocket.Upgrader{
	Subprotocols: []string{"mqtt"},
	// Devices are not browsers holding ambient credentials (cookies):
	// every connection authenticates in its CONNECT, so any origin may try.
	CheckOrigin: func(*http.Request) bool { return true },
	// Idle connections hold no write buffer (memory per device).
	WriteBufferPool: &sync.Pool{},
}

func (l *wsListener) ID() string { return l.id }

func (l *wsListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

func (l *wsListener) Protocol() string {
	if l.tls != nil {
		return "wss"
	}
	return "ws"
}

func (l *wsListener) Init(log *slog.Logger) error {
	l.log = log
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return err
	}
	if l.tls != nil {
		ln = tls.NewListener(ln, l.tls)
	}
	l.ln = ln
	mux := http.NewServeMux()
	mux.HandleFunc("/", l.handle)
	// The header timeout also bounds the TLS handshake; handle bounds the
	// CONNECT, then mochi's keepalive sets the deadlines.
	l.srv = &http.Server{Handler: mux, ReadHeaderTimeout: l.timeout,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	return nil
}

func (l *wsListener) Serve(establish listeners.EstablishFn) {
	l.establish = establish
	if err := l.srv.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		l.log.Error("websocket listener failed", "error", err)
	}
}

// handle upgrades the request and serves the MQTT connection until it
// ends (mochi's establish returns when the client is gone).
func (l *wsListener) handle(w http.ResponseWriter, r *http.Request) {
	c, err := wsUpgrader.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade answered with the HTTP error
	}
	defer c.Close()
	// Upgrade cleared the HTTP server's deadlines; bound the CONNECT.
	_ = c.UnderlyingConn().SetDeadline(time.Now().Add(l.timeout))
	if err := l.establish(l.id, &wsConn{Conn: c.UnderlyingConn(), ws: c, state: r.TLS}); err != nil {
		l.log.Debug("websocket client ended", "error", err)
	}
}

// Close stops accepting connections; closeClients closes the ones open.
func (l *wsListener) Close(closeClients listeners.CloseFn) {
	l.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = l.srv.Shutdown(ctx) // hijacked connections are not waited for
	})
	closeClients(l.id)
}

// wsConn is a WebSocket connection as the byte stream mochi reads: MQTT
// packets may span binary messages and a message may hold several packets.
type wsConn struct {
	net.Conn // the underlying connection: deadlines, addresses, Close
	ws       *websocket.Conn
	r        io.Reader // the current message, nil between messages
	state    *tls.ConnectionState
}

var errNotBinary = errors.New("websocket: MQTT needs binary messages")

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			op, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errNotBinary
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

// Write sends p as one binary message. mochi writes under the client's
// lock, so there is one writer at a time, as gorilla requires.
func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// ConnectionState is the TLS state of a wss connection (zero for ws).
func (c *wsConn) ConnectionState() tls.ConnectionState {
	if c.state == nil {
		return tls.ConnectionState{}
	}
	return *c.state
}

// listen adds the configured listeners to the server; each binds now.
func (b *Broker) listen(cfg Config, tlsCfg *tls.Config) error {
	add := func(l listeners.Listener, what, addr string) error {
		if err := b.srv.AddListener(l); err != nil {
			return fmt.Errorf("broker: %s listen on %s: %w", what, addr, err)
		}
		b.lns = append(b.lns, l)
		return nil
	}
	timeout := cfg.connectTimeout
	if timeout == 0 {
		timeout = defaultConnectTimeout
	}
	if cfg.TCPAddr != Off {
		ln, err := net.Listen("tcp", cfg.TCPAddr)
		if err != nil {
			return fmt.Errorf("broker: MQTT listen on %s: %w", cfg.TCPAddr, err)
		}
		b.ln = listeners.NewNet("tcp", deadlineListener{ln, timeout})
		if err := add(b.ln, "MQTT", cfg.TCPAddr); err != nil {
			ln.Close()
			return err
		}
	}
	if tlsCfg != nil {
		ln, err := net.Listen("tcp", cfg.TLSAddr)
		if err != nil {
			return fmt.Errorf("broker: MQTT TLS listen on %s: %w", cfg.TLSAddr, err)
		}
		b.tlsLn = listeners.NewNet("tls", tls.NewListener(deadlineListener{ln, timeout}, tlsCfg))
		if err := add(b.tlsLn, "MQTT TLS", cfg.TLSAddr); err != nil {
			ln.Close()
			return err
		}
	}
	if cfg.WSAddr != "" {
		b.ws = &wsListener{id: "ws", addr: cfg.WSAddr, tls: tlsCfg, timeout: timeout}
		if err := add(b.ws, "MQTT WebSocket", cfg.WSAddr); err != nil {
			return err
		}
	}
	return nil
}

// closeListeners releases what listen bound (New failing half way).
func (b *Broker) closeListeners() {
	for _, l := range b.lns {
		l.Close(func(string) {})
	}
}

// TLSAddr is the address of the MQTT over TLS listener ("" without TLS).
func (b *Broker) TLSAddr() string {
	if b.tlsLn == nil {
		return ""
	}
	return b.tlsLn.Address()
}

// WSAddr is the address of the WebSocket listener ("" without one); the
// scheme is wss when TLS is set.
func (b *Broker) WSAddr() string {
	if b.ws == nil {
		return ""
	}
	return b.ws.Address()
}
