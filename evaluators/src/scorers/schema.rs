//! JSON Schema compilation and validation shared by `json_schema` and `tool_args`.
//!
//! Schemas are compiled once: configured ones when the evaluator is built, and schemas found in
//! spans (a request's structured-output schema, a tool's parameter schema) on first sight, kept
//! in a bounded cache keyed by a hash of their text, since the same few schemas recur on every
//! call of a route. Compilation never fetches a remote `$ref` (the `jsonschema` crate is built
//! without its resolvers).
//!
//! Violations are reported by instance path and keyword, with what the schema requires (a type, a
//! limit, a pattern) but never the instance's value or the names of properties it should not
//! have: an answer's values, and its keys, may be personal data. Path segments that are not
//! plain identifiers are masked for the same reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{Draft, ValidationError, Validator};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

/// Which draft a schema without `$schema` is read as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "Value", into = "String")]
pub enum DraftChoice {
    /// Draft 4.
    Draft4,
    /// Draft 6.
    Draft6,
    /// Draft 7.
    Draft7,
    /// Draft 2019-09.
    Draft201909,
    /// Draft 2020-12, the default.
    #[default]
    Draft202012,
}

impl TryFrom<Value> for DraftChoice {
    type Error = String;

    fn try_from(value: Value) -> Result<Self, String> {
        let text = match &value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return Err(format!("expected a draft name, not {other}")),
        };
        Ok(match text.as_str() {
            "4" => DraftChoice::Draft4,
            "6" => DraftChoice::Draft6,
            "7" => DraftChoice::Draft7,
            "2019-09" => DraftChoice::Draft201909,
            "2020-12" => DraftChoice::Draft202012,
            other => {
                return Err(format!(
                    "unknown draft `{other}`, expected one of 4, 6, 7, 2019-09, 2020-12"
                ));
            }
        })
    }
}

impl From<DraftChoice> for String {
    fn from(draft: DraftChoice) -> String {
        match draft {
            DraftChoice::Draft4 => "4",
            DraftChoice::Draft6 => "6",
            DraftChoice::Draft7 => "7",
            DraftChoice::Draft201909 => "2019-09",
            DraftChoice::Draft202012 => "2020-12",
        }
        .into()
    }
}

impl DraftChoice {
    fn draft(self) -> Draft {
        match self {
            DraftChoice::Draft4 => Draft::Draft4,
            DraftChoice::Draft6 => Draft::Draft6,
            DraftChoice::Draft7 => Draft::Draft7,
            DraftChoice::Draft201909 => Draft::Draft201909,
            DraftChoice::Draft202012 => Draft::Draft202012,
        }
    }
}

/// Why a schema cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The schema is not a valid JSON Schema (where and which keyword).
    #[error("invalid JSON Schema: {0}")]
    Invalid(String),
    /// The schema's text is over [`MAX_SCHEMA_BYTES`]; it was not compiled.
    #[error("the schema is {bytes} bytes, over the limit of {MAX_SCHEMA_BYTES} bytes")]
    TooLarge {
        /// The schema's size as text.
        bytes: usize,
    },
}

impl SchemaError {
    /// The `error.type` of an evaluation that failed on this schema.
    pub fn error_type(&self) -> &'static str {
        match self {
            SchemaError::Invalid(_) => "invalid_schema",
            SchemaError::TooLarge { .. } => "schema_too_large",
        }
    }
}

/// Compiles a schema. A `$schema` in the schema names its draft; otherwise `draft` does.
pub fn compile(schema: &Value, draft: DraftChoice) -> Result<Validator, SchemaError> {
    let declared = schema.get("$schema").and_then(Value::as_str).is_some();
    let options = jsonschema::options();
    let options = if declared {
        options
    } else {
        options.with_draft(draft.draft())
    };
    options
        .build(schema)
        .map_err(|e| SchemaError::Invalid(violation(&e)))
}

/// The largest schema, as text, compiled from a span. A compiled schema holds up to
/// [`RESIDENT_PER_SCHEMA_BYTE`] times its text in memory, so one of 1 MiB takes up to 16 MiB;
/// real structured-output and tool schemas are a few kilobytes. Configured schemas are not
/// limited.
pub const MAX_SCHEMA_BYTES: usize = 1 << 20;

/// Whether a schema of `bytes` bytes of text may be compiled.
pub fn check_size(bytes: usize) -> Result<(), SchemaError> {
    if bytes > MAX_SCHEMA_BYTES {
        return Err(SchemaError::TooLarge { bytes });
    }
    Ok(())
}

/// Bytes resident per byte of schema text once compiled. Measured with `jsonschema` 0.61 on
/// 1.05 MB schemas (RSS before and after compiling four of each, in a release build): 3.7× for
/// nested objects with `required` and typed properties, 9.4× for a mix of patterns, enums and
/// objects, 10.6× for string properties with `pattern` and `maxLength`, 15.7× for `enum`s. The
/// worst is used, so the budget holds whatever the schemas look like.
const RESIDENT_PER_SCHEMA_BYTE: usize = 16;

/// What the compiled schemas of one cache may hold, estimated from their text: four schemas of
/// 1 MiB, or all 1,024 of 4 KiB. Bounding the count alone let 1,024 distinct 1 MB schemas keep
/// 10 to 16 GB.
const CACHE_BUDGET_BYTES: usize = 64 << 20;

/// Distinct schemas kept before the cache starts over, however small.
const CACHE_CAPACITY: usize = 1024;

/// A compiled schema, or why there is none.
pub type Compiled = Arc<Result<Validator, SchemaError>>;

/// Schemas compiled on first sight, by hash of their text. Bounded by count and by an estimate
/// of their memory (text size × [`RESIDENT_PER_SCHEMA_BYTE`]): when the next one would pass
/// either bound the cache starts over, which only costs recompiling the schemas still in use.
#[derive(Debug, Default)]
pub struct SchemaCache {
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    compiled: HashMap<u64, Compiled>,
    /// The estimated bytes the compiled schemas hold.
    weight: usize,
}

impl SchemaCache {
    /// The compiled schema for `schema` (JSON text is hashed as given: the same text from the
    /// same instrumentation hits the cache). A schema whose text is over [`MAX_SCHEMA_BYTES`] is
    /// refused, not compiled.
    pub fn get(&self, key_text: &str, schema: &Value, draft: DraftChoice) -> Compiled {
        if let Err(e) = check_size(key_text.len()) {
            return Arc::new(Err(e));
        }
        let key = xxh3_64(key_text.as_bytes());
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = entries.compiled.get(&key) {
            return found.clone();
        }
        let weight = key_text.len().saturating_mul(RESIDENT_PER_SCHEMA_BYTE);
        if entries.compiled.len() >= CACHE_CAPACITY
            || entries.weight.saturating_add(weight) > CACHE_BUDGET_BYTES
        {
            entries.compiled.clear();
            entries.weight = 0;
        }
        let result = Arc::new(compile(schema, draft));
        entries.compiled.insert(key, result.clone());
        entries.weight += weight;
        result
    }

    /// How many schemas are kept, and their estimated bytes.
    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        (entries.compiled.len(), entries.weight)
    }
}

/// The instance's violations of the schema, at most `max`, each as `path: keyword: what the
/// schema requires`, plus the total count.
pub fn violations(validator: &Validator, instance: &Value, max: usize) -> (Vec<String>, usize) {
    let mut shown = Vec::new();
    let mut total = 0;
    for error in validator.iter_errors(instance) {
        total += 1;
        if shown.len() < max {
            shown.push(violation(&error));
        }
    }
    (shown, total)
}

/// One violation as `path: keyword: requirement`, from the schema's side only.
fn violation(error: &ValidationError<'_>) -> String {
    let mut path = String::new();
    for segment in error.instance_path().segments() {
        path.push('/');
        match segment {
            jsonschema::paths::LocationSegment::Index(i) => path.push_str(&i.to_string()),
            jsonschema::paths::LocationSegment::Property(name) if is_identifier(&name) => {
                path.push_str(&name);
            }
            jsonschema::paths::LocationSegment::Property(_) => path.push('*'),
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    format!("{path}: {}", requirement(error.kind()))
}

/// Whether a property name is safe to show in a path: a short identifier, as schema-declared
/// properties are (`user_id`, `shippingAddress`), rather than a value used as a key (an e-mail
/// address, a number).
fn is_identifier(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$'))
}

/// What the failing keyword requires: its name and the schema's side of it (a type, a limit, a
/// count, a pattern), never the instance's value or its unexpected property names.
fn requirement(kind: &ValidationErrorKind) -> String {
    use ValidationErrorKind as K;
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    match kind {
        K::Type {
            kind: TypeKind::Single(t),
        } => format!("type: expected {t}"),
        K::Type {
            kind: TypeKind::Multiple(types),
        } => {
            let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
            format!("type: expected one of {}", types.join(", "))
        }
        K::Enum { options } => format!(
            "enum: not one of the {}",
            plural(
                options.as_array().map_or(1, Vec::len),
                "allowed value",
                "allowed values"
            )
        ),
        K::Constant { .. } => "const: not the required value".into(),
        K::Required { property } => {
            let name = property.as_str().unwrap_or("");
            format!("required: property `{}` missing", super::excerpt(name, 64))
        }
        K::Minimum { limit } => format!("minimum: less than {limit}"),
        K::Maximum { limit } => format!("maximum: greater than {limit}"),
        K::ExclusiveMinimum { limit } => format!("exclusiveMinimum: not greater than {limit}"),
        K::ExclusiveMaximum { limit } => format!("exclusiveMaximum: not less than {limit}"),
        K::MultipleOf { multiple_of } => format!("multipleOf: not a multiple of {multiple_of}"),
        K::MinLength { limit } => format!("minLength: shorter than {limit} characters"),
        K::MaxLength { limit } => format!("maxLength: longer than {limit} characters"),
        K::MinItems { limit } => format!("minItems: fewer than {limit} items"),
        K::MaxItems { limit } => format!("maxItems: more than {limit} items"),
        K::MinProperties { limit } => format!("minProperties: fewer than {limit} properties"),
        K::MaxProperties { limit } => format!("maxProperties: more than {limit} properties"),
        K::Pattern { pattern } => {
            format!("pattern: does not match `{}`", super::excerpt(pattern, 80))
        }
        K::Format { format } => format!("format: not a valid {format}"),
        K::AdditionalProperties { unexpected } | K::UnevaluatedProperties { unexpected } => {
            format!(
                "{}: {} not allowed",
                kind.keyword(),
                plural(unexpected.len(), "property", "properties")
            )
        }
        K::AdditionalItems { limit } => format!("additionalItems: more than {limit} items"),
        K::UnevaluatedItems { unexpected } => format!(
            "unevaluatedItems: {} not allowed",
            plural(unexpected.len(), "item", "items")
        ),
        K::UniqueItems => "uniqueItems: items repeat".into(),
        K::Contains => "contains: no item matches".into(),
        K::AnyOf { .. } | K::OneOfNotValid { .. } => {
            format!("{}: valid under none of the schemas", kind.keyword())
        }
        K::OneOfMultipleValid { .. } => "oneOf: valid under more than one schema".into(),
        K::Not { .. } => "not: valid under the schema it must not match".into(),
        K::FalseSchema => "false schema: nothing is allowed here".into(),
        K::PropertyNames { error } => format!(
            "propertyNames: a property name fails `{}`",
            error.kind().keyword()
        ),
        // Content encodings, references, regex engine failures and custom keywords: their
        // messages may carry the value, so only the keyword is named.
        other => format!("{}: not satisfied", other.keyword()),
    }
}

/// `n error(s): a; b; c (and k more)`.
pub fn describe(shown: &[String], total: usize) -> String {
    let mut text = format!(
        "{total} schema violation{}: {}",
        if total == 1 { "" } else { "s" },
        shown.join("; ")
    );
    if total > shown.len() {
        text.push_str(&format!(" (and {} more)", total - shown.len()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drafts_are_read_from_strings_or_numbers_and_unknown_ones_rejected() {
        assert_eq!(DraftChoice::try_from(json!(7)), Ok(DraftChoice::Draft7));
        assert_eq!(
            DraftChoice::try_from(json!("2020-12")),
            Ok(DraftChoice::Draft202012)
        );
        assert!(
            DraftChoice::try_from(json!("8"))
                .unwrap_err()
                .contains("unknown draft")
        );
    }

    #[test]
    fn the_draft_changes_what_validates() {
        // `prefixItems` exists in 2020-12 only; draft 7 ignores it.
        let schema = json!({"prefixItems": [{"type": "integer"}]});
        let instance = json!(["not an integer"]);
        let strict = compile(&schema, DraftChoice::Draft202012).unwrap();
        let old = compile(&schema, DraftChoice::Draft7).unwrap();
        assert!(!strict.is_valid(&instance));
        assert!(old.is_valid(&instance));
    }

    #[test]
    fn violations_name_paths_and_mask_values() {
        let schema = json!({
            "type": "object",
            "properties": {"email": {"type": "integer"}, "n": {"maximum": 1}},
            "required": ["id"]
        });
        let v = compile(&schema, DraftChoice::default()).unwrap();
        let (shown, total) = violations(&v, &json!({"email": "jane@example.com", "n": 5}), 2);
        assert_eq!(total, 3);
        assert_eq!(shown.len(), 2);
        let all = describe(&shown, total);
        assert!(all.starts_with("3 schema violations"), "{all}");
        assert!(all.contains("(and 1 more)"), "{all}");
        assert!(!all.contains("jane@example.com"), "{all}");
        for expected in [
            "/: required: property `id` missing",
            "/email: type: expected integer",
        ] {
            assert!(
                shown.iter().any(|s| s == expected),
                "{expected} not in {shown:?}"
            );
        }
    }

    #[test]
    fn schema_errors_name_the_path_not_the_value() {
        let schema = json!({
            "type": "object",
            "properties": {
                "ssn": {"type": "integer"},
                "email": {"enum": ["a@b.c"]},
                "note": {"maxLength": 3, "pattern": "^x"},
                "tags": {"type": "array", "items": {"const": "ok"}},
                "extra": {"type": "object", "properties": {"a": {}}, "additionalProperties": false},
                "keyed": {"type": "object", "additionalProperties": {"type": "integer"}},
                "names": {"type": "object", "propertyNames": {"maxLength": 2}}
            },
            "required": ["id"]
        });
        let instance = json!({
            "ssn": "123-45-6789",
            "email": "jane.doe@example.com",
            "note": "call 415-555-0132",
            "tags": ["ok", "secret-token-99"],
            "extra": {"jane.doe@example.com": 1},
            "keyed": {"123-45-6789": "x", "plain_key": "y"},
            "names": {"jane.roe@example.org": 1}
        });
        let v = compile(&schema, DraftChoice::default()).unwrap();
        let (shown, total) = violations(&v, &instance, 20);
        let all = describe(&shown, total);
        for secret in [
            "123-45-6789",
            "jane.doe",
            "jane.roe",
            "example",
            "415-555",
            "secret-token",
        ] {
            assert!(!all.contains(secret), "{secret} in {all}");
        }
        for expected in [
            "/ssn: type: expected integer",
            "/email: enum: not one of the 1 allowed value",
            "/note: maxLength: longer than 3 characters",
            "/note: pattern: does not match `^x`",
            "/tags/1: const: not the required value",
            "/extra: additionalProperties: 1 property not allowed",
            "/keyed/*: type: expected integer",
            "/keyed/plain_key: type: expected integer",
            "/names: propertyNames: a property name fails `maxLength`",
            "/: required: property `id` missing",
        ] {
            assert!(
                shown.iter().any(|s| s == expected),
                "{expected} not in {shown:?}"
            );
        }
    }

    #[test]
    fn the_schema_cache_is_bounded_by_bytes() {
        // Schemas of ~600 KB weigh ~9.6 MB each by the estimate: six fill the 64 MiB budget, far
        // below the 1,024-entry count bound that let big schemas take gigabytes.
        let cache = SchemaCache::default();
        let filler = "x".repeat(600_000);
        for i in 0..40 {
            let schema = json!({"type": "object", "description": format!("{i}{filler}")});
            let text = schema.to_string();
            assert!(cache.get(&text, &schema, DraftChoice::default()).is_ok());
            let (count, weight) = cache.usage();
            assert!(weight <= CACHE_BUDGET_BYTES, "{weight}");
            assert!(count <= CACHE_BUDGET_BYTES / (600_000 * RESIDENT_PER_SCHEMA_BYTE));
        }
        // Small schemas are still bounded by count.
        let small = SchemaCache::default();
        for i in 0..(CACHE_CAPACITY + 10) {
            let schema = json!({"maximum": i});
            let _ = small.get(&schema.to_string(), &schema, DraftChoice::default());
        }
        assert!(small.usage().0 <= CACHE_CAPACITY);
    }

    #[test]
    fn a_schema_over_the_size_limit_is_refused_not_compiled() {
        let cache = SchemaCache::default();
        let schema = json!({"description": "x".repeat(MAX_SCHEMA_BYTES)});
        let text = schema.to_string();
        let result = cache.get(&text, &schema, DraftChoice::default());
        let err = result.as_ref().as_ref().unwrap_err();
        assert_eq!(err, &SchemaError::TooLarge { bytes: text.len() });
        assert_eq!(err.error_type(), "schema_too_large");
        assert!(
            err.to_string().contains(&format!("{} bytes", text.len())),
            "{err}"
        );
        assert_eq!(cache.usage(), (0, 0));
    }

    #[test]
    fn the_cache_compiles_once_and_keeps_failures() {
        let cache = SchemaCache::default();
        let bad = json!({"type": 12});
        let first = cache.get("bad", &bad, DraftChoice::default());
        let second = cache.get("bad", &bad, DraftChoice::default());
        assert!(Arc::ptr_eq(&first, &second));
        let err = first.as_ref().as_ref().unwrap_err();
        assert_eq!(err.error_type(), "invalid_schema");
        assert!(
            err.to_string().starts_with("invalid JSON Schema: /type:"),
            "{err}"
        );
    }
}
