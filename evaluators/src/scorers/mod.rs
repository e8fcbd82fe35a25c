//! The built-in scorers. One file per scorer, each holding its configuration (with
//! `deny_unknown_fields`), a `build` step that validates and compiles once, the runtime scorer,
//! its registration ([`registry::Builtin`], implemented by the configuration) and its tests.
//!
//! # To add a scorer
//!
//! 1. Write `scorers/my_scorer.rs`: a documented `MyScorerConfig` (`Deserialize`, `Serialize`,
//!    `Debug`, `Clone`, `PartialEq`, `#[serde(deny_unknown_fields)]`), the scorer implementing
//!    [`Evaluator`](crate::evaluator::Evaluator) (override `needs_trace` if it judges whole
//!    traces), tests, and its registration:
//!    ```text
//!    impl Builtin for MyScorerConfig {
//!        const TYPE: &'static str = "my_scorer";
//!        // Optional: DEFAULT_KINDS (default `[chat]`), VERSION (default 1), EXAMPLE (default
//!        // `{}`: the smallest options that build, when some option is required).
//!        fn build(&self) -> Result<Box<dyn Evaluator>, String> {
//!            Ok(Box::new(MyScorer::build(self)?))
//!        }
//!    }
//!    ```
//! 2. Declare it below (`pub mod my_scorer;`) and add one line to the `builtins!` list:
//!    `MyScorer(my_scorer::MyScorerConfig),`.
//!
//! Nothing else names the types: configuration reads `type: my_scorer` through [`BUILTINS`], and
//! the registry's tests build every listed type from its `EXAMPLE`. Document it in the table of
//! evaluators in `docs/evaluators.md` and its options in `docs/configuration.md` (the test
//! `tests/docs.rs` fails until they are listed there).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::span::GenAiSpan;

pub mod agent_loop;
pub mod citations;
pub mod cost;
pub mod empty_output;
pub mod finish_reason;
pub mod grounding;
pub mod json_schema;
pub mod json_valid;
pub mod judge;
pub mod latency;
pub mod length;
pub mod pii;
pub mod refusal;
pub mod registry;
pub mod schema;
pub mod script;
pub mod text_match;
pub mod tool_args;

// The built-in scorers, one line each: `Variant(path::ToConfig),`. Generates `EvaluatorKind` and
// `BUILTINS`; the order is the one configuration errors list the types in.
registry::builtins! {
    Refusal(refusal::RefusalConfig),
    Pii(pii::PiiConfig),
    JsonValid(json_valid::JsonValidConfig),
    JsonSchema(json_schema::JsonSchemaConfig),
    ToolArgs(tool_args::ToolArgsConfig),
    Citations(citations::CitationsConfig),
    Grounding(grounding::GroundingConfig),
    AgentLoop(agent_loop::AgentLoopConfig),
    Rhai(script::ScriptConfig),
    LlmJudge(Box<judge::LlmJudgeConfig>),
    Regex(text_match::RegexConfig),
    Contains(text_match::ContainsConfig),
    NotContains(text_match::NotContainsConfig),
    Length(length::LengthConfig),
    Latency(latency::LatencyConfig),
    FinishReason(finish_reason::FinishReasonConfig),
    EmptyOutput(empty_output::EmptyOutputConfig),
    Cost(cost::CostConfig),
}

/// Which text of a span a text scorer reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TextSource {
    /// The model's answer (text parts of the output messages).
    #[default]
    Output,
    /// Everything sent to the model (text parts of the input messages).
    Input,
    /// The last user message: usually the question.
    LastUserMessage,
}

impl TextSource {
    /// The text, or `None` when the instrumentation did not capture it.
    pub fn read<'s>(self, span: &'s GenAiSpan<'_>) -> Option<Cow<'s, str>> {
        match self {
            TextSource::Output => span.output_text(),
            TextSource::Input => span.input_text(),
            TextSource::LastUserMessage => span.last_user_text(),
        }
    }

    /// The source's name, for explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            TextSource::Output => "output",
            TextSource::Input => "input",
            TextSource::LastUserMessage => "last user message",
        }
    }
}

/// The most characters of a name read from a span (a tool, a model, a finish reason) shown in
/// an explanation. Names are not what scorers flag, but they are the span's text: a hostile or
/// broken instrumentation can make one megabytes long.
pub(crate) const MAX_NAME_CHARS: usize = 64;

/// Truncates text for an explanation, on a character boundary, with an ellipsis when cut.
pub(crate) fn excerpt(text: &str, max_chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
    }
}

/// The prefix of `text` holding at most `max_chars` characters.
pub(crate) fn prefix_chars(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        None => text,
        Some((cut, _)) => &text[..cut],
    }
}

/// Compiles a user-supplied regular expression, naming the option in the error.
pub(crate) fn compile_regex(option: &str, pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 22)
        .build()
        .map_err(|e| format!("{option}: invalid regular expression `{pattern}`: {e}"))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builds spans for scorer tests from attribute lists.

    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::trace::v1::Span;

    use crate::span::{GenAiSpan, ResourceView};

    /// A span with the given attributes (strings, or typed values via [`attr`]).
    pub fn span(attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![7; 16],
            span_id: vec![9; 8],
            name: "chat test".into(),
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 3_500_000_000,
            attributes,
            ..Default::default()
        }
    }

    /// A string attribute.
    pub fn s(key: &str, value: &str) -> KeyValue {
        attr(key, Value::StringValue(value.into()))
    }

    /// An integer attribute.
    pub fn i(key: &str, value: i64) -> KeyValue {
        attr(key, Value::IntValue(value))
    }

    /// Any attribute.
    pub fn attr(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    /// A chat span whose answer is `answer` (OTel GenAI current form).
    pub fn chat(answer: &str) -> Span {
        let output = serde_json::json!([{
            "role": "assistant",
            "parts": [{"type": "text", "content": answer}],
            "finish_reason": "stop"
        }]);
        span(vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.request.model", "gpt-4o-mini"),
            s("gen_ai.output.messages", &output.to_string()),
        ])
    }

    /// Views a span with no resource.
    pub fn view(span: &Span) -> GenAiSpan<'_> {
        GenAiSpan::new(span, ResourceView::default(), None)
    }
}
