//! Reading a judge model's reply: the JSON object `{score, label, explanation}` it was asked for,
//! tolerating what models add around it (a code fence, a sentence before). A reply that cannot
//! be read is an error with the reason, never a guess.

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
    /// No JSON object in the reply.
    #[error("the judge's reply holds no JSON object: {0}")]
    NotJson(String),
    /// A JSON object without a numeric `score`.
    #[error("the judge's reply has no numeric `score`: {0}")]
    NoScore(String),
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
    /// The judge declined to judge.
    #[error("the judge refused: {0}")]
    Refused(String),
}

impl ReplyError {
    /// A low-cardinality error type for the outcome.
    pub fn error_type(&self) -> &'static str {
        match self {
            ReplyError::NotJson(_) | ReplyError::NoScore(_) => "judge_unparseable",
            ReplyError::OutOfRange { .. } => "judge_out_of_range",
            ReplyError::Refused(_) => "judge_refused",
        }
    }
}

fn short(text: &str) -> String {
    crate::scorers::excerpt(text.trim(), 200).into_owned()
}

/// Reads a reply's text (the message content) against the score range.
pub fn read(text: &str, range: (f64, f64)) -> Result<Verdict, ReplyError> {
    let body = unfence(text).unwrap_or(text.trim());
    let object = serde_json::from_str::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .or_else(|| {
            // A sentence around the object: take the outermost braces.
            let start = body.find('{')?;
            let end = body.rfind('}')?;
            serde_json::from_str::<Value>(&body[start..=end])
                .ok()
                .filter(Value::is_object)
        })
        .ok_or_else(|| ReplyError::NotJson(short(text)))?;
    let score = match object.get("score") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|s: &f64| s.is_finite())
    .ok_or_else(|| ReplyError::NoScore(short(text)))?;
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
        assert!(e.to_string().contains("looks fine"), "{e}");
        let e = read(r#"{"label": "faithful"}"#, (0.0, 1.0)).unwrap_err();
        assert!(matches!(e, ReplyError::NoScore(_)));
        let e = read(r#"{"score": 7}"#, (1.0, 5.0)).unwrap_err();
        assert_eq!(e.error_type(), "judge_out_of_range");
        assert!(read(r#"{"score": "high"}"#, (0.0, 1.0)).is_err());
    }
}
