//! Property tests: no input, however malformed, makes decoding, the span view or an evaluator
//! panic. Bytes are arbitrary; OTLP/JSON is generated with the attribute keys of every convention
//! and values of every type (including JSON that is valid but of the wrong shape).

#![allow(clippy::unwrap_used)]

use evalstream_evaluators::evaluator::Evaluation;
use evalstream_evaluators::otlp::{self, Encoding};
use evalstream_evaluators::span::{self, GenAiSpan};
use evalstream_evaluators::spec::{self, EvaluatorSpec};
use proptest::prelude::*;
use prost::Message as _;
use serde_json::{Value, json};

fn all_evaluators() -> evalstream_evaluators::evaluator::EvaluatorSet {
    let extra: Vec<EvaluatorSpec> = serde_json::from_value(json!([
        {"type": "regex", "pattern": "(?i)sorry"},
        {"type": "contains", "values": ["a", "ü"], "mode": "all", "on": "input"},
        {"type": "not_contains", "values": ["x"], "on": "last_user_message"},
        {"type": "length", "unit": "words", "min": 1, "max": 50},
        {"type": "length", "name": "tokens", "unit": "tokens", "max": 5},
        {"type": "latency", "max_seconds": 1},
        {"type": "pii", "name": "pii_in", "on": "input"},
        {"type": "cost", "name": "cost_all", "select": {"kinds": ["chat", "embeddings", "other", "tool", "agent", "retrieval", "evaluator", "guardrail"]}}
    ]))
    .expect("specs parse");
    let mut specs = spec::default_specs();
    specs.extend(extra);
    spec::build_set(&specs).expect("specs build")
}

/// Touches every accessor of the view and runs every evaluator.
fn exercise(set: &evalstream_evaluators::evaluator::EvaluatorSet, s: &GenAiSpan<'_>) -> usize {
    let mut touched = 0;
    touched += s.finish_reasons().len();
    touched += s.input_messages().len() + s.output_messages().len();
    touched += s.system_instructions().len() + s.tool_definitions().len() + s.documents().len();
    touched += s.tool_calls().count();
    touched += s.output_text().map_or(0, |t| t.len()) + s.input_text().map_or(0, |t| t.len());
    touched += s.last_user_text().map_or(0, |t| t.len());
    touched += usize::from(s.tool_arguments().is_some()) + usize::from(s.tool_result().is_some());
    touched += usize::from(s.tool_schema().is_some()) + usize::from(s.retrieval_query().is_some());
    touched += usize::from(s.error().is_some()) + usize::from(s.model().is_some());
    let _ = (
        s.json_request(),
        s.usage(),
        s.status(),
        s.duration(),
        s.kind(),
    );
    let mut evaluations: Vec<Evaluation<'_>> = Vec::new();
    set.evaluate(s, &mut evaluations);
    touched + evaluations.len()
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[ -~]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "text",
            "tool_call",
            "assistant",
            "user",
            "system",
            "tool",
            "json_object",
            "stop",
            "length",
            "I'm sorry, I can't help"
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "role",
                        "parts",
                        "type",
                        "content",
                        "name",
                        "arguments",
                        "id",
                        "response",
                        "function",
                        "parameters",
                        "finish_reason",
                        "tool_calls",
                        "choices",
                        "message",
                        "messages",
                        "response_format",
                        "json_schema",
                        "schema",
                        "score",
                        "text"
                    ]),
                    inner,
                ),
                0..5
            )
            .prop_map(|kvs| Value::Object(
                kvs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

/// An OTLP/JSON AnyValue.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        "\\PC{0,30}".prop_map(|s| json!({"stringValue": s})),
        json_value().prop_map(|v| json!({"stringValue": v.to_string()})),
        any::<i64>().prop_map(|i| json!({"intValue": i.to_string()})),
        any::<i64>().prop_map(|i| json!({"intValue": i})),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|d| json!({"doubleValue": d})),
        any::<bool>().prop_map(|b| json!({"boolValue": b})),
        Just(json!({})),
    ];
    leaf.prop_recursive(3, 20, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|vs| json!({"arrayValue": {"values": vs}})),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4).prop_map(|kvs| {
                let values: Vec<Value> = kvs
                    .into_iter()
                    .map(|(k, v)| json!({"key": k, "value": v}))
                    .collect();
                json!({"kvlistValue": {"values": values}})
            }),
        ]
    })
}

fn attribute_key() -> impl Strategy<Value = String> {
    let known = span::known_attribute_keys();
    prop_oneof![
        4 => prop::sample::select(known.clone()),
        2 => (prop::sample::select(known), 0u32..5, any::<bool>()).prop_map(|(k, n, huge)| {
            // Vary list indices, sometimes to values that must not be used to size anything.
            let n = if huge { u32::MAX - n } else { n };
            k.replacen(".0.", &format!(".{n}."), 1)
        }),
        1 => "[a-z_.0-9]{0,24}",
    ]
}

fn attribute() -> BoxedStrategy<Value> {
    (attribute_key(), any_value())
        .prop_map(|(k, v)| json!({"key": k, "value": v}))
        .boxed()
}

fn request() -> impl Strategy<Value = Value> {
    let event = ("(gen_ai\\.(user|system|assistant|tool)\\.message|gen_ai\\.choice|gen_ai\\.content\\.(prompt|completion)|exception)", prop::collection::vec(attribute(), 0..4))
        .prop_map(|(name, attributes)| json!({"name": name, "attributes": attributes}));
    let span = (
        prop::collection::vec(attribute(), 0..25),
        prop::collection::vec(event, 0..3),
        any::<u64>(),
        any::<u64>(),
        0i32..8,
        0i32..4,
    )
        .prop_map(|(attributes, events, start, end, kind, code)| {
            json!({
                "traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "1112131415161718",
                "name": "s", "kind": kind, "startTimeUnixNano": start.to_string(), "endTimeUnixNano": end,
                "attributes": attributes, "events": events, "status": {"code": code, "message": "m"}
            })
        });
    (prop::collection::vec(attribute(), 0..4), prop::collection::vec(span, 1..6)).prop_map(|(resource, spans)| {
        json!({"resourceSpans": [{"resource": {"attributes": resource}, "scopeSpans": [{"spans": spans}]}]})
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = otlp::decode(&bytes, Encoding::OtlpProto);
        let _ = otlp::decode(&bytes, Encoding::OtlpJson);
        let _ = otlp::decode_json_stream(&bytes);
        let _ = Encoding::sniff(&bytes);
    }

    #[test]
    fn generated_otlp_json_never_panics_the_view_or_evaluators(request in request()) {
        let set = all_evaluators();
        let text = request.to_string();
        let decoded = otlp::decode(text.as_bytes(), Encoding::OtlpJson);
        prop_assert!(decoded.is_ok(), "well-formed OTLP/JSON must decode: {:?}", decoded.err());
        let decoded = decoded.unwrap();
        // The same request through protobuf decodes identically.
        let again = otlp::decode(&decoded.encode_to_vec(), Encoding::OtlpProto).unwrap();
        prop_assert_eq!(&again, &decoded);
        for s in span::spans(&decoded) {
            exercise(&set, &s);
        }
    }

    #[test]
    fn corrupted_corpus_messages_never_panic(positions in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let set = all_evaluators();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/corpus/openinference.pb");
        let mut bytes = std::fs::read(path).unwrap();
        for (i, b) in positions {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        if let Ok(request) = otlp::decode(&bytes, Encoding::OtlpProto) {
            for s in span::spans(&request) {
                exercise(&set, &s);
            }
        }
    }
}
