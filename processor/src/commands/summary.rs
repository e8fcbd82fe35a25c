//! Per-evaluator tallies of an `evalstream eval` run, and the table printed at its end.

use std::collections::BTreeMap;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use evalstream_evaluators::evaluator::{Evaluation, Outcome};

/// What one evaluator did over a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Spans scored.
    pub scored: u64,
    /// Scores that passed.
    pub passed: u64,
    /// Scores that failed.
    pub failed: u64,
    /// Spans skipped (not applicable, no content, sampled out).
    pub skipped: u64,
    /// Evaluations that errored.
    pub errors: u64,
    /// Sum of score values, for the mean.
    pub score_sum: f64,
}

impl Tally {
    /// Passed over scored; `None` before anything was scored.
    pub fn pass_rate(&self) -> Option<f64> {
        (self.scored > 0).then(|| self.passed as f64 / self.scored as f64)
    }

    /// The mean score; `None` before anything was scored.
    pub fn mean_score(&self) -> Option<f64> {
        (self.scored > 0).then(|| self.score_sum / self.scored as f64)
    }
}

/// One evaluation's outcome, as counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Recorded {
    /// Scored `value`, passing or not.
    Scored {
        /// The score.
        value: f64,
        /// Whether it passed.
        passed: bool,
    },
    /// Skipped.
    Skipped,
    /// Errored.
    Error,
}

/// Tallies by evaluator name, in configuration order, plus input counts.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    order: Vec<String>,
    tallies: BTreeMap<String, Tally>,
    /// Inputs read (files or standard input).
    pub inputs: u64,
    /// Inputs that could not be read or decoded.
    pub bad_inputs: u64,
    /// Requests decoded.
    pub requests: u64,
    /// Spans seen.
    pub spans: u64,
}

impl Summary {
    /// A summary listing the given evaluators, in this order, even if they never run.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Summary {
        let order: Vec<String> = names.into_iter().map(str::to_owned).collect();
        let tallies = order
            .iter()
            .map(|n| (n.clone(), Tally::default()))
            .collect();
        Summary {
            order,
            tallies,
            ..Default::default()
        }
    }

    /// Counts one evaluation.
    pub fn record(&mut self, evaluation: &Evaluation<'_>) {
        let scored = match &evaluation.outcome {
            Outcome::Scored(s) => Recorded::Scored {
                value: s.value,
                passed: s.passed,
            },
            Outcome::Skipped { .. } => Recorded::Skipped,
            Outcome::Error { .. } => Recorded::Error,
        };
        self.record_outcome(evaluation.evaluator, scored);
    }

    /// Counts one evaluation of `evaluator`, as its JSON line tells it.
    pub fn record_outcome(&mut self, evaluator: &str, outcome: Recorded) {
        let tally = self.tallies.entry(evaluator.to_owned()).or_default();
        match outcome {
            Recorded::Scored { value, passed } => {
                tally.scored += 1;
                tally.score_sum += value;
                if passed {
                    tally.passed += 1
                } else {
                    tally.failed += 1
                }
            }
            Recorded::Skipped => tally.skipped += 1,
            Recorded::Error => tally.errors += 1,
        }
    }

    /// The tally of an evaluator.
    pub fn tally(&self, evaluator: &str) -> Option<&Tally> {
        self.tallies.get(evaluator)
    }

    /// Evaluator names, in configuration order.
    pub fn names(&self) -> &[String] {
        &self.order
    }

    /// The table printed on standard error.
    pub fn table(&self) -> String {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header([
            "evaluator",
            "scored",
            "passed",
            "failed",
            "pass rate",
            "mean score",
            "skipped",
            "errors",
        ]);
        let fmt = |v: Option<f64>, pct: bool| match v {
            None => "-".to_string(),
            Some(v) if pct => format!("{:.1}%", v * 100.0),
            Some(v) => format!("{v:.4}"),
        };
        for name in &self.order {
            let t = &self.tallies[name];
            table.add_row([
                name.clone(),
                t.scored.to_string(),
                t.passed.to_string(),
                t.failed.to_string(),
                fmt(t.pass_rate(), true),
                fmt(t.mean_score(), false),
                t.skipped.to_string(),
                t.errors.to_string(),
            ]);
        }
        format!(
            "{table}\n{} input(s), {} unreadable, {} request(s), {} span(s)",
            self.inputs, self.bad_inputs, self.requests, self.spans
        )
    }
}
