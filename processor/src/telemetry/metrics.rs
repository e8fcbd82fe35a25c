//! The worker's Prometheus metrics (served by [`crate::telemetry::http`]).
//!
//! Every metric is named `evalstream_*`. Labels are bounded by configuration (evaluator names,
//! outcomes, token types), by the topic's partitions, or by a cardinality cap ([`LabelCap`]) for
//! values that come from spans (models, and the opt-in segment labels of the score metrics:
//! model, service, prompt version); never a trace id, span id, span name or free text.
//! Per-evaluator handles are resolved once at start-up, so without segments the hot path does no
//! label hashing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::telemetry::drift::series::Drift;
use crate::telemetry::labels::LabelCap;
use crate::telemetry::labels::Segment;
use evalstream_evaluators::evaluator::{ConfiguredEvaluator, Evaluation, Outcome, Score};
use evalstream_evaluators::span::GenAiSpan;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Score buckets: fine below 1 for checks and rates, coarse above for measurements.
const SCORE_BUCKETS: &[f64] = &[
    0.0001, 0.001, 0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 5.0, 10.0, 30.0,
    60.0, 300.0, 1000.0,
];

/// End-to-end lag buckets, seconds: from milliseconds (a worker keeping up) to an hour (a backlog).
const LAG_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];

/// Latency buckets, seconds.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0,
];

/// Handles for one evaluator, resolved once.
#[derive(Clone)]
pub struct EvaluatorMetrics {
    scored: IntCounter,
    skipped: IntCounter,
    errors: IntCounter,
    /// Pass, fail and the score histogram, when they carry no segment labels.
    unsegmented: Option<(IntCounter, IntCounter, Histogram)>,
}

/// The score metrics split by segment labels (opt-in): label values are looked up per
/// evaluation, each segment capped at a number of distinct values.
struct Segmented {
    segments: Vec<(Segment, LabelCap)>,
    results: IntCounterVec,
    scores: HistogramVec,
}

impl Segmented {
    fn record(&self, evaluator: &str, span: &GenAiSpan<'_>, score: &Score) {
        let mut values: Vec<String> = Vec::with_capacity(self.segments.len() + 2);
        values.push(evaluator.to_owned());
        for (segment, cap) in &self.segments {
            // An absent property is an empty label value, which Prometheus treats as no label.
            let value = segment.value(span);
            values.push(value.map(|v| cap.label(&v)).unwrap_or_default());
        }
        let labels: Vec<&str> = values.iter().map(String::as_str).collect();
        self.scores.with_label_values(&labels).observe(score.value);
        let mut with_result = labels;
        with_result.insert(1, if score.passed { "pass" } else { "fail" });
        self.results.with_label_values(&with_result).inc();
    }
}

/// All of the worker's metrics.
pub struct Metrics {
    /// The registry `/metrics` serves.
    pub registry: Registry,
    /// OTLP export requests answered, by protocol (`grpc`, `http`) and outcome (`accepted`;
    /// `busy`: the pipeline was full and the client was told to retry later; `unavailable`;
    /// `invalid`; `error`).
    pub otlp_requests: IntCounterVec,
    /// Kafka messages received.
    pub messages: IntCounter,
    /// Spans decoded from them.
    pub spans: IntCounter,
    /// Messages that could not be decoded.
    pub decode_errors: IntCounter,
    /// Jumps in a partition's offsets between two received messages.
    pub offset_gaps: IntCounter,
    /// Redactions in forwarded spans, by kind (a personal-data kind masked, `dropped`,
    /// `hashed`).
    pub redactions: IntCounterVec,
    /// Traces tail sampling decided, by the rule that decided (`none` when none matched) and
    /// the decision (`keep`, `drop`).
    pub sampled_traces: IntCounterVec,
    /// Traces that waited for judge verdicts before their decision, by how the wait ended
    /// (`verdicts_in`; `decided_without`: the wait ran out, or the trace's inputs were let go).
    pub sampling_waits: IntCounterVec,
    /// Messages written to the dead-letter topic, by reason (`decode`, `delivery`).
    pub dlq: IntCounterVec,
    /// Messages whose evaluations could not be delivered nor dead-lettered (they stay uncommitted).
    pub undeliverable: IntCounter,
    /// Evaluator spans acknowledged by the output topic.
    pub outputs: IntCounter,
    /// Exactly once: transactions committed (outputs with their input offsets).
    pub transactions: IntCounter,
    /// Time to run all evaluators on one span.
    pub evaluation_seconds: Histogram,
    /// Now minus the judged span's end time, when its evaluations are produced.
    pub lag_seconds: Histogram,
    /// Consumer lag by topic and partition, from librdkafka's statistics.
    pub consumer_lag: IntGaugeVec,
    /// Messages queued in the output producer.
    pub producer_queue: IntGauge,
    /// Input messages received and not yet finished.
    pub in_flight: IntGauge,
    /// Bytes of those messages (payload and key), held until their outputs are delivered.
    pub in_flight_bytes: IntGauge,
    /// Whether the input is paused for backpressure (1) or not (0).
    pub paused: IntGauge,
    /// Brokers the consumer currently reaches.
    pub brokers_up: IntGauge,
    /// Kafka client errors, by kind.
    pub kafka_errors: IntCounterVec,
    /// Cost of judged spans in USD, by model.
    pub cost_usd: prometheus::CounterVec,
    /// Tokens of judged spans, by model and type.
    pub tokens: IntCounterVec,
    /// Traces buffered for trace evaluators.
    pub traces_buffered: IntGauge,
    /// Bytes of their spans.
    pub trace_buffer_bytes: IntGauge,
    /// Traces taken from the buffer and evaluated, by completion (`complete`, `timed_out`,
    /// `evicted`, `late`, `flushed`).
    pub traces_assembled: IntCounterVec,
    /// Spans that arrived after their trace had been evaluated.
    pub late_spans: IntCounter,
    /// Spans that waited for their log events, by how they left the join (`joined`,
    /// `timed_out`, `evicted`, `flushed`).
    pub join_spans: IntCounterVec,
    /// GenAI content log events, by what became of them (`joined`; dropped: `expired`,
    /// `evicted`, `flushed`, `no_span` without a span id, `unneeded` for a span that carried its
    /// content).
    pub log_events: IntCounterVec,
    /// Spans waiting in the join for their log events.
    pub join_spans_waiting: IntGauge,
    /// Span ids with log events waiting in the join for their span.
    pub join_events_waiting: IntGauge,
    /// Bytes waiting in the join.
    pub join_bytes: IntGauge,
    /// Script reloads, by evaluator and result (`reloaded`, `failed`).
    pub script_reloads: IntCounterVec,
    /// Judge calls, by evaluator and result (`ok` or the error type).
    pub judge_calls: IntCounterVec,
    /// Judge retries, by evaluator and reason (the error type retried).
    pub judge_retries: IntCounterVec,
    /// Spans not sent to a judge, by evaluator and reason (`cache_hit`, `shed`, `budget`,
    /// `circuit_open`).
    pub judge_not_sent: IntCounterVec,
    /// Judge tokens, by evaluator and type (`input`, `output`).
    pub judge_tokens: IntCounterVec,
    /// Judge spend in USD, by evaluator.
    pub judge_spend_usd: prometheus::CounterVec,
    /// Judge spend budgets in USD, by evaluator and period (`hour`, `day`).
    pub judge_budget_usd: prometheus::GaugeVec,
    /// Whether a judge's circuit is open (1) or closed (0), by evaluator.
    pub judge_circuit_open: IntGaugeVec,
    /// Judge call latency (retries included), by evaluator.
    pub judge_latency_seconds: HistogramVec,
    /// Up (1) once started.
    pub up: Gauge,
    evaluators: Vec<EvaluatorMetrics>,
    segmented: Option<Segmented>,
    /// Caps the `model` label.
    pub models: LabelCap,
    ready: AtomicBool,
    drift: OnceLock<Arc<Drift>>,
    /// Why the input cannot make progress, when it cannot.
    input_problem: Mutex<Option<String>>,
    /// Bytes one scrape may take.
    scrape_budget: AtomicUsize,
    /// Metric families left out of scrapes for the budget.
    scrape_dropped: IntCounter,
}

/// The default scrape budget: a worker with every segment on and the default caps stays far
/// below it; Prometheus's own default `body_size_limit` is unlimited, so this is the guard.
pub const DEFAULT_SCRAPE_BYTES: usize = 16 << 20;

/// Registers the shared drift tracker with the registry (which takes a box).
struct DriftCollector(Arc<Drift>);

impl prometheus::core::Collector for DriftCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    /// Registers every metric, with handles for the given evaluators. `segments` adds labels to
    /// the score histogram and the pass/fail counters, each capped at `max_segment_values`.
    pub fn new(
        evaluators: &[ConfiguredEvaluator],
        segments: &[Segment],
        max_segment_values: usize,
    ) -> prometheus::Result<Arc<Metrics>> {
        let r = Registry::new();
        let evaluations = counter_vec(
            &r,
            "evalstream_evaluations_total",
            "Evaluations by evaluator and outcome (scored, skipped, error).",
            &["evaluator", "outcome"],
        )?;
        let segment_labels = segments.iter().map(|s| s.label());
        let result_labels: Vec<&str> = ["evaluator", "result"]
            .into_iter()
            .chain(segment_labels.clone())
            .collect();
        let results = counter_vec(
            &r,
            "evalstream_evaluation_results_total",
            "Scored evaluations by evaluator and result (pass, fail), and any segment labels.",
            &result_labels,
        )?;
        let score_labels: Vec<&str> = std::iter::once("evaluator").chain(segment_labels).collect();
        let scores = HistogramVec::new(
            HistogramOpts::new(
                "evalstream_score",
                "Score values by evaluator, and any segment labels.",
            )
            .buckets(SCORE_BUCKETS.to_vec()),
            &score_labels,
        )?;
        r.register(Box::new(scores.clone()))?;
        let per_evaluator = evaluators
            .iter()
            .map(|e| {
                let n = e.name.as_str();
                EvaluatorMetrics {
                    scored: evaluations.with_label_values(&[n, "scored"]),
                    skipped: evaluations.with_label_values(&[n, "skipped"]),
                    errors: evaluations.with_label_values(&[n, "error"]),
                    unsegmented: segments.is_empty().then(|| {
                        (
                            results.with_label_values(&[n, "pass"]),
                            results.with_label_values(&[n, "fail"]),
                            scores.with_label_values(&[n]),
                        )
                    }),
                }
            })
            .collect();
        let segmented = (!segments.is_empty()).then(|| Segmented {
            segments: segments
                .iter()
                .map(|&s| (s, LabelCap::new(max_segment_values)))
                .collect(),
            results: results.clone(),
            scores: scores.clone(),
        });
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "evalstream_consumer_lag_messages",
                "Messages behind the end of each input partition.",
            ),
            &["topic", "partition"],
        )?;
        r.register(Box::new(consumer_lag.clone()))?;
        let cost_usd = prometheus::CounterVec::new(
            Opts::new(
                "evalstream_span_cost_usd_total",
                "Cost of judged LLM spans in USD, by model.",
            ),
            &["model"],
        )?;
        r.register(Box::new(cost_usd.clone()))?;
        let up = Gauge::new("evalstream_up", "1 while the worker runs.")?;
        r.register(Box::new(up.clone()))?;
        up.set(1.0);
        let judge_spend_usd = prometheus::CounterVec::new(
            Opts::new(
                "evalstream_judge_spend_usd_total",
                "Judge spend in USD, by evaluator.",
            ),
            &["evaluator"],
        )?;
        r.register(Box::new(judge_spend_usd.clone()))?;
        let judge_budget_usd = prometheus::GaugeVec::new(
            Opts::new(
                "evalstream_judge_budget_usd",
                "A judge's configured spend budget in USD, by evaluator and period (hour, day).",
            ),
            &["evaluator", "period"],
        )?;
        r.register(Box::new(judge_budget_usd.clone()))?;
        let judge_circuit_open = IntGaugeVec::new(
            Opts::new(
                "evalstream_judge_circuit_open",
                "1 while a judge endpoint's circuit is open (calls stopped), else 0.",
            ),
            &["evaluator"],
        )?;
        r.register(Box::new(judge_circuit_open.clone()))?;
        let judge_latency_seconds = HistogramVec::new(
            HistogramOpts::new(
                "evalstream_judge_latency_seconds",
                "Judge call latency, retries included, by evaluator.",
            )
            .buckets(LAG_BUCKETS.to_vec()),
            &["evaluator"],
        )?;
        r.register(Box::new(judge_latency_seconds.clone()))?;
        Ok(Arc::new(Metrics {
            judge_calls: counter_vec(
                &r,
                "evalstream_judge_calls_total",
                "Judge calls, by evaluator and result (ok, or the error type: judge_rate_limited, judge_timeout, …).",
                &["evaluator", "result"],
            )?,
            judge_retries: counter_vec(
                &r,
                "evalstream_judge_retries_total",
                "Judge retries, by evaluator and the error retried.",
                &["evaluator", "reason"],
            )?,
            judge_not_sent: counter_vec(
                &r,
                "evalstream_judge_not_sent_total",
                "Spans not sent to a judge, by evaluator and reason (cache_hit, shed, budget, circuit_open).",
                &["evaluator", "reason"],
            )?,
            judge_tokens: counter_vec(
                &r,
                "evalstream_judge_tokens_total",
                "Judge tokens, by evaluator and type (input, output).",
                &["evaluator", "type"],
            )?,
            judge_spend_usd,
            judge_budget_usd,
            judge_circuit_open,
            judge_latency_seconds,
            script_reloads: counter_vec(
                &r,
                "evalstream_script_reloads_total",
                "Rhai scripts reloaded after their file changed, by evaluator and result (reloaded, failed: the old version keeps running).",
                &["evaluator", "result"],
            )?,
            traces_buffered: gauge(
                &r,
                "evalstream_traces_buffered",
                "Traces buffered until complete, for trace evaluators.",
            )?,
            trace_buffer_bytes: gauge(
                &r,
                "evalstream_trace_buffer_bytes",
                "Bytes of the buffered traces' spans.",
            )?,
            traces_assembled: counter_vec(
                &r,
                "evalstream_traces_assembled_total",
                "Traces evaluated by trace evaluators, by how they left the buffer (complete, timed_out, evicted, late, flushed).",
                &["completion"],
            )?,
            late_spans: counter(
                &r,
                "evalstream_late_spans_total",
                "Spans that arrived after their trace had been evaluated (evaluated again as a late, partial trace).",
            )?,
            join_spans: counter_vec(
                &r,
                "evalstream_join_spans_total",
                "Model-call spans without content that waited for their log events, by how they left the join (joined, timed_out, evicted, flushed).",
                &["release"],
            )?,
            log_events: counter_vec(
                &r,
                "evalstream_log_events_total",
                "GenAI content log events, by outcome (joined to their span; dropped: expired, evicted, flushed, no_span, unneeded).",
                &["outcome"],
            )?,
            join_spans_waiting: gauge(
                &r,
                "evalstream_join_spans_waiting",
                "Model-call spans without content waiting for their log events.",
            )?,
            join_events_waiting: gauge(
                &r,
                "evalstream_join_events_waiting",
                "Span ids with log events waiting for their span.",
            )?,
            join_bytes: gauge(
                &r,
                "evalstream_join_bytes",
                "Bytes of the spans and log events waiting in the join.",
            )?,
            otlp_requests: counter_vec(
                &r,
                "evalstream_otlp_requests_total",
                "OTLP export requests answered, by protocol (grpc, http) and outcome (accepted; busy: RESOURCE_EXHAUSTED or 429, retry later; unavailable: UNAVAILABLE or 503; invalid: refused for good; error).",
                &["protocol", "outcome"],
            )?,
            messages: counter(
                &r,
                "evalstream_messages_consumed_total",
                "Kafka messages received.",
            )?,
            spans: counter(
                &r,
                "evalstream_spans_consumed_total",
                "Spans decoded from received messages.",
            )?,
            decode_errors: counter(
                &r,
                "evalstream_decode_errors_total",
                "Messages that could not be decoded.",
            )?,
            redactions: counter_vec(
                &r,
                "evalstream_redactions_total",
                "Redactions in forwarded spans, by kind: personal data masked (email, credit_card, iban, ip_address, national_id, phone), attributes dropped or hashed.",
                &["kind"],
            )?,
            sampled_traces: counter_vec(
                &r,
                "evalstream_sampled_traces_total",
                "Traces the tail-sampling policy decided, by the rule that decided (none: no rule matched) and the decision (keep, drop).",
                &["rule", "decision"],
            )?,
            sampling_waits: counter_vec(
                &r,
                "evalstream_sampling_waits_total",
                "Traces whose sampling decision waited for LLM judge verdicts, by how the wait ended: verdicts_in, or decided_without (the wait ran out, or the trace's inputs were let go).",
                &["outcome"],
            )?,
            offset_gaps: counter(
                &r,
                "evalstream_input_offset_gaps_total",
                "Jumps in a partition's offsets between received messages (normal only on compacted or transactional topics).",
            )?,
            dlq: counter_vec(
                &r,
                "evalstream_dlq_messages_total",
                "Messages written to the dead-letter topic, by reason.",
                &["reason"],
            )?,
            undeliverable: counter(
                &r,
                "evalstream_undeliverable_messages_total",
                "Messages whose evaluations could neither be delivered nor dead-lettered; left uncommitted.",
            )?,
            transactions: counter(
                &r,
                "evalstream_kafka_transactions_total",
                "Exactly once: Kafka transactions committed, each holding outputs and the input offsets they came from.",
            )?,
            outputs: counter(
                &r,
                "evalstream_output_records_total",
                "Output records acknowledged by the broker.",
            )?,
            evaluation_seconds: histogram(
                &r,
                "evalstream_evaluation_duration_seconds",
                "Time to run every selected evaluator on one span.",
                SECONDS_BUCKETS,
            )?,
            lag_seconds: histogram(
                &r,
                "evalstream_end_to_end_lag_seconds",
                "Now minus the judged span's end time, when its evaluations are produced.",
                LAG_BUCKETS,
            )?,
            consumer_lag,
            producer_queue: gauge(
                &r,
                "evalstream_producer_queue_messages",
                "Messages queued in the output producer.",
            )?,
            in_flight: gauge(
                &r,
                "evalstream_in_flight_messages",
                "Input messages received and not yet finished.",
            )?,
            in_flight_bytes: gauge(
                &r,
                "evalstream_in_flight_bytes",
                "Bytes of input messages received and not yet finished.",
            )?,
            paused: gauge(
                &r,
                "evalstream_input_paused",
                "1 while the input is paused for backpressure.",
            )?,
            brokers_up: gauge(
                &r,
                "evalstream_brokers_up",
                "Brokers the consumer currently reaches.",
            )?,
            kafka_errors: counter_vec(
                &r,
                "evalstream_kafka_errors_total",
                "Kafka client errors, by kind.",
                &["kind"],
            )?,
            cost_usd,
            tokens: counter_vec(
                &r,
                "evalstream_span_tokens_total",
                "Tokens of judged LLM spans, by model and type.",
                &["model", "type"],
            )?,
            up,
            evaluators: per_evaluator,
            segmented,
            models: LabelCap::new(100),
            input_problem: Mutex::new(None),
            scrape_budget: AtomicUsize::new(DEFAULT_SCRAPE_BYTES),
            scrape_dropped: counter(
                &r,
                "evalstream_scrape_families_dropped_total",
                "Metric families left out of a scrape because it would pass the scrape budget.",
            )?,
            registry: r,
            ready: AtomicBool::new(false),
            drift: OnceLock::new(),
        }))
    }

    /// Counts one evaluation of `span` by the evaluator at `index` in the configured set.
    pub fn record(&self, index: usize, evaluation: &Evaluation<'_>, span: &GenAiSpan<'_>) {
        let Some(m) = self.evaluators.get(index) else {
            return;
        };
        match &evaluation.outcome {
            Outcome::Scored(s) => {
                m.scored.inc();
                if let Some(drift) = self.drift.get() {
                    drift.observe(index, span, s);
                }
                match (&m.unsegmented, &self.segmented) {
                    (Some((passed, failed, score)), _) => {
                        score.observe(s.value);
                        if s.passed { passed } else { failed }.inc();
                    }
                    (None, Some(segmented)) => segmented.record(evaluation.evaluator, span, s),
                    (None, None) => {}
                }
            }
            Outcome::Skipped { .. } => m.skipped.inc(),
            Outcome::Error { .. } => m.errors.inc(),
        }
    }

    /// Feeds scores to drift detection from now on, and serves its series.
    pub fn attach_drift(&self, drift: Arc<Drift>) -> prometheus::Result<()> {
        self.registry
            .register(Box::new(DriftCollector(drift.clone())))?;
        let _ = self.drift.set(drift);
        Ok(())
    }

    /// The drift tracker, when drift detection is on.
    pub fn drift(&self) -> Option<&Arc<Drift>> {
        self.drift.get()
    }

    /// Counts what a redaction did: `(kind, count)` pairs.
    pub fn record_redactions<'a>(&self, counts: impl IntoIterator<Item = (&'a str, u64)>) {
        for (kind, n) in counts {
            self.redactions.with_label_values(&[kind]).inc_by(n);
        }
    }

    /// Marks the worker ready or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the worker is ready: connected to a broker and consuming.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Reports a problem that keeps the input from making progress (a partition whose fetches
    /// keep failing), or clears it with `None`: `/readyz` answers 503 with the reason meanwhile.
    pub fn set_input_problem(&self, problem: Option<String>) {
        *self.input_problem.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// Ready, or why not.
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(problem) = &*self.input_problem.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(problem.clone());
        }
        if self.is_ready() {
            Ok(())
        } else {
            Err("no broker reachable or no assignment yet".into())
        }
    }

    /// Caps the size of one scrape (see [`Metrics::render`]).
    pub fn set_scrape_budget(&self, bytes: usize) {
        self.scrape_budget.store(bytes.max(1), Ordering::Relaxed);
    }

    /// The metrics in Prometheus text format, at most the scrape budget: a family that would
    /// pass it is left out whole (a partial family would read as series that vanished), logged,
    /// counted in `evalstream_scrape_families_dropped_total` and named in a comment line. Label
    /// values are bounded in length and number, so only a configuration that multiplies many
    /// segments gets here; the budget keeps a scrape from taking the process down even then.
    pub fn render(&self) -> String {
        let budget = self.scrape_budget.load(Ordering::Relaxed);
        let encoder = TextEncoder::new();
        let mut out = Vec::new();
        let mut family = Vec::new();
        let mut dropped: Vec<String> = Vec::new();
        for f in self.registry.gather() {
            family.clear();
            if encoder
                .encode(std::slice::from_ref(&f), &mut family)
                .is_err()
            {
                continue;
            }
            if out.len() + family.len() > budget {
                dropped.push(f.name().to_owned());
                continue;
            }
            out.extend_from_slice(&family);
        }
        if !dropped.is_empty() {
            self.scrape_dropped.inc_by(dropped.len() as u64);
            tracing::warn!(budget, families = ?dropped, "metric families left out of a scrape: over the scrape budget");
            out.extend_from_slice(
                format!(
                    "# evalstream: {} metric families left out: over the scrape budget of {budget} bytes\n",
                    dropped.len()
                )
                .as_bytes(),
            );
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_labels_split_scores_and_are_capped() {
        use evalstream_evaluators::evaluator::ScoreId;
        use evalstream_evaluators::otlp::kv_str;
        use evalstream_evaluators::span::ResourceView;
        use evalstream_evaluators::spec::{build_set, default_specs};
        use opentelemetry_proto::tonic::trace::v1::Span;

        let set = build_set(&default_specs()).unwrap();
        let metrics =
            Metrics::new(set.evaluators(), &[Segment::Model, Segment::Service], 1).unwrap();
        let span_of = |model: &str| Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes: vec![kv_str("gen_ai.request.model", model)],
            ..Default::default()
        };
        let resource = opentelemetry_proto::tonic::resource::v1::Resource {
            attributes: vec![kv_str("service.name", "support-bot")],
            ..Default::default()
        };
        let evaluator = &set.evaluators()[0];
        for (model, passed) in [("gpt-4o", true), ("gpt-4o", false), ("claude-x", true)] {
            let span = span_of(model);
            let view = GenAiSpan::new(&span, ResourceView::new(Some(&resource)), None);
            let evaluation = Evaluation {
                evaluator: &evaluator.name,
                evaluator_type: evaluator.type_name,
                version: evaluator.version.as_str().into(),
                score_id: ScoreId::new(&span.trace_id, &span.span_id, &evaluator.name, "1"),
                outcome: Outcome::check(passed, "x", ""),
            };
            metrics.record(0, &evaluation, &view);
        }
        // Prometheus text orders labels by name.
        let text = metrics.render();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        let e = &evaluator.name;
        assert_eq!(
            line(&format!(
                "evalstream_evaluation_results_total{{evaluator=\"{e}\",model=\"gpt-4o\",result=\"pass\",service=\"support-bot\"}}"
            ))
            .as_deref(),
            Some("1")
        );
        // The cap is one model: the second model is counted as `other`.
        assert_eq!(
            line(&format!(
                "evalstream_evaluation_results_total{{evaluator=\"{e}\",model=\"other\",result=\"pass\",service=\"support-bot\"}}"
            ))
            .as_deref(),
            Some("1")
        );
        assert!(text.contains(&format!(
            "evalstream_score_count{{evaluator=\"{e}\",model=\"gpt-4o\",service=\"support-bot\"}} 2"
        )));
        assert!(!text.contains("claude-x"));
    }

    #[test]
    fn a_scrape_of_spans_with_huge_model_names_stays_small() {
        use evalstream_evaluators::evaluator::ScoreId;
        use evalstream_evaluators::otlp::kv_str;
        use evalstream_evaluators::span::ResourceView;
        use evalstream_evaluators::spec::{build_set, default_specs};
        use opentelemetry_proto::tonic::trace::v1::Span;

        let set = build_set(&default_specs()).unwrap();
        let metrics = Metrics::new(set.evaluators(), &[Segment::Model], 100).unwrap();
        let evaluator = &set.evaluators()[0];
        for i in 0..120 {
            let model = format!("{i}{}", "x".repeat(1 << 20));
            let span = Span {
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                attributes: vec![kv_str("gen_ai.request.model", &model)],
                ..Default::default()
            };
            let view = GenAiSpan::new(&span, ResourceView::new(None), None);
            let evaluation = Evaluation {
                evaluator: &evaluator.name,
                evaluator_type: evaluator.type_name,
                version: evaluator.version.as_str().into(),
                score_id: ScoreId::new(&span.trace_id, &span.span_id, &evaluator.name, "1"),
                outcome: Outcome::check(true, "x", ""),
            };
            metrics.record(0, &evaluation, &view);
            metrics.models.label(&model);
        }
        let text = metrics.render();
        assert!(text.len() < 2 << 20, "a scrape of {} bytes", text.len());
        assert!(text.lines().all(|l| l.len() < 4096), "a line past 4 KiB");
    }

    #[test]
    fn a_scrape_over_its_budget_leaves_whole_families_out_and_says_so() {
        use evalstream_evaluators::spec::{build_set, default_specs};
        let set = build_set(&default_specs()).unwrap();
        let metrics = Metrics::new(set.evaluators(), &[], 0).unwrap();
        let full = metrics.render();
        metrics.set_scrape_budget(full.len() / 2);
        let cut = metrics.render();
        assert!(cut.len() <= full.len() / 2 + 200, "{} bytes", cut.len());
        assert!(cut.contains("metric families left out"), "{cut}");
        // No family is cut in the middle: every sample line follows its TYPE line.
        for line in cut.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                cut.contains(&format!("# TYPE {name} "))
                    || cut.contains(&format!("# TYPE {family} ")),
                "{name} without its TYPE line"
            );
        }
        let again = metrics.render();
        assert!(again.contains("evalstream_scrape_families_dropped_total"));
    }
}
