//! `exporters.phoenix`: evaluations as Arize Phoenix span annotations (`POST
//! {endpoint}/v1/span_annotations`), where Phoenix shows evaluations: it lists a trace's scores
//! from its annotations, not from evaluator spans or log events (it has no `/v1/logs`).
//!
//! ```yaml
//! exporters:
//!   phoenix:
//!     endpoint: http://127.0.0.1:6006
//!     headers: { authorization: "Bearer ${env:PHOENIX_API_KEY}" }
//!     timeout: 10s
//!     retry_on_failure: { initial_interval: 1s, max_elapsed_time: 300s }
//!     sending_queue: { num_consumers: 4, queue_size: 1000 }
//! ```
//!
//! The keys are the `otlphttp` exporter's with their defaults (the same delivery carries the
//! requests), less `compression` (Phoenix's REST API does not inflate bodies) and `output`
//! (annotations are the only output).

use std::collections::BTreeMap;
use std::time::Duration;

use evalstream_evaluators::scorers::judge::Secret;
use serde::Deserialize;

use super::otlp_exporter::{
    BatchConfig, Compression, OtlpExporterConfig, Protocol, RetryOnFailure, SendingQueue,
    optional_duration,
};

/// A `phoenix` exporter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhoenixExporterConfig {
    /// Phoenix's base URL (its HTTP port, 6006 by default), without `/v1`.
    pub endpoint: String,
    /// Request headers; their values are secrets (`authorization: Bearer <api key>` when Phoenix
    /// runs with authentication).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// How long one attempt may take (30 s when absent).
    #[serde(default, deserialize_with = "optional_duration")]
    pub timeout: Option<Duration>,
    /// Retries of failed requests (429, 502, 503, 504, no answer).
    #[serde(default)]
    pub retry_on_failure: RetryOnFailure,
    /// Requests waiting to be sent, and how annotations are gathered into them
    /// (`sending_queue.batch`; left out: requests of 500 annotations, sent 200 ms after their
    /// first at the latest, what one Phoenix process takes quickly).
    #[serde(default)]
    pub sending_queue: SendingQueue,
}

/// Annotations per request by default: up to about 250 KB of JSON, quick for Phoenix to take; a
/// trace of 300 LLM spans judged by 10 evaluators (3,000 annotations) goes as six requests.
pub const MAX_PER_REQUEST: usize = 500;

/// How long the first annotation of a request waits for more before the request goes, by
/// default.
pub const LINGER: Duration = Duration::from_millis(200);

/// Phoenix's batching when `sending_queue` is left out.
pub fn default_batch() -> BatchConfig {
    BatchConfig {
        flush_timeout: LINGER,
        min_size: MAX_PER_REQUEST,
        max_size: MAX_PER_REQUEST,
    }
}

impl PhoenixExporterConfig {
    /// The HTTP client's settings: these, uncompressed.
    pub fn client_config(&self) -> OtlpExporterConfig {
        OtlpExporterConfig {
            endpoint: self.endpoint.clone(),
            headers: self.headers.clone(),
            compression: Compression::None,
            timeout: self.timeout,
            retry_on_failure: self.retry_on_failure.clone(),
            sending_queue: self.sending_queue.clone(),
            output: Vec::new(),
        }
    }

    /// How annotations are gathered into requests: `sending_queue.batch`, or Phoenix's defaults.
    pub fn batch(&self) -> BatchConfig {
        self.sending_queue
            .batch
            .clone()
            .unwrap_or_else(default_batch)
    }

    /// The protocol its client speaks: HTTP.
    pub fn protocol(&self) -> Protocol {
        Protocol::HttpProtobuf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PhoenixExporterConfig, String> {
        let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        serde_path_to_error::deserialize(value)
            .map_err(|e| evalstream_evaluators::spec::path_error(&e))
    }

    /// Phoenix gathers 500 annotations a request unless `sending_queue.batch` says otherwise,
    /// even when the rest of `sending_queue` is given.
    #[test]
    fn batching_defaults_are_phoenixs_own_unless_given() {
        let c = parse("endpoint: http://p:6006\nsending_queue: { num_consumers: 4 }").unwrap();
        assert_eq!(c.batch(), default_batch());
        assert_eq!(c.batch().max_size, MAX_PER_REQUEST);
        let c = parse(
            "endpoint: http://p:6006\nsending_queue: { batch: { flush_timeout: 1s, min_size: 10, max_size: 20 } }",
        )
        .unwrap();
        assert_eq!(
            (
                c.batch().flush_timeout,
                c.batch().min_size,
                c.batch().max_size
            ),
            (Duration::from_secs(1), 10, 20)
        );
    }

    #[test]
    fn the_documented_block_parses_and_unknown_keys_are_refused() {
        let c = parse(
            r#"
endpoint: http://127.0.0.1:6006
headers: { authorization: "Bearer secret-key" }
timeout: 10s
retry_on_failure: { initial_interval: 1s, max_elapsed_time: 300s }
sending_queue: { num_consumers: 4, queue_size: 1000 }
"#,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("secret-key"));
        let client = c.client_config();
        assert_eq!(client.compression, Compression::None);
        assert_eq!(client.timeout, Some(Duration::from_secs(10)));
        assert_eq!(client.sending_queue.num_consumers, 4);
        assert!(client.validate(c.protocol()).is_ok());

        let err = parse("endpoint: http://x:6006\noutput: [spans]\n").unwrap_err();
        assert!(err.contains("output"), "{err}");
        let err = parse("endpoint: http://x:6006\ncompression: gzip\n").unwrap_err();
        assert!(err.contains("compression"), "{err}");
        let err = parse("headers: {}\n").unwrap_err();
        assert!(err.contains("endpoint"), "{err}");
    }
}
