//! The one deterministic random-number source of the pruning code, and seed mixing.
//!
//! [`DetRng`] wraps `rand_chacha::ChaCha8Rng` seeded with `seed_from_u64` and uses only its
//! `next_u64` output: bounded integers come from our own unbiased Lemire reduction
//! ([`DetRng::below`]) and unit floats from the top 53 bits ([`DetRng::unit_f64`]), so results
//! never depend on `rand`'s distribution code. ChaCha8 is one of the generators `rand`
//! documents as portable across platforms and versions; golden-value tests pin the streams.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// Deterministic, portable random-number generator (ChaCha8, `next_u64` only).
#[derive(Clone, Debug)]
pub struct DetRng {
    inner: ChaCha8Rng,
}

impl DetRng {
    /// Generator seeded with `ChaCha8Rng::seed_from_u64(seed)`.
    pub fn new(seed: u64) -> Self {
        DetRng {
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform integer in `0..n` by Lemire's multiply-and-reject method (unbiased).
    /// Returns 0 when `n` is 0 or 1 without consuming randomness for `n == 0`.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        let mut low = m as u64;
        if low < n {
            // Reject the `2^64 mod n` lowest products so every result is equally likely.
            let threshold = n.wrapping_neg() % n;
            while low < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
                low = m as u64;
            }
        }
        (m >> 64) as u64
    }

    /// Uniform float in `[0, 1)` with 53 random bits: `(next_u64() >> 11) · 2^-53`.
    #[inline]
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The splitmix64 finaliser (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives a child seed from a parent seed and an index or hash: `splitmix64(a ^ splitmix64(b))`.
/// Used for per-tensor seeds, per-level-group streams and per-block streams.
#[inline]
pub fn mix(a: u64, b: u64) -> u64 {
    splitmix64(a ^ splitmix64(b))
}
