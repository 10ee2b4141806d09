//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading an encoder or a classification head, or while embedding text.
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
        /// What we were doing ("read", "list", ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A model folder lacks a file the encoder needs.
    #[error("{}: no {what} found (expected {expected})", dir.display())]
    MissingFile {
        /// The folder given to [`SentenceEncoder::load_dir`](crate::SentenceEncoder::load_dir).
        dir: PathBuf,
        /// Which part is missing ("weights", "config", "tokenizer").
        what: &'static str,
        /// The file names that were looked for.
        expected: String,
    },

    /// `config.json` is not a BERT configuration we can run.
    #[error("{}: not a usable BERT config.json: {reason}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },

    /// The tokenizer file could not be loaded or configured.
    #[error("{}: cannot load tokenizer: {reason}", path.display())]
    Tokenizer {
        /// `tokenizer.json` or `vocab.txt`.
        path: PathBuf,
        /// What the tokenizers library reported.
        reason: String,
    },

    /// The tokenizer knows more tokens than the model has embedding rows.
    #[error(
        "{}: tokenizer has {tokenizer_vocab} tokens but the model vocabulary has {model_vocab} rows (expected at most {model_vocab})",
        tokenizer.display()
    )]
    VocabMismatch {
        /// The tokenizer file.
        tokenizer: PathBuf,
        /// Tokens in the tokenizer, added tokens included.
        tokenizer_vocab: usize,
        /// `vocab_size` of the model config.
        model_vocab: usize,
    },

    /// The BERT weights could not be read from the checkpoint.
    #[error("{}: cannot load BERT weights: {source}", path.display())]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What candle reported (names the missing or mis-shaped tensor).
        #[source]
        source: candle_core::Error,
    },

    /// Tokenizing the input texts failed.
    #[error("tokenization of text {index} failed: {reason}")]
    Tokenize {
        /// Index of the text in the slice given to `embed`.
        index: usize,
        /// What the tokenizers library reported.
        reason: String,
    },

    /// The BERT forward pass or the pooling failed.
    #[error("BERT forward pass failed on a batch of {batch} texts: {source}")]
    Forward {
        /// Number of texts in the failing batch.
        batch: usize,
        /// What candle reported.
        #[source]
        source: candle_core::Error,
    },

    /// The safetensors file holding a classification head is malformed.
    #[error("{}: invalid safetensors file: {reason}", path.display())]
    Safetensors {
        /// The checkpoint.
        path: PathBuf,
        /// What the safetensors reader reported.
        reason: String,
    },

    /// A classification-head tensor is missing or has the wrong dtype or shape.
    #[error("{}: tensor {tensor}: {reason}", path.display())]
    Tensor {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// What was found and what was expected.
        reason: String,
    },

    /// A task description (`task.json`), its examples file, its reference outputs or an in-domain pair file is
    /// malformed.
    #[error("{}: invalid task file: {reason}", path.display())]
    Task {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },

    /// A GGUF file cannot be converted: unreadable, another architecture, or missing metadata or tensors.
    #[error("{}: cannot convert GGUF: {reason}", path.display())]
    Gguf {
        /// The GGUF file.
        path: PathBuf,
        /// What was found and what was expected.
        reason: String,
    },

    /// A LLaMA model folder cannot be loaded or run (config, weights, tokenizer or chat template).
    #[error("{}: {reason}", path.display())]
    Llama {
        /// The file or folder involved.
        path: PathBuf,
        /// What was found and what was expected.
        reason: String,
    },

    /// An option or argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
