//! `pii` on answers full of phone numbers: the worst case for the overlap check, since every
//! number is a finding every later candidate must be checked against.
//!
//! `find` scans 1, 2, 4 and 8 MB of text holding a phone number every ~40 bytes (US, bracketed,
//! dotted and international forms, all different); its time must grow with the size, not the
//! size squared. `scorer/8MB` runs the `pii` evaluator on an 8 MB answer: it scans only the first
//! `pii::MAX_SCANNED_BYTES`, so its cost is bounded whatever the answer's size. Run with
//! `cargo bench -p evalstream-evaluators --bench pii`; docs/performance.md quotes the figures.

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use evalstream_evaluators::evaluator::Evaluator;
use evalstream_evaluators::otlp::kv_str;
use evalstream_evaluators::scorers::pii::{self, Pii, PiiConfig, PiiKind};
use evalstream_evaluators::span::{GenAiSpan, ResourceView};
use opentelemetry_proto::tonic::trace::v1::Span;

const MB: usize = 1_000_000;

/// About `bytes` of text with a distinct phone number every ~40 bytes.
fn phone_text(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 64);
    let mut i = 0u64;
    while text.len() < bytes {
        let n = i % 10_000;
        let _ = match i % 4 {
            0 => write!(text, "Call 415-555-{n:04} today. "),
            1 => write!(text, "Or ring (212) 555 {n:04}, please. "),
            2 => write!(text, "Office: 650.253.{n:04}; "),
            _ => write!(text, "Abroad +44 20 7946 {n:04} works. "),
        };
        i += 1;
    }
    text
}

fn answer_span(text: &str) -> Span {
    let output = serde_json::json!([{
        "role": "assistant",
        "parts": [{"type": "text", "content": text}],
        "finish_reason": "stop"
    }]);
    Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: "chat".into(),
        attributes: vec![
            kv_str("gen_ai.operation.name", "chat"),
            kv_str("gen_ai.output.messages", output.to_string()),
        ],
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("pii");
    group.sample_size(10);
    for mbs in [1, 2, 4, 8] {
        let text = phone_text(mbs * MB);
        let findings = pii::find(&text, &PiiKind::ALL).len();
        println!("find/{mbs}MB: {findings} findings");
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(format!("find/{mbs}MB"), |b| {
            b.iter(|| pii::find(black_box(&text), &PiiKind::ALL).len())
        });
    }
    let text = phone_text(8 * MB);
    let span = answer_span(&text);
    let view = GenAiSpan::new(&span, ResourceView::default(), None);
    let scorer = Pii::build(&PiiConfig::default()).unwrap();
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("scorer/8MB", |b| {
        b.iter(|| scorer.evaluate(black_box(&view)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
