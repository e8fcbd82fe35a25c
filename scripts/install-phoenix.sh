#!/usr/bin/env bash
# Installs Arize Phoenix, the tracing backend the OTLP exporter's end-to-end test exports to
# (tests/phoenix.rs), into a virtual environment, target/phoenix/venv, with the versions
# tests/phoenix/requirements.txt pins (arize-phoenix 20.26.1 and its 142 dependencies, about
# 850 MB, from PyPI, once per machine; pip's cache is used). Needs Python 3.11 (the pins were
# resolved on it; PYTHON names another interpreter, 3.11 or newer). Prints nothing when the
# environment exists and was made from the same requirements and Python.
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=tests/phoenix/requirements.txt
dir=target/phoenix
venv=$dir/venv
stamp=$dir/installed-from

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || { echo "install-phoenix: \`$python\` is needed (Python 3.11)" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "install-phoenix: Python 3.11 or newer is needed, $python is $("$python" --version 2>&1)" >&2; exit 1; }
wanted=$( (cat "$requirements"; "$python" --version 2>&1) | sha256sum | cut -d' ' -f1)
if [ -x "$venv/bin/phoenix" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi
echo "installing Arize Phoenix into $venv (PyPI, once per machine)" >&2
started=$(date +%s)
rm -rf "$venv" "$stamp"
mkdir -p "$dir"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
"$venv/bin/python" -m pip check >/dev/null
echo "$wanted" >"$stamp"
echo "Phoenix installed in $(( $(date +%s) - started )) s: $("$venv/bin/python" -m pip list --disable-pip-version-check --format=freeze | wc -l) packages" >&2
