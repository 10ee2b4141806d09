//! `cargo xtask reproduce --engine slurm`: one Slurm array task per grid point.
//!
//! The submitting run does everything but the points: it builds the binaries, resolves the experiment, writes
//! the provenance, then submits `sbatch --array=0-(P-1) --wait` whose task `i` runs this same xtask binary with
//! the same selection and `--point i --point-out DIR`. A task resolves the experiment again (the plan is a pure
//! function of the file and the flags, so point `i` is the same point), runs that point on every task through the
//! same [`Runner::run_point`] as the local engine, and writes `DIR/point-i.csv` (its rows of `results.csv`) and
//! `DIR/point-i.json` (its outcomes). The submitting run then reads them in point order — `results.csv` has the
//! same rows in the same order as a local run — and writes the usual report. A point whose task left nothing
//! (failed to start, killed, out of time) becomes one failed evaluation per task naming its log.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{Measured, Outcome, Point, Progress, ReproduceArgs, Resolved, Runner};

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|d| d.join(p))
                .unwrap_or_else(|_| p.to_path_buf())
        }
    })
}

/// The `reproduce` arguments of an array task: the same experiment, testbed, selection and work folder as
/// this run (absolute paths; the task may start in another folder).
pub fn task_args(
    args: &ReproduceArgs,
    exp_file: &Path,
    testbed: &Path,
    work: &Path,
) -> Vec<String> {
    let mut a: Vec<String> = vec!["reproduce".into()];
    let path = |p: &Path| absolute(p).display().to_string();
    a.extend(["--experiment".into(), path(exp_file)]);
    a.extend(["--testbed".into(), path(testbed)]);
    a.extend(["--work-dir".into(), path(work)]);
    if args.generated {
        a.push("--generated".into());
    }
    if args.synthetic {
        a.push("--synthetic".into());
    }
    if args.quick {
        a.push("--quick".into());
    }
    if args.keep_files {
        a.push("--keep-files".into());
    }
    let list = |v: Vec<String>| v.join(",");
    if !args.methods.is_empty() {
        a.extend(["--methods".into(), list(args.methods.clone())]);
    }
    if !args.ratios.is_empty() {
        a.extend([
            "--ratios".into(),
            list(args.ratios.iter().map(f64::to_string).collect()),
        ]);
    }
    if !args.tasks.is_empty() {
        a.extend(["--tasks".into(), list(args.tasks.clone())]);
    }
    for (k, v) in &args.vars {
        a.extend(["--var".into(), format!("{k}={v}")]);
    }
    a
}

/// `s` quoted for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn point_files(dir: &Path, index: usize) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("point-{index}.csv")),
        dir.join(format!("point-{index}.json")),
    )
}

/// One array task: runs grid point `index` on every task and writes its rows and outcomes into `dir`.
pub fn run_task(
    r: &Resolved,
    cli: PathBuf,
    work: PathBuf,
    keep_files: bool,
    points: &[Point],
    index: usize,
    dir: &Path,
) -> Result<()> {
    let p = points.get(index).with_context(|| {
        format!(
            "--point {index}: the plan has {} points (did the experiment change since the array was submitted?)",
            points.len()
        )
    })?;
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (csv_path, json_path) = point_files(dir, index);
    let csv = std::fs::File::create(&csv_path)
        .with_context(|| format!("creating {}", csv_path.display()))?;
    let mut runner = Runner {
        r,
        cli,
        work,
        keep_files,
        csv,
        shown: super::illustration_point(r, points),
    };
    let mut progress = Progress {
        started: Instant::now(),
        total: r.tasks.len(),
        done: 0,
    };
    let outcomes = runner.run_point(index, p, &mut progress)?;
    runner.csv.sync_all()?;
    // The outcomes last, atomically: their presence says the point is complete.
    let tmp = json_path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&outcomes)? + "\n")
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &json_path)
        .with_context(|| format!("writing {}", json_path.display()))?;
    Ok(())
}

/// Submits one array task per point, waits for the array, and gathers the points' rows (into the runner's
/// `results.csv`) and outcomes, in point order.
pub fn run_array(
    args: &ReproduceArgs,
    task: Vec<String>,
    points: &[Point],
    out: &Path,
    runner: &mut Runner,
    progress: &mut Progress,
) -> Result<Vec<Outcome>> {
    let dir = absolute(out).join("slurm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut words: Vec<String> = std::iter::once(exe.display().to_string())
        .chain(task)
        .map(|w| sh_quote(&w))
        .collect();
    words.extend([
        "--point".into(),
        "\"$SLURM_ARRAY_TASK_ID\"".into(),
        "--point-out".into(),
        sh_quote(&dir.display().to_string()),
    ]);
    let last = points.len().checked_sub(1).context("no grid point")?;
    let script = format!(
        "#!/bin/sh\n\
         #SBATCH --job-name=ud-reproduce\n\
         #SBATCH --array=0-{last}\n\
         #SBATCH --output={}/task-%a.out\n\
         exec {}\n",
        dir.display(),
        words.join(" ")
    );
    let script_path = dir.join("array.sbatch");
    std::fs::write(&script_path, script)
        .with_context(|| format!("writing {}", script_path.display()))?;
    eprintln!(
        "reproduce: sbatch --array=0-{last} --wait {} ({} grid points, one array task each; logs in {})",
        script_path.display(),
        points.len(),
        dir.display()
    );
    let status = Command::new("sbatch")
        .args(["--parsable", "--wait"])
        .args(&args.sbatch_args)
        .arg(&script_path)
        .status()
        .context("running sbatch (is Slurm installed, and SLURM_CONF set when needed?)")?;
    if !status.success() {
        eprintln!(
            "reproduce: sbatch reports an array task that failed; gathering what the tasks wrote"
        );
    }
    let mut outcomes = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let (csv_path, json_path) = point_files(&dir, i);
        let got = std::fs::read_to_string(&json_path)
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<Outcome>>(&t).ok())
            .zip(std::fs::read(&csv_path).ok());
        let point_outcomes = match got {
            Some((os, csv)) => {
                runner.csv.write_all(&csv)?;
                os
            }
            None => {
                let mut os = Vec::new();
                for t in &runner.r.tasks {
                    let o = Outcome {
                        point: i,
                        task: t.name.clone(),
                        m: Measured {
                            error: Some(format!(
                                "array task {i} left no result (see {})",
                                dir.join(format!("task-{i}.out")).display()
                            )),
                            ..Measured::default()
                        },
                    };
                    runner.csv_rows(i, p, &o)?;
                    os.push(o);
                }
                os
            }
        };
        for o in &point_outcomes {
            if let Some(t) = runner.r.tasks.iter().find(|t| t.name == o.task) {
                progress.report(p, t, o);
            }
        }
        outcomes.extend(point_outcomes);
    }
    runner.csv.flush()?;
    if outcomes.is_empty() {
        bail!("the array wrote no outcome");
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }
}
