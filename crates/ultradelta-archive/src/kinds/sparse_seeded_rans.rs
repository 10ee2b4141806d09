//! Kind 12, `sparse-seeded-rans` (docs/FORMAT.md, "Kind 12"): seeded positions (none stored) and rANS-coded
//! levels with at least two symbols. Held by [`crate::CodedSparseRecord`] with [`crate::Positions::Seeded`] and
//! [`crate::LevelCoding::Rans`].

use super::common::{
    check_streams_fill, put_rans_fields, put_rans_words, put_sparse_head, read_rans_fields,
    read_sparse_head, Head, SPARSE_HEAD_BYTES,
};
use super::sparse_seeded::{put_seed_trial, read_seed_trial, SEED_TRIAL_BYTES};
use crate::coded::RecordCost;
use crate::record::{Cursor, RecordHeader};
use crate::{
    rans, CodedSparseRecord, Error, LevelCoding, Limits, Positions, Record, RecordKind, Result,
};

/// Fixed part of a `sparse-seeded-rans` payload before the model table: kept, bits, lo, step, scale, seed, trial,
/// nsym (`SEEDED_RANS_FIXED_BYTES`).
pub(crate) const FIXED_BYTES: usize = SPARSE_HEAD_BYTES + SEED_TRIAL_BYTES + 4;

/// Writes header and payload of `r`, whose positions are seeded by `(seed, trial)`.
pub(crate) fn encode(
    r: &CodedSparseRecord,
    (seed, trial): (u64, u32),
    head: &Head<'_>,
    out: &mut Vec<u8>,
) -> Result<()> {
    head.put(out, RecordKind::SparseSeededRans)?;
    put_payload(r, (seed, trial), out)
}

/// Writes the payload of `r` (no header), whose positions are seeded by `(seed, trial)`: what [`encode`] writes
/// after the common header, and what kind 16 stores as its residual.
pub(crate) fn put_payload(
    r: &CodedSparseRecord,
    (seed, trial): (u64, u32),
    out: &mut Vec<u8>,
) -> Result<()> {
    r.validate()?;
    put_sparse_head(out, r.kept(), &r.quant, r.scale);
    put_seed_trial(out, seed, trial);
    let block = rans::encode_levels(&r.levels)?;
    put_rans_fields(out, &block);
    put_rans_words(out, &block);
    Ok(())
}

pub(crate) fn decode(c: &mut Cursor<'_>, header: &RecordHeader, limits: &Limits) -> Result<Record> {
    let numel = header.numel;
    let (kept, quant, scale) = read_sparse_head(c, numel)?;
    let (seed, trial) = read_seed_trial(c)?;
    if kept > limits.max_coded_levels {
        return Err(Error::stream(
            "record",
            format!(
                "{kept} entropy-coded levels exceed the limit {}",
                limits.max_coded_levels
            ),
        ));
    }
    let block = read_rans_fields(c, quant.bits, kept, true)?;
    check_streams_fill(c, 0, block.ans_len)?;
    let levels = if c.check_only {
        block.check_levels(c, kept)?;
        Vec::new()
    } else {
        block.decode_levels(c, kept)?
    };
    Ok(Record::Coded(CodedSparseRecord {
        numel,
        quant,
        scale,
        positions: Positions::Seeded { seed, trial },
        levels,
        coding: LevelCoding::Rans,
    }))
}

pub(crate) fn cost(c: &mut Cursor<'_>) -> Option<RecordCost> {
    c.skip((SPARSE_HEAD_BYTES + SEED_TRIAL_BYTES) as u64)?;
    let nsym = c.u32("symbol count").ok()?;
    c.skip(4 * u64::from(nsym))?;
    let ans_len = c.u64("rANS byte length").ok()?;
    Some(RecordCost {
        position_bits: 0,
        value_bits: (4 + 4 * u64::from(nsym) + 8 + ans_len).checked_mul(8)?,
        ..RecordCost::default()
    })
}
