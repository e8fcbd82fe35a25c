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
use crate::evaluator::{ConfiguredEvaluator, EvaluatorSet, Sampler, Selector, SelectorConfig};
use crate::scorers::BUILTINS;
use crate::scorers::cost::CostConfig;
use crate::scorers::empty_output::EmptyOutputConfig;
use crate::scorers::finish_reason::FinishReasonConfig;
use crate::scorers::json_valid::JsonValidConfig;
use crate::scorers::pii::PiiConfig;
use crate::scorers::refusal::RefusalConfig;
use crate::scorers::registry::Options;
use crate::span::OperationKind;

/// A built-in evaluator type with its options; generated from the list of built-in scorers (see
/// [`crate::scorers`]).
pub use crate::scorers::EvaluatorKind;

impl EvaluatorKind {
    /// Reads the options of evaluator type `type_name` (every key but the shared ones); errors
    /// name the path inside the options, and an unknown type lists every type.
    pub fn from_options(type_name: &str, options: Options) -> Result<Self, String> {
        let Some(builtin) = BUILTINS.iter().find(|b| b.type_name == type_name) else {
            let types: Vec<&str> = BUILTINS.iter().map(|b| b.type_name).collect();
            return Err(format!(
                "type: unknown evaluator type `{type_name}`, expected one of {}",
                types.join(", ")
            ));
        };
        (builtin.parse)(options)
    }

    /// The type name, as written in configuration.
    pub fn type_name(&self) -> &'static str {
        self.registration().type_name
    }

    /// The operation kinds an evaluator of this type judges when `select.kinds` is not given.
    pub fn default_kinds(&self) -> &'static [OperationKind] {
        self.registration().default_kinds
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
    pub fn of(kind: impl Into<EvaluatorKind>) -> EvaluatorSpec {
        EvaluatorSpec {
            name: None,
            select: SelectorConfig::default(),
            sample: 1.0,
            when: Vec::new(),
            kind: kind.into(),
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
        let evaluator = self.kind.build_scorer()?;
        let options =
            serde_json::to_string(&self.kind).map_err(|e| format!("cannot hash options: {e}"))?;
        let fingerprint = evaluator.fingerprint();
        let version = crate::evaluator::version(
            &self.kind.registration().version.to_string(),
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
        EvaluatorSpec::of(RefusalConfig::default()),
        EvaluatorSpec::of(PiiConfig::default()),
        EvaluatorSpec::of(JsonValidConfig::default()),
        EvaluatorSpec::of(FinishReasonConfig::default()),
        EvaluatorSpec::of(EmptyOutputConfig::default()),
        EvaluatorSpec::of(CostConfig::default()),
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

    /// Versions hash the options as serialised (`{"type":…,<fields in order>}`): a change in
    /// how they serialise changes every score id, so the default set's versions are pinned.
    #[test]
    fn the_default_evaluators_keep_their_versions() {
        let set = build_set(&default_specs()).unwrap();
        let versions: Vec<(&str, &str)> = set
            .evaluators()
            .iter()
            .map(|e| (e.name.as_str(), e.version.as_str()))
            .collect();
        assert_eq!(
            versions,
            [
                ("refusal", "1.46cc2b3d"),
                ("pii", "1.9c6735c8"),
                ("json_valid", "1.8863e55f"),
                ("finish_reason", "1.47819b2c"),
                ("empty_output", "1.9e7ee849"),
                ("cost", "1.3576cdca"),
            ]
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
