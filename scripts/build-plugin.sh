#!/usr/bin/env bash
# Builds the Grafana plugin into grafana-plugin/dist/: the frontend (npm,
# webpack: module.js, plugin.json, img/) and the backend executables Grafana
# starts (gpx_iotpipe_<os>_<arch>). Mount or copy dist/ as
# <grafana plugins dir>/iotpipe-iotpipe-datasource.
#
# node_modules is installed with `npm ci` from npm's cache under
# $IOTPIPE_CACHE/npm (default ~/.cache/iotpipe/npm) and reused while
# package-lock.json is unchanged.
#
# Environment (optional):
#   IOTPIPE_PLUGIN_TARGETS  space separated GOOS/GOARCH (default: linux/amd64 linux/arm64 darwin/amd64 darwin/arm64)
#   IOTPIPE_PLUGIN_SKIP_FRONTEND=1  only (re)build the backend executables
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
plugin=$root/grafana-plugin
cache=${IOTPIPE_CACHE:-$HOME/.cache/iotpipe}
targets=${IOTPIPE_PLUGIN_TARGETS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64}

log() { echo "build-plugin.sh: $*" >&2; }

# npm_install runs `npm ci` unless node_modules was installed from this very
# package-lock.json (a stamp holds its hash): a second build skips the ~1 min
# extraction.
npm_install() {
	command -v npm >/dev/null || { log "npm not found (install Node.js 20 and npm)"; return 1; }
	local want stamp=$plugin/node_modules/.iotpipe-lock-sha256
	want=$(sha256sum "$plugin/package-lock.json" | cut -d' ' -f1)
	if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
		return
	fi
	log "npm ci (cache $cache/npm)"
	(cd "$plugin" && npm ci --cache "$cache/npm" --prefer-offline --no-audit --no-fund --loglevel=error)
	echo "$want" >"$stamp"
}

if [[ ${IOTPIPE_PLUGIN_SKIP_FRONTEND:-} != 1 ]]; then
	npm_install
	log "frontend: npm run build"
	(cd "$plugin" && npm run --silent build)
fi

exe=$(sed -n 's/.*"executable": *"\([^"]*\)".*/\1/p' "$plugin/src/plugin.json")
[[ -n $exe ]] || { log "no \"executable\" in src/plugin.json"; exit 1; }
mkdir -p "$plugin/dist"
for t in $targets; do
	os=${t%/*} arch=${t#*/}
	log "backend: $exe for $os/$arch"
	(cd "$plugin" && CGO_ENABLED=0 GOOS=$os GOARCH=$arch go build -trimpath -ldflags "-s -w" -o "dist/${exe}_${os}_${arch}" ./pkg)
done
log "done: $plugin/dist"
