//! The worker's Prometheus metrics, and the HTTP endpoint serving them with `/healthz` and
//! `/readyz`.
//!
//! Every metric is named `evalstream_*`. Labels are bounded by configuration (evaluator names,
//! outcomes, token types), by the topic's partitions, or by a cardinality cap ([`LabelCap`]) for
//! values that come from spans (models, and the opt-in segment labels of the score metrics:
//! model, service, prompt version); never a trace id, span id, span name or free text.
//! Per-evaluator handles are resolved once at start-up, so without segments the hot path does no
//! label hashing.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::config::Segment;
use crate::drift::series::Drift;
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

/// A set of label values that stops growing at a cap; later values share the label `other`.
#[derive(Debug)]
pub struct LabelCap {
    seen: Mutex<HashSet<String>>,
    max: usize,
}

impl LabelCap {
    /// A cap of `max` distinct values.
    pub fn new(max: usize) -> LabelCap {
        LabelCap {
            seen: Mutex::new(HashSet::new()),
            max,
        }
    }

    /// The label to use for `value`.
    pub fn label(&self, value: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.max {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        "other".to_owned()
    }
}

/// All of the worker's metrics.
pub struct Metrics {
    /// The registry `/metrics` serves.
    pub registry: Registry,
    /// Kafka messages received.
    pub messages: IntCounter,
    /// Spans decoded from them.
    pub spans: IntCounter,
    /// Messages that could not be decoded.
    pub decode_errors: IntCounter,
    /// Jumps in a partition's offsets between two received messages.
    pub offset_gaps: IntCounter,
    /// Messages written to the dead-letter topic, by reason (`decode`, `delivery`).
    pub dlq: IntCounterVec,
    /// Messages whose evaluations could not be delivered nor dead-lettered (they stay uncommitted).
    pub undeliverable: IntCounter,
    /// Evaluator spans acknowledged by the output topic.
    pub outputs: IntCounter,
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
}

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

    /// Marks the worker ready or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the worker is ready: connected to a broker and consuming.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// `GET /drift`: the watched series. `POST /drift/ack?evaluator=NAME&LABEL=VALUE…`: the drifted
/// series matching (every one when no parameter is given) learn a new baseline.
fn drift_routes(metrics: Arc<Metrics>) -> axum::Router {
    use axum::extract::Query;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use std::collections::BTreeMap;
    let off = || {
        (
            StatusCode::NOT_FOUND,
            "drift detection is off (no `drift:` section)",
        )
    };
    let listing = metrics.clone();
    axum::Router::new()
        .route(
            "/drift",
            get(move || {
                let m = listing.clone();
                async move {
                    match m.drift() {
                        Some(drift) => axum::Json(drift.summary()).into_response(),
                        None => off().into_response(),
                    }
                }
            }),
        )
        .route(
            "/drift/ack",
            post(move |Query(params): Query<BTreeMap<String, String>>| {
                let m = metrics.clone();
                async move {
                    let Some(drift) = m.drift() else {
                        return off().into_response();
                    };
                    let evaluator = params.get("evaluator").cloned();
                    let filters: Vec<(String, String)> = params
                        .into_iter()
                        .filter(|(k, _)| k != "evaluator")
                        .collect();
                    match drift.acknowledge(evaluator.as_deref(), &filters) {
                        Ok(n) => {
                            axum::Json(serde_json::json!({ "acknowledged": n })).into_response()
                        }
                        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
                    }
                }
            }),
        )
}

/// Serves `/metrics`, `/healthz`, `/readyz` and `/drift` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let for_metrics = metrics.clone();
    let app = drift_routes(metrics.clone())
        .route(
            "/metrics",
            get(move || {
                let m = for_metrics.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let m = metrics.clone();
                async move {
                    if m.is_ready() {
                        (StatusCode::OK, "ready")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: no broker reachable or no assignment yet",
                        )
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the metrics address.
pub async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let addr: SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}"))
    })?;
    tokio::net::TcpListener::bind(addr).await
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
    fn label_cap_stops_growing() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.label("a"), "a");
        assert_eq!(cap.label("b"), "b");
        assert_eq!(cap.label("c"), "other");
        assert_eq!(cap.label("a"), "a");
    }
}
