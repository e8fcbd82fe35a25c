//! `evalstream run` as an OTLP endpoint, with no broker: the corpus sent over OTLP/HTTP and
//! OTLP/gRPC to the built-in configuration (on free ports) gets exactly the verdicts
//! `evalstream eval` gives the same files, printed as JSON lines on stdout.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message as _;
use support::{free_ports, temp_dir};

const CORPUS: [&str; 5] = [
    "openinference",
    "openllmetry",
    "otel_v2",
    "otel_v2_latest",
    "traceai",
];

fn corpus_file(name: &str) -> String {
    format!(
        "{}/../tests/fixtures/corpus/{name}.pb",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// POSTs `body` to `/v1/traces`; the status.
fn post(port: u16, body: &[u8]) -> u16 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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

#[test]
fn the_builtin_config_scores_otlp_http_and_grpc_exports_as_eval_does() {
    let dir = temp_dir("otlp-builtin");
    let [grpc, http, metrics] = free_ports();
    // The built-in configuration, on free ports.
    let config = evalstream::config::BUILTIN
        .replace("127.0.0.1:4317", &format!("127.0.0.1:{grpc}"))
        .replace("127.0.0.1:4318", &format!("127.0.0.1:{http}"))
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{metrics}"));
    std::fs::write(dir.join("config.yaml"), config).unwrap();
    let log = std::fs::File::create(dir.join("run.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_evalstream"))
        .args(["run", "--config"])
        .arg(dir.join("config.yaml"))
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    // Read stdout as it comes: a full pipe would hold the exporter (and so the answers) back.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the OTLP receiver never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

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
    // Answered means exported: the lines are out before SIGTERM.
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let out = reader.join().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "run exited with {status}");

    let eval = Command::new(env!("CARGO_BIN_EXE_evalstream"))
        .arg("eval")
        .args(CORPUS.map(corpus_file))
        .output()
        .unwrap();
    let expected = counted(&String::from_utf8(eval.stdout).unwrap());
    assert!(expected.len() > 20, "the corpus has verdicts: {expected:?}");
    let got = counted(&out);
    let doubled: BTreeMap<String, usize> =
        expected.iter().map(|(l, n)| (l.clone(), 2 * n)).collect();
    let missing: Vec<_> = doubled
        .iter()
        .filter(|(l, n)| got.get(*l) != Some(n))
        .map(|(l, n)| (l.as_str(), *n, got.get(l).copied().unwrap_or(0)))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "(line, expected, got): {missing:#?}");
    assert_eq!(got.len(), doubled.len(), "no other lines");
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
#[test]
fn forwarded_spans_and_their_evaluation_events_reach_an_otlp_backend() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    let sink = Sink::start();
    let dir = temp_dir("otlp-forward");
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
"#,
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
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());

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
