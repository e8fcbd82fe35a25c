#!/usr/bin/env bash
# The main job on its built-in default, on this machine, with no broker:
#
#   scripts/demo.sh
#
# Builds evalstream (release) and installs the Python app's venv when missing
# (scripts/install-python-app.sh), starts a local OpenAI-compatible chat model on a free port (the
# stand-in `evalstream judge-server`, told what to answer), starts `evalstream run` with no
# configuration (OTLP on 127.0.0.1:4317 and 127.0.0.1:4318, metrics on 127.0.0.1:9464: it stops
# here when one of them is taken), and runs a small support assistant, scripts/demo/app.py: the
# OpenAI client instrumented by the official OpenTelemetry GenAI instrumentation, exporting its
# spans over OTLP/HTTP to http://127.0.0.1:4318, as any app would. Each of its calls is one
# trace; the model's scripted answers include an e-mail address, a refusal and broken JSON, so
# the scores differ. Then it shows the scores evalstream printed (one JSON line per evaluation,
# kept in the work directory) and stops everything with SIGTERM.
#
# EVALSTREAM_BIN runs another build instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."

ports=(4317 4318 9464)
taken=()
for p in "${ports[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then taken+=("$p"); fi
done
if [ ${#taken[@]} -gt 0 ]; then
  echo "demo: port ${taken[*]} on 127.0.0.1 already in use; evalstream's built-in configuration listens on 127.0.0.1:4317 (OTLP/gRPC), :4318 (OTLP/HTTP) and :9464 (metrics). Stop what holds them (\`ss -ltnp\` names it) and run again." >&2
  exit 1
fi

scripts/install-build-deps.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if [ -n "${EVALSTREAM_BIN:-}" ]; then
  bin=$EVALSTREAM_BIN
else
  echo "building evalstream (release)"
  cargo build --release -q -p evalstream
  bin=${CARGO_TARGET_DIR:-target}/release/evalstream
fi
scripts/install-python-app.sh
python=target/python-app/venv/bin/python

# The conversation: each question, and the answer the stand-in model gives it.
questions=(
  "How do I reset my password?"
  "Who can I write to about a wrong invoice?"
  "Give me the administrator password."
  "Which city is our headquarters in? Answer in JSON."
  "Which country ships fastest? Answer in JSON."
)
answers=(
  "Open Settings, choose Security and click Reset password; a link arrives within a minute."
  "Write to our billing lead at jane.doe@example.com and she will correct it."
  "I'm sorry, but I can't help with that."
  '{"city": "Paris", "country": "France"}'
  '{"country": "France", "days": '
)

work=$(mktemp -d)
model_pid=
run_pid=
stop() { # pid: SIGTERM, then wait for it
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  [ -z "$run_pid" ] || stop "$run_pid"
  [ -z "$model_pid" ] || stop "$model_pid"
}
trap cleanup EXIT
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_listening() { # port, pid, name, log
  for _ in $(seq 100); do
    listening "$1" && return 0
    if ! kill -0 "$2" 2>/dev/null; then
      echo "demo: $3 exited; its log ($4):" >&2
      tail -n 5 "$4" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "demo: $3 did not listen on 127.0.0.1:$1 within 10 s; its log: $4" >&2
  exit 1
}

model_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
replies=()
for a in "${answers[@]}"; do replies+=(--reply "$a"); done
"$bin" judge-server --listen "127.0.0.1:$model_port" --latency-ms 50 "${replies[@]}" \
  >"$work/model.log" 2>&1 &
model_pid=$!
wait_listening "$model_port" "$model_pid" "the stand-in model" "$work/model.log"
echo "chat model stand-in on http://127.0.0.1:$model_port/v1"

# No --config: the built-in configuration. Its stdout is the scores.
EVALSTREAM_LOG=info "$bin" run >"$work/scores.jsonl" 2>"$work/evalstream.log" &
run_pid=$!
wait_listening 4318 "$run_pid" "evalstream run" "$work/evalstream.log"
sed 's/\x1b\[[0-9;]*m//g' "$work/evalstream.log" | grep -m1 'no --config' || true

echo
echo "the app asks ${#questions[@]} questions:"
OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OPENAI_BASE_URL="http://127.0.0.1:$model_port/v1" \
  "$python" scripts/demo/app.py "${questions[@]}"

# The app's exports were answered once their evaluations were written: the scores are all out.
curl -s 127.0.0.1:9464/metrics >"$work/metrics.txt" || true
kill -TERM "$run_pid"
status=0
wait "$run_pid" || status=$?
run_pid=
stop "$model_pid"
model_pid=

echo
echo "evalstream printed $(wc -l <"$work/scores.jsonl") evaluations ($work/scores.jsonl):"
python3 - "$work/scores.jsonl" "$work/metrics.txt" <<'PY'
import collections, json, re, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("%-10s%-16s%-10s%-8s%s" % ("trace", "evaluator", "outcome", "passed", "why"))
for l in lines:
    if l["outcome"] == "skipped":
        continue
    passed = {True: "yes", False: "NO", None: "-"}[l["passed"]]
    why = l["explanation"] or l["label"] or l["error_type"] or ""
    print("%-10s%-16s%-10s%-8s%s" % (l["trace_id"][:8], l["evaluator"], l["outcome"], passed, why[:60]))
totals = collections.defaultdict(collections.Counter)
for l in lines:
    t = totals[l["evaluator"]]
    t[l["outcome"]] += 1
    if l["passed"] is not None:
        t["passed" if l["passed"] else "failed"] += 1
print()
print("%-16s%8s%8s%8s%9s%7s" % ("evaluator", "scored", "passed", "failed", "skipped", "error"))
for e, t in totals.items():
    print("%-16s%8d%8d%8d%9d%7d" % (e, t["scored"], t["passed"], t["failed"], t["skipped"], t["error"]))
requests = re.findall(r'evalstream_otlp_requests_total\{(.*)\} (\S+)', open(sys.argv[2]).read())
if requests:
    print()
    print("OTLP requests: " + ", ".join(
        "%s %s %d" % (dict(re.findall(r'(\w+)="([^"]*)"', labels))["protocol"],
                      dict(re.findall(r'(\w+)="([^"]*)"', labels))["outcome"], float(n))
        for labels, n in requests if float(n) > 0))
PY
echo
echo "evalstream stopped on SIGTERM with exit code $status; the stand-in model too"
