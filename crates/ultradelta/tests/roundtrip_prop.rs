//! Property: for any small checkpoint pair, `apply(compress(x))` equals the in-memory
//! result of the pipeline bit for bit, and kept tensors come back exactly.

use proptest::prelude::*;
use ultradelta::archive::{ArchiveReader, Policy};
use ultradelta::io::{
    f32_to_bytes, write_checkpoint, Checkpoint, DType, TensorInfo, WriterOptions,
};
use ultradelta::{
    apply, compress, compress_tensor, ApplyOptions, CompressConfig, NoProgress, Selection,
};

#[derive(Debug, Clone)]
struct T {
    rows: usize,
    cols: usize,
    dtype: DType,
    base: Vec<f32>,
    delta: Vec<f32>,
}

fn tensor() -> impl Strategy<Value = T> {
    (
        1usize..12,
        1usize..24,
        prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)],
        0u8..5,
    )
        .prop_flat_map(|(rows, cols, dtype, kind)| {
            let n = rows * cols;
            let base = prop::collection::vec(-0.1f32..0.1, n);
            // kind 0: zero delta, 1: constant delta, 2/3: random delta of two scales, 4: a sparse delta (about
            // half its entries exactly zero: the seeded codec's zero level).
            let delta = match kind {
                0 => Just(vec![0.0f32; n]).boxed(),
                1 => (-0.01f32..0.01).prop_map(move |c| vec![c; n]).boxed(),
                2 => prop::collection::vec(-1e-3f32..1e-3, n).boxed(),
                3 => prop::collection::vec(-0.05f32..0.05, n).boxed(),
                _ => prop::collection::vec((any::<bool>(), -0.05f32..0.05), n)
                    .prop_map(|v| {
                        v.into_iter()
                            .map(|(z, x)| if z { 0.0 } else { x })
                            .collect()
                    })
                    .boxed(),
            };
            (Just(rows), Just(cols), Just(dtype), base, delta)
        })
        .prop_map(|(rows, cols, dtype, base, delta)| T {
            rows,
            cols,
            dtype,
            base,
            delta,
        })
}

fn bytes(values: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = Vec::new();
    f32_to_bytes(values, dtype, &mut out).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn apply_of_compress_equals_the_in_memory_result(
        tensors in prop::collection::vec(tensor(), 1..4),
        sparsity in prop_oneof![Just(0.0f64), 0.3f64..0.99],
        bits in 1u8..9,
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut base = Vec::new();
        let mut ft = Vec::new();
        for (i, t) in tensors.iter().enumerate() {
            let info = TensorInfo { name: format!("layer.{i}.dense.weight"), dtype: t.dtype, shape: vec![t.rows, t.cols] };
            let fv: Vec<f32> = t.base.iter().zip(&t.delta).map(|(b, d)| b + d).collect();
            base.push((info.clone(), bytes(&t.base, t.dtype)));
            ft.push((info, bytes(&fv, t.dtype)));
            // A 1-D tensor per layer, kept without loss.
            let binfo = TensorInfo { name: format!("layer.{i}.dense.bias"), dtype: t.dtype, shape: vec![t.cols] };
            base.push((binfo.clone(), bytes(&t.base[..t.cols], t.dtype)));
            ft.push((binfo, bytes(&t.delta[..t.cols], t.dtype)));
        }
        let (bdir, fdir) = (dir.path().join("base"), dir.path().join("ft"));
        write_checkpoint(&bdir, &base, WriterOptions::default()).unwrap();
        write_checkpoint(&fdir, &ft, WriterOptions::default()).unwrap();
        let (b, f) = (Checkpoint::open(&bdir).unwrap(), Checkpoint::open(&fdir).unwrap());

        let cfg = CompressConfig {
            sparsity,
            bits: Some(bits),
            seed,
            selection: Selection { compress: vec!["*.weight".into()], ..Selection::default() },
            ..CompressConfig::default()
        };
        let archive = dir.path().join("a.udelta");
        compress(&b, &f, &cfg, &archive, false, &NoProgress).unwrap();
        let out = apply(&b, &archive, &dir.path().join("out"), &ApplyOptions::default(), &NoProgress).unwrap();
        let rebuilt = Checkpoint::open(&out).unwrap();
        let reader = ArchiveReader::open(&archive).unwrap();
        let m = reader.manifest();
        for e in &m.tensors {
            let got = rebuilt.view(&e.name).unwrap().bytes().to_vec();
            match e.policy {
                Policy::Compress => {
                    let bv = b.view(&e.name).unwrap().to_f32().unwrap();
                    let fv = f.view(&e.name).unwrap().to_f32().unwrap();
                    let delta: Vec<f32> = fv.iter().zip(&bv).map(|(f, b)| f - b).collect();
                    let rec = compress_tensor(&delta, &e.name, &e.shape, e.rate.unwrap(), &cfg)
                        .unwrap()
                        .record;
                    let mut w = bv.clone();
                    rec.add_delta_into(m.gamma as f32, &mut w).unwrap();
                    prop_assert_eq!(got, bytes(&w, e.dtype), "{}", e.name);
                }
                _ => prop_assert_eq!(got, f.view(&e.name).unwrap().bytes().to_vec(), "{}", e.name),
            }
        }
    }
}

/// A record that fails to decode in the middle of the pipeline: an error, and neither the output folder nor its
/// temp folder is left behind (the writer thread is stopped and its folder removed).
#[test]
fn apply_failing_mid_way_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut base, mut ft) = (Vec::new(), Vec::new());
    for i in 0..6 {
        let info = TensorInfo {
            name: format!("layer.{i}.dense.weight"),
            dtype: DType::BF16,
            shape: vec![64, 48],
        };
        let b: Vec<f32> = (0..64 * 48)
            .map(|k| ((k * (i + 3)) as f32 * 0.37).sin() * 0.1)
            .collect();
        let f: Vec<f32> = b
            .iter()
            .enumerate()
            .map(|(k, v)| v + ((k * 7) as f32).cos() * 0.01)
            .collect();
        base.push((info.clone(), bytes(&b, DType::BF16)));
        ft.push((info, bytes(&f, DType::BF16)));
    }
    let (bdir, fdir) = (dir.path().join("base"), dir.path().join("ft"));
    write_checkpoint(&bdir, &base, WriterOptions::default()).unwrap();
    write_checkpoint(&fdir, &ft, WriterOptions::default()).unwrap();
    let (b, f) = (
        Checkpoint::open(&bdir).unwrap(),
        Checkpoint::open(&fdir).unwrap(),
    );
    let cfg = CompressConfig {
        sparsity: 0.9,
        bits: Some(4),
        selection: Selection {
            compress: vec!["*.weight".into()],
            ..Selection::default()
        },
        ..CompressConfig::default()
    };
    let archive = dir.path().join("a.udelta");
    compress(&b, &f, &cfg, &archive, false, &NoProgress).unwrap();
    // Corrupt the record of the fourth tensor in apply's order.
    let e = ArchiveReader::open(&archive).unwrap().manifest().tensors[3].clone();
    let mut raw = std::fs::read(&archive).unwrap();
    raw[(e.offset + e.length / 2) as usize] ^= 0x40;
    std::fs::write(&archive, raw).unwrap();
    let out = dir.path().join("out").join("model");
    let err = apply(&b, &archive, &out, &ApplyOptions::default(), &NoProgress).unwrap_err();
    assert!(err.to_string().contains(&e.name), "{err}");
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}
