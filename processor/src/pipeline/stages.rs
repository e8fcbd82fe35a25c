//! The pipeline's threads, started and stopped together: one evaluation [`Worker`] per core, with
//! trace evaluators one trace-buffer shard per core ([`Assembler`]), the judge service
//! ([`JudgeService`]), the join of log events to spans when a receiver takes logs ([`Joiner`]) and
//! the script reloader. `evalstream run` feeds it from its receivers and
//! `evalstream eval` from files: both evaluate through this one loop, so a verdict offline is the
//! verdict online.
//!
//! The work queue is bounded (eight batches per worker); a receiver blocks on it, which is the
//! backpressure that reaches the client (Kafka: fewer polls; OTLP: `RESOURCE_EXHAUSTED`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use evalstream_evaluators::evaluator::EvaluatorSet;
use evalstream_evaluators::pricing::PriceTable;
use tracing::warn;

use super::assembly::AssemblyConfig;
use super::budgets::Budgets;
use super::evaluate::Scoring;
use super::export::Exporters;
use super::join::JoinConfig;
use super::joiner::{JoinThread, Joiner};
use super::judge::{self, JudgeService, WhenFull};
use super::redaction::Redactor;
use super::sampler::Sampler;
use super::sampling::SamplingConfig;
use super::traces::Assembler;
use super::worker::{Input, Worker};
use crate::telemetry::metrics::Metrics;

/// How the pipeline is set up, beyond its evaluators and exporters.
pub struct Settings<'a> {
    /// The trace buffer's limits.
    pub traces: &'a AssemblyConfig,
    /// Model prices, for the cost of spans and judge calls.
    pub prices: PriceTable,
    /// Judges: off (`eval --skip-judges`: their spans are skipped `not_applicable`), or on with
    /// what to do when a judge's queue is full.
    pub judges: Option<WhenFull>,
    /// Whether edited scripts are reloaded (the long-running worker) or not (a one-off run).
    pub reload: bool,
    /// Redaction of the spans forwarded as they came (inline mode), when configured.
    pub redactor: Option<Arc<Redactor>>,
    /// The join of log events to spans, when a receiver takes logs (`eval` joins before).
    pub logs: Option<&'a JoinConfig>,
    /// Tail sampling, when configured: kept traces go to the exporters' sampled ones, through
    /// `redactor`.
    pub sampling: Option<&'a SamplingConfig>,
    /// Span-level cost budgets the workers count spans into, when configured.
    pub budgets: Option<Arc<Budgets>>,
}

/// What runs between the receivers and the exporters: workers, trace buffer, judges.
pub struct Pipeline {
    /// The workers' queue; receivers hold clones. The pipeline stops once all are dropped.
    work: Sender<Vec<Input>>,
    workers: Vec<thread::JoinHandle<()>>,
    shards: Vec<thread::JoinHandle<()>>,
    join: Option<JoinThread>,
    worker: Arc<Worker>,
    exporters: Arc<Exporters>,
    done: Arc<AtomicBool>,
    reloader: Option<thread::JoinHandle<()>>,
}

impl Pipeline {
    /// Starts the threads. Judge clients are made here, so a bad judge configuration fails now.
    pub fn start(
        settings: Settings<'_>,
        evaluators: Arc<EvaluatorSet>,
        exporters: Arc<Exporters>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Pipeline> {
        let threads = thread::available_parallelism().map_or(2, |n| n.get());
        // Tail sampling decides on whole traces: it needs the trace buffer too.
        let needs_traces = evaluators.needs_traces() || settings.sampling.is_some();
        let sampler = settings.sampling.map(|config| {
            Arc::new(Sampler::new(
                config,
                &evaluators,
                settings.prices.clone(),
                settings.redactor.clone(),
                (exporters.clone(), metrics.clone()),
                threads,
                Duration::from_secs_f64(settings.traces.max_wait_seconds),
            ))
        });
        let scoring = Arc::new(Scoring {
            evaluators,
            exporters: exporters.clone(),
            metrics: metrics.clone(),
            prices: settings.prices,
            budgets: settings.budgets,
        });
        let output = judge::Output {
            exporters: exporters.clone(),
            metrics: metrics.clone(),
            mailbox: sampler.as_ref().and_then(|s| s.mailbox()),
        };
        let judges = match settings.judges {
            Some(when_full) => {
                JudgeService::start(&scoring.evaluators, &output, when_full)?.map(Arc::new)
            }
            None => None,
        };
        let (assembler, shards) = if needs_traces {
            let (assembler, shards) = Assembler::start(
                settings.traces,
                threads,
                scoring.clone(),
                judges.clone(),
                sampler,
            )?;
            (Some(assembler), shards)
        } else {
            (None, Vec::new())
        };
        let (joiner, join) = match settings.logs {
            Some(config) => {
                let (joiner, thread) =
                    Joiner::start(config, scoring.clone(), assembler.clone(), judges.clone())?;
                (Some(joiner), Some(thread))
            }
            None => (None, None),
        };
        let (work_tx, work_rx) = crossbeam_channel::bounded(threads * 8);
        let worker = Arc::new(Worker {
            scoring,
            traces: assembler,
            judges,
            redactor: settings.redactor,
            join: joiner,
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
        let reloader = match settings.reload {
            true => super::reload::start(&worker.scoring.evaluators, &metrics, &done)?,
            false => None,
        };
        tracing::debug!(
            workers = threads,
            trace_buffer = needs_traces,
            "pipeline started"
        );
        Ok(Pipeline {
            work: work_tx,
            workers,
            shards,
            join,
            worker,
            exporters,
            done,
            reloader,
        })
    }

    /// The exporters, for outputs made beside the pipeline (the guard API's verdicts).
    pub fn exporters(&self) -> Arc<Exporters> {
        self.exporters.clone()
    }

    /// The join of log events to spans, when a receiver takes logs.
    pub fn join(&self) -> Option<Arc<Joiner>> {
        self.worker.join.clone()
    }

    /// The evaluation worker threads (one per core).
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Where inputs go (bounded: sending blocks while the workers are busy).
    pub fn work(&self) -> Sender<Vec<Input>> {
        self.work.clone()
    }

    /// The trace buffer, when trace evaluators are configured.
    pub fn traces(&self) -> Option<Assembler> {
        self.worker.traces.clone()
    }

    /// The judge service, when an evaluator is a judge and judges are on.
    pub fn judges(&self) -> Option<&Arc<JudgeService>> {
        self.worker.judges.as_ref()
    }

    /// Inputs held by queued and running judge calls (once per call).
    pub fn held_by_judges(&self) -> Arc<AtomicUsize> {
        self.worker
            .judges
            .as_ref()
            .map_or_else(Default::default, |j| j.held())
    }

    /// Lets the workers finish their queue (the receivers have stopped and dropped their
    /// senders), evaluates what the trace buffer holds, waits up to `judge_patience` for the
    /// judge calls still queued or running (the judge service then gives running calls its own
    /// drain time), flushes the exporters.
    pub fn stop(self, judge_patience: Duration) {
        let Pipeline {
            work,
            workers,
            shards,
            join,
            worker,
            exporters,
            done,
            reloader,
        } = self;
        drop(work);
        for w in workers {
            let _ = w.join();
        }
        // Spans still waiting for their events are evaluated as they are (into the trace
        // buffer, which is flushed next); events still waiting are dropped.
        if let Some(join) = join {
            join.stop();
        }
        // The workers' handles are gone with them; this last one lets the shards stop.
        if let Some(traces) = &worker.traces {
            traces.flush(None);
        }
        let judges = worker.judges.clone();
        drop(worker);
        for s in shards {
            let _ = s.join();
        }
        if let Some(judges) = judges {
            let held = judges.held();
            let deadline = Instant::now() + judge_patience;
            while held.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
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
