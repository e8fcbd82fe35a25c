//! `json_schema`: does a JSON answer meet its schema?
//!
//! The schema is configured inline (`schema:`) or in a JSON file (`schema_file:`), compiled once
//! when the evaluator is built. Without one, the schema the request itself asked for is used
//! (OpenAI structured outputs' `response_format.json_schema`, OpenLLMetry's
//! `gen_ai.request.structured_output_schema`), compiled on first sight and cached. Which answers
//! are judged is the selector's business (span names, attributes, prompt versions), so one
//! evaluator per route and schema is the usual setup.
//!
//! Scores `1.0` valid / `0.0` invalid (`invalid`: schema violations, listed by instance path and
//! keyword, never with the answer's values; `not_json`: the answer does not parse, with the line
//! and column). A request schema over [`schema::MAX_SCHEMA_BYTES`] is an error
//! (`schema_too_large`), not compiled.

use std::path::PathBuf;

use jsonschema::Validator;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::json_valid::unfence;
use super::schema::{self, DraftChoice, SchemaCache};
use crate::evaluator::{Evaluator, Outcome};
use crate::otlp::JsonError;
use crate::scorers::registry::Builtin;
use crate::span::{GenAiSpan, JsonRequest};

/// Configuration of `json_schema`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaConfig {
    /// The schema, inline.
    #[serde(default)]
    pub schema: Option<Value>,
    /// A JSON file holding the schema (read once, when the evaluator is built).
    #[serde(default)]
    pub schema_file: Option<PathBuf>,
    /// The draft of a schema without `$schema`.
    #[serde(default)]
    pub draft: DraftChoice,
    /// Without a configured schema, use the one the request carried.
    #[serde(default = "yes")]
    pub use_request_schema: bool,
    /// Accept JSON wrapped in a Markdown code fence.
    #[serde(default = "yes")]
    pub allow_code_fence: bool,
    /// Violations listed in the explanation.
    #[serde(default = "default_max_errors")]
    pub max_errors: usize,
}

impl Builtin for JsonSchemaConfig {
    const TYPE: &'static str = "json_schema";

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(JsonSchema::build(self)?))
    }
}

fn yes() -> bool {
    true
}

fn default_max_errors() -> usize {
    5
}

/// The `json_schema` scorer.
#[derive(Debug)]
pub struct JsonSchema {
    config: JsonSchemaConfig,
    configured: Option<Validator>,
    request_schemas: SchemaCache,
}

impl JsonSchema {
    /// Builds the scorer: reads and compiles the configured schema.
    pub fn build(config: &JsonSchemaConfig) -> Result<JsonSchema, String> {
        let schema = match (&config.schema, &config.schema_file) {
            (Some(_), Some(_)) => {
                return Err("give `schema` or `schema_file`, not both".into());
            }
            (Some(schema), None) => Some(schema.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("schema_file: cannot read {}: {e}", path.display()))?;
                Some(
                    serde_json::from_str(&text)
                        .map_err(|e| format!("schema_file: {} is not JSON: {e}", path.display()))?,
                )
            }
            (None, None) if !config.use_request_schema => {
                return Err(
                    "give `schema` or `schema_file`, or leave `use_request_schema` on".into(),
                );
            }
            (None, None) => None,
        };
        let configured = schema
            .map(|s| schema::compile(&s, config.draft))
            .transpose()
            .map_err(|e| format!("schema: {e}"))?;
        Ok(JsonSchema {
            config: config.clone(),
            configured,
            request_schemas: SchemaCache::default(),
        })
    }
}

/// The JSON Schema inside what an instrumentation recorded as the requested format: a bare
/// schema, OpenAI's `{name, schema, strict}`, or a whole `response_format`.
fn schema_of_request(recorded: &Value) -> &Value {
    if let Some(inner) = recorded.get("json_schema") {
        return schema_of_request(inner);
    }
    match recorded.get("schema") {
        Some(schema) if schema.is_object() => schema,
        _ => recorded,
    }
}

impl Evaluator for JsonSchema {
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome {
        let request_schema;
        let validator: &Validator = match &self.configured {
            Some(v) => v,
            None => {
                let JsonRequest::Schema(text) = span.json_request() else {
                    return Outcome::not_applicable(
                        "no schema configured and the request carried none",
                    );
                };
                // Checked before parsing: a huge schema costs nothing to refuse.
                if let Err(e) = schema::check_size(text.len()) {
                    return Outcome::Error {
                        error_type: e.error_type().into(),
                        message: format!("the request's schema: {e}"),
                    };
                }
                let Ok(recorded) = serde_json::from_str::<Value>(&text) else {
                    return Outcome::Error {
                        error_type: "invalid_schema".into(),
                        message: "the request's schema is not JSON".into(),
                    };
                };
                request_schema = self.request_schemas.get(
                    &text,
                    schema_of_request(&recorded),
                    self.config.draft,
                );
                match request_schema.as_ref() {
                    Ok(v) => v,
                    Err(e) => {
                        return Outcome::Error {
                            error_type: e.error_type().into(),
                            message: format!("the request's schema: {e}"),
                        };
                    }
                }
            }
        };
        let Some(text) = span.output_text() else {
            return Outcome::no_content();
        };
        let fenced = if self.config.allow_code_fence {
            unfence(&text)
        } else {
            None
        };
        let body = fenced.unwrap_or(text.trim());
        if body.is_empty() && span.tool_calls().next().is_some() {
            return Outcome::not_applicable("the answer is a tool call");
        }
        let instance: Value = match serde_json::from_str(body) {
            Ok(v) => v,
            Err(e) => {
                let e = JsonError::from(&e);
                return Outcome::check(false, "not_json", format!("not JSON: {e}"));
            }
        };
        let (shown, total) = schema::violations(validator, &instance, self.config.max_errors);
        if total == 0 {
            Outcome::check(true, "valid", "the answer meets the schema")
        } else {
            Outcome::check(false, "invalid", schema::describe(&shown, total))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluator::SkipReason;
    use crate::scorers::testing::{chat, s, view};
    use serde_json::json;

    fn sentiment_schema() -> Value {
        json!({
            "type": "object",
            "required": ["sentiment", "confidence"],
            "properties": {
                "sentiment": {"enum": ["positive", "negative", "neutral"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1}
            }
        })
    }

    fn with_schema() -> JsonSchema {
        JsonSchema::build(&JsonSchemaConfig {
            schema: Some(sentiment_schema()),
            ..serde_json::from_value(json!({})).unwrap()
        })
        .unwrap()
    }

    fn label(o: &Outcome) -> (&str, bool, &str) {
        match o {
            Outcome::Scored(s) => (s.label.as_ref(), s.passed, s.explanation.as_str()),
            other => panic!("not scored: {other:?}"),
        }
    }

    #[test]
    fn valid_invalid_and_unparseable_answers() {
        let e = with_schema();
        let valid = chat(r#"{"sentiment": "positive", "confidence": 0.9}"#);
        assert_eq!(label(&e.evaluate(&view(&valid))).0, "valid");
        let invalid = chat(r#"{"sentiment": "superb", "confidence": 1.4}"#);
        let outcome = e.evaluate(&view(&invalid));
        let (l, passed, why) = label(&outcome);
        assert_eq!((l, passed), ("invalid", false));
        assert!(
            why.contains("/sentiment") && why.contains("/confidence"),
            "{why}"
        );
        assert!(!why.contains("superb"), "values are masked: {why}");
        let fenced = chat("```json\n{\"sentiment\": \"neutral\", \"confidence\": 0}\n```");
        assert_eq!(label(&e.evaluate(&view(&fenced))).0, "valid");
        let broken = chat("{\"sentiment\": ");
        assert_eq!(label(&e.evaluate(&view(&broken))).0, "not_json");
    }

    #[test]
    fn without_a_configured_schema_the_requests_own_is_used() {
        let e = JsonSchema::build(&serde_json::from_value(json!({})).unwrap()).unwrap();
        let mut sp = chat(r#"{"sentiment": "great", "confidence": 0.5}"#);
        let outcome = e.evaluate(&view(&sp));
        assert!(
            matches!(
                &outcome,
                Outcome::Skipped {
                    reason: SkipReason::NotApplicable,
                    ..
                }
            ),
            "{outcome:?}"
        );
        let format = json!({"type": "json_schema", "json_schema": {"name": "s", "strict": true, "schema": sentiment_schema()}});
        sp.attributes.push(s(
            "gen_ai.request.structured_output_schema",
            &format.to_string(),
        ));
        assert_eq!(label(&e.evaluate(&view(&sp))).0, "invalid");
    }

    #[test]
    fn configuration_errors_are_clear() {
        let both = JsonSchema::build(
            &serde_json::from_value(json!({"schema": {}, "schema_file": "x.json"})).unwrap(),
        )
        .unwrap_err();
        assert!(both.contains("not both"), "{both}");
        let missing = JsonSchema::build(
            &serde_json::from_value(json!({"schema_file": "/nonexistent.json"})).unwrap(),
        )
        .unwrap_err();
        assert!(
            missing.contains("cannot read /nonexistent.json"),
            "{missing}"
        );
        let bad =
            JsonSchema::build(&serde_json::from_value(json!({"schema": {"type": 3}})).unwrap())
                .unwrap_err();
        assert!(bad.contains("invalid JSON Schema"), "{bad}");
        let none = JsonSchema::build(
            &serde_json::from_value(json!({"use_request_schema": false})).unwrap(),
        )
        .unwrap_err();
        assert!(none.contains("give `schema`"), "{none}");
    }
    #[test]
    fn json_schema_explanations_do_not_quote_the_answer() {
        let e = with_schema();
        let leaky = chat(r#"{"sentiment": "123-45-6789", "confidence": "jane@example.com"}"#);
        let outcome = e.evaluate(&view(&leaky));
        let (_, _, why) = label(&outcome);
        assert!(
            !why.contains("123-45-6789") && !why.contains("jane"),
            "{why}"
        );
        assert!(why.contains("/sentiment: enum"), "{why}");
        // A parse error, even one that stops inside a value, names only where.
        let broken = chat(r#"{"ssn": "123-45-6789" "email": "jane@example.com"}"#);
        let outcome = e.evaluate(&view(&broken));
        let (l, _, why) = label(&outcome);
        assert_eq!(l, "not_json");
        assert!(
            !why.contains("123-45-6789") && !why.contains("jane"),
            "{why}"
        );
        assert!(why.contains("line 1 column"), "{why}");
    }

    #[test]
    fn a_request_schema_over_the_size_limit_is_an_error_naming_its_size() {
        let e = JsonSchema::build(&serde_json::from_value(json!({})).unwrap()).unwrap();
        let mut sp = chat("{}");
        let huge = json!({
            "type": "object",
            "properties": {"a": {"description": "x".repeat(schema::MAX_SCHEMA_BYTES)}}
        });
        let text = huge.to_string();
        sp.attributes
            .push(s("gen_ai.request.structured_output_schema", &text));
        match e.evaluate(&view(&sp)) {
            Outcome::Error {
                error_type,
                message,
            } => {
                assert_eq!(error_type, "schema_too_large");
                assert!(
                    message.contains(&format!("{} bytes", text.len())),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
