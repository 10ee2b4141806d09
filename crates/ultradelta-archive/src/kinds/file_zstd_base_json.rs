//! Kind 14, `file-zstd-base-json`: a JSON companion file compressed with the base model's file of the same name,
//! re-laid out in the fine-tune's whitespace layout ([`crate::json_layout::relayout`]), as zstd's dictionary
//! (docs/FORMAT.md, "Kind 14"). For the fine-tune that pretty-prints the base's compact `tokenizer.json`: kind 13
//! finds only short matches (158 KB of MiniLM's 712 KB), this kind a few hundred bytes. Like kind 13, the payload
//! names the base file by size and xxh3-64 and decodes only with those exact bytes.

use xxhash_rust::xxh3::xxh3_64;

use super::file_zstd_base::{base_ref, check_base, put_against, BaseFileRef};
use crate::coded::RecordCost;
use crate::json_layout::{relayout, MAX_INDENT};
use crate::lossless::{zstd_payload, ZstdDict};
use crate::record::{Cursor, RecordHeader};
use crate::{Error, Limits, Record, RecordKind, Result};

/// Fixed part of the payload: base file size and xxh3-64, indent, dictionary size and xxh3-64, compressed length.
pub(crate) const FIXED_BYTES: usize = 8 + 8 + 1 + 8 + 8 + 8;

/// The re-laid-out base a record was compressed against.
struct Layout {
    indent: u8,
    size: u64,
    xxh3: u64,
}

/// Encodes JSON companion file `bytes` against the base's file `base` re-laid out with `indent` spaces (0:
/// compact), header and payload, with the base file's reference; `None` when the re-laid-out base would pass
/// `max_len` bytes.
pub(crate) fn encode(
    bytes: &[u8],
    base: &[u8],
    indent: u8,
    max_len: u64,
    zstd_level: i32,
) -> Result<Option<(Vec<u8>, BaseFileRef)>> {
    let Some(dict) = relayout(base, indent, max_len) else {
        return Ok(None);
    };
    let z = ZstdDict::new(&dict).compress(bytes, zstd_level)?;
    let reference = BaseFileRef::of(base);
    let mut extra = vec![indent];
    extra.extend_from_slice(&(dict.len() as u64).to_le_bytes());
    extra.extend_from_slice(&xxh3_64(&dict).to_le_bytes());
    let out = put_against(
        RecordKind::FileZstdBaseJson,
        bytes.len() as u64,
        reference,
        &extra,
        &z,
    )?;
    Ok(Some((out, reference)))
}

/// The payload's fields after the base file's reference.
fn layout(c: &mut Cursor<'_>, limits: &Limits) -> Result<Layout> {
    let indent = c.u8("indent")?;
    let size = c.u64("dictionary size")?;
    let xxh3 = c.u64("dictionary xxh3")?;
    if indent > MAX_INDENT {
        return Err(Error::stream(
            "record",
            format!("indent {indent} above {MAX_INDENT}"),
        ));
    }
    if size > limits.max_file_bytes {
        return Err(Error::stream(
            "record",
            format!(
                "a re-laid-out base file of {size} bytes (the limit for a companion file is {})",
                limits.max_file_bytes
            ),
        ));
    }
    Ok(Layout { indent, size, xxh3 })
}

/// Decodes the payload with `base`, the bytes of the base model's file it names: `base` must have the declared
/// size and xxh3-64, re-laid out it must have the declared size and xxh3-64 (computed with the output capped at
/// that size), and the frame must expand to exactly `header.numel` bytes.
pub(crate) fn decode_with_base(
    c: &mut Cursor<'_>,
    header: &RecordHeader,
    limits: &Limits,
    base: &[u8],
) -> Result<(BaseFileRef, Vec<u8>)> {
    let want = check_base(c, base)?;
    let l = layout(c, limits)?;
    let z = zstd_payload(c)?;
    let dict = relayout(base, l.indent, l.size)
        .filter(|d| d.len() as u64 == l.size && xxh3_64(d) == l.xxh3)
        .ok_or_else(|| {
            Error::stream(
                "record",
                format!(
                    "the base file re-laid out with indent {} is not the {} bytes with xxh3 {:016x} the record \
                     was compressed against",
                    l.indent, l.size, l.xxh3
                ),
            )
        })?;
    Ok((
        want,
        ZstdDict::new(&dict).decompress_exact(z, header.numel)?,
    ))
}

/// Without the base's file the payload cannot be decoded: its fields and frame are checked, nothing expanded.
pub(crate) fn decode(
    c: &mut Cursor<'_>,
    _header: &RecordHeader,
    limits: &Limits,
) -> Result<Record> {
    check(c, limits)?;
    Err(Error::stream(
        "record",
        "a file-zstd-base-json record decodes only with the base model's file it names \
         (ArchiveReader::read_file_with_base)",
    ))
}

/// Checks the payload's fixed fields and that the zstd stream's length is the bytes present.
pub(crate) fn check(c: &mut Cursor<'_>, limits: &Limits) -> Result<BaseFileRef> {
    let r = base_ref(c)?;
    layout(c, limits)?;
    zstd_payload(c)?;
    Ok(r)
}

pub(crate) fn cost(_c: &mut Cursor<'_>) -> Option<RecordCost> {
    None
}
