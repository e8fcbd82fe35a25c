//! `finish_reason`: did the model stop for a bad reason?
//!
//! Fails when any finish reason is one of `fail_on` (default: `length` — the answer was cut by
//! the token limit — and `content_filter`). Finish reasons are normalised across providers
//! (`max_tokens`, `MAX_TOKENS` and `length` are all `length`). The label is the canonical reason,
//! or `other` for values no convention table knows, so it stays low-cardinality.

use serde::{Deserialize, Serialize};

use super::{MAX_NAME_CHARS, excerpt};
use crate::evaluator::{Evaluator, Outcome};
use crate::scorers::registry::Builtin;
use crate::span::{FinishReason, GenAiSpan};

/// Configuration of `finish_reason`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FinishReasonConfig {
    /// Canonical reasons that fail: any of `stop`, `length`, `content_filter`, `tool_call`, `error`.
    #[serde(default = "default_fail_on")]
    pub fail_on: Vec<String>,
}

impl Builtin for FinishReasonConfig {
    const TYPE: &'static str = "finish_reason";

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(FinishReasonCheck::build(self)?))
    }
}

fn default_fail_on() -> Vec<String> {
    vec!["length".into(), "content_filter".into()]
}

impl Default for FinishReasonConfig {
    fn default() -> Self {
        FinishReasonConfig {
            fail_on: default_fail_on(),
        }
    }
}

const CANONICAL: [&str; 5] = ["stop", "length", "content_filter", "tool_call", "error"];

/// The `finish_reason` scorer.
#[derive(Debug)]
pub struct FinishReasonCheck {
    fail_on: Vec<String>,
}

impl FinishReasonCheck {
    /// Validates the reasons.
    pub fn build(config: &FinishReasonConfig) -> Result<FinishReasonCheck, String> {
        for r in &config.fail_on {
            if !CANONICAL.contains(&r.as_str()) {
                return Err(format!(
                    "fail_on: unknown finish reason `{r}`, expected one of {}",
                    CANONICAL.join(", ")
                ));
            }
        }
        Ok(FinishReasonCheck {
            fail_on: config.fail_on.clone(),
        })
    }
}

impl Evaluator for FinishReasonCheck {
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome {
        let reasons = span.finish_reasons();
        if reasons.is_empty() {
            return Outcome::not_applicable("no finish reason recorded");
        }
        let bad = reasons
            .iter()
            .find(|r| self.fail_on.iter().any(|f| f == r.as_str()));
        let shown = bad.unwrap_or(&reasons[0]);
        let label: &'static str = match shown {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::ToolCall => "tool_call",
            FinishReason::Error => "error",
            FinishReason::Other(_) => "other",
        };
        let all: Vec<_> = reasons
            .iter()
            .map(|r| excerpt(r.as_str(), MAX_NAME_CHARS))
            .collect();
        match bad {
            Some(r) => Outcome::check(
                false,
                label,
                format!(
                    "finished with `{}` ({})",
                    excerpt(r.as_str(), MAX_NAME_CHARS),
                    all.join(", ")
                ),
            ),
            None => Outcome::check(true, label, format!("finished with {}", all.join(", "))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluator::SkipReason;
    use crate::scorers::testing::{attr, s, span, view};
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, any_value::Value};

    fn with_reasons(reasons: &[&str]) -> opentelemetry_proto::tonic::trace::v1::Span {
        let values = reasons
            .iter()
            .map(|r| AnyValue {
                value: Some(Value::StringValue(r.to_string())),
            })
            .collect();
        span(vec![
            s("gen_ai.operation.name", "chat"),
            attr(
                "gen_ai.response.finish_reasons",
                Value::ArrayValue(ArrayValue { values }),
            ),
        ])
    }

    #[test]
    fn normalises_provider_spellings() {
        let check = FinishReasonCheck::build(&FinishReasonConfig::default()).unwrap();
        for (raw, passed, label) in [
            ("stop", true, "stop"),
            ("end_turn", true, "stop"),
            ("max_tokens", false, "length"),
            ("MAX_TOKENS", false, "length"),
            ("SAFETY", false, "content_filter"),
            ("tool_use", true, "tool_call"),
            ("weird_vendor_reason", true, "other"),
        ] {
            let sp = with_reasons(&[raw]);
            let score = check.evaluate(&view(&sp)).score().cloned().unwrap();
            assert_eq!(
                (score.passed, score.label.as_ref()),
                (passed, label),
                "{raw}"
            );
        }
        let mixed = with_reasons(&["stop", "length"]);
        assert!(!check.evaluate(&view(&mixed)).score().unwrap().passed);
    }

    #[test]
    fn missing_reasons_are_not_applicable_and_config_is_checked() {
        let check = FinishReasonCheck::build(&FinishReasonConfig::default()).unwrap();
        let sp = span(vec![s("gen_ai.operation.name", "chat")]);
        assert!(matches!(
            check.evaluate(&view(&sp)),
            Outcome::Skipped {
                reason: SkipReason::NotApplicable,
                ..
            }
        ));
        assert!(
            FinishReasonCheck::build(&FinishReasonConfig {
                fail_on: vec!["lenght".into()]
            })
            .is_err()
        );
    }
}
