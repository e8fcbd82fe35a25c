//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export` on tonic, and with
//! `logs: true` `opentelemetry.proto.collector.logs.v1.LogsService/Export`, answered alike.
//!
//! tonic enforces `max_recv_msg_size_mib`, after decompression too (a gzip bomb stops at the
//! limit). A message over it must be answered with a code OTLP clients do not retry: tonic says
//! `RESOURCE_EXHAUSTED` without `RetryInfo` when decompressing, but `OUT_OF_RANGE` (retryable)
//! for a plain message, so [`Answers`], which every answer passes, turns the latter into the
//! former, as the collector (grpc-go) answers; it also counts each answer, tonic's refusals before
//! the handler runs included. tonic decodes the message on the connection's task: at the default
//! 4 MiB that is a few milliseconds at most.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_types::StatusExt as _;
use tracing::{debug, warn};

use super::{Counted, Error, Intake, Outcome, Request, Stop};
use crate::config::otlp_receiver::GrpcConfig;

/// The `TraceService` implementation: decoded requests go to the intake.
struct Receiver {
    intake: Arc<dyn Intake>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        // The message as received (after decompression); tonic does not tell its length.
        let bytes = request.encoded_len();
        let taken = super::export("grpc", &*self.intake, Request::Traces(request), bytes)
            .await
            .map_err(|failure| failure.to_status())?;
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: (taken.rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: taken.rejected,
                error_message: taken.message,
            }),
        }))
    }
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let bytes = request.encoded_len();
        let taken = super::export("grpc", &*self.intake, Request::Logs(request), bytes)
            .await
            .map_err(|failure| failure.to_status())?;
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: (taken.rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: taken.rejected,
                error_message: taken.message,
            }),
        }))
    }
}

/// The `TraceServiceServer` every answer passes through: an answer to a message over the size
/// limit is made final (tonic's `OUT_OF_RANGE`, which only its decoder returns here, becomes
/// `RESOURCE_EXHAUSTED` without `RetryInfo`, naming the setting), and each answer is counted.
#[derive(Clone)]
struct Answers<S> {
    inner: S,
    max_recv_msg_size_mib: u64,
    counted: Counted,
}

impl<S: NamedService> NamedService for Answers<S> {
    const NAME: &'static str = S::NAME;
}

/// The outcome an error status tells.
fn outcome(status: &tonic::Status) -> Outcome {
    match status.code() {
        // With `RetryInfo`, the pipeline was full; without, the message was too large.
        tonic::Code::ResourceExhausted if status.get_details_retry_info().is_some() => {
            Outcome::Busy
        }
        tonic::Code::Unavailable => Outcome::Unavailable,
        // The handler never answers INTERNAL: tonic does, for a message that does not decode.
        tonic::Code::InvalidArgument
        | tonic::Code::ResourceExhausted
        | tonic::Code::OutOfRange
        | tonic::Code::Unimplemented
        | tonic::Code::Internal => Outcome::Invalid,
        _ => Outcome::Error,
    }
}

type Body = tonic::body::Body;

impl<S> Service<http::Request<Body>> for Answers<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mib = self.max_recv_msg_size_mib;
        let counted = self.counted.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            // A failure of a unary call is a trailers-only response, the handler's as well as
            // tonic's before it: the status is in the headers. A success has no `grpc-status`
            // header (its status comes in the trailers).
            match tonic::Status::from_header_map(response.headers()) {
                Some(status) if status.code() == tonic::Code::OutOfRange => {
                    debug!(
                        max_recv_msg_size_mib = mib,
                        "otlp grpc export refused: message too large"
                    );
                    counted.count(Outcome::Invalid);
                    Ok(tonic::Status::resource_exhausted(format!(
                        "request message larger than max_recv_msg_size_mib ({mib} MiB)"
                    ))
                    .into_http())
                }
                Some(status) => {
                    counted.count(outcome(&status));
                    Ok(response)
                }
                None => {
                    counted.count(Outcome::Accepted);
                    Ok(response)
                }
            }
        })
    }
}

/// Serves `TraceService` (and `LogsService` when `logs`) on `listener` until `stop`, then lets
/// open calls finish for at most [`super::SHUTDOWN_GRACE`].
pub(super) async fn run(
    listener: TcpListener,
    config: GrpcConfig,
    logs: bool,
    intake: Arc<dyn Intake>,
    counted: Counted,
    stop: Stop,
) -> Result<(), Error> {
    let receiver = Arc::new(Receiver { intake });
    let traces = Answers {
        inner: TraceServiceServer::from_arc(receiver.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(config.max_recv_msg_bytes()),
        max_recv_msg_size_mib: config.max_recv_msg_size_mib,
        counted: counted.clone(),
    };
    let logs = logs.then(|| Answers {
        inner: LogsServiceServer::from_arc(receiver)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(config.max_recv_msg_bytes()),
        max_recv_msg_size_mib: config.max_recv_msg_size_mib,
        counted,
    });
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = Server::builder()
        .add_service(traces)
        .add_optional_service(logs)
        .serve_with_incoming_shutdown(incoming, stop.clone().requested());
    tokio::select! {
        ended = server => ended.map_err(|e| Error::Serve {
            protocol: "grpc",
            message: e.to_string(),
        }),
        () = stop.grace_over() => {
            warn!("otlp grpc receiver: calls still open after the shutdown grace are left");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use tonic::Code;
    use tonic::transport::Channel;
    use tonic_types::StatusExt as _;

    use super::super::testing::{Behaviour, TestIntake, accepted, config, counts, request};
    use super::super::{Answer, Servers, serve};
    use super::*;

    /// A gRPC-only receiver with `intake`, and a client connected to it.
    async fn start(
        intake: Arc<TestIntake>,
        max_recv_msg_size_mib: u64,
    ) -> (Servers, TraceServiceClient<Channel>) {
        let mut c = config();
        c.protocols.http = None;
        c.protocols.grpc.as_mut().unwrap().max_recv_msg_size_mib = max_recv_msg_size_mib;
        let servers = serve(&c, intake, counts(), std::future::pending())
            .await
            .unwrap();
        let address = servers.grpc_address().unwrap();
        let client = TraceServiceClient::connect(format!("http://{address}"))
            .await
            .unwrap();
        (servers, client)
    }

    #[tokio::test]
    async fn an_export_reaches_the_intake_and_partial_success_comes_back() {
        let (intake, _held) = TestIntake::new(Behaviour::Answer(accepted()));
        let (_servers, mut client) = start(intake.clone(), 4).await;
        let response = client.export(request(3)).await.unwrap().into_inner();
        assert_eq!(
            response.partial_success, None,
            "full success leaves it unset"
        );
        let taken = intake.requests();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, request(3));
        assert_eq!(taken[0].1, request(3).encoded_len());

        intake.set(Behaviour::Answer(Answer::Accepted {
            rejected_spans: 2,
            message: "2 spans without a model".into(),
        }));
        let partial = client
            .export(request(3))
            .await
            .unwrap()
            .into_inner()
            .partial_success
            .unwrap();
        assert_eq!(partial.rejected_spans, 2);
        assert_eq!(partial.error_message, "2 spans without a model");
    }

    #[tokio::test]
    async fn an_empty_export_succeeds_without_reaching_the_intake() {
        let (intake, _held) = TestIntake::new(Behaviour::Busy(Duration::from_secs(1)));
        let (_servers, mut client) = start(intake.clone(), 4).await;
        let response = client.export(request(0)).await.unwrap().into_inner();
        assert_eq!(response.partial_success, None);
        assert!(intake.requests().is_empty());
    }

    #[tokio::test]
    async fn a_full_pipeline_answers_resource_exhausted_with_a_retry_delay() {
        let (intake, _held) = TestIntake::new(Behaviour::Busy(Duration::from_millis(1500)));
        let (_servers, mut client) = start(intake.clone(), 4).await;
        let status = client.export(request(1)).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("pipeline full"), "{status:?}");
        let retry = status.get_details_retry_info().expect("a RetryInfo detail");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(1500)));
        assert!(intake.requests().is_empty(), "a busy intake takes nothing");
    }

    #[tokio::test]
    async fn invalid_unavailable_and_unanswered_map_to_their_codes() {
        let (intake, _held) = TestIntake::new(Behaviour::Answer(Answer::Invalid {
            message: "span 0: no trace id".into(),
        }));
        let (_servers, mut client) = start(intake.clone(), 4).await;
        let status = client.export(request(1)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "span 0: no trace id");
        assert!(status.get_details_retry_info().is_none());

        intake.set(Behaviour::Answer(Answer::Unavailable {
            message: "exporter down".into(),
            retry_after: Some(Duration::from_secs(5)),
        }));
        let status = client.export(request(1)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.get_details_retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(5))
        );

        intake.set(Behaviour::Drop);
        let status = client.export(request(1)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("without an answer"), "{status:?}");
        assert!(status.get_details_retry_info().is_none());
    }

    #[tokio::test]
    async fn a_gzip_compressed_export_is_accepted() {
        let (intake, _held) = TestIntake::new(Behaviour::Answer(accepted()));
        let (_servers, client) = start(intake.clone(), 4).await;
        let mut client = client
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
        client.export(request(50)).await.unwrap();
        assert_eq!(intake.requests()[0].0, request(50));
    }

    #[tokio::test]
    async fn a_message_over_max_recv_msg_size_is_refused() {
        let (intake, _held) = TestIntake::new(Behaviour::Answer(accepted()));
        let (_servers, client) = start(intake.clone(), 1).await;
        let mut big = request(1);
        big.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(2 << 20);
        let mut plain = client.clone();
        let status = plain.export(big.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(
            status.message(),
            "request message larger than max_recv_msg_size_mib (1 MiB)"
        );
        assert!(
            status.get_details_retry_info().is_none(),
            "without RetryInfo the client does not retry"
        );
        // Compressed, it is small on the wire; the limit applies to its decompressed size.
        let mut compressed = client.send_compressed(CompressionEncoding::Gzip);
        let status = compressed.export(big).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("size limit"), "{status:?}");
        assert!(intake.requests().is_empty());
        // The connection is still good.
        plain.export(request(1)).await.unwrap();
    }
}
