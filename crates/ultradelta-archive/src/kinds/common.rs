//! Pieces several kinds' payloads share: the tensor a record is encoded for ([`Head`]), the UltraDelta sparse
//! head (kept, bits, lo, step, scale), the Golomb positions fields and stream, the entropy-coded levels block,
//! fp16 values and sign bits, and the checks shared by every record of quantized levels.

use half::f16;
use ultradelta_core::{DType, QuantParams};

use crate::record::Cursor;
use crate::{golomb, rans, Error, RecordKind, Result};

/// The tensor a record is encoded for: its dtype and shape, as `encode_record` gets them.
pub(crate) struct Head<'a> {
    /// Dtype of the tensor.
    pub(crate) dtype: DType,
    /// The shape as the caller gave it (for error messages).
    pub(crate) shape: &'a [usize],
    /// The shape as header dimensions.
    pub(crate) dims: &'a [u64],
    /// Product of the shape.
    pub(crate) numel: u64,
}

impl Head<'_> {
    /// Byte length of the common header: 12 + 8·ndim.
    pub(crate) fn len(ndim: usize) -> u64 {
        12 + 8 * ndim as u64
    }

    /// Writes the common header of a `kind` record.
    pub(crate) fn put(&self, out: &mut Vec<u8>, kind: RecordKind) -> Result<()> {
        let ndim = u8::try_from(self.dims.len())
            .map_err(|_| Error::record(format!("{} dimensions (at most 255)", self.dims.len())))?;
        out.push(kind.code());
        out.push(self.dtype.code());
        out.push(ndim);
        out.push(0);
        for &d in self.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&self.numel.to_le_bytes());
        Ok(())
    }

    /// Refuses a payload of `got` entries for this tensor (`kind` names the payload in the message).
    pub(crate) fn check_numel(&self, kind: &str, got: u64) -> Result<()> {
        if got != self.numel {
            return Err(Error::record(format!(
                "{kind} record has numel {got} but shape {:?} has {} elements",
                self.shape, self.numel
            )));
        }
        Ok(())
    }
}

/// `assert_eq!(out_len, numel)` with the message every `add_into` gives.
pub(crate) fn check_len(out_len: usize, numel: u64) {
    assert_eq!(
        out_len as u64, numel,
        "output length {out_len} differs from numel {numel}"
    );
}

/// Bytes of the UltraDelta sparse head: kept, bits, lo, step, scale.
pub(crate) const SPARSE_HEAD_BYTES: usize = 8 + 1 + 4 + 4 + 4;

/// Writes the UltraDelta sparse head: kept, bits, lo, step, scale.
pub(crate) fn put_sparse_head(out: &mut Vec<u8>, kept: u64, q: &QuantParams, scale: f32) {
    out.extend_from_slice(&kept.to_le_bytes());
    out.push(q.bits);
    out.extend_from_slice(&q.lo.to_le_bytes());
    out.extend_from_slice(&q.step.to_le_bytes());
    out.extend_from_slice(&scale.to_le_bytes());
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
    c.check_kept(kept)?;
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

/// Bytes of the Golomb fields: m, pos_bits, pos_len.
pub(crate) const GOLOMB_FIELDS_BYTES: usize = 8 + 8 + 8;

/// A Golomb-coded positions stream and its parameter.
pub(crate) struct GolombStream {
    /// Golomb parameter.
    pub(crate) m: u64,
    /// The stream.
    pub(crate) bytes: Vec<u8>,
    /// Its length in bits.
    pub(crate) bits: u64,
}

impl GolombStream {
    /// Encodes `positions` (validated) with the optimal parameter.
    pub(crate) fn encode(positions: &[u64], numel: u64) -> Result<GolombStream> {
        let (m, bytes, bits) = golomb::encode_positions(positions, numel)?;
        Ok(GolombStream { m, bytes, bits })
    }

    /// Byte length of the stream `encode` gives, without writing it.
    pub(crate) fn encoded_len(positions: &[u64], numel: u64) -> Result<u64> {
        let m = golomb::optimal_parameter(positions, numel)?;
        Ok(golomb::encoded_bits(positions, m).div_ceil(8))
    }

    /// Writes m, pos_bits and pos_len (not the stream).
    pub(crate) fn put_fields(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.m.to_le_bytes());
        out.extend_from_slice(&self.bits.to_le_bytes());
        out.extend_from_slice(&(self.bytes.len() as u64).to_le_bytes());
    }
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

/// Reads the Golomb-coded positions of a `sparse-f16` / `sparse-sign` payload after `kept` and the 4-byte scale:
/// `m`, `pos_bits`, `pos_len`, then the stream. `rest` is the byte length of what must follow the stream.
pub(crate) fn read_positions(
    c: &mut Cursor<'_>,
    kept: u64,
    numel: u64,
    rest: u64,
) -> Result<Vec<u64>> {
    let (m, pos_bits, pos_len) = read_golomb_lengths(c)?;
    if pos_len.checked_add(rest) != Some(c.left()) {
        return Err(Error::stream(
            "record",
            format!(
                "streams of {pos_len} + {rest} bytes declared, {} bytes follow",
                c.left()
            ),
        ));
    }
    let pos_bytes = c.take(pos_len, "positions stream")?;
    golomb::decode_positions(pos_bytes, pos_bits, m, kept, numel)
}

/// An entropy-coded levels block as stored: nsym, the model table, ans_len (the words follow later).
pub(crate) struct RansBlock {
    /// Distinct levels, increasing.
    pub(crate) symbols: Vec<u16>,
    /// Their frequencies.
    pub(crate) freqs: Vec<u16>,
    /// Byte length of the rANS stream.
    pub(crate) ans_len: u64,
}

/// Bytes of an entropy-coded levels block after the fixed part of its payload (which ends with nsym) and
/// before the streams: the model table and ans_len.
pub(crate) fn rans_table_and_len_bytes(nsym: usize) -> u64 {
    4 * nsym as u64 + 8
}

/// Exact bytes of the levels block of `block` after the payload's fixed part: table, ans_len and words.
pub(crate) fn rans_block_len(block: &rans::RansLevels) -> u64 {
    rans_table_and_len_bytes(block.symbols.len()) + 2 * block.words.len() as u64
}

/// Writes nsym, the model table and ans_len of `block` (not the words).
pub(crate) fn put_rans_fields(out: &mut Vec<u8>, block: &rans::RansLevels) {
    out.extend_from_slice(&(block.symbols.len() as u32).to_le_bytes());
    for (&s, &f) in block.symbols.iter().zip(&block.freqs) {
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&f.to_le_bytes());
    }
    out.extend_from_slice(&(block.words.len() as u64 * 2).to_le_bytes());
}

/// Writes the rANS words of `block`.
pub(crate) fn put_rans_words(out: &mut Vec<u8>, block: &rans::RansLevels) {
    for w in &block.words {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

/// Reads nsym and the model table, validates the model for `kept` levels at `bits` bits, then reads ans_len.
/// `at_least_two` refuses a one-symbol table (kind 12).
pub(crate) fn read_rans_fields(
    c: &mut Cursor<'_>,
    bits: u8,
    kept: u64,
    at_least_two: bool,
) -> Result<RansBlock> {
    let bad = |d: String| Error::stream("record", d);
    let nsym = c.u32("symbol count")?;
    if nsym > 1 << 16 {
        return Err(bad(format!("{nsym} symbols (at most 65536)")));
    }
    let table = c.take(u64::from(nsym) * 4, "model table")?;
    let symbols: Vec<u16> = table
        .chunks_exact(4)
        .map(|t| u16::from_le_bytes([t[0], t[1]]))
        .collect();
    let freqs: Vec<u16> = table
        .chunks_exact(4)
        .map(|t| u16::from_le_bytes([t[2], t[3]]))
        .collect();
    rans::validate_model(&symbols, &freqs, bits, kept)?;
    if at_least_two && symbols.len() == 1 {
        return Err(bad("kind 12 needs at least two symbols".into()));
    }
    let ans_len = c.u64("rANS byte length")?;
    if ans_len % 2 != 0 {
        return Err(bad(format!("rANS byte length {ans_len} is odd")));
    }
    Ok(RansBlock {
        symbols,
        freqs,
        ans_len,
    })
}

impl RansBlock {
    /// Reads the stream (`ans_len` bytes) and decodes `kept` levels.
    pub(crate) fn decode_levels(&self, c: &mut Cursor<'_>, kept: u64) -> Result<Vec<u16>> {
        let words = self.words(c)?;
        rans::decode_levels(&self.symbols, &self.freqs, &words, kept)
    }

    /// Reads the stream and checks that it decodes to exactly `kept` levels, without keeping them.
    pub(crate) fn check_levels(&self, c: &mut Cursor<'_>, kept: u64) -> Result<()> {
        let words = self.words(c)?;
        rans::check_levels(&self.symbols, &self.freqs, &words, kept)
    }

    fn words(&self, c: &mut Cursor<'_>) -> Result<Vec<u16>> {
        Ok(c.take(self.ans_len, "rANS stream")?
            .chunks_exact(2)
            .map(|w| u16::from_le_bytes([w[0], w[1]]))
            .collect())
    }
}

/// Refuses a payload whose two streams do not fill exactly what is left.
pub(crate) fn check_streams_fill(c: &Cursor<'_>, first: u64, second: u64) -> Result<()> {
    if first.checked_add(second) != Some(c.left()) {
        return Err(Error::stream(
            "record",
            format!(
                "streams of {first} + {second} bytes declared, {} bytes follow",
                c.left()
            ),
        ));
    }
    Ok(())
}

/// Packs booleans LSB-first (`true` = 1), last byte zero-padded.
pub(crate) fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// Unpacks `n` booleans; `bytes` must be exactly `ceil(n / 8)` long with zero padding.
pub(crate) fn unpack_bits(bytes: &[u8], n: u64) -> Result<Vec<bool>> {
    let bad = |d: String| Error::stream("signs", d);
    if bytes.len() as u64 != n.div_ceil(8) {
        return Err(bad(format!("{} bytes for {n} signs", bytes.len())));
    }
    let rem = n % 8;
    if rem != 0 {
        if let Some(&last) = bytes.last() {
            if last >> rem != 0 {
                return Err(bad("non-zero padding bits".into()));
            }
        }
    }
    let n = usize::try_from(n).map_err(|_| bad(format!("{n} signs too many")))?;
    Ok((0..n).map(|i| bytes[i / 8] >> (i % 8) & 1 == 1).collect())
}

/// f16 values as little-endian bytes.
pub(crate) fn put_f16s(out: &mut Vec<u8>, v: &[f16]) {
    for x in v {
        out.extend_from_slice(&x.to_bits().to_le_bytes());
    }
}

/// Reads `bytes.len() / 2` little-endian f16 values, rejecting non-finite ones.
pub(crate) fn get_f16s(bytes: &[u8], what: &str) -> Result<Vec<f16>> {
    let v: Vec<f16> = bytes
        .chunks_exact(2)
        .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::stream(
            "record",
            format!("{what}[{i}] is not finite"),
        ));
    }
    Ok(v)
}

/// The checks every record of quantized levels shares: a bit width of at most 16, finite `lo`, `step` and
/// `scale`, and every level below `2^bits`.
pub(crate) fn check_quantized_levels(q: &QuantParams, scale: f32, levels: &[u16]) -> Result<()> {
    if q.bits > 16 {
        return Err(Error::record(format!("bit width {} above 16", q.bits)));
    }
    if !q.lo.is_finite() || !q.step.is_finite() || !scale.is_finite() {
        return Err(Error::record(format!(
            "non-finite parameter (lo {}, step {}, scale {scale})",
            q.lo, q.step
        )));
    }
    let limit = 1u32 << q.bits;
    if let Some(i) = levels.iter().position(|&l| u32::from(l) >= limit) {
        return Err(Error::record(format!(
            "levels[{i}] = {} does not fit in {} bits",
            levels[i], q.bits
        )));
    }
    Ok(())
}

/// Bytes of kept + scale + Golomb fields, the fixed part of kinds 5 and 6.
pub(crate) const KEPT_SCALE_GOLOMB_BYTES: usize = 8 + 4 + GOLOMB_FIELDS_BYTES;

/// Writes kept, the 4-byte scale (or magnitude), the Golomb fields and the positions stream of kinds 5 and 6.
pub(crate) fn put_kept_scale_positions(
    out: &mut Vec<u8>,
    positions: &[u64],
    numel: u64,
    scale: f32,
) -> Result<()> {
    let pos = GolombStream::encode(positions, numel)?;
    out.extend_from_slice(&(positions.len() as u64).to_le_bytes());
    out.extend_from_slice(&scale.to_le_bytes());
    pos.put_fields(out);
    out.extend_from_slice(&pos.bytes);
    Ok(())
}

/// Reads kept and the scale (or magnitude) of kinds 5 and 6 and checks them against `numel`.
pub(crate) fn read_kept_scale(c: &mut Cursor<'_>, numel: u64) -> Result<(u64, f32)> {
    let bad = |d: String| Error::stream("record", d);
    let kept = c.u64("kept")?;
    let scale = c.f32("scale")?;
    if kept > numel {
        return Err(bad(format!("kept {kept} exceeds numel {numel}")));
    }
    c.check_kept(kept)?;
    if !scale.is_finite() {
        return Err(bad(format!("non-finite scale {scale}")));
    }
    Ok((kept, scale))
}
