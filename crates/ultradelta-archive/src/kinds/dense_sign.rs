//! Kind 7, `dense-sign` (docs/FORMAT.md, "Kind 7"): one sign bit per entry and one magnitude (BitDelta). It is a
//! [`super::sparse_sign::SignRecord`] without positions; [`super::sparse_sign::encode`] writes both kinds.

use super::common::unpack_bits;
use super::sparse_sign::SignRecord;
use crate::coded::RecordCost;
use crate::record::{Cursor, RecordHeader};
use crate::{Error, Limits, Record, Result};

/// Fixed part of a `dense-sign` payload: magnitude (`DENSE_SIGN_FIXED_BYTES`).
pub(crate) const FIXED_BYTES: usize = 4;

pub(crate) fn decode(
    c: &mut Cursor<'_>,
    header: &RecordHeader,
    _limits: &Limits,
) -> Result<Record> {
    let bad = |d: String| Error::stream("record", d);
    let numel = header.numel;
    let magnitude = c.f32("magnitude")?;
    if !magnitude.is_finite() {
        return Err(bad(format!("non-finite magnitude {magnitude}")));
    }
    if numel.div_ceil(8) != c.left() {
        return Err(bad(format!(
            "{} sign bytes for {numel} entries, expected {}",
            c.left(),
            numel.div_ceil(8)
        )));
    }
    let tail = c.take(c.left(), "signs")?;
    Ok(Record::Sign(SignRecord {
        numel,
        magnitude,
        positions: None,
        negative: unpack_bits(tail, numel)?,
    }))
}

pub(crate) fn cost(_c: &mut Cursor<'_>) -> Option<RecordCost> {
    None
}
