//! Thresholds from a false-alarm budget: the in-control average run length (ARL₀, the expected
//! number of stable samples between false alarms) of each detector, computed rather than looked
//! up, and inverted by bisection.
//!
//! - Gaussian CUSUM on standardized values: Siegmund's approximation, accurate to a few percent
//!   for the reference values used here.
//! - EWMA chart: the Markov-chain method of Brook and Evans (1972), the EWMA's range cut into
//!   cells, with normal transitions.
//! - Bernoulli CUSUM: its log-likelihood-ratio steps are put on a grid (rounded against the
//!   budget: up-steps up, down-steps down, so the computed ARL₀ is a lower bound) and the chain's
//!   expected absorption time is solved exactly; the system is banded, so this is cheap.

/// The standard normal distribution function.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// Smallest `x` in `[low, high]` with `arl(x) >= target`, for an `arl` increasing in `x`.
fn invert(target: f64, mut low: f64, mut high: f64, arl: impl Fn(f64) -> f64) -> f64 {
    while arl(high) < target {
        low = high;
        high *= 2.0;
        if high > 1e6 {
            return high;
        }
    }
    for _ in 0..60 {
        let mid = 0.5 * (low + high);
        if arl(mid) >= target {
            high = mid;
        } else {
            low = mid;
        }
        if high - low < 1e-4 * high.max(1e-9) {
            break;
        }
    }
    high
}

/// ARL₀ of a one-sided CUSUM `S = max(0, S + z − k)` on N(0, 1) data alarming at `h`
/// (Siegmund's approximation).
pub fn cusum_arl(k: f64, h: f64) -> f64 {
    // In control the drift per sample is −k: ARL₀ ≈ (e^{2kb} − 2kb − 1) / 2k², b = h + 1.166.
    let a = 2.0 * k * (h + 1.166);
    (a.exp() - a - 1.0) / (2.0 * k * k)
}

/// The one-sided Gaussian CUSUM threshold for reference `k` with ARL₀ at least `arl`.
pub fn cusum_threshold(k: f64, arl: f64) -> f64 {
    invert(arl, 0.0, 8.0, |h| cusum_arl(k, h))
}

/// ARL₀ of a two-sided EWMA chart `E = (1 − λ) E + λ z` on N(0, 1) data, starting at 0, that
/// alarms when `|E|` exceeds `limit` (in units of the data's standard deviation).
pub fn ewma_arl(lambda: f64, limit: f64) -> f64 {
    const CELLS: usize = 81;
    let width = 2.0 * limit / CELLS as f64;
    let centre = |i: usize| -limit + (i as f64 + 0.5) * width;
    let mut matrix = vec![0.0; CELLS * CELLS];
    for i in 0..CELLS {
        let from = (1.0 - lambda) * centre(i);
        for j in 0..CELLS {
            let upper = (centre(j) + width / 2.0 - from) / lambda;
            let lower = (centre(j) - width / 2.0 - from) / lambda;
            let p = normal_cdf(upper) - normal_cdf(lower);
            matrix[i * CELLS + j] = if i == j { 1.0 - p } else { -p };
        }
    }
    let arl = solve_dense(&mut matrix, CELLS);
    arl[CELLS / 2]
}

/// The EWMA chart's limit (in standard deviations of the data) with ARL₀ at least `arl`.
pub fn ewma_limit(lambda: f64, arl: f64) -> f64 {
    invert(arl, 0.0, 0.5, |limit| ewma_arl(lambda, limit))
}

/// Solves `A x = 1` (Gaussian elimination with partial pivoting; `A` is `n × n`, row-major).
fn solve_dense(a: &mut [f64], n: usize) -> Vec<f64> {
    let mut b = vec![1.0; n];
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&x, &y| a[x * n + col].abs().total_cmp(&a[y * n + col].abs()))
            .unwrap_or(col);
        if pivot != col {
            for c in 0..n {
                a.swap(col * n + c, pivot * n + c);
            }
            b.swap(col, pivot);
        }
        let d = a[col * n + col];
        if d == 0.0 {
            continue;
        }
        for row in col + 1..n {
            let f = a[row * n + col] / d;
            if f == 0.0 {
                continue;
            }
            for c in col..n {
                a[row * n + c] -= f * a[col * n + c];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let mut sum = b[row];
        for c in row + 1..n {
            sum -= a[row * n + c] * x[c];
        }
        let d = a[row * n + row];
        x[row] = if d == 0.0 { f64::INFINITY } else { sum / d };
    }
    x
}

/// A Bernoulli CUSUM's steps: `up` with probability `p_up`, else `−down` (both positive).
#[derive(Debug, Clone, Copy)]
pub struct BernoulliSteps {
    /// The step on the outcome that points to the change.
    pub up: f64,
    /// The size of the step on the other outcome.
    pub down: f64,
    /// The in-control probability of the up-step.
    pub p_up: f64,
}

/// Grid states at most: bounds the work per ARL evaluation (the system is banded, so the work
/// is states × the two steps in grid units).
const MAX_STATES: f64 = 20_000.0;

/// A lower bound on the ARL₀ of `S = max(0, S ± step)` alarming at `S ≥ h`.
pub fn bernoulli_arl(steps: BernoulliSteps, h: f64) -> f64 {
    if h <= 0.0 {
        return 1.0;
    }
    // Up to 8 cells per smaller step; one when the steps differ a lot (a rare outcome's large
    // step against a frequent one's small step), so the band stays narrow.
    let smaller = steps.up.min(steps.down);
    let ratio = steps.up.max(steps.down) / smaller.max(1e-12);
    let cells = if ratio > 16.0 { 1.0 } else { 8.0 };
    let delta = (smaller / cells).max(h / MAX_STATES);
    let up = (steps.up / delta).ceil().max(1.0) as usize;
    let down = (steps.down / delta).floor() as usize;
    let n = (h / delta).ceil() as usize;
    if down == 0 {
        // Down-steps below the grid: never decreasing, alarms after about h/up up-steps.
        return (n as f64 / up as f64).ceil() / steps.p_up.max(1e-12);
    }
    // Banded system (I − Q) x = 1: row i has 1 on the diagonal, −p_up at i + up (if below n)
    // and −(1 − p_up) at max(i − down, 0). Stored with `down` sub- and `up` super-diagonals.
    let lower = down;
    let upper = up;
    let width = lower + upper + 1;
    let mut band = vec![0.0; n * width];
    let at = |row: usize, col: usize| row * width + (col + lower - row);
    for i in 0..n {
        band[at(i, i)] += 1.0;
        if i + up < n {
            band[at(i, i + up)] -= steps.p_up;
        }
        let to = i.saturating_sub(down);
        band[at(i, to)] -= 1.0 - steps.p_up;
    }
    let mut b = vec![1.0; n];
    // Elimination without pivoting: I − Q of a transient chain is an M-matrix.
    for col in 0..n {
        let d = band[at(col, col)];
        if d.abs() < 1e-300 {
            return f64::INFINITY;
        }
        for row in col + 1..n.min(col + lower + 1) {
            let f = band[at(row, col)] / d;
            if f == 0.0 {
                continue;
            }
            for c in col..n.min(col + upper + 1) {
                band[at(row, c)] -= f * band[at(col, c)];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let mut sum = b[row];
        for c in row + 1..n.min(row + upper + 1) {
            sum -= band[at(row, c)] * x[c];
        }
        x[row] = sum / band[at(row, row)];
    }
    x[0]
}

/// The Bernoulli CUSUM threshold with ARL₀ at least `arl`.
pub fn bernoulli_threshold(steps: BernoulliSteps, arl: f64) -> f64 {
    invert(arl, 0.0, 4.0, |h| bernoulli_arl(steps, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a one-sided CUSUM over simulated in-control samples and returns the mean run length.
    fn simulated_arl(runs: usize, mut step: impl FnMut(&mut u64) -> f64, h: f64) -> f64 {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut total = 0u64;
        for _ in 0..runs {
            let mut s = 0.0f64;
            let mut n = 0u64;
            loop {
                n += 1;
                s = (s + step(&mut seed)).max(0.0);
                if s >= h {
                    break;
                }
            }
            total += n;
        }
        total as f64 / runs as f64
    }

    fn uniform(seed: &mut u64) -> f64 {
        // xorshift64*: good enough for a test's simulation.
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn gaussian(seed: &mut u64) -> f64 {
        let (u, v) = (uniform(seed).max(1e-300), uniform(seed));
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    #[test]
    fn the_cusum_approximation_matches_simulation() {
        // A short ARL so the simulation is quick; the approximation is not tuned to it.
        let (k, target) = (0.5, 500.0);
        let h = cusum_threshold(k, target);
        assert!((cusum_arl(k, h) - target).abs() < 1.0);
        let simulated = simulated_arl(2000, |s| gaussian(s) - k, h);
        assert!(
            (simulated / target - 1.0).abs() < 0.12,
            "h {h}: simulated {simulated}, wanted {target}"
        );
    }

    #[test]
    fn the_ewma_chain_matches_simulation() {
        let (lambda, target) = (0.1, 400.0);
        let limit = ewma_limit(lambda, target);
        let mut seed = 7u64;
        let mut total = 0u64;
        let runs = 2000;
        for _ in 0..runs {
            let mut e = 0.0f64;
            let mut n = 0u64;
            loop {
                n += 1;
                e = (1.0 - lambda) * e + lambda * gaussian(&mut seed);
                if e.abs() > limit {
                    break;
                }
            }
            total += n;
        }
        let simulated = total as f64 / runs as f64;
        assert!(
            (simulated / target - 1.0).abs() < 0.12,
            "limit {limit}: simulated {simulated}, wanted {target}"
        );
        // The classic table value: λ = 0.1 and L = 2.814 give ARL₀ = 500 (Lucas and Saccucci).
        let sd = (lambda / (2.0 - lambda)).sqrt();
        let table = ewma_limit(lambda, 500.0) / sd;
        assert!((table - 2.814).abs() < 0.02, "L = {table}");
    }

    #[test]
    fn the_bernoulli_chain_bounds_the_simulated_arl_from_below() {
        let (p0, p1) = (0.1f64, 0.15f64);
        let steps = BernoulliSteps {
            up: (p1 / p0).ln(),
            down: -((1.0 - p1) / (1.0 - p0)).ln(),
            p_up: p0,
        };
        let target = 2000.0;
        let h = bernoulli_threshold(steps, target);
        let simulated = simulated_arl(
            600,
            |s| {
                if uniform(s) < p0 {
                    steps.up
                } else {
                    -steps.down
                }
            },
            h,
        );
        assert!(
            simulated >= target * 0.9 && simulated < target * 1.5,
            "h {h}: simulated {simulated}, the chain's bound {target}"
        );
        // Lorden's bound ARL₀ ≥ e^h is far more conservative.
        assert!(h < target.ln());
    }
}
