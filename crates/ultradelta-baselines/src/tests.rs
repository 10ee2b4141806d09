//! Hand-checked small cases, one per kernel.

use super::*;
use ultradelta_archive::{
    DenseLevelsRecord, LowRankRecord, Record, SignRecord, SparseValuesRecord,
};

// The results as the archive records the facade stores them as, to decode them with the records' formulas.
fn rec_sv(r: SparseValues) -> Record {
    Record::SparseValues(SparseValuesRecord {
        numel: r.numel,
        scale: r.scale,
        positions: r.positions,
        values: r.values,
    })
}

fn rec_sign(r: Signs) -> Record {
    Record::Sign(SignRecord {
        numel: r.numel,
        magnitude: r.magnitude,
        positions: r.positions,
        negative: r.negative,
    })
}

fn rec_lr(r: LowRank) -> Record {
    Record::LowRank(LowRankRecord {
        rows: r.rows,
        cols: r.cols,
        rank: r.rank,
        u: r.u,
        v: r.v,
        scale: r.scale,
    })
}

fn rec_dl(r: DenseLevels) -> Record {
    Record::DenseLevels(DenseLevelsRecord {
        quant: r.quant,
        scale: r.scale,
        levels: r.levels,
    })
}

fn dense(r: Record, n: usize) -> Vec<f32> {
    r.delta_to_dense(n, 1.0).unwrap()
}

#[test]
fn f16_norm_is_a_power_of_two_near_2_14() {
    assert_eq!(f16_norm(0.0), 1.0);
    let n = f16_norm(3e-5);
    assert_eq!(n.log2().fract(), 0.0);
    let y = 3e-5 / n;
    assert!((8192.0..16384.0).contains(&y), "{y}");
}

#[test]
fn magnitude_keeps_the_largest_entries() {
    let d = [0.1f32, -0.5, 0.2, 0.5, 0.0, -0.05];
    // density 0.5 → k = 3: |−0.5| and |0.5| and 0.2; tie between −0.5 (index 1) and 0.5 (index 3) both kept.
    let r = magnitude(&d, 0.5).unwrap();
    assert_eq!(r.positions, vec![1, 2, 3]);
    assert_eq!(
        dense(rec_sv(r), 6),
        vec![0.0, -0.5, 0.19995117, 0.5, 0.0, 0.0]
    );
    // Ties broken by the lower index: k = 1 keeps index 1, not 3.
    assert_eq!(magnitude(&d, 1.0 / 6.0).unwrap().positions, vec![1]);
    assert!(magnitude(&d, 0.0).unwrap().positions.is_empty());
    assert!(magnitude(&d, 1.5).is_err());
    assert!(magnitude(&[f32::NAN], 0.5).is_err());
}

#[test]
fn dare_rescales_survivors_and_nests() {
    let d: Vec<f32> = (0..10_000)
        .map(|i| ((i % 17) as f32 - 8.0) * 1e-5 + 1e-6)
        .collect();
    let r = dare(&d, 0.9, 7).unwrap();
    let kept = r.positions.len() as f64 / d.len() as f64;
    assert!((kept - 0.1).abs() < 0.02, "kept {kept}");
    let out = dense(rec_sv(r.clone()), d.len());
    for &p in &r.positions {
        let want = d[p as usize] * 10.0;
        assert!(
            (out[p as usize] - want).abs() <= want.abs() * 2e-3,
            "{} vs {want}",
            out[p as usize]
        );
    }
    // Larger p keeps a subset; same seed, same record.
    let r2 = dare(&d, 0.95, 7).unwrap();
    assert!(r2
        .positions
        .iter()
        .all(|p| r.positions.binary_search(p).is_ok()));
    assert_eq!(dare(&d, 0.9, 7).unwrap(), r);
    assert_ne!(dare(&d, 0.9, 8).unwrap().positions, r.positions);
    assert!(dare(&d, 1.0, 7).is_err());
}

#[test]
fn bitdelta_is_sign_times_mean_abs() {
    let d = [0.5f32, -0.25, 0.0, -1.0];
    let r = bitdelta(&d).unwrap();
    assert_eq!(r.magnitude, 0.4375);
    assert_eq!(r.negative, vec![false, true, false, true]);
    assert_eq!(
        dense(rec_sign(r), 4),
        vec![0.4375, -0.4375, 0.4375, -0.4375]
    );
}

#[test]
fn compeft_keeps_top_signs_with_one_magnitude() {
    let d = [0.1f32, -0.6, 0.2, 0.4, 0.0, -0.05];
    let r = compeft(&d, 0.5, None).unwrap();
    assert_eq!(r.positions.as_deref(), Some(&[1u64, 2, 3][..]));
    assert!((r.magnitude - 0.4).abs() < 1e-7);
    let out = dense(rec_sign(r), 6);
    assert!((out[1] + 0.4).abs() < 1e-7 && (out[2] - 0.4).abs() < 1e-7 && out[0] == 0.0);
    // alpha·σ: σ of [1, -1] is 1.
    let r = compeft(&[1.0, -1.0], 1.0, Some(2.0)).unwrap();
    assert_eq!(r.magnitude, 2.0);
    assert!(compeft(&d, 0.5, Some(-1.0)).is_err());
}

#[test]
fn quant_alone_round_trips_to_the_grid() {
    let d = [0.0f32, 1.0, 2.0, 3.0];
    let r = quant(&d, 2).unwrap();
    assert_eq!(r.levels, vec![0, 1, 2, 3]);
    assert_eq!(dense(rec_dl(r), 4), d.to_vec());
    assert!(quant(&d, 0).is_err());
}

#[test]
fn lowrank_recovers_a_rank_one_matrix() {
    // Δ = a·bᵀ with a = [1, 2, 3], b = [1e-4, -2e-4]: rank 1 is exact up to fp16.
    let a = [1.0f32, 2.0, 3.0];
    let b = [1e-4f32, -2e-4];
    let d: Vec<f32> = a
        .iter()
        .flat_map(|x| b.iter().map(move |y| x * y))
        .collect();
    let r = lowrank(&d, 3, 2, 1).unwrap();
    assert_eq!((r.rank, r.u.len(), r.v.len()), (1, 3, 2));
    let out = dense(rec_lr(r), 6);
    for (o, w) in out.iter().zip(&d) {
        assert!((o - w).abs() <= w.abs() * 2e-3, "{o} vs {w}");
    }
    // Rank is capped by the shape; rank 0 stores nothing.
    assert_eq!(lowrank(&d, 3, 2, 10).unwrap().rank, 2);
    assert_eq!(
        dense(rec_lr(lowrank(&d, 3, 2, 0).unwrap()), 6),
        vec![0.0; 6]
    );
    assert!(lowrank(&d, 4, 2, 1).is_err());
}

#[test]
fn lowrank_full_rank_is_nearly_exact() {
    let d: Vec<f32> = (0..48)
        .map(|i| (((i * 37) % 23) as f32 - 11.0) * 1e-5)
        .collect();
    let out = dense(rec_lr(lowrank(&d, 6, 8, 6).unwrap()), 48);
    let err = out
        .iter()
        .zip(&d)
        .map(|(o, w)| (o - w).abs())
        .fold(0f32, f32::max);
    assert!(err < 2e-7, "max error {err}");
}

/// A `rows × cols` matrix with singular values `sigma` (decreasing) on pseudo-random orthonormal directions, plus
/// a deterministic noise of size `noise` per entry.
fn spectrum_matrix(rows: usize, cols: usize, sigma: &[f64], noise: f64) -> Vec<f32> {
    use ndarray_linalg::QR;
    let mut rng = DetRng::new(7);
    let mut g = |r: usize, c: usize| Array2::from_shape_fn((r, c), |_| rng.unit_f64() - 0.5);
    let k = sigma.len();
    let (u, _) = g(rows, k).qr().unwrap();
    let (v, _) = g(cols, k).qr().unwrap();
    let us = u * &ndarray::Array1::from(sigma.to_vec());
    let a = us.dot(&v.t()) + g(rows, cols) * noise;
    a.iter().map(|&x| x as f32).collect()
}

#[test]
fn top_singular_finds_the_leading_triplets_by_sketch_and_exactly() {
    let sigma = [5.0, 3.0, 2.0, 1.0, 0.5];
    // k = 3: the sketch path (3 + 8 < min(rows, cols)) on tall and wide matrices; the exact path on a tall and a
    // wide one (min(rows, cols) ≤ 11).
    for (rows, cols) in [(120, 90), (90, 120), (12, 9), (9, 40)] {
        let d = spectrum_matrix(rows, cols, &sigma, 1e-4);
        let t = top_singular(&d, rows, cols, 3, 11).unwrap();
        assert_eq!((t.u.len(), t.s.len(), t.v.len()), (3 * rows, 3, 3 * cols));
        for (got, want) in t.s.iter().zip(&sigma) {
            assert!(
                (f64::from(*got) - want).abs() < 1e-2 * want,
                "{rows}x{cols}: σ {got} vs {want}"
            );
        }
        // u_k·σ_k·v_kᵀ summed over the three is the best rank-3 approximation: its error is the rest's energy.
        let mut err = 0.0f64;
        for i in 0..rows {
            for j in 0..cols {
                let approx: f32 = (0..3)
                    .map(|c| t.u[c * rows + i] * t.s[c] * t.v[c * cols + j])
                    .sum();
                err += f64::from(d[i * cols + j] - approx).powi(2);
            }
        }
        let rest: f64 = sigma[3..].iter().map(|x| x * x).sum();
        assert!(
            (err - rest).abs() < 0.05 * rest,
            "{rows}x{cols}: residual energy {err} vs {rest}"
        );
    }
    // Same seed, same result; k is capped by the shape; a wrong shape is refused.
    let d = spectrum_matrix(120, 90, &sigma, 1e-4);
    assert_eq!(
        top_singular(&d, 120, 90, 3, 11).unwrap(),
        top_singular(&d, 120, 90, 3, 11).unwrap()
    );
    assert_eq!(top_singular(&d[..12 * 9], 12, 9, 40, 1).unwrap().s.len(), 9);
    assert!(top_singular(&d, 121, 90, 3, 1).is_err());
    assert_eq!(top_singular(&d, 120, 90, 0, 1).unwrap().s.len(), 0);
}

/// `f` run inside a rayon pool of one thread.
fn on_one_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(f)
}

/// The whole SVD, not only its products with Δ, gives the same bits on one thread as on many: the small
/// factorizations are sequential and every sum has a fixed order.
#[test]
fn top_singular_is_the_same_bits_on_any_thread_count() {
    let d = spectrum_matrix(300, 150, &[4.0, 2.0, 1.0, 0.5], 0.3);
    for (rows, cols) in [(300, 150), (150, 300)] {
        let run = || top_singular(&d, rows, cols, 16, 5).unwrap();
        let many = run();
        let one = on_one_thread(run);
        assert_eq!(one, many, "{rows}x{cols}");
    }
}

/// The SVD's products are the plain sums — each entry summed in index order, a multiply then an add — to the bit,
/// at the sketch's usual width (the registers-sized path) and at another, on column blocks and row chunks that do
/// not divide the matrix, and on one thread as on many.
#[test]
fn sketch_products_are_the_plain_sums_on_any_thread_count() {
    // 300 rows (a row chunk of 256 and the rest), 150 columns (blocks of 64, 64 and 22).
    let (rows, cols) = (300, 150);
    let d = spectrum_matrix(rows, cols, &[4.0, 2.0, 1.0], 0.3);
    for w in [crate::MAX_SKETCH_WIDTH, 11] {
        let m = Array2::from_shape_fn((cols, w), |(i, j)| ((i * 7 + j * 3) as f64 * 0.37).sin());
        let q = Array2::from_shape_fn((rows, w), |(i, j)| ((i * 5 + j * 11) as f64 * 0.23).cos());
        let mut dm = Array2::<f64>::zeros((rows, w));
        let mut dq = Array2::<f64>::zeros((cols, w));
        for i in 0..rows {
            for j in 0..cols {
                let a = f64::from(d[i * cols + j]);
                for k in 0..w {
                    dm[[i, k]] += a * m[[j, k]];
                    dq[[j, k]] += a * q[[i, k]];
                }
            }
        }
        let run = || {
            (
                crate::times(&d, cols, &m),
                crate::transposed_times(&d, cols, &q),
            )
        };
        let many = run();
        assert_eq!(many, (dm, dq), "width {w}");
        let one = on_one_thread(run);
        assert_eq!(one, many, "width {w}, one thread");
    }
}
