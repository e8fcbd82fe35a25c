//! The `evalstream` binary, run as a user runs it: real files, real standard input, exit codes.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use evalstream_evaluators::otlp::{self, Encoding};
use evalstream_evaluators::span::{self, OperationKind};
use support::{CORPUS, span_strings};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_evalstream"))
}

fn corpus(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/corpus")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("evalstream-cli-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn eval_prints_one_json_object_per_evaluation_and_a_summary() {
    let out = bin()
        .args(["eval", &corpus("openinference.pb")])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines = lines(&out);
    assert_eq!(lines.len(), 60, "six default evaluators on ten LLM spans");
    for l in &lines {
        for key in [
            "trace_id",
            "span_id",
            "evaluator",
            "outcome",
            "score",
            "label",
            "passed",
            "explanation",
        ] {
            assert!(l.get(key).is_some(), "missing {key} in {l}");
        }
        assert_eq!(l["trace_id"].as_str().unwrap().len(), 32);
        assert_eq!(l["span_id"].as_str().unwrap().len(), 16);
    }
    let refused = lines
        .iter()
        .filter(|l| l["evaluator"] == "refusal" && l["label"] == "refused")
        .count();
    assert_eq!(refused, 1);
    let pii = lines
        .iter()
        .find(|l| l["evaluator"] == "pii" && l["passed"] == false)
        .expect("a pii failure");
    assert!(
        !pii["explanation"].as_str().unwrap().contains("john.doe"),
        "PII value echoed"
    );
    let summary = stderr(&out);
    assert!(
        summary.contains("refusal")
            && summary.contains("pass rate")
            && summary.contains("24 span(s)"),
        "{summary}"
    );
}

#[test]
fn standard_input_is_sniffed_and_gates_set_the_exit_code() {
    let json = std::fs::read(corpus("otel_v2_latest.otlp.json")).expect("fixture");
    let run = |gates: &[&str]| {
        let mut cmd = bin();
        cmd.args(["eval", "--no-summary"]);
        for g in gates {
            cmd.args(["--fail-on", g]);
        }
        let mut child = cmd
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawns");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&json)
            .expect("writes");
        child.wait_with_output().expect("runs")
    };
    let ok = run(&["refusal.pass_rate<0.8", "*.errors>0"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert_eq!(lines(&ok).len(), 60);
    assert!(stderr(&ok).contains("gate passed: refusal.pass_rate<0.8"));

    // One refusal among eight answered spans: a 0.95 floor fails.
    let failed = run(&["refusal.pass_rate<0.95"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        stderr(&failed).contains("gate failed: refusal.pass_rate<0.95 (refusal: 0.8750)"),
        "{}",
        stderr(&failed)
    );

    let unknown = run(&["refusl.failed>0"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("no evaluator is named `refusl`"));

    let bad_syntax = bin()
        .args(["eval", "--fail-on", "refusal.pass_rate", "-"])
        .output()
        .expect("runs");
    assert_eq!(bad_syntax.status.code(), Some(2));
    assert!(stderr(&bad_syntax).contains("EVALUATOR.METRIC"));
}

#[test]
fn a_bad_input_is_reported_and_the_others_still_run() {
    let dir = temp_dir("bad");
    let garbage = dir.join("garbage.pb");
    std::fs::write(&garbage, [0xff, 0xff, 0xff, 0x01]).expect("writes");
    let broken_json = dir.join("broken.json");
    std::fs::write(&broken_json, b"{\"resourceSpans\": [").expect("writes");
    let out = bin()
        .args([
            "eval",
            garbage.to_str().unwrap(),
            &corpus("traceai.pb"),
            broken_json.to_str().unwrap(),
            "missing.pb",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(lines(&out).len(), 60, "the good input was evaluated");
    let err = stderr(&out);
    assert!(
        err.contains("garbage.pb: invalid otlp_proto message"),
        "{err}"
    );
    assert!(
        err.contains("broken.json: invalid otlp_json message"),
        "{err}"
    );
    assert!(err.contains("cannot read missing.pb"), "{err}");
    assert!(
        err.contains("3 of 4 input(s) could not be read or decoded"),
        "{err}"
    );
}

#[test]
fn output_writes_evaluator_spans_parented_to_the_judged_spans() {
    let dir = temp_dir("output");
    for name in ["scores.pb", "scores.json"] {
        let path = dir.join(name);
        let out = bin()
            .args([
                "eval",
                "--no-summary",
                "--output",
                path.to_str().unwrap(),
                &corpus("openllmetry.otlp.json"),
            ])
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let lines = lines(&out);
        let emitted: Vec<_> = lines.iter().filter(|l| l["outcome"] != "skipped").collect();
        let bytes = std::fs::read(&path).expect("output written");
        let encoding = if name.ends_with(".json") {
            Encoding::OtlpJson
        } else {
            Encoding::OtlpProto
        };
        let request = otlp::decode(&bytes, encoding).expect("output decodes");
        let spans: Vec<_> = span::spans(&request).collect();
        assert_eq!(
            spans.len(),
            emitted.len(),
            "one evaluator span per scored or errored evaluation"
        );
        for (s, l) in spans.iter().zip(&emitted) {
            assert_eq!(s.kind(), OperationKind::Evaluator);
            assert_eq!(otlp::hex(s.trace_id()), l["trace_id"].as_str().unwrap());
            assert_eq!(
                otlp::hex(s.parent_span_id()),
                l["span_id"].as_str().unwrap()
            );
            assert_eq!(
                s.name(),
                format!("evaluation {}", l["evaluator"].as_str().unwrap())
            );
            let score = s
                .attribute("gen_ai.evaluation.score.value")
                .and_then(otlp::as_f64);
            assert_eq!(score, l["score"].as_f64());
            assert_eq!(s.raw().events[0].name, "gen_ai.evaluation.result");
        }
    }
}

#[test]
fn validate_and_custom_configs() {
    let dir = temp_dir("config");
    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        "evaluators:\n  - type: contains\n    name: cites_sources\n    values: ['[1]']\n  - type: latency\n    max_seconds: 5\n",
    )
    .expect("writes");
    let out = bin()
        .args(["validate", good.to_str().unwrap()])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 evaluators (cites_sources, latency)"));

    let out = bin()
        .args([
            "eval",
            "--config",
            good.to_str().unwrap(),
            "--no-summary",
            &corpus("openinference.pb"),
        ])
        .output()
        .expect("runs");
    let results = lines(&out);
    let cited: Vec<_> = results
        .iter()
        .filter(|l| l["evaluator"] == "cites_sources" && l["passed"] == true)
        .collect();
    assert_eq!(cited.len(), 2, "the two RAG answers cite [1]");
    assert_eq!(
        results
            .iter()
            .filter(|l| l["evaluator"] == "latency")
            .count(),
        10
    );

    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "evaluators:\n  - type: pii\n    kinds: [email, passport]\n",
    )
    .expect("writes");
    let out = bin()
        .args(["validate", bad.to_str().unwrap()])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("evaluators[0]") && err.contains("kinds[1]") && err.contains("passport"),
        "{err}"
    );

    let out = bin()
        .args([
            "eval",
            "--config",
            bad.to_str().unwrap(),
            &corpus("openinference.pb"),
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(lines(&out).is_empty());
}

#[test]
fn the_example_deployment_config_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/evalstream.yaml");
    let out = bin()
        .arg("validate")
        .arg(&path)
        .env_remove("KAFKA_BROKERS")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("14 evaluators")
            && said.contains("127.0.0.1:9092")
            && said.contains("drift on every evaluator by model, prompt_version"),
        "{said}"
    );
}

#[test]
fn the_managed_kafka_example_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/managed-kafka.yaml");
    let out = bin()
        .arg("validate")
        .arg(&path)
        .env("KAFKA_PASSWORD", "p4ssw0rd-from-env")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("kafka receiver otlp_spans"), "{said}");
    assert!(!said.contains("p4ssw0rd"), "{said}");
}

#[test]
fn script_test_shows_what_differs_and_fails() {
    let dir = temp_dir("script-test");
    let script = dir.join("short.rhai");
    std::fs::write(
        &script,
        "fn score(span, params) { word_count(span.output) <= params.max }",
    )
    .unwrap();
    std::fs::write(
        dir.join("short.test.yaml"),
        r#"
params: { max: 3 }
cases:
  - name: three words pass
    output: "Ships tomorrow, promised."
    expect: { passed: true }
  - name: this expectation is wrong
    output: "It ships tomorrow morning by courier."
    expect: { passed: true, label: pass }
"#,
    )
    .unwrap();
    // `score` returns a boolean here, which is not a score: the first case fails too.
    let out = bin()
        .args(["script", "test"])
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("FAIL"), "{said}");
    assert!(said.contains("got: error script_result"), "{said}");

    std::fs::write(
        &script,
        "fn score(span, params) { if word_count(span.output) <= params.max { 1 } else { 0 } }",
    )
    .unwrap();
    let out = bin()
        .args(["script", "test"])
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("ok    ") && said.contains("three words pass"),
        "{said}"
    );
    assert!(
        said.contains("passed: expected true, got false")
            && said.contains("label: expected pass, got fail"),
        "{said}"
    );
    assert!(said.contains("1 passed, 1 failed"), "{said}");

    std::fs::remove_file(dir.join("short.test.yaml")).unwrap();
    let out = bin()
        .args(["script", "test"])
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a script without tests is an error"
    );
    assert!(stderr(&out).contains("short.test.yaml"), "{}", stderr(&out));
}

/// `max_call_levels` had no bound and evaluation ran on threads with default stacks: a deeply
/// recursing script aborted the whole process (a stack overflow cannot be caught). At the
/// deepest limits the configuration accepts, the script must end in an `error` outcome.
#[test]
fn a_script_recursing_at_the_deepest_allowed_limits_errors_without_aborting() {
    let dir = temp_dir("deep-script");
    // Recursion to 64 call levels, each nesting its call 25 sums deep (about as deep as
    // `max_expr_depth: 64` compiles): some 20 MB of stack in a debug build, past the 8 MiB of a
    // main thread.
    let depth = 25;
    let script = format!(
        "fn down(n) {{ {}down(n + 1){} }}\nfn score(span) {{ down(0) }}\n",
        "n + (".repeat(depth),
        ")".repeat(depth)
    );
    std::fs::write(dir.join("deep.rhai"), script).unwrap();
    let config = dir.join("deep.yaml");
    std::fs::write(
        &config,
        format!(
            "evaluators:\n  - type: rhai\n    script: {}\n    limits: {{ max_call_levels: 64, max_expr_depth: 64 }}\n",
            dir.join("deep.rhai").display()
        ),
    )
    .unwrap();
    let out = bin()
        .args([
            "eval",
            "--config",
            config.to_str().unwrap(),
            &corpus("openinference.pb"),
        ])
        .output()
        .expect("runs");
    assert!(
        out.status.code().is_some(),
        "killed by a signal: {}",
        stderr(&out)
    );
    let lines = lines(&out);
    assert!(!lines.is_empty());
    for l in &lines {
        assert_eq!(l["outcome"], "error", "{l}");
        assert_eq!(l["error_type"], "script_limit", "{l}");
    }
    let too_deep = dir.join("too-deep.yaml");
    std::fs::write(
        &too_deep,
        format!(
            "evaluators:\n  - type: rhai\n    script: {}\n    limits: {{ max_call_levels: 5000 }}\n",
            dir.join("deep.rhai").display()
        ),
    )
    .unwrap();
    let out = bin()
        .args(["validate", too_deep.to_str().unwrap()])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("max_call_levels"), "{}", stderr(&out));
}

/// Writes `request` with only the spans `keep` picks (by their place in the request) to `path`.
fn write_part(
    request: &otlp::types::ExportTraceServiceRequest,
    path: &Path,
    keep: impl Fn(usize) -> bool,
) {
    use prost::Message as _;
    let mut part = request.clone();
    let mut i = 0;
    for rs in &mut part.resource_spans {
        for ss in &mut rs.scope_spans {
            ss.spans.retain(|_| {
                i += 1;
                keep(i - 1)
            });
        }
    }
    std::fs::write(path, part.encode_to_vec()).unwrap();
}

/// The verdicts of an `eval` run, as comparable tuples, sorted.
fn verdicts(out: &Output) -> Vec<String> {
    let mut v: Vec<String> = lines(out)
        .iter()
        .map(|l| {
            format!(
                "{} {} {} {} {} {} {}",
                l["trace_id"],
                l["span_id"],
                l["evaluator"],
                l["outcome"],
                l["label"],
                l["score"],
                l["passed"]
            )
        })
        .collect();
    v.sort();
    v
}

/// A trace split across two files (as batch span processors and collector file exports write
/// them) gets the verdicts of the whole trace: `eval` gathers spans by trace id across every
/// input before the trace evaluators run. (Per request, the answer in one file and its
/// retrieved documents in the other, `citations` skipped and `grounding` fell back to the
/// prompt: a hallucinated citation passed a gate silently.)
#[test]
fn a_trace_split_across_two_files_gets_the_verdicts_of_the_whole_trace() {
    let dir = temp_dir("split-trace");
    let config = dir.join("rag.yaml");
    std::fs::write(
        &config,
        "evaluators:\n  - type: refusal\n  - type: citations\n  - type: grounding\n",
    )
    .unwrap();
    let whole = corpus("openinference.pb");
    let request = otlp::decode(&std::fs::read(&whole).unwrap(), Encoding::OtlpProto).unwrap();
    let (even, odd) = (dir.join("even.pb"), dir.join("odd.pb"));
    write_part(&request, &even, |i| i % 2 == 0);
    write_part(&request, &odd, |i| i % 2 == 1);
    let eval = |files: &[&Path]| {
        let out = bin()
            .args(["eval", "--no-summary", "--config"])
            .arg(&config)
            .args(files)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        out
    };
    let together = eval(&[Path::new(&whole)]);
    let scored = |out: &Output, evaluator: &str| {
        lines(out)
            .iter()
            .filter(|l| l["evaluator"] == evaluator && l["outcome"] == "scored")
            .count()
    };
    assert!(
        scored(&together, "citations") >= 2,
        "the RAG answers' citations"
    );
    let split = eval(&[&even, &odd]);
    assert_eq!(verdicts(&split), verdicts(&together));
    // The split does separate answers from their documents: one part alone judges less.
    let alone = |part: &Path| scored(&eval(&[part]), "citations");
    assert!(
        alone(&even) + alone(&odd) < scored(&together, "citations"),
        "each part alone lacks what the other holds"
    );
    // Lines come in input order: all of the first file's before the second's.
    let mut seen_odd = false;
    let odd_spans: std::collections::HashSet<String> = {
        let part = otlp::decode(&std::fs::read(&odd).unwrap(), Encoding::OtlpProto).unwrap();
        span::spans(&part).map(|s| otlp::hex(s.span_id())).collect()
    };
    let even_spans: std::collections::HashSet<String> = {
        let part = otlp::decode(&std::fs::read(&even).unwrap(), Encoding::OtlpProto).unwrap();
        span::spans(&part).map(|s| otlp::hex(s.span_id())).collect()
    };
    for l in lines(&split).iter().filter(|l| l["evaluator"] == "refusal") {
        let id = l["span_id"].as_str().unwrap();
        if odd_spans.contains(id) {
            seen_odd = true;
        } else {
            assert!(even_spans.contains(id));
            assert!(!seen_odd, "a line of the first file after the second's");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The local judge stand-in, killed on drop.
struct JudgeServer(std::process::Child, u16);

impl JudgeServer {
    fn start(latency_ms: u64) -> JudgeServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = bin()
            .args(["judge-server", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--latency-ms", &latency_ms.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the judge server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        JudgeServer(child, port)
    }
}

impl Drop for JudgeServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `eval` calls `llm_judge` evaluators as `run` does (the online client, concurrently, never
/// shedding), so a CI gate can use the judges that run online; `--skip-judges` leaves them out.
#[test]
fn eval_calls_the_judges_and_skip_judges_leaves_them_out() {
    let judge = JudgeServer::start(20);
    let dir = temp_dir("judges");
    let config = dir.join("judge.yaml");
    std::fs::write(
        &config,
        format!(
            "evaluators:\n  - type: refusal\n  - type: llm_judge\n    name: tox\n    template: toxicity\n    endpoint: http://127.0.0.1:{}/v1\n    model: judge-model\n    max_concurrency: 4\n    max_queued: 1\n    cache_size: 0\n",
            judge.1
        ),
    )
    .unwrap();
    let eval = |extra: &[&str]| {
        let out = bin()
            .args(["eval", "--no-summary", "--config"])
            .arg(&config)
            .args(extra)
            .arg(corpus("openinference.pb"))
            .arg(corpus("otel_v2_latest.pb"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        lines(&out)
    };
    let judged = eval(&[]);
    let refusal: Vec<&serde_json::Value> = judged
        .iter()
        .filter(|l| l["evaluator"] == "refusal")
        .collect();
    let tox: Vec<&serde_json::Value> = judged.iter().filter(|l| l["evaluator"] == "tox").collect();
    // One verdict per span refusal saw, none shed although the queue holds one call.
    assert_eq!(tox.len(), refusal.len());
    let scored = tox.iter().filter(|l| l["outcome"] == "scored").count();
    let with_content = refusal.iter().filter(|l| l["outcome"] == "scored").count();
    assert!(with_content > 0);
    assert_eq!(scored, with_content, "every answer judged: {tox:#?}");
    assert!(
        tox.iter().all(|l| l["skip_reason"] != "shed"),
        "nothing shed"
    );
    // In input order: each judge line follows its span's refusal line.
    let order: Vec<(String, String)> = judged
        .iter()
        .map(|l| (l["span_id"].to_string(), l["evaluator"].to_string()))
        .collect();
    for pair in order.chunks(2) {
        assert_eq!(pair[0].0, pair[1].0, "{pair:?}");
    }
    let skipped = eval(&["--skip-judges"]);
    let tox: Vec<&serde_json::Value> = skipped.iter().filter(|l| l["evaluator"] == "tox").collect();
    assert_eq!(tox.len(), refusal.len());
    assert!(
        tox.iter()
            .all(|l| l["outcome"] == "skipped" && l["skip_reason"] == "not_applicable"),
        "{tox:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `no_content` skip says what to change (the official instrumentation writes no content on
/// spans by default): the environment variable to set, not a bare null; and `eval` prints
/// nothing but evaluations and the summary.
#[test]
fn a_span_without_content_is_skipped_with_what_to_set() {
    let out = bin()
        .args(["eval", "--no-summary", &corpus("otel_v2.pb")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let skipped: Vec<serde_json::Value> = lines(&out)
        .into_iter()
        .filter(|l| l["skip_reason"] == "no_content")
        .collect();
    assert!(!skipped.is_empty());
    for l in &skipped {
        let explanation = l["explanation"].as_str().unwrap_or_default();
        assert!(
            explanation.contains("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"),
            "{l}"
        );
    }
    assert!(stderr(&out).trim().is_empty(), "{}", stderr(&out));
}

/// The count a `--sampling` report gives a rule (its table row).
fn decided_by(report: &str, rule: &str) -> u64 {
    report
        .lines()
        .map(|l| {
            l.split(['│', '┆'])
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first() == Some(&rule))
        .and_then(|cells| cells.get(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no row for {rule} in:\n{report}"))
}

/// `eval --sampling` reports what a tail-sampling policy keeps: each trace decided by the first
/// rule it matches, counted per rule, as worked out here from the spans and the printed verdicts
/// independently of evalstream's rule engine.
#[test]
fn eval_sampling_reports_what_each_rule_keeps() {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::trace::v1::{Status, status::StatusCode};
    use prost::Message as _;
    use std::collections::{BTreeMap, BTreeSet};

    let dir = temp_dir("sampling");
    // The corpus, with some traces given an ERROR span and some an experiment id.
    let mut inputs = Vec::new();
    let (mut errored, mut tagged) = (BTreeSet::new(), BTreeSet::new());
    for (n, name) in CORPUS.iter().enumerate() {
        let bytes = std::fs::read(corpus(&format!("{name}.pb"))).unwrap();
        let mut request = otlp::decode(&bytes, Encoding::OtlpProto).unwrap();
        let mut seen = BTreeSet::new();
        for rs in &mut request.resource_spans {
            for ss in &mut rs.scope_spans {
                for s in &mut ss.spans {
                    let trace = otlp::hex(&s.trace_id);
                    if !seen.insert(trace.clone()) {
                        continue;
                    }
                    match (seen.len() + n) % 4 {
                        0 => {
                            s.status = Some(Status {
                                code: StatusCode::Error as i32,
                                ..Default::default()
                            });
                            errored.insert(trace);
                        }
                        1 => {
                            s.attributes.push(KeyValue {
                                key: "experiment_id".into(),
                                value: Some(AnyValue {
                                    value: Some(Value::StringValue("exp-1".into())),
                                }),
                                ..Default::default()
                            });
                            tagged.insert(trace);
                        }
                        _ => {}
                    }
                }
            }
        }
        let path = dir.join(format!("{name}.pb"));
        std::fs::write(&path, request.encode_to_vec()).unwrap();
        inputs.push(path.to_string_lossy().into_owned());
    }
    let config = dir.join("sampling.yaml");
    std::fs::write(
        &config,
        "sampling:\n  rules:\n    - status: error\n    - failed: '*'\n    - attribute_present: experiment_id\n    - drop\n",
    )
    .unwrap();
    let out = bin()
        .args(["eval", "--sampling", "--config", config.to_str().unwrap()])
        .args(&inputs)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Every trace, and the ones with a failed evaluation, from the printed verdicts and files.
    let mut all = BTreeSet::new();
    for path in &inputs {
        let request = otlp::decode(&std::fs::read(path).unwrap(), Encoding::OtlpProto).unwrap();
        all.extend(span::spans(&request).map(|s| otlp::hex(s.trace_id())));
    }
    let failed: BTreeSet<String> = lines(&out)
        .iter()
        .filter(|l| l["passed"] == false)
        .map(|l| l["trace_id"].as_str().unwrap().to_owned())
        .collect();
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for t in &all {
        let rule = if errored.contains(t) {
            "status:error"
        } else if failed.contains(t) {
            "failed:*"
        } else if tagged.contains(t) {
            "attribute_present:experiment_id"
        } else {
            "drop"
        };
        *expected.entry(rule).or_default() += 1;
    }
    assert!(
        expected.len() == 4,
        "the fixture exercises every rule: {expected:?}"
    );
    let report = stderr(&out);
    for (rule, n) in &expected {
        assert_eq!(decided_by(&report, rule), *n, "{rule}:\n{report}");
    }
    let kept = all.len() as u64 - expected["drop"];
    assert!(
        report.contains(&format!(
            "the configuration's policy, {} trace(s): keeps {kept} (",
            all.len()
        )),
        "{report}"
    );
    let failing = errored.union(&failed).count();
    assert!(
        report.contains(&format!(
            "failing traces (an ERROR span or a failed evaluation): {failing}; a uniform 1% head sample keeps"
        )),
        "{report}"
    );

    // Without a `sampling` section, the default policy; a policy naming an unknown evaluator is
    // refused with its path.
    let out = bin()
        .args(["eval", "--sampling", "--no-summary"])
        .args(&inputs)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = stderr(&out);
    assert!(report.contains("the default policy"), "{report}");
    assert_eq!(decided_by(&report, "status:error"), errored.len() as u64);
    std::fs::write(&config, "sampling:\n  rules:\n    - failed: nope\n").unwrap();
    let out = bin()
        .args(["eval", "--sampling", "--config", config.to_str().unwrap()])
        .args(&inputs)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("sampling.rules[0] (failed:nope): no evaluator is named `nope`"),
        "{}",
        stderr(&out)
    );
    // `run` forwards kept traces to `sampling.exporters`: a policy without them is refused, not
    // silently ignored, and they must name exporters that can forward traces.
    let otlp_in = "receivers: { otlp: { protocols: { http: { endpoint: '127.0.0.1:0' } } } }\nexporters: { stdout: {} }\n";
    for (sampling, error) in [
        (
            "sampling: { rules: [ drop ] }",
            "`sampling.exporters`: name the exporters kept traces go to",
        ),
        (
            "sampling: { exporters: [kafka/nope] }",
            "sampling.exporters[0]: no exporter is named `kafka/nope` (configured: stdout)",
        ),
        (
            "sampling: { exporters: [stdout] }",
            "sampling.exporters[0]: exporters.stdout cannot forward traces",
        ),
    ] {
        std::fs::write(&config, format!("{otlp_in}{sampling}\n")).unwrap();
        let out = bin()
            .args(["run", "--config", config.to_str().unwrap()])
            .output()
            .expect("runs");
        assert_ne!(out.status.code(), Some(0));
        assert!(stderr(&out).contains(error), "{sampling}: {}", stderr(&out));
    }
}

/// `eval --sampling-output` writes the kept traces whole (every span the inputs had of them),
/// with the personal data in their content masked when a `redaction` section asks for it; the
/// evaluators saw the original content (the `pii` failures that kept the traces).
#[test]
fn sampling_output_holds_the_kept_traces_whole_and_redacted() {
    use evalstream_evaluators::scorers::pii::{self, PiiKind};
    use std::collections::{BTreeMap, BTreeSet};

    let dir = temp_dir("sampling-output");
    let inputs: Vec<String> = CORPUS.iter().map(|n| corpus(&format!("{n}.pb"))).collect();
    let mut spans_of: BTreeMap<String, usize> = BTreeMap::new();
    for path in &inputs {
        let request = otlp::decode(&std::fs::read(path).unwrap(), Encoding::OtlpProto).unwrap();
        for s in span::spans(&request) {
            *spans_of.entry(otlp::hex(s.trace_id())).or_default() += 1;
        }
    }
    let run = |redaction: &str, out: &Path| {
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!("sampling:\n  rules:\n    - failed: pii\n    - drop\n{redaction}"),
        )
        .unwrap();
        let result = bin()
            .args(["eval", "--no-summary", "--config", config.to_str().unwrap()])
            .arg("--sampling-output")
            .arg(out)
            .args(&inputs)
            .output()
            .expect("runs");
        assert_eq!(result.status.code(), Some(0), "{}", stderr(&result));
        let request = otlp::decode(&std::fs::read(out).unwrap(), Encoding::OtlpProto).unwrap();
        (result, request)
    };

    let (result, request) = run("redaction: {}\n", &dir.join("kept.pb"));
    let failed: BTreeSet<String> = lines(&result)
        .iter()
        .filter(|l| l["evaluator"] == "pii" && l["passed"] == false)
        .map(|l| l["trace_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!failed.is_empty(), "the corpus leaks PII somewhere");
    let mut kept: BTreeMap<String, usize> = BTreeMap::new();
    let mut texts = Vec::new();
    for rs in &request.resource_spans {
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                *kept.entry(otlp::hex(&s.trace_id)).or_default() += 1;
                span_strings(s, &mut texts);
            }
        }
    }
    assert_eq!(kept.keys().cloned().collect::<BTreeSet<_>>(), failed);
    for (trace, n) in &kept {
        assert_eq!(*n, spans_of[trace], "trace {trace} is whole");
    }
    let leaked: usize = texts
        .iter()
        .map(|t| pii::find(t, &[PiiKind::Email, PiiKind::CreditCard]).len())
        .sum();
    assert_eq!(
        leaked, 0,
        "e-mail addresses or card numbers left in the kept traces"
    );
    assert!(
        texts.iter().any(|t| t.contains("[email]")),
        "masked in place"
    );
    assert!(
        stderr(&result).contains(&format!("of {} kept trace(s)", failed.len()))
            && stderr(&result).contains("redacted: masked"),
        "{}",
        stderr(&result)
    );

    // Without a `redaction` section the same traces are written as they came.
    let (result, request) = run("", &dir.join("raw.pb"));
    let mut raw = Vec::new();
    for s in span::spans(&request) {
        span_strings(s.raw(), &mut raw);
    }
    assert!(
        raw.iter()
            .any(|t| !pii::find(t, &[PiiKind::Email]).is_empty()),
        "the original content"
    );
    assert!(
        stderr(&result).contains("not redacted"),
        "{}",
        stderr(&result)
    );
}

fn logs_fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/logs")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Issue 16, item 3: with `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=event_only` the
/// official instrumentation puts prompts and answers in `gen_ai.client.inference.operation.details`
/// log records (fixtures made by the real instrumentation: `tests/fixtures/logs/generate.py`).
/// Alone, the spans are skipped `no_content`; with the logs file — before or after the traces, as
/// protobuf or OTLP/JSON — refusal, pii and json_valid score them.
#[test]
fn log_events_give_event_only_spans_their_content() {
    let traces = logs_fixture("event_only.traces.pb");
    let logs = logs_fixture("event_only.logs.pb");
    let verdict = |out: &Output, evaluator: &str| -> Vec<String> {
        lines(out)
            .into_iter()
            .filter(|l| l["evaluator"] == evaluator)
            .map(|l| {
                l["label"]
                    .as_str()
                    .or(l["skip_reason"].as_str())
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    let alone = bin()
        .args(["eval", "--no-summary", &traces])
        .output()
        .unwrap();
    assert_eq!(alone.status.code(), Some(0), "{}", stderr(&alone));
    assert_eq!(verdict(&alone, "refusal"), ["no_content"; 3]);
    assert_eq!(verdict(&alone, "pii"), ["no_content"; 3]);

    // The same logs as OTLP/JSON, given first.
    let dir = temp_dir("logs");
    let request = evalstream_evaluators::logs::decode_logs(
        &std::fs::read(&logs).unwrap(),
        Encoding::OtlpProto,
    )
    .unwrap();
    let json = dir.join("event_only.logs.json");
    std::fs::write(&json, serde_json::to_vec(&request[0]).unwrap()).unwrap();
    let json = json.to_string_lossy().into_owned();
    for args in [
        [traces.as_str(), logs.as_str()],
        [json.as_str(), traces.as_str()],
    ] {
        let out = bin()
            .args(["eval", "--no-summary"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(
            verdict(&out, "refusal"),
            ["refused", "answered", "answered"]
        );
        assert_eq!(verdict(&out, "pii"), ["clean", "pii", "clean"]);
        assert_eq!(verdict(&out, "json_valid")[2], "invalid");
        assert!(stderr(&out).trim().is_empty(), "{}", stderr(&out));
    }

    // Events whose span is not among the inputs are reported, not silently dropped.
    let out = bin()
        .args(["eval", "--no-summary", &logs])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(lines(&out).is_empty());
    assert!(
        stderr(&out).contains("3 content event(s) in the logs matched no span"),
        "{}",
        stderr(&out)
    );
}
