#!/usr/bin/env bash
# Benchmark of the guard API's `Check` on this machine: latency at a fixed rate (p50, p99, p99.9,
# from each request's scheduled send time) and the most checks per second, first with the
# streaming worker idle, then with the same process evaluating a steady OTLP stream (the default
# evaluators, events exported to a local sink), side by side in one run; and, idle, one caller
# in a closed loop: the latency of the server alone. The guard set is the
# cheap heuristic one: refusal, pii, json_valid, finish_reason, empty_output.
#
#   scripts/bench-guard.sh
#
# Beside the Rust client, ghz (github.com/bojand/ghz, the gRPC benchmarking tool, built with Go
# into target/tools the first time) sends the same check at the same rate from a separate Go
# process: a second client, whose figures tell the server's latency from the Rust client's own
# dispatch delay (ghz counts from each request's send).
#
# Environment: RATE (checks/s in the fixed-rate phase, default 5000), PHASE_SECONDS (each phase,
# default 10), CONCURRENCY (callers in the throughput phase, default 64), STREAM_RATE (traces/s of
# the stream, default 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${RATE:-5000}"
phase="${PHASE_SECONDS:-10}"
concurrency="${CONCURRENCY:-64}"
stream_rate="${STREAM_RATE:-2000}"
cargo build --release -q --locked -p evalstream
bin=target/release/evalstream
ghz=target/tools/ghz
if [ ! -x "$ghz" ]; then
  echo "building ghz v0.93.0 into target/tools (Go module proxy, once per machine)"
  GOBIN="$PWD/target/tools" go install github.com/bojand/ghz/cmd/ghz@v0.93.0
fi
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
otlp_port=$(free_port); guard_port=$(free_port); sink_port=$(free_port); metrics_port=$(free_port)
worker_pid=; sink_pid=; stream_pid=
trap 'for p in $stream_pid $worker_pid $sink_pid; do kill $p 2>/dev/null || true; done; rm -rf "$work"' EXIT

$bin otlp-sink --listen "127.0.0.1:$sink_port" 2>"$work/sink.log" &
sink_pid=$!
cat >"$work/guard.yaml" <<YAML
receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:$otlp_port" }
exporters:
  otlphttp: { endpoint: "http://127.0.0.1:$sink_port" }
telemetry:
  metrics: { listen: "127.0.0.1:$metrics_port" }
guard:
  grpc: { endpoint: "127.0.0.1:$guard_port" }
guards:
  default: { evaluators: [refusal, pii, json_valid, finish_reason, empty_output] }
YAML
EVALSTREAM_LOG=warn $bin run --config "$work/guard.yaml" 2>"$work/run.log" &
worker_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$guard_port") 2>/dev/null && break; sleep 0.1; done
spans() { curl -s "127.0.0.1:$metrics_port/metrics" | awk '$1 == "evalstream_spans_consumed_total" { print $2 }'; }
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$1/stat"; }

# ghz at the fixed rate: p50, p99, p99.9 and the maximum from its per-request durations.
ghz_phase() {
  printf '%s' '{"guard": "default", "input_messages": [{"role": "user", "content": "Tell me about the Eiffel Tower."}], "output_text": "The Eiffel Tower is 330 metres tall and stands on the Champ de Mars in Paris.", "attributes": {"user.id": "bench", "gen_ai.request.model": "gpt-4o-mini"}}' >"$work/check.json"
  "$ghz" --insecure --proto proto/evalstream/v1/guard.proto --call evalstream.v1.Guard.Check \
    -D "$work/check.json" --rps "$rate" -z "${phase}s" -c 50 -O csv "127.0.0.1:$guard_port" >"$work/ghz.csv" 2>/dev/null || true
  python3 - "$work/ghz.csv" "$rate" "$phase" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) >= 2][1:]
ok = sorted(float(r[0]) for r in rows if r[1] == "OK")
q = lambda p: ok[min(len(ok) - 1, int(p * len(ok)))]
print(f"ghz, fixed rate {sys.argv[2]}/s for {sys.argv[3]} s (latency from each request's send)")
cut = sum(1 for r in rows if r[1] == "Canceled")  # in flight when the phase ended
print(f"  check: {len(ok)} answered, {len(rows) - len(ok) - cut} errors ({cut} cut off at the end); latency ms p50 {q(.5):.3f}  p99 {q(.99):.3f}  p99.9 {q(.999):.3f}  max {ok[-1]:.3f}")
PY
}

echo "guard bench on $(nproc) cores: $rate checks/s for $phase s, then $concurrency callers for $phase s"
echo "== the streaming worker idle"
$bin guard-bench --endpoint "http://127.0.0.1:$guard_port" --rate "$rate" --seconds "$phase" --concurrency "$concurrency"

ghz_phase

echo "== one caller, each check sent when the last was answered (the server's own latency, without the open-loop client's dispatch)"
$bin guard-bench --endpoint "http://127.0.0.1:$guard_port" --rate 1000 --seconds "$phase" --concurrency 1 | tail -1

echo "== the streaming worker evaluating $stream_rate traces/s alongside"
$bin loadgen --otlp "http://127.0.0.1:$otlp_port" --traces 100000000 --rate "$stream_rate" \
  --spans-per-request 64 2>"$work/loadgen.log" &
stream_pid=$!
sleep 2
spans0=$(spans); cpu0=$(cpu_seconds "$worker_pid"); t0=$(date +%s.%N)
$bin guard-bench --endpoint "http://127.0.0.1:$guard_port" --rate "$rate" --seconds "$phase" --concurrency "$concurrency"
ghz_phase
spans1=$(spans); cpu1=$(cpu_seconds "$worker_pid"); t1=$(date +%s.%N)
kill "$stream_pid"; wait "$stream_pid" 2>/dev/null || true; stream_pid=
python3 -c "import sys; s0, s1, c0, c1, t0, t1 = map(float, sys.argv[1:]); print(f'  stream: {(s1 - s0) / (t1 - t0):.0f} spans/s evaluated meanwhile; worker process CPU {c1 - c0:.1f} s in {t1 - t0:.1f} s')" \
  "${spans0:-0}" "${spans1:-0}" "$cpu0" "$cpu1" "$t0" "$t1"
