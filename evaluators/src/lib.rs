//! # evalstream-evaluators
//!
//! The part of evalstream that judges spans: it decodes OTLP trace requests ([`otlp`]), reads each
//! span through one canonical GenAI view whatever convention its instrumentation followed
//! ([`span`]), runs configured evaluators on it ([`evaluator`], [`spec`], [`scorers`]) and turns
//! the scores into OpenTelemetry evaluator spans ([`to_otlp`]).
//!
//! This crate has no Kafka client and no async runtime, by design: scorers build and test in
//! seconds, and the streaming worker (the `evalstream` crate) owns all I/O.
//!
//! ```
//! use evalstream_evaluators::{otlp, span, spec};
//!
//! let request = otlp::decode(br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{
//!     "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
//!     "name":"chat gpt-4o","attributes":[
//!       {"key":"gen_ai.operation.name","value":{"stringValue":"chat"}},
//!       {"key":"gen_ai.output.messages","value":{"stringValue":
//!         "[{\"role\":\"assistant\",\"parts\":[{\"type\":\"text\",\"content\":\"I can't help with that.\"}]}]"}}]
//! }]}]}]}"#, otlp::Encoding::OtlpJson).unwrap();
//! let evaluators = spec::build_set(&spec::default_specs()).unwrap();
//! let mut evaluations = Vec::new();
//! for span in span::spans(&request) {
//!     evaluators.evaluate(&span, &mut evaluations);
//! }
//! let refusal = evaluations.iter().find(|e| e.evaluator == "refusal").unwrap();
//! assert_eq!(refusal.outcome.score().unwrap().label, "refused");
//! ```

#![deny(missing_docs)]

pub mod cascade;
pub mod evaluator;
pub mod logs;
pub mod otlp;
pub mod pricing;
pub mod scorers;
pub mod span;
pub mod spec;
pub mod text;
pub mod to_json;
pub mod to_otlp;
pub mod trace;
