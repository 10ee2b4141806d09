//! Kind 16, `lowrank-seeded-rans` (docs/FORMAT.md, "Kind 16"): the delta of a 2-D tensor as a low-rank part with
//! quantized factors (one entropy-coded levels block) plus a sparse residual stored exactly as a kind-11 or
//! kind-12 payload. [`LowRankSparseRecord`] holds it.

use ultradelta_core::seeded::{trial_seed, SeededSample};

use super::common::{
    check_len, put_rans_fields, put_rans_words, rans_block_len, read_rans_fields, Head,
};
use super::{sparse_seeded, sparse_seeded_rans};
use crate::coded::RecordCost;
use crate::record::{Cursor, RecordHeader};
use crate::{
    rans, CodedSparseRecord, Error, LevelCoding, Limits, Positions, Record, RecordKind, Result,
};

/// Fixed part of a `lowrank-seeded-rans` payload before the factor scales: rank, factor bits
/// (`LOWRANK_SEEDED_RANS_FIXED_BYTES`).
pub(crate) const FIXED_BYTES: usize = 4 + 1;

/// Bytes of one rank's pair of factor scales `(su_k, sv_k)`.
const SCALE_PAIR_BYTES: u64 = 8;

/// A low-rank delta with quantized factors plus a sparse residual (`lowrank-seeded-rans`, kind 16), for a 2-D
/// tensor of shape `[rows, cols]`.
///
/// With `L = 2^(factor_bits − 1) − 1` (the level of a zero factor entry), rank `r = scales.len()` and, for
/// `k < r`, `u_k[i] = f32(levels[k·(rows+cols) + i] − L) · scales[k].0` and
/// `v_k[j] = f32(levels[k·(rows+cols) + rows + j] − L) · scales[k].1`, entry `(i, j)` is
/// `Σ_k u_k[i] · v_k[j]` (f32, from 0, `k` increasing) plus, at the residual's kept positions, the residual's value
/// ([`CodedSparseRecord::value`]); [`add_into`](Self::add_into) adds that sum times γ.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRankSparseRecord {
    /// Rows of the tensor (`shape[0]`).
    pub rows: u64,
    /// Columns of the tensor (`shape[1]`).
    pub cols: u64,
    /// Bits `b` of a factor level, [`Self::MIN_FACTOR_BITS`]`..=`[`Self::MAX_FACTOR_BITS`]; levels are `0..=2L`,
    /// `L = 2^(b−1) − 1`.
    pub factor_bits: u8,
    /// One pair `(su_k, sv_k)` of finite scales per rank; the rank is its length, `1..=min(rows, cols)`.
    pub scales: Vec<(f32, f32)>,
    /// The `r·(rows + cols)` factor levels: `u_1` (`rows` levels), `v_1` (`cols` levels), `u_2`, `v_2`, ….
    pub levels: Vec<u16>,
    /// The sparse residual over the `rows·cols` entries: seeded positions, stored as kind 11 (packed levels) or
    /// kind 12 (entropy-coded levels) as its [`LevelCoding`] says. Kind 12 needs two distinct levels:
    /// [`CodedSparseRecord::into_record`] gives the coding to store.
    pub residual: CodedSparseRecord,
}

impl LowRankSparseRecord {
    /// Smallest factor bit width.
    pub const MIN_FACTOR_BITS: u8 = 2;

    /// Largest factor bit width.
    pub const MAX_FACTOR_BITS: u8 = 8;

    /// The rank `r` (number of scale pairs).
    pub fn rank(&self) -> u64 {
        self.scales.len() as u64
    }

    /// Entries of the dense tensor (saturating; a valid record's product fits).
    pub fn numel(&self) -> u64 {
        self.rows.saturating_mul(self.cols)
    }

    /// The level of a zero factor entry, `L = 2^(factor_bits − 1) − 1` (0 for a bit width below 1).
    pub fn zero_level(&self) -> u16 {
        zero_level(self.factor_bits)
    }

    /// Kind of the residual's payload: 11 (`sparse-seeded`) for packed levels, 12 (`sparse-seeded-rans`) for
    /// entropy-coded ones.
    pub fn residual_kind(&self) -> RecordKind {
        match self.residual.coding {
            LevelCoding::Packed => RecordKind::SparseSeeded,
            LevelCoding::Rans => RecordKind::SparseSeededRans,
        }
    }

    /// Adds `value[i, j] * gamma` (the type's formula) into `out` (row-major `rows × cols`). Memory beyond `out`:
    /// the `r·cols` factor values of V and one row of `cols` sums.
    ///
    /// # Panics
    /// If `out.len() != rows · cols` or the record violates its invariants (records read from an archive are
    /// validated; [`Record::add_delta_into`] validates first).
    pub fn add_into(&self, gamma: f32, out: &mut [f32]) {
        check_len(out.len(), self.numel());
        let cols = self.cols as usize;
        self.for_each_row(|i, sums| {
            for (o, a) in out[i * cols..(i + 1) * cols].iter_mut().zip(sums) {
                *o += a * gamma;
            }
        });
    }

    /// Calls `f(i, row)` for each row `i` in increasing order, with row `i`'s values (the type's formula, before
    /// γ) in a buffer of `cols` sums that is reused from row to row. Memory: the `r·cols` factor values of V and
    /// that buffer.
    pub(crate) fn for_each_row(&self, mut f: impl FnMut(usize, &[f32])) {
        let (rows, cols) = (self.rows as usize, self.cols as usize);
        if rows == 0 || cols == 0 {
            return;
        }
        let l = i32::from(self.zero_level());
        let level = |x: u16| (i32::from(x) - l) as f32;
        let stride = rows + cols;
        let v: Vec<f32> = self
            .scales
            .iter()
            .enumerate()
            .flat_map(|(k, &(_, sv))| {
                self.levels[k * stride + rows..(k + 1) * stride]
                    .iter()
                    .map(move |&x| level(x) * sv)
            })
            .collect();
        let residual = &self.residual;
        let sample = match residual.positions {
            Positions::Seeded { seed, trial } => Some(SeededSample::new(
                residual.numel,
                residual.kept(),
                trial_seed(seed, trial),
            )),
            Positions::Golomb(_) => None,
        };
        let mut kept: Box<dyn Iterator<Item = u64> + '_> = match (&sample, &residual.positions) {
            (Some(s), _) => Box::new(s.iter()),
            (None, Positions::Golomb(p)) => Box::new(p.iter().copied()),
            (None, Positions::Seeded { .. }) => Box::new(std::iter::empty()),
        };
        let mut next = kept.next();
        let mut index = 0usize;
        let mut acc = vec![0f32; cols];
        for i in 0..rows {
            acc.iter_mut().for_each(|a| *a = 0.0);
            for (k, &(su, _)) in self.scales.iter().enumerate() {
                let uk = level(self.levels[k * stride + i]) * su;
                for (a, &vk) in acc.iter_mut().zip(&v[k * cols..(k + 1) * cols]) {
                    *a += uk * vk;
                }
            }
            let end = ((i + 1) * cols) as u64;
            while let Some(p) = next.filter(|&p| p < end) {
                acc[p as usize - i * cols] += residual.value(index);
                index += 1;
                next = kept.next();
            }
            f(i, &acc);
        }
    }

    /// Checks the format's invariants: the shape, rank, bit width and scales, every factor level in `0..=2L`,
    /// and the residual (seeded positions, `rows·cols` entries, valid as kind 11 or 12).
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] describing the first violation.
    pub fn validate(&self) -> Result<()> {
        let bad = |d: String| Err(Error::record(d));
        let Some(numel) = self.rows.checked_mul(self.cols) else {
            return bad(format!("{}x{} overflows", self.rows, self.cols));
        };
        if !(MIN_FACTOR_BITS..=MAX_FACTOR_BITS).contains(&self.factor_bits) {
            return bad(format!(
                "factor bit width {} outside {MIN_FACTOR_BITS}..={MAX_FACTOR_BITS}",
                self.factor_bits
            ));
        }
        let rank = self.rank();
        if rank == 0 || rank > self.rows.min(self.cols) || rank > u64::from(u32::MAX) {
            return bad(format!(
                "rank {rank} outside 1..=min({}, {})",
                self.rows, self.cols
            ));
        }
        if let Some(k) = self
            .scales
            .iter()
            .position(|(su, sv)| !su.is_finite() || !sv.is_finite())
        {
            return bad(format!(
                "factor scales[{k}] = {:?} are not finite",
                self.scales[k]
            ));
        }
        let want = self
            .rows
            .checked_add(self.cols)
            .and_then(|n| n.checked_mul(rank));
        if want != Some(self.levels.len() as u64) {
            return bad(format!(
                "{} factor levels, expected {rank}·({} + {})",
                self.levels.len(),
                self.rows,
                self.cols
            ));
        }
        let top = 2 * self.zero_level();
        if let Some(i) = self.levels.iter().position(|&x| x > top) {
            return bad(format!(
                "factor levels[{i}] = {} above 2L = {top} for {} bits",
                self.levels[i], self.factor_bits
            ));
        }
        if !matches!(self.residual.positions, Positions::Seeded { .. }) {
            return bad(
                "the residual of a low-rank record needs seeded positions (kind 11 or 12)".into(),
            );
        }
        if self.residual.numel != numel {
            return bad(format!(
                "residual of {} entries for a {}x{} tensor",
                self.residual.numel, self.rows, self.cols
            ));
        }
        self.residual.validate()
    }
}

const MIN_FACTOR_BITS: u8 = LowRankSparseRecord::MIN_FACTOR_BITS;
const MAX_FACTOR_BITS: u8 = LowRankSparseRecord::MAX_FACTOR_BITS;

/// `L = 2^(bits − 1) − 1`, the level of a zero factor entry (0 for a bit width of 0 or above 16).
fn zero_level(bits: u8) -> u16 {
    match bits {
        1..=16 => (1u16 << (bits - 1)) - 1,
        _ => 0,
    }
}

/// Writes header and payload.
pub(crate) fn encode(r: &LowRankSparseRecord, head: &Head<'_>, out: &mut Vec<u8>) -> Result<()> {
    r.validate()?;
    if head.dims != [r.rows, r.cols] {
        return Err(Error::record(format!(
            "a {}x{} low-rank record needs shape [{}, {}], not {:?}",
            r.rows, r.cols, r.rows, r.cols, head.shape
        )));
    }
    head.put(out, RecordKind::LowrankSeededRans)?;
    out.extend_from_slice(&(r.rank() as u32).to_le_bytes());
    out.push(r.factor_bits);
    for (su, sv) in &r.scales {
        out.extend_from_slice(&su.to_le_bytes());
        out.extend_from_slice(&sv.to_le_bytes());
    }
    let block = rans::encode_levels(&r.levels)?;
    put_rans_fields(out, &block);
    put_rans_words(out, &block);
    out.push(r.residual_kind().code());
    let Positions::Seeded { seed, trial } = r.residual.positions else {
        return Err(Error::record("the residual needs seeded positions"));
    };
    match r.residual.coding {
        LevelCoding::Packed => sparse_seeded::put_payload(&r.residual, (seed, trial), out),
        LevelCoding::Rans => sparse_seeded_rans::put_payload(&r.residual, (seed, trial), out),
    }
}

/// Exact payload length [`encode`] writes (runs the rANS coder on the factor levels and, for a kind-12
/// residual, on its levels).
pub(crate) fn encoded_len(r: &LowRankSparseRecord) -> Result<u64> {
    r.validate()?;
    let block = rans::encode_levels(&r.levels)?;
    Ok(FIXED_BYTES as u64
        + SCALE_PAIR_BYTES * r.rank()
        + 4
        + rans_block_len(&block)
        + 1
        + r.residual.encoded_len()?)
}

pub(crate) fn decode(c: &mut Cursor<'_>, header: &RecordHeader, limits: &Limits) -> Result<Record> {
    let bad = |d: String| Error::stream("record", d);
    let &[rows, cols] = header.shape.as_slice() else {
        return Err(bad(format!(
            "a lowrank-seeded-rans record needs 2 dimensions, shape is {:?}",
            header.shape
        )));
    };
    // Its index entry keeps numel entries, as kind 8's (the residual's own kept count is not the entry's).
    c.check_kept(header.numel)?;
    let rank = c.u32("rank")?;
    let bits = c.u8("factor bits")?;
    if rank == 0 || u64::from(rank) > rows.min(cols) {
        return Err(bad(format!("rank {rank} outside 1..=min({rows}, {cols})")));
    }
    if !(MIN_FACTOR_BITS..=MAX_FACTOR_BITS).contains(&bits) {
        return Err(bad(format!(
            "factor bit width {bits} outside {MIN_FACTOR_BITS}..={MAX_FACTOR_BITS}"
        )));
    }
    // Checked before anything else is read, so a few bytes cannot make the reader decode more.
    let count = rows
        .checked_add(cols)
        .and_then(|n| n.checked_mul(u64::from(rank)))
        .ok_or_else(|| bad("factor level count overflows".into()))?;
    if count > limits.max_coded_levels {
        return Err(bad(format!(
            "{count} entropy-coded factor levels exceed the limit {}",
            limits.max_coded_levels
        )));
    }
    let table = c.take(SCALE_PAIR_BYTES * u64::from(rank), "factor scales")?;
    let scales: Vec<(f32, f32)> = table
        .chunks_exact(8)
        .map(|s| {
            (
                f32::from_le_bytes([s[0], s[1], s[2], s[3]]),
                f32::from_le_bytes([s[4], s[5], s[6], s[7]]),
            )
        })
        .collect();
    if let Some(k) = scales
        .iter()
        .position(|(su, sv)| !su.is_finite() || !sv.is_finite())
    {
        return Err(bad(format!(
            "factor scales[{k}] = {:?} are not finite",
            scales[k]
        )));
    }
    let block = read_rans_fields(c, bits, count, false)?;
    let top = 2 * zero_level(bits);
    if let Some(&s) = block.symbols.last().filter(|&&s| s > top) {
        return Err(bad(format!(
            "factor level {s} above 2L = {top} for {bits} bits"
        )));
    }
    if c.left() <= block.ans_len {
        return Err(bad(format!(
            "factor stream of {} bytes and a residual declared, {} bytes follow",
            block.ans_len,
            c.left()
        )));
    }
    let levels = if c.check_only {
        block.check_levels(c, count)?;
        Vec::new()
    } else {
        block.decode_levels(c, count)?
    };
    let residual_code = c.u8("residual kind")?;
    // The residual's payload declares its own kept count, which the index entry does not hold.
    let expect_kept = c.expect_kept.take();
    let residual = match RecordKind::from_code(residual_code) {
        Some(RecordKind::SparseSeeded) => sparse_seeded::decode(c, header, limits),
        Some(RecordKind::SparseSeededRans) => sparse_seeded_rans::decode(c, header, limits),
        _ => Err(bad(format!(
            "residual kind {residual_code}, expected 11 (sparse-seeded) or 12 (sparse-seeded-rans)"
        ))),
    };
    c.expect_kept = expect_kept;
    let Record::Coded(residual) = residual? else {
        return Err(bad(
            "the residual did not decode as a coded sparse record".into()
        ));
    };
    Ok(Record::LowRankSparse(LowRankSparseRecord {
        rows,
        cols,
        factor_bits: bits,
        scales,
        levels,
        residual,
    }))
}

/// The factor block's bits as `lowrank_bits`, the residual's position and value bits as its own kind counts them,
/// and the residual's kept count (the first field of its payload).
pub(crate) fn cost(c: &mut Cursor<'_>) -> Option<RecordCost> {
    let rank = c.u32("rank").ok()?;
    c.skip(1 + SCALE_PAIR_BYTES * u64::from(rank))?;
    let nsym = c.u32("symbol count").ok()?;
    c.skip(4 * u64::from(nsym))?;
    let ans_len = c.u64("rANS byte length").ok()?;
    c.skip(ans_len)?;
    let lowrank_bytes = (FIXED_BYTES as u64)
        .checked_add(SCALE_PAIR_BYTES.checked_mul(u64::from(rank))?)?
        .checked_add(4 + 4 * u64::from(nsym) + 8)?
        .checked_add(ans_len)?;
    let kind = RecordKind::from_code(c.u8("residual kind").ok()?)?;
    let kept = c.clone().u64("kept").ok()?;
    let residual = match kind {
        RecordKind::SparseSeeded => sparse_seeded::cost(c)?,
        RecordKind::SparseSeededRans => sparse_seeded_rans::cost(c)?,
        _ => return None,
    };
    Some(RecordCost {
        // The residual's kind byte counts as overhead, like the header.
        lowrank_bits: lowrank_bytes.checked_mul(8)?,
        sparse_kept: Some(kept),
        rank: u64::from(rank),
        residual_kind: Some(kind),
        ..residual
    })
}
