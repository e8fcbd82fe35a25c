//! One canonical view of a GenAI span, whatever convention its instrumentation followed.
//!
//! [`GenAiSpan`] borrows from a decoded `ExportTraceServiceRequest`: building it is one pass over
//! the span's attributes that records *references* to the attributes the view needs (see
//! [`conventions`] for which keys those are). Resource attributes are read once per
//! `ResourceSpans` into a [`ResourceView`] shared by the spans under it. Message content —
//! the costly part, which JSON-encoded conventions have to parse — is assembled on first use and
//! cached, so evaluators that only need usage or latency never pay for it.

mod content;
pub(crate) mod conventions;

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};
use serde::Serialize;

use crate::otlp::{self, types::ExportTraceServiceRequest};
pub use content::{Content, Document, Message, Part, ToolCall, ToolDefinition};
use conventions::{LIST_INDEX, List, SCALAR_INDEX, SLOT_COUNT, Slot};

/// What a span does, in the vocabulary shared by every convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// A model inference: chat, text completion, content generation.
    Chat,
    /// An embeddings call.
    Embeddings,
    /// A retrieval or rerank step.
    Retrieval,
    /// A tool execution.
    Tool,
    /// An agent or workflow invocation.
    Agent,
    /// A guardrail check.
    Guardrail,
    /// An evaluation (including evalstream's own evaluator spans).
    Evaluator,
    /// Anything else (chains, tasks, plain application spans).
    Other,
}

impl OperationKind {
    /// The kind's name as used in configuration and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Chat => "chat",
            OperationKind::Embeddings => "embeddings",
            OperationKind::Retrieval => "retrieval",
            OperationKind::Tool => "tool",
            OperationKind::Agent => "agent",
            OperationKind::Guardrail => "guardrail",
            OperationKind::Evaluator => "evaluator",
            OperationKind::Other => "other",
        }
    }
}

/// Why a model stopped generating, normalised across providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason<'a> {
    /// Natural end of the answer or a stop sequence.
    Stop,
    /// The token limit cut the answer.
    Length,
    /// A provider's content filter or safety system stopped the answer.
    ContentFilter,
    /// The model called a tool.
    ToolCall,
    /// The provider reported an error.
    Error,
    /// A value no convention table knows, kept as written.
    Other(&'a str),
}

impl<'a> FinishReason<'a> {
    /// Normalises a provider's finish reason.
    pub fn parse(raw: &'a str) -> FinishReason<'a> {
        conventions::FINISH_REASONS
            .iter()
            .find(|(v, _)| v.eq_ignore_ascii_case(raw))
            .map_or(FinishReason::Other(raw), |&(_, r)| r)
    }

    /// The canonical name (`stop`, `length`, `content_filter`, `tool_call`, `error`) or the raw value.
    pub fn as_str(&self) -> &'a str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::ToolCall => "tool_call",
            FinishReason::Error => "error",
            FinishReason::Other(s) => s,
        }
    }
}

/// Token counts of one inference, each as reported (absent when the instrumentation did not
/// record it). Input includes cached tokens and output includes reasoning tokens, as in OTel
/// GenAI; the cost scorer relies on that.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TokenUsage {
    /// Prompt tokens, cached ones included.
    pub input: Option<u64>,
    /// Generated tokens, reasoning ones included.
    pub output: Option<u64>,
    /// Total, when reported separately.
    pub total: Option<u64>,
    /// Input tokens served from the provider's prompt cache.
    pub cache_read: Option<u64>,
    /// Input tokens written to the provider's prompt cache.
    pub cache_write: Option<u64>,
    /// Output tokens spent on reasoning.
    pub reasoning: Option<u64>,
}

/// The span's status, as OTLP reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanStatus<'a> {
    /// Unset, ok or error.
    pub code: StatusCode,
    /// The status message (empty when none).
    pub message: &'a str,
}

/// What the application asked the model to output as JSON, if anything.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonRequest<'a> {
    /// Nothing says JSON was requested.
    NotRequested,
    /// JSON was requested (`gen_ai.output.type=json`, `response_format=json_object`).
    Requested,
    /// JSON matching a schema was requested; the schema as JSON text.
    Schema(Cow<'a, str>),
}

/// An attribute value as text: strings as they are, anything else as its JSON text (`42`,
/// `true`, `["a","b"]`). Used to compare attributes with configured values.
pub fn attribute_text(value: &AnyValue) -> Cow<'_, str> {
    content::json_text(value)
}

/// The resource attributes evaluators and metrics segment by, read once per `ResourceSpans`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourceView<'a> {
    /// All resource attributes, for lookups by key.
    pub attributes: &'a [KeyValue],
    /// `service.name`.
    pub service_name: Option<&'a str>,
    /// `service.version`.
    pub service_version: Option<&'a str>,
    /// `deployment.environment.name`, or the older `deployment.environment`.
    pub environment: Option<&'a str>,
}

impl<'a> ResourceView<'a> {
    /// Reads the well-known attributes of a resource.
    pub fn new(resource: Option<&'a Resource>) -> ResourceView<'a> {
        let attributes = resource.map_or(&[][..], |r| &r.attributes[..]);
        let get = |key| otlp::find(attributes, key).and_then(otlp::as_str);
        ResourceView {
            attributes,
            service_name: get("service.name"),
            service_version: get("service.version"),
            environment: get("deployment.environment.name")
                .or_else(|| get("deployment.environment")),
        }
    }

    /// A resource attribute by key.
    pub fn attribute(&self, key: &str) -> Option<&'a AnyValue> {
        otlp::find(self.attributes, key)
    }
}

/// One attribute of a flattened list (`prefix.N.rest`), kept by reference until content is
/// assembled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlatEntry<'a> {
    pub list: List,
    pub rank: u8,
    pub index: u32,
    pub rest: &'a str,
    pub value: &'a AnyValue,
}

/// The canonical view of one span. Cheap to build; content is parsed on first use.
#[derive(Debug)]
pub struct GenAiSpan<'a> {
    span: &'a Span,
    resource: ResourceView<'a>,
    scope: Option<&'a InstrumentationScope>,
    kind: OperationKind,
    /// The most preferred attribute found for each slot.
    slots: [Option<&'a AnyValue>; SLOT_COUNT],
    /// Flattened list attributes, in span order.
    flat: Vec<FlatEntry<'a>>,
    content: OnceLock<Content<'a>>,
    /// The response id found in a response body (`output.value`), read on first use: the body
    /// can be large, and the id is asked for once per evaluation.
    body_response_id: OnceLock<Option<&'a str>>,
}

/// Every attribute key the view reads, with list indices written as `0`: the exact keys of all
/// conventions, and one example key for each field of each flattened list. For documentation and
/// for tests that generate spans.
pub fn known_attribute_keys() -> Vec<String> {
    let mut keys: Vec<String> = conventions::SCALARS
        .iter()
        .map(|(k, _)| k.to_string())
        .collect();
    for (prefix, _, _) in conventions::LISTS {
        for (rest, _) in conventions::ITEM_FIELDS {
            keys.push(format!("{prefix}.0.{}", rest.replace('#', "0")));
        }
    }
    keys
}

/// Iterates over every span of a request as a [`GenAiSpan`].
pub fn spans(request: &ExportTraceServiceRequest) -> impl Iterator<Item = GenAiSpan<'_>> {
    request.resource_spans.iter().flat_map(|rs| {
        let resource = ResourceView::new(rs.resource.as_ref());
        rs.scope_spans.iter().flat_map(move |ss| {
            ss.spans
                .iter()
                .map(move |span| GenAiSpan::new(span, resource, ss.scope.as_ref()))
        })
    })
}

impl<'a> GenAiSpan<'a> {
    /// Reads a span in one pass over its attributes.
    pub fn new(
        span: &'a Span,
        resource: ResourceView<'a>,
        scope: Option<&'a InstrumentationScope>,
    ) -> GenAiSpan<'a> {
        let mut slots = [None; SLOT_COUNT];
        let mut ranks = [u8::MAX; SLOT_COUNT];
        let mut kind: Option<(u8, OperationKind)> = None;
        let mut flat = Vec::new();
        for kv in &span.attributes {
            let Some(value) = kv.value.as_ref() else {
                continue;
            };
            if let Some(&(slot, rank)) = SCALAR_INDEX.get(kv.key.as_str()) {
                if slot == Slot::Kind {
                    let known = otlp::as_str(value).and_then(conventions::kind_of);
                    if let Some(k) = known
                        && kind.is_none_or(|(r, _)| rank < r)
                    {
                        kind = Some((rank, k));
                    }
                } else if rank < ranks[slot as usize] {
                    ranks[slot as usize] = rank;
                    slots[slot as usize] = Some(value);
                }
            } else if let Some((prefix, index, rest)) = conventions::split_indexed(&kv.key)
                && let Some(&(list, rank)) = LIST_INDEX.get(prefix)
            {
                flat.push(FlatEntry {
                    list,
                    rank,
                    index,
                    rest,
                    value,
                });
            }
        }
        let kind = kind.map(|(_, k)| k).unwrap_or_else(|| {
            let looks_like_inference = slots[Slot::RequestModel as usize].is_some()
                || slots[Slot::ResponseModel as usize].is_some()
                || slots[Slot::InputMessages as usize].is_some()
                || flat.iter().any(|f| f.list == List::OutputMessages);
            if looks_like_inference {
                OperationKind::Chat
            } else {
                OperationKind::Other
            }
        });
        GenAiSpan {
            span,
            resource,
            scope,
            kind,
            slots,
            flat,
            content: OnceLock::new(),
            body_response_id: OnceLock::new(),
        }
    }

    fn slot(&self, slot: Slot) -> Option<&'a AnyValue> {
        self.slots[slot as usize]
    }

    fn slot_str(&self, slot: Slot) -> Option<&'a str> {
        self.slot(slot)
            .and_then(otlp::as_str)
            .filter(|s| !s.is_empty())
    }

    fn slot_u64(&self, slot: Slot) -> Option<u64> {
        self.slot(slot).and_then(otlp::as_u64)
    }

    /// The underlying OTLP span, for anything the view does not expose.
    pub fn raw(&self) -> &'a Span {
        self.span
    }

    /// The 16-byte trace id.
    pub fn trace_id(&self) -> &'a [u8] {
        &self.span.trace_id
    }

    /// The 8-byte span id.
    pub fn span_id(&self) -> &'a [u8] {
        &self.span.span_id
    }

    /// The parent's span id (empty for a root span).
    pub fn parent_span_id(&self) -> &'a [u8] {
        &self.span.parent_span_id
    }

    /// The span name.
    pub fn name(&self) -> &'a str {
        &self.span.name
    }

    /// What the span does.
    pub fn kind(&self) -> OperationKind {
        self.kind
    }

    /// The resource the span came from.
    pub fn resource(&self) -> &ResourceView<'a> {
        &self.resource
    }

    /// The instrumentation scope that recorded the span.
    pub fn scope(&self) -> Option<&'a InstrumentationScope> {
        self.scope
    }

    /// A span attribute by key, in any convention.
    pub fn attribute(&self, key: &str) -> Option<&'a AnyValue> {
        otlp::find(&self.span.attributes, key)
    }

    /// The provider (`openai`, `anthropic`, `aws.bedrock`, …).
    pub fn provider(&self) -> Option<&'a str> {
        self.slot_str(Slot::Provider)
    }

    /// The model the application asked for (`gen_ai.request.model`), else the `model` of the
    /// request parameters (traceAI names the model of a streamed call only inside
    /// `gen_ai.request.parameters`).
    pub fn request_model(&self) -> Option<&'a str> {
        self.slot_str(Slot::RequestModel).or_else(|| {
            let parameters = self.slot_str(Slot::RequestParameters)?;
            let [model] = content::json_fields(parameters, ["model"]);
            model
        })
    }

    /// The model that answered.
    pub fn response_model(&self) -> Option<&'a str> {
        self.slot_str(Slot::ResponseModel)
    }

    /// The model that answered if known, else the one requested: the one to price and segment by.
    pub fn model(&self) -> Option<&'a str> {
        self.response_model().or_else(|| self.request_model())
    }

    /// Token counts as reported.
    pub fn usage(&self) -> TokenUsage {
        TokenUsage {
            input: self.slot_u64(Slot::InputTokens),
            output: self.slot_u64(Slot::OutputTokens),
            total: self.slot_u64(Slot::TotalTokens),
            cache_read: self.slot_u64(Slot::CacheReadTokens),
            cache_write: self.slot_u64(Slot::CacheWriteTokens),
            reasoning: self.slot_u64(Slot::ReasoningTokens),
        }
    }

    /// Finish reasons, from the response attributes or, failing those, the output messages.
    pub fn finish_reasons(&self) -> Vec<FinishReason<'_>> {
        match self
            .slot(Slot::FinishReasons)
            .and_then(|v| v.value.as_ref())
        {
            Some(any_value::Value::StringValue(s)) if !s.is_empty() => vec![FinishReason::parse(s)],
            Some(any_value::Value::ArrayValue(a)) if !a.values.is_empty() => a
                .values
                .iter()
                .filter_map(otlp::as_str)
                .map(FinishReason::parse)
                .collect(),
            _ => self
                .output_messages()
                .iter()
                .filter_map(|m| m.finish_reason.as_deref())
                .map(FinishReason::parse)
                .collect(),
        }
    }

    /// The provider's response id: `gen_ai.response.id`, else, on a model call, the `id` of the
    /// response body in `output.value` (OpenInference records the body, not the id).
    pub fn response_id(&self) -> Option<&'a str> {
        self.slot_str(Slot::ResponseId).or_else(|| {
            *self
                .body_response_id
                .get_or_init(|| self.body_response_id())
        })
    }

    /// The `id` of a provider's response body in `output.value`: only on a model call whose
    /// output is JSON naming what it is (OpenAI's `object`, Anthropic's `type`), so an agent's or
    /// a chain's JSON output with an `id` of its own is not taken for a response id.
    fn body_response_id(&self) -> Option<&'a str> {
        if self.kind != OperationKind::Chat
            || !self
                .slot_str(Slot::OutputMimeType)
                .is_some_and(|m| m.contains("json"))
        {
            return None;
        }
        content::response_body_id(self.slot_str(Slot::OutputValue)?)
    }

    /// The session id.
    pub fn session_id(&self) -> Option<&'a str> {
        self.slot_str(Slot::SessionId)
    }

    /// The end user's id.
    pub fn user_id(&self) -> Option<&'a str> {
        self.slot_str(Slot::UserId)
    }

    /// The conversation id (`gen_ai.conversation.id`).
    pub fn conversation_id(&self) -> Option<&'a str> {
        self.slot_str(Slot::ConversationId)
    }

    /// The prompt's name in a prompt registry.
    pub fn prompt_name(&self) -> Option<&'a str> {
        self.slot_str(Slot::PromptName)
    }

    /// The prompt's version.
    pub fn prompt_version(&self) -> Option<&'a str> {
        self.slot_str(Slot::PromptVersion)
    }

    /// The agent's name, on agent spans.
    pub fn agent_name(&self) -> Option<&'a str> {
        self.slot_str(Slot::AgentName)
    }

    /// Free-form metadata the application attached (OpenInference `metadata`), as JSON text.
    pub fn metadata(&self) -> Option<Cow<'a, str>> {
        self.slot(Slot::Metadata).map(content::json_text)
    }

    /// Tags the application attached (OpenInference `tag.tags`); a single string is one tag.
    pub fn tags(&self) -> Vec<&'a str> {
        match self.slot(Slot::Tags).and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::ArrayValue(a)) => {
                a.values.iter().filter_map(otlp::as_str).collect()
            }
            Some(any_value::Value::StringValue(s)) if !s.is_empty() => vec![s.as_str()],
            _ => Vec::new(),
        }
    }

    /// The span status.
    pub fn status(&self) -> SpanStatus<'a> {
        match &self.span.status {
            Some(s) => SpanStatus {
                code: StatusCode::try_from(s.code).unwrap_or(StatusCode::Unset),
                message: &s.message,
            },
            None => SpanStatus {
                code: StatusCode::Unset,
                message: "",
            },
        }
    }

    /// The error class, when the span failed: `error.type`, else the status message, else the
    /// first exception event's type.
    pub fn error(&self) -> Option<&'a str> {
        if let Some(t) = self.slot_str(Slot::ErrorType) {
            return Some(t);
        }
        let status = self.status();
        if status.code != StatusCode::Error {
            return None;
        }
        let exception = self
            .span
            .events
            .iter()
            .filter(|e| e.name == "exception")
            .find_map(|e| otlp::find(&e.attributes, "exception.type").and_then(otlp::as_str));
        Some(exception.unwrap_or(if status.message.is_empty() {
            "error"
        } else {
            status.message
        }))
    }

    /// How long the span took (zero when its times are missing or reversed).
    pub fn duration(&self) -> Duration {
        let nanos = self
            .span
            .end_time_unix_nano
            .saturating_sub(self.span.start_time_unix_nano);
        Duration::from_nanos(nanos)
    }

    /// When the span ended, in nanoseconds since the Unix epoch.
    pub fn end_time_unix_nano(&self) -> u64 {
        self.span.end_time_unix_nano
    }

    /// What the application asked the model to output, as far as the span tells.
    pub fn json_request(&self) -> JsonRequest<'a> {
        if let Some(schema) = self.slot(Slot::StructuredOutputSchema) {
            return match otlp::as_str(schema) {
                // OpenLLMetry records a plain `{"type": "json_object"}` here too.
                Some(s) if s.contains("json_schema") || s.contains("\"properties\"") => {
                    JsonRequest::Schema(Cow::Borrowed(s))
                }
                Some(_) => JsonRequest::Requested,
                None => JsonRequest::Schema(Cow::Owned(otlp::to_json(schema).to_string())),
            };
        }
        if self
            .slot_str(Slot::OutputType)
            .is_some_and(|t| t.eq_ignore_ascii_case("json"))
        {
            return JsonRequest::Requested;
        }
        if self
            .slot_str(Slot::ResponseFormat)
            .is_some_and(|f| f.starts_with("json"))
        {
            return JsonRequest::Requested;
        }
        let params = [Slot::RequestParameters, Slot::InputValue];
        for text in params.iter().filter_map(|&s| self.slot_str(s)) {
            if let Some(request) = content::response_format(text) {
                return request;
            }
        }
        JsonRequest::NotRequested
    }

    /// All assembled content (messages, tools, documents); parsed once, on first use.
    pub fn content(&self) -> &Content<'a> {
        self.content.get_or_init(|| content::assemble(self))
    }

    /// The messages sent to the model.
    pub fn input_messages(&self) -> &[Message<'a>] {
        &self.content().input
    }

    /// The messages the model returned.
    pub fn output_messages(&self) -> &[Message<'a>] {
        &self.content().output
    }

    /// The system instructions: `gen_ai.system_instructions`, else the text of the system
    /// and developer messages of the input.
    pub fn system_instructions(&self) -> Vec<&str> {
        let content = self.content();
        if !content.system.is_empty() {
            return content.system.iter().map(|s| s.as_ref()).collect();
        }
        content
            .input
            .iter()
            .filter(|m| m.role == "system" || m.role == "developer")
            .flat_map(|m| m.texts())
            .collect()
    }

    /// Tool definitions offered to the model, with their parameter schemas.
    pub fn tool_definitions(&self) -> &[ToolDefinition<'a>] {
        &self.content().tools
    }

    /// Documents a retrieval span returned.
    pub fn documents(&self) -> &[Document<'a>] {
        &self.content().documents
    }

    /// Tool calls the model made in its output.
    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall<'a>> {
        self.output_messages().iter().flat_map(|m| m.tool_calls())
    }

    /// Whether the instrumentation captured output content at all. Content capture is opt-in in
    /// most instrumentations; scorers report `skipped: no content` rather than judge an absence.
    pub fn output_captured(&self) -> bool {
        self.content().output_captured
    }

    /// Whether input content was captured.
    pub fn input_captured(&self) -> bool {
        self.content().input_captured
    }

    /// The text of the output (text parts of every output message, joined by newlines), or
    /// `None` when no output content was captured.
    pub fn output_text(&self) -> Option<Cow<'_, str>> {
        if !self.output_captured() {
            return None;
        }
        Some(content::join(
            self.output_messages().iter().flat_map(|m| m.texts()),
        ))
    }

    /// The text of the input messages, or `None` when no input content was captured.
    pub fn input_text(&self) -> Option<Cow<'_, str>> {
        if !self.input_captured() {
            return None;
        }
        Some(content::join(
            self.input_messages().iter().flat_map(|m| m.texts()),
        ))
    }

    /// The last user message's text: usually the question being answered.
    pub fn last_user_text(&self) -> Option<Cow<'_, str>> {
        let last = self
            .input_messages()
            .iter()
            .rev()
            .find(|m| m.role == "user")?;
        Some(content::join(last.texts()))
    }

    /// On a tool span: the tool's name.
    pub fn tool_name(&self) -> Option<&'a str> {
        self.slot_str(Slot::ToolName)
    }

    /// On a tool span: the call id.
    pub fn tool_call_id(&self) -> Option<&'a str> {
        self.slot_str(Slot::ToolCallId)
    }

    /// On a tool span: the arguments as JSON text (`gen_ai.tool.call.arguments`, else OpenInference's
    /// `input.value`).
    pub fn tool_arguments(&self) -> Option<Cow<'a, str>> {
        let value = self.slot(Slot::ToolArguments).or_else(|| {
            (self.kind == OperationKind::Tool)
                .then(|| self.slot(Slot::InputValue))
                .flatten()
        })?;
        Some(content::json_text(value))
    }

    /// On a tool span: the result (`gen_ai.tool.call.result`, else `output.value`).
    pub fn tool_result(&self) -> Option<Cow<'a, str>> {
        let value = self.slot(Slot::ToolResult).or_else(|| {
            (self.kind == OperationKind::Tool)
                .then(|| self.slot(Slot::OutputValue))
                .flatten()
        })?;
        Some(content::json_text(value))
    }

    /// On a tool span: the tool's parameter schema as JSON text (`tool.parameters`).
    pub fn tool_schema(&self) -> Option<Cow<'a, str>> {
        self.slot(Slot::ToolSchema).map(content::json_text)
    }

    /// On a retrieval span: the query.
    pub fn retrieval_query(&self) -> Option<&'a str> {
        self.slot_str(Slot::RetrievalQuery).or_else(|| {
            (self.kind == OperationKind::Retrieval)
                .then(|| self.slot_str(Slot::InputValue))
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests;
