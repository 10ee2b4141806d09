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
    dac_kept_counts, dac_kept_from_counts, seeded_prune_source, seeded_prune_to, trials_for,
    SeededPruned,
};
use ultradelta_qgp::{
    group_prune, quantize, quantized_std_from_counts, random_prune, tensor_seed, Pruned,
    QuantParams, Quantizer,
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
        let (quant, gain) = refit(range, fit, src.len(), |i| src.delta_at(i));
        let scan = scan_levels(src, &quant);
        Ok(QuantScan { quant, gain, scan })
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
/// range fit has checked), and the gain on the record's rescale factor that goes with it.
fn refit(
    range: QuantParams,
    fit: QuantFit,
    n: usize,
    value: impl Fn(usize) -> f32,
) -> (QuantParams, f32) {
    if fit == QuantFit::Range {
        return (range, 1.0);
    }
    let sample = strided_sample(n, value);
    let q = fit_mse(&sample, range);
    let gain = match fit {
        QuantFit::MseUnbiased => projection_gain(&sample, q),
        _ => 1.0,
    };
    (q, gain)
}

/// UltraDelta, step 1: the b-bit quantizer of Δ and its gain ([`refit`]).
fn quantizer_of(
    delta: &[f32],
    cfg: &CompressConfig,
) -> Result<(QuantParams, f32), ultradelta_qgp::Error> {
    let (bits, fit) = cfg.quantizer();
    let range = QuantParams::fit(delta, bits)?;
    Ok(refit(range, fit, delta.len(), |i| delta[i]))
}

/// UltraDelta, step 1: the b-bit quantizer of Δ (and its gain, [`refit`]) and every entry's level.
fn quantize_delta(
    delta: &[f32],
    cfg: &CompressConfig,
) -> Result<(QuantParams, f32, Vec<u16>), ultradelta_qgp::Error> {
    let (q, gain) = quantizer_of(delta, cfg)?;
    let mut levels = vec![0u16; delta.len()];
    quantize(delta, &q, &mut levels);
    Ok((q, gain, levels))
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
    let (q, gain, levels) = quantize_delta(delta, cfg)?;
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
        let target = dac_kept_counts(&levels, &q, rate);
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
        // DAC's kept counts come from pass 1's histogram. Several trials read the levels at random-looking
        // positions: they need the whole level buffer (not Δ); a single trial (every large tensor,
        // `trials_for`) quantizes only its kept entries.
        let target = dac_kept_from_counts(&pass.scan.counts, &q, rate);
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
