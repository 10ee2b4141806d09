//! Kind 18, `appended-rows`: round trips (several nested kinds, through a file too, with `verify` and the
//! check-only decode), what the writer refuses, hostile input, the index's `base_rows` rules, and the committed
//! fixture.

use std::path::Path;

use ultradelta_archive::{
    decode_record, encode_record, AppendedRowsRecord, ArchiveReader, ArchiveWriter, DType,
    EncodedRecord, FinetunedInfo, LevelCoding, Limits, Policy, Record, RowSubsetRecord,
    SparseValuesRecord, TensorEntry,
};

use crate::common::{assert_hostile_record_bytes_never_panic, seeded_record, Rng};

/// `added` rows of `cols` BF16 values, deterministic.
fn tail(added: usize, cols: usize) -> Vec<u8> {
    (0..added * cols * 2)
        .map(|i| (i * 53 % 251) as u8)
        .collect()
}

/// (name, shape, record): a 4 x 3 base grown to 6 x 3 with each kind of nested delta the writer produces for a
/// token embedding (UltraDelta's seeded sample, a row subset, a baseline's fp16 values).
fn records() -> Vec<(&'static str, [usize; 2], AppendedRowsRecord)> {
    let grown = |head: Option<Record>| AppendedRowsRecord {
        base_rows: 4,
        cols: 3,
        dtype: DType::BF16,
        head: head.map(Box::new),
        tail: tail(2, 3),
    };
    vec![
        (
            "seeded",
            [6, 3],
            grown(Some(
                seeded_record(12, vec![1, 3, 0, 2], LevelCoding::Rans).into_record(),
            )),
        ),
        (
            "rows",
            [6, 3],
            grown(Some(Record::RowSubset(RowSubsetRecord {
                rows: 4,
                cols: 3,
                listed: vec![1, 3],
                inner: Box::new(seeded_record(6, vec![2, 0, 3], LevelCoding::Packed).into_record()),
            }))),
        ),
        (
            "dare",
            [6, 3],
            grown(Some(Record::SparseValues(SparseValuesRecord {
                numel: 12,
                positions: vec![0, 5, 11],
                values: [0.5f32, -1.0, 0.25].map(half::f16::from_f32).to_vec(),
                scale: 2.0,
            }))),
        ),
        // Kept without loss: the base rows' XOR or bit difference.
        (
            "kept-xor",
            [6, 3],
            grown(Some(Record::XorDelta {
                dtype: DType::BF16,
                xor_bytes: (0..24u32).map(|i| (i * 7 % 5) as u8).collect(),
            })),
        ),
        (
            "kept-diff",
            [6, 3],
            grown(Some(Record::DiffDelta {
                dtype: DType::BF16,
                diff_bytes: (0..24u32).map(|i| (i * 3 % 4) as u8).collect(),
            })),
        ),
        // Dropped: the base's rows as they are, the added rows.
        ("dropped", [6, 3], grown(None)),
    ]
}

fn write(path: &Path, recs: &[(&str, [usize; 2], AppendedRowsRecord)]) -> ArchiveReader {
    let mut w = ArchiveWriter::create(path, true).unwrap();
    for (name, shape, r) in recs {
        let policy = match r.head.as_deref() {
            None => Policy::Drop,
            Some(Record::XorDelta { .. } | Record::DiffDelta { .. }) => Policy::Keep,
            Some(_) => Policy::Compress,
        };
        let mut e = TensorEntry::new(*name, shape.to_vec(), DType::BF16, policy);
        e.base_rows = Some(r.base_rows as usize);
        w.write_tensor(e, &Record::AppendedRows(r.clone())).unwrap();
    }
    w.finish(
        "ultradelta",
        serde_json::json!({}),
        1.0,
        "0123456789abcdef",
        FinetunedInfo::default(),
    )
    .unwrap();
    ArchiveReader::open(path).unwrap()
}

#[test]
fn appended_rows_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let recs = records();
    for (name, shape, r) in &recs {
        let rec = Record::AppendedRows(r.clone());
        let bytes = encode_record(DType::BF16, shape, &rec, 3).unwrap();
        assert_eq!(rec.encoded_len(2, 3).unwrap(), bytes.len() as u64, "{name}");
        let (header, back) = decode_record(&bytes, &Limits::default()).unwrap();
        assert_eq!(header.shape, [6, 3], "{name}");
        assert_eq!(back, rec, "{name}");
        assert_eq!(back.kept(), r.kept(), "{name}");
        // Not a delta of the whole tensor: its nested record is the base rows' delta.
        assert!(!back.is_delta());
        assert!(back.add_delta_into(1.0, &mut [0f32; 18]).is_err());
    }
    let reader = write(&dir.path().join("a.udelta"), &recs);
    reader.verify().unwrap();
    for (name, _, r) in recs {
        let e = reader.entry(name).unwrap();
        assert_eq!((e.kind.as_str(), e.base_rows), ("appended-rows", Some(4)));
        assert_eq!(e.kept, r.kept().unwrap_or(18), "{name}");
        assert_eq!(e.expected_base_shape(), [4, 3]);
        reader.check_record(name).unwrap();
        assert_eq!(
            reader.read_record(name).unwrap(),
            Record::AppendedRows(r),
            "{name}"
        );
    }
}

#[test]
fn invalid_records_are_refused_on_write() {
    let good = records().remove(0).2;
    let enc = |r: AppendedRowsRecord, shape: &[usize]| {
        encode_record(DType::BF16, shape, &Record::AppendedRows(r), 3)
            .unwrap_err()
            .to_string()
    };
    let err = |e: String, want: &str| assert!(e.contains(want), "{e} (want {want:?})");
    err(
        enc(good.clone(), &[7, 3]),
        "for a BF16 tensor of shape [7, 3]",
    );
    err(enc(good.clone(), &[6, 3, 1]), "shape [6, 3, 1]");
    err(
        encode_record(DType::F32, &[6, 3], &Record::AppendedRows(good.clone()), 3)
            .unwrap_err()
            .to_string(),
        "for a F32 tensor",
    );
    err(
        enc(
            AppendedRowsRecord {
                tail: tail(2, 3)[1..].to_vec(),
                ..good.clone()
            },
            &[6, 3],
        ),
        "are not whole rows",
    );
    err(
        enc(
            AppendedRowsRecord {
                tail: vec![],
                ..good.clone()
            },
            &[4, 3],
        ),
        "(at least one)",
    );
    err(
        enc(
            AppendedRowsRecord {
                base_rows: 3,
                ..good.clone()
            },
            &[5, 3],
        ),
        "nested record of 12 entries for 3 base rows",
    );
    for head in [
        Record::Full {
            dtype: DType::BF16,
            bytes: vec![0; 24],
        },
        Record::AppendedRows(good.clone()),
    ] {
        err(
            enc(
                AppendedRowsRecord {
                    head: Some(Box::new(head)),
                    ..good.clone()
                },
                &[6, 3],
            ),
            "cannot nest",
        );
    }
    // A lossless delta of another dtype or length than the base's rows.
    for (d, n, want) in [
        (
            DType::F16,
            24,
            "nested xor-zstd record of F16 for a BF16 tensor",
        ),
        (
            DType::BF16,
            22,
            "nested record of 11 entries for 4 base rows",
        ),
    ] {
        err(
            enc(
                AppendedRowsRecord {
                    head: Some(Box::new(Record::XorDelta {
                        dtype: d,
                        xor_bytes: vec![1; n],
                    })),
                    ..good.clone()
                },
                &[6, 3],
            ),
            want,
        );
    }
}

fn assert_refused(bytes: &[u8], want: &str) {
    let e = decode_record(bytes, &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains(want), "{e} (want {want:?})");
}

/// Byte offset of the payload of a 2-D record.
const HDR: usize = 12 + 8 * 2;

#[test]
fn hostile_fields_are_refused() {
    let r = records().remove(0).2;
    let good = encode_record(DType::BF16, &[6, 3], &Record::AppendedRows(r.clone()), 3).unwrap();
    let with = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        b[at..at + v.len()].copy_from_slice(v);
        b
    };
    assert_refused(
        &with(HDR, &0u64.to_le_bytes()),
        "0 base rows, expected 1..6",
    );
    assert_refused(
        &with(HDR, &6u64.to_le_bytes()),
        "6 base rows, expected 1..6",
    );
    // A nested length past the record, or leaving nothing for the added rows.
    assert_refused(&with(HDR + 8, &u64::MAX.to_le_bytes()), "nested record of");
    let head_len = u64::from_le_bytes(good[HDR + 8..HDR + 16].try_into().unwrap()) as usize;
    let rest = (good.len() - HDR - 16) as u64;
    assert_refused(&with(HDR + 8, &rest.to_le_bytes()), "must follow it");
    // A nested record shorter than declared leaves bytes behind; one longer runs into the added rows' record.
    assert_refused(&with(HDR + 8, &(head_len as u64 + 1).to_le_bytes()), "");
    let nested = HDR + 16;
    assert_eq!(good[nested], 12);
    // The nested record's header: a lossless kind, another kind 18, another dtype, another shape.
    assert_refused(&with(nested, &[3]), "expected a delta kind");
    assert_refused(&with(nested, &[18]), "expected a delta kind");
    assert_refused(
        &with(nested + 1, &[DType::F32.code()]),
        "expected BF16 and [4, 3]",
    );
    // The added rows' record: another kind, another shape.
    let tail_at = nested + head_len;
    assert_eq!(good[tail_at], 3);
    assert_refused(&with(tail_at, &[2]), "added rows' record of kind xor-zstd");
    let mut shape = with(tail_at + 4, &1u64.to_le_bytes());
    shape[tail_at + 20..tail_at + 28].copy_from_slice(&3u64.to_le_bytes());
    assert_refused(&shape, "shape [1, 3], expected full-zstd, BF16 and [2, 3]");
    // A 1-D record cannot grow by rows.
    let mut one_d = vec![18, DType::BF16.code(), 1, 0];
    one_d.extend_from_slice(&18u64.to_le_bytes());
    one_d.extend_from_slice(&18u64.to_le_bytes());
    one_d.extend_from_slice(&good[HDR..]);
    assert_refused(&one_d, "needs 2 dimensions");
}

#[test]
fn hostile_records_never_panic() {
    let mut rng = Rng::new(181);
    for (name, shape, r) in records() {
        let bytes = encode_record(DType::BF16, &shape, &Record::AppendedRows(r), 3).unwrap();
        assert_hostile_record_bytes_never_panic(name, &bytes, &mut rng);
    }
}

/// `base_rows` belongs to an `appended-rows` entry of a compressed 2-D tensor, below its rows, and only there.
#[test]
fn the_index_base_rows_rules_are_enforced_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.udelta");
    write(&path, &records()[..1]);
    let bytes = std::fs::read(&path).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = crate::common::index_json(&bytes);
        f(&mut v["tensors"][0]);
        crate::common::with_index_bytes(&bytes, &serde_json::to_vec(&v).unwrap())
    };
    for (k, (hostile, want)) in [
        (
            edit(&|e| e["base_rows"] = serde_json::Value::Null),
            "has no base_rows",
        ),
        (
            edit(&|e| e["base_rows"] = 6.into()),
            "base_rows 6, expected 1..6",
        ),
        (
            edit(&|e| e["base_rows"] = 0.into()),
            "base_rows 0, expected 1..6",
        ),
        (edit(&|e| e["policy"] = "new".into()), "policy new"),
        (
            edit(&|e| {
                e["base_dtype"] = "F32".into();
                e["policy"] = "keep".into();
            }),
            "has a base_dtype and policy keep",
        ),
        (
            edit(&|e| e["kind"] = "sparse-seeded-rans".into()),
            "has base_rows but record kind \"sparse-seeded-rans\"",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let p = dir.path().join(format!("h{k}.udelta"));
        std::fs::write(&p, hostile).unwrap();
        let e = ArchiveReader::open(&p).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.contains("\"seeded\""),
            "{k}: {e} (want {want:?})"
        );
    }
}

/// `tests/data/v2-appended-rows.udelta` (also a fuzz seed, `fuzz/seeds/archive/v2-appended-rows.udelta`): the three
/// records above, written on 2026-12-06 when kind 18 was added. Later readers must decode it to the same records.
#[test]
fn the_committed_kind_18_archive_still_decodes() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/v2-appended-rows.udelta"
    );
    let reader = ArchiveReader::open(path).expect("committed fixture must open");
    reader.verify().unwrap();
    for (name, _, r) in records() {
        assert_eq!(reader.entry(name).unwrap().kind, "appended-rows");
        assert_eq!(reader.read_record(name).unwrap(), Record::AppendedRows(r));
    }
}

/// Writes the fixture: `cargo test -p ultradelta-archive --test it appended_rows::regenerate -- --ignored`.
#[test]
#[ignore]
fn regenerate() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/v2-appended-rows.udelta"
    );
    write(Path::new(path), &records());
}

/// The record made from its parts (the base rows' record already encoded) is byte for byte `encode_record`'s, with
/// the same kept count; parts that do not fit the tensor are refused.
#[test]
fn the_record_from_its_parts_is_encode_records() {
    for (name, shape, r) in records() {
        for level in [1, 3] {
            let nested = r
                .head
                .as_deref()
                .map(|h| EncodedRecord::new(DType::BF16, &[4, 3], h, level).unwrap());
            let made = EncodedRecord::appended_rows(
                DType::BF16,
                &shape,
                4,
                nested.as_ref(),
                &r.tail,
                level,
            )
            .unwrap();
            let rec = Record::AppendedRows(r.clone());
            let want = encode_record(DType::BF16, &shape, &rec, level).unwrap();
            assert!(made.bytes() == want.as_slice(), "{name} at level {level}");
            assert_eq!(made.kept(), rec.kept(), "{name}");
            assert_eq!(made.kind(), rec.kind(), "{name}");
        }
    }
    let added = tail(2, 3);
    let err = |base_rows: usize, shape: &[usize], tail: &[u8], nested: Option<&EncodedRecord>| {
        EncodedRecord::appended_rows(DType::BF16, shape, base_rows, nested, tail, 3)
            .unwrap_err()
            .to_string()
    };
    for e in [
        err(0, &[6, 3], &added, None),
        err(6, &[6, 3], &[], None),
        err(4, &[6, 3], &added[1..], None),
        err(4, &[6, 3, 1], &added, None),
    ] {
        assert!(e.contains("appended-rows record"), "{e}");
    }
    let whole = EncodedRecord::new(
        DType::BF16,
        &[4, 3],
        &Record::Full {
            dtype: DType::BF16,
            bytes: vec![0; 24],
        },
        3,
    )
    .unwrap();
    let other_shape = EncodedRecord::new(
        DType::BF16,
        &[3, 4],
        &Record::XorDelta {
            dtype: DType::BF16,
            xor_bytes: vec![0; 24],
        },
        3,
    )
    .unwrap();
    for nested in [&whole, &other_shape] {
        let e = err(4, &[6, 3], &added, Some(nested));
        assert!(e.contains("cannot nest"), "{e}");
    }
}
