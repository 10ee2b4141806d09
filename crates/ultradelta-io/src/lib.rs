//! Tensor IO for UltraDelta. This crate owns every byte that goes to or comes from a checkpoint: opening
//! single-file, folder and sharded Hugging Face checkpoints read-only through memory maps, in safetensors or in
//! PyTorch's `torch.save` format (validating the untrusted headers, pickles and index json before use; a pickle is
//! interpreted as data, never run), borrowing tensor bytes and converting float tensors to `f32`,
//! pairing the tensors of a base and a fine-tuned checkpoint by name, and writing checkpoints back (streamed tensor by
//! tensor, sharded when large, crash-safe through a temp folder and a rename). It must NOT know anything about
//! compression: no sparsity, quantization, rescaling or archive format lives here.
//!
//! ```
//! use ultradelta_io::{f32_to_bytes, write_checkpoint, Checkpoint, DType, TensorInfo, WriterOptions};
//! # fn main() -> ultradelta_io::Result<()> {
//! # let tmp = std::env::temp_dir().join(format!("ultradelta-io-doc-{}", std::process::id()));
//! let mut bytes = Vec::new();
//! f32_to_bytes(&[1.0, 2.0, 3.0, 4.0], DType::BF16, &mut bytes)?;
//! let info = TensorInfo::new("layer.weight", DType::BF16, vec![2, 2]);
//! let dir = write_checkpoint(tmp.join("ckpt"), &[(info, bytes)], WriterOptions::default())?;
//!
//! let ckpt = Checkpoint::open(&dir)?;
//! let values = ckpt.view("layer.weight")?.to_f32()?;
//! assert_eq!(values, [1.0, 2.0, 3.0, 4.0]);
//! # std::fs::remove_dir_all(&tmp).ok();
//! # Ok(())
//! # }
//! ```
//!
//! The only `unsafe` is the memory-map constructor (see `Checkpoint::open`): a weight file must not be modified
//! while a [`Checkpoint`] built from it is alive.

mod checkpoint;
mod convert;
mod dtype;
mod error;
mod exchange;
mod header;
mod torch;
mod writer;

#[cfg(test)]
mod tests;

pub use checkpoint::{
    pair, Checkpoint, Pairing, TensorView, INDEX_FILE_NAME, MAX_COMPANION_BYTES,
    MAX_COMPANION_COUNT, MAX_COMPANION_DEPTH, SINGLE_FILE_NAME, TORCH_FILE_NAME,
    TORCH_INDEX_FILE_NAME,
};
pub use convert::{bytes_to_f32, f32_to_bytes, PAR_CHUNK};
pub use dtype::{DType, TensorInfo};
pub use error::{check_regular_file, Error, Result};
pub use header::MAX_HEADER_BYTES;
pub use torch::{MAX_PICKLE_BYTES, MAX_PICKLE_NODES, MAX_ZIP_ENTRIES};
pub use writer::{
    check_companion_name, recover_leftovers, write_checkpoint, CheckpointWriter, WriterOptions,
    DIRECT_IO_ALIGN,
};
