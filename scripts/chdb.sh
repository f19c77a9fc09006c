#!/usr/bin/env bash
# Installs libchdb.so (the ClickHouse engine as a shared library, used by the
# embedded storage engine) from the npm package @chdb/lib-linux-x64-gnu into a
# versioned cache dir, and prints its absolute path as the last stdout line:
#
#   export CHDB_LIB_PATH=$(scripts/chdb.sh)
#
# Idempotent: a second run finds the library and returns at once.
# Everything but the final path goes to stderr.
set -euo pipefail

CHDB_VERSION="${CHDB_VERSION:-26.5.3}"
PKG="@chdb/lib-linux-x64-gnu"
CACHE_ROOT="${IOTPIPE_CACHE:-$HOME/.cache/iotpipe}"
DEST="$CACHE_ROOT/chdb/$CHDB_VERSION"
LIB="$DEST/libchdb.so"

log() { echo "chdb.sh: $*" >&2; }

if [[ -s "$LIB" ]]; then
	log "libchdb $CHDB_VERSION already installed"
	echo "$LIB"
	exit 0
fi

case "$(uname -s)-$(uname -m)" in
Linux-x86_64) ;;
*)
	log "only linux x86_64 is packaged as $PKG; build or install libchdb yourself and set CHDB_LIB_PATH"
	exit 1
	;;
esac

command -v npm >/dev/null || {
	log "npm is required (apt-get install -y npm)"
	exit 1
}

mkdir -p "$DEST"
tmp="$(mktemp -d "$DEST/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

log "fetching $PKG@$CHDB_VERSION (~170 MB) ..."
(cd "$tmp" && npm pack --silent "$PKG@$CHDB_VERSION" >&2)
tarball="$(ls "$tmp"/*.tgz)"
tar -xzf "$tarball" -C "$tmp" package/libchdb.so
# Rename into place last so an interrupted run never leaves a partial library
# that the fast path above would accept.
mv "$tmp/package/libchdb.so" "$LIB.partial"
mv "$LIB.partial" "$LIB"
log "installed $LIB"
echo "$LIB"
