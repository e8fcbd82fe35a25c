//! The OTLP exporter's transport: encoded export requests (logs or traces) sent to a backend over
//! gRPC ([`Protocol::Grpc`], the collector's `otlp`) or HTTP/protobuf ([`Protocol::HttpProtobuf`],
//! `otlphttp`), with a bounded queue, a bounded number of requests in flight, retries with
//! exponential backoff and an acknowledgement callback per request.
//!
//! The client knows nothing of the pipeline: it takes bytes of an `ExportLogsServiceRequest` or
//! `ExportTraceServiceRequest` (or, for the `phoenix` exporter, a JSON body of Phoenix span
//! annotations) and calls back once with the outcome.
//!
//! ```text
//! caller threads ── send (waits for room) / try_send ──▶ one task per request
//!                                       queued: waits for one of `num_consumers` permits
//!                                       in flight: attempt ─▶ retryable? backoff, attempt … ─▶ done(outcome)
//! ```
//!
//! Bounds, and why:
//! - Requests accepted and not finished: `queue_size + num_consumers` (`num_consumers` with the
//!   queue off). Past it [`OtlpClient::send`] blocks its (plain, non-async) thread: backpressure
//!   reaches the input and nothing is dropped, where the collector would drop.
//! - Requests in flight: `num_consumers` (the collector's default, 10): one slow backend call does
//!   not stall the queue, and a struggling backend sees at most that many requests at once. A
//!   request waiting between attempts keeps its place, as in the collector, so a backend that is
//!   down is not flooded by the queue behind it.
//! - Replies read: [`MAX_REPLY_BYTES`]; a server's asked delay honoured: [`MAX_SERVER_DELAY`].
//!
//! What is retried is what the OTLP specification calls retryable: HTTP 429, 502, 503, 504 and
//! gRPC `UNAVAILABLE`, `CANCELLED`, `DEADLINE_EXCEEDED`, `ABORTED`, `OUT_OF_RANGE`, `DATA_LOSS`,
//! and `RESOURCE_EXHAUSTED` when the status carries a `RetryInfo`; plus connection failures and
//! timeouts. A server's `Retry-After` or `RetryInfo` is a floor under the backoff.

pub mod exporter;
mod grpc;
mod http;
pub mod metrics;

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::config::otlp_exporter::{OtlpExporterConfig, RetryOnFailure};
use crate::pipeline::ack::{Rejection, Token};

/// Bytes of a reply read (a partial success, an error status): such replies are a few hundred
/// bytes, and a hostile backend must not make us allocate (the collector reads 64 KiB too).
pub const MAX_REPLY_BYTES: usize = 64 << 10;

/// The longest wait a server's `Retry-After` or `RetryInfo` can impose between two attempts;
/// longer asks wait this long (and give up if that passes `max_elapsed_time`). A value too large
/// to represent (`Retry-After: 1e20`) is the same.
pub const MAX_SERVER_DELAY: Duration = Duration::from_secs(60);

/// Characters of a backend's message kept in an error.
const MAX_MESSAGE_CHARS: usize = 300;

/// The start of a message from the backend, for an error.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// `evalstream/<version>`, the `User-Agent` of requests.
fn user_agent() -> String {
    format!("evalstream/{}", env!("CARGO_PKG_VERSION"))
}

/// What a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// An `ExportLogsServiceRequest` (evaluation results as log records).
    Logs,
    /// An `ExportTraceServiceRequest` (evaluator spans).
    Traces,
    /// Phoenix span annotations: a JSON `{"data": [...]}` body for `POST /v1/span_annotations`
    /// (the `phoenix` exporter), over HTTP only. Not OTLP, but the same delivery (queue,
    /// retries, acknowledgement) is what that exporter needs, so it rides this client.
    SpanAnnotations,
}

impl Signal {
    /// `logs`, `traces` or `span_annotations`, as in the HTTP paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Logs => "logs",
            Signal::Traces => "traces",
            Signal::SpanAnnotations => "span_annotations",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub use crate::config::otlp_exporter::Protocol;

/// The acknowledgement of one request, called exactly once, on a runtime worker thread: it must
/// be quick and must not block (hand the outcome to a channel or an atomic).
pub type Done = Box<dyn FnOnce(Result<Delivered, Failed>) + Send>;

/// One export request.
pub struct ExportRequest {
    /// What the body is.
    pub signal: Signal,
    /// The protobuf encoding of an `ExportLogsServiceRequest` or `ExportTraceServiceRequest`.
    pub body: Bytes,
    /// Called with the outcome.
    pub done: Done,
}

impl ExportRequest {
    /// A request whose outcome goes to `done`.
    pub fn new(
        signal: Signal,
        body: impl Into<Bytes>,
        done: impl FnOnce(Result<Delivered, Failed>) + Send + 'static,
    ) -> ExportRequest {
        ExportRequest {
            signal,
            body: body.into(),
            done: Box::new(done),
        }
    }
}

impl ExportRequest {
    /// A request of exporter `exporter` that holds `tokens` until the backend answered: let go
    /// when it accepted, rejected with the error when it refused for good or retries ran out,
    /// so the receiver answers or dead-letters the inputs.
    pub fn holding(
        signal: Signal,
        body: impl Into<Bytes>,
        exporter: &str,
        tokens: Vec<Token>,
    ) -> ExportRequest {
        let id = exporter.to_owned();
        ExportRequest::new(signal, body, move |outcome| {
            if let Err(failed) = outcome {
                tracing::warn!(exporter = %id, error = %failed, "evaluations not exported");
                for token in &tokens {
                    token.reject(Rejection {
                        error_type: "delivery",
                        message: format!("exporter {id}: {failed}"),
                        output: None,
                    });
                }
            }
            // Dropping the tokens lets the inputs go.
        })
    }
}

impl fmt::Debug for ExportRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportRequest")
            .field("signal", &self.signal)
            .field("bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// The backend accepted the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Attempts made, the successful one included.
    pub attempts: u32,
    /// What the backend rejected of it, when it said so.
    pub partial_success: Option<PartialSuccess>,
}

/// A `partial_success` in an export response: accepted, but not all of it (or with a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialSuccess {
    /// Log records or spans rejected (0 with a message is a warning).
    pub rejected: i64,
    /// The backend's explanation.
    pub message: String,
}

impl PartialSuccess {
    /// The `partial_success` field of a response, when it says anything.
    fn from_fields(rejected: i64, message: String) -> Option<PartialSuccess> {
        (rejected != 0 || !message.is_empty()).then_some(PartialSuccess { rejected, message })
    }
}

/// The request failed for good.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    /// Attempts made (0 when it never left the queue).
    pub attempts: u32,
    /// The last attempt's error.
    pub error: ExportError,
    /// Whether that error was retryable, so retries ran out (or are disabled).
    pub gave_up: bool,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.gave_up, self.attempts) {
            (true, 1) => write!(f, "{} (gave up after 1 attempt)", self.error),
            (true, n) => write!(f, "{} (gave up after {n} attempts)", self.error),
            (false, 0 | 1) => write!(f, "{}", self.error),
            (false, n) => write!(f, "{} (attempt {n})", self.error),
        }
    }
}

impl std::error::Error for Failed {}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExportError {
    /// An OTLP/HTTP error status.
    #[error("the backend answered http {status}: {message}")]
    Http {
        /// The status code.
        status: u16,
        /// The `google.rpc.Status` message of the body, or the start of the body.
        message: String,
    },
    /// A gRPC error status (connection failures are `Unavailable`, timeouts `Cancelled`).
    #[error("the backend answered grpc {code:?}: {message}")]
    Grpc {
        /// The status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed.
    #[error("cannot reach the backend: {0}")]
    Transport(String),
    /// The client's runtime stopped before the request was finished.
    #[error("the exporter stopped before the request was finished")]
    Stopped,
}

/// An attempt's failure, with what the retry loop needs.
#[derive(Debug)]
struct AttemptError {
    error: ExportError,
    retryable: bool,
    /// What the server asked to wait (`Retry-After`, `RetryInfo`).
    retry_after: Option<Duration>,
}

impl AttemptError {
    fn permanent(error: ExportError) -> AttemptError {
        AttemptError {
            error,
            retryable: false,
            retry_after: None,
        }
    }

    fn retryable(error: ExportError, retry_after: Option<Duration>) -> AttemptError {
        AttemptError {
            error,
            retryable: true,
            retry_after,
        }
    }
}

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is not usable (the message starts with the key).
    #[error("{0}")]
    Config(String),
    /// The HTTP or gRPC client could not be built.
    #[error("cannot build the client: {0}")]
    Client(String),
}

/// The client's counters at one moment, for the caller's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests the backend accepted (partial successes included).
    pub delivered: u64,
    /// Requests that failed for good.
    pub failed: u64,
    /// Attempts after a request's first.
    pub retries: u64,
    /// Log records and spans the backend rejected in partial successes.
    pub rejected_items: u64,
    /// Requests waiting for a consumer.
    pub queued: usize,
    /// Requests being sent (or waiting between attempts).
    pub in_flight: usize,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    rejected_items: AtomicU64,
    queued: AtomicUsize,
    in_flight: AtomicUsize,
}

/// The payload as sent: the body compressed (for HTTP, on the sending thread) or not.
#[derive(Debug, Clone)]
struct Payload {
    body: Bytes,
    gzip: bool,
}

enum Transport {
    Grpc(grpc::GrpcTransport),
    Http(http::HttpTransport),
}

impl Transport {
    fn prepare(&self, body: Bytes) -> Payload {
        match self {
            // tonic compresses gRPC messages itself.
            Transport::Grpc(_) => Payload { body, gzip: false },
            Transport::Http(h) => h.prepare(body),
        }
    }

    async fn attempt(
        &self,
        signal: Signal,
        payload: &Payload,
    ) -> Result<Option<PartialSuccess>, AttemptError> {
        match self {
            Transport::Grpc(g) => g.attempt(signal, &payload.body).await,
            Transport::Http(h) => h.attempt(signal, payload).await,
        }
    }
}

struct Shared {
    transport: Transport,
    runtime: Handle,
    retry: RetryOnFailure,
    /// Permits to be in flight: `num_consumers`.
    consumers: Semaphore,
    /// Requests accepted and not finished may not pass this.
    capacity: usize,
    /// Requests accepted and not finished (queued or in flight).
    pending: Mutex<usize>,
    /// Signalled whenever `pending` goes down.
    finished: Condvar,
    counters: Counters,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, usize> {
        // A callback that panicked cannot leave the count half-changed.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one request with retries.
    async fn export(&self, signal: Signal, payload: &Payload) -> Result<Delivered, Failed> {
        let attempts = AtomicU32::new(0);
        let started = Instant::now();
        let retry = &self.retry;
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_factor(retry.multiplier)
            .with_min_delay(retry.initial_interval)
            .with_max_delay(retry.max_interval);
        let backoff = match retry.enabled {
            true => backoff.without_max_times(),
            false => backoff.with_max_times(0),
        };
        let result = (|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.transport.attempt(signal, payload).await
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &AttemptError| e.retryable)
        .adjust(|e, next| {
            // The server's ask is a floor under the backoff; past max_elapsed_time, give up now
            // rather than sleep for nothing (the collector does the same).
            let wait = next?.max(e.retry_after.unwrap_or_default().min(MAX_SERVER_DELAY));
            let limit = retry.max_elapsed_time;
            (limit.is_zero() || started.elapsed() + wait <= limit).then_some(wait)
        })
        .notify(|e, wait| {
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%signal, error = %e.error, ?wait, "otlp export retrying");
        })
        .await;
        let attempts = attempts.load(Ordering::Relaxed);
        match result {
            Ok(partial_success) => Ok(Delivered {
                attempts,
                partial_success,
            }),
            Err(e) => Err(Failed {
                attempts,
                error: e.error,
                gave_up: e.retryable,
            }),
        }
    }
}

/// A request accepted and not finished: it holds its place in `pending` and its callback. Dropped
/// without an outcome (the runtime shut down), it reports [`ExportError::Stopped`], so every
/// callback runs exactly once and `pending` always comes back down.
struct Slot {
    shared: Arc<Shared>,
    done: Option<Done>,
    in_flight: bool,
}

impl Slot {
    fn start(&mut self) {
        self.in_flight = true;
        self.shared.counters.queued.fetch_sub(1, Ordering::Relaxed);
        self.shared
            .counters
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
    }

    fn finish(mut self, outcome: Result<Delivered, Failed>) {
        if let Some(done) = self.done.take() {
            done(outcome);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            self.shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            done(Err(Failed {
                attempts: 0,
                error: ExportError::Stopped,
                gave_up: false,
            }));
        }
        let counters = &self.shared.counters;
        match self.in_flight {
            true => counters.in_flight.fetch_sub(1, Ordering::Relaxed),
            false => counters.queued.fetch_sub(1, Ordering::Relaxed),
        };
        // After the callback: once `flush` sees nothing pending, every callback has run.
        *self.shared.pending() -= 1;
        self.shared.finished.notify_all();
    }
}

/// A client of one OTLP backend; cheap to clone (clones share the queue and the connections).
#[derive(Clone)]
pub struct OtlpClient {
    shared: Arc<Shared>,
}

impl fmt::Debug for OtlpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpClient")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl OtlpClient {
    /// Checks the configuration and builds the client; requests run as tasks on `runtime`. No
    /// connection is made until the first request.
    pub fn start(
        config: &OtlpExporterConfig,
        protocol: Protocol,
        runtime: &Handle,
    ) -> Result<OtlpClient, StartError> {
        config.validate(protocol).map_err(StartError::Config)?;
        let timeout = config.timeout.unwrap_or(protocol.default_timeout());
        let transport = match protocol {
            Protocol::Grpc => Transport::Grpc(grpc::GrpcTransport::new(config, timeout, runtime)?),
            Protocol::HttpProtobuf => Transport::Http(http::HttpTransport::new(config, timeout)?),
        };
        let queue = &config.sending_queue;
        let capacity = match queue.enabled {
            true => queue.queue_size + queue.num_consumers,
            false => queue.num_consumers,
        };
        Ok(OtlpClient {
            shared: Arc::new(Shared {
                transport,
                runtime: runtime.clone(),
                retry: config.retry_on_failure.clone(),
                consumers: Semaphore::new(queue.num_consumers),
                capacity,
                pending: Mutex::new(0),
                finished: Condvar::new(),
                counters: Counters::default(),
            }),
        })
    }

    /// Queues a request, waiting (blocking this thread) while the queue is full: backpressure,
    /// nothing is dropped. Call it from a plain thread, never from an async task (use
    /// [`OtlpClient::try_send`] there). With `otlphttp` and gzip, the body is compressed here,
    /// on the caller's thread rather than a runtime worker.
    pub fn send(&self, request: ExportRequest) {
        let mut pending = self.shared.pending();
        while *pending >= self.shared.capacity {
            pending = self
                .shared
                .finished
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *pending += 1;
        drop(pending);
        self.spawn(request);
    }

    /// Queues a request if there is room; gives it back when the queue is full.
    pub fn try_send(&self, request: ExportRequest) -> Result<(), ExportRequest> {
        let mut pending = self.shared.pending();
        if *pending >= self.shared.capacity {
            return Err(request);
        }
        *pending += 1;
        drop(pending);
        self.spawn(request);
        Ok(())
    }

    /// Waits up to `timeout` until every request accepted so far is finished (its callback run);
    /// false if some are not. Blocks this thread, like [`OtlpClient::send`].
    pub fn flush(&self, timeout: Duration) -> bool {
        let pending = self.shared.pending();
        let (pending, _) = self
            .shared
            .finished
            .wait_timeout_while(pending, timeout, |p| *p > 0)
            .unwrap_or_else(PoisonError::into_inner);
        *pending == 0
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            rejected_items: c.rejected_items.load(Ordering::Relaxed),
            queued: c.queued.load(Ordering::Relaxed),
            in_flight: c.in_flight.load(Ordering::Relaxed),
        }
    }

    /// Starts the task of a request whose place in `pending` is taken.
    fn spawn(&self, request: ExportRequest) {
        let ExportRequest { signal, body, done } = request;
        self.shared.counters.queued.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            shared: self.shared.clone(),
            done: Some(done),
            in_flight: false,
        };
        let payload = self.shared.transport.prepare(body);
        let shared = self.shared.clone();
        // One task per request, waiting for a consumer's permit: the queue is the tasks waiting
        // (the semaphore is fair, so they start in about the order they came).
        self.shared.runtime.spawn(async move {
            let mut slot = slot;
            let Ok(_permit) = shared.consumers.acquire().await else {
                return; // never closed; the slot reports `Stopped` if it were
            };
            slot.start();
            let outcome = shared.export(signal, &payload).await;
            let counters = &shared.counters;
            match &outcome {
                Ok(delivered) => {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some(p) = &delivered.partial_success {
                        counters
                            .rejected_items
                            .fetch_add(p.rejected.max(0) as u64, Ordering::Relaxed);
                        tracing::warn!(
                            %signal,
                            rejected = p.rejected,
                            message = %p.message,
                            "otlp export partially rejected"
                        );
                    }
                }
                Err(failed) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%signal, error = %failed, "otlp export failed");
                }
            }
            slot.finish(outcome);
        });
    }
}

#[cfg(test)]
mod test_support {
    //! What the transport tests share: a runtime, a config for a test server, a callback that
    //! hands the outcome back.

    use super::*;
    use crate::config::otlp_exporter::{Compression, SendingQueue};
    use std::collections::BTreeMap;
    use std::sync::mpsc;

    pub(super) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }

    pub(super) fn config(endpoint: &str) -> OtlpExporterConfig {
        OtlpExporterConfig {
            endpoint: endpoint.to_owned(),
            headers: BTreeMap::new(),
            compression: Compression::Gzip,
            timeout: Some(Duration::from_secs(5)),
            retry_on_failure: RetryOnFailure {
                enabled: true,
                initial_interval: Duration::from_millis(100),
                max_interval: Duration::from_millis(200),
                multiplier: 1.5,
                max_elapsed_time: Duration::from_secs(10),
            },
            sending_queue: SendingQueue {
                enabled: true,
                num_consumers: 2,
                queue_size: 10,
                batch: None,
            },
            output: vec![crate::config::Output::Events],
        }
    }

    pub(super) type Outcome = Result<Delivered, Failed>;

    /// A request whose outcome arrives on the returned receiver.
    pub(super) fn request(
        signal: Signal,
        body: Vec<u8>,
    ) -> (ExportRequest, mpsc::Receiver<Outcome>) {
        let (tx, rx) = mpsc::channel();
        let request = ExportRequest::new(signal, body, move |outcome| {
            let _ = tx.send(outcome);
        });
        (request, rx)
    }

    /// Sends one request and waits for its outcome.
    pub(super) fn export(client: &OtlpClient, signal: Signal, body: Vec<u8>) -> Outcome {
        let (request, rx) = request(signal, body);
        client.send(request);
        rx.recv_timeout(Duration::from_secs(30))
            .expect("an outcome")
    }
}
