//! Dead letters: what cannot be evaluated (an undecodable input) or delivered (an output an
//! exporter gave up on) goes to the dead-letter topic with headers saying why and where from, cut
//! to fit the producer's `message.max.bytes`, and is written until the topic acknowledges it; only
//! then is its input acknowledged (the job holds the input's token). The writer has a producer
//! of its own on the input's cluster, so dead letters never wait behind outputs, and a thread of
//! its own, so nothing produces from inside a delivery callback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use evalstream_evaluators::text::prefix_bytes;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use tracing::{error, warn};

use super::input::KafkaInput;
use crate::pipeline::ack::{RejectedOutput, Token};
use crate::telemetry::metrics::Metrics;

/// One record for the dead-letter topic, kept until the topic acknowledges it: its input stays
/// uncommitted until then, and a failed write is tried again (after a backoff, smaller when the
/// broker found it too large), so a record is never lost and never blocks its partition for
/// good.
#[derive(Debug)]
pub struct DeadLetterJob {
    /// The input it stands for; let go when it is written.
    token: Token,
    /// `decode`, `delivery` or `panic`, for the metric and `evalstream.error.type`.
    reason: &'static str,
    key: Option<Vec<u8>>,
    /// The whole record as it came (an input, or a rejected output); cut to fit when sent.
    payload: Arc<[u8]>,
    /// Headers besides the size and truncation headers added when sent.
    headers: Vec<(&'static str, String)>,
    /// Most payload bytes to send; set by the writer, lowered when the broker refuses the record
    /// as too large.
    max_payload: Option<usize>,
    /// Failed writes so far.
    attempts: u32,
}

/// Longest header value and key a dead letter carries: error messages and offsets lists are
/// short, a hostile key need not be.
const MAX_HEADER_VALUE: usize = 1024;
const MAX_DEAD_LETTER_KEY: usize = 1024;

/// The longest wait between two writes of a dead letter that keeps failing.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Bytes left free under `message.max.bytes` for what librdkafka counts besides key, payload and
/// headers (its size check is `key + value + headers`; the broker's batch adds ~70 bytes).
const RECORD_MARGIN: usize = 512;

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

impl DeadLetterJob {
    /// The input message itself, with headers naming the error and its topic, partition and
    /// offset.
    pub fn input(
        token: Token,
        input: &KafkaInput,
        payload: Vec<u8>,
        reason: &'static str,
        message: &str,
    ) -> DeadLetterJob {
        let source = &input.source;
        let mut headers = error_headers(reason, message, "input");
        headers.extend([
            ("evalstream.source.topic", source.tp.topic.to_string()),
            (
                "evalstream.source.partition",
                source.tp.partition.to_string(),
            ),
            ("evalstream.source.offset", source.offset.to_string()),
        ]);
        DeadLetterJob::new(token, reason, source.key.clone(), payload.into(), headers)
    }

    /// An output an exporter gave up on, with headers naming the error and the input it came
    /// from (`evalstream.source.offsets`: `topic/partition@offset`);
    /// `evalstream.dead_letter.content` is `evaluations` (an input's is `input`) and
    /// `evalstream.dead_letter.signal` says which request it holds (`logs` or `traces`).
    pub fn output(
        token: Token,
        input: &KafkaInput,
        output: &RejectedOutput,
        reason: &'static str,
        message: &str,
    ) -> DeadLetterJob {
        let mut headers = error_headers(reason, message, "evaluations");
        headers.push(("evalstream.source.offsets", input.describe()));
        headers.push(("evalstream.dead_letter.signal", output.signal.to_owned()));
        DeadLetterJob::new(
            token,
            reason,
            output.key.clone(),
            output.payload.as_slice().into(),
            headers,
        )
    }

    fn new(
        token: Token,
        reason: &'static str,
        key: Option<Vec<u8>>,
        payload: Arc<[u8]>,
        headers: Vec<(&'static str, String)>,
    ) -> DeadLetterJob {
        let headers = headers
            .into_iter()
            .map(|(k, v)| (k, prefix_bytes(&v, MAX_HEADER_VALUE).to_owned()))
            .collect();
        let key = key.map(|mut k| {
            k.truncate(MAX_DEAD_LETTER_KEY);
            k
        });
        DeadLetterJob {
            token,
            reason,
            key,
            payload,
            headers,
            max_payload: None,
            attempts: 0,
        }
    }

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

/// Delivery reports of dead letters, on the producer's own thread.
pub struct DeadLetterContext {
    metrics: Arc<Metrics>,
    /// Failed letters go back to the writer thread to be tried again.
    retry: Sender<DeadLetterJob>,
}

impl ClientContext for DeadLetterContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics
            .kafka_errors
            .with_label_values(&["producer"])
            .inc();
        warn!(%error, reason, "dead-letter producer error");
    }
}

impl ProducerContext for DeadLetterContext {
    type DeliveryOpaque = Box<DeadLetterJob>;

    fn delivery(&self, result: &DeliveryResult<'_>, letter: Box<DeadLetterJob>) {
        match result {
            // Dropping the letter lets its input go.
            Ok(_) => self.metrics.dlq.with_label_values(&[letter.reason]).inc(),
            Err((e, _)) => self.failed(*letter, e),
        }
    }
}

impl DeadLetterContext {
    /// A dead letter failed: counted, logged, and handed back to be tried again. The broker
    /// refusing it as too large (its limit below the producer's) halves what is sent.
    fn failed(&self, mut letter: DeadLetterJob, error: &KafkaError) {
        self.metrics.undeliverable.inc();
        letter.attempts += 1;
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
            letter.max_payload = letter.max_payload.map(|m| m / 2);
        }
        let input = letter
            .token
            .origin::<KafkaInput>()
            .map(KafkaInput::describe)
            .unwrap_or_default();
        error!(%error, %input, attempts = letter.attempts, retry_in = ?letter.delay(),
            "cannot write to the dead-letter topic; the message stays uncommitted and is tried again");
        if let Err(e) = self.retry.send(letter) {
            // The writer has stopped: the input stays uncommitted and is read again.
            if let Some(input) = e.0.token.origin::<KafkaInput>() {
                input.keep_uncommitted();
            }
        }
    }
}

/// The dead-letter writer: its producer and the jobs handed to it.
pub struct DeadLetters {
    producer: ThreadedProducer<DeadLetterContext>,
    topic: String,
    /// The producer's `message.max.bytes`: dead letters are cut under it.
    max_record_bytes: usize,
    jobs: Receiver<DeadLetterJob>,
}

impl DeadLetters {
    /// A writer to `topic` on `brokers` with the receiver's `client` properties, and the sender
    /// that jobs go to (unbounded: see [`KafkaInput::new`]).
    pub fn new(
        brokers: &str,
        client: &std::collections::BTreeMap<String, String>,
        topic: String,
        metrics: Arc<Metrics>,
    ) -> Result<(DeadLetters, Sender<DeadLetterJob>), KafkaError> {
        let (tx, jobs) = crossbeam_channel::unbounded();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            // Retry transient failures for ever: an outage becomes backpressure, not loss.
            .set("message.timeout.ms", "0")
            .set("linger.ms", "5");
        for (k, v) in super::connection_properties(client) {
            config.set(k, v);
        }
        let max_record_bytes = config
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        let producer = config.create_with_context(DeadLetterContext {
            metrics,
            retry: tx.clone(),
        })?;
        Ok((
            DeadLetters {
                producer,
                topic,
                max_record_bytes,
                jobs,
            },
            tx,
        ))
    }

    /// Writes jobs until `done` is set; failed ones again once their backoff has passed. Then
    /// waits up to `drain` for what is queued.
    pub fn run(&self, done: &AtomicBool, drain: Duration) {
        let mut waiting: Vec<(Instant, DeadLetterJob)> = Vec::new();
        while !done.load(Ordering::Acquire) {
            let now = Instant::now();
            let (due, later): (Vec<_>, Vec<_>) = waiting.drain(..).partition(|(at, _)| *at <= now);
            waiting = later;
            for (_, letter) in due {
                self.write(letter);
            }
            let wait = waiting
                .iter()
                .map(|(at, _)| at.saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::MAX)
                .min(Duration::from_millis(200));
            if let Ok(letter) = self.jobs.recv_timeout(wait) {
                if letter.attempts == 0 {
                    self.write(letter);
                } else {
                    waiting.push((Instant::now() + letter.delay(), letter));
                }
            }
        }
        // Letters still waiting are dropped unwritten: mark their inputs so they stay
        // uncommitted.
        for (_, letter) in waiting {
            if let Some(input) = letter.token.origin::<KafkaInput>() {
                input.keep_uncommitted();
            }
        }
        while let Ok(letter) = self.jobs.try_recv() {
            self.write(letter);
        }
        let _ = self.producer.flush(drain);
    }

    /// Queues a dead letter, its payload cut to fit (headers `evalstream.source.size` and, when
    /// cut, `evalstream.dead_letter.truncated: true` say so). A record the producer refuses is
    /// tried again, smaller when it was too large.
    fn write(&self, mut letter: DeadLetterJob) {
        let fits = self
            .max_record_bytes
            .saturating_sub(letter.key.as_ref().map_or(0, Vec::len))
            .saturating_sub(letter.headers_size() + RECORD_MARGIN);
        let max_payload = *letter.max_payload.get_or_insert(fits);
        let payload = letter.payload.clone();
        let sent = &payload[..payload.len().min(max_payload)];
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
        let mut record = BaseRecord::with_opaque_to(&self.topic, Box::new(letter))
            .payload(sent)
            .headers(headers);
        if let Some(key) = &key {
            record = record.key(&key[..]);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, r)) => {
                    self.producer.context().failed(*r.delivery_opaque, &e);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::ack::{Origin, Rejection, Status};

    struct Nothing;
    impl Origin for Nothing {
        fn finished(&self, _: Status) {}
        fn rejected(&self, _: Token, _: Rejection) {}
    }

    #[test]
    fn dead_letters_back_off_to_a_minute() {
        let mut letter = DeadLetterJob::new(
            Token::new(Nothing),
            "decode",
            None,
            Arc::from(&b""[..]),
            Vec::new(),
        );
        letter.attempts = 1;
        assert_eq!(letter.delay(), Duration::from_secs(1));
        letter.attempts = 3;
        assert_eq!(letter.delay(), Duration::from_secs(4));
        letter.attempts = 40;
        assert_eq!(letter.delay(), MAX_RETRY_DELAY);
    }
}
