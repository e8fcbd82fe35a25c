//! The Rhai engine scripts run in: a sandbox with explicit limits and only what scorers need.
//!
//! `Engine::new()` is not a sandbox: it has no operation limit and prints to stdout. This starts
//! from `Engine::new_raw()` and adds the standard packages one by one (arithmetic, logic, maths,
//! strings, arrays, blobs, maps, iterators, function pointers) but not the language core package,
//! whose `sleep` blocks the worker thread (and panics on `sleep(1e300)`), whose `exit` ends a call
//! in a way scorers have no use for, and whose `parse_json` scans unbounded text; `parse_json` is
//! registered again, bounded. The crate is built without its time and module features, so there
//! is no clock and no `import` of files. It disables `eval`, routes `print` and `debug` to the
//! worker's logs at debug level, truncated, and sets every limit. A script that runs out of a
//! limit fails with an error for that call; nothing it does can reach files, the network, the
//! clock, stdin or stdout, or block the thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::borrow::Cow;

use opentelemetry_proto::tonic::trace::v1::Span;
use regex::Regex;
use rhai::packages::{
    ArithmeticPackage, BasicArrayPackage, BasicBlobPackage, BasicFnPackage, BasicIteratorPackage,
    BasicMapPackage, BasicMathPackage, BasicStringPackage, BitFieldPackage, LogicPackage,
    MoreStringPackage, Package,
};
use rhai::{
    Array, Dynamic, Engine, EvalAltResult, ImmutableString, NativeCallContext, OptimizationLevel,
    Position,
};
use serde::{Deserialize, Serialize};

use super::{Script, ScriptConfig};
use crate::evaluator::{Evaluator, Outcome};
use crate::scorers::compile_regex;
use crate::scorers::pii::{self, PiiKind};
use crate::scorers::refusal::{Refusal, RefusalConfig};
use crate::span::{GenAiSpan, ResourceView};

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

/// The highest `max_call_levels` accepted. Each Rhai call level takes stack (see
/// [`required_stack`]), and running out of stack aborts the whole process: it cannot be caught
/// like the limit's own error. 64 levels is twice the default, deeper than any scorer needs.
pub const MAX_ALLOWED_CALL_LEVELS: usize = 64;

/// The highest `max_expr_depth` accepted (the default): the parser and the evaluator recurse
/// once per level of nesting, in every function body at every call level and in `parse_json`,
/// so the stack grows with call levels × expression depth.
pub const MAX_ALLOWED_EXPR_DEPTH: usize = 64;

/// The highest `max_array_size` and `max_map_size` accepted (the defaults). Rhai counts the
/// items of nested arrays and maps in these sizes, so they also bound how deep a script can nest
/// data (`a = [a]` in a loop), and cloning, measuring and dropping nested data recurses once per
/// level: 10 000 nested maps take about 3.5 MB of stack in a release build.
pub const MAX_ALLOWED_COLLECTION_SIZE: usize = 10_000;

/// Stack bytes, measured with the `script_stack` benchmark (bisecting the smallest thread stack
/// each of [`worst_case_scripts`] survives on) and rounded up. A debug build takes five to seven
/// times more than a release build.
struct StackCosts {
    /// Before any script frame, and what parsing JSON takes whatever its depth.
    base: usize,
    /// One script call level (plain recursion, or through a closure: `map`, `filter`, `call`).
    call_level: usize,
    /// One level of expression nesting inside one call level (nested arguments take the most).
    expr_level: usize,
    /// One level of nesting in `parse_json`.
    json_level: usize,
    /// One level of nested arrays, and of nested maps.
    array_level: usize,
    map_level: usize,
}

const STACK_COSTS: StackCosts = if cfg!(debug_assertions) {
    // Measured: 24.2 KiB a call level, 6.6 KiB an expression level, 6.1 KiB a JSON level plus
    // 705 KiB, 1.2 KiB an array level, 2.1 KiB a map level.
    StackCosts {
        base: 1024 * 1024,
        call_level: 28 * 1024,
        expr_level: 7 * 1024,
        json_level: 7 * 1024,
        array_level: 1536,
        map_level: 2560,
    }
} else {
    // Measured: 3.5 KiB a call level, 1.07 KiB an expression level, 0.75 KiB a JSON level plus
    // 62 KiB, 209 bytes an array level, 350 bytes a map level.
    StackCosts {
        base: 128 * 1024,
        call_level: 4 * 1024,
        expr_level: 1280,
        json_level: 1024,
        array_level: 256,
        map_level: 384,
    }
};

/// The stack a thread needs to run scripts under `limits` whatever they do: every call level
/// nesting expressions as deep as allowed, the deepest one parsing JSON nested as deep as allowed
/// and nesting arrays and maps as deep as their sizes allow; the measured costs with half again
/// as margin. Threads that evaluate scripts must be spawned with at least this much
/// (`std::thread::Builder::stack_size`), plus what they need besides scripts: a Rhai limit then
/// stops any script before the stack runs out. Sized for this build's profile (debug builds need
/// more).
pub const fn required_stack(limits: &ScriptLimits) -> usize {
    let c = &STACK_COSTS;
    let per_call = c.call_level + limits.max_expr_depth * c.expr_level;
    let total = c.base
        + limits.max_call_levels * per_call
        + limits.max_expr_depth * c.json_level
        + limits.max_array_size * c.array_level
        + limits.max_map_size * c.map_level;
    total + total / 2
}

/// The stack a thread needs for any limits [`ScriptLimits::validate`] accepts: [`required_stack`]
/// at the bounds (about 17 MiB in a release build, 105 MiB in a debug build: address space,
/// of which a thread only touches what its scripts use).
pub const STACK_BYTES_FOR_MAX_CALL_LEVELS: usize = required_stack(&ScriptLimits {
    max_operations: 1,
    max_call_levels: MAX_ALLOWED_CALL_LEVELS,
    max_expr_depth: MAX_ALLOWED_EXPR_DEPTH,
    max_string_size: 1,
    max_array_size: MAX_ALLOWED_COLLECTION_SIZE,
    max_map_size: MAX_ALLOWED_COLLECTION_SIZE,
    max_variables: 1,
});

impl ScriptLimits {
    /// Checks that every limit is positive (0 means "unlimited" to Rhai, which is never meant) and
    /// that the limits bounding the stack are within what [`STACK_BYTES_FOR_MAX_CALL_LEVELS`]
    /// provides for.
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
        for (key, value, bound) in [
            (
                "max_call_levels",
                self.max_call_levels,
                MAX_ALLOWED_CALL_LEVELS,
            ),
            (
                "max_expr_depth",
                self.max_expr_depth,
                MAX_ALLOWED_EXPR_DEPTH,
            ),
            (
                "max_array_size",
                self.max_array_size,
                MAX_ALLOWED_COLLECTION_SIZE,
            ),
            (
                "max_map_size",
                self.max_map_size,
                MAX_ALLOWED_COLLECTION_SIZE,
            ),
        ] {
            if value > bound {
                return Err(format!(
                    "limits.{key}: {value} is over the bound of {bound} (more could overflow the \
                     evaluation threads' stack, which aborts the process)"
                ));
            }
        }
        Ok(())
    }
}

/// Scripts that take the most stack per level, each as (name, source, params): plain
/// recursion, recursion through a closure, recursion from inside expressions nested as deep as
/// `limits` allow (an operator chain, blocks, arguments), nested arrays and maps grown until
/// their size limit, and recursion to the last level which then parses JSON nested as deep as
/// `limits` allow. Each runs until a limit stops it (run them with [`run_worst_case`]). For the
/// script tests and the `script_stack` benchmark, which measures the stack they take.
#[doc(hidden)]
pub fn worst_case_scripts(limits: &ScriptLimits) -> Vec<(&'static str, String, serde_json::Value)> {
    let config = ScriptConfig {
        script: "deep.rhai".into(),
        params: Default::default(),
        threshold: 0.5,
        trace: false,
        limits: limits.clone(),
    };
    // The deepest nesting of `open`…`inner`…`close` in `fn down(n)` that compiles (none: an
    // empty script, which fails to compile when run).
    let nested = |open: &str, inner: &str, close: &str| {
        (1..=limits.max_expr_depth)
            .rev()
            .map(|n| {
                format!(
                    "fn down(n) {{ {}{inner}{} }} fn score(span) {{ down(0) }}",
                    open.repeat(n),
                    close.repeat(n)
                )
            })
            .find(|source| Script::compile("deep.rhai", source, &config).is_ok())
            .unwrap_or_default()
    };
    // The deepest JSON object that `parse_json` reads.
    let engine = engine(limits, "deep.rhai");
    let json = (1..=limits.max_expr_depth)
        .rev()
        .map(|n| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n)))
        .find(|json| engine.parse_json(json, true).is_ok())
        .unwrap_or_default();
    vec![
        (
            "plain",
            "fn down(n) { down(n + 1) } fn score(span) { down(0) }".to_owned(),
            serde_json::Value::Null,
        ),
        (
            "closure",
            "fn down(n) { [n].map(|x| down(x + 1)) } fn score(span) { down(0) }".to_owned(),
            serde_json::Value::Null,
        ),
        (
            "operators",
            nested("n + (", "down(n + 1)", ")"),
            serde_json::Value::Null,
        ),
        (
            "blocks",
            nested("{ ", "down(n + 1)", " }"),
            serde_json::Value::Null,
        ),
        (
            "arguments",
            nested("abs(", "down(n + 1)", ")"),
            serde_json::Value::Null,
        ),
        (
            "arrays",
            "fn score(span) { let a = []; loop { a = [a]; } }".to_owned(),
            serde_json::Value::Null,
        ),
        (
            "maps",
            "fn score(span) { let m = #{}; loop { m = #{m: m}; } }".to_owned(),
            serde_json::Value::Null,
        ),
        (
            "json",
            "fn down(n, p) { if n < p.last { down(n + 1, p) } else { parse_json(p.json).len() } }
             fn score(span, params) { down(2, params) }"
                .to_owned(),
            serde_json::json!({ "json": json }),
        ),
    ]
}

/// Runs a script of [`worst_case_scripts`] under `limits` (with ten million operations, so only
/// the limit it aims at stops it) on a new thread of `stack` bytes, returning its outcome: the
/// `json` one (the one with params) at the deepest level that does not overflow the call limit,
/// the others once. Too small a stack aborts the process (a stack overflow cannot be caught).
/// An error if the script does not compile, the thread cannot start or the script runs for more
/// than two minutes.
#[doc(hidden)]
pub fn run_worst_case(
    source: &str,
    params: &serde_json::Value,
    limits: &ScriptLimits,
    stack: usize,
) -> Result<Outcome, String> {
    if params.is_null() {
        return run_on_stack(source, params, limits, stack);
    }
    let mut last = limits.max_call_levels;
    loop {
        let mut p = params.clone();
        p["last"] = serde_json::json!(last);
        let outcome = run_on_stack(source, &p, limits, stack)?;
        match &outcome {
            Outcome::Error { message, .. } if message.contains("Stack overflow") && last > 1 => {
                last -= 1;
            }
            _ => return Ok(outcome),
        }
    }
}

/// Runs `source` once on a new thread of `stack` bytes (see [`run_worst_case`]).
fn run_on_stack(
    source: &str,
    params: &serde_json::Value,
    limits: &ScriptLimits,
    stack: usize,
) -> Result<Outcome, String> {
    let mut config = ScriptConfig {
        script: "deep.rhai".into(),
        params: params.as_object().cloned().unwrap_or_default(),
        threshold: 0.5,
        trace: false,
        limits: limits.clone(),
    };
    config.limits.max_operations = 10_000_000;
    let script = Script::compile("deep.rhai", source, &config)?;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            let span = Span::default();
            let view = GenAiSpan::new(&span, ResourceView::default(), None);
            let _ = sender.send(script.evaluate(&view));
        })
        .map_err(|e| format!("cannot start a thread of {stack} bytes: {e}"))?;
    receiver
        .recv_timeout(std::time::Duration::from_secs(120))
        .map_err(|e| format!("the script did not finish: {e}"))
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
    // The standard package less `LanguageCorePackage` (see the module's documentation); the
    // order follows `StandardPackage`'s, later packages taking precedence.
    for package in [
        ArithmeticPackage::new().as_shared_module(),
        BasicStringPackage::new().as_shared_module(),
        BasicIteratorPackage::new().as_shared_module(),
        BasicFnPackage::new().as_shared_module(),
        BitFieldPackage::new().as_shared_module(),
        LogicPackage::new().as_shared_module(),
        BasicMathPackage::new().as_shared_module(),
        BasicArrayPackage::new().as_shared_module(),
        BasicBlobPackage::new().as_shared_module(),
        BasicMapPackage::new().as_shared_module(),
        MoreStringPackage::new().as_shared_module(),
    ] {
        engine.register_global_module(package);
    }
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
    // What a script prints is usually span content, which can be personal data: at debug level
    // it stays out of production logs, and truncated one line cannot flood them.
    let name: Arc<str> = script.into();
    let for_print = name.clone();
    engine.on_print(move |text| tracing::debug!(script = %for_print, "{}", log_excerpt(text)));
    engine.on_debug(move |text, _, position| {
        tracing::debug!(script = %name, %position, "{}", log_excerpt(text));
    });
    register_helpers(&mut engine, limits);
    engine
}

/// Characters of a script's `print` or `debug` text that are logged.
pub const MAX_LOGGED_CHARS: usize = 256;

/// `text` as logged: its first [`MAX_LOGGED_CHARS`] characters, and how much was cut.
pub fn log_excerpt(text: &str) -> Cow<'_, str> {
    excerpt(text, MAX_LOGGED_CHARS)
}

/// The first `max_chars` characters of `text`, marked as truncated when it is longer.
pub fn excerpt(text: &str, max_chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!(
            "{}… [truncated: {} chars, first {max_chars} shown]",
            &text[..end],
            text.chars().count()
        )),
    }
}

/// A limit error (the outcome's error type is `script_limit`): Rhai prints it as
/// "`what` too large".
fn too_large(what: String) -> Box<EvalAltResult> {
    EvalAltResult::ErrorDataTooLarge(what, Position::NONE).into()
}

/// `text` if a helper may scan it: span fields reach scripts whatever their size (the string
/// limit applies to strings a script builds), so a helper would otherwise scan, and allocate for,
/// a text of any size.
fn bounded<'t>(
    helper: &str,
    text: &'t str,
    max_string_size: usize,
) -> Result<&'t str, Box<EvalAltResult>> {
    if text.len() > max_string_size {
        return Err(too_large(format!(
            "{helper}: a text of {} bytes, over limits.max_string_size ({max_string_size}), is",
            text.len()
        )));
    }
    Ok(text)
}

/// `regex_match(text, pattern)`, `regex_find(text, pattern)` (the first match or `()`),
/// `regex_find_all(text, pattern)`, `word_count(text)`, `parse_json(text)`, and the built-in
/// scorers' detectors: `pii(text)` (the kinds of personal data found) and `refusal(text)` (whether
/// it opens with a refusal), so scripts compose them rather than re-implement them.
///
/// Every helper's work and result are bounded by the limits: a text over `max_string_size` is a
/// limit error (`refusal` reads only the text's opening, so it takes any), and `regex_find_all`
/// stops with a limit error past `max_array_size` matches rather than truncating, as a script
/// growing an array past it does: a silently shortened list would give a wrong score.
fn register_helpers(engine: &mut Engine, limits: &ScriptLimits) {
    let max_string = limits.max_string_size;
    let max_array = limits.max_array_size;
    if let Ok(refusal) = Refusal::build(&RefusalConfig::default()) {
        engine.register_fn("refusal", move |text: &str| refusal.is_refusal(text));
    }
    let cache = Arc::new(RegexCache::default());
    let c = cache.clone();
    engine.register_fn(
        "regex_match",
        move |text: &str, pattern: &str| -> Result<bool, Box<EvalAltResult>> {
            let text = bounded("regex_match", text, max_string)?;
            Ok(c.get(pattern)?.is_match(text))
        },
    );
    let c = cache.clone();
    engine.register_fn(
        "regex_find",
        move |text: &str, pattern: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            let text = bounded("regex_find", text, max_string)?;
            Ok(c.get(pattern)?
                .find(text)
                .map_or(Dynamic::UNIT, |m| m.as_str().into()))
        },
    );
    engine.register_fn(
        "regex_find_all",
        move |text: &str, pattern: &str| -> Result<Array, Box<EvalAltResult>> {
            let text = bounded("regex_find_all", text, max_string)?;
            let found: Array = cache
                .get(pattern)?
                .find_iter(text)
                .take(max_array.saturating_add(1))
                .map(|m| Dynamic::from(ImmutableString::from(m.as_str())))
                .collect();
            if found.len() > max_array {
                return Err(too_large(format!(
                    "regex_find_all: more than {max_array} matches \
                     (limits.max_array_size); the result is"
                )));
            }
            Ok(found)
        },
    );
    engine.register_fn(
        "word_count",
        move |text: &str| -> Result<i64, Box<EvalAltResult>> {
            let text = bounded("word_count", text, max_string)?;
            Ok(text.split_whitespace().count() as i64)
        },
    );
    engine.register_fn(
        "parse_json",
        move |context: NativeCallContext, text: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            let text = bounded("parse_json", text, max_string)?;
            // Rhai's parser, so `max_expr_depth` bounds the nesting it recurses into.
            context.engine().parse_json(text, true).map(Dynamic::from)
        },
    );
    engine.register_fn(
        "pii",
        move |text: &str| -> Result<Array, Box<EvalAltResult>> {
            let text = bounded("pii", text, max_string)?;
            let mut kinds: Vec<&'static str> = pii::find(text, &PiiKind::ALL)
                .iter()
                .map(|f| f.kind.as_str())
                .collect();
            kinds.sort_unstable();
            kinds.dedup();
            Ok(kinds.into_iter().map(Dynamic::from).collect())
        },
    );
}
