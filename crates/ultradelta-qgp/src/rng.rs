//! The one deterministic random-number source of the pruning code, and seed mixing: `ultradelta_core`'s (the
//! seeded positions of the archive format are drawn from the same stream), re-exported here.
//!
//! [`DetRng`] wraps `rand_chacha::ChaCha8Rng` seeded with `seed_from_u64` and uses only its `next_u64` output:
//! bounded integers come from an unbiased Lemire reduction ([`DetRng::below`]) and unit floats from the top 53
//! bits ([`DetRng::unit_f64`]), so results never depend on `rand`'s distribution code.

pub use ultradelta_core::rng::{mix, splitmix64, DetRng};
