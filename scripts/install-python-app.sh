#!/usr/bin/env bash
# Installs the Python programs of the tests and the demo into a virtual environment,
# target/python-app/venv, with the versions tests/collector/requirements.txt pins (from PyPI, once
# per machine; pip's cache is used): the collector end-to-end test's app (tests/collector/app.py:
# the OpenAI client instrumented by the official OTel GenAI instrumentation, exporting OTLP), the
# demo's app (scripts/demo/app.py, the same), and the OTLP test's sender (tests/otlp/send_corpus.py:
# the SDK's own OTLP/gRPC and OTLP/HTTP exporters). Needs Python 3.11+ with venv. Prints nothing
# when the environment exists and was made from the same requirements and Python; a changed
# requirements file makes it install again.
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=tests/collector/requirements.txt
dir=target/python-app
venv=$dir/venv
stamp=$dir/installed-from

python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 || { echo "install-python-app: \`$python\` is needed (Python 3.11+)" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "install-python-app: Python 3.11 or newer is needed, $python is $("$python" --version 2>&1)" >&2; exit 1; }
wanted=$( (cat "$requirements"; "$python" --version 2>&1) | sha256sum | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi
echo "installing the tests' and the demo's Python programs into $venv (PyPI, once per machine)" >&2
started=$(date +%s)
rm -rf "$venv" "$stamp"
mkdir -p "$dir"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
"$venv/bin/python" -m pip check >/dev/null
echo "$wanted" >"$stamp"
echo "Python programs installed in $(( $(date +%s) - started )) s: $("$venv/bin/python" -m pip list --disable-pip-version-check --format=freeze | wc -l) packages" >&2
