//! `regex`, `contains` and `not_contains`: does the text match what a route requires or forbids?
//!
//! `regex` passes when the pattern matches (or, with `expect: no_match`, when it does not).
//! `contains` passes when the text holds any (or, with `mode: all`, every) of the given values;
//! `not_contains` passes when it holds none of them. Matching is case-insensitive by default.
//! Patterns and values are compiled once, when the configuration is built. Scores `1.0` pass /
//! `0.0` fail. Explanations name the pattern or values (configuration) and where a pattern
//! matched, never the matched text: a pattern written to catch leaks matches the leak.

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use super::{TextSource, compile_regex, excerpt};
use crate::evaluator::{Evaluator, Outcome};
use crate::scorers::registry::Builtin;
use crate::span::GenAiSpan;

/// Whether a `regex` evaluator wants the pattern to match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Pass when the pattern matches.
    #[default]
    Match,
    /// Pass when it does not.
    NoMatch,
}

/// Configuration of `regex`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegexConfig {
    /// The pattern (Rust `regex` syntax; no look-around, linear time).
    pub pattern: String,
    /// Pass on a match or on no match.
    #[serde(default)]
    pub expect: Expect,
    /// Which text to match.
    #[serde(default)]
    pub on: TextSource,
}

impl Builtin for RegexConfig {
    const TYPE: &'static str = "regex";
    const EXAMPLE: &'static str = r#"{"pattern": "sorry"}"#;

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(RegexMatch::build(self)?))
    }
}

/// Whether `contains` needs any or all of its values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// At least one value.
    #[default]
    Any,
    /// Every value.
    All,
}

/// Configuration of `contains` and `not_contains`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContainsConfig {
    /// The strings to look for.
    pub values: Vec<String>,
    /// For `contains`: any (default) or all of the values must appear.
    #[serde(default)]
    pub mode: Mode,
    /// Match case exactly.
    #[serde(default)]
    pub case_sensitive: bool,
    /// Which text to search.
    #[serde(default)]
    pub on: TextSource,
}

impl Builtin for ContainsConfig {
    const TYPE: &'static str = "contains";
    const EXAMPLE: &'static str = r#"{"values": ["acme"]}"#;

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(Contains::build(self, false)?))
    }
}

/// Configuration of `not_contains`: the options of `contains`, its own type so it registers
/// under its own name.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct NotContainsConfig(pub ContainsConfig);

impl Builtin for NotContainsConfig {
    const TYPE: &'static str = "not_contains";
    const EXAMPLE: &'static str = r#"{"values": ["acme"]}"#;

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(Contains::build(&self.0, true)?))
    }
}

/// The `regex` scorer.
#[derive(Debug)]
pub struct RegexMatch {
    regex: Regex,
    expect: Expect,
    on: TextSource,
}

impl RegexMatch {
    /// Compiles the pattern.
    pub fn build(config: &RegexConfig) -> Result<RegexMatch, String> {
        Ok(RegexMatch {
            regex: compile_regex("pattern", &config.pattern)?,
            expect: config.expect,
            on: config.on,
        })
    }
}

impl Evaluator for RegexMatch {
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome {
        let Some(text) = self.on.read(span) else {
            return Outcome::no_content();
        };
        let found = self.regex.find(&text);
        let passed = found.is_some() == (self.expect == Expect::Match);
        let label = if found.is_some() { "match" } else { "no_match" };
        let pattern = excerpt(self.regex.as_str(), 80);
        let explanation = match found {
            Some(m) => format!(
                "`{pattern}` matched at bytes {}..{} of the {}",
                m.start(),
                m.end(),
                self.on.as_str()
            ),
            None => format!("`{pattern}` did not match the {}", self.on.as_str()),
        };
        Outcome::check(passed, label, explanation)
    }
}

/// The `contains` and `not_contains` scorers.
#[derive(Debug)]
pub struct Contains {
    values: Vec<String>,
    matchers: Vec<Regex>,
    mode: Mode,
    negate: bool,
    on: TextSource,
}

impl Contains {
    /// Compiles the values; `negate` makes it `not_contains`.
    pub fn build(config: &ContainsConfig, negate: bool) -> Result<Contains, String> {
        if config.values.is_empty() || config.values.iter().any(String::is_empty) {
            return Err("values: give at least one non-empty string".into());
        }
        let matchers = config
            .values
            .iter()
            .map(|v| {
                RegexBuilder::new(&regex::escape(v))
                    .case_insensitive(!config.case_sensitive)
                    .build()
                    .map_err(|e| format!("values: cannot match `{v}`: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Contains {
            values: config.values.clone(),
            matchers,
            mode: config.mode,
            negate,
            on: config.on,
        })
    }
}

impl Evaluator for Contains {
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome {
        let Some(text) = self.on.read(span) else {
            return Outcome::no_content();
        };
        let present: Vec<&str> = self
            .matchers
            .iter()
            .zip(&self.values)
            .filter(|(m, _)| m.is_match(&text))
            .map(|(_, v)| v.as_str())
            .collect();
        let source = self.on.as_str();
        if self.negate {
            return match present.first() {
                None => Outcome::check(
                    true,
                    "absent",
                    format!("none of the values in the {source}"),
                ),
                Some(_) => Outcome::check(
                    false,
                    "present",
                    format!("found in the {source}: {}", present.join(", ")),
                ),
            };
        }
        let passed = match self.mode {
            Mode::Any => !present.is_empty(),
            Mode::All => present.len() == self.values.len(),
        };
        if passed {
            Outcome::check(
                true,
                "present",
                format!("found in the {source}: {}", present.join(", ")),
            )
        } else {
            let missing: Vec<&str> = self
                .values
                .iter()
                .map(String::as_str)
                .filter(|v| !present.contains(v))
                .collect();
            Outcome::check(
                false,
                "absent",
                format!("missing from the {source}: {}", missing.join(", ")),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scorers::testing::{chat, view};

    #[test]
    fn regex_passes_on_match_or_on_no_match() {
        let sp = chat("Your order #A-1234 ships today.");
        let m = RegexMatch::build(&RegexConfig {
            pattern: r"#[A-Z]-\d{4}".into(),
            expect: Expect::Match,
            on: TextSource::Output,
        })
        .unwrap();
        let score = m.evaluate(&view(&sp)).score().cloned().unwrap();
        assert!(score.passed && score.label == "match");
        assert_eq!(
            score.explanation,
            r"`#[A-Z]-\d{4}` matched at bytes 11..18 of the output"
        );
        let n = RegexMatch::build(&RegexConfig {
            pattern: r"(?i)guarantee".into(),
            expect: Expect::NoMatch,
            on: TextSource::Output,
        })
        .unwrap();
        assert!(n.evaluate(&view(&sp)).score().unwrap().passed);
        assert!(
            RegexMatch::build(&RegexConfig {
                pattern: "(".into(),
                expect: Expect::Match,
                on: TextSource::Output
            })
            .is_err()
        );
    }

    #[test]
    fn contains_any_all_and_not_contains() {
        let sp = chat("Consult a Doctor before changing your dose.");
        let cfg = |values: &[&str], mode| ContainsConfig {
            values: values.iter().map(|v| v.to_string()).collect(),
            mode,
            case_sensitive: false,
            on: TextSource::Output,
        };
        let any = Contains::build(&cfg(&["doctor", "pharmacist"], Mode::Any), false).unwrap();
        assert!(any.evaluate(&view(&sp)).score().unwrap().passed);
        let all = Contains::build(&cfg(&["doctor", "pharmacist"], Mode::All), false).unwrap();
        let score = all.evaluate(&view(&sp)).score().cloned().unwrap();
        assert!(!score.passed && score.explanation.contains("pharmacist"));
        let banned = Contains::build(&cfg(&["competitorco", "dose"], Mode::Any), true).unwrap();
        let score = banned.evaluate(&view(&sp)).score().cloned().unwrap();
        assert!(!score.passed && score.label == "present");
        let sensitive = ContainsConfig {
            case_sensitive: true,
            ..cfg(&["doctor"], Mode::Any)
        };
        assert!(
            !Contains::build(&sensitive, false)
                .unwrap()
                .evaluate(&view(&sp))
                .score()
                .unwrap()
                .passed
        );
        assert!(Contains::build(&cfg(&[], Mode::Any), false).is_err());
    }
    #[test]
    fn regex_explanation_does_not_quote_the_match() {
        let sp = chat("Sure, the customer's SSN is 123-45-6789 and mail jane@example.com.");
        for (pattern, secret) in [(r"\d{3}-\d{2}-\d{4}", "123-45-6789"), (r"\S+@\S+", "jane@")] {
            let m = RegexMatch::build(&RegexConfig {
                pattern: pattern.into(),
                expect: Expect::NoMatch,
                on: TextSource::Output,
            })
            .unwrap();
            let score = m.evaluate(&view(&sp)).score().cloned().unwrap();
            assert!(!score.passed);
            assert!(!score.explanation.contains(secret), "{}", score.explanation);
            assert!(
                score.explanation.contains("matched at bytes"),
                "{}",
                score.explanation
            );
        }
    }
}
