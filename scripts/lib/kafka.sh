# Sourced by the scripts that need a broker (demo, benchmarks): starts one Apache Kafka node in
# KRaft mode (controller and broker in one process) on free loopback ports, with its data and
# logs in a directory of its own, and stops it.
#
#   kafka_start DIR       formats DIR/data, starts the broker, waits until it serves; sets
#                         kafka_bootstrap (host:port) and kafka_pid. Logs: DIR/server.log.
#   kafka_stop            stops it (SIGTERM, then SIGKILL after 20 s).
#   kafka_topics ARGS...  runs kafka-topics against it (e.g. --create --topic t --partitions 4).
#
# scripts/install-kafka.sh must have run. The node's properties are scripts/kafka/server.properties,
# as in the tests (tests/support/mod.rs).

kafka_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
kafka_libs="$kafka_root/target/kafka/libs"
kafka_templates="$kafka_root/scripts/kafka"

kafka_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

kafka_start() {
  local dir=$1
  mkdir -p "$dir"
  local port controller
  # Both at once, so they differ (Kafka refuses a controller on the broker's port).
  read -r port controller < <(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
  sed -e "s|@PORT@|$port|g" -e "s|@CONTROLLER@|$controller|g" -e "s|@DATA@|$dir/data|g" \
    -e "s|@EXTRA_LISTENERS@||g" -e "s|@EXTRA_PROTOCOLS@||g" -e "s|@EXTRA_LINES@||g" \
    "$kafka_templates/server.properties" >"$dir/server.properties"
  sed -e "s|@LOG@|$dir/server.log|g" "$kafka_templates/log4j2.properties" >"$dir/log4j2.properties"
  local id
  id=$(python3 -c 'import base64,uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
  java -cp "$kafka_libs/*" kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" >"$dir/format.log" 2>&1
  java -Xms256m -Xmx1g -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$kafka_libs/*" \
    kafka.Kafka "$dir/server.properties" >"$dir/stdout.log" 2>&1 &
  kafka_pid=$!
  kafka_bootstrap="127.0.0.1:$port"
  for _ in $(seq 600); do
    if grep -q "Kafka Server started" "$dir/server.log" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$kafka_pid" 2>/dev/null; then
      echo "kafka did not start; see $dir/server.log and $dir/stdout.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "kafka did not start within 60 s; see $dir/server.log" >&2
  return 1
}

kafka_stop() {
  [ -n "${kafka_pid:-}" ] || return 0
  kill "$kafka_pid" 2>/dev/null || return 0
  for _ in $(seq 200); do kill -0 "$kafka_pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$kafka_pid" 2>/dev/null || true
}

kafka_topics() {
  java -cp "$kafka_libs/*" org.apache.kafka.tools.TopicCommand --bootstrap-server "$kafka_bootstrap" "$@"
}
