//! How `eval` gets the pipeline's verdicts back in input order.
//!
//! Every decoded request is one input with its own acknowledgement token ([`EvalInput`]); the
//! pipeline's workers, trace buffer and judges finish inputs in any order. The [`Ledger`] keeps
//! each input's lines until the input is finished, then releases the finished inputs in the
//! order they were read, each input's lines sorted by span (in the order the request lists
//! them) and then by evaluator (in configuration order): the order a single-threaded run over
//! the files prints. An input part of a trace that trace evaluators are waiting for stays
//! unfinished until that trace is judged, so what follows it waits too (in memory: the lines,
//! not the spans).
//!
//! The exporter side ([`Collector`]) files each trace's lines under the latest-read input among
//! their tokens: a trace evaluator's verdict on a trace spread over several files comes out
//! with the part that completed it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use evalstream_evaluators::otlp;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use serde::Deserialize;

use crate::commands::summary::Recorded;
use crate::pipeline::ack::{Origin, Rejection, Status, Token};
use crate::pipeline::export::{Exporter, Outputs, Shapes};

/// An input's place in the run: its sequence number, and the ledger that orders its lines.
pub struct EvalInput {
    seq: u64,
    ledger: Arc<Ledger>,
}

impl EvalInput {
    /// Input `seq` of `ledger`, which [`Ledger::register`] has seen.
    pub fn new(seq: u64, ledger: Arc<Ledger>) -> EvalInput {
        EvalInput { seq, ledger }
    }
}

impl Origin for EvalInput {
    fn finished(&self, status: Status) {
        self.ledger.finish(self.seq, status);
    }

    fn rejected(&self, _token: Token, rejection: Rejection) {
        self.ledger.reject(self.seq, rejection);
    }
}

/// One line of output with what orders and counts it.
#[derive(Debug)]
pub struct Line {
    /// Where the judged span is in its input (`u32::MAX` when it is in another input).
    position: u32,
    /// The evaluator's index in the configuration.
    evaluator_index: usize,
    /// The JSON line.
    pub text: String,
    /// The evaluator's name.
    pub evaluator: String,
    /// Its outcome, for the summary.
    pub outcome: Recorded,
}

/// A finished input, released in order.
#[derive(Debug)]
pub struct Finished {
    /// The input's name (the file, with the request's place in it when it holds several).
    pub name: String,
    /// Its spans.
    pub spans: u64,
    /// Its lines, in order.
    pub lines: Vec<Line>,
    /// Why it was rejected, when it was.
    pub rejections: Vec<String>,
}

struct Entry {
    name: String,
    /// Hex span id → its place in the request.
    positions: HashMap<String, u32>,
    lines: Vec<Line>,
    rejections: Vec<String>,
    finished: bool,
}

#[derive(Default)]
struct State {
    /// The next input to release.
    next: u64,
    entries: BTreeMap<u64, Entry>,
    ready: Vec<Finished>,
}

/// The inputs in flight and their lines; see the module documentation.
pub struct Ledger {
    state: Mutex<State>,
    /// Evaluator name → its index in the configuration.
    evaluators: HashMap<String, usize>,
}

impl Ledger {
    /// A ledger for a run of these evaluators (in configuration order).
    pub fn new<'a>(evaluators: impl IntoIterator<Item = &'a str>) -> Ledger {
        Ledger {
            state: Mutex::new(State::default()),
            evaluators: evaluators
                .into_iter()
                .enumerate()
                .map(|(i, n)| (n.to_owned(), i))
                .collect(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records input `seq` (numbered from 0, in reading order) before it goes to the pipeline,
    /// with the hex ids of its spans in order.
    pub fn register(&self, seq: u64, name: String, span_ids: Vec<String>) {
        let positions = span_ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, i as u32))
            .collect();
        self.state().entries.insert(
            seq,
            Entry {
                name,
                positions,
                lines: Vec::new(),
                rejections: Vec::new(),
                finished: false,
            },
        );
    }

    /// Files `lines` under input `seq`.
    fn add(&self, seq: u64, lines: &[String]) {
        let mut state = self.state();
        let Some(entry) = state.entries.get_mut(&seq) else {
            return;
        };
        for text in lines {
            let Ok(facts) = serde_json::from_str::<Facts<'_>>(text) else {
                continue;
            };
            let outcome = match (facts.outcome, facts.score, facts.passed) {
                ("scored", Some(value), Some(passed)) => Recorded::Scored { value, passed },
                ("error", ..) => Recorded::Error,
                _ => Recorded::Skipped,
            };
            entry.lines.push(Line {
                position: entry
                    .positions
                    .get(facts.span_id)
                    .copied()
                    .unwrap_or(u32::MAX),
                evaluator_index: self
                    .evaluators
                    .get(facts.evaluator)
                    .copied()
                    .unwrap_or(usize::MAX),
                text: text.clone(),
                evaluator: facts.evaluator.to_owned(),
                outcome,
            });
        }
    }

    fn reject(&self, seq: u64, rejection: Rejection) {
        if let Some(entry) = self.state().entries.get_mut(&seq) {
            entry.rejections.push(rejection.message);
        }
    }

    fn finish(&self, seq: u64, _status: Status) {
        let mut state = self.state();
        if let Some(entry) = state.entries.get_mut(&seq) {
            entry.finished = true;
        }
        loop {
            let next = state.next;
            match state.entries.get(&next) {
                Some(entry) if entry.finished => {}
                _ => break,
            }
            let Some(mut entry) = state.entries.remove(&next) else {
                break;
            };
            // Stable: a span's lines keep the order they were made in within one evaluator.
            entry.lines.sort_by_key(|l| (l.position, l.evaluator_index));
            state.ready.push(Finished {
                name: entry.name,
                spans: entry.positions.len() as u64,
                lines: entry.lines,
                rejections: entry.rejections,
            });
            state.next += 1;
        }
    }

    /// The inputs released since the last call, in order.
    pub fn take_ready(&self) -> Vec<Finished> {
        std::mem::take(&mut self.state().ready)
    }

    /// Inputs not released yet.
    pub fn unreleased(&self) -> usize {
        self.state().entries.len()
    }
}

/// What the ledger reads of a line.
#[derive(Deserialize)]
struct Facts<'a> {
    span_id: &'a str,
    evaluator: &'a str,
    outcome: &'a str,
    score: Option<f64>,
    passed: Option<bool>,
}

/// `eval`'s exporter: JSON lines to the ledger, and evaluator spans kept for `--output`.
pub struct Collector {
    ledger: Arc<Ledger>,
    /// Evaluator spans under their judged spans' resources, when `--output` asks for them.
    spans: Option<Mutex<Vec<ResourceSpans>>>,
}

impl Collector {
    /// A collector filing lines in `ledger`, keeping evaluator spans when `keep_spans`.
    pub fn new(ledger: Arc<Ledger>, keep_spans: bool) -> Collector {
        Collector {
            ledger,
            spans: keep_spans.then(|| Mutex::new(Vec::new())),
        }
    }

    /// The evaluator spans kept, under their judged spans' resources.
    pub fn take_spans(&self) -> Vec<ResourceSpans> {
        self.spans
            .as_ref()
            .map(|s| std::mem::take(&mut *s.lock().unwrap_or_else(PoisonError::into_inner)))
            .unwrap_or_default()
    }
}

impl Exporter for Collector {
    fn id(&self) -> &str {
        "eval"
    }

    fn shapes(&self) -> Shapes {
        Shapes {
            lines: true,
            spans: self.spans.is_some(),
            events: false,
            verdicts: false,
        }
    }

    fn export(&self, outputs: &Outputs, tokens: &[Token]) {
        let seq = tokens
            .iter()
            .filter_map(|t| t.origin::<EvalInput>().map(|i| i.seq))
            .max();
        if let Some(seq) = seq {
            self.ledger.add(seq, &outputs.lines);
        }
        if let (Some(kept), Some(request)) = (&self.spans, &outputs.spans) {
            kept.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(request.resource_spans.iter().cloned());
        }
    }

    fn flush(&self, _timeout: Duration) -> bool {
        true
    }
}

/// The hex ids of a request's spans, in order.
pub fn span_ids(request: &otlp::types::ExportTraceServiceRequest) -> Vec<String> {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| otlp::hex(&s.span_id))
        .collect()
}
