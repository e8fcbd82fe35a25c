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
//!
//! Trace evaluators make one output depend on several inputs: every message that contributed
//! spans to a buffered trace keeps a [`Hold`] on its [`Pending`] until the trace's evaluations are
//! queued, and that output's delivery acknowledges all of them. A held message gives up its raw
//! bytes ([`Received::release_payload`]) — the trace buffer keeps only the spans' fields — so when
//! an output of a released message fails for good, the dead-letter topic gets the failed output
//! itself, with headers naming every input it came from: the evaluations are kept and the inputs
//! are still in the input topic at the offsets named.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
    /// Its bytes, counted in the input's in-flight bytes until released.
    body: Mutex<Option<(Vec<u8>, CountedBytes)>>,
}

impl Received {
    /// A received message whose key and payload count into `in_flight_bytes`.
    pub fn new(
        tp: TopicPartition,
        offset: i64,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        in_flight_bytes: &Arc<AtomicUsize>,
    ) -> Received {
        let counted = CountedBytes::new(
            in_flight_bytes,
            payload.len() + key.as_ref().map_or(0, Vec::len),
        );
        Received {
            tp,
            offset,
            key,
            body: Mutex::new(Some((payload, counted))),
        }
    }

    fn body(&self) -> MutexGuard<'_, Option<(Vec<u8>, CountedBytes)>> {
        self.body.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f` with the payload, `None` once released.
    pub fn with_payload<R>(&self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        f(self.body().as_ref().map(|(payload, _)| &payload[..]))
    }

    /// Frees the payload (and its share of the in-flight bytes) of a message that stays in
    /// flight only because a buffered trace holds it.
    pub fn release_payload(&self) {
        self.body().take();
    }
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
    /// A pending message holding one guard. `acks` should be unbounded: acknowledging must never
    /// block the producer's thread, and its length is bounded by the messages in flight.
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

/// A buffered trace's claim on one input message: keeps the message uncommitted until dropped,
/// which happens once the trace's evaluations are queued (their delivery then keeps it). Counted
/// in a shared total so the consumer can tell held messages from ones still being worked on.
#[derive(Debug)]
pub struct Hold {
    pending: Arc<Pending>,
    held: Arc<AtomicUsize>,
}

impl Hold {
    /// Holds `pending`, counting into `held`.
    pub fn new(pending: &Arc<Pending>, held: &Arc<AtomicUsize>) -> Hold {
        pending.add();
        held.fetch_add(1, Ordering::AcqRel);
        Hold {
            pending: pending.clone(),
            held: held.clone(),
        }
    }

    /// The held message.
    pub fn pending(&self) -> &Arc<Pending> {
        &self.pending
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
        self.pending.done();
    }
}

/// A failed output, for the thread that dead-letters it ([`Sink::reroute`]).
#[derive(Debug)]
pub struct Redirect {
    /// The inputs it came from.
    inputs: Vec<Arc<Pending>>,
    /// Its key.
    key: Option<Vec<u8>>,
    /// Its payload (evaluator spans).
    payload: Vec<u8>,
    /// Why it failed.
    reason: String,
}

/// What a produced record is, for its delivery report: the inputs it acknowledges.
pub struct Delivery {
    inputs: Vec<Arc<Pending>>,
    dead_letter: Option<&'static str>,
}

/// Delivery reports, on the producer's own thread.
pub struct SinkContext {
    metrics: Arc<Metrics>,
    redirect: Sender<Redirect>,
}

impl SinkContext {
    /// Routes a failed output to the dead-letter topic: each input whose payload is still at hand
    /// goes there itself, once per input; otherwise the output record goes, for all its inputs.
    /// Hands a failed output to the redirect thread: producing from the producer's own thread
    /// could wait on a full queue that only this thread drains.
    fn redirect(
        &self,
        inputs: Vec<Arc<Pending>>,
        key: Option<&[u8]>,
        payload: &[u8],
        reason: String,
    ) {
        let redirect = Redirect {
            inputs,
            key: key.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            reason,
        };
        if self.redirect.send(redirect).is_err() {
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
        let delivery = *delivery;
        match (result, delivery.dead_letter) {
            (Ok(m), None) => {
                self.metrics.outputs.inc();
                tracing::trace!(
                    key = %String::from_utf8_lossy(m.key().unwrap_or_default()),
                    partition = m.partition(),
                    offset = m.offset(),
                    inputs = delivery.inputs.len(),
                    "output delivered"
                );
                delivery.inputs.iter().for_each(|p| p.done());
            }
            (Ok(_), Some(reason)) => {
                self.metrics.dlq.with_label_values(&[reason]).inc();
                delivery.inputs.iter().for_each(|p| p.done());
            }
            (Err((e, m)), None) => {
                let reason = format!("cannot deliver evaluations: {e}");
                self.redirect(
                    delivery.inputs,
                    m.key(),
                    m.payload().unwrap_or_default(),
                    reason,
                );
            }
            (Err((e, _)), Some(_)) => {
                self.metrics.undeliverable.inc();
                for s in delivery.inputs.iter().map(|p| &p.source) {
                    error!(error = %e, topic = %s.tp.topic, partition = s.tp.partition, offset = s.offset,
                        "cannot write to the dead-letter topic; the message stays uncommitted");
                }
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
                    warn!(error = %e, "cannot queue a record");
                    let context = self.producer.context();
                    let delivery = *r.delivery_opaque;
                    if delivery.dead_letter.is_some() {
                        // Not even the dead-letter topic: leave the message uncommitted.
                        context.metrics.undeliverable.inc();
                        return;
                    }
                    let reason = format!("cannot queue evaluations: {e}");
                    context.redirect(
                        delivery.inputs,
                        r.key,
                        r.payload.unwrap_or_default(),
                        reason,
                    );
                    return;
                }
            }
        }
    }

    /// Whether evaluator spans have somewhere to go.
    pub fn has_output(&self) -> bool {
        self.output_topic.is_some()
    }

    /// Produces evaluator spans for one trace, keyed by its hex trace id; the inputs they came
    /// from are acknowledged when it is delivered.
    pub fn output<'p>(
        &self,
        key: &str,
        payload: &[u8],
        inputs: impl IntoIterator<Item = &'p Arc<Pending>>,
    ) {
        let Some(topic) = &self.output_topic else {
            return;
        };
        let inputs: Vec<Arc<Pending>> = inputs.into_iter().inspect(|p| p.add()).cloned().collect();
        let delivery = Box::new(Delivery {
            inputs,
            dead_letter: None,
        });
        self.send(
            BaseRecord::with_opaque_to(topic, delivery)
                .key(key.as_bytes())
                .payload(payload),
        );
    }

    /// Sends a failed output's inputs to the dead-letter topic, each input message once (the
    /// first failed output of a message sends it; it stands in for that output and later failures
    /// of the same message are covered by it), or, when an input has given up its payload, the
    /// failed output record itself. Then the failed output is accounted for.
    pub fn reroute(&self, redirect: Redirect) {
        let Redirect {
            inputs,
            key,
            payload,
            reason,
        } = redirect;
        let mut released = Vec::new();
        for pending in &inputs {
            if pending.redirected.load(Ordering::Acquire) {
                continue;
            }
            match pending.source.with_payload(|p| p.map(<[u8]>::to_vec)) {
                Some(input) => {
                    if !pending.redirected.swap(true, Ordering::AcqRel) {
                        warn!(%reason, offset = pending.source.offset, "sending the input message to the dead-letter topic");
                        self.dead_letter_input(pending, &input, "delivery", &reason);
                    }
                }
                None => released.push(pending.clone()),
            }
        }
        if !released.is_empty() {
            warn!(%reason, inputs = released.len(), "sending the undeliverable output to the dead-letter topic");
            self.dead_letter_output(&released, key.as_deref(), &payload, &reason);
        }
        inputs.iter().for_each(|p| p.done());
    }

    /// Produces the input message to the dead-letter topic with headers naming the error and its
    /// source topic, partition and offset.
    pub fn dead_letter(&self, pending: &Arc<Pending>, reason: &'static str, message: &str) {
        let payload = pending
            .source
            .with_payload(|p| p.unwrap_or_default().to_vec());
        self.dead_letter_input(pending, &payload, reason, message);
    }

    fn dead_letter_input(
        &self,
        pending: &Arc<Pending>,
        payload: &[u8],
        reason: &'static str,
        message: &str,
    ) {
        let source = &pending.source;
        let mut record = BaseRecord::with_opaque_to(
            &self.dlq_topic,
            self.dead_letter_delivery(std::slice::from_ref(pending), reason),
        )
        .payload(payload)
        .headers(
            Self::error_headers(reason, message, "input")
                .insert(Header {
                    key: "evalstream.source.topic",
                    value: Some(source.tp.topic.as_ref()),
                })
                .insert(Header {
                    key: "evalstream.source.partition",
                    value: Some(&source.tp.partition.to_string()),
                })
                .insert(Header {
                    key: "evalstream.source.offset",
                    value: Some(&source.offset.to_string()),
                }),
        );
        if let Some(key) = &source.key {
            record = record.key(&key[..]);
        }
        self.send(record);
    }

    /// Produces a failed output record to the dead-letter topic, with headers naming the error and
    /// the inputs it came from (`evalstream.source.offsets`: `topic/partition@offset`, comma
    /// separated); `evalstream.dead_letter.content` is `evaluations` (an input's is `input`).
    pub fn dead_letter_output(
        &self,
        inputs: &[Arc<Pending>],
        key: Option<&[u8]>,
        payload: &[u8],
        message: &str,
    ) {
        let reason = "delivery";
        let offsets: Vec<String> = inputs
            .iter()
            .map(|p| {
                let s = &p.source;
                format!("{}/{}@{}", s.tp.topic, s.tp.partition, s.offset)
            })
            .collect();
        let headers = Self::error_headers(reason, message, "evaluations").insert(Header {
            key: "evalstream.source.offsets",
            value: Some(&offsets.join(",")),
        });
        let mut record =
            BaseRecord::with_opaque_to(&self.dlq_topic, self.dead_letter_delivery(inputs, reason))
                .payload(payload)
                .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.send(record);
    }

    fn dead_letter_delivery(&self, inputs: &[Arc<Pending>], reason: &'static str) -> Box<Delivery> {
        inputs.iter().for_each(|p| p.add());
        Box::new(Delivery {
            inputs: inputs.to_vec(),
            dead_letter: Some(reason),
        })
    }

    /// The error, and what the record is (`input` or `evaluations`).
    fn error_headers(reason: &str, message: &str, content: &str) -> OwnedHeaders {
        OwnedHeaders::new()
            .insert(Header {
                key: "evalstream.error",
                value: Some(message),
            })
            .insert(Header {
                key: "evalstream.error.type",
                value: Some(reason),
            })
            .insert(Header {
                key: "evalstream.dead_letter.content",
                value: Some(content),
            })
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
