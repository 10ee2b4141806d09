//! Kind 8, `lowrank-f16` (docs/FORMAT.md, "Kind 8"): low-rank fp16 factors U, V and one scale (truncated SVD).
//! [`LowRankRecord`] holds it.

use half::f16;

use super::common::{check_len, get_f16s, put_f16s, Head};
use crate::coded::RecordCost;
use crate::record::{Cursor, RecordHeader};
use crate::{Error, Limits, Record, RecordKind, Result};

/// Fixed part of a `lowrank-f16` payload: rows, cols, rank, scale (`LOWRANK_FIXED_BYTES`).
pub(crate) const FIXED_BYTES: usize = 8 + 8 + 8 + 4;

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

/// Writes header and payload.
pub(crate) fn encode(r: &LowRankRecord, head: &Head<'_>, out: &mut Vec<u8>) -> Result<()> {
    r.validate()?;
    if head.dims.first().copied() != Some(r.rows) && !(head.dims.is_empty() && r.rows == 1) {
        return Err(Error::record(format!(
            "low-rank record has {} rows but shape {:?}",
            r.rows, head.shape
        )));
    }
    head.check_numel("lowrank-f16", r.numel())?;
    head.put(out, RecordKind::LowrankF16)?;
    out.extend_from_slice(&r.rows.to_le_bytes());
    out.extend_from_slice(&r.cols.to_le_bytes());
    out.extend_from_slice(&r.rank.to_le_bytes());
    out.extend_from_slice(&r.scale.to_le_bytes());
    put_f16s(out, &r.u);
    put_f16s(out, &r.v);
    Ok(())
}

/// Exact payload length [`encode`] writes.
pub(crate) fn encoded_len(r: &LowRankRecord) -> Result<u64> {
    r.validate()?;
    Ok(FIXED_BYTES as u64 + 2 * (r.u.len() + r.v.len()) as u64)
}

pub(crate) fn decode(
    c: &mut Cursor<'_>,
    header: &RecordHeader,
    _limits: &Limits,
) -> Result<Record> {
    let bad = |d: String| Error::stream("record", d);
    let numel = header.numel;
    let rows = c.u64("rows")?;
    let cols = c.u64("cols")?;
    let rank = c.u64("rank")?;
    let scale = c.f32("scale")?;
    if !scale.is_finite() {
        return Err(bad(format!("non-finite scale {scale}")));
    }
    let first = header.shape.first().copied().unwrap_or(1);
    if rows != first || rows.checked_mul(cols) != Some(numel) {
        return Err(bad(format!(
            "low-rank view {rows}x{cols} does not match shape {:?}",
            header.shape
        )));
    }
    if rank > rows.min(cols) {
        return Err(bad(format!("rank {rank} above min({rows}, {cols})")));
    }
    // rank <= min(rows, cols) so both products are <= numel <= max_numel: no overflow.
    let (nu, nv) = (rows * rank, rank * cols);
    if (nu + nv).checked_mul(2) != Some(c.left()) {
        return Err(bad(format!(
            "{} factor bytes, expected {} for rank {rank}",
            c.left(),
            (nu + nv) * 2
        )));
    }
    let u = get_f16s(c.take(nu * 2, "U")?, "U")?;
    let v = get_f16s(c.take(nv * 2, "V")?, "V")?;
    Ok(Record::LowRank(LowRankRecord {
        rows,
        cols,
        rank,
        u,
        v,
        scale,
    }))
}

pub(crate) fn cost(_c: &mut Cursor<'_>) -> Option<RecordCost> {
    None
}
