//! Kind 6, `sparse-sign` (docs/FORMAT.md, "Kinds 5 and 6"): Golomb-coded positions, one sign bit each and one
//! magnitude (ComPEFT). [`SignRecord`] holds it, and kind 7 (`dense-sign`, every entry signed) too.

use super::common::{
    check_len, pack_bits, put_kept_scale_positions, read_kept_scale, read_positions, unpack_bits,
    GolombStream, Head, KEPT_SCALE_GOLOMB_BYTES,
};
use crate::coded::RecordCost;
use crate::record::{Cursor, RecordHeader};
use crate::{golomb, Error, Limits, Record, RecordKind, Result};

/// Fixed part of a `sparse-sign` payload: kept, magnitude, m, pos_bits, pos_len (`SPARSE_SIGN_FIXED_BYTES`).
pub(crate) const FIXED_BYTES: usize = KEPT_SCALE_GOLOMB_BYTES;

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

/// Writes header and payload of a sign record: this kind with positions, kind 7 ([`super::dense_sign`]) without.
pub(crate) fn encode(r: &SignRecord, head: &Head<'_>, out: &mut Vec<u8>) -> Result<()> {
    head.check_numel("sign", r.numel)?;
    r.validate()?;
    match &r.positions {
        Some(pos) => {
            head.put(out, RecordKind::SparseSign)?;
            put_kept_scale_positions(out, pos, head.numel, r.magnitude)?;
        }
        None => {
            head.put(out, RecordKind::DenseSign)?;
            out.extend_from_slice(&r.magnitude.to_le_bytes());
        }
    }
    out.extend_from_slice(&pack_bits(&r.negative));
    Ok(())
}

/// Exact payload length [`encode`] writes (either kind).
pub(crate) fn encoded_len(r: &SignRecord) -> Result<u64> {
    r.validate()?;
    let signs = r.negative.len().div_ceil(8) as u64;
    Ok(match &r.positions {
        Some(pos) => FIXED_BYTES as u64 + GolombStream::encoded_len(pos, r.numel)? + signs,
        None => super::dense_sign::FIXED_BYTES as u64 + signs,
    })
}

pub(crate) fn decode(
    c: &mut Cursor<'_>,
    header: &RecordHeader,
    _limits: &Limits,
) -> Result<Record> {
    let numel = header.numel;
    let (kept, magnitude) = read_kept_scale(c, numel)?;
    let rest = kept.div_ceil(8);
    let positions = read_positions(c, kept, numel, rest)?;
    let tail = c.take(rest, "values")?;
    Ok(Record::Sign(SignRecord {
        numel,
        magnitude,
        positions: Some(positions),
        negative: unpack_bits(tail, kept)?,
    }))
}

pub(crate) fn cost(_c: &mut Cursor<'_>) -> Option<RecordCost> {
    None
}
