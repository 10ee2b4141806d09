//! Quality evaluation for UltraDelta experiments.
//!
//! This crate owns the *measurement* side of the experiments on real models: a CPU sentence encoder for BERT
//! checkpoints of the all-MiniLM-L6-v2 architecture ([`SentenceEncoder`], candle + a `tokenizers` WordPiece
//! pipeline), the metrics that say how much of a fine-tune a compressed delta keeps ([`fidelity`],
//! [`retention`], [`centroid_probe`], [`LinearHead`], [`pair_retrieval`] on the committed in-domain pairs of
//! [`read_pairs`]), and the testbed's fine-tuned classification tasks
//! ([`Task`]: labels, fixed splits, the training stack's reference outputs). It reads safetensors checkpoints,
//! `config.json`, tokenizer and task files from folders the caller names; it knows nothing about delta
//! compression, archives or how the checkpoints were produced, and never downloads anything.
//!
//! For decoder models it converts a llama.cpp GGUF into a Hugging Face LLaMA folder ([`gguf::convert_gguf`]),
//! runs a LLaMA causal LM for perplexity and greedy generation ([`llama::CausalLm`]) and formats
//! prompt/response pairs in the model's ChatML chat template ([`chat`]).
//!
//! ```no_run
//! use std::path::Path;
//! use ultradelta_eval::{fidelity, retention, SentenceEncoder};
//!
//! # fn main() -> Result<(), ultradelta_eval::Error> {
//! let texts = ["pod keeps crashing", "CrashLoopBackOff"];
//! let base = SentenceEncoder::load_dir(Path::new("target/testbed/models/base"))?.embed(&texts)?;
//! let ft = SentenceEncoder::load_dir(Path::new("target/testbed/models/sre"))?.embed(&texts)?;
//! let comp = SentenceEncoder::load_dir(Path::new("target/sre-compressed"))?.embed(&texts)?;
//! println!("fidelity {:.4} retention {:.4}", fidelity(&comp, &ft), retention(&comp, &ft, &base));
//! # Ok(())
//! # }
//! ```

pub mod chat;
mod encoder;
mod error;
pub mod gguf;
mod head;
pub mod llama;
mod metrics;
mod pairs;
mod task;

pub use encoder::{SentenceEncoder, DEFAULT_BATCH_SIZE, DEFAULT_MAX_TOKENS};
pub use error::{Error, Result};
pub use head::LinearHead;
pub use metrics::{
    argmax, centroid_probe, cosine, distance, fidelity, gain_retention, pair_cosine,
    pair_retrieval, retention, Retrieval,
};
pub use pairs::{indomain_data_dir, parse_pairs, read_pairs, TextPair, PAIRS_HEADER};
pub use task::{read_examples, Example, ReferenceOutput, Task};
