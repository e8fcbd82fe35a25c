//! The worker's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `GET /drift`, and the one
//! action, `POST /drift/ack`.
//!
//! Served by hyper directly rather than `axum::serve`, for two limits `axum::serve` does not set:
//! a **header-read timeout** (without a timer hyper waits for headers for ever, and 1,000 slow
//! connections were held open) and a **connection cap** (past it the listener stops accepting,
//! so connections wait in the kernel's backlog instead of taking file descriptors: with a low fd
//! limit, held connections had made `/readyz` time out). The routes are an axum router.
//!
//! `POST /drift/ack` changes state, so it needs `Authorization: Bearer <telemetry.admin_token>`;
//! without a configured token it is refused (403). It never acknowledges every series by default:
//! that takes an explicit `all=true`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use evalstream_evaluators::scorers::judge::Secret;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::telemetry::metrics::Metrics;

/// How the endpoint protects itself.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; past it, new ones wait to be accepted.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (and, between requests on a kept
    /// connection, to start the next one).
    pub header_read_timeout: Duration,
    /// The bearer token `POST /drift/ack` needs; none: the action is refused.
    pub admin_token: Option<Secret>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            admin_token: None,
        }
    }
}

/// Series listed by `GET /drift` when no `limit` is given, and the most a request may ask for.
const DRIFT_PAGE: usize = 100;
const DRIFT_PAGE_MAX: usize = 1_000;

/// How long shutdown waits for open connections to finish their request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn drift_off() -> Response {
    (
        StatusCode::NOT_FOUND,
        "drift detection is off (no `drift:` section)",
    )
        .into_response()
}

/// `GET /drift?limit=N&offset=M&status=S`: one page of the watched series (at most
/// [`DRIFT_PAGE_MAX`]), with the total in `x-total-count`.
async fn drift_listing(
    metrics: Arc<Metrics>,
    params: BTreeMap<String, String>,
) -> Result<Response, (StatusCode, String)> {
    let Some(drift) = metrics.drift() else {
        return Ok(drift_off());
    };
    let number = |key: &str, default: usize| -> Result<usize, (StatusCode, String)> {
        params.get(key).map_or(Ok(default), |v| {
            v.parse().map_err(|_| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("`{key}`: not a non-negative integer"),
                )
            })
        })
    };
    let limit = number("limit", DRIFT_PAGE)?;
    if limit > DRIFT_PAGE_MAX {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("`limit`: at most {DRIFT_PAGE_MAX}"),
        ));
    }
    let offset = number("offset", 0)?;
    let status = params.get("status").map(String::as_str);
    if let Some(unknown) = params
        .keys()
        .find(|k| !["limit", "offset", "status"].contains(&k.as_str()))
    {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("unknown parameter `{unknown}` (limit, offset, status)"),
        ));
    }
    let mut series = drift.summary();
    if let Some(status) = status {
        series.retain(|s| s["status"] == status);
    }
    let total = series.len();
    let page: Vec<_> = series.into_iter().skip(offset).take(limit).collect();
    Ok((
        [(header::HeaderName::from_static("x-total-count"), total)],
        axum::Json(page),
    )
        .into_response())
}

/// Whether `headers` carry the admin token.
fn authorized(headers: &HeaderMap, token: &Secret) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    bool::from(given.as_bytes().ct_eq(token.expose().as_bytes()))
}

/// `POST /drift/ack?evaluator=NAME&LABEL=VALUE…`, or `?all=true`: the drifted series matching
/// learn a new baseline.
async fn drift_ack(
    metrics: Arc<Metrics>,
    token: Option<Secret>,
    headers: HeaderMap,
    mut params: BTreeMap<String, String>,
) -> Response {
    let Some(token) = token else {
        return (
            StatusCode::FORBIDDEN,
            "acknowledging drift needs `telemetry.admin_token` in the configuration",
        )
            .into_response();
    };
    if !authorized(&headers, &token) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "send `Authorization: Bearer <telemetry.admin_token>`",
        )
            .into_response();
    }
    let Some(drift) = metrics.drift() else {
        return drift_off();
    };
    let all = match params.remove("all").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return (StatusCode::BAD_REQUEST, "`all`: true or false").into_response(),
    };
    let evaluator = params.remove("evaluator");
    if evaluator.is_none() && params.is_empty() && !all {
        return (
            StatusCode::BAD_REQUEST,
            "name the series (`evaluator=NAME`, segment labels) or acknowledge every drifted series with `all=true`",
        )
            .into_response();
    }
    let filters: Vec<(String, String)> = params.into_iter().collect();
    match drift.acknowledge(evaluator.as_deref(), &filters) {
        Ok(n) => axum::Json(serde_json::json!({ "acknowledged": n })).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

/// The routes.
fn router(metrics: Arc<Metrics>, admin_token: Option<Secret>) -> axum::Router {
    let for_metrics = metrics.clone();
    let for_ready = metrics.clone();
    let for_listing = metrics.clone();
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = for_metrics.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let m = for_ready.clone();
                async move {
                    match m.readiness() {
                        Ok(()) => (StatusCode::OK, "ready".to_owned()),
                        Err(reason) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {reason}"),
                        ),
                    }
                }
            }),
        )
        .route(
            "/drift",
            get(move |Query(params): Query<BTreeMap<String, String>>| {
                drift_listing(for_listing.clone(), params)
            }),
        )
        .route(
            "/drift/ack",
            post(
                move |headers: HeaderMap, Query(params): Query<BTreeMap<String, String>>| {
                    drift_ack(metrics.clone(), admin_token.clone(), headers, params)
                },
            ),
        )
}

/// Serves the endpoint on `listener` until `shutdown` completes, then lets open requests finish
/// for a few seconds.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(metrics, limits.admin_token.clone());
    serve_router(
        listener,
        app,
        limits.max_connections,
        limits.header_read_timeout,
        SHUTDOWN_GRACE,
        shutdown,
    )
    .await
}

/// Serves `app` on `listener` (HTTP/1.1) with a connection cap and a header-read timeout until
/// `shutdown` completes; then closes the listener and lets open requests finish for at most
/// `grace`. Shared with the OTLP receiver's HTTP listener.
pub(crate) async fn serve_router(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    max_connections: usize,
    header_read_timeout: Duration,
    grace: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // Take a slot before accepting: at the cap, connections wait in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, mostly: wait rather than spin.
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    // Closed at once, so new clients are refused instead of waiting in the backlog for a server
    // that no longer accepts.
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {}
    }
    Ok(())
}

/// Binds the endpoint's address.
pub async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let addr: SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}"))
    })?;
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::telemetry::drift::DriftConfig;
    use crate::telemetry::drift::series::Drift;
    use crate::telemetry::drift::series::testing::feed;
    use crate::telemetry::labels::Segment;
    use evalstream_evaluators::spec::{build_set, default_specs};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    const TOKEN: &str = "0123456789abcdef-admin";

    /// A worker's metrics with drift on (segment `model`) and five drift series.
    fn metrics() -> Arc<Metrics> {
        let set = build_set(&default_specs()).unwrap();
        let metrics = Metrics::new(set.evaluators(), &[], 0).unwrap();
        let config = DriftConfig {
            segments: vec![Segment::Model],
            ..DriftConfig::default()
        };
        let drift = Arc::new(Drift::new(&config, set.evaluators()).unwrap());
        for model in ["m1", "m2", "m3", "m4", "m5"] {
            feed(&drift, model, 1, |_| true);
        }
        metrics.attach_drift(drift).unwrap();
        metrics
    }

    /// Serves on a free loopback port; returns the address.
    async fn start(limits: Limits) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, metrics(), limits, std::future::pending()));
        address
    }

    /// One request on a new connection: the status and the whole response.
    async fn request(address: SocketAddr, head: &str) -> (u16, String) {
        let mut s = TcpStream::connect(address).await.unwrap();
        s.write_all(format!("{head}\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut response))
            .await
            .unwrap()
            .unwrap();
        let status = response.split(' ').nth(1).unwrap().parse().unwrap();
        (status, response)
    }

    /// 1,000 slow connections were held open: nothing ever timed out a request's headers.
    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_cut_off() {
        let address = start(Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        let mut slow = TcpStream::connect(address).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buffer = Vec::new();
        // Bounded so the test fails rather than hangs: the server must close the connection.
        let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buffer))
            .await
            .expect("the server still holds the connection");
        assert!(closed.is_ok());
        assert!(!String::from_utf8_lossy(&buffer).contains("200 OK"));
        // An idle connection that sends nothing at all is cut off too.
        let mut idle = TcpStream::connect(address).await.unwrap();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut buffer)).await;
        assert!(closed.is_ok(), "an idle connection is held");
        assert_eq!(request(address, "GET /healthz HTTP/1.1").await.0, 200);
    }

    /// With no cap, held connections took every file descriptor and `/readyz` timed out.
    #[tokio::test]
    async fn connections_past_the_cap_wait_until_one_closes() {
        let address = start(Limits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(60),
            ..Limits::default()
        })
        .await;
        let held = [
            TcpStream::connect(address).await.unwrap(),
            TcpStream::connect(address).await.unwrap(),
        ];
        let waiting = tokio::spawn(request(address, "GET /healthz HTTP/1.1"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !waiting.is_finished(),
            "a third connection was served at a cap of two"
        );
        drop(held);
        let (status, _) = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("served once a slot is free")
            .unwrap();
        assert_eq!(status, 200);
    }

    /// `POST /drift/ack` had no authentication, and with no parameter acknowledged every series.
    #[tokio::test]
    async fn acknowledging_drift_needs_the_admin_token_and_an_explicit_all() {
        let open = start(Limits::default()).await;
        let (status, body) = request(open, "POST /drift/ack?all=true HTTP/1.1").await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("telemetry.admin_token"), "{body}");

        let guarded = start(Limits {
            admin_token: Some(serde_json::from_value(serde_json::json!(TOKEN)).unwrap()),
            ..Limits::default()
        })
        .await;
        let ack = |query: &str, token: &str| {
            format!(
                "POST /drift/ack{query} HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Length: 0"
            )
        };
        assert_eq!(
            request(guarded, "POST /drift/ack?all=true HTTP/1.1")
                .await
                .0,
            401
        );
        assert_eq!(
            request(guarded, &ack("?all=true", "wrong-token-0000000"))
                .await
                .0,
            401
        );
        let (status, body) = request(guarded, &ack("", TOKEN)).await;
        assert_eq!(
            status, 400,
            "acknowledging everything takes all=true: {body}"
        );
        assert!(body.contains("all=true"), "{body}");
        let (status, body) = request(guarded, &ack("?all=true", TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.ends_with("{\"acknowledged\":0}"), "{body}");
        let (status, _) = request(guarded, &ack("?evaluator=refusal&model=m1", TOKEN)).await;
        assert_eq!(status, 200);
    }

    /// `GET /drift` returned 205 MB when series carried huge segment values: it is paged now.
    #[tokio::test]
    async fn the_drift_listing_is_paged() {
        let address = start(Limits::default()).await;
        let page = |query: &'static str| async move {
            let (status, response) = request(address, &format!("GET /drift{query} HTTP/1.1")).await;
            let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
            (status, response, body)
        };
        let (status, response, body) = page("?limit=2").await;
        assert_eq!(status, 200, "{response}");
        assert!(
            response.to_ascii_lowercase().contains("x-total-count: 5"),
            "{response}"
        );
        assert_eq!(
            serde_json::from_str::<Vec<serde_json::Value>>(&body)
                .unwrap()
                .len(),
            2
        );
        let (_, _, body) = page("?offset=4").await;
        assert_eq!(
            serde_json::from_str::<Vec<serde_json::Value>>(&body)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(page("?limit=5000").await.0, 400);
        assert_eq!(page("?colour=red").await.0, 400);
    }
}
