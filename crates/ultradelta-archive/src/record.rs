//! Records: the payload types ([`Record`]), the common header, and encoding and decoding by kind
//! (docs/FORMAT.md, "Records"). Every kind's bytes are owned by its module under `kinds/`; this module writes and
//! reads the common header and dispatches.

use rayon::prelude::*;
use ultradelta_core::DType;

use crate::coded::CodedSparseRecord;
use crate::kinds::{
    self, appended_rows, dense_levels, diff_zstd, file_zstd, file_zstd_base, file_zstd_base_json,
    full_zstd, lowrank_f16, lowrank_seeded_rans, row_subset, sparse_f16, sparse_golomb,
    sparse_golomb_rans, sparse_seeded, sparse_seeded_rans, sparse_sign, xor_zstd, Head,
};
use crate::lossless::compress_planes;
use crate::{
    AppendedRowsRecord, DenseLevelsRecord, Error, Limits, LowRankRecord, LowRankSparseRecord,
    Positions, RecordKind, Result, RowSubsetRecord, SignRecord, SparseRecord, SparseValuesRecord,
};

pub use crate::kinds::diff_zstd::{decode_diff_into, diff_bytes};
pub use crate::kinds::file_zstd_base::BaseFileRef;
pub use crate::kinds::full_zstd::decode_full_into;
pub use crate::kinds::xor_zstd::decode_xor_into;

/// A record's payload, as a codec produces it and a reader returns it.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// UltraDelta sparse: positions as Golomb-coded gaps, levels bit-packed at `bits` bits.
    Sparse(SparseRecord),
    /// Lossless delta: bitwise XOR of the fine-tuned and base raw bytes (same dtype). Stored byte-plane shuffled
    /// and zstd-compressed; `xor_bytes` here is the plain (unshuffled) XOR.
    XorDelta {
        /// Dtype of both tensors.
        dtype: DType,
        /// `finetuned[i] ^ base[i]` for every byte.
        xor_bytes: Vec<u8>,
    },
    /// Lossless delta: for every element, the fine-tuned element's bits minus the base element's as integers of
    /// the element's width (wrapping), zigzag-mapped, little-endian (kind `diff-zstd`,
    /// [`crate::kinds::diff_zstd::diff_bytes`]). Stored byte-plane shuffled and zstd-compressed; `diff_bytes` here
    /// is the plain (unshuffled) form.
    DiffDelta {
        /// Dtype of both tensors.
        dtype: DType,
        /// The zigzag-mapped differences, one element of `dtype`'s size each.
        diff_bytes: Vec<u8>,
    },
    /// Whole fine-tuned tensor (no base counterpart): its raw little-endian bytes.
    Full {
        /// Its dtype.
        dtype: DType,
        /// Raw bytes.
        bytes: Vec<u8>,
    },
    /// Sparse delta with fp16 values (kind `sparse-f16`).
    SparseValues(SparseValuesRecord),
    /// Signs times one magnitude: `sparse-sign` with positions, `dense-sign` without.
    Sign(SignRecord),
    /// Low-rank fp16 factors (kind `lowrank-f16`).
    LowRank(LowRankRecord),
    /// Every entry's level, no positions (kind `dense-levels`).
    DenseLevels(DenseLevelsRecord),
    /// UltraDelta levels with seeded positions and/or rANS-coded levels (kinds 10–12).
    Coded(CodedSparseRecord),
    /// Low-rank part with quantized factors plus a sparse residual (kind `lowrank-seeded-rans`).
    LowRankSparse(LowRankSparseRecord),
    /// A delta zero outside a listed set of rows, the listed rows as a nested record (kind `row-subset`).
    RowSubset(RowSubsetRecord),
    /// A tensor grown by rows its base lacks: the delta of the base's rows as a nested record, and the added rows
    /// whole (kind `appended-rows`).
    AppendedRows(AppendedRowsRecord),
}

impl Record {
    /// The record kind this payload is stored as.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Sparse(_) => RecordKind::SparseGolomb,
            Record::XorDelta { .. } => RecordKind::XorZstd,
            Record::DiffDelta { .. } => RecordKind::DiffZstd,
            Record::Full { .. } => RecordKind::FullZstd,
            Record::SparseValues(_) => RecordKind::SparseF16,
            Record::Sign(r) if r.positions.is_some() => RecordKind::SparseSign,
            Record::Sign(_) => RecordKind::DenseSign,
            Record::LowRank(_) => RecordKind::LowrankF16,
            Record::DenseLevels(_) => RecordKind::DenseLevels,
            Record::Coded(c) => c.kind(),
            Record::LowRankSparse(_) => RecordKind::LowrankSeededRans,
            Record::RowSubset(_) => RecordKind::RowSubset,
            Record::AppendedRows(_) => RecordKind::AppendedRows,
        }
    }

    /// The lossless delta of a tensor from its base: the smaller of [`Record::XorDelta`] and
    /// [`Record::DiffDelta`] as encoded at `zstd_level` (the XOR on a tie: older readers read it). `base` and
    /// `finetuned` are the two tensors' raw bytes, both of `dtype`.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] if the two lengths differ or are not whole elements; [`Error::InvalidStream`] if
    /// zstd fails.
    pub fn lossless_delta(
        dtype: DType,
        base: &[u8],
        finetuned: &[u8],
        zstd_level: i32,
    ) -> Result<Record> {
        // Only the winner's raw bytes are built.
        Ok(
            match smaller_lossless(dtype, base, finetuned, zstd_level)?.0 {
                RecordKind::DiffZstd => Record::DiffDelta {
                    dtype,
                    diff_bytes: diff_bytes(dtype, base, finetuned)?,
                },
                _ => {
                    let mut xor = vec![0u8; finetuned.len()];
                    xor.par_chunks_mut(1 << 16)
                        .zip(finetuned.par_chunks(1 << 16).zip(base.par_chunks(1 << 16)))
                        .for_each(|(o, (f, b))| {
                            for ((o, f), b) in o.iter_mut().zip(f).zip(b) {
                                *o = f ^ b;
                            }
                        });
                    Record::XorDelta {
                        dtype,
                        xor_bytes: xor,
                    }
                }
            },
        )
    }

    /// Whether this record is a lossy delta of its tensor (every kind except the lossless `xor-zstd`, `diff-zstd`
    /// and `full-zstd`, and `appended-rows`, whose nested record is the delta of the base's rows only).
    pub fn is_delta(&self) -> bool {
        !matches!(
            self,
            Record::XorDelta { .. }
                | Record::DiffDelta { .. }
                | Record::Full { .. }
                | Record::AppendedRows(_)
        )
    }

    /// Entries the record stores a value for: kept positions of sparse kinds, `numel` for dense ones (both
    /// low-rank kinds included: a `lowrank-seeded-rans` record gives every entry a value, and its residual's kept
    /// count is [`LowRankSparseRecord::residual`]'s). `None` for lossless records, whose size the caller knows.
    pub fn kept(&self) -> Option<u64> {
        match self {
            Record::Sparse(s) => Some(s.positions.len() as u64),
            Record::SparseValues(s) => Some(s.positions.len() as u64),
            Record::Sign(s) => Some(s.kept()),
            Record::LowRank(r) => Some(r.numel()),
            Record::DenseLevels(d) => Some(d.levels.len() as u64),
            Record::Coded(c) => Some(c.kept()),
            Record::LowRankSparse(r) => Some(r.numel()),
            Record::RowSubset(r) => Some(r.kept()),
            Record::AppendedRows(r) => r.kept(),
            Record::XorDelta { .. } | Record::DiffDelta { .. } | Record::Full { .. } => None,
        }
    }

    /// The fine-tuned bytes of a lossless delta ([`Record::XorDelta`], [`Record::DiffDelta`]) from the base's
    /// `base` into `out`.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] for another kind, or when `base`, `out` and the stored bytes differ in length.
    pub fn lossless_into(&self, base: &[u8], out: &mut [u8]) -> Result<()> {
        let (stored, dtype) = match self {
            Record::XorDelta { dtype, xor_bytes } => (xor_bytes, dtype),
            Record::DiffDelta { dtype, diff_bytes } => (diff_bytes, dtype),
            other => {
                return Err(Error::record(format!(
                    "a {} record is not a lossless delta",
                    other.kind().name()
                )))
            }
        };
        if base.len() != stored.len() || out.len() != stored.len() {
            return Err(Error::record(format!(
                "a lossless delta of {} bytes for a base of {} and an output of {}",
                stored.len(),
                base.len(),
                out.len()
            )));
        }
        match self {
            Record::XorDelta { .. } => out
                .par_chunks_mut(1 << 16)
                .zip(base.par_chunks(1 << 16).zip(stored.par_chunks(1 << 16)))
                .for_each(|(o, (b, x))| {
                    for ((o, b), x) in o.iter_mut().zip(b).zip(x) {
                        *o = b ^ x;
                    }
                }),
            _ => diff_zstd::undiff_into(*dtype, base, stored, out),
        }
        Ok(())
    }

    /// Checks a delta record's invariants and returns the entries its delta has.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] if the record is not a delta (the lossless kinds, and `appended-rows`, whose added
    /// rows are no delta: its nested record is) or violates its kind's invariants.
    pub fn validate_delta(&self) -> Result<u64> {
        match self {
            Record::Sparse(s) => s.validate()?,
            Record::SparseValues(s) => s.validate()?,
            Record::Sign(s) => s.validate()?,
            Record::LowRank(r) => r.validate()?,
            Record::DenseLevels(d) => d.validate()?,
            Record::Coded(c) => c.validate()?,
            Record::LowRankSparse(r) => r.validate()?,
            Record::RowSubset(r) => r.validate()?,
            Record::XorDelta { .. }
            | Record::DiffDelta { .. }
            | Record::Full { .. }
            | Record::AppendedRows(_) => {}
        }
        Ok(match self {
            Record::Sparse(s) => s.numel,
            Record::SparseValues(s) => s.numel,
            Record::Sign(s) => s.numel,
            Record::LowRank(r) => r.numel(),
            Record::DenseLevels(d) => d.levels.len() as u64,
            Record::Coded(c) => c.numel,
            Record::LowRankSparse(r) => r.numel(),
            Record::RowSubset(r) => r.numel(),
            Record::XorDelta { .. }
            | Record::DiffDelta { .. }
            | Record::Full { .. }
            | Record::AppendedRows(_) => {
                return Err(Error::record(format!(
                    "a {} record is not a delta",
                    self.kind().name()
                )))
            }
        })
    }

    /// Adds this delta record times `gamma` into `out` (the one decoding path of every lossy kind).
    ///
    /// The record is validated first (cheap next to decoding), so a hand-built record cannot make it panic.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] if the record is lossless (it is not a delta), violates its kind's invariants, or
    /// `out` has the wrong length.
    pub fn add_delta_into(&self, gamma: f32, out: &mut [f32]) -> Result<()> {
        let numel = self.validate_delta()?;
        if out.len() as u64 != numel {
            return Err(Error::record(format!(
                "output of {} entries for a record of {numel}",
                out.len()
            )));
        }
        match self {
            Record::Sparse(s) => s.add_into(gamma, out),
            Record::SparseValues(s) => s.add_into(gamma, out),
            Record::Sign(s) => s.add_into(gamma, out),
            Record::LowRank(r) => r.add_into(gamma, out),
            Record::DenseLevels(d) => d.add_into(gamma, out),
            Record::Coded(c) => c.add_into(gamma, out),
            Record::LowRankSparse(r) => r.add_into(gamma, out),
            Record::RowSubset(r) => r.add_into(gamma, out),
            Record::XorDelta { .. }
            | Record::DiffDelta { .. }
            | Record::Full { .. }
            | Record::AppendedRows(_) => {}
        }
        Ok(())
    }

    /// Exact byte length of the record [`encode_record`] writes for this payload and a tensor of `ndim`
    /// dimensions: the common header (12 + 8·ndim bytes) plus the payload, computed by the kind that owns the
    /// bytes without writing them (the Golomb parameter search and the rANS coder run; lossless records are
    /// compressed at `zstd_level`, as encoding would).
    ///
    /// # Errors
    /// As [`encode_record`] for an invalid payload (not for a mismatch with a tensor, which it does not see).
    pub fn encoded_len(&self, ndim: usize, zstd_level: i32) -> Result<u64> {
        let payload = match self {
            Record::Sparse(s) => sparse_golomb::encoded_len(s)?,
            Record::XorDelta {
                dtype,
                xor_bytes: bytes,
            } => {
                xor_zstd::FIXED_BYTES as u64
                    + compress_planes(bytes, dtype.size(), zstd_level)?.len() as u64
            }
            Record::DiffDelta {
                dtype,
                diff_bytes: bytes,
            } => {
                diff_zstd::FIXED_BYTES as u64
                    + compress_planes(bytes, dtype.size(), zstd_level)?.len() as u64
            }
            Record::Full { dtype, bytes } => {
                full_zstd::FIXED_BYTES as u64
                    + compress_planes(bytes, dtype.size(), zstd_level)?.len() as u64
            }
            Record::SparseValues(r) => sparse_f16::encoded_len(r)?,
            Record::Sign(r) => sparse_sign::encoded_len(r)?,
            Record::LowRank(r) => lowrank_f16::encoded_len(r)?,
            Record::DenseLevels(r) => dense_levels::encoded_len(r)?,
            Record::Coded(r) => r.encoded_len()?,
            Record::LowRankSparse(r) => lowrank_seeded_rans::encoded_len(r)?,
            Record::RowSubset(r) => row_subset::encoded_len(r)?,
            Record::AppendedRows(r) => appended_rows::encoded_len(r, zstd_level)?,
        };
        Ok(Head::len(ndim) + payload)
    }

    /// The dense delta times `gamma`, for delta records of `numel` entries.
    ///
    /// # Errors
    /// As [`Record::add_delta_into`].
    pub fn delta_to_dense(&self, numel: usize, gamma: f32) -> Result<Vec<f32>> {
        let mut out = vec![0f32; numel];
        self.add_delta_into(gamma, &mut out)?;
        Ok(out)
    }
}

/// The common header of every record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Record kind.
    pub kind: RecordKind,
    /// Element dtype (`U8` for companion files).
    pub dtype: DType,
    /// Shape (`[size]` for companion files).
    pub shape: Vec<u64>,
    /// Product of the shape.
    pub numel: u64,
}

fn shape_numel(shape: &[usize]) -> Result<(Vec<u64>, u64)> {
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let numel = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::record(format!("shape {shape:?} overflows u64")))?;
    Ok((dims, numel))
}

/// Encodes one tensor record (header + payload) for a tensor of `dtype` and `shape`.
///
/// # Errors
/// [`Error::InvalidRecord`] if the payload does not match the dtype/shape or violates the format's invariants;
/// [`Error::InvalidStream`] if zstd fails.
pub fn encode_record(
    dtype: DType,
    shape: &[usize],
    record: &Record,
    zstd_level: i32,
) -> Result<Vec<u8>> {
    let (dims, numel) = shape_numel(shape)?;
    let head = Head {
        dtype,
        shape,
        dims: &dims,
        numel,
    };
    let mut out = Vec::new();
    match record {
        Record::Sparse(s) => sparse_golomb::encode(s, &head, &mut out)?,
        Record::XorDelta {
            dtype: d,
            xor_bytes: bytes,
        } => xor_zstd::encode(*d, bytes, &head, zstd_level, &mut out)?,
        Record::DiffDelta {
            dtype: d,
            diff_bytes: bytes,
        } => diff_zstd::encode(*d, bytes, &head, zstd_level, &mut out)?,
        Record::Full { dtype: d, bytes } => {
            full_zstd::encode(*d, bytes, &head, zstd_level, &mut out)?
        }
        Record::SparseValues(r) => sparse_f16::encode(r, &head, &mut out)?,
        Record::Sign(r) => sparse_sign::encode(r, &head, &mut out)?,
        Record::LowRank(r) => lowrank_f16::encode(r, &head, &mut out)?,
        Record::DenseLevels(r) => dense_levels::encode(r, &head, &mut out)?,
        Record::LowRankSparse(r) => lowrank_seeded_rans::encode(r, &head, &mut out)?,
        Record::RowSubset(r) => row_subset::encode(r, &head, &mut out)?,
        Record::AppendedRows(r) => appended_rows::encode(r, &head, zstd_level, &mut out)?,
        Record::Coded(r) => {
            head.check_numel("coded sparse", r.numel)?;
            match (&r.positions, r.coding) {
                (Positions::Golomb(_), crate::LevelCoding::Packed) => {
                    return Err(Error::record(crate::coded::NOT_KIND_1))
                }
                (Positions::Golomb(pos), crate::LevelCoding::Rans) => {
                    sparse_golomb_rans::encode(r, pos, &head, &mut out)?
                }
                (&Positions::Seeded { seed, trial }, crate::LevelCoding::Packed) => {
                    sparse_seeded::encode(r, (seed, trial), &head, &mut out)?
                }
                (&Positions::Seeded { seed, trial }, crate::LevelCoding::Rans) => {
                    sparse_seeded_rans::encode(r, (seed, trial), &head, &mut out)?
                }
            }
        }
    }
    Ok(out)
}

/// The smaller of a tensor's XOR and bit-difference lossless deltas as stored (byte-plane shuffled, zstd at
/// [`crate::tensor_zstd_level`]; the XOR on a tie), chosen by compressing both, and the winner's stored payload.
/// Neither form is built whole: each form's shuffled bytes are made from `base` and `finetuned` frame by frame as
/// they are compressed ([`crate::lossless::compress_planes_with`]), so a large tensor kept without loss costs its
/// compressed forms, not four copies of itself. The bytes are those [`encode_record`] writes for the form's raw
/// bytes (tested).
fn smaller_lossless(
    dtype: DType,
    base: &[u8],
    finetuned: &[u8],
    zstd_level: i32,
) -> Result<(RecordKind, Vec<u8>)> {
    use crate::kinds::diff_zstd::{check_pair, zigzag_diff};
    use crate::lossless::{compress_planes_with, element, fill_planes};
    check_pair(dtype, base, finetuned)?;
    let (size, len) = (dtype.size(), finetuned.len());
    let (x, d) = rayon::join(
        || {
            compress_planes_with(len, zstd_level, |start, out| {
                fill_planes(len, size, start, out, |i| {
                    element(finetuned, size, i) ^ element(base, size, i)
                })
            })
        },
        || {
            compress_planes_with(len, zstd_level, |start, out| {
                fill_planes(len, size, start, out, |i| {
                    zigzag_diff(element(finetuned, size, i), element(base, size, i), size)
                })
            })
        },
    );
    let (x, d) = (x?, d?);
    Ok(if d.len() < x.len() {
        (RecordKind::DiffZstd, d)
    } else {
        (RecordKind::XorZstd, x)
    })
}

/// One tensor's record, encoded (common header and payload) for a tensor of a given dtype and shape: what
/// [`crate::ArchiveWriter::write_encoded`] appends as it is. A record encoded once can be measured
/// ([`EncodedRecord::len`]) and written without encoding it again (lossless deltas are compressed to be chosen,
/// [`EncodedRecord::lossless_delta`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedRecord {
    kind: RecordKind,
    dtype: DType,
    shape: Vec<usize>,
    kept: Option<u64>,
    bytes: Vec<u8>,
}

impl EncodedRecord {
    /// `record` encoded for a tensor of `dtype` and `shape` ([`encode_record`]).
    ///
    /// # Errors
    /// As [`encode_record`].
    pub fn new(dtype: DType, shape: &[usize], record: &Record, zstd_level: i32) -> Result<Self> {
        Ok(EncodedRecord {
            kind: record.kind(),
            dtype,
            shape: shape.to_vec(),
            kept: record.kept(),
            bytes: encode_record(dtype, shape, record, zstd_level)?,
        })
    }

    /// The lossless delta of a tensor of `dtype` and `shape` from its base, encoded: the record
    /// [`Record::lossless_delta`] chooses, byte for byte what [`encode_record`] writes for it, with each form
    /// compressed once.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] if the two byte lengths differ or do not hold the shape's elements of `dtype`;
    /// [`Error::InvalidStream`] if zstd fails.
    pub fn lossless_delta(
        dtype: DType,
        shape: &[usize],
        base: &[u8],
        finetuned: &[u8],
        zstd_level: i32,
    ) -> Result<Self> {
        let (dims, numel) = shape_numel(shape)?;
        let head = Head {
            dtype,
            shape,
            dims: &dims,
            numel,
        };
        crate::lossless::check_tensor_bytes(dtype, finetuned, &head)?;
        let (kind, z) = smaller_lossless(dtype, base, finetuned, zstd_level)?;
        let mut bytes = Vec::with_capacity(Head::len(shape.len()) as usize + 8 + z.len());
        crate::lossless::put_zstd_record(&head, kind, &z, &mut bytes)?;
        Ok(EncodedRecord {
            kind,
            dtype,
            shape: shape.to_vec(),
            kept: None,
            bytes,
        })
    }

    /// The `appended-rows` record (kind 18) of a 2-D tensor of `dtype` and `shape` grown by rows from its base's
    /// `base_rows`, from its parts: `nested`, the base rows' record already encoded (for a `[base_rows, cols]`
    /// tensor; `None` for a dropped delta), and the added rows' raw bytes `tail`, compressed here at `zstd_level`.
    /// Byte for byte what [`encode_record`] writes for the same [`Record::AppendedRows`], without encoding the
    /// nested record again.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] if the parts do not fit the tensor (kind 18's rules: docs/FORMAT.md, "Kind 18");
    /// [`Error::InvalidStream`] if zstd fails.
    pub fn appended_rows(
        dtype: DType,
        shape: &[usize],
        base_rows: usize,
        nested: Option<&EncodedRecord>,
        tail: &[u8],
        zstd_level: i32,
    ) -> Result<Self> {
        let (dims, numel) = shape_numel(shape)?;
        let head = Head {
            dtype,
            shape,
            dims: &dims,
            numel,
        };
        let parts = nested.map(|n| appended_rows::Nested {
            kind: n.kind,
            dtype: n.dtype,
            shape: &n.shape,
            bytes: &n.bytes,
        });
        Ok(EncodedRecord {
            kind: RecordKind::AppendedRows,
            dtype,
            shape: shape.to_vec(),
            kept: nested.map_or(Some(0), |n| n.kept),
            bytes: appended_rows::encode_parts(&head, base_rows as u64, parts, tail, zstd_level)?,
        })
    }

    /// The record's kind.
    pub fn kind(&self) -> RecordKind {
        self.kind
    }

    /// The tensor's dtype the record was encoded for.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The tensor's shape the record was encoded for.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Entries the record stores a value for ([`Record::kept`]); `None` for lossless records.
    pub fn kept(&self) -> Option<u64> {
        self.kept
    }

    /// The encoded bytes: common header and payload.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Byte length of the encoded record.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Whether the encoding is empty (never, for a record this type makes).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Encodes a companion-file record (kind `file-zstd`, dtype `U8`, shape `[len]`).
///
/// # Errors
/// [`Error::InvalidStream`] if zstd fails.
pub fn encode_file_record(bytes: &[u8], zstd_level: i32) -> Result<Vec<u8>> {
    file_zstd::encode(bytes, zstd_level)
}

/// The zstd level companion files are compressed at, given the archive's level for lossless tensor records:
/// at least 19 for files up to 8 MiB (tokenizers and vocabularies: about 20 % smaller than at level 1, and zstd
/// finds the base file's copies only from level 9 or so), at least 9 above.
pub fn companion_zstd_level(size: usize, zstd_level: i32) -> i32 {
    zstd_level.max(if size <= 8 << 20 { 19 } else { 9 })
}

/// Encodes a companion-file record, against `base` (the base model's file of the same name) when given: the
/// smallest of kind `file-zstd-base-json` (zstd with `base` re-laid out like `bytes` as dictionary, tried only when
/// both look like JSON and their layouts differ: [`crate::json_layout`]), kind `file-zstd-base` (zstd with `base`
/// as dictionary) and kind `file-zstd`, with the base file's reference when one of the first two is kept. A record
/// against the base that is at most 1/64 of the file is kept without trying the others. A file the base does not
/// help is stored whole. `zstd_level` is the archive's level for lossless tensor records: every kind is compressed
/// at [`companion_zstd_level`] of it and of the larger of the file and the base's file (a large prefix makes the
/// slow levels slower).
///
/// # Errors
/// [`Error::InvalidStream`] if zstd fails.
pub fn encode_file_record_against(
    bytes: &[u8],
    base: Option<&[u8]>,
    zstd_level: i32,
) -> Result<(Vec<u8>, Option<BaseFileRef>)> {
    let size = bytes.len().max(base.map_or(0, <[u8]>::len));
    let zstd_level = companion_zstd_level(size, zstd_level);
    let Some(base) = base else {
        return Ok((file_zstd::encode(bytes, zstd_level)?, None));
    };
    let small = |rec: &Vec<u8>| rec.len() <= bytes.len() / 64;
    let mut json = None;
    if let Some(indent) = crate::json_layout::detect_indent(bytes)
        .filter(|&i| crate::json_layout::detect_indent(base).is_some_and(|j| j != i))
    {
        // The dictionary is worth it only about as long as the file; a layout that would make the base much
        // longer than that is not the file's.
        let max_len = (bytes.len() as u64)
            .saturating_mul(2)
            .max(base.len() as u64)
            .min(Limits::default().max_file_bytes);
        json = file_zstd_base_json::encode(bytes, base, indent, max_len, zstd_level)?;
        if let Some((rec, r)) = json.take_if(|(rec, _)| small(rec)) {
            return Ok((rec, Some(r)));
        }
    }
    let plain = file_zstd_base::encode(bytes, base, zstd_level)?;
    // Kind 14 when it is no larger than kind 13.
    let (against, reference) = match json {
        Some(j) if j.0.len() <= plain.0.len() => j,
        _ => plain,
    };
    if small(&against) {
        // A copy of the base's file or close to it: no compressor gets near this without the base; skip the try.
        return Ok((against, Some(reference)));
    }
    let whole = file_zstd::encode(bytes, zstd_level)?;
    Ok(if against.len() < whole.len() {
        (against, Some(reference))
    } else {
        (whole, None)
    })
}

/// Little-endian cursor over untrusted bytes; every read is bounds-checked.
#[derive(Clone)]
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// The kept count the index entry declares, when decoding for an entry: a payload declaring another count
    /// is refused before anything sized from it is allocated or decoded.
    pub(crate) expect_kept: Option<u64>,
    /// Validate without materializing what few bytes can declare a lot of (kind 12's rANS levels, kind 16's
    /// factor levels and kind-12 residual, kind 9's zero-bit levels): those payloads decode with every check but an empty levels vector
    /// ([`ArchiveReader::check_record`](crate::ArchiveReader::check_record)).
    pub(crate) check_only: bool,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor {
            bytes,
            pos: 0,
            expect_kept: None,
            check_only: false,
        }
    }

    /// Refuses a payload's declared `kept` that differs from the index entry's (when decoding for one).
    pub(crate) fn check_kept(&self, kept: u64) -> Result<()> {
        match self.expect_kept {
            Some(want) if want != kept => Err(Error::stream(
                "record",
                format!("record keeps {kept} entries, index says {want}"),
            )),
            _ => Ok(()),
        }
    }
    pub(crate) fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(Error::stream(
                "record",
                format!(
                    "{what} needs {n} bytes at offset {}, only {left} left",
                    self.pos
                ),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    }
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    pub(crate) fn f32(&mut self, what: &str) -> Result<f32> {
        let b = self.take(4, what)?;
        Ok(f32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    }
    /// Skips `n` bytes; `None` if fewer are left.
    pub(crate) fn skip(&mut self, n: u64) -> Option<()> {
        self.take(n, "skip").ok().map(|_| ())
    }
    pub(crate) fn left(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }
}

/// Parses only the common header of a record, checking ndim and numel against `limits`.
///
/// # Errors
/// [`Error::InvalidStream`] (stream `"record"`).
pub fn decode_header(bytes: &[u8], limits: &Limits) -> Result<RecordHeader> {
    let mut c = Cursor::new(bytes);
    decode_header_at(&mut c, limits)
}

pub(crate) fn decode_header_at(c: &mut Cursor<'_>, limits: &Limits) -> Result<RecordHeader> {
    let bad = |d: String| Error::stream("record", d);
    let kind_code = c.u8("kind")?;
    let kind = RecordKind::from_code(kind_code)
        .ok_or_else(|| bad(format!("unknown record kind {kind_code}")))?;
    let dcode = c.u8("dtype")?;
    let dtype =
        DType::from_code(dcode).ok_or_else(|| bad(format!("unknown dtype code {dcode}")))?;
    let ndim = c.u8("ndim")?;
    if usize::from(ndim) > limits.max_ndim {
        return Err(bad(format!(
            "{ndim} dimensions (limit {})",
            limits.max_ndim
        )));
    }
    let reserved = c.u8("reserved")?;
    if reserved != 0 {
        return Err(bad(format!(
            "reserved header byte is {reserved}, expected 0"
        )));
    }
    let mut shape = Vec::with_capacity(usize::from(ndim));
    for _ in 0..ndim {
        shape.push(c.u64("shape")?);
    }
    let numel = c.u64("numel")?;
    let product = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    if product != Some(numel) {
        return Err(bad(format!(
            "numel {numel} is not the product of shape {shape:?}"
        )));
    }
    if numel > limits.max_numel {
        return Err(bad(format!(
            "numel {numel} exceeds the limit {}",
            limits.max_numel
        )));
    }
    Ok(RecordHeader {
        kind,
        dtype,
        shape,
        numel,
    })
}

/// Decodes a whole record (header + payload). Companion files come back as [`Record::Full`] with dtype `U8`
/// (check `header.kind`). Every declared length is compared with the bytes actually present before anything
/// sized from it is allocated.
///
/// # Errors
/// [`Error::InvalidStream`] (streams `"record"`, `"golomb"`, `"bitpack"`, `"rans"`, `"signs"`, `"zstd"`).
pub fn decode_record(bytes: &[u8], limits: &Limits) -> Result<(RecordHeader, Record)> {
    let mut c = Cursor::new(bytes);
    let header = decode_header_at(&mut c, limits)?;
    let record = kinds::decode_payload(&mut c, &header, limits)?;
    Ok((header, record))
}

/// Decodes a record for a known tensor: the common header is parsed first and must equal `expected` (kind,
/// dtype, shape, numel) and, when `kept` is given, the payload's declared kept count must equal it, both checked
/// before the payload is decoded — so a record cannot make the reader allocate or decode more than its index
/// entry declares (docs/FORMAT.md, "Reading and validation order").
///
/// # Errors
/// As [`decode_record`]; [`Error::InvalidStream`] (stream `"record"`) when the header or a declared count
/// differs from what is expected.
pub fn decode_record_expecting(
    bytes: &[u8],
    limits: &Limits,
    expected: &RecordHeader,
    kept: Option<u64>,
) -> Result<(RecordHeader, Record)> {
    decode_expecting(bytes, limits, expected, kept, false)
}

/// [`decode_record_expecting`], or with `check_only` every check without materializing the levels of a kind-12
/// record, of a kind-16 record (factor levels; its residual's as kind 12) or of a zero-bit kind-9 record (their
/// record then holds no levels).
pub(crate) fn decode_expecting(
    bytes: &[u8],
    limits: &Limits,
    expected: &RecordHeader,
    kept: Option<u64>,
    check_only: bool,
) -> Result<(RecordHeader, Record)> {
    let (header, mut c) = header_expecting(bytes, limits, expected)?;
    c.expect_kept = kept;
    c.check_only = check_only;
    let record = kinds::decode_payload(&mut c, &header, limits)?;
    Ok((header, record))
}

/// The common header of `bytes`, which must equal `expected` (kind, dtype, shape, numel), and a cursor at the
/// payload.
fn header_expecting<'a>(
    bytes: &'a [u8],
    limits: &Limits,
    expected: &RecordHeader,
) -> Result<(RecordHeader, Cursor<'a>)> {
    let mut c = Cursor::new(bytes);
    let header = decode_header_at(&mut c, limits)?;
    if header.kind != expected.kind {
        return Err(Error::stream(
            "record",
            format!(
                "record kind {} but the index says {}",
                header.kind.name(),
                expected.kind.name()
            ),
        ));
    }
    if header.dtype != expected.dtype
        || header.shape != expected.shape
        || header.numel != expected.numel
    {
        return Err(Error::stream(
            "record",
            format!(
                "record has dtype {} shape {:?}, index says dtype {} shape {:?}",
                header.dtype.name(),
                header.shape,
                expected.dtype.name(),
                expected.shape
            ),
        ));
    }
    Ok((header, c))
}

/// Decodes a companion-file record stored against the base's file (kind 13 or 14), whose header must equal
/// `expected` but for the kind, with `base`, the base model's file it names; or, without `base`, checks its fields.
/// Returns the base file the record names, and the bytes when decoded.
pub(crate) fn decode_file_against(
    bytes: &[u8],
    limits: &Limits,
    expected: &RecordHeader,
    base: Option<&[u8]>,
) -> Result<(BaseFileRef, Option<Vec<u8>>)> {
    let json = bytes.first() == Some(&RecordKind::FileZstdBaseJson.code());
    let expected = RecordHeader {
        kind: if json {
            RecordKind::FileZstdBaseJson
        } else {
            RecordKind::FileZstdBase
        },
        ..expected.clone()
    };
    let (header, mut c) = header_expecting(bytes, limits, &expected)?;
    let decoded = match (json, base) {
        (false, Some(base)) => file_zstd_base::decode_with_base(&mut c, &header, base)?,
        (true, Some(base)) => file_zstd_base_json::decode_with_base(&mut c, &header, limits, base)?,
        (false, None) => return Ok((file_zstd_base::check(&mut c)?, None)),
        (true, None) => return Ok((file_zstd_base_json::check(&mut c, limits)?, None)),
    };
    Ok((decoded.0, Some(decoded.1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lossless::{shuffle, unshuffle, ZSTD_FRAME_BYTES};
    use ultradelta_core::QuantParams;

    #[test]
    fn shuffle_layout() {
        let b = [1u8, 2, 3, 4, 5, 6];
        assert_eq!(shuffle(&b, 2), vec![1, 3, 5, 2, 4, 6]);
        assert_eq!(shuffle(&b, 3), vec![1, 4, 2, 5, 3, 6]);
        assert_eq!(unshuffle(&shuffle(&b, 3), 3), b);
        assert_eq!(shuffle(&[], 4), Vec::<u8>::new());
        // Several parallel blocks per plane and a partial last block, against the definition.
        for size in [2usize, 4, 8] {
            let n = 3 * (1 << 16) + 123;
            let b: Vec<u8> = (0..n * size).map(|i| (i * 7 + i / 251) as u8).collect();
            let want: Vec<u8> = (0..size)
                .flat_map(|j| (0..n).map(move |i| (i, j)))
                .map(|(i, j)| b[i * size + j])
                .collect();
            assert_eq!(shuffle(&b, size), want, "size {size}");
            assert_eq!(unshuffle(&want, size), b, "size {size}");
        }
    }

    #[test]
    fn sparse_record_layout() {
        let rec = Record::Sparse(SparseRecord {
            numel: 6,
            quant: QuantParams {
                bits: 4,
                lo: -1.0,
                step: 0.5,
            },
            scale: 2.0,
            positions: vec![1, 4],
            levels: vec![3, 15],
        });
        let bytes = encode_record(DType::F32, &[2, 3], &rec, 3).unwrap();
        assert_eq!(&bytes[..4], &[1, 2, 2, 0]);
        assert_eq!(&bytes[4..12], &2u64.to_le_bytes());
        assert_eq!(&bytes[20..28], &6u64.to_le_bytes());
        assert_eq!(bytes.len(), 28 + sparse_golomb::FIXED_BYTES + 1 + 1);
        let (h, back) = decode_record(&bytes, &Limits::default()).unwrap();
        assert_eq!(h.kind, RecordKind::SparseGolomb);
        assert_eq!(h.shape, vec![2, 3]);
        assert_eq!(back, rec);
        let Record::Sparse(s) = back else {
            unreachable!()
        };
        assert_eq!(s.to_dense(1.0), vec![0.0, 1.0, 0.0, 0.0, 13.0, 0.0]);
    }

    #[test]
    fn lossless_records_round_trip() {
        let bytes: Vec<u8> = (0..96u32).map(|i| (i * 37 % 251) as u8).collect();
        for rec in [
            Record::XorDelta {
                dtype: DType::BF16,
                xor_bytes: bytes.clone(),
            },
            Record::DiffDelta {
                dtype: DType::BF16,
                diff_bytes: bytes.clone(),
            },
            Record::Full {
                dtype: DType::BF16,
                bytes: bytes.clone(),
            },
        ] {
            let enc = encode_record(DType::BF16, &[4, 12], &rec, 3).unwrap();
            assert_eq!(decode_record(&enc, &Limits::default()).unwrap().1, rec);
            // Wrong dtype or length is refused.
            assert!(encode_record(DType::F32, &[4, 12], &rec, 3).is_err());
            assert!(encode_record(DType::BF16, &[4, 11], &rec, 3).is_err());
        }
    }

    /// Damages the lossless record `enc` (of `len` rebuilt bytes) at five places and checks that the serial
    /// decoder and a fused one agree: both refuse it, or the bytes the serial one's record rebuilds (`rebuild`)
    /// are the bytes the fused one wrote (`fused` returns whether it accepted).
    fn damaged_payloads_agree(
        enc: &[u8],
        len: usize,
        dtype: DType,
        rebuild: impl Fn(Record) -> Vec<u8>,
        mut fused: impl FnMut(&[u8], &mut [u8]) -> bool,
    ) {
        for k in (1..6).filter(|_| enc.len() > 64) {
            let mut bad = enc.to_vec();
            let at = bad.len() - 1 - (bad.len() - 40) * k / 6;
            bad[at] ^= 0x11;
            let serial = decode_record(&bad, &Limits::default());
            let mut out = vec![0u8; len];
            match (serial, fused(&bad, &mut out)) {
                (Ok((_, rec)), true) => {
                    assert!(out == rebuild(rec), "{} flip at {at}", dtype.name())
                }
                (Err(_), false) => {}
                (a, b) => panic!("{} flip at {at}: {:?} vs {b:?}", dtype.name(), a.is_ok()),
            }
        }
    }

    /// `decode` (into an output buffer, with working memory) run in pools of 1 and 3 threads gives `want`, with
    /// working memory of a batch of zstd frames (one per thread), not of the tensor.
    fn same_for_any_thread_count(
        want: &[u8],
        decode: impl Fn(&mut [u8], &mut Vec<u8>) -> Result<RecordHeader> + Sync,
    ) {
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (mut out, mut scratch) = (vec![0u8; want.len()], Vec::new());
            pool.install(|| decode(&mut out, &mut scratch)).unwrap();
            assert!(out == want, "{} bytes, {threads} threads", want.len());
            assert!(scratch.len() <= (threads * ZSTD_FRAME_BYTES).min(want.len()));
        }
    }

    #[test]
    fn decode_xor_into_equals_decode_record_then_xor() {
        // Several frames, odd element counts, every element size; a dirty scratch buffer, reused and too small.
        let mut planes = vec![0x5au8; 1000];
        for (dtype, numel) in [
            (DType::BF16, ZSTD_FRAME_BYTES + 777),
            (DType::F32, (1 << 16) * 3 + 5),
            (DType::U8, 4099),
            (DType::F64, 3),
            (DType::F32, 0),
        ] {
            let es = dtype.size();
            let xor: Vec<u8> = (0..numel * es)
                .map(|i| ((i * 131) % 253) as u8 & if i % 3 == 0 { 0xff } else { 0x0f })
                .collect();
            let base: Vec<u8> = (0..numel * es).map(|i| (i % 241) as u8).collect();
            let rec = Record::XorDelta {
                dtype,
                xor_bytes: xor.clone(),
            };
            let enc = encode_record(dtype, &[numel], &rec, 1).unwrap();
            let Record::XorDelta { xor_bytes, .. } =
                decode_record(&enc, &Limits::default()).unwrap().1
            else {
                panic!("kind")
            };
            let want: Vec<u8> = base.iter().zip(&xor_bytes).map(|(a, b)| a ^ b).collect();
            let mut out = vec![0xa5u8; numel * es];
            let h =
                decode_xor_into(&enc, &Limits::default(), &base, &mut out, &mut planes).unwrap();
            assert_eq!(h.kind, RecordKind::XorZstd);
            assert!(out == want, "{} {numel}", dtype.name());
            same_for_any_thread_count(&want, |out, scratch| {
                decode_xor_into(&enc, &Limits::default(), &base, out, scratch)
            });
            damaged_payloads_agree(
                &enc,
                numel * es,
                dtype,
                |rec| match rec {
                    Record::XorDelta { xor_bytes, .. } => {
                        base.iter().zip(&xor_bytes).map(|(a, b)| a ^ b).collect()
                    }
                    other => panic!("kind {other:?}"),
                },
                |bad, out| {
                    decode_xor_into(bad, &Limits::default(), &base, out, &mut planes).is_ok()
                },
            );
            // the wrong size is refused before decompressing
            if numel > 0 {
                let mut short = vec![0u8; numel * es - 1];
                assert!(decode_xor_into(
                    &enc,
                    &Limits::default(),
                    &base[1..],
                    &mut short,
                    &mut planes
                )
                .is_err());
            }
        }
        // another kind is refused
        let full = Record::Full {
            dtype: DType::U8,
            bytes: vec![1, 2, 3],
        };
        let enc = encode_record(DType::U8, &[3], &full, 1).unwrap();
        assert!(
            decode_xor_into(&enc, &Limits::default(), &[0; 3], &mut [0; 3], &mut planes).is_err()
        );
    }

    /// A payload whose zstd frame does not declare its size (a streaming writer's) decodes through the streamed path
    /// to the same bytes, for both lossless delta kinds.
    #[test]
    fn lossless_deltas_without_declared_frame_sizes_decode_the_same() {
        let (dtype, numel) = (DType::F32, 70_001usize);
        let es = dtype.size();
        let base: Vec<u8> = (0..numel * es).map(|i| (i * 7 % 241) as u8).collect();
        let ft: Vec<u8> = base
            .iter()
            .enumerate()
            .map(|(i, &b)| b ^ (i % 13) as u8)
            .collect();
        let xor: Vec<u8> = base.iter().zip(&ft).map(|(a, b)| a ^ b).collect();
        for rec in [
            Record::XorDelta {
                dtype,
                xor_bytes: xor,
            },
            Record::DiffDelta {
                dtype,
                diff_bytes: diff_bytes(dtype, &base, &ft).unwrap(),
            },
        ] {
            let enc = encode_record(dtype, &[numel], &rec, 1).unwrap();
            // the payload is the record's tail: its compressed length, then the zstd stream
            let mut c = Cursor::new(&enc);
            decode_header_at(&mut c, &Limits::default()).unwrap();
            let head = enc.len() - c.left() as usize;
            let planes = zstd::stream::decode_all(&enc[head + 8..]).unwrap();
            let stream = zstd::stream::encode_all(&planes[..], 3).unwrap();
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(&stream).unwrap(),
                None
            );
            let mut bad = enc[..head].to_vec();
            bad.extend_from_slice(&(stream.len() as u64).to_le_bytes());
            bad.extend_from_slice(&stream);
            assert_eq!(decode_record(&bad, &Limits::default()).unwrap().1, rec);
            let (mut out, mut scratch) = (vec![0u8; numel * es], Vec::new());
            let decode = match rec {
                Record::XorDelta { .. } => decode_xor_into,
                _ => decode_diff_into,
            };
            decode(&bad, &Limits::default(), &base, &mut out, &mut scratch).unwrap();
            assert!(out == ft);
            assert!(scratch.is_empty());
        }
    }

    #[test]
    fn decode_diff_into_rebuilds_the_fine_tuned_bytes() {
        use crate::kinds::diff_zstd::undiff_into;
        let mut planes = vec![0x5au8; 1000];
        for (dtype, numel) in [
            (DType::BF16, ZSTD_FRAME_BYTES + 777),
            (DType::F32, (1 << 16) * 3 + 5),
            (DType::U8, 4099),
            (DType::F64, 3),
            (DType::F32, 0),
        ] {
            let es = dtype.size();
            let base: Vec<u8> = (0..numel * es).map(|i| (i * 7 % 241) as u8).collect();
            let ft: Vec<u8> = base
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if i % 5 == 0 {
                        b.wrapping_add((i % 3) as u8)
                    } else {
                        b ^ (i % 11) as u8
                    }
                })
                .collect();
            let rec = Record::DiffDelta {
                dtype,
                diff_bytes: diff_bytes(dtype, &base, &ft).unwrap(),
            };
            let enc = encode_record(dtype, &[numel], &rec, 1).unwrap();
            assert_eq!(decode_record(&enc, &Limits::default()).unwrap().1, rec);
            let mut out = vec![0xa5u8; numel * es];
            let h =
                decode_diff_into(&enc, &Limits::default(), &base, &mut out, &mut planes).unwrap();
            assert_eq!(h.kind, RecordKind::DiffZstd);
            assert!(out == ft, "{} {numel}", dtype.name());
            same_for_any_thread_count(&ft, |out, scratch| {
                decode_diff_into(&enc, &Limits::default(), &base, out, scratch)
            });
            damaged_payloads_agree(
                &enc,
                numel * es,
                dtype,
                |rec| match rec {
                    Record::DiffDelta { diff_bytes, .. } => {
                        let mut want = vec![0u8; numel * es];
                        undiff_into(dtype, &base, &diff_bytes, &mut want);
                        want
                    }
                    other => panic!("kind {other:?}"),
                },
                |bad, out| {
                    decode_diff_into(bad, &Limits::default(), &base, out, &mut planes).is_ok()
                },
            );
            if numel > 0 {
                let mut short = vec![0u8; numel * es - 1];
                let r = decode_diff_into(
                    &enc,
                    &Limits::default(),
                    &base[1..],
                    &mut short,
                    &mut planes,
                );
                assert!(r.is_err());
                // an xor-zstd record is not read as a diff-zstd one, nor the other way round
                let mut o = vec![0u8; numel * es];
                assert!(
                    decode_xor_into(&enc, &Limits::default(), &base, &mut o, &mut planes).is_err()
                );
            }
        }
    }

    #[test]
    fn lossless_delta_keeps_the_smaller_kind() {
        // Floats close to the base's: the bit difference is small where the XOR is not.
        let base: Vec<f32> = (0..4096).map(|i| 1.0 + (i as f32) * 1e-4).collect();
        let ft: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(i, v)| v + ((i % 7) as f32 - 3.0) * 1e-7)
            .collect();
        let (b, f): (Vec<u8>, Vec<u8>) = (
            base.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ft.iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
        let rec = Record::lossless_delta(DType::F32, &b, &f, 1).unwrap();
        assert_eq!(rec.kind(), RecordKind::DiffZstd);
        let x = Record::XorDelta {
            dtype: DType::F32,
            xor_bytes: b.iter().zip(&f).map(|(a, c)| a ^ c).collect(),
        };
        assert!(rec.encoded_len(1, 1).unwrap() < x.encoded_len(1, 1).unwrap());
        // Equal sizes (identical tensors): the XOR, which older readers read.
        let same = Record::lossless_delta(DType::F32, &b, &b, 1).unwrap();
        assert_eq!(same.kind(), RecordKind::XorZstd);
        assert!(Record::lossless_delta(DType::F32, &b, &f[4..], 1).is_err());
    }

    #[test]
    fn an_encoded_lossless_delta_is_the_record_encode_record_writes() {
        // Both winners: a bit difference (floats near the base's) and an XOR (identical tensors).
        let base: Vec<u8> = (0..6000u32)
            .flat_map(|i| (1.0f32 + i as f32 * 1e-4).to_le_bytes())
            .collect();
        let near: Vec<u8> = base
            .chunks_exact(4)
            .enumerate()
            .flat_map(|(i, c)| {
                let v = f32::from_le_bytes(c.try_into().unwrap());
                (v + ((i % 5) as f32 - 2.0) * 1e-7).to_le_bytes()
            })
            .collect();
        for (ft, kind) in [(&near, RecordKind::DiffZstd), (&base, RecordKind::XorZstd)] {
            for level in [1, 3] {
                let shape = [40, 150];
                let enc =
                    EncodedRecord::lossless_delta(DType::F32, &shape, &base, ft, level).unwrap();
                let rec = Record::lossless_delta(DType::F32, &base, ft, level).unwrap();
                assert_eq!(enc.kind(), kind);
                assert_eq!(rec.kind(), kind);
                assert_eq!(
                    enc.bytes(),
                    encode_record(DType::F32, &shape, &rec, level).unwrap()
                );
                assert_eq!(enc.len(), rec.encoded_len(2, level).unwrap());
                assert_eq!(
                    (enc.kept(), enc.shape(), enc.dtype()),
                    (None, &shape[..], DType::F32)
                );
            }
        }
        // A shape that does not hold the bytes, and tensors of different lengths.
        let err = EncodedRecord::lossless_delta(DType::F32, &[7, 7], &base, &near, 1).unwrap_err();
        assert!(
            err.to_string()
                .contains("24000 bytes for 49 elements of F32"),
            "{err}"
        );
        assert!(
            EncodedRecord::lossless_delta(DType::F32, &[5999], &base[4..], &near[4..], 1).is_ok()
        );
        assert!(
            EncodedRecord::lossless_delta(DType::F32, &[5999], &base[..23996], &near[4..], 1)
                .is_ok()
        );
        assert!(
            EncodedRecord::lossless_delta(DType::F32, &[5999], &base[8..], &near[4..], 1).is_err()
        );
    }

    #[test]
    fn the_streamed_lossless_forms_are_the_whole_ones_byte_for_byte() {
        // EncodedRecord::lossless_delta makes each form's shuffled bytes frame by frame; encode_record shuffles and
        // compresses the raw bytes of Record::lossless_delta's winner whole: the same kind and bytes for every
        // dtype, at frame boundaries and past them, for both winners and the tie.
        let bytes = |n: usize, seed: u64| -> Vec<u8> {
            let mut x = seed | 1;
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 32) as u8
                })
                .collect()
        };
        let mut cases: Vec<(DType, usize)> = DType::ALL
            .iter()
            .flat_map(|&d| [0, 1, 7, 1000].map(|n| (d, n)))
            .collect();
        cases.extend([
            (DType::BF16, ZSTD_FRAME_BYTES / 2 + 5),
            (DType::F32, (ZSTD_FRAME_BYTES + 1000) / 4),
            (DType::U8, ZSTD_FRAME_BYTES + 3),
        ]);
        for (dtype, n) in cases {
            let size = dtype.size();
            let base = bytes(n * size, 7);
            // Near the base (low bytes moved: the bit difference wins), unrelated (the XOR may), and equal (a tie).
            let mut near = base.clone();
            for (i, b) in near.iter_mut().enumerate() {
                if i % size == 0 && i % 3 == 0 {
                    *b = b.wrapping_add(1);
                }
            }
            for ft in [near, bytes(n * size, 11), base.clone()] {
                let shape = [n];
                let enc = EncodedRecord::lossless_delta(dtype, &shape, &base, &ft, 1).unwrap();
                let rec = Record::lossless_delta(dtype, &base, &ft, 1).unwrap();
                assert_eq!(enc.kind(), rec.kind(), "{dtype:?} {n}");
                assert_eq!(
                    enc.bytes(),
                    encode_record(dtype, &shape, &rec, 1).unwrap(),
                    "{dtype:?} {n}"
                );
            }
        }
    }

    #[test]
    fn larger_lossless_records_follow_the_level() {
        let n = crate::SMALL_LOSSLESS_BYTES + 4096;
        let bytes: Vec<u8> = (0..n)
            .map(|i| ((i * i) % 251) as u8 ^ (i >> 9) as u8)
            .collect();
        let rec = Record::Full {
            dtype: DType::U8,
            bytes,
        };
        let l1 = encode_record(DType::U8, &[n], &rec, 1).unwrap();
        let l19 = encode_record(DType::U8, &[n], &rec, 19).unwrap();
        assert_ne!(l1, l19);
        let small = Record::Full {
            dtype: DType::U8,
            bytes: (0..4096u32).map(|i| ((i * i) % 251) as u8).collect(),
        };
        assert_eq!(
            encode_record(DType::U8, &[4096], &small, 1).unwrap(),
            encode_record(DType::U8, &[4096], &small, 19).unwrap()
        );
    }

    #[test]
    fn small_lossless_records_get_level_19() {
        assert_eq!(crate::tensor_zstd_level(100, 1), 19);
        assert_eq!(crate::tensor_zstd_level(crate::SMALL_LOSSLESS_BYTES, 3), 19);
        assert_eq!(
            crate::tensor_zstd_level(crate::SMALL_LOSSLESS_BYTES + 1, 3),
            3
        );
        assert_eq!(crate::tensor_zstd_level(10, 22), 22);
    }

    #[test]
    fn multi_frame_zstd_round_trip() {
        let n = ZSTD_FRAME_BYTES * 2 + 1000;
        let bytes: Vec<u8> = (0..n).map(|i| (i % 251) as u8 ^ (i >> 20) as u8).collect();
        let rec = Record::Full {
            dtype: DType::U8,
            bytes,
        };
        let enc = encode_record(DType::U8, &[n], &rec, 1).unwrap();
        assert!(enc.len() < n / 10);
        assert_eq!(decode_record(&enc, &Limits::default()).unwrap().1, rec);
        // Three frames, each starting with the zstd magic.
        let magic = [0x28u8, 0xB5, 0x2F, 0xFD];
        let frames = enc.windows(4).filter(|w| *w == magic).count();
        assert!(frames >= 3, "{frames} frames");
    }

    #[test]
    fn zstd_size_lies_are_caught() {
        let rec = Record::Full {
            dtype: DType::U8,
            bytes: vec![7; 10],
        };
        let mut enc = encode_record(DType::U8, &[10], &rec, 3).unwrap();
        // Claim 11 elements: decompressed size no longer matches.
        enc[4..12].copy_from_slice(&11u64.to_le_bytes());
        enc[12..20].copy_from_slice(&11u64.to_le_bytes());
        let err = decode_record(&enc, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidStream { stream: "zstd", .. }),
            "{err}"
        );
    }
}
