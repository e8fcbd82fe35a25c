//! The output side: one idempotent producer writing evaluator spans to the output topic (split
//! into records under `message.max.bytes`) and dead letters ([`super::dead_letter`]), and the
//! delivery reports that acknowledge the inputs ([`crate::receivers::kafka::pending`]).
//!
//! Delivery runs with infinite retries on transient errors (the producer is idempotent, so
//! retries do not duplicate), which turns a broker outage into backpressure instead of loss. A
//! *permanent* delivery failure of an output re-routes it to the dead-letter topic with the
//! reason, so it is neither lost nor retried forever.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use evalstream_evaluators::to_otlp;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tracing::{error, warn};

use super::dead_letter::{DeadLetter, FailedOutput, Redirect};
use crate::receivers::kafka::pending::Pending;
use crate::telemetry::metrics::Metrics;

/// Groups evaluator spans into requests that each encode to at most `budget` bytes (as
/// `to_otlp::export_request`), keeping their order. A span too large for any record travels
/// alone (the producer refuses it, and it is dead-lettered with its input).
fn split_by_size(spans: Vec<Span>, budget: usize) -> Vec<Vec<Span>> {
    // The request around the spans (resource, scope), plus room for the length prefixes of
    // the enclosing messages to grow (up to 5 bytes each).
    let frame = to_otlp::export_request(Vec::new()).encoded_len() + 16;
    let room = budget.saturating_sub(frame);
    let mut chunks = Vec::new();
    let mut chunk: Vec<Span> = Vec::new();
    let mut used = 0;
    for span in spans {
        let len = span.encoded_len();
        // Field tag and length prefix of the span inside its `ScopeSpans`.
        let size = len + 1 + prost::encoding::encoded_len_varint(len as u64);
        if !chunk.is_empty() && used + size > room {
            chunks.push(std::mem::take(&mut chunk));
            used = 0;
        }
        used += size;
        chunk.push(span);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// What a produced record is, for its delivery report.
pub enum Delivery {
    /// Evaluator spans of these inputs.
    Output(Vec<Arc<Pending>>),
    /// A dead letter.
    DeadLetter(Box<DeadLetter>),
}

/// Delivery reports, on the producer's own thread.
pub struct SinkContext {
    pub(super) metrics: Arc<Metrics>,
    redirect: Sender<Redirect>,
}

impl SinkContext {
    /// Hands a failed output to the redirect thread: producing from the producer's own thread
    /// could wait on a full queue that only this thread drains.
    fn redirect(
        &self,
        inputs: Vec<Arc<Pending>>,
        key: Option<&[u8]>,
        payload: &[u8],
        reason: String,
    ) {
        let failed = FailedOutput {
            inputs,
            key: key.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            reason,
        };
        if self.redirect.send(Redirect::Failed(failed)).is_err() {
            // Only while stopping: the inputs stay uncommitted and are read again.
            self.metrics.undeliverable.inc();
        }
    }

    /// A dead letter failed: counted, logged, and handed back to be tried again. The broker
    /// refusing it as too large (its limit below the producer's) halves what is sent.
    pub(super) fn retry(&self, mut letter: Box<DeadLetter>, error: &KafkaError) {
        self.metrics.undeliverable.inc();
        letter.attempts += 1;
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
            letter.max_payload /= 2;
        }
        for s in letter.inputs.iter().map(|p| &p.source) {
            error!(%error, topic = %s.tp.topic, partition = s.tp.partition, offset = s.offset,
                attempts = letter.attempts, retry_in = ?letter.delay(),
                "cannot write to the dead-letter topic; the message stays uncommitted and is tried again");
        }
        if self.redirect.send(Redirect::Retry(letter)).is_err() {
            self.metrics.undeliverable.inc();
        }
    }
}

impl ClientContext for SinkContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics
            .kafka_errors
            .with_label_values(&["producer"])
            .inc();
        warn!(%error, reason, "output producer error");
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        match (result, *delivery) {
            (Ok(m), Delivery::Output(inputs)) => {
                self.metrics.outputs.inc();
                tracing::trace!(
                    key = %String::from_utf8_lossy(m.key().unwrap_or_default()),
                    partition = m.partition(),
                    offset = m.offset(),
                    inputs = inputs.len(),
                    "output delivered"
                );
                inputs.iter().for_each(|p| p.done());
            }
            (Ok(_), Delivery::DeadLetter(letter)) => {
                self.metrics.dlq.with_label_values(&[letter.reason]).inc();
                letter.inputs.iter().for_each(|p| p.done());
            }
            (Err((e, m)), Delivery::Output(inputs)) => {
                let reason = format!("cannot deliver evaluations: {e}");
                self.redirect(inputs, m.key(), m.payload().unwrap_or_default(), reason);
            }
            (Err((e, _)), Delivery::DeadLetter(letter)) => self.retry(letter, e),
        }
    }
}

/// The producer of evaluator spans and dead letters.
pub struct Sink {
    pub(super) producer: ThreadedProducer<SinkContext>,
    output_topic: Option<String>,
    pub(super) dlq_topic: String,
    /// The producer's `message.max.bytes`: outputs are split and dead letters cut under it.
    pub(super) max_record_bytes: usize,
}

/// Bytes left free under `message.max.bytes` for what librdkafka counts besides key, payload and
/// headers (its size check is `key + value + headers`; the broker's batch adds ~70 bytes).
pub(super) const RECORD_MARGIN: usize = 512;

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

impl Sink {
    /// Creates the producer. `client` properties override the defaults.
    pub fn new(
        brokers: &str,
        client: &std::collections::BTreeMap<String, String>,
        output_topic: Option<String>,
        dlq_topic: String,
        metrics: Arc<Metrics>,
        redirect: Sender<Redirect>,
    ) -> Result<Sink, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            // Retry transient failures for ever: an outage becomes backpressure, not loss.
            .set("message.timeout.ms", "0")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "100000");
        for (k, v) in client {
            config.set(k, v);
        }
        let max_record_bytes = config
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        let producer = config.create_with_context(SinkContext { metrics, redirect })?;
        Ok(Sink {
            producer,
            output_topic,
            dlq_topic,
            max_record_bytes,
        })
    }

    /// Queues a record, waiting while the producer's queue is full. Returns the record's
    /// delivery when it could not be queued at all.
    pub(super) fn send(
        &self,
        record: BaseRecord<'_, [u8], [u8], Box<Delivery>>,
    ) -> Result<(), (KafkaError, Box<Delivery>)> {
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, r)) => return Err((e, r.delivery_opaque)),
            }
        }
    }

    /// Whether evaluator spans have somewhere to go.
    pub fn has_output(&self) -> bool {
        self.output_topic.is_some()
    }

    /// Produces the evaluator spans of one trace, keyed by its hex trace id, in as many records
    /// as it takes to stay under `message.max.bytes` (300 LLM spans' evaluations made a 1.21 MB
    /// record, which the producer refused: every evaluation was lost and the input
    /// dead-lettered). The inputs they came from are acknowledged when every record is
    /// delivered.
    pub fn output<'p>(
        &self,
        key: &str,
        spans: Vec<Span>,
        inputs: impl IntoIterator<Item = &'p Arc<Pending>> + Clone,
    ) {
        let Some(topic) = &self.output_topic else {
            return;
        };
        let budget = self
            .max_record_bytes
            .saturating_sub(key.len() + RECORD_MARGIN);
        for chunk in split_by_size(spans, budget) {
            let payload = to_otlp::export_request(chunk).encode_to_vec();
            let inputs: Vec<Arc<Pending>> = inputs
                .clone()
                .into_iter()
                .inspect(|p| p.add())
                .cloned()
                .collect();
            let record = BaseRecord::with_opaque_to(topic, Box::new(Delivery::Output(inputs)))
                .key(key.as_bytes())
                .payload(&payload[..]);
            if let Err((e, delivery)) = self.send(record) {
                // Not queued (an invalid record, a closing producer): the same path as a
                // failed delivery.
                warn!(error = %e, "cannot queue a record");
                if let Delivery::Output(inputs) = *delivery {
                    let reason = format!("cannot queue evaluations: {e}");
                    self.producer.context().redirect(
                        inputs,
                        Some(key.as_bytes()),
                        &payload,
                        reason,
                    );
                }
            }
        }
    }

    /// Messages waiting in the producer.
    pub fn queue_len(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Waits up to `timeout` for queued records to be delivered.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.producer.flush(timeout).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evalstream_evaluators::otlp;

    fn span(i: usize, attribute_bytes: usize) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: (i as u64).to_be_bytes().to_vec(),
            name: "evaluation pii".into(),
            attributes: vec![otlp::kv_str(
                "gen_ai.evaluation.explanation",
                "x".repeat(attribute_bytes),
            )],
            ..Default::default()
        }
    }

    /// 300 LLM spans' evaluations made one 1.21 MB record, which the producer refused.
    #[test]
    fn outputs_are_split_under_the_record_limit_in_order() {
        let spans: Vec<Span> = (0..1500).map(|i| span(i, 700 + i % 300)).collect();
        let whole = to_otlp::export_request(spans.clone()).encoded_len();
        assert!(
            whole > 1_000_000,
            "the test needs more than one record: {whole}"
        );
        let budget = 1_000_000 - 32 - RECORD_MARGIN;
        let chunks = split_by_size(spans.clone(), budget);
        assert!(chunks.len() >= 2);
        for chunk in &chunks {
            let size = to_otlp::export_request(chunk.clone()).encoded_len();
            assert!(size <= budget, "{size} > {budget}");
        }
        let rejoined: Vec<Span> = chunks.into_iter().flatten().collect();
        assert_eq!(rejoined, spans, "every span, once, in order");
        // A span larger than the budget still goes (alone), never silently dropped.
        let huge = split_by_size(vec![span(0, 10), span(1, 5000), span(2, 10)], 1000);
        assert_eq!(huge.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
    }
}
