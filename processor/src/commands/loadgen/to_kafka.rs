//! Producing to a Kafka topic, as a collector's Kafka exporter with `partition_traces_by_id`
//! does: one trace per message, keyed by its hex trace id.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use evalstream_evaluators::otlp::{self, Encoding};
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::{LoadgenOptions, instantiate, templates};

/// Produces the traces and waits for every one to be acknowledged; returns spans produced.
pub(super) fn produce(options: &LoadgenOptions) -> anyhow::Result<u64> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &options.brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        // As the collector's exporter: retries never duplicate or reorder a trace.
        .set("enable.idempotence", "true");
    for (k, v) in &options.producer_properties {
        config.set(k, v);
    }
    let producer: ThreadedProducer<DefaultProducerContext> =
        config.create().context("cannot create the producer")?;
    let templates = templates()?;
    let started = Instant::now();
    let mut spans = 0u64;
    for i in 0..options.traces {
        if options.rate > 0 {
            let due = Duration::from_secs_f64(i as f64 / options.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let template = &templates[(i % templates.len() as u64) as usize];
        // Each trace ends as it is produced, so the worker's end-to-end lag is measured from here.
        let request = instantiate(
            template,
            options.seed.wrapping_mul(1_000_003).wrapping_add(i),
            crate::now_unix_nanos(),
        );
        spans += evalstream_evaluators::otlp::span_count(&request) as u64;
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
