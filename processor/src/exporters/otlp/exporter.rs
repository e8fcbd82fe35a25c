//! The `otlp` (gRPC) and `otlphttp` exporters as the pipeline sees them: the events of many
//! traces go together as one `ExportLogsServiceRequest`, their evaluator spans (when asked) and
//! forwarded spans as one `ExportTraceServiceRequest` ([`BatchConfig`]), through the
//! [`OtlpClient`]'s bounded queue; the inputs are let go once the backend accepted, and rejected
//! when it refused for good or retries ran out, so the receiver can answer or dead-letter them.
//!
//! A batch is built by appending encoded requests: both messages are one repeated field, and
//! protobuf reads concatenated messages as one with the repeated fields joined, so no trace's
//! output is decoded or copied again.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

use super::{ExportRequest, OtlpClient, Signal};
use crate::config::otlp_exporter::BatchConfig;
use crate::pipeline::ack::Token;
use crate::pipeline::export::{Exporter, Outputs, Shapes};

/// An OTLP backend.
pub struct OtlpExporter {
    shared: Arc<Shared>,
    shapes: Shapes,
}

/// What the exporter and its flushing thread share.
struct Shared {
    id: String,
    client: OtlpClient,
    batch: BatchConfig,
    logs: Mutex<Pending>,
    traces: Mutex<Pending>,
}

/// A request being gathered.
#[derive(Default)]
struct Pending {
    /// Encoded requests, appended.
    body: Vec<u8>,
    /// Log records or spans in it.
    items: usize,
    /// The inputs it came from.
    tokens: Vec<Token>,
    /// When its first item came.
    since: Option<Instant>,
}

impl Pending {
    fn take(&mut self) -> Pending {
        std::mem::take(self)
    }
}

impl OtlpExporter {
    /// An exporter with id `id` sending the `shapes` asked for through `client`, gathering
    /// traces into requests as `batch` says. Starts the thread that sends a request whose
    /// oldest item has waited `flush_timeout`; it stops with the exporter.
    pub fn new(
        id: &str,
        client: OtlpClient,
        shapes: Shapes,
        batch: BatchConfig,
    ) -> std::io::Result<OtlpExporter> {
        let shared = Arc::new(Shared {
            id: id.to_owned(),
            client,
            batch,
            logs: Mutex::new(Pending::default()),
            traces: Mutex::new(Pending::default()),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name(format!("evalstream-{}", id.replace('/', "-")))
            .spawn(move || flush_when_due(&weak))?;
        Ok(OtlpExporter { shared, shapes })
    }
}

/// Sends gathered requests whose oldest item has waited long enough, until the exporter is gone.
fn flush_when_due(shared: &Weak<Shared>) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let timeout = shared.batch.flush_timeout;
        for signal in [Signal::Logs, Signal::Traces] {
            let due = {
                let mut pending = shared.pending(signal);
                match pending.since {
                    Some(since) if since.elapsed() >= timeout => Some(pending.take()),
                    _ => None,
                }
            };
            if let Some(batch) = due {
                shared.send(signal, batch);
            }
        }
        drop(shared);
        std::thread::sleep(timeout / 2);
    }
}

impl Shared {
    fn pending(&self, signal: Signal) -> std::sync::MutexGuard<'_, Pending> {
        match signal {
            Signal::Logs => &self.logs,
            // This exporter sends no annotations (the phoenix exporter does).
            Signal::Traces | Signal::SpanAnnotations => &self.traces,
        }
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds one trace's encoded request of `items` items, sending what is due: the batch
    /// before it when it would pass `max_size`, the batch with it once it holds `min_size`.
    fn add(&self, signal: Signal, encoded: Vec<u8>, items: usize, tokens: &[Token]) {
        let (before, full) = {
            let mut pending = self.pending(signal);
            let before = (pending.items > 0 && pending.items + items > self.batch.max_size)
                .then(|| pending.take());
            if pending.body.is_empty() {
                pending.body = encoded;
            } else {
                pending.body.extend_from_slice(&encoded);
            }
            pending.items += items;
            pending.tokens.extend_from_slice(tokens);
            pending.since.get_or_insert_with(Instant::now);
            let full = (pending.items >= self.batch.min_size).then(|| pending.take());
            (before, full)
        };
        // Sent outside the lock: a full queue makes this thread wait (backpressure), and the
        // others may go on gathering.
        for batch in [before, full].into_iter().flatten() {
            self.send(signal, batch);
        }
    }

    fn send(&self, signal: Signal, batch: Pending) {
        if batch.body.is_empty() {
            return;
        }
        let Pending { body, tokens, .. } = batch;
        self.client
            .send(ExportRequest::holding(signal, body, &self.id, tokens));
    }
}

impl Exporter for OtlpExporter {
    fn id(&self) -> &str {
        &self.shared.id
    }

    fn shapes(&self) -> Shapes {
        self.shapes
    }

    fn export(&self, outputs: &Outputs, tokens: &[Token]) {
        if let (true, Some(events)) = (self.shapes.events, &outputs.events) {
            let items = events
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len())
                .sum();
            self.shared
                .add(Signal::Logs, events.encode_to_vec(), items, tokens);
        }
        if let (true, Some(spans)) = (self.shapes.spans, &outputs.spans) {
            self.shared.add(
                Signal::Traces,
                spans.encode_to_vec(),
                evalstream_evaluators::otlp::span_count(spans),
                tokens,
            );
        }
    }

    fn forward(&self, request: &ExportTraceServiceRequest, tokens: &[Token]) {
        self.shared.add(
            Signal::Traces,
            request.encode_to_vec(),
            evalstream_evaluators::otlp::span_count(request),
            tokens,
        );
    }

    fn flush(&self, timeout: Duration) -> bool {
        for signal in [Signal::Logs, Signal::Traces] {
            let batch = self.shared.pending(signal).take();
            self.shared.send(signal, batch);
        }
        self.shared.client.flush(timeout)
    }
}
