//! The evaluator contract: what a scorer is given, what it returns, and how evalstream decides
//! which spans it sees.
//!
//! An [`Evaluator`] reads one [`GenAiSpan`] and returns an [`Outcome`]. It never mutates the span,
//! so one decoded batch fans out to every evaluator without copies. Everything around the scorer —
//! its name and version, which spans it applies to ([`Selector`]), what fraction of traces it
//! samples ([`Sampler`]), and the deterministic id of each score — lives in [`ConfiguredEvaluator`]
//! so built-in scorers, scripts and judges share it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed, xxh3_128};

use crate::cascade::Cascade;
use crate::span::{GenAiSpan, OperationKind};
use crate::trace::TraceView;

/// A scorer: judges one span, alone or in the context of its trace.
///
/// Implementations must be cheap to call and must not panic on any span: missing content is a
/// [`Outcome::Skipped`], an unusable span an [`Outcome::Error`].
pub trait Evaluator: Send + Sync + fmt::Debug {
    /// Judges one span on its own.
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome;

    /// Judges one span with the other spans of its trace at hand (the retrieved documents, the
    /// tools offered). Span-level scorers ignore the trace.
    fn evaluate_in_trace(&self, span: &GenAiSpan<'_>, trace: &TraceView<'_>) -> Outcome {
        let _ = trace;
        self.evaluate(span)
    }

    /// Whether this scorer needs the trace: its verdict can change as more of the trace's spans
    /// arrive, so a streaming worker waits for the trace to complete before running it.
    fn needs_trace(&self) -> bool {
        false
    }

    /// Whether this span of `trace` is one the scorer judges at all. A trace-level scorer judges
    /// a trace once, on one span (its root); the others get no evaluation rather than a skip, so
    /// the skip counters stay meaningful.
    fn judges_in_trace(&self, span: &GenAiSpan<'_>, trace: &TraceView<'_>) -> bool {
        let _ = (span, trace);
        true
    }

    /// What the scorer's behaviour depends on beyond its options (a script's text), hashed: it
    /// goes into the evaluator's version, so score ids change when it does.
    fn fingerprint(&self) -> u64 {
        0
    }

    /// Picks up a changed definition (a script file edited), for scorers that have one.
    fn reload(&self) -> Reload {
        Reload::Unchanged
    }

    /// Whether [`Evaluator::reload`] can ever pick up a change (a script read from a file): the
    /// streaming worker polls definitions only when some evaluator says so.
    fn reloads(&self) -> bool {
        false
    }

    /// The judge model behind this evaluator, when it is one: the worker sends its requests
    /// asynchronously instead of calling [`Evaluator::evaluate`].
    fn as_judge(&self) -> Option<&crate::scorers::judge::LlmJudge> {
        None
    }
}

/// What [`Evaluator::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Nothing changed (or nothing can).
    Unchanged,
    /// A new definition is in use from now on.
    Reloaded,
    /// The new definition was rejected; the old one keeps running.
    Failed(String),
}

/// A score: what an evaluator concluded about a span.
///
/// Convention for built-in scorers: checks score `1.0` when they pass and `0.0` when they fail
/// (so a mean score is a pass rate and a drop is a loss of quality); measurements (length,
/// latency, cost) score the measured value and pass by their thresholds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    /// The score's value.
    pub value: f64,
    /// A low-cardinality label (`pass`, `refused`, `pii`, …): safe as a metric label.
    pub label: Cow<'static, str>,
    /// Whether quality is acceptable.
    pub passed: bool,
    /// Why, for a person reading the trace: what and where (a claim's number and byte range, a
    /// pattern and where it matched, a JSON path and keyword). Never the span's content: scores
    /// go to trace backends and logs, read by more people than the traces.
    pub explanation: String,
}

/// Why an evaluator did not score a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The span has nothing this evaluator judges (no JSON requested, no finish reason, …).
    NotApplicable,
    /// The instrumentation did not capture the content this evaluator needs.
    NoContent,
    /// The trace fell outside the evaluator's sampling rate.
    SampledOut,
    /// The judge's queue was full: the span was not sent (load shedding).
    Shed,
    /// The evaluator's spend budget for the period is used up.
    Budget,
    /// A `when` condition on an earlier evaluator's score did not hold (a cascade).
    Condition,
}

impl SkipReason {
    /// The reason's name, as used in output and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotApplicable => "not_applicable",
            SkipReason::NoContent => "no_content",
            SkipReason::SampledOut => "sampled_out",
            SkipReason::Shed => "shed",
            SkipReason::Budget => "budget",
            SkipReason::Condition => "condition",
        }
    }
}

/// The result of running one evaluator on one span.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The evaluator scored the span.
    Scored(Score),
    /// The evaluator did not judge the span.
    Skipped {
        /// Why.
        reason: SkipReason,
        /// A short detail for people (`no price for model x`), empty when the reason says it all.
        detail: Cow<'static, str>,
    },
    /// The evaluation failed.
    Error {
        /// A low-cardinality error class, reported as `error.type`.
        error_type: Cow<'static, str>,
        /// What went wrong.
        message: String,
    },
}

/// What a `no_content` skip tells the user to change.
pub const NO_CONTENT_HELP: &str = "the span carries no prompt or answer: capture content in the application (official OpenTelemetry GenAI instrumentations: OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=span_only, or event_only / span_and_event and send the log events too, which evalstream joins to their span; OpenInference: leave OPENINFERENCE_HIDE_INPUTS/OUTPUTS unset; OpenLLMetry: TRACELOOP_TRACE_CONTENT=true)";

impl Outcome {
    /// A pass/fail check's score: `1.0` when passed, `0.0` when not.
    pub fn check(
        passed: bool,
        label: impl Into<Cow<'static, str>>,
        explanation: impl Into<String>,
    ) -> Outcome {
        Outcome::Scored(Score {
            value: if passed { 1.0 } else { 0.0 },
            label: label.into(),
            passed,
            explanation: explanation.into(),
        })
    }

    /// A measurement's score.
    pub fn measured(
        value: f64,
        passed: bool,
        label: impl Into<Cow<'static, str>>,
        explanation: impl Into<String>,
    ) -> Outcome {
        Outcome::Scored(Score {
            value,
            label: label.into(),
            passed,
            explanation: explanation.into(),
        })
    }

    /// Skipped: not applicable to this span.
    pub fn not_applicable(detail: impl Into<Cow<'static, str>>) -> Outcome {
        Outcome::Skipped {
            reason: SkipReason::NotApplicable,
            detail: detail.into(),
        }
    }

    /// Skipped: the content needed was not captured. The detail says what to change, since a
    /// bare `no_content` left users guessing (issue 16: the official instrumentation's default
    /// writes no content on spans).
    pub fn no_content() -> Outcome {
        Outcome::Skipped {
            reason: SkipReason::NoContent,
            detail: Cow::Borrowed(NO_CONTENT_HELP),
        }
    }

    /// The outcome's name: `scored`, `skipped` or `error`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Scored(_) => "scored",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Error { .. } => "error",
        }
    }

    /// The score, when there is one.
    pub fn score(&self) -> Option<&Score> {
        match self {
            Outcome::Scored(s) => Some(s),
            _ => None,
        }
    }
}

/// Which spans an evaluator applies to. Every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorConfig {
    /// Operation kinds (`chat`, `embeddings`, `retrieval`, `tool`, `agent`, `guardrail`,
    /// `evaluator`, `other`). Defaults to what the evaluator type judges, usually `[chat]`.
    #[serde(default)]
    pub kinds: Option<Vec<OperationKind>>,
    /// `service.name` of the span's resource, any of.
    #[serde(default)]
    pub services: Vec<String>,
    /// Model names, any of; a trailing `*` matches a prefix (`gpt-4o*`).
    #[serde(default)]
    pub models: Vec<String>,
    /// Span names, any of; a trailing `*` matches a prefix.
    #[serde(default)]
    pub span_names: Vec<String>,
    /// Prompt versions (from any convention's prompt-version attribute), any of.
    #[serde(default)]
    pub prompt_versions: Vec<String>,
    /// Span attributes that must have one of the given values (compared as text).
    #[serde(default)]
    pub attributes: BTreeMap<String, OneOrMany>,
}

/// One value or a list of accepted values.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single accepted value.
    One(String),
    /// Any of these values.
    Many(Vec<String>),
}

impl OneOrMany {
    fn accepts(&self, value: &str) -> bool {
        match self {
            OneOrMany::One(v) => v == value,
            OneOrMany::Many(vs) => vs.iter().any(|v| v == value),
        }
    }
}

/// A compiled [`SelectorConfig`].
#[derive(Debug, Clone)]
pub struct Selector {
    kinds: Vec<OperationKind>,
    config: SelectorConfig,
}

fn glob_match(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

impl Selector {
    /// Compiles a selector; `default_kinds` apply when the config names none.
    pub fn new(config: SelectorConfig, default_kinds: &[OperationKind]) -> Selector {
        let kinds = config
            .kinds
            .clone()
            .unwrap_or_else(|| default_kinds.to_vec());
        Selector { kinds, config }
    }

    /// Whether the evaluator applies to this span.
    pub fn matches(&self, span: &GenAiSpan<'_>) -> bool {
        let c = &self.config;
        if !self.kinds.contains(&span.kind()) {
            return false;
        }
        if !c.services.is_empty()
            && !span
                .resource()
                .service_name
                .is_some_and(|s| c.services.iter().any(|x| x == s))
        {
            return false;
        }
        if !c.models.is_empty()
            && !span
                .model()
                .is_some_and(|m| c.models.iter().any(|p| glob_match(p, m)))
        {
            return false;
        }
        if !c.span_names.is_empty() && !c.span_names.iter().any(|p| glob_match(p, span.name())) {
            return false;
        }
        if !c.prompt_versions.is_empty()
            && !span
                .prompt_version()
                .is_some_and(|v| c.prompt_versions.iter().any(|x| x == v))
        {
            return false;
        }
        c.attributes.iter().all(|(key, accepted)| {
            span.attribute(key)
                .is_some_and(|v| accepted.accepts(&crate::span::attribute_text(v)))
        })
    }
}

/// Decides, from the trace id alone, whether a trace is in an evaluator's sample.
///
/// The decision compares a hash of the trace id with the rate, so every evaluator sees whole
/// traces, replays decide the same way, and a smaller rate's sample is a subset of a larger one's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    threshold: u64,
    always: bool,
}

impl Sampler {
    /// A sampler keeping `rate` (0 to 1) of traces.
    pub fn new(rate: f64) -> Sampler {
        let rate = rate.clamp(0.0, 1.0);
        Sampler {
            threshold: (rate * u64::MAX as f64) as u64,
            always: rate >= 1.0,
        }
    }

    /// Whether the trace is sampled.
    pub fn keeps(&self, trace_id: &[u8]) -> bool {
        self.always || xxh3_64(trace_id) < self.threshold
    }
}

/// A deterministic score id: a hash of trace id, span id, evaluator name and version, so a replay
/// after a crash produces the same ids and consumers can de-duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScoreId(pub [u8; 16]);

impl ScoreId {
    /// Derives the id of a score.
    pub fn new(trace_id: &[u8], span_id: &[u8], evaluator: &str, version: &str) -> ScoreId {
        let mut buf = Vec::with_capacity(
            trace_id.len() + span_id.len() + evaluator.len() + version.len() + 3,
        );
        for part in [trace_id, span_id, evaluator.as_bytes(), version.as_bytes()] {
            // Length-prefix each part so ("ab", "c") and ("a", "bc") never collide.
            buf.extend_from_slice(&(part.len() as u16).to_le_bytes());
            buf.extend_from_slice(part);
        }
        ScoreId(xxh3_128(&buf).to_be_bytes())
    }

    /// The span id of the evaluator span carrying this score: derived from the score id, never
    /// zero (an all-zero span id is invalid in OTLP).
    pub fn span_id(&self) -> [u8; 8] {
        let id = xxh3_64_with_seed(&self.0, 0x65_76_61_6c).max(1);
        id.to_be_bytes()
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        crate::otlp::hex(&self.0)
    }
}

/// An evaluator with its configuration applied: name, version, selector and sampler.
#[derive(Debug)]
pub struct ConfiguredEvaluator {
    /// Unique name within a configuration: the score's `gen_ai.evaluation.name` and metric label.
    pub name: String,
    /// The evaluator type (`refusal`, `pii`, …).
    pub type_name: &'static str,
    /// Changes whenever the implementation or its parameters change, so score ids do too. For a
    /// scorer whose definition can be reloaded this is the version it started with; evaluations
    /// carry the current one.
    pub version: String,
    /// The options, as hashed into the version.
    pub(crate) options: String,
    /// The scorer's fingerprint hashed into `version`.
    pub(crate) fingerprint: u64,
    /// Which spans it judges.
    pub selector: Selector,
    /// Which traces it samples.
    pub sampler: Sampler,
    /// The scorer.
    pub evaluator: Box<dyn Evaluator>,
    /// Conditions on earlier evaluators' scores of the span (empty: always runs).
    pub when: Cascade,
    /// Whether it runs on assembled traces: its scorer needs them, or a condition refers to an
    /// evaluator that does (its score only exists once the trace is whole).
    pub(crate) on_traces: bool,
}

/// One evaluation of one span by one configured evaluator.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation<'e> {
    /// The evaluator's name.
    pub evaluator: &'e str,
    /// The evaluator's type (`refusal`, `llm_judge`, …): what made the verdict, for backends that
    /// tell a model's verdicts from code's (Phoenix's `annotator_kind`).
    pub evaluator_type: &'static str,
    /// The evaluator's version (when it was reloaded since start, not the configured one).
    pub version: Cow<'e, str>,
    /// The deterministic score id.
    pub score_id: ScoreId,
    /// What the evaluator concluded.
    pub outcome: Outcome,
}

impl ConfiguredEvaluator {
    /// Runs the evaluator on a span if the selector matches, honouring the sampling rate.
    /// Returns `None` when the span is not selected (no evaluation at all).
    pub fn run(&self, span: &GenAiSpan<'_>) -> Option<Evaluation<'_>> {
        self.run_in(span, None)
    }

    /// Whether it runs on assembled traces rather than on spans as they arrive.
    pub fn needs_trace(&self) -> bool {
        self.on_traces
    }

    /// Whether it judges this span at all: the selector matches and, in a trace, the scorer
    /// judges this span of it. A span it does not judge gets no evaluation (not a skip).
    pub fn applies(&self, span: &GenAiSpan<'_>, trace: Option<&TraceView<'_>>) -> bool {
        self.selector.matches(span) && trace.is_none_or(|t| self.evaluator.judges_in_trace(span, t))
    }

    /// As [`ConfiguredEvaluator::run`], with the span's trace when it is at hand. Ignores
    /// `when` (the caller holds the earlier evaluators' outcomes: [`EvaluatorSet::evaluate_in`]).
    pub fn run_in(
        &self,
        span: &GenAiSpan<'_>,
        trace: Option<&TraceView<'_>>,
    ) -> Option<Evaluation<'_>> {
        self.applies(span, trace)
            .then(|| self.run_applied(span, trace))
    }

    /// Runs the evaluator on a span it [applies](ConfiguredEvaluator::applies) to, honouring
    /// the sampling rate.
    pub fn run_applied(
        &self,
        span: &GenAiSpan<'_>,
        trace: Option<&TraceView<'_>>,
    ) -> Evaluation<'_> {
        let outcome = if self.sampler.keeps(span.trace_id()) {
            match trace {
                Some(trace) => self.evaluator.evaluate_in_trace(span, trace),
                None => self.evaluator.evaluate(span),
            }
        } else {
            Outcome::Skipped {
                reason: SkipReason::SampledOut,
                detail: Cow::Borrowed(""),
            }
        };
        self.evaluation(span, outcome)
    }

    /// An evaluation of `span` by this evaluator with the given outcome (the score id and the
    /// current version filled in).
    pub fn evaluation(&self, span: &GenAiSpan<'_>, outcome: Outcome) -> Evaluation<'_> {
        let version = self.current_version();
        Evaluation {
            evaluator: &self.name,
            evaluator_type: self.type_name,
            score_id: ScoreId::new(span.trace_id(), span.span_id(), &self.name, &version),
            version,
            outcome,
        }
    }

    /// The version of what runs now: the configured one, or, after a reload changed the scorer's
    /// fingerprint, one derived the same way from the new fingerprint.
    pub fn current_version(&self) -> Cow<'_, str> {
        let fingerprint = self.evaluator.fingerprint();
        if fingerprint == self.fingerprint {
            Cow::Borrowed(&self.version)
        } else {
            let implementation = self.version.split('.').next().unwrap_or_default();
            Cow::Owned(version(implementation, &self.options, fingerprint))
        }
    }
}

/// A version: the implementation's, then a hash of the options and the scorer's fingerprint.
pub(crate) fn version(implementation: &str, options: &str, fingerprint: u64) -> String {
    let mut hashed = options.to_owned();
    if fingerprint != 0 {
        hashed.push_str(&format!("#{fingerprint:016x}"));
    }
    format!(
        "{implementation}.{:08x}",
        xxhash_rust::xxh3::xxh3_64(hashed.as_bytes()) as u32
    )
}

/// The evaluators of one configuration, run in order on each span.
#[derive(Debug, Default)]
pub struct EvaluatorSet {
    evaluators: Vec<ConfiguredEvaluator>,
}

impl EvaluatorSet {
    /// A set from configured evaluators (names must be unique; [`crate::spec`] checks this).
    pub fn new(evaluators: Vec<ConfiguredEvaluator>) -> EvaluatorSet {
        EvaluatorSet { evaluators }
    }

    /// The evaluators, in configuration order.
    pub fn evaluators(&self) -> &[ConfiguredEvaluator] {
        &self.evaluators
    }

    /// Runs every selected evaluator on a span, appending the evaluations to `out`.
    pub fn evaluate<'e>(&'e self, span: &GenAiSpan<'_>, out: &mut Vec<Evaluation<'e>>) {
        self.evaluate_with(span, None, out);
    }

    /// Runs every selected evaluator on a span of `trace`, appending the evaluations to `out`.
    pub fn evaluate_in<'e>(
        &'e self,
        span: &GenAiSpan<'_>,
        trace: &TraceView<'_>,
        out: &mut Vec<Evaluation<'e>>,
    ) {
        self.evaluate_with(span, Some(trace), out);
    }

    /// Runs the evaluators in order, each gated by its `when` on the evaluations made before it.
    fn evaluate_with<'e>(
        &'e self,
        span: &GenAiSpan<'_>,
        trace: Option<&TraceView<'_>>,
        out: &mut Vec<Evaluation<'e>>,
    ) {
        let first = out.len();
        for e in &self.evaluators {
            if !e.when.is_empty() && e.applies(span, trace) {
                let made = &out[first..];
                let refused = e.when.refuses(|index| self.outcome_among(made, index));
                if let Some(skip) = refused {
                    out.push(e.evaluation(span, skip));
                    continue;
                }
            }
            out.extend(e.run_in(span, trace));
        }
    }

    /// The outcome of the evaluator at `index` among the evaluations `made` on one span, if it
    /// made one: what a cascade's condition is decided on.
    pub fn outcome_among<'m>(
        &self,
        made: &'m [Evaluation<'_>],
        index: usize,
    ) -> Option<&'m Outcome> {
        let name = self.evaluators.get(index)?.name.as_str();
        made.iter()
            .find(|m| m.evaluator == name)
            .map(|m| &m.outcome)
    }

    /// Whether any evaluator needs whole traces.
    pub fn needs_traces(&self) -> bool {
        self.evaluators.iter().any(|e| e.needs_trace())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaller_samples_are_subsets_of_larger_ones() {
        let ids: Vec<[u8; 16]> = (0u32..5000)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&i.to_le_bytes());
                id
            })
            .collect();
        let rates = [0.0, 0.01, 0.1, 0.5, 0.9, 1.0];
        let kept: Vec<Vec<bool>> = rates
            .iter()
            .map(|&r| ids.iter().map(|id| Sampler::new(r).keeps(id)).collect())
            .collect();
        for pair in kept.windows(2) {
            for (small, large) in pair[0].iter().zip(&pair[1]) {
                assert!(
                    !small || *large,
                    "a trace sampled at a smaller rate was dropped at a larger one"
                );
            }
        }
        let count = |v: &Vec<bool>| v.iter().filter(|&&k| k).count();
        assert_eq!(count(&kept[0]), 0);
        assert_eq!(count(&kept[5]), 5000);
        let half = count(&kept[3]);
        assert!((2300..2700).contains(&half), "rate 0.5 kept {half} of 5000");
    }

    #[test]
    fn score_ids_are_deterministic_and_distinct() {
        let t = [1u8; 16];
        let s = [2u8; 8];
        let a = ScoreId::new(&t, &s, "pii", "1.abc");
        assert_eq!(a, ScoreId::new(&t, &s, "pii", "1.abc"));
        assert_ne!(a, ScoreId::new(&t, &s, "pii", "1.abd"));
        assert_ne!(a, ScoreId::new(&t, &s, "pi", "i1.abc"));
        assert_ne!(a.span_id(), [0u8; 8]);
        assert_eq!(a.to_hex().len(), 32);
    }

    #[test]
    fn glob_matches_prefixes_only_with_a_star() {
        assert!(glob_match("gpt-4o*", "gpt-4o-mini"));
        assert!(!glob_match("gpt-4o", "gpt-4o-mini"));
        assert!(glob_match("gpt-4o", "gpt-4o"));
    }
}
