//! The coded sparse kinds (docs/FORMAT.md, kinds 10–12): UltraDelta's kept levels with seeded positions (none
//! stored) and/or entropy-coded levels, the two ways past the paper's own bit count (ALGORITHM.md §5).
//!
//! | kind | positions | levels |
//! |---|---|---|
//! | 10 `sparse-golomb-rans` | Golomb-coded gaps, as kind 1 | rANS ([`crate::rans`]) |
//! | 11 `sparse-seeded` | regenerated from `(seed, trial)` | bit-packed, as kind 1 |
//! | 12 `sparse-seeded-rans` | regenerated from `(seed, trial)` | rANS |
//!
//! Golomb positions with bit-packed levels are kind 1 ([`crate::SparseRecord`]); [`CodedSparseRecord::into_record`]
//! gives that kind for that combination, so one value has one encoding.

use ultradelta_core::seeded::{trial_seed, SeededSample};
use ultradelta_core::QuantParams;

use crate::manifest::{Limits, RecordKind};
use crate::rans;
use crate::record::{read_golomb_lengths, read_sparse_head, Cursor, Record};
use crate::{bitpack, golomb, Error, Result, SparseRecord};

/// Fixed part of every coded payload: kept, bits, lo, step, scale.
const COMMON_BYTES: usize = 8 + 1 + 4 + 4 + 4;
/// Fixed part of a `sparse-golomb-rans` payload before the model table: common, m, pos_bits, pos_len, nsym.
pub const SPARSE_RANS_FIXED_BYTES: usize = COMMON_BYTES + 8 + 8 + 8 + 4;
/// Fixed part of a `sparse-seeded` payload: common, seed, trial, lvl_len.
pub const SEEDED_FIXED_BYTES: usize = COMMON_BYTES + 8 + 4 + 8;
/// Fixed part of a `sparse-seeded-rans` payload before the model table: common, seed, trial, nsym.
pub const SEEDED_RANS_FIXED_BYTES: usize = COMMON_BYTES + 8 + 4 + 4;

/// Where the kept entries are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Positions {
    /// Stored as Golomb-coded gaps: strictly increasing, below `numel`.
    Golomb(Vec<u64>),
    /// Not stored: `SeededSample::new(numel, kept, trial_seed(seed, trial))` regenerates them
    /// (`ultradelta_core::seeded`).
    Seeded {
        /// The tensor's seed.
        seed: u64,
        /// Index of the trial whose generator seed was kept.
        trial: u32,
    },
}

/// How the kept levels are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LevelCoding {
    /// `bits` bits each, bit-packed.
    Packed,
    /// rANS with a per-tensor static model.
    Rans,
}

/// An UltraDelta sparse delta in one of the coded kinds (or kind 1 via [`CodedSparseRecord::into_record`]).
///
/// The value of kept entry `i` (the `i`-th position in increasing order) is
/// `quant.dequantize(levels[i]) * scale`; every other entry is zero.
#[derive(Clone, Debug, PartialEq)]
pub struct CodedSparseRecord {
    /// Entries of the dense tensor.
    pub numel: u64,
    /// Quantizer of the levels.
    pub quant: QuantParams,
    /// Multiplier of every dequantized value.
    pub scale: f32,
    /// The kept positions, stored or seeded.
    pub positions: Positions,
    /// Level of each kept entry, in position order; its length is the kept count.
    pub levels: Vec<u16>,
    /// How the levels are stored.
    pub coding: LevelCoding,
}

impl CodedSparseRecord {
    /// The kind this record is stored as (kind 1 for Golomb positions with packed levels).
    pub fn kind(&self) -> RecordKind {
        match (&self.positions, self.coding) {
            (Positions::Golomb(_), LevelCoding::Packed) => RecordKind::SparseGolomb,
            (Positions::Golomb(_), LevelCoding::Rans) => RecordKind::SparseGolombRans,
            (Positions::Seeded { .. }, LevelCoding::Packed) => RecordKind::SparseSeeded,
            (Positions::Seeded { .. }, LevelCoding::Rans) => RecordKind::SparseSeededRans,
        }
    }

    /// A record with stored positions from a kind-1 record, its levels coded as `coding`.
    pub fn from_sparse(s: SparseRecord, coding: LevelCoding) -> CodedSparseRecord {
        CodedSparseRecord {
            numel: s.numel,
            quant: s.quant,
            scale: s.scale,
            positions: Positions::Golomb(s.positions),
            levels: s.levels,
            coding,
        }
    }

    /// The [`Record`] to store: [`Record::Sparse`] for Golomb + packed (kind 1), [`Record::Coded`] otherwise.
    pub fn into_record(self) -> Record {
        match (self.positions, self.coding) {
            (Positions::Golomb(positions), LevelCoding::Packed) => Record::Sparse(SparseRecord {
                numel: self.numel,
                quant: self.quant,
                scale: self.scale,
                positions,
                levels: self.levels,
            }),
            (positions @ Positions::Seeded { .. }, LevelCoding::Rans)
                if !self.levels.is_empty() && self.levels.iter().all(|&l| l == self.levels[0]) =>
            {
                // Kind 12 needs two distinct levels; one level costs `bits` bits a level as kind 11.
                Record::Coded(CodedSparseRecord {
                    numel: self.numel,
                    quant: self.quant,
                    scale: self.scale,
                    positions,
                    levels: self.levels,
                    coding: LevelCoding::Packed,
                })
            }
            (positions, coding) => Record::Coded(CodedSparseRecord {
                numel: self.numel,
                quant: self.quant,
                scale: self.scale,
                positions,
                levels: self.levels,
                coding,
            }),
        }
    }

    /// Number of kept entries.
    pub fn kept(&self) -> u64 {
        self.levels.len() as u64
    }

    /// The kept positions, increasing (regenerated for seeded records).
    ///
    /// # Panics
    /// If a hand-built seeded record keeps more entries than `numel` (validated records cannot).
    pub fn positions(&self) -> Vec<u64> {
        match &self.positions {
            Positions::Golomb(p) => p.clone(),
            Positions::Seeded { seed, trial } => {
                SeededSample::new(self.numel, self.kept(), trial_seed(*seed, *trial)).to_vec()
            }
        }
    }

    /// Adds `(dequantize(levels[i]) * scale) * gamma` at every kept position of `out`.
    ///
    /// # Panics
    /// If `out.len() != numel`, or the record was built by hand with invalid positions (records read from an
    /// archive are validated; [`Record::add_delta_into`] validates first).
    pub fn add_into(&self, gamma: f32, out: &mut [f32]) {
        assert_eq!(
            out.len() as u64,
            self.numel,
            "output length {} differs from numel {}",
            out.len(),
            self.numel
        );
        let (q, scale) = (self.quant, self.scale);
        match &self.positions {
            Positions::Golomb(pos) => {
                for (&p, &l) in pos.iter().zip(&self.levels) {
                    out[p as usize] += (q.dequantize(l) * scale) * gamma;
                }
            }
            Positions::Seeded { seed, trial } => {
                let sample = SeededSample::new(self.numel, self.kept(), trial_seed(*seed, *trial));
                for (p, &l) in sample.iter().zip(&self.levels) {
                    out[p as usize] += (q.dequantize(l) * scale) * gamma;
                }
            }
        }
    }

    /// Checks the format's invariants.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] describing the first violation.
    pub fn validate(&self) -> Result<()> {
        crate::kinds::check_quantized_levels(&self.quant, self.scale, &self.levels)?;
        match &self.positions {
            Positions::Golomb(pos) => {
                if pos.len() != self.levels.len() {
                    return Err(Error::record(format!(
                        "{} positions but {} levels",
                        pos.len(),
                        self.levels.len()
                    )));
                }
                golomb::validate_positions(pos, self.numel)
            }
            Positions::Seeded { .. } if self.kept() > self.numel => Err(Error::record(format!(
                "{} levels for {} entries",
                self.kept(),
                self.numel
            ))),
            Positions::Seeded { .. } if self.coding == LevelCoding::Packed && self.quant.bits == 0 => Err(
                Error::record("seeded positions with packed levels need a bit width of at least 1"),
            ),
            Positions::Seeded { .. }
                if self.coding == LevelCoding::Rans
                    && !self.levels.is_empty()
                    && self.levels.iter().all(|&l| l == self.levels[0]) =>
            {
                Err(Error::record(
                    "seeded positions with entropy-coded levels need two distinct levels (use kind 11)",
                ))
            }
            Positions::Seeded { .. } => Ok(()),
        }
    }

    /// Appends the payload (after the common header).
    pub(crate) fn encode_payload(&self, out: &mut Vec<u8>) -> Result<()> {
        self.validate()?;
        out.extend_from_slice(&self.kept().to_le_bytes());
        out.push(self.quant.bits);
        out.extend_from_slice(&self.quant.lo.to_le_bytes());
        out.extend_from_slice(&self.quant.step.to_le_bytes());
        out.extend_from_slice(&self.scale.to_le_bytes());
        let pos_stream = match &self.positions {
            Positions::Golomb(pos) => {
                let (m, bytes, bits) = golomb::encode_positions(pos, self.numel)?;
                out.extend_from_slice(&m.to_le_bytes());
                out.extend_from_slice(&bits.to_le_bytes());
                out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                bytes
            }
            Positions::Seeded { seed, trial } => {
                out.extend_from_slice(&seed.to_le_bytes());
                out.extend_from_slice(&trial.to_le_bytes());
                Vec::new()
            }
        };
        match self.coding {
            LevelCoding::Packed => {
                let lvl = bitpack::pack(&self.levels, self.quant.bits);
                out.extend_from_slice(&(lvl.len() as u64).to_le_bytes());
                out.extend_from_slice(&pos_stream);
                out.extend_from_slice(&lvl);
            }
            LevelCoding::Rans => {
                let block = rans::encode_levels(&self.levels)?;
                out.extend_from_slice(&(block.symbols.len() as u32).to_le_bytes());
                for (&s, &f) in block.symbols.iter().zip(&block.freqs) {
                    out.extend_from_slice(&s.to_le_bytes());
                    out.extend_from_slice(&f.to_le_bytes());
                }
                out.extend_from_slice(&(block.words.len() as u64 * 2).to_le_bytes());
                out.extend_from_slice(&pos_stream);
                for w in &block.words {
                    out.extend_from_slice(&w.to_le_bytes());
                }
            }
        }
        Ok(())
    }

    /// Decodes a coded payload of `kind` for a tensor of `numel` entries.
    pub(crate) fn decode_payload(
        kind: RecordKind,
        c: &mut Cursor<'_>,
        numel: u64,
        limits: &Limits,
    ) -> Result<Self> {
        let bad = |d: String| Error::stream("record", d);
        let (kept, quant, scale) = read_sparse_head(c, numel)?;
        let bits = quant.bits;
        let golomb_fields = if kind == RecordKind::SparseGolombRans {
            let (m, pos_bits, pos_len) = read_golomb_lengths(c)?;
            if kept > pos_bits {
                // Every Golomb code has at least one bit.
                return Err(bad(format!(
                    "kept {kept} exceeds the {pos_bits} position bits"
                )));
            }
            Some((m, pos_bits, pos_len))
        } else {
            None
        };
        let seeded = if golomb_fields.is_none() {
            let seed = c.u64("seed")?;
            let b = c.take(4, "trial")?;
            let trial = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            Some((seed, trial))
        } else {
            None
        };
        let pos_len = golomb_fields.map_or(0, |g| g.2);
        if kind == RecordKind::SparseSeeded && bits == 0 {
            return Err(bad(
                "seeded positions with packed levels need bits >= 1".into()
            ));
        }
        if kind == RecordKind::SparseSeededRans && kept > limits.max_coded_levels {
            return Err(bad(format!(
                "{kept} entropy-coded levels exceed the limit {}",
                limits.max_coded_levels
            )));
        }
        let (levels, coding, pos_bytes) = if kind == RecordKind::SparseSeeded {
            let lvl_len = c.u64("levels byte length")?;
            let want = bitpack::packed_len(kept, bits)
                .ok_or_else(|| bad("levels length overflows".into()))?;
            if lvl_len != want || lvl_len != c.left() {
                return Err(bad(format!(
                    "levels byte length {lvl_len}, expected {want} for {kept} levels at {bits} bits, {} bytes follow",
                    c.left()
                )));
            }
            let n = usize::try_from(kept).map_err(|_| bad(format!("kept {kept} too large")))?;
            let levels = bitpack::unpack(c.take(lvl_len, "levels stream")?, bits, n)?;
            (levels, LevelCoding::Packed, &[][..])
        } else {
            let b = c.take(4, "symbol count")?;
            let nsym = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
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
            if kind == RecordKind::SparseSeededRans && symbols.len() == 1 {
                return Err(bad("kind 12 needs at least two symbols".into()));
            }
            let ans_len = c.u64("rANS byte length")?;
            if ans_len % 2 != 0 {
                return Err(bad(format!("rANS byte length {ans_len} is odd")));
            }
            if pos_len.checked_add(ans_len) != Some(c.left()) {
                return Err(bad(format!(
                    "streams of {pos_len} + {ans_len} bytes declared, {} bytes follow",
                    c.left()
                )));
            }
            let pos_bytes = c.take(pos_len, "positions stream")?;
            let words: Vec<u16> = c
                .take(ans_len, "rANS stream")?
                .chunks_exact(2)
                .map(|w| u16::from_le_bytes([w[0], w[1]]))
                .collect();
            let levels = rans::decode_levels(&symbols, &freqs, &words, kept)?;
            (levels, LevelCoding::Rans, pos_bytes)
        };
        let positions = match (golomb_fields, seeded) {
            (Some((m, pos_bits, _)), _) => Positions::Golomb(golomb::decode_positions(
                pos_bytes, pos_bits, m, kept, numel,
            )?),
            (None, Some((seed, trial))) => Positions::Seeded { seed, trial },
            (None, None) => unreachable!("a coded kind has Golomb or seeded positions"),
        };
        Ok(CodedSparseRecord {
            numel,
            quant,
            scale,
            positions,
            levels,
            coding,
        })
    }
}

/// Bytes of a coded record's parts, for cost reports: positions stream, levels (stream and model table), and
/// the rest (header and fixed fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordCost {
    /// Bits of the positions stream (0 for seeded positions).
    pub position_bits: u64,
    /// Bits of the levels: packed stream, or rANS words plus the model table.
    pub value_bits: u64,
}

/// Splits an encoded record (header + payload, as [`crate::encode_record`] writes it) into position and value
/// bits, for the sparse kinds that store levels (1, 10, 11, 12); `None` for other kinds or malformed bytes.
pub fn record_cost(bytes: &[u8]) -> Option<RecordCost> {
    let kind = RecordKind::from_code(*bytes.first()?)?;
    let ndim = usize::from(*bytes.get(2)?);
    let mut at = 4 + 8 * ndim + 8 + COMMON_BYTES;
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    match kind {
        RecordKind::SparseGolomb => {
            // m, pos_bits, pos_len, lvl_len after kept/bits/lo/step/scale.
            let pos_len = u64_at(at + 16)?;
            let lvl_len = u64_at(at + 24)?;
            Some(RecordCost {
                position_bits: pos_len * 8,
                value_bits: lvl_len * 8,
            })
        }
        RecordKind::SparseSeeded => Some(RecordCost {
            position_bits: 0,
            value_bits: u64_at(at + 12)? * 8,
        }),
        RecordKind::SparseGolombRans | RecordKind::SparseSeededRans => {
            let pos_len = if kind == RecordKind::SparseGolombRans {
                let l = u64_at(at + 16)?;
                at += 24;
                l
            } else {
                at += 12;
                0
            };
            let nsym = u64::from(u32_at(at)?);
            let ans_len = u64_at(at + 4 + 4 * nsym as usize)?;
            Some(RecordCost {
                position_bits: pos_len * 8,
                value_bits: (4 + 4 * nsym + 8 + ans_len) * 8,
            })
        }
        _ => None,
    }
}
