//! GenAI content carried by log events, and how it joins its span.
//!
//! The official OpenTelemetry GenAI instrumentations can write prompts and answers as log records
//! instead of span attributes (`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=event_only`, or
//! `span_and_event`): the event `gen_ai.client.inference.operation.details` carries
//! `gen_ai.input.messages`, `gen_ai.output.messages` and `gen_ai.system_instructions`, on the
//! operation's span context. Older instrumentations emit one event per message
//! (`gen_ai.user.message`, `gen_ai.choice`, …) with the message in the log body. The event name is
//! `LogRecord.event_name` (newer SDKs) or the attribute `event.name` (older).
//!
//! A span is read as if it had carried its events' content ([`ContentEvent::attach_to`]): the
//! details event's attributes become the span's attributes (only those the span lacks, so
//! `span_and_event` content is not doubled), and a per-message event becomes a span event of the
//! same name whose attributes are the log body's entries — the shape the deprecated span events
//! had, which the span view already reads. So one reading of content serves spans, span events and
//! log events alike, and evaluators see joined content without knowing where it came from.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span, span};
use prost::Message as _;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::otlp::{self, DecodeError, Encoding};
use crate::span::conventions::{CHOICE_EVENT, MESSAGE_EVENTS};
use crate::span::{GenAiSpan, OperationKind};

/// The event of the current GenAI conventions that carries a whole operation's content.
pub const DETAILS_EVENT: &str = "gen_ai.client.inference.operation.details";

/// The content attributes a [`DETAILS_EVENT`] carries, which become the span's.
const DETAILS_KEYS: [&str; 4] = [
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.tool.definitions",
];

/// One content event, for the span it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentEvent {
    /// The log record's trace id (may be empty: the join is by span id).
    pub trace_id: Vec<u8>,
    /// The span it belongs to: the log record's span id (8 bytes).
    pub span_id: Vec<u8>,
    /// What it adds to the span.
    pub content: EventContent,
}

/// What a content event adds to its span.
#[derive(Debug, Clone, PartialEq)]
pub enum EventContent {
    /// Content attributes (from a [`DETAILS_EVENT`]).
    Attributes(Vec<KeyValue>),
    /// One message, as the deprecated span event of the same name.
    Event(span::Event),
}

impl ContentEvent {
    /// Its size encoded, for memory limits of whoever keeps it waiting for its span.
    pub fn bytes(&self) -> usize {
        let content = match &self.content {
            EventContent::Attributes(kvs) => kvs.iter().map(|kv| kv.encoded_len()).sum(),
            EventContent::Event(event) => event.encoded_len(),
        };
        content + self.trace_id.len() + self.span_id.len()
    }

    /// Adds the content to `span`, as if the instrumentation had put it there.
    pub fn attach_to(self, span: &mut Span) {
        match self.content {
            EventContent::Attributes(kvs) => {
                for kv in kvs {
                    if otlp::find(&span.attributes, &kv.key).is_none() {
                        span.attributes.push(kv);
                    }
                }
            }
            EventContent::Event(event) => span.events.push(event),
        }
    }
}

/// The content events of a logs request.
#[derive(Debug, Default)]
pub struct Extracted {
    /// Content events with a valid span id, in request order.
    pub events: Vec<ContentEvent>,
    /// Content events without a valid span id: they cannot be joined to anything.
    pub without_span: usize,
}

/// The content events of `request`; other log records are not looked at further.
pub fn content_events(request: &ExportLogsServiceRequest) -> Extracted {
    let mut out = Extracted::default();
    let records = request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records);
    for record in records {
        let Some(content) = content_of(record) else {
            continue;
        };
        if record.span_id.len() != 8 {
            out.without_span += 1;
            continue;
        }
        out.events.push(ContentEvent {
            trace_id: record.trace_id.clone(),
            span_id: record.span_id.clone(),
            content,
        });
    }
    out
}

/// A log record's event name: `event_name`, else the older `event.name` attribute.
pub fn event_name(record: &LogRecord) -> Option<&str> {
    if !record.event_name.is_empty() {
        return Some(&record.event_name);
    }
    otlp::find(&record.attributes, "event.name").and_then(otlp::as_str)
}

/// What a content event adds to its span; `None` for other log records.
fn content_of(record: &LogRecord) -> Option<EventContent> {
    let name = event_name(record)?;
    let body = match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Value::KvlistValue(list)) => list.values.clone(),
        Some(Value::StringValue(text)) => vec![otlp::kv_str("content", text.clone())],
        _ => Vec::new(),
    };
    // The body first: it is where per-message events put the message; attributes add the rest.
    let fields = body.into_iter().chain(
        record
            .attributes
            .iter()
            .filter(|kv| kv.key != "event.name")
            .cloned(),
    );
    if name == DETAILS_EVENT {
        let kvs: Vec<KeyValue> = fields
            .filter(|kv| DETAILS_KEYS.contains(&kv.key.as_str()))
            .collect();
        return Some(EventContent::Attributes(kvs));
    }
    if name != CHOICE_EVENT && !MESSAGE_EVENTS.iter().any(|(n, _)| *n == name) {
        return None;
    }
    let time = if record.time_unix_nano != 0 {
        record.time_unix_nano
    } else {
        record.observed_time_unix_nano
    };
    Some(EventContent::Event(span::Event {
        time_unix_nano: time,
        name: name.to_owned(),
        attributes: fields.collect(),
        dropped_attributes_count: 0,
    }))
}

/// Whether a span would be judged without content its log events may bring: a model call that
/// carries neither input nor output. Only such spans wait for log events.
pub fn awaits_content(span: &GenAiSpan<'_>) -> bool {
    span.kind() == OperationKind::Chat && !span.input_captured() && !span.output_captured()
}

/// Attaches to each span of `request` the events `take` gives for its span id. Returns how many
/// events were attached.
pub fn attach(
    request: &mut ExportTraceServiceRequest,
    mut take: impl FnMut(&[u8]) -> Option<Vec<ContentEvent>>,
) -> usize {
    let mut attached = 0;
    let spans = request
        .resource_spans
        .iter_mut()
        .flat_map(|r| &mut r.scope_spans)
        .flat_map(|s| &mut s.spans);
    for span in spans {
        for event in take(&span.span_id).unwrap_or_default() {
            event.attach_to(span);
            attached += 1;
        }
    }
    attached
}

/// Content events by span id, in arrival order: the join when every input is at hand (`eval`).
pub fn by_span(events: Vec<ContentEvent>) -> HashMap<Vec<u8>, Vec<ContentEvent>> {
    let mut map: HashMap<Vec<u8>, Vec<ContentEvent>> = HashMap::new();
    for event in events {
        map.entry(event.span_id.clone()).or_default().push(event);
    }
    map
}

/// Which OTLP signal an input holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// An `ExportTraceServiceRequest`.
    Traces,
    /// An `ExportLogsServiceRequest`.
    Logs,
}

/// Tells logs from traces by content, for inputs whose origin does not say (files).
///
/// OTLP/JSON: the first request's top-level key — `resourceLogs` without `resourceSpans` is logs.
/// Protobuf: both requests are field 1, repeated, so the first entry of field 1 that decodes as
/// a `ResourceSpans` with a span is traces, and one that decodes as a `ResourceLogs` with a
/// record is logs. They cannot be confused: a span starts with its trace id (bytes) where a log
/// record has its times (fixed64, always set by SDKs), a wire-type clash prost rejects. Anything
/// undecided is traces, so malformed input is reported as it was before logs were read.
pub fn signal(bytes: &[u8], encoding: Encoding) -> Signal {
    match encoding {
        Encoding::OtlpJson => json_signal(bytes),
        Encoding::OtlpProto => proto_signal(bytes),
    }
}

fn json_signal(bytes: &[u8]) -> Signal {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "resourceLogs", alias = "resource_logs", default)]
        logs: Option<IgnoredAny>,
        #[serde(rename = "resourceSpans", alias = "resource_spans", default)]
        spans: Option<IgnoredAny>,
    }
    let first = serde_json::Deserializer::from_slice(bytes)
        .into_iter::<Peek>()
        .next();
    match first {
        Some(Ok(Peek {
            logs: Some(_),
            spans: None,
        })) => Signal::Logs,
        _ => Signal::Traces,
    }
}

fn proto_signal(mut bytes: &[u8]) -> Signal {
    use prost::encoding::{WireType, decode_key, decode_varint};
    while !bytes.is_empty() {
        let Ok((tag, WireType::LengthDelimited)) = decode_key(&mut bytes) else {
            break;
        };
        let Ok(len) = decode_varint(&mut bytes) else {
            break;
        };
        let Some((entry, rest)) = usize::try_from(len)
            .ok()
            .filter(|&l| l <= bytes.len())
            .map(|l| bytes.split_at(l))
        else {
            break;
        };
        if tag == 1 {
            if ResourceSpans::decode(entry)
                .is_ok_and(|r| r.scope_spans.iter().any(|s| !s.spans.is_empty()))
            {
                return Signal::Traces;
            }
            if ResourceLogs::decode(entry)
                .is_ok_and(|r| r.scope_logs.iter().any(|s| !s.log_records.is_empty()))
            {
                return Signal::Logs;
            }
        }
        bytes = rest;
    }
    Signal::Traces
}

/// Decodes an `ExportLogsServiceRequest` (several, one after another, for OTLP/JSON streams).
pub fn decode_logs(
    bytes: &[u8],
    encoding: Encoding,
) -> Result<Vec<ExportLogsServiceRequest>, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty(encoding));
    }
    match encoding {
        Encoding::OtlpProto => Ok(vec![ExportLogsServiceRequest::decode(bytes)?]),
        Encoding::OtlpJson => {
            let requests = serde_json::Deserializer::from_slice(bytes)
                .into_iter::<ExportLogsServiceRequest>()
                .collect::<Result<Vec<_>, _>>()?;
            if requests.is_empty() {
                return Err(DecodeError::Empty(encoding));
            }
            Ok(requests)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValueList};
    use opentelemetry_proto::tonic::logs::v1::ScopeLogs;
    use opentelemetry_proto::tonic::trace::v1::ScopeSpans;

    fn kvlist(entries: Vec<KeyValue>) -> AnyValue {
        AnyValue {
            value: Some(Value::KvlistValue(KeyValueList { values: entries })),
        }
    }

    fn record(name: &str, body: Option<AnyValue>, attributes: Vec<KeyValue>) -> LogRecord {
        LogRecord {
            time_unix_nano: 1,
            event_name: name.into(),
            body,
            attributes,
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            ..Default::default()
        }
    }

    fn logs(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn traces(span: Span) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn chat_span() -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "chat gpt-4o".into(),
            attributes: vec![otlp::kv_str("gen_ai.operation.name", "chat")],
            ..Default::default()
        }
    }

    #[test]
    fn a_details_event_gives_its_span_content() {
        let details = record(
            DETAILS_EVENT,
            None,
            vec![
                otlp::kv_str(
                    "gen_ai.input.messages",
                    r#"[{"role":"user","parts":[{"type":"text","content":"hi"}]}]"#,
                ),
                otlp::kv_str(
                    "gen_ai.output.messages",
                    r#"[{"role":"assistant","parts":[{"type":"text","content":"I can't help with that."}]}]"#,
                ),
                otlp::kv_str("gen_ai.provider.name", "openai"),
            ],
        );
        let extracted = content_events(&logs(vec![details, record("other", None, vec![])]));
        assert_eq!(extracted.events.len(), 1);
        let mut request = traces(chat_span());
        let before = span::spans(&request).next().map(|s| awaits_content(&s));
        assert_eq!(before, Some(true));
        let mut events = by_span(extracted.events);
        assert_eq!(attach(&mut request, |id| events.remove(id)), 1);
        let view = span::spans(&request).next().unwrap();
        assert!(!awaits_content(&view));
        assert_eq!(view.input_text().as_deref(), Some("hi"));
        assert_eq!(
            view.output_text().as_deref(),
            Some("I can't help with that.")
        );
        // Only content attributes are taken.
        assert!(view.attribute("gen_ai.provider.name").is_none());
    }

    #[test]
    fn per_message_events_read_as_the_deprecated_span_events() {
        let user = record(
            "",
            Some(kvlist(vec![otlp::kv_str("content", "What is 2+2?")])),
            vec![otlp::kv_str("event.name", "gen_ai.user.message")],
        );
        let choice = record(
            "gen_ai.choice",
            Some(kvlist(vec![
                otlp::kv("index", Value::IntValue(0)),
                otlp::kv_str("finish_reason", "stop"),
                otlp::kv(
                    "message",
                    kvlist(vec![
                        otlp::kv_str("content", "4"),
                        otlp::kv_str("role", "assistant"),
                    ])
                    .value
                    .unwrap(),
                ),
            ])),
            vec![],
        );
        let extracted = content_events(&logs(vec![user, choice]));
        let mut request = traces(chat_span());
        let mut events = by_span(extracted.events);
        attach(&mut request, |id| events.remove(id));
        let view = span::spans(&request).next().unwrap();
        assert_eq!(view.input_messages()[0].role, "user");
        assert_eq!(view.input_text().as_deref(), Some("What is 2+2?"));
        assert_eq!(view.output_text().as_deref(), Some("4"));
    }

    #[test]
    fn span_content_is_not_doubled_and_events_without_span_are_counted() {
        let mut span = chat_span();
        span.attributes
            .push(otlp::kv_str("gen_ai.input.messages", "[]"));
        let mut details = record(
            DETAILS_EVENT,
            None,
            vec![otlp::kv_str("gen_ai.input.messages", "[]")],
        );
        let event = content_events(&logs(vec![details.clone()]))
            .events
            .remove(0);
        event.attach_to(&mut span);
        assert_eq!(span.attributes.len(), 2);
        details.span_id.clear();
        let extracted = content_events(&logs(vec![details]));
        assert!(extracted.events.is_empty());
        assert_eq!(extracted.without_span, 1);
    }

    #[test]
    fn signals_are_told_by_content() {
        let l = logs(vec![record(DETAILS_EVENT, None, vec![])]);
        let t = traces(chat_span());
        assert_eq!(
            signal(&l.encode_to_vec(), Encoding::OtlpProto),
            Signal::Logs
        );
        assert_eq!(
            signal(&t.encode_to_vec(), Encoding::OtlpProto),
            Signal::Traces
        );
        let lj = serde_json::to_vec(&l).unwrap();
        let tj = serde_json::to_vec(&t).unwrap();
        assert_eq!(signal(&lj, Encoding::OtlpJson), Signal::Logs);
        assert_eq!(signal(&tj, Encoding::OtlpJson), Signal::Traces);
        assert_eq!(signal(b"garbage", Encoding::OtlpProto), Signal::Traces);
        assert_eq!(
            decode_logs(&lj, Encoding::OtlpJson).unwrap(),
            vec![l.clone()]
        );
        assert_eq!(
            decode_logs(&l.encode_to_vec(), Encoding::OtlpProto).unwrap(),
            vec![l]
        );
    }
}
