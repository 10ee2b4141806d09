//! Kind 2, `xor-zstd`: a lossless delta, the fine-tuned bytes XOR the base bytes, byte-plane shuffled, zstd
//! (docs/FORMAT.md, "Kinds 2, 3, 4"). [`crate::Record::XorDelta`] holds it; [`decode_xor_into`] decodes it
//! straight into the rebuilt tensor.

use rayon::prelude::*;
use ultradelta_core::DType;

use super::common::Head;
use crate::coded::RecordCost;
use crate::lossless::{put_shuffled_record, read_shuffled_payload, zstd_frames, zstd_payload};
use crate::record::{decode_header_at, Cursor, RecordHeader};
use crate::{Error, Limits, Record, RecordKind, Result};

/// Fixed part of a zstd payload: the compressed length.
pub(crate) const FIXED_BYTES: usize = 8;

/// Writes header and payload of an `xor-zstd` record of `xor_bytes` (the plain XOR, of `dtype`).
pub(crate) fn encode(
    dtype: DType,
    xor_bytes: &[u8],
    head: &Head<'_>,
    zstd_level: i32,
    out: &mut Vec<u8>,
) -> Result<()> {
    put_shuffled_record(RecordKind::XorZstd, dtype, xor_bytes, head, zstd_level, out)
}

pub(crate) fn decode(
    c: &mut Cursor<'_>,
    header: &RecordHeader,
    _limits: &Limits,
) -> Result<Record> {
    Ok(Record::XorDelta {
        dtype: header.dtype,
        xor_bytes: read_shuffled_payload(c, header)?,
    })
}

pub(crate) fn cost(_c: &mut Cursor<'_>) -> Option<RecordCost> {
    None
}

/// What the lossless delta kinds' straight-into-`out` decoders share ([`decode_xor_into`],
/// [`super::diff_zstd::decode_diff_into`]): the record's header checked to be of `kind` and of `out`'s byte size
/// (`base` too) before anything is allocated, then its zstd payload decompressed into the first `out.len()` bytes
/// of `planes` (grown as needed; frames that declare their sizes, as the writer's do, in parallel).
pub(crate) fn decompress_planes_into(
    bytes: &[u8],
    limits: &Limits,
    kind: RecordKind,
    base: &[u8],
    out: &[u8],
    planes: &mut Vec<u8>,
) -> Result<RecordHeader> {
    let bad = |d: String| Error::stream("record", d);
    let mut c = Cursor::new(bytes);
    let header = decode_header_at(&mut c, limits)?;
    if header.kind != kind {
        return Err(bad(format!(
            "expected an {} record, found {}",
            kind.name(),
            header.kind.name()
        )));
    }
    let size = header.dtype.size();
    let raw = header.numel.checked_mul(size as u64);
    if raw != Some(out.len() as u64) || base.len() != out.len() {
        return Err(bad(format!(
            "{} elements of {size} bytes for a tensor of {} bytes",
            header.numel,
            out.len()
        )));
    }
    let z = zstd_payload(&mut c)?;
    if planes.len() < out.len() {
        planes.resize(out.len(), 0);
    }
    let planes = &mut planes[..out.len()];
    let decompress = |src: &[u8], dst: &mut [u8]| -> Result<()> {
        let n = zstd::bulk::Decompressor::new()
            .and_then(|mut d| d.decompress_to_buffer(src, dst))
            .map_err(|e| Error::stream("zstd", format!("{e}")))?;
        if n != dst.len() {
            return Err(Error::stream(
                "zstd",
                format!("decompressed to {n} bytes, expected {}", dst.len()),
            ));
        }
        Ok(())
    };
    match zstd_frames(z, planes.len()) {
        // frames that declare their sizes (as the writer's do) are decompressed in parallel, each into its place
        Some(frames) => {
            let mut dsts = Vec::with_capacity(frames.len());
            let mut rest = &mut planes[..];
            for (_, size) in &frames {
                let (dst, tail) = rest.split_at_mut(*size);
                dsts.push(dst);
                rest = tail;
            }
            frames
                .into_par_iter()
                .zip(dsts)
                .try_for_each(|((src, _), dst)| decompress(&z[src], dst))?;
        }
        None => decompress(z, planes)?,
    }
    Ok(header)
}

/// Decodes an `xor-zstd` record straight into `out`: `out = base XOR bits`, with the bits
/// [`decode_record`](crate::decode_record) returns as [`Record::XorDelta`], without allocating per record: the shuffled planes are decompressed into `planes`
/// (working memory the caller keeps between calls; grown as needed, any contents) and unshuffled on the fly, in
/// parallel. `base` and `out` must both be the record's byte size (`numel` times the dtype size), which is checked
/// before anything is allocated. Returns the record's header.
///
/// # Errors
/// [`Error::InvalidStream`] (streams `"record"`, `"zstd"`): another kind, a size other than `out`'s, or a payload
/// that does not decompress to exactly that size.
pub fn decode_xor_into(
    bytes: &[u8],
    limits: &Limits,
    base: &[u8],
    out: &mut [u8],
    planes: &mut Vec<u8>,
) -> Result<RecordHeader> {
    let header = decompress_planes_into(bytes, limits, RecordKind::XorZstd, base, out, planes)?;
    let planes = &planes[..out.len()];
    let size = header.dtype.size();
    let numel = out.len() / size.max(1);
    // out[i * size + j] = base[i * size + j] ^ planes[j * numel + i], as `unshuffle` then XOR
    const UNIT: usize = 1 << 16;
    out.par_chunks_mut(UNIT * size)
        .zip(base.par_chunks(UNIT * size))
        .enumerate()
        .for_each(|(u, (o, b))| {
            let i0 = u * UNIT;
            let m = o.len() / size;
            for j in 0..size {
                let plane = &planes[j * numel + i0..j * numel + i0 + m];
                for (k, &x) in plane.iter().enumerate() {
                    o[k * size + j] = b[k * size + j] ^ x;
                }
            }
        });
    Ok(header)
}
