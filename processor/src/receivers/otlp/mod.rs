//! The OTLP trace receiver's network half: an OTLP/gRPC listener (`TraceService/Export`, in
//! `grpc.rs`) and an OTLP/HTTP one (`POST /v1/traces`, protobuf or JSON, in `http.rs`); with
//! `logs: true`, logs too (`LogsService/Export`, `POST /v1/logs`), whose GenAI content events the
//! pipeline joins to their spans. Both decode a request, hand it to an [`Intake`] (the pipeline,
//! implemented elsewhere) and tell the client how it ended, the same way for either signal. Start
//! them with [`serve`].
//!
//! **Acknowledgement, not receipt.** [`Intake::submit`] either refuses at once ([`Busy`]) or
//! returns a oneshot the pipeline answers once the request's evaluations are delivered (or at
//! once, if it is configured to answer early). The client's response waits for that answer, as a
//! collector's receiver waits for its pipeline: a client that retries on failure then loses
//! nothing. A client that goes away does not cancel its request; only the answer is lost.
//!
//! **Answers, as the OTLP specification maps them** (gRPC code / HTTP status):
//!
//! | outcome | gRPC | HTTP | client |
//! |---|---|---|---|
//! | [`Answer::Accepted`] | OK, `partial_success` when spans were rejected | 200 | done |
//! | [`Busy`] | `RESOURCE_EXHAUSTED` + `RetryInfo` | 429 + `Retry-After` | retries after the delay |
//! | [`Answer::Unavailable`] | `UNAVAILABLE` (+ `RetryInfo`) | 503 (+ `Retry-After`) | retries |
//! | [`Answer::Invalid`], undecodable | `INVALID_ARGUMENT` | 400 | drops the data |
//!
//! `RESOURCE_EXHAUSTED` always carries `RetryInfo`: without it OTLP clients must not retry. A
//! request without spans succeeds without reaching the pipeline, as the specification
//! recommends and the collector does.
//!
//! **Counted.** Every answer to an export request (`POST /v1/traces`, `TraceService/Export`, and
//! their logs counterparts), a refusal before decoding included, is counted in `evalstream_otlp_requests_total` by protocol
//! and [`Outcome`].
//!
//! **Shutdown.** When the shutdown future completes, both listeners close (new connections are
//! refused) and requests already in flight run to their answer, for at most [`SHUTDOWN_GRACE`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prometheus::IntCounterVec;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tonic_types::{ErrorDetails, StatusExt as _};
use tracing::{debug, info, warn};

use crate::config::otlp_receiver::OtlpReceiverConfig;

mod grpc;
mod http;
pub mod intake;

/// What the receiver hands requests to: the pipeline. Implemented elsewhere.
///
/// `submit` is called on the async runtime, once per request: it must not block.
pub trait Intake: Send + Sync + 'static {
    /// Takes one decoded request of `bytes` encoded bytes. `Err(Busy)` when the pipeline's
    /// in-flight limits are reached (nothing was taken). Otherwise the answer arrives on the
    /// receiver once every span's evaluations were accepted by the exporters (or at once when
    /// configured to answer early).
    ///
    /// `bytes` is the request's size as received, after decompression: the protobuf message
    /// (gRPC, HTTP protobuf) or the JSON text (HTTP JSON). Requests without spans (or log
    /// records) never arrive.
    fn submit(&self, request: Request, bytes: usize) -> Result<oneshot::Receiver<Answer>, Busy>;
}

/// A decoded export request, of either signal the receiver takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `TraceService/Export`, `POST /v1/traces`.
    Traces(ExportTraceServiceRequest),
    /// `LogsService/Export`, `POST /v1/logs` (with `logs: true`).
    Logs(ExportLogsServiceRequest),
}

impl Request {
    /// Its spans or log records, without reading them.
    fn items(&self) -> usize {
        match self {
            Request::Traces(r) => evalstream_evaluators::otlp::span_count(r),
            Request::Logs(r) => r
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len())
                .sum(),
        }
    }
}

/// A request taken: `rejected` of its items (spans or log records) were refused, for
/// `message`; 0 is a full success (the response's `partial_success` left unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Taken {
    rejected: i64,
    message: String,
}

/// The pipeline is full; retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    /// How long the client should wait before retrying (`RetryInfo`, `Retry-After`).
    pub retry_after: Duration,
}

/// How a taken request ended. A oneshot sender dropped without an answer counts as
/// [`Answer::Unavailable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Accepted; `rejected_spans` spans (with `message`) were refused, reported as OTLP partial success.
    Accepted {
        /// Spans refused; 0: a full success (`partial_success` left unset).
        rejected_spans: i64,
        /// Why they were refused, in English, for the client's log.
        message: String,
    },
    /// Not processed, for a reason the client should not retry (e.g. the request was invalid).
    Invalid {
        /// What was wrong.
        message: String,
    },
    /// Not processed, for a reason the client may retry (e.g. an exporter failed, shutting down).
    Unavailable {
        /// What went wrong.
        message: String,
        /// When to retry, if known.
        retry_after: Option<Duration>,
    },
}

/// Why the receiver could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid (the message starts with the key's path).
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("otlp {protocol} receiver: cannot listen on {endpoint}: {source}")]
    Bind {
        /// `grpc` or `http`.
        protocol: &'static str,
        /// The configured endpoint.
        endpoint: String,
        /// Why (address in use, no permission, unknown host).
        source: std::io::Error,
    },
    /// A server stopped on an error.
    #[error("otlp {protocol} receiver: {message}")]
    Serve {
        /// `grpc` or `http`.
        protocol: &'static str,
        /// What happened.
        message: String,
    },
}

/// How long in-flight requests may take to get their answer once shutdown has begun; past it the
/// servers return, leaving them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The running listeners.
#[derive(Debug)]
pub struct Servers {
    /// The gRPC listener's bound address, when on.
    grpc: Option<SocketAddr>,
    /// The HTTP listener's bound address, when on.
    http: Option<SocketAddr>,
    /// Each server's end, as it happens.
    ended: mpsc::Receiver<Result<(), Error>>,
    /// How many servers were started.
    started: usize,
}

impl Servers {
    /// The address the gRPC listener is bound to (with the actual port when `:0` was asked).
    pub fn grpc_address(&self) -> Option<SocketAddr> {
        self.grpc
    }

    /// The address the HTTP listener is bound to.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http
    }

    /// Waits until every server has returned (after the shutdown future completed and their
    /// in-flight requests finished), or until one of them fails: the first error is returned at
    /// once, and the others keep serving until shutdown. Dropping `Servers` does not stop them.
    pub async fn wait(mut self) -> Result<(), Error> {
        for _ in 0..self.started {
            match self.ended.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(())
    }
}

/// Starts the OTLP receiver of `run`: requests go to the workers' queue `work` within the
/// configured in-flight limits, until `shutdown` completes; answers are counted in `requests`
/// (`evalstream_otlp_requests_total`).
pub async fn start(
    config: &OtlpReceiverConfig,
    work: crossbeam_channel::Sender<Vec<crate::pipeline::worker::Input>>,
    requests: IntCounterVec,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, Error> {
    let admission = crate::pipeline::admission::Admission::new(
        config.max_in_flight_requests,
        config.max_in_flight_bytes,
    );
    let intake = Arc::new(intake::PipelineIntake::new(
        work,
        admission,
        config.answer == crate::config::otlp_receiver::AnswerWhen::OnReceipt,
        config.forward,
    ));
    let servers = serve(config, intake.clone(), requests, shutdown).await?;
    info!(grpc = ?servers.grpc_address(), http = ?servers.http_address(), "receiving OTLP");
    Ok(Running { servers, intake })
}

/// The OTLP receiver of `run`, started.
pub struct Running {
    servers: Servers,
    intake: Arc<intake::PipelineIntake>,
}

impl Running {
    /// Waits for the servers to end (after the shutdown future given to [`start`] completed),
    /// then lets go of the workers' queue.
    pub async fn stopped(self) -> Result<(), Error> {
        let result = self.servers.wait().await;
        self.intake.close();
        result
    }
}

/// Binds the configured listeners and serves them until `shutdown` completes, counting answers
/// in `requests` (labels `protocol`, `outcome`). Bind errors are returned here, with the
/// address; once this returns, both listeners accept connections.
pub async fn serve(
    config: &OtlpReceiverConfig,
    intake: Arc<dyn Intake>,
    requests: IntCounterVec,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Servers, Error> {
    config.validate().map_err(Error::Config)?;
    let grpc = match &config.protocols.grpc {
        Some(c) => Some((bind("grpc", &c.endpoint).await?, c.clone())),
        None => None,
    };
    let http = match &config.protocols.http {
        Some(c) => Some((bind("http", &c.endpoint).await?, c.clone())),
        None => None,
    };
    let (stop, stopping) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        debug!("otlp receiver: shutting down");
        let _ = stop.send(true);
    });
    let (end, ended) = mpsc::channel(2);
    let mut servers = Servers {
        grpc: None,
        http: None,
        ended,
        started: 0,
    };
    if let Some((listener, c)) = grpc {
        servers.grpc = Some(local_address("grpc", &c.endpoint, &listener)?);
        let counted = Counted::new("grpc", &requests);
        let server = grpc::run(
            listener,
            c,
            config.logs,
            intake.clone(),
            counted,
            Stop(stopping.clone()),
        );
        supervise("grpc", server, end.clone());
        servers.started += 1;
    }
    if let Some((listener, c)) = http {
        servers.http = Some(local_address("http", &c.endpoint, &listener)?);
        let counted = Counted::new("http", &requests);
        let server = http::run(listener, c, config.logs, intake, counted, Stop(stopping));
        supervise("http", server, end);
        servers.started += 1;
    }
    info!(grpc = ?servers.grpc, http = ?servers.http, "otlp receiver listening");
    Ok(servers)
}

async fn bind(protocol: &'static str, endpoint: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(endpoint).await.map_err(|source| {
        warn!(protocol, endpoint, error = %source, "otlp receiver: cannot listen");
        Error::Bind {
            protocol,
            endpoint: endpoint.to_owned(),
            source,
        }
    })
}

fn local_address(
    protocol: &'static str,
    endpoint: &str,
    listener: &TcpListener,
) -> Result<SocketAddr, Error> {
    listener.local_addr().map_err(|source| Error::Bind {
        protocol,
        endpoint: endpoint.to_owned(),
        source,
    })
}

/// Runs a server on its own task and reports its end, a panic included, on `end`.
fn supervise(
    protocol: &'static str,
    server: impl Future<Output = Result<(), Error>> + Send + 'static,
    end: mpsc::Sender<Result<(), Error>>,
) {
    let task = tokio::spawn(server);
    tokio::spawn(async move {
        let ended = task.await.unwrap_or_else(|e| {
            Err(Error::Serve {
                protocol,
                message: if e.is_panic() {
                    format!(
                        "panicked: {}",
                        crate::pipeline::evaluate::panic_message(e.into_panic().as_ref())
                    )
                } else {
                    "cancelled".into()
                },
            })
        });
        if let Err(e) = &ended {
            warn!(protocol, error = %e, "otlp receiver stopped");
        }
        let _ = end.send(ended).await;
    });
}

/// The shutdown signal, shared by both servers.
#[derive(Debug, Clone)]
struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Completes once shutdown has begun (or its sender is gone, which only happens after).
    async fn requested(mut self) {
        let _ = self.0.wait_for(|&stop| stop).await;
    }

    /// Completes [`SHUTDOWN_GRACE`] after shutdown has begun.
    async fn grace_over(self) {
        self.requested().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    }
}

/// How an export request was answered: the `outcome` label of `evalstream_otlp_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// OK / 200, partial success included.
    Accepted,
    /// The pipeline was full: `RESOURCE_EXHAUSTED` with `RetryInfo` / 429; the client retries.
    Busy,
    /// `UNAVAILABLE` / 503: not processed, the client retries.
    Unavailable,
    /// Refused for good: undecodable, too large, another content type or method.
    Invalid,
    /// Anything else (an internal failure).
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Busy => "busy",
            Outcome::Unavailable => "unavailable",
            Outcome::Invalid => "invalid",
            Outcome::Error => "error",
        }
    }
}

/// One protocol's answer counters, resolved once.
#[derive(Clone)]
struct Counted {
    /// Indexed as the [`Outcome`] variants are declared.
    outcomes: [prometheus::IntCounter; 5],
}

impl Counted {
    fn new(protocol: &'static str, requests: &IntCounterVec) -> Counted {
        let outcomes = [
            Outcome::Accepted,
            Outcome::Busy,
            Outcome::Unavailable,
            Outcome::Invalid,
            Outcome::Error,
        ]
        .map(|o| requests.with_label_values(&[protocol, o.label()]));
        Counted { outcomes }
    }

    fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].inc();
    }
}

/// Why an export was not taken, told the same way by both transports: the gRPC code (which
/// OTLP/HTTP maps to its status code), a message, and when to retry.
#[derive(Debug, Clone, PartialEq)]
struct Failure {
    /// The gRPC status code.
    code: tonic::Code,
    /// What went wrong, lowercase, never quoting the input.
    message: String,
    /// When to retry: a `RetryInfo` detail, a `Retry-After` header.
    retry_after: Option<Duration>,
}

impl Failure {
    fn new(code: tonic::Code, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The gRPC status, with a `google.rpc.RetryInfo` detail when a delay is known. Its
    /// `details()` are the encoded `google.rpc.Status` (code, message, details), which is also
    /// the body OTLP/HTTP sends for a failure.
    fn to_status(&self) -> tonic::Status {
        let details = match self.retry_after {
            Some(delay) => ErrorDetails::with_retry_info(Some(delay)),
            None => ErrorDetails::new(),
        };
        tonic::Status::with_error_details(self.code, &self.message, details)
    }
}

/// Hands a decoded request to the intake and waits for its answer.
async fn export(
    protocol: &'static str,
    intake: &dyn Intake,
    request: Request,
    bytes: usize,
) -> Result<Taken, Failure> {
    let spans = request.items();
    if spans == 0 {
        debug!(
            protocol,
            bytes, "otlp export without spans or log records: accepted"
        );
        return Ok(Taken::default());
    }
    let answer = match intake.submit(request, bytes) {
        Ok(answer) => answer.await.unwrap_or_else(|_| Answer::Unavailable {
            message: "the pipeline dropped the request without an answer".into(),
            retry_after: None,
        }),
        Err(Busy { retry_after }) => {
            debug!(
                protocol,
                spans,
                bytes,
                ?retry_after,
                "otlp export refused: pipeline full"
            );
            return Err(Failure {
                code: tonic::Code::ResourceExhausted,
                message: format!("pipeline full: retry after {} ms", retry_after.as_millis()),
                retry_after: Some(retry_after),
            });
        }
    };
    debug!(protocol, spans, bytes, ?answer, "otlp export answered");
    match answer {
        Answer::Accepted {
            rejected_spans,
            message,
        } => Ok(Taken {
            rejected: rejected_spans,
            message,
        }),
        Answer::Invalid { message } => Err(Failure::new(tonic::Code::InvalidArgument, message)),
        Answer::Unavailable {
            message,
            retry_after,
        } => Err(Failure {
            code: tonic::Code::Unavailable,
            message,
            retry_after,
        }),
    }
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::testing::{Behaviour, TestIntake, accepted, config, counts, request};
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

    /// Stopping lets the requests in flight on both listeners finish with their answer, closes
    /// the listeners, and `wait` returns.
    #[tokio::test]
    async fn serve_returns_after_shutdown_once_in_flight_requests_finish() {
        let (intake, mut held) = TestIntake::new(Behaviour::Hold);
        let (stop, stopped) = oneshot::channel::<()>();
        let servers = serve(&config(), intake.clone(), counts(), async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        let (grpc, http) = (
            servers.grpc_address().unwrap(),
            servers.http_address().unwrap(),
        );
        let grpc_call = tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
                .await
                .unwrap();
            client.export(request(2)).await
        });
        let http_call = tokio::spawn(
            reqwest::Client::new()
                .post(format!("http://{http}/v1/traces"))
                .header("content-type", "application/x-protobuf")
                .body(prost::Message::encode_to_vec(&request(3)))
                .send(),
        );
        let first = held.recv().await.unwrap();
        let second = held.recv().await.unwrap();
        stop.send(()).unwrap();
        let waiting = tokio::spawn(servers.wait());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "returned with requests in flight");
        // The listeners are closed: new clients are refused rather than left waiting.
        assert!(tokio::net::TcpStream::connect(http).await.is_err());
        assert!(tokio::net::TcpStream::connect(grpc).await.is_err());
        for answer in [first, second] {
            answer
                .send(Answer::Accepted {
                    rejected_spans: 0,
                    message: String::new(),
                })
                .unwrap();
        }
        let response = grpc_call.await.unwrap().unwrap().into_inner();
        assert_eq!(response.partial_success, None);
        assert_eq!(http_call.await.unwrap().unwrap().status(), 200);
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("serve did not return after shutdown")
            .unwrap()
            .unwrap();
        assert_eq!(intake.spans(), 5);
    }

    /// Each answer is counted once, by protocol and outcome: a full pipeline as `busy`, a body
    /// that is no request as `invalid`.
    #[tokio::test]
    async fn answers_are_counted_by_protocol_and_outcome() {
        let (intake, _held) = TestIntake::new(Behaviour::Busy(Duration::from_secs(1)));
        let requests = counts();
        let servers = serve(
            &config(),
            intake.clone(),
            requests.clone(),
            std::future::pending(),
        )
        .await
        .unwrap();
        let mut grpc =
            TraceServiceClient::connect(format!("http://{}", servers.grpc_address().unwrap()))
                .await
                .unwrap();
        let http = format!("http://{}/v1/traces", servers.http_address().unwrap());
        let post = |body: Vec<u8>| {
            reqwest::Client::new()
                .post(&http)
                .header("content-type", "application/x-protobuf")
                .body(body)
                .send()
        };
        assert!(grpc.export(request(1)).await.is_err());
        assert_eq!(
            post(prost::Message::encode_to_vec(&request(1)))
                .await
                .unwrap()
                .status(),
            429
        );
        intake.set(Behaviour::Answer(accepted()));
        for _ in 0..2 {
            grpc.export(request(1)).await.unwrap();
            let status = post(prost::Message::encode_to_vec(&request(1)))
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200);
        }
        assert_eq!(post(b"not protobuf".to_vec()).await.unwrap().status(), 400);
        let count =
            |protocol: &str, outcome: &str| requests.with_label_values(&[protocol, outcome]).get();
        assert_eq!(count("grpc", "busy"), 1);
        assert_eq!(count("grpc", "accepted"), 2);
        assert_eq!(count("http", "busy"), 1);
        assert_eq!(count("http", "accepted"), 2);
        assert_eq!(count("http", "invalid"), 1);
        assert_eq!(count("grpc", "invalid") + count("grpc", "unavailable"), 0);
    }

    #[tokio::test]
    async fn a_bind_error_is_returned_at_start_with_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let mut c = config();
        c.protocols.http.as_mut().unwrap().endpoint = address.clone();
        let (intake, _held) = TestIntake::new(Behaviour::Hold);
        let err = serve(&c, intake, counts(), std::future::pending())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("otlp http receiver: cannot listen on") && err.contains(&address),
            "{err}"
        );
        c.protocols.grpc = None;
        c.protocols.http = None;
        let (intake, _held) = TestIntake::new(Behaviour::Hold);
        let err = serve(&c, intake, counts(), std::future::pending())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("at least one"), "{err}");
    }
}
