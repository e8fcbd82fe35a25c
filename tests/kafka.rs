//! The streaming worker against a real broker: Apache Kafka (one KRaft node) is started on a
//! free loopback port, topics are created, the real `evalstream run` binary consumes, and the
//! output and dead-letter topics are read back. `scripts/install-kafka.sh` installs Kafka.
//! librdkafka's mock cluster (in this process, on loopback) stands in where errors are injected.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use evalstream::commands::loadgen;
use evalstream_evaluators::evaluator::EvaluatorSet;
use evalstream_evaluators::otlp::{self, Encoding, types::ExportTraceServiceRequest};
use evalstream_evaluators::{span, spec, to_otlp};
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

mod support;
use support::{Broker, SCRAM_USER, free_port, temp_dir};

/// librdkafka's mock clusters interfere when two run in one process at once (a broker taken down
/// in one stayed "up" for the other's clients): tests using one take this lock.
static MOCK_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// librdkafka's mock broker with the test topics (two partitions each), held under
/// [`MOCK_CLUSTER`]'s lock for as long as the guard lives.
fn mock_setup() -> (
    std::sync::MutexGuard<'static, ()>,
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) {
    let guard = MOCK_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    for topic in ["input", "output", "logs", "dlq"] {
        cluster.create_topic(topic, 2, 1).unwrap();
    }
    // The mock broker does not serve CreateTopics: the drift state topic is made here.
    cluster
        .create_topic("evalstream_drift_state", 1, 1)
        .unwrap();
    (guard, cluster)
}

/// A message to produce: key and payload.
type Outgoing = (Option<String>, Vec<u8>);

/// A running `evalstream run`, killed on drop.
struct Worker {
    child: Child,
    metrics_port: u16,
}

impl Worker {
    fn start(dir: &Path, name: &str, broker: &str, group: &str, encoding: Encoding) -> Worker {
        Worker::start_with(dir, name, broker, group, encoding, "")
    }

    /// As [`Worker::start`], with extra `receivers.kafka` settings (YAML lines, indented 4).
    fn start_with(
        dir: &Path,
        name: &str,
        broker: &str,
        group: &str,
        encoding: Encoding,
        receiver_extra: &str,
    ) -> Worker {
        Worker::start_configured(dir, name, broker, group, encoding, receiver_extra, "", &[])
    }

    /// As [`Worker::start_with`], with extra top-level sections (YAML, not indented) and extra
    /// librdkafka properties for both the receiver's and the exporter's clients (TLS, SASL).
    #[allow(clippy::too_many_arguments)]
    fn start_configured(
        dir: &Path,
        name: &str,
        broker: &str,
        group: &str,
        encoding: Encoding,
        receiver_extra: &str,
        top_extra: &str,
        client: &[(&str, &str)],
    ) -> Worker {
        Worker::start_exporting(
            dir,
            name,
            broker,
            group,
            (encoding, receiver_extra),
            "",
            top_extra,
            client,
        )
    }

    /// As [`Worker::start_configured`], with extra `exporters.kafka` settings (YAML lines,
    /// indented 4).
    #[allow(clippy::too_many_arguments)]
    fn start_exporting(
        dir: &Path,
        name: &str,
        broker: &str,
        group: &str,
        (encoding, receiver_extra): (Encoding, &str),
        exporter_extra: &str,
        top_extra: &str,
        client: &[(&str, &str)],
    ) -> Worker {
        let metrics_port = free_port();
        let client: String = client
            .iter()
            .map(|(k, v)| format!(", {k}: \"{v}\""))
            .collect();
        let exporter_client = client.trim_start_matches(", ");
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                r#"
receivers:
  kafka:
    brokers: ["{broker}"]
    topics: [input]
    group_id: {group}
    encoding: {encoding}
    initial_offset: earliest
    dead_letter_topic: dlq
    drain_timeout_seconds: 10
{receiver_extra}
    client: {{ session.timeout.ms: "6000", max.poll.interval.ms: "10000", heartbeat.interval.ms: "500", auto.commit.interval.ms: "200"{client} }}
exporters:
  kafka:
    brokers: ["{broker}"]
    output: [events, spans]
    logs: {{ topic: logs }}
    traces: {{ topic: output }}
    client: {{ {exporter_client} }}
{exporter_extra}
telemetry:
  metrics: {{ listen: "127.0.0.1:{metrics_port}" }}
  admin_token: {ADMIN_TOKEN}
{top_extra}
"#
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_evalstream"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env(
                "EVALSTREAM_LOG",
                "warn,evalstream::receivers::kafka=trace,evalstream::telemetry::drift=debug,evalstream::commands::run=info",
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Worker {
            child,
            metrics_port,
        }
    }

    /// As [`Worker::start_configured`] in group `g` on protobuf input, with the evaluators and
    /// other top-level sections given.
    fn start_with_sections(dir: &Path, name: &str, broker: &str, top_extra: &str) -> Worker {
        Worker::start_configured(
            dir,
            name,
            broker,
            "g",
            Encoding::OtlpProto,
            "",
            top_extra,
            &[],
        )
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http(self.metrics_port, "GET", "/metrics")?;
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(mut self) -> (Option<i32>, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut s) = self.child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                return (status.code(), err);
            }
            assert!(Instant::now() < deadline, "worker did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The workers' `telemetry.admin_token`, which [`http`] sends.
const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// An HTTP request without a body over loopback, with the admin token: the status and the body
/// (de-chunked).
fn http(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some((status, body.to_owned()));
    }
    let mut rest = body;
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            break;
        }
        out.push_str(tail.get(..size)?);
        rest = tail.get(size + 2..)?;
    }
    Some((status, out))
}

fn producer(broker: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

fn produce(broker: &str, topic: &str, messages: &[Outgoing]) {
    let p = producer(broker);
    for (key, payload) in messages {
        let mut r: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).payload(payload);
        if let Some(k) = key {
            r = r.key(k);
        }
        p.send(r).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// A record read back from a topic.
struct Record {
    partition: i32,
    offset: i64,
    key: Option<String>,
    payload: Vec<u8>,
    headers: HashMap<String, String>,
}

fn reader(broker: &str, topic: &str) -> BaseConsumer {
    static READERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = READERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set(
            "group.id",
            format!("evalstream-test-reader-{}-{n}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// Reads every partition of `topic` from the start, in a fresh consumer group, until `done` says
/// enough or `timeout` passes.
fn read_topic(
    broker: &str,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let consumer = reader(broker, topic);
    let mut records = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut checked = Instant::now();
    loop {
        // `done` may decode every record: ask it at most every 200 ms, not after every poll.
        if checked.elapsed() > Duration::from_millis(200) {
            checked = Instant::now();
            if done(&records) {
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    records
}

/// Reads every record of every partition up to its high watermark and returns the records with
/// the offsets below the watermark that the broker never returned (none, from Kafka: the check
/// guards against a broker that skips records).
fn read_all(
    broker: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> (Vec<Record>, Vec<(i32, i64)>) {
    let mut records = Vec::new();
    let mut gaps = Vec::new();
    for partition in 0..partitions {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker)
            .set("group.id", "evalstream-test-read-all")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(low))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let deadline = Instant::now() + timeout;
        while (seen.len() as i64) < high - low && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100))
                && m.offset() < high
                && seen.insert(m.offset())
            {
                records.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: HashMap::new(),
                });
            }
        }
        gaps.extend(
            (low..high)
                .filter(|o| !seen.contains(o))
                .map(|o| (partition, o)),
        );
    }
    (records, gaps)
}

/// The evaluator span ids an offline run produces for these requests, with their trace ids.
fn expected_outputs(
    set: &EvaluatorSet,
    requests: &[ExportTraceServiceRequest],
) -> HashMap<Vec<u8>, Vec<u8>> {
    let mut expected = HashMap::new();
    for request in requests {
        for s in span::spans(request) {
            let mut evaluations = Vec::new();
            set.evaluate(&s, &mut evaluations);
            for e in evaluations.iter().filter(|e| to_otlp::emits_span(e)) {
                expected.insert(e.score_id.span_id().to_vec(), s.trace_id().to_vec());
            }
        }
    }
    expected
}

/// The evaluation events the offline evaluation gives: (score id, trace id, judged span id).
fn expected_events(
    set: &EvaluatorSet,
    requests: &[ExportTraceServiceRequest],
) -> HashSet<(String, Vec<u8>, Vec<u8>)> {
    let mut expected = HashSet::new();
    for request in requests {
        for s in span::spans(request) {
            let mut evaluations = Vec::new();
            set.evaluate(&s, &mut evaluations);
            for e in evaluations.iter().filter(|e| to_otlp::emits_span(e)) {
                expected.insert((
                    e.score_id.to_hex(),
                    s.trace_id().to_vec(),
                    s.span_id().to_vec(),
                ));
            }
        }
    }
    expected
}

/// The evaluation events in records of the logs topic, checking each record's key (the hex
/// trace id of every event in it) and that each is a `gen_ai.evaluation.result` event.
fn output_events(records: &[Record]) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    let mut events = Vec::new();
    for r in records {
        let request = ExportLogsServiceRequest::decode(&r.payload[..])
            .expect("a logs record holds an ExportLogsServiceRequest");
        for rl in &request.resource_logs {
            for sl in &rl.scope_logs {
                for l in &sl.log_records {
                    assert_eq!(l.event_name, "gen_ai.evaluation.result");
                    assert_eq!(r.key.as_deref(), Some(otlp::hex(&l.trace_id).as_str()));
                    let score_id = otlp::find(&l.attributes, "evalstream.score.id")
                        .and_then(otlp::as_str)
                        .expect("evalstream.score.id")
                        .to_owned();
                    events.push((score_id, l.trace_id.clone(), l.span_id.clone()));
                }
            }
        }
    }
    events
}

/// Evaluator span ids found in output records (with repeats), checking each record's key.
fn output_span_ids(records: &[Record]) -> Vec<Vec<u8>> {
    let mut ids = Vec::new();
    for r in records {
        let request =
            otlp::decode(&r.payload, Encoding::OtlpProto).expect("output records are otlp_proto");
        for s in span::spans(&request) {
            assert_eq!(
                r.key.as_deref(),
                Some(otlp::hex(s.trace_id()).as_str()),
                "output keyed by hex trace id"
            );
            assert_eq!(s.kind(), span::OperationKind::Evaluator);
            ids.push(s.span_id().to_vec());
        }
    }
    ids
}

fn count_spans(records: &[Record]) -> usize {
    records
        .iter()
        .map(|r| {
            otlp::decode(&r.payload, Encoding::OtlpProto).map_or(0, |q| span::spans(&q).count())
        })
        .sum()
}

fn setup(partitions: u32) -> Broker {
    let broker = Broker::start();
    for topic in ["input", "output", "logs", "dlq"] {
        broker.create_topic(topic, partitions);
    }
    broker
}

/// The corpus's traces, one message per trace with the original ids, as the collector writes them.
fn corpus_messages(encoding: Encoding) -> (Vec<ExportTraceServiceRequest>, Vec<Outgoing>) {
    let requests = loadgen::templates().unwrap();
    let messages = requests
        .iter()
        .map(|r| {
            let key = otlp::hex(&r.resource_spans[0].scope_spans[0].spans[0].trace_id);
            let payload = match encoding {
                Encoding::OtlpProto => r.encode_to_vec(),
                Encoding::OtlpJson => serde_json::to_vec(r).unwrap(),
            };
            (Some(key), payload)
        })
        .collect();
    (requests, messages)
}

#[test]
fn the_corpus_flows_through_kafka_in_both_encodings() {
    let set = spec::build_set(&spec::default_specs()).unwrap();
    for encoding in [Encoding::OtlpProto, Encoding::OtlpJson] {
        let broker = setup(2);
        let (requests, messages) = corpus_messages(encoding);
        produce(&broker.address(), "input", &messages);
        let expected = expected_outputs(&set, &requests);
        assert!(
            expected.len() > 100,
            "the corpus yields many evaluator spans"
        );
        let dir = temp_dir(&format!("corpus-{encoding}"));
        let worker = Worker::start(&dir, "w", &broker.address(), "g", encoding);
        let records = read_topic(&broker.address(), "output", Duration::from_secs(60), |r| {
            count_spans(r) >= expected.len()
        });
        let got: HashSet<Vec<u8>> = output_span_ids(&records).into_iter().collect();
        let want: HashSet<Vec<u8>> = expected.keys().cloned().collect();
        assert_eq!(
            got, want,
            "{encoding}: the output topic holds exactly the offline evaluations"
        );
        // The same evaluations as `gen_ai.evaluation.result` log records on the logs topic,
        // each on the judged span's trace and span ids.
        let want_events = expected_events(&set, &requests);
        let events = read_topic(&broker.address(), "logs", Duration::from_secs(60), |r| {
            output_events(r).len() >= want_events.len()
        });
        let got_events: HashSet<_> = output_events(&events).into_iter().collect();
        assert_eq!(
            got_events, want_events,
            "{encoding}: the logs topic holds every event"
        );
        assert_eq!(
            worker.metric("evalstream_messages_consumed_total"),
            Some(messages.len() as f64)
        );
        assert_eq!(worker.metric("evalstream_decode_errors_total"), Some(0.0));
        // A clean stop drains and commits, and exits 0.
        let (code, stderr) = worker.terminate();
        assert_eq!(code, Some(0), "{stderr}");
    }
}

#[test]
fn a_poison_message_goes_to_the_dead_letter_topic_while_the_rest_flows() {
    let broker = setup(1);
    let (requests, mut messages) = corpus_messages(Encoding::OtlpProto);
    let requests = &requests[..10];
    messages.truncate(10);
    messages.insert(
        4,
        (Some("poison".into()), b"\xff\xfenot a protobuf".to_vec()),
    );
    messages.insert(7, (None, Vec::new()));
    produce(&broker.address(), "input", &messages);
    let dir = temp_dir("poison");
    let worker = Worker::start(&dir, "w", &broker.address(), "g", Encoding::OtlpProto);
    let set = spec::build_set(&spec::default_specs()).unwrap();
    let expected = expected_outputs(&set, requests);
    let records = read_topic(&broker.address(), "output", Duration::from_secs(60), |r| {
        count_spans(r) >= expected.len()
    });
    assert_eq!(
        output_span_ids(&records)
            .into_iter()
            .collect::<HashSet<_>>(),
        expected.keys().cloned().collect()
    );
    let dead = read_topic(&broker.address(), "dlq", Duration::from_secs(30), |r| {
        r.len() >= 2
    });
    assert_eq!(dead.len(), 2);
    // Workers run in parallel, so dead letters arrive in any order: find them by source offset.
    let by_offset = |o: &str| {
        dead.iter()
            .find(|r| {
                r.headers
                    .get("evalstream.source.offset")
                    .map(String::as_str)
                    == Some(o)
            })
            .unwrap_or_else(|| panic!("no dead letter from offset {o}"))
    };
    let garbage = by_offset("4");
    assert_eq!(garbage.payload, b"\xff\xfenot a protobuf");
    assert_eq!(garbage.key.as_deref(), Some("poison"));
    let h = &garbage.headers;
    assert!(
        h["evalstream.error"].starts_with("invalid otlp_proto message"),
        "{h:?}"
    );
    assert_eq!(h["evalstream.error.type"], "decode");
    assert_eq!(h["evalstream.dead_letter.content"], "input");
    assert_eq!(h["evalstream.source.topic"], "input");
    assert_eq!(h["evalstream.source.partition"], "0");
    let empty = by_offset("7");
    assert!(empty.payload.is_empty());
    assert!(
        empty.headers["evalstream.error"].contains("empty message"),
        "{:?}",
        empty.headers
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while worker.metric("evalstream_dlq_messages_total{reason=\"decode\"}") != Some(2.0) {
        assert!(Instant::now() < deadline, "DLQ writes not counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(worker.metric("evalstream_decode_errors_total"), Some(2.0));
}

#[test]
fn sigkill_mid_stream_and_restart_lose_no_evaluation() {
    // librdkafka's own mock broker: a faithful Kafka protocol implementation, in this process,
    // listening on loopback, reached by the worker processes like any broker.
    let (_one_mock_at_a_time, cluster) = mock_setup();
    sigkill_scenario(&cluster.bootstrap_servers(), "sigkill-mock", 600, 250.0);
}

/// The same against Apache Kafka, with idempotent producers (tansu 0.6, the broker before, served
/// a consumer resuming inside an idempotent batch from the next batch, so this was ignored).
#[test]
fn sigkill_mid_stream_and_restart_against_kafka() {
    let broker = setup(2);
    sigkill_scenario(&broker.address(), "sigkill-kafka", 3000, 1200.0);
}

/// Produces `traces` traces, runs a worker, SIGKILLs it once it has `kill_at_outputs` outputs
/// acknowledged, runs a second one, and checks
/// that every evaluation of every input LLM span is on the output topic; reports duplicates.
fn sigkill_scenario(address: &str, dir_name: &str, traces: u64, kill_at_outputs: f64) {
    let (requests, messages) = loadgen_messages(traces, 7_000);
    produce(address, "input", &messages);
    let set = spec::build_set(&spec::default_specs()).unwrap();
    let expected = expected_outputs(&set, &requests);
    let dir = temp_dir(dir_name);

    let mut first = Worker::start(&dir, "first", address, "g", Encoding::OtlpProto);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = first
            .metric("evalstream_output_records_total")
            .unwrap_or(0.0);
        if out >= kill_at_outputs {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first worker made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill(); // SIGKILL: no drain, no final commit.

    let second = Worker::start(&dir, "second", address, "g", Encoding::OtlpProto);
    // Let it finish: nothing in flight, and its lag (from librdkafka's statistics) at zero.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = http(second.metrics_port, "GET", "/metrics").unwrap_or_default();
        let lags: Vec<f64> = body
            .lines()
            .filter(|l| l.starts_with("evalstream_consumer_lag_messages{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        let idle = second.metric("evalstream_in_flight_messages") == Some(0.0);
        if idle && lags.len() == 2 && lags.iter().all(|&l| l == 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted worker did not catch up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = |name| second.metric(name).unwrap_or(-1.0);
    let (consumed, acknowledged) = (
        m("evalstream_messages_consumed_total"),
        m("evalstream_output_records_total"),
    );
    // Read while the worker still runs, before its clean stop below.
    let (records, gaps) = read_all(address, "output", 2, Duration::from_secs(60));
    assert!(
        gaps.is_empty(),
        "the broker did not return these output offsets: {gaps:?}"
    );
    let ids = output_span_ids(&records);
    let unique: HashSet<Vec<u8>> = ids.iter().cloned().collect();
    let missing = expected.keys().filter(|k| !unique.contains(*k)).count();
    let duplicates = ids.len() - unique.len();
    let distinct_payloads: HashSet<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    eprintln!(
        "records: {}, byte-identical repeats at other offsets: {}",
        records.len(),
        records.len() - distinct_payloads.len()
    );
    eprintln!(
        "sigkill: {} expected evaluator spans, {} received, {} duplicates ({:.1}%), {} missing",
        expected.len(),
        ids.len(),
        duplicates,
        100.0 * duplicates as f64 / expected.len() as f64,
        missing
    );
    eprintln!(
        "second worker: consumed {consumed} messages, {acknowledged} outputs acknowledged; {} records read back",
        records.len()
    );
    if missing > 0 {
        let log = std::fs::read_to_string(dir.join("first.log")).unwrap_or_default()
            + std::fs::read_to_string(dir.join("second.log"))
                .unwrap_or_default()
                .as_str();
        let missing_traces: HashSet<String> = expected
            .iter()
            .filter(|(k, _)| !unique.contains(*k))
            .map(|(_, t)| otlp::hex(t))
            .collect();
        let line_with =
            |t: &str, what: &str| log.lines().any(|l| l.contains(t) && l.contains(what));
        let acked = missing_traces
            .iter()
            .filter(|t| line_with(t, "output delivered"))
            .count();
        let received = missing_traces
            .iter()
            .filter(|t| line_with(t, "received"))
            .count();
        eprintln!("missing traces received by a worker: {received}");
        eprintln!(
            "missing traces: {}; acknowledged to a worker by the broker: {acked}",
            missing_traces.len()
        );
        let at: HashMap<(i32, i64), &Record> = records
            .iter()
            .map(|r| ((r.partition, r.offset), r))
            .collect();
        for t in missing_traces.iter().take(5) {
            for l in log
                .lines()
                .filter(|l| l.contains(t.as_str()) && l.contains("output delivered"))
            {
                let num = |k: &str| {
                    l.split(k)
                        .nth(1)
                        .and_then(|s| s.split(' ').next())
                        .and_then(|s| s.parse::<i64>().ok())
                };
                if let (Some(p), Some(o)) = (num(" partition="), num(" offset=")) {
                    let found = at
                        .get(&(p as i32, o))
                        .map(|r| r.key.clone().unwrap_or_default());
                    eprintln!("  {t} acknowledged at {p}/{o}; the reader found there: {found:?}");
                }
            }
        }
        for t in missing_traces.iter().take(3) {
            eprintln!(
                "  {t}: {}",
                log.lines()
                    .find(|l| l.contains(t.as_str()))
                    .unwrap_or("(never acknowledged)")
            );
        }
    }
    assert_eq!(
        missing, 0,
        "every input LLM span has its evaluations after the restart"
    );
    let (code, _) = second.terminate();
    assert_eq!(code, Some(0));
    assert!(
        unique.iter().all(|id| expected.contains_key(id)),
        "nothing unexpected"
    );
}

/// Reads `topic` as a `read_committed` consumer does (what downstream readers of an exactly-once
/// output run with): each partition from its start up to its high watermark; the offsets of
/// transaction markers and aborted records are skipped, not gaps.
fn read_committed(broker: &str, topic: &str, partitions: i32, timeout: Duration) -> Vec<Record> {
    let mut records = Vec::new();
    for partition in 0..partitions {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker)
            .set("group.id", "evalstream-test-read-committed")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(low))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                records.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: HashMap::new(),
                });
            }
            let position = consumer
                .position()
                .ok()
                .and_then(|p| p.find_partition(topic, partition).map(|e| e.offset()));
            if matches!(position, Some(Offset::Offset(o)) if o >= high) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}[{partition}] not read to {high} as read_committed (at {position:?})"
            );
        }
    }
    records
}

/// Exactly once (`exporters.kafka.exactly_once`): a worker SIGKILLed mid-stream and restarted
/// leaves every evaluation on the output topic exactly once for a `read_committed` reader: the
/// killed run's open transaction is aborted (fenced by the restart's same `transactional.id`),
/// and the restart reads again from the last committed transaction.
#[test]
fn exactly_once_sigkill_and_restart_lose_and_repeat_nothing() {
    let broker = setup(2);
    let address = broker.address();
    let (requests, messages) = loadgen_messages(3000, 9_000);
    produce(&address, "input", &messages);
    let set = spec::build_set(&spec::default_specs()).unwrap();
    let expected = expected_outputs(&set, &requests);
    let dir = temp_dir("exactly-once");
    let exactly_once = "    exactly_once: true\n    transactional_id: evalstream-test-eo\n    transaction_interval_ms: 200";
    let start = |name: &str| {
        Worker::start_exporting(
            &dir,
            name,
            &address,
            "g",
            (Encoding::OtlpProto, ""),
            exactly_once,
            "",
            &[],
        )
    };
    let mut first = start("first");
    wait_for(
        Duration::from_secs(60),
        "the first worker committed transactions",
        || {
            first
                .metric("evalstream_kafka_transactions_total")
                .unwrap_or(0.0)
                >= 2.0
                && first
                    .metric("evalstream_output_records_total")
                    .unwrap_or(0.0)
                    >= 1200.0
        },
    );
    first.kill(); // SIGKILL: its open transaction is never committed.
    let second = start("second");
    wait_for(
        Duration::from_secs(120),
        "the restarted worker committed every input",
        || {
            committed_vs_end(&address, "g", "input", 2)
                .iter()
                .all(|(committed, end)| committed == end)
        },
    );
    let records = read_committed(&address, "output", 2, Duration::from_secs(60));
    let ids = output_span_ids(&records);
    let unique: HashSet<Vec<u8>> = ids.iter().cloned().collect();
    let missing = expected.keys().filter(|k| !unique.contains(*k)).count();
    let duplicates = ids.len() - unique.len();
    eprintln!(
        "exactly once: {} expected evaluator spans, {} read committed, {duplicates} duplicates, {missing} missing; {} transactions by the second worker",
        expected.len(),
        ids.len(),
        second
            .metric("evalstream_kafka_transactions_total")
            .unwrap_or(-1.0)
    );
    assert_eq!(missing, 0, "every evaluation is there");
    assert_eq!(duplicates, 0, "and none twice");
    assert!(unique.iter().all(|id| expected.contains_key(id)));
    let (code, _) = second.terminate();
    assert_eq!(code, Some(0));
}

fn loadgen_messages(traces: u64, seed: u64) -> (Vec<ExportTraceServiceRequest>, Vec<Outgoing>) {
    let templates = loadgen::templates().unwrap();
    let requests: Vec<ExportTraceServiceRequest> = (0..traces)
        .map(|i| {
            loadgen::instantiate(
                &templates[(i % 50) as usize],
                seed + i,
                1_800_000_000_000_000_000,
            )
        })
        .collect();
    let messages = requests
        .iter()
        .map(|r| {
            (
                Some(otlp::hex(
                    &r.resource_spans[0].scope_spans[0].spans[0].trace_id,
                )),
                r.encode_to_vec(),
            )
        })
        .collect();
    (requests, messages)
}

/// Waits until every worker is ready (partitions assigned), then a little more, so the group has
/// split the partitions before traffic starts.
fn wait_all_ready(workers: &[&Worker]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while workers
        .iter()
        .any(|w| http(w.metrics_port, "GET", "/readyz").is_none_or(|(status, _)| status != 200))
    {
        assert!(Instant::now() < deadline, "workers did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
}

#[test]
fn two_workers_in_one_group_share_the_partitions() {
    let broker = setup(4);
    let (requests, messages) = loadgen_messages(2000, 50_000);
    let set = spec::build_set(&spec::default_specs()).unwrap();
    let expected = expected_outputs(&set, &requests);
    let dir = temp_dir("two-workers");
    let a = Worker::start(&dir, "a", &broker.address(), "shared", Encoding::OtlpProto);
    let b = Worker::start(&dir, "b", &broker.address(), "shared", Encoding::OtlpProto);
    // Let both join before the traffic starts, so the group splits the partitions.
    wait_all_ready(&[&a, &b]);
    produce(&broker.address(), "input", &messages);
    let records = read_topic(&broker.address(), "output", Duration::from_secs(90), |r| {
        output_span_ids(r).into_iter().collect::<HashSet<_>>().len() >= expected.len()
    });
    let got: HashSet<Vec<u8>> = output_span_ids(&records).into_iter().collect();
    assert!(
        expected.keys().all(|k| got.contains(k)),
        "every evaluation arrives"
    );
    let consumed = |w: &Worker| {
        w.metric("evalstream_messages_consumed_total")
            .unwrap_or(0.0)
    };
    let (ca, cb) = (consumed(&a), consumed(&b));
    eprintln!("two workers: {ca} + {cb} messages");
    assert!(ca > 0.0 && cb > 0.0, "both workers consumed: {ca} and {cb}");
    assert!(ca + cb >= messages.len() as f64);
}

#[test]
fn the_worker_rides_out_a_broker_outage() {
    let (_one_mock_at_a_time, cluster) = mock_setup();
    let address = cluster.bootstrap_servers();
    let (requests, messages) = loadgen_messages(400, 90_000);
    let (first_half, second_half) = messages.split_at(200);
    let set = spec::build_set(&spec::default_specs()).unwrap();
    let expected = expected_outputs(&set, &requests);
    let dir = temp_dir("outage");
    let mut worker = Worker::start(&dir, "w", &address, "g", Encoding::OtlpProto);
    produce(&address, "input", first_half);
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker
        .metric("evalstream_messages_consumed_total")
        .unwrap_or(0.0)
        < 200.0
    {
        assert!(Instant::now() < deadline, "no progress before the outage");
        std::thread::sleep(Duration::from_millis(50));
    }

    cluster.broker_down(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(worker.metrics_port, "GET", "/readyz").is_some_and(|(status, _)| status == 200) {
        assert!(
            Instant::now() < deadline,
            "/readyz stayed ready while no broker was reachable"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker exited during the outage"
    );
    cluster.broker_up(1).unwrap();

    produce(&address, "input", second_half);
    let records = read_topic(&address, "output", Duration::from_secs(90), |r| {
        output_span_ids(r).into_iter().collect::<HashSet<_>>().len() >= expected.len()
    });
    let got: HashSet<Vec<u8>> = output_span_ids(&records).into_iter().collect();
    let missing = expected.keys().filter(|k| !got.contains(*k)).count();
    assert_eq!(
        missing, 0,
        "every evaluation arrives after the broker comes back"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(worker.metrics_port, "GET", "/readyz").is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < deadline, "/readyz did not recover");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        worker
            .metric("evalstream_kafka_errors_total{kind=\"all_brokers_down\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    worker.kill();
}

/// Polls `done` every 100 ms until it holds; fails saying `what` after `timeout`.
fn wait_for(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the worker has consumed `messages` and finished them all, and returns how many
/// went to the dead-letter topic for a delivery failure.
fn finish_and_count_dead_letters(worker: &Worker, messages: usize) -> usize {
    wait_for(Duration::from_secs(60), "the worker did not finish", || {
        worker.metric("evalstream_messages_consumed_total") == Some(messages as f64)
            && worker.metric("evalstream_in_flight_messages") == Some(0.0)
    });
    worker
        .metric("evalstream_dlq_messages_total{reason=\"delivery\"}")
        .unwrap_or(0.0) as usize
}

/// The committed offset of every partition of `topic` for `group`, next to its high watermark.
/// Offsets the group committed on the two partitions of `input`, summed (an uncommitted
/// partition counts 0).
fn committed_total(broker: &str, group: &str) -> i64 {
    committed_vs_end(broker, group, "input", 2)
        .iter()
        .map(|(c, _)| (*c).max(0))
        .sum()
}

fn committed_vs_end(broker: &str, group: &str, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    (0..partitions)
        .map(|p| {
            let c = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            };
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            (c, high)
        })
        .collect()
}

#[test]
fn transient_request_errors_are_retried_without_loss() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let (_one_mock_at_a_time, cluster) = mock_setup();
    let address = cluster.bootstrap_servers();
    let (requests, messages) = loadgen_messages(200, 70_000);
    produce(&address, "input", &messages);
    let set = spec::build_set(&spec::default_specs()).unwrap();
    let expected = expected_outputs(&set, &requests);
    // Retriable errors on the worker's first requests of each kind: output produce, fetch and
    // offset commit.
    use RDKafkaRespErr::*;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[
            RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    let dir = temp_dir("request-errors");
    // Not idempotent here: the mock broker checks the sequence numbers of transactional producers
    // only, so after an injected timeout it accepts the next batch across the gap, and librdkafka
    // (rightly, against Kafka) takes that as proof the timed-out batch was written: one record in
    // a few runs was reported delivered and never written. Kafka enforces the sequence; the tests
    // against it run idempotent producers.
    let worker = Worker::start_configured(
        &dir,
        "w",
        &address,
        "g",
        Encoding::OtlpProto,
        "",
        "",
        &[("enable.idempotence", "false")],
    );
    let records = read_topic(&address, "output", Duration::from_secs(90), |r| {
        output_span_ids(r).into_iter().collect::<HashSet<_>>().len() >= expected.len()
    });
    let got: HashSet<Vec<u8>> = output_span_ids(&records).into_iter().collect();
    let missing: HashSet<String> = expected
        .iter()
        .filter(|(k, _)| !got.contains(*k))
        .map(|(_, trace)| otlp::hex(trace))
        .collect();
    if !missing.is_empty() {
        // Where did they go: acknowledged to the worker, and what the topic holds.
        let log = std::fs::read_to_string(dir.join("w.log")).unwrap_or_default();
        for trace in &missing {
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(trace.as_str())).collect();
            eprintln!("missing trace {trace}: {lines:#?}");
        }
        eprintln!(
            "outputs acknowledged: {:?}; records read: {}; output watermarks: {:?}",
            worker.metric("evalstream_output_records_total"),
            records.len(),
            committed_vs_end(&address, "reader-none", "output", 2)
        );
    }
    assert!(
        missing.is_empty(),
        "every evaluation arrives despite the injected errors: {} traces missing",
        missing.len()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.metric("evalstream_in_flight_messages") != Some(0.0) {
        assert!(Instant::now() < deadline, "work still in flight");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        worker
            .metric("evalstream_dlq_messages_total{reason=\"delivery\"}")
            .unwrap_or(0.0),
        0.0,
        "a retriable error sent nothing to the dead-letter topic"
    );
    // The periodic commits get past the injected commit errors while the worker runs. (Not
    // only the final one: with errors injected on the coordinator, the mock broker sometimes
    // lets the group session lapse during the drain, and a consumer no longer in its group
    // rightly may not commit.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let offsets = committed_vs_end(&address, "g", "input", 2);
        if offsets.iter().all(|(committed, end)| committed == end) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "offsets committed up to the end: {offsets:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _) = worker.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn a_permanently_rejected_output_sends_its_input_to_the_dead_letter_topic() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let (_one_mock_at_a_time, cluster) = mock_setup();
    let address = cluster.bootstrap_servers();
    let (requests, messages) = loadgen_messages(100, 80_000);
    produce(&address, "input", &messages);
    let set = spec::build_set(&spec::default_specs()).unwrap();
    let expected = expected_outputs(&set, &requests);
    // The worker's first produce request is rejected for good; what it carried must not be lost.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let dir = temp_dir("rejected-output");
    let worker = Worker::start(&dir, "w", &address, "g", Encoding::OtlpProto);
    let dead_letters = finish_and_count_dead_letters(&worker, 100);
    assert!(
        dead_letters >= 1,
        "the rejected outputs' inputs were dead-lettered"
    );
    let dead = read_topic(&address, "dlq", Duration::from_secs(30), |r| {
        r.len() >= dead_letters
    });
    assert_eq!(dead.len(), dead_letters);
    let dead_traces: HashSet<String> = dead.iter().filter_map(|r| r.key.clone()).collect();
    for r in &dead {
        assert_eq!(r.headers["evalstream.error.type"], "delivery");
        assert!(
            r.headers["evalstream.error"].contains("cannot deliver evaluations"),
            "{:?}",
            r.headers
        );
    }
    // Every input has its evaluations on the output topic, or is itself in the dead-letter topic.
    let records = read_topic(&address, "output", Duration::from_secs(30), |r| {
        let got: HashSet<Vec<u8>> = output_span_ids(r).into_iter().collect();
        expected
            .iter()
            .all(|(id, trace)| got.contains(id) || dead_traces.contains(&otlp::hex(trace)))
    });
    let got: HashSet<Vec<u8>> = output_span_ids(&records).into_iter().collect();
    let lost: Vec<String> = expected
        .iter()
        .filter(|(id, trace)| !got.contains(*id) && !dead_traces.contains(&otlp::hex(trace)))
        .map(|(_, trace)| otlp::hex(trace))
        .collect();
    assert!(
        lost.is_empty(),
        "evaluations neither delivered nor dead-lettered: {lost:?}"
    );
    let (code, _) = worker.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn a_byte_limit_below_one_message_still_lets_every_message_through() {
    // Backpressure by bytes must not wedge the input when one message alone exceeds the limit:
    // it then runs one message at a time.
    let (_one_mock_at_a_time, cluster) = mock_setup();
    let address = cluster.bootstrap_servers();
    let (requests, messages) = loadgen_messages(60, 60_000);
    produce(&address, "input", &messages);
    let set = spec::build_set(&spec::default_specs()).unwrap();
    let expected = expected_outputs(&set, &requests);
    let dir = temp_dir("byte-limit");
    let worker = Worker::start_with(
        &dir,
        "w",
        &address,
        "g",
        Encoding::OtlpProto,
        "    max_in_flight_bytes: 1",
    );
    let records = read_topic(&address, "output", Duration::from_secs(60), |r| {
        output_span_ids(r).into_iter().collect::<HashSet<_>>().len() >= expected.len()
    });
    let got: HashSet<Vec<u8>> = output_span_ids(&records).into_iter().collect();
    assert!(expected.keys().all(|k| got.contains(k)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while worker.metric("evalstream_in_flight_bytes") != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "in-flight bytes not released: {:?}",
            worker.metric("evalstream_in_flight_bytes")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _) = worker.terminate();
    assert_eq!(code, Some(0));
}

/// The attribute `key` of an output span, as text.
fn attribute(s: &span::GenAiSpan<'_>, key: &str) -> Option<String> {
    otlp::find(&s.raw().attributes, key).map(|v| span::attribute_text(v).into_owned())
}

/// The attributes `keys` of every evaluator span in output records, in order.
fn output_attributes(records: &[Record], keys: &[&str]) -> Vec<Vec<Option<String>>> {
    records
        .iter()
        .flat_map(|r| {
            let request = otlp::decode(&r.payload, Encoding::OtlpProto).unwrap();
            span::spans(&request)
                .map(|s| keys.iter().map(|k| attribute(&s, k)).collect())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The corpus's grounded RAG trace (a retriever and an answer citing `[1]`) split in three
/// requests: the answer, the other spans (the root among them), the retriever.
fn rag_trace_parts() -> (Vec<u8>, Vec<ExportTraceServiceRequest>) {
    let templates = loadgen::templates().unwrap();
    let rag = templates
        .into_iter()
        .find(|r| {
            let spans: Vec<_> = span::spans(r).collect();
            spans
                .iter()
                .any(|s| s.kind() == span::OperationKind::Retrieval)
                && spans.iter().any(|s| {
                    s.output_text()
                        .is_some_and(|t| t.contains("330 metres tall [1]"))
                })
        })
        .expect("the corpus has a grounded RAG trace");
    let trace_id = span::spans(&rag).next().unwrap().trace_id().to_vec();
    let part = |keep: &dyn Fn(&span::GenAiSpan<'_>) -> bool| {
        let mut one = rag.clone();
        for (rs, original) in one.resource_spans.iter_mut().zip(&rag.resource_spans) {
            for (ss, original) in rs.scope_spans.iter_mut().zip(&original.scope_spans) {
                ss.spans = original
                    .spans
                    .iter()
                    .filter(|sp| {
                        keep(&span::GenAiSpan::new(
                            sp,
                            span::ResourceView::new(None),
                            None,
                        ))
                    })
                    .cloned()
                    .collect();
            }
        }
        one
    };
    use span::OperationKind::{Chat, Retrieval};
    let parts = vec![
        // The answer first, then the rest with the root, the retriever last.
        part(&|s| s.kind() == Chat),
        part(&|s| !matches!(s.kind(), Chat | Retrieval)),
        part(&|s| s.kind() == Retrieval),
    ];
    (trace_id, parts)
}

#[test]
fn a_trace_split_across_messages_is_judged_whole_once_complete() {
    let (_one_mock_at_a_time, cluster) = mock_setup();
    let address = cluster.bootstrap_servers();
    let (trace_id, parts) = rag_trace_parts();
    let key = otlp::hex(&trace_id);
    let dir = temp_dir("trace-assembly");
    let worker = Worker::start_with_sections(
        &dir,
        "w",
        &address,
        "evaluators:\n  - type: citations\n  - type: refusal\ntraces: { quiet_seconds: 1, max_wait_seconds: 20 }",
    );
    // Out of order and across messages, a little apart: the answer cites a document whose
    // retriever span comes last.
    for part in &parts {
        produce(
            &address,
            "input",
            &[(Some(key.clone()), part.encode_to_vec())],
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let evaluations = |records: &[Record]| -> Vec<(String, Option<String>, Option<String>)> {
        let keys = [
            "gen_ai.evaluation.name",
            "gen_ai.evaluation.score.label",
            "evalstream.trace.completion",
        ];
        output_attributes(records, &keys)
            .into_iter()
            .map(|mut v| (v[0].take().unwrap_or_default(), v[1].take(), v[2].take()))
            .collect()
    };
    let records = read_topic(&address, "output", Duration::from_secs(60), |r| {
        evaluations(r).iter().any(|(name, ..)| name == "citations")
    });
    let got = evaluations(&records);
    let citations: Vec<_> = got.iter().filter(|(n, ..)| n == "citations").collect();
    assert_eq!(citations.len(), 1, "the answer is judged once: {got:?}");
    assert_eq!(
        citations[0].1.as_deref(),
        Some("resolved"),
        "the citation resolves against the retriever span of a later message"
    );
    assert_eq!(citations[0].2.as_deref(), Some("complete"));
    assert!(
        got.iter()
            .any(|(n, _, completion)| n == "refusal" && completion.is_none()),
        "span evaluators run at once, outside the trace buffer: {got:?}"
    );
    assert!(
        records
            .iter()
            .all(|r| r.key.as_deref() == Some(key.as_str()))
    );

    // A span of the trace after it was judged: counted late, judged as a new partial trace.
    produce(
        &address,
        "input",
        &[(Some(key.clone()), parts[0].encode_to_vec())],
    );
    wait_for(
        Duration::from_secs(30),
        "the late span is judged and every message finished",
        || {
            worker.metric("evalstream_traces_assembled_total{completion=\"late\"}") == Some(1.0)
                && worker.metric("evalstream_in_flight_messages") == Some(0.0)
        },
    );
    let answer_spans = span::spans(&parts[0]).count();
    assert_eq!(
        worker.metric("evalstream_late_spans_total"),
        Some(answer_spans as f64)
    );
    assert_eq!(
        worker.metric("evalstream_traces_assembled_total{completion=\"complete\"}"),
        Some(1.0)
    );
    assert_eq!(worker.metric("evalstream_traces_buffered"), Some(0.0));

    // A trace without its root waits up to the maximum wait; stopping evaluates it at once, so
    // its message is committed on the way out.
    let mut rootless = parts[0].clone();
    for s in rootless
        .resource_spans
        .iter_mut()
        .flat_map(|r| &mut r.scope_spans)
        .flat_map(|s| &mut s.spans)
    {
        s.trace_id = vec![7; 16];
    }
    produce(
        &address,
        "input",
        &[(Some(key.clone()), rootless.encode_to_vec())],
    );
    wait_for(
        Duration::from_secs(30),
        "the rootless trace is buffered",
        || worker.metric("evalstream_traces_buffered") == Some(1.0),
    );
    let (code, stderr) = worker.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    for (committed, end) in committed_vs_end(&address, "g", "input", 2) {
        // The key puts every message on one partition; the other has nothing to commit.
        assert!(
            committed == end || end == 0,
            "held messages are committed once their trace is judged: {committed} of {end}"
        );
    }
}

#[test]
fn a_revoked_partitions_buffered_traces_are_judged_and_committed_before_handover() {
    // Kafka: librdkafka's mock broker refuses commits while a rebalance is in progress, even
    // from the revoke callback, which Kafka accepts.
    let broker = setup(2);
    let address = broker.address();
    // Traces without their root span: buffered until the maximum wait, far beyond this test.
    let templates = loadgen::templates().unwrap();
    let now = evalstream::now_unix_nanos();
    let messages: Vec<Outgoing> = (0..40u64)
        .filter_map(|i| {
            let mut r = loadgen::instantiate(&templates[i as usize % templates.len()], i, now);
            for ss in r.resource_spans.iter_mut().flat_map(|r| &mut r.scope_spans) {
                ss.spans.retain(|s| !s.parent_span_id.is_empty());
            }
            let first = span::spans(&r).next()?.trace_id().to_vec();
            Some((Some(otlp::hex(&first)), r.encode_to_vec()))
        })
        .collect();
    produce(&address, "input", &messages);
    let dir = temp_dir("trace-revoke");
    let top =
        "evaluators:\n  - type: citations\ntraces: { quiet_seconds: 1, max_wait_seconds: 600 }";
    let first = Worker::start_with_sections(&dir, "a", &address, top);
    wait_for(
        Duration::from_secs(60),
        "every rootless trace is buffered",
        || first.metric("evalstream_traces_buffered") == Some(messages.len() as f64),
    );
    // A second worker joins: the first gives up its partitions, judging what it buffered.
    let second = Worker::start_with_sections(&dir, "b", &address, top);
    let deadline = Instant::now() + Duration::from_secs(60);
    let committed = || -> i64 { committed_total(&address, "g") };
    while committed() != messages.len() as i64 {
        assert!(
            Instant::now() < deadline,
            "the revoked traces' messages are committed without waiting for the maximum wait: {} of {}",
            committed(),
            messages.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for(
        Duration::from_secs(60),
        "the second worker gets partitions",
        || {
            std::fs::read_to_string(dir.join("b.log"))
                .unwrap_or_default()
                .contains("partitions assigned")
        },
    );
    assert_eq!(
        first.metric("evalstream_traces_assembled_total{completion=\"flushed\"}"),
        Some(messages.len() as f64)
    );
    assert_eq!(
        second.metric("evalstream_messages_consumed_total"),
        Some(0.0),
        "nothing is handed over uncommitted, so nothing is judged twice"
    );
    assert_eq!(first.terminate().0, Some(0));
    assert_eq!(second.terminate().0, Some(0));
}

#[test]
fn a_rejected_trace_output_goes_to_the_dead_letter_topic_itself() {
    use evalstream_evaluators::trace::TraceView;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let (_one_mock_at_a_time, cluster) = mock_setup();
    let address = cluster.bootstrap_servers();
    let (requests, messages) = loadgen_messages(100, 90_000);
    produce(&address, "input", &messages);
    let specs: Vec<spec::EvaluatorSpec> =
        serde_json::from_value(serde_json::json!([{"type": "citations"}, {"type": "tool_args"}]))
            .unwrap();
    let set = spec::build_set(&specs).unwrap();
    let mut expected: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for request in &requests {
        let traces = TraceView::group(span::spans(request), true);
        for (trace, s) in TraceView::each_span(&traces) {
            let mut evaluations = Vec::new();
            set.evaluate_in(s, trace, &mut evaluations);
            for e in evaluations.iter().filter(|e| to_otlp::emits_span(e)) {
                expected.insert(e.score_id.span_id().to_vec(), s.trace_id().to_vec());
            }
        }
    }
    assert!(!expected.is_empty());
    // The first trace outputs are rejected for good. Their inputs gave up their bytes when their
    // traces were buffered, so the dead-letter topic gets the evaluations themselves.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let dir = temp_dir("rejected-trace-output");
    let worker = Worker::start_with_sections(
        &dir,
        "w",
        &address,
        "evaluators: [{type: citations}, {type: tool_args}]\ntraces: { quiet_seconds: 0.2 }",
    );
    let dead_letters = finish_and_count_dead_letters(&worker, 100);
    assert!(dead_letters >= 1, "a rejected output was dead-lettered");
    let dead = read_topic(&address, "dlq", Duration::from_secs(30), |r| {
        r.len() >= dead_letters
    });
    assert_eq!(dead.len(), dead_letters);
    for r in &dead {
        assert_eq!(r.headers["evalstream.dead_letter.content"], "evaluations");
        assert!(
            r.headers["evalstream.source.offsets"].starts_with("input/"),
            "{:?}",
            r.headers
        );
    }
    // Every evaluation is on the output topic or, as an evaluator span, in the dead-letter topic
    // (which also holds the rejected records of events: `evalstream.dead_letter.signal: logs`).
    let (dead_spans, dead_events): (Vec<Record>, Vec<Record>) = dead
        .into_iter()
        .partition(|r| r.headers["evalstream.dead_letter.signal"] == "traces");
    // A rejected record of events is kept whole too: it decodes, and names the judged spans.
    assert!(
        output_events(&dead_events)
            .iter()
            .all(|(_, trace, _)| expected.values().any(|t| t == trace)),
        "dead-lettered events are this run's"
    );
    let dead_ids: HashSet<Vec<u8>> = output_span_ids(&dead_spans).into_iter().collect();
    let records = read_topic(&address, "output", Duration::from_secs(30), |r| {
        let got: HashSet<Vec<u8>> = output_span_ids(r).into_iter().collect();
        expected
            .keys()
            .all(|id| got.contains(id) || dead_ids.contains(id))
    });
    let got: HashSet<Vec<u8>> = output_span_ids(&records).into_iter().collect();
    let lost = expected
        .keys()
        .filter(|id| !got.contains(*id) && !dead_ids.contains(*id))
        .count();
    assert_eq!(lost, 0, "evaluations neither delivered nor dead-lettered");
    assert!(!dead_ids.is_empty() || !dead_events.is_empty());
    let (code, _) = worker.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn an_edited_script_is_reloaded_while_the_worker_runs() {
    let (_one_mock_at_a_time, cluster) = mock_setup();
    let address = cluster.bootstrap_servers();
    let dir = temp_dir("script-reload");
    let script = dir.join("answer_words.rhai");
    std::fs::write(&script, "fn score(span) { 1 }").unwrap();
    let worker = Worker::start_with_sections(
        &dir,
        "w",
        &address,
        &format!(
            "evaluators: [{{type: rhai, name: words, script: \"{}\"}}]",
            script.display()
        ),
    );
    let (_, first) = loadgen_messages(1, 95_000);
    // The scores and versions of the `words` evaluator spans in the output, in order.
    let scores = |records: &[Record]| -> Vec<(String, String)> {
        let keys = [
            "gen_ai.evaluation.score.value",
            "evalstream.evaluator.version",
        ];
        output_attributes(records, &keys)
            .into_iter()
            .map(|mut v| {
                (
                    v[0].take().unwrap_or_default(),
                    v[1].take().unwrap_or_default(),
                )
            })
            .collect()
    };
    produce(&address, "input", &first);
    let records = read_topic(&address, "output", Duration::from_secs(60), |r| {
        !scores(r).is_empty()
    });
    let before = scores(&records);
    assert!(before.iter().all(|(score, _)| score == "1.0"), "{before:?}");

    std::fs::write(&script, "fn score(span) { 0 }").unwrap();
    wait_for(Duration::from_secs(30), "the script is reloaded", || {
        worker.metric("evalstream_script_reloads_total{evaluator=\"words\",result=\"reloaded\"}")
            == Some(1.0)
    });
    std::fs::write(&script, "fn score(span) { ").unwrap();
    wait_for(
        Duration::from_secs(30),
        "the broken version is reported",
        || {
            worker.metric("evalstream_script_reloads_total{evaluator=\"words\",result=\"failed\"}")
                == Some(1.0)
        },
    );
    let (_, second) = loadgen_messages(1, 96_000);
    produce(&address, "input", &second);
    let records = read_topic(&address, "output", Duration::from_secs(60), |r| {
        scores(r).len() > before.len()
    });
    let after: Vec<_> = scores(&records).into_iter().skip(before.len()).collect();
    assert!(!after.is_empty());
    for (score, version) in &after {
        assert_eq!(
            score, "0.0",
            "the last version that compiled runs: {after:?}"
        );
        assert_ne!(version, &before[0].1, "its version follows the script");
    }
    let (code, _) = worker.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn judge_verdicts_survive_faults_and_never_hold_up_the_cheap_scorers() {
    use evalstream::pipeline::judge::stand_in::{self as server, Fault};
    let (_one_mock_at_a_time, cluster) = mock_setup();
    let address = cluster.bootstrap_servers();
    let (url, judge) = server::start().unwrap();
    judge.set_latency(Duration::from_millis(20));
    // The first requests meet a 429 (retry after 0.3 s), a 500, a reply that is not JSON and a
    // refusal: the first two are retried, the last two are error outcomes.
    judge.push_faults([
        Fault::RateLimited(0.3),
        Fault::ServerError,
        Fault::NotJson,
        Fault::Refusal,
    ]);
    let (requests, messages) = loadgen_messages(20, 97_000);
    produce(&address, "input", &messages);
    let dir = temp_dir("judge");
    let worker = Worker::start_with_sections(
        &dir,
        "w",
        &address,
        &format!(
            "evaluators:\n  - type: refusal\n  - type: llm_judge\n    name: tox\n    template: toxicity\n    endpoint: {url}\n    model: judge-model\n    api_key: sk-test\n    max_concurrency: 4\n    max_retries: 3"
        ),
    );
    // Every LLM span whose answer was captured is judged (the others are skipped at once).
    let judged: usize = requests
        .iter()
        .flat_map(|r| span::spans(r).collect::<Vec<_>>())
        .filter(|s| {
            s.kind() == span::OperationKind::Chat
                && s.output_text().is_some_and(|t| !t.trim().is_empty())
        })
        .count();
    assert!(judged > 5, "{judged}");
    let tox = |records: &[Record]| -> Vec<(Option<String>, Option<String>)> {
        output_attributes(
            records,
            &[
                "gen_ai.evaluation.name",
                "gen_ai.evaluation.score.label",
                "error.type",
            ],
        )
        .into_iter()
        .filter(|v| v[0].as_deref() == Some("tox"))
        .map(|mut v| (v[1].take(), v[2].take()))
        .collect()
    };
    let records = read_topic(&address, "output", Duration::from_secs(60), |r| {
        tox(r).len() >= judged
    });
    let verdicts = tox(&records);
    assert_eq!(verdicts.len(), judged, "{verdicts:?}");
    let errors: Vec<&str> = verdicts.iter().filter_map(|(_, e)| e.as_deref()).collect();
    let mut sorted = errors.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["judge_refused", "judge_unparseable"],
        "{verdicts:?}"
    );
    assert_eq!(
        verdicts
            .iter()
            .filter(|(l, _)| l.as_deref() == Some("pass"))
            .count(),
        judged - 2
    );
    // Retried: two more requests than verdicts from the server, less the verdicts served from
    // the cache (spans with the same answer, when the first verdict was in before the next one
    // was submitted: it depends on timing, and once failed this test on a loaded machine).
    let cached = worker
        .metric("evalstream_judge_not_sent_total{evaluator=\"tox\",reason=\"cache_hit\"}")
        .unwrap_or(0.0) as usize;
    assert_eq!(
        judge.received().len() + cached,
        judged + 2,
        "{cached} cache hits"
    );
    assert!(judge.most_in_flight() <= 4, "{}", judge.most_in_flight());
    // Personal data in the answers (the corpus's `pii` scenario) was masked before sending.
    let sent: Vec<String> = judge.received().iter().map(|b| b.to_string()).collect();
    assert!(
        sent.iter()
            .any(|b| b.contains("[email]") || b.contains("[phone]"))
    );
    assert!(
        !sent.iter().any(|b| regex::Regex::new(r"[\w.]+@[\w.]+\.\w+")
            .unwrap()
            .is_match(b)),
        "no e-mail address reaches the judge"
    );
    // The cheap scorer judged everything too.
    let refusals = output_attributes(&records, &["gen_ai.evaluation.name"])
        .into_iter()
        .filter(|v| v[0].as_deref() == Some("refusal"))
        .count();
    assert!(refusals >= judged, "{refusals}");
    wait_for(Duration::from_secs(30), "every message finished", || {
        worker.metric("evalstream_in_flight_messages") == Some(0.0)
    });
    let (code, _) = worker.terminate();
    assert_eq!(code, Some(0));
    let committed = committed_total(&address, "g");
    assert_eq!(
        committed,
        messages.len() as i64,
        "inputs are committed once judged"
    );
}

#[test]
fn a_judge_gated_on_grounding_is_called_only_where_grounding_is_low() {
    use evalstream::pipeline::judge::stand_in as server;
    let (_one_mock_at_a_time, cluster) = mock_setup();
    let address = cluster.bootstrap_servers();
    let (url, judge) = server::start().unwrap();
    // The judge runs only when grounding (a trace evaluator) is inconclusive and the answer is
    // no refusal (a span evaluator, scored again in the trace pass).
    let evaluators = serde_json::json!([
        {"type": "grounding"},
        {"type": "refusal"},
        {"type": "llm_judge", "name": "faithfulness", "template": "faithfulness",
         "endpoint": url, "model": "judge-model", "api_key": "sk-test", "cache_size": 0,
         "when": [{"evaluator": "grounding", "below": 0.8},
                  {"evaluator": "refusal", "passed": true}]}
    ]);
    let (requests, messages) = loadgen_messages(50, 51_000);
    // What should reach the judge: the spans it applies to whose cascade holds offline, and
    // that have something to judge.
    let specs: Vec<spec::EvaluatorSpec> = serde_json::from_value(evaluators.clone()).unwrap();
    let set = spec::build_set(&specs).unwrap();
    let faithfulness = &set.evaluators()[2];
    assert!(faithfulness.needs_trace(), "gated on a trace evaluator");
    let llm = faithfulness.evaluator.as_judge().unwrap();
    let (mut applies, mut expected) = (0, 0);
    for request in &requests {
        let traces = evalstream_evaluators::trace::TraceView::group(span::spans(request), true);
        for (trace, s) in evalstream_evaluators::trace::TraceView::each_span(&traces) {
            let mut evaluations = Vec::new();
            set.evaluate_in(s, trace, &mut evaluations);
            let Some(e) = evaluations.iter().find(|e| e.evaluator == "faithfulness") else {
                continue;
            };
            applies += usize::from(llm.request(s, Some(trace)).is_ok());
            let gated = matches!(
                e.outcome,
                evalstream_evaluators::evaluator::Outcome::Skipped {
                    reason: evalstream_evaluators::evaluator::SkipReason::Condition,
                    ..
                }
            );
            expected += usize::from(!gated && llm.request(s, Some(trace)).is_ok());
        }
    }
    assert!(
        expected > 0 && expected < applies,
        "the corpus has grounded and ungrounded answers: {expected} of {applies}"
    );
    produce(&address, "input", &messages);
    let dir = temp_dir("cascade");
    let worker = Worker::start_with_sections(
        &dir,
        "w",
        &address,
        &format!(
            "evaluators: {evaluators}\ntraces: {{ quiet_seconds: 0.5, max_wait_seconds: 20 }}"
        ),
    );
    let verdicts = |records: &[Record]| {
        output_attributes(records, &["gen_ai.evaluation.name"])
            .into_iter()
            .filter(|v| v[0].as_deref() == Some("faithfulness"))
            .count()
    };
    let records = read_topic(&address, "output", Duration::from_secs(60), |r| {
        verdicts(r) >= expected
    });
    wait_for(Duration::from_secs(30), "every message finished", || {
        worker.metric("evalstream_in_flight_messages") == Some(0.0)
    });
    assert_eq!(verdicts(&records), expected);
    let sent = judge.received();
    assert_eq!(sent.len(), expected, "one call per gated-in span");
    // The hallucinated RAG answer is among them; the grounded one never is.
    let bodies: Vec<String> = sent.iter().map(|b| b.to_string()).collect();
    assert!(bodies.iter().any(|b| b.contains("Leonardo da Vinci")));
    assert!(!bodies.iter().any(|b| b.contains("330 metres tall [1]")));
    let (code, stderr) = worker.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let committed = committed_total(&address, "g");
    assert_eq!(committed, messages.len() as i64);
}

#[test]
fn a_long_judge_outage_leaves_the_cheap_scorers_and_commits_running() {
    use evalstream::pipeline::judge::stand_in as server;
    let (_one_mock_at_a_time, cluster) = mock_setup();
    let address = cluster.bootstrap_servers();
    let (url, judge) = server::start().unwrap();
    judge.set_down(true);
    let dir = temp_dir("judge-outage");
    // One call at a time, so the breaker opens after exactly three failures; then a cooldown
    // far longer than the test.
    let worker = Worker::start_with_sections(
        &dir,
        "w",
        &address,
        &format!(
            "evaluators:\n  - type: refusal\n  - type: llm_judge\n    name: tox\n    template: toxicity\n    endpoint: {url}\n    model: judge-model\n    max_concurrency: 1\n    max_retries: 0\n    breaker_failures: 3\n    breaker_cooldown_seconds: 3600"
        ),
    );
    let mut produced = 0;
    for (round, seed) in [61_000, 62_000].into_iter().enumerate() {
        let (_, messages) = loadgen_messages(30, seed);
        produce(&address, "input", &messages);
        produced += messages.len() as i64;
        wait_for(
            Duration::from_secs(60),
            &format!("round {round}: every input committed while the judge is down"),
            || committed_total(&address, "g") == produced,
        );
    }
    assert_eq!(
        worker.metric("evalstream_judge_circuit_open{evaluator=\"tox\"}"),
        Some(1.0)
    );
    assert_eq!(
        judge.received().len(),
        3,
        "no calls while the circuit is open"
    );
    let (requests, _) = loadgen_messages(30, 61_000);
    let (more, _) = loadgen_messages(30, 62_000);
    let chats: Vec<_> = requests
        .iter()
        .chain(&more)
        .flat_map(|r| span::spans(r).collect::<Vec<_>>())
        .filter(|s| s.kind() == span::OperationKind::Chat)
        .collect();
    let judged = chats
        .iter()
        .filter(|s| s.output_text().is_some_and(|t| !t.trim().is_empty()))
        .count();
    let count = |outcomes: &[Vec<Option<String>>], name: &str| {
        outcomes
            .iter()
            .filter(|v| v[0].as_deref() == Some(name))
            .count()
    };
    let keys = ["gen_ai.evaluation.name", "error.type"];
    let records = read_topic(&address, "output", Duration::from_secs(60), |r| {
        let outcomes = output_attributes(r, &keys);
        count(&outcomes, "tox") >= judged && count(&outcomes, "refusal") >= judged
    });
    let outcomes = output_attributes(&records, &keys);
    let errors: HashSet<Option<String>> = outcomes
        .iter()
        .filter(|v| v[0].as_deref() == Some("tox"))
        .map(|v| v[1].clone())
        .collect();
    assert_eq!(
        errors,
        HashSet::from([
            Some("judge_server_error".to_owned()),
            Some("judge_circuit_open".to_owned())
        ]),
        "verdicts during the outage are errors"
    );
    assert_eq!(count(&outcomes, "tox"), judged, "every call has a verdict");
    assert!(
        count(&outcomes, "refusal") >= judged,
        "the cheap scorer judged every answer"
    );
    let (code, stderr) = worker.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

/// One chat span per message, a refusal with probability `refusals(i)` for message `i`.
fn refusal_stream(count: usize, refusals: impl Fn(usize) -> f64) -> Vec<Outgoing> {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    (0..count)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let refused = ((seed >> 11) as f64 / (1u64 << 53) as f64) < refusals(i);
            let answer = if refused {
                "I'm sorry, but I can't help with that request."
            } else {
                "The Eiffel Tower is 330 metres tall."
            };
            let mut trace_id = vec![0u8; 16];
            trace_id[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            trace_id[8..].copy_from_slice(&seed.to_be_bytes());
            let span = Span {
                trace_id: trace_id.clone(),
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                name: "chat gpt-4o".into(),
                start_time_unix_nano: 1_800_000_000_000_000_000,
                end_time_unix_nano: 1_800_000_001_000_000_000,
                attributes: vec![
                    otlp::kv_str("gen_ai.operation.name", "chat"),
                    otlp::kv_str("gen_ai.request.model", "gpt-4o"),
                    otlp::kv_str("gen_ai.completion.0.role", "assistant"),
                    otlp::kv_str("gen_ai.completion.0.content", answer),
                ],
                ..Default::default()
            };
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![span],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            (Some(otlp::hex(&trace_id)), request.encode_to_vec())
        })
        .collect()
}

/// A Prometheus server scraping one worker every second, with evalstream's alert rules.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, worker_port: u16, stream: &str) -> Prometheus {
        let port = free_port();
        let rules = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/prometheus/evalstream.rules.yaml")
            .canonicalize()
            .unwrap();
        let config = dir.join("prometheus.yaml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [\"{}\"]\nscrape_configs:\n  - job_name: evalstream\n    static_configs:\n      - targets: [\"127.0.0.1:{worker_port}\"]\n        labels: {{ stream: {stream} }}\n",
                rules.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus is installed (scripts/install-prometheus.sh)");
        let prometheus = Prometheus { child, port };
        wait_for(Duration::from_secs(30), "Prometheus is ready", || {
            http(port, "GET", "/-/ready").is_some_and(|(status, _)| status == 200)
        });
        prometheus
    }

    /// The result vector of an instant query (empty on error).
    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        self.try_query(promql).unwrap_or_default()
    }

    /// The result vector of an instant query, or Prometheus' error.
    fn try_query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let url = format!(
            "/api/v1/query?query={}",
            promql
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        );
        let (_, body) = http(self.port, "GET", &url).ok_or("no answer")?;
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if json["status"] != "success" {
            return Err(format!("{}: {}", json["errorType"], json["error"]));
        }
        Ok(json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one stream through a worker scraped by Prometheus; returns once every message is
/// evaluated and Prometheus has scraped the final state, with both still running.
fn drift_run(name: &str, stream: &[Outgoing]) -> (Worker, Prometheus, PathBuf) {
    let dir = temp_dir(name);
    let (_one_mock_at_a_time, cluster) = mock_setup();
    let address = cluster.bootstrap_servers();
    produce(&address, "input", stream);
    let worker = Worker::start_with_sections(
        &dir,
        "w",
        &address,
        "evaluators: [ { type: refusal } ]\ndrift: { evaluators: [refusal], segments: [model], warmup: 200, false_alarm_budget: 10000000 }",
    );
    let prometheus = Prometheus::start(&dir, worker.metrics_port, name);
    wait_for(Duration::from_secs(60), "every message evaluated", || {
        worker.metric("evalstream_messages_consumed_total") == Some(stream.len() as f64)
            && worker.metric("evalstream_in_flight_messages") == Some(0.0)
    });
    // Prometheus holds the final state once it sees every score (scrapes and rules run every
    // second; leave a few rounds).
    let scores = format!("evalstream_evaluation_results_total{{stream=\"{name}\"}}");
    wait_for(
        Duration::from_secs(30),
        "Prometheus scraped every score",
        || {
            let total: f64 = prometheus
                .query(&format!("sum({scores})"))
                .first()
                .and_then(|r| r["value"][1].as_str()?.parse().ok())
                .unwrap_or(0.0);
            total == stream.len() as f64
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    // The mock cluster's lock is released here; the worker has nothing left to read.
    (worker, prometheus, dir)
}

#[test]
fn a_falling_pass_rate_fires_the_drift_alert_in_prometheus_and_a_stable_one_does_not() {
    let alerts = |prometheus: &Prometheus| -> Vec<serde_json::Value> {
        prometheus.query("max_over_time(ALERTS{alertname=\"EvalstreamScoreDrift\"}[10m])")
    };
    // Stable: 10% refusals throughout, 1,600 answers.
    let (worker, prometheus, _) = drift_run("stable", &refusal_stream(1_600, |_| 0.1));
    let watched = prometheus.query("evalstream_score_drift{stream=\"stable\"}");
    assert_eq!(watched.len(), 2, "both directions are watched: {watched:?}");
    let statistics = prometheus.query("evalstream_score_drift_statistic{stream=\"stable\"} < 1");
    assert_eq!(
        statistics.len(),
        2,
        "two Bernoulli CUSUMs, below their thresholds"
    );
    assert!(
        prometheus
            .query("evalstream_score_warming_up{stream=\"stable\"} == 0")
            .len()
            == 1,
        "the series is past its warm-up"
    );
    assert_eq!(
        alerts(&prometheus),
        Vec::<serde_json::Value>::new(),
        "no alert on a stable stream"
    );
    drop((worker, prometheus));

    // Falling: 10% refusals for 600 answers, then half of them refusals.
    let stream = refusal_stream(1_600, |i| if i < 600 { 0.1 } else { 0.5 });
    let (worker, prometheus, _) = drift_run("falling", &stream);
    wait_for(Duration::from_secs(30), "the drift alert fires", || {
        prometheus
            .query("ALERTS{alertname=\"EvalstreamScoreDrift\",alertstate=\"firing\"}")
            .len()
            == 1
    });
    let firing = &alerts(&prometheus)[0]["metric"];
    assert_eq!(firing["evaluator"], "refusal");
    assert_eq!(firing["model"], "gpt-4o");
    assert_eq!(
        firing["direction"], "down",
        "more refusals: the refusal pass rate fell"
    );
    assert_eq!(firing["stream"], "falling");
    // The worker's own view agrees, and an acknowledgement lowers the flag: the series learns
    // a new baseline and the alert resolves.
    // Every query of the Grafana dashboard is valid PromQL against these series, and its drift
    // panels show this drift.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/evalstream.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut answered = HashMap::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$evaluator", ".*")
                .replace("$__rate_interval", "1m");
            let result = prometheus
                .try_query(&expr)
                .unwrap_or_else(|e| panic!("{}: {expr}: {e}", panel["title"]));
            *answered
                .entry(panel["title"].as_str().unwrap().to_owned())
                .or_insert(0) += result.len();
        }
    }
    assert_eq!(answered["Drifted series"], 1, "{answered:?}");
    assert!(
        answered["Baseline and recent pass rate"] >= 2,
        "{answered:?}"
    );
    assert!(answered["Pass rate by evaluator"] >= 1, "{answered:?}");
    let (_, listing) = http(worker.metrics_port, "GET", "/drift").unwrap();
    assert!(listing.contains("\"status\":\"drifted\""), "{listing}");
    assert_eq!(worker.metric("evalstream_drift_alarms_total"), Some(1.0));
    let (status, body) = http(
        worker.metrics_port,
        "POST",
        "/drift/ack?evaluator=refusal&model=gpt-4o",
    )
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "{\"acknowledged\":1}"));
    let (status, body) = http(worker.metrics_port, "POST", "/drift/ack?team=a").unwrap();
    assert_eq!(status, 400, "{body}");
    wait_for(Duration::from_secs(30), "the alert resolves", || {
        prometheus
            .query("ALERTS{alertname=\"EvalstreamScoreDrift\"}")
            .is_empty()
    });
}

#[test]
fn drift_baselines_survive_a_restart_through_the_state_topic() {
    let dir = temp_dir("drift-state");
    let (_one_mock_at_a_time, cluster) = mock_setup();
    let address = cluster.bootstrap_servers();
    let drift = "evaluators: [ { type: refusal } ]\ndrift: { segments: [model], warmup: 200, false_alarm_budget: 10000000, state_interval_seconds: 1 }";
    produce(&address, "input", &refusal_stream(400, |_| 0.1));
    let first = Worker::start_with_sections(&dir, "w1", &address, drift);
    wait_for(
        Duration::from_secs(60),
        "the stable stream is evaluated",
        || {
            first.metric("evalstream_messages_consumed_total") == Some(400.0)
                && first.metric("evalstream_in_flight_messages") == Some(0.0)
        },
    );
    let (code, stderr) = first.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let saved = read_topic(
        &address,
        "evalstream_drift_state",
        Duration::from_secs(10),
        |r| !r.is_empty(),
    );
    assert!(
        !saved.is_empty(),
        "the series' state was written on the way out"
    );

    // A new worker of the group starts with the learned baseline: the series is watched at
    // once, before any new score.
    let second = Worker::start_with_sections(&dir, "w2", &address, drift);
    let status = || {
        http(second.metrics_port, "GET", "/drift")
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v.as_array()?.first().cloned())
    };
    wait_for(Duration::from_secs(30), "the series is restored", || {
        status().is_some()
    });
    let series = status().unwrap();
    assert_eq!(series["status"], "watching", "{series}");
    assert_eq!(series["segments"]["model"], "gpt-4o");
    assert!(
        series["baseline"]["scores"].as_u64().unwrap() >= 200,
        "{series}"
    );
    // Half refusals from now on: against the restored baseline this is a drift. (Learning a
    // baseline afresh from these scores would have raised nothing.)
    produce(&address, "input", &refusal_stream(300, |_| 0.5));
    wait_for(
        Duration::from_secs(60),
        "the restored series raises the alarm",
        || second.metric("evalstream_drift_alarms_total") == Some(1.0),
    );
    assert_eq!(status().unwrap()["direction"], "down");
}

// Hardening (issue 13): hostile and oversized inputs must not stop commits or lose evaluations.

/// librdkafka's mock broker with only the given topics (two partitions each), under the lock.
fn mock_with_topics(
    topics: &[&str],
) -> (
    std::sync::MutexGuard<'static, ()>,
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) {
    let guard = MOCK_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    for topic in topics {
        cluster.create_topic(topic, 2, 1).unwrap();
    }
    (guard, cluster)
}

/// Produces with the given extra producer properties.
fn produce_with(broker: &str, topic: &str, messages: &[Outgoing], properties: &[(&str, &str)]) {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true");
    for (k, v) in properties {
        config.set(*k, *v);
    }
    let p: ThreadedProducer<DefaultProducerContext> = config.create().unwrap();
    for (key, payload) in messages {
        let mut r: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).payload(payload);
        if let Some(k) = key {
            r = r.key(k);
        }
        p.send(r).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// An undecodable 1.5 MB record could not be dead-lettered (its copy was over the producer's
/// 1,000,000-byte limit): it stayed pending, commits stopped at it for good, and every restart
/// replayed everything after it.
#[test]
fn an_oversized_bad_record_is_dead_lettered_truncated_and_commits_pass_it() {
    let (_one_mock_at_a_time, cluster) = mock_setup();
    let address = cluster.bootstrap_servers();
    let (requests, mut messages) = loadgen_messages(20, 90_000);
    // 0xff opens a field of wire type 7, which protobuf does not have: undecodable.
    let garbage: Vec<u8> = (0..1_500_000u32).map(|i| 0x80 | (i % 97) as u8).collect();
    let mut garbage = garbage;
    garbage[0] = 0xff;
    messages.insert(5, (Some("huge".into()), garbage.clone()));
    produce_with(
        &address,
        "input",
        &messages,
        &[("message.max.bytes", "2000000")],
    );
    let dir = temp_dir("oversized-dead-letter");
    let worker = Worker::start(&dir, "w", &address, "g", Encoding::OtlpProto);
    let set = spec::build_set(&spec::default_specs()).unwrap();
    let expected = expected_outputs(&set, &requests);
    let records = read_topic(&address, "output", Duration::from_secs(60), |r| {
        output_span_ids(r).into_iter().collect::<HashSet<_>>().len() >= expected.len()
    });
    let got: HashSet<Vec<u8>> = output_span_ids(&records).into_iter().collect();
    assert!(
        expected.keys().all(|k| got.contains(k)),
        "evaluations missing"
    );
    let dead = read_topic(&address, "dlq", Duration::from_secs(30), |r| !r.is_empty());
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.key.as_deref(), Some("huge"));
    assert_eq!(letter.headers["evalstream.error.type"], "decode");
    assert_eq!(letter.headers["evalstream.source.size"], "1500000");
    assert_eq!(letter.headers["evalstream.dead_letter.truncated"], "true");
    assert!(letter.headers.contains_key("evalstream.source.offset"));
    assert!(
        letter.payload.len() < 1_000_000 && letter.payload.len() > 900_000,
        "{}",
        letter.payload.len()
    );
    assert_eq!(letter.payload[..], garbage[..letter.payload.len()]);
    // Every offset is committed, past the bad record.
    wait_for(Duration::from_secs(30), "commits pass the record", || {
        committed_total(&address, "g") == messages.len() as i64
    });
    assert_eq!(
        worker.metric("evalstream_undeliverable_messages_total"),
        Some(0.0)
    );
    let (code, stderr) = worker.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

/// A valid trace with 300 LLM spans made one 1.21 MB output record: the producer refused it, all
/// 1,500 evaluations were lost and the input was dead-lettered.
#[test]
fn a_trace_with_300_llm_spans_gets_every_evaluation_in_records_under_the_limit() {
    let (_one_mock_at_a_time, cluster) = mock_setup();
    let address = cluster.bootstrap_servers();
    let templates = loadgen::templates().unwrap();
    let set = spec::build_set(&spec::default_specs()).unwrap();
    // The corpus trace whose chat span yields the most evaluator spans, its chat span repeated.
    let (mut request, chat) = templates
        .iter()
        .filter_map(|t| {
            let chat = span::spans(t)
                .filter(|s| s.kind() == span::OperationKind::Chat)
                .max_by_key(|s| {
                    let mut e = Vec::new();
                    set.evaluate(s, &mut e);
                    e.iter().filter(|e| to_otlp::emits_span(e)).count()
                })?
                .raw()
                .clone();
            Some((t.clone(), chat))
        })
        .next()
        .unwrap();
    let spans = &mut request.resource_spans[0].scope_spans[0].spans;
    spans.clear();
    for i in 0..300u64 {
        let mut s = chat.clone();
        s.span_id = (0x1000 + i).to_be_bytes().to_vec();
        s.parent_span_id = Vec::new();
        spans.push(s);
    }
    let expected = expected_outputs(&set, std::slice::from_ref(&request));
    assert!(expected.len() >= 900, "{} evaluator spans", expected.len());
    let key = otlp::hex(&chat.trace_id);
    produce(&address, "input", &[(Some(key), request.encode_to_vec())]);
    let dir = temp_dir("split-outputs");
    let worker = Worker::start(&dir, "w", &address, "g", Encoding::OtlpProto);
    let records = read_topic(&address, "output", Duration::from_secs(60), |r| {
        count_spans(r) >= expected.len()
    });
    let whole: usize = records.iter().map(|r| r.payload.len()).sum();
    assert!(
        whole > 1_000_000,
        "the evaluations need several records: {whole} bytes"
    );
    assert!(records.len() >= 2);
    for r in &records {
        assert!(
            r.payload.len() < 1_000_000,
            "a record of {} bytes",
            r.payload.len()
        );
    }
    let got: HashSet<Vec<u8>> = output_span_ids(&records).into_iter().collect();
    let want: HashSet<Vec<u8>> = expected.keys().cloned().collect();
    assert_eq!(got, want);
    assert_eq!(
        worker.metric("evalstream_dlq_messages_total{reason=\"delivery\"}"),
        None
    );
    wait_for(Duration::from_secs(30), "the input is committed", || {
        committed_total(&address, "g") == 1
    });
}

/// librdkafka was built with zlib only: a zstd batch from the collector ("Decompression … Not
/// implemented") stalled its partition for ever while `/readyz` stayed 200.
#[test]
fn compressed_batches_in_every_codec_the_collector_writes_are_read() {
    let (_one_mock_at_a_time, cluster) = mock_setup();
    let address = cluster.bootstrap_servers();
    let set = spec::build_set(&spec::default_specs()).unwrap();
    let mut all_requests = Vec::new();
    for (i, codec) in ["zstd", "lz4", "snappy", "gzip"].into_iter().enumerate() {
        let (requests, messages) = loadgen_messages(25, 100_000 + 1_000 * i as u64);
        produce_with(&address, "input", &messages, &[("compression.type", codec)]);
        all_requests.extend(requests);
    }
    let expected = expected_outputs(&set, &all_requests);
    let dir = temp_dir("codecs");
    let worker = Worker::start(&dir, "w", &address, "g", Encoding::OtlpProto);
    let records = read_topic(&address, "output", Duration::from_secs(60), |r| {
        output_span_ids(r).into_iter().collect::<HashSet<_>>().len() >= expected.len()
    });
    let got: HashSet<Vec<u8>> = output_span_ids(&records).into_iter().collect();
    assert_eq!(got, expected.keys().cloned().collect::<HashSet<_>>());
    assert_eq!(worker.metric("evalstream_decode_errors_total"), Some(0.0));
    let (status, body) = http(worker.metrics_port, "GET", "/readyz").unwrap();
    assert_eq!(status, 200, "{body}");
}

/// A subscription that can never be served (a missing topic) left `/readyz` at 200 while nothing
/// was consumed, with the errors logged at debug.
#[test]
fn a_missing_input_topic_makes_readyz_say_why() {
    let (_one_mock_at_a_time, cluster) = mock_with_topics(&["output", "logs", "dlq"]);
    let address = cluster.bootstrap_servers();
    let dir = temp_dir("missing-topic");
    let worker = Worker::start(&dir, "w", &address, "g", Encoding::OtlpProto);
    let mut last = None;
    wait_for(
        Duration::from_secs(30),
        "readyz names the missing topic",
        || {
            last = http(worker.metrics_port, "GET", "/readyz");
            last.as_ref().is_some_and(|(status, body)| {
                *status == 503 && body.contains("not ready") && body.contains("nknown topic")
            })
        },
    );
    let log = std::fs::read_to_string(dir.join("w.log")).unwrap();
    assert!(log.contains("WARN"), "the error is logged at warn: {log}");
}

// Reliability on Apache Kafka (issue 15).

/// Waits until `/readyz` answers `status`.
fn wait_ready(worker: &Worker, status: u16, timeout: Duration) {
    wait_for(timeout, &format!("/readyz {status}"), || {
        http(worker.metrics_port, "GET", "/readyz").is_some_and(|(s, _)| s == status)
    });
}

/// The broker is SIGKILLed mid-stream and comes back on the same storage a few seconds later:
/// the worker rides it out (`/readyz` 503, then 200) and every evaluation arrives.
#[test]
fn a_sigkilled_broker_restarted_on_its_storage_loses_nothing() {
    let mut broker = setup(2);
    let address = broker.address();
    let (requests, messages) = loadgen_messages(1200, 120_000);
    let (first, second) = messages.split_at(600);
    let set = spec::build_set(&spec::default_specs()).unwrap();
    let expected = expected_outputs(&set, &requests);
    let dir = temp_dir("broker-sigkill");
    let worker = Worker::start(&dir, "w", &address, "g", Encoding::OtlpProto);
    produce(&address, "input", first);
    wait_for(Duration::from_secs(60), "progress before the kill", || {
        worker
            .metric("evalstream_output_records_total")
            .unwrap_or(0.0)
            >= 100.0
    });
    broker.kill();
    wait_ready(&worker, 503, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        std::fs::read_to_string(dir.join("w.log"))
            .unwrap()
            .lines()
            .all(|l| !l.contains("panicked")),
        "the worker panicked during the outage"
    );
    broker.restart();
    wait_ready(&worker, 200, Duration::from_secs(60));
    produce(&address, "input", second);
    let records = read_topic(&address, "output", Duration::from_secs(120), |r| {
        output_span_ids(r).into_iter().collect::<HashSet<_>>().len() >= expected.len()
    });
    let got: HashSet<Vec<u8>> = output_span_ids(&records).into_iter().collect();
    let missing = expected.keys().filter(|k| !got.contains(*k)).count();
    assert_eq!(
        missing, 0,
        "every evaluation arrives after the broker's restart"
    );
    wait_for(Duration::from_secs(30), "everything is committed", || {
        committed_total(&address, "g") == messages.len() as i64
    });
    assert_eq!(
        worker.metric("evalstream_input_offset_gaps_total"),
        Some(0.0)
    );
    let (code, stderr) = worker.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

/// Three workers in one group, one joining and one leaving while traces stream in: nothing is
/// lost, and since a revoked partition's work is drained and committed before it is handed over,
/// nothing is evaluated twice.
#[test]
fn workers_joining_and_leaving_under_load_lose_and_repeat_nothing() {
    let broker = setup(6);
    let address = broker.address();
    let (requests, messages) = loadgen_messages(3000, 130_000);
    let set = spec::build_set(&spec::default_specs()).unwrap();
    let expected = expected_outputs(&set, &requests);
    let dir = temp_dir("join-leave");
    let a = Worker::start(&dir, "a", &address, "g", Encoding::OtlpProto);
    let b = Worker::start(&dir, "b", &address, "g", Encoding::OtlpProto);
    wait_ready(&a, 200, Duration::from_secs(30));
    wait_ready(&b, 200, Duration::from_secs(30));
    // Traffic over several seconds, in ten bursts, while the group changes.
    let producing = {
        let address = address.clone();
        std::thread::spawn(move || {
            for burst in messages.chunks(300) {
                produce(&address, "input", burst);
                std::thread::sleep(Duration::from_millis(400));
            }
        })
    };
    wait_for(Duration::from_secs(60), "a and b make progress", || {
        [&a, &b]
            .iter()
            .all(|w| w.metric("evalstream_output_records_total").unwrap_or(0.0) > 0.0)
    });
    let c = Worker::start(&dir, "c", &address, "g", Encoding::OtlpProto);
    wait_for(Duration::from_secs(60), "c joins and consumes", || {
        c.metric("evalstream_messages_consumed_total")
            .unwrap_or(0.0)
            > 0.0
    });
    let gaps = |w: &Worker| w.metric("evalstream_input_offset_gaps_total");
    assert_eq!(gaps(&a), Some(0.0));
    let (code, stderr) = a.terminate(); // leaves the group cleanly, mid-stream
    assert_eq!(code, Some(0), "{stderr}");
    producing.join().unwrap();
    let (records, read_gaps) = {
        wait_for(Duration::from_secs(120), "every evaluation arrives", || {
            committed_total_of(&address, "g", 6) == 3000
        });
        read_all(&address, "output", 6, Duration::from_secs(60))
    };
    assert!(read_gaps.is_empty(), "{read_gaps:?}");
    let ids = output_span_ids(&records);
    let unique: HashSet<Vec<u8>> = ids.iter().cloned().collect();
    let missing = expected.keys().filter(|k| !unique.contains(*k)).count();
    let duplicates = ids.len() - unique.len();
    eprintln!(
        "join/leave: {} evaluator spans expected, {} received, {duplicates} duplicates, {missing} missing",
        expected.len(),
        ids.len()
    );
    assert_eq!(missing, 0);
    assert_eq!(duplicates, 0, "a clean handover replays nothing");
    for w in [&b, &c] {
        assert_eq!(gaps(w), Some(0.0));
    }
}

/// Offsets the group committed on the first `partitions` partitions of `input`, summed.
fn committed_total_of(broker: &str, group: &str, partitions: i32) -> i64 {
    committed_vs_end(broker, group, "input", partitions)
        .iter()
        .map(|(c, _)| (*c).max(0))
        .sum()
}

/// librdkafka properties, as pairs.
type ClientProperties<'a> = Vec<(&'a str, &'a str)>;

/// The corpus through a broker reached over TLS: `SASL_SSL` with SCRAM-SHA-512, or mutual TLS.
/// Topics are made and read over the plain listener.
#[test]
fn the_worker_consumes_and_produces_over_sasl_ssl_and_mutual_tls() {
    let broker = Broker::start_secured();
    for topic in ["input", "output", "logs", "dlq"] {
        broker.create_topic(topic, 2);
    }
    let secured = broker.secured.as_ref().unwrap();
    let ca = secured.tls.path("ca.pem");
    let (cert, key) = (
        secured.tls.path("client.pem"),
        secured.tls.path("client.key"),
    );
    let (user, password) = SCRAM_USER;
    let set = spec::build_set(&spec::default_specs()).unwrap();
    let (requests, messages) = corpus_messages(Encoding::OtlpProto);
    produce(&broker.address(), "input", &messages);
    let expected = expected_outputs(&set, &requests);
    let dir = temp_dir("secured");
    let runs: [(&str, u16, ClientProperties<'_>); 2] = [
        (
            "sasl_ssl",
            secured.sasl_ssl,
            vec![
                ("security.protocol", "sasl_ssl"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", user),
                ("sasl.password", password),
                ("ssl.ca.location", &ca),
            ],
        ),
        (
            "mtls",
            secured.mtls,
            vec![
                ("security.protocol", "ssl"),
                ("ssl.ca.location", &ca),
                ("ssl.certificate.location", &cert),
                ("ssl.key.location", &key),
            ],
        ),
    ];
    for (name, port, client) in runs {
        let worker = Worker::start_configured(
            &dir,
            name,
            &format!("127.0.0.1:{port}"),
            name,
            Encoding::OtlpProto,
            "",
            "",
            &client,
        );
        wait_for(
            Duration::from_secs(60),
            &format!("{name}: every input consumed"),
            || {
                worker.metric("evalstream_messages_consumed_total") == Some(messages.len() as f64)
                    && worker.metric("evalstream_in_flight_messages") == Some(0.0)
            },
        );
        let (code, stderr) = worker.terminate();
        assert_eq!(code, Some(0), "{name}: {stderr}");
    }
    // Both runs wrote every evaluation (each run is its own consumer group).
    let records = read_topic(&broker.address(), "output", Duration::from_secs(30), |r| {
        count_spans(r) >= 2 * expected.len()
    });
    let ids = output_span_ids(&records);
    assert_eq!(ids.len(), 2 * expected.len());
    assert_eq!(
        ids.into_iter().collect::<HashSet<_>>(),
        expected.keys().cloned().collect::<HashSet<_>>()
    );
}

/// A wrong password must give a clear error naming the listener and the mechanism, at once and
/// on `/readyz`, not a silent hang.
#[test]
fn a_wrong_sasl_password_is_named_on_readyz_and_in_the_log() {
    let broker = Broker::start_secured();
    for topic in ["input", "output", "logs", "dlq"] {
        broker.create_topic(topic, 2);
    }
    let secured = broker.secured.as_ref().unwrap();
    let ca = secured.tls.path("ca.pem");
    let dir = temp_dir("wrong-password");
    let worker = Worker::start_configured(
        &dir,
        "w",
        &format!("127.0.0.1:{}", secured.sasl_ssl),
        "g",
        Encoding::OtlpProto,
        "",
        "",
        &[
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", SCRAM_USER.0),
            ("sasl.password", "not-the-password"),
            ("ssl.ca.location", &ca),
        ],
    );
    let listener = format!("sasl_ssl://127.0.0.1:{}", secured.sasl_ssl);
    let mut last = None;
    wait_for(
        Duration::from_secs(30),
        "readyz names the failed authentication",
        || {
            last = http(worker.metrics_port, "GET", "/readyz");
            last.as_ref().is_some_and(|(status, body)| {
                *status == 503
                    && body.contains("SASL authentication")
                    && body.contains("SCRAM-SHA-512")
                    && body.contains(&listener)
            })
        },
    );
    let log = std::fs::read_to_string(dir.join("w.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("SCRAM-SHA-512") && l.contains(&listener)),
        "{log}"
    );
    assert!(!log.contains("not-the-password"), "the password is logged");
}

/// Issue 16, item 3: with `receivers.kafka.logs`, the official instrumentation's `event_only`
/// export — spans without content on the spans topic, `gen_ai.client.inference.operation.details`
/// log records on a logs topic (fixtures made by the real instrumentation,
/// `tests/fixtures/logs/generate.py`) — is evaluated as if the spans had carried the content: the
/// output holds exactly the offline evaluations of the joined spans (refusal, pii and json_valid
/// score rather than skip). The logs message is committed once its events joined and were
/// evaluated; a logs message whose event's span never comes is committed once the event expired
/// (counted).
#[test]
fn log_events_on_a_logs_topic_give_their_spans_content() {
    use evalstream_evaluators::logs;
    let fixture = |name: &str| {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/logs")
                .join(name),
        )
        .unwrap()
    };
    let traces_bytes = fixture("event_only.traces.pb");
    let logs_bytes = fixture("event_only.logs.pb");
    let traces = ExportTraceServiceRequest::decode(&traces_bytes[..]).unwrap();
    let log_request = logs::decode_logs(&logs_bytes, Encoding::OtlpProto)
        .unwrap()
        .remove(0);
    // An event of a span that never comes.
    let mut orphan = log_request.clone();
    orphan.resource_logs[0].scope_logs[0]
        .log_records
        .truncate(1);
    orphan.resource_logs[0].scope_logs[0].log_records[0].span_id = vec![0xee; 8];

    let set = spec::build_set(&spec::default_specs()).unwrap();
    let mut joined = traces.clone();
    let mut events = logs::by_span(logs::content_events(&log_request).events);
    assert_eq!(logs::attach(&mut joined, |id| events.remove(id)), 3);
    let want = expected_events(&set, std::slice::from_ref(&joined));
    assert!(
        want.len() > expected_events(&set, std::slice::from_ref(&traces)).len(),
        "the joined content is what gets evaluated"
    );

    let broker = setup(2);
    broker.create_topic("app_logs", 2);
    let key = otlp::hex(&traces.resource_spans[0].scope_spans[0].spans[0].trace_id);
    produce(
        &broker.address(),
        "app_logs",
        &[
            (Some(key.clone()), log_request.encode_to_vec()),
            (Some("orphan".into()), orphan.encode_to_vec()),
        ],
    );
    let dir = temp_dir("kafka-logs");
    let worker = Worker::start_configured(
        &dir,
        "w",
        &broker.address(),
        "g",
        Encoding::OtlpProto,
        "    logs: { topics: [app_logs] }",
        "logs: { span_wait_seconds: 30, event_wait_seconds: 6 }",
        &[],
    );
    // The events come first and wait for their spans.
    wait_for(
        Duration::from_secs(60),
        "the logs were not consumed",
        || worker.metric("evalstream_messages_consumed_total") == Some(2.0),
    );
    produce(
        &broker.address(),
        "input",
        &[(Some(key), traces.encode_to_vec())],
    );
    let records = read_topic(&broker.address(), "logs", Duration::from_secs(60), |r| {
        output_events(r).len() >= want.len()
    });
    let got: HashSet<_> = output_events(&records).into_iter().collect();
    assert_eq!(got, want, "the evaluations of the joined spans");
    wait_for(
        Duration::from_secs(60),
        "every input was committed, the orphan's after it expired",
        || {
            committed_vs_end(&broker.address(), "g", "app_logs", 2)
                .iter()
                .chain(&committed_vs_end(&broker.address(), "g", "input", 2))
                .all(|(c, end)| *end == 0 || c == end)
        },
    );
    assert_eq!(
        worker.metric("evalstream_log_events_total{outcome=\"joined\"}"),
        Some(3.0)
    );
    assert_eq!(
        worker.metric("evalstream_log_events_total{outcome=\"expired\"}"),
        Some(1.0)
    );
    assert_eq!(
        worker.metric("evalstream_join_spans_total{release=\"joined\"}"),
        Some(3.0)
    );
    let (code, stderr) = worker.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

/// The tail-sampling tests' policy: errors, failed evaluations, experiments, the rest dropped;
/// kept traces redacted with the default rules and written whole to `sampled`.
const SAMPLING: &str = "traces: { quiet_seconds: 1, max_wait_seconds: 20 }
sampling:
  exporters: [kafka/sampled]
  rules:
    - status: error
    - failed: '*'
    - attribute_present: experiment_id
    - drop
redaction: {}
";

/// What [`SAMPLING`]'s rules select, by trace: the rule that decides, worked out here from the
/// spans and the evaluators' own verdicts (`None`: dropped).
fn expected_sampling(
    set: &EvaluatorSet,
    traces: &[ExportTraceServiceRequest],
) -> HashMap<Vec<u8>, Option<&'static str>> {
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    let mut expected = HashMap::new();
    for trace in traces {
        let (mut error, mut failed, mut experiment) = (false, false, false);
        for s in span::spans(trace) {
            error |= s.status().code == StatusCode::Error;
            experiment |= otlp::find(&s.raw().attributes, "experiment_id").is_some();
            let mut evaluations = Vec::new();
            set.evaluate(&s, &mut evaluations);
            failed |= evaluations.iter().any(|e| {
                matches!(&e.outcome, evalstream_evaluators::evaluator::Outcome::Scored(score) if !score.passed)
            });
        }
        let rule = if error {
            Some("status:error")
        } else if failed {
            Some("failed:*")
        } else if experiment {
            Some("attribute_present:experiment_id")
        } else {
            None
        };
        let id = span::spans(trace).next().unwrap().trace_id().to_vec();
        expected.insert(id, rule);
    }
    expected
}

/// An email address put into some traces' content, which redaction must mask.
const EMAIL: &str = "jane.doe@example.com";

/// `count` corpus traces with new ids, some with an ERROR span, some tagged with an experiment
/// id, some with an email address in an `input.value` attribute; each trace as two messages in
/// a row (its spans at even, then odd places: no message holds a whole trace).
fn sampling_stream(count: u64, seed: u64) -> (Vec<ExportTraceServiceRequest>, Vec<Outgoing>) {
    use opentelemetry_proto::tonic::trace::v1::Status;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    let (mut traces, _) = loadgen_messages(count, seed);
    for (i, trace) in traces.iter_mut().enumerate() {
        let spans: Vec<_> = trace
            .resource_spans
            .iter_mut()
            .flat_map(|r| &mut r.scope_spans)
            .flat_map(|s| &mut s.spans)
            .collect();
        let n = spans.len();
        for (j, sp) in spans.into_iter().enumerate() {
            if i % 7 == 3 && j == n - 1 {
                sp.status = Some(Status {
                    code: StatusCode::Error as i32,
                    message: "upstream failed".into(),
                });
            }
            if i % 5 == 1 && j == 0 {
                sp.attributes
                    .push(otlp::kv_str("experiment_id", "exp-checkout-42"));
            }
            if i % 3 == 1 && j == 0 {
                sp.attributes.push(otlp::kv_str(
                    "input.value",
                    format!("please reach me at {EMAIL} about the order"),
                ));
            }
        }
    }
    let half = |trace: &ExportTraceServiceRequest, parity: usize| {
        let mut part = trace.clone();
        let mut k = 0;
        for ss in part
            .resource_spans
            .iter_mut()
            .flat_map(|r| &mut r.scope_spans)
        {
            ss.spans.retain(|_| {
                k += 1;
                (k - 1) % 2 == parity
            });
        }
        part
    };
    let key = |t: &ExportTraceServiceRequest| {
        Some(otlp::hex(
            &t.resource_spans[0].scope_spans[0].spans[0].trace_id,
        ))
    };
    let messages = traces
        .iter()
        .flat_map(|t| [0, 1].map(|parity| (key(t), half(t, parity).encode_to_vec())))
        .collect();
    (traces, messages)
}

/// The spans of the `sampled` topic's records, by trace id (with repeats), checking each record's
/// key.
fn sampled_spans(
    records: &[Record],
) -> HashMap<
    Vec<u8>,
    Vec<(
        Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
        opentelemetry_proto::tonic::trace::v1::Span,
    )>,
> {
    let mut traces: HashMap<Vec<u8>, Vec<_>> = HashMap::new();
    for r in records {
        let request = ExportTraceServiceRequest::decode(&r.payload[..])
            .expect("a sampled record holds an ExportTraceServiceRequest");
        for rs in &request.resource_spans {
            let resource = rs.resource.clone().unwrap_or_default().attributes;
            for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                assert_eq!(r.key.as_deref(), Some(otlp::hex(&s.trace_id).as_str()));
                traces
                    .entry(s.trace_id.clone())
                    .or_default()
                    .push((resource.clone(), s.clone()));
            }
        }
    }
    traces
}

/// Whether an attribute key is one the default redaction rules read (message content).
fn is_content_key(key: &str) -> bool {
    [
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
        "gen_ai.prompt",
        "gen_ai.completion",
        "gen_ai.tool.call.",
        "gen_ai.retrieval.",
        "llm.input_messages.",
        "llm.output_messages.",
        "llm.prompts",
        "input.value",
        "output.value",
        "retrieval.documents.",
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

/// Sums a metric's series whose labels contain every one of `labels` (`name="value"`).
fn metric_sum(worker: &Worker, name: &str, labels: &[&str]) -> f64 {
    let (_, body) = http(worker.metrics_port, "GET", "/metrics").unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn start_sampling_worker(dir: &Path, name: &str, broker: &str) -> Worker {
    Worker::start_exporting(
        dir,
        name,
        broker,
        "g",
        (Encoding::OtlpProto, ""),
        &format!("  kafka/sampled:\n    brokers: [\"{broker}\"]\n    traces: {{ topic: sampled }}"),
        SAMPLING,
        &[],
    )
}

#[test]
fn tail_sampling_forwards_exactly_the_selected_traces_whole_and_redacted() {
    let broker = setup(2);
    broker.create_topic("sampled", 2);
    let address = broker.address();
    let (traces, messages) = sampling_stream(120, 9_100);
    let set = spec::build_set(&spec::default_specs()).unwrap();
    let expected = expected_sampling(&set, &traces);
    let kept: HashSet<&Vec<u8>> = expected
        .iter()
        .filter(|(_, rule)| rule.is_some())
        .map(|(id, _)| id)
        .collect();
    let count = |rule: &str| expected.values().filter(|r| **r == Some(rule)).count();
    eprintln!(
        "{} traces: {} kept (errors {}, failed {}, experiments {})",
        traces.len(),
        kept.len(),
        count("status:error"),
        count("failed:*"),
        count("attribute_present:experiment_id")
    );
    for rule in [
        "status:error",
        "failed:*",
        "attribute_present:experiment_id",
    ] {
        assert!(count(rule) > 0, "the stream exercises `{rule}`");
    }
    assert!(kept.len() < traces.len(), "the stream has traces to drop");

    let dir = temp_dir("kafka-sampling");
    let worker = start_sampling_worker(&dir, "w", &address);
    produce(&address, "input", &messages);
    let records = read_topic(&address, "sampled", Duration::from_secs(90), |r| {
        sampled_spans(r).len() >= kept.len()
    });
    wait_for(
        Duration::from_secs(60),
        "every trace decided and every input committed",
        || {
            metric_sum(&worker, "evalstream_sampled_traces_total", &[]) >= traces.len() as f64
                && committed_vs_end(&address, "g", "input", 2)
                    .iter()
                    .all(|(c, end)| c == end)
        },
    );
    // Anything forwarded after the reader stopped would show here.
    let (records_all, _) = read_all(&address, "sampled", 2, Duration::from_secs(30));
    assert!(records_all.len() >= records.len());
    let got = sampled_spans(&records_all);
    let got_ids: HashSet<&Vec<u8>> = got.keys().collect();
    assert_eq!(
        got_ids, kept,
        "the sampled topic holds exactly the selected traces"
    );

    // Whole: every span of each kept trace, once, as it came but for redacted content.
    let mut masked = 0;
    for trace in traces
        .iter()
        .filter(|t| kept.contains(&span::spans(t).next().unwrap().trace_id().to_vec()))
    {
        let id = span::spans(trace).next().unwrap().trace_id().to_vec();
        let forwarded = &got[&id];
        let originals: Vec<_> = span::spans(trace).collect();
        assert_eq!(forwarded.len(), originals.len(), "each span once");
        for original in &originals {
            let (resource, copy) = forwarded
                .iter()
                .find(|(_, s)| s.span_id == original.span_id())
                .expect("every span of a kept trace is forwarded");
            let raw = original.raw();
            let without_content =
                |attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
                    attributes
                        .iter()
                        .filter(|kv| !is_content_key(&kv.key))
                        .cloned()
                        .collect::<Vec<_>>()
                };
            let keys = |attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
                attributes
                    .iter()
                    .map(|kv| kv.key.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(keys(&copy.attributes), keys(&raw.attributes));
            assert_eq!(
                without_content(&copy.attributes),
                without_content(&raw.attributes)
            );
            assert_eq!(
                (
                    &copy.name,
                    &copy.parent_span_id,
                    copy.start_time_unix_nano,
                    copy.end_time_unix_nano,
                    &copy.status,
                    &copy.events
                ),
                (
                    &raw.name,
                    &raw.parent_span_id,
                    raw.start_time_unix_nano,
                    raw.end_time_unix_nano,
                    &raw.status,
                    &raw.events
                )
            );
            assert_eq!(resource, &original.resource().attributes.to_vec());
            if let Some(text) = otlp::find(&copy.attributes, "input.value").and_then(otlp::as_str)
                && text.contains("about the order")
            {
                assert!(text.contains("[email]"), "{text}");
                masked += 1;
            }
        }
    }
    assert!(masked > 0, "some kept trace carried the email");
    for r in &records_all {
        let text = String::from_utf8_lossy(&r.payload);
        assert!(
            !text.contains(EMAIL),
            "the email never reaches the sampled topic"
        );
    }
    // The per-rule metrics match.
    for rule in [
        "status:error",
        "failed:*",
        "attribute_present:experiment_id",
    ] {
        assert_eq!(
            metric_sum(
                &worker,
                "evalstream_sampled_traces_total",
                &[&format!("rule=\"{rule}\""), "decision=\"keep\""]
            ),
            count(rule) as f64,
            "{rule}"
        );
    }
    assert_eq!(
        metric_sum(
            &worker,
            "evalstream_sampled_traces_total",
            &["rule=\"drop\"", "decision=\"drop\""]
        ),
        (traces.len() - kept.len()) as f64
    );
    assert!(
        metric_sum(&worker, "evalstream_redactions_total", &["kind=\"email\""]) >= masked as f64
    );
    // Evaluations still flow to the evaluation exporter, none to the sampled one.
    let events = read_topic(&address, "logs", Duration::from_secs(30), |r| !r.is_empty());
    assert!(!events.is_empty());
    let (code, stderr) = worker.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn sigkill_while_forwarding_kept_traces_and_restart_lose_none() {
    let broker = setup(2);
    broker.create_topic("sampled", 2);
    let address = broker.address();
    let (traces, messages) = sampling_stream(600, 33_000);
    let set = spec::build_set(&spec::default_specs()).unwrap();
    let expected = expected_sampling(&set, &traces);
    let kept: HashSet<Vec<u8>> = expected
        .iter()
        .filter(|(_, rule)| rule.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    let dir = temp_dir("kafka-sampling-sigkill");
    let mut first = start_sampling_worker(&dir, "first", &address);
    // The stream arrives over a few seconds, so decisions are spread out and the kill falls
    // among them.
    let producing = {
        let address = address.clone();
        std::thread::spawn(move || {
            for chunk in messages.chunks(60) {
                produce(&address, "input", chunk);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    wait_for(
        Duration::from_secs(60),
        "the first worker decides some traces",
        || {
            metric_sum(
                &first,
                "evalstream_sampled_traces_total",
                &["decision=\"keep\""],
            ) >= kept.len() as f64 / 4.0
        },
    );
    first.kill(); // SIGKILL: no drain, no final commit.
    producing.join().unwrap();
    let second = start_sampling_worker(&dir, "second", &address);
    wait_for(
        Duration::from_secs(120),
        "the second worker commits every input",
        || {
            committed_vs_end(&address, "g", "input", 2)
                .iter()
                .all(|(c, end)| c == end)
                && second.metric("evalstream_in_flight_messages") == Some(0.0)
        },
    );
    let (records, gaps) = read_all(&address, "sampled", 2, Duration::from_secs(60));
    assert!(gaps.is_empty(), "{gaps:?}");
    let got = sampled_spans(&records);
    let got_ids: HashSet<Vec<u8>> = got.keys().cloned().collect();
    let missing = kept.difference(&got_ids).count();
    let unexpected = got_ids.difference(&kept).count();
    let repeated = got
        .iter()
        .filter(|(id, spans)| {
            let whole = span::spans(
                traces
                    .iter()
                    .find(|t| span::spans(t).next().unwrap().trace_id() == id.as_slice())
                    .unwrap(),
            )
            .count();
            spans.len() > whole
        })
        .count();
    eprintln!(
        "sigkill while forwarding: {} kept traces expected, {} forwarded, {repeated} forwarded more than once, {missing} missing",
        kept.len(),
        got_ids.len(),
    );
    assert_eq!(
        missing, 0,
        "every kept trace is forwarded after the restart"
    );
    assert_eq!(unexpected, 0, "no dropped trace is forwarded");
    for (id, spans) in &got {
        let original = traces
            .iter()
            .find(|t| span::spans(t).next().unwrap().trace_id() == id.as_slice())
            .unwrap();
        let want: HashSet<&[u8]> = span::spans(original).map(|s| s.span_id()).collect();
        let have: HashSet<&[u8]> = spans.iter().map(|(_, s)| s.span_id.as_slice()).collect();
        assert_eq!(have, want, "each kept trace is forwarded whole");
    }
    let (code, stderr) = second.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

/// POSTs a JSON body over loopback: the status and the body.
fn post_json(port: u16, path: &str, body: &str) -> Option<(u16, String)> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((head.split(' ').nth(1)?.parse().ok()?, body.to_owned()))
}

#[test]
fn two_workers_share_budget_spend_through_the_state_topic() {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    let broker = setup(4);
    let dir = temp_dir("budget-share");
    let guard_ports = [free_port(), free_port()];
    let worker = |name: &str, guard: u16| {
        Worker::start_configured(
            &dir,
            name,
            &broker.address(),
            "shared",
            Encoding::OtlpProto,
            "",
            &format!(
                "guard:\n  http: {{ endpoint: \"127.0.0.1:{guard}\" }}\n  budget_share_interval_seconds: 0.5\nbudgets:\n  per_user: {{ keys: [user.id], limit_tokens: 1000000 }}\n"
            ),
            &[],
        )
    };
    let (a, b) = (worker("a", guard_ports[0]), worker("b", guard_ports[1]));
    wait_all_ready(&[&a, &b]);
    // 200 model calls by alice, 100 tokens each, one trace per message: spread over the
    // partitions, so over both workers.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let int = |k: &str, v: i64| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(v)),
        }),
        ..Default::default()
    };
    let messages: Vec<Outgoing> = (0..200u64)
        .map(|i| {
            let trace_id = xxhash_rust::xxh3::xxh3_128(&i.to_be_bytes())
                .to_be_bytes()
                .to_vec();
            let request = ExportTraceServiceRequest {
                resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
                    scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                        spans: vec![opentelemetry_proto::tonic::trace::v1::Span {
                            trace_id: trace_id.clone(),
                            span_id: trace_id[..8].to_vec(),
                            name: "chat gpt-4o-mini".into(),
                            start_time_unix_nano: now - 1_000_000,
                            end_time_unix_nano: now,
                            attributes: vec![
                                otlp::kv_str("gen_ai.operation.name", "chat"),
                                otlp::kv_str("user.id", "alice"),
                                int("gen_ai.usage.input_tokens", 40),
                                int("gen_ai.usage.output_tokens", 60),
                            ],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            (Some(otlp::hex(&trace_id)), request.encode_to_vec())
        })
        .collect();
    produce(&broker.address(), "input", &messages);
    let counted = |w: &Worker| {
        w.metric("evalstream_budget_counted_total{budget=\"per_user\",unit=\"tokens\"}")
            .unwrap_or(0.0)
    };
    wait_for(
        Duration::from_secs(60),
        "both workers counted every span",
        || counted(&a) + counted(&b) >= 20_000.0,
    );
    let (ca, cb) = (counted(&a), counted(&b));
    assert!(
        ca > 0.0 && cb > 0.0,
        "both workers counted spans: {ca} and {cb}"
    );
    assert_eq!(ca + cb, 20_000.0, "each span once");
    // Each worker's `Budget` answers the group's spend, not only its own.
    let spent = |port: u16| {
        post_json(
            port,
            "/v1/budget",
            r#"{"budget": "per_user", "attributes": {"user.id": "alice"}}"#,
        )
        .and_then(|(status, body)| (status == 200).then_some(body))
        .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|v| v["spent"].as_f64())
    };
    wait_for(
        Duration::from_secs(30),
        "both workers answer the group's spend",
        || guard_ports.iter().all(|&p| spent(p) == Some(20_000.0)),
    );
    for w in [a, b] {
        let (code, stderr) = w.terminate();
        assert_eq!(code, Some(0), "{stderr}");
    }
}
