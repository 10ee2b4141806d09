//! `ultradelta batch MANIFEST --report`: every job's result record gathered into one table (CSV and JSON) and a
//! summary: jobs done / failed / missing, bytes before and after, the slowest jobs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Serialize;

use super::manifest::Job;
use super::record::{self, JobRecord, Status};

/// How many of the slowest jobs the summary lists.
const SLOWEST: usize = 5;

/// One job's row of the report.
#[derive(Debug, Serialize)]
struct Row {
    job: usize,
    line: usize,
    /// `done`, `failed` or `missing`.
    state: &'static str,
    base: String,
    finetuned: String,
    output: String,
    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
    ratio_real: Option<f64>,
    ratio_whole_checkpoint: Option<f64>,
    seconds: Option<f64>,
    peak_rss_bytes: Option<u64>,
    host: Option<String>,
    /// The error of a failed job, or why a job counts as missing.
    detail: Option<String>,
}

/// The whole report (the JSON file).
#[derive(Debug, Serialize)]
struct Report {
    manifest: String,
    jobs: usize,
    done: usize,
    failed: usize,
    missing: usize,
    /// Over the done jobs: fine-tuned checkpoints' bytes on disk, archives' bytes, and their ratio.
    bytes_in: u64,
    bytes_out: u64,
    ratio: Option<f64>,
    /// Sum of the done jobs' wall times (null ones count 0).
    seconds: f64,
    /// The largest peak resident memory recorded.
    max_peak_rss_bytes: Option<u64>,
    /// Jobs by decreasing wall time.
    slowest: Vec<usize>,
    rows: Vec<Row>,
}

/// The state of `job` from its record: done (record says so, same spec, archive present with the recorded size),
/// failed (record says so, same spec), or missing (with why).
fn row(job: &Job) -> Row {
    let rec = record::read(&job.output);
    let (state, detail) = match &rec {
        None => ("missing", Some("no result record".to_string())),
        Some(r) if r.spec != job.spec() => (
            "missing",
            Some(
                "the result record is for other options or paths (an earlier version of the line)"
                    .into(),
            ),
        ),
        Some(r) if r.status == Status::Failed => ("failed", r.error.clone()),
        Some(r) => match std::fs::metadata(&job.output) {
            Ok(m) if m.len() == r.bytes_out => ("done", None),
            Ok(m) => (
                "missing",
                Some(format!(
                    "the archive has {} bytes, its record says {}",
                    m.len(),
                    r.bytes_out
                )),
            ),
            Err(_) => ("missing", Some("the archive is gone".into())),
        },
    };
    let done = state == "done";
    let r: Option<&JobRecord> = rec.as_ref().filter(|_| state != "missing");
    Row {
        job: job.index,
        line: job.line,
        state,
        base: job.base.display().to_string(),
        finetuned: job.finetuned.display().to_string(),
        output: job.output.display().to_string(),
        bytes_in: r.filter(|_| done).map(|r| r.bytes_in),
        bytes_out: r.filter(|_| done).map(|r| r.bytes_out),
        ratio_real: r.and_then(|r| r.ratio.real),
        ratio_whole_checkpoint: r.and_then(|r| r.ratio.whole_checkpoint),
        seconds: r.and_then(|r| r.seconds),
        peak_rss_bytes: r.and_then(|r| r.peak_rss_bytes),
        host: r.map(|r| r.host.clone()),
        detail,
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "job,line,state,base,finetuned,output,bytes_in,bytes_out,ratio_real,ratio_whole_checkpoint,seconds,peak_rss_bytes,host,detail\n",
    );
    for r in rows {
        let fields = [
            r.job.to_string(),
            r.line.to_string(),
            r.state.to_string(),
            csv_field(&r.base),
            csv_field(&r.finetuned),
            csv_field(&r.output),
            opt(r.bytes_in),
            opt(r.bytes_out),
            opt(r.ratio_real),
            opt(r.ratio_whole_checkpoint),
            opt(r.seconds),
            opt(r.peak_rss_bytes),
            csv_field(&opt(r.host.clone())),
            csv_field(&opt(r.detail.clone())),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// `1.23 GB`-style sizes (decimal units).
fn size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        1_000_000_000..1_000_000_000_000 => format!("{:.2} GB", b / 1e9),
        _ => format!("{:.2} TB", b / 1e12),
    }
}

fn summary(r: &Report, csv_path: &Path, json_path: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: {} jobs: {} done, {} failed, {} missing",
        r.manifest, r.jobs, r.done, r.failed, r.missing
    );
    if r.done > 0 {
        let _ = writeln!(
            s,
            "done jobs: {} of fine-tuned checkpoints -> {} of archives ({}), {:.1} s of jobs{}",
            size(r.bytes_in),
            size(r.bytes_out),
            r.ratio.map_or("n/a".into(), |x| format!("{x:.1}x smaller")),
            r.seconds,
            r.max_peak_rss_bytes.map_or(String::new(), |p| format!(
                ", largest peak memory {:.0} MiB",
                p as f64 / (1u64 << 20) as f64
            )),
        );
    }
    if !r.slowest.is_empty() {
        let _ = writeln!(s, "slowest:");
        for &j in &r.slowest {
            let row = &r.rows[j];
            let _ = writeln!(
                s,
                "  {:>9.2} s  job {} (line {})  {}",
                row.seconds.unwrap_or(0.0),
                row.job,
                row.line,
                row.output
            );
        }
    }
    for (state, title) in [("failed", "failed"), ("missing", "missing")] {
        let rows: Vec<&Row> = r.rows.iter().filter(|x| x.state == state).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(s, "{title}:");
        for row in rows {
            let _ = writeln!(
                s,
                "  job {} (line {})  {}: {}",
                row.job,
                row.line,
                row.output,
                row.detail.as_deref().unwrap_or("")
            );
        }
    }
    let _ = write!(
        s,
        "wrote {} and {}",
        csv_path.display(),
        json_path.display()
    );
    s
}

/// Gathers the records of every job of the manifest, writes the CSV and JSON report, prints the summary; an
/// error unless every job is done.
pub fn run(manifest: &Path, jobs: &[Job], dir: Option<&Path>) -> Result<()> {
    let rows: Vec<Row> = jobs.iter().map(row).collect();
    let done: Vec<&Row> = rows.iter().filter(|r| r.state == "done").collect();
    let bytes_in: u64 = done.iter().filter_map(|r| r.bytes_in).sum();
    let bytes_out: u64 = done.iter().filter_map(|r| r.bytes_out).sum();
    let mut slowest: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].state == "done" && rows[i].seconds.is_some())
        .collect();
    slowest.sort_by(|&a, &b| {
        rows[b]
            .seconds
            .partial_cmp(&rows[a].seconds)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    slowest.truncate(SLOWEST);
    let report = Report {
        manifest: manifest.display().to_string(),
        jobs: rows.len(),
        done: done.len(),
        failed: rows.iter().filter(|r| r.state == "failed").count(),
        missing: rows.iter().filter(|r| r.state == "missing").count(),
        bytes_in,
        bytes_out,
        ratio: (bytes_out > 0).then(|| bytes_in as f64 / bytes_out as f64),
        seconds: done.iter().filter_map(|r| r.seconds).sum(),
        max_peak_rss_bytes: done.iter().filter_map(|r| r.peak_rss_bytes).max(),
        slowest,
        rows,
    };
    let folder: PathBuf = match dir {
        Some(d) => d.to_path_buf(),
        None => match manifest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    let stem = manifest
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("manifest");
    let csv_path = folder.join(format!("{stem}-report.csv"));
    let json_path = folder.join(format!("{stem}-report.json"));
    record::write_atomic(&csv_path, csv(&report.rows).as_bytes())?;
    let mut json = serde_json::to_string_pretty(&report)?;
    json.push('\n');
    record::write_atomic(&json_path, json.as_bytes())?;
    outln!("{}", summary(&report, &csv_path, &json_path));
    if report.done < report.jobs {
        bail!(
            "{} of {} jobs not done ({} failed, {} missing)",
            report.jobs - report.done,
            report.jobs,
            report.failed,
            report.missing
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(999), "999 B");
        assert_eq!(size(1_500_000), "1.5 MB");
        assert_eq!(size(13_500_000_000), "13.50 GB");
    }
}
