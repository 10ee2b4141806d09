//! Tests of the whole crate through its public API: round trips, every path form, every error, fingerprints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use proptest::prelude::*;

use crate::*;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Deterministic pseudo-random f32 values in about [-1, 1].
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor(name: &str, dtype: DType, shape: &[usize], seed: u64) -> (TensorInfo, Vec<u8>) {
    let info = TensorInfo::new(name, dtype, shape.to_vec());
    let n = info.numel();
    let bytes = if dtype.is_float() {
        let mut b = Vec::new();
        f32_to_bytes(&values(n, seed), dtype, &mut b).unwrap();
        b
    } else {
        (0..info.nbytes())
            .map(|i| (i as u64 * 31 + seed) as u8)
            .collect()
    };
    (info, bytes)
}

fn sample_tensors(dtype: DType) -> Vec<(TensorInfo, Vec<u8>)> {
    vec![
        tensor("embed.weight", dtype, &[16, 8], 1),
        tensor("layers.0.attn.q.weight", dtype, &[8, 8], 2),
        tensor("layers.0.attn.q.bias", dtype, &[8], 3),
        tensor("layers.1.mlp.up.weight", dtype, &[8, 24], 4),
        tensor("position_ids", DType::I64, &[1, 16], 5),
        tensor("scalar", dtype, &[], 6),
        tensor("empty", dtype, &[0, 4], 7),
    ]
}

/// Bytes of a safetensors file with the given raw header text (not padded) and data.
fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn write_raw(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn sharded_opts(max: u64) -> WriterOptions {
    WriterOptions {
        max_shard_bytes: max,
        ..WriterOptions::default()
    }
}

/// Checks `dir` against `tensors` through our reader and, file by file, through the `safetensors` crate.
fn check_round_trip(dir: &Path, tensors: &[(TensorInfo, Vec<u8>)]) {
    let ck = Checkpoint::open(dir).unwrap();
    assert_eq!(ck.tensors().len(), tensors.len());
    let mut names: Vec<&str> = ck.tensors().iter().map(|t| t.name.as_str()).collect();
    let sorted = {
        let mut s = names.clone();
        s.sort();
        s
    };
    assert_eq!(names, sorted, "tensors() is sorted by name");
    for (info, bytes) in tensors {
        let v = ck.view(&info.name).unwrap();
        assert_eq!(v.info(), info);
        assert_eq!(v.bytes(), bytes.as_slice(), "{}", info.name);
        assert_eq!(ck.info(&info.name), Some(info));
        if info.dtype.is_float() {
            let f = v.to_f32().unwrap();
            let mut back = Vec::new();
            f32_to_bytes(&f, info.dtype, &mut back).unwrap();
            assert_eq!(
                &back, bytes,
                "to_f32 then f32_to_bytes is lossless for {}",
                info.name
            );
        }
    }
    // the reference reader agrees, shard by shard
    let mut seen = 0;
    for file in ck.weight_files() {
        let data = std::fs::read(file).unwrap();
        let st = safetensors::SafeTensors::deserialize(&data).unwrap();
        for (name, view) in st.tensors() {
            seen += 1;
            let (info, bytes) = tensors.iter().find(|(t, _)| t.name == name).unwrap();
            assert_eq!(view.dtype().to_string(), info.dtype.name(), "{name}");
            assert_eq!(view.shape(), info.shape.as_slice(), "{name}");
            assert_eq!(view.data(), bytes.as_slice(), "{name}");
            assert_eq!(ck.file_of(&name), Some(file.as_path()));
        }
    }
    assert_eq!(seen, tensors.len());
    names.dedup();
    assert_eq!(names.len(), tensors.len());
}

#[test]
fn round_trip_single_file() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let t = tmp();
        let tensors = sample_tensors(dtype);
        let mut md = BTreeMap::new();
        md.insert("format".to_string(), "pt".to_string());
        let opts = WriterOptions {
            metadata: md.clone(),
            ..WriterOptions::default()
        };
        let dir = write_checkpoint(t.path().join("out"), &tensors, opts).unwrap();
        assert_eq!(dir, t.path().join("out"));
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, vec![std::ffi::OsString::from("model.safetensors")]);
        check_round_trip(&dir, &tensors);
        let ck = Checkpoint::open(&dir).unwrap();
        assert_eq!(ck.metadata(), &md);
        assert_eq!(ck.index_file(), None);
        assert_eq!(
            ck.size_on_disk(),
            std::fs::metadata(dir.join("model.safetensors"))
                .unwrap()
                .len()
        );
        let st_bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&st_bytes).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .unwrap()
                .get("format")
                .map(String::as_str),
            Some("pt")
        );
    }
}

#[test]
fn round_trip_sharded() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let t = tmp();
        let tensors = sample_tensors(dtype);
        let max = (tensors[0].1.len() + tensors[1].1.len()) as u64; // first two share a shard
        let dir = write_checkpoint(t.path().join("out"), &tensors, sharded_opts(max)).unwrap();
        let ck = Checkpoint::open(&dir).unwrap();
        let n = ck.weight_files().len();
        assert!(n >= 3, "{dtype}: expected several shards, got {n}");
        for (i, f) in ck.weight_files().iter().enumerate() {
            assert_eq!(
                f.file_name().unwrap().to_str().unwrap(),
                format!("model-{:05}-of-{n:05}.safetensors", i + 1)
            );
            let data = std::fs::read(f).unwrap();
            let header_len = u64::from_le_bytes(data[..8].try_into().unwrap());
            assert_eq!(header_len % 8, 0);
            let in_shard: Vec<&TensorInfo> = ck
                .tensors()
                .iter()
                .filter(|t| ck.file_of(&t.name) == Some(f.as_path()))
                .collect();
            let data_len: u64 = in_shard.iter().map(|t| t.nbytes() as u64).sum();
            assert_eq!(data.len() as u64, 8 + header_len + data_len);
            assert!(
                data_len <= max || in_shard.len() == 1,
                "shard {i} holds {data_len} bytes"
            );
        }
        // greedy in declared order: the first two tensors are together, the third starts a new shard
        assert_eq!(
            ck.file_of("embed.weight"),
            ck.file_of("layers.0.attn.q.weight")
        );
        assert_ne!(
            ck.file_of("embed.weight"),
            ck.file_of("layers.0.attn.q.bias")
        );
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(INDEX_FILE_NAME)).unwrap()).unwrap();
        let total: usize = tensors.iter().map(|(_, b)| b.len()).sum();
        assert_eq!(index["metadata"]["total_size"], total as u64);
        assert_eq!(
            index["weight_map"].as_object().unwrap().len(),
            tensors.len()
        );
        assert_eq!(
            index["weight_map"]["embed.weight"],
            format!("model-00001-of-{n:05}.safetensors")
        );
        check_round_trip(&dir, &tensors);
        let files_size: u64 = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(ck.size_on_disk(), files_size);
        assert_eq!(ck.total_tensor_bytes(), total as u64);
    }
}

#[test]
fn open_all_path_forms() {
    let t = tmp();
    let tensors = sample_tensors(DType::F16);
    // 1. a .safetensors file
    let single =
        write_checkpoint(t.path().join("single"), &tensors, WriterOptions::default()).unwrap();
    let file = single.join("model.safetensors");
    let a = Checkpoint::open(&file).unwrap();
    assert_eq!(a.path(), file);
    assert_eq!(a.dir(), single);
    // 2. a folder with model.safetensors
    let b = Checkpoint::open(&single).unwrap();
    assert_eq!(b.path(), single);
    assert_eq!(b.weight_files(), std::slice::from_ref(&file));
    // 3. a folder with the index
    let sharded = write_checkpoint(t.path().join("sharded"), &tensors, sharded_opts(64)).unwrap();
    let c = Checkpoint::open(&sharded).unwrap();
    assert_eq!(
        c.index_file(),
        Some(sharded.join(INDEX_FILE_NAME).as_path())
    );
    // 3b. the index json itself
    let c2 = Checkpoint::open(sharded.join(INDEX_FILE_NAME)).unwrap();
    assert_eq!(c2.tensors(), c.tensors());
    // 4. a folder with exactly one *.safetensors of another name
    let other = t.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(&file, other.join("weights.safetensors")).unwrap();
    std::fs::write(other.join("config.json"), b"{}").unwrap();
    let d = Checkpoint::open(&other).unwrap();
    assert_eq!(d.weight_files(), &[other.join("weights.safetensors")]);
    for ck in [&a, &b, &c, &c2, &d] {
        assert_eq!(ck.tensors(), a.tensors());
        assert_eq!(
            ck.fingerprint(),
            a.fingerprint(),
            "same tensors, same fingerprint"
        );
    }
    // several *.safetensors without an index: a clear error naming the folder
    std::fs::copy(&file, other.join("more.safetensors")).unwrap();
    let e = Checkpoint::open(&other).unwrap_err();
    assert!(matches!(e, Error::NotACheckpoint { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(other.to_str().unwrap()) && msg.contains("2 .safetensors files"),
        "{msg}"
    );
    assert!(
        msg.contains("more.safetensors") && msg.contains(INDEX_FILE_NAME),
        "{msg}"
    );
    // a folder without weights
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("config.json"), b"{}").unwrap();
    let e = Checkpoint::open(&empty).unwrap_err();
    assert!(matches!(e, Error::NotACheckpoint { .. }), "{e}");
    assert!(e.to_string().contains("no .safetensors file"), "{e}");
    // a folder with weights in a format that is not read: named, with the way to convert them
    std::fs::write(empty.join("tf_model.h5"), b"not read").unwrap();
    let e = Checkpoint::open(&empty).unwrap_err();
    assert!(matches!(e, Error::NotACheckpoint { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("tf_model.h5") && msg.contains("convert them to safetensors"),
        "{msg}"
    );
    // a PyTorch file that is not one (PyTorch's own files are read: src/torch_tests.rs)
    std::fs::write(empty.join("pytorch_model.bin"), b"not read").unwrap();
    let e = Checkpoint::open(&empty).unwrap_err();
    assert!(matches!(e, Error::InvalidTorch { .. }), "{e}");
    assert!(
        e.to_string().ends_with("pytorch_model.bin: invalid PyTorch checkpoint: neither a file torch.save writes (a zip, or the legacy format's magic number) nor safetensors: the file starts with 6e 6f 74 20 72 65 61 64"),
        "{e}"
    );
    // a path that does not exist
    let e = Checkpoint::open(t.path().join("nope")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("nope"), "{e}");
}

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn checkpoint_is_send_and_sync() {
    assert_send_sync::<Checkpoint>();
    assert_send_sync::<TensorView<'static>>();
}

#[test]
fn view_errors() {
    let t = tmp();
    let dir = write_checkpoint(
        t.path().join("c"),
        &sample_tensors(DType::F32),
        WriterOptions::default(),
    )
    .unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    let e = ck.view("missing").unwrap_err();
    assert!(matches!(e, Error::TensorNotFound { .. }), "{e}");
    assert!(ck.info("missing").is_none() && ck.file_of("missing").is_none());
    let ids = ck.view("position_ids").unwrap();
    let e = ids.to_f32().unwrap_err();
    assert!(
        matches!(
            e,
            Error::NotFloat {
                dtype: DType::I64,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("position_ids") && e.to_string().contains("model.safetensors"),
        "{e}"
    );
    let w = ck.view("embed.weight").unwrap();
    let e = w.to_f32_into(&mut [0.0; 3]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::LengthMismatch {
                expected: 128,
                found: 3,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(w.content_hash(), xxhash_rust::xxh3::xxh3_64(w.bytes()));
    assert_eq!(ck.view("scalar").unwrap().to_f32().unwrap().len(), 1);
    assert!(ck.view("empty").unwrap().to_f32().unwrap().is_empty());
}

// ---- malformed files: one test per error variant ----

fn open_err(bytes: &[u8]) -> (Error, PathBuf) {
    let t = tmp();
    let p = write_raw(t.path(), "bad.safetensors", bytes);
    let e = Checkpoint::open(&p).unwrap_err();
    // keep the path for message checks; the folder may go away
    (e, p)
}

fn good_file() -> Vec<u8> {
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[3],"data_offsets":[8,14]}}"#;
    raw_file(header, &[0u8; 14])
}

#[test]
fn error_header_too_small() {
    let (e, p) = open_err(&[1, 2, 3]);
    assert!(matches!(e, Error::HeaderTooSmall { len: 3, .. }), "{e}");
    assert!(e.to_string().contains(p.to_str().unwrap()), "{e}");
    let (e, _) = open_err(&[]);
    assert!(matches!(e, Error::HeaderTooSmall { len: 0, .. }), "{e}");
}

#[test]
fn error_bad_header_length() {
    let mut f = good_file();
    f[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let (e, _) = open_err(&f);
    assert!(
        matches!(
            e,
            Error::HeaderTooLarge {
                declared: u64::MAX,
                ..
            }
        ),
        "{e}"
    );
    f[..8].copy_from_slice(&(MAX_HEADER_BYTES + 1).to_le_bytes());
    let (e, _) = open_err(&f);
    assert!(matches!(e, Error::HeaderTooLarge { .. }), "{e}");
    // within the cap but past the end of the file
    f[..8].copy_from_slice(&1000u64.to_le_bytes());
    let (e, _) = open_err(&f);
    assert!(
        matches!(e, Error::HeaderTruncated { declared: 1000, .. }),
        "{e}"
    );
}

#[test]
fn error_header_garbage() {
    for header in ["{not json", "[1,2,3]", "\"x\"", "", "{\"a\":1,\"a\":2}"] {
        let (e, p) = open_err(&raw_file(header, &[]));
        assert!(matches!(e, Error::InvalidHeader { .. }), "{header}: {e}");
        assert!(e.to_string().contains(p.to_str().unwrap()), "{e}");
    }
    let mut bad_utf8 = raw_file("{\"\u{e9}\":1}", &[]);
    bad_utf8[10] = 0xFF;
    let (e, _) = open_err(&bad_utf8);
    assert!(matches!(e, Error::InvalidHeader { .. }), "{e}");
    let (e, _) = open_err(&raw_file(r#"{"__metadata__":{"x":1}}"#, &[]));
    assert!(
        matches!(e, Error::InvalidHeader { .. }) && e.to_string().contains("__metadata__"),
        "{e}"
    );
}

#[test]
fn empty_header_is_an_empty_checkpoint() {
    let t = tmp();
    let p = write_raw(t.path(), "e.safetensors", &raw_file("{}      ", &[]));
    let ck = Checkpoint::open(&p).unwrap();
    assert!(ck.tensors().is_empty());
}

#[test]
fn error_invalid_tensor_entries() {
    let cases = [
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}}"#,
            "span 12 bytes, expected 8",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
            "end before",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
            "shape entry",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2]}}"#,
            "missing \"data_offsets\"",
        ),
        (
            r#"{"a":{"shape":[2],"data_offsets":[0,8]}}"#,
            "missing \"dtype\"",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}}"#,
            "expected [begin, end]",
        ),
        (r#"{"a":[1]}"#, "expected an object"),
        (
            r#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
            "overflows",
        ),
    ];
    for (header, needle) in cases {
        let (e, _) = open_err(&raw_file(header, &[0u8; 16]));
        assert!(
            matches!(e, Error::InvalidTensorEntry { .. }),
            "{header}: {e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(needle) && msg.contains("\"a\""),
            "{header}: {msg}"
        );
    }
    // An empty tensor name is refused where it is read (an archive could not name it).
    let (e, _) = open_err(&raw_file(
        r#"{"":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
        &[0u8; 8],
    ));
    assert!(matches!(e, Error::InvalidTensorEntry { .. }), "{e}");
    assert!(e.to_string().contains("the name is empty"), "{e}");
}

#[test]
fn error_offsets_out_of_range_and_truncated() {
    // offsets point far beyond the file
    let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[1000000,1000004]}}"#;
    let (e, _) = open_err(&raw_file(h, &[0u8; 4]));
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    // offsets that would wrap a u64 when made absolute
    let h = r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]}}"#;
    let (e, _) = open_err(&raw_file(h, &[]));
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    // a real file cut short names the file and the first tensor that no longer fits
    let t = tmp();
    let tensors = sample_tensors(DType::F32);
    let dir = write_checkpoint(t.path().join("c"), &tensors, WriterOptions::default()).unwrap();
    let file = dir.join("model.safetensors");
    let full = std::fs::read(&file).unwrap();
    std::fs::write(&file, &full[..full.len() - 1]).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    let msg = e.to_string();
    // the last tensor in the file is the scalar (declared order)
    assert!(
        msg.contains("model.safetensors")
            && msg.contains("\"scalar\"")
            && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn error_overlapping_tensors() {
    let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#;
    let (e, _) = open_err(&raw_file(h, &[0u8; 6]));
    assert!(matches!(e, Error::OverlappingTensors { .. }), "{e}");
    assert!(
        e.to_string().contains("\"b\"") && e.to_string().contains("\"a\""),
        "{e}"
    );
    // a long tensor followed by two inside it: the second is still caught
    let h = r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[0],"data_offsets":[1,1]},"c":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}"#;
    let (e, _) = open_err(&raw_file(h, &[0u8; 8]));
    assert!(
        matches!(e, Error::OverlappingTensors { ref tensor, .. } if tensor == "c"),
        "{e}"
    );
}

#[test]
fn error_unsupported_dtype() {
    for dt in ["F8_E4M3", "U32", "complex64", "f32"] {
        let h = format!(r#"{{"w":{{"dtype":"{dt}","shape":[2],"data_offsets":[0,2]}}}}"#);
        let (e, p) = open_err(&raw_file(&h, &[0u8; 2]));
        assert!(
            matches!(e, Error::UnsupportedDType { ref dtype, .. } if dtype == dt),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(p.to_str().unwrap()) && msg.contains("\"w\"") && msg.contains(dt),
            "{msg}"
        );
    }
}

#[test]
fn truncation_sweep_never_panics() {
    let t = tmp();
    let tensors = vec![
        tensor("a", DType::F16, &[3, 5], 1),
        tensor("b", DType::F32, &[7], 2),
    ];
    let dir = write_checkpoint(t.path().join("c"), &tensors, WriterOptions::default()).unwrap();
    let full = std::fs::read(dir.join("model.safetensors")).unwrap();
    for len in 0..full.len() {
        let p = write_raw(t.path(), "cut.safetensors", &full[..len]);
        let e = Checkpoint::open(&p).expect_err("every proper prefix must fail");
        assert!(
            matches!(
                e,
                Error::HeaderTooSmall { .. }
                    | Error::HeaderTruncated { .. }
                    | Error::Truncated { .. }
            ),
            "len {len}: {e}"
        );
    }
}

#[test]
fn unaligned_data_reads_correctly() {
    // header of 13 bytes: data starts at offset 21, so f32/f16 values are unaligned in the map
    let vals = [1.5f32, -2.25, 3.0];
    let mut data = Vec::new();
    for v in vals {
        data.extend_from_slice(&v.to_le_bytes());
    }
    for v in vals {
        data.extend_from_slice(&f16::from_f32(v).to_le_bytes());
    }
    for v in vals {
        data.extend_from_slice(&bf16::from_f32(v).to_le_bytes());
    }
    let h = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F16","shape":[3],"data_offsets":[12,18]},"c":{"dtype":"BF16","shape":[3],"data_offsets":[18,24]},"d":{"dtype":"F64","shape":[0],"data_offsets":[24,24]}}"#;
    let t = tmp();
    let p = write_raw(t.path(), "u.safetensors", &raw_file(h, &data));
    let ck = Checkpoint::open(&p).unwrap();
    for name in ["a", "b", "c"] {
        assert_eq!(ck.view(name).unwrap().to_f32().unwrap(), vals, "{name}");
    }
}

// ---- sharded checkpoints: index errors ----

fn sharded_fixture(t: &Path) -> PathBuf {
    let tensors = sample_tensors(DType::BF16);
    write_checkpoint(t.join("s"), &tensors, sharded_opts(64)).unwrap()
}

fn rewrite_index(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join(INDEX_FILE_NAME);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn error_missing_shard() {
    let t = tmp();
    let dir = sharded_fixture(t.path());
    let ck = Checkpoint::open(&dir).unwrap();
    let victim = ck.file_of("layers.0.attn.q.bias").unwrap().to_path_buf();
    drop(ck);
    std::fs::remove_file(&victim).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err();
    assert!(matches!(e, Error::MissingShard { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(INDEX_FILE_NAME)
            && msg.contains(victim.file_name().unwrap().to_str().unwrap()),
        "{msg}"
    );
}

#[test]
fn error_index_names_wrong_shard() {
    let t = tmp();
    let dir = sharded_fixture(t.path());
    rewrite_index(&dir, |v| {
        // an existing shard, but not the one holding the tensor
        v["weight_map"]["embed.weight"] = v["weight_map"]["layers.0.attn.q.weight"].clone();
    });
    let e = Checkpoint::open(&dir).unwrap_err();
    assert!(
        matches!(e, Error::IndexMismatch { ref tensor, .. } if tensor == "embed.weight"),
        "{e}"
    );
}

#[test]
fn error_invalid_index() {
    let t = tmp();
    let dir = sharded_fixture(t.path());
    rewrite_index(&dir, |v| {
        v["weight_map"]["embed.weight"] = "../elsewhere.safetensors".into();
    });
    let e = Checkpoint::open(&dir).unwrap_err();
    assert!(
        matches!(e, Error::InvalidIndex { .. }) && e.to_string().contains("plain file name"),
        "{e}"
    );
    std::fs::write(dir.join(INDEX_FILE_NAME), b"{\"weight_map\": 3}").unwrap();
    let e = Checkpoint::open(&dir).unwrap_err();
    assert!(matches!(e, Error::InvalidIndex { .. }), "{e}");
    std::fs::write(dir.join(INDEX_FILE_NAME), b"{\"weight_map\": {}}").unwrap();
    let e = Checkpoint::open(&dir).unwrap_err();
    assert!(
        matches!(e, Error::InvalidIndex { .. }) && e.to_string().contains("no tensors"),
        "{e}"
    );
}

#[test]
fn error_duplicate_tensor_across_shards() {
    let t = tmp();
    let dir = t.path().join("dup");
    std::fs::create_dir(&dir).unwrap();
    let one = write_checkpoint(
        t.path().join("one"),
        &[tensor("x", DType::F32, &[2], 1)],
        WriterOptions::default(),
    )
    .unwrap();
    let two = write_checkpoint(
        t.path().join("two"),
        &[
            tensor("x", DType::F32, &[2], 2),
            tensor("y", DType::F32, &[2], 3),
        ],
        WriterOptions::default(),
    )
    .unwrap();
    std::fs::copy(one.join("model.safetensors"), dir.join("a.safetensors")).unwrap();
    std::fs::copy(two.join("model.safetensors"), dir.join("b.safetensors")).unwrap();
    std::fs::write(
        dir.join(INDEX_FILE_NAME),
        br#"{"weight_map":{"x":"a.safetensors","y":"b.safetensors"}}"#,
    )
    .unwrap();
    let e = Checkpoint::open(&dir).unwrap_err();
    assert!(
        matches!(e, Error::DuplicateTensor { ref tensor, .. } if tensor == "x"),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("a.safetensors") && msg.contains("b.safetensors"),
        "{msg}"
    );
}

// ---- writer errors ----

#[test]
fn error_output_exists() {
    let t = tmp();
    let tensors = sample_tensors(DType::F32);
    let dir = write_checkpoint(t.path().join("c"), &tensors, WriterOptions::default()).unwrap();
    let e = write_checkpoint(&dir, &tensors, WriterOptions::default()).unwrap_err();
    assert!(matches!(e, Error::OutputExists { .. }), "{e}");
    assert!(e.to_string().contains(dir.to_str().unwrap()), "{e}");
    // a plain file in the way is not replaced even with overwrite
    let f = write_raw(t.path(), "file", b"x");
    let opts = WriterOptions {
        overwrite: true,
        ..WriterOptions::default()
    };
    let e = CheckpointWriter::create(&f, vec![], opts).unwrap_err();
    assert!(matches!(e, Error::OutputNotADirectory { .. }), "{e}");
}

/// Every file of folder `dir`, by name.
fn folder_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn direct_io_writes_the_same_bytes() {
    let t = tmp();
    // Files that end inside a staging block, on a 4096-byte boundary, and past the first 8 MiB block.
    let header_and_small = {
        let mut v = sample_tensors(DType::F32);
        v.push(tensor("big", DType::F32, &[3 * 1024 * 1024 + 5], 8));
        v.push(tensor("tail", DType::U8, &[4093], 9));
        v
    };
    for (k, tensors) in [sample_tensors(DType::BF16), header_and_small]
        .into_iter()
        .enumerate()
    {
        for max in [u64::MAX, 64, 4 << 20] {
            // `aligned`: each tensor passed at an address aligned like its file offset (written without staging)
            let write = |name: &str, direct_io: bool, aligned: bool| {
                let opts = WriterOptions {
                    max_shard_bytes: max,
                    direct_io,
                    ..WriterOptions::default()
                };
                let mut w = CheckpointWriter::create(
                    t.path().join(name),
                    tensors.iter().map(|(i, _)| i.clone()).collect(),
                    opts,
                )
                .unwrap();
                for (info, bytes) in &tensors {
                    if aligned {
                        let a = DIRECT_IO_ALIGN;
                        let mut buf = vec![0u8; bytes.len() + a];
                        let off = w.data_offset(&info.name).unwrap() as usize;
                        let shift = (off % a + a - buf.as_ptr() as usize % a) % a;
                        buf[shift..shift + bytes.len()].copy_from_slice(bytes);
                        w.write_tensor(&info.name, &buf[shift..shift + bytes.len()])
                            .unwrap();
                    } else {
                        w.write_tensor(&info.name, bytes).unwrap();
                    }
                }
                w.add_file("config.json", b"{}").unwrap();
                w.finish().unwrap()
            };
            let plain = write(&format!("plain-{k}-{max}"), false, false);
            for aligned in [false, true] {
                let direct = write(&format!("direct-{k}-{max}-{aligned}"), true, aligned);
                assert!(
                    folder_bytes(&plain) == folder_bytes(&direct),
                    "set {k} max {max} aligned {aligned}"
                );
                check_round_trip(&direct, &tensors);
            }
        }
    }
}

#[test]
fn overwrite_replaces_atomically() {
    let t = tmp();
    let old = sample_tensors(DType::F32);
    let dir = write_checkpoint(t.path().join("c"), &old, sharded_opts(64)).unwrap();
    std::fs::write(dir.join("stale.txt"), b"old").unwrap();
    let new = vec![tensor("only", DType::F16, &[4], 9)];
    let opts = WriterOptions {
        overwrite: true,
        ..WriterOptions::default()
    };
    // the old checkpoint stays readable (and mapped) while the new one replaces it
    let before = Checkpoint::open(&dir).unwrap();
    write_checkpoint(&dir, &new, opts).unwrap();
    check_round_trip(&dir, &new);
    assert!(!dir.join("stale.txt").exists() && !dir.join(INDEX_FILE_NAME).exists());
    assert_eq!(
        before.view("embed.weight").unwrap().bytes(),
        old[0].1.as_slice()
    );
    let leftovers: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn writer_order_length_and_completeness() {
    let t = tmp();
    let tensors = sample_tensors(DType::F16);
    let infos: Vec<TensorInfo> = tensors.iter().map(|(i, _)| i.clone()).collect();
    let mut w = CheckpointWriter::create(t.path().join("c"), infos, sharded_opts(100)).unwrap();
    assert!(w.shard_file_names().len() > 1);
    // out of order
    let e = w
        .write_tensor("layers.0.attn.q.weight", &tensors[1].1)
        .unwrap_err();
    assert!(matches!(e, Error::OutOfOrder { .. }), "{e}");
    assert!(e.to_string().contains("expected \"embed.weight\""), "{e}");
    // unknown name
    let e = w.write_tensor("nope", &[]).unwrap_err();
    assert!(matches!(e, Error::UnknownTensor { .. }), "{e}");
    // wrong length
    let e = w
        .write_tensor("embed.weight", &tensors[0].1[1..])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ByteLengthMismatch {
                expected: 256,
                found: 255,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("F16 with shape [16, 8]"), "{e}");
    // the failed calls changed nothing: writing proceeds normally
    w.write_tensor("embed.weight", &tensors[0].1).unwrap();
    assert_eq!(
        w.next_tensor().map(|t| t.name.as_str()),
        Some("layers.0.attn.q.weight")
    );
    // a tensor already written
    let e = w.write_tensor("embed.weight", &tensors[0].1).unwrap_err();
    assert!(matches!(e, Error::OutOfOrder { .. }), "{e}");
    w.write_tensor("layers.0.attn.q.weight", &tensors[1].1)
        .unwrap();
    // finishing early
    let e = w.finish().unwrap_err();
    assert!(
        matches!(e, Error::MissingTensors { missing: 5, ref first, .. } if first == "layers.0.attn.q.bias"),
        "{e}"
    );
    // the failed writer left nothing behind
    let left: Vec<_> = std::fs::read_dir(t.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn writer_declaration_errors() {
    let t = tmp();
    let d = t.path().join("c");
    let cases = [
        vec![TensorInfo::new("", DType::F32, vec![1])],
        vec![TensorInfo::new("__metadata__", DType::F32, vec![1])],
        vec![
            TensorInfo::new("a", DType::F32, vec![1]),
            TensorInfo::new("a", DType::F16, vec![1]),
        ],
        vec![TensorInfo::new("a", DType::F64, vec![usize::MAX, 2])],
    ];
    for infos in cases {
        let e = CheckpointWriter::create(&d, infos.clone(), WriterOptions::default()).unwrap_err();
        assert!(
            matches!(e, Error::InvalidDeclaration { .. }),
            "{infos:?}: {e}"
        );
    }
    assert!(std::fs::read_dir(t.path()).unwrap().next().is_none());
}

#[test]
fn writer_drop_removes_temp_dir() {
    let t = tmp();
    let tensors = sample_tensors(DType::F32);
    let infos = tensors.iter().map(|(i, _)| i.clone()).collect();
    let mut w =
        CheckpointWriter::create(t.path().join("c"), infos, WriterOptions::default()).unwrap();
    w.write_tensor("embed.weight", &tensors[0].1).unwrap();
    w.add_file("config.json", b"{}").unwrap();
    let names: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 1);
    assert!(names[0].starts_with(".c.partial-"), "{names:?}");
    drop(w);
    assert!(std::fs::read_dir(t.path()).unwrap().next().is_none());
}

#[test]
fn companion_files_and_config() {
    let t = tmp();
    let tensors = sample_tensors(DType::F16);
    let infos = tensors.iter().map(|(i, _)| i.clone()).collect();
    let mut w = CheckpointWriter::create(t.path().join("c"), infos, sharded_opts(128)).unwrap();
    for (i, b) in &tensors {
        w.write_tensor(&i.name, b).unwrap();
    }
    w.add_file("config.json", br#"{"model_type":"bert","hidden_size":8}"#)
        .unwrap();
    w.add_file("vocab.txt", b"a\nb\n").unwrap();
    w.add_file("tokenizer.json", b"{}").unwrap();
    for bad in [
        "../x",
        "/etc/x",
        "a/../x",
        "a//b",
        "a/",
        "sub/.hidden",
        "onnx/model.onnx",
        ".hidden",
        "model.safetensors",
        INDEX_FILE_NAME,
        "pytorch_model.bin",
        "",
    ] {
        let e = w.add_file(bad, b"x").unwrap_err();
        assert!(matches!(e, Error::InvalidFileName { .. }), "{bad:?}: {e}");
    }
    // Issue 17: a file in a subfolder; a path that would be a file and a folder at once is refused.
    w.add_file("1_Pooling/config.json", b"{}").unwrap();
    for clash in ["vocab.txt/x", "1_Pooling"] {
        let e = w.add_file(clash, b"x").unwrap_err();
        assert!(e.to_string().contains("folder"), "{clash}: {e}");
    }
    let e = w.add_file("vocab.txt", b"again").unwrap_err();
    assert!(
        matches!(e, Error::InvalidFileName { .. }) && e.to_string().contains("twice"),
        "{e}"
    );
    let dir = w.finish().unwrap();
    // things that are not companions
    std::fs::write(dir.join(".secret"), b"x").unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), b"x").unwrap();
    std::fs::write(dir.join("pytorch_model.bin.index.json"), b"{}").unwrap();
    std::fs::create_dir(dir.join("subdir")).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.join("vocab.txt"), dir.join("merges.txt")).unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    let names: Vec<String> = ck
        .companion_files()
        .iter()
        .map(|p| ck.companion_name(p).unwrap())
        .collect();
    #[cfg(unix)]
    assert_eq!(
        names,
        [
            "1_Pooling/config.json",
            "config.json",
            "merges.txt",
            "tokenizer.json",
            "vocab.txt"
        ]
    );
    #[cfg(not(unix))]
    assert_eq!(
        names,
        [
            "1_Pooling/config.json",
            "config.json",
            "tokenizer.json",
            "vocab.txt"
        ]
    );
    assert!(ck.companion_files().iter().all(|p| p.starts_with(&dir)));
    assert_eq!(ck.config().unwrap()["model_type"], "bert");
    std::fs::write(dir.join("config.json"), b"{broken").unwrap();
    assert!(ck.config().is_none());
}

#[test]
fn pairing() {
    let t = tmp();
    let base = vec![
        tensor("a", DType::F32, &[2, 2], 1),
        tensor("b", DType::F32, &[4], 2),
        tensor("c", DType::F32, &[4], 3),
        tensor("only_base", DType::F32, &[1], 4),
    ];
    let ft = vec![
        tensor("a", DType::F32, &[2, 2], 5),
        tensor("b", DType::F32, &[2, 2], 6), // shape differs
        tensor("c", DType::BF16, &[4], 7),   // dtype differs
        tensor("new_head", DType::F32, &[3], 8),
    ];
    let b = Checkpoint::open(
        write_checkpoint(t.path().join("b"), &base, WriterOptions::default()).unwrap(),
    )
    .unwrap();
    let f = Checkpoint::open(
        write_checkpoint(t.path().join("f"), &ft, WriterOptions::default()).unwrap(),
    )
    .unwrap();
    let p = pair(&b, &f);
    assert_eq!(p.matched, ["a"]);
    assert_eq!(p.only_base, ["only_base"]);
    assert_eq!(p.only_finetuned, ["new_head"]);
    assert_eq!(p.mismatched.len(), 2);
    assert_eq!(
        (
            p.mismatched[0].0.name.as_str(),
            p.mismatched[0].1.shape.as_slice()
        ),
        ("b", &[2, 2][..])
    );
    assert_eq!(p.mismatched[1].1.dtype, DType::BF16);
    assert!(!p.is_clean());
    let same = pair(&b, &b);
    assert!(same.is_clean());
    assert_eq!(same.matched.len(), 4);
}

// ---- fingerprint ----

#[test]
fn fingerprint_is_stable_and_sensitive() {
    let t = tmp();
    // big enough to be sampled (not hashed whole): 40_000 bytes
    let big = tensor("w", DType::F32, &[100, 100], 1);
    let small = tensor("s", DType::F16, &[10], 2);
    let base = vec![big.clone(), small.clone()];
    let dir = write_checkpoint(t.path().join("a"), &base, WriterOptions::default()).unwrap();
    let fp = Checkpoint::open(&dir).unwrap().fingerprint();
    assert_eq!(fp.len(), 16);
    assert!(fp.chars().all(|c| c.is_ascii_hexdigit()));
    // stable: reopen, and another writing of the same tensors (other order, sharded)
    assert_eq!(Checkpoint::open(&dir).unwrap().fingerprint(), fp);
    let again = write_checkpoint(
        t.path().join("b"),
        &[small.clone(), big.clone()],
        sharded_opts(1),
    )
    .unwrap();
    assert_eq!(Checkpoint::open(&again).unwrap().fingerprint(), fp);

    let variant = |name: &str, tensors: Vec<(TensorInfo, Vec<u8>)>| {
        let d = write_checkpoint(t.path().join(name), &tensors, WriterOptions::default()).unwrap();
        Checkpoint::open(&d).unwrap().fingerprint()
    };
    // a byte inside a sampled window of the big tensor: first, middle window, last
    let n = big.1.len();
    let mid_window = (32 * (n - 64)) / 63 + 5;
    for (k, pos) in [0, mid_window, n - 1].into_iter().enumerate() {
        let mut b = big.clone();
        b.1[pos] ^= 0x40;
        assert_ne!(
            variant(&format!("byte{k}"), vec![b, small.clone()]),
            fp,
            "byte {pos}"
        );
    }
    // a byte of the small tensor (hashed whole)
    let mut s = small.clone();
    s.1[7] ^= 1;
    assert_ne!(variant("small", vec![big.clone(), s]), fp);
    // same bytes, other shape
    let mut reshaped = big.clone();
    reshaped.0.shape = vec![50, 200];
    assert_ne!(variant("shape", vec![reshaped, small.clone()]), fp);
    // same bytes, other name / dtype
    let mut renamed = small.clone();
    renamed.0.name = "t".into();
    assert_ne!(variant("name", vec![big.clone(), renamed]), fp);
    let mut retyped = small.clone();
    retyped.0.dtype = DType::BF16;
    assert_ne!(variant("dtype", vec![big.clone(), retyped]), fp);
    // a byte between windows is (documented as) not covered
    let mut b = big.clone();
    b.1[100] ^= 1;
    assert_eq!(variant("unsampled", vec![b, small.clone()]), fp);
}

// ---- property test ----

fn arb_tensor() -> impl Strategy<Value = (TensorInfo, Vec<u8>)> {
    let dtype = prop::sample::select(DType::ALL.to_vec());
    let shape = prop::collection::vec(0usize..5, 0..4);
    (dtype, shape).prop_flat_map(|(dtype, shape)| {
        let n = shape.iter().product::<usize>() * dtype.size();
        prop::collection::vec(any::<u8>(), n)
            .prop_map(move |bytes| (TensorInfo::new("", dtype, shape.clone()), bytes))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn prop_round_trip(raw in prop::collection::vec(arb_tensor(), 0..8), max_shard in 1u64..200) {
        let tensors: Vec<(TensorInfo, Vec<u8>)> = raw
            .into_iter()
            .enumerate()
            .map(|(i, (mut info, bytes))| {
                info.name = format!("t{i}.weight");
                (info, bytes)
            })
            .collect();
        let t = tmp();
        let dir = write_checkpoint(t.path().join("p"), &tensors, sharded_opts(max_shard)).unwrap();
        let ck = Checkpoint::open(&dir).unwrap();
        prop_assert_eq!(ck.tensors().len(), tensors.len());
        for (info, bytes) in &tensors {
            let v = ck.view(&info.name).unwrap();
            prop_assert_eq!(v.info(), info);
            prop_assert_eq!(v.bytes(), bytes.as_slice());
        }
        for file in ck.weight_files() {
            let data = std::fs::read(file).unwrap();
            let st = safetensors::SafeTensors::deserialize(&data);
            prop_assert!(st.is_ok(), "{:?}", st.err());
        }
    }
}

/// Issue 15, item 8: a companion that resolves outside the model folder is skipped and reported; one inside the
/// repository folder of a Hugging Face cache snapshot is read.
#[cfg(unix)]
#[test]
fn companions_resolving_outside_the_model_folder_are_skipped() {
    let t = tmp();
    let tensors = sample_tensors(DType::F32);
    let dir = write_checkpoint(t.path().join("m"), &tensors, WriterOptions::default()).unwrap();
    std::fs::write(t.path().join("passwd"), b"root:x:0:0").unwrap();
    std::os::unix::fs::symlink(t.path().join("passwd"), dir.join("tokenizer.json")).unwrap();
    std::fs::write(dir.join("config.json"), b"{}").unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    let (kept, skipped) = ck.companions();
    let names: Vec<_> = kept
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["config.json"]);
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].0.ends_with("tokenizer.json"));
    assert!(
        skipped[0].1.contains("outside the model folder"),
        "{}",
        skipped[0].1
    );
    // A Hugging Face cache snapshot: symlinks into the repository's blobs/ are inside.
    let repo = t.path().join("models--org--name");
    let snap = repo.join("snapshots").join("abc123");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    write_checkpoint(&snap, &tensors, WriterOptions::default()).unwrap();
    std::fs::write(repo.join("blobs").join("f00d"), b"{}").unwrap();
    std::os::unix::fs::symlink("../../blobs/f00d", snap.join("config.json")).unwrap();
    let (kept, skipped) = Checkpoint::open(&snap).unwrap().companions();
    assert_eq!(kept.len(), 1, "{kept:?} {skipped:?}");
    assert!(skipped.is_empty());
}

/// Issue 15, item 5: FIFOs as weight files or indexes are refused without being opened (which would block).
#[cfg(unix)]
#[test]
fn fifos_are_refused_without_blocking() {
    let t = tmp();
    let fifo = t.path().join("model.safetensors");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(ok.success());
    let err = Checkpoint::open(&fifo).unwrap_err();
    assert!(
        matches!(err, Error::NotARegularFile { kind: "FIFO", .. }),
        "{err}"
    );
    // In a folder, a FIFO is not a weight file at all.
    let err = Checkpoint::open(t.path()).unwrap_err();
    assert!(matches!(err, Error::NotACheckpoint { .. }), "{err}");
    let err = check_regular_file(Path::new("/dev/null")).unwrap_err();
    assert!(err.to_string().contains("is a character device"), "{err}");
}

/// Issue 15, item 9: an existing output folder is replaced completely, and leftovers of killed runs are
/// recovered by the next run on the same output.
#[test]
fn replacing_an_output_and_recovering_leftovers() {
    let t = tmp();
    let tensors = sample_tensors(DType::F32);
    let out = t.path().join("out");
    write_checkpoint(&out, &tensors, WriterOptions::default()).unwrap();
    std::fs::write(out.join("stale"), b"x").unwrap();
    let opts = WriterOptions {
        overwrite: true,
        ..WriterOptions::default()
    };
    write_checkpoint(&out, &tensors, opts.clone()).unwrap();
    assert!(!out.join("stale").exists());
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(t.path()), ["out"], "nothing left beside the output");
    // Killed between the two renames of the fallback: the old folder aside, nothing at the output.
    std::fs::rename(&out, t.path().join(".out.old-4194400-0")).unwrap();
    std::fs::create_dir(t.path().join(".out.partial-4194400-1")).unwrap();
    std::fs::create_dir(t.path().join(".other.partial-4194400-1")).unwrap();
    let done = recover_leftovers(&out);
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(
        out.join("model.safetensors").exists(),
        "the old output is back"
    );
    assert_eq!(names(t.path()), [".other.partial-4194400-1", "out"]);
}

#[cfg(target_os = "linux")]
#[test]
fn exchange_swaps_two_folders_or_says_it_cannot() {
    let t = tmp();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    std::fs::write(a.join("x"), b"a").unwrap();
    if crate::exchange::exchange(&a, &b).unwrap() {
        assert!(b.join("x").exists() && !a.join("x").exists());
    }
}

/// Issue 17: the companion walk enters subfolders (sentence-transformers' `1_Pooling/`, `2_Normalize/`), skips
/// hidden ones, reports weights in subfolders and subfolders resolving outside the model folder, does not loop on a
/// symlink to a parent folder, and stops at the depth limit.
#[cfg(unix)]
#[test]
fn issue_17_companion_tree() {
    let t = tmp();
    let tensors = sample_tensors(DType::F32);
    let dir = write_checkpoint(t.path().join("m"), &tensors, WriterOptions::default()).unwrap();
    let put = |rel: &str, bytes: &[u8]| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    put("config.json", b"{}");
    put("modules.json", b"[]");
    put("1_Pooling/config.json", b"{}");
    put("2_Normalize/.keep", b"");
    put(".git/config", b"x");
    put("onnx/model.onnx", b"x");
    put("onnx/config.json", b"{}");
    put("checkpoint-5/model.safetensors", b"x");
    std::fs::create_dir_all(t.path().join("elsewhere")).unwrap();
    std::fs::write(t.path().join("elsewhere/secret.txt"), b"x").unwrap();
    std::os::unix::fs::symlink(t.path().join("elsewhere"), dir.join("linked")).unwrap();
    std::os::unix::fs::symlink("..", dir.join("1_Pooling/up")).unwrap();
    let mut deep = String::new();
    for i in 0..=MAX_COMPANION_DEPTH {
        deep.push_str(&format!("d{i}/"));
    }
    put(&format!("{deep}too-deep.txt"), b"x");
    let ck = Checkpoint::open(&dir).unwrap();
    let (kept, skipped) = ck.companions();
    let names: Vec<String> = kept.iter().map(|p| ck.companion_name(p).unwrap()).collect();
    let want = [
        "1_Pooling/config.json",
        "config.json",
        "modules.json",
        "onnx/config.json",
    ];
    assert_eq!(names, want, "skipped: {skipped:?}");
    let why = |needle: &str| {
        skipped
            .iter()
            .find(|(p, _)| p.to_string_lossy().contains(needle))
            .map(|(_, w)| w.clone())
            .unwrap_or_else(|| panic!("{needle} not reported: {skipped:?}"))
    };
    assert!(why("onnx/model.onnx").contains("weight file in a subfolder"));
    assert!(why("checkpoint-5/model.safetensors").contains("weight file in a subfolder"));
    assert!(why("/linked").contains("outside the model folder"));
    let deepest = format!("d{}/d{}", MAX_COMPANION_DEPTH - 1, MAX_COMPANION_DEPTH);
    assert!(why(&deepest).contains("deeper than"));
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    // Every kept name is one the writer takes.
    for n in &names {
        crate::check_companion_name(n).unwrap();
    }
}

/// `read_hashed_into` gives every tensor's bytes and their hash, across shards, whatever the chunk size, and hands
/// over the chunks in order; a wrong-sized output is refused.
#[test]
fn read_hashed_into_equals_the_mapped_bytes() {
    let dir = tmp();
    let tensors = sample_tensors(DType::BF16);
    let max = (tensors[0].1.len() + tensors[1].1.len()) as u64;
    let out = write_checkpoint(dir.path().join("ck"), &tensors, sharded_opts(max)).unwrap();
    let ck = Checkpoint::open(&out).unwrap();
    assert!(ck.weight_files().len() > 1);
    for v in ck.views() {
        for chunk in [1, 7, 64, 1 << 20] {
            let mut out = vec![0xA5u8; v.bytes().len()];
            let mut seen = Vec::new();
            let h = v
                .read_hashed_into(&mut out, chunk, |at, part| {
                    assert_eq!(at, seen.len());
                    seen.extend_from_slice(part);
                })
                .unwrap();
            assert_eq!(out, v.bytes(), "{} chunk {chunk}", v.info().name);
            assert_eq!(seen, v.bytes());
            assert_eq!(h, v.content_hash());
        }
        let mut short = vec![0u8; v.bytes().len() + 1];
        assert!(v.read_hashed_into(&mut short, 64, |_, _| {}).is_err());
        assert!(v
            .read_hashed_into(&mut vec![0u8; v.bytes().len()], 0, |_, _| {})
            .is_err());
    }
}

/// Element `index` (row-major) of a strided view, the slow way.
fn strided_at<'a>(
    src: &'a [u8],
    shape: &[usize],
    strides: &[usize],
    size: usize,
    index: usize,
) -> &'a [u8] {
    let (mut rest, mut at) = (index, 0);
    for (&d, &s) in shape.iter().zip(strides).rev() {
        at += (rest % d) * s;
        rest /= d;
    }
    &src[at * size..(at + 1) * size]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// `gather` copies a strided view row-major (any permutation of a tensor's strides, a stride of 0, a step over
    /// elements), in pieces that add up to the view.
    #[test]
    fn gather_copies_a_view_row_major(
        shape in proptest::collection::vec(1usize..5, 0..5),
        perm_seed in any::<u64>(),
        zero in any::<bool>(),
        step in 1usize..3,
        size in prop::sample::select(vec![1usize, 2, 4, 8]),
    ) {
        // strides of the row-major layout of `shape` permuted, times `step`; maybe one set to 0
        let n = shape.len();
        let mut order: Vec<usize> = (0..n).collect();
        let mut r = perm_seed;
        for i in (1..n).rev() {
            order.swap(i, (r % (i as u64 + 1)) as usize);
            r /= 7;
        }
        let mut strides = vec![0usize; n];
        let mut s = step;
        for &d in order.iter().rev() {
            strides[d] = s;
            s *= shape[d];
        }
        if zero && n > 0 {
            strides[(perm_seed % n as u64) as usize] = 0;
        }
        let span = 1 + shape.iter().zip(&strides).map(|(&d, &s)| (d - 1) * s).sum::<usize>();
        let src: Vec<u8> = (0..span * size).map(|i| (i * 31 % 251) as u8).collect();
        let mut got = Vec::new();
        let mut buf = Vec::new();
        checkpoint::gather(&src, &shape, &strides, size, &mut buf, &mut |b| {
            got.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        let numel: usize = shape.iter().product();
        let want: Vec<u8> = (0..numel)
            .flat_map(|i| strided_at(&src, &shape, &strides, size, i).to_vec())
            .collect();
        prop_assert_eq!(got, want);
    }
}

/// A view larger than `gather`'s buffer is handed over in pieces under twice its size, which add up to the view,
/// the same for any thread count: a transposed matrix (bands of rows), and one row longer than the buffer (a vector
/// with a step, a wide matrix).
#[test]
fn gather_hands_a_large_view_over_in_bounded_pieces() {
    let (rows, cols) = (1600usize, 1500usize); // 9.6 MB of f32
    let src: Vec<u8> = (0..rows * cols * 4).map(|i| (i % 253) as u8).collect();
    let n = rows * cols;
    for (shape, strides) in [
        (vec![cols, rows], vec![1, cols]),
        (vec![n], vec![1]),
        (vec![1, n], vec![5, 1]),
        (vec![2, n / 2], vec![1, 2]),
    ] {
        let (mut got, mut pieces, mut largest) = (Vec::new(), 0, 0);
        let mut buf = Vec::new();
        checkpoint::gather(&src, &shape, &strides, 4, &mut buf, &mut |b| {
            got.extend_from_slice(b);
            pieces += 1;
            largest = largest.max(b.len());
            Ok(())
        })
        .unwrap();
        // the same bytes whatever the thread count (bands follow it)
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut again = Vec::new();
            pool.install(|| {
                checkpoint::gather(&src, &shape, &strides, 4, &mut Vec::new(), &mut |b| {
                    again.extend_from_slice(b);
                    Ok(())
                })
            })
            .unwrap();
            assert!(again == got, "{shape:?}: {threads} threads");
        }
        let numel: usize = shape.iter().product();
        assert!(
            pieces >= 2 && largest < 2 * checkpoint::GATHER_CHUNK,
            "{shape:?}: {pieces} {largest}"
        );
        assert_eq!(got.len(), numel * 4);
        for i in 0..numel {
            assert_eq!(
                &got[i * 4..i * 4 + 4],
                strided_at(&src, &shape, &strides, 4, i),
                "{shape:?} {i}"
            );
        }
    }
}
