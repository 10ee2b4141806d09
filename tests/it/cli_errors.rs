//! Every failure is one clear line naming the file and tensor, and leaves no partial output.

use std::path::Path;

use ultradelta::io::{write_checkpoint, DType, TensorInfo, WriterOptions};

use crate::support::{apply_cmd, compress_cmd, inspect_json, listing, pair, s, ud_err, ud_ok};

fn compress(base: &Path, ft: &Path, out: &Path) {
    ud_ok(&compress_cmd(base, ft, out, &[]));
}

/// A one-file checkpoint from (name, dtype, shape) with deterministic bytes.
fn write(dir: &Path, tensors: &[(&str, DType, &[usize])]) {
    let data: Vec<(TensorInfo, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, sh)| {
            let info = TensorInfo {
                name: n.to_string(),
                dtype: *d,
                shape: sh.to_vec(),
            };
            let bytes = (0..info.nbytes())
                .map(|i| (i * 31 % 251) as u8 / 4)
                .collect();
            (info, bytes)
        })
        .collect();
    write_checkpoint(dir, &data, WriterOptions::default()).unwrap();
}

#[test]
fn wrong_base_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(&dir.path().join("one"), DType::F32, false, 1);
    let (other_base, _) = pair(&dir.path().join("two"), DType::F32, false, 2);
    let archive = dir.path().join("ft.udelta");
    compress(&base, &ft, &archive);
    let out = dir.path().join("rebuilt");
    let line = ud_err(&apply_cmd(&other_base, &archive, &out, &[]));
    assert!(line.contains("different base"), "{line}");
    assert!(line.contains("ft.udelta"), "{line}");
    assert!(!out.exists());
}

/// A tensor whose shape differs from the base's other than by added rows (those are `cli_vocab`'s), or whose dtype
/// does outside floating point (floats pair across dtypes: `cli_dtypes`), has no delta: it is stored whole, named
/// on the compress report, and rebuilt exactly; the other tensors are compressed as usual.
#[test]
fn a_reshaped_tensor_is_stored_whole_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (b, f) = (dir.path().join("b"), dir.path().join("f"));
    write(
        &b,
        &[
            ("layer.0.attention.self.query.weight", DType::F32, &[64, 64]),
            ("embeddings.word_embeddings.weight", DType::F32, &[30, 64]),
            ("ids", DType::I64, &[4]),
        ],
    );
    write(
        &f,
        &[
            ("layer.0.attention.self.query.weight", DType::F32, &[64, 64]),
            ("embeddings.word_embeddings.weight", DType::F32, &[30, 72]),
            ("ids", DType::I32, &[4]),
        ],
    );
    let archive = dir.path().join("a.udelta");
    let out = ud_ok(&compress_cmd(&b, &f, &archive, &[]));
    let line = out
        .lines()
        .find(|l| l.contains("stored whole, their shape or dtype differs"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("embeddings.word_embeddings.weight (F32 [30, 72]; the base's F32 [30, 64])")
            && line.contains("ids (I32 [4]; the base's I64 [4])"),
        "{line}"
    );
    let ins = inspect_json(&archive);
    let policy = |name: &str| {
        ins["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()["policy"]
            .clone()
    };
    assert_eq!(policy("embeddings.word_embeddings.weight"), "new");
    assert_eq!(policy("ids"), "new");
    assert_eq!(policy("layer.0.attention.self.query.weight"), "compress");
    let rebuilt = dir.path().join("rebuilt");
    ud_ok(&apply_cmd(&b, &archive, &rebuilt, &[]));
    let (ft, got) = (
        ultradelta::io::Checkpoint::open(&f).unwrap(),
        ultradelta::io::Checkpoint::open(&rebuilt).unwrap(),
    );
    for name in ["embeddings.word_embeddings.weight", "ids"] {
        let (w, g) = (ft.view(name).unwrap(), got.view(name).unwrap());
        assert_eq!(g.info(), w.info(), "{name}");
        assert!(g.bytes() == w.bytes(), "{name}");
    }
}

/// A user rule cannot compress (or keep, or drop) a tensor without a delta: refused, naming the tensor and both
/// shapes, nothing written.
#[test]
fn a_rule_on_a_reshaped_tensor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (b, f) = (dir.path().join("b"), dir.path().join("f"));
    write(
        &b,
        &[
            ("layer.0.attention.self.query.weight", DType::F32, &[4, 8]),
            ("x.bias", DType::F32, &[4]),
        ],
    );
    write(
        &f,
        &[
            ("layer.0.attention.self.query.weight", DType::F32, &[8, 4]),
            ("x.bias", DType::F32, &[4]),
        ],
    );
    let out = dir.path().join("a.udelta");
    let line = ud_err(&compress_cmd(
        &b,
        &f,
        &out,
        &["--compress", "layer.0.attention.self.query.weight"],
    ));
    assert!(
        line.contains("layer.0.attention.self.query.weight")
            && line.contains("[8, 4]")
            && line.contains("[4, 8]"),
        "{line}"
    );
    assert!(!out.exists());
}

#[test]
fn compressing_an_integer_tensor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (b, f) = (dir.path().join("b"), dir.path().join("f"));
    write(&b, &[("ids", DType::I64, &[4, 8])]);
    write(&f, &[("ids", DType::I64, &[4, 8])]);
    let line = ud_err(&[
        "compress",
        "--quiet",
        "--compress",
        "ids",
        "--base",
        s(&b),
        "--finetuned",
        s(&f),
        "--output",
        s(&dir.path().join("a.udelta")),
    ]);
    assert!(line.contains("\"ids\"") && line.contains("I64"), "{line}");
}

#[test]
fn unsupported_dtype_names_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b.safetensors");
    // A valid safetensors file whose one tensor has an 8-bit float dtype we do not read.
    let header = br#"{"w":{"dtype":"F8_E4M3","shape":[2,2],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[1, 2, 3, 4]);
    std::fs::write(&b, bytes).unwrap();
    let line = ud_err(&compress_cmd(&b, &b, &dir.path().join("a.udelta"), &[]));
    assert!(
        line.contains("b.safetensors") && line.contains("\"w\"") && line.contains("F8_E4M3"),
        "{line}"
    );
}

#[test]
fn missing_shard_tensor_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _ft) = pair(dir.path(), DType::F32, true, 1);
    // Point one tensor of the index at a shard that does not hold it.
    let idx_path = base.join("model.safetensors.index.json");
    let mut idx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&idx_path).unwrap()).unwrap();
    let first_shard = idx["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    idx["weight_map"]["no.such.tensor"] = first_shard;
    std::fs::write(&idx_path, serde_json::to_string(&idx).unwrap()).unwrap();
    let line = ud_err(&[
        "apply",
        "--quiet",
        "--base",
        s(&base),
        "--output",
        s(&dir.path().join("o")),
        s(&dir.path().join("nothing.udelta")),
    ]);
    assert!(line.contains("no.such.tensor"), "{line}");
}

#[test]
fn corrupt_and_truncated_archives_fail_cleanly_without_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(&dir.path().join("m"), DType::BF16, false, 4);
    let archive = dir.path().join("ft.udelta");
    compress(&base, &ft, &archive);
    let good = std::fs::read(&archive).unwrap();

    // One flipped byte inside the first record: the checksum catches it, naming a tensor.
    let mut bad = good.clone();
    bad[64] ^= 0x5a;
    let corrupt = dir.path().join("corrupt.udelta");
    std::fs::write(&corrupt, &bad).unwrap();
    let out = dir.path().join("out");
    let line = ud_err(&apply_cmd(&base, &corrupt, &out, &[]));
    assert!(
        line.contains("corrupt.udelta") && line.contains("checksum"),
        "{line}"
    );
    assert!(!out.exists());

    // Truncated: fails at open, names the file.
    let trunc = dir.path().join("trunc.udelta");
    std::fs::write(&trunc, &good[..good.len() / 2]).unwrap();
    let line = ud_err(&apply_cmd(&base, &trunc, &out, &[]));
    assert!(line.contains("trunc.udelta"), "{line}");
    assert!(!out.exists());
    let line = ud_err(&["inspect", s(&trunc)]);
    assert!(line.contains("trunc.udelta"), "{line}");
    // Nothing but our own files is left in the folder (no temp files).
    assert_eq!(
        listing(dir.path())
            .iter()
            .filter(|n| n.contains("partial"))
            .count(),
        0,
        "{:?}",
        listing(dir.path())
    );
}

#[test]
fn existing_output_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), DType::F32, false, 1);
    let archive = dir.path().join("ft.udelta");
    std::fs::write(&archive, b"precious").unwrap();
    let line = ud_err(&compress_cmd(&base, &ft, &archive, &[]));
    assert!(
        line.contains("ft.udelta") && line.contains("exists"),
        "{line}"
    );
    assert_eq!(std::fs::read(&archive).unwrap(), b"precious");
    ud_ok(&[
        "compress",
        "--quiet",
        "--force",
        "--base",
        s(&base),
        "--finetuned",
        s(&ft),
        "--output",
        s(&archive),
    ]);
    assert_ne!(std::fs::read(&archive).unwrap(), b"precious");

    let out = dir.path().join("rebuilt");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keepme"), b"x").unwrap();
    let line = ud_err(&apply_cmd(&base, &archive, &out, &[]));
    assert!(
        line.contains("rebuilt") && line.contains("exists"),
        "{line}"
    );
    assert!(out.join("keepme").exists());
    ud_ok(&[
        "apply",
        "--quiet",
        "--force",
        "--base",
        s(&base),
        "--output",
        s(&out),
        s(&archive),
    ]);
    assert!(out.join("model.safetensors").exists());
}

#[test]
fn bad_arguments_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), DType::F32, false, 1);
    let a = dir.path().join("a.udelta");
    let line = ud_err(&[
        "compress",
        "--quiet",
        "--sparsity",
        "1.5",
        "--base",
        s(&base),
        "--finetuned",
        s(&ft),
        "--output",
        s(&a),
    ]);
    assert!(line.contains("sparsity"), "{line}");
    let line = ud_err(&[
        "compress",
        "--quiet",
        "--base",
        s(&dir.path().join("nope")),
        "--finetuned",
        s(&ft),
        "--output",
        s(&a),
    ]);
    assert!(line.contains("nope"), "{line}");
}

/// A base tensor changed where the checkpoint's fingerprint does not look (it samples 64 windows of a large tensor)
/// is caught by the tensor's own hash while `apply` reads it: one line naming the base file, the tensor and the
/// archive, and no output folder.
#[test]
fn base_tensor_changed_outside_the_fingerprint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let name = "layer.0.attention.self.query.weight";
    let ck = |path: &Path, values: &[f32]| {
        let info = TensorInfo {
            name: name.to_string(),
            dtype: DType::F32,
            shape: vec![64, 64],
        };
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_checkpoint(path, &[(info, bytes)], WriterOptions::default()).unwrap();
    };
    let base: Vec<f32> = (0..4096)
        .map(|i| ((i as f32) * 0.37).sin() * 0.05)
        .collect();
    let ft: Vec<f32> = base
        .iter()
        .enumerate()
        .map(|(i, v)| v + ((i as f32) * 1.3).cos() * 0.01)
        .collect();
    let (b, f, archive) = (
        dir.path().join("b"),
        dir.path().join("f"),
        dir.path().join("ft.udelta"),
    );
    ck(&b, &base);
    ck(&f, &ft);
    compress(&b, &f, &archive);
    // Entry 25 (bytes 100..104) lies between the fingerprint's first two windows (0..64 and 259..323).
    let mut changed = base.clone();
    changed[25] += 1.0;
    ck(&dir.path().join("b2"), &changed);
    let out = dir.path().join("rebuilt");
    let line = ud_err(&apply_cmd(&dir.path().join("b2"), &archive, &out, &[]));
    assert!(
        line.contains(name) && line.contains("differs from the base") && line.contains("ft.udelta"),
        "{line}"
    );
    assert!(line.contains("model.safetensors"), "{line}");
    assert!(!out.exists(), "{:?}", listing(dir.path()));
}

/// A NaN in the base's copy of a compressed tensor is named as the base's (file, tensor, element), for UltraDelta
/// and a baseline alike; one in the fine-tune's, as the fine-tune's.
#[test]
fn a_non_finite_value_is_named_in_the_checkpoint_that_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let values = |nan_at: Option<usize>| -> Vec<u8> {
        (0..64 * 64)
            .flat_map(|i| {
                let v = if Some(i) == nan_at {
                    f32::NAN
                } else {
                    (i % 17) as f32 * 0.01
                };
                v.to_le_bytes()
            })
            .collect()
    };
    let info = TensorInfo::new(
        "layer.0.attention.self.query.weight",
        DType::F32,
        vec![64, 64],
    );
    for (nan_in_base, method) in [(true, "ultradelta"), (true, "dare"), (false, "ultradelta")] {
        let case = dir.path().join(format!("{nan_in_base}-{method}"));
        let (b, f) = (case.join("b"), case.join("f"));
        let (bv, fv) = if nan_in_base {
            (values(Some(66)), values(None))
        } else {
            (values(None), values(Some(66)))
        };
        write_checkpoint(&b, &[(info.clone(), bv)], WriterOptions::default()).unwrap();
        write_checkpoint(&f, &[(info.clone(), fv)], WriterOptions::default()).unwrap();
        let out = case.join("a.udelta");
        let line = ud_err(&compress_cmd(&b, &f, &out, &["--method", method]));
        let at_fault = if nan_in_base { &b } else { &f };
        assert!(
            line.contains(s(at_fault)) && line.contains("element 66 is NaN"),
            "{nan_in_base} {method}: {line}"
        );
        assert!(!out.exists());
    }
}

/// A fine-tune none of whose tensors pairs with the base's (most likely the wrong base) is still written, whole, as
/// asked, with a warning naming both checkpoints.
#[test]
fn a_fine_tune_that_pairs_nothing_with_its_base_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let (b, f) = (dir.path().join("b"), dir.path().join("f"));
    write(&b, &[("encoder.layer.0.dense.weight", DType::F32, &[8, 8])]);
    write(
        &f,
        &[("model.layers.0.mlp.up_proj.weight", DType::F32, &[8, 8])],
    );
    let archive = dir.path().join("a.udelta");
    let o = crate::support::ud(&[
        "compress",
        "--base",
        s(&b),
        "--finetuned",
        s(&f),
        "--output",
        s(&archive),
    ]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("warning: none of its tensors (1 in all) pairs"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(s(&b)) && line.contains(s(&f)), "{line}");
    assert!(archive.exists());
    // A fine-tune of the base gets no such warning.
    let (base, ft) = pair(&dir.path().join("pair"), DType::F32, false, 1);
    let o = crate::support::ud(&[
        "compress",
        "--base",
        s(&base),
        "--finetuned",
        s(&ft),
        "--output",
        s(&dir.path().join("b.udelta")),
    ]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("warning: none"));
}
