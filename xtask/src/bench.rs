#![allow(unsafe_code)] // wait4 (a child's peak RSS) and sync(2) through libc; each block says why it is sound.
//! `cargo xtask bench`: how the cost of `ultradelta compress` and `apply` grows with model size.
//!
//! For each size it writes (or reuses) a deterministic synthetic base + fine-tune pair, builds
//! the release CLI, runs `ultradelta compress` and `ultradelta apply` as child processes and
//! measures each child's wall time, CPU time and peak resident set size (from `wait4`'s rusage,
//! so the figures are the child's own; `--repeat N` keeps the median run). It prints a table of
//! parameters/s, seconds, CPU seconds and peak RSS per size and writes `results/<date>-bench/bench.csv` beside `provenance.json` (git revision,
//! machine, time, input fingerprints and the full configuration), so every number can be
//! traced.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use ultradelta_io::{Checkpoint, DType};
use ultradelta_synth::{parameter_count, Shape, SynthConfig};

use crate::common::{build_cli, git, machine, target_dir, utc, utf8, workspace_root};

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Model shapes to run, smallest first (tiny, bert-mini, bert-base, llama-1b, llama-7b, llama-13b).
    #[arg(long, value_delimiter = ',', value_parser = parse_shape,
          default_value = "tiny,bert-mini,bert-base,llama-1b")]
    pub sizes: Vec<Shape>,
    /// CI smoke run: the tiny shape only (seconds); overrides --sizes.
    #[arg(long)]
    pub smoke: bool,
    /// Where the synthetic pairs, archives and rebuilt checkpoints go (default: TARGET/bench, TARGET being the cargo target folder).
    /// Pairs already there are reused.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Results folder (default: results/DATE-bench in the workspace, DATE the UTC date).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Target sparsity passed to `ultradelta compress`.
    #[arg(long, default_value_t = 0.97)]
    pub sparsity: f64,
    /// Bits passed to `ultradelta compress` [default: none passed, the model family's].
    #[arg(long)]
    pub bits: Option<u8>,
    /// Storage dtype of the synthetic checkpoints: f32, f16 or bf16.
    #[arg(long, default_value = "bf16", value_parser = parse_dtype)]
    pub dtype: DType,
    /// Seed of the synthetic pairs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep the rebuilt checkpoints (deleted after measuring by default, to save disk).
    #[arg(long)]
    pub keep_rebuilt: bool,
    /// Runs of compress and of apply per size; the report gives the run with the median wall time (and the
    /// largest peak RSS of all runs). More runs steady the figures on a shared machine.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub repeat: u32,
    /// Measure this `ultradelta` binary instead of building the workspace's (e.g. an earlier commit's build, to
    /// compare before and after a change on the same machine state).
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
}

fn parse_shape(s: &str) -> Result<Shape, String> {
    s.parse::<Shape>().map_err(|e| e.to_string())
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "fp32" | "float32" => Ok(DType::F32),
        "f16" | "fp16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(format!("unknown dtype \"{s}\": expected f32, f16 or bf16")),
    }
}

/// Wall time, CPU time and peak RSS of one finished child process.
#[derive(Clone, Copy, Debug)]
struct Measured {
    seconds: f64,
    /// User + system CPU seconds (both cores count): steadier than wall time on a shared machine.
    cpu_seconds: f64,
    peak_rss_bytes: u64,
}

/// Runs `bin args` `repeat` times: the run with the median wall time, with the largest peak RSS of all runs.
fn run_median(
    bin: &Path,
    args: &[&str],
    repeat: u32,
    before: impl Fn() -> Result<()>,
) -> Result<Measured> {
    let mut runs = (0..repeat)
        .map(|_| {
            before()?;
            run_measured(bin, args)
        })
        .collect::<Result<Vec<_>>>()?;
    let peak = runs.iter().map(|m| m.peak_rss_bytes).max().unwrap_or(0);
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    Ok(Measured {
        peak_rss_bytes: peak,
        ..runs[runs.len() / 2]
    })
}

/// Runs `bin args` to completion and measures it. The child is reaped with `wait4`, whose
/// rusage is that child's alone (`RUSAGE_CHILDREN` would be the maximum over every child).
fn run_measured(bin: &Path, args: &[&str]) -> Result<Measured> {
    eprintln!("$ ultradelta {}", args.join(" "));
    let start = Instant::now();
    let child = Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = loop {
        // SAFETY: `pid` is our own un-reaped child (std's `Child` is never waited on: we drop
        // it below without calling `wait`), and both out-pointers are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    let seconds = start.elapsed().as_secs_f64();
    drop(child);
    if reaped != pid {
        bail!(
            "wait4 on ultradelta failed: {}",
            std::io::Error::last_os_error()
        );
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!(
            "ultradelta {} failed (wait status {status})",
            args.join(" ")
        );
    }
    // Linux reports ru_maxrss in KiB.
    let peak_rss_bytes = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Ok(Measured {
        seconds,
        cpu_seconds: secs(usage.ru_utime) + secs(usage.ru_stime),
        peak_rss_bytes,
    })
}

/// One size's results.
struct Row {
    shape: Shape,
    params: u64,
    synth_seconds: Option<f64>,
    compress: Measured,
    apply: Measured,
    archive_bytes: u64,
    base_fingerprint: String,
    finetuned_fingerprint: String,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Writes the synthetic pair into `dir` unless a complete one is there; returns the seconds
/// spent writing (None when reused).
fn ensure_pair(dir: &Path, cfg: &SynthConfig) -> Result<Option<f64>> {
    let marker = dir.join(".complete");
    let expected = format!(
        "{:?}",
        (
            cfg.shape.to_string(),
            cfg.dtype.name(),
            cfg.seed,
            cfg.rel_scale
        )
    );
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(expected.as_str()) {
        eprintln!(
            "xtask: reusing the synthetic {} pair in {}",
            cfg.shape,
            dir.display()
        );
        return Ok(None);
    }
    eprintln!(
        "xtask: writing a synthetic {} pair into {}",
        cfg.shape,
        dir.display()
    );
    let _ = std::fs::remove_file(&marker);
    let start = Instant::now();
    let cfg = SynthConfig {
        overwrite: true,
        ..cfg.clone()
    };
    ultradelta_synth::write_pair(dir, &cfg, |_, _| {}).with_context(|| {
        format!(
            "writing the synthetic {} pair into {}",
            cfg.shape,
            dir.display()
        )
    })?;
    let secs = start.elapsed().as_secs_f64();
    std::fs::write(&marker, expected)?;
    Ok(Some(secs))
}

/// The synthetic pair's configuration for `shape` under `args`.
fn synth_config(shape: Shape, args: &BenchArgs) -> SynthConfig {
    SynthConfig {
        dtype: args.dtype,
        seed: args.seed,
        ..SynthConfig::new(shape)
    }
}

/// Set (to the seconds each pair took to write, `shape=secs;…`) in the bench process that [`run`] starts afresh
/// after writing synthetic pairs itself.
const FRESH_ENV: &str = "ULTRADELTA_BENCH_WROTE_PAIRS";

fn bench_size(
    bin: &Path,
    work: &Path,
    shape: Shape,
    args: &BenchArgs,
    synth_seconds: Option<f64>,
) -> Result<Row> {
    let dir = work.join(shape.to_string());
    let (base, ft) = (dir.join("base"), dir.join("finetuned"));
    let archive = dir.join("finetuned.udelta");
    let rebuilt = dir.join("rebuilt");
    let fp = |p: &Path| -> Result<String> {
        Ok(Checkpoint::open(p)
            .with_context(|| format!("opening {}", p.display()))?
            .fingerprint())
    };
    let (base_fingerprint, finetuned_fingerprint) = (fp(&base)?, fp(&ft)?);
    let (s, bits) = (args.sparsity.to_string(), args.bits.map(|b| b.to_string()));
    let (b, f, a, r) = (utf8(&base)?, utf8(&ft)?, utf8(&archive)?, utf8(&rebuilt)?);
    let compress = run_median(
        bin,
        &crate::demo::compress_args(b, f, a, &s, bits.as_deref()),
        args.repeat,
        || Ok(()),
    )?;
    // Every apply run writes a new folder: the previous run's output is deleted and the disk synced first,
    // untimed (replacing an existing output with --force would time the deletion of the old files too).
    let fresh_output = || -> Result<()> {
        if rebuilt.exists() {
            std::fs::remove_dir_all(&rebuilt)
                .with_context(|| format!("removing {}", rebuilt.display()))?;
        }
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        Ok(())
    };
    let apply = run_median(
        bin,
        &["apply", "--base", b, "--output", r, "--force", "--quiet", a],
        args.repeat,
        fresh_output,
    )?;
    let archive_bytes = std::fs::metadata(&archive)?.len();
    if !args.keep_rebuilt {
        std::fs::remove_dir_all(&rebuilt)
            .with_context(|| format!("removing {}", rebuilt.display()))?;
    }
    Ok(Row {
        shape,
        params: parameter_count(shape),
        synth_seconds,
        compress,
        apply,
        archive_bytes,
        base_fingerprint,
        finetuned_fingerprint,
    })
}

pub fn run(args: BenchArgs) -> Result<()> {
    if !(args.sparsity.is_finite() && (0.0..1.0).contains(&args.sparsity)) {
        bail!("--sparsity {}: expected a number in [0, 1)", args.sparsity);
    }
    let sizes: Vec<Shape> = if args.smoke {
        vec![Shape::Tiny]
    } else {
        args.sizes.clone()
    };
    if sizes.is_empty() {
        bail!("--sizes: expected at least one model shape");
    }
    let bin = match &args.bin {
        Some(b) if b.is_file() => b.clone(),
        Some(b) => bail!("--bin {}: no such file", b.display()),
        None => build_cli()?,
    };
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| target_dir().join("bench"));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let (date, time) = utc(started);
    let out = args.out.clone().unwrap_or_else(|| {
        workspace_root()
            .join("results")
            .join(format!("{date}-bench"))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    // The pairs are written first. A child's peak RSS from wait4 is at least this process's own high-water RSS
    // at the child's exec (Linux keeps the larger of the two), and writing a pair in this process raises that to
    // the pair's size (LLaMA-1B: 528 MiB, above its compress's 399 MiB): after writing any, the bench starts
    // again in a fresh process, which finds the pairs written and measures children that inherit no high water.
    let wrote: Option<String> = std::env::var(FRESH_ENV).ok();
    let mut synth_seconds = Vec::with_capacity(sizes.len());
    for &shape in &sizes {
        let secs = ensure_pair(&work.join(shape.to_string()), &synth_config(shape, &args))?;
        let earlier = wrote.as_deref().and_then(|w| {
            w.split(';')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == shape.to_string())
                .and_then(|(_, v)| v.parse().ok())
        });
        synth_seconds.push(secs.or(earlier));
    }
    if wrote.is_none() && synth_seconds.iter().any(Option::is_some) {
        use std::os::unix::process::CommandExt as _;
        let record: Vec<String> = sizes
            .iter()
            .zip(&synth_seconds)
            .filter_map(|(shape, s)| s.map(|s| format!("{shape}={s}")))
            .collect();
        let mut argv = std::env::args_os();
        let exe = std::env::current_exe().context("finding the xtask binary to start afresh")?;
        argv.next();
        eprintln!("xtask: pairs written; measuring in a fresh process (see bench.rs, FRESH_ENV)");
        let err = Command::new(exe)
            .args(argv)
            .env(FRESH_ENV, record.join(";"))
            .exec();
        return Err(err).context("starting the bench afresh");
    }

    let mut rows = Vec::new();
    for (&shape, &secs) in sizes.iter().zip(&synth_seconds) {
        rows.push(bench_size(&bin, &work, shape, &args, secs)?);
    }

    let mut csv = String::from(
        "shape,parameters,compress_seconds,compress_params_per_second,compress_cpu_seconds,compress_peak_rss_bytes,\
         apply_seconds,apply_params_per_second,apply_cpu_seconds,apply_peak_rss_bytes,archive_bytes,synth_seconds\n",
    );
    for r in &rows {
        let _ = writeln!(
            csv,
            "{},{},{:.4},{:.0},{:.3},{},{:.4},{:.0},{:.3},{},{},{}",
            r.shape,
            r.params,
            r.compress.seconds,
            r.params as f64 / r.compress.seconds,
            r.compress.cpu_seconds,
            r.compress.peak_rss_bytes,
            r.apply.seconds,
            r.params as f64 / r.apply.seconds,
            r.apply.cpu_seconds,
            r.apply.peak_rss_bytes,
            r.archive_bytes,
            r.synth_seconds
                .map(|s| format!("{s:.3}"))
                .unwrap_or_default()
        );
    }
    std::fs::write(out.join("bench.csv"), &csv)?;

    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    let provenance = serde_json::json!({
        "command": "cargo xtask bench",
        "git_revision": git(&["rev-parse", "HEAD"]),
        "git_dirty": dirty,
        "started_utc": time,
        "started_unix": started,
        "machine": machine(),
        "cli": { "path": bin.display().to_string(), "version": version, "profile": "release" },
        "configuration": {
            "sizes": sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "smoke": args.smoke,
            "sparsity": args.sparsity,
            "bits": args.bits,
            "dtype": args.dtype.name(),
            "seed": args.seed,
            "repeat": args.repeat,
            "rel_scale": SynthConfig::new(Shape::Tiny).rel_scale,
            "work_dir": work.display().to_string(),
            "compress_args": crate::demo::compress_args("<base>", "<finetuned>", "<archive>",
                &args.sparsity.to_string(), args.bits.map(|b| b.to_string()).as_deref()),
            "apply_args": ["apply", "--base", "<base>", "--output", "<rebuilt>", "--force", "--quiet", "<archive>"],
            "measurement": "wall time of the child process, the run with the median wall time of `repeat` runs; CPU seconds = wait4 rusage user + system time of that run; peak RSS = the largest wait4 rusage ru_maxrss of the runs",
        },
        "inputs": rows.iter().map(|r| serde_json::json!({
            "shape": r.shape.to_string(),
            "parameters": r.params,
            "base_fingerprint": r.base_fingerprint,
            "finetuned_fingerprint": r.finetuned_fingerprint,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        out.join("provenance.json"),
        serde_json::to_string_pretty(&provenance)? + "\n",
    )?;

    println!();
    println!(
        "ultradelta compress / apply on synthetic pairs ({}, s = {}, b = {})",
        args.dtype.name(),
        args.sparsity,
        crate::demo::bits_label(args.bits)
    );
    println!(
        "{:<10} {:>14} | {:>9} {:>7} {:>12} {:>10} | {:>9} {:>7} {:>12} {:>10} | {:>11}",
        "shape",
        "parameters",
        "compr. s",
        "CPU s",
        "params/s",
        "peak MiB",
        "apply s",
        "CPU s",
        "params/s",
        "peak MiB",
        "archive MiB"
    );
    for r in &rows {
        println!(
            "{:<10} {:>14} | {:>9.3} {:>7.2} {:>12.3e} {:>10.1} | {:>9.3} {:>7.2} {:>12.3e} {:>10.1} | {:>11.2}",
            r.shape.to_string(),
            r.params,
            r.compress.seconds,
            r.compress.cpu_seconds,
            r.params as f64 / r.compress.seconds,
            mib(r.compress.peak_rss_bytes),
            r.apply.seconds,
            r.apply.cpu_seconds,
            r.params as f64 / r.apply.seconds,
            mib(r.apply.peak_rss_bytes),
            mib(r.archive_bytes)
        );
    }
    println!("results: {}", out.display());
    Ok(())
}
