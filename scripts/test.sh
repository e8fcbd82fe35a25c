#!/usr/bin/env bash
# The project's test command: installs Apache Kafka (the test broker) and Prometheus if missing, checks and
# unit-tests the alert rules with promtool, then formatting, lints and every test of the workspace
# (unit, corpus, command-line, property, Kafka and Prometheus integration tests, and doc
# examples), then the tests of every Rhai scorer in scripts/scorers, then the fuzz targets for
# FUZZ_SECONDS each (default 60; 0 builds them and replays their regressions only, see
# scripts/fuzz.sh). `.ci/run` calls this script.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in rustfmt clippy-driver; do
  command -v "$tool" >/dev/null 2>&1 || rustup component add "${tool%-driver}"
done

scripts/install-build-deps.sh
scripts/install-kafka.sh
scripts/install-prometheus.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

echo "== alert rules (promtool check and unit tests)"
(cd deploy/prometheus && promtool check config prometheus.yaml && promtool test rules evalstream.rules.test.yaml)

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== script tests (scripts/scorers/*.rhai)"
cargo run -q --locked -p evalstream -- script test scripts/scorers/*.rhai
echo "== fuzz (${FUZZ_SECONDS:-60} s per target)"
scripts/fuzz.sh
