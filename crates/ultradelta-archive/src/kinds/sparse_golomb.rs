//! Kind 1, `sparse-golomb` (docs/FORMAT.md, "Kind 1: sparse-golomb payload"): UltraDelta's kept entries as
//! Golomb-coded positions and bit-packed levels. [`SparseRecord`] holds it and owns its decoding formula.

use ultradelta_core::QuantParams;

use super::common::{
    check_streams_fill, put_sparse_head, read_golomb_lengths, read_sparse_head, GolombStream, Head,
    GOLOMB_FIELDS_BYTES, SPARSE_HEAD_BYTES,
};
use crate::coded::RecordCost;
use crate::record::{Cursor, RecordHeader};
use crate::{bitpack, golomb, Error, Limits, Record, RecordKind, Result};

/// Fixed part of a `sparse-golomb` payload after the common header: kept, bits, lo, step, scale, m, pos_bits,
/// pos_len, lvl_len (`SPARSE_FIXED_BYTES` in docs/FORMAT.md).
pub(crate) const FIXED_BYTES: usize = SPARSE_HEAD_BYTES + GOLOMB_FIELDS_BYTES + 8;

/// An UltraDelta sparse delta: kept positions and their quantization levels.
///
/// The value at `positions[i]` is `quant.dequantize(levels[i]) * scale` (f32 arithmetic, in that order); every
/// other entry is zero.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseRecord {
    /// Number of entries of the dense tensor.
    pub numel: u64,
    /// Quantizer of the levels.
    pub quant: QuantParams,
    /// Multiplier applied to every dequantized value (the rescaling factor).
    pub scale: f32,
    /// Kept positions (row-major flat indices), strictly increasing, below `numel`.
    pub positions: Vec<u64>,
    /// Level of each kept position, each below `2^quant.bits`.
    pub levels: Vec<u16>,
}

impl SparseRecord {
    /// The stored value of kept entry `i`: `quant.dequantize(levels[i]) * scale`.
    #[inline]
    pub fn value(&self, i: usize) -> f32 {
        self.quant.dequantize(self.levels[i]) * self.scale
    }

    /// Adds this record's values times `gamma` into `out`: `out[pos] += (dequantize(level) * scale) * gamma`.
    ///
    /// # Panics
    /// If `out.len() != numel`, or if the record was built by hand with a position `>= out.len()` or fewer levels
    /// than positions (records read from an archive are validated).
    pub fn add_into(&self, gamma: f32, out: &mut [f32]) {
        assert_eq!(
            out.len() as u64,
            self.numel,
            "output length {} differs from numel {}",
            out.len(),
            self.numel
        );
        for (&pos, &level) in self.positions.iter().zip(&self.levels) {
            out[pos as usize] += (self.quant.dequantize(level) * self.scale) * gamma;
        }
    }

    /// The dense delta: zeros except the kept values, each times `gamma`.
    ///
    /// # Panics
    /// If `numel` does not fit in memory addressing (`usize`), or as [`SparseRecord::add_into`].
    pub fn to_dense(&self, gamma: f32) -> Vec<f32> {
        let n = usize::try_from(self.numel).expect("numel exceeds usize");
        let mut out = vec![0.0f32; n];
        self.add_into(gamma, &mut out);
        out
    }

    /// Checks the invariants the format requires.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] describing the first violation.
    pub fn validate(&self) -> Result<()> {
        let q = &self.quant;
        if q.bits > 16 {
            return Err(Error::record(format!("bit width {} above 16", q.bits)));
        }
        if !q.lo.is_finite() || !q.step.is_finite() || !self.scale.is_finite() {
            return Err(Error::record(format!(
                "non-finite parameter (lo {}, step {}, scale {})",
                q.lo, q.step, self.scale
            )));
        }
        if self.positions.len() != self.levels.len() {
            return Err(Error::record(format!(
                "{} positions but {} levels",
                self.positions.len(),
                self.levels.len()
            )));
        }
        let limit = 1u32 << q.bits;
        if let Some((i, &l)) = self
            .levels
            .iter()
            .enumerate()
            .find(|&(_, &l)| u32::from(l) >= limit)
        {
            return Err(Error::record(format!(
                "levels[{i}] = {l} does not fit in {} bits",
                q.bits
            )));
        }
        golomb::validate_positions(&self.positions, self.numel)
    }
}

/// Writes header and payload.
pub(crate) fn encode(s: &SparseRecord, head: &Head<'_>, out: &mut Vec<u8>) -> Result<()> {
    if s.numel != head.numel {
        return Err(Error::record(format!(
            "sparse record has numel {} but shape {:?} has {} elements",
            s.numel, head.shape, head.numel
        )));
    }
    s.validate()?;
    let pos = GolombStream::encode(&s.positions, s.numel)?;
    let lvl_bytes = bitpack::pack(&s.levels, s.quant.bits);
    out.reserve(
        Head::len(head.dims.len()) as usize + FIXED_BYTES + pos.bytes.len() + lvl_bytes.len(),
    );
    head.put(out, RecordKind::SparseGolomb)?;
    put_sparse_head(out, s.positions.len() as u64, &s.quant, s.scale);
    pos.put_fields(out);
    out.extend_from_slice(&(lvl_bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&pos.bytes);
    out.extend_from_slice(&lvl_bytes);
    Ok(())
}

/// Exact payload length [`encode`] writes.
pub(crate) fn encoded_len(s: &SparseRecord) -> Result<u64> {
    s.validate()?;
    Ok(FIXED_BYTES as u64
        + GolombStream::encoded_len(&s.positions, s.numel)?
        + levels_len(s.levels.len(), s.quant.bits))
}

/// Bytes of `n` levels packed at `bits` bits.
pub(crate) fn levels_len(n: usize, bits: u8) -> u64 {
    bitpack::packed_len(n as u64, bits).unwrap_or(u64::MAX)
}

pub(crate) fn decode(
    c: &mut Cursor<'_>,
    header: &RecordHeader,
    _limits: &Limits,
) -> Result<Record> {
    let bad = |d: String| Error::stream("record", d);
    let numel = header.numel;
    let (kept, quant, scale) = read_sparse_head(c, numel)?;
    let bits = quant.bits;
    let (m, pos_bits, pos_len) = read_golomb_lengths(c)?;
    let lvl_len = c.u64("levels byte length")?;
    let want_lvl =
        bitpack::packed_len(kept, bits).ok_or_else(|| bad("levels length overflows".into()))?;
    if lvl_len != want_lvl {
        return Err(bad(format!(
            "levels byte length {lvl_len}, expected {want_lvl} for {kept} levels at {bits} bits"
        )));
    }
    check_streams_fill(c, pos_len, lvl_len)?;
    let pos_bytes = c.take(pos_len, "positions stream")?;
    let lvl_bytes = c.take(lvl_len, "levels stream")?;
    let positions = golomb::decode_positions(pos_bytes, pos_bits, m, kept, numel)?;
    // kept <= numel <= max_numel and lvl_len matched, so kept fits in the slice it was read from.
    let n = usize::try_from(kept).map_err(|_| bad(format!("kept {kept} too large")))?;
    let levels = bitpack::unpack(lvl_bytes, bits, n)?;
    Ok(Record::Sparse(SparseRecord {
        numel,
        quant,
        scale,
        positions,
        levels,
    }))
}

pub(crate) fn cost(c: &mut Cursor<'_>) -> Option<RecordCost> {
    c.skip(SPARSE_HEAD_BYTES as u64)?;
    let (_, _, pos_len) = read_golomb_lengths(c).ok()?;
    let lvl_len = c.u64("levels byte length").ok()?;
    Some(RecordCost {
        position_bits: pos_len * 8,
        value_bits: lvl_len * 8,
        ..RecordCost::default()
    })
}
