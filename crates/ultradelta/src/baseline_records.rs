//! The baselines' plain results as the archive records that store them (field for field): `ultradelta-baselines`
//! does not know the archive format, the archive does not know the baselines.

use ultradelta_archive::{
    DenseLevelsRecord, LowRankRecord, Record, SignRecord, SparseValuesRecord,
};
use ultradelta_baselines::{DenseLevels, LowRank, Signs, SparseValues};

/// A baseline result turned into the record that stores it.
pub(crate) trait IntoRecord {
    /// The record (`sparse-f16`, `sparse-sign` / `dense-sign`, `lowrank-f16` or `dense-levels`).
    fn into_record(self) -> Record;
}

impl IntoRecord for SparseValues {
    fn into_record(self) -> Record {
        Record::SparseValues(SparseValuesRecord {
            numel: self.numel,
            scale: self.scale,
            positions: self.positions,
            values: self.values,
        })
    }
}

impl IntoRecord for Signs {
    fn into_record(self) -> Record {
        Record::Sign(SignRecord {
            numel: self.numel,
            magnitude: self.magnitude,
            positions: self.positions,
            negative: self.negative,
        })
    }
}

impl IntoRecord for LowRank {
    fn into_record(self) -> Record {
        Record::LowRank(LowRankRecord {
            rows: self.rows,
            cols: self.cols,
            rank: self.rank,
            u: self.u,
            v: self.v,
            scale: self.scale,
        })
    }
}

impl IntoRecord for DenseLevels {
    fn into_record(self) -> Record {
        Record::DenseLevels(DenseLevelsRecord {
            quant: self.quant,
            scale: self.scale,
            levels: self.levels,
        })
    }
}
