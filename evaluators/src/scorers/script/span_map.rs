//! The span as a script sees it: a read-only Rhai map with the canonical fields.
//!
//! Building every field for every call would copy the whole span (its messages, documents and
//! attributes) into Rhai values each time. Instead the fields a script can read are found in its
//! source once, at compile time ([`Fields::used_by`]: identifiers that name a field), and each call
//! builds only those. A script that never mentions `documents` never pays for them. The map is a
//! copy: a script changing it changes nothing outside the call.

use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
use rhai::{Array, Dynamic, ImmutableString, Map};

use crate::pricing::PriceTable;
use crate::span::GenAiSpan;
use crate::trace::TraceView;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

/// The fields of the span map, in bit order.
const FIELDS: [&str; 26] = [
    "kind",
    "name",
    "model",
    "provider",
    "input",
    "output",
    "messages",
    "output_messages",
    "tool_calls",
    "usage",
    "cost_usd",
    "latency_seconds",
    "status",
    "error",
    "documents",
    "attributes",
    "resource",
    "prompt_version",
    "service",
    "trace_id",
    "span_id",
    "is_root",
    "finish_reasons",
    "user_id",
    "session_id",
    // Last: `trace_bit` is its bit.
    "trace",
];

/// The set of fields a script reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields(u32);

impl Fields {
    /// The fields named anywhere in `source` (as identifiers: `span.output`, `s["usage"]` as a
    /// string is missed, so strings are scanned too, which over-approximates harmlessly).
    pub fn used_by(source: &str) -> Fields {
        let mut bits = 0;
        for word in source.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(i) = FIELDS.iter().position(|f| *f == word) {
                bits |= 1 << i;
            }
        }
        Fields(bits)
    }

    fn has(self, field: &str) -> bool {
        FIELDS
            .iter()
            .position(|f| *f == field)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// Whether the trace is read (`span.trace`).
    pub fn reads_trace(self) -> bool {
        self.has("trace")
    }
}

fn text(s: impl AsRef<str>) -> Dynamic {
    Dynamic::from(ImmutableString::from(s.as_ref()))
}

fn opt_text(s: Option<impl AsRef<str>>) -> Dynamic {
    s.map_or(Dynamic::UNIT, text)
}

fn opt_int(n: Option<u64>) -> Dynamic {
    n.map_or(Dynamic::UNIT, |n| {
        Dynamic::from(i64::try_from(n).unwrap_or(i64::MAX))
    })
}

/// An OTLP value as a Rhai value (bytes as a blob).
pub fn any_value(value: &AnyValue) -> Dynamic {
    match &value.value {
        Some(Value::StringValue(s)) => text(s),
        Some(Value::BoolValue(b)) => Dynamic::from(*b),
        Some(Value::IntValue(i)) => Dynamic::from(*i),
        Some(Value::DoubleValue(d)) => Dynamic::from(*d),
        Some(Value::ArrayValue(a)) => {
            Dynamic::from(a.values.iter().map(any_value).collect::<Array>())
        }
        Some(Value::KvlistValue(kv)) => Dynamic::from(
            kv.values
                .iter()
                .map(|kv| {
                    let v = kv.value.as_ref().map_or(Dynamic::UNIT, any_value);
                    (kv.key.as_str().into(), v)
                })
                .collect::<Map>(),
        ),
        // A blob (indexable and iterable as integers, like an array), one byte a byte: an array
        // of integers took 16 bytes a byte, so a span's bytes attribute was amplified 16 times.
        Some(Value::BytesValue(b)) => Dynamic::from_blob(b.clone()),
        _ => Dynamic::UNIT,
    }
}

fn attributes(list: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> Dynamic {
    Dynamic::from(
        list.iter()
            .map(|kv| {
                let v = kv.value.as_ref().map_or(Dynamic::UNIT, any_value);
                (kv.key.as_str().into(), v)
            })
            .collect::<Map>(),
    )
}

fn messages(list: &[crate::span::Message<'_>]) -> Dynamic {
    Dynamic::from(
        list.iter()
            .map(|m| {
                let mut map = Map::new();
                map.insert("role".into(), text(&m.role));
                map.insert(
                    "content".into(),
                    text(m.texts().collect::<Vec<_>>().join("\n")),
                );
                map.insert("name".into(), opt_text(m.name.as_deref()));
                Dynamic::from(map)
            })
            .collect::<Array>(),
    )
}

/// Builds the map of `fields` for `span` (with `trace` when the script reads it and it is at
/// hand; the trace's spans are maps of the same fields, without their own `trace`).
pub fn span_map(
    span: &GenAiSpan<'_>,
    trace: Option<&TraceView<'_>>,
    fields: Fields,
    prices: &PriceTable,
) -> Map {
    let mut map = Map::new();
    let mut put = |key: &str, value: Dynamic| {
        map.insert(key.into(), value);
    };
    let f = |name| fields.has(name);
    if f("kind") {
        put("kind", text(span.kind().as_str()));
    }
    if f("name") {
        put("name", text(span.name()));
    }
    if f("model") {
        put("model", opt_text(span.model()));
    }
    if f("provider") {
        put("provider", opt_text(span.provider()));
    }
    if f("input") {
        put("input", opt_text(span.input_text()));
    }
    if f("output") {
        put("output", opt_text(span.output_text()));
    }
    if f("messages") {
        put("messages", messages(span.input_messages()));
    }
    if f("output_messages") {
        put("output_messages", messages(span.output_messages()));
    }
    if f("tool_calls") {
        let calls: Array = span
            .tool_calls()
            .map(|c| {
                let mut m = Map::new();
                m.insert("name".into(), text(&c.name));
                m.insert("arguments".into(), opt_text(c.arguments.as_deref()));
                m.insert("id".into(), opt_text(c.id.as_deref()));
                Dynamic::from(m)
            })
            .collect();
        put("tool_calls", Dynamic::from(calls));
    }
    let usage = span.usage();
    if f("usage") {
        let mut m = Map::new();
        m.insert("input".into(), opt_int(usage.input));
        m.insert("output".into(), opt_int(usage.output));
        m.insert(
            "total".into(),
            opt_int(
                usage
                    .total
                    .or_else(|| Some(usage.input?.saturating_add(usage.output?))),
            ),
        );
        m.insert("cache_read".into(), opt_int(usage.cache_read));
        m.insert("cache_write".into(), opt_int(usage.cache_write));
        m.insert("reasoning".into(), opt_int(usage.reasoning));
        put("usage", Dynamic::from(m));
    }
    if f("cost_usd") {
        let cost = span
            .model()
            .and_then(|model| prices.lookup(model))
            .and_then(|(_, price)| PriceTable::cost(price, &usage));
        put(
            "cost_usd",
            cost.map_or(Dynamic::UNIT, |c| Dynamic::from(c.total_usd)),
        );
    }
    if f("latency_seconds") {
        put(
            "latency_seconds",
            Dynamic::from(span.duration().as_secs_f64()),
        );
    }
    if f("status") {
        let status = match span.status().code {
            StatusCode::Ok => "ok",
            StatusCode::Error => "error",
            StatusCode::Unset => "unset",
        };
        put("status", text(status));
    }
    if f("error") {
        put("error", opt_text(span.error()));
    }
    if f("finish_reasons") {
        let reasons: Array = span
            .finish_reasons()
            .iter()
            .map(|r| text(r.as_str()))
            .collect();
        put("finish_reasons", Dynamic::from(reasons));
    }
    if f("documents") {
        let documents = match trace {
            Some(t) => t.documents_before(span),
            None => span.documents().iter().collect(),
        };
        let docs: Array = documents
            .iter()
            .map(|d| {
                let mut m = Map::new();
                m.insert("id".into(), opt_text(d.id.as_deref()));
                m.insert("content".into(), opt_text(d.content.as_deref()));
                m.insert("score".into(), d.score.map_or(Dynamic::UNIT, Dynamic::from));
                Dynamic::from(m)
            })
            .collect();
        put("documents", Dynamic::from(docs));
    }
    if f("attributes") {
        put("attributes", attributes(&span.raw().attributes));
    }
    if f("resource") {
        put("resource", attributes(span.resource().attributes));
    }
    if f("prompt_version") {
        put("prompt_version", opt_text(span.prompt_version()));
    }
    if f("service") {
        put("service", opt_text(span.resource().service_name));
    }
    if f("trace_id") {
        put("trace_id", text(crate::otlp::hex(span.trace_id())));
    }
    if f("span_id") {
        put("span_id", text(crate::otlp::hex(span.span_id())));
    }
    if f("is_root") {
        put("is_root", Dynamic::from(span.parent_span_id().is_empty()));
    }
    if f("user_id") {
        put("user_id", opt_text(span.user_id()));
    }
    if f("session_id") {
        put("session_id", opt_text(span.session_id()));
    }
    if f("trace") {
        let spans: Array = trace.map_or_else(Array::new, |t| {
            t.spans()
                .iter()
                .map(|s| Dynamic::from(span_map(s, None, Fields(fields.0 & !trace_bit()), prices)))
                .collect()
        });
        put("trace", Dynamic::from(spans));
    }
    map
}

fn trace_bit() -> u32 {
    1 << (FIELDS.len() - 1)
}
