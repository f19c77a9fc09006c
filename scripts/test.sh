#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs the test
# dependencies (Debian packages, libchdb, Apache Kafka jars; all cached),
# starts Apache Kafka (KRaft) and Debian's ClickHouse server on loopback, and
# runs
#   1. vet and gofmt,
#   2. every Go test on the embedded Kafka (kfake) and chDB,
#   3. the Kafka-facing suites again against Apache Kafka,
#   4. the Grafana plugin: frontend typecheck, jest and build, backend
#      executables, and the backend's gRPC tests against a running iotpipe,
#   5. the device samples (examples/) against a running iotpipe,
#   6. the fuzzers for a bounded time.
# Nothing is skipped: IOTPIPE_REQUIRE_ALL=1 turns every "dependency missing"
# skip into a failure.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export IOTPIPE_CACHE=${IOTPIPE_CACHE:-$HOME/.cache/iotpipe}
export IOTPIPE_REQUIRE_ALL=1
fuzztime=${IOTPIPE_FUZZTIME:-10s}

log() { echo "== test.sh: $*" >&2; }

# Debian packages: real MQTT clients and the ClickHouse server for the
# clickhouse-go adapter test.
apt_pkgs=()
command -v mosquitto_pub >/dev/null || apt_pkgs+=(mosquitto-clients)
command -v openssl >/dev/null || apt_pkgs+=(openssl) # device samples make their keys with it
command -v clickhouse-server >/dev/null || command -v clickhouse >/dev/null || apt_pkgs+=(clickhouse-server)
if ((${#apt_pkgs[@]})); then
	log "installing ${apt_pkgs[*]}"
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi

CHDB_LIB_PATH=$(scripts/chdb.sh)
export CHDB_LIB_PATH

cleanup() {
	scripts/kafka.sh stop >/dev/null 2>&1 || true
	scripts/clickhouse-server.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

log "starting Apache Kafka and ClickHouse server"
kafka_addr=$(scripts/kafka.sh start | tail -n1)
CLICKHOUSE_ADDR=$(scripts/clickhouse-server.sh start | tail -n1)
export CLICKHOUSE_ADDR

log "vet and gofmt"
go vet ./...
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt needed:" >&2
	echo "$unformatted" >&2
	exit 1
fi

log "go test (embedded Kafka: kfake; storage: chDB; adapter: clickhouse-server at $CLICKHOUSE_ADDR)"
go test -count=1 -timeout 20m ./...

log "go test against Apache Kafka at $kafka_addr"
IOTPIPE_KAFKA_BROKERS=$kafka_addr go test -count=1 -timeout 20m $(go list ./... | grep -E '/(registry|devicestate|downlink|ingest|broker|processor|api|cmd/iotpipe)$')

log "Grafana plugin: build (npm ci from cache, webpack, backend executables)"
scripts/build-plugin.sh
for f in module.js plugin.json gpx_iotpipe_linux_amd64 gpx_iotpipe_linux_arm64 gpx_iotpipe_darwin_amd64 gpx_iotpipe_darwin_arm64; do
	[ -s "grafana-plugin/dist/$f" ] || { echo "grafana-plugin/dist/$f missing after the build" >&2; exit 1; }
done
log "Grafana plugin: frontend typecheck and unit tests"
(cd grafana-plugin && npm run --silent typecheck && npm test --silent)
log "Grafana plugin: backend vet and tests (the built executable over gRPC against a running iotpipe)"
# ./pkg/... only: node_modules may hold stray .go files.
(cd grafana-plugin && go vet ./pkg/... && go test -count=1 -timeout 15m ./pkg/...)

log "device samples (examples/): Python ES256 and Go RS256 devices against a running iotpipe"
scripts/examples.sh

log "fuzzing, $fuzztime per target"
# Go 1.26's fuzz coordinator can fail a target with a bare "context deadline
# exceeded" when -fuzztime ends while a worker is mid-input (golang/go#75804,
# fixed in Go 1.27). A real failure writes its input to testdata/fuzz/<target>;
# a run that failed only with that message and wrote nothing is run once more.
inputs() { if [ -d "$1" ]; then find "$1" -type f | wc -l; else echo 0; fi; }
fuzz_one() { # $1: module dir, $2: package, $3: package dir, $4: target
	local corpus="$3/testdata/fuzz/$4" before out
	before=$(inputs "$corpus")
	if out=$(cd "$1" && go test -run '^$' -fuzz "^$4\$" -fuzztime "$fuzztime" "$2" 2>&1); then
		echo "$out" | tail -3
		return 0
	fi
	echo "$out"
	if echo "$out" | grep -q '^    context deadline exceeded$' && [ "$(inputs "$corpus")" = "$before" ]; then
		log "$4: the fuzz coordinator's deadline race (golang/go#75804), no failing input written; running it again"
		(cd "$1" && go test -run '^$' -fuzz "^$4\$" -fuzztime "$fuzztime" "$2")
		return
	fi
	return 1
}
fuzz_module() { # $1: module dir, $2: package pattern
	local pkg dir fz
	for pkg in $(cd "$1" && go list "$2"); do
		dir=$(cd "$1" && go list -f '{{.Dir}}' "$pkg")
		for fz in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
			fuzz_one "$1" "$pkg" "$dir" "$fz"
		done
	done
}
fuzz_module . ./...
fuzz_module grafana-plugin ./pkg/...
log "all tests passed"
