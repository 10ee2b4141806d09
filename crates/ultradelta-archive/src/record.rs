//! Record payloads and their byte encoding (docs/FORMAT.md, "Records").

use std::io::Read;

use rayon::prelude::*;

use ultradelta_core::DType;
use ultradelta_core::QuantParams;

use crate::coded::CodedSparseRecord;
use crate::kinds::{
    get_f16s, pack_bits, pack_levels, put_f16s, unpack_bits, DenseLevelsRecord, LowRankRecord,
    SignRecord, SparseValuesRecord,
};
use crate::manifest::{dtype_code, dtype_from_code, Limits, RecordKind};
use crate::{bitpack, golomb, Error, Result};

/// An UltraDelta sparse delta: kept positions and their quantization levels.
///
/// The value at `positions[i]` is `quant.dequantize(levels[i]) * scale` (f32 arithmetic, in that order); every
/// other entry is zero.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseRecord {
    /// Number of entries of the dense tensor.
    pub numel: u64,
    /// Quantizer of the levels.
    pub quant: QuantParams,
    /// Multiplier applied to every dequantized value (the rescaling factor).
    pub scale: f32,
    /// Kept positions (row-major flat indices), strictly increasing, below `numel`.
    pub positions: Vec<u64>,
    /// Level of each kept position, each below `2^quant.bits`.
    pub levels: Vec<u16>,
}

impl SparseRecord {
    /// The stored value of kept entry `i`: `quant.dequantize(levels[i]) * scale`.
    #[inline]
    pub fn value(&self, i: usize) -> f32 {
        self.quant.dequantize(self.levels[i]) * self.scale
    }

    /// Adds this record's values times `gamma` into `out`: `out[pos] += (dequantize(level) * scale) * gamma`.
    ///
    /// # Panics
    /// If `out.len() != numel`, or if the record was built by hand with a position `>= out.len()` or fewer levels
    /// than positions (records read from an archive are validated).
    pub fn add_into(&self, gamma: f32, out: &mut [f32]) {
        assert_eq!(
            out.len() as u64,
            self.numel,
            "output length {} differs from numel {}",
            out.len(),
            self.numel
        );
        for (&pos, &level) in self.positions.iter().zip(&self.levels) {
            out[pos as usize] += (self.quant.dequantize(level) * self.scale) * gamma;
        }
    }

    /// The dense delta: zeros except the kept values, each times `gamma`.
    ///
    /// # Panics
    /// If `numel` does not fit in memory addressing (`usize`), or as [`SparseRecord::add_into`].
    pub fn to_dense(&self, gamma: f32) -> Vec<f32> {
        let n = usize::try_from(self.numel).expect("numel exceeds usize");
        let mut out = vec![0.0f32; n];
        self.add_into(gamma, &mut out);
        out
    }

    /// Checks the invariants the format requires.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] describing the first violation.
    pub fn validate(&self) -> Result<()> {
        let q = &self.quant;
        if q.bits > 16 {
            return Err(Error::record(format!("bit width {} above 16", q.bits)));
        }
        if !q.lo.is_finite() || !q.step.is_finite() || !self.scale.is_finite() {
            return Err(Error::record(format!(
                "non-finite parameter (lo {}, step {}, scale {})",
                q.lo, q.step, self.scale
            )));
        }
        if self.positions.len() != self.levels.len() {
            return Err(Error::record(format!(
                "{} positions but {} levels",
                self.positions.len(),
                self.levels.len()
            )));
        }
        let limit = 1u32 << q.bits;
        if let Some((i, &l)) = self
            .levels
            .iter()
            .enumerate()
            .find(|&(_, &l)| u32::from(l) >= limit)
        {
            return Err(Error::record(format!(
                "levels[{i}] = {l} does not fit in {} bits",
                q.bits
            )));
        }
        golomb::validate_positions(&self.positions, self.numel)
    }
}

/// A record's payload, as a codec produces it and a reader returns it.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// UltraDelta sparse: positions as Golomb-coded gaps, levels bit-packed at `bits` bits.
    Sparse(SparseRecord),
    /// Lossless delta: bitwise XOR of the fine-tuned and base raw bytes (same dtype). Stored byte-plane shuffled
    /// and zstd-compressed; `xor_bytes` here is the plain (unshuffled) XOR.
    XorDelta {
        /// Dtype of both tensors.
        dtype: DType,
        /// `finetuned[i] ^ base[i]` for every byte.
        xor_bytes: Vec<u8>,
    },
    /// Whole fine-tuned tensor (no base counterpart): its raw little-endian bytes.
    Full {
        /// Its dtype.
        dtype: DType,
        /// Raw bytes.
        bytes: Vec<u8>,
    },
    /// Sparse delta with fp16 values (kind `sparse-f16`).
    SparseValues(SparseValuesRecord),
    /// Signs times one magnitude: `sparse-sign` with positions, `dense-sign` without.
    Sign(SignRecord),
    /// Low-rank fp16 factors (kind `lowrank-f16`).
    LowRank(LowRankRecord),
    /// Every entry's level, no positions (kind `dense-levels`).
    DenseLevels(DenseLevelsRecord),
    /// UltraDelta levels with seeded positions and/or rANS-coded levels (kinds 10–12).
    Coded(CodedSparseRecord),
}

impl Record {
    /// The record kind this payload is stored as.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Sparse(_) => RecordKind::SparseGolomb,
            Record::XorDelta { .. } => RecordKind::XorZstd,
            Record::Full { .. } => RecordKind::FullZstd,
            Record::SparseValues(_) => RecordKind::SparseF16,
            Record::Sign(r) if r.positions.is_some() => RecordKind::SparseSign,
            Record::Sign(_) => RecordKind::DenseSign,
            Record::LowRank(_) => RecordKind::LowrankF16,
            Record::DenseLevels(_) => RecordKind::DenseLevels,
            Record::Coded(c) => c.kind(),
        }
    }

    /// Whether this record is a lossy delta (every kind except the lossless `xor-zstd` and `full-zstd`).
    pub fn is_delta(&self) -> bool {
        !matches!(self, Record::XorDelta { .. } | Record::Full { .. })
    }

    /// Entries the record stores a value for: kept positions of sparse kinds, `numel` for dense ones (low-rank
    /// and lossless records included). `None` for lossless records, whose size the caller knows.
    pub fn kept(&self) -> Option<u64> {
        match self {
            Record::Sparse(s) => Some(s.positions.len() as u64),
            Record::SparseValues(s) => Some(s.positions.len() as u64),
            Record::Sign(s) => Some(s.kept()),
            Record::LowRank(r) => Some(r.numel()),
            Record::DenseLevels(d) => Some(d.levels.len() as u64),
            Record::Coded(c) => Some(c.kept()),
            Record::XorDelta { .. } | Record::Full { .. } => None,
        }
    }

    /// Adds this delta record times `gamma` into `out` (the one decoding path of every lossy kind).
    ///
    /// The record is validated first (cheap next to decoding), so a hand-built record cannot make it panic.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] if the record is lossless (it is not a delta), violates its kind's invariants, or
    /// `out` has the wrong length.
    pub fn add_delta_into(&self, gamma: f32, out: &mut [f32]) -> Result<()> {
        match self {
            Record::Sparse(s) => s.validate()?,
            Record::SparseValues(s) => s.validate()?,
            Record::Sign(s) => s.validate()?,
            Record::LowRank(r) => r.validate()?,
            Record::DenseLevels(d) => d.validate()?,
            Record::Coded(c) => c.validate()?,
            Record::XorDelta { .. } | Record::Full { .. } => {}
        }
        let numel = match self {
            Record::Sparse(s) => s.numel,
            Record::SparseValues(s) => s.numel,
            Record::Sign(s) => s.numel,
            Record::LowRank(r) => r.numel(),
            Record::DenseLevels(d) => d.levels.len() as u64,
            Record::Coded(c) => c.numel,
            Record::XorDelta { .. } | Record::Full { .. } => {
                return Err(Error::record(format!(
                    "a {} record is not a delta",
                    self.kind().name()
                )))
            }
        };
        if out.len() as u64 != numel {
            return Err(Error::record(format!(
                "output of {} entries for a record of {numel}",
                out.len()
            )));
        }
        match self {
            Record::Sparse(s) => s.add_into(gamma, out),
            Record::SparseValues(s) => s.add_into(gamma, out),
            Record::Sign(s) => s.add_into(gamma, out),
            Record::LowRank(r) => r.add_into(gamma, out),
            Record::DenseLevels(d) => d.add_into(gamma, out),
            Record::Coded(c) => c.add_into(gamma, out),
            Record::XorDelta { .. } | Record::Full { .. } => {}
        }
        Ok(())
    }

    /// The dense delta times `gamma`, for delta records of `numel` entries.
    ///
    /// # Errors
    /// As [`Record::add_delta_into`].
    pub fn delta_to_dense(&self, numel: usize, gamma: f32) -> Result<Vec<f32>> {
        let mut out = vec![0f32; numel];
        self.add_delta_into(gamma, &mut out)?;
        Ok(out)
    }
}

fn put_positions(out: &mut Vec<u8>, kept: u64, positions: &[u64], numel: u64) -> Result<Vec<u8>> {
    let (m, pos_bytes, pos_bits) = golomb::encode_positions(positions, numel)?;
    out.extend_from_slice(&kept.to_le_bytes());
    // The caller writes the 4-byte scale/magnitude right after `kept`; m and lengths follow it.
    let mut tail = Vec::with_capacity(24);
    tail.extend_from_slice(&m.to_le_bytes());
    tail.extend_from_slice(&pos_bits.to_le_bytes());
    tail.extend_from_slice(&(pos_bytes.len() as u64).to_le_bytes());
    tail.extend_from_slice(&pos_bytes);
    Ok(tail)
}

fn check_numel(kind: &str, got: u64, numel: u64, shape: &[usize]) -> Result<()> {
    if got != numel {
        return Err(Error::record(format!(
            "{kind} record has numel {got} but shape {shape:?} has {numel} elements"
        )));
    }
    Ok(())
}

/// `a[i] ^ b[i]` for every byte: builds an [`Record::XorDelta`] payload from base and fine-tuned bytes, and turns
/// it back into the fine-tuned bytes given the base.
///
/// # Errors
/// [`Error::InvalidRecord`] if the lengths differ.
pub fn xor_bytes(a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
    if a.len() != b.len() {
        return Err(Error::record(format!(
            "XOR of {} bytes with {} bytes",
            a.len(),
            b.len()
        )));
    }
    Ok(a.iter().zip(b).map(|(x, y)| x ^ y).collect())
}

/// Byte-plane shuffle: for elements of `size` bytes, all byte 0s, then all byte 1s, ... `bytes.len()` must be a
/// multiple of `size`.
pub fn shuffle(bytes: &[u8], size: usize) -> Vec<u8> {
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
pub fn unshuffle(planes: &[u8], size: usize) -> Vec<u8> {
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

/// The common header of every record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Record kind.
    pub kind: RecordKind,
    /// Element dtype (`U8` for companion files).
    pub dtype: DType,
    /// Shape (`[size]` for companion files).
    pub shape: Vec<u64>,
    /// Product of the shape.
    pub numel: u64,
}

/// Fixed part of a `sparse-golomb` payload after the common header, in bytes.
pub const SPARSE_FIXED_BYTES: usize = 8 + 1 + 4 + 4 + 4 + 8 + 8 + 8 + 8;

fn put_header(
    out: &mut Vec<u8>,
    kind: RecordKind,
    dtype: DType,
    shape: &[u64],
    numel: u64,
) -> Result<()> {
    let code = dtype_code(dtype)
        .ok_or_else(|| Error::record(format!("dtype {} has no code", dtype.name())))?;
    let ndim = u8::try_from(shape.len())
        .map_err(|_| Error::record(format!("{} dimensions (at most 255)", shape.len())))?;
    out.push(kind.code());
    out.push(code);
    out.push(ndim);
    out.push(0);
    for &d in shape {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&numel.to_le_bytes());
    Ok(())
}

fn shape_numel(shape: &[usize]) -> Result<(Vec<u64>, u64)> {
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let numel = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::record(format!("shape {shape:?} overflows u64")))?;
    Ok((dims, numel))
}

/// Input bytes per zstd frame. Data is cut at fixed multiples of this size and the frames are compressed in
/// parallel, so the output does not depend on the number of threads.
pub const ZSTD_FRAME_BYTES: usize = 16 << 20;

fn zstd_compress(data: &[u8], level: i32) -> Result<Vec<u8>> {
    let one = |chunk: &[u8]| {
        zstd::bulk::compress(chunk, level)
            .map_err(|e| Error::stream("zstd", format!("compression failed: {e}")))
    };
    if data.len() <= ZSTD_FRAME_BYTES {
        return one(data);
    }
    let frames: Vec<Vec<u8>> = data
        .par_chunks(ZSTD_FRAME_BYTES)
        .map(one)
        .collect::<Result<_>>()?;
    Ok(frames.concat())
}

/// Decompresses a zstd stream that must expand to exactly `expected` bytes. Memory grows with the actual output
/// (never pre-allocated from a declared size beyond 64 MiB), and decoding stops one byte past `expected`.
fn zstd_decompress_exact(data: &[u8], expected: u64) -> Result<Vec<u8>> {
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

/// Encodes one tensor record (header + payload) for a tensor of `dtype` and `shape`.
///
/// # Errors
/// [`Error::InvalidRecord`] if the payload does not match the dtype/shape or violates the format's invariants;
/// [`Error::InvalidStream`] if zstd fails.
pub fn encode_record(
    dtype: DType,
    shape: &[usize],
    record: &Record,
    zstd_level: i32,
) -> Result<Vec<u8>> {
    let (dims, numel) = shape_numel(shape)?;
    let mut out = Vec::new();
    match record {
        Record::Sparse(s) => {
            if s.numel != numel {
                return Err(Error::record(format!(
                    "sparse record has numel {} but shape {shape:?} has {numel} elements",
                    s.numel
                )));
            }
            s.validate()?;
            let (m, pos_bytes, pos_bits) = golomb::encode_positions(&s.positions, s.numel)?;
            let lvl_bytes = bitpack::pack(&s.levels, s.quant.bits);
            out.reserve(
                12 + 8 * dims.len() + SPARSE_FIXED_BYTES + pos_bytes.len() + lvl_bytes.len(),
            );
            put_header(&mut out, RecordKind::SparseGolomb, dtype, &dims, numel)?;
            out.extend_from_slice(&(s.positions.len() as u64).to_le_bytes());
            out.push(s.quant.bits);
            out.extend_from_slice(&s.quant.lo.to_le_bytes());
            out.extend_from_slice(&s.quant.step.to_le_bytes());
            out.extend_from_slice(&s.scale.to_le_bytes());
            out.extend_from_slice(&m.to_le_bytes());
            out.extend_from_slice(&pos_bits.to_le_bytes());
            out.extend_from_slice(&(pos_bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&(lvl_bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&pos_bytes);
            out.extend_from_slice(&lvl_bytes);
        }
        Record::XorDelta {
            dtype: d,
            xor_bytes: bytes,
        }
        | Record::Full { dtype: d, bytes } => {
            if *d != dtype {
                return Err(Error::record(format!(
                    "record dtype {} differs from the tensor's dtype {}",
                    d.name(),
                    dtype.name()
                )));
            }
            let expected = numel
                .checked_mul(dtype.size() as u64)
                .ok_or_else(|| Error::record("byte size overflows u64"))?;
            if bytes.len() as u64 != expected {
                return Err(Error::record(format!(
                    "{} bytes for {numel} elements of {} (expected {expected})",
                    bytes.len(),
                    dtype.name()
                )));
            }
            let z = zstd_compress(&shuffle(bytes, dtype.size()), zstd_level)?;
            put_header(&mut out, record.kind(), dtype, &dims, numel)?;
            out.extend_from_slice(&(z.len() as u64).to_le_bytes());
            out.extend_from_slice(&z);
        }
        Record::SparseValues(r) => {
            check_numel("sparse-f16", r.numel, numel, shape)?;
            r.validate()?;
            put_header(&mut out, record.kind(), dtype, &dims, numel)?;
            let tail = put_positions(&mut out, r.positions.len() as u64, &r.positions, numel)?;
            out.extend_from_slice(&r.scale.to_le_bytes());
            out.extend_from_slice(&tail);
            put_f16s(&mut out, &r.values);
        }
        Record::Sign(r) => {
            check_numel("sign", r.numel, numel, shape)?;
            r.validate()?;
            put_header(&mut out, record.kind(), dtype, &dims, numel)?;
            match &r.positions {
                Some(pos) => {
                    let tail = put_positions(&mut out, pos.len() as u64, pos, numel)?;
                    out.extend_from_slice(&r.magnitude.to_le_bytes());
                    out.extend_from_slice(&tail);
                }
                None => out.extend_from_slice(&r.magnitude.to_le_bytes()),
            }
            out.extend_from_slice(&pack_bits(&r.negative));
        }
        Record::LowRank(r) => {
            r.validate()?;
            if dims.first().copied() != Some(r.rows) && !(dims.is_empty() && r.rows == 1) {
                return Err(Error::record(format!(
                    "low-rank record has {} rows but shape {shape:?}",
                    r.rows
                )));
            }
            check_numel("lowrank-f16", r.numel(), numel, shape)?;
            put_header(&mut out, record.kind(), dtype, &dims, numel)?;
            out.extend_from_slice(&r.rows.to_le_bytes());
            out.extend_from_slice(&r.cols.to_le_bytes());
            out.extend_from_slice(&r.rank.to_le_bytes());
            out.extend_from_slice(&r.scale.to_le_bytes());
            put_f16s(&mut out, &r.u);
            put_f16s(&mut out, &r.v);
        }
        Record::DenseLevels(r) => {
            check_numel("dense-levels", r.levels.len() as u64, numel, shape)?;
            r.validate()?;
            put_header(&mut out, record.kind(), dtype, &dims, numel)?;
            out.push(r.quant.bits);
            out.extend_from_slice(&r.quant.lo.to_le_bytes());
            out.extend_from_slice(&r.quant.step.to_le_bytes());
            out.extend_from_slice(&r.scale.to_le_bytes());
            out.extend_from_slice(&pack_levels(&r.levels, r.quant.bits));
        }
        Record::Coded(r) => {
            check_numel("coded sparse", r.numel, numel, shape)?;
            if r.kind() == RecordKind::SparseGolomb {
                return Err(Error::record(
                    "Golomb positions with packed levels are kind 1: use CodedSparseRecord::into_record",
                ));
            }
            put_header(&mut out, record.kind(), dtype, &dims, numel)?;
            r.encode_payload(&mut out)?;
        }
    }
    Ok(out)
}

/// Reads the Golomb-coded positions of a `sparse-f16` / `sparse-sign` payload after `kept` and the 4-byte scale:
/// `m`, `pos_bits`, `pos_len`, then the stream. `rest` is the byte length of what must follow the stream.
fn read_positions(c: &mut Cursor<'_>, kept: u64, numel: u64, rest: u64) -> Result<Vec<u64>> {
    let bad = |d: String| Error::stream("record", d);
    let m = c.u64("golomb parameter")?;
    let pos_bits = c.u64("positions bit length")?;
    let pos_len = c.u64("positions byte length")?;
    if pos_len != pos_bits.div_ceil(8) {
        return Err(bad(format!(
            "positions byte length {pos_len} does not match {pos_bits} bits"
        )));
    }
    if pos_len.checked_add(rest) != Some(c.left()) {
        return Err(bad(format!(
            "streams of {pos_len} + {rest} bytes declared, {} bytes follow",
            c.left()
        )));
    }
    let pos_bytes = c.take(pos_len, "positions stream")?;
    golomb::decode_positions(pos_bytes, pos_bits, m, kept, numel)
}

/// Encodes a companion-file record (kind `file-zstd`, dtype `U8`, shape `[len]`).
///
/// # Errors
/// [`Error::InvalidStream`] if zstd fails.
pub fn encode_file_record(bytes: &[u8], zstd_level: i32) -> Result<Vec<u8>> {
    let n = bytes.len() as u64;
    let z = zstd_compress(bytes, zstd_level)?;
    let mut out = Vec::with_capacity(28 + z.len());
    put_header(&mut out, RecordKind::FileZstd, DType::U8, &[n], n)?;
    out.extend_from_slice(&(z.len() as u64).to_le_bytes());
    out.extend_from_slice(&z);
    Ok(out)
}

/// Little-endian cursor over untrusted bytes; every read is bounds-checked.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(Error::stream(
                "record",
                format!(
                    "{what} needs {n} bytes at offset {}, only {left} left",
                    self.pos
                ),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    pub(crate) fn f32(&mut self, what: &str) -> Result<f32> {
        let b = self.take(4, what)?;
        Ok(f32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    }
    pub(crate) fn left(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }
}

/// Parses only the common header of a record, checking ndim and numel against `limits`.
///
/// # Errors
/// [`Error::InvalidStream`] (stream `"record"`).
pub fn decode_header(bytes: &[u8], limits: &Limits) -> Result<RecordHeader> {
    let mut c = Cursor { bytes, pos: 0 };
    decode_header_at(&mut c, limits)
}

fn decode_header_at(c: &mut Cursor<'_>, limits: &Limits) -> Result<RecordHeader> {
    let bad = |d: String| Error::stream("record", d);
    let kind_code = c.u8("kind")?;
    let kind = RecordKind::from_code(kind_code)
        .ok_or_else(|| bad(format!("unknown record kind {kind_code}")))?;
    let dcode = c.u8("dtype")?;
    let dtype = dtype_from_code(dcode).ok_or_else(|| bad(format!("unknown dtype code {dcode}")))?;
    let ndim = c.u8("ndim")?;
    if usize::from(ndim) > limits.max_ndim {
        return Err(bad(format!(
            "{ndim} dimensions (limit {})",
            limits.max_ndim
        )));
    }
    let reserved = c.u8("reserved")?;
    if reserved != 0 {
        return Err(bad(format!(
            "reserved header byte is {reserved}, expected 0"
        )));
    }
    let mut shape = Vec::with_capacity(usize::from(ndim));
    for _ in 0..ndim {
        shape.push(c.u64("shape")?);
    }
    let numel = c.u64("numel")?;
    let product = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    if product != Some(numel) {
        return Err(bad(format!(
            "numel {numel} is not the product of shape {shape:?}"
        )));
    }
    if numel > limits.max_numel {
        return Err(bad(format!(
            "numel {numel} exceeds the limit {}",
            limits.max_numel
        )));
    }
    Ok(RecordHeader {
        kind,
        dtype,
        shape,
        numel,
    })
}

fn decode_zstd_payload(c: &mut Cursor<'_>, expected: u64) -> Result<Vec<u8>> {
    zstd_decompress_exact(zstd_payload(c)?, expected)
}

/// The zstd stream of a lossless payload: its declared compressed length must be exactly the bytes that follow.
fn zstd_payload<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8]> {
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

/// Reads what every UltraDelta sparse payload starts with (kept, bits, lo, step, scale) and checks it against the
/// tensor's `numel`: the kept count, the quantizer and the scale.
pub(crate) fn read_sparse_head(c: &mut Cursor<'_>, numel: u64) -> Result<(u64, QuantParams, f32)> {
    let bad = |d: String| Error::stream("record", d);
    let kept = c.u64("kept")?;
    let bits = c.u8("bits")?;
    let lo = c.f32("lo")?;
    let step = c.f32("step")?;
    let scale = c.f32("scale")?;
    if kept > numel {
        return Err(bad(format!("kept {kept} exceeds numel {numel}")));
    }
    if bits > 16 {
        return Err(bad(format!("bit width {bits} above 16")));
    }
    if !lo.is_finite() || !step.is_finite() || !scale.is_finite() {
        return Err(bad(format!(
            "non-finite lo {lo}, step {step} or scale {scale}"
        )));
    }
    Ok((kept, QuantParams { bits, lo, step }, scale))
}

/// Reads the Golomb parameter and the positions stream's bit and byte lengths, which must agree.
pub(crate) fn read_golomb_lengths(c: &mut Cursor<'_>) -> Result<(u64, u64, u64)> {
    let m = c.u64("golomb parameter")?;
    let pos_bits = c.u64("positions bit length")?;
    let pos_len = c.u64("positions byte length")?;
    if pos_len != pos_bits.div_ceil(8) {
        return Err(Error::stream(
            "record",
            format!("positions byte length {pos_len} does not match {pos_bits} bits"),
        ));
    }
    Ok((m, pos_bits, pos_len))
}

/// The frames of a zstd stream as (compressed byte range, declared content size) when there are several, each
/// declares its content size and they add up to `total`; `None` otherwise (the stream is then decompressed as a
/// whole, which also reports any error). zstd checks each frame against its declared size.
fn zstd_frames(z: &[u8], total: usize) -> Option<Vec<(std::ops::Range<usize>, usize)>> {
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
    (sum == total && frames.len() > 1).then_some(frames)
}

/// Decodes an `xor-zstd` record straight into `out`: `out = base XOR bits`, with the bits [`decode_record`] returns
/// as [`Record::XorDelta`], without allocating per record: the shuffled planes are decompressed into `planes`
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
    let bad = |d: String| Error::stream("record", d);
    let mut c = Cursor { bytes, pos: 0 };
    let header = decode_header_at(&mut c, limits)?;
    if header.kind != RecordKind::XorZstd {
        return Err(bad(format!(
            "expected an {} record, found {}",
            RecordKind::XorZstd.name(),
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

/// Decodes a whole record (header + payload). Companion files come back as [`Record::Full`] with dtype `U8`
/// (check `header.kind`). Every declared length is compared with the bytes actually present before anything
/// sized from it is allocated.
///
/// # Errors
/// [`Error::InvalidStream`] (streams `"record"`, `"golomb"`, `"bitpack"`, `"zstd"`).
pub fn decode_record(bytes: &[u8], limits: &Limits) -> Result<(RecordHeader, Record)> {
    let bad = |d: String| Error::stream("record", d);
    let mut c = Cursor { bytes, pos: 0 };
    let header = decode_header_at(&mut c, limits)?;
    let numel = header.numel;
    let record = match header.kind {
        RecordKind::SparseGolomb => {
            let (kept, quant, scale) = read_sparse_head(&mut c, numel)?;
            let bits = quant.bits;
            let (m, pos_bits, pos_len) = read_golomb_lengths(&mut c)?;
            let lvl_len = c.u64("levels byte length")?;
            let want_lvl = bitpack::packed_len(kept, bits)
                .ok_or_else(|| bad("levels length overflows".into()))?;
            if lvl_len != want_lvl {
                return Err(bad(format!(
                    "levels byte length {lvl_len}, expected {want_lvl} for {kept} levels at {bits} bits"
                )));
            }
            if pos_len.checked_add(lvl_len) != Some(c.left()) {
                return Err(bad(format!(
                    "streams of {pos_len} + {lvl_len} bytes declared, {} bytes follow",
                    c.left()
                )));
            }
            let pos_bytes = c.take(pos_len, "positions stream")?;
            let lvl_bytes = c.take(lvl_len, "levels stream")?;
            let positions = golomb::decode_positions(pos_bytes, pos_bits, m, kept, numel)?;
            // kept <= numel <= max_numel and lvl_len matched, so kept fits in the slice it was read from.
            let n = usize::try_from(kept).map_err(|_| bad(format!("kept {kept} too large")))?;
            let levels = bitpack::unpack(lvl_bytes, bits, n)?;
            Record::Sparse(SparseRecord {
                numel,
                quant,
                scale,
                positions,
                levels,
            })
        }
        RecordKind::XorZstd | RecordKind::FullZstd | RecordKind::FileZstd => {
            let size = header.dtype.size() as u64;
            let raw = numel
                .checked_mul(size)
                .ok_or_else(|| bad(format!("{numel} elements of {size} bytes overflow")))?;
            let planes = decode_zstd_payload(&mut c, raw)?;
            let raw = if header.kind == RecordKind::FileZstd {
                planes
            } else {
                unshuffle(&planes, header.dtype.size())
            };
            if header.kind == RecordKind::XorZstd {
                Record::XorDelta {
                    dtype: header.dtype,
                    xor_bytes: raw,
                }
            } else {
                Record::Full {
                    dtype: header.dtype,
                    bytes: raw,
                }
            }
        }
        RecordKind::SparseF16 | RecordKind::SparseSign => {
            let kept = c.u64("kept")?;
            let scale = c.f32("scale")?;
            if kept > numel {
                return Err(bad(format!("kept {kept} exceeds numel {numel}")));
            }
            if !scale.is_finite() {
                return Err(bad(format!("non-finite scale {scale}")));
            }
            let f16 = header.kind == RecordKind::SparseF16;
            let rest = if f16 {
                kept.checked_mul(2)
            } else {
                Some(kept.div_ceil(8))
            }
            .ok_or_else(|| bad(format!("{kept} values overflow")))?;
            let positions = read_positions(&mut c, kept, numel, rest)?;
            let tail = c.take(rest, "values")?;
            if f16 {
                Record::SparseValues(SparseValuesRecord {
                    numel,
                    scale,
                    positions,
                    values: get_f16s(tail, "values")?,
                })
            } else {
                Record::Sign(SignRecord {
                    numel,
                    magnitude: scale,
                    positions: Some(positions),
                    negative: unpack_bits(tail, kept)?,
                })
            }
        }
        RecordKind::DenseSign => {
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
            Record::Sign(SignRecord {
                numel,
                magnitude,
                positions: None,
                negative: unpack_bits(tail, numel)?,
            })
        }
        RecordKind::LowrankF16 => {
            let rows = c.u64("rows")?;
            let cols = c.u64("cols")?;
            let rank = c.u64("rank")?;
            let scale = c.f32("scale")?;
            if !scale.is_finite() {
                return Err(bad(format!("non-finite scale {scale}")));
            }
            let first = header.shape.first().copied().unwrap_or(1);
            if rows != first || rows.checked_mul(cols) != Some(numel) {
                return Err(bad(format!(
                    "low-rank view {rows}x{cols} does not match shape {:?}",
                    header.shape
                )));
            }
            if rank > rows.min(cols) {
                return Err(bad(format!("rank {rank} above min({rows}, {cols})")));
            }
            // rank <= min(rows, cols) so both products are <= numel <= max_numel: no overflow.
            let (nu, nv) = (rows * rank, rank * cols);
            if (nu + nv).checked_mul(2) != Some(c.left()) {
                return Err(bad(format!(
                    "{} factor bytes, expected {} for rank {rank}",
                    c.left(),
                    (nu + nv) * 2
                )));
            }
            let u = get_f16s(c.take(nu * 2, "U")?, "U")?;
            let v = get_f16s(c.take(nv * 2, "V")?, "V")?;
            Record::LowRank(LowRankRecord {
                rows,
                cols,
                rank,
                u,
                v,
                scale,
            })
        }
        RecordKind::DenseLevels => {
            let bits = c.u8("bits")?;
            let lo = c.f32("lo")?;
            let step = c.f32("step")?;
            let scale = c.f32("scale")?;
            if bits > 16 {
                return Err(bad(format!("bit width {bits} above 16")));
            }
            if !lo.is_finite() || !step.is_finite() || !scale.is_finite() {
                return Err(bad(format!(
                    "non-finite lo {lo}, step {step} or scale {scale}"
                )));
            }
            let want = bitpack::packed_len(numel, bits)
                .ok_or_else(|| bad("levels length overflows".into()))?;
            if want != c.left() {
                return Err(bad(format!("{} level bytes, expected {want}", c.left())));
            }
            let n = usize::try_from(numel).map_err(|_| bad(format!("numel {numel} too large")))?;
            let levels = bitpack::unpack(c.take(want, "levels")?, bits, n)?;
            Record::DenseLevels(DenseLevelsRecord {
                quant: QuantParams { bits, lo, step },
                scale,
                levels,
            })
        }
        RecordKind::SparseGolombRans | RecordKind::SparseSeeded | RecordKind::SparseSeededRans => {
            Record::Coded(CodedSparseRecord::decode_payload(
                header.kind,
                &mut c,
                numel,
                limits,
            )?)
        }
    };
    Ok((header, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_layout() {
        let b = [1u8, 2, 3, 4, 5, 6];
        assert_eq!(shuffle(&b, 2), vec![1, 3, 5, 2, 4, 6]);
        assert_eq!(shuffle(&b, 3), vec![1, 4, 2, 5, 3, 6]);
        assert_eq!(unshuffle(&shuffle(&b, 3), 3), b);
        assert_eq!(shuffle(&[], 4), Vec::<u8>::new());
        // Several parallel blocks per plane and a partial last block, against the definition.
        for size in [2usize, 4, 8] {
            let n = 3 * (1 << 16) + 123;
            let b: Vec<u8> = (0..n * size).map(|i| (i * 7 + i / 251) as u8).collect();
            let want: Vec<u8> = (0..size)
                .flat_map(|j| (0..n).map(move |i| (i, j)))
                .map(|(i, j)| b[i * size + j])
                .collect();
            assert_eq!(shuffle(&b, size), want, "size {size}");
            assert_eq!(unshuffle(&want, size), b, "size {size}");
        }
    }

    #[test]
    fn sparse_record_layout() {
        let rec = Record::Sparse(SparseRecord {
            numel: 6,
            quant: QuantParams {
                bits: 4,
                lo: -1.0,
                step: 0.5,
            },
            scale: 2.0,
            positions: vec![1, 4],
            levels: vec![3, 15],
        });
        let bytes = encode_record(DType::F32, &[2, 3], &rec, 3).unwrap();
        assert_eq!(&bytes[..4], &[1, 2, 2, 0]);
        assert_eq!(&bytes[4..12], &2u64.to_le_bytes());
        assert_eq!(&bytes[20..28], &6u64.to_le_bytes());
        assert_eq!(bytes.len(), 28 + SPARSE_FIXED_BYTES + 1 + 1);
        let (h, back) = decode_record(&bytes, &Limits::default()).unwrap();
        assert_eq!(h.kind, RecordKind::SparseGolomb);
        assert_eq!(h.shape, vec![2, 3]);
        assert_eq!(back, rec);
        let Record::Sparse(s) = back else {
            unreachable!()
        };
        assert_eq!(s.to_dense(1.0), vec![0.0, 1.0, 0.0, 0.0, 13.0, 0.0]);
    }

    #[test]
    fn lossless_records_round_trip() {
        let bytes: Vec<u8> = (0..96u32).map(|i| (i * 37 % 251) as u8).collect();
        for rec in [
            Record::XorDelta {
                dtype: DType::BF16,
                xor_bytes: bytes.clone(),
            },
            Record::Full {
                dtype: DType::BF16,
                bytes: bytes.clone(),
            },
        ] {
            let enc = encode_record(DType::BF16, &[4, 12], &rec, 3).unwrap();
            assert_eq!(decode_record(&enc, &Limits::default()).unwrap().1, rec);
            // Wrong dtype or length is refused.
            assert!(encode_record(DType::F32, &[4, 12], &rec, 3).is_err());
            assert!(encode_record(DType::BF16, &[4, 11], &rec, 3).is_err());
        }
    }

    #[test]
    fn decode_xor_into_equals_decode_record_then_xor() {
        // Several frames, odd element counts, every element size; a dirty scratch buffer, reused and too small.
        let mut planes = vec![0x5au8; 1000];
        for (dtype, numel) in [
            (DType::BF16, ZSTD_FRAME_BYTES + 777),
            (DType::F32, (1 << 16) * 3 + 5),
            (DType::U8, 4099),
            (DType::F64, 3),
            (DType::F32, 0),
        ] {
            let es = dtype.size();
            let xor: Vec<u8> = (0..numel * es)
                .map(|i| ((i * 131) % 253) as u8 & if i % 3 == 0 { 0xff } else { 0x0f })
                .collect();
            let base: Vec<u8> = (0..numel * es).map(|i| (i % 241) as u8).collect();
            let rec = Record::XorDelta {
                dtype,
                xor_bytes: xor.clone(),
            };
            let enc = encode_record(dtype, &[numel], &rec, 1).unwrap();
            let Record::XorDelta { xor_bytes, .. } =
                decode_record(&enc, &Limits::default()).unwrap().1
            else {
                panic!("kind")
            };
            let want: Vec<u8> = base.iter().zip(&xor_bytes).map(|(a, b)| a ^ b).collect();
            let mut out = vec![0xa5u8; numel * es];
            let h =
                decode_xor_into(&enc, &Limits::default(), &base, &mut out, &mut planes).unwrap();
            assert_eq!(h.kind, RecordKind::XorZstd);
            assert!(out == want, "{} {numel}", dtype.name());
            // damaged payloads: refused by both, or the same bytes from both
            for k in (1..6).filter(|_| enc.len() > 64) {
                let mut bad = enc.clone();
                let at = bad.len() - 1 - (bad.len() - 40) * k / 6;
                bad[at] ^= 0x11;
                let serial = decode_record(&bad, &Limits::default());
                let mut out2 = vec![0u8; numel * es];
                let fused =
                    decode_xor_into(&bad, &Limits::default(), &base, &mut out2, &mut planes);
                match (serial, fused) {
                    (Ok((_, Record::XorDelta { xor_bytes, .. })), Ok(_)) => {
                        let want: Vec<u8> =
                            base.iter().zip(&xor_bytes).map(|(a, b)| a ^ b).collect();
                        assert!(out2 == want, "{} flip at {at}", dtype.name());
                    }
                    (Err(_), Err(_)) => {}
                    (a, b) => panic!(
                        "{} flip at {at}: {:?} vs {:?}",
                        dtype.name(),
                        a.is_ok(),
                        b.is_ok()
                    ),
                }
            }
            // the wrong size is refused before decompressing
            if numel > 0 {
                let mut short = vec![0u8; numel * es - 1];
                assert!(decode_xor_into(
                    &enc,
                    &Limits::default(),
                    &base[1..],
                    &mut short,
                    &mut planes
                )
                .is_err());
            }
        }
        // another kind is refused
        let full = Record::Full {
            dtype: DType::U8,
            bytes: vec![1, 2, 3],
        };
        let enc = encode_record(DType::U8, &[3], &full, 1).unwrap();
        assert!(
            decode_xor_into(&enc, &Limits::default(), &[0; 3], &mut [0; 3], &mut planes).is_err()
        );
    }

    #[test]
    fn multi_frame_zstd_round_trip() {
        let n = ZSTD_FRAME_BYTES * 2 + 1000;
        let bytes: Vec<u8> = (0..n).map(|i| (i % 251) as u8 ^ (i >> 20) as u8).collect();
        let rec = Record::Full {
            dtype: DType::U8,
            bytes,
        };
        let enc = encode_record(DType::U8, &[n], &rec, 1).unwrap();
        assert!(enc.len() < n / 10);
        assert_eq!(decode_record(&enc, &Limits::default()).unwrap().1, rec);
        // Three frames, each starting with the zstd magic.
        let magic = [0x28u8, 0xB5, 0x2F, 0xFD];
        let frames = enc.windows(4).filter(|w| *w == magic).count();
        assert!(frames >= 3, "{frames} frames");
    }

    #[test]
    fn zstd_size_lies_are_caught() {
        let rec = Record::Full {
            dtype: DType::U8,
            bytes: vec![7; 10],
        };
        let mut enc = encode_record(DType::U8, &[10], &rec, 3).unwrap();
        // Claim 11 elements: decompressed size no longer matches.
        enc[4..12].copy_from_slice(&11u64.to_le_bytes());
        enc[12..20].copy_from_slice(&11u64.to_le_bytes());
        let err = decode_record(&enc, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidStream { stream: "zstd", .. }),
            "{err}"
        );
    }
}
