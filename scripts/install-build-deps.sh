#!/usr/bin/env bash
# Installs what building evalstream needs besides Rust, when it is missing, from Debian's
# packages: the OpenSSL headers (librdkafka is built with the system's OpenSSL for TLS and SASL
# SCRAM/OAUTHBEARER) and pkg-config, which finds them. Needs root (CI runs as root) or sudo.
set -euo pipefail
if pkg-config --exists openssl 2>/dev/null; then
  exit 0
fi
echo "installing libssl-dev and pkg-config from Debian's packages" >&2
run() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
export DEBIAN_FRONTEND=noninteractive
run apt-get update -qq
run apt-get install -y -qq --no-install-recommends libssl-dev pkg-config >/dev/null
