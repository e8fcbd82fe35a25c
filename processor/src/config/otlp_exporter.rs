//! `exporters.otlp` (gRPC) and `exporters.otlphttp` (HTTP/protobuf): one struct for both, with the
//! collector's own keys and defaults (`exporter/otlpexporter`, `exporter/otlphttpexporter`,
//! `exporter/exporterhelper`), so a collector user's block reads the same here.
//!
//! ```yaml
//! exporters:
//!   otlphttp:
//!     endpoint: http://127.0.0.1:4318
//!     headers: { api_key: "${env:KEY}" }
//!     compression: gzip
//!     timeout: 10s
//!     retry_on_failure: { enabled: true, initial_interval: 5s, max_interval: 30s, max_elapsed_time: 300s }
//!     sending_queue: { enabled: true, num_consumers: 10, queue_size: 1000 }
//! ```
//!
//! Durations are the collector's strings (`10s`, `500ms`, `1m30s`). Left out, because nothing here
//! would act on them: TLS settings (`https://` endpoints use the system's roots over HTTP; gRPC is
//! plain HTTP/2), per-signal endpoints, `randomization_factor` (the jitter is backon's: up to one
//! more backoff interval), persistent queues and batching.

use std::collections::BTreeMap;
use std::time::Duration;

use evalstream_evaluators::scorers::judge::Secret;
use serde::{Deserialize, Deserializer};

/// An `otlp` or `otlphttp` exporter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpExporterConfig {
    /// `otlphttp`: the base URL, signals go to `{endpoint}/v1/logs` and `{endpoint}/v1/traces`.
    /// `otlp`: the gRPC server, `http://host:4317`.
    pub endpoint: String,
    /// Request headers (gRPC metadata for `otlp`). Their values are secrets: backends take API
    /// keys in headers.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// How request bodies are compressed.
    #[serde(default)]
    pub compression: Compression,
    /// How long one attempt may take; the collector's default when absent (5 s for `otlp`,
    /// 30 s for `otlphttp`).
    #[serde(default, deserialize_with = "optional_duration")]
    pub timeout: Option<Duration>,
    /// Retries of failed requests.
    #[serde(default)]
    pub retry_on_failure: RetryOnFailure,
    /// Requests waiting to be sent.
    #[serde(default)]
    pub sending_queue: SendingQueue,
    /// What it sends: `[events]` (default), `[spans]` or both.
    #[serde(default = "super::default_output")]
    pub output: Vec<super::Output>,
}

/// How request bodies are compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// gzip, the collector's default: OTLP compresses several times over.
    #[default]
    Gzip,
    /// As they are.
    None,
}

/// `retry_on_failure`: exponential backoff with jitter, for what the OTLP specification calls
/// retryable (throttling, an unavailable backend, timeouts).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryOnFailure {
    /// Off: one attempt per request.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The wait after the first failure.
    #[serde(default = "default_initial_interval", deserialize_with = "duration")]
    pub initial_interval: Duration,
    /// The longest wait between attempts (before jitter).
    #[serde(default = "default_max_interval", deserialize_with = "duration")]
    pub max_interval: Duration,
    /// How much each wait grows.
    #[serde(default = "default_multiplier")]
    pub multiplier: f32,
    /// How long a request is tried before it fails for good; `0` tries for ever.
    #[serde(default = "default_max_elapsed_time", deserialize_with = "duration")]
    pub max_elapsed_time: Duration,
}

impl Default for RetryOnFailure {
    fn default() -> Self {
        RetryOnFailure {
            enabled: true,
            initial_interval: default_initial_interval(),
            max_interval: default_max_interval(),
            multiplier: default_multiplier(),
            max_elapsed_time: default_max_elapsed_time(),
        }
    }
}

/// `sending_queue`: requests accepted and not yet sent. Unlike the collector's, a full queue
/// makes the sender wait (backpressure) instead of dropping the request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendingQueue {
    /// Off: no waiting room, a request is taken only when a consumer is free.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Requests sent at once: one slow backend call does not hold up the others.
    #[serde(default = "default_num_consumers")]
    pub num_consumers: usize,
    /// Requests waiting for a consumer.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// How the evaluations of many traces are gathered into one request; left out, the
    /// exporter's own defaults ([`BatchConfig::default`] for `otlp`, Phoenix's for `phoenix`).
    #[serde(default)]
    pub batch: Option<BatchConfig>,
}

impl Default for SendingQueue {
    fn default() -> Self {
        SendingQueue {
            enabled: true,
            num_consumers: default_num_consumers(),
            queue_size: default_queue_size(),
            batch: None,
        }
    }
}

/// `sending_queue.batch` (the collector's exporterhelper batcher, sized in items: log records or
/// spans): a request goes once it holds `min_size` items or its oldest has waited
/// `flush_timeout`, never more than `max_size`. One request per trace cost a request's overhead
/// per 4 spans: 13,000 spans/s on the OTLP bench, its sink busy answering.
///
/// Shorter waits than the collector's (200 ms, 8192): the OTLP receiver answers its client after
/// the export, so the wait is on the client's request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// The longest an item waits for others.
    #[serde(default = "default_flush_timeout", deserialize_with = "duration")]
    pub flush_timeout: Duration,
    /// Items that make a request go at once.
    #[serde(default = "default_min_size")]
    pub min_size: usize,
    /// The most items in one request (a trace's evaluations are never split).
    #[serde(default = "default_max_size")]
    pub max_size: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            flush_timeout: default_flush_timeout(),
            min_size: default_min_size(),
            max_size: default_max_size(),
        }
    }
}

fn default_flush_timeout() -> Duration {
    Duration::from_millis(20)
}
fn default_min_size() -> usize {
    2048
}
fn default_max_size() -> usize {
    8192
}

fn default_true() -> bool {
    true
}
fn default_initial_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_max_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_multiplier() -> f32 {
    1.5
}
fn default_max_elapsed_time() -> Duration {
    Duration::from_secs(300)
}
fn default_num_consumers() -> usize {
    10
}
fn default_queue_size() -> usize {
    1000
}

/// A collector duration string: `10s`, `500ms`, `1m30s`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

pub(super) fn optional_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| format!("`{text}` is not a duration like 10s, 500ms or 1m"))
}

impl OtlpExporterConfig {
    /// Checks what the types cannot: the endpoint is an `http(s)` URL (`http` for gRPC, which
    /// has no TLS here), header names and values can be sent, the bounds are usable. Messages
    /// start with the key, for the caller to prefix with `exporters.<id>.`.
    pub fn validate(&self, protocol: Protocol) -> Result<(), String> {
        let grpc = protocol == Protocol::Grpc;
        let example = if grpc {
            "http://127.0.0.1:4317"
        } else {
            "http://127.0.0.1:4318"
        };
        let url = reqwest::Url::parse(&self.endpoint).map_err(|e| {
            format!(
                "endpoint: `{}` is not a URL like {example} ({e})",
                self.endpoint
            )
        })?;
        match url.scheme() {
            "http" => {}
            "https" if !grpc => {}
            "https" => {
                return Err(format!(
                    "endpoint: `{}`: gRPC over TLS is not supported, use http:// (or otlphttp for https)",
                    self.endpoint
                ));
            }
            other => {
                return Err(format!(
                    "endpoint: `{}`: the scheme `{other}` is not http or https; a URL like {example}",
                    self.endpoint
                ));
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!(
                "endpoint: `{}` has no host; a URL like {example}",
                self.endpoint
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "endpoint: `{}`: a base URL without query or fragment",
                self.endpoint
            ));
        }
        if grpc && url.path() != "/" {
            return Err(format!(
                "endpoint: `{}`: a gRPC endpoint has no path; like {example}",
                self.endpoint
            ));
        }
        for (name, value) in &self.headers {
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: `{name}` is not a header name"))?;
            reqwest::header::HeaderValue::from_str(value.expose()).map_err(|_| {
                format!("headers: the value of `{name}` is not a valid header value")
            })?;
            if grpc && name.to_ascii_lowercase().ends_with("-bin") {
                return Err(format!(
                    "headers: `{name}`: binary (`-bin`) metadata is not supported"
                ));
            }
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err("timeout: must be above 0".into());
        }
        let r = &self.retry_on_failure;
        if r.enabled {
            if r.initial_interval.is_zero() {
                return Err("retry_on_failure.initial_interval: must be above 0".into());
            }
            if r.max_interval < r.initial_interval {
                return Err(
                    "retry_on_failure.max_interval: must be at least initial_interval".into(),
                );
            }
            if !(r.multiplier.is_finite() && r.multiplier >= 1.0) {
                return Err("retry_on_failure.multiplier: a number of at least 1".into());
            }
        }
        let q = &self.sending_queue;
        if q.num_consumers == 0 {
            return Err("sending_queue.num_consumers: must be at least 1".into());
        }
        if let Some(b) = &q.batch {
            if b.min_size == 0 || b.max_size < b.min_size {
                return Err(
                    "sending_queue.batch: min_size at least 1, max_size at least min_size".into(),
                );
            }
            if b.flush_timeout.is_zero() || b.flush_timeout > Duration::from_secs(60) {
                return Err("sending_queue.batch.flush_timeout: above 0, at most 60s".into());
            }
        }
        if q.enabled && q.queue_size == 0 {
            return Err("sending_queue.queue_size: must be at least 1".into());
        }
        Ok(())
    }
}

/// How requests travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`otlp`), plain HTTP/2.
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`otlphttp`).
    HttpProtobuf,
}

impl Protocol {
    /// The collector's per-attempt timeout: 5 s for `otlp`, 30 s for `otlphttp`.
    pub fn default_timeout(self) -> Duration {
        match self {
            Protocol::Grpc => Duration::from_secs(5),
            Protocol::HttpProtobuf => Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OtlpExporterConfig, String> {
        let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        serde_path_to_error::deserialize(value)
            .map_err(|e| evalstream_evaluators::spec::path_error(&e))
    }

    #[test]
    fn the_documented_block_parses() {
        let c = parse(
            r#"
endpoint: http://127.0.0.1:4318
headers: { api_key: "secret-key" }
compression: none
timeout: 10s
retry_on_failure: { enabled: true, initial_interval: 500ms, max_interval: 1m, max_elapsed_time: 1m30s }
sending_queue: { enabled: true, num_consumers: 4, queue_size: 50 }
"#,
        )
        .unwrap();
        assert_eq!(c.headers["api_key"].expose(), "secret-key");
        assert!(!format!("{c:?}").contains("secret-key"));
        assert_eq!(c.compression, Compression::None);
        assert_eq!(c.timeout, Some(Duration::from_secs(10)));
        let r = &c.retry_on_failure;
        assert_eq!(
            (r.initial_interval, r.max_interval, r.max_elapsed_time),
            (
                Duration::from_millis(500),
                Duration::from_secs(60),
                Duration::from_secs(90)
            )
        );
        assert_eq!(
            (c.sending_queue.num_consumers, c.sending_queue.queue_size),
            (4, 50)
        );
        c.validate(Protocol::HttpProtobuf).unwrap();
    }

    #[test]
    fn defaults_are_the_collectors() {
        let c = parse("endpoint: http://collector:4317").unwrap();
        assert_eq!(c.compression, Compression::Gzip);
        assert_eq!(c.timeout, None);
        assert_eq!(c.retry_on_failure, RetryOnFailure::default());
        let r = &c.retry_on_failure;
        assert!(r.enabled);
        assert_eq!(
            (r.initial_interval, r.max_interval, r.max_elapsed_time),
            (
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(300)
            )
        );
        assert_eq!(r.multiplier, 1.5);
        assert_eq!(
            c.sending_queue,
            SendingQueue {
                enabled: true,
                num_consumers: 10,
                queue_size: 1000,
                batch: None,
            }
        );
        c.validate(Protocol::Grpc).unwrap();
        let zero =
            parse("endpoint: http://c:4318\nretry_on_failure: { max_elapsed_time: 0s }").unwrap();
        assert_eq!(zero.retry_on_failure.max_elapsed_time, Duration::ZERO);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_path() {
        let err = parse("endpoint: http://c:4318\nendpont: x").unwrap_err();
        assert!(err.contains("unknown field `endpont`"), "{err}");
        let err = parse("endpoint: http://c:4318\nsending_queue: { size: 3 }").unwrap_err();
        assert!(
            err.contains("sending_queue") && err.contains("unknown field `size`"),
            "{err}"
        );
        let err = parse("endpoint: http://c:4318\nretry_on_failure: { randomization_factor: 0.5 }")
            .unwrap_err();
        assert!(err.contains("randomization_factor"), "{err}");
        let err = parse("endpoint: http://c:4318\ntimeout: 10 seconds please").unwrap_err();
        assert!(
            err.contains("timeout") && err.contains("is not a duration like 10s"),
            "{err}"
        );
        let err = parse("endpoint: http://c:4318\ncompression: zstd").unwrap_err();
        assert!(err.contains("compression"), "{err}");
        let err = parse("headers: {}").unwrap_err();
        assert!(err.contains("missing field `endpoint`"), "{err}");
    }

    #[test]
    fn a_bad_endpoint_is_refused_with_a_clear_message() {
        let check = |endpoint: &str, protocol: Protocol| {
            parse(&format!("endpoint: \"{endpoint}\""))
                .unwrap()
                .validate(protocol)
                .unwrap_err()
        };
        let err = check("127.0.0.1 4318", Protocol::HttpProtobuf);
        assert!(
            err.starts_with("endpoint: `127.0.0.1 4318` is not a URL like http://127.0.0.1:4318"),
            "{err}"
        );
        let err = check("ftp://host:21", Protocol::HttpProtobuf);
        assert!(
            err.contains("the scheme `ftp` is not http or https"),
            "{err}"
        );
        let err = check("https://collector:4317", Protocol::Grpc);
        assert!(err.contains("gRPC over TLS is not supported"), "{err}");
        let err = check("http://collector:4317/v1", Protocol::Grpc);
        assert!(err.contains("has no path"), "{err}");
        let err = check("http://collector:4318/?a=b", Protocol::HttpProtobuf);
        assert!(err.contains("without query"), "{err}");
        let ok = |endpoint: &str, protocol: Protocol| {
            parse(&format!("endpoint: \"{endpoint}\""))
                .unwrap()
                .validate(protocol)
        };
        ok("https://otlp.example.com/otlp", Protocol::HttpProtobuf).unwrap();
        ok("http://[::1]:4317", Protocol::Grpc).unwrap();
    }

    #[test]
    fn bounds_and_headers_are_checked() {
        let check = |extra: &str| {
            parse(&format!("endpoint: http://c:4318\n{extra}"))
                .unwrap()
                .validate(Protocol::HttpProtobuf)
                .unwrap_err()
        };
        assert!(check("sending_queue: { num_consumers: 0 }").contains("num_consumers"));
        assert!(check("sending_queue: { queue_size: 0 }").contains("queue_size"));
        assert!(check("timeout: 0s").contains("timeout"));
        assert!(
            check("retry_on_failure: { initial_interval: 1m, max_interval: 1s }")
                .contains("max_interval")
        );
        assert!(check("retry_on_failure: { multiplier: 0.5 }").contains("multiplier"));
        let err = check("headers: { \"bad header\": x }");
        assert!(err.contains("`bad header` is not a header name"), "{err}");
        let err = check("headers: { key: \"line\\nbreak\" }");
        assert!(err.contains("the value of `key`"), "{err}");
        assert!(!err.contains("break"), "values are secrets: {err}");
        // With the queue off, its size does not matter.
        parse("endpoint: http://c:4318\nsending_queue: { enabled: false, queue_size: 0 }")
            .unwrap()
            .validate(Protocol::HttpProtobuf)
            .unwrap();
    }
}
