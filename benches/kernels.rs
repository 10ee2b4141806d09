//! Kernel benchmarks, in parameters per second: quantize, group-wise prune, Golomb
//! position coding, the apply kernel (adding a sparse record into base weights), and the
//! nuclear norm of a TNGR delta, exact versus estimated.
//!
//! `cargo bench -p ultradelta --bench kernels`; `-- --test` runs each once (CI smoke).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ultradelta::archive::{golomb, SparseRecord};
use ultradelta::qgp::{self, QuantParams};
use ultradelta::rescale::{nuclear_norm_with, EstimateConfig, NuclearNormMethod};

/// A deterministic heavy-tailed delta (no RNG dependency): a scaled Cauchy-like sequence.
fn delta(n: usize) -> Vec<f32> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let t = (std::f64::consts::PI * (u - 0.5)).tan().clamp(-50.0, 50.0);
            (t * 1e-4) as f32
        })
        .collect()
}

fn kernels(c: &mut Criterion) {
    let n = 1 << 22;
    let d = delta(n);
    let q = QuantParams::fit(&d, 4).unwrap();
    let mut levels = vec![0u16; n];
    qgp::quantize(&d, &q, &mut levels);
    let pruned = qgp::group_prune(&levels, &q, 0.97, 1);
    let (m, bytes, bit_len) = golomb::encode_positions(&pruned.positions, n as u64).unwrap();

    let mut g = c.benchmark_group("kernels");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.bench_function(BenchmarkId::new("quantize_4bit", n), |b| {
        let mut out = vec![0u16; n];
        b.iter(|| qgp::quantize(&d, &q, &mut out))
    });
    g.bench_function(BenchmarkId::new("group_prune_0.97", n), |b| {
        b.iter(|| qgp::group_prune(&levels, &q, 0.97, 1))
    });
    g.bench_function(BenchmarkId::new("golomb_encode", n), |b| {
        b.iter(|| golomb::encode_positions(&pruned.positions, n as u64))
    });
    g.bench_function(BenchmarkId::new("golomb_decode", n), |b| {
        b.iter(|| {
            golomb::decode_positions(&bytes, bit_len, m, pruned.positions.len() as u64, n as u64)
                .unwrap()
        })
    });
    let rec = SparseRecord {
        numel: n as u64,
        quant: q,
        scale: 33.3,
        positions: pruned.positions.clone(),
        levels: pruned.levels.clone(),
    };
    g.bench_function(BenchmarkId::new("apply_add_into", n), |b| {
        let mut w = vec![0.01f32; n];
        b.iter(|| rec.add_into(1.0, &mut w))
    });
    g.finish();
}

/// Exact (Gram matrix + eigenvalues) versus estimated (deflation + stochastic Lanczos
/// quadrature) nuclear norm of a 768 × 3072 heavy-tailed delta (a BERT-base MLP matrix).
/// At LLaMA sizes the gap is wider: see `examples/nuclear_norm_speed.rs` in ultradelta-rescale.
fn nuclear_norms(c: &mut Criterion) {
    let (rows, cols) = (768, 3072);
    let d = delta(rows * cols);
    let mut g = c.benchmark_group("nuclear_norm");
    g.throughput(Throughput::Elements((rows * cols) as u64));
    g.sample_size(10);
    let size = format!("{rows}x{cols}");
    g.bench_function(BenchmarkId::new("exact", &size), |b| {
        b.iter(|| nuclear_norm_with(&d, rows, cols, &NuclearNormMethod::Exact, 0).unwrap())
    });
    let estimate = NuclearNormMethod::Estimate(EstimateConfig::default());
    g.bench_function(BenchmarkId::new("estimate", &size), |b| {
        b.iter(|| nuclear_norm_with(&d, rows, cols, &estimate, 0).unwrap())
    });
    g.finish();
}

criterion_group!(benches, kernels, nuclear_norms);
criterion_main!(benches);
