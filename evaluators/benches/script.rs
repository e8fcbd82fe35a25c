//! Rhai scorers per call: a trivial script (the fixed cost of a call: building the span map of
//! the fields it names, calling `score`, reading the result), a script of about 20 operations,
//! and a realistic one (banned terms from `params`, a regex, a length rule, a map result). Run
//! with `cargo bench -p evalstream-evaluators --bench script`; docs/performance.md quotes the figures.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use evalstream_evaluators::evaluator::Evaluator;
use evalstream_evaluators::otlp::{kv, kv_str};
use evalstream_evaluators::scorers::script::sandbox::ScriptLimits;
use evalstream_evaluators::scorers::script::{Script, ScriptConfig};
use evalstream_evaluators::span::{GenAiSpan, ResourceView};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

const TRIVIAL: &str = "fn score(span) { 1 }";

/// About 20 operations: reads, comparisons, arithmetic, a branch.
const TWENTY_OPS: &str = r#"
fn score(span) {
    let tokens = span.usage.output;
    let limit = 500;
    let ratio = tokens / 1000.0;
    if span.model == "gpt-4o-mini" && tokens < limit {
        return 1.0 - ratio;
    }
    0.0
}"#;

const REALISTIC: &str = r#"
fn score(span, params) {
    let text = span.output;
    let named = params.banned.filter(|w| text.contains(w));
    let words = word_count(text);
    let shouting = regex_match(text, "[A-Z]{5,}");
    if named.is_empty() && words <= params.max_words && !shouting {
        return #{ score: 1.0, label: "ok" };
    }
    #{ score: 0.0, label: "off_brand",
       explanation: `${named.len()} banned terms, ${words} words, shouting: ${shouting}` }
}"#;

fn span() -> Span {
    let output = serde_json::json!([{
        "role": "assistant",
        "parts": [{"type": "text", "content": "Your order ships tomorrow. You can track it from the Orders page, and returns are free within 30 days of delivery."}],
        "finish_reason": "stop"
    }]);
    Span {
        attributes: vec![
            kv_str("gen_ai.operation.name", "chat"),
            kv_str("gen_ai.request.model", "gpt-4o-mini"),
            kv("gen_ai.usage.input_tokens", Value::IntValue(812)),
            kv("gen_ai.usage.output_tokens", Value::IntValue(96)),
            kv_str("gen_ai.output.messages", output.to_string()),
        ],
        ..Default::default()
    }
}

fn script(source: &str) -> Script {
    let config = ScriptConfig {
        script: PathBuf::from("bench.rhai"),
        params: serde_json::from_value(serde_json::json!({
            "banned": ["CompetitorCo", "OtherBrand", "cheap knock-off"],
            "max_words": 80
        }))
        .unwrap(),
        threshold: 0.5,
        trace: false,
        limits: ScriptLimits::default(),
    };
    Script::compile("bench.rhai", source, &config).unwrap()
}

fn bench(c: &mut Criterion) {
    let raw = span();
    let view = GenAiSpan::new(&raw, ResourceView::new(None), None);
    let mut group = c.benchmark_group("rhai call");
    for (name, source) in [
        ("trivial", TRIVIAL),
        ("20 operations", TWENTY_OPS),
        ("realistic", REALISTIC),
    ] {
        let s = script(source);
        assert!(s.evaluate(&view).score().is_some(), "{name} scores");
        group.bench_function(name, |b| b.iter(|| black_box(s.evaluate(black_box(&view)))));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
