//! Fused kernels: Δ = fine-tuned − base is computed, quantized and counted or pruned in one pass over the two
//! tensors' values, block by block, with no tensor-sized buffer.
//!
//! The slice-based functions of this crate take a materialised Δ (4 bytes per entry) and its levels (2 more);
//! at LLaMA size that is gigabytes of memory traffic per tensor pair on top of reading the inputs. Here a
//! [`DeltaSource`] yields Δ a few thousand entries at a time (straight from the checkpoints' bf16 or f16 bytes
//! when it can, in AVX2 registers when the CPU has it), and:
//!
//! - [`fit_source`] equals [`QuantParams::fit`] of the materialised Δ (same per-chunk ±0 and non-finite rules);
//! - [`scan_levels`] gives the level histogram (as [`crate::quantized_counts`]) and, for `bits ≤ 4`, the
//!   histogram of every [`BLOCK`] of entries;
//! - [`group_prune_source`] equals [`crate::group_prune`] of the materialised levels: with pass 1's block
//!   histograms every block knows its starting ordinal in each level group, so blocks are quantized and pruned
//!   independently, in parallel, and the walk tests 64 entries at a time against each group with bit masks.
//!
//! Every result is bit-identical to the slice-based reference whatever the CPU or thread count; the tests
//! compare them on random data with the vector paths on and off.
//!
//! How, in more detail. Pass 1 makes two sweeps per tensor: the extremes (the quantizer, with
//! [`QuantParams::fit`]'s per-chunk ±0 and non-finite rules), then the levels and their histogram per block (for
//! `bits ≤ 4`: 64 bytes per block, kept for every tensor until pass 2, i.e. 1 byte per 1,024 parameters: 68 MB
//! for a 70B model). Pass 2 samples DAC's kept ordinals per level group (a partial Fisher–Yates over a bitset of
//! touched slots and a prefetched open-addressing table, read out sorted from a bitset: the same draws as the
//! dense array, without its 4 random-access bytes per entry), then quantizes and prunes every block independently
//! and in parallel: the block histograms give each block its starting ordinal in every group, and the walk tests
//! 64 entries at a time with one compare mask per group (AVX-512BW or AVX2), picking listed entries out with
//! `pdep` where the CPU has it in hardware (`select_bits` in software elsewhere, e.g. AMD before Zen 3). bf16 and
//! f16 sources are converted in AVX2 registers (f16 with F16C). Wider bit widths (no block histograms) quantize
//! into one reused level buffer and prune with [`crate::group_prune`].

use rayon::prelude::*;

use crate::{
    add_counts, chunk_extremes, combine_extremes, concat, extremes_are_settled, level_of,
    select_groups, sequential_extremes, simd, trim_counts, Error, Extremes, Pruned, QuantParams,
    Quantizer, Result, Selection, Walker, CHUNK, NO_EXTREMES,
};

/// Entries per block: the unit of parallel work and of [`LevelScan`]'s per-block histograms. Equal to the
/// chunk of [`QuantParams::fit`], whose ±0 rule is per chunk.
pub const BLOCK: usize = CHUNK;

/// Entries converted and quantized at a time inside a block (their f32 values and levels stay in L1).
const SUB: usize = 4096;

/// Most level groups (`2^bits`) for which [`scan_levels`] keeps per-block histograms and
/// [`group_prune_source`] prunes block by block: `bits ≤ 4`.
pub const FUSED_GROUPS: usize = 16;

/// A fill function of [`DeltaSource::Fill`]: writes Δ of entries `start .. start + out.len()` into `out`.
pub type FillFn<'a> = &'a (dyn Fn(usize, &mut [f32]) + Sync);

/// Where a tensor's Δ comes from, a range at a time.
#[derive(Clone, Copy)]
pub enum DeltaSource<'a> {
    /// Both tensors stored as little-endian bf16 (2 bytes per entry, equal lengths): Δ = f32(ft) − f32(base).
    Bf16 {
        /// The base tensor's bytes.
        base: &'a [u8],
        /// The fine-tuned tensor's bytes.
        ft: &'a [u8],
    },
    /// Both tensors stored as little-endian IEEE half precision (2 bytes per entry, equal lengths).
    F16 {
        /// The base tensor's bytes.
        base: &'a [u8],
        /// The fine-tuned tensor's bytes.
        ft: &'a [u8],
    },
    /// Δ already in memory.
    F32(&'a [f32]),
    /// Any other layout: `fill(start, out)` writes Δ of entries `start .. start + out.len()` (it must not fail:
    /// the caller checks dtypes and lengths first).
    Fill {
        /// Number of entries.
        len: usize,
        /// The fill function.
        fill: FillFn<'a>,
    },
}

impl DeltaSource<'_> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            DeltaSource::Bf16 { ft, .. } | DeltaSource::F16 { ft, .. } => ft.len() / 2,
            DeltaSource::F32(d) => d.len(),
            DeltaSource::Fill { len, .. } => *len,
        }
    }

    /// True for an empty tensor.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes Δ of entries `start .. start + out.len()` into `out` (portable code; the vector kernels convert
    /// 16-bit floats in registers instead).
    pub fn delta_into(&self, start: usize, out: &mut [f32]) {
        match self {
            DeltaSource::Bf16 { base, ft } => half_delta::<Bf16>(base, ft, start, out),
            DeltaSource::F16 { base, ft } => half_delta::<F16>(base, ft, start, out),
            DeltaSource::F32(d) => out.copy_from_slice(&d[start..start + out.len()]),
            DeltaSource::Fill { fill, .. } => fill(start, out),
        }
    }
}

impl DeltaSource<'_> {
    /// Δ of entry `i` (the value [`DeltaSource::delta_into`] writes for it).
    #[inline]
    pub fn delta_at(&self, i: usize) -> f32 {
        match self {
            DeltaSource::Bf16 { base, ft } => Bf16::at(&ft[2 * i..]) - Bf16::at(&base[2 * i..]),
            DeltaSource::F16 { base, ft } => F16::at(&ft[2 * i..]) - F16::at(&base[2 * i..]),
            DeltaSource::F32(d) => d[i],
            DeltaSource::Fill { fill, .. } => {
                let mut one = [0f32];
                fill(i, &mut one);
                one[0]
            }
        }
    }
}

/// Words of a seeded sample's mask per parallel work unit of [`levels_at_sample`] (2^18 entries).
const SAMPLE_WORDS: usize = 4096;

/// The levels of the source's Δ under `q` at `sample`'s kept positions, in increasing position order: what
/// [`levels_source`] followed by picking the kept entries gives, without the tensor-sized level buffer (one Δ
/// and [`Quantizer::quantize_one`], the formula every kernel implements, per kept entry; in parallel over
/// blocks of the sample's words, each writing its own slice of the result).
///
/// # Panics
/// If `sample` is not over the source's entries (`sample.numel() != src.len()`).
pub fn levels_at_sample(
    src: &DeltaSource<'_>,
    q: &QuantParams,
    sample: &ultradelta_core::seeded::SeededSample,
) -> Vec<u16> {
    assert_eq!(
        sample.numel(),
        src.len() as u64,
        "levels_at_sample: the sample is over another number of entries"
    );
    let words = sample.words();
    let blocks: Vec<std::ops::Range<usize>> = (0..words.div_ceil(SAMPLE_WORDS))
        .map(|b| b * SAMPLE_WORDS..((b + 1) * SAMPLE_WORDS).min(words))
        .collect();
    let counts: Vec<usize> = blocks
        .par_iter()
        .map(|ws| sample.kept_in(ws.clone()) as usize)
        .collect();
    let mut out = vec![0u16; counts.iter().sum()];
    let mut slices = Vec::with_capacity(blocks.len());
    let mut rest = out.as_mut_slice();
    for &c in &counts {
        let (head, tail) = rest.split_at_mut(c);
        slices.push(head);
        rest = tail;
    }
    slices
        .into_par_iter()
        .zip(blocks.into_par_iter())
        .for_each(|(o, ws)| {
            let mut k = 0;
            sample.for_each_in(ws, |p| {
                o[k] = q.quantize_one(src.delta_at(p as usize));
                k += 1;
            });
        });
    out
}

/// A 16-bit float format of [`DeltaSource`]: how one value widens to f32 (exactly).
trait Half {
    /// The value of the bit pattern `bits`.
    fn widen(bits: u16) -> f32;
    /// The value of the little-endian bytes `b[0..2]`.
    #[inline(always)]
    fn at(b: &[u8]) -> f32 {
        Self::widen(u16::from_le_bytes([b[0], b[1]]))
    }
}

/// bfloat16: the top half of an f32.
struct Bf16;

impl Half for Bf16 {
    #[inline(always)]
    fn widen(bits: u16) -> f32 {
        f32::from_bits(u32::from(bits) << 16)
    }
}

/// IEEE half precision (as `half::f16`, the conversion the checkpoint reader uses).
struct F16;

impl Half for F16 {
    #[inline(always)]
    fn widen(bits: u16) -> f32 {
        half::f16::from_bits(bits).to_f32()
    }
}

/// Δ of entries `start .. start + out.len()` of a 16-bit pair, portably.
fn half_delta<H: Half>(base: &[u8], ft: &[u8], start: usize, out: &mut [f32]) {
    let range = 2 * start..2 * (start + out.len());
    let (f, b) = (&ft[range.clone()], &base[range]);
    for ((d, f), b) in out.iter_mut().zip(f.chunks_exact(2)).zip(b.chunks_exact(2)) {
        *d = H::at(f) - H::at(b);
    }
}

/// Whether the vector kernels may run: the CPU has AVX2 (with F16C, which every AVX2 CPU has, and the
/// bit-manipulation instructions the walk uses),
/// and `allowed` (the tests turn them off to check the portable path).
#[inline]
fn use_avx2(allowed: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        allowed
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("f16c")
            && std::arch::is_x86_feature_detected!("popcnt")
            && std::arch::is_x86_feature_detected!("bmi1")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = allowed;
        false
    }
}

/// [`QuantParams::fit`] of the source's Δ, without materialising it: the same result, errors included.
///
/// # Errors
/// As [`QuantParams::fit`].
pub fn fit_source(src: &DeltaSource<'_>, bits: u8) -> Result<QuantParams> {
    fit_source_with(src, bits, true)
}

fn fit_source_with(src: &DeltaSource<'_>, bits: u8, vector: bool) -> Result<QuantParams> {
    if bits == 0 || bits > 16 {
        return Err(Error::InvalidBits { bits });
    }
    if let DeltaSource::F32(d) = src {
        return QuantParams::fit(d, bits);
    }
    let n = src.len();
    let avx2 = use_avx2(vector);
    let scan = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| source_chunk_extremes(src, c, avx2))
        .reduce(|| NO_EXTREMES, combine_extremes);
    crate::quant_from_extremes(scan, n, bits, |i| {
        let mut v = [0f32];
        src.delta_into(i, &mut v);
        v[0]
    })
}

/// [`chunk_extremes`] of chunk `c` of the source, a [`SUB`] piece at a time.
fn source_chunk_extremes(src: &DeltaSource<'_>, c: usize, avx2: bool) -> Extremes {
    let start = c * CHUNK;
    let end = (start + CHUNK).min(src.len());
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        let r = 2 * start..2 * end;
        // SAFETY: `use_avx2` checked the CPU.
        let vector = unsafe {
            match src {
                DeltaSource::Bf16 { base, ft } => {
                    Some(x86::pair_extremes::<Bf16>(&ft[r.clone()], &base[r]))
                }
                DeltaSource::F16 { base, ft } => {
                    Some(x86::pair_extremes::<F16>(&ft[r.clone()], &base[r]))
                }
                _ => None,
            }
        };
        if let Some((lo, hi, finite)) = vector {
            if extremes_are_settled(lo, hi, finite) {
                return (None, lo, hi);
            }
            return sequential_source_extremes(src, start, end);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = avx2;
    let mut buf = [0f32; SUB];
    let (mut lo, mut hi, mut finite) = (f32::INFINITY, f32::NEG_INFINITY, true);
    for s in (start..end).step_by(SUB) {
        let d = &mut buf[..(end - s).min(SUB)];
        src.delta_into(s, d);
        let (l, h, f) = simd::wide(|| crate::min_max_finite(d));
        lo = lo.min(l);
        hi = hi.max(h);
        finite &= f;
    }
    if extremes_are_settled(lo, hi, finite) {
        return (None, lo, hi);
    }
    if end - start <= SUB {
        return chunk_extremes(c, &buf[..end - start]);
    }
    sequential_source_extremes(src, start, end)
}

/// The sequential reference scan of entries `start..end` (one chunk), refilled a piece at a time.
fn sequential_source_extremes(src: &DeltaSource<'_>, start: usize, end: usize) -> Extremes {
    let mut buf = [0f32; SUB];
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for s in (start..end).step_by(SUB) {
        let d = &mut buf[..(end - s).min(SUB)];
        src.delta_into(s, d);
        if let Some(bad) = sequential_extremes(d, s, &mut lo, &mut hi) {
            return (Some(bad), lo, hi);
        }
    }
    (None, lo, hi)
}

/// Pass 1's scan of a tensor's levels: the level histogram and, for `bits ≤ 4`, every block's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelScan {
    /// `counts[l]` = entries at level `l`, trimmed after the highest level present (as
    /// [`crate::quantized_counts`]; empty for an empty tensor).
    pub counts: Vec<u64>,
    /// Per [`BLOCK`] of entries, its level histogram; empty when `2^bits` exceeds [`FUSED_GROUPS`].
    blocks: Vec<[u32; FUSED_GROUPS]>,
}

impl LevelScan {
    /// True when [`group_prune_source`] can prune block by block (it has every block's histogram).
    pub fn has_blocks(&self) -> bool {
        !self.blocks.is_empty()
    }
}

/// The level histogram of the source's Δ quantized with `q` (equal to [`crate::quantized_counts`] of the
/// materialised Δ), with per-block histograms when `2^q.bits ≤` [`FUSED_GROUPS`].
pub fn scan_levels(src: &DeltaSource<'_>, q: &QuantParams) -> LevelScan {
    scan_levels_with(src, q, true)
}

fn scan_levels_with(src: &DeltaSource<'_>, q: &QuantParams, vector: bool) -> LevelScan {
    let n = src.len();
    let groups = q.levels() as usize;
    let avx2 = use_avx2(vector);
    let mut counts;
    let mut blocks = Vec::new();
    if groups <= FUSED_GROUPS {
        blocks = (0..n.div_ceil(BLOCK))
            .into_par_iter()
            .map(|b| {
                let mut h = [0u32; FUSED_GROUPS];
                let mut lv = [0u8; SUB];
                let mut scratch = [0f32; SUB];
                let (start, end) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
                for s in (start..end).step_by(SUB) {
                    let l = &mut lv[..(end - s).min(SUB)];
                    levels_piece(src, s, q, l, &mut scratch, avx2);
                    #[cfg(target_arch = "x86_64")]
                    if avx2 {
                        // SAFETY: `use_avx2` checked the CPU.
                        unsafe { x86::count_levels(l, &mut h) };
                        continue;
                    }
                    count_u8(l, &mut h);
                }
                h
            })
            .collect();
        counts = vec![0u64; groups];
        for h in &blocks {
            for (c, &x) in counts.iter_mut().zip(h) {
                *c += u64::from(x);
            }
        }
    } else {
        counts = (0..n.div_ceil(BLOCK))
            .into_par_iter()
            .fold(
                || vec![0u64; groups],
                |mut h, b| {
                    let mut lv = [0u16; SUB];
                    let mut scratch = [0f32; SUB];
                    let (start, end) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
                    for s in (start..end).step_by(SUB) {
                        let l = &mut lv[..(end - s).min(SUB)];
                        levels_piece(src, s, q, l, &mut scratch, avx2);
                        crate::add_histogram(l, &mut h);
                    }
                    h
                },
            )
            .reduce(|| vec![0u64; groups], add_counts);
    }
    trim_counts(&mut counts);
    LevelScan { counts, blocks }
}

/// Adds the histogram of `levels` (each below [`FUSED_GROUPS`]) into `h`: four interleaved sub-histograms break
/// the store-to-load dependency of runs of equal levels.
#[inline]
fn count_u8(levels: &[u8], h: &mut [u32; FUSED_GROUPS]) {
    let mut sub = [[0u32; FUSED_GROUPS]; 4];
    let mut it = levels.chunks_exact(4);
    for c in &mut it {
        sub[0][usize::from(c[0] & 15)] += 1;
        sub[1][usize::from(c[1] & 15)] += 1;
        sub[2][usize::from(c[2] & 15)] += 1;
        sub[3][usize::from(c[3] & 15)] += 1;
    }
    for &l in it.remainder() {
        sub[0][usize::from(l & 15)] += 1;
    }
    for (g, x) in h.iter_mut().enumerate() {
        *x += sub[0][g] + sub[1][g] + sub[2][g] + sub[3][g];
    }
}

/// Writes the levels of the source's Δ under `q` into `out` (the tensor's length): [`crate::quantize`] of the
/// materialised Δ, in parallel blocks.
pub fn levels_source(src: &DeltaSource<'_>, q: &QuantParams, out: &mut [u16]) {
    levels_source_with(src, q, out, true);
}

fn levels_source_with(src: &DeltaSource<'_>, q: &QuantParams, out: &mut [u16], vector: bool) {
    assert_eq!(
        out.len(),
        src.len(),
        "levels_source: output length differs from the source's"
    );
    let avx2 = use_avx2(vector);
    out.par_chunks_mut(SUB).enumerate().for_each(|(k, o)| {
        let mut scratch = [0f32; SUB];
        levels_piece(src, k * SUB, q, o, &mut scratch, avx2);
    });
}

/// An integer type levels are written as: `u8` (at most 8 bits, the fused prune) or `u16`.
trait LevelInt: Copy + LevelStore {
    /// A level known to fit.
    fn from_level(l: u16) -> Self;
}

impl LevelInt for u8 {
    fn from_level(l: u16) -> Self {
        l as u8
    }
}

impl LevelInt for u16 {
    fn from_level(l: u16) -> Self {
        l
    }
}

/// How the AVX2 kernels store a type's levels (nothing to require elsewhere).
#[cfg(target_arch = "x86_64")]
use x86::Store32 as LevelStore;
#[cfg(not(target_arch = "x86_64"))]
trait LevelStore {}
#[cfg(not(target_arch = "x86_64"))]
impl LevelStore for u8 {}
#[cfg(not(target_arch = "x86_64"))]
impl LevelStore for u16 {}

/// Levels of entries `start .. start + out.len()` (at most [`SUB`]; `u8` only for at most 8 bits).
#[inline]
fn levels_piece<L: LevelInt>(
    src: &DeltaSource<'_>,
    start: usize,
    q: &QuantParams,
    out: &mut [L],
    scratch: &mut [f32; SUB],
    avx2: bool,
) {
    if q.step == 0.0 {
        out.fill(L::from_level(0));
        return;
    }
    let n = out.len();
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        let k = x86::Quant::new(q);
        // SAFETY: `use_avx2` checked the CPU.
        unsafe {
            match src {
                DeltaSource::Bf16 { base, ft } => {
                    let r = 2 * start..2 * (start + n);
                    x86::pair_levels::<Bf16, L>(&ft[r.clone()], &base[r], &k, out);
                }
                DeltaSource::F16 { base, ft } => {
                    let r = 2 * start..2 * (start + n);
                    x86::pair_levels::<F16, L>(&ft[r.clone()], &base[r], &k, out);
                }
                DeltaSource::F32(d) => x86::f32_levels(&d[start..start + n], &k, out),
                DeltaSource::Fill { fill, .. } => {
                    fill(start, &mut scratch[..n]);
                    x86::f32_levels(&scratch[..n], &k, out);
                }
            }
        }
        return;
    }
    let _ = avx2;
    let d = &mut scratch[..n];
    src.delta_into(start, d);
    let (lo, step, max) = (q.lo, q.step, q.max_level());
    simd::wide(|| {
        for (o, &x) in out.iter_mut().zip(d.iter()) {
            *o = L::from_level(level_of(x, lo, step, max));
        }
    });
}

/// DAC ([`crate::group_prune`]) of the source's Δ quantized with `scan`'s quantizer `q` at tensor rate `rate`:
/// exactly the survivors `group_prune` keeps from the materialised levels.
///
/// With per-block histograms ([`LevelScan::has_blocks`]) each block is quantized into a few kilobytes and
/// pruned at once, in parallel; otherwise the levels are written into `levels` (resized to the tensor's length,
/// a buffer the caller can reuse across tensors) and pruned from there.
pub fn group_prune_source(
    src: &DeltaSource<'_>,
    q: &QuantParams,
    scan: &LevelScan,
    rate: f64,
    seed: u64,
    levels: &mut Vec<u16>,
) -> Pruned {
    group_prune_source_with(src, q, scan, rate, seed, levels, Vector::Auto)
}

/// Which kernels [`group_prune_source`] runs (the tests try each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vector {
    /// The portable code.
    Off,
    /// The best the CPU has.
    Auto,
    /// AVX2 for the levels and this walk kernel (the CPU must have its instructions).
    #[cfg_attr(not(test), allow(dead_code))]
    Walk(WalkKernel),
}

/// The bit-mask walk's kernels (x86-64 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum WalkKernel {
    /// AVX-512BW compares straight into 64-bit masks, hardware `pdep`.
    Avx512Pdep,
    /// AVX2 compares, hardware `pdep`.
    Avx2Pdep,
    /// AVX2 compares, `pdep` in software (CPUs without BMI2, or whose `pdep` is microcoded).
    Avx2,
}

fn group_prune_source_with(
    src: &DeltaSource<'_>,
    q: &QuantParams,
    scan: &LevelScan,
    rate: f64,
    seed: u64,
    levels: &mut Vec<u16>,
    vector: Vector,
) -> Pruned {
    let n = src.len();
    if n == 0 || scan.counts.is_empty() {
        return Pruned::default();
    }
    if !scan.has_blocks() {
        levels.clear();
        levels.resize(n, 0);
        levels_source_with(src, q, levels, vector != Vector::Off);
        return crate::group_prune(levels, q, rate, seed);
    }
    let avx2 = use_avx2(vector != Vector::Off);
    #[cfg(target_arch = "x86_64")]
    let kernel = match vector {
        Vector::Walk(k) => k,
        _ if avx2 => x86::detect_walk_kernel(),
        _ => WalkKernel::Avx2,
    };
    let groups = scan.counts.len();
    let selections = select_groups(&scan.counts, q, rate, seed);
    // Each block's starting ordinal in every group: the histograms of the blocks before it.
    let mut starts = Vec::with_capacity(scan.blocks.len());
    let mut run = [0u64; FUSED_GROUPS];
    for h in &scan.blocks {
        starts.push(run);
        for (r, &x) in run.iter_mut().zip(h) {
            *r += u64::from(x);
        }
    }
    let parts: Vec<Pruned> = starts
        .par_iter()
        .enumerate()
        .map(|(b, start)| {
            let (first, end) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
            let kept: usize = selections
                .iter()
                .zip(start.iter().zip(&scan.blocks[b]))
                .map(|(s, (&o, &count))| s.kept_in_block(o, count))
                .sum();
            let mut out = Pruned {
                positions: Vec::with_capacity(kept),
                levels: Vec::with_capacity(kept),
            };
            // Levels padded to whole 64-entry words with a level no group has.
            let mut lv = [u8::MAX; SUB];
            let mut scratch = [0f32; SUB];
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                let mut walk = x86::MaskWalker::new(&selections, &start[..groups]);
                for s in (first..end).step_by(SUB) {
                    let len = (end - s).min(SUB);
                    levels_piece(src, s, q, &mut lv[..len], &mut scratch, true);
                    lv[len..].fill(u8::MAX);
                    // SAFETY: `use_avx2` checked the CPU; `kernel` is detected, or forced by a test on a CPU that has it.
                    unsafe { walk.walk(kernel, &lv, len, s as u64, &mut out) };
                }
                return out;
            }
            let _ = avx2;
            let mut walk = Walker::new(&selections, &start[..groups]);
            for s in (first..end).step_by(SUB) {
                let len = (end - s).min(SUB);
                levels_piece(src, s, q, &mut lv[..len], &mut scratch, false);
                walk.walk(&lv[..len], s as u64, &mut out);
            }
            out
        })
        .collect();
    concat(parts)
}

impl Selection {
    /// How many entries of this group a block keeps when it holds `count` of them from ordinal `from` on.
    fn kept_in_block(&self, from: u64, count: u32) -> usize {
        let count = count as usize;
        let listed = self.listed.partition_point(|&x| x < from + count as u64)
            - self.listed.partition_point(|&x| x < from);
        if self.keep_listed {
            listed
        } else {
            count - listed
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX2 kernels. Each computes exactly what the portable code computes: the same IEEE operations in the
    //! same order (subtract, subtract, divide, clamp, truncate, compare), only eight lanes at a time.

    use std::arch::x86_64::*;

    use super::WalkKernel;
    use crate::{Pruned, QuantParams, Selection};

    /// The quantizer's constants, broadcast.
    pub(super) struct Quant {
        lo: f32,
        step: f32,
        max: u16,
    }

    impl Quant {
        pub(super) fn new(q: &QuantParams) -> Self {
            Quant {
                lo: q.lo,
                step: q.step,
                max: q.max_level(),
            }
        }
    }

    /// Broadcast constants of [`Quant`] (built inside the AVX2 functions).
    struct Lanes {
        lo: __m256,
        step: __m256,
        neg1: __m256,
        top: __m256,
        half: __m256,
        zero: __m256i,
        max: __m256i,
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn lanes(k: &Quant) -> Lanes {
        Lanes {
            lo: _mm256_set1_ps(k.lo),
            step: _mm256_set1_ps(k.step),
            neg1: _mm256_set1_ps(-1.0),
            top: _mm256_set1_ps(f32::from(k.max) + 1.0),
            half: _mm256_set1_ps(0.5),
            zero: _mm256_setzero_si256(),
            max: _mm256_set1_epi32(i32::from(k.max)),
        }
    }

    /// `level_of` on eight lanes: `((x - lo) / step)` clamped to [-1, max + 1] (NaN → -1: `max_ps` returns its
    /// second operand when the first is NaN), truncated, plus one when the fraction is ≥ 0.5, clamped to
    /// [0, max].
    #[inline]
    #[target_feature(enable = "avx2")]
    fn level8(d: __m256, c: &Lanes) -> __m256i {
        let v = _mm256_div_ps(_mm256_sub_ps(d, c.lo), c.step);
        let v = _mm256_min_ps(_mm256_max_ps(v, c.neg1), c.top);
        let t = _mm256_cvttps_epi32(v);
        let frac = _mm256_sub_ps(v, _mm256_cvtepi32_ps(t));
        let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, c.half));
        let r = _mm256_sub_epi32(t, up);
        _mm256_min_epi32(_mm256_max_epi32(r, c.zero), c.max)
    }

    /// A 16-bit pair format the kernels convert in registers.
    pub(super) trait Pair: super::Half {
        /// Whether `_mm256_packus_epi32` of the levels of [`delta16`](Self::delta16)'s two vectors needs the
        /// 128-bit lane permute to come out in entry order.
        const PERMUTE: bool;
        /// Δ of the 16 pairs at `f`/`b` (32 bytes each) as two f32 vectors.
        ///
        /// # Safety
        /// 32 readable bytes at each pointer; the CPU has AVX2 and F16C.
        unsafe fn delta16(f: *const u8, b: *const u8) -> (__m256, __m256);
    }

    impl Pair for super::Bf16 {
        /// Entries 0–3 and 8–11 in the first vector, 4–7 and 12–15 in the second: the order
        /// `_mm256_packus_epi32` of the two restores.
        const PERMUTE: bool = false;

        #[inline(always)]
        unsafe fn delta16(f: *const u8, b: *const u8) -> (__m256, __m256) {
            // SAFETY: the caller guarantees 32 readable bytes at each pointer and AVX2.
            unsafe {
                let (f, b) = (
                    _mm256_loadu_si256(f.cast::<__m256i>()),
                    _mm256_loadu_si256(b.cast::<__m256i>()),
                );
                // bf16 → f32 is a 16-bit shift: interleaving zeros below each value.
                let z = _mm256_setzero_si256();
                let fl = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, f));
                let fh = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, f));
                let bl = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, b));
                let bh = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, b));
                (_mm256_sub_ps(fl, bl), _mm256_sub_ps(fh, bh))
            }
        }
    }

    impl Pair for super::F16 {
        /// Entries 0–7 in the first vector, 8–15 in the second.
        const PERMUTE: bool = true;

        #[inline(always)]
        unsafe fn delta16(f: *const u8, b: *const u8) -> (__m256, __m256) {
            // SAFETY: the caller guarantees 32 readable bytes at each pointer, AVX2 and F16C (`vcvtph2ps` widens
            // every half exactly).
            unsafe {
                let load = |p: *const u8| _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>()));
                let (f0, f1) = (load(f), load(f.add(16)));
                let (b0, b1) = (load(b), load(b.add(16)));
                (_mm256_sub_ps(f0, b0), _mm256_sub_ps(f1, b1))
            }
        }
    }

    /// Levels of 16 pairs as 16 u16 lanes, in entry order.
    ///
    /// # Safety
    /// As [`Pair::delta16`].
    #[inline(always)]
    unsafe fn pair_level16<H: Pair>(f: *const u8, b: *const u8, c: &Lanes) -> __m256i {
        // SAFETY: forwarded from the caller.
        unsafe {
            let (x, y) = H::delta16(f, b);
            let p = _mm256_packus_epi32(level8(x, c), level8(y, c));
            if H::PERMUTE {
                _mm256_permute4x64_epi64::<0b11_01_10_00>(p)
            } else {
                p
            }
        }
    }

    /// Levels of 16 f32 values as 16 u16 lanes, in entry order.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn f32_level16(x: *const f32, c: &Lanes) -> __m256i {
        // SAFETY: the caller guarantees 16 readable values.
        let (a, b) = unsafe { (_mm256_loadu_ps(x), _mm256_loadu_ps(x.add(8))) };
        // packus interleaves 128-bit lanes: (a0-3, b0-3, a4-7, b4-7); the permute restores a, b.
        let p = _mm256_packus_epi32(level8(a, c), level8(b, c));
        _mm256_permute4x64_epi64::<0b11_01_10_00>(p)
    }

    /// Two 16-level u16 vectors (entries 0–15, 16–31) as 32 bytes in entry order.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn narrow32(a: __m256i, b: __m256i) -> __m256i {
        _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(a, b))
    }

    /// The portable level of one value (the tails).
    #[inline]
    fn tail_level(d: f32, k: &Quant) -> u16 {
        crate::level_of(d, k.lo, k.step, k.max)
    }

    /// Stores 32 levels (two vectors of 16 u16 lanes, entries 0–15 and 16–31) at `out`.
    ///
    /// # Safety
    /// 32 writable values at `out`; the CPU has AVX2.
    pub(super) trait Store32: Sized {
        unsafe fn store32(lo: __m256i, hi: __m256i, out: *mut Self);
    }

    impl Store32 for u8 {
        #[inline(always)]
        unsafe fn store32(lo: __m256i, hi: __m256i, out: *mut u8) {
            // SAFETY: forwarded from the caller.
            unsafe { _mm256_storeu_si256(out.cast(), narrow32(lo, hi)) }
        }
    }

    impl Store32 for u16 {
        #[inline(always)]
        unsafe fn store32(lo: __m256i, hi: __m256i, out: *mut u16) {
            // SAFETY: forwarded from the caller.
            unsafe {
                _mm256_storeu_si256(out.cast(), lo);
                _mm256_storeu_si256(out.add(16).cast(), hi);
            }
        }
    }

    /// Levels of the 16-bit pairs `f`, `b` (2 bytes per entry) into `out` (`u8` only for at most 8 bits).
    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn pair_levels<H: Pair, L: super::LevelInt + Store32>(
        f: &[u8],
        b: &[u8],
        k: &Quant,
        out: &mut [L],
    ) {
        let n = out.len();
        assert!(f.len() == 2 * n && b.len() == 2 * n);
        let c = lanes(k);
        let whole = n / 32 * 32;
        for i in (0..whole).step_by(32) {
            // SAFETY: i + 32 ≤ n, so 64 bytes are readable at 2i in f and b, and 32 values writable at i in out;
            // the CPU has AVX2 and F16C (this function's features).
            unsafe {
                let lo = pair_level16::<H>(f.as_ptr().add(2 * i), b.as_ptr().add(2 * i), &c);
                let hi =
                    pair_level16::<H>(f.as_ptr().add(2 * i + 32), b.as_ptr().add(2 * i + 32), &c);
                L::store32(lo, hi, out.as_mut_ptr().add(i));
            }
        }
        for i in whole..n {
            let d = H::at(&f[2 * i..]) - H::at(&b[2 * i..]);
            out[i] = L::from_level(tail_level(d, k));
        }
    }

    /// Levels of the f32 values `d` into `out` (`u8` only for at most 8 bits).
    #[target_feature(enable = "avx2")]
    pub(super) fn f32_levels<L: super::LevelInt + Store32>(d: &[f32], k: &Quant, out: &mut [L]) {
        let n = out.len();
        assert_eq!(d.len(), n);
        let c = lanes(k);
        let whole = n / 32 * 32;
        for i in (0..whole).step_by(32) {
            // SAFETY: i + 32 ≤ n: 32 values readable at i in d and writable at i in out.
            unsafe {
                let lo = f32_level16(d.as_ptr().add(i), &c);
                let hi = f32_level16(d.as_ptr().add(i + 16), &c);
                L::store32(lo, hi, out.as_mut_ptr().add(i));
            }
        }
        for i in whole..n {
            out[i] = L::from_level(tail_level(d[i], k));
        }
    }

    /// (min, max, all finite) of Δ over the 16-bit pairs `f`, `b`. With a non-finite value the extremes are
    /// meaningless; with all values finite they are exact (a ±0 extreme's sign is left to the caller's
    /// sequential scan).
    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn pair_extremes<H: Pair>(f: &[u8], b: &[u8]) -> (f32, f32, bool) {
        let n = f.len() / 2;
        assert_eq!(b.len(), f.len());
        let (mut lo, mut hi) = (
            _mm256_set1_ps(f32::INFINITY),
            _mm256_set1_ps(f32::NEG_INFINITY),
        );
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let inf = _mm256_set1_ps(f32::INFINITY);
        let mut finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        let whole = n / 16 * 16;
        for i in (0..whole).step_by(16) {
            // SAFETY: i + 16 ≤ n: 32 bytes readable at 2i.
            // SAFETY: and the CPU has AVX2 and F16C (this function's features).
            let (x, y) = unsafe { H::delta16(f.as_ptr().add(2 * i), b.as_ptr().add(2 * i)) };
            lo = _mm256_min_ps(lo, _mm256_min_ps(x, y));
            hi = _mm256_max_ps(hi, _mm256_max_ps(x, y));
            let fx = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(x, abs), inf);
            let fy = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(y, abs), inf);
            finite = _mm256_and_ps(finite, _mm256_and_ps(fx, fy));
        }
        let mut l = [0f32; 8];
        let mut h = [0f32; 8];
        // SAFETY: 8 f32 each.
        unsafe {
            _mm256_storeu_ps(l.as_mut_ptr(), lo);
            _mm256_storeu_ps(h.as_mut_ptr(), hi);
        }
        let mut all_finite = _mm256_movemask_ps(finite) == 0xFF;
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for k in 0..8 {
            lo = lo.min(l[k]);
            hi = hi.max(h[k]);
        }
        for i in whole..n {
            let d = H::at(&f[2 * i..]) - H::at(&b[2 * i..]);
            lo = lo.min(d);
            hi = hi.max(d);
            all_finite &= d.is_finite();
        }
        (lo, hi, all_finite)
    }

    /// Adds the histogram of `levels` (each below [`FUSED_GROUPS`](super::FUSED_GROUPS), at most
    /// [`SUB`](super::SUB) of them) into `h`: per group, a byte compare of 32 levels at a time subtracted into byte
    /// counters (−1 per match), summed with `psadbw` at the end (128 steps stay below a byte's 255).
    #[target_feature(enable = "avx2")]
    pub(super) fn count_levels(levels: &[u8], h: &mut [u32; super::FUSED_GROUPS]) {
        const _: () = assert!(super::SUB / 32 <= 255);
        assert!(levels.len() <= super::SUB);
        let n = levels.len();
        let whole = n / 32 * 32;
        let zero = _mm256_setzero_si256();
        // Two halves of eight groups keep the counters and compare values in the sixteen registers.
        for half in 0..2u8 {
            let mut acc = [zero; 8];
            let g: [__m256i; 8] =
                std::array::from_fn(|k| _mm256_set1_epi8((8 * half + k as u8) as i8));
            for i in (0..whole).step_by(32) {
                // SAFETY: i + 32 ≤ n.
                let v = unsafe { _mm256_loadu_si256(levels.as_ptr().add(i).cast::<__m256i>()) };
                for k in 0..8 {
                    acc[k] = _mm256_sub_epi8(acc[k], _mm256_cmpeq_epi8(v, g[k]));
                }
            }
            for k in 0..8 {
                let s = _mm256_sad_epu8(acc[k], zero);
                let mut lanes = [0u64; 4];
                // SAFETY: 32 bytes.
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast::<__m256i>(), s) };
                h[usize::from(8 * half) + k] += lanes.iter().sum::<u64>() as u32;
            }
        }
        for &l in &levels[whole..] {
            h[usize::from(l & 15)] += 1;
        }
    }

    /// The bit mask of the 64 levels in `v0`, `v1` (entries 0–31, 32–63) equal to `level`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mask64(v0: __m256i, v1: __m256i, level: u8) -> u64 {
        let g = _mm256_set1_epi8(level as i8);
        let a = _mm256_movemask_epi8(_mm256_cmpeq_epi8(v0, g)) as u32;
        let b = _mm256_movemask_epi8(_mm256_cmpeq_epi8(v1, g)) as u32;
        u64::from(a) | (u64::from(b) << 32)
    }

    /// One tracked level group of [`MaskWalker`]: a group with listed ordinals.
    struct Tracked<'s> {
        level: u8,
        /// Entries of the group before the current word.
        ordinal: u64,
        /// The next listed ordinal (u64::MAX when none is left) and its index in `listed`.
        next: u64,
        cursor: usize,
        keep_listed: bool,
        listed: &'s [u64],
    }

    /// DAC's position walk 64 entries at a time: for each level group a bit mask of the word's entries at that
    /// level (two byte compares), its population count advances the group's ordinal, and only when a listed
    /// ordinal falls inside the word are the listed entries picked out bit by bit. Keeps exactly the entries
    /// the reference walk keeps.
    pub(super) struct MaskWalker<'s> {
        tracked: Vec<Tracked<'s>>,
        /// Groups whose every entry is kept (nothing dropped from them).
        keep_all: Vec<u8>,
    }

    impl<'s> MaskWalker<'s> {
        /// A walk starting after `start[g]` entries of each group `g`.
        pub(super) fn new(selections: &'s [Selection], start: &[u64]) -> Self {
            let mut tracked = Vec::new();
            let mut keep_all = Vec::new();
            for (g, (s, &o)) in selections.iter().zip(start).enumerate() {
                if s.listed.is_empty() {
                    // Nothing listed: every entry kept (listed ones dropped) or none (zero, empty or
                    // fully dropped groups).
                    if !s.keep_listed {
                        keep_all.push(g as u8);
                    }
                    continue;
                }
                let cursor = s.listed.partition_point(|&x| x < o);
                tracked.push(Tracked {
                    level: g as u8,
                    ordinal: o,
                    next: s.listed.get(cursor).copied().unwrap_or(u64::MAX),
                    cursor,
                    keep_listed: s.keep_listed,
                    listed: &s.listed,
                });
            }
            MaskWalker { tracked, keep_all }
        }

        /// Walks the first `len` entries of `levels` (padded past `len` with a level no group has, to whole
        /// 64-entry words), the entries from position `base` on, appending the kept ones to `out`, with the best
        /// kernel the CPU has ([`Kernel`]).
        ///
        /// # Safety
        /// The CPU must have `kernel`'s instructions ([`detect_walk_kernel`] picks such a kernel).
        pub(super) unsafe fn walk(
            &mut self,
            kernel: WalkKernel,
            levels: &[u8; super::SUB],
            len: usize,
            base: u64,
            out: &mut Pruned,
        ) {
            // SAFETY: the caller guarantees the CPU features of `kernel`.
            unsafe {
                match kernel {
                    WalkKernel::Avx512Pdep => self.walk_avx512_pdep(levels, len, base, out),
                    WalkKernel::Avx2Pdep => self.walk_avx2_pdep(levels, len, base, out),
                    WalkKernel::Avx2 => self.walk_avx2(levels, len, base, out),
                }
            }
        }

        #[target_feature(enable = "avx512f,avx512bw,avx2,bmi1,bmi2,popcnt")]
        fn walk_avx512_pdep(
            &mut self,
            levels: &[u8; super::SUB],
            len: usize,
            base: u64,
            out: &mut Pruned,
        ) {
            self.walk_words(
                levels,
                len,
                base,
                out,
                // SAFETY: w + 64 ≤ SUB.
                |w| unsafe { _mm512_loadu_si512(levels.as_ptr().add(w).cast()) },
                |v, g| _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(g as i8)),
                |win, m| _pdep_u64(win, m),
            );
        }

        #[target_feature(enable = "avx2,bmi1,bmi2,popcnt")]
        fn walk_avx2_pdep(
            &mut self,
            levels: &[u8; super::SUB],
            len: usize,
            base: u64,
            out: &mut Pruned,
        ) {
            self.walk_words(
                levels,
                len,
                base,
                out,
                // SAFETY: w + 64 ≤ SUB.
                |w| unsafe { load64(levels, w) },
                |v, g| mask64(v.0, v.1, g),
                |win, m| _pdep_u64(win, m),
            );
        }

        #[target_feature(enable = "avx2,bmi1,popcnt")]
        fn walk_avx2(
            &mut self,
            levels: &[u8; super::SUB],
            len: usize,
            base: u64,
            out: &mut Pruned,
        ) {
            self.walk_words(
                levels,
                len,
                base,
                out,
                // SAFETY: w + 64 ≤ SUB.
                |w| unsafe { load64(levels, w) },
                |v, g| mask64(v.0, v.1, g),
                select_bits,
            );
        }

        /// The walk, given how to load a 64-entry word, take the mask of one level in it, and select the bits
        /// of a mask by the offsets set in a window (`pdep`). Inlined into each kernel above, so the closures
        /// compile with its instructions.
        #[inline(always)]
        #[allow(clippy::too_many_arguments)] // the walk's state plus the three per-kernel operations
        fn walk_words<W: Copy>(
            &mut self,
            levels: &[u8; super::SUB],
            len: usize,
            base: u64,
            out: &mut Pruned,
            load: impl Fn(usize) -> W,
            mask: impl Fn(W, u8) -> u64,
            deposit: impl Fn(u64, u64) -> u64,
        ) {
            for w in (0..len).step_by(64) {
                let v = load(w);
                let mut keep = 0u64;
                for t in self.tracked.iter_mut() {
                    let m = mask(v, t.level);
                    let end = t.ordinal + u64::from(m.count_ones());
                    if t.next < end {
                        // The listed ordinals inside this word, as offsets from the group's first entry in it;
                        // depositing them into m gives the listed entries' bits.
                        let mut win = 0u64;
                        while t.next < end {
                            win |= 1 << (t.next - t.ordinal);
                            t.cursor += 1;
                            t.next = t.listed.get(t.cursor).copied().unwrap_or(u64::MAX);
                        }
                        let sel = deposit(win, m);
                        keep |= if t.keep_listed { sel } else { m & !sel };
                    } else if !t.keep_listed {
                        keep |= m;
                    }
                    t.ordinal = end;
                }
                for &g in &self.keep_all {
                    keep |= mask(v, g);
                }
                while keep != 0 {
                    let i = keep.trailing_zeros() as usize;
                    out.positions.push(base + (w + i) as u64);
                    out.levels.push(u16::from(levels[w + i]));
                    keep &= keep - 1;
                }
            }
        }
    }

    /// The 64 levels at `w` as two AVX2 vectors.
    ///
    /// # Safety
    /// `w + 64 ≤ SUB`, and the CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load64(levels: &[u8; super::SUB], w: usize) -> (__m256i, __m256i) {
        debug_assert!(w + 64 <= super::SUB);
        // SAFETY: the caller keeps both 32-byte loads inside `levels`.
        unsafe {
            (
                _mm256_loadu_si256(levels.as_ptr().add(w).cast::<__m256i>()),
                _mm256_loadu_si256(levels.as_ptr().add(w + 32).cast::<__m256i>()),
            )
        }
    }

    /// `pdep` without the instruction: the bits of `m` whose rank among m's set bits is set in `win`.
    #[inline(always)]
    fn select_bits(win: u64, m: u64) -> u64 {
        let (mut sel, mut rest, mut at, mut w) = (0u64, m, 0u32, win);
        while w != 0 {
            let k = w.trailing_zeros();
            for _ in at..k {
                rest &= rest - 1;
            }
            sel |= rest & rest.wrapping_neg();
            rest &= rest - 1;
            at = k + 1;
            w &= w - 1;
        }
        sel
    }

    /// The walk kernel this CPU runs best, given that it has AVX2, POPCNT and BMI1 (the caller checked).
    pub(super) fn detect_walk_kernel() -> WalkKernel {
        let pdep = std::arch::is_x86_feature_detected!("bmi2") && pdep_is_fast();
        if pdep
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
        {
            WalkKernel::Avx512Pdep
        } else if pdep {
            WalkKernel::Avx2Pdep
        } else {
            WalkKernel::Avx2
        }
    }

    /// False on AMD CPUs before Zen 3 (family 0x19), whose `pdep` is microcoded and takes cycles per set bit.
    fn pdep_is_fast() -> bool {
        let vendor = __cpuid(0);
        let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
        let hygon = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6f67_7948, 0x6e65_476e, 0x656e_6975);
        if !(amd || hygon) {
            return true;
        }
        let eax = __cpuid(1).eax;
        let base = (eax >> 8) & 0xF;
        let family = if base == 0xF {
            base + ((eax >> 20) & 0xFF)
        } else {
            base
        };
        amd && family >= 0x19
    }
}

#[cfg(test)]
mod tests;
