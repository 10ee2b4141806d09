//! Kind 2, `xor-zstd`: a lossless delta, the fine-tuned bytes XOR the base bytes, byte-plane shuffled, zstd
//! (docs/FORMAT.md, "Kinds 2, 3, 4"). [`crate::Record::XorDelta`] holds it; [`decode_xor_into`] decodes it
//! straight into the rebuilt tensor.

use rayon::prelude::*;
use ultradelta_core::DType;

use super::common::Head;
use crate::coded::RecordCost;
use crate::lossless::{
    lossless_header, put_shuffled_record, read_shuffled_payload, spread, zstd_frames, zstd_payload,
};
use crate::record::{Cursor, RecordHeader};
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
    let mut c = Cursor::new(bytes);
    let header = lossless_header(&mut c, limits, kind, out.len(), Some(base.len()))?;
    let size = header.dtype.size();
    let xor_base = xor.then_some(base);
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
                spread(&scratch[..len], at, size, xor_base, out);
                at += len;
            }
        }
        None => crate::lossless::zstd_stream_exact(z, out.len() as u64, |at, piece| {
            spread(piece, at as usize, size, xor_base, out)
        })?,
    }
    Ok(header)
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
