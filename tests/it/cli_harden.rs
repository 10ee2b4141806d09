//! Issue 15's fault classes, at the command line: non-regular inputs, output errors, out-of-range parameters,
//! outputs that are inputs, companions from outside the model, atomic replacement, and `verify`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ultradelta::io::{write_checkpoint, DType, TensorInfo, WriterOptions};

use crate::support::{apply_cmd, compress_cmd, inspect_json, listing, pair, s, ud, ud_err, ud_ok};

/// Runs `ultradelta args` with stdout/stderr redirected to the given files; fails the test (and kills the child)
/// if it runs longer than 60 s (a FIFO that blocks).
fn run_with(args: &[&str], stdout: Stdio, stderr: Stdio) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ultradelta"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("the ultradelta binary runs");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ultradelta {} blocked for 60 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mkfifo(p: &Path) {
    let ok = Command::new("mkfifo").arg(p).status().expect("mkfifo runs");
    assert!(ok.success());
}

fn compressed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (base, ft) = pair(&dir.join("pair"), DType::F32, false, 7);
    let archive = dir.join("ft.udelta");
    ud_ok(&compress_cmd(&base, &ft, &archive, &[]));
    (base, ft, archive)
}

#[test]
fn fifos_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _ft, archive) = compressed(dir.path());
    let fifo = dir.path().join("model.safetensors");
    mkfifo(&fifo);
    let out = dir.path().join("out.udelta");
    for args in [
        compress_cmd(&base, &fifo, &out, &[]),
        vec![
            "eval",
            "--base",
            s(&base),
            "--finetuned",
            s(&fifo),
            s(&archive),
        ],
        apply_cmd(&base, &fifo, &dir.path().join("rebuilt"), &[]),
        vec!["inspect", s(&fifo)],
        vec!["verify", s(&fifo)],
    ] {
        let o = run_with(&args, Stdio::piped(), Stdio::piped());
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("is a FIFO, not a regular file"),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert!(!out.exists());
    assert!(!dir.path().join("rebuilt").exists());
}

#[test]
fn full_or_closed_stdout_and_stderr_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft, archive) = compressed(dir.path());
    let full = || Stdio::from(std::fs::File::create("/dev/full").unwrap());
    // inspect > /dev/full: one error line, status 1, no panic.
    let o = run_with(&["inspect", s(&archive)], full(), Stdio::piped());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.starts_with("error: writing to stdout:"), "{err}");
    // compress 2> /dev/full (notes and progress go to stderr): it still succeeds.
    let out = dir.path().join("again.udelta");
    let args = [
        "compress",
        "--base",
        s(&base),
        "--finetuned",
        s(&ft),
        "--output",
        s(&out),
    ];
    let o = run_with(&args, Stdio::piped(), full());
    assert_eq!(o.status.code(), Some(0));
    assert!(out.exists());
    // apply > /dev/full after the folder was written: status 1, the folder is complete.
    let rebuilt = dir.path().join("rebuilt");
    let o = run_with(
        &apply_cmd(&base, &archive, &rebuilt, &[]),
        full(),
        Stdio::piped(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(rebuilt.join("model.safetensors").exists());
    // A closed pipe: status 0, nothing on stderr.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ultradelta"))
        .args(["inspect", s(&archive)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
    assert!(o.status.code() == Some(0), "{o:?}");
    // Help and usage errors to a full stdout.
    let o = run_with(&["--help"], full(), Stdio::piped());
    assert_eq!(o.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
}

#[test]
fn numeric_options_must_be_finite_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(&dir.path().join("pair"), DType::F32, false, 7);
    let out = dir.path().join("x.udelta");
    for (flag, value) in [
        ("--gamma", "1e39"),
        ("--rescale-factor", "1e39"),
        ("--gamma", "1e36"), // finite alone, Inf times the largest rescale factor 1000
    ] {
        let line = ud_err(&compress_cmd(&base, &ft, &out, &[flag, value]));
        assert!(line.contains("32-bit floats"), "{flag} {value}: {line}");
        assert!(line.contains(&format!("(set by {flag})")), "{line}");
        assert!(!out.exists());
    }
}

#[test]
fn an_output_that_is_an_input_is_refused_even_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft, archive) = compressed(dir.path());
    let weights = ft.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let link = dir.path().join("link.udelta");
    std::os::unix::fs::symlink(&weights, &link).unwrap();
    let hard = dir.path().join("hard.udelta");
    std::fs::hard_link(&weights, &hard).unwrap();
    for out in [
        &weights,
        &ft,
        &link,
        &hard,
        &base,
        &dir.path().to_path_buf(),
    ] {
        let line = ud_err(&compress_cmd(&base, &ft, out, &["--force"]));
        assert!(line.contains("choose another output path"), "{line}");
    }
    for out in [
        &base,
        &archive,
        &base.join("model.safetensors"),
        &base.join("sub"),
    ] {
        let line = ud_err(&apply_cmd(&base, &archive, out, &["--force"]));
        assert!(line.contains("choose another output path"), "{line}");
    }
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    assert!(archive.is_file());
    assert!(base.join("model.safetensors").is_file());
    assert!(listing(&base).iter().all(|n| !n.contains("partial")));
}

#[test]
fn companions_resolving_outside_the_model_folder_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(&dir.path().join("pair"), DType::F32, false, 7);
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, b"not part of the model").unwrap();
    std::os::unix::fs::symlink(&secret, ft.join("tokenizer.json")).unwrap();
    let out = dir.path().join("ft.udelta");
    let o = ud(&[
        "compress",
        "--base",
        s(&base),
        "--finetuned",
        s(&ft),
        "--output",
        s(&out),
    ]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("skipping companion file") && err.contains("outside the model folder"),
        "{err}"
    );
    let files = inspect_json(&out)["files"].clone();
    assert!(!files.to_string().contains("tokenizer.json"), "{files}");
}

#[test]
fn apply_force_replaces_atomically_and_recovers_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft, archive) = compressed(dir.path());
    let out = dir.path().join("rebuilt");
    ud_ok(&apply_cmd(&base, &archive, &out, &[]));
    let first = std::fs::read(out.join("model.safetensors")).unwrap();
    std::fs::write(out.join("stale.txt"), b"old").unwrap();
    ud_ok(&apply_cmd(&base, &archive, &out, &["--force"]));
    assert!(!out.join("stale.txt").exists(), "replaced");
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), first);
    // A run killed between moving the old folder aside and renaming the new one in (pids above Linux's
    // pid_max are never running): the next run puts the old folder back, removes the temp folder, then replaces.
    std::fs::rename(&out, dir.path().join(".rebuilt.old-4194400-0")).unwrap();
    std::fs::create_dir(dir.path().join(".rebuilt.partial-4194400-1")).unwrap();
    std::fs::write(dir.path().join(".ft.udelta.partial-4194401"), b"half").unwrap();
    let line = ud_err(&apply_cmd(&base, &archive, &out, &[]));
    assert!(
        line.contains("output exists"),
        "the old output is back: {line}"
    );
    assert!(out.join("model.safetensors").exists());
    ud_ok(&apply_cmd(&base, &archive, &out, &["--force"]));
    let left: Vec<String> = listing(dir.path())
        .into_iter()
        .filter(|n| n.starts_with(".rebuilt."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The archive writer cleans its own leftovers on the next run on the same output.
    ud_ok(&compress_cmd(&base, &ft, &archive, &["--force"]));
    assert!(!dir.path().join(".ft.udelta.partial-4194401").exists());
}

#[test]
fn nine_dimensional_tensor_is_refused_before_publishing() {
    let dir = tempfile::tempdir().unwrap();
    let t = |name: &str, shape: &[usize], fill: u8| {
        let info = TensorInfo::new(name, DType::F32, shape.to_vec());
        let bytes = vec![fill; info.nbytes()];
        (info, bytes)
    };
    let base = dir.path().join("base");
    let ft = dir.path().join("ft");
    write_checkpoint(&base, &[t("w", &[4, 4], 0)], WriterOptions::default()).unwrap();
    write_checkpoint(
        &ft,
        &[
            t("w", &[4, 4], 1),
            t("nine", &[1, 1, 1, 1, 1, 1, 1, 1, 2], 1),
        ],
        WriterOptions::default(),
    )
    .unwrap();
    let out = dir.path().join("x.udelta");
    let line = ud_err(&compress_cmd(&base, &ft, &out, &[]));
    assert!(line.contains("\"nine\""), "{line}");
    assert!(
        line.contains("9 dimensions (the format's limit is 8)"),
        "{line}"
    );
    assert!(!out.exists());
    assert!(listing(dir.path()).iter().all(|n| !n.contains(".partial")));
}

#[test]
fn verify_decodes_everything_and_tells_failures_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _ft, archive) = compressed(dir.path());
    let before = listing(dir.path());
    let out = ud_ok(&["verify", s(&archive)]);
    assert!(out.contains(": OK: "), "{out}");
    let sha = Command::new("sha256sum").arg(&archive).output().unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout);
    let sha = sha.split_whitespace().next().unwrap();
    assert!(out.contains(&format!("sha256 of the file: {sha}")), "{out}");
    // The content SHA-256 stored in the trailer: the SHA-256 of every byte but the last 40 (the digest and the
    // trailer magic); verify checks and prints it, inspect prints it as stored (text and JSON).
    let bytes = std::fs::read(&archive).unwrap();
    let content = dir.path().join("content.bin");
    std::fs::write(&content, &bytes[..bytes.len() - 40]).unwrap();
    let csha = Command::new("sha256sum").arg(&content).output().unwrap();
    std::fs::remove_file(&content).unwrap();
    let csha = String::from_utf8_lossy(&csha.stdout);
    let csha = csha.split_whitespace().next().unwrap().to_string();
    assert_ne!(csha, sha);
    assert!(
        out.contains(&format!("content sha256: {csha} (checked")),
        "{out}"
    );
    let ins = ud_ok(&["inspect", s(&archive)]);
    assert!(
        ins.contains(&format!("content sha256: {csha} (as stored")),
        "{ins}"
    );
    let ins = ud_ok(&["inspect", "--json", s(&archive)]);
    let ins: serde_json::Value = serde_json::from_str(&ins).unwrap();
    assert_eq!(ins["content_sha256"], csha.as_str());
    let vj = ud_ok(&["verify", "--json", s(&archive)]);
    let vj: serde_json::Value = serde_json::from_str(&vj).unwrap();
    assert_eq!(vj["report"]["content_sha256"], csha.as_str());
    // A changed digest: every record still checks, the content does not hash to it: corrupt (3), one line.
    let mut tampered = bytes.clone();
    let n = tampered.len();
    tampered[n - 20] ^= 0x01;
    let tp = dir.path().join("tampered.udelta");
    std::fs::write(&tp, &tampered).unwrap();
    let o = ud(&["verify", s(&tp)]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("tampered.udelta: content SHA-256 mismatch: the trailer says"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    std::fs::remove_file(&tp).unwrap();
    let out = ud_ok(&["verify", "--base", s(&base), s(&archive)]);
    assert!(out.contains("applies to"), "{out}");
    assert_eq!(listing(dir.path()), before, "verify writes nothing");
    // Corrupt: one byte of the first record flipped (its checksum no longer matches).
    let mut bytes = std::fs::read(&archive).unwrap();
    bytes[20] ^= 0x40;
    let bad = dir.path().join("bad.udelta");
    std::fs::write(&bad, &bytes).unwrap();
    let o = ud(&["verify", s(&bad)]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    // Wrong base.
    let (other, _) = pair(&dir.path().join("other"), DType::F32, false, 8);
    let o = ud(&["verify", "--base", s(&other), s(&archive)]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("different base"));
    // I/O: a missing archive.
    let o = ud(&["verify", s(&dir.path().join("missing.udelta"))]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
}

/// Issue 17: `apply` carries the model folder's whole companion tree (sentence-transformers' `1_Pooling/`), never
/// weights from a subfolder; an archive whose companion names would write a hidden file or weights is refused
/// before anything is written.
#[test]
fn issue_17_companion_tree_is_carried_and_hostile_names_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(&dir.path().join("pair"), DType::F32, false, 7);
    std::fs::create_dir_all(ft.join("1_Pooling")).unwrap();
    std::fs::write(
        ft.join("1_Pooling/config.json"),
        b"{\"pooling_mode_mean_tokens\": true}",
    )
    .unwrap();
    std::fs::write(ft.join("modules.json"), b"[]").unwrap();
    std::fs::create_dir_all(ft.join("onnx")).unwrap();
    std::fs::write(ft.join("onnx/model.onnx"), b"weights again").unwrap();
    let archive = dir.path().join("ft.udelta");
    // Not --quiet: the note about the skipped weight file is the point.
    let o = ud(&[
        "compress",
        "--base",
        s(&base),
        "--finetuned",
        s(&ft),
        "--output",
        s(&archive),
    ]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("weight file in a subfolder"), "{err}");
    let out = dir.path().join("rebuilt");
    ud_ok(&apply_cmd(&base, &archive, &out, &[]));
    assert_eq!(
        std::fs::read(out.join("1_Pooling/config.json")).unwrap(),
        b"{\"pooling_mode_mean_tokens\": true}"
    );
    assert!(out.join("modules.json").is_file());
    assert!(!out.join("onnx").exists());

    // Hostile archives: names the format allows but a model folder may not hold.
    let fingerprint = ultradelta::io::Checkpoint::open(&base)
        .unwrap()
        .fingerprint();
    for name in [".git/config", "x/model.safetensors", "a/.hidden"] {
        let bad = dir.path().join("bad.udelta");
        let mut w = ultradelta::archive::ArchiveWriter::create_with(
            &bad,
            ultradelta::archive::WriterOptions {
                overwrite: true,
                ..Default::default()
            },
        )
        .unwrap();
        w.add_file(name, b"x").unwrap();
        w.finish(
            "ultradelta",
            serde_json::json!({}),
            1.0,
            &fingerprint,
            ultradelta::archive::FinetunedInfo::default(),
        )
        .unwrap();
        let out = dir.path().join("hostile");
        let err = ud_err(&apply_cmd(&base, &bad, &out, &[]));
        assert!(
            err.contains("cannot be rebuilt") && err.contains(name),
            "{name}: {err}"
        );
        assert!(!out.exists(), "{name}: nothing written");
        let o = ud(&["verify", "--quiet", s(&bad)]);
        assert_eq!(o.status.code(), Some(3), "{name}: verify says corrupt");
    }
}

/// A tokenizer-sized file of distinct lines (a general-purpose compressor shrinks it about 3-fold).
fn vocab_file(lines: usize, salt: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut x = salt;
    for i in 0..lines {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(format!("\"tok{i}_{:x}\": {i},\n", x >> 17).as_bytes());
    }
    out
}

/// Companion files the base model also has are stored against the base's file of the same name (kind
/// `file-zstd-base`): a copy costs a few hundred bytes, an edited copy little more; `apply` rebuilds them byte for
/// byte, and refuses, before writing anything, a base whose file is missing or different; `--self-contained`
/// stores them whole and then applies without the base's files.
#[test]
fn companion_files_are_stored_against_the_base_and_checked_on_apply() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(&dir.path().join("pair"), DType::F32, false, 11);
    let vocab = vocab_file(20_000, 1);
    let mut edited = vocab.clone();
    edited.splice(5000..5000, b"\"[NEW]\": 20000,\n".iter().copied());
    for (d, tok) in [(&base, &vocab), (&ft, &edited)] {
        std::fs::write(d.join("vocab.txt"), &vocab).unwrap();
        std::fs::write(d.join("tokenizer.json"), tok).unwrap();
    }
    std::fs::write(ft.join("only_in_ft.txt"), vocab_file(50, 2)).unwrap();
    // The base's JSON written compact, the fine-tune's the same pretty-printed (kind 14).
    let compact: Vec<u8> = std::iter::once(b'{')
        .chain(vocab.strip_suffix(b",\n").unwrap().iter().copied())
        .chain(*b"}")
        .filter(|b| !b" \n".contains(b))
        .collect();
    let pretty = ultradelta::archive::json_layout::relayout(&compact, 2, u64::MAX).unwrap();
    std::fs::write(base.join("layout.json"), &compact).unwrap();
    std::fs::write(ft.join("layout.json"), &pretty).unwrap();
    let archive = dir.path().join("ft.udelta");
    let whole = dir.path().join("whole.udelta");
    ud_ok(&compress_cmd(&base, &ft, &archive, &[]));
    ud_ok(&compress_cmd(&base, &ft, &whole, &["--self-contained"]));
    let files = |a: &Path| {
        let r = ultradelta::archive::ArchiveReader::open(a).unwrap();
        r.manifest()
            .files
            .iter()
            .map(|f| (f.name.clone(), (f.length, f.base.is_some())))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (against, plain) = (files(&archive), files(&whole));
    assert!(
        against["vocab.txt"].1 && against["vocab.txt"].0 < 300,
        "{against:?}"
    );
    assert!(
        against["tokenizer.json"].1 && against["tokenizer.json"].0 < 600,
        "{against:?}"
    );
    assert!(!against["only_in_ft.txt"].1, "{against:?}");
    assert!(
        against["layout.json"].1 && against["layout.json"].0 < 600,
        "{against:?}"
    );
    assert!(plain.values().all(|&(_, b)| !b), "{plain:?}");
    assert!(plain["vocab.txt"].0 > 100_000, "{plain:?}");
    let saved =
        std::fs::metadata(&whole).unwrap().len() - std::fs::metadata(&archive).unwrap().len();
    assert!(saved > 200_000, "{saved}");
    // inspect says where every byte of the file goes.
    let ins: serde_json::Value =
        serde_json::from_str(&ud_ok(&["inspect", "--json", s(&archive)])).unwrap();
    let b = &ins["breakdown"];
    let part = |k: &str| b[k].as_u64().unwrap();
    let parts = [
        "compressed_tensors",
        "kept_tensors",
        "new_tensors",
        "companion_files",
        "index_and_framing",
    ];
    assert_eq!(
        parts.iter().map(|k| part(k)).sum::<u64>(),
        std::fs::metadata(&archive).unwrap().len(),
        "{b}"
    );
    assert_eq!(
        part("companion_files"),
        against.values().map(|&(l, _)| l).sum::<u64>(),
        "{b}"
    );
    assert!(
        part("compressed_tensors") > 0 && part("index_and_framing") > 80,
        "{b}"
    );
    let human = ud_ok(&["inspect", s(&archive)]);
    assert!(
        human.contains(&format!("{} companion files", part("companion_files"))),
        "{human}"
    );

    // Rebuilt byte for byte; verify with the base reads them, without it checks them.
    let out = dir.path().join("rebuilt");
    ud_ok(&apply_cmd(&base, &archive, &out, &[]));
    for f in [
        "vocab.txt",
        "tokenizer.json",
        "only_in_ft.txt",
        "config.json",
        "layout.json",
    ] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(ft.join(f)).unwrap(),
            "{f}"
        );
    }
    ud_ok(&["verify", "--quiet", s(&archive)]);
    ud_ok(&["verify", "--quiet", "--base", s(&base), s(&archive)]);

    // The base's file changed, or missing: refused before anything is written, naming the file; verify --base
    // says wrong base (exit 4).
    let changed = dir.path().join("changed");
    std::fs::create_dir_all(&changed).unwrap();
    for e in std::fs::read_dir(&base).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), changed.join(e.file_name())).unwrap();
    }
    let mut v = vocab.clone();
    v[100] ^= 1;
    std::fs::write(changed.join("vocab.txt"), &v).unwrap();
    let out2 = dir.path().join("out2");
    let err = ud_err(&apply_cmd(&changed, &archive, &out2, &[]));
    assert!(
        err.contains("\"vocab.txt\"")
            && err.contains("has xxh3")
            && err.contains("--self-contained"),
        "{err}"
    );
    assert!(!out2.exists());
    let o = ud(&["verify", "--quiet", "--base", s(&changed), s(&archive)]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    std::fs::remove_file(changed.join("vocab.txt")).unwrap();
    let err = ud_err(&apply_cmd(&changed, &archive, &out2, &[]));
    assert!(err.contains("has no companion file of that name"), "{err}");
    assert!(!out2.exists());
    // The self-contained archive applies with the same base.
    ud_ok(&apply_cmd(&changed, &whole, &out2, &[]));
    assert_eq!(std::fs::read(out2.join("vocab.txt")).unwrap(), vocab);
}
