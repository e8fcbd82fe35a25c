//! `empty_output`: did the model answer with nothing?
//!
//! Fails when output content was captured but holds no text and no tool call (whitespace counts
//! as empty). Spans without captured output are `skipped: no content`, not passes.

use serde::{Deserialize, Serialize};

use crate::evaluator::{Evaluator, Outcome};
use crate::scorers::registry::Builtin;
use crate::span::GenAiSpan;

/// Configuration of `empty_output` (no options yet; unknown keys are rejected).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyOutputConfig {}

impl Builtin for EmptyOutputConfig {
    const TYPE: &'static str = "empty_output";

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(EmptyOutput))
    }
}

/// The `empty_output` scorer.
#[derive(Debug)]
pub struct EmptyOutput;

impl Evaluator for EmptyOutput {
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome {
        let Some(text) = span.output_text() else {
            return Outcome::no_content();
        };
        if !text.trim().is_empty() {
            return Outcome::check(true, "non_empty", "the answer has text");
        }
        if span.tool_calls().next().is_some() {
            return Outcome::check(true, "non_empty", "the answer is a tool call");
        }
        Outcome::check(
            false,
            "empty",
            "the model returned no text and no tool call",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluator::SkipReason;
    use crate::scorers::testing::{chat, s, span, view};

    #[test]
    fn empty_blank_tool_call_and_uncaptured() {
        assert!(
            !EmptyOutput
                .evaluate(&view(&chat("  \n")))
                .score()
                .unwrap()
                .passed
        );
        assert!(
            EmptyOutput
                .evaluate(&view(&chat("ok")))
                .score()
                .unwrap()
                .passed
        );
        let tool = span(vec![
            s("gen_ai.operation.name", "chat"),
            s(
                "gen_ai.output.messages",
                r#"[{"role":"assistant","parts":[{"type":"tool_call","name":"f","arguments":{}}]}]"#,
            ),
        ]);
        assert!(EmptyOutput.evaluate(&view(&tool)).score().unwrap().passed);
        let meta = span(vec![s("gen_ai.operation.name", "chat")]);
        assert!(matches!(
            EmptyOutput.evaluate(&view(&meta)),
            Outcome::Skipped {
                reason: SkipReason::NoContent,
                ..
            }
        ));
    }
}
