//! `telemetry`: the Prometheus endpoint and the admin token its one action needs.

use evalstream_evaluators::scorers::judge::Secret;
use serde::Deserialize;

pub use crate::telemetry::labels::Segment;

/// The `telemetry:` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: Option<MetricsEndpoint>,
    /// The bearer token the endpoint's one action (`POST /drift/ack`) needs (`${env:…}`);
    /// without it (or empty) the action is refused.
    #[serde(default)]
    pub admin_token: Option<Secret>,
}

/// `telemetry.metrics`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsEndpoint {
    /// `host:port` to serve `/metrics`, `/healthz` and `/readyz` on.
    pub listen: String,
    /// Extra labels on the score histogram and pass/fail counters, off by default: each one
    /// multiplies those series.
    #[serde(default)]
    pub segments: Vec<Segment>,
    /// Distinct values kept per segment label; later values are counted under `other`.
    #[serde(default = "default_max_segment_values")]
    pub max_segment_values: usize,
    /// Connections served at once; past it, new ones wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a client may take to send a request's headers.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_seconds: f64,
    /// Bytes one `/metrics` answer may take; metric families past it are left out (and counted).
    #[serde(default = "default_max_scrape_bytes")]
    pub max_scrape_bytes: usize,
}

impl MetricsEndpoint {
    /// The HTTP endpoint's limits, with the admin token.
    pub fn limits(&self, admin_token: Option<&Secret>) -> crate::telemetry::http::Limits {
        crate::telemetry::http::Limits {
            max_connections: self.max_connections,
            header_read_timeout: std::time::Duration::from_secs_f64(
                self.header_read_timeout_seconds,
            ),
            // Empty (an unset `${env:…:-}`) is no token.
            admin_token: admin_token.filter(|t| !t.expose().is_empty()).cloned(),
        }
    }
}

fn default_max_segment_values() -> usize {
    100
}
fn default_max_connections() -> usize {
    64
}
fn default_header_read_timeout() -> f64 {
    5.0
}
fn default_max_scrape_bytes() -> usize {
    crate::telemetry::metrics::DEFAULT_SCRAPE_BYTES
}
