//! compress → inspect → apply → eval on generated checkpoints, and determinism.

use ultradelta::archive::{ArchiveReader, Policy};
use ultradelta::io::{f32_to_bytes, Checkpoint, DType};
use ultradelta::{compress_tensor, CompressConfig};

use crate::support::{apply_cmd, compress_cmd, inspect_json, pair, s, ud_err, ud_ok};

/// Rebuilds every compressed tensor in memory with the library (no file involved) and
/// checks the `apply` output equals it bit for bit; kept and new tensors must be exact.
fn check_rebuilt_equals_in_memory(
    base: &Checkpoint,
    ft: &Checkpoint,
    archive: &std::path::Path,
    rebuilt: &Checkpoint,
) {
    let reader = ArchiveReader::open(archive).unwrap();
    let m = reader.manifest();
    // The configuration the archive was written with (the family's quantizer resolved).
    let cfg: CompressConfig = serde_json::from_value(m.params.clone()).unwrap();
    let ft_names: Vec<&str> = ft.tensors().iter().map(|t| t.name.as_str()).collect();
    let rb_names: Vec<&str> = rebuilt.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        ft_names, rb_names,
        "the rebuilt model has exactly the fine-tune's tensors"
    );
    let mut compressed = 0;
    for e in &m.tensors {
        let got = rebuilt.view(&e.name).unwrap();
        assert_eq!(got.info().dtype, e.dtype);
        assert_eq!(got.info().shape, e.shape);
        match e.policy {
            Policy::Keep | Policy::New => {
                assert_eq!(
                    got.bytes(),
                    ft.view(&e.name).unwrap().bytes(),
                    "{} must be exact",
                    e.name
                )
            }
            Policy::Drop => assert_eq!(got.bytes(), base.view(&e.name).unwrap().bytes()),
            Policy::Compress => {
                compressed += 1;
                let b = base.view(&e.name).unwrap().to_f32().unwrap();
                let f = ft.view(&e.name).unwrap().to_f32().unwrap();
                let delta: Vec<f32> = f.iter().zip(&b).map(|(f, b)| f - b).collect();
                let rec = compress_tensor(&delta, &e.name, &e.shape, e.rate.unwrap(), &cfg)
                    .unwrap()
                    .record;
                let mut w = b.clone();
                rec.add_delta_into(m.gamma as f32, &mut w).unwrap();
                let mut want = Vec::new();
                f32_to_bytes(&w, e.dtype, &mut want).unwrap();
                assert_eq!(
                    got.bytes(),
                    &want[..],
                    "{}: apply(compress(x)) differs from the in-memory result",
                    e.name
                );
                assert_eq!(rec.kept(), Some(e.kept));
            }
        }
    }
    assert!(compressed > 0);
}

fn roundtrip(dtype: DType, sharded: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), dtype, sharded, 7);
    let archive = dir.path().join("ft.udelta");
    let out = ud_ok(&compress_cmd(&base, &ft, &archive, &[]));
    assert!(out.contains("tensors compressed"), "{out}");

    let ins: serde_json::Value = inspect_json(&archive);
    assert_eq!(ins["format_version"], 2);
    assert_eq!(ins["content_sha256"].as_str().map(str::len), Some(64));
    assert_eq!(ins["method"], "ultradelta");
    for k in ["sparsity", "bits", "step", "seed", "gamma"] {
        assert!(
            !ins["params"][k].is_null(),
            "params.{k} missing: {}",
            ins["params"]
        );
    }
    assert_eq!(
        ins["bytes"].as_u64().unwrap(),
        std::fs::metadata(&archive).unwrap().len()
    );
    let tensors = ins["tensors"].as_array().unwrap();
    assert!(!tensors.is_empty());
    for t in tensors {
        for k in ["name", "shape", "dtype", "policy", "sparsity", "bytes"] {
            assert!(!t[k].is_null(), "tensor field {k} missing: {t}");
        }
    }
    assert!(tensors.iter().any(|t| t["policy"] == "compress"));
    assert!(tensors.iter().any(|t| t["policy"] == "keep"));
    let r = &ins["ratio"];
    for k in ["real", "paper_v2", "paper_v3", "whole_checkpoint"] {
        assert!(r[k].as_f64().unwrap() > 1.0, "ratio.{k}: {r}");
    }
    // The tiny pair is a BERT: the family's 3-bit levels at s = 0.97 (4 bits: 50.9 and 133.3).
    assert_eq!(ins["params"]["bits"], 3);
    assert!((r["paper_v3"].as_f64().unwrap() - 56.3).abs() < 0.1, "{r}");
    assert!((r["paper_v2"].as_f64().unwrap() - 177.8).abs() < 0.1, "{r}");

    let rebuilt = dir.path().join("rebuilt");
    ud_ok(&apply_cmd(&base, &archive, &rebuilt, &[]));
    let (b, f, rb) = (
        Checkpoint::open(&base).unwrap(),
        Checkpoint::open(&ft).unwrap(),
        Checkpoint::open(&rebuilt).unwrap(),
    );
    check_rebuilt_equals_in_memory(&b, &f, &archive, &rb);
    // Companion files come back too.
    assert!(rebuilt.join("config.json").exists());

    let ev: serde_json::Value = serde_json::from_str(&ud_ok(&[
        "eval",
        "--json",
        "--quiet",
        "--base",
        s(&base),
        "--finetuned",
        s(&ft),
        s(&archive),
    ]))
    .unwrap();
    let c = &ev["compressed"];
    assert!(
        c["delta_cosine"].as_f64().unwrap() > 0.0
            && c["delta_cosine"].as_f64().unwrap() <= 1.0 + 1e-9
    );
    assert!(c["weight_cosine"].as_f64().unwrap() > 0.999);
    for t in ev["tensors"].as_array().unwrap() {
        if t["policy"] == "keep" {
            assert_eq!(t["delta_rel_error"].as_f64().unwrap(), 0.0, "{t}");
        }
    }
}

#[test]
fn roundtrip_f32_single_file() {
    roundtrip(DType::F32, false);
}

#[test]
fn roundtrip_f16_sharded() {
    roundtrip(DType::F16, true);
}

#[test]
fn roundtrip_bf16_single_file() {
    roundtrip(DType::BF16, false);
}

#[test]
fn roundtrip_bf16_sharded() {
    roundtrip(DType::BF16, true);
}

#[test]
fn same_seed_same_bytes_whatever_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), DType::BF16, false, 3);
    let mut files = Vec::new();
    for threads in ["1", "2", "1"] {
        let out = dir
            .path()
            .join(format!("t{threads}-{}.udelta", files.len()));
        ud_ok(&[
            "compress",
            "--quiet",
            "--threads",
            threads,
            "--seed",
            "11",
            "--base",
            s(&base),
            "--finetuned",
            s(&ft),
            "--output",
            s(&out),
        ]);
        files.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(
        files[0], files[1],
        "1 and 2 threads give different archives"
    );
    assert_eq!(files[0], files[2]);
    let other = dir.path().join("seed12.udelta");
    ud_ok(&[
        "compress",
        "--quiet",
        "--seed",
        "12",
        "--base",
        s(&base),
        "--finetuned",
        s(&ft),
        "--output",
        s(&other),
    ]);
    assert_ne!(
        files[0],
        std::fs::read(&other).unwrap(),
        "the seed must matter"
    );
}

#[test]
fn several_finetunes_get_tngr_gammas() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft_a) = pair(&dir.path().join("a"), DType::F32, false, 5);
    // A second fine-tune of the same base: same base seed, different delta seed.
    let b_dir = dir.path().join("b");
    let cfg = ultradelta_synth::SynthConfig {
        dtype: DType::F32,
        seed: 5,
        delta_seed: Some(99),
        rel_scale: 3e-3,
        ..ultradelta_synth::SynthConfig::new(ultradelta_synth::Shape::Tiny)
    };
    let (_, ft_b) = ultradelta_synth::write_pair(&b_dir, &cfg, |_, _| {}).unwrap();
    let out = dir.path().join("archives");
    ud_ok(&[
        "compress",
        "--quiet",
        "--base",
        s(&base),
        "--finetuned",
        s(&ft_a),
        "--finetuned",
        s(&ft_b),
        "--output-dir",
        s(&out),
        "--tngr",
    ]);
    let mut gammas = Vec::new();
    for name in ["finetuned.udelta", "finetuned-2.udelta"] {
        let ins: serde_json::Value =
            serde_json::from_str(&ud_ok(&["inspect", "--json", s(&out.join(name))])).unwrap();
        gammas.push(ins["gamma"].as_f64().unwrap());
    }
    // γ_i = T_min / T_i: the larger delta (b, 3x the scale) gets the smaller γ; the smallest gets 1.
    assert_eq!(gammas[0], 1.0, "{gammas:?}");
    assert!(gammas[1] < 0.6 && gammas[1] > 0.1, "{gammas:?}");
}

#[test]
fn closed_stdout_is_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), DType::F32, false, 2);
    let archive = dir.path().join("ft.udelta");
    ud_ok(&compress_cmd(&base, &ft, &archive, &[]));
    // `inspect` prints one line per tensor; `head -1` closes the pipe after the first.
    let script = format!(
        "'{}' inspect '{}' | head -1 >/dev/null",
        env!("CARGO_BIN_EXE_ultradelta"),
        s(&archive)
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn zstd_level_leaves_compressed_and_small_lossless_records_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), DType::BF16, false, 11);
    let (base, ft) = (
        Checkpoint::open(&base).unwrap(),
        Checkpoint::open(&ft).unwrap(),
    );
    let mut kept_bytes = Vec::new();
    for level in ["1", "19"] {
        let archive = dir.path().join(format!("l{level}.udelta"));
        ud_ok(&[
            "compress",
            "--quiet",
            "--zstd-level",
            level,
            "--base",
            s(base.path()),
            "--finetuned",
            s(ft.path()),
            "--output",
            s(&archive),
        ]);
        let ins: serde_json::Value = inspect_json(&archive);
        assert_eq!(ins["params"]["zstd_level"], level.parse::<i64>().unwrap());
        let sum = |policy: &str| -> u64 {
            ins["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["policy"] == policy)
                .map(|t| t["bytes"].as_u64().unwrap())
                .sum()
        };
        kept_bytes.push((sum("compress"), sum("keep")));
        let rebuilt = dir.path().join(format!("rebuilt-{level}"));
        ud_ok(&[
            "apply",
            "--quiet",
            "--base",
            s(base.path()),
            "--output",
            s(&rebuilt),
            s(&archive),
        ]);
        check_rebuilt_equals_in_memory(&base, &ft, &archive, &Checkpoint::open(&rebuilt).unwrap());
    }
    // The compressed tensors' records do not depend on the level. The lossless ones of this pair are all small
    // (norms and biases, at most `SMALL_LOSSLESS_BYTES` each), which are compressed at level 19 or more whatever
    // the archive's level: the same bytes at 1 and 19 (larger ones follow the level: the archive crate's
    // `larger_lossless_records_follow_the_level`).
    let ins: serde_json::Value = inspect_json(&dir.path().join("l1.udelta"));
    for t in ins["tensors"].as_array().unwrap() {
        if t["policy"] == "keep" {
            let numel: u64 = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .product();
            assert!(
                numel * 2 <= ultradelta::archive::SMALL_LOSSLESS_BYTES as u64,
                "{t}"
            );
        }
    }
    assert_eq!(kept_bytes[0].0, kept_bytes[1].0);
    assert_eq!(kept_bytes[0].1, kept_bytes[1].1);
    assert!(kept_bytes[0].1 > 0);
    let line = ud_err(&[
        "compress",
        "--quiet",
        "--zstd-level",
        "0",
        "--base",
        s(base.path()),
        "--finetuned",
        s(ft.path()),
        "--output",
        s(&dir.path().join("bad.udelta")),
    ]);
    // The library names the configuration field, the CLI adds the flag.
    assert!(
        line.contains("zstd_level must be in 1..=22, got 0")
            && line.contains("(set by --zstd-level)"),
        "{line}"
    );
    assert!(!dir.path().join("bad.udelta").exists());
}
