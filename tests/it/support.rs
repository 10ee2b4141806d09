//! Shared helpers: running the binary and making checkpoints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ultradelta::io::DType;
use ultradelta_synth::{Shape, SynthConfig};

/// Runs `ultradelta` with `args`.
pub fn ud(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ultradelta"))
        .args(args)
        .output()
        .expect("the ultradelta binary runs")
}

/// Runs `ultradelta` and asserts success; returns stdout.
pub fn ud_ok(args: &[&str]) -> String {
    let out = ud(args);
    assert!(
        out.status.success(),
        "ultradelta {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs `ultradelta`, asserts failure with exactly one line on stderr, returns that line.
pub fn ud_err(args: &[&str]) -> String {
    let out = ud(args);
    assert!(
        !out.status.success(),
        "ultradelta {} unexpectedly succeeded",
        args.join(" ")
    );
    let err = String::from_utf8(out.stderr).expect("utf-8 stderr");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

/// A path as &str (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Writes a tiny synthetic BERT pair under `dir` and returns (base, finetuned).
pub fn pair(dir: &Path, dtype: DType, sharded: bool, seed: u64) -> (PathBuf, PathBuf) {
    let mut cfg = SynthConfig {
        dtype,
        seed,
        ..SynthConfig::new(Shape::Tiny)
    };
    if sharded {
        cfg.max_shard_bytes = 64 * 1024;
    }
    ultradelta_synth::write_pair(dir, &cfg, |_, _| {}).expect("synthetic pair")
}

/// Every entry of a directory, recursively (to check nothing half-written is left).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        out.push(p.file_name().unwrap().to_string_lossy().into_owned());
        if p.is_dir() {
            out.extend(
                listing(&p)
                    .into_iter()
                    .map(|n| format!("{}/{n}", p.file_name().unwrap().to_string_lossy())),
            );
        }
    }
    out.sort();
    out
}

/// `ultradelta compress --quiet --base BASE --finetuned FT --output OUT EXTRA…`.
pub fn compress_cmd<'a>(
    base: &'a Path,
    ft: &'a Path,
    out: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let paths = ["--base", s(base), "--finetuned", s(ft), "--output", s(out)];
    [&["compress", "--quiet"][..], &paths, extra].concat()
}

/// `ultradelta apply --quiet --base BASE --output OUT ARCHIVE EXTRA…`.
pub fn apply_cmd<'a>(
    base: &'a Path,
    archive: &'a Path,
    out: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    [
        &[
            "apply",
            "--quiet",
            "--base",
            s(base),
            "--output",
            s(out),
            s(archive),
        ][..],
        extra,
    ]
    .concat()
}

/// `ultradelta inspect --json ARCHIVE`, parsed.
pub fn inspect_json(archive: &Path) -> serde_json::Value {
    serde_json::from_str(&ud_ok(&["inspect", "--json", s(archive)])).unwrap()
}

/// The record kinds of the compressed tensors in an `inspect --json` report.
pub fn compressed_kinds(ins: &serde_json::Value) -> Vec<&str> {
    ins["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["policy"] == "compress")
        .map(|t| t["kind"].as_str().unwrap())
        .collect()
}

/// Copies `from`'s files other than weight files (config, tokenizer) into `to`.
pub fn copy_companions(from: &Path, to: &Path) {
    for f in std::fs::read_dir(from).unwrap() {
        let p = f.unwrap().path();
        if p.is_file() && p.extension().is_some_and(|e| e != "safetensors") {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// The name of the first tensor of `archive`'s index that `pick` accepts.
pub fn first_entry(
    archive: &Path,
    pick: impl Fn(&ultradelta::archive::TensorEntry) -> bool,
) -> String {
    let reader = ultradelta::archive::ArchiveReader::open(archive).unwrap();
    let name = reader
        .manifest()
        .tensors
        .iter()
        .find(|e| pick(e))
        .map(|e| e.name.clone());
    name.expect("a tensor the test needs")
}
