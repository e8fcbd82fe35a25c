#!/usr/bin/env bash
# Installs tansu, the Kafka-compatible broker the integration tests start, when it is missing.
# It builds from crates.io (about 10-25 minutes on 2 cores) into ~/.cargo/bin, once per machine.
# `dynostore` is the feature that enables the `memory://` storage the tests use.
set -euo pipefail
version=0.6.0
bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$version"; then
  exit 0
fi
if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q "$version"; then
  exit 0
fi
echo "installing tansu $version (one-time, ~10-25 minutes)" >&2
cargo install --locked tansu --version "$version" --features dynostore
