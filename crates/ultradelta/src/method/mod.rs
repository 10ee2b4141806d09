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

use ultradelta_alloc::TensorStat;
use ultradelta_archive::{CodedSparseRecord, LevelCoding, LowRankSparseRecord, Positions, Record};
use ultradelta_baselines as baselines;
use ultradelta_qgp::fit::{fit_mse, projection_gain, strided_sample};
use ultradelta_qgp::fused::{
    fit_source, group_prune_source, levels_source, scan_levels, DeltaSource, LevelScan,
};
use ultradelta_qgp::seeded::{
    dac_kept_from_counts, seeded_prune_source, seeded_prune_to, trials_for, SeededPruned,
};
use ultradelta_qgp::{
    dac_drop_count, group_prune, level_counts, quantize, quantized_std_from_counts, random_prune,
    tensor_seed, Pruned, QuantParams, Quantizer,
};
use ultradelta_rescale::rescale_factor;

pub use codec::TensorCodecInfo;

use crate::baseline_records::IntoRecord;
use crate::config::{CompressConfig, Method, PositionCodec, PruningMode, QuantFit};

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
/// levels and Golomb positions (seeded positions and the fp16 ablation need the whole Δ), and no low-rank part
/// (its singular directions need the whole Δ).
pub(crate) fn streams_from_source(cfg: &CompressConfig) -> bool {
    cfg.method == Method::Ultradelta && cfg.quantize && !cfg.lowrank_part_on()
}

/// UltraDelta's pass-1 result for one tensor: the quantizer `QuantParams::fit` gives on its Δ and the histogram
/// of its levels (per block too, for the fused prune of [`compress_source`]).
pub(crate) struct QuantScan {
    quant: QuantParams,
    /// The factor on the record's rescale factor that [`QuantFit::MseUnbiased`] asks for (1 otherwise).
    gain: f32,
    /// Whether the quantizer has a level at exactly zero for a sparse Δ ([`keeps_zeros`]).
    zero_level: bool,
    scan: LevelScan,
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
        let (quant, gain, zero_level) = refit(range, fit, src.len(), |i| src.delta_at(i), cfg);
        let scan = scan_levels(src, &quant);
        Ok(QuantScan {
            quant,
            gain,
            zero_level,
            scan,
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
/// range fit has checked), the gain on the record's rescale factor that goes with it, and whether the tensor is
/// sparse for `cfg`'s codec ([`keeps_zeros`]; its quantizer then [`zero_aligned`], after the MSE fit and before its
/// gain). The strided sample both read is drawn once, and not at all for the range fit of the Golomb codecs.
fn refit(
    range: QuantParams,
    fit: QuantFit,
    n: usize,
    value: impl Fn(usize) -> f32,
    cfg: &CompressConfig,
) -> (QuantParams, f32, bool) {
    let seeded = seeded_levels(cfg);
    if fit == QuantFit::Range && !seeded {
        return (range, 1.0, false);
    }
    let sample = strided_sample(n, value);
    let zero_level = seeded && keeps_zeros(&sample);
    let aligned = |q| if zero_level { zero_aligned(q) } else { q };
    if fit == QuantFit::Range {
        return (aligned(range), 1.0, zero_level);
    }
    let q = aligned(fit_mse(&sample, range));
    let gain = match fit {
        QuantFit::MseUnbiased => projection_gain(&sample, q),
        _ => 1.0,
    };
    (q, gain, zero_level)
}

/// UltraDelta, step 1: the b-bit quantizer of Δ, its gain and whether Δ is sparse ([`refit`]).
///
/// With seeded positions, a Δ of many exact zeros ([`keeps_zeros`]) gets its quantizer moved so that one level is
/// exactly zero ([`zero_aligned`]): its zeros then rebuild as zeros, where the plain range grid would
/// turn each into the small value of the level nearest zero, times the rescale factor, everywhere.
fn quantizer_of(
    delta: &[f32],
    cfg: &CompressConfig,
) -> Result<(QuantParams, f32, bool), ultradelta_qgp::Error> {
    let (bits, fit) = cfg.quantizer();
    let range = QuantParams::fit(delta, bits)?;
    Ok(refit(range, fit, delta.len(), |i| delta[i], cfg))
}

/// Share of exact zeros from which a Δ is coded as sparse ([`keeps_zeros`]). Dense fine-tunes stored in f32 have
/// almost none (MiniLM's four: at most 2.4e-6 of an embedding's entries); a delta trimmed to its largest entries
/// (TIES, DARE, sparse fine-tuning, a partly frozen tensor) has most of its entries exactly zero, and so has a
/// fine-tune stored in bf16 whose updates were below the weights' last bit (the LLaMA testbed's: 51–53 % of a
/// linear layer's entries, 23–27 % of the embeddings').
const SPARSE_ZERO_SHARE: f64 = 0.05;

/// Whether `cfg` codes UltraDelta's levels at seeded positions, the codec that treats a sparse Δ apart
/// ([`keeps_zeros`]); the Golomb codecs (the paper's) are left as they are.
fn seeded_levels(cfg: &CompressConfig) -> bool {
    cfg.positions == PositionCodec::Seeded && cfg.quantize
}

/// Whether a Δ is sparse: at least [`SPARSE_ZERO_SHARE`] exact zeros (±0) in `sample`, the strided sample the MSE
/// fit reads ([`strided_sample`]: every entry of a tensor of up to 32,768), so the whole Δ and the checkpoints'
/// bytes give the same decision.
fn keeps_zeros(sample: &[f32]) -> bool {
    let zeros = sample.iter().filter(|&&x| x == 0.0).count();
    !sample.is_empty() && zeros as f64 >= SPARSE_ZERO_SHARE * sample.len() as f64
}

/// The kept count per level for seeded positions: DAC's ([`dac_kept_from_counts`]: none of a zero level, the rest at the
/// group rate) for a dense Δ; for a sparse one (`zero_level`) every level at `rate`, its zero level too. Seeded
/// positions are drawn whatever the values, so each entry is kept with probability 1 − rate and the rescale
/// 1/(1 − rate) stays unbiased; DAC's rule would cap the sample at the non-zero entries' count and bias it.
fn seeded_targets(counts: &[u64], q: &QuantParams, rate: f64, zero_level: bool) -> Vec<u64> {
    if zero_level {
        counts
            .iter()
            .map(|&c| c - dac_drop_count(c, rate))
            .collect()
    } else {
        dac_kept_from_counts(counts, q, rate)
    }
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

/// UltraDelta, step 1: the b-bit quantizer of Δ (with its gain and whether Δ is sparse, [`refit`]) and every
/// entry's level.
fn quantize_delta(
    delta: &[f32],
    cfg: &CompressConfig,
) -> Result<(QuantParams, f32, bool, Vec<u16>), ultradelta_qgp::Error> {
    let (q, gain, zero_level) = quantizer_of(delta, cfg)?;
    let mut levels = vec![0u16; delta.len()];
    quantize(delta, &q, &mut levels);
    Ok((q, gain, zero_level, levels))
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

/// UltraDelta's record from the whole Δ: quantize, prune (listed or seeded positions), rescale, then the values
/// codec; with `quantize = false` the ablation's fp16 values at DAC's positions.
fn ultradelta(
    delta: &[f32],
    name: &str,
    shape: &[usize],
    rate: f64,
    cfg: &CompressConfig,
) -> Result<CompressedTensor, baselines::Error> {
    let seed = tensor_seed(cfg.seed, name);
    if cfg.lowrank_part_on() && cfg.allows_lowrank_part() {
        if let &[rows, cols] = shape {
            if let Some(split) = lowrank_part::split(delta, (rows, cols), rate, seed, cfg)? {
                // No shape for the residual: it is sampled as a plain seeded record, never split again.
                let residual = ultradelta(&split.residual, name, &[], split.rate, cfg)?;
                return Ok(with_part(residual, split.part));
            }
        }
    }
    let (q, gain, zero_level, levels) = quantize_delta(delta, cfg)?;
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
        let target = seeded_targets(&level_counts(&levels), &q, rate, zero_level);
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
    let q = pass.quant;
    if cfg.positions == PositionCodec::Seeded {
        // The kept counts (DAC's, or every level at the rate for a sparse Δ) come from pass 1's histogram. Several
        // trials read the levels at random-looking positions: they need the whole level buffer (not Δ); a single
        // trial (every large tensor, `trials_for`) quantizes only its kept entries.
        let target = seeded_targets(&pass.scan.counts, &q, rate, pass.zero_level);
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
        let cfg = CompressConfig::default().for_family(crate::Family::Llama);
        assert!(streams_from_source(&cfg));
        let d = sparse_delta();
        let bf16 = |x: f32| ((x.to_bits() + 0x7fff + ((x.to_bits() >> 16) & 1)) >> 16) as u16;
        let (mut base, mut ft) = (Vec::new(), Vec::new());
        let mut whole = Vec::new();
        for (i, &x) in d.iter().enumerate() {
            let b = bf16(0.02 + (i % 7) as f32 * 0.01);
            let f = if x == 0.0 {
                b
            } else {
                bf16(f32::from_bits(u32::from(b) << 16) + 40.0 * x)
            };
            base.extend_from_slice(&b.to_le_bytes());
            ft.extend_from_slice(&f.to_le_bytes());
            whole.push(f32::from_bits(u32::from(f) << 16) - f32::from_bits(u32::from(b) << 16));
        }
        let src = DeltaSource::Bf16 {
            base: &base,
            ft: &ft,
        };
        assert!(quantizer_of(&whole, &cfg).unwrap().2);
        let pass = QuantScan::of(&src, &cfg).unwrap();
        assert!(pass.zero_level);
        assert_eq!(pass.quant.dequantize(pass.quant.quantize_one(0.0)), 0.0);
        for rate in [0.0, 0.5, 0.95] {
            let streamed = compress_source(&src, &pass, "w", rate, &cfg, &mut Vec::new());
            let made = compress_tensor(&whole, "w", &[64, 64], rate, &cfg).unwrap();
            assert_eq!(streamed.record, made.record, "rate {rate}");
        }
    }

    #[test]
    fn a_sparse_delta_keeps_its_share_of_entries_whatever_their_level() {
        // Each entry is kept with probability 1 − rate, zeros included, so the 1/(1 − rate) rescale is unbiased:
        // the survivors' sum estimates Δ's sum.
        let cfg = CompressConfig::default();
        let d = sparse_delta();
        let rec = compress_tensor(&d, "w", &[64, 64], 0.75, &cfg).unwrap();
        let Record::Coded(c) = &rec.record else {
            panic!("expected a coded record, got {:?}", rec.record.kind());
        };
        let kept = c.levels.len() as f64;
        assert!(
            (kept / d.len() as f64 - 0.25).abs() < 0.01,
            "{kept} kept of {}",
            d.len()
        );
        // Dense deltas keep DAC's rule (no zero level to keep): the same Δ without its zeros.
        let dense: Vec<f32> = d.iter().map(|&x| if x == 0.0 { 1e-4 } else { x }).collect();
        let sparse = |x: &[f32], cfg: &CompressConfig| quantizer_of(x, cfg).unwrap().2;
        assert!(!sparse(&dense, &cfg) && sparse(&d, &cfg));
        let golomb = CompressConfig {
            positions: PositionCodec::Golomb,
            ..CompressConfig::default()
        };
        assert!(!sparse(&d, &golomb), "the paper's codecs are left alone");
    }
}
