//! `grounding` on one RAG answer: 8 sentences against 10 retrieved documents of ~500 words.
//!
//! The text is synthetic but English-shaped and deterministic: a Zipf-like draw from a vocabulary
//! of function words, ~2,000 generated content words, capitalised names and numbers. Six of the
//! answer's sentences restate document sentences (some words swapped, one number changed), two
//! are made up. `evaluate` reuses the span views (content parsed once, as when several evaluators
//! judge a span); `view+evaluate` builds them afresh each time. Run with
//! `cargo bench -p evalstream-evaluators --bench grounding`; docs/performance.md quotes the figure.

#![allow(clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use evalstream_evaluators::evaluator::Evaluator;
use evalstream_evaluators::otlp::kv_str;
use evalstream_evaluators::scorers::grounding::{Grounding, GroundingConfig};
use evalstream_evaluators::span::{GenAiSpan, ResourceView};
use evalstream_evaluators::trace::TraceView;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::hint::black_box;

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Skewed towards small values, like word frequencies.
    fn zipf(&mut self, n: usize) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((n as f64).powf(u) as usize).saturating_sub(1).min(n - 1)
    }
}

const FUNCTION_WORDS: [&str; 24] = [
    "the", "of", "and", "to", "a", "in", "is", "was", "for", "on", "with", "as", "by", "that",
    "it", "from", "at", "which", "were", "be", "has", "its", "an", "this",
];
const SYLLABLES: [&str; 40] = [
    "ka", "lo", "mer", "tan", "vi", "sol", "dra", "pen", "ri", "gus", "bel", "nor", "thal", "cor",
    "ex", "lin", "ta", "mon", "qui", "ster", "ab", "ur", "wen", "yo", "zel", "hum", "fra", "gle",
    "op", "is", "cha", "blo", "im", "es", "pri", "wa", "jo", "sc", "ut", "ne",
];

fn vocabulary(rng: &mut Rng) -> Vec<String> {
    (0..2_000)
        .map(|_| {
            let n = 2 + rng.below(2);
            let mut w: String = (0..n)
                .map(|_| SYLLABLES[rng.below(SYLLABLES.len())])
                .collect();
            if rng.below(4) == 0 {
                w.push_str(["s", "ed", "ing", "ion"][rng.below(4)]);
            }
            w
        })
        .collect()
}

fn sentence(rng: &mut Rng, vocab: &[String]) -> String {
    let len = 12 + rng.below(14);
    let mut words: Vec<String> = Vec::with_capacity(len);
    for i in 0..len {
        let w = match rng.below(10) {
            0..=3 => FUNCTION_WORDS[rng.zipf(FUNCTION_WORDS.len())].to_owned(),
            4 if i > 0 => {
                let mut name = vocab[rng.below(vocab.len())].clone();
                name[..1].make_ascii_uppercase();
                name
            }
            5 if rng.below(3) == 0 => format!("{}", 1800 + rng.below(300)),
            _ => vocab[rng.zipf(vocab.len())].clone(),
        };
        words.push(w);
    }
    words[0][..1].make_ascii_uppercase();
    format!("{}.", words.join(" "))
}

fn fixture() -> Vec<Span> {
    let mut rng = Rng(7);
    let vocab = vocabulary(&mut rng);
    let mut docs: Vec<Vec<String>> = Vec::new();
    let mut attributes = vec![kv_str("openinference.span.kind", "RETRIEVER")];
    for d in 0..10 {
        let mut sentences = Vec::new();
        let mut words = 0;
        while words < 500 {
            let s = sentence(&mut rng, &vocab);
            words += s.split_whitespace().count();
            sentences.push(s);
        }
        attributes.push(kv_str(
            &format!("retrieval.documents.{d}.document.id"),
            format!("doc-{d}"),
        ));
        attributes.push(kv_str(
            &format!("retrieval.documents.{d}.document.content"),
            sentences.join(" "),
        ));
        docs.push(sentences);
    }
    // Six restated sentences (cited), two invented ones.
    let mut answer = Vec::new();
    for k in 0..6 {
        let d = rng.below(docs.len());
        let s = &docs[d][rng.below(docs[d].len())];
        let mut words: Vec<String> = s
            .trim_end_matches('.')
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let swap = rng.below(words.len());
        words[swap] = vocab[rng.below(vocab.len())].clone();
        if k == 5 {
            // A number no document has (they hold 1800 to 2099).
            words.push("in 2431".into());
        }
        answer.push(format!("{} [{}].", words.join(" "), d + 1));
    }
    answer.push(sentence(&mut rng, &vocab));
    answer.push(sentence(&mut rng, &vocab));
    let output = serde_json::json!([{"role": "assistant", "parts": [{"type": "text", "content": answer.join(" ")}]}]);
    vec![
        Span {
            trace_id: vec![1; 16],
            span_id: vec![1; 8],
            start_time_unix_nano: 10,
            attributes,
            ..Default::default()
        },
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            start_time_unix_nano: 20,
            attributes: vec![
                kv_str("gen_ai.operation.name", "chat"),
                kv_str("gen_ai.output.messages", output.to_string()),
            ],
            ..Default::default()
        },
    ]
}

fn views(spans: &[Span]) -> TraceView<'_> {
    let views = spans
        .iter()
        .map(|s| GenAiSpan::new(s, ResourceView::default(), None))
        .collect();
    TraceView::new(views, true)
}

fn grounding(c: &mut Criterion) {
    let spans = fixture();
    let scorer = Grounding::build(&GroundingConfig::default()).unwrap();
    let trace = views(&spans);
    let answer = &trace.spans()[1];
    let outcome = scorer.evaluate_in_trace(answer, &trace);
    let score = outcome.score().expect("scored");
    println!(
        "fixture: {:.2} {} — {}",
        score.value, score.label, score.explanation
    );

    let mut group = c.benchmark_group("grounding");
    group.throughput(Throughput::Elements(1));
    group.bench_function("evaluate", |b| {
        b.iter(|| black_box(scorer.evaluate_in_trace(black_box(answer), &trace)))
    });
    group.bench_function("view+evaluate", |b| {
        b.iter(|| {
            let trace = views(black_box(&spans));
            black_box(scorer.evaluate_in_trace(&trace.spans()[1], &trace))
        })
    });
    group.finish();
}

criterion_group!(benches, grounding);
criterion_main!(benches);
