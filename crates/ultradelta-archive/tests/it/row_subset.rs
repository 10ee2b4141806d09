//! Kind 17, `row-subset`: the decoding formula against the nested record's, round trips (each nested kind,
//! through a file too, with `verify` and the check-only decode), what the writer refuses, and hostile input.

use proptest::prelude::*;
use ultradelta_archive::{
    decode_record, encode_record, ArchiveReader, CodedSparseRecord, DType, LevelCoding, Limits,
    LowRankSparseRecord, Positions, Record, RecordKind, RowSubsetRecord,
};

use crate::common::{assert_hostile_record_bytes_never_panic, seeded_record, written_archive, Rng};

/// A seeded sparse record over `numel` entries (scale 2, positions `(seed 9, trial 1)`).
fn seeded(numel: u64, levels: Vec<u16>, coding: LevelCoding) -> CodedSparseRecord {
    CodedSparseRecord {
        scale: 2.0,
        positions: Positions::Seeded { seed: 9, trial: 1 },
        ..seeded_record(numel, levels, coding)
    }
}

/// Rows 1 and 4 of a 6 x 3 tensor, their delta a seeded sample of 4 of the 6 entries.
fn sparse(coding: LevelCoding) -> RowSubsetRecord {
    RowSubsetRecord {
        rows: 6,
        cols: 3,
        listed: vec![1, 4],
        inner: Box::new(Record::Coded(seeded(6, vec![0, 3, 1, 2], coding))),
    }
}

/// Rows 0, 2 and 5 of a 6 x 4 tensor, their delta a rank-1 part plus a seeded residual.
fn lowrank() -> RowSubsetRecord {
    RowSubsetRecord {
        rows: 6,
        cols: 4,
        listed: vec![0, 2, 5],
        inner: Box::new(Record::LowRankSparse(LowRankSparseRecord {
            rows: 3,
            cols: 4,
            factor_bits: 2,
            scales: vec![(0.5, 2.0)],
            levels: vec![0, 1, 2, 2, 0, 1, 2],
            residual: seeded(12, vec![3, 0], LevelCoding::Rans),
        })),
    }
}

fn records() -> Vec<(&'static str, RowSubsetRecord)> {
    vec![
        ("packed", sparse(LevelCoding::Packed)),
        ("rans", sparse(LevelCoding::Rans)),
        ("lowrank", lowrank()),
    ]
}

/// The nested record's dense delta, placed at the listed rows (zero elsewhere).
fn scattered(r: &RowSubsetRecord, gamma: f32) -> Vec<f32> {
    let cols = r.cols as usize;
    let inner = r
        .inner
        .delta_to_dense(r.listed.len() * cols, gamma)
        .unwrap();
    let mut out = vec![0f32; r.numel() as usize];
    for (i, &row) in r.listed.iter().enumerate() {
        out[row as usize * cols..][..cols].copy_from_slice(&inner[i * cols..][..cols]);
    }
    out
}

#[test]
fn the_listed_rows_get_the_nested_records_values_and_the_rest_nothing() {
    // A negative γ makes `v·γ` a -0 where `v` is +0.
    for ((name, r), gamma) in records()
        .into_iter()
        .flat_map(|r| [(r.clone(), 0.75), (r, -0.75)])
    {
        let rec = Record::RowSubset(r.clone());
        let want = scattered(&r, gamma);
        assert!(want.iter().any(|&v| v != 0.0), "{name}");
        // Added onto values already there, bit for bit as the nested record's delta computed into zeros adds
        // them, down to the sign of a zero: every third entry starts at -0.
        let start: Vec<f32> = (0..r.numel())
            .map(|i| if i % 3 == 0 { -0.0 } else { i as f32 * 0.125 })
            .collect();
        let mut out = start.clone();
        rec.add_delta_into(gamma, &mut out).unwrap();
        for (i, ((o, s), w)) in out.iter().zip(&start).zip(&want).enumerate() {
            let row = i as u64 / r.cols;
            if r.listed.contains(&row) {
                assert_eq!(
                    o.to_bits(),
                    (s + w).to_bits(),
                    "{name}, γ {gamma}: entry {i}"
                );
            } else {
                assert_eq!(
                    o.to_bits(),
                    s.to_bits(),
                    "{name}: unlisted row {row} changed"
                );
            }
        }
        // A listed -0 the nested record leaves at zero becomes +0, as it did from a buffer of zeros.
        assert!(
            out.iter().zip(&start).enumerate().any(|(i, (o, s))| r
                .listed
                .contains(&(i as u64 / r.cols))
                && s.to_bits() == (-0f32).to_bits()
                && o.to_bits() == 0),
            "{name}: no listed -0 left at zero"
        );
        assert_eq!(rec.kept(), r.inner.kept(), "{name}");
    }
}

#[test]
fn every_nested_kind_round_trips_with_its_exact_length() {
    for (name, r) in records() {
        let shape = [r.rows as usize, r.cols as usize];
        let rec = Record::RowSubset(r.clone());
        let bytes = encode_record(DType::BF16, &shape, &rec, 3).unwrap();
        assert_eq!(bytes[0], 17, "{name}");
        assert_eq!(rec.encoded_len(2, 3).unwrap(), bytes.len() as u64, "{name}");
        let (hdr, back) = decode_record(&bytes, &Limits::default()).unwrap();
        assert_eq!(hdr.kind, RecordKind::RowSubset);
        assert_eq!(hdr.shape, vec![r.rows, r.cols]);
        assert_eq!(back, rec, "{name}");
        // The nested record is stored whole, with its own header, last.
        let nested =
            encode_record(DType::BF16, &[r.listed.len(), r.cols as usize], &r.inner, 3).unwrap();
        assert!(bytes.ends_with(&nested), "{name}");
    }
}

#[test]
fn records_round_trip_through_a_file_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k17.udelta");
    let reader = written_archive(
        &path,
        records().into_iter().map(|(name, r)| {
            let shape = vec![r.rows as usize, r.cols as usize];
            (name.to_string(), shape, Record::RowSubset(r))
        }),
    );
    for (name, r) in records() {
        // The check-only decode (what `verify` without a base runs) keeps no kind-12 levels: it must still pass.
        reader.check_record(name).unwrap();
        let e = reader.entry(name).unwrap();
        assert_eq!(e.kind, "row-subset");
        assert_eq!(
            e.kept,
            r.inner.kept().unwrap(),
            "{name}: the nested record's kept"
        );
        assert_eq!(reader.read_record(name).unwrap(), Record::RowSubset(r));
    }
}

#[test]
fn invalid_records_are_refused_on_write() {
    let enc = |r: RowSubsetRecord, shape: &[usize]| {
        encode_record(DType::F32, shape, &Record::RowSubset(r), 3)
            .unwrap_err()
            .to_string()
    };
    let err = |e: String, want: &str| assert!(e.contains(want), "{e} (want {want:?})");
    let good = sparse(LevelCoding::Rans);
    err(enc(good.clone(), &[6, 3, 1]), "needs shape [6, 3]");
    err(
        enc(
            RowSubsetRecord {
                listed: vec![],
                ..good.clone()
            },
            &[6, 3],
        ),
        "lists no row",
    );
    for (listed, want) in [
        (vec![4, 1], "listed rows"),
        (vec![1, 6], "listed rows"),
        (
            vec![1, 2, 4],
            "nested record of 6 entries for 3 rows of 3 columns",
        ),
    ] {
        err(
            enc(
                RowSubsetRecord {
                    listed,
                    ..good.clone()
                },
                &[6, 3],
            ),
            want,
        );
    }
    let golomb = CodedSparseRecord {
        positions: Positions::Golomb(vec![0, 5]),
        levels: vec![1, 2],
        ..seeded(6, vec![], LevelCoding::Rans)
    };
    err(
        enc(
            RowSubsetRecord {
                inner: Box::new(Record::Coded(golomb)),
                ..good.clone()
            },
            &[6, 3],
        ),
        "needs seeded positions",
    );
    err(
        enc(
            RowSubsetRecord {
                inner: Box::new(Record::RowSubset(good.clone())),
                ..good.clone()
            },
            &[6, 3],
        ),
        "cannot nest a row-subset record",
    );
}

fn refused(bytes: &[u8]) -> String {
    decode_record(bytes, &Limits::default())
        .unwrap_err()
        .to_string()
}

fn assert_refused(bytes: &[u8], want: &str) {
    let e = refused(bytes);
    assert!(e.contains(want), "{e} (want {want:?})");
}

/// Byte offset of the payload of a 2-D record.
const HDR: usize = 12 + 8 * 2;

#[test]
fn hostile_fields_are_refused() {
    let good = encode_record(
        DType::F32,
        &[6, 3],
        &Record::RowSubset(sparse(LevelCoding::Rans)),
        3,
    )
    .unwrap();
    let with = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        b[at..at + v.len()].copy_from_slice(v);
        b
    };
    // The listed row count: none, more than the tensor's rows, more than the row stream holds.
    assert_refused(
        &with(HDR, &0u64.to_le_bytes()),
        "0 listed rows, expected 1..=6",
    );
    assert_refused(
        &with(HDR, &7u64.to_le_bytes()),
        "7 listed rows, expected 1..=6",
    );
    assert_refused(&with(HDR, &3u64.to_le_bytes()), "golomb");
    // A stream longer than the bytes present.
    assert_refused(&with(HDR + 24, &u64::MAX.to_le_bytes()), "does not match");
    // The nested record's header: another kind, another dtype, another shape.
    let nested = good.len()
        - encode_record(
            DType::F32,
            &[2, 3],
            &Record::Coded(seeded(6, vec![0, 3, 1, 2], LevelCoding::Rans)),
            3,
        )
        .unwrap()
        .len();
    assert_eq!(good[nested], 12);
    assert_refused(&with(nested, &[2]), "expected 11, 12 or 16");
    assert_refused(&with(nested, &[17]), "expected 11, 12 or 16");
    assert_refused(
        &with(nested + 1, &[DType::BF16.code()]),
        "expected F32 and [2, 3]",
    );
    let mut transposed = with(nested + 4, &3u64.to_le_bytes());
    transposed[nested + 12..nested + 20].copy_from_slice(&2u64.to_le_bytes());
    assert_refused(&transposed, "shape [3, 2], expected F32 and [2, 3]");
    assert_refused(&with(nested + 4, &3u64.to_le_bytes()), "not the product");
    // A 1-D record cannot be a row subset.
    let mut one_d = vec![17, DType::F32.code(), 1, 0];
    one_d.extend_from_slice(&18u64.to_le_bytes());
    one_d.extend_from_slice(&18u64.to_le_bytes());
    one_d.extend_from_slice(&good[HDR..]);
    assert_refused(&one_d, "needs 2 dimensions");
}

#[test]
fn hostile_records_never_panic() {
    let mut rng = Rng::new(171);
    for (name, r) in records() {
        let shape = [r.rows as usize, r.cols as usize];
        let bytes = encode_record(DType::F32, &shape, &Record::RowSubset(r), 3).unwrap();
        assert_hostile_record_bytes_never_panic(name, &bytes, &mut rng);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn row_subset_round_trip(
        rows in 1u64..60,
        cols in 1u64..20,
        share in 0.0f64..1.0,
        density in 0.0f64..0.8,
        seed in any::<u64>(),
        rans in any::<bool>(),
    ) {
        let mut rng = Rng::new(seed);
        let mut listed: Vec<u64> = (0..rows).filter(|_| rng.next_u64() % 1000 < (share * 1000.0) as u64).collect();
        if listed.is_empty() {
            listed.push(rng.next_u64() % rows);
        }
        let numel = listed.len() as u64 * cols;
        let kept = ((numel as f64) * density) as u64;
        let levels: Vec<u16> = (0..kept).map(|_| (rng.next_u64() % 4) as u16).collect();
        let coding = if rans && kept > 0 { LevelCoding::Rans } else { LevelCoding::Packed };
        let inner = seeded(numel, levels, coding).into_record();
        let r = RowSubsetRecord { rows, cols, listed, inner: Box::new(inner) };
        let rec = Record::RowSubset(r.clone());
        let shape = [rows as usize, cols as usize];
        match encode_record(DType::F32, &shape, &rec, 3) {
            Ok(bytes) => {
                prop_assert_eq!(rec.encoded_len(2, 3).unwrap(), bytes.len() as u64);
                let (_, back) = decode_record(&bytes, &Limits::default()).unwrap();
                prop_assert_eq!(&back, &rec);
                let mut out = vec![0f32; (rows * cols) as usize];
                back.add_delta_into(1.0, &mut out).unwrap();
                prop_assert_eq!(out, scattered(&r, 1.0));
            }
            // Kind 12 needs two distinct levels; `into_record` gives the coding to store, so this cannot happen.
            Err(e) => prop_assert!(false, "{}", e),
        }
    }
}

/// `tests/data/v2-row-subset.udelta` (also a fuzz seed, `fuzz/seeds/archive/row-subset.udelta`): the three records
/// above, F32, written on 2026-12-06 when kind 17 was added. Later readers must decode it to the same records.
#[test]
fn the_committed_kind_17_archive_still_decodes() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/v2-row-subset.udelta"
    );
    let reader = ArchiveReader::open(path).expect("committed fixture must open");
    reader.verify().unwrap();
    for (name, r) in records() {
        assert_eq!(reader.entry(name).unwrap().kind, "row-subset");
        assert_eq!(reader.read_record(name).unwrap(), Record::RowSubset(r));
    }
}
