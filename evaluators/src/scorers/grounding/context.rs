//! Context blocks in a prompt: the documents of a RAG answer when no retriever span recorded them.
//!
//! Many applications retrieve without instrumenting the retriever and paste the documents into
//! the system or user message. This module finds them with a deliberately small heuristic, so a
//! plain instruction prompt is never mistaken for context:
//!
//! 1. XML-ish elements `<document>`, `<doc>`, `<context>`, `<source>`, `<passage>`, `<chunk>`:
//!    each innermost element is a block (its `id` or `index` attribute is the block's id). When a
//!    text has such elements, nothing else in it is context.
//! 2. Otherwise, lines:
//!    - an item header at the start of a line, `[1] …`, `【1】 …`, `Document 1: …`, `Doc 1: …`,
//!      `Source 1: …`, `Passage 1: …`, starts a block whose id is the number;
//!    - a context header, a line ending in `:` that mentions context, documents, sources,
//!      passages, search results or knowledge (`Context:`, `Here are the relevant documents:`) or
//!      the LangChain and LlamaIndex default prompt lines, starts a context region, in which every
//!      paragraph is a block;
//!    - blank lines and separator lines (`---`) end a block; a line starting with `Question:`,
//!      `Query:`, `Answer:` or `Instructions:` ends the region.
//!
//! Tool results sent back to the model are context as they are: each is one block.

use std::ops::Range;

use crate::span::{GenAiSpan, Part};

/// One context block of a prompt.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Block<'s> {
    /// The block's id (`1` for `[1] …`), when the prompt gives one.
    pub id: Option<&'s str>,
    /// The block's text.
    pub text: &'s str,
}

/// The context blocks of a span's prompt: system instructions, user messages and tool results.
pub(super) fn prompt_blocks<'s>(span: &'s GenAiSpan<'_>) -> Vec<Block<'s>> {
    let mut blocks = Vec::new();
    for text in span.system_instructions() {
        blocks_of(text, &mut blocks);
    }
    for message in span.input_messages() {
        let user = message.role == "user";
        for part in &message.parts {
            match part {
                Part::Text(text) if user => blocks_of(text, &mut blocks),
                Part::ToolResult { id, response } if !response.trim().is_empty() => {
                    blocks.push(Block {
                        id: id.as_deref(),
                        text: response,
                    })
                }
                _ => {}
            }
        }
    }
    blocks
}

const TAGS: [&str; 6] = ["document", "doc", "context", "source", "passage", "chunk"];

/// The known tag opening at `text[at..]` (just after `<`): its name as written and the end of
/// the opening tag.
fn opening_tag(text: &str, at: usize) -> Option<(&str, usize)> {
    let rest = &text[at..];
    let name_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    let name = &rest[..name_len];
    if !TAGS.iter().any(|t| t.eq_ignore_ascii_case(name)) {
        return None;
    }
    let after = rest[name_len..].chars().next()?;
    if !(after == '>' || after.is_whitespace()) {
        return None;
    }
    let close = rest.find('>')?;
    Some((name, at + close + 1))
}

/// An attribute's value in an opening tag (`id="3"`, `index='3'`).
fn attribute<'t>(tag: &'t str, key: &str) -> Option<&'t str> {
    let mut search = 0;
    while let Some(i) = tag[search..].find(key) {
        let at = search + i;
        search = at + key.len();
        let before_ok = tag[..at].ends_with(char::is_whitespace);
        let rest = tag[search..].trim_start();
        if let (true, Some(rest)) = (before_ok, rest.strip_prefix('=')) {
            let rest = rest.trim_start();
            let quote = rest.chars().next().filter(|q| *q == '"' || *q == '\'')?;
            let value = &rest[1..];
            return value.find(quote).map(|end| &value[..end]);
        }
    }
    None
}

/// Blocks of innermost known XML-ish elements.
fn tagged_blocks<'t>(text: &'t str, out: &mut Vec<Block<'t>>) -> bool {
    let mut found = false;
    let mut at = 0;
    while let Some(i) = text[at..].find('<') {
        let open = at + i + 1;
        at = open;
        let Some((name, body_start)) = opening_tag(text, open) else {
            continue;
        };
        let closing = format!("</{name}");
        let Some(len) = text[body_start..].find(&closing) else {
            continue;
        };
        let body = &text[body_start..body_start + len];
        // A wrapper (`<documents><document>…`): its children are the blocks.
        let wraps = body
            .match_indices('<')
            .any(|(j, _)| opening_tag(body, j + 1).is_some());
        if wraps {
            continue;
        }
        found = true;
        let tag = &text[open..body_start - 1];
        let body = body.trim();
        if !body.is_empty() {
            out.push(Block {
                id: attribute(tag, "id").or_else(|| attribute(tag, "index")),
                text: body,
            });
        }
        at = body_start + len;
    }
    found
}

/// An item header at the start of `line`: the id and where the item's text starts.
fn item_header(line: &str) -> Option<(&str, usize)> {
    let lead = line.len() - line.trim_start().len();
    let rest = &line[lead..];
    for (open, close) in [("[", "]"), ("【", "】")] {
        if let Some(inner) = rest.strip_prefix(open) {
            let digits = inner.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && inner[digits..].starts_with(close) {
                return Some((&inner[..digits], lead + open.len() + digits + close.len()));
            }
        }
    }
    for word in ["document", "doc", "source", "passage"] {
        let Some(head) = rest.get(..word.len()) else {
            continue;
        };
        if !head.eq_ignore_ascii_case(word) {
            continue;
        }
        let after = rest[word.len()..].trim_start();
        let after = after.strip_prefix('#').unwrap_or(after);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            let tail = &after[digits..];
            if let Some(text) = tail.strip_prefix(':').or_else(|| tail.strip_prefix(']')) {
                let start = line.len() - text.len();
                return Some((&after[..digits], start));
            }
        }
    }
    None
}

/// Whether `line` (trimmed) opens a context region; returns where the text after its colon starts.
fn context_header(line: &str) -> Option<usize> {
    let trimmed = line.trim();
    let lower = trimmed.to_ascii_lowercase();
    const PHRASES: [&str; 3] = [
        "context information is below",
        "following pieces of context",
        "use the following context",
    ];
    if PHRASES.iter().any(|p| lower.contains(p)) {
        return Some(line.len());
    }
    const WORDS: [&str; 6] = [
        "context",
        "document",
        "source",
        "passage",
        "search result",
        "knowledge",
    ];
    // `Context: …` with the text on the same line, or a header line ending in `:`.
    let colon = lower.find(':')?;
    let head = &lower[..colon];
    let short_head = head.split_whitespace().count() <= 8;
    let mentions = WORDS.iter().any(|w| head.contains(w));
    if mentions && short_head && (colon + 1 == lower.len() || head.split_whitespace().count() <= 2)
    {
        let lead = line.len() - line.trim_start().len();
        return Some(lead + colon + 1);
    }
    None
}

/// Whether `line` ends the context region (the question or the instructions follow).
fn ends_region(line: &str) -> bool {
    let lower = line.trim_start();
    ["question:", "query:", "answer:", "instructions:", "user:"]
        .iter()
        .any(|p| {
            lower
                .get(..p.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(p))
        })
}

/// Appends the context blocks of one prompt text.
pub(super) fn blocks_of<'t>(text: &'t str, out: &mut Vec<Block<'t>>) {
    if tagged_blocks(text, out) {
        return;
    }
    let mut region = false;
    let mut current: Option<(Option<&'t str>, Range<usize>)> = None;
    let mut close = |current: &mut Option<(Option<&'t str>, Range<usize>)>| {
        if let Some((id, range)) = current.take() {
            let body = text[range].trim();
            if !body.is_empty() {
                out.push(Block { id, text: body });
            }
        }
    };
    let mut offset = 0;
    for line in text.split('\n') {
        let start = offset;
        let end = start + line.len();
        offset = end + 1;
        let blank = line.trim().is_empty() || line.trim().chars().all(|c| "-=_*#".contains(c));
        if let Some((id, from)) = item_header(line) {
            close(&mut current);
            region = true;
            current = Some((Some(id), start + from..end));
        } else if ends_region(line) {
            close(&mut current);
            region = false;
        } else if let Some(from) = context_header(line) {
            close(&mut current);
            region = true;
            current = Some((None, start + from..end));
        } else if blank {
            close(&mut current);
        } else if region {
            match &mut current {
                Some((_, range)) => range.end = end,
                None => current = Some((None, start..end)),
            }
        }
    }
    close(&mut current);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(text: &str) -> Vec<(Option<&str>, &str)> {
        let mut out = Vec::new();
        blocks_of(text, &mut out);
        out.into_iter().map(|b| (b.id, b.text)).collect()
    }

    #[test]
    fn numbered_items_after_a_context_header_are_blocks() {
        let prompt = "You are a helpful support agent. Cite sources as [n].\nContext:\n\
            [1] The Eiffel Tower is 330 metres tall.\n[2] The tower was completed in 1889.\n\
            [3] Paris is the capital of France.";
        assert_eq!(
            blocks(prompt),
            [
                (Some("1"), "The Eiffel Tower is 330 metres tall."),
                (Some("2"), "The tower was completed in 1889."),
                (Some("3"), "Paris is the capital of France."),
            ]
        );
        assert_eq!(
            blocks("Document 1: Alpha text.\nDocument 2: Beta text.\n\nQuestion: why?"),
            [(Some("1"), "Alpha text."), (Some("2"), "Beta text.")]
        );
    }

    #[test]
    fn paragraphs_of_a_context_region_and_tagged_elements_are_blocks() {
        let llama = "Context information is below.\n---------------------\nFirst fact here.\n\n\
            Second fact,\non two lines.\n---------------------\nGiven the context, answer.\n\
            Query: what?\nAnswer: ";
        assert_eq!(
            blocks(llama),
            [
                (None, "First fact here."),
                (None, "Second fact,\non two lines."),
                (None, "Given the context, answer."),
            ]
        );
        let tagged = "Answer from these.\n<documents><document id=\"kb-1\">One.</document>\n\
            <doc index='2'>Two.</doc></documents><context>Three.</context>";
        assert_eq!(
            blocks(tagged),
            [
                (Some("kb-1"), "One."),
                (Some("2"), "Two."),
                (None, "Three.")
            ]
        );
        assert_eq!(
            blocks("Context: the sky is blue."),
            [(None, "the sky is blue.")]
        );
    }

    #[test]
    fn instruction_prompts_have_no_context() {
        for prompt in [
            "You are a helpful support agent. Cite sources as [n].",
            "Answer using only the provided context.\nBe concise.",
            "Rules:\n1. Be polite.\n2. Never share secrets.",
            "Use <b>bold</b> for emphasis, and <documentation> is not a tag we know.",
        ] {
            assert!(blocks(prompt).is_empty(), "{prompt}");
        }
    }
}
