//! Drift detection on one series of scores (one evaluator, one combination of segment values).
//!
//! A series learns its baseline from its first `warmup` scores, then watches:
//!
//! - **pass/fail streams** (every warm-up score is 0 or 1 and equals `passed`): two Bernoulli
//!   CUSUMs on the failure indicator, the log-likelihood ratio of the baseline failure rate
//!   against odds [`FAIL_ODDS_RATIO`] times higher (quality down) or lower (up);
//! - **numeric scores**: the scores standardized by the baseline mean and standard deviation
//!   (floored at `min_std`, so a near-constant evaluator's one odd score is not a shift; clipped
//!   at ±[`CLIP`] so one outlier cannot be either), watched by a two-sided CUSUM with reference
//!   [`CUSUM_K`] (quickest on a step change) and an EWMA chart with weight [`EWMA_LAMBDA`] (on a
//!   slow slide).
//!
//! Every detector's threshold comes from the false-alarm budget (expected stable samples between
//! false alarms of the series), shared between its detectors, and from the series' own score
//! distribution ([`super::calibrate`]): scores on a 1–5 scale are skewed and discrete, and
//! thresholds made for normal data let them alarm three times too often. Thresholds are never
//! configured by hand, and one sample alone can never cross one.
//!
//! A baseline is an estimate, and one from 500 scores is noisy enough to cost false alarms: each
//! detector allows for its standard error, against the direction it watches, and the baseline
//! keeps learning from scores while every detector is below half its threshold, up to
//! [`BASELINE_CAP`] warm-ups' worth, re-calibrating as it doubles (without absorbing a shift in
//! progress). After an alarm the series stays drifted, its flag up, until acknowledged or
//! `rebaseline_after` passes; then it learns a new baseline.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::calibrate;

/// A pass/fail stream's design shift: the failure odds multiplied (down) or divided (up) by this.
/// 1.6 turns a 10% failure rate into 15%.
pub const FAIL_ODDS_RATIO: f64 = 1.6;
/// The numeric CUSUM's reference: half the design shift of 0.4 standard deviations (a 1–5 judge
/// score moving by 0.3 is about that).
pub const CUSUM_K: f64 = 0.2;
/// The EWMA chart's weight of each new score.
pub const EWMA_LAMBDA: f64 = 0.05;
/// Standardized scores are clipped to ±this.
pub const CLIP: f64 = 4.0;
/// The baseline learns from at most this many warm-ups' worth of scores.
pub const BASELINE_CAP: u64 = 20;
/// Every detector's ARL₀ target is the budget share times this (see [`Params`]).
pub const ARL_MARGIN: f64 = 1.0;
/// The shares of a numeric series' false-alarm budget: each CUSUM's and the EWMA chart's.
const CUSUM_SHARE: f64 = 0.45;
const EWMA_SHARE: f64 = 0.1;
/// The share of a standard normal mixed into a baseline's distribution for calibration.
const NORMAL_SHARE: f64 = 0.05;
/// Distinct values (or bins) a baseline keeps of its scores' distribution.
const MAX_BINS: usize = 64;

/// A numeric series' thresholds: the CUSUMs' and the EWMA chart's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct NumericThresholds {
    h_down: f64,
    h_up: f64,
    limit: f64,
}

/// Which way a score moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Scores or pass rate fell (quality down, or more refusals on a `refusal` evaluator).
    Down,
    /// Scores or pass rate rose.
    Up,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Down => "down",
            Direction::Up => "up",
        }
    }
}

/// Settings shared by every series, with the thresholds that depend only on them.
#[derive(Debug)]
pub struct Params {
    /// Expected stable samples between false alarms of one series.
    pub budget: f64,
    /// Scores that make a baseline.
    pub warmup: u64,
    /// Floor on the baseline standard deviation (and, squared, on a pass/fail failure rate).
    pub min_std: f64,
    /// Multiplies every detector's target ARL₀: room for what the calibration cannot see (a
    /// baseline estimated from few scores).
    margin: f64,
    /// Bernoulli thresholds by (failure rate in thousandths, direction): the chain is solved once
    /// per rate.
    bernoulli: Mutex<HashMap<(u32, Direction), f64>>,
}

impl Params {
    /// Settings for a budget.
    pub fn new(budget: f64, warmup: u64, min_std: f64) -> Params {
        Params {
            budget,
            warmup: warmup.max(2),
            min_std,
            margin: ARL_MARGIN,
            bernoulli: Mutex::new(HashMap::new()),
        }
    }

    /// The numeric detectors' thresholds for the baseline's own distribution of standardized
    /// scores (three detectors share the budget). A small share of normal scores is mixed in, so
    /// tails a warm-up has not shown yet still count.
    fn numeric(&self, baseline: &Baseline) -> NumericThresholds {
        let (mean, sd) = (baseline.mean, baseline.std().max(self.min_std));
        let n = baseline.n.max(1) as f64;
        let mut dist: Vec<(f64, f64)> = baseline
            .values
            .iter()
            .map(|&(v, count)| {
                let z = ((v - mean) / sd).clamp(-CLIP, CLIP);
                (z, (1.0 - NORMAL_SHARE) * count as f64 / n)
            })
            .collect();
        let normal: Vec<(f64, f64)> = (0..=40)
            .map(|i| {
                let z = -CLIP + 0.2 * f64::from(i);
                (
                    z,
                    calibrate::normal_cdf(z + 0.1) - calibrate::normal_cdf(z - 0.1),
                )
            })
            .collect();
        let total: f64 = normal.iter().map(|p| p.1).sum();
        dist.extend(normal.iter().map(|&(z, p)| (z, NORMAL_SHARE * p / total)));
        // The CUSUMs take most of the budget; the EWMA, slower on a step change, a tenth.
        let target = self.margin * self.budget / CUSUM_SHARE;
        let down: Vec<(f64, f64)> = dist.iter().map(|&(z, p)| (-z - CUSUM_K, p)).collect();
        let up: Vec<(f64, f64)> = dist.iter().map(|&(z, p)| (z - CUSUM_K, p)).collect();
        // One score moves a CUSUM by at most CLIP − k: never enough alone.
        let floor = 2.0 * (CLIP - CUSUM_K);
        NumericThresholds {
            h_down: calibrate::chain_threshold(&down, target).max(floor),
            h_up: calibrate::chain_threshold(&up, target).max(floor),
            limit: calibrate::ewma_chain_limit(&dist, EWMA_LAMBDA, self.budget / EWMA_SHARE)
                .max(2.0 * EWMA_LAMBDA * CLIP),
        }
    }

    /// A Bernoulli CUSUM for a baseline and direction (two share the budget).
    fn bernoulli(&self, baseline: &Baseline, direction: Direction) -> BernoulliCusum {
        // The baseline rate is an estimate: each direction is watched from the edge of its
        // standard error that is furthest from the change it looks for, so an estimate that is
        // off by chance does not read as a shift (most felt right after the warm-up).
        let estimate = 1.0 - baseline.pass_rate();
        let se = (estimate * (1.0 - estimate) / baseline.n.max(1) as f64).sqrt();
        let fail_rate = match direction {
            Direction::Down => estimate + se,
            Direction::Up => estimate - se,
        };
        let rarer = match direction {
            Direction::Down => baseline.passes,
            Direction::Up => baseline.n - baseline.passes,
        };
        let floor = (self.min_std * self.min_std).max(1e-4);
        let key_rate = ((fail_rate.clamp(floor, 1.0 - floor)) * 1000.0)
            .round()
            .max(1.0);
        let p0 = (key_rate / 1000.0).clamp(floor, 1.0 - floor);
        let odds = p0 / (1.0 - p0);
        let odds1 = match direction {
            Direction::Down => odds * FAIL_ODDS_RATIO,
            Direction::Up => odds / FAIL_ODDS_RATIO,
        };
        let p1 = odds1 / (1.0 + odds1);
        let on_fail = (p1 / p0).ln();
        let on_pass = ((1.0 - p1) / (1.0 - p0)).ln();
        let steps = [(on_fail, p0), (on_pass, 1.0 - p0)];
        let key = (key_rate as u32, direction);
        let cached = self
            .bernoulli
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        let h = cached.unwrap_or_else(|| {
            let h = calibrate::chain_threshold(&steps, self.margin * 2.0 * self.budget)
                // One score alone never alarms.
                .max(2.0 * on_fail.abs().max(on_pass.abs()));
            self.bernoulli
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, h);
            h
        });
        BernoulliCusum {
            on_fail,
            on_pass,
            h,
            s: 0.0,
            on: rarer >= MIN_OUTCOMES,
        }
    }
}

/// Running mean, variance and pass count (Welford).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Scores seen.
    pub n: u64,
    /// Their mean.
    pub mean: f64,
    m2: f64,
    /// How many passed.
    pub passes: u64,
    /// Whether every score was 0 or 1 and agreed with `passed`.
    pub binary: bool,
    /// The scores' distribution: distinct values with counts, the closest merged past
    /// [`MAX_BINS`] (a streaming histogram: exact for scores on a small scale).
    values: Vec<(f64, u64)>,
}

impl Baseline {
    fn new() -> Baseline {
        Baseline {
            binary: true,
            ..Baseline::default()
        }
    }

    fn add(&mut self, value: f64, passed: bool) {
        self.n += 1;
        let d = value - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (value - self.mean);
        self.passes += u64::from(passed);
        self.binary &= (value == 1.0 && passed) || (value == 0.0 && !passed);
        match self.values.binary_search_by(|b| b.0.total_cmp(&value)) {
            Ok(i) => self.values[i].1 += 1,
            Err(i) => {
                self.values.insert(i, (value, 1));
                if self.values.len() > MAX_BINS {
                    // Merge the two closest neighbours into their weighted mean.
                    let j = (0..self.values.len() - 1)
                        .min_by(|&a, &b| {
                            let gap = |k: usize| self.values[k + 1].0 - self.values[k].0;
                            gap(a).total_cmp(&gap(b))
                        })
                        .unwrap_or(0);
                    let ((v1, c1), (v2, c2)) = (self.values[j], self.values[j + 1]);
                    let c = c1 + c2;
                    self.values[j] = ((v1 * c1 as f64 + v2 * c2 as f64) / c as f64, c);
                    self.values.remove(j + 1);
                }
            }
        }
    }

    /// The standard deviation.
    pub fn std(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            (self.m2 / (self.n - 1) as f64).sqrt()
        }
    }

    /// The pass rate.
    pub fn pass_rate(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.passes as f64 / self.n as f64
        }
    }
}

/// A one-sided Bernoulli CUSUM on the failure indicator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BernoulliCusum {
    on_fail: f64,
    on_pass: f64,
    h: f64,
    s: f64,
    /// Off while the baseline has too few of the outcome this direction would make rarer (a
    /// stream that never failed cannot fail less; the floored rate would drift it "up").
    on: bool,
}

/// Outcomes of a kind a baseline needs before the direction that makes them rarer is watched.
const MIN_OUTCOMES: u64 = 10;

impl BernoulliCusum {
    fn add(&mut self, passed: bool) -> bool {
        if !self.on {
            return false;
        }
        self.s = (self.s + if passed { self.on_pass } else { self.on_fail }).max(0.0);
        self.s >= self.h
    }
}

/// The detectors watching a series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Watch {
    PassFail {
        down: BernoulliCusum,
        up: BernoulliCusum,
        /// Baseline size at the last calibration.
        calibrated_at: u64,
    },
    Numeric {
        down: f64,
        up: f64,
        ewma: f64,
        thresholds: NumericThresholds,
        /// Baseline size at the last calibration.
        calibrated_at: u64,
    },
}

/// Where a series is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Phase {
    /// Learning the baseline.
    Warmup,
    /// Watching for a shift.
    Watching(Watch),
    /// Shifted: the flag is up until acknowledged or re-baselined.
    Drifted {
        direction: Direction,
        /// When (unix seconds).
        since: u64,
    },
}

/// A detector statistic, as a fraction of its threshold (1 = alarm).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Statistic {
    /// `bernoulli_cusum`, `cusum` or `ewma`.
    pub detector: &'static str,
    /// The direction it watches.
    pub direction: Direction,
    /// Statistic / threshold.
    pub level: f64,
}

/// One series' detector state: what is persisted across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesState {
    baseline: Baseline,
    phase: Phase,
    /// Recent mean and pass rate (exponentially weighted over about a warm-up's scores).
    recent_mean: f64,
    recent_pass_rate: f64,
    /// Scores seen in all.
    pub count: u64,
}

impl Default for SeriesState {
    fn default() -> Self {
        SeriesState {
            baseline: Baseline::new(),
            phase: Phase::Warmup,
            recent_mean: 0.0,
            recent_pass_rate: 0.0,
            count: 0,
        }
    }
}

impl SeriesState {
    /// Adds a score at `now` (unix seconds); returns the direction when this score raised an
    /// alarm.
    pub fn observe(
        &mut self,
        params: &Params,
        value: f64,
        passed: bool,
        now: u64,
    ) -> Option<Direction> {
        if !value.is_finite() {
            return None;
        }
        self.count += 1;
        let w = if self.count == 1 {
            1.0
        } else {
            (1.0 / params.warmup as f64).max(1.0 / self.count as f64)
        };
        self.recent_mean += w * (value - self.recent_mean);
        self.recent_pass_rate += w * (f64::from(u8::from(passed)) - self.recent_pass_rate);
        match &mut self.phase {
            Phase::Drifted { .. } => None,
            Phase::Warmup => {
                self.baseline.add(value, passed);
                if self.baseline.n >= params.warmup {
                    self.phase = Phase::Watching(self.start_watching(params));
                }
                None
            }
            Phase::Watching(watch) => {
                let baseline = &mut self.baseline;
                let alarm = match watch {
                    Watch::PassFail {
                        down,
                        up,
                        calibrated_at,
                    } => {
                        let alarm = if down.add(passed) {
                            Some(Direction::Down)
                        } else if up.add(passed) {
                            Some(Direction::Up)
                        } else {
                            None
                        };
                        if alarm.is_none()
                            && down.s < down.h / 2.0
                            && up.s < up.h / 2.0
                            && baseline.n < BASELINE_CAP * params.warmup
                        {
                            baseline.add(value, passed);
                            // Recalibrate as the baseline doubles: its failure rate is sharper.
                            if baseline.n >= 2 * *calibrated_at {
                                let (s_down, s_up) = (down.s, up.s);
                                *down = params.bernoulli(baseline, Direction::Down);
                                *up = params.bernoulli(baseline, Direction::Up);
                                down.s = s_down;
                                up.s = s_up;
                                *calibrated_at = baseline.n;
                            }
                        }
                        alarm
                    }
                    Watch::Numeric {
                        down,
                        up,
                        ewma,
                        thresholds,
                        calibrated_at,
                    } => {
                        let t = *thresholds;
                        let sd = baseline.std().max(params.min_std);
                        let z = ((value - baseline.mean) / sd).clamp(-CLIP, CLIP);
                        // The baseline mean is an estimate (standard error 1/√n in these
                        // units): each CUSUM allows for it being off against its direction.
                        let k = CUSUM_K + 1.0 / (baseline.n as f64).sqrt();
                        *down = (*down - z - k).max(0.0);
                        *up = (*up + z - k).max(0.0);
                        *ewma = (1.0 - EWMA_LAMBDA) * *ewma + EWMA_LAMBDA * z;
                        let alarm = if *down >= t.h_down || *ewma <= -t.limit {
                            Some(Direction::Down)
                        } else if *up >= t.h_up || *ewma >= t.limit {
                            Some(Direction::Up)
                        } else {
                            None
                        };
                        if alarm.is_none()
                            && *down < t.h_down / 2.0
                            && *up < t.h_up / 2.0
                            && ewma.abs() < t.limit / 2.0
                            && baseline.n < BASELINE_CAP * params.warmup
                        {
                            baseline.add(value, passed);
                            if baseline.n >= 2 * *calibrated_at {
                                *thresholds = params.numeric(baseline);
                                *calibrated_at = baseline.n;
                            }
                        }
                        alarm
                    }
                };
                if let Some(direction) = alarm {
                    self.phase = Phase::Drifted {
                        direction,
                        since: now,
                    };
                }
                alarm
            }
        }
    }

    fn start_watching(&self, params: &Params) -> Watch {
        if self.baseline.binary {
            Watch::PassFail {
                down: params.bernoulli(&self.baseline, Direction::Down),
                up: params.bernoulli(&self.baseline, Direction::Up),
                calibrated_at: self.baseline.n,
            }
        } else {
            Watch::Numeric {
                down: 0.0,
                up: 0.0,
                ewma: 0.0,
                thresholds: params.numeric(&self.baseline),
                calibrated_at: self.baseline.n,
            }
        }
    }

    /// Forgets the baseline: the series learns a new one from the next scores (after an
    /// acknowledged alarm, or when a drifted series has waited long enough).
    pub fn rebaseline(&mut self) {
        let count = self.count;
        *self = SeriesState {
            count,
            ..SeriesState::default()
        };
    }

    /// The direction and start of a drift in progress.
    pub fn drifted(&self) -> Option<(Direction, u64)> {
        match self.phase {
            Phase::Drifted { direction, since } => Some((direction, since)),
            _ => None,
        }
    }

    /// Whether the baseline is still being learned.
    pub fn warming_up(&self) -> bool {
        self.phase == Phase::Warmup
    }

    /// The baseline (meaningful once warmed up).
    pub fn baseline(&self) -> &Baseline {
        &self.baseline
    }

    /// Recent mean and pass rate.
    pub fn recent(&self) -> (f64, f64) {
        (self.recent_mean, self.recent_pass_rate)
    }

    /// The detectors' statistics as fractions of their thresholds.
    pub fn statistics(&self) -> Vec<Statistic> {
        let Phase::Watching(watch) = &self.phase else {
            return Vec::new();
        };
        let stat = |detector, direction, level| Statistic {
            detector,
            direction,
            level,
        };
        match watch {
            Watch::PassFail { down, up, .. } => vec![
                stat("bernoulli_cusum", Direction::Down, down.s / down.h),
                stat("bernoulli_cusum", Direction::Up, up.s / up.h),
            ],
            Watch::Numeric {
                down,
                up,
                ewma,
                thresholds: t,
                ..
            } => vec![
                stat("cusum", Direction::Down, down / t.h_down),
                stat("cusum", Direction::Up, up / t.h_up),
                stat("ewma", Direction::Down, (-ewma / t.limit).max(0.0)),
                stat("ewma", Direction::Up, (ewma / t.limit).max(0.0)),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator for the tests' streams.
    struct Rng(u64);

    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Feeds `stable` samples, then `shifted` ones; returns (false alarms, delay after the change).
    fn run(
        params: &Params,
        stable: usize,
        shifted: usize,
        mut sample: impl FnMut(&mut Rng, bool) -> (f64, bool),
    ) -> (usize, Option<usize>) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut series = SeriesState::default();
        let mut false_alarms = 0;
        for _ in 0..stable {
            let (v, p) = sample(&mut rng, false);
            if series.observe(params, v, p, 0).is_some() {
                false_alarms += 1;
                series.rebaseline();
            }
        }
        for i in 0..shifted {
            let (v, p) = sample(&mut rng, true);
            if series.observe(params, v, p, 0).is_some() {
                return (false_alarms, Some(i));
            }
        }
        (false_alarms, None)
    }

    #[test]
    fn a_falling_pass_rate_is_caught_and_a_stable_one_is_not() {
        // A budget far above the stable lengths, so no false alarm is expected by chance.
        let params = Params::new(1_000_000.0, 500, 0.05);
        let bernoulli = |rate_before: f64, rate_after: f64| {
            move |rng: &mut Rng, shifted: bool| {
                let rate = if shifted { rate_after } else { rate_before };
                let passed = rng.uniform() < rate;
                (f64::from(u8::from(passed)), passed)
            }
        };
        let (false_alarms, delay) = run(&params, 50_000, 5_000, bernoulli(0.9, 0.8));
        assert_eq!(false_alarms, 0);
        let delay = delay.expect("0.90 → 0.80 is caught");
        assert!(delay < 1_500, "{delay}");
        let (false_alarms, delay) = run(&params, 100_000, 0, bernoulli(0.9, 0.9));
        assert_eq!((false_alarms, delay), (0, None));
    }

    #[test]
    fn a_mean_shift_is_caught_in_its_direction() {
        let params = Params::new(100_000.0, 500, 0.05);
        let mut series = SeriesState::default();
        let mut rng = Rng(42);
        let score = |rng: &mut Rng, mean: f64| {
            // A 1–5 score around `mean`.
            (mean + (rng.uniform() - 0.5) * 3.0).round().clamp(1.0, 5.0)
        };
        for _ in 0..20_000 {
            let v = score(&mut rng, 4.0);
            assert_eq!(series.observe(&params, v, v >= 4.0, 0), None);
        }
        assert!(!series.baseline().binary);
        let alarm = (0..5_000).find_map(|_| {
            let v = score(&mut rng, 3.5);
            series.observe(&params, v, v >= 4.0, 7)
        });
        assert_eq!(alarm, Some(Direction::Down));
        assert_eq!(series.drifted(), Some((Direction::Down, 7)));
        // Drifted: no new alarms until re-baselined.
        assert_eq!(series.observe(&params, 1.0, false, 8), None);
        series.rebaseline();
        assert!(series.warming_up());
    }

    #[test]
    fn a_near_constant_evaluator_does_not_alarm_on_one_odd_score() {
        let params = Params::new(100_000.0, 500, 0.05);
        for binary in [false, true] {
            let mut series = SeriesState::default();
            for i in 0..10_000u32 {
                // Constant, but for one odd score after the warm-up.
                let (v, p) = if i == 5_000 {
                    (0.0, false)
                } else if binary {
                    (1.0, true)
                } else {
                    (0.97, true)
                };
                assert_eq!(series.observe(&params, v, p, 0), None, "score {i}");
            }
        }
    }

    #[test]
    fn a_series_round_trips_through_its_persisted_form() {
        let params = Params::new(1_000.0, 20, 0.05);
        let mut series = SeriesState::default();
        for i in 0..100u32 {
            series.observe(&params, f64::from(i % 5), i % 5 > 1, 0);
        }
        let json = serde_json::to_string(&series).unwrap();
        let back: SeriesState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, series);
    }
}
