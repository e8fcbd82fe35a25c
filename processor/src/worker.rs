//! Evaluation workers: decode a message, run every evaluator on every span, send the evaluator
//! spans (one record per trace, keyed by hex trace id) or the message to the dead-letter topic.
//!
//! Workers are plain threads, one per core: evaluation is CPU work and must not sit on an async
//! runtime. An evaluator that panics on a span yields an `error` outcome for that span; the worker
//! and the partition carry on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use evalstream_evaluators::evaluator::{
    ConfiguredEvaluator, Evaluation, EvaluatorSet, Outcome, ScoreId,
};
use evalstream_evaluators::otlp::{self, Encoding};
use evalstream_evaluators::pricing::PriceTable;
use evalstream_evaluators::span::{self, GenAiSpan, OperationKind};
use evalstream_evaluators::to_otlp;
use evalstream_evaluators::trace::TraceView;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

use crate::kafka::sink::Sink;
use crate::kafka::source::Work;
use crate::metrics::Metrics;

/// What every worker shares.
pub struct Worker {
    /// The configured evaluators.
    pub evaluators: Arc<EvaluatorSet>,
    /// Where outputs go.
    pub sink: Arc<Sink>,
    /// How input messages are encoded.
    pub encoding: Encoding,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Prices for the cost metrics.
    pub prices: PriceTable,
}

/// Runs one evaluator on a span of `trace`, turning a panic into an `error` outcome.
fn run_guarded<'e>(
    e: &'e ConfiguredEvaluator,
    span: &GenAiSpan<'_>,
    trace: &TraceView<'_>,
) -> Option<Evaluation<'e>> {
    match catch_unwind(AssertUnwindSafe(|| e.run_in(span, Some(trace)))) {
        Ok(evaluation) => evaluation,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "evaluator panicked".into());
            Some(Evaluation {
                evaluator: &e.name,
                version: &e.version,
                score_id: ScoreId::new(span.trace_id(), span.span_id(), &e.name, &e.version),
                outcome: Outcome::Error {
                    error_type: "panic".into(),
                    message,
                },
            })
        }
    }
}

impl Worker {
    /// Takes work until the queue closes.
    pub fn run(&self, queue: Receiver<Vec<Work>>) {
        for batch in queue {
            for work in batch {
                self.process(&work);
                work.pending.done();
            }
        }
    }

    fn process(&self, work: &Work) {
        let request = match otlp::decode(&work.message.payload, self.encoding) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.decode_errors.inc();
                self.sink
                    .dead_letter(&work.pending, "decode", &e.to_string());
                return;
            }
        };
        // Evaluator spans grouped by trace: one output record per trace. Trace evaluators see
        // the trace's spans that are in this message (with `partition_traces_by_id`, a
        // collector batch usually holds a trace whole).
        let mut outputs: Vec<(Vec<u8>, Vec<Span>)> = Vec::new();
        let mut evaluations = Vec::new();
        let traces = TraceView::group(span::spans(&request), false);
        for (trace, s) in TraceView::each_span(&traces) {
            self.metrics.spans.inc();
            evaluations.clear();
            let started = Instant::now();
            for (index, e) in self.evaluators.evaluators().iter().enumerate() {
                if let Some(evaluation) = run_guarded(e, s, trace) {
                    self.metrics.record(index, &evaluation, s);
                    evaluations.push(evaluation);
                }
            }
            if evaluations.is_empty() {
                continue;
            }
            self.metrics
                .evaluation_seconds
                .observe(started.elapsed().as_secs_f64());
            self.account(s);
            if !self.sink.has_output() {
                continue;
            }
            let end = crate::now_unix_nanos();
            let start = end.saturating_sub(started.elapsed().as_nanos() as u64);
            let spans: Vec<Span> = evaluations
                .iter()
                .filter(|e| to_otlp::emits_span(e))
                .map(|e| to_otlp::evaluation_span(s, e, start, end))
                .collect();
            if spans.is_empty() {
                continue;
            }
            match outputs.iter_mut().find(|(t, _)| t == s.trace_id()) {
                Some((_, group)) => group.extend(spans),
                None => outputs.push((s.trace_id().to_vec(), spans)),
            }
        }
        for (trace_id, spans) in outputs {
            let payload = to_otlp::export_request(spans).encode_to_vec();
            self.sink
                .output(&otlp::hex(&trace_id), &payload, &work.pending);
        }
    }

    /// Lag, cost and token metrics of a judged span.
    fn account(&self, s: &GenAiSpan<'_>) {
        let end = s.end_time_unix_nano();
        if end > 0 {
            let lag = crate::now_unix_nanos().saturating_sub(end) as f64 / 1e9;
            self.metrics.lag_seconds.observe(lag);
        }
        if !matches!(s.kind(), OperationKind::Chat | OperationKind::Embeddings) {
            return;
        }
        let Some(model) = s.model() else { return };
        let label = self.metrics.models.label(model);
        let usage = s.usage();
        let n = |v: Option<u64>| v.unwrap_or(0);
        for (kind, count) in [
            (
                "input",
                n(usage.input).saturating_sub(n(usage.cache_read) + n(usage.cache_write)),
            ),
            ("cache_read", n(usage.cache_read)),
            ("cache_write", n(usage.cache_write)),
            ("output", n(usage.output).saturating_sub(n(usage.reasoning))),
            ("reasoning", n(usage.reasoning)),
        ] {
            if count > 0 {
                self.metrics
                    .tokens
                    .with_label_values(&[label.as_str(), kind])
                    .inc_by(count);
            }
        }
        if let Some((_, price)) = self.prices.lookup(model)
            && let Some(cost) = PriceTable::cost(price, &usage)
        {
            self.metrics
                .cost_usd
                .with_label_values(&[label.as_str()])
                .inc_by(cost.total_usd);
        }
    }
}
