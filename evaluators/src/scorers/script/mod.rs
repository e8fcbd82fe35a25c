//! `rhai`: a scorer written by the user as a Rhai script, loaded from a file at start-up.
//!
//! The script defines `fn score(span)` (or `fn score(span, params)` to receive the evaluator's
//! `params`). `span` is a read-only map of the canonical fields (see [`span_map`]). It returns:
//! - a number: the score, passing when it is at least `threshold`;
//! - a map `#{ score, label, passed, explanation }`: `score` is required, the rest optional
//!   (`passed` defaults to `score >= threshold`, `label` to `pass` / `fail`);
//! - `()`: the span is skipped (`not_applicable`).
//!
//! The script is compiled once; the compiled AST and the engine are shared by every worker
//! thread, and each call runs the function without re-running the script's top level. It runs
//! in a sandbox ([`sandbox`]) with explicit limits: a script that loops for ever, allocates
//! without bound, recurses too deeply or throws yields an `error` outcome for that span (error
//! type `script_limit` or `script_error`), counted under the evaluator's name, and the worker
//! carries on. The evaluator's version includes a hash of the script, so changing the script
//! changes the score ids.
//!
//! **Hot reload**: [`Evaluator::reload`] reads the file again; when its text changed, the new
//! version is compiled and swapped in atomically (calls already running finish on the old one).
//! A version that does not compile is reported and the old one keeps running.
//!
//! With `trace: true` the scorer judges a span with its whole trace: `span.trace` is the
//! trace's spans (as maps), `span.documents` the documents retrieved before it, and the
//! streaming worker waits for the trace to be complete.

pub mod sandbox;
pub mod span_map;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rhai::{AST, CallFnOptions, Dynamic, Engine, EvalAltResult, Map, Scope};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::evaluator::{Evaluator, Outcome, Reload};
use crate::pricing::PriceTable;
use crate::scorers::registry::Builtin;
use crate::span::GenAiSpan;
use crate::trace::TraceView;
use sandbox::ScriptLimits;
use span_map::{Fields, span_map};

/// Configuration of `rhai`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptConfig {
    /// The script file (relative paths are read from the working directory).
    pub script: PathBuf,
    /// Passed to `score(span, params)` as a map.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// A numeric result passes at this score or above.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Judge spans with their whole trace (`span.trace`).
    #[serde(default)]
    pub trace: bool,
    /// Limits on one call.
    #[serde(default)]
    pub limits: ScriptLimits,
}

impl Builtin for ScriptConfig {
    const TYPE: &'static str = "rhai";
    // One of the repository's example scorers.
    const EXAMPLE: &'static str = r#"{"script": "../scripts/scorers/answer_length.rhai"}"#;

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(Script::build(self)?))
    }
}

fn default_threshold() -> f64 {
    0.5
}

/// The `rhai` scorer.
pub struct Script {
    name: String,
    /// The file it was read from, for reloads (none for a script given as text).
    path: Option<PathBuf>,
    engine: Engine,
    compiled: ArcSwap<Compiled>,
    params: Dynamic,
    threshold: f64,
    trace: bool,
    prices: PriceTable,
}

/// One version of the script, compiled.
struct Compiled {
    ast: AST,
    takes_params: bool,
    fields: Fields,
    hash: u64,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("script", &self.name)
            .field("hash", &self.hash())
            .finish_non_exhaustive()
    }
}

/// Compiles one version of a script, checking it defines `score` once, with one or two
/// parameters.
fn compile(engine: &Engine, name: &str, source: &str) -> Result<Compiled, String> {
    let ast = engine
        .compile(source)
        .map_err(|e| format!("script: {name}: {e}"))?;
    let arities: Vec<usize> = ast
        .iter_functions()
        .filter(|f| f.name == "score")
        .map(|f| f.params.len())
        .collect();
    let takes_params = match arities.as_slice() {
        [1] => false,
        [2] => true,
        [] => return Err(format!("script: {name}: defines no `fn score(span)`")),
        _ => {
            return Err(format!(
                "script: {name}: define `score` once, as `fn score(span)` or `fn score(span, params)`"
            ));
        }
    };
    Ok(Compiled {
        ast,
        takes_params,
        fields: Fields::used_by(source),
        hash: xxh3_64(source.as_bytes()),
    })
}

impl Script {
    /// Reads and compiles the script.
    pub fn build(config: &ScriptConfig) -> Result<Script, String> {
        let path = &config.script;
        let source = std::fs::read_to_string(path)
            .map_err(|e| format!("script: cannot read {}: {e}", path.display()))?;
        let mut script = Script::compile(&path.display().to_string(), &source, config)?;
        script.path = Some(path.clone());
        Ok(script)
    }

    /// Compiles script text; `name` names it in errors and logs.
    pub fn compile(name: &str, source: &str, config: &ScriptConfig) -> Result<Script, String> {
        config.limits.validate()?;
        if !config.threshold.is_finite() {
            return Err("threshold: must be a number".into());
        }
        let engine = sandbox::engine(&config.limits, name);
        let compiled = compile(&engine, name, source)?;
        let params = serde_json::to_string(&config.params)
            .ok()
            .and_then(|json| engine.parse_json(json, true).ok())
            .map_or(Dynamic::UNIT, Dynamic::from);
        Ok(Script {
            name: name.to_owned(),
            path: None,
            compiled: ArcSwap::from_pointee(compiled),
            params,
            threshold: config.threshold,
            trace: config.trace,
            prices: PriceTable::new(true, &Default::default())?,
            engine,
        })
    }

    /// A hash of the text of the version running.
    pub fn hash(&self) -> u64 {
        self.compiled.load().hash
    }

    /// Reads the script's file again and swaps in the new version if the text changed and
    /// compiles; otherwise the running version stays.
    fn reload_file(&self) -> Reload {
        let Some(path) = &self.path else {
            return Reload::Unchanged;
        };
        let source = match std::fs::read_to_string(path) {
            Ok(source) => source,
            Err(e) => return Reload::Failed(format!("cannot read {}: {e}", path.display())),
        };
        if xxh3_64(source.as_bytes()) == self.hash() {
            return Reload::Unchanged;
        }
        match compile(&self.engine, &self.name, &source) {
            Ok(compiled) => {
                self.compiled.store(Arc::new(compiled));
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e),
        }
    }

    fn run(&self, span: &GenAiSpan<'_>, trace: Option<&TraceView<'_>>) -> Outcome {
        let compiled = self.compiled.load();
        let map = span_map(span, trace, compiled.fields, &self.prices);
        let mut scope = Scope::new();
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        let result = if compiled.takes_params {
            self.engine.call_fn_with_options::<Dynamic>(
                options,
                &mut scope,
                &compiled.ast,
                "score",
                (map, self.params.clone()),
            )
        } else {
            self.engine.call_fn_with_options::<Dynamic>(
                options,
                &mut scope,
                &compiled.ast,
                "score",
                (map,),
            )
        };
        match result {
            Ok(value) => self.outcome(value),
            Err(e) => error_outcome(&e),
        }
    }

    /// Reads what `score` returned.
    fn outcome(&self, value: Dynamic) -> Outcome {
        if value.is_unit() {
            return Outcome::not_applicable("the script returned ()");
        }
        if let Some(score) = number(&value) {
            return self.scored(score, None, None, String::new());
        }
        let Some(map) = value.clone().try_cast::<Map>() else {
            return Outcome::Error {
                error_type: "script_result".into(),
                message: format!(
                    "score returned a {}; expected a number, a map or ()",
                    value.type_name()
                ),
            };
        };
        let Some(score) = map.get("score").and_then(number) else {
            return Outcome::Error {
                error_type: "script_result".into(),
                message: "score returned a map without a numeric `score`".into(),
            };
        };
        let passed = map.get("passed").and_then(|v| v.as_bool().ok());
        let label = map
            .get("label")
            .filter(|v| !v.is_unit())
            .map(|v| v.to_string());
        let explanation = map
            .get("explanation")
            .filter(|v| !v.is_unit())
            .map(|v| v.to_string())
            .unwrap_or_default();
        self.scored(score, passed, label, explanation)
    }

    fn scored(
        &self,
        score: f64,
        passed: Option<bool>,
        label: Option<String>,
        explanation: String,
    ) -> Outcome {
        if !score.is_finite() {
            return Outcome::Error {
                error_type: "script_result".into(),
                message: format!("score returned {score}, not a finite number"),
            };
        }
        let passed = passed.unwrap_or(score >= self.threshold);
        let label: Cow<'static, str> = match label {
            Some(l) => l.into(),
            None if passed => "pass".into(),
            None => "fail".into(),
        };
        Outcome::measured(score, passed, label, explanation)
    }
}

/// A Rhai number (integer or float) as `f64`.
fn number(value: &Dynamic) -> Option<f64> {
    value
        .as_float()
        .ok()
        .or_else(|| value.as_int().ok().map(|i| i as f64))
}

/// Characters of a failed call's error kept in its outcome: the message names every call level
/// the error went through, which is long for deep recursion, and may quote what the script threw.
const MAX_ERROR_CHARS: usize = 1024;

/// An error outcome for a failed call: a limit reached, or an error the script raised. An error
/// inside a function (or a closure called by `map`, `filter`, …) comes wrapped once per level, so
/// the innermost one says which it was.
fn error_outcome(error: &EvalAltResult) -> Outcome {
    let limit = matches!(
        error.unwrap_inner(),
        EvalAltResult::ErrorTooManyOperations(..)
            | EvalAltResult::ErrorTooManyVariables(..)
            | EvalAltResult::ErrorStackOverflow(..)
            | EvalAltResult::ErrorDataTooLarge(..)
            | EvalAltResult::ErrorTooManyModules(..)
    );
    Outcome::Error {
        error_type: if limit {
            "script_limit"
        } else {
            "script_error"
        }
        .into(),
        message: sandbox::excerpt(&error.to_string(), MAX_ERROR_CHARS).into_owned(),
    }
}

impl Evaluator for Script {
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome {
        self.run(span, None)
    }

    fn evaluate_in_trace(&self, span: &GenAiSpan<'_>, trace: &TraceView<'_>) -> Outcome {
        self.run(span, Some(trace))
    }

    fn needs_trace(&self) -> bool {
        self.trace
    }

    fn fingerprint(&self) -> u64 {
        self.hash()
    }

    fn reload(&self) -> Reload {
        self.reload_file()
    }

    fn reloads(&self) -> bool {
        self.path.is_some()
    }
}

#[cfg(test)]
mod tests;
