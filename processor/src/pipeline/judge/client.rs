//! One call to an OpenAI-compatible chat-completions endpoint, retried with exponential backoff
//! and jitter on what is worth retrying (429, 5xx, timeouts, connection errors), waiting at least
//! what a `Retry-After` header asks.

use std::collections::BTreeMap;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use evalstream_evaluators::scorers::judge::{Secret, redact};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use serde_json::Value;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error status.
    #[error("the judge endpoint answered {status}: {body}")]
    Status {
        /// The status.
        status: u16,
        /// What `Retry-After` asked, if anything.
        retry_after: Option<Duration>,
        /// The start of the body.
        body: String,
    },
    /// No answer within the request timeout.
    #[error("the judge endpoint did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed.
    #[error("cannot reach the judge endpoint: {0}")]
    Transport(String),
    /// An answer that is not a chat completion.
    #[error("the judge endpoint's answer is not a chat completion: {0}")]
    BadResponse(String),
}

impl CallError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Status { status, .. } => *status == 429 || *status >= 500,
            CallError::Timeout(_) | CallError::Transport(_) => true,
            CallError::BadResponse(_) => false,
        }
    }

    /// A low-cardinality error type for the outcome and metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            CallError::Status { status: 429, .. } => "judge_rate_limited",
            CallError::Status { status, .. } if *status >= 500 => "judge_server_error",
            CallError::Status { .. } => "judge_rejected",
            CallError::Timeout(_) => "judge_timeout",
            CallError::Transport(_) => "judge_unreachable",
            CallError::BadResponse(_) => "judge_bad_response",
        }
    }
}

/// The longest chat-completion answer read: a verdict is a few hundred tokens; reading without a
/// limit, a 200 MB error body cost 1.3 GB.
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// Bytes of an error answer read (its start is quoted in the error).
const MAX_ERROR_BODY: usize = 4096;

/// Reads at most `limit` bytes of a body, chunk by chunk; the rest is not read. Returns the
/// bytes and whether that was the whole body.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Ok((Vec::new(), false));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// A `Retry-After` in seconds. One too large to represent (`1e20` once panicked the client) is
/// the longest wait there is, which is past any wait honoured: the call gives up.
fn retry_after(value: &str) -> Option<Duration> {
    let seconds = value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| !s.is_nan() && *s >= 0.0)?;
    Some(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
}

/// A judge's answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Completion {
    /// The message content.
    pub content: String,
    /// The model's refusal, when it declined (OpenAI's `refusal` field).
    pub refusal: Option<String>,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// The model that answered.
    pub model: Option<String>,
}

#[derive(Deserialize)]
struct Body {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// Retry policy of a judge endpoint.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// The first backoff.
    pub min_delay: Duration,
    /// The longest backoff (a `Retry-After` may ask for more, up to `max_retry_after`).
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; a longer one gives up.
    pub max_retry_after: Duration,
}

/// A client of one endpoint.
#[derive(Debug, Clone)]
pub struct JudgeClient {
    http: reqwest::Client,
    url: String,
    timeout: Duration,
    retry: RetryPolicy,
}

impl JudgeClient {
    /// A client of `endpoint` (the base URL, `…/v1`), sending `api_key` as a bearer token and
    /// `headers`.
    pub fn new(
        endpoint: &str,
        api_key: Option<&str>,
        headers: &BTreeMap<String, Secret>,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<JudgeClient, String> {
        let mut default_headers = HeaderMap::new();
        if let Some(key) = api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| "api_key: not a valid header value".to_owned())?;
            value.set_sensitive(true);
            default_headers.insert(AUTHORIZATION, value);
        }
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("headers: `{k}` is not a header name"))?;
            let mut value = HeaderValue::from_str(v.expose())
                .map_err(|_| format!("headers: the value of `{k}` is not valid"))?;
            // Custom headers carry credentials (`api-key`, `x-api-key`): kept out of logs.
            value.set_sensitive(true);
            default_headers.insert(name, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(default_headers)
            // A redirect would carry the prompt and the credentials (`api-key` headers
            // included) to whatever host it names: not followed, a 3xx is an error.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(JudgeClient {
            http,
            url: format!("{}/chat/completions", endpoint.trim_end_matches('/')),
            timeout,
            retry,
        })
    }

    /// The longest `Retry-After` honoured.
    pub fn max_retry_after(&self) -> Duration {
        self.retry.max_retry_after
    }

    /// Sends one request, once.
    pub async fn call_once(&self, body: &Value) -> Result<Completion, CallError> {
        let timeout = |e: &reqwest::Error| e.is_timeout();
        let response = self
            .http
            .post(&self.url)
            .json(body)
            .send()
            .await
            .map_err(|e| {
                if timeout(&e) {
                    CallError::Timeout(self.timeout)
                } else {
                    CallError::Transport(e.to_string())
                }
            })?;
        let status = response.status();
        if status != StatusCode::OK {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after);
            let redirect = status.is_redirection();
            let body = read_limited(response, MAX_ERROR_BODY)
                .await
                .map(|(b, _)| b)
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&body);
            let mut excerpt: String = body.chars().take(200).collect();
            if redirect {
                excerpt = "redirects are not followed: point `endpoint` at the final URL".into();
            }
            return Err(CallError::Status {
                status: status.as_u16(),
                retry_after,
                // Error bodies can repeat the request: personal data masked.
                body: redact(&excerpt).0,
            });
        }
        let (bytes, complete) = read_limited(response, MAX_REPLY_BYTES).await.map_err(|e| {
            if timeout(&e) {
                CallError::Timeout(self.timeout)
            } else {
                CallError::Transport(e.to_string())
            }
        })?;
        if !complete {
            return Err(CallError::BadResponse(format!(
                "the answer is longer than {MAX_REPLY_BYTES} bytes"
            )));
        }
        let body: Body = serde_json::from_slice(&bytes).map_err(|e| {
            // serde_json's messages quote what they met: only where and what kind of error.
            CallError::BadResponse(format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        let Some(choice) = body.choices.into_iter().next() else {
            return Err(CallError::BadResponse("no choices".into()));
        };
        let usage = body.usage.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
        });
        Ok(Completion {
            content: choice.message.content.unwrap_or_default(),
            refusal: choice.message.refusal.filter(|r| !r.trim().is_empty()),
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
            model: body.model,
        })
    }

    /// Sends one request, retrying what is worth retrying; `on_retry` hears of each retry.
    pub async fn call(
        &self,
        body: &Value,
        on_retry: impl FnMut(&CallError, Duration),
    ) -> Result<Completion, CallError> {
        let policy = self.retry;
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(policy.min_delay)
            .with_max_delay(policy.max_delay)
            .with_max_times(policy.max_retries);
        (|| self.call_once(body))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(CallError::is_retryable)
            .adjust(move |e, backoff| match (e, backoff) {
                // Out of retries stays out; otherwise wait at least what the server asked.
                (_, None) => None,
                (
                    CallError::Status {
                        retry_after: Some(asked),
                        ..
                    },
                    Some(d),
                ) => (*asked <= policy.max_retry_after).then(|| d.max(*asked)),
                (_, d) => d,
            })
            .notify(on_retry)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::judge::stand_in::{self as server, Fault};

    fn client(url: &str, timeout: Duration, max_retries: usize) -> JudgeClient {
        JudgeClient::new(
            url,
            Some("sk-test"),
            &BTreeMap::new(),
            timeout,
            RetryPolicy {
                max_retries,
                min_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(50),
                max_retry_after: Duration::from_secs(5),
            },
        )
        .unwrap()
    }

    fn body() -> Value {
        serde_json::json!({"model": "judge-model", "messages": [{"role": "user", "content": "hi"}]})
    }

    #[tokio::test]
    async fn retryable_failures_are_retried_and_the_rest_are_not() {
        let (url, server) = server::start().unwrap();
        let c = client(&url, Duration::from_secs(5), 3);
        server.push_faults([Fault::RateLimited(0.05), Fault::ServerError]);
        let mut retries = Vec::new();
        let done = c
            .call(&body(), |e, wait| retries.push((e.error_type(), wait)))
            .await
            .unwrap();
        assert!(done.content.contains("score"), "{done:?}");
        assert_eq!(done.input_tokens, 100);
        assert_eq!(retries.len(), 2);
        assert_eq!(retries[0].0, "judge_rate_limited");
        assert!(
            retries[0].1 >= Duration::from_millis(50),
            "Retry-After is a floor: {retries:?}"
        );
        assert_eq!(server.received().len(), 3);

        // A Retry-After beyond what is honoured gives up at once.
        server.push_faults([Fault::RateLimited(3600.0)]);
        let e = c.call(&body(), |_, _| {}).await.unwrap_err();
        assert_eq!(e.error_type(), "judge_rate_limited");
        assert_eq!(server.received().len(), 4);

        // Out of retries: the last error is the outcome.
        server.push_faults([
            Fault::ServerError,
            Fault::ServerError,
            Fault::ServerError,
            Fault::ServerError,
        ]);
        let e = c.call(&body(), |_, _| {}).await.unwrap_err();
        assert_eq!(e.error_type(), "judge_server_error");
        assert_eq!(server.received().len(), 8);
    }

    /// `Retry-After: 1e20` panicked the client (`Duration::from_secs_f64` overflows).
    #[tokio::test]
    async fn an_absurd_retry_after_gives_up_instead_of_panicking() {
        let (url, server) = server::start().unwrap();
        let c = client(&url, Duration::from_secs(5), 3);
        for value in ["1e20", "inf", "1e400"] {
            server.push_faults([Fault::RetryAfterRaw(value.into())]);
            let before = server.received().len();
            let e = c.call(&body(), |_, _| {}).await.unwrap_err();
            assert_eq!(e.error_type(), "judge_rate_limited", "{value}");
            assert_eq!(server.received().len(), before + 1, "{value}: not retried");
        }
        // Unreadable values are ignored: the client's own backoff applies.
        server.push_faults([Fault::RetryAfterRaw("NaN".into())]);
        assert!(c.call(&body(), |_, _| {}).await.is_ok());
    }

    /// A 200 MB error body took 1.3 GB: bodies are read up to a limit.
    #[tokio::test]
    async fn huge_bodies_are_not_read_whole() {
        let (url, server) = server::start().unwrap();
        let c = client(&url, Duration::from_secs(30), 0);
        server.push_faults([Fault::HugeBody(500, 50 << 20)]);
        let e = c.call(&body(), |_, _| {}).await.unwrap_err();
        let CallError::Status { body: kept, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(kept.len() <= 200, "{} bytes kept", kept.len());
        server.push_faults([Fault::HugeBody(200, MAX_REPLY_BYTES + 1)]);
        let e = c.call(&body(), |_, _| {}).await.unwrap_err();
        assert_eq!(e.error_type(), "judge_bad_response");
        assert!(e.to_string().contains("longer than"), "{e}");
    }

    /// Redirects were followed, and custom headers (an `api-key`) travelled with the prompt to
    /// the host the redirect named.
    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (url, server) = server::start().unwrap();
        let (elsewhere, other) = server::start().unwrap();
        let mut headers = BTreeMap::new();
        headers.insert(
            "api-key".to_owned(),
            serde_json::from_value::<Secret>(serde_json::json!("secret-key")).unwrap(),
        );
        let c = JudgeClient::new(
            &url,
            None,
            &headers,
            Duration::from_secs(5),
            RetryPolicy {
                max_retries: 2,
                min_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(50),
                max_retry_after: Duration::from_secs(5),
            },
        )
        .unwrap();
        server.push_faults([Fault::Redirect(format!("{elsewhere}/chat/completions"))]);
        let e = c.call(&body(), |_, _| {}).await.unwrap_err();
        assert_eq!(e.error_type(), "judge_rejected");
        assert!(e.to_string().contains("redirects are not followed"), "{e}");
        assert!(
            other.received().is_empty(),
            "the prompt went to the redirect's host"
        );
        assert_eq!(server.received().len(), 1, "a redirect is not retried");
    }

    #[tokio::test]
    async fn a_hung_request_times_out() {
        let (url, server) = server::start().unwrap();
        let c = client(&url, Duration::from_millis(200), 0);
        server.push_faults([Fault::Hang(Duration::from_secs(3))]);
        let e = c.call(&body(), |_, _| {}).await.unwrap_err();
        assert_eq!(e.error_type(), "judge_timeout");
        assert!(e.is_retryable());
    }
}
