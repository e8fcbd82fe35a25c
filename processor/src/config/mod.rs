//! The configuration file, in the OpenTelemetry Collector's vocabulary: `receivers`,
//! `evaluators`, `exporters`, `telemetry`.
//!
//! Loading is three steps, each with its own error: YAML is parsed into a tree (serde-saphyr, a
//! maintained, panic-free YAML parser); `${env:VAR}` references in string values are expanded,
//! as the collector does (`${env:VAR:-default}` gives a default, `$$` is a literal `$`, and a
//! value that is one whole reference is read as a YAML scalar so numbers stay numbers); then the
//! tree is read into typed structs that reject unknown keys, with the key's path in the message.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::pipeline::assembly::AssemblyConfig;
use crate::pipeline::budgets::BudgetConfig;
use crate::pipeline::join::JoinConfig;
use crate::pipeline::redaction::{RedactionConfig, Redactor};
use crate::pipeline::sampling::SamplingConfig;
mod env;
pub mod guard;
pub mod kafka;
pub mod otlp_exporter;
pub mod otlp_receiver;
pub mod phoenix_exporter;
pub mod telemetry;

pub use kafka::{InitialOffset, KafkaExporter, KafkaLogs, KafkaReceiver, Topic};
pub use telemetry::{MetricsEndpoint, Telemetry};

use crate::telemetry::drift::DriftConfig;
use evalstream_evaluators::spec::{self, BuildError, EvaluatorSpec};
use serde::Deserialize;
use serde_json::Value;
pub use telemetry::Segment;

/// A whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where spans come from.
    #[serde(default)]
    pub receivers: Receivers,
    /// The evaluators to run; the built-in default set when absent.
    #[serde(default = "spec::default_specs")]
    pub evaluators: Vec<EvaluatorSpec>,
    /// Where evaluator spans go.
    #[serde(default)]
    pub exporters: Exporters,
    /// evalstream's own metrics.
    #[serde(default)]
    pub telemetry: Telemetry,
    /// How traces are buffered for trace evaluators (`citations`, `tool_args`, `grounding`,
    /// `agent_loop`).
    #[serde(default)]
    pub traces: AssemblyConfig,
    /// How GenAI content log events are joined to their spans, when a receiver takes logs
    /// (`receivers.kafka.logs`, `receivers.otlp.logs`).
    #[serde(default)]
    pub logs: JoinConfig,
    /// Drift detection on the scores; off when absent.
    #[serde(default)]
    pub drift: Option<DriftConfig>,
    /// Eval-aware tail sampling: which complete, evaluated traces are kept. `evalstream eval
    /// --sampling` reports what this policy (or the default one when absent) keeps.
    #[serde(default)]
    pub sampling: Option<SamplingConfig>,
    /// Pre-storage redaction of the traces passed on (`eval --sampling-output`); the default
    /// masks personal data in message content when absent.
    #[serde(default)]
    pub redaction: Option<RedactionConfig>,
    /// The in-request API's listeners (`Check`, `Budget`); off when absent.
    #[serde(default)]
    pub guard: Option<guard::GuardConfig>,
    /// Guard sets by name: the evaluators a `Check` runs and what blocks.
    #[serde(default)]
    pub guards: BTreeMap<String, guard::GuardSetConfig>,
    /// Span-level cost budgets by name, accumulated from the span stream, answered by `Budget`.
    #[serde(default)]
    pub budgets: BTreeMap<String, BudgetConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            receivers: Receivers::default(),
            evaluators: spec::default_specs(),
            exporters: Exporters::default(),
            telemetry: Telemetry::default(),
            traces: AssemblyConfig::default(),
            logs: JoinConfig::default(),
            drift: None,
            sampling: None,
            redaction: None,
            guard: None,
            guards: BTreeMap::new(),
            budgets: BTreeMap::new(),
        }
    }
}

/// The `receivers:` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receivers {
    /// A Kafka topic fed by a collector's Kafka exporter.
    #[serde(default)]
    pub kafka: Option<KafkaReceiver>,
    /// OTLP over gRPC and HTTP, as a collector or an SDK sends it.
    #[serde(default)]
    pub otlp: Option<otlp_receiver::OtlpReceiverConfig>,
}

/// The `exporters:` section: exporters by id, `type` or `type/name` as the collector names them
/// (`kafka`, `kafka/scores`, `stdout`); every batch of evaluations goes to each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exporters {
    /// The exporters, in the order written.
    pub list: Vec<(String, ExporterConfig)>,
}

/// One exporter's settings, by its type.
#[derive(Debug, Clone, PartialEq)]
pub enum ExporterConfig {
    /// `kafka`: events and evaluator spans to topics.
    Kafka(KafkaExporter),
    /// `stdout`: JSON lines, as `evalstream eval` prints.
    Stdout(StdoutExporter),
    /// `otlp` (gRPC) or `otlphttp` (HTTP/protobuf): events and evaluator spans to an OTLP
    /// backend.
    Otlp(
        otlp_exporter::Protocol,
        Box<otlp_exporter::OtlpExporterConfig>,
    ),
    /// `phoenix`: evaluations as Phoenix span annotations.
    Phoenix(Box<phoenix_exporter::PhoenixExporterConfig>),
}

/// The exporter types, for errors.
const EXPORTER_TYPES: &[&str] = &["kafka", "stdout", "otlp", "otlphttp", "phoenix"];

impl Exporters {
    /// The Kafka exporters.
    pub fn kafka(&self) -> impl Iterator<Item = (&str, &KafkaExporter)> {
        self.list.iter().filter_map(|(id, c)| match c {
            ExporterConfig::Kafka(k) => Some((id.as_str(), k)),
            _ => None,
        })
    }
}

impl<'de> Deserialize<'de> for Exporters {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ById;
        impl<'de> serde::de::Visitor<'de> for ById {
            type Value = Exporters;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of exporters by id (`kafka`, `stdout`, `kafka/name`)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Exporters, A::Error> {
                use serde::de::Error as _;
                let mut list: Vec<(String, ExporterConfig)> = Vec::new();
                while let Some(id) = map.next_key::<String>()? {
                    let kind = id.split_once('/').map_or(id.as_str(), |(kind, _)| kind);
                    // `kafka:` with nothing after it takes every default.
                    let config = match kind {
                        "kafka" => ExporterConfig::Kafka(
                            map.next_value::<Option<KafkaExporter>>()?
                                .unwrap_or_else(KafkaExporter::default),
                        ),
                        "stdout" => ExporterConfig::Stdout(
                            map.next_value::<Option<StdoutExporter>>()?
                                .unwrap_or_default(),
                        ),
                        "otlp" => ExporterConfig::Otlp(
                            otlp_exporter::Protocol::Grpc,
                            Box::new(map.next_value()?),
                        ),
                        // `otlp_http` is the collector's name for it since v0.165.
                        "otlphttp" | "otlp_http" => ExporterConfig::Otlp(
                            otlp_exporter::Protocol::HttpProtobuf,
                            Box::new(map.next_value()?),
                        ),
                        "phoenix" => ExporterConfig::Phoenix(Box::new(map.next_value()?)),
                        other => return Err(A::Error::unknown_variant(other, EXPORTER_TYPES)),
                    };
                    if list.iter().any(|(i, _)| *i == id) {
                        return Err(A::Error::custom(format!(
                            "exporter `{id}` is defined twice"
                        )));
                    }
                    list.push((id, config));
                }
                Ok(Exporters { list })
            }
        }
        d.deserialize_map(ById)
    }
}

/// What an exporter writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// `gen_ai.evaluation.result` log records on the judged spans (the default).
    Events,
    /// Evaluator spans, children of the judged spans.
    Spans,
}

fn default_output() -> Vec<Output> {
    vec![Output::Events]
}

/// `exporters.stdout`: one JSON line per evaluation (skips included), as `evalstream eval` prints.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutExporter {}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("{path}: invalid YAML: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An `${env:…}` reference could not be expanded.
    #[error("{path}: {message}")]
    Env {
        /// The file.
        path: PathBuf,
        /// Which key and variable.
        message: String,
    },
    /// A key or value is not what the schema allows.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// `key.path: what is wrong`.
        message: String,
    },
    /// An evaluator's options are invalid.
    #[error("{path}: {message}")]
    Evaluator {
        /// The file.
        path: PathBuf,
        /// Which evaluator, and why (values from the environment not shown).
        message: String,
    },
}

/// What `evalstream run` does without `--config`: one machine, no broker. OTLP in on the
/// loopback ports an SDK exports to by default, the default evaluators, scores as JSON lines on
/// standard output, metrics on a local port.
pub const BUILTIN: &str = r#"receivers:
  otlp:
    protocols:
      grpc: { endpoint: "127.0.0.1:4317" }
      http: { endpoint: "127.0.0.1:4318" }
exporters:
  stdout:
telemetry:
  metrics: { listen: "127.0.0.1:9464" }
"#;

impl Config {
    /// The model prices: the `cost` evaluator's table, else the built-in one.
    pub fn prices(&self) -> Result<evalstream_evaluators::pricing::PriceTable, String> {
        use evalstream_evaluators::pricing::PriceTable;
        use evalstream_evaluators::spec::EvaluatorKind;
        self.evaluators
            .iter()
            .find_map(|s| match &s.kind {
                EvaluatorKind::Cost(c) => Some(PriceTable::new(c.builtin_prices, &c.prices)),
                _ => None,
            })
            .unwrap_or_else(|| PriceTable::new(true, &Default::default()))
    }

    /// The built-in configuration ([`BUILTIN`]).
    pub fn builtin() -> Config {
        Config::parse(BUILTIN, Path::new("(built-in)"), &|_| None)
            .expect("the built-in configuration is valid")
    }

    /// Reads, expands and checks a configuration file (evaluators included), using the process
    /// environment for `${env:…}`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parses configuration text; `env` looks variables up. `origin` names the source in errors.
    pub fn parse(
        text: &str,
        origin: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let path = origin.to_owned();
        let mut tree: Value = if text.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml {
                path: path.clone(),
                message: e.to_string(),
            })?
        };
        if tree.is_null() {
            tree = Value::Object(Default::default());
        }
        let mut substituted = Vec::new();
        env::expand(&mut tree, &mut String::new(), env, &mut substituted).map_err(|message| {
            ConfigError::Env {
                path: path.clone(),
                message,
            }
        })?;
        let hide = |message: &str| env::hide_substituted(message, &substituted);
        let config: Config =
            serde_path_to_error::deserialize(tree).map_err(|e| ConfigError::Invalid {
                path: path.clone(),
                message: hide(&spec::path_error(&e)),
            })?;
        config.validate().map_err(|source| match source {
            Problem::Evaluator(source) => ConfigError::Evaluator {
                path: path.clone(),
                message: hide(&source.to_string()),
            },
            Problem::Other(message) => ConfigError::Invalid {
                path: path.clone(),
                message: hide(&message),
            },
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Problem> {
        if self.evaluators.is_empty() {
            return Err(Problem::Other(
                "evaluators: give at least one evaluator, or leave the section out for the default set".into(),
            ));
        }
        spec::build_set(&self.evaluators).map_err(Problem::Evaluator)?;
        if let Some(k) = &self.receivers.kafka {
            if k.brokers.is_empty() {
                return Err(Problem::Other(
                    "receivers.kafka.brokers: give at least one broker".into(),
                ));
            }
            if k.topics.is_empty() {
                return Err(Problem::Other(
                    "receivers.kafka.topics: give at least one topic".into(),
                ));
            }
            if k.max_in_flight_messages == 0 {
                return Err(Problem::Other(
                    "receivers.kafka.max_in_flight_messages: must be at least 1".into(),
                ));
            }
            if k.max_in_flight_bytes == 0 {
                return Err(Problem::Other(
                    "receivers.kafka.max_in_flight_bytes: must be at least 1".into(),
                ));
            }
            if !(k.drain_timeout_seconds.is_finite() && k.drain_timeout_seconds >= 0.0) {
                return Err(Problem::Other(
                    "receivers.kafka.drain_timeout_seconds: must be a non-negative number".into(),
                ));
            }
            if let Some(logs) = &k.logs {
                if logs.topics.is_empty() {
                    return Err(Problem::Other(
                        "receivers.kafka.logs.topics: give at least one topic".into(),
                    ));
                }
                if let Some(t) = logs.topics.iter().find(|t| k.topics.contains(t)) {
                    return Err(Problem::Other(format!(
                        "receivers.kafka.logs.topics: `{t}` is also a spans topic; each topic holds one signal"
                    )));
                }
                // evalstream's own evaluation events go to `otlp_logs` by default, the topic the
                // collector's exporter writes application logs to by default: reading them back
                // would take every evaluation in again.
                let same_cluster = |brokers: &[String]| {
                    let mut a = brokers.to_vec();
                    let mut b = k.brokers.clone();
                    a.sort();
                    b.sort();
                    a == b
                };
                for (id, exporter) in &self.exporters.list {
                    if let ExporterConfig::Kafka(e) = exporter
                        && same_cluster(&e.brokers)
                        && let Some(t) = logs
                            .topics
                            .iter()
                            .find(|t| **t == e.logs.topic || **t == e.traces.topic)
                    {
                        return Err(Problem::Other(format!(
                            "receivers.kafka.logs.topics: `{t}` is where exporters.{id} writes evaluations; have the application's logs written to a topic of their own (the collector's kafka exporter: `logs: {{ topic: … }}`) and read that"
                        )));
                    }
                }
            }
        }
        self.traces.validate().map_err(Problem::Other)?;
        self.logs.validate().map_err(Problem::Other)?;
        self.validate_exactly_once().map_err(Problem::Other)?;
        if let Some(drift) = &self.drift {
            let names: Vec<&str> = self.evaluators.iter().map(|e| e.effective_name()).collect();
            drift.validate(&names).map_err(Problem::Other)?;
        }
        if let Some(sampling) = &self.sampling {
            let names: Vec<&str> = self.evaluators.iter().map(|e| e.effective_name()).collect();
            sampling.validate(&names).map_err(Problem::Other)?;
            self.validate_sampled_exporters(sampling)
                .map_err(Problem::Other)?;
        }
        if let Some(redaction) = &self.redaction {
            Redactor::new(redaction).map_err(Problem::Other)?;
        }
        self.validate_guards().map_err(Problem::Other)?;
        if let Some(m) = &self.telemetry.metrics {
            if m.listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(Problem::Other(format!(
                    "telemetry.metrics.listen: `{}` is not an address like 127.0.0.1:9464",
                    m.listen
                )));
            }
            if m.max_connections == 0 {
                return Err(Problem::Other(
                    "telemetry.metrics.max_connections: must be at least 1".into(),
                ));
            }
            if !(m.header_read_timeout_seconds.is_finite()
                && m.header_read_timeout_seconds > 0.0
                && m.header_read_timeout_seconds <= 3600.0)
            {
                return Err(Problem::Other(
                    "telemetry.metrics.header_read_timeout_seconds: a number of seconds above 0, at most 3600".into(),
                ));
            }
            if m.max_scrape_bytes < 64 << 10 {
                return Err(Problem::Other(
                    "telemetry.metrics.max_scrape_bytes: at least 65536".into(),
                ));
            }
        }
        if self
            .telemetry
            .admin_token
            .as_ref()
            .is_some_and(|t| !t.expose().is_empty() && t.expose().trim().len() < 16)
        {
            return Err(Problem::Other(
                "telemetry.admin_token: at least 16 characters (a random token, e.g. from `openssl rand -hex 16`)".into(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The exporter id and settings of the exactly-once Kafka exporter, if one is configured.
    pub fn exactly_once(&self) -> Option<(&str, &KafkaExporter)> {
        self.exporters.list.iter().find_map(|(id, e)| match e {
            ExporterConfig::Kafka(k) if k.exactly_once => Some((id.as_str(), k)),
            _ => None,
        })
    }

    /// Whether a receiver takes logs, which turns the join of content events to spans on
    /// (without, spans are evaluated as they arrive, as before logs were read).
    pub fn takes_logs(&self) -> bool {
        self.receivers
            .kafka
            .as_ref()
            .is_some_and(|k| k.logs.is_some())
            || self.receivers.otlp.as_ref().is_some_and(|o| o.logs)
    }

    /// The guard API's listeners, sets and budgets.
    fn validate_guards(&self) -> Result<(), String> {
        if let Some(guard) = &self.guard {
            guard.validate()?;
            if self.guards.is_empty() && self.budgets.is_empty() {
                return Err(
                    "guard: configure `guards` (sets of evaluators `Check` runs) or `budgets` (what `Budget` answers)"
                        .into(),
                );
            }
        }
        let evaluators: Vec<(&str, bool)> = self
            .evaluators
            .iter()
            .map(|e| {
                (
                    e.effective_name(),
                    matches!(e.kind, spec::EvaluatorKind::LlmJudge(_)),
                )
            })
            .collect();
        guard::validate_sets(&self.guards, &evaluators)?;
        for (name, budget) in &self.budgets {
            budget.validate(name)?;
        }
        Ok(())
    }

    /// `sampling.exporters` name exporters that can forward traces, none of them writing where
    /// a receiver reads.
    fn validate_sampled_exporters(&self, sampling: &SamplingConfig) -> Result<(), String> {
        for (i, id) in sampling.exporters.iter().enumerate() {
            let path = format!("sampling.exporters[{i}]");
            let Some((_, exporter)) = self.exporters.list.iter().find(|(e, _)| e == id) else {
                let ids: Vec<&str> = self
                    .exporters
                    .list
                    .iter()
                    .map(|(e, _)| e.as_str())
                    .collect();
                return Err(format!(
                    "{path}: no exporter is named `{id}` (configured: {}); add one, such as `exporters: {{ kafka/sampled: {{ traces: {{ topic: otlp_spans_sampled }} }} }}`",
                    ids.join(", ")
                ));
            };
            match exporter {
                ExporterConfig::Kafka(k) => {
                    let read = self
                        .receivers
                        .kafka
                        .as_ref()
                        .is_some_and(|r| r.topics.contains(&k.traces.topic));
                    if read {
                        return Err(format!(
                            "{path}: exporters.{id} writes kept traces to `{}`, which receivers.kafka reads: it would read its own output back; give it a `traces: {{ topic }}` of its own",
                            k.traces.topic
                        ));
                    }
                }
                ExporterConfig::Otlp(..) => {}
                _ => {
                    return Err(format!(
                        "{path}: exporters.{id} cannot forward traces; kept traces go to `kafka` or `otlp`/`otlphttp` exporters"
                    ));
                }
            }
        }
        if let Some(dup) = sampling
            .exporters
            .iter()
            .enumerate()
            .find(|(i, e)| sampling.exporters[..*i].contains(e))
        {
            return Err(format!(
                "sampling.exporters[{}]: `{}` is named twice",
                dup.0, dup.1
            ));
        }
        Ok(())
    }

    fn validate_exactly_once(&self) -> Result<(), String> {
        let transactional: Vec<&str> = self
            .exporters
            .list
            .iter()
            .filter_map(|(id, e)| match e {
                ExporterConfig::Kafka(k) if k.exactly_once => Some(id.as_str()),
                _ => None,
            })
            .collect();
        let Some(id) = transactional.first() else {
            return Ok(());
        };
        let why = |what: &str| format!("exporters.{id}.exactly_once: {what}");
        if transactional.len() > 1 {
            return Err(why("only one exporter can write in the transaction"));
        }
        if self.sampling.is_some() {
            return Err(why(
                "not with `sampling`: each transaction waits for every input in flight, and tail sampling holds inputs until their traces are complete",
            ));
        }
        if self.takes_logs() {
            return Err(why(
                "not with log inputs: each transaction waits for every input in flight, and spans wait for their log events",
            ));
        }
        if self.receivers.kafka.is_none() || self.receivers.otlp.is_some() {
            return Err(why(
                "needs the Kafka receiver alone: the transaction commits its input offsets, and an OTLP request answered before the transaction commits could be lost with it",
            ));
        }
        if let Some(e) = self.evaluators.iter().find(|e| {
            matches!(e.kind, spec::EvaluatorKind::LlmJudge(_))
                || spec::build_set(std::slice::from_ref(e)).is_ok_and(|s| s.needs_traces())
        }) {
            return Err(why(&format!(
                "not with `{}`: each transaction waits for every input in flight, and trace and judge evaluators hold inputs for seconds",
                e.effective_name()
            )));
        }
        if let Some((_, k)) = self.exactly_once()
            && !(1..=60_000).contains(&k.transaction_interval_ms)
        {
            return Err(format!(
                "exporters.{id}.transaction_interval_ms: between 1 and 60000"
            ));
        }
        Ok(())
    }
}

enum Problem {
    Evaluator(BuildError),
    Other(String),
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self
            .evaluators
            .iter()
            .map(EvaluatorSpec::effective_name)
            .collect();
        write!(f, "{} evaluators ({})", names.len(), names.join(", "))?;
        if let Some(k) = &self.receivers.kafka {
            write!(
                f,
                "; kafka receiver {} on {} ({})",
                k.topics.join(","),
                k.brokers.join(","),
                k.encoding
            )?;
            if let Some(logs) = &k.logs {
                write!(f, ", logs {} ({})", logs.topics.join(","), logs.encoding)?;
            }
        }
        if self.receivers.otlp.as_ref().is_some_and(|o| o.logs) {
            write!(f, "; otlp receiver takes logs")?;
        }
        if self.takes_logs() {
            write!(
                f,
                "; log events joined to spans (spans wait {} s, events {} s)",
                self.logs.span_wait_seconds, self.logs.event_wait_seconds
            )?;
        }
        for (id, e) in &self.exporters.list {
            match e {
                ExporterConfig::Kafka(k) => {
                    let topics: Vec<&str> = k
                        .output
                        .iter()
                        .map(|o| match o {
                            Output::Events => k.logs.topic.as_str(),
                            Output::Spans => k.traces.topic.as_str(),
                        })
                        .collect();
                    write!(
                        f,
                        "; exporter {id} to {} on {}",
                        topics.join(","),
                        k.brokers.join(",")
                    )?
                }
                ExporterConfig::Stdout(_) => write!(f, "; exporter {id} to stdout")?,
                ExporterConfig::Otlp(_, o) => write!(f, "; exporter {id} to {}", o.endpoint)?,
                ExporterConfig::Phoenix(p) => write!(f, "; exporter {id} to {}", p.endpoint)?,
            }
        }
        if let Some(m) = &self.telemetry.metrics {
            write!(f, "; metrics on {}", m.listen)?;
        }
        if let Some(d) = &self.drift {
            let evaluators = d
                .evaluators
                .as_ref()
                .map_or_else(|| "every evaluator".to_owned(), |e| e.join(", "));
            let segments: Vec<&str> = d.segments.iter().map(|s| s.label()).collect();
            write!(f, "; drift on {evaluators}")?;
            if !segments.is_empty() {
                write!(f, " by {}", segments.join(", "))?;
            }
        }
        if let Some(g) = &self.guard {
            let listeners: Vec<String> = [("gRPC", &g.grpc), ("HTTP", &g.http)]
                .into_iter()
                .filter_map(|(p, l)| l.as_ref().map(|l| format!("{p} {}", l.endpoint)))
                .collect();
            let count = |n: usize, what: &str| match n {
                1 => format!("1 {what}"),
                n => format!("{n} {what}s"),
            };
            write!(
                f,
                "; guard API on {} ({}, {})",
                listeners.join(" and "),
                count(self.guards.len(), "guard set"),
                count(self.budgets.len(), "budget")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
