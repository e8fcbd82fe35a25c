//! `evalstream loadgen`: produces corpus-shaped traces to a topic, as a collector's Kafka exporter
//! with `partition_traces_by_id: true` would (one trace per message, keyed by hex trace id).
//!
//! Templates are the traces of the five real-instrumentation exports built into the binary. Each
//! produced trace is a template with a fresh trace id, fresh span ids (parent links kept) and
//! timestamps moved to now, so every message is distinct and lag metrics are meaningful.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use evalstream_evaluators::otlp::{self, Encoding, types::ExportTraceServiceRequest};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use xxhash_rust::xxh3::xxh3_128;

/// The corpus exports, one `ExportTraceServiceRequest` each.
const CORPUS: [&[u8]; 5] = [
    include_bytes!("../../tests/fixtures/corpus/openinference.pb"),
    include_bytes!("../../tests/fixtures/corpus/openllmetry.pb"),
    include_bytes!("../../tests/fixtures/corpus/otel_v2.pb"),
    include_bytes!("../../tests/fixtures/corpus/otel_v2_latest.pb"),
    include_bytes!("../../tests/fixtures/corpus/traceai.pb"),
];

/// One trace per request, from every corpus export.
pub fn templates() -> anyhow::Result<Vec<ExportTraceServiceRequest>> {
    let mut traces = Vec::new();
    for bytes in CORPUS {
        let request = otlp::decode(bytes, Encoding::OtlpProto).context("built-in corpus")?;
        let mut by_trace: Vec<(Vec<u8>, ExportTraceServiceRequest)> = Vec::new();
        for rs in &request.resource_spans {
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    let index = match by_trace.iter().position(|(t, _)| *t == span.trace_id) {
                        Some(i) => i,
                        None => {
                            by_trace.push((
                                span.trace_id.clone(),
                                ExportTraceServiceRequest::default(),
                            ));
                            by_trace.len() - 1
                        }
                    };
                    let req = &mut by_trace[index].1;
                    // Keep the resource and scope structure of the original.
                    let r = match req
                        .resource_spans
                        .iter_mut()
                        .find(|r| r.resource == rs.resource)
                    {
                        Some(r) => r,
                        None => {
                            req.resource_spans.push(ResourceSpans {
                                resource: rs.resource.clone(),
                                ..Default::default()
                            });
                            req.resource_spans.last_mut().expect("just pushed")
                        }
                    };
                    let s = match r.scope_spans.iter_mut().find(|s| s.scope == ss.scope) {
                        Some(s) => s,
                        None => {
                            r.scope_spans.push(ScopeSpans {
                                scope: ss.scope.clone(),
                                ..Default::default()
                            });
                            r.scope_spans.last_mut().expect("just pushed")
                        }
                    };
                    s.spans.push(span.clone());
                }
            }
        }
        traces.extend(by_trace.into_iter().map(|(_, r)| r));
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

/// What `loadgen` was asked to do.
#[derive(Debug, Clone)]
pub struct LoadgenOptions {
    /// Bootstrap brokers.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// How many traces.
    pub traces: u64,
    /// The encoding to write.
    pub encoding: Encoding,
    /// Seed for ids, so runs can differ or repeat.
    pub seed: u64,
    /// librdkafka producer properties, over the defaults.
    pub producer_properties: Vec<(String, String)>,
}

/// Produces the traces and waits for every one to be acknowledged; returns spans produced.
pub fn run(options: &LoadgenOptions) -> anyhow::Result<u64> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &options.brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        // Not idempotent by default: tansu 0.6, the test broker, does not serve a fetch that
        // starts inside an idempotent producer's batch, so a consumer restarting from a committed
        // offset mid-batch would stall there (seen here). Real Kafka has no such limit; pass
        // `--producer-property enable.idempotence=true` against it.
        .set("enable.idempotence", "false");
    for (k, v) in &options.producer_properties {
        config.set(k, v);
    }
    let producer: ThreadedProducer<DefaultProducerContext> =
        config.create().context("cannot create the producer")?;
    let templates = templates()?;
    let started = Instant::now();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut spans = 0u64;
    for i in 0..options.traces {
        let template = &templates[(i % templates.len() as u64) as usize];
        let request = instantiate(
            template,
            options.seed.wrapping_mul(1_000_003).wrapping_add(i),
            now,
        );
        spans += evalstream_evaluators::span::spans(&request).count() as u64;
        let key = otlp::hex(&request.resource_spans[0].scope_spans[0].spans[0].trace_id);
        let payload = match options.encoding {
            Encoding::OtlpProto => request.encode_to_vec(),
            Encoding::OtlpJson => serde_json::to_vec(&request)?,
        };
        let mut record = BaseRecord::to(&options.topic).key(&key).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e).context("cannot produce"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("not every trace was acknowledged")?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "produced {} traces ({spans} spans) to {} in {seconds:.2} s ({:.0} traces/s)",
        options.traces,
        options.topic,
        options.traces as f64 / seconds
    );
    Ok(spans)
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
