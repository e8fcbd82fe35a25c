//! JSON Schema compilation and validation shared by `json_schema` and `tool_args`.
//!
//! Schemas are compiled once: configured ones when the evaluator is built, and schemas found in
//! spans (a request's structured-output schema, a tool's parameter schema) on first sight, kept
//! in a bounded cache keyed by a hash of their text, since the same few schemas recur on every
//! call of a route. Compilation never fetches a remote `$ref` (the `jsonschema` crate is built
//! without its resolvers). Violations are reported with the failing instance path and the
//! message with the instance value masked: an answer's values may be personal data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonschema::{Draft, Validator};
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

/// Compiles a schema. A `$schema` in the schema names its draft; otherwise `draft` does.
pub fn compile(schema: &Value, draft: DraftChoice) -> Result<Validator, String> {
    let declared = schema.get("$schema").and_then(Value::as_str).is_some();
    let options = jsonschema::options();
    let options = if declared {
        options
    } else {
        options.with_draft(draft.draft())
    };
    options
        .build(schema)
        .map_err(|e| format!("invalid JSON Schema: {}", e.masked()))
}

/// Schemas compiled on first sight, by hash of their text. Bounded: when full it starts over,
/// which only costs recompiling the schemas still in use.
#[derive(Debug, Default)]
pub struct SchemaCache {
    compiled: Mutex<HashMap<u64, Arc<Result<Validator, String>>>>,
}

/// Distinct schemas kept before the cache starts over.
const CACHE_CAPACITY: usize = 1024;

impl SchemaCache {
    /// The compiled schema for `schema` (JSON text is hashed as given: the same text from the
    /// same instrumentation hits the cache).
    pub fn get(
        &self,
        key_text: &str,
        schema: &Value,
        draft: DraftChoice,
    ) -> Arc<Result<Validator, String>> {
        let key = xxh3_64(key_text.as_bytes());
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = compiled.get(&key) {
            return found.clone();
        }
        if compiled.len() >= CACHE_CAPACITY {
            compiled.clear();
        }
        let result = Arc::new(compile(schema, draft));
        compiled.insert(key, result.clone());
        result
    }
}

/// The instance's violations of the schema, at most `max`, each as `path: message` with values
/// masked, plus the total count.
pub fn violations(validator: &Validator, instance: &Value, max: usize) -> (Vec<String>, usize) {
    let mut shown = Vec::new();
    let mut total = 0;
    for error in validator.iter_errors(instance) {
        total += 1;
        if shown.len() < max {
            let path = error.instance_path().to_string();
            let path = if path.is_empty() { "/".into() } else { path };
            shown.push(format!("{path}: {}", error.masked()));
        }
    }
    (shown, total)
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
        assert!(shown.iter().any(|s| s.starts_with("/email:")), "{shown:?}");
    }

    #[test]
    fn the_cache_compiles_once_and_keeps_failures() {
        let cache = SchemaCache::default();
        let bad = json!({"type": 12});
        let first = cache.get("bad", &bad, DraftChoice::default());
        let second = cache.get("bad", &bad, DraftChoice::default());
        assert!(Arc::ptr_eq(&first, &second));
        assert!(
            first
                .as_ref()
                .as_ref()
                .unwrap_err()
                .contains("invalid JSON Schema")
        );
    }
}
