//! The baseline record kinds (docs/FORMAT.md, kinds 5–9): sparse positions with fp16 values, sparse or dense sign
//! planes with one magnitude, low-rank fp16 factors, and dense bit-packed levels.
//!
//! Each payload type checks its own invariants ([`validate`](SparseValuesRecord::validate)), writes its payload
//! after the common header, and decodes it from untrusted bytes, comparing every declared length with the bytes
//! present before allocating anything sized from it. Each type also owns its decoding formula (`add_into`), the
//! single place where a stored value is turned back into an f32.

use half::f16;
use ultradelta_core::QuantParams;

use crate::{bitpack, golomb, Error, Result};

/// Fixed part of a `sparse-f16` payload: kept, scale, m, pos_bits, pos_len.
pub const SPARSE_F16_FIXED_BYTES: usize = 8 + 4 + 8 + 8 + 8;
/// Fixed part of a `sparse-sign` payload: kept, magnitude, m, pos_bits, pos_len.
pub const SPARSE_SIGN_FIXED_BYTES: usize = 8 + 4 + 8 + 8 + 8;
/// Fixed part of a `dense-sign` payload: magnitude.
pub const DENSE_SIGN_FIXED_BYTES: usize = 4;
/// Fixed part of a `lowrank-f16` payload: rows, cols, rank, scale.
pub const LOWRANK_FIXED_BYTES: usize = 8 + 8 + 8 + 4;
/// Fixed part of a `dense-levels` payload: bits, lo, step, scale.
pub const DENSE_LEVELS_FIXED_BYTES: usize = 1 + 4 + 4 + 4;

fn check_len(out_len: usize, numel: u64) {
    assert_eq!(
        out_len as u64, numel,
        "output length {out_len} differs from numel {numel}"
    );
}

/// Sparse delta with fp16 values (`sparse-f16`, kind 5): DARE, magnitude pruning, UltraDelta without quantization.
///
/// The value at `positions[i]` is `f32(values[i]) * scale`; every other entry is zero.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseValuesRecord {
    /// Entries of the dense tensor.
    pub numel: u64,
    /// Multiplier of every stored value (e.g. DARE's 1/(1 − p)).
    pub scale: f32,
    /// Kept positions, strictly increasing, below `numel`.
    pub positions: Vec<u64>,
    /// Value of each kept position (finite).
    pub values: Vec<f16>,
}

impl SparseValuesRecord {
    /// Adds `(f32(values[i]) * scale) * gamma` at every kept position of `out`.
    ///
    /// # Panics
    /// If `out.len() != numel` or the record was built by hand with invalid positions.
    pub fn add_into(&self, gamma: f32, out: &mut [f32]) {
        check_len(out.len(), self.numel);
        for (&p, &v) in self.positions.iter().zip(&self.values) {
            out[p as usize] += (v.to_f32() * self.scale) * gamma;
        }
    }

    /// Checks the format's invariants.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] describing the first violation.
    pub fn validate(&self) -> Result<()> {
        if !self.scale.is_finite() {
            return Err(Error::record(format!("non-finite scale {}", self.scale)));
        }
        if self.positions.len() != self.values.len() {
            return Err(Error::record(format!(
                "{} positions but {} values",
                self.positions.len(),
                self.values.len()
            )));
        }
        if let Some(i) = self.values.iter().position(|v| !v.is_finite()) {
            return Err(Error::record(format!("values[{i}] is not finite")));
        }
        golomb::validate_positions(&self.positions, self.numel)
    }
}

/// Signs times one magnitude: `sparse-sign` (kind 6, ComPEFT: kept positions + their signs) or `dense-sign`
/// (kind 7, BitDelta: every entry has a sign, `positions` is `None`).
///
/// The value of kept entry `i` is `-magnitude` if `negative[i]`, else `+magnitude`.
#[derive(Clone, Debug, PartialEq)]
pub struct SignRecord {
    /// Entries of the dense tensor.
    pub numel: u64,
    /// The one magnitude of the tensor (finite).
    pub magnitude: f32,
    /// Kept positions (strictly increasing, below `numel`), or `None` when every entry is kept (dense plane).
    pub positions: Option<Vec<u64>>,
    /// Sign of each kept entry (`true` = negative); `numel` of them for a dense plane.
    pub negative: Vec<bool>,
}

impl SignRecord {
    /// Adds `(±magnitude) * gamma` at every kept position of `out`.
    ///
    /// # Panics
    /// If `out.len() != numel` or the record was built by hand with invalid positions.
    pub fn add_into(&self, gamma: f32, out: &mut [f32]) {
        check_len(out.len(), self.numel);
        let val = |neg: bool| (if neg { -self.magnitude } else { self.magnitude }) * gamma;
        match &self.positions {
            Some(pos) => {
                for (&p, &n) in pos.iter().zip(&self.negative) {
                    out[p as usize] += val(n);
                }
            }
            None => {
                for (o, &n) in out.iter_mut().zip(&self.negative) {
                    *o += val(n);
                }
            }
        }
    }

    /// Number of stored signs.
    pub fn kept(&self) -> u64 {
        self.negative.len() as u64
    }

    /// Checks the format's invariants.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] describing the first violation.
    pub fn validate(&self) -> Result<()> {
        if !self.magnitude.is_finite() {
            return Err(Error::record(format!(
                "non-finite magnitude {}",
                self.magnitude
            )));
        }
        match &self.positions {
            Some(pos) => {
                if pos.len() != self.negative.len() {
                    return Err(Error::record(format!(
                        "{} positions but {} signs",
                        pos.len(),
                        self.negative.len()
                    )));
                }
                golomb::validate_positions(pos, self.numel)
            }
            None if self.negative.len() as u64 != self.numel => Err(Error::record(format!(
                "dense sign plane has {} signs for {} entries",
                self.negative.len(),
                self.numel
            ))),
            None => Ok(()),
        }
    }
}

/// Low-rank factors (`lowrank-f16`, kind 8): Δ̂ = scale · U·V with U `rows × rank` and V `rank × cols`, both
/// fp16, row-major. The singular values are folded into the factors.
///
/// Entry `(i, j)` is `(Σ_k f32(U[i,k]) · f32(V[k,j])) · scale`, accumulated in f32 in increasing `k`.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRankRecord {
    /// Rows of the matrix view (the tensor's first dimension).
    pub rows: u64,
    /// Columns of the matrix view (the product of the other dimensions).
    pub cols: u64,
    /// Rank `r <= min(rows, cols)`.
    pub rank: u64,
    /// `rows × rank`, row-major.
    pub u: Vec<f16>,
    /// `rank × cols`, row-major.
    pub v: Vec<f16>,
    /// Multiplier of every product (lets the factors use fp16's normal range; finite).
    pub scale: f32,
}

impl LowRankRecord {
    /// Entries of the dense tensor (saturating; a valid record's product fits).
    pub fn numel(&self) -> u64 {
        self.rows.saturating_mul(self.cols)
    }

    /// Adds `(U·V)[i,j] * gamma` into `out` (row-major).
    ///
    /// # Panics
    /// If `out.len() != rows · cols` or the factor lengths are wrong (records read from an archive are validated).
    pub fn add_into(&self, gamma: f32, out: &mut [f32]) {
        check_len(out.len(), self.numel());
        let (cols, rank) = (self.cols as usize, self.rank as usize);
        if rank == 0 || cols == 0 {
            return;
        }
        let v: Vec<f32> = self.v.iter().map(|x| x.to_f32()).collect();
        let mut acc = vec![0f32; cols];
        for (row, urow) in out.chunks_exact_mut(cols).zip(self.u.chunks_exact(rank)) {
            acc.iter_mut().for_each(|a| *a = 0.0);
            for (k, &uk) in urow.iter().enumerate() {
                let uk = uk.to_f32();
                for (a, &vk) in acc.iter_mut().zip(&v[k * cols..(k + 1) * cols]) {
                    *a += uk * vk;
                }
            }
            for (o, a) in row.iter_mut().zip(&acc) {
                *o += (a * self.scale) * gamma;
            }
        }
    }

    /// Checks the format's invariants.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] describing the first violation.
    pub fn validate(&self) -> Result<()> {
        if !self.scale.is_finite() {
            return Err(Error::record(format!("non-finite scale {}", self.scale)));
        }
        if self.rows.checked_mul(self.cols).is_none() {
            return Err(Error::record(format!(
                "{}x{} overflows",
                self.rows, self.cols
            )));
        }
        if self.rank > self.rows.min(self.cols) {
            return Err(Error::record(format!(
                "rank {} above min({}, {})",
                self.rank, self.rows, self.cols
            )));
        }
        let nu = self.rows.checked_mul(self.rank);
        let nv = self.rank.checked_mul(self.cols);
        if nu != Some(self.u.len() as u64) || nv != Some(self.v.len() as u64) {
            return Err(Error::record(format!(
                "factor lengths {} and {} do not match {}x{} at rank {}",
                self.u.len(),
                self.v.len(),
                self.rows,
                self.cols,
                self.rank
            )));
        }
        if self.u.iter().chain(&self.v).any(|x| !x.is_finite()) {
            return Err(Error::record("a factor entry is not finite"));
        }
        Ok(())
    }
}

/// Every entry quantized, no positions (`dense-levels`, kind 9): uniform quantization alone.
///
/// Entry `i` is `(quant.lo + levels[i] · quant.step) · scale` (f32, in that order).
#[derive(Clone, Debug, PartialEq)]
pub struct DenseLevelsRecord {
    /// Quantizer.
    pub quant: QuantParams,
    /// Multiplier of every dequantized value.
    pub scale: f32,
    /// One level per entry, each below `2^bits`.
    pub levels: Vec<u16>,
}

impl DenseLevelsRecord {
    /// Adds `(dequantize(level) * scale) * gamma` to every entry of `out`.
    ///
    /// # Panics
    /// If `out.len() != levels.len()`.
    pub fn add_into(&self, gamma: f32, out: &mut [f32]) {
        check_len(out.len(), self.levels.len() as u64);
        for (o, &l) in out.iter_mut().zip(&self.levels) {
            *o += (self.quant.dequantize(l) * self.scale) * gamma;
        }
    }

    /// Checks the format's invariants.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] describing the first violation.
    pub fn validate(&self) -> Result<()> {
        check_quantized_levels(&self.quant, self.scale, &self.levels)?;
        Ok(())
    }
}

/// Packs booleans LSB-first (`true` = 1), last byte zero-padded.
pub(crate) fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// Unpacks `n` booleans; `bytes` must be exactly `ceil(n / 8)` long with zero padding.
pub(crate) fn unpack_bits(bytes: &[u8], n: u64) -> Result<Vec<bool>> {
    let bad = |d: String| Error::stream("signs", d);
    if bytes.len() as u64 != n.div_ceil(8) {
        return Err(bad(format!("{} bytes for {n} signs", bytes.len())));
    }
    let rem = n % 8;
    if rem != 0 {
        if let Some(&last) = bytes.last() {
            if last >> rem != 0 {
                return Err(bad("non-zero padding bits".into()));
            }
        }
    }
    let n = usize::try_from(n).map_err(|_| bad(format!("{n} signs too many")))?;
    Ok((0..n).map(|i| bytes[i / 8] >> (i % 8) & 1 == 1).collect())
}

/// f16 values as little-endian bytes.
pub(crate) fn put_f16s(out: &mut Vec<u8>, v: &[f16]) {
    for x in v {
        out.extend_from_slice(&x.to_bits().to_le_bytes());
    }
}

/// Reads `bytes.len() / 2` little-endian f16 values, rejecting non-finite ones.
pub(crate) fn get_f16s(bytes: &[u8], what: &str) -> Result<Vec<f16>> {
    let v: Vec<f16> = bytes
        .chunks_exact(2)
        .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::stream(
            "record",
            format!("{what}[{i}] is not finite"),
        ));
    }
    Ok(v)
}

/// Bit-packed levels for a dense-levels record.
pub(crate) fn pack_levels(levels: &[u16], bits: u8) -> Vec<u8> {
    bitpack::pack(levels, bits)
}

/// The checks every record of quantized levels shares: a bit width of at most 16, finite `lo`, `step` and
/// `scale`, and every level below `2^bits`.
pub(crate) fn check_quantized_levels(q: &QuantParams, scale: f32, levels: &[u16]) -> Result<()> {
    if q.bits > 16 {
        return Err(Error::record(format!("bit width {} above 16", q.bits)));
    }
    if !q.lo.is_finite() || !q.step.is_finite() || !scale.is_finite() {
        return Err(Error::record(format!(
            "non-finite parameter (lo {}, step {}, scale {scale})",
            q.lo, q.step
        )));
    }
    let limit = 1u32 << q.bits;
    if let Some(i) = levels.iter().position(|&l| u32::from(l) >= limit) {
        return Err(Error::record(format!(
            "levels[{i}] = {} does not fit in {} bits",
            levels[i], q.bits
        )));
    }
    Ok(())
}
