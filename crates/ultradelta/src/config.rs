//! The knobs of one compression run.

use serde::{Deserialize, Serialize};
pub use ultradelta_rescale::{EstimateConfig, NuclearNormMethod, RescaleMode, TraceOn};

use crate::selection::Selection;
use crate::{Error, Result};

/// How per-tensor sparsity is allocated (ALGORITHM.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocationMode {
    /// Variance-based mixed sparsity (the paper's MSA): low/mid/high-σ thirds get s+δ, s, remainder.
    Msa,
    /// Every tensor gets the target sparsity.
    Uniform,
}

/// How entries are dropped inside one tensor (ALGORITHM.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PruningMode {
    /// Group-wise stratified pruning (the paper's DAC): exact counts per quantization level.
    Group,
    /// Plain independent random drop (DARE-style), the ablation without DAC.
    Random,
}

/// The compression method (ALGORITHM.md §6): UltraDelta or one of the baselines. Each writes a real archive whose
/// record kind suits it (docs/FORMAT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The paper's pipeline: quantize, MSA, group-wise pruning, rescaling (`sparse-golomb`; `sparse-f16` with
    /// `quantize = false`). Free parameter: `sparsity`.
    #[default]
    Ultradelta,
    /// DARE: drop each entry with probability `sparsity`, survivors × 1/(1 − p), fp16 values (`sparse-f16`).
    Dare,
    /// Magnitude pruning: keep the top `1 − sparsity` fraction by |Δ| per tensor, fp16 values (`sparse-f16`).
    Magnitude,
    /// BitDelta without data: sign × mean |Δ| per tensor (`dense-sign`). No free parameter (~16x).
    Bitdelta,
    /// Truncated SVD at rank `rank` per tensor, fp16 factors (`lowrank-f16`).
    Lowrank,
    /// ComPEFT: top `1 − sparsity` fraction by |Δ|, sign × one magnitude (`sparse-sign`).
    Compeft,
    /// Uniform `bits`-bit quantization of every entry alone (`dense-levels`).
    Quant,
}

impl Method {
    /// Every method, in CLI order.
    pub const ALL: [Method; 7] = [
        Method::Ultradelta,
        Method::Dare,
        Method::Magnitude,
        Method::Bitdelta,
        Method::Lowrank,
        Method::Compeft,
        Method::Quant,
    ];

    /// The name written into the archive's `method` field (kebab-case, as serde writes it).
    pub fn name(self) -> &'static str {
        match self {
            Method::Ultradelta => "ultradelta",
            Method::Dare => "dare",
            Method::Magnitude => "magnitude",
            Method::Bitdelta => "bitdelta",
            Method::Lowrank => "lowrank",
            Method::Compeft => "compeft",
            Method::Quant => "quant",
        }
    }

    /// The method of an archive's `method` field.
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn yes() -> bool {
    true
}

fn default_rank() -> usize {
    8
}

/// Trace-norm-guided rescaling settings (ALGORITHM.md §4b).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TngrConfig {
    /// Apply TNGR across several fine-tunes (off, the default: γ = 1 for every model unless `gamma` is given).
    /// Archives written before this field existed had it on, hence the serde default.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Compute the trace norms on the original or on the compressed deltas (reference code: compressed).
    pub trace_on: TraceOn,
    /// Optional clamp of γ, e.g. `Some((0.5, 1.0))` as the paper's text states.
    pub clamp: Option<(f64, f64)>,
    /// How nuclear norms are computed: exact, estimated, or exact only for small matrices (default).
    #[serde(default)]
    pub nuclear_norm: NuclearNormMethod,
}

impl Default for TngrConfig {
    /// Off: measured on the testbed, TNGR's γᵢ = T_min/Tᵢ shrinks every fine-tune but the smallest and costs
    /// quality (README, "Choosing the defaults"); `CompressConfig::paper()` turns it on.
    fn default() -> Self {
        TngrConfig {
            enabled: false,
            trace_on: TraceOn::Compressed,
            clamp: None,
            nuclear_norm: NuclearNormMethod::Auto,
        }
    }
}

/// Everything that decides what `compress` writes. Serialised into the archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompressConfig {
    /// Compression method.
    #[serde(default)]
    pub method: Method,
    /// Target sparsity s over all compressed tensors, element-weighted (fraction of entries zeroed).
    pub sparsity: f64,
    /// Quantization bit width b.
    pub bits: u8,
    /// MSA step δ.
    pub step: f64,
    /// Seed of every random choice; the same seed gives the same archive bytes.
    pub seed: u64,
    /// γ given by the user; `None` means 1 for one model, TNGR across several.
    pub gamma: Option<f64>,
    /// Extra user multiplier on the rescale factor (default 1).
    pub rescale_factor: f64,
    /// Rescale survivors by the global target (paper) or by each tensor's own rate.
    pub rescale: RescaleMode,
    /// Sparsity allocation.
    pub allocation: AllocationMode,
    /// Pruning inside a tensor.
    pub pruning: PruningMode,
    /// TNGR settings (used when several fine-tunes are compressed together).
    pub tngr: TngrConfig,
    /// Which tensors are compressed, kept or dropped.
    pub selection: Selection,
    /// UltraDelta only: quantize the kept values to `bits` (off: the ablation `--no-quant`, fp16 values, DAC
    /// groups still by the `bits`-bit level each value would have; ALGORITHM.md §3).
    #[serde(default = "yes")]
    pub quantize: bool,
    /// Lowrank only: the rank r of every compressed tensor (capped by its shape).
    #[serde(default = "default_rank")]
    pub rank: usize,
    /// ComPEFT only: the magnitude is `alpha · σ(Δ)` when given, else the mean |Δ| of the kept entries.
    #[serde(default)]
    pub compeft_alpha: Option<f64>,
    /// Byte budget: the method's free parameter is searched so the real ratio vs 16 bits over the compressed
    /// tensors lands within 1% of this (see [`crate::budget`]).
    #[serde(default)]
    pub target_ratio: Option<f64>,
}

impl Default for CompressConfig {
    /// The project's default, chosen by measurement on the testbed (README, "Choosing the defaults"): the paper's
    /// s = 0.97, b = 4, δ = 0.01, MSA + DAC + quantization, but survivors rescaled by each tensor's own rate
    /// 1/(1 − s_t) and no TNGR. [`CompressConfig::paper`] is the paper's exact setting.
    fn default() -> Self {
        CompressConfig {
            method: Method::Ultradelta,
            sparsity: 0.97,
            bits: 4,
            step: 0.01,
            seed: 0,
            gamma: None,
            rescale_factor: 1.0,
            rescale: RescaleMode::PerTensor,
            allocation: AllocationMode::Msa,
            pruning: PruningMode::Group,
            tngr: TngrConfig::default(),
            selection: Selection::default(),
            quantize: true,
            rank: default_rank(),
            compeft_alpha: None,
            target_ratio: None,
        }
    }
}

impl CompressConfig {
    /// The paper's exact configuration (`--preset paper`): UltraDelta, s = 0.97, b = 4, δ = 0.01, global
    /// rescaling, MSA, DAC, quantization, TNGR across models, seed 0.
    pub fn paper() -> Self {
        CompressConfig {
            method: Method::Ultradelta,
            sparsity: 0.97,
            bits: 4,
            step: 0.01,
            seed: 0,
            gamma: None,
            rescale_factor: 1.0,
            rescale: RescaleMode::Global,
            allocation: AllocationMode::Msa,
            pruning: PruningMode::Group,
            tngr: TngrConfig {
                enabled: true,
                trace_on: TraceOn::Compressed,
                clamp: None,
                nuclear_norm: NuclearNormMethod::Auto,
            },
            selection: Selection::default(),
            quantize: true,
            rank: default_rank(),
            compeft_alpha: None,
            target_ratio: None,
        }
    }

    /// Checks every value's range; the message names the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(self.sparsity.is_finite() && (0.0..1.0).contains(&self.sparsity)) {
            return bad(format!("sparsity must be in [0, 1), got {}", self.sparsity));
        }
        let max_rate = ultradelta_alloc::MsaConfig::default().max_rate;
        if self.sparsity > max_rate {
            return bad(format!(
                "sparsity must be at most {}, got {}",
                max_rate, self.sparsity
            ));
        }
        if !(1..=16).contains(&self.bits) {
            return bad(format!("bits must be in 1..=16, got {}", self.bits));
        }
        if !(self.step.is_finite() && self.step >= 0.0 && self.step < 1.0) {
            return bad(format!("step must be in [0, 1), got {}", self.step));
        }
        if !(self.rescale_factor.is_finite() && self.rescale_factor > 0.0) {
            return bad(format!(
                "rescale factor must be a positive number, got {}",
                self.rescale_factor
            ));
        }
        if self.method == Method::Lowrank && self.rank == 0 && self.target_ratio.is_none() {
            return bad("rank must be at least 1".into());
        }
        if let Some(a) = self.compeft_alpha {
            if !(a.is_finite() && a > 0.0) {
                return bad(format!("compeft alpha must be a positive number, got {a}"));
            }
        }
        if let Some(r) = self.target_ratio {
            if !(r.is_finite() && r > 0.0) {
                return bad(format!("target ratio must be a positive number, got {r}"));
            }
        }
        if let Some(g) = self.gamma {
            if !(g.is_finite() && g > 0.0) {
                return bad(format!("gamma must be a positive number, got {g}"));
            }
        }
        if let Some((lo, hi)) = self.tngr.clamp {
            if !(lo.is_finite() && hi.is_finite() && 0.0 < lo && lo <= hi) {
                return bad(format!(
                    "gamma clamp must satisfy 0 < lo <= hi, got [{lo}, {hi}]"
                ));
            }
        }
        Ok(())
    }
}
