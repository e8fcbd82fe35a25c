//! `evalstream loadgen`: produces corpus-shaped traces to a topic, as a collector's Kafka exporter
//! with `partition_traces_by_id: true` would (one trace per message, keyed by hex trace id).
//!
//! Templates are the traces of the five real-instrumentation exports built into the binary. Each
//! produced trace is a template with a fresh trace id, fresh span ids (parent links kept) and
//! timestamps moved so it ends as it is produced, so every message is distinct and lag metrics are
//! meaningful. `--rate` paces production, for measuring lag under a steady load.
//!
//! With `--otlp ENDPOINT` the same traces go to an OTLP gRPC receiver instead ([`to_otlp`]),
//! packed into requests of `--spans-per-request` spans, as an SDK's or a collector's batch is.

mod to_kafka;
mod to_otlp;

use std::collections::HashMap;

use anyhow::Context as _;
use evalstream_evaluators::otlp::{self, Encoding, types::ExportTraceServiceRequest};
use xxhash_rust::xxh3::xxh3_128;

/// The corpus exports, one `ExportTraceServiceRequest` each.
const CORPUS: [&[u8]; 5] = [
    include_bytes!("../../../../tests/fixtures/corpus/openinference.pb"),
    include_bytes!("../../../../tests/fixtures/corpus/openllmetry.pb"),
    include_bytes!("../../../../tests/fixtures/corpus/otel_v2.pb"),
    include_bytes!("../../../../tests/fixtures/corpus/otel_v2_latest.pb"),
    include_bytes!("../../../../tests/fixtures/corpus/traceai.pb"),
];

/// One trace per request, from every corpus export: each export with only one trace's spans
/// kept (and its resources and scopes around them), as `partition_traces_by_id` writes them.
pub fn templates() -> anyhow::Result<Vec<ExportTraceServiceRequest>> {
    let mut traces = Vec::new();
    for bytes in CORPUS {
        let request = otlp::decode(bytes, Encoding::OtlpProto).context("built-in corpus")?;
        let mut trace_ids: Vec<&[u8]> = Vec::new();
        for span in request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            if !trace_ids.contains(&span.trace_id.as_slice()) {
                trace_ids.push(&span.trace_id);
            }
        }
        for trace_id in trace_ids {
            let mut one = request.clone();
            for rs in &mut one.resource_spans {
                for ss in &mut rs.scope_spans {
                    ss.spans.retain(|s| s.trace_id == trace_id);
                }
                rs.scope_spans.retain(|ss| !ss.spans.is_empty());
            }
            one.resource_spans.retain(|rs| !rs.scope_spans.is_empty());
            traces.push(one);
        }
    }
    Ok(traces)
}

/// A copy of `template` with ids derived from `seed` and times shifted so the trace ends `now`.
pub fn instantiate(
    template: &ExportTraceServiceRequest,
    seed: u64,
    now_nanos: u64,
) -> ExportTraceServiceRequest {
    let mut request = template.clone();
    let trace_id = xxh3_128(&seed.to_le_bytes()).to_be_bytes().to_vec();
    let mut ids: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut fresh = |old: &[u8]| -> Vec<u8> {
        let n = ids.len() as u64;
        ids.entry(old.to_vec())
            .or_insert_with(|| {
                let h = xxh3_128(&[seed.to_le_bytes(), n.to_le_bytes()].concat());
                (h as u64).max(1).to_be_bytes().to_vec()
            })
            .clone()
    };
    let end = template
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| s.end_time_unix_nano)
        .max()
        .unwrap_or(0);
    let shift = now_nanos.saturating_sub(end);
    for span in request
        .resource_spans
        .iter_mut()
        .flat_map(|r| &mut r.scope_spans)
        .flat_map(|s| &mut s.spans)
    {
        span.trace_id = trace_id.clone();
        span.span_id = fresh(&span.span_id);
        if !span.parent_span_id.is_empty() {
            span.parent_span_id = fresh(&span.parent_span_id);
        }
        span.start_time_unix_nano += shift;
        span.end_time_unix_nano += shift;
        for e in &mut span.events {
            e.time_unix_nano += shift;
        }
    }
    request
}

/// What `loadgen` was asked to do (the `evalstream loadgen` arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenOptions {
    /// Bootstrap brokers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The topic.
    #[arg(long, default_value = "otlp_spans")]
    pub topic: String,
    /// How many traces.
    #[arg(long, default_value_t = 1000)]
    pub traces: u64,
    /// The encoding to write.
    #[arg(long, default_value = "otlp_proto")]
    pub encoding: Encoding,
    /// Traces per second to pace the output at; 0 produces as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Seed for ids: runs with the same seed produce the same ids.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A librdkafka producer property, KEY=VALUE (repeatable), over the defaults.
    #[arg(long = "producer-property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub producer_properties: Vec<(String, String)>,
    /// Send to this OTLP gRPC receiver (`http://127.0.0.1:4317`) instead of a Kafka topic.
    #[arg(long, value_name = "ENDPOINT")]
    pub otlp: Option<String>,
    /// With `--otlp`: whole traces are packed into requests of at least this many spans (the
    /// last one may be smaller).
    #[arg(long, default_value_t = 512)]
    pub spans_per_request: usize,
    /// With `--otlp`: requests awaiting their answer at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}`: expected KEY=VALUE"))
}

/// Sends the traces where the options say; returns the spans sent.
pub fn run(options: &LoadgenOptions) -> anyhow::Result<u64> {
    match &options.otlp {
        Some(endpoint) => to_otlp::send(endpoint, options),
        None => to_kafka::produce(options),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_single_traces_and_copies_get_fresh_consistent_ids() {
        let templates = templates().unwrap();
        assert_eq!(templates.len(), 50, "ten traces in each of five exports");
        let t = &templates[0];
        let a = instantiate(t, 1, 10_000_000_000_000_000_000);
        let b = instantiate(t, 2, 10_000_000_000_000_000_000);
        let spans = |r: &ExportTraceServiceRequest| {
            r.resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| s.spans.clone())
                .collect::<Vec<_>>()
        };
        let (sa, sb) = (spans(&a), spans(&b));
        assert_eq!(sa.len(), spans(t).len());
        assert!(sa.iter().all(|s| s.trace_id == sa[0].trace_id));
        assert_ne!(sa[0].trace_id, sb[0].trace_id);
        // Parent links point at spans of the same copy.
        for s in sa.iter().filter(|s| !s.parent_span_id.is_empty()) {
            assert!(
                sa.iter().any(|p| p.span_id == s.parent_span_id),
                "dangling parent"
            );
        }
        assert!(
            sa.iter().map(|s| s.end_time_unix_nano).max().unwrap() == 10_000_000_000_000_000_000
        );
    }
}
