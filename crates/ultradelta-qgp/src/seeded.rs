//! Seeded positions: kept positions drawn from a seeded generator independently of the values, so a reader
//! regenerates them from the seed and an archive stores none (ALGORITHM.md §5, "Seeded positions"). The sampler
//! itself ([`SeededSample`], [`trial_seed`]) is part of the format and lives in `ultradelta_core::seeded`
//! (re-exported here); this module adds the writer's side, seeded pruning.
//!
//! [`SeededSample::new`]`(numel, kept, seed)` picks exactly `kept` distinct positions of `0..numel`, uniformly
//! among all such sets, in increasing order, from the portable ChaCha8 stream; docs/FORMAT.md ("Seeded positions")
//! specifies it byte for byte and `ultradelta_core::seeded` documents the algorithm.
//!
//! [`seeded_prune`] turns this into a pruning method: it keeps every level's share `1 − rate` of its entries
//! ([`seeded_kept_counts`]), tries `trials` seeds and keeps the one whose kept-level histogram is closest (L1
//! distance) to those counts. The trial index is what the archive stores next to the tensor seed
//! ([`trial_seed`]). [`seeded_prune_to`] steers towards any other counts (DAC's, [`dac_kept_counts`]).

pub use ultradelta_core::seeded::{seeded_positions, trial_seed, SeededSample};

use rayon::prelude::*;

use crate::{dac_drop_count, dac_group_rate, level_counts, QuantParams};

/// DAC's exact kept count per level for `levels` at target sparsity `rate` ([`crate::group_prune`]): levels whose
/// dequantized value is exactly 0 keep nothing, every other level `g` of size `n_g` keeps
/// `n_g − round(n_g · r)`. Indexed by level; the sum is the number of entries DAC keeps.
pub fn dac_kept_counts(levels: &[u16], p: &QuantParams, rate: f64) -> Vec<u64> {
    dac_kept_from_counts(&level_counts(levels), p, rate)
}

/// [`dac_kept_counts`] from the levels' histogram (`counts[l]` = entries at level `l`, as [`level_counts`] or a
/// pass-1 scan gives it) instead of the levels themselves.
pub fn dac_kept_from_counts(counts: &[u64], p: &QuantParams, rate: f64) -> Vec<u64> {
    let n: u64 = counts.iter().sum();
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

/// The kept count per level of a seeded sample at `rate`, from the levels' histogram (`counts[l]` = entries at
/// level `l`): every level, a level at exactly zero too, keeps `n_l − round(n_l · rate)`.
///
/// Seeded positions are drawn whatever the values, so each entry is kept with probability `1 − rate`, and the
/// rescale `1/(1 − rate)` is unbiased only if the sample's histogram is steered towards the whole tensor's at that
/// rate. DAC's counts ([`dac_kept_from_counts`]) keep nothing of a zero level and the rest at a higher group rate:
/// steering a seeded sample towards them favours samples with fewer zeros, which biases the rescaled values.
/// Where no level is exactly zero (a dense delta) the two are the same counts.
pub fn seeded_kept_counts(counts: &[u64], rate: f64) -> Vec<u64> {
    counts
        .iter()
        .map(|&c| c - dac_drop_count(c, rate))
        .collect()
}

/// Survivors of [`seeded_prune`]: which trial won, and the kept entries' levels in position order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeededPruned {
    /// Index of the chosen trial; the positions are `SeededSample::new(numel, kept, trial_seed(seed, trial))`.
    pub trial: u32,
    /// Level of each kept entry, in increasing position order.
    pub levels: Vec<u16>,
    /// L1 distance between the kept-level histogram and the target kept counts, for the chosen trial.
    pub distance: u64,
    /// The same distance for trial 0 (what a single seed gives).
    pub distance_first: u64,
}

/// Seeded pruning: keeps every level's share `1 − rate` of its entries ([`seeded_kept_counts`]; DAC's counts
/// wherever no level is exactly zero) at positions drawn by [`SeededSample`], independent of the values,
/// so they need not be stored.
///
/// Tries trials `0..trials` (at least one) with generator seeds [`trial_seed`]`(seed, t)` and keeps the trial
/// whose kept-level histogram `h` minimises the L1 distance `Σ_g |h_g − t_g|` to those counts `t` (smallest
/// index on ties). Group-wise stratification then holds approximately instead of exactly; the distance
/// is reported. Deterministic and independent of the thread count.
pub fn seeded_prune(levels: &[u16], rate: f64, seed: u64, trials: u32) -> SeededPruned {
    seeded_prune_to(
        levels,
        &seeded_kept_counts(&level_counts(levels), rate),
        seed,
        trials,
    )
}

/// Positions drawn over all the trials of one tensor, at most ([`trials_for`]): 2^19.
pub const TRIAL_DRAW_BUDGET: u64 = 1 << 19;

/// The trials a tensor keeping `kept` entries is given when `trials` are asked for: all of them while they draw
/// at most [`TRIAL_DRAW_BUDGET`] positions in total, fewer above (`TRIAL_DRAW_BUDGET / kept`), and one from
/// 2^19 kept entries up.
///
/// Why: a trial's kept-level histogram misses DAC's counts by about `sqrt(t_g)` per level (sampling noise), a
/// relative error of order `1 / sqrt(kept)`: a fraction of a percent for a tensor keeping hundreds of thousands
/// of entries, where choosing among seeds changes nothing measurable, while every trial costs a full draw of
/// `kept` positions (most of the compression time on LLaMA-sized tensors with 8 trials). Small tensors, where
/// the noise is large, keep every trial. Any trial count yields a valid archive: the chosen trial is stored.
pub fn trials_for(kept: u64, trials: u32) -> u32 {
    let afford = TRIAL_DRAW_BUDGET / kept.max(1);
    trials.min(u32::try_from(afford).unwrap_or(u32::MAX)).max(1)
}

/// Words of the kept masks per chunk of [`seeded_prune_to`]'s scan: 2^18 entries, whose levels (512 KiB) stay in
/// cache while every trial's histogram takes them.
const SCAN_WORDS: usize = 4096;

/// [`seeded_prune`] towards given per-level kept counts `target` ([`seeded_kept_counts`], or DAC's from
/// [`dac_kept_from_counts`], when the levels' histogram is already known).
///
/// Every trial's sample is drawn first (in parallel), then one pass over `levels`, chunk by chunk, takes every
/// trial's kept-level histogram while the chunk is in cache (the levels are read once, not once per trial). The
/// winner is the smallest `(distance, trial)`; the histograms are integer sums, so nothing depends on the thread
/// count.
///
/// # Panics
/// If a level of `levels` is not an index of `target` (`target` must come from these levels' histogram).
pub fn seeded_prune_to(levels: &[u16], target: &[u64], seed: u64, trials: u32) -> SeededPruned {
    let kept: u64 = target.iter().sum();
    let numel = levels.len() as u64;
    let samples: Vec<SeededSample> = (0..trials.max(1))
        .into_par_iter()
        .map(|t| SeededSample::new(numel, kept, trial_seed(seed, t)))
        .collect();
    let groups = target.len();
    let words = samples[0].words();
    let hists = (0..words.div_ceil(SCAN_WORDS))
        .into_par_iter()
        .fold(
            || vec![0u64; samples.len() * groups],
            |mut h, c| {
                let ws = c * SCAN_WORDS..((c + 1) * SCAN_WORDS).min(words);
                for (sample, h) in samples.iter().zip(h.chunks_exact_mut(groups)) {
                    sample.for_each_in(ws.clone(), |p| h[usize::from(levels[p as usize])] += 1);
                }
                h
            },
        )
        .reduce(
            || vec![0u64; samples.len() * groups],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    let distances: Vec<u64> = hists
        .chunks_exact(groups.max(1))
        .map(|h| l1_distance(h, target))
        .chain(std::iter::repeat(0))
        .take(samples.len())
        .collect();
    let (distance, trial) = distances
        .iter()
        .enumerate()
        .map(|(t, &d)| (d, t))
        .min()
        .expect("at least one trial");
    let mut levels_kept = Vec::with_capacity(usize::try_from(kept).unwrap_or(0));
    samples[trial].for_each(|pos| levels_kept.push(levels[pos as usize]));
    SeededPruned {
        trial: trial as u32,
        levels: levels_kept,
        distance,
        distance_first: distances[0],
    }
}

/// `Σ_g |h_g − t_g|`: how far a trial's kept-level histogram `h` is from DAC's kept counts `t`.
fn l1_distance(h: &[u64], target: &[u64]) -> u64 {
    h.iter().zip(target).map(|(&h, &g)| h.abs_diff(g)).sum()
}

/// [`seeded_prune_to`] with one trial, straight from the checkpoints' bytes: the sample is drawn, and only its
/// kept entries are quantized ([`crate::fused::levels_at_sample`]), so no tensor-sized level buffer is needed.
/// The same result as [`crate::fused::levels_source`] then `seeded_prune_to(levels, target, seed, 1)`.
///
/// # Panics
/// If a kept level is not an index of `target` (`target` must come from these levels' histogram under `q`).
pub fn seeded_prune_source(
    src: &crate::fused::DeltaSource<'_>,
    q: &QuantParams,
    target: &[u64],
    seed: u64,
) -> SeededPruned {
    let kept: u64 = target.iter().sum();
    let sample = SeededSample::new(src.len() as u64, kept, trial_seed(seed, 0));
    let levels = crate::fused::levels_at_sample(src, q, &sample);
    let mut h = vec![0u64; target.len()];
    for &l in &levels {
        h[usize::from(l)] += 1;
    }
    let distance = l1_distance(&h, target);
    SeededPruned {
        trial: 0,
        levels,
        distance,
        distance_first: distance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_every_level_at_the_rate_and_more_trials_never_hurt() {
        let levels: Vec<u16> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 28) as u16)
            .collect();
        let counts = level_counts(&levels);
        let target = seeded_kept_counts(&counts, 0.9);
        for (&c, &t) in counts.iter().zip(&target) {
            assert_eq!(t, c - dac_drop_count(c, 0.9));
        }
        let one = seeded_prune(&levels, 0.9, 3, 1);
        let many = seeded_prune(&levels, 0.9, 3, 16);
        assert_eq!(one.levels.len() as u64, target.iter().sum::<u64>());
        let mut h = vec![0u64; target.len()];
        for &l in &many.levels {
            h[usize::from(l)] += 1;
        }
        assert_eq!(l1_distance(&h, &target), many.distance);
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
    #[test]
    fn seeded_counts_are_dacs_without_a_zero_level_and_keep_a_zero_level() {
        let levels: Vec<u16> = (0..50_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 28) as u16)
            .collect();
        let counts = level_counts(&levels);
        let seeded = seeded_kept_counts(&counts, 0.97);
        // No level of this grid is exactly zero: DAC's counts are the same.
        let dense = QuantParams {
            bits: 4,
            lo: -1.0,
            step: 0.13,
        };
        assert!((0..16u16).all(|l| dense.dequantize(l) != 0.0));
        assert_eq!(seeded, dac_kept_from_counts(&counts, &dense, 0.97));
        // Level 8 of this one is exactly zero: DAC keeps none of it, the seeded sample its share.
        let zero = QuantParams {
            bits: 4,
            lo: -1.0,
            step: 0.125,
        };
        assert_eq!(zero.dequantize(8), 0.0);
        let dac = dac_kept_from_counts(&counts, &zero, 0.97);
        assert_eq!(dac[8], 0);
        assert_eq!(seeded[8], counts[8] - dac_drop_count(counts[8], 0.97));
        assert!(seeded[8] > 0);
    }

    #[test]
    fn one_trial_from_the_source_equals_the_level_buffer_path() {
        use crate::fused::{fit_source, levels_source, DeltaSource};
        let n = 300_001usize;
        let x = |i: usize, k: u32| ((i as u32).wrapping_mul(k) >> 20) as f32 / 4096.0 - 0.5;
        let base: Vec<f32> = (0..n).map(|i| x(i, 2_654_435_761)).collect();
        let ft: Vec<f32> = (0..n).map(|i| base[i] + 0.01 * x(i, 40_503)).collect();
        let half = |v: &[f32], bf: bool| -> Vec<u8> {
            v.iter()
                .flat_map(|&f| {
                    if bf {
                        half::bf16::from_f32(f).to_le_bytes()
                    } else {
                        half::f16::from_f32(f).to_le_bytes()
                    }
                })
                .collect()
        };
        let (bb, fb, bh, fh) = (
            half(&base, true),
            half(&ft, true),
            half(&base, false),
            half(&ft, false),
        );
        let delta: Vec<f32> = base.iter().zip(&ft).map(|(b, f)| f - b).collect();
        let fill =
            |start: usize, out: &mut [f32]| out.copy_from_slice(&delta[start..start + out.len()]);
        let sources = [
            DeltaSource::Bf16 { base: &bb, ft: &fb },
            DeltaSource::F16 { base: &bh, ft: &fh },
            DeltaSource::F32(&delta),
            DeltaSource::Fill {
                len: n,
                fill: &fill,
            },
        ];
        for src in &sources {
            for (bits, rate) in [(4u8, 0.97), (4, 0.3), (2, 0.9)] {
                let q = fit_source(src, bits).unwrap();
                let mut levels = vec![0u16; n];
                levels_source(src, &q, &mut levels);
                let target = dac_kept_counts(&levels, &q, rate);
                let want = seeded_prune_to(&levels, &target, 11, 1);
                assert_eq!(
                    seeded_prune_source(src, &q, &target, 11),
                    want,
                    "bits {bits} rate {rate}"
                );
                let one = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap();
                assert_eq!(
                    one.install(|| seeded_prune_source(src, &q, &target, 11)),
                    want
                );
            }
        }
    }

    #[test]
    fn trials_shrink_with_the_kept_count() {
        assert_eq!(trials_for(0, 8), 8);
        assert_eq!(trials_for(1, 0), 1);
        assert_eq!(trials_for(65_536, 8), 8);
        assert_eq!(trials_for(65_537, 8), 7);
        assert_eq!(trials_for(131_072, 8), 4);
        assert_eq!(trials_for(1 << 19, 8), 1);
        assert_eq!(trials_for(1 << 30, 8), 1);
        assert_eq!(trials_for(100, 1024), 1024);
    }

    /// The plain algorithm: every trial drawn, histogrammed and compared one after the other.
    fn reference(levels: &[u16], target: &[u64], seed: u64, trials: u32) -> SeededPruned {
        let kept: u64 = target.iter().sum();
        let mut all = Vec::new();
        for t in 0..trials.max(1) {
            let pos = seeded_positions(levels.len() as u64, kept, trial_seed(seed, t));
            let mut h = vec![0u64; target.len()];
            for &p in &pos {
                h[usize::from(levels[p as usize])] += 1;
            }
            let d: u64 = h.iter().zip(target).map(|(&h, &g)| h.abs_diff(g)).sum();
            all.push((d, t, pos));
        }
        let first = all[0].0;
        let (d, t, pos) = all.into_iter().min_by_key(|(d, t, _)| (*d, *t)).unwrap();
        SeededPruned {
            trial: t,
            levels: pos.iter().map(|&p| levels[p as usize]).collect(),
            distance: d,
            distance_first: first,
        }
    }

    #[test]
    fn blocked_scan_equals_the_plain_algorithm_whatever_the_threads() {
        let q = QuantParams {
            bits: 4,
            lo: -1.0,
            step: 0.125,
        };
        // Sizes across the scan's chunk (2^18 entries) and a partial last word; sparse and dense (complement) draws.
        for &(n, rate) in &[
            (1usize, 0.5),
            (1000, 0.9),
            (300_001, 0.97),
            (270_000, 0.2),
            (65, 0.0),
        ] {
            let levels: Vec<u16> = (0..n as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 28) as u16)
                .collect();
            let target = dac_kept_counts(&levels, &q, rate);
            let want = reference(&levels, &target, 9, 8);
            assert_eq!(
                seeded_prune_to(&levels, &target, 9, 8),
                want,
                "n {n} rate {rate}"
            );
            let one = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            assert_eq!(
                one.install(|| seeded_prune_to(&levels, &target, 9, 8)),
                want
            );
            assert_eq!(
                dac_kept_from_counts(&level_counts(&levels), &q, rate),
                target
            );
        }
    }
}
