//! Random-access archive reader with validation of every declared size.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use crate::manifest::{FileEntry, Limits, Manifest, Policy, TensorEntry, KIND_NONE};
use crate::record::{
    decode_diff_into, decode_expecting, decode_file_against, decode_full_into, decode_xor_into,
    BaseFileRef, Record, RecordHeader,
};
use crate::writer::is_companion_path;
use crate::RecordKind;
use crate::{
    trailer_len, Error, Result, FLAG_INDEX_ZSTD, FORMAT_VERSION, KNOWN_FLAGS, MAGIC,
    OLDEST_FORMAT_VERSION, PREAMBLE_LEN, SHA256_TAIL, TRAILER_MAGIC,
};

/// Reads an archive. Opening validates the preamble, trailer and index (see docs/FORMAT.md, "Reading and
/// validation order"); each [`ArchiveReader::read_record`] reads only that record's bytes with a positioned read
/// and verifies its checksum before decoding. `Send + Sync`: share it between threads freely.
#[derive(Debug)]
pub struct ArchiveReader {
    path: PathBuf,
    file: File,
    size: u64,
    version: u32,
    content_sha256: Option<[u8; 32]>,
    limits: Limits,
    manifest: Manifest,
    tensors: HashMap<String, usize>,
    files: HashMap<String, usize>,
}

/// [`Error::NotARegularFile`] unless `meta` describes a regular file.
fn not_regular(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    let kind = if meta.is_dir() {
        "folder"
    } else {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            "FIFO"
        } else if t.is_char_device() {
            "character device"
        } else if t.is_block_device() {
            "block device"
        } else if t.is_socket() {
            "socket"
        } else {
            "special file"
        }
    };
    Err(Error::NotARegularFile {
        path: path.to_path_buf(),
        kind,
    })
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

impl ArchiveReader {
    /// Opens and validates `path` with [`Limits::default`].
    ///
    /// # Errors
    /// See [`ArchiveReader::open_with_limits`].
    pub fn open(path: impl AsRef<Path>) -> Result<ArchiveReader> {
        ArchiveReader::open_with_limits(path, Limits::default())
    }

    /// Opens `path` and validates, in this order: magic, version, flags, trailer magic, index length (against
    /// `limits` and the file size, checked arithmetic), index checksum, for a compressed index (flag
    /// [`FLAG_INDEX_ZSTD`](crate::FLAG_INDEX_ZSTD)) its one zstd frame's declared size (against `limits` and
    /// [`MAX_ZSTD_EXPANSION`]) and its decoding, JSON parse, manifest version, then every
    /// entry (names, kinds, shapes and numel with checked multiplication against `limits`, byte ranges inside the
    /// records area and non-overlapping). Nothing sized from the file is allocated before its check.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Truncated`], [`Error::BadMagic`], [`Error::UnsupportedVersion`],
    /// [`Error::UnsupportedFlags`], [`Error::BadTrailer`], [`Error::IndexTooLarge`], [`Error::IndexOutOfRange`],
    /// [`Error::IndexChecksum`], [`Error::IndexParse`], [`Error::IndexInvalid`], [`Error::ShapeInvalid`],
    /// [`Error::EntryOutOfRange`], [`Error::EntryOverlap`].
    pub fn open_with_limits(path: impl AsRef<Path>, limits: Limits) -> Result<ArchiveReader> {
        let path = path.as_ref().to_path_buf();
        // Before opening: opening a FIFO for reading blocks until a writer appears.
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, "open", e))?;
        not_regular(&path, &meta)?;
        let file = File::open(&path).map_err(|e| Error::io(&path, "open", e))?;
        let meta = file.metadata().map_err(|e| Error::io(&path, "stat", e))?;
        not_regular(&path, &meta)?;
        let size = meta.len();
        let truncated = |what: &'static str, needed: u64| Error::Truncated {
            path: path.clone(),
            what,
            needed,
            size,
        };
        let read_at = |buf: &mut [u8], at: u64| {
            file.read_exact_at(buf, at)
                .map_err(|e| Error::io(&path, "read", e))
        };

        // 1. Magic.
        if size < MAGIC.len() as u64 {
            return Err(truncated("magic", MAGIC.len() as u64));
        }
        let mut pre = [0u8; PREAMBLE_LEN as usize];
        let pre_avail = size.min(PREAMBLE_LEN) as usize;
        read_at(&mut pre[..pre_avail], 0)?;
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&pre[..8]);
        if magic != MAGIC {
            return Err(Error::BadMagic {
                path,
                expected: MAGIC,
                found: magic,
            });
        }
        // 2. Version, flags.
        if size < PREAMBLE_LEN {
            return Err(truncated("preamble", PREAMBLE_LEN));
        }
        let version = u32_at(&pre, 8);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(Error::UnsupportedVersion {
                path,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let flags = u32_at(&pre, 12);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::UnsupportedFlags {
                path,
                found: flags,
                known: KNOWN_FLAGS,
            });
        }
        // 3. Trailer magic (the trailer is 32 bytes in version 1, 64 from version 2 on).
        let tlen = trailer_len(version);
        let min_size = PREAMBLE_LEN + tlen;
        if size < min_size {
            return Err(truncated("preamble and trailer", min_size));
        }
        let mut trailer = [0u8; 64];
        let trailer = &mut trailer[..tlen as usize];
        read_at(trailer, size - tlen)?;
        let mut tmagic = [0u8; 8];
        tmagic.copy_from_slice(&trailer[tlen as usize - 8..]);
        if tmagic != TRAILER_MAGIC {
            return Err(Error::BadTrailer {
                path,
                expected: TRAILER_MAGIC,
                found: tmagic,
            });
        }
        let index_offset = u64_at(trailer, 0);
        let index_len = u64_at(trailer, 8);
        let index_hash = u64_at(trailer, 16);
        let content_sha256 = (version >= 2).then(|| {
            let mut d = [0u8; 32];
            d.copy_from_slice(&trailer[24..56]);
            d
        });
        // 4. Index length: limit, then exact fit between the records and the trailer.
        if index_len > limits.max_index_bytes {
            return Err(Error::IndexTooLarge {
                path,
                length: index_len,
                limit: limits.max_index_bytes,
            });
        }
        let fits = index_offset >= PREAMBLE_LEN
            && index_offset
                .checked_add(index_len)
                .and_then(|e| e.checked_add(tlen))
                == Some(size);
        if !fits {
            return Err(Error::IndexOutOfRange {
                path,
                offset: index_offset,
                length: index_len,
                file_size: size,
            });
        }
        // 5. Index checksum (allocation bounded by the limit and the file size, both checked above).
        let mut index = vec![0u8; index_len as usize];
        read_at(&mut index, index_offset)?;
        let found = xxh3_64(&index);
        if found != index_hash {
            return Err(Error::IndexChecksum {
                path,
                expected: index_hash,
                found,
            });
        }
        // 6. A compressed index: one zstd frame whose declared content size is within the limit and what its
        // length can hold, decoded to exactly that size (memory bounded by the limit, whatever the frame says).
        if flags & FLAG_INDEX_ZSTD != 0 {
            index = decompress_index(&path, &index, &limits)?;
        }
        // 7. JSON.
        let manifest: Manifest = serde_json::from_slice(&index).map_err(|e| Error::IndexParse {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        drop(index);
        // 8. Entries.
        let (tensors, files) = validate_manifest(&path, &manifest, &limits, index_offset, version)?;
        Ok(ArchiveReader {
            path,
            file,
            size,
            version,
            content_sha256,
            limits,
            manifest,
            tensors,
            files,
        })
    }

    /// The archive's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed index.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Size of the archive file in bytes.
    pub fn file_size(&self) -> u64 {
        self.size
    }

    /// The archive's format version (from its preamble): 1 or 2.
    pub fn format_version(&self) -> u32 {
        self.version
    }

    /// The content SHA-256 stored in the trailer (format version 2 and later; `None` for version 1), as read: it
    /// is not checked against the content until [`check_content_sha256`](Self::check_content_sha256).
    pub fn content_sha256(&self) -> Option<[u8; 32]> {
        self.content_sha256
    }

    /// [`content_sha256`](Self::content_sha256) as 64 lowercase hex digits.
    pub fn content_sha256_hex(&self) -> Option<String> {
        self.content_sha256.map(|d| hex(&d))
    }

    /// Hashes the archive's content (every byte before the stored digest, `[0, size - 40)`) in 1 MiB reads and
    /// compares it with the stored SHA-256. `Ok(None)` for a version-1 archive (it stores none); `Ok(Some(hex))`
    /// when they agree.
    ///
    /// # Errors
    /// [`Error::ContentSha256`] when they differ; [`Error::Io`].
    pub fn check_content_sha256(&self) -> Result<Option<String>> {
        use sha2::Digest as _;
        let Some(expected) = self.content_sha256 else {
            return Ok(None);
        };
        let end = self.size - SHA256_TAIL;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            self.file
                .read_exact_at(&mut buf[..n], at)
                .map_err(|e| Error::io(&self.path, "read", e))?;
            h.update(&buf[..n]);
            at += n as u64;
        }
        let found: [u8; 32] = h.finalize().into();
        if found != expected {
            return Err(Error::ContentSha256 {
                path: self.path.clone(),
                expected: hex(&expected),
                found: hex(&found),
            });
        }
        Ok(Some(hex(&found)))
    }

    /// The limits this reader enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Index entry of tensor `name`.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name).map(|&i| &self.manifest.tensors[i])
    }

    /// Index entry of companion file `name`.
    pub fn file_entry(&self, name: &str) -> Option<&FileEntry> {
        self.files.get(name).map(|&i| &self.manifest.files[i])
    }

    /// Reads `length` bytes at `offset` (validated at open) and checks their xxh3-64 against `checksum`.
    fn read_checked(
        &self,
        name: &str,
        offset: u64,
        length: u64,
        checksum: &str,
    ) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; length as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| Error::io(&self.path, "read", e))?;
        let found = xxh3_64(&buf);
        if format!("{found:016x}") != checksum {
            return Err(Error::RecordChecksum {
                path: self.path.clone(),
                name: name.to_string(),
                expected: checksum.to_string(),
                found,
            });
        }
        Ok(buf)
    }

    fn corrupt(&self, name: &str, detail: impl Into<String>) -> Error {
        Error::CorruptRecord {
            path: self.path.clone(),
            name: name.to_string(),
            detail: detail.into(),
        }
    }

    /// The raw, checksum-verified bytes of tensor `name`'s record.
    ///
    /// # Errors
    /// [`Error::UnknownTensor`], [`Error::NotStored`], [`Error::RecordChecksum`], [`Error::Io`].
    pub fn record_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let e = self.entry(name).ok_or_else(|| Error::UnknownTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        if e.kind == KIND_NONE {
            return Err(Error::NotStored {
                path: self.path.clone(),
                name: name.to_string(),
            });
        }
        self.read_checked(name, e.offset, e.length, &e.checksum)
    }

    /// Reads, verifies and decodes tensor `name`'s record. Reads only that record's bytes.
    ///
    /// # Errors
    /// [`Error::UnknownTensor`], [`Error::NotStored`], [`Error::RecordChecksum`], [`Error::CorruptRecord`] (the
    /// record contradicts its index entry or its streams are invalid), [`Error::Io`].
    pub fn read_record(&self, name: &str) -> Result<Record> {
        self.decode_entry(name, false)
    }

    /// Every check of [`read_record`](Self::read_record) on tensor `name`'s record, without keeping the decoded
    /// record: the levels of a kind-12 record (rANS, which can code many levels in few bytes), of a kind-16
    /// record (factor levels, and its residual's when kind 12) and of a zero-bit kind-9 record are decoded and
    /// checked but never materialized, so the memory this takes is bounded by the
    /// record's bytes (every other kind's decoded size is). What `verify` without a base uses.
    ///
    /// # Errors
    /// As [`read_record`](Self::read_record).
    pub fn check_record(&self, name: &str) -> Result<()> {
        self.decode_entry(name, true).map(drop)
    }

    fn decode_entry(&self, name: &str, check_only: bool) -> Result<Record> {
        let e = self.entry(name).ok_or_else(|| Error::UnknownTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        let bytes = self.record_bytes(name)?;
        // The header and every declared count are checked against the index entry before the payload is
        // decoded: a record cannot make the reader decode or allocate more than its entry declares.
        let kind = RecordKind::from_name(&e.kind)
            .ok_or_else(|| self.corrupt(name, format!("unknown record kind {}", e.kind)))?;
        let expected = RecordHeader {
            kind,
            dtype: e.dtype,
            shape: e.shape.iter().map(|&d| d as u64).collect(),
            numel: e.numel,
        };
        let lossless = matches!(
            kind,
            RecordKind::XorZstd | RecordKind::DiffZstd | RecordKind::FullZstd
        );
        let kept = (!lossless).then_some(e.kept);
        let (header, record) = decode_expecting(&bytes, &self.limits, &expected, kept, check_only)
            .map_err(|err| self.corrupt(name, err.to_string()))?;
        self.check_header(name, e, &header)?;
        // A check-only decode keeps no levels of kinds 9 and 12 (nor of a kind-12 record nested in kind 17): kind
        // 12's kept count was checked against the index's before decoding, as was a nested record's; kind 9 keeps
        // numel entries (its header's, equal to the index's).
        let kept = match (kind, &record) {
            (RecordKind::SparseSeededRans | RecordKind::RowSubset, _) if check_only => None,
            (RecordKind::DenseLevels, _) if check_only => Some(header.numel),
            // A nested record's kept count was checked against the index's by its own payload, or is checked here.
            (RecordKind::AppendedRows, Record::AppendedRows(r)) => {
                if Some(r.base_rows) != e.base_rows.map(|b| b as u64) {
                    return Err(self.corrupt(
                        name,
                        format!(
                            "record has {} base rows, index says {}",
                            r.base_rows,
                            e.base_rows.map_or("none".into(), |b| b.to_string())
                        ),
                    ));
                }
                // The base rows' delta as the policy says: lossy (compress), lossless (keep) or none (drop).
                let head = r.head.as_ref().map(|h| h.kind());
                let lossless = matches!(head, Some(RecordKind::XorZstd | RecordKind::DiffZstd));
                let fits = match e.policy {
                    Policy::Compress => head.is_some() && !lossless,
                    Policy::Keep => lossless,
                    Policy::Drop => head.is_none(),
                    Policy::New => false,
                };
                if !fits {
                    let policy = format!("{:?}", e.policy).to_lowercase();
                    return Err(self.corrupt(
                        name,
                        format!(
                            "the base rows' delta is {}, which a tensor of policy {policy} cannot have",
                            head.map_or("absent".into(), |k| format!("a {} record", k.name()))
                        ),
                    ));
                }
                match head {
                    Some(
                        RecordKind::SparseSeededRans
                        | RecordKind::RowSubset
                        | RecordKind::LowrankSeededRans,
                    ) if check_only => None,
                    Some(RecordKind::DenseLevels) if check_only => Some(r.head_numel()),
                    _ => record.kept(),
                }
            }
            _ => record.kept(),
        };
        if let Some(kept) = kept {
            if kept != e.kept {
                return Err(self.corrupt(
                    name,
                    format!("record keeps {kept} entries, index says {}", e.kept),
                ));
            }
        }
        Ok(record)
    }

    /// For tensor `name` stored as a lossless delta, `xor-zstd` or `diff-zstd`: its fine-tuned bytes into `out`,
    /// from `base` and the stored bits ([`decode_xor_into`], [`decode_diff_into`]; `planes` is working memory kept
    /// between calls). `Ok(false)`, and `out` untouched, when the index has another kind.
    ///
    /// # Errors
    /// As [`read_record`](Self::read_record); [`Error::CorruptRecord`] also when `base` or `out` is not the
    /// record's byte size.
    pub fn read_lossless_into(
        &self,
        name: &str,
        base: &[u8],
        out: &mut [u8],
        planes: &mut Vec<u8>,
    ) -> Result<bool> {
        let e = self.entry(name).ok_or_else(|| Error::UnknownTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        let decode = if e.kind == RecordKind::XorZstd.name() {
            decode_xor_into
        } else if e.kind == RecordKind::DiffZstd.name() {
            decode_diff_into
        } else {
            return Ok(false);
        };
        let bytes = self.record_bytes(name)?;
        let header = decode(&bytes, &self.limits, base, out, planes)
            .map_err(|err| self.corrupt(name, err.to_string()))?;
        self.check_header(name, e, &header)?;
        Ok(true)
    }

    /// For tensor `name` stored as `full-zstd`: decodes its bytes straight into `out` (exactly the record's byte
    /// size) with [`decode_full_into`]: the same bytes as [`read_record`](Self::read_record)'s [`Record::Full`],
    /// without a second buffer of the tensor's size. `Ok(false)`, and `out` untouched, when the index has another
    /// kind.
    ///
    /// # Errors
    /// As [`read_record`](Self::read_record); [`Error::CorruptRecord`] also when `out` is not the record's size.
    pub fn read_full_into(&self, name: &str, out: &mut [u8]) -> Result<bool> {
        let e = self.entry(name).ok_or_else(|| Error::UnknownTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        if e.kind != RecordKind::FullZstd.name() {
            return Ok(false);
        }
        let bytes = self.record_bytes(name)?;
        let header = decode_full_into(&bytes, &self.limits, out)
            .map_err(|err| self.corrupt(name, err.to_string()))?;
        self.check_header(name, e, &header)?;
        Ok(true)
    }

    /// A record's header against its index entry.
    fn check_header(&self, name: &str, e: &TensorEntry, header: &RecordHeader) -> Result<()> {
        if header.kind.name() != e.kind {
            return Err(self.corrupt(
                name,
                format!(
                    "record kind {} but the index says {}",
                    header.kind.name(),
                    e.kind
                ),
            ));
        }
        let shape_matches = header.shape.len() == e.shape.len()
            && header
                .shape
                .iter()
                .zip(&e.shape)
                .all(|(&a, &b)| a == b as u64);
        if header.dtype != e.dtype || !shape_matches {
            return Err(self.corrupt(
                name,
                format!(
                    "record has dtype {} shape {:?}, index says dtype {} shape {:?}",
                    header.dtype.name(),
                    header.shape,
                    e.dtype.name(),
                    e.shape
                ),
            ));
        }
        Ok(())
    }

    /// Reads, verifies and decompresses companion file `name`. A file stored against the base model's file of
    /// the same name (index field `base`) needs that file: [`read_file_with_base`](Self::read_file_with_base).
    ///
    /// # Errors
    /// [`Error::UnknownFile`], [`Error::NeedsBaseFile`], [`Error::RecordChecksum`], [`Error::CorruptRecord`],
    /// [`Error::Io`].
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>> {
        self.read_file_with_base(name, None)
    }

    /// Reads, verifies and decompresses companion file `name`; `base` is the base model's file of the same name,
    /// needed (and only used) when the index names one (`base`, kind `file-zstd-base`). Its size and xxh3-64 are
    /// compared with the index's before anything is decompressed.
    ///
    /// # Errors
    /// As [`read_file`](Self::read_file); [`Error::BaseFileMismatch`] when `base` is not the file named.
    pub fn read_file_with_base(&self, name: &str, base: Option<&[u8]>) -> Result<Vec<u8>> {
        let f = self.file_entry(name).ok_or_else(|| Error::UnknownFile {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        if let Some(want) = &f.base {
            let Some(base) = base else {
                return Err(Error::NeedsBaseFile {
                    path: self.path.clone(),
                    name: name.to_string(),
                    size: want.size,
                    xxh3: want.xxh3.clone(),
                });
            };
            let got = BaseFileRef::of(base);
            let got_xxh3 = format!("{:016x}", got.xxh3);
            if got.size != want.size || got_xxh3 != want.xxh3 {
                return Err(Error::BaseFileMismatch {
                    path: self.path.clone(),
                    name: name.to_string(),
                    expected_size: want.size,
                    expected_xxh3: want.xxh3.clone(),
                    found_size: got.size,
                    found_xxh3: got_xxh3,
                });
            }
            return self
                .file_against(f, Some(base))
                .map(|b| b.unwrap_or_default());
        }
        let bytes = self.read_checked(name, f.offset, f.length, &f.checksum)?;
        // The header must declare the entry's size before anything is decompressed.
        let expected = RecordHeader {
            kind: RecordKind::FileZstd,
            dtype: crate::DType::U8,
            shape: vec![f.size],
            numel: f.size,
        };
        let (header, record) = decode_expecting(&bytes, &self.limits, &expected, None, false)
            .map_err(|err| self.corrupt(name, err.to_string()))?;
        match record {
            Record::Full { bytes, .. }
                if header.kind == RecordKind::FileZstd && bytes.len() as u64 == f.size =>
            {
                Ok(bytes)
            }
            _ => Err(self.corrupt(
                name,
                format!(
                    "expected a file-zstd record of {} bytes, found {} of {} elements",
                    f.size,
                    header.kind.name(),
                    header.numel
                ),
            )),
        }
    }

    /// Checks companion file `name` without the base model's files: a file stored whole is read and
    /// decompressed as [`read_file`](Self::read_file) does; one stored against the base has its checksum, header
    /// and fields checked (it cannot be decompressed without the base's file), and must name the base file the
    /// index names.
    ///
    /// # Errors
    /// As [`read_file`](Self::read_file), but never [`Error::NeedsBaseFile`].
    pub fn check_file(&self, name: &str) -> Result<()> {
        let f = self.file_entry(name).ok_or_else(|| Error::UnknownFile {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        if f.base.is_some() {
            self.file_against(f, None).map(drop)
        } else {
            self.read_file(name).map(drop)
        }
    }

    /// The kind-13 or kind-14 record of `f` (which has a `base`), decoded with `base` or, without it, checked.
    fn file_against(&self, f: &FileEntry, base: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        let bytes = self.read_checked(&f.name, f.offset, f.length, &f.checksum)?;
        let expected = RecordHeader {
            kind: RecordKind::FileZstdBase,
            dtype: crate::DType::U8,
            shape: vec![f.size],
            numel: f.size,
        };
        let (named, out) = decode_file_against(&bytes, &self.limits, &expected, base)
            .map_err(|err| self.corrupt(&f.name, err.to_string()))?;
        let want = f.base.as_ref().map(|b| (b.size, b.xxh3.as_str()));
        if want != Some((named.size, format!("{:016x}", named.xxh3).as_str())) {
            return Err(self.corrupt(
                &f.name,
                format!(
                    "the record names a base file of {} bytes with xxh3 {:016x}, the index another",
                    named.size, named.xxh3
                ),
            ));
        }
        Ok(out)
    }

    /// Reads and decodes every record and companion file, verifying checksums and contents, then the content
    /// SHA-256 (version 2 and later).
    ///
    /// # Errors
    /// The first error of [`ArchiveReader::read_record`] / [`ArchiveReader::read_file`]; then
    /// [`ArchiveReader::check_content_sha256`]'s.
    pub fn verify(&self) -> Result<()> {
        for e in &self.manifest.tensors {
            if e.kind != KIND_NONE {
                self.check_record(&e.name)?;
            }
        }
        for f in &self.manifest.files {
            self.check_file(&f.name)?;
        }
        self.check_content_sha256()?;
        Ok(())
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The most bytes zstd can decompress from one byte of input: every block of up to 128 KiB of output takes at
/// least 4 bytes (a 3-byte block header and the byte of an RLE block), so no frame expands more than 32768-fold.
pub const MAX_ZSTD_EXPANSION: u64 = 1 << 15;

/// Decodes a compressed index (`stored`: the bytes the trailer names, checksum already checked): exactly one zstd
/// frame, declaring a content size of at most `limits.max_index_bytes` and [`MAX_ZSTD_EXPANSION`] times its
/// length, that decodes to exactly that size.
fn decompress_index(path: &Path, stored: &[u8], limits: &Limits) -> Result<Vec<u8>> {
    let bad = |detail: String| Error::IndexParse {
        path: path.to_path_buf(),
        detail: format!("the compressed index (preamble flag {FLAG_INDEX_ZSTD:#x}) {detail}"),
    };
    let frame = zstd::zstd_safe::find_frame_compressed_size(stored)
        .map_err(|_| bad("is not a zstd frame".into()))?;
    if frame != stored.len() {
        return Err(bad(format!(
            "is not one zstd frame: its first frame takes {frame} of its {} bytes",
            stored.len()
        )));
    }
    let size = match zstd::zstd_safe::get_frame_content_size(stored) {
        Ok(Some(n)) => n,
        _ => return Err(bad("does not declare its decompressed size".into())),
    };
    if size > limits.max_index_bytes {
        return Err(Error::IndexTooLarge {
            path: path.to_path_buf(),
            length: size,
            limit: limits.max_index_bytes,
        });
    }
    let most = (stored.len() as u64).saturating_mul(MAX_ZSTD_EXPANSION);
    if size > most {
        return Err(bad(format!(
            "declares {size} bytes, more than its {} bytes can hold (at most {most})",
            stored.len()
        )));
    }
    crate::lossless::zstd_decompress_exact(stored, size)
        .map_err(|e| bad(format!("does not decode: {e}")))
}

type NameMaps = (HashMap<String, usize>, HashMap<String, usize>);

/// Checks every index entry against the format's invariants and the records area `[PREAMBLE_LEN, records_end)`.
pub(crate) fn validate_manifest(
    path: &Path,
    m: &Manifest,
    limits: &Limits,
    records_end: u64,
    version: u32,
) -> Result<NameMaps> {
    let invalid = |detail: String| Error::IndexInvalid {
        path: path.to_path_buf(),
        detail,
    };
    if m.format_version != version {
        return Err(invalid(format!(
            "manifest format_version {} differs from the preamble's {version}",
            m.format_version
        )));
    }
    if !m.gamma.is_finite() || !(m.gamma as f32).is_finite() {
        return Err(invalid(format!(
            "gamma {} is not finite in 32-bit floats",
            m.gamma
        )));
    }
    let is_hex16 = |s: &str| {
        s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    // (offset, length, name) of every stored record.
    let mut ranges: Vec<(u64, u64, &str)> = Vec::with_capacity(m.tensors.len() + m.files.len());
    let check_range = |name: &str, offset: u64, length: u64| -> Result<()> {
        let inside = offset >= PREAMBLE_LEN
            && offset
                .checked_add(length)
                .is_some_and(|end| end <= records_end);
        if !inside || length == 0 {
            return Err(Error::EntryOutOfRange {
                path: path.to_path_buf(),
                name: name.to_string(),
                offset,
                length,
                start: PREAMBLE_LEN,
                end: records_end,
            });
        }
        Ok(())
    };

    let mut tensors = HashMap::with_capacity(m.tensors.len());
    for (i, e) in m.tensors.iter().enumerate() {
        let shape_err = |detail: String| Error::ShapeInvalid {
            path: path.to_path_buf(),
            name: e.name.clone(),
            detail,
        };
        if e.name.is_empty() {
            return Err(invalid(format!("tensor {i} has an empty name")));
        }
        if tensors.insert(e.name.clone(), i).is_some() {
            return Err(invalid(format!("tensor \"{}\" is listed twice", e.name)));
        }
        if e.shape.len() > limits.max_ndim {
            return Err(shape_err(format!(
                "{} dimensions (limit {})",
                e.shape.len(),
                limits.max_ndim
            )));
        }
        let numel = e
            .shape_numel()
            .ok_or_else(|| shape_err(format!("shape {:?} overflows", e.shape)))?;
        if numel > limits.max_numel {
            return Err(shape_err(format!(
                "{numel} elements exceed the limit {}",
                limits.max_numel
            )));
        }
        if numel != e.numel {
            return Err(shape_err(format!(
                "numel {} is not the product of shape {:?} ({numel})",
                e.numel, e.shape
            )));
        }
        if e.kept > numel {
            return Err(shape_err(format!("kept {} exceeds numel {numel}", e.kept)));
        }
        // zstd expands at most MAX_ZSTD_EXPANSION-fold: `elements` of the entry's dtype that no record of its length
        // can hold are refused before anything is allocated for them.
        let zstd_bound = |elements: u64, cannot: &str, record: &str| -> Result<()> {
            let raw = elements.saturating_mul(e.dtype.size() as u64);
            let most = e.length.saturating_mul(MAX_ZSTD_EXPANSION);
            if raw > most {
                return Err(shape_err(format!(
                    "{raw} {cannot} {}-byte {record} (at most {most})",
                    e.length
                )));
            }
            Ok(())
        };
        if e.policy == Policy::New && e.kind != RecordKind::FullZstd.name() {
            // A tensor the base lacks has no base shape to bound its size: only a whole (zstd) record's bytes do.
            return Err(invalid(format!(
                "tensor \"{}\" of policy new (stored whole) has record kind \"{}\", expected \"{}\"",
                e.name,
                e.kind,
                RecordKind::FullZstd.name()
            )));
        }
        if let Some(b) = &e.base_name {
            if b.is_empty() || b == &e.name || e.policy == Policy::New {
                return Err(invalid(format!(
                    "tensor \"{}\": base_name {b:?} must be another, non-empty name, and only for a tensor the base has",
                    e.name
                )));
            }
        }
        if let Some(b) = e.base_dtype {
            // A base of another dtype: both floating point, and no record that works on the base's bytes.
            let why = if b == e.dtype {
                Some("is the tensor's own (the field is only written when they differ)")
            } else if !b.is_float() || !e.dtype.is_float() {
                Some("and the tensor's must both be floating point")
            } else if e.policy == Policy::New {
                Some("is given for a tensor stored whole (policy new)")
            } else if matches!(e.kind.as_str(), "xor-zstd" | "diff-zstd") {
                Some("differs from the tensor's, which a bitwise record of the base's bytes cannot rebuild")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(invalid(format!(
                    "tensor \"{}\": base dtype {} {why} ({})",
                    e.name,
                    b.name(),
                    e.dtype.name()
                )));
            }
        }
        let appended = e.kind == RecordKind::AppendedRows.name();
        if appended || e.base_rows.is_some() {
            // Rows added to the base's tensor: a 2-D compressed tensor over the same dtype, fewer base rows than
            // its own, and added rows no larger than a zstd record of the entry's length can hold.
            let why = match (e.base_rows, e.shape.as_slice()) {
                (None, _) => Some("has no base_rows".to_string()),
                (Some(_), _) if !appended => Some(format!(
                    "has base_rows but record kind \"{}\", expected \"{}\"",
                    e.kind,
                    RecordKind::AppendedRows.name()
                )),
                (_, s) if s.len() != 2 => Some(format!("needs 2 dimensions, shape is {s:?}")),
                (Some(b), &[rows, _]) if b == 0 || b >= rows => {
                    Some(format!("base_rows {b}, expected 1..{rows}"))
                }
                _ if e.policy == Policy::New => {
                    Some("has policy new (a tensor the base lacks)".to_string())
                }
                _ if e.base_dtype.is_some() && e.policy == Policy::Keep => Some(
                    "has a base_dtype and policy keep (a lossless delta needs the base in the tensor's dtype)"
                        .to_string(),
                ),
                _ => None,
            };
            if let Some(why) = why {
                return Err(invalid(format!(
                    "tensor \"{}\" with rows added to the base's {why}",
                    e.name
                )));
            }
            let base_rows = e.base_rows.unwrap_or(0) as u64;
            let added = numel - base_rows.saturating_mul(e.shape[1] as u64);
            zstd_bound(added, "bytes of added rows cannot come from a", "record")?;
        }
        if e.kind == KIND_NONE {
            if e.offset != 0 || e.length != 0 {
                return Err(invalid(format!(
                    "tensor \"{}\" has kind none but a byte range ({}, {})",
                    e.name, e.offset, e.length
                )));
            }
            continue;
        }
        match RecordKind::from_name(&e.kind) {
            Some(RecordKind::FileZstd) | None => {
                return Err(invalid(format!(
                    "tensor \"{}\" has unknown record kind \"{}\"",
                    e.name, e.kind
                )))
            }
            Some(_) => {}
        }
        if !is_hex16(&e.checksum) {
            return Err(invalid(format!(
                "tensor \"{}\" checksum \"{}\" is not 16 lowercase hex digits",
                e.name, e.checksum
            )));
        }
        check_range(&e.name, e.offset, e.length)?;
        if matches!(e.kind.as_str(), "xor-zstd" | "full-zstd") {
            zstd_bound(numel, "bytes cannot come from a", "zstd record")?;
        }
        ranges.push((e.offset, e.length, &e.name));
    }

    let mut files = HashMap::with_capacity(m.files.len());
    for (i, f) in m.files.iter().enumerate() {
        if !is_companion_path(&f.name) {
            return Err(invalid(format!(
                "companion file {i} name {:?} is not a relative path of plain file names joined by `/`",
                f.name
            )));
        }
        if files.insert(f.name.clone(), i).is_some() {
            return Err(invalid(format!(
                "companion file \"{}\" is listed twice",
                f.name
            )));
        }
        if f.size > limits.max_file_bytes {
            return Err(invalid(format!(
                "companion file \"{}\" size {} exceeds the limit {}",
                f.name, f.size, limits.max_file_bytes
            )));
        }
        if !is_hex16(&f.checksum) {
            return Err(invalid(format!(
                "companion file \"{}\" checksum \"{}\" is not 16 lowercase hex digits",
                f.name, f.checksum
            )));
        }
        if let Some(b) = &f.base {
            if b.size > limits.max_file_bytes || !is_hex16(&b.xxh3) {
                return Err(invalid(format!(
                    "companion file \"{}\" names a base file of size {} with xxh3 \"{}\" (at most {} bytes, 16 lowercase hex digits)",
                    f.name, b.size, b.xxh3, limits.max_file_bytes
                )));
            }
        }
        check_range(&f.name, f.offset, f.length)?;
        if f.size > f.length.saturating_mul(MAX_ZSTD_EXPANSION) {
            return Err(invalid(format!(
                "companion file \"{}\" size {} cannot come from a {}-byte zstd record",
                f.name, f.size, f.length
            )));
        }
        ranges.push((f.offset, f.length, &f.name));
    }

    // No companion path is also the folder of another ("a" and "a/b"): no output folder can hold both.
    for f in &m.files {
        for (k, _) in f.name.match_indices('/') {
            if files.contains_key(&f.name[..k]) {
                return Err(invalid(format!(
                    "companion file \"{}\" is also the folder of companion file \"{}\"",
                    &f.name[..k],
                    f.name
                )));
            }
        }
    }

    ranges.sort_unstable_by_key(|&(o, l, _)| (o, l));
    for w in ranges.windows(2) {
        let (o1, l1, n1) = w[0];
        let (o2, _, n2) = w[1];
        // Ranges are inside the records area, so o1 + l1 cannot overflow.
        if o1 + l1 > o2 {
            return Err(Error::EntryOverlap {
                path: path.to_path_buf(),
                first: n1.to_string(),
                second: n2.to_string(),
            });
        }
    }
    Ok((tensors, files))
}
