//! Kind 16, `lowrank-seeded-rans`: layout, the decoding formula on hand-computed examples, round trips (both
//! residual kinds, through a file too) and hostile input.

use proptest::prelude::*;
use ultradelta_archive::{
    decode_record, encode_record, CodedSparseRecord, DType, LevelCoding, Limits,
    LowRankSparseRecord, Positions, Record, RecordKind,
};
use ultradelta_core::seeded::{seeded_positions, trial_seed};

use crate::common::{
    assert_hostile_record_bytes_never_panic, seeded_record, written_archive, Rng, SEEDED_Q,
};

/// Common header of a 2-D record.
const HDR: usize = 12 + 8 * 2;

/// A residual over `numel` entries with seeded positions `(seed, 0)`.
fn residual(numel: u64, levels: Vec<u16>, coding: LevelCoding) -> CodedSparseRecord {
    seeded_record(numel, levels, coding)
}

/// 3 x 4, rank 1, 2-bit factors (L = 1): u = (-1, 0, 1)·0.5, v = (1, -1, 0, 1)·2.
fn rank1(coding: LevelCoding) -> LowRankSparseRecord {
    LowRankSparseRecord {
        rows: 3,
        cols: 4,
        factor_bits: 2,
        scales: vec![(0.5, 2.0)],
        levels: vec![0, 1, 2, 2, 0, 1, 2],
        residual: residual(12, vec![3, 0], coding),
    }
}

/// 3 x 4, rank 2, 3-bit factors (L = 3): u_1 = (1, 0, -1)·1, v_1 = (2, 0, 0, -2)·0.25, u_2 = (3, 0, -3)·0.5,
/// v_2 = (0, 1, -1, 0)·1.
fn rank2(coding: LevelCoding) -> LowRankSparseRecord {
    LowRankSparseRecord {
        rows: 3,
        cols: 4,
        factor_bits: 3,
        scales: vec![(1.0, 0.25), (0.5, 1.0)],
        levels: vec![4, 3, 2, 5, 3, 3, 1, 6, 3, 0, 3, 4, 2, 3],
        residual: residual(12, vec![1, 3, 2], coding),
    }
}

/// The residual's values (`(lo + level·step)·scale`) added at its seeded positions.
fn plus_residual(mut dense: Vec<f32>, r: &CodedSparseRecord) -> Vec<f32> {
    let Positions::Seeded { seed, trial } = r.positions else {
        unreachable!()
    };
    let pos = seeded_positions(r.numel, r.kept(), trial_seed(seed, trial));
    for (p, &l) in pos.iter().zip(&r.levels) {
        dense[*p as usize] += (-1.0 + f32::from(l) * 0.5) * r.scale;
    }
    dense
}

#[test]
fn add_delta_into_gives_the_hand_computed_values() {
    for coding in [LevelCoding::Packed, LevelCoding::Rans] {
        let r = rank1(coding);
        #[rustfmt::skip]
        let low = vec![
            -1.0, 1.0, 0.0, -1.0,
            0.0, 0.0, 0.0, 0.0,
            1.0, -1.0, 0.0, 1.0,
        ];
        let want = plus_residual(low, &r.residual);
        let rec = Record::LowRankSparse(r);
        assert_eq!(rec.delta_to_dense(12, 1.0).unwrap(), want);
        // gamma multiplies last, added to what is there.
        let mut out = vec![10.0f32; 12];
        rec.add_delta_into(2.0, &mut out).unwrap();
        let twice: Vec<f32> = want.iter().map(|v| 10.0 + v * 2.0).collect();
        assert_eq!(out, twice);

        let r = rank2(coding);
        #[rustfmt::skip]
        let low = vec![
            0.5, 1.5, -1.5, -0.5,
            0.0, 0.0, 0.0, 0.0,
            -0.5, -1.5, 1.5, 0.5,
        ];
        let want = plus_residual(low, &r.residual);
        let rec = Record::LowRankSparse(r);
        assert_eq!(rec.delta_to_dense(12, 1.0).unwrap(), want);
        assert!(rec.delta_to_dense(11, 1.0).is_err());
    }
    // The residual's positions are those its seed gives (3 of 12), and they change the result.
    let r = rank2(LevelCoding::Rans);
    assert_eq!(seeded_positions(12, 3, trial_seed(5, 0)).len(), 3);
    assert_ne!(
        Record::LowRankSparse(r.clone())
            .delta_to_dense(12, 1.0)
            .unwrap(),
        Record::LowRankSparse(LowRankSparseRecord {
            residual: residual(12, vec![], LevelCoding::Packed),
            ..r
        })
        .delta_to_dense(12, 1.0)
        .unwrap()
    );
}

#[test]
fn layout_by_hand() {
    let r = rank1(LevelCoding::Packed);
    let bytes = encode_record(DType::BF16, &[3, 4], &Record::LowRankSparse(r.clone()), 3).unwrap();
    assert_eq!(&bytes[..4], &[16, DType::BF16.code(), 2, 0]);
    assert_eq!(&bytes[HDR..HDR + 4], &1u32.to_le_bytes());
    assert_eq!(bytes[HDR + 4], 2);
    assert_eq!(&bytes[HDR + 5..HDR + 9], &0.5f32.to_le_bytes());
    assert_eq!(&bytes[HDR + 9..HDR + 13], &2.0f32.to_le_bytes());
    // The levels block: nsym 3 (levels 0, 1, 2).
    assert_eq!(&bytes[HDR + 13..HDR + 17], &3u32.to_le_bytes());
    let at = residual_kind_at(&bytes);
    assert_eq!(bytes[at], RecordKind::SparseSeeded.code());
    // The residual is byte for byte a kind-11 payload.
    let alone = encode_record(DType::BF16, &[3, 4], &Record::Coded(r.residual.clone()), 3).unwrap();
    assert_eq!(&bytes[at + 1..], &alone[HDR..]);
    assert_eq!(
        RecordKind::LowrankSeededRans.fixed_bytes(),
        5,
        "rank and factor bits"
    );
    assert_eq!(
        RecordKind::from_name("lowrank-seeded-rans"),
        Some(RecordKind::LowrankSeededRans)
    );
    assert_eq!(RecordKind::LowrankSeededRans.codec_name(), None);
}

/// Offset of the residual kind byte of an encoded 2-D kind-16 record.
fn residual_kind_at(bytes: &[u8]) -> usize {
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as usize;
    let rank = u32_at(HDR);
    let nsym_at = HDR + 5 + 8 * rank;
    let len_at = nsym_at + 4 + 4 * u32_at(nsym_at);
    let ans_len = u64::from_le_bytes(bytes[len_at..len_at + 8].try_into().unwrap()) as usize;
    len_at + 8 + ans_len
}

#[test]
fn both_residual_kinds_round_trip() {
    for rec in [
        rank1(LevelCoding::Packed),
        rank1(LevelCoding::Rans),
        rank2(LevelCoding::Packed),
        rank2(LevelCoding::Rans),
    ] {
        let kind = rec.residual_kind();
        let rec = Record::LowRankSparse(rec);
        let bytes = encode_record(DType::F32, &[3, 4], &rec, 3).unwrap();
        assert_eq!(bytes[residual_kind_at(&bytes)], kind.code());
        assert_eq!(rec.encoded_len(2, 3).unwrap(), bytes.len() as u64);
        let (h, back) = decode_record(&bytes, &Limits::default()).unwrap();
        assert_eq!(h.kind, RecordKind::LowrankSeededRans);
        assert_eq!(h.shape, vec![3, 4]);
        assert_eq!(back, rec);
        assert_eq!(rec.kept(), Some(12));
    }
    // Factor levels all one symbol: a one-symbol model table (frequency field 0, no words), as kind 10 allows.
    let one = LowRankSparseRecord {
        levels: vec![2; 7],
        ..rank1(LevelCoding::Rans)
    };
    let rec = Record::LowRankSparse(one);
    let bytes = encode_record(DType::F32, &[3, 4], &rec, 3).unwrap();
    assert_eq!(&bytes[HDR + 13..HDR + 17], &1u32.to_le_bytes());
    assert_eq!(decode_record(&bytes, &Limits::default()).unwrap().1, rec);
}

#[test]
fn records_round_trip_through_a_file_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k16.udelta");
    let recs = [
        ("a.weight", rank1(LevelCoding::Packed)),
        ("b.weight", rank2(LevelCoding::Rans)),
    ];
    let reader = written_archive(
        &path,
        recs.iter().map(|(name, r)| {
            (
                name.to_string(),
                vec![3, 4],
                Record::LowRankSparse(r.clone()),
            )
        }),
    );
    for (name, r) in recs {
        reader.check_record(name).unwrap();
        let e = reader.entry(name).unwrap();
        assert_eq!(e.kind, "lowrank-seeded-rans");
        assert_eq!(e.kept, 12, "kept is numel, as for kind 8");
        assert_eq!(reader.read_record(name).unwrap(), Record::LowRankSparse(r));
    }
}

#[test]
fn invalid_records_are_refused_on_write() {
    let enc = |r: LowRankSparseRecord, shape: &[usize]| {
        encode_record(DType::F32, shape, &Record::LowRankSparse(r), 3)
            .unwrap_err()
            .to_string()
    };
    let base = rank1(LevelCoding::Packed);
    let err = |e: String, want: &str| assert!(e.contains(want), "{e} (want {want:?})");
    err(enc(base.clone(), &[12]), "needs shape [3, 4]");
    err(enc(base.clone(), &[4, 3]), "needs shape [3, 4]");
    err(
        enc(
            LowRankSparseRecord {
                scales: vec![],
                levels: vec![],
                ..base.clone()
            },
            &[3, 4],
        ),
        "rank 0 outside",
    );
    err(
        enc(
            LowRankSparseRecord {
                scales: vec![(1.0, 1.0); 4],
                levels: vec![1; 28],
                ..base.clone()
            },
            &[3, 4],
        ),
        "rank 4 outside",
    );
    for bits in [1, 9] {
        err(
            enc(
                LowRankSparseRecord {
                    factor_bits: bits,
                    ..base.clone()
                },
                &[3, 4],
            ),
            "factor bit width",
        );
    }
    err(
        enc(
            LowRankSparseRecord {
                scales: vec![(f32::INFINITY, 1.0)],
                ..base.clone()
            },
            &[3, 4],
        ),
        "not finite",
    );
    err(
        enc(
            LowRankSparseRecord {
                levels: vec![0, 1, 3, 2, 0, 1, 2],
                ..base.clone()
            },
            &[3, 4],
        ),
        "above 2L = 2",
    );
    err(
        enc(
            LowRankSparseRecord {
                levels: vec![1; 6],
                ..base.clone()
            },
            &[3, 4],
        ),
        "6 factor levels",
    );
    err(
        enc(
            LowRankSparseRecord {
                residual: residual(11, vec![1], LevelCoding::Packed),
                ..base.clone()
            },
            &[3, 4],
        ),
        "residual of 11 entries",
    );
    let golomb = CodedSparseRecord {
        positions: Positions::Golomb(vec![1, 5]),
        ..base.residual.clone()
    };
    err(
        enc(
            LowRankSparseRecord {
                residual: golomb,
                ..base.clone()
            },
            &[3, 4],
        ),
        "seeded positions",
    );
    // A kind-12 residual needs two distinct levels (CodedSparseRecord::into_record stores one as kind 11).
    err(
        enc(
            LowRankSparseRecord {
                residual: residual(12, vec![2, 2], LevelCoding::Rans),
                ..base.clone()
            },
            &[3, 4],
        ),
        "two distinct levels",
    );
    // add_delta_into validates rather than panicking.
    let bad = Record::LowRankSparse(LowRankSparseRecord {
        levels: vec![1; 3],
        ..base
    });
    assert!(bad.delta_to_dense(12, 1.0).is_err());
}

/// Decodes `bytes` with the default limits and returns the error message.
fn refused(bytes: &[u8]) -> String {
    decode_record(bytes, &Limits::default())
        .unwrap_err()
        .to_string()
}

fn assert_refused(bytes: &[u8], want: &str) {
    let e = refused(bytes);
    assert!(e.contains(want), "{e} (want {want:?})");
}

#[test]
fn hostile_fields_are_refused() {
    let good = encode_record(
        DType::F32,
        &[3, 4],
        &Record::LowRankSparse(rank1(LevelCoding::Rans)),
        3,
    )
    .unwrap();
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    // ndim other than 2: the same payload under a 1-D and a 3-D header.
    for shape in [vec![12u64], vec![3, 2, 2]] {
        let mut b = vec![16, DType::F32.code(), shape.len() as u8, 0];
        for d in &shape {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&12u64.to_le_bytes());
        b.extend_from_slice(&good[HDR..]);
        assert_refused(&b, "needs 2 dimensions");
    }
    assert_refused(
        &edit(&|b| b[HDR..HDR + 4].copy_from_slice(&0u32.to_le_bytes())),
        "rank 0 outside 1..=min(3, 4)",
    );
    assert_refused(
        &edit(&|b| b[HDR..HDR + 4].copy_from_slice(&4u32.to_le_bytes())),
        "rank 4 outside 1..=min(3, 4)",
    );
    for bits in [0u8, 1, 9, 255] {
        assert_refused(&edit(&|b| b[HDR + 4] = bits), "factor bit width");
    }
    for x in [f32::NAN, f32::INFINITY] {
        assert_refused(
            &edit(&|b| b[HDR + 9..HDR + 13].copy_from_slice(&x.to_le_bytes())),
            "factor scales[0]",
        );
    }
    // The table's last symbol (2 = 2L at 2 bits) made 3: fits 2 bits, above 2L.
    let last_symbol = HDR + 17 + 4 * 2;
    assert_eq!(&good[last_symbol..last_symbol + 2], &2u16.to_le_bytes());
    assert_refused(
        &edit(&|b| b[last_symbol..last_symbol + 2].copy_from_slice(&3u16.to_le_bytes())),
        "factor level 3 above 2L = 2",
    );
    // Truncated anywhere, or a trailing byte.
    for cut in 0..good.len() {
        assert!(
            decode_record(&good[..cut], &Limits::default()).is_err(),
            "cut {cut}"
        );
    }
    assert!(refused(&edit(&|b| b.truncate(HDR + 20))).contains("needs"));
    let mut long = good.clone();
    long.push(0);
    assert!(decode_record(&long, &Limits::default()).is_err());
    // Residual kind other than 11 or 12.
    let at = residual_kind_at(&good);
    for k in [0u8, 1, 10, 13, 16, 255] {
        assert_refused(
            &edit(&|b| b[at] = k),
            &format!("residual kind {k}, expected 11 (sparse-seeded) or 12"),
        );
    }
    // The residual's kept count above rows·cols.
    assert_refused(
        &edit(&|b| b[at + 1..at + 9].copy_from_slice(&13u64.to_le_bytes())),
        "kept 13 exceeds numel 12",
    );
    // A kind-11 residual declared as kind 12 (and the other way round) does not parse.
    assert!(decode_record(&edit(&|b| b[at] = 11), &Limits::default()).is_err());
}

#[test]
fn the_factor_level_count_is_capped_before_decoding() {
    // 7 factor levels against a limit of 6.
    let good = encode_record(
        DType::F32,
        &[3, 4],
        &Record::LowRankSparse(rank1(LevelCoding::Packed)),
        3,
    )
    .unwrap();
    let tight = Limits {
        max_coded_levels: 6,
        ..Limits::default()
    };
    let e = decode_record(&good, &tight).unwrap_err().to_string();
    assert!(
        e.contains("7 entropy-coded factor levels exceed the limit 6"),
        "{e}"
    );
    assert!(decode_record(
        &good,
        &Limits {
            max_coded_levels: 7,
            ..Limits::default()
        }
    )
    .is_ok());
    // A 37-byte record declaring rank 2^20 of a 2^20 x 2^20 tensor (2^41 factor levels): refused before the
    // scales are even read.
    let mut b = vec![16, DType::F32.code(), 2, 0];
    for v in [1u64 << 20, 1 << 20, 1 << 40] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(1u32 << 20).to_le_bytes());
    b.push(4);
    assert_refused(
        &b,
        "2199023255552 entropy-coded factor levels exceed the limit 1073741824",
    );
}

#[test]
fn hostile_records_never_panic() {
    let mut rng = Rng::new(161);
    for (name, rec) in [
        ("rank1-packed", rank1(LevelCoding::Packed)),
        ("rank2-rans", rank2(LevelCoding::Rans)),
    ] {
        let bytes = encode_record(DType::F32, &[3, 4], &Record::LowRankSparse(rec), 3).unwrap();
        assert_hostile_record_bytes_never_panic(name, &bytes, &mut rng);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn lowrank_sparse_round_trip(
        rows in 1u64..40,
        cols in 1u64..40,
        rank_frac in 0.0f64..1.0,
        bits in 2u8..=8,
        density in 0.0f64..0.5,
        seed in any::<u64>(),
        rans in any::<bool>(),
    ) {
        let mut rng = Rng::new(seed);
        let rank = 1 + ((rows.min(cols) - 1) as f64 * rank_frac) as u64;
        let top = 2 * ((1u64 << (bits - 1)) - 1);
        let levels: Vec<u16> = (0..rank * (rows + cols)).map(|_| (rng.next_u64() % (top + 1)) as u16).collect();
        let scales: Vec<(f32, f32)> = (0..rank).map(|k| (0.01 * (k + 1) as f32, -0.02)).collect();
        let numel = rows * cols;
        let kept = ((numel as f64) * density) as u64;
        let rlevels: Vec<u16> = (0..kept).map(|_| (rng.next_u64() % 4) as u16).collect();
        let Record::Coded(res) = CodedSparseRecord {
            numel,
            quant: SEEDED_Q,
            scale: 0.5,
            positions: Positions::Seeded { seed, trial: 1 },
            levels: rlevels,
            coding: if rans { LevelCoding::Rans } else { LevelCoding::Packed },
        }.into_record() else { unreachable!() };
        let rec = Record::LowRankSparse(LowRankSparseRecord {
            rows, cols, factor_bits: bits, scales, levels, residual: res,
        });
        let shape = [rows as usize, cols as usize];
        let bytes = encode_record(DType::F16, &shape, &rec, 3).unwrap();
        prop_assert_eq!(rec.encoded_len(2, 3).unwrap(), bytes.len() as u64);
        let (h, back) = decode_record(&bytes, &Limits::default()).unwrap();
        prop_assert_eq!(h.kind, RecordKind::LowrankSeededRans);
        prop_assert_eq!(&back, &rec);
        // The formula, entry by entry, against the record's own decoding.
        let Record::LowRankSparse(r) = &rec else { unreachable!() };
        let l = i32::from(r.zero_level());
        let n = (rows + cols) as usize;
        let mut want = vec![0f32; numel as usize];
        for i in 0..rows as usize {
            for j in 0..cols as usize {
                let mut a = 0f32;
                for (k, &(su, sv)) in r.scales.iter().enumerate() {
                    let u = (i32::from(r.levels[k * n + i]) - l) as f32 * su;
                    let v = (i32::from(r.levels[k * n + rows as usize + j]) - l) as f32 * sv;
                    a += u * v;
                }
                want[i * cols as usize + j] = a;
            }
        }
        for (p, v) in r.residual.positions().iter().zip(0..) {
            want[*p as usize] += r.residual.value(v);
        }
        let got = rec.delta_to_dense(numel as usize, 1.0).unwrap();
        prop_assert_eq!(got, want);
    }
}
