//! Codec benchmarks: seeded position generation, rANS level coding, and decoding a whole tensor record of each
//! sparse-level kind (1, 10, 11, 12) into base weights, the path `apply` takes.
//!
//! `cargo bench -p ultradelta-benches --bench codecs`; `-- --test` runs each once (CI smoke).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ultradelta::archive::{
    decode_record, encode_record, CodedSparseRecord, LevelCoding, Limits, Positions, Record,
    SparseRecord,
};
use ultradelta::io::DType;
use ultradelta::qgp::seeded::{seeded_positions, seeded_prune, trial_seed};
use ultradelta::qgp::{self, QuantParams, Quantizer};

/// A deterministic bell-shaped delta (sum of four uniforms) with a few outliers setting the range.
fn delta(n: usize) -> Vec<f32> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            let s: f64 = (0..4).map(|_| next() - 0.5).sum();
            let out = if i % 100_003 == 0 { 6.0 } else { 1.0 };
            (s * out * 1e-3) as f32
        })
        .collect()
}

fn codecs(c: &mut Criterion) {
    let n = 1usize << 22;
    let d = delta(n);
    let q = QuantParams::fit(&d, 4).unwrap();
    let mut levels = vec![0u16; n];
    qgp::quantize(&d, &q, &mut levels);
    let dac = qgp::group_prune(&levels, &q, 0.97, 1);
    let kept = dac.levels.len();
    // The rANS coder is internal to the archive: measured through a kind-12 record (seeded positions, none
    // stored, so encoding and decoding it is the levels block) holding DAC's kept levels.
    let entropy = CodedSparseRecord {
        numel: n as u64,
        quant: q,
        scale: 33.3,
        positions: Positions::Seeded { seed: 7, trial: 0 },
        levels: dac.levels.clone(),
        coding: LevelCoding::Rans,
    }
    .into_record();
    let entropy_bytes = encode_record(DType::F32, &[n], &entropy, 3).unwrap();

    let mut g = c.benchmark_group("codecs");
    g.sample_size(10);
    g.throughput(Throughput::Elements(kept as u64));
    g.bench_function(BenchmarkId::new("seeded_positions_3pct", n), |b| {
        b.iter(|| seeded_positions(n as u64, kept as u64, 7))
    });
    g.bench_function(BenchmarkId::new("rans_encode_levels_record", kept), |b| {
        b.iter(|| encode_record(DType::F32, &[n], &entropy, 3).unwrap())
    });
    g.bench_function(BenchmarkId::new("rans_decode_levels_record", kept), |b| {
        b.iter(|| decode_record(&entropy_bytes, &Limits::default()).unwrap())
    });
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::new("seeded_prune_8_trials", n), |b| {
        b.iter(|| seeded_prune(&levels, 0.97, 7, 8))
    });
    // Whole records: decode from bytes and add into base weights (apply's per-tensor work).
    let seeded = seeded_prune(&levels, 0.97, 7, 8);
    let golomb = |coding| {
        CodedSparseRecord::from_sparse(
            SparseRecord {
                numel: n as u64,
                quant: q,
                scale: 33.3,
                positions: dac.positions.clone(),
                levels: dac.levels.clone(),
            },
            coding,
        )
        .into_record()
    };
    let seeded_rec = |coding| {
        CodedSparseRecord {
            numel: n as u64,
            quant: q,
            scale: 33.3,
            positions: Positions::Seeded {
                seed: 7,
                trial: seeded.trial,
            },
            levels: seeded.levels.clone(),
            coding,
        }
        .into_record()
    };
    let records: [(&str, Record); 4] = [
        ("golomb+packed", golomb(LevelCoding::Packed)),
        ("golomb+entropy", golomb(LevelCoding::Rans)),
        ("seeded+packed", seeded_rec(LevelCoding::Packed)),
        ("seeded+entropy", seeded_rec(LevelCoding::Rans)),
    ];
    let _ = trial_seed(7, 0);
    for (name, rec) in &records {
        let bytes = encode_record(DType::F32, &[n], rec, 3).unwrap();
        let mut out = vec![0f32; n];
        g.bench_function(BenchmarkId::new(format!("decode_add_{name}"), n), |b| {
            b.iter(|| {
                let (_, r) = decode_record(&bytes, &Limits::default()).unwrap();
                r.add_delta_into(1.0, &mut out).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
