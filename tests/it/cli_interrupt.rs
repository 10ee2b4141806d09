//! Ctrl-C and SIGTERM: the work stops at the next tensor, the partial output is removed, the exit status says
//! which signal (128 + its number), and an output that existed is left as it was.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ultradelta::io::DType;
use ultradelta_synth::{Shape, SynthConfig};

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
fn a_signal_stops_compress_and_leaves_nothing_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        dtype: DType::F32,
        ..SynthConfig::new(Shape::BertMini)
    };
    let (base, ft) =
        ultradelta_synth::write_pair(&dir.path().join("models"), &cfg, |_, _| {}).unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let archive = out_dir.join("a.udelta");

    let (code, err) = interrupted_compress(&base, &ft, &archive, &[], "-INT");
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
    assert_eq!(listing(&out_dir), Vec::<String>::new(), "{err}");

    // SIGTERM (a scheduler's) during a forced rewrite: the archive that was there stays.
    std::fs::write(&archive, b"an earlier archive").unwrap();
    let (code, err) = interrupted_compress(&base, &ft, &archive, &["--force"], "-TERM");
    assert_eq!(code, Some(143), "{err}");
    assert!(err.contains("error: interrupted by SIGTERM"), "{err}");
    assert_eq!(std::fs::read(&archive).unwrap(), b"an earlier archive");
    assert_eq!(listing(&out_dir), vec!["a.udelta".to_string()]);
}
