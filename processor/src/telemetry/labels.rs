//! Label values that come from spans (models, and the opt-in segment labels: service, prompt
//! version, provider, route), made safe to expose: bounded in length and printable
//! ([`label_value`]), and bounded in number ([`LabelCap`]). The metrics and the drift series
//! both label by them.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Mutex;

use evalstream_evaluators::span::GenAiSpan;
use serde::Deserialize;

/// Longest label value kept, in bytes. Model names, services, prompt versions and routes are
/// short in practice (the longest model id in the built-in price table is under 50 bytes); a
/// span can carry anything, though: 120 spans with 1 MiB model names made one scrape 11 GB. A
/// longer value is cut and given a hash of the whole value, so distinct long values stay
/// distinct series.
pub const MAX_LABEL_BYTES: usize = 128;

/// A label value made safe to expose: control characters (newlines, escapes) become `_`, and a
/// value longer than [`MAX_LABEL_BYTES`] is cut on a character boundary and ends in `~` and 16
/// hex digits of its hash.
pub fn label_value(value: &str) -> Cow<'_, str> {
    if value.len() <= MAX_LABEL_BYTES && !value.chars().any(char::is_control) {
        return Cow::Borrowed(value);
    }
    let printable = |c: char| if c.is_control() { '_' } else { c };
    if value.len() <= MAX_LABEL_BYTES {
        return Cow::Owned(value.chars().map(printable).collect());
    }
    let suffix = format!("~{:016x}", xxhash_rust::xxh3::xxh3_64(value.as_bytes()));
    let kept = evalstream_evaluators::text::prefix_bytes(value, MAX_LABEL_BYTES - suffix.len());
    let mut out: String = kept.chars().map(printable).collect();
    out.push_str(&suffix);
    Cow::Owned(out)
}

/// A set of label values that stops growing at a cap; later values share the label `other`.
/// Values are made safe first ([`label_value`]), so what it keeps is bounded in bytes too.
#[derive(Debug)]
pub struct LabelCap {
    seen: Mutex<HashSet<String>>,
    max: usize,
}

impl LabelCap {
    /// A cap of `max` distinct values.
    pub fn new(max: usize) -> LabelCap {
        LabelCap {
            seen: Mutex::new(HashSet::new()),
            max,
        }
    }

    /// The label to use for `value`.
    pub fn label(&self, value: &str) -> String {
        let value = label_value(value);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value.as_ref()) {
            return value.into_owned();
        }
        if seen.len() < self.max {
            seen.insert(value.to_string());
            return value.into_owned();
        }
        "other".to_owned()
    }
}

/// A span property the score metrics can be split by. Only properties with a small, stable set
/// of values in practice: never ids or free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    /// The request model (`gen_ai.request.model` and its equivalents).
    Model,
    /// The resource's `service.name`.
    Service,
    /// The prompt version (`gen_ai.prompt.version` and its equivalents).
    PromptVersion,
    /// The provider (`gen_ai.provider.name` and its equivalents).
    Provider,
    /// The application's route: the span attribute `app.route`, else `http.route`.
    Route,
}

impl Segment {
    /// The label name.
    pub fn label(self) -> &'static str {
        match self {
            Segment::Model => "model",
            Segment::Service => "service",
            Segment::PromptVersion => "prompt_version",
            Segment::Provider => "provider",
            Segment::Route => "route",
        }
    }

    /// The span's value of this property, if it has one.
    pub fn value<'a>(self, span: &GenAiSpan<'a>) -> Option<Cow<'a, str>> {
        match self {
            Segment::Model => span.model().map(Cow::Borrowed),
            Segment::Service => span.resource().service_name.map(Cow::Borrowed),
            Segment::PromptVersion => span.prompt_version().map(Cow::Borrowed),
            Segment::Provider => span.provider().map(Cow::Borrowed),
            Segment::Route => ["app.route", "http.route"]
                .iter()
                .find_map(|key| span.attribute(key))
                .map(evalstream_evaluators::span::attribute_text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 120 spans with 1 MiB model names made one scrape 11 GB and the process peak at 20.5 GB.
    #[test]
    fn label_values_are_printable_bounded_and_still_distinct() {
        let huge_a = format!("{}a", "m".repeat(1 << 20));
        let huge_b = format!("{}b", "m".repeat(1 << 20));
        let a = label_value(&huge_a);
        let b = label_value(&huge_b);
        assert!(a.len() <= MAX_LABEL_BYTES && b.len() <= MAX_LABEL_BYTES);
        assert_ne!(a, b, "distinct long values stay distinct");
        assert!(a.starts_with("mmmm"));
        assert_eq!(label_value("gpt-4o"), "gpt-4o");
        assert_eq!(label_value("bad\nline\u{7}"), "bad_line_");
        // Multi-byte text is cut on a character boundary.
        let wide = "é".repeat(200);
        let wide = label_value(&wide);
        assert!(wide.len() <= MAX_LABEL_BYTES && wide.starts_with('é'));
    }

    #[test]
    fn label_cap_stops_growing() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.label("a"), "a");
        assert_eq!(cap.label("b"), "b");
        assert_eq!(cap.label("c"), "other");
        assert_eq!(cap.label("a"), "a");
    }
}
