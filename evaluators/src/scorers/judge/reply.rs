//! Reading a judge model's reply: the JSON object `{score, label, explanation}` it was asked for,
//! tolerating what models add around it (a code fence, a sentence before). A reply that cannot
//! be read is an error with the reason, never a guess.
//!
//! A judge's reply can repeat the span it judged, personal data included, so errors say what is
//! wrong and where (a size, a field's type), never quote the reply.

use serde_json::Value;

use crate::scorers::json_valid::unfence;

/// What the judge concluded, read from its reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The score, in the template's range.
    pub score: f64,
    /// Its label, if the judge gave one.
    pub label: Option<String>,
    /// Its explanation.
    pub explanation: String,
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplyError {
    /// No JSON object in the reply (of this many characters).
    #[error("the judge's reply holds no JSON object ({0} chars)")]
    NotJson(usize),
    /// A JSON object without a numeric `score`.
    #[error("the judge's reply has no numeric `score` (its `score` is {found}; {chars} chars)")]
    NoScore {
        /// What `score` is instead: `missing`, `a string that is not a number`, `an array`, …
        found: &'static str,
        /// The reply's length in characters.
        chars: usize,
    },
    /// A score outside the template's range.
    #[error("the judge's score {score} is outside {low}..={high}")]
    OutOfRange {
        /// The score.
        score: f64,
        /// The range's low end.
        low: f64,
        /// The range's high end.
        high: f64,
    },
    /// The judge declined to judge: a short excerpt of its reason, personal data masked (see
    /// [`refused`](super::refused)).
    #[error("the judge refused: {0}")]
    Refused(String),
}

impl ReplyError {
    /// A low-cardinality error type for the outcome.
    pub fn error_type(&self) -> &'static str {
        match self {
            ReplyError::NotJson(_) | ReplyError::NoScore { .. } => "judge_unparseable",
            ReplyError::OutOfRange { .. } => "judge_out_of_range",
            ReplyError::Refused(_) => "judge_refused",
        }
    }
}

/// What a JSON value is, for an error that must not quote it.
fn kind_of(value: Option<&Value>) -> &'static str {
    match value {
        None => "missing",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "a boolean",
        Some(Value::Number(_)) => "a number that is not finite",
        Some(Value::String(_)) => "a string that is not a number",
        Some(Value::Array(_)) => "an array",
        Some(Value::Object(_)) => "an object",
    }
}

/// Reads a reply's text (the message content) against the score range.
pub fn read(text: &str, range: (f64, f64)) -> Result<Verdict, ReplyError> {
    let chars = || text.chars().count();
    let body = unfence(text).unwrap_or(text.trim());
    let object = serde_json::from_str::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .or_else(|| {
            // A sentence around the object: take the outermost braces, when the last `}` comes
            // after the first `{` (a reply like "} {" has none).
            let start = body.find('{')?;
            let end = body.rfind('}').filter(|&end| end > start)?;
            serde_json::from_str::<Value>(body.get(start..=end)?)
                .ok()
                .filter(Value::is_object)
        })
        .ok_or_else(|| ReplyError::NotJson(chars()))?;
    let field = object.get("score");
    let score = match field {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|s: &f64| s.is_finite())
    .ok_or_else(|| ReplyError::NoScore {
        found: kind_of(field),
        chars: chars(),
    })?;
    let (low, high) = range;
    if score < low || score > high {
        return Err(ReplyError::OutOfRange { score, low, high });
    }
    let text_of = |key: &str| match object.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    };
    Ok(Verdict {
        score,
        label: text_of("label"),
        explanation: text_of("explanation").unwrap_or_default(),
    })
}

/// The JSON Schema the reply is asked to follow, where the server supports structured output.
pub fn schema(range: (f64, f64)) -> Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "score": {"type": "number", "minimum": range.0, "maximum": range.1},
            "label": {"type": "string"},
            "explanation": {"type": "string"}
        },
        "required": ["score", "label", "explanation"],
        "additionalProperties": false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_fenced_and_wrapped_objects() {
        let plain = read(r#"{"score": 0.5, "label": "partially_faithful", "explanation": "One claim is unsupported."}"#, (0.0, 1.0)).unwrap();
        assert_eq!(plain.score, 0.5);
        assert_eq!(plain.label.as_deref(), Some("partially_faithful"));
        let fenced = read(
            "```json\n{\"score\": \"4\", \"label\": \"relevant\"}\n```",
            (1.0, 5.0),
        )
        .unwrap();
        assert_eq!((fenced.score, fenced.explanation.as_str()), (4.0, ""));
        let wrapped = read(
            "Here is my evaluation: {\"score\": 1} Hope it helps.",
            (0.0, 1.0),
        )
        .unwrap();
        assert_eq!(wrapped.score, 1.0);
    }

    #[test]
    fn unreadable_replies_are_errors_with_the_reason() {
        let e = read("The answer looks fine to me.", (0.0, 1.0)).unwrap_err();
        assert_eq!(e.error_type(), "judge_unparseable");
        assert_eq!(
            e.to_string(),
            "the judge's reply holds no JSON object (28 chars)"
        );
        let e = read(r#"{"label": "faithful"}"#, (0.0, 1.0)).unwrap_err();
        assert!(
            matches!(
                e,
                ReplyError::NoScore {
                    found: "missing",
                    ..
                }
            ),
            "{e}"
        );
        let e = read(r#"{"score": 7}"#, (1.0, 5.0)).unwrap_err();
        assert_eq!(e.error_type(), "judge_out_of_range");
        assert!(read(r#"{"score": "high"}"#, (0.0, 1.0)).is_err());
    }

    #[test]
    fn a_reply_with_a_closing_brace_before_the_opening_one_is_unparseable() {
        for reply in ["} {", "}{", "x } y { z", "}\n{", "} {\"score\": 1"] {
            let e = read(reply, (0.0, 1.0)).unwrap_err();
            assert!(matches!(e, ReplyError::NotJson(_)), "{reply:?}: {e}");
        }
    }

    #[test]
    fn errors_about_a_reply_never_quote_it() {
        let secret = "ann@example.com";
        for reply in [
            format!("I think {secret} is fine"),
            format!(r#"{{"score": "{secret}"}}"#),
            format!(r#"Sure: {{"label": "{secret}"}}"#),
        ] {
            let e = read(&reply, (0.0, 1.0)).unwrap_err();
            assert!(!e.to_string().contains(secret), "{e}");
            assert!(e.to_string().contains("chars"), "{e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn reading_never_panics(text in "\\PC*", braces in "[{} \"a-z:0-9`\n]{0,40}") {
            let _ = read(&text, (0.0, 1.0));
            let _ = read(&braces, (0.0, 1.0));
            let _ = read(&format!("```json\n{braces}\n```"), (0.0, 1.0));
        }
    }
}
