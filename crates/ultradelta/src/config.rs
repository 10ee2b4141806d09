//! The knobs of one compression run.

use serde::{Deserialize, Serialize};
pub use ultradelta_rescale::{RescaleMode, TraceOn};

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

/// Trace-norm-guided rescaling settings (ALGORITHM.md §4b).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TngrConfig {
    /// Compute the trace norms on the original or on the compressed deltas (reference code: compressed).
    pub trace_on: TraceOn,
    /// Optional clamp of γ, e.g. `Some((0.5, 1.0))` as the paper's text states.
    pub clamp: Option<(f64, f64)>,
}

impl Default for TngrConfig {
    fn default() -> Self {
        TngrConfig { trace_on: TraceOn::Compressed, clamp: None }
    }
}

/// Everything that decides what `compress` writes. Serialised into the archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompressConfig {
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
}

impl Default for CompressConfig {
    /// The paper's headline setting: s = 0.97, b = 4, δ = 0.01, global rescaling, MSA + DAC.
    fn default() -> Self {
        CompressConfig {
            sparsity: 0.97,
            bits: 4,
            step: 0.01,
            seed: 0,
            gamma: None,
            rescale_factor: 1.0,
            rescale: RescaleMode::Global,
            allocation: AllocationMode::Msa,
            pruning: PruningMode::Group,
            tngr: TngrConfig::default(),
            selection: Selection::default(),
        }
    }
}

impl CompressConfig {
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
                max_rate,
                self.sparsity
            ));
        }
        if !(1..=16).contains(&self.bits) {
            return bad(format!("bits must be in 1..=16, got {}", self.bits));
        }
        if !(self.step.is_finite() && self.step >= 0.0 && self.step < 1.0) {
            return bad(format!("step must be in [0, 1), got {}", self.step));
        }
        if !(self.rescale_factor.is_finite() && self.rescale_factor > 0.0) {
            return bad(format!("rescale factor must be a positive number, got {}", self.rescale_factor));
        }
        if let Some(g) = self.gamma {
            if !(g.is_finite() && g > 0.0) {
                return bad(format!("gamma must be a positive number, got {g}"));
            }
        }
        if let Some((lo, hi)) = self.tngr.clamp {
            if !(lo.is_finite() && hi.is_finite() && 0.0 < lo && lo <= hi) {
                return bad(format!("gamma clamp must satisfy 0 < lo <= hi, got [{lo}, {hi}]"));
            }
        }
        Ok(())
    }
}
