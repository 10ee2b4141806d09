//! A job's result record, `<output>.result.json` beside its archive, written atomically (temp file, fsync,
//! rename): what the job was, whether it finished, its sizes, ratios, time and peak memory, or its error.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::manifest::Job;

/// The record format's name and version (the `schema` field).
pub const SCHEMA: &str = "ultradelta-batch-result/1";

/// Whether the job finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Its archive is at its output.
    Done,
    /// It failed; `error` says why.
    Failed,
}

/// The archive's ratios (as `inspect` reports them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ratios {
    /// Compressed tensors at 16 bits over their records' bytes.
    pub real: Option<f64>,
    /// The paper's v3 count for the settings (UltraDelta with quantization only).
    pub paper_v3: Option<f64>,
    /// The paper's v2 count.
    pub paper_v2: Option<f64>,
    /// Fine-tuned checkpoint on disk over the archive file.
    pub whole_checkpoint: Option<f64>,
}

/// One job's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    /// [`SCHEMA`].
    pub schema: String,
    /// `done` or `failed`.
    pub status: Status,
    /// The job's number in the manifest (zero-based, what sharding uses) and its line (one-based).
    pub job: usize,
    /// Line in the manifest.
    pub line: usize,
    /// What the job was: base, fine-tune and options (a record for another spec is an earlier version's).
    pub spec: Value,
    /// The archive.
    pub output: PathBuf,
    /// The method that wrote it.
    pub method: Option<String>,
    /// The fine-tuned checkpoint's size on disk.
    pub bytes_in: u64,
    /// The archive's size.
    pub bytes_out: u64,
    /// Its ratios.
    pub ratio: Ratios,
    /// Wall time of the job (null when an archive made earlier without a record was adopted).
    pub seconds: Option<f64>,
    /// The process's peak resident memory during the job (null when jobs ran concurrently in one process).
    pub peak_rss_bytes: Option<u64>,
    /// Host that ran it.
    pub host: String,
    /// Unix time when the record was written.
    pub finished_unix: u64,
    /// Why it failed.
    pub error: Option<String>,
}

impl JobRecord {
    /// An empty record of `job` with `status`.
    pub fn new(job: &Job, status: Status) -> JobRecord {
        JobRecord {
            schema: SCHEMA.into(),
            status,
            job: job.index,
            line: job.line,
            spec: job.spec(),
            output: job.output.clone(),
            method: None,
            bytes_in: 0,
            bytes_out: 0,
            ratio: Ratios::default(),
            seconds: None,
            peak_rss_bytes: None,
            host: hostname(),
            finished_unix: 0,
            error: None,
        }
    }
}

/// Where the record of the archive `output` lives: `<output>.result.json`.
pub fn path_for(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".result.json");
    output.with_file_name(name)
}

/// The record beside `output`, if there is a readable one.
pub fn read(output: &Path) -> Option<JobRecord> {
    let text = std::fs::read_to_string(path_for(output)).ok()?;
    serde_json::from_str::<JobRecord>(&text)
        .ok()
        .filter(|r| r.schema == SCHEMA)
}

/// Writes `rec` beside `output` atomically: a sibling temp file, fsynced, renamed over the record.
pub fn write(output: &Path, rec: &JobRecord) -> Result<()> {
    let mut rec = rec.clone();
    rec.finished_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = path_for(output);
    let mut text = serde_json::to_string_pretty(&rec)?;
    text.push('\n');
    write_atomic(&path, text.as_bytes())
}

/// Writes `bytes` to `path` through a sibling temp file (named after the host and process, so tasks on several
/// nodes of a shared filesystem never share one), fsynced and renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(format!(".tmp-{}-{}", hostname(), std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the folder is synced; only a hint where that is refused.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// This machine's host name (`?` when unknown).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "?".into())
}

/// The process's peak resident set (`VmHWM`), where Linux reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets the peak resident set to the current one (Linux: `5` into `/proc/self/clear_refs`), so the next
/// [`peak_rss_bytes`] is one job's peak; without it, a later job's peak is at least every earlier one's.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_path_is_beside_the_archive() {
        assert_eq!(
            path_for(Path::new("out/a.udelta")),
            Path::new("out/a.udelta.result.json")
        );
    }

    #[test]
    fn atomic_write_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn peak_memory_is_readable_here() {
        reset_peak_rss();
        assert!(peak_rss_bytes().unwrap_or(1) > 0);
    }
}
