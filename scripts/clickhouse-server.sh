#!/usr/bin/env bash
# Runs a throwaway ClickHouse server (Debian's clickhouse-server package,
# 18.16 on bookworm/trixie) on loopback, non-default ports, with its own
# config and data in a temp dir -- never the system service. For CI:
#
#   export CLICKHOUSE_ADDR=$(scripts/clickhouse-server.sh start)
#   go test ./storage
#   scripts/clickhouse-server.sh stop
#
# start prints the native-protocol address (host:port) as its last stdout
# line; logs go to stderr. CLICKHOUSE_TCP_PORT / CLICKHOUSE_HTTP_PORT override
# the ports; the state dir is ${IOTPIPE_CH_DIR:-/tmp/iotpipe-clickhouse}.
set -euo pipefail

TCP_PORT="${CLICKHOUSE_TCP_PORT:-19000}"
HTTP_PORT="${CLICKHOUSE_HTTP_PORT:-18123}"
DIR="${IOTPIPE_CH_DIR:-/tmp/iotpipe-clickhouse}"
PIDFILE="$DIR/server.pid"

log() { echo "clickhouse-server.sh: $*" >&2; }

find_server() {
	# 18.16 ships clickhouse-server; newer packages only the multi-call binary.
	if command -v clickhouse-server >/dev/null; then
		echo "clickhouse-server"
	elif [[ -x /usr/sbin/clickhouse-server ]]; then
		echo "/usr/sbin/clickhouse-server"
	elif command -v clickhouse >/dev/null; then
		echo "clickhouse server"
	fi
}

install_server() {
	if [[ -n "$(find_server)" ]]; then return; fi
	log "installing clickhouse-server from Debian"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq clickhouse-server clickhouse-client >&2
}

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

http_ok() {
	# The HTTP endpoint answers "Ok." once the server accepts queries.
	{ exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT"; } 2>/dev/null || return 1
	printf 'GET /ping HTTP/1.0\r\n\r\n' >&3
	local reply
	reply="$(timeout 2 cat <&3 || true)"
	exec 3<&- 3>&-
	[[ "$reply" == *"Ok."* ]]
}

start() {
	if running; then
		log "already running (pid $(cat "$PIDFILE"))"
		echo "127.0.0.1:$TCP_PORT"
		return
	fi
	install_server
	rm -rf "$DIR"
	mkdir -p "$DIR/data" "$DIR/tmp" "$DIR/log" "$DIR/user_files"
	cat >"$DIR/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
	cat >"$DIR/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$DIR/log/server.log</log><errorlog>$DIR/log/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>$TCP_PORT</tcp_port>
  <http_port>$HTTP_PORT</http_port>
  <path>$DIR/data/</path>
  <tmp_path>$DIR/tmp/</tmp_path>
  <user_files_path>$DIR/user_files/</user_files_path>
  <users_config>$DIR/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>536870912</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <timezone>UTC</timezone>
</yandex>
XML
	local server
	server="$(find_server)"
	log "starting $server on 127.0.0.1:$TCP_PORT (http $HTTP_PORT), dir $DIR"
	# setsid: own process group, so stop can end it and the caller's shell
	# exiting does not.
	setsid $server --config-file="$DIR/config.xml" >"$DIR/log/stdout.log" 2>&1 </dev/null &
	echo $! >"$PIDFILE"
	local deadline=$((SECONDS + 60))
	until http_ok; do
		if ! running; then
			log "server exited; last log lines:"
			tail -n 30 "$DIR/log/stdout.log" "$DIR/log/error.log" >&2 2>/dev/null || true
			exit 1
		fi
		if ((SECONDS > deadline)); then
			log "server did not answer within 60s"
			stop
			exit 1
		fi
		sleep 0.2
	done
	log "ready"
	echo "127.0.0.1:$TCP_PORT"
}

stop() {
	if ! running; then
		log "not running"
		rm -f "$PIDFILE"
		return
	fi
	local pid
	pid="$(cat "$PIDFILE")"
	kill "$pid"
	for _ in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
	rm -f "$PIDFILE"
	log "stopped"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*)
	echo "usage: $0 start|stop" >&2
	exit 2
	;;
esac
