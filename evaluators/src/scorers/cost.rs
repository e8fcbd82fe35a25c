//! `cost`: what did the call cost, and was it within budget?
//!
//! Prices the span's token usage with a [`PriceTable`] (input, output, cache-read, cache-write and
//! reasoning tokens apart). Scores the cost in USD; passes at or under `max_usd` when set. Spans
//! without usage or of a model without a price are `skipped: not_applicable`, with the model named.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{MAX_NAME_CHARS, excerpt};
use crate::evaluator::{Evaluator, Outcome};
use crate::pricing::{Price, PriceTable};
use crate::scorers::registry::Builtin;
use crate::span::{GenAiSpan, OperationKind};

/// Configuration of `cost`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CostConfig {
    /// Prices by model name (USD per million tokens), over the built-in table.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    /// Use the built-in price table.
    #[serde(default = "yes")]
    pub builtin_prices: bool,
    /// The most one call may cost, USD.
    #[serde(default)]
    pub max_usd: Option<f64>,
}

impl Builtin for CostConfig {
    const TYPE: &'static str = "cost";
    const DEFAULT_KINDS: &'static [OperationKind] =
        &[OperationKind::Chat, OperationKind::Embeddings];

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(CostScorer::build(self)?))
    }
}

fn yes() -> bool {
    true
}

impl Default for CostConfig {
    fn default() -> Self {
        CostConfig {
            prices: BTreeMap::new(),
            builtin_prices: true,
            max_usd: None,
        }
    }
}

/// The `cost` scorer.
#[derive(Debug)]
pub struct CostScorer {
    table: PriceTable,
    max_usd: Option<f64>,
}

impl CostScorer {
    /// Builds the price table.
    pub fn build(config: &CostConfig) -> Result<CostScorer, String> {
        if config.max_usd.is_some_and(|m| !(m.is_finite() && m >= 0.0)) {
            return Err("max_usd: must be a non-negative number".into());
        }
        if !config.builtin_prices && config.prices.is_empty() {
            return Err("prices: with builtin_prices off, give at least one model's prices".into());
        }
        Ok(CostScorer {
            table: PriceTable::new(config.builtin_prices, &config.prices)?,
            max_usd: config.max_usd,
        })
    }
}

impl Evaluator for CostScorer {
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome {
        let Some(model) = span.model() else {
            return Outcome::not_applicable("no model recorded");
        };
        let Some((key, price)) = self.table.lookup(model) else {
            return Outcome::not_applicable(format!(
                "no price for model `{}`",
                excerpt(model, MAX_NAME_CHARS)
            ));
        };
        let usage = span.usage();
        let Some(cost) = PriceTable::cost(price, &usage) else {
            return Outcome::not_applicable("no token usage recorded");
        };
        let passed = self.max_usd.is_none_or(|max| cost.total_usd <= max);
        let label = if passed { "ok" } else { "over_budget" };
        let n = |v: Option<u64>| v.unwrap_or(0);
        let explanation = format!(
            "${:.6} at {key} prices: {} input ({} cache read, {} cache write), {} output ({} reasoning){}",
            cost.total_usd,
            n(usage.input),
            n(usage.cache_read),
            n(usage.cache_write),
            n(usage.output),
            n(usage.reasoning),
            self.max_usd
                .map_or(String::new(), |m| format!("; budget ${m}")),
        );
        Outcome::measured(cost.total_usd, passed, label, explanation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluator::SkipReason;
    use crate::scorers::testing::{i, s, span, view};

    #[test]
    fn prices_usage_and_checks_the_budget() {
        let sp = span(vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
            i("gen_ai.usage.input_tokens", 412),
            i("gen_ai.usage.output_tokens", 57),
            i("gen_ai.usage.cache_read.input_tokens", 256),
        ]);
        let scorer = CostScorer::build(&CostConfig::default()).unwrap();
        let score = scorer.evaluate(&view(&sp)).score().cloned().unwrap();
        // 156 × 0.15 + 256 × 0.075 + 57 × 0.60, per million.
        let expected = (156.0 * 0.15 + 256.0 * 0.075 + 57.0 * 0.60) / 1e6;
        assert!((score.value - expected).abs() < 1e-12, "{}", score.value);
        assert!(score.passed);
        let tight = CostScorer::build(&CostConfig {
            max_usd: Some(1e-6),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            tight.evaluate(&view(&sp)).score().unwrap().label,
            "over_budget"
        );
    }

    #[test]
    fn unknown_models_and_missing_usage_are_skipped() {
        let scorer = CostScorer::build(&CostConfig::default()).unwrap();
        let unknown = span(vec![
            s("gen_ai.request.model", "my-finetune"),
            i("gen_ai.usage.input_tokens", 1),
        ]);
        match scorer.evaluate(&view(&unknown)) {
            Outcome::Skipped {
                reason: SkipReason::NotApplicable,
                detail,
            } => assert!(detail.contains("my-finetune")),
            other => panic!("{other:?}"),
        }
        let no_usage = span(vec![s("gen_ai.request.model", "gpt-4o")]);
        assert!(matches!(
            scorer.evaluate(&view(&no_usage)),
            Outcome::Skipped { .. }
        ));
    }
}
