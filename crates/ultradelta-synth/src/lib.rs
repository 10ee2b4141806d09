//! Deterministic synthetic base/fine-tune checkpoint pairs with realistic delta statistics, for
//! tests and benchmarks at model sizes no real checkpoint on this machine reaches.
//!
//! This crate owns the *value model* (how base weights and fine-tuning deltas are distributed),
//! the real Hugging Face tensor names and shapes of a few reference models, and streaming a pair of
//! Hugging Face-layout folders to disk through `ultradelta_io::CheckpointWriter`. It knows nothing
//! about compression: it must not depend on the allocation, quantization or archive crates, and it
//! does no file IO of its own beyond creating the output folder.
//!
//! Every value is a function of `(seed, tensor name, element position)` only: each tensor has its
//! own ChaCha8 key, each fixed-size block of a tensor its own stream, and the normal / Student-t
//! transforms are our own, built from IEEE basic operations, so the bytes are identical whatever
//! the rayon thread count (and across platforms).
//!
//! ```no_run
//! use ultradelta_synth::{write_pair, Shape, SynthConfig};
//! use ultradelta_io::DType;
//! let cfg = SynthConfig { dtype: DType::F32, ..SynthConfig::new(Shape::Tiny) };
//! let (base, finetuned) = write_pair("/tmp/pair".as_ref(), &cfg, |done, total| eprintln!("{done}/{total}"))?;
//! # Ok::<(), ultradelta_synth::Error>(())
//! ```

mod generate;
mod math;
mod shapes;
mod write;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use ultradelta_io::DType;

pub use generate::{
    plan, TensorPlan, BASE_BIAS_STD, BASE_WEIGHT_STD, BLOCK_ELEMS, LOW_RANK, LOW_RANK_FRACTION,
};
pub use math::STUDENT_T_DOF;
pub use shapes::{
    arch_config_json, arch_specs, config_json, detailed_specs, parameter_count, tensor_specs, Arch,
    Beit3Dims, BertDims, ClipDims, LlamaDims, Role, Shape, T5Dims, TensorSpec,
};
pub use write::write_pair;

/// Everything that can go wrong while generating or writing a synthetic pair.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A shape name that is not one of [`Shape::ALL`].
    #[error("unknown shape \"{name}\": expected one of tiny, bert-mini, bert-base, roberta-base, clip-vit-b32, beit3-base, t5-base, llama-1b, llama-7b, llama-13b")]
    UnknownShape {
        /// The name given.
        name: String,
    },
    /// A non-float storage dtype was requested.
    #[error("shape {shape}: dtype {} is not a float type: expected F32, F16, BF16 or F64", dtype.name())]
    UnsupportedDType {
        /// The shape being generated.
        shape: Shape,
        /// The dtype requested.
        dtype: DType,
    },
    /// `layers` is zero.
    #[error("layers is 0: expected at least one layer")]
    InvalidLayers,
    /// `rel_scale` is negative, NaN or infinite.
    #[error("rel_scale {value} is invalid: expected a finite number >= 0")]
    InvalidRelScale {
        /// The value given.
        value: f64,
    },
    /// `max_shard_bytes` is zero.
    #[error("max_shard_bytes is 0: expected a positive shard size limit")]
    InvalidShardSize,
    /// No tensor of that name in the shape.
    #[error("shape {shape}: no tensor named \"{name}\"")]
    UnknownTensor {
        /// The shape searched.
        shape: Shape,
        /// The name asked for.
        name: String,
    },
    /// The output folder could not be created.
    #[error("{}: cannot create the output folder: {source}", path.display())]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing a checkpoint failed (the message names the file and tensor).
    #[error(transparent)]
    Io(#[from] ultradelta_io::Error),
    /// The background writer thread panicked.
    #[error("{}: the checkpoint writer thread panicked", path.display())]
    WriterPanicked {
        /// The output folder.
        path: PathBuf,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    /// Which model's tensor set.
    pub shape: Shape,
    /// Storage dtype of the float tensors (F32, F16, BF16 or F64).
    pub dtype: DType,
    /// Global seed; every value is a function of (seed, tensor name, position).
    pub seed: u64,
    /// Delta std relative to the base RMS, before the per-tensor multiplier in [0.5, 2] (default 1e-3).
    pub rel_scale: f64,
    /// Shard size limit handed to the checkpoint writer (default 5 GB).
    pub max_shard_bytes: u64,
    /// Replace existing `base` / `finetuned` folders (default false: fail if they exist).
    pub overwrite: bool,
    /// Seed of the fine-tune's delta when it should differ from `seed` (default `None`: use `seed`).
    /// The base depends on `seed` alone, so pairs with the same `seed` and different `delta_seed`s
    /// are several fine-tunes of one byte-identical base.
    pub delta_seed: Option<u64>,
    /// Layers of every stack when it should differ from the real model's (default `None`: the real
    /// count). Each layer keeps its real tensor names and shapes, so a 2-layer `t5-base` is a small
    /// pair with t5-base's exact per-layer tensor set, for tests and CI.
    pub layers: Option<usize>,
}

impl SynthConfig {
    /// Defaults: BF16, seed 0, `rel_scale` 1e-3, 5 GB shards, no overwrite.
    pub fn new(shape: Shape) -> SynthConfig {
        SynthConfig {
            shape,
            dtype: DType::BF16,
            seed: 0,
            rel_scale: 1e-3,
            max_shard_bytes: 5_000_000_000,
            overwrite: false,
            delta_seed: None,
            layers: None,
        }
    }

    /// The architecture generated: the shape's, with `layers` applied.
    pub fn arch(&self) -> Arch {
        match self.layers {
            Some(n) => self.shape.arch().with_layers(n),
            None => self.shape.arch(),
        }
    }

    /// The seed the delta is generated from: `delta_seed`, or `seed` when it is `None`.
    pub fn delta_seed(&self) -> u64 {
        self.delta_seed.unwrap_or(self.seed)
    }

    /// Checks the dtype, `rel_scale` and shard size.
    pub fn validate(&self) -> Result<()> {
        generate::check_dtype(self.shape, self.dtype)?;
        if !(self.rel_scale.is_finite() && self.rel_scale >= 0.0) {
            return Err(Error::InvalidRelScale {
                value: self.rel_scale,
            });
        }
        if self.max_shard_bytes == 0 {
            return Err(Error::InvalidShardSize);
        }
        if self.layers == Some(0) {
            return Err(Error::InvalidLayers);
        }
        Ok(())
    }

    /// Total bytes of the float tensors of one checkpoint (what each folder's weights weigh, about).
    pub fn checkpoint_bytes(&self) -> u64 {
        generate::plan(self)
            .iter()
            .filter(|p| p.spec.role != Role::PositionIds)
            .map(|p| p.spec.numel() as u64)
            .sum::<u64>()
            * self.dtype.size() as u64
    }
}

/// One tensor's values before dtype rounding.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorValues {
    /// Base values (f32, before rounding to the storage dtype).
    pub base: Vec<f32>,
    /// The f32 delta the fine-tune adds to the rounded base (empty for `embeddings.position_ids`).
    pub delta: Vec<f32>,
}

/// Generates one tensor in memory: base values and f32 delta, before rounding to `cfg.dtype`.
/// Same values `write_pair` uses. `embeddings.position_ids` gives its indices as f32 and no delta.
pub fn generate_values(cfg: &SynthConfig, name: &str) -> Result<TensorValues> {
    cfg.validate()?;
    let plan = generate::plan_of(cfg, name)?;
    let n = plan.spec.numel();
    if plan.spec.role == Role::PositionIds {
        return Ok(TensorValues {
            base: (0..n).map(|i| i as f32).collect(),
            delta: Vec::new(),
        });
    }
    let prep = generate::Prepared::new(&plan, cfg.seed, cfg.delta_seed());
    let mut base = vec![0f32; n];
    let mut delta = vec![0f32; n];
    generate::render_f32(&prep, &mut base, &mut delta);
    Ok(TensorValues { base, delta })
}

/// The exact stored bytes of one tensor: (base, fine-tuned), the latter `None` when only the base
/// has the tensor. Identical to what [`write_pair`] writes.
pub fn tensor_bytes(cfg: &SynthConfig, name: &str) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    cfg.validate()?;
    let plan = generate::plan_of(cfg, name)?;
    let mut base = Vec::new();
    let mut ft = Vec::new();
    render_into(&plan, cfg, &mut base, &mut ft);
    Ok((base, plan.in_finetuned.then_some(ft)))
}

/// Storage dtype of a planned tensor.
pub(crate) fn dtype_of(plan: &TensorPlan, cfg: &SynthConfig) -> DType {
    if plan.spec.role == Role::PositionIds {
        DType::I64
    } else {
        cfg.dtype
    }
}

/// Renders a tensor into reusable buffers (`ft` is left empty when the fine-tune lacks it).
pub(crate) fn render_into(
    plan: &TensorPlan,
    cfg: &SynthConfig,
    base: &mut Vec<u8>,
    ft: &mut Vec<u8>,
) {
    base.clear();
    ft.clear();
    if plan.spec.role == Role::PositionIds {
        base.extend_from_slice(&generate::position_ids_bytes(plan.spec.numel()));
        return;
    }
    let nbytes = plan.spec.numel() * cfg.dtype.size();
    base.resize(nbytes, 0);
    let prep = generate::Prepared::new(plan, cfg.seed, cfg.delta_seed());
    if plan.in_finetuned {
        ft.resize(nbytes, 0);
        generate::render(&prep, cfg.dtype, base, Some(ft));
    } else {
        generate::render(&prep, cfg.dtype, base, None);
    }
}
