//! `evalstream script test`: runs a Rhai scorer on the cases written next to it and shows what
//! differs from what was expected.
//!
//! `scripts/scorers/NAME.rhai` is tested by `scripts/scorers/NAME.test.yaml`:
//!
//! ```yaml
//! params: { banned: [CompetitorCo] }   # the evaluator's params, threshold, trace, limits
//! cases:
//!   - name: a clean answer
//!     output: "Our plan includes support."       # a chat span answering this (input: too)
//!     attributes: { gen_ai.request.model: gpt-4o-mini }   # more span attributes
//!     expect: { score: 1, label: ok, passed: true }
//!   - name: from a recorded trace, with other params
//!     params: { banned: [OtherBrand] }
//!     file: tests/fixtures/corpus/openinference.pb    # an OTLP export (.pb or OTLP/JSON)
//!     span_id: 1a2b3c4d5e6f7a8b                       # the span judged (default: the first LLM span)
//!     expect: { skipped: true }                       # or error: script_limit
//! ```
//!
//! Every key of `expect` given is compared; the others are not. Paths are relative to the
//! test file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use evalstream_evaluators::evaluator::{Evaluator, Outcome, SkipReason};
use evalstream_evaluators::otlp::{self, Encoding, kv};
use evalstream_evaluators::scorers::script::sandbox::ScriptLimits;
use evalstream_evaluators::scorers::script::{Script, ScriptConfig};
use evalstream_evaluators::span::{self, OperationKind};
use evalstream_evaluators::trace::TraceView;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde::Deserialize;

/// A script's test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    params: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    threshold: Option<f64>,
    #[serde(default)]
    trace: bool,
    #[serde(default)]
    limits: ScriptLimits,
    cases: Vec<Case>,
}

/// One case: a span and what the script should make of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// A chat span with this answer…
    #[serde(default)]
    output: Option<String>,
    /// …and this user message.
    #[serde(default)]
    input: Option<String>,
    /// Span attributes (strings, numbers, booleans).
    #[serde(default)]
    attributes: BTreeMap<String, serde_json::Value>,
    /// Resource attributes.
    #[serde(default)]
    resource: BTreeMap<String, serde_json::Value>,
    /// Or a span of an OTLP export.
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    span_id: Option<String>,
    /// Params for this case, over the file's.
    #[serde(default)]
    params: serde_json::Map<String, serde_json::Value>,
    expect: Expect,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    score: Option<f64>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    passed: Option<bool>,
    #[serde(default)]
    skipped: Option<bool>,
    #[serde(default)]
    error: Option<String>,
}

/// The test file of a script: `NAME.rhai` → `NAME.test.yaml`.
pub fn test_file(script: &Path) -> PathBuf {
    script.with_extension("test.yaml")
}

/// Runs the tests of each script, writing a report; returns whether all passed.
pub fn run(scripts: &[PathBuf], out: &mut impl std::io::Write) -> anyhow::Result<bool> {
    let mut all_passed = true;
    for script in scripts {
        let report = test_script(script)?;
        all_passed &= report.failed == 0;
        out.write_all(report.text.as_bytes())?;
    }
    Ok(all_passed)
}

struct Report {
    text: String,
    failed: usize,
}

fn test_script(script: &Path) -> anyhow::Result<Report> {
    let tests_path = test_file(script);
    let text = std::fs::read_to_string(&tests_path).with_context(|| {
        format!(
            "cannot read {} (the tests of {})",
            tests_path.display(),
            script.display()
        )
    })?;
    let tests: TestFile = serde_saphyr::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tests_path.display()))?;
    if tests.cases.is_empty() {
        bail!("{}: no cases", tests_path.display());
    }
    let config = ScriptConfig {
        script: script.to_owned(),
        params: tests.params,
        threshold: tests.threshold.unwrap_or(0.5),
        trace: tests.trace,
        limits: tests.limits,
    };
    let scorer = Script::build(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let base = tests_path.parent().unwrap_or(Path::new("."));
    let mut text = String::new();
    let mut failed = 0;
    for case in &tests.cases {
        let own;
        let scorer = if case.params.is_empty() {
            &scorer
        } else {
            let mut config = config.clone();
            config.params.extend(case.params.clone());
            own = Script::build(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            &own
        };
        let request = case_request(case, base)
            .with_context(|| format!("{}: case `{}`", tests_path.display(), case.name))?;
        let outcome = judge(scorer, &request, case.span_id.as_deref())
            .with_context(|| format!("{}: case `{}`", tests_path.display(), case.name))?;
        let differences = compare(&case.expect, &outcome);
        if differences.is_empty() {
            let _ = writeln!(text, "ok    {}: {}", script.display(), case.name);
        } else {
            failed += 1;
            let _ = writeln!(text, "FAIL  {}: {}", script.display(), case.name);
            for d in differences {
                let _ = writeln!(text, "      {d}");
            }
            let _ = writeln!(text, "      got: {}", describe(&outcome));
        }
    }
    let _ = writeln!(
        text,
        "{}: {} passed, {failed} failed",
        script.display(),
        tests.cases.len() - failed
    );
    Ok(Report { text, failed })
}

fn value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Bool(b) => Value::BoolValue(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::IntValue(i),
            None => Value::DoubleValue(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::StringValue(s.clone()),
        other => Value::StringValue(other.to_string()),
    }
}

/// The request a case judges: a recorded export, or a span built from the case.
fn case_request(case: &Case, base: &Path) -> anyhow::Result<ExportTraceServiceRequest> {
    if let Some(file) = &case.file {
        let path = base.join(file);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(otlp::decode(&bytes, Encoding::sniff(&bytes))?);
    }
    let mut attributes = vec![kv(
        "gen_ai.operation.name",
        Value::StringValue("chat".into()),
    )];
    if let Some(input) = &case.input {
        let messages =
            serde_json::json!([{"role": "user", "parts": [{"type": "text", "content": input}]}]);
        attributes.push(kv(
            "gen_ai.input.messages",
            Value::StringValue(messages.to_string()),
        ));
    }
    if let Some(output) = &case.output {
        let messages = serde_json::json!([{"role": "assistant", "parts": [{"type": "text", "content": output}], "finish_reason": "stop"}]);
        attributes.push(kv(
            "gen_ai.output.messages",
            Value::StringValue(messages.to_string()),
        ));
    }
    for (k, v) in &case.attributes {
        attributes.retain(|a| &a.key != k);
        attributes.push(kv(k, value(v)));
    }
    let span = Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: "chat".into(),
        start_time_unix_nano: 1_000_000_000,
        end_time_unix_nano: 2_000_000_000,
        attributes,
        ..Default::default()
    };
    Ok(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: case.resource.iter().map(|(k, v)| kv(k, value(v))).collect(),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

/// Runs the scorer on the chosen span (by id; else the first LLM span) with its trace.
fn judge(
    scorer: &Script,
    request: &ExportTraceServiceRequest,
    span_id: Option<&str>,
) -> anyhow::Result<Outcome> {
    let traces = TraceView::group(span::spans(request), true);
    let found = TraceView::each_span(&traces).find(|(_, s)| match span_id {
        Some(id) => otlp::hex(s.span_id()).eq_ignore_ascii_case(id),
        None => s.kind() == OperationKind::Chat,
    });
    let Some((trace, s)) = found else {
        bail!(
            "no span {}",
            span_id.map_or("of kind chat".to_owned(), |id| format!("with id {id}"))
        );
    };
    Ok(if scorer.needs_trace() {
        scorer.evaluate_in_trace(s, trace)
    } else {
        scorer.evaluate(s)
    })
}

/// What differs between the expectation and the outcome, one line each.
fn compare(expect: &Expect, outcome: &Outcome) -> Vec<String> {
    let mut differences = Vec::new();
    let mut check = |what: &str, want: String, got: String| {
        if want != got {
            differences.push(format!("{what}: expected {want}, got {got}"));
        }
    };
    if let Some(error) = &expect.error {
        let got = match outcome {
            Outcome::Error { error_type, .. } => error_type.to_string(),
            other => other.as_str().to_owned(),
        };
        check("error", error.clone(), got);
    }
    if let Some(skipped) = expect.skipped {
        check(
            "skipped",
            skipped.to_string(),
            matches!(outcome, Outcome::Skipped { .. }).to_string(),
        );
    }
    let score = outcome.score();
    if let Some(want) = expect.score {
        let got = score.map_or("no score".to_owned(), |s| s.value.to_string());
        let close = score.is_some_and(|s| (s.value - want).abs() < 1e-9);
        if !close {
            check("score", want.to_string(), got);
        }
    }
    if let Some(want) = &expect.label {
        check(
            "label",
            want.clone(),
            score.map_or("no score".to_owned(), |s| s.label.to_string()),
        );
    }
    if let Some(want) = expect.passed {
        check(
            "passed",
            want.to_string(),
            score.map_or("no score".to_owned(), |s| s.passed.to_string()),
        );
    }
    differences
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Scored(s) => format!(
            "score {} label {} passed {}{}",
            s.value,
            s.label,
            s.passed,
            if s.explanation.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.explanation)
            }
        ),
        Outcome::Skipped { reason, detail } => format!(
            "skipped: {}{}",
            SkipReason::as_str(*reason),
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            }
        ),
        Outcome::Error {
            error_type,
            message,
        } => format!("error {error_type}: {message}"),
    }
}
