use std::path::PathBuf;

use ultradelta_io::Checkpoint;

/// Everything that can go wrong in the high-level pipeline, one variant per cause.
///
/// Each message is one line naming the file and tensor involved; configuration errors name the
/// [`CompressConfig`](crate::CompressConfig) field (a front end adds its own spelling, e.g. a flag). Errors from
/// the member crates pass through unchanged (they already carry that context).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a checkpoint failed.
    #[error(transparent)]
    Io(#[from] ultradelta_io::Error),
    /// Reading or writing an archive failed.
    #[error(transparent)]
    Archive(#[from] ultradelta_archive::Error),
    /// Sparsity allocation rejected its input.
    #[error("sparsity allocation: {0}")]
    Alloc(#[from] ultradelta_alloc::Error),
    /// Quantization or pruning of one tensor failed.
    #[error("{}: tensor \"{tensor}\": {source}", file.display())]
    Quant {
        /// Fine-tuned checkpoint file holding the tensor.
        file: PathBuf,
        /// Tensor name.
        tensor: String,
        /// The underlying failure.
        source: ultradelta_qgp::Error,
    },
    /// Rescaling (nuclear norms, TNGR) failed.
    #[error("rescaling: {0}")]
    Rescale(#[from] ultradelta_rescale::Error),
    /// The base checkpoint is not the one the archive was made against.
    #[error("{}: made for a different base checkpoint (fingerprint {expected}), but {} has fingerprint {found}", archive.display(), base.display())]
    WrongBase {
        /// Archive path.
        archive: PathBuf,
        /// Base checkpoint path given.
        base: PathBuf,
        /// Fingerprint stored in the archive.
        expected: String,
        /// Fingerprint of the given base.
        found: String,
    },
    /// A companion file stored against the base model's file of the same name cannot be rebuilt: the base's file
    /// is missing or differs from the one it was compressed against.
    #[error("{}: companion file {name:?} is stored as a difference from the base model's {name:?} ({size} bytes, xxh3 {xxh3}), but {problem}; give the base model's folder as it was at compress time", archive.display())]
    BaseFile {
        /// Archive path.
        archive: PathBuf,
        /// Companion file name.
        name: String,
        /// Size of the base file the archive needs.
        size: u64,
        /// Its xxh3-64.
        xxh3: String,
        /// What is wrong with the base's file.
        problem: String,
    },
    /// One base tensor's content differs from the one the archive was made against.
    #[error("{}: tensor \"{tensor}\" differs from the base the archive {} was made against (content hash {found}, expected {expected})", file.display(), archive.display())]
    BaseTensorChanged {
        /// Archive path.
        archive: PathBuf,
        /// Base file holding the tensor.
        file: PathBuf,
        /// Tensor name.
        tensor: String,
        /// Hash stored in the archive.
        expected: String,
        /// Hash of the given base tensor.
        found: String,
    },
    /// Base and fine-tuned tensors of the same name differ in shape or dtype.
    #[error(transparent)]
    Mismatch(Box<TensorMismatch>),
    /// A tensor the archive needs is missing from the base, or has another shape/dtype there.
    #[error("{}: tensor \"{tensor}\" {what} (needed by archive {})", base.display(), archive.display())]
    BaseTensor {
        /// Base checkpoint path.
        base: PathBuf,
        /// Archive path.
        archive: PathBuf,
        /// Tensor name.
        tensor: String,
        /// What is wrong with it.
        what: String,
    },
    /// A tensor selected for compression cannot be compressed (not floating point).
    #[error("{}: tensor \"{tensor}\" has dtype {dtype}; only F64/F32/F16/BF16 tensors can be compressed (give it a keep or drop rule in the selection)", file.display())]
    NotCompressible {
        /// Fine-tuned file.
        file: PathBuf,
        /// Tensor name.
        tensor: String,
        /// Its dtype.
        dtype: String,
    },
    /// A plain file operation failed.
    #[error("{}: {source}", path.display())]
    File {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A configuration value is out of range, or two settings contradict each other.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// The field to change, as [`CompressConfig`](crate::CompressConfig) spells it (`tngr.clamp` for a
        /// nested one).
        field: &'static str,
        /// What is wrong, naming the fields involved and the value found.
        reason: String,
    },
    /// [`compress_many`](crate::compress_many) was given no fine-tuned checkpoint.
    #[error("no fine-tuned checkpoint given")]
    NoFinetuned,
    /// An output (archive, rebuilt folder, adapter folder) exists and overwriting was not requested.
    #[error("{}: output exists", path.display())]
    OutputExists {
        /// The output path.
        path: PathBuf,
    },
    /// An archive's records contradict its index (a record of the wrong kind or size for its tensor).
    #[error("{}: tensor \"{tensor}\": {detail}", archive.display())]
    CorruptArchive {
        /// The archive.
        archive: PathBuf,
        /// Tensor name.
        tensor: String,
        /// What does not fit, with the expected and found values.
        detail: String,
    },
    /// A companion file's name in the archive cannot be rebuilt inside an output folder (a hidden or weight name;
    /// path escapes such as `../x` or `/etc/x` are refused when the archive is opened).
    #[error("{}: companion file {name:?} cannot be rebuilt: {reason}", archive.display())]
    CompanionName {
        /// The archive.
        archive: PathBuf,
        /// The name in the archive's index.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Rebuilding would write a non-finite value (Inf or NaN) where the base value is finite: the archive's values
    /// overflow the tensor's dtype. The fine-tune had no such value (its delta was finite), so nothing is written.
    #[error("{}: tensor \"{tensor}\": entry {index} rebuilds to a non-finite value where the base is finite (the archive's values overflow {dtype}); nothing written", archive.display())]
    NonFiniteOutput {
        /// The archive.
        archive: PathBuf,
        /// Tensor name.
        tensor: String,
        /// Index of the first such entry.
        index: usize,
        /// The tensor's dtype.
        dtype: String,
    },
    /// An output path is, contains or lies inside one of the command's inputs: writing it would destroy that input.
    #[error("{}: the output {relation} the input {} ({role}); choose another output path (overwriting is never allowed here)", output.display(), input.display())]
    OutputIsInput {
        /// The output path given.
        output: PathBuf,
        /// The input it collides with.
        input: PathBuf,
        /// What the input is (`base checkpoint`, `fine-tuned checkpoint`, `archive`).
        role: &'static str,
        /// `is`, `contains`, `is the same file as`.
        relation: &'static str,
    },
    /// A size computed from an archive's declarations does not fit in this machine's address range.
    #[error("{}: tensor \"{tensor}\": {what} overflows", archive.display())]
    Overflow {
        /// The archive.
        archive: PathBuf,
        /// Tensor name.
        tensor: String,
        /// The quantity that overflows (e.g. "byte size").
        what: &'static str,
    },
    /// The operation does not apply to this archive (e.g. a LoRA export of an archive with no low-rank factors).
    #[error("{}: {what}", archive.display())]
    Unsupported {
        /// The archive.
        archive: PathBuf,
        /// What was asked and why it cannot be done.
        what: String,
    },
    /// The fine-tuned checkpoint given to [`eval`](crate::eval) is not the one the archive was made from.
    #[error("{}: tensor \"{tensor}\" does not match the archive {}: {what}", finetuned.display(), archive.display())]
    FinetunedTensor {
        /// The fine-tuned checkpoint.
        finetuned: PathBuf,
        /// The archive.
        archive: PathBuf,
        /// Tensor name.
        tensor: String,
        /// How it differs.
        what: String,
    },
    /// The LoRA adapter could not be serialised (safetensors refused a tensor).
    #[error("{}: LoRA adapter: {source}", dir.display())]
    LoraExport {
        /// The adapter folder being written.
        dir: PathBuf,
        /// The safetensors error.
        source: safetensors::SafeTensorError,
    },
    /// A baseline method's kernel failed on one tensor.
    #[error("{}: tensor \"{tensor}\": {source}", file.display())]
    Method {
        /// File holding the fine-tuned tensor.
        file: PathBuf,
        /// Tensor name.
        tensor: String,
        /// What went wrong.
        source: ultradelta_baselines::Error,
    },
    /// A record could not be turned into a delta (wrong kind for its policy, or a length mismatch).
    #[error("{}: tensor \"{tensor}\": {source}", archive.display())]
    Decode {
        /// The archive.
        archive: PathBuf,
        /// Tensor name.
        tensor: String,
        /// What went wrong.
        source: Box<ultradelta_archive::Error>,
    },
    /// The byte budget cannot be met.
    #[error("{}: {budget}: {detail}", finetuned.display())]
    Budget {
        /// The fine-tuned checkpoint.
        finetuned: PathBuf,
        /// The budget as asked (`target ratio 40x`, `target size 1200000 bytes`).
        budget: String,
        /// Why it is unreachable, with the achievable range.
        detail: String,
    },
    /// The caller's [`Progress::cancelled`](crate::Progress::cancelled) asked to stop; nothing was left
    /// half-written.
    #[error("cancelled")]
    Cancelled,
}

/// Details of [`Error::Mismatch`] (boxed to keep `Error` small).
#[derive(Debug, thiserror::Error)]
#[error("tensor \"{tensor}\": base {} has {base_dtype} {base_shape:?} but fine-tuned {} has {ft_dtype} {ft_shape:?}", base_file.display(), finetuned_file.display())]
pub struct TensorMismatch {
    /// Tensor name.
    pub tensor: String,
    /// Base file.
    pub base_file: PathBuf,
    /// Fine-tuned file.
    pub finetuned_file: PathBuf,
    /// Base dtype name.
    pub base_dtype: String,
    /// Base shape.
    pub base_shape: Vec<usize>,
    /// Fine-tuned dtype name.
    pub ft_dtype: String,
    /// Fine-tuned shape.
    pub ft_shape: Vec<usize>,
}

/// Result with this crate's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// [`Error::Quant`] for tensor `name` of `ckpt`.
pub(crate) fn quant_err(ckpt: &Checkpoint, name: &str, source: ultradelta_qgp::Error) -> Error {
    Error::Quant {
        file: ckpt.file_of(name).unwrap_or(ckpt.path()).to_path_buf(),
        tensor: name.to_string(),
        source,
    }
}

/// A method kernel's error for tensor `name` of `ckpt`: [`Error::Quant`] for the quantizer's, [`Error::Method`]
/// otherwise.
pub(crate) fn method_err(
    ckpt: &Checkpoint,
    name: &str,
    source: ultradelta_baselines::Error,
) -> Error {
    match source {
        ultradelta_baselines::Error::Quant(q) => quant_err(ckpt, name, q),
        source => Error::Method {
            file: ckpt.file_of(name).unwrap_or(ckpt.path()).to_path_buf(),
            tensor: name.to_string(),
            source,
        },
    }
}
