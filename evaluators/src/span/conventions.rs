//! Where each canonical field lives in each convention: the mapping from attribute keys to the
//! canonical GenAI view, kept as data.
//!
//! Supporting a new instrumentation is meant to be a new row here, not a new code path. Three
//! tables drive the view:
//! - [`SCALARS`]: exact attribute keys, each feeding one [`Slot`]. Rows of the same slot are listed
//!   in order of preference (current OTel GenAI first, then older spellings, then OpenInference,
//!   traceAI and OpenLLMetry); the view keeps the most preferred key present on a span.
//! - [`LISTS`]: prefixes of flattened lists (`llm.input_messages.0.message.role`), each feeding one
//!   [`List`] with a rank; only the best-ranked source of a list is read, so conventions never mix.
//! - [`KIND_VALUES`] and [`FINISH_REASONS`]: the vocabularies of span kinds and finish reasons.
//!
//! Sources: `shared/CONVENTIONS.md` (OTel GenAI current and older, OpenInference, traceAI,
//! OpenLLMetry) and the corpus of real exports in `tests/fixtures/corpus/`.

use std::collections::HashMap;

use xxhash_rust::xxh3::Xxh3DefaultBuilder;

/// The indexes below are looked up once per attribute of every span read: with the standard
/// library's SipHash, hashing the keys was 2% of a worker's time (`perf` during bench-e2e).
/// SipHash guards a map that untrusted keys are *inserted* into against flooding; these maps are
/// built once from constants and only looked up, so a fast hash loses nothing.
type KeyIndex<V> = HashMap<&'static str, V, Xxh3DefaultBuilder>;
use std::sync::LazyLock;

use super::{FinishReason, OperationKind};

/// A canonical scalar field, read from whichever convention's key a span carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Slot {
    Kind,
    Provider,
    RequestModel,
    ResponseModel,
    InputTokens,
    OutputTokens,
    TotalTokens,
    CacheReadTokens,
    CacheWriteTokens,
    ReasoningTokens,
    FinishReasons,
    ResponseId,
    SessionId,
    UserId,
    ConversationId,
    PromptName,
    PromptVersion,
    ErrorType,
    AgentName,
    /// Free-form metadata (OpenInference `metadata`, a JSON object as a string).
    Metadata,
    /// Tags (OpenInference `tag.tags`, a list of strings).
    Tags,
    /// `gen_ai.input.messages` as one JSON string or structured value.
    InputMessages,
    /// `gen_ai.output.messages` as one JSON string or structured value.
    OutputMessages,
    SystemInstructions,
    ToolDefinitions,
    RetrievalDocuments,
    RetrievalQuery,
    ToolName,
    ToolCallId,
    ToolArguments,
    ToolResult,
    ToolSchema,
    OutputType,
    /// A `response_format` named on its own (`json_object`, `json_schema`).
    ResponseFormat,
    StructuredOutputSchema,
    /// Request parameters as a JSON object (may hold `response_format`, `model`).
    RequestParameters,
    InputValue,
    InputMimeType,
    OutputValue,
    OutputMimeType,
}

/// How many [`Slot`]s there are: the size of a view's slot array.
pub(crate) const SLOT_COUNT: usize = Slot::OutputMimeType as usize + 1;

/// Exact attribute keys and the slot each feeds, most preferred first within a slot.
pub(crate) static SCALARS: &[(&str, Slot)] = &[
    // Operation kind: the value is looked up in KIND_VALUES.
    ("gen_ai.operation.name", Slot::Kind),
    ("openinference.span.kind", Slot::Kind),
    ("gen_ai.span.kind", Slot::Kind),
    ("fi.span.kind", Slot::Kind),
    ("llm.request.type", Slot::Kind),
    ("traceloop.span.kind", Slot::Kind),
    // Provider.
    ("gen_ai.provider.name", Slot::Provider),
    ("gen_ai.system", Slot::Provider),
    ("llm.provider", Slot::Provider),
    ("llm.system", Slot::Provider),
    // Models. OpenInference's `llm.model_name` is the model that answered.
    ("gen_ai.request.model", Slot::RequestModel),
    ("llm.request.model", Slot::RequestModel),
    ("gen_ai.response.model", Slot::ResponseModel),
    ("llm.model_name", Slot::ResponseModel),
    // OpenInference and traceAI embedding spans.
    ("embedding.model_name", Slot::ResponseModel),
    ("llm.response.model", Slot::ResponseModel),
    // Token usage.
    ("gen_ai.usage.input_tokens", Slot::InputTokens),
    ("gen_ai.usage.prompt_tokens", Slot::InputTokens),
    ("llm.token_count.prompt", Slot::InputTokens),
    ("llm.usage.prompt_tokens", Slot::InputTokens),
    ("gen_ai.usage.output_tokens", Slot::OutputTokens),
    ("gen_ai.usage.completion_tokens", Slot::OutputTokens),
    ("llm.token_count.completion", Slot::OutputTokens),
    ("llm.usage.completion_tokens", Slot::OutputTokens),
    ("gen_ai.usage.total_tokens", Slot::TotalTokens),
    ("llm.token_count.total", Slot::TotalTokens),
    ("llm.usage.total_tokens", Slot::TotalTokens),
    (
        "gen_ai.usage.cache_read.input_tokens",
        Slot::CacheReadTokens,
    ),
    (
        "gen_ai.usage.cache_read_input_tokens",
        Slot::CacheReadTokens,
    ),
    (
        "llm.token_count.prompt_details.cache_read",
        Slot::CacheReadTokens,
    ),
    (
        "gen_ai.usage.cache_write.input_tokens",
        Slot::CacheWriteTokens,
    ),
    (
        "gen_ai.usage.cache_creation.input_tokens",
        Slot::CacheWriteTokens,
    ),
    (
        "gen_ai.usage.cache_creation_input_tokens",
        Slot::CacheWriteTokens,
    ),
    (
        "llm.token_count.prompt_details.cache_write",
        Slot::CacheWriteTokens,
    ),
    (
        "gen_ai.usage.reasoning.output_tokens",
        Slot::ReasoningTokens,
    ),
    ("gen_ai.usage.reasoning_tokens", Slot::ReasoningTokens),
    (
        "llm.token_count.completion_details.reasoning",
        Slot::ReasoningTokens,
    ),
    // Response.
    ("gen_ai.response.finish_reasons", Slot::FinishReasons),
    ("llm.finish_reason", Slot::FinishReasons),
    ("gen_ai.response.id", Slot::ResponseId),
    // Who and which conversation.
    ("session.id", Slot::SessionId),
    ("gen_ai.session.id", Slot::SessionId),
    (
        "traceloop.association.properties.session_id",
        Slot::SessionId,
    ),
    ("user.id", Slot::UserId),
    ("enduser.id", Slot::UserId),
    ("gen_ai.user.id", Slot::UserId),
    ("traceloop.association.properties.user_id", Slot::UserId),
    ("gen_ai.conversation.id", Slot::ConversationId),
    // Prompt identity.
    ("gen_ai.prompt.name", Slot::PromptName),
    ("llm.prompt_template.name", Slot::PromptName),
    ("traceloop.prompt.key", Slot::PromptName),
    ("prompt.name", Slot::PromptName),
    ("gen_ai.prompt.version", Slot::PromptVersion),
    ("llm.prompt_template.version", Slot::PromptVersion),
    ("traceloop.prompt.version", Slot::PromptVersion),
    ("prompt.version", Slot::PromptVersion),
    ("error.type", Slot::ErrorType),
    ("gen_ai.agent.name", Slot::AgentName),
    ("agent.name", Slot::AgentName),
    ("metadata", Slot::Metadata),
    ("tag.tags", Slot::Tags),
    // Content as whole JSON documents (current OTel GenAI, recent OpenLLMetry).
    ("gen_ai.input.messages", Slot::InputMessages),
    ("gen_ai.output.messages", Slot::OutputMessages),
    ("gen_ai.system_instructions", Slot::SystemInstructions),
    ("gen_ai.tool.definitions", Slot::ToolDefinitions),
    ("gen_ai.retrieval.documents", Slot::RetrievalDocuments),
    ("gen_ai.retrieval.query.text", Slot::RetrievalQuery),
    // Tool execution.
    ("gen_ai.tool.name", Slot::ToolName),
    ("tool.name", Slot::ToolName),
    ("gen_ai.tool.call.id", Slot::ToolCallId),
    ("tool.id", Slot::ToolCallId),
    ("tool_call.id", Slot::ToolCallId),
    ("gen_ai.tool.call.arguments", Slot::ToolArguments),
    ("gen_ai.tool.call.result", Slot::ToolResult),
    ("tool.parameters", Slot::ToolSchema),
    ("tool.json_schema", Slot::ToolSchema),
    // Structured output requested.
    ("gen_ai.output.type", Slot::OutputType),
    (
        "gen_ai.openai.request.response_format",
        Slot::ResponseFormat,
    ),
    ("gen_ai.request.response_format", Slot::ResponseFormat),
    (
        "gen_ai.request.structured_output_schema",
        Slot::StructuredOutputSchema,
    ),
    ("llm.invocation_parameters", Slot::RequestParameters),
    ("gen_ai.request.parameters", Slot::RequestParameters),
    // Generic input and output (OpenInference, traceAI, Traceloop).
    ("input.value", Slot::InputValue),
    ("traceloop.entity.input", Slot::InputValue),
    ("input.mime_type", Slot::InputMimeType),
    ("output.value", Slot::OutputValue),
    ("traceloop.entity.output", Slot::OutputValue),
    ("output.mime_type", Slot::OutputMimeType),
];

/// A canonical list read from flattened `prefix.N.rest` attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum List {
    InputMessages,
    OutputMessages,
    Documents,
    Tools,
}

/// Prefixes of flattened lists, the list each feeds and the source's rank (lower is preferred).
///
/// The JSON document slots ([`Slot::InputMessages`] …) are preferred to every flattened source,
/// and span events come after all of them.
pub(crate) static LISTS: &[(&str, List, u8)] = &[
    ("llm.input_messages", List::InputMessages, 1),
    ("gen_ai.input.messages", List::InputMessages, 1), // traceAI
    ("gen_ai.prompt", List::InputMessages, 2),         // OpenLLMetry, OpenLIT (older)
    ("llm.prompts", List::InputMessages, 3),           // OpenInference legacy
    ("llm.output_messages", List::OutputMessages, 1),
    ("gen_ai.output.messages", List::OutputMessages, 1), // traceAI
    ("gen_ai.completion", List::OutputMessages, 2),      // OpenLLMetry, OpenLIT (older)
    ("llm.choices", List::OutputMessages, 3),            // OpenInference legacy
    ("retrieval.documents", List::Documents, 1),
    ("reranker.output_documents", List::Documents, 2),
    ("llm.tools", List::Tools, 1),
    ("gen_ai.tool.definitions", List::Tools, 1), // traceAI
    ("llm.request.functions", List::Tools, 2),   // OpenLLMetry (older)
];

/// A field of one item of a flattened list, after the `prefix.N.` part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ItemField {
    Role,
    Content,
    Name,
    ToolCallId,
    FinishReason,
    /// `contents.M.message_content.type`
    PartType,
    /// `contents.M.message_content.text`
    PartText,
    /// `tool_calls.K.…id`
    CallId,
    /// `tool_calls.K.…name`
    CallName,
    /// `tool_calls.K.…arguments`
    CallArguments,
    DocId,
    DocContent,
    DocScore,
    DocMetadata,
    /// A whole tool definition as JSON (OpenAI `{type, function: {…}}` or `{name, parameters}`).
    ToolJson,
    ToolName,
    ToolDescription,
    ToolParameters,
}

/// The fields of a flattened item, by the rest of the key after `prefix.N.`. Nested lists
/// (`message.contents.M.…`, `message.tool_calls.K.…`) are keyed with `#` for their index.
pub(crate) static ITEM_FIELDS: &[(&str, ItemField)] = &[
    ("message.role", ItemField::Role),
    ("role", ItemField::Role),
    ("message.content", ItemField::Content),
    ("content", ItemField::Content),
    ("prompt.text", ItemField::Content),
    ("completion.text", ItemField::Content),
    ("message.name", ItemField::Name),
    ("name", ItemField::Name),
    ("message.tool_call_id", ItemField::ToolCallId),
    ("tool_call_id", ItemField::ToolCallId),
    ("message.finish_reason", ItemField::FinishReason),
    ("finish_reason", ItemField::FinishReason),
    (
        "message.contents.#.message_content.type",
        ItemField::PartType,
    ),
    (
        "message.contents.#.message_content.text",
        ItemField::PartText,
    ),
    ("message.tool_calls.#.tool_call.id", ItemField::CallId),
    (
        "message.tool_calls.#.tool_call.function.name",
        ItemField::CallName,
    ),
    (
        "message.tool_calls.#.tool_call.function.arguments",
        ItemField::CallArguments,
    ),
    ("tool_calls.#.id", ItemField::CallId),
    ("tool_calls.#.name", ItemField::CallName),
    ("tool_calls.#.arguments", ItemField::CallArguments),
    ("document.id", ItemField::DocId),
    ("document.content", ItemField::DocContent),
    ("document.score", ItemField::DocScore),
    ("document.metadata", ItemField::DocMetadata),
    ("id", ItemField::DocId),
    ("score", ItemField::DocScore),
    ("metadata", ItemField::DocMetadata),
    ("tool.json_schema", ItemField::ToolJson),
    ("tool.name", ItemField::ToolName),
    ("tool.description", ItemField::ToolDescription),
    ("description", ItemField::ToolDescription),
    ("tool.parameters", ItemField::ToolParameters),
    ("parameters", ItemField::ToolParameters),
];

/// Span-kind values of every convention (compared case-insensitively).
pub(crate) static KIND_VALUES: &[(&str, OperationKind)] = &[
    ("chat", OperationKind::Chat),
    ("text_completion", OperationKind::Chat),
    ("generate_content", OperationKind::Chat),
    ("completion", OperationKind::Chat),
    ("llm", OperationKind::Chat),
    ("embeddings", OperationKind::Embeddings),
    ("embedding", OperationKind::Embeddings),
    ("retrieval", OperationKind::Retrieval),
    ("retriever", OperationKind::Retrieval),
    ("reranker", OperationKind::Retrieval),
    ("rerank", OperationKind::Retrieval),
    ("execute_tool", OperationKind::Tool),
    ("tool", OperationKind::Tool),
    ("invoke_agent", OperationKind::Agent),
    ("create_agent", OperationKind::Agent),
    ("agent", OperationKind::Agent),
    ("invoke_workflow", OperationKind::Agent),
    ("workflow", OperationKind::Agent),
    ("guardrail", OperationKind::Guardrail),
    ("evaluator", OperationKind::Evaluator),
    ("evaluation", OperationKind::Evaluator),
    ("chain", OperationKind::Other),
    ("task", OperationKind::Other),
    ("prompt", OperationKind::Other),
    ("unknown", OperationKind::Other),
];

/// Finish reasons of every provider and convention, by their canonical meaning (compared
/// case-insensitively). Anything else is kept as [`FinishReason::Other`].
pub(crate) static FINISH_REASONS: &[(&str, FinishReason<'static>)] = &[
    ("stop", FinishReason::Stop),
    ("end_turn", FinishReason::Stop),
    ("stop_sequence", FinishReason::Stop),
    ("eos", FinishReason::Stop),
    ("complete", FinishReason::Stop),
    ("finish_reason_stop", FinishReason::Stop),
    ("length", FinishReason::Length),
    ("max_tokens", FinishReason::Length),
    ("model_length", FinishReason::Length),
    ("max_output_tokens", FinishReason::Length),
    ("content_filter", FinishReason::ContentFilter),
    ("content_filtered", FinishReason::ContentFilter),
    ("safety", FinishReason::ContentFilter),
    ("recitation", FinishReason::ContentFilter),
    ("blocklist", FinishReason::ContentFilter),
    ("prohibited_content", FinishReason::ContentFilter),
    ("spii", FinishReason::ContentFilter),
    ("refusal", FinishReason::ContentFilter),
    ("guardrail_intervened", FinishReason::ContentFilter),
    ("tool_calls", FinishReason::ToolCall),
    ("tool_call", FinishReason::ToolCall),
    ("tool_use", FinishReason::ToolCall),
    ("function_call", FinishReason::ToolCall),
    ("error", FinishReason::Error),
];

/// Deprecated GenAI span events that carry one message each, and the role they imply.
pub(crate) static MESSAGE_EVENTS: &[(&str, &str)] = &[
    ("gen_ai.system.message", "system"),
    ("gen_ai.user.message", "user"),
    ("gen_ai.assistant.message", "assistant"),
    ("gen_ai.tool.message", "tool"),
];

/// The event carrying one output choice, with `message`, `finish_reason` and `index` attributes.
pub(crate) const CHOICE_EVENT: &str = "gen_ai.choice";

/// Events of the oldest GenAI conventions, carrying the whole prompt or completion as JSON.
pub(crate) static CONTENT_EVENTS: &[(&str, &str, List)] = &[
    (
        "gen_ai.content.prompt",
        "gen_ai.prompt",
        List::InputMessages,
    ),
    (
        "gen_ai.content.completion",
        "gen_ai.completion",
        List::OutputMessages,
    ),
];

/// Exact keys to (slot, rank within the slot): built once from [`SCALARS`].
pub(crate) static SCALAR_INDEX: LazyLock<KeyIndex<(Slot, u8)>> = LazyLock::new(|| {
    let mut rank = [0u8; SLOT_COUNT];
    SCALARS
        .iter()
        .map(|&(key, slot)| {
            let r = rank[slot as usize];
            rank[slot as usize] += 1;
            (key, (slot, r))
        })
        .collect()
});

/// List prefixes to (list, rank): built once from [`LISTS`].
pub(crate) static LIST_INDEX: LazyLock<KeyIndex<(List, u8)>> =
    LazyLock::new(|| LISTS.iter().map(|&(p, l, r)| (p, (l, r))).collect());

/// Item fields by the rest of a flattened key: built once from [`ITEM_FIELDS`].
pub(crate) static ITEM_INDEX: LazyLock<KeyIndex<ItemField>> =
    LazyLock::new(|| ITEM_FIELDS.iter().copied().collect());

/// The operation kind a convention's kind value names, if known.
pub(crate) fn kind_of(value: &str) -> Option<OperationKind> {
    KIND_VALUES
        .iter()
        .find(|(v, _)| v.eq_ignore_ascii_case(value))
        .map(|&(_, k)| k)
}

/// Splits a flattened key at its first numeric segment: `llm.input_messages.3.message.role`
/// gives `("llm.input_messages", 3, "message.role")`. Keys without one give `None`.
pub(crate) fn split_indexed(key: &str) -> Option<(&str, u32, &str)> {
    let bytes = key.as_bytes();
    let mut start = 0;
    while let Some(dot) = bytes[start..].iter().position(|&b| b == b'.') {
        let seg_start = start + dot + 1;
        let seg_len = bytes[seg_start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let seg_end = seg_start + seg_len;
        if seg_len > 0 && (seg_end == bytes.len() || bytes[seg_end] == b'.') {
            let index = key[seg_start..seg_end].parse().ok()?;
            let rest = key.get(seg_end + 1..).unwrap_or("");
            return Some((&key[..seg_start - 1], index, rest));
        }
        start = seg_start;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_indexed_finds_the_first_numeric_segment() {
        assert_eq!(
            split_indexed("llm.input_messages.3.message.role"),
            Some(("llm.input_messages", 3, "message.role"))
        );
        assert_eq!(
            split_indexed("gen_ai.output.messages.0.message.tool_calls.1.tool_call.id"),
            Some((
                "gen_ai.output.messages",
                0,
                "message.tool_calls.1.tool_call.id"
            ))
        );
        assert_eq!(split_indexed("tag.tags.2"), Some(("tag.tags", 2, "")));
        assert_eq!(split_indexed("gen_ai.usage.input_tokens"), None);
        assert_eq!(split_indexed("a.1b.c"), None);
        assert_eq!(split_indexed("a.99999999999.c"), None);
    }

    #[test]
    fn every_slot_has_a_key_and_no_key_is_listed_twice() {
        assert_eq!(
            SCALAR_INDEX.len(),
            SCALARS.len(),
            "duplicate key in SCALARS"
        );
        for slot in 0..SLOT_COUNT {
            assert!(
                SCALARS.iter().any(|&(_, s)| s as usize == slot),
                "slot {slot} has no key"
            );
        }
        assert_eq!(LIST_INDEX.len(), LISTS.len(), "duplicate prefix in LISTS");
        assert_eq!(
            ITEM_INDEX.len(),
            ITEM_FIELDS.len(),
            "duplicate field in ITEM_FIELDS"
        );
    }
}
