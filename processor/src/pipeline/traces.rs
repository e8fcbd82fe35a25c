//! The trace buffer's threads: trace evaluators judge a span with its whole trace, so the spans
//! of each trace are buffered ([`TraceBuffer`]) until it is complete and then evaluated.
//!
//! The buffer is sharded by trace id over one thread per core: each shard owns its traces, so
//! shards never lock, and trace evaluation (citations, grounding) runs in parallel. Workers hand
//! spans to a shard through a bounded queue, which is backpressure when shards fall behind.
//! Shards only ever wait on the output producer, never on the workers or the consumer, so the
//! pipeline cannot deadlock.
//!
//! Every input that contributed spans to a buffered trace is held ([`Hold`]) until that trace's
//! evaluations are handed to the exporters: it is not acknowledged before, so a crash loses
//! nothing. When a receiver must let inputs go (Kafka partitions revoked) or the worker stops, the
//! shards evaluate the traces holding the inputs it names ([`Selector`]) at once with what they
//! have (`flushed`), so those inputs finish before another worker takes them over.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use evalstream_evaluators::trace::TraceView;
use tracing::debug;

use super::ack::{Hold, Token};
use super::assembly::{
    AssemblyConfig, Completion, DecodedSpan, ReadyTrace, StoredSpan, TraceBuffer,
};
use super::evaluate::{Pass, Scoring};
use super::judge::JudgeService;
use super::sampler::{Deciding, Mailbox, Sampler, Verdicts};

/// Picks inputs by their tokens: a receiver's way to name its own inputs (those of revoked
/// partitions, say) without the buffer knowing what they are.
pub type Selector = Arc<dyn Fn(&Token) -> bool + Send + Sync>;

/// How often a shard looks for complete and timed-out traces.
const TICK: Duration = Duration::from_millis(100);

/// Commands queued per shard.
const QUEUE: usize = 1024;

/// How often a shard sweeps judge outcomes nobody took from the sampler's mailbox.
const SWEEP: Duration = Duration::from_secs(10);

/// What one input contributed to a buffered trace besides its spans: the hold that keeps it
/// unacknowledged, and (with tail sampling) its span evaluators' verdicts.
pub struct Contribution {
    hold: Hold,
    verdicts: Verdicts,
}

enum Command {
    Add {
        trace_id: Vec<u8>,
        spans: Vec<StoredSpan>,
        contribution: Contribution,
    },
    Flush(Option<Selector>),
    Resume(Selector),
}

/// The handle to the trace buffer's shards; cloned into the workers and the consumer. The
/// shards stop when every handle is dropped, evaluating what they still hold.
#[derive(Clone)]
pub struct Assembler {
    shards: Vec<Sender<Command>>,
    held: Arc<AtomicUsize>,
    samples: bool,
}

impl Assembler {
    /// Starts `shards` threads (at least one), splitting the buffer's limits between them.
    /// With a `sampler`, every trace is buffered whole and decided once evaluated.
    pub fn start(
        config: &AssemblyConfig,
        shards: usize,
        scoring: Arc<Scoring>,
        judges: Option<Arc<JudgeService>>,
        sampler: Option<Arc<Sampler>>,
    ) -> std::io::Result<(Assembler, Vec<JoinHandle<()>>)> {
        let samples = sampler.is_some();
        let shards = shards.max(1);
        let per_shard = AssemblyConfig {
            max_traces: (config.max_traces / shards).max(1),
            max_bytes: (config.max_bytes / shards).max(1),
            ..config.clone()
        };
        let mut senders = Vec::with_capacity(shards);
        let mut threads = Vec::with_capacity(shards);
        for i in 0..shards {
            let (tx, rx) = crossbeam_channel::bounded(QUEUE);
            let shard = Shard {
                buffer: TraceBuffer::new(per_shard.clone()),
                index: i,
                scoring: scoring.clone(),
                judges: judges.clone(),
                sampler: sampler.clone(),
                deciding: Vec::new(),
                flush_all: false,
                flushing: Vec::new(),
                reported: (0, 0),
            };
            threads.push(
                crate::evaluation_thread(format!("evalstream-traces-{i}"))
                    .spawn(move || shard.run(&rx))?,
            );
            senders.push(tx);
        }
        Ok((
            Assembler {
                shards: senders,
                held: Arc::new(AtomicUsize::new(0)),
                samples,
            },
            threads,
        ))
    }

    /// Inputs held by buffered traces (counted once per trace), for the receivers' limits.
    pub fn held(&self) -> Arc<AtomicUsize> {
        self.held.clone()
    }

    /// Whether tail sampling is on: every trace is buffered ([`Assembler::buffers`]), its
    /// spans whole, with the verdicts of its span evaluators.
    pub fn samples(&self) -> bool {
        self.samples
    }

    /// Whether a trace is buffered: with tail sampling every one, else those a trace evaluator
    /// of `scoring` samples.
    pub fn buffers(&self, scoring: &Scoring, trace_id: &[u8]) -> bool {
        self.samples || scoring.samples_trace(trace_id)
    }

    fn shard(&self, trace_id: &[u8]) -> &Sender<Command> {
        // The sampler's mailbox shards the same way.
        &self.shards[Mailbox::shard_of(trace_id, self.shards.len())]
    }

    /// Buffers spans of one trace from the input of `token`, holding it until they are judged,
    /// with the `verdicts` its span evaluators reached on them (for tail sampling). Waits while
    /// the shard's queue is full.
    pub fn add(
        &self,
        trace_id: Vec<u8>,
        spans: Vec<StoredSpan>,
        token: &Token,
        verdicts: Verdicts,
    ) {
        let hold = Hold::new(token, &self.held);
        let shard = self.shard(&trace_id);
        // A shard stops only after every handle is gone, so this cannot fail; if it did, the
        // hold is dropped and the input acknowledged without its trace evaluations.
        let _ = shard.send(Command::Add {
            trace_id,
            spans,
            contribution: Contribution { hold, verdicts },
        });
    }

    /// Evaluates now, with what they have, the traces holding inputs `selector` picks (every
    /// trace when `None`); spans of such inputs that arrive until [`Assembler::resume`] are
    /// evaluated at once. `None` is for stopping, and lasts.
    pub fn flush(&self, selector: Option<&Selector>) {
        for shard in &self.shards {
            let _ = shard.send(Command::Flush(selector.cloned()));
        }
    }

    /// Buffers spans of the inputs `selector` picks again (they were flushed for a revoke that
    /// has finished); `selector` is the one given to [`Assembler::flush`].
    pub fn resume(&self, selector: &Selector) {
        for shard in &self.shards {
            let _ = shard.send(Command::Resume(selector.clone()));
        }
    }
}

struct Shard {
    index: usize,
    buffer: TraceBuffer<Contribution>,
    scoring: Arc<Scoring>,
    /// The judge service, for judge evaluators gated on trace evaluators' scores.
    judges: Option<Arc<JudgeService>>,
    /// Tail sampling, when configured.
    sampler: Option<Arc<Sampler>>,
    /// Evaluated traces waiting for judge verdicts before they are decided.
    deciding: Vec<Deciding>,
    flush_all: bool,
    /// Inputs being flushed (until resumed): their spans are evaluated on arrival.
    flushing: Vec<Selector>,
    /// Traces and bytes last added to the shared gauges.
    reported: (i64, i64),
}

impl Shard {
    fn run(mut self, commands: &Receiver<Command>) {
        let mut next_tick = Instant::now() + TICK;
        let mut next_sweep = Instant::now() + SWEEP;
        loop {
            match commands.recv_deadline(next_tick) {
                Ok(Command::Add {
                    trace_id,
                    spans,
                    contribution,
                }) => {
                    let token = contribution.hold.token();
                    if self.flush_all || self.flushing.iter().any(|f| f(token)) {
                        self.evaluate(ReadyTrace {
                            trace_id,
                            spans,
                            holds: vec![contribution],
                            completion: Completion::Flushed,
                        });
                    } else {
                        let now = Instant::now();
                        for evicted in self.buffer.add(&trace_id, spans, contribution, now) {
                            self.evaluate(evicted);
                        }
                    }
                }
                Ok(Command::Flush(None)) => {
                    self.flush_all = true;
                    for ready in self.buffer.drain() {
                        self.evaluate(ready);
                    }
                    self.decide_waiting(|_| true);
                }
                Ok(Command::Flush(Some(selector))) => {
                    let flushed = self.buffer.flush_where(|c| selector(c.hold.token()));
                    debug!(traces = flushed.len(), "flushing traces of inputs let go");
                    for ready in flushed {
                        self.evaluate(ready);
                    }
                    self.decide_waiting(|d| d.holds.iter().any(|h| selector(h.token())));
                    self.flushing.push(selector);
                }
                Ok(Command::Resume(selector)) => {
                    self.flushing.retain(|f| !Arc::ptr_eq(f, &selector));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now >= next_tick {
                for ready in self.buffer.due(now) {
                    self.evaluate(ready);
                }
                self.decide_waiting(|_| false);
                next_tick = now + TICK;
                self.report();
            }
            if let Some(sampler) = &self.sampler
                && now >= next_sweep
            {
                sampler.sweep(self.index, now);
                next_sweep = now + SWEEP;
            }
        }
        for ready in self.buffer.drain() {
            self.evaluate(ready);
        }
        self.decide_waiting(|_| true);
        self.report();
    }

    /// Decides the traces waiting for judge verdicts whose verdicts are in or whose wait is
    /// over, and at once those `now` picks (their inputs are being let go).
    fn decide_waiting(&mut self, now_or_never: impl Fn(&Deciding) -> bool) {
        let Some(sampler) = &self.sampler else { return };
        let at = Instant::now();
        let waiting = std::mem::take(&mut self.deciding);
        for deciding in waiting {
            let now = now_or_never(&deciding);
            if let Some(still) = sampler.poll(deciding, at, now) {
                self.deciding.push(still);
            }
        }
    }

    /// Runs the trace evaluators on a trace that left the buffer, then lets go of its inputs
    /// (the exporters now hold them until delivery). With tail sampling the trace is decided
    /// then, or waits for its judges' verdicts.
    fn evaluate(&mut self, ready: ReadyTrace<Contribution>) {
        let metrics = &self.scoring.metrics;
        metrics
            .traces_assembled
            .with_label_values(&[ready.completion.as_str()])
            .inc();
        if ready.completion == Completion::Late {
            metrics.late_spans.inc_by(ready.spans.len() as u64);
        }
        // Evaluators are guarded one by one; a panic elsewhere (a bug) must not take the
        // shard and every trace it buffers down with it. The trace's evaluations are lost then;
        // its messages are still let go (their span evaluations were delivered).
        let (holds, mut verdicts): (Vec<Hold>, Verdicts) = ready.holds.into_iter().fold(
            (Vec::new(), Verdicts::default()),
            |(mut holds, mut verdicts), c| {
                holds.push(c.hold);
                verdicts.extend(c.verdicts);
                (holds, verdicts)
            },
        );
        let sampler = self.sampler.clone();
        let judged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let decoded: Vec<_> = ready.spans.iter().map(StoredSpan::decode).collect();
            let views = decoded.iter().map(DecodedSpan::view).collect();
            let trace = TraceView::new(views, ready.completion.is_complete());
            let tokens: Vec<Token> = holds.iter().map(|h| h.token().clone()).collect();
            let mut noted = Vec::new();
            self.scoring.score_noting(
                std::slice::from_ref(&trace),
                Pass::Traces(ready.completion),
                &tokens,
                self.judges.as_deref(),
                sampler.is_some().then_some(&mut noted),
            );
            sampler.as_ref().map(|sampler| {
                noted.into_iter().for_each(|v| verdicts.extend(v));
                let facts = sampler.facts(&ready.trace_id, trace.spans(), &verdicts);
                (facts, verdicts.awaited)
            })
        }));
        match (judged, sampler) {
            (Ok(Some((facts, awaited))), Some(sampler)) => {
                let now = Instant::now();
                let flushed = self.flush_all || ready.completion == Completion::Flushed;
                let deciding = Deciding {
                    facts,
                    awaited,
                    spans: ready.spans,
                    holds,
                    deadline: now + sampler.wait(),
                };
                if let Some(waiting) = sampler.poll(deciding, now, flushed) {
                    self.deciding.push(waiting);
                }
            }
            (Ok(_), _) => {}
            (Err(panic), _) => {
                tracing::error!(trace_id = %evalstream_evaluators::otlp::hex(&ready.trace_id),
                    message = %crate::pipeline::evaluate::panic_message(panic.as_ref()),
                    "judging a trace panicked; its trace evaluations are lost (and it is not forwarded)");
            }
        }
    }

    /// Moves the shared gauges by this shard's change since the last report.
    fn report(&mut self) {
        let now = (self.buffer.len() as i64, self.buffer.bytes() as i64);
        let metrics = &self.scoring.metrics;
        metrics.traces_buffered.add(now.0 - self.reported.0);
        metrics.trace_buffer_bytes.add(now.1 - self.reported.1);
        self.reported = now;
    }
}
