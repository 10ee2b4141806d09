//! The one error type of this crate.

use std::path::PathBuf;

use crate::DType;

/// Everything that can go wrong while reading or writing checkpoints.
///
/// Every message is one line and names the file (and tensor, where there is one) and what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system IO call failed.
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// What we were doing ("open", "read", "create", "rename", ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The path given to [`Checkpoint::open`](crate::Checkpoint::open) is not a checkpoint we can read.
    #[error("{}: not a checkpoint: {reason}", path.display())]
    NotACheckpoint {
        /// The path the user gave.
        path: PathBuf,
        /// What was found and what was expected.
        reason: String,
    },

    /// The file is shorter than the 8-byte header-length prefix.
    #[error("{}: file is {len} bytes, too small for a safetensors file (at least 8 bytes expected)", file.display())]
    HeaderTooSmall {
        /// The weight file.
        file: PathBuf,
        /// Its length in bytes.
        len: u64,
    },

    /// The declared JSON header length exceeds the limit.
    #[error("{}: declared header length {declared} bytes exceeds the limit of {limit} bytes", file.display())]
    HeaderTooLarge {
        /// The weight file.
        file: PathBuf,
        /// Header length from the file's first 8 bytes.
        declared: u64,
        /// The limit ([`MAX_HEADER_BYTES`](crate::MAX_HEADER_BYTES)).
        limit: u64,
    },

    /// The declared JSON header runs past the end of the file.
    #[error("{}: declared header length {declared} bytes runs past the end of the {file_len}-byte file (truncated file?)", file.display())]
    HeaderTruncated {
        /// The weight file.
        file: PathBuf,
        /// Header length from the file's first 8 bytes.
        declared: u64,
        /// Actual file length.
        file_len: u64,
    },

    /// A PyTorch checkpoint (`torch.save`'s zip format) whose container or pickle is not what `torch.save` writes
    /// for a state dict, or a pickle in PyTorch's legacy format.
    #[error("{}: invalid PyTorch checkpoint: {reason}", file.display())]
    InvalidTorch {
        /// The weight file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The header is not UTF-8 JSON of the safetensors shape.
    #[error("{}: invalid safetensors header: {reason}", file.display())]
    InvalidHeader {
        /// The weight file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A PyTorch file's tensor stored as a strided view could not be copied, row-major, into the temporary file
    /// that holds such tensors while the checkpoint is open.
    #[error("{}: tensor {tensor:?} (a strided view, copied row-major when the checkpoint opens): cannot {op} a temporary file in {} (the TMPDIR variable chooses the folder): {source}", file.display(), dir.display())]
    ViewCopy {
        /// The weight file.
        file: PathBuf,
        /// The tensor being copied.
        tensor: String,
        /// The folder of the temporary file.
        dir: PathBuf,
        /// What we were doing ("create", "write", "memory-map").
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The caller of [`Checkpoint::open_with`](crate::Checkpoint::open_with) asked to stop while the strided views
    /// were copied; the temporary file is gone.
    #[error("{}: cancelled while its strided views were copied", path.display())]
    Cancelled {
        /// The checkpoint being opened.
        path: PathBuf,
    },

    /// One tensor's header entry is malformed (shape, offsets, or a byte range that does not match its dtype and shape).
    #[error("{}: tensor {tensor:?}: {reason}", file.display())]
    InvalidTensorEntry {
        /// The weight file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong, with expected and found values.
        reason: String,
    },

    /// A tensor's bytes run past the end of the file.
    #[error("{}: tensor {tensor:?}: data ends at byte {end} but the file has only {file_len} bytes (truncated file)", file.display())]
    Truncated {
        /// The weight file.
        file: PathBuf,
        /// The first tensor (by offset) that does not fit.
        tensor: String,
        /// Absolute end offset the header declares.
        end: u64,
        /// Actual file length.
        file_len: u64,
    },

    /// Two tensors' byte ranges overlap.
    #[error("{}: tensor {tensor:?} overlaps the bytes of tensor {other:?}", file.display())]
    OverlappingTensors {
        /// The weight file.
        file: PathBuf,
        /// The later tensor (by offset).
        tensor: String,
        /// The earlier tensor it overlaps.
        other: String,
    },

    /// A tensor's dtype is not one of the supported ones.
    #[error("{}: tensor {tensor:?}: unsupported dtype {dtype:?} (expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)", file.display())]
    UnsupportedDType {
        /// The weight file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// The dtype string found in the header.
        dtype: String,
    },

    /// The sharded-checkpoint index json is malformed.
    #[error("{}: invalid safetensors index: {reason}", file.display())]
    InvalidIndex {
        /// The index file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The index names a shard file that does not exist.
    #[error("{}: shard {shard:?} (listed for tensor {tensor:?}) does not exist", index.display())]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The shard file name.
        shard: String,
        /// One tensor the index places in it.
        tensor: String,
    },

    /// The index places a tensor in a shard that does not hold it.
    #[error("{}: tensor {tensor:?} is listed in shard {shard:?}, but that shard does not hold it", index.display())]
    IndexMismatch {
        /// The index file.
        index: PathBuf,
        /// The tensor.
        tensor: String,
        /// The shard file name the index gives.
        shard: String,
    },

    /// The same tensor name appears in two shards.
    #[error("tensor {tensor:?} appears in both {} and {}", first.display(), second.display())]
    DuplicateTensor {
        /// The tensor.
        tensor: String,
        /// The first shard holding it.
        first: PathBuf,
        /// The second shard holding it.
        second: PathBuf,
    },

    /// A tensor name that the checkpoint does not hold.
    #[error("{}: no tensor named {tensor:?}", path.display())]
    TensorNotFound {
        /// The checkpoint path.
        path: PathBuf,
        /// The requested name.
        tensor: String,
    },

    /// A float conversion was asked of a non-float dtype.
    #[error("{context}: dtype {dtype} is not a float type (expected F64, F32, F16 or BF16)")]
    NotFloat {
        /// Where: `file: tensor "name"`, or the function name.
        context: String,
        /// The dtype found.
        dtype: DType,
    },

    /// A caller-provided buffer has the wrong number of elements.
    #[error("{context}: buffer holds {found} values, expected {expected}")]
    LengthMismatch {
        /// Where: `file: tensor "name"`.
        context: String,
        /// Elements expected (the tensor's numel).
        expected: usize,
        /// Elements found.
        found: usize,
    },

    /// The writer's output already exists and overwrite was not requested.
    #[error("{}: output exists", path.display())]
    OutputExists {
        /// The output folder.
        path: PathBuf,
    },

    /// The writer's output exists and is not a folder, so it is not replaced even with overwrite.
    #[error("{}: output exists and is not a folder; refusing to replace it", path.display())]
    OutputNotADirectory {
        /// The output path.
        path: PathBuf,
    },

    /// A tensor declared to the writer is invalid (empty or duplicate name, size overflow, ...).
    #[error("{}: tensor {tensor:?}: {reason}", dir.display())]
    InvalidDeclaration {
        /// The output folder.
        dir: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: String,
    },

    /// `write_tensor` was called with a name that was not declared.
    #[error("{}: tensor {tensor:?} was not declared when the writer was created", dir.display())]
    UnknownTensor {
        /// The output folder.
        dir: PathBuf,
        /// The name given.
        tensor: String,
    },

    /// `write_tensor` was called out of the declared order.
    #[error("{}: tensor {tensor:?} written out of order: expected {expected}", dir.display())]
    OutOfOrder {
        /// The output folder.
        dir: PathBuf,
        /// The name given.
        tensor: String,
        /// What the writer expected next (a quoted name, or "no more tensors").
        expected: String,
    },

    /// `write_tensor` was given the wrong number of bytes.
    #[error("{}: tensor {tensor:?}: got {found} bytes, expected {expected} ({dtype} with shape {shape:?})", dir.display())]
    ByteLengthMismatch {
        /// The output folder.
        dir: PathBuf,
        /// The tensor.
        tensor: String,
        /// The declared dtype.
        dtype: DType,
        /// The declared shape.
        shape: Vec<usize>,
        /// numel * dtype size.
        expected: usize,
        /// Bytes given.
        found: usize,
    },

    /// `finish` was called before every declared tensor was written.
    #[error("{}: {missing} declared tensor(s) not written, first {first:?}", dir.display())]
    MissingTensors {
        /// The output folder.
        dir: PathBuf,
        /// How many were not written.
        missing: usize,
        /// The first one not written.
        first: String,
    },

    /// `add_file` was given a name that is not a plain, free file name.
    #[error("{}: companion file name {name:?} rejected: {reason}", dir.display())]
    InvalidFileName {
        /// The output folder.
        dir: PathBuf,
        /// The name given.
        name: String,
        /// Why it is rejected.
        reason: String,
    },

    /// An input is not a regular file (nor a symlink to one): a FIFO, a device, a socket or a folder where a file
    /// is expected. It is refused without being opened, so a FIFO cannot block the reader.
    #[error("{}: is a {kind}, not a regular file (inputs must be regular files or symlinks to them)", path.display())]
    NotARegularFile {
        /// The path.
        path: PathBuf,
        /// What it is (`FIFO`, `character device`, `block device`, `socket`, `folder`).
        kind: &'static str,
    },

    /// The header the writer would produce exceeds the limit readers accept.
    #[error("{}: safetensors header would be {len} bytes, over the {limit}-byte limit readers accept", file.display())]
    HeaderTooLargeToWrite {
        /// The shard file being written.
        file: PathBuf,
        /// Header length.
        len: u64,
        /// The limit.
        limit: u64,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of non-regular file `m` describes (`None` for a regular file).
pub fn non_regular_kind(m: &std::fs::Metadata) -> Option<&'static str> {
    if m.is_file() {
        return None;
    }
    if m.is_dir() {
        return Some("folder");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        if t.is_fifo() {
            return Some("FIFO");
        }
        if t.is_char_device() {
            return Some("character device");
        }
        if t.is_block_device() {
            return Some("block device");
        }
        if t.is_socket() {
            return Some("socket");
        }
    }
    Some("special file")
}

/// Checks that `path` is a regular file (symlinks followed) without opening it, so that a FIFO or a device is
/// refused instead of blocking or streaming forever.
///
/// # Errors
/// [`Error::Io`] (op `open`) if it cannot be found; [`Error::NotARegularFile`] otherwise.
pub fn check_regular_file(path: &std::path::Path) -> Result<std::fs::Metadata> {
    let m = std::fs::metadata(path).map_err(|e| Error::io(path, "open", e))?;
    match non_regular_kind(&m) {
        None => Ok(m),
        Some(kind) => Err(Error::NotARegularFile {
            path: path.to_path_buf(),
            kind,
        }),
    }
}

impl Error {
    /// Wraps an [`std::io::Error`] with the path and operation.
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }
}
