//! Drift detection on evaluation scores: per evaluator and segment, a learned baseline and
//! detectors whose thresholds come from a false-alarm budget.

pub mod calibrate;
pub mod detect;
pub mod replay;
