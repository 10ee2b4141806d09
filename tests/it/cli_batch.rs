//! `ultradelta batch`: manifests, sharding, the scheduler's environment, skipping finished jobs, failure
//! isolation, result records, `--report`, and archives byte-identical to `compress`'s.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use ultradelta::io::DType;
use ultradelta_synth::{Shape, SynthConfig};

use crate::support::{compress_cmd, s, ud_ok};

/// Scheduler variables a test must not inherit from the machine running it (CI may itself run under Slurm).
pub(crate) const SCHEDULER_VARS: [&str; 7] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
    "JOB_COMPLETION_INDEX",
    "SLURM_JOB_ID",
];

/// Runs `ultradelta batch ARGS` with exactly the scheduler variables `env`.
fn batch(args: &[&str], env: &[(&str, &str)]) -> Output {
    batch_in(None, args, env)
}

/// [`batch`] in the working directory `cwd`.
fn batch_in(cwd: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ultradelta"));
    cmd.arg("batch").args(args);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    for v in SCHEDULER_VARS {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the ultradelta binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn batch_ok(args: &[&str]) -> String {
    let o = batch(args, &[]);
    assert!(
        o.status.success(),
        "batch {args:?} failed:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// The one error line of a failed `batch`.
fn batch_err(args: &[&str]) -> String {
    let o = batch(args, &[]);
    assert!(!o.status.success(), "batch {args:?} unexpectedly succeeded");
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    lines[0].to_string()
}

/// `n` fine-tunes of one tiny base under `dir`: (`dir/base`, [`dir/ft-0`, …]), each delta from its own seed.
fn hub(dir: &Path, n: u64) -> (PathBuf, Vec<PathBuf>) {
    let mut fts = Vec::new();
    for k in 0..n {
        let cfg = SynthConfig {
            dtype: DType::BF16,
            seed: 11,
            delta_seed: Some(100 + k),
            rel_scale: 1e-3 * (1.0 + k as f64),
            ..SynthConfig::new(Shape::Tiny)
        };
        let pair = dir.join(format!("pair-{k}"));
        let (_, ft) = ultradelta_synth::write_pair(&pair, &cfg, |_, _| {}).expect("pair");
        let dest = dir.join(format!("ft-{k}"));
        std::fs::rename(&ft, &dest).unwrap();
        fts.push(dest);
        if k == 0 {
            std::fs::rename(pair.join("base"), dir.join("base")).unwrap();
        }
        std::fs::remove_dir_all(&pair).unwrap();
    }
    (dir.join("base"), fts)
}

/// Writes a manifest of `lines` (JSON values, one per line) to `dir/hub.jsonl`.
pub(crate) fn write_manifest(dir: &Path, lines: &[Value]) -> PathBuf {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let p = dir.join("hub.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

/// One job per fine-tune, relative paths: `{"base": "base", "finetuned": "ft-k", "output": "out/ft-k.udelta"}`.
fn jobs(n: usize, options: Value) -> Vec<Value> {
    (0..n)
        .map(|k| {
            serde_json::json!({
                "base": "base",
                "finetuned": format!("ft-{k}"),
                "output": format!("out/ft-{k}.udelta"),
                "options": options,
            })
        })
        .collect()
}

fn record(dir: &Path, k: usize) -> Value {
    let p = dir.join(format!("out/ft-{k}.udelta.result.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p:?}: {e}")))
        .unwrap()
}

#[test]
fn malformed_lines_are_reported_with_their_number_before_any_job_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = hub(dir.path(), 1);
    let good = jobs(1, serde_json::json!({})).remove(0);
    let cases: Vec<(String, &str)> = vec![
        ("{\"base\": \"base\", ".into(), "not valid JSON"),
        ("[1, 2]".into(), "expected a JSON object"),
        (
            r#"{"base": "base", "finetuned": "ft-0"}"#.into(),
            "missing \"output\"",
        ),
        (
            r#"{"base": "base", "finetuned": "ft-0", "output": "x.udelta", "colour": 1}"#.into(),
            "unknown key \"colour\"",
        ),
        (
            r#"{"base": "base", "finetuned": "ft-0", "output": "x.udelta", "options": {"bogus-flag": 1}}"#.into(),
            "options: unexpected argument '--bogus-flag'",
        ),
        (
            r#"{"base": "base", "finetuned": "ft-0", "output": "x.udelta", "options": {"method": "zip"}}"#.into(),
            "options: invalid value 'zip'",
        ),
        (
            r#"{"base": "base", "finetuned": "ft-0", "output": "x.udelta", "options": {"sparsity": 1.5}}"#.into(),
            "options: ",
        ),
        (
            r#"{"base": "base", "finetuned": "ft-0", "output": "x.udelta", "options": {"gamma-clamp": "0.5,1"}}"#.into(),
            "--tngr",
        ),
        (
            r#"{"base": "base", "finetuned": "ft-0", "output": "x.udelta", "options": {"output-dir": "d"}}"#.into(),
            "\"output-dir\" is not an option here",
        ),
        (
            r#"{"base": "base", "finetuned": "ft-0", "output": "out/ft-0.udelta"}"#.into(),
            "also line 1's output",
        ),
    ];
    for (bad, expected) in cases {
        // line 1: a good job; line 2: empty (ignored); line 3: the bad one
        let text = format!("{good}\n\n{bad}\n");
        let m = dir.path().join("hub.jsonl");
        std::fs::write(&m, text).unwrap();
        let err = batch_err(&[s(&m)]);
        assert!(
            err.contains("hub.jsonl:3: ") && err.contains(expected),
            "{bad}: {err}"
        );
        assert!(
            !dir.path().join("out").exists(),
            "no job may run before the manifest is checked: {bad}"
        );
    }
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n\n").unwrap();
    assert!(batch_err(&[s(&empty)]).contains("no job"));
}

fn listed(out: &str) -> Vec<usize> {
    out.lines()
        .filter_map(|l| l.strip_prefix("job "))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn shares_follow_flags_and_the_schedulers_environment() {
    let dir = tempfile::tempdir().unwrap();
    // 7 jobs on lines 1..=8 (line 4 is empty): job numbers 0..7 count non-empty lines.
    let mut lines: Vec<String> = jobs(7, serde_json::json!({}))
        .iter()
        .map(Value::to_string)
        .collect();
    lines.insert(3, String::new());
    let m = dir.path().join("hub.jsonl");
    std::fs::write(&m, lines.join("\n")).unwrap();
    let m = s(&m);

    let all = listed(&batch_ok(&[m, "--dry-run"]));
    assert_eq!(all, (0..7).collect::<Vec<_>>());
    for count in 1..=8usize {
        let mut union = Vec::new();
        for index in 0..count {
            let (i, c) = (index.to_string(), count.to_string());
            let got = listed(&batch_ok(&[m, "--dry-run", "--index", &i, "--count", &c]));
            assert!(got.iter().all(|j| j % count == index), "{got:?}");
            union.extend(got);
        }
        union.sort();
        assert_eq!(union, all, "count {count}");
    }
    let out = batch_ok(&[m, "--dry-run", "--index", "0", "--count", "3"]);
    assert!(out.contains("job 3 (line 5)"), "{out}");

    let env_share = |env: &[(&str, &str)], extra: &[&str]| {
        let o = batch(&[&[m, "--dry-run"][..], extra].concat(), env);
        assert!(o.status.success(), "{env:?}: {}", stderr(&o));
        listed(&stdout(&o))
    };
    let slurm = [
        ("SLURM_ARRAY_TASK_ID", "1"),
        ("SLURM_ARRAY_TASK_COUNT", "3"),
    ];
    assert_eq!(env_share(&slurm, &[]), [1, 4]);
    let slurm_range = [
        ("SLURM_ARRAY_TASK_ID", "3"),
        ("SLURM_ARRAY_TASK_MIN", "1"),
        ("SLURM_ARRAY_TASK_MAX", "4"),
    ];
    assert_eq!(env_share(&slurm_range, &[]), [2, 6]);
    // explicit flags win over the environment
    assert_eq!(
        env_share(&slurm, &["--index", "0", "--count", "2"]),
        [0, 2, 4, 6]
    );
    let k8s = [("JOB_COMPLETION_INDEX", "2")];
    assert_eq!(env_share(&k8s, &["--count", "3"]), [2, 5]);
    let o = batch(&[m, "--dry-run"], &k8s);
    assert!(!o.status.success() && stderr(&o).contains("--count"));
    let o = batch(&[m, "--dry-run", "--index", "3", "--count", "3"], &[]);
    assert!(!o.status.success() && stderr(&o).contains("not below"));
}

#[test]
fn batch_archives_equal_compress_and_reruns_skip_what_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let (base, fts) = hub(dir.path(), 3);
    let options = serde_json::json!({"sparsity": 0.95, "values": "entropy", "drop": ["*LayerNorm*"], "no_msa": true});
    let m = write_manifest(dir.path(), &jobs(3, options));
    // from another working directory: relative paths are the manifest's
    let elsewhere = tempfile::tempdir().unwrap();
    let o = batch_in(Some(elsewhere.path()), &["--jobs", "2", s(&m)], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("3 done, 0 skipped"), "{}", stdout(&o));

    // the same manifest named by a relative path from its folder: the same jobs, all done
    let o = batch_in(Some(dir.path()), &["hub.jsonl"], &[]);
    assert!(stdout(&o).contains("0 done, 3 skipped"), "{}", stdout(&o));

    // byte-identical to compress with the same options
    let reference = dir.path().join("reference.udelta");
    let extra = [
        "--sparsity",
        "0.95",
        "--values",
        "entropy",
        "--drop",
        "*LayerNorm*",
        "--no-msa",
    ];
    ud_ok(&compress_cmd(&base, &fts[1], &reference, &extra));
    assert_eq!(
        std::fs::read(&reference).unwrap(),
        std::fs::read(dir.path().join("out/ft-1.udelta")).unwrap(),
        "batch and compress must write the same bytes"
    );

    // every job left a record with its sizes and ratios
    for k in 0..3 {
        let r = record(dir.path(), k);
        let archive = dir.path().join(format!("out/ft-{k}.udelta"));
        assert_eq!(r["status"], "done");
        assert_eq!(r["job"], k);
        assert_eq!(r["line"], k + 1);
        assert_eq!(r["bytes_out"], std::fs::metadata(&archive).unwrap().len());
        assert!(r["bytes_in"].as_u64().unwrap() > r["bytes_out"].as_u64().unwrap());
        assert!(r["ratio"]["real"].as_f64().unwrap() > 1.0);
        assert!(r["seconds"].as_f64().unwrap() >= 0.0);
        assert!(r["error"].is_null());
        assert_eq!(r["spec"]["options"]["no-msa"], true);
    }

    // a rerun verifies and skips every job, touching nothing
    let before: Vec<_> = (0..3).map(|k| record(dir.path(), k)).collect();
    let out = batch_ok(&[s(&m)]);
    assert!(out.contains("0 done, 3 skipped"), "{out}");
    assert_eq!(
        before,
        (0..3).map(|k| record(dir.path(), k)).collect::<Vec<_>>()
    );

    // a lost archive is redone, alone
    std::fs::remove_file(dir.path().join("out/ft-2.udelta")).unwrap();
    let out = batch_ok(&[s(&m)]);
    assert!(out.contains("1 done, 2 skipped"), "{out}");

    // an archive made by compress without a record is adopted (verified, then recorded)
    std::fs::remove_file(dir.path().join("out/ft-1.udelta.result.json")).unwrap();
    std::fs::copy(&reference, dir.path().join("out/ft-1.udelta")).unwrap();
    let out = batch_ok(&[s(&m)]);
    assert!(out.contains("0 done, 3 skipped"), "{out}");
    assert_eq!(record(dir.path(), 1)["status"], "done");

    // changed options: the line's archive is redone, replacing the old one
    let m = write_manifest(dir.path(), &jobs(3, serde_json::json!({"sparsity": 0.9})));
    let out = batch_ok(&[s(&m)]);
    assert!(out.contains("3 done, 0 skipped"), "{out}");
    let ins = crate::support::inspect_json(&dir.path().join("out/ft-0.udelta"));
    assert_eq!(ins["params"]["sparsity"], 0.9);
}

#[test]
fn a_failing_job_does_not_stop_the_others_and_the_report_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_, fts) = hub(dir.path(), 3);
    let mut lines = jobs(3, serde_json::json!({}));
    // job 1's fine-tune does not exist; job 3 is a fourth line whose output is an unrelated file
    lines[1]["finetuned"] = "nowhere".into();
    lines.push(
        serde_json::json!({"base": "base", "finetuned": "ft-2", "output": "out/other.udelta"}),
    );
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    std::fs::write(dir.path().join("out/other.udelta"), b"not an archive").unwrap();
    let m = write_manifest(dir.path(), &lines);

    let o = batch(&["--jobs", "1", s(&m)], &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("2 of 4 jobs failed (job 1 (line 2), job 3 (line 4))"),
        "{err}"
    );
    assert!(stdout(&o).contains("2 done, 0 skipped (already done), 2 failed"));
    let failed = record(dir.path(), 1);
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].as_str().unwrap().contains("nowhere"));
    assert!(failed["peak_rss_bytes"].as_u64().unwrap() > 0);
    // the unrelated file is not replaced without --force
    assert_eq!(
        std::fs::read(dir.path().join("out/other.udelta")).unwrap(),
        b"not an archive"
    );
    let other: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/other.udelta.result.json")).unwrap(),
    )
    .unwrap();
    assert!(
        other["error"].as_str().unwrap().contains("--force"),
        "{other}"
    );

    // the report: 2 done, 1 failed, 1 failed, nothing missing; totals are the done jobs' records
    let o = batch(&[s(&m), "--report"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("2 of 4 jobs not done (2 failed, 0 missing)"));
    let summary = stdout(&o);
    assert!(
        summary.contains("4 jobs: 2 done, 2 failed, 0 missing"),
        "{summary}"
    );
    assert!(summary.contains("slowest:"), "{summary}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("hub-report.json")).unwrap())
            .unwrap();
    let (r0, r2) = (record(dir.path(), 0), record(dir.path(), 2));
    let sum = |k: &str| r0[k].as_u64().unwrap() + r2[k].as_u64().unwrap();
    assert_eq!(report["bytes_in"], sum("bytes_in"));
    assert_eq!(report["bytes_out"], sum("bytes_out"));
    assert_eq!(
        report["bytes_out"].as_u64().unwrap(),
        (0..3)
            .step_by(2)
            .map(
                |k| std::fs::metadata(dir.path().join(format!("out/ft-{k}.udelta")))
                    .unwrap()
                    .len()
            )
            .sum::<u64>()
    );
    assert_eq!(report["done"], 2);
    assert_eq!(report["rows"][1]["state"], "failed");
    let csv = std::fs::read_to_string(dir.path().join("hub-report.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.lines().nth(2).unwrap().starts_with("1,2,failed,"));

    // fix the line, remove the stray file's record so it counts as missing, and the rerun redoes only job 1
    let mut fixed = lines.clone();
    fixed[1]["finetuned"] = fts[1].file_name().unwrap().to_str().unwrap().into();
    fixed.pop();
    let m = write_manifest(dir.path(), &fixed);
    let out = batch_ok(&[s(&m)]);
    assert!(
        out.contains("1 done, 2 skipped (already done), 0 failed"),
        "{out}"
    );
    let out = stdout(&batch(&[s(&m), "--report"], &[]));
    assert!(out.contains("3 jobs: 3 done, 0 failed, 0 missing"), "{out}");
    std::fs::remove_file(dir.path().join("out/ft-0.udelta")).unwrap();
    let o = batch(&[s(&m), "--report"], &[]);
    assert!(stdout(&o).contains("2 done, 0 failed, 1 missing"));
    assert!(stdout(&o).contains("the archive is gone"));
}
