//! Kind 13, `file-zstd-base`: companion files stored against the base model's file of the same name
//! (docs/FORMAT.md, "Kind 13"). They cost a few dozen bytes when the fine-tune's file is the base's, read back only
//! with the exact base file, and every hostile variant fails cleanly.

use serde_json::json;
use ultradelta_archive::{
    companion_zstd_level, decode_record, encode_file_record, encode_file_record_against,
    ArchiveReader, ArchiveWriter, BaseFileRef, Error, FinetunedInfo, Limits,
};
use xxhash_rust::xxh3::xxh3_64;

use crate::common::*;

/// A tokenizer-like file: a few thousand distinct lines that a general-purpose compressor cannot shrink much.
fn vocab(rng: &mut Rng, lines: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..lines {
        let r = rng.next_u64();
        out.extend_from_slice(format!("\"tok{i}_{r:x}\": {i},\n").as_bytes());
    }
    out
}

/// Lines that share nothing with [`vocab`]'s.
fn unrelated(rng: &mut Rng, lines: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..lines {
        out.extend_from_slice(
            format!("{:016x}{:016x}\n", rng.next_u64(), rng.next_u64()).as_bytes(),
        );
    }
    out
}

/// A companion file to write: name, bytes, and the base's file to store it against.
type FileSpec<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

/// Writes an archive with `files` and returns its bytes and path.
fn write(dir: &std::path::Path, files: &[FileSpec<'_>]) -> (Vec<u8>, std::path::PathBuf) {
    let p = dir.join("b.udelta");
    let mut w = ArchiveWriter::create(&p, true).unwrap();
    for (name, bytes, base) in files {
        w.add_file_against(name, bytes, *base).unwrap();
    }
    let p = w
        .finish("m", json!({}), 1.0, "", FinetunedInfo::default())
        .unwrap();
    (std::fs::read(&p).unwrap(), p)
}

#[test]
fn identical_and_edited_files_cost_little_and_read_back_with_the_base() {
    let mut rng = Rng::new(13);
    let base = vocab(&mut rng, 20_000);
    let mut edited = base.clone();
    edited.splice(1000..1000, b"\"[NEW]\": 99999,\n".iter().copied());
    let unrelated = unrelated(&mut rng, 2_000);
    let dir = tempfile::tempdir().unwrap();
    let (bytes, p) = write(
        dir.path(),
        &[
            ("tokenizer.json", &base, Some(&base)),
            ("vocab.txt", &edited, Some(&base)),
            ("config.json", &unrelated, Some(&base)),
            ("special_tokens_map.json", b"{}", None),
        ],
    );
    let r = ArchiveReader::open(&p).unwrap();
    let f = |n: &str| r.file_entry(n).unwrap().clone();
    // Identical: the frame is a handful of copy sequences.
    let whole = encode_file_record(&base, companion_zstd_level(base.len(), 1))
        .unwrap()
        .len() as u64;
    assert!(
        f("tokenizer.json").length < 200,
        "{}",
        f("tokenizer.json").length
    );
    assert!(whole > 100_000, "{whole}");
    assert!(f("vocab.txt").length < 400, "{}", f("vocab.txt").length);
    let named = f("tokenizer.json").base.unwrap();
    assert_eq!(named.size, base.len() as u64);
    assert_eq!(named.xxh3, format!("{:016x}", xxh3_64(&base)));
    // A file the base does not help is stored whole, with no base in the index.
    assert_eq!(f("config.json").base, None);
    assert_eq!(f("special_tokens_map.json").base, None);
    let index = index_json(&bytes);
    assert!(index["files"][2].get("base").is_none());
    assert!(index["files"][0]["base"].is_object());

    assert_eq!(
        r.read_file_with_base("tokenizer.json", Some(&base))
            .unwrap(),
        base
    );
    assert_eq!(
        r.read_file_with_base("vocab.txt", Some(&base)).unwrap(),
        edited
    );
    // Files stored whole ignore the base given.
    assert_eq!(
        r.read_file_with_base("config.json", Some(&base)).unwrap(),
        unrelated
    );
    assert_eq!(r.read_file("config.json").unwrap(), unrelated);
    // Without the base, or with another file: one clear error, nothing decompressed.
    let e = r.read_file("tokenizer.json").unwrap_err();
    assert!(matches!(e, Error::NeedsBaseFile { .. }), "{e}");
    assert!(
        e.to_string().contains("tokenizer.json") && e.to_string().contains(&named.xxh3),
        "{e}"
    );
    let mut other = base.clone();
    other[5] ^= 1;
    let e = r
        .read_file_with_base("tokenizer.json", Some(&other))
        .unwrap_err();
    assert!(matches!(e, Error::BaseFileMismatch { .. }), "{e}");
    let e = r
        .read_file_with_base("tokenizer.json", Some(&base[1..]))
        .unwrap_err();
    assert!(matches!(e, Error::BaseFileMismatch { .. }), "{e}");
    // verify() checks what it can without the base.
    r.verify().unwrap();
    r.check_file("tokenizer.json").unwrap();
}

#[test]
fn encoding_is_deterministic_and_never_larger_than_whole() {
    let mut rng = Rng::new(7);
    let base = vocab(&mut rng, 3000);
    let other = unrelated(&mut rng, 3000);
    for (bytes, helped) in [(&base, true), (&other, false)] {
        let (a, ra) = encode_file_record_against(bytes, Some(&base), 19).unwrap();
        let (b, _) = encode_file_record_against(bytes, Some(&base), 19).unwrap();
        assert_eq!(a, b);
        let whole = encode_file_record(bytes, 19).unwrap();
        assert!(a.len() <= whole.len());
        assert_eq!(ra.is_some(), helped);
        if let Some(ra) = ra {
            assert_eq!(ra, BaseFileRef::of(&base));
        } else {
            assert_eq!(a, whole);
        }
    }
    // No base: exactly the kind-4 record.
    let (a, ra) = encode_file_record_against(&base, None, 3).unwrap();
    let level = companion_zstd_level(base.len(), 3);
    assert_eq!((a, ra), (encode_file_record(&base, level).unwrap(), None));
}

/// Kind 13 never decodes without the base, whatever its bytes: truncations, flips and a trailing byte fail or
/// (flips) are refused as needing the base; none panics.
#[test]
fn hostile_kind_13_bytes_never_panic_without_the_base() {
    let mut rng = Rng::new(99);
    let base = vocab(&mut rng, 300);
    let mut ft = base.clone();
    ft.extend_from_slice(b"tail");
    let (rec, r) = encode_file_record_against(&ft, Some(&base), 3).unwrap();
    assert!(r.is_some());
    assert_eq!(rec[0], 13);
    let limits = Limits::default();
    assert!(decode_record(&rec, &limits).is_err());
    assert_hostile_record_bytes_never_panic("file-zstd-base", &rec, &mut rng);
}

/// Damaged records and indexes with the checksums fixed up: the frame or the fields are wrong, the error names the
/// file, and nothing is returned.
#[test]
fn damaged_kind_13_records_and_index_fields_are_refused() {
    let mut rng = Rng::new(5);
    let base = vocab(&mut rng, 2000);
    let mut ft = base.clone();
    ft.truncate(base.len() - 10);
    let dir = tempfile::tempdir().unwrap();
    let (bytes, _) = write(dir.path(), &[("tokenizer.json", &ft, Some(&base))]);
    let file_range = |b: &[u8]| {
        let v = index_json(b);
        let e = &v["files"][0];
        (
            e["offset"].as_u64().unwrap() as usize,
            e["length"].as_u64().unwrap() as usize,
        )
    };
    let edit_file_record = |b: &[u8], at_from_end: usize| {
        let (off, len) = file_range(b);
        let mut out = b.to_vec();
        out[off + len - at_from_end] ^= 0x40;
        let sum = format!("{:016x}", xxh3_64(&out[off..off + len]));
        edit_index(&out, |v| v["files"][0]["checksum"] = json!(sum))
    };
    // Every byte of the payload (fields and frame) flipped in turn: an error naming the file, or the exact file
    // (never other bytes: the frame's content checksum is on).
    let (_, len) = file_range(&bytes);
    for k in 1..=len - 20 {
        let b = edit_file_record(&bytes, k);
        let p = put(dir.path(), "d.udelta", &b);
        let r = ArchiveReader::open(&p).unwrap();
        match r.read_file_with_base("tokenizer.json", Some(&base)) {
            Ok(out) => assert_eq!(out, ft, "flip {k} from the end decoded to other bytes"),
            Err(e) => assert!(e.to_string().contains("tokenizer.json"), "{e}"),
        }
    }
    // The index names another base file than the record: refused with or without the base.
    let b = edit_index(&bytes, |v| {
        v["files"][0]["base"]["size"] = json!(base.len() + 1)
    });
    let p = put(dir.path(), "i.udelta", &b);
    let r = ArchiveReader::open(&p).unwrap();
    assert!(matches!(
        r.check_file("tokenizer.json").unwrap_err(),
        Error::CorruptRecord { .. }
    ));
    assert!(matches!(
        r.read_file_with_base("tokenizer.json", Some(&base))
            .unwrap_err(),
        Error::BaseFileMismatch { .. }
    ));
    // Malformed base fields are refused at open.
    for bad in [
        json!({"size": 3, "xxh3": "XYZ"}),
        json!({"size": u64::MAX, "xxh3": "0123456789abcdef"}),
    ] {
        let b = edit_index(&bytes, |v| v["files"][0]["base"] = bad.clone());
        let e = ArchiveReader::open(put(dir.path(), "j.udelta", &b)).unwrap_err();
        assert!(e.to_string().contains("tokenizer.json"), "{e}");
    }
    // A kind-4 index entry (no base) over a kind-13 record: refused by kind.
    let b = edit_index(&bytes, |v| {
        v["files"][0].as_object_mut().unwrap().remove("base");
    });
    let r = ArchiveReader::open(put(dir.path(), "k.udelta", &b)).unwrap();
    assert!(matches!(
        r.read_file("tokenizer.json").unwrap_err(),
        Error::CorruptRecord { .. }
    ));
}

/// A tokenizer-like JSON document written compact, as a base model's `tokenizer.json` often is.
fn json_vocab(rng: &mut Rng, words: usize) -> Vec<u8> {
    let mut out =
        br#"{"version":"1.0","truncation":{"max_length":128},"added_tokens":[],"model":{"vocab":{"#
            .to_vec();
    for i in 0..words {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("\"w{i}_{:x}\":{i}", rng.next_u64() >> 40).as_bytes());
    }
    out.extend_from_slice(b"}}}");
    out
}

/// Kind 14: the fine-tune's file is the base's JSON pretty-printed, with one value changed. Against the base as it
/// is (kind 13) zstd finds only short matches; against the base re-laid out like it, the record is tiny, reads back
/// byte for byte with the base, and not without it.
#[test]
fn a_json_file_laid_out_otherwise_is_stored_against_the_base_re_laid_out() {
    use ultradelta_archive::json_layout::relayout;
    let mut rng = Rng::new(14);
    let base = json_vocab(&mut rng, 20_000);
    let pretty = relayout(&base, 2, u64::MAX).unwrap();
    let ft = String::from_utf8(pretty)
        .unwrap()
        .replace("\"max_length\": 128", "\"max_length\": 256")
        .into_bytes();
    let (rec, r) = encode_file_record_against(&ft, Some(&base), 3).unwrap();
    assert_eq!(rec[0], 14, "kind");
    assert_eq!(r, Some(BaseFileRef::of(&base)));
    assert!(rec.len() < 400, "{} bytes", rec.len());
    let whole = encode_file_record(&ft, 3).unwrap().len();
    assert!(whole > 100 * rec.len(), "kind 4 takes {whole}");
    // The same layout both sides: kind 14 is not tried (kind 13 is already a copy).
    let (same, _) = encode_file_record_against(&base, Some(&base), 3).unwrap();
    assert_eq!(same[0], 13);

    let dir = tempfile::tempdir().unwrap();
    let (bytes, p) = write(dir.path(), &[("tokenizer.json", &ft, Some(&base))]);
    let r = ArchiveReader::open(&p).unwrap();
    assert_eq!(
        r.read_file_with_base("tokenizer.json", Some(&base))
            .unwrap(),
        ft
    );
    r.verify().unwrap();
    r.check_file("tokenizer.json").unwrap();
    let e = r.read_file("tokenizer.json").unwrap_err();
    assert!(matches!(e, Error::NeedsBaseFile { .. }), "{e}");
    // A base file with the same size and hash cannot be forged here; a record whose declared re-laid-out size or
    // hash is not what the base gives is refused naming the file, nothing returned.
    let v = index_json(&bytes);
    let (off, len) = (
        v["files"][0]["offset"].as_u64().unwrap() as usize,
        v["files"][0]["length"].as_u64().unwrap() as usize,
    );
    // The payload starts after the 12-byte header prefix and the one-dimension shape (8 bytes).
    let payload = off + 20;
    for (at, what) in [
        (16, "indent"),
        (17, "dictionary size"),
        (25, "dictionary xxh3"),
    ] {
        let mut b = bytes.clone();
        b[payload + at] ^= 1;
        let sum = format!("{:016x}", xxh3_64(&b[off..off + len]));
        let b = edit_index(&b, |v| v["files"][0]["checksum"] = json!(sum));
        let r = ArchiveReader::open(put(dir.path(), "k.udelta", &b)).unwrap();
        let e = r
            .read_file_with_base("tokenizer.json", Some(&base))
            .unwrap_err();
        assert!(matches!(e, Error::CorruptRecord { .. }), "{what}: {e}");
        let s = e.to_string();
        assert!(
            s.contains("tokenizer.json") && s.contains("re-laid out"),
            "{what}: {s}"
        );
    }
    // An indent above the format's bound, and a declared size above the companion-file limit, are refused even
    // without the base.
    for (at, byte) in [(16usize, 17u8), (24, 0x7f)] {
        let mut b = bytes.clone();
        b[payload + at] = byte;
        let sum = format!("{:016x}", xxh3_64(&b[off..off + len]));
        let b = edit_index(&b, |v| v["files"][0]["checksum"] = json!(sum));
        let r = ArchiveReader::open(put(dir.path(), "l.udelta", &b)).unwrap();
        let e = r.check_file("tokenizer.json").unwrap_err();
        assert!(e.to_string().contains("tokenizer.json"), "{e}");
    }
}

/// Kind 14 never decodes without the base, whatever its bytes.
#[test]
fn hostile_kind_14_bytes_never_panic_without_the_base() {
    let mut rng = Rng::new(98);
    let base = json_vocab(&mut rng, 200);
    let ft = ultradelta_archive::json_layout::relayout(&base, 4, u64::MAX).unwrap();
    let (rec, r) = encode_file_record_against(&ft, Some(&base), 3).unwrap();
    assert!(r.is_some());
    assert_eq!(rec[0], 14);
    assert!(decode_record(&rec, &Limits::default()).is_err());
    assert_hostile_record_bytes_never_panic("file-zstd-base-json", &rec, &mut rng);
}
