//! Tail sampling through the whole pipeline, with the local judge server over loopback: traces
//! are decided once evaluated, a rule on a judge's verdict waits for it (up to the decision
//! wait), kept traces are forwarded and their inputs finish only after that.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evalstream_evaluators::pricing::PriceTable;
use evalstream_evaluators::spec;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use crate::pipeline::ack::{Origin, Rejection, Status, Token};
use crate::pipeline::assembly::AssemblyConfig;
use crate::pipeline::export::{Exporter, Exporters, Outputs, Shapes};
use crate::pipeline::judge::WhenFull;
use crate::pipeline::judge::stand_in as server;
use crate::pipeline::sampling::SamplingConfig;
use crate::pipeline::stages::{Pipeline, Settings};
use crate::pipeline::worker::{Body, Input};
use crate::telemetry::metrics::Metrics;

/// A sampled exporter that keeps the trace ids forwarded to it, and the order of events.
#[derive(Default)]
struct Forwarded {
    log: Arc<Mutex<Vec<String>>>,
}

impl Exporter for Forwarded {
    fn id(&self) -> &str {
        "sampled"
    }
    fn shapes(&self) -> Shapes {
        Shapes::default()
    }
    fn export(&self, _: &Outputs, _: &[Token]) {}
    fn forward(&self, request: &ExportTraceServiceRequest, _: &[Token]) {
        let id = request.resource_spans[0].scope_spans[0].spans[0].trace_id[0];
        self.log.lock().unwrap().push(format!("forwarded {id}"));
    }
    fn flush(&self, _: Duration) -> bool {
        true
    }
}

/// An input that notes when it finishes.
struct Traced {
    id: u8,
    log: Arc<Mutex<Vec<String>>>,
}

impl Origin for Traced {
    fn finished(&self, _: Status) {
        self.log
            .lock()
            .unwrap()
            .push(format!("finished {}", self.id));
    }
    fn rejected(&self, _: Token, _: Rejection) {}
}

/// A one-span trace (a root model call) with id `[id; 16]` and this answer.
fn trace(id: u8, answer: &str) -> ExportTraceServiceRequest {
    use evalstream_evaluators::otlp::kv_str;
    let output =
        serde_json::json!([{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]);
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![id; 16],
                    span_id: vec![id; 8],
                    attributes: vec![
                        kv_str("gen_ai.operation.name", "chat"),
                        kv_str("gen_ai.output.messages", output.to_string()),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Runs two traces (1: an answer the judge fails, 2: one it passes) through a pipeline whose
/// policy keeps what the judge `tox` failed, with the judge answering after `latency` and
/// traces waiting up to `wait`; returns the log of forwards and finished inputs, and the
/// metrics.
fn run(latency: Duration, wait: f64) -> (Vec<String>, Arc<Metrics>) {
    let (url, behaviour) = server::start().unwrap();
    behaviour.set_latency(latency);
    let specs: Vec<spec::EvaluatorSpec> = serde_json::from_value(serde_json::json!([
        {"type": "refusal"},
        {"type": "llm_judge", "name": "tox", "template": "toxicity",
         "endpoint": url, "model": "judge-model", "max_retries": 0},
    ]))
    .unwrap();
    let set = Arc::new(spec::build_set(&specs).unwrap());
    let metrics = Metrics::new(set.evaluators(), &[], 0).unwrap();
    let sampling: SamplingConfig = serde_saphyr::from_str(&format!(
        "exporters: [sampled]\ndecision_wait_seconds: {wait}\nrules: [ {{failed: tox}}, drop ]"
    ))
    .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let forwarded = Forwarded { log: log.clone() };
    let exporters = Arc::new(Exporters::with_sampled(
        Vec::new(),
        vec![Box::new(forwarded)],
    ));
    let traces = AssemblyConfig {
        quiet_seconds: 0.2,
        ..AssemblyConfig::default()
    };
    let settings = Settings {
        traces: &traces,
        prices: PriceTable::default(),
        judges: Some(WhenFull::Wait),
        reload: false,
        redactor: None,
        logs: None,
        sampling: Some(&sampling),
        budgets: None,
    };
    let pipeline = Pipeline::start(settings, set, exporters, metrics.clone()).unwrap();
    let inputs = [
        (1, "FAIL_ME: you are an idiot"),
        (2, "Paris is the capital of France."),
    ]
    .map(|(id, answer)| Input {
        body: Body::Decoded(trace(id, answer)),
        token: Token::new(Traced {
            id,
            log: log.clone(),
        }),
    });
    pipeline.work().send(inputs.into()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("finished"))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "inputs did not finish: {log:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    pipeline.stop(Duration::from_secs(5));
    let log = log.lock().unwrap().clone();
    (log, metrics)
}

fn count(metrics: &Metrics, name: &str, labels: &[&str]) -> u64 {
    match name {
        "waits" => metrics.sampling_waits.with_label_values(labels).get(),
        _ => metrics.sampled_traces.with_label_values(labels).get(),
    }
}

#[test]
fn a_rule_on_a_judge_waits_for_its_verdict_and_keeps_what_it_failed() {
    let (log, metrics) = run(Duration::from_millis(800), 10.0);
    assert!(log.contains(&"forwarded 1".to_owned()), "{log:?}");
    assert!(!log.contains(&"forwarded 2".to_owned()), "{log:?}");
    let at = |line: &str| log.iter().position(|l| l == line).unwrap();
    assert!(
        at("forwarded 1") < at("finished 1"),
        "the input finishes after its trace was forwarded: {log:?}"
    );
    assert_eq!(count(&metrics, "waits", &["verdicts_in"]), 2);
    assert_eq!(count(&metrics, "waits", &["decided_without"]), 0);
    assert_eq!(count(&metrics, "traces", &["failed:tox", "keep"]), 1);
    assert_eq!(count(&metrics, "traces", &["drop", "drop"]), 1);
}

#[test]
fn past_the_decision_wait_a_trace_is_decided_without_the_verdict() {
    let (log, metrics) = run(Duration::from_millis(2500), 0.3);
    assert!(
        !log.iter().any(|l| l.starts_with("forwarded")),
        "without the verdict the failing trace is not known to fail: {log:?}"
    );
    assert_eq!(count(&metrics, "waits", &["decided_without"]), 2);
    assert_eq!(count(&metrics, "traces", &["drop", "drop"]), 2);
}

/// An outcome posted before its trace reached the shard waits for it; one nobody takes is swept
/// once older than the longest a trace can take to be decided, and not before.
#[test]
fn judge_outcomes_wait_in_the_mailbox_and_orphans_are_swept() {
    use super::Mailbox;
    use evalstream_evaluators::evaluator::Outcome;
    let mailbox = Mailbox::new(2, Duration::from_secs(60));
    let error = Outcome::Error {
        error_type: "timeout".into(),
        message: "slow".into(),
    };
    let (early, orphan) = ([1u8; 16], [2u8; 16]);
    mailbox.post(&early, "tox", &error);
    mailbox.post(&orphan, "tox", &error);
    let now = Instant::now();
    let swept: usize = (0..2).map(|s| mailbox.sweep(s, now)).sum();
    assert_eq!(swept, 0, "nothing is old yet");
    assert_eq!(
        mailbox.take(&early).len(),
        1,
        "the early outcome waited for its trace"
    );
    assert!(mailbox.take(&early).is_empty(), "taken once");
    let later = now + Duration::from_secs(61);
    let swept: usize = (0..2).map(|s| mailbox.sweep(s, later)).sum();
    assert_eq!(swept, 1, "the orphan is swept");
    assert!(mailbox.take(&orphan).is_empty());
}
