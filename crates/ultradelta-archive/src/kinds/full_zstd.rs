//! Kind 3, `full-zstd`: a tensor only the fine-tuned model has, its raw bytes byte-plane shuffled, zstd
//! (docs/FORMAT.md, "Kinds 2, 3, 4"). [`crate::Record::Full`] holds it.

use ultradelta_core::DType;

use super::common::Head;
use crate::coded::RecordCost;
use crate::lossless::{put_shuffled_record, read_shuffled_payload};
use crate::record::{Cursor, RecordHeader};
use crate::{Limits, Record, RecordKind, Result};

/// Fixed part of a zstd payload: the compressed length.
pub(crate) const FIXED_BYTES: usize = 8;

/// Writes header and payload of a `full-zstd` record of `bytes` (of `dtype`).
pub(crate) fn encode(
    dtype: DType,
    bytes: &[u8],
    head: &Head<'_>,
    zstd_level: i32,
    out: &mut Vec<u8>,
) -> Result<()> {
    put_shuffled_record(RecordKind::FullZstd, dtype, bytes, head, zstd_level, out)
}

pub(crate) fn decode(
    c: &mut Cursor<'_>,
    header: &RecordHeader,
    _limits: &Limits,
) -> Result<Record> {
    Ok(Record::Full {
        dtype: header.dtype,
        bytes: read_shuffled_payload(c, header)?,
    })
}

pub(crate) fn cost(_c: &mut Cursor<'_>) -> Option<RecordCost> {
    None
}

/// Decodes a `full-zstd` record straight into `out`, which must be the record's byte size (`numel` times the
/// dtype size, checked before anything is decompressed): the bytes [`decode_record`](crate::decode_record) returns
/// as [`Record::Full`], streamed from zstd and unshuffled piece by piece, so no buffer of the tensor's size is
/// allocated besides `out` (what `apply` uses for a tensor only the fine-tune has).
///
/// # Errors
/// [`crate::Error::InvalidStream`] for a record of another kind, a size that disagrees, or a damaged payload.
pub fn decode_full_into(bytes: &[u8], limits: &Limits, out: &mut [u8]) -> Result<RecordHeader> {
    let mut c = Cursor::new(bytes);
    let header =
        crate::lossless::lossless_header(&mut c, limits, RecordKind::FullZstd, out.len(), None)?;
    crate::lossless::zstd_unshuffle_into(
        crate::lossless::zstd_payload(&mut c)?,
        header.dtype.size(),
        out,
    )?;
    Ok(header)
}
