//! Baseline delta-compression kernels for comparison and ablation (ALGORITHM.md §6), each turning one tensor's
//! delta Δ = θ_finetuned − θ_base (an f32 slice) into a plain result ([`SparseValues`], [`Signs`], [`LowRank`],
//! [`DenseLevels`]) that the facade stores as the archive record named below, field for field. This crate must not
//! know the archive format (it does not depend on `ultradelta-archive`; the decoding formula of each result is
//! its record kind's, in the archive crate):
//!
//! | function | method | result | record kind |
//! |---|---|---|
//! | [`dare`] | DARE: Bernoulli drop with probability p, survivors × 1/(1 − p) | [`SparseValues`] | `sparse-f16` |
//! | [`magnitude`] | magnitude pruning (TIES "trim"): top-k by \|Δ\| | [`SparseValues`] | `sparse-f16` |
//! | [`bitdelta`] | BitDelta without data: sign(Δ) × mean \|Δ\| | [`Signs`] | `dense-sign` |
//! | [`compeft`] | ComPEFT: top-k by \|Δ\|, sign × one magnitude | [`Signs`] | `sparse-sign` |
//! | [`quant`] | uniform b-bit quantization alone | [`DenseLevels`] | `dense-levels` |
//! | [`lowrank`] | truncated SVD at rank r | [`LowRank`] | `lowrank-f16` |
//! | [`sparse_f16`] | any kept positions with their raw values (UltraDelta without quantization) | [`SparseValues`] | `sparse-f16` |
//!
//! No IO: slices in, plain results out. Every kernel is deterministic (the same input and seed give the same result,
//! whatever the rayon thread count). fp16 values are stored relative to a power-of-two scale chosen so the
//! largest magnitude sits near 2¹⁴, which keeps tiny deltas (~10⁻⁵, subnormal in fp16) at full fp16 precision;
//! the scale is a power of two, so dividing by it is exact.

use half::f16;
use ndarray::Array2;
use ndarray_linalg::{JobSvd, SVDDC};
use rayon::prelude::*;
use ultradelta_qgp::rng::{mix, DetRng};
use ultradelta_qgp::{quantize, QuantParams, Quantizer};

mod small;

/// Kept positions with fp16 values and one scale (DARE, magnitude pruning, UltraDelta without quantization): the
/// value at `positions[i]` is `f32(values[i]) · scale`, every other entry zero. Stored as a `sparse-f16` record.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseValues {
    /// Entries of the dense tensor.
    pub numel: u64,
    /// Multiplier of every stored value (e.g. DARE's 1/(1 − p), times the fp16 normalisation).
    pub scale: f32,
    /// Kept positions, strictly increasing, below `numel`.
    pub positions: Vec<u64>,
    /// Value of each kept position.
    pub values: Vec<f16>,
}

/// Signs times one magnitude: kept positions and their signs (ComPEFT), or a sign for every entry (BitDelta,
/// `positions` is `None`). Stored as a `sparse-sign` or `dense-sign` record.
#[derive(Clone, Debug, PartialEq)]
pub struct Signs {
    /// Entries of the dense tensor.
    pub numel: u64,
    /// The one magnitude.
    pub magnitude: f32,
    /// Kept positions (strictly increasing, below `numel`), or `None` when every entry is kept.
    pub positions: Option<Vec<u64>>,
    /// Sign of each kept entry (`true` = negative).
    pub negative: Vec<bool>,
}

/// Low-rank fp16 factors: Δ̂ = scale · U·V with U `rows × rank`, V `rank × cols`, row-major. Stored as a
/// `lowrank-f16` record.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRank {
    /// Rows of the matrix view.
    pub rows: u64,
    /// Columns of the matrix view.
    pub cols: u64,
    /// Rank `r <= min(rows, cols)`.
    pub rank: u64,
    /// `rows × rank`, row-major.
    pub u: Vec<f16>,
    /// `rank × cols`, row-major.
    pub v: Vec<f16>,
    /// Multiplier of every product.
    pub scale: f32,
}

/// Every entry's quantization level (quantization alone). Stored as a `dense-levels` record.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseLevels {
    /// Quantizer.
    pub quant: QuantParams,
    /// Multiplier of every dequantized value.
    pub scale: f32,
    /// One level per entry.
    pub levels: Vec<u16>,
}

/// Errors of the baseline kernels.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The delta has a NaN or an infinity.
    #[error("delta entry {index} is not finite ({value})")]
    NonFinite {
        /// Flat index of the first bad entry.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// A parameter is out of range.
    #[error("invalid parameter: {0}")]
    Parameter(String),
    /// Quantization failed.
    #[error(transparent)]
    Quant(#[from] ultradelta_qgp::Error),
    /// LAPACK failed in the SVD.
    #[error("SVD of a {rows}x{cols} delta failed: {detail}")]
    Svd {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// LAPACK's message.
        detail: String,
    },
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Block length of [`dare`]'s random streams (block `b` uses its own stream, so results ignore thread count).
pub const DARE_BLOCK: usize = 1 << 16;
const DARE_DOMAIN: u64 = 0x4241_5345_4441_5245; // "BASEDARE"

fn check_finite(delta: &[f32]) -> Result<()> {
    match delta.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(Error::NonFinite {
            index,
            value: delta[index],
        }),
        None => Ok(()),
    }
}

fn check_fraction(name: &str, x: f64) -> Result<()> {
    if x.is_finite() && (0.0..=1.0).contains(&x) {
        Ok(())
    } else {
        Err(Error::Parameter(format!(
            "{name} must be in [0, 1], got {x}"
        )))
    }
}

/// The power of two `2^e` such that `max_abs / 2^e` lies in `[2^13, 2^14)` (1 for `max_abs == 0`).
pub fn f16_norm(max_abs: f32) -> f32 {
    if max_abs == 0.0 || !max_abs.is_finite() {
        return 1.0;
    }
    let e = max_abs.log2().floor() as i32 - 13;
    2f32.powi(e.clamp(-126, 127))
}

/// Stores `values` at fp16 relative to [`f16_norm`] of their largest magnitude; returns the values and the norm.
fn to_f16(values: impl Iterator<Item = f32> + Clone) -> (Vec<f16>, f32) {
    let max = values.clone().fold(0f32, |m, x| m.max(x.abs()));
    let norm = f16_norm(max);
    (values.map(|x| f16::from_f32(x / norm)).collect(), norm)
}

/// A [`SparseValues`] (`sparse-f16`) of `delta`'s values at `positions` (strictly increasing), times `scale`.
///
/// # Errors
/// [`Error::NonFinite`]; [`Error::Parameter`] for a non-finite scale or a position out of range.
pub fn sparse_f16(delta: &[f32], positions: Vec<u64>, scale: f32) -> Result<SparseValues> {
    check_finite(delta)?;
    if !scale.is_finite() {
        return Err(Error::Parameter(format!(
            "scale must be finite, got {scale}"
        )));
    }
    if positions.iter().any(|&p| p >= delta.len() as u64) {
        return Err(Error::Parameter("position beyond the delta".into()));
    }
    let (values, norm) = to_f16(positions.iter().map(|&p| delta[p as usize]));
    Ok(SparseValues {
        numel: delta.len() as u64,
        scale: scale * norm,
        positions,
        values,
    })
}

/// The positions DARE keeps at drop probability `p`: entry `i` of block `b` draws `u` from
/// `DetRng::new(mix(mix(seed, DOMAIN), b))` and is kept iff `u >= p`. Exact zeros are never kept. The kept set
/// shrinks monotonically as `p` grows (the same draws are compared with a larger threshold).
pub fn dare_positions(delta: &[f32], p: f64, seed: u64) -> Vec<u64> {
    let stream = mix(seed, DARE_DOMAIN);
    let parts: Vec<Vec<u64>> = delta
        .par_chunks(DARE_BLOCK)
        .enumerate()
        .map(|(b, chunk)| {
            let mut rng = DetRng::new(mix(stream, b as u64));
            let base = (b * DARE_BLOCK) as u64;
            let mut out = Vec::new();
            for (i, &x) in chunk.iter().enumerate() {
                if rng.unit_f64() >= p && x != 0.0 {
                    out.push(base + i as u64);
                }
            }
            out
        })
        .collect();
    parts.concat()
}

/// DARE: drop each entry with probability `p`, rescale survivors by `1/(1 − p)` (stored in the result's scale,
/// the values themselves are Δ at fp16).
///
/// # Errors
/// [`Error::NonFinite`]; [`Error::Parameter`] unless `0 <= p < 1`.
pub fn dare(delta: &[f32], p: f64, seed: u64) -> Result<SparseValues> {
    check_fraction("drop probability", p)?;
    if p >= 1.0 {
        return Err(Error::Parameter("drop probability must be below 1".into()));
    }
    check_finite(delta)?;
    sparse_f16(
        delta,
        dare_positions(delta, p, seed),
        (1.0 / (1.0 - p)) as f32,
    )
}

/// Number of entries kept at `density`: `round(density · n)`.
pub fn kept_count(n: usize, density: f64) -> usize {
    ((density * n as f64).round() as usize).min(n)
}

/// The `k` positions of largest `|Δ|` (ties: the lower index wins), in increasing order.
pub fn top_k_positions(delta: &[f32], k: usize) -> Vec<u64> {
    let k = k.min(delta.len());
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..delta.len() as u32).collect();
    // A total order (magnitude descending, then index ascending): the selected set is unique.
    let cmp = |a: &u32, b: &u32| {
        delta[*b as usize]
            .abs()
            .total_cmp(&delta[*a as usize].abs())
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    let mut out: Vec<u64> = idx[..k].iter().map(|&i| u64::from(i)).collect();
    out.sort_unstable();
    out
}

fn check_u32(delta: &[f32]) -> Result<()> {
    if delta.len() > u32::MAX as usize {
        return Err(Error::Parameter(format!(
            "{} entries (top-k supports up to 2^32)",
            delta.len()
        )));
    }
    Ok(())
}

/// Magnitude pruning: keep the `round(density · n)` entries of largest `|Δ|`, values at fp16, no rescaling.
///
/// # Errors
/// [`Error::NonFinite`]; [`Error::Parameter`] unless `0 <= density <= 1`.
pub fn magnitude(delta: &[f32], density: f64) -> Result<SparseValues> {
    check_fraction("density", density)?;
    check_finite(delta)?;
    check_u32(delta)?;
    sparse_f16(
        delta,
        top_k_positions(delta, kept_count(delta.len(), density)),
        1.0,
    )
}

/// BitDelta without data: `sign(Δ)` (0 counts as positive) times one scale, the mean `|Δ|` (the paper distils
/// the scale on data; this data-free variant does not).
///
/// # Errors
/// [`Error::NonFinite`].
pub fn bitdelta(delta: &[f32]) -> Result<Signs> {
    check_finite(delta)?;
    let sum: f64 = delta.iter().map(|x| f64::from(x.abs())).sum();
    let magnitude = if delta.is_empty() {
        0.0
    } else {
        (sum / delta.len() as f64) as f32
    };
    Ok(Signs {
        numel: delta.len() as u64,
        magnitude,
        positions: None,
        negative: delta.iter().map(|&x| x < 0.0).collect(),
    })
}

/// ComPEFT (data-free): keep the top `round(density · n)` entries by `|Δ|`, store their signs and one magnitude:
/// `alpha · σ(Δ)` when `alpha` is given (σ the standard deviation of all of Δ, as in ComPEFT), otherwise the mean
/// `|Δ|` of the kept entries (the magnitude that minimises the squared error for the chosen signs and support).
///
/// # Errors
/// [`Error::NonFinite`]; [`Error::Parameter`] unless `0 <= density <= 1` and `alpha` is finite and positive.
pub fn compeft(delta: &[f32], density: f64, alpha: Option<f64>) -> Result<Signs> {
    check_fraction("density", density)?;
    check_finite(delta)?;
    check_u32(delta)?;
    let positions = top_k_positions(delta, kept_count(delta.len(), density));
    let magnitude = match alpha {
        Some(a) if !(a.is_finite() && a > 0.0) => {
            return Err(Error::Parameter(format!("alpha must be positive, got {a}")));
        }
        Some(a) => {
            let n = delta.len().max(1) as f64;
            let mean = delta.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
            let var = delta
                .iter()
                .map(|&x| (f64::from(x) - mean).powi(2))
                .sum::<f64>()
                / n;
            (a * var.sqrt()) as f32
        }
        None if positions.is_empty() => 0.0,
        None => {
            let s: f64 = positions
                .iter()
                .map(|&p| f64::from(delta[p as usize].abs()))
                .sum();
            (s / positions.len() as f64) as f32
        }
    };
    let negative = positions.iter().map(|&p| delta[p as usize] < 0.0).collect();
    Ok(Signs {
        numel: delta.len() as u64,
        magnitude,
        positions: Some(positions),
        negative,
    })
}

/// Uniform `bits`-bit quantization of every entry (ALGORITHM.md §1), no pruning, no rescaling.
///
/// # Errors
/// [`Error::Quant`] for bits outside 1..=16 or non-finite entries.
pub fn quant(delta: &[f32], bits: u8) -> Result<DenseLevels> {
    let q = QuantParams::fit(delta, bits)?;
    let mut levels = vec![0u16; delta.len()];
    quantize(delta, &q, &mut levels);
    Ok(DenseLevels {
        quant: q,
        scale: 1.0,
        levels,
    })
}

/// A finite `rows × cols` matrix of `delta.len()` entries.
fn check_matrix(delta: &[f32], rows: usize, cols: usize) -> Result<()> {
    check_finite(delta)?;
    if rows.checked_mul(cols) != Some(delta.len()) {
        return Err(Error::Parameter(format!(
            "{rows}x{cols} does not match {} entries",
            delta.len()
        )));
    }
    Ok(())
}

/// Truncated SVD at rank `min(rank, rows, cols)`: Δ (row-major `rows × cols`) ≈ U_r·diag(S_r)·V_rᵀ, stored as
/// fp16 factors `U_r·diag(√S_r)` and `diag(√S_r)·V_rᵀ`, each normalised by a power of two (their product is the
/// result's scale).
///
/// Cost: an exact f64 LAPACK SVD (`dgesdd`) of the whole matrix, O(rows·cols·min(rows, cols)) time and
/// O(rows·cols) extra memory in f64 — about a minute for a 4096×4096 matrix on one core. A randomized SVD would
/// be the choice for large models; this kernel favours exactness.
///
/// # Errors
/// [`Error::NonFinite`]; [`Error::Parameter`] if `rows · cols != delta.len()`; [`Error::Svd`].
pub fn lowrank(delta: &[f32], rows: usize, cols: usize, rank: usize) -> Result<LowRank> {
    check_matrix(delta, rows, cols)?;
    let r = rank.min(rows).min(cols);
    if r == 0 {
        return Ok(LowRank {
            rows: rows as u64,
            cols: cols as u64,
            rank: 0,
            u: Vec::new(),
            v: Vec::new(),
            scale: 1.0,
        });
    }
    let a = Array2::from_shape_fn((rows, cols), |(i, j)| f64::from(delta[i * cols + j]));
    let svd_err = |detail: String| Error::Svd { rows, cols, detail };
    // One OpenBLAS call at a time per process (ultradelta_core::blas explains why).
    let (u, s, vt) = ultradelta_core::blas::serialized(|| a.svddc(JobSvd::Some))
        .map_err(|e| svd_err(e.to_string()))?;
    let (u, vt) = match (u, vt) {
        (Some(u), Some(vt)) => (u, vt),
        _ => return Err(svd_err("LAPACK returned no singular vectors".into())),
    };
    let root: Vec<f64> = s.iter().take(r).map(|&x| x.max(0.0).sqrt()).collect();
    let uf: Vec<f32> = (0..rows)
        .flat_map(|i| (0..r).map(move |k| (i, k)))
        .map(|(i, k)| (u[[i, k]] * root[k]) as f32)
        .collect();
    let vf: Vec<f32> = (0..r)
        .flat_map(|k| (0..cols).map(move |j| (k, j)))
        .map(|(k, j)| (vt[[k, j]] * root[k]) as f32)
        .collect();
    let (u16s, nu) = to_f16(uf.iter().copied());
    let (v16s, nv) = to_f16(vf.iter().copied());
    Ok(LowRank {
        rows: rows as u64,
        cols: cols as u64,
        rank: r as u64,
        u: u16s,
        v: v16s,
        scale: nu * nv,
    })
}

/// The top `k` singular triplets of a `rows × cols` matrix: `u` holds `k` columns of `rows` entries (component
/// after component), `s` the singular values in decreasing order, `v` `k` rows of `cols` entries.
#[derive(Clone, Debug, PartialEq)]
pub struct TopSingular {
    /// `k × rows`: the left singular vectors, one after the other.
    pub u: Vec<f32>,
    /// The `k` largest singular values, decreasing.
    pub s: Vec<f32>,
    /// `k × cols`: the right singular vectors, one after the other.
    pub v: Vec<f32>,
}

/// Columns added to the random sketch of [`top_singular`] beyond the `k` it returns.
const SKETCH_OVERSAMPLING: usize = 8;
/// Power iterations of [`top_singular`]'s sketch (each one a product with Δᵀ and Δ).
const SKETCH_POWER_STEPS: usize = 2;

/// The top `k` (at most `min(rows, cols)`) singular triplets of the row-major `rows × cols` matrix `delta`.
///
/// A randomized range finder (Halko, Martinsson and Tropp, 2011): a Rademacher (±1) sketch of `k + 8` columns
/// drawn from `seed`, two power iterations with re-orthonormalisation, then the exact SVD of the small projected
/// matrix; when `k + 8` reaches `min(rows, cols)`, the exact SVD of the whole matrix instead. f64 throughout;
/// O(rows·cols·(k + 8)) time, so large tensors cost a few matrix products, not a full decomposition. The products
/// with Δ, nearly all the work, are this crate's own loops (`times`, `transposed_times`): Δ is read as it is,
/// with no double-precision copy (a word embedding's was the largest allocation of a compress), in parallel, and
/// every entry summed in a fixed order. The small factorizations are this crate's too (`small`: Gram–Schmidt
/// twice for the orthonormal bases, one-sided Jacobi for the SVDs, each singular pair's sign fixed by its right
/// vector), sequential and in a fixed order. So the result is the same bits on any CPU, OpenBLAS kernel, libm and
/// thread count, and takes no lock. (Until 2026-12-05 evening the QR and the small SVD were LAPACK's, on one
/// OpenBLAS thread, and the sketch Gaussian by Box–Muller; single precision was tried the same day and rejected:
/// the factors' 4-bit levels then depended on the OpenBLAS kernel the CPU selects.)
///
/// # Errors
/// [`Error::NonFinite`]; [`Error::Parameter`] if `rows · cols != delta.len()`.
pub fn top_singular(
    delta: &[f32],
    rows: usize,
    cols: usize,
    k: usize,
    seed: u64,
) -> Result<TopSingular> {
    use ndarray::{s, Axis};
    check_matrix(delta, rows, cols)?;
    let k = k.min(rows).min(cols);
    if k == 0 {
        return Ok(TopSingular {
            u: Vec::new(),
            s: Vec::new(),
            v: Vec::new(),
        });
    }
    let width = k + SKETCH_OVERSAMPLING;
    let (u, sv, vt) = if width >= rows.min(cols) {
        let whole = Array2::from_shape_fn((rows, cols), |(i, j)| f64::from(delta[i * cols + j]));
        if cols <= rows {
            small::thin_svd(whole.view())
        } else {
            // Δᵀ = U'·S·V'ᵀ, so Δ = V'·S·U'ᵀ.
            let (ut, sv, vtt) = small::thin_svd(whole.t());
            (vtt.reversed_axes(), sv, ut.reversed_axes())
        }
    } else {
        // A Rademacher sketch (±1 from the seed's stream): exact in f64, and no libm function whose last bits
        // could differ between machines.
        let mut rng = DetRng::new(mix(seed, SKETCH_DOMAIN));
        let omega = Array2::from_shape_fn((cols, width), |_| {
            if rng.next_u64() >> 63 == 0 {
                1.0
            } else {
                -1.0
            }
        });
        let mut q = small::orthonormal_columns(times(delta, cols, &omega).view());
        for _ in 0..SKETCH_POWER_STEPS {
            let z = small::orthonormal_columns(transposed_times(delta, cols, &q).view());
            q = small::orthonormal_columns(times(delta, cols, &z).view());
        }
        // B = Qᵀ·Δ (width × cols); Bᵀ = Δᵀ·Q = U'·S·V'ᵀ, so B = V'·S·U'ᵀ and Δ ≈ (Q·V')·S·U'ᵀ.
        let bt = transposed_times(delta, cols, &q);
        let (ub, sv, vb) = small::thin_svd(bt.view());
        (small::product(q.view(), vb.t()), sv, ub.reversed_axes())
    };
    let u = u.slice(s![.., ..k]);
    Ok(TopSingular {
        u: u.axis_iter(Axis(1))
            .flat_map(|c| c.iter().map(|&x| x as f32).collect::<Vec<_>>())
            .collect(),
        s: sv.iter().take(k).map(|&x| x as f32).collect(),
        v: vt.slice(s![..k, ..]).iter().map(|&x| x as f32).collect(),
    })
}

/// `Δ·m` (`rows × w`) for the row-major Δ (`cols` wide) and `m` (`cols × w`), in f64, rows in parallel: each entry
/// summed over j in order (`+= Δ[i, j]·m[j, k]`, no fused multiply-add), so the bits depend on neither the thread
/// count nor the CPU.
fn times(delta: &[f32], cols: usize, m: &Array2<f64>) -> Array2<f64> {
    let w = m.ncols();
    let m = m.as_standard_layout();
    let ms = m.as_slice().expect("standard layout");
    let rows = delta.len() / cols.max(1);
    let mut out = vec![0f64; rows * w];
    out.par_chunks_mut(w)
        .zip(delta.par_chunks(cols))
        .with_min_len(16)
        .for_each(|(o, drow)| {
            ultradelta_qgp::simd::wide(|| {
                add_products(o, drow.iter().copied().zip(ms.chunks_exact(w)))
            })
        });
    Array2::from_shape_vec((rows, w), out).expect("rows × w")
}

/// `acc += Σ_t a_t·x_t` over `terms` in order, each `x_t` as wide as `acc` (a row of [`times`], a column of
/// [`transposed_times`]). At the sketch's usual width the sums are a fixed-size array the compiler keeps in
/// registers; otherwise the same additions on the slice.
#[inline(always)]
fn add_products<'a>(acc: &mut [f64], terms: impl Iterator<Item = (f32, &'a [f64])>) {
    const W: usize = MAX_SKETCH_WIDTH;
    if acc.len() == W {
        let mut r = [0f64; W];
        r.copy_from_slice(acc);
        for (a, x) in terms {
            let x: &[f64; W] = x.try_into().expect("as wide as the sums");
            axpy(&mut r, f64::from(a), x);
        }
        acc.copy_from_slice(&r);
    } else {
        for (a, x) in terms {
            axpy(acc, f64::from(a), x);
        }
    }
}

/// `y += a·x`, entry by entry (a multiply, then an add: the same bits at any vector width).
#[inline(always)]
fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    for (v, &b) in y.iter_mut().zip(x) {
        *v += a * b;
    }
}

/// Columns of Δ per block of [`transposed_times`] (a block's sums stay in the first-level cache) ...
const COLUMN_BLOCK: usize = 64;
/// ... and rows per pass over the block (that many rows of `q` stay in cache while each column's sums stay in
/// registers).
const ROW_CHUNK: usize = 256;

/// `Δᵀ·q` (`cols × w`) for the row-major Δ (`cols` wide) and `q` (`rows × w`), in f64, blocks of columns in
/// parallel: each entry summed over i in order, so the bits depend on neither the thread count nor the CPU.
fn transposed_times(delta: &[f32], cols: usize, q: &Array2<f64>) -> Array2<f64> {
    let w = q.ncols();
    let q = q.as_standard_layout();
    let qs = q.as_slice().expect("standard layout");
    let rows = delta.len() / cols.max(1);
    let mut out = vec![0f64; cols * w];
    out.par_chunks_mut(COLUMN_BLOCK * w)
        .enumerate()
        .for_each(|(b, acc)| {
            let c0 = b * COLUMN_BLOCK;
            ultradelta_qgp::simd::wide(|| {
                for i0 in (0..rows).step_by(ROW_CHUNK) {
                    let i1 = (i0 + ROW_CHUNK).min(rows);
                    for (jj, accj) in acc.chunks_exact_mut(w).enumerate() {
                        let j = c0 + jj;
                        add_products(
                            accj,
                            (i0..i1).map(|i| (delta[i * cols + j], &qs[i * w..(i + 1) * w])),
                        );
                    }
                }
            })
        });
    Array2::from_shape_vec((cols, w), out).expect("cols × w")
}

/// The sketch width of the low-rank part's SVD (its 16 ranks and the oversampling), for which
/// [`add_products`] keeps its sums in registers.
const MAX_SKETCH_WIDTH: usize = 24;

/// Domain of [`top_singular`]'s sketch stream.
const SKETCH_DOMAIN: u64 = 0x534b_4554_4348_5356; // "SKETCHSV"

#[cfg(test)]
mod tests;
