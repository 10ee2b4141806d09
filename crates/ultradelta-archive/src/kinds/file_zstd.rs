//! Kind 4, `file-zstd`: a companion file (config, tokenizer), zstd without shuffle; header dtype `U8`, shape
//! `[size]` (docs/FORMAT.md, "Kinds 2, 3, 4"). It decodes as [`crate::Record::Full`] with dtype `U8`.

use ultradelta_core::DType;

use super::common::Head;
use crate::coded::RecordCost;
use crate::lossless::{decode_zstd_payload, put_zstd_record, raw_size, zstd_compress};
use crate::record::{Cursor, RecordHeader};
use crate::{Limits, Record, RecordKind, Result};

/// Fixed part of a zstd payload: the compressed length.
pub(crate) const FIXED_BYTES: usize = 8;

/// Encodes a companion-file record (header + payload).
pub(crate) fn encode(bytes: &[u8], zstd_level: i32) -> Result<Vec<u8>> {
    let n = bytes.len() as u64;
    let z = zstd_compress(bytes, zstd_level)?;
    let mut out = Vec::with_capacity(28 + z.len());
    let head = Head {
        dtype: DType::U8,
        shape: &[],
        dims: &[n],
        numel: n,
    };
    put_zstd_record(&head, RecordKind::FileZstd, &z, &mut out)?;
    Ok(out)
}

pub(crate) fn decode(
    c: &mut Cursor<'_>,
    header: &RecordHeader,
    _limits: &Limits,
) -> Result<Record> {
    let raw = raw_size(header.numel, header.dtype.size())?;
    Ok(Record::Full {
        dtype: header.dtype,
        bytes: decode_zstd_payload(c, raw)?,
    })
}

pub(crate) fn cost(_c: &mut Cursor<'_>) -> Option<RecordCost> {
    None
}
