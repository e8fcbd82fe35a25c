//! The LLM judge service: sends judge evaluators' requests to their endpoints without ever
//! blocking the workers, and produces the verdicts as evaluator spans.
//!
//! Each judge evaluator has its own bounded queue, its own limit on requests in flight and its
//! own HTTP client ([`client`]). A worker that meets a span for a judge renders the request (the
//! evaluators crate's pure half), takes a [`Hold`] on each input's token and queues the job; when
//! the queue is full the span is shed at once (`skipped: shed`), so a slow or failing judge
//! costs its own evaluations and never the cheap scorers' throughput. The hold keeps the input
//! uncommitted until the verdict — a score, an error or a skip — is queued for output.
//!
//! The jobs run on this service's own async runtime (one thread: the work is waiting on the
//! network), each behind its evaluator's semaphore, retried by the client.

pub mod client;
pub mod guard;
pub mod stand_in;

use std::num::NonZeroU32;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evalstream_evaluators::evaluator::{ConfiguredEvaluator, EvaluatorSet, Outcome, SkipReason};
use evalstream_evaluators::otlp;
use evalstream_evaluators::pricing::{Price, PriceTable};
use evalstream_evaluators::scorers::judge::{self, JudgeRequest, LlmJudge};
use evalstream_evaluators::span::TokenUsage;
use evalstream_evaluators::to_otlp;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as OtlpValue;
use tokio::sync::{Semaphore, mpsc};
use tracing::warn;

use super::ack::{Hold, Token};
use super::assembly::StoredSpan;
use super::export::{Batch, Exporters};
use super::sampler::Mailbox;
use crate::telemetry::metrics::Metrics;
use client::{CallError, Completion, JudgeClient, RetryPolicy};
use guard::{Breaker, Permit, Spend};

/// One span to judge.
pub struct JudgeJob {
    /// The request.
    pub request: JudgeRequest,
    /// The judged span, for the evaluator span.
    pub span: StoredSpan,
    /// The inputs it came from.
    pub holds: Vec<Hold>,
}

/// What became of a span handed to the service.
#[derive(Debug)]
pub enum Submitted {
    /// Queued: its verdict follows, holding the inputs.
    Queued,
    /// Decided at once (a cached verdict, or a skip: shed, budget).
    Now(Outcome),
}

/// What a worker does when a judge's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Sheds the span at once (`skipped: shed`): online, a slow judge must never hold up the
    /// cheap scorers or the commits.
    Shed,
    /// Waits for room: offline (`evalstream eval`), every selected span gets its verdict and the
    /// wait is the backpressure that bounds the calls in memory.
    Wait,
}

/// The handle the workers queue jobs on.
pub struct JudgeService {
    /// The evaluators, for the direct calls' verdicts.
    evaluators: Arc<EvaluatorSet>,
    /// Per evaluator index: its endpoint (none for evaluators that are not judges).
    endpoints: Vec<Option<Arc<Endpoint>>>,
    queues: Vec<Option<mpsc::Sender<JudgeJob>>>,
    held: Arc<AtomicUsize>,
    when_full: WhenFull,
    runtime: Option<tokio::runtime::Runtime>,
}

/// One judge evaluator's connection and limits.
struct Endpoint {
    index: usize,
    name: String,
    client: JudgeClient,
    slots: Arc<Semaphore>,
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<DefaultDirectRateLimiter>,
    max_tokens: u32,
    cache: Option<moka::sync::Cache<u128, Outcome>>,
    spend: Mutex<Spend>,
    breaker: Mutex<Breaker>,
    price: Option<Price>,
    output: Output,
    /// Until when calls wait before they are sent: set by a 429 to what its `Retry-After` (or
    /// the backoff) asked, so the endpoint's rate limit slows every call down, not only the
    /// refused one.
    cooldown: Mutex<Option<Instant>>,
    /// How long a span's verdict is tried for while the endpoint answers 429.
    verdict_deadline: Duration,
}

/// Where verdicts go: the exporters, and the metrics they are recorded in.
#[derive(Clone)]
pub struct Output {
    /// The exporters.
    pub exporters: Arc<Exporters>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Tail sampling's mailbox, when sampling is on: every outcome is posted there for the
    /// decision on its trace.
    pub mailbox: Option<Arc<Mailbox>>,
}

fn per_minute(n: Option<u32>) -> Option<DefaultDirectRateLimiter> {
    let n = NonZeroU32::new(n?)?;
    Some(RateLimiter::direct(Quota::per_minute(n)))
}

fn unix_seconds() -> u64 {
    crate::now_unix_nanos() / 1_000_000_000
}

impl JudgeService {
    /// Starts the service when some evaluator is a judge.
    pub fn start(
        evaluators: &Arc<EvaluatorSet>,
        output: &Output,
        when_full: WhenFull,
    ) -> anyhow::Result<Option<JudgeService>> {
        if !evaluators
            .evaluators()
            .iter()
            .any(|e| e.evaluator.as_judge().is_some())
        {
            return Ok(None);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("evalstream-judge")
            .enable_all()
            .build()?;
        let builtin = PriceTable::new(true, &Default::default()).map_err(anyhow::Error::msg)?;
        let mut endpoints = Vec::with_capacity(evaluators.evaluators().len());
        let mut queues = Vec::with_capacity(evaluators.evaluators().len());
        for (index, e) in evaluators.evaluators().iter().enumerate() {
            let Some(llm) = e.evaluator.as_judge() else {
                endpoints.push(None);
                queues.push(None);
                continue;
            };
            let c = llm.config();
            let client = JudgeClient::new(
                &c.endpoint,
                c.api_key.as_ref().map(|k| k.expose()),
                &c.headers,
                Duration::from_secs_f64(c.timeout_seconds),
                RetryPolicy {
                    max_retries: c.max_retries,
                    min_delay: Duration::from_millis(200),
                    max_delay: Duration::from_secs(20),
                    max_retry_after: Duration::from_secs(60),
                },
            )
            .map_err(|m| anyhow::anyhow!("evaluators[{index}] ({}): {m}", e.name))?;
            let price = c
                .prices
                .or_else(|| builtin.lookup(&c.model).map(|(_, p)| *p));
            if price.is_none()
                && (c.budget_usd_per_hour.is_some() || c.budget_usd_per_day.is_some())
            {
                anyhow::bail!(
                    "evaluators[{index}] ({}): a budget needs the judge model's `prices` (no built-in price for `{}`)",
                    e.name,
                    c.model
                );
            }
            let endpoint = Arc::new(Endpoint {
                index,
                name: e.name.clone(),
                client,
                slots: Arc::new(Semaphore::new(c.max_concurrency)),
                requests: per_minute(c.requests_per_minute),
                tokens: per_minute(c.tokens_per_minute),
                max_tokens: c.max_tokens,
                cache: (c.cache_size > 0).then(|| {
                    moka::sync::Cache::builder()
                        .max_capacity(c.cache_size)
                        .time_to_live(Duration::from_secs_f64(c.cache_ttl_seconds))
                        .build()
                }),
                spend: Mutex::new(Spend::new(c.budget_usd_per_hour, c.budget_usd_per_day)),
                breaker: Mutex::new(Breaker::new(
                    c.breaker_failures,
                    Duration::from_secs_f64(c.breaker_cooldown_seconds),
                )),
                price,
                output: output.clone(),
                cooldown: Mutex::new(None),
                verdict_deadline: Duration::from_secs_f64(c.verdict_deadline_seconds),
            });
            output
                .metrics
                .judge_circuit_open
                .with_label_values(&[e.name.as_str()])
                .set(0);
            for (period, budget) in [
                ("hour", c.budget_usd_per_hour),
                ("day", c.budget_usd_per_day),
            ] {
                if let Some(budget) = budget {
                    output
                        .metrics
                        .judge_budget_usd
                        .with_label_values(&[e.name.as_str(), period])
                        .set(budget);
                }
            }
            let (tx, rx) = mpsc::channel(c.max_queued);
            runtime.spawn(dispatch(endpoint.clone(), rx, evaluators.clone()));
            endpoints.push(Some(endpoint));
            queues.push(Some(tx));
        }
        Ok(Some(JudgeService {
            evaluators: evaluators.clone(),
            endpoints,
            queues,
            held: Arc::new(AtomicUsize::new(0)),
            when_full,
            runtime: Some(runtime),
        }))
    }

    /// A handle that calls the judges directly and waits for the verdict (the guard API),
    /// through the same endpoints as the queued calls.
    pub fn direct(&self) -> Option<DirectJudge> {
        Some(DirectJudge {
            evaluators: self.evaluators.clone(),
            endpoints: self.endpoints.clone(),
            runtime: self.runtime.as_ref()?.handle().clone(),
        })
    }

    /// Messages held by queued and running calls (once per call).
    pub fn held(&self) -> Arc<AtomicUsize> {
        self.held.clone()
    }

    /// Hands a span's request for evaluator `index` to the service, holding `tokens` when it is
    /// queued. A cached verdict, a spent budget or a full queue decide it at once.
    pub fn submit(
        &self,
        index: usize,
        request: JudgeRequest,
        span: impl FnOnce() -> StoredSpan,
        tokens: &[Token],
    ) -> Submitted {
        let (Some(Some(endpoint)), Some(Some(queue))) =
            (self.endpoints.get(index), self.queues.get(index))
        else {
            return Submitted::Now(Outcome::not_applicable("not a judge"));
        };
        if let Some(outcome) = endpoint.not_to_send(&request) {
            return Submitted::Now(outcome);
        }
        let holds = tokens.iter().map(|t| Hold::new(t, &self.held)).collect();
        let job = JudgeJob {
            request,
            span: span(),
            holds,
        };
        let sent = match self.when_full {
            WhenFull::Shed => queue.try_send(job).is_ok(),
            // Workers and trace-buffer shards are plain threads, never inside the runtime.
            WhenFull::Wait => queue.blocking_send(job).is_ok(),
        };
        match sent {
            true => Submitted::Queued,
            false => {
                endpoint.not_sent("shed");
                Submitted::Now(Outcome::Skipped {
                    reason: SkipReason::Shed,
                    detail: "the judge's queue is full".into(),
                })
            }
        }
    }
}

impl Drop for JudgeService {
    fn drop(&mut self) {
        // Close the queues, then let running calls finish (each holds its input uncommitted
        // until then) for up to the drain time.
        self.queues.clear();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(30));
        }
    }
}

/// Takes an evaluator's jobs in order, running each once a request slot is free.
async fn dispatch(
    endpoint: Arc<Endpoint>,
    mut jobs: mpsc::Receiver<JudgeJob>,
    evaluators: Arc<EvaluatorSet>,
) {
    while let Some(job) = jobs.recv().await {
        let Ok(slot) = endpoint.slots.clone().acquire_owned().await else {
            return;
        };
        let (endpoint, evaluators) = (endpoint.clone(), evaluators.clone());
        tokio::spawn(async move {
            let e = &evaluators.evaluators()[endpoint.index];
            let started = Instant::now();
            let start_nanos = crate::now_unix_nanos();
            // The call and the reading of its reply run in a task of their own: a panic there
            // (a hostile reply once panicked the reader) ends that task only, and becomes this
            // span's `error` outcome here. The job, which holds the inputs, stays with this task,
            // so the verdict is always delivered and the inputs always let go.
            let call = tokio::spawn({
                let (endpoint, evaluators) = (endpoint.clone(), evaluators.clone());
                let request = job.request.clone();
                async move { endpoint.judge(&request, &evaluators).await }
            });
            let (completion, outcome) = match call.await {
                Ok(done) => done,
                Err(e) => {
                    warn!(evaluator = %endpoint.name, error = %e, "the judge call panicked");
                    let outcome = Outcome::Error {
                        error_type: "panic".into(),
                        message: "the judge call panicked; see the worker's log".into(),
                    };
                    (None, outcome)
                }
            };
            drop(slot);
            deliver(
                &endpoint,
                e,
                &job,
                outcome,
                completion.as_ref(),
                start_nanos,
                started.elapsed(),
            );
        });
    }
}

/// Calls the judges directly and waits for each verdict, up to a deadline: what the guard API
/// needs to run an `llm_judge` inside a request. Each call goes through the judge's own endpoint
/// (its cache, spend budget, breaker, rate limits, concurrency limit, retries and metrics), so a
/// guard set cannot reach the model past the limits the stream's calls keep. The call runs on
/// the judge service's runtime; a caller that stops waiting (its deadline passed) aborts it, so
/// abandoned calls never pile up behind a slow endpoint.
///
/// It holds a handle to the service's runtime, not the runtime: once the service has stopped,
/// a call is an `error` verdict.
#[derive(Clone)]
pub struct DirectJudge {
    evaluators: Arc<EvaluatorSet>,
    endpoints: Vec<Option<Arc<Endpoint>>>,
    runtime: tokio::runtime::Handle,
}

impl DirectJudge {
    /// Starts the call of evaluator `index` (a judge) on `request`; a cached verdict or a spent
    /// budget is decided at once. Calls started together run at once: [`Verdict::until`] each
    /// against one deadline.
    pub fn start(&self, index: usize, request: JudgeRequest) -> Verdict {
        let Some(Some(endpoint)) = self.endpoints.get(index).cloned() else {
            return Verdict::Now(Outcome::not_applicable("not a judge"));
        };
        if let Some(outcome) = endpoint.not_to_send(&request) {
            return Verdict::Now(outcome);
        }
        let evaluators = self.evaluators.clone();
        Verdict::Calling(self.runtime.spawn(async move {
            let Ok(_slot) = endpoint.slots.clone().acquire_owned().await else {
                return stopped();
            };
            endpoint.judge(&request, &evaluators).await.1
        }))
    }
}

/// A direct call's verdict, decided or on its way.
pub enum Verdict {
    /// Decided without a call.
    Now(Outcome),
    /// The call, running on the judge service's runtime.
    Calling(tokio::task::JoinHandle<Outcome>),
}

impl Verdict {
    /// The verdict, or an `error` outcome (`timeout`) when none came by `deadline` (the call is
    /// then aborted); `allowed` is how long the caller allowed, for the message.
    ///
    /// A caller that stops waiting earlier (a gRPC client's own `grpc-timeout` passed, an HTTP
    /// client went away) drops this future, which aborts the call too.
    pub async fn until(self, deadline: tokio::time::Instant, allowed: Duration) -> Outcome {
        let call = match self {
            Verdict::Now(outcome) => return outcome,
            Verdict::Calling(call) => call,
        };
        let mut call = AbortOnDrop(call);
        match tokio::time::timeout_at(deadline, &mut call.0).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) if e.is_panic() => Outcome::Error {
                error_type: "panic".into(),
                message: "the judge call panicked; see the worker's log".into(),
            },
            Ok(Err(_)) => stopped(),
            Err(_) => {
                // Aborted as `call` is dropped.
                Outcome::Error {
                    error_type: "timeout".into(),
                    message: format!(
                        "no verdict within the deadline of {} ms",
                        allowed.as_millis()
                    ),
                }
            }
        }
    }
}

/// A running call, aborted when it is no longer awaited (a no-op once it has finished).
struct AbortOnDrop(tokio::task::JoinHandle<Outcome>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The outcome of a call the stopped service could not make.
fn stopped() -> Outcome {
    Outcome::Error {
        error_type: "judge_stopped".into(),
        message: "the judge service has stopped".into(),
    }
}

impl Endpoint {
    /// A call's verdict, with the completion when the endpoint answered; a score is cached.
    async fn judge(
        &self,
        request: &JudgeRequest,
        evaluators: &EvaluatorSet,
    ) -> (Option<Completion>, Outcome) {
        let result = self.call(request).await;
        let outcome = match (
            &result,
            evaluators.evaluators()[self.index].evaluator.as_judge(),
        ) {
            (Some(result), Some(llm)) => verdict(llm, result),
            (Some(_), None) => Outcome::not_applicable("not a judge"),
            (None, _) => Outcome::Error {
                error_type: "judge_circuit_open".into(),
                message: "the judge endpoint failed repeatedly; calls are paused".into(),
            },
        };
        if let (Some(cache), Outcome::Scored(_)) = (&self.cache, &outcome) {
            cache.insert(request.cache_key, outcome.clone());
        }
        (result.and_then(Result::ok), outcome)
    }

    /// The outcome of a request decided without a call — a cached verdict, or a spent budget —
    /// counted as not sent.
    fn not_to_send(&self, request: &JudgeRequest) -> Option<Outcome> {
        if let Some(outcome) = self.cache.as_ref().and_then(|c| c.get(&request.cache_key)) {
            self.not_sent("cache_hit");
            return Some(outcome);
        }
        if !self
            .spend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allows(unix_seconds())
        {
            self.not_sent("budget");
            return Some(Outcome::Skipped {
                reason: SkipReason::Budget,
                detail: "the judge's spend budget for the period is used up".into(),
            });
        }
        None
    }

    /// Counts a span not sent to the judge, and why.
    fn not_sent(&self, reason: &str) {
        self.output
            .metrics
            .judge_not_sent
            .with_label_values(&[self.name.as_str(), reason])
            .inc();
    }
}

impl Endpoint {
    /// One call through the breaker, the rate limits and the retries; `None` when the circuit
    /// is open. Records the call's metrics, spend and the breaker's state.
    async fn call(&self, request: &JudgeRequest) -> Option<Result<Completion, CallError>> {
        let metrics = &self.output.metrics;
        let name = self.name.as_str();
        if self
            .breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .permit(Instant::now())
            == Permit::Refused
        {
            self.not_sent("circuit_open");
            return None;
        }
        if let Some(limiter) = &self.requests {
            limiter.until_ready().await;
        }
        if let Some(limiter) = &self.tokens {
            let estimate = request.body.to_string().len() as u32 / 4 + self.max_tokens;
            if let Some(n) = NonZeroU32::new(estimate) {
                // More than a minute's tokens in one request: let it through rather than never.
                let _ = limiter.until_n_ready(n).await;
            }
        }
        let started = Instant::now();
        let result = loop {
            self.wait_for_cooldown().await;
            let result = self
                .client
                .call(&request.body, |e, wait| {
                    metrics
                        .judge_retries
                        .with_label_values(&[name, e.error_type()])
                        .inc();
                    if is_rate_limited(e) {
                        self.cool_down(wait);
                    }
                    warn!(evaluator = %name, error = %e, wait = ?wait, "retrying the judge");
                })
                .await;
            // Rate limited past the client's retries: the endpoint is up and asks for a slower
            // pace, so this span's verdict waits its turn again, up to its deadline.
            match &result {
                Err(
                    e @ CallError::Status {
                        status: 429,
                        retry_after,
                        ..
                    },
                ) if started.elapsed() < self.verdict_deadline
                    // A wait longer than the client honours gives up, as the client does.
                    && retry_after.is_none_or(|w| w <= self.client.max_retry_after()) =>
                {
                    self.cool_down(retry_after.unwrap_or(Duration::from_secs(1)));
                    metrics
                        .judge_retries
                        .with_label_values(&[name, e.error_type()])
                        .inc();
                }
                _ => break result,
            }
        };
        metrics
            .judge_latency_seconds
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.error_type(),
        };
        metrics.judge_calls.with_label_values(&[name, label]).inc();
        // Only the endpoint's failures count against it; a rejected request does not, nor a
        // rate limit (the endpoint is up and said when to come back).
        let failed = result
            .as_ref()
            .err()
            .is_some_and(|e| e.is_retryable() && !is_rate_limited(e));
        let opened = {
            let mut breaker = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
            let opened = breaker.record(!failed, Instant::now());
            metrics
                .judge_circuit_open
                .with_label_values(&[name])
                .set(i64::from(breaker.is_open()));
            opened
        };
        if opened {
            warn!(evaluator = %name, "judge circuit opened: calls paused");
        }
        if let Ok(c) = &result {
            metrics
                .judge_tokens
                .with_label_values(&[name, "input"])
                .inc_by(c.input_tokens);
            metrics
                .judge_tokens
                .with_label_values(&[name, "output"])
                .inc_by(c.output_tokens);
            if let Some(price) = &self.price {
                let usage = TokenUsage {
                    input: Some(c.input_tokens),
                    output: Some(c.output_tokens),
                    ..Default::default()
                };
                if let Some(cost) = PriceTable::cost(price, &usage) {
                    self.spend
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .add(unix_seconds(), cost.total_usd);
                    metrics
                        .judge_spend_usd
                        .with_label_values(&[name])
                        .inc_by(cost.total_usd);
                }
            }
        }
        Some(result)
    }
}

impl Endpoint {
    /// Waits until the endpoint's cooldown has passed.
    async fn wait_for_cooldown(&self) {
        loop {
            let until = *self.cooldown.lock().unwrap_or_else(|e| e.into_inner());
            match until {
                Some(until) if until > Instant::now() => {
                    tokio::time::sleep_until(until.into()).await;
                }
                _ => return,
            }
        }
    }

    /// Holds every call back for `wait` from now (never shortening a longer cooldown).
    fn cool_down(&self, wait: Duration) {
        let Some(until) = Instant::now().checked_add(wait) else {
            return;
        };
        let mut cooldown = self.cooldown.lock().unwrap_or_else(|e| e.into_inner());
        if cooldown.is_none_or(|c| c < until) {
            *cooldown = Some(until);
        }
    }
}

/// Whether the endpoint refused for its rate limit (429).
fn is_rate_limited(e: &CallError) -> bool {
    matches!(e, CallError::Status { status: 429, .. })
}

/// The outcome of a call.
fn verdict(llm: &LlmJudge, result: &Result<Completion, CallError>) -> Outcome {
    match result {
        Ok(c) => match &c.refusal {
            Some(refusal) => judge::refused(refusal),
            None => llm.conclude(&c.content),
        },
        Err(e) => Outcome::Error {
            error_type: e.error_type().into(),
            message: e.to_string(),
        },
    }
}

/// The judge's own telemetry on its evaluator span: which model judged, its token usage and, when
/// the model's price is known, the call's cost (`evalstream.judge.cost_usd`: GenAI conventions
/// have no cost attribute). The span's duration is the call's latency, retries included.
fn judge_attributes(
    requested_model: &str,
    completion: Option<&Completion>,
    price: Option<&Price>,
) -> Vec<KeyValue> {
    let mut attributes = vec![otlp::kv_str("gen_ai.request.model", requested_model)];
    let Some(c) = completion else {
        return attributes;
    };
    if let Some(model) = &c.model {
        // The judge names its model: capped like every string on an evaluator span.
        let model = to_otlp::capped(model, to_otlp::MAX_NAME_BYTES);
        attributes.push(otlp::kv_str("gen_ai.response.model", model.as_ref()));
    }
    for (key, tokens) in [
        ("gen_ai.usage.input_tokens", c.input_tokens),
        ("gen_ai.usage.output_tokens", c.output_tokens),
    ] {
        attributes.push(otlp::kv(key, OtlpValue::IntValue(tokens as i64)));
    }
    let usage = TokenUsage {
        input: Some(c.input_tokens),
        output: Some(c.output_tokens),
        ..Default::default()
    };
    if let Some(cost) = price.and_then(|p| PriceTable::cost(p, &usage)) {
        attributes.push(otlp::kv(
            "evalstream.judge.cost_usd",
            OtlpValue::DoubleValue(cost.total_usd),
        ));
    }
    attributes
}

/// Records and sends the evaluation of a job, then lets go of its inputs.
fn deliver(
    endpoint: &Endpoint,
    e: &ConfiguredEvaluator,
    job: &JudgeJob,
    outcome: Outcome,
    completion: Option<&Completion>,
    start: u64,
    took: Duration,
) {
    let decoded = job.span.decode();
    let span = decoded.view();
    let evaluation = e.evaluation(&span, outcome);
    let output = &endpoint.output;
    output.metrics.record(endpoint.index, &evaluation, &span);
    if let Some(mailbox) = &output.mailbox {
        mailbox.post(span.trace_id(), evaluation.evaluator, &evaluation.outcome);
    }
    let shapes = output.exporters.shapes();
    if !shapes.any() {
        return;
    }
    let end = start + took.as_nanos() as u64;
    let extra = match e.evaluator.as_judge() {
        Some(llm) => judge_attributes(&llm.config().model, completion, endpoint.price.as_ref()),
        None => Vec::new(),
    };
    let mut batch = Batch::new(span.trace_id());
    batch.add(
        shapes,
        &span,
        std::slice::from_ref(&evaluation),
        (start, end),
        &extra,
    );
    let tokens: Vec<Token> = job.holds.iter().map(|h| h.token().clone()).collect();
    output.exporters.export(batch, &tokens);
}

#[cfg(test)]
mod tests;
