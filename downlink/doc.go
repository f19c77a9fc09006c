// Package downlink carries cloud-to-device commands between iotpipe
// instances over Kafka and keeps device presence (which instance holds each
// device's MQTT connection), so any API instance can send a command to a
// device connected to any broker instance and answer at once when it is not
// connected.
//
//	hub, err := downlink.New(downlink.Config{Kafka: opts, Topic: t.Downlink, PresenceTopic: t.Presence})
//	hub.SetDeliverer(br)       // on instances that run a broker, before Run
//	go hub.Run(ctx)
//	res, err := hub.SendCommand(ctx, "dev-1", "/devices/dev-1/commands/reboot", payload)
//
// # Commands on Kafka (the downlink topic)
//
// A command is one record on the downlink topic, key = device id, value = the
// payload, headers iot-kind=command, iot-request (random id), iot-reply-to
// (the requesting instance), iot-target (the instance presence says holds
// the device), iot-topic (the MQTT topic) and iot-deadline (Unix ms). Every
// instance reads the topic directly (no consumer group: each must see every
// record); only the target delivers. It answers with a reply record on the
// same topic: iot-kind=reply, iot-request, iot-reply-to, iot-outcome
// (delivered, not_connected, not_subscribed, device_timeout, rejected, busy,
// failed), iot-qos and iot-detail. Replies share the topic rather than having
// their own because every instance already reads it: no second consumer, and
// the request and its reply stay in one ordered log. The requester keeps a
// bounded map of waiting requests (MaxWaiting) and drops replies addressed to
// other instances after reading two headers.
//
// A command for a device held by the requesting instance itself (`iotpipe
// run`, or an API beside the broker) is delivered directly, without the round
// trip through Kafka, under the same bounds.
//
// Instances start reading the downlink topic at its end (resolved in New, so
// a record produced after New returned is seen). Commands are not replayed:
// a command is a live request with a caller waiting for its outcome and a
// deadline, like Cloud IoT Core's sendCommandToDevice, which delivered only
// to connected, subscribed devices and never queued. A command replayed after
// a restart would reach the device after its caller was told it failed, or
// run twice. The topic keeps records for an hour (retention.ms), for
// inspection only. The deadline is the requester's clock; the target skips
// commands past it, so instance clocks must agree to well under ReplyMargin.
//
// # Presence (the presence topic)
//
// The presence topic is compacted, key = device id, value = JSON
// {instance, connected, last_connected, last_disconnected, last_heartbeat,
// last_event}. A broker instance writes a device's record when its first
// client connects and when its last client leaves; MQTT PINGREQs and
// publishes update last_heartbeat and last_event in memory and are written at
// most once per ActivityInterval (default one minute) per device, so
// telemetry does not cost a presence write per message. Every instance
// follows the whole topic into memory.
//
// A crashed instance cannot write "disconnected" for its devices, so the
// record alone would keep them connected forever. Each instance with a
// broker therefore writes a heartbeat record under the key
// "instance/<id>" every Heartbeat (default 5 s; device ids cannot contain
// '/', so the keys never collide). A device counts as connected only while
// its record says so and its instance is alive: a heartbeat, or the device
// record itself, written within Lease (default 3×Heartbeat) by the writer's
// clock (instances are assumed NTP-synchronised to well under the lease).
// Each process start uses a fresh instance id, so a restarted instance does
// not revive its previous run's devices. A clean shutdown writes the
// devices' disconnections and a tombstone for the instance key. After a
// crash its devices look connected for at most Lease; a command sent to one
// of them then waits for no reply and ends with a timeout.
//
// A device that moves from instance A to B races A's "disconnected" against
// B's "connected". A writes "disconnected" only when the record it follows
// still names A; if both land within the follow lag the device can look
// disconnected while connected until its next throttled activity write.
//
// # Bounds
//
// Every queue is bounded: waiting requests (MaxWaiting, beyond it
// SendCommand fails with ErrBusy), deliveries in progress on the target
// (MaxDeliveries, beyond it the reply is busy), the producer's buffer
// (presence writes use TryProduce and are dropped, logged and counted when
// Kafka is slow rather than blocking MQTT goroutines). The consumer loop
// never waits for a device: deliveries run on their own goroutines.
package downlink
