#!/usr/bin/env bash
# Runs a single-node Apache Kafka (KRaft, combined broker+controller) on
# 127.0.0.1 for the integration suite, from Maven Central jars only: the
# machines here have Java 17 and Maven but no Kafka distribution or Docker.
#
#   scripts/kafka.sh start    fetch jars (cached), format, start, wait ready; prints the bootstrap address
#   scripts/kafka.sh stop     stop the broker and remove its data
#   scripts/kafka.sh status   exit 0 and print the address if it is serving
#
# Then: IOTPIPE_KAFKA_BROKERS=127.0.0.1:19092 go test ./...
#
# Environment (all optional):
#   IOTPIPE_CACHE         jar cache root (default ~/.cache/iotpipe); jars go to kafka/<version>/lib
#   IOTPIPE_KAFKA_VERSION Kafka version (default: kafka.version in deploy/kafka/pom.xml)
#   IOTPIPE_KAFKA_DIR     work dir for config, data, pid and log (default /tmp/iotpipe-kafka)
#   IOTPIPE_KAFKA_PORT    client port (default 19092); the controller uses port+1
#   IOTPIPE_KAFKA_HEAP    JVM heap (default 512m)
#   IOTPIPE_KAFKA_TIMEOUT seconds to wait for readiness (default 120)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pom="$root/deploy/kafka/pom.xml"
default_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom" | head -n1)
version=${IOTPIPE_KAFKA_VERSION:-$default_version}
cache=${IOTPIPE_CACHE:-$HOME/.cache/iotpipe}/kafka/$version
lib=$cache/lib
work=${IOTPIPE_KAFKA_DIR:-/tmp/iotpipe-kafka}
port=${IOTPIPE_KAFKA_PORT:-19092}
cport=$((port + 1))
heap=${IOTPIPE_KAFKA_HEAP:-512m}
timeout=${IOTPIPE_KAFKA_TIMEOUT:-120}
addr=127.0.0.1:$port
pidfile=$work/kafka.pid
logfile=$work/kafka.out

log() { echo "kafka.sh: $*" >&2; }

# fetch copies the broker's runtime classpath into the version-keyed cache.
# A partial download is staged next to it and renamed, so an interrupted
# fetch never leaves a lib/ that looks complete.
fetch() {
	if [[ -f $lib/.complete ]]; then
		return
	fi
	command -v mvn >/dev/null || { log "mvn not found (apt-get install maven)"; return 1; }
	local stage=$cache/lib.partial
	rm -rf "$stage"
	mkdir -p "$stage"
	log "fetching Apache Kafka $version jars into $lib"
	if ! mvn -q -B -f "$pom" -Dkafka.version="$version" \
		dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$stage" >"$cache/mvn.log" 2>&1; then
		tail -n 40 "$cache/mvn.log" >&2
		log "maven failed (full log: $cache/mvn.log)"
		return 1
	fi
	touch "$stage/.complete"
	rm -rf "$lib"
	mv "$stage" "$lib"
}

running() {
	[[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# port_open succeeds when something accepts TCP on the client port (bash's
# /dev/tcp, so no nc/ss is needed on a fresh machine).
port_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

# serving succeeds when the client port accepts connections and the broker
# logged that it finished starting (which in KRaft mode comes after it caught
# up with the metadata log and registered, so metadata requests list it).
# Grepping the log keeps a fresh machine free of extra tools; the Go test
# helper (internal/testkafka) still retries metadata for topic propagation.
serving() {
	port_open || return 1
	grep -qs "Kafka Server started" "$work/logs/server.log" "$logfile"
}

write_config() {
	mkdir -p "$work/data" "$work/logs"
	touch "$work/.iotpipe-kafka"
	cat >"$work/server.properties" <<EOF
# Written by scripts/kafka.sh: single node, combined broker+controller, loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$work/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests join groups right away; the default 3 s delay only slows them.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
# Compaction soon enough to observe in a test run.
log.cleaner.backoff.ms=1000
EOF
	cat >"$work/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $work/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
EOF
}

start() {
	if running; then
		if serving; then
			echo "$addr"
			return
		fi
		log "pid $(cat "$pidfile") is running but not serving; restarting"
		stop
	fi
	command -v java >/dev/null || { log "java not found (apt-get install openjdk-17-jre-headless)"; return 1; }
	fetch
	if port_open; then
		log "port $port is already taken by another process"
		return 1
	fi
	# Fresh storage every start: the suite wants an empty cluster and this
	# keeps start idempotent after a crash.
	if [[ -e $work && ! -f $work/.iotpipe-kafka ]]; then
		log "$work exists and was not made by this script; set IOTPIPE_KAFKA_DIR elsewhere"
		return 1
	fi
	clean
	write_config
	local jvm=(-Djava.awt.headless=true
		"-Dlog4j2.configurationFile=$work/log4j2.properties" "-Dkafka.logs.dir=$work/logs")
	# A cluster id is a base64url UUID (22 characters); making it here saves
	# a JVM start of `StorageTool random-uuid` (~4 s on a 2-core machine).
	# Like Kafka's own Uuid.randomUuid, reject ids starting with '-': the
	# formatter's argument parser would read one as an option (1 run in 64).
	local cluster_id=-
	while [[ $cluster_id == -* ]]; do
		cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)
	done
	# The formatter is short-lived: the C1 compiler and serial GC start faster.
	if ! java -cp "$lib/*" "${jvm[@]}" -XX:TieredStopAtLevel=1 -XX:+UseSerialGC kafka.tools.StorageTool format --standalone \
		-t "$cluster_id" -c "$work/server.properties" >>"$logfile" 2>&1; then
		tail -n 40 "$logfile" >&2
		log "formatting storage failed"
		return 1
	fi
	# setsid: the broker survives the shell (and its job control) that started it.
	setsid java -cp "$lib/*" "${jvm[@]}" -Xms128m "-Xmx$heap" -XX:+UseG1GC kafka.Kafka "$work/server.properties" >>"$logfile" 2>&1 </dev/null &
	echo $! >"$pidfile"
	local deadline=$((SECONDS + timeout))
	until serving; do
		if ! running; then
			log "broker exited during start-up; last log lines:"
			tail -n 60 "$logfile" "$work/logs/server.log" 2>/dev/null >&2 || true
			return 1
		fi
		if ((SECONDS >= deadline)); then
			log "broker not ready after ${timeout}s; last log lines:"
			tail -n 60 "$logfile" "$work/logs/server.log" 2>/dev/null >&2 || true
			stop
			return 1
		fi
		sleep 0.5
	done
	log "Apache Kafka $version ready (pid $(cat "$pidfile"), logs $work/logs)"
	echo "$addr"
}

stop() {
	if [[ -f $pidfile ]]; then
		local pid
		pid=$(cat "$pidfile")
		if kill -0 "$pid" 2>/dev/null; then
			kill "$pid" 2>/dev/null || true
			# A controlled shutdown takes a few seconds; then insist.
			for _ in $(seq 1 60); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.5
			done
			kill -9 "$pid" 2>/dev/null || true
		fi
	fi
	clean
}

# clean removes the work dir, but only one this script made (it holds our
# marker), so a mistyped IOTPIPE_KAFKA_DIR cannot wipe anything else.
clean() {
	if [[ -f $work/.iotpipe-kafka ]]; then
		rm -rf "$work"
	fi
}

status() {
	if running && serving; then
		echo "$addr"
		return 0
	fi
	log "not running"
	return 1
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
*)
	echo "usage: $0 start|stop|status" >&2
	exit 2
	;;
esac
