//! Token prices per model, and what a span cost.
//!
//! Prices are USD per million tokens, with cache reads, cache writes and reasoning tokens priced
//! apart. The built-in table covers widely used models at their list prices (checked November
//! 2026); configuration adds models and overrides entries, because prices change and contracts
//! differ. Model names match by the longest table key that is a prefix of the name
//! (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`), also after a vendor prefix (`openai/gpt-4o`,
//! `us.anthropic.claude-sonnet-4-…`).
//!
//! Token accounting follows OTel GenAI: input tokens include cached ones, output tokens include
//! reasoning ones, so those are subtracted before the base price applies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::span::TokenUsage;

/// Prices of one model, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Uncached input tokens.
    pub input: f64,
    /// Output tokens (reasoning excluded when `reasoning` is set).
    pub output: f64,
    /// Input tokens read from the prompt cache (default: the input price).
    #[serde(default)]
    pub cache_read: Option<f64>,
    /// Input tokens written to the prompt cache (default: the input price).
    #[serde(default)]
    pub cache_write: Option<f64>,
    /// Reasoning tokens (default: the output price).
    #[serde(default)]
    pub reasoning: Option<f64>,
}

const fn p(input: f64, output: f64, cache_read: f64, cache_write: Option<f64>) -> Price {
    Price {
        input,
        output,
        cache_read: Some(cache_read),
        cache_write,
        reasoning: None,
    }
}

/// The built-in list prices.
pub const BUILT_IN: &[(&str, Price)] = &[
    ("gpt-4o-mini", p(0.15, 0.60, 0.075, None)),
    ("gpt-4o", p(2.50, 10.00, 1.25, None)),
    ("gpt-4.1-nano", p(0.10, 0.40, 0.025, None)),
    ("gpt-4.1-mini", p(0.40, 1.60, 0.10, None)),
    ("gpt-4.1", p(2.00, 8.00, 0.50, None)),
    ("gpt-5-nano", p(0.05, 0.40, 0.005, None)),
    ("gpt-5-mini", p(0.25, 2.00, 0.025, None)),
    ("gpt-5", p(1.25, 10.00, 0.125, None)),
    ("o3", p(2.00, 8.00, 0.50, None)),
    ("o4-mini", p(1.10, 4.40, 0.275, None)),
    ("text-embedding-3-small", p(0.02, 0.0, 0.02, None)),
    ("text-embedding-3-large", p(0.13, 0.0, 0.13, None)),
    ("claude-3-5-haiku", p(0.80, 4.00, 0.08, Some(1.00))),
    ("claude-haiku-4-5", p(1.00, 5.00, 0.10, Some(1.25))),
    ("claude-3-5-sonnet", p(3.00, 15.00, 0.30, Some(3.75))),
    ("claude-3-7-sonnet", p(3.00, 15.00, 0.30, Some(3.75))),
    ("claude-sonnet-4", p(3.00, 15.00, 0.30, Some(3.75))),
    ("claude-opus-4", p(15.00, 75.00, 1.50, Some(18.75))),
    ("claude-opus-4-5", p(5.00, 25.00, 0.50, Some(6.25))),
];

/// What one span cost, by token type.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cost {
    /// The total, USD.
    pub total_usd: f64,
    /// Uncached input, USD.
    pub input_usd: f64,
    /// Cache reads, USD.
    pub cache_read_usd: f64,
    /// Cache writes, USD.
    pub cache_write_usd: f64,
    /// Output excluding reasoning, USD.
    pub output_usd: f64,
    /// Reasoning, USD.
    pub reasoning_usd: f64,
}

/// A price table: the built-in prices (optionally) overlaid with configured ones.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    prices: BTreeMap<String, Price>,
}

impl PriceTable {
    /// The table of `extra` prices over the built-in ones (or alone, without `built_in`).
    pub fn new(built_in: bool, extra: &BTreeMap<String, Price>) -> Result<PriceTable, String> {
        let mut prices: BTreeMap<String, Price> = BTreeMap::new();
        if built_in {
            prices.extend(BUILT_IN.iter().map(|(k, v)| (k.to_string(), *v)));
        }
        for (model, price) in extra {
            let all = [
                Some(price.input),
                Some(price.output),
                price.cache_read,
                price.cache_write,
                price.reasoning,
            ];
            if all.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(format!(
                    "prices.{model}: prices must be non-negative numbers"
                ));
            }
            prices.insert(model.clone(), *price);
        }
        Ok(PriceTable { prices })
    }

    /// The prices of a model, with the table key that matched.
    pub fn lookup(&self, model: &str) -> Option<(&str, &Price)> {
        let suffixes = std::iter::once(model).chain(
            model
                .char_indices()
                .filter(|(_, c)| *c == '/' || *c == '.')
                .map(|(i, _)| &model[i + 1..]),
        );
        for name in suffixes {
            // Longest key that is `name` or a prefix of it ending at a `-` boundary.
            let found = self
                .prices
                .iter()
                .filter(|(k, _)| {
                    name == k.as_str()
                        || name
                            .strip_prefix(k.as_str())
                            .is_some_and(|rest| rest.starts_with(['-', '@', ':']))
                })
                .max_by_key(|(k, _)| k.len());
            if let Some((k, v)) = found {
                return Some((k.as_str(), v));
            }
        }
        None
    }

    /// What `usage` cost at `price`. `None` when no token counts were reported.
    pub fn cost(price: &Price, usage: &TokenUsage) -> Option<Cost> {
        if usage.input.is_none() && usage.output.is_none() {
            return None;
        }
        let per = |tokens: u64, usd_per_million: f64| tokens as f64 * usd_per_million / 1e6;
        let cache_read = usage.cache_read.unwrap_or(0);
        let cache_write = usage.cache_write.unwrap_or(0);
        let reasoning = usage.reasoning.unwrap_or(0);
        let input = usage
            .input
            .unwrap_or(0)
            .saturating_sub(cache_read.saturating_add(cache_write));
        let output = usage.output.unwrap_or(0).saturating_sub(reasoning);
        let c = Cost {
            input_usd: per(input, price.input),
            cache_read_usd: per(cache_read, price.cache_read.unwrap_or(price.input)),
            cache_write_usd: per(cache_write, price.cache_write.unwrap_or(price.input)),
            output_usd: per(output, price.output),
            reasoning_usd: per(reasoning, price.reasoning.unwrap_or(price.output)),
            total_usd: 0.0,
        };
        Some(Cost {
            total_usd: c.input_usd
                + c.cache_read_usd
                + c.cache_write_usd
                + c.output_usd
                + c.reasoning_usd,
            ..c
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PriceTable {
        PriceTable::new(true, &BTreeMap::new()).unwrap()
    }

    #[test]
    fn longest_prefix_and_vendor_prefixes_match() {
        let t = table();
        assert_eq!(t.lookup("gpt-4o-mini-2024-07-18").unwrap().0, "gpt-4o-mini");
        assert_eq!(t.lookup("gpt-4o-2024-08-06").unwrap().0, "gpt-4o");
        assert_eq!(t.lookup("gpt-4.1-mini").unwrap().0, "gpt-4.1-mini");
        assert_eq!(t.lookup("openai/gpt-4o").unwrap().0, "gpt-4o");
        assert_eq!(
            t.lookup("us.anthropic.claude-sonnet-4-20250514-v1:0")
                .unwrap()
                .0,
            "claude-sonnet-4"
        );
        assert_eq!(
            t.lookup("claude-opus-4-5-20251101").unwrap().0,
            "claude-opus-4-5"
        );
        assert!(t.lookup("gpt-4oops").is_none());
        assert!(t.lookup("llama-3").is_none());
    }

    #[test]
    fn prices_token_types_apart_without_double_counting() {
        let price = Price {
            input: 1.0,
            output: 4.0,
            cache_read: Some(0.1),
            cache_write: Some(2.0),
            reasoning: None,
        };
        let usage = TokenUsage {
            input: Some(1_000_000),
            output: Some(500_000),
            cache_read: Some(200_000),
            cache_write: Some(100_000),
            reasoning: Some(100_000),
            total: None,
        };
        let c = PriceTable::cost(&price, &usage).unwrap();
        assert!((c.input_usd - 0.7).abs() < 1e-9);
        assert!((c.cache_read_usd - 0.02).abs() < 1e-9);
        assert!((c.cache_write_usd - 0.2).abs() < 1e-9);
        assert!((c.output_usd - 1.6).abs() < 1e-9);
        assert!((c.reasoning_usd - 0.4).abs() < 1e-9);
        assert!((c.total_usd - 2.92).abs() < 1e-9);
        assert!(PriceTable::cost(&price, &TokenUsage::default()).is_none());
    }

    /// Found by fuzzing: cache read plus cache write overflowed on counts near `u64::MAX`.
    #[test]
    fn cache_token_counts_near_u64_max_saturate() {
        let price = Price {
            input: 1.0,
            output: 1.0,
            cache_read: None,
            cache_write: None,
            reasoning: None,
        };
        let usage = TokenUsage {
            input: Some(10),
            cache_read: Some(u64::MAX),
            cache_write: Some(u64::MAX),
            ..Default::default()
        };
        let cost = PriceTable::cost(&price, &usage).unwrap();
        assert_eq!(cost.input_usd, 0.0, "no uncached input left");
        assert!(cost.total_usd.is_finite());
    }

    #[test]
    fn configured_prices_override_and_are_validated() {
        let mut extra = BTreeMap::new();
        extra.insert(
            "gpt-4o".to_string(),
            Price {
                input: 9.0,
                output: 9.0,
                cache_read: None,
                cache_write: None,
                reasoning: None,
            },
        );
        let t = PriceTable::new(true, &extra).unwrap();
        assert_eq!(t.lookup("gpt-4o").unwrap().1.input, 9.0);
        extra.insert(
            "bad".to_string(),
            Price {
                input: -1.0,
                output: 0.0,
                cache_read: None,
                cache_write: None,
                reasoning: None,
            },
        );
        assert!(
            PriceTable::new(false, &extra)
                .unwrap_err()
                .contains("prices.bad")
        );
    }
}
