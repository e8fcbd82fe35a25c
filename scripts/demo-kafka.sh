#!/usr/bin/env bash
# The streaming path behind a broker on this machine, end to end (the main job on its built-in
# default, with no broker, is scripts/demo.sh):
#
#   scripts/demo-kafka.sh [TRACES]      (default 2000)
#
# Installs Apache Kafka if missing (Maven Central, once per machine), builds evalstream, starts
# one Kafka node on free loopback ports, runs `evalstream run` with the default evaluators behind topic `otlp_spans`, feeds it
# TRACES corpus-shaped traces with `evalstream loadgen` (as a collector's Kafka exporter with
# `partition_traces_by_id: true` would), waits until every evaluation is acknowledged, then prints
# the scores per evaluator and the worker's key metrics from its `/metrics` endpoint, and stops
# the worker with SIGTERM (drain, commit, exit 0). Evaluator spans are on topic
# `otlp_evaluations`. Set KEEP=1 to leave broker and worker running for a look around.
set -euo pipefail
cd "$(dirname "$0")/.."
traces="${1:-2000}"
source scripts/lib/local-broker.sh
worker_pid=
cleanup() {
  [ "${KEEP:-}" = 1 ] && return
  [ -z "$worker_pid" ] || kill "$worker_pid" 2>/dev/null || true
  kafka_stop
}
trap cleanup EXIT
create_topics 4 otlp_spans otlp_evaluations
create_topics 1 otlp_spans_dlq
echo "Kafka on 127.0.0.1:$port; topics otlp_spans, otlp_evaluations, otlp_spans_dlq"

cat >"$work/evalstream.yaml" <<YAML
receivers:
  kafka:
    brokers: ["127.0.0.1:$port"]
    topics: [otlp_spans]
    group_id: evalstream
    encoding: otlp_proto
    initial_offset: earliest
# No evaluators section: the default set (refusal, pii, json_valid, finish_reason, empty_output, cost).
exporters:
  kafka:
    brokers: ["127.0.0.1:$port"]
    output: [spans]
    traces: { topic: otlp_evaluations }
telemetry:
  metrics: { listen: "127.0.0.1:$metrics_port", segments: [model] }
YAML
echo "config: $work/evalstream.yaml"
EVALSTREAM_LOG=info $bin run --config "$work/evalstream.yaml" 2>"$work/worker.log" &
worker_pid=$!
metrics() { curl -s "127.0.0.1:$metrics_port/metrics"; }
metric() { metrics | awk -v n="$1" '$1 == n { print $2 }'; }
for _ in $(seq 100); do metric evalstream_up | grep -q . && break; sleep 0.1; done
echo "worker pid $worker_pid, metrics on http://127.0.0.1:$metrics_port/metrics, log $work/worker.log"

$bin loadgen --brokers "127.0.0.1:$port" --topic otlp_spans --traces "$traces"
deadline=$((SECONDS + 120))
until [ "$(metric evalstream_messages_consumed_total)" = "$traces" ] && [ "$(metric evalstream_in_flight_messages)" = "0" ]; do
  if [ $SECONDS -ge $deadline ]; then echo "the worker did not finish; see $work/worker.log" >&2; exit 1; fi
  sleep 0.2
done

metrics >"$work/metrics.txt"
python3 - "$work/metrics.txt" <<'PY'
import collections, re, sys
rows = collections.defaultdict(collections.Counter)
sums, counts, cost, plain = collections.Counter(), collections.Counter(), {}, {}
for line in open(sys.argv[1]):
    m = re.match(r"(\w+)(?:\{(.*)\})? (\S+)$", line.strip())
    if line.startswith("#") or not m:
        continue
    name, value = m.group(1), float(m.group(3))
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
    if name == "evalstream_evaluations_total":
        rows[labels["evaluator"]][labels["outcome"]] += value
    elif name == "evalstream_evaluation_results_total":
        rows[labels["evaluator"]][labels["result"]] += value
    elif name == "evalstream_score_sum":
        sums[labels["evaluator"]] += value
    elif name == "evalstream_score_count":
        counts[labels["evaluator"]] += value
    elif name == "evalstream_span_cost_usd_total":
        cost[labels["model"]] = value
    elif not labels:
        plain[name] = value
print()
print("%-16s%8s%8s%8s%9s%7s%8s" % ("evaluator", "scored", "pass", "fail", "skipped", "error", "mean"))
for e, c in rows.items():
    mean = "%.3f" % (sums[e] / counts[e]) if counts[e] else "-"
    print("%-16s%8d%8d%8d%9d%7d%8s" % (e, c["scored"], c["pass"], c["fail"], c["skipped"], c["error"], mean))
print()
for k in ["evalstream_messages_consumed_total", "evalstream_spans_consumed_total",
          "evalstream_output_records_total", "evalstream_decode_errors_total",
          "evalstream_in_flight_messages"]:
    print("%-44s %d" % (k, plain.get(k, 0)))
for model, usd in sorted(cost.items()):
    print("%-44s %.4f" % ('evalstream_span_cost_usd_total{model="%s"}' % model, usd))
PY
if [ "${KEEP:-}" = 1 ]; then
  echo "left running: broker pid $broker_pid, worker pid $worker_pid"
  exit 0
fi
kill -TERM "$worker_pid"
status=0; wait "$worker_pid" || status=$?
worker_pid=
echo
echo "worker stopped on SIGTERM with exit code $status; its last log lines:"
tail -n 3 "$work/worker.log" | sed 's/\x1b\[[0-9;]*m//g'
