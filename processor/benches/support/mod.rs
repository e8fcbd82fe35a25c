//! What the processor's benchmarks share: their input, the corpus's traces with fresh ids, and
//! an acknowledgement origin no receiver waits for.

#![allow(dead_code)]

use evalstream::commands::loadgen;
use evalstream::pipeline::ack::{Origin, Rejection, Status, Token};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// `TRACES` from the environment, else `default`.
pub fn traces_from_env(default: u64) -> u64 {
    std::env::var("TRACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `traces` requests of one corpus trace each (five instrumentations, 2.4 spans per trace on
/// average), with fresh ids: what a worker behind a collector receives.
pub fn corpus_requests(traces: u64) -> Vec<ExportTraceServiceRequest> {
    let templates = loadgen::templates().expect("the built-in corpus");
    let now = evalstream::now_unix_nanos();
    (0..traces)
        .map(|i| loadgen::instantiate(&templates[i as usize % templates.len()], i, now))
        .collect()
}

/// The same, encoded as the collector's Kafka exporter writes them (`otlp_proto`).
pub fn corpus_inputs(traces: u64) -> Vec<Vec<u8>> {
    use prost::Message;
    corpus_requests(traces)
        .iter()
        .map(Message::encode_to_vec)
        .collect()
}

/// An input no receiver waits for.
pub struct Nowhere;

impl Origin for Nowhere {
    fn finished(&self, _status: Status) {}
    fn rejected(&self, _token: Token, _rejection: Rejection) {}
}
