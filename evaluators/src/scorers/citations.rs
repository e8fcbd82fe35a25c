//! `citations`: does every citation in the answer point at a document retrieved in the trace?
//!
//! Citation markers are found by patterns (configurable; by default `[1]`, `[doc-id]`, `【1】`,
//! `(Source: …)`), each capturing the reference in its first group. A reference resolves when it
//! names a document of the trace retrieved before the answer, by position (`[2]` is the second
//! document, counting across retrievers in order) or by id (case-insensitive). Scores resolved /
//! cited; passes when every citation resolves. An answer with retrieved documents but no citation
//! is labelled `uncited` and fails when `require_citations` (the default). Unresolved citations
//! are named by rank and position (`citation 2 at bytes 40..45 of the output`), never quoted.

use std::collections::BTreeSet;

use regex::Regex;
use serde::{Deserialize, Serialize};

use std::ops::Range;

use super::compile_regex;
use crate::evaluator::{Evaluator, Outcome};
use crate::scorers::registry::Builtin;
use crate::span::{Document, GenAiSpan};
use crate::trace::TraceView;

/// Configuration of `citations`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CitationsConfig {
    /// Citation patterns; the first capture group is the reference.
    #[serde(default = "default_patterns")]
    pub patterns: Vec<String>,
    /// Whether an answer with retrieved context must cite.
    #[serde(default = "yes")]
    pub require_citations: bool,
}

impl Builtin for CitationsConfig {
    const TYPE: &'static str = "citations";

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(Citations::build(self)?))
    }
}

impl Default for CitationsConfig {
    fn default() -> Self {
        CitationsConfig {
            patterns: default_patterns(),
            require_citations: true,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_patterns() -> Vec<String> {
    vec![
        // [1], [2, 3], [doc-7], [kb:42]; Markdown links `[text](url)` are skipped (below).
        r"\[\s*([\w.:#/-]+(?:\s*,\s*[\w.:#/-]+)*)\s*\]".into(),
        r"【\s*([\w.:#/-]+)\s*】".into(),
        r"(?i)\(\s*sources?\s*:\s*([^)]+?)\s*\)".into(),
    ]
}

/// Unresolved citations located in an explanation; the rest are counted.
const LISTED_UNRESOLVED: usize = 5;

/// The `citations` scorer.
#[derive(Debug)]
pub struct Citations {
    config: CitationsConfig,
    patterns: Vec<Regex>,
}

impl Citations {
    /// Builds the scorer, compiling the patterns.
    pub fn build(config: &CitationsConfig) -> Result<Citations, String> {
        if config.patterns.is_empty() {
            return Err("patterns: give at least one".into());
        }
        let patterns = config
            .patterns
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let re = compile_regex(&format!("patterns[{i}]"), p)?;
                if re.captures_len() < 2 {
                    return Err(format!(
                        "patterns[{i}]: `{p}` needs a capture group around the reference"
                    ));
                }
                Ok(re)
            })
            .collect::<Result<_, String>>()?;
        Ok(Citations {
            config: config.clone(),
            patterns,
        })
    }

    /// The references cited in `text`, in order of first appearance, without repeats (compared
    /// case-insensitively).
    pub fn references(&self, text: &str) -> Vec<String> {
        self.cited(text)
            .into_iter()
            .map(|(_, r)| r.to_owned())
            .collect()
    }

    /// [`Citations::references`] with where each first appears: the range of its marker.
    fn cited<'t>(&self, text: &'t str) -> Vec<(Range<usize>, &'t str)> {
        let mut seen = BTreeSet::new();
        let mut found: Vec<(usize, Range<usize>, &'t str)> = Vec::new();
        for marker in self.markers(text) {
            for (at, reference) in marker.references {
                if seen.insert(reference.to_lowercase()) {
                    found.push((at, marker.range.clone(), reference));
                }
            }
        }
        found.sort_by_key(|(at, _, _)| *at);
        found.into_iter().map(|(_, range, r)| (range, r)).collect()
    }

    /// Every citation marker in `text` with where it is, pattern by pattern (not in text order;
    /// markers of different patterns may overlap). `grounding` uses the positions to attach
    /// citations to the claim they follow and to cut the markers out of the claim's text.
    pub(crate) fn markers<'t>(&self, text: &'t str) -> Vec<Marker<'t>> {
        let mut markers = Vec::new();
        for re in &self.patterns {
            for captures in re.captures_iter(text) {
                let (Some(whole), Some(group)) = (captures.get(0), captures.get(1)) else {
                    continue;
                };
                // A marker followed by `(` is a Markdown link, not a citation.
                if text[whole.end()..].starts_with('(') {
                    continue;
                }
                // `[1, 2]` and `(Sources: a; b)` cite several.
                let references = group
                    .as_str()
                    .split([',', ';'])
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(|r| (group.start(), r))
                    .collect();
                markers.push(Marker {
                    range: whole.range(),
                    references,
                });
            }
        }
        markers
    }
}

/// One citation marker found in a text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Marker<'t> {
    /// Where the whole marker is (`[1, 2]`, brackets included).
    pub range: std::ops::Range<usize>,
    /// The references it cites, each with the offset of the group holding it.
    pub references: Vec<(usize, &'t str)>,
}

/// Whether `reference` names one of `documents`: by 1-based position or by id.
pub fn resolves(reference: &str, documents: &[&Document<'_>]) -> bool {
    position_of(reference, documents.iter().map(|d| d.id.as_deref())).is_some()
}

/// The 0-based index of the document `reference` names among documents with these ids: a number
/// is a 1-based position, anything else an id compared case-insensitively.
pub(crate) fn position_of<'d>(
    reference: &str,
    mut ids: impl ExactSizeIterator<Item = Option<&'d str>>,
) -> Option<usize> {
    if let Ok(n) = reference.parse::<usize>()
        && n >= 1
        && n <= ids.len()
    {
        return Some(n - 1);
    }
    ids.position(|id| id.is_some_and(|id| id.eq_ignore_ascii_case(reference)))
}

impl Evaluator for Citations {
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome {
        let _ = span;
        Outcome::not_applicable("citations are judged against the trace's documents")
    }

    fn evaluate_in_trace(&self, span: &GenAiSpan<'_>, trace: &TraceView<'_>) -> Outcome {
        let documents = trace.documents_before(span);
        if documents.is_empty() {
            return Outcome::not_applicable("no retrieved documents in the trace");
        }
        let Some(answer) = span.output_text() else {
            return Outcome::no_content();
        };
        let references = self.cited(&answer);
        if references.is_empty() {
            let passed = !self.config.require_citations;
            return Outcome::measured(
                0.0,
                passed,
                "uncited",
                format!(
                    "{} documents were retrieved but the answer cites none",
                    documents.len()
                ),
            );
        }
        // Unresolved citations are named by their rank among the answer's citations and where
        // their marker is, not by what they say: a marker is the answer's text, and a model
        // can put anything between brackets.
        let unresolved: Vec<(usize, &Range<usize>)> = references
            .iter()
            .enumerate()
            .filter(|(_, (_, r))| !resolves(r, &documents))
            .map(|(i, (range, _))| (i + 1, range))
            .collect();
        let resolved = references.len() - unresolved.len();
        let value = resolved as f64 / references.len() as f64;
        if unresolved.is_empty() {
            return Outcome::measured(
                value,
                true,
                "resolved",
                format!(
                    "{resolved} citations resolve to the {} retrieved documents",
                    documents.len()
                ),
            );
        }
        let mut list: Vec<String> = unresolved
            .iter()
            .take(LISTED_UNRESOLVED)
            .map(|(n, range)| format!("citation {n} at bytes {}..{}", range.start, range.end))
            .collect();
        if unresolved.len() > LISTED_UNRESOLVED {
            list.push(format!("{} more", unresolved.len() - LISTED_UNRESOLVED));
        }
        Outcome::measured(
            value,
            false,
            "unresolved",
            format!(
                "{} of {} citations match no retrieved document ({} retrieved): {} of the output",
                unresolved.len(),
                references.len(),
                documents.len(),
                list.join(", ")
            ),
        )
    }

    fn needs_trace(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::kv_str;
    use crate::span::ResourceView;
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn citations() -> Citations {
        Citations::build(&CitationsConfig::default()).unwrap()
    }

    #[test]
    fn markers_are_found_in_their_usual_forms() {
        let c = citations();
        assert_eq!(c.references("Paris [1] is large [2, 3]."), ["1", "2", "3"]);
        assert_eq!(c.references("See 【4】 and (Source: kb-7)."), ["4", "kb-7"]);
        assert_eq!(c.references("a [doc-1] b [DOC-1] c [1]"), ["doc-1", "1"]);
        assert!(
            c.references("a [link](https://x) and [ ] nothing")
                .is_empty()
        );
    }

    fn trace_with(answer: &str, docs: &[(&str, &str)]) -> (Vec<Span>, usize) {
        let mut retriever = vec![kv_str("openinference.span.kind", "RETRIEVER")];
        for (i, (id, content)) in docs.iter().enumerate() {
            retriever.push(kv_str(&format!("retrieval.documents.{i}.document.id"), *id));
            retriever.push(kv_str(
                &format!("retrieval.documents.{i}.document.content"),
                *content,
            ));
        }
        let output = serde_json::json!([{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]);
        let spans = vec![
            Span {
                trace_id: vec![1; 16],
                span_id: vec![1; 8],
                start_time_unix_nano: 10,
                attributes: retriever,
                ..Default::default()
            },
            Span {
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                start_time_unix_nano: 20,
                attributes: vec![
                    kv_str("gen_ai.operation.name", "chat"),
                    kv_str("gen_ai.output.messages", output.to_string()),
                ],
                ..Default::default()
            },
        ];
        (spans, 1)
    }

    fn judge(answer: &str, docs: &[(&str, &str)]) -> Outcome {
        let (spans, answer_index) = trace_with(answer, docs);
        let views: Vec<GenAiSpan<'_>> = spans
            .iter()
            .map(|s| GenAiSpan::new(s, ResourceView::default(), None))
            .collect();
        let trace = TraceView::new(views, true);
        let answer = trace
            .spans()
            .iter()
            .find(|s| s.span_id() == spans[answer_index].span_id.as_slice())
            .unwrap();
        citations().evaluate_in_trace(answer, &trace)
    }

    fn scored(o: Outcome) -> (f64, bool, String, String) {
        match o {
            Outcome::Scored(s) => (s.value, s.passed, s.label.into_owned(), s.explanation),
            other => panic!("not scored: {other:?}"),
        }
    }

    #[test]
    fn citations_resolve_by_position_or_id() {
        let docs = [("kb-1", "a"), ("kb-2", "b")];
        let (v, passed, label, _) = scored(judge("It is so [1][kb-2].", &docs));
        assert_eq!((v, passed, label.as_str()), (1.0, true, "resolved"));
        let (v, passed, label, why) = scored(judge("It is so [1] and [4] and [kb-9].", &docs));
        assert!((v - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!((passed, label.as_str()), (false, "unresolved"));
        assert_eq!(
            why,
            "2 of 3 citations match no retrieved document (2 retrieved): \
             citation 2 at bytes 17..20, citation 3 at bytes 25..31 of the output"
        );
        let (v, passed, label, _) = scored(judge("No citation here.", &docs));
        assert_eq!((v, passed, label.as_str()), (0.0, false, "uncited"));
    }

    #[test]
    fn no_documents_is_not_applicable_and_bad_patterns_are_rejected() {
        assert!(matches!(judge("[1]", &[]), Outcome::Skipped { .. }));
        let err = Citations::build(&CitationsConfig {
            patterns: vec![r"\[\d+\]".into()],
            require_citations: true,
        })
        .unwrap_err();
        assert!(err.contains("capture group"), "{err}");
    }
    #[test]
    fn citations_explanation_names_unresolved_markers_by_position() {
        let docs = [("kb-1", "a")];
        let (_, passed, label, why) = scored(judge(
            "Your account [1] belongs to [123-45-6789] (Source: jane@example.com).",
            &docs,
        ));
        assert_eq!((passed, label.as_str()), (false, "unresolved"));
        assert!(
            !why.contains("123-45-6789") && !why.contains("jane"),
            "{why}"
        );
        assert!(
            why.ends_with("citation 2 at bytes 28..41, citation 3 at bytes 42..68 of the output"),
            "{why}"
        );
    }
}
