//! Evaluator configuration: the `evaluators:` list of a config file, and building it.
//!
//! Each entry names its `type` and that type's options, plus options every evaluator shares:
//! `name` (defaults to the type; must be unique), `select` (which spans, see
//! [`SelectorConfig`]) and `sample` (the fraction of traces, decided by trace id). Unknown keys are
//! rejected with their path. The shared options are taken out before the type's own options are
//! read, because `serde(flatten)` would silently disable `deny_unknown_fields`.
//!
//! An evaluator's version is its implementation version plus a hash of its options, so changing a
//! threshold changes the version and with it every score id.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::cascade::{self, Cascade, ConditionConfig};
use crate::evaluator::{
    ConfiguredEvaluator, Evaluator, EvaluatorSet, Sampler, Selector, SelectorConfig,
};
use crate::scorers::agent_loop::{AgentLoop, AgentLoopConfig};
use crate::scorers::citations::{Citations, CitationsConfig};
use crate::scorers::cost::{CostConfig, CostScorer};
use crate::scorers::empty_output::{EmptyOutput, EmptyOutputConfig};
use crate::scorers::finish_reason::{FinishReasonCheck, FinishReasonConfig};
use crate::scorers::grounding::{Grounding, GroundingConfig};
use crate::scorers::json_schema::{JsonSchema, JsonSchemaConfig};
use crate::scorers::json_valid::{JsonValid, JsonValidConfig};
use crate::scorers::judge::{LlmJudge, LlmJudgeConfig};
use crate::scorers::latency::{Latency, LatencyConfig};
use crate::scorers::length::{Length, LengthConfig};
use crate::scorers::pii::{Pii, PiiConfig};
use crate::scorers::refusal::{Refusal, RefusalConfig};
use crate::scorers::script::{Script, ScriptConfig};
use crate::scorers::text_match::{Contains, ContainsConfig, RegexConfig, RegexMatch};
use crate::scorers::tool_args::{ToolArgs, ToolArgsConfig};
use crate::span::OperationKind;

/// A built-in evaluator type with its options.
///
/// Read by [`EvaluatorKind::from_options`] rather than a derived internally tagged
/// `Deserialize`: serde buffers internally tagged content, which loses the path of an error
/// inside the options (`kinds[1]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EvaluatorKind {
    /// The model declined to answer.
    Refusal(RefusalConfig),
    /// Personal data in the text.
    Pii(PiiConfig),
    /// Output that should be JSON parses.
    JsonValid(JsonValidConfig),
    /// A JSON answer meets a JSON Schema.
    JsonSchema(JsonSchemaConfig),
    /// Tool calls' arguments meet their tools' parameter schemas.
    ToolArgs(ToolArgsConfig),
    /// Citations in the answer resolve to documents retrieved in the trace.
    Citations(CitationsConfig),
    /// Each claim of the answer is supported by a document retrieved in the trace.
    Grounding(GroundingConfig),
    /// The trace shows no runaway agent: tool loops, too many LLM calls, retries, budgets.
    AgentLoop(AgentLoopConfig),
    /// A user scorer written as a Rhai script.
    Rhai(ScriptConfig),
    /// A judge model's verdict (boxed: its options are much larger than the others').
    LlmJudge(Box<LlmJudgeConfig>),
    /// A regular expression matches (or does not).
    Regex(RegexConfig),
    /// The text holds given values.
    Contains(ContainsConfig),
    /// The text holds none of given values.
    NotContains(ContainsConfig),
    /// The answer's length is within bounds.
    Length(LengthConfig),
    /// The call's duration is within a limit.
    Latency(LatencyConfig),
    /// The model did not stop for a bad reason.
    FinishReason(FinishReasonConfig),
    /// The model answered with something.
    EmptyOutput(EmptyOutputConfig),
    /// The call's cost in USD.
    Cost(CostConfig),
}

/// Every built-in evaluator type, as written in configuration.
pub const TYPES: [&str; 18] = [
    "refusal",
    "pii",
    "json_valid",
    "json_schema",
    "tool_args",
    "citations",
    "grounding",
    "agent_loop",
    "rhai",
    "llm_judge",
    "regex",
    "contains",
    "not_contains",
    "length",
    "latency",
    "finish_reason",
    "empty_output",
    "cost",
];

impl EvaluatorKind {
    /// Reads the options of evaluator type `type_name` (every key but the shared ones); errors
    /// name the path inside the options.
    pub fn from_options(
        type_name: &str,
        options: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, String> {
        fn read<T: serde::de::DeserializeOwned>(
            options: serde_json::Map<String, serde_json::Value>,
        ) -> Result<T, String> {
            serde_path_to_error::deserialize(serde_json::Value::Object(options))
                .map_err(|e| path_error(&e))
        }
        Ok(match type_name {
            "refusal" => EvaluatorKind::Refusal(read(options)?),
            "pii" => EvaluatorKind::Pii(read(options)?),
            "json_valid" => EvaluatorKind::JsonValid(read(options)?),
            "json_schema" => EvaluatorKind::JsonSchema(read(options)?),
            "tool_args" => EvaluatorKind::ToolArgs(read(options)?),
            "citations" => EvaluatorKind::Citations(read(options)?),
            "grounding" => EvaluatorKind::Grounding(read(options)?),
            "agent_loop" => EvaluatorKind::AgentLoop(read(options)?),
            "rhai" => EvaluatorKind::Rhai(read(options)?),
            "llm_judge" => EvaluatorKind::LlmJudge(read(options)?),
            "regex" => EvaluatorKind::Regex(read(options)?),
            "contains" => EvaluatorKind::Contains(read(options)?),
            "not_contains" => EvaluatorKind::NotContains(read(options)?),
            "length" => EvaluatorKind::Length(read(options)?),
            "latency" => EvaluatorKind::Latency(read(options)?),
            "finish_reason" => EvaluatorKind::FinishReason(read(options)?),
            "empty_output" => EvaluatorKind::EmptyOutput(read(options)?),
            "cost" => EvaluatorKind::Cost(read(options)?),
            other => {
                return Err(format!(
                    "type: unknown evaluator type `{other}`, expected one of {}",
                    TYPES.join(", ")
                ));
            }
        })
    }

    /// The type name, as written in configuration.
    pub fn type_name(&self) -> &'static str {
        match self {
            EvaluatorKind::Refusal(_) => "refusal",
            EvaluatorKind::Pii(_) => "pii",
            EvaluatorKind::JsonValid(_) => "json_valid",
            EvaluatorKind::JsonSchema(_) => "json_schema",
            EvaluatorKind::ToolArgs(_) => "tool_args",
            EvaluatorKind::Citations(_) => "citations",
            EvaluatorKind::Grounding(_) => "grounding",
            EvaluatorKind::AgentLoop(_) => "agent_loop",
            EvaluatorKind::Rhai(_) => "rhai",
            EvaluatorKind::LlmJudge(_) => "llm_judge",
            EvaluatorKind::Regex(_) => "regex",
            EvaluatorKind::Contains(_) => "contains",
            EvaluatorKind::NotContains(_) => "not_contains",
            EvaluatorKind::Length(_) => "length",
            EvaluatorKind::Latency(_) => "latency",
            EvaluatorKind::FinishReason(_) => "finish_reason",
            EvaluatorKind::EmptyOutput(_) => "empty_output",
            EvaluatorKind::Cost(_) => "cost",
        }
    }

    /// The operation kinds an evaluator of this type judges when `select.kinds` is not given.
    pub fn default_kinds(&self) -> &'static [OperationKind] {
        match self {
            EvaluatorKind::Cost(_) | EvaluatorKind::Latency(_) => {
                &[OperationKind::Chat, OperationKind::Embeddings]
            }
            EvaluatorKind::ToolArgs(_) => &[OperationKind::Chat, OperationKind::Tool],
            // Judged on the trace's root, whatever its kind (see `scorers::agent_loop`); never
            // on evalstream's own evaluator spans.
            EvaluatorKind::AgentLoop(_) => &[
                OperationKind::Agent,
                OperationKind::Chat,
                OperationKind::Tool,
                OperationKind::Retrieval,
                OperationKind::Embeddings,
                OperationKind::Guardrail,
                OperationKind::Other,
            ],
            _ => &[OperationKind::Chat],
        }
    }

    /// The implementation's version: bump it when a scorer's behaviour changes.
    fn implementation_version(&self) -> u32 {
        1
    }

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(match self {
            EvaluatorKind::Refusal(c) => Box::new(Refusal::build(c)?),
            EvaluatorKind::Pii(c) => Box::new(Pii::build(c)?),
            EvaluatorKind::JsonValid(c) => Box::new(JsonValid::build(c)?),
            EvaluatorKind::JsonSchema(c) => Box::new(JsonSchema::build(c)?),
            EvaluatorKind::ToolArgs(c) => Box::new(ToolArgs::build(c)?),
            EvaluatorKind::Citations(c) => Box::new(Citations::build(c)?),
            EvaluatorKind::Grounding(c) => Box::new(Grounding::build(c)?),
            EvaluatorKind::AgentLoop(c) => Box::new(AgentLoop::build(c)?),
            EvaluatorKind::Rhai(c) => Box::new(Script::build(c)?),
            EvaluatorKind::LlmJudge(c) => Box::new(LlmJudge::build(c)?),
            EvaluatorKind::Regex(c) => Box::new(RegexMatch::build(c)?),
            EvaluatorKind::Contains(c) => Box::new(Contains::build(c, false)?),
            EvaluatorKind::NotContains(c) => Box::new(Contains::build(c, true)?),
            EvaluatorKind::Length(c) => Box::new(Length::build(c)?),
            EvaluatorKind::Latency(c) => Box::new(Latency::build(c)?),
            EvaluatorKind::FinishReason(c) => Box::new(FinishReasonCheck::build(c)?),
            EvaluatorKind::EmptyOutput(_) => Box::new(EmptyOutput),
            EvaluatorKind::Cost(c) => Box::new(CostScorer::build(c)?),
        })
    }
}

/// One entry of the `evaluators:` list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvaluatorSpec {
    /// The evaluator's name (defaults to its type).
    pub name: Option<String>,
    /// Which spans it judges.
    pub select: SelectorConfig,
    /// The fraction of traces it judges, 0 to 1.
    pub sample: f64,
    /// Conditions on earlier evaluators' scores of the span (see [`crate::cascade`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<ConditionConfig>,
    /// The type and its options.
    #[serde(flatten)]
    pub kind: EvaluatorKind,
}

impl EvaluatorSpec {
    /// A spec for a type with default options, applying to its default span kinds.
    pub fn of(kind: EvaluatorKind) -> EvaluatorSpec {
        EvaluatorSpec {
            name: None,
            select: SelectorConfig::default(),
            sample: 1.0,
            when: Vec::new(),
            kind,
        }
    }

    /// The name scores carry: `name`, or the type.
    pub fn effective_name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.kind.type_name())
    }

    /// Compiles the spec: validates options, compiles patterns, derives the version. `when` is
    /// resolved by [`build_set`], which knows the evaluators listed before this one.
    pub fn build(&self) -> Result<ConfiguredEvaluator, String> {
        let name = self.effective_name();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./:".contains(c))
        {
            return Err(format!(
                "name: `{name}` must be non-empty and use only letters, digits and _-./:"
            ));
        }
        if !(0.0..=1.0).contains(&self.sample) {
            return Err(format!(
                "sample: must be between 0 and 1, not {}",
                self.sample
            ));
        }
        let evaluator = self.kind.build()?;
        let options =
            serde_json::to_string(&self.kind).map_err(|e| format!("cannot hash options: {e}"))?;
        let fingerprint = evaluator.fingerprint();
        let version = crate::evaluator::version(
            &self.kind.implementation_version().to_string(),
            &options,
            fingerprint,
        );
        Ok(ConfiguredEvaluator {
            name: name.to_owned(),
            type_name: self.kind.type_name(),
            version,
            options,
            fingerprint,
            selector: Selector::new(self.select.clone(), self.kind.default_kinds()),
            sampler: Sampler::new(self.sample),
            on_traces: evaluator.needs_trace(),
            evaluator,
            when: Cascade::default(),
        })
    }
}

/// An evaluator entry that failed to build.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("evaluators[{index}] ({name}): {message}")]
pub struct BuildError {
    /// Position in the `evaluators:` list.
    pub index: usize,
    /// The evaluator's name.
    pub name: String,
    /// What is wrong.
    pub message: String,
}

/// Builds every spec into an [`EvaluatorSet`], rejecting duplicate names.
pub fn build_set(specs: &[EvaluatorSpec]) -> Result<EvaluatorSet, BuildError> {
    let mut names = HashSet::new();
    let mut built = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let name = spec.effective_name().to_owned();
        let err = |message| BuildError {
            index,
            name: name.clone(),
            message,
        };
        if !names.insert(name.clone()) {
            return Err(err(format!(
                "another evaluator is already named `{name}`; give one of them a distinct `name`"
            )));
        }
        let mut evaluator = spec.build().map_err(err)?;
        evaluator.when = Cascade::resolve(&spec.when, &name, |dependency| {
            let index = built
                .iter()
                .position(|e: &ConfiguredEvaluator| e.name == dependency)?;
            Some((index, built[index].evaluator.as_judge().is_some()))
        })
        .map_err(err)?;
        // A condition on a trace evaluator's score can only be decided once the trace is whole.
        evaluator.on_traces |= evaluator.when.dependencies().any(|i| built[i].on_traces);
        built.push(evaluator);
    }
    Ok(EvaluatorSet::new(built))
}

/// The evaluators run when no configuration is given: `refusal`, `pii`, `json_valid`,
/// `finish_reason`, `empty_output` and `cost` with the built-in prices.
pub fn default_specs() -> Vec<EvaluatorSpec> {
    vec![
        EvaluatorSpec::of(EvaluatorKind::Refusal(RefusalConfig::default())),
        EvaluatorSpec::of(EvaluatorKind::Pii(PiiConfig::default())),
        EvaluatorSpec::of(EvaluatorKind::JsonValid(JsonValidConfig::default())),
        EvaluatorSpec::of(EvaluatorKind::FinishReason(FinishReasonConfig::default())),
        EvaluatorSpec::of(EvaluatorKind::EmptyOutput(EmptyOutputConfig::default())),
        EvaluatorSpec::of(EvaluatorKind::Cost(CostConfig::default())),
    ]
}

/// Formats a `serde_path_to_error` failure as `path: message` (or just the message at the root).
pub fn path_error<E: fmt::Display>(err: &serde_path_to_error::Error<E>) -> String {
    let path = err.path().to_string();
    if path == "." {
        err.inner().to_string()
    } else {
        format!("{path}: {}", err.inner())
    }
}

impl<'de> Deserialize<'de> for EvaluatorSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        fn take<T: serde::de::DeserializeOwned, E: de::Error>(
            map: &mut serde_json::Map<String, serde_json::Value>,
            key: &str,
        ) -> Result<Option<T>, E> {
            let Some(value) = map.remove(key) else {
                return Ok(None);
            };
            serde_path_to_error::deserialize(value)
                .map(Some)
                .map_err(|e| E::custom(format!("{key}{}", nested(&e))))
        }
        fn nested<E: fmt::Display>(e: &serde_path_to_error::Error<E>) -> String {
            let path = e.path().to_string();
            if path == "." {
                format!(": {}", e.inner())
            } else {
                format!(".{path}: {}", e.inner())
            }
        }
        let type_name = match map.remove("type") {
            Some(serde_json::Value::String(t)) => t,
            Some(other) => {
                return Err(de::Error::custom(format!(
                    "type: expected an evaluator type name, found {other}"
                )));
            }
            None => {
                return Err(de::Error::custom(
                    "missing field `type` (the evaluator type, e.g. `refusal`)",
                ));
            }
        };
        let name = take::<String, D::Error>(&mut map, "name")?;
        let select = take::<SelectorConfig, D::Error>(&mut map, "select")?.unwrap_or_default();
        let sample = take::<f64, D::Error>(&mut map, "sample")?.unwrap_or(1.0);
        let when = match map.remove("when") {
            Some(value) => cascade::parse_when(value).map_err(de::Error::custom)?,
            None => Vec::new(),
        };
        let kind = EvaluatorKind::from_options(&type_name, map).map_err(de::Error::custom)?;
        Ok(EvaluatorSpec {
            name,
            select,
            sample,
            when,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Vec<EvaluatorSpec>, String> {
        let mut d = serde_json::Deserializer::from_str(json);
        serde_path_to_error::deserialize(&mut d).map_err(|e| path_error(&e))
    }

    #[test]
    fn reads_shared_and_type_options() {
        let specs = parse(
            r#"[{"type":"pii","name":"pii_input","on":"input","sample":0.5,"select":{"kinds":["chat"],"services":["shop"]}},
                {"type":"refusal"}]"#,
        )
        .unwrap();
        assert_eq!(specs[0].effective_name(), "pii_input");
        assert_eq!(specs[0].sample, 0.5);
        assert_eq!(specs[0].select.services, ["shop"]);
        assert!(
            matches!(&specs[0].kind, EvaluatorKind::Pii(c) if c.on == crate::scorers::TextSource::Input)
        );
        assert_eq!(specs[1].effective_name(), "refusal");
        assert!(build_set(&specs).is_ok());
    }

    #[test]
    fn unknown_keys_types_and_values_name_their_path() {
        let err = parse(
            r#"[{"type":"refusal"},{"type":"pii","kinds":["email"],"on":"output","colour":1}]"#,
        )
        .unwrap_err();
        assert!(
            err.starts_with("[1]") && err.contains("unknown field `colour`"),
            "{err}"
        );
        let err = parse(r#"[{"type":"refusall"}]"#).unwrap_err();
        assert!(err.contains("unknown evaluator type `refusall`"), "{err}");
        let err = parse(r#"[{"type":"pii","kinds":["email","passport"]}]"#).unwrap_err();
        assert!(
            err.contains("kinds[1]") && err.contains("passport"),
            "{err}"
        );
        let err = parse(r#"[{"type":"pii","select":{"kinds":["chatt"]}}]"#).unwrap_err();
        assert!(
            err.contains("select.kinds[0]") && err.contains("chatt"),
            "{err}"
        );
        let err = parse(r#"[{"type":"pii","select":{"kind":["chat"]}}]"#).unwrap_err();
        assert!(err.contains("unknown field `kind`"), "{err}");
        let err = parse(r#"[{"name":"x"}]"#).unwrap_err();
        assert!(err.contains("missing field `type`"), "{err}");
    }

    #[test]
    fn cascades_refer_to_earlier_evaluators_and_follow_them_onto_traces() {
        let gated = r#"{"type":"length","name":"long","max":500,"when":{"evaluator":"grounding","below":0.8}}"#;
        let err = build_set(&parse(&format!(r#"[{gated},{{"type":"grounding"}}]"#)).unwrap())
            .unwrap_err();
        assert_eq!(err.index, 0);
        assert!(
            err.to_string().starts_with(
                "evaluators[0] (long): when[0]: no evaluator named `grounding` is listed before"
            ),
            "{err}"
        );
        let set = build_set(
            &parse(&format!(
                r#"[{{"type":"grounding"}},{gated},{{"type":"refusal"}}]"#
            ))
            .unwrap(),
        )
        .unwrap();
        let [grounding, long, refusal] = set.evaluators() else {
            panic!("three evaluators");
        };
        assert!(grounding.needs_trace() && long.needs_trace() && !refusal.needs_trace());
        assert_eq!(long.when.dependencies().collect::<Vec<_>>(), [0]);
        let err = parse(r#"[{"type":"refusal","when":[{"evaluator":"x","belw":1}]}]"#).unwrap_err();
        assert!(err.contains("when[0]") && err.contains("belw"), "{err}");
    }

    #[test]
    fn build_rejects_duplicates_bad_samples_and_bad_options() {
        let dup = parse(r#"[{"type":"pii"},{"type":"pii"}]"#).unwrap();
        let err = build_set(&dup).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.to_string().contains("already named `pii`"));
        let bad = parse(r#"[{"type":"refusal","sample":1.5}]"#).unwrap();
        assert!(build_set(&bad).unwrap_err().message.contains("sample"));
        let regex = parse(r#"[{"type":"regex","pattern":"("}]"#).unwrap();
        assert!(
            build_set(&regex)
                .unwrap_err()
                .to_string()
                .contains("evaluators[0] (regex): pattern")
        );
    }

    #[test]
    fn versions_change_with_options_only() {
        let a = parse(r#"[{"type":"latency","max_seconds":5}]"#).unwrap();
        let b =
            parse(r#"[{"type":"latency","max_seconds":5,"name":"other","sample":0.1}]"#).unwrap();
        let c = parse(r#"[{"type":"latency","max_seconds":6}]"#).unwrap();
        let v = |s: &[EvaluatorSpec]| build_set(s).unwrap().evaluators()[0].version.clone();
        assert_eq!(v(&a), v(&b));
        assert_ne!(v(&a), v(&c));
        assert!(v(&a).starts_with("1."));
    }
}
