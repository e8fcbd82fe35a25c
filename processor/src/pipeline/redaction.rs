//! Pre-storage redaction of the spans evalstream passes on (the traces a sampling policy keeps):
//! `gen_ai.input.messages` and `gen_ai.output.messages` carry personal data, and for regulated
//! workloads it must not reach storage. Evaluators run before redaction, on the original content.
//!
//! Rules pick attributes by key pattern (`*` matches any run of characters) and say what to do:
//! `mask` replaces the personal data the `pii` detectors find in the value (strings, and strings
//! nested in arrays and maps, as message lists are) by its kind (`[email]`, `[credit_card]`, …),
//! `drop` removes the attribute, `hash` replaces its value by an HMAC-SHA256 with a configured key
//! (equal values stay equal, so a user id still groups traces, and without the key the value
//! cannot be guessed by hashing candidates). The first rule whose pattern matches a key decides.
//! Span attributes, span event attributes (older instrumentations' `gen_ai.user.message`, …)
//! and the span's resource attributes are redacted.
//!
//! Without a `redaction` section, the default masks personal data in every attribute that
//! carries message content in the conventions evalstream reads ([`CONTENT_KEYS`]).

use std::collections::BTreeMap;

use evalstream_evaluators::scorers::judge::Secret;
use evalstream_evaluators::scorers::pii::{self, PiiKind};
use hmac::{Hmac, KeyInit, Mac};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use regex::RegexSet;
use serde::Deserialize;
use sha2::Sha256;

/// The attributes that carry prompts, answers, tool arguments and retrieved documents in the
/// conventions evalstream reads (OpenTelemetry GenAI, OpenInference, OpenLLMetry, traceAI).
pub const CONTENT_KEYS: [&str; 14] = [
    "gen_ai.input.messages*",
    "gen_ai.output.messages*",
    "gen_ai.system_instructions",
    "gen_ai.prompt*",
    "gen_ai.completion*",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
    "gen_ai.retrieval.*",
    "llm.input_messages.*",
    "llm.output_messages.*",
    "llm.prompts*",
    "input.value",
    "output.value",
    "retrieval.documents.*",
];

/// The `redaction:` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionConfig {
    /// The rules, in order: the first whose pattern matches a key decides.
    #[serde(default = "default_rules")]
    pub rules: Vec<RedactionRule>,
    /// The HMAC key of `hash` rules (use `${env:…}`).
    #[serde(default)]
    pub hmac_key: Option<Secret>,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        RedactionConfig {
            rules: default_rules(),
            hmac_key: None,
        }
    }
}

fn default_rules() -> Vec<RedactionRule> {
    vec![RedactionRule {
        keys: CONTENT_KEYS.iter().map(|k| (*k).to_owned()).collect(),
        action: Action::Mask,
        kinds: PiiKind::ALL.to_vec(),
    }]
}

/// One rule: which keys, what to do.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionRule {
    /// Key patterns; `*` matches any run of characters.
    pub keys: Vec<String>,
    /// What to do with a matching attribute.
    pub action: Action,
    /// With `mask`: the kinds of personal data masked (default: all).
    #[serde(default = "all_kinds")]
    pub kinds: Vec<PiiKind>,
}

fn all_kinds() -> Vec<PiiKind> {
    PiiKind::ALL.to_vec()
}

/// What a rule does to a matching attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Personal data in the value replaced by its kind.
    Mask,
    /// The attribute removed.
    Drop,
    /// The value replaced by `hmac-sha256:` and the hex HMAC of its text.
    Hash,
}

/// What redaction did: masked findings by kind, dropped and hashed attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redactions {
    /// Findings masked, by kind name.
    pub masked: BTreeMap<&'static str, u64>,
    /// Attributes dropped.
    pub dropped: u64,
    /// Attributes hashed.
    pub hashed: u64,
}

impl Redactions {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Redactions) {
        for (kind, n) in &other.masked {
            *self.masked.entry(kind).or_default() += n;
        }
        self.dropped += other.dropped;
        self.hashed += other.hashed;
    }

    /// Every count above zero, by kind (`dropped` and `hashed` beside the masked kinds).
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.masked
            .iter()
            .map(|(k, n)| (*k, *n))
            .chain([("dropped", self.dropped), ("hashed", self.hashed)])
            .filter(|(_, n)| *n > 0)
    }

    /// Whether nothing was redacted.
    pub fn is_empty(&self) -> bool {
        self.masked.is_empty() && self.dropped == 0 && self.hashed == 0
    }
}

/// Rules compiled once, applied to spans.
pub struct Redactor {
    rules: Vec<(RegexSet, RedactionRule)>,
    key: Option<Vec<u8>>,
}

impl Redactor {
    /// Compiles `config`'s rules. Errors name the rule's path.
    pub fn new(config: &RedactionConfig) -> Result<Redactor, String> {
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, rule) in config.rules.iter().enumerate() {
            if rule.keys.is_empty() {
                return Err(format!(
                    "redaction.rules[{i}].keys: give at least one pattern"
                ));
            }
            if rule.action == Action::Hash && config.hmac_key.is_none() {
                return Err(format!(
                    "redaction.rules[{i}]: `hash` needs redaction.hmac_key (e.g. ${{env:EVALSTREAM_HMAC_KEY}})"
                ));
            }
            let patterns = rule.keys.iter().map(|k| {
                let escaped: Vec<String> = k.split('*').map(regex::escape).collect();
                format!("^{}$", escaped.join(".*"))
            });
            let set =
                RegexSet::new(patterns).map_err(|e| format!("redaction.rules[{i}].keys: {e}"))?;
            rules.push((set, rule.clone()));
        }
        if config
            .hmac_key
            .as_ref()
            .is_some_and(|k| k.expose().is_empty())
        {
            return Err("redaction.hmac_key: must not be empty".into());
        }
        Ok(Redactor {
            rules,
            key: config
                .hmac_key
                .as_ref()
                .map(|k| k.expose().as_bytes().to_vec()),
        })
    }

    /// Redacts every span of a request and their resources in place, counting into `done`.
    pub fn request(&self, request: &mut ExportTraceServiceRequest, done: &mut Redactions) {
        for rs in &mut request.resource_spans {
            if let Some(resource) = &mut rs.resource {
                self.resource(resource, done);
            }
            for span in rs.scope_spans.iter_mut().flat_map(|ss| &mut ss.spans) {
                self.span(span, done);
            }
        }
    }

    /// Redacts a span's attributes and its events' in place, counting into `done`.
    pub fn span(&self, span: &mut Span, done: &mut Redactions) {
        self.attributes(&mut span.attributes, done);
        for event in &mut span.events {
            self.attributes(&mut event.attributes, done);
        }
    }

    /// Redacts a resource's attributes in place.
    pub fn resource(&self, resource: &mut Resource, done: &mut Redactions) {
        self.attributes(&mut resource.attributes, done);
    }

    fn attributes(&self, attributes: &mut Vec<KeyValue>, done: &mut Redactions) {
        attributes.retain_mut(|kv| {
            let Some((_, rule)) = self.rules.iter().find(|(set, _)| set.is_match(&kv.key)) else {
                return true;
            };
            match rule.action {
                Action::Drop => {
                    done.dropped += 1;
                    false
                }
                Action::Hash => {
                    if let Some(value) = &mut kv.value {
                        *value = self.hashed(value);
                        done.hashed += 1;
                    }
                    true
                }
                Action::Mask => {
                    if let Some(value) = &mut kv.value {
                        mask(value, &rule.kinds, done);
                    }
                    true
                }
            }
        });
    }

    fn hashed(&self, value: &AnyValue) -> AnyValue {
        let text = match &value.value {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::BytesValue(b)) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        };
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.as_deref().unwrap_or(b""))
            .expect("HMAC takes a key of any length");
        mac.update(text.as_bytes());
        let digest = mac.finalize().into_bytes();
        AnyValue {
            value: Some(Value::StringValue(format!(
                "hmac-sha256:{}",
                evalstream_evaluators::otlp::hex(&digest)
            ))),
        }
    }
}

/// Masks personal data in a value, recursing into arrays and maps.
fn mask(value: &mut AnyValue, kinds: &[PiiKind], done: &mut Redactions) {
    match &mut value.value {
        Some(Value::StringValue(s)) => {
            let (masked, found) = pii::mask(s, kinds);
            if found.is_empty() {
                return;
            }
            for f in &found {
                *done.masked.entry(f.kind.as_str()).or_default() += 1;
            }
            *s = masked.into_owned();
        }
        Some(Value::ArrayValue(array)) => {
            for v in &mut array.values {
                mask(v, kinds, done);
            }
        }
        Some(Value::KvlistValue(list)) => {
            for kv in &mut list.values {
                if let Some(v) = &mut kv.value {
                    mask(v, kinds, done);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::trace::v1::span::Event;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn s(key: &str, value: &str) -> KeyValue {
        kv(key, Value::StringValue(value.into()))
    }

    fn get<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    fn text<'a>(attributes: &'a [KeyValue], key: &str) -> &'a str {
        match get(attributes, key) {
            Some(Value::StringValue(s)) => s,
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn the_default_masks_pii_in_content_and_leaves_the_rest() {
        let r = Redactor::new(&RedactionConfig::default()).unwrap();
        let mut span = Span {
            attributes: vec![
                s(
                    "gen_ai.output.messages",
                    r#"[{"role":"assistant","parts":[{"type":"text","content":"Mail jane.roe@example.com or call +1 415 555 0100"}]}]"#,
                ),
                s(
                    "llm.input_messages.0.message.content",
                    "card 4111 1111 1111 1111",
                ),
                s("gen_ai.request.model", "gpt-4o"),
                s("user.email", "kept@example.com"),
            ],
            events: vec![Event {
                name: "gen_ai.user.message".into(),
                attributes: vec![kv(
                    "gen_ai.prompt",
                    Value::KvlistValue(KeyValueList {
                        values: vec![s("content", "I am bob@example.org")],
                    }),
                )],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut done = Redactions::default();
        r.span(&mut span, &mut done);
        let out = text(&span.attributes, "gen_ai.output.messages");
        assert!(out.contains("Mail [email] or call [phone]"), "{out}");
        assert!(!out.contains("jane.roe"));
        assert_eq!(
            text(&span.attributes, "llm.input_messages.0.message.content"),
            "card [credit_card]"
        );
        assert_eq!(text(&span.attributes, "gen_ai.request.model"), "gpt-4o");
        assert_eq!(text(&span.attributes, "user.email"), "kept@example.com");
        let Some(Value::KvlistValue(list)) = get(&span.events[0].attributes, "gen_ai.prompt")
        else {
            panic!("the event keeps its map");
        };
        assert_eq!(text(&list.values, "content"), "I am [email]");
        assert_eq!(done.masked.get("email"), Some(&2));
        assert_eq!(done.masked.get("phone"), Some(&1));
        assert_eq!(done.masked.get("credit_card"), Some(&1));
    }

    #[test]
    fn rules_drop_hash_and_mask_by_pattern_first_match_deciding() {
        let config: RedactionConfig = serde_saphyr::from_str(
            "hmac_key: k1\nrules:\n  - { keys: ['http.request.header.*'], action: drop }\n  - { keys: ['user.id', 'enduser.*'], action: hash }\n  - { keys: ['*'], action: mask, kinds: [email] }\n",
        )
        .unwrap();
        let r = Redactor::new(&config).unwrap();
        let mut resource = Resource {
            attributes: vec![s("enduser.id", "u-42"), s("service.name", "shop")],
            ..Default::default()
        };
        let mut span = Span {
            attributes: vec![
                s("http.request.header.authorization", "Bearer x"),
                s("user.id", "u-42"),
                s("note", "a@b.co and +1 415 555 0100"),
                kv(
                    "tags",
                    Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(Value::StringValue("c@d.io".into())),
                        }],
                    }),
                ),
            ],
            ..Default::default()
        };
        let mut done = Redactions::default();
        r.span(&mut span, &mut done);
        r.resource(&mut resource, &mut done);
        assert!(get(&span.attributes, "http.request.header.authorization").is_none());
        let hashed = text(&span.attributes, "user.id").to_owned();
        assert!(
            hashed.starts_with("hmac-sha256:") && hashed.len() == 12 + 64,
            "{hashed}"
        );
        // Equal values hash alike, wherever they are; another key gives another hash.
        assert_eq!(text(&resource.attributes, "enduser.id"), hashed);
        let other_key: RedactionConfig =
            serde_saphyr::from_str("hmac_key: k2\nrules: [ { keys: ['user.id'], action: hash } ]")
                .unwrap();
        let mut again = Span {
            attributes: vec![s("user.id", "u-42")],
            ..Default::default()
        };
        Redactor::new(&other_key)
            .unwrap()
            .span(&mut again, &mut Redactions::default());
        assert_ne!(text(&again.attributes, "user.id"), hashed);
        // Only the kinds asked for are masked.
        assert_eq!(
            text(&span.attributes, "note"),
            "[email] and +1 415 555 0100"
        );
        let Some(Value::ArrayValue(tags)) = get(&span.attributes, "tags") else {
            panic!("an array");
        };
        assert_eq!(
            tags.values[0].value,
            Some(Value::StringValue("[email]".into()))
        );
        assert_eq!(text(&resource.attributes, "service.name"), "shop");
        assert_eq!((done.dropped, done.hashed), (1, 2));
        assert_eq!(done.masked.get("email"), Some(&2));
    }

    #[test]
    fn bad_rules_are_refused_with_their_path() {
        let refused = |yaml: &str| {
            let config: RedactionConfig = serde_saphyr::from_str(yaml).unwrap();
            Redactor::new(&config).err().unwrap()
        };
        assert!(
            refused("rules: [ { keys: [a], action: hash } ]")
                .starts_with("redaction.rules[0]: `hash` needs redaction.hmac_key")
        );
        assert!(
            refused("rules: [ { keys: [], action: drop } ]").starts_with("redaction.rules[0].keys")
        );
        assert!(refused("hmac_key: ''\nrules: [ { keys: [a], action: drop } ]").contains("empty"));
        assert!(
            serde_saphyr::from_str::<RedactionConfig>("rules: [ { keys: [a], action: erase } ]")
                .is_err()
        );
    }
}
