//! Kind 10, `sparse-golomb-rans` (docs/FORMAT.md, "Kind 10"): Golomb-coded positions, exactly as kind 1, and
//! rANS-coded levels. Held by [`crate::CodedSparseRecord`] with [`crate::Positions::Golomb`] and
//! [`crate::LevelCoding::Rans`].

use super::common::{
    check_streams_fill, put_rans_fields, put_rans_words, put_sparse_head, read_golomb_lengths,
    read_rans_fields, read_sparse_head, GolombStream, Head, GOLOMB_FIELDS_BYTES, SPARSE_HEAD_BYTES,
};
use crate::coded::RecordCost;
use crate::record::{Cursor, RecordHeader};
use crate::{
    golomb, rans, CodedSparseRecord, Error, LevelCoding, Limits, Positions, Record, RecordKind,
    Result,
};

/// Fixed part of a `sparse-golomb-rans` payload before the model table: kept, bits, lo, step, scale, m, pos_bits,
/// pos_len, nsym (`SPARSE_RANS_FIXED_BYTES`).
pub(crate) const FIXED_BYTES: usize = SPARSE_HEAD_BYTES + GOLOMB_FIELDS_BYTES + 4;

/// Writes header and payload of `r`, whose kept positions are `positions`.
pub(crate) fn encode(
    r: &CodedSparseRecord,
    positions: &[u64],
    head: &Head<'_>,
    out: &mut Vec<u8>,
) -> Result<()> {
    head.put(out, RecordKind::SparseGolombRans)?;
    r.validate()?;
    put_sparse_head(out, r.kept(), &r.quant, r.scale);
    let pos = GolombStream::encode(positions, r.numel)?;
    pos.put_fields(out);
    let block = rans::encode_levels(&r.levels)?;
    put_rans_fields(out, &block);
    out.extend_from_slice(&pos.bytes);
    put_rans_words(out, &block);
    Ok(())
}

pub(crate) fn decode(
    c: &mut Cursor<'_>,
    header: &RecordHeader,
    _limits: &Limits,
) -> Result<Record> {
    let numel = header.numel;
    let (kept, quant, scale) = read_sparse_head(c, numel)?;
    let (m, pos_bits, pos_len) = read_golomb_lengths(c)?;
    if kept > pos_bits {
        // Every Golomb code has at least one bit.
        return Err(Error::stream(
            "record",
            format!("kept {kept} exceeds the {pos_bits} position bits"),
        ));
    }
    let block = read_rans_fields(c, quant.bits, kept, false)?;
    check_streams_fill(c, pos_len, block.ans_len)?;
    let pos_bytes = c.take(pos_len, "positions stream")?;
    let levels = block.decode_levels(c, kept)?;
    let positions = golomb::decode_positions(pos_bytes, pos_bits, m, kept, numel)?;
    Ok(Record::Coded(CodedSparseRecord {
        numel,
        quant,
        scale,
        positions: Positions::Golomb(positions),
        levels,
        coding: LevelCoding::Rans,
    }))
}

pub(crate) fn cost(c: &mut Cursor<'_>) -> Option<RecordCost> {
    c.skip(SPARSE_HEAD_BYTES as u64)?;
    let (_, _, pos_len) = read_golomb_lengths(c).ok()?;
    let nsym = c.u32("symbol count").ok()?;
    c.skip(4 * u64::from(nsym))?;
    let ans_len = c.u64("rANS byte length").ok()?;
    Some(RecordCost {
        position_bits: pos_len * 8,
        value_bits: (4 + 4 * u64::from(nsym) + 8 + ans_len).checked_mul(8)?,
        ..RecordCost::default()
    })
}
