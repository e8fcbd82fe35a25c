//! The `otlp` (gRPC) and `otlphttp` exporters as the pipeline sees them: each trace's events go
//! as one `ExportLogsServiceRequest`, its evaluator spans (when asked) as one
//! `ExportTraceServiceRequest`, through the [`OtlpClient`]'s bounded queue; the inputs are let go
//! once the backend accepted, and rejected when it refused for good or retries ran out, so the
//! receiver can answer or dead-letter them.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

use super::{ExportRequest, OtlpClient, Signal};
use crate::pipeline::ack::{Rejection, Token};
use crate::pipeline::export::{Exporter, Outputs, Shapes};

/// An OTLP backend.
pub struct OtlpExporter {
    id: String,
    client: OtlpClient,
    shapes: Shapes,
}

impl OtlpExporter {
    /// An exporter with id `id` sending the `shapes` asked for through `client`.
    pub fn new(id: &str, client: OtlpClient, shapes: Shapes) -> OtlpExporter {
        OtlpExporter {
            id: id.to_owned(),
            client,
            shapes,
        }
    }

    fn send(&self, signal: Signal, body: Vec<u8>, tokens: &[Token]) {
        let tokens = tokens.to_vec();
        let id = self.id.clone();
        self.client
            .send(ExportRequest::new(signal, body, move |outcome| {
                if let Err(failed) = outcome {
                    tracing::warn!(exporter = %id, error = %failed, "evaluations not exported");
                    for token in &tokens {
                        token.reject(Rejection {
                            error_type: "delivery",
                            message: format!("exporter {id}: {failed}"),
                            output: None,
                        });
                    }
                }
                // Dropping the tokens lets the inputs go.
            }));
    }
}

impl Exporter for OtlpExporter {
    fn id(&self) -> &str {
        &self.id
    }

    fn shapes(&self) -> Shapes {
        self.shapes
    }

    fn export(&self, outputs: &Outputs, tokens: &[Token]) {
        if let (true, Some(events)) = (self.shapes.events, &outputs.events) {
            self.send(Signal::Logs, events.encode_to_vec(), tokens);
        }
        if let (true, Some(spans)) = (self.shapes.spans, &outputs.spans) {
            self.send(Signal::Traces, spans.encode_to_vec(), tokens);
        }
    }

    fn forward(&self, request: &ExportTraceServiceRequest, tokens: &[Token]) {
        self.send(Signal::Traces, request.encode_to_vec(), tokens);
    }

    fn flush(&self, timeout: Duration) -> bool {
        self.client.flush(timeout)
    }
}
