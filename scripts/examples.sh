#!/usr/bin/env bash
# Runs the device samples in examples/ against a running iotpipe:
#   1. builds iotpipe and starts `iotpipe run` on free loopback ports with a
#      temporary data directory and --jwt-audience demo-project,
#   2. makes an ES256 and an RS256 key pair (openssl), creates two devices
#      and registers their public keys with `iotpipe devices credentials add`,
#   3. runs examples/python/device.py (ES256; in a venv cached under
#      $IOTPIPE_CACHE/venv/<hash of requirements.txt and python version>) and
#      examples/go-device (RS256), $IOTPIPE_EXAMPLE_MESSAGES messages each,
#   4. checks through the HTTP API that the closed 10 s windows of each device
#      count exactly the messages it sent,
#   5. config and state round trip (config_state_round_trip): a config set
#      with the CLI before the device connects arrives on subscribe, a second
#      one set (compare-and-set) while it is connected arrives too, the
#      device's acks show up as device_ack_time, a stale version is refused,
#      and the state the device reported is readable with the CLI,
#   6. sends each device a command with `iotpipe devices command` (a second
#      run of each sample, no messages, --wait-commands 1) and checks the
#      device printed it.
# Exits non-zero with the reason on any failure; cleans up after itself.
# Needs Go, python3 (python3-venv is installed with apt-get when missing),
# openssl and curl; libchdb from scripts/chdb.sh unless CHDB_LIB_PATH is set.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export IOTPIPE_CACHE=${IOTPIPE_CACHE:-$HOME/.cache/iotpipe}
msgs=${IOTPIPE_EXAMPLE_MESSAGES:-5}
project=demo-project
started=$SECONDS

log() { echo "== examples.sh [$((SECONDS - started))s]: $*" >&2; }
fail() {
	echo "examples.sh: FAIL: $*" >&2
	exit 1
}

for c in go python3 curl openssl; do
	command -v "$c" >/dev/null || fail "$c is required"
done

CHDB_LIB_PATH=${CHDB_LIB_PATH:-$(scripts/chdb.sh | tail -n1)}
export CHDB_LIB_PATH

tmp=$(mktemp -d "${TMPDIR:-/tmp}/iotpipe-examples.XXXXXX")
iotpipe_pid=""
device_pids=""
cleanup() {
	local rc=$?
	for p in $device_pids; do
		kill "$p" 2>/dev/null || true
	done
	if [ -n "$iotpipe_pid" ] && kill -0 "$iotpipe_pid" 2>/dev/null; then
		kill -TERM "$iotpipe_pid" 2>/dev/null || true
		for _ in $(seq 1 100); do
			kill -0 "$iotpipe_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$iotpipe_pid" 2>/dev/null || true
		wait "$iotpipe_pid" 2>/dev/null || true
	fi
	if [ "$rc" -ne 0 ] && [ -s "$tmp/iotpipe.log" ]; then
		echo "examples.sh: last lines of the iotpipe log:" >&2
		tail -n 30 "$tmp/iotpipe.log" >&2
	fi
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Python venv, cached by requirements and interpreter -------------------
req=examples/python/requirements.txt
pyver=$(python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
key=$({
	cat "$req"
	echo "$pyver $(command -v python3)"
} | sha256sum | cut -c1-16)
venv=$IOTPIPE_CACHE/venv/$key
export PIP_CACHE_DIR=$IOTPIPE_CACHE/pip
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ -f "$venv/.complete" ]; then
	log "python venv cached ($venv)"
else
	log "creating python venv $venv (python $pyver)"
	rm -rf "$venv"
	mkdir -p "$IOTPIPE_CACHE/venv"
	if ! python3 -m venv "$venv" >"$tmp/venv.log" 2>&1; then
		# Debian's python3 ships venv without ensurepip: python3-venv has it.
		rm -rf "$venv"
		log "python3 -m venv failed; installing python3-venv"
		sudo=""
		[ "$(id -u)" -eq 0 ] || sudo=sudo
		pkg=python3-venv
		if [ "$(command -v python3)" = /usr/bin/python3 ]; then
			pkg="python3-venv python${pyver%.*}-venv"
		fi
		$sudo apt-get update -qq >/dev/null
		# shellcheck disable=SC2086
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $pkg >/dev/null ||
			DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null ||
			fail "could not install python3-venv"
		python3 -m venv "$venv" >"$tmp/venv.log" 2>&1 || {
			cat "$tmp/venv.log" >&2
			fail "python3 -m venv $venv"
		}
	fi
	"$venv/bin/python" -m pip install -q -r "$req" || fail "pip install -r $req"
	touch "$venv/.complete"
fi
py=$venv/bin/python

# --- build ----------------------------------------------------------------
log "building iotpipe and examples/go-device"
go build -o "$tmp/iotpipe" ./cmd/iotpipe
go build -o "$tmp/go-device" ./examples/go-device

# --- keys -------------------------------------------------------------------
log "generating an ES256 and an RS256 key pair"
openssl ecparam -genkey -name prime256v1 -noout -out "$tmp/ec_private.pem" 2>/dev/null
openssl ec -in "$tmp/ec_private.pem" -pubout -out "$tmp/ec_public.pem" 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/rsa_private.pem" 2>/dev/null
openssl rsa -in "$tmp/rsa_private.pem" -pubout -out "$tmp/rsa_public.pem" 2>/dev/null

# --- iotpipe ----------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
	local p
	for _ in $(seq 1 50); do
		p=$((20000 + RANDOM % 40000))
		if port_free "$p" && [[ " $picked " != *" $p "* ]]; then
			echo "$p"
			return
		fi
	done
	fail "no free port found"
}
picked=""
mqtt_port=$(pick_port)
picked="$picked $mqtt_port"
http_port=$(pick_port)
picked="$picked $http_port"
kafka_port=$(pick_port)
data=$tmp/data
api=http://127.0.0.1:$http_port

log "starting iotpipe (MQTT 127.0.0.1:$mqtt_port, HTTP $api)"
"$tmp/iotpipe" run --data-dir "$data" --log-format json \
	--mqtt-addr "127.0.0.1:$mqtt_port" --http-addr "127.0.0.1:$http_port" \
	--embedded-kafka-addr "127.0.0.1:$kafka_port" \
	--jwt-audience "$project" --idle-timeout 2s >"$tmp/iotpipe.log" 2>&1 &
iotpipe_pid=$!
deadline=$((SECONDS + 60))
until curl -fsS -o /dev/null "$api/readyz" 2>/dev/null; do
	kill -0 "$iotpipe_pid" 2>/dev/null || fail "iotpipe exited before it was ready"
	((SECONDS < deadline)) || fail "iotpipe not ready within 60 s"
	sleep 0.2
done
log "iotpipe ready"

# The admin token goes into a curl header file, never onto a command line or
# into the output.
umask 077
printf 'Authorization: Bearer %s\n' "$(cat "$data/admin-token")" >"$tmp/auth-header"
umask 022

cli() { "$tmp/iotpipe" "$@" --api "$api" --data-dir "$data"; }
py_dev=py-device-1
go_dev=go-device-1
for d in "$py_dev" "$go_dev"; do
	# The answer holds the device's access token: not printed.
	cli devices create "$d" --labels sample=examples >/dev/null || fail "devices create $d"
done
cli devices credentials add "$py_dev" --type ES256_PEM --public-key-file "$tmp/ec_public.pem" >/dev/null ||
	fail "credentials add $py_dev"
cli devices credentials add "$go_dev" --type RSA_PEM --public-key-file "$tmp/rsa_public.pem" >/dev/null ||
	fail "credentials add $go_dev"
log "devices $py_dev (ES256) and $go_dev (RS256) registered"

from_ms=$(($(date +%s) * 1000 - 60000))

# --- config and state --------------------------------------------------------
# config_state_round_trip DEVICE LOGFILE -- DEVICE COMMAND...: sets config
# "interval=5" (version 2) before the device runs, starts the device with
# --state and --wait-config interval=1 in the background, and once its log
# shows the first config applied sets "interval=1" with --version-to-update 2
# while it is connected. Then checks the device exited 0, both versions were
# acknowledged, a stale --version-to-update is refused, and the device's
# state is readable with the CLI.
config_state_round_trip() {
	local dev=$1 out=$2
	shift 3
	local state="{\"firmware\":\"1.0.$dev\"}"
	cli devices config "$dev" --data "interval=5" >/dev/null || fail "$dev: devices config --data"
	"$@" --state "$state" --wait-config "interval=1" >"$out" 2>&1 &
	local pid=$! deadline=$((SECONDS + 30))
	until grep -q "config applied.*interval=5" "$out"; do
		kill -0 "$pid" 2>/dev/null || { cat "$out" >&2; fail "$dev exited before it applied its first config"; }
		((SECONDS < deadline)) || { cat "$out" >&2; fail "$dev: config interval=5 not applied on subscribe within 30 s"; }
		sleep 0.2
	done
	cli devices config "$dev" --data "interval=1" --version-to-update 2 >/dev/null ||
		fail "$dev: devices config --version-to-update 2"
	wait "$pid" || { cat "$out" >&2; fail "$dev failed (sample output above)"; }
	cat "$out" >&2
	grep -q "config applied.*interval=1" "$out" || fail "$dev: never applied interval=1 while connected"
	if cli devices config "$dev" --data "stale" --version-to-update 2 >/dev/null 2>"$tmp/stale.err"; then
		fail "$dev: a stale --version-to-update 2 was accepted"
	fi
	grep -q config_version_mismatch "$tmp/stale.err" || fail "$dev: stale write: $(cat "$tmp/stale.err")"
	# Acks are recorded asynchronously after the PUBACK: poll.
	deadline=$((SECONDS + 15))
	until [ "$(cli devices config-versions "$dev" | grep -c '"device_ack_time"')" -ge 2 ]; do
		((SECONDS < deadline)) || { cli devices config-versions "$dev" >&2; fail "$dev: acks of versions 2 and 3 not recorded"; }
		sleep 0.2
	done
	cli devices get "$dev" | grep -q '"last_config_ack_time"' || fail "$dev: device has no last_config_ack_time"
	local want
	want=$(printf '%s' "$state" | base64 | tr -d '\n')
	deadline=$((SECONDS + 15))
	until cli devices state "$dev" 2>/dev/null | grep -q "\"binary_data\": \"$want\""; do
		((SECONDS < deadline)) || { cli devices state "$dev" >&2 || true; fail "$dev: state $state not readable"; }
		sleep 0.2
	done
	log "$dev: config on subscribe and while connected, acks recorded, stale version refused, state $state readable"
}

# --- the samples ------------------------------------------------------------
log "python device: $msgs messages, config and state"
config_state_round_trip "$py_dev" "$tmp/py-device.log" -- "$py" examples/python/device.py --host 127.0.0.1 --port "$mqtt_port" \
	--project-id "$project" --registry-id examples --cloud-region local --device-id "$py_dev" \
	--private-key-file "$tmp/ec_private.pem" --algorithm ES256 --jwt-expires-minutes 20 \
	--num-messages "$msgs" --message-interval 0.1 --timeout 10

log "go device: $msgs messages, config and state"
config_state_round_trip "$go_dev" "$tmp/go-device.log" -- "$tmp/go-device" --host 127.0.0.1 --port "$mqtt_port" \
	--project-id "$project" --registry-id examples --cloud-region local --device-id "$go_dev" \
	--private-key-file "$tmp/rsa_private.pem" --algorithm RS256 --jwt-expires 20m \
	--num-messages "$msgs" --message-interval 100ms --timeout 10s

# --- commands -------------------------------------------------------------------
# Each sample runs again without messages, stays connected until it received
# one command, and send_command sends it through the CLI.

# send_command DEVICE PID LOG: retries `iotpipe devices command` while the
# device is not yet connected and subscribed (409), then checks the device
# printed the command.
send_command() {
	local dev=$1 pid=$2 devlog=$3 payload="reboot-$1-$RANDOM" out deadline=$((SECONDS + 30))
	device_pids="$device_pids $pid"
	until out=$(cli devices command "$dev" --data "$payload" --subfolder demo 2>&1); do
		kill -0 "$pid" 2>/dev/null || fail "$dev exited before it got a command: $(tail -n 5 "$devlog")"
		case $out in
		*device_not_connected* | *device_not_subscribed*) ;;
		*) fail "devices command $dev: $out" ;;
		esac
		((SECONDS < deadline)) || fail "$dev: command not delivered within 30 s: $out"
		sleep 0.2
	done
	log "$dev: $out"
	wait "$pid" || fail "$dev failed: $(tail -n 5 "$devlog")"
	grep -qF "command received on /devices/$dev/commands/demo: $payload" "$devlog" ||
		fail "$dev did not print the command: $(tail -n 5 "$devlog")"
	log "$dev got the command on /devices/$dev/commands/demo"
}

log "python device: a command"
"$py" examples/python/device.py --host 127.0.0.1 --port "$mqtt_port" \
	--project-id "$project" --registry-id examples --cloud-region local --device-id "$py_dev" \
	--private-key-file "$tmp/ec_private.pem" --algorithm ES256 --jwt-expires-minutes 20 \
	--num-messages 0 --timeout 10 \
	--wait-commands 1 --wait-timeout 40 >"$tmp/py-device.log" 2>&1 &
send_command "$py_dev" $! "$tmp/py-device.log"

log "go device: a command"
"$tmp/go-device" --host 127.0.0.1 --port "$mqtt_port" \
	--project-id "$project" --registry-id examples --cloud-region local --device-id "$go_dev" \
	--private-key-file "$tmp/rsa_private.pem" --algorithm RS256 --jwt-expires 20m \
	--num-messages 0 --timeout 10s \
	--wait-commands 1 --wait-timeout 40s >"$tmp/go-device.log" 2>&1 &
send_command "$go_dev" $! "$tmp/go-device.log"

# --- verify through the API ---------------------------------------------------
# Sum of "count" over a device's closed 10 s windows of one metric.
window_count() {
	local body
	body=$(curl -fsS -H "@$tmp/auth-header" \
		"$api/api/v1/windows?device=$1&metric=$2&window=10s&from=$from_ms") || return 1
	grep -o '"count": *[0-9]*' <<<"$body" | awk -F: '{s += $2} END {print s + 0}'
}
log "waiting for the windows to close (idle timeout 2 s, allowed lateness 5 s)"
deadline=$((SECONDS + 60))
for d in "$py_dev" "$go_dev"; do
	for m in temperature humidity; do
		while :; do
			n=$(window_count "$d" "$m") || n=-1
			((n > msgs)) && fail "$d $m: windows count $n readings, sent $msgs"
			((n == msgs)) && break
			((SECONDS < deadline)) || fail "$d $m: windows count $n readings after 60 s, sent $msgs"
			sleep 0.5
		done
		log "$d $m: $n readings in closed windows, as sent"
	done
done

log "PASS: python (ES256) and go (RS256) devices, $msgs messages and a command each, in ${SECONDS}s"
