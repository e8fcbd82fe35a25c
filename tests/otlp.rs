//! `evalstream run` as an OTLP endpoint, with no broker: the corpus sent over OTLP/HTTP and
//! OTLP/gRPC to the built-in configuration (on free ports) gets exactly the verdicts
//! `evalstream eval` gives the same files, printed as JSON lines on stdout — sent by our own
//! clients, and by the OpenTelemetry Python SDK's own exporters (`tests/otlp/send_corpus.py`),
//! also when a tiny in-flight limit makes the receiver refuse and the SDK retry.
//!
//! The guard API the same process serves beside the receiver (gRPC and HTTP/JSON `Check` and
//! `Budget`) is tested here too, budgets counted from spans sent to the receiver.
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
    post_as(port, path, "application/x-protobuf", body).0
}

/// POSTs `body` of `content_type` to `path`: the status and the response body.
fn post_as(port: u16, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
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

/// Waits until every one of `ports` listens; past 30 s, fails naming the log in `dir`.
fn wait_listening(ports: &[u16], dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for &port in ports {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "127.0.0.1:{port} never listened; see {}",
                dir.join("run.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
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
        wait_listening(&[port], dir);
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
    /// Every log record received so far.
    fn log_records(&self) -> Vec<opentelemetry_proto::tonic::logs::v1::LogRecord> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .map(|b| ExportLogsServiceRequest::decode(&b[..]).unwrap())
            .flat_map(|r| r.resource_logs)
            .flat_map(|r| r.scope_logs)
            .flat_map(|s| s.log_records)
            .collect()
    }

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
    wait_listening(&[http], &dir);
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

/// POSTs a JSON `body` to `path`: the status and the body.
fn post_json(port: u16, path: &str, body: &str) -> (u16, String) {
    post_as(port, path, "application/json", body.as_bytes())
}

/// The guard tests' process: OTLP in (HTTP), the guard API on gRPC and HTTP, three guard sets,
/// a token budget per user with a 4-second window, the verdicts' events to a sink.
struct Guarded {
    child: Child,
    sink: Sink,
    otlp: u16,
    grpc: u16,
    http: u16,
    metrics: u16,
    dir: PathBuf,
}

impl Guarded {
    fn start(test: &str) -> Guarded {
        Guarded::with(test, "", "")
    }

    /// With more evaluators (YAML list items) and guard sets (YAML map entries, indented by 2).
    fn with(test: &str, evaluators: &str, guards: &str) -> Guarded {
        let sink = Sink::start();
        let dir = temp_dir(test);
        let [otlp, grpc, http, metrics] = free_ports();
        let config = format!(
            r#"receivers:
  otlp:
    protocols:
      http: {{ endpoint: "127.0.0.1:{otlp}" }}
evaluators:
  - type: refusal
  - type: pii
  - type: empty_output
{evaluators}exporters:
  otlphttp:
    endpoint: "http://127.0.0.1:{sink}"
    retry_on_failure: {{ initial_interval: 100ms }}
telemetry:
  metrics: {{ listen: "127.0.0.1:{metrics}" }}
guard:
  grpc: {{ endpoint: "127.0.0.1:{grpc}" }}
  http: {{ endpoint: "127.0.0.1:{http}" }}
  max_request_bytes: 65536
guards:
  default: {{ evaluators: [refusal, pii, empty_output] }}
  redacting: {{ evaluators: [refusal, pii], block_when: [refusal], redact: {{}} }}
  refusals: {{ evaluators: [refusal] }}
{guards}budgets:
  per_user: {{ keys: [user.id], limit_tokens: 1000, window_seconds: 4 }}
"#,
            sink = sink.port
        );
        std::fs::write(dir.join("config.yaml"), config).unwrap();
        let log = std::fs::File::create(dir.join("run.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_evalstream"))
            .args(["run", "--config"])
            .arg(dir.join("config.yaml"))
            .stderr(log)
            .spawn()
            .unwrap();
        wait_listening(&[otlp, grpc, http], &dir);
        Guarded {
            child,
            sink,
            otlp,
            grpc,
            http,
            metrics,
            dir,
        }
    }

    /// A gRPC client of its guard API, with the runtime it runs on.
    fn client(
        &self,
    ) -> (
        tokio::runtime::Runtime,
        evalstream::guard::proto::guard_client::GuardClient<tonic::transport::Channel>,
    ) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let client = runtime
            .block_on(
                evalstream::guard::proto::guard_client::GuardClient::connect(format!(
                    "http://127.0.0.1:{}",
                    self.grpc
                )),
            )
            .unwrap();
        (runtime, client)
    }

    fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "run exited with {status}; see {}",
            self.dir.join("run.log").display()
        );
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// LLM judges in guard sets: a check waits for the judge's verdict up to the set's
/// `judge_deadline_ms`, through the judge's own endpoint (its cache answers a repeated check);
/// past the deadline the judge's verdict is a `timeout` error, which blocks only where the set
/// fails closed (`on_judge_error: block`); and the judge's verdict reaches the output with the
/// check's.
#[test]
fn a_judge_in_a_guard_set_answers_within_its_deadline_or_times_out_open_or_closed() {
    use evalstream::guard::proto::{Action, CheckRequest, CheckResponse};

    let (judge_url, judge) = evalstream::pipeline::judge::stand_in::start().unwrap();
    let guarded = Guarded::with(
        "guard-judge",
        &format!(
            "  - {{ type: llm_judge, name: tox, template: toxicity, endpoint: \"{judge_url}\", model: judge-model, max_retries: 0 }}\n  \
             - {{ type: llm_judge, name: gated, template: toxicity, endpoint: \"{judge_url}\", model: judge-model, cache_size: 0, when: {{ evaluator: refusal, passed: true }} }}\n"
        ),
        "  judged: { evaluators: [refusal, tox], judge_deadline_ms: 1500 }\n  \
         open: { evaluators: [refusal, tox], judge_deadline_ms: 300 }\n  \
         closed: { evaluators: [refusal, tox], judge_deadline_ms: 300, on_judge_error: block }\n  \
         gated: { evaluators: [refusal, gated], judge_deadline_ms: 1500 }\n",
    );
    let (runtime, mut client) = guarded.client();
    let mut check = |guard: &str, answer: &str| -> (CheckResponse, Duration) {
        let started = Instant::now();
        let answered = runtime
            .block_on(client.check(CheckRequest {
                guard: guard.into(),
                output_text: answer.into(),
                ..Default::default()
            }))
            .unwrap()
            .into_inner();
        (answered, started.elapsed())
    };
    let tox = |r: &CheckResponse| {
        r.verdicts
            .iter()
            .find(|v| v.evaluator == "tox")
            .unwrap()
            .clone()
    };

    // The judge answers in 100 ms: its verdict is in the answer, after the cheap ones.
    judge.set_latency(Duration::from_millis(100));
    let (clean, took) = check("judged", "It is 330 metres tall.");
    assert_eq!(clean.action, Action::Allow as i32, "{clean:?}");
    let names: Vec<&str> = clean
        .verdicts
        .iter()
        .map(|v| v.evaluator.as_str())
        .collect();
    assert_eq!(names, ["refusal", "tox"]);
    assert_eq!(tox(&clean).outcome, "scored", "{clean:?}");
    assert!(tox(&clean).passed);
    assert!(
        took >= Duration::from_millis(100),
        "the check waited for the judge: {took:?}"
    );
    assert_eq!(judge.answered(), 1);
    // A failing verdict blocks.
    let (failed, _) = check("judged", "FAIL_ME, this one is toxic.");
    assert_eq!(failed.action, Action::Block as i32, "{failed:?}");
    assert!(!tox(&failed).passed && tox(&failed).blocks, "{failed:?}");
    // The same check again: the judge's cache answers, the endpoint is not called.
    let (again, _) = check("judged", "It is 330 metres tall.");
    assert_eq!(tox(&again), tox(&clean));
    assert_eq!(judge.answered(), 2);
    assert_eq!(
        metric(
            guarded.metrics,
            r#"evalstream_judge_not_sent_total{evaluator="tox",reason="cache_hit"}"#
        ),
        Some(1.0)
    );
    // A judge's `when` holds in a guard set as in the stream: after a refusal it is skipped and
    // not called; after an answer it judges.
    let gated = |r: &CheckResponse| {
        let v = r.verdicts.iter().find(|v| v.evaluator == "gated").unwrap();
        (v.outcome.clone(), v.label.clone())
    };
    let (refused, _) = check("gated", "I'm sorry, but I can't help with that.");
    assert_eq!(
        gated(&refused),
        ("skipped".into(), "condition".into()),
        "{refused:?}"
    );
    assert_eq!(judge.answered(), 2, "a skipped judge is not called");
    let (answered, _) = check("gated", "It is 330 metres tall.");
    assert_eq!(gated(&answered).0, "scored", "{answered:?}");
    assert_eq!(judge.answered(), 3);

    // The judge takes 5 s: past the deadline the verdict is a timeout, and the check is
    // answered at its deadline, not the judge's; open, it allows; closed, it blocks.
    judge.set_latency(Duration::from_secs(5));
    let (open, took) = check("open", "The tower has 1,665 steps.");
    assert_eq!(tox(&open).outcome, "error", "{open:?}");
    assert_eq!(tox(&open).label, "timeout", "{open:?}");
    assert!(!tox(&open).blocks);
    assert_eq!(open.action, Action::Allow as i32, "{open:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "answered at the deadline: {took:?}"
    );
    let (closed, _) = check("closed", "The tower was finished in 1889.");
    assert_eq!(tox(&closed).label, "timeout", "{closed:?}");
    assert!(tox(&closed).blocks);
    assert_eq!(closed.action, Action::Block as i32, "{closed:?}");
    // A refusal blocks whatever the judge does.
    let (refused, _) = check("open", "I'm sorry, but I can't help with that.");
    assert_eq!(refused.action, Action::Block as i32, "{refused:?}");
    // A client's own gRPC deadline, shorter than the set's, ends the wait (and the call) first.
    let started = Instant::now();
    let mut short = tonic::Request::new(CheckRequest {
        guard: "judged".into(),
        output_text: "The tower is repainted every seven years.".into(),
        ..Default::default()
    });
    short.set_timeout(Duration::from_millis(200));
    let cut = runtime.block_on(client.check(short)).unwrap_err();
    assert!(
        matches!(
            cut.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{cut:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );

    // The judge's verdicts reach the output with the checks' others.
    let deadline = Instant::now() + Duration::from_secs(30);
    let judged = loop {
        let labels: Vec<String> = guarded
            .sink
            .log_records()
            .into_iter()
            .filter(|e| {
                evalstream_evaluators::otlp::find(&e.attributes, "gen_ai.evaluation.name")
                    .and_then(evalstream_evaluators::otlp::as_str)
                    == Some("tox")
            })
            .map(|e| {
                evalstream_evaluators::otlp::find(&e.attributes, "gen_ai.evaluation.score.label")
                    .or_else(|| evalstream_evaluators::otlp::find(&e.attributes, "error.type"))
                    .and_then(evalstream_evaluators::otlp::as_str)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        if labels.len() >= 6 || Instant::now() > deadline {
            break labels;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut judged = judged;
    judged.sort();
    assert_eq!(
        judged,
        ["fail", "pass", "pass", "timeout", "timeout", "timeout"],
        "one tox event per check"
    );
    drop(client);
    guarded.stop();
}

/// A metric's value from `/metrics` (the line that starts with `series`, labels included).
fn metric(metrics_port: u16, series: &str) -> Option<f64> {
    scrape(metrics_port)
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn guard_checks_over_grpc_and_http_allow_block_and_redact_and_their_verdicts_reach_the_output() {
    use evalstream::guard::proto::guard_client::GuardClient;
    use evalstream::guard::proto::{Action, CheckRequest, Message};

    let guarded = Guarded::start("guard-check");
    let (runtime, mut client) = guarded.client();
    let check = |client: &mut GuardClient<tonic::transport::Channel>, request: CheckRequest| {
        runtime.block_on(client.check(request))
    };
    let request = |guard: &str, answer: &str| CheckRequest {
        guard: guard.into(),
        input_messages: vec![Message {
            role: "user".into(),
            content: "How tall is the Eiffel Tower?".into(),
        }],
        output_text: answer.into(),
        attributes: evalstream::guard::attributes(&[("user.id", "alice")]),
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        span_id: "b7ad6b7169203331".into(),
        ..Default::default()
    };

    // A clean answer: allowed, every evaluator's verdict given.
    let clean = check(&mut client, request("default", "It is 330 metres tall."))
        .unwrap()
        .into_inner();
    assert_eq!(clean.action, Action::Allow as i32, "{clean:?}");
    assert_eq!(clean.guard, "default");
    let names: Vec<&str> = clean
        .verdicts
        .iter()
        .map(|v| v.evaluator.as_str())
        .collect();
    assert_eq!(names, ["refusal", "pii", "empty_output"]);
    for v in &clean.verdicts {
        assert_eq!(v.outcome, "scored", "{v:?}");
        assert!(v.passed && !v.blocks && v.score == 1.0, "{v:?}");
        assert!(!v.label.is_empty(), "{v:?}");
    }
    assert!(clean.took_micros > 0);
    assert!(clean.redacted_output_text.is_empty());

    // A refusal: blocked by the evaluator that failed.
    let refused = check(
        &mut client,
        request("default", "I'm sorry, but I can't help with that."),
    )
    .unwrap()
    .into_inner();
    assert_eq!(refused.action, Action::Block as i32, "{refused:?}");
    let refusal = refused
        .verdicts
        .iter()
        .find(|v| v.evaluator == "refusal")
        .unwrap();
    assert!(!refusal.passed && refusal.blocks && !refusal.explanation.is_empty());

    // Personal data where it does not block: redacted, the answer masked, the email not quoted
    // in any explanation.
    let email = "jane.doe@example.com";
    let redacted = check(
        &mut client,
        request("redacting", &format!("Write to {email} for the tickets.")),
    )
    .unwrap()
    .into_inner();
    assert_eq!(redacted.action, Action::Redact as i32, "{redacted:?}");
    assert_eq!(
        redacted.redacted_output_text,
        "Write to [email] for the tickets."
    );
    assert_eq!(
        redacted.redacted_input_messages[0].content,
        "How tall is the Eiffel Tower?"
    );
    let pii = redacted
        .verdicts
        .iter()
        .find(|v| v.evaluator == "pii")
        .unwrap();
    assert!(!pii.passed && !pii.blocks);
    assert!(
        redacted
            .verdicts
            .iter()
            .all(|v| !v.explanation.contains(email))
    );

    // Bad requests, each with a clear code.
    let code = |client: &mut GuardClient<tonic::transport::Channel>, r: CheckRequest| {
        check(client, r).unwrap_err()
    };
    let missing = code(
        &mut client,
        CheckRequest {
            guard: String::new(),
            ..request("", "x")
        },
    );
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    assert!(
        missing.message().contains("`guard`"),
        "{}",
        missing.message()
    );
    let unknown = code(&mut client, request("nope", "x"));
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(
        unknown
            .message()
            .contains("configured: default, redacting, refusals")
    );
    let empty = code(
        &mut client,
        CheckRequest {
            guard: "default".into(),
            ..Default::default()
        },
    );
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    let bad_id = code(
        &mut client,
        CheckRequest {
            trace_id: "xyz".into(),
            ..request("default", "x")
        },
    );
    assert_eq!(bad_id.code(), tonic::Code::InvalidArgument);
    assert!(bad_id.message().contains("`trace_id`: 32 hex digits"));
    let oversized = code(&mut client, request("default", &"a".repeat(100_000)));
    assert_eq!(oversized.code(), tonic::Code::OutOfRange, "{oversized:?}");

    // An OTLP span instead of the fields: its model call is checked.
    let otlp_trace = |answer: &str| {
        let output = serde_json::json!([{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]);
        ExportTraceServiceRequest {
            resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
                scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                    spans: vec![opentelemetry_proto::tonic::trace::v1::Span {
                        trace_id: vec![7; 16],
                        span_id: vec![8; 8],
                        name: "chat gpt-4o".into(),
                        attributes: vec![
                            evalstream_evaluators::otlp::kv_str("gen_ai.operation.name", "chat"),
                            evalstream_evaluators::otlp::kv_str(
                                "gen_ai.output.messages",
                                output.to_string(),
                            ),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    };
    let from_span = check(
        &mut client,
        CheckRequest {
            guard: "refusals".into(),
            otlp_trace: otlp_trace("I cannot assist with that.").encode_to_vec(),
            ..Default::default()
        },
    )
    .unwrap()
    .into_inner();
    assert_eq!(from_span.action, Action::Block as i32, "{from_span:?}");

    // The same API as HTTP/JSON.
    let (status, body) = post_json(
        guarded.http,
        "/v1/check",
        &serde_json::json!({
            "guard": "default",
            "output_text": "I'm sorry, but I can't help with that.",
            "attributes": {"user.id": "bob"},
        })
        .to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["action"], "block", "{answer}");
    assert_eq!(answer["verdicts"][0]["evaluator"], "refusal");
    assert_eq!(answer["verdicts"][0]["blocks"], true);
    let otlp_json = serde_json::to_value(otlp_trace("Happy to help: it is 330 m.")).unwrap();
    let (status, body) = post_json(
        guarded.http,
        "/v1/check",
        &serde_json::json!({"guard": "refusals", "otlp_trace": otlp_json}).to_string(),
    );
    assert_eq!(
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["action"].clone()
        ),
        (200, "allow".into()),
        "{body}"
    );
    for (body, status, says) in [
        (
            r#"{"guard": "default", "output_text": "x", "colour": 1}"#.to_owned(),
            400,
            "unknown field `colour`",
        ),
        (
            r#"{"guard": "default", "output_text": 5}"#.to_owned(),
            400,
            "output_text",
        ),
        ("not json".to_owned(), 400, "invalid request body"),
        (
            r#"{"guard": "nope", "output_text": "x"}"#.to_owned(),
            404,
            "no guard set is named `nope`",
        ),
        (r#"{"output_text": "x"}"#.to_owned(), 400, "`guard`"),
        (
            format!(
                r#"{{"guard": "default", "output_text": "{}"}}"#,
                "a".repeat(70_000)
            ),
            413,
            "",
        ),
    ] {
        let (got, answer) = post_json(guarded.http, "/v1/check", &body);
        assert_eq!(got, status, "{answer}");
        assert!(answer.contains(says), "{answer}");
    }

    // Every check's verdicts reach the output: evaluation events naming the guard set, and one
    // guardrail event per check with its decision, on the checked span.
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = guarded.sink.log_records();
        let guardrails = events
            .iter()
            .filter(|e| e.event_name == "gen_ai.guardrail.result")
            .count();
        if guardrails >= 6 || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let attribute = |e: &opentelemetry_proto::tonic::logs::v1::LogRecord, key: &str| {
        evalstream_evaluators::otlp::find(&e.attributes, key)
            .and_then(evalstream_evaluators::otlp::as_str)
            .map(str::to_owned)
    };
    let decisions: Vec<(Option<String>, Option<String>)> = events
        .iter()
        .filter(|e| {
            e.event_name == "gen_ai.guardrail.result"
                && e.trace_id
                    == [
                        0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21,
                        0x1c, 0x80, 0x31, 0x9c,
                    ]
        })
        .map(|e| {
            (
                attribute(e, "gen_ai.guardrail.name"),
                attribute(e, "gen_ai.guardrail.decision.type"),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        [
            (Some("default".into()), Some("allow".into())),
            (Some("default".into()), Some("block".into())),
            (Some("redacting".into()), Some("redact".into())),
        ],
        "the checks with the application's trace id, in order"
    );
    assert!(
        events
            .iter()
            .any(|e| e.event_name == "gen_ai.evaluation.result"
                && attribute(e, "gen_ai.guardrail.name").as_deref() == Some("redacting")
                && attribute(e, "gen_ai.evaluation.name").as_deref() == Some("pii")
                && e.span_id == [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]),
        "the pii verdict of the redacting check, on its span"
    );
    let m = |series: &str| metric(guarded.metrics, series).unwrap_or(-1.0);
    assert_eq!(
        m(r#"evalstream_guard_checks_total{action="allow",guard="default"}"#),
        1.0
    );
    assert_eq!(
        m(r#"evalstream_guard_checks_total{action="block",guard="default"}"#),
        2.0
    );
    assert_eq!(
        m(r#"evalstream_guard_checks_total{action="redact",guard="redacting"}"#),
        1.0
    );
    guarded.stop();
}

#[test]
fn budgets_count_the_span_stream_flip_to_block_at_the_limit_and_roll_with_their_window() {
    use evalstream::guard::proto::guard_client::GuardClient;
    use evalstream::guard::proto::{Action, BudgetRequest};

    let guarded = Guarded::start("guard-budget");
    let (runtime, mut client) = guarded.client();
    let budget = |client: &mut GuardClient<tonic::transport::Channel>, user: &str| {
        runtime
            .block_on(client.budget(BudgetRequest {
                budget: "per_user".into(),
                attributes: evalstream::guard::attributes(&[("user.id", user)]),
            }))
            .map(tonic::Response::into_inner)
    };
    // A model call of `tokens` tokens by `user`, ending now, sent through the OTLP receiver
    // (answered once evaluated, so counted by then).
    let call = |user: &str, tokens: i64| {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
        let int = |k: &str, v: i64| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::IntValue(v)),
            }),
            ..Default::default()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
                resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                    attributes: vec![evalstream_evaluators::otlp::kv_str("user.id", user)],
                    ..Default::default()
                }),
                scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                    spans: vec![opentelemetry_proto::tonic::trace::v1::Span {
                        trace_id: now.to_be_bytes().repeat(2),
                        span_id: now.to_be_bytes().to_vec(),
                        name: "chat gpt-4o-mini".into(),
                        start_time_unix_nano: now - 1_000_000,
                        end_time_unix_nano: now,
                        attributes: vec![
                            evalstream_evaluators::otlp::kv_str("gen_ai.operation.name", "chat"),
                            evalstream_evaluators::otlp::kv_str(
                                "gen_ai.request.model",
                                "gpt-4o-mini",
                            ),
                            int("gen_ai.usage.input_tokens", tokens / 2),
                            int("gen_ai.usage.output_tokens", tokens / 2),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(post(guarded.otlp, &request.encode_to_vec()), 200);
    };
    // Start right after a window opens, so the whole test fits in one.
    let window = 4;
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        if now.as_secs().is_multiple_of(window) && now.subsec_millis() < 300 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    call("alice", 600);
    let alice = budget(&mut client, "alice").unwrap();
    assert_eq!(
        (alice.action, alice.spent, alice.limit, alice.remaining),
        (Action::Allow as i32, 600.0, 1000.0, 400.0),
        "{alice:?}"
    );
    assert_eq!(
        (alice.unit.as_str(), alice.key.as_str()),
        ("tokens", "alice")
    );
    assert_eq!(
        alice.window_end_unix - alice.window_start_unix,
        window as i64
    );
    call("alice", 600);
    let alice = budget(&mut client, "alice").unwrap();
    assert_eq!(
        (alice.action, alice.spent, alice.remaining),
        (Action::Block as i32, 1200.0, 0.0),
        "{alice:?}"
    );
    let bob = budget(&mut client, "bob").unwrap();
    assert_eq!((bob.action, bob.spent), (Action::Allow as i32, 0.0));
    // Over HTTP/JSON too.
    let (status, body) = post_json(
        guarded.http,
        "/v1/budget",
        r#"{"budget": "per_user", "attributes": {"user.id": "alice"}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (answer["action"].as_str(), answer["spent"].as_f64()),
        (Some("block"), Some(1200.0)),
        "{answer}"
    );
    // Bad queries.
    let unknown = runtime
        .block_on(client.budget(BudgetRequest {
            budget: "nope".into(),
            ..Default::default()
        }))
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let keyless = runtime
        .block_on(client.budget(BudgetRequest {
            budget: "per_user".into(),
            ..Default::default()
        }))
        .unwrap_err();
    assert_eq!(keyless.code(), tonic::Code::InvalidArgument);
    assert!(
        keyless.message().contains("`user.id`"),
        "{}",
        keyless.message()
    );
    let (status, _) = post_json(
        guarded.http,
        "/v1/budget",
        r#"{"budget": "nope", "attributes": {}}"#,
    );
    assert_eq!(status, 404);
    assert_eq!(
        metric(
            guarded.metrics,
            r#"evalstream_budget_spend_tokens{budget="per_user",key="alice"}"#
        ),
        Some(1200.0)
    );
    assert_eq!(
        metric(
            guarded.metrics,
            r#"evalstream_budget_exhausted_total{budget="per_user"}"#
        ),
        Some(1.0)
    );

    // The window rolls: a new one starts from nothing.
    let alice_window = alice.window_end_unix as u64;
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if now >= alice_window {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let alice = budget(&mut client, "alice").unwrap();
    assert_eq!(
        (alice.action, alice.spent),
        (Action::Allow as i32, 0.0),
        "{alice:?}"
    );
    assert_eq!(alice.window_start_unix as u64, alice_window);

    // The README's Python client: `Budget` before the model call, `Check` before the answer.
    let out = Command::new("python3")
        .arg(repo().join("scripts/guard_client.py"))
        .env(
            "EVALSTREAM_GUARD",
            format!("http://127.0.0.1:{}", guarded.http),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("budget: allow"), "{printed}");
    assert!(printed.contains("check: block"), "{printed}");
    guarded.stop();
}
