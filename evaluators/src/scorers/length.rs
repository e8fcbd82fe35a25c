//! `length`: is the answer within the length a route expects?
//!
//! Counts characters, words, or output tokens (from the span's usage, so it works without
//! content capture). Scores the measured length; passes within `[min, max]`.

use serde::{Deserialize, Serialize};

use super::TextSource;
use crate::evaluator::{Evaluator, Outcome};
use crate::scorers::registry::Builtin;
use crate::span::GenAiSpan;

/// What `length` counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Unicode characters.
    #[default]
    Chars,
    /// Whitespace-separated words.
    Words,
    /// Output tokens as reported in the span's usage.
    Tokens,
}

/// Configuration of `length`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LengthConfig {
    /// What to count.
    #[serde(default)]
    pub unit: Unit,
    /// Shortest acceptable length.
    #[serde(default)]
    pub min: Option<u64>,
    /// Longest acceptable length.
    #[serde(default)]
    pub max: Option<u64>,
    /// Which text to measure (characters and words only).
    #[serde(default)]
    pub on: TextSource,
}

impl Builtin for LengthConfig {
    const TYPE: &'static str = "length";
    const EXAMPLE: &'static str = r#"{"max": 500}"#;

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(Length::build(self)?))
    }
}

/// The `length` scorer.
#[derive(Debug)]
pub struct Length {
    config: LengthConfig,
}

impl Length {
    /// Validates the bounds.
    pub fn build(config: &LengthConfig) -> Result<Length, String> {
        if let (Some(min), Some(max)) = (config.min, config.max)
            && min > max
        {
            return Err(format!("min ({min}) is greater than max ({max})"));
        }
        if config.min.is_none() && config.max.is_none() {
            return Err("give `min`, `max` or both".into());
        }
        if config.unit == Unit::Tokens && config.on != TextSource::Output {
            return Err("on: token counts exist only for the output".into());
        }
        Ok(Length {
            config: config.clone(),
        })
    }
}

impl Evaluator for Length {
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome {
        let c = &self.config;
        let n = match c.unit {
            Unit::Tokens => match span.usage().output {
                Some(n) => n,
                None => return Outcome::not_applicable("no output token count recorded"),
            },
            unit => {
                let Some(text) = c.on.read(span) else {
                    return Outcome::no_content();
                };
                if unit == Unit::Words {
                    text.split_whitespace().count() as u64
                } else {
                    text.chars().count() as u64
                }
            }
        };
        let unit = match c.unit {
            Unit::Chars => "characters",
            Unit::Words => "words",
            Unit::Tokens => "tokens",
        };
        let (passed, label, explanation) = match (c.min, c.max) {
            (Some(min), _) if n < min => {
                (false, "too_short", format!("{n} {unit}, fewer than {min}"))
            }
            (_, Some(max)) if n > max => {
                (false, "too_long", format!("{n} {unit}, more than {max}"))
            }
            _ => (true, "ok", format!("{n} {unit}")),
        };
        Outcome::measured(n as f64, passed, label, explanation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scorers::testing::{chat, i, view};

    fn cfg(unit: Unit, min: Option<u64>, max: Option<u64>) -> LengthConfig {
        LengthConfig {
            unit,
            min,
            max,
            on: TextSource::Output,
        }
    }

    #[test]
    fn counts_chars_words_and_tokens() {
        let mut sp = chat("Héllo wide   world");
        sp.attributes.push(i("gen_ai.usage.output_tokens", 40));
        let run = |c: LengthConfig| {
            Length::build(&c)
                .unwrap()
                .evaluate(&view(&sp))
                .score()
                .cloned()
                .unwrap()
        };
        let chars = run(cfg(Unit::Chars, None, Some(10)));
        assert_eq!(
            (chars.value, chars.label.as_ref(), chars.passed),
            (18.0, "too_long", false)
        );
        let words = run(cfg(Unit::Words, Some(5), None));
        assert_eq!((words.value, words.label.as_ref()), (3.0, "too_short"));
        let tokens = run(cfg(Unit::Tokens, Some(1), Some(100)));
        assert_eq!((tokens.value, tokens.passed), (40.0, true));
    }

    #[test]
    fn rejects_bad_bounds() {
        assert!(Length::build(&cfg(Unit::Chars, Some(5), Some(1))).is_err());
        assert!(Length::build(&cfg(Unit::Chars, None, None)).is_err());
    }
}
