//! OTLP/gRPC: one unary `Export` call per attempt, over one lazily connected HTTP/2 channel that
//! every request shares (tonic multiplexes them and reconnects after failures).
//!
//! The request body is already encoded protobuf, so a codec of our own writes those bytes as the
//! message instead of the generated clients' prost codec, which would make us decode every request
//! back into its message type only for tonic to encode it again: twice the CPU and a copy of
//! every span or log record for nothing. Only the small response is decoded.

use std::marker::PhantomData;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

use super::{
    AttemptError, ExportError, MAX_REPLY_BYTES, PartialSuccess, Signal, StartError, excerpt,
    user_agent,
};
use crate::config::otlp_exporter::{Compression, OtlpExporterConfig};

/// The OTLP services' `Export` methods.
const LOGS_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
const TRACES_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The gRPC side of the client.
pub(super) struct GrpcTransport {
    channel: Channel,
    /// The configured headers, sent with every call.
    metadata: MetadataMap,
    gzip: bool,
}

impl GrpcTransport {
    /// A channel to `config.endpoint`, connected on first use; each call times out after
    /// `timeout`. Must run where `runtime` can spawn (the channel's worker is a task).
    pub(super) fn new(
        config: &OtlpExporterConfig,
        timeout: Duration,
        runtime: &tokio::runtime::Handle,
    ) -> Result<GrpcTransport, StartError> {
        let mut metadata = MetadataMap::new();
        for (name, value) in &config.headers {
            // HTTP/2 header names are lowercase.
            let key = AsciiMetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(
                |_| StartError::Config(format!("headers: `{name}` is not a metadata key")),
            )?;
            let mut value = AsciiMetadataValue::try_from(value.expose()).map_err(|_| {
                StartError::Config(format!("headers: the value of `{name}` is not valid"))
            })?;
            value.set_sensitive(true);
            metadata.insert(key, value);
        }
        let endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| StartError::Config(format!("endpoint: {e}")))?
            .user_agent(user_agent())
            .map_err(|e| StartError::Client(e.to_string()))?
            .timeout(timeout)
            .connect_timeout(timeout);
        let _entered = runtime.enter();
        Ok(GrpcTransport {
            channel: endpoint.connect_lazy(),
            metadata,
            gzip: config.compression == Compression::Gzip,
        })
    }

    /// One call.
    pub(super) async fn attempt(
        &self,
        signal: Signal,
        body: &Bytes,
    ) -> Result<Option<PartialSuccess>, AttemptError> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_REPLY_BYTES);
        if self.gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        let mut request = tonic::Request::new(body.clone());
        *request.metadata_mut() = self.metadata.clone();
        grpc.ready().await.map_err(|e| {
            AttemptError::retryable(ExportError::Transport(excerpt(&e.to_string())), None)
        })?;
        match signal {
            Signal::SpanAnnotations => Err(tonic::Status::unimplemented(
                "span annotations travel over HTTP only",
            )),
            Signal::Logs => grpc
                .unary(
                    request,
                    PathAndQuery::from_static(LOGS_EXPORT),
                    RawCodec::<ExportLogsServiceResponse>::default(),
                )
                .await
                .map(|r| {
                    r.into_inner().partial_success.and_then(|p| {
                        PartialSuccess::from_fields(p.rejected_log_records, p.error_message)
                    })
                }),
            Signal::Traces => grpc
                .unary(
                    request,
                    PathAndQuery::from_static(TRACES_EXPORT),
                    RawCodec::<ExportTraceServiceResponse>::default(),
                )
                .await
                .map(|r| {
                    r.into_inner().partial_success.and_then(|p| {
                        PartialSuccess::from_fields(p.rejected_spans, p.error_message)
                    })
                }),
        }
        .map_err(classify)
    }
}

/// Whether a failed call is worth another, per the OTLP specification; with the delay a
/// `RetryInfo` asks for.
fn classify(status: tonic::Status) -> AttemptError {
    use tonic::Code;
    let retry_info = status.get_details_retry_info();
    let error = ExportError::Grpc {
        code: status.code(),
        message: excerpt(status.message()),
    };
    let retryable = match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        // Only a server that says it will recover (by sending RetryInfo) is asked again.
        Code::ResourceExhausted => retry_info.is_some(),
        _ => false,
    };
    match retryable {
        true => AttemptError::retryable(error, retry_info.and_then(|r| r.retry_delay)),
        false => AttemptError::permanent(error),
    }
}

/// Writes already-encoded request bytes as the message; decodes the response `R` with prost.
struct RawCodec<R>(PhantomData<fn() -> R>);

impl<R> Default for RawCodec<R> {
    fn default() -> Self {
        RawCodec(PhantomData)
    }
}

impl<R: prost::Message + Default + Send + 'static> Codec for RawCodec<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder<R>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder<R> {
        ResponseDecoder(PhantomData)
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct ResponseDecoder<R>(PhantomData<fn() -> R>);

impl<R: prost::Message + Default> Decoder for ResponseDecoder<R> {
    type Item = R;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<R>, tonic::Status> {
        R::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable export response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use super::super::test_support::{config, export, runtime};
    use super::super::{Delivered, OtlpClient, Protocol};
    use super::*;
    use evalstream_evaluators::scorers::judge::Secret;
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
        LogsService, LogsServiceServer,
    };
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceRequest,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use prost::Message;
    use tonic::{Code, Request, Response, Status};
    use tonic_types::ErrorDetails;

    /// A backend that answers from a script (then OK) and records what it got.
    #[derive(Default)]
    struct Backend {
        script: Mutex<VecDeque<Result<ExportLogsServiceResponse, Status>>>,
        received: Mutex<Vec<(MetadataMap, ExportLogsServiceRequest, Instant)>>,
        traces: Mutex<usize>,
    }

    #[derive(Clone)]
    struct Service(Arc<Backend>);

    #[tonic::async_trait]
    impl LogsService for Service {
        async fn export(
            &self,
            request: Request<ExportLogsServiceRequest>,
        ) -> Result<Response<ExportLogsServiceResponse>, Status> {
            let (metadata, _, message) = request.into_parts();
            self.0
                .received
                .lock()
                .unwrap()
                .push((metadata, message, Instant::now()));
            let next = self.0.script.lock().unwrap().pop_front();
            next.unwrap_or(Ok(ExportLogsServiceResponse::default()))
                .map(Response::new)
        }
    }

    #[tonic::async_trait]
    impl TraceService for Service {
        async fn export(
            &self,
            _request: Request<ExportTraceServiceRequest>,
        ) -> Result<Response<ExportTraceServiceResponse>, Status> {
            *self.0.traces.lock().unwrap() += 1;
            Ok(Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// Serves `backend` on 127.0.0.1, port 0; returns the endpoint.
    fn serve(rt: &tokio::runtime::Runtime, backend: Arc<Backend>) -> String {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let service = Service(backend);
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(
                    LogsServiceServer::new(service.clone())
                        .accept_compressed(CompressionEncoding::Gzip),
                )
                .add_service(
                    TraceServiceServer::new(service).accept_compressed(CompressionEncoding::Gzip),
                )
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        format!("http://{addr}")
    }

    fn logs(text: &str) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        event_name: "gen_ai.evaluation.result".into(),
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(text.into())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn start(endpoint: &str, rt: &tokio::runtime::Runtime) -> OtlpClient {
        OtlpClient::start(&config(endpoint), Protocol::Grpc, rt.handle()).unwrap()
    }

    #[test]
    fn unavailable_is_retried_and_headers_arrive_as_metadata() {
        let rt = runtime();
        let backend = Arc::new(Backend::default());
        let endpoint = serve(&rt, backend.clone());
        backend
            .script
            .lock()
            .unwrap()
            .push_back(Err(Status::unavailable("starting")));
        let mut cfg = config(&endpoint);
        cfg.headers.insert(
            "Api_Key".into(),
            serde_json::from_value::<Secret>(serde_json::json!("k-123")).unwrap(),
        );
        let client = OtlpClient::start(&cfg, Protocol::Grpc, rt.handle()).unwrap();
        let request = logs("hello");
        let outcome = export(&client, Signal::Logs, request.encode_to_vec());
        assert_eq!(
            outcome.unwrap(),
            Delivered {
                attempts: 2,
                partial_success: None
            }
        );
        let received = backend.received.lock().unwrap();
        assert_eq!(received.len(), 2);
        let (metadata, message, _) = &received[1];
        assert_eq!(
            message, &request,
            "the gzip body decodes to the same request"
        );
        assert_eq!(metadata.get("api_key").unwrap(), "k-123");
        assert_eq!(metadata.get("grpc-encoding").unwrap(), "gzip");
        assert!(
            metadata
                .get("user-agent")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("evalstream/")
        );
        let stats = client.stats();
        assert_eq!((stats.delivered, stats.retries, stats.failed), (1, 1, 0));

        // Traces go to the trace service.
        assert!(export(&client, Signal::Traces, Vec::new()).is_ok());
        assert_eq!(*backend.traces.lock().unwrap(), 1);
    }

    #[test]
    fn invalid_argument_fails_at_once() {
        let rt = runtime();
        let backend = Arc::new(Backend::default());
        let client = start(&serve(&rt, backend.clone()), &rt);
        backend
            .script
            .lock()
            .unwrap()
            .push_back(Err(Status::invalid_argument("bad record")));
        let failed = export(&client, Signal::Logs, logs("x").encode_to_vec()).unwrap_err();
        assert_eq!(failed.attempts, 1);
        assert!(!failed.gave_up);
        assert_eq!(
            failed.error,
            ExportError::Grpc {
                code: Code::InvalidArgument,
                message: "bad record".into()
            }
        );
        assert!(
            failed.to_string().contains("InvalidArgument: bad record"),
            "{failed}"
        );
        assert_eq!(backend.received.lock().unwrap().len(), 1);
        assert_eq!(client.stats().failed, 1);
    }

    #[test]
    fn resource_exhausted_is_retried_only_with_retry_info_after_its_delay() {
        let rt = runtime();
        let backend = Arc::new(Backend::default());
        let client = start(&serve(&rt, backend.clone()), &rt);
        backend
            .script
            .lock()
            .unwrap()
            .push_back(Err(Status::with_error_details(
                Code::ResourceExhausted,
                "queue full",
                ErrorDetails::with_retry_info(Some(Duration::from_millis(700))),
            )));
        let delivered = export(&client, Signal::Logs, logs("x").encode_to_vec()).unwrap();
        assert_eq!(delivered.attempts, 2);
        {
            let received = backend.received.lock().unwrap();
            let waited = received[1].2 - received[0].2;
            assert!(
                waited >= Duration::from_millis(700),
                "RetryInfo is a floor: {waited:?}"
            );
        }

        // Without RetryInfo the server will not recover: not retried.
        backend
            .script
            .lock()
            .unwrap()
            .push_back(Err(Status::resource_exhausted("too large")));
        let failed = export(&client, Signal::Logs, logs("x").encode_to_vec()).unwrap_err();
        assert_eq!(failed.attempts, 1);
        assert!(matches!(
            failed.error,
            ExportError::Grpc {
                code: Code::ResourceExhausted,
                ..
            }
        ));
    }

    #[test]
    fn partial_success_is_reported() {
        let rt = runtime();
        let backend = Arc::new(Backend::default());
        let client = start(&serve(&rt, backend.clone()), &rt);
        backend
            .script
            .lock()
            .unwrap()
            .push_back(Ok(ExportLogsServiceResponse {
                partial_success: Some(ExportLogsPartialSuccess {
                    rejected_log_records: 3,
                    error_message: "missing trace id".into(),
                }),
            }));
        let delivered = export(&client, Signal::Logs, logs("x").encode_to_vec()).unwrap();
        assert_eq!(
            delivered.partial_success,
            Some(PartialSuccess {
                rejected: 3,
                message: "missing trace id".into()
            })
        );
        assert_eq!(client.stats().rejected_items, 3);
        // An empty partial_success is a plain success.
        backend
            .script
            .lock()
            .unwrap()
            .push_back(Ok(ExportLogsServiceResponse {
                partial_success: Some(ExportLogsPartialSuccess::default()),
            }));
        let delivered = export(&client, Signal::Logs, logs("x").encode_to_vec()).unwrap();
        assert_eq!(delivered.partial_success, None);
    }

    #[test]
    fn an_unreachable_backend_is_retried_until_max_elapsed_time() {
        let rt = runtime();
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cfg = config(&format!("http://127.0.0.1:{port}"));
        cfg.retry_on_failure.max_elapsed_time = Duration::from_millis(600);
        let client = OtlpClient::start(&cfg, Protocol::Grpc, rt.handle()).unwrap();
        let started = Instant::now();
        let failed = export(&client, Signal::Logs, logs("x").encode_to_vec()).unwrap_err();
        assert!(failed.gave_up, "{failed}");
        assert!(failed.attempts >= 2, "{failed}");
        assert!(matches!(
            failed.error,
            ExportError::Grpc {
                code: Code::Unavailable,
                ..
            }
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
