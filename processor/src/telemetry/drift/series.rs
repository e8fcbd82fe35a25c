//! Every series the worker watches: one per watched evaluator and combination of segment values,
//! fed by each scored evaluation, exposed to Prometheus when `/metrics` is scraped.
//!
//! The series' gauges are built at scrape time (a [`Collector`]) rather than set on every score:
//! a score then costs one map lookup under its evaluator's lock, not a dozen gauge updates.
//! With several workers in a consumer group, each watches the scores of its own partitions — a
//! random split by trace id, so each sees the same distributions — and alerts take the maximum
//! over workers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use evalstream_evaluators::evaluator::{ConfiguredEvaluator, Score};
use evalstream_evaluators::span::GenAiSpan;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::DriftConfig;
use super::detect::{Direction, Params, SeriesState};
use crate::telemetry::labels::LabelCap;
use crate::telemetry::labels::Segment;

/// One evaluator's series, by segment values.
type Series = HashMap<Vec<String>, SeriesState>;

/// The watched series and their detectors.
pub struct Drift {
    params: Params,
    segments: Vec<(Segment, LabelCap)>,
    /// Per evaluator index: its name when watched.
    watched: Vec<Option<String>>,
    series: Vec<Mutex<Series>>,
    tracked: AtomicUsize,
    max_series: usize,
    dropped: AtomicU64,
    alarms: AtomicU64,
    rebaseline_after: Option<u64>,
    floors: Vec<(String, f64)>,
    descs: Vec<Desc>,
}

/// A series as persisted: who it is and its detector state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSeries {
    /// The evaluator's name.
    pub evaluator: String,
    /// The segment values, in the configured order.
    pub segments: Vec<String>,
    /// The detectors.
    pub state: SeriesState,
}

/// The metric families the collector produces: (name, help).
const FAMILIES: [(&str, &str); 10] = [
    (
        "evalstream_score_drift",
        "1 while the series' scores have drifted in this direction (until acknowledged or re-baselined), else 0.",
    ),
    (
        "evalstream_score_baseline",
        "The series' learned baseline: mean score and pass rate.",
    ),
    (
        "evalstream_score_recent",
        "The series' recent mean score and pass rate (exponentially weighted over about a warm-up's scores).",
    ),
    (
        "evalstream_score_drift_statistic",
        "Each detector's statistic as a fraction of its threshold (1 raises the alarm).",
    ),
    (
        "evalstream_score_warming_up",
        "1 while the series is learning its baseline.",
    ),
    ("evalstream_drift_series", "Series watched for drift."),
    (
        "evalstream_drift_series_dropped_total",
        "Scores of series beyond drift.max_series, not watched.",
    ),
    ("evalstream_drift_alarms_total", "Drift alarms raised."),
    (
        "evalstream_pass_rate_floor",
        "The configured pass-rate floor of an evaluator (drift.pass_rate_floors).",
    ),
    (
        "evalstream_drift_scores_total",
        "Scores the series has seen.",
    ),
];

impl Drift {
    /// Watches the configured evaluators (all when none are named).
    pub fn new(
        config: &DriftConfig,
        evaluators: &[ConfiguredEvaluator],
    ) -> prometheus::Result<Drift> {
        let watched = evaluators
            .iter()
            .map(|e| {
                let on = config
                    .evaluators
                    .as_ref()
                    .is_none_or(|names| names.contains(&e.name));
                on.then(|| e.name.clone())
            })
            .collect();
        let descs = FAMILIES
            .iter()
            .map(|(name, help)| {
                Desc::new((*name).into(), (*help).into(), Vec::new(), HashMap::new())
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(Drift {
            params: Params::new(config.false_alarm_budget, config.warmup, config.min_std),
            segments: config
                .segments
                .iter()
                .map(|&s| (s, LabelCap::new(config.max_segment_values)))
                .collect(),
            watched,
            series: evaluators
                .iter()
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            tracked: AtomicUsize::new(0),
            max_series: config.max_series,
            dropped: AtomicU64::new(0),
            alarms: AtomicU64::new(0),
            rebaseline_after: (config.rebaseline_after_seconds > 0.0)
                .then(|| config.rebaseline_after_seconds.ceil() as u64),
            floors: config
                .pass_rate_floors
                .iter()
                .map(|(n, f)| (n.clone(), *f))
                .collect(),
            descs,
        })
    }

    /// Adds a score of evaluator `index` on `span`.
    pub fn observe(&self, index: usize, span: &GenAiSpan<'_>, score: &Score) {
        let Some(Some(name)) = self.watched.get(index) else {
            return;
        };
        let key: Vec<String> = self
            .segments
            .iter()
            .map(|(segment, cap)| {
                segment
                    .value(span)
                    .map(|v| cap.label(&v))
                    .unwrap_or_default()
            })
            .collect();
        let now = crate::now_unix_nanos() / 1_000_000_000;
        let mut series = self.series[index].lock().unwrap_or_else(|e| e.into_inner());
        let state = match series.get_mut(&key) {
            Some(state) => state,
            None => {
                if self.tracked.load(Ordering::Relaxed) >= self.max_series {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.tracked.fetch_add(1, Ordering::Relaxed);
                series.entry(key.clone()).or_default()
            }
        };
        self.expire(state, now);
        if let Some(direction) = state.observe(&self.params, score.value, score.passed, now) {
            self.alarms.fetch_add(1, Ordering::Relaxed);
            warn!(evaluator = %name, segments = ?key, direction = direction.as_str(),
                "score drift detected");
        }
    }

    /// Re-baselines a drifted series once it has waited `rebaseline_after`.
    fn expire(&self, state: &mut SeriesState, now: u64) {
        if let (Some(after), Some((_, since))) = (self.rebaseline_after, state.drifted())
            && now.saturating_sub(since) >= after
        {
            state.rebaseline();
        }
    }

    /// Acknowledges the drifted series of `evaluator` (all when `None`) whose segment values
    /// match `filters` (label, value): they learn a new baseline. Returns how many, or what is
    /// wrong with the request.
    pub fn acknowledge(
        &self,
        evaluator: Option<&str>,
        filters: &[(String, String)],
    ) -> Result<usize, String> {
        let mut positions = Vec::with_capacity(filters.len());
        for (label, _) in filters {
            let at = self.segments.iter().position(|(s, _)| s.label() == label);
            positions.push(at.ok_or_else(|| {
                format!(
                    "`{label}` is not a drift segment (segments: {})",
                    self.label_names()[1..].join(", ")
                )
            })?);
        }
        if let Some(e) = evaluator
            && !self.watched.iter().any(|n| n.as_deref() == Some(e))
        {
            return Err(format!("`{e}` is not a watched evaluator"));
        }
        let mut acknowledged = 0;
        for (index, name) in self.watched.iter().enumerate() {
            let Some(name) = name else { continue };
            if evaluator.is_some_and(|e| e != name) {
                continue;
            }
            let mut series = self.series[index].lock().unwrap_or_else(|e| e.into_inner());
            for (key, state) in series.iter_mut() {
                let matches = filters
                    .iter()
                    .zip(&positions)
                    .all(|((_, value), &at)| key[at] == *value);
                if matches && state.drifted().is_some() {
                    state.rebaseline();
                    acknowledged += 1;
                }
            }
        }
        Ok(acknowledged)
    }

    /// The series for people (`GET /drift`).
    pub fn summary(&self) -> Vec<serde_json::Value> {
        let names = self.label_names();
        self.snapshot()
            .into_iter()
            .map(|s| {
                let segments: serde_json::Map<String, serde_json::Value> = names[1..]
                    .iter()
                    .zip(&s.segments)
                    .map(|(n, v)| ((*n).to_owned(), v.clone().into()))
                    .collect();
                let status = match (s.state.warming_up(), s.state.drifted()) {
                    (true, _) => "warming_up",
                    (_, Some(_)) => "drifted",
                    _ => "watching",
                };
                let (recent_mean, recent_pass_rate) = s.state.recent();
                let b = s.state.baseline();
                serde_json::json!({
                    "evaluator": s.evaluator,
                    "segments": segments,
                    "status": status,
                    "direction": s.state.drifted().map(|(d, _)| d.as_str()),
                    "drifted_since": s.state.drifted().map(|(_, since)| since),
                    "scores": s.state.count,
                    "baseline": {"mean": b.mean, "pass_rate": b.pass_rate(), "scores": b.n},
                    "recent": {"mean": recent_mean, "pass_rate": recent_pass_rate},
                })
            })
            .collect()
    }

    /// Every series with its state, for persistence.
    pub fn snapshot(&self) -> Vec<SavedSeries> {
        let mut saved = Vec::new();
        for (index, name) in self.watched.iter().enumerate() {
            let Some(name) = name else { continue };
            let series = self.series[index].lock().unwrap_or_else(|e| e.into_inner());
            saved.extend(series.iter().map(|(key, state)| SavedSeries {
                evaluator: name.clone(),
                segments: key.clone(),
                state: state.clone(),
            }));
        }
        saved
    }

    /// Restores saved series of evaluators still watched with the same segments; returns how
    /// many were restored.
    pub fn restore(&self, saved: impl IntoIterator<Item = SavedSeries>) -> usize {
        let mut restored = 0;
        for s in saved {
            let Some(index) = self
                .watched
                .iter()
                .position(|n| n.as_deref() == Some(s.evaluator.as_str()))
            else {
                continue;
            };
            if s.segments.len() != self.segments.len() {
                continue;
            }
            for ((_, cap), value) in self.segments.iter().zip(&s.segments) {
                if !value.is_empty() {
                    cap.label(value);
                }
            }
            let mut series = self.series[index].lock().unwrap_or_else(|e| e.into_inner());
            if !series.contains_key(&s.segments) {
                if self.tracked.load(Ordering::Relaxed) >= self.max_series {
                    continue;
                }
                self.tracked.fetch_add(1, Ordering::Relaxed);
            }
            series.insert(s.segments, s.state);
            restored += 1;
        }
        restored
    }

    fn label_names(&self) -> Vec<&'static str> {
        std::iter::once("evaluator")
            .chain(self.segments.iter().map(|(s, _)| s.label()))
            .collect()
    }
}

fn gauge(names: &[&str], values: &[&str], extra: &[(&str, &str)], value: f64) -> Metric {
    let labels = names
        .iter()
        .zip(values)
        .chain(extra.iter().map(|(n, v)| (n, v)))
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| {
            let mut pair = LabelPair::default();
            pair.set_name((*n).to_owned());
            pair.set_value((*v).to_owned());
            pair
        })
        .collect();
    let mut g = Gauge::default();
    g.set_value(value);
    let mut metric = Metric::from_gauge(g);
    metric.set_label(labels);
    metric
}

impl Collector for Drift {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let names = self.label_names();
        let now = crate::now_unix_nanos() / 1_000_000_000;
        let mut families: Vec<Vec<Metric>> = vec![Vec::new(); FAMILIES.len()];
        for (index, name) in self.watched.iter().enumerate() {
            let Some(name) = name else { continue };
            let mut series = self.series[index].lock().unwrap_or_else(|e| e.into_inner());
            for (key, state) in series.iter_mut() {
                self.expire(state, now);
                let values: Vec<&str> = std::iter::once(name.as_str())
                    .chain(key.iter().map(String::as_str))
                    .collect();
                families[9].push(gauge(&names, &values, &[], state.count as f64));
                let warming = state.warming_up();
                families[4].push(gauge(&names, &values, &[], f64::from(u8::from(warming))));
                let (recent_mean, recent_pass) = state.recent();
                families[2].push(gauge(&names, &values, &[("stat", "mean")], recent_mean));
                families[2].push(gauge(
                    &names,
                    &values,
                    &[("stat", "pass_rate")],
                    recent_pass,
                ));
                if warming {
                    continue;
                }
                let drifted = state.drifted().map(|(d, _)| d);
                for direction in [Direction::Down, Direction::Up] {
                    let on = drifted == Some(direction);
                    families[0].push(gauge(
                        &names,
                        &values,
                        &[("direction", direction.as_str())],
                        f64::from(u8::from(on)),
                    ));
                }
                let baseline = state.baseline();
                families[1].push(gauge(&names, &values, &[("stat", "mean")], baseline.mean));
                families[1].push(gauge(
                    &names,
                    &values,
                    &[("stat", "pass_rate")],
                    baseline.pass_rate(),
                ));
                for s in state.statistics() {
                    families[3].push(gauge(
                        &names,
                        &values,
                        &[
                            ("detector", s.detector),
                            ("direction", s.direction.as_str()),
                        ],
                        s.level,
                    ));
                }
            }
        }
        families[5].push(gauge(
            &[],
            &[],
            &[],
            self.tracked.load(Ordering::Relaxed) as f64,
        ));
        families[6].push(gauge(
            &[],
            &[],
            &[],
            self.dropped.load(Ordering::Relaxed) as f64,
        ));
        families[7].push(gauge(
            &[],
            &[],
            &[],
            self.alarms.load(Ordering::Relaxed) as f64,
        ));
        for (name, floor) in &self.floors {
            families[8].push(gauge(&["evaluator"], &[name.as_str()], &[], *floor));
        }
        FAMILIES
            .iter()
            .zip(families)
            .filter(|(_, metrics)| !metrics.is_empty())
            .map(|((name, help), metrics)| {
                let mut family = MetricFamily::default();
                family.set_name((*name).to_owned());
                family.set_help((*help).to_owned());
                family.set_field_type(if name.ends_with("_total") {
                    MetricType::COUNTER
                } else {
                    MetricType::GAUGE
                });
                let metrics = if name.ends_with("_total") {
                    metrics
                        .into_iter()
                        .map(|m| {
                            let mut c = prometheus::proto::Counter::default();
                            c.set_value(m.get_gauge().get_value());
                            let mut counter = Metric::from_label(m.get_label().to_vec());
                            counter.set_counter(c);
                            counter
                        })
                        .collect()
                } else {
                    metrics
                };
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}

/// Feeding drift series in tests (here and the HTTP endpoint's).
#[cfg(test)]
pub(crate) mod testing {
    use super::Drift;
    use evalstream_evaluators::evaluator::Score;
    use evalstream_evaluators::otlp::kv_str;
    use evalstream_evaluators::span::{GenAiSpan, ResourceView};
    use opentelemetry_proto::tonic::trace::v1::Span;

    /// A pass (1) or fail (0) score.
    pub(crate) fn score(passed: bool) -> Score {
        Score {
            value: f64::from(u8::from(passed)),
            label: "x".into(),
            passed,
            explanation: String::new(),
        }
    }

    /// Feeds `n` scores of `model` with the given pass pattern to evaluator 0.
    pub(crate) fn feed(drift: &Drift, model: &str, n: usize, passed: impl Fn(usize) -> bool) {
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes: vec![kv_str("gen_ai.request.model", model)],
            ..Default::default()
        };
        let view = GenAiSpan::new(&span, ResourceView::new(None), None);
        for i in 0..n {
            drift.observe(0, &view, &score(passed(i)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{feed, score};
    use super::*;
    use evalstream_evaluators::span::ResourceView;
    use evalstream_evaluators::spec::{build_set, default_specs};
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn config(segments: Vec<Segment>, max_series: usize) -> DriftConfig {
        DriftConfig {
            evaluators: Some(vec!["refusal".into()]),
            segments,
            max_series,
            warmup: 50,
            false_alarm_budget: 1_000.0,
            ..DriftConfig::default()
        }
    }

    fn gauge_of(drift: &Drift, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
        drift
            .collect()
            .into_iter()
            .find(|f| f.name() == family)?
            .get_metric()
            .iter()
            .find(|m| {
                labels.iter().all(|(n, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *n && l.value() == *v)
                })
            })
            .map(|m| {
                if m.get_gauge().get_value() != 0.0 {
                    m.get_gauge().get_value()
                } else {
                    m.get_counter().get_value()
                }
            })
    }

    #[test]
    fn a_segments_drift_raises_its_flag_until_acknowledged() {
        let set = build_set(&default_specs()).unwrap();
        let drift = Drift::new(&config(vec![Segment::Model], 10), set.evaluators()).unwrap();
        // Both models pass 90% through the warm-up and beyond; then one fails every time.
        let nine_in_ten = |i: usize| !i.is_multiple_of(10);
        feed(&drift, "gpt-4o", 2_000, nine_in_ten);
        feed(&drift, "claude-x", 2_000, nine_in_ten);
        let flag = |model: &str, direction: &str| {
            gauge_of(
                &drift,
                "evalstream_score_drift",
                &[
                    ("evaluator", "refusal"),
                    ("model", model),
                    ("direction", direction),
                ],
            )
        };
        assert_eq!(flag("gpt-4o", "down"), Some(0.0));
        assert_eq!(
            gauge_of(
                &drift,
                "evalstream_score_baseline",
                &[("model", "gpt-4o"), ("stat", "pass_rate")]
            ),
            Some(0.9)
        );
        feed(&drift, "gpt-4o", 200, |_| false);
        assert_eq!(flag("gpt-4o", "down"), Some(1.0));
        assert_eq!(flag("gpt-4o", "up"), Some(0.0));
        assert_eq!(flag("claude-x", "down"), Some(0.0));
        assert_eq!(
            gauge_of(&drift, "evalstream_drift_alarms_total", &[]),
            Some(1.0)
        );
        assert_eq!(
            gauge_of(
                &drift,
                "evalstream_drift_scores_total",
                &[("model", "claude-x")]
            ),
            Some(2_000.0)
        );
        let err = drift
            .acknowledge(None, &[("route".into(), "/chat".into())])
            .unwrap_err();
        assert!(err.contains("not a drift segment"), "{err}");
        assert_eq!(
            drift.acknowledge(Some("refusal"), &[("model".into(), "claude-x".into())]),
            Ok(0)
        );
        assert_eq!(
            drift.acknowledge(Some("refusal"), &[("model".into(), "gpt-4o".into())]),
            Ok(1)
        );
        // Re-baselined: learning again, no flag.
        assert_eq!(flag("gpt-4o", "down"), None);
        assert_eq!(
            gauge_of(
                &drift,
                "evalstream_score_warming_up",
                &[("model", "gpt-4o")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn series_beyond_the_cap_are_counted_not_watched_and_state_round_trips() {
        let set = build_set(&default_specs()).unwrap();
        let drift = Drift::new(&config(vec![Segment::Model], 2), set.evaluators()).unwrap();
        for model in ["a", "b", "c"] {
            feed(&drift, model, 100, |i| !i.is_multiple_of(3));
        }
        assert_eq!(gauge_of(&drift, "evalstream_drift_series", &[]), Some(2.0));
        assert_eq!(
            gauge_of(&drift, "evalstream_drift_series_dropped_total", &[]),
            Some(100.0)
        );
        // Evaluators not named in `drift.evaluators` are not watched.
        let other = Span::default();
        let view = GenAiSpan::new(&other, ResourceView::new(None), None);
        drift.observe(1, &view, &score(true));
        assert_eq!(gauge_of(&drift, "evalstream_drift_series", &[]), Some(2.0));

        let saved = drift.snapshot();
        assert_eq!(saved.len(), 2);
        let restarted = Drift::new(&config(vec![Segment::Model], 2), set.evaluators()).unwrap();
        assert_eq!(restarted.restore(saved.clone()), 2);
        let mut again = restarted.snapshot();
        again.sort_by(|a, b| a.segments.cmp(&b.segments));
        let mut saved = saved;
        saved.sort_by(|a, b| a.segments.cmp(&b.segments));
        assert_eq!(again, saved);
        // Saved with other segments: not restored.
        let unsegmented = Drift::new(&config(vec![], 2), set.evaluators()).unwrap();
        assert_eq!(unsegmented.restore(saved), 0);
    }
}
