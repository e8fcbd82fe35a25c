//! Scores as OpenTelemetry: each evaluation becomes an evaluator span, child of the span it
//! judges, carrying the `gen_ai.evaluation.*` attributes and a `gen_ai.evaluation.result` event.
//!
//! Shape (see the README's "Score shape"):
//! - same trace id as the judged span, parent = the judged span, kind INTERNAL,
//!   name `evaluation {evaluator}`, span id derived from the score id (replays give the same id);
//! - attributes `gen_ai.operation.name=evaluation`, `gen_ai.evaluation.name`,
//!   `gen_ai.evaluation.score.value`, `gen_ai.evaluation.score.label`,
//!   `gen_ai.evaluation.explanation`, `gen_ai.response.id` (when known), `error.type` (when the
//!   evaluation failed), and `evalstream.evaluator.version`, `evalstream.evaluation.passed`,
//!   `evalstream.evaluation.outcome`, `evalstream.score.id`;
//! - one event `gen_ai.evaluation.result` with the semantic-convention subset of them
//!   ([`EVENT_KEYS`]: name, score value and label, explanation, response id, error type);
//! - status ERROR when the evaluation errored.
//!
//! Skipped evaluations produce no span: they are counted in metrics and shown by `evalstream
//! eval`, but a trace backend gains nothing from a span saying "not applicable".

use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};

use crate::evaluator::{Evaluation, Outcome};
use crate::otlp::{
    ExportTraceServiceRequestExt as _, kv, kv_str, types::ExportTraceServiceRequest,
};
use crate::span::GenAiSpan;

/// The instrumentation scope name of evaluator spans.
pub const SCOPE_NAME: &str = "evalstream";

/// The attributes the `gen_ai.evaluation.result` event carries, as the GenAI semantic conventions
/// define it; the evaluator span carries these and evalstream's own.
pub const EVENT_KEYS: [&str; 6] = [
    "gen_ai.evaluation.name",
    "gen_ai.evaluation.score.value",
    "gen_ai.evaluation.score.label",
    "gen_ai.evaluation.explanation",
    "gen_ai.response.id",
    "error.type",
];

/// Whether an evaluation becomes an evaluator span (scored and errored ones do).
pub fn emits_span(evaluation: &Evaluation<'_>) -> bool {
    !matches!(evaluation.outcome, Outcome::Skipped { .. })
}

/// The attributes describing an evaluation (shared by the span and its event).
pub fn evaluation_attributes(judged: &GenAiSpan<'_>, evaluation: &Evaluation<'_>) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(10);
    attrs.push(kv_str("gen_ai.operation.name", "evaluation"));
    attrs.push(kv_str("gen_ai.evaluation.name", evaluation.evaluator));
    match &evaluation.outcome {
        Outcome::Scored(score) => {
            attrs.push(kv(
                "gen_ai.evaluation.score.value",
                Value::DoubleValue(score.value),
            ));
            attrs.push(kv_str(
                "gen_ai.evaluation.score.label",
                score.label.as_ref(),
            ));
            attrs.push(kv_str(
                "gen_ai.evaluation.explanation",
                score.explanation.as_str(),
            ));
            attrs.push(kv(
                "evalstream.evaluation.passed",
                Value::BoolValue(score.passed),
            ));
        }
        Outcome::Error {
            error_type,
            message,
        } => {
            attrs.push(kv_str("error.type", error_type.as_ref()));
            attrs.push(kv_str("gen_ai.evaluation.explanation", message.as_str()));
        }
        Outcome::Skipped { reason, detail } => {
            attrs.push(kv_str("evalstream.evaluation.skip_reason", reason.as_str()));
            if !detail.is_empty() {
                attrs.push(kv_str("gen_ai.evaluation.explanation", detail.as_ref()));
            }
        }
    }
    if let Some(id) = judged.response_id() {
        attrs.push(kv_str("gen_ai.response.id", id));
    }
    attrs.push(kv_str(
        "evalstream.evaluator.version",
        evaluation.version.as_ref(),
    ));
    attrs.push(kv_str(
        "evalstream.evaluation.outcome",
        evaluation.outcome.as_str(),
    ));
    attrs.push(kv_str("evalstream.score.id", evaluation.score_id.to_hex()));
    attrs
}

/// The evaluator span for one evaluation. `start` and `end` are when the evaluation ran, in
/// nanoseconds since the Unix epoch.
pub fn evaluation_span(
    judged: &GenAiSpan<'_>,
    evaluation: &Evaluation<'_>,
    start: u64,
    end: u64,
) -> Span {
    let attributes = evaluation_attributes(judged, evaluation);
    let status = match &evaluation.outcome {
        Outcome::Error { message, .. } => Some(Status {
            code: status::StatusCode::Error as i32,
            message: message.clone(),
        }),
        _ => None,
    };
    Span {
        trace_id: judged.trace_id().to_vec(),
        span_id: evaluation.score_id.span_id().to_vec(),
        parent_span_id: judged.span_id().to_vec(),
        name: format!("evaluation {}", evaluation.evaluator),
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        events: vec![span::Event {
            time_unix_nano: end,
            name: "gen_ai.evaluation.result".into(),
            attributes: attributes
                .iter()
                .filter(|a| EVENT_KEYS.contains(&a.key.as_str()))
                .cloned()
                .collect(),
            ..Default::default()
        }],
        attributes,
        status,
        ..Default::default()
    }
}

/// Wraps evaluator spans in a request under evalstream's own resource and scope.
pub fn export_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    let resource = Resource {
        attributes: vec![
            kv_str("service.name", "evalstream"),
            kv_str("service.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Default::default()
    };
    let scope = InstrumentationScope {
        name: SCOPE_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    ExportTraceServiceRequest::single(ResourceSpans {
        resource: Some(resource),
        scope_spans: vec![ScopeSpans {
            scope: Some(scope),
            spans,
            ..Default::default()
        }],
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluator::ScoreId;
    use crate::otlp;
    use crate::scorers::testing::{chat, s, view};
    use crate::span::{OperationKind, spans};

    #[test]
    fn evaluator_span_is_a_child_with_the_evaluation_attributes_and_event() {
        let mut judged = chat("hi");
        judged
            .attributes
            .push(s("gen_ai.response.id", "chatcmpl-1"));
        let v = view(&judged);
        let evaluation = Evaluation {
            evaluator: "refusal",
            version: "1.abcd".into(),
            score_id: ScoreId::new(v.trace_id(), v.span_id(), "refusal", "1.abcd"),
            outcome: Outcome::check(false, "refused", "refusal: \"no\""),
        };
        let out = evaluation_span(&v, &evaluation, 10, 20);
        assert_eq!(out.trace_id, judged.trace_id);
        assert_eq!(out.parent_span_id, judged.span_id);
        assert_eq!(out.span_id, evaluation.score_id.span_id().to_vec());
        assert_eq!(out.name, "evaluation refusal");
        assert_eq!(out.kind, span::SpanKind::Internal as i32);
        let get = |k| otlp::find(&out.attributes, k).cloned();
        assert_eq!(
            get("gen_ai.evaluation.score.value").and_then(|v| otlp::as_f64(&v)),
            Some(0.0)
        );
        assert_eq!(
            get("gen_ai.evaluation.score.label")
                .as_ref()
                .and_then(otlp::as_str),
            Some("refused")
        );
        assert_eq!(
            get("gen_ai.response.id").as_ref().and_then(otlp::as_str),
            Some("chatcmpl-1")
        );
        assert_eq!(out.events[0].name, "gen_ai.evaluation.result");
        let event_keys: Vec<&str> = out.events[0]
            .attributes
            .iter()
            .map(|a| a.key.as_str())
            .collect();
        assert_eq!(
            event_keys,
            [
                "gen_ai.evaluation.name",
                "gen_ai.evaluation.score.value",
                "gen_ai.evaluation.score.label",
                "gen_ai.evaluation.explanation",
                "gen_ai.response.id"
            ]
        );

        // The evaluator span, read back, is an evaluator span: evaluators skip it by default.
        let request = export_request(vec![out]);
        let back: Vec<_> = spans(&request).collect();
        assert_eq!(back[0].kind(), OperationKind::Evaluator);
        assert_eq!(back[0].resource().service_name, Some("evalstream"));
    }

    #[test]
    fn errors_set_error_type_and_status_and_skips_emit_nothing() {
        let judged = chat("hi");
        let v = view(&judged);
        let mut evaluation = Evaluation {
            evaluator: "x",
            version: "1".into(),
            score_id: ScoreId([1; 16]),
            outcome: Outcome::Error {
                error_type: "timeout".into(),
                message: "judge timed out".into(),
            },
        };
        let out = evaluation_span(&v, &evaluation, 1, 2);
        assert_eq!(
            otlp::find(&out.attributes, "error.type").and_then(otlp::as_str),
            Some("timeout")
        );
        assert_eq!(out.status.unwrap().code, status::StatusCode::Error as i32);
        assert!(emits_span(&evaluation));
        evaluation.outcome = Outcome::no_content();
        assert!(!emits_span(&evaluation));
    }
}
