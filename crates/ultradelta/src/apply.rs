//! apply: base checkpoint + archive → the rebuilt fine-tuned checkpoint folder.
//!
//! Tensors are rebuilt on the rayon pool while a writer thread writes the earlier ones out: three buffers go back
//! and forth (one being written, one in the one-slot hand-off, one being rebuilt), so at most three rebuilt tensors
//! are in memory, and they are reused from tensor to tensor (with the scratch an `xor-zstd` record is decompressed
//! into), because fresh memory per tensor meant the kernel zeroing and unmapping pages for every tensor. The next
//! compressed tensor's record is decoded while the current tensor is rebuilt; within a tensor, the base tensor's
//! hash check runs beside the parallel copy of the base bytes (which notes the blocks holding a NaN) and the
//! patch; `xor-zstd` records are unshuffled and XORed into the base in one parallel pass. The writer opens shard
//! files with `O_DIRECT` when it can (`WriterOptions::direct_io`; ordinary writes where the filesystem refuses):
//! each tensor is rebuilt at an address aligned like its offset in the file, so its bytes go to the disk from the
//! buffer without a copy into fresh page-cache pages. The folder is written under a temp name, fsynced and
//! renamed into place. A sparse record's tensor is the base bytes with only the kept entries recomputed (same f32
//! arithmetic and conversions as the dense path; a conversion block holding a NaN takes the dense path), so the
//! output is byte-identical to `to_f32` + `Record::add_delta_into` + `f32_to_bytes`; other record kinds use that
//! dense path.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use ultradelta_archive::{
    AppendedRowsRecord, ArchiveReader, Policy, Positions, Record, TensorEntry,
};
use ultradelta_io::{
    f32_to_bytes, Checkpoint, CheckpointWriter, DType, TensorInfo, TensorView, WriterOptions,
    DIRECT_IO_ALIGN, PAR_CHUNK,
};
use ultradelta_qgp::seeded::{trial_seed, SeededSample};

use crate::guard::{check_output, Input};
use crate::progress::check_cancelled;
use crate::{Error, Progress, Result};

/// Options of [`apply`].
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Replace an existing output folder.
    pub overwrite: bool,
    /// Shard the rebuilt checkpoint when it is larger than this (bytes).
    pub max_shard_bytes: u64,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            overwrite: false,
            max_shard_bytes: WriterOptions::default().max_shard_bytes,
        }
    }
}

/// Checks that `base` is the checkpoint `reader`'s archive was made against.
pub fn check_base(base: &Checkpoint, reader: &ArchiveReader, archive: &Path) -> Result<()> {
    let found = base.fingerprint();
    let expected = &reader.manifest().base_fingerprint;
    if &found != expected {
        return Err(Error::WrongBase {
            archive: archive.to_path_buf(),
            base: base.path().to_path_buf(),
            expected: expected.clone(),
            found,
        });
    }
    Ok(())
}

/// Checks that the base has `entry`'s tensor with the entry's shape and dtype (every policy but `new`, whose
/// tensor has no base counterpart). `apply` checks every entry this way before it sizes any buffer, so an index
/// entry cannot make it allocate more than the base's own tensors.
///
/// # Errors
/// [`Error::BaseTensor`] naming the tensor and what was expected.
pub fn check_entry_against_base(
    base: &Checkpoint,
    archive: &Path,
    entry: &TensorEntry,
) -> Result<()> {
    if entry.policy == Policy::New {
        return Ok(());
    }
    let base_err = |what: String| Error::BaseTensor {
        base: base.path().to_path_buf(),
        archive: archive.to_path_buf(),
        tensor: entry.name.clone(),
        what,
    };
    let Some(info) = base.info(entry.base_tensor()) else {
        return Err(base_err(match &entry.base_name {
            Some(b) => format!("is missing (the archive rebuilds it from the base's \"{b}\")"),
            None => "is missing".into(),
        }));
    };
    let (dtype, shape) = (entry.expected_base_dtype(), entry.expected_base_shape());
    if info.shape != shape || info.dtype != dtype {
        return Err(base_err(format!(
            "is {} {:?}, expected {} {:?}",
            info.dtype.name(),
            info.shape,
            dtype.name(),
            shape
        )));
    }
    Ok(())
}

/// Rebuilds one tensor of the fine-tuned model, in its original dtype, from the base and
/// the archive: base + γ·Δ̂ for compressed tensors, base XOR stored bits for kept ones,
/// the base value for dropped ones, the stored tensor for new ones.
///
/// This is the single decoding path used by `apply` and `eval`; every lossy record kind (UltraDelta and each
/// baseline) is turned into Δ̂ by [`Record::add_delta_into`], the same function the in-memory result uses.
pub fn rebuild_tensor(
    base: &Checkpoint,
    reader: &ArchiveReader,
    archive: &Path,
    entry: &TensorEntry,
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; entry_nbytes(archive, entry)?];
    rebuild_tensor_into(base, reader, archive, entry, &mut out, &mut Vec::new())?;
    Ok(out)
}

/// The byte size of `entry`'s tensor.
fn entry_nbytes(archive: &Path, entry: &TensorEntry) -> Result<usize> {
    TensorInfo::new(entry.name.clone(), entry.dtype, entry.shape.clone())
        .checked_nbytes()
        .ok_or_else(|| Error::Overflow {
            archive: archive.to_path_buf(),
            tensor: entry.name.clone(),
            what: "byte size",
        })
}

/// Like [`rebuild_tensor`], into `out`, which must be exactly the tensor's byte size: every byte of `out` is
/// written, so a buffer can be reused from tensor to tensor without clearing it. `scratch` is working memory
/// (any contents, grown as needed) that can be reused the same way. `apply` reuses both, so their pages are
/// faulted in once rather than for every tensor.
pub fn rebuild_tensor_into(
    base: &Checkpoint,
    reader: &ArchiveReader,
    archive: &Path,
    entry: &TensorEntry,
    out: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Result<()> {
    rebuild_with(base, reader, archive, entry, out, scratch, None)
}

/// A compressed tensor's record read ahead of its rebuilding, with its seeded position sample already drawn
/// when it has one: the draw is sequential (a few tens of milliseconds for a LLaMA embedding matrix), so `apply`
/// does it beside the previous tensor's rebuilding rather than on the rebuilding's critical path.
struct Decoded {
    /// The delta's record: the entry's, or for a tensor the fine-tune grew by rows (`appended-rows`) the nested
    /// record of the base's rows.
    record: Record,
    sample: Option<SeededSample>,
    /// The added rows' bytes of an `appended-rows` record.
    added: Option<Vec<u8>>,
}

/// A compressed tensor's record split into the delta's record and, for a tensor the fine-tune grew by rows
/// (`appended-rows`), the added rows' bytes.
fn delta_and_added(record: Record) -> (Record, Option<Vec<u8>>) {
    match record {
        // A compressed entry's nested record is a lossy delta (the reader checks the policy against it).
        Record::AppendedRows(AppendedRowsRecord {
            head: Some(head),
            tail,
            ..
        }) => (*head, Some(tail)),
        record => (record, None),
    }
}

/// The error of `entry`'s record failing to decode onto the base ([`Error::Decode`]).
fn decode_err(archive: &Path, entry: &TensorEntry, source: ultradelta_archive::Error) -> Error {
    Error::Decode {
        archive: archive.to_path_buf(),
        tensor: entry.name.clone(),
        source: Box::new(source),
    }
}

/// Copies the added rows' bytes of an `appended-rows` record into the part of the output after the base's rows;
/// both absent for every other tensor.
fn put_added(
    archive: &Path,
    entry: &TensorEntry,
    added: Option<Vec<u8>>,
    out: Option<&mut [u8]>,
) -> Result<()> {
    match (added, out) {
        (Some(a), Some(o)) if a.len() == o.len() => {
            o.copy_from_slice(&a);
            Ok(())
        }
        (None, None) => Ok(()),
        (a, o) => Err(Error::CorruptArchive {
            archive: archive.to_path_buf(),
            tensor: entry.name.clone(),
            detail: format!(
                "{} bytes of added rows for {} the tensor adds to the base's",
                a.map_or(0, |a| a.len()),
                o.map_or(0, |o| o.len())
            ),
        }),
    }
}

/// Reads `entry`'s record and, for coded records with seeded positions that agree with the entry's size, draws
/// the sample ([`patch_sparse`] checks the record before using it, and draws it itself when it is not given).
fn decode_ahead(reader: &ArchiveReader, entry: &TensorEntry) -> Result<Decoded> {
    let (record, added) = delta_and_added(reader.read_record(&entry.name)?);
    // Entries of the delta: the base's tensor's.
    let numel = entry
        .expected_base_shape()
        .iter()
        .fold(1u64, |a, &d| a.saturating_mul(d as u64));
    let sample = match &record {
        Record::Coded(c) if c.numel == numel && c.kept() <= c.numel => match c.positions {
            Positions::Seeded { seed, trial } => Some(SeededSample::new(
                c.numel,
                c.kept(),
                trial_seed(seed, trial),
            )),
            Positions::Golomb(_) => None,
        },
        _ => None,
    };
    Ok(Decoded {
        record,
        sample,
        added,
    })
}

/// [`rebuild_tensor_into`], given the record of a compressed tensor if it was already read (`apply` decodes the
/// next compressed tensor's record while it rebuilds the current one).
fn rebuild_with(
    base: &Checkpoint,
    reader: &ArchiveReader,
    archive: &Path,
    entry: &TensorEntry,
    out: &mut [u8],
    scratch: &mut Vec<u8>,
    record: Option<Result<Decoded>>,
) -> Result<()> {
    let name = entry.name.as_str();
    let corrupt = |detail: String| Error::CorruptArchive {
        archive: archive.to_path_buf(),
        tensor: name.to_string(),
        detail,
    };
    let unexpected = || {
        let policy = format!("{:?}", entry.policy).to_lowercase();
        corrupt(format!(
            "unexpected record kind for a tensor of policy {policy}"
        ))
    };
    let expected = out.len();
    let wrong_size =
        |found: usize| corrupt(format!("rebuilt to {found} bytes, expected {expected}"));
    if entry.policy == Policy::New {
        // Straight into `out`: no second buffer of the tensor's size (issue 15, item 2).
        if entry.numel.checked_mul(entry.dtype.size() as u64) == Some(out.len() as u64)
            && reader.read_full_into(name, out)?
        {
            return Ok(());
        }
        return match reader.read_record(name)? {
            Record::Full { bytes, .. } if bytes.len() == out.len() => {
                out.copy_from_slice(&bytes);
                Ok(())
            }
            Record::Full { bytes, .. } => Err(wrong_size(bytes.len())),
            _ => Err(unexpected()),
        };
    }
    check_entry_against_base(base, archive, entry)?;
    let view = base.view(entry.base_tensor())?;
    // A tensor the fine-tune grew by rows (`appended-rows`): the base's rows are rebuilt into the first part of
    // `out` as a tensor of the base's shape would be, the added rows come from the record.
    let head_len = view.info().numel().saturating_mul(entry.dtype.size());
    let (out, mut added_out) = match entry.base_rows {
        Some(_) if head_len < out.len() => {
            let (head, added) = out.split_at_mut(head_len);
            (head, Some(added))
        }
        _ => (out, None),
    };
    if entry.base_dtype.is_some() {
        if entry.base_hash.is_some() {
            check_base_hash(base, archive, entry, view.content_hash())?;
        }
        return rebuild_from_other_dtype(&view, reader, archive, entry, out, added_out, record);
    }
    let src = view.bytes();
    if src.len() != out.len() {
        return Err(wrong_size(src.len()));
    }
    // The base tensor's hash (single-threaded) is checked alongside the rebuilding; its error comes first.
    let compare = |hash: u64| check_base_hash(base, archive, entry, hash);
    let check_base = || match entry.base_hash {
        Some(_) => compare(view.content_hash()),
        None => Ok(()),
    };
    // A tensor grown by rows, kept or dropped: the base rows from the base and the nested lossless delta (none when
    // dropped), the added rows from the record.
    if let Some(added_out) =
        added_out.take_if(|_| matches!(entry.policy, Policy::Keep | Policy::Drop))
    {
        let (checked, rebuilt) = rayon::join(check_base, || -> Result<()> {
            let Record::AppendedRows(r) = reader.read_record(name)? else {
                return Err(unexpected());
            };
            match &r.head {
                Some(head) => head
                    .lossless_into(src, out)
                    .map_err(|source| decode_err(archive, entry, source))?,
                None => copy_par(src, out),
            }
            put_added(archive, entry, Some(r.tail), Some(added_out))
        });
        checked?;
        return rebuilt;
    }
    match entry.policy {
        Policy::Drop => {
            let (checked, ()) = rayon::join(check_base, || copy_par(src, out));
            checked
        }
        Policy::Keep => {
            let (checked, done) = rayon::join(check_base, || {
                reader.read_lossless_into(name, src, out, scratch)
            });
            checked?;
            if done? {
                return Ok(());
            }
            Err(unexpected())
        }
        Policy::Compress => {
            // The record's decoding and sample draw (one thread, when not done ahead: started first, as the
            // longest) beside one pass over the base tensor's bytes: read from the file into `out` chunk by chunk,
            // each chunk hashed and checked for NaN while in cache (the memory map is not touched, so there are no
            // page faults). Then the hash is compared (a mismatch is reported first) and the record patched in.
            let (decoded, read) = rayon::join(
                || record.unwrap_or_else(|| decode_ahead(reader, entry)),
                || read_base_noting_nans(&view, out),
            );
            let (hash, nan) = read?;
            compare(hash)?;
            let rebuilt = (|| -> Result<Option<usize>> {
                let Decoded {
                    record: rec,
                    sample,
                    added,
                } = decoded?;
                put_added(archive, entry, added, added_out.take())?;
                let gamma = reader.manifest().gamma as f32;
                if let Patch::Done {
                    first_new_non_finite,
                } = patch_sparse(&view, &rec, sample.as_ref(), gamma, out, Some(&nan))?
                {
                    return Ok(first_new_non_finite);
                }
                let mut w = view.to_f32()?;
                rec.add_delta_into(gamma, &mut w)
                    .map_err(|source| decode_err(archive, entry, source))?;
                let mut bytes = Vec::with_capacity(entry.dtype.size() * w.len());
                f32_to_bytes(&w, entry.dtype, &mut bytes)?;
                if bytes.len() != out.len() {
                    return Err(wrong_size(bytes.len()));
                }
                out.copy_from_slice(&bytes);
                Ok(first_new_non_finite(src, out, entry.dtype))
            })();
            match rebuilt? {
                Some(index) => Err(non_finite_output(archive, entry, index)),
                None => Ok(()),
            }
        }
        Policy::New => unreachable!("handled above"),
    }
}

/// [`rebuild_with`] for a tensor whose base has another floating-point dtype than the fine-tune's
/// ([`TensorEntry::base_dtype`]): the base's values in f32 (the caller has checked its hash), the delta added for a
/// compressed tensor, written in the tensor's dtype; a tensor kept without loss is stored whole (`full-zstd`), and a
/// dropped one is the base's values in the tensor's dtype. The rows a tensor grown by rows adds go to `added_out`
/// from its record. The same f32 arithmetic as the dense path; an entry that comes out non-finite where the base's
/// value is finite is refused, as there.
fn rebuild_from_other_dtype(
    view: &TensorView<'_>,
    reader: &ArchiveReader,
    archive: &Path,
    entry: &TensorEntry,
    out: &mut [u8],
    added_out: Option<&mut [u8]>,
    record: Option<Result<Decoded>>,
) -> Result<()> {
    let name = entry.name.as_str();
    let corrupt = |detail: String| Error::CorruptArchive {
        archive: archive.to_path_buf(),
        tensor: name.to_string(),
        detail,
    };
    if entry.policy == Policy::Keep && added_out.is_none() {
        return if reader.read_full_into(name, out)? {
            Ok(())
        } else {
            Err(corrupt(format!(
                "a tensor kept without loss over a base of another dtype ({}) must be stored whole (full-zstd), \
                 not as {}",
                view.info().dtype.name(),
                entry.kind
            )))
        };
    }
    // Compress or drop: the base's values in f32, the delta added for a compressed tensor; for a tensor grown by
    // rows, the added rows from the record (the index validation allows no other policy for it with base_dtype).
    let mut w = view.to_f32()?;
    if entry.policy == Policy::Compress {
        let (rec, added) = match record {
            Some(d) => d.map(|d| (d.record, d.added))?,
            None => delta_and_added(reader.read_record(name)?),
        };
        put_added(archive, entry, added, added_out)?;
        let gamma = reader.manifest().gamma as f32;
        rec.add_delta_into(gamma, &mut w)
            .map_err(|source| decode_err(archive, entry, source))?;
    } else if added_out.is_some() {
        // Dropped: the base's rows as they are, the added rows from the record.
        let tail = match reader.read_record(name)? {
            Record::AppendedRows(r) if r.head.is_none() => r.tail,
            _ => {
                return Err(corrupt(format!(
                    "unexpected record for a tensor of policy {} grown by rows",
                    format!("{:?}", entry.policy).to_lowercase()
                )))
            }
        };
        put_added(archive, entry, Some(tail), added_out)?;
    }
    let mut bytes = Vec::with_capacity(out.len());
    f32_to_bytes(&w, entry.dtype, &mut bytes)?;
    if bytes.len() != out.len() {
        return Err(corrupt(format!(
            "rebuilt to {} bytes, expected {}",
            bytes.len(),
            out.len()
        )));
    }
    out.copy_from_slice(&bytes);
    // Non-finite outputs are rare: the base's value is converted again only where one is found.
    let es = entry.dtype.size();
    let new_non_finite = out
        .chunks_exact(es)
        .enumerate()
        .filter(|(_, o)| non_finite(o, entry.dtype) == Some(true))
        .find_map(|(i, _)| {
            let mut b = [0f32];
            view.range_to_f32_into(i, &mut b).ok()?;
            b[0].is_finite().then_some(i)
        });
    match new_non_finite {
        Some(index) => Err(non_finite_output(archive, entry, index)),
        None => Ok(()),
    }
}

/// The base tensor's content hash `hash` against the one the archive recorded for `entry` (when it did).
fn check_base_hash(
    base: &Checkpoint,
    archive: &Path,
    entry: &TensorEntry,
    hash: u64,
) -> Result<()> {
    if let Some(expected) = &entry.base_hash {
        let found = format!("{hash:016x}");
        if &found != expected {
            return Err(Error::BaseTensorChanged {
                archive: archive.to_path_buf(),
                file: base
                    .file_of(entry.base_tensor())
                    .unwrap_or(base.path())
                    .to_path_buf(),
                tensor: entry.name.clone(),
                expected: expected.clone(),
                found,
            });
        }
    }
    Ok(())
}

/// The error of entry `index` of `entry`'s rebuilt tensor coming out non-finite where the base's is finite.
fn non_finite_output(archive: &Path, entry: &TensorEntry, index: usize) -> Error {
    Error::NonFiniteOutput {
        archive: archive.to_path_buf(),
        tensor: entry.name.clone(),
        index,
        dtype: entry.dtype.name().to_string(),
    }
}

/// Whether the float of `dtype` in `b` (its little-endian bytes) is Inf or NaN; `None` for non-float dtypes.
fn non_finite(b: &[u8], dtype: DType) -> Option<bool> {
    Some(match dtype {
        DType::F64 => {
            u64::from_le_bytes(b.try_into().ok()?) & 0x7fff_ffff_ffff_ffff >= 0x7ff0_0000_0000_0000
        }
        DType::F32 => u32::from_le_bytes(b.try_into().ok()?) & 0x7fff_ffff >= 0x7f80_0000,
        DType::F16 => u16::from_le_bytes(b.try_into().ok()?) & 0x7fff >= 0x7c00,
        DType::BF16 => u16::from_le_bytes(b.try_into().ok()?) & 0x7fff >= 0x7f80,
        _ => return None,
    })
}

/// The first entry that is non-finite in `out` but finite in `base` (both the tensor's bytes in `dtype`), if any:
/// one parallel scan, so `apply` never writes an Inf or NaN the fine-tune did not have (its delta was finite).
fn first_new_non_finite(base: &[u8], out: &[u8], dtype: DType) -> Option<usize> {
    let es = dtype.size();
    non_finite(&base[..es.min(base.len())], dtype)?;
    let chunk = PAR_CHUNK * es;
    out.par_chunks(chunk)
        .zip(base.par_chunks(chunk))
        .enumerate()
        .find_map_first(|(c, (o, b))| {
            if !any_non_finite(o, dtype) {
                return None;
            }
            first_new_in(o, b, dtype).map(|i| c * PAR_CHUNK + i)
        })
}

/// The first entry, entry by entry, that is non-finite in `out` but finite in `base` (`dtype`'s bytes).
fn first_new_in(out: &[u8], base: &[u8], dtype: DType) -> Option<usize> {
    let es = dtype.size();
    out.chunks_exact(es)
        .zip(base.chunks_exact(es))
        .position(|(o, b)| {
            non_finite(o, dtype) == Some(true) && non_finite(b, dtype) == Some(false)
        })
}

/// Whether the floats of `dtype` in `bytes` hold an Inf or NaN: one vectorisable reduction over the magnitudes'
/// bit patterns (an entry is non-finite exactly when its pattern, sign cleared, reaches the infinity's). The
/// fast test before [`first_new_non_finite`]'s entry-by-entry scan, which then runs only on a block that has one.
fn any_non_finite(bytes: &[u8], dtype: DType) -> bool {
    use ultradelta_qgp::simd::wide;
    match dtype {
        DType::BF16 => wide(|| top_magnitude(bytes)) >= 0x7f80,
        DType::F16 => wide(|| top_magnitude(bytes)) >= 0x7c00,
        DType::F32 => {
            wide(|| {
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7fff_ffff)
                    .fold(0u32, u32::max)
            }) >= 0x7f80_0000
        }
        // Rare enough in checkpoints not to need a fast path: the scan decides.
        _ => true,
    }
}

/// Bytes per parallel work unit of the plain copies.
const COPY_CHUNK: usize = 1 << 20;

/// `out.copy_from_slice(src)`, in parallel chunks.
fn copy_par(src: &[u8], out: &mut [u8]) {
    out.par_chunks_mut(COPY_CHUNK)
        .zip(src.par_chunks(COPY_CHUNK))
        .for_each(|(o, s)| o.copy_from_slice(s));
}

/// The largest bit pattern, sign cleared, among the 16-bit floats `bytes` (one vectorisable reduction): above
/// the infinity's pattern means a NaN.
fn top_magnitude(bytes: &[u8]) -> i16 {
    bytes
        .chunks_exact(2)
        .map(|c| (u16::from_le_bytes([c[0], c[1]]) & 0x7fff) as i16)
        .fold(0i16, i16::max)
}

/// True when the 16-bit float block `bytes` of `dtype` holds a NaN (always false for other dtypes).
fn has_nan16(bytes: &[u8], dtype: DType) -> bool {
    match dtype {
        DType::BF16 => ultradelta_qgp::simd::wide(|| top_magnitude(bytes)) > 0x7f80,
        DType::F16 => ultradelta_qgp::simd::wide(|| top_magnitude(bytes)) > 0x7c00,
        _ => false,
    }
}

/// The base tensor's bytes read from its file into `out` (its byte size) in blocks of [`PAR_CHUNK`] entries,
/// each block hashed and checked for a NaN while in cache ([`TensorView::read_hashed_into`]): the bytes' xxh3-64
/// (as [`TensorView::content_hash`]) and, per block, whether it holds a NaN.
fn read_base_noting_nans(view: &TensorView<'_>, out: &mut [u8]) -> Result<(u64, Vec<bool>)> {
    let dtype = view.info().dtype;
    let chunk = PAR_CHUNK * dtype.size().max(1);
    let mut nan = Vec::with_capacity(out.len().div_ceil(chunk));
    let hash = view.read_hashed_into(out, chunk, |_, part| nan.push(has_nan16(part, dtype)))?;
    Ok((hash, nan))
}

/// `base + γ·Δ̂` for a sparse record, in the tensor's bytes, touching only the kept entries, in `out` (the
/// tensor's byte size), which holds the base bytes on entry.
///
/// Writes exactly the bytes of the dense path (`to_f32`, [`Record::add_delta_into`], [`f32_to_bytes`]): an
/// entry the record does not touch converts to f32 and back unchanged, except a NaN of F16/BF16 (whose payload
/// the conversion may rewrite), so each block of [`PAR_CHUNK`] entries (the dense path's conversion blocks) is
/// copied from the base and only its kept entries are recomputed, with the same arithmetic and conversions; a
/// block holding a NaN, before or after the addition, goes through the dense path. `false` (and `out` untouched)
/// when this path does not apply (another dtype, or a record that does not validate: the dense path reports the
/// error). `nan`, when given, says which blocks of the base hold a NaN (as the read of the base bytes notes them).
/// Patches the base's bytes in `out` (already a copy of them) with a sparse record's values at its positions,
/// touching only the blocks that hold a kept entry (or a NaN, `nan` as noted by the copy): the result is byte for
/// byte the dense path's (the whole tensor to f32, [`Record::add_delta_into`], back to the dtype). Applies to
/// Golomb-listed records and to the coded ones (seeded positions are regenerated); [`Patch::Declined`] for any
/// other record or dtype, and for a record that does not validate (the dense path then reports it). An entry the
/// record does not touch keeps the base's bytes, so only the patched entries (and the blocks that went through
/// the dense path) are checked for a new Inf/NaN: no second scan of the whole tensor.
fn patch_sparse(
    view: &TensorView<'_>,
    rec: &Record,
    sample: Option<&SeededSample>,
    gamma: f32,
    out: &mut [u8],
    nan: Option<&[bool]>,
) -> Result<Patch> {
    let numel = view.info().numel() as u64;
    match rec {
        Record::Sparse(s) if s.numel == numel && s.validate().is_ok() => patch_positions(
            view,
            &Kept::Listed(&s.positions),
            |k| s.value(k),
            gamma,
            out,
            nan,
        ),
        Record::Coded(c) if c.numel == numel && c.validate().is_ok() => match &c.positions {
            Positions::Golomb(p) => {
                patch_positions(view, &Kept::Listed(p), |k| c.value(k), gamma, out, nan)
            }
            Positions::Seeded { seed, trial } => {
                let drawn;
                let sample = match sample {
                    Some(s) if s.numel() == numel && s.kept() == c.kept() => s,
                    _ => {
                        drawn = SeededSample::new(numel, c.kept(), trial_seed(*seed, *trial));
                        &drawn
                    }
                };
                patch_positions(view, &Kept::Seeded(sample), |k| c.value(k), gamma, out, nan)
            }
        },
        _ => Ok(Patch::Declined),
    }
}

/// What [`patch_sparse`] did.
#[derive(Debug, PartialEq, Eq)]
enum Patch {
    /// The record was patched in; the first entry the patch made non-finite (finite in the base), if any.
    Done { first_new_non_finite: Option<usize> },
    /// Not this path's (another record kind or dtype, or a record that does not validate); `out` untouched.
    Declined,
}

/// A sparse record's kept positions, increasing: listed (Golomb records, decoded) or a seeded sample (regenerated,
/// never written out as a list: [`patch_positions`] walks its bitmap block by block).
enum Kept<'a> {
    Listed(&'a [u64]),
    Seeded(&'a SeededSample),
}

impl Kept<'_> {
    /// For every block of [`PAR_CHUNK`] entries of a tensor of `numel` entries, the ordinal of its first kept
    /// entry (plus the total at the end).
    fn block_starts(&self, numel: usize) -> Vec<usize> {
        let blocks = numel.div_ceil(PAR_CHUNK);
        let mut starts: Vec<usize> = match self {
            Kept::Listed(p) => (0..blocks)
                .into_par_iter()
                .map(|c| p.partition_point(|&x| x < (c * PAR_CHUNK) as u64))
                .collect(),
            Kept::Seeded(s) => {
                const WORDS: usize = PAR_CHUNK / 64;
                let counts: Vec<usize> = (0..blocks)
                    .into_par_iter()
                    .map(|c| s.kept_in(c * WORDS..((c + 1) * WORDS).min(s.words())) as usize)
                    .collect();
                let mut acc = 0;
                counts
                    .iter()
                    .map(|&n| {
                        let at = acc;
                        acc += n;
                        at
                    })
                    .collect()
            }
        };
        starts.push(match self {
            Kept::Listed(p) => p.len(),
            Kept::Seeded(s) => s.kept() as usize,
        });
        starts
    }

    /// Calls `f(k, p)` for the kept positions `p` of block `c` (entries `c·PAR_CHUNK ..`) in increasing order,
    /// `k` the ordinal of `p` among all kept positions (`a..b`, from [`Kept::block_starts`]). A seeded sample is
    /// walked on its bitmap, never listed.
    fn for_each_in_block(&self, c: usize, a: usize, b: usize, mut f: impl FnMut(usize, usize)) {
        match self {
            Kept::Listed(p) => {
                for (k, &p) in (a..b).zip(&p[a..b]) {
                    f(k, p as usize);
                }
            }
            Kept::Seeded(s) => {
                const WORDS: usize = PAR_CHUNK / 64;
                let mut k = a;
                s.for_each_in(c * WORDS..((c + 1) * WORDS).min(s.words()), |p| {
                    f(k, p as usize);
                    k += 1;
                });
                debug_assert_eq!(k, b);
            }
        }
    }
}

/// One entry of a float `dtype` (F32, F16 or BF16) in little-endian bytes to f32, exactly as
/// [`ultradelta_io::bytes_to_f32`] converts it.
#[inline(always)]
fn load(dtype: DType, b: &[u8]) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        DType::F16 => half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        _ => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
    }
}

/// `v` into one entry of `dtype` (F32, F16 or BF16), exactly as [`f32_to_bytes`] converts it (for every value
/// but NaN, whose payload the callers never write through here).
#[inline(always)]
fn store(dtype: DType, v: f32, b: &mut [u8]) {
    match dtype {
        DType::BF16 => b[..2].copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes()),
        DType::F16 => b[..2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes()),
        _ => b[..4].copy_from_slice(&v.to_le_bytes()),
    }
}

/// [`patch_sparse`] for increasing kept positions (validated, all below the tensor's entries) and their values
/// before γ, `value(k)` for the `k`-th kept position.
fn patch_positions(
    view: &TensorView<'_>,
    kept: &Kept<'_>,
    value: impl Fn(usize) -> f32 + Sync,
    gamma: f32,
    out: &mut [u8],
    nan: Option<&[bool]>,
) -> Result<Patch> {
    let dtype = view.info().dtype;
    let es = dtype.size();
    let base = view.bytes();
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) || base.len() != out.len() {
        return Ok(Patch::Declined);
    }
    let starts = kept.block_starts(out.len() / es);
    let first_new_non_finite = out
        .par_chunks_mut(PAR_CHUNK * es)
        .enumerate()
        .map(|(c, o)| -> Result<Option<usize>> {
            let start = c * PAR_CHUNK;
            let (a, b) = (starts[c], starts[c + 1]);
            let base_nan = match nan {
                Some(flags) => flags[c],
                None => has_nan16(o, dtype),
            };
            if a == b && !base_nan {
                return Ok(None);
            }
            let i_of = |p: usize| (p - start) * es;
            if !base_nan {
                // In place, entry by entry: the base's value plus the record's, converted back. A NaN made by the
                // addition (16-bit dtypes: the conversion may rewrite its payload) sends the block to the dense
                // path below, which rewrites every entry of it from the base.
                let mut first = None;
                let mut nan_made = false;
                kept.for_each_in_block(c, a, b, |k, p| {
                    if nan_made {
                        return;
                    }
                    let e = &mut o[i_of(p)..i_of(p) + es];
                    let v = load(dtype, e) + value(k) * gamma;
                    if v.is_nan() && dtype != DType::F32 {
                        nan_made = true;
                        return;
                    }
                    let was_finite = non_finite(e, dtype) == Some(false);
                    store(dtype, v, e);
                    if first.is_none() && was_finite && non_finite(e, dtype) == Some(true) {
                        first = Some(p);
                    }
                });
                if !nan_made {
                    return Ok(first);
                }
            }
            // The dense path on this block, then the block scanned whole against the base's.
            let mut w = vec![0f32; o.len() / es];
            view.range_to_f32_into(start, &mut w)?;
            kept.for_each_in_block(c, a, b, |k, p| w[p - start] += value(k) * gamma);
            let mut enc = Vec::with_capacity(o.len());
            f32_to_bytes(&w, dtype, &mut enc)?;
            o.copy_from_slice(&enc);
            let bb = &base[start * es..start * es + o.len()];
            Ok(first_new_in(o, bb, dtype).map(|i| start + i))
        })
        .try_reduce(|| None, |x, y| Ok(x.into_iter().chain(y).min()))?;
    Ok(Patch::Done {
        first_new_non_finite,
    })
}

/// Checks that every companion file of the archive can be written inside an output folder under its name
/// ([`ultradelta_io::check_companion_name`]: a relative path without `.`/`..` components, hidden names or weight
/// names). The archive reader already refused absolute paths and `..`; this adds what a model folder may not hold.
///
/// # Errors
/// [`Error::CompanionName`] for the first name refused.
pub fn check_companion_names(reader: &ArchiveReader, archive: &Path) -> Result<()> {
    for f in &reader.manifest().files {
        ultradelta_io::check_companion_name(&f.name).map_err(|reason| Error::CompanionName {
            archive: archive.to_path_buf(),
            name: f.name.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// Rebuilds the fine-tuned checkpoint from `base` and the archive at `archive` into the
/// folder `out_dir` (safetensors, sharded when large, with the fine-tune's metadata and
/// companion files). The folder appears only when complete.
pub fn apply(
    base: &Checkpoint,
    archive: &Path,
    out_dir: &Path,
    opts: &ApplyOptions,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    let mut inputs = Input::checkpoint(base, "base checkpoint");
    inputs.push(Input::path(archive, "archive"));
    check_output(out_dir, &inputs)?;
    let reader = ArchiveReader::open(archive)?;
    check_base(base, &reader, archive)?;
    let manifest = reader.manifest();
    // Every entry against the base before anything is sized from the index (issue 15, item 1).
    for e in &manifest.tensors {
        check_entry_against_base(base, archive, e)?;
    }
    // Every companion name before anything is written (issue 17: names may hold subfolders).
    check_companion_names(&reader, archive)?;
    // The base's files that companion files were stored against, before anything is written.
    let base_files = crate::companions::check_base_files(base, &reader, archive)?;
    let infos: Vec<TensorInfo> = manifest
        .tensors
        .iter()
        .map(|e| TensorInfo {
            name: e.name.clone(),
            dtype: e.dtype,
            shape: e.shape.clone(),
        })
        .collect();
    let total: u64 = infos.iter().map(|i| i.numel() as u64).sum();
    let wopts = WriterOptions {
        max_shard_bytes: opts.max_shard_bytes,
        metadata: manifest.finetuned.metadata.clone(),
        overwrite: opts.overwrite,
        direct_io: true,
    };
    let sizes: Vec<usize> = infos
        .iter()
        .map(|i| i.checked_nbytes().unwrap_or(0))
        .collect();
    let writer = CheckpointWriter::create(out_dir, infos, wopts)?;
    // Each tensor is rebuilt at an address aligned like its offset in the file, so that the writer's direct I/O
    // takes the bytes from the buffer without a staging copy.
    let offsets: Vec<u64> = manifest
        .tensors
        .iter()
        .map(|e| writer.data_offset(&e.name).unwrap_or(0))
        .collect();
    progress.begin("rebuilding", total);
    // A pipeline: tensors are rebuilt (on the rayon pool) while a writer thread writes the earlier ones out (its
    // time is mostly waiting for the disk, so it does not hold a pool thread), through three buffers that go back
    // and forth: one being written, one waiting in the hand-off slot, one being rebuilt — so rebuilding can run a
    // tensor ahead when a slow-to-rebuild tensor (a lossless embedding) meets a slow-to-write one. At most three
    // rebuilt tensors are in memory. The buffers are reused from tensor to tensor (each keeps the size of the
    // largest tensor it held), and so is the decoding scratch of lossless records: fresh memory for every tensor
    // would be zeroed by the kernel and unmapped again each time.
    type Job<'a> = (&'a TensorEntry, Vec<u8>, std::ops::Range<usize>);
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Job<'_>>(1);
    const BUFFERS: usize = 3;
    let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..BUFFERS {
        let _ = free_tx.send(Vec::new());
    }
    let (written, rebuilt) = std::thread::scope(|scope| {
        // Owned here, so that a panic while rebuilding drops it and the writer thread stops (the scope waits for it).
        let full_tx = full_tx;
        let writing = scope.spawn(move || -> Result<CheckpointWriter> {
            let mut writer = writer;
            for (e, bytes, range) in full_rx {
                writer.write_tensor(&e.name, &bytes[range])?;
                progress.advance(e.numel);
                // the rebuilding side may have stopped on an error
                let _ = free_tx.send(bytes);
            }
            Ok(writer)
        });
        let rebuilt = (|| -> Result<()> {
            let mut scratch = Vec::new();
            // The record of the tensor about to be rebuilt, when it was decoded during the previous one.
            let mut ahead: Option<Result<Decoded>> = None;
            for (k, ((entry, &n), &offset)) in manifest
                .tensors
                .iter()
                .zip(&sizes)
                .zip(&offsets)
                .enumerate()
            {
                // The writer's drop (below, after its thread ends) removes the partial folder.
                check_cancelled(progress)?;
                // the writer stopped on an error (reported below)
                let Ok(mut buf) = free_rx.recv() else {
                    break;
                };
                let len = n + DIRECT_IO_ALIGN;
                if buf.len() < len {
                    // A fresh zeroed allocation (the old contents are not needed): large ones come from the
                    // kernel already zero, and their pages are touched by the parallel copy, instead of a
                    // single-threaded fill here.
                    buf = vec![0u8; len];
                }
                let a = DIRECT_IO_ALIGN;
                let shift = (offset as usize % a + a - buf.as_ptr() as usize % a) % a;
                let range = shift..shift + n;
                // A compressed record decodes on one thread (its positions are one Golomb stream, or one seeded
                // draw): the next tensor's is decoded, and its sample drawn, beside this tensor's rebuilding.
                // Not beside the first tensor: nothing was decoded ahead for it, so its own decoding is on the
                // critical path to the first write and needs the core the next one's would take (the second
                // tensor decodes its record itself, beside its copy).
                let next = manifest
                    .tensors
                    .get(k + 1)
                    .filter(|e| k > 0 && e.policy == Policy::Compress);
                // The disk reads the next base tensor while this one is rebuilt (when it is not cached).
                if let Some(e) = manifest.tensors.get(k + 1) {
                    base.prefetch(e.base_tensor());
                }
                let record = ahead.take();
                // Rebuilt, released and handed to the writer (or stopped) without waiting for the next decoding.
                let (sent, next_record) = rayon::join(
                    || -> Result<bool> {
                        rebuild_with(
                            base,
                            &reader,
                            archive,
                            entry,
                            &mut buf[range.clone()],
                            &mut scratch,
                            record,
                        )?;
                        // The base pages of this tensor are not needed again: the resident set stays the size
                        // of a tensor or two however large the checkpoint is.
                        base.release(entry.base_tensor());
                        Ok(full_tx.send((entry, buf, range)).is_ok())
                    },
                    || next.map(|e| decode_ahead(&reader, e)),
                );
                if !sent? {
                    break;
                }
                ahead = next_record;
            }
            Ok(())
        })();
        drop(full_tx);
        let written = writing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (written, rebuilt)
    });
    let mut writer = written?;
    rebuilt?;
    progress.end();
    for f in &manifest.files {
        let bytes = crate::companions::read_companion(&reader, &f.name, &base_files)?;
        writer.add_file(&f.name, &bytes)?;
    }
    Ok(writer.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ultradelta_archive::SparseRecord;
    use ultradelta_qgp::QuantParams;

    /// The dense path `patch_sparse` must reproduce byte for byte.
    fn dense(view: &TensorView<'_>, rec: &Record, gamma: f32) -> Vec<u8> {
        let mut w = view.to_f32().unwrap();
        rec.add_delta_into(gamma, &mut w).unwrap();
        let mut out = Vec::new();
        f32_to_bytes(&w, view.info().dtype, &mut out).unwrap();
        out
    }

    /// [`patch_sparse`] on `out` (the base's bytes), which must take the fast path and report the first new Inf/NaN
    /// exactly as a scan of the whole tensor against the base finds it.
    fn patched(
        view: &TensorView<'_>,
        rec: &Record,
        gamma: f32,
        out: &mut [u8],
        nan: Option<&[bool]>,
    ) -> Option<usize> {
        let Patch::Done {
            first_new_non_finite: got,
        } = patch_sparse(view, rec, None, gamma, out, nan).unwrap()
        else {
            panic!("the fast path declined {:?}", rec.kind());
        };
        let dtype = view.info().dtype;
        assert_eq!(
            got,
            first_new_non_finite(view.bytes(), out, dtype),
            "{} {:?}",
            dtype.name(),
            rec.kind()
        );
        got
    }

    /// The block test in front of the entry scan must not hide a new Inf/NaN in any float dtype, nor report one
    /// the base already had.
    #[test]
    fn first_new_non_finite_finds_the_first_in_every_dtype() {
        let n = 3 * PAR_CHUNK + 17;
        let enc = |dtype: DType, v: &[f32]| {
            let mut b = Vec::new();
            f32_to_bytes(v, dtype, &mut b).unwrap();
            b
        };
        for dtype in [DType::BF16, DType::F16, DType::F32, DType::F64] {
            let base: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            assert_eq!(
                first_new_non_finite(&enc(dtype, &base), &enc(dtype, &base), dtype),
                None
            );
            for (at, bad) in [
                (2 * PAR_CHUNK + 5, f32::INFINITY),
                (n - 1, f32::NAN),
                (3, f32::NEG_INFINITY),
            ] {
                let mut out = base.clone();
                out[at] = bad;
                out[n - 2] = f32::INFINITY;
                let got = first_new_non_finite(&enc(dtype, &base), &enc(dtype, &out), dtype);
                assert_eq!(got, Some(at.min(n - 2)), "{dtype:?} at {at}");
                // The same entries non-finite in the base too: nothing new.
                assert_eq!(
                    first_new_non_finite(&enc(dtype, &out), &enc(dtype, &out), dtype),
                    None
                );
            }
        }
        assert_eq!(first_new_non_finite(&[1, 2], &[3, 4], DType::I16), None);
    }

    #[test]
    fn patch_sparse_equals_the_dense_path() {
        let dir = tempfile::tempdir().unwrap();
        let n = 2 * PAR_CHUNK + 101;
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let mut bytes = Vec::new();
            let vals: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.731).sin() * 0.05).collect();
            f32_to_bytes(&vals, dtype, &mut bytes).unwrap();
            let es = dtype.size();
            // Raw patterns: signalling and quiet NaNs with payloads, ±0, ±inf, subnormals. Block 1 stays clean.
            let specials: [(usize, u64); 8] = match dtype {
                DType::BF16 => [
                    (3, 0x7f81),
                    (5, 0xffc1),
                    (7, 0x8000),
                    (9, 0x7f80),
                    (11, 0x0001),
                    (2 * PAR_CHUNK + 4, 0x7fa0),
                    (2 * PAR_CHUNK + 6, 0x8001),
                    (40, 0xff80),
                ],
                DType::F16 => [
                    (3, 0x7c01),
                    (5, 0xfe01),
                    (7, 0x8000),
                    (9, 0x7c00),
                    (11, 0x0001),
                    (2 * PAR_CHUNK + 4, 0x7d00),
                    (2 * PAR_CHUNK + 6, 0x8001),
                    (40, 0xfc00),
                ],
                _ => [
                    (3, 0x7f80_0001),
                    (5, 0xffc0_0001),
                    (7, 0x8000_0000),
                    (9, 0x7f80_0000),
                    (11, 1),
                    (2 * PAR_CHUNK + 4, 0x7fa0_0000),
                    (2 * PAR_CHUNK + 6, 0x8000_0001),
                    (40, 0xff80_0000),
                ],
            };
            for (i, bits) in specials {
                bytes[i * es..(i + 1) * es].copy_from_slice(&bits.to_le_bytes()[..es]);
            }
            let info = TensorInfo::new("w", dtype, vec![n]);
            let path = dir.path().join(dtype.name());
            ultradelta_io::write_checkpoint(&path, &[(info, bytes)], Default::default()).unwrap();
            let ck = Checkpoint::open(&path).unwrap();
            let view = ck.view("w").unwrap();
            // Kept: the specials' neighbourhoods, a spread over every block, and huge levels that overflow.
            let mut positions: Vec<u64> =
                (0..n as u64).filter(|p| p % 29 == 0 || *p < 12).collect();
            positions.extend([2 * PAR_CHUNK as u64 + 4, 2 * PAR_CHUNK as u64 + 6, 40]);
            positions.sort_unstable();
            positions.dedup();
            let levels: Vec<u16> = positions.iter().map(|&p| (p % 16) as u16).collect();
            for (scale, gamma) in [(1.0f32, 1.0f32), (3.0e38, 2.0), (0.37, 0.0)] {
                let rec = SparseRecord {
                    numel: n as u64,
                    quant: QuantParams {
                        bits: 4,
                        lo: -0.01,
                        step: 0.0013,
                    },
                    scale,
                    positions: positions.clone(),
                    levels: levels.clone(),
                };
                let rec = Record::Sparse(rec);
                let mut got = view.bytes().to_vec();
                let bad = patched(&view, &rec, gamma, &mut got, None);
                // Levels scaled by 3e38 overflow F16 to Inf: the patch must find the first (block 0 holds NaNs,
                // so it went through the dense path there).
                if dtype == DType::F16 && scale > 1.0 {
                    assert!(bad.is_some(), "F16 scale {scale} gamma {gamma}");
                }
                // With the NaN blocks noted by the read of the base bytes, as apply does.
                let mut noted = vec![0u8; got.len()];
                let (hash, nan) = read_base_noting_nans(&view, &mut noted).unwrap();
                assert_eq!(noted, view.bytes());
                assert_eq!(hash, view.content_hash());
                patched(&view, &rec, gamma, &mut noted, Some(&nan));
                let want = dense(&view, &rec, gamma);
                assert!(got == want, "{} scale {scale} gamma {gamma}", dtype.name());
                assert!(
                    noted == want,
                    "{} scale {scale} gamma {gamma}",
                    dtype.name()
                );
            }
        }
    }

    #[test]
    fn patch_sparse_equals_the_dense_path_for_coded_records() {
        use ultradelta_archive::{CodedSparseRecord, LevelCoding, Positions};
        let dir = tempfile::tempdir().unwrap();
        let n = 3 * PAR_CHUNK + 17;
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let vals: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.377).cos() * 0.03).collect();
            let mut bytes = Vec::new();
            f32_to_bytes(&vals, dtype, &mut bytes).unwrap();
            let info = TensorInfo::new("w", dtype, vec![n]);
            let path = dir.path().join(dtype.name());
            ultradelta_io::write_checkpoint(&path, &[(info, bytes)], Default::default()).unwrap();
            let ck = Checkpoint::open(&path).unwrap();
            let view = ck.view("w").unwrap();
            let kept = n / 37;
            let levels: Vec<u16> = (0..kept).map(|k| (k * 7 % 16) as u16).collect();
            let listed: Vec<u64> = (0..kept as u64).map(|k| k * 37 + 5).collect();
            for (positions, coding) in [
                (Positions::Seeded { seed: 11, trial: 3 }, LevelCoding::Rans),
                (
                    Positions::Seeded { seed: 12, trial: 0 },
                    LevelCoding::Packed,
                ),
                (Positions::Golomb(listed), LevelCoding::Rans),
            ] {
                let rec = Record::Coded(CodedSparseRecord {
                    numel: n as u64,
                    quant: QuantParams {
                        bits: 4,
                        lo: -0.02,
                        step: 0.0029,
                    },
                    scale: 7.5,
                    positions,
                    levels: levels.clone(),
                    coding,
                });
                let want = dense(&view, &rec, 0.8);
                let mut got = vec![0u8; want.len()];
                let (_, nan) = read_base_noting_nans(&view, &mut got).unwrap();
                patched(&view, &rec, 0.8, &mut got, Some(&nan));
                assert!(got == want, "{} {:?}", dtype.name(), rec.kind());
            }
        }
    }

    #[test]
    fn patch_sparse_declines_what_it_cannot_do() {
        let dir = tempfile::tempdir().unwrap();
        let info = TensorInfo::new("w", DType::F64, vec![4]);
        let path = dir.path().join("f64");
        ultradelta_io::write_checkpoint(&path, &[(info, vec![0u8; 32])], Default::default())
            .unwrap();
        let ck = Checkpoint::open(&path).unwrap();
        let rec = SparseRecord {
            numel: 4,
            quant: QuantParams {
                bits: 4,
                lo: 0.0,
                step: 1.0,
            },
            scale: 1.0,
            positions: vec![1],
            levels: vec![3],
        };
        let rec = Record::Sparse(rec);
        assert_eq!(
            patch_sparse(
                &ck.view("w").unwrap(),
                &rec,
                None,
                1.0,
                &mut [0u8; 32],
                None
            )
            .unwrap(),
            Patch::Declined
        );
    }
}
