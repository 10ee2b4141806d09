//! The baseline record kinds (5–9): layouts, round trips, the committed fixture, and hostile input.
//!
//! `tests/data/v1-baselines.udelta` holds one record of each kind, written by `write_baselines` below. Regenerate
//! it only if the fixture itself must change: `cargo test -p ultradelta-archive --test it -- --ignored
//! regenerate_baselines_fixture`.

use std::path::{Path, PathBuf};

use half::f16;
use ultradelta_archive::{
    decode_record, encode_record, ArchiveReader, ArchiveWriter, DenseLevelsRecord, FinetunedInfo,
    Limits, LowRankRecord, Policy, Record, RecordKind, SignRecord, SparseValuesRecord, TensorEntry,
};
use ultradelta_core::DType;
use ultradelta_core::QuantParams;

use crate::common::{assert_hostile_record_bytes_never_panic, Rng};

fn h(x: f32) -> f16 {
    f16::from_f32(x)
}

/// One record of each baseline kind, with the tensor shape it belongs to.
pub fn baseline_records() -> Vec<(&'static str, Vec<usize>, Record)> {
    let mut rng = Rng::new(5);
    let pos: Vec<u64> = (0..300u64).filter(|_| rng.unit() < 0.1).collect();
    let vals: Vec<f16> = (0..pos.len()).map(|i| h(i as f32 * 0.25 - 3.0)).collect();
    let signs: Vec<bool> = (0..pos.len()).map(|i| i % 3 == 0).collect();
    vec![
        (
            "dare.weight",
            vec![10, 30],
            Record::SparseValues(SparseValuesRecord {
                numel: 300,
                scale: 0.5,
                positions: pos.clone(),
                values: vals,
            }),
        ),
        (
            "compeft.weight",
            vec![10, 30],
            Record::Sign(SignRecord {
                numel: 300,
                magnitude: 0.125,
                positions: Some(pos),
                negative: signs,
            }),
        ),
        (
            "bitdelta.weight",
            vec![3, 7],
            Record::Sign(SignRecord {
                numel: 21,
                magnitude: 0.75,
                positions: None,
                negative: (0..21).map(|i| i % 2 == 1).collect(),
            }),
        ),
        (
            "lowrank.weight",
            vec![3, 4],
            Record::LowRank(LowRankRecord {
                rows: 3,
                cols: 4,
                rank: 2,
                u: [1.0, 0.0, 0.5, 2.0, -1.0, 1.0].map(h).to_vec(),
                v: [1.0, 2.0, 3.0, 4.0, 0.0, -1.0, 0.5, 0.25].map(h).to_vec(),
                scale: 2.0,
            }),
        ),
        (
            "quant.weight",
            vec![2, 5],
            Record::DenseLevels(DenseLevelsRecord {
                quant: QuantParams {
                    bits: 3,
                    lo: -1.0,
                    step: 0.25,
                },
                scale: 2.0,
                levels: vec![0, 1, 2, 3, 4, 5, 6, 7, 7, 0],
            }),
        ),
    ]
}

fn write_baselines(path: &Path) -> PathBuf {
    let mut w = ArchiveWriter::create(path, true).unwrap();
    for (name, shape, rec) in baseline_records() {
        w.write_tensor(
            TensorEntry::new(name, shape, DType::F32, Policy::Compress),
            &rec,
        )
        .unwrap();
    }
    w.finish(
        "baselines",
        serde_json::json!({"fixture": true}),
        1.0,
        "0123456789abcdef",
        FinetunedInfo::default(),
    )
    .unwrap()
}

fn fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/v1-baselines.udelta"
    ))
}

#[test]
#[ignore = "rewrites the committed fixture"]
fn regenerate_baselines_fixture() {
    write_baselines(&fixture());
}

#[test]
fn fixture_decodes_to_the_records_and_pinned_values() {
    let r = ArchiveReader::open(fixture()).expect("committed baselines fixture must open");
    r.verify().unwrap();
    for (name, shape, rec) in baseline_records() {
        let got = r.read_record(name).unwrap();
        assert_eq!(got, rec, "{name}");
        let e = r.entry(name).unwrap();
        assert_eq!(e.kind, rec.kind().name());
        assert_eq!(e.kept, rec.kept().unwrap());
        assert_eq!(e.shape, shape);
    }
    // Values pinned by hand.
    let dense = |n: &str, len| r.read_record(n).unwrap().delta_to_dense(len, 1.0).unwrap();
    assert_eq!(dense("bitdelta.weight", 21)[..3], [0.75, -0.75, 0.75]);
    // U·V·2: row 0 = [1, 0]·V = V row 0; row 1 = [0.5, 2]·V; row 2 = [-1, 1]·V.
    assert_eq!(
        dense("lowrank.weight", 12),
        [2.0, 4.0, 6.0, 8.0, 1.0, -2.0, 5.0, 5.0, -2.0, -6.0, -5.0, -7.5]
    );
    assert_eq!(dense("quant.weight", 10)[..4], [-2.0, -1.5, -1.0, -0.5]);
    let d = dense("dare.weight", 300);
    let Record::SparseValues(sv) = r.read_record("dare.weight").unwrap() else {
        unreachable!()
    };
    assert_eq!(d[sv.positions[1] as usize], (0.25f32 - 3.0) * 0.5);
    let c = dense("compeft.weight", 300);
    let Record::Sign(sg) = r.read_record("compeft.weight").unwrap() else {
        unreachable!()
    };
    let p = sg.positions.as_ref().unwrap();
    assert_eq!((c[p[0] as usize], c[p[1] as usize]), (-0.125, 0.125));
    assert_eq!(c.iter().filter(|x| **x != 0.0).count(), p.len());
}

#[test]
fn baseline_records_round_trip_and_have_their_documented_sizes() {
    for (name, shape, rec) in baseline_records() {
        let bytes = encode_record(DType::F32, &shape, &rec, 3).unwrap();
        let (hdr, back) = decode_record(&bytes, &Limits::default()).unwrap();
        assert_eq!(back, rec, "{name}");
        assert_eq!(hdr.kind, rec.kind());
        let header = 12 + 8 * shape.len();
        let payload = bytes.len() - header;
        let numel: usize = shape.iter().product();
        match &rec {
            Record::Sign(s) if s.positions.is_none() => assert_eq!(payload, 4 + numel.div_ceil(8)),
            Record::LowRank(l) => assert_eq!(payload, 28 + 2 * (l.u.len() + l.v.len())),
            Record::DenseLevels(_) => assert_eq!(payload, 13 + (numel * 3).div_ceil(8)),
            Record::SparseValues(s) => assert!(payload > 36 + 2 * s.values.len()),
            Record::Sign(s) => assert!(payload > 36 + s.negative.len().div_ceil(8)),
            _ => unreachable!(),
        }
    }
}

#[test]
fn dense_sign_layout_by_hand() {
    let rec = Record::Sign(SignRecord {
        numel: 10,
        magnitude: 1.5,
        positions: None,
        negative: vec![
            true, false, false, true, false, false, false, false, true, true,
        ],
    });
    let b = encode_record(DType::BF16, &[10], &rec, 3).unwrap();
    assert_eq!(&b[..4], &[RecordKind::DenseSign.code(), 4, 1, 0]);
    assert_eq!(&b[20..24], &1.5f32.to_le_bytes());
    assert_eq!(&b[24..], &[0b0000_1001, 0b0000_0011]);
}

#[test]
fn invalid_records_are_refused_on_write() {
    let bad = [
        Record::SparseValues(SparseValuesRecord {
            numel: 4,
            scale: 1.0,
            positions: vec![1, 1],
            values: vec![h(1.0); 2],
        }),
        Record::SparseValues(SparseValuesRecord {
            numel: 4,
            scale: 1.0,
            positions: vec![1],
            values: vec![f16::INFINITY],
        }),
        Record::Sign(SignRecord {
            numel: 4,
            magnitude: f32::NAN,
            positions: None,
            negative: vec![false; 4],
        }),
        Record::Sign(SignRecord {
            numel: 4,
            magnitude: 1.0,
            positions: None,
            negative: vec![false; 3],
        }),
        Record::LowRank(LowRankRecord {
            rows: 2,
            cols: 2,
            rank: 3,
            u: vec![],
            v: vec![],
            scale: 1.0,
        }),
        Record::LowRank(LowRankRecord {
            rows: 2,
            cols: 2,
            rank: 1,
            u: vec![h(1.0)],
            v: vec![h(1.0); 2],
            scale: 1.0,
        }),
        Record::DenseLevels(DenseLevelsRecord {
            quant: QuantParams {
                bits: 2,
                lo: 0.0,
                step: 1.0,
            },
            scale: 1.0,
            levels: vec![0, 1, 4, 0],
        }),
    ];
    for rec in bad {
        assert!(
            encode_record(DType::F32, &[2, 2], &rec, 3).is_err(),
            "{rec:?}"
        );
    }
    // A low-rank view must match the shape's first dimension.
    let lr = Record::LowRank(LowRankRecord {
        rows: 1,
        cols: 4,
        rank: 0,
        u: vec![],
        v: vec![],
        scale: 1.0,
    });
    assert!(encode_record(DType::F32, &[2, 2], &lr, 3).is_err());
}

/// Every truncation and every single-byte corruption of every baseline record decodes to an error or to a valid
/// record, and never panics or over-allocates.
#[test]
fn hostile_baseline_records_never_panic() {
    let mut rng = Rng::new(77);
    for (name, shape, rec) in baseline_records() {
        let bytes = encode_record(DType::F32, &shape, &rec, 3).unwrap();
        assert_hostile_record_bytes_never_panic(name, &bytes, &mut rng);
    }
}

#[test]
fn hostile_declared_sizes_are_refused_before_allocating() {
    let limits = Limits::default();
    // dense-levels claiming 2^40 entries with no data.
    let mut b = vec![RecordKind::DenseLevels.code(), 2, 1, 0];
    b.extend_from_slice(&(1u64 << 40).to_le_bytes());
    b.extend_from_slice(&(1u64 << 40).to_le_bytes());
    b.push(4);
    b.extend_from_slice(&0f32.to_le_bytes());
    b.extend_from_slice(&1f32.to_le_bytes());
    b.extend_from_slice(&1f32.to_le_bytes());
    assert!(decode_record(&b, &limits).is_err());
    // lowrank with a huge rank and no factors.
    let mut b = vec![RecordKind::LowrankF16.code(), 2, 2, 0];
    for v in [1u64 << 20, 1 << 20, 1 << 40, 1 << 20, 1 << 20, 1 << 20] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&1f32.to_le_bytes());
    assert!(decode_record(&b, &limits).is_err());
    // sparse-f16 with kept > numel.
    let mut b = vec![RecordKind::SparseF16.code(), 2, 1, 0];
    b.extend_from_slice(&4u64.to_le_bytes());
    b.extend_from_slice(&4u64.to_le_bytes());
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(&1f32.to_le_bytes());
    b.extend_from_slice(&[0u8; 24]);
    assert!(decode_record(&b, &limits).is_err());
}

#[test]
fn index_kind_must_match_record_kind() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_baselines(&dir.path().join("b.udelta"));
    let bytes = std::fs::read(&p).unwrap();
    let edited = crate::common::edit_index(&bytes, |v| {
        v["tensors"][0]["kind"] = "sparse-sign".into();
    });
    let q = crate::common::put(dir.path(), "e.udelta", &edited);
    let r = ArchiveReader::open(&q).unwrap();
    let err = r.read_record("dare.weight").unwrap_err().to_string();
    assert!(err.contains("index says sparse-sign"), "{err}");
}
