use super::*;
use crate::rng::DetRng;
use crate::tests::in_pool;
use crate::{group_prune, quantize, quantized_counts, Quantizer};
use proptest::prelude::*;

/// A bf16 base/fine-tune pair of `n` entries: base ~ ±0.05, a share `same` of the entries unchanged (Δ = 0),
/// the others moved by a heavy-tailed relative step; `signed_zero` makes every Δ ≥ 0 so the minimum is ±0.
fn bf16_pair(n: usize, seed: u64, same: f64, signed_zero: bool) -> (Vec<u8>, Vec<u8>) {
    let mut r = DetRng::new(seed);
    let mut base = Vec::with_capacity(2 * n);
    let mut ft = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let b = (r.unit_f64() - 0.5) as f32 * 0.1;
        let f = if r.unit_f64() < same {
            b
        } else {
            let u = r.unit_f64().max(1e-9);
            let mut step = (1e-2 / u.sqrt()) as f32 * b.abs().max(1e-3);
            if !signed_zero && r.unit_f64() < 0.5 {
                step = -step;
            }
            b + step
        };
        base.extend_from_slice(&((b.to_bits() >> 16) as u16).to_le_bytes());
        ft.extend_from_slice(&((f.to_bits() >> 16) as u16).to_le_bytes());
    }
    (base, ft)
}

/// The pair of [`bf16_pair`] re-encoded as IEEE half precision (round to nearest); some values become
/// subnormal or zero at f16's range.
fn f16_pair(n: usize, seed: u64, same: f64, signed_zero: bool) -> (Vec<u8>, Vec<u8>) {
    let (base, ft) = bf16_pair(n, seed, same, signed_zero);
    let re = |v: &[u8]| -> Vec<u8> {
        v.chunks_exact(2)
            .flat_map(|c| {
                let x = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
                half::f16::from_f32(x * 0.01).to_bits().to_le_bytes()
            })
            .collect()
    };
    (re(&base), re(&ft))
}

fn materialise(src: &DeltaSource<'_>) -> Vec<f32> {
    let mut d = vec![0f32; src.len()];
    src.delta_into(0, &mut d);
    d
}

/// The prune kernels to try: the portable one, or every vector one this CPU has.
fn vectors(on: bool) -> Vec<Vector> {
    if !on {
        return vec![Vector::Off];
    }
    let mut v = vec![Vector::Auto];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("popcnt") && has!("bmi1") {
            v.push(Vector::Walk(WalkKernel::Avx2));
            if has!("bmi2") {
                v.push(Vector::Walk(WalkKernel::Avx2Pdep));
                if has!("avx512f") && has!("avx512bw") {
                    v.push(Vector::Walk(WalkKernel::Avx512Pdep));
                }
            }
        }
    }
    v
}

/// Every fused result against the slice-based reference, with the vector kernels on and off.
fn check_against_reference(src: &DeltaSource<'_>, bits: u8, rate: f64, seed: u64) {
    let delta = materialise(src);
    let want_q = QuantParams::fit(&delta, bits);
    // Bit patterns, and errors by their message (a NaN in an error is not equal to itself).
    let key = |q: &Result<QuantParams>| match q {
        Ok(q) => format!("{} {:08x} {:08x}", q.bits, q.lo.to_bits(), q.step.to_bits()),
        Err(e) => format!("{e}"),
    };
    for vector in [false, true] {
        let q = fit_source_with(src, bits, vector);
        assert_eq!(key(&q), key(&want_q), "fit, vector {vector}");
    }
    let Ok(q) = want_q else {
        return;
    };
    let mut want_levels = vec![0u16; delta.len()];
    quantize(&delta, &q, &mut want_levels);
    let want_counts = quantized_counts(&delta, &q);
    let want = group_prune(&want_levels, &q, rate, seed);
    for vector in [false, true] {
        let mut levels = vec![0u16; delta.len()];
        levels_source_with(src, &q, &mut levels, vector);
        assert_eq!(levels, want_levels, "levels, vector {vector}");
        let scan = scan_levels_with(src, &q, vector);
        assert_eq!(scan.counts, want_counts, "counts, vector {vector}");
        assert_eq!(
            scan.has_blocks(),
            !delta.is_empty() && q.levels() as usize <= FUSED_GROUPS
        );
        for v in vectors(vector) {
            let mut scratch = Vec::new();
            let got = group_prune_source_with(src, &q, &scan, rate, seed, &mut scratch, v);
            assert_eq!(got, want, "group_prune, {v:?}, bits {bits}, rate {rate}");
        }
    }
}

#[test]
fn bf16_source_equals_the_slice_kernels() {
    // Lengths around the word (64), piece (4096) and block (65536) boundaries.
    for (k, &n) in [0usize, 1, 31, 64, 100, 4096, 4097, 65_536, 3 * 65_536 + 77]
        .iter()
        .enumerate()
    {
        let (base, ft) = bf16_pair(n, k as u64, 0.3, false);
        let src = DeltaSource::Bf16 {
            base: &base,
            ft: &ft,
        };
        for bits in [1u8, 2, 4, 5, 8] {
            for rate in [0.0, 0.5, 0.97, 1.0] {
                check_against_reference(&src, bits, rate, 11 + k as u64);
            }
        }
    }
}

#[test]
fn f16_source_equals_the_slice_kernels() {
    for (k, &n) in [0usize, 5, 64, 4097, 2 * 65_536 + 333].iter().enumerate() {
        let (base, ft) = f16_pair(n, 40 + k as u64, 0.3, false);
        let src = DeltaSource::F16 {
            base: &base,
            ft: &ft,
        };
        // The pair really has subnormal halves (the scale puts many values below f16's normal range).
        if n > 4096 {
            let subnormal = ft
                .chunks_exact(2)
                .filter(|c| {
                    let v = u16::from_le_bytes([c[0], c[1]]);
                    v & 0x7c00 == 0 && v & 0x03ff != 0
                })
                .count();
            assert!(subnormal > 0);
        }
        for bits in [2u8, 4, 8] {
            for rate in [0.5, 0.97] {
                check_against_reference(&src, bits, rate, 3 + k as u64);
            }
        }
    }
    // Every Δ ≥ 0 (a ±0 minimum), and a NaN: the same quantizer or the same error as the reference.
    let (base, mut ft) = f16_pair(70_000, 8, 0.5, true);
    let src = DeltaSource::F16 {
        base: &base,
        ft: &ft,
    };
    check_against_reference(&src, 4, 0.9, 1);
    ft[2 * 66_001..2 * 66_001 + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
    let src = DeltaSource::F16 {
        base: &base,
        ft: &ft,
    };
    check_against_reference(&src, 4, 0.9, 1);
    assert!(fit_source(&src, 4).is_err());
}

#[test]
fn signed_zero_extremes_and_constant_tensors() {
    // Every Δ ≥ 0 with many exact zeros: the minimum is ±0 and goes through the sequential scan.
    let (base, ft) = bf16_pair(2 * 65_536 + 5, 3, 0.5, true);
    let src = DeltaSource::Bf16 {
        base: &base,
        ft: &ft,
    };
    check_against_reference(&src, 4, 0.9, 1);
    // Identical tensors: a constant Δ of zero (step 0).
    let src = DeltaSource::Bf16 {
        base: &base,
        ft: &base,
    };
    check_against_reference(&src, 4, 0.9, 1);
    // -0.0 - +0.0 and friends.
    let zeros: Vec<u8> = [0x0000u16, 0x8000, 0x0000, 0x8000]
        .iter()
        .cycle()
        .take(70_000)
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let other: Vec<u8> = zeros.chunks(2).rev().flatten().copied().collect();
    let src = DeltaSource::Bf16 {
        base: &zeros,
        ft: &other,
    };
    check_against_reference(&src, 3, 0.5, 1);
}

#[test]
fn non_finite_values_give_fits_error() {
    let (base, mut ft) = bf16_pair(70_000, 5, 0.1, false);
    // A NaN at 66_001 and an infinity at 69_999: the first is reported, as QuantParams::fit does.
    ft[2 * 66_001..2 * 66_001 + 2].copy_from_slice(&0x7FC0u16.to_le_bytes());
    ft[2 * 69_999..2 * 69_999 + 2].copy_from_slice(&0x7F80u16.to_le_bytes());
    let src = DeltaSource::Bf16 {
        base: &base,
        ft: &ft,
    };
    let want = QuantParams::fit(&materialise(&src), 4).unwrap_err();
    assert!(matches!(want, Error::NonFinite { index: 66_001, .. }));
    for vector in [false, true] {
        let got = fit_source_with(&src, 4, vector).unwrap_err();
        assert_eq!(format!("{got}"), format!("{want}"));
    }
}

#[test]
fn f32_and_fill_sources_equal_the_slice_kernels() {
    let (base, ft) = bf16_pair(2 * 65_536 + 999, 9, 0.2, false);
    let bf = DeltaSource::Bf16 {
        base: &base,
        ft: &ft,
    };
    let delta = materialise(&bf);
    check_against_reference(&DeltaSource::F32(&delta), 4, 0.97, 2);
    let fill =
        |start: usize, out: &mut [f32]| out.copy_from_slice(&delta[start..start + out.len()]);
    let src = DeltaSource::Fill {
        len: delta.len(),
        fill: &fill,
    };
    for bits in [2u8, 4, 6] {
        check_against_reference(&src, bits, 0.97, 2);
    }
}

#[test]
fn fused_results_do_not_depend_on_the_thread_count() {
    let (base, ft) = bf16_pair(5 * 65_536 + 3, 21, 0.2, false);
    let src = DeltaSource::Bf16 {
        base: &base,
        ft: &ft,
    };
    let run = || {
        let q = fit_source(&src, 4).unwrap();
        let scan = scan_levels(&src, &q);
        group_prune_source(&src, &q, &scan, 0.95, 7, &mut Vec::new())
    };
    let one = in_pool(1, run);
    let two = in_pool(2, run);
    let three = in_pool(3, run);
    assert!(!one.is_empty());
    assert_eq!(one, two);
    assert_eq!(one, three);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn fused_prune_equals_group_prune(
        n in 0usize..20_000,
        seed in any::<u64>(),
        same in 0.0f64..0.9,
        bits in 1u8..=5,
        rate in 0.0f64..=1.0,
    ) {
        let (base, ft) = bf16_pair(n, seed, same, false);
        let src = DeltaSource::Bf16 { base: &base, ft: &ft };
        check_against_reference(&src, bits, rate, seed ^ 1);
    }
}
