//! Quantize-then-group-wise-prune for UltraDelta: uniform b-bit quantization and stratified (DAC) pruning.
//!
//! This crate owns the per-tensor value pipeline of ALGORITHM.md §1 and §3: fitting a uniform
//! quantizer ([`Quantizer::fit`]), mapping values to levels ([`quantize`]), distribution-aware stratified pruning
//! ([`group_prune`]), the DARE-style Bernoulli ablation ([`random_prune`]) and the seeds and
//! random streams they use ([`tensor_seed`], [`rng`]). What the archive format fixes byte for byte — the
//! quantizer's parameters and decoding formula ([`QuantParams`], [`QuantParams::dequantize`]), the ChaCha8
//! stream and seed mixing, the seeded position sampler — is `ultradelta_core`'s, re-exported here. It is IO-free:
//! slices in, buffers out.
//! It must not know tensor names beyond hashing one into a seed, files, archives, allocation
//! policy, or rescaling: survivors are returned as levels, and the caller stores the rescale
//! factor computed elsewhere.
//!
//! # Rounding convention
//! Everywhere in the project a value `x` maps to the level
//! `((x - lo) / step).round()` computed in **f32** (round half away from zero), clamped to
//! `[0, 2^bits - 1]`, and a level `l` decodes to `lo + (l as f32) * step` in f32. Use
//! [`Quantizer::quantize_one`] and [`QuantParams::dequantize`]; do not re-derive them.
//!
//! # Determinism
//! Results depend only on the inputs and the seed, never on the rayon thread count: parallel
//! work is split into fixed blocks or per-level groups, each with its own random stream
//! derived by [`rng::mix`], and results are assembled in index order.

pub mod fit;
#[allow(unsafe_code)] // AVX2 intrinsics behind a run-time CPU check; see the module.
pub mod fused;
pub mod rng;
pub mod seeded;
#[allow(unsafe_code)] // a `target_feature` call behind a run-time CPU check, and a prefetch hint.
pub mod simd;

use std::collections::HashMap;

use rayon::prelude::*;

use crate::rng::{mix, DetRng};

/// Errors of the quantize-group-prune crate. The caller adds the tensor and file names.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bit width is 0 or above 16.
    #[error("quantization bit width {bits} is not in 1..=16")]
    InvalidBits {
        /// The bit width given.
        bits: u8,
    },
    /// The data holds a NaN or an infinity.
    #[error("element {index} is {value}, expected a finite number")]
    NonFinite {
        /// Index of the first offending element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// `max - min` does not fit in an f32, so the levels cannot be represented.
    #[error("value range [{lo}, {hi}] is too wide for f32 quantization")]
    RangeTooLarge {
        /// Smallest value.
        lo: f32,
        /// Largest value.
        hi: f32,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Elements per parallel work unit in [`quantize`], [`QuantParams::fit`] and scans.
const CHUNK: usize = 1 << 16;

pub use ultradelta_core::QuantParams;

/// The writer's side of [`QuantParams`] (whose decoding formula, [`QuantParams::dequantize`], is part of the
/// archive format and lives in `ultradelta_core`): fitting a quantizer to data and mapping values to levels.
/// Import it to call `QuantParams::fit`, `quantize_one` and `quantize_slice`.
pub trait Quantizer: Sized {
    /// Fits `lo = min`, `hi = max`, `step = (hi - lo) / (2^bits - 1)` (computed in f64, stored as
    /// f32). A constant (or empty) tensor gets `step = 0` and keeps `bits`; an empty tensor
    /// gets `lo = 0`. A range so narrow that `step` underflows to 0 is treated as constant.
    ///
    /// # Errors
    /// [`Error::InvalidBits`] if `bits` is 0 or above 16; [`Error::NonFinite`] at the first NaN or
    /// infinity; [`Error::RangeTooLarge`] if `hi - lo` exceeds `f32::MAX`.
    fn fit(delta: &[f32], bits: u8) -> Result<Self>;

    /// THE encoding formula: `((x - lo) / step).round()` in f32 (half away from zero), clamped to
    /// `[0, 2^bits - 1]`; 0 when `step == 0` (constant tensor) and for NaN input.
    fn quantize_one(&self, x: f32) -> u16;

    /// [`quantize_one`](Self::quantize_one) of every value of `xs` into `out` (same length), single-threaded: the
    /// kernel of [`quantize`], for callers that produce the values chunk by chunk and quantize each chunk while it
    /// is in cache.
    fn quantize_slice(&self, xs: &[f32], out: &mut [u16]);
}

impl Quantizer for QuantParams {
    fn fit(delta: &[f32], bits: u8) -> Result<QuantParams> {
        if bits == 0 || bits > 16 {
            return Err(Error::InvalidBits { bits });
        }
        // Per chunk: (first non-finite index, min, max). Combining is order-independent.
        let scan = delta
            .par_chunks(CHUNK)
            .enumerate()
            .map(|(c, chunk)| chunk_extremes(c, chunk))
            .reduce(|| NO_EXTREMES, combine_extremes);
        quant_from_extremes(scan, delta.len(), bits, |i| delta[i])
    }

    #[inline]
    fn quantize_one(&self, x: f32) -> u16 {
        if self.step == 0.0 {
            return 0;
        }
        level_of(x, self.lo, self.step, self.max_level())
    }

    #[inline]
    fn quantize_slice(&self, xs: &[f32], out: &mut [u16]) {
        if self.step == 0.0 {
            out.fill(0);
            return;
        }
        let (lo, step, max) = (self.lo, self.step, self.max_level());
        for (o, &x) in out.iter_mut().zip(xs) {
            *o = level_of(x, lo, step, max);
        }
    }
}

/// The quantizer of `n` values whose per-[`CHUNK`] extremes combine to `scan`; `value(i)` reads value `i`
/// (for the error message of a non-finite one). `bits` must already be checked.
pub(crate) fn quant_from_extremes(
    scan: Extremes,
    n: usize,
    bits: u8,
    value: impl Fn(usize) -> f32,
) -> Result<QuantParams> {
    if let (Some(index), _, _) = scan {
        return Err(Error::NonFinite {
            index,
            value: value(index),
        });
    }
    let (_, lo, hi) = scan;
    if n == 0 {
        return Ok(QuantParams {
            bits,
            lo: 0.0,
            step: 0.0,
        });
    }
    let range = f64::from(hi) - f64::from(lo);
    if range > f64::from(f32::MAX) {
        return Err(Error::RangeTooLarge { lo, hi });
    }
    let top = f64::from((1u32 << bits) - 1);
    let step = (range / top) as f32;
    Ok(QuantParams { bits, lo, step })
}

/// `((x - lo) / step).round().max(0.0).min(max)` (NaN maps to 0) for `step != 0`, without the libm call:
/// clamping to [-1, max + 1] first changes nothing after the final clamp, and in that range truncation plus
/// "fraction >= 0.5" is rounding half away from zero (`v - trunc(v)` is exact). Branch-free, so loops over it
/// vectorise.
#[inline(always)]
pub(crate) fn level_of(x: f32, lo: f32, step: f32, max: u16) -> u16 {
    let v = ((x - lo) / step).max(-1.0).min(f32::from(max) + 1.0);
    let t = v as i32;
    let r = t + i32::from(v - t as f32 >= 0.5);
    r.clamp(0, i32::from(max)) as u16
}

/// Minimum, maximum and "every value is finite" of `xs`, in one branch-free (vectorisable) pass. With a
/// non-finite value present the extremes are meaningless.
#[inline]
fn min_max_finite(xs: &[f32]) -> (f32, f32, bool) {
    const LANES: usize = 16;
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let mut finite = [true; LANES];
    let mut it = xs.chunks_exact(LANES);
    for c in &mut it {
        for k in 0..LANES {
            lo[k] = lo[k].min(c[k]);
            hi[k] = hi[k].max(c[k]);
            finite[k] &= c[k].abs() < f32::INFINITY;
        }
    }
    let (mut l, mut h, mut f) = (f32::INFINITY, f32::NEG_INFINITY, true);
    for &x in it.remainder() {
        l = l.min(x);
        h = h.max(x);
        f &= x.abs() < f32::INFINITY;
    }
    for k in 0..LANES {
        l = l.min(lo[k]);
        h = h.max(hi[k]);
        f &= finite[k];
    }
    (l, h, f)
}

/// One chunk's scan for [`QuantParams::fit`]: (index of the first non-finite value, minimum, maximum).
type Extremes = (Option<usize>, f32, f32);

/// The identity of [`combine_extremes`].
const NO_EXTREMES: Extremes = (None, f32::INFINITY, f32::NEG_INFINITY);

/// Combines two chunks' [`Extremes`] (the left one first in index order).
fn combine_extremes(a: Extremes, b: Extremes) -> Extremes {
    let bad = match (a.0, b.0) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    (bad, a.1.min(b.1), a.2.max(b.2))
}

/// True when a chunk's vectorised (lo, hi, finite) scan settles it: every value finite and neither extreme ±0
/// (a non-zero extreme has one bit pattern whatever the order of comparison).
#[inline]
fn extremes_are_settled(lo: f32, hi: f32, finite: bool) -> bool {
    finite && lo != 0.0 && hi != 0.0
}

/// The sequential reference scan of chunk `c` from the state `(lo, hi)`: the extremes in index order and the
/// first non-finite value. Chunks a vectorised scan cannot settle go through it, in pieces if need be (`at` is
/// the index of `xs[0]` in the tensor).
#[inline]
fn sequential_extremes(xs: &[f32], at: usize, lo: &mut f32, hi: &mut f32) -> Option<usize> {
    for (i, &x) in xs.iter().enumerate() {
        if !x.is_finite() {
            return Some(at + i);
        }
        *lo = lo.min(x);
        *hi = hi.max(x);
    }
    None
}

/// [`Extremes`] of chunk `c` (its values `chunk`).
fn chunk_extremes(c: usize, chunk: &[f32]) -> Extremes {
    let (lo, hi, finite) = simd::wide(|| min_max_finite(chunk));
    if extremes_are_settled(lo, hi, finite) {
        return (None, lo, hi);
    }
    // Non-finite data, or an extreme of ±0 whose sign depends on the order of comparison: the sequential scan
    // (the reference order).
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    let bad = sequential_extremes(chunk, c * CHUNK, &mut lo, &mut hi);
    (bad, lo, hi)
}

/// Quantizes `delta` into `out` with [`Quantizer::quantize_one`], in parallel fixed chunks
/// (each element is independent, so the result does not depend on the thread count).
///
/// # Panics
/// If `out.len() != delta.len()` (a caller bug, not a data error).
pub fn quantize(delta: &[f32], p: &QuantParams, out: &mut [u16]) {
    assert_eq!(
        delta.len(),
        out.len(),
        "quantize: output buffer length differs from input length"
    );
    out.par_chunks_mut(CHUNK)
        .zip(delta.par_chunks(CHUNK))
        .for_each(|(o, d)| simd::wide(|| p.quantize_slice(d, o)));
}

/// Count of each level: `counts[l]` = number of entries equal to `l`; the length is
/// `max(levels) + 1` (empty for empty input).
pub fn level_counts(levels: &[u16]) -> Vec<u64> {
    let Some(max) = max_level_of(levels) else {
        return Vec::new();
    };
    let size = usize::from(max) + 1;
    levels
        .par_chunks(CHUNK)
        .fold(
            || vec![0u64; size],
            |mut h, chunk| {
                add_histogram(chunk, &mut h);
                h
            },
        )
        .reduce(|| vec![0u64; size], add_counts)
}

/// Largest level (None for empty input), in parallel vectorisable chunks.
fn max_level_of(levels: &[u16]) -> Option<u16> {
    levels
        .par_chunks(CHUNK)
        .map(|c| c.iter().copied().fold(0u16, u16::max))
        .reduce_with(u16::max)
}

/// Adds the level histogram of `chunk` into `h` (`h.len()` must exceed every level). Four interleaved
/// sub-histograms break the store-to-load dependency of runs of equal levels.
#[inline]
fn add_histogram(chunk: &[u16], h: &mut [u64]) {
    let size = h.len();
    let mut sub = vec![0u32; 4 * size];
    for part in chunk.chunks(1 << 30) {
        let mut it = part.chunks_exact(4);
        for c in &mut it {
            sub[usize::from(c[0])] += 1;
            sub[size + usize::from(c[1])] += 1;
            sub[2 * size + usize::from(c[2])] += 1;
            sub[3 * size + usize::from(c[3])] += 1;
        }
        for &l in it.remainder() {
            sub[usize::from(l)] += 1;
        }
        for (g, x) in h.iter_mut().enumerate() {
            *x += u64::from(sub[g])
                + u64::from(sub[size + g])
                + u64::from(sub[2 * size + g])
                + u64::from(sub[3 * size + g]);
        }
        sub.fill(0);
    }
}

/// Population standard deviation of the dequantized values, in f64: computed exactly from the
/// level histogram (integer counts, so independent of the thread count), each level valued at
/// `dequantize(level) as f64`. 0 for empty input.
pub fn quantized_std(levels: &[u16], p: &QuantParams) -> f64 {
    quantized_std_from_counts(&level_counts(levels), p)
}

/// The level histogram of `delta` quantized with `p` (as [`level_counts`] of [`quantize`]'s output, without
/// materialising the levels): `counts[l]` entries at level `l`, trimmed after the highest level present (empty
/// for empty input).
pub fn quantized_counts(delta: &[f32], p: &QuantParams) -> Vec<u64> {
    let size = usize::from(p.max_level()) + 1;
    let mut counts = delta
        .par_chunks(CHUNK)
        .fold(
            || vec![0u64; size],
            |mut h, chunk| {
                let mut levels = [0u16; 4096];
                simd::wide(|| {
                    for part in chunk.chunks(levels.len()) {
                        let l = &mut levels[..part.len()];
                        p.quantize_slice(part, l);
                        add_histogram(l, &mut h);
                    }
                });
                h
            },
        )
        .reduce(|| vec![0u64; size], add_counts);
    trim_counts(&mut counts);
    counts
}

/// Two histograms of the same length added (the combine step of the parallel counts).
fn add_counts(mut a: Vec<u64>, b: Vec<u64>) -> Vec<u64> {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
    a
}

/// Drops a histogram's trailing zero counts (it ends at the highest level present).
fn trim_counts(counts: &mut Vec<u64>) {
    let used = counts.iter().rposition(|&c| c > 0).map_or(0, |l| l + 1);
    counts.truncate(used);
}

/// [`quantized_std`] from a level histogram (`counts[l]` entries at level `l`, as [`level_counts`] returns).
pub fn quantized_std_from_counts(counts: &[u64], p: &QuantParams) -> f64 {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    let value = |l: usize| f64::from(p.dequantize(l as u16));
    let mean = counts
        .iter()
        .enumerate()
        .map(|(l, &c)| c as f64 * value(l))
        .sum::<f64>()
        / n;
    let var = counts
        .iter()
        .enumerate()
        .map(|(l, &c)| {
            let d = value(l) - mean;
            c as f64 * d * d
        })
        .sum::<f64>()
        / n;
    var.sqrt()
}

/// Survivors of pruning: positions (ascending, unique) and their levels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Flat indices of the kept entries, strictly ascending.
    pub positions: Vec<u64>,
    /// Level of each kept entry (same length as `positions`).
    pub levels: Vec<u16>,
}

impl Pruned {
    /// Number of kept entries.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// True when nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// Shortest block of [`group_prune`]'s selection pass.
const MIN_BLOCK: usize = 1 << 16;
/// Bound on `blocks × groups` (memory of the per-block level histograms).
const MAX_BLOCK_CELLS: usize = 1 << 22;

/// Share of the non-zero entries that DAC drops, given the tensor's target `rate` and the
/// share `s0` of entries that are already zero: `max(0, (rate - s0) / (1 - s0))`, with
/// `rate <= 0` (or NaN) meaning 0 and `rate >= 1` meaning 1.
pub fn dac_group_rate(rate: f64, s0: f64) -> f64 {
    if rate.is_nan() || rate <= 0.0 {
        0.0
    } else if rate >= 1.0 {
        1.0
    } else if s0 >= 1.0 {
        0.0
    } else {
        ((rate - s0) / (1.0 - s0)).clamp(0.0, 1.0)
    }
}

/// Number of entries DAC drops from a group of `n` non-zero entries at group rate `r`:
/// `round(n · r)` (half away from zero), at most `n`.
pub fn dac_drop_count(n: u64, r: f64) -> u64 {
    ((n as f64 * r).round() as u64).min(n)
}

/// Scan state of one level group in [`group_prune`]'s selection pass.
struct GroupCursor {
    ordinal: u64,
    next: u64,
    cursor: usize,
    keep_listed: bool,
}

/// Which within-group ordinals a group lists, and whether the listed ones are kept or dropped.
struct Selection {
    /// Sorted ordinals (rank of the entry among its group's entries, in position order).
    listed: Vec<u64>,
    /// True: listed ordinals are kept, others dropped. False: listed are dropped.
    keep_listed: bool,
}

/// Hashes the slot indices of [`sample_ordinals`]' sparse map with one multiply-xorshift (the keys are not
/// adversarial, and the map's contents, not its iteration order, determine the result).
#[derive(Clone, Copy, Default)]
struct SlotHasher;

impl std::hash::BuildHasher for SlotHasher {
    type Hasher = SlotHash;
    fn build_hasher(&self) -> SlotHash {
        SlotHash(0)
    }
}

/// The hasher of [`SlotHasher`].
struct SlotHash(u64);

impl std::hash::Hasher for SlotHash {
    fn finish(&self) -> u64 {
        let x = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^ (x >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Sorts `v`, whose values are all below `bound`: an LSD radix sort (11-bit digits, only as many passes as
/// `bound` needs) for long inputs, the standard sort for short ones. The result is the sorted order either way.
fn sort_below(v: &mut Vec<u64>, bound: u64) {
    const DIGIT: u32 = 11;
    const RADIX: usize = 1 << DIGIT;
    if v.len() < 1 << 12 {
        v.sort_unstable();
        return;
    }
    let bits = 64 - bound.saturating_sub(1).leading_zeros();
    let mut src = std::mem::take(v);
    let mut dst = vec![0u64; src.len()];
    let mut shift = 0;
    while shift < bits {
        let mut count = [0usize; RADIX];
        for &x in &src {
            count[((x >> shift) as usize) & (RADIX - 1)] += 1;
        }
        let mut sum = 0;
        for c in count.iter_mut() {
            let k = *c;
            *c = sum;
            sum += k;
        }
        for &x in &src {
            let d = ((x >> shift) as usize) & (RADIX - 1);
            dst[count[d]] = x;
            count[d] += 1;
        }
        std::mem::swap(&mut src, &mut dst);
        shift += DIGIT;
    }
    *v = src;
}

thread_local! {
    /// The scratch of [`sample_sorted`], kept by each worker thread across level groups and tensors: allocating,
    /// zeroing and unmapping it per group costs more than the draws.
    static SAMPLE_SCRATCH: std::cell::RefCell<SampleScratch> = const {
        std::cell::RefCell::new(SampleScratch {
            touched: Vec::new(),
            chosen: Vec::new(),
            table: Vec::new(),
        })
    };
}

/// The partial Fisher–Yates shuffle's virtual array `[0, 1, .., n-1]` without materialising it: a bitset of the
/// slots that hold something else than their index, and an open-addressing table of what they hold; plus the
/// bitset of the values drawn so far (the sample, read out in order at the end).
struct SampleScratch {
    /// Bit `x` set: slot `x` was overwritten (its value is in the table).
    touched: Vec<u64>,
    /// Bit `v` set: value `v` was drawn.
    chosen: Vec<u64>,
    /// Table entries `slot << 32 | value` ([`EMPTY_SLOT`] when free), a power of two long.
    table: Vec<u64>,
}

/// Free entry of [`SampleScratch`]'s table (slot indices are below `n ≤ u32::MAX`, so no entry has this key).
const EMPTY_SLOT: u64 = u64::MAX;

#[inline(always)]
fn bit(words: &[u64], i: u64) -> bool {
    words[(i >> 6) as usize] >> (i & 63) & 1 != 0
}

#[inline(always)]
fn set_bit(words: &mut [u64], i: u64) {
    words[(i >> 6) as usize] |= 1 << (i & 63);
}

impl SampleScratch {
    /// The table's home slot of key `x` (Fibonacci hashing into `mask + 1 ≤ 2^32` slots).
    #[inline(always)]
    fn home(x: u32, mask: usize) -> usize {
        ((u64::from(x).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize) & mask
    }

    /// The value of overwritten slot `x` (it must be in the table).
    #[inline(always)]
    fn get(&self, x: u32) -> u32 {
        let mask = self.table.len() - 1;
        let mut h = Self::home(x, mask);
        while (self.table[h] >> 32) as u32 != x {
            h = (h + 1) & mask;
        }
        self.table[h] as u32
    }

    /// Slot `x` now holds `v`.
    #[inline(always)]
    fn put(&mut self, x: u32, v: u32) {
        let mask = self.table.len() - 1;
        let mut h = Self::home(x, mask);
        while self.table[h] != EMPTY_SLOT && (self.table[h] >> 32) as u32 != x {
            h = (h + 1) & mask;
        }
        self.table[h] = u64::from(x) << 32 | u64::from(v);
    }
}

#[cfg(test)]
fn sample_ordinals(n: u64, m: u64, rng: &mut DetRng) -> Vec<u64> {
    let mut moved: HashMap<u64, u64, SlotHasher> = HashMap::with_hasher(SlotHasher);
    sample_ordinals_sparse(n, m, rng, &mut moved)
}

/// The partial Fisher–Yates shuffle with the touched slots in a map, in draw order (any `n`).
fn sample_ordinals_sparse(
    n: u64,
    m: u64,
    rng: &mut DetRng,
    moved: &mut HashMap<u64, u64, SlotHasher>,
) -> Vec<u64> {
    let mut out = Vec::with_capacity(m as usize);
    for j in 0..m {
        let x = j + rng.below(n - j);
        let at_j = moved.get(&j).copied().unwrap_or(j);
        let at_x = moved.get(&x).copied().unwrap_or(x);
        // Slot j is never read again; only slot x keeps the displaced value.
        moved.insert(x, at_j);
        out.push(at_x);
    }
    out
}

/// Picks `m` distinct ordinals from `0..n` uniformly by a partial Fisher–Yates shuffle of the virtual array
/// `[0, 1, .., n-1]` — step `j` swaps slot `j` with slot `j + below(n - j)` and takes the value that lands in
/// slot `j` — and returns them sorted.
///
/// Up to `n = u32::MAX` the array lives in `s` ([`SampleScratch`]: 2 bits per slot plus 8 bytes per draw, where
/// a dense array took 4 random-access bytes per slot); beyond, in a hash map. Both give the draws of the dense
/// array exactly.
fn sample_sorted(n: u64, m: u64, rng: &mut DetRng, s: &mut SampleScratch) -> Vec<u64> {
    if n > u64::from(u32::MAX) {
        let mut moved = HashMap::with_capacity_and_hasher(2 * m as usize, SlotHasher);
        let mut out = sample_ordinals_sparse(n, m, rng, &mut moved);
        sort_below(&mut out, n);
        return out;
    }
    let words = (n as usize >> 6) + 1;
    for v in [&mut s.touched, &mut s.chosen] {
        v.clear();
        v.resize(words, 0);
    }
    let cap = (2 * m as usize).next_power_of_two().max(64);
    s.table.clear();
    s.table.resize(cap, EMPTY_SLOT);
    let mask = cap - 1;
    // Draws are made a batch ahead and their table and bitset lines prefetched: the slots are random, so each
    // step would otherwise wait for its cache misses one after the other.
    const BATCH: u64 = 32;
    let mut xs = [0u64; BATCH as usize];
    for j0 in (0..m).step_by(BATCH as usize) {
        let batch = &mut xs[..(m - j0).min(BATCH) as usize];
        for (k, x) in batch.iter_mut().enumerate() {
            let j = j0 + k as u64;
            *x = j + rng.below(n - j);
            simd::prefetch(&s.table, SampleScratch::home(*x as u32, mask));
            simd::prefetch(&s.touched, (*x >> 6) as usize);
            simd::prefetch(&s.chosen, (*x >> 6) as usize);
        }
        for (k, &x) in batch.iter().enumerate() {
            let j = j0 + k as u64;
            let at_j = if bit(&s.touched, j) {
                s.get(j as u32)
            } else {
                j as u32
            };
            let at_x = if bit(&s.touched, x) {
                s.get(x as u32)
            } else {
                x as u32
            };
            // Slot j is never read again; only slot x keeps the displaced value.
            s.put(x as u32, at_j);
            set_bit(&mut s.touched, x);
            set_bit(&mut s.chosen, u64::from(at_x));
        }
    }
    let mut out = Vec::with_capacity(m as usize);
    for (w, &bits) in s.chosen.iter().enumerate() {
        let mut b = bits;
        while b != 0 {
            out.push(((w as u64) << 6) | u64::from(b.trailing_zeros()));
            b &= b - 1;
        }
    }
    out
}

/// DAC: stratified prune (ALGORITHM.md §3). `rate` is this tensor's target sparsity.
///
/// Entries whose dequantized value is exactly `0.0` are already zero: they are never kept and
/// their share `s0` counts toward the target, so `r = max(0, (rate - s0)/(1 - s0))`
/// ([`dac_group_rate`]). In every other level group `g` of size `n_g`, exactly
/// `round(n_g · r)` entries are dropped ([`dac_drop_count`]), chosen uniformly at random by a
/// partial Fisher–Yates shuffle driven by `DetRng::new(mix(seed, g))` (it draws the smaller of
/// the dropped and kept sets). `rate <= 0` keeps every non-zero entry; `rate >= 1` keeps none.
/// Groups are sampled in parallel and the kept set is assembled in position order, so the
/// result is the same whatever the thread count.
pub fn group_prune(levels: &[u16], p: &QuantParams, rate: f64, seed: u64) -> Pruned {
    let n = levels.len();
    if n == 0 {
        return Pruned::default();
    }
    let Some(max_level) = max_level_of(levels) else {
        return Pruned::default();
    };
    let groups = usize::from(max_level) + 1;
    let max_blocks = (MAX_BLOCK_CELLS / groups).max(1);
    let blocks = n.div_ceil(MIN_BLOCK).clamp(1, max_blocks);
    let block_len = n.div_ceil(blocks);

    // Per-block level histograms, then turned into each block's starting ordinal per group.
    let mut starts: Vec<Vec<u64>> = levels
        .par_chunks(block_len)
        .map(|chunk| {
            let mut h = vec![0u64; groups];
            add_histogram(chunk, &mut h);
            h
        })
        .collect();
    let mut totals = vec![0u64; groups];
    for h in starts.iter_mut() {
        for (t, c) in totals.iter_mut().zip(h.iter_mut()) {
            let count = *c;
            *c = *t;
            *t += count;
        }
    }

    let selections = select_groups(&totals, p, rate, seed);
    let parts: Vec<Pruned> = levels
        .par_chunks(block_len)
        .zip(starts.par_iter())
        .enumerate()
        .map(|(b, (chunk, start))| {
            let mut out = Pruned::default();
            Walker::new(&selections, start).walk(chunk, (b * block_len) as u64, &mut out);
            out
        })
        .collect();
    concat(parts)
}

/// DAC's choice in every level group of a tensor whose level histogram is `totals` (`totals[g]` entries at
/// level `g`): which ordinals each group lists and whether they are kept (see [`group_prune`]). Groups are
/// sampled in parallel, each with its own stream, so the result does not depend on the thread count.
fn select_groups(totals: &[u64], p: &QuantParams, rate: f64, seed: u64) -> Vec<Selection> {
    let n: u64 = totals.iter().sum();
    let is_zero = |g: usize| p.dequantize(g as u16) == 0.0;
    let zeros: u64 = (0..totals.len())
        .filter(|&g| is_zero(g))
        .map(|g| totals[g])
        .sum();
    let r = dac_group_rate(rate, zeros as f64 / n.max(1) as f64);
    (0..totals.len())
        .into_par_iter()
        .map(|g| {
            let size = totals[g];
            if is_zero(g) || size == 0 {
                return Selection {
                    listed: Vec::new(),
                    keep_listed: true,
                };
            }
            let drop = dac_drop_count(size, r);
            let keep = size - drop;
            if drop == 0 || keep == 0 {
                return Selection {
                    listed: Vec::new(),
                    keep_listed: keep == 0,
                };
            }
            let mut rng = DetRng::new(mix(seed, g as u64));
            let keep_listed = keep < drop;
            let listed = SAMPLE_SCRATCH
                .with_borrow_mut(|s| sample_sorted(size, keep.min(drop), &mut rng, s));
            Selection {
                listed,
                keep_listed,
            }
        })
        .collect()
}

/// DAC's position walk over one stretch of a tensor's levels, entry by entry: an entry is kept when whether its
/// ordinal within its level group is listed matches the group's `keep_listed`. The reference walk; the fused
/// kernels' bit-mask walk must keep exactly the same entries.
struct Walker<'s> {
    selections: &'s [Selection],
    /// Per group: entries of the group seen so far (ordinal of the next one), the next listed ordinal
    /// (u64::MAX when none is left), the cursor into `listed`, and whether listed entries are kept.
    state: Vec<GroupCursor>,
}

impl<'s> Walker<'s> {
    /// A walk starting where `start[g]` entries of each group `g` precede it.
    fn new(selections: &'s [Selection], start: &[u64]) -> Self {
        let state = selections
            .iter()
            .zip(start)
            .map(|(s, &o)| {
                let cursor = s.listed.partition_point(|&x| x < o);
                GroupCursor {
                    ordinal: o,
                    next: s.listed.get(cursor).copied().unwrap_or(u64::MAX),
                    cursor,
                    keep_listed: s.keep_listed,
                }
            })
            .collect();
        Walker { selections, state }
    }

    /// Walks `chunk` (the entries from position `base` on), appending the kept ones to `out`.
    fn walk<L: Copy + Into<u16>>(&mut self, chunk: &[L], base: u64, out: &mut Pruned) {
        for (i, &l) in chunk.iter().enumerate() {
            let l: u16 = l.into();
            let g = usize::from(l);
            let st = &mut self.state[g];
            let listed = st.ordinal == st.next;
            st.ordinal += 1;
            if listed {
                st.cursor += 1;
                st.next = self.selections[g]
                    .listed
                    .get(st.cursor)
                    .copied()
                    .unwrap_or(u64::MAX);
            }
            if listed == st.keep_listed {
                out.positions.push(base + i as u64);
                out.levels.push(l);
            }
        }
    }
}

fn concat(parts: Vec<Pruned>) -> Pruned {
    let total: usize = parts.iter().map(Pruned::len).sum();
    let mut out = Pruned {
        positions: Vec::with_capacity(total),
        levels: Vec::with_capacity(total),
    };
    for part in parts {
        out.positions.extend_from_slice(&part.positions);
        out.levels.extend_from_slice(&part.levels);
    }
    out
}

/// Block length of [`random_prune`]: each block has its own random stream.
pub const RANDOM_BLOCK: usize = 1 << 16;
/// Domain separator mixed into [`random_prune`]'s seed so its streams differ from DAC's.
const RANDOM_DOMAIN: u64 = 0x4441_5245_2d42_4552; // "DARE-BER"

/// Plain DARE-style Bernoulli drop (ablation `--no-dac`): each entry is dropped independently
/// with probability `rate` (it draws `u = unit_f64()` and is kept iff `u >= rate`), so the kept
/// histogram matches the original only on average. Entries whose dequantized value is exactly
/// `0.0` are never kept (storing them would cost bytes for nothing); they still consume their
/// draw. Block `b` of [`RANDOM_BLOCK`] entries uses `DetRng::new(mix(mix(seed, DOMAIN), b))`,
/// so the result does not depend on the thread count. `rate <= 0` (or NaN) keeps every
/// non-zero entry; `rate >= 1` keeps none.
pub fn random_prune(levels: &[u16], p: &QuantParams, rate: f64, seed: u64) -> Pruned {
    let rate = if rate.is_nan() { 0.0 } else { rate };
    let stream = mix(seed, RANDOM_DOMAIN);
    let parts: Vec<Pruned> = levels
        .par_chunks(RANDOM_BLOCK)
        .enumerate()
        .map(|(b, chunk)| {
            let mut rng = DetRng::new(mix(stream, b as u64));
            let base = (b * RANDOM_BLOCK) as u64;
            let mut out = Pruned::default();
            for (i, &l) in chunk.iter().enumerate() {
                let u = rng.unit_f64();
                if u >= rate && p.dequantize(l) != 0.0 {
                    out.positions.push(base + i as u64);
                    out.levels.push(l);
                }
            }
            out
        })
        .collect();
    concat(parts)
}

pub use ultradelta_core::tensor_seed;

#[cfg(test)]
mod tests;
