//! Acknowledgement tokens: how an input learns that everything made from it is safely out.
//!
//! A receiver makes one [`Token`] per input (a Kafka message, an OTLP request) with an [`Origin`]
//! that only it understands: the Kafka receiver's maps back to a partition offset, the OTLP
//! receiver's to the RPC waiting for its answer. Everything that still needs the input holds a
//! clone — the worker while it evaluates, each exporter until its backend accepted the output, a
//! buffered trace ([`Hold`]), a queued judge call — and when the last clone is dropped the origin
//! hears that the input is [`Status::Delivered`] (or [`Status::Rejected`], if anything rejected
//! it), and the receiver may commit the offset or answer the request.
//!
//! Completion by drop (as Vector's finalizers do) means no path can forget to acknowledge, and a
//! panic that unwinds past a holder still lets go of the input; counting is `Arc`'s.
//!
//! A rejection (an undecodable input, an output an exporter could not deliver for good) goes to
//! the origin at once with a clone of the token ([`Origin::rejected`]): the origin decides what
//! it means — the Kafka receiver writes a dead letter and lets the clone go once the dead-letter
//! topic has it; the OTLP receiver answers the client with an error — and the input is finished
//! only after that.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// What became of an input once every holder let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Every output made from it was accepted by its exporter.
    Delivered,
    /// Something rejected it (and the origin was told at the time, [`Origin::rejected`]).
    Rejected,
}

/// Why an input or one of its outputs was rejected.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// A short word for metrics and dead-letter headers: `decode`, `delivery`, `panic`.
    pub error_type: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// The output that could not be delivered, when the rejection is an exporter's.
    pub output: Option<Arc<RejectedOutput>>,
}

/// An output an exporter gave up on, kept so that it is not lost: a receiver that can store it
/// (the Kafka receiver's dead-letter topic) does.
#[derive(Debug)]
pub struct RejectedOutput {
    /// What it holds: `logs` (an `ExportLogsServiceRequest` of evaluation events) or `traces`
    /// (an `ExportTraceServiceRequest` of evaluator spans).
    pub signal: &'static str,
    /// The exporter's record key (the hex trace id).
    pub key: Option<Vec<u8>>,
    /// The encoded output.
    pub payload: Vec<u8>,
}

/// The receiver's side of a token. Implementations are the receivers' own; the pipeline and the
/// exporters see only this trait.
pub trait Origin: Any + Send + Sync {
    /// Every holder let go.
    fn finished(&self, status: Status);

    /// `rejection` happened; `token` keeps the input unfinished for as long as the origin holds
    /// it (until a dead letter is written, say). Called once per rejection.
    fn rejected(&self, token: Token, rejection: Rejection);

    /// Calls `f` with the input's encoded bytes when the origin keeps them (a Kafka message
    /// until [`Origin::release`]), else with `None`.
    fn with_input(&self, f: &mut dyn FnMut(Option<&[u8]>)) {
        f(None);
    }

    /// The input's bytes are no longer needed for evaluation (a buffered trace keeps what it
    /// reads): an origin that keeps them may free them.
    fn release(&self) {}
}

struct Inner {
    origin: Box<dyn Origin>,
    rejected: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let status = if self.rejected.load(Ordering::Acquire) {
            Status::Rejected
        } else {
            Status::Delivered
        };
        self.origin.finished(status);
    }
}

/// One input's acknowledgement: cloned by everything that still needs the input, finished when
/// the last clone is dropped. Knows nothing of the receiver that made it.
#[derive(Clone)]
pub struct Token(Arc<Inner>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("holders", &Arc::strong_count(&self.0))
            .field("rejected", &self.0.rejected.load(Ordering::Relaxed))
            .finish()
    }
}

impl Token {
    /// A token for an input from `origin`.
    pub fn new(origin: impl Origin) -> Token {
        Token(Arc::new(Inner {
            origin: Box::new(origin),
            rejected: AtomicBool::new(false),
        }))
    }

    /// Rejects the input (or one of its outputs): its origin is told now and may hold it a while.
    pub fn reject(&self, rejection: Rejection) {
        self.0.rejected.store(true, Ordering::Release);
        self.0.origin.rejected(self.clone(), rejection);
    }

    /// Whether anything rejected the input so far.
    pub fn is_rejected(&self) -> bool {
        self.0.rejected.load(Ordering::Acquire)
    }

    /// The origin, when it is an `O`: only the receiver that made the token knows its type.
    pub fn origin<O: Origin>(&self) -> Option<&O> {
        let origin: &dyn Any = self.0.origin.as_ref();
        origin.downcast_ref::<O>()
    }

    /// See [`Origin::with_input`].
    pub fn with_input<R>(&self, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        let mut f = Some(f);
        let mut result = None;
        self.0.origin.with_input(&mut |bytes| {
            if let Some(f) = f.take() {
                result = Some(f(bytes));
            }
        });
        match (result, f) {
            (Some(result), _) => result,
            // An origin that never called back: as if it kept nothing.
            (None, Some(f)) => f(None),
            (None, None) => unreachable!("the callback ran but left no result"),
        }
    }

    /// See [`Origin::release`].
    pub fn release_input(&self) {
        self.0.origin.release();
    }
}

/// A claim on an input that stays in flight only because it waits on something slow — a
/// buffered trace, a queued judge call — counted in a shared total, so that a receiver can tell
/// inputs that are being worked on (which its in-flight limits bound) from inputs merely held.
#[derive(Debug)]
pub struct Hold {
    token: Token,
    held: Arc<AtomicUsize>,
}

impl Hold {
    /// Holds `token`, counting into `held`.
    pub fn new(token: &Token, held: &Arc<AtomicUsize>) -> Hold {
        held.fetch_add(1, Ordering::AcqRel);
        Hold {
            token: token.clone(),
            held: held.clone(),
        }
    }

    /// The held input.
    pub fn token(&self) -> &Token {
        &self.token
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log {
        finished: Mutex<Vec<Status>>,
        rejections: Mutex<Vec<(&'static str, Token)>>,
    }

    struct Recorder(Arc<Log>);

    impl Origin for Recorder {
        fn finished(&self, status: Status) {
            self.0.finished.lock().unwrap().push(status);
        }
        fn rejected(&self, token: Token, rejection: Rejection) {
            self.0
                .rejections
                .lock()
                .unwrap()
                .push((rejection.error_type, token));
        }
    }

    #[test]
    fn an_input_finishes_when_its_last_holder_lets_go() {
        let log = Arc::new(Log::default());
        let token = Token::new(Recorder(log.clone()));
        let exporter = token.clone();
        let held = Arc::new(AtomicUsize::new(0));
        let hold = Hold::new(&token, &held);
        assert_eq!(held.load(Ordering::Acquire), 1);
        drop(token);
        drop(exporter);
        assert!(log.finished.lock().unwrap().is_empty(), "still held");
        drop(hold);
        assert_eq!(held.load(Ordering::Acquire), 0);
        assert_eq!(*log.finished.lock().unwrap(), [Status::Delivered]);
    }

    #[test]
    fn a_rejected_input_finishes_after_its_origin_lets_the_rejection_go() {
        let log = Arc::new(Log::default());
        let token = Token::new(Recorder(log.clone()));
        token.reject(Rejection {
            error_type: "decode",
            message: "bad bytes".into(),
            output: None,
        });
        assert!(token.is_rejected());
        drop(token);
        assert!(
            log.finished.lock().unwrap().is_empty(),
            "the origin holds it (writing a dead letter)"
        );
        let (kind, _held) = log.rejections.lock().unwrap().pop().unwrap();
        assert_eq!(kind, "decode");
        drop(_held);
        assert_eq!(*log.finished.lock().unwrap(), [Status::Rejected]);
    }

    #[test]
    fn only_the_receiver_that_made_a_token_can_look_inside() {
        struct Other;
        impl Origin for Other {
            fn finished(&self, _: Status) {}
            fn rejected(&self, _: Token, _: Rejection) {}
        }
        let token = Token::new(Recorder(Arc::default()));
        assert!(token.origin::<Recorder>().is_some());
        assert!(token.origin::<Other>().is_none());
        assert_eq!(token.with_input(|b| b.map(<[u8]>::len)), None);
    }
}
