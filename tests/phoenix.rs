//! The `otlphttp` and `phoenix` exporters against a real tracing backend, Arize Phoenix 20.26.1
//! (`scripts/install-phoenix.sh` installs it into `target/phoenix/venv`; `scripts/test.sh` runs
//! it). `phoenix serve` runs on free ports with sqlite in a directory of its own; `evalstream run`
//! takes the corpus over OTLP/HTTP and exports to Phoenix; the test reads back through Phoenix's
//! REST API (`/v1/projects`, `/v1/projects/{name}/spans`, `/traces`, `/span_annotations`).
//!
//! What Phoenix takes, as found with this version:
//! - OTLP/HTTP protobuf on `POST /v1/traces` of its HTTP port, gzip or not; the request is
//!   answered before the spans are written (a background task queues them, a bulk inserter writes
//!   them a moment later), so the test polls until they are all there.
//! - No `/v1/logs`: `POST /v1/logs` answers 405. Phoenix shows evaluations from its *span
//!   annotations* (`POST /v1/span_annotations`), which the `phoenix` exporter writes
//!   ([`phoenix_exporter_annotates_the_judged_spans`]); an `otlphttp` exporter to Phoenix can only
//!   send evaluator spans (`output: [spans]`). With the default `output: [events]` the exporter
//!   takes the 405 as a permanent refusal: no retry, a warning naming the exporter and the status,
//!   and the input is answered at once with 503 and that message (a failed export asks the client
//!   to send again; see [`logs_are_refused_at_once`]).
//! - Annotations are queued too (answered before they are written); one whose span Phoenix does
//!   not hold yet is retried by Phoenix for 10 minutes.
//! - Evaluator spans show up as spans of kind `EVALUATOR` (their `openinference.span.kind`),
//!   children of the judged span in its trace, with their `gen_ai.evaluation.*` attributes and
//!   `gen_ai.evaluation.result` event as sent.
//!
//! Projects (issue 16). Phoenix files a *trace*, not a span, under a project: the project of the
//! first span of that trace it writes, named by the `x-project-name` request header, else by the
//! resource attribute `openinference.project.name`, else `default`; `service.name` plays no part.
//! Every later span of the trace joins the trace's project whatever its own resource says. The
//! corpus names no project; this test adds `openinference.project.name: support-agent` to its
//! resource, as a Phoenix user's application does. Evaluator spans carry the judged span's
//! resource, so whichever of them and the application's spans Phoenix writes first, the trace is
//! filed under the application's project: in inline mode (where the forwarded spans and the
//! evaluator spans race) and when evaluator spans come first
//! ([`evaluator_spans_first_keep_the_trace_in_its_project`]). (Under evalstream's own resource,
//! 10 to 18 of the 40 traces landed in `default` in inline mode, and all of them when evaluator
//! spans came first.)
//!
//! Timing: importing Phoenix's server takes 15-20 s here (pydantic-ai, the LLM providers'
//! clients, MCP), creating its sqlite schema a few more; on this project's two-core machines,
//! busy with other builds (load 5-7), it answered 28-38 s after its start. The four cases then
//! take 15-25 s, so the test about a minute.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use evalstream_evaluators::otlp::types::{
    AnyValue, ExportTraceServiceRequest, KeyValue, any_value,
};
use prost::Message as _;
use serde_json::Value;
use support::{free_ports, temp_dir};

/// The corpus files posted in inline mode; [`EVALUATED_FIRST`] is kept for the ordering case, so
/// its traces are new to Phoenix there.
const INLINE: [&str; 4] = ["openinference", "openllmetry", "otel_v2_latest", "traceai"];
const EVALUATED_FIRST: &str = "otel_v2";
/// The project the application names on its resource.
const PROJECT: &str = "support-agent";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn corpus_file(name: &str) -> PathBuf {
    repo().join(format!("tests/fixtures/corpus/{name}.pb"))
}

/// A corpus file as the application would send it to Phoenix: its resource names [`PROJECT`].
fn with_project(name: &str) -> ExportTraceServiceRequest {
    let mut request =
        ExportTraceServiceRequest::decode(&std::fs::read(corpus_file(name)).unwrap()[..]).unwrap();
    for rs in &mut request.resource_spans {
        rs.resource
            .get_or_insert_default()
            .attributes
            .push(KeyValue {
                key: "openinference.project.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(PROJECT.into())),
                }),
                ..Default::default()
            });
    }
    request
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// span id → trace id, in hex, of every span of `request`.
fn span_ids(request: &ExportTraceServiceRequest) -> BTreeMap<String, String> {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| (hex(&s.span_id), hex(&s.trace_id)))
        .collect()
}

/// trace id → (first start, last end), in nanoseconds, of the spans of `request`: the trace's
/// extent as the application made it.
fn extents(request: &ExportTraceServiceRequest) -> BTreeMap<String, (u64, u64)> {
    let mut extents: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for span in request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
    {
        let e = extents.entry(hex(&span.trace_id)).or_insert((u64::MAX, 0));
        e.0 = e.0.min(span.start_time_unix_nano);
        e.1 = e.1.max(span.end_time_unix_nano);
    }
    extents
}

/// `request` with every trace and span id changed by `salt` (in its last byte), so its traces are
/// new to a Phoenix that took the original.
fn with_fresh_ids(mut request: ExportTraceServiceRequest, salt: u8) -> ExportTraceServiceRequest {
    let salted = |id: &mut Vec<u8>| {
        if let Some(last) = id.last_mut() {
            *last ^= salt;
        }
    };
    for span in request
        .resource_spans
        .iter_mut()
        .flat_map(|rs| &mut rs.scope_spans)
        .flat_map(|ss| &mut ss.spans)
    {
        salted(&mut span.trace_id);
        salted(&mut span.span_id);
        salted(&mut span.parent_span_id);
    }
    request
}

/// Microseconds since the Unix epoch of a UTC ISO 8601 time as Phoenix writes it
/// (`2026-03-01T10:00:00.123456+00:00`, the fraction left out when zero).
fn iso_micros(text: &str) -> i64 {
    let text = text.trim_end_matches('Z').trim_end_matches("+00:00");
    let (date, time) = text.split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let t: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    let micros: i64 = format!("{fraction:0<6}")[..6].parse().unwrap();
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1_000_000) + micros
}

/// `evalstream eval`'s scored and errored verdicts for `files` (a skipped evaluation makes no
/// evaluator span), by score id.
fn verdicts(files: &[&str]) -> BTreeMap<String, Value> {
    verdicts_of(&files.iter().map(|f| corpus_file(f)).collect::<Vec<_>>())
}

/// [`verdicts`] for files at `paths`.
fn verdicts_of(paths: &[PathBuf]) -> BTreeMap<String, Value> {
    let eval = Command::new(env!("CARGO_BIN_EXE_evalstream"))
        .arg("eval")
        .args(paths)
        .output()
        .unwrap();
    assert!(eval.status.success());
    String::from_utf8(eval.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["outcome"] != "skipped")
        .map(|v| (v["score_id"].as_str().unwrap().to_owned(), v))
        .collect()
}

/// POSTs an OTLP/HTTP protobuf body to `/v1/traces` of `port`: the status and the body.
fn post(port: u16, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |i| i + 4);
    let status = String::from_utf8_lossy(&response[..split])
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, response[split..].to_vec())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The test's directory: Phoenix's data and log, each `evalstream run`'s configuration and log.
/// Removed when the test passed; kept, with its files listed, when it failed.
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

/// `phoenix serve` on free loopback ports, sqlite in `<dir>/phoenix-data`, its output in
/// `<dir>/phoenix.log`. Killed on drop.
struct Phoenix {
    child: Child,
    port: u16,
    log: PathBuf,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Phoenix {
    fn start(dir: &Path) -> Phoenix {
        let bin = repo().join("target/phoenix/venv/bin/phoenix");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/install-phoenix.sh (scripts/test.sh does)",
            bin.display()
        );
        let [port, grpc] = free_ports();
        let data = dir.join("phoenix-data");
        std::fs::create_dir_all(&data).unwrap();
        let log = dir.join("phoenix.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(bin);
        // Nothing from the caller's environment decides where Phoenix listens or stores.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PHOENIX_") {
                command.env_remove(key);
            }
        }
        let child = command
            .arg("serve")
            .env("PHOENIX_HOST", "127.0.0.1")
            .env("PHOENIX_PORT", port.to_string())
            .env("PHOENIX_GRPC_PORT", grpc.to_string())
            .env("PHOENIX_WORKING_DIR", &data)
            // Its migrations otherwise log every statement (thousands of lines).
            .env("PHOENIX_LOG_MIGRATIONS", "false")
            .env("PHOENIX_TELEMETRY_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("phoenix starts");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut phoenix = Phoenix {
            child,
            port,
            log,
            client,
            runtime,
        };
        let started = Instant::now();
        let limit = Duration::from_secs(120);
        loop {
            let healthy = phoenix.runtime.block_on(async {
                let answer = phoenix
                    .client
                    .get(phoenix.url("/healthz"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                answer.is_ok_and(|r| r.status().is_success())
            });
            if healthy {
                break;
            }
            phoenix.assert_running();
            assert!(
                started.elapsed() < limit,
                "Phoenix did not answer within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "Phoenix answered {:.1} s after its start",
            started.elapsed().as_secs_f64()
        );
        phoenix
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Fails the test, with the end of Phoenix's log, when it has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "Phoenix exited ({status}); the end of {}:\n{}",
                self.log.display(),
                tail(&self.log)
            );
        }
    }

    /// `GET path`, which must succeed: its JSON.
    fn get(&self, path: &str) -> Value {
        self.runtime.block_on(async {
            let response = self.client.get(self.url(path)).send().await.unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            assert!(status.is_success(), "GET {path}: {status} {text}");
            serde_json::from_str(&text).unwrap()
        })
    }

    fn projects(&self) -> Vec<String> {
        self.get("/v1/projects")["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Every span Phoenix holds, by OTel span id, with its project.
    fn spans(&self) -> HashMap<String, (String, Value)> {
        let mut spans = HashMap::new();
        for project in self.projects() {
            let mut cursor: Option<String> = None;
            loop {
                let mut path = format!("/v1/projects/{project}/spans?limit=1000");
                if let Some(c) = &cursor {
                    path.push_str(&format!("&cursor={c}"));
                }
                let page = self.get(&path);
                for span in page["data"].as_array().unwrap() {
                    let id = span["context"]["span_id"].as_str().unwrap().to_owned();
                    spans.insert(id, (project.clone(), span.clone()));
                }
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
        }
        spans
    }

    /// trace id → (start, end) in microseconds of every trace of `project`, as Phoenix computes
    /// them (its latency is their difference).
    fn traces(&self, project: &str) -> BTreeMap<String, (i64, i64)> {
        let mut traces = BTreeMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/projects/{project}/traces?limit=1000");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.get(&path);
            for trace in page["data"].as_array().unwrap() {
                let time = |key: &str| iso_micros(trace[key].as_str().unwrap());
                traces.insert(
                    trace["trace_id"].as_str().unwrap().to_owned(),
                    (time("start_time"), time("end_time")),
                );
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        traces
    }

    /// The span annotations of `project` on `span_ids`.
    fn annotations<'a>(
        &self,
        project: &str,
        span_ids: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Value> {
        let span_ids: Vec<&str> = span_ids.into_iter().collect();
        let mut annotations = Vec::new();
        for chunk in span_ids.chunks(100) {
            let query: String = chunk.iter().map(|id| format!("&span_ids={id}")).collect();
            let mut cursor: Option<String> = None;
            loop {
                let mut path =
                    format!("/v1/projects/{project}/span_annotations?limit=10000{query}");
                if let Some(c) = &cursor {
                    path.push_str(&format!("&cursor={c}"));
                }
                let page = self.get(&path);
                annotations.extend(page["data"].as_array().unwrap().iter().cloned());
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
        }
        annotations
    }

    /// Waits until Phoenix holds `count` spans (it writes them a moment after answering).
    fn wait_for_spans(&mut self, count: usize) -> HashMap<String, (String, Value)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if spans.len() >= count {
                return spans;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "Phoenix holds {} spans, {count} expected",
                spans.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Phoenix {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("Phoenix's log: {}", self.log.display());
        }
    }
}

/// `evalstream run` with `config`, its log in `<dir>/<name>.log`. Stopped with SIGTERM by
/// [`Run::stop`], killed on drop otherwise.
struct Run {
    child: Child,
    log: PathBuf,
}

impl Run {
    /// Starts it and waits until its OTLP/HTTP receiver on `port` listens.
    fn start(dir: &Path, name: &str, config: &str, port: u16) -> Run {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_evalstream"))
            .args(["run", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut run = Run { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = run.child.try_wait().unwrap() {
                panic!("{name} exited ({status}):\n{}", tail(&run.log));
            }
            assert!(Instant::now() < deadline, "{name} never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        run
    }

    fn stop(mut self) -> String {
        let stopped = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(stopped.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "run exited with {status}");
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `evalstream run` configuration: OTLP/HTTP on `http`, `forward` as given, one `otlphttp`
/// exporter to Phoenix with `output` (the default when `None`).
fn config(http: u16, metrics: u16, forward: bool, phoenix: u16, output: Option<&str>) -> String {
    let output = output.map_or(String::new(), |o| format!("    output: {o}\n"));
    format!(
        r#"receivers:
  otlp:
    protocols:
      http: {{ endpoint: "127.0.0.1:{http}" }}
    forward: {forward}
exporters:
  otlphttp:
    endpoint: "http://127.0.0.1:{phoenix}"
{output}    retry_on_failure: {{ initial_interval: 100ms }}
telemetry:
  metrics: {{ listen: "127.0.0.1:{metrics}" }}
"#
    )
}

/// The judge evaluator of the `phoenix` exporter's case, by name.
const JUDGE: &str = "helpfulness";

/// An `evalstream run` configuration: OTLP/HTTP on `http`, the default evaluators and an
/// `llm_judge` ([`JUDGE`]) calling `judge`, one `phoenix` exporter.
fn phoenix_config(http: u16, metrics: u16, phoenix: u16, judge: &str) -> String {
    format!(
        r#"receivers:
  otlp:
    protocols:
      http: {{ endpoint: "127.0.0.1:{http}" }}
evaluators:
  - type: refusal
  - type: pii
  - type: json_valid
  - type: finish_reason
  - type: empty_output
  - type: cost
  - {{ type: llm_judge, name: {JUDGE}, template: helpfulness, endpoint: "{judge}", model: judge-model, api_key: sk-test, cache_size: 0 }}
exporters:
  phoenix:
    endpoint: "http://127.0.0.1:{phoenix}"
    retry_on_failure: {{ initial_interval: 100ms }}
telemetry:
  metrics: {{ listen: "127.0.0.1:{metrics}" }}
"#
    )
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// One case of the test, against the shared Phoenix.
type Case = fn(&mut Phoenix, &Path);

#[test]
fn phoenix_keeps_the_forwarded_spans_and_their_evaluations() {
    let dir = Workdir(temp_dir("phoenix"));
    // One Phoenix for the four cases: its start-up is most of the test's time.
    let mut phoenix = Phoenix::start(&dir.0);
    let cases: [(&str, Case); 4] = [
        ("inline mode", inline_mode_with_spans),
        ("events refused", logs_are_refused_at_once),
        (
            "evaluator spans first",
            evaluator_spans_first_keep_the_trace_in_its_project,
        ),
        (
            "phoenix exporter",
            phoenix_exporter_annotates_the_judged_spans,
        ),
    ];
    for (name, case) in cases {
        let started = Instant::now();
        case(&mut phoenix, &dir.0);
        eprintln!("{name}: {:.1} s", started.elapsed().as_secs_f64());
    }
}

/// Inline mode, `output: [spans]`: Phoenix holds every span the application sent and one
/// evaluator span per scored or errored verdict `evalstream eval` gives for the same files, a
/// child of the span it judges in its trace, within its time range, with its attributes, never an
/// ERROR; every trace in the application's project, with the latency the application gave it.
fn inline_mode_with_spans(phoenix: &mut Phoenix, dir: &Path) {
    let [http, metrics] = free_ports();
    let run = Run::start(
        dir,
        "run-inline",
        &config(http, metrics, true, phoenix.port, Some("[spans]")),
        http,
    );
    let mut sent = BTreeMap::new();
    let mut extent = BTreeMap::new();
    for name in INLINE {
        let request = with_project(name);
        // Answered once Phoenix took both the forwarded spans and the evaluator spans.
        let (status, body) = post(http, &request.encode_to_vec());
        assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&body));
        sent.extend(span_ids(&request));
        extent.extend(extents(&request));
    }
    run.stop();
    let verdicts = verdicts(&INLINE);
    assert!(verdicts.len() > 100, "the corpus has verdicts");
    let spans = phoenix.wait_for_spans(sent.len() + verdicts.len());
    assert_eq!(spans.len(), sent.len() + verdicts.len(), "nothing else");

    // The application's spans, by span id, in their traces.
    for (span_id, trace_id) in &sent {
        let (_, span) = spans.get(span_id).expect("a forwarded span in Phoenix");
        assert_eq!(span["context"]["trace_id"], trace_id.as_str());
    }

    // The evaluator spans: each a verdict of eval's, on the span it judges.
    let mut seen = BTreeSet::new();
    for (project, span) in spans
        .values()
        .filter(|(_, s)| !sent.contains_key(s["context"]["span_id"].as_str().unwrap()))
    {
        let score_id = attr(span, "evalstream.score.id")
            .as_str()
            .expect("a score id");
        assert!(seen.insert(score_id.to_owned()), "one span per verdict");
        let verdict = verdicts.get(score_id).expect("a verdict eval gives");
        let parent = span["parent_id"].as_str().expect("a parent");
        assert_eq!(parent, verdict["span_id"], "the parent is the judged span");
        assert_eq!(
            span["context"]["trace_id"], verdict["trace_id"],
            "in its trace"
        );
        let (judged_project, judged) = &spans[parent];
        assert_eq!(
            project, judged_project,
            "Phoenix files the trace, not the span"
        );
        // Within the judged span's time range, whenever the evaluation ran.
        let time = |s: &Value, key: &str| iso_micros(s[key].as_str().unwrap());
        assert!(
            time(judged, "start_time") <= time(span, "start_time")
                && time(span, "end_time") <= time(judged, "end_time"),
            "{score_id}: {} .. {} outside the judged span's {} .. {}",
            span["start_time"],
            span["end_time"],
            judged["start_time"],
            judged["end_time"]
        );
        assert!(attr(span, "evalstream.evaluation.time_unix_nano").is_i64());
        assert_eq!(span["span_kind"], "EVALUATOR");
        // An errored evaluation is evalstream's failure, not the application's.
        assert_ne!(span["status_code"], "ERROR", "{score_id}");
        assert_eq!(attr(span, "gen_ai.operation.name"), "evaluation");
        assert_eq!(attr(span, "gen_ai.evaluation.name"), &verdict["evaluator"]);
        assert_eq!(
            attr(span, "evalstream.evaluation.outcome"),
            &verdict["outcome"]
        );
        assert_eq!(
            attr(span, "evalstream.evaluator.version"),
            &verdict["evaluator_version"]
        );
        if verdict["outcome"] == "scored" {
            let (got, want) = (
                attr(span, "gen_ai.evaluation.score.value")
                    .as_f64()
                    .unwrap(),
                verdict["score"].as_f64().unwrap(),
            );
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{got} != {want}"
            );
            assert_eq!(
                attr(span, "gen_ai.evaluation.score.label"),
                &verdict["label"]
            );
            assert_eq!(
                attr(span, "evalstream.evaluation.passed"),
                &verdict["passed"]
            );
        } else {
            assert_eq!(attr(span, "error.type"), &verdict["error_type"]);
        }
        assert!(attr(span, "gen_ai.evaluation.explanation").is_string());
        assert_eq!(span["events"][0]["name"], "gen_ai.evaluation.result");
    }
    assert_eq!(seen.len(), verdicts.len());

    // Projects: every trace under the application's, whichever of its spans Phoenix wrote first.
    let mut traces: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (project, span) in spans.values() {
        traces
            .entry(span["context"]["trace_id"].as_str().unwrap())
            .or_default()
            .insert(project);
    }
    for (trace, projects) in &traces {
        assert_eq!(
            projects.iter().copied().collect::<Vec<_>>(),
            [PROJECT],
            "trace {trace}"
        );
    }
    // The traces' latency is the application's: evaluator spans do not stretch them.
    let latencies = phoenix.traces(PROJECT);
    for (trace, (start, end)) in &extent {
        let (got_start, got_end) = latencies[trace];
        let want = (*start / 1000) as i64..=(*end / 1000) as i64;
        assert!(
            (got_start - want.start()).abs() <= 1 && (got_end - want.end()).abs() <= 1,
            "trace {trace}: Phoenix has {got_start}..{got_end} µs, the application {want:?}"
        );
    }
}

/// The default `output: [events]` to Phoenix: `POST /v1/logs` answers 405, which the exporter
/// takes as a permanent refusal. The input is answered at once, with the backend's answer.
fn logs_are_refused_at_once(phoenix: &mut Phoenix, dir: &Path) {
    let [http, metrics] = free_ports();
    let run = Run::start(
        dir,
        "run-events",
        &config(http, metrics, false, phoenix.port, None),
        http,
    );
    let started = Instant::now();
    let (status, body) = post(http, &std::fs::read(corpus_file(INLINE[0])).unwrap());
    let took = started.elapsed();
    let body = String::from_utf8_lossy(&body);
    // 503: a failed export asks the client to send again (`answer: after_export`), even when the
    // backend refused for good.
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("exporter otlphttp: the backend answered http 405"),
        "{body}"
    );
    // No retry and no wait: the exporter's timeout (30 s) and retries (300 s) are not involved.
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    let log = run.stop();
    assert!(
        log.contains("evaluations not exported") && log.contains("405"),
        "{log}"
    );
}

/// Evaluator spans written before their trace's own spans (evalstream scoring alone, the
/// application exporting to Phoenix itself): they carry the application's resource, so the trace,
/// the application's spans with it, is filed under the application's project (issue 16: under
/// evalstream's resource it went to `default`).
fn evaluator_spans_first_keep_the_trace_in_its_project(phoenix: &mut Phoenix, dir: &Path) {
    let before = phoenix.spans().len();
    let [http, metrics] = free_ports();
    let run = Run::start(
        dir,
        "run-spans",
        &config(http, metrics, false, phoenix.port, Some("[spans]")),
        http,
    );
    let request = with_project(EVALUATED_FIRST);
    let body = request.encode_to_vec();
    assert_eq!(post(http, &body).0, 200);
    run.stop();
    let verdicts = verdicts(&[EVALUATED_FIRST]);
    phoenix.wait_for_spans(before + verdicts.len());
    // Now the application's own export.
    assert_eq!(post(phoenix.port, &body).0, 200);
    let sent = span_ids(&request);
    let spans = phoenix.wait_for_spans(before + verdicts.len() + sent.len());
    for span_id in sent.keys() {
        let (project, _) = &spans[span_id];
        assert_eq!(project, PROJECT, "the application's span {span_id}");
    }
}

/// The `phoenix` exporter: the application exports its spans to Phoenix itself, evalstream
/// scores them and writes each scored or errored verdict `evalstream eval` gives (the default
/// evaluators, kind `CODE`), and each verdict of an `llm_judge` (kind `LLM`; a local stand-in
/// judge scores 1), as a span annotation on the judged span, in the application's project; the
/// traces keep their latency; a replay updates the annotations rather than adding more.
fn phoenix_exporter_annotates_the_judged_spans(phoenix: &mut Phoenix, dir: &Path) {
    use evalstream::pipeline::judge::stand_in;
    let (judge_url, judge) = stand_in::start().unwrap();
    // Traces new to this Phoenix (the other cases posted the corpus as it is).
    let requests: Vec<ExportTraceServiceRequest> = INLINE
        .iter()
        .map(|name| with_fresh_ids(with_project(name), 0x5a))
        .collect();
    let mut files = Vec::new();
    let mut sent = BTreeMap::new();
    for (name, request) in INLINE.iter().zip(&requests) {
        let path = dir.join(format!("fresh-{name}.pb"));
        std::fs::write(&path, request.encode_to_vec()).unwrap();
        files.push(path);
        sent.extend(span_ids(request));
    }
    let verdicts = verdicts_of(&files);
    assert!(verdicts.len() > 100, "the corpus has verdicts");

    // The application's export, then its traces' extent as Phoenix has them.
    let before = phoenix.spans().len();
    for request in &requests {
        assert_eq!(post(phoenix.port, &request.encode_to_vec()).0, 200);
    }
    let spans = phoenix.wait_for_spans(before + sent.len());
    for span_id in sent.keys() {
        assert_eq!(
            spans[span_id].0, PROJECT,
            "the application's span {span_id}"
        );
    }
    let latencies = |phoenix: &Phoenix| -> BTreeMap<String, (i64, i64)> {
        let all = phoenix.traces(PROJECT);
        sent.values().map(|t| (t.clone(), all[t])).collect()
    };
    let latency_before = latencies(phoenix);

    let export = |phoenix: &mut Phoenix, name: &str| {
        let [http, metrics] = free_ports();
        let run = Run::start(
            dir,
            name,
            &phoenix_config(http, metrics, phoenix.port, &judge_url),
            http,
        );
        for request in &requests {
            // Answered once Phoenix took the annotations.
            let (status, body) = post(http, &request.encode_to_vec());
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        }
        run.stop();
    };
    export(phoenix, "run-phoenix");
    // One judge verdict per call: the stand-in's requests are those of the first run.
    let judge_calls = judge.received().len();
    assert!(judge_calls > 0, "the judge applies to the chat spans");
    let expected = verdicts.len() + judge_calls;

    // Annotations may only be on the application's spans: ask for all of them.
    let judged: BTreeSet<&str> = sent.keys().map(String::as_str).collect();
    // Phoenix writes queued annotations a moment after answering.
    let wait_for = |phoenix: &mut Phoenix, done: &dyn Fn(&[Value]) -> bool| -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let annotations = phoenix.annotations(PROJECT, judged.iter().copied());
            if done(&annotations) {
                return annotations;
            }
            phoenix.assert_running();
            assert!(
                Instant::now() < deadline,
                "Phoenix holds {} annotations, {expected} expected",
                annotations.len(),
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let annotations = wait_for(phoenix, &|a| a.len() >= expected);
    assert_eq!(annotations.len(), expected, "one annotation per verdict");
    let mut seen = BTreeSet::new();
    let mut judged_by_llm = 0;
    for a in &annotations {
        let score_id = a["identifier"].as_str().expect("an identifier");
        assert!(seen.insert(score_id.to_owned()), "{score_id} twice");
        if a["name"] == JUDGE {
            // The stand-in judge's verdict, on a span of the application's.
            judged_by_llm += 1;
            assert_eq!(a["annotator_kind"], "LLM");
            assert_eq!(a["metadata"]["evaluator_type"], "llm_judge");
            assert_eq!(a["metadata"]["outcome"], "scored");
            assert_eq!(a["result"]["score"].as_f64(), Some(1.0));
            assert_eq!(a["metadata"]["score_id"], score_id);
            let trace_id = &sent[a["span_id"].as_str().unwrap()];
            assert_eq!(a["metadata"]["trace_id"], trace_id.as_str());
            continue;
        }
        let verdict = verdicts.get(score_id).expect("a verdict eval gives");
        assert_eq!(a["span_id"], verdict["span_id"], "on the judged span");
        assert_eq!(a["name"], verdict["evaluator"]);
        assert_eq!(a["annotator_kind"], "CODE", "not a judge");
        assert_eq!(a["source"], "API");
        let metadata = &a["metadata"];
        assert_eq!(metadata["source"], "evalstream");
        assert_eq!(metadata["outcome"], verdict["outcome"]);
        assert_eq!(metadata["evaluator_version"], verdict["evaluator_version"]);
        assert_eq!(metadata["score_id"], score_id);
        assert_eq!(metadata["trace_id"], verdict["trace_id"]);
        let result = &a["result"];
        if verdict["outcome"] == "scored" {
            let (got, want) = (
                result["score"].as_f64().unwrap(),
                verdict["score"].as_f64().unwrap(),
            );
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{got} != {want}"
            );
            assert_eq!(result["label"], verdict["label"]);
            assert_eq!(metadata["passed"], verdict["passed"]);
        } else {
            assert_eq!(result["label"], "error");
            assert_eq!(metadata["error_type"], verdict["error_type"]);
        }
        assert!(result["explanation"].is_string());
    }
    assert_eq!(judged_by_llm, judge_calls);
    // No span added, so the traces' latency is the application's.
    assert_eq!(latencies(phoenix), latency_before);
    assert_eq!(
        phoenix.spans().len(),
        before + sent.len(),
        "no evaluator spans"
    );

    // A replay (a restart, a redelivered message): every annotation is updated in place.
    let updated = |a: &Value| a["updated_at"].as_str().unwrap().to_owned();
    let first: BTreeMap<String, (String, String)> = annotations
        .iter()
        .map(|a| {
            let id = a["identifier"].as_str().unwrap().to_owned();
            (id, (a["id"].as_str().unwrap().to_owned(), updated(a)))
        })
        .collect();
    export(phoenix, "run-phoenix-replay");
    let replayed = wait_for(phoenix, &|annotations| {
        annotations.len() > first.len()
            || annotations.iter().all(|a| {
                let (_, was) = &first[a["identifier"].as_str().unwrap()];
                updated(a) != *was
            })
    });
    assert_eq!(replayed.len(), first.len(), "a replay adds no annotation");
    for a in &replayed {
        let (id, _) = &first[a["identifier"].as_str().unwrap()];
        assert_eq!(
            a["id"].as_str().unwrap(),
            id,
            "the same annotation, updated"
        );
    }
}
