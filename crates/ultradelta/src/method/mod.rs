//! The per-tensor method dispatch: one compressed tensor's Δ in, its archive record out.
//!
//! Every method lives here, and nowhere else: UltraDelta (quantize → prune → rescale, written once below, with
//! each positions codec and, in [`codec`], each values codec) and the baselines (kernels in
//! [`ultradelta_baselines`]). [`compress_tensor`] takes the whole Δ; [`compress_source`] is UltraDelta's fast
//! path straight from the checkpoints' bytes with pass 1's quantizer ([`QuantScan`]), giving the same record.
//! The plan (pass 1, rates), the pipeline (pass 2) and the budget search all call into this module; it knows
//! none of them.

pub(crate) mod codec;
pub(crate) mod lowrank_part;
pub(crate) mod rows;

use rayon::prelude::*;
use ultradelta_alloc::TensorStat;
use ultradelta_archive::{CodedSparseRecord, LevelCoding, LowRankSparseRecord, Positions, Record};
use ultradelta_baselines as baselines;
use ultradelta_qgp::fit::{fit_mse, projection_gain, strided_sample};
use ultradelta_qgp::fused::{
    fit_source, group_prune_source, levels_source, scan_levels, DeltaSource, LevelScan,
};
use ultradelta_qgp::seeded::{
    seeded_kept_counts, seeded_prune_source, seeded_prune_to, trials_for, SeededPruned,
};
use ultradelta_qgp::{
    group_prune, level_counts, quantize, quantized_std_from_counts, random_prune, tensor_seed,
    Pruned, QuantParams, Quantizer,
};
use ultradelta_rescale::rescale_factor;

pub use codec::TensorCodecInfo;

use crate::baseline_records::IntoRecord;
use crate::config::{CompressConfig, Method, PositionCodec, PruningMode, QuantFit, RescaleMode};

/// One compressed tensor as the archive stores it: its record, and what UltraDelta's codec did.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedTensor {
    /// The record (its kind follows the method and, for UltraDelta, the codecs).
    pub record: Record,
    /// What the codec did: `Some` for UltraDelta with quantized levels, `None` for every other method.
    pub codec: Option<TensorCodecInfo>,
}

/// The record of one compressed tensor under `cfg` (method and codecs), exactly as the archive stores it.
///
/// This is the in-memory result of the pipeline: `apply` decodes the same record from the file through
/// [`Record::add_delta_into`], so the rebuilt weights equal `base + γ·Δ̂` computed from this record bit for bit.
///
/// `rate` is the tensor's sparsity (allocated for UltraDelta, the target for DARE, magnitude and ComPEFT,
/// unused by BitDelta, low-rank and quantization); `shape` gives low-rank its matrix view ([`matrix_view`]).
///
/// # Errors
/// The kernel's error (non-finite delta, parameter out of range, LAPACK failure).
pub fn compress_tensor(
    delta: &[f32],
    name: &str,
    shape: &[usize],
    rate: f64,
    cfg: &CompressConfig,
) -> Result<CompressedTensor, baselines::Error> {
    let density = 1.0 - rate;
    let record = match cfg.method {
        Method::Ultradelta => return ultradelta(delta, name, shape, rate, cfg),
        Method::Dare => baselines::dare(delta, rate, tensor_seed(cfg.seed, name))?.into_record(),
        Method::Magnitude => baselines::magnitude(delta, density)?.into_record(),
        Method::Bitdelta => baselines::bitdelta(delta)?.into_record(),
        Method::Compeft => baselines::compeft(delta, density, cfg.compeft_alpha)?.into_record(),
        Method::Quant => baselines::quant(delta, cfg.bits())?.into_record(),
        Method::Lowrank => {
            let (rows, cols) = matrix_view(shape);
            baselines::lowrank(delta, rows, cols, cfg.rank)?.into_record()
        }
    };
    Ok(CompressedTensor {
        record,
        codec: None,
    })
}

/// The matrix view of a tensor: `shape[0] × (product of the rest)`; a scalar is 1×1.
pub fn matrix_view(shape: &[usize]) -> (usize, usize) {
    match shape.split_first() {
        None => (1, 1),
        Some((&r, rest)) => (r, rest.iter().product()),
    }
}

/// Whether the method drops entries at a rate (so the index records the tensor's rate).
pub(crate) fn uses_rate(m: Method) -> bool {
    matches!(
        m,
        Method::Ultradelta | Method::Dare | Method::Magnitude | Method::Compeft
    )
}

/// Whether [`compress_source`] can make `cfg`'s record from the checkpoints' bytes: UltraDelta with quantized
/// levels and Golomb positions (seeded positions and the fp16 ablation need the whole Δ), and neither a low-rank
/// part (its singular directions need the whole Δ) nor row subsets (the rows' norms need the whole Δ).
pub(crate) fn streams_from_source(cfg: &CompressConfig) -> bool {
    cfg.method == Method::Ultradelta
        && cfg.quantize
        && !cfg.lowrank_part_on()
        && !cfg.row_subset_on()
}

/// UltraDelta's pass-1 result for one tensor: the quantizer `QuantParams::fit` gives on its Δ and the histogram
/// of its levels (per block too, for the fused prune of [`compress_source`]).
pub(crate) struct QuantScan {
    quant: QuantParams,
    /// The factor on the record's rescale factor that [`QuantFit::MseUnbiased`] asks for (1 otherwise).
    gain: f32,
    /// Δ's share of non-zero entries when it is sparse ([`nonzero_share`]; its quantizer then has a level at exactly
    /// zero, and the share may raise the seeded sample's density, [`sampled_rate`]), 1 for a dense Δ.
    nonzero: f64,
    scan: LevelScan,
    /// Δ is exactly zero (a tensor the fine-tune left unchanged): its record keeps nothing ([`unchanged`]).
    zero: bool,
}

impl QuantScan {
    /// Two sweeps over the source: the extremes (the quantizer, refit under `cfg.quant_fit`), then the levels and
    /// their histograms.
    pub(crate) fn of(
        src: &DeltaSource<'_>,
        cfg: &CompressConfig,
    ) -> Result<QuantScan, ultradelta_qgp::Error> {
        let (bits, fit) = cfg.quantizer();
        let range = fit_source(src, bits)?;
        // The range fit's extremes are both 0 only for a zero Δ (or one within a subnormal step of it: checked).
        let zero = range.lo == 0.0 && range.step == 0.0 && source_is_zero(src);
        let (quant, gain, nonzero) = refit(range, fit, src.len(), |i| src.delta_at(i), cfg);
        let scan = scan_levels(src, &quant);
        Ok(QuantScan {
            quant,
            gain,
            nonzero,
            scan,
            zero,
        })
    }

    /// The tensor's statistic for the sparsity allocation: σ of its quantized delta.
    pub(crate) fn stat(&self, numel: usize) -> TensorStat {
        TensorStat {
            numel: numel as u64,
            std: quantized_std_from_counts(&self.scan.counts, &self.quant),
        }
    }
}

/// The quantizer `fit` asks for, from the range fit of a tensor of `n` entries (read by `value`, finite: the
/// range fit has checked), the gain on the record's rescale factor that goes with it, and its share of non-zero
/// entries if it is sparse for `cfg`'s codec, else 1 ([`nonzero_share`]; its quantizer then [`zero_aligned`], after
/// the MSE fit, which reads the sample's non-zero entries only, and before its gain). The strided sample both read
/// is drawn once, and not at all for the range fit of the Golomb codecs.
fn refit(
    range: QuantParams,
    fit: QuantFit,
    n: usize,
    value: impl Fn(usize) -> f32,
    cfg: &CompressConfig,
) -> (QuantParams, f32, f64) {
    let seeded = seeded_levels(cfg);
    if fit == QuantFit::Range && !seeded {
        return (range, 1.0, 1.0);
    }
    let sample = strided_sample(n, value);
    let nonzero = if seeded { nonzero_share(&sample) } else { 1.0 };
    let zero_level = nonzero < 1.0;
    let aligned = |q| if zero_level { zero_aligned(q) } else { q };
    if fit == QuantFit::Range {
        return (aligned(range), 1.0, nonzero);
    }
    // A sparse Δ's zeros are exact at the zero level whatever the step: the MSE fit weighs only its other entries
    // (over all of them, the zeros would pull the step down and clamp the largest changes, which in a trimmed Δ
    // are all there is).
    let q = if zero_level {
        let nonzero: Vec<f32> = sample.iter().copied().filter(|&x| x != 0.0).collect();
        aligned(fit_mse(&nonzero, range))
    } else {
        fit_mse(&sample, range)
    };
    let gain = match fit {
        QuantFit::MseUnbiased => projection_gain(&sample, q),
        _ => 1.0,
    };
    (q, gain, nonzero)
}

/// UltraDelta, step 1: the b-bit quantizer of Δ, its gain and whether Δ is sparse ([`refit`]).
///
/// With seeded positions, a Δ of many exact zeros ([`nonzero_share`]) gets its quantizer moved so that one level is
/// exactly zero ([`zero_aligned`]): its zeros then rebuild as zeros, where the plain range grid would
/// turn each into the small value of the level nearest zero, times the rescale factor, everywhere.
fn quantizer_of(
    delta: &[f32],
    cfg: &CompressConfig,
) -> Result<(QuantParams, f32, f64), ultradelta_qgp::Error> {
    let (bits, fit) = cfg.quantizer();
    let range = QuantParams::fit(delta, bits)?;
    Ok(refit(range, fit, delta.len(), |i| delta[i], cfg))
}

/// Share of exact zeros from which a Δ is coded as sparse ([`nonzero_share`]). Dense fine-tunes stored in f32 have
/// almost none (MiniLM's four: at most 2.4e-6 of an embedding's entries); a delta trimmed to its largest entries
/// (TIES, DARE, sparse fine-tuning, a partly frozen tensor) has most of its entries exactly zero, and so has a
/// fine-tune stored in bf16 whose updates were below the weights' last bit (the LLaMA testbed's: 51–53 % of a
/// linear layer's entries, 23–27 % of the embeddings').
const SPARSE_ZERO_SHARE: f64 = 0.05;

/// Whether `cfg` codes UltraDelta's levels at seeded positions, the codec that treats a sparse Δ apart
/// ([`nonzero_share`]); the Golomb codecs (the paper's) are left as they are.
fn seeded_levels(cfg: &CompressConfig) -> bool {
    cfg.positions == PositionCodec::Seeded && cfg.quantize
}

/// Δ's share of non-zero entries if it is sparse (at least [`SPARSE_ZERO_SHARE`] exact zeros, ±0, in `sample`),
/// else one. `sample` is the strided sample the MSE fit reads ([`strided_sample`]: every entry of a tensor of up to
/// 32,768), so the whole Δ and the checkpoints' bytes give the same share.
fn nonzero_share(sample: &[f32]) -> f64 {
    let zeros = sample.iter().filter(|&&x| x == 0.0).count();
    if sample.is_empty() || (zeros as f64) < SPARSE_ZERO_SHARE * sample.len() as f64 {
        return 1.0;
    }
    1.0 - zeros as f64 / sample.len() as f64
}

/// The rate a seeded sample draws at, for the allocated `rate` and Δ's share of non-zero entries `nonzero`
/// ([`nonzero_share`]: of its exact values, not of its levels; a coarse grid may put many small changes at the zero
/// level, and keeping those would cost bits and change nothing).
///
/// A seeded sample draws among all of a tensor's entries, so of a sparse Δ it keeps `1 − rate` of the non-zero
/// ones only. Where the non-zero entries are few against the kept density `d = 1 − rate` (a Δ trimmed to its
/// largest entries, with 0.5 % of them non-zero, at the default d = 0.03), that throws away almost all of what the
/// fine-tune changed, for an archive smaller than asked. So the density rises with `d / nonzero`: unchanged up to
/// `d = nonzero / 2`, then linearly to 1 (every entry, every non-zero one kept, nothing rescaled) at
/// `d = nonzero`. Continuous and increasing in `d`, so the record's bytes still fall as the rate rises (the byte
/// budget's search relies on it); the identity for a dense Δ (`nonzero` = 1). Plain arithmetic, no libm: the same
/// bits everywhere.
pub(crate) fn sampled_rate(rate: f64, nonzero: f64) -> f64 {
    let d = 1.0 - rate;
    if nonzero >= 1.0 || nonzero <= 0.0 || d <= 0.5 * nonzero {
        return rate;
    }
    if d >= nonzero {
        return 0.0;
    }
    let half = 0.5 * nonzero;
    let f = half + (1.0 - half) * (d - half) / half;
    (1.0 - f).clamp(0.0, rate)
}

/// The range quantizer `q` moved so that level `k` (the one nearest zero) is exactly zero in the decoding formula:
/// `lo = −(k·step)` in f32, so `lo + k·step = 0`; the step grows just enough for the levels to span the range
/// and zero (with 1 bit and values on both sides, one side clamps). A constant quantizer (`step = 0`) is returned as is.
fn zero_aligned(q: QuantParams) -> QuantParams {
    if q.step == 0.0 {
        return q;
    }
    let top = q.max_level();
    let max = f32::from(top);
    let lo = q.lo.min(0.0);
    let hi = (q.lo + max * q.step).max(0.0);
    // Level k is zero: at least 1 when there are negatives, at most top − 1 when there are positives (so both
    // sides keep a level; a 1-bit quantizer with both has only one side, the other clamps).
    let first: f32 = if lo < 0.0 { 1.0 } else { 0.0 };
    let last = if hi > 0.0 { max - 1.0 } else { max };
    let k = ((-lo / (hi - lo)) * max)
        .round()
        .clamp(first.min(last), last.max(first)) as u16;
    let mut step = 0f32;
    if k > 0 {
        step = step.max(-lo / f32::from(k));
    }
    if k < top {
        step = step.max(hi / f32::from(top - k));
    }
    QuantParams {
        bits: q.bits,
        lo: -(f32::from(k) * step),
        step,
    }
}

/// The rate `cfg`'s seeded sample of a tensor allocated `rate` draws at: [`sampled_rate`] under the per-tensor
/// rescale, which it keeps unbiased; the allocated rate under the paper's global rescale, whose factor does not
/// follow a tensor's rate.
pub(crate) fn seeded_rate(rate: f64, nonzero: f64, cfg: &CompressConfig) -> f64 {
    match cfg.rescale {
        RescaleMode::PerTensor => sampled_rate(rate, nonzero),
        RescaleMode::Global => rate,
    }
}

/// UltraDelta, step 1: the b-bit quantizer of Δ (with its gain and whether Δ is sparse, [`refit`]) and every
/// entry's level.
fn quantize_delta(
    delta: &[f32],
    cfg: &CompressConfig,
) -> Result<(QuantParams, f32, f64, Vec<u16>), ultradelta_qgp::Error> {
    let (q, gain, nonzero) = quantizer_of(delta, cfg)?;
    let mut levels = vec![0u16; delta.len()];
    quantize(delta, &q, &mut levels);
    Ok((q, gain, nonzero, levels))
}

/// UltraDelta, step 2 with listed positions: the survivors at `rate`, DAC's exact per-level counts (or the plain
/// random drop of the ablation).
fn prune_listed(
    levels: &[u16],
    q: &QuantParams,
    rate: f64,
    seed: u64,
    cfg: &CompressConfig,
) -> Pruned {
    match cfg.pruning {
        PruningMode::Group => group_prune(levels, q, rate, seed),
        PruningMode::Random => random_prune(levels, q, rate, seed),
    }
}

/// UltraDelta, step 3: the survivors' rescale factor (times the quantizer's `gain`, [`refit`]).
fn scale(rate: f64, gain: f32, cfg: &CompressConfig) -> f32 {
    (rescale_factor(cfg.rescale, cfg.sparsity, rate, cfg.rescale_factor) * f64::from(gain)) as f32
}

/// Which rate a seeded sample draws at: the allocated one, raised for a sparse Δ ([`sampled_rate`]), or exactly
/// the one given (a low-rank part's residual, whose rate the split chose for the bytes it leaves).
#[derive(Clone, Copy)]
enum Sampling {
    Allocated,
    Exact,
}

/// UltraDelta's record from the whole Δ: quantize, prune (listed or seeded positions), rescale, then the values
/// codec; with `quantize = false` the ablation's fp16 values at DAC's positions. Under row subsets, a matrix whose
/// Δ moved only some of its rows ([`rows::moved_rows`]) is coded as those rows alone, at the same rate.
fn ultradelta(
    delta: &[f32],
    name: &str,
    shape: &[usize],
    rate: f64,
    cfg: &CompressConfig,
) -> Result<CompressedTensor, baselines::Error> {
    if cfg.quantize && delta.par_iter().all(|&x| x == 0.0) {
        return Ok(unchanged(delta.len(), tensor_seed(cfg.seed, name), cfg));
    }
    if cfg.row_subset_on() && cfg.allows_row_subset() {
        if let &[rows, cols] = shape {
            if let Some(listed) = rows::moved_rows(delta, rows, cols) {
                let gathered = rows::gather(delta, cols, &listed);
                let inner = ultradelta_sampled(
                    &gathered,
                    name,
                    &[listed.len(), cols],
                    rate,
                    cfg,
                    Sampling::Allocated,
                )?;
                return Ok(rows::with_rows(inner, (rows, cols), listed));
            }
        }
    }
    ultradelta_sampled(delta, name, shape, rate, cfg, Sampling::Allocated)
}

fn ultradelta_sampled(
    delta: &[f32],
    name: &str,
    shape: &[usize],
    rate: f64,
    cfg: &CompressConfig,
    sampling: Sampling,
) -> Result<CompressedTensor, baselines::Error> {
    let seed = tensor_seed(cfg.seed, name);
    if cfg.lowrank_part_on() && cfg.allows_lowrank_part() {
        if let &[rows, cols] = shape {
            if let Some(split) = lowrank_part::split(delta, (rows, cols), rate, seed, cfg)? {
                // No shape for the residual: it is sampled as a plain seeded record at the split's rate, never split
                // again.
                let residual = ultradelta_sampled(
                    &split.residual,
                    name,
                    &[],
                    split.rate,
                    cfg,
                    Sampling::Exact,
                )?;
                return Ok(with_part(residual, split.part));
            }
        }
    }
    let (q, gain, nonzero, levels) = quantize_delta(delta, cfg)?;
    if !cfg.quantize {
        // The ablation: prune by the DAC groups of the b-bit levels, keep the raw values at fp16.
        let pruned = prune_listed(&levels, &q, rate, seed, cfg);
        drop(levels);
        let record =
            baselines::sparse_f16(delta, pruned.positions, scale(rate, gain, cfg))?.into_record();
        return Ok(CompressedTensor {
            record,
            codec: None,
        });
    }
    if cfg.positions == PositionCodec::Seeded {
        let counts = level_counts(&levels);
        let rate = match sampling {
            Sampling::Allocated => seeded_rate(rate, nonzero, cfg),
            Sampling::Exact => rate,
        };
        let target = seeded_kept_counts(&counts, rate);
        let trials = trials_for(target.iter().sum(), cfg.seed_trials);
        let pruned = seeded_prune_to(&levels, &target, seed, trials);
        return Ok(seeded_record(
            delta.len(),
            (q, gain),
            pruned,
            seed,
            rate,
            cfg,
        ));
    }
    let pruned = prune_listed(&levels, &q, rate, seed, cfg);
    let coded = CodedSparseRecord {
        numel: delta.len() as u64,
        quant: q,
        scale: scale(rate, gain, cfg),
        positions: Positions::Golomb(pruned.positions),
        levels: pruned.levels,
        coding: LevelCoding::Packed,
    };
    Ok(codec::finish(coded, TensorCodecInfo::default(), cfg))
}

/// The record of a low-rank part beside `residual`'s seeded sample (kind `lowrank-seeded-rans`), and the rank in
/// the codec report.
fn with_part(residual: CompressedTensor, part: lowrank_part::LowRankPart) -> CompressedTensor {
    let CompressedTensor { record, codec } = residual;
    match record {
        Record::Coded(residual) => {
            let info = codec.map(|info| TensorCodecInfo {
                lowrank_rank: Some(part.rank() as u32),
                ..info
            });
            CompressedTensor {
                record: Record::LowRankSparse(LowRankSparseRecord {
                    rows: part.rows as u64,
                    cols: part.cols as u64,
                    factor_bits: lowrank_part::FACTOR_BITS,
                    scales: part.scales,
                    levels: part.levels,
                    residual,
                }),
                codec: info,
            }
        }
        // Seeded positions always give a coded record; anything else is returned as it is.
        record => CompressedTensor { record, codec },
    }
}

/// UltraDelta's record of a Δ that is exactly zero — a tensor the fine-tune left unchanged, such as a frozen layer
/// or embedding: it keeps no entry (a few dozen bytes, whatever the rate), so the rebuilt tensor is the base's and
/// none of the bytes a sample of zeros would take are spent (under a byte budget they go to the other tensors).
/// The same record from the whole Δ and from the checkpoints' bytes: a constant quantizer at 0 of the configured
/// bit width, scale 1, the tensor's seed (or an empty position list for Golomb positions).
fn unchanged(numel: usize, seed: u64, cfg: &CompressConfig) -> CompressedTensor {
    let positions = match cfg.positions {
        PositionCodec::Seeded => Positions::Seeded { seed, trial: 0 },
        PositionCodec::Golomb => Positions::Golomb(Vec::new()),
    };
    let coded = CodedSparseRecord {
        numel: numel as u64,
        quant: QuantParams {
            bits: cfg.quantizer().0,
            lo: 0.0,
            step: 0.0,
        },
        scale: 1.0,
        positions,
        levels: Vec::new(),
        coding: LevelCoding::Packed,
    };
    codec::finish(coded, TensorCodecInfo::default(), cfg)
}

/// Whether every entry of `src` is exactly zero (in parallel blocks; stops at the first block that is not).
fn source_is_zero(src: &DeltaSource<'_>) -> bool {
    const BLOCK: usize = 1 << 14;
    (0..src.len().div_ceil(BLOCK)).into_par_iter().all(|b| {
        let start = b * BLOCK;
        let mut v = vec![0f32; BLOCK.min(src.len() - start)];
        src.delta_into(start, &mut v);
        v.iter().all(|&x| x == 0.0)
    })
}

/// UltraDelta's record with seeded positions, from [`ultradelta_qgp::seeded::seeded_prune`]'s survivors; the
/// trial and histogram distances go into the codec report.
fn seeded_record(
    numel: usize,
    (quant, gain): (QuantParams, f32),
    pruned: SeededPruned,
    seed: u64,
    rate: f64,
    cfg: &CompressConfig,
) -> CompressedTensor {
    let info = TensorCodecInfo {
        seed_trial: Some(pruned.trial),
        hist_l1: Some(pruned.distance),
        hist_l1_first: Some(pruned.distance_first),
        ..TensorCodecInfo::default()
    };
    let coded = CodedSparseRecord {
        numel: numel as u64,
        quant,
        scale: scale(rate, gain, cfg),
        positions: Positions::Seeded {
            seed,
            trial: pruned.trial,
        },
        levels: pruned.levels,
        coding: LevelCoding::Packed,
    };
    codec::finish(coded, info, cfg)
}

/// [`compress_tensor`] for UltraDelta when [`streams_from_source`]: the levels straight from the checkpoints'
/// bytes under pass 1's quantizer (the same values `compress_tensor` quantizes, with the quantizer
/// `QuantParams::fit` gave on them): the fused kernels for DAC (no level buffer when pass 1 kept block
/// histograms), `levels` as the level buffer otherwise (reused across tensors).
pub(crate) fn compress_source(
    src: &DeltaSource<'_>,
    pass: &QuantScan,
    name: &str,
    rate: f64,
    cfg: &CompressConfig,
    levels: &mut Vec<u16>,
) -> CompressedTensor {
    let seed = tensor_seed(cfg.seed, name);
    if pass.zero {
        return unchanged(src.len(), seed, cfg);
    }
    let q = pass.quant;
    if cfg.positions == PositionCodec::Seeded {
        // The kept counts (every level at the sampled rate) come from pass 1's histogram. Several
        // trials read the levels at random-looking positions: they need the whole level buffer (not Δ); a single
        // trial (every large tensor, `trials_for`) quantizes only its kept entries.
        let counts = &pass.scan.counts;
        let rate = seeded_rate(rate, pass.nonzero, cfg);
        let target = seeded_kept_counts(counts, rate);
        let trials = trials_for(target.iter().sum(), cfg.seed_trials);
        let pruned = if trials == 1 {
            seeded_prune_source(src, &q, &target, seed)
        } else {
            crate::delta::resize(levels, src.len());
            levels_source(src, &q, levels);
            seeded_prune_to(levels, &target, seed, trials)
        };
        return seeded_record(src.len(), (q, pass.gain), pruned, seed, rate, cfg);
    }
    let pruned = match cfg.pruning {
        PruningMode::Group => group_prune_source(src, &q, &pass.scan, rate, seed, levels),
        PruningMode::Random => {
            crate::delta::resize(levels, src.len());
            levels_source(src, &q, levels);
            random_prune(levels, &q, rate, seed)
        }
    };
    let coded = CodedSparseRecord {
        numel: src.len() as u64,
        quant: q,
        scale: scale(rate, pass.gain, cfg),
        positions: Positions::Golomb(pruned.positions),
        levels: pruned.levels,
        coding: LevelCoding::Packed,
    };
    codec::finish(coded, TensorCodecInfo::default(), cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_aligned_has_a_level_at_exactly_zero_and_spans_the_range() {
        for (lo, hi) in [
            (-0.3f32, 0.7f32),
            (0.0, 1.0),
            (-1.0, 0.0),
            (-0.013, 0.0021),
            (-0.0, 0.5),
            (-2.5e-4, 3.1e-2),
        ] {
            for bits in [2u8, 3, 4, 8] {
                let a = zero_aligned(QuantParams::fit(&[lo, hi, 0.0], bits).unwrap());
                let zero = a.quantize_one(0.0);
                assert_eq!(a.dequantize(zero), 0.0, "{lo} {hi} {bits}: {a:?}");
                assert!(a.dequantize(0) <= lo, "{lo} {hi} {bits}: {a:?}");
                let top = a.dequantize(a.max_level());
                assert!(top >= hi * (1.0 - 1e-6), "{lo} {hi} {bits}: {a:?}");
            }
        }
        let constant = QuantParams::fit(&[0.0; 8], 3).unwrap();
        assert_eq!(zero_aligned(constant), constant);
    }

    /// A Δ with 60 % exact zeros, the rest spread over [−1e-3, 1.5e-3] (a range whose grid has no level at zero).
    fn sparse_delta() -> Vec<f32> {
        let mut x = 0x9e37_79b9u64;
        (0..64 * 64)
            .map(|i| {
                x = ultradelta_qgp::rng::splitmix64(x);
                if i % 5 < 3 {
                    0.0
                } else {
                    ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.5e-3 - 1e-3
                }
            })
            .collect()
    }

    fn rebuilt(delta: &[f32], rate: f64, cfg: &CompressConfig) -> Vec<f32> {
        let rec = compress_tensor(delta, "w", &[64, 64], rate, cfg).unwrap();
        let mut w = vec![0f32; delta.len()];
        rec.record.add_delta_into(1.0, &mut w).unwrap();
        w
    }

    #[test]
    fn a_sparse_delta_rebuilds_its_zeros_as_zeros() {
        let cfg = CompressConfig::default();
        let d = sparse_delta();
        for rate in [0.0, 0.5, 0.9] {
            let w = rebuilt(&d, rate, &cfg);
            for (i, (&x, &y)) in d.iter().zip(&w).enumerate() {
                if x == 0.0 {
                    assert_eq!(y, 0.0, "rate {rate}: entry {i} is zero in Δ, {y} rebuilt");
                }
            }
            let kept = w.iter().filter(|&&y| y != 0.0).count();
            assert!(kept > 0, "rate {rate}: nothing kept");
        }
        // Nothing dropped: every entry within half a step of Δ.
        let q = zero_aligned(QuantParams::fit(&d, cfg.quantizer().0).unwrap());
        let w = rebuilt(&d, 0.0, &cfg);
        for (&x, &y) in d.iter().zip(&w) {
            assert!((x - y).abs() <= 0.5 * q.step * 1.0001, "{x} rebuilt as {y}");
        }
    }

    #[test]
    fn a_sparse_bf16_delta_gets_the_same_record_from_the_bytes_as_from_the_whole_delta() {
        // A bf16 fine-tune whose updates were below the weights' last bit in about 60 % of the entries.
        use ultradelta_io::{bytes_to_f32, f32_to_bytes, DType};
        let cfg = CompressConfig::default().for_family(crate::Family::Llama);
        assert!(streams_from_source(&cfg));
        let d = sparse_delta();
        let base_f32: Vec<f32> = (0..d.len()).map(|i| 0.02 + (i % 7) as f32 * 0.01).collect();
        let (mut base, mut ft) = (Vec::new(), Vec::new());
        f32_to_bytes(&base_f32, DType::BF16, &mut base).unwrap();
        let mut rounded = vec![0f32; d.len()];
        bytes_to_f32(&base, DType::BF16, &mut rounded).unwrap();
        let ft_f32: Vec<f32> = rounded
            .iter()
            .zip(&d)
            .map(|(&b, &x)| if x == 0.0 { b } else { b + 40.0 * x })
            .collect();
        f32_to_bytes(&ft_f32, DType::BF16, &mut ft).unwrap();
        let mut whole = vec![0f32; d.len()];
        bytes_to_f32(&ft, DType::BF16, &mut whole).unwrap();
        for (w, b) in whole.iter_mut().zip(&rounded) {
            *w -= b;
        }
        let src = DeltaSource::Bf16 {
            base: &base,
            ft: &ft,
        };
        assert!(quantizer_of(&whole, &cfg).unwrap().2 < 1.0);
        let pass = QuantScan::of(&src, &cfg).unwrap();
        assert!(pass.nonzero < 1.0);
        assert_eq!(pass.quant.dequantize(pass.quant.quantize_one(0.0)), 0.0);
        // Below, inside and above the sparse density's ramp ([`sampled_rate`]).
        for rate in [0.0, 0.5, 0.75, 0.95] {
            let streamed = compress_source(&src, &pass, "w", rate, &cfg, &mut Vec::new());
            let made = compress_tensor(&whole, "w", &[64, 64], rate, &cfg).unwrap();
            assert_eq!(streamed.record, made.record, "rate {rate}");
        }
    }

    /// A tensor the fine-tune left unchanged (Δ exactly zero: a frozen layer) keeps nothing, from the whole Δ (every
    /// family's path: BERT's with the low-rank part and row subsets) and from the checkpoints' bytes alike, at any
    /// rate; one non-zero entry, even one too small for the range fit's step, is not taken for zero.
    #[test]
    fn an_unchanged_tensor_keeps_nothing_from_both_paths() {
        use ultradelta_io::{f32_to_bytes, DType};
        let base_f32: Vec<f32> = (0..64 * 48).map(|i| 0.02 + (i % 7) as f32 * 0.01).collect();
        let mut base = Vec::new();
        f32_to_bytes(&base_f32, DType::BF16, &mut base).unwrap();
        let src = DeltaSource::Bf16 {
            base: &base,
            ft: &base,
        };
        let zeros = vec![0f32; base_f32.len()];
        for family in [crate::Family::Llama, crate::Family::Bert] {
            for positions in [PositionCodec::Seeded, PositionCodec::Golomb] {
                let cfg = CompressConfig {
                    positions,
                    ..CompressConfig::default().for_family(family)
                };
                let pass = QuantScan::of(&src, &cfg).unwrap();
                assert!(pass.zero);
                for rate in [0.0, 0.5, 0.97, 0.999] {
                    let streamed = compress_source(&src, &pass, "w", rate, &cfg, &mut Vec::new());
                    let made = compress_tensor(&zeros, "w", &[64, 48], rate, &cfg).unwrap();
                    assert_eq!(
                        streamed.record, made.record,
                        "{family:?} {positions:?} {rate}"
                    );
                    assert_eq!(
                        made.record.kept(),
                        Some(0),
                        "{family:?} {positions:?} {rate}"
                    );
                    let mut w = base_f32.clone();
                    made.record.add_delta_into(1.0, &mut w).unwrap();
                    assert_eq!(w, base_f32);
                }
            }
        }
        // The smallest subnormal in one entry: the range fit's step rounds to 0, the exact check does not.
        let mut tiny = zeros.clone();
        tiny[100] = f32::from_bits(1);
        let cfg = CompressConfig::default().for_family(crate::Family::Llama);
        let pass = QuantScan::of(&DeltaSource::F32(&tiny), &cfg).unwrap();
        assert!(!pass.zero);
        let made = compress_tensor(&tiny, "w", &[64, 48], 0.5, &cfg).unwrap();
        assert!(made.record.kept().unwrap() > 0);
    }

    /// The share of `d`'s non-zero entries as the quantizer fit reads it (1 for a dense Δ).
    fn nonzero_of(d: &[f32], cfg: &CompressConfig) -> f64 {
        quantizer_of(d, cfg).unwrap().2
    }

    fn coded(delta: &[f32], rate: f64, cfg: &CompressConfig) -> CodedSparseRecord {
        match compress_tensor(delta, "w", &[64, 64], rate, cfg)
            .unwrap()
            .record
        {
            Record::Coded(c) => c,
            r => panic!("expected a coded record, got {:?}", r.kind()),
        }
    }

    #[test]
    fn a_sparse_delta_keeps_its_share_of_entries_whatever_their_level() {
        // Each entry is kept with probability 1 − rate, zeros included, so the 1/(1 − rate) rescale is unbiased:
        // the survivors' sum estimates Δ's sum. (A rate whose density is below half the non-zero share, where
        // the sampled rate is the allocated one.)
        let cfg = CompressConfig::default();
        let d = sparse_delta();
        let nonzero = nonzero_of(&d, &cfg);
        assert!((0.39..0.41).contains(&nonzero), "{nonzero}");
        let c = coded(&d, 0.9, &cfg);
        let kept = c.levels.len() as f64;
        assert!(
            (kept / d.len() as f64 - 0.1).abs() < 0.01,
            "{kept} kept of {}",
            d.len()
        );
        // Dense deltas have no zero level: the same Δ without its zeros.
        let dense: Vec<f32> = d.iter().map(|&x| if x == 0.0 { 1e-4 } else { x }).collect();
        let sparse = |x: &[f32], cfg: &CompressConfig| quantizer_of(x, cfg).unwrap().2 < 1.0;
        assert!(!sparse(&dense, &cfg) && sparse(&d, &cfg));
        assert_eq!(nonzero_of(&dense, &cfg), 1.0);
        let golomb = CompressConfig {
            positions: PositionCodec::Golomb,
            ..CompressConfig::default()
        };
        assert!(!sparse(&d, &golomb), "the paper's codecs are left alone");
    }

    #[test]
    fn the_sampled_rate_rises_continuously_to_every_entry_as_the_density_reaches_the_nonzero_share()
    {
        // Dense: the identity, to the bit.
        for rate in [0.0, 0.3, 0.5, 0.7, 0.97, 0.999] {
            assert_eq!(sampled_rate(rate, 1.0).to_bits(), rate.to_bits());
        }
        for nonzero in [0.9, 0.48, 0.2, 0.005] {
            // Unchanged while the density is at most half the non-zero share; nothing dropped from it on.
            let below = 1.0 - 0.5 * nonzero;
            assert_eq!(sampled_rate(below + 1e-9, nonzero), below + 1e-9);
            assert!(sampled_rate(1.0 - nonzero, nonzero) < 1e-12);
            assert_eq!(sampled_rate(0.9 - nonzero, nonzero), 0.0);
            assert_eq!(sampled_rate(0.0, nonzero), 0.0);
            // Continuous and never increasing as the density grows (the rate falls), never above the allocated.
            let mut last = 1.0;
            for k in 0..=20_000 {
                let rate = 1.0 - k as f64 / 20_000.0;
                let r = sampled_rate(rate, nonzero);
                assert!(r <= rate && r <= last, "{nonzero} {rate}: {r} after {last}");
                assert!(
                    last - r <= 2.0 / nonzero / 20_000.0 + 1e-12,
                    "{nonzero} {rate}: a jump"
                );
                last = r;
            }
        }
    }

    /// A Δ with 1 % of its entries non-zero (a fine-tune trimmed to its largest changes).
    fn trimmed_delta() -> Vec<f32> {
        let mut x = 0x1234_5678u64;
        (0..64 * 64)
            .map(|i| {
                x = ultradelta_qgp::rng::splitmix64(x);
                if i % 100 == 7 {
                    ((x >> 40) as f32 / (1u64 << 24) as f32) * 0.02 - 0.01
                } else {
                    0.0
                }
            })
            .collect()
    }

    #[test]
    fn a_delta_sparser_than_the_kept_density_keeps_every_nonzero_entry_unscaled() {
        // At the default s = 0.97 (3 % kept) a 1 %-non-zero Δ is not sampled down to 0.03 % of its changes (an
        // error of ~32 times its energy): every entry is kept and nothing rescaled, so only the quantizer errs,
        // its zeros rebuild as zeros, and with the range fit each entry is within half a step.
        for cfg in [
            CompressConfig::default(),
            CompressConfig::default().for_family(crate::Family::Llama),
            CompressConfig::default().for_family(crate::Family::Bert),
        ] {
            let d = trimmed_delta();
            let (q, gain, ..) = quantizer_of(&d, &cfg).unwrap();
            let w = rebuilt(&d, cfg.sparsity, &cfg);
            let (mut err, mut energy) = (0f64, 0f64);
            for (&x, &y) in d.iter().zip(&w) {
                if cfg.quantizer().1 == QuantFit::Range {
                    assert!(
                        (x - y).abs() <= 0.5 * q.step * 1.0001,
                        "{:?}: {x} rebuilt as {y}",
                        cfg.quantizer()
                    );
                }
                if x == 0.0 {
                    assert_eq!(y, 0.0);
                }
                err += f64::from(x - y).powi(2);
                energy += f64::from(x).powi(2);
            }
            // (LLaMA's MSE fit over every entry, zeros included, clamped this Δ's changes: an error of 20 % of its
            // energy.)
            assert!(
                err <= 0.04 * energy,
                "{:?}: {err} against {energy}",
                cfg.quantizer()
            );
            let c = coded(&d, cfg.sparsity, &cfg);
            assert_eq!(
                (c.levels.len(), c.scale),
                (d.len(), gain),
                "{:?}",
                cfg.quantizer()
            );
        }
        // The paper's global rescale (1/(1 − s) whatever a tensor's rate) keeps the allocated rate.
        let global = CompressConfig {
            rescale: RescaleMode::Global,
            ..CompressConfig::default()
        };
        let d = trimmed_delta();
        let c = coded(&d, 0.97, &global);
        let expected = 0.03 * d.len() as f64;
        assert!(
            (c.levels.len() as f64 - expected).abs() <= 16.0,
            "{}",
            c.levels.len()
        );
    }

    #[test]
    fn a_sparse_records_bytes_fall_as_its_rate_rises_through_the_ramp() {
        // The byte budget's search needs bytes that never grow with the rate, and no jump where the sampled
        // density leaves the allocated one.
        let cfg = CompressConfig::default();
        for d in [trimmed_delta(), sparse_delta()] {
            let mut last = u64::MAX;
            for k in 0..=60 {
                let rate = 0.4 + 0.599 * f64::from(k) / 60.0;
                let rec = compress_tensor(&d, "w", &[64, 64], rate, &cfg)
                    .unwrap()
                    .record;
                let len = ultradelta_archive::encode_record(
                    ultradelta_io::DType::F32,
                    &[64, 64],
                    &rec,
                    3,
                )
                .unwrap()
                .len() as u64;
                assert!(len <= last, "rate {rate}: {len} bytes after {last}");
                last = len;
            }
        }
    }
}
