#!/usr/bin/env bash
# Fuzzes evalstream for a bounded time with cargo-fuzz (libFuzzer): the project in tests/fuzz and
# its targets `decode_and_evaluate` (OTLP bytes → span views → evaluators → evaluator spans) and
# `config_parse` (text → Config::parse).
#
#   scripts/fuzz.sh                       # every target, FUZZ_SECONDS (default 60) each
#   FUZZ_SECONDS=600 scripts/fuzz.sh      # longer
#   FUZZ_SECONDS=0 scripts/fuzz.sh        # build and replay the regressions only
#   scripts/fuzz.sh config_parse          # one target
#
# For each target it first replays tests/fuzz/regressions/<target>/ (inputs that crashed once and
# must not crash again), then fuzzes from tests/fuzz/seeds/<target>/ and the running corpus in
# target/fuzz-corpus/<target>/ (where libFuzzer adds what it finds; not in git), splicing in the
# keywords of tests/fuzz/dicts/<target>.dict. A finding (a panic, an input running over
# FUZZ_INPUT_TIMEOUT seconds, default 10, or a process over FUZZ_RSS_LIMIT_MB, default 2048) fails
# the script and its input is saved in tests/fuzz/artifacts/<target>/; the other targets still run.
# libFuzzer's output is in target/fuzz-logs/<target>.<regressions|run>.log. A running corpus over
# FUZZ_CORPUS_MAX_FILES (default 20000) is first minimized (`cargo fuzz cmin`).
#
# Needs the nightly toolchain (libFuzzer's coverage instrumentation) and cargo-fuzz; both are
# installed when missing, cargo-fuzz into target/tools.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
if ! [[ $FUZZ_SECONDS =~ ^[0-9]+$ ]]; then
  echo "fuzz.sh: FUZZ_SECONDS must be a whole number of seconds, not '$FUZZ_SECONDS'" >&2
  exit 2
fi
CARGO_FUZZ_VERSION=0.13.2
RSS_LIMIT_MB=${FUZZ_RSS_LIMIT_MB:-2048}
INPUT_TIMEOUT=${FUZZ_INPUT_TIMEOUT:-10}
CORPUS_MAX_FILES=${FUZZ_CORPUS_MAX_FILES:-20000}

fuzz_dir=tests/fuzz
all_targets=(decode_and_evaluate config_parse)
if (($# > 0)); then
  targets=("$@")
  for t in "${targets[@]}"; do
    [[ -f $fuzz_dir/fuzz_targets/$t.rs ]] || {
      echo "fuzz.sh: no target '$t' (targets: ${all_targets[*]})" >&2
      exit 2
    }
  done
else
  targets=("${all_targets[@]}")
fi

tools=$root/target/tools
export PATH="$tools/bin:${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

elapsed() { echo "$(($(date +%s) - $1)) s"; }

# The nightly toolchain: cargo-fuzz builds with `-Cpasses=sancov-module` and other unstable flags.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing the nightly toolchain (rustup, minimal profile)"
  rustup toolchain install nightly --profile minimal
fi

if [[ $(cargo-fuzz --version 2>/dev/null || true) != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION into target/tools"
  start=$(date +%s)
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$tools"
  echo "fuzz.sh: cargo-fuzz installed in $(elapsed "$start")"
fi

# Build settings shared by `build` and `run` (the same flags, or `run` rebuilds):
# - `-O -a`: optimized, with debug assertions and overflow checks, so arithmetic overflow is a
#   finding too.
# - `-s none`: no sanitizer. The project's crates forbid `unsafe`, so AddressSanitizer would only
#   watch dependencies' unsafe code while making every run slower and failing to link
#   reliably against the C librdkafka that the `evalstream` crate builds. Panics, hangs
#   (`-timeout`) and memory blow-ups (`-rss_limit_mb`) are what these targets look for.
build_flags=(--fuzz-dir "$fuzz_dir" -O -a -s none)

start=$(date +%s)
echo "fuzz.sh: building ${targets[*]} (cached in $fuzz_dir/target)"
for t in "${targets[@]}"; do
  nice cargo +nightly fuzz build "${build_flags[@]}" "$t"
done
echo "fuzz.sh: built in $(elapsed "$start")"

mkdir -p target/fuzz-logs
failed=()

# Runs libFuzzer on target $1 with the remaining arguments (corpus dirs, then `--` and options),
# logging to target/fuzz-logs/<target>.<step>.log; on a finding, shows the end of the log and the
# new crash inputs, and records the failure.
run_libfuzzer() {
  local target=$1 step=$2
  shift 2
  local log=target/fuzz-logs/$target.$step.log
  local artifacts=$fuzz_dir/artifacts/$target
  local stamp
  stamp=$(mktemp)
  if RUST_BACKTRACE=1 nice cargo +nightly fuzz run "${build_flags[@]}" "$target" "$@" >"$log" 2>&1; then
    rm -f "$stamp"
    return 0
  fi
  echo "fuzz.sh: FINDING in $target ($step); libFuzzer's output is in $log:" >&2
  # The panic with its backtrace, or libFuzzer's own report (timeout, out of memory), else the end.
  if grep -q 'panicked at' "$log"; then
    grep -m1 -A30 'panicked at' "$log"
  elif grep -q 'ERROR: libFuzzer' "$log"; then
    grep -m1 -A12 'ERROR: libFuzzer' "$log"
  else
    tail -n 30 "$log"
  fi | sed 's/^/    /' >&2
  local found input
  found=$(find "$artifacts" -type f -newer "$stamp" 2>/dev/null || true)
  rm -f "$stamp"
  if [[ $step == regressions ]]; then
    # libFuzzer saved a copy of the failing input: name the regression file it came from.
    for input in "$fuzz_dir/regressions/$target"/*; do
      if [[ -n $found ]] && cmp -s "$input" "$(echo "$found" | head -n 1)"; then
        echo "fuzz.sh: still failing: $input" >&2
      fi
    done
  elif [[ -n $found ]]; then
    echo "fuzz.sh: crash input(s):" >&2
    echo "$found" | sed 's/^/    /' >&2
    echo "fuzz.sh: minimize with: cargo +nightly fuzz tmin ${build_flags[*]} $target <input>," >&2
    echo "         then add the result to $fuzz_dir/regressions/$target/" >&2
  fi
  failed+=("$target ($step)")
  return 1
}

for t in "${targets[@]}"; do
  regressions=$fuzz_dir/regressions/$t
  if compgen -G "$regressions/*" >/dev/null; then
    start=$(date +%s)
    # A directory with `-runs=0`: libFuzzer executes every input in it once and stops.
    if run_libfuzzer "$t" regressions "$regressions" -- -runs=0 \
      -rss_limit_mb="$RSS_LIMIT_MB" -timeout="$INPUT_TIMEOUT"; then
      echo "fuzz.sh: $t: $(find "$regressions" -type f ! -name ".*" | wc -l) regression input(s) pass ($(elapsed "$start"))"
    else
      echo "fuzz.sh: $t: a regression input fails again; not fuzzing $t further" >&2
      continue
    fi
  fi

  if ((FUZZ_SECONDS == 0)); then
    continue
  fi
  corpus=target/fuzz-corpus/$t
  mkdir -p "$corpus"
  # libFuzzer keeps adding files; once there are many, keep only those that add coverage, so
  # that replaying the corpus does not eat the time of the run.
  if (($(find "$corpus" -type f | wc -l) > CORPUS_MAX_FILES)); then
    start=$(date +%s)
    if nice cargo +nightly fuzz cmin "${build_flags[@]}" "$t" "$corpus" \
      >"target/fuzz-logs/$t.cmin.log" 2>&1; then
      echo "fuzz.sh: $t: corpus minimized to $(find "$corpus" -type f | wc -l) inputs ($(elapsed "$start"))"
    else
      echo "fuzz.sh: $t: corpus minimization failed (target/fuzz-logs/$t.cmin.log); fuzzing on" >&2
    fi
  fi
  # Keywords libFuzzer splices into inputs (attribute names, configuration keys).
  dict=()
  [[ -f $fuzz_dir/dicts/$t.dict ]] && dict=(-dict="$fuzz_dir/dicts/$t.dict")
  start=$(date +%s)
  # The first directory is where libFuzzer writes new inputs; the seeds are only read.
  if run_libfuzzer "$t" run "$corpus" "$fuzz_dir/seeds/$t" -- "${dict[@]}" \
    -max_total_time="$FUZZ_SECONDS" -rss_limit_mb="$RSS_LIMIT_MB" -timeout="$INPUT_TIMEOUT" \
    -print_final_stats=1; then
    stats=$(grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)' \
      "target/fuzz-logs/$t.run.log" | sed 's/^stat:://' | tr -s ' \n' ' ')
    echo "fuzz.sh: $t: no finding in $(elapsed "$start") (${stats% }; corpus $(find "$corpus" -type f | wc -l) inputs)"
  fi
done

if ((${#failed[@]} > 0)); then
  echo "fuzz.sh: findings in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: no findings"
