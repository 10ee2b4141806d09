//! Per-tensor sparsity allocation for UltraDelta: variance-based mixed sparsity (MSA) and uniform.
//!
//! This crate owns one decision: given a global target sparsity `s` over all compressed tensors
//! (weighted by element count) and one [`TensorStat`] per tensor, which sparsity rate each tensor
//! gets. It also provides the deterministic [`population_std`] used to build those statistics.
//! It never opens files, never sees tensor names or values beyond the slice handed to
//! [`population_std`], and knows nothing about quantization, pruning or archives: callers map
//! the returned rates back to their tensors by index.
//!
//! # MSA (ALGORITHM.md §2) and the defect fixed here
//!
//! [`msa`] sorts tensors by standard deviation (ascending, ties by index), walks them
//! accumulating element counts and puts a tensor whose running total is `<= N/3` in the
//! [`Tier::Low`] tier, `<= 2N/3` in [`Tier::Mid`], the rest in [`Tier::High`]. Low gets `s + δ`,
//! mid gets `s`, high gets the remainder `(s·N − s·N_mid − (s+δ)·N_low) / N_high`, so the
//! element-weighted mean is exactly `s`.
//!
//! The authors' reference code does not cap `s + δ`: with `s = 0.99, δ = 0.01` the whole
//! low-variance third is pruned to nothing (rate 1), and its `[0, 0.99]` clip of the remainder
//! silently changes the global sparsity. Here every rate is kept in `[0, max_rate]` (with
//! `max_rate < 1`, so no tensor is ever emptied by the allocation) and the mass removed or
//! added by the cap is redistributed over the tensors that are not at a bound, by one common
//! additive shift (which keeps the `δ` gap between tiers wherever possible). The
//! element-weighted mean of the rates then equals `s` to rounding (well within `1e-12`). When no
//! rate leaves `[0, max_rate]` the result is the reference algorithm's, bit for bit.

use std::cmp::Ordering;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Errors of the allocation crate. Callers add the tensor or file names they know.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The requested global sparsity is outside the allowed range.
    #[error("target sparsity {value} is outside [0, {max}]")]
    InvalidSparsity {
        /// The value given.
        value: f64,
        /// The largest allowed value.
        max: f64,
    },
    /// The MSA step δ is negative or not finite.
    #[error("MSA step {0} must be a finite number >= 0")]
    InvalidStep(f64),
    /// The per-tensor rate cap is not in `(0, 1)`.
    #[error("maximum per-tensor rate {0} must be in (0, 1)")]
    InvalidMaxRate(f64),
    /// A tensor's standard deviation is NaN or infinite.
    #[error("tensor #{index}: standard deviation {std} is not a finite number")]
    InvalidStat {
        /// Index of the tensor in the `stats` slice.
        index: usize,
        /// The offending value.
        std: f64,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the allocator needs to know about one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorStat {
    /// Number of elements (the weight of this tensor in the global mean).
    pub numel: u64,
    /// Population standard deviation of the tensor's (quantized) delta.
    pub std: f64,
}

/// MSA tier of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Lowest-variance third of the elements: pruned most (`s + δ`).
    Low,
    /// Middle third: pruned at the target `s`.
    Mid,
    /// Highest-variance third: pruned least (the remainder).
    High,
}

impl Tier {
    /// Lower-case name (`"low"`, `"mid"`, `"high"`), as serialized.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Low => "low",
            Tier::Mid => "mid",
            Tier::High => "high",
        }
    }
}

/// Parameters of [`msa`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MsaConfig {
    /// δ: how much more the low tier is pruned than the target (reference: 0.01).
    pub step: f64,
    /// Cap on every per-tensor rate, in `(0, 1)` (default 0.999).
    pub max_rate: f64,
}

impl Default for MsaConfig {
    fn default() -> Self {
        MsaConfig {
            step: 0.01,
            max_rate: 0.999,
        }
    }
}

/// Per-tensor sparsity rates, in the order of the `stats` slice they were computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    /// Sparsity rate of each tensor, in `[0, 1)`.
    pub rates: Vec<f64>,
    /// MSA tier of each tensor; `None` for a uniform allocation.
    pub tiers: Vec<Option<Tier>>,
}

impl Allocation {
    /// Element-weighted mean of the rates: `Σ numel_i · rate_i / Σ numel_i` (0 when there are no
    /// elements). `stats` must be the slice the allocation was computed from.
    pub fn weighted_mean(&self, stats: &[TensorStat]) -> f64 {
        let total: f64 = stats.iter().map(|t| t.numel as f64).sum();
        if total == 0.0 {
            return 0.0;
        }
        let mass: f64 = stats
            .iter()
            .zip(&self.rates)
            .map(|(t, &r)| t.numel as f64 * r)
            .sum();
        mass / total
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.rates.len()
    }

    /// True when the allocation covers no tensor.
    pub fn is_empty(&self) -> bool {
        self.rates.is_empty()
    }
}

/// Every tensor gets the same rate `sparsity` (in `[0, 1)`); tiers are `None`.
pub fn uniform(stats: &[TensorStat], sparsity: f64) -> Result<Allocation> {
    if !(0.0..1.0).contains(&sparsity) {
        return Err(Error::InvalidSparsity {
            value: sparsity,
            max: 1.0 - f64::EPSILON,
        });
    }
    Ok(Allocation {
        rates: vec![sparsity; stats.len()],
        tiers: vec![None; stats.len()],
    })
}

/// Variance-based mixed sparsity allocation: ALGORITHM.md §2 with the rate cap fixed (see the
/// crate documentation).
///
/// Tiers: tensors sorted by `std` ascending (ties by index, so the order is total and stable);
/// with `N` the total element count and `c` the running count including the tensor,
/// `3c <= N` is low, `3c <= 2N` is mid, else high (integer arithmetic, no rounding).
/// Raw rates: low `s + δ`, mid `s`, high `(s·N − s·N_mid − (s+δ)·N_low) / N_high`.
/// Then all rates are brought into `[0, cfg.max_rate]` with the excess redistributed so that
/// the element-weighted mean is exactly `sparsity`.
///
/// Empty `stats` gives an empty allocation. If every tensor has zero elements, each gets
/// `sparsity` and tier [`Tier::Mid`].
///
/// # Errors
/// [`Error::InvalidMaxRate`] unless `0 < max_rate < 1`; [`Error::InvalidSparsity`] unless
/// `0 <= sparsity <= max_rate`; [`Error::InvalidStep`] if `step` is negative or not finite;
/// [`Error::InvalidStat`] if a standard deviation is not finite.
pub fn msa(stats: &[TensorStat], sparsity: f64, cfg: &MsaConfig) -> Result<Allocation> {
    let max_rate = cfg.max_rate;
    check_common(stats, sparsity, max_rate)?;
    let delta = cfg.step;
    if !(delta.is_finite() && delta >= 0.0) {
        return Err(Error::InvalidStep(delta));
    }
    let s = sparsity;
    Ok(tiered(stats, s, max_rate, |nf, n_low, n_mid, n_high| {
        [
            s + delta,
            s,
            (s * nf - s * n_mid - (s + delta) * n_low) / n_high,
        ]
    }))
}

/// The tiered allocation of [`msa`] and [`msa_relative`] on checked inputs: `raw(N, N_low, N_mid, N_high)` gives
/// the low, mid and high tiers' rates; rates outside `[0, max_rate]` are brought in and the excess redistributed
/// (element-weighted mean `sparsity`). Empty `stats` give an empty allocation; zero elements give every tensor
/// `sparsity` and tier mid.
fn tiered(
    stats: &[TensorStat],
    sparsity: f64,
    max_rate: f64,
    raw: impl FnOnce(f64, f64, f64, f64) -> [f64; 3],
) -> Allocation {
    if stats.is_empty() {
        return Allocation {
            rates: Vec::new(),
            tiers: Vec::new(),
        };
    }
    let total: u128 = stats.iter().map(|t| u128::from(t.numel)).sum();
    if total == 0 {
        return Allocation {
            rates: vec![sparsity; stats.len()],
            tiers: vec![Some(Tier::Mid); stats.len()],
        };
    }
    let (tiers, n_low, n_mid, n_high) = tiers_by_std(stats, total);
    let nf = total as f64;
    let [low, mid, high] = raw(nf, n_low as f64, n_mid as f64, n_high as f64);
    let raw: Vec<f64> = tiers
        .iter()
        .map(|t| match t {
            Tier::Low => low,
            Tier::Mid => mid,
            Tier::High => high,
        })
        .collect();
    let rates = if raw.iter().all(|&r| (0.0..=max_rate).contains(&r)) {
        raw
    } else {
        let weights: Vec<f64> = stats.iter().map(|t| t.numel as f64).collect();
        redistribute(&raw, &weights, sparsity * nf, max_rate)
    };
    Allocation {
        rates,
        tiers: tiers.into_iter().map(Some).collect(),
    }
}

/// The MSA tiers of `stats` (see [`msa`]) and the element counts of the low, mid and high tiers. `total` is the
/// element count of `stats`, greater than 0.
fn tiers_by_std(stats: &[TensorStat], total: u128) -> (Vec<Tier>, u128, u128, u128) {
    // Stable order: std ascending, ties by index.
    let mut order: Vec<usize> = (0..stats.len()).collect();
    order.sort_by(|&a, &b| match stats[a].std.total_cmp(&stats[b].std) {
        Ordering::Equal => a.cmp(&b),
        o => o,
    });

    let mut tiers = vec![Tier::High; stats.len()];
    let (mut n_low, mut n_mid, mut n_high) = (0u128, 0u128, 0u128);
    let mut running: u128 = 0;
    for &i in &order {
        let n = u128::from(stats[i].numel);
        running += n;
        let tier = if 3 * running <= total {
            n_low += n;
            Tier::Low
        } else if 3 * running <= 2 * total {
            n_mid += n;
            Tier::Mid
        } else {
            n_high += n;
            Tier::High
        };
        tiers[i] = tier;
    }
    // The last tensor in the walk has running == total > 2N/3, so the high tier holds at
    // least one element whenever total > 0.
    debug_assert!(n_high > 0);
    (tiers, n_low, n_mid, n_high)
}

/// Checks what every allocation checks: `0 < max_rate < 1`, `0 <= sparsity <= max_rate`, every std finite.
fn check_common(stats: &[TensorStat], sparsity: f64, max_rate: f64) -> Result<()> {
    if !(max_rate > 0.0 && max_rate < 1.0) {
        return Err(Error::InvalidMaxRate(max_rate));
    }
    if !(0.0..=max_rate).contains(&sparsity) {
        return Err(Error::InvalidSparsity {
            value: sparsity,
            max: max_rate,
        });
    }
    if let Some((index, t)) = stats.iter().enumerate().find(|(_, t)| !t.std.is_finite()) {
        return Err(Error::InvalidStat { index, std: t.std });
    }
    Ok(())
}

/// MSA with tiers as multiples of the density `d = 1 − s` instead of an additive step: the low-σ third keeps
/// `d·(1 − spread)`, the middle third `d`, the high-σ third the remainder (`d·(1 + spread)` when the thirds are
/// equal), so the element-weighted mean density is exactly `d`. With `spread = δ / (1 − s)` this is [`msa`]'s
/// allocation at that `s`; the paper's δ = 0.01 at s = 0.97 is `spread = 1/3`. Unlike the additive step it
/// never collapses at high ratios: at s = 0.995 the low tier keeps a third less than the others rather than
/// being pushed to the cap (δ = 0.01 asks for s + δ = 1.005 there). Rates outside `[0, max_rate]` are brought
/// in and the excess redistributed as in [`msa`].
///
/// # Errors
/// As [`msa`]; [`Error::InvalidStep`] unless `0 <= spread < 1`.
pub fn msa_relative(
    stats: &[TensorStat],
    sparsity: f64,
    spread: f64,
    max_rate: f64,
) -> Result<Allocation> {
    check_common(stats, sparsity, max_rate)?;
    if !(spread.is_finite() && (0.0..1.0).contains(&spread)) {
        return Err(Error::InvalidStep(spread));
    }
    let d = 1.0 - sparsity;
    let d_low = d * (1.0 - spread);
    Ok(tiered(
        stats,
        sparsity,
        max_rate,
        |nf, n_low, n_mid, n_high| {
            let d_high = (d * nf - d * n_mid - d_low * n_low) / n_high;
            [1.0 - d_low, sparsity, 1.0 - d_high]
        },
    ))
}

/// Data-free rate–distortion allocation: each tensor keeps a density proportional to `std^power`, clipped to
/// `[1 − max_rate, 1]`, scaled so that the element-weighted mean density is `1 − sparsity`.
///
/// Why `power = 1` is the rate–distortion optimum of a simple model: dropping entries of a tensor at random
/// with keep probability `p` and rescaling the survivors by `1/p` leaves an unbiased delta whose squared error
/// is `n·σ²·(1 − p)/p` (σ² the mean square of the entries); with the same bits per kept entry everywhere,
/// minimising `Σ n_t σ_t² / p_t` under `Σ n_t p_t = D` gives `σ_t² / p_t² = λ`, so `p_t ∝ σ_t`. `power = 0` is
/// the uniform allocation; powers between trade the two. Tiers are `None`. The scale is found by bisection
/// (a fixed number of steps, so the result is deterministic); the weighted mean is then within `1e-9` of
/// `sparsity`.
///
/// # Errors
/// As [`msa`]; [`Error::InvalidStep`] unless `power` is finite and in `[0, 4]`.
pub fn proportional(
    stats: &[TensorStat],
    sparsity: f64,
    power: f64,
    max_rate: f64,
) -> Result<Allocation> {
    check_common(stats, sparsity, max_rate)?;
    if !(power.is_finite() && (0.0..=4.0).contains(&power)) {
        return Err(Error::InvalidStep(power));
    }
    let total: f64 = stats.iter().map(|t| t.numel as f64).sum();
    if stats.is_empty() || total == 0.0 {
        return uniform(stats, sparsity);
    }
    let floor = 1.0 - max_rate;
    let target = (1.0 - sparsity) * total;
    // Weight of each tensor: std^power, relative to the largest so that the scale stays in a sane range.
    let max_std = stats.iter().map(|t| t.std).fold(0.0f64, f64::max);
    if max_std == 0.0 || power == 0.0 {
        return uniform(stats, sparsity);
    }
    let w: Vec<f64> = stats
        .iter()
        .map(|t| (t.std / max_std).powf(power))
        .collect();
    let mass = |c: f64| -> f64 {
        stats
            .iter()
            .zip(&w)
            .map(|(t, &wi)| t.numel as f64 * (c * wi).clamp(floor, 1.0))
            .sum()
    };
    // mass is non-decreasing in c; mass(0) = floor·N <= target (sparsity <= max_rate) and mass(c) = N for c
    // large enough (every tensor with w > 0 at 1; those with w = 0 stay at the floor).
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while mass(hi) < target && hi < 1e300 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mass(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let rates = stats
        .iter()
        .zip(&w)
        .map(|(_, &wi)| 1.0 - (hi * wi).clamp(floor, 1.0))
        .collect();
    Ok(Allocation {
        rates,
        tiers: vec![None; stats.len()],
    })
}

/// Finds the shift `t` with `Σ w_i · clamp(r_i + t, 0, cap) = target` and returns the clamped,
/// shifted rates. `f(t)` is continuous, piecewise linear and non-decreasing, from 0 to
/// `cap · Σ w`; the caller guarantees `0 <= target <= cap · Σ w`. The breakpoints are
/// `-r_i` and `cap - r_i`; a binary search finds the segment holding the target, where `f` is
/// linear and the equation is solved exactly, followed by one rounding correction.
fn redistribute(raw: &[f64], weights: &[f64], target: f64, cap: f64) -> Vec<f64> {
    let mass = |t: f64| -> f64 {
        raw.iter()
            .zip(weights)
            .map(|(&r, &w)| w * (r + t).clamp(0.0, cap))
            .sum()
    };
    let mut points: Vec<f64> = raw.iter().flat_map(|&r| [-r, cap - r]).collect();
    points.sort_by(f64::total_cmp);
    points.dedup();
    // Largest breakpoint index k with mass(points[k]) <= target. mass(points[0]) == 0 <= target.
    let k = points
        .partition_point(|&p| mass(p) <= target)
        .saturating_sub(1);
    let t0 = points[k];
    let m0 = mass(t0);
    // Slope on (points[k], points[k+1]): weight of tensors strictly inside the bounds there.
    let probe = match points.get(k + 1) {
        Some(&p1) => 0.5 * (t0 + p1),
        None => t0 + 1.0,
    };
    let slope: f64 = raw
        .iter()
        .zip(weights)
        .filter(|(&r, _)| {
            let v = r + probe;
            v > 0.0 && v < cap
        })
        .map(|(_, &w)| w)
        .sum();
    let t = if slope > 0.0 {
        t0 + (target - m0) / slope
    } else {
        t0
    };
    let mut rates: Vec<f64> = raw.iter().map(|&r| (r + t).clamp(0.0, cap)).collect();

    // One correction pass for floating-point rounding: spread the residual over tensors that
    // are strictly inside the bounds, proportionally to nothing but their weight.
    let got: f64 = rates.iter().zip(weights).map(|(&r, &w)| r * w).sum();
    let residual = target - got;
    let free: f64 = rates
        .iter()
        .zip(weights)
        .filter(|(&r, _)| r > 0.0 && r < cap)
        .map(|(_, &w)| w)
        .sum();
    if residual != 0.0 && free > 0.0 {
        let shift = residual / free;
        for r in rates.iter_mut().filter(|r| **r > 0.0 && **r < cap) {
            *r = (*r + shift).clamp(0.0, cap);
        }
    }
    rates
}

/// Chunk length of [`population_std`]: fixed, so the result never depends on the thread count.
pub const STD_CHUNK: usize = 1 << 16;

/// Population standard deviation of `values` with f64 accumulation.
///
/// Deterministic: the slice is cut into fixed chunks of [`STD_CHUNK`] elements; each chunk's
/// count, mean and sum of squared deviations are computed by an exact two-pass in f64 (chunks
/// may run in parallel), and the chunk summaries are combined strictly in index order with
/// Chan et al.'s pairwise update. Returns 0 for an empty slice and NaN if any value is NaN or
/// infinite (callers validate their data first).
pub fn population_std(values: &[f32]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let parts: Vec<(f64, f64, f64)> = values
        .par_chunks(STD_CHUNK)
        .map(|chunk| {
            let n = chunk.len() as f64;
            let mean = chunk.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
            let m2 = chunk
                .iter()
                .map(|&x| {
                    let d = f64::from(x) - mean;
                    d * d
                })
                .sum::<f64>();
            (n, mean, m2)
        })
        .collect();
    let (mut n, mut mean, mut m2) = parts[0];
    for &(nb, mb, m2b) in &parts[1..] {
        let nt = n + nb;
        let d = mb - mean;
        mean += d * nb / nt;
        m2 += m2b + d * d * n * nb / nt;
        n = nt;
    }
    // Every term of m2 is a square or a product of non-negative counts: m2 >= 0 (or NaN).
    (m2 / n).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn st(numel: u64, std: f64) -> TensorStat {
        TensorStat { numel, std }
    }

    #[test]
    fn msa_hand_example() {
        // Six tensors, N = 600, s = 0.5, δ = 0.1. Sorted by std: #3(100) #0(100) #4(100)
        // #1(100) #5(100) #2(100); running totals 100 200 | 300 400 | 500 600.
        // 3c <= 600: c = 100, 200 -> low. 3c <= 1200: c = 300, 400 -> mid. Rest high.
        // N_low = 200, N_mid = 200, N_high = 200.
        // s_high = (0.5·600 − 0.5·200 − 0.6·200) / 200 = (300 − 100 − 120) / 200 = 0.4.
        let stats = [
            st(100, 0.2),
            st(100, 0.4),
            st(100, 0.6),
            st(100, 0.1),
            st(100, 0.3),
            st(100, 0.5),
        ];
        let cfg = MsaConfig {
            step: 0.1,
            max_rate: 0.999,
        };
        let a = msa(&stats, 0.5, &cfg).unwrap();
        use Tier::*;
        assert_eq!(
            a.tiers,
            vec![
                Some(Low),
                Some(Mid),
                Some(High),
                Some(Low),
                Some(Mid),
                Some(High)
            ]
        );
        let expect = [0.6, 0.5, 0.4, 0.6, 0.5, 0.4];
        for (r, e) in a.rates.iter().zip(expect) {
            assert!((r - e).abs() < 1e-15, "{r} vs {e}");
        }
        assert!((a.weighted_mean(&stats) - 0.5).abs() < 1e-15);
    }

    #[test]
    fn msa_uneven_sizes_and_ties() {
        // N = 1000. Order by std, ties by index: #1(std 1, 300), #2(std 1, 100), #0(std 2, 400),
        // #3(std 3, 200). Running: 300 (3·300 = 900 <= 1000: low), 400 (1200 > 1000;
        // 1200 <= 2000: mid), 800 (2400 > 2000: high), 1000 (high).
        // N_low = 300, N_mid = 100, N_high = 600; s = 0.9, δ = 0.02:
        // s_high = (900 − 90 − 0.92·300) / 600 = (900 − 90 − 276) / 600 = 534 / 600 = 0.89.
        let stats = [st(400, 2.0), st(300, 1.0), st(100, 1.0), st(200, 3.0)];
        let a = msa(
            &stats,
            0.9,
            &MsaConfig {
                step: 0.02,
                max_rate: 0.999,
            },
        )
        .unwrap();
        assert_eq!(
            a.tiers,
            vec![
                Some(Tier::High),
                Some(Tier::Low),
                Some(Tier::Mid),
                Some(Tier::High)
            ]
        );
        let expect = [0.89, 0.92, 0.9, 0.89];
        for (r, e) in a.rates.iter().zip(expect) {
            assert!((r - e).abs() < 1e-12, "{r} vs {e}");
        }
        assert!((a.weighted_mean(&stats) - 0.9).abs() < 1e-12);
    }

    #[test]
    fn msa_caps_below_one_and_keeps_the_mean() {
        // Reference defect: s = 0.99, δ = 0.01 gives the low tier rate 1.0.
        let stats: Vec<_> = (0..9).map(|i| st(1000, i as f64)).collect();
        let cfg = MsaConfig {
            step: 0.01,
            max_rate: 0.995,
        };
        let a = msa(&stats, 0.99, &cfg).unwrap();
        assert!(a.rates.iter().all(|r| (0.0..=0.995).contains(r)));
        assert!((a.weighted_mean(&stats) - 0.99).abs() < 1e-12);
        // Low is at the cap; the 0.005 removed from 3000 elements is spread over the other
        // 6000: mid 0.9925, high 0.98 + 0.0025 = 0.9825.
        for i in 0..3 {
            assert_eq!(a.rates[i], 0.995);
        }
        for i in 3..6 {
            assert!((a.rates[i] - 0.9925).abs() < 1e-12, "{}", a.rates[i]);
        }
        for i in 6..9 {
            assert!((a.rates[i] - 0.9825).abs() < 1e-12, "{}", a.rates[i]);
        }
    }

    #[test]
    fn msa_negative_remainder_is_floored_and_redistributed() {
        // s = 0.005, δ = 0.01: raw high = 0.005 − 0.01 = −0.005 -> 0, others shifted down.
        let stats: Vec<_> = (0..3).map(|i| st(100, i as f64)).collect();
        let a = msa(
            &stats,
            0.005,
            &MsaConfig {
                step: 0.01,
                max_rate: 0.999,
            },
        )
        .unwrap();
        assert!(a.rates.iter().all(|&r| (0.0..=0.999).contains(&r)));
        assert!((a.weighted_mean(&stats) - 0.005).abs() < 1e-15);
        assert_eq!(a.rates[2], 0.0);
    }

    #[test]
    fn msa_extremes() {
        let stats: Vec<_> = (0..5).map(|i| st(10 + i, i as f64)).collect();
        let cfg = MsaConfig::default();
        let a = msa(&stats, 0.999, &cfg).unwrap();
        assert!(a
            .rates
            .iter()
            .all(|&r| r <= 0.999 && (r - 0.999).abs() < 1e-12));
        let a = msa(&stats, 0.0, &cfg).unwrap();
        assert!((a.weighted_mean(&stats)).abs() < 1e-15);
        assert!(a.rates.iter().all(|&r| r >= 0.0));
    }

    #[test]
    fn msa_errors_and_empty() {
        let cfg = MsaConfig::default();
        assert!(msa(&[], 0.9, &cfg).unwrap().is_empty());
        let s = [st(1, 1.0)];
        assert!(matches!(
            msa(&s, 1.0, &cfg),
            Err(Error::InvalidSparsity { .. })
        ));
        assert!(matches!(
            msa(&s, -0.1, &cfg),
            Err(Error::InvalidSparsity { .. })
        ));
        assert!(matches!(
            msa(&s, f64::NAN, &cfg),
            Err(Error::InvalidSparsity { .. })
        ));
        let bad = MsaConfig { step: -0.01, ..cfg };
        assert!(matches!(msa(&s, 0.5, &bad), Err(Error::InvalidStep(_))));
        let bad = MsaConfig {
            step: f64::NAN,
            ..cfg
        };
        assert!(matches!(msa(&s, 0.5, &bad), Err(Error::InvalidStep(_))));
        let bad = MsaConfig {
            max_rate: 1.0,
            ..cfg
        };
        assert!(matches!(msa(&s, 0.5, &bad), Err(Error::InvalidMaxRate(_))));
        assert!(matches!(
            msa(&[st(1, f64::NAN)], 0.5, &cfg),
            Err(Error::InvalidStat { index: 0, .. })
        ));
        let z = msa(&[st(0, 1.0), st(0, 2.0)], 0.7, &cfg).unwrap();
        assert_eq!(z.rates, vec![0.7, 0.7]);
        // Single tensor: it is high (its running total is N), and gets exactly s.
        let one = msa(&[st(50, 1.0)], 0.9, &cfg).unwrap();
        assert_eq!(one.tiers, vec![Some(Tier::High)]);
        assert!((one.rates[0] - 0.9).abs() < 1e-15);
    }

    #[test]
    fn relative_tiers_equal_additive_at_the_papers_point() {
        // spread = δ / (1 − s): the same rates as the additive step, to rounding.
        let stats: Vec<TensorStat> = (0..9)
            .map(|i| st(100 + 10 * i, 0.1 * (i as f64 + 1.0)))
            .collect();
        let add = msa(&stats, 0.97, &MsaConfig::default()).unwrap();
        let rel = msa_relative(&stats, 0.97, 0.01 / 0.03, 0.999).unwrap();
        assert_eq!(add.tiers, rel.tiers);
        for (a, r) in add.rates.iter().zip(&rel.rates) {
            assert!((a - r).abs() < 1e-12, "{a} vs {r}");
        }
    }

    #[test]
    fn relative_tiers_do_not_collapse_at_high_sparsity() {
        // Equal thirds, s = 0.995 (d = 0.005): the additive δ = 0.01 caps the low third at 0.999 (its survivors
        // rescaled by 1000); relative tiers keep d·(2/3), d, d·(4/3).
        let stats = [st(100, 0.1), st(100, 0.2), st(100, 0.3)];
        let add = msa(&stats, 0.995, &MsaConfig::default()).unwrap();
        assert!((add.rates[0] - 0.999).abs() < 1e-12);
        let rel = msa_relative(&stats, 0.995, 1.0 / 3.0, 0.999).unwrap();
        let d: Vec<f64> = rel.rates.iter().map(|r| 1.0 - r).collect();
        for (got, want) in d.iter().zip([0.005 * 2.0 / 3.0, 0.005, 0.005 * 4.0 / 3.0]) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        assert!((rel.weighted_mean(&stats) - 0.995).abs() < 1e-12);
        assert!(msa_relative(&stats, 0.5, 1.0, 0.999).is_err());
        assert!(msa_relative(&stats, 0.5, f64::NAN, 0.999).is_err());
    }

    #[test]
    fn proportional_density_follows_std() {
        // Densities ∝ std: 1 : 2 : 3 with mean density 0.04 over equal sizes → 0.02, 0.04, 0.06.
        let stats = [st(100, 0.1), st(100, 0.2), st(100, 0.3)];
        let a = proportional(&stats, 0.96, 1.0, 0.999).unwrap();
        for (r, want) in a.rates.iter().zip([0.98, 0.96, 0.94]) {
            assert!((r - want).abs() < 1e-9, "{r} vs {want}");
        }
        assert!((a.weighted_mean(&stats) - 0.96).abs() < 1e-9);
        // Power 0 is uniform; clipping at density 1 moves the mass to the others; the floor holds.
        let u = proportional(&stats, 0.96, 0.0, 0.999).unwrap();
        assert!(u.rates.iter().all(|&r| r == 0.96));
        let big = [st(10, 100.0), st(1000, 1.0), st(1000, 0.0)];
        let c = proportional(&big, 0.9, 1.0, 0.999).unwrap();
        assert_eq!(c.rates[0], 0.0);
        assert!((c.rates[2] - 0.999).abs() < 1e-12);
        assert!((c.weighted_mean(&big) - 0.9).abs() < 1e-9);
        assert!(proportional(&stats, 0.5, -1.0, 0.999).is_err());
    }

    #[test]
    fn uniform_rates() {
        let s = [st(3, 1.0), st(5, 2.0)];
        let a = uniform(&s, 0.97).unwrap();
        assert_eq!(a.rates, vec![0.97, 0.97]);
        assert_eq!(a.tiers, vec![None, None]);
        assert!(uniform(&s, 1.0).is_err());
        assert!(uniform(&s, f64::NAN).is_err());
        assert!(uniform(&[], 0.5).unwrap().is_empty());
    }

    #[test]
    fn std_hand_and_chunked() {
        assert_eq!(population_std(&[]), 0.0);
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, population variance 4.
        assert_eq!(population_std(&[2., 4., 4., 4., 5., 5., 7., 9.]), 2.0);
        // Several chunks with a large offset: compare with a plain f64 two-pass.
        let v: Vec<f32> = (0..(3 * STD_CHUNK + 123))
            .map(|i| 1000.0 + ((i * 7919) % 1013) as f32 * 0.001)
            .collect();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let got = population_std(&v);
        assert!((got - var.sqrt()).abs() <= 1e-12 * var.sqrt(), "{got}");
        assert!(population_std(&[1.0, f32::NAN]).is_nan());
    }

    #[test]
    fn std_independent_of_thread_count() {
        let v: Vec<f32> = (0..(5 * STD_CHUNK + 7))
            .map(|i| ((i as f32) * 0.37).sin())
            .collect();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| population_std(&v));
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(|| population_std(&v));
        assert_eq!(one.to_bits(), three.to_bits());
    }

    proptest! {
        #[test]
        fn msa_hits_the_global_budget(
            raw in prop::collection::vec((0u64..5_000_000, 0.0f64..1.0), 1..40),
            s in 0.0f64..0.999,
            step in 0.0f64..0.3,
        ) {
            let stats: Vec<TensorStat> = raw.iter().map(|&(n, sd)| st(n, sd)).collect();
            let cfg = MsaConfig { step, max_rate: 0.999 };
            let a = msa(&stats, s, &cfg).unwrap();
            prop_assert_eq!(a.rates.len(), stats.len());
            for &r in &a.rates {
                prop_assert!((0.0..=0.999).contains(&r), "rate {}", r);
            }
            if stats.iter().any(|t| t.numel > 0) {
                let m = a.weighted_mean(&stats);
                prop_assert!((m - s).abs() <= 1e-9, "mean {} target {}", m, s);
            }
        }

        #[test]
        fn msa_tiers_are_monotone_in_std(
            raw in prop::collection::vec((1u64..1000, 0.0f64..1.0), 1..30),
        ) {
            let stats: Vec<TensorStat> = raw.iter().map(|&(n, sd)| st(n, sd)).collect();
            let a = msa(&stats, 0.5, &MsaConfig::default()).unwrap();
            for i in 0..stats.len() {
                for j in 0..stats.len() {
                    if stats[i].std < stats[j].std {
                        prop_assert!(a.tiers[i].unwrap() as u8 <= a.tiers[j].unwrap() as u8);
                    }
                }
            }
        }
    }
}
