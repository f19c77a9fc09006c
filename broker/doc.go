// Package broker is iotpipe's device-facing MQTT 3.1.1/5 server (mochi-mqtt v2)
// with Cloud IoT Core compatible identity and topics, forwarding telemetry to
// Kafka through ingest with acknowledgements that mean "Kafka has it".
//
//	b, err := broker.New(broker.Config{TCPAddr: ":1883", Auth: reg, Forwarder: fw})
//	...
//	err = b.Run(ctx) // serves until ctx is done, then drains
//
// Three mochi hooks, one per concern: authentication (OnConnect), ACL
// (OnACLCheck) and forwarding (OnPacketRead, OnPublish, OnDisconnect).
//
// # Listeners
//
// Plain TCP on TCPAddr (Off disables it); with Config.TLS, MQTT over TLS
// (1.2 or later) on TLSAddr (default :8883); with WSAddr, MQTT over
// WebSocket, wss when TLS is set. Every listener binds in New. On the TLS
// and WebSocket listeners the handshake and the CONNECT must arrive within
// 10 s; then mochi's keepalive deadline applies. Certificates
// are whatever Config.TLS holds: loaded once, so renewing them needs a
// restart (or a GetCertificate that reloads).
//
// # Identity
//
// The client id is a device id or projects/P/locations/L/registries/R/devices/D
// (→ D); the username is ignored; the password is the device's access token
// or a JWT. Over TLS a client certificate may stand in for the password:
// the handshake requests one without verifying it, and the auth hook asks a
// CertAuthenticator (the registry: a pinned X509_CERT_PEM credential, or a
// chain to its client CA with the device id as CommonName). A client that
// presents a certificate is judged by it alone, password or not.
// CONNACK codes (v5 / v3.1.1):
//
//	malformed client id                          0x85 / 2 identifier rejected
//	no password, unknown device, bad token       0x86 / 4 bad user name or password
//	certificate admitting no or another device   0x86 / 4 bad user name or password
//	blocked device                               0x87 / 5 not authorized
//	registry failing, broker shutting down       0x88 / 3 server unavailable
//
// mochi always answers a failed OnConnectAuthenticate with 0x86 (v3: 5), so
// the auth hook decides in OnConnect, writes the CONNACK itself and returns
// the code, which makes mochi close the connection without another CONNACK.
//
// # Ending live sessions
//
// A session lasts only as long as what admitted it. A JWT session is closed
// when the JWT expires, a certificate session when the certificate (or its
// pin) expires (v5: DISCONNECT 0xA0 Maximum connect time). When Auth
// is a SessionAuthenticator (*registry.Registry), the broker also remembers
// which credential each client proved (registry.Session.Credential: a digest
// of the credential, stable when other credentials are removed and indexes
// shift) and subscribes to the registry's Watch. Every instance follows the
// registry topic, so when any instance blocks or deletes a device or removes
// a credential, each broker re-checks that device's clients as soon as its
// registry applied the record (milliseconds; the target is one second) and
// closes those no longer allowed: MQTT 5 gets DISCONNECT 0x98
// Administrative action (the spec's code for a connection ended by an
// operator, unlike 0x87 which answers a request), 3.1.1 a closed socket since
// the server has no DISCONNECT there. Token and JWT sessions are treated
// alike, and so are pinned certificates; a session admitted by the client CA
// holds no credential and ends on block or delete. A session using another
// credential of the same device stays up.
//
// # Topics and ACL
//
// A device publishes only to /devices/D/events[/sub...] and /devices/D/state
// and subscribes only to /devices/D/config and /devices/D/commands[/sub|/#],
// D being its own id. A refused subscription gets SUBACK 0x87 (v3: 0x80). A
// refused QoS 1 publish gets, in MQTT 5, PUBACK 0x87 and the connection stays
// up. MQTT 3.1.1 has no negative PUBACK; we keep mochi's behaviour of closing
// the connection (as Cloud IoT Core did): an ack would claim a delivery that
// did not happen, and silence would make the device resend forever. A refused
// QoS 0 publish is dropped silently in both versions.
//
// # State and config
//
// A PUBLISH to /devices/D/state takes the same asynchronous path as events
// but goes to Config.StateTopic (compacted iot.state). When Auth is a
// ConfigSource (*registry.Registry), a subscription to /devices/D/config
// gets the latest config right after its SUBACK and every newer version
// while connected (registry Watch, any instance); the hook writes the
// PUBLISH with its own packet id into mochi's inflight store, and the
// device's PUBACK records the version's ack time in the registry through a
// bounded queue. See docs/architecture.md, "State and config".
//
// # Delivery and asynchronous PUBACK
//
// OnPublish starts the produce and returns packets.ErrRejectPacket, so mochi
// does not acknowledge, retain or deliver the message (telemetry is never
// retained nor delivered to MQTT subscribers); mochi's receive quota is
// untouched on that path. The hook writes the PUBACK itself from a per-
// connection ack goroutine (mochi's Client.WritePacket is locked and safe
// from other goroutines), in publish order, once Kafka acknowledged with
// acks=all. Per connection at most MaxInflightPerClient messages are
// unanswered (advertised as v5 Receive Maximum); beyond that OnPublish blocks,
// which is TCP backpressure on that device only, bounded by the ingest
// delivery timeout. When Kafka fails or times out: v5 gets PUBACK 0x97 Quota
// exceeded for timeouts (Kafka too slow: back off) and 0x80 Unspecified error
// otherwise; v3.1.1 gets no PUBACK, so the device resends after reconnecting.
//
// QoS 2 is not supported (CONNACK Maximum QoS 1). mochi would silently
// downgrade a QoS 2 PUBLISH to 1 and answer PUBACK instead of PUBREC, so the
// forward hook refuses it first: the connection is closed (v5: DISCONNECT
// 0x9B), as Cloud IoT Core did. Subscriptions are granted at most QoS 1.
//
// A payload above MaxPayloadBytes is refused with DISCONNECT 0x95 Packet too
// large (v3: the connection is closed). A packet above MaxPayloadBytes+64 KiB
// is refused by mochi's MaximumPacketSize before it is read, by closing the
// connection (mochi sends no DISCONNECT then).
//
// # Commands and presence
//
// DeliverCommand writes a command to a device connected here (see
// commands.go): to its most recent client whose subscription matches the
// topic, at that subscription's QoS. QoS 1 takes a packet id, registers the
// message in mochi's inflight store (so ids never collide and mochi's PUBACK
// handling calls OnQosComplete) and waits for the PUBACK until ctx ends;
// QoS 0 returns once written. Errors wrap downlink.ErrNotConnected,
// ErrNotSubscribed, ErrDeviceTimeout, ErrRejected (v5 PUBACK ≥ 0x80) or
// ErrBusy (MaximumInflight, or the device's MQTT 5 Receive Maximum,
// unacknowledged messages). MQTT 5 subscription identifiers are sent. It
// runs on the caller's goroutine, never on a client's read loop.
// Config.Presence is told when a device's session is established and ends,
// and of PINGREQs and PUBLISHes (package downlink throttles what it writes).
//
// # Memory per connection
//
// An idle device costs about 26 KiB resident, 34 KiB (tokens) to 39 KiB
// (JWTs) after a reconnect wave (docs/benchmarks.md): two goroutine stacks
// (mochi's read and write loops, about 20 KiB together), a 1 KiB read buffer
// (ClientReadBufferBytes), an outbound queue of 64 packets
// (ClientWritesPending; mochi's default of 8192 is 64 KiB per client) and the
// connection. The 2 KiB write buffer exists only while writes queue up. A
// publishing device adds its forwarder queue of MaxInflightPerClient
// messages; at most 256 server→device QoS 1 messages.
//
// # Shutdown
//
// Run stops accepting connections and publishes when its context ends, waits
// until every forwarded message is answered (bounded by DrainTimeout) and
// only then disconnects the clients: every PUBACK sent is for a record in
// Kafka, and every message without a PUBACK may be resent by the device.
package broker
