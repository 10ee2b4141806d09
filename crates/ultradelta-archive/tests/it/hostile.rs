//! Issue 15's archive classes: declared counts checked against the index before decoding, decoding bounded by
//! the bytes present, one set of limits for writer and reader, non-regular paths. Every hostile size here is
//! refused before anything is allocated from it: none of these tests can allocate more than a few kilobytes.

use serde_json::json;
use ultradelta_archive::{
    decode_record_expecting, encode_record, ArchiveReader, ArchiveWriter, DType, DenseLevelsRecord,
    Error, FinetunedInfo, Limits, Policy, QuantParams, Record, RecordHeader, RecordKind,
    TensorEntry,
};

use crate::common::*;

fn reader(bytes: &[u8]) -> (tempfile::TempDir, ArchiveReader) {
    let dir = tempfile::tempdir().unwrap();
    let p = put(dir.path(), "h.udelta", bytes);
    let r = ArchiveReader::open(&p).unwrap();
    (dir, r)
}

#[test]
fn a_declared_kept_count_other_than_the_index_is_refused_before_decoding() {
    let b = sample_bytes();
    // enc.layer0.attn.q.weight is a kind-1 record of 8 x 16; its payload's kept field follows the header.
    let hdr = 12 + 8 * 2;
    let b = edit_record(&b, "enc.layer0.attn.q.weight", |r| {
        r[hdr..hdr + 8].copy_from_slice(&128u64.to_le_bytes());
    });
    let (_d, r) = reader(&b);
    let err = r.read_record("enc.layer0.attn.q.weight").unwrap_err();
    assert!(matches!(err, Error::CorruptRecord { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("record keeps 128 entries, index says"),
        "{err}"
    );
}

#[test]
fn a_record_header_other_than_the_index_is_refused_before_decoding() {
    let rec = Record::DenseLevels(DenseLevelsRecord {
        quant: QuantParams {
            bits: 4,
            lo: 0.0,
            step: 1.0,
        },
        scale: 1.0,
        levels: vec![1; 12],
    });
    let bytes = encode_record(DType::F32, &[3, 4], &rec, 1).unwrap();
    let want = |shape: Vec<u64>| RecordHeader {
        kind: RecordKind::DenseLevels,
        dtype: DType::F32,
        numel: shape.iter().product(),
        shape,
    };
    assert!(
        decode_record_expecting(&bytes, &Limits::default(), &want(vec![3, 4]), Some(12)).is_ok()
    );
    let err = decode_record_expecting(&bytes, &Limits::default(), &want(vec![4, 3]), Some(12))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("index says dtype F32 shape [4, 3]"),
        "{err}"
    );
}

#[test]
fn zero_bit_dense_levels_are_capped_before_allocation() {
    // A 41-byte record declaring 2^40 zero-bit levels (4 TiB of u16 if decoded).
    let mut rec = vec![RecordKind::DenseLevels.code(), DType::F32.code(), 2, 0];
    rec.extend_from_slice(&(1u64 << 20).to_le_bytes());
    rec.extend_from_slice(&(1u64 << 20).to_le_bytes());
    rec.extend_from_slice(&(1u64 << 40).to_le_bytes());
    rec.push(0);
    for x in [0f32, 1.0, 1.0] {
        rec.extend_from_slice(&x.to_le_bytes());
    }
    let err = ultradelta_archive::decode_record(&rec, &Limits::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("zero-bit levels exceed the limit 1073741824"),
        "{err}"
    );
    // Below the cap it decodes.
    let limits = Limits {
        max_coded_levels: 1 << 50,
        max_numel: 1 << 50,
        ..Limits::default()
    };
    let small = {
        let mut r = rec.clone();
        r[4..12].copy_from_slice(&2u64.to_le_bytes());
        r[12..20].copy_from_slice(&3u64.to_le_bytes());
        r[20..28].copy_from_slice(&6u64.to_le_bytes());
        r
    };
    assert!(ultradelta_archive::decode_record(&small, &limits).is_ok());
}

#[test]
fn a_zstd_entry_larger_than_its_record_can_expand_to_is_refused_at_open() {
    let b = sample_bytes();
    let b = edit_index(&b, |v| {
        for e in v["tensors"].as_array_mut().unwrap() {
            if e["name"] == "head.new.bias" {
                e["shape"] = json!([1u64 << 30]);
                e["numel"] = json!(1u64 << 30);
                e["kept"] = json!(1u64 << 30);
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let err = ArchiveReader::open(put(dir.path(), "h.udelta", &b)).unwrap_err();
    assert!(matches!(err, Error::ShapeInvalid { .. }), "{err}");
    assert!(err.to_string().contains("cannot come from a"), "{err}");
}

#[test]
fn gamma_must_be_finite_in_f32_for_reader_and_writer() {
    let b = edit_index(&sample_bytes(), |v| v["gamma"] = json!(1e39));
    let dir = tempfile::tempdir().unwrap();
    let err = ArchiveReader::open(put(dir.path(), "h.udelta", &b)).unwrap_err();
    assert!(
        err.to_string().contains("not finite in 32-bit floats"),
        "{err}"
    );
    let w = ArchiveWriter::create(dir.path().join("w.udelta"), false).unwrap();
    let err = w
        .finish(
            "m",
            json!({}),
            1e39,
            "0000000000000000",
            FinetunedInfo::default(),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("not finite in 32-bit floats"),
        "{err}"
    );
    assert!(!dir.path().join("w.udelta").exists());
}

#[test]
fn the_writer_refuses_what_the_reader_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.udelta");
    let mut w = ArchiveWriter::create(&p, false).unwrap();
    let nine = TensorEntry::new(
        "nine",
        vec![1, 1, 1, 1, 1, 1, 1, 1, 2],
        DType::F32,
        Policy::New,
    );
    let rec = Record::Full {
        dtype: DType::F32,
        bytes: vec![0; 8],
    };
    let err = w.write_tensor(nine, &rec).unwrap_err();
    assert!(
        err.to_string()
            .contains("9 dimensions (the format's limit is 8)"),
        "{err}"
    );
    let huge = TensorEntry::new("huge", vec![1 << 21, 1 << 20], DType::F32, Policy::Drop);
    let err = w.write_dropped(huge).unwrap_err();
    assert!(
        err.to_string()
            .contains("the format's limit is 1099511627776"),
        "{err}"
    );
    drop(w);
    assert!(!p.exists());
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "no temp file left"
    );
}

#[test]
fn a_fifo_is_refused_without_opening_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.udelta");
    let ok = std::process::Command::new("mkfifo")
        .arg(&p)
        .status()
        .unwrap();
    assert!(ok.success());
    let err = ArchiveReader::open(&p).unwrap_err();
    assert!(
        matches!(err, Error::NotARegularFile { kind: "FIFO", .. }),
        "{err}"
    );
    let err = ArchiveReader::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::NotARegularFile { kind: "folder", .. }),
        "{err}"
    );
}

#[test]
fn leftover_temp_files_of_dead_processes_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    // pids above Linux's pid_max (2^22) never run
    let dead = dir.path().join(".a.udelta.partial-4194400");
    let other = dir.path().join(".b.udelta.partial-4194400");
    std::fs::write(&dead, b"half").unwrap();
    std::fs::write(&other, b"half").unwrap();
    let w = ArchiveWriter::create(dir.path().join("a.udelta"), false).unwrap();
    drop(w);
    assert!(!dead.exists());
    assert!(other.exists(), "another output's leftovers are not touched");
}
