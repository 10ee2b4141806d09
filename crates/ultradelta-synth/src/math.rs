//! Portable random-number plumbing: key derivation, per-block ChaCha8 streams, and our own
//! uniform / normal / Student-t transforms.
//!
//! Everything here uses only IEEE-754 basic operations (`+ - * /`, `sqrt`) and integer bit
//! manipulation, never the platform's `ln`/`sin`/`cos`, so the generated values are the same
//! bits on every platform, not just on every thread count.

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// SplitMix64 finaliser: a bijective 64-bit mixer.
#[inline]
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over the bytes of `s` (stable, dependency-free string hash).
#[inline]
pub(crate) fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in s.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Which independent random stream of a tensor is meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamRole {
    /// Base weights.
    Base = 1,
    /// Dense heavy-tailed part of the delta.
    Noise = 2,
    /// Low-rank factors U and V of the delta.
    LowRank = 3,
    /// Per-tensor scale jitter.
    Jitter = 4,
}

/// 256-bit ChaCha key derived from (seed, tensor name, role) only.
pub(crate) fn derive_key(seed: u64, name: &str, role: StreamRole) -> [u8; 32] {
    let mut state = splitmix64(seed ^ splitmix64(fnv1a64(name) ^ (role as u64).rotate_left(48)));
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        state = splitmix64(state);
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    key
}

/// A ChaCha8 generator on stream `stream` of `key`. Every block of a tensor gets its own stream,
/// so a block's values never depend on which thread produced the blocks before it.
pub(crate) fn stream_rng(key: &[u8; 32], stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::from_seed(*key);
    rng.set_stream(stream);
    rng
}

/// A uniform value in [0, 1) from a 64-bit hash (for per-tensor jitter).
pub(crate) fn unit_from_u64(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Fills `words` with little-endian u32 words from `rng` (endianness-independent).
pub(crate) fn fill_u32(rng: &mut ChaCha8Rng, words: &mut [u32], bytes: &mut Vec<u8>) {
    bytes.clear();
    bytes.resize(words.len() * 4, 0);
    rng.fill_bytes(bytes);
    for (w, b) in words.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

const TWO_POW_M24: f32 = 1.0 / 16_777_216.0;
const LN2: f32 = std::f32::consts::LN_2;
const SQRT2: f32 = std::f32::consts::SQRT_2;
const FRAC_PI_2: f32 = std::f32::consts::FRAC_PI_2;

/// Uniform in the open interval (0, 1) from the top 24 bits of `x`.
#[inline(always)]
pub(crate) fn open_unit(x: u32) -> f32 {
    (((x >> 8) as i32) as f32 + 0.5) * TWO_POW_M24
}

/// Uniform in [0, 1) from the top 24 bits of `x`.
#[inline(always)]
fn half_open_unit(x: u32) -> f32 {
    ((x >> 8) as i32) as f32 * TWO_POW_M24
}

/// Adding then subtracting 1.5·2²³ rounds an f32 of magnitude below 2²² to the nearest integer
/// (ties to even), and leaves that integer in the low mantissa bits of the sum.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Natural logarithm of a positive, normal, finite `x` (relative error below 1e-6).
/// Branch-free (vectorisable): `x = m·2^e` with `m` in [√½, √2), then the atanh series of `m`.
#[inline(always)]
pub(crate) fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 127;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > SQRT2;
    let m = if big { m * 0.5 } else { m };
    let e = e + i32::from(big);
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let poly = 1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0))));
    e as f32 * LN2 + 2.0 * s * poly
}

/// (sin 2πu, cos 2πu) for u in [0, 1) (absolute error below 1e-6). Branch-free (vectorisable).
#[inline(always)]
pub(crate) fn sincos_turns(u: f32) -> (f32, f32) {
    let v = u * 4.0;
    let rounded = v + ROUND_MAGIC;
    let q = rounded.to_bits(); // nearest quadrant in the low bits
    let t = (v - (rounded - ROUND_MAGIC)) * FRAC_PI_2; // t in [-π/4, π/4]
    let t2 = t * t;
    let s = t
        * (1.0
            + t2 * (-1.0 / 6.0
                + t2 * (1.0 / 120.0 + t2 * (-1.0 / 5040.0 + t2 * (1.0 / 362_880.0)))));
    let c = 1.0
        + t2 * (-0.5
            + t2 * (1.0 / 24.0
                + t2 * (-1.0 / 720.0 + t2 * (1.0 / 40_320.0 + t2 * (-1.0 / 3_628_800.0)))));
    // angle = q·π/2 + t: odd quadrants swap sin and cos; quadrants 2,3 negate sin, 1,2 negate cos.
    let swap = 0u32.wrapping_sub(q & 1);
    let (sb, cb) = (s.to_bits(), c.to_bits());
    let sin_bits = ((sb & !swap) | (cb & swap)) ^ ((q & 2) << 30);
    let cos_bits = ((cb & !swap) | (sb & swap)) ^ ((q.wrapping_add(1) & 2) << 30);
    (f32::from_bits(sin_bits), f32::from_bits(cos_bits))
}

/// Box–Muller: two standard normals from two 32-bit words (24 bits for the radius, 24 for the
/// angle). The radius is capped at about 5.9σ by the 24-bit uniform; irrelevant here.
#[inline(always)]
pub(crate) fn normal_pair(hi: u32, lo: u32) -> (f32, f32) {
    let r = (-2.0 * ln(open_unit(hi))).sqrt();
    let (s, c) = sincos_turns(half_open_unit(lo));
    (r * c, r * s)
}

/// Fills `out` with standard normals from `out.len().div_ceil(2)` pairs of u32 words of `rng`.
/// Pair `i` gives `out[i]` and `out[h + i]` (`h = len / 2`); an odd last element uses the last pair.
pub(crate) fn fill_normals(
    rng: &mut ChaCha8Rng,
    out: &mut [f32],
    words: &mut Vec<u32>,
    bytes: &mut Vec<u8>,
) {
    let pairs = out.len().div_ceil(2);
    words.clear();
    words.resize(pairs * 2, 0);
    fill_u32(rng, words, bytes);
    let h = out.len() / 2;
    let (first, rest) = out.split_at_mut(h);
    let (second, tail) = rest.split_at_mut(h);
    let (hi, lo) = words.split_at(pairs);
    for (((a, b), &x), &y) in first.iter_mut().zip(second.iter_mut()).zip(hi).zip(lo) {
        let (p, q) = normal_pair(x, y);
        *a = p;
        *b = q;
    }
    if let Some(last) = tail.first_mut() {
        *last = normal_pair(hi[pairs - 1], lo[pairs - 1]).0;
    }
}

/// Degrees of freedom of the Student-t noise.
pub const STUDENT_T_DOF: f64 = 5.0;

/// Fills `out` with Student-t (ν = 5) draws standardised to unit variance:
/// `t = Z·sqrt(3/χ²₅)` with `χ²₅ = −2 ln(U₁U₂) + Z₂²` (variance of t₅ is 5/3).
pub(crate) fn fill_student_t5(
    rng: &mut ChaCha8Rng,
    out: &mut [f32],
    normals: &mut Vec<f32>,
    words: &mut Vec<u32>,
    bytes: &mut Vec<u8>,
) {
    let n = out.len();
    normals.clear();
    normals.resize(2 * n, 0.0);
    fill_normals(rng, normals, words, bytes);
    words.clear();
    words.resize(2 * n, 0);
    fill_u32(rng, words, bytes);
    let (z, z2) = normals.split_at(n);
    let (w1, w2) = words.split_at(n);
    for ((((o, &z), &z2), &a), &b) in out.iter_mut().zip(z).zip(z2).zip(w1).zip(w2) {
        let chi2 = -2.0 * ln(open_unit(a) * open_unit(b)) + z2 * z2;
        *o = z * (3.0 / chi2).sqrt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chacha8_golden_value() {
        // Pins the generator: DEPENDENCIES.md §5 records this value for seed 42.
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        assert_eq!(rng.next_u64(), 12_578_764_544_318_200_737);
    }

    #[test]
    fn ln_matches_std_closely() {
        let mut x = 1e-30f32;
        while x < 1e30 {
            let want = f64::from(x).ln();
            let got = f64::from(ln(x));
            assert!(
                (got - want).abs() <= 2e-6 * want.abs().max(1.0),
                "ln({x}) = {got}, want {want}"
            );
            x *= 1.37;
        }
        assert_eq!(ln(1.0), 0.0);
    }

    #[test]
    fn sincos_matches_std_closely() {
        for i in 0..100_000 {
            let u = i as f32 / 100_000.0;
            let (s, c) = sincos_turns(u);
            let a = 2.0 * std::f64::consts::PI * f64::from(u);
            assert!((f64::from(s) - a.sin()).abs() < 1e-6, "sin at {u}");
            assert!((f64::from(c) - a.cos()).abs() < 1e-6, "cos at {u}");
        }
    }

    #[test]
    fn normals_have_unit_moments() {
        let mut rng = stream_rng(&derive_key(7, "x", StreamRole::Base), 0);
        let mut v = vec![0f32; 400_001];
        fill_normals(&mut rng, &mut v, &mut Vec::new(), &mut Vec::new());
        let (mean, sd, excess_kurtosis) = crate::tests::moments(&v);
        let (var, kurt) = (sd * sd, excess_kurtosis + 3.0);
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
        assert!((kurt - 3.0).abs() < 0.05, "kurtosis {kurt}");
    }

    #[test]
    fn keys_differ_by_seed_name_and_role() {
        let a = derive_key(0, "a", StreamRole::Base);
        assert_ne!(a, derive_key(1, "a", StreamRole::Base));
        assert_ne!(a, derive_key(0, "b", StreamRole::Base));
        assert_ne!(a, derive_key(0, "a", StreamRole::Noise));
        assert_eq!(a, derive_key(0, "a", StreamRole::Base));
    }
}
