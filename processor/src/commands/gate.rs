//! `--fail-on` gates: conditions on a run's tallies that fail a CI job.
//!
//! A gate reads `EVALUATOR.METRIC OP NUMBER`, e.g. `refusal.pass_rate<0.95`, `pii.failed>0`,
//! `*.errors>0` (`*`: any evaluator). Metrics: `pass_rate`, `mean_score`, `scored`, `passed`,
//! `failed`, `skipped`, `errors`. The gate fails when the condition holds. Rates and means of an
//! evaluator that scored nothing are undefined, and such a gate neither fails nor passes silently:
//! it is reported as not evaluated.

use std::fmt;
use std::str::FromStr;

use crate::commands::summary::{Summary, Tally};

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Eq => a == b,
            Op::Ne => a != b,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }
}

const METRICS: [&str; 7] = [
    "pass_rate",
    "mean_score",
    "scored",
    "passed",
    "failed",
    "skipped",
    "errors",
];

/// One `--fail-on` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// The evaluator's name, or `*` for any.
    pub evaluator: String,
    /// One of the metric names.
    pub metric: String,
    /// The comparison.
    pub op: Op,
    /// The threshold.
    pub threshold: f64,
}

impl FromStr for Gate {
    type Err = String;

    fn from_str(s: &str) -> Result<Gate, String> {
        let usage =
            || format!("`{s}`: expected EVALUATOR.METRIC<OP>NUMBER, e.g. refusal.pass_rate<0.95");
        let at = s.find(['<', '>', '=', '!']).ok_or_else(usage)?;
        let (lhs, rest) = s.split_at(at);
        let (op, number) = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<", Op::Lt),
            (">", Op::Gt),
        ]
        .iter()
        .find_map(|(text, op)| rest.strip_prefix(text).map(|n| (*op, n)))
        .ok_or_else(usage)?;
        let (evaluator, metric) = lhs.trim().rsplit_once('.').ok_or_else(usage)?;
        if evaluator.is_empty() {
            return Err(usage());
        }
        if !METRICS.contains(&metric) {
            return Err(format!(
                "`{s}`: unknown metric `{metric}`, expected one of {}",
                METRICS.join(", ")
            ));
        }
        let threshold = number
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("`{s}`: `{}` is not a number", number.trim()))?;
        Ok(Gate {
            evaluator: evaluator.to_owned(),
            metric: metric.to_owned(),
            op,
            threshold,
        })
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}{}{}",
            self.evaluator,
            self.metric,
            self.op.as_str(),
            self.threshold
        )
    }
}

/// What a gate concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The condition does not hold: fine.
    Passed,
    /// The condition holds for these evaluators, with their values.
    Failed(Vec<(String, f64)>),
    /// The metric is undefined for every evaluator it names (nothing scored).
    NotEvaluated,
}

impl Gate {
    fn value(&self, t: &Tally) -> Option<f64> {
        Some(match self.metric.as_str() {
            "pass_rate" => t.pass_rate()?,
            "mean_score" => t.mean_score()?,
            "scored" => t.scored as f64,
            "passed" => t.passed as f64,
            "failed" => t.failed as f64,
            "skipped" => t.skipped as f64,
            _ => t.errors as f64,
        })
    }

    /// Checks that the gate names a configured evaluator.
    pub fn check_names(&self, names: &[String]) -> Result<(), String> {
        if self.evaluator == "*" || names.contains(&self.evaluator) {
            Ok(())
        } else {
            Err(format!(
                "--fail-on {self}: no evaluator is named `{}` (configured: {})",
                self.evaluator,
                names.join(", ")
            ))
        }
    }

    /// Evaluates the gate on a run's summary.
    pub fn verdict(&self, summary: &Summary) -> Verdict {
        let names: Vec<&String> = if self.evaluator == "*" {
            summary.names().iter().collect()
        } else {
            summary
                .names()
                .iter()
                .filter(|n| **n == self.evaluator)
                .collect()
        };
        let values: Vec<(String, f64)> = names
            .into_iter()
            .filter_map(|n| {
                summary
                    .tally(n)
                    .and_then(|t| self.value(t))
                    .map(|v| (n.clone(), v))
            })
            .collect();
        if values.is_empty() {
            return Verdict::NotEvaluated;
        }
        let failing: Vec<_> = values
            .into_iter()
            .filter(|(_, v)| self.op.holds(*v, self.threshold))
            .collect();
        if failing.is_empty() {
            Verdict::Passed
        } else {
            Verdict::Failed(failing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evalstream_evaluators::evaluator::{Evaluation, Outcome, ScoreId};

    fn summary() -> Summary {
        let mut s = Summary::new(["refusal", "pii"]);
        let mut add = |evaluator, outcome| {
            s.record(&Evaluation {
                evaluator,
                evaluator_type: "refusal",
                version: "1".into(),
                score_id: ScoreId([0; 16]),
                outcome,
            });
        };
        for passed in [true, true, true, false] {
            add("refusal", Outcome::check(passed, "x", ""));
        }
        add("pii", Outcome::no_content());
        s
    }

    #[test]
    fn parses_gates_and_rejects_bad_ones() {
        let g: Gate = "refusal.pass_rate<0.95".parse().unwrap();
        assert_eq!(
            (g.evaluator.as_str(), g.metric.as_str(), g.op, g.threshold),
            ("refusal", "pass_rate", Op::Lt, 0.95)
        );
        let g: Gate = "pii/strict.failed >= 1".parse().unwrap();
        assert_eq!((g.evaluator.as_str(), g.op), ("pii/strict", Op::Ge));
        assert!("refusal.pass_rate".parse::<Gate>().is_err());
        assert!(
            "refusal.passrate<1"
                .parse::<Gate>()
                .unwrap_err()
                .contains("unknown metric")
        );
        assert!(
            "refusal.pass_rate<x"
                .parse::<Gate>()
                .unwrap_err()
                .contains("not a number")
        );
        assert!(".failed>0".parse::<Gate>().is_err());
    }

    #[test]
    fn verdicts_follow_the_tallies() {
        let s = summary();
        let v = |g: &str| g.parse::<Gate>().unwrap().verdict(&s);
        assert_eq!(
            v("refusal.pass_rate<0.8"),
            Verdict::Failed(vec![("refusal".into(), 0.75)])
        );
        assert_eq!(v("refusal.pass_rate<0.7"), Verdict::Passed);
        assert_eq!(
            v("refusal.failed>0"),
            Verdict::Failed(vec![("refusal".into(), 1.0)])
        );
        assert_eq!(v("pii.pass_rate<0.9"), Verdict::NotEvaluated);
        assert_eq!(v("*.errors>0"), Verdict::Passed);
        assert_eq!(v("*.skipped>0"), Verdict::Failed(vec![("pii".into(), 1.0)]));
        let names = s.names().to_vec();
        assert!(
            "nope.failed>0"
                .parse::<Gate>()
                .unwrap()
                .check_names(&names)
                .is_err()
        );
    }
}
