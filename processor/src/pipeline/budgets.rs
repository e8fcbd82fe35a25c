//! Span-level cost budgets: spend per key (user, prompt version, feature, model: values of span
//! attributes) per window, accumulated from the span stream, for the guard API's `Budget` to
//! answer "may this user make another call" before the application calls the model.
//!
//! **Spend** is what the `cost` evaluator reckons (the price table, cache and reasoning tokens
//! included) or tokens (input plus output), of every model call span the workers see, whether or
//! not an evaluator judges it. A span counts in the window its end time falls in; the windows are
//! aligned to the Unix epoch (`window_seconds: 86400` is the UTC day), and only the current
//! window of a key is kept, so spend from an older window (a replay, a late span) is not added
//! to the new one.
//!
//! **Bounded**: at most `max_keys` keys per budget; at the cap, keys of past windows are
//! forgotten first, and a new key that still finds no room is not tracked (counted in
//! `evalstream_budget_keys_untracked_total`, and `Budget` answers it from zero: budgets fail
//! open, a guard must not take the application down).
//!
//! **One worker's view.** Each worker counts the spans it sees. Through the OTLP receiver on one
//! machine that is all of them. With a Kafka consumer group, spans are spread over workers by
//! trace id, so one worker sees about `1/N` of a key's spend: each worker publishes its spend to
//! a compacted topic and adds the others' ([`Budgets::merge`]); what it misses is the others'
//! spend since their last publication (at most `share_interval_seconds` of it, plus the topic's
//! delivery time).

use std::collections::HashMap;
use std::sync::Mutex;

use evalstream_evaluators::otlp;
use evalstream_evaluators::pricing::PriceTable;
use evalstream_evaluators::span::{GenAiSpan, OperationKind};
use prometheus::{CounterVec, GaugeVec, IntCounterVec, Opts, Registry};
use serde::Deserialize;

use crate::telemetry::labels::LabelCap;

/// One budget in `budgets:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// The attributes (of the span, else its resource) whose values make a key: `user.id`,
    /// `gen_ai.prompt.version`, a feature or route, `gen_ai.request.model`.
    pub keys: Vec<String>,
    /// The limit per key and window, in US dollars.
    #[serde(default)]
    pub limit_usd: Option<f64>,
    /// The limit per key and window, in tokens (input plus output).
    #[serde(default)]
    pub limit_tokens: Option<u64>,
    /// The window's length in seconds, aligned to the Unix epoch: 86400 a UTC day, 3600 an hour.
    #[serde(default = "default_window")]
    pub window_seconds: u64,
    /// Keys tracked at most.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_window() -> u64 {
    86_400
}

fn default_max_keys() -> usize {
    100_000
}

impl BudgetConfig {
    /// Checks the budget named `name`, naming the offending key.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        let at = |key: &str| format!("budgets.{name}.{key}");
        if self.keys.is_empty() {
            return Err(format!(
                "{}: name at least one attribute (`user.id`, …)",
                at("keys")
            ));
        }
        match (self.limit_usd, self.limit_tokens) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(format!(
                    "budgets.{name}: give one limit, `limit_usd` or `limit_tokens`"
                ));
            }
            (Some(usd), None) if !(usd.is_finite() && usd >= 0.0) => {
                return Err(format!(
                    "{}: must be a non-negative number",
                    at("limit_usd")
                ));
            }
            _ => {}
        }
        if self.window_seconds == 0 {
            return Err(format!("{}: must be at least 1", at("window_seconds")));
        }
        if self.max_keys == 0 {
            return Err(format!("{}: must be at least 1", at("max_keys")));
        }
        Ok(())
    }

    fn unit(&self) -> Unit {
        match self.limit_usd {
            Some(_) => Unit::Usd,
            None => Unit::Tokens,
        }
    }

    fn limit(&self) -> f64 {
        self.limit_usd
            .or(self.limit_tokens.map(|t| t as f64))
            .unwrap_or(0.0)
    }
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// US dollars.
    Usd,
    /// Tokens.
    Tokens,
}

impl Unit {
    /// `usd` or `tokens`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Usd => "usd",
            Unit::Tokens => "tokens",
        }
    }
}

/// A key's spend in its current window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Spend {
    /// The window's start, seconds since the Unix epoch.
    window: u64,
    /// Counted from the spans this worker saw.
    own: f64,
    /// Published by the other workers of the group, for this window.
    others: f64,
}

struct Budget {
    name: String,
    config: BudgetConfig,
    unit: Unit,
    limit: f64,
    keys: Mutex<HashMap<String, Spend>>,
    labels: LabelCap,
}

/// What `Budget` answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// The key (its values joined by `|`).
    pub key: String,
    /// Spend in the current window.
    pub spent: f64,
    /// The limit.
    pub limit: f64,
    /// What counts.
    pub unit: Unit,
    /// The current window, seconds since the Unix epoch (end exclusive).
    pub window: (u64, u64),
}

impl Standing {
    /// Whether a new call is allowed: spend is under the limit.
    pub fn allows(&self) -> bool {
        self.spent < self.limit
    }

    /// What is left (never negative).
    pub fn remaining(&self) -> f64 {
        (self.limit - self.spent).max(0.0)
    }
}

/// Why a budget query has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// No budget of that name.
    #[error("no budget is named `{name}` (configured: {configured})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The budgets there are.
        configured: String,
    },
    /// A key attribute is missing.
    #[error("budget `{budget}` is kept per `{key}`: give it in `attributes`")]
    MissingKey {
        /// The budget.
        budget: String,
        /// The missing attribute.
        key: String,
    },
}

/// The configured budgets and their spend.
pub struct Budgets {
    budgets: Vec<Budget>,
    spend_usd: GaugeVec,
    spend_tokens: GaugeVec,
    exhausted: IntCounterVec,
    untracked: IntCounterVec,
    counted: CounterVec,
}

/// Key series per budget in the spend metrics; the rest share the label `other`.
const MAX_KEY_LABELS: usize = 1000;

impl Budgets {
    /// The budgets of `config` (by name), their metrics registered on `registry`.
    pub fn new(
        config: &std::collections::BTreeMap<String, BudgetConfig>,
        registry: &Registry,
    ) -> prometheus::Result<Budgets> {
        let gauge = |name: &str, help: &str| -> prometheus::Result<GaugeVec> {
            let g = GaugeVec::new(Opts::new(name, help), &["budget", "key"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), &["budget"])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counted = CounterVec::new(
            Opts::new(
                "evalstream_budget_counted_total",
                "Spend counted into budgets from the spans this worker saw, by budget and unit (usd, tokens).",
            ),
            &["budget", "unit"],
        )?;
        registry.register(Box::new(counted.clone()))?;
        Ok(Budgets {
            budgets: config
                .iter()
                .map(|(name, c)| Budget {
                    name: name.clone(),
                    unit: c.unit(),
                    limit: c.limit(),
                    config: c.clone(),
                    keys: Mutex::new(HashMap::new()),
                    labels: LabelCap::new(MAX_KEY_LABELS),
                })
                .collect(),
            spend_usd: gauge(
                "evalstream_budget_spend_usd",
                "Spend in the current window of a USD budget, by budget and key (capped at 1000 keys per budget; the rest are `other`, which shows the last of them).",
            )?,
            spend_tokens: gauge(
                "evalstream_budget_spend_tokens",
                "Spend in the current window of a token budget, by budget and key (capped as the USD one).",
            )?,
            exhausted: counter(
                "evalstream_budget_exhausted_total",
                "Keys whose spend reached their budget's limit in a window, by budget.",
            )?,
            untracked: counter(
                "evalstream_budget_keys_untracked_total",
                "Spans whose key found no room (max_keys keys of the current window tracked already), by budget.",
            )?,
            counted,
        })
    }

    /// Whether any budget is configured.
    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty()
    }

    /// Counts a model call span into every budget whose keys it carries.
    pub fn record(&self, span: &GenAiSpan<'_>, prices: &PriceTable) {
        if !matches!(span.kind(), OperationKind::Chat | OperationKind::Embeddings) {
            return;
        }
        let usage = span.usage();
        let tokens = usage
            .total
            .unwrap_or(usage.input.unwrap_or(0) + usage.output.unwrap_or(0));
        // The price lookup only when a USD budget asks for it.
        let mut usd = None;
        let end_seconds = span.raw().end_time_unix_nano / 1_000_000_000;
        for budget in &self.budgets {
            let amount = match budget.unit {
                Unit::Usd => *usd.get_or_insert_with(|| {
                    span.model()
                        .and_then(|m| prices.lookup(m))
                        .and_then(|(_, price)| PriceTable::cost(price, &usage))
                        .map_or(0.0, |c| c.total_usd)
                }),
                Unit::Tokens => tokens as f64,
            };
            if amount <= 0.0 {
                continue;
            }
            let Some(key) = key_of(&budget.config.keys, |k| {
                otlp::find(&span.raw().attributes, k)
                    .or_else(|| span.resource().attribute(k))
                    .and_then(|v| v.value.as_ref())
                    .and_then(super::sampling::text_of)
            }) else {
                continue;
            };
            self.add(budget, key, end_seconds, amount);
        }
    }

    fn add(&self, budget: &Budget, key: String, at: u64, amount: f64) {
        let length = budget.config.window_seconds;
        let Some(after) = self.update(budget, &key, at / length * length, |s| s.own += amount)
        else {
            return;
        };
        self.counted
            .with_label_values(&[&budget.name, budget.unit.as_str()])
            .inc_by(amount);
        let gauge = match budget.unit {
            Unit::Usd => &self.spend_usd,
            Unit::Tokens => &self.spend_tokens,
        };
        gauge
            .with_label_values(&[&budget.name, &budget.labels.label(&key)])
            .set(after);
    }

    /// Applies `change` to the spend of `key` in `window` — a window older than the key's
    /// current one is not changed, a newer one starts from nothing — and counts the key as
    /// exhausted when the change crosses the limit. Returns the spend after, or `None` when
    /// nothing changed (an old window, or no room for the key).
    fn update(
        &self,
        budget: &Budget,
        key: &str,
        window: u64,
        change: impl FnOnce(&mut Spend),
    ) -> Option<f64> {
        let mut keys = budget.keys.lock().unwrap_or_else(|e| e.into_inner());
        if !keys.contains_key(key) && keys.len() >= budget.config.max_keys {
            // Keys of past windows go first.
            let length = budget.config.window_seconds;
            let current = crate::now_unix_nanos() / 1_000_000_000 / length * length;
            keys.retain(|_, s| s.window >= current);
            if keys.len() >= budget.config.max_keys {
                self.untracked.with_label_values(&[&budget.name]).inc();
                return None;
            }
        }
        let spend = keys.entry(key.to_owned()).or_default();
        if window < spend.window {
            // A window already over: not this window's spend.
            return None;
        }
        if window > spend.window {
            *spend = Spend {
                window,
                ..Spend::default()
            };
        }
        let before = spend.own + spend.others;
        change(spend);
        let after = spend.own + spend.others;
        drop(keys);
        if before < budget.limit && after >= budget.limit {
            self.exhausted.with_label_values(&[&budget.name]).inc();
        }
        Some(after)
    }

    /// The standing of the key `attributes` give in budget `name`, now.
    pub fn query(
        &self,
        name: &str,
        attributes: &HashMap<String, String>,
    ) -> Result<Standing, QueryError> {
        let Some(budget) = self.budgets.iter().find(|b| b.name == name) else {
            return Err(QueryError::Unknown {
                name: name.to_owned(),
                configured: self
                    .budgets
                    .iter()
                    .map(|b| b.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        if let Some(missing) = budget
            .config
            .keys
            .iter()
            .find(|k| !attributes.contains_key(*k))
        {
            return Err(QueryError::MissingKey {
                budget: name.to_owned(),
                key: missing.clone(),
            });
        }
        let key = key_of(&budget.config.keys, |k| attributes.get(k).cloned()).unwrap_or_default();
        let length = budget.config.window_seconds;
        let window = crate::now_unix_nanos() / 1_000_000_000 / length * length;
        let spent = budget
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|s| s.window == window)
            .map_or(0.0, |s| s.own + s.others);
        Ok(Standing {
            key,
            spent,
            limit: budget.limit,
            unit: budget.unit,
            window: (window, window + length),
        })
    }

    /// This worker's own spend of every key in its current window, to publish: budget, key,
    /// window start, amount.
    pub fn own(&self) -> Vec<(String, String, u64, f64)> {
        let mut out = Vec::new();
        for budget in &self.budgets {
            let keys = budget.keys.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(
                keys.iter()
                    .filter(|(_, s)| s.own > 0.0)
                    .map(|(k, s)| (budget.name.clone(), k.clone(), s.window, s.own)),
            );
        }
        out
    }

    /// Sets what the other workers of the group spent on a key in a window (the sum of their
    /// latest publications). A window older than the key's current one is ignored.
    pub fn merge(&self, budget: &str, key: &str, window: u64, others: f64) {
        if let Some(budget) = self.budgets.iter().find(|b| b.name == budget) {
            self.update(budget, key, window, |s| s.others = others);
        }
    }
}

/// The key of a span or a query: the values of `keys`, joined by `|`; `None` when one is
/// missing.
fn key_of(keys: &[String], value: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut out = String::new();
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        out.push_str(&value(k)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use evalstream_evaluators::otlp::kv_str;
    use evalstream_evaluators::span::ResourceView;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn call(user: &str, tokens: i64, end_seconds: u64) -> Span {
        let int = |k: &str, v: i64| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::IntValue(v)),
            }),
            ..Default::default()
        };
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            end_time_unix_nano: end_seconds * 1_000_000_000,
            attributes: vec![
                kv_str("gen_ai.operation.name", "chat"),
                kv_str("gen_ai.request.model", "gpt-4o-mini"),
                kv_str("user.id", user),
                int("gen_ai.usage.input_tokens", tokens / 2),
                int("gen_ai.usage.output_tokens", tokens / 2),
            ],
            ..Default::default()
        }
    }

    fn budgets(yaml: &str) -> (Budgets, Registry) {
        let config: std::collections::BTreeMap<String, BudgetConfig> =
            serde_saphyr::from_str(yaml).unwrap();
        for (name, c) in &config {
            c.validate(name).unwrap();
        }
        let registry = Registry::new();
        (Budgets::new(&config, &registry).unwrap(), registry)
    }

    fn now() -> u64 {
        crate::now_unix_nanos() / 1_000_000_000
    }

    #[test]
    fn spend_accumulates_per_key_and_window_and_crosses_its_limit_once() {
        let (budgets, _) =
            budgets("tokens: { keys: [user.id], limit_tokens: 1000, window_seconds: 3600 }");
        let prices = PriceTable::default();
        let attributes = |user: &str| HashMap::from([("user.id".to_owned(), user.to_owned())]);
        let t = now();
        for tokens in [400, 400] {
            let span = call("alice", tokens, t);
            budgets.record(
                &GenAiSpan::new(&span, ResourceView::new(None), None),
                &prices,
            );
        }
        let alice = budgets.query("tokens", &attributes("alice")).unwrap();
        assert_eq!(alice.spent, 800.0);
        assert!(alice.allows());
        assert_eq!(alice.remaining(), 200.0);
        assert_eq!(alice.window.1 - alice.window.0, 3600);
        assert_eq!(
            budgets.query("tokens", &attributes("bob")).unwrap().spent,
            0.0
        );
        let span = call("alice", 400, t);
        budgets.record(
            &GenAiSpan::new(&span, ResourceView::new(None), None),
            &prices,
        );
        let alice = budgets.query("tokens", &attributes("alice")).unwrap();
        assert!(!alice.allows(), "{alice:?}");
        assert_eq!(alice.remaining(), 0.0);
        assert_eq!(budgets.exhausted.with_label_values(&["tokens"]).get(), 1);
        // A span of the previous window does not count in this one.
        let old = call("alice", 400, t - 3600);
        budgets.record(
            &GenAiSpan::new(&old, ResourceView::new(None), None),
            &prices,
        );
        assert_eq!(
            budgets.query("tokens", &attributes("alice")).unwrap().spent,
            1200.0
        );
        // The other workers' spend adds up.
        budgets.merge("tokens", "bob", alice.window.0, 999.0);
        assert_eq!(
            budgets.query("tokens", &attributes("bob")).unwrap().spent,
            999.0
        );
        assert_eq!(
            budgets.own(),
            vec![(
                "tokens".to_owned(),
                "alice".to_owned(),
                alice.window.0,
                1200.0
            )]
        );
    }

    #[test]
    fn queries_name_what_is_missing_and_keys_past_the_cap_are_counted() {
        let (budgets, _) =
            budgets("b: { keys: [user.id, feature], limit_tokens: 10, max_keys: 1 }");
        assert!(matches!(
            budgets.query("nope", &HashMap::new()),
            Err(QueryError::Unknown { .. })
        ));
        let only_user = HashMap::from([("user.id".to_owned(), "u".to_owned())]);
        assert_eq!(
            budgets.query("b", &only_user).unwrap_err().to_string(),
            "budget `b` is kept per `feature`: give it in `attributes`"
        );
        let prices = PriceTable::default();
        let mut span = call("u1", 10, now());
        span.attributes.push(kv_str("feature", "chat"));
        budgets.record(
            &GenAiSpan::new(&span, ResourceView::new(None), None),
            &prices,
        );
        let mut other = call("u2", 10, now());
        other.attributes.push(kv_str("feature", "chat"));
        budgets.record(
            &GenAiSpan::new(&other, ResourceView::new(None), None),
            &prices,
        );
        assert_eq!(budgets.untracked.with_label_values(&["b"]).get(), 1);
        // A span without the key's attributes is no one's spend.
        let keyless = call("u3", 10, now());
        budgets.record(
            &GenAiSpan::new(&keyless, ResourceView::new(None), None),
            &prices,
        );
        assert_eq!(budgets.untracked.with_label_values(&["b"]).get(), 1);
    }

    #[test]
    fn a_budget_needs_keys_and_one_limit() {
        let config = |yaml: &str| serde_saphyr::from_str::<BudgetConfig>(yaml).unwrap();
        assert!(
            config("{ keys: [], limit_usd: 1 }")
                .validate("x")
                .unwrap_err()
                .contains("budgets.x.keys")
        );
        assert!(
            config("{ keys: [a] }")
                .validate("x")
                .unwrap_err()
                .contains("one limit")
        );
        assert!(
            config("{ keys: [a], limit_usd: 1, limit_tokens: 2 }")
                .validate("x")
                .is_err()
        );
        assert!(
            config("{ keys: [a], limit_usd: -1 }")
                .validate("x")
                .is_err()
        );
        assert!(
            config("{ keys: [a], limit_usd: 1, window_seconds: 0 }")
                .validate("x")
                .is_err()
        );
    }
}
