#!/usr/bin/env bash
# Builds the OpenTelemetry Collector the end-to-end test runs (tests/collector.rs) into
# target/collector/otelcol-evalstream: scripts/collector/main.go with the components
# deploy/collector/gateway.yaml uses (the OTLP receiver, the Kafka exporter and receiver, the
# OTLP/HTTP exporter) and the debug exporter, to look at what passes, and nothing else, at the versions scripts/collector/go.mod and go.sum pin
# (collector v0.165.0 / v1.71.0, contrib v0.165.1). Needs Go 1.26+. Modules come from the Go module
# proxy into Go's default module cache; the first build takes a few minutes on two cores, later
# runs print nothing: the build is skipped while the binary exists and go.mod, go.sum, main.go and
# the Go version are those of the stamp beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
src=scripts/collector
out=target/collector
binary=$out/otelcol-evalstream
stamp=$out/built-from

command -v go >/dev/null 2>&1 || { echo "install-collector: \`go\` is needed (Go 1.26 or newer)" >&2; exit 1; }
wanted=$( (cat "$src/go.mod" "$src/go.sum" "$src/main.go"; go env GOVERSION) | sha256sum | cut -d' ' -f1)
if [ -x "$binary" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi
echo "building the OpenTelemetry Collector into $binary (Go module proxy, once per machine)" >&2
started=$(date +%s)
mkdir -p "$out"
rm -f "$stamp"
# go.sum is committed and the build reads it as is (-mod=readonly): no module changes silently;
# -buildvcs=false: no version-control stamp (the binary is built from a subfolder of the repository).
# GOTOOLCHAIN=local: build with this machine's Go rather than fetching another toolchain.
# Go's output (a line per module downloaded) goes to a log, shown when the build fails.
log=$out/build.log
if ! (cd "$src" && GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false" nice go build -trimpath -ldflags='-s -w' -o "$root/$binary.tmp" .) >"$log" 2>&1; then
  cat "$log" >&2
  echo "install-collector: the build failed (log: $log)" >&2
  exit 1
fi
mv "$binary.tmp" "$binary"
echo "$wanted" >"$stamp"
echo "collector built in $(( $(date +%s) - started )) s: $("$binary" --version)" >&2
