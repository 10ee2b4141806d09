//! One test per error variant, plus truncation and corruption sweeps that must fail cleanly, never panic.

use serde_json::json;
use ultradelta_archive::{
    decode_record, ArchiveReader, ArchiveWriter, Error, FinetunedInfo, Limits, Policy, Record,
    SparseRecord, TensorEntry, PREAMBLE_LEN, TRAILER_LEN,
};
use ultradelta_core::DType;
use ultradelta_core::QuantParams;

use crate::common::*;

/// An edit of the parsed JSON index.
type IndexEdit = Box<dyn Fn(&mut serde_json::Value)>;

fn open_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<ArchiveReader, Error>) {
    let dir = tempfile::tempdir().unwrap();
    let p = put(dir.path(), "t.udelta", bytes);
    let r = ArchiveReader::open(&p);
    (dir, r)
}

/// Opens `bytes`, expects an error, checks it names the file, returns it.
fn open_err(bytes: &[u8]) -> Error {
    let (_dir, r) = open_bytes(bytes);
    let err = r.expect_err("opening should fail");
    let msg = err.to_string();
    assert!(
        msg.contains("t.udelta"),
        "message does not name the file: {msg}"
    );
    assert!(!msg.contains('\n'), "message is not one line: {msg}");
    err
}

#[test]
fn sample_opens_and_verifies() {
    let (_dir, r) = open_bytes(&sample_bytes());
    r.unwrap().verify().unwrap();
}

#[test]
fn io_error_for_missing_file() {
    let err = ArchiveReader::open("/nonexistent/dir/x.udelta").unwrap_err();
    assert!(matches!(err, Error::Io { op: "open", .. }), "{err}");
}

#[test]
fn bad_magic() {
    let mut b = sample_bytes();
    b[1] = b'X';
    let err = open_err(&b);
    assert!(matches!(err, Error::BadMagic { .. }), "{err}");
}

#[test]
fn unsupported_version() {
    let mut b = sample_bytes();
    for v in [0u32, 3] {
        b[8..12].copy_from_slice(&v.to_le_bytes());
        let err = open_err(&b);
        assert!(
            matches!(
                err,
                Error::UnsupportedVersion {
                    found,
                    supported: 2,
                    ..
                } if found == v
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("version {v}")), "{err}");
    }
}

#[test]
fn unsupported_flags() {
    let mut b = sample_bytes();
    // Bit 0 (compressed index) is known; bit 1 is not.
    b[12..16].copy_from_slice(&3u32.to_le_bytes());
    let err = open_err(&b);
    assert!(
        matches!(
            err,
            Error::UnsupportedFlags {
                found: 3,
                known: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_small_files() {
    let b = sample_bytes();
    for (len, what) in [
        (0, "magic"),
        (7, "magic"),
        (12, "preamble"),
        (40, "preamble and trailer"),
    ] {
        let err = open_err(&b[..len]);
        match err {
            Error::Truncated { what: w, size, .. } => {
                assert_eq!(w, what);
                assert_eq!(size, len as u64);
            }
            other => panic!("length {len}: {other}"),
        }
    }
}

#[test]
fn truncation_sweep_fails_cleanly_at_every_length() {
    let b = sample_bytes();
    let dir = tempfile::tempdir().unwrap();
    let p = put(dir.path(), "t.udelta", &b);
    // Shrink one file step by step (rewriting a truncated file each time is slow on ext4).
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    for len in (0..b.len()).rev() {
        f.set_len(len as u64).unwrap();
        assert!(
            ArchiveReader::open(&p).is_err(),
            "prefix of {len} bytes opened"
        );
    }
    // And with garbage appended.
    let mut longer = b.clone();
    longer.extend_from_slice(&[0u8; 5]);
    let p = put(dir.path(), "t.udelta", &longer);
    assert!(ArchiveReader::open(&p).is_err());
}

#[test]
fn bad_trailer() {
    let mut b = sample_bytes();
    let n = b.len();
    b[n - 1] ^= 0xFF;
    let err = open_err(&b);
    assert!(matches!(err, Error::BadTrailer { .. }), "{err}");
}

#[test]
fn index_too_large() {
    let b = sample_bytes();
    let dir = tempfile::tempdir().unwrap();
    let p = put(dir.path(), "t.udelta", &b);
    let limits = Limits {
        max_index_bytes: 100,
        ..Limits::default()
    };
    let err = ArchiveReader::open_with_limits(&p, limits).unwrap_err();
    assert!(
        matches!(err, Error::IndexTooLarge { limit: 100, .. }),
        "{err}"
    );
    // A hostile length of 2^64 - 1 with default limits: refused before any allocation.
    let mut b = b;
    let t = b.len() - TRAILER_LEN as usize;
    b[t + 8..t + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = open_err(&b);
    assert!(matches!(err, Error::IndexTooLarge { .. }), "{err}");
}

#[test]
fn index_out_of_range() {
    let b = sample_bytes();
    let t = b.len() - TRAILER_LEN as usize;
    for offset in [0u64, 15, 17 + b.len() as u64, u64::MAX - 3] {
        let mut c = b.clone();
        c[t..t + 8].copy_from_slice(&offset.to_le_bytes());
        let err = open_err(&c);
        assert!(
            matches!(err, Error::IndexOutOfRange { .. }),
            "offset {offset}: {err}"
        );
    }
    // Length off by one.
    let mut c = b.clone();
    let len = u64::from_le_bytes(c[t + 8..t + 16].try_into().unwrap());
    c[t + 8..t + 16].copy_from_slice(&(len - 1).to_le_bytes());
    assert!(matches!(open_err(&c), Error::IndexOutOfRange { .. }));
}

/// A record changed and its xxh3 and the index hash fixed (what a tamperer, or a tool unaware of version 2, would
/// do) opens and decodes, but `verify` refuses it: the content no longer hashes to the trailer's SHA-256. The
/// digest's own bytes changed alone are refused the same way.
#[test]
fn content_sha256_mismatch() {
    let b = sample_bytes();
    let name = "enc.layer0.attn.q.weight";
    let mut edited = edit_record(&b, name, |r| {
        let last = r.len() - 1;
        r[last] ^= 0x01;
    });
    // edit_record reseals the SHA-256 too; put the original digest back, as a tamperer without it would leave it.
    let n = edited.len();
    edited[n - 40..n - 8].copy_from_slice(&b[b.len() - 40..b.len() - 8]);
    let (_dir, r) = open_bytes(&edited);
    let r = r.expect("the index and the record checksums are consistent");
    let err = r.verify().unwrap_err();
    assert!(matches!(err, Error::ContentSha256 { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("t.udelta") && !msg.contains('\n'), "{msg}");
    let mut flipped = b.clone();
    let n = flipped.len();
    flipped[n - 20] ^= 0x80;
    let (_dir, r) = open_bytes(&flipped);
    let err = r.unwrap().check_content_sha256().unwrap_err();
    assert!(matches!(err, Error::ContentSha256 { .. }), "{err}");
    // Untouched: the stored digest is the content's.
    let (_dir, r) = open_bytes(&b);
    let r = r.unwrap();
    assert_eq!(r.check_content_sha256().unwrap(), r.content_sha256_hex());
    assert!(r.content_sha256_hex().is_some());
}

#[test]
fn index_checksum_mismatch() {
    let mut b = sample_bytes();
    let (off, len) = index_range(&b);
    // Change a digit inside the JSON without touching the trailer.
    let pos = off + b[off..off + len].iter().position(|&c| c == b'1').unwrap();
    b[pos] = b'2';
    let err = open_err(&b);
    assert!(matches!(err, Error::IndexChecksum { .. }), "{err}");
}

#[test]
fn index_parse_error() {
    let b = sample_bytes();
    for bad in [
        &b"{not json"[..],
        b"[]",
        b"{}",
        br#"{"format_version": "one"}"#,
    ] {
        let err = open_err(&with_index_bytes(&b, bad));
        assert!(matches!(err, Error::IndexParse { .. }), "{err}");
    }
    // Unknown dtype name.
    let c = edit_index(&b, |v| v["tensors"][0]["dtype"] = json!("F8"));
    assert!(matches!(open_err(&c), Error::IndexParse { .. }));
}

/// A compressed index (preamble flag bit 0) that is not exactly one zstd frame declaring a size within the limits
/// and what its bytes can hold, or that does not decode to that size, is refused with one line naming the file;
/// nothing sized from the frame is allocated before those checks.
#[test]
fn compressed_index_must_be_one_bounded_frame() {
    let b = sample_bytes();
    assert_eq!(flags_of(&b), 1);
    let json = index_plain(&b);
    let frame = ultradelta_archive::compress_index(&json, 3).unwrap();
    let parse = |stored: &[u8], want: &str| {
        let err = open_err(&with_stored_index(&b, stored));
        let msg = err.to_string();
        assert!(matches!(err, Error::IndexParse { .. }), "{msg}");
        assert!(
            msg.contains("compressed index") && msg.contains(want),
            "want {want:?}: {msg}"
        );
    };
    parse(&json, "is not a zstd frame");
    parse(b"", "is not a zstd frame");
    parse(&frame[..frame.len() - 1], "is not a zstd frame");
    parse(
        &[frame.clone(), frame.clone()].concat(),
        "is not one zstd frame",
    );
    // A streamed frame does not declare its size.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_contentsize(false).unwrap();
    std::io::Write::write_all(&mut enc, &json).unwrap();
    parse(
        &enc.finish().unwrap(),
        "does not declare its decompressed size",
    );
    // The same frame re-headed to declare `size` bytes (8-byte content-size field, single segment).
    let redeclare = |size: u64| {
        let fhd = frame[4];
        assert_eq!(fhd & 0x20, 0x20, "bulk frames are single-segment");
        let fcs_len = [1usize, 2, 4, 8][(fhd >> 6) as usize];
        let mut out = frame[..4].to_vec();
        out.push((fhd & 0x3F) | 0xC0);
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&frame[5 + fcs_len..]);
        out
    };
    // The unchanged frame re-headed with its own size still opens (the surgery is sound).
    let dir = tempfile::tempdir().unwrap();
    let p = put(
        dir.path(),
        "t.udelta",
        &with_stored_index(&b, &redeclare(json.len() as u64)),
    );
    ArchiveReader::open(&p).unwrap();
    let most = redeclare(0).len() as u64 * ultradelta_archive::MAX_ZSTD_EXPANSION;
    parse(&redeclare(most + 1), "more than its");
    parse(&redeclare(json.len() as u64 + 1), "does not decode");
    parse(&redeclare(json.len() as u64 - 1), "does not decode");
    // Over the index limit (the stored bytes are within it): the decompressed size is what is limited.
    let p = put(dir.path(), "t.udelta", &b);
    let limits = Limits {
        max_index_bytes: json.len() as u64 - 1,
        ..Limits::default()
    };
    assert!((frame.len() as u64) < limits.max_index_bytes);
    let err = ArchiveReader::open_with_limits(&p, limits).unwrap_err();
    assert!(matches!(err, Error::IndexTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("t.udelta"), "{err}");
}

#[test]
fn index_invalid() {
    let b = sample_bytes();
    let cases: Vec<IndexEdit> = vec![
        Box::new(|v| v["format_version"] = json!(1)),
        Box::new(|v| v["format_version"] = json!(3)),
        Box::new(|v| v["tensors"][1]["name"] = v["tensors"][0]["name"].clone()),
        Box::new(|v| v["tensors"][0]["name"] = json!("")),
        Box::new(|v| v["tensors"][0]["kind"] = json!("lz4")),
        Box::new(|v| v["tensors"][0]["kind"] = json!("file-zstd")),
        Box::new(|v| v["tensors"][0]["checksum"] = json!("XYZ")),
        Box::new(|v| v["files"][0]["name"] = json!("../etc/passwd")),
        // Issue 17: companion names may hold subfolders, never an escape from the output folder.
        Box::new(|v| v["files"][0]["name"] = json!("/etc/passwd")),
        Box::new(|v| v["files"][0]["name"] = json!("1_Pooling/../../x")),
        Box::new(|v| v["files"][0]["name"] = json!("1_Pooling/./config.json")),
        Box::new(|v| v["files"][0]["name"] = json!("1_Pooling//config.json")),
        Box::new(|v| v["files"][0]["name"] = json!("1_Pooling/")),
        Box::new(|v| v["files"][0]["name"] = json!("1_Pooling\\..\\x")),
        Box::new(|v| v["files"][0]["name"] = json!("a\u{0}b")),
        Box::new(|v| v["files"][0]["name"] = json!("x".repeat(4097))),
        // "config.json" and "config.json/x": one path would be a file and a folder.
        Box::new(|v| v["files"][1]["name"] = json!("config.json/x")),
        Box::new(|v| v["files"][1]["name"] = v["files"][0]["name"].clone()),
        Box::new(|v| v["files"][0]["size"] = json!(1u64 << 40)),
        Box::new(|v| {
            let dropped = v["tensors"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|e| e["kind"] == "none")
                .unwrap();
            dropped["offset"] = json!(16);
        }),
    ];
    for (i, edit) in cases.iter().enumerate() {
        let err = open_err(&edit_index(&b, edit));
        assert!(matches!(err, Error::IndexInvalid { .. }), "case {i}: {err}");
    }
}

#[test]
fn shape_invalid() {
    let b = sample_bytes();
    let cases: Vec<IndexEdit> = vec![
        Box::new(|v| v["tensors"][0]["shape"] = json!([1, 1, 1, 1, 1, 1, 1, 1, 128])),
        Box::new(|v| v["tensors"][0]["numel"] = json!(129)),
        Box::new(|v| v["tensors"][0]["shape"] = json!([1u64 << 32, 1u64 << 32, 1u64 << 32])),
        Box::new(|v| {
            v["tensors"][0]["shape"] = json!([1u64 << 41]);
            v["tensors"][0]["numel"] = json!(1u64 << 41);
        }),
        Box::new(|v| v["tensors"][0]["kept"] = json!(129)),
    ];
    for (i, edit) in cases.iter().enumerate() {
        let err = open_err(&edit_index(&b, edit));
        assert!(matches!(err, Error::ShapeInvalid { .. }), "case {i}: {err}");
        assert!(
            err.to_string().contains("enc.layer0.attn.q.weight"),
            "{err}"
        );
    }
}

#[test]
fn entry_out_of_range() {
    let b = sample_bytes();
    let (index_off, _) = index_range(&b);
    let cases: Vec<(u64, u64)> = vec![
        (0, 10),
        (PREAMBLE_LEN - 1, 10),
        (index_off as u64 - 5, 10),
        (u64::MAX - 1, 10),
        (PREAMBLE_LEN, 0),
    ];
    for (offset, length) in cases {
        let c = edit_index(&b, |v| {
            v["tensors"][0]["offset"] = json!(offset);
            v["tensors"][0]["length"] = json!(length);
        });
        let err = open_err(&c);
        assert!(
            matches!(err, Error::EntryOutOfRange { .. }),
            "({offset}, {length}): {err}"
        );
    }
    let c = edit_index(&b, |v| v["files"][0]["length"] = json!(1u64 << 50));
    assert!(matches!(open_err(&c), Error::EntryOutOfRange { .. }));
}

#[test]
fn entries_overlap() {
    let b = sample_bytes();
    let c = edit_index(&b, |v| {
        let off = v["tensors"][0]["offset"].as_u64().unwrap();
        v["tensors"][1]["offset"] = json!(off + 1);
    });
    let err = open_err(&c);
    assert!(matches!(err, Error::EntryOverlap { .. }), "{err}");
    // A file record overlapping a tensor record.
    let c = edit_index(&b, |v| {
        v["files"][0]["offset"] = v["tensors"][2]["offset"].clone()
    });
    assert!(matches!(open_err(&c), Error::EntryOverlap { .. }));
}

#[test]
fn record_checksum_mismatch() {
    let mut b = sample_bytes();
    let (off, len) = record_range(&b, "enc.layer0.norm.weight");
    b[off + len - 1] ^= 1;
    let (_dir, r) = open_bytes(&b);
    let r = r.unwrap();
    let err = r.read_record("enc.layer0.norm.weight").unwrap_err();
    assert!(matches!(err, Error::RecordChecksum { .. }), "{err}");
    assert!(err.to_string().contains("enc.layer0.norm.weight"), "{err}");
    // Other records are unaffected.
    r.read_record("enc.layer0.attn.q.weight").unwrap();
    assert!(r.verify().is_err());
}

fn corrupt_q(edit: impl FnOnce(&mut [u8])) -> Error {
    let name = "enc.layer0.attn.q.weight";
    let b = edit_record(&sample_bytes(), name, edit);
    let (_dir, r) = open_bytes(&b);
    let err = r.unwrap().read_record(name).unwrap_err();
    assert!(matches!(err, Error::CorruptRecord { .. }), "{err}");
    assert!(err.to_string().contains(name), "{err}");
    err
}

/// Offsets inside the q record: common header is 12 + 8 * 2 = 28 bytes.
const Q_PAYLOAD: usize = 28;

#[test]
fn corrupt_record_hostile_golomb_stream() {
    // Positions stream all ones: the unary run must be capped, not followed.
    let err = corrupt_q(|r| {
        let pos_len =
            u64::from_le_bytes(r[Q_PAYLOAD + 37..Q_PAYLOAD + 45].try_into().unwrap()) as usize;
        for b in &mut r[Q_PAYLOAD + 53..Q_PAYLOAD + 53 + pos_len - 1] {
            *b = 0xFF;
        }
    });
    assert!(err.to_string().contains("golomb"), "{err}");
    // m = 0 and m > numel.
    for m in [0u64, 129] {
        let err =
            corrupt_q(|r| r[Q_PAYLOAD + 21..Q_PAYLOAD + 29].copy_from_slice(&m.to_le_bytes()));
        assert!(err.to_string().contains("parameter"), "{err}");
    }
}

#[test]
fn corrupt_record_bad_lengths_and_values() {
    // kept larger than numel.
    corrupt_q(|r| r[Q_PAYLOAD..Q_PAYLOAD + 8].copy_from_slice(&1000u64.to_le_bytes()));
    // bits above 16.
    corrupt_q(|r| r[Q_PAYLOAD + 8] = 17);
    // NaN scale.
    corrupt_q(|r| r[Q_PAYLOAD + 17..Q_PAYLOAD + 21].copy_from_slice(&f32::NAN.to_le_bytes()));
    // Positions bit length inconsistent with its byte length.
    corrupt_q(|r| r[Q_PAYLOAD + 29..Q_PAYLOAD + 37].copy_from_slice(&u64::MAX.to_le_bytes()));
    // Levels length larger than the bytes present.
    corrupt_q(|r| r[Q_PAYLOAD + 45..Q_PAYLOAD + 53].copy_from_slice(&(1u64 << 60).to_le_bytes()));
    // Header dtype changed: disagrees with the index.
    let err = corrupt_q(|r| r[1] = 2);
    assert!(err.to_string().contains("dtype"), "{err}");
    // Unknown record kind.
    corrupt_q(|r| r[0] = 9);
    // Non-zero reserved byte.
    corrupt_q(|r| r[3] = 1);
}

#[test]
fn corruption_sweep_of_records_never_panics() {
    // Flip every bit of every record and decode it directly (no checksum to hide behind).
    let b = sample_bytes();
    let v = index_json(&b);
    let limits = Limits::default();
    let mut failures = 0usize;
    for e in v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .chain(v["files"].as_array().unwrap())
    {
        let off = e["offset"].as_u64().unwrap() as usize;
        let len = e["length"].as_u64().unwrap() as usize;
        if len == 0 {
            continue;
        }
        let rec = &b[off..off + len];
        decode_record(rec, &limits).unwrap();
        for i in 0..len {
            for bit in 0..8 {
                let mut m = rec.to_vec();
                m[i] ^= 1 << bit;
                if decode_record(&m, &limits).is_err() {
                    failures += 1;
                }
            }
        }
        // And every truncation.
        for l in 0..len {
            assert!(
                decode_record(&rec[..l], &limits).is_err(),
                "record prefix {l} decoded"
            );
        }
    }
    assert!(failures > 0);
}

#[test]
fn unknown_tensor_and_file() {
    let (_dir, r) = open_bytes(&sample_bytes());
    let r = r.unwrap();
    let err = r.read_record("nope").unwrap_err();
    assert!(matches!(err, Error::UnknownTensor { .. }), "{err}");
    assert!(err.to_string().contains("\"nope\""));
    let err = r.read_file("nope.json").unwrap_err();
    assert!(matches!(err, Error::UnknownFile { .. }), "{err}");
    assert!(r.entry("nope").is_none());
}

#[test]
fn dropped_tensor_is_not_stored() {
    let (_dir, r) = open_bytes(&sample_bytes());
    let r = r.unwrap();
    let e = r.entry("enc.layer0.attn.k.weight").unwrap();
    assert_eq!(
        (e.policy, e.kind.as_str(), e.kept, e.sparsity),
        (Policy::Drop, "none", 0, 1.0)
    );
    let err = r.read_record("enc.layer0.attn.k.weight").unwrap_err();
    assert!(matches!(err, Error::NotStored { .. }), "{err}");
}

#[test]
fn output_exists() {
    let dir = tempfile::tempdir().unwrap();
    let p = put(dir.path(), "out.udelta", b"precious");
    let err = ArchiveWriter::create(&p, false).unwrap_err();
    assert!(matches!(err, Error::OutputExists { .. }), "{err}");
    assert!(err.to_string().contains("out.udelta"));
    assert_eq!(std::fs::read(&p).unwrap(), b"precious");
    // With overwrite: replaced.
    let w = ArchiveWriter::create(&p, true).unwrap();
    w.finish("m", json!(null), 1.0, "", FinetunedInfo::default())
        .unwrap();
    ArchiveReader::open(&p).unwrap();
}

#[test]
fn output_appearing_before_finish_is_not_clobbered() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("race.udelta");
    let w = ArchiveWriter::create(&p, false).unwrap();
    std::fs::write(&p, b"someone else").unwrap();
    let err = w
        .finish("m", json!(null), 1.0, "", FinetunedInfo::default())
        .unwrap_err();
    assert!(matches!(err, Error::OutputExists { .. }), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), b"someone else");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "temp file left behind: {names:?}");
}

#[test]
fn drop_without_finish_removes_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.udelta");
    {
        let mut w = ArchiveWriter::create(&p, false).unwrap();
        w.add_file("config.json", b"{}").unwrap();
        let listing: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            listing,
            [format!(".a.udelta.partial-{}", std::process::id())]
        );
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert!(!p.exists());
}

#[test]
fn invalid_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = ArchiveWriter::create(dir.path(), true).unwrap_err();
    assert!(matches!(err, Error::InvalidPath { .. }), "{err}");
    let err =
        ArchiveWriter::create(dir.path().join("missing-dir").join("x.udelta"), false).unwrap_err();
    assert!(matches!(err, Error::Io { op: "create", .. }), "{err}");
}

#[test]
fn duplicate_names_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ArchiveWriter::create(dir.path().join("d.udelta"), false).unwrap();
    let e = TensorEntry::new("t", vec![2], DType::F32, Policy::Drop);
    w.write_dropped(e.clone()).unwrap();
    let err = w.write_dropped(e).unwrap_err();
    assert!(matches!(err, Error::DuplicateName { .. }), "{err}");
    w.add_file("a.txt", b"x").unwrap();
    assert!(matches!(
        w.add_file("a.txt", b"y").unwrap_err(),
        Error::DuplicateName { .. }
    ));
}

#[test]
fn invalid_input_refused_by_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ArchiveWriter::create(dir.path().join("i.udelta"), false).unwrap();
    let sparse = |positions: Vec<u64>, levels: Vec<u16>, bits: u8, scale: f32| {
        Record::Sparse(SparseRecord {
            numel: 10,
            quant: QuantParams {
                bits,
                lo: 0.0,
                step: 1.0,
            },
            scale,
            positions,
            levels,
        })
    };
    let entry = || TensorEntry::new("t", vec![10], DType::F32, Policy::Compress);
    let bad = [
        sparse(vec![3, 2], vec![0, 0], 4, 1.0),
        sparse(vec![10], vec![0], 4, 1.0),
        sparse(vec![1], vec![16], 4, 1.0),
        sparse(vec![1], vec![1], 0, 1.0),
        sparse(vec![1, 2], vec![1], 4, 1.0),
        sparse(vec![1], vec![1], 17, 1.0),
        sparse(vec![1], vec![1], 4, f32::INFINITY),
        Record::XorDelta {
            dtype: DType::F16,
            xor_bytes: vec![0; 20],
        },
        Record::Full {
            dtype: DType::F32,
            bytes: vec![0; 39],
        },
    ];
    for (i, r) in bad.iter().enumerate() {
        let err = w.write_tensor(entry(), r).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "case {i}: {err}");
        assert!(err.to_string().contains("\"t\""), "{err}");
    }
    // Shape and record numel disagree.
    let mut e = entry();
    e.shape = vec![11];
    assert!(w
        .write_tensor(e, &sparse(vec![1], vec![1], 4, 1.0))
        .is_err());
    // Bad companion file names (issue 17: relative paths with subfolders are fine, escapes are not).
    for name in [
        "", ".", "..", "a\\b", "/a", "a/", "a//b", "a/../b", "../a", "a/./b", "a/..",
    ] {
        assert!(matches!(
            w.add_file(name, b"").unwrap_err(),
            Error::InvalidInput { .. }
        ));
    }
    // Nothing bad was written: the archive still finishes and verifies, with no tensors.
    let p = w.finish("m", json!({}), 1.0, "", FinetunedInfo::default());
    assert!(p.is_ok());
    let r = ArchiveReader::open(p.unwrap()).unwrap();
    assert!(r.manifest().tensors.is_empty());
    r.verify().unwrap();
}

#[test]
fn non_finite_gamma_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.udelta");
    let w = ArchiveWriter::create(&p, false).unwrap();
    let err = w
        .finish("m", json!({}), f64::NAN, "", FinetunedInfo::default())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(!p.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Issue 17: companion files in subfolders (`1_Pooling/config.json`) are stored under their relative path and read
/// back; a name that would be both a file and a folder is refused by the writer.
#[test]
fn issue_17_companion_paths_with_subfolders() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.udelta");
    let mut w = ArchiveWriter::create(&p, false).unwrap();
    w.add_file("config.json", b"{}").unwrap();
    w.add_file(
        "1_Pooling/config.json",
        b"{\"pooling_mode_mean_tokens\": true}",
    )
    .unwrap();
    w.add_file("a/b/c/d.txt", b"deep").unwrap();
    for clash in ["config.json/x", "a/b", "a"] {
        let e = w.add_file(clash, b"").unwrap_err();
        assert!(
            matches!(e, Error::InvalidInput { .. }) && e.to_string().contains("folder"),
            "{clash}: {e}"
        );
    }
    let p = w
        .finish("m", json!({}), 1.0, "", FinetunedInfo::default())
        .unwrap();
    let r = ArchiveReader::open(&p).unwrap();
    let names: Vec<&str> = r.manifest().files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["config.json", "1_Pooling/config.json", "a/b/c/d.txt"]
    );
    assert_eq!(
        r.read_file("1_Pooling/config.json").unwrap(),
        b"{\"pooling_mode_mean_tokens\": true}"
    );
    r.verify().unwrap();
}
