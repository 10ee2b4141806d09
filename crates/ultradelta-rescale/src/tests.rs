use super::*;
use proptest::prelude::*;

/// Deterministic standard normals (splitmix64 + Box–Muller), enough for test matrices.
pub(crate) struct Gauss(pub(crate) u64);

impl Gauss {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub(crate) fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    pub(crate) fn matrix(&mut self, rows: usize, cols: usize, scale: f64) -> Vec<f32> {
        (0..rows * cols)
            .map(|_| (self.normal() * scale) as f32)
            .collect()
    }
}

/// Row-major product of `rows × k` and `k × cols` in f64, returned as f32.
fn matmul(a: &[f32], b: &[f32], rows: usize, k: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; rows * cols];
    for i in 0..rows {
        for p in 0..k {
            let x = f64::from(a[i * k + p]);
            for j in 0..cols {
                out[i * cols + j] += x * f64::from(b[p * cols + j]);
            }
        }
    }
    out
}

pub(crate) fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
}

#[test]
fn diagonal_matrix() {
    // diag(3, -4, 0.5) padded to 3 x 5: singular values 3, 4, 0.5 -> 7.5.
    let mut a = vec![0.0f32; 15];
    a[0] = 3.0;
    a[5 + 1] = -4.0;
    a[10 + 2] = 0.5;
    let nn = nuclear_norm(&a, 3, 5).unwrap();
    assert!(rel(nn, 7.5) < 1e-6, "{nn}");
    let r = nuclear_norm_reference(&a, 3, 5).unwrap();
    assert!(rel(r, 7.5) < 1e-12, "{r}");
    // Transposed layout (5 x 3) goes through Aᵀ·A.
    let mut t = vec![0.0f32; 15];
    t[0] = 3.0;
    t[3 + 1] = -4.0;
    t[6 + 2] = 0.5;
    assert!(rel(nuclear_norm(&t, 5, 3).unwrap(), 7.5) < 1e-6);
}

#[test]
fn rank_one_outer_product() {
    // ‖u vᵀ‖_* = ‖u‖·‖v‖. u = (1, 2, 2) (norm 3), v = (2, 0, -1, 2, 4) (norm 5): 15.
    let u = [1.0f32, 2.0, 2.0];
    let v = [2.0f32, 0.0, -1.0, 2.0, 4.0];
    let a: Vec<f32> = u
        .iter()
        .flat_map(|&x| v.iter().map(move |&y| x * y))
        .collect();
    let nn = nuclear_norm(&a, 3, 5).unwrap();
    assert!(rel(nn, 15.0) < 1e-6, "{nn}");
    assert!(rel(nuclear_norm_reference(&a, 3, 5).unwrap(), 15.0) < 1e-12);
}

#[test]
fn orthogonal_matrix() {
    // A rotation times 2 (n = 2) and a 4 x 4 Hadamard/2 (orthogonal): nuclear norm = 2·2, 4.
    let (c, s) = (0.6f32, 0.8f32);
    let r = [2.0 * c, -2.0 * s, 2.0 * s, 2.0 * c];
    assert!(rel(nuclear_norm(&r, 2, 2).unwrap(), 4.0) < 1e-6);
    let h: Vec<f32> = [
        1., 1., 1., 1., 1., -1., 1., -1., 1., 1., -1., -1., 1., -1., -1., 1.,
    ]
    .iter()
    .map(|x| x * 0.5)
    .collect();
    assert!(rel(nuclear_norm(&h, 4, 4).unwrap(), 4.0) < 1e-6);
}

#[test]
fn degenerate_shapes() {
    assert_eq!(nuclear_norm(&[0.0; 12], 3, 4).unwrap(), 0.0);
    assert_eq!(nuclear_norm_reference(&[0.0; 12], 3, 4).unwrap(), 0.0);
    assert_eq!(nuclear_norm(&[], 0, 4).unwrap(), 0.0);
    // 1 x N and N x 1: the Euclidean norm. (3, 4) -> 5.
    assert_eq!(nuclear_norm(&[3.0, 0.0, 4.0], 1, 3).unwrap(), 5.0);
    assert_eq!(nuclear_norm(&[3.0, 0.0, 4.0], 3, 1).unwrap(), 5.0);
    assert!(rel(nuclear_norm_reference(&[3.0, 0.0, 4.0], 3, 1).unwrap(), 5.0) < 1e-12);
    assert_eq!(
        nuclear_norm(&[1.0; 5], 2, 3),
        Err(Error::ShapeMismatch {
            len: 5,
            rows: 2,
            cols: 3
        })
    );
    assert!(matches!(
        nuclear_norm(&[1.0, f32::NAN, 0.0, 1.0], 2, 2),
        Err(Error::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        nuclear_norm(&[1.0; 4], usize::MAX, 2),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn random_dense_matches_reference() {
    let mut g = Gauss(1);
    for &(rows, cols) in &[(64usize, 96usize), (120, 40), (50, 50), (200, 300)] {
        let a = g.matrix(rows, cols, 0.01);
        let detailed = nuclear_norm_detailed(&a, rows, cols).unwrap();
        let fast = detailed.value;
        let exact = nuclear_norm_reference(&a, rows, cols).unwrap();
        // Rectangular Gaussian matrices are well conditioned: the f32 path suffices.
        if rows != cols {
            assert!(!detailed.f64_fallback, "{rows}x{cols} fell back to f64");
        }
        assert!(
            rel(fast, exact) < 1e-5,
            "{rows}x{cols}: {fast} vs {exact} ({})",
            rel(fast, exact)
        );
    }
}

#[test]
fn low_rank_plus_noise_matches_reference() {
    // rank 8 + 1% noise, 150 x 260.
    let (rows, cols, k) = (150, 260, 8);
    let mut g = Gauss(2);
    let u = g.matrix(rows, k, 1.0);
    let v = g.matrix(k, cols, 1.0);
    let low = matmul(&u, &v, rows, k, cols);
    let a: Vec<f32> = low
        .iter()
        .map(|&x| (x + 0.01 * g.normal()) as f32)
        .collect();
    let fast = nuclear_norm(&a, rows, cols).unwrap();
    let exact = nuclear_norm_reference(&a, rows, cols).unwrap();
    assert!(rel(fast, exact) < 1e-4, "{fast} vs {exact}");
}

#[test]
fn exactly_low_rank_matches_reference() {
    // Rank 4 (a merged-LoRA-like delta), 200 x 330. In f32 the zero eigenvalues come out at
    // about ε·λmax and their square roots would add ~1%: the f64 fallback must catch it.
    let (rows, cols, k) = (200, 330, 4);
    let mut g = Gauss(3);
    let u = g.matrix(rows, k, 1.0);
    let v = g.matrix(k, cols, 1.0);
    let a: Vec<f32> = matmul(&u, &v, rows, k, cols)
        .iter()
        .map(|&x| x as f32)
        .collect();
    let detailed = nuclear_norm_detailed(&a, rows, cols).unwrap();
    let fast = detailed.value;
    let exact = nuclear_norm_reference(&a, rows, cols).unwrap();
    assert!(detailed.f64_fallback, "the low-rank guard did not trigger");
    assert!(rel(fast, exact) < 1e-4, "{fast} vs {exact}");
    // Without the fallback the f32 spectrum is visibly off: the guard is needed.
    let view = ndarray::ArrayView2::from_shape((rows, cols), &a[..]).unwrap();
    let ev = blas::serialized(|| gram_eigenvalues::<f32>(view, rows, cols)).unwrap();
    let f32_only = sum_sqrt(ev.into_iter().map(f64::from));
    assert!(
        rel(f32_only, exact) > 1e-4,
        "f32 path alone: {f32_only} vs {exact}"
    );
    // Transposed orientation too.
    let mut t = vec![0.0f32; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    let fast_t = nuclear_norm(&t, cols, rows).unwrap();
    assert!(rel(fast_t, exact) < 1e-4, "{fast_t} vs {exact}");
}

#[test]
fn factors() {
    // s = 0.97: 1 / 0.03 = 33.33…; per-tensor at 0.98: 1 / 0.02 = 50; user factor 0.5 halves.
    let g = rescale_factor(RescaleMode::Global, 0.97, 0.98, 1.0);
    assert!((g - 100.0 / 3.0).abs() < 1e-9, "{g}");
    let p = rescale_factor(RescaleMode::PerTensor, 0.97, 0.98, 1.0);
    assert!((p - 50.0).abs() < 1e-9, "{p}");
    assert!((rescale_factor(RescaleMode::PerTensor, 0.97, 0.98, 0.5) - 25.0).abs() < 1e-9);
    assert_eq!(rescale_factor(RescaleMode::Global, 0.0, 0.5, 1.0), 1.0);
    assert_eq!(
        serde_json::to_string(&RescaleMode::PerTensor).unwrap(),
        "\"per-tensor\""
    );
    assert_eq!(
        serde_json::to_string(&RescaleMode::Global).unwrap(),
        "\"global\""
    );
    assert_eq!(
        serde_json::to_string(&TraceOn::Compressed).unwrap(),
        "\"compressed\""
    );
}

#[test]
fn gammas() {
    // T = (10, 20, 40): γ = T_min / T = (1, 0.5, 0.25); clamped to [0.5, 1]: (1, 0.5, 0.5).
    assert_eq!(
        tngr_gammas(&[10.0, 20.0, 40.0], None).unwrap(),
        vec![1.0, 0.5, 0.25]
    );
    assert_eq!(
        tngr_gammas(&[10.0, 20.0, 40.0], Some((0.5, 1.0))).unwrap(),
        vec![1.0, 0.5, 0.5]
    );
    assert_eq!(tngr_gammas(&[123.4], None).unwrap(), vec![1.0]);
    assert!(tngr_gammas(&[], None).unwrap().is_empty());
    assert_eq!(
        tngr_gammas(&[1.0, 0.0], None),
        Err(Error::InvalidTraceNorm {
            index: 1,
            value: 0.0
        })
    );
    assert!(matches!(
        tngr_gammas(&[f64::NAN], None),
        Err(Error::InvalidTraceNorm { index: 0, .. })
    ));
    assert!(matches!(
        tngr_gammas(&[1.0, f64::INFINITY], None),
        Err(Error::InvalidTraceNorm { index: 1, .. })
    ));
    assert!(matches!(
        tngr_gammas(&[1.0], Some((1.0, 0.5))),
        Err(Error::InvalidClamp { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn nuclear_norm_agrees_with_reference(
        rows in 1usize..40, cols in 1usize..40, seed in any::<u64>(), rank in 1usize..6,
    ) {
        let mut g = Gauss(seed);
        let k = rank.min(rows).min(cols);
        // Low rank half of the time, dense otherwise.
        let a: Vec<f32> = if seed % 2 == 0 {
            let u = g.matrix(rows, k, 1.0);
            let v = g.matrix(k, cols, 1.0);
            matmul(&u, &v, rows, k, cols).iter().map(|&x| x as f32).collect()
        } else {
            g.matrix(rows, cols, 1.0)
        };
        let fast = nuclear_norm(&a, rows, cols).unwrap();
        let exact = nuclear_norm_reference(&a, rows, cols).unwrap();
        prop_assert!(rel(fast, exact) < 1e-4, "{}x{}: {} vs {}", rows, cols, fast, exact);
    }
}

/// Timing on a LLaMA-like slice; run with `cargo test -p ultradelta-rescale -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_1024x2752() {
    let mut g = Gauss(9);
    let (rows, cols) = (1024, 2752);
    let a = g.matrix(rows, cols, 0.01);
    let view = ndarray::ArrayView2::from_shape((rows, cols), &a[..]).unwrap();
    let t = std::time::Instant::now();
    let gram = blas::serialized(|| view.dot(&view.t()));
    println!("gemm alone {:?} ({})", t.elapsed(), gram[[0, 0]]);
    let t = std::time::Instant::now();
    let n = nuclear_norm_detailed(&a, rows, cols).unwrap();
    let fast = t.elapsed();
    let t = std::time::Instant::now();
    let exact = nuclear_norm_reference(&a, rows, cols).unwrap();
    let slow = t.elapsed();
    println!(
        "gram {fast:?} (f64 fallback: {}), svd {slow:?}, rel {}",
        n.f64_fallback,
        rel(n.value, exact)
    );
    assert!(rel(n.value, exact) < 1e-5);
}

/// Found by the property test above: a 6×11 matrix of rank 5 whose f32 error (1.0e-4) the old error bound
/// (half the width of each eigenvalue's interval) put under the budget.
#[test]
fn rank_deficient_6x11_falls_back_to_f64() {
    let (rows, cols, k) = (6usize, 11usize, 5usize);
    let mut g = Gauss(2099765772735097364);
    let u = g.matrix(rows, k, 1.0);
    let v = g.matrix(k, cols, 1.0);
    let a: Vec<f32> = matmul(&u, &v, rows, k, cols)
        .iter()
        .map(|&x| x as f32)
        .collect();
    let d = nuclear_norm_detailed(&a, rows, cols).unwrap();
    let exact = nuclear_norm_reference(&a, rows, cols).unwrap();
    assert!(d.f64_fallback, "{d:?}");
    assert!(rel(d.value, exact) < 1e-4, "{} vs {exact}", d.value);
}

#[test]
fn concurrent_callers_agree_with_sequential() {
    // Debian 12's OpenBLAS gives wrong results to concurrent callers (ultradelta_core::blas); with the lock, four threads
    // computing exact, estimated and reference norms at once get exactly the sequential values. Without it
    // this failed in most runs on the 2-core machine.
    let mut g = Gauss(41);
    let shapes = [(300usize, 500usize), (400, 400), (256, 900)];
    let mats: Vec<Vec<f32>> = shapes.iter().map(|&(r, c)| g.matrix(r, c, 0.02)).collect();
    let est = NuclearNormMethod::Estimate(EstimateConfig::default());
    let run = |i: usize| {
        let (r, c) = shapes[i];
        let m = &mats[i];
        (
            nuclear_norm(m, r, c).unwrap(),
            nuclear_norm_with(m, r, c, &est, 5).unwrap().value,
            nuclear_norm_reference(m, r, c).unwrap(),
        )
    };
    let sequential: Vec<_> = (0..shapes.len()).map(run).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || {
                    (0..3 * shapes.len())
                        .map(|k| {
                            let i = (k + t) % shapes.len();
                            (i, run(i))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, got) in h.join().unwrap() {
                assert_eq!(got, sequential[i], "matrix {i}: concurrent result differs");
            }
        }
    });
}
