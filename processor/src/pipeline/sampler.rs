//! Online tail sampling: the trace buffer's shards decide on each trace once its evaluators have
//! run ([`super::sampling::Policy`]), and forward the kept ones whole, redacted when configured,
//! to the exporters named in `sampling.exporters`.
//!
//! With sampling on, the trace buffer keeps every trace, each span whole (not the skeleton trace
//! evaluators make do with), and the verdicts each input's span evaluators reached travel with
//! its spans ([`Verdicts`]): the shard decides on the spans and every verdict of the trace without
//! running an evaluator twice.
//!
//! **Judges.** A verdict by an LLM judge comes later, from the judge service. When the rules read
//! a judge's verdicts (`failed` or `score_below` naming it, or `'*'`), a complete trace whose
//! judge calls are still out waits for them up to `decision_wait_seconds`, holding its inputs,
//! then is decided on what is known (counted in `evalstream_sampling_waits_total`). The judge
//! service posts each outcome to the [`Mailbox`] of the trace's shard; the shard reads it when
//! it decides, so a verdict that arrives before its trace reached the shard is not lost.
//!
//! **At least once.** A decided trace's inputs are held until the sampled exporters accepted
//! the forwarded trace (their tokens travel with it), so an input is committed only after its
//! evaluations and its forwarded traces are delivered; a replay after a crash decides the same
//! way (the rules are deterministic, `top_percent` aside, which depends on the traces seen
//! before) and forwards the same traces again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evalstream_evaluators::evaluator::{EvaluatorSet, Outcome};
use evalstream_evaluators::pricing::PriceTable;
use evalstream_evaluators::span::GenAiSpan;

use super::ack::{Hold, Token};
use super::assembly::StoredSpan;
use super::export::Exporters;
use super::redaction::{Redactions, Redactor};
use super::sampling::{Policy, Rule, SamplingConfig, TraceFacts};
use crate::telemetry::metrics::Metrics;

/// What the evaluators concluded on some spans of one trace, for the policy.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Verdicts {
    /// Scored evaluations: evaluator, score, passed.
    pub scored: Vec<(String, f64, bool)>,
    /// Judge calls queued for these spans: their verdicts come through the [`Mailbox`].
    pub awaited: u32,
}

impl Verdicts {
    /// Notes one evaluation's outcome by `evaluator`.
    pub fn note(&mut self, evaluator: &str, outcome: &Outcome) {
        if let Outcome::Scored(score) = outcome {
            self.scored
                .push((evaluator.to_owned(), score.value, score.passed));
        }
    }

    /// Adds `other`'s.
    pub fn extend(&mut self, other: Verdicts) {
        self.scored.extend(other.scored);
        self.awaited += other.awaited;
    }
}

/// Judge outcomes on their way to the shard that holds their trace: one map per shard, keyed by
/// trace id. The judge service's tasks post (only when the rules read a judge); the shard takes
/// a trace's when it decides, and sweeps what nobody took (a verdict later than its trace's
/// wait) once it is older than the longest a trace can take to be decided (`max_wait_seconds`
/// plus `decision_wait_seconds`). So it holds at most the verdicts of that long.
pub struct Mailbox {
    shards: Vec<Mutex<HashMap<Vec<u8>, Posted>>>,
    orphan_age: Duration,
}

struct Posted {
    /// Scored outcomes (`None` for an outcome without a score: an error, a skip).
    outcomes: Vec<Option<(String, f64, bool)>>,
    first: Instant,
}

impl Mailbox {
    /// A mailbox for `shards` shards whose posts are swept after `orphan_age`.
    pub fn new(shards: usize, orphan_age: Duration) -> Mailbox {
        Mailbox {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            orphan_age,
        }
    }

    /// The shard that owns `trace_id`: the trace buffer shards by the same function.
    pub fn shard_of(trace_id: &[u8], shards: usize) -> usize {
        // Trace ids are random: their last bytes spread traces evenly.
        let tail = trace_id
            .iter()
            .rev()
            .take(8)
            .fold(0u64, |h, &b| (h << 8) | u64::from(b));
        (tail % shards.max(1) as u64) as usize
    }

    fn map(&self, trace_id: &[u8]) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Posted>> {
        self.shards[Self::shard_of(trace_id, self.shards.len())]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Posts the outcome of a judge call on a span of `trace_id`.
    pub fn post(&self, trace_id: &[u8], evaluator: &str, outcome: &Outcome) {
        let scored = match outcome {
            Outcome::Scored(score) => Some((evaluator.to_owned(), score.value, score.passed)),
            _ => None,
        };
        self.map(trace_id)
            .entry(trace_id.to_vec())
            .or_insert_with(|| Posted {
                outcomes: Vec::new(),
                first: Instant::now(),
            })
            .outcomes
            .push(scored);
    }

    /// Takes what was posted for `trace_id`.
    fn take(&self, trace_id: &[u8]) -> Vec<Option<(String, f64, bool)>> {
        self.map(trace_id)
            .remove(trace_id)
            .map(|p| p.outcomes)
            .unwrap_or_default()
    }

    /// Drops outcomes of shard `shard` that waited past the orphan age; returns how many.
    pub fn sweep(&self, shard: usize, now: Instant) -> usize {
        let Some(map) = self.shards.get(shard) else {
            return 0;
        };
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        let before = map.len();
        map.retain(|_, p| now.saturating_duration_since(p.first) < self.orphan_age);
        before - map.len()
    }
}

/// Slack past the longest a trace can take to be decided before an outcome nobody took is swept.
const SWEEP_MARGIN: Duration = Duration::from_secs(30);

/// A trace evaluated and waiting for its decision.
pub struct Deciding {
    /// What the rules read.
    pub facts: TraceFacts,
    /// Judge verdicts still out.
    pub awaited: u32,
    /// Its spans, to forward.
    pub spans: Vec<StoredSpan>,
    /// Its inputs' holds: let go once the forwarded trace is handed to the exporters.
    pub holds: Vec<Hold>,
    /// Until when it waits for judge verdicts.
    pub deadline: Instant,
}

/// The policy, with where kept traces go.
pub struct Sampler {
    policy: Policy,
    keys: Vec<String>,
    prices: PriceTable,
    redactor: Option<Arc<Redactor>>,
    exporters: Arc<Exporters>,
    metrics: Arc<Metrics>,
    /// Whether the rules read a judge's verdicts (so a trace waits for its judge calls).
    waits: bool,
    wait: Duration,
    /// The rules' names, for the metric.
    names: Vec<String>,
    /// Where judge outcomes are posted.
    mailbox: Arc<Mailbox>,
}

impl Sampler {
    /// A sampler of `config`'s rules over `evaluators`, forwarding kept traces to the sampled
    /// exporters of `exporters` ([`Exporters::forward_sampled`]) through `redactor`, for a trace
    /// buffer of `shards` shards waiting up to `max_wait` for a trace.
    pub fn new(
        config: &SamplingConfig,
        evaluators: &EvaluatorSet,
        prices: PriceTable,
        redactor: Option<Arc<Redactor>>,
        (exporters, metrics): (Arc<Exporters>, Arc<Metrics>),
        shards: usize,
        max_wait: Duration,
    ) -> Sampler {
        let policy = Policy::new(config);
        let keys = policy
            .attribute_keys()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let judges: Vec<&str> = evaluators
            .evaluators()
            .iter()
            .filter(|e| e.evaluator.as_judge().is_some())
            .map(|e| e.name.as_str())
            .collect();
        let waits = policy.rules().iter().any(|r| match r {
            Rule::Failed(name) => name == "*" && !judges.is_empty() || judges.contains(&&**name),
            Rule::ScoreBelow(s) => {
                s.evaluator == "*" && !judges.is_empty() || judges.contains(&s.evaluator.as_str())
            }
            _ => false,
        });
        let names = policy.rules().iter().map(ToString::to_string).collect();
        Sampler {
            policy,
            keys,
            prices,
            redactor,
            exporters,
            metrics,
            waits,
            wait: Duration::from_secs_f64(config.decision_wait_seconds),
            names,
            mailbox: Arc::new(Mailbox::new(
                shards,
                max_wait + Duration::from_secs_f64(config.decision_wait_seconds) + SWEEP_MARGIN,
            )),
        }
    }

    /// Where the judge service posts its outcomes: only when the rules read a judge's verdict
    /// (else nobody would take them).
    pub fn mailbox(&self) -> Option<Arc<Mailbox>> {
        self.waits.then(|| self.mailbox.clone())
    }

    /// Drops judge outcomes of shard `shard` that no trace took.
    pub fn sweep(&self, shard: usize, now: Instant) {
        self.mailbox.sweep(shard, now);
    }

    /// The facts of a trace's spans and verdicts, for [`Sampler::poll`].
    pub fn facts(
        &self,
        trace_id: &[u8],
        spans: &[GenAiSpan<'_>],
        verdicts: &Verdicts,
    ) -> TraceFacts {
        let keys: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        let mut facts = TraceFacts::new(trace_id);
        for span in spans {
            facts.add_span(span, &self.prices, &keys);
        }
        for (evaluator, score, passed) in &verdicts.scored {
            facts.add_verdict(evaluator, *score, *passed);
        }
        facts
    }

    /// How long a trace waits for its judges' verdicts.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Reads the mailbox for a waiting trace; decides it when its verdicts are in, its wait is
    /// over or `now_or_never` (the trace's inputs are being let go); else returns it.
    pub fn poll(
        &self,
        mut deciding: Deciding,
        now: Instant,
        now_or_never: bool,
    ) -> Option<Deciding> {
        if self.waits && deciding.awaited > 0 {
            for outcome in self.mailbox.take(&deciding.facts.trace_id) {
                deciding.awaited = deciding.awaited.saturating_sub(1);
                if let Some((evaluator, score, passed)) = outcome {
                    deciding.facts.add_verdict(&evaluator, score, passed);
                }
            }
            if deciding.awaited > 0 && now < deciding.deadline && !now_or_never {
                return Some(deciding);
            }
            let outcome = if deciding.awaited == 0 {
                "verdicts_in"
            } else {
                "decided_without"
            };
            self.metrics
                .sampling_waits
                .with_label_values(&[outcome])
                .inc();
        }
        self.decide(deciding);
        None
    }

    /// Decides, counts, and forwards a kept trace to the sampled exporters with its inputs'
    /// tokens; the holds go when this returns (the exporters hold the tokens until delivery).
    fn decide(&self, deciding: Deciding) {
        let decision = self.policy.decide(&deciding.facts);
        let rule = decision
            .rule
            .and_then(|i| self.names.get(i))
            .map_or("none", String::as_str);
        let kept = if decision.keep { "keep" } else { "drop" };
        self.metrics
            .sampled_traces
            .with_label_values(&[rule, kept])
            .inc();
        if !decision.keep || deciding.spans.is_empty() {
            return;
        }
        let mut request = StoredSpan::request(&deciding.spans);
        if let Some(redactor) = &self.redactor {
            let mut done = Redactions::default();
            redactor.request(&mut request, &mut done);
            self.metrics.record_redactions(done.counts());
        }
        let tokens: Vec<Token> = deciding.holds.iter().map(|h| h.token().clone()).collect();
        self.exporters.forward_sampled(&request, &tokens);
    }
}

#[cfg(test)]
mod tests;
