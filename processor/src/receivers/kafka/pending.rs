//! The acknowledgement that lets an input offset be committed.
//!
//! Each input message gets a [`Pending`] that counts its outstanding outputs. It starts at one (a
//! guard the worker releases when it has sent everything), each produced record adds one, and
//! each delivery report subtracts one; at zero an [`Ack`] goes back to the consumer thread, which
//! then may commit past the message.
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

use crossbeam_channel::Sender;

use super::offsets::TopicPartition;

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
    /// Whether a failed output of this message was already handed to the dead-letter path.
    pub redirected: AtomicBool,
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

    /// One more output outstanding.
    pub fn add(&self) {
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
