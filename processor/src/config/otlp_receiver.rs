//! `receivers.otlp`: the OTLP receiver's listeners, with the OpenTelemetry Collector's own key
//! names and limits, so a collector's `otlp` receiver section can be copied over:
//!
//! ```yaml
//! receivers:
//!   otlp:
//!     protocols:
//!       grpc: { endpoint: 127.0.0.1:4317, max_recv_msg_size_mib: 4 }
//!       http: { endpoint: 127.0.0.1:4318, max_request_body_size: 20971520 }
//! ```
//!
//! A protocol left out is off; one given without settings (`grpc:` or `grpc: {}`) is on with
//! the defaults, as in the collector. At least one must be on.
//!
//! The default endpoints are loopback addresses, not the `0.0.0.0` many collector examples use:
//! a receiver that takes spans from anyone who can reach the host must be asked for explicitly.

use serde::{Deserialize, Deserializer};

/// `receivers.otlp`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpReceiverConfig {
    /// The listeners, by protocol.
    pub protocols: Protocols,
    /// When a request is answered: `after_export` (default) once every evaluation made from it
    /// was accepted by the exporters, so an answered request is never lost and a failed export
    /// makes the client send again; `on_receipt` as soon as it is taken (lower latency for the
    /// application, at the price of losing what is in flight if the process dies).
    #[serde(default)]
    pub answer: AnswerWhen,
    /// Inline mode: pass every received span on, unchanged, to the OTLP exporters (`otlp`,
    /// `otlphttp`) beside the evaluations, so an application pointed at evalstream sees its
    /// traces and their scores in its backend. The request is answered once the backend took
    /// both.
    #[serde(default)]
    pub forward: bool,
    /// Take OTLP logs too (`POST /v1/logs`, `LogsService/Export`) and join their GenAI content
    /// events to the spans (see `logs:`). Off by default: spans without content then wait for
    /// their events (`logs.span_wait_seconds`), which only pays when the events come.
    #[serde(default)]
    pub logs: bool,
    /// Requests in flight at most; beyond, clients are told to retry later (gRPC
    /// `RESOURCE_EXHAUSTED`, HTTP 429 with `Retry-After`). Each holds its decoded spans.
    #[serde(default = "default_max_in_flight_requests")]
    pub max_in_flight_requests: usize,
    /// Encoded bytes of the requests in flight at most, with the same answer beyond.
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
}

/// `receivers.otlp.answer`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerWhen {
    /// Once the evaluations were exported.
    #[default]
    AfterExport,
    /// As soon as the request is taken.
    OnReceipt,
}

/// 256 requests of the SDKs' default 512 spans keep two cores busy for a while and the exporters'
/// queues full, without holding more than a few hundred megabytes of decoded spans.
fn default_max_in_flight_requests() -> usize {
    256
}

fn default_max_in_flight_bytes() -> usize {
    64 << 20
}

/// `receivers.otlp.protocols`: each one on when present.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocols {
    /// OTLP/gRPC (`TraceService/Export`); off when absent.
    #[serde(default, deserialize_with = "present_means_on")]
    pub grpc: Option<GrpcConfig>,
    /// OTLP/HTTP (`POST /v1/traces`, protobuf or JSON); off when absent.
    #[serde(default, deserialize_with = "present_means_on")]
    pub http: Option<HttpConfig>,
}

/// `receivers.otlp.protocols.grpc`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// `host:port` to listen on (loopback by default: see the module documentation).
    #[serde(default = "default_grpc_endpoint")]
    pub endpoint: String,
    /// The largest request message, in MiB, after decompression (the collector's default, 4).
    #[serde(default = "default_max_recv_msg_size_mib")]
    pub max_recv_msg_size_mib: u64,
}

/// `receivers.otlp.protocols.http`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to listen on (loopback by default: see the module documentation).
    #[serde(default = "default_http_endpoint")]
    pub endpoint: String,
    /// The largest request body, in bytes, both as sent and after decompression (the collector's
    /// default, 20 MiB, which the OTLP specification recommends). Past it: `413`.
    #[serde(default = "default_max_request_body_size")]
    pub max_request_body_size: usize,
}

/// The most a gRPC message can be: its length prefix is 32 bits.
const MAX_GRPC_MIB: u64 = 4095;

impl OtlpReceiverConfig {
    /// Checks what serde cannot: at least one protocol, `host:port` endpoints, limits above zero.
    /// Messages start with the key's path.
    pub fn validate(&self) -> Result<(), String> {
        let Protocols { grpc, http } = &self.protocols;
        if grpc.is_none() && http.is_none() {
            return Err(
                "receivers.otlp.protocols: enable at least one of `grpc` and `http`".into(),
            );
        }
        if let Some(grpc) = grpc {
            check_endpoint("grpc", &grpc.endpoint)?;
            if !(1..=MAX_GRPC_MIB).contains(&grpc.max_recv_msg_size_mib) {
                return Err(format!(
                    "receivers.otlp.protocols.grpc.max_recv_msg_size_mib: between 1 and {MAX_GRPC_MIB}"
                ));
            }
        }
        if let Some(http) = http {
            check_endpoint("http", &http.endpoint)?;
            if http.max_request_body_size == 0 {
                return Err(
                    "receivers.otlp.protocols.http.max_request_body_size: at least 1 byte".into(),
                );
            }
        }
        Ok(())
    }
}

impl Default for OtlpReceiverConfig {
    /// Both protocols on their loopback defaults, 127.0.0.1:4317 and 127.0.0.1:4318.
    fn default() -> Self {
        OtlpReceiverConfig {
            protocols: Protocols {
                grpc: Some(GrpcConfig::default()),
                http: Some(HttpConfig::default()),
            },
            answer: AnswerWhen::default(),
            forward: false,
            logs: false,
            max_in_flight_requests: default_max_in_flight_requests(),
            max_in_flight_bytes: default_max_in_flight_bytes(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            endpoint: default_grpc_endpoint(),
            max_recv_msg_size_mib: default_max_recv_msg_size_mib(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            endpoint: default_http_endpoint(),
            max_request_body_size: default_max_request_body_size(),
        }
    }
}

impl GrpcConfig {
    /// [`GrpcConfig::max_recv_msg_size_mib`] in bytes.
    pub fn max_recv_msg_bytes(&self) -> usize {
        usize::try_from(self.max_recv_msg_size_mib.min(MAX_GRPC_MIB) << 20).unwrap_or(usize::MAX)
    }
}

/// A `host:port` with a numeric port; the host is resolved when binding (`localhost` works).
fn check_endpoint(protocol: &str, endpoint: &str) -> Result<(), String> {
    let port = endpoint
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(_))) if !host.is_empty() => Ok(()),
        _ => Err(format!(
            "receivers.otlp.protocols.{protocol}.endpoint: `{endpoint}` is not host:port (like 127.0.0.1:{})",
            if protocol == "grpc" { 4317 } else { 4318 }
        )),
    }
}

/// A protocol given is on, even without settings: `grpc:` (YAML null) means the defaults, as in
/// the collector.
fn present_means_on<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(
        Option::<T>::deserialize(deserializer)?.unwrap_or_default(),
    ))
}

fn default_grpc_endpoint() -> String {
    "127.0.0.1:4317".into()
}
fn default_http_endpoint() -> String {
    "127.0.0.1:4318".into()
}
fn default_max_recv_msg_size_mib() -> u64 {
    4
}
fn default_max_request_body_size() -> usize {
    20 << 20
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Parses a `receivers.otlp` section as the configuration loader does: YAML into a tree,
    /// then the tree into the struct with the key path in errors.
    fn parse(yaml: &str) -> Result<OtlpReceiverConfig, String> {
        let tree: serde_json::Value = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        let config: OtlpReceiverConfig = serde_path_to_error::deserialize(tree)
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn the_collector_section_parses_with_collector_defaults() {
        let c = parse(
            "protocols:\n  grpc: { endpoint: 0.0.0.0:14317, max_recv_msg_size_mib: 16 }\n  http: { endpoint: localhost:14318, max_request_body_size: 1048576 }\n",
        )
        .unwrap();
        let grpc = c.protocols.grpc.unwrap();
        assert_eq!(grpc.endpoint, "0.0.0.0:14317");
        assert_eq!(grpc.max_recv_msg_bytes(), 16 << 20);
        let http = c.protocols.http.unwrap();
        assert_eq!(
            (http.endpoint.as_str(), http.max_request_body_size),
            ("localhost:14318", 1 << 20)
        );
        // Given without settings, a protocol is on with the defaults; left out, it is off.
        let c = parse("protocols:\n  grpc:\n").unwrap();
        assert_eq!(c.protocols.grpc, Some(GrpcConfig::default()));
        assert_eq!(c.protocols.http, None);
        let c = parse("protocols:\n  http: {}\n  grpc: null\n").unwrap();
        assert_eq!(c, OtlpReceiverConfig::default());
        assert_eq!(
            c.protocols.http.unwrap().max_request_body_size,
            20 * 1024 * 1024
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let err = parse("protocols:\n  grpc:\n    max_recv_msg_size: 4\n").unwrap_err();
        assert!(
            err.contains("protocols.grpc") && err.contains("unknown field `max_recv_msg_size`"),
            "{err}"
        );
        let err = parse("protocols:\n  thrift: {}\n").unwrap_err();
        assert!(err.contains("unknown field `thrift`"), "{err}");
        let err = parse("protocols: {}\nendpoint: 127.0.0.1:4317\n").unwrap_err();
        assert!(err.contains("unknown field `endpoint`"), "{err}");
    }

    #[test]
    fn at_least_one_protocol_endpoints_and_limits_are_checked() {
        let err = parse("protocols: {}\n").unwrap_err();
        assert!(err.contains("at least one of `grpc` and `http`"), "{err}");
        let err = parse("protocols:\n  grpc: { endpoint: '4317' }\n").unwrap_err();
        assert!(
            err.contains("protocols.grpc.endpoint: `4317` is not host:port"),
            "{err}"
        );
        let err = parse("protocols:\n  http: { endpoint: 'localhost:http' }\n").unwrap_err();
        assert!(err.contains("protocols.http.endpoint"), "{err}");
        let err = parse("protocols:\n  grpc: { max_recv_msg_size_mib: 0 }\n").unwrap_err();
        assert!(err.contains("max_recv_msg_size_mib: between 1"), "{err}");
        let err = parse("protocols:\n  http: { max_request_body_size: 0 }\n").unwrap_err();
        assert!(err.contains("max_request_body_size: at least 1"), "{err}");
        // IPv6 literals keep their brackets.
        assert!(parse("protocols:\n  grpc: { endpoint: '[::1]:4317' }\n").is_ok());
    }
}
