//! # UltraDelta: data-free delta compression of fine-tuned models
//!
//! This facade crate owns the pipeline: it matches a fine-tuned checkpoint against its
//! base, decides which tensors are compressed, runs the three components of the method
//! (variance-based mixed sparsity, quantize-then-group-wise pruning, rescaling), and
//! writes an archive whose size on disk is the ratio it claims; then it rebuilds the
//! fine-tuned model from the base and that archive. It re-exports each member crate as a
//! module, so one dependency gives the whole toolkit:
//!
//! | module | crate | owns |
//! |---|---|---|
//! | [`io`] | `ultradelta-io` | memory-mapped safetensors checkpoints, pairing, streaming writer |
//! | [`alloc`] | `ultradelta-alloc` | per-tensor sparsity (MSA, uniform) |
//! | [`qgp`] | `ultradelta-qgp` | b-bit quantization, stratified (DAC) and random pruning, the seeded RNG |
//! | [`rescale`] | `ultradelta-rescale` | 1/(1−s) factors, nuclear norms, TNGR γ |
//! | [`archive`] | `ultradelta-archive` | the file format (docs/FORMAT.md) |
//!
//! The algorithm is specified in the repository's `docs/ALGORITHM.md` summary and the
//! paper "Breaking the Compression Ceiling" (NeurIPS 2025).
//!
//! ## The high-level API: configure → compress → write; read → apply
//!
//! ```
//! use ultradelta::{compress, apply, inspect, CompressConfig, ApplyOptions, NoProgress};
//! use ultradelta::io::{Checkpoint, DType};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let cfg = ultradelta_synth::SynthConfig { dtype: DType::F32, ..ultradelta_synth::SynthConfig::new(ultradelta_synth::Shape::Tiny) };
//! # let (base_dir, ft_dir) = ultradelta_synth::write_pair(dir.path(), &cfg, |_, _| {})?;
//! // A base checkpoint and one fine-tune of it (files, folders or sharded folders).
//! let base = Checkpoint::open(&base_dir)?;
//! let finetuned = Checkpoint::open(&ft_dir)?;
//!
//! // 97% sparsity (the project's default; `CompressConfig::paper()` is the paper's exact setting); the bits and
//! // the levels' placement left to the model family (`bits: Some(4)` fixes them).
//! let config = CompressConfig { sparsity: 0.97, bits: None, ..CompressConfig::default() };
//! let archive = dir.path().join("ft.udelta");
//! let report = compress(&base, &finetuned, &config, &archive, false, &NoProgress)?;
//! println!("{} tensors compressed, {} bytes", report.counts.compress, report.archive_bytes);
//!
//! // What it holds and what it costs.
//! let summary = inspect(&ultradelta::archive::ArchiveReader::open(&archive)?);
//! assert!(summary.ratio.real.unwrap() > 40.0);
//!
//! // Rebuild the fine-tuned model from the base and the archive.
//! let rebuilt = apply(&base, &archive, &dir.path().join("rebuilt"), &ApplyOptions::default(), &NoProgress)?;
//! assert!(Checkpoint::open(&rebuilt)?.info("encoder.layer.0.attention.self.query.weight").is_some());
//! # Ok(()) }
//! ```
//!
//! ## The components, one step at a time
//!
//! Each step is a plain function on slices, usable without the pipeline (for ablations or
//! another file format). This is what [`compress_tensor`] and [`apply`] do for one tensor (with the default
//! codecs):
//!
//! ```
//! use ultradelta::{alloc, qgp, rescale, archive};
//! use ultradelta::qgp::Quantizer; // QuantParams::fit
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Two tensors' deltas (fine-tuned − base), here made up.
//! let deltas: Vec<Vec<f32>> = vec![
//!     (0..4096).map(|i| ((i * 7919 % 997) as f32 - 498.0) * 1e-6).collect(),
//!     (0..8192).map(|i| ((i * 104729 % 991) as f32 - 495.0) * 4e-6).collect(),
//! ];
//! // 1. Quantize each delta to 4 bits and measure the spread of the quantized values.
//! let mut quantized = Vec::new();
//! let mut stats = Vec::new();
//! for d in &deltas {
//!     let q = qgp::QuantParams::fit(d, 4)?;
//!     let mut levels = vec![0u16; d.len()];
//!     qgp::quantize(d, &q, &mut levels);
//!     stats.push(alloc::TensorStat { numel: d.len() as u64, std: qgp::quantized_std(&levels, &q) });
//!     quantized.push((q, levels));
//! }
//! // 2. Allocate sparsity by variance (the element-weighted mean stays 0.97).
//! let a = alloc::msa(&stats, 0.97, &alloc::MsaConfig::default())?;
//! assert!((a.weighted_mean(&stats) - 0.97).abs() < 1e-9);
//! // 3. Group-wise prune every tensor at its rate, 4. rescale by 1/(1 − s).
//! for (i, (q, levels)) in quantized.iter().enumerate() {
//!     let kept = qgp::group_prune(levels, q, a.rates[i], qgp::tensor_seed(0, &format!("t{i}")));
//!     let scale = rescale::rescale_factor(rescale::RescaleMode::Global, 0.97, a.rates[i], 1.0) as f32;
//!     let record = archive::SparseRecord {
//!         numel: levels.len() as u64, quant: *q, scale,
//!         positions: kept.positions, levels: kept.levels,
//!     };
//!     // 5. The dense Δ̂ that apply adds to the base weights (γ = 1 for one model).
//!     let approx = record.to_dense(1.0);
//!     assert_eq!(approx.len(), deltas[i].len());
//! }
//! # Ok(()) }
//! ```
//!
//! Several fine-tunes of one base are compressed together with [`compress_many`], which
//! applies trace-norm-guided rescaling (γᵢ = T_min / Tᵢ) across them when `tngr.enabled` (the paper's
//! setting; off by default, measured to cost quality on the testbed).
//!
//! ## Baselines, ablations and byte budgets
//!
//! [`CompressConfig::method`] selects UltraDelta or a baseline ([`Method`]: DARE, magnitude pruning, data-free
//! BitDelta, truncated-SVD low rank, ComPEFT, quantization alone; kernels in [`baselines`]). Every method writes
//! a real archive (its own record kind, docs/FORMAT.md) that [`apply`] rebuilds through one decoding path,
//! [`archive::Record::add_delta_into`]; [`compress_tensor`] gives the same record in memory. The ablations
//! are fields: `allocation` (MSA), `pruning` (DAC), `quantize`, `tngr.enabled`, `rescale`.
//! [`CompressConfig::paper`] is the paper's exact setting ([`Preset::Paper`]; [`Preset::apply_to`] lays it over
//! a configuration, keeping the seed, selection and storage codecs). With `target_ratio: Some(r)` the method's free
//! parameter (sparsity, rank or bits) is searched so the real ratio over the compressed tensors is at least `r`;
//! with `target_size: Some(bytes)` so the whole archive file takes at most `bytes` ([`budget`]; both are ceilings,
//! and sparsity lands within 1 % of them); [`export_lora`] writes a `lowrank` archive as a PEFT LoRA adapter.
//!
//! ## Codecs past the paper's count
//!
//! For UltraDelta with quantized levels, [`CompressConfig::positions`] ([`PositionCodec::Seeded`]: positions
//! drawn from a seed and regenerated by the reader, none stored), [`CompressConfig::values`]
//! ([`ValueCodec::Entropy`]: rANS-coded levels) and [`CompressConfig::codec`] ([`CodecChoice::Auto`]: per tensor
//! the smaller levels coding of the same kept entries) select record kinds 10–12. With a byte budget
//! the bits they save buy density; [`inspect`]'s [`CodecSummary`] splits the bits per kept entry into position
//! and value bits.
//!
//! ## How a compression run is organised
//!
//! Three layers, each calling only the ones below it. The *plan* decides everything before a record is made:
//! pairing base and fine-tune, each tensor's policy ([`selection`]), pass 1 (UltraDelta's per-tensor quantizer,
//! level histograms and σ) and the per-tensor rates ([`alloc`]). The *method dispatch*, [`compress_tensor`], turns
//! one tensor's Δ into its record for every method and codec (UltraDelta's quantize → prune → rescale is
//! written once). The *pipeline*, [`compress`] and [`compress_many`], runs pass 2: it streams each tensor's
//! record into the archive in plan order, then γ (TNGR across fine-tunes) finishes it. The byte-budget search
//! ([`budget`]) runs the plan and the method dispatch without writing.
//!
//! ## Guarantees
//! - Same inputs, configuration and seed give the same archive bytes, whatever the number
//!   of threads.
//! - Writers never leave a half-written file or folder: output appears by atomic rename.
//! - Every error is one line naming the file and tensor involved. [`enum@Error`] has one variant per cause;
//!   configuration errors ([`Error::InvalidConfig`]) name the [`CompressConfig`] field to change (a front end
//!   adds its own spelling: the CLI names the flag).

pub use ultradelta_alloc as alloc;
pub use ultradelta_archive as archive;
pub use ultradelta_baselines as baselines;
pub use ultradelta_io as io;
pub use ultradelta_qgp as qgp;
pub use ultradelta_rescale as rescale;

mod apply;
mod baseline_records;
pub mod budget;
mod companions;
mod config;
mod delta;
mod error;
mod evaluate;
pub mod guard;
mod inspect;
mod lora;
mod method;
mod pipeline;
mod plan;
mod progress;
pub mod selection;
#[cfg(test)]
mod test_pairs;
mod verify;

pub use apply::{
    apply, check_base, check_companion_names, check_entry_against_base, rebuild_tensor,
    rebuild_tensor_into, ApplyOptions,
};
pub use budget::{BudgetReport, BUDGET_TOLERANCE};
pub use companions::{check_base_files, read_companion};
pub use config::{
    AllocationMode, CodecChoice, CompressConfig, EstimateConfig, Method, NuclearNormMethod,
    PositionCodec, Preset, PruningMode, QuantFit, RescaleMode, TngrConfig, TraceOn, ValueCodec,
    DEFAULT_SEED_TRIALS, DEFAULT_TIER_SPREAD,
};
pub use error::{Error, Result, TensorMismatch};
pub use evaluate::{eval, EvalReport, Fidelity, TensorEval};
pub use inspect::{codec_summary, inspect, CodecSummary, Inspection, Ratios, TensorSummary};
pub use lora::export_lora;
pub use method::{compress_tensor, matrix_view, CompressedTensor, TensorCodecInfo};
pub use pipeline::{archive_name_for, compress, compress_many, CompressReport, PolicyCounts};
pub use progress::{open_checkpoint, NoProgress, Progress};
pub use selection::{detect_family, EmbeddingPolicy, Family, FamilySource, Selection};
pub use verify::{verify, verify_failure, VerifyFailure, VerifyReport};
