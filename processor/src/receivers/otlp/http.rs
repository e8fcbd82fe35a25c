//! OTLP/HTTP: `POST /v1/traces` with a protobuf (`application/x-protobuf`) or OTLP/JSON
//! (`application/json`) `ExportTraceServiceRequest`, optionally `Content-Encoding: gzip`; with
//! `logs: true`, `POST /v1/logs` with an `ExportLogsServiceRequest`, under the same rules.
//!
//! The answer is in the request's encoding: an `ExportTraceServiceResponse` (or
//! `ExportLogsServiceResponse`) on success, a
//! `google.rpc.Status` on failure (with a `RetryInfo` detail when a delay is known), as the OTLP
//! specification requires. Status codes: 400 undecodable or invalid, 404 another path, 405
//! another method, 413 a body over `max_request_body_size` (as sent or inflated), 415 another
//! content type or encoding, 429 pipeline full (`Retry-After`), 503 pipeline unavailable.
//!
//! Served by the telemetry endpoint's hyper loop (`telemetry::http::serve_router`): a header-read
//! timeout and a connection cap, past which connections wait in the kernel's backlog.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::any;
use evalstream_evaluators::logs::{self, Signal};
use evalstream_evaluators::otlp::{self, Encoding};
use flate2::read::MultiGzDecoder;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use tokio::net::TcpListener;
use tonic::Code;
use tracing::debug;

use super::{Counted, Error, Failure, Intake, Outcome, SHUTDOWN_GRACE, Stop, Taken};
use crate::config::otlp_receiver::HttpConfig;
use crate::telemetry::http::serve_router;

/// The traces path, the OTLP default.
const PATH: &str = "/v1/traces";

/// The logs path, the OTLP default.
const LOGS_PATH: &str = "/v1/logs";

/// Connections served at once; past it, new ones wait in the backlog. SDKs keep one or a few
/// connections each.
const MAX_CONNECTIONS: usize = 1024;

/// How long a client may take to send a request's headers, and between requests on a kept
/// connection to start the next: longer than an SDK's usual 5-second export interval, so kept
/// connections are reused rather than cut between batches.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Bodies up to this size are decoded on the async runtime; larger ones, and every gzip body,
/// on the blocking pool. Decoding 20 MiB of JSON takes tens of milliseconds of CPU, which would
/// stall every other connection on that runtime thread; a gzip body's inflated size is unknown
/// until inflated (50 MiB of zeros compress to 50 KiB), so its work is bounded only by the limit.
const INLINE_DECODE_BYTES: usize = 64 << 10;

/// The two OTLP/HTTP encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }

    fn encoding(self) -> Encoding {
        match self {
            Format::Protobuf => Encoding::OtlpProto,
            Format::Json => Encoding::OtlpJson,
        }
    }
}

/// What every request needs.
struct Receiver {
    intake: Arc<dyn Intake>,
    /// `max_request_body_size`: the most bytes of a body, as sent and inflated.
    max_body: usize,
    /// Counts the answers on `/v1/traces`.
    counted: Counted,
}

/// Serves `POST /v1/traces` (and `POST /v1/logs` when `logs`) on `listener` until `stop`, then
/// lets open requests finish for at most [`SHUTDOWN_GRACE`].
pub(super) async fn run(
    listener: TcpListener,
    config: HttpConfig,
    logs: bool,
    intake: Arc<dyn Intake>,
    counted: Counted,
    stop: Stop,
) -> Result<(), Error> {
    let receiver = Arc::new(Receiver {
        intake,
        max_body: config.max_request_body_size,
        counted,
    });
    let mut app = axum::Router::new().route(PATH, any(traces));
    if logs {
        app = app.route(LOGS_PATH, any(logs_export));
    }
    let app = app.fallback(not_found).with_state(receiver);
    serve_router(
        listener,
        app,
        MAX_CONNECTIONS,
        HEADER_READ_TIMEOUT,
        SHUTDOWN_GRACE,
        stop.requested(),
    )
    .await
    .map_err(|e| Error::Serve {
        protocol: "http",
        message: e.to_string(),
    })
}

/// `/v1/traces`, any method.
async fn traces(State(receiver): State<Arc<Receiver>>, request: Request) -> Response {
    counted(&receiver, request, Signal::Traces).await
}

/// `/v1/logs`, any method.
async fn logs_export(State(receiver): State<Arc<Receiver>>, request: Request) -> Response {
    counted(&receiver, request, Signal::Logs).await
}

/// The answer, counted by its status.
async fn counted(receiver: &Receiver, request: Request, signal: Signal) -> Response {
    let response = answer(receiver, request, signal).await;
    receiver.counted.count(match response.status() {
        StatusCode::OK => Outcome::Accepted,
        StatusCode::TOO_MANY_REQUESTS => Outcome::Busy,
        StatusCode::SERVICE_UNAVAILABLE => Outcome::Unavailable,
        status if status.is_client_error() => Outcome::Invalid,
        _ => Outcome::Error,
    });
    response
}

/// The answer to a request on `/v1/traces` or `/v1/logs`.
async fn answer(receiver: &Receiver, request: Request, signal: Signal) -> Response {
    let (parts, body) = request.into_parts();
    let format = content_type(&parts.headers);
    // Errors found before the content type is known are told in protobuf, the default encoding.
    let reply = format.as_ref().map_or(Format::Protobuf, |f| *f);
    if parts.method != Method::POST {
        let message = format!(
            "method {} not allowed: use POST",
            shorten(parts.method.as_str())
        );
        let mut response = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            reply,
            Failure::new(Code::Unimplemented, message),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let format = match format {
        Ok(format) => format,
        Err(message) => {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                reply,
                Failure::new(Code::InvalidArgument, message),
            );
        }
    };
    let gzip = match content_encoding(&parts.headers) {
        Ok(gzip) => gzip,
        Err(message) => {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format,
                Failure::new(Code::InvalidArgument, message),
            );
        }
    };
    let max = receiver.max_body;
    let too_large = |what: &str| {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format,
            Failure::new(
                Code::InvalidArgument,
                format!("{what} over max_request_body_size ({max} bytes)"),
            ),
        )
    };
    // A declared length over the limit is refused before reading anything.
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return too_large("request body");
    }
    let body: Bytes = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return too_large("request body"),
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format,
                Failure::new(
                    Code::InvalidArgument,
                    format!("cannot read the request body: {e}"),
                ),
            );
        }
    };
    let decoded = if gzip || body.len() > INLINE_DECODE_BYTES {
        match tokio::task::spawn_blocking(move || decode(&body, format, gzip, max, signal)).await {
            Ok(decoded) => decoded,
            Err(e) => Err(Undecodable::Internal(format!("decoding failed: {e}"))),
        }
    } else {
        decode(&body, format, gzip, max, signal)
    };
    let (request, bytes) = match decoded {
        Ok(decoded) => decoded,
        Err(Undecodable::TooLarge) => return too_large("inflated request body"),
        Err(Undecodable::Invalid(message)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format,
                Failure::new(Code::InvalidArgument, message),
            );
        }
        Err(Undecodable::Internal(message)) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format,
                Failure::new(Code::Internal, message),
            );
        }
    };
    match super::export("http", &*receiver.intake, request, bytes).await {
        Ok(taken) => success(format, signal, taken),
        Err(failure) => refuse(http_status(failure.code), format, failure),
    }
}

/// Any other path; `/v1/logs` when logs are not taken says how to take them.
async fn not_found(uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let message = if uri.path() == LOGS_PATH {
        format!(
            "not found: logs are taken with receivers.otlp.logs: true; traces go to POST {PATH}"
        )
    } else {
        format!("not found: traces go to POST {PATH}")
    };
    refuse(
        StatusCode::NOT_FOUND,
        content_type(&headers).unwrap_or(Format::Protobuf),
        Failure::new(Code::Unimplemented, message),
    )
}

/// The request's encoding, from its `Content-Type` (parameters such as `charset` ignored), or
/// why it is refused.
fn content_type(headers: &HeaderMap) -> Result<Format, String> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err("missing content type: use application/x-protobuf or application/json".into());
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    let mime = value.split(';').next().unwrap_or_default().trim();
    if mime.eq_ignore_ascii_case("application/x-protobuf") {
        Ok(Format::Protobuf)
    } else if mime.eq_ignore_ascii_case("application/json") {
        Ok(Format::Json)
    } else {
        Err(format!(
            "unsupported content type `{}`: use application/x-protobuf or application/json",
            shorten(mime)
        ))
    }
}

/// Whether the body is gzip-compressed, from its `Content-Encoding`, or why it is refused.
fn content_encoding(headers: &HeaderMap) -> Result<bool, String> {
    let mut gzip = false;
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let value = String::from_utf8_lossy(value.as_bytes());
        for coding in value.split(',').map(str::trim) {
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                if gzip {
                    return Err("gzip applied twice: send it once".into());
                }
                gzip = true;
            } else if !(coding.is_empty() || coding.eq_ignore_ascii_case("identity")) {
                return Err(format!(
                    "unsupported content encoding `{}`: use gzip or none",
                    shorten(coding)
                ));
            }
        }
    }
    Ok(gzip)
}

/// Why a body did not decode.
#[derive(Debug)]
enum Undecodable {
    /// Inflated, it is over the limit.
    TooLarge,
    /// Not gzip, or not an `ExportTraceServiceRequest` in its encoding.
    Invalid(String),
    /// The decoding task failed.
    Internal(String),
}

/// Inflates (at most `max` bytes: a gzip bomb stops there) and decodes a body; the request and
/// its decoded size.
fn decode(
    body: &[u8],
    format: Format,
    gzip: bool,
    max: usize,
    signal: Signal,
) -> Result<(super::Request, usize), Undecodable> {
    use std::io::Read as _;
    let inflated;
    let bytes = if gzip {
        let mut out = Vec::new();
        // One byte past the limit tells "over" from "exactly at". Several gzip members one after
        // another are one body, as most gzip readers take them.
        MultiGzDecoder::new(body)
            .take(max as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| Undecodable::Invalid(format!("invalid gzip body: {e}")))?;
        if out.len() > max {
            return Err(Undecodable::TooLarge);
        }
        inflated = out;
        &inflated[..]
    } else {
        body
    };
    // An empty protobuf message is a valid, empty request (the decoder refuses empty Kafka
    // records); empty JSON is not JSON.
    let empty = bytes.is_empty() && format == Format::Protobuf;
    let invalid = |e: otlp::DecodeError| Undecodable::Invalid(e.to_string());
    let request = match signal {
        Signal::Traces if empty => super::Request::Traces(ExportTraceServiceRequest::default()),
        Signal::Logs if empty => super::Request::Logs(ExportLogsServiceRequest::default()),
        Signal::Traces => {
            super::Request::Traces(otlp::decode(bytes, format.encoding()).map_err(invalid)?)
        }
        // One request per body: a JSON stream of several is not OTLP/HTTP.
        Signal::Logs => match logs::decode_logs(bytes, format.encoding()).map_err(invalid)? {
            requests if requests.len() == 1 => {
                super::Request::Logs(requests.into_iter().next().unwrap_or_default())
            }
            _ => {
                return Err(Undecodable::Invalid(
                    "several requests in one body: send one ExportLogsServiceRequest".into(),
                ));
            }
        },
    };
    Ok((request, bytes.len()))
}

/// The HTTP status OTLP/HTTP uses for a failure's gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unimplemented => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// 200 with the `ExportTraceServiceResponse` (`ExportLogsServiceResponse`) in the request's
/// encoding.
fn success(format: Format, signal: Signal, taken: Taken) -> Response {
    let partial = taken.rejected > 0;
    let body = match (format, signal) {
        (Format::Protobuf, Signal::Traces) => ExportTraceServiceResponse {
            partial_success: partial.then_some(ExportTracePartialSuccess {
                rejected_spans: taken.rejected,
                error_message: taken.message,
            }),
        }
        .encode_to_vec(),
        (Format::Protobuf, Signal::Logs) => ExportLogsServiceResponse {
            partial_success: partial.then_some(ExportLogsPartialSuccess {
                rejected_log_records: taken.rejected,
                error_message: taken.message,
            }),
        }
        .encode_to_vec(),
        // Written here rather than by the crate's serde, which writes an unset
        // `partial_success` as `null`.
        (Format::Json, _) if partial => {
            let rejected = match signal {
                Signal::Traces => "rejectedSpans",
                Signal::Logs => "rejectedLogRecords",
            };
            serde_json::json!({
                "partialSuccess": { rejected: taken.rejected, "errorMessage": taken.message }
            })
            .to_string()
            .into_bytes()
        }
        (Format::Json, _) => b"{}".to_vec(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, format.content_type())],
        Body::from(body),
    )
        .into_response()
}

/// A failure: `status` with a `google.rpc.Status` body in `format`, and `Retry-After` (whole
/// seconds, at least 1) on a 429 or 503 with a known delay.
fn refuse(status: StatusCode, format: Format, failure: Failure) -> Response {
    debug!(status = status.as_u16(), error = %failure.message, "otlp http request refused");
    let body = match format {
        Format::Protobuf => failure.to_status().details().to_vec(),
        Format::Json => status_json(&failure).to_string().into_bytes(),
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, format.content_type())],
        Body::from(body),
    )
        .into_response();
    if let Some(delay) = failure.retry_after
        && matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
    {
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}

/// A `google.rpc.Status` in the protobuf JSON mapping.
fn status_json(failure: &Failure) -> serde_json::Value {
    let mut status = serde_json::json!({
        "code": i32::from(failure.code),
        "message": failure.message,
    });
    if let Some(delay) = failure.retry_after {
        // A `google.protobuf.Duration` is seconds with a fraction, then `s`.
        let delay = match delay.subsec_nanos() {
            0 => format!("{}s", delay.as_secs()),
            nanos => format!("{}.{nanos:09}s", delay.as_secs()),
        };
        status["details"] = serde_json::json!([{
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": delay,
        }]);
    }
    status
}

/// A client-given name (method, media type, coding), cut so a message never carries much of it.
fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    match text.char_indices().nth(MAX_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write as _;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use tonic_types::RpcStatusExt as _;

    use super::super::testing::{
        Behaviour, TestIntake, accepted, config, counts, request, request_json,
    };
    use super::super::{Answer, Servers, serve};
    use super::*;

    const PROTOBUF: &str = "application/x-protobuf";
    const JSON: &str = "application/json";

    /// An HTTP-only receiver with `intake` and a body limit; its `/v1/traces` URL.
    async fn start(intake: Arc<TestIntake>, max_request_body_size: usize) -> (Servers, String) {
        let mut c = config();
        c.protocols.grpc = None;
        c.protocols.http.as_mut().unwrap().max_request_body_size = max_request_body_size;
        let servers = serve(&c, intake, counts(), std::future::pending())
            .await
            .unwrap();
        let url = format!("http://{}{PATH}", servers.http_address().unwrap());
        (servers, url)
    }

    /// Posts `body` with the given content type and encoding.
    async fn post(
        url: &str,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut post = reqwest::Client::new().post(url).body(body);
        if let Some(t) = content_type {
            post = post.header("content-type", t);
        }
        if let Some(e) = content_encoding {
            post = post.header("content-encoding", e);
        }
        post.send().await.unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// A failure's status code, content type and `google.rpc.Status` body, decoded from
    /// protobuf.
    async fn protobuf_status(response: reqwest::Response) -> (u16, String, tonic_types::Status) {
        let status = response.status().as_u16();
        let content_type = header_of(&response, "content-type");
        let body = response.bytes().await.unwrap();
        (
            status,
            content_type,
            tonic_types::Status::decode(body).unwrap(),
        )
    }

    fn header_of(response: &reqwest::Response, name: &str) -> String {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn protobuf_and_json_bodies_decode_to_the_same_request() {
        let (intake, _held) = TestIntake::new(Behaviour::Answer(accepted()));
        let (_servers, url) = start(intake.clone(), 20 << 20).await;
        let proto = request(2).encode_to_vec();
        let response = post(&url, Some(PROTOBUF), None, proto.clone()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header_of(&response, "content-type"), PROTOBUF);
        let body = response.bytes().await.unwrap();
        assert_eq!(
            ExportTraceServiceResponse::decode(body).unwrap(),
            ExportTraceServiceResponse::default()
        );

        let json = request_json(2);
        let response = post(
            &url,
            Some("application/json; charset=utf-8"),
            None,
            json.clone(),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(header_of(&response, "content-type"), JSON);
        assert_eq!(response.text().await.unwrap(), "{}");

        let taken = intake.requests();
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0], (request(2), proto.len()));
        assert_eq!(taken[1], (request(2), json.len()));
    }

    #[tokio::test]
    async fn partial_success_is_answered_in_the_requests_encoding() {
        let (intake, _held) = TestIntake::new(Behaviour::Answer(Answer::Accepted {
            rejected_spans: 1,
            message: "1 span without a model".into(),
        }));
        let (_servers, url) = start(intake.clone(), 20 << 20).await;
        let response = post(&url, Some(PROTOBUF), None, request(2).encode_to_vec()).await;
        assert_eq!(response.status(), 200);
        let partial = ExportTraceServiceResponse::decode(response.bytes().await.unwrap())
            .unwrap()
            .partial_success
            .unwrap();
        assert_eq!(
            (partial.rejected_spans, partial.error_message.as_str()),
            (1, "1 span without a model")
        );
        let response = post(&url, Some(JSON), None, request_json(2)).await;
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({"partialSuccess": {"rejectedSpans": 1, "errorMessage": "1 span without a model"}})
        );
    }

    #[tokio::test]
    async fn a_gzip_body_is_accepted_in_either_encoding() {
        let (intake, _held) = TestIntake::new(Behaviour::Answer(accepted()));
        let (_servers, url) = start(intake.clone(), 20 << 20).await;
        let proto = request(20).encode_to_vec();
        let response = post(&url, Some(PROTOBUF), Some("gzip"), gzip(&proto)).await;
        assert_eq!(response.status(), 200);
        let response = post(
            &url,
            Some(JSON),
            Some("GZIP"),
            gzip(request_json(1).as_bytes()),
        )
        .await;
        assert_eq!(response.status(), 200);
        let taken = intake.requests();
        assert_eq!(taken[0], (request(20), proto.len()), "the inflated size");
        assert_eq!(taken[1].0, request(1));

        let response = post(&url, Some(PROTOBUF), Some("gzip"), proto).await;
        let (status, _, body) = protobuf_status(response).await;
        assert_eq!(status, 400);
        assert!(body.message.starts_with("invalid gzip body"), "{body:?}");
    }

    /// 50 MiB of zeros compress to 50 KiB: under the limit as sent, far over it inflated.
    #[tokio::test]
    async fn a_gzip_bomb_stops_at_the_limit_with_413() {
        let (intake, _held) = TestIntake::new(Behaviour::Answer(accepted()));
        let (_servers, url) = start(intake.clone(), 20 << 20).await;
        // Fifty gzip members of 1 MiB of zeros each: one body to a gzip reader, and quick to
        // build in a debug test.
        let member = gzip(&vec![0; 1 << 20]);
        let bomb = member.repeat(50);
        assert!(bomb.len() < 100 << 10, "{}", bomb.len());
        let response = post(&url, Some(PROTOBUF), Some("gzip"), bomb).await;
        let (status, content_type, body) = protobuf_status(response).await;
        assert_eq!((status, content_type.as_str()), (413, PROTOBUF));
        assert_eq!(
            body.message,
            "inflated request body over max_request_body_size (20971520 bytes)"
        );
        // A single member, of 30 MiB.
        let response = post(&url, Some(JSON), Some("gzip"), gzip(&vec![b' '; 30 << 20])).await;
        assert_eq!(response.status(), 413);
        assert!(intake.requests().is_empty());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_with_413() {
        let (intake, _held) = TestIntake::new(Behaviour::Answer(accepted()));
        let (_servers, url) = start(intake.clone(), 1000).await;
        let body = request(20).encode_to_vec();
        assert!(body.len() > 1000);
        let response = post(&url, Some(PROTOBUF), None, body.clone()).await;
        let (status, _, status_body) = protobuf_status(response).await;
        assert_eq!(status, 413);
        assert_eq!(
            status_body.message,
            "request body over max_request_body_size (1000 bytes)"
        );
        // Without a declared length (chunked), the limit stops the read.
        let address = url.trim_start_matches("http://").trim_end_matches(PATH);
        let response = chunked_post(address, &body).await;
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        assert!(intake.requests().is_empty());
        // Under the limit, it is taken.
        let small = request(1).encode_to_vec();
        assert_eq!(post(&url, Some(PROTOBUF), None, small).await.status(), 200);
    }

    /// Posts `body` in 100-byte chunks, without a `Content-Length`; the raw response.
    async fn chunked_post(address: &str, body: &[u8]) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut request = format!(
            "POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: {PROTOBUF}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        for chunk in body.chunks(100) {
            request.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend(chunk);
            request.extend(b"\r\n");
        }
        request.extend(b"0\r\n\r\n");
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        // The server may answer and close before reading everything.
        let _ = stream.write_all(&request).await;
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .unwrap();
        String::from_utf8_lossy(&response).into_owned()
    }

    #[tokio::test]
    async fn wrong_method_path_content_type_and_encoding_are_refused() {
        let (intake, _held) = TestIntake::new(Behaviour::Answer(accepted()));
        let (servers, url) = start(intake.clone(), 20 << 20).await;
        let client = reqwest::Client::new();

        let response = client.get(&url).send().await.unwrap();
        assert_eq!(header_of(&response, "allow"), "POST");
        let (status, _, body) = protobuf_status(response).await;
        assert_eq!(
            (status, body.message.as_str()),
            (405, "method GET not allowed: use POST")
        );

        let logs = format!("http://{}/v1/logs", servers.http_address().unwrap());
        let response = post(&logs, Some(JSON), None, "{}").await;
        assert_eq!(response.status(), 404);
        assert_eq!(header_of(&response, "content-type"), JSON);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body["message"],
            "not found: logs are taken with receivers.otlp.logs: true; traces go to POST /v1/traces"
        );

        let response = post(&url, Some("text/plain"), None, "spans").await;
        let (status, _, body) = protobuf_status(response).await;
        assert_eq!(status, 415);
        assert_eq!(
            body.message,
            "unsupported content type `text/plain`: use application/x-protobuf or application/json"
        );
        let response = post(&url, None, None, request(1).encode_to_vec()).await;
        let (status, _, body) = protobuf_status(response).await;
        assert_eq!(status, 415);
        assert!(body.message.starts_with("missing content type"), "{body:?}");
        let long = format!("application/{}", "x".repeat(10_000));
        let response = post(&url, Some(&long), None, "{}").await;
        let (status, _, body) = protobuf_status(response).await;
        assert_eq!(status, 415);
        assert!(body.message.len() < 200, "{}", body.message.len());

        let response = post(&url, Some(JSON), Some("br"), "{}").await;
        assert_eq!(response.status(), 415);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body["message"],
            "unsupported content encoding `br`: use gzip or none"
        );
        assert!(intake.requests().is_empty());
    }

    #[tokio::test]
    async fn an_undecodable_body_gets_400_with_a_status_in_its_encoding() {
        let (intake, _held) = TestIntake::new(Behaviour::Answer(accepted()));
        let (_servers, url) = start(intake.clone(), 20 << 20).await;
        let response = post(&url, Some(PROTOBUF), None, vec![0xff, 0xff, 0xff]).await;
        let (status, content_type, body) = protobuf_status(response).await;
        assert_eq!((status, content_type.as_str()), (400, PROTOBUF));
        assert_eq!(body.code, i32::from(Code::InvalidArgument));
        assert!(
            body.message.starts_with("invalid otlp_proto message"),
            "{body:?}"
        );

        let secret = "123-45-6789";
        let response = post(
            &url,
            Some(JSON),
            None,
            format!("{{\"resourceSpans\": \"{secret}\"}}"),
        )
        .await;
        assert_eq!(response.status(), 400);
        assert_eq!(header_of(&response, "content-type"), JSON);
        let body: serde_json::Value = response.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with("invalid otlp_json message"),
            "{message}"
        );
        assert!(
            !message.contains(secret),
            "the input is never quoted: {message}"
        );
        assert_eq!(body["code"], 3);

        // A span id of the wrong length.
        let bad_id = request_json(1).replace("a000000000000001", "a0");
        let response = post(&url, Some(JSON), None, bad_id).await;
        assert_eq!(response.status(), 400);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("span_id"),
            "{body}"
        );

        let response = post(&url, Some(JSON), None, "").await;
        assert_eq!(response.status(), 400);
        assert!(intake.requests().is_empty());
    }

    #[tokio::test]
    async fn an_empty_protobuf_body_succeeds_without_reaching_the_intake() {
        let (intake, _held) = TestIntake::new(Behaviour::Busy(Duration::from_secs(1)));
        let (_servers, url) = start(intake.clone(), 20 << 20).await;
        assert_eq!(post(&url, Some(PROTOBUF), None, "").await.status(), 200);
        assert_eq!(post(&url, Some(JSON), None, "{}").await.status(), 200);
        assert!(intake.requests().is_empty());
    }

    #[tokio::test]
    async fn a_full_pipeline_gets_429_with_retry_after() {
        let (intake, _held) = TestIntake::new(Behaviour::Busy(Duration::from_millis(1500)));
        let (_servers, url) = start(intake.clone(), 20 << 20).await;
        let response = post(&url, Some(PROTOBUF), None, request(1).encode_to_vec()).await;
        assert_eq!(header_of(&response, "retry-after"), "2", "rounded up");
        let (status, _, body) = protobuf_status(response).await;
        assert_eq!(status, 429);
        assert_eq!(
            body.get_details_retry_info().unwrap().retry_delay,
            Some(Duration::from_millis(1500))
        );
        let response = post(&url, Some(JSON), None, request_json(1)).await;
        assert_eq!(response.status(), 429);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body["details"],
            serde_json::json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.500000000s"}])
        );
        intake.set(Behaviour::Busy(Duration::from_millis(10)));
        let response = post(&url, Some(JSON), None, request_json(1)).await;
        assert_eq!(header_of(&response, "retry-after"), "1", "at least 1");
    }

    #[tokio::test]
    async fn unavailable_and_invalid_answers_get_503_and_400() {
        let (intake, _held) = TestIntake::new(Behaviour::Answer(Answer::Unavailable {
            message: "exporter down".into(),
            retry_after: Some(Duration::from_secs(7)),
        }));
        let (_servers, url) = start(intake.clone(), 20 << 20).await;
        let response = post(&url, Some(PROTOBUF), None, request(1).encode_to_vec()).await;
        assert_eq!(header_of(&response, "retry-after"), "7");
        let (status, _, body) = protobuf_status(response).await;
        assert_eq!((status, body.message.as_str()), (503, "exporter down"));

        intake.set(Behaviour::Drop);
        let response = post(&url, Some(PROTOBUF), None, request(1).encode_to_vec()).await;
        assert_eq!(header_of(&response, "retry-after"), "");
        let (status, _, body) = protobuf_status(response).await;
        assert_eq!(status, 503);
        assert!(body.message.contains("without an answer"), "{body:?}");

        intake.set(Behaviour::Answer(Answer::Invalid {
            message: "no service.name".into(),
        }));
        let response = post(&url, Some(JSON), None, request_json(1)).await;
        assert_eq!(response.status(), 400);
    }

    #[tokio::test]
    async fn the_response_waits_for_the_intakes_answer() {
        let (intake, mut held) = TestIntake::new(Behaviour::Hold);
        let (_servers, url) = start(intake.clone(), 20 << 20).await;
        let call = tokio::spawn(async move {
            post(&url, Some(PROTOBUF), None, request(1).encode_to_vec()).await
        });
        let answer = held.recv().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!call.is_finished(), "answered before the pipeline did");
        answer.send(accepted()).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[cfg(test)]
mod logs_tests {
    #![allow(clippy::unwrap_used)]

    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    use super::super::testing::{Behaviour, TestIntake, config, counts};
    use super::super::{Answer, Request, serve};
    use super::*;

    fn logs_request() -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        event_name: "gen_ai.client.inference.operation.details".into(),
                        span_id: vec![1; 8],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// `/v1/logs` is served only with `logs: true`, in both encodings, with the logs response's
    /// own partial-success field.
    #[tokio::test]
    async fn logs_are_taken_only_when_asked_for() {
        let (intake, _held) = TestIntake::new(Behaviour::Answer(Answer::Accepted {
            rejected_spans: 1,
            message: "one record refused".into(),
        }));
        let mut c = config();
        c.protocols.grpc = None;
        let off = serve(&c, intake.clone(), counts(), std::future::pending())
            .await
            .unwrap();
        c.logs = true;
        let on = serve(&c, intake.clone(), counts(), std::future::pending())
            .await
            .unwrap();
        let client = reqwest::Client::new();
        let post = |address: std::net::SocketAddr, content_type: &str, body: Vec<u8>| {
            client
                .post(format!("http://{address}{LOGS_PATH}"))
                .header("content-type", content_type)
                .body(body)
                .send()
        };
        let protobuf = logs_request().encode_to_vec();
        let response = post(
            off.http_address().unwrap(),
            "application/x-protobuf",
            protobuf.clone(),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let status = tonic_types::Status::decode(response.bytes().await.unwrap()).unwrap();
        assert!(
            status.message.contains("receivers.otlp.logs: true"),
            "{status:?}"
        );
        assert!(intake.taken().is_empty());

        let response = post(
            on.http_address().unwrap(),
            "application/x-protobuf",
            protobuf,
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let answer = ExportLogsServiceResponse::decode(response.bytes().await.unwrap()).unwrap();
        assert_eq!(answer.partial_success.unwrap().rejected_log_records, 1);
        let json = serde_json::to_vec(&logs_request()).unwrap();
        let response = post(on.http_address().unwrap(), "application/json", json)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["partialSuccess"]["rejectedLogRecords"], 1);
        let taken = intake.taken();
        assert_eq!(taken.len(), 2);
        assert!(
            taken
                .iter()
                .all(|(r, _)| *r == Request::Logs(logs_request()))
        );
    }
}
