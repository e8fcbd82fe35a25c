//! The worker's own telemetry: Prometheus [`metrics`] with capped [`labels`] and [`drift`]
//! detection, served by [`http`].

pub mod drift;
pub mod http;
pub mod labels;
pub mod metrics;
