# Sourced by the scripts that need a broker (demo, benchmarks): starts one Apache Kafka node in
# KRaft mode (controller and broker in one process) on free loopback ports, with its data and
# logs in a directory of its own, and stops it.
#
#   kafka_start DIR       formats DIR/data, starts the broker, waits until it serves; sets
#                         kafka_bootstrap (host:port) and kafka_pid. Logs: DIR/server.log.
#   kafka_stop            stops it (SIGTERM, then SIGKILL after 20 s).
#   kafka_topics ARGS...  runs kafka-topics against it (e.g. --create --topic t --partitions 4).
#
# scripts/install-kafka.sh must have run. The properties are the ones tests/kafka.rs uses
# (tests/support/kafka.rs): replication factors 1 and no initial rebalance delay.

kafka_libs="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/kafka/libs"

kafka_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

kafka_start() {
  local dir=$1
  mkdir -p "$dir"
  local port controller
  port=$(kafka_free_port)
  controller=$(kafka_free_port)
  cat >"$dir/server.properties" <<PROPERTIES
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPERTIES
  cat >"$dir/log4j2.properties" <<LOG4J
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName=$dir/server.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
LOG4J
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
