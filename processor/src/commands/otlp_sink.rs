//! `evalstream otlp-sink` (hidden): a minimal OTLP/HTTP backend for benchmarks. It accepts
//! `POST /v1/logs` and `POST /v1/traces` (protobuf, optionally gzip), answers 200 at once, and
//! counts requests, log records and spans; `GET /stats` returns the counts as JSON, so a
//! benchmark can check every evaluation arrived. Bodies are decoded to count what they hold:
//! that is the sink's CPU, which the benchmark reports apart from the worker's.

use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use evalstream_evaluators::otlp::types::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message as _;

/// What arrived so far.
#[derive(Debug, Default)]
pub struct Counts {
    requests: AtomicU64,
    log_records: AtomicU64,
    spans: AtomicU64,
    bytes: AtomicU64,
    undecodable: AtomicU64,
}

/// Serves on `listener` until the future ends.
pub async fn serve(listener: tokio::net::TcpListener, counts: Arc<Counts>) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/v1/logs", post(logs))
        .route("/v1/traces", post(traces))
        .route("/stats", get(stats))
        .with_state(counts);
    axum::serve(listener, app).await
}

/// The body as sent, inflated when gzip.
fn inflate(headers: &HeaderMap, body: Bytes) -> Option<Vec<u8>> {
    if headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"))
    {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .ok()?;
        Some(out)
    } else {
        Some(body.to_vec())
    }
}

async fn logs(State(counts): State<Arc<Counts>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    match inflate(&headers, body).and_then(|b| ExportLogsServiceRequest::decode(&b[..]).ok()) {
        Some(request) => {
            let records = request
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len() as u64)
                .sum();
            counts.log_records.fetch_add(records, Ordering::Relaxed);
            StatusCode::OK
        }
        None => {
            counts.undecodable.fetch_add(1, Ordering::Relaxed);
            StatusCode::BAD_REQUEST
        }
    }
}

async fn traces(State(counts): State<Arc<Counts>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    match inflate(&headers, body).and_then(|b| ExportTraceServiceRequest::decode(&b[..]).ok()) {
        Some(request) => {
            let spans = evalstream_evaluators::otlp::span_count(&request) as u64;
            counts.spans.fetch_add(spans, Ordering::Relaxed);
            StatusCode::OK
        }
        None => {
            counts.undecodable.fetch_add(1, Ordering::Relaxed);
            StatusCode::BAD_REQUEST
        }
    }
}

async fn stats(State(counts): State<Arc<Counts>>) -> axum::Json<serde_json::Value> {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    axum::Json(serde_json::json!({
        "requests": load(&counts.requests),
        "log_records": load(&counts.log_records),
        "spans": load(&counts.spans),
        "bytes": load(&counts.bytes),
        "undecodable": load(&counts.undecodable),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    #[tokio::test]
    async fn counts_log_records_plain_and_gzip_and_refuses_garbage() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        tokio::spawn(serve(listener, counts.clone()));
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord::default(); 3],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gzip, &request).unwrap();
        let client = reqwest::Client::new();
        let url = format!("http://{address}/v1/logs");
        let plain = client
            .post(&url)
            .body(request.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(plain.status(), 200);
        let zipped = client
            .post(&url)
            .header("content-encoding", "gzip")
            .body(gzip.finish().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(zipped.status(), 200);
        let garbage = client.post(&url).body(vec![0xff; 9]).send().await.unwrap();
        assert_eq!(garbage.status(), 400);
        let stats: serde_json::Value = client
            .get(format!("http://{address}/stats"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap();
        assert_eq!(stats["log_records"], 6);
        assert_eq!(stats["requests"], 3);
        assert_eq!(stats["undecodable"], 1);
    }
}
