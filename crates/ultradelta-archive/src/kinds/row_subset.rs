//! Kind 17, `row-subset` (docs/FORMAT.md, "Kind 17"): the delta of a 2-D tensor that is zero outside a listed
//! set of rows — a token-embedding table whose fine-tuning moved only the rows of the tokens it saw — as the
//! Golomb-coded row list plus a nested record (kind 11, 12 or 16) of the listed rows gathered into an
//! `[h, cols]` matrix. [`RowSubsetRecord`] holds it.

use super::common::{check_len, read_golomb_lengths, GolombStream, Head, GOLOMB_FIELDS_BYTES};
use crate::coded::RecordCost;
use crate::record::{decode_header_at, encode_record, Cursor, RecordHeader};
use crate::{golomb, Error, Limits, Positions, Record, RecordKind, Result};

/// Fixed part of a `row-subset` payload before the row stream: the listed row count and the Golomb fields
/// (`ROW_SUBSET_FIXED_BYTES`).
pub(crate) const FIXED_BYTES: usize = 8 + GOLOMB_FIELDS_BYTES;

/// The kinds a `row-subset` record may nest: the seeded sparse kinds and the low-rank one built on them.
pub const NESTED_KINDS: [RecordKind; 3] = [
    RecordKind::SparseSeeded,
    RecordKind::SparseSeededRans,
    RecordKind::LowrankSeededRans,
];

/// The delta of a `[rows, cols]` tensor that is zero outside the rows `listed` (`row-subset`, kind 17).
///
/// Row `listed[i]` of the delta is row `i` of `inner`'s `[listed.len(), cols]` delta; every other row is zero.
/// [`add_into`](Self::add_into) adds the listed rows times γ, each entry exactly as `inner` computes it.
#[derive(Clone, Debug, PartialEq)]
pub struct RowSubsetRecord {
    /// Rows of the tensor (`shape[0]`).
    pub rows: u64,
    /// Columns of the tensor (`shape[1]`).
    pub cols: u64,
    /// The rows the delta may change: at least one, strictly increasing, below `rows`.
    pub listed: Vec<u64>,
    /// The listed rows' delta, `[listed.len(), cols]`: a seeded sparse record ([`Record::Coded`] with seeded
    /// positions, kind 11 or 12) or a low-rank one ([`Record::LowRankSparse`], kind 16).
    pub inner: Box<Record>,
}

impl RowSubsetRecord {
    /// Entries of the dense tensor (saturating; a valid record's product fits).
    pub fn numel(&self) -> u64 {
        self.rows.saturating_mul(self.cols)
    }

    /// Entries of the nested record: `listed.len() · cols` (saturating).
    pub fn inner_numel(&self) -> u64 {
        (self.listed.len() as u64).saturating_mul(self.cols)
    }

    /// The index entry's `kept`: the nested record's (its kept entries for kinds 11 and 12, its every entry for
    /// kind 16).
    pub fn kept(&self) -> u64 {
        self.inner.kept().unwrap_or(0)
    }

    /// Adds `value[i, j] * gamma` into `out` (row-major `rows × cols`). Memory beyond `out`: none for a nested
    /// kind 11 or 12 record, a nested kind 16's factor values of V and one row.
    ///
    /// The result is bit for bit that of adding the nested record's `[h, cols]` delta, computed into zeros, to the
    /// listed rows (how version 2's first readers decoded it, and how the format defines it): each listed entry
    /// becomes `(out + 0) + (0 + v·γ)`, which only differs from `out + v·γ` in the sign of a zero.
    ///
    /// # Panics
    /// If `out.len() != rows · cols` or the record violates its invariants (records read from an archive are
    /// validated; [`Record::add_delta_into`] validates first).
    pub fn add_into(&self, gamma: f32, out: &mut [f32]) {
        check_len(out.len(), self.numel());
        let cols = self.cols as usize;
        if cols == 0 {
            return;
        }
        let row = |i: usize| self.listed[i] as usize * cols;
        match self.inner.as_ref() {
            Record::Coded(c) => {
                // An entry the nested record does not keep gets `+ 0`, as it did from a buffer of zeros.
                for &r in &self.listed {
                    let start = r as usize * cols;
                    out[start..start + cols].iter_mut().for_each(|o| *o += 0.0);
                }
                c.for_each_value(gamma, |p, x| out[row(p / cols) + p % cols] += 0.0 + x);
            }
            Record::LowRankSparse(r) => r.for_each_row(|i, sums| {
                let start = row(i);
                for (o, a) in out[start..start + cols].iter_mut().zip(sums) {
                    *o = (*o + 0.0) + (0.0 + a * gamma);
                }
            }),
            other => panic!(
                "a row-subset record cannot nest a {} record",
                other.kind().name()
            ),
        }
    }

    /// Checks the format's invariants: the shape, the row list (non-empty, strictly increasing, below `rows`) and
    /// the nested record (kind 11, 12 or 16, valid, of `listed.len() · cols` entries).
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] describing the first violation.
    pub fn validate(&self) -> Result<()> {
        let bad = |d: String| Err(Error::record(d));
        if self.rows.checked_mul(self.cols).is_none() {
            return bad(format!("{}x{} overflows", self.rows, self.cols));
        }
        if self.listed.is_empty() {
            return bad("a row-subset record lists no row".into());
        }
        golomb::validate_positions(&self.listed, self.rows)
            .map_err(|e| Error::record(format!("listed rows: {e}")))?;
        let want = self.inner_numel();
        let numel = match self.inner.as_ref() {
            Record::Coded(c) => {
                if !matches!(c.positions, Positions::Seeded { .. }) {
                    return bad("the nested record of a row-subset record needs seeded positions (kind 11 or 12)".into());
                }
                c.validate()?;
                c.numel
            }
            Record::LowRankSparse(r) => {
                if r.cols != self.cols {
                    return bad(format!(
                        "nested low-rank record of {} columns for a tensor of {}",
                        r.cols, self.cols
                    ));
                }
                r.validate()?;
                r.numel()
            }
            other => {
                return bad(format!(
                    "a row-subset record cannot nest a {} record",
                    other.kind().name()
                ))
            }
        };
        if numel != want {
            return bad(format!(
                "nested record of {numel} entries for {} rows of {} columns",
                self.listed.len(),
                self.cols
            ));
        }
        Ok(())
    }
}

/// Writes header and payload: the listed row count, the row list as Golomb-coded gaps (kind 1's positions coding,
/// over `rows`), then the nested record whole (its own common header, shape `[listed.len(), cols]`).
pub(crate) fn encode(r: &RowSubsetRecord, head: &Head<'_>, out: &mut Vec<u8>) -> Result<()> {
    r.validate()?;
    if head.dims != [r.rows, r.cols] {
        return Err(Error::record(format!(
            "a {}x{} row-subset record needs shape [{}, {}], not {:?}",
            r.rows, r.cols, r.rows, r.cols, head.shape
        )));
    }
    head.put(out, RecordKind::RowSubset)?;
    out.extend_from_slice(&(r.listed.len() as u64).to_le_bytes());
    let stream = GolombStream::encode(&r.listed, r.rows)?;
    stream.put_fields(out);
    out.extend_from_slice(&stream.bytes);
    out.extend_from_slice(&encode_record(head.dtype, &inner_shape(r)?, &r.inner, 0)?);
    Ok(())
}

/// The nested record's shape, `[listed.len(), cols]`.
fn inner_shape(r: &RowSubsetRecord) -> Result<[usize; 2]> {
    let cols = usize::try_from(r.cols)
        .map_err(|_| Error::record(format!("{} columns do not fit in memory", r.cols)))?;
    Ok([r.listed.len(), cols])
}

/// Exact payload length [`encode`] writes (runs the Golomb parameter search and the nested record's coders).
pub(crate) fn encoded_len(r: &RowSubsetRecord) -> Result<u64> {
    r.validate()?;
    Ok(FIXED_BYTES as u64
        + GolombStream::encoded_len(&r.listed, r.rows)?
        + r.inner.encoded_len(2, 0)?)
}

pub(crate) fn decode(c: &mut Cursor<'_>, header: &RecordHeader, limits: &Limits) -> Result<Record> {
    let bad = |d: String| Error::stream("record", d);
    let &[rows, cols] = header.shape.as_slice() else {
        return Err(bad(format!(
            "a row-subset record needs 2 dimensions, shape is {:?}",
            header.shape
        )));
    };
    let h = c.u64("listed rows")?;
    if h == 0 || h > rows {
        return Err(bad(format!("{h} listed rows, expected 1..={rows}")));
    }
    let (m, pos_bits, pos_len) = read_golomb_lengths(c)?;
    if pos_len >= c.left() {
        return Err(bad(format!(
            "row stream of {pos_len} bytes and a nested record declared, {} bytes follow",
            c.left()
        )));
    }
    // At most `pos_bits` rows come out of `pos_len` bytes: the count is checked against them before allocating.
    let listed = golomb::decode_positions(c.take(pos_len, "row stream")?, pos_bits, m, h, rows)?;
    let inner_header = decode_header_at(c, limits)?;
    if !NESTED_KINDS.contains(&inner_header.kind) {
        return Err(bad(format!(
            "nested record of kind {} ({}), expected 11, 12 or 16",
            inner_header.kind.code(),
            inner_header.kind.name()
        )));
    }
    if inner_header.dtype != header.dtype || inner_header.shape != [h, cols] {
        return Err(bad(format!(
            "nested record of dtype {} and shape {:?}, expected {} and [{h}, {cols}]",
            inner_header.dtype.name(),
            inner_header.shape,
            header.dtype.name()
        )));
    }
    // The index entry's `kept` is the nested record's, which its own payload checks.
    let inner = super::decode_payload(c, &inner_header, limits)?;
    Ok(Record::RowSubset(RowSubsetRecord {
        rows,
        cols,
        listed,
        inner: Box::new(inner),
    }))
}

/// The row list's bits (with the listed count and the Golomb fields) as position bits, and the nested record's
/// split; `residual_kind` names the nested sparse payload (11 or 12, that of kind 16's residual for a nested
/// kind-16 record).
pub(crate) fn cost(c: &mut Cursor<'_>) -> Option<RecordCost> {
    let h = c.u64("listed rows").ok()?;
    c.skip(16)?;
    let pos_len = c.u64("positions byte length").ok()?;
    c.skip(pos_len)?;
    let kind = RecordKind::from_code(c.u8("nested kind").ok()?)?;
    if !NESTED_KINDS.contains(&kind) {
        return None;
    }
    c.skip(1)?;
    let ndim = c.u8("ndim").ok()?;
    c.skip(1 + 8 * u64::from(ndim) + 8)?;
    let inner = super::payload_cost(kind, c)?;
    let list_bits = (FIXED_BYTES as u64).checked_add(pos_len)?.checked_mul(8)?;
    Some(RecordCost {
        position_bits: inner.position_bits.checked_add(list_bits)?,
        residual_kind: inner.residual_kind.or(Some(kind)),
        listed_rows: Some(h),
        ..inner
    })
}
