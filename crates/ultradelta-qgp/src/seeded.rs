//! Seeded positions: kept positions drawn from a seeded generator independently of the values, so a reader
//! regenerates them from the seed and an archive stores none (ALGORITHM.md §5, "Seeded positions"). The sampler
//! itself ([`SeededSample`], [`trial_seed`]) is part of the format and lives in `ultradelta_core::seeded`
//! (re-exported here); this module adds the writer's side, seeded pruning.
//!
//! [`SeededSample::new`]`(numel, kept, seed)` picks exactly `kept` distinct positions of `0..numel`, uniformly
//! among all such sets, in increasing order, from the portable ChaCha8 stream; docs/FORMAT.md ("Seeded positions")
//! specifies it byte for byte and `ultradelta_core::seeded` documents the algorithm.
//!
//! [`seeded_prune`] turns this into a pruning method: it keeps exactly as many entries as DAC would
//! ([`dac_kept_counts`]), tries `trials` seeds and keeps the one whose kept-level histogram is closest (L1
//! distance) to DAC's exact per-level kept counts. The trial index is what the archive stores next to the tensor
//! seed ([`trial_seed`]).

pub use ultradelta_core::seeded::{seeded_positions, trial_seed, SeededSample};

use crate::{dac_drop_count, dac_group_rate, level_counts, QuantParams};

/// DAC's exact kept count per level for `levels` at target sparsity `rate` ([`crate::group_prune`]): levels whose
/// dequantized value is exactly 0 keep nothing, every other level `g` of size `n_g` keeps
/// `n_g − round(n_g · r)`. Indexed by level; the sum is the number of entries DAC keeps.
pub fn dac_kept_counts(levels: &[u16], p: &QuantParams, rate: f64) -> Vec<u64> {
    let counts = level_counts(levels);
    let n = levels.len() as u64;
    let zero: u64 = counts
        .iter()
        .enumerate()
        .filter(|&(l, _)| p.dequantize(l as u16) == 0.0)
        .map(|(_, &c)| c)
        .sum();
    let s0 = if n == 0 { 0.0 } else { zero as f64 / n as f64 };
    let r = dac_group_rate(rate, s0);
    counts
        .iter()
        .enumerate()
        .map(|(l, &c)| {
            if p.dequantize(l as u16) == 0.0 {
                0
            } else {
                c - dac_drop_count(c, r)
            }
        })
        .collect()
}

/// Survivors of [`seeded_prune`]: which trial won, and the kept entries' levels in position order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeededPruned {
    /// Index of the chosen trial; the positions are `SeededSample::new(numel, kept, trial_seed(seed, trial))`.
    pub trial: u32,
    /// Level of each kept entry, in increasing position order.
    pub levels: Vec<u16>,
    /// L1 distance between the kept-level histogram and DAC's kept counts, for the chosen trial.
    pub distance: u64,
    /// The same distance for trial 0 (what a single seed gives).
    pub distance_first: u64,
}

/// Seeded pruning: keeps exactly as many entries as DAC ([`dac_kept_counts`]) at positions drawn by
/// [`SeededSample`], independent of the values, so they need not be stored.
///
/// Tries trials `0..trials` (at least one) with generator seeds [`trial_seed`]`(seed, t)` and keeps the trial
/// whose kept-level histogram `h` minimises the L1 distance `Σ_g |h_g − t_g|` to DAC's kept counts `t`
/// (smallest index on ties). Group-wise stratification then holds approximately instead of exactly; the distance
/// is reported. Deterministic and independent of the thread count.
pub fn seeded_prune(
    levels: &[u16],
    p: &QuantParams,
    rate: f64,
    seed: u64,
    trials: u32,
) -> SeededPruned {
    let target = dac_kept_counts(levels, p, rate);
    let kept: u64 = target.iter().sum();
    let numel = levels.len() as u64;
    let mut best: Option<(u64, u32)> = None;
    let mut first = 0;
    let mut hist = vec![0u64; target.len()];
    for t in 0..trials.max(1) {
        let sample = SeededSample::new(numel, kept, trial_seed(seed, t));
        hist.iter_mut().for_each(|h| *h = 0);
        for pos in sample.iter() {
            hist[usize::from(levels[pos as usize])] += 1;
        }
        let d: u64 = hist.iter().zip(&target).map(|(&h, &g)| h.abs_diff(g)).sum();
        if t == 0 {
            first = d;
        }
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, t));
        }
    }
    let (distance, trial) = best.unwrap_or((0, 0));
    let sample = SeededSample::new(numel, kept, trial_seed(seed, trial));
    let levels_kept = sample.iter().map(|pos| levels[pos as usize]).collect();
    SeededPruned {
        trial,
        levels: levels_kept,
        distance,
        distance_first: first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_dac_count_and_more_trials_never_hurt() {
        let levels: Vec<u16> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 28) as u16)
            .collect();
        let q = QuantParams {
            bits: 4,
            lo: -1.0,
            step: 0.125,
        };
        let target = dac_kept_counts(&levels, &q, 0.9);
        let one = seeded_prune(&levels, &q, 0.9, 3, 1);
        let many = seeded_prune(&levels, &q, 0.9, 3, 16);
        assert_eq!(one.levels.len() as u64, target.iter().sum::<u64>());
        assert_eq!(many.levels.len(), one.levels.len());
        assert_eq!(one.trial, 0);
        assert_eq!(many.distance_first, one.distance);
        assert!(many.distance <= one.distance);
        // The stored levels are the levels at the regenerated positions.
        let pos = seeded_positions(
            levels.len() as u64,
            many.levels.len() as u64,
            trial_seed(3, many.trial),
        );
        let again: Vec<u16> = pos.iter().map(|&p| levels[p as usize]).collect();
        assert_eq!(again, many.levels);
    }
}
