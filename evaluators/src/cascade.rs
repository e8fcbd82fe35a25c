//! Cascades: an evaluator that runs only when earlier evaluators' scores of the same span say so.
//!
//! The point is to spend judge tokens where cheap checks are inconclusive — run `faithfulness`
//! only when `grounding` scored below 0.8 — so conditions refer to evaluators listed *before*
//! the one they gate, and are decided on each span from those evaluators' outcomes:
//!
//! ```yaml
//! - type: llm_judge
//!   name: faithfulness
//!   when:
//!     - evaluator: grounding
//!       below: 0.8
//! ```
//!
//! Every condition of the list must hold. A condition's criteria (`below`, `at_least`, `passed`,
//! `labels`) must all hold of the earlier evaluator's score. When that evaluator did not score the
//! span (it was not selected, skipped or failed), `if_unscored` decides: `skip` (the default: no
//! evidence that the judge is needed) or `run`.
//!
//! A condition may not refer to an `llm_judge`: its verdict arrives later, off the worker thread,
//! so it cannot gate a decision taken while the span is at hand.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::evaluator::{Outcome, SkipReason};

/// One condition, as written in config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    /// The earlier evaluator whose score decides.
    pub evaluator: String,
    /// Runs when the score is below this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// Runs when the score is at least this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<f64>,
    /// Runs when the earlier evaluator passed (`true`) or failed (`false`) the span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// Runs when the score's label is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// What to do when the earlier evaluator did not score the span.
    #[serde(default)]
    pub if_unscored: IfUnscored,
}

/// What a condition decides when the evaluator it refers to did not score the span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IfUnscored {
    /// Skip (the default).
    #[default]
    Skip,
    /// Run anyway.
    Run,
}

/// Reads `when:`: one condition, or a list of them.
pub fn parse_when(value: serde_json::Value) -> Result<Vec<ConditionConfig>, String> {
    let list = match value {
        serde_json::Value::Object(_) => serde_json::Value::Array(vec![value]),
        other => other,
    };
    serde_path_to_error::deserialize(list).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("when: {}", e.inner())
        } else {
            format!("when{path}: {}", e.inner())
        }
    })
}

/// A condition with its evaluator resolved to a position in the evaluator list.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Position of the earlier evaluator.
    pub index: usize,
    /// Its name, for the skip's explanation.
    name: String,
    config: ConditionConfig,
}

/// The conditions gating one evaluator.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cascade {
    conditions: Vec<Condition>,
}

impl Cascade {
    /// Resolves `conditions` of the evaluator at position `own` against the evaluators listed
    /// before it: `earlier(name)` gives an earlier evaluator's position and whether it is a judge.
    pub fn resolve(
        conditions: &[ConditionConfig],
        own: &str,
        earlier: impl Fn(&str) -> Option<(usize, bool)>,
    ) -> Result<Cascade, String> {
        let mut resolved = Vec::with_capacity(conditions.len());
        for (i, c) in conditions.iter().enumerate() {
            let at = |m: String| format!("when[{i}]: {m}");
            if c.evaluator == own {
                return Err(at(format!("`{own}` cannot depend on its own score")));
            }
            let Some((index, is_judge)) = earlier(&c.evaluator) else {
                return Err(at(format!(
                    "no evaluator named `{}` is listed before this one (conditions refer to earlier evaluators)",
                    c.evaluator
                )));
            };
            if is_judge {
                return Err(at(format!(
                    "`{}` is an llm_judge; its verdict arrives after the span is gone, so it cannot gate another evaluator",
                    c.evaluator
                )));
            }
            for (key, value) in [("below", c.below), ("at_least", c.at_least)] {
                if value.is_some_and(|v| !v.is_finite()) {
                    return Err(at(format!("{key}: must be a finite number")));
                }
            }
            if c.below.is_none()
                && c.at_least.is_none()
                && c.passed.is_none()
                && c.labels.is_empty()
            {
                return Err(at(
                    "give at least one of `below`, `at_least`, `passed`, `labels`".into(),
                ));
            }
            resolved.push(Condition {
                index,
                name: c.evaluator.clone(),
                config: c.clone(),
            });
        }
        Ok(Cascade {
            conditions: resolved,
        })
    }

    /// Whether there are no conditions.
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// The positions of the evaluators the conditions refer to.
    pub fn dependencies(&self) -> impl Iterator<Item = usize> + '_ {
        self.conditions.iter().map(|c| c.index)
    }

    /// Decides a span: `None` to run the evaluator, or the `skipped: condition` outcome saying
    /// which condition did not hold. `outcome_of(index)` is the earlier evaluator's outcome on
    /// the span, `None` when it did not judge it.
    pub fn refuses<'o>(
        &self,
        outcome_of: impl Fn(usize) -> Option<&'o Outcome>,
    ) -> Option<Outcome> {
        for c in &self.conditions {
            let Some(Outcome::Scored(score)) = outcome_of(c.index) else {
                if c.config.if_unscored == IfUnscored::Run {
                    continue;
                }
                return Some(skip(format!("`{}` did not score the span", c.name)));
            };
            let cfg = &c.config;
            let unmet = if let Some(below) = cfg.below.filter(|b| score.value >= *b) {
                Some(format!("scored {}, not below {below}", score.value))
            } else if let Some(at_least) = cfg.at_least.filter(|a| score.value < *a) {
                Some(format!("scored {}, below {at_least}", score.value))
            } else if let Some(passed) = cfg.passed.filter(|p| score.passed != *p) {
                Some(if passed { "failed" } else { "passed" }.to_owned())
            } else if !cfg.labels.is_empty() && !cfg.labels.iter().any(|l| *l == score.label) {
                Some(format!("labelled `{}`", score.label))
            } else {
                None
            };
            if let Some(unmet) = unmet {
                return Some(skip(format!("`{}` {unmet}", c.name)));
            }
        }
        None
    }
}

fn skip(detail: String) -> Outcome {
    Outcome::Skipped {
        reason: SkipReason::Condition,
        detail: Cow::Owned(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cascade(json: &str) -> Result<Cascade, String> {
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        let conditions = parse_when(value)?;
        Cascade::resolve(&conditions, "faithfulness", |name| match name {
            "grounding" => Some((0, false)),
            "refusal" => Some((1, false)),
            "relevance" => Some((2, true)),
            _ => None,
        })
    }

    fn scored(value: f64, passed: bool, label: &'static str) -> Outcome {
        Outcome::measured(value, passed, label, "")
    }

    #[test]
    fn all_conditions_must_hold() {
        let c = cascade(
            r#"[{"evaluator": "grounding", "below": 0.8}, {"evaluator": "refusal", "passed": true}]"#,
        )
        .unwrap();
        let grounding_low = scored(0.5, false, "partially_grounded");
        let grounding_high = scored(0.9, true, "grounded");
        let answered = scored(1.0, true, "answered");
        let refused = scored(0.0, false, "refused");
        let decide = |g: &Outcome, r: &Outcome| {
            c.refuses(|i| match i {
                0 => Some(g),
                1 => Some(r),
                _ => None,
            })
        };
        assert_eq!(decide(&grounding_low, &answered), None);
        let Some(Outcome::Skipped { reason, detail }) = decide(&grounding_high, &answered) else {
            panic!("a high grounding score must skip");
        };
        assert_eq!(reason, SkipReason::Condition);
        assert_eq!(detail, "`grounding` scored 0.9, not below 0.8");
        let Some(Outcome::Skipped { detail, .. }) = decide(&grounding_low, &refused) else {
            panic!("a refusal must skip");
        };
        assert_eq!(detail, "`refusal` failed");
    }

    #[test]
    fn unscored_skips_unless_told_to_run() {
        let skip_c = cascade(
            r#"{"evaluator": "grounding", "at_least": 0.2, "labels": ["partially_grounded"]}"#,
        )
        .unwrap();
        let no_docs = Outcome::no_content();
        assert!(skip_c.refuses(|_| Some(&no_docs)).is_some());
        assert!(skip_c.refuses(|_| None).is_some());
        let partial = scored(0.5, false, "partially_grounded");
        assert_eq!(skip_c.refuses(|_| Some(&partial)), None);
        let ungrounded = scored(0.1, false, "ungrounded");
        assert!(skip_c.refuses(|_| Some(&ungrounded)).is_some());
        let run_c =
            cascade(r#"{"evaluator": "grounding", "below": 0.8, "if_unscored": "run"}"#).unwrap();
        assert_eq!(run_c.refuses(|_| Some(&no_docs)), None);
        assert_eq!(run_c.refuses(|_| None), None);
    }

    #[test]
    fn bad_conditions_are_refused_with_their_place() {
        let err = |y| cascade(y).unwrap_err();
        assert!(err(r#"{"evaluator": "grounding"}"#).contains("when[0]: give at least one"));
        assert!(err(r#"{"evaluator": "missing", "below": 1}"#).contains("listed before"));
        assert!(err(r#"[{"evaluator": "grounding", "below": 1}, {"evaluator": "relevance", "passed": true}]"#)
            .contains("when[1]: `relevance` is an llm_judge"));
        assert!(err(r#"{"evaluator": "faithfulness", "below": 1}"#).contains("its own score"));
        assert!(err(r#"{"evaluator": "grounding", "belw": 1}"#).contains("unknown field `belw`"));
        assert!(
            err(r#"{"evaluator": "grounding", "if_unscored": "maybe"}"#)
                .contains("when[0].if_unscored")
        );
        assert!(err("3").contains("when:"));
    }
}
