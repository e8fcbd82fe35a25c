//! `agent_loop`: did the agent run away? Loops, call counts, retries and budgets of a whole trace.
//!
//! An agent stuck in a loop calls the same tool with the same arguments again and again, makes
//! more model calls than any sane plan needs, retries failing calls, and burns tokens. Each is
//! cheap to see in the trace and expensive to miss. The checks:
//!
//! - `tool_loop`: no tool is called with the same (canonicalised JSON) arguments more than
//!   `max_repeated_tool_calls` times. Calls come from tool spans (`execute_tool`: tool name and
//!   arguments) and from the tool calls in LLM answers; a call seen in both counts once (tool
//!   spans win: an LLM tool call is left out when a tool span has its call id or the same tool
//!   name, since only some instrumentations record call ids);
//! - `too_many_llm_calls`: at most `max_llm_calls` LLM spans;
//! - `retries`: at most `max_retries` retries, a retry being an LLM or tool span that failed
//!   (error status or `error.type`) and was followed later by a span of the same tool, or of the
//!   same model for LLM spans;
//! - `token_budget` (when `max_total_tokens` is set): the tokens of all LLM and embeddings spans
//!   (their total, else input + output). Agent and chain spans are left out: some instrumentations
//!   repeat their children's usage there;
//! - `cost_budget` (when `max_cost_usd` is set): those spans priced as `cost` prices them. Spans
//!   of models without a price are left out, and the explanation names the models.
//!
//! The trace is judged once, on its root span (else the earliest span in view, see
//! [`TraceView::root`]): it selects every kind but evalstream's own evaluator spans by default, and
//! [`Evaluator::judges_in_trace`] declines the trace's other spans, which get no evaluation at
//! all (called directly on one, [`Evaluator::evaluate_in_trace`] says `not_applicable`).
//!
//! Scores the fraction of checks passed (checks that measured nothing, such as a token budget
//! with no usage reported, are left out), so a trace failing one check in three scores 0.67;
//! passes when every check passes. Labelled `ok` or by the first failing check, in the order
//! above. A trace without LLM or tool calls is `not_applicable`.

use std::collections::{BTreeMap, HashMap, HashSet};

use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{MAX_NAME_CHARS, excerpt};
use crate::evaluator::{Evaluator, Outcome};
use crate::pricing::{Price, PriceTable};
use crate::scorers::registry::Builtin;
use crate::span::{GenAiSpan, OperationKind};
use crate::trace::TraceView;

/// Unpriced models named in an explanation; the rest are counted.
const LISTED_MODELS: usize = 5;

/// Configuration of `agent_loop`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentLoopConfig {
    /// The most times one tool may be called with the same arguments.
    #[serde(default = "default_max_repeated_tool_calls")]
    pub max_repeated_tool_calls: u32,
    /// The most LLM calls in a trace.
    #[serde(default = "default_max_llm_calls")]
    pub max_llm_calls: u32,
    /// The most retries of failed LLM or tool calls in a trace.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// The most tokens the trace's LLM and embeddings calls may use; no limit when unset.
    #[serde(default)]
    pub max_total_tokens: Option<u64>,
    /// The most the trace's LLM and embeddings calls may cost, USD; no limit when unset.
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    /// Prices by model name (USD per million tokens), over the built-in table.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
}

impl Builtin for AgentLoopConfig {
    const TYPE: &'static str = "agent_loop";
    // Judged on the trace's root, whatever its kind; never on evalstream's own evaluator spans.
    const DEFAULT_KINDS: &'static [OperationKind] = &[
        OperationKind::Agent,
        OperationKind::Chat,
        OperationKind::Tool,
        OperationKind::Retrieval,
        OperationKind::Embeddings,
        OperationKind::Guardrail,
        OperationKind::Other,
    ];

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(AgentLoop::build(self)?))
    }
}

fn default_max_repeated_tool_calls() -> u32 {
    3
}

fn default_max_llm_calls() -> u32 {
    25
}

fn default_max_retries() -> u32 {
    3
}

impl Default for AgentLoopConfig {
    fn default() -> Self {
        AgentLoopConfig {
            max_repeated_tool_calls: default_max_repeated_tool_calls(),
            max_llm_calls: default_max_llm_calls(),
            max_retries: default_max_retries(),
            max_total_tokens: None,
            max_cost_usd: None,
            prices: BTreeMap::new(),
        }
    }
}

/// The `agent_loop` scorer.
#[derive(Debug)]
pub struct AgentLoop {
    config: AgentLoopConfig,
    prices: PriceTable,
}

/// What was measured in a trace.
#[derive(Debug, Default)]
struct Measures {
    llm_calls: u32,
    tool_calls: u32,
    /// The most repeated (tool, arguments) and how often it was called.
    most_repeated: Option<(String, u32)>,
    retries: u32,
    /// Tokens, when any span reported usage.
    tokens: Option<u64>,
    /// Cost of the priced spans, when any was priced.
    cost_usd: Option<f64>,
    /// Models with usage but no price.
    unpriced: Vec<String>,
}

impl AgentLoop {
    /// Builds the scorer, validating the limits and prices.
    pub fn build(config: &AgentLoopConfig) -> Result<AgentLoop, String> {
        if config.max_repeated_tool_calls == 0 {
            return Err("max_repeated_tool_calls: must be at least 1".into());
        }
        if config.max_llm_calls == 0 {
            return Err("max_llm_calls: must be at least 1".into());
        }
        if config
            .max_cost_usd
            .is_some_and(|m| !(m.is_finite() && m >= 0.0))
        {
            return Err("max_cost_usd: must be a non-negative number".into());
        }
        Ok(AgentLoop {
            config: config.clone(),
            prices: PriceTable::new(true, &config.prices)?,
        })
    }

    fn measure(&self, trace: &TraceView<'_>) -> Measures {
        let mut m = Measures::default();
        let spans = trace.spans();

        // Tool calls: tool spans first, then LLM tool calls no tool span accounts for.
        let mut calls: HashMap<(String, String), u32> = HashMap::new();
        let mut span_call_ids = HashSet::new();
        let mut span_tools = HashSet::new();
        for s in spans.iter().filter(|s| s.kind() == OperationKind::Tool) {
            let name = s.tool_name().unwrap_or(s.name());
            span_tools.insert(name);
            if let Some(id) = s.tool_call_id() {
                span_call_ids.insert(id);
            }
            let args = s.tool_arguments();
            *calls
                .entry((name.to_owned(), canonical(args.as_deref())))
                .or_default() += 1;
        }
        for s in spans.iter().filter(|s| s.kind() == OperationKind::Chat) {
            m.llm_calls += 1;
            for call in s.tool_calls() {
                let seen = call
                    .id
                    .as_deref()
                    .is_some_and(|id| span_call_ids.contains(id))
                    || span_tools.contains(call.name.as_ref());
                if !seen {
                    *calls
                        .entry((call.name.to_string(), canonical(call.arguments.as_deref())))
                        .or_default() += 1;
                }
            }
        }
        m.tool_calls = calls.values().sum();
        m.most_repeated = calls
            .into_iter()
            .max_by(|(a, x), (b, y)| x.cmp(y).then_with(|| b.0.cmp(&a.0)))
            .map(|((name, _), n)| (name, n));

        // Retries: a failed call with a later call of the same tool or model.
        let mut later: HashSet<(bool, &str)> = HashSet::new();
        for s in spans.iter().rev() {
            let key = match s.kind() {
                OperationKind::Tool => (true, s.tool_name().unwrap_or(s.name())),
                OperationKind::Chat => (false, s.model().unwrap_or(s.name())),
                _ => continue,
            };
            let failed = s.status().code == StatusCode::Error || s.error().is_some();
            if failed && later.contains(&key) {
                m.retries += 1;
            }
            later.insert(key);
        }

        // Tokens and cost of the model calls.
        let mut unpriced = HashSet::new();
        for s in spans
            .iter()
            .filter(|s| matches!(s.kind(), OperationKind::Chat | OperationKind::Embeddings))
        {
            let usage = s.usage();
            let tokens = usage.total.or_else(|| match (usage.input, usage.output) {
                (None, None) => None,
                // Counts come from attributes: any u64, so sums saturate.
                (i, o) => Some(i.unwrap_or(0).saturating_add(o.unwrap_or(0))),
            });
            let Some(tokens) = tokens else {
                continue;
            };
            let total = m.tokens.get_or_insert(0);
            *total = total.saturating_add(tokens);
            let priced = s
                .model()
                .and_then(|model| self.prices.lookup(model))
                .and_then(|(_, price)| PriceTable::cost(price, &usage));
            match priced {
                Some(cost) => *m.cost_usd.get_or_insert(0.0) += cost.total_usd,
                None => {
                    unpriced.insert(s.model().unwrap_or("unknown model"));
                }
            }
        }
        m.unpriced = unpriced.into_iter().map(str::to_owned).collect();
        m.unpriced.sort();
        m
    }

    fn judge(&self, m: &Measures) -> Outcome {
        let c = &self.config;
        // (check passed, label when it fails, what was measured)
        let mut checks: Vec<(bool, &'static str)> = Vec::new();
        let mut parts: Vec<String> = Vec::new();

        let repeated = m.most_repeated.as_ref().map_or(0, |(_, n)| *n);
        checks.push((repeated <= c.max_repeated_tool_calls, "tool_loop"));
        parts.push(match &m.most_repeated {
            Some((name, n)) => format!(
                "{} called {n}× with the same arguments (limit {}; {})",
                excerpt(name, MAX_NAME_CHARS),
                c.max_repeated_tool_calls,
                plural(m.tool_calls, "tool call", "tool calls")
            ),
            None => "no tool calls".into(),
        });

        checks.push((m.llm_calls <= c.max_llm_calls, "too_many_llm_calls"));
        parts.push(format!(
            "{} (limit {})",
            plural(m.llm_calls, "LLM call", "LLM calls"),
            c.max_llm_calls
        ));

        checks.push((m.retries <= c.max_retries, "retries"));
        parts.push(format!(
            "{} (limit {})",
            plural(m.retries, "retry", "retries"),
            c.max_retries
        ));

        let limit = |l: Option<String>| l.map_or(String::new(), |l| format!(" (limit {l})"));
        match m.tokens {
            Some(tokens) => {
                if let Some(max) = c.max_total_tokens {
                    checks.push((tokens <= max, "token_budget"));
                }
                parts.push(format!(
                    "{} tokens{}",
                    thousands(tokens),
                    limit(c.max_total_tokens.map(thousands))
                ));
            }
            None => parts.push("no token usage reported".into()),
        }

        match m.cost_usd {
            Some(cost) => {
                if let Some(max) = c.max_cost_usd {
                    checks.push((cost <= max, "cost_budget"));
                }
                parts.push(format!("{}{}", usd(cost), limit(c.max_cost_usd.map(usd))));
            }
            None if c.max_cost_usd.is_some() => parts.push("cost not measured".into()),
            None => {}
        }
        if !m.unpriced.is_empty() {
            // Model names come from spans: each is cut short, and only the first few are listed.
            let listed: Vec<_> = m
                .unpriced
                .iter()
                .take(LISTED_MODELS)
                .map(|model| excerpt(model, MAX_NAME_CHARS))
                .collect();
            let more = m.unpriced.len().saturating_sub(LISTED_MODELS);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            parts.push(format!("no price for {}{more}", listed.join(", ")));
        }

        let passed = checks.iter().filter(|(ok, _)| *ok).count();
        let value = passed as f64 / checks.len() as f64;
        let label = checks
            .iter()
            .find(|(ok, _)| !ok)
            .map_or("ok", |(_, label)| label);
        Outcome::measured(value, passed == checks.len(), label, parts.join("; "))
    }
}

impl Evaluator for AgentLoop {
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome {
        let _ = span;
        Outcome::not_applicable("agent_loop judges whole traces")
    }

    fn evaluate_in_trace(&self, span: &GenAiSpan<'_>, trace: &TraceView<'_>) -> Outcome {
        if !trace.is_root(span) {
            return Outcome::not_applicable("judged once per trace, on its root span");
        }
        let m = self.measure(trace);
        if m.llm_calls == 0 && m.tool_calls == 0 {
            return Outcome::not_applicable("no LLM or tool calls in the trace");
        }
        self.judge(&m)
    }

    fn needs_trace(&self) -> bool {
        true
    }

    fn judges_in_trace(&self, span: &GenAiSpan<'_>, trace: &TraceView<'_>) -> bool {
        trace.is_root(span)
    }
}

/// Tool arguments in a form where key order and whitespace do not matter: JSON with object keys
/// sorted; text that is not JSON, trimmed.
fn canonical(arguments: Option<&str>) -> String {
    let raw = arguments.map_or("", str::trim);
    match serde_json::from_str::<Value>(raw) {
        Ok(value) => {
            let mut out = String::with_capacity(raw.len());
            write_sorted(&value, &mut out);
            out
        }
        Err(_) => raw.to_owned(),
    }
}

fn write_sorted(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_sorted(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// `1 retry`, `2 retries`.
fn plural(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A dollar amount with enough decimals to show small costs.
fn usd(v: f64) -> String {
    if v >= 0.01 || v == 0.0 {
        format!("${v:.4}")
    } else {
        format!("${v:.6}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scorers::testing::{attr, i, s, span, view};
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use opentelemetry_proto::tonic::trace::v1::{Span, Status};

    /// Builds a trace's spans one after the other: the first is the root, the others its children.
    #[derive(Default)]
    struct Trace {
        spans: Vec<Span>,
    }

    impl Trace {
        fn push(mut self, mut span: Span, failed: bool) -> Self {
            let n = self.spans.len() as u8 + 1;
            span.span_id = vec![n; 8];
            span.start_time_unix_nano = u64::from(n) * 1_000;
            span.parent_span_id = if n == 1 { Vec::new() } else { vec![1; 8] };
            if failed {
                span.status = Some(Status {
                    code: StatusCode::Error as i32,
                    message: "boom".into(),
                });
            }
            self.spans.push(span);
            self
        }

        fn agent(self) -> Self {
            self.push(
                span(vec![s("gen_ai.operation.name", "invoke_agent")]),
                false,
            )
        }

        fn llm(self, tool_calls: &[(&str, &str)], failed: bool) -> Self {
            let parts: Vec<serde_json::Value> = tool_calls
                .iter()
                .enumerate()
                .map(|(k, (name, args))| {
                    serde_json::json!({"type": "tool_call", "id": format!("call_{}_{k}", self.spans.len()),
                        "name": name, "arguments": serde_json::from_str::<serde_json::Value>(args).unwrap()})
                })
                .collect();
            let output = serde_json::json!([{"role": "assistant", "parts": parts}]);
            self.push(
                span(vec![
                    s("gen_ai.operation.name", "chat"),
                    s("gen_ai.request.model", "gpt-4o-mini"),
                    i("gen_ai.usage.input_tokens", 1_000),
                    i("gen_ai.usage.output_tokens", 200),
                    s("gen_ai.output.messages", &output.to_string()),
                ]),
                failed,
            )
        }

        fn tool(self, name: &str, args: &str, failed: bool) -> Self {
            self.push(
                span(vec![
                    s("gen_ai.operation.name", "execute_tool"),
                    s("gen_ai.tool.name", name),
                    s("gen_ai.tool.call.arguments", args),
                ]),
                failed,
            )
        }

        /// Every span's outcome.
        fn judge(&self, config: &AgentLoopConfig) -> Vec<Outcome> {
            let scorer = AgentLoop::build(config).unwrap();
            let views: Vec<GenAiSpan<'_>> = self.spans.iter().map(view).collect();
            let trace = TraceView::new(views, true);
            trace
                .spans()
                .iter()
                .map(|s| scorer.evaluate_in_trace(s, &trace))
                .collect()
        }

        /// The root's score.
        fn score(&self, config: &AgentLoopConfig) -> crate::evaluator::Score {
            let outcomes = self.judge(config);
            let scored: Vec<_> = outcomes.iter().filter_map(Outcome::score).collect();
            assert_eq!(scored.len(), 1, "{outcomes:?}");
            assert!(outcomes[0].score().is_some(), "the root is judged");
            scored[0].clone()
        }
    }

    #[test]
    fn a_short_run_passes_once_at_its_root() {
        let trace = Trace::default()
            .agent()
            .llm(&[("search_docs", r#"{"q": "eiffel"}"#)], false)
            .tool("search_docs", r#"{"q":"eiffel"}"#, false)
            .llm(&[], false);
        let score = trace.score(&AgentLoopConfig::default());
        assert_eq!(
            (score.value, score.passed, score.label.as_ref()),
            (1.0, true, "ok")
        );
        assert_eq!(
            score.explanation,
            "search_docs called 1× with the same arguments (limit 3; 1 tool call); \
             2 LLM calls (limit 25); 0 retries (limit 3); 2,400 tokens; $0.000540"
        );
        let outcomes = trace.judge(&AgentLoopConfig::default());
        assert!(outcomes[1..].iter().all(|o| matches!(
            o,
            Outcome::Skipped { detail, .. } if detail.contains("root")
        )));
    }

    #[test]
    fn the_same_call_repeated_is_a_loop_whatever_the_key_order() {
        let mut trace = Trace::default().agent();
        for k in 0..5 {
            let args = if k % 2 == 0 {
                r#"{"q": "eiffel", "top_k": 3}"#
            } else {
                r#"{"top_k":3,"q":"eiffel"}"#
            };
            trace = trace.llm(&[], false).tool("search_docs", args, false);
        }
        // A different argument is a different call.
        trace = trace.tool("search_docs", r#"{"q": "paris"}"#, false);
        let score = trace.score(&AgentLoopConfig::default());
        assert_eq!(score.label, "tool_loop");
        assert!(!score.passed);
        assert!((score.value - 2.0 / 3.0).abs() < 1e-9);
        assert!(
            score.explanation.starts_with(
                "search_docs called 5× with the same arguments (limit 3; 6 tool calls)"
            ),
            "{}",
            score.explanation
        );
    }

    #[test]
    fn llm_tool_calls_count_when_no_tool_span_records_them() {
        let args = r#"{"city": "Paris"}"#;
        let calls = [("get_weather", args); 2];
        let trace = Trace::default()
            .agent()
            .llm(&calls, false)
            .llm(&calls, false);
        let score = trace.score(&AgentLoopConfig::default());
        assert_eq!(score.label, "tool_loop", "{}", score.explanation);
        assert!(score.explanation.starts_with("get_weather called 4×"));
    }

    #[test]
    fn llm_calls_retries_tokens_and_cost_have_limits() {
        let trace = Trace::default()
            .agent()
            .llm(&[], true)
            .llm(&[], true)
            .llm(&[], false)
            .tool("search", "{}", true)
            .tool("search", "{\"q\": 1}", false);
        let score = trace.score(&AgentLoopConfig::default());
        assert!(score.passed, "{}", score.explanation);
        assert!(score.explanation.contains("3 retries (limit 3)"));
        let strict = AgentLoopConfig {
            max_llm_calls: 2,
            max_retries: 2,
            max_total_tokens: Some(3_000),
            max_cost_usd: Some(0.0001),
            ..Default::default()
        };
        let score = trace.score(&strict);
        assert_eq!(score.label, "too_many_llm_calls");
        assert_eq!(score.value, 0.2);
        assert_eq!(
            score.explanation,
            "search called 1× with the same arguments (limit 3; 2 tool calls); \
             3 LLM calls (limit 2); 3 retries (limit 2); 3,600 tokens (limit 3,000); \
             $0.000810 (limit $0.000100)"
        );
    }

    /// Found by fuzzing: token counts are any `u64` an attribute carries, and summing two of
    /// `u64::MAX` (or `u64::MAX` input and 1 output) overflowed: a panic in debug builds, a wrapped
    /// total in release builds.
    #[test]
    fn token_counts_near_u64_max_saturate_instead_of_overflowing() {
        let huge = u64::MAX.to_string();
        let mut trace = Trace::default().agent();
        for _ in 0..2 {
            trace = trace.push(
                span(vec![
                    s("gen_ai.operation.name", "chat"),
                    s("gen_ai.request.model", "gpt-4o-mini"),
                    s("gen_ai.usage.input_tokens", &huge),
                    i("gen_ai.usage.output_tokens", 1),
                ]),
                false,
            );
        }
        let score = trace.score(&AgentLoopConfig {
            max_total_tokens: Some(1_000),
            ..Default::default()
        });
        assert_eq!(score.label, "token_budget", "{}", score.explanation);
        assert!(
            score
                .explanation
                .contains("18,446,744,073,709,551,615 tokens"),
            "{}",
            score.explanation
        );
    }

    #[test]
    fn unpriced_models_and_traces_without_calls() {
        let mut trace = Trace::default().agent();
        trace = trace.push(
            span(vec![
                s("gen_ai.operation.name", "chat"),
                s("gen_ai.request.model", "my-finetune"),
                i("gen_ai.usage.input_tokens", 10),
                attr("gen_ai.usage.output_tokens", Any::IntValue(5)),
            ]),
            false,
        );
        let config = AgentLoopConfig {
            max_cost_usd: Some(1.0),
            ..Default::default()
        };
        let score = trace.score(&config);
        assert!(score.passed);
        assert!(
            score
                .explanation
                .ends_with("15 tokens; cost not measured; no price for my-finetune"),
            "{}",
            score.explanation
        );
        let idle = Trace::default()
            .agent()
            .push(span(vec![s("db.system", "postgresql")]), false);
        assert!(
            idle.judge(&config)
                .iter()
                .all(|o| matches!(o, Outcome::Skipped { .. }))
        );
    }

    #[test]
    fn options_are_validated_and_helpers_format() {
        let err = |c: AgentLoopConfig| AgentLoop::build(&c).unwrap_err();
        assert!(
            err(AgentLoopConfig {
                max_repeated_tool_calls: 0,
                ..Default::default()
            })
            .starts_with("max_repeated_tool_calls")
        );
        assert!(
            err(AgentLoopConfig {
                max_cost_usd: Some(-1.0),
                ..Default::default()
            })
            .starts_with("max_cost_usd")
        );
        let unknown =
            serde_json::from_value::<AgentLoopConfig>(serde_json::json!({"max_llm_call": 3}))
                .unwrap_err()
                .to_string();
        assert!(
            unknown.contains("unknown field `max_llm_call`"),
            "{unknown}"
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(
            canonical(Some(r#" {"b":[{"d":1,"c":2}],"a":null} "#)),
            r#"{"a":null,"b":[{"c":2,"d":1}]}"#
        );
        assert_eq!(canonical(Some(" not json ")), "not json");
    }
}
