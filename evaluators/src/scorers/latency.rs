//! `latency`: did the call answer fast enough?
//!
//! Scores the span's duration in seconds; passes at or under `max_seconds`. Works on metadata
//! alone, so it applies whether or not content was captured.

use serde::{Deserialize, Serialize};

use crate::evaluator::{Evaluator, Outcome};
use crate::scorers::registry::Builtin;
use crate::span::{GenAiSpan, OperationKind};

/// Configuration of `latency`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyConfig {
    /// The slowest acceptable duration, in seconds.
    #[serde(default = "default_max")]
    pub max_seconds: f64,
}

impl Builtin for LatencyConfig {
    const TYPE: &'static str = "latency";
    const DEFAULT_KINDS: &'static [OperationKind] =
        &[OperationKind::Chat, OperationKind::Embeddings];

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(Latency::build(self)?))
    }
}

fn default_max() -> f64 {
    30.0
}

impl Default for LatencyConfig {
    fn default() -> Self {
        LatencyConfig {
            max_seconds: default_max(),
        }
    }
}

/// The `latency` scorer.
#[derive(Debug)]
pub struct Latency {
    max_seconds: f64,
}

impl Latency {
    /// Validates the threshold.
    pub fn build(config: &LatencyConfig) -> Result<Latency, String> {
        if !(config.max_seconds.is_finite() && config.max_seconds > 0.0) {
            return Err(format!(
                "max_seconds: must be a positive number, not {}",
                config.max_seconds
            ));
        }
        Ok(Latency {
            max_seconds: config.max_seconds,
        })
    }
}

impl Evaluator for Latency {
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome {
        let raw = span.raw();
        if raw.start_time_unix_nano == 0 || raw.end_time_unix_nano < raw.start_time_unix_nano {
            return Outcome::not_applicable("the span has no valid start and end time");
        }
        let seconds = span.duration().as_secs_f64();
        let passed = seconds <= self.max_seconds;
        let label = if passed { "ok" } else { "slow" };
        Outcome::measured(
            seconds,
            passed,
            label,
            format!("{seconds:.3} s (limit {} s)", self.max_seconds),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scorers::testing::{chat, view};

    #[test]
    fn scores_seconds_against_the_limit() {
        let sp = chat("hi"); // 2.5 s long
        let fast = Latency::build(&LatencyConfig { max_seconds: 5.0 })
            .unwrap()
            .evaluate(&view(&sp));
        assert_eq!(fast.score().unwrap().value, 2.5);
        assert!(fast.score().unwrap().passed);
        let slow = Latency::build(&LatencyConfig { max_seconds: 1.0 })
            .unwrap()
            .evaluate(&view(&sp));
        assert_eq!(slow.score().unwrap().label, "slow");
        let mut reversed = chat("hi");
        reversed.end_time_unix_nano = 1;
        assert!(matches!(
            Latency::build(&LatencyConfig::default())
                .unwrap()
                .evaluate(&view(&reversed)),
            Outcome::Skipped { .. }
        ));
        assert!(Latency::build(&LatencyConfig { max_seconds: 0.0 }).is_err());
    }
}
