package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/iotpipe/iotpipe/ingest"
	"github.com/iotpipe/iotpipe/registry"
)

// ---- authentication ----

// authHook authenticates CONNECTs against the registry.
//
// mochi answers a false OnConnectAuthenticate always with 0x86, which it maps
// to the v3 return code 5 (not authorized), so it cannot tell a bad token from
// a blocked device. OnConnect may halt the connection with an error and then
// mochi sends nothing, so the decision is taken there and the hook writes the
// CONNACK with the deliberate code itself. OnConnectAuthenticate then only
// admits what OnConnect let through.
//
// A session opened with a JWT ends when the JWT does (Cloud IoT Core did the
// same): a timer per such client closes it, with DISCONNECT 0xA0 "maximum
// connect time" for MQTT 5 (the code the spec has for a connection that
// outlived what it was authorised for; 0x8C would claim an AUTH method was
// wrong) and by closing the socket for 3.1.1, which has no server DISCONNECT.
//
// With a SessionAuthenticator the hook also remembers which credential each
// connected client proved, and when the registry says a device changed it
// re-checks that device's clients and closes those no longer allowed
// (blocked, deleted, credential removed or expired) with DISCONNECT 0x98
// "administrative action" (v5) or a closed socket (3.1.1).
type authHook struct {
	mqtt.HookBase
	auth     Authenticator
	m        *metrics
	draining func() bool
	log      zerolog.Logger

	mu     sync.Mutex
	expiry map[*mqtt.Client]*time.Timer // clients whose credentials expire
	// conns holds, per device, its connected clients and the credential
	// (registry.Session.Credential) each proved. An entry is added in
	// OnConnect and removed in OnDisconnect; mochi skips OnDisconnect when
	// the CONNACK write fails, so recheck also drops closed clients.
	conns map[string][]tracked
}

// tracked is one connected client and the credential it proved. A slice per
// device, not a map: most devices hold one connection, and this costs a
// fleet of idle devices the least memory.
type tracked struct {
	cl   *mqtt.Client
	cred string
}

// SessionAuthenticator is an Authenticator that also describes the session
// it admits and tells when a device changes, as *registry.Registry does. The
// broker uses it when Auth implements it: a session ends when its JWT
// expires (Session.Until), and when Watch reports the device changed and
// SessionValid says the session's credential no longer admits it.
type SessionAuthenticator interface {
	AuthenticateSession(deviceID string, password []byte) (registry.Session, error)
	SessionValid(deviceID, credential string) bool
	Watch(fn func(deviceID string)) (stop func())
}

func (h *authHook) ID() string { return "iotpipe-auth" }

func (h *authHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnDisconnect}, []byte{b})
}

// refusal is one CONNACK answer: the v5 reason code and the v3 return code.
type refusal struct {
	reason string
	v5     packets.Code
	v3     byte
}

var (
	refuseClientID    = refusal{"bad_client_id", packets.ErrClientIdentifierNotValid, 2}
	refuseCredentials = refusal{"bad_credentials", packets.ErrBadUsernameOrPassword, 4}
	refuseCertificate = refusal{"bad_certificate", packets.ErrBadUsernameOrPassword, 4}
	refuseNoPassword  = refusal{"no_password", packets.ErrBadUsernameOrPassword, 4}
	refuseUnknown     = refusal{"unknown_device", packets.ErrBadUsernameOrPassword, 4}
	refuseBlocked     = refusal{"blocked", packets.ErrNotAuthorized, 5}
	refuseUnavailable = refusal{"unavailable", packets.ErrServerUnavailable, 3}
)

func (h *authHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	r, sess, ok := h.decide(cl, pk)
	if ok && sess.Credential != "" && !h.track(cl, sess.Credential) {
		r, ok = refuseBlocked, false // changed while we authenticated
	}
	if ok {
		if !sess.Until.IsZero() {
			h.expireAt(cl, sess.Until)
		}
		return nil
	}
	h.m.connectRefused.WithLabelValues(r.reason).Inc()
	h.log.Info().Str("client", pk.Connect.ClientIdentifier).Str("reason", r.reason).Msg("connect refused")
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: r.v3}
	if cl.Properties.ProtocolVersion == 5 {
		ack.ReasonCode = r.v5.Code
		ack.Properties.ReasonString = r.v5.Reason
	}
	_ = cl.WritePacket(ack) // the connection is closed either way
	return r.v5
}

// decide authenticates a CONNECT; sess.Until is when the session must end
// (zero: never). A client that presented a TLS certificate is judged by it
// alone: it needs no password, and a certificate that does not admit the
// device refuses the connection whatever the password.
func (h *authHook) decide(cl *mqtt.Client, pk packets.Packet) (r refusal, sess registry.Session, ok bool) {
	if h.draining() {
		return refuseUnavailable, sess, false
	}
	dev, err := deviceFromClientID(pk.Connect.ClientIdentifier)
	if err != nil {
		return refuseClientID, sess, false
	}
	certs := peerCertificates(cl)
	ca, isCA := h.auth.(CertAuthenticator)
	switch {
	case len(certs) > 0 && isCA:
		sess, err = ca.AuthenticateCertificate(dev, certs)
	case len(certs) > 0:
		err = fmt.Errorf("%w: client certificates are not accepted by this authenticator", registry.ErrBadCredentials)
	case !pk.Connect.PasswordFlag || len(pk.Connect.Password) == 0:
		return refuseNoPassword, sess, false
	default:
		sess, err = h.password(dev, pk.Connect.Password)
	}
	return h.answer(dev, err, sess, len(certs) > 0)
}

func (h *authHook) password(dev string, password []byte) (registry.Session, error) {
	if sa, isSA := h.auth.(SessionAuthenticator); isSA {
		return sa.AuthenticateSession(dev, password)
	}
	return registry.Session{}, h.auth.Authenticate(dev, password)
}

// answer maps an authentication result to the CONNACK.
func (h *authHook) answer(dev string, err error, sess registry.Session, cert bool) (r refusal, _ registry.Session, ok bool) {
	switch {
	case err == nil:
		return refusal{}, sess, true
	case errors.Is(err, registry.ErrNotFound):
		return refuseUnknown, sess, false
	case errors.Is(err, registry.ErrBadCredentials):
		// The reason (wrong key, aud, expired...) is for the operator; the
		// error never holds the password.
		h.log.Debug().Err(err).Msg("bad credentials")
		if cert {
			return refuseCertificate, sess, false
		}
		return refuseCredentials, sess, false
	case errors.Is(err, registry.ErrBlocked):
		return refuseBlocked, sess, false
	case errors.Is(err, registry.ErrInvalidID):
		return refuseClientID, sess, false
	default: // the registry itself failed: say so rather than blame the device
		h.log.Warn().Err(err).Str("device", dev).Msg("authenticate")
		return refuseUnavailable, sess, false
	}
}

// track records that cl proved credential, then checks the credential
// again: a change applied between AuthenticateSession and the record would
// otherwise be missed (its recheck did not see cl yet). False refuses cl.
func (h *authHook) track(cl *mqtt.Client, credential string) bool {
	dev, _ := deviceFromClientID(cl.ID) // decide checked it
	h.mu.Lock()
	if h.conns == nil {
		h.conns = map[string][]tracked{}
	}
	h.conns[dev] = append(h.conns[dev], tracked{cl, credential})
	h.mu.Unlock()
	sa, isSA := h.auth.(SessionAuthenticator)
	if !isSA || sa.SessionValid(dev, credential) {
		return true
	}
	h.untrack(dev, cl)
	return false
}

func (h *authHook) untrack(dev string, cl *mqtt.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	list := slices.DeleteFunc(h.conns[dev], func(t tracked) bool { return t.cl == cl })
	if len(list) == 0 {
		delete(h.conns, dev)
	} else {
		h.conns[dev] = list
	}
}

// deviceChanged is the registry's Watch callback. It runs on the registry's
// follower goroutine, so it only looks up whether the device has clients
// here and leaves the re-check (and socket writes) to a goroutine.
func (h *authHook) deviceChanged(dev string) {
	h.mu.Lock()
	n := len(h.conns[dev])
	h.mu.Unlock()
	if n > 0 {
		go h.recheck(dev)
	}
}

// recheck closes the device's clients whose credential no longer admits
// them.
func (h *authHook) recheck(dev string) {
	h.mu.Lock()
	clients := slices.Clone(h.conns[dev])
	h.mu.Unlock()
	sa := h.auth.(SessionAuthenticator)
	for _, t := range clients {
		cl, cred := t.cl, t.cred
		if cl.Closed() {
			h.untrack(dev, cl)
			continue
		}
		if sa.SessionValid(dev, cred) {
			continue
		}
		h.m.sessionsCut.Inc()
		h.log.Info().Str("client", cl.ID).Str("credential", cred).
			Msg("device blocked, deleted or its credential removed; closing connection")
		closeClient(cl, packets.ErrAdministrativeAction, "device blocked, deleted or credential removed")
	}
}

// closeClient ends a connection the broker no longer accepts: MQTT 5 gets a
// DISCONNECT with code, 3.1.1 (which has no server DISCONNECT) a closed
// socket.
func closeClient(cl *mqtt.Client, code packets.Code, reason string) {
	if cl.Properties.ProtocolVersion == 5 {
		_ = cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
			ReasonCode: code.Code, Properties: packets.Properties{ReasonString: reason}})
	}
	cl.Stop(code)
}

// expireAt closes cl's connection at until. OnDisconnect stops the timer
// when the connection ends first.
func (h *authHook) expireAt(cl *mqtt.Client, until time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.expiry == nil {
		h.expiry = map[*mqtt.Client]*time.Timer{}
	}
	h.expiry[cl] = time.AfterFunc(time.Until(until), func() {
		h.mu.Lock()
		delete(h.expiry, cl)
		h.mu.Unlock()
		h.log.Info().Str("client", cl.ID).Msg("credentials expired; closing connection")
		closeClient(cl, packets.ErrMaxConnectTime, "credentials expired")
	})
}

func (h *authHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	if dev, err := deviceFromClientID(cl.ID); err == nil {
		h.untrack(dev, cl)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if t, ok := h.expiry[cl]; ok {
		t.Stop()
		delete(h.expiry, cl)
	}
}

func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	_, err := deviceFromClientID(cl.ID) // OnConnect already authenticated it
	return err == nil
}

// ---- authorisation ----

// aclHook lets a device publish only to its own events and state topics and
// subscribe only to its own config and commands topics.
type aclHook struct {
	mqtt.HookBase
	m *metrics
}

func (h *aclHook) ID() string { return "iotpipe-acl" }

func (h *aclHook) Provides(b byte) bool { return b == mqtt.OnACLCheck }

func (h *aclHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	dev, err := deviceFromClientID(cl.ID)
	if err != nil {
		return false
	}
	t, ok := parseTopic(topic, !write)
	ok = ok && t.Device == dev
	if write {
		ok = ok && (t.Kind == kindEvents || t.Kind == kindState)
		if !ok {
			h.m.rejected.WithLabelValues("not_authorized").Inc()
		}
		return ok
	}
	return ok && (t.Kind == kindConfig || t.Kind == kindCommands)
}

// ---- forwarding ----

// Forwarder is what the broker needs from ingest.Forwarder.
type Forwarder interface {
	Forward(ctx context.Context, m ingest.Message, done func(error))
}

// forwardHook hands every authorised PUBLISH to the Forwarder and answers the
// device from the produce result, off the client's read goroutine. See the
// package documentation for the protocol decisions.
type forwardHook struct {
	mqtt.HookBase
	srv         *mqtt.Server
	fw          Forwarder
	maxInflight int
	maxPayload  int
	stateTopic  string
	m           *metrics
	log         zerolog.Logger

	ctx    context.Context // for Forward; cancelled only when draining gives up
	cancel context.CancelFunc
	stop   chan struct{} // closed when draining starts: wakes publishers waiting for a slot

	mu       sync.Mutex
	sessions map[*mqtt.Client]*session
	pending  int           // messages forwarded and not yet answered, all clients
	idle     chan struct{} // closed when pending reaches 0 while draining
	draining bool
}

// session is one connection's ordered queue of unanswered messages.
type session struct {
	cl    *mqtt.Client
	v5    bool
	slots chan struct{}  // semaphore: MaxInflightPerClient
	queue chan *inflight // FIFO: answers go out in publish order
}

type inflight struct {
	id     uint16
	qos    byte
	result chan error // buffered 1: the produce promise never blocks
}

func newForwardHook(srv *mqtt.Server, fw Forwarder, maxInflight, maxPayload int, stateTopic string, m *metrics, log zerolog.Logger) *forwardHook {
	ctx, cancel := context.WithCancel(context.Background())
	return &forwardHook{srv: srv, fw: fw, maxInflight: maxInflight, maxPayload: maxPayload, stateTopic: stateTopic, m: m, log: log,
		ctx: ctx, cancel: cancel, stop: make(chan struct{}), sessions: map[*mqtt.Client]*session{}}
}

func (h *forwardHook) ID() string { return "iotpipe-forward" }

func (h *forwardHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnPacketRead, mqtt.OnPublish, mqtt.OnDisconnect}, []byte{b})
}

// OnPacketRead refuses QoS 2 before mochi would silently downgrade it to
// QoS 1 (and answer a PUBACK the client does not expect): like Cloud IoT Core,
// the connection is closed (v5: DISCONNECT 0x9B QoS not supported).
func (h *forwardHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	h.m.received.Inc()
	if pk.FixedHeader.Qos == 2 {
		h.m.rejected.WithLabelValues("qos2").Inc()
		_ = h.srv.DisconnectClient(cl, packets.ErrQosNotSupported)
		return pk, packets.ErrQosNotSupported
	}
	return pk, nil
}

// OnPublish runs on the client's read goroutine after the ACL check. It
// waits for a free in-flight slot (the one bounded blocking point: it ends
// when an earlier message of this client is answered, at worst after the
// ingest delivery timeout, or when the broker drains), starts the produce and
// returns ErrRejectPacket so mochi neither acks, retains nor delivers it to
// subscribers. The answer is written by the session's ack loop.
func (h *forwardHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // the broker's own publishes (Server.Publish): routed by mochi, never forwarded
	}
	if len(pk.Payload) > h.maxPayload {
		h.m.rejected.WithLabelValues("too_large").Inc()
		_ = h.srv.DisconnectClient(cl, packets.ErrPacketTooLarge)
		return pk, packets.ErrRejectPacket
	}
	t, ok := parseTopic(pk.TopicName, false)
	if !ok { // the ACL hook admitted it, so this is a programming error
		h.m.rejected.WithLabelValues("bad_topic").Inc()
		return pk, packets.ErrRejectPacket
	}
	s := h.session(cl)
	select {
	case s.slots <- struct{}{}:
	case <-h.stop:
		h.m.rejected.WithLabelValues("shutting_down").Inc()
		return pk, packets.ErrRejectPacket // no answer: the device resends after reconnecting
	}
	if !h.begin() {
		<-s.slots
		h.m.rejected.WithLabelValues("shutting_down").Inc()
		return pk, packets.ErrRejectPacket
	}
	in := &inflight{id: pk.PacketID, qos: pk.FixedHeader.Qos, result: make(chan error, 1)}
	s.queue <- in // never blocks: at most maxInflight entries hold a slot
	m := ingest.Message{
		Device:      t.Device,
		Topic:       pk.TopicName,
		ContentType: pk.Properties.ContentType,
		Payload:     pk.Payload, // mochi decoded it into a fresh slice; nothing else holds it
		ReceivedAt:  time.Now(),
	}
	if t.Kind == kindState {
		m.KafkaTopic = h.stateTopic // same path and PUBACK rule as telemetry, compacted topic
	}
	h.fw.Forward(h.ctx, m, func(err error) { in.result <- err })
	return pk, packets.ErrRejectPacket
}

func (h *forwardHook) session(cl *mqtt.Client) *session {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, ok := h.sessions[cl]
	if !ok {
		s = &session{cl: cl, v5: cl.Properties.ProtocolVersion == 5,
			slots: make(chan struct{}, h.maxInflight), queue: make(chan *inflight, h.maxInflight)}
		h.sessions[cl] = s
		go h.ackLoop(s)
	}
	return s
}

// ackLoop answers one connection's messages in the order they were published.
// Waiting for the head of the queue keeps PUBACK order even if produce
// results arrived out of order.
func (h *forwardHook) ackLoop(s *session) {
	for in := range s.queue {
		err := <-in.result
		h.answer(s, in, err)
		<-s.slots
		h.end()
	}
}

func (h *forwardHook) answer(s *session, in *inflight, err error) {
	if err != nil {
		h.m.rejected.WithLabelValues("kafka").Inc()
		h.log.Debug().Err(err).Str("client", s.cl.ID).Msg("forward failed")
	}
	if in.qos == 0 {
		return
	}
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: in.id}
	if err != nil {
		if !s.v5 {
			return // 3.1.1 has no negative PUBACK: silence makes the device resend
		}
		code := packets.ErrUnspecifiedError
		if isTimeout(err) {
			code = packets.ErrQuotaExceeded // Kafka too slow for us: a limit, the device should back off
		}
		ack.ReasonCode = code.Code
		ack.Properties.ReasonString = code.Reason
	}
	if werr := s.cl.WritePacket(ack); werr != nil {
		return // connection gone: the device has no ack and will resend
	}
	if err == nil {
		h.m.acked.Inc()
	}
}

func isTimeout(err error) bool {
	return errors.Is(err, kgo.ErrRecordTimeout) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, kgo.ErrMaxBuffered)
}

// OnDisconnect ends the session's ack loop once its queue is answered. It
// runs on the read goroutine, so no OnPublish for this client races it.
func (h *forwardHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.mu.Lock()
	s, ok := h.sessions[cl]
	delete(h.sessions, cl)
	h.mu.Unlock()
	if ok {
		close(s.queue)
	}
}

func (h *forwardHook) begin() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.draining {
		return false
	}
	h.pending++
	h.m.inflight.Set(float64(h.pending))
	return true
}

func (h *forwardHook) end() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pending--
	if h.pending == 0 && h.draining && h.idle != nil {
		close(h.idle)
		h.idle = nil
	}
	h.m.inflight.Set(float64(h.pending))
}

func (h *forwardHook) isDraining() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.draining
}

// drain stops accepting publishes and waits until every forwarded message
// is answered, or until timeout; then it cancels the produce context.
func (h *forwardHook) drain(timeout time.Duration) error {
	h.mu.Lock()
	h.draining = true
	close(h.stop)
	var idle chan struct{}
	if h.pending > 0 {
		idle = make(chan struct{})
		h.idle = idle
	}
	h.mu.Unlock()
	defer h.cancel()
	if idle == nil {
		return nil
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-idle:
		return nil
	case <-t.C:
		return errors.New("drain timed out with messages still in flight; they were not acknowledged")
	}
}
