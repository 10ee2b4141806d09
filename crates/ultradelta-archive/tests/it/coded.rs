//! The coded sparse kinds (10–12): layouts, round trips through a file, hostile input.

use proptest::prelude::*;
use ultradelta_archive::{
    decode_record, encode_record, record_cost, ArchiveReader, ArchiveWriter, CodedSparseRecord,
    FinetunedInfo, LevelCoding, Limits, LowRankSparseRecord, Policy, Positions, Record, RecordKind,
    TensorEntry,
};
use ultradelta_core::seeded::{seeded_positions, trial_seed};
use ultradelta_core::DType;
use ultradelta_core::QuantParams;

use crate::common::{
    assert_hostile_record_bytes_never_panic, random_positions, written_archive, Rng,
};

const Q: QuantParams = QuantParams {
    bits: 4,
    lo: -0.75,
    step: 0.1,
};

fn bell_levels(rng: &mut Rng, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| ((rng.next_u64() % 8) + (rng.next_u64() % 9)).min(15) as u16)
        .collect()
}

/// One record of each coded kind, with its shape.
fn coded_records() -> Vec<(&'static str, Vec<usize>, Record)> {
    let mut rng = Rng::new(11);
    let pos = random_positions(&mut rng, 600, 60);
    let lv = bell_levels(&mut rng, pos.len());
    let seeded_lv = bell_levels(&mut rng, 45);
    vec![
        (
            "golomb_rans.weight",
            vec![20, 30],
            Record::Coded(CodedSparseRecord {
                numel: 600,
                quant: Q,
                scale: 1.5,
                positions: Positions::Golomb(pos),
                levels: lv,
                coding: LevelCoding::Rans,
            }),
        ),
        (
            "seeded.weight",
            vec![10, 30],
            Record::Coded(CodedSparseRecord {
                numel: 300,
                quant: Q,
                scale: 2.0,
                positions: Positions::Seeded { seed: 99, trial: 3 },
                levels: seeded_lv.clone(),
                coding: LevelCoding::Packed,
            }),
        ),
        (
            "seeded_rans.weight",
            vec![10, 30],
            Record::Coded(CodedSparseRecord {
                numel: 300,
                quant: Q,
                scale: 2.0,
                positions: Positions::Seeded { seed: 99, trial: 0 },
                levels: seeded_lv,
                coding: LevelCoding::Rans,
            }),
        ),
    ]
}

#[test]
fn kinds_and_fixed_sizes() {
    let recs = coded_records();
    let kinds: Vec<RecordKind> = recs.iter().map(|r| r.2.kind()).collect();
    assert_eq!(
        kinds,
        [
            RecordKind::SparseGolombRans,
            RecordKind::SparseSeeded,
            RecordKind::SparseSeededRans
        ]
    );
    assert_eq!(
        [kinds[0].code(), kinds[1].code(), kinds[2].code()],
        [10, 11, 12]
    );
    // Seeded + packed: header (12 + 16) + fixed part + ceil(45 * 4 / 8) level bytes, no positions.
    let b = encode_record(DType::F32, &recs[1].1, &recs[1].2, 3).unwrap();
    assert_eq!(b.len(), 28 + RecordKind::SparseSeeded.fixed_bytes() + 23);
    let cost = record_cost(&b).unwrap();
    assert_eq!((cost.position_bits, cost.value_bits), (0, 23 * 8));
    // The rANS kinds: fixed part, 4 bytes per symbol, 8 bytes of stream length, the streams.
    for (i, fixed) in [
        (0usize, RecordKind::SparseGolombRans.fixed_bytes()),
        (2, RecordKind::SparseSeededRans.fixed_bytes()),
    ] {
        let b = encode_record(DType::F32, &recs[i].1, &recs[i].2, 3).unwrap();
        let nsym = u32::from_le_bytes(b[28 + fixed - 4..28 + fixed].try_into().unwrap()) as usize;
        let at = 28 + fixed + 4 * nsym;
        let ans_len = u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize;
        let pos_len = if i == 0 {
            u64::from_le_bytes(b[28 + 37..28 + 45].try_into().unwrap()) as usize
        } else {
            0
        };
        assert_eq!(b.len(), at + 8 + pos_len + ans_len, "record {i}");
        let cost = record_cost(&b).unwrap();
        assert_eq!(cost.position_bits, pos_len as u64 * 8);
        assert_eq!(
            cost.value_bits,
            (4 + 4 * nsym as u64 + 8 + ans_len as u64) * 8
        );
    }
}

#[test]
fn seeded_layout_by_hand() {
    let Record::Coded(r) = &coded_records()[1].2 else {
        unreachable!()
    };
    let b = encode_record(DType::F32, &[10, 30], &coded_records()[1].2, 3).unwrap();
    let p = &b[28..];
    assert_eq!(p[..8], 45u64.to_le_bytes());
    assert_eq!(p[8], 4);
    assert_eq!(p[9..13], (-0.75f32).to_le_bytes());
    assert_eq!(p[17..21], 2f32.to_le_bytes());
    assert_eq!(p[21..29], 99u64.to_le_bytes());
    assert_eq!(p[29..33], 3u32.to_le_bytes());
    assert_eq!(p[33..41], 23u64.to_le_bytes());
    // The decoded tensor puts level i at the i-th regenerated position.
    let pos = seeded_positions(300, 45, trial_seed(99, 3));
    let dense = Record::Coded(r.clone()).delta_to_dense(300, 1.0).unwrap();
    for (i, &p) in pos.iter().enumerate() {
        assert_eq!(dense[p as usize], Q.dequantize(r.levels[i]) * 2.0);
    }
    assert_eq!(
        dense.iter().filter(|&&x| x != 0.0).count(),
        45 - r.levels.iter().filter(|&&l| Q.dequantize(l) == 0.0).count()
    );
    assert_eq!(r.positions(), pos);
}

#[test]
fn coded_records_round_trip_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.udelta");
    let r = written_archive(
        &path,
        coded_records()
            .into_iter()
            .map(|(name, shape, rec)| (name.to_string(), shape, rec)),
    );
    for (name, _, rec) in coded_records() {
        assert_eq!(r.read_record(name).unwrap(), rec, "{name}");
        let e = r.entry(name).unwrap();
        assert_eq!(e.kind, rec.kind().name());
        assert_eq!(e.kept, rec.kept().unwrap());
    }
}

#[test]
fn invalid_coded_records_are_refused_on_write() {
    let golomb_packed = Record::Coded(CodedSparseRecord {
        numel: 10,
        quant: Q,
        scale: 1.0,
        positions: Positions::Golomb(vec![1, 2]),
        levels: vec![1, 2],
        coding: LevelCoding::Packed,
    });
    assert!(encode_record(DType::F32, &[10], &golomb_packed, 3).is_err());
    let too_many = Record::Coded(CodedSparseRecord {
        numel: 3,
        quant: Q,
        scale: 1.0,
        positions: Positions::Seeded { seed: 1, trial: 0 },
        levels: vec![1; 4],
        coding: LevelCoding::Packed,
    });
    assert!(encode_record(DType::F32, &[3], &too_many, 3).is_err());
    let big_level = Record::Coded(CodedSparseRecord {
        numel: 3,
        quant: Q,
        scale: 1.0,
        positions: Positions::Seeded { seed: 1, trial: 0 },
        levels: vec![16, 1],
        coding: LevelCoding::Rans,
    });
    assert!(encode_record(DType::F32, &[3], &big_level, 3).is_err());
    // One distinct level with seeded positions is stored as kind 11 by into_record, refused as kind 12.
    let one = CodedSparseRecord {
        numel: 30,
        quant: Q,
        scale: 1.0,
        positions: Positions::Seeded { seed: 1, trial: 0 },
        levels: vec![5; 7],
        coding: LevelCoding::Rans,
    };
    assert!(encode_record(DType::F32, &[30], &Record::Coded(one.clone()), 3).is_err());
    let stored = one.into_record();
    assert_eq!(stored.kind(), RecordKind::SparseSeeded);
    assert!(encode_record(DType::F32, &[30], &stored, 3).is_ok());
}

/// Every truncation and single-bit corruption decodes to an error or a valid record, never a panic.
#[test]
fn hostile_coded_records_never_panic() {
    let mut rng = Rng::new(78);
    for (name, shape, rec) in coded_records() {
        let bytes = encode_record(DType::F32, &shape, &rec, 3).unwrap();
        assert_hostile_record_bytes_never_panic(name, &bytes, &mut rng);
    }
}

#[test]
fn hostile_declared_counts_are_refused_before_allocating() {
    let mut b = vec![RecordKind::SparseSeededRans.code(), 2, 1, 0];
    b.extend_from_slice(&(1u64 << 40).to_le_bytes());
    b.extend_from_slice(&(1u64 << 40).to_le_bytes());
    b.extend_from_slice(&(1u64 << 39).to_le_bytes()); // kept
    b.push(4);
    for v in [0f32, 1.0, 1.0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&7u64.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&2u32.to_le_bytes());
    for (s, f) in [(0u16, 1u16), (1, 65535)] {
        b.extend_from_slice(&s.to_le_bytes());
        b.extend_from_slice(&f.to_le_bytes());
    }
    b.extend_from_slice(&2u64.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    let err = decode_record(&b, &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("exceed the limit"), "{err}");
    // Seeded + packed with bits 0 would carry no bytes for its levels: refused.
    let mut b = vec![RecordKind::SparseSeeded.code(), 2, 1, 0];
    b.extend_from_slice(&(1u64 << 40).to_le_bytes());
    b.extend_from_slice(&(1u64 << 40).to_le_bytes());
    b.extend_from_slice(&(1u64 << 39).to_le_bytes());
    b.push(0);
    for v in [0f32, 1.0, 1.0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&7u64.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    assert!(decode_record(&b, &Limits::default()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn coded_round_trip(
        numel in 1u64..3000,
        density in 0.0f64..1.0,
        bits in 1u8..=8,
        seed in any::<u64>(),
        trial in 0u32..20,
        seeded in any::<bool>(),
        rans in any::<bool>(),
        skew in 1u64..6,
    ) {
        let mut rng = Rng::new(seed);
        let kept = ((numel as f64) * density) as u64;
        let top = 1u64 << bits;
        let levels: Vec<u16> = (0..kept).map(|_| {
            let mut l = rng.next_u64() % top;
            for _ in 1..skew { l = l.min(rng.next_u64() % top); }
            l as u16
        }).collect();
        let positions = if seeded {
            Positions::Seeded { seed, trial }
        } else {
            Positions::Golomb(random_positions(&mut rng, numel, kept))
        };
        let q = QuantParams { bits, lo: -1.0, step: 0.01 };
        let rec = CodedSparseRecord {
            numel, quant: q, scale: 0.5, positions, levels,
            coding: if rans { LevelCoding::Rans } else { LevelCoding::Packed },
        }.into_record();
        let shape = [numel as usize];
        let bytes = encode_record(DType::F16, &shape, &rec, 3).unwrap();
        let (h, back) = decode_record(&bytes, &Limits::default()).unwrap();
        prop_assert_eq!(h.kind, rec.kind());
        prop_assert_eq!(&back, &rec);
        let a = back.delta_to_dense(numel as usize, 1.0).unwrap();
        let b = rec.delta_to_dense(numel as usize, 1.0).unwrap();
        prop_assert_eq!(a, b);
    }
}

fn write_coded(path: &std::path::Path) -> std::path::PathBuf {
    let mut w = ArchiveWriter::create(path, true).unwrap();
    for (name, shape, rec) in coded_records() {
        w.write_tensor(
            TensorEntry::new(name, shape, DType::F32, Policy::Compress),
            &rec,
        )
        .unwrap();
    }
    w.finish(
        "ultradelta",
        serde_json::json!({"fixture": true}),
        1.0,
        "0123456789abcdef",
        FinetunedInfo::default(),
    )
    .unwrap()
}

fn coded_fixture() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/v1-coded.udelta"
    ))
}

#[test]
#[ignore = "rewrites the committed fixture"]
fn regenerate_coded_fixture() {
    write_coded(&coded_fixture());
}

/// The committed fixture decodes to the records, and today's writer reproduces it byte for byte (so a change of
/// the rANS coder or the seeded sampler cannot go unnoticed).
#[test]
fn coded_fixture_decodes_and_is_reproduced() {
    let r = ArchiveReader::open(coded_fixture()).expect("committed coded fixture must open");
    r.verify().unwrap();
    for (name, _, rec) in coded_records() {
        assert_eq!(r.read_record(name).unwrap(), rec, "{name}");
    }
    // The fixture is format version 1; today's writer writes version 2, whose records and index are the same bytes
    // (but for the index's format_version) and whose trailer adds the content SHA-256.
    let dir = tempfile::tempdir().unwrap();
    let fresh = std::fs::read(write_coded(&dir.path().join("c.udelta"))).unwrap();
    let old = std::fs::read(coded_fixture()).unwrap();
    let (f_off, _) = crate::common::index_range(&fresh);
    let (o_off, _) = crate::common::index_range(&old);
    assert_eq!(f_off, o_off);
    assert_eq!(fresh[..8], old[..8]);
    // Flags: today's writer compresses the index (bit 0); the fixture's is plain JSON.
    assert_eq!(fresh[12..16], [1, 0, 0, 0]);
    assert_eq!(old[12..16], [0, 0, 0, 0]);
    assert_eq!(fresh[16..f_off], old[16..o_off], "records differ");
    let mut fresh_index = crate::common::index_json(&fresh);
    assert_eq!(fresh_index["format_version"], 2);
    fresh_index["format_version"] = serde_json::json!(1);
    assert_eq!(fresh_index, crate::common::index_json(&old));
}

#[test]
fn encoded_len_is_exactly_what_encode_record_writes() {
    // Every record kind: the sample archive's tensors, the baselines' and the coded kinds.
    let mut recs: Vec<(Vec<usize>, DType, Record)> = crate::common::sample_tensors()
        .into_iter()
        .filter_map(|t| Some((t.entry.shape, t.entry.dtype, t.record?)))
        .collect();
    recs.extend(
        crate::baselines::baseline_records()
            .into_iter()
            .map(|(_, shape, r)| (shape, DType::F32, r)),
    );
    recs.extend(
        coded_records()
            .into_iter()
            .map(|(_, shape, r)| (shape, DType::F32, r)),
    );
    // Kind 15 (not in the committed sample archive, whose bytes a fixture pins).
    recs.push((
        vec![4, 6],
        DType::BF16,
        Record::DiffDelta {
            dtype: DType::BF16,
            diff_bytes: (0..48u32).map(|i| (i * 29 % 256) as u8).collect(),
        },
    ));
    // Kind 16, with each residual kind.
    for coding in [LevelCoding::Packed, LevelCoding::Rans] {
        recs.push((
            vec![3, 4],
            DType::F32,
            Record::LowRankSparse(LowRankSparseRecord {
                rows: 3,
                cols: 4,
                factor_bits: 3,
                scales: vec![(1.0, 0.25), (0.5, 1.0)],
                levels: vec![4, 3, 2, 5, 3, 3, 1, 6, 3, 0, 3, 4, 2, 3],
                residual: CodedSparseRecord {
                    numel: 12,
                    quant: Q,
                    scale: 1.0,
                    positions: Positions::Seeded { seed: 5, trial: 0 },
                    levels: vec![1, 3, 2],
                    coding,
                },
            }),
        ));
    }
    // Kind 17: rows 0 and 2 of a 3 x 4 tensor, their delta a seeded sample.
    recs.push((
        vec![3, 4],
        DType::F32,
        Record::RowSubset(ultradelta_archive::RowSubsetRecord {
            rows: 3,
            cols: 4,
            listed: vec![0, 2],
            inner: Box::new(Record::Coded(CodedSparseRecord {
                numel: 8,
                quant: Q,
                scale: 1.0,
                positions: Positions::Seeded { seed: 5, trial: 0 },
                levels: vec![1, 3, 2],
                coding: LevelCoding::Rans,
            })),
        }),
    ));
    // Kind 18: a 3 x 4 tensor grown by 2 rows to 5 x 4, its base rows' delta a row subset (as above).
    let row_subset = recs.last().unwrap().2.clone();
    recs.push((
        vec![5, 4],
        DType::BF16,
        Record::AppendedRows(ultradelta_archive::AppendedRowsRecord {
            base_rows: 3,
            cols: 4,
            dtype: DType::BF16,
            head: Some(Box::new(row_subset)),
            tail: (0..16u32).map(|i| (i * 41 % 256) as u8).collect(),
        }),
    ));
    let mut kinds = std::collections::BTreeSet::new();
    for (shape, dtype, rec) in &recs {
        for level in [1, 3] {
            let bytes = encode_record(*dtype, shape, rec, level).unwrap();
            assert_eq!(
                rec.encoded_len(shape.len(), level).unwrap(),
                bytes.len() as u64,
                "{}",
                rec.kind().name()
            );
        }
        kinds.insert(rec.kind().code());
    }
    // Kinds 4, 13 and 14 (companion files) have no `Record` of their own.
    assert_eq!(kinds.len(), RecordKind::ALL.len() - 3, "{kinds:?}");
    // The levels-only length ranks the two codings of the same entries exactly as the whole records do.
    for (shape, _, rec) in &recs {
        let Record::Coded(c) = rec else { continue };
        let with = |coding| CodedSparseRecord {
            coding,
            ..c.clone()
        };
        let whole = |coding| {
            encode_record(DType::F32, shape, &with(coding).into_record(), 3)
                .unwrap()
                .len() as u64
        };
        let part = |coding| c.len_without_positions(coding).unwrap();
        let (wp, wr) = (whole(LevelCoding::Packed), whole(LevelCoding::Rans));
        let (pp, pr) = (part(LevelCoding::Packed), part(LevelCoding::Rans));
        assert_eq!(wp as i64 - wr as i64, pp as i64 - pr as i64);
    }
}
