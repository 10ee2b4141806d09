//! The `ultradelta` command-line tool: a thin layer over the `ultradelta` facade crate.
//!
//! It parses arguments, draws progress on a terminal, prints reports (human or JSON) and
//! turns errors into one line on stderr. It holds no compression logic of its own.

mod args;
mod progress;

/// `println!` that never panics: when stdout is closed (e.g. `| head`) the process ends quietly with status 0,
/// on any other write error (e.g. `> /dev/full`) with one error line on stderr and status 1.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*).and_then(|()| out.flush()) {
            $crate::stdout_failed(e);
        }
    }};
}

/// `eprintln!` that never panics: a closed or full stderr is ignored (there is nowhere left to report to).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Ends the process after a failed write to stdout: status 0 for a closed pipe (the reader has what it wanted),
/// otherwise an error line (if stderr still takes one) and status 1.
pub(crate) fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    errln!("error: writing to stdout: {e}");
    std::process::exit(1);
}

// After `outln!`, which it uses.
mod batch;
mod interrupt;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ultradelta::archive::ArchiveReader;
use ultradelta::io::Checkpoint;
use ultradelta::{ApplyOptions, Method};

use crate::args::{ApplyArgs, Cli, Command, CompressArgs, EvalArgs, InspectArgs, VerifyArgs};
use crate::progress::CliProgress;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap's own printing (help, version, usage errors) panics on a closed stdout/stderr.
            let code = e.exit_code();
            let written = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    use std::io::IsTerminal as _;
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    let text = e.render();
                    if out.is_terminal() {
                        write!(out, "{}", text.ansi())
                    } else {
                        write!(out, "{text}")
                    }
                    .and_then(|()| out.flush())
                }
                _ => {
                    use std::io::IsTerminal as _;
                    use std::io::Write as _;
                    let mut err = std::io::stderr().lock();
                    let text = e.render();
                    let _ = if err.is_terminal() {
                        write!(err, "{}", text.ansi())
                    } else {
                        write!(err, "{text}")
                    };
                    Ok(())
                }
            };
            if let Err(w) = written {
                stdout_failed(w);
            }
            return ExitCode::from(u8::try_from(code).unwrap_or(2));
        }
    };
    let verifying = matches!(cli.command, Command::Verify(_));
    if !matches!(cli.command, Command::Inspect(_)) {
        interrupt::install();
    }
    let batch = matches!(cli.command, Command::Batch(_));
    match run(cli) {
        Ok(()) => {
            if let Some(sig) = interrupt::received() {
                errln!(
                    "ultradelta: {} came after the last tensor: finished all the same",
                    interrupt::name(sig)
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if let (Some(ultradelta::Error::Cancelled), Some(sig)) =
                (e.downcast_ref::<ultradelta::Error>(), interrupt::received())
            {
                if batch {
                    errln!(
                        "error: interrupted by {}: the jobs under way stopped, nothing of theirs written; finished jobs kept",
                        interrupt::name(sig)
                    );
                } else {
                    errln!(
                        "error: interrupted by {}: stopped before it finished; nothing was written (an output that existed is unchanged)",
                        interrupt::name(sig)
                    );
                }
                // the shell's convention for a process ended by a signal
                return ExitCode::from(128u8.saturating_add(u8::try_from(sig).unwrap_or(0)));
            }
            errln!("error: {}{}", error_line(&e), flag_hint(&e));
            if verifying {
                verify_exit_code(&e)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `verify`'s exit status: 3 for a corrupt archive, 4 for a wrong base, 1 for I/O and everything else.
fn verify_exit_code(e: &anyhow::Error) -> ExitCode {
    use ultradelta::VerifyFailure;
    // cmd_verify returns the facade's errors only (see there).
    let failure = e
        .downcast_ref::<ultradelta::Error>()
        .map_or(VerifyFailure::Io, ultradelta::verify_failure);
    match failure {
        VerifyFailure::Corrupt => ExitCode::from(3),
        VerifyFailure::WrongBase => ExitCode::from(4),
        VerifyFailure::Io => ExitCode::FAILURE,
    }
}

/// The error and its causes on one line, each cause once: library errors already name their source in their own
/// text (`file: open: No such file…`), so a cause the line already says is not repeated.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if line.is_empty() {
            line = cause;
        } else if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

/// The flag behind a library error, when the user fixes it with one: the library speaks of configuration fields
/// and options, the command line of flags.
fn flag_hint(e: &anyhow::Error) -> String {
    use ultradelta::{archive, io, Error};
    let flag = match e.downcast_ref::<Error>() {
        Some(Error::InvalidConfig { field, .. }) => args::flag_of(field),
        Some(Error::NotCompressible { .. }) => Some("--keep, --drop"),
        Some(
            Error::OutputExists { .. }
            | Error::Archive(archive::Error::OutputExists { .. })
            | Error::Io(io::Error::OutputExists { .. }),
        ) => return "; --force replaces it".into(),
        Some(Error::BaseFile { .. }) => {
            return " (compress --self-contained stores companion files whole)".into()
        }
        _ => None,
    };
    flag.map(|f| format!(" (set by {f})")).unwrap_or_default()
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("starting the thread pool")?;
    }
    let progress = CliProgress::new(cli.quiet);
    match cli.command {
        Command::Compress(a) => cmd_compress(*a, &progress),
        Command::Apply(a) => cmd_apply(a, &progress),
        Command::Inspect(a) => cmd_inspect(a),
        Command::Verify(a) => cmd_verify(a, &progress),
        Command::Eval(a) => cmd_eval(a, &progress),
        Command::Batch(a) => batch::run(a, cli.quiet),
    }
}

fn open(path: &Path, progress: &CliProgress) -> Result<Checkpoint> {
    Ok(ultradelta::open_checkpoint(path, progress)?)
}

/// Refuses an output that exists, without `--force`, before any input is opened: opening can take a while (a
/// PyTorch file's strided views are copied then). The writers check again when they publish.
fn refuse_existing(output: Option<&Path>, force: bool) -> Result<()> {
    match output {
        Some(path) if !force && std::fs::symlink_metadata(path).is_ok() => {
            Err(ultradelta::Error::OutputExists {
                path: path.to_path_buf(),
            }
            .into())
        }
        _ => Ok(()),
    }
}

fn cmd_compress(a: CompressArgs, progress: &CliProgress) -> Result<()> {
    let cfg = a.config()?;
    refuse_existing(a.output.as_deref(), a.force)?;
    let base = open(&a.base, progress)?;
    let reports = match (&a.output, &a.output_dir) {
        (Some(out), None) => {
            if a.finetuned.len() != 1 {
                bail!(
                    "--output takes one --finetuned; use --output-dir for {} fine-tunes",
                    a.finetuned.len()
                );
            }
            let ft = open(&a.finetuned[0], progress)?;
            let report = ultradelta::compress(&base, &ft, &cfg, out, a.force, progress)?;
            if let Some(dir) = &a.lora_out {
                let written = ultradelta::export_lora(&report.output, dir, a.force)?;
                if !a.json {
                    outln!("wrote LoRA adapter {}", written.display());
                }
            }
            vec![report]
        }
        (None, Some(dir)) => {
            let fts = a
                .finetuned
                .iter()
                .map(|p| open(p, progress))
                .collect::<Result<Vec<_>>>()?;
            ultradelta::compress_many(&base, &fts, &cfg, dir, a.force, progress)?
        }
        _ => bail!("give --output FILE (one fine-tune) or --output-dir DIR"),
    };
    let mut json = Vec::new();
    for r in &reports {
        let ins = ultradelta::inspect(&ArchiveReader::open(&r.output)?);
        if a.json {
            json.push(serde_json::json!({
                "report": r, "ratio": ins.ratio, "bytes": ins.bytes, "codec": ins.codec
            }));
        } else {
            let c = r.counts;
            outln!(
                "wrote {} ({} bytes, method {}): {} {} compressed, {} kept losslessly, {} dropped, {} stored whole; gamma {:.6}",
                r.output.display(),
                ins.bytes,
                r.method,
                c.compress,
                noun(c.compress, "tensor", "tensors"),
                c.keep,
                c.drop,
                c.new,
                r.gamma
            );
            outln!("  {}", ratio_line(&ins));
            if let Some(c) = &ins.codec {
                outln!("  {}", codec_line(c));
            }
            if let Some(b) = &r.budget {
                outln!("  {}", budget_line(b, ins.codec.is_some()));
            }
            if !r.base_only.is_empty() {
                outln!(
                    "  only in the base (not in the rebuilt model): {}",
                    r.base_only.join(", ")
                );
            }
            if !r.appended.is_empty() {
                outln!(
                    "  grown by rows the base lacks (added tokens?), the added rows stored whole: {}",
                    r.appended.join(", ")
                );
            }
            if !r.reshaped.is_empty() {
                outln!(
                    "  stored whole, their shape or dtype differs from the base's (a resized vocabulary?): {}",
                    r.reshaped.join(", ")
                );
            }
        }
    }
    if a.json {
        let v = if json.len() == 1 {
            json.remove(0)
        } else {
            serde_json::Value::Array(json)
        };
        outln!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

/// The parameters that define `method`, in one line (e.g. `sparsity 0.97, bits 4, MSA, DAC`).
fn method_params(method: &str, p: &serde_json::Value) -> String {
    let g = |k: &str| {
        p.get(k)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "?".into())
    };
    let flag = |k: &str, on: &str, yes: &str, no: &str| {
        if p.get(k).and_then(|v| v.as_str()) == Some(on) {
            yes.to_string()
        } else {
            no.to_string()
        }
    };
    let mut s = match Method::from_name(method) {
        Some(Method::Ultradelta) => format!(
            "sparsity {}, bits {}, step {}, {}, {}, rescale {}, {}",
            g("sparsity"),
            g("bits"),
            g("step"),
            match p.get("allocation").and_then(|v| v.as_str()) {
                Some("msa") => "MSA".to_string(),
                Some("msa-relative") => format!("MSA, relative tiers ±{}", g("tier_spread")),
                Some("rate-distortion") =>
                    format!("rate-distortion allocation, σ^{}", g("rd_power")),
                _ => "uniform allocation".to_string(),
            },
            flag("pruning", "group", "DAC", "random drop"),
            g("rescale"),
            if p.get("quantize").and_then(|v| v.as_bool()) == Some(false) {
                "fp16 values"
            } else {
                "quantized"
            }
        ),
        Some(Method::Dare) => format!("drop probability {}, fp16 values", g("sparsity")),
        Some(Method::Magnitude) => {
            format!("sparsity {} (top-k by |delta|), fp16 values", g("sparsity"))
        }
        Some(Method::Compeft) => {
            format!("sparsity {}, alpha {}", g("sparsity"), g("compeft_alpha"))
        }
        Some(Method::Bitdelta) => "sign x mean |delta| per tensor".to_string(),
        Some(Method::Lowrank) => format!("rank {}", g("rank")),
        Some(Method::Quant) => format!("bits {}", g("bits")),
        None => "unknown method".to_string(),
    };
    if let Some(b) = p.get("budget") {
        s.push_str(&format!("; budget {}", b));
    }
    s
}

/// What the budget search chose, in one line. `density_shown`: the codec line above gives the kept density, which
/// differs from a searched sparsity wherever the allocation's tiers or a sparse delta's denser sample move it.
fn budget_line(b: &ultradelta::BudgetReport, density_shown: bool) -> String {
    let fits = match b.fixed_bytes {
        Some(f) => format!(
            "archive at most {} bytes ({} fixed + {} compressed-record bytes)",
            f + b.record_bytes,
            f,
            b.record_bytes
        ),
        None => format!(
            "{} of at most {} compressed-record bytes",
            b.record_bytes, b.record_budget
        ),
    };
    let allocated = if density_shown && b.parameter == "sparsity" {
        " (the allocation's target; the kept density is on the codec line)"
    } else {
        ""
    };
    format!(
        "budget: {} (a ceiling): {} = {}{allocated}, {:.3}x over the compressed tensors, {fits}{} ({} passes)",
        b.describe(),
        b.parameter,
        b.value,
        b.achieved,
        if b.within {
            ""
        } else {
            "; more than 1% of the budget unused (the largest setting that fits)"
        },
        b.evaluations
    )
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.1}x"))
        .unwrap_or_else(|| "n/a".into())
}

fn ratio_line(ins: &ultradelta::Inspection) -> String {
    format!(
        "whole file {:.1}x (fine-tune's weight files and shard index, {} bytes, over this archive's {} bytes); compressed tensors {} real vs 16-bit (paper v3 count {}, v2 count {})",
        ins.ratio.whole_checkpoint,
        ins.ratio.finetuned_bytes,
        ins.bytes,
        fmt_ratio(ins.ratio.real),
        fmt_ratio(ins.ratio.paper_v3),
        fmt_ratio(ins.ratio.paper_v2),
    )
}

fn cmd_apply(a: ApplyArgs, progress: &CliProgress) -> Result<()> {
    refuse_existing(Some(&a.output), a.force)?;
    let base = open(&a.base, progress)?;
    let mut opts = ApplyOptions {
        overwrite: a.force,
        ..ApplyOptions::default()
    };
    if let Some(m) = a.max_shard_size {
        opts.max_shard_bytes = m;
    }
    let out = ultradelta::apply(&base, &a.archive, &a.output, &opts, progress)?;
    outln!("rebuilt {}", out.display());
    Ok(())
}

/// `codec golomb+packed: 9.63 bits per kept entry = 5.61 position + 4.00 value + 0.02 overhead; density 3.000%`
/// `one` for a count of 1, `many` otherwise.
fn noun<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

fn codec_line(c: &ultradelta::CodecSummary) -> String {
    let mixed = if c.records.len() > 1 {
        format!(
            " ({})",
            c.records
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        String::new()
    };
    let lowrank = if c.lowrank_records > 0 {
        format!(
            " + {:.2} low-rank ({} {} with a part)",
            c.lowrank_bits_per_kept,
            c.lowrank_records,
            noun(c.lowrank_records, "matrix", "matrices")
        )
    } else {
        String::new()
    };
    if c.kept_entries == 0 {
        // Every compressed tensor unchanged by the fine-tune, say: no per-entry cost to show.
        return format!(
            "codec {}{mixed}: no entry kept (density 0%: the compressed tensors rebuild as the base's)",
            c.codec
        );
    }
    format!(
        "codec {}{mixed}: {:.2} bits per kept entry = {:.2} position + {:.2} value{lowrank} + {:.2} overhead; density {:.3}% ({} kept)",
        c.codec,
        c.bits_per_kept,
        c.position_bits_per_kept,
        c.value_bits_per_kept,
        c.overhead_bits_per_kept,
        100.0 * c.density,
        c.kept_entries
    )
}

fn cmd_inspect(a: InspectArgs) -> Result<()> {
    let ins = ultradelta::inspect(&ArchiveReader::open(&a.archive)?);
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&ins)?);
        return Ok(());
    }
    outln!(
        "{}: format v{}, method {}, {} bytes",
        a.archive.display(),
        ins.format_version,
        ins.method,
        ins.bytes
    );
    outln!("{}", ratio_line(&ins));
    match &ins.content_sha256 {
        Some(d) => outln!("content sha256: {d} (as stored; `ultradelta verify` checks it)"),
        None => outln!("content sha256: none (format v1 archives store none)"),
    }
    outln!("method params: {}", method_params(&ins.method, &ins.params));
    outln!("params: {}", serde_json::to_string(&ins.params)?);
    outln!(
        "gamma: {:.6}   base fingerprint: {}",
        ins.gamma,
        ins.base_fingerprint
    );
    outln!(
        "compressed tensors: {} entries, {} kept ({:.3}% density), {} bytes",
        ins.compressed_entries,
        ins.kept_entries,
        100.0 * ins.kept_entries as f64 / ins.compressed_entries.max(1) as f64,
        ins.compressed_bytes
    );
    if let Some(c) = &ins.codec {
        outln!("{}", codec_line(c));
    }
    let b = &ins.breakdown;
    outln!(
        "file bytes: {} compressed tensors, {} kept without loss ({} {}), {} stored whole, {} companion files, {} index, preamble and trailer",
        b.compressed_tensors,
        b.kept_tensors,
        b.kept_count,
        noun(b.kept_count, "tensor", "tensors"),
        b.new_tensors,
        b.companion_files,
        b.index_and_framing
    );
    outln!();
    outln!(
        "{:<60} {:<8} {:<18} {:>9} {:>12}  shape",
        "tensor",
        "policy",
        "kind",
        "sparsity",
        "bytes"
    );
    for t in &ins.tensors {
        let policy = serde_json::to_value(t.policy)?
            .as_str()
            .unwrap_or_default()
            .to_string();
        // After the dtype: a low-rank part's rank (the sparsity is then its sparse residual's) and a row subset's
        // listed rows.
        let mut notes = t
            .lowrank_rank
            .map(|r| format!("  low-rank part, rank {r}"))
            .unwrap_or_default();
        if let Some(h) = t.listed_rows {
            let rows = t.shape.first().copied().unwrap_or(0);
            notes.push_str(&format!("  rows: {h} of {rows} (the others unchanged)"));
        }
        if let Some(b) = t.base_rows {
            let added = t.shape.first().copied().unwrap_or(0).saturating_sub(b);
            notes.push_str(&format!(
                "  rows: {added} added to the base's {b}, stored whole"
            ));
        }
        match (&t.base_name, &t.base_dtype) {
            (Some(n), Some(d)) => notes.push_str(&format!("  (base \"{n}\", {d})")),
            (Some(n), None) => notes.push_str(&format!("  (base \"{n}\")")),
            (None, Some(d)) => notes.push_str(&format!("  (base {d})")),
            (None, None) => {}
        }
        outln!(
            "{:<60} {:<8} {:<18} {:>9.4} {:>12}  {:?} {}{notes}",
            t.name,
            policy,
            t.kind,
            t.sparsity,
            t.bytes,
            t.shape,
            t.dtype
        );
    }
    if !ins.files.is_empty() {
        outln!("\nfiles: {}", ins.files.join(", "));
        if !ins.files_against_base.is_empty() {
            outln!(
                "stored as differences from the base model's files of the same name (apply needs them unchanged): {}",
                ins.files_against_base.join(", ")
            );
        }
    }
    Ok(())
}

fn cmd_verify(a: VerifyArgs, progress: &CliProgress) -> Result<()> {
    // Every error here is the facade's, so that main can tell corrupt archive, wrong base and I/O apart.
    let base = match &a.base {
        Some(p) => Some(ultradelta::open_checkpoint(p, progress)?),
        None => None,
    };
    let report = ultradelta::verify(&a.archive, base.as_ref(), progress)?;
    let sha = sha256_file(&a.archive).map_err(|source| ultradelta::Error::File {
        path: a.archive.clone(),
        source,
    })?;
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "archive": a.archive,
                "ok": true,
                "report": report,
                "sha256": sha,
                "base": a.base,
            }))?
        );
        return Ok(());
    }
    outln!(
        "{}: OK: {} records decoded ({} tensors), {} companion files, every checksum and limit checked{}",
        a.archive.display(),
        report.records,
        report.tensors,
        report.files,
        match &a.base {
            Some(b) => format!(
                "; applies to {} ({} tensors rebuilt in memory)",
                b.display(),
                report.rebuilt
            ),
            None => String::new(),
        }
    );
    match &report.content_sha256 {
        Some(d) => outln!("content sha256: {d} (checked: the archive's content hashes to it)"),
        None => outln!("content sha256: none (format v1 archives store none)"),
    }
    outln!("sha256 of the file: {sha}");
    Ok(())
}

/// SHA-256 of a file's bytes, as 64 lowercase hex digits (read in 1 MiB blocks).
fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn cmd_eval(a: EvalArgs, progress: &CliProgress) -> Result<()> {
    let base = open(&a.base, progress)?;
    let ft = open(&a.finetuned, progress)?;
    let r = ultradelta::eval(&base, &ft, &a.archive, progress)?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    outln!(
        "{:<60} {:<8} {:>12} {:>10} {:>12} {:>10}",
        "tensor",
        "policy",
        "delta relerr",
        "delta cos",
        "weight relerr",
        "weight cos"
    );
    for t in &r.tensors {
        let f = t.fidelity;
        let policy = serde_json::to_value(t.policy)?
            .as_str()
            .unwrap_or_default()
            .to_string();
        outln!(
            "{:<60} {:<8} {:>12.4e} {:>10.6} {:>12.4e} {:>10.6}",
            t.name,
            policy,
            f.delta_rel_error,
            f.delta_cosine,
            f.weight_rel_error,
            f.weight_cosine
        );
    }
    for (label, f) in [
        ("compressed tensors", r.compressed),
        ("all tensors", r.overall),
    ] {
        outln!(
            "{:<60} {:<8} {:>12.4e} {:>10.6} {:>12.4e} {:>10.6}",
            label,
            "",
            f.delta_rel_error,
            f.delta_cosine,
            f.weight_rel_error,
            f.weight_cosine
        );
    }
    Ok(())
}
