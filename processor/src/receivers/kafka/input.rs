//! A Kafka message as the pipeline sees it: its bytes ([`Received`]) and the origin of its
//! acknowledgement token ([`KafkaInput`]), which tells the consumer thread when the message is
//! finished ([`Ack`]) so its offset may be committed, and turns rejections into dead letters.
//!
//! A rejected message (undecodable, or an output of it that an exporter gave up on) goes to the
//! dead-letter topic ([`super::dead_letter`]) and is acknowledged only once that topic has it. An
//! input that still has its bytes is dead-lettered itself, once, standing for every output made
//! from it; one that gave them up (a buffered trace keeps only the spans' fields) is represented
//! by the rejected output, with headers naming the input: the evaluations are kept and the input
//! is still in its topic at the offset named.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::Sender;

use super::dead_letter::DeadLetterJob;
use super::offsets::TopicPartition;
use crate::pipeline::ack::{Origin, Rejection, Status, Token};

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

/// The origin of a Kafka message's token.
pub struct KafkaInput {
    /// The message.
    pub source: Arc<Received>,
    acks: Sender<Ack>,
    dead_letters: Sender<DeadLetterJob>,
    /// Whether the message itself went to the dead-letter topic already.
    dead_lettered: AtomicBool,
    /// The message must not be acknowledged: a dead letter of it was never written, or it was
    /// let go before a worker saw it (a revoke, stopping). It stays uncommitted and is read
    /// again.
    stays_uncommitted: AtomicBool,
}

impl KafkaInput {
    /// The origin for `source`. `acks` and `dead_letters` should be unbounded: acknowledging and
    /// rejecting must never block an exporter's thread (librdkafka's delivery callbacks run on
    /// the producer's own thread); their lengths are bounded by the messages in flight.
    pub fn new(
        source: Arc<Received>,
        acks: Sender<Ack>,
        dead_letters: Sender<DeadLetterJob>,
    ) -> KafkaInput {
        KafkaInput {
            source,
            acks,
            dead_letters,
            dead_lettered: AtomicBool::new(false),
            stays_uncommitted: AtomicBool::new(false),
        }
    }

    /// The message must stay uncommitted (see the field of that name).
    pub fn keep_uncommitted(&self) {
        self.stays_uncommitted.store(true, Ordering::Release);
    }

    /// `topic/partition@offset`.
    pub fn describe(&self) -> String {
        let s = &self.source;
        format!("{}/{}@{}", s.tp.topic, s.tp.partition, s.offset)
    }
}

impl Origin for KafkaInput {
    fn finished(&self, _status: Status) {
        // A rejected message finishes after its dead letter was written: either way the offset
        // may now be committed, unless a dead letter of it was never written.
        if self.stays_uncommitted.load(Ordering::Acquire) {
            return;
        }
        // The consumer may be gone during shutdown; then nothing needs the ack.
        let _ = self.acks.send(Ack {
            tp: self.source.tp.clone(),
            offset: self.source.offset,
        });
    }

    fn rejected(&self, token: Token, rejection: Rejection) {
        let input = self.source.with_payload(|p| p.map(<[u8]>::to_vec));
        let job = match (input, rejection.output) {
            (Some(payload), _) => {
                if self.dead_lettered.swap(true, Ordering::AcqRel) {
                    // The message is in the dead-letter topic already, standing for this output too.
                    return;
                }
                DeadLetterJob::input(
                    token,
                    self,
                    payload,
                    rejection.error_type,
                    &rejection.message,
                )
            }
            (None, Some(output)) => DeadLetterJob::output(
                token,
                self,
                &output,
                rejection.error_type,
                &rejection.message,
            ),
            (None, None) => {
                // Rejected after giving up its bytes, with nothing to keep: say so with an empty
                // record, so the rejection is visible and the offset named.
                DeadLetterJob::input(
                    token,
                    self,
                    Vec::new(),
                    rejection.error_type,
                    &rejection.message,
                )
            }
        };
        tracing::warn!(reason = %rejection.error_type, input = %self.describe(),
            "sending to the dead-letter topic");
        if self.dead_letters.send(job).is_err() {
            // Only while stopping: the message stays uncommitted and is read again.
            self.keep_uncommitted();
        }
    }

    fn with_input(&self, f: &mut dyn FnMut(Option<&[u8]>)) {
        self.source.with_payload(f);
    }

    fn release(&self) {
        self.source.release_payload();
    }
}
