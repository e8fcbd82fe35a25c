//! OTLP/HTTP with protobuf bodies: `POST {endpoint}/v1/logs` or `/v1/traces`; and Phoenix span
//! annotations, JSON, to `POST {endpoint}/v1/span_annotations`.
//!
//! Redirects are not followed: the headers carry API keys, and a redirect would take them (and
//! the data) to whatever host it names. A 3xx fails the request, saying so.

use std::io::Write;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use reqwest::header::{
    CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
};

use super::{
    AttemptError, ExportError, MAX_REPLY_BYTES, PartialSuccess, Payload, Signal, StartError,
    excerpt, user_agent,
};
use crate::config::otlp_exporter::{Compression, OtlpExporterConfig};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// The HTTP side of the client.
pub(super) struct HttpTransport {
    http: reqwest::Client,
    logs_url: String,
    traces_url: String,
    annotations_url: String,
    gzip: bool,
    timeout: Duration,
}

impl HttpTransport {
    /// A client of `config.endpoint`; each attempt times out after `timeout`.
    pub(super) fn new(
        config: &OtlpExporterConfig,
        timeout: Duration,
    ) -> Result<HttpTransport, StartError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                StartError::Config(format!("headers: `{name}` is not a header name"))
            })?;
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
                StartError::Config(format!("headers: the value of `{name}` is not valid"))
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(user_agent())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|e| StartError::Client(e.to_string()))?;
        let base = config.endpoint.trim_end_matches('/');
        Ok(HttpTransport {
            http,
            logs_url: format!("{base}/v1/logs"),
            traces_url: format!("{base}/v1/traces"),
            annotations_url: format!("{base}/v1/span_annotations"),
            gzip: config.compression == Compression::Gzip,
            timeout,
        })
    }

    /// The body as sent: gzipped when configured. This runs on the sending thread, so the
    /// compression (milliseconds for a large request) never holds a runtime worker.
    pub(super) fn prepare(&self, body: Bytes) -> Payload {
        if !self.gzip {
            return Payload { body, gzip: false };
        }
        // The fastest level. On the OTLP bench (240,128 spans in, 428,234 events out) the worker
        // took 7.5 CPU-seconds at zlib's default level 6, 6.1 s at level 1 and 4.0 s sending
        // uncompressed: compression is the largest single cost of the OTLP path.
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 4 + 64),
            flate2::Compression::fast(),
        );
        // Writing to a Vec cannot fail; if it did, the body goes as it is.
        match encoder.write_all(&body).and_then(|()| encoder.finish()) {
            Ok(gzipped) => Payload {
                body: gzipped.into(),
                gzip: true,
            },
            Err(_) => Payload { body, gzip: false },
        }
    }

    /// One request.
    pub(super) async fn attempt(
        &self,
        signal: Signal,
        payload: &Payload,
    ) -> Result<Option<PartialSuccess>, AttemptError> {
        let (url, content_type) = match signal {
            Signal::Logs => (&self.logs_url, PROTOBUF),
            Signal::Traces => (&self.traces_url, PROTOBUF),
            Signal::SpanAnnotations => (&self.annotations_url, JSON),
        };
        let mut request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, content_type)
            .body(payload.body.clone());
        if payload.gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        let response = request.send().await.map_err(|e| self.failed(&e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let protobuf = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(PROTOBUF));
        let body = read_limited(response, MAX_REPLY_BYTES).await;
        if status.is_success() {
            // Delivered whatever the body says; an unreadable one only hides a partial success.
            return Ok(match body {
                Ok(body) if protobuf && !body.is_empty() => partial_success(signal, &body),
                _ => None,
            });
        }
        let body = body.unwrap_or_default();
        let message = match status_message(&body, protobuf) {
            _ if status.is_redirection() => {
                "redirects are not followed: point the endpoint at the final url".to_owned()
            }
            m if m.is_empty() => status.canonical_reason().unwrap_or_default().to_lowercase(),
            m => m,
        };
        let error = ExportError::Http {
            status: status.as_u16(),
            message,
        };
        Err(match status.as_u16() {
            429 | 502 | 503 | 504 => AttemptError::retryable(error, retry_after),
            _ => AttemptError::permanent(error),
        })
    }

    /// A request that got no answer: worth another try.
    fn failed(&self, e: &reqwest::Error) -> AttemptError {
        let error = if e.is_timeout() {
            ExportError::Timeout(self.timeout)
        } else {
            // reqwest's message is generic ("error sending request"); the cause is in the chain.
            let mut message = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            ExportError::Transport(excerpt(&message))
        };
        AttemptError::retryable(error, None)
    }
}

/// A success's `partial_success`, when the body says anything.
fn partial_success(signal: Signal, body: &[u8]) -> Option<PartialSuccess> {
    match signal {
        Signal::Logs => ExportLogsServiceResponse::decode(body)
            .ok()?
            .partial_success
            .and_then(|p| PartialSuccess::from_fields(p.rejected_log_records, p.error_message)),
        Signal::Traces => ExportTraceServiceResponse::decode(body)
            .ok()?
            .partial_success
            .and_then(|p| PartialSuccess::from_fields(p.rejected_spans, p.error_message)),
        Signal::SpanAnnotations => None,
    }
}

/// What an error body says: OTLP sends a protobuf `google.rpc.Status`; other servers text.
fn status_message(body: &[u8], protobuf: bool) -> String {
    if protobuf && let Ok(status) = tonic_types::Status::decode(body) {
        return excerpt(&status.message);
    }
    excerpt(String::from_utf8_lossy(body).trim())
}

/// Reads at most `limit` bytes of a body; the rest is left unread.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() >= room {
            body.extend_from_slice(&chunk[..room]);
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A `Retry-After`: seconds, or an HTTP date (a date past is no wait). Values too large to
/// represent are [`Duration::MAX`] (the caller caps what it honours); unreadable ones are none.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        if seconds.is_nan() || seconds < 0.0 {
            return None;
        }
        return Some(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use super::super::test_support::{config, export, request, runtime};
    use super::super::{Delivered, OtlpClient, Protocol};
    use super::*;
    use crate::config::otlp_exporter::SendingQueue;
    use axum::http::{HeaderMap as AxumHeaders, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use evalstream_evaluators::scorers::judge::Secret;
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest,
    };
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use tokio::sync::watch;

    /// One scripted answer.
    struct Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn status(status: u16) -> Reply {
            Reply {
                status,
                headers: Vec::new(),
                body: Vec::new(),
            }
        }

        fn header(mut self, name: &'static str, value: &str) -> Reply {
            self.headers.push((name, value.to_owned()));
            self
        }
    }

    /// What the server got.
    struct Received {
        path: String,
        headers: AxumHeaders,
        body: Vec<u8>,
        at: Instant,
    }

    /// A backend that answers from a script (then 200), records requests, and holds them while
    /// its gate is closed.
    struct Backend {
        script: Mutex<VecDeque<Reply>>,
        received: Mutex<Vec<Received>>,
        gate: watch::Sender<bool>,
    }

    impl Backend {
        fn push(&self, reply: Reply) {
            self.script.lock().unwrap().push_back(reply);
        }

        fn received(&self) -> std::sync::MutexGuard<'_, Vec<Received>> {
            self.received.lock().unwrap()
        }
    }

    async fn handle(
        axum::extract::State(backend): axum::extract::State<Arc<Backend>>,
        uri: Uri,
        headers: AxumHeaders,
        body: axum::body::Bytes,
    ) -> Response {
        backend.received().push(Received {
            path: uri.path().to_owned(),
            headers,
            body: body.to_vec(),
            at: Instant::now(),
        });
        let mut gate = backend.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        let reply = backend.script.lock().unwrap().pop_front();
        let Some(reply) = reply else {
            return StatusCode::OK.into_response();
        };
        let mut response =
            (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
        for (name, value) in reply.headers {
            response
                .headers_mut()
                .insert(name, axum::http::HeaderValue::from_str(&value).unwrap());
        }
        response
    }

    /// Serves a backend on 127.0.0.1, port 0; returns its endpoint.
    fn serve(rt: &tokio::runtime::Runtime) -> (String, Arc<Backend>) {
        let backend = Arc::new(Backend {
            script: Mutex::default(),
            received: Mutex::default(),
            gate: watch::Sender::new(true),
        });
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(backend.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), backend)
    }

    fn start(endpoint: &str, rt: &tokio::runtime::Runtime) -> OtlpClient {
        OtlpClient::start(&config(endpoint), Protocol::HttpProtobuf, rt.handle()).unwrap()
    }

    fn traces(name: &str) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        name: name.into(),
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn gunzip(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn requests_go_to_the_signal_path_gzipped_with_the_headers() {
        let rt = runtime();
        let (endpoint, backend) = serve(&rt);
        let mut cfg = config(&format!("{endpoint}/"));
        cfg.headers.insert(
            "api_key".into(),
            serde_json::from_value::<Secret>(serde_json::json!("k-123")).unwrap(),
        );
        let client = OtlpClient::start(&cfg, Protocol::HttpProtobuf, rt.handle()).unwrap();
        let body = traces("chat").encode_to_vec();
        let delivered = export(&client, Signal::Traces, body.clone()).unwrap();
        assert_eq!(
            delivered,
            Delivered {
                attempts: 1,
                partial_success: None
            }
        );
        assert!(export(&client, Signal::Logs, b"logs".to_vec()).is_ok());
        let received = backend.received();
        assert_eq!(received[0].path, "/v1/traces");
        assert_eq!(received[1].path, "/v1/logs");
        let headers = &received[0].headers;
        assert_eq!(headers["content-type"], PROTOBUF);
        assert_eq!(headers["content-encoding"], "gzip");
        assert_eq!(headers["api_key"], "k-123");
        assert!(
            headers["user-agent"]
                .to_str()
                .unwrap()
                .starts_with("evalstream/")
        );
        assert_eq!(gunzip(&received[0].body), body);
        assert_eq!(
            ExportTraceServiceRequest::decode(gunzip(&received[0].body).as_slice()).unwrap(),
            traces("chat")
        );
        drop(received);

        // Without compression the body goes as it is.
        cfg.compression = Compression::None;
        let plain = OtlpClient::start(&cfg, Protocol::HttpProtobuf, rt.handle()).unwrap();
        assert!(export(&plain, Signal::Traces, body.clone()).is_ok());
        let received = backend.received();
        assert!(received[2].headers.get("content-encoding").is_none());
        assert_eq!(received[2].body, body);
    }

    #[test]
    fn a_503_with_retry_after_is_retried_after_the_asked_delay() {
        let rt = runtime();
        let (endpoint, backend) = serve(&rt);
        let client = start(&endpoint, &rt);
        backend.push(Reply::status(503).header("retry-after", "1"));
        let started = Instant::now();
        let delivered = export(&client, Signal::Logs, b"x".to_vec()).unwrap();
        assert_eq!(delivered.attempts, 2);
        assert!(started.elapsed() >= Duration::from_secs(1));
        let received = backend.received();
        assert!(received[1].at - received[0].at >= Duration::from_secs(1));
        assert_eq!(client.stats().retries, 1);
    }

    #[test]
    fn a_429_without_retry_after_is_retried_with_backoff() {
        let rt = runtime();
        let (endpoint, backend) = serve(&rt);
        let client = start(&endpoint, &rt);
        backend.push(Reply::status(429));
        backend.push(Reply::status(502));
        let delivered = export(&client, Signal::Logs, b"x".to_vec()).unwrap();
        assert_eq!(delivered.attempts, 3);
        let received = backend.received();
        // initial_interval is 100 ms, then 150 ms; jitter only adds.
        assert!(received[1].at - received[0].at >= Duration::from_millis(100));
        assert!(received[2].at - received[1].at >= Duration::from_millis(150));
    }

    #[test]
    fn a_400_fails_at_once_with_the_status_and_message() {
        let rt = runtime();
        let (endpoint, backend) = serve(&rt);
        let client = start(&endpoint, &rt);
        let status = tonic_types::Status {
            code: 3,
            message: "no resource".into(),
            details: Vec::new(),
        };
        backend.push(Reply {
            status: 400,
            headers: vec![("content-type", PROTOBUF.into())],
            body: status.encode_to_vec(),
        });
        let failed = export(&client, Signal::Logs, b"x".to_vec()).unwrap_err();
        assert_eq!((failed.attempts, failed.gave_up), (1, false));
        assert_eq!(
            failed.error,
            ExportError::Http {
                status: 400,
                message: "no resource".into()
            }
        );
        assert_eq!(
            failed.to_string(),
            "the backend answered http 400: no resource"
        );
        // A text body is quoted, up to a limit.
        backend.push(Reply {
            status: 401,
            headers: Vec::new(),
            body: "x".repeat(10_000).into_bytes(),
        });
        let failed = export(&client, Signal::Logs, b"x".to_vec()).unwrap_err();
        assert!(failed.to_string().len() < 400, "{failed}");
        assert_eq!(backend.received().len(), 2);
    }

    /// `Retry-After: 1e20` overflows `Duration::from_secs_f64`, which panics.
    #[test]
    fn an_absurd_retry_after_does_not_panic_and_gives_up_past_max_elapsed_time() {
        let rt = runtime();
        let (endpoint, backend) = serve(&rt);
        let mut cfg = config(&endpoint);
        cfg.retry_on_failure.max_elapsed_time = Duration::from_secs(5);
        let client = OtlpClient::start(&cfg, Protocol::HttpProtobuf, rt.handle()).unwrap();
        for value in ["1e20", "inf", "99999999999999999999999"] {
            backend.push(Reply::status(503).header("retry-after", value));
            let failed = export(&client, Signal::Logs, b"x".to_vec()).unwrap_err();
            assert!(failed.gave_up, "{value}: {failed}");
            assert_eq!(
                failed.attempts, 1,
                "{value}: the capped wait passes the limit"
            );
        }
        // An unreadable value is ignored: the backoff applies.
        backend.push(Reply::status(503).header("retry-after", "soon"));
        assert_eq!(
            export(&client, Signal::Logs, b"x".to_vec())
                .unwrap()
                .attempts,
            2
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("1e20", now), Some(Duration::MAX));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("NaN", now), None);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Someday", now), None);
    }

    #[test]
    fn a_redirect_is_not_followed() {
        let rt = runtime();
        let (endpoint, backend) = serve(&rt);
        let client = start(&endpoint, &rt);
        backend.push(Reply::status(307).header("location", &format!("{endpoint}/elsewhere")));
        let failed = export(&client, Signal::Logs, b"x".to_vec()).unwrap_err();
        assert_eq!(failed.attempts, 1);
        assert!(
            failed
                .to_string()
                .contains("http 307: redirects are not followed"),
            "{failed}"
        );
        let received = backend.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].path, "/v1/logs");
    }

    #[test]
    fn partial_success_is_read_from_a_protobuf_body() {
        let rt = runtime();
        let (endpoint, backend) = serve(&rt);
        let client = start(&endpoint, &rt);
        let response = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 2,
                error_message: "spans without names".into(),
            }),
        };
        backend.push(Reply {
            status: 200,
            headers: vec![("content-type", PROTOBUF.into())],
            body: response.encode_to_vec(),
        });
        let delivered = export(&client, Signal::Traces, b"x".to_vec()).unwrap();
        assert_eq!(
            delivered.partial_success,
            Some(PartialSuccess {
                rejected: 2,
                message: "spans without names".into()
            })
        );
        // A body too large to be a response is not read whole, and the request is delivered.
        backend.push(Reply {
            status: 200,
            headers: vec![("content-type", PROTOBUF.into())],
            body: vec![0x0a; 8 << 20],
        });
        let delivered = export(&client, Signal::Traces, b"x".to_vec()).unwrap();
        assert_eq!(delivered.partial_success, None);
        assert_eq!(client.stats().rejected_items, 2);
    }

    /// Waits until `check` holds, for at most 10 s.
    fn eventually(check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_full_queue_gives_requests_back_or_makes_the_sender_wait() {
        let rt = runtime();
        let (endpoint, backend) = serve(&rt);
        let mut cfg = config(&endpoint);
        cfg.sending_queue = SendingQueue {
            enabled: true,
            num_consumers: 1,
            queue_size: 1,
            batch: None,
        };
        let client = OtlpClient::start(&cfg, Protocol::HttpProtobuf, rt.handle()).unwrap();
        backend.gate.send_replace(false);
        let (first, first_done) = request(Signal::Logs, b"1".to_vec());
        let (second, second_done) = request(Signal::Logs, b"2".to_vec());
        client.send(first);
        client.send(second);
        eventually(|| backend.received().len() == 1);
        let stats = client.stats();
        assert_eq!((stats.in_flight, stats.queued), (1, 1));

        let (third, third_done) = request(Signal::Logs, b"3".to_vec());
        let given_back = client.try_send(third).unwrap_err();
        assert_eq!(given_back.body.as_ref(), b"3");

        let (fourth, fourth_done) = request(Signal::Logs, b"4".to_vec());
        let (sent_tx, sent) = std::sync::mpsc::channel();
        let sender = {
            let client = client.clone();
            std::thread::spawn(move || {
                client.send(fourth);
                sent_tx.send(()).unwrap();
            })
        };
        assert!(
            sent.recv_timeout(Duration::from_millis(300)).is_err(),
            "send waits for room"
        );
        assert!(!client.flush(Duration::from_millis(100)));

        backend.gate.send_replace(true);
        sent.recv_timeout(Duration::from_secs(10))
            .expect("send returns once there is room");
        sender.join().unwrap();
        assert!(client.flush(Duration::from_secs(10)));
        for done in [first_done, second_done, fourth_done] {
            assert!(
                done.try_recv().unwrap().is_ok(),
                "flush waited for every callback"
            );
        }
        drop(given_back);
        assert!(
            third_done.try_recv().is_err(),
            "a request given back is not acknowledged"
        );
        let stats = client.stats();
        assert_eq!((stats.delivered, stats.queued, stats.in_flight), (3, 0, 0));
        // Each accepted request reached the backend once; the one given back did not. (Their
        // order is not promised: the first, held at the gate, may be retried after the second.)
        let mut bodies: Vec<Vec<u8>> = backend.received().iter().map(|r| gunzip(&r.body)).collect();
        bodies.sort();
        bodies.dedup();
        assert_eq!(bodies, [b"1".to_vec(), b"2".to_vec(), b"4".to_vec()]);
    }

    #[test]
    fn retries_off_is_one_attempt() {
        let rt = runtime();
        let (endpoint, backend) = serve(&rt);
        let mut cfg = config(&endpoint);
        cfg.retry_on_failure.enabled = false;
        let client = OtlpClient::start(&cfg, Protocol::HttpProtobuf, rt.handle()).unwrap();
        backend.push(Reply::status(503));
        let failed = export(&client, Signal::Logs, b"x".to_vec()).unwrap_err();
        assert_eq!((failed.attempts, failed.gave_up), (1, true));
        assert_eq!(
            failed.to_string(),
            "the backend answered http 503: service unavailable (gave up after 1 attempt)"
        );
    }

    #[test]
    fn a_stopped_runtime_still_acknowledges_every_request() {
        let rt = runtime();
        let (endpoint, backend) = serve(&rt);
        let client = start(&endpoint, &rt);
        backend.gate.send_replace(false);
        let (held, held_done) = request(Signal::Logs, b"1".to_vec());
        client.send(held);
        eventually(|| backend.received().len() == 1);
        rt.shutdown_timeout(Duration::from_secs(1));
        let failed = held_done
            .recv_timeout(Duration::from_secs(5))
            .unwrap()
            .unwrap_err();
        assert_eq!(failed.error, ExportError::Stopped);
        assert!(client.flush(Duration::ZERO));
        // Sent after the runtime is gone: acknowledged at once.
        let (late, late_done) = request(Signal::Logs, b"2".to_vec());
        client.send(late);
        assert_eq!(
            late_done
                .recv_timeout(Duration::from_secs(5))
                .unwrap()
                .unwrap_err()
                .error,
            ExportError::Stopped
        );
    }
}
