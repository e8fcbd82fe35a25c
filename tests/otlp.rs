//! `evalstream run` as an OTLP endpoint, with no broker: the corpus sent over OTLP/HTTP and
//! OTLP/gRPC to the built-in configuration (on free ports) gets exactly the verdicts
//! `evalstream eval` gives the same files, printed as JSON lines on stdout — sent by our own
//! clients, and by the OpenTelemetry Python SDK's own exporters (`tests/otlp/send_corpus.py`),
//! also when a tiny in-flight limit makes the receiver refuse and the SDK retry.
//!
//! The SDK tests need `scripts/install-python-app.sh` (`scripts/test.sh` runs it).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message as _;
use support::{CORPUS, free_ports, span_strings, temp_dir};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn corpus_file(name: &str) -> String {
    format!(
        "{}/tests/fixtures/corpus/{name}.pb",
        repo().to_str().unwrap()
    )
}

/// POSTs `body` to `/v1/traces`; the status.
fn post(port: u16, body: &[u8]) -> u16 {
    post_to(port, "/v1/traces", body)
}

/// POSTs a protobuf `body` to `path`; the status.
fn post_to(port: u16, path: &str, body: &[u8]) -> u16 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The lines as a multiset.
fn counted(text: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        *m.entry(line.to_owned()).or_default() += 1;
    }
    m
}

/// The built-in configuration on free ports: (its text, gRPC port, HTTP port, metrics port).
fn builtin_on_free_ports() -> (String, u16, u16, u16) {
    let [grpc, http, metrics] = free_ports();
    let config = evalstream::config::BUILTIN
        .replace("127.0.0.1:4317", &format!("127.0.0.1:{grpc}"))
        .replace("127.0.0.1:4318", &format!("127.0.0.1:{http}"))
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{metrics}"));
    (config, grpc, http, metrics)
}

/// `evalstream run --config` on a configuration text, its stdout read as it comes (a full pipe
/// would hold the exporter, and so the answers, back). Killed on drop.
struct Run {
    child: Child,
    stdout: Option<JoinHandle<String>>,
}

impl Run {
    /// Starts it and waits until `port` listens.
    fn start(dir: &Path, config: &str, port: u16) -> Run {
        std::fs::write(dir.join("config.yaml"), config).unwrap();
        let log = std::fs::File::create(dir.join("run.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_evalstream"))
            .args(["run", "--config"])
            .arg(dir.join("config.yaml"))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut out = String::new();
            stdout.read_to_string(&mut out).unwrap();
            out
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the OTLP receiver never listened; see {}",
                dir.join("run.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Run {
            child,
            stdout: Some(stdout),
        }
    }

    /// SIGTERM; what it printed. Answered means exported: every line is out before SIGTERM.
    fn stop(mut self) -> String {
        let stopped = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(stopped.success());
        let out = self.stdout.take().unwrap().join().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "run exited with {status}");
        out
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `evalstream eval` on the corpus: its lines, counted.
fn eval_verdicts() -> BTreeMap<String, usize> {
    let eval = Command::new(env!("CARGO_BIN_EXE_evalstream"))
        .arg("eval")
        .args(CORPUS.map(corpus_file))
        .output()
        .unwrap();
    let expected = counted(&String::from_utf8(eval.stdout).unwrap());
    assert!(expected.len() > 20, "the corpus has verdicts: {expected:?}");
    expected
}

/// Fails unless `out` holds each of `expected`'s lines exactly `times` times as often, and
/// nothing else.
fn assert_lines_times(out: &str, expected: &BTreeMap<String, usize>, times: usize) {
    let got = counted(out);
    let wanted: BTreeMap<String, usize> = expected
        .iter()
        .map(|(l, n)| (l.clone(), times * n))
        .collect();
    let missing: Vec<_> = wanted
        .iter()
        .filter(|(l, n)| got.get(*l) != Some(n))
        .map(|(l, n)| (l.as_str(), *n, got.get(l).copied().unwrap_or(0)))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "(line, expected, got): {missing:#?}");
    let extra: Vec<_> = got
        .keys()
        .filter(|l| !wanted.contains_key(*l))
        .take(5)
        .collect();
    assert!(extra.is_empty(), "lines eval does not print: {extra:#?}");
}

#[test]
fn the_builtin_config_scores_otlp_http_and_grpc_exports_as_eval_does() {
    let dir = temp_dir("otlp-builtin");
    let (config, grpc, http, _) = builtin_on_free_ports();
    let run = Run::start(&dir, &config, http);

    // Each corpus file once over HTTP and once over gRPC: every verdict twice.
    for name in CORPUS {
        let body = std::fs::read(corpus_file(name)).unwrap();
        assert_eq!(post(http, &body), 200, "{name} over HTTP");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .unwrap();
        for name in CORPUS {
            let body = std::fs::read(corpus_file(name)).unwrap();
            let request = ExportTraceServiceRequest::decode(&body[..]).unwrap();
            let answer = client.export(request).await.expect(name).into_inner();
            assert!(answer.partial_success.is_none(), "{name}: {answer:?}");
        }
    });

    // The client's connection goes with its runtime, so the server's graceful stop need not
    // wait for it.
    drop(runtime);
    let out = run.stop();
    assert_lines_times(&out, &eval_verdicts(), 2);
}

/// The venv `scripts/install-python-app.sh` makes.
fn python() -> PathBuf {
    let python = repo().join("target/python-app/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-python-app.sh (scripts/test.sh does)",
        python.display()
    );
    python
}

/// What `send_corpus.py` reports.
#[derive(Debug, serde::Deserialize)]
struct Sent {
    spans: usize,
    exports: usize,
    failed: usize,
    /// Spans whose SDK encoding differs from the file's, with the fields that differ.
    reencoded: Vec<String>,
}

/// Runs `tests/otlp/send_corpus.py` on the corpus: the SDK's `protocol` exporter to `port`,
/// `batch_size` spans per export, `threads` exporters at once. Fails unless every export
/// succeeded; its standard error (the SDK's log) goes to `<dir>/send-<protocol>.log`.
fn send_corpus(dir: &Path, protocol: &str, port: u16, batch_size: usize, threads: usize) -> Sent {
    let log = dir.join(format!("send-{protocol}.log"));
    let out = Command::new(python())
        .arg(repo().join("tests/otlp/send_corpus.py"))
        .args(["--protocol", protocol])
        .args(["--endpoint", &format!("http://127.0.0.1:{port}")])
        .args(["--batch-size", &batch_size.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(CORPUS.map(corpus_file))
        .stderr(std::fs::File::create(&log).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "send_corpus.py over {protocol}: {}; its log:\n{}",
        out.status,
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let sent: Sent = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sent.failed, 0, "{sent:?}");
    sent
}

#[test]
fn the_python_sdk_exporters_grpc_and_http_get_the_verdicts_eval_gives() {
    let dir = temp_dir("otlp-python-sdk");
    let (config, grpc, http, _) = builtin_on_free_ports();
    let run = Run::start(&dir, &config, http);
    for (protocol, port) in [("grpc", grpc), ("http", http)] {
        let sent = send_corpus(&dir, protocol, port, 512, 1);
        assert_eq!((sent.spans, sent.exports), (120, 1), "{protocol}: {sent:?}");
        // The SDK writes every span of the corpus as the file has it (attributes in the same
        // order, ints as ints, arrays as arrays, ids, times, kind, status), so the verdicts
        // cannot differ for the encoding's sake: were a span's encoding to differ (the SDK drops
        // attribute values it does not take, such as mixed-type arrays), this says which.
        assert!(sent.reencoded.is_empty(), "{:#?}", sent.reencoded);
    }
    let out = run.stop();
    assert_lines_times(&out, &eval_verdicts(), 2);
}

/// A stand-in OTLP/HTTP backend that answers every request 200 after `delay`, counting the log
/// records (evaluation events) it received.
struct SlowSink {
    port: u16,
    records: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl SlowSink {
    fn start(delay: Duration) -> SlowSink {
        let records = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (r, q) = (records.clone(), requests.clone());
        let router = axum::Router::new().fallback(move |body: axum::body::Bytes| {
            let (records, requests) = (r.clone(), q.clone());
            async move {
                tokio::time::sleep(delay).await;
                let logs = ExportLogsServiceRequest::decode(&body[..]).unwrap_or_default();
                let n: usize = logs
                    .resource_logs
                    .iter()
                    .flat_map(|r| &r.scope_logs)
                    .map(|s| s.log_records.len())
                    .sum();
                records.fetch_add(n, Ordering::AcqRel);
                requests.fetch_add(1, Ordering::AcqRel);
                (
                    [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                    Vec::new(), // an empty ExportLogsServiceResponse
                )
            }
        });
        runtime.spawn(async move { axum::serve(listener, router).await });
        SlowSink {
            port,
            records,
            requests,
            runtime: Some(runtime),
        }
    }
}

impl Drop for SlowSink {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// The text of `/metrics`.
fn scrape(metrics_port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// `evalstream_otlp_requests_total` from `/metrics`: (protocol, outcome) → count.
fn otlp_requests(metrics_port: u16) -> BTreeMap<(String, String), u64> {
    let text = scrape(metrics_port);
    let label = |labels: &str, name: &str| {
        let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
        Some(labels[start..].split('"').next()?.to_owned())
    };
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("evalstream_otlp_requests_total{")?;
            let (labels, value) = rest.split_once("} ")?;
            Some((
                (label(labels, "protocol")?, label(labels, "outcome")?),
                value.trim().parse::<f64>().ok()? as u64,
            ))
        })
        .collect()
}

#[test]
fn a_full_pipeline_makes_the_sdk_retry_and_nothing_is_lost_or_doubled() {
    let dir = temp_dir("otlp-python-sdk-retry");
    // Each evaluated request is held ~200 ms by the slow backend, and only one may be in flight:
    // the receiver must refuse the SDK's concurrent exports (RESOURCE_EXHAUSTED with RetryInfo,
    // 429 with Retry-After: 1 s), and the SDK retries them.
    let sink = SlowSink::start(Duration::from_millis(200));
    let (builtin, grpc, http, metrics) = builtin_on_free_ports();
    let config = builtin
        .replace(
            "receivers:\n  otlp:\n",
            "receivers:\n  otlp:\n    max_in_flight_requests: 1\n",
        )
        .replace(
            "exporters:\n  stdout:\n",
            &format!(
                "exporters:\n  stdout:\n  otlphttp:\n    endpoint: http://127.0.0.1:{}\n    compression: none\n",
                sink.port
            ),
        );
    assert!(
        config.contains("max_in_flight_requests: 1") && config.contains("otlphttp"),
        "the built-in configuration changed shape:\n{config}"
    );
    let run = Run::start(&dir, &config, http);

    // 4 exporters at once, 10 spans per export: 12 exports per protocol, ~200 ms each, ~2.5 s
    // of work in all. How the SDK in use (1.45.2) retries, read from its source:
    // - OTLP/HTTP (`_OTLPHTTPClient.export`, opentelemetry/exporter/otlp/common/http.py) retries
    //   429 (and 502, 503, 504) waiting what `Retry-After` says (1 s here, no jitter), else
    //   2^n s ± 20 %;
    // - OTLP/gRPC (`_export`, opentelemetry/exporter/otlp/proto/grpc/exporter.py) retries
    //   RESOURCE_EXHAUSTED whether or not RetryInfo comes with it (the OTLP specification says
    //   only with), and reads RetryInfo only from a `google.rpc.retryinfo-bin` trailer, not from
    //   `grpc-status-details-bin`, where evalstream (like the collector) sends it: it waits its
    //   own 1, 2, 4, 8 s ± 20 % instead of our 1 s.
    // Both give up after 6 attempts or their timeout (30 s here): 5 s (HTTP) or 15 s (gRPC) of
    // retrying, well past the work there is, so a refused export cannot be starved out.
    let (batch_size, threads) = (10, 4);
    let mut exports = BTreeMap::new();
    for (protocol, port) in [("grpc", grpc), ("http", http)] {
        let started = Instant::now();
        let sent = send_corpus(&dir, protocol, port, batch_size, threads);
        assert_eq!(
            (sent.spans, sent.exports),
            (120, 12),
            "{protocol}: {sent:?}"
        );
        exports.insert(protocol, (sent.exports, started.elapsed()));
    }
    let counts = otlp_requests(metrics);
    let out = run.stop();

    let count = |protocol: &str, outcome: &str| {
        counts
            .get(&(protocol.to_owned(), outcome.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    for (protocol, (sent, took)) in &exports {
        eprintln!(
            "{protocol}: {sent} exports in {took:.1?}: {} accepted, {} refused as busy (each retried by the SDK)",
            count(protocol, "accepted"),
            count(protocol, "busy"),
        );
        // (a) The limit did bite: some exports were refused, and the SDK retried them.
        assert!(
            count(protocol, "busy") > 0,
            "{protocol}: nothing was refused: {counts:?}"
        );
        // Each export was taken once: a refused one was not taken, and none was taken twice.
        assert_eq!(count(protocol, "accepted"), *sent as u64, "{counts:?}");
        for outcome in ["unavailable", "invalid", "error"] {
            assert_eq!(
                count(protocol, outcome),
                0,
                "{protocol} {outcome}: {counts:?}"
            );
        }
    }
    // (b) Every span sent was evaluated exactly once per successful send: nothing lost, nothing
    // doubled by the retries, on stdout…
    let expected = eval_verdicts();
    assert_lines_times(&out, &expected, 2);
    // …and at the slow backend, which receives an event for every evaluation that is not skipped.
    let events = out
        .lines()
        .filter(|l| !l.contains(r#""outcome":"skipped""#))
        .count();
    eprintln!(
        "the backend got {} events in {} requests",
        sink.records.load(Ordering::Acquire),
        sink.requests.load(Ordering::Acquire)
    );
    assert_eq!(sink.records.load(Ordering::Acquire), events);
}

/// A small OTLP/HTTP backend: keeps every request to `/v1/traces` and `/v1/logs`, gunzipped.
struct Sink {
    port: u16,
    traces: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    logs: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Sink {
    fn start() -> Sink {
        use axum::body::Bytes;
        use axum::http::HeaderMap;
        type Kept = std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>;
        fn keep(
            kept: Kept,
        ) -> impl Fn(HeaderMap, Bytes) -> std::future::Ready<&'static str> + Clone {
            move |headers: HeaderMap, body: Bytes| {
                let body = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
                    let mut out = Vec::new();
                    flate2::read::GzDecoder::new(&body[..])
                        .read_to_end(&mut out)
                        .unwrap();
                    out
                } else {
                    body.to_vec()
                };
                kept.lock().unwrap().push(body);
                std::future::ready("")
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let traces: Kept = Default::default();
        let logs: Kept = Default::default();
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(keep(traces.clone())))
            .route("/v1/logs", axum::routing::post(keep(logs.clone())));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        runtime.spawn(async move { axum::serve(listener, app).await });
        Sink {
            port,
            traces,
            logs,
            _runtime: runtime,
        }
    }
}

/// Inline mode: an application points its SDK at evalstream, and its backend gets the spans as
/// they were sent and, beside them, one `gen_ai.evaluation.result` log record per verdict on
/// the judged span, under the application's resource.
/// What an inline run (`receivers.otlp.forward: true`, `otlphttp` to the test's sink) did with
/// the corpus, posted request by request.
struct Inline {
    /// The requests sent.
    sent: Vec<ExportTraceServiceRequest>,
    /// The span requests the backend received.
    forwarded: Vec<ExportTraceServiceRequest>,
    /// The log requests (evaluation events) the backend received.
    events: Vec<ExportLogsServiceRequest>,
    /// The worker's metrics at the end.
    metrics: String,
}

/// Runs `evalstream run` inline with `extra` configuration, posts the corpus, stops it.
fn run_inline(test: &str, extra: &str) -> Inline {
    let sink = Sink::start();
    let dir = temp_dir(test);
    let [http, metrics] = free_ports();
    let config = format!(
        r#"receivers:
  otlp:
    protocols:
      http: {{ endpoint: "127.0.0.1:{http}" }}
    forward: true
exporters:
  otlphttp:
    endpoint: "http://127.0.0.1:{sink}"
    retry_on_failure: {{ initial_interval: 100ms }}
telemetry:
  metrics: {{ listen: "127.0.0.1:{metrics}" }}
{extra}"#,
        sink = sink.port
    );
    std::fs::write(dir.join("config.yaml"), config).unwrap();
    let log = std::fs::File::create(dir.join("run.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_evalstream"))
        .args(["run", "--config"])
        .arg(dir.join("config.yaml"))
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the OTLP receiver never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut sent = Vec::new();
    for name in CORPUS {
        let body = std::fs::read(corpus_file(name)).unwrap();
        // Answered once the backend took both the spans and the events.
        assert_eq!(post(http, &body), 200, "{name}");
        sent.push(ExportTraceServiceRequest::decode(&body[..]).unwrap());
    }
    let forwarded: Vec<ExportTraceServiceRequest> = sink
        .traces
        .lock()
        .unwrap()
        .iter()
        .map(|b| ExportTraceServiceRequest::decode(&b[..]).unwrap())
        .collect();
    let events: Vec<ExportLogsServiceRequest> = sink
        .logs
        .lock()
        .unwrap()
        .iter()
        .map(|b| ExportLogsServiceRequest::decode(&b[..]).unwrap())
        .collect();
    let metrics = scrape(metrics);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    Inline {
        sent,
        forwarded,
        events,
        metrics,
    }
}

#[test]
fn forwarded_spans_and_their_evaluation_events_reach_an_otlp_backend() {
    let Inline {
        sent,
        forwarded,
        events,
        ..
    } = run_inline("otlp-forward", "");

    // The spans, as sent (each request once; their order among requests is the workers').
    assert_eq!(forwarded.len(), sent.len());
    for request in &sent {
        assert!(forwarded.contains(request), "a request was changed or lost");
    }

    // The events: as many as eval's scored and errored verdicts, each on a sent span, under
    // that span's resource.
    let eval = Command::new(env!("CARGO_BIN_EXE_evalstream"))
        .arg("eval")
        .args(CORPUS.map(corpus_file))
        .output()
        .unwrap();
    let verdicts = String::from_utf8(eval.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.contains(r#""outcome":"skipped""#))
        .count();
    let mut span_services = std::collections::HashMap::new();
    for request in &sent {
        for rs in &request.resource_spans {
            let service = rs.resource.as_ref().and_then(|r| {
                r.attributes
                    .iter()
                    .find(|a| a.key == "service.name")
                    .cloned()
            });
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    span_services.insert((s.trace_id.clone(), s.span_id.clone()), service.clone());
                }
            }
        }
    }
    let mut records = 0;
    for request in &events {
        for rl in &request.resource_logs {
            let service = rl.resource.as_ref().and_then(|r| {
                r.attributes
                    .iter()
                    .find(|a| a.key == "service.name")
                    .cloned()
            });
            for sl in &rl.scope_logs {
                assert_eq!(sl.scope.as_ref().unwrap().name, "evalstream");
                for r in &sl.log_records {
                    records += 1;
                    assert_eq!(r.event_name, "gen_ai.evaluation.result");
                    let judged = span_services
                        .get(&(r.trace_id.clone(), r.span_id.clone()))
                        .expect("an event on a span that was sent");
                    assert_eq!(
                        judged, &service,
                        "the event is filed under the span's resource"
                    );
                }
            }
        }
    }
    assert_eq!(records, verdicts);
}

/// Inline mode with `redaction`: the backend gets every span, with the personal data in its
/// content masked, while the evaluators judged the original content (the `pii` failures are
/// there, on spans whose forwarded content no longer holds the data), and the metrics count what
/// was masked.
#[test]
fn inline_forwarding_redacts_what_reaches_the_backend_but_not_what_is_judged() {
    use evalstream_evaluators::scorers::pii::{self, PiiKind};
    let run = run_inline("otlp-redact", "redaction: {}\n");
    let count = |requests: &[ExportTraceServiceRequest]| -> usize {
        requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum()
    };
    assert_eq!(
        count(&run.forwarded),
        count(&run.sent),
        "every span forwarded"
    );
    let texts = |requests: &[ExportTraceServiceRequest]| {
        let mut out = Vec::new();
        for s in requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
        {
            span_strings(s, &mut out);
        }
        out
    };
    let emails = |texts: &[String]| -> usize {
        texts
            .iter()
            .map(|t| pii::find(t, &[PiiKind::Email]).len())
            .sum()
    };
    assert!(
        emails(&texts(&run.sent)) > 0,
        "the corpus holds e-mail addresses"
    );
    assert_eq!(emails(&texts(&run.forwarded)), 0, "none reach the backend");
    assert!(texts(&run.forwarded).iter().any(|t| t.contains("[email]")));
    let pii_failures = run
        .events
        .iter()
        .flat_map(|r| &r.resource_logs)
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| &sl.log_records)
        .filter(|r| {
            let attr = |k: &str| {
                r.attributes
                    .iter()
                    .find(|a| a.key == k)
                    .and_then(|a| a.value.clone())
            };
            let name = format!("{:?}", attr("gen_ai.evaluation.name"));
            let passed = format!("{:?}", attr("evalstream.evaluation.passed"));
            name.contains("\"pii\"") && passed.contains("BoolValue(false)")
        })
        .count();
    assert!(pii_failures > 0, "the evaluators saw the original content");
    let masked = run
        .metrics
        .lines()
        .find_map(|l| l.strip_prefix("evalstream_redactions_total{kind=\"email\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(masked >= 1.0, "masked e-mail addresses are counted");
}

fn logs_fixture(name: &str) -> String {
    format!("{}/tests/fixtures/logs/{name}", repo().to_str().unwrap())
}

/// Issue 16, item 3: with `receivers.otlp.logs`, the official instrumentation's `event_only`
/// export (spans without content, `gen_ai.client.inference.operation.details` log records; made
/// by the real instrumentation, `tests/fixtures/logs/generate.py`) gets the verdicts `eval` gives
/// the trace and logs files together — logs first over HTTP and spans over gRPC, then spans first
/// over HTTP and logs over gRPC. Each request is answered only once the spans it joined were
/// evaluated and exported.
#[test]
fn log_events_sent_over_otlp_join_their_spans() {
    let dir = temp_dir("otlp-logs");
    let (config, grpc, http, metrics) = builtin_on_free_ports();
    // Generous waits: this test is about the join, not about the timing of its threads. A trace
    // evaluator (`citations`) too: the joined spans go on to the trace buffer.
    let config = config.replace("  otlp:\n", "  otlp:\n    logs: true\n")
        + "logs: { span_wait_seconds: 30, event_wait_seconds: 30 }\n"
        + "traces: { quiet_seconds: 0.2 }\n"
        + "evaluators: [ { type: refusal }, { type: pii }, { type: json_valid }, { type: citations } ]\n";
    let run = Run::start(&dir, &config, http);
    let traces = std::fs::read(logs_fixture("event_only.traces.pb")).unwrap();
    let logs = std::fs::read(logs_fixture("event_only.logs.pb")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let grpc_traces = |body: Vec<u8>| {
        runtime.block_on(async move {
            let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
                .await
                .unwrap();
            let request = ExportTraceServiceRequest::decode(&body[..]).unwrap();
            client.export(request).await.unwrap().into_inner()
        })
    };
    let grpc_logs = |body: Vec<u8>| {
        runtime.block_on(async move {
            let mut client = LogsServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
                .await
                .unwrap();
            let request = ExportLogsServiceRequest::decode(&body[..]).unwrap();
            client.export(request).await.unwrap().into_inner()
        })
    };

    // The logs wait for their spans: their answer comes after the spans came.
    let waiting = {
        let logs = logs.clone();
        std::thread::spawn(move || post_to(http, "/v1/logs", &logs))
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(!waiting.is_finished(), "answered before its events joined");
    assert!(grpc_traces(traces.clone()).partial_success.is_none());
    assert_eq!(waiting.join().unwrap(), 200);

    // The spans wait for their logs.
    let waiting = {
        let traces = traces.clone();
        std::thread::spawn(move || post(http, &traces))
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !waiting.is_finished(),
        "answered before its span was evaluated"
    );
    assert!(grpc_logs(logs.clone()).partial_success.is_none());
    assert_eq!(waiting.join().unwrap(), 200);

    let scraped = scrape(metrics);
    assert!(
        scraped.contains("evalstream_join_spans_total{release=\"joined\"} 6"),
        "{scraped}"
    );
    assert!(
        scraped.contains("evalstream_log_events_total{outcome=\"joined\"} 6"),
        "{scraped}"
    );
    drop(runtime);
    let out = run.stop();

    let eval = Command::new(env!("CARGO_BIN_EXE_evalstream"))
        .args(["eval", "--no-summary", "--config"])
        .arg(dir.join("config.yaml"))
        .args([
            logs_fixture("event_only.traces.pb"),
            logs_fixture("event_only.logs.pb"),
        ])
        .output()
        .unwrap();
    let expected = counted(&String::from_utf8(eval.stdout).unwrap());
    assert!(
        expected.keys().any(|l| l.contains("\"refused\"")),
        "eval scores the joined content: {expected:?}"
    );
    assert!(
        expected
            .keys()
            .any(|l| l.contains("\"evaluator\":\"citations\"")),
        "the trace evaluator judges the joined spans: {expected:?}"
    );
    assert_lines_times(&out, &expected, 2);
}

/// The same with the OpenTelemetry Python SDK's own OTLP exporters (HTTP, then gRPC), batching
/// as applications run them: the official instrumentation in `event_only` mode sends spans
/// without content and their content as log events, and evalstream scores the content.
#[test]
fn the_python_sdk_sending_spans_and_log_events_gets_its_content_scored() {
    let dir = temp_dir("otlp-logs-sdk");
    let (config, grpc, http, _) = builtin_on_free_ports();
    let config = config.replace("  otlp:\n", "  otlp:\n    logs: true\n")
        + "logs: { span_wait_seconds: 30 }\n";
    let run = Run::start(&dir, &config, http);
    let mut sent = Vec::new();
    for (protocol, port) in [("http", http), ("grpc", grpc)] {
        let log = dir.join(format!("generate-{protocol}.log"));
        let out = Command::new(python())
            .arg(repo().join("tests/fixtures/logs/generate.py"))
            .args(["--otlp", protocol, &format!("http://127.0.0.1:{port}")])
            .stderr(std::fs::File::create(&log).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "generate.py over {protocol}: {}; its log:\n{}",
            out.status,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let ids: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ids.len(), 3, "{protocol}: {ids:?}");
        sent.push(ids);
    }
    let out = run.stop();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let verdict = |span_id: &str, evaluator: &str| -> String {
        let l = lines
            .iter()
            .find(|l| l["span_id"] == span_id && l["evaluator"] == evaluator)
            .unwrap_or_else(|| panic!("no {evaluator} verdict for {span_id}: {out}"));
        l["label"]
            .as_str()
            .or(l["skip_reason"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    for ids in &sent {
        assert_eq!(verdict(&ids[0], "refusal"), "refused");
        assert_eq!(verdict(&ids[1], "pii"), "pii");
        assert_eq!(verdict(&ids[2], "json_valid"), "invalid");
        assert_eq!(verdict(&ids[2], "refusal"), "answered");
    }
}
