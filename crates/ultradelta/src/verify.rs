//! verify: decode every record of an archive and check every checksum and limit, and, given a base, that the
//! archive applies to it — without writing anything.

use std::path::Path;

use ultradelta_archive::{ArchiveReader, KIND_NONE};
use ultradelta_io::Checkpoint;

use crate::apply::{check_base, check_entry_against_base, rebuild_tensor_into};
use crate::progress::check_cancelled;
use crate::{Error, Progress, Result};

/// What [`verify`] checked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    /// Records decoded (tensors with a record).
    pub records: usize,
    /// Tensor entries in the index.
    pub tensors: usize,
    /// Companion files decompressed.
    pub files: usize,
    /// Tensors rebuilt against the base (0 without a base).
    pub rebuilt: usize,
    /// Archive size in bytes.
    pub bytes: u64,
    /// The content SHA-256 stored in the archive, checked against its bytes (format version 2 and later; `None`
    /// for version 1, which stores none).
    pub content_sha256: Option<String>,
}

/// Why a verification failed, for a front end's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyFailure {
    /// The archive is damaged or hostile: a checksum, a limit, a record's contents, or its values overflow.
    Corrupt,
    /// The archive is fine but does not apply to the base given.
    WrongBase,
    /// Reading a file failed (missing, unreadable, not a regular file, not a checkpoint), or the caller cancelled:
    /// no verdict on the archive.
    Io,
}

/// Classifies an error of [`verify`].
pub fn verify_failure(e: &Error) -> VerifyFailure {
    use ultradelta_archive::Error as A;
    match e {
        Error::Archive(A::Io { .. } | A::NotARegularFile { .. })
        | Error::Io(_)
        | Error::File { .. }
        | Error::Cancelled => VerifyFailure::Io,
        // A base whose fingerprint matches but whose tensor shapes contradict the index means the index lies
        // (the fingerprint covers names, shapes and dtypes): that is a corrupt archive, not a wrong base.
        Error::WrongBase { .. }
        | Error::BaseTensorChanged { .. }
        | Error::BaseFile { .. }
        | Error::Archive(A::BaseFileMismatch { .. } | A::NeedsBaseFile { .. }) => {
            VerifyFailure::WrongBase
        }
        _ => VerifyFailure::Corrupt,
    }
}

/// Opens `archive` (validating preamble, trailer and index), reads and decodes every record and companion file
/// (checksums, declared sizes against the index, every limit), checks the content SHA-256 (format version 2), and with `base` checks its fingerprint, every
/// entry's shape against it, and rebuilds every tensor in memory, one at a time (base tensor hashes, no
/// non-finite output where the base is finite). Nothing is written.
///
/// # Errors
/// The first failure; [`verify_failure`] tells corrupt archive, wrong base and I/O apart.
pub fn verify(
    archive: &Path,
    base: Option<&Checkpoint>,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let reader = ArchiveReader::open(archive)?;
    let m = reader.manifest();
    if let Some(base) = base {
        // The cheap base checks first: a wrong base is told before any record is decoded.
        check_base(base, &reader, archive)?;
        for e in &m.tensors {
            check_entry_against_base(base, archive, e)?;
        }
    }
    // The base's files that companion files were stored against, with the other cheap checks.
    let base_files = base
        .map(|base| crate::companions::check_base_files(base, &reader, archive))
        .transpose()?;
    let total: u64 = m.tensors.iter().map(|e| e.numel).sum();
    progress.begin("verifying", total);
    let mut records = 0;
    let mut rebuilt = 0;
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    for e in &m.tensors {
        check_cancelled(progress)?;
        if e.kind != KIND_NONE {
            records += 1;
            if base.is_none() {
                // Without a base nothing bounds a record's decoded size but its bytes: check, keep nothing.
                reader.check_record(&e.name)?;
            }
        }
        if let Some(base) = base {
            // Rebuilding reads and decodes the record with the same checks. The buffer is the tensor's size: the
            // base's own shape for every entry but `new` (checked above), whose size the index validation bounds.
            let n = ultradelta_io::TensorInfo::new(e.name.clone(), e.dtype, e.shape.clone())
                .checked_nbytes()
                .ok_or_else(|| Error::Overflow {
                    archive: archive.to_path_buf(),
                    tensor: e.name.clone(),
                    what: "byte size",
                })?;
            out.clear();
            out.resize(n, 0);
            rebuild_tensor_into(base, &reader, archive, e, &mut out, &mut scratch)?;
            base.release(e.base_tensor());
            rebuilt += 1;
        }
        progress.advance(e.numel);
    }
    progress.end();
    crate::apply::check_companion_names(&reader, archive)?;
    match &base_files {
        Some(base_files) => {
            for f in &m.files {
                crate::companions::read_companion(&reader, &f.name, base_files)?;
            }
        }
        None => {
            for f in &m.files {
                reader.check_file(&f.name)?;
            }
        }
    }
    // Last, so that damage a record checksum catches is reported with the record's name.
    let content_sha256 = reader.check_content_sha256()?;
    Ok(VerifyReport {
        content_sha256,
        records,
        tensors: m.tensors.len(),
        files: m.files.len(),
        rebuilt,
        bytes: reader.file_size(),
    })
}
