//! Evaluation workers: decode an input, run the evaluators on its spans ([`Scoring`]) and hand
//! each trace's evaluations to the exporters; an input that cannot be decoded is rejected (its
//! receiver decides what that means: a dead letter, an error answer).
//!
//! Workers are plain threads, one per core: evaluation is CPU work and must not sit on an async
//! runtime. A panic while processing an input (a bug outside the evaluators, which are guarded
//! one by one) rejects that input; the thread carries on.
//!
//! When trace evaluators are configured, a worker runs only the span evaluators and hands each
//! trace's spans to the trace buffer ([`Assembler`]), holding the input until the trace is
//! evaluated; the buffer's threads run the trace evaluators through the same [`Scoring`].
//!
//! When a receiver takes logs, a model-call span without content is not evaluated here but handed
//! to the join ([`Joiner`]) to wait for its content log events, and a logs input's events go there
//! too; see [`super::joiner`].

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use evalstream_evaluators::logs;
use evalstream_evaluators::otlp::{self, Encoding};
use evalstream_evaluators::span::{self, OperationKind};
use evalstream_evaluators::trace::TraceView;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use super::ack::{Rejection, Token};
use super::assembly::{SharedParts, StoredSpan};
use super::evaluate::{Pass, Scoring, panic_message};
use super::joiner::Joiner;
use super::judge::JudgeService;
use super::redaction::{Redactions, Redactor};
use super::traces::Assembler;

/// One input for the workers: its spans and its acknowledgement token.
pub struct Input {
    /// The spans.
    pub body: Body,
    /// The input's token; the worker's clone is let go once its evaluations are handed on.
    pub token: Token,
}

/// An input's spans.
pub enum Body {
    /// Encoded bytes that the token's origin keeps ([`Token::with_input`]): a Kafka message,
    /// decoded on the worker's thread (decoding is CPU work the poll thread must not do).
    Kept(Encoding),
    /// A request decoded already (by the OTLP receiver's server).
    Decoded(ExportTraceServiceRequest),
    /// The same, whose spans also go on to the exporters as they are (the OTLP receiver's
    /// `forward`).
    Forwarded(ExportTraceServiceRequest),
    /// OTLP logs kept by the token's origin, as [`Body::Kept`] (a Kafka logs topic).
    KeptLogs(Encoding),
    /// OTLP logs decoded already (the OTLP receiver's `/v1/logs`, `LogsService/Export`).
    Logs(ExportLogsServiceRequest),
}

/// A worker thread's view of what it shares.
pub struct Worker {
    /// Runs the evaluators.
    pub scoring: Arc<Scoring>,
    /// The trace buffer, when trace evaluators are configured.
    pub traces: Option<Assembler>,
    /// The judge service, when judge evaluators are configured.
    pub judges: Option<Arc<JudgeService>>,
    /// Redaction of forwarded spans, when configured: the exporters get a redacted copy, the
    /// evaluators the original.
    pub redactor: Option<Arc<Redactor>>,
    /// The join of log events to spans, when a receiver takes logs.
    pub join: Option<Arc<Joiner>>,
}

impl Worker {
    /// Takes inputs until the queue closes. An input whose processing panics (a bug outside the
    /// evaluators, which are guarded one by one) is rejected with error type `panic`; the thread
    /// carries on.
    pub fn run(&self, queue: Receiver<Vec<Input>>) {
        for batch in queue {
            for input in batch {
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.process(&input))) {
                    let message = panic_message(panic.as_ref());
                    tracing::error!(%message, "processing an input panicked; it is rejected");
                    input.token.reject(Rejection {
                        error_type: "panic",
                        message: format!("evalstream panicked: {message}"),
                        output: None,
                    });
                }
            }
        }
    }

    fn process(&self, input: &Input) {
        let decoded;
        let request = match &input.body {
            Body::KeptLogs(_) | Body::Logs(_) => return self.process_logs(input),
            Body::Decoded(request) => request,
            Body::Forwarded(request) => {
                let tokens = std::slice::from_ref(&input.token);
                match &self.redactor {
                    Some(redactor) => {
                        let mut copy = request.clone();
                        let mut done = Redactions::default();
                        redactor.request(&mut copy, &mut done);
                        self.scoring.metrics.record_redactions(done.counts());
                        self.scoring.exporters.forward(&copy, tokens);
                    }
                    None => self.scoring.exporters.forward(request, tokens),
                }
                request
            }
            Body::Kept(encoding) => {
                let Some(r) = self.decode_kept(input, |b| otlp::decode(b, *encoding)) else {
                    return;
                };
                decoded = r;
                &decoded
            }
        };
        // Model calls without content wait for their log events, when logs come at all.
        let mut waiting = Vec::new();
        let views = span::spans(request).filter(|s| match &self.join {
            Some(_) if logs::awaits_content(s) => {
                waiting.push((s.span_id().to_vec(), StoredSpan::of_view(s)));
                false
            }
            Some(join) if s.kind() == OperationKind::Chat => {
                join.content_present(s.span_id());
                true
            }
            _ => true,
        });
        let traces = TraceView::group(views, false);
        // Without a trace buffer, trace evaluators (if any) see the trace's spans at hand.
        let pass = if self.traces.is_some() {
            Pass::Spans
        } else {
            Pass::All
        };
        let tokens = std::slice::from_ref(&input.token);
        // Tail sampling decides on each trace with its span evaluators' verdicts.
        let sampling = self.traces.as_ref().is_some_and(Assembler::samples);
        let mut notes = Vec::new();
        let queued = self.scoring.score_noting(
            &traces,
            pass,
            tokens,
            self.judges.as_deref(),
            sampling.then_some(&mut notes),
        );
        // A judge call keeps what it needs; the raw bytes need not wait for its verdict.
        let mut held = queued > 0;
        if let Some(assembler) = &self.traces {
            let mut shared = SharedParts::default();
            let mut notes = notes.into_iter();
            for trace in &traces {
                let verdicts = notes.next().unwrap_or_default();
                // A trace no trace evaluator samples is not buffered at all (unless tail
                // sampling decides on every trace).
                if assembler.buffers(&self.scoring, trace.trace_id()) {
                    let spans = StoredSpan::from_trace(trace, &mut shared, sampling);
                    assembler.add(trace.trace_id().to_vec(), spans, &input.token, verdicts);
                    held = true;
                }
            }
        }
        if let Some(join) = &self.join
            && !waiting.is_empty()
        {
            join.add_spans(waiting, &input.token);
            held = true;
        }
        if held {
            // The buffer and the judge calls keep what they read; the raw bytes can go.
            input.token.release_input();
        }
    }

    /// A logs input: its content events go to the join. Without a join (no receiver was
    /// configured for logs, so none should come), there is nothing to do with it.
    fn process_logs(&self, input: &Input) {
        let decoded;
        let requests = match &input.body {
            Body::Logs(request) => std::slice::from_ref(request),
            Body::KeptLogs(encoding) => {
                let Some(r) = self.decode_kept(input, |b| logs::decode_logs(b, *encoding)) else {
                    return;
                };
                decoded = r;
                &decoded[..]
            }
            _ => return,
        };
        if let Some(join) = &self.join {
            for request in requests {
                join.add_logs(request, &input.token);
            }
        }
        input.token.release_input();
    }

    /// Decodes the bytes the input's origin keeps; an input that does not decode is rejected
    /// (its receiver decides what that means) and `None` returned.
    fn decode_kept<T>(
        &self,
        input: &Input,
        decode: impl FnOnce(&[u8]) -> Result<T, otlp::DecodeError>,
    ) -> Option<T> {
        match input
            .token
            .with_input(|payload| decode(payload.unwrap_or_default()))
        {
            Ok(decoded) => Some(decoded),
            Err(e) => {
                self.scoring.metrics.decode_errors.inc();
                input.token.reject(Rejection {
                    error_type: "decode",
                    message: e.to_string(),
                    output: None,
                });
                None
            }
        }
    }
}
