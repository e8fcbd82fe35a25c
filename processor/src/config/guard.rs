//! `guard` (the in-request API's listeners) and `guards` (the sets of evaluators it runs):
//!
//! ```yaml
//! guard:
//!   grpc: { endpoint: 127.0.0.1:4319 }
//!   http: { endpoint: 127.0.0.1:4320 }
//! guards:
//!   default: { evaluators: [refusal, pii, empty_output], block_when: ['*'], redact: {} }
//! ```
//!
//! Like the OTLP receiver's, the endpoints default to loopback: an API that judges prompts must
//! be opened to the network on purpose.

use std::collections::BTreeMap;

use evalstream_evaluators::scorers::pii::PiiKind;
use serde::Deserialize;

/// `guard`: where the API listens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// The gRPC listener (`evalstream.v1.Guard`), when on.
    #[serde(default)]
    pub grpc: Option<Listener>,
    /// The HTTP/JSON listener (`POST /v1/check`, `POST /v1/budget`), when on.
    #[serde(default)]
    pub http: Option<Listener>,
    /// The largest request, in bytes (gRPC message or HTTP body). Past it: `RESOURCE_EXHAUSTED`,
    /// `413`.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// With the Kafka receiver: the compacted topic the group's workers share their budget
    /// spend through.
    #[serde(default = "default_share_topic")]
    pub budget_share_topic: String,
    /// How often each worker writes its own spend there, in seconds: what a worker may not see
    /// of the others' spend.
    #[serde(default = "default_share_interval")]
    pub budget_share_interval_seconds: f64,
}

fn default_share_topic() -> String {
    "evalstream_budget_state".into()
}

fn default_share_interval() -> f64 {
    1.0
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `host:port`.
    pub endpoint: String,
}

fn default_max_request_bytes() -> usize {
    1 << 20
}

/// One guard set in `guards`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSetConfig {
    /// The evaluators it runs, by name (from `evaluators:`).
    pub evaluators: Vec<String>,
    /// The evaluators whose failure blocks the call (`'*'`: any of the set's).
    #[serde(default = "default_block_when")]
    pub block_when: Vec<String>,
    /// Redaction of personal data in what is checked: a call nothing blocks, whose input or
    /// output holds personal data of these kinds, is answered `REDACT` with the masked text.
    #[serde(default)]
    pub redact: Option<RedactConfig>,
    /// How long a check waits for the set's LLM judges, in milliseconds: required when the set
    /// names one (a judge answers in a second or more; the cheap evaluators in microseconds, so
    /// the wait is the check's latency and the application must choose it).
    #[serde(default)]
    pub judge_deadline_ms: Option<u64>,
    /// What a judge's `error` verdict (its deadline passed, the endpoint failed, the circuit is
    /// open) does when `block_when` names the judge: `allow` (fail open, the default: an
    /// unavailable judge does not take the application down) or `block` (fail closed).
    #[serde(default)]
    pub on_judge_error: OnJudgeError,
}

/// `guards.NAME.on_judge_error`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnJudgeError {
    /// The judge's error does not block.
    #[default]
    Allow,
    /// The judge's error blocks, as a failed verdict does.
    Block,
}

/// The longest `judge_deadline_ms`: past a minute an in-request check is no longer one.
pub const MAX_JUDGE_DEADLINE_MS: u64 = 60_000;

fn default_block_when() -> Vec<String> {
    vec!["*".into()]
}

/// `guards.NAME.redact`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// The kinds masked (default all).
    #[serde(default = "all_kinds")]
    pub kinds: Vec<PiiKind>,
}

fn all_kinds() -> Vec<PiiKind> {
    PiiKind::ALL.to_vec()
}

impl GuardConfig {
    /// Checks the listeners, naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.grpc.is_none() && self.http.is_none() {
            return Err("guard: enable at least one of `grpc` and `http`".into());
        }
        for (protocol, listener) in [("grpc", &self.grpc), ("http", &self.http)] {
            if let Some(l) = listener
                && l.endpoint.parse::<std::net::SocketAddr>().is_err()
                && l.endpoint
                    .rsplit_once(':')
                    .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(format!(
                    "guard.{protocol}.endpoint: `{}` is not `host:port`",
                    l.endpoint
                ));
            }
        }
        if self.max_request_bytes == 0 {
            return Err("guard.max_request_bytes: must be at least 1".into());
        }
        if !(self.budget_share_interval_seconds.is_finite()
            && self.budget_share_interval_seconds > 0.0)
        {
            return Err("guard.budget_share_interval_seconds: must be above 0".into());
        }
        Ok(())
    }
}

/// Checks the guard sets against the evaluators configured (`evaluators`: name, and whether it
/// is an LLM judge), naming the offending key.
pub fn validate_sets(
    sets: &BTreeMap<String, GuardSetConfig>,
    evaluators: &[(&str, bool)],
) -> Result<(), String> {
    let names: Vec<&str> = evaluators.iter().map(|(n, _)| *n).collect();
    for (name, set) in sets {
        if set.evaluators.is_empty() {
            return Err(format!(
                "guards.{name}.evaluators: name at least one evaluator"
            ));
        }
        for (i, e) in set.evaluators.iter().enumerate() {
            match evaluators.iter().find(|(n, _)| n == e) {
                None => {
                    return Err(format!(
                        "guards.{name}.evaluators[{i}]: no evaluator is named `{e}` (configured: {})",
                        names.join(", ")
                    ));
                }
                Some((_, true)) if set.judge_deadline_ms.is_none() => {
                    return Err(format!(
                        "guards.{name}.evaluators[{i}]: `{e}` is an LLM judge, which takes a second or more; set `guards.{name}.judge_deadline_ms` to how long a check may wait for it (the cheap evaluators answer in microseconds)"
                    ));
                }
                Some(_) => {}
            }
        }
        match set.judge_deadline_ms {
            Some(0) => {
                return Err(format!(
                    "guards.{name}.judge_deadline_ms: must be at least 1"
                ));
            }
            Some(ms) if ms > MAX_JUDGE_DEADLINE_MS => {
                return Err(format!(
                    "guards.{name}.judge_deadline_ms: {ms} is over {MAX_JUDGE_DEADLINE_MS} (a minute)"
                ));
            }
            _ => {}
        }
        for (i, e) in set.block_when.iter().enumerate() {
            if e != "*" && !set.evaluators.contains(e) {
                return Err(format!(
                    "guards.{name}.block_when[{i}]: `{e}` is not one of the set's evaluators ({})",
                    set.evaluators.join(", ")
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets(yaml: &str) -> BTreeMap<String, GuardSetConfig> {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const EVALUATORS: [(&str, bool); 2] = [("refusal", false), ("tox", true)];

    #[test]
    fn a_judge_in_a_guard_set_needs_a_deadline_within_a_minute() {
        let no_deadline = validate_sets(&sets("s: { evaluators: [refusal, tox] }"), &EVALUATORS);
        let why = no_deadline.unwrap_err();
        assert!(
            why.starts_with("guards.s.evaluators[1]: `tox` is an LLM judge")
                && why.contains("guards.s.judge_deadline_ms"),
            "{why}"
        );
        let ok = sets(
            "s: { evaluators: [refusal, tox], judge_deadline_ms: 800, on_judge_error: block }",
        );
        assert_eq!(validate_sets(&ok, &EVALUATORS), Ok(()));
        assert_eq!(ok["s"].on_judge_error, OnJudgeError::Block);
        assert_eq!(
            sets("s: { evaluators: [refusal] }")["s"].on_judge_error,
            OnJudgeError::Allow,
            "fails open by default"
        );
        for (deadline, says) in [(0, "at least 1"), (60_001, "over 60000")] {
            let why = validate_sets(
                &sets(&format!(
                    "s: {{ evaluators: [tox], judge_deadline_ms: {deadline} }}"
                )),
                &EVALUATORS,
            )
            .unwrap_err();
            assert!(
                why.starts_with("guards.s.judge_deadline_ms: ") && why.contains(says),
                "{why}"
            );
        }
        let unknown = serde_saphyr::from_str::<BTreeMap<String, GuardSetConfig>>(
            "s: { evaluators: [tox], judge_deadline_ms: 5, on_judge_error: maybe }",
        )
        .unwrap_err()
        .to_string();
        assert!(unknown.contains("unknown variant `maybe`"), "{unknown}");
    }
}
