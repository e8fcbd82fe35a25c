//! The Kafka exporter: one idempotent producer writing each trace's evaluations, keyed by its
//! hex trace id, as `otlp_proto`: evaluation events as `ExportLogsServiceRequest` to the logs
//! topic (`otlp_logs`, where the collector's kafka receiver reads logs), evaluator spans as
//! `ExportTraceServiceRequest` to the traces topic when asked. Each request is split into records
//! under `message.max.bytes`.
//!
//! Delivery runs with infinite retries on transient errors (the producer is idempotent, so
//! retries do not duplicate), which turns a broker outage into backpressure instead of loss. A
//! record refused for good rejects the tokens of its inputs with the record attached
//! ([`Rejection::output`]): the receiver keeps it (the Kafka receiver's dead-letter topic), so it
//! is neither lost nor retried forever.
//!
//! **Exactly once** (`exactly_once: true`): the producer is transactional. Records go into the
//! open transaction; the Kafka receiver, at a moment when none of its inputs is in flight, hands
//! the consumed offsets to [`KafkaExporter::commit_transaction`], which adds them to the
//! transaction, commits it and begins the next. Exports wait while a commit runs (a read-write
//! gate), so no record falls between two transactions.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use evalstream_evaluators::otlp;
use evalstream_evaluators::to_otlp;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message as _;
use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tracing::warn;

use crate::config::{KafkaExporter as KafkaExporterConfig, Output};
use crate::pipeline::ack::{RejectedOutput, Rejection, Token};
use crate::pipeline::export::{Exporter, Outputs, Shapes};
use crate::telemetry::metrics::Metrics;

/// Groups items (events or evaluator spans, each under the resource of the span it judges) into
/// requests that each encode to at most `budget` bytes, keeping their order. `frame` is the size
/// of an empty request of that signal. A resource is repeated in every request its items are
/// spread over. An item too large for any record travels alone (the producer refuses it, and it
/// is dead-lettered with its input).
fn split_by_size<T: prost::Message + Clone>(
    groups: &[(Option<Resource>, Vec<T>)],
    frame: usize,
    budget: usize,
) -> Vec<Vec<(Option<Resource>, Vec<T>)>> {
    // Room for the length prefixes of the enclosing messages to grow (up to 5 bytes each).
    let room = budget.saturating_sub(frame + 16);
    let mut chunks = Vec::new();
    let mut chunk: Vec<(Option<Resource>, Vec<T>)> = Vec::new();
    let mut used = 0;
    for (resource, items) in groups {
        let resource_size = resource.as_ref().map_or(0, |r| r.encoded_len() + 6);
        for item in items {
            let len = item.encoded_len();
            // Field tag and length prefix of the item inside its scope.
            let size = len + 1 + prost::encoding::encoded_len_varint(len as u64);
            let same_group = chunk.last().is_some_and(|(r, _)| r == resource);
            let added = size + if same_group { 0 } else { resource_size + 16 };
            if !chunk.is_empty() && used + added > room {
                chunks.push(std::mem::take(&mut chunk));
                used = 0;
            }
            match chunk.last_mut() {
                Some((r, rs)) if r == resource => rs.push(item.clone()),
                _ => {
                    used += resource_size + 16;
                    chunk.push((resource.clone(), vec![item.clone()]));
                }
            }
            used += size;
        }
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// Delivery reports, on the producer's own thread.
pub struct ProducerReports {
    metrics: Arc<Metrics>,
    /// The events' topic: a refused record to it holds logs, any other evaluator spans.
    logs_topic: String,
}

impl ProducerReports {
    /// A record was refused for good: its inputs are rejected with it attached, so their
    /// receiver keeps it.
    fn refused(
        &self,
        tokens: &[Token],
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        reason: String,
    ) {
        self.metrics.undeliverable.inc();
        let output = Arc::new(RejectedOutput {
            signal: if topic == self.logs_topic {
                "logs"
            } else {
                "traces"
            },
            key: key.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
        });
        for token in tokens {
            token.reject(Rejection {
                error_type: "delivery",
                message: reason.clone(),
                output: Some(output.clone()),
            });
        }
    }
}

impl ClientContext for ProducerReports {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics
            .kafka_errors
            .with_label_values(&["producer"])
            .inc();
        warn!(%error, reason, "output producer error");
    }
}

impl ProducerContext for ProducerReports {
    /// The tokens of the inputs a record came from, let go when it is delivered.
    type DeliveryOpaque = Box<Vec<Token>>;

    fn delivery(&self, result: &DeliveryResult<'_>, tokens: Box<Vec<Token>>) {
        match result {
            Ok(m) => {
                self.metrics.outputs.inc();
                tracing::trace!(
                    key = %String::from_utf8_lossy(m.key().unwrap_or_default()),
                    partition = m.partition(),
                    offset = m.offset(),
                    inputs = tokens.len(),
                    "output delivered"
                );
            }
            Err((e, m)) => {
                let reason = format!("cannot deliver evaluations: {e}");
                self.refused(
                    &tokens,
                    m.topic(),
                    m.key(),
                    m.payload().unwrap_or_default(),
                    reason,
                );
            }
        }
    }
}

/// Splits a request of application spans (a trace tail sampling kept) into requests that each
/// encode to at most `budget` bytes, keeping the spans' order and each span under its own
/// resource and scope (repeated in every request their spans are spread over). A span too large
/// for any record travels alone (the producer refuses it, and it is dead-lettered with its
/// input).
fn split_trace_request(
    request: &ExportTraceServiceRequest,
    budget: usize,
) -> Vec<ExportTraceServiceRequest> {
    // Room for the length prefixes of the enclosing messages to grow.
    let room = budget.saturating_sub(32);
    let mut chunks = Vec::new();
    let mut chunk = ExportTraceServiceRequest::default();
    let mut used = 0;
    // The (resource, scope) indexes the chunk's last spans are under.
    let mut last: Option<(usize, usize)> = None;
    for (ri, rs) in request.resource_spans.iter().enumerate() {
        let resource_size =
            rs.resource.as_ref().map_or(0, |r| r.encoded_len()) + rs.schema_url.len() + 16;
        for (si, ss) in rs.scope_spans.iter().enumerate() {
            let scope_size =
                ss.scope.as_ref().map_or(0, |s| s.encoded_len()) + ss.schema_url.len() + 16;
            for span in &ss.spans {
                let len = span.encoded_len();
                let size = len + 1 + prost::encoding::encoded_len_varint(len as u64);
                let framing = |last: Option<(usize, usize)>| {
                    let resource = if last.is_some_and(|(r, _)| r == ri) {
                        0
                    } else {
                        resource_size
                    };
                    let scope = if last == Some((ri, si)) {
                        0
                    } else {
                        scope_size
                    };
                    resource + scope
                };
                if used > 0 && used + size + framing(last) > room {
                    chunks.push(std::mem::take(&mut chunk));
                    used = 0;
                    last = None;
                }
                used += size + framing(last);
                if last.is_none_or(|(r, _)| r != ri) {
                    chunk.resource_spans.push(ResourceSpans {
                        resource: rs.resource.clone(),
                        schema_url: rs.schema_url.clone(),
                        scope_spans: Vec::new(),
                    });
                }
                let resource = chunk.resource_spans.last_mut().expect("pushed above");
                if last != Some((ri, si)) {
                    resource.scope_spans.push(ScopeSpans {
                        scope: ss.scope.clone(),
                        schema_url: ss.schema_url.clone(),
                        spans: Vec::new(),
                    });
                }
                let scope = resource.scope_spans.last_mut().expect("pushed above");
                scope.spans.push(span.clone());
                last = Some((ri, si));
            }
        }
    }
    if used > 0 {
        chunks.push(chunk);
    }
    chunks
}

/// The producer of evaluation events and evaluator spans.
pub struct KafkaExporter {
    id: String,
    producer: ThreadedProducer<ProducerReports>,
    shapes: Shapes,
    logs_topic: String,
    traces_topic: String,
    /// The producer's `message.max.bytes`: outputs are split under it.
    max_record_bytes: usize,
    /// Exactly once: exports hold it for reading, a commit for writing.
    transaction: Option<RwLock<()>>,
    /// Whether it takes forwarded traces (it is one of `sampling.exporters`).
    forwards: bool,
}

/// How long a transaction call may take before it fails (and the worker stops).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes left free under `message.max.bytes` for what librdkafka counts besides key, payload and
/// headers (its size check is `key + value + headers`; the broker's batch adds ~70 bytes).
const RECORD_MARGIN: usize = 512;

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

impl KafkaExporter {
    /// Creates the producer. `client` properties override the defaults.
    pub fn new(
        id: &str,
        config: &KafkaExporterConfig,
        metrics: Arc<Metrics>,
    ) -> Result<KafkaExporter, KafkaError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", config.brokers.join(","))
            .set("enable.idempotence", "true")
            // Retry transient failures for ever: an outage becomes backpressure, not loss.
            .set("message.timeout.ms", "0")
            // Fewer, smaller produce requests: with librdkafka's 5 ms and no compression, the
            // events of 100,000 corpus traces cost the worker ~25% and the broker ~30% more CPU
            // (bench-e2e, 2026-12-07). 20 ms is small beside the evaluation's own latency; lz4
            // is cheap to compress and every Kafka client reads it.
            .set("linger.ms", "20")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "100000");
        for (k, v) in &config.client {
            client.set(k, v);
        }
        let max_record_bytes = client
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        if config.exactly_once {
            let Some(id) = &config.transactional_id else {
                return Err(KafkaError::ClientCreation(
                    "exactly_once needs a transactional_id".into(),
                ));
            };
            client.set("transactional.id", id);
        }
        let producer: ThreadedProducer<ProducerReports> =
            client.create_with_context(ProducerReports {
                metrics,
                logs_topic: config.logs.topic.clone(),
            })?;
        if config.exactly_once {
            // Fences an earlier producer with the same id (this worker before a restart) and
            // aborts its open transaction, so readers are not held up until it times out.
            producer.init_transactions(TRANSACTION_TIMEOUT)?;
            producer.begin_transaction()?;
        }
        Ok(KafkaExporter {
            id: id.to_owned(),
            producer,
            shapes: Shapes {
                events: config.output.contains(&Output::Events),
                spans: config.output.contains(&Output::Spans),
                ..Shapes::default()
            },
            logs_topic: config.logs.topic.clone(),
            traces_topic: config.traces.topic.clone(),
            max_record_bytes,
            transaction: config.exactly_once.then(|| RwLock::new(())),
            forwards: false,
        })
    }

    /// Makes it an exporter of the traces tail sampling keeps: it writes each, whole, to its
    /// traces topic ([`Exporter::forward`]).
    pub fn forwarding(mut self) -> KafkaExporter {
        self.forwards = true;
        self
    }

    /// Exactly once: adds `offsets` (next offsets to read, for consumer `group`) to the open
    /// transaction, commits it and begins the next. The caller has nothing in flight, so the
    /// transaction holds exactly the outputs of these offsets. A retriable failure is tried
    /// again; any other leaves the transaction aborted (or to be aborted by the fencing of the
    /// next run) and is returned: the worker must stop.
    pub fn commit_transaction(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), KafkaError> {
        let Some(gate) = &self.transaction else {
            return Ok(());
        };
        let _commit = gate.write().unwrap_or_else(PoisonError::into_inner);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let committed = self
                .producer
                .send_offsets_to_transaction(offsets, group, TRANSACTION_TIMEOUT)
                .and_then(|()| self.producer.commit_transaction(TRANSACTION_TIMEOUT));
            match committed {
                Ok(()) => return self.producer.begin_transaction(),
                Err(KafkaError::Transaction(e)) if e.is_retriable() && attempts < 3 => {
                    warn!(error = %e, "the transaction commit failed; trying again");
                }
                Err(e) => {
                    if let KafkaError::Transaction(t) = &e
                        && t.txn_requires_abort()
                    {
                        let _ = self.producer.abort_transaction(TRANSACTION_TIMEOUT);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Queues a record, waiting while the producer's queue is full. A record that cannot be
    /// queued at all (an invalid record, a closing producer) takes the path of a refused one.
    fn send(&self, topic: &str, key: &str, payload: &[u8], tokens: &[Token]) {
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(tokens.to_vec()))
            .key(key.as_bytes())
            .payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, r)) => {
                    warn!(error = %e, "cannot queue a record");
                    let reason = format!("cannot queue evaluations: {e}");
                    self.producer.context().refused(
                        &r.delivery_opaque,
                        topic,
                        Some(key.as_bytes()),
                        payload,
                        reason,
                    );
                    return;
                }
            }
        }
    }

    /// Messages waiting in the producer.
    pub fn queue_len(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

impl Exporter for KafkaExporter {
    fn id(&self) -> &str {
        &self.id
    }

    fn shapes(&self) -> Shapes {
        self.shapes
    }

    /// Produces the trace's events and spans, keyed by its hex trace id, in as many records as
    /// it takes to stay under `message.max.bytes` (300 LLM spans' evaluations made a 1.21 MB
    /// record, which the producer refused: every evaluation was lost and the input
    /// dead-lettered). The inputs are let go when every record is delivered.
    fn export(&self, batch: &Outputs, tokens: &[Token]) {
        // Exactly once: not while a commit runs (its records would fall between transactions).
        let _in_transaction = self
            .transaction
            .as_ref()
            .map(|gate| gate.read().unwrap_or_else(PoisonError::into_inner));
        let metrics = &self.producer.context().metrics;
        metrics.producer_queue.set(i64::from(self.queue_len()));
        let key = otlp::hex(&batch.trace_id);
        let budget = self
            .max_record_bytes
            .saturating_sub(key.len() + RECORD_MARGIN);
        // Most traces fit one record: encoded by reference. Only an oversized one is copied
        // into pieces.
        // Encoded once: prost computes nested lengths again at every level of an encode, so a
        // size check before it cost a sixth of the encoding.
        if let (true, Some(events)) = (self.shapes.events, &batch.events) {
            let payload = events.encode_to_vec();
            if payload.len() <= budget {
                self.send(&self.logs_topic, &key, &payload, tokens);
            } else {
                let groups: Vec<_> = events
                    .resource_logs
                    .iter()
                    .map(|rl| {
                        let records = rl.scope_logs.iter().flat_map(|s| s.log_records.clone());
                        (rl.resource.clone(), records.collect())
                    })
                    .collect();
                let frame = to_otlp::logs_request([(None, Vec::new())]).encoded_len();
                for chunk in split_by_size(&groups, frame, budget) {
                    let payload = to_otlp::logs_request(chunk).encode_to_vec();
                    self.send(&self.logs_topic, &key, &payload, tokens);
                }
            }
        }
        if let (true, Some(spans)) = (self.shapes.spans, &batch.spans) {
            let payload = spans.encode_to_vec();
            if payload.len() <= budget {
                self.send(&self.traces_topic, &key, &payload, tokens);
            } else {
                let groups: Vec<_> = spans
                    .resource_spans
                    .iter()
                    .map(|rs| {
                        let spans = rs.scope_spans.iter().flat_map(|s| s.spans.clone());
                        (rs.resource.clone(), spans.collect())
                    })
                    .collect();
                let frame = to_otlp::spans_request([(None, Vec::new())]).encoded_len();
                for chunk in split_by_size(&groups, frame, budget) {
                    let payload = to_otlp::spans_request(chunk).encode_to_vec();
                    self.send(&self.traces_topic, &key, &payload, tokens);
                }
            }
        }
    }

    /// A kept trace (only when [`KafkaExporter::forwarding`]): its spans as
    /// `ExportTraceServiceRequest` to the traces topic, keyed by the hex trace id as the
    /// collector's `partition_traces_by_id` does, split under `message.max.bytes`.
    fn forward(&self, request: &ExportTraceServiceRequest, tokens: &[Token]) {
        if !self.forwards {
            return;
        }
        let trace_id = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| s.trace_id.as_slice())
            .next()
            .unwrap_or_default();
        let key = otlp::hex(trace_id);
        let budget = self
            .max_record_bytes
            .saturating_sub(key.len() + RECORD_MARGIN);
        let payload = request.encode_to_vec();
        if payload.len() <= budget {
            self.send(&self.traces_topic, &key, &payload, tokens);
        } else {
            for chunk in split_trace_request(request, budget) {
                self.send(&self.traces_topic, &key, &chunk.encode_to_vec(), tokens);
            }
        }
    }

    fn flush(&self, timeout: Duration) -> bool {
        self.producer.flush(timeout).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn span(i: usize, attribute_bytes: usize) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: (i as u64).to_be_bytes().to_vec(),
            name: "evaluation pii".into(),
            attributes: vec![otlp::kv_str(
                "gen_ai.evaluation.explanation",
                "x".repeat(attribute_bytes),
            )],
            ..Default::default()
        }
    }

    /// 300 LLM spans' evaluations made one 1.21 MB record, which the producer refused.
    #[test]
    fn outputs_are_split_under_the_record_limit_in_order_with_their_resources() {
        let resource = |name: &str| {
            Some(Resource {
                attributes: vec![otlp::kv_str("service.name", name)],
                ..Default::default()
            })
        };
        let spans: Vec<Span> = (0..1500).map(|i| span(i, 700 + i % 300)).collect();
        let groups = vec![
            (resource("a"), spans[..700].to_vec()),
            (None, spans[700..900].to_vec()),
            (resource("b"), spans[900..].to_vec()),
        ];
        let whole = to_otlp::spans_request(groups.clone()).encoded_len();
        assert!(
            whole > 1_000_000,
            "the test needs more than one record: {whole}"
        );
        let budget = 1_000_000 - 32 - RECORD_MARGIN;
        let frame = to_otlp::spans_request([(None, Vec::new())]).encoded_len();
        let chunks = split_by_size(&groups, frame, budget);
        assert!(chunks.len() >= 2);
        for chunk in &chunks {
            let size = to_otlp::spans_request(chunk.clone()).encoded_len();
            assert!(size <= budget, "{size} > {budget}");
        }
        // Every span, once, in order, under the resource it came with.
        let flat = |groups: Vec<(Option<Resource>, Vec<Span>)>| -> Vec<(Option<Resource>, Span)> {
            groups
                .into_iter()
                .flat_map(|(r, spans)| spans.into_iter().map(move |s| (r.clone(), s)))
                .collect()
        };
        assert_eq!(flat(chunks.into_iter().flatten().collect()), flat(groups));
        // A span larger than the budget still goes (alone), never silently dropped.
        let huge = split_by_size(
            &[(None, vec![span(0, 10), span(1, 5000), span(2, 10)])],
            frame,
            1000,
        );
        assert_eq!(
            huge.iter().map(|c| c[0].1.len()).collect::<Vec<_>>(),
            [1, 1, 1]
        );
    }

    /// A kept trace of 3,000 spans is split under the limit, every span once, in order, under
    /// the resource and scope it came with.
    #[test]
    fn forwarded_traces_are_split_under_the_record_limit_keeping_resources_and_scopes() {
        use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
        let resource = |name: &str| Resource {
            attributes: vec![otlp::kv_str("service.name", name)],
            ..Default::default()
        };
        let scope = |name: &str| InstrumentationScope {
            name: name.into(),
            ..Default::default()
        };
        let spans: Vec<Span> = (0..3000).map(|i| span(i, 500 + i % 300)).collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(resource("a")),
                    scope_spans: vec![
                        ScopeSpans {
                            scope: Some(scope("one")),
                            spans: spans[..1000].to_vec(),
                            ..Default::default()
                        },
                        ScopeSpans {
                            scope: Some(scope("two")),
                            spans: spans[1000..1200].to_vec(),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
                ResourceSpans {
                    resource: None,
                    scope_spans: vec![ScopeSpans {
                        scope: None,
                        spans: spans[1200..].to_vec(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        };
        let budget = 1_000_000 - 32 - RECORD_MARGIN;
        assert!(request.encoded_len() > 2 * budget);
        let chunks = split_trace_request(&request, budget);
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        for chunk in &chunks {
            assert!(
                chunk.encoded_len() <= budget,
                "{} > {budget}",
                chunk.encoded_len()
            );
        }
        let flat = |requests: &[ExportTraceServiceRequest]| {
            let mut out = Vec::new();
            for rs in requests.iter().flat_map(|r| &r.resource_spans) {
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push((rs.resource.clone(), ss.scope.clone(), span.span_id.clone()));
                    }
                }
            }
            out
        };
        assert_eq!(flat(&chunks), flat(std::slice::from_ref(&request)));
        // A span past the budget goes alone, never dropped.
        let small = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span(0, 10), span(1, 5000), span(2, 10)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(split_trace_request(&small, 1000).len(), 3);
    }
}
