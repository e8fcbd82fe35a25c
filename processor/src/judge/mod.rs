//! The LLM judge service: sends judge evaluators' requests to their endpoints without ever
//! blocking the workers, and produces the verdicts as evaluator spans.
//!
//! Each judge evaluator has its own bounded queue, its own limit on requests in flight and its
//! own HTTP client ([`client`]). A worker that meets a span for a judge renders the request (the
//! evaluators crate's pure half), takes a [`Hold`] on the input message and queues the job; when
//! the queue is full the span is shed at once (`skipped: shed`), so a slow or failing judge
//! costs its own evaluations and never the cheap scorers' throughput. The hold keeps the input
//! uncommitted until the verdict — a score, an error or a skip — is queued for output.
//!
//! The jobs run on this service's own async runtime (one thread: the work is waiting on the
//! network), each behind its evaluator's semaphore, retried by the client.

pub mod client;
pub mod server;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use evalstream_evaluators::evaluator::{EvaluatorSet, Outcome};
use evalstream_evaluators::otlp;
use evalstream_evaluators::scorers::judge::{self, JudgeRequest, LlmJudge};
use evalstream_evaluators::to_otlp;
use prost::Message as _;
use tokio::sync::{Semaphore, mpsc};
use tracing::warn;

use crate::assembly::StoredSpan;
use crate::kafka::sink::{Hold, Pending};
use crate::worker::Judge;
use client::{CallError, Completion, JudgeClient, RetryPolicy};

/// One span to judge.
pub struct JudgeJob {
    /// The evaluator's index in the set.
    pub evaluator: usize,
    /// The request.
    pub request: JudgeRequest,
    /// The judged span, for the evaluator span.
    pub span: StoredSpan,
    /// The input messages it came from.
    pub holds: Vec<Hold>,
}

/// The handle the workers queue jobs on.
pub struct JudgeService {
    /// Per evaluator index: its queue (none for evaluators that are not judges).
    queues: Vec<Option<mpsc::Sender<JudgeJob>>>,
    held: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Endpoint {
    index: usize,
    client: JudgeClient,
    slots: Arc<Semaphore>,
}

impl JudgeService {
    /// Starts the service when some evaluator is a judge.
    pub fn start(
        evaluators: &Arc<EvaluatorSet>,
        output: &Arc<Judge>,
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
        let mut queues = Vec::with_capacity(evaluators.evaluators().len());
        for (index, e) in evaluators.evaluators().iter().enumerate() {
            let Some(llm) = e.evaluator.as_judge() else {
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
            let (tx, rx) = mpsc::channel(c.max_queued);
            let endpoint = Arc::new(Endpoint {
                index,
                client,
                slots: Arc::new(Semaphore::new(c.max_concurrency)),
            });
            runtime.spawn(dispatch(endpoint, rx, evaluators.clone(), output.clone()));
            queues.push(Some(tx));
        }
        Ok(Some(JudgeService {
            queues,
            held: Arc::new(AtomicUsize::new(0)),
            runtime: Some(runtime),
        }))
    }

    /// Queues a job for evaluator `index` holding `inputs`; gives the job back when the queue
    /// is full (the caller sheds the span).
    pub fn submit<'p>(
        &self,
        index: usize,
        request: JudgeRequest,
        span: StoredSpan,
        inputs: impl Iterator<Item = &'p Arc<Pending>>,
    ) -> bool {
        let Some(Some(queue)) = self.queues.get(index) else {
            return false;
        };
        let holds = inputs.map(|p| Hold::new(p, &self.held)).collect();
        queue
            .try_send(JudgeJob {
                evaluator: index,
                request,
                span,
                holds,
            })
            .is_ok()
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
    output: Arc<Judge>,
) {
    while let Some(job) = jobs.recv().await {
        let Ok(slot) = endpoint.slots.clone().acquire_owned().await else {
            return;
        };
        let (endpoint, evaluators, output) = (endpoint.clone(), evaluators.clone(), output.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let start_nanos = crate::now_unix_nanos();
            let name = &evaluators.evaluators()[endpoint.index].name;
            let result = endpoint
                .client
                .call(&job.request.body, |e, wait| {
                    warn!(evaluator = %name, error = %e, wait = ?wait, "retrying the judge");
                })
                .await;
            drop(slot);
            let e = &evaluators.evaluators()[job.evaluator];
            let Some(llm) = e.evaluator.as_judge() else {
                return;
            };
            let outcome = verdict(llm, &result);
            deliver(
                &output,
                e,
                &job,
                outcome,
                &result,
                start_nanos,
                started.elapsed(),
            );
        });
    }
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

/// Records and sends the evaluation of a job, then lets go of its inputs.
fn deliver(
    output: &Judge,
    e: &evalstream_evaluators::evaluator::ConfiguredEvaluator,
    job: &JudgeJob,
    outcome: Outcome,
    result: &Result<Completion, CallError>,
    start: u64,
    took: Duration,
) {
    let decoded = job.span.decode();
    let span = decoded.view();
    let evaluation = e.evaluation(&span, outcome);
    output.metrics.record(job.evaluator, &evaluation, &span);
    if !output.sink.has_output() || !to_otlp::emits_span(&evaluation) {
        return;
    }
    let end = start + took.as_nanos() as u64;
    let mut out = to_otlp::evaluation_span(&span, &evaluation, start, end);
    // The judge's own telemetry: which model judged, at what token cost.
    if let Some(llm) = e.evaluator.as_judge() {
        out.attributes.push(otlp::kv_str(
            "gen_ai.request.model",
            llm.config().model.as_str(),
        ));
    }
    if let Ok(c) = result {
        if let Some(model) = &c.model {
            out.attributes
                .push(otlp::kv_str("gen_ai.response.model", model.as_str()));
        }
        out.attributes.push(otlp::kv(
            "gen_ai.usage.input_tokens",
            opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(
                c.input_tokens as i64,
            ),
        ));
        out.attributes.push(otlp::kv(
            "gen_ai.usage.output_tokens",
            opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(
                c.output_tokens as i64,
            ),
        ));
    }
    let payload = to_otlp::export_request(vec![out]).encode_to_vec();
    output.sink.output(
        &otlp::hex(span.trace_id()),
        &payload,
        job.holds.iter().map(Hold::pending),
    );
}
