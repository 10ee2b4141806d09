//! compress: base + fine-tuned checkpoint → archive (one model, or several with TNGR).

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;
use ultradelta_alloc::{Allocation, MsaConfig, TensorStat, Tier};
use ultradelta_archive::{
    ArchiveWriter, FinetunedInfo, Policy, Record, SparseRecord, TensorEntry, WriterOptions,
};
use ultradelta_baselines as baselines;
use ultradelta_io::{pair, Checkpoint, TensorInfo, TensorView};
use ultradelta_qgp::fused::{
    fit_source, group_prune_source, levels_source, scan_levels, DeltaSource, LevelScan,
};
use ultradelta_qgp::{
    group_prune, quantize, quantized_std_from_counts, random_prune, tensor_seed, QuantParams,
    Quantizer,
};
use ultradelta_rescale::{nuclear_norm_with, rescale_factor, tngr_gammas, TraceOn};

use crate::baseline_records::IntoRecord;
use crate::budget::{solve_budget, BudgetReport};
use crate::config::{AllocationMode, CompressConfig, Method, PruningMode};
use crate::delta::{delta_into, with_source};
use crate::selection::{detect_family, Family, FamilySource, RuleSource};
use crate::{Error, Progress, Result};

/// The method name written into archives made with the default method ([`Method::Ultradelta`]); other methods
/// write [`Method::name`].
pub const METHOD: &str = "ultradelta";

/// What one compression run did (printed by the CLI).
#[derive(Debug, Clone, Serialize)]
pub struct CompressReport {
    /// The archive written.
    pub output: PathBuf,
    /// Tensor-selection family used.
    pub family: Family,
    /// How the family was decided (human-readable).
    pub family_source: String,
    /// Tensors compressed / kept / dropped / stored whole (only in the fine-tune).
    pub counts: PolicyCounts,
    /// Tensors present only in the base (absent from the rebuilt model, like in the fine-tune).
    pub base_only: Vec<String>,
    /// γ applied to this archive's compressed tensors.
    pub gamma: f64,
    /// Sum of nuclear norms of the compressed tensors (only computed for TNGR).
    pub trace_norm: Option<f64>,
    /// Archive size in bytes.
    pub archive_bytes: u64,
    /// Method used.
    pub method: Method,
    /// What the byte-budget search chose (with `target_ratio`).
    pub budget: Option<BudgetReport>,
}

/// Number of tensors under each policy.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct PolicyCounts {
    /// Compressed by the pipeline.
    pub compress: usize,
    /// Delta stored without loss.
    pub keep: usize,
    /// Delta dropped (base value used).
    pub drop: usize,
    /// Present only in the fine-tune: stored whole.
    pub new: usize,
}

pub(crate) struct TensorPlan {
    pub(crate) info: TensorInfo,
    pub(crate) policy: Policy,
    from: RuleSource,
}

/// A fine-tune matched against the base, with a policy for every tensor.
pub(crate) struct Prepared<'a> {
    pub(crate) base: &'a Checkpoint,
    pub(crate) ft: &'a Checkpoint,
    family: Family,
    family_source: FamilySource,
    pub(crate) plans: Vec<TensorPlan>,
    base_only: Vec<String>,
}

fn prepare<'a>(
    base: &'a Checkpoint,
    ft: &'a Checkpoint,
    cfg: &CompressConfig,
) -> Result<Prepared<'a>> {
    let pairing = pair(base, ft);
    if let Some((b, f)) = pairing.mismatched.first() {
        return Err(Error::Mismatch(Box::new(crate::error::TensorMismatch {
            tensor: b.name.clone(),
            base_file: base.file_of(&b.name).unwrap_or(base.path()).to_path_buf(),
            finetuned_file: ft.file_of(&f.name).unwrap_or(ft.path()).to_path_buf(),
            base_dtype: b.dtype.name().to_string(),
            base_shape: b.shape.clone(),
            ft_dtype: f.dtype.name().to_string(),
            ft_shape: f.shape.clone(),
        })));
    }
    let (family, family_source) = match cfg.selection.family {
        Some(f) => (f, FamilySource::User),
        None => detect_family(ft),
    };
    let mut plans = Vec::with_capacity(ft.tensors().len());
    for info in ft.tensors() {
        let (policy, from) = if base.info(&info.name).is_some() {
            cfg.selection.policy(family, info)
        } else {
            (Policy::New, RuleSource::Default)
        };
        if policy == Policy::Compress && !info.dtype.is_float() {
            return Err(Error::NotCompressible {
                file: ft.file_of(&info.name).unwrap_or(ft.path()).to_path_buf(),
                tensor: info.name.clone(),
                dtype: info.dtype.name().to_string(),
            });
        }
        plans.push(TensorPlan {
            info: info.clone(),
            policy,
            from,
        });
    }
    Ok(Prepared {
        base,
        ft,
        family,
        family_source,
        plans,
        base_only: pairing.only_base,
    })
}

fn describe_source(family: Family, src: &FamilySource) -> String {
    match src {
        FamilySource::User => format!("{family} (given)"),
        FamilySource::ModelType(t) => format!("{family} (from config.json model_type \"{t}\")"),
        FamilySource::TensorNames => format!("{family} (guessed from tensor names)"),
        FamilySource::Fallback => {
            "generic (no preset matched: compressing 2-D *weight tensors except embeddings, heads and norms)"
                .to_string()
        }
    }
}

/// Δ = fine-tuned − base in f32, computed in parallel chunks.
pub(crate) fn delta_f32(base: &TensorView<'_>, ft: &TensorView<'_>) -> Result<Vec<f32>> {
    let mut d = Vec::new();
    delta_into(base, ft, &mut d)?;
    Ok(d)
}

pub(crate) fn method_err(ckpt: &Checkpoint, name: &str, source: baselines::Error) -> Error {
    match source {
        baselines::Error::Quant(q) => quant_err(ckpt, name, q),
        source => Error::Method {
            file: ckpt.file_of(name).unwrap_or(ckpt.path()).to_path_buf(),
            tensor: name.to_string(),
            source,
        },
    }
}

fn quant_err(ckpt: &Checkpoint, name: &str, source: ultradelta_qgp::Error) -> Error {
    Error::Quant {
        file: ckpt.file_of(name).unwrap_or(ckpt.path()).to_path_buf(),
        tensor: name.to_string(),
        source,
    }
}

/// Indices of the plans under policy `compress`.
pub(crate) fn compressed_indices(p: &Prepared<'_>) -> Vec<usize> {
    (0..p.plans.len())
        .filter(|&i| p.plans[i].policy == Policy::Compress)
        .collect()
}

/// Pass 1 (UltraDelta only): per-tensor σ of the quantized delta of every compressed tensor.
pub(crate) fn tensor_stats(
    p: &Prepared<'_>,
    cfg: &CompressConfig,
    progress: &dyn Progress,
) -> Result<Vec<TensorStat>> {
    Ok(pass_one(p, cfg, progress)?.0)
}

/// Pass 1's result for one compressed tensor: the quantizer `QuantParams::fit` gives on its Δ and the histogram
/// of its levels (per block too, for the fused prune of pass 2).
pub(crate) struct TensorScan {
    quant: QuantParams,
    scan: LevelScan,
}

/// Pass 1 with each compressed tensor's quantizer and level scan, so pass 2 can quantize and prune straight from
/// the checkpoints' bytes. Δ is never materialised: each tensor is read twice (extremes, then levels).
pub(crate) fn pass_one(
    p: &Prepared<'_>,
    cfg: &CompressConfig,
    progress: &dyn Progress,
) -> Result<(Vec<TensorStat>, Vec<TensorScan>)> {
    let idx = compressed_indices(p);
    let total: u64 = idx.iter().map(|&i| p.plans[i].info.numel() as u64).sum();
    progress.begin("analysing deltas", total);
    let mut stats = Vec::with_capacity(idx.len());
    let mut scans = Vec::with_capacity(idx.len());
    // Last tensor first: pass 2 goes first to last, so when the checkpoints are larger than the page cache the
    // tensors it starts with are the ones this pass read most recently, still cached, instead of the ones the
    // cache dropped first. Each tensor's result is its own, so the order changes nothing else.
    for (k, &i) in idx.iter().enumerate().rev() {
        let info = &p.plans[i].info;
        let name = info.name.as_str();
        // The disk reads the next tensor while this one is computed (when it is not cached already).
        if let Some(&prev) = k.checked_sub(1).and_then(|j| idx.get(j)) {
            p.base.prefetch(&p.plans[prev].info.name);
            p.ft.prefetch(&p.plans[prev].info.name);
        }
        let (base, ft) = (p.base.view(name)?, p.ft.view(name)?);
        let (quant, scan) = with_source(&base, &ft, |src| {
            let q = fit_source(src, cfg.bits)?;
            Ok((q, scan_levels(src, &q)))
        })?
        .map_err(|e| quant_err(p.ft, name, e))?;
        stats.push(TensorStat {
            numel: info.numel() as u64,
            std: quantized_std_from_counts(&scan.counts, &quant),
        });
        scans.push(TensorScan { quant, scan });
        // The next pass maps the tensor in again; meanwhile its pages need not count against this process.
        p.base.release(name);
        p.ft.release(name);
        progress.advance(info.numel() as u64);
    }
    progress.end();
    stats.reverse();
    scans.reverse();
    Ok((stats, scans))
}

/// Per-tensor rates of the compressed tensors: the allocation for UltraDelta (from pass-1 `stats`), the target
/// sparsity for every tensor otherwise.
pub(crate) fn rates_for(
    stats: Option<&[TensorStat]>,
    n: usize,
    cfg: &CompressConfig,
) -> Result<Allocation> {
    let Some(stats) = stats else {
        return Ok(Allocation {
            rates: vec![cfg.sparsity; n],
            tiers: vec![None; n],
        });
    };
    let alloc = match cfg.allocation {
        AllocationMode::Msa => ultradelta_alloc::msa(
            stats,
            cfg.sparsity,
            &MsaConfig {
                step: cfg.step,
                ..MsaConfig::default()
            },
        )?,
        AllocationMode::Uniform => ultradelta_alloc::uniform(stats, cfg.sparsity)?,
    };
    Ok(alloc)
}

fn tier_name(t: Tier) -> &'static str {
    match t {
        Tier::Low => "low",
        Tier::Mid => "mid",
        Tier::High => "high",
    }
}

fn hex(h: u64) -> String {
    format!("{h:016x}")
}

/// The sparse record for one compressed tensor, exactly as the archive stores it.
///
/// This is the in-memory result of the pipeline; `apply` decodes the same record
/// from the file, so rebuilt weights are bit-identical to this.
pub fn compress_tensor(
    delta: &[f32],
    name: &str,
    rate: f64,
    cfg: &CompressConfig,
) -> std::result::Result<SparseRecord, ultradelta_qgp::Error> {
    let q = QuantParams::fit(delta, cfg.bits)?;
    let mut levels = vec![0u16; delta.len()];
    quantize(delta, &q, &mut levels);
    Ok(prune_levels(&levels, q, name, rate, cfg))
}

/// The sparse record from a tensor's quantized `levels` (quantized with `q`): [`compress_tensor`] after its
/// quantization.
fn prune_levels(
    levels: &[u16],
    q: QuantParams,
    name: &str,
    rate: f64,
    cfg: &CompressConfig,
) -> SparseRecord {
    let seed = tensor_seed(cfg.seed, name);
    let pruned = match cfg.pruning {
        PruningMode::Group => group_prune(levels, &q, rate, seed),
        PruningMode::Random => random_prune(levels, &q, rate, seed),
    };
    sparse_record(levels.len(), q, pruned, rate, cfg)
}

/// [`prune_levels`] of the source's levels under pass 1's quantizer, from the checkpoints' bytes: the fused
/// kernels for DAC (no level buffer when pass 1 kept block histograms), `levels` as the level buffer otherwise.
fn prune_source(
    src: &DeltaSource<'_>,
    pass: &TensorScan,
    name: &str,
    rate: f64,
    cfg: &CompressConfig,
    levels: &mut Vec<u16>,
) -> SparseRecord {
    let seed = tensor_seed(cfg.seed, name);
    let q = pass.quant;
    let pruned = match cfg.pruning {
        PruningMode::Group => group_prune_source(src, &q, &pass.scan, rate, seed, levels),
        PruningMode::Random => {
            crate::delta::resize(levels, src.len());
            levels_source(src, &q, levels);
            random_prune(levels, &q, rate, seed)
        }
    };
    sparse_record(src.len(), q, pruned, rate, cfg)
}

/// The record of a tensor's survivors `pruned`, with the tensor's rescale factor.
fn sparse_record(
    numel: usize,
    q: QuantParams,
    pruned: ultradelta_qgp::Pruned,
    rate: f64,
    cfg: &CompressConfig,
) -> SparseRecord {
    let scale = rescale_factor(cfg.rescale, cfg.sparsity, rate, cfg.rescale_factor) as f32;
    SparseRecord {
        numel: numel as u64,
        quant: q,
        scale,
        positions: pruned.positions,
        levels: pruned.levels,
    }
}

/// The record of one compressed tensor under `cfg.method`, exactly as the archive stores it (the in-memory
/// result: `apply` decodes the same record from the file through [`Record::add_delta_into`], so the rebuilt
/// weights equal `base + γ·Δ̂` computed from this record bit for bit).
///
/// `rate` is the tensor's sparsity (allocated for UltraDelta, the target for DARE, magnitude and ComPEFT,
/// unused by BitDelta, low-rank and quantization); `shape` gives low-rank its matrix view
/// (`shape[0] × rest`).
///
/// # Errors
/// The kernel's error (non-finite delta, parameter out of range, LAPACK failure).
pub fn compress_tensor_with(
    delta: &[f32],
    name: &str,
    shape: &[usize],
    rate: f64,
    cfg: &CompressConfig,
) -> std::result::Result<Record, baselines::Error> {
    let density = 1.0 - rate;
    Ok(match cfg.method {
        Method::Ultradelta if cfg.quantize => {
            crate::codec::ultradelta_coded(delta, name, rate, cfg)?.0
        }
        Method::Ultradelta => {
            // --no-quant: prune by the DAC groups of the b-bit levels, keep the raw values at fp16.
            let q = QuantParams::fit(delta, cfg.bits)?;
            let mut levels = vec![0u16; delta.len()];
            quantize(delta, &q, &mut levels);
            let seed = tensor_seed(cfg.seed, name);
            let pruned = match cfg.pruning {
                PruningMode::Group => group_prune(&levels, &q, rate, seed),
                PruningMode::Random => random_prune(&levels, &q, rate, seed),
            };
            drop(levels);
            let scale = rescale_factor(cfg.rescale, cfg.sparsity, rate, cfg.rescale_factor) as f32;
            baselines::sparse_f16(delta, pruned.positions, scale)?.into_record()
        }
        Method::Dare => baselines::dare(delta, rate, tensor_seed(cfg.seed, name))?.into_record(),
        Method::Magnitude => baselines::magnitude(delta, density)?.into_record(),
        Method::Bitdelta => baselines::bitdelta(delta)?.into_record(),
        Method::Compeft => baselines::compeft(delta, density, cfg.compeft_alpha)?.into_record(),
        Method::Quant => baselines::quant(delta, cfg.bits)?.into_record(),
        Method::Lowrank => {
            let (rows, cols) = matrix_view(shape);
            baselines::lowrank(delta, rows, cols, cfg.rank)?.into_record()
        }
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
fn uses_rate(m: Method) -> bool {
    matches!(
        m,
        Method::Ultradelta | Method::Dare | Method::Magnitude | Method::Compeft
    )
}

fn new_entry(info: &TensorInfo, policy: Policy) -> TensorEntry {
    TensorEntry::new(info.name.clone(), info.shape.clone(), info.dtype, policy)
}

/// An archive whose records are written and whose γ is still to be decided.
struct Pending {
    method: Method,
    writer: ArchiveWriter,
    report: CompressReport,
    fingerprint: String,
    finetuned: FinetunedInfo,
    params: serde_json::Value,
}

/// Lossless records above this many bytes are not encoded beside the next large lossless tensor's computation
/// (see [`write_records`]).
const LARGE_LOSSLESS: usize = 64 << 20;

/// The run's reusable per-tensor buffers.
#[derive(Default)]
struct Scratch {
    delta: Vec<f32>,
    levels: Vec<u16>,
}

/// Whether pass 2 can quantize straight from the checkpoints' bytes with pass 1's quantizer: UltraDelta with
/// quantized levels and Golomb positions, unless TNGR needs the original Δ.
fn streams_levels(cfg: &CompressConfig, want_trace: bool) -> bool {
    cfg.method == Method::Ultradelta
        && cfg.quantize
        && cfg.positions == crate::config::PositionCodec::Golomb
        && !(want_trace && cfg.tngr.trace_on == TraceOn::Original)
}

/// Stage one of [`write_records`]' pipeline: the index entry and record of one tensor (`None`: dropped), and its
/// nuclear norm when TNGR needs it. `pass` is pass 1's result for a compressed tensor (UltraDelta only).
fn tensor_record_for(
    p: &Prepared<'_>,
    cfg: &CompressConfig,
    plan: &TensorPlan,
    rate: Option<(f64, Option<Tier>)>,
    pass: Option<&TensorScan>,
    want_trace: bool,
    scratch: &mut Scratch,
) -> Result<(TensorEntry, Option<Record>, f64)> {
    let info = &plan.info;
    let name = info.name.as_str();
    let mut entry = new_entry(info, plan.policy);
    let base_view = if plan.policy == Policy::New {
        None
    } else {
        Some(p.base.view(name)?)
    };
    if plan.from == RuleSource::User {
        entry.extra.insert("rule".into(), "user".into());
    }
    let mut trace = 0.0;
    let rec = match plan.policy {
        Policy::Compress => {
            let base_view = base_view.expect("compressed tensors are in the base");
            let (rate, tier) = rate.expect("every compressed tensor has a rate");
            let ft_view = p.ft.view(name)?;
            let numel = info.numel();
            // The base's content hash (one sequential stream) runs beside the record's parallel kernels.
            let (hash, made) = rayon::join(
                || base_view.content_hash(),
                || match pass.filter(|_| streams_levels(cfg, want_trace)) {
                    Some(pass) => {
                        // Levels straight from the bytes (no Δ buffer): the same values `compress_tensor`
                        // quantizes, with the quantizer `QuantParams::fit` gave on them in pass 1.
                        let sparse = with_source(&base_view, &ft_view, |src| {
                            prune_source(src, pass, name, rate, cfg, &mut scratch.levels)
                        })?;
                        let (rec, ci) = crate::codec::ultradelta_from_sparse(sparse, cfg);
                        Ok((rec, Some(ci)))
                    }
                    None => {
                        delta_into(&base_view, &ft_view, &mut scratch.delta)?;
                        crate::codec::tensor_record(&scratch.delta, name, &info.shape, rate, cfg)
                            .map_err(|e| method_err(p.ft, name, e))
                    }
                },
            );
            entry.base_hash = Some(hex(hash));
            let (rec, codec_info) = made?;
            let delta = &scratch.delta;
            if let Some(ci) = codec_info.filter(|_| crate::codec::uses_new_codecs(cfg)) {
                crate::codec::annotate(&mut entry, &ci);
            }
            if want_trace && info.shape.len() >= 2 {
                let rows = info.shape[0];
                let cols = info.numel() / rows.max(1);
                let nn_seed = tensor_seed(cfg.seed, name);
                let method = &cfg.tngr.nuclear_norm;
                trace = match cfg.tngr.trace_on {
                    TraceOn::Original => {
                        nuclear_norm_with(delta, rows, cols, method, nn_seed)?.value
                    }
                    TraceOn::Compressed => {
                        let dense = rec.delta_to_dense(numel, 1.0)?;
                        nuclear_norm_with(&dense, rows, cols, method, nn_seed)?.value
                    }
                };
            }
            if uses_rate(cfg.method) {
                entry.rate = Some(rate);
            }
            entry.tier = tier.map(|t| tier_name(t).to_string());
            Some(rec)
        }
        Policy::Keep => {
            let b = base_view.expect("kept tensors are in the base");
            entry.base_hash = Some(hex(b.content_hash()));
            let f = p.ft.view(name)?.bytes();
            let mut xor = vec![0u8; f.len()];
            xor.par_chunks_mut(1 << 16)
                .zip(f.par_chunks(1 << 16).zip(b.bytes().par_chunks(1 << 16)))
                .for_each(|(o, (f, b))| {
                    for ((o, f), b) in o.iter_mut().zip(f).zip(b) {
                        *o = f ^ b;
                    }
                });
            // The inputs' pages are not needed while the XOR is encoded (large embeddings).
            p.base.release(name);
            p.ft.release(name);
            Some(Record::XorDelta {
                dtype: info.dtype,
                xor_bytes: xor,
            })
        }
        Policy::Drop => {
            entry.base_hash = base_view.map(|v| hex(v.content_hash()));
            None
        }
        Policy::New => Some(Record::Full {
            dtype: info.dtype,
            bytes: p.ft.view(name)?.bytes().to_vec(),
        }),
    };
    Ok((entry, rec, trace))
}

/// Pass 2: writes every record of one fine-tune. Returns the open archive (γ not yet known).
fn write_records(
    p: &Prepared<'_>,
    cfg: &CompressConfig,
    out: &Path,
    overwrite: bool,
    want_trace: bool,
    progress: &dyn Progress,
) -> Result<Pending> {
    progress.note(&format!(
        "{}: tensor selection {}",
        p.ft.path().display(),
        describe_source(p.family, &p.family_source)
    ));
    let solved;
    let (cfg, budget) = match cfg.target_ratio {
        Some(_) => {
            let (c, b) = solve_budget(p, cfg, progress)?;
            solved = c;
            (&solved, Some(b))
        }
        None => (cfg, None),
    };
    let idx = compressed_indices(p);
    let (stats, scans) = if cfg.method == Method::Ultradelta {
        let (s, q) = pass_one(p, cfg, progress)?;
        (Some(s), q)
    } else {
        (None, Vec::new())
    };
    let alloc = rates_for(stats.as_deref(), idx.len(), cfg)?;
    let mut rate_of = vec![None; p.plans.len()];
    let mut scan_of: Vec<Option<&TensorScan>> = vec![None; p.plans.len()];
    for (k, &i) in idx.iter().enumerate() {
        rate_of[i] = Some((alloc.rates[k], alloc.tiers.get(k).copied().flatten()));
        scan_of[i] = scans.get(k);
    }

    let mut writer = ArchiveWriter::create_with(
        out,
        WriterOptions {
            overwrite,
            created_by: concat!("ultradelta ", env!("CARGO_PKG_VERSION")).to_string(),
            zstd_level: cfg.zstd_level,
        },
    )?;
    let total: u64 = p.plans.iter().map(|t| t.info.numel() as u64).sum();
    progress.begin("compressing", total);
    let mut counts = PolicyCounts::default();
    let mut trace = 0f64;
    // Δ (or its quantized levels) of the current compressed tensor; one buffer each for the whole run.
    let mut scratch = Scratch::default();
    // A two-stage pipeline: tensor k's record is computed while tensor k − 1's is encoded and written (Golomb
    // coding, byte shuffling and zstd of lossless records) and its input pages are released. Records are written
    // in plan order, so the archive's bytes do not change; at most two tensors' records are alive.
    let mut ready: Option<(TensorEntry, Option<Record>)> = None;
    for item in p.plans.iter().enumerate().map(Some).chain([None]) {
        // Two large lossless tensors in a row (a LLaMA head and embedding) are not overlapped: encoding one
        // (its XOR and byte-shuffled copies) beside the other's XOR and mapped inputs would hold about five
        // embedding-sized buffers at once.
        let serial = ready.as_ref().is_some_and(|(_, rec)| {
            matches!(rec, Some(Record::XorDelta { xor_bytes: b, .. } | Record::Full { bytes: b, .. })
                if b.len() > LARGE_LOSSLESS)
        }) && item.is_some_and(|(_, plan)| {
            matches!(plan.policy, Policy::Keep | Policy::New) && plan.info.nbytes() > LARGE_LOSSLESS
        });
        let mut write = || -> Result<()> {
            let Some((entry, rec)) = ready.take() else {
                return Ok(());
            };
            let (name, numel) = (entry.name.clone(), entry.numel);
            match rec {
                Some(rec) => {
                    writer.write_tensor(entry, &rec)?;
                }
                None => writer.write_dropped(entry)?,
            }
            // Done with this tensor's input pages (they stay in the page cache): the resident set stays the
            // size of a tensor or two however large the checkpoints are.
            p.base.release(&name);
            p.ft.release(&name);
            progress.advance(numel);
            Ok(())
        };
        let mut compute = || -> Result<Option<(TensorEntry, Option<Record>, f64)>> {
            let Some((i, plan)) = item else {
                return Ok(None);
            };
            // The disk reads the next tensor while this one is computed (when it is not cached already).
            if let Some(next) = p.plans.get(i + 1) {
                p.base.prefetch(&next.info.name);
                p.ft.prefetch(&next.info.name);
            }
            tensor_record_for(
                p,
                cfg,
                plan,
                rate_of[i],
                scan_of[i],
                want_trace,
                &mut scratch,
            )
            .map(Some)
        };
        let (written, next) = if serial {
            let written = write();
            (written, compute())
        } else {
            rayon::join(write, compute)
        };
        written?;
        if let Some((entry, rec, t)) = next? {
            match entry.policy {
                Policy::Compress => counts.compress += 1,
                Policy::Keep => counts.keep += 1,
                Policy::Drop => counts.drop += 1,
                Policy::New => counts.new += 1,
            }
            trace += t;
            ready = Some((entry, rec));
        }
    }
    progress.end();
    for file in p.ft.companion_files() {
        let bytes = std::fs::read(&file).map_err(|source| Error::File {
            path: file.clone(),
            source,
        })?;
        let fname = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        writer.add_file(&fname, &bytes)?;
    }
    let mut params = serde_json::to_value(cfg).expect("config serialises");
    if let serde_json::Value::Object(m) = &mut params {
        m.insert(
            "family".into(),
            serde_json::Value::String(p.family.name().into()),
        );
        m.insert(
            "base_only_tensors".into(),
            serde_json::to_value(&p.base_only).expect("strings"),
        );
        if let Some(b) = &budget {
            m.insert(
                "budget".into(),
                serde_json::to_value(b).expect("budget report serialises"),
            );
        }
    }
    Ok(Pending {
        method: cfg.method,
        writer,
        report: CompressReport {
            output: out.to_path_buf(),
            family: p.family,
            family_source: describe_source(p.family, &p.family_source),
            counts,
            base_only: p.base_only.clone(),
            gamma: 1.0,
            trace_norm: want_trace.then_some(trace),
            archive_bytes: 0,
            method: cfg.method,
            budget,
        },
        fingerprint: p.base.fingerprint(),
        finetuned: FinetunedInfo {
            size_on_disk: p.ft.size_on_disk(),
            metadata: p.ft.metadata().clone(),
            source: p.ft.path().display().to_string(),
        },
        params,
    })
}

impl Pending {
    fn finish(mut self, gamma: f64) -> Result<CompressReport> {
        if let serde_json::Value::Object(m) = &mut self.params {
            m.insert("gamma".into(), serde_json::json!(gamma));
        }
        let path = self.writer.finish(
            self.method.name(),
            self.params,
            gamma,
            &self.fingerprint,
            self.finetuned,
        )?;
        self.report.gamma = gamma;
        self.report.archive_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        self.report.output = path;
        Ok(self.report)
    }
}

/// Compresses one fine-tune against `base` into the archive `output`.
///
/// γ is `cfg.gamma` or 1 (TNGR needs several models, see [`compress_many`]).
/// Refuses to replace an existing `output` unless `overwrite`. On any error nothing
/// is left at `output`.
pub fn compress(
    base: &Checkpoint,
    finetuned: &Checkpoint,
    cfg: &CompressConfig,
    output: &Path,
    overwrite: bool,
    progress: &dyn Progress,
) -> Result<CompressReport> {
    cfg.validate()?;
    let prepared = prepare(base, finetuned, cfg)?;
    let pending = write_records(&prepared, cfg, output, overwrite, false, progress)?;
    pending.finish(cfg.gamma.unwrap_or(1.0))
}

/// γ rounded to 6 significant digits. Trace norms carry the last-bit noise of the BLAS
/// thread count (and the estimator's ~0.25% error); rounding keeps archives byte-identical
/// across machines' thread settings at no cost in fidelity.
fn round_gamma(g: f64) -> f64 {
    if g == 0.0 || !g.is_finite() {
        return g;
    }
    let scale = 10f64.powi(5 - g.abs().log10().floor() as i32);
    (g * scale).round() / scale
}

/// The archive file name `compress_many` uses for a fine-tune at `path`.
pub fn archive_name_for(path: &Path) -> String {
    let stem = if path.is_dir() {
        path.file_name()
    } else {
        // A file: name it after its folder when it is the usual model.safetensors.
        match path.file_stem().and_then(|s| s.to_str()) {
            Some("model") => path.parent().and_then(|d| d.file_name()),
            _ => path.file_stem(),
        }
    };
    let stem = stem
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("finetuned");
    format!("{stem}.udelta")
}

/// Compresses several fine-tunes of one base together into `out_dir`, one archive each,
/// with trace-norm-guided rescaling across them when `cfg.tngr.enabled`: γ_i = T_min / T_i
/// (optionally clamped); otherwise γ = `cfg.gamma` or 1 for all. Archive names come from [`archive_name_for`]
/// (suffixed `-2`, `-3`… on collisions). All records are written before any archive is
/// finished, so a failure on any fine-tune leaves no archive behind.
pub fn compress_many(
    base: &Checkpoint,
    finetuned: &[Checkpoint],
    cfg: &CompressConfig,
    out_dir: &Path,
    overwrite: bool,
    progress: &dyn Progress,
) -> Result<Vec<CompressReport>> {
    cfg.validate()?;
    if finetuned.is_empty() {
        return Err(Error::Config("no fine-tuned checkpoint given".into()));
    }
    std::fs::create_dir_all(out_dir).map_err(|source| Error::File {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = Vec::new();
    for ft in finetuned {
        let base_name = archive_name_for(ft.path());
        let mut name = base_name.clone();
        let mut k = 2;
        while names.contains(&name) {
            name = format!("{}-{k}.udelta", base_name.trim_end_matches(".udelta"));
            k += 1;
        }
        names.push(name);
    }
    let want_trace = cfg.gamma.is_none() && cfg.tngr.enabled;
    let mut pending = Vec::with_capacity(finetuned.len());
    for (ft, name) in finetuned.iter().zip(&names) {
        let prepared = prepare(base, ft, cfg)?;
        pending.push(write_records(
            &prepared,
            cfg,
            &out_dir.join(name),
            overwrite,
            want_trace,
            progress,
        )?);
    }
    let gammas = match cfg.gamma {
        Some(g) => vec![g; pending.len()],
        None if !cfg.tngr.enabled => vec![1.0; pending.len()],
        None => {
            let norms: Vec<f64> = pending
                .iter()
                .map(|p| p.report.trace_norm.unwrap_or(0.0))
                .collect();
            tngr_gammas(&norms, cfg.tngr.clamp)?
                .into_iter()
                .map(round_gamma)
                .collect()
        }
    };
    for (p, g) in pending.iter().zip(&gammas) {
        progress.note(&format!("{}: gamma {:.6}", p.report.output.display(), g));
    }
    pending
        .into_iter()
        .zip(gammas)
        .map(|(p, g)| p.finish(g))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::round_gamma;

    #[test]
    fn gamma_is_rounded_to_six_significant_digits() {
        assert_eq!(round_gamma(1.0), 1.0);
        assert_eq!(round_gamma(0.123456789), 0.123457);
        assert_eq!(round_gamma(0.5000004), 0.5);
        assert_eq!(round_gamma(3.14159265e-3), 3.14159e-3);
        // Last-bit noise from BLAS threading disappears.
        let third = 1.0f64 / 3.0;
        let next = f64::from_bits(third.to_bits() + 1);
        assert_ne!(third, next);
        assert_eq!(round_gamma(third), round_gamma(next));
        assert_eq!(round_gamma(0.0), 0.0);
    }
}
