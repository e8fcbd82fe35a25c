//! The seam between the pipeline and the exporters: an [`Exporter`] takes the evaluations of
//! one trace ([`Batch`]) with the acknowledgement tokens of the inputs they came from.
//!
//! The pipeline builds each output shape once, and only the shapes some exporter asked for
//! ([`Shapes`]): evaluation events (log records), evaluator spans, JSON lines, typed verdicts
//! (for backends with an evaluation model of their own, as Phoenix's span annotations). Events
//! and evaluator spans go under the judged spans' resources, so backends file them with the
//! application's trace (`to_otlp`'s module comment says why). Encoding, sending,
//! retrying and splitting into records belong to the exporter. An exporter clones the tokens it
//! needs until its backend accepted the output and drops them then; an output it gives up on it
//! hands back by rejecting the tokens ([`Token::reject`] with the output), and the receiver
//! decides what a rejection means (the Kafka receiver writes a dead letter, the OTLP receiver
//! answers the client with an error, so the client sends again).

use std::time::Duration;

use evalstream_evaluators::evaluator::{Evaluation, Outcome, ScoreId};
use evalstream_evaluators::span::GenAiSpan;
use evalstream_evaluators::{to_json, to_otlp};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;

use super::ack::Token;

/// The output shapes an exporter reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shapes {
    /// `gen_ai.evaluation.result` log records ([`Batch::events`]).
    pub events: bool,
    /// Evaluator spans ([`Batch::spans`]).
    pub spans: bool,
    /// JSON lines, as `evalstream eval` prints ([`Batch::lines`]).
    pub lines: bool,
    /// Typed verdicts ([`Batch::verdicts`]).
    pub verdicts: bool,
}

impl Shapes {
    /// Every shape either asks for.
    pub fn union(self, other: Shapes) -> Shapes {
        Shapes {
            events: self.events || other.events,
            spans: self.spans || other.spans,
            lines: self.lines || other.lines,
            verdicts: self.verdicts || other.verdicts,
        }
    }

    /// Whether any shape is asked for.
    pub fn any(self) -> bool {
        self.events || self.spans || self.lines || self.verdicts
    }
}

/// Where evaluations go. Implementations must not block for long: a full queue may make
/// [`Exporter::export`] wait (backpressure), a slow backend must not.
pub trait Exporter: Send + Sync {
    /// The exporter's id (`kafka`, `otlphttp/phoenix`), for logs and metrics.
    fn id(&self) -> &str;

    /// The shapes it reads.
    fn shapes(&self) -> Shapes;

    /// Takes one trace's evaluations, holding `tokens` until its backend accepted them.
    fn export(&self, outputs: &Outputs, tokens: &[Token]);

    /// Takes the original spans of an input whose receiver forwards them (inline mode: the
    /// application points its SDK at evalstream, and its traces reach the backend beside their
    /// scores). Exporters to trace backends send them on; the others ignore them.
    fn forward(&self, _request: &ExportTraceServiceRequest, _tokens: &[Token]) {}

    /// Waits up to `timeout` for what was taken to be accepted. False if some was not.
    fn flush(&self, timeout: Duration) -> bool;
}

/// A shared exporter is one too: a caller that needs more of it than the trait (the Kafka
/// exporter's transaction, `eval`'s collected output) keeps a clone.
impl<E: Exporter + ?Sized> Exporter for std::sync::Arc<E> {
    fn id(&self) -> &str {
        (**self).id()
    }
    fn shapes(&self) -> Shapes {
        (**self).shapes()
    }
    fn export(&self, outputs: &Outputs, tokens: &[Token]) {
        (**self).export(outputs, tokens)
    }
    fn forward(&self, request: &ExportTraceServiceRequest, tokens: &[Token]) {
        (**self).forward(request, tokens)
    }
    fn flush(&self, timeout: Duration) -> bool {
        (**self).flush(timeout)
    }
}

/// The evaluations of one trace, in the shapes the exporters read.
#[derive(Debug, Default)]
pub struct Batch {
    /// The trace id (raw bytes).
    pub trace_id: Vec<u8>,
    /// Evaluation events, grouped by the judged spans' resources.
    pub events: Vec<(Option<Resource>, Vec<LogRecord>)>,
    /// Evaluator spans, grouped by the judged spans' resources.
    pub spans: Vec<(Option<Resource>, Vec<Span>)>,
    /// JSON lines (without the newline).
    pub lines: Vec<String>,
    /// Scored and errored evaluations, typed.
    pub verdicts: Vec<Verdict>,
}

/// One scored or errored evaluation of a span, owned and typed: what an exporter to a backend
/// with its own evaluation model (Phoenix's span annotations) maps from, without parsing
/// attributes back.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The judged span's trace id (raw bytes).
    pub trace_id: Vec<u8>,
    /// The judged span's span id (raw bytes).
    pub span_id: Vec<u8>,
    /// The evaluator's name.
    pub evaluator: String,
    /// The evaluator's type (`llm_judge`, `refusal`, …).
    pub evaluator_type: &'static str,
    /// The evaluator's version.
    pub version: String,
    /// The score id: the same on a replay.
    pub score_id: ScoreId,
    /// What it concluded (never a skip: skipped evaluations are not verdicts).
    pub outcome: Outcome,
}

impl Batch {
    /// An empty batch for `trace_id`.
    pub fn new(trace_id: &[u8]) -> Batch {
        Batch {
            trace_id: trace_id.to_vec(),
            ..Batch::default()
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.spans.is_empty()
            && self.lines.is_empty()
            && self.verdicts.is_empty()
    }

    /// Adds the evaluations of `judged`, in the `shapes` asked for. `start` and `end` are when
    /// they ran (nanoseconds since the Unix epoch); `extra` attributes go on each span and event.
    pub fn add(
        &mut self,
        shapes: Shapes,
        judged: &GenAiSpan<'_>,
        evaluations: &[Evaluation<'_>],
        (start, end): (u64, u64),
        extra: &[KeyValue],
    ) {
        if shapes.lines {
            self.lines.extend(
                evaluations
                    .iter()
                    .filter_map(|e| serde_json::to_string(&to_json::Line::new(judged, e)).ok()),
            );
        }
        let emitted = || evaluations.iter().filter(|e| to_otlp::emits_span(e));
        if shapes.spans {
            let spans = emitted().map(|e| {
                let mut span = to_otlp::evaluation_span(judged, e, start, end);
                span.attributes.extend_from_slice(extra);
                span
            });
            to_otlp::push_under_resource(&mut self.spans, judged, spans);
        }
        if shapes.events {
            let records =
                emitted().map(|e| to_otlp::evaluation_event(judged, e, end, extra.iter().cloned()));
            to_otlp::push_under_resource(&mut self.events, judged, records);
        }
        if shapes.verdicts {
            self.verdicts.extend(emitted().map(|e| Verdict {
                trace_id: judged.trace_id().to_vec(),
                span_id: judged.span_id().to_vec(),
                evaluator: e.evaluator.to_owned(),
                evaluator_type: e.evaluator_type,
                version: e.version.clone().into_owned(),
                score_id: e.score_id,
                outcome: e.outcome.clone(),
            }));
        }
    }

    /// The batch as the requests exporters encode, built once by moving what was gathered:
    /// every exporter then encodes by reference, and none copies the batch.
    pub fn into_outputs(self) -> Outputs {
        Outputs {
            trace_id: self.trace_id,
            events: (!self.events.is_empty()).then(|| to_otlp::logs_request(self.events)),
            spans: (!self.spans.is_empty()).then(|| to_otlp::spans_request(self.spans)),
            lines: self.lines,
            verdicts: self.verdicts,
        }
    }
}

/// One trace's evaluations as the exporters read them.
#[derive(Debug, Default)]
pub struct Outputs {
    /// The trace id (raw bytes).
    pub trace_id: Vec<u8>,
    /// Evaluation events, under the judged spans' resources.
    pub events: Option<ExportLogsServiceRequest>,
    /// Evaluator spans, under the judged spans' resources.
    pub spans: Option<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
    /// JSON lines (without the newline).
    pub lines: Vec<String>,
    /// Scored and errored evaluations, typed.
    pub verdicts: Vec<Verdict>,
}

/// Every configured exporter: each batch goes to all of them, but for the sampled exporters,
/// which get only the traces tail sampling keeps ([`Exporters::forward_sampled`]).
pub struct Exporters {
    list: Vec<Box<dyn Exporter>>,
    shapes: Shapes,
    sampled: Vec<Box<dyn Exporter>>,
}

impl Exporters {
    /// The exporters, in order.
    pub fn new(list: Vec<Box<dyn Exporter>>) -> Exporters {
        Exporters::with_sampled(list, Vec::new())
    }

    /// The exporters of evaluations, and those of the traces tail sampling keeps.
    pub fn with_sampled(
        list: Vec<Box<dyn Exporter>>,
        sampled: Vec<Box<dyn Exporter>>,
    ) -> Exporters {
        let shapes = list
            .iter()
            .fold(Shapes::default(), |s, e| s.union(e.shapes()));
        Exporters {
            list,
            shapes,
            sampled,
        }
    }

    /// What the exporters read, together.
    pub fn shapes(&self) -> Shapes {
        self.shapes
    }

    /// Hands `batch` to every exporter.
    pub fn export(&self, batch: Batch, tokens: &[Token]) {
        if batch.is_empty() {
            return;
        }
        let outputs = batch.into_outputs();
        for exporter in &self.list {
            exporter.export(&outputs, tokens);
        }
    }

    /// Hands an input's original spans to every exporter (see [`Exporter::forward`]).
    pub fn forward(&self, request: &ExportTraceServiceRequest, tokens: &[Token]) {
        for exporter in &self.list {
            exporter.forward(request, tokens);
        }
    }

    /// Hands a trace that tail sampling kept, whole, to the sampled exporters, holding `tokens`
    /// until they accepted it.
    pub fn forward_sampled(&self, request: &ExportTraceServiceRequest, tokens: &[Token]) {
        for exporter in &self.sampled {
            exporter.forward(request, tokens);
        }
    }

    /// Flushes every exporter, sharing `timeout`. False if any had work left.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut all = true;
        for exporter in self.list.iter().chain(&self.sampled) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !exporter.flush(left) {
                tracing::warn!(exporter = exporter.id(), "some outputs were not delivered");
                all = false;
            }
        }
        all
    }
}
