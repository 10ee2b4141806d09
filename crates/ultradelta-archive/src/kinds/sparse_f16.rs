//! Kind 5, `sparse-f16` (docs/FORMAT.md, "Kinds 5 and 6"): Golomb-coded positions, fp16 values and one scale
//! (DARE, magnitude pruning, UltraDelta without quantization). [`SparseValuesRecord`] holds it.

use half::f16;

use super::common::{
    check_len, get_f16s, put_f16s, put_kept_scale_positions, read_kept_scale, read_positions,
    GolombStream, Head, KEPT_SCALE_GOLOMB_BYTES,
};
use crate::coded::RecordCost;
use crate::record::{Cursor, RecordHeader};
use crate::{golomb, Error, Limits, Record, RecordKind, Result};

/// Fixed part of a `sparse-f16` payload: kept, scale, m, pos_bits, pos_len (`SPARSE_F16_FIXED_BYTES`).
pub(crate) const FIXED_BYTES: usize = KEPT_SCALE_GOLOMB_BYTES;

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

/// Writes header and payload.
pub(crate) fn encode(r: &SparseValuesRecord, head: &Head<'_>, out: &mut Vec<u8>) -> Result<()> {
    head.check_numel("sparse-f16", r.numel)?;
    r.validate()?;
    head.put(out, RecordKind::SparseF16)?;
    put_kept_scale_positions(out, &r.positions, head.numel, r.scale)?;
    put_f16s(out, &r.values);
    Ok(())
}

/// Exact payload length [`encode`] writes.
pub(crate) fn encoded_len(r: &SparseValuesRecord) -> Result<u64> {
    r.validate()?;
    Ok(FIXED_BYTES as u64
        + GolombStream::encoded_len(&r.positions, r.numel)?
        + 2 * r.values.len() as u64)
}

pub(crate) fn decode(
    c: &mut Cursor<'_>,
    header: &RecordHeader,
    _limits: &Limits,
) -> Result<Record> {
    let numel = header.numel;
    let (kept, scale) = read_kept_scale(c, numel)?;
    let rest = kept
        .checked_mul(2)
        .ok_or_else(|| Error::stream("record", format!("{kept} values overflow")))?;
    let positions = read_positions(c, kept, numel, rest)?;
    let tail = c.take(rest, "values")?;
    Ok(Record::SparseValues(SparseValuesRecord {
        numel,
        scale,
        positions,
        values: get_f16s(tail, "values")?,
    }))
}

pub(crate) fn cost(_c: &mut Cursor<'_>) -> Option<RecordCost> {
    None
}
