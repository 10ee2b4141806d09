//! Kind 11, `sparse-seeded` (docs/FORMAT.md, "Kind 11"): seeded positions (none stored: regenerated from
//! `(seed, trial)` by `ultradelta_core::seeded`) and bit-packed levels, exactly as kind 1. Held by
//! [`crate::CodedSparseRecord`] with [`crate::Positions::Seeded`] and [`crate::LevelCoding::Packed`].

use super::common::{put_sparse_head, read_sparse_head, Head, SPARSE_HEAD_BYTES};
use crate::coded::RecordCost;
use crate::record::{Cursor, RecordHeader};
use crate::{
    bitpack, CodedSparseRecord, Error, LevelCoding, Limits, Positions, Record, RecordKind, Result,
};

/// Fixed part of a `sparse-seeded` payload: kept, bits, lo, step, scale, seed, trial, lvl_len
/// (`SEEDED_FIXED_BYTES`).
pub(crate) const FIXED_BYTES: usize = SPARSE_HEAD_BYTES + SEED_TRIAL_BYTES + 8;

/// Bytes of the seed and trial fields of kinds 11 and 12.
pub(crate) const SEED_TRIAL_BYTES: usize = 8 + 4;

/// Writes the seed and trial fields.
pub(crate) fn put_seed_trial(out: &mut Vec<u8>, seed: u64, trial: u32) {
    out.extend_from_slice(&seed.to_le_bytes());
    out.extend_from_slice(&trial.to_le_bytes());
}

/// Reads the seed and trial fields.
pub(crate) fn read_seed_trial(c: &mut Cursor<'_>) -> Result<(u64, u32)> {
    let seed = c.u64("seed")?;
    let trial = c.u32("trial")?;
    Ok((seed, trial))
}

/// Writes header and payload of `r`, whose positions are seeded by `(seed, trial)`.
pub(crate) fn encode(
    r: &CodedSparseRecord,
    (seed, trial): (u64, u32),
    head: &Head<'_>,
    out: &mut Vec<u8>,
) -> Result<()> {
    head.put(out, RecordKind::SparseSeeded)?;
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
    let lvl = bitpack::pack(&r.levels, r.quant.bits);
    out.extend_from_slice(&(lvl.len() as u64).to_le_bytes());
    out.extend_from_slice(&lvl);
    Ok(())
}

pub(crate) fn decode(
    c: &mut Cursor<'_>,
    header: &RecordHeader,
    _limits: &Limits,
) -> Result<Record> {
    let bad = |d: String| Error::stream("record", d);
    let numel = header.numel;
    let (kept, quant, scale) = read_sparse_head(c, numel)?;
    let bits = quant.bits;
    let (seed, trial) = read_seed_trial(c)?;
    if bits == 0 {
        return Err(bad(
            "seeded positions with packed levels need bits >= 1".into()
        ));
    }
    let lvl_len = c.u64("levels byte length")?;
    let want =
        bitpack::packed_len(kept, bits).ok_or_else(|| bad("levels length overflows".into()))?;
    if lvl_len != want || lvl_len != c.left() {
        return Err(bad(format!(
            "levels byte length {lvl_len}, expected {want} for {kept} levels at {bits} bits, {} bytes follow",
            c.left()
        )));
    }
    let n = usize::try_from(kept).map_err(|_| bad(format!("kept {kept} too large")))?;
    let levels = bitpack::unpack(c.take(lvl_len, "levels stream")?, bits, n)?;
    Ok(Record::Coded(CodedSparseRecord {
        numel,
        quant,
        scale,
        positions: Positions::Seeded { seed, trial },
        levels,
        coding: LevelCoding::Packed,
    }))
}

pub(crate) fn cost(c: &mut Cursor<'_>) -> Option<RecordCost> {
    c.skip((SPARSE_HEAD_BYTES + SEED_TRIAL_BYTES) as u64)?;
    let lvl_len = c.u64("levels byte length").ok()?;
    Some(RecordCost {
        position_bits: 0,
        value_bits: lvl_len.checked_mul(8)?,
        ..RecordCost::default()
    })
}
