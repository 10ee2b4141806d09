//! Archives written by released format versions stay in `tests/data/` and must keep decoding to the same values.
//!
//! `tests/data/v1-small.udelta` was written by `write_sample` (tests/it/common.rs) with format version 1; the writer
//! now writes version 2, so it can no longer be regenerated (nor should it be: it is what version-1 writers made).
//! `tests/data/v2-small.udelta` is the same sample written with format version 2 (the content SHA-256 in the
//! trailer). Regenerate it only when the fixture itself must change (never for a format change: add a new file for
//! a new version): `cargo test -p ultradelta-archive --test it -- --ignored regenerate_v2_fixture`.
//! `tests/data/v2-index-zstd.udelta` is the same sample with the compressed index of 2026-12-04 (preamble flag
//! `FLAG_INDEX_ZSTD`), made by `write_sample` with today's defaults
//! (`cargo test -p ultradelta-archive --test it -- --ignored regenerate_index_zstd_fixture`).

use std::path::PathBuf;

use ultradelta_archive::{ArchiveReader, Policy, Record};
use xxhash_rust::xxh3::xxh3_64;

use crate::common::{sample_files, sample_tensors, write_sample, write_sample_with};

fn fixture() -> PathBuf {
    data("v1-small.udelta")
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")).join(name)
}

#[test]
#[ignore = "rewrites the committed fixture"]
fn regenerate_v2_fixture() {
    write_sample_with(&data("v2-small.udelta"), false);
}

#[test]
#[ignore = "rewrites the committed fixture"]
fn regenerate_index_zstd_fixture() {
    write_sample(&data("v2-index-zstd.udelta"));
}

/// The archive with the compressed index decodes to the same index and records as the plain one, is what today's
/// writer writes byte for byte, and its index is smaller.
#[test]
fn index_zstd_fixture_decodes_like_the_plain_one() {
    let z = ArchiveReader::open(data("v2-index-zstd.udelta")).expect("committed fixture must open");
    let plain = ArchiveReader::open(data("v2-small.udelta")).unwrap();
    z.verify().unwrap();
    z.check_content_sha256().unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(z.manifest()).unwrap(),
        serde_json::to_value(plain.manifest()).unwrap()
    );
    for e in &plain.manifest().tensors {
        if e.kind != "none" {
            assert_eq!(
                z.read_record(&e.name).unwrap(),
                plain.read_record(&e.name).unwrap()
            );
        }
    }
    for f in &plain.manifest().files {
        assert_eq!(
            z.read_file(&f.name).unwrap(),
            plain.read_file(&f.name).unwrap()
        );
    }
    let bytes = std::fs::read(data("v2-index-zstd.udelta")).unwrap();
    let plain_bytes = std::fs::read(data("v2-small.udelta")).unwrap();
    assert_eq!(bytes[12..16], [1, 0, 0, 0]);
    let (_, zl) = crate::common::index_range(&bytes);
    let (_, pl) = crate::common::index_range(&plain_bytes);
    assert!(zl * 2 < pl, "compressed index {zl} bytes, plain {pl}");
    let dir = tempfile::tempdir().unwrap();
    let fresh = std::fs::read(write_sample(&dir.path().join("z.udelta"))).unwrap();
    assert!(
        fresh == bytes,
        "write_sample no longer writes v2-index-zstd.udelta's bytes"
    );
}

/// The SHA-256 of `v2-small.udelta`'s content, pinned as a literal (also what `inspect` and `verify` print).
const V2_SMALL_SHA256: &str = "a204eb404310af8727f01b0e63dbd5bb5ce05a931298cb52eb290b3f78d5d03f";

#[test]
fn v2_fixture_decodes_and_its_content_sha256_checks() {
    let r = ArchiveReader::open(data("v2-small.udelta")).expect("committed v2 fixture must open");
    assert_eq!(r.format_version(), 2);
    assert_eq!(r.manifest().format_version, 2);
    assert_eq!(r.content_sha256_hex().as_deref(), Some(V2_SMALL_SHA256));
    assert_eq!(
        r.check_content_sha256().unwrap().as_deref(),
        Some(V2_SMALL_SHA256)
    );
    r.verify().unwrap();
    // The digest covers every byte before it: the whole file minus its last 40 bytes.
    let bytes = std::fs::read(data("v2-small.udelta")).unwrap();
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(&bytes[..bytes.len() - 40]);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, V2_SMALL_SHA256);
    // Same values as the version-1 fixture: only the trailer and the version differ.
    let v1 = ArchiveReader::open(fixture()).unwrap();
    for e in &v1.manifest().tensors {
        if e.kind != "none" {
            assert_eq!(
                r.read_record(&e.name).unwrap(),
                v1.read_record(&e.name).unwrap()
            );
        }
    }
    // And it still matches the helper that made it, byte for byte.
    let dir = tempfile::tempdir().unwrap();
    let fresh = std::fs::read(write_sample_with(&dir.path().join("s.udelta"), false)).unwrap();
    assert_eq!(
        fresh, bytes,
        "write_sample no longer writes v2-small.udelta's bytes"
    );
}

#[test]
fn v1_fixture_has_no_content_sha256() {
    let r = ArchiveReader::open(fixture()).unwrap();
    assert_eq!(r.format_version(), 1);
    assert_eq!(r.content_sha256(), None);
    assert_eq!(r.check_content_sha256().unwrap(), None);
}

/// xxh3-64 of a decoded record's values (sparse: dense f32 LE bytes with gamma 1; lossless: raw bytes).
fn value_hash(r: &Record) -> u64 {
    match r {
        Record::Sparse(s) => xxh3_64(
            &s.to_dense(1.0)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
        Record::XorDelta { xor_bytes, .. } => xxh3_64(xor_bytes),
        Record::Full { bytes, .. } => xxh3_64(bytes),
        other => panic!("the v1-small fixture has no {:?} record", other.kind()),
    }
}

#[test]
fn v1_fixture_still_decodes() {
    let r = ArchiveReader::open(fixture()).expect("committed v1 fixture must open");
    r.verify().unwrap();
    let m = r.manifest();
    assert_eq!(m.format_version, 1);
    assert_eq!(m.method, "ultradelta");
    assert_eq!(m.gamma, 0.875);
    assert_eq!(m.base_fingerprint, "0123456789abcdef");
    assert_eq!(m.params["seed"], 42);
    assert_eq!(m.finetuned.size_on_disk, 12345);
    assert_eq!(m.tensors.len(), 6);
    assert_eq!(m.files.len(), 2);

    // Known values, pinned as literals so they cannot follow a change of the fixture helper.
    let q = match r.read_record("enc.layer0.attn.q.weight").unwrap() {
        Record::Sparse(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(q.numel, 128);
    assert_eq!(q.positions.len(), 26);
    assert_eq!(q.positions[..5], [0, 5, 10, 15, 20]);
    assert_eq!(q.levels[..5], [0, 3, 6, 9, 12]);
    let dense = q.to_dense(1.0);
    assert_eq!(dense[5], (-0.5 + 3.0 * 0.0625) * 2.0);
    assert_eq!(dense[1], 0.0);
    match r.read_record("head.new.bias").unwrap() {
        Record::Full { bytes, .. } => {
            let v: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(v, [1.0, -2.5, 3.25]);
        }
        other => panic!("{other:?}"),
    }
    match r.read_record("scalar").unwrap() {
        Record::Sparse(s) => assert_eq!(s.to_dense(1.0), [2.5]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        r.entry("enc.layer0.attn.k.weight").unwrap().policy,
        Policy::Drop
    );
    assert_eq!(
        &r.read_file("config.json").unwrap()[..15],
        br#"{"model_type": "#
    );

    let hashes: Vec<(String, u64)> = m
        .tensors
        .iter()
        .filter(|e| e.kind != "none")
        .map(|e| (e.name.clone(), value_hash(&r.read_record(&e.name).unwrap())))
        .collect();
    let pinned: [(&str, u64); 5] = PINNED_VALUE_HASHES;
    for ((name, h), (pname, ph)) in hashes.iter().zip(pinned) {
        assert_eq!(name, pname);
        assert_eq!(*h, ph, "decoded values of {name} changed: {h:#018x}");
    }
    assert_eq!(hashes.len(), pinned.len());

    // And the fixture still matches the helper that made it.
    for t in sample_tensors() {
        if let Some(rec) = t.record {
            assert_eq!(r.read_record(&t.entry.name).unwrap(), rec);
        }
    }
    for (name, bytes) in sample_files() {
        assert_eq!(r.read_file(name).unwrap(), bytes);
    }
}

const PINNED_VALUE_HASHES: [(&str, u64); 5] = [
    ("enc.layer0.attn.q.weight", 0xc49f_7244_aa2f_0c85),
    ("enc.layer0.mlp.const.weight", 0x37b3_4778_d5d8_6621),
    ("enc.layer0.norm.weight", 0x46ad_4d4a_c785_cbbf),
    ("head.new.bias", 0x39bc_0532_4ab2_0741),
    ("scalar", 0x02bb_e3a8_1888_277b),
];
