//! Evaluation of spans: [`Scoring`] runs the evaluators a [`Pass`] calls for on every span of a
//! trace, records the metrics and hands each trace's evaluations to the exporters; judge
//! evaluators' spans go to the judge service. What the workers, the trace buffer's shards and
//! (for cascades) the judge's callers share.
//!
//! An evaluator that panics on a span yields an `error` outcome for that span; the caller carries
//! on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use evalstream_evaluators::evaluator::{
    ConfiguredEvaluator, Evaluation, EvaluatorSet, Outcome, SkipReason,
};
use evalstream_evaluators::otlp;
use evalstream_evaluators::pricing::PriceTable;
use evalstream_evaluators::scorers::judge::LlmJudge;
use evalstream_evaluators::span::{GenAiSpan, OperationKind};
use evalstream_evaluators::trace::TraceView;
use opentelemetry_proto::tonic::common::v1::KeyValue;

use super::ack::Token;
use super::assembly::{Completion, StoredSpan};
use super::budgets::Budgets;
use super::export::{Batch, Exporters};
use super::judge::{JudgeService, Submitted};
use super::sampler::Verdicts;
use crate::telemetry::metrics::Metrics;

/// Which evaluators a pass over spans runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Every evaluator, trace evaluators seeing the spans at hand.
    All,
    /// Evaluators of single spans (trace evaluators run when the trace is assembled).
    Spans,
    /// Trace evaluators, on an assembled trace.
    Traces(Completion),
}

impl Pass {
    fn runs(self, e: &ConfiguredEvaluator) -> bool {
        match self {
            Pass::All => true,
            Pass::Spans => !e.needs_trace(),
            Pass::Traces(_) => e.needs_trace(),
        }
    }
}

/// Runs evaluators and hands their results to the exporters: what the workers, the trace buffer
/// and the judge service share.
pub struct Scoring {
    /// The configured evaluators.
    pub evaluators: Arc<EvaluatorSet>,
    /// Where outputs go.
    pub exporters: Arc<Exporters>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Prices for the cost metrics.
    pub prices: PriceTable,
    /// Span-level cost budgets, counted from every model call span the workers see.
    pub budgets: Option<Arc<Budgets>>,
}

/// Runs one evaluator on a span it applies to (in `trace`, when there is one), turning a panic
/// into an `error` outcome. The guard API's checks run their evaluators through it too.
pub(crate) fn run_guarded<'e>(
    e: &'e ConfiguredEvaluator,
    span: &GenAiSpan<'_>,
    trace: Option<&TraceView<'_>>,
) -> Evaluation<'e> {
    match catch_unwind(AssertUnwindSafe(|| e.run_applied(span, trace))) {
        Ok(evaluation) => evaluation,
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            e.evaluation(
                span,
                Outcome::Error {
                    error_type: "panic".into(),
                    message,
                },
            )
        }
    }
}

/// What a panic said.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

impl Scoring {
    /// Whether a trace evaluator samples the trace: only such traces are buffered.
    pub fn samples_trace(&self, trace_id: &[u8]) -> bool {
        self.evaluators
            .evaluators()
            .iter()
            .any(|e| e.needs_trace() && e.sampler.keeps(trace_id))
    }

    /// Runs the pass's evaluators on every span of `traces`, records the metrics and hands the
    /// evaluations to the exporters, one batch per trace, with the `tokens` of the inputs they
    /// came from. Spans for judge evaluators go to `judges` (their verdicts follow later, holding
    /// the tokens). Returns how many judge calls were queued.
    pub fn score(
        &self,
        traces: &[TraceView<'_>],
        pass: Pass,
        tokens: &[Token],
        judges: Option<&JudgeService>,
    ) -> usize {
        self.score_noting(traces, pass, tokens, judges, None)
    }

    /// As [`Scoring::score`], noting in `notes` (when given) one [`Verdicts`] per trace: what
    /// tail sampling reads of the pass.
    pub fn score_noting(
        &self,
        traces: &[TraceView<'_>],
        pass: Pass,
        tokens: &[Token],
        judges: Option<&JudgeService>,
        mut notes: Option<&mut Vec<Verdicts>>,
    ) -> usize {
        let mut queued = 0;
        let mut evaluations = Vec::new();
        let shapes = self.exporters.shapes();
        let extra: Vec<KeyValue> = match pass {
            Pass::Traces(completion) => vec![completion_attribute(completion)],
            _ => Vec::new(),
        };
        for trace in traces {
            let mut batch = Batch::new(trace.trace_id());
            let mut noted = notes.as_ref().map(|_| Verdicts::default());
            let queued_before = queued;
            for s in trace.spans() {
                if !matches!(pass, Pass::Traces(_)) {
                    self.metrics.spans.inc();
                    if let Some(budgets) = &self.budgets {
                        budgets.record(s, &self.prices);
                    }
                }
                evaluations.clear();
                let started = Instant::now();
                for (index, e) in self.evaluators.evaluators().iter().enumerate() {
                    if !pass.runs(e) || !e.applies(s, Some(trace)) {
                        continue;
                    }
                    let evaluation = if let Some(skip) =
                        self.refused_by_cascade(e, s, trace, pass, &evaluations)
                    {
                        Some(e.evaluation(s, skip))
                    } else if let (Some(llm), Some(service)) = (e.evaluator.as_judge(), judges) {
                        Self::send_to_judge(index, e, llm, service, s, trace, tokens, &mut queued)
                    } else {
                        Some(run_guarded(e, s, Some(trace)))
                    };
                    if let Some(evaluation) = evaluation {
                        self.metrics.record(index, &evaluation, s);
                        evaluations.push(evaluation);
                    }
                }
                if let Some(noted) = &mut noted {
                    for evaluation in &evaluations {
                        noted.note(evaluation.evaluator, &evaluation.outcome);
                    }
                }
                if self.accounts(pass, s, !evaluations.is_empty()) {
                    self.account(s);
                }
                if evaluations.is_empty() {
                    continue;
                }
                self.metrics
                    .evaluation_seconds
                    .observe(started.elapsed().as_secs_f64());
                if !shapes.any() {
                    continue;
                }
                let end = crate::now_unix_nanos();
                let start = end.saturating_sub(started.elapsed().as_nanos() as u64);
                batch.add(shapes, s, &evaluations, (start, end), &extra);
            }
            self.exporters.export(batch, tokens);
            if let (Some(notes), Some(mut noted)) = (notes.as_deref_mut(), noted) {
                noted.awaited = (queued - queued_before) as u32;
                notes.push(noted);
            }
        }
        queued
    }

    /// The skip of an evaluator whose `when` does not hold on this span, given the evaluations
    /// `made` on it so far in this pass.
    fn refused_by_cascade(
        &self,
        e: &ConfiguredEvaluator,
        s: &GenAiSpan<'_>,
        trace: &TraceView<'_>,
        pass: Pass,
        made: &[Evaluation<'_>],
    ) -> Option<Outcome> {
        if e.when.is_empty() {
            return None;
        }
        let all = self.evaluators.evaluators();
        // A span evaluator's score, seen from the trace pass, was sent with the span's message;
        // it is cheap and deterministic, so it is worked out again rather than kept.
        let elsewhere: Vec<(usize, Option<Evaluation<'_>>)> = e
            .when
            .dependencies()
            .filter(|&i| !pass.runs(&all[i]))
            .map(|i| {
                let dependency = &all[i];
                let judged = dependency.applies(s, Some(trace));
                (i, judged.then(|| run_guarded(dependency, s, Some(trace))))
            })
            .collect();
        e.when.refuses(|i| {
            if let Some((_, evaluation)) = elsewhere.iter().find(|(j, _)| *j == i) {
                return evaluation.as_ref().map(|m| &m.outcome);
            }
            self.evaluators.outcome_among(made, i)
        })
    }

    /// Hands a span a judge evaluator applies to to the judge service. Returns the evaluation
    /// when it is decided at once (sampled out, nothing to judge, a cached verdict, shed, over
    /// budget); `None` when its verdict follows, holding `tokens` (counted in `queued`).
    #[allow(clippy::too_many_arguments)]
    fn send_to_judge<'e>(
        index: usize,
        e: &'e ConfiguredEvaluator,
        llm: &LlmJudge,
        service: &JudgeService,
        s: &GenAiSpan<'_>,
        trace: &TraceView<'_>,
        tokens: &[Token],
        queued: &mut usize,
    ) -> Option<Evaluation<'e>> {
        let outcome = if !e.sampler.keeps(s.trace_id()) {
            Outcome::Skipped {
                reason: SkipReason::SampledOut,
                detail: "".into(),
            }
        } else {
            match llm.request(s, Some(trace)) {
                Ok(request) => {
                    match service.submit(index, request, || StoredSpan::of_view(s), tokens) {
                        Submitted::Queued => {
                            *queued += 1;
                            return None;
                        }
                        Submitted::Now(outcome) => outcome,
                    }
                }
                Err(outcome) => outcome,
            }
        };
        Some(e.evaluation(s, outcome))
    }

    /// Whether this pass accounts a span's lag, tokens and cost: each span once, in the pass
    /// that sees it first (the workers'), when any evaluator judges it.
    fn accounts(&self, pass: Pass, s: &GenAiSpan<'_>, evaluated: bool) -> bool {
        match pass {
            Pass::All => evaluated,
            Pass::Spans => {
                evaluated
                    || self
                        .evaluators
                        .evaluators()
                        .iter()
                        .any(|e| e.needs_trace() && e.selector.matches(s))
            }
            Pass::Traces(_) => false,
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
                n(usage.input)
                    .saturating_sub(n(usage.cache_read).saturating_add(n(usage.cache_write))),
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

/// `evalstream.trace.completion` on a trace evaluator's span: whether the trace it judged was
/// complete, or evaluated with what it had (`timed_out`, `evicted`, `late`, `flushed`).
fn completion_attribute(completion: Completion) -> KeyValue {
    otlp::kv_str("evalstream.trace.completion", completion.as_str())
}
