//! Eval-aware tail sampling: once a trace is complete and its evaluators have run, a [`Policy`]
//! decides whether it is kept. The collector's `tail_sampling` processor cannot keep a trace for
//! its eval score, since it never sees one; evalstream assembles whole traces and scores them,
//! so it can.
//!
//! Rules are tried in order and the first that matches decides ([`Rule`]); a trace no rule
//! matches is dropped. The default policy ([`SamplingConfig::default`]) is the guidance the
//! product follows: keep every trace with an ERROR span, every trace with a failed evaluation,
//! the top 1% by cost, by tokens and by latency, every trace tagged with an experiment id, and a
//! uniform 5% of the rest.
//!
//! What a rule reads about a trace is gathered in [`TraceFacts`], span by span and verdict by
//! verdict, so the same decision is made wherever the facts come from (`evalstream eval
//! --sampling` over files; the trace buffer online).
//!
//! **`top_percent`** compares a trace with the traces of its service seen before it, through an
//! HdrHistogram per service and rule (3 significant digits: a threshold is within 0.1% of the
//! exact quantile of what was recorded, read again every [`REFRESH`] traces; 100,000 distinct
//! services at most, the rest share one). A service's first [`WARM_UP`] traces are recorded but never matched: a quantile of
//! a handful of values would keep most of them. The estimate covers everything seen since the
//! process started (no window), so a replay of the same stream decides the same way.
//!
//! **`uniform`** keeps a trace when a seeded hash of its trace id falls under the rate: every
//! worker agrees, a replay decides the same, and the sample is not the one the evaluators'
//! own `sample_rate` draws (a different seed).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use evalstream_evaluators::evaluator::{Evaluation, Outcome};
use evalstream_evaluators::otlp;
use evalstream_evaluators::pricing::PriceTable;
use evalstream_evaluators::span::{GenAiSpan, OperationKind};
use hdrhistogram::Histogram;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde::Deserialize;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The `sampling:` section: rules tried in order, the first match deciding.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// The exporters (ids from `exporters:`) that kept traces are forwarded to, whole; they get
    /// no evaluations. `evalstream run` needs at least one; `eval` ignores them.
    #[serde(default)]
    pub exporters: Vec<String>,
    /// Seconds a complete trace waits for the verdicts of LLM judges that the rules read,
    /// before it is decided on what is known.
    #[serde(default = "default_decision_wait")]
    pub decision_wait_seconds: f64,
    /// The rules, in order (the default policy when left out).
    #[serde(default = "default_rules")]
    pub rules: Vec<Rule>,
}

fn default_decision_wait() -> f64 {
    10.0
}

impl Default for SamplingConfig {
    /// The product's guidance: errors, failures, the top 1% of cost, tokens and latency,
    /// experiments, then a uniform 5%.
    fn default() -> Self {
        SamplingConfig {
            exporters: Vec::new(),
            decision_wait_seconds: default_decision_wait(),
            rules: default_rules(),
        }
    }
}

fn default_rules() -> Vec<Rule> {
    vec![
        Rule::Status(StatusRule::Error),
        Rule::Failed("*".into()),
        Rule::TopPercent(TopPercent {
            metric: Metric::CostUsd,
            percent: 1.0,
        }),
        Rule::TopPercent(TopPercent {
            metric: Metric::TotalTokens,
            percent: 1.0,
        }),
        Rule::TopPercent(TopPercent {
            metric: Metric::LatencySeconds,
            percent: 1.0,
        }),
        Rule::AttributePresent("experiment_id".into()),
        Rule::Uniform(0.05),
        Rule::Drop,
    ]
}

impl SamplingConfig {
    /// Checks each rule's parameters, and that the evaluators rules name are configured
    /// (`evaluators`, by name). Errors give the rule's path.
    pub fn validate(&self, evaluators: &[&str]) -> Result<(), String> {
        if !(self.decision_wait_seconds.is_finite() && self.decision_wait_seconds >= 0.0) {
            return Err(
                "sampling.decision_wait_seconds: must be a non-negative number of seconds".into(),
            );
        }
        if self.rules.is_empty() {
            return Err("sampling.rules: give at least one rule (`drop` drops every trace)".into());
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let named = match rule {
                Rule::Failed(name) => Some(name.as_str()),
                Rule::ScoreBelow(s) => Some(s.evaluator.as_str()),
                _ => None,
            };
            let problem = match rule {
                Rule::Uniform(rate) if !(0.0..=1.0).contains(rate) => {
                    Some("needs a rate from 0 to 1".to_owned())
                }
                Rule::TopPercent(t) if !(t.percent > 0.0 && t.percent <= 100.0) => {
                    Some("needs a percent above 0, at most 100".to_owned())
                }
                Rule::ScoreBelow(s) if !s.threshold.is_finite() => {
                    Some("needs a finite threshold".to_owned())
                }
                _ => named
                    .filter(|n| *n != "*" && !evaluators.contains(n))
                    .map(|n| {
                        format!(
                            "no evaluator is named `{n}` (configured: {})",
                            evaluators.join(", ")
                        )
                    }),
            };
            if let Some(problem) = problem {
                return Err(format!("sampling.rules[{i}] ({rule}): {problem}"));
            }
        }
        Ok(())
    }
}

/// One rule: what makes it match. A matching rule keeps the trace, except `drop`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// `status: error`: some span of the trace has status ERROR.
    Status(StatusRule),
    /// `failed: NAME` (or `'*'`): an evaluation by that evaluator did not pass.
    Failed(String),
    /// `score_below: {evaluator, threshold}`: a score by that evaluator (or `'*'`) is below the
    /// threshold.
    ScoreBelow(ScoreBelow),
    /// `top_percent: {metric, percent}`: the trace is in the top `percent` of its service by
    /// `metric`.
    TopPercent(TopPercent),
    /// `attribute_present: KEY`: some span or resource of the trace has the attribute.
    AttributePresent(String),
    /// `attribute_equals: {key, value}`: some span or resource has the attribute with the value
    /// (compared as text).
    AttributeEquals(AttributeEquals),
    /// `uniform: RATE`: the trace id's hash falls in `RATE` (0 to 1) of the hash space.
    Uniform(f64),
    /// `drop`: matches every trace and drops it (the explicit end of a policy).
    Drop,
}

/// The status `status:` matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusRule {
    /// A span with status ERROR.
    Error,
}

/// `score_below`'s parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreBelow {
    /// The evaluator's name, or `*` for any.
    pub evaluator: String,
    /// The score below which the trace is kept.
    pub threshold: f64,
}

/// `top_percent`'s parameters.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopPercent {
    /// What is ranked.
    pub metric: Metric,
    /// How much of the top is kept, in percent (0 to 100).
    pub percent: f64,
}

/// `attribute_equals`'s parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeEquals {
    /// The attribute key.
    pub key: String,
    /// The value, compared with the attribute's value as text.
    pub value: String,
}

/// What `top_percent` ranks traces by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// The trace's model cost, from the price table (as the `cost` evaluator reckons it).
    CostUsd,
    /// Input plus output tokens of the trace's model calls.
    TotalTokens,
    /// From the trace's first span start to its last span end.
    LatencySeconds,
}

impl Metric {
    fn as_str(self) -> &'static str {
        match self {
            Metric::CostUsd => "cost_usd",
            Metric::TotalTokens => "total_tokens",
            Metric::LatencySeconds => "latency_seconds",
        }
    }

    /// The metric as a whole number for the histogram: nano-dollars, tokens, microseconds.
    fn recorded(self, facts: &TraceFacts) -> u64 {
        match self {
            Metric::CostUsd => (facts.cost_usd * 1e9) as u64,
            Metric::TotalTokens => facts.total_tokens,
            Metric::LatencySeconds => facts.end.saturating_sub(facts.start) / 1_000,
        }
    }
}

impl fmt::Display for Rule {
    /// The rule's name in metrics and reports: its kind and parameters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Status(StatusRule::Error) => write!(f, "status:error"),
            Rule::Failed(name) => write!(f, "failed:{name}"),
            Rule::ScoreBelow(s) => write!(f, "score_below:{}<{}", s.evaluator, s.threshold),
            Rule::TopPercent(t) => write!(f, "top_percent:{}:{}%", t.metric.as_str(), t.percent),
            Rule::AttributePresent(key) => write!(f, "attribute_present:{key}"),
            Rule::AttributeEquals(a) => write!(f, "attribute_equals:{}={}", a.key, a.value),
            Rule::Uniform(rate) => write!(f, "uniform:{rate}"),
            Rule::Drop => write!(f, "drop"),
        }
    }
}

/// Traces of a service recorded before `top_percent` matches any of them.
pub const WARM_UP: u64 = 100;

/// Services with a histogram of their own; the rest share one.
const MAX_SERVICES: usize = 100_000;

/// The seed of `uniform`'s hash: not the evaluators' sampler's (unseeded), so the traces kept
/// uniformly are not exactly those a judge sampled.
const UNIFORM_SEED: u64 = 0x7a11_5a31_1e5e_ed00;

/// What the rules read about one trace, gathered from its spans and its evaluations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceFacts {
    /// The trace id (raw bytes).
    pub trace_id: Vec<u8>,
    /// The first `service.name` seen.
    pub service: Option<String>,
    /// Whether a span has status ERROR.
    pub error: bool,
    /// The earliest span start and latest span end, nanoseconds since the Unix epoch.
    pub start: u64,
    /// See `start`.
    pub end: u64,
    /// Model cost, USD.
    pub cost_usd: f64,
    /// Input plus output tokens.
    pub total_tokens: u64,
    /// The values (as text) of the attributes the rules name, from spans and resources.
    pub attributes: Vec<(String, String)>,
    /// Scored evaluations: evaluator, score, passed.
    pub verdicts: Vec<(String, f64, bool)>,
}

impl TraceFacts {
    /// Facts of no span yet.
    pub fn new(trace_id: &[u8]) -> TraceFacts {
        TraceFacts {
            trace_id: trace_id.to_vec(),
            start: u64::MAX,
            ..TraceFacts::default()
        }
    }

    /// Adds what the rules read of one span: status, times, cost and tokens, and the values of
    /// `keys` (the attributes the rules name) on the span or its resource.
    pub fn add_span(&mut self, span: &GenAiSpan<'_>, prices: &PriceTable, keys: &[&str]) {
        if self.service.is_none() {
            self.service = span.resource().service_name.map(str::to_owned);
        }
        self.error |= span.status().code == StatusCode::Error;
        let raw = span.raw();
        if raw.start_time_unix_nano > 0 {
            self.start = self.start.min(raw.start_time_unix_nano);
        }
        self.end = self.end.max(raw.end_time_unix_nano);
        if matches!(span.kind(), OperationKind::Chat | OperationKind::Embeddings) {
            let usage = span.usage();
            let tokens = match usage.total {
                Some(total) => total,
                None => usage.input.unwrap_or(0) + usage.output.unwrap_or(0),
            };
            self.total_tokens = self.total_tokens.saturating_add(tokens);
            if let Some(model) = span.model()
                && let Some((_, price)) = prices.lookup(model)
                && let Some(cost) = PriceTable::cost(price, &usage)
            {
                self.cost_usd += cost.total_usd;
            }
        }
        for &key in keys {
            let found = otlp::find(&raw.attributes, key).or_else(|| span.resource().attribute(key));
            if let Some(text) = found.and_then(|v| v.value.as_ref()).and_then(text_of)
                && !self.attributes.iter().any(|(k, v)| k == key && *v == text)
            {
                self.attributes.push((key.to_owned(), text));
            }
        }
    }

    /// Adds an evaluation of one of the trace's spans (skipped and errored ones say nothing).
    pub fn add_evaluation(&mut self, evaluation: &Evaluation<'_>) {
        if let Outcome::Scored(score) = &evaluation.outcome {
            self.add_verdict(evaluation.evaluator, score.value, score.passed);
        }
    }

    /// Adds a scored evaluation by `evaluator`.
    pub fn add_verdict(&mut self, evaluator: &str, score: f64, passed: bool) {
        self.verdicts.push((evaluator.to_owned(), score, passed));
    }
}

/// An attribute value as text, for `attribute_equals` and budget keys (scalars only).
pub fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(s) => Some(s.clone()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

/// A policy's decision on one trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the trace is kept.
    pub keep: bool,
    /// The index of the rule that decided; `None` when none matched (dropped).
    pub rule: Option<usize>,
}

/// The rules and the quantile estimates `top_percent` needs. Shared by every thread that
/// decides.
pub struct Policy {
    rules: Vec<Rule>,
    /// Per service (`None`: past [`MAX_SERVICES`]), what its `top_percent` rules rank.
    rankings: Mutex<HashMap<Option<String>, Vec<Ranking>>>,
}

/// One `top_percent` rule's ranking of one service's traces.
struct Ranking {
    histogram: Histogram<u64>,
    /// The rule's threshold, and the count it was read at. Reading a quantile walks the
    /// histogram's buckets: once per trace and rule that was 1.7 µs per span in
    /// `benches/sampling.rs`, more than half of what the rules cost. It is read again every
    /// [`REFRESH`] traces, which moves it by a fraction of a percentile.
    threshold: (u64, u64),
}

/// Traces recorded between two readings of a `top_percent` threshold.
const REFRESH: u64 = 64;

impl Ranking {
    fn new() -> Ranking {
        Ranking {
            histogram: Histogram::new(3).expect("3 significant digits are valid"),
            threshold: (0, 0),
        }
    }

    /// Whether `value` is in the top `percent`; `None` during warm-up.
    fn above(&mut self, value: u64, percent: f64) -> Option<bool> {
        let count = self.histogram.len();
        if count < WARM_UP {
            return None;
        }
        if self.threshold.1 == 0 || count >= self.threshold.1 + REFRESH {
            let at = self.histogram.value_at_quantile(1.0 - percent / 100.0);
            self.threshold = (at, count);
        }
        Some(value > 0 && value > self.threshold.0)
    }

    fn record(&mut self, value: u64) {
        // Auto-resizing: a value past the range grows it (`saturating_record` would not: it
        // clamps to the current range, which starts at 2). Should growing fail, the highest
        // trackable value stands in.
        if self.histogram.record(value).is_err() {
            self.histogram.saturating_record(value);
        }
    }
}

impl Policy {
    /// A policy of `config`'s rules ([`SamplingConfig::validate`] says whether they make sense).
    pub fn new(config: &SamplingConfig) -> Policy {
        Policy {
            rules: config.rules.clone(),
            rankings: Mutex::new(HashMap::new()),
        }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The attribute keys the rules read ([`TraceFacts::add_span`]'s `keys`).
    pub fn attribute_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self
            .rules
            .iter()
            .filter_map(|r| match r {
                Rule::AttributePresent(key) => Some(key.as_str()),
                Rule::AttributeEquals(a) => Some(a.key.as_str()),
                _ => None,
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Decides on a complete trace, then records its metrics for the `top_percent` rules of
    /// later traces.
    pub fn decide(&self, facts: &TraceFacts) -> Decision {
        let top_percent = self
            .rules
            .iter()
            .filter(|r| matches!(r, Rule::TopPercent(_)))
            .count();
        let mut rankings = self.rankings.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up by reference: the service's name is copied once, when it is first seen.
        let shared = None;
        let service = match rankings.len() < MAX_SERVICES || rankings.contains_key(&facts.service) {
            true => &facts.service,
            false => &shared,
        };
        if top_percent > 0 && !rankings.contains_key(service) {
            let fresh = (0..top_percent).map(|_| Ranking::new()).collect();
            rankings.insert(service.clone(), fresh);
        }
        // Without `top_percent` rules nothing is ranked, and no service is kept.
        let ranked: &mut [Ranking] = match rankings.get_mut(service) {
            Some(ranked) => ranked,
            None => &mut [],
        };
        let mut decision = Decision {
            keep: false,
            rule: None,
        };
        let mut ranking = 0;
        for (i, rule) in self.rules.iter().enumerate() {
            let matched = match rule {
                Rule::Status(StatusRule::Error) => facts.error,
                Rule::Failed(name) => facts
                    .verdicts
                    .iter()
                    .any(|(e, _, passed)| !passed && (name == "*" || e == name)),
                Rule::ScoreBelow(s) => facts.verdicts.iter().any(|(e, score, _)| {
                    (s.evaluator == "*" || *e == s.evaluator) && *score < s.threshold
                }),
                Rule::TopPercent(t) => {
                    ranking += 1;
                    ranked[ranking - 1]
                        .above(t.metric.recorded(facts), t.percent)
                        .unwrap_or(false)
                }
                Rule::AttributePresent(key) => facts.attributes.iter().any(|(k, _)| k == key),
                Rule::AttributeEquals(a) => facts
                    .attributes
                    .iter()
                    .any(|(k, v)| *k == a.key && *v == a.value),
                Rule::Uniform(rate) => uniform_keeps(&facts.trace_id, *rate),
                Rule::Drop => true,
            };
            if matched {
                decision = Decision {
                    keep: !matches!(rule, Rule::Drop),
                    rule: Some(i),
                };
                break;
            }
        }
        // Every ranking records the trace, whichever rule decided.
        let metrics = self.rules.iter().filter_map(|r| match r {
            Rule::TopPercent(t) => Some(t.metric),
            _ => None,
        });
        for (ranking, metric) in ranked.iter_mut().zip(metrics) {
            ranking.record(metric.recorded(facts));
        }
        decision
    }
}

/// Whether `uniform: rate` keeps the trace.
pub fn uniform_keeps(trace_id: &[u8], rate: f64) -> bool {
    rate >= 1.0 || (xxh3_64_with_seed(trace_id, UNIFORM_SEED) as f64) < rate * u64::MAX as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use evalstream_evaluators::span::ResourceView;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{Span, Status, status};

    fn id(i: u64) -> Vec<u8> {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.to_be_bytes());
        id[8..].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()).to_be_bytes());
        id.to_vec()
    }

    fn facts(i: u64) -> TraceFacts {
        let mut f = TraceFacts::new(&id(i));
        f.service = Some("app".into());
        f.start = 1_000;
        f.end = 2_000_000;
        f
    }

    fn policy(yaml: &str) -> Policy {
        let config: SamplingConfig = serde_saphyr::from_str(yaml).expect("a valid policy");
        config.validate(&["refusal", "pii"]).expect("valid rules");
        Policy::new(&config)
    }

    fn str_kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn first_matching_rule_decides_in_order() {
        let p = policy(
            "rules: [ {status: error}, {failed: refusal}, {score_below: {evaluator: '*', threshold: 0.5}}, {attribute_equals: {key: feature, value: checkout}}, drop ]",
        );
        let mut errored = facts(1);
        errored.error = true;
        errored.add_verdict("refusal", 0.0, false);
        assert_eq!(
            p.decide(&errored),
            Decision {
                keep: true,
                rule: Some(0)
            }
        );
        let mut failed = facts(2);
        failed.add_verdict("pii", 1.0, true);
        failed.add_verdict("refusal", 0.0, false);
        assert_eq!(
            p.decide(&failed),
            Decision {
                keep: true,
                rule: Some(1)
            }
        );
        // A failed evaluation of another evaluator is not `failed: refusal`; its low score is.
        let mut low = facts(3);
        low.add_verdict("pii", 0.2, false);
        assert_eq!(
            p.decide(&low),
            Decision {
                keep: true,
                rule: Some(2)
            }
        );
        let mut tagged = facts(4);
        tagged
            .attributes
            .push(("feature".into(), "checkout".into()));
        assert_eq!(
            p.decide(&tagged),
            Decision {
                keep: true,
                rule: Some(3)
            }
        );
        tagged.attributes[0].1 = "search".into();
        assert_eq!(
            p.decide(&tagged),
            Decision {
                keep: false,
                rule: Some(4)
            }
        );
    }

    #[test]
    fn a_trace_no_rule_matches_is_dropped() {
        let p = policy("rules: [ {status: error} ]");
        assert_eq!(
            p.decide(&facts(1)),
            Decision {
                keep: false,
                rule: None
            }
        );
    }

    #[test]
    fn the_default_policy_keeps_errors_failures_and_experiments_and_five_percent_of_the_rest() {
        let p = Policy::new(&SamplingConfig::default());
        let n = 20_000;
        let mut uniform = 0;
        for i in 0..n {
            let mut f = facts(i);
            match i % 4 {
                0 => f.error = true,
                1 => f.add_verdict("pii", 0.0, false),
                2 => f.attributes.push(("experiment_id".into(), "exp-7".into())),
                _ => {
                    f.add_verdict("pii", 1.0, true);
                    let d = p.decide(&f);
                    let rule = d.rule.map(|r| p.rules()[r].to_string());
                    assert!(
                        matches!(rule.as_deref(), Some("uniform:0.05" | "drop")),
                        "{rule:?}"
                    );
                    uniform += u64::from(d.keep);
                    continue;
                }
            }
            assert!(p.decide(&f).keep, "trace {i} kept");
        }
        let share = uniform as f64 / (n / 4) as f64;
        assert!((0.04..0.06).contains(&share), "uniform share {share}");
    }

    #[test]
    fn uniform_is_deterministic_and_not_the_evaluators_sample() {
        let judge = evalstream_evaluators::evaluator::Sampler::new(0.05);
        let (mut kept, mut both) = (0, 0);
        for i in 0..100_000 {
            let t = id(i);
            let k = uniform_keeps(&t, 0.05);
            assert_eq!(k, uniform_keeps(&t, 0.05));
            // A smaller rate's sample is inside a larger one's.
            assert!(!uniform_keeps(&t, 0.01) || k);
            kept += u64::from(k);
            both += u64::from(k && judge.keeps(&t));
        }
        assert!((4_700..5_300).contains(&kept), "kept {kept}");
        // Independent draws overlap on about 5% of 5%, not on all of it.
        assert!(both < 500, "{both} traces in both samples");
        assert!(uniform_keeps(&id(1), 1.0) && !uniform_keeps(&id(1), 0.0));
    }

    #[test]
    fn top_percent_keeps_about_the_top_after_warm_up_per_service() {
        let p = policy("rules: [ {top_percent: {metric: cost_usd, percent: 1}}, drop ]");
        let mut kept = Vec::new();
        for i in 0..10_000u64 {
            let mut f = facts(i);
            // Costs 1..=1000 micro-dollars, in a scrambled order.
            f.cost_usd = ((i * 7919) % 1000 + 1) as f64 * 1e-6;
            if p.decide(&f).keep {
                kept.push((i, f.cost_usd));
            }
        }
        assert!(
            kept.iter().all(|&(i, _)| i >= WARM_UP),
            "nothing kept during warm-up"
        );
        let share = kept.len() as f64 / 10_000.0;
        assert!((0.005..0.015).contains(&share), "kept share {share}");
        // Right after warm-up the estimate is coarse (a quantile of 100 values); it settles.
        let lowest = |from: u64| {
            kept.iter()
                .filter(|&&(i, _)| i >= from)
                .map(|&(_, c)| c)
                .fold(f64::MAX, f64::min)
        };
        assert!(lowest(0) > 0.95e-3, "only top costs kept: {kept:?}");
        assert!(
            lowest(1_000) > 0.985e-3,
            "the top 1.5% once settled: {kept:?}"
        );
        // Another service has its own ranking: its first traces are warming up.
        let mut other = facts(1);
        other.service = Some("other".into());
        other.cost_usd = 1.0;
        assert!(!p.decide(&other).keep);
    }

    #[test]
    fn facts_come_from_spans_and_their_resources() {
        let resource = Resource {
            attributes: vec![
                str_kv("service.name", "shop"),
                str_kv("experiment_id", "e1"),
            ],
            ..Default::default()
        };
        let mut llm = Span {
            trace_id: id(9),
            span_id: vec![1; 8],
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 3_000_000_000,
            attributes: vec![
                str_kv("gen_ai.operation.name", "chat"),
                str_kv("gen_ai.request.model", "gpt-4o"),
                KeyValue {
                    key: "gen_ai.usage.input_tokens".into(),
                    value: Some(AnyValue {
                        value: Some(Value::IntValue(1000)),
                    }),
                    ..Default::default()
                },
                KeyValue {
                    key: "gen_ai.usage.output_tokens".into(),
                    value: Some(AnyValue {
                        value: Some(Value::IntValue(500)),
                    }),
                    ..Default::default()
                },
                str_kv("feature", "checkout"),
            ],
            ..Default::default()
        };
        let tool = Span {
            trace_id: id(9),
            span_id: vec![2; 8],
            start_time_unix_nano: 500_000_000,
            end_time_unix_nano: 4_000_000_000,
            status: Some(Status {
                code: status::StatusCode::Error as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let prices = PriceTable::new(true, &Default::default()).expect("built-in prices");
        let mut f = TraceFacts::new(&id(9));
        let keys = ["experiment_id", "feature", "absent"];
        for s in [&llm, &tool] {
            let view = GenAiSpan::new(s, ResourceView::new(Some(&resource)), None);
            f.add_span(&view, &prices, &keys);
        }
        assert_eq!(f.service.as_deref(), Some("shop"));
        assert!(f.error);
        assert_eq!((f.start, f.end), (500_000_000, 4_000_000_000));
        assert_eq!(Metric::LatencySeconds.recorded(&f), 3_500_000);
        assert_eq!(f.total_tokens, 1500);
        assert!(f.cost_usd > 0.0, "gpt-4o is priced");
        assert_eq!(
            f.attributes,
            vec![
                ("experiment_id".to_owned(), "e1".to_owned()),
                ("feature".to_owned(), "checkout".to_owned())
            ]
        );
        // Without a status, an LLM span alone is no error.
        llm.trace_id = id(10);
        let mut g = TraceFacts::new(&id(10));
        g.add_span(
            &GenAiSpan::new(&llm, ResourceView::new(None), None),
            &prices,
            &keys,
        );
        assert!(!g.error);
    }

    #[test]
    fn bad_rules_are_refused_with_their_path() {
        let check = |yaml: &str| {
            let config: SamplingConfig = serde_saphyr::from_str(yaml).expect("parses");
            config.validate(&["refusal"]).expect_err("refused")
        };
        assert!(check("rules: [ {uniform: 1.5} ]").starts_with("sampling.rules[0] (uniform:1.5)"));
        assert!(
            check("rules: [ drop, {top_percent: {metric: cost_usd, percent: 0}} ]")
                .starts_with("sampling.rules[1]")
        );
        assert!(check("rules: [ {failed: nope} ]").contains("no evaluator is named `nope`"));
        assert!(check("rules: []").contains("at least one rule"));
        assert!(serde_saphyr::from_str::<SamplingConfig>("rules: [ {keep_all: true} ]").is_err());
        assert!(
            serde_saphyr::from_str::<SamplingConfig>(
                "rules: [ {top_percent: {metric: cost_usd, percent: 1, extra: 2}} ]"
            )
            .is_err()
        );
    }
}
