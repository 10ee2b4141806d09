//! Kind 3, `full-zstd`: a tensor only the fine-tuned model has, its raw bytes byte-plane shuffled, zstd
//! (docs/FORMAT.md, "Kinds 2, 3, 4"). [`crate::Record::Full`] holds it.

use ultradelta_core::DType;

use super::common::Head;
use crate::coded::RecordCost;
use crate::lossless::{
    compress_tensor_bytes, decode_zstd_payload, put_zstd_record, raw_size, unshuffle,
};
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
    let z = compress_tensor_bytes(dtype, bytes, head, zstd_level)?;
    put_zstd_record(head, RecordKind::FullZstd, &z, out)
}

pub(crate) fn decode(
    c: &mut Cursor<'_>,
    header: &RecordHeader,
    _limits: &Limits,
) -> Result<Record> {
    let raw = raw_size(header.numel, header.dtype.size())?;
    let planes = decode_zstd_payload(c, raw)?;
    Ok(Record::Full {
        dtype: header.dtype,
        bytes: unshuffle(&planes, header.dtype.size()),
    })
}

pub(crate) fn cost(_c: &mut Cursor<'_>) -> Option<RecordCost> {
    None
}
