#!/usr/bin/env bash
# End-to-end benchmark of `evalstream run` against a local tansu broker.
#
#   scripts/bench-e2e.sh [TRACES]     (default 20000)
#
# Produces TRACES corpus-shaped traces (one per message, keyed by trace id) into a fresh topic,
# then runs the release worker twice on that topic in separate consumer groups: once with the
# default evaluators producing evaluator spans, once as a consume-only floor (an evaluator that
# selects no span, so every message is consumed and decoded and nothing is evaluated). Prints
# spans/s, evaluations/s and peak RSS of each run.
set -euo pipefail
cd "$(dirname "$0")/.."
traces="${1:-20000}"
scripts/install-tansu.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo build --release -q -p evalstream
bin=target/release/evalstream

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d)
tansu broker --storage-engine memory://tansu/ --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" >"$work/tansu.log" 2>&1 &
broker_pid=$!
trap 'kill $broker_pid 2>/dev/null; kill $worker_pid 2>/dev/null || true' EXIT
worker_pid=
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
for t in bench_in bench_out bench_dlq; do
  tansu topic create --broker "tcp://127.0.0.1:$port" "$t" --partitions 4 >/dev/null
done
$bin loadgen --brokers "127.0.0.1:$port" --topic bench_in --traces "$traces"

metric() { curl -s "127.0.0.1:$metrics_port/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }

run() { # name, evaluators yaml, exporter yaml
  cat >"$work/$1.yaml" <<YAML
receivers:
  kafka:
    brokers: ["127.0.0.1:$port"]
    topics: [bench_in]
    group_id: bench_$1_$$
    initial_offset: earliest
    dead_letter_topic: bench_dlq
    client: { fetch.wait.max.ms: "5", session.timeout.ms: "6000", max.poll.interval.ms: "10000" }
$2
$3
telemetry:
  metrics: { listen: "127.0.0.1:$metrics_port" }
YAML
  EVALSTREAM_LOG=warn $bin run --config "$work/$1.yaml" 2>"$work/$1.log" &
  worker_pid=$!
  local first="" start end idle=0 last_consumed="" last_change=""
  while :; do
    consumed=$(metric evalstream_messages_consumed_total); consumed=${consumed:-0}
    if [ -z "$first" ] && [ "${consumed%.*}" -gt 0 ]; then first=$(date +%s.%N); start_count=$consumed; fi
    if [ "${consumed%.*}" -ge "$traces" ]; then
      # Wait for the last outputs to be acknowledged.
      while [ "$(metric evalstream_in_flight_messages)" != "0" ]; do sleep 0.01; done
      end=$(date +%s.%N); break
    fi
    # tansu can skip records (see README): then the count never reaches $traces. Stop once the
    # worker is idle, counting from its last progress.
    if [ -n "$first" ] && [ "$consumed" = "${last_consumed:-}" ] && [ "$(metric evalstream_in_flight_messages)" = "0" ]; then
      idle=$((idle + 1))
      if [ "$idle" -ge 100 ]; then end=$last_change; break; fi
    else
      idle=0; last_consumed=$consumed; last_change=$(date +%s.%N)
    fi
    sleep 0.01
  done
  spans=$(metric evalstream_spans_consumed_total)
  gaps=$(metric evalstream_input_offset_gaps_total)
  [ "${gaps:-0}" = "0" ] || echo "note: $1 saw $gaps input offset gap(s): the broker skipped records" >&2
  evals=$(curl -s "127.0.0.1:$metrics_port/metrics" | awk '/^evalstream_evaluations_total/ { s += $2 } END { print s+0 }')
  rss=$(awk '/VmHWM/ { print $2/1024 " MiB" }' "/proc/$worker_pid/status")
  kill -TERM $worker_pid; wait $worker_pid || true
  python3 - "$1" "$first" "$end" "$start_count" "$traces" "$spans" "$evals" "$rss" <<'PY'
import sys
name, first, end, start_count, traces, spans, evals, rss = sys.argv[1:]
t = float(end) - float(first)
per_msg = float(spans) / float(traces)
msgs = float(traces) - float(start_count)
print(f"{name:14} {msgs/t:10.0f} msg/s {msgs*per_msg/t:10.0f} spans/s {float(evals)/float(spans)*msgs*per_msg/t:10.0f} evaluations/s  peak RSS {rss}")
PY
}

echo "worker on $(nproc) cores, $traces traces, tansu on 127.0.0.1:$port"
run evaluate "" "exporters: { kafka: { brokers: [\"127.0.0.1:$port\"], topic: bench_out } }"
run consume_only "evaluators: [ { type: latency, select: { kinds: [guardrail] } } ]" ""
