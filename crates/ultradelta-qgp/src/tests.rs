use super::*;
use proptest::prelude::*;

fn params(bits: u8, lo: f32, step: f32) -> QuantParams {
    QuantParams { bits, lo, step }
}

/// Runs `f` in a rayon pool of `threads` threads (the thread-independence tests).
pub(crate) fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

// ---------- quantization ----------

#[test]
fn fit_and_quantize_hand_example() {
    // lo = -1, hi = 1, 2 bits: L = 4, step = 2/3. (x + 1) / step for the values below:
    // -1 -> 0, -0.6 -> 0.6, -0.1 -> 1.35, 0.3 -> 1.95, 0.8 -> 2.7, 1 -> 3.
    // Rounded: 0, 1, 1, 2, 3, 3.
    let x = [-1.0f32, -0.6, -0.1, 0.3, 0.8, 1.0];
    let p = QuantParams::fit(&x, 2).unwrap();
    assert_eq!(p.bits, 2);
    assert_eq!(p.lo, -1.0);
    assert_eq!(p.step, (2.0f64 / 3.0) as f32);
    assert_eq!(p.levels(), 4);
    let mut q = [0u16; 6];
    quantize(&x, &p, &mut q);
    assert_eq!(q, [0, 1, 1, 2, 3, 3]);
    // Decoded: -1, -1/3, -1/3, 1/3, 1, 1 (to f32 rounding).
    let d: Vec<f32> = q.iter().map(|&l| p.dequantize(l)).collect();
    let e = [-1.0, -1.0 / 3.0, -1.0 / 3.0, 1.0 / 3.0, 1.0, 1.0];
    for (a, b) in d.iter().zip(e) {
        assert!((a - b).abs() < 1e-6, "{d:?}");
    }
}

#[test]
fn fit_constant_and_errors() {
    let p = QuantParams::fit(&[0.5; 10], 4).unwrap();
    assert_eq!(p, params(4, 0.5, 0.0));
    assert_eq!(p.quantize_one(0.5), 0);
    assert_eq!(p.quantize_one(7.0), 0);
    assert_eq!(p.dequantize(0), 0.5);
    assert_eq!(QuantParams::fit(&[], 3).unwrap(), params(3, 0.0, 0.0));
    assert_eq!(
        QuantParams::fit(&[1.0], 0),
        Err(Error::InvalidBits { bits: 0 })
    );
    assert_eq!(
        QuantParams::fit(&[1.0], 17),
        Err(Error::InvalidBits { bits: 17 })
    );
    let mut v = vec![0.0f32; 3 * CHUNK];
    v[2 * CHUNK + 5] = f32::INFINITY;
    v[CHUNK + 1] = f32::NAN;
    match QuantParams::fit(&v, 4) {
        Err(Error::NonFinite { index, value }) => {
            assert_eq!(index, CHUNK + 1);
            assert!(value.is_nan());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        QuantParams::fit(&[-3e38, 3e38], 8),
        Err(Error::RangeTooLarge { .. })
    ));
    let p = QuantParams::fit(&[0.0, 1.0], 16).unwrap();
    assert_eq!(p.quantize_one(1.0), 65535);
    assert_eq!(p.quantize_one(f32::NAN), 0);
    assert_eq!(p.quantize_one(-5.0), 0);
    assert_eq!(p.quantize_one(5.0), 65535);
}

#[test]
fn quantize_is_thread_independent() {
    let x: Vec<f32> = (0..(3 * CHUNK + 11))
        .map(|i| ((i as f32) * 0.013).sin())
        .collect();
    let p = QuantParams::fit(&x, 4).unwrap();
    let run = || {
        let mut q = vec![0u16; x.len()];
        quantize(&x, &p, &mut q);
        q
    };
    let a = in_pool(1, run);
    let b = in_pool(3, run);
    assert_eq!(a, b);
    let direct: Vec<u16> = x.iter().map(|&v| p.quantize_one(v)).collect();
    assert_eq!(a, direct);
}

#[test]
fn quantized_std_matches_direct() {
    let p = params(3, -0.7, 0.2);
    let q: Vec<u16> = (0..1000).map(|i| ((i * 37) % 8) as u16).collect();
    let vals: Vec<f64> = q.iter().map(|&l| f64::from(p.dequantize(l))).collect();
    let n = vals.len() as f64;
    let mean = vals.iter().sum::<f64>() / n;
    let sd = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!((quantized_std(&q, &p) - sd).abs() < 1e-12);
    assert_eq!(quantized_std(&[], &p), 0.0);
    // Two levels 0 and 1 half each: std = step / 2.
    let sd2 = quantized_std(&[0, 1, 0, 1], &params(1, 0.0, 2.0));
    assert_eq!(sd2, 1.0);
}

// ---------- DAC ----------

fn kept_per_level(pr: &Pruned, groups: usize) -> Vec<u64> {
    let mut h = vec![0u64; groups];
    for &l in &pr.levels {
        h[usize::from(l)] += 1;
    }
    h
}

/// Levels with group sizes `sizes`, interleaved deterministically.
fn make_levels(sizes: &[usize], seed: u64) -> Vec<u16> {
    let mut v: Vec<u16> = sizes
        .iter()
        .enumerate()
        .flat_map(|(g, &n)| std::iter::repeat_n(g as u16, n))
        .collect();
    // Deterministic shuffle so groups are spread over positions.
    let mut r = DetRng::new(seed);
    for i in (1..v.len()).rev() {
        let j = r.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

#[test]
fn dac_exact_counts_hand_example() {
    // lo = -1.5, step = 1: values -1.5, -0.5, 0.5, 1.5 (no level is zero).
    let p = params(2, -1.5, 1.0);
    let lv = make_levels(&[10, 20, 30, 40], 1);
    // r = 0.25: drop round(2.5) = 3, 5, round(7.5) = 8, 10 -> keep 7, 15, 22, 30.
    let pr = group_prune(&lv, &p, 0.25, 9);
    assert_eq!(kept_per_level(&pr, 4), vec![7, 15, 22, 30]);
    // r = 0.5: keep 5, 10, 15, 20.
    let pr = group_prune(&lv, &p, 0.5, 9);
    assert_eq!(kept_per_level(&pr, 4), vec![5, 10, 15, 20]);
    for (&pos, &l) in pr.positions.iter().zip(&pr.levels) {
        assert_eq!(lv[pos as usize], l);
    }
    assert!(pr.positions.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn dac_accounts_for_existing_zeros() {
    // lo = -1, step = 1: level 1 decodes to exactly 0.0. Sizes 10, 20, 30, 40 (n = 100).
    // s0 = 20/100 = 0.2; rate 0.6 -> r = (0.6 - 0.2) / 0.8 = 0.5.
    // Drop 5 of 10, all 20 zeros, 15 of 30, 20 of 40 -> keep 5, 0, 15, 20 = 40 = 60% sparsity.
    let p = params(2, -1.0, 1.0);
    assert_eq!(p.dequantize(1), 0.0);
    let lv = make_levels(&[10, 20, 30, 40], 2);
    let pr = group_prune(&lv, &p, 0.6, 3);
    assert_eq!(kept_per_level(&pr, 4), vec![5, 0, 15, 20]);
    // A target below s0: r = 0, every non-zero entry kept, zeros still dropped.
    let pr = group_prune(&lv, &p, 0.1, 3);
    assert_eq!(kept_per_level(&pr, 4), vec![10, 0, 30, 40]);
}

#[test]
fn dac_rate_edges() {
    let p = params(2, -1.5, 1.0);
    let lv = make_levels(&[3, 4, 5, 6], 4);
    assert_eq!(group_prune(&lv, &p, 0.0, 1).len(), 18);
    assert_eq!(group_prune(&lv, &p, -1.0, 1).len(), 18);
    assert_eq!(group_prune(&lv, &p, 1.0, 1).len(), 0);
    assert_eq!(group_prune(&lv, &p, 1.5, 1).len(), 0);
    assert!(group_prune(&[], &p, 0.5, 1).is_empty());
    // Constant tensor at 0: everything is already zero.
    let z = params(4, 0.0, 0.0);
    assert!(group_prune(&[0; 10], &z, 0.0, 1).is_empty());
    // Constant non-zero tensor: one group.
    let c = params(4, 0.25, 0.0);
    assert_eq!(group_prune(&[0; 10], &c, 0.7, 1).len(), 3);
    assert_eq!(dac_group_rate(0.5, 1.0), 0.0);
    assert_eq!(dac_drop_count(5, 0.5), 3);
    assert_eq!(dac_drop_count(5, 1.0), 5);
}

#[test]
fn dac_golden() {
    // Pins the RNG use of group_prune: any change of seeding, sampling or ordering shows here.
    let p = params(2, -1.5, 1.0);
    let lv = make_levels(&[6, 6, 6, 6], 11);
    let pr = group_prune(&lv, &p, 0.5, 2024);
    assert_eq!(kept_per_level(&pr, 4), vec![3, 3, 3, 3]);
    assert_eq!(pr.positions, GOLDEN_DAC);
}

const GOLDEN_DAC: &[u64] = &[0, 1, 2, 3, 4, 6, 8, 13, 14, 15, 16, 17];

#[test]
fn dac_is_uniform_within_a_group() {
    // One group of 20; keep 5 (rate 0.75). Over 2000 seeds every position is kept with
    // probability 1/4: expected 500, sd ≈ 19.4; allow 5 sd.
    let p = params(1, 1.0, 1.0);
    let lv = vec![0u16; 20];
    let mut hits = [0u32; 20];
    for seed in 0..2000 {
        let pr = group_prune(&lv, &p, 0.75, seed);
        assert_eq!(pr.len(), 5);
        for &pos in &pr.positions {
            hits[pos as usize] += 1;
        }
    }
    for h in hits {
        assert!((403..=597).contains(&h), "{hits:?}");
    }
}

#[test]
fn samplers_agree() {
    // The dense and the sparse virtual arrays must give identical draws.
    for (n, m) in [
        (100u64, 3u64),
        (100, 60),
        (1000, 10),
        (10_000, 50),
        (100_000, 1500),
        (100_000, 3000),
    ] {
        let mut a = DetRng::new(n * 31 + m);
        let mut b = a.clone();
        let mut dense: Vec<u32> = (0..n as u32).collect();
        let mut out_dense = Vec::new();
        for j in 0..m {
            let x = j + a.below(n - j);
            dense.swap(j as usize, x as usize);
            out_dense.push(u64::from(dense[j as usize]));
        }
        let mut c = b.clone();
        assert_eq!(sample_ordinals(n, m, &mut b), out_dense);
        // The bitset-and-table array draws the same set, sorted.
        let mut sorted = out_dense.clone();
        sorted.sort_unstable();
        let mut scratch = SampleScratch {
            touched: vec![!0; 3],
            chosen: vec![!0; 3],
            table: vec![7; 5],
        };
        assert_eq!(
            sample_sorted(n, m, &mut c, &mut scratch),
            sorted,
            "n {n} m {m}"
        );
        // A scratch left over from a larger draw gives the same result.
        let mut d = DetRng::new(n * 31 + m);
        assert_eq!(sample_sorted(n, m, &mut d, &mut scratch), sorted);
    }
    // Large sparse case: distinct and in range, and the same through sample_sorted's map fallback.
    let mut r = DetRng::new(1);
    let mut s = sample_ordinals(1 << 40, 1000, &mut r);
    s.sort_unstable();
    s.dedup();
    assert_eq!(s.len(), 1000);
    assert!(s.iter().all(|&x| x < 1 << 40));
    let mut scratch = SampleScratch {
        touched: Vec::new(),
        chosen: Vec::new(),
        table: Vec::new(),
    };
    assert_eq!(
        sample_sorted(1 << 40, 1000, &mut DetRng::new(1), &mut scratch),
        s
    );
}

#[test]
fn dac_is_thread_independent() {
    // Several blocks (n > MIN_BLOCK) and many levels.
    let n = 3 * MIN_BLOCK + 17;
    let lv: Vec<u16> = (0..n).map(|i| ((i * 2654435761) % 251) as u16).collect();
    let p = params(8, -0.3, 0.01);
    let a = in_pool(1, || group_prune(&lv, &p, 0.9, 77));
    let b = in_pool(3, || group_prune(&lv, &p, 0.9, 77));
    assert_eq!(a, b);
    let ra = in_pool(1, || random_prune(&lv, &p, 0.9, 77));
    let rb = in_pool(3, || random_prune(&lv, &p, 0.9, 77));
    assert_eq!(ra, rb);
}

#[test]
fn random_prune_behaviour() {
    let p = params(4, 0.1, 0.1); // no zero level
    let lv: Vec<u16> = (0..200_000).map(|i| (i % 16) as u16).collect();
    let pr = random_prune(&lv, &p, 0.9, 5);
    // Expected 20,000 kept, sd ≈ 134; allow 5 sd.
    assert!((19_330..=20_670).contains(&pr.len()), "{}", pr.len());
    assert!(pr.positions.windows(2).all(|w| w[0] < w[1]));
    for (&pos, &l) in pr.positions.iter().zip(&pr.levels) {
        assert_eq!(lv[pos as usize], l);
    }
    assert_eq!(random_prune(&lv, &p, 0.0, 5).len(), lv.len());
    assert_eq!(random_prune(&lv, &p, 1.0, 5).len(), 0);
    assert_ne!(random_prune(&lv, &p, 0.5, 5), random_prune(&lv, &p, 0.5, 6));
    // Zero-valued entries are never kept.
    let z = params(2, -1.0, 1.0);
    let pr = random_prune(&[1, 1, 0, 2], &z, 0.0, 1);
    assert_eq!(pr.positions, vec![2, 3]);
}

proptest! {
    #[test]
    fn quantization_error_is_at_most_half_a_step(
        x in prop::collection::vec(-10.0f32..10.0, 2..200),
        bits in 1u8..=16,
    ) {
        let p = QuantParams::fit(&x, bits).unwrap();
        let mut q = vec![0u16; x.len()];
        quantize(&x, &p, &mut q);
        let hi = x.iter().cloned().fold(f32::MIN, f32::max);
        // Rounding slack of the f32 arithmetic: a few ulps of the magnitudes involved.
        let slack = 4.0 * f32::EPSILON * (p.lo.abs() + hi.abs());
        for (&v, &l) in x.iter().zip(&q) {
            prop_assert!(u32::from(l) < p.levels());
            let err = (p.dequantize(l) - v).abs();
            prop_assert!(err <= 0.5 * p.step + slack, "x {} level {} err {} step {}", v, l, err, p.step);
        }
    }

    #[test]
    fn dac_keeps_exact_share_of_every_level(
        lv in prop::collection::vec(0u16..16, 0..3000),
        rate in 0.0f64..1.0,
        seed in any::<u64>(),
        lo_steps in 0u32..20,
    ) {
        // lo = -lo_steps * 0.125 so that some level may decode to exactly 0.
        let p = params(4, -(lo_steps as f32) * 0.125, 0.125);
        let pr = group_prune(&lv, &p, rate, seed);
        let counts = level_counts(&lv);
        let zeros: u64 = counts.iter().enumerate()
            .filter(|(g, _)| p.dequantize(*g as u16) == 0.0).map(|(_, &c)| c).sum();
        let r = dac_group_rate(rate, if lv.is_empty() { 0.0 } else { zeros as f64 / lv.len() as f64 });
        let kept = kept_per_level(&pr, counts.len().max(1));
        for (g, &n_g) in counts.iter().enumerate() {
            let expect = if p.dequantize(g as u16) == 0.0 { 0 } else { n_g - dac_drop_count(n_g, r) };
            prop_assert_eq!(kept[g], expect, "level {}", g);
        }
        prop_assert!(pr.positions.windows(2).all(|w| w[0] < w[1]));
        for (&pos, &l) in pr.positions.iter().zip(&pr.levels) {
            prop_assert_eq!(lv[pos as usize], l);
        }
    }
}

// ---------- fast kernels equal the reference formulas ----------

/// The rounding formula as ALGORITHM.md states it.
fn reference_level(p: &QuantParams, x: f32) -> u16 {
    if p.step == 0.0 {
        return 0;
    }
    let q = ((x - p.lo) / p.step).round();
    q.max(0.0).min(f32::from(p.max_level())) as u16
}

#[test]
fn quantize_one_equals_reference_rounding() {
    let mut rng = DetRng::new(11);
    for bits in [1u8, 2, 4, 8, 16] {
        let p = params(bits, -0.37, 0.0123);
        let top = f32::from(p.max_level());
        let mut xs = vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            p.lo,
            p.lo - 1.0,
            p.lo + top * p.step,
            p.lo + (top + 3.0) * p.step,
            f32::MAX,
            f32::MIN,
        ];
        // Exact halves and their float neighbours, where rounding direction matters.
        for k in 0..200 {
            let v = (k as f32 - 20.0) * 0.5;
            let x = p.lo + v * p.step;
            xs.extend([
                x,
                f32::from_bits(x.to_bits() + 1),
                f32::from_bits(x.to_bits() - 1),
            ]);
        }
        for _ in 0..20_000 {
            let u = rng.unit_f64() as f32;
            xs.push(p.lo + (u * 1.2 - 0.1) * top * p.step);
        }
        for x in xs {
            assert_eq!(
                p.quantize_one(x),
                reference_level(&p, x),
                "bits {bits}, x {x:e}"
            );
        }
    }
}

#[test]
fn fit_equals_sequential_scan_including_signed_zeros() {
    let reference = |d: &[f32]| {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &x in d {
            lo = lo.min(x);
            hi = hi.max(x);
        }
        (lo.to_bits(), hi.to_bits())
    };
    let mut rng = DetRng::new(3);
    for case in 0..6 {
        let mut d: Vec<f32> = (0..100_003)
            .map(|_| (rng.unit_f64() as f32) * 0.01)
            .collect();
        match case {
            0 => {}
            1 => d.iter_mut().step_by(7).for_each(|x| *x = 0.0),
            2 => d.iter_mut().step_by(5).for_each(|x| *x = -0.0),
            3 => d.iter_mut().for_each(|x| *x = -*x),
            4 => {
                d.iter_mut().for_each(|x| *x = -*x);
                d.iter_mut().step_by(3).for_each(|x| *x = -0.0);
                d[17] = 0.0;
            }
            _ => d.iter_mut().for_each(|x| *x = 0.0),
        }
        let q = QuantParams::fit(&d, 4).unwrap();
        let (lo, _) = reference(&d);
        assert_eq!(q.lo.to_bits(), lo, "case {case}");
    }
}

#[test]
fn quantized_counts_equal_level_counts_of_quantize() {
    let mut rng = DetRng::new(21);
    let d: Vec<f32> = (0..300_001)
        .map(|_| ((rng.unit_f64() - 0.5) * 0.02) as f32)
        .collect();
    for bits in [1u8, 3, 4, 8] {
        let q = QuantParams::fit(&d, bits).unwrap();
        let mut levels = vec![0u16; d.len()];
        quantize(&d, &q, &mut levels);
        let fused = in_pool(3, || quantized_counts(&d, &q));
        assert_eq!(fused, level_counts(&levels), "bits {bits}");
        assert_eq!(
            quantized_std_from_counts(&fused, &q).to_bits(),
            quantized_std(&levels, &q).to_bits()
        );
    }
    // Only the low half of the levels used: trimmed like level_counts.
    let p = params(4, 0.0, 1.0);
    let d = [0.0f32, 1.0, 2.0, 2.0];
    assert_eq!(quantized_counts(&d, &p), vec![1, 1, 2]);
    assert!(quantized_counts(&[], &p).is_empty());
}

#[test]
fn sort_below_sorts_like_the_standard_sort() {
    let mut r = DetRng::new(5);
    for (len, bound) in [
        (10usize, 100u64),
        (5000, 1 << 11),
        (5000, 1 << 12),
        (70_000, 3_000_001),
        (9000, 1 << 40),
    ] {
        let v: Vec<u64> = (0..len).map(|_| r.below(bound)).collect();
        let mut want = v.clone();
        want.sort_unstable();
        let mut got = v;
        sort_below(&mut got, bound);
        assert_eq!(got, want, "len {len} bound {bound}");
    }
}
