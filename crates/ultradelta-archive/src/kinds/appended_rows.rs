//! Kind 18, `appended-rows` (docs/FORMAT.md, "Kind 18"): a 2-D tensor the fine-tune grew by rows its base lacks —
//! a token-embedding table or LM head resized for added tokens — as the delta of the base's rows (a nested record
//! of shape `[base_rows, cols]`: lossy for a compressed tensor, lossless for a kept one, none for a dropped one)
//! followed by the added rows stored whole (a nested kind-3 record of shape `[rows − base_rows, cols]`).
//! [`AppendedRowsRecord`] holds it.

use ultradelta_core::DType;

use super::common::Head;
use crate::coded::RecordCost;
use crate::record::{decode_header_at, encode_record, Cursor, RecordHeader};
use crate::{Error, Limits, Record, RecordKind, Result};

/// Fixed part of an `appended-rows` payload before the nested records: the base's row count and the byte length of
/// the nested delta record (`APPENDED_ROWS_FIXED_BYTES`).
pub(crate) const FIXED_BYTES: usize = 16;

/// The kinds the delta of the base's rows may be stored as: every lossy delta kind (a compressed tensor) and the two
/// lossless deltas (a kept one), not a whole tensor nor another kind 18.
pub(crate) const HEAD_KINDS: [RecordKind; 13] = [
    RecordKind::XorZstd,
    RecordKind::DiffZstd,
    RecordKind::SparseGolomb,
    RecordKind::SparseF16,
    RecordKind::SparseSign,
    RecordKind::DenseSign,
    RecordKind::LowrankF16,
    RecordKind::DenseLevels,
    RecordKind::SparseGolombRans,
    RecordKind::SparseSeeded,
    RecordKind::SparseSeededRans,
    RecordKind::LowrankSeededRans,
    RecordKind::RowSubset,
];

/// A `[rows, cols]` tensor whose first `base_rows` rows are the base's `[base_rows, cols]` tensor with the delta
/// `head`, and whose other rows, which the base lacks, are `tail` (`appended-rows`, kind 18).
///
/// The rebuilt tensor is the base's rows rebuilt with `head` exactly as a tensor of the base's shape would be with
/// that record (a lossy delta added with γ, a lossless one's bytes; the base's rows as they are without `head`),
/// followed by `tail`'s bytes as they are.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendedRowsRecord {
    /// Rows of the base's tensor: at least 1, fewer than the tensor's.
    pub base_rows: u64,
    /// Columns of the tensor (`shape[1]`), the base's and the fine-tune's.
    pub cols: u64,
    /// The delta of the base's rows, a record of `base_rows · cols` entries: of a lossy delta kind (1, 5–12, 16 or
    /// 17) for a compressed tensor, a lossless delta ([`Record::XorDelta`], [`Record::DiffDelta`]) for a kept one;
    /// `None` for a dropped one (the base's rows as they are).
    pub head: Option<Box<Record>>,
    /// The tensor's dtype (the base's too).
    pub dtype: DType,
    /// The added rows' raw little-endian bytes, in `dtype`: `(rows − base_rows) · cols` elements.
    pub tail: Vec<u8>,
}

impl AppendedRowsRecord {
    /// Entries of the base's rows: `base_rows · cols` (saturating).
    pub fn head_numel(&self) -> u64 {
        self.base_rows.saturating_mul(self.cols)
    }

    /// Rows the fine-tune added: the tail's bytes over a row's (0 for zero columns).
    pub fn added_rows(&self) -> u64 {
        let row = self.cols.saturating_mul(self.dtype.size() as u64);
        (self.tail.len() as u64).checked_div(row).unwrap_or(0)
    }

    /// The index entry's `kept`: the nested lossy record's; `None` for a lossless one (every entry: the caller
    /// knows the size); 0 without a nested record.
    pub fn kept(&self) -> Option<u64> {
        match &self.head {
            Some(head) => head.kept(),
            None => Some(0),
        }
    }

    /// Checks the invariants that do not need the tensor: at least one base row and one whole added row, and the
    /// nested record of a lossy delta kind (1, 5–12, 16 or 17), valid, of `base_rows · cols` entries.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] describing the first violation.
    pub fn validate(&self) -> Result<()> {
        let bad = |d: String| Err(Error::record(d));
        if self.base_rows == 0 || self.base_rows.checked_mul(self.cols).is_none() {
            return bad(format!(
                "an appended-rows record of {} base rows of {} columns",
                self.base_rows, self.cols
            ));
        }
        let row = self.cols.saturating_mul(self.dtype.size() as u64);
        if row == 0 || self.tail.is_empty() || !(self.tail.len() as u64).is_multiple_of(row) {
            return bad(format!(
                "{} bytes of added rows are not whole rows of {} {} columns (at least one)",
                self.tail.len(),
                self.cols,
                self.dtype.name()
            ));
        }
        let Some(head) = &self.head else {
            return Ok(());
        };
        let kind = head.kind();
        if !HEAD_KINDS.contains(&kind) {
            return bad(format!(
                "an appended-rows record cannot nest a {} record for the base's rows",
                kind.name()
            ));
        }
        let numel = match head.as_ref() {
            Record::XorDelta {
                dtype,
                xor_bytes: b,
            }
            | Record::DiffDelta {
                dtype,
                diff_bytes: b,
            } => {
                if *dtype != self.dtype {
                    return bad(format!(
                        "nested {} record of {} for a {} tensor",
                        kind.name(),
                        dtype.name(),
                        self.dtype.name()
                    ));
                }
                b.len() as u64 / dtype.size() as u64
            }
            _ => head.validate_delta()?,
        };
        if numel != self.head_numel() {
            return bad(format!(
                "nested record of {numel} entries for {} base rows of {} columns",
                self.base_rows, self.cols
            ));
        }
        Ok(())
    }
}

/// Checks the record against the tensor it is encoded for: dtype, and shape `[base_rows + added rows, cols]`.
fn check_tensor(r: &AppendedRowsRecord, head: &Head<'_>) -> Result<()> {
    let rows = r.base_rows.saturating_add(r.added_rows());
    if head.dtype != r.dtype || head.dims != [rows, r.cols] {
        return Err(Error::record(format!(
            "an appended-rows record of {} base rows, {} added rows and {} columns of {} for a {} tensor of shape {:?}",
            r.base_rows,
            r.added_rows(),
            r.cols,
            r.dtype.name(),
            head.dtype.name(),
            head.shape
        )));
    }
    Ok(())
}

fn usize_of(v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::record(format!("{v} does not fit in memory")))
}

/// The nested delta record, whole: shape `[base_rows, cols]` (a lossless one compressed at `zstd_level`); no bytes
/// without one.
fn encode_head(r: &AppendedRowsRecord, zstd_level: i32) -> Result<Vec<u8>> {
    let Some(head) = &r.head else {
        return Ok(Vec::new());
    };
    let shape = [usize_of(r.base_rows)?, usize_of(r.cols)?];
    encode_record(r.dtype, &shape, head, zstd_level)
}

/// The nested record of the added rows `tail` (raw bytes of `dtype`, whole rows of `cols`), whole: kind 3, shape
/// `[added rows, cols]`, compressed at `zstd_level`.
fn encode_tail(dtype: DType, cols: u64, tail: &[u8], zstd_level: i32) -> Result<Vec<u8>> {
    let row = cols.saturating_mul(dtype.size() as u64).max(1);
    let dims = [tail.len() as u64 / row, cols];
    let shape = [usize_of(dims[0])?, usize_of(cols)?];
    let head = Head {
        dtype,
        shape: &shape,
        dims: &dims,
        numel: dims[0].saturating_mul(cols),
    };
    let mut out = Vec::new();
    super::full_zstd::encode(dtype, tail, &head, zstd_level, &mut out)?;
    Ok(out)
}

/// The base rows' record already encoded whole, for [`encode_parts`]: its kind, dtype, shape and bytes.
pub(crate) struct Nested<'a> {
    pub(crate) kind: RecordKind,
    pub(crate) dtype: DType,
    pub(crate) shape: &'a [usize],
    pub(crate) bytes: &'a [u8],
}

/// Writes an `appended-rows` record for the tensor `head` from its parts: the base's row count, `nested` (the base
/// rows' record, whole; none for a dropped delta) and the added rows' raw bytes `tail`, compressed here at
/// `zstd_level`. Checks the parts against the tensor: 2-D, `1 <= base_rows < rows`, the nested record of a
/// [`HEAD_KINDS`] kind, the tensor's dtype and shape `[base_rows, cols]`, and `tail` exactly the added rows.
pub(crate) fn encode_parts(
    head: &Head<'_>,
    base_rows: u64,
    nested: Option<Nested<'_>>,
    tail: &[u8],
    zstd_level: i32,
) -> Result<Vec<u8>> {
    let &[rows, cols] = head.dims else {
        return Err(Error::record(format!(
            "an appended-rows record needs a 2-D tensor, not shape {:?}",
            head.shape
        )));
    };
    let added = rows.saturating_sub(base_rows);
    let want = added
        .saturating_mul(cols)
        .saturating_mul(head.dtype.size() as u64);
    if base_rows == 0 || base_rows >= rows || tail.len() as u64 != want {
        return Err(Error::record(format!(
            "an appended-rows record of {base_rows} base rows and {} bytes of added rows for a {} tensor of shape \
             {:?}",
            tail.len(),
            head.dtype.name(),
            head.shape
        )));
    }
    if let Some(n) = &nested {
        let fits = n.dtype == head.dtype
            && n.shape.len() == 2
            && n.shape[0] as u64 == base_rows
            && n.shape[1] as u64 == cols;
        if !HEAD_KINDS.contains(&n.kind) || !fits {
            return Err(Error::record(format!(
                "an appended-rows record cannot nest a {} record of {} {:?} for {base_rows} base rows of a {} tensor \
                 of shape {:?}",
                n.kind.name(),
                n.dtype.name(),
                n.shape,
                head.dtype.name(),
                head.shape
            )));
        }
    }
    let nested = nested.map_or(&[][..], |n| n.bytes);
    let tail = encode_tail(head.dtype, cols, tail, zstd_level)?;
    let mut out =
        Vec::with_capacity(Head::len(2) as usize + FIXED_BYTES + nested.len() + tail.len());
    head.put(&mut out, RecordKind::AppendedRows)?;
    out.extend_from_slice(&base_rows.to_le_bytes());
    out.extend_from_slice(&(nested.len() as u64).to_le_bytes());
    out.extend_from_slice(nested);
    out.extend_from_slice(&tail);
    Ok(out)
}

/// Writes header and payload: the base's row count, the nested delta record's byte length (0 without one), the nested
/// delta record whole, then the added rows as a whole nested `full-zstd` record (compressed at `zstd_level`).
pub(crate) fn encode(
    r: &AppendedRowsRecord,
    head: &Head<'_>,
    zstd_level: i32,
    out: &mut Vec<u8>,
) -> Result<()> {
    r.validate()?;
    check_tensor(r, head)?;
    let bytes = encode_head(r, zstd_level)?;
    let shape = [usize_of(r.base_rows)?, usize_of(r.cols)?];
    let nested = r.head.as_ref().map(|h| Nested {
        kind: h.kind(),
        dtype: r.dtype,
        shape: &shape,
        bytes: &bytes,
    });
    out.extend_from_slice(&encode_parts(
        head,
        r.base_rows,
        nested,
        &r.tail,
        zstd_level,
    )?);
    Ok(())
}

/// Exact payload length [`encode`] writes (runs the nested record's coders and compresses the added rows at
/// `zstd_level`).
pub(crate) fn encoded_len(r: &AppendedRowsRecord, zstd_level: i32) -> Result<u64> {
    r.validate()?;
    let tail = encode_tail(r.dtype, r.cols, &r.tail, zstd_level)?.len() as u64;
    let head = match &r.head {
        Some(head) => head.encoded_len(2, zstd_level)?,
        None => 0,
    };
    Ok(FIXED_BYTES as u64 + head + tail)
}

pub(crate) fn decode(c: &mut Cursor<'_>, header: &RecordHeader, limits: &Limits) -> Result<Record> {
    let bad = |d: String| Error::stream("record", d);
    let &[rows, cols] = header.shape.as_slice() else {
        return Err(bad(format!(
            "an appended-rows record needs 2 dimensions, shape is {:?}",
            header.shape
        )));
    };
    let base_rows = c.u64("base rows")?;
    if base_rows == 0 || base_rows >= rows {
        return Err(bad(format!("{base_rows} base rows, expected 1..{rows}")));
    }
    let head_len = c.u64("nested record length")?;
    if head_len >= c.left() {
        return Err(bad(format!(
            "nested record of {head_len} bytes declared, {} bytes follow (the added rows' record must follow it)",
            c.left()
        )));
    }
    let head = match head_len {
        // No nested record: the base's rows as they are (a dropped delta); the index keeps none of them.
        0 => {
            c.check_kept(0)?;
            None
        }
        _ => Some(Box::new(decode_head(
            c.take(head_len, "nested record")?,
            c,
            header,
            base_rows,
            cols,
            limits,
        )?)),
    };
    let tail_header = decode_header_at(c, limits)?;
    let added = rows - base_rows;
    if tail_header.kind != RecordKind::FullZstd
        || tail_header.dtype != header.dtype
        || tail_header.shape != [added, cols]
    {
        return Err(bad(format!(
            "added rows' record of kind {}, dtype {} and shape {:?}, expected {}, {} and [{added}, {cols}]",
            tail_header.kind.name(),
            tail_header.dtype.name(),
            tail_header.shape,
            RecordKind::FullZstd.name(),
            header.dtype.name()
        )));
    }
    let Record::Full { bytes: tail, .. } = super::decode_payload(c, &tail_header, limits)? else {
        return Err(bad("the added rows' record did not decode to bytes".into()));
    };
    Ok(Record::AppendedRows(AppendedRowsRecord {
        base_rows,
        cols,
        dtype: header.dtype,
        head,
        tail,
    }))
}

/// The nested delta record from exactly its bytes, with the entry's kept count (a lossy record's) and check mode.
fn decode_head(
    bytes: &[u8],
    outer: &Cursor<'_>,
    header: &RecordHeader,
    base_rows: u64,
    cols: u64,
    limits: &Limits,
) -> Result<Record> {
    let bad = |d: String| Error::stream("record", d);
    let mut inner = Cursor::new(bytes);
    inner.check_only = outer.check_only;
    let head_header = decode_header_at(&mut inner, limits)?;
    if !HEAD_KINDS.contains(&head_header.kind) {
        return Err(bad(format!(
            "nested record of kind {} ({}), expected a delta kind",
            head_header.kind.code(),
            head_header.kind.name()
        )));
    }
    if !matches!(head_header.kind, RecordKind::XorZstd | RecordKind::DiffZstd) {
        inner.expect_kept = outer.expect_kept;
    }
    if head_header.dtype != header.dtype || head_header.shape != [base_rows, cols] {
        return Err(bad(format!(
            "nested record of dtype {} and shape {:?}, expected {} and [{base_rows}, {cols}]",
            head_header.dtype.name(),
            head_header.shape,
            header.dtype.name()
        )));
    }
    let head = super::decode_payload(&mut inner, &head_header, limits)?;
    if inner.left() != 0 {
        return Err(bad(format!(
            "{} bytes after the nested record",
            inner.left()
        )));
    }
    Ok(head)
}

/// The nested delta record's position/value split (the added rows' record is in none of its parts), with the
/// nested kind as `residual_kind` when the nested record names none.
pub(crate) fn cost(c: &mut Cursor<'_>) -> Option<RecordCost> {
    c.skip(8)?;
    let head_len = c.u64("nested record length").ok()?;
    let mut inner = Cursor::new(c.take(head_len, "nested record").ok()?);
    let kind = RecordKind::from_code(inner.u8("nested kind").ok()?)?;
    if !HEAD_KINDS.contains(&kind) {
        return None;
    }
    inner.skip(1)?;
    let ndim = inner.u8("ndim").ok()?;
    inner.skip(1 + 8 * u64::from(ndim) + 8)?;
    let cost = super::payload_cost(kind, &mut inner)?;
    Some(RecordCost {
        residual_kind: cost.residual_kind.or(Some(kind)),
        ..cost
    })
}
