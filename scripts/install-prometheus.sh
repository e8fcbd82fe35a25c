#!/usr/bin/env bash
# Installs Prometheus 2.42 (with promtool) from Debian's packages when it is missing: the alert
# rules are checked and unit-tested with promtool, and the drift end-to-end test starts a real
# Prometheus scraping the worker. Needs root (CI runs as root) or sudo.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
echo "installing prometheus from Debian's packages" >&2
run() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
export DEBIAN_FRONTEND=noninteractive
run apt-get update -qq
# The package's service is not started here: the tests start their own Prometheus.
run apt-get install -y -qq --no-install-recommends prometheus >/dev/null
