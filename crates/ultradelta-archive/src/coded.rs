//! UltraDelta's kept levels in the coded sparse kinds (docs/FORMAT.md, kinds 10–12): seeded positions (none
//! stored) and/or entropy-coded levels, the two ways past the paper's own bit count (ALGORITHM.md §5).
//!
//! | kind | positions | levels | bytes |
//! |---|---|---|---|
//! | 10 `sparse-golomb-rans` | Golomb-coded gaps, as kind 1 | rANS ([`crate::rans`]) | `kinds::sparse_golomb_rans` |
//! | 11 `sparse-seeded` | regenerated from `(seed, trial)` | bit-packed, as kind 1 | `kinds::sparse_seeded` |
//! | 12 `sparse-seeded-rans` | regenerated from `(seed, trial)` | rANS | `kinds::sparse_seeded_rans` |
//!
//! This module holds the one payload type of the three, [`CodedSparseRecord`], with its invariants and decoding
//! formula; each kind's module owns its bytes. Golomb positions with bit-packed levels are kind 1
//! ([`crate::SparseRecord`]); [`CodedSparseRecord::into_record`] gives that kind for that combination, so one
//! value has one encoding.

use ultradelta_core::seeded::{trial_seed, SeededSample};
use ultradelta_core::QuantParams;

use crate::kinds::common::{check_quantized_levels, rans_block_len, GolombStream};
use crate::kinds::{sparse_golomb, sparse_golomb_rans, sparse_seeded, sparse_seeded_rans};
use crate::record::{Cursor, Record};
use crate::{golomb, rans, Error, RecordKind, Result, SparseRecord};

/// Why [`Record::Coded`] cannot hold Golomb positions with packed levels.
pub(crate) const NOT_KIND_1: &str =
    "Golomb positions with packed levels are kind 1: use CodedSparseRecord::into_record";

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

    /// Value of kept entry `i` before γ: `dequantize(levels[i]) * scale` (what [`CodedSparseRecord::add_into`]
    /// adds, times γ, at the entry's position).
    ///
    /// # Panics
    /// If `i >= self.kept()`.
    #[inline]
    pub fn value(&self, i: usize) -> f32 {
        self.quant.dequantize(self.levels[i]) * self.scale
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
        self.for_each_value(gamma, |p, x| out[p] += x);
    }

    /// Calls `f(p, value[p] · γ)` for each kept position `p`, in increasing order (no position twice), with the
    /// exact product [`add_into`](Self::add_into) adds.
    pub(crate) fn for_each_value(&self, gamma: f32, mut f: impl FnMut(usize, f32)) {
        let (q, scale) = (self.quant, self.scale);
        match &self.positions {
            Positions::Golomb(pos) => {
                for (&p, &l) in pos.iter().zip(&self.levels) {
                    f(p as usize, (q.dequantize(l) * scale) * gamma);
                }
            }
            Positions::Seeded { seed, trial } => {
                let sample = SeededSample::new(self.numel, self.kept(), trial_seed(*seed, *trial));
                for (p, &l) in sample.iter().zip(&self.levels) {
                    f(p as usize, (q.dequantize(l) * scale) * gamma);
                }
            }
        }
    }

    /// Checks the format's invariants.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] describing the first violation.
    pub fn validate(&self) -> Result<()> {
        check_quantized_levels(&self.quant, self.scale, &self.levels)?;
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

    /// Whether there are levels and all are equal (no information in them).
    fn single_level(&self) -> bool {
        !self.levels.is_empty() && self.levels.iter().all(|&l| l == self.levels[0])
    }

    /// Exact byte length of the payload of the record [`into_record`](Self::into_record) stores for these kept
    /// entries with their levels coded as `coding`, *less its Golomb positions stream*: the part that depends on
    /// how the levels are coded. Both codings of the same entries share that stream (and seeded positions have
    /// none), so comparing this length for [`LevelCoding::Packed`] and [`LevelCoding::Rans`] compares the whole
    /// records without sizing the stream. Runs the rANS coder for `Rans`; assumes a valid record (see
    /// [`validate`](Self::validate)).
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] if the rANS coder fails.
    pub fn len_without_positions(&self, coding: LevelCoding) -> Result<u64> {
        let packed = sparse_golomb::levels_len(self.levels.len(), self.quant.bits);
        let entropy = || -> Result<u64> { Ok(rans_block_len(&rans::encode_levels(&self.levels)?)) };
        Ok(match (&self.positions, coding) {
            (Positions::Golomb(_), LevelCoding::Packed) => {
                (sparse_golomb::FIXED_BYTES as u64).saturating_add(packed)
            }
            (Positions::Golomb(_), LevelCoding::Rans) => {
                sparse_golomb_rans::FIXED_BYTES as u64 + entropy()?
            }
            (Positions::Seeded { .. }, LevelCoding::Rans) if !self.single_level() => {
                sparse_seeded_rans::FIXED_BYTES as u64 + entropy()?
            }
            // Kind 11; a single level with seeded positions is stored as kind 11 whatever the coding.
            (Positions::Seeded { .. }, LevelCoding::Packed | LevelCoding::Rans) => {
                (sparse_seeded::FIXED_BYTES as u64).saturating_add(packed)
            }
        })
    }

    /// Exact payload length of the record this value encodes to (as [`Record::Coded`]; kind 1 for Golomb
    /// positions with packed levels).
    pub(crate) fn encoded_len(&self) -> Result<u64> {
        if let (Positions::Golomb(_), LevelCoding::Packed) = (&self.positions, self.coding) {
            return Err(Error::record(NOT_KIND_1));
        }
        self.validate()?;
        let positions = match &self.positions {
            Positions::Golomb(pos) => GolombStream::encoded_len(pos, self.numel)?,
            Positions::Seeded { .. } => 0,
        };
        Ok(self.len_without_positions(self.coding)? + positions)
    }
}

/// Bits of a coded record's parts, for cost reports: positions stream, levels (stream and model table), a
/// low-rank part, and the rest (header and fixed fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordCost {
    /// Bits of the positions stream (0 for seeded positions).
    pub position_bits: u64,
    /// Bits of the sparse levels: packed stream, or rANS words plus the model table.
    pub value_bits: u64,
    /// Bits of a low-rank part (kind 16: rank, factor bits, scales, the factor levels' table and stream; 0 for
    /// the other kinds).
    pub lowrank_bits: u64,
    /// The sparse part's kept entries when the index's `kept` counts something else (kind 16, whose index
    /// entry counts every entry: the low-rank part sets them all); `None` for the sparse kinds.
    pub sparse_kept: Option<u64>,
    /// Rank of the low-rank part (kind 16), 0 for the other kinds.
    pub rank: u64,
    /// Kind of the sparse residual's payload (kind 16: 11 or 12; kind 17: its nested record's, or that record's
    /// residual's), `None` for the other kinds.
    pub residual_kind: Option<RecordKind>,
    /// Rows listed by a `row-subset` record (kind 17), `None` for the other kinds.
    pub listed_rows: Option<u64>,
}

/// Splits an encoded record (header + payload, as [`crate::encode_record`] writes it) into position, value and
/// low-rank bits, for the kinds that store sparse levels (1, 10, 11, 12, 16 beside its low-rank part, and 17, whose
/// row list counts as positions, around its nested record); `None` for other kinds or malformed bytes.
pub fn record_cost(bytes: &[u8]) -> Option<RecordCost> {
    let mut c = Cursor::new(bytes);
    let kind = RecordKind::from_code(c.u8("kind").ok()?)?;
    c.skip(1)?;
    let ndim = c.u8("ndim").ok()?;
    c.skip(1 + 8 * u64::from(ndim) + 8)?;
    crate::kinds::payload_cost(kind, &mut c)
}
