//! Messages, tool definitions and documents, assembled from whichever convention a span uses.
//!
//! Sources, most preferred first (only the first one present is read, so conventions never mix):
//! 1. a whole JSON document or structured value (`gen_ai.input.messages`, OTel GenAI current);
//! 2. flattened lists (`llm.input_messages.N.message.*`, `gen_ai.prompt.N.*`, …; see
//!    [`super::conventions::LISTS`]);
//! 3. deprecated span events (`gen_ai.user.message`, `gen_ai.choice`, `gen_ai.content.prompt`);
//! 4. `input.value` / `output.value`: an OpenAI request or response body when the MIME type is
//!    JSON, else plain text.
//!
//! JSON is parsed with borrowed strings wherever it has no escapes, so most text stays a slice of
//! the decoded request. Malformed JSON never fails the span: that source counts as absent.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::conventions::{
    self, CHOICE_EVENT, CONTENT_EVENTS, ItemField, List, MESSAGE_EVENTS, Slot,
};
use super::{FlatEntry, GenAiSpan, JsonRequest};
use crate::otlp;

/// Everything a span says about what went into and came out of the model.
#[derive(Debug, Default)]
pub struct Content<'a> {
    /// Messages sent to the model.
    pub input: Vec<Message<'a>>,
    /// Messages the model returned.
    pub output: Vec<Message<'a>>,
    /// `gen_ai.system_instructions`, when recorded apart from the messages.
    pub system: Vec<Cow<'a, str>>,
    /// Tools offered to the model.
    pub tools: Vec<ToolDefinition<'a>>,
    /// Documents a retrieval returned.
    pub documents: Vec<Document<'a>>,
    /// Whether any input content source was present.
    pub input_captured: bool,
    /// Whether any output content source was present (an empty answer is still captured).
    pub output_captured: bool,
}

/// One message, with its parts in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message<'a> {
    /// `system`, `user`, `assistant`, `tool`, … (empty when the convention did not say).
    pub role: Cow<'a, str>,
    /// The message's parts.
    pub parts: Vec<Part<'a>>,
    /// The participant's name, if given.
    pub name: Option<Cow<'a, str>>,
    /// Why the model stopped (output messages).
    pub finish_reason: Option<Cow<'a, str>>,
}

/// One part of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Part<'a> {
    /// Text.
    Text(Cow<'a, str>),
    /// The model's reasoning, when the provider exposes it.
    Reasoning(Cow<'a, str>),
    /// An explicit refusal (OpenAI's `refusal` field).
    Refusal(Cow<'a, str>),
    /// A call the model asked for.
    ToolCall(ToolCall<'a>),
    /// A tool's result sent back to the model.
    ToolResult {
        /// The call it answers.
        id: Option<Cow<'a, str>>,
        /// The result, as text or JSON text.
        response: Cow<'a, str>,
    },
    /// Media and anything else (`blob`, `file`, `uri`, `image_url`, …), by type name.
    Other(Cow<'a, str>),
}

/// A tool call in a model's output.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolCall<'a> {
    /// The call id.
    pub id: Option<Cow<'a, str>>,
    /// The tool's name.
    pub name: Cow<'a, str>,
    /// The arguments as JSON text.
    pub arguments: Option<Cow<'a, str>>,
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolDefinition<'a> {
    /// The tool's name.
    pub name: Cow<'a, str>,
    /// Its description.
    pub description: Option<Cow<'a, str>>,
    /// The JSON Schema of its parameters.
    pub parameters: Option<serde_json::Value>,
}

/// A retrieved document.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Document<'a> {
    /// The document id.
    pub id: Option<Cow<'a, str>>,
    /// Its text.
    pub content: Option<Cow<'a, str>>,
    /// The retriever's relevance score.
    pub score: Option<f64>,
    /// Metadata as JSON text.
    pub metadata: Option<Cow<'a, str>>,
}

impl<'a> Message<'a> {
    /// The text parts.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Text(t) => Some(t.as_ref()),
            _ => None,
        })
    }

    /// The tool calls.
    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall<'a>> {
        self.parts.iter().filter_map(|p| match p {
            Part::ToolCall(c) => Some(c),
            _ => None,
        })
    }

    fn into_owned(self) -> Message<'static> {
        Message {
            role: owned(self.role),
            parts: self.parts.into_iter().map(Part::into_owned).collect(),
            name: self.name.map(owned),
            finish_reason: self.finish_reason.map(owned),
        }
    }
}

impl Part<'_> {
    fn into_owned(self) -> Part<'static> {
        match self {
            Part::Text(t) => Part::Text(owned(t)),
            Part::Reasoning(t) => Part::Reasoning(owned(t)),
            Part::Refusal(t) => Part::Refusal(owned(t)),
            Part::ToolCall(c) => Part::ToolCall(ToolCall {
                id: c.id.map(owned),
                name: owned(c.name),
                arguments: c.arguments.map(owned),
            }),
            Part::ToolResult { id, response } => Part::ToolResult {
                id: id.map(owned),
                response: owned(response),
            },
            Part::Other(t) => Part::Other(owned(t)),
        }
    }
}

fn owned(c: Cow<'_, str>) -> Cow<'static, str> {
    Cow::Owned(c.into_owned())
}

/// Joins texts with newlines, borrowing when there is only one.
pub(crate) fn join<'s>(mut texts: impl Iterator<Item = &'s str>) -> Cow<'s, str> {
    let Some(first) = texts.next() else {
        return Cow::Borrowed("");
    };
    match texts.next() {
        None => Cow::Borrowed(first),
        Some(second) => {
            let mut all = format!("{first}\n{second}");
            for t in texts {
                all.push('\n');
                all.push_str(t);
            }
            Cow::Owned(all)
        }
    }
}

/// An attribute as text: strings as they are, anything else as JSON text.
pub(crate) fn json_text(value: &AnyValue) -> Cow<'_, str> {
    match otlp::as_str(value) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(otlp::to_json(value).to_string()),
    }
}

/// Assembles a span's content from its best sources.
pub(super) fn assemble<'a>(span: &GenAiSpan<'a>) -> Content<'a> {
    let input = messages(span, Slot::InputMessages, List::InputMessages);
    let output = messages(span, Slot::OutputMessages, List::OutputMessages);
    let system = span
        .slot(Slot::SystemInstructions)
        .map(system_instructions)
        .unwrap_or_default();
    let tools = match span.slot(Slot::ToolDefinitions).and_then(tool_definitions) {
        Some(tools) if !tools.is_empty() => tools,
        _ => flat_items(span, List::Tools)
            .map(|(_, e)| flat_tool(e))
            .collect(),
    };
    let mut documents = match span.slot(Slot::RetrievalDocuments).and_then(documents) {
        Some(docs) if !docs.is_empty() => docs,
        _ => flat_items(span, List::Documents)
            .map(|(_, e)| flat_document(e))
            .collect(),
    };
    if span.kind() == super::OperationKind::Retrieval
        && documents.iter().any(|d| d.id.is_none())
        && let Some(output) = span.slot_str(Slot::OutputValue)
    {
        langchain_document_ids(output, &mut documents);
    }
    Content {
        input_captured: input.is_some() || !system.is_empty(),
        output_captured: output.is_some(),
        input: input.unwrap_or_default(),
        output: output.unwrap_or_default(),
        system,
        tools,
        documents,
    }
}

/// The messages of one direction from the best source present; `None` when none is.
fn messages<'a>(span: &GenAiSpan<'a>, slot: Slot, list: List) -> Option<Vec<Message<'a>>> {
    if let Some(msgs) = span.slot(slot).and_then(parse_messages) {
        return Some(msgs);
    }
    let mut items = flat_items(span, list).peekable();
    if items.peek().is_some() {
        return Some(items.map(|(_, entries)| flat_message(entries)).collect());
    }
    if let Some(msgs) = event_messages(span, list) {
        return Some(msgs);
    }
    let (value, mime) = match list {
        List::InputMessages => (Slot::InputValue, Slot::InputMimeType),
        _ => (Slot::OutputValue, Slot::OutputMimeType),
    };
    // On tool and retrieval spans input.value/output.value are arguments, queries and results;
    // on an embedding span output.value is the vectors (traceAI writes their repr there).
    if matches!(
        span.kind,
        super::OperationKind::Tool | super::OperationKind::Retrieval
    ) || (span.kind == super::OperationKind::Embeddings && list != List::InputMessages)
    {
        return None;
    }
    let text = span.slot_str(value)?;
    let is_json = span.slot_str(mime).is_some_and(|m| m.contains("json"));
    if is_json {
        return openai_body(text, list);
    }
    let role = if list == List::InputMessages {
        "user"
    } else {
        "assistant"
    };
    Some(vec![Message {
        role: Cow::Borrowed(role),
        parts: vec![Part::Text(Cow::Borrowed(text))],
        ..Default::default()
    }])
}

/// The flattened entries of a list from its best-ranked source, grouped by item index.
fn flat_items<'s, 'a>(
    span: &'s GenAiSpan<'a>,
    list: List,
) -> impl Iterator<Item = (u32, Vec<&'s FlatEntry<'a>>)> {
    let best = span
        .flat
        .iter()
        .filter(|f| f.list == list)
        .map(|f| f.rank)
        .min();
    let mut items: BTreeMap<u32, Vec<&FlatEntry<'a>>> = BTreeMap::new();
    if let Some(rank) = best {
        for f in span
            .flat
            .iter()
            .filter(|f| f.list == list && f.rank == rank)
        {
            items.entry(f.index).or_default().push(f);
        }
    }
    items.into_iter()
}

/// The field an item key names, with the nested index for `contents.M.…` and `tool_calls.K.…`.
fn item_field(rest: &str) -> Option<(ItemField, u32)> {
    if let Some(&field) = conventions::ITEM_INDEX.get(rest) {
        return Some((field, 0));
    }
    let (prefix, index, tail) = conventions::split_indexed(rest)?;
    conventions::ITEM_FIELDS.iter().find_map(|&(key, field)| {
        let matches = key
            .strip_prefix(prefix)
            .and_then(|k| k.strip_prefix(".#."))
            .is_some_and(|k| k == tail);
        matches.then_some((field, index))
    })
}

fn flat_message<'a>(entries: Vec<&FlatEntry<'a>>) -> Message<'a> {
    let mut msg = Message::default();
    let mut content = None;
    let mut tool_call_id = None;
    let mut parts: BTreeMap<u32, (Option<&'a str>, Option<Cow<'a, str>>)> = BTreeMap::new();
    let mut calls: BTreeMap<u32, ToolCall<'a>> = BTreeMap::new();
    for e in entries {
        let Some((field, n)) = item_field(e.rest) else {
            continue;
        };
        let text = || json_text(e.value);
        match field {
            ItemField::Role => msg.role = text(),
            ItemField::Content => content = Some(text()),
            ItemField::Name => msg.name = Some(text()),
            ItemField::ToolCallId => tool_call_id = Some(text()),
            ItemField::FinishReason => msg.finish_reason = Some(text()),
            ItemField::PartType => parts.entry(n).or_default().0 = otlp::as_str(e.value),
            ItemField::PartText => parts.entry(n).or_default().1 = Some(text()),
            ItemField::CallId => calls.entry(n).or_default().id = Some(text()),
            ItemField::CallName => calls.entry(n).or_default().name = text(),
            ItemField::CallArguments => calls.entry(n).or_default().arguments = Some(text()),
            _ => {}
        }
    }
    if let Some(content) = content {
        msg.parts.push(if msg.role == "tool" {
            Part::ToolResult {
                id: tool_call_id,
                response: content,
            }
        } else {
            Part::Text(content)
        });
    }
    for (kind, text) in parts.into_values() {
        msg.parts.push(match (kind, text) {
            (None | Some("text"), Some(t)) => Part::Text(t),
            (Some(k), _) => Part::Other(Cow::Borrowed(k)),
            (None, None) => continue,
        });
    }
    msg.parts.extend(calls.into_values().map(Part::ToolCall));
    msg
}

fn flat_document<'a>(entries: Vec<&FlatEntry<'a>>) -> Document<'a> {
    let mut doc = Document::default();
    for e in entries {
        match conventions::ITEM_INDEX.get(e.rest) {
            Some(ItemField::DocId) => doc.id = Some(json_text(e.value)),
            Some(ItemField::DocContent) => doc.content = Some(json_text(e.value)),
            Some(ItemField::DocScore) => doc.score = otlp::as_f64(e.value),
            Some(ItemField::DocMetadata) => doc.metadata = Some(json_text(e.value)),
            _ => {}
        }
    }
    doc
}

fn flat_tool<'a>(entries: Vec<&FlatEntry<'a>>) -> ToolDefinition<'a> {
    let mut tool = ToolDefinition::default();
    for e in entries {
        match conventions::ITEM_INDEX.get(e.rest) {
            Some(ItemField::ToolJson) => {
                if let Some(t) = otlp::as_str(e.value)
                    .and_then(|s| serde_json::from_str::<JTool<'_>>(s).ok())
                    .and_then(JTool::into_definition)
                {
                    tool = t.into_owned();
                }
            }
            Some(ItemField::ToolName) => tool.name = json_text(e.value),
            Some(ItemField::ToolDescription) => tool.description = Some(json_text(e.value)),
            Some(ItemField::ToolParameters) => {
                tool.parameters = Some(match otlp::as_str(e.value) {
                    Some(s) => serde_json::from_str(s).unwrap_or(serde_json::Value::Null),
                    None => otlp::to_json(e.value),
                })
            }
            _ => {}
        }
    }
    tool
}

impl ToolDefinition<'_> {
    fn into_owned(self) -> ToolDefinition<'static> {
        ToolDefinition {
            name: owned(self.name),
            description: self.description.map(owned),
            parameters: self.parameters,
        }
    }
}

/// Messages from deprecated span events.
fn event_messages<'a>(span: &GenAiSpan<'a>, list: List) -> Option<Vec<Message<'a>>> {
    let mut out = Vec::new();
    let mut found = false;
    for event in &span.span.events {
        let attr = |key| otlp::find(&event.attributes, key);
        if let Some(&(_, key, l)) = CONTENT_EVENTS
            .iter()
            .find(|(name, _, _)| *name == event.name)
        {
            if l == list {
                found = true;
                out.extend(attr(key).and_then(parse_messages).unwrap_or_default());
            }
            continue;
        }
        if list == List::InputMessages
            && let Some(&(_, role)) = MESSAGE_EVENTS.iter().find(|(name, _)| *name == event.name)
        {
            found = true;
            let mut msg = attr("message")
                .or(attr("gen_ai.event.content"))
                .and_then(parse_message)
                .unwrap_or_default();
            if let Some(content) = attr("content") {
                msg.parts.insert(0, Part::Text(json_text(content)));
            }
            msg.role = attr("role").map_or(Cow::Borrowed(role), json_text);
            out.push(msg);
        } else if list == List::OutputMessages && event.name == CHOICE_EVENT {
            found = true;
            let mut msg = attr("message").and_then(parse_message).unwrap_or_default();
            if let Some(content) = attr("content") {
                msg.parts.insert(0, Part::Text(json_text(content)));
            }
            if msg.role.is_empty() {
                msg.role = Cow::Borrowed("assistant");
            }
            if let Some(reason) = attr("finish_reason") {
                msg.finish_reason = Some(json_text(reason));
            }
            out.push(msg);
        }
    }
    found.then_some(out)
}

/// Parses a list of messages from a JSON string or a structured OTLP value.
fn parse_messages(value: &AnyValue) -> Option<Vec<Message<'_>>> {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => {
            let msgs: Vec<JMessage<'_>> = serde_json::from_str(s).ok()?;
            Some(msgs.into_iter().map(JMessage::into_message).collect())
        }
        Some(any_value::Value::ArrayValue(_)) => {
            let text = otlp::to_json(value).to_string();
            let msgs: Vec<JMessage<'_>> = serde_json::from_str(&text).ok()?;
            Some(
                msgs.into_iter()
                    .map(|m| m.into_message().into_owned())
                    .collect(),
            )
        }
        _ => None,
    }
}

/// Parses one message from a JSON string or a structured OTLP value.
fn parse_message(value: &AnyValue) -> Option<Message<'_>> {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => serde_json::from_str::<JMessage<'_>>(s)
            .ok()
            .map(JMessage::into_message),
        Some(any_value::Value::KvlistValue(_)) => {
            let text = otlp::to_json(value).to_string();
            let msg: JMessage<'_> = serde_json::from_str(&text).ok()?;
            Some(msg.into_message().into_owned())
        }
        _ => None,
    }
}

fn system_instructions(value: &AnyValue) -> Vec<Cow<'_, str>> {
    let parse = |text: &str| -> Option<Vec<String>> {
        match serde_json::from_str::<JContent<'_>>(text).ok()? {
            JContent::Text(t) => Some(vec![t.0.into_owned()]),
            JContent::Parts(parts) => Some(
                parts
                    .into_iter()
                    .filter_map(|p| match p.into_part() {
                        Part::Text(t) => Some(t.into_owned()),
                        _ => None,
                    })
                    .collect(),
            ),
        }
    };
    match &value.value {
        Some(any_value::Value::StringValue(s)) => match parse(s) {
            Some(texts) => texts.into_iter().map(Cow::Owned).collect(),
            // A plain string that is not JSON is the instruction itself.
            None if !s.trim_start().starts_with(['[', '{']) => vec![Cow::Borrowed(s.as_str())],
            None => Vec::new(),
        },
        Some(_) => parse(&otlp::to_json(value).to_string())
            .unwrap_or_default()
            .into_iter()
            .map(Cow::Owned)
            .collect(),
        None => Vec::new(),
    }
}

fn tool_definitions(value: &AnyValue) -> Option<Vec<ToolDefinition<'_>>> {
    let text = json_text(value);
    let tools: Vec<JTool<'_>> = serde_json::from_str::<Option<Vec<JTool<'_>>>>(&text).ok()??;
    Some(
        tools
            .into_iter()
            .filter_map(|t| t.into_definition().map(ToolDefinition::into_owned))
            .collect(),
    )
}

fn documents(value: &AnyValue) -> Option<Vec<Document<'_>>> {
    let text = json_text(value);
    let docs: Vec<JDocument<'_>> = serde_json::from_str(&text).ok()?;
    Some(
        docs.into_iter()
            .map(|d| Document {
                id: d.id.map(|t| owned(t.0)),
                content: d.content.or(d.text).map(|t| owned(t.0)),
                score: d.score.as_ref().and_then(number),
                metadata: d.metadata.map(|t| owned(t.0)),
            })
            .collect(),
    )
}

/// Gives documents without an id the ids of the LangChain `Document`s a retriever returned
/// (`{"documents": [{"id": …, "page_content": …}, …]}` in `output.value`): OpenInference's
/// LangChain instrumentation records each document's content and metadata, never its id. Only
/// when the list is as long and each document's content, where both have one, is the same.
fn langchain_document_ids<'a>(output: &'a str, documents: &mut [Document<'a>]) {
    #[derive(Deserialize)]
    struct Retrieved<'a> {
        #[serde(borrow)]
        documents: Vec<LcDocument<'a>>,
    }
    #[derive(Deserialize)]
    struct LcDocument<'a> {
        #[serde(borrow, default)]
        id: Option<Text<'a>>,
        #[serde(borrow, default)]
        page_content: Option<Text<'a>>,
    }
    if !output.contains("page_content") {
        return;
    }
    let Ok(retrieved) = serde_json::from_str::<Retrieved<'a>>(output) else {
        return;
    };
    if retrieved.documents.len() != documents.len()
        || retrieved.documents.iter().zip(documents.iter()).any(
            |(lc, d)| matches!((&lc.page_content, &d.content), (Some(a), Some(b)) if a.0 != *b),
        )
    {
        return;
    }
    for (lc, d) in retrieved.documents.into_iter().zip(documents) {
        if d.id.is_none() {
            d.id = lc.id.map(|t| t.0);
        }
    }
}

fn number(v: &serde_json::Value) -> Option<f64> {
    v.as_f64().or_else(|| v.as_str()?.trim().parse().ok())
}

/// Messages from an OpenAI request (`{"messages": […]}`) or response (`{"choices": […]}`) body.
fn openai_body(text: &str, list: List) -> Option<Vec<Message<'_>>> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow, default)]
        messages: Option<Vec<JMessage<'a>>>,
        #[serde(borrow, default)]
        choices: Option<Vec<Choice<'a>>>,
    }
    #[derive(Deserialize)]
    struct Choice<'a> {
        #[serde(borrow)]
        message: JMessage<'a>,
        #[serde(borrow, default)]
        finish_reason: Option<Text<'a>>,
    }
    let body: Body<'_> = serde_json::from_str(text).ok()?;
    match list {
        List::InputMessages => Some(
            body.messages?
                .into_iter()
                .map(JMessage::into_message)
                .collect(),
        ),
        _ => Some(
            body.choices?
                .into_iter()
                .map(|c| {
                    let mut m = c.message.into_message();
                    if m.finish_reason.is_none() {
                        m.finish_reason = c.finish_reason.map(|t| t.0);
                    }
                    m
                })
                .collect(),
        ),
    }
}

/// Reads `response_format` from request parameters or an OpenAI request body.
pub(super) fn response_format(text: &str) -> Option<JsonRequest<'static>> {
    if !text.contains("response_format") {
        return None;
    }
    #[derive(Deserialize)]
    struct Params {
        response_format: Option<serde_json::Value>,
    }
    let format = serde_json::from_str::<Params>(text).ok()?.response_format?;
    let kind = match &format {
        serde_json::Value::String(s) => s.as_str(),
        serde_json::Value::Object(o) => o.get("type").and_then(|t| t.as_str()).unwrap_or(""),
        _ => "",
    };
    match kind {
        "json_schema" => {
            let schema = format
                .pointer("/json_schema/schema")
                .or(format.get("schema"));
            Some(match schema {
                Some(s) => JsonRequest::Schema(Cow::Owned(s.to_string())),
                None => JsonRequest::Requested,
            })
        }
        k if k.starts_with("json") => Some(JsonRequest::Requested),
        _ => None,
    }
}

// ---- JSON shapes -------------------------------------------------------------------------------

/// A string field read leniently: borrowed when the JSON string has no escapes, numbers and
/// booleans as their text, objects and arrays as their JSON text.
#[derive(Debug)]
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed("")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

/// A message's `content`: a string (OpenAI), or a list of parts (OTel GenAI parts, OpenAI parts).
enum JContent<'a> {
    Text(Text<'a>),
    Parts(Vec<JPart<'a>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for JContent<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JContent<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of parts")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JContent::Text(Text(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JContent::Text(Text(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(JContent::Text(Text(Cow::Owned(v))))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(JContent::Parts(Vec::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<JPart<'de>>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(JContent::Parts)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(JContent::Text(Text(Cow::Owned(v.to_string()))))
            }
        }
        d.deserialize_any(V)
    }
}

/// A message in OTel GenAI form (`role`, `parts`) or OpenAI form (`role`, `content`,
/// `tool_calls`).
#[derive(Deserialize)]
struct JMessage<'a> {
    #[serde(borrow, default)]
    role: Option<Text<'a>>,
    #[serde(borrow, default)]
    parts: Option<Vec<JPart<'a>>>,
    #[serde(borrow, default)]
    content: Option<JContent<'a>>,
    #[serde(borrow, default)]
    name: Option<Text<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Text<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<JOpenAiCall<'a>>>,
    #[serde(borrow, default)]
    tool_call_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    refusal: Option<Text<'a>>,
}

impl<'a> JMessage<'a> {
    fn into_message(self) -> Message<'a> {
        let role = self.role.map_or(Cow::Borrowed(""), |t| t.0);
        let mut parts: Vec<Part<'a>> = self
            .parts
            .unwrap_or_default()
            .into_iter()
            .map(JPart::into_part)
            .collect();
        match self.content {
            Some(JContent::Text(t)) if role == "tool" => parts.push(Part::ToolResult {
                id: self.tool_call_id.map(|t| t.0),
                response: t.0,
            }),
            Some(JContent::Text(t)) => parts.push(Part::Text(t.0)),
            Some(JContent::Parts(ps)) => parts.extend(ps.into_iter().map(JPart::into_part)),
            None => {}
        }
        if let Some(r) = self.refusal.filter(|r| !r.0.is_empty()) {
            parts.push(Part::Refusal(r.0));
        }
        for call in self.tool_calls.unwrap_or_default() {
            let (name, arguments) = match call.function {
                Some(f) => (f.name, f.arguments),
                None => (call.name, call.arguments),
            };
            parts.push(Part::ToolCall(ToolCall {
                id: call.id.map(|t| t.0),
                name: name.map_or(Cow::Borrowed(""), |t| t.0),
                arguments: arguments.map(|t| t.0),
            }));
        }
        Message {
            role,
            parts,
            name: self.name.map(|t| t.0),
            finish_reason: self.finish_reason.map(|t| t.0),
        }
    }
}

/// A part in OTel GenAI form (`type` + fields) or OpenAI content-part form (`type`, `text`).
#[derive(Deserialize)]
struct JPart<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    content: Option<Text<'a>>,
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
    #[serde(borrow, default)]
    id: Option<Text<'a>>,
    #[serde(borrow, default)]
    name: Option<Text<'a>>,
    #[serde(borrow, default)]
    arguments: Option<Text<'a>>,
    #[serde(borrow, default)]
    response: Option<Text<'a>>,
    #[serde(borrow, default)]
    result: Option<Text<'a>>,
}

impl<'a> JPart<'a> {
    fn into_part(self) -> Part<'a> {
        let kind = self.kind.map_or(Cow::Borrowed("text"), |t| t.0);
        let text = self
            .content
            .or(self.text)
            .map_or(Cow::Borrowed(""), |t| t.0);
        match kind.as_ref() {
            "text" | "input_text" | "output_text" => Part::Text(text),
            "reasoning" | "thinking" => Part::Reasoning(text),
            "refusal" => Part::Refusal(text),
            "tool_call" | "function_call" | "tool_use" => Part::ToolCall(ToolCall {
                id: self.id.map(|t| t.0),
                name: self.name.map_or(Cow::Borrowed(""), |t| t.0),
                arguments: self.arguments.map(|t| t.0),
            }),
            "tool_call_response" | "tool_result" | "function_call_output" => Part::ToolResult {
                id: self.id.map(|t| t.0),
                response: self.response.or(self.result).map_or(text, |t| t.0),
            },
            _ => Part::Other(kind),
        }
    }
}

#[derive(Deserialize)]
struct JOpenAiCall<'a> {
    #[serde(borrow, default)]
    id: Option<Text<'a>>,
    #[serde(borrow, default)]
    function: Option<JFunction<'a>>,
    #[serde(borrow, default)]
    name: Option<Text<'a>>,
    #[serde(borrow, default)]
    arguments: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct JFunction<'a> {
    #[serde(borrow, default)]
    name: Option<Text<'a>>,
    #[serde(borrow, default)]
    arguments: Option<Text<'a>>,
    #[serde(borrow, default)]
    description: Option<Text<'a>>,
    #[serde(default)]
    parameters: Option<serde_json::Value>,
}

/// A tool definition: OTel `{type, name, description, parameters}` or OpenAI
/// `{type: "function", function: {name, description, parameters}}`.
#[derive(Deserialize)]
struct JTool<'a> {
    #[serde(borrow, default)]
    name: Option<Text<'a>>,
    #[serde(borrow, default)]
    description: Option<Text<'a>>,
    #[serde(default)]
    parameters: Option<serde_json::Value>,
    #[serde(borrow, default)]
    function: Option<JFunction<'a>>,
    #[serde(default, rename = "type")]
    _kind: IgnoredAny,
}

impl<'a> JTool<'a> {
    fn into_definition(self) -> Option<ToolDefinition<'a>> {
        let (name, description, parameters) = match self.function {
            Some(f) => (f.name, f.description, f.parameters),
            None => (self.name, self.description, self.parameters),
        };
        Some(ToolDefinition {
            name: name?.0,
            description: description.map(|t| t.0),
            parameters,
        })
    }
}

#[derive(Deserialize)]
struct JDocument<'a> {
    #[serde(borrow, default)]
    id: Option<Text<'a>>,
    #[serde(borrow, default)]
    content: Option<Text<'a>>,
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
    #[serde(default)]
    score: Option<serde_json::Value>,
    #[serde(borrow, default)]
    metadata: Option<Text<'a>>,
}

/// Top-level string fields of a JSON object, borrowed from `text`, in one pass: each `None` when
/// `text` is not an object, the field is absent or not a string, or it holds escapes (no model
/// name or response id does). Other fields are skipped without being built.
pub(crate) fn json_fields<'a, const N: usize>(
    text: &'a str,
    names: [&str; N],
) -> [Option<&'a str>; N] {
    struct Fields<'n, const N: usize>([&'n str; N]);
    impl<'de, const N: usize> Visitor<'de> for Fields<'_, N> {
        type Value = [Option<&'de str>; N];
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = [None; N];
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                match self.0.iter().position(|n| *n == key) {
                    Some(i) if found[i].is_none() => {
                        found[i] = map.next_value::<Option<&'de str>>()?;
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(Fields(names)).unwrap_or([None; N])
}

/// The `id` of a provider's response body (OpenAI's chat completion or response, Anthropic's
/// message), or of the one a LangChain `LLMResult` wraps (OpenInference's LangChain
/// instrumentation records the result, whose `llm_output.id` is the provider's id): only when
/// the body says what it is (`object` or `type`), so another JSON document with an `id` is not
/// taken for one.
pub(crate) fn response_body_id(body: &str) -> Option<&str> {
    const KINDS: [&str; 5] = [
        "chat.completion",
        "chat.completion.chunk",
        "text_completion",
        "response",
        "message",
    ];
    #[derive(Deserialize)]
    struct LlmResult<'a> {
        #[serde(borrow)]
        llm_output: Option<LlmOutput<'a>>,
    }
    #[derive(Deserialize)]
    struct LlmOutput<'a> {
        #[serde(borrow)]
        id: Option<&'a str>,
    }
    let [id, object, kind] = json_fields(body, ["id", "object", "type"]);
    if object.is_none() && kind == Some("LLMResult") {
        return serde_json::from_str::<LlmResult<'_>>(body)
            .ok()?
            .llm_output?
            .id;
    }
    object.or(kind).filter(|k| KINDS.contains(k))?;
    id
}
