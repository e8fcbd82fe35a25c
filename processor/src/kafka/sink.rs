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
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use evalstream_evaluators::text::prefix_bytes;
use evalstream_evaluators::to_otlp;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
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

/// What the redirect thread ([`Sink::run_redirects`]) is handed: a failed output to send to the
/// dead-letter topic, or a dead letter that failed and is tried again.
#[derive(Debug)]
pub enum Redirect {
    /// An output that could not be delivered.
    Failed(FailedOutput),
    /// A dead letter that could not be written.
    Retry(Box<DeadLetter>),
}

/// A failed output.
#[derive(Debug)]
pub struct FailedOutput {
    /// The inputs it came from.
    inputs: Vec<Arc<Pending>>,
    /// Its key.
    key: Option<Vec<u8>>,
    /// Its payload (evaluator spans).
    payload: Vec<u8>,
    /// Why it failed.
    reason: String,
}

/// One record for the dead-letter topic, kept until the topic acknowledges it: its inputs stay
/// uncommitted until then, and a failed write is tried again (after a backoff, smaller when the
/// broker found it too large), so a record is never lost and never blocks its partition for
/// good.
#[derive(Debug)]
pub struct DeadLetter {
    /// The inputs it stands for; acknowledged when it is written.
    inputs: Vec<Arc<Pending>>,
    /// `decode` or `delivery`, for the metric and `evalstream.error.type`.
    reason: &'static str,
    key: Option<Vec<u8>>,
    /// The whole record as it came (an input, or a failed output); cut to fit when sent.
    payload: Arc<[u8]>,
    /// Headers besides the size and truncation headers added when sent.
    headers: Vec<(&'static str, String)>,
    /// Most payload bytes to send; lowered when the broker refuses the record as too large.
    max_payload: usize,
    /// Failed writes so far.
    attempts: u32,
}

/// Longest header value and key a dead letter carries: error messages and offsets lists are
/// short, a hostile key need not be.
const MAX_HEADER_VALUE: usize = 1024;
const MAX_DEAD_LETTER_KEY: usize = 1024;

/// Bytes left free under `message.max.bytes` for what librdkafka counts besides key, payload and
/// headers (its size check is `key + value + headers`; the broker's batch adds ~70 bytes).
const RECORD_MARGIN: usize = 512;

/// The longest wait between two writes of a dead letter that keeps failing.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

impl DeadLetter {
    /// Bytes librdkafka counts for the headers (name, value and a little framing each).
    fn headers_size(&self) -> usize {
        self.headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
            + 128
    }

    /// The wait before the next write, after `attempts` failures: 1 s, doubling, at most a
    /// minute.
    fn delay(&self) -> Duration {
        let exponent = self.attempts.saturating_sub(1).min(6);
        Duration::from_secs(1 << exponent).min(MAX_RETRY_DELAY)
    }
}

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
    metrics: Arc<Metrics>,
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
    fn retry(&self, mut letter: Box<DeadLetter>, error: &KafkaError) {
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
    producer: ThreadedProducer<SinkContext>,
    output_topic: Option<String>,
    dlq_topic: String,
    /// The producer's `message.max.bytes`: outputs are split and dead letters cut under it.
    max_record_bytes: usize,
}

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
    fn send(
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

    /// Takes failed outputs and failed dead letters until `done` is set: failed outputs go to
    /// the dead-letter topic ([`Sink::reroute`]), failed dead letters are written again once
    /// their backoff has passed. Also keeps the producer-queue gauge current.
    pub fn run_redirects(&self, redirects: &Receiver<Redirect>, done: &AtomicBool) {
        let mut waiting: Vec<(Instant, Box<DeadLetter>)> = Vec::new();
        while !done.load(Ordering::Acquire) {
            let metrics = &self.producer.context().metrics;
            metrics.producer_queue.set(i64::from(self.queue_len()));
            let now = Instant::now();
            let (due, later): (Vec<_>, Vec<_>) = waiting.drain(..).partition(|(at, _)| *at <= now);
            waiting = later;
            for (_, letter) in due {
                self.write_dead_letter(letter);
            }
            let wait = waiting
                .iter()
                .map(|(at, _)| at.saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::MAX)
                .min(Duration::from_millis(200));
            match redirects.recv_timeout(wait) {
                Ok(Redirect::Failed(failed)) => self.reroute(failed),
                Ok(Redirect::Retry(letter)) => {
                    waiting.push((Instant::now() + letter.delay(), letter))
                }
                Err(_) => {}
            }
        }
    }

    /// Sends a failed output's inputs to the dead-letter topic, each input message once (the
    /// first failed output of a message sends it; it stands in for that output and later failures
    /// of the same message are covered by it), or, when an input has given up its payload, the
    /// failed output record itself. Then the failed output is accounted for.
    pub fn reroute(&self, failed: FailedOutput) {
        let FailedOutput {
            inputs,
            key,
            payload,
            reason,
        } = failed;
        let mut released = Vec::new();
        for pending in &inputs {
            if pending.redirected.load(Ordering::Acquire) {
                continue;
            }
            match pending.source.with_payload(|p| p.map(<[u8]>::to_vec)) {
                Some(input) => {
                    if !pending.redirected.swap(true, Ordering::AcqRel) {
                        warn!(%reason, offset = pending.source.offset, "sending the input message to the dead-letter topic");
                        self.dead_letter_input(pending, input.into(), "delivery", &reason);
                    }
                }
                None => released.push(pending.clone()),
            }
        }
        if !released.is_empty() {
            warn!(%reason, inputs = released.len(), "sending the undeliverable output to the dead-letter topic");
            self.dead_letter_output(&released, key.as_deref(), payload.into(), &reason);
        }
        inputs.iter().for_each(|p| p.done());
    }

    /// Produces the input message to the dead-letter topic with headers naming the error and its
    /// source topic, partition and offset.
    pub fn dead_letter(&self, pending: &Arc<Pending>, reason: &'static str, message: &str) {
        let payload: Arc<[u8]> = pending
            .source
            .with_payload(|p| p.unwrap_or_default().into());
        self.dead_letter_input(pending, payload, reason, message);
    }

    fn dead_letter_input(
        &self,
        pending: &Arc<Pending>,
        payload: Arc<[u8]>,
        reason: &'static str,
        message: &str,
    ) {
        let source = &pending.source;
        let mut headers = Self::error_headers(reason, message, "input");
        headers.extend([
            ("evalstream.source.topic", source.tp.topic.to_string()),
            (
                "evalstream.source.partition",
                source.tp.partition.to_string(),
            ),
            ("evalstream.source.offset", source.offset.to_string()),
        ]);
        self.write_dead_letter(self.dead_letter_of(
            std::slice::from_ref(pending),
            reason,
            source.key.clone(),
            payload,
            headers,
        ));
    }

    /// Produces a failed output record to the dead-letter topic, with headers naming the error and
    /// the inputs it came from (`evalstream.source.offsets`: `topic/partition@offset`, comma
    /// separated); `evalstream.dead_letter.content` is `evaluations` (an input's is `input`).
    pub fn dead_letter_output(
        &self,
        inputs: &[Arc<Pending>],
        key: Option<&[u8]>,
        payload: Arc<[u8]>,
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
        let mut headers = Self::error_headers(reason, message, "evaluations");
        headers.push(("evalstream.source.offsets", offsets.join(",")));
        self.write_dead_letter(self.dead_letter_of(
            inputs,
            reason,
            key.map(<[u8]>::to_vec),
            payload,
            headers,
        ));
    }

    /// A dead letter holding `inputs` until it is written.
    fn dead_letter_of(
        &self,
        inputs: &[Arc<Pending>],
        reason: &'static str,
        key: Option<Vec<u8>>,
        payload: Arc<[u8]>,
        headers: Vec<(&'static str, String)>,
    ) -> Box<DeadLetter> {
        inputs.iter().for_each(|p| p.add());
        let headers = headers
            .into_iter()
            .map(|(k, v)| (k, prefix_bytes(&v, MAX_HEADER_VALUE).to_owned()))
            .collect();
        let key = key.map(|mut k| {
            k.truncate(MAX_DEAD_LETTER_KEY);
            k
        });
        let mut letter = Box::new(DeadLetter {
            inputs: inputs.to_vec(),
            reason,
            key,
            payload,
            headers,
            max_payload: 0,
            attempts: 0,
        });
        letter.max_payload = self
            .max_record_bytes
            .saturating_sub(letter.key.as_ref().map_or(0, Vec::len))
            .saturating_sub(letter.headers_size() + RECORD_MARGIN);
        letter
    }

    /// Queues a dead letter, its payload cut to fit (headers `evalstream.source.size` and, when
    /// cut, `evalstream.dead_letter.truncated: true` say so). A record the producer refuses is
    /// handed back to be tried again, smaller when it was too large.
    fn write_dead_letter(&self, letter: Box<DeadLetter>) {
        let payload = letter.payload.clone();
        let sent = &payload[..payload.len().min(letter.max_payload)];
        let mut headers = OwnedHeaders::new_with_capacity(letter.headers.len() + 2);
        for (k, v) in &letter.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_str()),
            });
        }
        headers = headers.insert(Header {
            key: "evalstream.source.size",
            value: Some(&payload.len().to_string()),
        });
        if sent.len() < payload.len() {
            headers = headers.insert(Header {
                key: "evalstream.dead_letter.truncated",
                value: Some("true"),
            });
        }
        let key = letter.key.clone();
        let mut record =
            BaseRecord::with_opaque_to(&self.dlq_topic, Box::new(Delivery::DeadLetter(letter)))
                .payload(sent)
                .headers(headers);
        if let Some(key) = &key {
            record = record.key(&key[..]);
        }
        if let Err((e, delivery)) = self.send(record)
            && let Delivery::DeadLetter(letter) = *delivery
        {
            self.producer.context().retry(letter, &e);
        }
    }

    /// The error, and what the record is (`input` or `evaluations`).
    fn error_headers(
        reason: &'static str,
        message: &str,
        content: &'static str,
    ) -> Vec<(&'static str, String)> {
        vec![
            ("evalstream.error", message.to_owned()),
            ("evalstream.error.type", reason.to_owned()),
            ("evalstream.dead_letter.content", content.to_owned()),
        ]
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

    #[test]
    fn dead_letters_back_off_to_a_minute() {
        let mut letter = DeadLetter {
            inputs: Vec::new(),
            reason: "decode",
            key: None,
            payload: Arc::from(&b""[..]),
            headers: Vec::new(),
            max_payload: 0,
            attempts: 1,
        };
        assert_eq!(letter.delay(), Duration::from_secs(1));
        letter.attempts = 3;
        assert_eq!(letter.delay(), Duration::from_secs(4));
        letter.attempts = 40;
        assert_eq!(letter.delay(), MAX_RETRY_DELAY);
    }
}
