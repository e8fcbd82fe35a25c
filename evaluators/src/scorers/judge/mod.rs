//! `llm_judge`: a judge model scores what cheap checks cannot (faithfulness, relevance,
//! toxicity, helpfulness, or a custom prompt).
//!
//! This module is the judge's pure half: the configuration, the request for one span (the
//! prompt filled from the canonical span, personal data masked, a JSON reply asked for) and the
//! reading of the reply into an outcome. What goes into the prompt is untrusted span content: it
//! is fenced as data and cut to `max_prompt_chars` (see [`templates`]). Calling the endpoint —
//! concurrency, rate limits, retries, the breaker, budgets, the cache — is I/O and lives with the
//! worker; it uses [`LlmJudge::request`] and [`LlmJudge::conclude`].

pub mod reply;
pub mod templates;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use xxhash_rust::xxh3::xxh3_128;

use crate::evaluator::{Evaluator, Outcome};
use crate::scorers::pii::{self, PiiKind};
use crate::scorers::registry::Builtin;
use crate::scorers::{excerpt, prefix_chars};
use crate::span::GenAiSpan;
use crate::trace::TraceView;
use reply::ReplyError;
use templates::Template;

/// A secret from the configuration (an API key, a header's value): never printed, never hashed
/// into a version (the version hashes the serialised options, where it is `<redacted>`).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// How the reply is asked to be JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StructuredOutput {
    /// `response_format: {type: json_schema}` (OpenAI, vLLM, llama.cpp server, LiteLLM).
    #[default]
    JsonSchema,
    /// `response_format: {type: json_object}` (older servers).
    JsonObject,
    /// Only the prompt asks for JSON.
    None,
}

/// Configuration of `llm_judge`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LlmJudgeConfig {
    /// A built-in template: `faithfulness`, `relevance`, `toxicity`, `helpfulness`.
    #[serde(default)]
    pub template: Option<String>,
    /// Or a custom prompt with `{{variables}}`.
    #[serde(default)]
    pub prompt: Option<String>,
    /// The judge's instructions for a custom prompt.
    #[serde(default)]
    pub system: Option<String>,
    /// The OpenAI-compatible base URL (`…/v1`).
    pub endpoint: String,
    /// The judge model.
    pub model: String,
    /// The API key (`${env:…}`), sent as a bearer token.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Extra request headers (`api-key: ${env:KEY}`): their values are secrets, since
    /// providers take keys in headers too.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// The lowest and highest score; the template's by default, else `[0, 1]`.
    #[serde(default)]
    pub score_range: Option<(f64, f64)>,
    /// A score at or above this passes; the template's by default.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// How the reply is asked to be JSON.
    #[serde(default)]
    pub structured_output: StructuredOutput,
    /// Mask personal data (as `pii` finds it) in what is sent.
    #[serde(default = "yes")]
    pub redact_pii: bool,
    /// Sampling temperature sent to the judge.
    #[serde(default)]
    pub temperature: f64,
    /// The filled prompt's size cap in characters: span fields share what the template's own
    /// text leaves, each cut visibly when it does not fit.
    #[serde(default = "default_max_prompt_chars")]
    pub max_prompt_chars: usize,
    /// The reply's token limit.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Requests in flight to the endpoint at most.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Spans waiting for a request slot at most; past it they are shed (`skipped: shed`).
    #[serde(default = "default_queue")]
    pub max_queued: usize,
    /// Seconds before a request is abandoned (and retried).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: f64,
    /// Retries of a request after 5xx, a timeout or a connection error (and a 429, within one
    /// attempt series; see `verdict_deadline_seconds`).
    #[serde(default = "default_retries")]
    pub max_retries: usize,
    /// Seconds a span's verdict is tried for while the endpoint answers 429 (rate limited):
    /// the calls slow down to what it allows and a refused one is sent again until this passes,
    /// so a provider's rate limit delays verdicts instead of losing them. Past it the verdict is
    /// an error (`judge_rate_limited`).
    #[serde(default = "default_verdict_deadline")]
    pub verdict_deadline_seconds: f64,
    /// Requests per minute at most (a token bucket), when the provider limits them.
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute at most (prompt estimated at 4 characters a token, plus `max_tokens`).
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    /// USD per clock hour at most; past it spans are `skipped: budget` until the next hour.
    #[serde(default)]
    pub budget_usd_per_hour: Option<f64>,
    /// USD per UTC day at most.
    #[serde(default)]
    pub budget_usd_per_day: Option<f64>,
    /// The judge model's prices (USD per million tokens), over the built-in table.
    #[serde(default)]
    pub prices: Option<crate::pricing::Price>,
    /// Verdicts remembered, keyed by template, model and the filled prompt (0: no cache).
    #[serde(default = "default_cache_size")]
    pub cache_size: u64,
    /// How long a verdict is remembered.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_seconds: f64,
    /// Failed calls in a row that open the circuit (calls stop, verdicts are errors).
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// Seconds the circuit stays open before one call tries again.
    #[serde(default = "default_breaker_cooldown")]
    pub breaker_cooldown_seconds: f64,
}

impl Builtin for LlmJudgeConfig {
    const TYPE: &'static str = "llm_judge";
    const EXAMPLE: &'static str =
        r#"{"template": "faithfulness", "endpoint": "http://localhost:8000/v1", "model": "judge"}"#;

    fn build(&self) -> Result<Box<dyn Evaluator>, String> {
        Ok(Box::new(LlmJudge::build(self)?))
    }
}

fn default_cache_size() -> u64 {
    10_000
}
fn default_cache_ttl() -> f64 {
    3600.0
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> f64 {
    30.0
}

fn default_concurrency() -> usize {
    64
}
fn default_queue() -> usize {
    10_000
}
fn default_timeout() -> f64 {
    30.0
}
fn default_retries() -> usize {
    3
}
fn default_verdict_deadline() -> f64 {
    300.0
}

fn yes() -> bool {
    true
}

fn default_max_tokens() -> u32 {
    300
}

fn default_max_prompt_chars() -> usize {
    32_000
}

/// The least room `max_prompt_chars` must leave each use of a variable.
const MIN_CHARS_PER_VARIABLE: usize = 256;

/// The most `max_prompt_chars` accepted: about a million tokens, past any judge's context.
const MAX_PROMPT_CHARS: usize = 4_000_000;

/// Changes with the way prompts are filled (fences, truncation), so that cached verdicts of
/// prompts filled another way are not reused.
const PROMPT_FORMAT: &str = "fenced-1";

/// The request for one span, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeRequest {
    /// The chat-completions body.
    pub body: Value,
    /// Identifies the request's content (template, model and filled prompt), for the cache.
    pub cache_key: u128,
    /// Personal data masked in the prompt, counted.
    pub redactions: usize,
}

/// The `llm_judge` evaluator's pure half.
#[derive(Debug)]
pub struct LlmJudge {
    config: LlmJudgeConfig,
    system: String,
    prompt: String,
    requires: Vec<String>,
    variables: Vec<String>,
    /// How many times the prompt uses each of `variables`.
    uses: Vec<usize>,
    /// Characters of the prompt filled with empty values: its own text and the fences.
    fixed_chars: usize,
    range: (f64, f64),
    threshold: f64,
}

impl LlmJudge {
    /// Checks the configuration.
    pub fn build(config: &LlmJudgeConfig) -> Result<LlmJudge, String> {
        let template: Option<&Template> = match &config.template {
            Some(name) => Some(templates::built_in(name).ok_or_else(|| {
                let names: Vec<&str> = templates::BUILT_IN.iter().map(|t| t.name).collect();
                format!(
                    "template: unknown template `{name}`, expected one of {}",
                    names.join(", ")
                )
            })?),
            None => None,
        };
        let (system, prompt, requires) = match (template, &config.prompt) {
            (Some(_), Some(_)) => return Err("give `template` or `prompt`, not both".into()),
            (None, None) => return Err(
                "give a `template` (faithfulness, relevance, toxicity, helpfulness) or a `prompt`"
                    .into(),
            ),
            (Some(t), None) => (
                config.system.clone().unwrap_or_else(|| t.system.to_owned()),
                t.prompt.to_owned(),
                t.requires.iter().map(|s| s.to_string()).collect(),
            ),
            (None, Some(p)) => (
                config
                    .system
                    .clone()
                    .unwrap_or_else(|| "You evaluate the output of an AI assistant.".into()),
                p.clone(),
                Vec::new(),
            ),
        };
        let variables: Vec<String> = templates::variables(&prompt)
            .into_iter()
            .map(str::to_owned)
            .collect();
        if variables.is_empty() {
            return Err("prompt: use at least one variable ({{output}}, {{question}}, …)".into());
        }
        if let Some(unknown) = variables
            .iter()
            .find(|v| !templates::VARIABLES.contains(&v.as_str()))
        {
            return Err(format!(
                "prompt: unknown variable {{{{{unknown}}}}}, expected one of {}",
                templates::VARIABLES.join(", ")
            ));
        }
        let range = config
            .score_range
            .or(template.map(|t| t.range))
            .unwrap_or((0.0, 1.0));
        if !(range.0.is_finite() && range.1.is_finite() && range.0 < range.1) {
            return Err(format!(
                "score_range: [{}, {}] must go from low to high",
                range.0, range.1
            ));
        }
        let threshold = config
            .threshold
            .or(template.map(|t| t.threshold))
            .unwrap_or(range.1);
        if !(range.0..=range.1).contains(&threshold) {
            return Err(format!("threshold: {threshold} is outside the score range"));
        }
        if config.endpoint.trim().is_empty() || config.model.trim().is_empty() {
            return Err("endpoint and model: give both".into());
        }
        if !(0.0..=2.0).contains(&config.temperature) {
            return Err("temperature: between 0 and 2".into());
        }
        if config.max_concurrency == 0 || config.max_queued == 0 {
            return Err("max_concurrency and max_queued: at least 1".into());
        }
        if !(config.timeout_seconds.is_finite() && config.timeout_seconds > 0.0) {
            return Err("timeout_seconds: a positive number".into());
        }
        for (key, v) in [
            ("budget_usd_per_hour", config.budget_usd_per_hour),
            ("budget_usd_per_day", config.budget_usd_per_day),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                return Err(format!("{key}: a non-negative number"));
            }
        }
        if config.requests_per_minute == Some(0) || config.tokens_per_minute == Some(0) {
            return Err("requests_per_minute and tokens_per_minute: at least 1".into());
        }
        if config.breaker_failures == 0 {
            return Err("breaker_failures: at least 1".into());
        }
        let uses: Vec<usize> = variables
            .iter()
            .map(|v| {
                templates::variables_with_repeats(&prompt)
                    .filter(|u| *u == v.as_str())
                    .count()
            })
            .collect();
        let empty: Vec<(&str, String)> = variables
            .iter()
            .map(|v| (v.as_str(), String::new()))
            .collect();
        let fixed_chars = templates::render(&prompt, &empty).chars().count();
        let least = fixed_chars + uses.iter().sum::<usize>() * MIN_CHARS_PER_VARIABLE;
        if config.max_prompt_chars < least || config.max_prompt_chars > MAX_PROMPT_CHARS {
            return Err(format!(
                "max_prompt_chars: between {least} (the prompt's own {fixed_chars} characters and \
                 {MIN_CHARS_PER_VARIABLE} for each use of a variable) and {MAX_PROMPT_CHARS}, \
                 not {}",
                config.max_prompt_chars
            ));
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(config.cache_ttl_seconds) || !positive(config.breaker_cooldown_seconds) {
            return Err("cache_ttl_seconds and breaker_cooldown_seconds: positive numbers".into());
        }
        if !positive(config.verdict_deadline_seconds) {
            return Err("verdict_deadline_seconds: a positive number".into());
        }
        Ok(LlmJudge {
            config: config.clone(),
            system: format!(
                "{system}\n\n{}\n\n{}",
                templates::DATA_NOTICE,
                templates::reply_format()
            ),
            prompt,
            requires,
            variables,
            uses,
            fixed_chars,
            range,
            threshold,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LlmJudgeConfig {
        &self.config
    }

    /// The request judging `span`, or the outcome when there is nothing to judge (the span lacks
    /// what the prompt needs). Each value is cut to its share of `max_prompt_chars` before
    /// personal data is masked (masking scans the text, and a span can hold megabytes), with
    /// [`templates::REDACTION_OVERLAP`] characters more so that an item across the cut is still
    /// recognised; then the masked text is cut to the share, marked.
    pub fn request(
        &self,
        span: &GenAiSpan<'_>,
        trace: Option<&TraceView<'_>>,
    ) -> Result<JudgeRequest, Outcome> {
        let mut raw: Vec<String> = Vec::with_capacity(self.variables.len());
        for name in &self.variables {
            match templates::value(name, span, trace) {
                Some(v) => raw.push(v),
                None if self.requires.contains(name)
                    || self.requires.is_empty() && name == "output" =>
                {
                    return Err(if name == "context" {
                        Outcome::not_applicable("no retrieved documents to judge against")
                    } else if span.output_captured() || name != "output" {
                        Outcome::not_applicable(format!("the span has no {name}"))
                    } else {
                        Outcome::no_content()
                    });
                }
                None => raw.push("(none)".to_owned()),
            }
        }
        let lengths: Vec<usize> = raw.iter().map(|v| v.chars().count()).collect();
        let budget = self
            .config
            .max_prompt_chars
            .saturating_sub(self.fixed_chars);
        let shares = templates::shares(&lengths, &self.uses, budget);
        let mut values: Vec<(&str, String)> = Vec::with_capacity(self.variables.len());
        let mut redactions = 0;
        for (i, name) in self.variables.iter().enumerate() {
            let (share, value) = (shares[i], &raw[i]);
            let cut = lengths[i] > share;
            let scanned = if cut {
                prefix_chars(value, share + templates::REDACTION_OVERLAP)
            } else {
                value.as_str()
            };
            let masked = if self.config.redact_pii {
                let (masked, n) = redact(scanned);
                redactions += n;
                masked
            } else {
                scanned.to_owned()
            };
            let fitted = templates::fit(&masked, share, cut.then_some(value.len()));
            values.push((name.as_str(), fitted));
        }
        let user = templates::render(&self.prompt, &values);
        let mut body = json!({
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": self.system},
                {"role": "user", "content": user},
            ],
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        });
        match self.config.structured_output {
            StructuredOutput::JsonSchema => {
                body["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {"name": "evaluation", "strict": true, "schema": reply::schema(self.range)}
                });
            }
            StructuredOutput::JsonObject => {
                body["response_format"] = json!({"type": "json_object"})
            }
            StructuredOutput::None => {}
        }
        // The filled prompt holds the fenced, cut and masked values, so it identifies what the
        // judge sees; the format tag keeps verdicts of differently filled prompts apart.
        let key_text = format!(
            "{PROMPT_FORMAT}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            self.system, self.prompt, self.config.model, user
        );
        Ok(JudgeRequest {
            body,
            cache_key: xxh3_128(key_text.as_bytes()),
            redactions,
        })
    }

    /// The outcome of a reply's text.
    pub fn conclude(&self, reply: &str) -> Outcome {
        match reply::read(reply, self.range) {
            Ok(verdict) => {
                let passed = verdict.score >= self.threshold;
                let label = verdict
                    .label
                    .unwrap_or_else(|| if passed { "pass" } else { "fail" }.to_owned());
                Outcome::measured(verdict.score, passed, label, verdict.explanation)
            }
            Err(e) => error(&e),
        }
    }
}

impl Evaluator for LlmJudge {
    /// Judge calls are I/O: `evalstream run` makes them asynchronously through
    /// [`Evaluator::as_judge`]; called directly, the evaluator declines.
    fn evaluate(&self, span: &GenAiSpan<'_>) -> Outcome {
        let _ = span;
        Outcome::not_applicable("llm_judge is called by the streaming worker (`evalstream run`)")
    }

    fn as_judge(&self) -> Option<&LlmJudge> {
        Some(self)
    }
}

/// Characters of a judge's refusal kept in the outcome.
const REFUSAL_EXCERPT_CHARS: usize = 80;

/// The outcome of a judge that declined to judge.
///
/// The refusal's opening is kept, with personal data masked: it says why the judge declined
/// (a policy, the content's kind), which is what an operator needs to act on, and it is the
/// judge's text rather than the span's; but a judge can quote the span while declining, so only
/// a short, masked excerpt goes into the outcome (and from there into scores and logs).
pub fn refused(refusal: &str) -> Outcome {
    let opening = prefix_chars(
        refusal.trim(),
        REFUSAL_EXCERPT_CHARS + templates::REDACTION_OVERLAP,
    );
    let (masked, _) = redact(opening);
    let first_line = masked.lines().next().unwrap_or_default();
    error(&ReplyError::Refused(
        excerpt(first_line, REFUSAL_EXCERPT_CHARS).into_owned(),
    ))
}

fn error(e: &ReplyError) -> Outcome {
    Outcome::Error {
        error_type: e.error_type().into(),
        message: e.to_string(),
    }
}

/// Masks personal data in `text` (`[email]`, `[phone]`, …), returning the masked text and how
/// many were masked.
pub fn redact(text: &str) -> (String, usize) {
    let (masked, found) = pii::mask(text, &PiiKind::ALL);
    (masked.into_owned(), found.len())
}

#[cfg(test)]
mod tests;
