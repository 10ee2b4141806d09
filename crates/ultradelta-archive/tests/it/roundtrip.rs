//! Property round trips of whole archives; determinism of the writer. (The Golomb and bit-packing codecs are
//! internal; their round trips are unit tests in `src/golomb.rs` and `src/bitpack.rs`.)

use proptest::prelude::*;
use serde_json::json;
use ultradelta_archive::{
    ArchiveReader, ArchiveWriter, FinetunedInfo, Policy, Record, SparseRecord, TensorEntry,
    WriterOptions,
};
use ultradelta_core::DType;
use ultradelta_core::QuantParams;

use crate::common::{sample_files, sample_tensors, write_sample, Rng};

const DTYPES: [DType; 5] = [DType::F32, DType::BF16, DType::F16, DType::I64, DType::U8];

/// A random tensor: (entry, record or None for dropped).
fn tensor_strategy() -> impl Strategy<Value = (TensorEntry, Option<Record>)> {
    (
        proptest::collection::vec(0usize..12, 0..4),
        0usize..DTYPES.len(),
        0u8..4,
        any::<u64>(),
        0u8..=16,
    )
        .prop_map(|(shape, dt, kind, seed, bits)| {
            let dtype = DTYPES[dt];
            let numel: usize = shape.iter().product();
            let mut rng = Rng::new(seed);
            let nbytes = numel * dtype.size();
            let raw: Vec<u8> = (0..nbytes)
                .map(|_| {
                    if rng.unit() < 0.7 {
                        0
                    } else {
                        rng.next_u64() as u8
                    }
                })
                .collect();
            let policy = [Policy::Compress, Policy::Keep, Policy::New, Policy::Drop][kind as usize];
            let entry = TensorEntry::new("", shape, dtype, policy);
            let record = match kind {
                0 => {
                    let positions: Vec<u64> =
                        (0..numel as u64).filter(|_| rng.unit() < 0.3).collect();
                    let mask = if bits == 0 {
                        0
                    } else {
                        ((1u32 << bits) - 1) as u16
                    };
                    let levels = positions
                        .iter()
                        .map(|_| rng.next_u64() as u16 & mask)
                        .collect();
                    Some(Record::Sparse(SparseRecord {
                        numel: numel as u64,
                        quant: QuantParams {
                            bits,
                            lo: (rng.unit() - 0.5) as f32,
                            step: (rng.unit() * 0.01) as f32,
                        },
                        scale: 1.0 / (1.0 - rng.unit() as f32 * 0.99),
                        positions,
                        levels,
                    }))
                }
                1 => Some(Record::XorDelta {
                    dtype,
                    xor_bytes: raw,
                }),
                2 => Some(Record::Full { dtype, bytes: raw }),
                _ => None,
            };
            (entry, record)
        })
}

fn write_archive(
    path: &std::path::Path,
    tensors: &[(TensorEntry, Option<Record>)],
    files: &[Vec<u8>],
) -> std::path::PathBuf {
    let opts = WriterOptions {
        overwrite: true,
        zstd_level: 3,
        created_by: "proptest".into(),
        // Both index forms: compressed (the default) and the plain JSON of earlier archives.
        index_zstd: tensors.len().is_multiple_of(2),
    };
    let mut w = ArchiveWriter::create_with(path, opts).unwrap();
    for (i, (e, r)) in tensors.iter().enumerate() {
        let mut e = e.clone();
        e.name = format!("t{i}.weight");
        match r {
            Some(r) => {
                w.write_tensor(e, r).unwrap();
            }
            None => w.write_dropped(e).unwrap(),
        }
    }
    for (i, f) in files.iter().enumerate() {
        w.add_file(&format!("file{i}.json"), f).unwrap();
    }
    w.finish(
        "ultradelta",
        json!({"k": [1, 2.5, "x"]}),
        0.5,
        "fp",
        FinetunedInfo::default(),
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn archive_round_trip(tensors in proptest::collection::vec(tensor_strategy(), 0..6),
                          files in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..3)) {
        let dir = tempfile::tempdir().unwrap();
        let p = write_archive(&dir.path().join("a.udelta"), &tensors, &files);
        let r = ArchiveReader::open(&p).unwrap();
        r.verify().unwrap();
        prop_assert_eq!(r.manifest().tensors.len(), tensors.len());
        for (i, (e, rec)) in tensors.iter().enumerate() {
            let name = format!("t{i}.weight");
            let got = r.entry(&name).unwrap();
            prop_assert_eq!(&got.shape, &e.shape);
            prop_assert_eq!(got.dtype, e.dtype);
            match rec {
                Some(rec) => prop_assert_eq!(&r.read_record(&name).unwrap(), rec),
                None => prop_assert!(r.read_record(&name).is_err()),
            }
        }
        for (i, f) in files.iter().enumerate() {
            prop_assert_eq!(&r.read_file(&format!("file{i}.json")).unwrap(), f);
        }
        // Deterministic: the same calls give the same bytes.
        let q = write_archive(&dir.path().join("b.udelta"), &tensors, &files);
        prop_assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&q).unwrap());
    }
}

#[test]
fn sample_round_trip_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_sample(&dir.path().join("s.udelta"));
    let r = ArchiveReader::open(&p).unwrap();
    for t in sample_tensors() {
        match t.record {
            Some(rec) => assert_eq!(r.read_record(&t.entry.name).unwrap(), rec),
            None => assert!(r.read_record(&t.entry.name).is_err()),
        }
    }
    for (name, bytes) in sample_files() {
        assert_eq!(r.read_file(name).unwrap(), bytes);
    }
    let m = r.manifest();
    assert_eq!(m.gamma, 0.875);
    assert_eq!(m.created_by, "ultradelta-archive test fixture");
    let q = r.entry("enc.layer0.attn.q.weight").unwrap();
    assert_eq!(
        (q.numel, q.kept, q.kind.as_str()),
        (128, 26, "sparse-golomb")
    );
    assert!((q.sparsity - (1.0 - 26.0 / 128.0)).abs() < 1e-15);
    assert_eq!(q.rate, Some(0.8));
    assert_eq!(q.extra["std"], json!(0.015625));
    // Byte-identical on a second write.
    let p2 = write_sample(&dir.path().join("s2.udelta"));
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&p2).unwrap());
}

#[test]
fn reader_is_shared_across_threads() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_sample(&dir.path().join("s.udelta"));
    let r = ArchiveReader::open(&p).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for t in sample_tensors() {
                    if let Some(rec) = t.record {
                        assert_eq!(r.read_record(&t.entry.name).unwrap(), rec);
                    }
                }
            });
        }
    });
}

#[test]
fn sparse_add_into_applies_gamma_last() {
    let s = SparseRecord {
        numel: 4,
        quant: QuantParams {
            bits: 3,
            lo: -0.3,
            step: 0.1,
        },
        scale: 1.0 / 0.03,
        positions: vec![0, 3],
        levels: vec![7, 2],
    };
    let mut out = vec![1.0f32; 4];
    s.add_into(0.5, &mut out);
    let v0 = (-0.3f32 + 7.0 * 0.1) * (1.0 / 0.03);
    let v3 = (-0.3f32 + 2.0 * 0.1) * (1.0 / 0.03);
    assert_eq!(out, [1.0 + v0 * 0.5, 1.0, 1.0, 1.0 + v3 * 0.5]);
    assert_eq!(s.to_dense(1.0), [v0, 0.0, 0.0, v3]);
}

#[test]
fn records_encoded_beforehand_write_the_same_archive() {
    // The sample archive with every record encoded first (`EncodedRecord::new` + `write_encoded`) is the
    // sample archive byte for byte.
    let dir = tempfile::tempdir().unwrap();
    let want = std::fs::read(write_sample(&dir.path().join("s.udelta"))).unwrap();
    let path = dir.path().join("e.udelta");
    let mut w = ArchiveWriter::create_with(
        &path,
        WriterOptions {
            overwrite: true,
            created_by: "ultradelta-archive test fixture".into(),
            ..WriterOptions::default()
        },
    )
    .unwrap();
    for t in sample_tensors() {
        match &t.record {
            Some(r) => {
                let e = ultradelta_archive::EncodedRecord::new(
                    t.entry.dtype,
                    &t.entry.shape,
                    r,
                    ultradelta_archive::DEFAULT_ZSTD_LEVEL,
                )
                .unwrap();
                assert_eq!(w.write_encoded(t.entry, &e).unwrap(), e.len());
            }
            None => w.write_dropped(t.entry).unwrap(),
        }
    }
    for (name, bytes) in sample_files() {
        w.add_file(name, &bytes).unwrap();
    }
    let finetuned = FinetunedInfo {
        size_on_disk: 12345,
        metadata: std::collections::BTreeMap::from([("format".to_string(), "pt".to_string())]),
        source: "synthetic/tiny".into(),
    };
    let params = json!({"sparsity": 0.97, "bits": 4, "seed": 42, "rescale": "global"});
    let p = w
        .finish("ultradelta", params, 0.875, "0123456789abcdef", finetuned)
        .unwrap();
    assert_eq!(std::fs::read(p).unwrap(), want);
}

#[test]
fn a_record_encoded_for_another_tensor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ArchiveWriter::create(dir.path().join("x.udelta"), true).unwrap();
    let rec = Record::XorDelta {
        dtype: DType::F32,
        xor_bytes: vec![0; 24],
    };
    let e = ultradelta_archive::EncodedRecord::new(DType::F32, &[2, 3], &rec, 3).unwrap();
    for (dtype, shape) in [
        (DType::F32, vec![3, 2]),
        (DType::F32, vec![6]),
        (DType::I32, vec![2, 3]),
    ] {
        let entry = TensorEntry::new("w", shape, dtype, Policy::Keep);
        let err = w.write_encoded(entry, &e).unwrap_err().to_string();
        assert!(
            err.contains("w") && err.contains("a record encoded for a F32 tensor of shape [2, 3]"),
            "{err}"
        );
    }
    // Nothing was written for them; the right entry still can be.
    let entry = TensorEntry::new("w", vec![2, 3], DType::F32, Policy::Keep);
    assert_eq!(w.write_encoded(entry, &e).unwrap(), e.len());
}
