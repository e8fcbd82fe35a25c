//! The worker's own telemetry: Prometheus [`metrics`] with capped [`labels`] and [`drift`]
//! detection, served by [`http`]; the compacted topics that keep state beside a consumer group
//! ([`state_topic`]).

pub mod drift;
pub mod http;
pub mod labels;
pub mod metrics;
pub mod state_topic;
