//! A guard check's verdicts on the output: the exporters get them as they get the stream's —
//! one `gen_ai.evaluation.result` event per verdict, on the checked span — plus one
//! `gen_ai.guardrail.result` event for the check (the GenAI conventions' guardrail event:
//! `gen_ai.guardrail.name` and the decision), so in-request and online verdicts are one stream.
//!
//! The check's answer must not wait on an exporter: the batch is built on the request's thread
//! (microseconds) and handed to one export thread through a bounded queue. When the queue is
//! full (exporters slower than the checks), the batch is dropped and counted
//! (`evalstream_guard_events_dropped_total`); the check's answer, which is what the application
//! acts on, is never held up.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};
use evalstream_evaluators::evaluator::Evaluation;
use evalstream_evaluators::otlp;
use evalstream_evaluators::span::GenAiSpan;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prometheus::{IntCounter, Registry};

use crate::pipeline::ack::{Origin, Rejection, Status, Token};
use crate::pipeline::export::{Batch, Exporters};

/// Batches queued for the export thread.
const QUEUE: usize = 4096;

/// The handle checks send their verdicts through.
#[derive(Clone)]
pub struct Events {
    queue: Sender<Batch>,
    exporters: Arc<Exporters>,
    dropped: IntCounter,
}

/// The origin of a check's events: nobody waits for them, so a rejection is only logged.
struct Check;

impl Origin for Check {
    fn finished(&self, _: Status) {}
    fn rejected(&self, _: Token, rejection: Rejection) {
        tracing::warn!(error = %rejection.message, "a guard check's verdicts could not be exported");
    }
}

impl Events {
    /// Starts the export thread; it ends once every handle is dropped.
    pub fn start(
        exporters: Arc<Exporters>,
        registry: &Registry,
    ) -> anyhow::Result<(Events, JoinHandle<()>)> {
        let dropped = IntCounter::new(
            "evalstream_guard_events_dropped_total",
            "Guard checks whose verdict events were dropped because the exporters fell behind (the checks were answered).",
        )?;
        registry.register(Box::new(dropped.clone()))?;
        let (queue, batches) = crossbeam_channel::bounded::<Batch>(QUEUE);
        let thread = {
            let exporters = exporters.clone();
            std::thread::Builder::new()
                .name("evalstream-guard-events".into())
                .spawn(move || {
                    for batch in batches {
                        exporters.export(batch, &[Token::new(Check)]);
                    }
                })?
        };
        Ok((
            Events {
                queue,
                exporters,
                dropped,
            },
            thread,
        ))
    }

    /// Queues the verdicts of a check of `guard` on `checked` (`target`: `llm_input` or
    /// `llm_output`), which answered `action`.
    pub fn send(
        &self,
        (guard, target, action): (&str, &str, &str),
        checked: &GenAiSpan<'_>,
        evaluations: &[Evaluation<'_>],
    ) {
        let shapes = self.exporters.shapes();
        if !shapes.any() {
            return;
        }
        let now = crate::now_unix_nanos();
        let extra = [otlp::kv_str("gen_ai.guardrail.name", guard)];
        let mut batch = Batch::new(checked.trace_id());
        batch.add(shapes, checked, evaluations, (now, now), &extra);
        if shapes.events {
            let record = LogRecord {
                time_unix_nano: now,
                observed_time_unix_nano: now,
                event_name: "gen_ai.guardrail.result".into(),
                trace_id: checked.trace_id().to_vec(),
                span_id: checked.span_id().to_vec(),
                attributes: vec![
                    otlp::kv_str("gen_ai.guardrail.name", guard),
                    otlp::kv_str("gen_ai.guardrail.decision.type", action),
                    otlp::kv_str("gen_ai.security.target.type", target),
                ],
                ..Default::default()
            };
            evalstream_evaluators::to_otlp::push_under_resource(
                &mut batch.events,
                checked,
                [record],
            );
        }
        match self.queue.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}
