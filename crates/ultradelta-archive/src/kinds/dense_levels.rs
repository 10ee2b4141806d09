//! Kind 9, `dense-levels` (docs/FORMAT.md, "Kind 9"): every entry's quantization level, bit-packed, no
//! positions (quantization alone). [`DenseLevelsRecord`] holds it.

use ultradelta_core::QuantParams;

use super::common::{check_len, check_quantized_levels, Head};
use crate::coded::RecordCost;
use crate::record::{Cursor, RecordHeader};
use crate::{bitpack, Error, Limits, Record, RecordKind, Result};

/// Fixed part of a `dense-levels` payload: bits, lo, step, scale (`DENSE_LEVELS_FIXED_BYTES`).
pub(crate) const FIXED_BYTES: usize = 1 + 4 + 4 + 4;

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

/// Writes header and payload.
pub(crate) fn encode(r: &DenseLevelsRecord, head: &Head<'_>, out: &mut Vec<u8>) -> Result<()> {
    head.check_numel("dense-levels", r.levels.len() as u64)?;
    r.validate()?;
    head.put(out, RecordKind::DenseLevels)?;
    out.push(r.quant.bits);
    out.extend_from_slice(&r.quant.lo.to_le_bytes());
    out.extend_from_slice(&r.quant.step.to_le_bytes());
    out.extend_from_slice(&r.scale.to_le_bytes());
    out.extend_from_slice(&bitpack::pack(&r.levels, r.quant.bits));
    Ok(())
}

/// Exact payload length [`encode`] writes.
pub(crate) fn encoded_len(r: &DenseLevelsRecord) -> Result<u64> {
    r.validate()?;
    Ok(FIXED_BYTES as u64 + super::sparse_golomb::levels_len(r.levels.len(), r.quant.bits))
}

pub(crate) fn decode(c: &mut Cursor<'_>, header: &RecordHeader, limits: &Limits) -> Result<Record> {
    let bad = |d: String| Error::stream("record", d);
    let numel = header.numel;
    let bits = c.u8("bits")?;
    let lo = c.f32("lo")?;
    let step = c.f32("step")?;
    let scale = c.f32("scale")?;
    if bits > 16 {
        return Err(bad(format!("bit width {bits} above 16")));
    }
    if !lo.is_finite() || !step.is_finite() || !scale.is_finite() {
        return Err(bad(format!(
            "non-finite lo {lo}, step {step} or scale {scale}"
        )));
    }
    // With 0 bits the levels take no bytes, so a few bytes could declare any number of them: capped like kind
    // 12's levels (the reference writer never writes 0 bits here).
    if bits == 0 && numel > limits.max_coded_levels {
        return Err(bad(format!(
            "{numel} zero-bit levels exceed the limit {}",
            limits.max_coded_levels
        )));
    }
    let want =
        bitpack::packed_len(numel, bits).ok_or_else(|| bad("levels length overflows".into()))?;
    if want != c.left() {
        return Err(bad(format!("{} level bytes, expected {want}", c.left())));
    }
    let n = usize::try_from(numel).map_err(|_| bad(format!("numel {numel} too large")))?;
    // Zero-bit levels are all 0: a check has nothing to decode and nothing to allocate.
    let levels = if bits == 0 && c.check_only {
        Vec::new()
    } else {
        bitpack::unpack(c.take(want, "levels")?, bits, n)?
    };
    Ok(Record::DenseLevels(DenseLevelsRecord {
        quant: QuantParams { bits, lo, step },
        scale,
        levels,
    }))
}

pub(crate) fn cost(_c: &mut Cursor<'_>) -> Option<RecordCost> {
    None
}
