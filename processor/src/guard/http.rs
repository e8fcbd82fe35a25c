//! The guard API over HTTP/JSON: `POST /v1/check` and `POST /v1/budget`, with the protobuf
//! messages' field names (`snake_case`), `action` as `"allow"`, `"block"` or `"redact"`, and
//! `otlp_trace` as an OTLP/JSON `ExportTraceServiceRequest`. A body that is not such JSON, or has
//! an unknown field, is `400` with the path of what is wrong; an unknown guard set or budget
//! `404`; a body over `guard.max_request_bytes` `413`. Errors are `{"error": "..."}`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;

use super::proto::{BudgetRequest, CheckRequest};
use super::{GuardError, Guards};

/// Connections open at once at most (as the metrics endpoint's default).
const MAX_CONNECTIONS: usize = 1024;
/// How long a client may take to send its request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open requests may take once shutdown has begun.
const GRACE: Duration = Duration::from_secs(5);

/// Serves the API on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    guards: Arc<Guards>,
    max_request_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/v1/check", post(check))
        .route("/v1/budget", post(budget))
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .with_state(guards);
    crate::telemetry::http::serve_router(
        listener,
        app,
        MAX_CONNECTIONS,
        HEADER_READ_TIMEOUT,
        GRACE,
        shutdown,
    )
    .await
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn refused(e: GuardError) -> Response {
    match e {
        GuardError::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
        GuardError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        GuardError::Internal(m) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

/// The body as `T`, or what is wrong with it and where.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        format!(
            "invalid request body: {}",
            evalstream_evaluators::spec::path_error(&e)
        )
    })
}

async fn check(State(guards): State<Arc<Guards>>, body: Bytes) -> Response {
    let request: CheckRequest = match parse(&body) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match guards.check(request).await {
        Ok(response) => Json(response).into_response(),
        Err(e) => refused(e),
    }
}

async fn budget(State(guards): State<Arc<Guards>>, body: Bytes) -> Response {
    let request: BudgetRequest = match parse(&body) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match guards.budget(&request) {
        Ok(response) => Json(response).into_response(),
        Err(e) => refused(e),
    }
}

/// `action` as its name in JSON.
pub mod action {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::guard::proto::Action;

    /// Writes the action's name.
    pub fn serialize<S: Serializer>(action: &i32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(crate::guard::action_name(*action))
    }

    /// Reads an action's name.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        let name = String::deserialize(d)?;
        Ok(match name.as_str() {
            "allow" => Action::Allow,
            "block" => Action::Block,
            "redact" => Action::Redact,
            _ => Action::Unspecified,
        } as i32)
    }
}

/// `otlp_trace` in JSON: the OTLP/JSON request, kept protobuf-encoded as the message holds it.
pub mod otlp_json {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes the encoded request as OTLP/JSON (nothing when empty).
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let request =
            ExportTraceServiceRequest::decode(bytes).map_err(serde::ser::Error::custom)?;
        request.serialize(s)
    }

    /// Reads an OTLP/JSON request and encodes it.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(ExportTraceServiceRequest::deserialize(d)?.encode_to_vec())
    }
}
