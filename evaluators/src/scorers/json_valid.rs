//! `json_valid`: is output that should be JSON actually JSON?
//!
//! Applies when JSON was requested (`gen_ai.output.type=json`, a `response_format` in the request
//! parameters or body, a structured-output schema) or, unless `only_when_requested`, when the
//! answer looks like JSON (starts with `{` or `[`, optionally inside a Markdown code fence).
//! Validity against a schema is the `json_schema` scorer's job; this one checks that the text
//! parses. Scores `1.0` valid / `0.0` invalid; the explanation gives the kind of error and the
//! parser's line and column, never the text around it.

use serde::{Deserialize, Serialize};

use crate::evaluator::{Evaluator, Outcome};
use crate::otlp::JsonError;
use crate::scorers::registry::Builtin;
use crate::span::{GenAiSpan, JsonRequest};

/// Configuration of `json_valid`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonValidConfig {
    /// Judge only spans whose request asked for JSON; otherwise also answers that look like JSON.
    #[serde(default)]
    pub only_when_requested: bool,
    /// Accept JSON wrapped in a Markdown code fence (```json … ```).
    #[serde(default = "yes")]
    pub allow_code_fence: bool,
}

impl Builtin for JsonValidConfig {
    const TYPE: &'static str = "json_valid";

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(JsonValid::build(self)?))
    }
}

fn yes() -> bool {
    true
}

impl Default for JsonValidConfig {
    fn default() -> Self {
        JsonValidConfig {
            only_when_requested: false,
            allow_code_fence: true,
        }
    }
}

/// The `json_valid` scorer.
#[derive(Debug)]
pub struct JsonValid {
    config: JsonValidConfig,
}

impl JsonValid {
    /// Builds the scorer.
    pub fn build(config: &JsonValidConfig) -> Result<JsonValid, String> {
        Ok(JsonValid {
            config: config.clone(),
        })
    }
}

/// The text inside a Markdown code fence, if the whole answer is one.
pub(crate) fn unfence(text: &str) -> Option<&str> {
    let body = text.trim().strip_prefix("```")?;
    let body = body.strip_suffix("```")?;
    // Drop the info string (`json`) on the opening line.
    let newline = body.find('\n')?;
    Some(body[newline + 1..].trim())
}

impl Evaluator for JsonValid {
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome {
        let requested = span.json_request() != JsonRequest::NotRequested;
        if !requested && self.config.only_when_requested {
            return Outcome::not_applicable("JSON was not requested");
        }
        let Some(text) = span.output_text() else {
            return if requested {
                Outcome::no_content()
            } else {
                Outcome::not_applicable("JSON was not requested and no output was captured")
            };
        };
        let fenced = if self.config.allow_code_fence {
            unfence(&text)
        } else {
            None
        };
        let body = fenced.unwrap_or(text.trim());
        let looks_like_json = body.starts_with(['{', '[']);
        if !requested && !looks_like_json {
            return Outcome::not_applicable(
                "JSON was not requested and the output is not JSON-like",
            );
        }
        if body.is_empty() {
            if span.tool_calls().next().is_some() {
                return Outcome::not_applicable("the answer is a tool call");
            }
            return Outcome::check(
                false,
                "invalid",
                "JSON was requested but the answer is empty",
            );
        }
        match serde_json::from_str::<serde::de::IgnoredAny>(body) {
            Ok(_) => {
                let how = if requested {
                    "JSON was requested"
                } else {
                    "the answer looks like JSON"
                };
                Outcome::check(true, "valid", format!("valid JSON ({how})"))
            }
            Err(e) => Outcome::check(
                false,
                "invalid",
                format!("invalid JSON: {}", JsonError::from(&e)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluator::SkipReason;
    use crate::scorers::testing::{chat, s, span, view};

    fn run(config: &JsonValidConfig, sp: &opentelemetry_proto::tonic::trace::v1::Span) -> Outcome {
        JsonValid::build(config).unwrap().evaluate(&view(sp))
    }

    #[test]
    fn judges_json_looking_answers_without_a_request() {
        let c = JsonValidConfig::default();
        assert_eq!(
            run(&c, &chat(r#"{"a": [1, 2]}"#)).score().unwrap().label,
            "valid"
        );
        let broken = run(&c, &chat(r#"{"a": [1, 2"#));
        let score = broken.score().unwrap();
        assert_eq!(score.label, "invalid");
        assert_eq!(
            score.explanation,
            "invalid JSON: eof error at line 1 column 11: EOF while parsing a list"
        );
        assert!(matches!(
            run(&c, &chat("Paris.")),
            Outcome::Skipped {
                reason: SkipReason::NotApplicable,
                ..
            }
        ));
    }

    #[test]
    fn code_fences_are_accepted_unless_disabled() {
        let fenced = chat("```json\n{\"ok\": true}\n```");
        assert!(
            run(&JsonValidConfig::default(), &fenced)
                .score()
                .unwrap()
                .passed
        );
        let strict = JsonValidConfig {
            allow_code_fence: false,
            ..Default::default()
        };
        // Without fence handling the answer does not look like JSON and nothing was requested.
        assert!(matches!(run(&strict, &fenced), Outcome::Skipped { .. }));
    }

    #[test]
    fn a_json_request_makes_prose_invalid_and_missing_content_skipped() {
        let mut sp = chat("Sure! The sentiment is positive.");
        sp.attributes.push(s("gen_ai.output.type", "json"));
        assert_eq!(
            run(&JsonValidConfig::default(), &sp).score().unwrap().label,
            "invalid"
        );

        let params = span(vec![
            s("gen_ai.operation.name", "chat"),
            s(
                "llm.invocation_parameters",
                r#"{"model":"m","response_format":{"type":"json_object"}}"#,
            ),
        ]);
        assert!(matches!(
            run(&JsonValidConfig::default(), &params),
            Outcome::Skipped {
                reason: SkipReason::NoContent,
                ..
            }
        ));
        let only = JsonValidConfig {
            only_when_requested: true,
            ..Default::default()
        };
        assert!(matches!(
            run(&only, &chat("{}")),
            Outcome::Skipped {
                reason: SkipReason::NotApplicable,
                ..
            }
        ));
    }
    #[test]
    fn json_valid_explanation_does_not_quote_the_answer() {
        for answer in [
            r#"{"ssn": "123-45-6789" "mail": "jane@example.com"}"#,
            r#"{"ssn": 123-45-6789, "mail": "jane@example.com"}"#,
            "{\"ssn\": \"123-45-6789\u{1}jane@example.com\"}",
        ] {
            let outcome = run(&JsonValidConfig::default(), &chat(answer));
            let why = &outcome.score().unwrap().explanation;
            assert!(!why.contains("123-45") && !why.contains("jane"), "{why}");
            assert!(why.contains("at line 1 column"), "{why}");
        }
    }
}
