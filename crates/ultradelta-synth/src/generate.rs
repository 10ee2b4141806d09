//! The value model: per-tensor plans (base distribution, delta scale) and the block generator.

use half::{bf16, f16};
use rayon::prelude::*;
use ultradelta_io::DType;

use crate::math::{self, StreamRole};
use crate::shapes::{arch_specs, Role, Shape, TensorSpec};
use crate::{Error, Result, SynthConfig};

/// Elements per generation block. Every block has its own RNG stream, so the bytes depend only on
/// the block layout (a function of the tensor shape), never on the thread count.
pub const BLOCK_ELEMS: usize = 1 << 15;

/// Rank of the low-rank component of 2-D deltas.
pub const LOW_RANK: usize = 8;

/// Share of a 2-D delta's expected energy carried by the rank-8 component.
pub const LOW_RANK_FRACTION: f64 = 0.3;

/// Standard deviation of base weight matrices and embeddings (and of the noise around 1 in norms).
pub const BASE_WEIGHT_STD: f32 = 0.02;

/// Standard deviation of base biases.
pub const BASE_BIAS_STD: f32 = 0.01;

/// How one tensor is drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorPlan {
    /// The tensor's name, shape, role and layer.
    pub spec: TensorSpec,
    /// Mean of the base values (1.0 for norms, else 0.0).
    pub base_mean: f32,
    /// Standard deviation of the base values around `base_mean`.
    pub base_std: f32,
    /// Per-tensor delta multiplier `2^u`, `u` in [-1, 1]: grows with depth, depends on the kind
    /// of tensor, plus a seeded jitter; so delta std differs by up to 4x across tensors.
    pub delta_multiplier: f64,
    /// Target population std of the f32 delta (fine-tuned − base, before dtype rounding):
    /// `rel_scale · rms(base) · delta_multiplier`.
    pub delta_std: f64,
    /// Share of the delta's energy in the rank-8 component (0.3 for 2-D tensors, else 0).
    pub low_rank_fraction: f64,
    /// Whether the fine-tuned checkpoint has this tensor (false only for `embeddings.position_ids`).
    pub in_finetuned: bool,
}

fn kind_offset(name: &str) -> f64 {
    let has = |needles: &[&str]| needles.iter().any(|n| name.contains(n));
    if has(&["embeddings.", "embed_tokens"]) {
        -0.6
    } else if has(&["lm_head", "pooler"]) {
        0.4
    } else if has(&[".query.", ".key.", "q_proj", "k_proj"]) {
        -0.2
    } else if has(&[".value.", "v_proj", "o_proj", "attention.output.dense"]) {
        0.0
    } else if has(&["intermediate.", "output.dense", "mlp."]) {
        0.2
    } else {
        0.0
    }
}

/// The plan of every tensor of `cfg.shape`, in model order.
pub fn plan(cfg: &SynthConfig) -> Vec<TensorPlan> {
    let arch = cfg.arch();
    let layers = arch.layers();
    arch_specs(arch)
        .into_iter()
        .map(|spec| plan_one(spec, layers, cfg))
        .collect()
}

fn plan_one(spec: TensorSpec, layers: usize, cfg: &SynthConfig) -> TensorPlan {
    let (base_mean, base_std) = match spec.role {
        Role::Weight => (0.0, BASE_WEIGHT_STD),
        Role::Norm => (1.0, BASE_WEIGHT_STD),
        Role::Bias => (0.0, BASE_BIAS_STD),
        Role::PositionIds => (0.0, 0.0),
    };
    let depth = match spec.layer {
        Some(l) if layers > 1 => -0.7 + 1.4 * l as f64 / (layers - 1) as f64,
        _ => 0.0,
    };
    let key = math::derive_key(cfg.delta_seed(), &spec.name, StreamRole::Jitter);
    let jitter = (math::unit_from_u64(u64::from_le_bytes(key[..8].try_into().unwrap_or_default()))
        - 0.5)
        * 0.3;
    let u = (depth + kind_offset(&spec.name) + jitter).clamp(-1.0, 1.0);
    let delta_multiplier = u.exp2();
    let base_rms = (f64::from(base_mean).powi(2) + f64::from(base_std).powi(2)).sqrt();
    let (delta_std, low_rank_fraction) = match spec.role {
        Role::PositionIds => (0.0, 0.0),
        _ => (
            cfg.rel_scale * base_rms * delta_multiplier,
            if spec.shape.len() >= 2 {
                LOW_RANK_FRACTION
            } else {
                0.0
            },
        ),
    };
    let in_finetuned = spec.role != Role::PositionIds;
    TensorPlan {
        spec,
        base_mean,
        base_std,
        delta_multiplier,
        delta_std,
        low_rank_fraction,
        in_finetuned,
    }
}

/// Looks up the plan of `name` in `cfg.shape`.
pub(crate) fn plan_of(cfg: &SynthConfig, name: &str) -> Result<TensorPlan> {
    plan(cfg)
        .into_iter()
        .find(|p| p.spec.name == name)
        .ok_or_else(|| Error::UnknownTensor {
            shape: cfg.shape,
            name: name.to_owned(),
        })
}

/// Everything needed to produce any block of one tensor.
pub(crate) struct Prepared<'a> {
    plan: &'a TensorPlan,
    base_key: [u8; 32],
    noise_key: [u8; 32],
    cols: usize,
    block_elems: usize,
    noise_std: f32,
    /// Low-rank factors: `u` is rows × R (already scaled), `vt` is R × cols.
    low_rank: Option<(Vec<f32>, Vec<f32>)>,
}

impl<'a> Prepared<'a> {
    pub(crate) fn new(plan: &'a TensorPlan, seed: u64, delta_seed: u64) -> Prepared<'a> {
        let name = &plan.spec.name;
        let numel = plan.spec.numel();
        let two_d = plan.spec.shape.len() >= 2 && numel > 0;
        let cols = if two_d {
            numel / plan.spec.shape[0]
        } else {
            numel.max(1)
        };
        let block_elems = if two_d {
            (BLOCK_ELEMS / cols).max(1) * cols
        } else {
            BLOCK_ELEMS
        };
        let noise_std = (plan.delta_std * (1.0 - plan.low_rank_fraction).sqrt()) as f32;
        let low_rank = (two_d && plan.low_rank_fraction > 0.0).then(|| {
            let rows = plan.spec.shape[0];
            let key = math::derive_key(delta_seed, name, StreamRole::LowRank);
            let (mut words, mut bytes) = (Vec::new(), Vec::new());
            let mut u = vec![0f32; rows * LOW_RANK];
            math::fill_normals(
                &mut math::stream_rng(&key, 0),
                &mut u,
                &mut words,
                &mut bytes,
            );
            let a = (plan.delta_std * (plan.low_rank_fraction / LOW_RANK as f64).sqrt()) as f32;
            u.iter_mut().for_each(|x| *x *= a);
            let mut vt = vec![0f32; LOW_RANK * cols];
            math::fill_normals(
                &mut math::stream_rng(&key, 1),
                &mut vt,
                &mut words,
                &mut bytes,
            );
            (u, vt)
        });
        Prepared {
            plan,
            base_key: math::derive_key(seed, name, StreamRole::Base),
            noise_key: math::derive_key(delta_seed, name, StreamRole::Noise),
            cols,
            block_elems,
            noise_std,
            low_rank,
        }
    }

    /// Elements per block (whole rows for 2-D tensors).
    pub(crate) fn block_elems(&self) -> usize {
        self.block_elems
    }

    /// Fills the base values and the f32 delta of block `block` (`base.len() == delta.len()` =
    /// the block's length; the last block may be short).
    pub(crate) fn fill_block(
        &self,
        block: usize,
        base: &mut [f32],
        delta: &mut [f32],
        scratch: &mut Scratch,
    ) {
        debug_assert_eq!(base.len(), delta.len());
        let stream = block as u64;
        math::fill_normals(
            &mut math::stream_rng(&self.base_key, stream),
            base,
            &mut scratch.words,
            &mut scratch.bytes,
        );
        let (mean, std) = (self.plan.base_mean, self.plan.base_std);
        base.iter_mut().for_each(|x| *x = mean + std * *x);

        math::fill_student_t5(
            &mut math::stream_rng(&self.noise_key, stream),
            delta,
            &mut scratch.normals,
            &mut scratch.words,
            &mut scratch.bytes,
        );
        let s = self.noise_std;
        delta.iter_mut().for_each(|x| *x *= s);

        if let Some((u, vt)) = &self.low_rank {
            let cols = self.cols;
            let first_row = block * self.block_elems / cols;
            for (i, row) in delta.chunks_exact_mut(cols).enumerate() {
                let ur = &u[(first_row + i) * LOW_RANK..(first_row + i + 1) * LOW_RANK];
                for (k, &a) in ur.iter().enumerate() {
                    let v = &vt[k * cols..(k + 1) * cols];
                    row.iter_mut().zip(v).for_each(|(d, &x)| *d += a * x);
                }
            }
        }
    }
}

/// Reusable per-thread buffers.
#[derive(Default)]
pub(crate) struct Scratch {
    words: Vec<u32>,
    bytes: Vec<u8>,
    normals: Vec<f32>,
    base: Vec<f32>,
    delta: Vec<f32>,
}

/// Rounds `x` to `dtype` and returns the rounded value as f32 (exact for F32 and F64).
#[inline]
fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::BF16 => bf16::from_f32(x).to_f32(),
        DType::F16 => f16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// Writes `values` as little-endian `dtype` into `out` (`out.len() == values.len() * size`).
fn encode(dtype: DType, values: &[f32], out: &mut [u8]) {
    match dtype {
        DType::BF16 => {
            for (o, &x) in out.chunks_exact_mut(2).zip(values) {
                o.copy_from_slice(&bf16::from_f32(x).to_le_bytes());
            }
        }
        DType::F16 => {
            for (o, &x) in out.chunks_exact_mut(2).zip(values) {
                o.copy_from_slice(&f16::from_f32(x).to_le_bytes());
            }
        }
        DType::F64 => {
            for (o, &x) in out.chunks_exact_mut(8).zip(values) {
                o.copy_from_slice(&f64::from(x).to_le_bytes());
            }
        }
        _ => {
            for (o, &x) in out.chunks_exact_mut(4).zip(values) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
    }
}

/// Produces the stored bytes of one tensor: the base, and (if `finetuned` is given) the fine-tuned
/// tensor `round(round(base) + delta)`. Parallel over blocks; deterministic.
pub(crate) fn render(
    prep: &Prepared<'_>,
    dtype: DType,
    base_out: &mut [u8],
    finetuned: Option<&mut [u8]>,
) {
    let size = dtype.size();
    let chunk = prep.block_elems() * size;
    let work = |scratch: &mut Scratch,
                block: usize,
                base_bytes: &mut [u8],
                ft_bytes: Option<&mut [u8]>| {
        let n = base_bytes.len() / size;
        let mut base = std::mem::take(&mut scratch.base);
        let mut delta = std::mem::take(&mut scratch.delta);
        base.resize(n, 0.0);
        delta.resize(n, 0.0);
        prep.fill_block(block, &mut base, &mut delta, scratch);
        base.iter_mut().for_each(|x| *x = round_to(dtype, *x));
        encode(dtype, &base, base_bytes);
        if let Some(ft_bytes) = ft_bytes {
            delta.iter_mut().zip(&base).for_each(|(d, &b)| *d += b);
            encode(dtype, &delta, ft_bytes);
        }
        scratch.base = base;
        scratch.delta = delta;
    };
    match finetuned {
        Some(ft) => base_out
            .par_chunks_mut(chunk)
            .zip(ft.par_chunks_mut(chunk))
            .enumerate()
            .for_each_init(Scratch::default, |s, (i, (b, f))| work(s, i, b, Some(f))),
        None => base_out
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(Scratch::default, |s, (i, b)| work(s, i, b, None)),
    }
}

/// Fills f32 base values and f32 deltas (before any dtype rounding) of a whole tensor.
pub(crate) fn render_f32(prep: &Prepared<'_>, base: &mut [f32], delta: &mut [f32]) {
    let chunk = prep.block_elems();
    base.par_chunks_mut(chunk)
        .zip(delta.par_chunks_mut(chunk))
        .enumerate()
        .for_each_init(Scratch::default, |s, (i, (b, d))| {
            prep.fill_block(i, b, d, s)
        });
}

/// `embeddings.position_ids`: I64 little-endian `0..n`.
pub(crate) fn position_ids_bytes(numel: usize) -> Vec<u8> {
    (0..numel as i64).flat_map(i64::to_le_bytes).collect()
}

/// The shape a plan belongs to is needed for error messages only.
pub(crate) fn check_dtype(shape: Shape, dtype: DType) -> Result<()> {
    if dtype.is_float() {
        Ok(())
    } else {
        Err(Error::UnsupportedDType { shape, dtype })
    }
}
