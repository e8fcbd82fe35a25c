//! In-request checks: the guard API (`evalstream.v1.Guard`, `proto/evalstream/v1/guard.proto`)
//! that an application calls before it shows an answer (`Check`) or calls a model (`Budget`),
//! served by the same process as the streaming worker, over gRPC ([`grpc`]) and HTTP/JSON
//! ([`http`]).
//!
//! **Check** runs a guard set's evaluators — the same configured evaluators the stream runs, so a
//! verdict in the request is the verdict online — on a span made from the request (the input
//! messages and output text as `gen_ai.input.messages` / `gen_ai.output.messages`, the attributes
//! as span attributes), or on the model-call span of an OTLP request given instead. The cheap
//! evaluators take microseconds; an LLM judge is called directly through its endpoint's limits
//! ([`DirectJudge`]) and waited for up to the set's `judge_deadline_ms`. The answer is `BLOCK`
//! when an evaluator the set's `block_when` names failed (or a judge erred, where the set fails
//! closed), else `REDACT` when the set redacts and the
//! text held personal data (the masked text comes with it), else `ALLOW`. Each check's verdicts
//! also go to the exporters ([`events`]), as `gen_ai.evaluation.result` events and one
//! `gen_ai.guardrail.result` event, so in-request and online verdicts are one stream.
//!
//! **Budget** answers from the span stream's spend ([`crate::pipeline::budgets`]), shared by the
//! workers of a consumer group through a compacted topic ([`share`]).

pub mod events;
pub mod grpc;
pub mod http;
pub mod share;

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use evalstream_evaluators::evaluator::{ConfiguredEvaluator, Evaluation, EvaluatorSet, Outcome};
use evalstream_evaluators::otlp::{self, Encoding};
use evalstream_evaluators::scorers::pii::{self, PiiKind};
use evalstream_evaluators::span::{self, GenAiSpan, OperationKind, ResourceView};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use evalstream_evaluators::scorers::judge::JudgeRequest;

use crate::config::guard::{GuardSetConfig, OnJudgeError};
use crate::pipeline::budgets::{Budgets, QueryError};
use crate::pipeline::evaluate::run_guarded;
use crate::pipeline::judge::DirectJudge;

/// The API's messages and service, generated from `proto/evalstream/v1/guard.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("evalstream.v1");
}

use proto::{Action, BudgetRequest, BudgetResponse, CheckRequest, CheckResponse, Message, Verdict};

/// Why a request has no answer: what the client did wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// A required field is missing or a value is malformed (gRPC `INVALID_ARGUMENT`, HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// No guard set or budget of that name (gRPC `NOT_FOUND`, HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// A bug: the check panicked outside the evaluators' own guard (gRPC `INTERNAL`, HTTP 500).
    #[error("{0}")]
    Internal(String),
}

impl From<QueryError> for GuardError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Unknown { .. } => GuardError::NotFound(e.to_string()),
            QueryError::MissingKey { .. } => GuardError::Invalid(e.to_string()),
        }
    }
}

/// One guard set, resolved against the evaluators.
struct GuardSet {
    /// Indexes into the evaluator set.
    evaluators: Vec<usize>,
    /// Indexes whose failure blocks.
    blocking: Vec<usize>,
    /// Kinds redacted, when the set redacts.
    redact: Option<Vec<PiiKind>>,
    /// How long a check waits for the set's judges.
    judge_deadline: Duration,
    /// Whether a blocking judge's `error` verdict blocks.
    judge_errors_block: bool,
}

/// The guard sets, the budgets and where verdicts go: what both listeners share.
pub struct Guards {
    evaluators: Arc<EvaluatorSet>,
    sets: BTreeMap<String, GuardSet>,
    budgets: Option<Arc<Budgets>>,
    judges: Option<DirectJudge>,
    events: Option<events::Events>,
    checks: IntCounterVec,
    seconds: HistogramVec,
}

impl Guards {
    /// The sets of `config` over `evaluators` (names checked already by the configuration),
    /// answering budgets from `budgets`, calling LLM judges through `judges`, sending verdicts
    /// to `events`; metrics on `registry`.
    pub fn new(
        config: &BTreeMap<String, GuardSetConfig>,
        evaluators: Arc<EvaluatorSet>,
        (budgets, judges): (Option<Arc<Budgets>>, Option<DirectJudge>),
        events: Option<events::Events>,
        registry: &Registry,
    ) -> prometheus::Result<Guards> {
        let index = |name: &str| evaluators.evaluators().iter().position(|e| e.name == name);
        let sets = config
            .iter()
            .map(|(name, set)| {
                let members: Vec<usize> = set.evaluators.iter().filter_map(|e| index(e)).collect();
                let blocking = if set.block_when.iter().any(|b| b == "*") {
                    members.clone()
                } else {
                    set.block_when.iter().filter_map(|e| index(e)).collect()
                };
                let guard = GuardSet {
                    evaluators: members,
                    blocking,
                    redact: set.redact.as_ref().map(|r| r.kinds.clone()),
                    judge_deadline: Duration::from_millis(set.judge_deadline_ms.unwrap_or(0)),
                    judge_errors_block: set.on_judge_error == OnJudgeError::Block,
                };
                (name.clone(), guard)
            })
            .collect();
        let checks = IntCounterVec::new(
            Opts::new(
                "evalstream_guard_checks_total",
                "Guard checks answered, by guard set and action (allow, block, redact).",
            ),
            &["guard", "action"],
        )?;
        registry.register(Box::new(checks.clone()))?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "evalstream_guard_check_seconds",
                "Time a guard check's evaluators took, its LLM judges' wait included, by guard set.",
            )
            // Microseconds for the cheap evaluators, up to seconds for a set with a judge.
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0,
                2.5, 10.0,
            ]),
            &["guard"],
        )?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(Guards {
            evaluators,
            sets,
            budgets,
            judges,
            events,
            checks,
            seconds,
        })
    }

    /// Answers a check. The cheap evaluators are CPU work of microseconds, run on the guard's
    /// own runtime threads ([`serve`]); a set's LLM judges are awaited, concurrently, up to the
    /// set's `judge_deadline_ms`. A panic outside the evaluators' own guard (a bug) is answered
    /// as an internal error, not a lost listener.
    pub async fn check(&self, request: CheckRequest) -> Result<CheckResponse, GuardError> {
        let started = Instant::now();
        let mut check = guarded(|| self.evaluate(&request))?;
        if !check.judging.is_empty() {
            let Some(judges) = &self.judges else {
                return Err(GuardError::Internal("the judges are not running".into()));
            };
            let set = check.set;
            // Every call starts at once; each is awaited against the one deadline.
            let deadline = tokio::time::Instant::now() + set.judge_deadline;
            let calls: Vec<_> = std::mem::take(&mut check.judging)
                .into_iter()
                .map(|(slot, index, call)| (slot, judges.start(index, call)))
                .collect();
            let mut outcomes = Vec::with_capacity(calls.len());
            for (slot, call) in calls {
                outcomes.push((slot, call.until(deadline, set.judge_deadline).await));
            }
            guarded(|| {
                let view = check.checked.view();
                let all = self.evaluators.evaluators();
                for (slot, outcome) in outcomes {
                    let index = check.order[slot];
                    check.made[slot] = Some(all[index].evaluation(&view, outcome));
                }
                Ok(())
            })?;
        }
        guarded(|| Ok(self.answer(&request, &mut check, started)))
    }

    /// The first part of a check: the set's cheap evaluators run, its judges' requests made.
    fn evaluate(&self, request: &CheckRequest) -> Result<Check<'_>, GuardError> {
        let Some(set) = self.sets.get(&request.guard) else {
            return Err(if request.guard.is_empty() {
                GuardError::Invalid("`guard`: name the guard set to run".into())
            } else {
                GuardError::NotFound(format!(
                    "no guard set is named `{}` (configured: {})",
                    request.guard,
                    self.sets.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            });
        };
        let checked = Checked::of(request)?;
        let view = checked.view();
        let all = self.evaluators.evaluators();
        let mut check = Check {
            set,
            order: Vec::with_capacity(set.evaluators.len()),
            made: Vec::with_capacity(set.evaluators.len()),
            judging: Vec::new(),
            checked: Checked::default(),
        };
        for &i in &set.evaluators {
            let e = &all[i];
            if !e.applies(&view, None) {
                continue;
            }
            let evaluation = match (
                self.refused_by_cascade(e, &view, &check),
                e.evaluator.as_judge(),
            ) {
                (Some(skip), _) => Some(e.evaluation(&view, skip)),
                // The judge's slot stays empty until its verdict comes.
                (None, Some(llm)) => match llm.request(&view, None) {
                    Ok(call) => {
                        check.judging.push((check.made.len(), i, call));
                        None
                    }
                    Err(outcome) => Some(e.evaluation(&view, outcome)),
                },
                (None, None) => Some(run_guarded(e, &view, None)),
            };
            check.order.push(i);
            check.made.push(evaluation);
        }
        drop(view);
        check.checked = checked;
        Ok(check)
    }

    /// The skip of an evaluator whose `when` does not hold on the checked span, as in the
    /// stream: an earlier evaluator of the set is read from the check so far, one outside the set
    /// is run for it (a judge outside the set counts as not having scored).
    fn refused_by_cascade(
        &self,
        e: &ConfiguredEvaluator,
        view: &GenAiSpan<'_>,
        check: &Check<'_>,
    ) -> Option<Outcome> {
        if e.when.is_empty() {
            return None;
        }
        let all = self.evaluators.evaluators();
        let elsewhere: Vec<(usize, Option<Evaluation<'_>>)> = e
            .when
            .dependencies()
            .filter(|i| !check.order.contains(i))
            .map(|i| {
                let dependency = &all[i];
                let cheap = dependency.evaluator.as_judge().is_none();
                let judged = cheap && dependency.applies(view, None);
                (i, judged.then(|| run_guarded(dependency, view, None)))
            })
            .collect();
        e.when.refuses(|i| {
            if let Some((_, evaluation)) = elsewhere.iter().find(|(j, _)| *j == i) {
                return evaluation.as_ref().map(|m| &m.outcome);
            }
            let slot = check.order.iter().position(|&j| j == i)?;
            check.made[slot].as_ref().map(|m| &m.outcome)
        })
    }

    /// The answer to a check whose evaluations are all made: the action, the verdicts, the
    /// redacted text; its metrics and events.
    fn answer(
        &self,
        request: &CheckRequest,
        check: &mut Check<'_>,
        started: Instant,
    ) -> CheckResponse {
        let set = check.set;
        let evaluations: Vec<Evaluation<'_>> = check.made.drain(..).flatten().collect();
        let mut verdicts = Vec::with_capacity(evaluations.len());
        let mut blocked = false;
        for (evaluation, &i) in evaluations.iter().zip(&check.order) {
            let mut verdict = verdict_of(evaluation);
            let fails = match &evaluation.outcome {
                Outcome::Scored(s) => !s.passed,
                Outcome::Error { .. } => {
                    set.judge_errors_block
                        && self.evaluators.evaluators()[i]
                            .evaluator
                            .as_judge()
                            .is_some()
                }
                Outcome::Skipped { .. } => false,
            };
            verdict.blocks = fails && set.blocking.contains(&i);
            blocked |= verdict.blocks;
            verdicts.push(verdict);
        }
        let mut response = CheckResponse {
            action: Action::Allow as i32,
            verdicts,
            guard: request.guard.clone(),
            ..Default::default()
        };
        if let Some(kinds) = &set.redact
            && let Some((messages, output)) = redacted(request, kinds)
        {
            response.redacted_input_messages = messages;
            response.redacted_output_text = output;
            response.action = Action::Redact as i32;
        }
        if blocked {
            response.action = Action::Block as i32;
            response.redacted_input_messages.clear();
            response.redacted_output_text.clear();
        }
        let took = started.elapsed();
        response.took_micros = took.as_micros() as u64;
        let action = action_name(response.action);
        self.checks
            .with_label_values(&[request.guard.as_str(), action])
            .inc();
        self.seconds
            .with_label_values(&[request.guard.as_str()])
            .observe(took.as_secs_f64());
        if let Some(events) = &self.events {
            let target = if request.output_text.is_empty() && request.otlp_trace.is_empty() {
                "llm_input"
            } else {
                "llm_output"
            };
            events.send(
                (&request.guard, target, action),
                &check.checked.view(),
                &evaluations,
            );
        }
        response
    }

    /// Answers a budget query.
    pub fn budget(&self, request: &BudgetRequest) -> Result<BudgetResponse, GuardError> {
        if request.budget.is_empty() {
            return Err(GuardError::Invalid("`budget`: name the budget".into()));
        }
        let Some(budgets) = &self.budgets else {
            return Err(GuardError::NotFound(format!(
                "no budget is named `{}` (none are configured)",
                request.budget
            )));
        };
        let standing = budgets.query(&request.budget, &request.attributes)?;
        Ok(BudgetResponse {
            action: if standing.allows() {
                Action::Allow
            } else {
                Action::Block
            } as i32,
            spent: standing.spent,
            limit: standing.limit,
            remaining: standing.remaining(),
            unit: standing.unit.as_str().into(),
            window_start_unix: standing.window.0 as i64,
            window_end_unix: standing.window.1 as i64,
            key: standing.key,
        })
    }
}

/// The name of an action, for metrics and events.
pub fn action_name(action: i32) -> &'static str {
    match Action::try_from(action) {
        Ok(Action::Block) => "block",
        Ok(Action::Redact) => "redact",
        Ok(Action::Allow) => "allow",
        _ => "unspecified",
    }
}

/// Runs a step of a check, a panic (a bug outside the evaluators' own guard) becoming an
/// internal error.
fn guarded<T>(step: impl FnOnce() -> Result<T, GuardError>) -> Result<T, GuardError> {
    catch_unwind(AssertUnwindSafe(step)).unwrap_or_else(|panic| {
        Err(GuardError::Internal(format!(
            "the check failed: {}",
            crate::pipeline::evaluate::panic_message(panic.as_ref())
        )))
    })
}

fn verdict_of(evaluation: &Evaluation<'_>) -> Verdict {
    let mut verdict = Verdict {
        evaluator: evaluation.evaluator.to_owned(),
        ..Default::default()
    };
    match &evaluation.outcome {
        Outcome::Scored(score) => {
            verdict.outcome = "scored".into();
            verdict.score = score.value;
            verdict.label = score.label.to_string();
            verdict.passed = score.passed;
            verdict.explanation = score.explanation.clone();
        }
        Outcome::Skipped { reason, detail } => {
            verdict.outcome = "skipped".into();
            verdict.label = reason.as_str().into();
            verdict.explanation = detail.to_string();
        }
        Outcome::Error {
            error_type,
            message,
        } => {
            verdict.outcome = "error".into();
            verdict.label = error_type.to_string();
            verdict.explanation = message.clone();
        }
    }
    verdict
}

/// The request's input messages and output with personal data of `kinds` masked, when any was
/// found.
fn redacted(request: &CheckRequest, kinds: &[PiiKind]) -> Option<(Vec<Message>, String)> {
    let mut found = false;
    let mut mask = |text: &str| {
        let (masked, findings) = pii::mask(text, kinds);
        found |= !findings.is_empty();
        masked.into_owned()
    };
    let messages = request
        .input_messages
        .iter()
        .map(|m| Message {
            role: m.role.clone(),
            content: mask(&m.content),
        })
        .collect();
    let output = mask(&request.output_text);
    found.then_some((messages, output))
}

/// A check under way: its set, the evaluations made in the set's order (a judge's slot empty
/// until its verdict comes), and the judges' calls to make (slot, evaluator, request).
struct Check<'g> {
    set: &'g GuardSet,
    order: Vec<usize>,
    made: Vec<Option<Evaluation<'g>>>,
    judging: Vec<(usize, usize, JudgeRequest)>,
    checked: Checked,
}

/// What a check judges: a span made from the request's fields, or the request's OTLP span.
#[derive(Default)]
struct Checked {
    request: Option<ExportTraceServiceRequest>,
    span: Span,
}

impl Checked {
    fn of(request: &CheckRequest) -> Result<Checked, GuardError> {
        let id = |hex: &str, len: usize, field: &str| -> Result<Vec<u8>, GuardError> {
            if hex.is_empty() {
                return Ok(Vec::new());
            }
            match const_hex::decode(hex) {
                Ok(bytes) if bytes.len() == len => Ok(bytes),
                _ => Err(GuardError::Invalid(format!(
                    "`{field}`: {} hex digits expected",
                    len * 2
                ))),
            }
        };
        let trace_id = id(&request.trace_id, 16, "trace_id")?;
        let span_id = id(&request.span_id, 8, "span_id")?;
        if !request.otlp_trace.is_empty() {
            let decoded = otlp::decode(&request.otlp_trace, Encoding::OtlpProto)
                .map_err(|e| GuardError::Invalid(format!("`otlp_trace`: {e}")))?;
            if otlp::span_count(&decoded) == 0 {
                return Err(GuardError::Invalid("`otlp_trace`: holds no span".into()));
            }
            return Ok(Checked {
                request: Some(decoded),
                span: Span::default(),
            });
        }
        if request.input_messages.is_empty() && request.output_text.is_empty() {
            return Err(GuardError::Invalid(
                "give `input_messages`, `output_text` or `otlp_trace`: there is nothing to check"
                    .into(),
            ));
        }
        let messages = |list: &mut dyn Iterator<Item = (&str, &str)>| {
            serde_json::Value::Array(
                list.map(|(role, content)| {
                    serde_json::json!({"role": role, "parts": [{"type": "text", "content": content}]})
                })
                .collect(),
            )
            .to_string()
        };
        let mut attributes = vec![otlp::kv_str("gen_ai.operation.name", "chat")];
        if !request.input_messages.is_empty() {
            let input = messages(
                &mut request
                    .input_messages
                    .iter()
                    .map(|m| (m.role.as_str(), m.content.as_str())),
            );
            attributes.push(otlp::kv_str("gen_ai.input.messages", input));
        }
        if !request.output_text.is_empty() {
            let output = messages(&mut std::iter::once((
                "assistant",
                request.output_text.as_str(),
            )));
            attributes.push(otlp::kv_str("gen_ai.output.messages", output));
        }
        // Sorted, so a check's score ids do not depend on the map's order.
        let sorted: BTreeMap<&String, &String> = request.attributes.iter().collect();
        attributes.extend(sorted.into_iter().map(|(k, v)| otlp::kv_str(k, v.as_str())));
        let now = crate::now_unix_nanos();
        Ok(Checked {
            request: None,
            span: Span {
                trace_id: if trace_id.is_empty() {
                    generated_id(now, 16)
                } else {
                    trace_id
                },
                span_id: if span_id.is_empty() {
                    generated_id(now, 8)
                } else {
                    span_id
                },
                name: "chat".into(),
                start_time_unix_nano: now,
                end_time_unix_nano: now,
                attributes,
                ..Default::default()
            },
        })
    }

    /// The span judged: the OTLP request's first model call (else its first span), or the one
    /// made from the fields.
    fn view(&self) -> GenAiSpan<'_> {
        match &self.request {
            Some(request) => span::spans(request)
                .find(|s| s.kind() == OperationKind::Chat)
                .or_else(|| span::spans(request).next())
                .expect("checked to hold a span"),
            None => GenAiSpan::new(&self.span, ResourceView::new(None), None),
        }
    }
}

/// An id for a check that names none: a hash of the time and a process-wide count (not a
/// secret, only unique enough to file the check's events).
fn generated_id(now: u64, len: usize) -> Vec<u8> {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let hash = xxhash_rust::xxh3::xxh3_128_with_seed(&n.to_le_bytes(), now);
    hash.to_be_bytes()[..len].to_vec()
}

/// Attribute maps as the API takes them, for the tests and the bench client.
pub fn attributes(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The guard API's listeners, started.
pub struct Running {
    /// The gRPC listener's address, when on.
    pub grpc: Option<std::net::SocketAddr>,
    /// The HTTP listener's address, when on.
    pub http: Option<std::net::SocketAddr>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    runtime: tokio::runtime::Runtime,
}

impl Running {
    /// Waits for the listeners to end (after the shutdown future given to [`serve`] completed),
    /// then lets the runtime go.
    pub async fn stopped(self) {
        for server in self.servers {
            let _ = server.await;
        }
        self.runtime.shutdown_background();
    }
}

/// Binds the configured listeners (an address in use fails here, with the key's path) and
/// serves `guards` on them until `shutdown` completes.
///
/// The API has a runtime of its own, one thread per core, with an evaluation thread's stack
/// (Rhai scripts may recurse deep): a check runs where its request is read, without a hand-off
/// (a check takes microseconds), and the receivers' I/O on `run`'s runtime does not delay it.
pub fn serve(
    config: &crate::config::guard::GuardConfig,
    guards: Arc<Guards>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    use anyhow::Context as _;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .thread_name("evalstream-guard")
        .thread_stack_size(crate::EVALUATION_STACK_BYTES)
        .enable_all()
        .build()
        .context("cannot start the guard API's runtime")?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    runtime.spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let stopped = move || {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        }
    };
    let mut running = Running {
        grpc: None,
        http: None,
        servers: Vec::new(),
        runtime,
    };
    if let Some(listener) = &config.grpc {
        let socket = running.bind("grpc", &listener.endpoint)?;
        running.grpc = Some(socket.local_addr()?);
        let server = grpc::run(socket, guards.clone(), config.max_request_bytes, stopped());
        running.spawn(
            "gRPC",
            async move { server.await.map_err(anyhow::Error::from) },
        );
    }
    if let Some(listener) = &config.http {
        let socket = running.bind("http", &listener.endpoint)?;
        running.http = Some(socket.local_addr()?);
        let server = http::run(socket, guards, config.max_request_bytes, stopped());
        running.spawn(
            "HTTP",
            async move { server.await.map_err(anyhow::Error::from) },
        );
    }
    tracing::info!(grpc = ?running.grpc, http = ?running.http, "serving the guard API");
    Ok(running)
}

impl Running {
    /// Binds `guard.PROTOCOL.endpoint`, registered with the guard's runtime, where it is served.
    fn bind(&self, protocol: &str, endpoint: &str) -> anyhow::Result<tokio::net::TcpListener> {
        use anyhow::Context as _;
        let socket = std::net::TcpListener::bind(endpoint)
            .with_context(|| format!("guard.{protocol}.endpoint: cannot listen on {endpoint}"))?;
        socket.set_nonblocking(true)?;
        let _entered = self.runtime.enter();
        Ok(tokio::net::TcpListener::from_std(socket)?)
    }

    /// Runs a listener's server on the guard's runtime, logging how it failed if it does.
    fn spawn(
        &mut self,
        what: &'static str,
        server: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.servers.push(self.runtime.spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "the guard {what} listener failed");
            }
        }));
    }
}
