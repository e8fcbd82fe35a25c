//! The worker's work per input with and without output, on one thread: decode, view and group
//! the spans, run the default evaluators and record their metrics (the floor of evaluation),
//! then the same building each output shape and encoding it as the Kafka exporter does (events
//! as an `ExportLogsServiceRequest`, evaluator spans as an `ExportTraceServiceRequest`). The
//! difference is what an output costs per span, apart from the broker and the producer. Prints
//! figures (`cargo bench -p evalstream --bench output`); `TRACES` sets the number of inputs.
//!
//! The inputs are the corpus's traces (five instrumentations, 2.4 spans each on average) with
//! fresh ids, one trace per input, encoded as the collector's Kafka exporter writes them.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use evalstream::pipeline::ack::Token;
use evalstream::pipeline::evaluate::{Pass, Scoring};
use evalstream::pipeline::export::{Exporter, Exporters, Outputs, Shapes};
use evalstream::telemetry::metrics::Metrics;
use evalstream_evaluators::otlp::{self, Encoding};
use evalstream_evaluators::pricing::PriceTable;
use evalstream_evaluators::spec;
use evalstream_evaluators::trace::TraceView;
use prost::Message as _;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Encodes what it reads, as the Kafka exporter does before handing a record to the producer.
struct Encoder(Shapes);

impl Exporter for Encoder {
    fn id(&self) -> &str {
        "encoder"
    }
    fn shapes(&self) -> Shapes {
        self.0
    }
    fn export(&self, outputs: &Outputs, _tokens: &[Token]) {
        let key = otlp::hex(&outputs.trace_id);
        let mut bytes = key.len();
        if let Some(events) = &outputs.events {
            bytes += std::hint::black_box(events.encode_to_vec()).len();
        }
        if let Some(spans) = &outputs.spans {
            bytes += std::hint::black_box(spans.encode_to_vec()).len();
        }
        std::hint::black_box(bytes);
    }
    fn flush(&self, _timeout: Duration) -> bool {
        true
    }
}

fn main() {
    let traces = support::traces_from_env(50_000);
    let inputs = support::corpus_inputs(traces);
    let set = Arc::new(spec::build_set(&spec::default_specs()).expect("the default set"));
    let token = Token::new(support::Nowhere);
    let runs = [
        ("evaluation, no output", Shapes::default()),
        (
            "+ events (log records), encoded",
            Shapes {
                events: true,
                ..Shapes::default()
            },
        ),
        (
            "+ evaluator spans, encoded",
            Shapes {
                spans: true,
                ..Shapes::default()
            },
        ),
    ];
    let mut floor = None;
    println!("{traces} inputs, one trace each, the default evaluators, one thread:");
    for (name, shapes) in runs {
        let metrics = Metrics::new(set.evaluators(), &[], 100).expect("metrics");
        let exporters = Exporters::new(match shapes.any() {
            true => vec![Box::new(Encoder(shapes)) as Box<dyn Exporter>],
            false => Vec::new(),
        });
        let scoring = Scoring {
            evaluators: set.clone(),
            exporters: Arc::new(exporters),
            metrics,
            prices: PriceTable::new(true, &Default::default()).expect("built-in prices"),
            budgets: None,
        };
        let mut spans = 0usize;
        let started = Instant::now();
        for input in &inputs {
            let request = otlp::decode(input, Encoding::OtlpProto).expect("a corpus trace");
            let views = TraceView::group(evalstream_evaluators::span::spans(&request), false);
            spans += views.iter().map(|t| t.spans().len()).sum::<usize>();
            scoring.score(&views, Pass::All, std::slice::from_ref(&token), None);
        }
        let took = started.elapsed().as_secs_f64();
        let per_span = took * 1e6 / spans as f64;
        let over = floor.map_or(String::new(), |f: f64| {
            format!(", +{:.2} µs/span over the floor", per_span - f)
        });
        floor.get_or_insert(per_span);
        println!(
            "  {name:<34} {:>9.0} spans/s  {per_span:.2} µs/span{over}",
            spans as f64 / took
        );
    }
}
