//! The nuclear-norm estimator against the exact route, on every kind of delta it must handle.

use ndarray::Array2;

use super::*;
use crate::tests::{rel, Gauss};

/// The accuracy the estimator promises (issue 6): within 1% of exact.
const BUDGET: f64 = 0.01;

fn estimate(data: &[f32], rows: usize, cols: usize, seed: u64) -> NuclearNorm {
    nuclear_norm_with(
        data,
        rows,
        cols,
        &NuclearNormMethod::Estimate(EstimateConfig::default()),
        seed,
    )
    .unwrap()
}

/// Estimates with two seeds and checks both against the exact norm; returns the first.
fn assert_close(what: &str, data: &[f32], rows: usize, cols: usize) -> NuclearNorm {
    let exact = nuclear_norm(data, rows, cols).unwrap();
    let mut first = None;
    for seed in [1u64, 2] {
        let est = estimate(data, rows, cols, seed);
        assert!(
            est.estimated,
            "{what}: the estimate path must run at {rows}x{cols}"
        );
        let err = rel(est.value, exact);
        eprintln!(
            "{what} {rows}x{cols} seed {seed}: rel. error {:+.4}% (std. error {:.4}%, {} probes, {} deflated, {} matvecs)",
            100.0 * (est.value - exact) / exact,
            100.0 * est.std_error / est.value,
            est.probes,
            est.deflated,
            est.matvecs
        );
        assert!(
            err < BUDGET,
            "{what} {rows}x{cols} seed {seed}: {} vs exact {exact} ({err:.4})",
            est.value
        );
        first.get_or_insert(est);
    }
    first.unwrap()
}

fn product(a: &[f32], b: &[f32], rows: usize, k: usize, cols: usize) -> Vec<f32> {
    let a = Array2::from_shape_vec((rows, k), a.to_vec()).unwrap();
    let b = Array2::from_shape_vec((k, cols), b.to_vec()).unwrap();
    // Test helpers call BLAS too: under the same lock as the library (tests run in parallel; see ultradelta_core::blas).
    blas::serialized(|| a.dot(&b)).into_raw_vec_and_offset().0
}

fn low_rank(g: &mut Gauss, rows: usize, cols: usize, rank: usize) -> Vec<f32> {
    let u = g.matrix(rows, rank, 1.0);
    let v = g.matrix(rank, cols, 1.0);
    product(&u, &v, rows, rank, cols)
}

fn low_rank_plus_noise(
    g: &mut Gauss,
    rows: usize,
    cols: usize,
    rank: usize,
    noise: f64,
) -> Vec<f32> {
    let s = low_rank(g, rows, cols, rank);
    let rms = (s.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / s.len() as f64).sqrt();
    s.iter()
        .map(|&x| x + (g.normal() * noise * rms) as f32)
        .collect()
}

#[test]
fn dense_gaussian() {
    let mut g = Gauss(11);
    assert_close("gaussian", &g.matrix(512, 1536, 1e-3), 512, 1536);
    assert_close("gaussian", &g.matrix(1024, 2752, 1e-3), 1024, 2752);
}

#[test]
fn sparse_97_percent() {
    let mut g = Gauss(12);
    for (rows, cols) in [(512, 1536), (1024, 2752)] {
        let a: Vec<f32> = g
            .matrix(rows, cols, 1.0)
            .into_iter()
            .map(|x| if g.unit() < 0.97 { 0.0 } else { x })
            .collect();
        assert_close("97%-sparse", &a, rows, cols);
    }
}

#[test]
fn low_rank_plus_one_percent_noise() {
    let mut g = Gauss(13);
    let a = low_rank_plus_noise(&mut g, 512, 1536, 64, 0.01);
    let est = assert_close("rank-64 + 1% noise", &a, 512, 1536);
    assert!(
        est.deflated >= 64,
        "the sketch must widen past the 64 spikes: {}",
        est.deflated
    );
    let a = low_rank_plus_noise(&mut g, 1024, 2752, 16, 0.01);
    assert_close("rank-16 + 1% noise", &a, 1024, 2752);
}

#[test]
fn exactly_low_rank_is_exact() {
    // Plain SLQ is 16% off here (DEPENDENCIES.md §3); deflation makes it exact.
    let mut g = Gauss(14);
    for (rows, cols, rank) in [(512, 1536, 8), (1024, 2752, 64)] {
        let a = low_rank(&mut g, rows, cols, rank);
        let reference = nuclear_norm_reference(&a, rows, cols).unwrap();
        let est = estimate(&a, rows, cols, 3);
        assert!(est.low_rank, "rank {rank} not detected: {est:?}");
        assert!(
            rel(est.value, reference) < 1e-4,
            "rank {rank}: {} vs {reference}",
            est.value
        );
        // The same in the transposed layout (rows > cols goes through Aᵀ).
        let t: Vec<f32> = (0..rows * cols)
            .map(|i| a[(i % rows) * cols + i / rows])
            .collect();
        let est_t = estimate(&t, cols, rows, 3);
        assert!(
            rel(est_t.value, reference) < 1e-4,
            "rank {rank}, transposed: {}",
            est_t.value
        );
    }
}

#[test]
fn heavy_tailed_student_t() {
    let mut g = Gauss(15);
    let (rows, cols) = (1024, 2752);
    let a: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let z = g.normal();
            let chi2: f64 = (0..3).map(|_| g.normal().powi(2)).sum();
            (1e-3 * z / (chi2 / 3.0).sqrt()) as f32
        })
        .collect();
    assert_close("student-t(3)", &a, rows, cols);
}

#[test]
fn synthetic_fine_tune_deltas() {
    use ultradelta_synth::{generate_values, tensor_specs, Shape, SynthConfig};
    let cfg = SynthConfig::new(Shape::BertBase);
    let wanted = [
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.intermediate.dense.weight",
    ];
    let specs = tensor_specs(Shape::BertBase);
    for name in wanted {
        let (_, shape) = specs
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no tensor {name}"));
        let delta = generate_values(&cfg, name).unwrap().delta;
        assert_close(name, &delta, shape[0], shape[1]);
    }
}

#[test]
fn deterministic_given_the_seed() {
    let mut g = Gauss(16);
    let a = g.matrix(512, 1536, 1.0);
    let x = estimate(&a, 512, 1536, 9);
    let y = estimate(&a, 512, 1536, 9);
    assert_eq!(x.value.to_bits(), y.value.to_bits());
    let z = estimate(&a, 512, 1536, 10);
    assert_ne!(
        x.value.to_bits(),
        z.value.to_bits(),
        "a different seed draws different probes"
    );
}

#[test]
fn auto_and_small_matrices_are_exact() {
    let mut g = Gauss(17);
    let a = g.matrix(300, 700, 1.0);
    let exact = nuclear_norm(&a, 300, 700).unwrap();
    let auto = nuclear_norm_with(&a, 300, 700, &NuclearNormMethod::Auto, 0).unwrap();
    assert!(!auto.estimated && auto.value == exact);
    // Under Estimate, a short side of at most 2·(deflation_rank + probe_batch) is computed exactly.
    let small = g.matrix(90, 400, 1.0);
    let est = nuclear_norm_with(
        &small,
        90,
        400,
        &NuclearNormMethod::Estimate(EstimateConfig::default()),
        0,
    )
    .unwrap();
    assert!(!est.estimated);
    assert_eq!(est.value, nuclear_norm(&small, 90, 400).unwrap());
    let exact_method = nuclear_norm_with(&a, 300, 700, &NuclearNormMethod::Exact, 0).unwrap();
    assert_eq!(exact_method.value, exact);
    // Zero matrices, vectors and bad input behave as in the exact route.
    let zeros = vec![0.0f32; 200 * 300];
    let method = NuclearNormMethod::Estimate(EstimateConfig::default());
    assert_eq!(
        nuclear_norm_with(&zeros, 200, 300, &method, 0)
            .unwrap()
            .value,
        0.0
    );
    assert!(matches!(
        nuclear_norm_with(&zeros, 200, 301, &method, 0),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut nan = g.matrix(200, 300, 1.0);
    nan[5] = f32::NAN;
    assert!(matches!(
        nuclear_norm_with(&nan, 200, 300, &method, 0),
        Err(Error::NonFinite { index: 5, .. })
    ));
}

#[test]
fn config_validation_and_serde() {
    let bad = [
        EstimateConfig {
            probe_batch: 0,
            ..EstimateConfig::default()
        },
        EstimateConfig {
            max_probes: 1,
            ..EstimateConfig::default()
        },
        EstimateConfig {
            max_lanczos_steps: 0,
            ..EstimateConfig::default()
        },
        EstimateConfig {
            target_rel_std_error: 0.0,
            ..EstimateConfig::default()
        },
        EstimateConfig {
            lanczos_tol: f64::NAN,
            ..EstimateConfig::default()
        },
    ];
    let a = vec![1.0f32; 200 * 300];
    for cfg in bad {
        let r = nuclear_norm_with(&a, 200, 300, &NuclearNormMethod::Estimate(cfg.clone()), 0);
        assert!(
            matches!(r, Err(Error::InvalidEstimateConfig { .. })),
            "{cfg:?}: {r:?}"
        );
    }
    assert_eq!(
        serde_json::to_string(&NuclearNormMethod::Auto).unwrap(),
        "\"auto\""
    );
    assert_eq!(
        serde_json::to_string(&NuclearNormMethod::Exact).unwrap(),
        "\"exact\""
    );
    let m: NuclearNormMethod =
        serde_json::from_str(r#"{"estimate": {"deflation-rank": 16, "max-probes": 64}}"#).unwrap();
    let NuclearNormMethod::Estimate(cfg) = m else {
        panic!("{m:?}")
    };
    assert_eq!(
        (cfg.deflation_rank, cfg.max_probes, cfg.probe_batch),
        (16, 64, 16)
    );
    assert!(serde_json::from_str::<NuclearNormMethod>(r#"{"estimate": {"probes": 3}}"#).is_err());
    assert_eq!(NuclearNormMethod::default(), NuclearNormMethod::Auto);
}

/// LLaMA-2-7B MLP size, release only: `cargo test --release -p ultradelta-rescale -- --ignored`.
#[test]
#[ignore = "large (4096 x 11008); run in release"]
fn llama_mlp_size() {
    let (rows, cols) = (4096, 11008);
    let mut g = Gauss(18);
    assert_close("gaussian", &g.matrix(rows, cols, 1e-3), rows, cols);
    let a = low_rank(&mut g, rows, cols, 16);
    let est = estimate(&a, rows, cols, 1);
    assert!(est.low_rank && rel(est.value, nuclear_norm(&a, rows, cols).unwrap()) < 1e-4);
    let a = low_rank_plus_noise(&mut g, rows, cols, 64, 0.01);
    assert_close("rank-64 + 1% noise", &a, rows, cols);
}

/// `U·diag(σ)·Vᵀ` (`rows × cols`, `rows <= cols`) with Haar-like orthonormal `U`, `V` (QR of Gaussians, in
/// f64), rounded to f32: a matrix whose nuclear norm is `Σσ` (to f32 rounding, ~1e-7 relative).
fn with_singular_values(g: &mut Gauss, rows: usize, cols: usize, sigma: &[f64]) -> Vec<f32> {
    use ndarray_linalg::QR;
    assert!(rows <= cols && sigma.len() == rows);
    let gaussian =
        |g: &mut Gauss, r: usize, c: usize| Array2::from_shape_fn((r, c), |_| g.normal());
    let (u, _) = blas::serialized(|| gaussian(g, rows, rows).qr()).unwrap();
    let (v, _) = blas::serialized(|| gaussian(g, cols, rows).qr()).unwrap();
    assert_eq!((u.dim(), v.dim()), ((rows, rows), (cols, rows)));
    let us = u * &ndarray::Array1::from(sigma.to_vec());
    blas::serialized(|| us.dot(&v.t()))
        .mapv(|x| x as f32)
        .into_raw_vec_and_offset()
        .0
}

#[test]
fn known_singular_values_within_the_bound() {
    let mut g = Gauss(23);
    // A fine-tune-like spectrum: eight spikes over a decaying bulk, on a rectangular matrix.
    let (rows, cols) = (400, 1000);
    let spiky: Vec<f64> = (0..rows)
        .map(|i| {
            if i < 8 {
                20.0 - i as f64
            } else {
                1.0 / (1.0 + i as f64 / 40.0)
            }
        })
        .collect();
    // The hard case for quadrature: a square matrix whose singular values fall linearly to 0.
    let n = 384;
    let linear: Vec<f64> = (0..n).map(|i| 1.0 - i as f64 / n as f64).collect();
    for (what, rows, cols, sigma) in [
        ("spikes + decaying bulk", rows, cols, spiky),
        ("linear to zero, square", n, n, linear),
    ] {
        let a = with_singular_values(&mut g, rows, cols, &sigma);
        let truth: f64 = sigma.iter().sum();
        let exact = nuclear_norm(&a, rows, cols).unwrap();
        assert!(
            rel(exact, truth) < 1e-4,
            "{what}: exact {exact} vs Σσ {truth}"
        );
        for seed in [3u64, 4] {
            let est = estimate(&a, rows, cols, seed);
            let err = (est.value - truth).abs();
            eprintln!(
                "{what}: estimate {:.6} vs Σσ {truth:.6} ({:+.4}%, std. error {:.4}%)",
                est.value,
                100.0 * (est.value - truth) / truth,
                100.0 * est.std_error / truth
            );
            assert!(est.estimated, "{what}");
            assert!(
                err < BUDGET * truth,
                "{what} seed {seed}: {} vs {truth}",
                est.value
            );
            // The error is the Hutchinson part's noise plus the quadrature's bias (lanczos_tol per form):
            // within four standard errors plus 0.2%.
            assert!(
                err <= 4.0 * est.std_error + 0.002 * truth,
                "{what} seed {seed}: error {err} vs std. error {}",
                est.std_error
            );
        }
    }
}

#[test]
fn auto_picks_the_measured_faster_route() {
    // (rows, cols, estimated): the shapes of the families' linear layers, both orientations.
    for (rows, cols, want) in [
        (768, 768, false),   // BERT-base attention: exact is ~2-5x faster
        (3072, 768, true),   // BERT-base MLP: the estimate is ~2x faster
        (1024, 1024, false), // exact 1.7-5x faster
        (1024, 2752, true),  // estimate ~5x faster
        (1536, 1536, true),  // about even
        (256, 2048, false),  // LLaMA-1B / SmolLM2 grouped K/V: small, exact
        (2048, 2048, true),  // LLaMA-1B attention: estimate 1.4-1.5x faster
        (5632, 2048, true),  // LLaMA-1B MLP: estimate 7.5-9x faster
        (4096, 4096, true),  // LLaMA-7B attention
        (4096, 11008, true), // LLaMA-7B MLP
        (576, 1536, false),  // SmolLM2-135M MLP: short side below 768
        (700, 3000, false),
    ] {
        assert_eq!(auto_estimates(rows, cols), want, "{rows}x{cols}");
        assert_eq!(auto_estimates(cols, rows), want, "{cols}x{rows}");
    }
    // Auto follows the rule on both sides of the aspect boundary (768 x 1920 is 2.5).
    let mut g = Gauss(29);
    let a = g.matrix(768, 1800, 1.0);
    let auto = nuclear_norm_with(&a, 768, 1800, &NuclearNormMethod::Auto, 0).unwrap();
    assert!(!auto.estimated && !auto_estimates(768, 1800));
    assert_eq!(auto.value, nuclear_norm(&a, 768, 1800).unwrap());
    let b = g.matrix(768, 1921, 1.0);
    let est = nuclear_norm_with(&b, 768, 1921, &NuclearNormMethod::Auto, 0).unwrap();
    assert!(est.estimated && auto_estimates(768, 1921));
    assert!(rel(est.value, nuclear_norm(&b, 768, 1921).unwrap()) < BUDGET);
}
