//! Decoding OTLP trace requests in the encodings the OpenTelemetry Collector's Kafka exporter
//! writes, and small helpers for reading OTLP attribute values.
//!
//! The message types and their OTLP/JSON mapping (hex ids, lowerCamelCase keys, 64-bit integers
//! as strings or numbers, enums as integers) come from the `opentelemetry-proto` crate; this module
//! only chooses the decoder and turns every failure into a [`DecodeError`] value. Nothing here
//! panics on malformed input: that is what lets a worker send a bad Kafka message to a
//! dead-letter topic instead of crashing.

use std::fmt;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use prost::Message;
use serde::{Deserialize, Serialize};

/// Re-exports of the OTLP types evaluators and the worker exchange, so downstream crates use the
/// same `opentelemetry-proto` version as this one.
pub mod types {
    pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    pub use opentelemetry_proto::tonic::common::v1::{
        AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
    };
    pub use opentelemetry_proto::tonic::resource::v1::Resource;
    pub use opentelemetry_proto::tonic::trace::v1::{
        ResourceSpans, ScopeSpans, Span, Status, span, status,
    };
}

/// How a Kafka message (or a file) encodes an `ExportTraceServiceRequest`, named as the
/// collector's Kafka exporter names its `encoding` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Protobuf bytes of `ExportTraceServiceRequest` (the collector's default).
    #[default]
    OtlpProto,
    /// OTLP/JSON.
    OtlpJson,
}

impl Encoding {
    /// The encoding's name as it appears in collector and evalstream configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::OtlpProto => "otlp_proto",
            Encoding::OtlpJson => "otlp_json",
        }
    }

    /// Guesses the encoding of bytes whose origin does not say: OTLP/JSON starts with `{` (after
    /// optional whitespace and a UTF-8 byte order mark); a protobuf `ExportTraceServiceRequest`
    /// starts with the tag of field 1 (`0x0a`), never with `{`.
    pub fn sniff(bytes: &[u8]) -> Encoding {
        let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Encoding::OtlpJson,
            _ => Encoding::OtlpProto,
        }
    }
}

impl std::str::FromStr for Encoding {
    type Err = String;

    fn from_str(s: &str) -> Result<Encoding, String> {
        match s {
            "otlp_proto" => Ok(Encoding::OtlpProto),
            "otlp_json" => Ok(Encoding::OtlpJson),
            _ => Err(format!(
                "unknown encoding `{s}`, expected otlp_proto or otlp_json"
            )),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why bytes could not be decoded as an `ExportTraceServiceRequest`.
///
/// The message names the encoding and, for JSON, the line and column, so it can go straight into a
/// dead-letter header or an error line. It never quotes the input: a span's attributes may hold
/// personal data, and dead-letter headers and logs are read by more people than the traces.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a valid protobuf `ExportTraceServiceRequest`. prost's messages are
    /// structural (a wire type, a tag, the field path, "not UTF-8"), never a field's value.
    #[error("invalid otlp_proto message: {0}")]
    Proto(#[from] prost::DecodeError),
    /// The bytes are not valid OTLP/JSON.
    #[error("invalid otlp_json message: {0}")]
    Json(JsonError),
    /// The message is empty: the collector never writes an empty record.
    #[error("empty message: expected an {0} ExportTraceServiceRequest")]
    Empty(Encoding),
    /// A span's trace or span id is not the length OTLP requires.
    #[error(
        "invalid {field} of {len} bytes in span {span_index} of resource_spans[{resource_index}]: OTLP requires {expected}"
    )]
    BadId {
        /// `trace_id` or `span_id`.
        field: &'static str,
        /// The length found.
        len: usize,
        /// What OTLP requires (16 or 8 bytes).
        expected: &'static str,
        /// Index of the `ResourceSpans` holding the span.
        resource_index: usize,
        /// Index of the span within its resource, counted across scopes.
        span_index: usize,
    },
}

impl From<serde_json::Error> for DecodeError {
    fn from(error: serde_json::Error) -> DecodeError {
        DecodeError::Json(JsonError::from(&error))
    }
}

/// A JSON parse or decode failure, told without the offending value: `serde_json`'s own message
/// quotes it (`invalid type: string "123-45-6789", expected u32`), and these messages end up in
/// dead-letter headers and explanations. What is kept: the category, the line and column, the
/// syntax error (serde_json's syntax messages are fixed texts) or, for a value of the wrong type
/// or form, what was expected (which comes from the type, not the input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{category} error at line {line} column {column}: {what}")]
pub struct JsonError {
    /// `syntax` (not JSON), `data` (JSON of the wrong shape) or `eof` (cut short).
    pub category: &'static str,
    /// What went wrong, without the value.
    pub what: String,
    /// 1-based line of the error.
    pub line: usize,
    /// 1-based column of the error.
    pub column: usize,
}

/// The most characters of an "expected …" kept: a list of field names can be long.
const MAX_EXPECTED_CHARS: usize = 120;

impl From<&serde_json::Error> for JsonError {
    fn from(error: &serde_json::Error) -> JsonError {
        use serde_json::error::Category;
        let (line, column) = (error.line(), error.column());
        let category = match error.classify() {
            Category::Io => "io",
            Category::Syntax => "syntax",
            Category::Data => "data",
            Category::Eof => "eof",
        };
        let message = error.to_string();
        let message = message
            .strip_suffix(&format!(" at line {line} column {column}"))
            .unwrap_or(&message);
        let what = match error.classify() {
            // Syntax and end-of-input errors are serde_json's fixed texts (`expected `:``,
            // `EOF while parsing a string`); I/O errors do not carry the input either.
            Category::Syntax | Category::Eof | Category::Io => message.to_owned(),
            Category::Data => data_error(message),
        };
        JsonError {
            category,
            what,
            line,
            column,
        }
    }
}

/// What a JSON id that is not hex is told: OTLP/JSON writes ids as hex, where protobuf's
/// canonical JSON mapping (what `MessageToJson` and several SDKs' debug exporters write) gives
/// bytes as base64; the decoder's own words ("invalid character at position 1") do not say so.
pub const HEX_ID_HINT: &str = "invalid id: OTLP/JSON writes traceId, spanId and parentSpanId as hex (32 hex digits for a trace id, 16 for a span id), not base64 as protobuf's JSON mapping does";

/// The messages of the hex decoder behind OTLP/JSON ids (`const-hex`), which only ids go through,
/// in lower case (its versions differ in case).
const HEX_ERRORS: [&str; 3] = [
    "invalid character",
    "odd number of digits",
    "invalid string length",
];

/// A `serde` data error without the value it quotes: its kind and what was expected. A hex id
/// that would not decode says that ids are hex ([`HEX_ID_HINT`]); anything else (custom
/// messages, as from integer parsing) becomes "invalid value".
fn data_error(message: &str) -> String {
    let lower = message.get(..24).unwrap_or(message).to_ascii_lowercase();
    if HEX_ERRORS.iter().any(|e| lower.starts_with(e)) {
        return HEX_ID_HINT.into();
    }
    const KINDS: [(&str, &str); 5] = [
        ("invalid type: ", "invalid type"),
        ("invalid value: ", "invalid value"),
        ("invalid length ", "invalid length"),
        ("unknown variant ", "unknown variant"),
        ("unknown field ", "unknown field"),
    ];
    let Some(&(_, kind)) = KINDS.iter().find(|(prefix, _)| message.starts_with(prefix)) else {
        return "invalid value".into();
    };
    // `…, expected X` ends these messages, after the quoted input: the last occurrence is
    // serde's, whatever the input holds. `unknown field `x`, there are no fields` has none, and
    // the input may hold one of its own.
    if message.ends_with(", there are no fields") || message.ends_with(", there are no variants") {
        return kind.into();
    }
    match message.rfind(", expected ") {
        Some(at) => {
            let expected = &message[at + ", expected ".len()..];
            let cut = expected
                .char_indices()
                .nth(MAX_EXPECTED_CHARS)
                .map_or(expected.len(), |(i, _)| i);
            let ellipsis = if cut < expected.len() { "…" } else { "" };
            format!("{kind}, expected {}{ellipsis}", &expected[..cut])
        }
        None => kind.into(),
    }
}

/// Decodes one `ExportTraceServiceRequest` in the given encoding and checks that every span has
/// ids of valid length, so evaluators and score ids can rely on them.
pub fn decode(bytes: &[u8], encoding: Encoding) -> Result<ExportTraceServiceRequest, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty(encoding));
    }
    let request = match encoding {
        Encoding::OtlpProto => ExportTraceServiceRequest::decode(bytes)?,
        Encoding::OtlpJson => serde_json::from_slice(bytes)?,
    };
    check_ids(&request)?;
    Ok(request)
}

/// Decodes a file or stream of OTLP/JSON that may hold several requests one after another, as
/// the collector's file exporter writes them (one JSON object per line).
pub fn decode_json_stream(bytes: &[u8]) -> Result<Vec<ExportTraceServiceRequest>, DecodeError> {
    let requests = json_requests(bytes).collect::<Result<Vec<_>, _>>()?;
    if requests.is_empty() {
        return Err(DecodeError::Empty(Encoding::OtlpJson));
    }
    Ok(requests)
}

/// Iterates over the OTLP/JSON requests in a stream, one at a time; [`JsonRequests::byte_offset`]
/// tells how far it has read (for progress reporting). Stops after the first error.
pub fn json_requests(bytes: &[u8]) -> JsonRequests<'_> {
    JsonRequests {
        inner: serde_json::Deserializer::from_slice(bytes).into_iter(),
        failed: false,
    }
}

/// The iterator of [`json_requests`].
pub struct JsonRequests<'b> {
    inner: serde_json::StreamDeserializer<
        'b,
        serde_json::de::SliceRead<'b>,
        ExportTraceServiceRequest,
    >,
    failed: bool,
}

impl JsonRequests<'_> {
    /// Bytes consumed so far.
    pub fn byte_offset(&self) -> usize {
        self.inner.byte_offset()
    }
}

impl Iterator for JsonRequests<'_> {
    type Item = Result<ExportTraceServiceRequest, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = match self.inner.next()? {
            Ok(request) => check_ids(&request).map(|()| request),
            Err(e) => Err(DecodeError::from(e)),
        };
        self.failed = item.is_err();
        Some(item)
    }
}

/// Rejects spans whose ids OTLP declares invalid: a trace id of other than 16 bytes or a span id
/// of other than 8. (An all-zero id is invalid too, but harmless to evaluate, so it is kept.)
fn check_ids(request: &ExportTraceServiceRequest) -> Result<(), DecodeError> {
    for (resource_index, rs) in request.resource_spans.iter().enumerate() {
        let spans = rs.scope_spans.iter().flat_map(|ss| ss.spans.iter());
        for (span_index, span) in spans.enumerate() {
            let bad = |field, len, expected| DecodeError::BadId {
                field,
                len,
                expected,
                resource_index,
                span_index,
            };
            if span.trace_id.len() != 16 {
                return Err(bad("trace_id", span.trace_id.len(), "16 bytes"));
            }
            if span.span_id.len() != 8 {
                return Err(bad("span_id", span.span_id.len(), "8 bytes"));
            }
        }
    }
    Ok(())
}

/// The spans a request holds, without reading them.
pub fn span_count(request: &ExportTraceServiceRequest) -> usize {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

/// Lower-case hex of an id, as OTLP/JSON and the collector's Kafka keys spell trace ids.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// The string inside an attribute value, if it is one.
pub fn as_str(value: &AnyValue) -> Option<&str> {
    match &value.value {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

/// An attribute value read as a non-negative count: integers, integral doubles and numeric
/// strings are all accepted, because instrumentations disagree on the type of token counts.
pub fn as_u64(value: &AnyValue) -> Option<u64> {
    match &value.value {
        Some(Value::IntValue(i)) => u64::try_from(*i).ok(),
        Some(Value::DoubleValue(d)) if *d >= 0.0 && d.fract() == 0.0 && *d < 1.8e19 => {
            Some(*d as u64)
        }
        Some(Value::StringValue(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An attribute value read as a number; numeric strings are accepted.
pub fn as_f64(value: &AnyValue) -> Option<f64> {
    match &value.value {
        Some(Value::IntValue(i)) => Some(*i as f64),
        Some(Value::DoubleValue(d)) => Some(*d),
        Some(Value::StringValue(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Finds an attribute by key in a list (the first one, as OTLP keys are meant to be unique).
pub fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

/// Converts an OTLP value to JSON, for structured attributes (messages, tool definitions) that
/// arrive as OTLP maps and arrays instead of JSON strings.
pub fn to_json(value: &AnyValue) -> serde_json::Value {
    use serde_json::Value as J;
    match &value.value {
        None => J::Null,
        Some(Value::StringValue(s)) => J::String(s.clone()),
        Some(Value::BoolValue(b)) => J::Bool(*b),
        Some(Value::IntValue(i)) => J::from(*i),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(*d).map_or(J::Null, J::Number),
        Some(Value::BytesValue(b)) => J::String(hex(b)),
        Some(Value::ArrayValue(a)) => J::Array(a.values.iter().map(to_json).collect()),
        Some(Value::KvlistValue(kv)) => J::Object(
            kv.values
                .iter()
                .map(|kv| {
                    let v = kv.value.as_ref().map_or(J::Null, to_json);
                    (kv.key.clone(), v)
                })
                .collect(),
        ),
        Some(Value::StringValueStrindex(_)) => J::Null,
    }
}

/// Construction helpers for requests.
pub trait ExportTraceServiceRequestExt {
    /// A request holding one `ResourceSpans`.
    fn single(resource_spans: types::ResourceSpans) -> Self;
}

impl ExportTraceServiceRequestExt for ExportTraceServiceRequest {
    fn single(resource_spans: types::ResourceSpans) -> Self {
        ExportTraceServiceRequest {
            resource_spans: vec![resource_spans],
        }
    }
}

/// Builds a string attribute.
pub fn kv_str(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

/// Builds an attribute from any OTLP value.
pub fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_tells_json_from_proto() {
        assert_eq!(
            Encoding::sniff(b"  \n{\"resourceSpans\":[]}"),
            Encoding::OtlpJson
        );
        assert_eq!(Encoding::sniff(b"\xEF\xBB\xBF{}"), Encoding::OtlpJson);
        assert_eq!(
            Encoding::sniff(&[0x0a, 0x02, 0x0a, 0x00]),
            Encoding::OtlpProto
        );
    }

    #[test]
    fn empty_and_garbage_are_errors_not_panics() {
        assert!(matches!(
            decode(b"", Encoding::OtlpProto),
            Err(DecodeError::Empty(_))
        ));
        let err = decode(b"{not json", Encoding::OtlpJson).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid otlp_json message"),
            "{err}"
        );
        let err = decode(&[0xff, 0xff, 0xff], Encoding::OtlpProto).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid otlp_proto message"),
            "{err}"
        );
    }

    #[test]
    fn json_accepts_int64_as_string_or_number_and_rejects_bad_ids() {
        let ok = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{
            "traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708",
            "name":"x","kind":3,"startTimeUnixNano":"1000","endTimeUnixNano":2000,
            "attributes":[{"key":"n","value":{"intValue":"42"}},{"key":"m","value":{"intValue":7}}]
        }]}]}]}"#;
        let req = decode(ok.as_bytes(), Encoding::OtlpJson).expect("valid OTLP/JSON");
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.start_time_unix_nano, 1000);
        assert_eq!(span.end_time_unix_nano, 2000);
        assert_eq!(span.kind, 3);
        assert_eq!(as_u64(span.attributes[0].value.as_ref().unwrap()), Some(42));
        assert_eq!(as_u64(span.attributes[1].value.as_ref().unwrap()), Some(7));

        let bad = ok.replace("0102030405060708\"", "0102\"");
        let err = decode(bad.as_bytes(), Encoding::OtlpJson).unwrap_err();
        assert!(err.to_string().contains("span_id of 2 bytes"), "{err}");
        let not_hex = ok.replace("0102030405060708\"", "zz02030405060708\"");
        assert!(decode(not_hex.as_bytes(), Encoding::OtlpJson).is_err());
    }

    #[test]
    fn json_stream_reads_one_request_per_line() {
        let line = r#"{"resourceSpans":[]}"#;
        let two = format!("{line}\n{line}\n");
        assert_eq!(decode_json_stream(two.as_bytes()).unwrap().len(), 2);
        assert!(decode_json_stream(b"  ").is_err());
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x0a, 0xff, 0x00]), "0aff00");
    }
    /// A span whose attributes hold an SSN and an e-mail address in fields of the wrong type.
    const WRONGLY_TYPED: &str = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{
        "traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"x",
        "attributes":[{"key":"ok","value":{"boolValue":"jane.doe@example.com"}}],
        "droppedAttributesCount":"123-45-6789"
    }]}]}]}"#;

    #[test]
    fn json_decode_errors_do_not_echo_values() {
        // serde_json's own message quotes the value: what the test guards against.
        let raw = serde_json::from_str::<ExportTraceServiceRequest>(WRONGLY_TYPED)
            .unwrap_err()
            .to_string();
        assert!(raw.contains("jane.doe@example.com"), "{raw}");
        let err = decode(WRONGLY_TYPED.as_bytes(), Encoding::OtlpJson).unwrap_err();
        let shown = err.to_string();
        assert!(!shown.contains("jane.doe"), "{shown}");
        assert!(!shown.contains("example.com"), "{shown}");
        assert_eq!(
            shown,
            "invalid otlp_json message: data error at line 3 column 78: invalid type, expected a boolean"
        );

        let ssn = WRONGLY_TYPED.replace(r#"{"boolValue":"jane.doe@example.com"}"#, "{}");
        let raw = serde_json::from_str::<ExportTraceServiceRequest>(&ssn)
            .unwrap_err()
            .to_string();
        assert!(raw.contains("123-45-6789"), "{raw}");
        let shown = decode(ssn.as_bytes(), Encoding::OtlpJson)
            .unwrap_err()
            .to_string();
        assert!(!shown.contains("123-45-6789"), "{shown}");
        assert!(shown.contains("data error at line 4"), "{shown}");

        // The same through the stream reader, and for a bad hex id.
        let shown = json_requests(WRONGLY_TYPED.as_bytes())
            .next()
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(!shown.contains("jane.doe"), "{shown}");
        let bad_hex = WRONGLY_TYPED.replace("0102030405060708\"", "zz23-45-6789jane\"");
        let shown = decode(bad_hex.as_bytes(), Encoding::OtlpJson)
            .unwrap_err()
            .to_string();
        assert!(
            !shown.contains("zz23") && !shown.contains("jane"),
            "{shown}"
        );
    }

    #[test]
    fn base64_ids_in_otlp_json_are_told_to_be_hex() {
        // The ids of `ok` above as protobuf's JSON mapping writes bytes: base64.
        let base64 = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{
            "traceId":"AQIDBAUGBwgJCgsMDQ4PEA==","spanId":"AQIDBAUGBwg=","name":"x"
        }]}]}]}"#;
        for shown in [
            decode(base64.as_bytes(), Encoding::OtlpJson)
                .unwrap_err()
                .to_string(),
            json_requests(base64.as_bytes())
                .next()
                .unwrap()
                .unwrap_err()
                .to_string(),
        ] {
            assert!(shown.contains("OTLP/JSON writes traceId"), "{shown}");
            assert!(
                shown.contains("hex") && shown.contains("not base64"),
                "{shown}"
            );
            assert!(shown.contains("line 2"), "where: {shown}");
            assert!(!shown.contains("AQID"), "no value echoed: {shown}");
        }
        // A base64 span id whose characters happen to be hex digits is still caught: odd length.
        let odd = base64
            .replace(
                "AQIDBAUGBwgJCgsMDQ4PEA==",
                "0102030405060708090a0b0c0d0e0f10",
            )
            .replace("AQIDBAUGBwg=", "ABCDEF012345678");
        let shown = decode(odd.as_bytes(), Encoding::OtlpJson)
            .unwrap_err()
            .to_string();
        assert!(shown.contains("not base64"), "{shown}");
    }

    #[test]
    fn json_syntax_errors_keep_serde_jsons_fixed_text() {
        let err = decode(b"{\"resourceSpans\": [}", Encoding::OtlpJson).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid otlp_json message: syntax error at line 1 column 20: expected value"
        );
        let err = decode(b"{\"resourceSpans\": [", Encoding::OtlpJson).unwrap_err();
        assert!(err.to_string().contains("eof error"), "{err}");
    }

    #[test]
    fn data_errors_keep_only_what_was_expected() {
        assert_eq!(
            data_error(r#"invalid type: string "a, expected 123-45-6789", expected u32"#),
            "invalid type, expected u32"
        );
        assert_eq!(
            data_error("unknown field `x, expected 123-45-6789`, there are no fields"),
            "unknown field"
        );
        assert_eq!(
            data_error("Invalid character 'j' at position 0"),
            HEX_ID_HINT
        );
        assert_eq!(data_error("invalid digit found in string"), "invalid value");
    }

    #[test]
    fn proto_decode_errors_do_not_echo_values() {
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        let request = ExportTraceServiceRequest::single(ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    name: "123-45-6789 jane.doe@example.com ZZ".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
        let mut bytes = request.encode_to_vec();
        // Make the name invalid UTF-8: prost rejects it, naming the field but not its bytes.
        let at = bytes.windows(2).position(|w| w == b"ZZ").unwrap();
        bytes[at] = 0xff;
        let shown = decode(&bytes, Encoding::OtlpProto).unwrap_err().to_string();
        assert!(shown.contains("Span.name"), "{shown}");
        assert!(
            !shown.contains("123-45-6789") && !shown.contains("jane"),
            "{shown}"
        );
    }
}
