//! Helpers every subcommand shares: where the workspace and its target folder are, building the release
//! binaries, and the provenance (time, git revision, machine) written beside every result.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// The cargo target folder (`CARGO_TARGET_DIR`, else `<root>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Runs `cargo build --release -p <package> <extra…>` in the workspace.
pub(crate) fn build_release(package: &str, extra: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec!["build", "--release", "-p", package];
    args.extend_from_slice(extra);
    eprintln!("xtask: cargo {}", args.join(" "));
    let ok = Command::new(cargo)
        .current_dir(workspace_root())
        .args(&args)
        .status()?
        .success();
    if !ok {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// Builds the release `ultradelta` binary and returns its path.
pub fn build_cli() -> Result<PathBuf> {
    crate::deps::ensure()?;
    build_release("ultradelta-cli", &[])?;
    Ok(target_dir().join("release").join("ultradelta"))
}

/// `p` as UTF-8 (the CLI is driven with string arguments).
pub(crate) fn utf8(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (`YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ`) of a Unix time.
pub(crate) fn utc(secs: u64) -> (String, String) {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let date = format!("{y:04}-{m:02}-{d:02}");
    let time = format!("{date}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60);
    (date, time)
}

/// `git ARGS` in the workspace: its trimmed stdout, or `None` if git is missing or fails.
pub(crate) fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .current_dir(workspace_root())
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The machine a result was measured on: CPU, cores, memory, kernel, thread settings.
pub(crate) fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string());
    let env = |k: &str| std::env::var(k).ok();
    serde_json::json!({
        "cpu_model": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "memory_bytes": mem_kib.map(|k| k * 1024),
        "kernel": kernel,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "env": {
            "RAYON_NUM_THREADS": env("RAYON_NUM_THREADS"),
            "OPENBLAS_NUM_THREADS": env("OPENBLAS_NUM_THREADS"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0).1, "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400).0, "2000-02-29");
        assert_eq!(utc(1_795_763_045).1, "2026-11-27T07:04:05Z");
    }
}
