//! A local OpenAI-compatible chat-completions server standing in for a judge model, with
//! programmable latency and faults: the tests and the benchmark start it, because no model is
//! reachable here.
//!
//! It answers every request with a JSON verdict: score 0 when the user message contains
//! `FAIL_ME`, else 1 (`label` `fail`/`pass`). Queued faults are served first, one per request:
//! 429 with `Retry-After`, 500, a hang past the client's timeout, a reply that is not JSON, a
//! refusal, hostile answers (a redirect, a huge body, a `Retry-After` of any text, any reply). While it is [down](Behaviour::set_down) every request gets a 503: an outage. It
//! records the requests it received, and the most concurrent ones.
//!
//! `evalstream judge-server` (hidden) serves it on a given address for benchmarks, and for the
//! demo as the chat model of its application (`--reply`: the answers to give, in order).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One fault, served to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// 429 with `Retry-After` in seconds.
    RateLimited(f64),
    /// 500.
    ServerError,
    /// No answer for this long.
    Hang(Duration),
    /// A 200 whose message is not JSON.
    NotJson,
    /// A 200 whose message is a refusal.
    Refusal,
    /// 429 with this `Retry-After` header, as written.
    RetryAfterRaw(String),
    /// A 307 to this URL.
    Redirect(String),
    /// This status with a body of this many bytes.
    HugeBody(u16, usize),
    /// A 200 whose message content is this text, from the model the request named: a scripted
    /// chat model (`evalstream judge-server --reply`).
    Reply(String),
}

/// What the server does and has seen.
#[derive(Debug, Default)]
pub struct Behaviour {
    latency: Mutex<Duration>,
    down: AtomicBool,
    record: AtomicBool,
    faults: Mutex<VecDeque<Fault>>,
    received: Mutex<Vec<Value>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    answered: AtomicUsize,
}

impl Behaviour {
    /// Every answer waits this long first.
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock().unwrap_or_else(|e| e.into_inner()) = latency;
    }

    /// An outage: while down, every request gets a 503 after the latency.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Release);
    }

    /// Stops keeping request bodies (a benchmark's millions would fill memory); counts go on.
    pub fn forget_requests(&self) {
        self.record.store(false, Ordering::Release);
    }

    /// Queues faults for the next requests.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(faults);
    }

    /// The request bodies received, in order.
    pub fn received(&self) -> Vec<Value> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests answered with a verdict.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Acquire)
    }

    /// The most requests that were being served at once.
    pub fn most_in_flight(&self) -> usize {
        self.most_in_flight.load(Ordering::Acquire)
    }
}

struct InFlight<'a>(&'a Behaviour);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn completion(content: Value, refusal: Option<&str>) -> Value {
    completion_by("judge-model", content, refusal)
}

fn completion_by(model: &str, content: Value, refusal: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-local",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": refusal}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    })
}

async fn chat(State(b): State<Arc<Behaviour>>, body: axum::Json<Value>) -> Response {
    let now = b.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
    b.most_in_flight.fetch_max(now, Ordering::AcqRel);
    let _guard = InFlight(&b);
    let body = body.0;
    if b.record.load(Ordering::Acquire) {
        b.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(body.clone());
    }
    let latency = *b.latency.lock().unwrap_or_else(|e| e.into_inner());
    let fault = b
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop_front();
    tokio::time::sleep(latency).await;
    if b.down.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    match fault {
        Some(Fault::RateLimited(seconds)) => {
            let mut headers = HeaderMap::new();
            if let Ok(v) = seconds.to_string().parse() {
                headers.insert(header::RETRY_AFTER, v);
            }
            return (StatusCode::TOO_MANY_REQUESTS, headers, "rate limited").into_response();
        }
        Some(Fault::ServerError) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "overloaded").into_response();
        }
        Some(Fault::Hang(d)) => tokio::time::sleep(d).await,
        Some(Fault::NotJson) => {
            return axum::Json(completion(json!("The answer seems fine."), None)).into_response();
        }
        Some(Fault::RetryAfterRaw(value)) => {
            let mut headers = HeaderMap::new();
            if let Ok(v) = value.parse() {
                headers.insert(header::RETRY_AFTER, v);
            }
            return (StatusCode::TOO_MANY_REQUESTS, headers, "rate limited").into_response();
        }
        Some(Fault::Redirect(to)) => {
            let mut headers = HeaderMap::new();
            if let Ok(v) = to.parse() {
                headers.insert(header::LOCATION, v);
            }
            return (StatusCode::TEMPORARY_REDIRECT, headers, "moved").into_response();
        }
        Some(Fault::HugeBody(status, bytes)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, "x".repeat(bytes)).into_response();
        }
        Some(Fault::Reply(text)) => {
            let model = body["model"].as_str().unwrap_or("judge-model");
            return axum::Json(completion_by(model, json!(text), None)).into_response();
        }
        Some(Fault::Refusal) => {
            return axum::Json(completion(
                Value::Null,
                Some("I can't evaluate this content."),
            ))
            .into_response();
        }
        None => {}
    }
    let user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let pass = !user.contains("FAIL_ME");
    let verdict = json!({
        "score": if pass { 1 } else { 0 },
        "label": if pass { "pass" } else { "fail" },
        "explanation": if pass { "Looks right." } else { "Marked to fail." },
    });
    b.answered.fetch_add(1, Ordering::AcqRel);
    axum::Json(completion(json!(verdict.to_string()), None)).into_response()
}

/// The server's routes.
pub fn router(behaviour: Arc<Behaviour>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(behaviour)
}

/// Serves on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    behaviour: Arc<Behaviour>,
) -> std::io::Result<()> {
    axum::serve(listener, router(behaviour)).await
}

impl Behaviour {
    /// A server that records requests, answers at once, with no faults.
    pub fn new() -> Behaviour {
        Behaviour {
            record: AtomicBool::new(true),
            ..Behaviour::default()
        }
    }
}

/// Starts a server on a free loopback port on its own thread; returns its base URL (`…/v1`).
pub fn start() -> std::io::Result<(String, Arc<Behaviour>)> {
    let behaviour = Arc::new(Behaviour::new());
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let address: SocketAddr = std_listener.local_addr()?;
    let serving = behaviour.clone();
    std::thread::Builder::new()
        .name("judge-server".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) {
                    let _ = serve(listener, serving).await;
                }
            });
        })?;
    Ok((format!("http://{address}/v1"), behaviour))
}
