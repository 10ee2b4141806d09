//! Streaming, crash-safe archive writer.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use crate::manifest::{FileEntry, FinetunedInfo, Limits, Manifest, Policy, TensorEntry, KIND_NONE};
use crate::reader::validate_manifest;
use crate::record::{encode_file_record_against, EncodedRecord, Record};
use crate::{
    Error, Result, FLAG_INDEX_ZSTD, FORMAT_VERSION, MAGIC, PREAMBLE_LEN, TRAILER_LEN, TRAILER_MAGIC,
};

/// Default zstd level of lossless records and companion files (see docs/FORMAT.md for the measurement).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Options of [`ArchiveWriter::create_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterOptions {
    /// Replace an existing output file (default false: [`Error::OutputExists`]).
    pub overwrite: bool,
    /// zstd level for lossless records and companion files (default [`DEFAULT_ZSTD_LEVEL`]).
    pub zstd_level: i32,
    /// Stored as `Manifest::created_by` (default `"ultradelta-archive <version>"`).
    pub created_by: String,
    /// Store the index as one zstd frame of its compact JSON (preamble flag [`FLAG_INDEX_ZSTD`]; default true).
    /// False writes the pretty JSON index of the archives before 2026-12-04, which older readers also read.
    pub index_zstd: bool,
}

impl Default for WriterOptions {
    fn default() -> WriterOptions {
        WriterOptions {
            overwrite: false,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            created_by: concat!("ultradelta-archive ", env!("CARGO_PKG_VERSION")).to_string(),
            index_zstd: true,
        }
    }
}

/// Writes an archive record by record into a temporary sibling file (`.<name>.partial-<pid>` in the same
/// folder); [`ArchiveWriter::finish`] appends the index and trailer, fsyncs and renames it into place. Dropping the
/// writer without `finish` deletes the temporary file, so no half-written archive is ever left at `path`.
///
/// Output bytes depend only on the calls made (and the zstd library version): no timestamps, no randomness.
#[derive(Debug)]
pub struct ArchiveWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    offset: u64,
    /// SHA-256 of every byte written so far (the content digest of the trailer).
    sha: sha2::Sha256,
    opts: WriterOptions,
    tensors: Vec<TensorEntry>,
    files: Vec<FileEntry>,
    tensor_names: HashSet<String>,
    file_names: HashSet<String>,
    /// The last index compressed, JSON and stored bytes: [`size_if_finished`](Self::size_if_finished) then
    /// [`finish`](Self::finish) with the same arguments compress it once (level ≥ 19: tens of milliseconds).
    last_index: Option<(Vec<u8>, Vec<u8>)>,
}

impl ArchiveWriter {
    /// Starts an archive at `path` with default options (and the given `overwrite`).
    ///
    /// # Errors
    /// [`Error::OutputExists`] if `path` exists and `!overwrite`; [`Error::InvalidPath`]; [`Error::Io`].
    pub fn create(path: impl AsRef<Path>, overwrite: bool) -> Result<ArchiveWriter> {
        ArchiveWriter::create_with(
            path,
            WriterOptions {
                overwrite,
                ..WriterOptions::default()
            },
        )
    }

    /// Starts an archive at `path` with `opts`.
    ///
    /// # Errors
    /// As [`ArchiveWriter::create`].
    pub fn create_with(path: impl AsRef<Path>, opts: WriterOptions) -> Result<ArchiveWriter> {
        let path = path.as_ref().to_path_buf();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::InvalidPath {
                path: path.clone(),
                detail: "no UTF-8 file name",
            })?
            .to_string();
        if path.is_dir() {
            return Err(Error::InvalidPath {
                path,
                detail: "is a folder",
            });
        }
        if !opts.overwrite && path.exists() {
            return Err(Error::OutputExists { path });
        }
        remove_leftovers(&path, &name);
        let tmp = path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, "create", e))?;
        let mut w = ArchiveWriter {
            path,
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            offset: 0,
            sha: sha2::Digest::new(),
            opts,
            tensors: Vec::new(),
            files: Vec::new(),
            tensor_names: HashSet::new(),
            file_names: HashSet::new(),
            last_index: None,
        };
        let mut pre = Vec::with_capacity(PREAMBLE_LEN as usize);
        pre.extend_from_slice(&MAGIC);
        pre.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = if w.opts.index_zstd {
            FLAG_INDEX_ZSTD
        } else {
            0
        };
        pre.extend_from_slice(&flags.to_le_bytes());
        w.put(&pre)?;
        Ok(w)
    }

    /// The final output path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far (preamble + records).
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self.out.as_mut().ok_or_else(|| {
            Error::io(
                &self.tmp,
                "write",
                std::io::Error::other("writer already closed"),
            )
        })?;
        out.write_all(bytes)
            .map_err(|e| Error::io(&self.tmp, "write", e))?;
        sha2::Digest::update(&mut self.sha, bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn invalid(&self, name: &str, detail: impl Into<String>) -> Error {
        Error::InvalidInput {
            path: self.path.clone(),
            name: name.to_string(),
            detail: detail.into(),
        }
    }

    fn check_entry(&self, entry: &TensorEntry) -> Result<u64> {
        if entry.name.is_empty() {
            return Err(self.invalid("", "empty tensor name"));
        }
        if self.tensor_names.contains(&entry.name) {
            return Err(Error::DuplicateName {
                path: self.path.clone(),
                name: entry.name.clone(),
            });
        }
        if let Some(r) = entry.rate {
            if !r.is_finite() {
                return Err(self.invalid(&entry.name, format!("non-finite rate {r}")));
            }
        }
        // The reader's limits (docs/FORMAT.md, "Limits"): nothing is written that a reader would refuse.
        let limits = Limits::default();
        if entry.shape.len() > limits.max_ndim {
            return Err(self.invalid(
                &entry.name,
                format!(
                    "{} dimensions (the format's limit is {})",
                    entry.shape.len(),
                    limits.max_ndim
                ),
            ));
        }
        let numel = entry.shape_numel().ok_or_else(|| {
            self.invalid(&entry.name, format!("shape {:?} overflows", entry.shape))
        })?;
        if numel > limits.max_numel {
            return Err(self.invalid(
                &entry.name,
                format!(
                    "{numel} elements (the format's limit is {})",
                    limits.max_numel
                ),
            ));
        }
        Ok(numel)
    }

    /// Encodes and appends `record` for `entry`; fills `entry.kind/offset/length/checksum/numel/kept/sparsity`.
    /// Returns the record's byte length.
    ///
    /// # Errors
    /// [`Error::DuplicateName`]; [`Error::InvalidInput`] if the record does not match the entry's dtype/shape or
    /// is invalid (positions not strictly increasing, level out of range, non-finite parameters, ...);
    /// [`Error::Io`].
    pub fn write_tensor(&mut self, entry: TensorEntry, record: &Record) -> Result<u64> {
        let numel = self.check_entry(&entry)?;
        let encoded = EncodedRecord::new(entry.dtype, &entry.shape, record, self.opts.zstd_level)
            .map_err(|e| self.invalid(&entry.name, e.to_string()))?;
        self.append(entry, numel, &encoded)
    }

    /// Appends a record encoded beforehand ([`EncodedRecord`]) for `entry`, as [`ArchiveWriter::write_tensor`]
    /// does after encoding: the bytes are written as they are, so a record measured or chosen by its encoded
    /// size is not encoded twice.
    ///
    /// # Errors
    /// [`Error::DuplicateName`]; [`Error::InvalidInput`] if the record was encoded for another dtype or shape
    /// than the entry's; [`Error::Io`].
    pub fn write_encoded(&mut self, entry: TensorEntry, record: &EncodedRecord) -> Result<u64> {
        let numel = self.check_entry(&entry)?;
        if record.dtype() != entry.dtype || record.shape() != entry.shape.as_slice() {
            return Err(self.invalid(
                &entry.name,
                format!(
                    "a record encoded for a {} tensor of shape {:?}, not {} {:?}",
                    record.dtype().name(),
                    record.shape(),
                    entry.dtype.name(),
                    entry.shape
                ),
            ));
        }
        self.append(entry, numel, record)
    }

    /// Appends `record`, encoded for `entry` (checked, of `numel` elements), and fills the entry's record fields.
    fn append(
        &mut self,
        mut entry: TensorEntry,
        numel: u64,
        record: &EncodedRecord,
    ) -> Result<u64> {
        let bytes = record.bytes();
        entry.kind = record.kind().name().to_string();
        entry.offset = self.offset;
        entry.length = record.len();
        entry.checksum = format!("{:016x}", xxh3_64(bytes));
        entry.numel = numel;
        entry.kept = record.kept().unwrap_or(numel);
        entry.sparsity = if numel == 0 {
            0.0
        } else {
            1.0 - entry.kept as f64 / numel as f64
        };
        self.put(bytes)?;
        self.tensor_names.insert(entry.name.clone());
        self.tensors.push(entry);
        Ok(record.len())
    }

    /// Records a tensor whose delta is dropped (index entry only: kind `none`, no bytes). Sets policy `drop`,
    /// `kept` 0 and `sparsity` 1.
    ///
    /// # Errors
    /// [`Error::DuplicateName`]; [`Error::InvalidInput`] for an empty name or an overflowing shape.
    pub fn write_dropped(&mut self, mut entry: TensorEntry) -> Result<()> {
        let numel = self.check_entry(&entry)?;
        entry.policy = Policy::Drop;
        entry.kind = KIND_NONE.to_string();
        entry.offset = 0;
        entry.length = 0;
        entry.checksum = String::new();
        entry.numel = numel;
        entry.kept = 0;
        entry.sparsity = 1.0;
        self.tensor_names.insert(entry.name.clone());
        self.tensors.push(entry);
        Ok(())
    }

    /// Appends a zstd-compressed companion file (`config.json`, tokenizer files, `1_Pooling/config.json`, ...).
    /// `name` is its path relative to the model folder: plain file names (no `\`, NUL, not `.` or `..`, at most 255
    /// bytes) joined by `/`, at most 4096 bytes, not a folder of an earlier file's path nor a file in one.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad name; [`Error::DuplicateName`]; [`Error::Io`].
    pub fn add_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.add_file_against(name, bytes, None)
    }

    /// [`add_file`](Self::add_file), compressed against `base` (the base model's file of the same name) when that
    /// is smaller ([`encode_file_record_against`]); the index then names the base file by size and xxh3-64, and
    /// the file is read back only with it ([`crate::ArchiveReader::read_file_with_base`]).
    ///
    /// # Errors
    /// As [`add_file`](Self::add_file); [`Error::InvalidInput`] for a base file over the format's size limit.
    pub fn add_file_against(
        &mut self,
        name: &str,
        bytes: &[u8],
        base: Option<&[u8]>,
    ) -> Result<()> {
        if !is_companion_path(name) {
            return Err(self.invalid(
                name,
                "companion file name must be a relative path of plain file names joined by `/`",
            ));
        }
        let nested = |short: &str, long: &str| {
            long.strip_prefix(short)
                .is_some_and(|rest| rest.starts_with('/'))
        };
        if let Some(other) = self
            .file_names
            .iter()
            .find(|f| nested(f, name) || nested(name, f))
        {
            return Err(self.invalid(
                name,
                format!("it and \"{other}\" would need the same path as a file and as a folder"),
            ));
        }
        if self.file_names.contains(name) {
            return Err(Error::DuplicateName {
                path: self.path.clone(),
                name: name.to_string(),
            });
        }
        let limit = Limits::default().max_file_bytes;
        if bytes.len() as u64 > limit {
            return Err(self.invalid(
                name,
                format!(
                    "{} bytes (the format's limit for a companion file is {limit})",
                    bytes.len()
                ),
            ));
        }
        if let Some(b) = base.filter(|b| b.len() as u64 > limit) {
            return Err(self.invalid(
                name,
                format!(
                    "the base's file is {} bytes (the format's limit for a companion file is {limit})",
                    b.len()
                ),
            ));
        }
        let (rec, base_ref) = encode_file_record_against(bytes, base, self.opts.zstd_level)
            .map_err(|e| self.invalid(name, e.to_string()))?;
        let entry = FileEntry {
            name: name.to_string(),
            offset: self.offset,
            length: rec.len() as u64,
            checksum: format!("{:016x}", xxh3_64(&rec)),
            size: bytes.len() as u64,
            base: base_ref.map(Into::into),
        };
        self.put(&rec)?;
        self.file_names.insert(name.to_string());
        self.files.push(entry);
        Ok(())
    }

    /// Writes the index and trailer, fsyncs, and moves the file into place atomically. Without `overwrite`, an
    /// output that appeared meanwhile is not replaced ([`Error::OutputExists`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a non-finite `gamma`; [`Error::OutputExists`]; [`Error::Io`].
    pub fn finish(
        mut self,
        method: &str,
        params: serde_json::Value,
        gamma: f64,
        base_fingerprint: &str,
        finetuned: FinetunedInfo,
    ) -> Result<PathBuf> {
        if !gamma.is_finite() || !(gamma as f32).is_finite() {
            return Err(self.invalid("", format!("gamma {gamma} is not finite in 32-bit floats")));
        }
        let manifest = self.manifest(method, params, gamma, base_fingerprint, finetuned);
        let index_offset = self.offset;
        // Exactly the reader's checks of the index, before anything is published.
        let index = self.stored_index(&manifest)?;
        validate_manifest(
            &self.path,
            &manifest,
            &Limits::default(),
            index_offset,
            FORMAT_VERSION,
        )?;
        let mut trailer = Vec::with_capacity(24);
        trailer.extend_from_slice(&index_offset.to_le_bytes());
        trailer.extend_from_slice(&(index.len() as u64).to_le_bytes());
        trailer.extend_from_slice(&xxh3_64(&index).to_le_bytes());
        self.put(&index)?;
        self.put(&trailer)?;
        // The content digest covers every byte before it: preamble, records, index and the trailer's first 24.
        let digest: [u8; 32] = sha2::Digest::finalize(self.sha.clone()).into();
        self.put(&digest)?;
        self.put(&TRAILER_MAGIC)?;
        let out = self.out.take().ok_or_else(|| {
            Error::io(
                &self.tmp,
                "write",
                std::io::Error::other("writer already closed"),
            )
        })?;
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, "flush", e.into_error()))?;
        file.sync_all()
            .map_err(|e| Error::io(&self.tmp, "fsync", e))?;
        drop(file);
        self.publish()?;
        Ok(self.path.clone())
    }

    /// The size the archive will have when [`finish`](Self::finish) is called with these arguments (records written
    /// so far, the index as `finish` stores it, the trailer), without finishing it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the index cannot be serialised.
    pub fn size_if_finished(
        &mut self,
        method: &str,
        params: serde_json::Value,
        gamma: f64,
        base_fingerprint: &str,
        finetuned: FinetunedInfo,
    ) -> Result<u64> {
        let manifest = self.manifest(method, params, gamma, base_fingerprint, finetuned);
        Ok(self.offset + self.stored_index(&manifest)?.len() as u64 + TRAILER_LEN)
    }

    /// The index of this archive with the given fields and the entries added so far.
    fn manifest(
        &self,
        method: &str,
        params: serde_json::Value,
        gamma: f64,
        base_fingerprint: &str,
        finetuned: FinetunedInfo,
    ) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            method: method.to_string(),
            params,
            gamma,
            base_fingerprint: base_fingerprint.to_string(),
            finetuned,
            tensors: self.tensors.clone(),
            files: self.files.clone(),
            created_by: self.opts.created_by.clone(),
        }
    }

    /// The index's bytes as stored: its JSON within the format's limit, compressed unless `index_zstd` is off.
    fn stored_index(&mut self, manifest: &Manifest) -> Result<Vec<u8>> {
        let json = index_json(manifest, self.opts.index_zstd)
            .map_err(|e| self.invalid("", format!("cannot serialize the index: {e}")))?;
        let limit = Limits::default().max_index_bytes;
        if json.len() as u64 > limit {
            return Err(self.invalid(
                "",
                format!(
                    "index of {} bytes exceeds the format's limit of {limit}",
                    json.len()
                ),
            ));
        }
        if !self.opts.index_zstd {
            return Ok(json);
        }
        if let Some((_, stored)) = self.last_index.as_ref().filter(|(j, _)| *j == json) {
            return Ok(stored.clone());
        }
        let stored = compress_index(&json, self.opts.zstd_level)?;
        self.last_index = Some((json, stored.clone()));
        Ok(stored)
    }

    /// Moves the finished temp file to `path`.
    fn publish(&mut self) -> Result<()> {
        if self.opts.overwrite {
            std::fs::rename(&self.tmp, &self.path)
                .map_err(|e| Error::io(&self.path, "rename", e))?;
        } else {
            // hard_link refuses an existing target, so a file created since `create` is never clobbered.
            match std::fs::hard_link(&self.tmp, &self.path) {
                Ok(()) => {
                    std::fs::remove_file(&self.tmp)
                        .map_err(|e| Error::io(&self.tmp, "remove", e))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(Error::OutputExists {
                        path: self.path.clone(),
                    });
                }
                Err(_) => {
                    // File systems without hard links: check, then rename.
                    if self.path.exists() {
                        return Err(Error::OutputExists {
                            path: self.path.clone(),
                        });
                    }
                    std::fs::rename(&self.tmp, &self.path)
                        .map_err(|e| Error::io(&self.path, "rename", e))?;
                }
            }
        }
        // Make the rename durable.
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for ArchiveWriter {
    fn drop(&mut self) {
        self.out.take();
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Removes the temp files `.<name>.partial-<pid>` that killed runs (processes no longer running; Linux only, where
/// `/proc` tells) left beside the output `path`. Best effort.
fn remove_leftovers(path: &Path, name: &str) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    let prefix = format!(".{name}.partial-");
    for entry in rd.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// True for a plain file name usable inside any folder.
pub(crate) fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255
}

/// True if `name` is a companion file's path relative to the model folder: at most 4096 bytes, one or more plain
/// file names (see [`is_plain_file_name`]) joined by `/` — so no leading or trailing `/`, no empty, `.` or `..`
/// component, no `\`: rebuilt under an output folder it stays inside it.
pub(crate) fn is_companion_path(name: &str) -> bool {
    name.len() <= 4096 && name.split('/').all(is_plain_file_name)
}

/// The index's JSON: compact when it is to be compressed, pretty (as before 2026-12-04) when stored as is.
pub(crate) fn index_json(manifest: &Manifest, compact: bool) -> serde_json::Result<Vec<u8>> {
    if compact {
        serde_json::to_vec(manifest)
    } else {
        serde_json::to_vec_pretty(manifest)
    }
}

/// The stored form of a compressed index: one zstd frame (content size declared) at the companion files' level
/// for its size ([`crate::companion_zstd_level`]: ≥ 19 up to 8 MiB).
pub fn compress_index(json: &[u8], zstd_level: i32) -> Result<Vec<u8>> {
    let level = crate::companion_zstd_level(json.len(), zstd_level);
    zstd::bulk::compress(json, level)
        .map_err(|e| Error::stream("zstd", format!("index compression failed: {e}")))
}
