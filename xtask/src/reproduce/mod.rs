//! `cargo xtask reproduce`: methods × ratios × tasks on real fine-tunes, measured by real bytes and real quality.
//!
//! An experiment file (TOML, `xtask/experiments/testbed.toml` by default; one per paper family under
//! `docs/experiments/`) names a base, its fine-tunes and, per task, an evaluator command that prints one JSON
//! object of metrics for a model folder. For every grid point this module runs the release `ultradelta` CLI
//! (`compress`, with `--target-ratio` for the budget variants; `inspect --json`; `apply`), runs the evaluator
//! on the rebuilt model, and appends the measurements to `results.csv` as it goes. At the end it writes
//! `provenance.json`, `report.md` (the paper-shaped table, the ablation ladder, the per-metric tables) and
//! `quality-vs-ratio.svg` into a dated folder under `--out`.
//!
//! Three reference rows are measured on every task: the base (the delta dropped, new tensors such as a
//! classification head kept), the uncompressed fine-tune, and "keep everything" (every delta stored losslessly
//! in an archive and rebuilt), which must reproduce the fine-tune's metrics exactly; the run fails when it
//! does not.

mod experiment;
mod report;
mod slurm;
mod synthetic;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::common::{target_dir, utf8, workspace_root};
pub use crate::testbed::Family;
pub use experiment::{Resolved, Variant};

/// Options of `cargo xtask reproduce`.
#[derive(clap::Args, Debug)]
pub struct ReproduceArgs {
    /// Experiment file (default: the testbed families' files, xtask/experiments/{testbed,llama}.toml).
    #[arg(long, value_name = "FILE", conflicts_with = "family")]
    pub experiment: Option<PathBuf>,
    /// Only these testbed families (comma-separated; default: both, MiniLM then LLaMA, one report section each).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub family: Vec<Family>,
    /// Testbed folder, the `{testbed}` of the experiment file (default: target/testbed, or
    /// target/testbed-generated with --generated).
    #[arg(long, value_name = "DIR")]
    pub testbed: Option<PathBuf>,
    /// Use a small generated testbed (tiny BERT and tiny LLaMA, generated texts; made in seconds) instead of
    /// the real one: the same code path, for CI. Not a measurement of anything real.
    #[arg(long, conflicts_with = "synthetic")]
    pub generated: bool,
    /// Run the experiment file on generated checkpoints with its family's real tensor names and shapes (the
    /// file's `[synthetic]` table: shape, layers, a weight-fidelity evaluator), written once under
    /// target/synth-experiments/NAME/. Exercises the family's preset end to end; not a quality measurement.
    #[arg(long)]
    pub synthetic: bool,
    /// Results go to a dated folder under this one.
    #[arg(long, value_name = "DIR", default_value = "results")]
    pub out: PathBuf,
    /// The experiment's small grid (a few minutes).
    #[arg(long)]
    pub quick: bool,
    /// Only these variants (comma-separated names; see --list).
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Only these ratios of the grid (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub ratios: Vec<f64>,
    /// Only these tasks (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Set a placeholder of the experiment file, e.g. --var test_size=500 (repeatable).
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// Keep archives and rebuilt models under the work folder (default: deleted once measured).
    #[arg(long)]
    pub keep_files: bool,
    /// Where archives and rebuilt models go while they are measured (default: target/reproduce/work).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Print the plan (variants, ratios, tasks, commands) and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// List the known variants and exit.
    #[arg(long)]
    pub list: bool,
    /// Where the grid points run: here, one after another (`local`), or one Slurm array task per point
    /// (`slurm`: `sbatch --array --wait`, results gathered into the usual report; the work folder, the
    /// results and the testbed must be on a filesystem the nodes share).
    #[arg(long, value_enum, default_value_t = Engine::Local)]
    pub engine: Engine,
    /// An extra `sbatch` option for --engine slurm (repeatable), e.g. --sbatch-arg=--partition=cpu.
    #[arg(long = "sbatch-arg", value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// Internal (one array task of --engine slurm): run only grid point N, write its outcomes into --point-out.
    #[arg(long, hide = true, value_name = "N", requires = "point_out")]
    pub point: Option<usize>,
    /// Internal: the folder the array tasks write their points' outcomes into.
    #[arg(long, hide = true, value_name = "DIR")]
    pub point_out: Option<PathBuf>,
}

/// Where `reproduce` runs its grid points.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// In this process, point after point.
    Local,
    /// One Slurm array task per grid point.
    Slurm,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// What a grid point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    Reference,
    Budget,
    Fixed,
    Ablation,
}

impl Group {
    fn name(self) -> &'static str {
        match self {
            Group::Reference => "reference",
            Group::Budget => "budget",
            Group::Fixed => "fixed",
            Group::Ablation => "ablation",
        }
    }
}

/// One grid point: a way of producing a model per task.
#[derive(Debug, Clone)]
pub struct Point {
    pub group: Group,
    pub variant: Variant,
    pub target: Option<f64>,
}

/// The reference rows' variant names.
pub const BASE: &str = "base";
pub const FINETUNED: &str = "finetuned";
pub const KEEP_ALL: &str = "keep-all";

fn reference(name: &str, label: &str, args: &[&str]) -> Point {
    Point {
        group: Group::Reference,
        variant: Variant {
            name: name.into(),
            label: label.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            together: false,
            ratios: None,
            plot: false,
        },
        target: None,
    }
}

pub fn plan(r: &Resolved) -> Vec<Point> {
    let mut points = vec![
        reference(BASE, "Base (delta dropped)", &["--drop", "*"]),
        reference(FINETUNED, "Fine-tuned (uncompressed)", &[]),
        reference(
            KEEP_ALL,
            "Keep everything (lossless archive)",
            &["--keep", "*"],
        ),
    ];
    for &ratio in &r.ratios {
        for v in &r.budget {
            if v.ratios
                .as_ref()
                .is_none_or(|rs| rs.iter().any(|x| (x - ratio).abs() < 1e-9))
            {
                points.push(Point {
                    group: Group::Budget,
                    variant: v.clone(),
                    target: Some(ratio),
                });
            }
        }
    }
    for v in &r.fixed {
        points.push(Point {
            group: Group::Fixed,
            variant: v.clone(),
            target: None,
        });
    }
    for v in &r.ablation {
        points.push(Point {
            group: Group::Ablation,
            variant: v.clone(),
            target: None,
        });
    }
    points
}

/// What one archive (one task at one point) measured.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    pub real_ratio: Option<f64>,
    pub paper_v3: Option<f64>,
    pub whole_ratio: Option<f64>,
    pub archive_bytes: Option<u64>,
    pub compressed_bytes: Option<u64>,
    pub compressed_entries: Option<u64>,
    pub kept_entries: Option<u64>,
    pub param: Option<(String, f64)>,
    pub gamma: Option<f64>,
    pub compress_seconds: Option<f64>,
    pub apply_seconds: Option<f64>,
    pub eval_seconds: Option<f64>,
    /// Every numeric field the evaluator printed.
    pub metrics: BTreeMap<String, f64>,
    pub error: Option<String>,
    /// The illustration's continuations of the rebuilt model (only at the point it shows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub illustration: Vec<String>,
}

/// One row of results: a point on a task.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub point: usize,
    pub task: String,
    pub m: Measured,
}

struct Runner<'a> {
    r: &'a Resolved,
    cli: PathBuf,
    work: PathBuf,
    keep_files: bool,
    csv: std::fs::File,
    /// The point whose rebuilt models the illustration shows.
    shown: Option<usize>,
}

const CSV_HEADER: &str =
    "point,group,variant,label,target_ratio,task,real_ratio,paper_v3_ratio,whole_ratio,\
archive_bytes,compressed_bytes,compressed_entries,kept_entries,parameter,parameter_value,gamma,\
compress_seconds,apply_seconds,eval_seconds,metric,value,headline,error";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

impl Runner<'_> {
    fn csv_rows(&mut self, index: usize, p: &Point, o: &Outcome) -> Result<()> {
        let task = self
            .r
            .tasks
            .iter()
            .find(|t| t.name == o.task)
            .context("task")?;
        let m = &o.m;
        let prefix = [
            index.to_string(),
            p.group.name().to_string(),
            p.variant.name.clone(),
            csv_field(&p.variant.label),
            opt(p.target),
            o.task.clone(),
            opt(m.real_ratio),
            opt(m.paper_v3),
            opt(m.whole_ratio),
            opt(m.archive_bytes),
            opt(m.compressed_bytes),
            opt(m.compressed_entries),
            opt(m.kept_entries),
            m.param.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
            opt(m.param.as_ref().map(|p| p.1)),
            opt(m.gamma),
            opt(m.compress_seconds),
            opt(m.apply_seconds),
            opt(m.eval_seconds),
        ]
        .join(",");
        let err = csv_field(m.error.as_deref().unwrap_or(""));
        let mut lines = String::new();
        if m.metrics.is_empty() {
            let _ = writeln!(lines, "{prefix},{},,true,{err}", task.metric);
        }
        for (k, v) in &m.metrics {
            let _ = writeln!(lines, "{prefix},{k},{v},{},{err}", *k == task.metric);
        }
        self.csv.write_all(lines.as_bytes())?;
        self.csv.flush()?;
        Ok(())
    }

    fn run_cli(&self, args: &[String]) -> Result<String> {
        let out = Command::new(&self.cli)
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.cli.display()))?;
        if !out.status.success() {
            bail!(
                "ultradelta {}: {}",
                args.first().map(String::as_str).unwrap_or(""),
                last_line(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn point_dir(&self, index: usize, p: &Point) -> PathBuf {
        let t = p.target.map(|t| format!("@{t}")).unwrap_or_default();
        self.work.join(format!("{index:03}-{}{t}", p.variant.name))
    }

    /// Compresses the tasks' fine-tunes for one point; returns per task (archive, seconds) or the error.
    fn compress(&self, p: &Point, dir: &Path) -> Vec<Result<(PathBuf, f64, Value)>> {
        let mut common: Vec<String> = vec!["compress".into(), "--base".into()];
        common.push(self.r.base.display().to_string());
        common.extend(self.r.compress_args.iter().cloned());
        common.extend(p.variant.args.iter().cloned());
        if let Some(t) = p.target {
            common.extend(["--target-ratio".to_string(), t.to_string()]);
        }
        common.extend(["--force", "--quiet", "--json"].map(String::from));
        let tasks = &self.r.tasks;
        if p.variant.together && tasks.len() > 1 {
            let mut args = common.clone();
            for t in tasks {
                args.extend(["--finetuned".to_string(), t.finetuned.display().to_string()]);
            }
            args.extend(["--output-dir".to_string(), dir.display().to_string()]);
            let t0 = Instant::now();
            let res = self.run_cli(&args).and_then(|out| {
                let v: Value = serde_json::from_str(&out).context("compress --json output")?;
                let list = v
                    .as_array()
                    .context("compress --json: expected a list")?
                    .clone();
                if list.len() != tasks.len() {
                    bail!(
                        "compress --json: {} results for {} fine-tunes",
                        list.len(),
                        tasks.len()
                    );
                }
                Ok(list)
            });
            let secs = t0.elapsed().as_secs_f64() / tasks.len() as f64;
            return match res {
                Ok(list) => list
                    .into_iter()
                    .map(|v| {
                        let path = v["report"]["output"]
                            .as_str()
                            .map(PathBuf::from)
                            .context("compress --json: no report.output")?;
                        Ok((path, secs, v))
                    })
                    .collect(),
                Err(e) => tasks
                    .iter()
                    .map(|_| Err(anyhow::anyhow!("{e:#}")))
                    .collect(),
            };
        }
        tasks
            .iter()
            .map(|t| {
                let archive = dir.join(format!("{}.udelta", t.name));
                let mut args = common.clone();
                args.extend([
                    "--finetuned".to_string(),
                    t.finetuned.display().to_string(),
                    "--output".to_string(),
                    archive.display().to_string(),
                ]);
                let t0 = Instant::now();
                let out = self.run_cli(&args)?;
                let v: Value = serde_json::from_str(&out).context("compress --json output")?;
                Ok((archive, t0.elapsed().as_secs_f64(), v))
            })
            .collect()
    }

    fn evaluate(
        &self,
        task: &experiment::ResolvedTask,
        model: &Path,
    ) -> Result<(BTreeMap<String, f64>, f64)> {
        let args: Vec<String> = task
            .evaluator
            .iter()
            .map(|a| a.replace("{model}", &model.display().to_string()))
            .collect();
        let t0 = Instant::now();
        let out = Command::new(&args[0])
            .args(&args[1..])
            .output()
            .with_context(|| format!("task {}: cannot run evaluator {}", task.name, args[0]))?;
        let secs = t0.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "task {}: evaluator failed: {}",
                task.name,
                last_line(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        // The last line that parses as a JSON object (evaluators may print logs before it).
        let v = stdout
            .lines()
            .rev()
            .find_map(|l| {
                serde_json::from_str::<Value>(l.trim())
                    .ok()
                    .filter(Value::is_object)
            })
            .or_else(|| {
                serde_json::from_str::<Value>(stdout.trim())
                    .ok()
                    .filter(Value::is_object)
            })
            .with_context(|| format!("task {}: the evaluator printed no JSON object", task.name))?;
        let mut metrics = BTreeMap::new();
        flatten("", &v, &mut metrics);
        if !metrics.contains_key(&task.metric) {
            bail!(
                "task {}: the evaluator's JSON has no numeric {:?} (has: {})",
                task.name,
                task.metric,
                metrics.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        Ok((metrics, secs))
    }

    /// Runs one point on every task.
    fn run_point(
        &mut self,
        index: usize,
        p: &Point,
        progress: &mut Progress,
    ) -> Result<Vec<Outcome>> {
        let dir = self.point_dir(index, p);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| dir.display().to_string())?;
        }
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        let tasks = self.r.tasks.clone();
        let mut outcomes = Vec::new();
        let compressed: Vec<Option<Result<(PathBuf, f64, Value)>>> = if p.variant.name == FINETUNED
        {
            tasks.iter().map(|_| None).collect()
        } else {
            self.compress(p, &dir).into_iter().map(Some).collect()
        };
        for (task, c) in tasks.iter().zip(compressed) {
            let mut m = Measured::default();
            let res: Result<()> = (|| {
                let model = match c {
                    None => task.finetuned.clone(),
                    Some(c) => {
                        let (archive, secs, v) = c?;
                        m.compress_seconds = Some(secs);
                        m.param = v["report"]["budget"]["parameter"]
                            .as_str()
                            .zip(v["report"]["budget"]["value"].as_f64())
                            .map(|(n, x)| (n.to_string(), x));
                        m.gamma = v["report"]["gamma"].as_f64();
                        let a = utf8(&archive)?.to_string();
                        let ins: Value = serde_json::from_str(&self.run_cli(&[
                            "inspect".into(),
                            "--json".into(),
                            a.clone(),
                        ])?)
                        .context("inspect --json output")?;
                        m.real_ratio = ins["ratio"]["real"].as_f64();
                        m.paper_v3 = ins["ratio"]["paper_v3"].as_f64();
                        m.whole_ratio = ins["ratio"]["whole_checkpoint"].as_f64();
                        m.archive_bytes = ins["bytes"].as_u64();
                        m.compressed_bytes = ins["compressed_bytes"].as_u64();
                        m.compressed_entries = ins["compressed_entries"].as_u64();
                        m.kept_entries = ins["kept_entries"].as_u64();
                        let rebuilt = dir.join(format!("{}-rebuilt", task.name));
                        let t0 = Instant::now();
                        self.run_cli(&[
                            "apply".into(),
                            "--base".into(),
                            self.r.base.display().to_string(),
                            "--output".into(),
                            rebuilt.display().to_string(),
                            "--force".into(),
                            "--quiet".into(),
                            a,
                        ])?;
                        m.apply_seconds = Some(t0.elapsed().as_secs_f64());
                        rebuilt
                    }
                };
                let (metrics, secs) = self.evaluate(task, &model)?;
                m.metrics = metrics;
                m.eval_seconds = Some(secs);
                if let Some(il) = self
                    .r
                    .illustration
                    .as_ref()
                    .filter(|il| self.shown == Some(index) && il.tasks.contains(&task.name))
                {
                    m.illustration = illustrate(il, &model);
                }
                if model != task.finetuned && !self.keep_files {
                    let _ = std::fs::remove_dir_all(&model);
                }
                Ok(())
            })();
            if let Err(e) = res {
                m.error = Some(format!("{e:#}"));
            }
            let o = Outcome {
                point: index,
                task: task.name.clone(),
                m,
            };
            progress.report(p, task, &o);
            self.csv_rows(index, p, &o)?;
            outcomes.push(o);
        }
        if !self.keep_files {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(outcomes)
    }
}

/// Numeric leaves of a JSON object as dotted keys (`a.b`); booleans and strings are skipped.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, f64>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                out.insert(prefix.to_string(), f);
            }
        }
        _ => {}
    }
}

fn last_line(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no message)")
        .trim()
        .to_string()
}

/// Progress lines on stderr with an estimate of the time left.
struct Progress {
    started: Instant,
    total: usize,
    done: usize,
}

impl Progress {
    fn report(&mut self, p: &Point, task: &experiment::ResolvedTask, o: &Outcome) {
        self.done += 1;
        let el = self.started.elapsed().as_secs_f64();
        let left = el / self.done as f64 * (self.total - self.done) as f64;
        let at = p.target.map(|t| format!(" @{t}x")).unwrap_or_default();
        let what = match (&o.m.error, o.m.metrics.get(&task.metric)) {
            (Some(e), _) => format!("FAILED: {e}"),
            (None, Some(v)) => format!("{} {:.4}", task.metric, v),
            (None, None) => "no metric".into(),
        };
        let real =
            o.m.real_ratio
                .map(|r| format!(", real {r:.1}x"))
                .unwrap_or_default();
        eprintln!(
            "[{:>3}/{}] {}{at} {}: {what}{real}  ({} elapsed, ~{} left)",
            self.done,
            self.total,
            p.variant.name,
            task.name,
            clock(el),
            clock(left)
        );
    }
}

fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Builds the release evaluator (`ultradelta-eval`) and returns its path.
fn build_eval() -> Result<PathBuf> {
    crate::common::build_release("ultradelta-eval", &["--bin", "ultradelta-eval"])?;
    Ok(target_dir().join("release").join("ultradelta-eval"))
}

/// sha256 of a testbed manifest (`manifest`, relative to the testbed; it lists every file's sha256), or null.
fn testbed_checksum(testbed: &Path, manifest: &str) -> Value {
    use sha2::{Digest, Sha256};
    let path = testbed.join(manifest);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let files = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["files"].as_array().map(Vec::len));
            json!({
                "manifest": path.display().to_string(),
                "manifest_sha256": Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "files_listed": files,
            })
        }
        Err(_) => Value::Null,
    }
}

/// The experiment file of a testbed family.
pub fn family_experiment(root: &Path, family: Family) -> PathBuf {
    root.join(match family {
        Family::Minilm => "xtask/experiments/testbed.toml",
        Family::Llama => "xtask/experiments/llama.toml",
    })
}

/// The experiment files a run covers: `--experiment`, else the `--family` ones (default: every family).
fn experiment_files(args: &ReproduceArgs, root: &Path) -> Vec<PathBuf> {
    if let Some(e) = &args.experiment {
        return vec![e.clone()];
    }
    let families = if args.family.is_empty() {
        vec![Family::Minilm, Family::Llama]
    } else {
        let mut f = args.family.clone();
        f.dedup();
        f
    };
    families
        .into_iter()
        .map(|f| family_experiment(root, f))
        .collect()
}

/// The plan position of the point whose rebuilt models the illustration shows.
fn illustration_point(r: &Resolved, points: &[Point]) -> Option<usize> {
    let il = r.illustration.as_ref()?;
    points
        .iter()
        .position(|p| p.group != Group::Reference && p.variant.name == il.variant)
}

/// Runs an illustration command on a model folder: the continuations, in prompt order, or one error line
/// per prompt.
fn illustrate(il: &experiment::Illustration, model: &Path) -> Vec<String> {
    let mut args: Vec<String> = il
        .command
        .iter()
        .map(|a| a.replace("{model}", &model.display().to_string()))
        .collect();
    for p in &il.prompts {
        args.extend(["--prompt".to_string(), p.clone()]);
    }
    let fail = |e: String| vec![format!("(generation failed: {e})"); il.prompts.len()];
    let out = match Command::new(&args[0]).args(&args[1..]).output() {
        Ok(o) => o,
        Err(e) => return fail(format!("cannot run {}: {e}", args[0])),
    };
    if !out.status.success() {
        return fail(last_line(&out.stderr));
    }
    let v = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok());
    let Some(list) = v.as_ref().and_then(|v| v["continuations"].as_array()) else {
        return fail("no \"continuations\" list in its output".into());
    };
    il.prompts
        .iter()
        .enumerate()
        .map(|(i, _)| {
            list.get(i)
                .and_then(|c| c["continuation"].as_str())
                .map_or_else(|| "(no continuation)".into(), str::to_string)
        })
        .collect()
}

/// What the run needs besides the experiment: binaries, folders, the selection.
struct RunContext<'a> {
    args: &'a ReproduceArgs,
    cli: PathBuf,
    eval: PathBuf,
    testbed: PathBuf,
    stamp: String,
    started: u64,
}

/// One experiment's (family's) run.
struct FamilyRun {
    r: Resolved,
    out: PathBuf,
    seconds: f64,
    evaluations: usize,
    summary: String,
    markdown: String,
    svg: String,
    failures: Vec<String>,
    keep_all: Option<String>,
    status: &'static str,
}

/// Runs one resolved experiment into `out` (results.csv, provenance.json, report.md, the plot).
fn run_family(
    ctx: &RunContext<'_>,
    exp: &experiment::Experiment,
    exp_file: &Path,
    r: Resolved,
    out: &Path,
    work: &Path,
) -> Result<FamilyRun> {
    let args = ctx.args;
    let points = plan(&r);
    let evaluations = points.len() * r.tasks.len();
    eprintln!(
        "reproduce: experiment {} ({}), {} tasks, {} points, {} evaluations{}",
        r.name,
        exp_file.display(),
        r.tasks.len(),
        points.len(),
        evaluations,
        if args.quick { " (quick)" } else { "" }
    );
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let mut csv = std::fs::File::create(out.join("results.csv"))
        .with_context(|| out.join("results.csv").display().to_string())?;
    writeln!(csv, "{CSV_HEADER}")?;
    let version = Command::new(&ctx.cli)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let mut provenance = json!({
        "command": std::iter::once("cargo xtask reproduce".to_string())
            .chain(std::env::args().skip(2)).collect::<Vec<_>>().join(" "),
        "git_revision": crate::common::git(&["rev-parse", "HEAD"]),
        "git_dirty": crate::common::git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
        "started_utc": ctx.stamp,
        "machine": crate::common::machine(),
        "cli": {"path": ctx.cli.display().to_string(), "version": version},
        "evaluator": ctx.eval.display().to_string(),
        "testbed": {"path": ctx.testbed.display().to_string(), "generated": args.generated,
                    "checksum": testbed_checksum(&ctx.testbed, &r.manifest)},
        "synthetic": r.synthetic,
        "experiment_file": exp_file.display().to_string(),
        "experiment": exp,
        "resolved": r,
        "quick": args.quick,
        "engine": args.engine,
        "status": "running",
    });
    let write_prov = |p: &Value| -> Result<()> {
        std::fs::write(
            out.join("provenance.json"),
            serde_json::to_string_pretty(p)? + "\n",
        )
        .with_context(|| out.join("provenance.json").display().to_string())
    };
    write_prov(&provenance)?;

    let mut runner = Runner {
        r: &r,
        cli: ctx.cli.clone(),
        work: work.to_path_buf(),
        keep_files: args.keep_files,
        csv,
        shown: illustration_point(&r, &points),
    };
    let mut progress = Progress {
        started: Instant::now(),
        total: evaluations,
        done: 0,
    };
    let mut outcomes = Vec::new();
    match args.engine {
        Engine::Local => {
            for (i, p) in points.iter().enumerate() {
                outcomes.extend(runner.run_point(i, p, &mut progress)?);
            }
        }
        Engine::Slurm => {
            let task = slurm::task_args(args, exp_file, &ctx.testbed, work);
            outcomes = slurm::run_array(args, task, &points, out, &mut runner, &mut progress)?;
        }
    }
    // The illustration's references: the base once, each shown fine-tune as it is.
    let shown = match (&r.illustration, runner.shown) {
        (Some(il), Some(at)) => {
            eprintln!(
                "reproduce: illustration: {} prompts on the base and {} fine-tunes",
                il.prompts.len(),
                il.tasks.len()
            );
            let base = illustrate(il, &r.base);
            let tasks = il
                .tasks
                .iter()
                .filter_map(|name| {
                    let t = r.tasks.iter().find(|t| &t.name == name)?;
                    let rebuilt = outcomes
                        .iter()
                        .find(|o| o.point == at && &o.task == name)
                        .map(|o| o.m.illustration.clone())
                        .unwrap_or_default();
                    Some(report::ShownTask {
                        task: name.clone(),
                        finetuned: illustrate(il, &t.finetuned),
                        rebuilt,
                    })
                })
                .collect();
            Some(report::Shown {
                prompts: il.prompts.clone(),
                point: at,
                base,
                tasks,
            })
        }
        _ => None,
    };
    let seconds = progress.started.elapsed().as_secs_f64();

    let checks = report::checks(&r, &points, &outcomes);
    let mut md = report::markdown(
        &r,
        &points,
        &outcomes,
        &checks,
        args.quick,
        args.generated,
        seconds,
        &ctx.stamp,
    );
    if let Some(sh) = &shown {
        let section = report::illustration(&r, &points, &outcomes, sh);
        match md.find("## Every metric, per task") {
            Some(at) => md.insert_str(at, &section),
            None => md.push_str(&section),
        }
    }
    std::fs::write(out.join("report.md"), &md)?;
    let svg = report::svg(&r, &points, &outcomes);
    std::fs::write(out.join("quality-vs-ratio.svg"), &svg)?;
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            o.m.error
                .as_ref()
                .map(|e| format!("{} / {}: {e}", points[o.point].variant.name, o.task))
        })
        .collect();
    let status = if failures.is_empty() && checks.keep_all_exact {
        "complete"
    } else {
        "complete with failures"
    };
    provenance["status"] = json!(status);
    provenance["seconds"] = json!(seconds);
    provenance["failures"] = json!(failures);
    provenance["keep_all_reproduces_finetuned"] = json!(checks.keep_all_exact);
    write_prov(&provenance)?;
    let summary = report::summary(&r, &points, &outcomes, &checks);
    Ok(FamilyRun {
        out: out.to_path_buf(),
        seconds,
        evaluations,
        summary,
        markdown: md,
        svg,
        failures,
        keep_all: (!checks.keep_all_exact).then(|| checks.keep_all_detail.join("; ")),
        status,
        r,
    })
}

pub fn run(args: ReproduceArgs) -> Result<()> {
    let root = workspace_root();
    let files = experiment_files(&args, &root);
    let mut exps = Vec::new();
    for f in &files {
        exps.push((f.clone(), experiment::load(f)?));
    }
    if args.list {
        let mut known = experiment::builtin_variants();
        for (_, exp) in &exps {
            known.extend(exp.variants.iter().cloned());
        }
        for v in known {
            println!("{:<20} {}  [{}]", v.name, v.label, v.args.join(" "));
        }
        return Ok(());
    }
    let testbed = args.testbed.clone().unwrap_or_else(|| {
        target_dir().join(if args.generated {
            "testbed-generated"
        } else {
            "testbed"
        })
    });
    let cache = target_dir().join("reproduce").join("cache");
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| target_dir().join("reproduce").join("work"));

    // Binaries first (their paths are placeholders), unless only the plan is wanted.
    // An array task uses the binaries the submitting run built.
    let (cli, eval) = if args.dry_run || args.point.is_some() {
        (
            target_dir().join("release/ultradelta"),
            target_dir().join("release/ultradelta-eval"),
        )
    } else {
        (crate::common::build_cli()?, build_eval()?)
    };
    // The generated testbed holds both families (an older one without the LLaMA family is remade).
    if args.generated
        && !(testbed.join("testbed.json").is_file() && testbed.join("llama/testbed.json").is_file())
        && !args.dry_run
        && args.point.is_none()
    {
        eprintln!(
            "xtask: writing the generated testbed to {}",
            testbed.display()
        );
        let st = Command::new(&eval)
            .args(["make-testbed", "--out", utf8(&testbed)?, "--force"])
            .status()?;
        if !st.success() {
            bail!("ultradelta-eval make-testbed failed");
        }
    }
    let mut builtins = BTreeMap::new();
    builtins.insert("testbed".to_string(), testbed.display().to_string());
    builtins.insert("eval".to_string(), eval.display().to_string());
    builtins.insert("ultradelta".to_string(), cli.display().to_string());
    builtins.insert("cache".to_string(), cache.display().to_string());
    builtins.insert("workspace".to_string(), root.display().to_string());
    let mut resolved = Vec::new();
    let mut missing_all = Vec::new();
    for (file, exp) in &exps {
        let mut overrides = args.vars.clone();
        let synth_models = synthetic::models_dir(exp);
        if args.synthetic {
            overrides.push(("models".into(), synth_models.display().to_string()));
        }
        let r = experiment::resolve(
            exp,
            file,
            &experiment::ResolveOptions {
                quick: args.quick,
                builtins: builtins.clone(),
                overrides: &overrides,
                synthetic: args.synthetic,
                only_variants: &args.methods,
                only_ratios: &args.ratios,
                only_tasks: &args.tasks,
            },
        )?;
        if args.synthetic && !args.dry_run && args.point.is_none() {
            synthetic::ensure_pairs(exp, &r, &synth_models)?;
        }
        let missing = if args.synthetic && args.dry_run {
            Vec::new()
        } else {
            experiment::missing_checkpoints(&r)
        };
        if !missing.is_empty() {
            let hint = if args.generated || args.synthetic || exp.missing_hint.is_empty() {
                String::new()
            } else {
                format!("\n{}", exp.missing_hint)
            };
            missing_all.push(format!(
                "experiment {} ({}): {}{hint}",
                r.name,
                file.display(),
                missing.join("; ")
            ));
        }
        resolved.push(r);
    }
    if !missing_all.is_empty() {
        bail!("{}", missing_all.join("\n"));
    }
    if let (Some(index), Some(dir)) = (args.point, &args.point_out) {
        let [r] = resolved.as_slice() else {
            bail!("--point runs one experiment: pass --experiment FILE");
        };
        let points = plan(r);
        return slurm::run_task(r, cli, work, args.keep_files, &points, index, dir);
    }
    if args.dry_run {
        for r in &resolved {
            let points = plan(r);
            println!(
                "experiment {} ({}): {} tasks, {} points, {} evaluations",
                r.name,
                r.file.display(),
                r.tasks.len(),
                points.len(),
                points.len() * r.tasks.len()
            );
            for (i, p) in points.iter().enumerate() {
                println!(
                    "{i:>3} {:<10} {:<18} {:<8} compress {}{}",
                    p.group.name(),
                    p.variant.name,
                    p.target
                        .map(|t| format!("{t}x"))
                        .unwrap_or_else(|| "-".into()),
                    p.variant.args.join(" "),
                    if p.variant.together {
                        " (fine-tunes together)"
                    } else {
                        ""
                    }
                );
            }
            for t in &r.tasks {
                println!(
                    "task {}: {} ; evaluator: {}",
                    t.name,
                    t.finetuned.display(),
                    t.evaluator.join(" ")
                );
            }
        }
        return Ok(());
    }

    let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let (_, stamp) = crate::common::utc(started);
    let names: Vec<&str> = resolved.iter().map(|r| r.name.as_str()).collect();
    let folder = format!(
        "{}-{}{}",
        stamp.replace(':', ""),
        names.join("+"),
        if args.quick { "-quick" } else { "" }
    );
    let out = args.out.join(folder);
    let several = resolved.len() > 1;
    let ctx = RunContext {
        args: &args,
        cli,
        eval,
        testbed: testbed.clone(),
        stamp: stamp.clone(),
        started,
    };
    let t0 = Instant::now();
    let mut runs = Vec::new();
    for ((file, exp), r) in exps.iter().zip(resolved) {
        // Several families: one sub-folder each (and its own work folder), the combined report on top.
        let (fam_out, fam_work) = if several {
            (out.join(&r.name), work.join(&r.name))
        } else {
            (out.clone(), work.clone())
        };
        runs.push(run_family(&ctx, exp, file, r, &fam_out, &fam_work)?);
    }
    let seconds = t0.elapsed().as_secs_f64();
    if several {
        write_combined(&ctx, &out, &runs, seconds)?;
    }

    for fr in &runs {
        println!("\n== {} ({})", fr.r.name, fr.out.display());
        println!("{}", fr.summary);
        println!(
            "reproduce: {}: {} evaluations in {}",
            fr.r.name,
            fr.evaluations,
            clock(fr.seconds)
        );
    }
    println!(
        "reproduce: {} in all; results in {}",
        clock(seconds),
        out.display()
    );
    let mut problems = Vec::new();
    for fr in &runs {
        if let Some(d) = &fr.keep_all {
            problems.push(format!(
                "{}: keep everything did not reproduce the fine-tuned metrics exactly: {d}",
                fr.r.name
            ));
        }
        if !fr.failures.is_empty() {
            problems.push(format!(
                "{}: {} evaluations failed (see report.md): {}",
                fr.r.name,
                fr.failures.len(),
                fr.failures.join("; ")
            ));
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

/// The combined files of a run over several families: `report.md` (one section per family), the plot (one
/// panel per family), `results.csv` (every family's rows, a `family` column added) and `provenance.json`.
fn write_combined(
    ctx: &RunContext<'_>,
    out: &Path,
    runs: &[FamilyRun],
    seconds: f64,
) -> Result<()> {
    let names: Vec<&str> = runs.iter().map(|f| f.r.name.as_str()).collect();
    let mut csv = format!("{CSV_HEADER},family\n");
    for fr in runs {
        let text = std::fs::read_to_string(fr.out.join("results.csv"))
            .with_context(|| fr.out.join("results.csv").display().to_string())?;
        for line in text.lines().skip(1) {
            let _ = writeln!(csv, "{line},{}", fr.r.name);
        }
    }
    std::fs::write(out.join("results.csv"), csv)?;
    let panels: Vec<(String, String)> = runs
        .iter()
        .map(|fr| (fr.r.name.clone(), fr.svg.clone()))
        .collect();
    std::fs::write(
        out.join("quality-vs-ratio.svg"),
        report::combined_svg(&panels),
    )?;
    let sections: Vec<(String, String)> = runs
        .iter()
        .map(|fr| (fr.r.name.clone(), fr.markdown.clone()))
        .collect();
    std::fs::write(
        out.join("report.md"),
        report::combined_markdown(&sections, ctx.args.generated, seconds, &ctx.stamp),
    )?;
    let all_ok = runs.iter().all(|f| f.status == "complete");
    let provenance = json!({
        "command": std::iter::once("cargo xtask reproduce".to_string())
            .chain(std::env::args().skip(2)).collect::<Vec<_>>().join(" "),
        "git_revision": crate::common::git(&["rev-parse", "HEAD"]),
        "started_utc": ctx.stamp,
        "started_unix": ctx.started,
        "machine": crate::common::machine(),
        "families": runs.iter().map(|fr| json!({
            "experiment": fr.r.name,
            "folder": fr.out.display().to_string(),
            "status": fr.status,
            "seconds": fr.seconds,
            "evaluations": fr.evaluations,
        })).collect::<Vec<_>>(),
        "experiments": names,
        "quick": ctx.args.quick,
        "generated": ctx.args.generated,
        "engine": ctx.args.engine,
        "seconds": seconds,
        "status": if all_ok { "complete" } else { "complete with failures" },
    });
    std::fs::write(
        out.join("provenance.json"),
        serde_json::to_string_pretty(&provenance)? + "\n",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReproduceArgs,
    }

    fn parse(argv: &[&str]) -> Result<ReproduceArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("reproduce").chain(argv.iter().copied()))
            .map(|c| c.args)
    }

    #[test]
    fn both_families_by_default_and_family_selects() {
        let root = Path::new("/ws");
        let files = |argv: &[&str]| experiment_files(&parse(argv).unwrap(), root);
        assert_eq!(
            files(&[]),
            [
                root.join("xtask/experiments/testbed.toml"),
                root.join("xtask/experiments/llama.toml")
            ]
        );
        assert_eq!(
            files(&["--family", "llama"]),
            [root.join("xtask/experiments/llama.toml")]
        );
        assert_eq!(
            files(&["--family", "minilm"]),
            [root.join("xtask/experiments/testbed.toml")]
        );
        assert_eq!(
            files(&["--experiment", "x.toml"]),
            [PathBuf::from("x.toml")]
        );
        assert!(parse(&["--family", "llama", "--experiment", "x.toml"]).is_err());
        assert!(parse(&["--family", "gpt"]).is_err());
    }

    #[test]
    fn the_illustration_shows_the_first_point_of_its_variant() {
        let root = crate::common::workspace_root();
        let f = root.join("xtask/experiments/llama.toml");
        let exp = experiment::load(&f).unwrap();
        let r = experiment::resolve(
            &exp,
            &f,
            &experiment::ResolveOptions {
                quick: false,
                builtins: ["testbed", "eval", "ultradelta", "cache", "workspace"]
                    .iter()
                    .map(|k| (k.to_string(), format!("/{k}")))
                    .collect(),
                overrides: &[],
                synthetic: false,
                only_variants: &[],
                only_ratios: &[],
                only_tasks: &[],
            },
        )
        .unwrap();
        let points = plan(&r);
        let at = illustration_point(&r, &points).unwrap();
        assert_eq!(points[at].variant.name, "ultradelta");
        assert_eq!(points[at].target, Some(r.ratios[0]));
    }

    #[test]
    fn illustrate_reads_continuations_and_reports_failures() {
        let il = experiment::Illustration {
            command: vec![
                "sh".into(),
                "-c".into(),
                r#"echo log; echo '{"continuations":[{"prompt":"a","continuation":"x y"},{"prompt":"b","continuation":"z"}]}'; : {model}"#.into(),
            ],
            prompts: vec!["a".into(), "b".into()],
            variant: "ultradelta".into(),
            tasks: vec![],
        };
        assert_eq!(illustrate(&il, Path::new("/m")), ["x y", "z"]);
        let bad = experiment::Illustration {
            command: vec![
                "sh".into(),
                "-c".into(),
                "echo boom >&2; exit 3; : {model}".into(),
            ],
            ..il
        };
        let out = illustrate(&bad, Path::new("/m"));
        assert_eq!(out.len(), 2);
        assert!(out[0].contains("generation failed: boom"), "{out:?}");
    }
}
