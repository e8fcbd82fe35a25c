//! Drift detection on evaluation scores: per evaluator and segment, a learned baseline and
//! detectors whose thresholds come from a false-alarm budget ([`detect`]), tracked for every
//! series the worker sees ([`series`]) and exposed as Prometheus metrics.

pub mod calibrate;
pub mod detect;
pub mod replay;
pub mod series;
pub mod state;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::telemetry::labels::Segment;

/// The `drift:` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// The evaluators watched (by name); all when absent.
    #[serde(default)]
    pub evaluators: Option<Vec<String>>,
    /// Span properties that split an evaluator's scores into series.
    #[serde(default)]
    pub segments: Vec<Segment>,
    /// Distinct values kept per segment; later ones share the value `other`.
    #[serde(default = "default_max_segment_values")]
    pub max_segment_values: usize,
    /// Series tracked at most; scores of further series are not watched (and counted).
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// Expected stable scores between two false alarms of one series.
    #[serde(default = "default_budget")]
    pub false_alarm_budget: f64,
    /// Scores a series learns its baseline from before it is watched.
    #[serde(default = "default_warmup")]
    pub warmup: u64,
    /// Floor on a baseline's standard deviation, in score units.
    #[serde(default = "default_min_std")]
    pub min_std: f64,
    /// A drifted series learns a new baseline after this long without an acknowledgement
    /// (`POST /drift/ack`); 0 waits for the acknowledgement.
    #[serde(default = "default_rebaseline")]
    pub rebaseline_after_seconds: f64,
    /// Pass rates below which an evaluator's quality is too low, whatever its baseline: served
    /// as `evalstream_pass_rate_floor{evaluator}` for the `EvalstreamPassRateLow` alert.
    #[serde(default)]
    pub pass_rate_floors: BTreeMap<String, f64>,
    /// The compacted topic that keeps the series' baselines across restarts (on the input
    /// brokers; created compacted when missing); `null` keeps them in memory only.
    #[serde(default = "default_state_topic")]
    pub state_topic: Option<String>,
    /// How often changed series are written to the state topic.
    #[serde(default = "default_state_interval")]
    pub state_interval_seconds: f64,
}

fn default_max_segment_values() -> usize {
    50
}
fn default_max_series() -> usize {
    1_000
}
fn default_budget() -> f64 {
    100_000.0
}
fn default_warmup() -> u64 {
    500
}
fn default_min_std() -> f64 {
    0.05
}
fn default_rebaseline() -> f64 {
    3_600.0
}
fn default_state_topic() -> Option<String> {
    Some("evalstream_drift_state".into())
}
fn default_state_interval() -> f64 {
    30.0
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            evaluators: None,
            segments: Vec::new(),
            max_segment_values: default_max_segment_values(),
            max_series: default_max_series(),
            false_alarm_budget: default_budget(),
            warmup: default_warmup(),
            min_std: default_min_std(),
            rebaseline_after_seconds: default_rebaseline(),
            pass_rate_floors: BTreeMap::new(),
            state_topic: default_state_topic(),
            state_interval_seconds: default_state_interval(),
        }
    }
}

impl DriftConfig {
    /// Checks the values, and that the evaluators named are configured (`names`).
    pub fn validate(&self, names: &[&str]) -> Result<(), String> {
        for (i, name) in self.evaluators.iter().flatten().enumerate() {
            if !names.contains(&name.as_str()) {
                return Err(format!(
                    "drift.evaluators[{i}]: no evaluator is named `{name}` (configured: {})",
                    names.join(", ")
                ));
            }
        }
        if !(self.false_alarm_budget.is_finite() && self.false_alarm_budget >= 100.0) {
            return Err(
                "drift.false_alarm_budget: must be a number of samples, at least 100".into(),
            );
        }
        if self.warmup < 20 {
            return Err("drift.warmup: must be at least 20 scores".into());
        }
        if !(self.min_std.is_finite() && self.min_std > 0.0) {
            return Err("drift.min_std: must be a positive number".into());
        }
        for (name, floor) in &self.pass_rate_floors {
            if !names.contains(&name.as_str()) {
                return Err(format!(
                    "drift.pass_rate_floors.{name}: no evaluator is named `{name}`"
                ));
            }
            if !(0.0..=1.0).contains(floor) {
                return Err(format!(
                    "drift.pass_rate_floors.{name}: must be between 0 and 1, not {floor}"
                ));
            }
        }
        if !(self.state_interval_seconds.is_finite() && self.state_interval_seconds > 0.0) {
            return Err("drift.state_interval_seconds: must be a positive number".into());
        }
        if self.state_topic.as_deref() == Some("") {
            return Err(
                "drift.state_topic: give a topic name, or null to keep state in memory".into(),
            );
        }
        if self.max_series == 0 || self.max_segment_values == 0 {
            return Err("drift.max_series and drift.max_segment_values: must be at least 1".into());
        }
        if !(self.rebaseline_after_seconds.is_finite() && self.rebaseline_after_seconds >= 0.0) {
            return Err("drift.rebaseline_after_seconds: must be a non-negative number".into());
        }
        Ok(())
    }
}
