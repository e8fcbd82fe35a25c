# Sourced by the scripts that run evalstream against a local broker (demo, benchmarks): installs
# Apache Kafka if missing, builds the release binary, starts one Kafka node (scripts/lib/kafka.sh)
# on free loopback ports, and waits until it serves. Sets: bin, port, metrics_port, work (a
# temporary directory; the broker's data and log are in $work/kafka), broker_pid.
# `create_topics PARTITIONS TOPIC...` creates topics.

scripts/install-build-deps.sh
scripts/install-kafka.sh
source scripts/lib/kafka.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# EVALSTREAM_BIN runs another build instead (to compare two versions on one machine).
if [ -n "${EVALSTREAM_BIN:-}" ]; then
  bin=$EVALSTREAM_BIN
else
  cargo build --release -q -p evalstream
  bin=target/release/evalstream
fi

free_port() { kafka_free_port; }
metrics_port=$(free_port)
work=$(mktemp -d)
kafka_start "$work/kafka"
port=${kafka_bootstrap##*:}
broker_pid=$kafka_pid

create_topics() { # partitions, topic...
  local partitions=$1; shift
  for t in "$@"; do
    kafka_topics --create --topic "$t" --partitions "$partitions" --replication-factor 1 >/dev/null
  done
}
