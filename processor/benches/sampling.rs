//! What eval-aware tail sampling and pre-storage redaction cost beside evaluation, side by side
//! on one thread (`cargo bench -p evalstream --bench sampling`; `TRACES` sets the number of
//! inputs): decode and evaluate each input with the default evaluators (verdicts collected, no
//! output encoded); the same, gathering each trace's facts and deciding with the default policy;
//! the same, redacting a copy of each kept trace with the default rules. Prints spans/s, the cost
//! per span over evaluation alone, and the share of traces kept.
//!
//! The inputs are the corpus's traces (five instrumentations, 2.4 spans each on average) with
//! fresh ids, one trace per input.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evalstream::pipeline::ack::Token;
use evalstream::pipeline::evaluate::{Pass, Scoring};
use evalstream::pipeline::export::{Exporter, Exporters, Outputs, Shapes};
use evalstream::pipeline::redaction::{RedactionConfig, Redactions, Redactor};
use evalstream::pipeline::sampling::{Policy, SamplingConfig, TraceFacts};
use evalstream::telemetry::metrics::Metrics;
use evalstream_evaluators::evaluator::Outcome;
use evalstream_evaluators::otlp::{self, Encoding};
use evalstream_evaluators::pricing::PriceTable;
use evalstream_evaluators::spec;
use evalstream_evaluators::trace::TraceView;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps the scored verdicts of the trace being evaluated, as a policy reads them.
#[derive(Default)]
struct Verdicts(Mutex<Vec<(String, f64, bool)>>);

impl Exporter for Verdicts {
    fn id(&self) -> &str {
        "verdicts"
    }
    fn shapes(&self) -> Shapes {
        Shapes {
            verdicts: true,
            ..Shapes::default()
        }
    }
    fn export(&self, outputs: &Outputs, _tokens: &[Token]) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for v in &outputs.verdicts {
            if let Outcome::Scored(s) = &v.outcome {
                kept.push((v.evaluator.clone(), s.value, s.passed));
            }
        }
    }
    fn flush(&self, _timeout: Duration) -> bool {
        true
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Run {
    Evaluate,
    Decide,
    DecideAndRedact,
}

fn main() {
    let traces = support::traces_from_env(50_000);
    let inputs = support::corpus_inputs(traces);
    let set = Arc::new(spec::build_set(&spec::default_specs()).expect("the default set"));
    let prices = PriceTable::new(true, &Default::default()).expect("built-in prices");
    let redactor = Redactor::new(&RedactionConfig::default()).expect("the default rules");
    let token = Token::new(support::Nowhere);
    let mut floor = None;
    println!("{traces} inputs, one trace each, the default evaluators, one thread:");
    for (name, run) in [
        ("evaluation (verdicts collected)", Run::Evaluate),
        ("+ facts and the default policy", Run::Decide),
        ("+ redacting the kept traces", Run::DecideAndRedact),
    ] {
        let verdicts = Arc::new(Verdicts::default());
        let scoring = Scoring {
            evaluators: set.clone(),
            exporters: Arc::new(Exporters::new(vec![Box::new(verdicts.clone())])),
            metrics: Metrics::new(set.evaluators(), &[], 100).expect("metrics"),
            prices: prices.clone(),
            budgets: None,
        };
        let policy = Policy::new(&SamplingConfig::default());
        let keys = policy.attribute_keys();
        let (mut spans, mut kept, mut redactions) = (0usize, 0u64, Redactions::default());
        let started = Instant::now();
        for input in &inputs {
            let request = otlp::decode(input, Encoding::OtlpProto).expect("a corpus trace");
            let views = TraceView::group(evalstream_evaluators::span::spans(&request), false);
            spans += views.iter().map(|t| t.spans().len()).sum::<usize>();
            scoring.score(&views, Pass::All, std::slice::from_ref(&token), None);
            let scored = std::mem::take(&mut *verdicts.0.lock().unwrap_or_else(|e| e.into_inner()));
            if run == Run::Evaluate {
                std::hint::black_box(scored);
                continue;
            }
            for trace in &views {
                let mut facts = TraceFacts::new(trace.trace_id());
                for s in trace.spans() {
                    facts.add_span(s, &prices, &keys);
                }
                for (evaluator, score, passed) in &scored {
                    facts.add_verdict(evaluator, *score, *passed);
                }
                if !policy.decide(&facts).keep {
                    continue;
                }
                kept += 1;
                if run == Run::DecideAndRedact {
                    let mut copy = request.clone();
                    redactor.request(&mut copy, &mut redactions);
                    std::hint::black_box(copy);
                }
            }
        }
        let took = started.elapsed().as_secs_f64();
        let per_span = took * 1e6 / spans as f64;
        let over = floor.map_or(String::new(), |f: f64| {
            format!(
                ", +{:.2} µs/span over evaluation, {:.1}% of traces kept",
                per_span - f,
                kept as f64 * 100.0 / traces as f64
            )
        });
        floor.get_or_insert(per_span);
        println!(
            "  {name:<34} {:>9.0} spans/s  {per_span:.2} µs/span{over}",
            spans as f64 / took
        );
        if run == Run::DecideAndRedact {
            let masked: Vec<String> = redactions
                .counts()
                .map(|(kind, n)| format!("{n} {kind}"))
                .collect();
            println!("  redacted in the kept traces: {}", masked.join(", "));
        }
    }
}
