//! Evaluations as JSON lines: what `evalstream eval` prints and the `stdout` exporter writes, one
//! object per evaluation of a span.

use serde::Serialize;

use crate::evaluator::{Evaluation, Outcome};
use crate::otlp;
use crate::span::GenAiSpan;

/// One line of output: one evaluation of one span.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    /// The judged span's trace id, hex.
    pub trace_id: String,
    /// Its span id, hex.
    pub span_id: String,
    /// Its name.
    pub span_name: &'a str,
    /// Its operation kind.
    pub kind: &'static str,
    /// Its model.
    pub model: Option<&'a str>,
    /// Its service.
    pub service: Option<&'a str>,
    /// The evaluator's name.
    pub evaluator: &'a str,
    /// The evaluator's version.
    pub evaluator_version: &'a str,
    /// The score id (deterministic; replays give the same).
    pub score_id: String,
    /// `scored`, `skipped` or `error`.
    pub outcome: &'static str,
    /// The score, when scored.
    pub score: Option<f64>,
    /// The label, when scored.
    pub label: Option<&'a str>,
    /// Whether it passed, when scored.
    pub passed: Option<bool>,
    /// Why (or the error's or the skip's detail).
    pub explanation: Option<&'a str>,
    /// Why it was skipped.
    pub skip_reason: Option<&'static str>,
    /// What failed.
    pub error_type: Option<&'a str>,
}

impl<'a> Line<'a> {
    /// The line for evaluation `e` of `span`.
    pub fn new(span: &'a GenAiSpan<'_>, e: &'a Evaluation<'_>) -> Line<'a> {
        let (score, label, passed, mut explanation) = match &e.outcome {
            Outcome::Scored(s) => (
                Some(s.value),
                Some(s.label.as_ref()),
                Some(s.passed),
                Some(s.explanation.as_str()),
            ),
            _ => (None, None, None, None),
        };
        let (skip_reason, error_type) = match &e.outcome {
            Outcome::Skipped { reason, detail } => {
                explanation = (!detail.is_empty()).then_some(detail.as_ref());
                (Some(reason.as_str()), None)
            }
            Outcome::Error {
                error_type,
                message,
            } => {
                explanation = Some(message.as_str());
                (None, Some(error_type.as_ref()))
            }
            Outcome::Scored(_) => (None, None),
        };
        Line {
            trace_id: otlp::hex(span.trace_id()),
            span_id: otlp::hex(span.span_id()),
            span_name: span.name(),
            kind: span.kind().as_str(),
            model: span.model(),
            service: span.resource().service_name,
            evaluator: e.evaluator,
            evaluator_version: &e.version,
            score_id: e.score_id.to_hex(),
            outcome: e.outcome.as_str(),
            score,
            label,
            passed,
            explanation,
            skip_reason,
            error_type,
        }
    }
}
