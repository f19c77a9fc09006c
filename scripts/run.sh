#!/usr/bin/env bash
# Installs what `iotpipe run` needs and starts the whole pipeline on embedded
# defaults (embedded Kafka and ClickHouse engine under ./data):
#
#   scripts/run.sh                 # MQTT :1883, HTTP API :8080
#   scripts/run.sh --help          # every flag of `iotpipe run`
#
# It builds bin/iotpipe, installs libchdb.so (the embedded ClickHouse engine,
# from npm, cached under ~/.cache/iotpipe) and execs `bin/iotpipe run "$@"`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

need() {
	command -v "$1" >/dev/null 2>&1 || { echo "run.sh: $1 is required ($2)" >&2; exit 1; }
}
need go "Go 1.26 or newer, https://go.dev/dl"
need npm "Node.js/npm, used once to fetch libchdb.so"

CHDB_LIB_PATH=${CHDB_LIB_PATH:-$(scripts/chdb.sh)}
export CHDB_LIB_PATH
mkdir -p bin
echo "run.sh: building bin/iotpipe" >&2
go build -o bin/iotpipe ./cmd/iotpipe
exec bin/iotpipe run "$@"
