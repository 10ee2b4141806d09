use std::path::PathBuf;

use ultradelta_io::Checkpoint;

/// Everything that can go wrong in the high-level pipeline.
///
/// Each message is one line naming the file and tensor involved. Errors from the
/// member crates pass through unchanged (they already carry that context).
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
    #[error("{}: tensor \"{tensor}\" has dtype {dtype}; only F64/F32/F16/BF16 tensors can be compressed (use --keep for it)", file.display())]
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
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
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
    #[error("{}: target ratio {target}x: {detail}", finetuned.display())]
    Budget {
        /// The fine-tuned checkpoint.
        finetuned: PathBuf,
        /// The requested ratio.
        target: f64,
        /// Why it is unreachable, with the achievable range.
        detail: String,
    },
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
