//! UltraDelta's optional low-rank part (`--lowrank-part`): a few singular directions of a tensor's Δ with 4-bit
//! factors, and the seeded sample of what they leave.
//!
//! A seeded sample of density p rescaled by 1/p is unbiased, and its error is the variance of the sample, which
//! is proportional to the energy of what is sampled. Fine-tunes' deltas hold much of their energy in a few
//! directions (docs/results/2026-12-05-lowrank-residual-study: 15–54 % in one direction on MiniLM's jobs
//! fine-tune), so a rank-r part costing r·(rows + cols) small levels can take more variance out of the sample
//! than the entries its bytes would have kept. Which r pays is decided per tensor from Δ alone (data-free): the
//! r in 0..=[`MAX_RANK`] that minimises the sample's predicted squared error, `‖R‖²·(1/p_r − 1) + ‖Q(R) − R‖²/p_r`
//! for the residual R = Δ − L̂_r at the density p_r the record's bytes leave after the factors. The bytes are
//! those of the plain record at the allocated rate, so the byte-budget search sees the same bytes per rate.

use rayon::prelude::*;
use ultradelta_baselines::{self as baselines, top_singular};
use ultradelta_qgp::{quantize, QuantParams};

use super::{quantizer_of, seeded_rate};
use crate::config::CompressConfig;

/// Highest rank the low-rank part tries.
pub(crate) const MAX_RANK: usize = 16;
/// Bits per factor entry: levels `0..=2L`, `L = 2^(b−1) − 1`, symmetric around level L (zero).
pub(crate) const FACTOR_BITS: u8 = 4;
/// The factor levels' zero, `L`.
const FACTOR_ZERO: u16 = (1 << (FACTOR_BITS - 1)) - 1;
/// Bits of the part's fixed fields beyond its levels: rank, bits, the levels' rANS model table (at most 2L + 1
/// symbols) and stream length, the residual's kind.
const PART_FIXED_BITS: f64 =
    8.0 * (4.0 + 1.0 + 4.0 + 4.0 * (2 * FACTOR_ZERO as usize + 1) as f64 + 8.0 + 1.0);
/// Bits per component beyond its levels: two f32 scales.
const COMPONENT_BITS: f64 = 64.0;
/// The residual's density is never planned below this share of the plain record's.
const MIN_DENSITY_SHARE: f64 = 0.05;

/// The chosen low-rank part of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LowRankPart {
    /// Rows of the matrix view.
    pub rows: usize,
    /// Columns of the matrix view.
    pub cols: usize,
    /// `(su_k, sv_k)`: each component's two factor scales.
    pub scales: Vec<(f32, f32)>,
    /// Levels of u_1 (rows), v_1 (cols), u_2, v_2, …, each in `0..=2·FACTOR_ZERO`.
    pub levels: Vec<u16>,
}

impl LowRankPart {
    /// The rank.
    pub fn rank(&self) -> usize {
        self.scales.len()
    }
}

/// A tensor split into a low-rank part and the residual the seeded sample codes, at the residual's rate.
pub(crate) struct Split {
    pub part: LowRankPart,
    pub residual: Vec<f32>,
    pub rate: f64,
}

/// Symmetric `FACTOR_BITS`-bit levels of `v` and their scale (`max |v| / L`; 0 for a zero vector, whose levels
/// are all zero).
fn factor_levels(v: &[f32]) -> (Vec<u16>, f32) {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return (vec![FACTOR_ZERO; v.len()], 0.0);
    }
    let scale = max / f32::from(FACTOR_ZERO);
    let levels = v
        .iter()
        .map(|x| {
            ((x / scale).round() as i32 + i32::from(FACTOR_ZERO))
                .clamp(0, 2 * i32::from(FACTOR_ZERO)) as u16
        })
        .collect();
    (levels, scale)
}

/// The value of factor level `l` at `scale`.
#[inline]
pub(crate) fn factor_value(l: u16, scale: f32) -> f32 {
    (f32::from(l) - f32::from(FACTOR_ZERO)) * scale
}

/// Entropy in bits of a histogram's whole content (what an entropy coder reaches, its table aside).
fn entropy_bits(counts: &[u64]) -> f64 {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let c = c as f64;
            -c * (c / n).log2()
        })
        .sum()
}

/// What predicts the error of a seeded sample of `x` at any density ([`predicted`]): its energy, its quantization
/// error under `cfg`'s quantizer and its levels' entropy per entry, `(energy, quantization error, bits per level)`;
/// and its share of non-zero entries (1 unless it is sparse), which may raise a plain record's density.
fn sample_terms(
    x: &[f32],
    cfg: &CompressConfig,
) -> Result<((f64, f64, f64), f64), baselines::Error> {
    let (q, _, nonzero) = quantizer_of(x, cfg)?;
    let (energy, qerr, counts) = terms(x, &q);
    let h = entropy_bits(&counts) / x.len().max(1) as f64;
    Ok(((energy, qerr, h), nonzero))
}

/// Entries per block of [`terms`]' parallel pass.
const TERMS_BLOCK: usize = 1 << 16;

/// `Σ x²`, `Σ (Q(x) − x)²` (f64) and the histogram of the levels of `x` under `q`, each block of [`TERMS_BLOCK`]
/// entries quantized on its own (no tensor of levels is held). The sums are made per block and the blocks' sums
/// added in order: the same bits whatever the thread count.
fn terms(x: &[f32], q: &QuantParams) -> (f64, f64, Vec<u64>) {
    let size = usize::from(q.max_level()) + 1;
    let blocks: Vec<(f64, f64, Vec<u64>)> = x
        .par_chunks(TERMS_BLOCK)
        .map(|xs| {
            let mut ls = vec![0u16; xs.len()];
            quantize(xs, q, &mut ls);
            let mut counts = vec![0u64; size];
            let (mut e, mut r) = (0f64, 0f64);
            for (&v, &l) in xs.iter().zip(&ls) {
                let back = q.dequantize(l);
                e += f64::from(v) * f64::from(v);
                r += f64::from(back - v).powi(2);
                counts[usize::from(l).min(size - 1)] += 1;
            }
            (e, r, counts)
        })
        .collect();
    let mut counts = vec![0u64; size];
    let (mut energy, mut qerr) = (0f64, 0f64);
    for (e, r, c) in blocks {
        energy += e;
        qerr += r;
        for (a, b) in counts.iter_mut().zip(c) {
            *a += b;
        }
    }
    (energy, qerr, counts)
}

fn predicted(energy: f64, qerr: f64, p: f64) -> f64 {
    energy * (1.0 / p - 1.0) + qerr / p
}

/// What the rank choice needs of one rank `r` (0: no part), none of it depending on the rate: the part's bits,
/// and the residual's energy, quantization error and entropy per level.
#[derive(Debug, Clone, Copy)]
struct Trial {
    bits: f64,
    energy: f64,
    qerr: f64,
    h: f64,
}

/// The ranks' [`Trial`]s for one tensor, made lazily: rank 0's at once, the truncated SVD when a rank above 0 is
/// first asked for, and each higher rank's trial only when [`split`] reaches it (it stops at the first rank whose
/// part leaves too few bytes for the residual, so the ranks after that are never made at that rate). A lower
/// rank's factors are a prefix of a higher's, so a table grows without changing what it holds: a split reads the
/// same trials however far the table had grown before.
#[derive(Debug)]
struct Table {
    rows: usize,
    cols: usize,
    /// Δ's share of non-zero entries (1 unless sparse): the plain record's density may be raised by it
    /// ([`super::sampled_rate`]).
    nonzero: f64,
    trials: Vec<Trial>,
    /// The top [`MAX_RANK`] singular triplets, made with the first rank above 0.
    svd: Option<baselines::TopSingular>,
    /// The factors of the ranks made so far.
    scales: Vec<(f32, f32)>,
    levels: Vec<u16>,
    /// The histogram of `levels`.
    counts: Vec<u64>,
}

impl Table {
    fn new(
        delta: &[f32],
        (rows, cols): (usize, usize),
        cfg: &CompressConfig,
    ) -> Result<Self, baselines::Error> {
        let ((energy, qerr, h), nonzero) = sample_terms(delta, cfg)?;
        Ok(Table {
            rows,
            cols,
            nonzero,
            trials: vec![Trial {
                bits: 0.0,
                energy,
                qerr,
                h,
            }],
            svd: None,
            scales: Vec::new(),
            levels: Vec::new(),
            counts: vec![0u64; 2 * FACTOR_ZERO as usize + 1],
        })
    }

    /// The trial of `rank`, made (with every rank below it) if it is not yet; `None` above the highest rank the
    /// matrix has.
    fn trial(
        &mut self,
        rank: usize,
        delta: &[f32],
        seed: u64,
        cfg: &CompressConfig,
    ) -> Result<Option<Trial>, baselines::Error> {
        let (rows, cols) = (self.rows, self.cols);
        if self.svd.is_none() {
            self.svd = Some(top_singular(delta, rows, cols, MAX_RANK, seed)?);
        }
        let available = self.svd.as_ref().map_or(0, |t| t.s.len());
        if rank > available {
            return Ok(None);
        }
        if rank < self.trials.len() {
            return Ok(Some(self.trials[rank]));
        }
        let mut residual = vec![0f32; delta.len()];
        while self.trials.len() <= rank {
            let k = self.trials.len() - 1;
            let t = self.svd.as_ref().expect("made above");
            let root = t.s[k].max(0.0).sqrt();
            let u: Vec<f32> = t.u[k * rows..(k + 1) * rows]
                .iter()
                .map(|x| x * root)
                .collect();
            let v: Vec<f32> = t.v[k * cols..(k + 1) * cols]
                .iter()
                .map(|x| x * root)
                .collect();
            let (lu, su) = factor_levels(&u);
            let (lv, sv) = factor_levels(&v);
            for &l in lu.iter().chain(&lv) {
                self.counts[usize::from(l)] += 1;
            }
            self.levels.extend_from_slice(&lu);
            self.levels.extend_from_slice(&lv);
            self.scales.push((su, sv));
            residual_into(
                &mut residual,
                delta,
                (rows, cols),
                &self.scales,
                &self.levels,
            );
            let ((energy, qerr, h), _) = sample_terms(&residual, cfg)?;
            self.trials.push(Trial {
                bits: PART_FIXED_BITS
                    + COMPONENT_BITS * self.scales.len() as f64
                    + entropy_bits(&self.counts),
                energy,
                qerr,
                h,
            });
        }
        Ok(Some(self.trials[rank]))
    }
}

/// The tables of the tensors seen lately: the byte-budget search compresses every tensor once per pass at another
/// rate, and a table (a truncated SVD and a trial quantization per rank) does not depend on the rate. Keyed by the
/// content hash of Δ, its matrix view, the seed and the quantizer, so a table is only reused for the same inputs
/// (the result is the same as without the memo).
type Key = (u64, usize, usize, u64, u8, crate::QuantFit);
type Shared = std::sync::Arc<std::sync::Mutex<Table>>;
static TABLES: std::sync::Mutex<Vec<(Key, Shared)>> = std::sync::Mutex::new(Vec::new());
/// Tables kept at most (each holds at most `MAX_RANK · (rows + cols)` levels and as many f32 singular vectors).
const TABLES_KEPT: usize = 1024;

/// A poisoned lock's content is still whole here (a table only grows by complete trials), so it is used as is.
fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn table(
    delta: &[f32],
    (rows, cols): (usize, usize),
    seed: u64,
    cfg: &CompressConfig,
) -> Result<Shared, baselines::Error> {
    // The hash of Δ's bits, in chunks (no copy of the tensor).
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for chunk in delta.chunks(1 << 14) {
        let mut buf = [0u8; 4 << 14];
        for (o, x) in buf.chunks_exact_mut(4).zip(chunk) {
            o.copy_from_slice(&x.to_bits().to_le_bytes());
        }
        hasher.update(&buf[..4 * chunk.len()]);
    }
    let (bits, fit) = cfg.quantizer();
    let key: Key = (hasher.digest(), rows, cols, seed, bits, fit);
    if let Some((_, t)) = locked(&TABLES).iter().find(|(k, _)| *k == key) {
        return Ok(t.clone());
    }
    let made = std::sync::Arc::new(std::sync::Mutex::new(Table::new(delta, (rows, cols), cfg)?));
    let mut tables = locked(&TABLES);
    if tables.len() >= TABLES_KEPT {
        tables.remove(0);
    }
    tables.push((key, made.clone()));
    Ok(made)
}

/// `out = Δ − L̂` for the part `L̂` of the components in `scales` (levels `levels`, `u_1, v_1, u_2, …`), its
/// entries made as the decoder makes them: per entry, from 0, `+= u_k·v_k` for k = 1, 2, … in order, in f32 (so the
/// residual plus the decoded part is Δ to the bit the decoder's arithmetic allows). Row by row in parallel, each
/// row's part made in a scratch row: only Δ and the residual are whole tensors, and the values do not depend on
/// the thread count.
fn residual_into(
    out: &mut [f32],
    delta: &[f32],
    (rows, cols): (usize, usize),
    scales: &[(f32, f32)],
    levels: &[u16],
) {
    let per = rows + cols;
    let vs: Vec<Vec<f32>> = scales
        .iter()
        .enumerate()
        .map(|(k, &(_, sv))| {
            levels[k * per + rows..(k + 1) * per]
                .iter()
                .map(|&b| factor_value(b, sv))
                .collect()
        })
        .collect();
    out.par_chunks_mut(cols)
        .zip(delta.par_chunks(cols))
        .enumerate()
        .with_min_len(64)
        .for_each_init(
            || vec![0f32; cols],
            |part, (i, (rrow, drow))| {
                part.fill(0.0);
                for (k, (&(su, _), v)) in scales.iter().zip(&vs).enumerate() {
                    let a = factor_value(levels[k * per + i], su);
                    for (o, &b) in part.iter_mut().zip(v) {
                        *o += a * b;
                    }
                }
                for ((r, &d), &o) in rrow.iter_mut().zip(drow).zip(part.iter()) {
                    *r = d - o;
                }
            },
        );
}

/// The low-rank part worth its bytes for the `rows × cols` tensor `delta` at the allocated `rate`, with the
/// residual and its rate; `None` when rank 0 is predicted best (or the tensor is a vector or too small).
///
/// # Errors
/// The kernels' errors (non-finite Δ, LAPACK failure).
pub(crate) fn split(
    delta: &[f32],
    (rows, cols): (usize, usize),
    rate: f64,
    seed: u64,
    cfg: &CompressConfig,
) -> Result<Option<Split>, baselines::Error> {
    let numel = delta.len();
    let allocated = 1.0 - rate;
    if rows < 2 || cols < 2 || numel == 0 || allocated <= 0.0 || allocated >= 1.0 {
        return Ok(None);
    }
    let shared = table(delta, (rows, cols), seed, cfg)?;
    let mut table = locked(&shared);
    let plain = table.trials[0];
    // The plain record's density: a sparse Δ's may be raised ([`super::sampled_rate`]); at 1 nothing is dropped.
    let density = 1.0 - seeded_rate(rate, table.nonzero, cfg);
    if plain.h == 0.0 || density >= 1.0 {
        return Ok(None);
    }
    // The level bits of the plain record at `rate`, which the split keeps.
    let budget = density * numel as f64 * plain.h;
    let mut best = (
        predicted(plain.energy, plain.qerr, density),
        0usize,
        density,
    );
    for rank in 1..=MAX_RANK {
        let Some(t) = table.trial(rank, delta, seed, cfg)? else {
            break;
        };
        let p = (budget - t.bits) / (numel as f64 * t.h.max(1e-9));
        if p < MIN_DENSITY_SHARE * density {
            break;
        }
        let p = p.min(1.0);
        let v = predicted(t.energy, t.qerr, p);
        if v < best.0 {
            best = (v, rank, p);
        }
    }
    let (_, rank, p) = best;
    if rank == 0 {
        return Ok(None);
    }
    let per = rows + cols;
    let levels = table.levels[..rank * per].to_vec();
    let scales = table.scales[..rank].to_vec();
    let mut residual = vec![0f32; numel];
    residual_into(&mut residual, delta, (rows, cols), &scales, &levels);
    Ok(Some(Split {
        part: LowRankPart {
            rows,
            cols,
            scales,
            levels,
        },
        residual,
        rate: 1.0 - p,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CompressConfig;

    /// A 64 × 48 delta: a strong rank-2 part plus pseudo-random noise of relative size `noise`.
    fn low_rank_delta(noise: f32) -> Vec<f32> {
        let mut x = 0x1234_5678u64;
        let mut next = || {
            x = ultradelta_qgp::rng::splitmix64(x);
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let (rows, cols) = (64, 48);
        let a: Vec<f32> = (0..rows).map(|i| ((i as f32) * 0.37).sin()).collect();
        let b: Vec<f32> = (0..cols).map(|j| ((j as f32) * 0.21).cos()).collect();
        let c: Vec<f32> = (0..rows).map(|i| ((i as f32) * 0.11).cos()).collect();
        let d: Vec<f32> = (0..cols).map(|j| ((j as f32) * 0.53).sin()).collect();
        (0..rows * cols)
            .map(|n| {
                let (i, j) = (n / cols, n % cols);
                1e-3 * (a[i] * b[j] + 0.6 * c[i] * d[j] + noise * next())
            })
            .collect()
    }

    #[test]
    fn a_low_rank_delta_gets_a_part_and_noise_does_not() {
        let cfg = CompressConfig::default();
        let d = low_rank_delta(0.2);
        // At 60 % sparsity (a 64 × 48 tensor at 90 % keeps too few bytes for the part's fixed fields).
        let s = split(&d, (64, 48), 0.6, 5, &cfg)
            .unwrap()
            .expect("a rank-2 delta pays for a part");
        assert!((1..=4).contains(&s.part.rank()), "rank {}", s.part.rank());
        assert_eq!(s.part.levels.len(), s.part.rank() * (64 + 48));
        assert!(
            s.rate > 0.6 && s.rate < 1.0,
            "the residual is sampled more sparsely: {}",
            s.rate
        );
        // The residual is Δ minus the part as decoded.
        let mut back = s.residual.clone();
        let per = 64 + 48;
        for (k, &(su, sv)) in s.part.scales.iter().enumerate() {
            let (lu, lv) = s.part.levels[k * per..(k + 1) * per].split_at(64);
            for i in 0..64 {
                for j in 0..48 {
                    back[i * 48 + j] += factor_value(lu[i], su) * factor_value(lv[j], sv);
                }
            }
        }
        for (b, x) in back.iter().zip(&d) {
            assert!((b - x).abs() <= 1e-9 + x.abs() * 1e-5, "{b} vs {x}");
        }
        let energy = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>();
        assert!(energy(&s.residual) < 0.2 * energy(&d));
        // Pure noise has no direction worth its bytes; nor does a vector.
        let noise: Vec<f32> = low_rank_delta(1e4).iter().map(|x| x * 1e-4).collect();
        assert!(split(&noise, (64, 48), 0.6, 5, &cfg).unwrap().is_none());
        assert!(split(&d[..48], (1, 48), 0.6, 5, &cfg).unwrap().is_none());
        // Deterministic.
        let again = split(&d, (64, 48), 0.6, 5, &cfg).unwrap().unwrap();
        assert_eq!((again.part, again.rate), (s.part, s.rate));
    }

    /// The trial sums are the same bits on one thread as on many, and the histogram counts every entry.
    #[test]
    fn terms_do_not_depend_on_the_thread_count() {
        let x: Vec<f32> = (0..3 * TERMS_BLOCK + 123)
            .map(|i| ((i as f32) * 0.618).sin() * 1e-3)
            .collect();
        let cfg = CompressConfig::default();
        let (q, ..) = quantizer_of(&x, &cfg).unwrap();
        let many = terms(&x, &q);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| terms(&x, &q));
        assert_eq!(
            (many.0.to_bits(), many.1.to_bits(), &many.2),
            (one.0.to_bits(), one.1.to_bits(), &one.2)
        );
        // The histogram is that of the whole tensor's levels (each block quantized alone is the same).
        let (.., levels) = crate::method::quantize_delta(&x, &cfg).unwrap();
        let mut whole = vec![0u64; many.2.len()];
        for &l in &levels {
            whole[usize::from(l)] += 1;
        }
        assert_eq!(many.2, whole);
        let energy: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        assert!((many.0 - energy).abs() <= 1e-12 * energy);
    }

    #[test]
    fn a_tensors_table_is_made_once_per_content_seed_and_quantizer() {
        use std::sync::Arc;
        let cfg = CompressConfig::default();
        let d = low_rank_delta(0.3);
        let a = table(&d, (64, 48), 17, &cfg).unwrap();
        assert!(Arc::ptr_eq(&a, &table(&d, (64, 48), 17, &cfg).unwrap()));
        // Another seed, another quantizer or another Δ is another table.
        assert!(!Arc::ptr_eq(&a, &table(&d, (64, 48), 18, &cfg).unwrap()));
        let three = CompressConfig {
            bits: Some(3),
            ..CompressConfig::default()
        };
        assert!(!Arc::ptr_eq(&a, &table(&d, (64, 48), 17, &three).unwrap()));
        let mut e = d.clone();
        e[5] += 1e-6;
        assert!(!Arc::ptr_eq(&a, &table(&e, (64, 48), 17, &cfg).unwrap()));
    }

    /// A table grown a few ranks at a time (as splits at rising densities grow it, each rebuilding the part from
    /// the stored factors) holds the same bits as one grown to the top at once, and a split reads the same result
    /// from either: laziness changes no archive.
    #[test]
    fn a_lazily_grown_table_is_the_table_made_at_once() {
        let cfg = CompressConfig::default();
        let d = low_rank_delta(0.3);
        let mut whole = Table::new(&d, (64, 48), &cfg).unwrap();
        whole.trial(MAX_RANK, &d, 23, &cfg).unwrap().unwrap();
        assert_eq!(whole.trials.len(), 1 + MAX_RANK);
        let mut grown = Table::new(&d, (64, 48), &cfg).unwrap();
        for step in [1, 3, 4, 9, MAX_RANK] {
            let t = grown.trial(step, &d, 23, &cfg).unwrap().unwrap();
            assert_eq!(
                grown.trials.len(),
                step + 1,
                "no rank beyond the one asked for"
            );
            assert_eq!(t.energy.to_bits(), whole.trials[step].energy.to_bits());
        }
        assert!(grown.trial(MAX_RANK + 1, &d, 23, &cfg).unwrap().is_none());
        let bits = |t: &Table| -> Vec<[u64; 4]> {
            t.trials
                .iter()
                .map(|x| {
                    [
                        x.bits.to_bits(),
                        x.energy.to_bits(),
                        x.qerr.to_bits(),
                        x.h.to_bits(),
                    ]
                })
                .collect()
        };
        assert_eq!(bits(&grown), bits(&whole));
        assert_eq!(
            (&grown.scales, &grown.levels, &grown.counts),
            (&whole.scales, &whole.levels, &whole.counts)
        );
        // Splits at several rates through the memo (which grows its table as they need) agree with splits made
        // after the memo's table is already whole.
        let splits = || -> Vec<_> {
            [0.9, 0.6, 0.3, 0.75]
                .iter()
                .map(|&r| {
                    split(&d, (64, 48), r, 29, &cfg)
                        .unwrap()
                        .map(|s| (s.part, s.rate, s.residual))
                })
                .collect()
        };
        let first = splits();
        locked(&table(&d, (64, 48), 29, &cfg).unwrap())
            .trial(MAX_RANK, &d, 29, &cfg)
            .unwrap();
        assert_eq!(first, splits());
        assert!(first.iter().any(Option::is_some));
    }

    #[test]
    fn factor_levels_are_symmetric_and_bounded() {
        let (l, s) = factor_levels(&[0.0, 0.7, -0.7, 0.3]);
        assert_eq!(l, vec![7, 14, 0, 10]);
        assert!((s - 0.1).abs() < 1e-7);
        assert!((factor_value(14, s) - 0.7).abs() < 1e-6);
        let (l, s) = factor_levels(&[0.0, 0.0]);
        assert_eq!((l, s), (vec![7, 7], 0.0));
    }
}

#[cfg(test)]
mod record_tests {
    use crate::config::CompressConfig;
    use crate::method::compress_tensor;
    use ultradelta_archive::{decode_record, encode_record, Limits, Record};
    use ultradelta_io::DType;

    /// A 96 × 80 delta: rank 2 plus noise a tenth of its size.
    fn delta() -> Vec<f32> {
        let mut x = 99u64;
        (0..96 * 80)
            .map(|n| {
                x = ultradelta_qgp::rng::splitmix64(x);
                let noise = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                let (i, j) = ((n / 80) as f32, (n % 80) as f32);
                1e-3 * ((i * 0.3).sin() * (j * 0.17).cos()
                    + 0.5 * (i * 0.07).cos() * (j * 0.41).sin()
                    + 0.1 * noise)
            })
            .collect()
    }

    fn sq_err(rec: &Record, d: &[f32]) -> f64 {
        let back = rec.delta_to_dense(d.len(), 1.0).unwrap();
        back.iter()
            .zip(d)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum()
    }

    #[test]
    fn the_part_writes_a_kind_16_record_that_decodes_to_itself_and_errs_less_in_the_same_bytes() {
        let d = delta();
        let plain_cfg = CompressConfig::default();
        let cfg = CompressConfig {
            lowrank_part: Some(true),
            ..CompressConfig::default()
        };
        let plain = compress_tensor(&d, "t", &[96, 80], 0.7, &plain_cfg).unwrap();
        let made = compress_tensor(&d, "t", &[96, 80], 0.7, &cfg).unwrap();
        let Record::LowRankSparse(r) = &made.record else {
            panic!(
                "expected a low-rank part, got {}",
                made.record.kind().name()
            )
        };
        assert_eq!(
            made.codec.as_ref().unwrap().lowrank_rank,
            Some(r.rank() as u32)
        );
        // What the archive stores decodes to the record the pipeline applied.
        let bytes = encode_record(DType::F32, &[96, 80], &made.record, 1).unwrap();
        let (_, back) = decode_record(&bytes, &Limits::default()).unwrap();
        assert_eq!(back, made.record);
        // About the plain record's bytes at the same rate (the budget search relies on it) ...
        let plain_len = encode_record(DType::F32, &[96, 80], &plain.record, 1)
            .unwrap()
            .len() as f64;
        let len = bytes.len() as f64;
        assert!(
            (0.7..1.3).contains(&(len / plain_len)),
            "{len} vs {plain_len} bytes"
        );
        // ... and far closer to Δ: the sample carries only the noise.
        let (e_plain, e_part) = (sq_err(&plain.record, &d), sq_err(&made.record, &d));
        assert!(
            e_part < 0.3 * e_plain,
            "squared error {e_part} vs plain {e_plain}"
        );
        // Off, vectors and other codecs are untouched.
        let v = compress_tensor(&d[..80], "v", &[80], 0.7, &cfg).unwrap();
        assert!(!matches!(v.record, Record::LowRankSparse(_)));
    }
}
