# Sourced by the scripts that run evalstream against a local tansu broker: installs tansu if
# missing, builds the release binary, starts tansu (memory storage) on a free loopback port, and
# waits until it listens. Sets: bin, port, metrics_port, work (a temporary directory), broker_pid.
# `create_topics PARTITIONS TOPIC...` creates topics.

scripts/install-tansu.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# EVALSTREAM_BIN runs another build instead (to compare two versions on one machine).
if [ -n "${EVALSTREAM_BIN:-}" ]; then
  bin=$EVALSTREAM_BIN
else
  cargo build --release -q -p evalstream
  bin=target/release/evalstream
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
metrics_port=$(free_port)
work=$(mktemp -d)
tansu broker --storage-engine memory://tansu/ --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" >"$work/tansu.log" 2>&1 &
broker_pid=$!
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

create_topics() { # partitions, topic...
  local partitions=$1; shift
  for t in "$@"; do
    tansu topic create --broker "tcp://127.0.0.1:$port" "$t" --partitions "$partitions" >/dev/null
  done
}
