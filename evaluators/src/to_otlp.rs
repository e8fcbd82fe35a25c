//! Scores as OpenTelemetry, in two shapes.
//!
//! **Events** ([`evaluation_event`], the default output): one log record per scored or errored
//! evaluation, `event_name` `gen_ai.evaluation.result`, carrying the trace id and span id of the
//! judged span, so a backend files it with that span. OpenTelemetry deprecated the span-event API
//! in 2026 (OTEP 4430: events are log records correlated with their span), and the GenAI
//! conventions define `gen_ai.evaluation.result` as an event that SHOULD be parented to the judged
//! span. Attributes: the conventions' ([`EVENT_KEYS`]) and evalstream's
//! (`evalstream.evaluator.version`, `evalstream.evaluator.type`, `evalstream.evaluation.passed`,
//! `evalstream.evaluation.outcome`, `evalstream.score.id`).
//!
//! **Evaluator spans** ([`evaluation_span`], on request): each evaluation becomes a span, child of
//! the span it judges, carrying the `gen_ai.evaluation.*` attributes and a
//! `gen_ai.evaluation.result` span event. Shape:
//! - same trace id as the judged span, parent = the judged span, kind INTERNAL,
//!   name `evaluation {evaluator}`, span id derived from the score id (replays give the same id);
//! - attributes `gen_ai.operation.name=evaluation`, `openinference.span.kind=EVALUATOR`,
//!   `gen_ai.evaluation.name`, `gen_ai.evaluation.score.value`, `gen_ai.evaluation.score.label`,
//!   `gen_ai.evaluation.explanation`, `gen_ai.response.id` (when known), `error.type` (when the
//!   evaluation failed), and `evalstream.evaluator.version`, `evalstream.evaluator.type`,
//!   `evalstream.evaluation.passed`, `evalstream.evaluation.outcome`, `evalstream.score.id`,
//!   `evalstream.evaluation.time_unix_nano` and `evalstream.evaluation.duration_ms` (when and how
//!   long the evaluation ran);
//! - one event `gen_ai.evaluation.result` with the semantic-convention subset of them
//!   ([`EVENT_KEYS`]: name, score value and label, explanation, response id, error type).
//!
//! **Neither distorts the user's trace** (issue 16, found with Phoenix):
//! - Both go under the *judged span's resource* ([`logs_request`], [`spans_request`]), so a
//!   backend that routes by resource (`service.*`, `deployment.environment`, Phoenix's
//!   `openinference.project.name`) files them with the application's trace. Under evalstream's
//!   own resource, an evaluator span written before the application's spans made Phoenix file the
//!   whole trace, the application's spans included, under another project. evalstream names
//!   itself in the instrumentation scope ([`scope`]) and the `evalstream.*` attributes instead.
//! - An evaluator span lies within the judged span's time range: it starts and ends when the
//!   judged span ended. With the evaluation's own times, an offline run made a 21 ms trace last
//!   24 minutes in the backend's latency, and online every trace lasted `quiet_seconds` longer.
//!   When the evaluation ran is kept as attributes.
//! - An errored evaluation (a judge that timed out) is a fact about evalstream, not about the
//!   application: its span has no ERROR status, which backends paint red inside the user's trace;
//!   `error.type` and `evalstream.evaluation.outcome=error` say what happened.
//!
//! Every string copied onto the span (the response id, the evaluator's name, label, version and
//! explanation, the error) is capped in length ([`MAX_NAME_BYTES`], [`MAX_EXPLANATION_BYTES`]),
//! with a trailing `…` when cut: they come from the judged span or from scripts, and one 50 MB
//! `gen_ai.response.id` once made a 524 MB output file (the id is copied onto the span and its
//! event, for every evaluator).
//!
//! Skipped evaluations produce no span: they are counted in metrics and shown by `evalstream
//! eval`, but a trace backend gains nothing from a span saying "not applicable".

use std::borrow::Cow;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};

use crate::evaluator::{Evaluation, Outcome};
use crate::otlp::{kv, kv_str, types::ExportTraceServiceRequest};
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

/// The most bytes kept of an identifier or name copied onto an evaluator span (response id,
/// evaluator name, label, version, error type; model names for callers adding them). Provider
/// response ids are under 100 bytes (`chatcmpl-` + 29 characters, `msg_` + 24), model names under
/// 80: 256 keeps every real one whole.
pub const MAX_NAME_BYTES: usize = 256;

/// The most bytes kept of an explanation or error message. Built-in scorers write under 600
/// (`grounding` naming three unsupported claims is the longest); a script's or a judge's reason
/// can be anything, and a reader needs its start, not 50 MB of it.
pub const MAX_EXPLANATION_BYTES: usize = 1024;

/// The marker ending a cut value, so truncation is visible.
const CUT_MARKER: &str = "…";

/// `value` cut to at most `max_bytes` bytes, marker included, on a character boundary, ending
/// with `…` when cut. Use it for any string from the judged span or an evaluator that goes onto
/// an evaluator span.
pub fn capped(value: &str, max_bytes: usize) -> Cow<'_, str> {
    if value.len() <= max_bytes {
        return Cow::Borrowed(value);
    }
    let kept = crate::text::prefix_bytes(value, max_bytes.saturating_sub(CUT_MARKER.len()));
    Cow::Owned(format!("{kept}{CUT_MARKER}"))
}

fn name_attr(key: &str, value: &str) -> KeyValue {
    kv_str(key, capped(value, MAX_NAME_BYTES))
}

fn text_attr(key: &str, value: &str) -> KeyValue {
    kv_str(key, capped(value, MAX_EXPLANATION_BYTES))
}

/// Whether an evaluation becomes an evaluator span (scored and errored ones do).
pub fn emits_span(evaluation: &Evaluation<'_>) -> bool {
    !matches!(evaluation.outcome, Outcome::Skipped { .. })
}

/// How many attributes [`push_evaluation_attributes`] adds at most.
const EVALUATION_ATTRIBUTES: usize = 10;

/// Adds the attributes describing an evaluation (shared by the span and its event) to `attrs`,
/// which the caller sized once: this runs for every evaluation.
pub fn push_evaluation_attributes(
    attrs: &mut Vec<KeyValue>,
    judged: &GenAiSpan<'_>,
    evaluation: &Evaluation<'_>,
) {
    attrs.push(name_attr("gen_ai.evaluation.name", evaluation.evaluator));
    match &evaluation.outcome {
        Outcome::Scored(score) => {
            attrs.push(kv(
                "gen_ai.evaluation.score.value",
                Value::DoubleValue(score.value),
            ));
            attrs.push(name_attr("gen_ai.evaluation.score.label", &score.label));
            attrs.push(text_attr(
                "gen_ai.evaluation.explanation",
                &score.explanation,
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
            attrs.push(name_attr("error.type", error_type));
            attrs.push(text_attr("gen_ai.evaluation.explanation", message));
        }
        Outcome::Skipped { reason, detail } => {
            attrs.push(kv_str("evalstream.evaluation.skip_reason", reason.as_str()));
            if !detail.is_empty() {
                attrs.push(text_attr("gen_ai.evaluation.explanation", detail));
            }
        }
    }
    if let Some(id) = judged.response_id() {
        attrs.push(name_attr("gen_ai.response.id", id));
    }
    attrs.push(name_attr(
        "evalstream.evaluator.version",
        &evaluation.version,
    ));
    attrs.push(kv_str(
        "evalstream.evaluator.type",
        evaluation.evaluator_type,
    ));
    attrs.push(kv_str(
        "evalstream.evaluation.outcome",
        evaluation.outcome.as_str(),
    ));
    attrs.push(kv_str("evalstream.score.id", evaluation.score_id.to_hex()));
}

/// When an evaluator span starts and ends: when the judged span ended (its start when it has no
/// end), so the evaluation never stretches the judged span's trace (see the module's comment).
fn placed_in(judged: &GenAiSpan<'_>) -> u64 {
    match judged.end_time_unix_nano() {
        0 => judged.raw().start_time_unix_nano,
        end => end,
    }
}

/// The evaluator span for one evaluation. `start` and `end` are when the evaluation ran, in
/// nanoseconds since the Unix epoch: they become attributes, the span itself lies at the end of
/// the judged span.
pub fn evaluation_span(
    judged: &GenAiSpan<'_>,
    evaluation: &Evaluation<'_>,
    start: u64,
    end: u64,
) -> Span {
    let mut attributes = Vec::with_capacity(EVALUATION_ATTRIBUTES + 4);
    attributes.push(kv_str("gen_ai.operation.name", "evaluation"));
    attributes.push(kv_str("openinference.span.kind", "EVALUATOR"));
    push_evaluation_attributes(&mut attributes, judged, evaluation);
    attributes.push(kv(
        "evalstream.evaluation.time_unix_nano",
        Value::IntValue(i64::try_from(end).unwrap_or(i64::MAX)),
    ));
    attributes.push(kv(
        "evalstream.evaluation.duration_ms",
        Value::DoubleValue(end.saturating_sub(start) as f64 / 1e6),
    ));
    let at = placed_in(judged);
    Span {
        trace_id: judged.trace_id().to_vec(),
        span_id: evaluation.score_id.span_id().to_vec(),
        parent_span_id: judged.span_id().to_vec(),
        name: format!(
            "evaluation {}",
            capped(evaluation.evaluator, MAX_NAME_BYTES)
        ),
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: at,
        end_time_unix_nano: at,
        events: vec![span::Event {
            time_unix_nano: at,
            name: "gen_ai.evaluation.result".into(),
            attributes: attributes
                .iter()
                .filter(|a| EVENT_KEYS.contains(&a.key.as_str()))
                .cloned()
                .collect(),
            ..Default::default()
        }],
        attributes,
        // No status, even for an errored evaluation: see the module's comment.
        status: None,
        ..Default::default()
    }
}

/// The `event_name` of evaluation log records.
pub const EVENT_NAME: &str = "gen_ai.evaluation.result";

/// The `gen_ai.evaluation.result` log record for one evaluation of `judged`, at `time` (when
/// the evaluation finished, nanoseconds since the Unix epoch). `extra` attributes (the trace's
/// completion, the judge's model and usage) follow evalstream's own. Errored evaluations are
/// records of severity WARN with `error.type`; scored ones INFO.
pub fn evaluation_event(
    judged: &GenAiSpan<'_>,
    evaluation: &Evaluation<'_>,
    time: u64,
    extra: impl IntoIterator<Item = KeyValue>,
) -> LogRecord {
    // Without `gen_ai.operation.name=evaluation`, which names an evaluator span's operation: on
    // the event it would claim the judged span's operation was an evaluation.
    let extra = extra.into_iter();
    let mut attributes = Vec::with_capacity(EVALUATION_ATTRIBUTES + extra.size_hint().0);
    push_evaluation_attributes(&mut attributes, judged, evaluation);
    attributes.extend(extra);
    let (severity_number, severity_text) = match evaluation.outcome {
        Outcome::Error { .. } => (SeverityNumber::Warn, "WARN"),
        _ => (SeverityNumber::Info, "INFO"),
    };
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: time,
        severity_number: severity_number as i32,
        severity_text: severity_text.into(),
        attributes,
        trace_id: judged.trace_id().to_vec(),
        span_id: judged.span_id().to_vec(),
        event_name: EVENT_NAME.into(),
        ..Default::default()
    }
}

/// evalstream's instrumentation scope: what made the evaluation records.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// Wraps evaluation events, grouped by the judged spans' resources, in a logs request under
/// evalstream's scope.
pub fn logs_request(
    groups: impl IntoIterator<Item = (Option<Resource>, Vec<LogRecord>)>,
) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: groups
            .into_iter()
            .map(|(resource, log_records)| ResourceLogs {
                resource,
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// The resource an evaluation output goes under: the judged span's (`None` when it had none).
pub fn judged_resource(judged: &GenAiSpan<'_>) -> Option<Resource> {
    let attributes = judged.resource().attributes;
    (!attributes.is_empty()).then(|| Resource {
        attributes: attributes.to_vec(),
        ..Default::default()
    })
}

/// Adds `items` (events or spans about `judged`) to `groups`, under the judged span's resource.
/// Spans of a trace mostly share one resource: the last group is compared before another is
/// made, so a trace's outputs make one group in the common case.
pub fn push_under_resource<T>(
    groups: &mut Vec<(Option<Resource>, Vec<T>)>,
    judged: &GenAiSpan<'_>,
    items: impl IntoIterator<Item = T>,
) {
    let attributes = judged.resource().attributes;
    let mut items = items.into_iter().peekable();
    if items.peek().is_none() {
        return;
    }
    match groups.last_mut() {
        Some((resource, group))
            if resource.as_ref().map_or(&[][..], |r| &r.attributes[..]) == attributes =>
        {
            group.extend(items);
        }
        _ => groups.push((judged_resource(judged), items.collect())),
    }
}

/// Wraps evaluator spans, grouped by the judged spans' resources, in a request under
/// evalstream's scope.
pub fn spans_request(
    groups: impl IntoIterator<Item = (Option<Resource>, Vec<Span>)>,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(resource, spans)| ResourceSpans {
                resource,
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// Wraps evaluator spans in a request under evalstream's own resource (`service.name:
/// evalstream`): for callers that no longer know the judged spans' resources. Prefer
/// [`spans_request`] with [`push_under_resource`]: under this resource a backend that routes by
/// resource may file the application's trace apart from the application (see the module's
/// comment).
pub fn export_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    let resource = Resource {
        attributes: vec![
            kv_str("service.name", "evalstream"),
            kv_str("service.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Default::default()
    };
    spans_request([(Some(resource), spans)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluator::ScoreId;
    use crate::otlp;
    use crate::scorers::testing::{chat, s, view};
    use crate::span::{GenAiSpan, OperationKind, ResourceView, spans};

    #[test]
    fn evaluator_span_is_a_child_with_the_evaluation_attributes_and_event() {
        let mut judged = chat("hi");
        judged
            .attributes
            .push(s("gen_ai.response.id", "chatcmpl-1"));
        let v = view(&judged);
        let evaluation = Evaluation {
            evaluator: "refusal",
            evaluator_type: "refusal",
            version: "1.abcd".into(),
            score_id: ScoreId::new(v.trace_id(), v.span_id(), "refusal", "1.abcd"),
            outcome: Outcome::check(false, "refused", "refusal: \"no\""),
        };
        // The evaluation ran long after the judged span ended.
        let (ran_from, ran_to) = (judged.end_time_unix_nano + 60_000_000_000, 0);
        let ran_to = ran_to + ran_from + 3_000_000;
        let out = evaluation_span(&v, &evaluation, ran_from, ran_to);
        assert_eq!(out.trace_id, judged.trace_id);
        assert_eq!(out.parent_span_id, judged.span_id);
        assert_eq!(out.span_id, evaluation.score_id.span_id().to_vec());
        assert_eq!(out.name, "evaluation refusal");
        assert_eq!(out.kind, span::SpanKind::Internal as i32);
        // Within the judged span's time range, whenever the evaluation ran; when it ran is kept.
        assert!(judged.start_time_unix_nano <= out.start_time_unix_nano);
        assert!(out.end_time_unix_nano <= judged.end_time_unix_nano);
        assert!(out.start_time_unix_nano <= out.end_time_unix_nano);
        assert_eq!(out.events[0].time_unix_nano, out.end_time_unix_nano);
        let get = |k| otlp::find(&out.attributes, k).cloned();
        assert_eq!(
            get("evalstream.evaluation.time_unix_nano").and_then(|v| match v.value {
                Some(Value::IntValue(n)) => Some(n),
                _ => None,
            }),
            Some(ran_to as i64)
        );
        assert_eq!(
            get("evalstream.evaluation.duration_ms").and_then(|v| otlp::as_f64(&v)),
            Some(3.0)
        );
        assert_eq!(
            get("openinference.span.kind")
                .as_ref()
                .and_then(otlp::as_str),
            Some("EVALUATOR")
        );
        assert_eq!(
            get("evalstream.evaluator.type")
                .as_ref()
                .and_then(otlp::as_str),
            Some("refusal")
        );
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

        // The evaluator span, read back, is an evaluator span: evaluators skip it by default. It
        // goes under the judged span's resource, evalstream naming itself in the scope.
        let resource = opentelemetry_proto::tonic::resource::v1::Resource {
            attributes: vec![
                kv_str("service.name", "support-bot"),
                kv_str("openinference.project.name", "support"),
            ],
            ..Default::default()
        };
        let judged_view = GenAiSpan::new(&judged, ResourceView::new(Some(&resource)), None);
        let mut groups = Vec::new();
        push_under_resource(&mut groups, &judged_view, [out.clone()]);
        push_under_resource(&mut groups, &judged_view, [out]);
        push_under_resource(&mut groups, &judged_view, Vec::<Span>::new());
        assert_eq!(groups.len(), 1, "one resource, one group");
        assert_eq!(groups[0].1.len(), 2);
        let request = spans_request(groups);
        let back: Vec<_> = spans(&request).collect();
        assert_eq!(back[0].kind(), OperationKind::Evaluator);
        assert_eq!(back[0].resource().service_name, Some("support-bot"));
        assert_eq!(
            back[0]
                .resource()
                .attribute("openinference.project.name")
                .and_then(otlp::as_str),
            Some("support")
        );
        assert_eq!(back[0].scope().map(|s| s.name.as_str()), Some("evalstream"));
    }

    #[test]
    fn an_evaluation_event_is_a_log_record_on_the_judged_span_under_its_resource() {
        use opentelemetry_proto::tonic::resource::v1::Resource as R;
        let mut judged = chat("hi");
        judged
            .attributes
            .push(s("gen_ai.response.id", "chatcmpl-1"));
        let v = view(&judged);
        let evaluation = Evaluation {
            evaluator: "refusal",
            evaluator_type: "refusal",
            version: "1.abcd".into(),
            score_id: ScoreId::new(v.trace_id(), v.span_id(), "refusal", "1.abcd"),
            outcome: Outcome::check(false, "refused", "refusal: \"no\""),
        };
        let record = evaluation_event(
            &v,
            &evaluation,
            42,
            [kv_str("evalstream.trace.completion", "complete")],
        );
        assert_eq!(record.event_name, "gen_ai.evaluation.result");
        assert_eq!(record.trace_id, judged.trace_id);
        assert_eq!(record.span_id, judged.span_id);
        assert_eq!(record.time_unix_nano, 42);
        assert_eq!(record.severity_number, SeverityNumber::Info as i32);
        let get = |k| otlp::find(&record.attributes, k).cloned();
        assert_eq!(
            get("gen_ai.evaluation.name")
                .as_ref()
                .and_then(otlp::as_str),
            Some("refusal")
        );
        assert_eq!(
            get("gen_ai.evaluation.score.value").and_then(|v| otlp::as_f64(&v)),
            Some(0.0)
        );
        assert_eq!(
            get("gen_ai.response.id").as_ref().and_then(otlp::as_str),
            Some("chatcmpl-1")
        );
        assert_eq!(
            get("evalstream.score.id").as_ref().and_then(otlp::as_str),
            Some(evaluation.score_id.to_hex().as_str())
        );
        assert!(get("evalstream.trace.completion").is_some());
        assert!(get("gen_ai.operation.name").is_none());

        let resource = R {
            attributes: vec![kv_str("service.name", "my-app")],
            ..Default::default()
        };
        let request = logs_request([(Some(resource.clone()), vec![record])]);
        assert_eq!(request.resource_logs[0].resource, Some(resource));
        let scope = request.resource_logs[0].scope_logs[0]
            .scope
            .as_ref()
            .unwrap();
        assert_eq!(scope.name, "evalstream");

        let errored = Evaluation {
            outcome: Outcome::Error {
                error_type: "timeout".into(),
                message: "judge timed out".into(),
            },
            ..evaluation
        };
        let record = evaluation_event(&v, &errored, 1, []);
        assert_eq!(record.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(
            otlp::find(&record.attributes, "error.type").and_then(otlp::as_str),
            Some("timeout")
        );
    }

    #[test]
    fn errors_set_error_type_but_no_error_status_and_skips_emit_nothing() {
        let judged = chat("hi");
        let v = view(&judged);
        let mut evaluation = Evaluation {
            evaluator: "x",
            evaluator_type: "llm_judge",
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
        // An errored evaluation is not the application's error: no ERROR status in its trace.
        assert_eq!(out.status, None);
        assert_eq!(
            otlp::find(&out.attributes, "evalstream.evaluation.outcome").and_then(otlp::as_str),
            Some("error")
        );
        assert!(emits_span(&evaluation));
        evaluation.outcome = Outcome::no_content();
        assert!(!emits_span(&evaluation));
    }
    #[test]
    fn a_huge_response_id_is_capped_on_the_evaluator_span() {
        use prost::Message as _;
        let huge_id = "r".repeat(5_000_000);
        let huge_explanation = "é".repeat(1_000_000);
        let mut judged = chat("hi");
        judged.attributes.push(s("gen_ai.response.id", &huge_id));
        let v = view(&judged);
        let evaluation = Evaluation {
            evaluator: "script",
            evaluator_type: "script",
            version: "1".into(),
            score_id: ScoreId([1; 16]),
            outcome: Outcome::check(false, "x".repeat(10_000), huge_explanation),
        };
        let out = evaluation_span(&v, &evaluation, 1, 2);
        let get = |attrs: &[KeyValue], k| {
            otlp::find(attrs, k)
                .and_then(otlp::as_str)
                .map(str::to_owned)
        };
        for attrs in [&out.attributes, &out.events[0].attributes] {
            let id = get(attrs, "gen_ai.response.id").unwrap();
            assert!(
                id.len() <= MAX_NAME_BYTES && id.ends_with('…'),
                "{}",
                id.len()
            );
            assert!(id.starts_with("rrrr"));
            let why = get(attrs, "gen_ai.evaluation.explanation").unwrap();
            assert!(why.len() <= MAX_EXPLANATION_BYTES && why.ends_with('…'));
            let label = get(attrs, "gen_ai.evaluation.score.label").unwrap();
            assert!(label.len() <= MAX_NAME_BYTES);
        }
        // The whole encoded evaluator span stays small: a few kilobytes, not megabytes.
        let encoded = export_request(vec![out]).encode_to_vec().len();
        assert!(encoded < 4 * 1024, "{encoded} bytes");
    }

    #[test]
    fn capped_cuts_on_a_character_boundary_and_keeps_short_values() {
        assert_eq!(capped("chatcmpl-1", 256), "chatcmpl-1");
        assert_eq!(capped("abcdef", 6), "abcdef");
        assert_eq!(capped("abcdefg", 6), "abc…");
        // `é` is two bytes: 7 - 3 = 4 bytes left for two of them.
        assert_eq!(capped("éééééé", 7), "éé…");
        assert_eq!(capped("éééééé", 8), "éé…");
    }
}
