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

/// Picks inputs by their tokens: a receiver's way to name its own inputs (those of revoked
/// partitions, say) without the buffer knowing what they are.
pub type Selector = Arc<dyn Fn(&Token) -> bool + Send + Sync>;

/// How often a shard looks for complete and timed-out traces.
const TICK: Duration = Duration::from_millis(100);

/// Commands queued per shard.
const QUEUE: usize = 1024;

enum Command {
    Add {
        trace_id: Vec<u8>,
        spans: Vec<StoredSpan>,
        hold: Hold,
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
}

impl Assembler {
    /// Starts `shards` threads (at least one), splitting the buffer's limits between them.
    pub fn start(
        config: &AssemblyConfig,
        shards: usize,
        scoring: Arc<Scoring>,
        judges: Option<Arc<JudgeService>>,
    ) -> std::io::Result<(Assembler, Vec<JoinHandle<()>>)> {
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
                scoring: scoring.clone(),
                judges: judges.clone(),
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
            },
            threads,
        ))
    }

    /// Inputs held by buffered traces (counted once per trace), for the receivers' limits.
    pub fn held(&self) -> Arc<AtomicUsize> {
        self.held.clone()
    }

    fn shard(&self, trace_id: &[u8]) -> &Sender<Command> {
        // Trace ids are random: their last bytes spread traces evenly.
        let tail = trace_id
            .iter()
            .rev()
            .take(8)
            .fold(0u64, |h, &b| (h << 8) | u64::from(b));
        &self.shards[(tail % self.shards.len() as u64) as usize]
    }

    /// Buffers spans of one trace from the input of `token`, holding it until they are judged.
    /// Waits while the shard's queue is full.
    pub fn add(&self, trace_id: Vec<u8>, spans: Vec<StoredSpan>, token: &Token) {
        let hold = Hold::new(token, &self.held);
        let shard = self.shard(&trace_id);
        // A shard stops only after every handle is gone, so this cannot fail; if it did, the
        // hold is dropped and the input acknowledged without its trace evaluations.
        let _ = shard.send(Command::Add {
            trace_id,
            spans,
            hold,
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
    buffer: TraceBuffer<Hold>,
    scoring: Arc<Scoring>,
    /// The judge service, for judge evaluators gated on trace evaluators' scores.
    judges: Option<Arc<JudgeService>>,
    flush_all: bool,
    /// Inputs being flushed (until resumed): their spans are evaluated on arrival.
    flushing: Vec<Selector>,
    /// Traces and bytes last added to the shared gauges.
    reported: (i64, i64),
}

impl Shard {
    fn run(mut self, commands: &Receiver<Command>) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            match commands.recv_deadline(next_tick) {
                Ok(Command::Add {
                    trace_id,
                    spans,
                    hold,
                }) => {
                    if self.flush_all || self.flushing.iter().any(|f| f(hold.token())) {
                        self.evaluate(ReadyTrace {
                            trace_id,
                            spans,
                            holds: vec![hold],
                            completion: Completion::Flushed,
                        });
                    } else {
                        for evicted in self.buffer.add(&trace_id, spans, hold, Instant::now()) {
                            self.evaluate(evicted);
                        }
                    }
                }
                Ok(Command::Flush(None)) => {
                    self.flush_all = true;
                    for ready in self.buffer.drain() {
                        self.evaluate(ready);
                    }
                }
                Ok(Command::Flush(Some(selector))) => {
                    let flushed = self.buffer.flush_where(|h| selector(h.token()));
                    debug!(traces = flushed.len(), "flushing traces of inputs let go");
                    for ready in flushed {
                        self.evaluate(ready);
                    }
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
                next_tick = now + TICK;
                self.report();
            }
        }
        for ready in self.buffer.drain() {
            self.evaluate(ready);
        }
        self.report();
    }

    /// Runs the trace evaluators on a trace that left the buffer, then lets go of its inputs
    /// (the exporters now hold them until delivery).
    fn evaluate(&self, ready: ReadyTrace<Hold>) {
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
        let judged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let decoded: Vec<_> = ready.spans.iter().map(StoredSpan::decode).collect();
            let views = decoded.iter().map(DecodedSpan::view).collect();
            let trace = TraceView::new(views, ready.completion.is_complete());
            let tokens: Vec<Token> = ready.holds.iter().map(|h| h.token().clone()).collect();
            self.scoring.score(
                std::slice::from_ref(&trace),
                Pass::Traces(ready.completion),
                &tokens,
                self.judges.as_deref(),
            );
        }));
        if let Err(panic) = judged {
            tracing::error!(trace_id = %evalstream_evaluators::otlp::hex(&ready.trace_id),
                message = %crate::pipeline::evaluate::panic_message(panic.as_ref()),
                "judging a trace panicked; its trace evaluations are lost");
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
