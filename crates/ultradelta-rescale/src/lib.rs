//! Rescaling for UltraDelta: 1/(1-s) factors, exact nuclear norms and trace-norm-guided rescaling (TNGR).
//!
//! This crate owns the numbers that scale surviving delta values (ALGORITHM.md §4): the
//! per-tensor `user_factor / (1 - s)` multiplier ([`rescale_factor`]), the exact nuclear norm
//! of a delta matrix ([`nuclear_norm`], with an f64 SVD reference [`nuclear_norm_reference`])
//! and the TNGR coefficients `γ_i = T_min / T_i` ([`tngr_gammas`]). It is IO-free: it takes
//! row-major `f32` slices with their shape and returns numbers. It knows nothing about files,
//! tensor names, quantization or how the caller stores the factors; callers view tensors with
//! more than two dimensions as `(shape[0], product of the rest)` and skip 1-D tensors.

use ndarray::{Array2, ArrayView2};
use ndarray_linalg::{
    layout::{AllocatedArray, AllocatedArrayMut},
    JobSvd, Lapack, SVDDC, UPLO,
};
use serde::{Deserialize, Serialize};

mod estimate;

/// The process-wide OpenBLAS lock every BLAS/LAPACK call of this crate runs under ([`ultradelta_core::blas`]).
pub use ultradelta_core::blas;

pub use estimate::EstimateConfig;

/// Errors of the rescale crate. The caller adds the tensor and file names.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The slice length does not match the declared matrix shape.
    #[error("matrix data has {len} elements, expected {rows} x {cols}")]
    ShapeMismatch {
        /// Elements given.
        len: usize,
        /// Declared rows.
        rows: usize,
        /// Declared columns.
        cols: usize,
    },
    /// The matrix holds a NaN or an infinity.
    #[error("matrix element {index} is {value}, expected a finite number")]
    NonFinite {
        /// Flat index of the first offending element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// LAPACK reported a failure (for example, no convergence).
    #[error("LAPACK {routine} failed on a {rows} x {cols} matrix: {message}")]
    Lapack {
        /// Which computation failed.
        routine: &'static str,
        /// Rows of the input matrix.
        rows: usize,
        /// Columns of the input matrix.
        cols: usize,
        /// LAPACK's message.
        message: String,
    },
    /// A trace norm given to [`tngr_gammas`] is zero, negative or not finite.
    #[error("trace norm of model #{index} is {value}, expected a finite number > 0")]
    InvalidTraceNorm {
        /// Index of the model.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// A field of [`EstimateConfig`] is out of range.
    #[error("nuclear-norm estimate setting {field} = {value} is out of range (counts must be > 0, max-probes >= 2, tolerances in (0, 1))")]
    InvalidEstimateConfig {
        /// The field's name (kebab-case, as in the configuration).
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// The γ clamp range is empty or not finite.
    #[error("gamma clamp [{lo}, {hi}] is not a finite range with 0 < lo <= hi")]
    InvalidClamp {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which sparsity the `1 / (1 - s)` rescale uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RescaleMode {
    /// The global target `s` for every tensor (reference behaviour, the default).
    #[default]
    Global,
    /// Each tensor's own allocated rate `s_t`, which keeps `E[Δ̂] = Δ` per tensor under MSA.
    PerTensor,
}

/// The multiplier stored with a tensor's survivors: `user_factor / (1 - s)`, where `s` is
/// `global_sparsity` ([`RescaleMode::Global`]) or `tensor_rate` ([`RescaleMode::PerTensor`]).
///
/// The chosen `s` must be in `[0, 1)` (the allocation guarantees it); a value `>= 1` yields
/// an infinite or negative factor, so callers validate first.
pub fn rescale_factor(
    mode: RescaleMode,
    global_sparsity: f64,
    tensor_rate: f64,
    user_factor: f64,
) -> f64 {
    let s = match mode {
        RescaleMode::Global => global_sparsity,
        RescaleMode::PerTensor => tensor_rate,
    };
    debug_assert!((0.0..1.0).contains(&s), "sparsity {s} outside [0, 1)");
    user_factor / (1.0 - s)
}

/// Which deltas the TNGR trace norms are computed on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceOn {
    /// The original (uncompressed) deltas, as the paper's figure suggests.
    Original,
    /// The compressed deltas, as the reference code does (the default).
    #[default]
    Compressed,
}

fn check(data: &[f32], rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols) != Some(data.len()) {
        return Err(Error::ShapeMismatch {
            len: data.len(),
            rows,
            cols,
        });
    }
    if let Some((index, &value)) = data.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(Error::NonFinite { index, value });
    }
    Ok(())
}

/// Euclidean norm in f64: the nuclear norm of a single row or column.
fn vector_norm(data: &[f32]) -> f64 {
    data.iter()
        .map(|&x| {
            let x = f64::from(x);
            x * x
        })
        .sum::<f64>()
        .sqrt()
}

/// Eigenvalues (ascending) of the Gram matrix of `a` on its short side, `A·Aᵀ` or `Aᵀ·A`,
/// computed in `T` with BLAS gemm and LAPACK `?syev` (JOBZ = 'N', values only). The caller holds the BLAS lock
/// ([`blas::serialized`]).
fn gram_eigenvalues<T>(a: ArrayView2<'_, T>, rows: usize, cols: usize) -> Result<Vec<T::Real>>
where
    T: Lapack + ndarray::LinalgScalar,
{
    let v = if rows <= cols { a } else { a.t() };
    let mut g: Array2<T> = v.dot(&v.t());
    let lapack = |e: ndarray_linalg::error::LinalgError| Error::Lapack {
        routine: "syev",
        rows,
        cols,
        message: e.to_string(),
    };
    let layout = g.square_layout().map_err(lapack)?;
    let slice = g.as_allocated_mut().map_err(lapack)?;
    <T as Lapack>::eigh(false, layout, UPLO::Lower, slice).map_err(|e| Error::Lapack {
        routine: "syev",
        rows,
        cols,
        message: e.to_string(),
    })
}

/// Sum of `sqrt(max(λ, 0))` in f64.
fn sum_sqrt<I: IntoIterator<Item = f64>>(ev: I) -> f64 {
    ev.into_iter().map(|x| x.max(0.0).sqrt()).sum()
}

/// Exact nuclear norm (sum of singular values) of a row-major `rows × cols` f32 matrix.
///
/// Route (DEPENDENCIES.md §3): the Gram matrix on the short side (`A·Aᵀ` if `rows <= cols`,
/// else `Aᵀ·A`) with OpenBLAS `sgemm`, its eigenvalues only with LAPACK `ssyev` through
/// `<f32 as Lapack>::eigh(false, ..)` (not `eigvalsh`, which computes eigenvectors), and
/// `Σ sqrt(max(λ, 0))` in f64. When the spectrum is numerically low-rank — many eigenvalues
/// near the f32 rounding floor `~ε·λ_max`, whose square roots would inflate the sum; the test
/// is an error estimate, see `needs_f64` in the source — the whole computation is redone in
/// f64 (`dgemm` + `dsyev`, about 2.2× the cost), which is exact in that case too. A single row or column is its Euclidean norm; an empty or
/// all-zero matrix gives 0.
///
/// # Errors
/// [`Error::ShapeMismatch`] if `data.len() != rows * cols`; [`Error::NonFinite`] on NaN or
/// infinity; [`Error::Lapack`] if LAPACK fails.
pub fn nuclear_norm(data: &[f32], rows: usize, cols: usize) -> Result<f64> {
    nuclear_norm_detailed(data, rows, cols).map(|n| n.value)
}

/// A nuclear norm and how it was obtained.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct NuclearNorm {
    /// Sum of the singular values (exact or estimated).
    pub value: f64,
    /// Exact route only: the f32 spectrum looked numerically low-rank and the value was
    /// recomputed in f64 (about 2× the cost).
    pub f64_fallback: bool,
    /// True when the value is an estimate ([`NuclearNormMethod::Estimate`], or `Auto` above
    /// the size threshold).
    pub estimated: bool,
    /// Estimate only: standard error of the Hutchinson part (0 for exact values). The
    /// quadrature error, bounded by `lanczos_tol`, is not included.
    pub std_error: f64,
    /// Estimate only: number of top singular directions deflated.
    pub deflated: usize,
    /// Estimate only: Rademacher probes used.
    pub probes: usize,
    /// Estimate only: the remainder after deflation was numerically zero (the matrix is
    /// exactly low rank, as a merged LoRA delta is); the value is then exact up to rounding.
    pub low_rank: bool,
    /// Estimate only: matrix-vector products with `B` or `Bᵀ` (the cost; the exact route
    /// costs the equivalent of about `2·min(rows, cols)` plus the eigenvalue solve).
    pub matvecs: usize,
}

impl NuclearNorm {
    fn exact(value: f64, f64_fallback: bool) -> NuclearNorm {
        NuclearNorm {
            value,
            f64_fallback,
            estimated: false,
            std_error: 0.0,
            deflated: 0,
            probes: 0,
            low_rank: false,
            matvecs: 0,
        }
    }
}

/// [`nuclear_norm`] that also reports whether the f64 fallback ran (for logs and tests).
///
/// # Errors
/// As [`nuclear_norm`].
pub fn nuclear_norm_detailed(data: &[f32], rows: usize, cols: usize) -> Result<NuclearNorm> {
    blas::serialized(|| nuclear_norm_detailed_locked(data, rows, cols))
}

fn nuclear_norm_detailed_locked(data: &[f32], rows: usize, cols: usize) -> Result<NuclearNorm> {
    check(data, rows, cols)?;
    let done = |value| Ok(NuclearNorm::exact(value, false));
    if rows == 0 || cols == 0 {
        return done(0.0);
    }
    if rows == 1 || cols == 1 {
        return done(vector_norm(data));
    }
    let a = ArrayView2::from_shape((rows, cols), data).map_err(|_| Error::ShapeMismatch {
        len: data.len(),
        rows,
        cols,
    })?;
    let ev = gram_eigenvalues::<f32>(a, rows, cols)?;
    if !needs_f64(&ev) {
        return done(sum_sqrt(ev.into_iter().map(f64::from)));
    }
    let a64: Array2<f64> = a.mapv(f64::from);
    let ev64 = gram_eigenvalues::<f64>(a64.view(), rows, cols)?;
    Ok(NuclearNorm::exact(sum_sqrt(ev64), true))
}

/// How [`nuclear_norm_with`] computes a nuclear norm.
///
/// Serialized in kebab-case: `"exact"`, `"auto"`, or `{"estimate": {..EstimateConfig..}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NuclearNormMethod {
    /// The exact Gram-matrix route of [`nuclear_norm_detailed`].
    Exact,
    /// The randomized estimate: deflation of the top singular directions plus stochastic
    /// Lanczos quadrature of the remainder (within 1% of exact on every delta kind tested).
    Estimate(EstimateConfig),
    /// Whichever route [`auto_estimates`] says is faster at the matrix's shape: the estimate
    /// with the default [`EstimateConfig`], or exact (the default).
    #[default]
    Auto,
}

/// From this short side on, [`NuclearNormMethod::Auto`] estimates every matrix.
pub const AUTO_ESTIMATE_MIN_SHORT_SIDE: usize = 1536;

/// From this short side on, [`NuclearNormMethod::Auto`] estimates elongated matrices (long side at
/// least [`AUTO_ELONGATED_ASPECT`] times the short side).
pub const AUTO_ESTIMATE_MIN_SHORT_SIDE_ELONGATED: usize = 768;

/// Long side over short side from which a matrix counts as elongated for [`auto_estimates`].
pub const AUTO_ELONGATED_ASPECT: f64 = 2.5;

/// Whether [`NuclearNormMethod::Auto`] estimates a `rows × cols` matrix (else it is exact).
///
/// The exact route costs `O(min² · max)` (the Gram product) plus an eigenvalue solve of size
/// `min`; the estimate costs `O(min · max)` per matrix-vector product, and how many products it
/// needs depends on the shape: square matrices have singular values near 0, where `√λ` is hard
/// for Lanczos quadrature, and need 2,900–5,900 products (more probes to reach the 0.25%
/// standard error, longer chains), elongated ones 600–1,000. Measured on the 2-core machine
/// (crate README, `examples/nuclear_norm_speed.rs`): square matrices up to 1024 are 1.6–6.5×
/// faster exact, the two routes are about even at 1536, the estimate is 1.4–1.5× faster at
/// 2048 and 1.3–1.9× at 4096; elongated (MLP-shaped) matrices are about 2× faster estimated
/// at 768×3072, 5× at 1024×2752, 7.5–9× at 2048×5632 and 5–7× at 4096×11008. Below a short
/// side of 768 the exact route takes well under a second and wins at every aspect.
pub fn auto_estimates(rows: usize, cols: usize) -> bool {
    let (short, long) = (rows.min(cols), rows.max(cols));
    short >= AUTO_ESTIMATE_MIN_SHORT_SIDE
        || (short >= AUTO_ESTIMATE_MIN_SHORT_SIDE_ELONGATED
            && long as f64 >= AUTO_ELONGATED_ASPECT * short as f64)
}

/// Nuclear norm of a row-major `rows × cols` f32 matrix by the chosen method.
///
/// `Exact` is [`nuclear_norm_detailed`]. `Estimate` is deterministic given `seed` (every
/// random number comes from ChaCha8 streams derived from it, all reductions are sequential;
/// the BLAS products are the only place the thread count could enter, see the crate README).
/// Matrices too small to be worth estimating (short side at most
/// `2·(deflation_rank + probe_batch)`), single rows or columns and all-zero matrices are
/// computed exactly even under `Estimate`.
///
/// # Errors
/// [`Error::ShapeMismatch`] if `data.len() != rows * cols`; [`Error::NonFinite`] on NaN or
/// infinity; [`Error::InvalidEstimateConfig`] for a bad configuration; [`Error::Lapack`] if
/// LAPACK fails.
pub fn nuclear_norm_with(
    data: &[f32],
    rows: usize,
    cols: usize,
    method: &NuclearNormMethod,
    seed: u64,
) -> Result<NuclearNorm> {
    blas::serialized(|| nuclear_norm_with_locked(data, rows, cols, method, seed))
}

fn nuclear_norm_with_locked(
    data: &[f32],
    rows: usize,
    cols: usize,
    method: &NuclearNormMethod,
    seed: u64,
) -> Result<NuclearNorm> {
    let default_cfg;
    let cfg = match method {
        NuclearNormMethod::Exact => return nuclear_norm_detailed(data, rows, cols),
        NuclearNormMethod::Auto if !auto_estimates(rows, cols) => {
            return nuclear_norm_detailed(data, rows, cols)
        }
        NuclearNormMethod::Auto => {
            default_cfg = EstimateConfig::default();
            &default_cfg
        }
        NuclearNormMethod::Estimate(cfg) => cfg,
    };
    cfg.validate()?;
    check(data, rows, cols)?;
    let short = rows.min(cols);
    if short <= 2 * (cfg.deflation_rank + cfg.probe_batch) || data.iter().all(|&x| x == 0.0) {
        return nuclear_norm_detailed(data, rows, cols);
    }
    let a = ArrayView2::from_shape((rows, cols), data).map_err(|_| Error::ShapeMismatch {
        len: data.len(),
        rows,
        cols,
    })?;
    let b = if rows <= cols { a } else { a.t() };
    estimate::estimate(b, cfg, seed)
}

/// Relative error budget of the f32 path; above it the norm is recomputed in f64.
const F32_ERROR_BUDGET: f64 = 1e-4;

/// Decides whether the f32 spectrum can be trusted.
///
/// Each computed eigenvalue of the f32 Gram matrix may be off by about `e = sqrt(n)·ε_f32·λ_max`
/// (rounding in the Gram product and in `ssyev`); through the square root that moves a term
/// by up to `max(sqrt(λ + e) − sqrt(λ), sqrt(λ) − sqrt(max(λ − e, 0)))` (the farther end of the
/// interval, not half its width: a true eigenvalue of 0 is off by all of `sqrt(λ)`), which is tiny for large eigenvalues but
/// about `sqrt(e)` for the near-zero ones of a numerically low-rank matrix. When the sum of
/// these bounds exceeds [`F32_ERROR_BUDGET`] of the result, the caller redoes it in f64.
/// Measured (with the half-width bound used before; both still stay in f32 with this one): Gaussian 1024² and
/// 1500² matrices estimate ~4e-5 (true error ~5e-8) and stay
/// in f32; rank-16 and rank-128 plus 1% noise estimate 1e-2–7e-2 and fall back (their f32
/// errors were 2e-6 and 8e-5; exactly low-rank matrices are off by ~1% in f32).
fn needs_f64(ev: &[f32]) -> bool {
    let lambda_max = f64::from(ev.iter().cloned().fold(0.0f32, f32::max));
    if lambda_max <= 0.0 {
        return false;
    }
    let e = (ev.len() as f64).sqrt() * f64::from(f32::EPSILON) * lambda_max;
    let (mut total, mut err) = (0.0f64, 0.0f64);
    for &x in ev {
        let x = f64::from(x);
        total += x.max(0.0).sqrt();
        let s = x.max(0.0).sqrt();
        err += ((x + e).max(0.0).sqrt() - s).max(s - (x - e).max(0.0).sqrt());
    }
    err > F32_ERROR_BUDGET * total
}

/// Reference nuclear norm for tests: full f64 SVD (LAPACK `dgesdd`, singular values only).
///
/// # Errors
/// As [`nuclear_norm`].
pub fn nuclear_norm_reference(data: &[f32], rows: usize, cols: usize) -> Result<f64> {
    blas::serialized(|| nuclear_norm_reference_locked(data, rows, cols))
}

fn nuclear_norm_reference_locked(data: &[f32], rows: usize, cols: usize) -> Result<f64> {
    check(data, rows, cols)?;
    if rows == 0 || cols == 0 {
        return Ok(0.0);
    }
    let a: Array2<f64> = ArrayView2::from_shape((rows, cols), data)
        .map_err(|_| Error::ShapeMismatch {
            len: data.len(),
            rows,
            cols,
        })?
        .mapv(f64::from);
    let (_, s, _) = a.svddc(JobSvd::None).map_err(|e| Error::Lapack {
        routine: "gesdd",
        rows,
        cols,
        message: e.to_string(),
    })?;
    Ok(s.iter().sum())
}

/// TNGR coefficients (reference behaviour): `γ_i = T_min / T_i` over the models compressed
/// together, optionally clamped to `[lo, hi]`. One model gives `[1.0]`; no model gives `[]`.
///
/// # Errors
/// [`Error::InvalidTraceNorm`] if a norm is zero, negative or not finite;
/// [`Error::InvalidClamp`] unless `0 < lo <= hi` and both are finite.
pub fn tngr_gammas(trace_norms: &[f64], clamp: Option<(f64, f64)>) -> Result<Vec<f64>> {
    if let Some((lo, hi)) = clamp {
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            return Err(Error::InvalidClamp { lo, hi });
        }
    }
    if let Some((index, &value)) = trace_norms
        .iter()
        .enumerate()
        .find(|(_, &t)| !(t.is_finite() && t > 0.0))
    {
        return Err(Error::InvalidTraceNorm { index, value });
    }
    let t_min = trace_norms.iter().cloned().fold(f64::INFINITY, f64::min);
    Ok(trace_norms
        .iter()
        .map(|&t| {
            let g = t_min / t;
            match clamp {
                Some((lo, hi)) => g.clamp(lo, hi),
                None => g,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod estimate_tests;
