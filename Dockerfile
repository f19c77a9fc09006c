# syntax=docker/dockerfile:1
#
# iotpipe images. Targets:
#   runtime (default, last stage)  the iotpipe binary on debian:bookworm-slim, non-root, /data volume
#   plugin                         the built Grafana plugin (frontend + backend for linux amd64/arm64) in /dist;
#                                  its default command copies /dist into /plugin (a volume Grafana mounts)
#
#   docker build -t iotpipe .
#   docker build --target plugin -t iotpipe-grafana-plugin .

ARG GO_IMAGE=golang:1.26-bookworm
ARG NODE_IMAGE=node:20-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- iotpipe, without cgo. chDB (libchdb.so) is loaded at run time only for the
# embedded storage engine; against a ClickHouse server it is never opened, so the
# image does not carry it. Note: purego (the chDB binding) makes even a CGO_ENABLED=0
# binary link dynamically against glibc (libc, libdl, libpthread; it needs dlopen), so
# the runtime image must be glibc-based: debian slim or distroless/base, not alpine,
# distroless/static or scratch.
FROM --platform=$BUILDPLATFORM ${GO_IMAGE} AS build
# Set by BuildKit from --platform (empty with the legacy builder: the host's).
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=docker
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/iotpipe ./cmd/iotpipe

# ---- Grafana plugin frontend (grafana-plugin/, webpack) into dist/.
FROM --platform=$BUILDPLATFORM ${NODE_IMAGE} AS plugin-frontend
WORKDIR /src/grafana-plugin
COPY grafana-plugin/package.json grafana-plugin/package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
COPY grafana-plugin/ ./
RUN npm run build

# ---- Grafana plugin backend (grafana-plugin/pkg, its own Go module): the executables
# Grafana starts, gpx_iotpipe_<os>_<arch>, for both Linux architectures so one plugin
# image serves amd64 and arm64 Grafana.
FROM --platform=$BUILDPLATFORM ${GO_IMAGE} AS plugin-backend
WORKDIR /src/grafana-plugin
COPY grafana-plugin/go.mod grafana-plugin/go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY grafana-plugin/ ./
ENV CGO_ENABLED=0 GOOS=linux
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOARCH=amd64 go build -trimpath -ldflags "-s -w" -o /out/gpx_iotpipe_linux_amd64 ./pkg \
    && GOARCH=arm64 go build -trimpath -ldflags "-s -w" -o /out/gpx_iotpipe_linux_arm64 ./pkg

# ---- plugin: the assembled dist. `docker compose` runs it once to fill the plugin volume.
FROM ${RUNTIME_IMAGE} AS plugin
COPY --from=plugin-frontend /src/grafana-plugin/dist/ /dist/
COPY --from=plugin-backend /out/ /dist/
RUN chmod -R a+rX /dist && chmod a+x /dist/gpx_iotpipe_linux_*
# Replace the volume's content, so a rebuilt plugin never mixes with an old one.
CMD ["sh", "-c", "set -e; mkdir -p /plugin; find /plugin -mindepth 1 -delete; cp -R /dist/. /plugin/; echo \"plugin copied:\"; ls -l /plugin"]

# ---- runtime: iotpipe, non-root, data under /data; glibc-based (see the build stage).
# Compose does the health checks (curl is here for them: GET /readyz).
FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 iotpipe \
    && useradd --system --uid 10001 --gid iotpipe --home-dir /data --no-create-home --shell /usr/sbin/nologin iotpipe \
    && mkdir -p /data && chown iotpipe:iotpipe /data && chmod 0750 /data
COPY --from=build /out/iotpipe /usr/local/bin/iotpipe
USER 10001:10001
WORKDIR /data
# --data-dir of every subcommand (admin token, embedded engines when used).
ENV IOTPIPE_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 1883 8080
ENTRYPOINT ["iotpipe"]
CMD ["run"]
