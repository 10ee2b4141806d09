//! Placing the uniform quantizer's levels by squared error instead of by range (`--quant-fit`, ALGORITHM.md §1).
//!
//! [`Quantizer::fit`](crate::Quantizer::fit) spans the levels from the smallest to the largest delta: a few
//! outliers then stretch the step so that most entries share two or three levels, and at 1–2 bits the levels land
//! far out in the tails. [`fit_mse`] keeps the archive's uniform levels (`lo + l · step`, so every reader decodes
//! it unchanged) but chooses `lo` and `step` for the bulk of the values: levels centred on the mean, the step that
//! minimises the squared quantization error of an evenly strided sample of Δ, outliers clamped to the end levels.
//! [`projection_gain`] is the factor that gives the quantized delta back Δ's projection onto itself (a clamped or
//! coarse quantizer shrinks it), for the caller to fold into the record's rescale factor.

use rayon::prelude::*;

use crate::fused::{levels_source, DeltaSource};
use crate::{level_of, QuantParams};

/// At most this many entries, evenly strided over the tensor, make the sample of [`fit_mse`] and [`projection_gain`].
pub const FIT_SAMPLE: usize = 1 << 15;

/// The sample [`fit_mse`] reads: `min(n, FIT_SAMPLE)` entries at indices `k · n / m`, in index order.
pub fn strided_sample(n: usize, value: impl Fn(usize) -> f32) -> Vec<f32> {
    let m = n.min(FIT_SAMPLE);
    (0..m)
        .map(|k| value(((k as u128 * n as u128) / m as u128) as usize))
        .collect()
}

/// Squared error of the quantizer (`bits`, `lo`, `step`) on `xs`: the f64 sum in index order (`Iterator::sum`'s
/// fold from −0.0). The levels come from the vectorised kernel ([`levels_source`], the same levels as
/// `quantize_one`), the errors a block at a time, then added in order: the same bits as one scalar fold.
fn sq_error(xs: &[f32], bits: u8, lo: f32, step: f32) -> f64 {
    const BLOCK: usize = 1024;
    let q = QuantParams { bits, lo, step };
    let mut levels = vec![0u16; xs.len()];
    levels_source(&DeltaSource::F32(xs), &q, &mut levels);
    let mut errs = [0f64; BLOCK];
    let mut acc = -0.0f64;
    for (chunk, lv) in xs.chunks(BLOCK).zip(levels.chunks(BLOCK)) {
        let errs = &mut errs[..chunk.len()];
        for ((e, &x), &l) in errs.iter_mut().zip(chunk).zip(lv) {
            let d = f64::from(lo + f32::from(l) * step) - f64::from(x);
            *e = d * d;
        }
        acc = errs.iter().fold(acc, |a, &e| a + e);
    }
    acc
}

/// The lowest level of a quantizer with `levels` levels of spacing `step` centred on `centre`.
fn lo_for(centre: f64, step: f64, max: u16) -> f32 {
    (centre - step * f64::from(max) / 2.0) as f32
}

/// The squared-error fit of a uniform `range.bits`-bit quantizer on `sample` (finite values, as
/// [`strided_sample`] reads them from a tensor `range` was fit on): levels centred on the sample's mean, the step
/// searched on a geometric grid (2^(1/2) apart from rms/2^min(bits + 3, 8), then 2^(1/16) apart around the best) and
/// never wider
/// than `range.step` (the range fit, which clamps nothing); `range` itself wins when nothing on the grid has a
/// smaller error on the sample. A constant or empty tensor keeps `range`.
/// Deterministic: sequential sums over the sample.
pub fn fit_mse(sample: &[f32], range: QuantParams) -> QuantParams {
    if range.step == 0.0 || sample.is_empty() {
        return range;
    }
    let n = sample.len() as f64;
    let mean = sample.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = sample
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n;
    let rms = var.sqrt();
    let max = range.max_level();
    let widest = f64::from(range.step);
    if rms == 0.0 || !rms.is_finite() {
        return range;
    }
    // A candidate: (lo, step) of the quantizer centred on the mean with spacing `step` (capped at the range fit's).
    let candidate = |step: f64| -> Option<(f32, f32)> {
        let step = step.min(widest);
        let (lo, s) = (lo_for(mean, step, max), step as f32);
        (s > 0.0 && lo.is_finite()).then_some((lo, s))
    };
    // The candidates' errors are independent sums over the sample: computed in parallel, the smallest wins (the
    // earliest on ties), so the result does not depend on the thread count.
    let best_of = |cands: &[(f32, f32)]| -> (f64, f32, f32) {
        cands
            .par_iter()
            .map(|&(lo, s)| (sq_error(sample, range.bits, lo, s), lo, s))
            .collect::<Vec<_>>()
            .into_iter()
            .fold((f64::INFINITY, range.lo, range.step), |b, c| {
                if c.0 < b.0 {
                    c
                } else {
                    b
                }
            })
    };
    // Coarse: the range fit itself first (so the fit is never worse than it on the sample), then from
    // rms/2^min(bits + 3, 8) (far below the optimum of a normal delta, ~rms·2^(1−bits)) up to the range fit's step,
    // 2^(1/2) apart: points of one grid whatever the bits.
    let mut coarse = vec![(range.lo, range.step)];
    let mut step = rms / f64::from(1u32 << (u32::from(range.bits) + 3).min(8));
    while step < widest {
        coarse.extend(candidate(step));
        step *= std::f64::consts::SQRT_2;
    }
    coarse.extend(candidate(widest));
    let first = best_of(&coarse);
    // Fine: 2^(1/16) apart within one coarse step either side of the best (the best itself included).
    let centre = f64::from(first.2);
    let mut fine = vec![(first.1, first.2)];
    fine.extend(
        (-8..=8)
            .filter(|&k| k != 0)
            .filter_map(|k| candidate(centre * 2f64.powf(f64::from(k) / 16.0))),
    );
    let (_, lo, step) = best_of(&fine);
    QuantParams {
        bits: range.bits,
        lo,
        step,
    }
}

/// The gain that makes the quantized sample keep the sample's projection onto itself: Σx² / Σx·Q(x), where
/// Q(x) is `q`'s value for x. A clamped or coarse quantizer (as [`fit_mse`] makes) shrinks Δ along itself; the
/// caller multiplies the record's rescale factor by this gain, leaving the levels as they are. 1 when the
/// gain is not finite or outside [1, 4].
pub fn projection_gain(sample: &[f32], q: QuantParams) -> f32 {
    if q.step == 0.0 {
        return 1.0;
    }
    let max = q.max_level();
    let (mut xx, mut xq) = (0.0f64, 0.0f64);
    for &x in sample {
        let v = f64::from(q.dequantize(level_of(x, q.lo, q.step, max)));
        xx += f64::from(x) * f64::from(x);
        xq += f64::from(x) * v;
    }
    let k = xx / xq;
    if k.is_finite() && (1.0..=4.0).contains(&k) {
        k as f32
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::DetRng;
    use crate::Quantizer;

    /// `n` standard normal values (Box–Muller on the project's generator) plus `outliers` at ±40.
    fn normal(n: usize, outliers: usize, seed: u64) -> Vec<f32> {
        let mut r = DetRng::new(seed);
        let mut v: Vec<f32> = (0..n)
            .map(|_| {
                let (u1, u2) = (1.0 - r.unit_f64(), r.unit_f64());
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        for k in 0..outliers {
            v[k * 97] = if k % 2 == 0 { 40.0 } else { -40.0 };
        }
        v
    }

    fn mse(xs: &[f32], q: &QuantParams) -> f64 {
        xs.iter()
            .map(|&x| (f64::from(q.dequantize(q.quantize_one(x))) - f64::from(x)).powi(2))
            .sum::<f64>()
            / xs.len() as f64
    }

    /// On a normal sample the fit lands on the known optimal uniform quantizers: 1 bit ±E|x| = ±0.798σ, 2 bits a
    /// step of 0.996σ (MSE 0.1188σ²); the gain of the 1-bit one is σ²/E|x|² = π/2.
    #[test]
    fn finds_the_known_optima_of_a_normal() {
        let xs = normal(FIT_SAMPLE, 0, 7);
        let one = fit_mse(&xs, QuantParams::fit(&xs, 1).unwrap());
        let level = f64::from(one.dequantize(1));
        assert!((level - 0.798).abs() < 0.03, "1-bit level {level}");
        assert!((f64::from(one.dequantize(0)) + 0.798).abs() < 0.03);
        let gain = f64::from(projection_gain(&xs, one));
        assert!(
            (gain - std::f64::consts::FRAC_PI_2).abs() < 0.05,
            "gain {gain}"
        );
        let two = fit_mse(&xs, QuantParams::fit(&xs, 2).unwrap());
        assert!(
            (f64::from(two.step) - 0.996).abs() < 0.04,
            "2-bit step {}",
            two.step
        );
        let e = mse(&xs, &two);
        assert!((e - 0.1188).abs() < 0.01, "2-bit mse {e}");
    }

    /// A few outliers stretch the range fit over all levels; the fit ignores them and quantizes the bulk far
    /// better, and never widens the step past the range fit's.
    #[test]
    fn outliers_do_not_stretch_the_levels() {
        let xs = normal(20_000, 20, 3);
        for bits in [1u8, 2, 3, 4] {
            let range = QuantParams::fit(&xs, bits).unwrap();
            let fit = fit_mse(&xs, range);
            assert!(fit.step <= range.step, "bits {bits}");
            assert!(
                mse(&xs, &fit) < 0.5 * mse(&xs, &range),
                "bits {bits}: {} vs {}",
                mse(&xs, &fit),
                mse(&xs, &range)
            );
        }
        // With many levels clamping the outliers costs more than the step saves: the fit keeps the range fit.
        for bits in [8u8, 16] {
            let range = QuantParams::fit(&xs, bits).unwrap();
            assert!(
                mse(&xs, &fit_mse(&xs, range)) <= mse(&xs, &range),
                "bits {bits}"
            );
        }
    }

    /// The candidates are scored in parallel: the same fit on 1 and 3 threads.
    #[test]
    fn same_fit_whatever_the_thread_count() {
        let xs = normal(FIT_SAMPLE, 30, 11);
        let fit_on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| fit_mse(&xs, QuantParams::fit(&xs, 3).unwrap()))
        };
        let one = fit_on(1);
        assert_eq!(one, fit_on(3));
        assert_ne!(one, QuantParams::fit(&xs, 3).unwrap());
    }

    /// Constant and empty inputs keep the range fit; the sample is strided and in index order.
    #[test]
    fn degenerate_inputs_and_the_sample() {
        let c = vec![0.25f32; 100];
        let range = QuantParams::fit(&c, 3).unwrap();
        assert_eq!(fit_mse(&c, range), range);
        assert_eq!(fit_mse(&[], range), range);
        assert_eq!(projection_gain(&c, range), 1.0);
        assert_eq!(strided_sample(5, |i| i as f32), [0.0, 1.0, 2.0, 3.0, 4.0]);
        let s = strided_sample(4 * FIT_SAMPLE, |i| i as f32);
        assert_eq!(s.len(), FIT_SAMPLE);
        assert_eq!(
            (s[0], s[1], s[FIT_SAMPLE - 1]),
            (0.0, 4.0, (4 * FIT_SAMPLE - 4) as f32)
        );
    }
}
