//! `ultradelta batch`: many compress jobs from a JSON Lines manifest, sharded over the tasks of a scheduler's
//! array job (Slurm, Kubernetes Indexed Jobs) or run locally a few at a time (docs/fleet.md).
//!
//! Every job runs in this process through the same calls as `compress` (configuration from `compress`'s own
//! parser, then `ultradelta::compress`), so its archive is byte-identical to `compress`'s. Jobs on the same base
//! share one opened checkpoint and one fingerprint. Each job leaves a result record beside its output
//! (`<output>.result.json`, written atomically); a job whose output exists and verifies is skipped, so rerunning
//! the whole array after a failure or a preemption redoes only what is missing. `--report` gathers the records.

mod manifest;
mod record;
mod report;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use ultradelta::archive::ArchiveReader;
use ultradelta::io::Checkpoint;

use manifest::{Job, Share};
use record::{JobRecord, Status};

/// Arguments of `ultradelta batch`.
#[derive(Args, Debug)]
pub struct BatchArgs {
    /// JSON Lines manifest: one job per line, {"base": …, "finetuned": …, "output": …, "options": {…}}; `options`
    /// takes `compress`'s flags by name ("sparsity": 0.95, "no-msa": true, "drop": ["*embeddings*"]). Relative
    /// paths are taken from the manifest's folder.
    #[arg(value_name = "MANIFEST")]
    manifest: PathBuf,
    /// Run only the jobs whose zero-based number J (its non-empty line) has J % COUNT == I. Default: from
    /// SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN) or JOB_COMPLETION_INDEX; without either, every job.
    #[arg(long, value_name = "I")]
    index: Option<u64>,
    /// Number of tasks sharing the manifest. Default: SLURM_ARRAY_TASK_COUNT (or from SLURM_ARRAY_TASK_MIN/MAX);
    /// needed with JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Jobs run at once in this process (default: one per 4 cores, at least 1); they share the thread pool.
    #[arg(long, value_name = "J")]
    jobs: Option<usize>,
    /// Redo this share's jobs even when their output exists and verifies (replacing it).
    #[arg(long)]
    force: bool,
    /// List the jobs this process would run, and run none.
    #[arg(long, conflicts_with = "report")]
    dry_run: bool,
    /// Run nothing: gather every job's result record into STEM-report.csv and STEM-report.json (STEM: the manifest's file name without its extension) and print a summary.
    /// Exits with failure unless every job is done.
    #[arg(long)]
    report: bool,
    /// Folder for --report's files (default: the manifest's folder).
    #[arg(long, value_name = "DIR", requires = "report")]
    report_dir: Option<PathBuf>,
}

/// Runs `ultradelta batch`.
pub fn run(a: BatchArgs, quiet: bool) -> Result<()> {
    let jobs = manifest::read(&a.manifest)?;
    if a.report {
        return report::run(&a.manifest, &jobs, a.report_dir.as_deref());
    }
    let share = manifest::resolve_share(a.index, a.count, |k| std::env::var(k).ok())?;
    let mine: Vec<&Job> = jobs.iter().filter(|j| share.contains(j.index)).collect();
    if a.dry_run {
        outln!(
            "{}: {} of {} jobs, {}",
            a.manifest.display(),
            mine.len(),
            jobs.len(),
            share.describe()
        );
        for j in &mine {
            outln!("{} {}", j.label(), j.output.display());
        }
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parallel = a
        .jobs
        .unwrap_or((cores / 4).max(1))
        .clamp(1, mine.len().max(1));
    if a.jobs == Some(0) {
        bail!("--jobs must be at least 1");
    }
    if !quiet {
        errln!(
            "batch {}: {} of {} jobs ({}), {} at a time",
            a.manifest.display(),
            mine.len(),
            jobs.len(),
            share.describe(),
            parallel
        );
    }
    let start = Instant::now();
    let outcomes = run_jobs(&mine, parallel, a.force);
    summarize(&mine, &outcomes, &share, start.elapsed().as_secs_f64())
}

/// What happened to one job in this run.
#[derive(Debug)]
enum Outcome {
    /// Compressed now.
    Done(JobRecord),
    /// Its output already existed and verified.
    Skipped(JobRecord),
    /// Failed (a record says why, when it could be written).
    Failed(String),
    /// Stopped by SIGINT or SIGTERM before it finished, or not started after one: no record, nothing half-written;
    /// the next run does it.
    Interrupted,
}

fn run_jobs(jobs: &[&Job], parallel: usize, force: bool) -> Vec<Outcome> {
    let bases = Bases::default();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    // Peak memory per job is only meaningful when jobs run one at a time (the high-water mark is the process's).
    let track_peak = parallel == 1;
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let outcome = match crate::interrupt::received() {
                    Some(_) => Outcome::Interrupted,
                    None => run_one(job, &bases, force, track_peak),
                };
                print_outcome(job, &outcome);
                results.lock().expect("results lock")[i] = Some(outcome);
            });
        }
    });
    results
        .into_inner()
        .expect("results lock")
        .into_iter()
        .map(|o| o.expect("every job ran"))
        .collect()
}

fn print_outcome(job: &Job, o: &Outcome) {
    match o {
        Outcome::Done(r) | Outcome::Skipped(r) => outln!(
            "{} {}: {} ({} -> {} bytes, {}, {})",
            job.label(),
            if matches!(o, Outcome::Done(_)) {
                "done"
            } else {
                "skipped, already done"
            },
            job.output.display(),
            r.bytes_in,
            r.bytes_out,
            r.ratio
                .whole_checkpoint
                .map_or("?".into(), |x| format!("{x:.1}x whole checkpoint")),
            r.seconds
                .map_or("time unknown".into(), |s| format!("{s:.2} s")),
        ),
        Outcome::Failed(e) => outln!("{} failed: {e}", job.label()),
        Outcome::Interrupted => outln!(
            "{} interrupted: {} not written",
            job.label(),
            job.output.display()
        ),
    }
}

fn summarize(jobs: &[&Job], outcomes: &[Outcome], share: &Share, secs: f64) -> Result<()> {
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let done = count(|o| matches!(o, Outcome::Done(_)));
    let skipped = count(|o| matches!(o, Outcome::Skipped(_)));
    let failed: Vec<String> = jobs
        .iter()
        .zip(outcomes)
        .filter_map(|(j, o)| match o {
            Outcome::Failed(_) => Some(j.label()),
            _ => None,
        })
        .collect();
    let interrupted = count(|o| matches!(o, Outcome::Interrupted));
    outln!(
        "batch: {} jobs ({}): {done} done, {skipped} skipped (already done), {} failed{} in {secs:.1} s",
        jobs.len(),
        share.describe(),
        failed.len(),
        match interrupted {
            0 => String::new(),
            n => format!(", {n} interrupted (the same command again does them)"),
        }
    );
    if interrupted > 0 {
        return Err(ultradelta::Error::Cancelled.into());
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} jobs failed ({}); their result records say why",
            failed.len(),
            jobs.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// A base checkpoint opened once per process, with its fingerprint computed once.
struct SharedBase {
    checkpoint: Checkpoint,
    fingerprint: OnceLock<String>,
}

impl SharedBase {
    fn fingerprint(&self) -> &str {
        self.fingerprint
            .get_or_init(|| self.checkpoint.fingerprint())
    }
}

type BaseCell = Arc<OnceLock<Result<Arc<SharedBase>, String>>>;

/// The bases this process has opened, by canonical path: jobs on one base open it once (concurrent jobs wait
/// for the first to open it) and share its memory map and fingerprint.
#[derive(Default)]
struct Bases {
    map: Mutex<HashMap<PathBuf, BaseCell>>,
}

impl Bases {
    fn get(&self, path: &Path) -> Result<Arc<SharedBase>> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let cell = self
            .map
            .lock()
            .expect("bases lock")
            .entry(key)
            .or_default()
            .clone();
        cell.get_or_init(|| {
            Checkpoint::open(path)
                .map(|checkpoint| {
                    Arc::new(SharedBase {
                        checkpoint,
                        fingerprint: OnceLock::new(),
                    })
                })
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
    }
}

/// Runs one job (a panic becomes its failure) and writes its result record.
fn run_one(job: &Job, bases: &Bases, force: bool, track_peak: bool) -> Outcome {
    if track_peak {
        record::reset_peak_rss();
    }
    let start = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| attempt(job, bases, force)))
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(anyhow!("panicked: {msg}"))
        });
    let seconds = start.elapsed().as_secs_f64();
    let peak = if track_peak {
        record::peak_rss_bytes()
    } else {
        None
    };
    match result {
        Ok(Attempt::Skipped(rec)) => Outcome::Skipped(rec),
        Ok(Attempt::Done(mut rec)) => {
            rec.seconds = Some(seconds);
            rec.peak_rss_bytes = peak;
            match record::write(&job.output, &rec) {
                Ok(()) => Outcome::Done(rec),
                Err(e) => Outcome::Failed(format!("writing its result record: {e:#}")),
            }
        }
        Err(e) if matches!(e.downcast_ref(), Some(ultradelta::Error::Cancelled)) => {
            Outcome::Interrupted
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let mut rec = JobRecord::new(job, Status::Failed);
            rec.seconds = Some(seconds);
            rec.peak_rss_bytes = peak;
            rec.error = Some(msg.clone());
            if let Err(w) = record::write(&job.output, &rec) {
                return Outcome::Failed(format!("{msg} (and writing its result record: {w:#})"));
            }
            Outcome::Failed(msg)
        }
    }
}

enum Attempt {
    Done(JobRecord),
    Skipped(JobRecord),
}

/// Why an existing output is not this job's finished result, or `None` when it is (it verifies).
///
/// Until `ultradelta verify` exists (issue 15), this is the strongest check there is: the archive opens (header,
/// index and every limit checked), every record and companion file decodes with its checksum, and it was made
/// against this job's base (fingerprint).
fn verify_existing(job: &Job, base: &SharedBase) -> Option<String> {
    let reader = match ArchiveReader::open(&job.output) {
        Ok(r) => r,
        Err(e) => return Some(format!("{e:#}")),
    };
    if let Err(e) = reader.verify() {
        return Some(format!("{e:#}"));
    }
    let made_for = &reader.manifest().base_fingerprint;
    if made_for != base.fingerprint() {
        return Some(format!(
            "made against a base with fingerprint {made_for}, but {} has {}",
            job.base.display(),
            base.fingerprint()
        ));
    }
    None
}

fn attempt(job: &Job, bases: &Bases, force: bool) -> Result<Attempt> {
    let base = bases.get(&job.base)?;
    let previous = record::read(&job.output);
    let mut overwrite = force || job.args.force;
    if job.output.exists() && !overwrite {
        let same_spec = previous.as_ref().map(|r| r.spec == job.spec());
        match (same_spec, verify_existing(job, &base)) {
            // Made by an earlier version of this line: the manifest now asks for something else.
            (Some(false), _) => overwrite = true,
            (_, None) => {
                // Done before: keep its record, or write one for an archive made without one (e.g. the process
                // stopped between the archive and its record).
                return match previous {
                    Some(r) if r.status == Status::Done => Ok(Attempt::Skipped(r)),
                    _ => {
                        let rec = done_record(job)?;
                        record::write(&job.output, &rec)?;
                        Ok(Attempt::Skipped(rec))
                    }
                };
            }
            (_, Some(why)) => bail!(
                "{} exists but is not this job's finished archive ({why}); remove it or pass --force",
                job.output.display()
            ),
        }
    }
    let ft = Checkpoint::open(&job.finetuned)?;
    if let Some(dir) = job.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow!("creating the folder {}: {e}", dir.display()))?;
    }
    let report = ultradelta::compress(
        &base.checkpoint,
        &ft,
        &job.config,
        &job.output,
        overwrite,
        // silent; polls for SIGINT and SIGTERM
        &crate::progress::CliProgress::new(true),
    )?;
    if let Some(dir) = &job.args.lora_out {
        ultradelta::export_lora(&report.output, dir, overwrite)?;
    }
    drop(ft);
    Ok(Attempt::Done(done_record(job)?))
}

/// The record of a job whose archive is at its output: sizes and ratios from the archive.
fn done_record(job: &Job) -> Result<JobRecord> {
    let ins = ultradelta::inspect(&ArchiveReader::open(&job.output)?);
    let mut rec = JobRecord::new(job, Status::Done);
    rec.bytes_out = ins.bytes;
    // as the archive recorded it at compression (opening the fine-tune again would copy a PyTorch file's strided
    // views again); an archive without it, from the fine-tune on disk
    rec.bytes_in = match ins.ratio.finetuned_bytes {
        0 => Checkpoint::open(&job.finetuned)
            .map(|c| c.size_on_disk())
            .unwrap_or(0),
        n => n,
    };
    rec.ratio = record::Ratios {
        real: ins.ratio.real,
        paper_v3: ins.ratio.paper_v3,
        paper_v2: ins.ratio.paper_v2,
        whole_checkpoint: Some(ins.ratio.whole_checkpoint),
    };
    rec.method = Some(ins.method);
    Ok(rec)
}
