//! A real OpenTelemetry Collector in the loop, end to end: a Python app instrumented by the
//! official OTel GenAI instrumentation of the OpenAI client sends its spans over OTLP to the
//! collector built by `scripts/install-collector.sh`, running `deploy/collector/gateway.yaml` as
//! users would; the collector writes them to Kafka (`otlp_spans`, keyed by trace id); the real
//! `evalstream run` evaluates them and writes its evaluation events (`gen_ai.evaluation.result`
//! log records) to `otlp_logs` and evaluator spans to `otlp_evaluations`; the collector reads both
//! back and exports them over OTLP/HTTP to a sink this test serves, standing in for the backend.
//! Every evaluation the input calls for must come back at the sink twice: as a log record carrying
//! the judged span's trace and span ids under the app's resource, and as a span parented to it.
//!
//! Needs `scripts/install-kafka.sh`, `scripts/install-collector.sh` and
//! `scripts/install-python-app.sh` (`scripts/test.sh` runs all three).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evalstream_evaluators::otlp::types::{ExportTraceServiceRequest, KeyValue, any_value};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;

mod support;
use support::{Broker, DEFAULT_EVALUATORS, free_port, temp_dir};

/// Each round asks the app's six cases once (normal twice, PII, refusal, JSON, broken JSON).
const ROUNDS: usize = 3;
const PARTITIONS: u32 = 3;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn installed(path: PathBuf, script: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run {script} (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The test's directory: the logs and configurations of every process. Removed when the test
/// passed; kept, with its path printed, when it failed.
struct Workdir(PathBuf);

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the logs are kept in {}:", self.0.display());
            for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
                eprintln!("  {}", entry.path().display());
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process writing to `<dir>/<name>.log`, killed on drop.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, dir: &Path, command: &mut Command) -> Process {
        Process::spawn_with_stdout(name, dir, command, None)
    }

    /// As [`Process::spawn`], with standard output to its own file when `stdout` is given.
    fn spawn_with_stdout(
        name: &'static str,
        dir: &Path,
        command: &mut Command,
        stdout: Option<&Path>,
    ) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let out = match stdout {
            Some(path) => std::fs::File::create(path).unwrap(),
            None => file.try_clone().unwrap(),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process { name, child, log }
    }

    /// Fails the test, with the end of the log, when the process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "{} exited ({status}); the end of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log)
            );
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits for `done`, checking the processes are alive meanwhile; fails after `limit`.
fn wait_for(
    what: &str,
    limit: Duration,
    processes: &mut [&mut Process],
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !done() {
        for p in processes.iter_mut() {
            p.assert_running();
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// `GET path` on loopback: the status code.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// The stand-in for the backend: OTLP/HTTP protobuf on `POST /v1/traces` and `POST /v1/logs`,
/// gzip or not (the collector's `otlp_http` exporter compresses with gzip by default), every
/// request kept.
struct Sink {
    port: u16,
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    logs: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
    errors: Arc<Mutex<Vec<String>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Sink {
    fn start() -> Sink {
        use axum::extract::{DefaultBodyLimit, State};
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::IntoResponse;

        type Shared<M> = (Arc<Mutex<Vec<M>>>, Arc<Mutex<Vec<String>>>);
        /// Keeps an export request of type `M`, answering with an empty response.
        async fn keep<M: prost::Message + Default + Send + 'static>(
            State((received, errors)): State<Shared<M>>,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::response::Response {
            let encoding = headers
                .get(header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("identity")
                .to_owned();
            let decoded = match encoding.as_str() {
                "identity" => Ok(body.to_vec()),
                "gzip" => gunzip(&body),
                other => Err(format!("unexpected Content-Encoding {other}")),
            };
            let request =
                decoded.and_then(|bytes| M::decode(bytes.as_slice()).map_err(|e| e.to_string()));
            match request {
                Ok(request) => {
                    received.lock().unwrap().push(request);
                    (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "application/x-protobuf")],
                        Vec::new(), // an empty export response
                    )
                        .into_response()
                }
                Err(e) => {
                    errors.lock().unwrap().push(e.clone());
                    (StatusCode::BAD_REQUEST, e).into_response()
                }
            }
        }

        let received = Arc::new(Mutex::new(Vec::new()));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let traces = axum::Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(keep::<ExportTraceServiceRequest>),
            )
            .with_state((received.clone(), errors.clone()));
        let log_records = axum::Router::new()
            .route(
                "/v1/logs",
                axum::routing::post(keep::<ExportLogsServiceRequest>),
            )
            .with_state((logs.clone(), errors.clone()));
        let router = traces
            .merge(log_records)
            .layer(DefaultBodyLimit::max(64 << 20));
        runtime.spawn(async move { axum::serve(listener, router).await });
        Sink {
            port,
            received,
            logs,
            errors,
            runtime: Some(runtime),
        }
    }

    /// The evaluation events received, by score id.
    fn events(&self) -> BTreeMap<String, Event> {
        let mut out = BTreeMap::new();
        for request in self.logs.lock().unwrap().iter() {
            for rl in &request.resource_logs {
                let service = rl
                    .resource
                    .as_ref()
                    .and_then(|r| string_attribute(&r.attributes, "service.name"));
                for sl in &rl.scope_logs {
                    for record in &sl.log_records {
                        let attributes = &record.attributes;
                        let Some(score_id) = string_attribute(attributes, "evalstream.score.id")
                        else {
                            continue;
                        };
                        let passed = match attribute(attributes, "evalstream.evaluation.passed") {
                            Some(any_value::Value::BoolValue(b)) => Some(*b),
                            _ => None,
                        };
                        let event = Event {
                            event_name: record.event_name.clone(),
                            trace_id: hex(&record.trace_id),
                            span_id: hex(&record.span_id),
                            service: service.clone(),
                            evaluator: string_attribute(attributes, "gen_ai.evaluation.name"),
                            label: string_attribute(attributes, "gen_ai.evaluation.score.label"),
                            passed,
                        };
                        let previous = out.insert(score_id.clone(), event);
                        assert!(previous.is_none(), "evaluation event {score_id} twice");
                    }
                }
            }
        }
        out
    }

    /// The evaluator spans received: (trace id, span id) → the span's facts.
    fn evaluations(&self) -> BTreeMap<(String, String), Received> {
        let mut out = BTreeMap::new();
        for request in self.received.lock().unwrap().iter() {
            for rs in &request.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| string_attribute(&r.attributes, "service.name"));
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        let passed =
                            match attribute(&span.attributes, "evalstream.evaluation.passed") {
                                Some(any_value::Value::BoolValue(b)) => Some(*b),
                                _ => None,
                            };
                        out.insert(
                            (hex(&span.trace_id), hex(&span.span_id)),
                            Received {
                                parent: hex(&span.parent_span_id),
                                name: span.name.clone(),
                                service: service.clone(),
                                evaluator: string_attribute(
                                    &span.attributes,
                                    "gen_ai.evaluation.name",
                                ),
                                label: string_attribute(
                                    &span.attributes,
                                    "gen_ai.evaluation.score.label",
                                ),
                                passed,
                                score_id: string_attribute(&span.attributes, "evalstream.score.id"),
                            },
                        );
                    }
                }
            }
        }
        out
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// gzip's own command decompresses: the workspace has no gzip crate, and this test adds none.
fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("gzip: {e}"))?;
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().map_err(|e| format!("gzip: {e}"))?;
    writer.join().unwrap().map_err(|e| format!("gzip: {e}"))?;
    if !out.status.success() {
        return Err(format!("gzip: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(out.stdout)
}

/// An evaluator span as the sink received it.
#[derive(Debug, Clone, PartialEq)]
struct Received {
    parent: String,
    name: String,
    service: Option<String>,
    evaluator: Option<String>,
    label: Option<String>,
    passed: Option<bool>,
    score_id: Option<String>,
}

/// An evaluation event (log record) as the sink received it.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    event_name: String,
    trace_id: String,
    span_id: String,
    service: Option<String>,
    evaluator: Option<String>,
    label: Option<String>,
    passed: Option<bool>,
}

/// A record of `otlp_spans` as the collector wrote it.
struct Record {
    partition: i32,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// Reads `topic` from the start until `enough` holds for what was read; fails after `limit`.
fn read_topic(
    broker: &str,
    topic: &str,
    limit: Duration,
    mut enough: impl FnMut(&[Record]) -> bool,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "collector-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS as i32 {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + limit;
    let mut records = Vec::new();
    while !enough(&records) {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} reading {topic}: {} records",
            records.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            records.push(Record {
                partition: message.partition(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    records
}

/// An answer's verdicts: evaluator name → (label, passed).
type Verdicts = BTreeMap<String, (Option<String>, Option<bool>)>;

/// What the app reported: one entry per chat span the instrumentation made.
#[derive(Debug)]
struct Chat {
    trace_id: String,
    span_id: String,
    case: String,
}

#[test]
fn evaluations_go_through_a_real_collector_and_back() {
    let collector = installed(
        repo().join("target/collector/otelcol-evalstream"),
        "scripts/install-collector.sh",
    );
    let python = installed(
        repo().join("target/python-app/venv/bin/python"),
        "scripts/install-python-app.sh",
    );
    let gateway = repo().join("deploy/collector/gateway.yaml");
    let workdir = Workdir(temp_dir("collector"));
    let dir = workdir.0.clone();

    let broker = Broker::start();
    broker.create_topic("otlp_spans", PARTITIONS);
    broker.create_topic("otlp_evaluations", PARTITIONS);
    broker.create_topic("otlp_logs", PARTITIONS);
    broker.create_topic("otlp_spans_dlq", 1);
    let sink = Sink::start();

    // The collector, on the configuration users run, pointed at this test's ports.
    let [otlp_grpc, otlp_http, collector_metrics] = support::free_ports();
    let mut otelcol = Process::spawn(
        "collector",
        &dir,
        Command::new(&collector)
            .arg("--config")
            .arg(&gateway)
            .env("KAFKA_BROKERS", broker.address())
            .env(
                "TRACING_BACKEND_ENDPOINT",
                format!("http://127.0.0.1:{}", sink.port),
            )
            .env("OTLP_GRPC_ENDPOINT", format!("127.0.0.1:{otlp_grpc}"))
            .env("OTLP_HTTP_ENDPOINT", format!("127.0.0.1:{otlp_http}"))
            .env("COLLECTOR_METRICS_PORT", collector_metrics.to_string()),
    );

    // The worker, on the default evaluators, writing both outputs to their default topics.
    let metrics = free_port();
    let config = dir.join("evalstream.yaml");
    std::fs::write(
        &config,
        format!(
            r#"receivers:
  kafka:
    brokers: ["{broker}"]
    topics: [otlp_spans]
    group_id: evalstream
    encoding: otlp_proto
    dead_letter_topic: otlp_spans_dlq
    initial_offset: earliest
exporters:
  kafka:
    brokers: ["{broker}"]
    output: [events, spans]
telemetry:
  metrics:
    listen: "127.0.0.1:{metrics}"
"#,
            broker = broker.address()
        ),
    )
    .unwrap();
    let mut worker = Process::spawn(
        "evalstream",
        &dir,
        Command::new(env!("CARGO_BIN_EXE_evalstream"))
            .args(["run", "--config"])
            .arg(&config)
            .env("EVALSTREAM_LOG", "info")
            .env("NO_COLOR", "1"),
    );

    wait_for(
        "the collector's OTLP/HTTP port",
        Duration::from_secs(60),
        &mut [&mut otelcol],
        || port_open(otlp_http),
    );
    wait_for(
        "the worker's /readyz",
        Duration::from_secs(60),
        &mut [&mut worker, &mut otelcol],
        || http_status(metrics, "/readyz") == Some(200),
    );

    // The app: its chat calls, exported to the collector.
    let manifest_path = dir.join("app-manifest.json");
    let mut app = Process::spawn_with_stdout(
        "app",
        &dir,
        Command::new(&python)
            .arg(repo().join("tests/collector/app.py"))
            .arg(ROUNDS.to_string())
            // Settings from the environment that would send the spans elsewhere, or nowhere.
            .env_remove("OTEL_SDK_DISABLED")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{otlp_http}"),
            )
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env(
                "OTEL_SEMCONV_STABILITY_OPT_IN",
                "gen_ai_latest_experimental",
            )
            .env(
                "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
                "span_only",
            ),
        Some(&manifest_path),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = app.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the app did not finish in 120 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "the app failed ({status}):\n{}",
        tail(&app.log)
    );
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let app_spans = manifest["spans"].as_u64().unwrap() as usize;
    let chats: Vec<Chat> = manifest["chats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Chat {
            trace_id: c["trace_id"].as_str().unwrap().to_owned(),
            span_id: c["span_id"].as_str().unwrap().to_owned(),
            case: c["case"].as_str().unwrap().to_owned(),
        })
        .collect();
    assert_eq!(chats.len(), ROUNDS * 6, "one chat span per call");
    assert_eq!(
        app_spans,
        2 * chats.len(),
        "an app span and a chat span per call"
    );

    // What the collector wrote to otlp_spans: one trace per record, keyed by its hex trace id,
    // a trace's records on one partition; together, every span the app made.
    let span_count = |records: &[Record]| -> usize {
        records
            .iter()
            .map(|r| {
                ExportTraceServiceRequest::decode(r.payload.as_slice())
                    .unwrap()
                    .resource_spans
                    .iter()
                    .flat_map(|rs| &rs.scope_spans)
                    .map(|ss| ss.spans.len())
                    .sum::<usize>()
            })
            .sum()
    };
    let records = read_topic(
        &broker.address(),
        "otlp_spans",
        Duration::from_secs(60),
        |records| span_count(records) >= app_spans,
    );
    let mut spans_seen = BTreeSet::new();
    let mut partition_of_trace: HashMap<String, i32> = HashMap::new();
    for record in &records {
        let request = ExportTraceServiceRequest::decode(record.payload.as_slice()).unwrap();
        let trace_ids: BTreeSet<String> = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| hex(&s.trace_id))
            .collect();
        assert_eq!(trace_ids.len(), 1, "one trace per record: {trace_ids:?}");
        let trace_id = trace_ids.into_iter().next().unwrap();
        let key = String::from_utf8(record.key.clone().expect("a keyed record")).unwrap();
        assert_eq!(key, trace_id, "the record's key is its hex trace id");
        let partition = *partition_of_trace
            .entry(trace_id.clone())
            .or_insert(record.partition);
        assert_eq!(
            partition, record.partition,
            "trace {trace_id} on two partitions"
        );
        for span in request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
        {
            assert!(
                spans_seen.insert((trace_id.clone(), hex(&span.span_id))),
                "span {} written twice",
                hex(&span.span_id)
            );
        }
    }
    assert_eq!(spans_seen.len(), app_spans, "every span the app made, once");
    for chat in &chats {
        assert!(
            spans_seen.contains(&(chat.trace_id.clone(), chat.span_id.clone())),
            "chat span {} {} not on otlp_spans",
            chat.trace_id,
            chat.span_id
        );
    }
    assert_eq!(partition_of_trace.len(), chats.len(), "one trace per call");

    // What those records call for: the offline evaluation of the same input, on the same
    // (default) evaluators. Skips are not exported; scored and errored evaluations are.
    let input = dir.join("otlp_spans");
    std::fs::create_dir_all(&input).unwrap();
    let files: Vec<PathBuf> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let path = input.join(format!("{i:04}.pb"));
            std::fs::write(&path, &r.payload).unwrap();
            path
        })
        .collect();
    let offline = Command::new(env!("CARGO_BIN_EXE_evalstream"))
        .args(["eval", "--no-summary"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        offline.status.success(),
        "evalstream eval: {}",
        String::from_utf8_lossy(&offline.stderr)
    );
    let expected: BTreeMap<String, Value> = String::from_utf8(offline.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["outcome"] != "skipped")
        .map(|v| (v["score_id"].as_str().unwrap().to_owned(), v))
        .collect();
    assert!(!expected.is_empty());

    // Everything comes back through the collector to the sink, as spans and as events.
    let have_all = || {
        let received: BTreeSet<String> = sink
            .evaluations()
            .values()
            .filter_map(|r| r.score_id.clone())
            .collect();
        let events = sink.events();
        expected
            .keys()
            .all(|id| received.contains(id) && events.contains_key(id))
    };
    wait_for(
        &format!("{} evaluations at the sink", expected.len()),
        Duration::from_secs(120),
        &mut [&mut worker, &mut otelcol],
        have_all,
    );
    let errors = sink.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "the sink refused requests: {errors:?}");
    let received = sink.evaluations();

    // Nothing but evaluator spans, each parented to one of the app's chat spans in its trace, and
    // exactly the evaluations the offline run computes.
    let chat_by_span: HashMap<(String, String), &Chat> = chats
        .iter()
        .map(|c| ((c.trace_id.clone(), c.span_id.clone()), c))
        .collect();
    let mut by_chat: HashMap<(String, String), Verdicts> = HashMap::new();
    for ((trace_id, span_id), r) in &received {
        let evaluator = r
            .evaluator
            .clone()
            .unwrap_or_else(|| panic!("{span_id}: no evaluator name"));
        assert_eq!(r.name, format!("evaluation {evaluator}"));
        // Under the judged span's resource: backends file it with the app's trace (issue 16).
        assert_eq!(r.service.as_deref(), Some("support-bot"));
        assert!(
            chat_by_span.contains_key(&(trace_id.clone(), r.parent.clone())),
            "evaluator span {span_id} ({evaluator}) is parented to {trace_id}/{}, not an app chat span",
            r.parent
        );
        let score_id = r.score_id.clone().unwrap();
        let want = expected
            .get(&score_id)
            .unwrap_or_else(|| panic!("{evaluator} on {}: not an offline evaluation", r.parent));
        assert_eq!(want["trace_id"], trace_id.as_str());
        assert_eq!(want["span_id"], r.parent.as_str());
        assert_eq!(want["evaluator"], evaluator.as_str());
        assert_eq!(
            want["label"].as_str(),
            r.label.as_deref(),
            "{evaluator} on {}",
            r.parent
        );
        assert_eq!(
            want["passed"].as_bool(),
            r.passed,
            "{evaluator} on {}",
            r.parent
        );
        let previous = by_chat
            .entry((trace_id.clone(), r.parent.clone()))
            .or_default()
            .insert(evaluator.clone(), (r.label.clone(), r.passed));
        assert!(previous.is_none(), "{evaluator} twice on {}", r.parent);
    }
    assert_eq!(
        received.len(),
        expected.len(),
        "the sink has exactly the offline evaluations"
    );

    // The events: exactly the offline evaluations, each a `gen_ai.evaluation.result` record on
    // the judged chat span, filed under the app's resource (so a backend shows it with the
    // app's trace), with the same verdict as its evaluator span.
    let events = sink.events();
    assert_eq!(
        events.keys().collect::<BTreeSet<_>>(),
        expected.keys().collect::<BTreeSet<_>>(),
        "the sink has exactly the offline evaluations as events"
    );
    for (score_id, event) in &events {
        let want = &expected[score_id];
        assert_eq!(event.event_name, "gen_ai.evaluation.result");
        assert_eq!(want["trace_id"], event.trace_id.as_str(), "{event:?}");
        assert_eq!(want["span_id"], event.span_id.as_str(), "{event:?}");
        assert!(
            chat_by_span.contains_key(&(event.trace_id.clone(), event.span_id.clone())),
            "{event:?} is not on an app chat span"
        );
        assert_eq!(event.service.as_deref(), Some("support-bot"), "{event:?}");
        assert_eq!(want["evaluator"].as_str(), event.evaluator.as_deref());
        assert_eq!(want["label"].as_str(), event.label.as_deref(), "{event:?}");
        assert_eq!(want["passed"].as_bool(), event.passed, "{event:?}");
    }

    // And each answer was judged as its case calls for.
    for chat in &chats {
        let got = by_chat
            .get(&(chat.trace_id.clone(), chat.span_id.clone()))
            .unwrap_or_else(|| panic!("no evaluation came back for {chat:?}"));
        let names: BTreeSet<&str> = got.keys().map(String::as_str).collect();
        let json = chat.case.starts_with("json");
        let want: BTreeSet<&str> = DEFAULT_EVALUATORS
            .into_iter()
            .filter(|e| json || *e != "json_valid")
            .collect();
        assert_eq!(names, want, "{chat:?}");
        let passed = |evaluator: &str| got[evaluator].1.unwrap();
        assert_eq!(
            passed("pii"),
            chat.case != "pii",
            "pii on {chat:?}: {got:?}"
        );
        if chat.case == "pii" {
            assert_eq!(got["pii"].0.as_deref(), Some("pii"), "{got:?}");
        }
        assert_eq!(
            passed("refusal"),
            chat.case != "refusal",
            "refusal on {chat:?}: {got:?}"
        );
        if json {
            assert_eq!(
                passed("json_valid"),
                chat.case == "json",
                "json_valid on {chat:?}: {got:?}"
            );
        }
        for evaluator in ["finish_reason", "empty_output", "cost"] {
            assert!(passed(evaluator), "{evaluator} on {chat:?}: {got:?}");
        }
    }

    // Nothing was dead-lettered.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .create()
        .unwrap();
    let (low, high) = consumer
        .fetch_watermarks("otlp_spans_dlq", 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(high - low, 0, "dead letters on otlp_spans_dlq");
    otelcol.assert_running();
    worker.assert_running();
    eprintln!(
        "{} spans in {} records on otlp_spans; {} evaluations of {} chat spans back at the sink as spans in {} requests and as events in {}",
        app_spans,
        records.len(),
        received.len(),
        chats.len(),
        sink.received.lock().unwrap().len(),
        sink.logs.lock().unwrap().len()
    );
}
