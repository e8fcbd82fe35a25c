//! How a built-in scorer registers itself: its configuration struct implements [`Builtin`] (in
//! the scorer's own file), and one line of the `builtins!` list in `scorers/mod.rs` names it.
//!
//! The list generates the closed [`EvaluatorKind`] enum (one variant per line) and [`BUILTINS`](super::BUILTINS)
//! (one [`Registration`] per line, in list order). Everything else — reading options by type
//! name, the type name of a parsed entry, its default span kinds, its version, building it, the
//! options hashed into its version — is ordinary code over those two, so no other list of types
//! exists to keep in step.
//!
//! A closed enum rather than trait objects: built-ins are known at compile time, a call site that
//! needs one particular type's options matches its variant (`EvaluatorKind::Cost(c)`), and specs
//! keep deriving `Clone`, `PartialEq` and `Debug`. Rhai scripts are the open extension point.

use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

use super::EvaluatorKind;
use crate::evaluator::Evaluator;
use crate::span::OperationKind;

/// A built-in scorer's registration, implemented by its configuration struct.
///
/// The struct's `Deserialize` is how options are read (use `#[serde(deny_unknown_fields)]`, and
/// defaults with `#[serde(default)]`; errors name the path inside the options). Its `Serialize`
/// is hashed into the evaluator's version, so a changed option changes every score id.
///
/// Whether the scorer needs the whole trace is [`Evaluator::needs_trace`], on the scorer it
/// builds: it may depend on the options (`rhai`'s `trace: true`).
pub trait Builtin: DeserializeOwned + Serialize {
    /// The `type` written in configuration (`snake_case`, unique).
    const TYPE: &'static str;

    /// The operation kinds judged when the entry's `select.kinds` is not given.
    const DEFAULT_KINDS: &'static [OperationKind] = &[OperationKind::Chat];

    /// The implementation's version: bump it when the scorer's behaviour changes (it changes the
    /// evaluator's version, so every score id).
    const VERSION: u32 = 1;

    /// The smallest options that build, as a JSON object. The registry's test builds every type
    /// from it; a relative path in it is read from the `evaluators` crate's directory.
    const EXAMPLE: &'static str = "{}";

    /// Validates the options and compiles the scorer, once. Errors start with the option's path
    /// (`pattern: invalid regular expression …`).
    fn build(&self) -> Result<Box<dyn Evaluator>, String>;
}

/// Options too large to sit in the enum inline (`llm_judge`'s) are boxed; the box registers as
/// what it holds.
impl<C: Builtin> Builtin for Box<C> {
    const TYPE: &'static str = C::TYPE;
    const DEFAULT_KINDS: &'static [OperationKind] = C::DEFAULT_KINDS;
    const VERSION: u32 = C::VERSION;
    const EXAMPLE: &'static str = C::EXAMPLE;

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        C::build(self)
    }
}

/// The options of one entry, every shared key (`name`, `select`, `sample`, `when`) and `type`
/// taken out.
pub type Options = serde_json::Map<String, serde_json::Value>;

/// What [`BUILTINS`](super::BUILTINS) knows of one type without any options.
#[derive(Debug, Clone, Copy)]
pub struct Registration {
    /// [`Builtin::TYPE`].
    pub type_name: &'static str,
    /// [`Builtin::DEFAULT_KINDS`].
    pub default_kinds: &'static [OperationKind],
    /// [`Builtin::VERSION`].
    pub version: u32,
    /// [`Builtin::EXAMPLE`].
    pub example: &'static str,
    /// Reads the type's options; errors name the path inside them (`kinds[1]: …`).
    pub parse: fn(Options) -> Result<EvaluatorKind, String>,
}

impl Registration {
    /// The registration of the type whose options are `C` (a variant of [`EvaluatorKind`]).
    pub const fn of<C: Builtin + Into<EvaluatorKind>>() -> Registration {
        Registration {
            type_name: C::TYPE,
            default_kinds: C::DEFAULT_KINDS,
            version: C::VERSION,
            example: C::EXAMPLE,
            parse: parse::<C>,
        }
    }
}

/// Reads options as `C`, with the path of an error inside them. Not a derived internally tagged
/// `Deserialize` on the enum: serde buffers internally tagged content, which loses that path.
fn parse<C: Builtin + Into<EvaluatorKind>>(options: Options) -> Result<EvaluatorKind, String> {
    serde_path_to_error::deserialize::<_, C>(serde_json::Value::Object(options))
        .map(Into::into)
        .map_err(|e| crate::spec::path_error(&e))
}

/// Serialises options as `{"type": …, <the options' fields>}`: what serde's internally tagged
/// enum writes, so versions (a hash of this) did not change when the enum stopped being derived.
pub(super) fn serialize_tagged<C: Builtin, S: Serializer>(
    options: &C,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Tagged<'a, C> {
        #[serde(rename = "type")]
        type_name: &'static str,
        #[serde(flatten)]
        options: &'a C,
    }
    Tagged {
        type_name: C::TYPE,
        options,
    }
    .serialize(serializer)
}

/// Generates [`EvaluatorKind`] and [`BUILTINS`] from the list of built-in scorers, one
/// `Variant(ConfigType),` per line. See `scorers/mod.rs` for the list.
macro_rules! builtins {
    ($($variant:ident($config:ty),)+) => {
        /// A built-in evaluator type with its options: one variant per built-in scorer, named by
        /// its configuration struct's [`Builtin::TYPE`](registry::Builtin::TYPE).
        #[derive(Debug, Clone, PartialEq)]
        pub enum EvaluatorKind {
            $(
                #[doc = concat!("`", stringify!($variant), "`: options of `", stringify!($config), "`.")]
                $variant($config),
            )+
        }

        /// Every built-in evaluator type, in the order configuration errors list them.
        pub const BUILTINS: &[registry::Registration] =
            &[$(registry::Registration::of::<$config>(),)+];

        $(
            impl From<$config> for EvaluatorKind {
                fn from(options: $config) -> EvaluatorKind {
                    EvaluatorKind::$variant(options)
                }
            }
        )+

        impl EvaluatorKind {
            /// What the registry knows of this type.
            pub fn registration(&self) -> &'static registry::Registration {
                match self {
                    $(EvaluatorKind::$variant(_) => {
                        const { &registry::Registration::of::<$config>() }
                    })+
                }
            }

            /// Validates the options and compiles the scorer.
            pub(crate) fn build_scorer(
                &self,
            ) -> Result<Box<dyn crate::evaluator::Evaluator>, String> {
                match self {
                    $(EvaluatorKind::$variant(options) => registry::Builtin::build(options),)+
                }
            }
        }

        /// `{"type": …, <options>}`, as serde's internally tagged enums write it.
        impl serde::Serialize for EvaluatorKind {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(EvaluatorKind::$variant(options) => {
                        registry::serialize_tagged(options, serializer)
                    })+
                }
            }
        }
    };
}
pub(crate) use builtins;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::scorers::BUILTINS;
    use crate::spec::{self, EvaluatorSpec};

    /// Every type in the list — a new one too — reads its example options and builds, and its
    /// parsed options know their registration.
    #[test]
    fn every_builtin_parses_its_example_and_builds() {
        for builtin in BUILTINS {
            let name = builtin.type_name;
            let mut entry: Options = serde_json::from_str(builtin.example)
                .unwrap_or_else(|e| panic!("{name}: EXAMPLE is not a JSON object: {e}"));
            entry.insert("type".into(), name.into());
            let parsed: EvaluatorSpec = serde_json::from_value(serde_json::Value::Object(entry))
                .unwrap_or_else(|e| panic!("{name}: EXAMPLE does not parse: {e}"));
            assert_eq!(parsed.kind.type_name(), name);
            assert_eq!(parsed.kind.default_kinds(), builtin.default_kinds);
            assert!(
                !builtin.default_kinds.is_empty(),
                "{name}: no default kinds"
            );
            let options = serde_json::to_string(&parsed.kind).expect("options serialise");
            assert!(
                options.starts_with(&format!(r#"{{"type":"{name}""#)),
                "{name}: options serialise as {options}"
            );
            let built = spec::build_set(std::slice::from_ref(&parsed))
                .unwrap_or_else(|e| panic!("{name}: EXAMPLE does not build: {e}"));
            let evaluator = &built.evaluators()[0];
            assert_eq!((evaluator.name.as_str(), evaluator.type_name), (name, name));
            assert!(
                evaluator
                    .version
                    .starts_with(&format!("{}.", builtin.version)),
                "{name}: version {}",
                evaluator.version
            );
        }
    }

    #[test]
    fn type_names_are_unique_snake_case_and_all_listed_when_one_is_unknown() {
        let mut seen = HashSet::new();
        for builtin in BUILTINS {
            let name = builtin.type_name;
            assert!(seen.insert(name), "`{name}` is registered twice");
            assert!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "`{name}` is not snake_case"
            );
        }
        let err = EvaluatorKind::from_options("no_such_type", Options::new()).unwrap_err();
        for builtin in BUILTINS {
            assert!(err.contains(builtin.type_name), "{err}");
        }
    }
}
