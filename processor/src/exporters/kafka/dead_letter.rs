//! Dead letters: what cannot be evaluated (an undecodable input) or delivered (an output the
//! broker refuses for good) goes to the dead-letter topic with headers saying why and where from,
//! cut to fit the producer's `message.max.bytes`, and written until the topic acknowledges it;
//! only then are its inputs committed. The redirect thread ([`Sink::run_redirects`]) does the
//! producing, off the producer's own thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use evalstream_evaluators::text::prefix_bytes;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _};
use tracing::warn;

use crate::receivers::kafka::pending::Pending;
use super::sink::{Delivery, RECORD_MARGIN, Sink};

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
    pub(super) inputs: Vec<Arc<Pending>>,
    /// Its key.
    pub(super) key: Option<Vec<u8>>,
    /// Its payload (evaluator spans).
    pub(super) payload: Vec<u8>,
    /// Why it failed.
    pub(super) reason: String,
}

/// One record for the dead-letter topic, kept until the topic acknowledges it: its inputs stay
/// uncommitted until then, and a failed write is tried again (after a backoff, smaller when the
/// broker found it too large), so a record is never lost and never blocks its partition for
/// good.
#[derive(Debug)]
pub struct DeadLetter {
    /// The inputs it stands for; acknowledged when it is written.
    pub(super) inputs: Vec<Arc<Pending>>,
    /// `decode` or `delivery`, for the metric and `evalstream.error.type`.
    pub(super) reason: &'static str,
    pub(super) key: Option<Vec<u8>>,
    /// The whole record as it came (an input, or a failed output); cut to fit when sent.
    pub(super) payload: Arc<[u8]>,
    /// Headers besides the size and truncation headers added when sent.
    pub(super) headers: Vec<(&'static str, String)>,
    /// Most payload bytes to send; lowered when the broker refuses the record as too large.
    pub(super) max_payload: usize,
    /// Failed writes so far.
    pub(super) attempts: u32,
}

/// Longest header value and key a dead letter carries: error messages and offsets lists are
/// short, a hostile key need not be.
const MAX_HEADER_VALUE: usize = 1024;
const MAX_DEAD_LETTER_KEY: usize = 1024;

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
    pub(super) fn delay(&self) -> Duration {
        let exponent = self.attempts.saturating_sub(1).min(6);
        Duration::from_secs(1 << exponent).min(MAX_RETRY_DELAY)
    }
}

impl Sink {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
