//! The Rhai engine scripts run in: a sandbox with explicit limits and only what scorers need.
//!
//! `Engine::new()` is not a sandbox: it has no operation limit and prints to stdout. This starts
//! from `Engine::new_raw()` and adds the standard package (arithmetic, strings, arrays, maps,
//! `parse_json`; the crate is built without its time and module features, so there is no clock
//! and no `import` of files), disables `eval`, routes `print` and `debug` to the worker's logs,
//! and sets every limit. A script that runs out of a limit fails with an error for that call;
//! nothing it does can reach files, the network or the clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use regex::Regex;
use rhai::packages::{Package, StandardPackage};
use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, OptimizationLevel};
use serde::{Deserialize, Serialize};

use crate::scorers::compile_regex;
use crate::scorers::pii::{self, PiiKind};
use crate::scorers::refusal::{Refusal, RefusalConfig};

/// Limits on one call of a script. Each one stops a different runaway: a loop (operations), deep
/// recursion (call levels), deeply nested expressions (expression depth), and unbounded
/// allocation (string, array and map sizes, variables).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptLimits {
    /// Operations per call (roughly: expressions evaluated).
    #[serde(default = "default_operations")]
    pub max_operations: u64,
    /// Nested function calls.
    #[serde(default = "default_call_levels")]
    pub max_call_levels: usize,
    /// Nesting of expressions, at top level and inside functions.
    #[serde(default = "default_expr_depth")]
    pub max_expr_depth: usize,
    /// Bytes in any one string.
    #[serde(default = "default_string_size")]
    pub max_string_size: usize,
    /// Items in any one array.
    #[serde(default = "default_collection_size")]
    pub max_array_size: usize,
    /// Entries in any one map.
    #[serde(default = "default_collection_size")]
    pub max_map_size: usize,
    /// Variables alive at once.
    #[serde(default = "default_variables")]
    pub max_variables: usize,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            max_operations: default_operations(),
            max_call_levels: default_call_levels(),
            max_expr_depth: default_expr_depth(),
            max_string_size: default_string_size(),
            max_array_size: default_collection_size(),
            max_map_size: default_collection_size(),
            max_variables: default_variables(),
        }
    }
}

fn default_operations() -> u64 {
    100_000
}
fn default_call_levels() -> usize {
    32
}
fn default_expr_depth() -> usize {
    64
}
fn default_string_size() -> usize {
    1 << 20
}
fn default_collection_size() -> usize {
    10_000
}
fn default_variables() -> usize {
    256
}

impl ScriptLimits {
    /// Checks that every limit is positive (0 means "unlimited" to Rhai, which is never meant).
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(&str, u64); 7] = [
            ("max_operations", self.max_operations),
            ("max_call_levels", self.max_call_levels as u64),
            ("max_expr_depth", self.max_expr_depth as u64),
            ("max_string_size", self.max_string_size as u64),
            ("max_array_size", self.max_array_size as u64),
            ("max_map_size", self.max_map_size as u64),
            ("max_variables", self.max_variables as u64),
        ];
        for (key, value) in checks {
            if value == 0 {
                return Err(format!("limits.{key}: must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Compiled regexes shared by every script, bounded: a script building patterns from data
/// cannot grow it without limit.
#[derive(Default)]
struct RegexCache {
    compiled: Mutex<HashMap<String, Arc<Regex>>>,
}

/// Patterns kept at most; past it the cache is cleared and fills again.
const MAX_CACHED_REGEXES: usize = 256;

impl RegexCache {
    fn get(&self, pattern: &str) -> Result<Arc<Regex>, Box<EvalAltResult>> {
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(re) = compiled.get(pattern) {
            return Ok(re.clone());
        }
        let re = Arc::new(
            compile_regex("pattern", pattern).map_err(|e| -> Box<EvalAltResult> { e.into() })?,
        );
        if compiled.len() >= MAX_CACHED_REGEXES {
            compiled.clear();
        }
        compiled.insert(pattern.to_owned(), re.clone());
        Ok(re)
    }
}

/// A sandboxed engine with the scorer helpers, for scripts named `script` (in log lines).
pub fn engine(limits: &ScriptLimits, script: &str) -> Engine {
    let mut engine = Engine::new_raw();
    engine.register_global_module(StandardPackage::new().as_shared_module());
    engine
        .set_optimization_level(OptimizationLevel::Simple)
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_levels)
        .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_variables(limits.max_variables)
        .set_max_functions(256)
        .disable_symbol("eval");
    let name: Arc<str> = script.into();
    let for_print = name.clone();
    engine.on_print(move |text| tracing::info!(script = %for_print, "{text}"));
    engine.on_debug(move |text, _, position| {
        tracing::debug!(script = %name, %position, "{text}");
    });
    register_helpers(&mut engine);
    engine
}

/// `regex_match(text, pattern)`, `regex_find(text, pattern)` (the first match or `()`),
/// `regex_find_all(text, pattern)`, `word_count(text)`, and the built-in scorers' detectors:
/// `pii(text)` (the kinds of personal data found) and `refusal(text)` (whether it opens with a
/// refusal), so scripts compose them rather than re-implement them.
fn register_helpers(engine: &mut Engine) {
    if let Ok(refusal) = Refusal::build(&RefusalConfig::default()) {
        engine.register_fn("refusal", move |text: &str| refusal.is_refusal(text));
    }
    let cache = Arc::new(RegexCache::default());
    let c = cache.clone();
    engine.register_fn(
        "regex_match",
        move |text: &str, pattern: &str| -> Result<bool, Box<EvalAltResult>> {
            Ok(c.get(pattern)?.is_match(text))
        },
    );
    let c = cache.clone();
    engine.register_fn(
        "regex_find",
        move |text: &str, pattern: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            Ok(c.get(pattern)?
                .find(text)
                .map_or(Dynamic::UNIT, |m| m.as_str().into()))
        },
    );
    engine.register_fn(
        "regex_find_all",
        move |text: &str, pattern: &str| -> Result<Array, Box<EvalAltResult>> {
            Ok(cache
                .get(pattern)?
                .find_iter(text)
                .map(|m| Dynamic::from(ImmutableString::from(m.as_str())))
                .collect())
        },
    );
    engine.register_fn("word_count", |text: &str| -> i64 {
        text.split_whitespace().count() as i64
    });
    engine.register_fn("pii", |text: &str| -> Array {
        let mut kinds: Vec<&'static str> = pii::find(text, &PiiKind::ALL)
            .iter()
            .map(|f| f.kind.as_str())
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds.into_iter().map(Dynamic::from).collect()
    });
}
