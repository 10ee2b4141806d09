//! What the UltraDelta archive format (docs/FORMAT.md) specifies byte for byte and both its writer and its reader
//! must compute identically: the dtype codes ([`DType`]), the quantizer's decoding formula as plain data
//! ([`QuantParams`], [`QuantParams::dequantize`]), the portable ChaCha8 stream and seed mixing ([`rng`]:
//! [`DetRng`], [`mix`], [`tensor_seed`]), and the seeded position sampler ([`seeded`]: [`SeededSample`],
//! [`trial_seed`]). It must NOT know how deltas are computed or stored: no quantizer fitting, pruning, trial
//! search, record layouts, files or IO live here (those are `ultradelta-qgp` and `ultradelta-archive`). It depends
//! on no other workspace crate, so the format crate and the compute crates can share these definitions without
//! depending on each other. One thing here is not the format's: [`blas::serialized`], the process-wide lock
//! around OpenBLAS that the compute crates (`ultradelta-rescale`, `ultradelta-baselines`) share, because they must
//! not depend on each other and Debian 12's OpenBLAS is unsafe to call from two threads at once.
//!
//! ```
//! use ultradelta_core::{seeded_positions, trial_seed, DType, QuantParams};
//!
//! assert_eq!(DType::BF16.code(), 4);
//! let q = QuantParams { bits: 2, lo: -0.5, step: 0.25 };
//! assert_eq!(q.dequantize(3), 0.25);
//! // The positions a kind-11 record with seed 7, trial 1, 5 of 1000 entries kept, decodes to.
//! let positions = seeded_positions(1000, 5, trial_seed(7, 1));
//! assert_eq!(positions.len(), 5);
//! ```

pub mod blas;
pub mod dtype;
pub mod quant;
pub mod rng;
pub mod seeded;

pub use dtype::DType;
pub use quant::QuantParams;
pub use rng::{mix, splitmix64, tensor_seed, DetRng};
pub use seeded::{seeded_positions, trial_seed, SeededSample};
