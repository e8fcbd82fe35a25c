#!/usr/bin/env bash
# Builds what scripts/check-deploy.sh checks the Helm chart with into target/helm/: helm itself
# (helm.sh/helm/v3 v3.22.0, the go.mod `tool`) and validate-manifests (deploy/helm/validate/: the
# rendered manifests decoded strictly with the Kubernetes API types, the Prometheus Operator's and
# KEDA's), at the versions deploy/helm/validate/go.mod and go.sum pin. Needs Go 1.26+. Modules come
# from the Go module proxy into Go's default module cache; the first build takes a few minutes on
# two cores, later runs print nothing: the build is skipped while both binaries exist and go.mod,
# go.sum, main.go and the Go version are those of the stamp beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
src=deploy/helm/validate
out=target/helm
stamp=$out/built-from

command -v go >/dev/null 2>&1 || { echo "install-helm: \`go\` is needed (Go 1.26 or newer)" >&2; exit 1; }
wanted=$( (cat "$src/go.mod" "$src/go.sum" "$src/main.go"; go env GOVERSION) | sha256sum | cut -d' ' -f1)
if [ -x "$out/helm" ] && [ -x "$out/validate-manifests" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi
echo "building helm and validate-manifests into $out (Go module proxy, once per machine)" >&2
started=$(date +%s)
mkdir -p "$out"
rm -f "$stamp"
# As scripts/install-collector.sh: go.sum read as is (-mod=readonly), no version-control stamp,
# this machine's Go (GOTOOLCHAIN=local); Go's output goes to a log, shown when the build fails.
log=$out/build.log
build() { # output, package
  (cd "$src" && GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false" \
    nice go build -trimpath -ldflags='-s -w' -o "$root/$1.tmp" "$2") >>"$log" 2>&1 && mv "$root/$1.tmp" "$root/$1"
}
: >"$log"
if ! build "$out/helm" helm.sh/helm/v3/cmd/helm || ! build "$out/validate-manifests" .; then
  cat "$log" >&2
  echo "install-helm: the build failed (log: $log)" >&2
  exit 1
fi
echo "$wanted" >"$stamp"
echo "helm and validate-manifests built in $(( $(date +%s) - started )) s: helm $("$out/helm" version --short)" >&2
