#!/usr/bin/env bash
# Detection quality of the drift detectors against river's ADWIN and PageHinkley (default
# settings) on the same seeded synthetic streams, in one run: median delay after a change, changes
# missed within 3,000 samples, false alarms per 100,000 stable samples. See scripts/drift/bench.py.
#
#   scripts/bench-drift.sh [--streams N] [--stable-length N]    (defaults 200 and 100,000)
#
# Installs river (PyPI) into target/river-venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p evalstream
venv=target/river-venv
if ! "$venv/bin/python" -c "import river" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "river==0.26.1"
fi
exec "$venv/bin/python" scripts/drift/bench.py target/release/evalstream "$@"
