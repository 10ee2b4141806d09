//! The batch manifest (JSON Lines, one compress job per line) and which share of it a process runs.
//!
//! A job's `options` object becomes `compress` arguments (`--name value`, `true` as a bare flag, arrays as a
//! repeated flag) parsed by `compress`'s own clap definition and turned into a configuration by the same function
//! `compress` uses, so a job accepts exactly what `compress` accepts and means the same by it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, FromArgMatches};
use serde_json::{Map, Value};
use ultradelta::CompressConfig;

use crate::args::CompressArgs;

/// Keys a manifest line may have.
const LINE_KEYS: [&str; 4] = ["base", "finetuned", "output", "options"];

/// Option names that are a line's own fields (or meaningless for one job).
const RESERVED: [&str; 4] = ["base", "finetuned", "output", "output-dir"];

/// One compress job of the manifest.
#[derive(Debug)]
pub struct Job {
    /// Zero-based number among the manifest's jobs (non-empty lines): what sharding uses.
    pub index: usize,
    /// One-based line number in the manifest file.
    pub line: usize,
    /// Base checkpoint (resolved against the manifest's folder).
    pub base: PathBuf,
    /// Fine-tuned checkpoint (resolved).
    pub finetuned: PathBuf,
    /// Archive to write (resolved).
    pub output: PathBuf,
    /// The `options` object as given, keys spelled like the flags (`zstd_level` → `zstd-level`).
    pub options: Map<String, Value>,
    /// `base` and `finetuned` as written in the manifest (what [`Job::spec`] compares).
    pub written: (String, String),
    /// The options parsed by `compress`'s parser (paths resolved).
    pub args: Box<CompressArgs>,
    /// The configuration they describe, checked.
    pub config: CompressConfig,
}

impl Job {
    /// What decides this job's output: its inputs and options, as the line writes them (so the same manifest
    /// named by another path, or mounted elsewhere on another node, is the same spec). A result record made for a
    /// different spec belongs to an earlier version of the line.
    pub fn spec(&self) -> Value {
        serde_json::json!({
            "base": self.written.0,
            "finetuned": self.written.1,
            "options": Value::Object(self.options.clone()),
        })
    }

    /// `job 3 (line 4)`.
    pub fn label(&self) -> String {
        format!("job {} (line {})", self.index, self.line)
    }
}

/// Reads and checks the whole manifest: every line is parsed, its options turned into a checked configuration,
/// and outputs checked for duplicates, before any job runs. Errors name the file and the line.
pub fn read(path: &Path) -> Result<Vec<Job>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the manifest {}", path.display()))?;
    // Relative paths are the manifest folder's (as given: a manifest in the working directory keeps them as is).
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut jobs = Vec::new();
    let mut outputs: HashMap<PathBuf, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let job = parse_line(raw, &dir, jobs.len(), line)
            .map_err(|e| anyhow!("{}:{line}: {e:#}", path.display()))?;
        if let Some(first) = outputs.insert(job.output.clone(), line) {
            bail!(
                "{}:{line}: output {} is also line {first}'s output (every job needs its own)",
                path.display(),
                job.output.display()
            );
        }
        jobs.push(job);
    }
    if jobs.is_empty() {
        bail!("{}: the manifest holds no job", path.display());
    }
    Ok(jobs)
}

fn resolve(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn parse_line(raw: &str, dir: &Path, index: usize, line: usize) -> Result<Job> {
    let v: Value = serde_json::from_str(raw).map_err(|e| anyhow!("not valid JSON: {e}"))?;
    let Value::Object(obj) = v else {
        bail!("expected a JSON object {{\"base\": …, \"finetuned\": …, \"output\": …}}");
    };
    if let Some(k) = obj.keys().find(|k| !LINE_KEYS.contains(&k.as_str())) {
        bail!("unknown key \"{k}\" (expected base, finetuned, output and optionally options)");
    }
    let written = |key: &str| {
        obj.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let path_of = |key: &str| -> Result<PathBuf> {
        match obj.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(resolve(dir, s)),
            Some(other) => bail!("\"{key}\" must be a non-empty string, got {other}"),
            None => bail!("missing \"{key}\""),
        }
    };
    let (base, finetuned, output) = (path_of("base")?, path_of("finetuned")?, path_of("output")?);
    let options = match obj.get("options") {
        None => Map::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| (k.replace('_', "-"), v.clone()))
            .collect(),
        Some(other) => bail!("\"options\" must be an object, got {other}"),
    };
    let mut argv: Vec<String> = vec!["compress".into()];
    for (flag, path) in [
        ("--base", &base),
        ("--finetuned", &finetuned),
        ("--output", &output),
    ] {
        argv.push(flag.into());
        argv.push(path.to_string_lossy().into_owned());
    }
    argv.extend(options_argv(&options).map_err(|e| anyhow!("options: {e}"))?);
    let mut args = parse_compress_args(&argv).map_err(|e| anyhow!("options: {e}"))?;
    if let Some(p) = args.lora_out.take() {
        args.lora_out = Some(if p.is_absolute() { p } else { dir.join(p) });
    }
    let config = args.config().map_err(|e| anyhow!("options: {e:#}"))?;
    Ok(Job {
        index,
        line,
        base,
        finetuned,
        output,
        options,
        written: (written("base"), written("finetuned")),
        args,
        config,
    })
}

/// `compress` arguments for an `options` object: `"name": value` → `--name value`, `true` → `--name`, `false`
/// → nothing (every boolean flag is off by default), arrays → the flag once per element.
pub fn options_argv(options: &Map<String, Value>) -> Result<Vec<String>, String> {
    let mut argv = Vec::new();
    for (name, value) in options {
        if RESERVED.contains(&name.as_str()) {
            return Err(format!(
                "\"{name}\" is not an option here: each line gives base, finetuned and output itself"
            ));
        }
        let flag = format!("--{name}");
        let scalar = |v: &Value| -> Result<String, String> {
            match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(format!(
                    "\"{name}\": expected a string or a number, got {other}"
                )),
            }
        };
        match value {
            Value::Bool(true) => argv.push(flag),
            Value::Bool(false) => {}
            Value::Array(items) => {
                for item in items {
                    argv.push(flag.clone());
                    argv.push(scalar(item)?);
                }
            }
            Value::Null | Value::Object(_) => {
                return Err(format!(
                    "\"{name}\": expected a string, a number, a boolean or an array, got {value}"
                ))
            }
            v => {
                argv.push(flag);
                argv.push(scalar(v)?);
            }
        }
    }
    Ok(argv)
}

/// Parses `argv` (starting with `compress`) with `compress`'s clap definition; a clap error as one line.
fn parse_compress_args(argv: &[String]) -> Result<Box<CompressArgs>, String> {
    let cmd = CompressArgs::augment_args(clap::Command::new("compress"));
    let one_line = |e: clap::Error| {
        let s = e.to_string();
        s.lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string()
    };
    let matches = cmd.try_get_matches_from(argv).map_err(one_line)?;
    CompressArgs::from_arg_matches(&matches)
        .map(Box::new)
        .map_err(one_line)
}

/// Which jobs this process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Share {
    /// Every job.
    All,
    /// The jobs with `index % count == index_of_this`.
    Part {
        /// This task's index (zero-based).
        index: u64,
        /// Number of tasks.
        count: u64,
        /// Where the numbers came from (for the log).
        source: String,
    },
}

impl Share {
    /// Whether job number `job` is in this share.
    pub fn contains(&self, job: usize) -> bool {
        match self {
            Share::All => true,
            Share::Part { index, count, .. } => job as u64 % count == *index,
        }
    }

    /// `all jobs` / `share 2 of 8 (SLURM_ARRAY_TASK_ID)`.
    pub fn describe(&self) -> String {
        match self {
            Share::All => "all jobs".into(),
            Share::Part {
                index,
                count,
                source,
            } => format!("share {index} of {count} ({source})"),
        }
    }
}

/// This process's share from `--index`/`--count` and the scheduler's environment (`env` looks a variable up).
///
/// Precedence: `--index`, else Slurm's array variables (`SLURM_ARRAY_TASK_ID` minus `SLURM_ARRAY_TASK_MIN`,
/// divided by `SLURM_ARRAY_TASK_STEP`), else `JOB_COMPLETION_INDEX` (Kubernetes Indexed Jobs); `--count`, else
/// `SLURM_ARRAY_TASK_COUNT`, else from `SLURM_ARRAY_TASK_MIN/MAX/STEP`. Neither: every job. One without the
/// other is an error, as is an index outside `0..count`.
pub fn resolve_share(
    index: Option<u64>,
    count: Option<u64>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Share> {
    let var = |name: &str| -> Result<Option<u64>> {
        match env(name) {
            None => Ok(None),
            Some(s) if s.trim().is_empty() => Ok(None),
            Some(s) => s
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| anyhow!("{name}={s:?} is not a non-negative integer")),
        }
    };
    let slurm_id = var("SLURM_ARRAY_TASK_ID")?;
    let (slurm_min, slurm_max) = (var("SLURM_ARRAY_TASK_MIN")?, var("SLURM_ARRAY_TASK_MAX")?);
    let step = var("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
    let slurm_index = match slurm_id {
        None => None,
        Some(id) => {
            let min = slurm_min.unwrap_or(0);
            if id < min || (id - min) % step != 0 {
                bail!(
                    "SLURM_ARRAY_TASK_ID={id} is not SLURM_ARRAY_TASK_MIN={min} plus a multiple of the step {step}: \
                     use a range (--array=0-N) or pass --index and --count"
                );
            }
            Some((id - min) / step)
        }
    };
    let slurm_count = match (var("SLURM_ARRAY_TASK_COUNT")?, slurm_min, slurm_max) {
        (Some(c), ..) => Some(c),
        (None, Some(min), Some(max)) if max >= min => Some((max - min) / step + 1),
        _ => None,
    };
    let k8s_index = var("JOB_COMPLETION_INDEX")?;
    let (index, index_source) = match (index, slurm_index, k8s_index) {
        (Some(i), ..) => (Some(i), "--index"),
        (None, Some(i), _) => (Some(i), "SLURM_ARRAY_TASK_ID"),
        (None, None, Some(i)) => (Some(i), "JOB_COMPLETION_INDEX"),
        (None, None, None) => (None, ""),
    };
    let (count, count_source) = match (count, slurm_count) {
        (Some(c), _) => (Some(c), "--count"),
        (None, Some(c)) if slurm_index.is_some() => (Some(c), "SLURM_ARRAY_TASK_COUNT"),
        _ => (None, ""),
    };
    match (index, count) {
        (None, None) => Ok(Share::All),
        (Some(i), None) => bail!(
            "{index_source} gives this task's index {i} but nothing gives the number of tasks: pass --count N"
        ),
        (None, Some(_)) => bail!(
            "--count without an index: pass --index I, or run as a Slurm array task or a Kubernetes Indexed Job"
        ),
        (Some(_), Some(0)) => bail!("the number of tasks ({count_source}) must be at least 1"),
        (Some(i), Some(c)) if i >= c => bail!(
            "task index {i} ({index_source}) is not below the number of tasks {c} ({count_source})"
        ),
        (Some(i), Some(c)) => Ok(Share::Part {
            index: i,
            count: c,
            source: match (index_source, count_source) {
                ("--index", "--count") => "--index, --count".into(),
                ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT") => "Slurm array".into(),
                (i, c) => format!("{i}, {c}"),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn part(share: Share) -> (u64, u64) {
        match share {
            Share::Part { index, count, .. } => (index, count),
            Share::All => panic!("expected a part"),
        }
    }

    #[test]
    fn nothing_means_every_job() {
        assert_eq!(resolve_share(None, None, env(&[])).unwrap(), Share::All);
        assert!(Share::All.contains(12345));
    }

    #[test]
    fn flags_win_over_the_environment() {
        let e = [
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ];
        assert_eq!(
            part(resolve_share(Some(1), Some(2), env(&e)).unwrap()),
            (1, 2)
        );
        assert_eq!(part(resolve_share(None, None, env(&e)).unwrap()), (3, 4));
    }

    #[test]
    fn slurm_ranges_not_starting_at_zero_and_with_steps() {
        let e = [
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "8"),
        ];
        assert_eq!(part(resolve_share(None, None, env(&e)).unwrap()), (4, 8));
        let e = [
            ("SLURM_ARRAY_TASK_ID", "6"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "14"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
        ];
        assert_eq!(part(resolve_share(None, None, env(&e)).unwrap()), (3, 8));
        // A list array (--array=1,3,7) cannot be mapped onto a range.
        let e = [
            ("SLURM_ARRAY_TASK_ID", "7"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "7"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ];
        assert!(resolve_share(None, None, env(&e)).is_err());
    }

    #[test]
    fn kubernetes_needs_a_count() {
        let e = [("JOB_COMPLETION_INDEX", "2")];
        assert_eq!(part(resolve_share(None, Some(5), env(&e)).unwrap()), (2, 5));
        let err = resolve_share(None, None, env(&e)).unwrap_err().to_string();
        assert!(err.contains("--count"), "{err}");
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(resolve_share(Some(2), Some(2), env(&[])).is_err());
        assert!(resolve_share(Some(0), Some(0), env(&[])).is_err());
        assert!(resolve_share(Some(0), None, env(&[])).is_err());
        assert!(resolve_share(None, Some(3), env(&[])).is_err());
        let e = [("SLURM_ARRAY_TASK_ID", "x")];
        assert!(resolve_share(None, None, env(&e)).is_err());
    }

    #[test]
    fn shares_partition_the_jobs() {
        for count in 1..6u64 {
            let mut seen = vec![0; 23];
            for index in 0..count {
                let s = resolve_share(Some(index), Some(count), env(&[])).unwrap();
                for (j, n) in seen.iter_mut().enumerate() {
                    *n += usize::from(s.contains(j));
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "count {count}: {seen:?}");
        }
    }

    #[test]
    fn options_become_compress_arguments() {
        let o: Map<String, Value> = serde_json::from_str(
            r#"{"bits": 3, "drop": ["*embeddings*", "*norm*"], "force": true, "no-msa": false, "rescale": "global"}"#,
        )
        .unwrap();
        assert_eq!(
            options_argv(&o).unwrap(),
            [
                "--bits",
                "3",
                "--drop",
                "*embeddings*",
                "--drop",
                "*norm*",
                "--force",
                "--rescale",
                "global"
            ]
        );
        for bad in [r#"{"bits": null}"#, r#"{"x": {}}"#, r#"{"output": "a"}"#] {
            let o: Map<String, Value> = serde_json::from_str(bad).unwrap();
            assert!(options_argv(&o).is_err(), "{bad}");
        }
    }
}
