//! Exact versus estimated nuclear norm: speed and error per kind of delta.
//!
//! `cargo run --release -p ultradelta-rescale --example nuclear_norm_speed -- [ROWSxCOLS ...]`
//! (default `4096x4096 4096x11008`). Prints one line per (size, kind): exact seconds, estimate
//! seconds (each the best of `REPEAT` runs, default 1), speed-up, relative error and the
//! estimator's own standard error. `KINDS=gaussian,sparse97` picks the kinds of matrix.

use std::time::Instant;

use ndarray::Array2;
use ultradelta_rescale::{
    nuclear_norm_detailed, nuclear_norm_with, EstimateConfig, NuclearNormMethod,
};

/// Deterministic standard normals (splitmix64 + Box–Muller).
struct Gauss(u64);

impl Gauss {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    fn matrix(&mut self, rows: usize, cols: usize) -> Array2<f32> {
        Array2::from_shape_simple_fn((rows, cols), || self.normal() as f32)
    }
}

fn kind(name: &str, rows: usize, cols: usize) -> Vec<f32> {
    let mut g = Gauss(rows as u64 * 31 + cols as u64);
    let low_rank = |g: &mut Gauss, r: usize| g.matrix(rows, r).dot(&g.matrix(r, cols));
    let m = match name {
        "gaussian" => g.matrix(rows, cols),
        "sparse97" => g
            .matrix(rows, cols)
            .mapv_into(|x| if g.unit() < 0.97 { 0.0 } else { x }),
        "rank64+1%" => {
            let s = low_rank(&mut g, 64);
            let rms = (s.iter().map(|x| x * x).sum::<f32>() / s.len() as f32).sqrt();
            s + g.matrix(rows, cols) * (0.01 * rms)
        }
        "rank512+1%" => {
            let s = low_rank(&mut g, 512);
            let rms = (s.iter().map(|x| x * x).sum::<f32>() / s.len() as f32).sqrt();
            s + g.matrix(rows, cols) * (0.01 * rms)
        }
        "rank16" => low_rank(&mut g, 16),
        "student-t3" => Array2::from_shape_simple_fn((rows, cols), || {
            let z = g.normal();
            let chi2: f64 = (0..3).map(|_| g.normal().powi(2)).sum();
            (z / (chi2 / 3.0).sqrt()) as f32
        }),
        other => panic!("unknown kind {other}"),
    };
    m.into_raw_vec_and_offset().0
}

fn main() {
    let mut sizes: Vec<(usize, usize)> = std::env::args()
        .skip(1)
        .filter_map(|a| {
            let (r, c) = a.split_once('x')?;
            Some((r.parse().ok()?, c.parse().ok()?))
        })
        .collect();
    if sizes.is_empty() {
        sizes = vec![(4096, 4096), (4096, 11008)];
    }
    let kinds: Vec<String> = std::env::var("KINDS")
        .unwrap_or_else(|_| "gaussian,sparse97,rank64+1%,rank512+1%,rank16,student-t3".into())
        .split(',')
        .map(String::from)
        .collect();
    let method = NuclearNormMethod::Estimate(EstimateConfig::default());
    let repeat: usize = std::env::var("REPEAT")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
        .max(1);
    println!("size,kind,exact_s,estimate_s,speedup,rel_error,rel_std_error,probes,deflated,matvecs,f64_fallback,estimate_value,exact_value");
    for &(rows, cols) in &sizes {
        for k in &kinds {
            let data = kind(k, rows, cols);
            let (mut te, mut ts) = (f64::INFINITY, f64::INFINITY);
            let mut results = None;
            for _ in 0..repeat {
                let t = Instant::now();
                let exact = nuclear_norm_detailed(&data, rows, cols).expect("exact");
                te = te.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                let est = nuclear_norm_with(&data, rows, cols, &method, 7).expect("estimate");
                ts = ts.min(t.elapsed().as_secs_f64());
                results = Some((exact, est));
            }
            let (exact, est) = results.expect("REPEAT >= 1");
            println!(
                "{rows}x{cols},{k},{te:.3},{ts:.3},{:.1},{:+.4}%,{:.4}%,{},{},{},{},{:.17e},{:.17e}",
                te / ts,
                100.0 * (est.value - exact.value) / exact.value,
                100.0 * est.std_error / est.value,
                est.probes,
                est.deflated,
                est.matvecs,
                exact.f64_fallback,
                est.value,
                exact.value
            );
        }
    }
}
