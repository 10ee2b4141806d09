//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while writing or reading an archive.
///
/// Every message is one line naming the archive file (and the tensor or companion file when there is one) and what
/// was expected. Variants without a path ([`Error::InvalidStream`], [`Error::InvalidRecord`]) come from the codec
/// functions that work on bytes alone; the reader and writer wrap them with the file and tensor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system IO error.
    #[error("{path}: {op}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// What was being done ("create", "read", "write", "rename", ...).
        op: &'static str,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The archive path is not a regular file (nor a symlink to one): a FIFO, a device, a socket or a folder. It
    /// is refused without being opened, so a FIFO cannot block the reader.
    #[error("{path}: is a {kind}, not a regular file (an archive must be a regular file or a symlink to one)")]
    NotARegularFile {
        /// The path.
        path: PathBuf,
        /// What it is (`FIFO`, `character device`, `block device`, `socket`, `folder`).
        kind: &'static str,
    },
    /// The output path already exists and overwriting was not requested.
    #[error("{path}: output exists")]
    OutputExists {
        /// The existing path.
        path: PathBuf,
    },
    /// The output path has no usable file name or parent folder.
    #[error("{path}: not a usable output file path: {detail}")]
    InvalidPath {
        /// The path given.
        path: PathBuf,
        /// Why it is not usable.
        detail: &'static str,
    },
    /// The file is shorter than the structure being read needs.
    #[error("{path}: truncated: {what} needs {needed} bytes, file has {size}")]
    Truncated {
        /// Archive file.
        path: PathBuf,
        /// What could not be read.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Actual file size.
        size: u64,
    },
    /// The first 8 bytes are not the archive magic.
    #[error(
        "{path}: not an UltraDelta archive: expected magic {expected:02x?}, found {found:02x?}"
    )]
    BadMagic {
        /// Archive file.
        path: PathBuf,
        /// The magic this reader knows.
        expected: [u8; 8],
        /// The bytes found.
        found: [u8; 8],
    },
    /// The archive was written in a format version this reader does not know.
    #[error("{path}: unsupported archive format version {found} (this reader supports versions 1 to {supported})")]
    UnsupportedVersion {
        /// Archive file.
        path: PathBuf,
        /// Version found in the preamble.
        found: u32,
        /// Newest version this reader supports (it reads every version from 1 up to it).
        supported: u32,
    },
    /// The preamble sets flag bits this reader does not know.
    #[error("{path}: unsupported archive flags {found:#010x} (known flags: {known:#010x})")]
    UnsupportedFlags {
        /// Archive file.
        path: PathBuf,
        /// Flags found.
        found: u32,
        /// Flags this reader understands.
        known: u32,
    },
    /// The last 8 bytes are not the trailer magic (typically: the file was cut short or not finished).
    #[error("{path}: bad trailer: expected trailer magic {expected:02x?}, found {found:02x?} (truncated or unfinished archive?)")]
    BadTrailer {
        /// Archive file.
        path: PathBuf,
        /// The trailer magic this reader knows.
        expected: [u8; 8],
        /// The bytes found.
        found: [u8; 8],
    },
    /// The declared index length exceeds [`crate::Limits::max_index_bytes`].
    #[error("{path}: index length {length} exceeds the limit of {limit} bytes")]
    IndexTooLarge {
        /// Archive file.
        path: PathBuf,
        /// Declared index length.
        length: u64,
        /// Configured limit.
        limit: u64,
    },
    /// The trailer's index offset/length do not fit the file exactly.
    #[error("{path}: index at offset {offset} with length {length} does not fit between the preamble and the trailer of a {file_size}-byte file")]
    IndexOutOfRange {
        /// Archive file.
        path: PathBuf,
        /// Declared index offset.
        offset: u64,
        /// Declared index length.
        length: u64,
        /// Actual file size.
        file_size: u64,
    },
    /// The index bytes do not match the checksum in the trailer.
    #[error("{path}: index checksum mismatch: trailer says {expected:016x}, index bytes hash to {found:016x}")]
    IndexChecksum {
        /// Archive file.
        path: PathBuf,
        /// Checksum stored in the trailer.
        expected: u64,
        /// Checksum of the bytes read.
        found: u64,
    },
    /// The archive's content does not hash to the SHA-256 stored in its trailer (format version 2 and later).
    #[error("{path}: content SHA-256 mismatch: the trailer says {expected}, the archive's content hashes to {found}")]
    ContentSha256 {
        /// Archive file.
        path: PathBuf,
        /// Digest stored in the trailer (hex).
        expected: String,
        /// Digest of the bytes read (hex).
        found: String,
    },
    /// The index is not valid JSON of the expected shape.
    #[error("{path}: index is not a valid manifest: {detail}")]
    IndexParse {
        /// Archive file.
        path: PathBuf,
        /// Parser message.
        detail: String,
    },
    /// The index parsed but violates an invariant of the format (duplicate names, unknown kind, ...).
    #[error("{path}: invalid index: {detail}")]
    IndexInvalid {
        /// Archive file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A tensor's or companion file's declared shape/numel is inconsistent or beyond the limits.
    #[error("{path}: tensor \"{name}\": {detail}")]
    ShapeInvalid {
        /// Archive file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// A record's byte range lies outside the records area.
    #[error("{path}: \"{name}\": record at offset {offset} with length {length} lies outside the records area [{start}, {end})")]
    EntryOutOfRange {
        /// Archive file.
        path: PathBuf,
        /// Tensor or companion-file name.
        name: String,
        /// Declared offset.
        offset: u64,
        /// Declared length.
        length: u64,
        /// First byte of the records area.
        start: u64,
        /// One past the last byte of the records area.
        end: u64,
    },
    /// Two records' byte ranges overlap.
    #[error("{path}: records of \"{first}\" and \"{second}\" overlap")]
    EntryOverlap {
        /// Archive file.
        path: PathBuf,
        /// Record with the lower offset.
        first: String,
        /// Record overlapping it.
        second: String,
    },
    /// A record's bytes do not match the checksum stored in the index.
    #[error("{path}: \"{name}\": record checksum mismatch: index says {expected}, record bytes hash to {found:016x}")]
    RecordChecksum {
        /// Archive file.
        path: PathBuf,
        /// Tensor or companion-file name.
        name: String,
        /// Checksum stored in the index (hex).
        expected: String,
        /// Checksum of the bytes read.
        found: u64,
    },
    /// A record passed its checksum but its contents are invalid (a hostile or buggy writer).
    #[error("{path}: \"{name}\": corrupt record: {detail}")]
    CorruptRecord {
        /// Archive file.
        path: PathBuf,
        /// Tensor or companion-file name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// No tensor of that name in the archive.
    #[error("{path}: no tensor named \"{name}\" in the archive")]
    UnknownTensor {
        /// Archive file.
        path: PathBuf,
        /// Name asked for.
        name: String,
    },
    /// No companion file of that name in the archive.
    #[error("{path}: no companion file named \"{name}\" in the archive")]
    UnknownFile {
        /// Archive file.
        path: PathBuf,
        /// Name asked for.
        name: String,
    },
    /// The companion file is stored against the base model's file of the same name, and was read without it.
    #[error(
        "{path}: companion file \"{name}\" is stored as a difference from the base model's \"{name}\" ({size} bytes, xxh3 {xxh3}); read it with that file"
    )]
    NeedsBaseFile {
        /// Archive file.
        path: PathBuf,
        /// Companion file name.
        name: String,
        /// Size of the base file it needs.
        size: u64,
        /// xxh3-64 of the base file it needs.
        xxh3: String,
    },
    /// The base file given for a companion file stored against the base is not the one it was compressed against.
    #[error(
        "{path}: companion file \"{name}\" was compressed against a base file of {expected_size} bytes with xxh3 {expected_xxh3}, given {found_size} bytes with xxh3 {found_xxh3}"
    )]
    BaseFileMismatch {
        /// Archive file.
        path: PathBuf,
        /// Companion file name.
        name: String,
        /// Size the index names.
        expected_size: u64,
        /// xxh3-64 the index names.
        expected_xxh3: String,
        /// Size of the bytes given.
        found_size: u64,
        /// xxh3-64 of the bytes given.
        found_xxh3: String,
    },
    /// The tensor is listed in the index but has no record (policy `drop`).
    #[error("{path}: tensor \"{name}\" has no stored record (policy drop)")]
    NotStored {
        /// Archive file.
        path: PathBuf,
        /// Tensor name.
        name: String,
    },
    /// A name was written twice.
    #[error("{path}: \"{name}\" was already written to this archive")]
    DuplicateName {
        /// Archive file being written.
        path: PathBuf,
        /// The repeated name.
        name: String,
    },
    /// The writer was given an inconsistent entry, record or manifest value.
    #[error("{path}: \"{name}\": cannot write: {detail}")]
    InvalidInput {
        /// Archive file being written.
        path: PathBuf,
        /// Tensor or companion-file name (empty for archive-level values).
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// A record given to the codec is inconsistent (positions not increasing, level out of range, ...).
    #[error("invalid record: {detail}")]
    InvalidRecord {
        /// What is wrong.
        detail: String,
    },
    /// A Golomb, bit-packed, zstd or record stream could not be decoded.
    #[error("invalid {stream} stream: {detail}")]
    InvalidStream {
        /// Which stream ("golomb", "bitpack", "zstd", "record").
        stream: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }

    pub(crate) fn stream(stream: &'static str, detail: impl Into<String>) -> Error {
        Error::InvalidStream {
            stream,
            detail: detail.into(),
        }
    }

    pub(crate) fn record(detail: impl Into<String>) -> Error {
        Error::InvalidRecord {
            detail: detail.into(),
        }
    }
}
