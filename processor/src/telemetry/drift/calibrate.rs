//! Thresholds from a false-alarm budget: the in-control average run length (ARL₀, the expected
//! number of stable samples between false alarms) of each detector, computed rather than looked
//! up, and inverted by bisection.
//!
//! - Gaussian CUSUM on standardized values: Siegmund's approximation, accurate to a few percent
//!   for the reference values used here.
//! - EWMA chart: the Markov-chain method of Brook and Evans (1972), the EWMA's range cut into
//!   cells, with normal transitions.
//! - CUSUMs with any step distribution (a Bernoulli CUSUM's two log-likelihood-ratio steps, or a
//!   numeric series' standardized scores): `S` on a grid, the chain's expected absorption time
//!   solved exactly; the system is banded, so this is cheap. [`chain_arl`]
//! - The EWMA chart on any distribution of scores, the same way ([`ewma_chain_arl`]); the
//!   Gaussian versions serve as checks and references.

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
        if high - low < 1e-3 * high.max(1e-9) {
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

/// Work allowed per ARL evaluation of a chain (states × cells of the largest fall × cells of
/// the largest rise, the cost of the banded elimination).
const CHAIN_WORK: f64 = 5e6;

/// The ARL₀ of the CUSUM `S = max(0, S + X)` alarming at `S ≥ h`, where `X` takes the value
/// `steps[j].0` with probability `steps[j].1` (the probabilities sum to 1).
///
/// `S` is put on a grid and every step rounded to the nearest cell. Rounding every step up
/// would bound the ARL₀ from below, but on a coarse grid it adds a drift per step that, over the
/// hundreds of steps of a run, cost a third of the budget; the nearest cell is unbiased, and
/// the grid is as fine as [`CHAIN_WORK`] allows.
pub fn chain_arl(steps: &[(f64, f64)], h: f64) -> f64 {
    if h <= 0.0 {
        return 1.0;
    }
    let rise = steps.iter().map(|s| s.0).fold(0.0f64, f64::max);
    let fall = steps.iter().map(|s| -s.0).fold(0.0f64, f64::max);
    if rise <= 0.0 {
        return f64::INFINITY;
    }
    // Up to 8 cells for the smallest step, fewer when the work would be too much.
    let smallest = steps
        .iter()
        .map(|s| s.0.abs())
        .filter(|&a| a > 0.0)
        .fold(f64::INFINITY, f64::min);
    let delta = (smallest / 8.0)
        .max((h * rise * fall.max(smallest) / CHAIN_WORK).cbrt())
        .max(h / 50_000.0);
    let n = (h / delta).ceil() as usize;
    let cells: Vec<(i64, f64)> = steps
        .iter()
        .filter(|s| s.1 > 0.0)
        .map(|&(x, p)| ((x / delta).round() as i64, p))
        .collect();
    let upper = cells.iter().map(|c| c.0.max(0) as usize).max().unwrap_or(0);
    let lower = cells
        .iter()
        .map(|c| (-c.0).max(0) as usize)
        .max()
        .unwrap_or(0);
    if cells.iter().all(|c| c.0 >= 0) {
        // Never falls: the chain moves up with the probability of a positive step.
        let p_rise: f64 = cells.iter().filter(|c| c.0 > 0).map(|c| c.1).sum();
        let per_rise = cells.iter().map(|c| c.0).max().unwrap_or(1).max(1) as f64;
        return (n as f64 / per_rise).ceil() / p_rise.max(1e-12);
    }
    // Banded system (I − Q) x = 1 over states 0..n (n and above absorb: the alarm), stored with
    // `lower` sub- and `upper` super-diagonals.
    let width = lower + upper + 1;
    let mut band = vec![0.0; n * width];
    let at = |row: usize, col: usize| row * width + (col + lower - row);
    for i in 0..n {
        band[at(i, i)] += 1.0;
        for &(cell, p) in &cells {
            let to = i as i64 + cell;
            if to < n as i64 {
                band[at(i, to.max(0) as usize)] -= p;
            }
        }
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

/// The CUSUM threshold with ARL₀ at least `arl` for these steps.
pub fn chain_threshold(steps: &[(f64, f64)], arl: f64) -> f64 {
    invert(arl, 0.0, 4.0, |h| chain_arl(steps, h))
}

/// ARL₀ of a two-sided EWMA chart `E = (1 − λ) E + λ Z`, starting at 0, alarming when `|E|`
/// exceeds `limit`, for `Z` taking `dist[j].0` with probability `dist[j].1`.
pub fn ewma_chain_arl(dist: &[(f64, f64)], lambda: f64, limit: f64) -> f64 {
    const CELLS: usize = 151;
    let width = 2.0 * limit / CELLS as f64;
    let mut matrix = vec![0.0; CELLS * CELLS];
    for i in 0..CELLS {
        let from = (1.0 - lambda) * (-limit + (i as f64 + 0.5) * width);
        matrix[i * CELLS + i] += 1.0;
        for &(z, p) in dist {
            let to = ((from + lambda * z + limit) / width).floor();
            if (0.0..CELLS as f64).contains(&to) {
                matrix[i * CELLS + to as usize] -= p;
            }
        }
    }
    let arl = solve_dense(&mut matrix, CELLS);
    arl[CELLS / 2]
}

/// The EWMA limit with ARL₀ at least `arl` for this distribution of `Z`.
pub fn ewma_chain_limit(dist: &[(f64, f64)], lambda: f64, arl: f64) -> f64 {
    invert(arl, 0.0, 0.5, |limit| ewma_chain_arl(dist, lambda, limit))
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
        let steps = [
            ((p1 / p0).ln(), p0),
            (((1.0 - p1) / (1.0 - p0)).ln(), 1.0 - p0),
        ];
        let target = 2000.0;
        let h = chain_threshold(&steps, target);
        let simulated = simulated_arl(
            600,
            |s| {
                if uniform(s) < p0 {
                    steps[0].0
                } else {
                    steps[1].0
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

    #[test]
    fn the_chains_agree_with_the_normal_approximations_on_normal_steps() {
        // N(0, 1) on 41 points.
        let points: Vec<(f64, f64)> = (0..41)
            .map(|i| {
                let z = -4.0 + 0.2 * f64::from(i);
                (z, normal_cdf(z + 0.1) - normal_cdf(z - 0.1))
            })
            .collect();
        let total: f64 = points.iter().map(|p| p.1).sum();
        let dist: Vec<(f64, f64)> = points.iter().map(|&(z, p)| (z, p / total)).collect();
        let k = 0.25;
        let steps: Vec<(f64, f64)> = dist.iter().map(|&(z, p)| (z - k, p)).collect();
        let (chain, siegmund) = (
            chain_threshold(&steps, 10_000.0),
            cusum_threshold(k, 10_000.0),
        );
        assert!(
            (chain / siegmund - 1.0).abs() < 0.1,
            "{chain} vs {siegmund}"
        );
        let (chain, markov) = (
            ewma_chain_limit(&dist, 0.05, 10_000.0),
            ewma_limit(0.05, 10_000.0),
        );
        assert!((chain / markov - 1.0).abs() < 0.05, "{chain} vs {markov}");
    }
}
