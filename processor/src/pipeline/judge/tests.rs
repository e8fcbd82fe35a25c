//! The service's guards against the local judge server: the cache, the budget, the breaker and
//! shedding, without Kafka (no exporter; the inputs' acknowledgements are watched instead).

use std::sync::Arc;
use std::time::{Duration, Instant};

use evalstream_evaluators::evaluator::{EvaluatorSet, Outcome, SkipReason};
use evalstream_evaluators::scorers::judge::JudgeRequest;
use evalstream_evaluators::spec;

use super::{JudgeService, Submitted};
use crate::pipeline::ack::{Origin, Rejection, Status, Token};
use crate::pipeline::assembly::StoredSpan;
use crate::pipeline::export::Exporters;
use crate::pipeline::judge::stand_in::{self as server, Fault};
use crate::telemetry::metrics::Metrics;

/// An input that reports its offset when it finishes.
struct Input {
    offset: i64,
    acks: crossbeam_channel::Sender<i64>,
}

impl Origin for Input {
    fn finished(&self, _: Status) {
        let _ = self.acks.send(self.offset);
    }
    fn rejected(&self, _: Token, _: Rejection) {}
}

struct Setup {
    service: JudgeService,
    metrics: Arc<Metrics>,
    set: Arc<EvaluatorSet>,
    acks: crossbeam_channel::Receiver<i64>,
    acks_tx: crossbeam_channel::Sender<i64>,
}

fn setup(url: &str, extra: serde_json::Value) -> Setup {
    let mut judge = serde_json::json!({
        "type": "llm_judge", "name": "tox", "template": "toxicity",
        "endpoint": url, "model": "judge-model", "max_retries": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        judge[k] = v.clone();
    }
    let specs: Vec<spec::EvaluatorSpec> =
        serde_json::from_value(serde_json::json!([judge])).unwrap();
    let set = Arc::new(spec::build_set(&specs).unwrap());
    let metrics = Metrics::new(set.evaluators(), &[], 0).unwrap();
    let output = super::Output {
        exporters: Arc::new(Exporters::new(Vec::new())),
        metrics: metrics.clone(),
        mailbox: None,
    };
    let service = JudgeService::start(&set, &output, super::WhenFull::Shed)
        .unwrap()
        .unwrap();
    let (acks_tx, acks) = crossbeam_channel::unbounded();
    Setup {
        service,
        metrics,
        set,
        acks,
        acks_tx,
    }
}

impl Setup {
    fn token(&self, offset: i64) -> Token {
        Token::new(Input {
            offset,
            acks: self.acks_tx.clone(),
        })
    }

    /// Submits a request for the toxicity of `answer`, as a worker does (the worker's own hold
    /// on the input is released right after), and returns what became of it.
    fn submit(&self, offset: i64, answer: &str) -> Submitted {
        let span = chat(answer);
        let view = StoredSpan::new(&span, None, None);
        let decoded = view.decode();
        let llm = self.set.evaluators()[0].evaluator.as_judge().unwrap();
        let request: JudgeRequest = llm.request(&decoded.view(), None).unwrap();
        let token = self.token(offset);
        self.service
            .submit(0, request, || view.clone(), std::slice::from_ref(&token))
    }

    fn wait_acked(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..n {
            let left = deadline.saturating_duration_since(Instant::now());
            self.acks
                .recv_timeout(left)
                .expect("the input is acknowledged once judged");
        }
    }

    fn count(&self, vec: &prometheus::IntCounterVec, labels: &[&str]) -> u64 {
        vec.with_label_values(labels).get()
    }
}

fn chat(answer: &str) -> opentelemetry_proto::tonic::trace::v1::Span {
    use evalstream_evaluators::otlp::kv_str;
    let output =
        serde_json::json!([{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]);
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        attributes: vec![
            kv_str("gen_ai.operation.name", "chat"),
            kv_str("gen_ai.output.messages", output.to_string()),
        ],
        ..Default::default()
    }
}

#[test]
fn a_judged_prompt_is_answered_from_the_cache_the_second_time() {
    let (url, server) = server::start().unwrap();
    let s = setup(&url, serde_json::json!({}));
    assert!(matches!(s.submit(0, "Have a nice day."), Submitted::Queued));
    s.wait_acked(1);
    match s.submit(1, "Have a nice day.") {
        Submitted::Now(Outcome::Scored(score)) => assert_eq!(score.label, "pass"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.submit(2, "Another answer."), Submitted::Queued));
    s.wait_acked(2);
    assert_eq!(server.received().len(), 2);
    assert_eq!(s.count(&s.metrics.judge_not_sent, &["tox", "cache_hit"]), 1);
}

#[test]
fn a_spent_budget_skips_until_the_next_period() {
    let (url, _server) = server::start().unwrap();
    // 120 tokens a call at 1,000 USD per million input and output tokens: 0.12 USD a call.
    let s = setup(
        &url,
        serde_json::json!({"budget_usd_per_hour": 0.2, "prices": {"input": 1000.0, "output": 1000.0}, "cache_size": 0}),
    );
    for offset in 0..2 {
        assert!(matches!(s.submit(offset, "ok"), Submitted::Queued));
        s.wait_acked(1);
    }
    match s.submit(2, "ok") {
        Submitted::Now(Outcome::Skipped { reason, .. }) => assert_eq!(reason, SkipReason::Budget),
        other => panic!("{other:?}"),
    }
    assert!((s.metrics.judge_spend_usd.with_label_values(&["tox"]).get() - 0.24).abs() < 1e-9);
}

#[test]
fn repeated_failures_open_the_circuit_and_calls_stop() {
    let (url, server) = server::start().unwrap();
    server.push_faults([Fault::ServerError, Fault::ServerError, Fault::ServerError]);
    let s = setup(
        &url,
        serde_json::json!({"breaker_failures": 2, "breaker_cooldown_seconds": 60, "cache_size": 0}),
    );
    for offset in 0..4 {
        assert!(matches!(s.submit(offset, "ok"), Submitted::Queued));
        s.wait_acked(1);
    }
    assert_eq!(
        server.received().len(),
        2,
        "no call while the circuit is open"
    );
    assert_eq!(
        s.count(&s.metrics.judge_not_sent, &["tox", "circuit_open"]),
        2
    );
    assert_eq!(
        s.metrics
            .judge_circuit_open
            .with_label_values(&["tox"])
            .get(),
        1
    );
    assert_eq!(
        s.count(&s.metrics.judge_calls, &["tox", "judge_server_error"]),
        2
    );
}

#[test]
fn a_full_queue_sheds_at_once() {
    let (url, server) = server::start().unwrap();
    server.set_latency(Duration::from_millis(500));
    let s = setup(
        &url,
        serde_json::json!({"max_concurrency": 1, "max_queued": 1, "cache_size": 0}),
    );
    let outcomes: Vec<Submitted> = (0..6)
        .map(|i| s.submit(i, &format!("answer {i}")))
        .collect();
    let queued = outcomes
        .iter()
        .filter(|o| matches!(o, Submitted::Queued))
        .count();
    let shed = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o,
                Submitted::Now(Outcome::Skipped {
                    reason: SkipReason::Shed,
                    ..
                })
            )
        })
        .count();
    // At most: one call running, one job the dispatcher holds waiting for a slot, one queued.
    assert!((1..=3).contains(&queued), "{outcomes:?}");
    assert_eq!(queued + shed, 6);
    s.wait_acked(queued);
}

#[test]
fn the_judge_span_carries_its_model_tokens_and_priced_cost() {
    use super::client::Completion;
    let completion = Completion {
        content: "{}".into(),
        refusal: None,
        input_tokens: 1_000,
        output_tokens: 200,
        model: Some("judge-model-2026".into()),
    };
    let price = evalstream_evaluators::pricing::Price {
        input: 2.0,
        output: 10.0,
        cache_read: None,
        cache_write: None,
        reasoning: None,
    };
    let attributes = |price| {
        super::judge_attributes("judge-model", Some(&completion), price)
            .into_iter()
            .map(|kv| {
                let value = kv.value.and_then(|v| v.value).map(|v| format!("{v:?}"));
                (kv.key, value.unwrap_or_default())
            })
            .collect::<std::collections::HashMap<_, _>>()
    };
    let priced = attributes(Some(&price));
    assert_eq!(
        priced["gen_ai.request.model"],
        "StringValue(\"judge-model\")"
    );
    assert_eq!(
        priced["gen_ai.response.model"],
        "StringValue(\"judge-model-2026\")"
    );
    assert_eq!(priced["gen_ai.usage.input_tokens"], "IntValue(1000)");
    assert_eq!(priced["gen_ai.usage.output_tokens"], "IntValue(200)");
    // 1,000 × $2 + 200 × $10 per million tokens.
    assert_eq!(priced["evalstream.judge.cost_usd"], "DoubleValue(0.004)");
    assert!(!attributes(None).contains_key("evalstream.judge.cost_usd"));
    let failed = super::judge_attributes("judge-model", None, Some(&price));
    assert_eq!(
        failed.len(),
        1,
        "a failed call has only the requested model"
    );
}

/// A reply `} {` panicked in the reply reader inside a spawned task: no score, no error, and the
/// input committed. Every hostile answer must end in an `error` verdict that lets the input go.
#[test]
fn hostile_answers_become_error_verdicts_and_release_their_inputs() {
    let (url, server) = server::start().unwrap();
    let s = setup(&url, serde_json::json!({"cache_size": 0}));
    server.push_faults([
        Fault::Reply("} {".into()),
        Fault::Reply("}}}{{{".into()),
        Fault::RetryAfterRaw("1e20".into()),
        Fault::HugeBody(200, 2 << 20),
        Fault::Redirect("http://127.0.0.1:9/v1/chat/completions".into()),
    ]);
    for offset in 0..5 {
        assert!(matches!(s.submit(offset, "an answer"), Submitted::Queued));
    }
    s.wait_acked(5);
    let text = s.metrics.render();
    assert!(
        text.contains("evalstream_evaluations_total{evaluator=\"tox\",outcome=\"error\"} 5"),
        "{}",
        text.lines()
            .filter(|l| l.starts_with("evalstream_evaluations_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A judge that refuses calls with 429 and `Retry-After` still yields a verdict for every span:
/// the calls slow down to the pace the endpoint asks for, and a refused one is sent again until
/// its verdict deadline, not only `max_retries` times. (With 40% of calls refused, `run` gave up
/// on about 1.6% of answers: `judge_rate_limited` after its retries.)
#[test]
fn rate_limited_calls_slow_down_and_every_span_gets_its_verdict() {
    let (url, server) = server::start().unwrap();
    let s = setup(
        &url,
        serde_json::json!({"cache_size": 0, "max_retries": 1, "max_concurrency": 4}),
    );
    // The first 40 calls are refused: with one retry each, 20 spans used to fail them all.
    server.push_faults((0..40).map(|_| Fault::RateLimited(0.02)));
    for offset in 0..20 {
        assert!(matches!(
            s.submit(offset, &format!("answer {offset}")),
            Submitted::Queued
        ));
    }
    s.wait_acked(20);
    assert_eq!(s.count(&s.metrics.judge_calls, &["tox", "ok"]), 20);
    assert_eq!(
        s.count(&s.metrics.judge_calls, &["tox", "judge_rate_limited"]),
        0
    );
    assert!(s.count(&s.metrics.judge_retries, &["tox", "judge_rate_limited"]) >= 40);
}

/// The deadline bounds it: an endpoint that never stops refusing ends in an error verdict.
#[test]
fn a_verdict_rate_limited_past_its_deadline_is_an_error() {
    let (url, server) = server::start().unwrap();
    let s = setup(
        &url,
        serde_json::json!({"cache_size": 0, "max_retries": 0, "verdict_deadline_seconds": 0.3}),
    );
    server.push_faults((0..1000).map(|_| Fault::RateLimited(0.05)));
    assert!(matches!(s.submit(0, "an answer"), Submitted::Queued));
    s.wait_acked(1);
    assert_eq!(
        s.count(&s.metrics.judge_calls, &["tox", "judge_rate_limited"]),
        1
    );
}
