//! `evalstream run`: the streaming worker.
//!
//! Threads, each owning one thing: the pipeline's ([`Pipeline`]: one evaluation worker per core,
//! with trace evaluators one trace-buffer shard per core, the judges), the exporters' own (librdkafka's producer
//! thread), and per receiver: the Kafka consumer's poll thread ([`Source`]) with the dead-letter
//! writer, or the OTLP servers on the async runtime, which also serves `/metrics` and waits for
//! SIGTERM/SIGINT. Work queues are bounded; the channels that carry acknowledgements back are
//! bounded by the inputs in flight instead, so an exporter's thread never waits on them.
//! Shutdown stops the receivers (the OTLP servers stop accepting and finish their requests; the
//! Kafka source evaluates buffered traces with what they have, drains in-flight work and commits
//! what finished), then the workers, the trace buffer and the judges finish, the exporters flush
//! and it returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use crossbeam_channel::Sender;
use evalstream_evaluators::spec;
use tracing::{info, warn};

use crate::config::{Config, ExporterConfig, Output};
use crate::exporters::kafka::KafkaExporter;
use crate::exporters::otlp::OtlpClient;
use crate::exporters::otlp::exporter::OtlpExporter;
use crate::exporters::otlp::metrics::ExporterMetrics;
use crate::exporters::phoenix::PhoenixExporter;
use crate::exporters::stdout::StdoutExporter;
use crate::guard::Guards;
use crate::guard::events::Events;
use crate::pipeline::budgets::Budgets;
use crate::pipeline::export::{Exporter, Exporters, Shapes};
use crate::pipeline::joiner::Joiner;
use crate::pipeline::judge::WhenFull;
use crate::pipeline::redaction::Redactor;
use crate::pipeline::stages::{Pipeline, Settings};
use crate::pipeline::traces::Assembler;
use crate::pipeline::worker::Input;
use crate::receivers::kafka::Transaction;
use crate::receivers::kafka::dead_letter::DeadLetters;
use crate::receivers::kafka::source::{Holders, Source};
use crate::telemetry::drift::series::Drift;
use crate::telemetry::metrics::Metrics;

/// Runs the worker until `shutdown` completes, then drains and returns.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if config.receivers.kafka.is_none() && config.receivers.otlp.is_none() && config.guard.is_none()
    {
        anyhow::bail!(
            "`evalstream run` needs a receiver: `receivers.otlp` or `receivers.kafka` (see deploy/evalstream.yaml), or the in-request API: `guard`"
        );
    }
    if config
        .sampling
        .as_ref()
        .is_some_and(|s| s.exporters.is_empty())
    {
        // Refused rather than ignored: a user who wrote a policy expects traces to be kept by it.
        anyhow::bail!(
            "`sampling.exporters`: name the exporters kept traces go to (for example `exporters: [kafka/sampled]` with `exporters: {{ kafka/sampled: {{ traces: {{ topic: otlp_spans_sampled }} }} }}`); `evalstream eval --sampling FILES` reports what the policy keeps"
        );
    }
    if config.redaction.is_some()
        && config.sampling.is_none()
        && !config.receivers.otlp.as_ref().is_some_and(|o| o.forward)
    {
        // Refused rather than ignored: a user who wrote redaction rules expects them to apply.
        anyhow::bail!(
            "`redaction` applies to the spans `run` passes on, and none are: configure `sampling` (kept traces are redacted) or set `receivers.otlp.forward: true` (inline mode)"
        );
    }
    let evaluators = Arc::new(spec::build_set(&config.evaluators)?);
    let (segments, max_segment_values) = config
        .telemetry
        .metrics
        .as_ref()
        .map_or((&[][..], 0), |m| (&m.segments[..], m.max_segment_values));
    let metrics = Metrics::new(evaluators.evaluators(), segments, max_segment_values)
        .context("cannot register metrics")?;
    if let Some(drift) = &config.drift {
        let drift = Drift::new(drift, evaluators.evaluators()).context("cannot set up drift")?;
        metrics
            .attach_drift(Arc::new(drift))
            .context("cannot register the drift metrics")?;
    }

    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = match &config.telemetry.metrics {
        Some(endpoint) => {
            let listener = crate::telemetry::http::bind(&endpoint.listen)
                .await
                .with_context(|| format!("cannot listen on {}", endpoint.listen))?;
            info!(address = %endpoint.listen, "serving /metrics, /healthz, /readyz");
            metrics.set_scrape_budget(endpoint.max_scrape_bytes);
            Some(tokio::spawn(crate::telemetry::http::serve(
                listener,
                metrics.clone(),
                endpoint.limits(config.telemetry.admin_token.as_ref()),
                async {
                    let _ = http_stop_rx.await;
                },
            )))
        }
        None => None,
    };

    let budgets = match config.budgets.is_empty() {
        true => None,
        false => Some(Arc::new(
            Budgets::new(&config.budgets, &metrics.registry)
                .context("cannot register the budget metrics")?,
        )),
    };
    let config = Arc::new(config);
    let (pipeline, transaction) = {
        let (config, metrics, evaluators, budgets) = (
            config.clone(),
            metrics.clone(),
            evaluators.clone(),
            budgets.clone(),
        );
        tokio::task::spawn_blocking(move || start_pipeline(&config, evaluators, metrics, budgets))
            .await
            .context("starting the pipeline panicked")??
    };
    let (guard_stop_tx, guard_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (guard, guard_events) = match &config.guard {
        Some(guard) => {
            let (events, thread) = Events::start(pipeline.exporters(), &metrics.registry)?;
            let guards = Guards::new(
                &config.guards,
                evaluators.clone(),
                (budgets.clone(), pipeline.judges().and_then(|j| j.direct())),
                Some(events),
                &metrics.registry,
            )
            .context("cannot register the guard metrics")?;
            let running = crate::guard::serve(guard, Arc::new(guards), async {
                let _ = guard_stop_rx.await;
            })?;
            (Some(running), Some(thread))
        }
        None => (None, None),
    };
    let share_stop = Arc::new(AtomicBool::new(false));
    let share = match (&config.guard, &config.receivers.kafka, &budgets) {
        (Some(guard), Some(receiver), Some(budgets)) => {
            let share = crate::guard::share::Share {
                client: state_client(receiver),
                topic: guard.budget_share_topic.clone(),
                group: receiver.group_id.clone(),
                worker: format!(
                    "{}-{}-{}",
                    host_name(),
                    std::process::id(),
                    crate::now_unix_nanos()
                ),
                interval: Duration::from_secs_f64(guard.budget_share_interval_seconds),
            };
            let (budgets, stop) = (budgets.clone(), share_stop.clone());
            let started = tokio::task::spawn_blocking(move || {
                crate::guard::share::start(share, budgets, stop)
            });
            Some(
                started
                    .await
                    .context("starting the budget sharing panicked")?
                    .context("cannot share budgets through Kafka")?,
            )
        }
        _ => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (otlp_stop_tx, otlp_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let otlp = match &config.receivers.otlp {
        Some(otlp) => Some(
            crate::receivers::otlp::start(
                otlp,
                pipeline.work(),
                metrics.otlp_requests.clone(),
                async {
                    let _ = otlp_stop_rx.await;
                },
            )
            .await
            .context("cannot start the OTLP receiver")?,
        ),
        None => None,
    };
    let kafka = config.receivers.kafka.clone().map(|receiver| {
        let (config, metrics, stop) = (config.clone(), metrics.clone(), stop.clone());
        let parts = KafkaParts::of(&pipeline, transaction.clone());
        tokio::task::spawn_blocking(move || run_kafka(&config, &receiver, parts, metrics, &stop))
    });
    if kafka.is_none() {
        // The OTLP receiver is ready once it listens; Kafka's, once partitions are assigned.
        metrics.set_ready(true);
    }
    tokio::pin!(shutdown);
    let result = match kafka {
        Some(mut kafka) => tokio::select! {
            result = &mut kafka => result.context("the Kafka receiver panicked").and_then(|r| r),
            () = &mut shutdown => {
                info!("shutdown requested");
                stop.store(true, Ordering::Release);
                kafka.await.context("the Kafka receiver panicked").and_then(|r| r)
            }
        },
        None => {
            shutdown.await;
            info!("shutdown requested");
            Ok(())
        }
    };
    let _ = otlp_stop_tx.send(());
    let _ = guard_stop_tx.send(());
    if let Some(guard) = guard {
        guard.stopped().await;
    }
    if let Some(otlp) = otlp
        && let Err(e) = otlp.stopped().await
    {
        warn!(error = %e, "the OTLP receiver failed");
    }
    tokio::task::spawn_blocking(move || {
        // The guard's last events go out before the exporters are flushed (its listeners are
        // closed, so its queue is too; a few seconds at most).
        if let Some(thread) = guard_events {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        pipeline.stop(Duration::ZERO)
    })
    .await
    .context("stopping the pipeline panicked")?;
    share_stop.store(true, Ordering::Release);
    if let Some(share) = share {
        let _ = tokio::task::spawn_blocking(move || share.join()).await;
    }
    let _ = http_stop_tx.send(());
    if let Some(server) = server {
        let _ = server.await;
    }
    info!("stopped");
    result
}

/// What the Kafka receiver takes from the pipeline.
struct KafkaParts {
    work: Sender<Vec<Input>>,
    traces: Option<Assembler>,
    join: Option<Arc<Joiner>>,
    held_by_judges: Arc<std::sync::atomic::AtomicUsize>,
    /// Exactly once: the output's transaction.
    transaction: Option<Arc<dyn Transaction>>,
}

impl KafkaParts {
    fn of(pipeline: &Pipeline, transaction: Option<Arc<dyn Transaction>>) -> KafkaParts {
        KafkaParts {
            work: pipeline.work(),
            traces: pipeline.traces(),
            join: pipeline.join(),
            held_by_judges: pipeline.held_by_judges(),
            transaction,
        }
    }
}

/// Starts the pipeline on the configured exporters; returns it with the exactly-once
/// transaction, if any.
fn start_pipeline(
    config: &Config,
    evaluators: Arc<evalstream_evaluators::evaluator::EvaluatorSet>,
    metrics: Arc<Metrics>,
    budgets: Option<Arc<Budgets>>,
) -> anyhow::Result<(Pipeline, Option<Arc<dyn Transaction>>)> {
    let (exporters, transaction) = build_exporters(config, &metrics)?;
    let exporters = Arc::new(exporters);
    let settings = Settings {
        traces: &config.traces,
        prices: config.prices().map_err(anyhow::Error::msg)?,
        judges: Some(WhenFull::Shed),
        reload: true,
        redactor: config
            .redaction
            .as_ref()
            .map(Redactor::new)
            .transpose()
            .map_err(anyhow::Error::msg)?
            .map(Arc::new),
        logs: config.takes_logs().then_some(&config.logs),
        sampling: config.sampling.as_ref(),
        budgets,
    };
    let needs_traces = evaluators.needs_traces();
    let pipeline = Pipeline::start(settings, evaluators, exporters, metrics)?;
    info!(
        workers = pipeline.workers(),
        trace_buffer = needs_traces,
        "evaluating"
    );
    Ok((pipeline, transaction))
}

/// Runs the Kafka receiver until `stop` is set: the consumer, the dead-letter writer and the
/// drift state topic.
fn run_kafka(
    config: &Config,
    receiver: &crate::config::KafkaReceiver,
    parts: KafkaParts,
    metrics: Arc<Metrics>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let (dead_letters, dead_letter_tx) = DeadLetters::new(
        &receiver.brokers.join(","),
        &receiver.client,
        receiver.dead_letter_topic.clone(),
        metrics.clone(),
    )
    .context("cannot create the dead-letter producer")?;
    let interval = config.exactly_once().map_or(Duration::MAX, |(_, k)| {
        Duration::from_millis(k.transaction_interval_ms)
    });
    let source = Source::new(
        receiver,
        parts.work,
        dead_letter_tx,
        Holders {
            traces: parts.traces,
            join: parts.join.clone(),
            elsewhere: std::iter::once(parts.held_by_judges)
                .chain(parts.join.map(|j| j.held()))
                .collect(),
        },
        metrics.clone(),
        parts.transaction.map(|t| (t, interval)),
    )
    .context("cannot create the input consumer")?;
    info!(topics = ?receiver.topics, group = %receiver.group_id, "consuming");
    let done = Arc::new(AtomicBool::new(false));
    let drift_state = start_drift_state(config, receiver, &metrics, &done)?;
    let dead_letter_writer = {
        let done = done.clone();
        thread::Builder::new()
            .name("evalstream-dead-letters".into())
            .spawn(move || dead_letters.run(&done, Duration::from_secs(10)))?
    };
    // The source returns once `stop` is set and in-flight work is drained and committed (or,
    // exactly once, when a transaction could not commit).
    let result = source.run(stop);
    done.store(true, Ordering::Release);
    let _ = dead_letter_writer.join();
    if let Some(writer) = drift_state {
        let _ = writer.join();
    }
    result.map_err(|why| anyhow::anyhow!("exactly once: {why}"))
}

/// The configured exporters, started.
/// Returns them with the exactly-once Kafka exporter's transaction, when one is configured.
fn build_exporters(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(Exporters, Option<Arc<dyn Transaction>>)> {
    let mut list: Vec<Box<dyn Exporter>> = Vec::new();
    let mut sampled: Vec<Box<dyn Exporter>> = Vec::new();
    let mut transaction: Option<Arc<dyn Transaction>> = None;
    for (id, exporter) in &config.exporters.list {
        // An exporter of kept traces gets only those (`Exporter::forward`), no evaluations.
        let forwards = config
            .sampling
            .as_ref()
            .is_some_and(|s| s.exporters.contains(id));
        let into = if forwards { &mut sampled } else { &mut list };
        into.push(match exporter {
            ExporterConfig::Kafka(k) if k.exactly_once => {
                let mut k = k.clone();
                let group = config
                    .receivers
                    .kafka
                    .as_ref()
                    .map_or("evalstream", |r| r.group_id.as_str());
                k.transactional_id
                    .get_or_insert_with(|| format!("evalstream-{group}-{}", host_name()));
                info!(exporter = %id, transactional_id = k.transactional_id.as_deref().unwrap_or_default(), "exactly once: transactional output");
                let exporter = Arc::new(
                    KafkaExporter::new(id, &k, metrics.clone())
                        .with_context(|| format!("exporters.{id}: cannot start the transactional producer"))?,
                );
                transaction = Some(Arc::new(ExporterTransaction(exporter.clone())));
                Box::new(exporter)
            }
            ExporterConfig::Kafka(k) => {
                let exporter = KafkaExporter::new(id, k, metrics.clone())
                    .with_context(|| format!("exporters.{id}: cannot create the producer"))?;
                Box::new(if forwards {
                    exporter.forwarding()
                } else {
                    exporter
                })
            }
            ExporterConfig::Stdout(_) => Box::new(StdoutExporter::new(id)),
            ExporterConfig::Otlp(protocol, o) => {
                let client = OtlpClient::start(o, *protocol, &tokio::runtime::Handle::current())
                    .map_err(|e| anyhow::anyhow!("exporters.{id}: {e}"))?;
                metrics
                    .registry
                    .register(Box::new(ExporterMetrics::new(id, client.clone())?))
                    .with_context(|| format!("exporters.{id}: cannot register its metrics"))?;
                let shapes = Shapes {
                    events: o.output.contains(&Output::Events),
                    spans: o.output.contains(&Output::Spans),
                    ..Shapes::default()
                };
                Box::new(OtlpExporter::new(
                    id,
                    client,
                    shapes,
                    o.sending_queue.batch.clone().unwrap_or_default(),
                )?)
            }
            ExporterConfig::Phoenix(p) => {
                let client = OtlpClient::start(
                    &p.client_config(),
                    p.protocol(),
                    &tokio::runtime::Handle::current(),
                )
                .map_err(|e| anyhow::anyhow!("exporters.{id}: {e}"))?;
                metrics
                    .registry
                    .register(Box::new(ExporterMetrics::new(id, client.clone())?))
                    .with_context(|| format!("exporters.{id}: cannot register its metrics"))?;
                Box::new(
                    PhoenixExporter::new(id, client, p.batch())
                        .with_context(|| format!("exporters.{id}: cannot start"))?,
                )
            }
        });
    }
    Ok((Exporters::with_sampled(list, sampled), transaction))
}

/// A client of the receiver's cluster for the small state topics (drift baselines, budget
/// spend): only the connection settings of the receiver's client apply to it.
fn state_client(receiver: &crate::config::KafkaReceiver) -> rdkafka::ClientConfig {
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", receiver.brokers.join(","));
    for (k, v) in crate::receivers::kafka::connection_properties(&receiver.client) {
        client.set(k, v);
    }
    client
}

/// This machine's name (a pod's name on Kubernetes), for a default `transactional.id`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The Kafka receiver's view of the exactly-once exporter.
struct ExporterTransaction(Arc<KafkaExporter>);

impl Transaction for ExporterTransaction {
    fn commit(
        &self,
        offsets: &rdkafka::TopicPartitionList,
        group: &rdkafka::consumer::ConsumerGroupMetadata,
    ) -> Result<(), rdkafka::error::KafkaError> {
        self.0.commit_transaction(offsets, group)
    }
}

/// Restores the drift series from their state topic and starts writing them back, when drift
/// detection and its state topic are configured. Stops (after a last write) once `done` is set.
fn start_drift_state(
    config: &Config,
    receiver: &crate::config::KafkaReceiver,
    metrics: &Metrics,
    done: &Arc<AtomicBool>,
) -> anyhow::Result<Option<thread::JoinHandle<()>>> {
    let (Some(drift_config), Some(drift)) = (&config.drift, metrics.drift()) else {
        return Ok(None);
    };
    let Some(topic) = &drift_config.state_topic else {
        return Ok(None);
    };
    let state = crate::telemetry::drift::state::StateTopic {
        client: state_client(receiver),
        topic: topic.clone(),
        group: receiver.group_id.clone(),
    };
    state.ensure();
    match state.load(drift, Duration::from_secs(30)) {
        Ok(n) => info!(series = n, topic = %topic, "drift baselines restored"),
        Err(e) => {
            warn!(error = %e, topic = %topic, "cannot read the drift state; baselines start afresh")
        }
    }
    let interval = Duration::from_secs_f64(drift_config.state_interval_seconds);
    Ok(Some(crate::telemetry::drift::state::start_writer(
        state,
        drift.clone(),
        interval,
        done.clone(),
    )?))
}
