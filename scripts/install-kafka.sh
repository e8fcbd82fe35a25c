#!/usr/bin/env bash
# Installs Apache Kafka (the broker the tests, the demo and the benchmarks start) into
# target/kafka/libs when it is missing: `mvn dependency:copy-dependencies` on scripts/kafka/pom.xml
# fetches kafka_2.13 and its runtime dependencies from Maven Central (cached in ~/.m2), about
# 45 MB, once per machine. Needs Java 17+ and Maven. Prints nothing when already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
libs=target/kafka/libs
pom=scripts/kafka/pom.xml
stamp=target/kafka/installed-from
# Reinstall when the pom changed (another Kafka version).
if [ -f "$stamp" ] && cmp -s "$pom" "$stamp" && ls "$libs"/kafka_2.13-*.jar >/dev/null 2>&1; then
  exit 0
fi
for tool in java mvn; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install-kafka: \`$tool\` is needed (Java 17+ and Maven)" >&2; exit 1; }
done
echo "installing Apache Kafka into $libs (Maven Central, once per machine)" >&2
started=$(date +%s)
rm -rf "$libs"
mkdir -p "$libs"
mvn -q -B -f "$pom" dependency:copy-dependencies -Dstyle.color=never -DincludeScope=runtime -DoutputDirectory="$PWD/$libs"
cp "$pom" "$stamp"
echo "Kafka installed in $(( $(date +%s) - started )) s: $(ls "$libs" | wc -l) jars" >&2
