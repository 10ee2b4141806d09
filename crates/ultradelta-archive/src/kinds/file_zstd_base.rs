//! Kind 13, `file-zstd-base`: a companion file compressed with the base model's file of the same name as zstd's
//! dictionary (docs/FORMAT.md, "Kind 13"). A fine-tune's tokenizer and vocabulary are usually the base's, byte
//! for byte or nearly: stored this way they cost tens of bytes instead of hundreds of kilobytes. The payload
//! names the base file it needs by size and xxh3-64; it decodes only with those exact bytes
//! ([`decode_with_base`]), never through [`crate::decode_record`] alone.

use ultradelta_core::DType;
use xxhash_rust::xxh3::xxh3_64;

use super::common::Head;
use crate::coded::RecordCost;
use crate::lossless::{put_zstd_record_after, zstd_payload, ZstdDict};
use crate::record::{Cursor, RecordHeader};
use crate::{Error, Limits, Record, RecordKind, Result};

/// Fixed part of the payload: base file size, base file xxh3-64, compressed length.
pub(crate) const FIXED_BYTES: usize = 24;

/// The base model's file a kind-13 record was compressed against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseFileRef {
    /// Its size in bytes.
    pub size: u64,
    /// xxh3-64 of its bytes.
    pub xxh3: u64,
}

impl BaseFileRef {
    /// The reference of `bytes`.
    pub fn of(bytes: &[u8]) -> BaseFileRef {
        BaseFileRef {
            size: bytes.len() as u64,
            xxh3: xxh3_64(bytes),
        }
    }
}

/// Encodes companion file `bytes` against the base's file `base` (header + payload), and returns the base file's
/// reference with it. The zstd frame carries its content checksum, so a dictionary that is not the one compressed
/// against is caught even past the hash.
pub(crate) fn encode(bytes: &[u8], base: &[u8], zstd_level: i32) -> Result<(Vec<u8>, BaseFileRef)> {
    let n = bytes.len() as u64;
    // zstd treats a prefix that overlaps the data as part of the data's own window and finds nothing in it:
    // the same buffer passed twice gets a copy.
    let overlaps = {
        let (a, b) = (bytes.as_ptr_range(), base.as_ptr_range());
        a.start < b.end && b.start < a.end
    };
    let copy;
    let base_ref: &[u8] = if overlaps {
        copy = base.to_vec();
        &copy
    } else {
        base
    };
    let z = ZstdDict::new(base_ref).compress(bytes, zstd_level)?;
    let reference = BaseFileRef::of(base);
    let out = put_against(RecordKind::FileZstdBase, n, reference, &[], &z)?;
    Ok((out, reference))
}

/// A record of a companion file of `n` bytes stored against the base's file `reference` (kinds 13 and 14): header,
/// the reference, the kind's `extra` fixed fields, then the zstd payload `z`.
pub(crate) fn put_against(
    kind: RecordKind,
    n: u64,
    reference: BaseFileRef,
    extra: &[u8],
    z: &[u8],
) -> Result<Vec<u8>> {
    let head = Head {
        dtype: DType::U8,
        shape: &[],
        dims: &[n],
        numel: n,
    };
    let mut fixed = Vec::with_capacity(16 + extra.len());
    fixed.extend_from_slice(&reference.size.to_le_bytes());
    fixed.extend_from_slice(&reference.xxh3.to_le_bytes());
    fixed.extend_from_slice(extra);
    let mut out = Vec::with_capacity(12 + 8 + fixed.len() + 8 + z.len());
    put_zstd_record_after(&head, kind, &fixed, z, &mut out)?;
    Ok(out)
}

/// The base file a payload needs (its first 16 bytes).
pub(crate) fn base_ref(c: &mut Cursor<'_>) -> Result<BaseFileRef> {
    Ok(BaseFileRef {
        size: c.u64("base file size")?,
        xxh3: c.u64("base file xxh3")?,
    })
}

/// Reads the base file's reference and checks `base` against it: declared size and xxh3-64.
pub(crate) fn check_base(c: &mut Cursor<'_>, base: &[u8]) -> Result<BaseFileRef> {
    let want = base_ref(c)?;
    let got = BaseFileRef::of(base);
    if want != got {
        return Err(Error::stream(
            "record",
            format!(
                "compressed against a base file of {} bytes with xxh3 {:016x}, given {} bytes with xxh3 {:016x}",
                want.size, want.xxh3, got.size, got.xxh3
            ),
        ));
    }
    Ok(want)
}

/// Decodes the payload with `base`, the bytes of the base model's file it names: `base` must have the declared
/// size and xxh3-64, and the frame must expand to exactly `header.numel` bytes. Returns the reference the record
/// names with the bytes.
pub(crate) fn decode_with_base(
    c: &mut Cursor<'_>,
    header: &RecordHeader,
    base: &[u8],
) -> Result<(BaseFileRef, Vec<u8>)> {
    let want = check_base(c, base)?;
    let z = zstd_payload(c)?;
    Ok((want, ZstdDict::new(base).decompress_exact(z, header.numel)?))
}

/// Without the base's file the payload cannot be decoded: its fields and frame are checked, nothing expanded.
pub(crate) fn decode(
    c: &mut Cursor<'_>,
    _header: &RecordHeader,
    _limits: &Limits,
) -> Result<Record> {
    check(c)?;
    Err(Error::stream(
        "record",
        "a file-zstd-base record decodes only with the base model's file it names (ArchiveReader::read_file_with_base)",
    ))
}

/// Checks the payload's fixed fields and that the zstd stream's length is the bytes present.
pub(crate) fn check(c: &mut Cursor<'_>) -> Result<BaseFileRef> {
    let r = base_ref(c)?;
    zstd_payload(c)?;
    Ok(r)
}

pub(crate) fn cost(_c: &mut Cursor<'_>) -> Option<RecordCost> {
    None
}
