//! Ctrl-C and SIGTERM: the work stops at the next tensor, the partial output is removed, the exit status says
//! which signal (128 + its number), and an output that existed is left as it was; `batch` keeps its finished jobs
//! and starts no other.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ultradelta::io::DType;
use ultradelta_synth::{Shape, SynthConfig};

use crate::cli_batch::{write_manifest, SCHEDULER_VARS};
use crate::support::{listing, s};

/// Starts `compress` with a budget search on a MiniLM-sized pair, sends `signal` once the search has begun (its
/// note is on stderr), and returns the exit code and the whole stderr.
fn interrupted_compress(
    base: &std::path::Path,
    ft: &std::path::Path,
    out: &std::path::Path,
    extra: &[&str],
    signal: &str,
) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ultradelta"))
        .args([
            "compress",
            "--base",
            s(base),
            "--finetuned",
            s(ft),
            "-o",
            s(out),
        ])
        .args(["--target-ratio", "150"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the ultradelta binary runs");
    let mut err = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        err.push_str(&line);
        err.push('\n');
        if line.contains("searching the ultradelta parameter") {
            let sent = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap();
            assert!(sent.success());
            break;
        }
    }
    for line in lines {
        err.push_str(&line.unwrap());
        err.push('\n');
    }
    (child.wait().unwrap().code(), err)
}

#[test]
fn a_signal_stops_compress_or_batch_and_leaves_nothing_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        dtype: DType::F32,
        ..SynthConfig::new(Shape::BertMini)
    };
    let (base, ft) =
        ultradelta_synth::write_pair(&dir.path().join("models"), &cfg, |_, _| {}).unwrap();
    compress_is_stopped(&base, &ft, &dir.path().join("out"));
    batch_is_stopped(&base, &ft, &dir.path().join("batch"));
}

fn compress_is_stopped(base: &std::path::Path, ft: &std::path::Path, out_dir: &std::path::Path) {
    std::fs::create_dir(out_dir).unwrap();
    let archive = out_dir.join("a.udelta");

    let (code, err) = interrupted_compress(base, ft, &archive, &[], "-INT");
    assert_eq!(code, Some(130), "{err}");
    assert!(
        err.contains("ultradelta: interrupted: stopping at the next tensor"),
        "{err}"
    );
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: interrupted by SIGINT (Ctrl-C): stopped before it finished; nothing was written"),
        "{err}"
    );
    assert_eq!(listing(out_dir), Vec::<String>::new(), "{err}");

    // SIGTERM (a scheduler's) during a forced rewrite: the archive that was there stays.
    std::fs::write(&archive, b"an earlier archive").unwrap();
    let (code, err) = interrupted_compress(base, ft, &archive, &["--force"], "-TERM");
    assert_eq!(code, Some(143), "{err}");
    assert!(err.contains("error: interrupted by SIGTERM"), "{err}");
    assert_eq!(std::fs::read(&archive).unwrap(), b"an earlier archive");
    assert_eq!(listing(out_dir), vec!["a.udelta".to_string()]);
}

/// SIGTERM (a scheduler's time limit) while the second of three jobs runs: the first job's archive and record
/// stay, the second leaves nothing, the third does not start; the same command again finishes the rest.
fn batch_is_stopped(base: &std::path::Path, ft: &std::path::Path, dir: &std::path::Path) {
    std::fs::create_dir(dir).unwrap();
    // The second job searches a budget (seconds, where the others take a fraction of one): the signal, sent when
    // the first job is reported done, finds it under way.
    let options = [
        serde_json::json!({"seed": 0}),
        serde_json::json!({"seed": 1, "target-ratio": 150}),
        serde_json::json!({"seed": 2}),
    ];
    let lines: Vec<serde_json::Value> = options
        .iter()
        .enumerate()
        .map(|(k, o)| {
            serde_json::json!({
                "base": base, "finetuned": ft, "output": format!("a{k}.udelta"), "options": o
            })
        })
        .collect();
    let manifest = write_manifest(dir, &lines);
    let run = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ultradelta"));
        cmd.args(["batch", s(&manifest), "--jobs", "1"]);
        for v in SCHEDULER_VARS {
            cmd.env_remove(v);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the ultradelta binary runs")
    };
    let mut child = run();
    let mut out = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains(" done: ") && !out.contains(" done: ") {
            let sent = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(sent.success());
        }
        out.push_str(&line);
        out.push('\n');
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(143), "{out}{err}");
    assert!(
        out.contains("1 done, 0 skipped (already done), 0 failed, 2 interrupted"),
        "{out}{err}"
    );
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with("error: interrupted by SIGTERM: the jobs under way stopped"),
        "{err}"
    );
    assert_eq!(
        listing(dir),
        ["a0.udelta", "a0.udelta.result.json", "hub.jsonl"].map(String::from),
        "{out}{err}"
    );
    let o = run().wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("2 done, 1 skipped (already done), 0 failed in"),
        "{out}"
    );
}
