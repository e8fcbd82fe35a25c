//! The guard API over gRPC (`evalstream.v1.Guard`) on tonic. A missing field or a malformed value
//! is `INVALID_ARGUMENT`, an unknown guard set or budget `NOT_FOUND`, a message over
//! `guard.max_request_bytes` `OUT_OF_RANGE` (tonic's answer for it); none of them is worth
//! retrying.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use super::proto::guard_server::{Guard, GuardServer};
use super::proto::{BudgetRequest, BudgetResponse, CheckRequest, CheckResponse};
use super::{GuardError, Guards};

struct Service {
    guards: Arc<Guards>,
}

fn status(error: GuardError) -> tonic::Status {
    match error {
        GuardError::Invalid(message) => tonic::Status::invalid_argument(message),
        GuardError::NotFound(message) => tonic::Status::not_found(message),
        GuardError::Internal(message) => tonic::Status::internal(message),
    }
}

#[tonic::async_trait]
impl Guard for Service {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        self.guards
            .check(request.into_inner())
            .await
            .map(tonic::Response::new)
            .map_err(status)
    }

    async fn budget(
        &self,
        request: tonic::Request<BudgetRequest>,
    ) -> Result<tonic::Response<BudgetResponse>, tonic::Status> {
        self.guards
            .budget(&request.into_inner())
            .map(tonic::Response::new)
            .map_err(status)
    }
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    guards: Arc<Guards>,
    max_request_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let service = GuardServer::from_arc(Arc::new(Service { guards }))
        .max_decoding_message_size(max_request_bytes);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
