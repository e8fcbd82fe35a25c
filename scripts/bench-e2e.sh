#!/usr/bin/env bash
# End-to-end benchmark of `evalstream run` against a local Apache Kafka broker, with the Python peer
# (scripts/peer/python_worker.py) on the same broker and topic in the same run.
#
#   scripts/bench-e2e.sh [TRACES]     (default 20000; 0 skips steps 1 and 4)
#
# 1. Produces TRACES corpus-shaped traces (one per message, keyed by trace id) into a topic with 4
#    partitions, then runs the release worker on it twice, in separate consumer groups: with the
#    default evaluators producing evaluator spans, and as a consume-only floor (an evaluator that
#    selects no span, so every message is consumed and decoded and nothing is evaluated). Prints
#    spans/s, evaluations/s and peak RSS of each, and the ratio of the two. A third run adds the
#    trace evaluators (citations, grounding, tool_args, agent_loop) with trace assembly, and one
#    with the events exported exactly once (a Kafka transaction a second with the input offsets).
# 2. Steady load: the worker runs while loadgen produces LAG_RATE traces/s for 10 s; prints the
#    p50/p99 end-to-end lag (span end to evaluations produced) from the worker's histogram.
# 3. The Python peer (refusal, PII and JSON-schema checks, one process, confluent-kafka) consumes
#    PEER_TRACES messages of the same topic; prints its spans/s and evalstream's multiple of it.
#
# 5. OTLP in, no broker: the worker's OTLP gRPC receiver takes OTLP_TRACES traces in requests of
#    512 spans (`evalstream loadgen --otlp`, OTLP_CONCURRENCY requests awaiting their answer, each
#    answered after its evaluations were accepted), runs the default evaluators and exports the
#    events with `otlphttp` (OTLP_COMPRESSION, default gzip as the collector's) to a local counting
#    sink (`evalstream otlp-sink`). Prints spans/s and the CPU seconds of the worker, the sender and
#    the sink apart, and checks the sink got one log record per evaluation.
#
# 4. (between 1 and 2) The default set plus an `llm_judge` on every answer, against the local judge
#    stand-in (`evalstream judge-server`, JUDGE_LATENCY_MS per answer): spans/s of the heuristic
#    scorers while the judge runs, and the judge's calls/s against its bound, JUDGE_SLOTS /
#    latency (256 / 200 ms = 1,280 calls/s).
#
# Environment: LAG_RATE (default 5000; 0 skips step 2), PEER_TRACES (default TRACES up to 20000;
# 0 skips step 3), JUDGE_LATENCY_MS (default 200; 0 skips step 4), JUDGE_SLOTS (256), JUDGE_QUEUE
# (the judge's max_queued: 2560, two seconds of calls at the bound), OUT_CLIENT (extra output-producer properties as YAML flow-map entries, e.g.
# 'linger.ms: "50"'), IN_FLIGHT (the receiver's max_in_flight_messages; default the worker's),
# OTLP_TRACES (default 100000; 0 skips step 5), OTLP_CONCURRENCY (8), OTLP_COMPRESSION (gzip),
# OTLP_RUNS (step 5's runs, each with a fresh worker and sink, default 3: this machine's speed
# drifts between runs by more than many a change, so the step prints each run and their median).
set -euo pipefail
cd "$(dirname "$0")/.."
traces="${1:-20000}"
lag_rate="${LAG_RATE:-5000}"
peer_traces="${PEER_TRACES:-$((traces < 20000 ? traces : 20000))}"
judge_latency="${JUDGE_LATENCY_MS:-200}"
judge_slots="${JUDGE_SLOTS:-256}"
judge_queue="${JUDGE_QUEUE:-2560}"
otlp_traces="${OTLP_TRACES:-100000}"
source scripts/lib/local-broker.sh
worker_pid=
judge_pid=
sink_pid=
trap 'kafka_stop; for p in $judge_pid $worker_pid $sink_pid; do kill $p 2>/dev/null || true; done' EXIT
create_topics 4 bench_in bench_out bench_logs bench_dlq bench_steady peer_out
[ "$traces" -eq 0 ] || $bin loadgen --brokers "127.0.0.1:$port" --topic bench_in --traces "$traces"

cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$1/stat"; }
scrape() { curl -s "127.0.0.1:$metrics_port/metrics"; }
metric() { scrape | awk -v n="$1" '$1 == n { print $2 }'; }
exporter="exporters: { kafka: { brokers: [\"127.0.0.1:$port\"], output: [spans], traces: { topic: bench_out }, client: { ${OUT_CLIENT:-} } } }"
# The default output: gen_ai.evaluation.result log records to a logs topic.
events="exporters: { kafka: { brokers: [\"127.0.0.1:$port\"], logs: { topic: bench_logs }, client: { ${OUT_CLIENT:-} } } }"
# The same, exactly once: events and input offsets in one transaction a second.
exactly_once="exporters: { kafka: { brokers: [\"127.0.0.1:$port\"], logs: { topic: bench_logs }, exactly_once: true, transactional_id: bench-$$, client: { ${OUT_CLIENT:-} } } }"
floor="evaluators: [ { type: latency, select: { kinds: [guardrail] } } ]"
# The default set plus the trace evaluators, whose traces are buffered until complete (a short
# quiet period: the whole topic is there at once, and the run ends when the last trace is judged).
with_traces="evaluators: [ {type: refusal}, {type: pii}, {type: json_valid}, {type: finish_reason}, {type: empty_output}, {type: cost}, {type: citations}, {type: grounding}, {type: tool_args}, {type: agent_loop} ]
traces: { quiet_seconds: 0.5 }
$exporter"

start_worker() { # name, topic, evaluators/exporters yaml
  cat >"$work/$1.yaml" <<YAML
receivers:
  kafka:
    brokers: ["127.0.0.1:$port"]
    topics: [$2]
    group_id: bench_$1_$$
    initial_offset: earliest
    dead_letter_topic: bench_dlq
    ${IN_FLIGHT:+max_in_flight_messages: $IN_FLIGHT}
    client: { session.timeout.ms: "6000", max.poll.interval.ms: "10000" }
$3
telemetry:
  metrics: { listen: "127.0.0.1:$metrics_port" }
YAML
  EVALSTREAM_LOG=warn $bin run --config "$work/$1.yaml" 2>"$work/$1.log" &
  worker_pid=$!
  for _ in $(seq 100); do metric evalstream_in_flight_messages | grep -q . && break; sleep 0.1; done
}

stop_worker() {
  kill -TERM "$worker_pid"; wait "$worker_pid" || true; worker_pid=
}

wait_consumed() { # count; prints "first_seconds end_seconds first_count"
  local first="" start_count=0 consumed end
  while :; do
    consumed=$(metric evalstream_messages_consumed_total); consumed=${consumed:-0}
    if [ -z "$first" ] && [ "${consumed%.*}" -gt 0 ]; then first=$(date +%s.%N); start_count=$consumed; fi
    if [ "${consumed%.*}" -ge "$1" ]; then
      # Wait for the last outputs to be acknowledged.
      while [ "$(metric evalstream_in_flight_messages)" != "0" ]; do sleep 0.01; done
      end=$(date +%s.%N); break
    fi
    sleep 0.01
  done
  echo "$first $end $start_count"
}

throughput() { # name, evaluators/exporters yaml; prints a result line, records spans/s in $work/NAME
  local broker_cpu0 spans evals gaps rss cpu
  broker_cpu0=$(cpu_seconds $broker_pid)
  start_worker "$1" bench_in "$2"
  read -r first end start_count < <(wait_consumed "$traces")
  echo "$(cpu_seconds $worker_pid)" >"$work/$1.cpu"
  cpu="CPU: worker $(cpu_seconds $worker_pid) s, broker $(python3 -c "print(f'{$(cpu_seconds $broker_pid) - $broker_cpu0:.1f}')") s"
  spans=$(metric evalstream_spans_consumed_total)
  echo "$spans" >"$work/$1.spans"
  gaps=$(metric evalstream_input_offset_gaps_total)
  [ "${gaps:-0}" = "0" ] || echo "note: $1 saw $gaps input offset gap(s): the broker skipped records" >&2
  evals=$(scrape | awk '/^evalstream_evaluations_total/ { s += $2 } END { print s+0 }')
  rss=$(awk '/VmHWM/ { printf "%.0f", $2/1024 }' "/proc/$worker_pid/status")
  stop_worker
  python3 - "$1" "$first" "$end" "$start_count" "$traces" "$spans" "$evals" "$rss" "$work/$1" "$cpu" <<'PY'
import sys
name, first, end, start_count, traces, spans, evals, rss, out, cpu = sys.argv[1:]
t = float(end) - float(first)
per_msg = float(spans) / float(traces)
msgs = float(traces) - float(start_count)
rate = msgs * per_msg / t
open(out, "w").write(f"{rate}\n")
print(f"{name:14} {msgs/t:9.0f} msg/s {rate:9.0f} spans/s {float(evals)/float(spans)*rate:9.0f} evaluations/s   peak RSS {rss} MiB   {cpu}")
PY
}

echo "worker on $(nproc) cores, $traces traces, Kafka on 127.0.0.1:$port"
# Steps 1 and 4 (left unindented: they hold heredocs).
if [ "$traces" -gt 0 ]; then
throughput evaluate "$exporter"
throughput events "$events"
throughput exactly_once "$exactly_once"
throughput consume_only "$floor"
throughput with_traces "$with_traces"
python3 -c "import sys; e, f = (float(open(p).read()) for p in sys.argv[1:]); print(f'evaluate / consume-only floor: {e / f:.0%}')" \
  "$work/evaluate" "$work/consume_only"
python3 -c "import sys; e, f = (float(open(p).read()) for p in sys.argv[1:]); print(f'events / consume-only floor: {e / f:.0%}')" \
  "$work/events" "$work/consume_only"
python3 -c "import sys; e, f = (float(open(p).read()) for p in sys.argv[1:]); print(f'exactly once / at least once (events): {e / f:.0%}')" \
  "$work/exactly_once" "$work/events"

if [ "$judge_latency" -gt 0 ]; then
  # The default set plus an LLM judge on every answer, against the local judge stand-in: the
  # heuristic scorers' throughput, and the judge's calls/s against its bound (slots / latency).
  judge_port=$(free_port)
  $bin judge-server --listen "127.0.0.1:$judge_port" --latency-ms "$judge_latency" >/dev/null 2>"$work/judge.log" &
  judge_pid=$!
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$judge_port") 2>/dev/null && break; sleep 0.1; done
  start_worker with_judge bench_in "evaluators: [ {type: refusal}, {type: pii}, {type: json_valid}, {type: finish_reason}, {type: empty_output}, {type: cost},
  { type: llm_judge, name: judge, template: toxicity, endpoint: 'http://127.0.0.1:$judge_port/v1', model: judge-model, max_concurrency: $judge_slots, max_queued: $judge_queue, cache_size: 0 } ]
$exporter"
  # Samples the worker's counters every 100 ms until every message is consumed and every
  # verdict is out, then reports both rates.
  python3 - "$metrics_port" "$traces" "$judge_slots" "$judge_latency" <<'PY'
import sys, time, urllib.request
port, traces, slots, latency_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def scrape():
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    m = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            m[name] = float(value)
    return m
def total(m, prefix):
    return sum(v for k, v in m.items() if k.startswith(prefix))
samples, idle = [], 0
while True:
    m = scrape()
    s = (time.time(), m.get("evalstream_messages_consumed_total", 0), m.get("evalstream_spans_consumed_total", 0),
         total(m, "evalstream_judge_calls_total{"), total(m, "evalstream_judge_not_sent_total{"), m.get("evalstream_in_flight_messages", 1))
    samples.append(s)
    idle = idle + 1 if len(samples) > 1 and s[1:4] == samples[-2][1:4] and s[5] == 0 and s[1] > 0 else 0
    if (s[1] >= traces and s[5] == 0) or idle >= 100:
        break
    time.sleep(0.1)
first = next(x for x in samples if x[1] > 0)
consumed = next((x for x in samples if x[1] >= traces), samples[-1])
spans_rate = (consumed[2] - first[2]) / max(consumed[0] - first[0], 1e-9)
call_start = next(x for x in samples if x[3] > 0)
call_end = next(x for x in samples if x[3] == samples[-1][3])
calls = call_end[3] - call_start[3]
rate = calls / max(call_end[0] - call_start[0], 1e-9)
bound = slots / (latency_ms / 1000)
# While the heuristic scorers run: from the first verdict (one latency after the first call) to
# the last message consumed.
during = [x for x in samples if call_start[0] <= x[0] <= consumed[0]]
during_rate = (during[-1][3] - during[0][3]) / max(during[-1][0] - during[0][0], 1e-9) if len(during) > 1 else 0
print(f"with_judge     {spans_rate:9.0f} spans/s while the judge runs ({consumed[0] - first[0]:.1f} s to consume)")
print(f"judge          {during_rate:9.0f} calls/s while consuming ({during_rate / bound:.0%} of the bound {bound:.0f} = {slots} slots / {latency_ms} ms), "
      f"{rate:.0f} calls/s over its {call_end[0] - call_start[0]:.1f} s busy ({rate / bound:.0%}); {samples[-1][4]:.0f} spans shed")
PY
  stop_worker
  kill "$judge_pid" 2>/dev/null || true
fi
fi

if [ "$lag_rate" -gt 0 ]; then
  start_worker steady bench_steady "$exporter"
  # Lag under steady load, not the group join: produce once partitions are assigned.
  for _ in $(seq 300); do curl -sf "127.0.0.1:$metrics_port/readyz" >/dev/null && break; sleep 0.1; done
  sleep 1
  $bin loadgen --brokers "127.0.0.1:$port" --topic bench_steady --traces $((lag_rate * 10)) --rate "$lag_rate" 2>/dev/null
  wait_consumed $((lag_rate * 10)) >/dev/null
  scrape | python3 -c '
import re, sys
buckets = []
for line in sys.stdin:
    m = re.match(r"evalstream_end_to_end_lag_seconds_bucket\{le=\"([^\"]+)\"\} (\S+)", line)
    if m:
        buckets.append((float(m.group(1)), float(m.group(2))))
total = buckets[-1][1]
def quantile(q):
    # Linear interpolation inside the bucket, as PromQL histogram_quantile does.
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1)
        lower, below = upper, count
    return lower
print(f"steady load    {sys.argv[1]} traces/s for 10 s: end-to-end lag p50 {quantile(0.5)*1000:.1f} ms, p99 {quantile(0.99)*1000:.1f} ms ({total:.0f} spans)")
' "$lag_rate"
  stop_worker
fi

if [ "$peer_traces" -gt 0 ]; then
  venv=target/peer-venv
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q confluent-kafka opentelemetry-proto jsonschema
  fi
  peer=$(PEER_NO_GROUNDING=1 "$venv/bin/python" scripts/peer/python_worker.py "127.0.0.1:$port" bench_in peer_out "$peer_traces")
  echo "$peer"
  # Per CPU-second of each worker process: evalstream's events run (spans / its CPU seconds)
  # against the peer's spans per second of its single busy core.
  python3 -c "import re, sys; p = float(re.search(r'= (\d+) spans/s', sys.argv[1]).group(1)); spans, cpu = (float(open(f).read()) for f in sys.argv[2:]); print(f'spans per worker CPU-second: evalstream (events) {spans / cpu:.0f}, Python peer (one core) {p:.0f}: {spans / cpu / p:.1f}x')" \
    "$peer" "$work/events.spans" "$work/events.cpu"
  python3 -c "import re, sys; p = float(re.search(r'= (\d+) spans/s', sys.argv[1]).group(1)); e = float(open(sys.argv[2]).read()); print(f'evalstream / Python peer: {e / p:.1f}x')" \
    "$peer" "$work/evaluate"
fi

# Step 5, once: prints the run's figures and appends its spans/s to $work/otlp.rates.
otlp_run() {
  sink_port=$(free_port)
  grpc_port=$(free_port)
  $bin otlp-sink --listen "127.0.0.1:$sink_port" 2>"$work/sink.log" &
  sink_pid=$!
  cat >"$work/otlp.yaml" <<YAML
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:$grpc_port" }
exporters:
  otlphttp:
    endpoint: http://127.0.0.1:$sink_port
    compression: ${OTLP_COMPRESSION:-gzip}
telemetry:
  metrics: { listen: "127.0.0.1:$metrics_port" }
YAML
  EVALSTREAM_LOG=warn $bin run --config "$work/otlp.yaml" 2>"$work/otlp.log" &
  worker_pid=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$metrics_port/readyz" >/dev/null && break; sleep 0.1; done
  worker_cpu0=$(cpu_seconds $worker_pid)
  sink_cpu0=$(cpu_seconds $sink_pid)
  # The sender's own CPU (user + system seconds), from bash's `time`.
  TIMEFORMAT='%U %S'
  { time $bin loadgen --otlp "http://127.0.0.1:$grpc_port" --traces "$otlp_traces" --spans-per-request 512 \
      --concurrency "${OTLP_CONCURRENCY:-8}" 2>"$work/loadgen-otlp.log"; } 2>"$work/loadgen-otlp.time"
  worker_cpu=$(python3 -c "print(f'{$(cpu_seconds $worker_pid) - $worker_cpu0:.1f}')")
  sink_cpu=$(python3 -c "print(f'{$(cpu_seconds $sink_pid) - $sink_cpu0:.1f}')")
  # Every answer came after its evaluations were accepted: the sink has them all by now.
  evaluated=$(scrape | awk '/^evalstream_evaluations_total/ && !/outcome="skipped"/ { s += $2 } END { print s+0 }')
  received=$(curl -s "127.0.0.1:$sink_port/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["log_records"])')
  rss=$(awk '/VmHWM/ { printf "%.0f", $2/1024 }' "/proc/$worker_pid/status")
  stop_worker
  kill "$sink_pid" 2>/dev/null || true; sink_pid=
  python3 - "$(cat "$work/loadgen-otlp.log")" "$(cat "$work/loadgen-otlp.time")" "$worker_cpu" "$sink_cpu" "$evaluated" "$received" "$rss" "${OTLP_COMPRESSION:-gzip}" "$work/otlp.rates" <<'PY'
import re, sys
log, sender_time, worker_cpu, sink_cpu, evaluated, received, rss, compression = sys.argv[1:9]
m = re.search(r"\((\d+) spans\).* in (\d+) requests.* in ([\d.]+) s", log)
if not m:
    sys.exit(f"loadgen did not finish: {log}")
spans, requests, seconds = int(m.group(1)), int(m.group(2)), float(m.group(3))
sender_cpu = sum(float(x) for x in sender_time.split())
open(sys.argv[9], "a").write(f"{spans / seconds:.0f}\n")
print(f"otlp_grpc      {spans / seconds:9.0f} spans/s ({spans} spans in {requests} requests of ~512, {seconds:.1f} s; otlphttp events, {compression})   peak RSS {rss} MiB")
print(f"               CPU: worker {worker_cpu} s ({spans / max(float(worker_cpu), 1e-9):.0f} spans per CPU-second), sender {sender_cpu:.1f} s, sink {sink_cpu} s")
status = "every one" if int(received) == int(evaluated) else "MISMATCH"
print(f"               evaluation events: {evaluated} scored or errored, {received} at the sink ({status})")
PY
}

if [ "$otlp_traces" -gt 0 ]; then
  for _ in $(seq "${OTLP_RUNS:-3}"); do otlp_run; done
  python3 - "$work/otlp.rates" <<'PY'
import statistics, sys
rates = [float(x) for x in open(sys.argv[1]).read().split()]
print(f"otlp_grpc      median {statistics.median(rates):.0f} spans/s over {len(rates)} runs ({min(rates):.0f}-{max(rates):.0f})")
PY
fi
