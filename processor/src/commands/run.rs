//! `evalstream run`: the streaming worker.
//!
//! Threads, each owning one thing: one evaluation [`Worker`] per core, with trace evaluators one
//! trace-buffer shard per core ([`Assembler`]), the exporters' own (librdkafka's producer
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
use evalstream_evaluators::pricing::PriceTable;
use evalstream_evaluators::spec::{self, EvaluatorKind};
use tracing::{info, warn};

use crate::config::{Config, ExporterConfig, Output};
use crate::exporters::kafka::KafkaExporter;
use crate::exporters::otlp::OtlpClient;
use crate::exporters::otlp::exporter::OtlpExporter;
use crate::exporters::phoenix::PhoenixExporter;
use crate::exporters::stdout::StdoutExporter;
use crate::pipeline::export::{Exporter, Exporters, Shapes};
use crate::pipeline::judge::{self, JudgeService};
use crate::pipeline::traces::Assembler;
use crate::pipeline::{
    evaluate::Scoring,
    worker::{Input, Worker},
};
use crate::receivers::kafka::dead_letter::DeadLetters;
use crate::receivers::kafka::source::Source;
use crate::telemetry::drift::series::Drift;
use crate::telemetry::metrics::Metrics;

/// Runs the worker until `shutdown` completes, then drains and returns.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if config.receivers.kafka.is_none() && config.receivers.otlp.is_none() {
        anyhow::bail!(
            "`evalstream run` needs a receiver: `receivers.otlp` or `receivers.kafka` (see deploy/evalstream.yaml)"
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

    let config = Arc::new(config);
    let pipeline = {
        let (config, metrics) = (config.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || Pipeline::start(&config, evaluators, metrics))
            .await
            .context("starting the pipeline panicked")??
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (otlp_stop_tx, otlp_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let otlp = match &config.receivers.otlp {
        Some(otlp) => Some(
            crate::receivers::otlp::start(
                otlp,
                pipeline.work.clone(),
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
        let parts = pipeline.kafka_parts();
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
    if let Some(otlp) = otlp
        && let Err(e) = otlp.stopped().await
    {
        warn!(error = %e, "the OTLP receiver failed");
    }
    tokio::task::spawn_blocking(move || pipeline.stop())
        .await
        .context("stopping the pipeline panicked")?;
    let _ = http_stop_tx.send(());
    if let Some(server) = server {
        let _ = server.await;
    }
    info!("stopped");
    result
}

/// What runs between the receivers and the exporters: workers, trace buffer, judges.
struct Pipeline {
    /// The workers' queue; receivers hold clones. The pipeline stops once all are dropped.
    work: Sender<Vec<Input>>,
    workers: Vec<thread::JoinHandle<()>>,
    shards: Vec<thread::JoinHandle<()>>,
    worker: Arc<Worker>,
    exporters: Arc<Exporters>,
    done: Arc<AtomicBool>,
    reloader: Option<thread::JoinHandle<()>>,
}

/// What the Kafka receiver takes from the pipeline.
struct KafkaParts {
    work: Sender<Vec<Input>>,
    traces: Option<Assembler>,
    held_by_judges: Arc<std::sync::atomic::AtomicUsize>,
}

impl Pipeline {
    fn start(
        config: &Config,
        evaluators: Arc<evalstream_evaluators::evaluator::EvaluatorSet>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Pipeline> {
        let exporters = Arc::new(build_exporters(config, &metrics)?);
        let threads = thread::available_parallelism().map_or(2, |n| n.get());
        let prices = config
            .evaluators
            .iter()
            .find_map(|s| match &s.kind {
                EvaluatorKind::Cost(c) => Some(PriceTable::new(c.builtin_prices, &c.prices)),
                _ => None,
            })
            .unwrap_or_else(|| PriceTable::new(true, &Default::default()))
            .map_err(anyhow::Error::msg)?;
        let needs_traces = evaluators.needs_traces();
        let scoring = Arc::new(Scoring {
            evaluators,
            exporters: exporters.clone(),
            metrics: metrics.clone(),
            prices,
        });
        let output = judge::Output {
            exporters: exporters.clone(),
            metrics: metrics.clone(),
        };
        let judges = JudgeService::start(&scoring.evaluators, &output)?.map(Arc::new);
        let (assembler, shards) = if needs_traces {
            let (assembler, shards) =
                Assembler::start(&config.traces, threads, scoring.clone(), judges.clone())?;
            (Some(assembler), shards)
        } else {
            (None, Vec::new())
        };
        let (work_tx, work_rx) = crossbeam_channel::bounded(threads * 8);
        let worker = Arc::new(Worker {
            scoring,
            traces: assembler,
            judges,
        });
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let worker = worker.clone();
                let queue = work_rx.clone();
                crate::evaluation_thread(format!("evalstream-worker-{i}"))
                    .spawn(move || worker.run(queue))
            })
            .collect::<Result<_, _>>()?;
        let done = Arc::new(AtomicBool::new(false));
        let reloader = crate::pipeline::reload::start(&worker.scoring.evaluators, &metrics, &done)?;
        info!(workers = threads, trace_buffer = needs_traces, "evaluating");
        Ok(Pipeline {
            work: work_tx,
            workers,
            shards,
            worker,
            exporters,
            done,
            reloader,
        })
    }

    fn kafka_parts(&self) -> KafkaParts {
        KafkaParts {
            work: self.work.clone(),
            traces: self.worker.traces.clone(),
            held_by_judges: self
                .worker
                .judges
                .as_ref()
                .map_or_else(Default::default, |j| j.held()),
        }
    }

    /// Lets the workers finish their queue (the receivers have stopped and dropped their
    /// senders), evaluates what the trace buffer holds, waits for the judges, flushes the
    /// exporters.
    fn stop(self) {
        let Pipeline {
            work,
            workers,
            shards,
            worker,
            exporters,
            done,
            reloader,
        } = self;
        drop(work);
        for w in workers {
            let _ = w.join();
        }
        // The workers' handles are gone with them; this last one lets the shards stop.
        if let Some(traces) = &worker.traces {
            traces.flush(None);
        }
        drop(worker);
        for s in shards {
            let _ = s.join();
        }
        if !exporters.flush(Duration::from_secs(10)) {
            warn!(
                "some outputs were not delivered before exit; their inputs are unacknowledged and will be evaluated again"
            );
        }
        done.store(true, Ordering::Release);
        if let Some(reloader) = reloader {
            let _ = reloader.join();
        }
    }
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
    let source = Source::new(
        receiver,
        parts.work,
        dead_letter_tx,
        parts.traces,
        parts.held_by_judges,
        metrics.clone(),
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
    // The source returns once `stop` is set and in-flight work is drained and committed.
    source.run(stop);
    done.store(true, Ordering::Release);
    let _ = dead_letter_writer.join();
    if let Some(writer) = drift_state {
        let _ = writer.join();
    }
    Ok(())
}

/// The configured exporters, started.
fn build_exporters(config: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<Exporters> {
    let mut list: Vec<Box<dyn Exporter>> = Vec::new();
    for (id, exporter) in &config.exporters.list {
        list.push(match exporter {
            ExporterConfig::Kafka(k) => Box::new(
                KafkaExporter::new(id, k, metrics.clone())
                    .with_context(|| format!("exporters.{id}: cannot create the producer"))?,
            ),
            ExporterConfig::Stdout(_) => Box::new(StdoutExporter::new(id)),
            ExporterConfig::Otlp(protocol, o) => {
                let client = OtlpClient::start(o, *protocol, &tokio::runtime::Handle::current())
                    .map_err(|e| anyhow::anyhow!("exporters.{id}: {e}"))?;
                let shapes = Shapes {
                    events: o.output.contains(&Output::Events),
                    spans: o.output.contains(&Output::Spans),
                    ..Shapes::default()
                };
                Box::new(OtlpExporter::new(id, client, shapes))
            }
            ExporterConfig::Phoenix(p) => {
                let client = OtlpClient::start(
                    &p.client_config(),
                    p.protocol(),
                    &tokio::runtime::Handle::current(),
                )
                .map_err(|e| anyhow::anyhow!("exporters.{id}: {e}"))?;
                Box::new(
                    PhoenixExporter::new(id, client)
                        .with_context(|| format!("exporters.{id}: cannot start"))?,
                )
            }
        });
    }
    Ok(Exporters::new(list))
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
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", receiver.brokers.join(","));
    // Only the connection settings of the receiver's client apply to this small client.
    for (k, v) in crate::receivers::kafka::connection_properties(&receiver.client) {
        client.set(k, v);
    }
    let state = crate::telemetry::drift::state::StateTopic {
        client,
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
