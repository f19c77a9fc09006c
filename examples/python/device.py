#!/usr/bin/env python3
"""A sample iotpipe device: what Google's Cloud IoT Core MQTT sample did.

It authenticates with a JWT (RS256 or ES256, aud = the project id) signed by
its private key, whose public key was registered with
`iotpipe devices credentials add ID --type ES256_PEM --public-key-file ...`;
publishes telemetry to /devices/ID/events at QoS 1 and waits for each PUBACK
(iotpipe acknowledges only once Kafka has the message); subscribes to
/devices/ID/config and /devices/ID/commands/# (printing each command, and
with --wait-commands N staying connected until N arrived); and reconnects with a fresh
JWT before the current one expires (iotpipe closes the connection when it
does).

    python device.py --project-id demo-project --device-id dev-1 \
        --private-key-file ec_private.pem --algorithm ES256 --num-messages 5

Exits non-zero when it cannot connect or any publish is not acknowledged.
"""

import argparse
import datetime
import json
import math
import random
import sys
import threading
import time

import jwt
import paho.mqtt.client as mqtt


def log(msg):
    print(f"{datetime.datetime.now().strftime('%H:%M:%S.%f')} python-device: {msg}", flush=True)


def create_jwt(project_id, private_key_file, algorithm, expires_minutes):
    """A JWT with the claims Cloud IoT Core required: iat, exp and aud."""
    now = int(time.time())
    claims = {"iat": now, "exp": now + expires_minutes * 60, "aud": project_id}
    try:
        with open(private_key_file, "rb") as f:
            private_key = f.read()
        return jwt.encode(claims, private_key, algorithm=algorithm), now + expires_minutes * 60
    except (OSError, ValueError, jwt.PyJWTError) as e:
        raise RuntimeError(f"{private_key_file}: cannot sign an {algorithm} JWT: {e}") from e


class Device:
    def __init__(self, args):
        self.args = args
        self.client = None
        self.expires_at = 0
        self.connected = threading.Event()
        self.connect_rc = None
        self.subscribed = threading.Event()
        self.sub_codes = []
        self.config_state = ConfigState(args)
        self.commands = []  # (topic, payload) received, see on_command
        self.command_received = threading.Condition()

    # Callbacks (paho-mqtt 2.x, CallbackAPIVersion.VERSION2).
    def on_connect(self, client, userdata, flags, reason_code, properties):
        self.connect_rc = reason_code
        if reason_code.is_failure:
            self.connected.set()
            return
        # Subscribe in on_connect so a reconnect subscribes again. The latest
        # config is delivered on subscribe and on every update (QoS 1);
        # commands arrive on /devices/ID/commands[/subfolder] (see
        # on_command).
        dev = self.args.device_id
        client.subscribe([(f"/devices/{dev}/config", 1), (f"/devices/{dev}/commands/#", 0)])
        self.connected.set()

    def on_subscribe(self, client, userdata, mid, reason_code_list, properties):
        self.sub_codes = reason_code_list
        self.subscribed.set()

    def on_disconnect(self, client, userdata, flags, reason_code, properties):
        log(f"disconnected: {reason_code}")

    def on_message(self, client, userdata, message):
        if message.topic == f"/devices/{self.args.device_id}/config":
            self.config_state.on_config(message)
            return
        payload = message.payload.decode("utf-8", errors="replace")
        log(f"received on {message.topic} (QoS {message.qos}): {payload}")

    # --- commands (Cloud IoT Core sendCommandToDevice; `iotpipe devices command`) ---

    def handle_commands(self, client):
        """Route /devices/ID/commands[/subfolder] to on_command."""
        client.message_callback_add(f"/devices/{self.args.device_id}/commands/#", self.on_command)

    def on_command(self, client, userdata, message):
        payload = message.payload.decode("utf-8", errors="replace")
        log(f"command received on {message.topic}: {payload}")
        with self.command_received:
            self.commands.append((message.topic, message.payload))
            self.command_received.notify_all()

    def await_commands(self, n, timeout):
        """Stay connected until n commands arrived; False after timeout seconds."""
        log(f"waiting up to {timeout} s for {n} command(s)")
        with self.command_received:
            return self.command_received.wait_for(lambda: len(self.commands) >= n, timeout)

    def connect(self):
        a = self.args
        token, self.expires_at = create_jwt(a.project_id, a.private_key_file, a.algorithm, a.jwt_expires_minutes)
        client_id = (
            f"projects/{a.project_id}/locations/{a.cloud_region}/registries/{a.registry_id}/devices/{a.device_id}"
        )
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        # The username is ignored, as by Cloud IoT Core; the password is the JWT.
        client.username_pw_set(username="unused", password=token)
        client.on_connect = self.on_connect
        client.on_subscribe = self.on_subscribe
        client.on_disconnect = self.on_disconnect
        client.on_message = self.on_message
        self.handle_commands(client)
        self.connected.clear()
        self.subscribed.clear()
        self.connect_rc = None
        client.connect(a.host, a.port, keepalive=60)
        client.loop_start()
        self.client = client
        if not self.connected.wait(a.timeout):
            raise RuntimeError(f"connect to {a.host}:{a.port}: no CONNACK within {a.timeout} s")
        if self.connect_rc is None or self.connect_rc.is_failure:
            raise RuntimeError(f"connect to {a.host}:{a.port} as {client_id}: refused: {self.connect_rc}")
        if not self.subscribed.wait(a.timeout):
            raise RuntimeError(f"subscribe: no SUBACK within {a.timeout} s")
        refused = [str(rc) for rc in self.sub_codes if rc.is_failure]
        if refused:
            raise RuntimeError(f"subscribe refused: {refused}")
        expires = datetime.datetime.fromtimestamp(self.expires_at, datetime.timezone.utc).isoformat()
        log(f"connected to {a.host}:{a.port} as {client_id} (JWT {a.algorithm}, expires {expires}); "
            f"subscribed to config and commands")

    def disconnect(self):
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def needs_refresh(self):
        # Reconnect a minute (or a tenth of a short lifetime) before expiry.
        margin = min(60, self.args.jwt_expires_minutes * 6)
        return time.time() >= self.expires_at - margin


# ---- config and state (Cloud IoT Core's /devices/ID/config and /state) ----

def add_config_state_args(p):
    p.add_argument("--state", help="publish this string once to /devices/ID/state (QoS 1) after connecting")
    p.add_argument("--wait-config", metavar="DATA",
                   help="before exiting, wait until a config with exactly this data arrived (on subscribe or while "
                        "connected); fail after --config-timeout")
    p.add_argument("--config-timeout", type=float, default=30.0, help="seconds --wait-config waits")


class ConfigState:
    """Applies the config iotpipe delivers on /devices/ID/config and reports state.

    iotpipe sends the latest config when the device subscribes (an empty
    payload while none was set: version 1 is empty, as in Cloud IoT Core) and
    every new version while it is connected, at QoS 1; paho acknowledges it,
    which iotpipe records as the version's device_ack_time.
    """

    def __init__(self, args):
        self.args = args
        self.config = None  # the applied config (bytes)
        self.cond = threading.Condition()

    def on_config(self, message):
        with self.cond:
            self.config = message.payload
            self.cond.notify_all()
        shown = message.payload.decode("utf-8", errors="replace") if message.payload else "(empty)"
        log(f"config applied (QoS {message.qos}): {shown}")

    def publish_state(self, client):
        if self.args.state is None:
            return
        info = client.publish(f"/devices/{self.args.device_id}/state", self.args.state, qos=1)
        info.wait_for_publish(timeout=self.args.timeout)
        if not info.is_published():
            raise RuntimeError(f"state: no PUBACK within {self.args.timeout} s")
        log(f"state reported: {self.args.state}")

    def wait_for_config(self):
        want = self.args.wait_config
        if want is None:
            return True
        want = want.encode()
        with self.cond:
            if not self.cond.wait_for(lambda: self.config == want, timeout=self.args.config_timeout):
                log(f"error: config {want!r} not received within {self.args.config_timeout} s (have {self.config!r})")
                return False
        log(f"config {want.decode()!r} received")
        return True


def parse_args():
    p = argparse.ArgumentParser(description="iotpipe MQTT device sample (Cloud IoT Core compatible JWT auth)")
    p.add_argument("--host", default="localhost", help="iotpipe MQTT host")
    p.add_argument("--port", type=int, default=1883, help="iotpipe MQTT port")
    p.add_argument("--project-id", required=True, help="project id: the JWT audience (iotpipe run --jwt-audience)")
    p.add_argument("--registry-id", default="iotpipe", help="registry id (part of the client id; iotpipe ignores it)")
    p.add_argument("--cloud-region", default="local", help="cloud region (part of the client id; iotpipe ignores it)")
    p.add_argument("--device-id", required=True, help="device id")
    p.add_argument("--private-key-file", required=True, help="PEM private key")
    p.add_argument("--algorithm", choices=("RS256", "ES256"), required=True, help="JWT algorithm")
    p.add_argument("--jwt-expires-minutes", type=int, default=20, help="JWT lifetime in minutes (at most 1440)")
    p.add_argument("--num-messages", type=int, default=10, help="telemetry messages to publish")
    add_config_state_args(p)
    p.add_argument("--message-type", choices=("event",), default="event", help="message type")
    p.add_argument("--message-interval", type=float, default=1.0, help="seconds between messages")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for CONNACK, SUBACK and each PUBACK")
    p.add_argument("--wait-commands", type=int, default=0,
                   help="after the messages, stay connected until this many commands arrived")
    p.add_argument("--wait-timeout", type=float, default=60.0, help="seconds --wait-commands waits at most")
    a = p.parse_args()
    if not 0 < a.jwt_expires_minutes <= 24 * 60:
        p.error("--jwt-expires-minutes must be in 1..1440")
    if a.num_messages < 0:
        p.error("--num-messages must not be negative")
    return a


def main():
    args = parse_args()
    dev = Device(args)
    try:
        dev.connect()
    except (OSError, RuntimeError) as e:
        log(f"error: {e}")
        dev.disconnect()
        return 1

    try:
        dev.config_state.publish_state(dev.client)
    except RuntimeError as e:
        log(f"error: {e}")
        dev.disconnect()
        return 1

    topic = f"/devices/{args.device_id}/events"
    failed = 0
    last_ts = 0
    try:
        for i in range(1, args.num_messages + 1):
            if dev.needs_refresh():
                log("JWT about to expire: reconnecting with a new one")
                dev.disconnect()
                dev.connect()
            # One reading per millisecond: iotpipe deduplicates by event time.
            ts = max(int(time.time() * 1000), last_ts + 1)
            last_ts = ts
            payload = json.dumps({
                "ts": ts,
                "temperature": round(20 + 5 * math.sin(i / 3) + random.random(), 2),
                "humidity": round(40 + 10 * random.random(), 2),
            })
            try:
                info = dev.client.publish(topic, payload, qos=1)
                info.wait_for_publish(timeout=args.timeout)  # QoS 1: returns on PUBACK
                ok = info.rc == mqtt.MQTT_ERR_SUCCESS and info.is_published()
            except (RuntimeError, ValueError) as e:
                log(f"message {i}/{args.num_messages}: {e}")
                ok = False
            if ok:
                log(f"message {i}/{args.num_messages} acknowledged: {payload}")
            else:
                failed += 1
                log(f"message {i}/{args.num_messages}: no PUBACK within {args.timeout} s")
            if i < args.num_messages:
                time.sleep(args.message_interval)
    except (OSError, RuntimeError) as e:
        log(f"error: {e}")
        dev.disconnect()
        return 1
    if not dev.config_state.wait_for_config():
        dev.disconnect()
        return 1
    if args.wait_commands > 0 and not dev.await_commands(args.wait_commands, args.wait_timeout):
        log(f"error: {len(dev.commands)} of {args.wait_commands} commands received within {args.wait_timeout} s")
        dev.disconnect()
        return 1
    dev.disconnect()
    if failed:
        log(f"error: {failed} of {args.num_messages} messages not acknowledged")
        return 1
    log(f"all {args.num_messages} messages acknowledged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
