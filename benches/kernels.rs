//! Kernel benchmarks, in parameters per second: quantize, group-wise prune, a kind-1 record's
//! encoding and decoding (Golomb-coded positions and packed levels), the apply kernel (adding a sparse record into base weights), the fused
//! kernels that compress runs on bf16 checkpoints (pass 1: quantizer and level histogram;
//! pass 2: quantize and DAC-prune, straight from the bytes), and the nuclear norm of a TNGR
//! delta, exact versus estimated.
//!
//! `cargo bench -p ultradelta-benches --bench kernels`; `-- --test` runs each once (CI smoke).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ultradelta::archive::{decode_record, encode_record, Limits, Record, SparseRecord};
use ultradelta::io::DType;
use ultradelta::qgp::{self, QuantParams, Quantizer};
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
    let rec = SparseRecord {
        numel: n as u64,
        quant: q,
        scale: 33.3,
        positions: pruned.positions.clone(),
        levels: pruned.levels.clone(),
    };
    let record = Record::Sparse(rec.clone());
    let bytes = encode_record(DType::F32, &[n], &record, 1).unwrap();

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
    // The Golomb codec is internal to the archive: measured through the kind-1 record (its positions stream is
    // most of the work; the levels are bit-packed).
    g.bench_function(BenchmarkId::new("sparse_record_encode", n), |b| {
        b.iter(|| encode_record(DType::F32, &[n], &record, 1).unwrap())
    });
    g.bench_function(BenchmarkId::new("sparse_record_decode", n), |b| {
        b.iter(|| decode_record(&bytes, &Limits::default()).unwrap())
    });
    g.bench_function(BenchmarkId::new("apply_add_into", n), |b| {
        let mut w = vec![0.01f32; n];
        b.iter(|| rec.add_into(1.0, &mut w))
    });
    g.finish();
}

/// A bf16 base / fine-tune pair of `n` entries whose Δ is `delta(n)` (rounded to bf16 on the way).
fn bf16_pair(n: usize) -> (Vec<u8>, Vec<u8>) {
    let d = delta(n);
    let bf16 = |x: f32| ((x.to_bits() >> 16) as u16).to_le_bytes();
    let mut base = Vec::with_capacity(2 * n);
    let mut ft = Vec::with_capacity(2 * n);
    for (i, dx) in d.iter().enumerate() {
        let b = ((i as f32) * 0.618).sin() * 0.05;
        base.extend_from_slice(&bf16(b));
        ft.extend_from_slice(&bf16(b + dx * 10.0));
    }
    (base, ft)
}

/// The fused kernels of `compress` on a bf16 pair: pass 1 (quantizer and level histogram with per-block
/// histograms) and pass 2 (quantize and DAC-prune block by block), both reading the two tensors' bytes.
fn fused(c: &mut Criterion) {
    use qgp::fused::{fit_source, group_prune_source, scan_levels, DeltaSource};
    let n = 1 << 22;
    let (base, ft) = bf16_pair(n);
    let src = DeltaSource::Bf16 {
        base: &base,
        ft: &ft,
    };
    let q = fit_source(&src, 4).unwrap();
    let scan = scan_levels(&src, &q);
    let mut g = c.benchmark_group("fused_bf16");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.bench_function(BenchmarkId::new("pass1_fit_scan", n), |b| {
        b.iter(|| {
            let q = fit_source(&src, 4).unwrap();
            scan_levels(&src, &q)
        })
    });
    g.bench_function(BenchmarkId::new("pass2_dac_prune_0.97", n), |b| {
        let mut levels = Vec::new();
        b.iter(|| group_prune_source(&src, &q, &scan, 0.97, 1, &mut levels))
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

criterion_group!(benches, kernels, fused, nuclear_norms);
criterion_main!(benches);
