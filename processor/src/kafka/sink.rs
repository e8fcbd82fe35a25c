//! The output side: one idempotent producer writing evaluator spans to the output topic and
//! undecodable messages to the dead-letter topic, and the acknowledgement that lets an input
//! offset be committed.
//!
//! Each input message gets a [`Pending`] that counts its outstanding outputs. It starts at one (a
//! guard the worker releases when it has sent everything), each produced record adds one, and
//! each delivery report subtracts one; at zero an [`Ack`] goes back to the consumer thread, which
//! then may commit past the message. Delivery runs with infinite retries on transient errors (the
//! producer is idempotent, so retries do not duplicate), which turns a broker outage into
//! backpressure instead of loss. A *permanent* delivery failure of an output re-routes the
//! original message to the dead-letter topic with the reason, so it is neither lost nor retried
//! forever; if even that fails the message stays uncommitted and is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::Sender;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tracing::{error, warn};

use super::offsets::TopicPartition;
use crate::metrics::Metrics;

/// Counts bytes into a shared total for as long as it lives: the input's in-flight bytes, held by
/// a received message until the last output derived from it is delivered.
#[derive(Debug)]
pub struct CountedBytes {
    total: Arc<AtomicUsize>,
    bytes: usize,
}

impl CountedBytes {
    /// Adds `bytes` to `total` until dropped.
    pub fn new(total: &Arc<AtomicUsize>, bytes: usize) -> CountedBytes {
        total.fetch_add(bytes, Ordering::AcqRel);
        CountedBytes {
            total: total.clone(),
            bytes,
        }
    }
}

impl Drop for CountedBytes {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A message as received from the input topic.
#[derive(Debug)]
pub struct Received {
    /// Where it came from.
    pub tp: TopicPartition,
    /// Its offset.
    pub offset: i64,
    /// Its key (the hex trace id when the collector partitions by trace).
    pub key: Option<Vec<u8>>,
    /// Its bytes.
    pub payload: Vec<u8>,
    /// Its share of the input's in-flight bytes.
    pub counted: CountedBytes,
}

/// Tells the consumer that an input message is finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The message's partition.
    pub tp: TopicPartition,
    /// Its offset.
    pub offset: i64,
}

/// The outstanding outputs of one input message.
#[derive(Debug)]
pub struct Pending {
    /// The input message.
    pub source: Arc<Received>,
    remaining: AtomicUsize,
    redirected: AtomicBool,
    acks: Sender<Ack>,
}

impl Pending {
    /// A pending message holding one guard; `acks` must have room for every message in flight
    /// (the consumer bounds how many there are), so acknowledging never blocks.
    pub fn new(source: Arc<Received>, acks: Sender<Ack>) -> Arc<Pending> {
        Arc::new(Pending {
            source,
            remaining: AtomicUsize::new(1),
            redirected: AtomicBool::new(false),
            acks,
        })
    }

    fn add(&self) {
        self.remaining.fetch_add(1, Ordering::AcqRel);
    }

    /// One output (or the guard) is finished.
    pub fn done(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ack = Ack {
                tp: self.source.tp.clone(),
                offset: self.source.offset,
            };
            // The consumer may be gone during shutdown; then nothing needs the ack.
            let _ = self.acks.send(ack);
        }
    }
}

/// What a produced record is, for its delivery report.
pub struct Delivery {
    pending: Arc<Pending>,
    dead_letter: Option<&'static str>,
}

/// Delivery reports, on the producer's own thread.
pub struct SinkContext {
    metrics: Arc<Metrics>,
    redirect: Sender<(Arc<Pending>, String)>,
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
        match (result, delivery.dead_letter) {
            (Ok(m), None) => {
                self.metrics.outputs.inc();
                tracing::trace!(
                    key = %String::from_utf8_lossy(m.key().unwrap_or_default()),
                    partition = m.partition(),
                    offset = m.offset(),
                    input_offset = delivery.pending.source.offset,
                    "output delivered"
                );
                delivery.pending.done();
            }
            (Ok(_), Some(reason)) => {
                self.metrics.dlq.with_label_values(&[reason]).inc();
                delivery.pending.done();
            }
            (Err((e, _)), None) => {
                // The first failed output sends the whole input message to the dead-letter topic;
                // that record stands in for this output. Later failures of the same message are
                // covered by it.
                if delivery.pending.redirected.swap(true, Ordering::AcqRel) {
                    delivery.pending.done();
                } else {
                    let reason = format!("cannot deliver evaluations: {e}");
                    if self
                        .redirect
                        .send((delivery.pending.clone(), reason))
                        .is_err()
                    {
                        self.metrics.undeliverable.inc();
                    }
                }
            }
            (Err((e, _)), Some(_)) => {
                self.metrics.undeliverable.inc();
                let s = &delivery.pending.source;
                error!(error = %e, topic = %s.tp.topic, partition = s.tp.partition, offset = s.offset,
                    "cannot write to the dead-letter topic; the message stays uncommitted");
            }
        }
    }
}

/// The producer of evaluator spans and dead letters.
pub struct Sink {
    producer: ThreadedProducer<SinkContext>,
    output_topic: Option<String>,
    dlq_topic: String,
}

impl Sink {
    /// Creates the producer. `client` properties override the defaults.
    pub fn new(
        brokers: &str,
        client: &std::collections::BTreeMap<String, String>,
        output_topic: Option<String>,
        dlq_topic: String,
        metrics: Arc<Metrics>,
        redirect: Sender<(Arc<Pending>, String)>,
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
        let producer = config.create_with_context(SinkContext { metrics, redirect })?;
        Ok(Sink {
            producer,
            output_topic,
            dlq_topic,
        })
    }

    fn send(&self, record: BaseRecord<'_, [u8], [u8], Box<Delivery>>) {
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, r)) => {
                    // Not queued (an invalid record, a closing producer): count the output as
                    // failed through the same path as a failed delivery.
                    let delivery = r.delivery_opaque;
                    warn!(error = %e, "cannot queue a record");
                    let pending = delivery.pending.clone();
                    if delivery.dead_letter.is_some() {
                        // Not even the dead-letter topic: leave the message uncommitted.
                        self.producer.context().metrics.undeliverable.inc();
                        return;
                    }
                    if !pending.redirected.swap(true, Ordering::AcqRel) {
                        self.dead_letter(
                            &pending,
                            "delivery",
                            &format!("cannot queue evaluations: {e}"),
                        );
                    }
                    pending.done();
                    return;
                }
            }
        }
    }

    /// Whether evaluator spans have somewhere to go.
    pub fn has_output(&self) -> bool {
        self.output_topic.is_some()
    }

    /// Produces evaluator spans for one trace, keyed by its hex trace id.
    pub fn output(&self, key: &str, payload: &[u8], pending: &Arc<Pending>) {
        let Some(topic) = &self.output_topic else {
            return;
        };
        pending.add();
        let delivery = Box::new(Delivery {
            pending: pending.clone(),
            dead_letter: None,
        });
        self.send(
            BaseRecord::with_opaque_to(topic, delivery)
                .key(key.as_bytes())
                .payload(payload),
        );
    }

    /// Produces the input message to the dead-letter topic with headers naming the error and its
    /// source topic, partition and offset.
    pub fn dead_letter(&self, pending: &Arc<Pending>, reason: &'static str, message: &str) {
        let source = &pending.source;
        let partition = source.tp.partition.to_string();
        let offset = source.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "evalstream.error",
                value: Some(message),
            })
            .insert(Header {
                key: "evalstream.error.type",
                value: Some(reason),
            })
            .insert(Header {
                key: "evalstream.source.topic",
                value: Some(source.tp.topic.as_ref()),
            })
            .insert(Header {
                key: "evalstream.source.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "evalstream.source.offset",
                value: Some(&offset),
            });
        pending.add();
        let delivery = Box::new(Delivery {
            pending: pending.clone(),
            dead_letter: Some(reason),
        });
        let mut record = BaseRecord::with_opaque_to(&self.dlq_topic, delivery)
            .payload(&source.payload[..])
            .headers(headers);
        if let Some(key) = &source.key {
            record = record.key(&key[..]);
        }
        self.send(record);
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
