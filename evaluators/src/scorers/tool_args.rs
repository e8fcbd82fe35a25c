//! `tool_args`: do the model's tool calls pass arguments their tools accept?
//!
//! On an LLM span, every tool call in the output is checked against the parameter schema of the
//! tool of that name among the span's tool definitions (`gen_ai.tool.definitions`,
//! `llm.tools.N.tool.json_schema`, …), or, when the span carries none, among the definitions of
//! the other spans of its trace; a name the model made up fails. On a tool-execution span
//! (`execute_tool`), the arguments are checked against the span's own `tool.parameters`, else
//! the definition of that tool in the trace. Schemas are compiled on first sight and cached.
//!
//! Scores the fraction of checked calls whose arguments are valid; passes when all are. Labels
//! `valid`, `invalid`, or `unknown_tool` when a call names a tool that was not offered.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schema::{self, DraftChoice, SchemaCache};
use super::{MAX_NAME_CHARS, excerpt};
use crate::evaluator::{Evaluator, Outcome};
use crate::otlp::JsonError;
use crate::scorers::registry::Builtin;
use crate::span::{GenAiSpan, OperationKind, ToolDefinition};
use crate::trace::TraceView;

/// Configuration of `tool_args`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToolArgsConfig {
    /// The draft of parameter schemas without `$schema`.
    #[serde(default)]
    pub draft: DraftChoice,
    /// Violations listed in the explanation, per call.
    #[serde(default = "default_max_errors")]
    pub max_errors: usize,
}

impl Builtin for ToolArgsConfig {
    const TYPE: &'static str = "tool_args";
    const DEFAULT_KINDS: &'static [OperationKind] = &[OperationKind::Chat, OperationKind::Tool];

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(ToolArgs::build(self)?))
    }
}

impl Default for ToolArgsConfig {
    fn default() -> Self {
        ToolArgsConfig {
            draft: DraftChoice::default(),
            max_errors: default_max_errors(),
        }
    }
}

fn default_max_errors() -> usize {
    3
}

/// The `tool_args` scorer.
#[derive(Debug)]
pub struct ToolArgs {
    config: ToolArgsConfig,
    schemas: SchemaCache,
}

/// What checking one call found.
enum Check {
    Valid,
    Invalid(String),
    UnknownTool,
    NoSchema,
}

impl ToolArgs {
    /// Builds the scorer.
    pub fn build(config: &ToolArgsConfig) -> Result<ToolArgs, String> {
        Ok(ToolArgs {
            config: config.clone(),
            schemas: SchemaCache::default(),
        })
    }

    fn check(&self, name: &str, arguments: Option<&str>, schema: Option<&Value>) -> Check {
        let Some(schema) = schema else {
            return Check::NoSchema;
        };
        let arguments = arguments
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .unwrap_or("{}");
        let instance: Value = match serde_json::from_str(arguments) {
            Ok(v) => v,
            Err(e) => {
                return Check::Invalid(format!("arguments are not JSON: {}", JsonError::from(&e)));
            }
        };
        let key = format!("{name}\u{0}{schema}");
        let compiled = self.schemas.get(&key, schema, self.config.draft);
        let validator = match compiled.as_ref() {
            Ok(v) => v,
            Err(e) => return Check::Invalid(format!("its parameter schema: {e}")),
        };
        let (shown, total) = schema::violations(validator, &instance, self.config.max_errors);
        if total == 0 {
            Check::Valid
        } else {
            Check::Invalid(schema::describe(&shown, total))
        }
    }

    /// Scores the checked calls, each with how the explanation names it.
    fn score(&self, checks: Vec<(String, Check)>) -> Outcome {
        let mut valid = 0;
        let mut unknown = false;
        let mut problems = Vec::new();
        let mut checked = 0;
        for (call, check) in checks {
            match check {
                Check::NoSchema => continue,
                Check::Valid => valid += 1,
                Check::UnknownTool => {
                    unknown = true;
                    problems.push(format!("{call}: no such tool was offered"));
                }
                Check::Invalid(why) => problems.push(format!("{call}: {why}")),
            }
            checked += 1;
        }
        if checked == 0 {
            return Outcome::not_applicable("no tool call with a known parameter schema");
        }
        let value = valid as f64 / checked as f64;
        if problems.is_empty() {
            let what = if checked == 1 { "call" } else { "calls" };
            return Outcome::measured(value, true, "valid", format!("{checked} tool {what} valid"));
        }
        let label = if unknown { "unknown_tool" } else { "invalid" };
        Outcome::measured(value, false, label, problems.join("; "))
    }

    fn evaluate_with(&self, span: &GenAiSpan<'_>, trace: Option<&TraceView<'_>>) -> Outcome {
        if span.kind() == OperationKind::Tool {
            let Some(name) = span.tool_name() else {
                return Outcome::not_applicable("a tool span without a tool name");
            };
            let schema = match span.tool_schema() {
                Some(text) => match serde_json::from_str::<Value>(&text) {
                    Ok(schema) => Some(schema),
                    Err(_) => {
                        return Outcome::Error {
                            error_type: "invalid_schema".into(),
                            message: format!(
                                "`{}`: its parameter schema is not JSON",
                                excerpt(name, MAX_NAME_CHARS)
                            ),
                        };
                    }
                },
                None => trace
                    .and_then(|t| t.tool_definition(name))
                    .and_then(|d| d.parameters.clone()),
            };
            let Some(schema) = schema else {
                return Outcome::not_applicable(
                    "no parameter schema for the tool in its span or trace",
                );
            };
            let arguments = span.tool_arguments();
            let check = self.check(name, arguments.as_deref(), Some(&schema));
            return self.score(vec![(
                format!("`{}`", excerpt(name, MAX_NAME_CHARS)),
                check,
            )]);
        }
        if !span.output_captured() {
            return Outcome::no_content();
        }
        let calls: Vec<_> = span.tool_calls().collect();
        if calls.is_empty() {
            return Outcome::not_applicable("no tool call in the answer");
        }
        let definitions = span.tool_definitions();
        let in_trace = |name: &str| trace.and_then(|t| t.tool_definition(name));
        if definitions.is_empty() && !calls.iter().any(|c| in_trace(&c.name).is_some()) {
            return Outcome::not_applicable("no tool definitions in the span or its trace");
        }
        // Calls are named by position, and by the offered tool's name when there is one: a name
        // the model made up is its own text, and could be anything.
        let checks = calls
            .iter()
            .enumerate()
            .map(|(i, call)| {
                let found = definition(definitions, &call.name).or_else(|| in_trace(&call.name));
                match found {
                    None => (format!("call {}", i + 1), Check::UnknownTool),
                    Some(d) => (
                        format!("call {} (`{}`)", i + 1, excerpt(&d.name, MAX_NAME_CHARS)),
                        self.check(&call.name, call.arguments.as_deref(), d.parameters.as_ref()),
                    ),
                }
            })
            .collect();
        self.score(checks)
    }
}

fn definition<'d, 'a>(
    definitions: &'d [ToolDefinition<'a>],
    name: &str,
) -> Option<&'d ToolDefinition<'a>> {
    definitions.iter().find(|d| d.name == name)
}

impl Evaluator for ToolArgs {
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome {
        self.evaluate_with(span, None)
    }

    fn evaluate_in_trace(&self, span: &GenAiSpan<'_>, trace: &TraceView<'_>) -> Outcome {
        self.evaluate_with(span, Some(trace))
    }

    fn needs_trace(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluator::SkipReason;
    use crate::scorers::testing::{s, span, view};
    use serde_json::json;

    fn weather_tools() -> String {
        json!([{
            "type": "function",
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "required": ["city"],
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "additionalProperties": false
            }
        }])
        .to_string()
    }

    fn calling(name: &str, arguments: &str) -> opentelemetry_proto::tonic::trace::v1::Span {
        let output = json!([{
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "c1", "name": name, "arguments": serde_json::from_str::<Value>(arguments).unwrap_or(Value::String(arguments.into()))}],
            "finish_reason": "tool_call"
        }]);
        span(vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.tool.definitions", &weather_tools()),
            s("gen_ai.output.messages", &output.to_string()),
        ])
    }

    fn scored(o: Outcome) -> (f64, bool, String, String) {
        match o {
            Outcome::Scored(s) => (s.value, s.passed, s.label.into_owned(), s.explanation),
            other => panic!("not scored: {other:?}"),
        }
    }

    #[test]
    fn calls_are_checked_against_the_offered_tools() {
        let e = ToolArgs::build(&ToolArgsConfig::default()).unwrap();
        let (v, passed, label, _) = scored(e.evaluate(&view(&calling(
            "get_weather",
            r#"{"city": "Paris", "unit": "celsius"}"#,
        ))));
        assert_eq!((v, passed, label.as_str()), (1.0, true, "valid"));

        let (v, passed, label, why) =
            scored(e.evaluate(&view(&calling("get_weather", r#"{"unit": "kelvin"}"#))));
        assert_eq!((v, passed, label.as_str()), (0.0, false, "invalid"));
        assert_eq!(
            why,
            "call 1 (`get_weather`): 2 schema violations: \
             /unit: enum: not one of the 2 allowed values; /: required: property `city` missing"
        );

        let (_, passed, label, why) =
            scored(e.evaluate(&view(&calling("get_stock_price", r#"{"ticker": "X"}"#))));
        assert_eq!((passed, label.as_str()), (false, "unknown_tool"));
        assert_eq!(why, "call 1: no such tool was offered");
    }

    #[test]
    fn a_tool_span_is_checked_against_its_own_parameters() {
        let e = ToolArgs::build(&ToolArgsConfig::default()).unwrap();
        let schema = json!({"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}});
        let tool = |arguments: &str| {
            span(vec![
                s("gen_ai.operation.name", "execute_tool"),
                s("gen_ai.tool.name", "get_weather"),
                s("gen_ai.tool.call.arguments", arguments),
                s("tool.parameters", &schema.to_string()),
            ])
        };
        assert!(scored(e.evaluate(&view(&tool(r#"{"city": "Oslo"}"#)))).1);
        let (_, passed, _, why) = scored(e.evaluate(&view(&tool(r#"{"city": 7}"#))));
        assert!(!passed);
        assert!(why.contains("/city"), "{why}");
        let (_, passed, _, why) = scored(e.evaluate(&view(&tool("{city"))));
        assert!(!passed);
        assert!(why.contains("not JSON"), "{why}");
    }

    #[test]
    fn nothing_to_check_is_not_applicable() {
        let e = ToolArgs::build(&ToolArgsConfig::default()).unwrap();
        let plain = crate::scorers::testing::chat("It is sunny.");
        assert!(matches!(
            e.evaluate(&view(&plain)),
            Outcome::Skipped {
                reason: SkipReason::NotApplicable,
                ..
            }
        ));
    }
    #[test]
    fn tool_args_explanations_do_not_quote_arguments_or_made_up_names() {
        let e = ToolArgs::build(&ToolArgsConfig::default()).unwrap();
        for (name, arguments) in [
            (
                "get_weather",
                r#"{"city": 123456789, "unit": "jane@example.com"}"#,
            ),
            ("get_weather", r#"{"city": "Paris", "123-45-6789": true}"#),
            (
                "get_weather",
                r#"{"city": "123-45-6789" "unit": "jane@example.com"}"#,
            ),
            ("lookup 123-45-6789 jane@example.com", r#"{}"#),
        ] {
            let (_, passed, _, why) = scored(e.evaluate(&view(&calling(name, arguments))));
            assert!(!passed);
            for secret in ["123456789", "123-45-6789", "jane", "example.com"] {
                assert!(!why.contains(secret), "{secret} in {why}");
            }
        }
    }
}
