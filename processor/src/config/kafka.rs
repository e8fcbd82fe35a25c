//! `receivers.kafka` and `exporters.kafka`: the topics a collector's Kafka exporter writes and its
//! Kafka receiver reads, with the collector's defaults.

use std::collections::BTreeMap;

use evalstream_evaluators::otlp::Encoding;
use serde::Deserialize;

use super::{Output, default_output};

/// `receivers.kafka`: the topic the collector's Kafka exporter writes. Defaults follow the
/// collector's Kafka components.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaReceiver {
    /// Bootstrap brokers, `host:port`.
    #[serde(default = "default_brokers")]
    pub brokers: Vec<String>,
    /// Topics to consume.
    #[serde(default = "default_topics")]
    pub topics: Vec<String>,
    /// The consumer group: workers sharing it share the partitions.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// How messages encode spans.
    #[serde(default)]
    pub encoding: Encoding,
    /// Where undecodable messages go.
    #[serde(default = "default_dlq")]
    pub dead_letter_topic: String,
    /// Where a new consumer group starts: `latest` (the collector's default) or `earliest`.
    #[serde(default)]
    pub initial_offset: InitialOffset,
    /// Most messages received and not yet finished; past it, the input waits (backpressure).
    /// Each one is finished when its evaluations are acknowledged by the output topic, so this
    /// must cover the output's round trip at full rate.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_messages: usize,
    /// Most bytes of received messages not yet finished; past it, the input waits. Bounds memory
    /// when messages are large (a collector batching many spans per message).
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// How long shutdown and partition revocation wait for in-flight work before committing.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_seconds: f64,
    /// librdkafka properties passed through as they are (TLS, SASL, …).
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// Topics of OTLP logs whose GenAI content events are joined to the spans (the collector's
    /// per-signal `logs:`); off when absent.
    #[serde(default)]
    pub logs: Option<KafkaLogs>,
}

/// `receivers.kafka.logs`: what the collector's Kafka exporter writes its logs to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaLogs {
    /// Topics to consume (the collector's default, `otlp_logs`).
    #[serde(default = "default_logs_topics")]
    pub topics: Vec<String>,
    /// How messages encode `ExportLogsServiceRequest`s.
    #[serde(default)]
    pub encoding: Encoding,
}

fn default_logs_topics() -> Vec<String> {
    vec!["otlp_logs".into()]
}

/// Where a consumer group without committed offsets starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialOffset {
    /// New messages only.
    #[default]
    Latest,
    /// Everything still in the topic.
    Earliest,
}

impl InitialOffset {
    /// The librdkafka `auto.offset.reset` value.
    pub fn as_str(self) -> &'static str {
        match self {
            InitialOffset::Latest => "latest",
            InitialOffset::Earliest => "earliest",
        }
    }
}

/// A topic setting (`logs: { topic }`, `traces: { topic }`, as the collector's kafka exporter).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topic {
    /// The topic's name.
    pub topic: String,
}

/// `exporters.kafka`: events as `ExportLogsServiceRequest` and evaluator spans as
/// `ExportTraceServiceRequest`, `otlp_proto`, keyed by hex trace id.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaExporter {
    /// Bootstrap brokers, `host:port`.
    #[serde(default = "default_brokers")]
    pub brokers: Vec<String>,
    /// What it writes: `[events]` (default), `[spans]` or both.
    #[serde(default = "default_output")]
    pub output: Vec<Output>,
    /// Where events go: `otlp_logs` by default, where the collector's kafka receiver reads logs.
    #[serde(default = "default_logs_topic")]
    pub logs: Topic,
    /// Where evaluator spans go: `otlp_evaluations` by default, not the collector's
    /// `otlp_spans`, which evalstream reads (it would read its own output back).
    #[serde(default = "default_traces_topic")]
    pub traces: Topic,
    /// librdkafka properties passed through as they are.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// Exactly once: the evaluations and the consumed input offsets are written in one Kafka
    /// transaction, committed every `transaction_interval_ms`; readers of the output topics
    /// read with `isolation.level=read_committed`. Needs the Kafka receiver alone and no trace
    /// or judge evaluators (a transaction waits for every input in flight to finish).
    #[serde(default)]
    pub exactly_once: bool,
    /// The producer's `transactional.id` with `exactly_once`: stable across restarts of one
    /// worker, so a restart fences the previous run's open transaction at once (default
    /// `evalstream-{group_id}-{host name}`); unique per worker of a group.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// How often the transaction is committed with `exactly_once`, in milliseconds: each
    /// commit waits for the inputs in flight, so shorter costs throughput and longer delays
    /// what `read_committed` readers see.
    #[serde(default = "default_transaction_interval")]
    pub transaction_interval_ms: u64,
}

fn default_transaction_interval() -> u64 {
    1000
}

impl Default for KafkaExporter {
    fn default() -> Self {
        KafkaExporter {
            brokers: default_brokers(),
            output: default_output(),
            logs: default_logs_topic(),
            traces: default_traces_topic(),
            client: BTreeMap::new(),
            exactly_once: false,
            transactional_id: None,
            transaction_interval_ms: default_transaction_interval(),
        }
    }
}

fn default_brokers() -> Vec<String> {
    vec!["localhost:9092".into()]
}
fn default_topics() -> Vec<String> {
    vec!["otlp_spans".into()]
}
fn default_group() -> String {
    "evalstream".into()
}
fn default_dlq() -> String {
    "otlp_spans_dlq".into()
}
fn default_max_in_flight() -> usize {
    10_000
}
fn default_max_in_flight_bytes() -> usize {
    64 << 20
}
fn default_drain_timeout() -> f64 {
    30.0
}
fn default_logs_topic() -> Topic {
    Topic {
        topic: "otlp_logs".into(),
    }
}
fn default_traces_topic() -> Topic {
    Topic {
        topic: "otlp_evaluations".into(),
    }
}
