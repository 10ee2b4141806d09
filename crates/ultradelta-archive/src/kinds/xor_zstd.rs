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

/// The largest zstd frame [`decompress_planes_into`] decompresses whole: 64 MiB (the writer's are 16 MiB).
const MAX_BATCH_FRAME: usize = 64 << 20;

/// What the lossless delta kinds' straight-into-`out` decoders share ([`decode_xor_into`],
/// [`super::diff_zstd::decode_diff_into`]): the record's header checked to be of `kind` and of `out`'s byte size
/// (`base` too) before anything is allocated, then its zstd payload decompressed and each byte written at its
/// element's place, `out[i * size + j]` for byte `j` of element `i` — XORed with `base`'s byte there when `xor`.
/// Frames that declare their sizes, each at most [`MAX_BATCH_FRAME`] (as the writer's do), are decompressed a batch
/// at a time, one frame per thread, into `scratch` (grown as needed: a batch of frames, not the tensor), then spread
/// over `out` in parallel; others stream in 64 KiB pieces. On an error `out` holds unspecified bytes.
pub(crate) fn decompress_planes_into(
    bytes: &[u8],
    limits: &Limits,
    kind: RecordKind,
    base: &[u8],
    out: &mut [u8],
    scratch: &mut Vec<u8>,
    xor: bool,
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
    // frames of at most MAX_BATCH_FRAME (the writer's are 16 MiB) go in batches; a stream with a larger or
    // undeclared one streams
    let framed = zstd_frames(z, out.len())
        .filter(|frames| frames.iter().all(|&(_, n)| n <= MAX_BATCH_FRAME));
    match framed {
        Some(frames) => {
            let mut at = 0usize;
            for batch in frames.chunks(rayon::current_num_threads().max(1)) {
                let len: usize = batch.iter().map(|(_, n)| n).sum();
                if scratch.len() < len {
                    scratch.resize(len, 0);
                }
                let mut dsts = Vec::with_capacity(batch.len());
                let mut rest = &mut scratch[..len];
                for (_, n) in batch {
                    let (dst, tail) = rest.split_at_mut(*n);
                    dsts.push(dst);
                    rest = tail;
                }
                batch
                    .par_iter()
                    .zip(dsts)
                    .try_for_each(|((src, _), dst)| decompress(&z[src.clone()], dst))?;
                spread(&scratch[..len], at, size, base, out, xor);
                at += len;
            }
        }
        None => crate::lossless::zstd_stream_exact(z, out.len() as u64, |at, piece| {
            spread(piece, at as usize, size, base, out, xor)
        })?,
    }
    Ok(header)
}

/// Writes `planes`, the bytes at `at..` of a byte-plane-ordered stream of `size`-byte elements (all of plane 0,
/// then plane 1, ...), to their places in `out` (`base.len()` bytes): byte `j` of element `i` at `i * size + j`,
/// XORed with `base`'s byte there when `xor`. In parallel over elements, one plane's run at a time.
fn spread(planes: &[u8], at: usize, size: usize, base: &[u8], out: &mut [u8], xor: bool) {
    const UNIT: usize = 1 << 16;
    let numel = out.len() / size.max(1);
    let mut done = 0;
    while done < planes.len() {
        let p = at + done;
        let (j, i0) = (p / numel, p % numel);
        let run = (numel - i0).min(planes.len() - done);
        let src = &planes[done..done + run];
        let range = i0 * size..(i0 + run) * size;
        out[range.clone()]
            .par_chunks_mut(UNIT * size)
            .zip(base[range].par_chunks(UNIT * size))
            .zip(src.par_chunks(UNIT))
            .for_each(|((o, b), s)| {
                for (k, &x) in s.iter().enumerate() {
                    let at = k * size + j;
                    o[at] = if xor { b[at] ^ x } else { x };
                }
            });
        done += run;
    }
}

/// Decodes an `xor-zstd` record straight into `out`: `out = base XOR bits`, with the bits
/// [`decode_record`](crate::decode_record) returns as [`Record::XorDelta`], without allocating per record: the
/// shuffled planes are decompressed a batch of zstd frames at a time (one per thread) into `planes` (working memory
/// the caller keeps between calls; grown as needed, to a batch of frames rather than the tensor; any contents) and
/// unshuffled into `out` as they come, in parallel. `base` and `out` must both be the record's byte size (`numel`
/// times the dtype size), which is checked before anything is allocated. Returns the record's header.
///
/// # Errors
/// [`Error::InvalidStream`] (streams `"record"`, `"zstd"`): another kind, a size other than `out`'s, or a payload
/// that does not decompress to exactly that size; `out` then holds unspecified bytes.
pub fn decode_xor_into(
    bytes: &[u8],
    limits: &Limits,
    base: &[u8],
    out: &mut [u8],
    planes: &mut Vec<u8>,
) -> Result<RecordHeader> {
    decompress_planes_into(bytes, limits, RecordKind::XorZstd, base, out, planes, true)
}
