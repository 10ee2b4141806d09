//! What the lossless kinds (2, 3, 4, 15) share: the byte-plane shuffle, zstd in fixed-size frames compressed in
//! parallel, and the level small tensors get (docs/FORMAT.md, "Kinds 2, 3, 4, 15: zstd payloads").

use std::io::Read;

use rayon::prelude::*;

use crate::record::{Cursor, RecordHeader};
use crate::{Error, Result};

/// Byte-plane shuffle: for elements of `size` bytes, all byte 0s, then all byte 1s, ... `bytes.len()` must be a
/// multiple of `size`.
pub(crate) fn shuffle(bytes: &[u8], size: usize) -> Vec<u8> {
    if size <= 1 {
        return bytes.to_vec();
    }
    let n = bytes.len() / size;
    let mut out = vec![0u8; bytes.len()];
    // Planes, and blocks of elements within each, in parallel (large embeddings are kept losslessly).
    const BLOCK: usize = 1 << 16;
    out.par_chunks_exact_mut(n.max(1))
        .enumerate()
        .take(size)
        .for_each(|(j, plane)| {
            plane
                .par_chunks_mut(BLOCK)
                .zip(bytes.par_chunks(BLOCK * size))
                .for_each(|(dst, src)| {
                    for (d, s) in dst.iter_mut().zip(src.chunks_exact(size)) {
                        *d = s[j];
                    }
                });
        });
    out
}

/// Inverse of [`shuffle`].
pub(crate) fn unshuffle(planes: &[u8], size: usize) -> Vec<u8> {
    if size <= 1 {
        return planes.to_vec();
    }
    let n = planes.len() / size;
    let mut out = vec![0u8; planes.len()];
    for (j, plane) in planes.chunks_exact(n.max(1)).enumerate().take(size) {
        for (i, &src) in plane.iter().enumerate() {
            out[i * size + j] = src;
        }
    }
    out
}

/// Input bytes per zstd frame. Data is cut at fixed multiples of this size and the frames are compressed in
/// parallel, so the output does not depend on the number of threads.
pub(crate) const ZSTD_FRAME_BYTES: usize = 16 << 20;

pub(crate) fn zstd_compress(data: &[u8], level: i32) -> Result<Vec<u8>> {
    compress_in_frames(data.len(), |r| zstd_frame(&data[r], level))
}

/// One zstd frame of `chunk` at `level`.
fn zstd_frame(chunk: &[u8], level: i32) -> Result<Vec<u8>> {
    zstd::bulk::compress(chunk, level)
        .map_err(|e| Error::stream("zstd", format!("compression failed: {e}")))
}

/// The frames of `len` input bytes cut at multiples of [`ZSTD_FRAME_BYTES`] (one frame when it is at most that),
/// each made by `frame(range)`, in parallel, concatenated in order: the layout every zstd payload of the lossless
/// kinds has, whatever the input's source.
fn compress_in_frames(
    len: usize,
    frame: impl Fn(std::ops::Range<usize>) -> Result<Vec<u8>> + Sync,
) -> Result<Vec<u8>> {
    if len <= ZSTD_FRAME_BYTES {
        return frame(0..len);
    }
    let frames: Vec<Vec<u8>> = (0..len.div_ceil(ZSTD_FRAME_BYTES))
        .into_par_iter()
        .map(|k| frame(k * ZSTD_FRAME_BYTES..((k + 1) * ZSTD_FRAME_BYTES).min(len)))
        .collect::<Result<_>>()?;
    Ok(frames.concat())
}

/// Decompresses a zstd stream that must expand to exactly `expected` bytes. Memory grows with the actual output
/// (never pre-allocated from a declared size beyond 64 MiB), and decoding stops one byte past `expected`.
pub(crate) fn zstd_decompress_exact(data: &[u8], expected: u64) -> Result<Vec<u8>> {
    let mut dec = zstd::stream::read::Decoder::with_buffer(data)
        .map_err(|e| Error::stream("zstd", format!("cannot start decoder: {e}")))?;
    let initial = expected.min(64 << 20) as usize;
    let mut out = Vec::with_capacity(initial);
    (&mut dec)
        .take(expected.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| Error::stream("zstd", format!("{e}")))?;
    if out.len() as u64 != expected {
        return Err(Error::stream(
            "zstd",
            format!(
                "decompressed to {}{} bytes, expected {expected}",
                if out.len() as u64 > expected {
                    "more than "
                } else {
                    ""
                },
                out.len()
                    .min(usize::try_from(expected).unwrap_or(usize::MAX))
            ),
        ));
    }
    Ok(out)
}

/// The zstd stream of a lossless payload: its declared compressed length must be exactly the bytes that follow.
/// Streams the zstd frames of `data`, which must decompress to exactly `expected` bytes, through `sink(at,
/// chunk)` in 64 KiB pieces: memory is the piece, whatever the frames declare.
pub(crate) fn zstd_stream_exact(
    data: &[u8],
    expected: u64,
    mut sink: impl FnMut(u64, &[u8]),
) -> Result<()> {
    let mut dec = zstd::stream::read::Decoder::with_buffer(data)
        .map_err(|e| Error::stream("zstd", format!("cannot start decoder: {e}")))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0u64;
    loop {
        let n = dec
            .read(&mut buf)
            .map_err(|e| Error::stream("zstd", format!("{e}")))?;
        if n == 0 {
            break;
        }
        if at + n as u64 > expected {
            return Err(Error::stream(
                "zstd",
                format!("decompressed to more than {expected} bytes, expected {expected}"),
            ));
        }
        sink(at, &buf[..n]);
        at += n as u64;
    }
    if at != expected {
        return Err(Error::stream(
            "zstd",
            format!("decompressed to {at} bytes, expected {expected}"),
        ));
    }
    Ok(())
}

/// Decompresses byte-plane-shuffled `data` (elements of `size` bytes) straight into `out` (exactly the raw
/// size), unshuffling each piece as it arrives ([`spread`]): no buffer of the tensor's size besides `out`.
pub(crate) fn zstd_unshuffle_into(data: &[u8], size: usize, out: &mut [u8]) -> Result<()> {
    zstd_stream_exact(data, out.len() as u64, |at, piece| {
        spread(piece, at as usize, size, None, out)
    })
}

/// Writes `planes`, the bytes at `at..` of a byte-plane-ordered stream of `size`-byte elements (all of plane 0,
/// then plane 1, ...), to their places in `out`: byte `j` of element `i` at `i * size + j`, XORed with `xor_base`'s
/// byte there when given (`out`'s length). In parallel over elements, one plane's run at a time.
pub(crate) fn spread(
    planes: &[u8],
    at: usize,
    size: usize,
    xor_base: Option<&[u8]>,
    out: &mut [u8],
) {
    const UNIT: usize = 1 << 16;
    let numel = out.len() / size.max(1);
    let mut done = 0;
    while done < planes.len() {
        let p = at + done;
        let (j, i0) = (p / numel, p % numel);
        let run = (numel - i0).min(planes.len() - done);
        let src = &planes[done..done + run];
        let range = i0 * size..(i0 + run) * size;
        let out = out[range.clone()].par_chunks_mut(UNIT * size);
        match xor_base {
            Some(base) => out
                .zip(base[range].par_chunks(UNIT * size))
                .zip(src.par_chunks(UNIT))
                .for_each(|((o, b), s)| {
                    for (k, &x) in s.iter().enumerate() {
                        o[k * size + j] = b[k * size + j] ^ x;
                    }
                }),
            None => out.zip(src.par_chunks(UNIT)).for_each(|(o, s)| {
                for (k, &x) in s.iter().enumerate() {
                    o[k * size + j] = x;
                }
            }),
        }
        done += run;
    }
}

/// The header of a lossless record decoded straight into an output buffer (kinds 2, 3, 15), checked before
/// anything is allocated: of `kind`, and of `out_len` bytes (`numel` times the dtype size), as the base is
/// (`base_len`) for a delta.
pub(crate) fn lossless_header(
    c: &mut Cursor<'_>,
    limits: &crate::Limits,
    kind: crate::RecordKind,
    out_len: usize,
    base_len: Option<usize>,
) -> Result<RecordHeader> {
    let bad = |d: String| Error::stream("record", d);
    let header = crate::record::decode_header_at(c, limits)?;
    if header.kind != kind {
        return Err(bad(format!(
            "expected a {} record, found {}",
            kind.name(),
            header.kind.name()
        )));
    }
    let size = header.dtype.size();
    if header.numel.checked_mul(size as u64) != Some(out_len as u64) {
        return Err(bad(format!(
            "record holds {} elements of {size} bytes, the output is {out_len} bytes",
            header.numel
        )));
    }
    if let Some(b) = base_len.filter(|&b| b != out_len) {
        return Err(bad(format!("the base is {b} bytes, the output {out_len}")));
    }
    Ok(header)
}

pub(crate) fn zstd_payload<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8]> {
    let clen = c.u64("compressed length")?;
    if clen != c.left() {
        return Err(Error::stream(
            "record",
            format!(
                "compressed length {clen} but {} payload bytes follow",
                c.left()
            ),
        ));
    }
    c.take(clen, "zstd frame")
}

/// The frames of a zstd stream as (compressed byte range, declared content size) when each declares its content
/// size and they add up to `total` (one frame or more); `None` otherwise (the stream is then decompressed as a
/// stream, which also reports any error). zstd checks each frame against its declared size.
pub(crate) fn zstd_frames(z: &[u8], total: usize) -> Option<Vec<(std::ops::Range<usize>, usize)>> {
    let mut frames = Vec::new();
    let (mut at, mut sum) = (0usize, 0usize);
    while at < z.len() {
        let rest = &z[at..];
        let len = zstd::zstd_safe::find_frame_compressed_size(rest).ok()?;
        if len == 0 || len > rest.len() {
            return None;
        }
        let size = zstd::zstd_safe::get_frame_content_size(&rest[..len]).ok()??;
        let size = usize::try_from(size).ok()?;
        sum = sum.checked_add(size).filter(|&s| s <= total)?;
        frames.push((at..at + len, size));
        at += len;
    }
    (sum == total && !frames.is_empty()).then_some(frames)
}

/// Decompresses the zstd payload in `c` (its length field and frames) to exactly `expected` bytes.
pub(crate) fn decode_zstd_payload(c: &mut Cursor<'_>, expected: u64) -> Result<Vec<u8>> {
    zstd_decompress_exact(zstd_payload(c)?, expected)
}

/// The byte size of `numel` elements of `size` bytes, as a decoding error on overflow.
pub(crate) fn raw_size(numel: u64, size: usize) -> Result<u64> {
    let size = size as u64;
    numel.checked_mul(size).ok_or_else(|| {
        Error::stream(
            "record",
            format!("{numel} elements of {size} bytes overflow"),
        )
    })
}

/// Raw bytes up to which a lossless tensor record is compressed at level 19 or more ([`tensor_zstd_level`]).
pub const SMALL_LOSSLESS_BYTES: usize = 256 << 10;

/// The zstd level a lossless tensor record of `raw_len` bytes is compressed at, given the archive's `zstd_level`:
/// at least 19 up to [`SMALL_LOSSLESS_BYTES`] (norms, biases, small tables: a few milliseconds each, and 2–3 %
/// smaller than at level 1 on the testbed's fine-tunes), the archive's level above.
pub fn tensor_zstd_level(raw_len: usize, zstd_level: i32) -> i32 {
    if raw_len <= SMALL_LOSSLESS_BYTES {
        zstd_level.max(19)
    } else {
        zstd_level
    }
}

/// The stored form of a lossless tensor record's raw bytes (elements of `size` bytes): byte-plane shuffled, then
/// zstd at [`tensor_zstd_level`].
pub(crate) fn compress_planes(bytes: &[u8], size: usize, zstd_level: i32) -> Result<Vec<u8>> {
    zstd_compress(
        &shuffle(bytes, size),
        tensor_zstd_level(bytes.len(), zstd_level),
    )
}

/// [`compress_planes`] of `len` raw bytes of `size`-byte elements that are never built whole: `fill(start, out)`
/// writes the byte-plane shuffled bytes `start..start + out.len()` (plane `j` of element `i` at `j * n + i`, `n`
/// elements), one zstd frame's worth at a time. The same frames as [`compress_planes`], so the same bytes; memory is
/// the frames being compressed and the output.
pub(crate) fn compress_planes_with(
    len: usize,
    zstd_level: i32,
    fill: impl Fn(usize, &mut [u8]) + Sync,
) -> Result<Vec<u8>> {
    let level = tensor_zstd_level(len, zstd_level);
    compress_in_frames(len, |r| {
        let mut buf = vec![0u8; r.len()];
        fill(r.start, &mut buf);
        zstd_frame(&buf, level)
    })
}

/// The byte-plane shuffled bytes `start..start + out.len()` ([`shuffle`]'s order) of the `len` raw bytes of
/// `size`-byte elements whose element `i` is `elem(i)` (little-endian in a `u64`): [`compress_planes_with`]'s
/// `fill` for forms computed element by element (a bitwise XOR, a bit difference). Runs over one plane at a time.
pub(crate) fn fill_planes(
    len: usize,
    size: usize,
    start: usize,
    out: &mut [u8],
    elem: impl Fn(usize) -> u64,
) {
    let n = len / size.max(1);
    let (mut p, mut o) = (start, 0);
    while o < out.len() {
        let (j, i0) = if size <= 1 { (0, p) } else { (p / n, p % n) };
        let run = (n - i0).min(out.len() - o);
        let shift = 8 * j as u32;
        for (k, d) in out[o..o + run].iter_mut().enumerate() {
            *d = (elem(i0 + k) >> shift) as u8;
        }
        p += run;
        o += run;
    }
}

/// Element `i` of `bytes` (elements of `size` bytes, little-endian) as a `u64`.
#[inline(always)]
pub(crate) fn element(bytes: &[u8], size: usize, i: usize) -> u64 {
    let at = i * size;
    match size {
        1 => u64::from(bytes[at]),
        2 => u64::from(u16::from_le_bytes([bytes[at], bytes[at + 1]])),
        4 => u64::from(u32::from_le_bytes([
            bytes[at],
            bytes[at + 1],
            bytes[at + 2],
            bytes[at + 3],
        ])),
        _ => {
            let mut w = [0u8; 8];
            w[..size].copy_from_slice(&bytes[at..at + size]);
            u64::from_le_bytes(w)
        }
    }
}

/// Checks a lossless record's raw bytes against the tensor (`dtype` is the record's own): the same dtype, and
/// exactly the tensor's elements.
pub(crate) fn check_tensor_bytes(
    dtype: ultradelta_core::DType,
    bytes: &[u8],
    head: &crate::kinds::Head<'_>,
) -> Result<()> {
    if dtype != head.dtype {
        return Err(Error::record(format!(
            "record dtype {} differs from the tensor's dtype {}",
            dtype.name(),
            head.dtype.name()
        )));
    }
    let numel = head.numel;
    let expected = numel
        .checked_mul(head.dtype.size() as u64)
        .ok_or_else(|| Error::record("byte size overflows u64"))?;
    if bytes.len() as u64 != expected {
        return Err(Error::record(format!(
            "{} bytes for {numel} elements of {} (expected {expected})",
            bytes.len(),
            head.dtype.name()
        )));
    }
    Ok(())
}

/// Checks a lossless record's raw bytes against the tensor ([`check_tensor_bytes`]), and returns them byte-plane
/// shuffled and compressed.
pub(crate) fn compress_tensor_bytes(
    dtype: ultradelta_core::DType,
    bytes: &[u8],
    head: &crate::kinds::Head<'_>,
    zstd_level: i32,
) -> Result<Vec<u8>> {
    check_tensor_bytes(dtype, bytes, head)?;
    compress_planes(bytes, head.dtype.size(), zstd_level)
}

/// Writes the header of a `kind` record and its zstd payload `z`.
pub(crate) fn put_zstd_record(
    head: &crate::kinds::Head<'_>,
    kind: crate::RecordKind,
    z: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    head.put(out, kind)?;
    out.extend_from_slice(&(z.len() as u64).to_le_bytes());
    out.extend_from_slice(z);
    Ok(())
}

/// Writes the header of a `kind` record, the payload's `fixed` fields, then the zstd payload `z` (its length
/// field and frames).
pub(crate) fn put_zstd_record_after(
    head: &crate::kinds::Head<'_>,
    kind: crate::RecordKind,
    fixed: &[u8],
    z: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    head.put(out, kind)?;
    out.extend_from_slice(fixed);
    out.extend_from_slice(&(z.len() as u64).to_le_bytes());
    out.extend_from_slice(z);
    Ok(())
}

/// Writes a whole `kind` record of a tensor's raw lossless bytes (kinds 2, 3, 15): `bytes` checked against the
/// tensor ([`compress_tensor_bytes`]), byte-plane shuffled, zstd, after the record's header and length field.
pub(crate) fn put_shuffled_record(
    kind: crate::RecordKind,
    dtype: ultradelta_core::DType,
    bytes: &[u8],
    head: &crate::kinds::Head<'_>,
    zstd_level: i32,
    out: &mut Vec<u8>,
) -> Result<()> {
    let z = compress_tensor_bytes(dtype, bytes, head, zstd_level)?;
    put_zstd_record(head, kind, &z, out)
}

/// Reads the payload of a byte-plane shuffled zstd record (kinds 2, 3, 15): the tensor's raw bytes, unshuffled.
/// When the cursor only checks, every check is made (frames, exact size) and nothing is kept: the bytes returned
/// are empty and memory is a 64 KiB piece.
pub(crate) fn read_shuffled_payload(c: &mut Cursor<'_>, header: &RecordHeader) -> Result<Vec<u8>> {
    let raw = raw_size(header.numel, header.dtype.size())?;
    if c.check_only {
        zstd_stream_exact(zstd_payload(c)?, raw, |_, _| {})?;
        return Ok(Vec::new());
    }
    let planes = decode_zstd_payload(c, raw)?;
    Ok(unshuffle(&planes, header.dtype.size()))
}

/// zstd with raw content that both sides hold (a prefix in zstd's terms: the frame may copy from it as if it
/// came just before the data). One frame per payload, with its content checksum.
pub(crate) struct ZstdDict<'a> {
    prefix: &'a [u8],
}

fn zstd_err(what: &str, code: usize) -> Error {
    Error::stream(
        "zstd",
        format!("{what}: {}", zstd::zstd_safe::get_error_name(code)),
    )
}

impl<'a> ZstdDict<'a> {
    pub(crate) fn new(prefix: &'a [u8]) -> Self {
        ZstdDict { prefix }
    }

    /// One frame of `data` at `level`, referencing the prefix.
    pub(crate) fn compress(&self, data: &[u8], level: i32) -> Result<Vec<u8>> {
        use zstd::zstd_safe::{CCtx, CParameter};
        let mut cctx = CCtx::create();
        cctx.set_parameter(CParameter::CompressionLevel(level))
            .map_err(|c| zstd_err("cannot set the level", c))?;
        cctx.set_parameter(CParameter::ChecksumFlag(true))
            .map_err(|c| zstd_err("cannot set the checksum flag", c))?;
        cctx.ref_prefix(self.prefix)
            .map_err(|c| zstd_err("cannot reference the base file", c))?;
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
        cctx.compress2(&mut out, data)
            .map_err(|c| zstd_err("compression failed", c))?;
        Ok(out)
    }

    /// Decompresses `z`, exactly one frame made with this prefix, to exactly `expected` bytes. Memory grows with
    /// the actual output (never pre-allocated from `expected` beyond 64 MiB); decoding stops as soon as the
    /// output would pass `expected`.
    pub(crate) fn decompress_exact(&self, z: &[u8], expected: u64) -> Result<Vec<u8>> {
        use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer};
        let mut dctx = DCtx::create();
        dctx.ref_prefix(self.prefix)
            .map_err(|c| zstd_err("cannot reference the base file", c))?;
        let mut out: Vec<u8> = Vec::with_capacity(expected.min(64 << 20) as usize);
        let mut buf = vec![0u8; 1 << 16];
        let mut input = InBuffer::around(z);
        loop {
            let mut ob = OutBuffer::around(&mut buf[..]);
            let hint = dctx
                .decompress_stream(&mut ob, &mut input)
                .map_err(|c| zstd_err("decompression failed", c))?;
            let n = ob.pos();
            if out.len() as u64 + n as u64 > expected {
                return Err(Error::stream(
                    "zstd",
                    format!("decompressed to more than {expected} bytes, expected {expected}"),
                ));
            }
            out.extend_from_slice(&buf[..n]);
            if hint == 0 {
                break;
            }
            if n == 0 && input.pos() == z.len() {
                return Err(Error::stream("zstd", "the frame ends early"));
            }
        }
        if input.pos() != z.len() {
            return Err(Error::stream(
                "zstd",
                format!("{} bytes follow the frame", z.len() - input.pos()),
            ));
        }
        if out.len() as u64 != expected {
            return Err(Error::stream(
                "zstd",
                format!("decompressed to {} bytes, expected {expected}", out.len()),
            ));
        }
        Ok(out)
    }
}
