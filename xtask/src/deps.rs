//! System packages the workspace needs, installed on demand.
//!
//! The only one is OpenBLAS (Debian `libopenblas-dev`), which `ndarray-linalg`'s
//! `openblas-system` backend links for exact nuclear norms.

use std::process::Command;

use anyhow::{bail, Context, Result};

fn has_openblas() -> bool {
    Command::new("pkg-config")
        .args(["--exists", "openblas"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs `apt-get ARGS` non-interactively, through `sudo` when not root.
pub(crate) fn apt(args: &[&str]) -> Result<()> {
    let (prog, mut full): (&str, Vec<&str>) = if is_root() {
        ("apt-get", vec![])
    } else {
        ("sudo", vec!["apt-get"])
    };
    full.extend_from_slice(args);
    let status = Command::new(prog)
        .args(&full)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("running {prog} {}", full.join(" ")))?;
    if !status.success() {
        bail!("{prog} {} failed ({status})", full.join(" "));
    }
    Ok(())
}

/// Installs `libopenblas-dev` and `pkg-config` with apt-get when OpenBLAS is not found.
pub fn ensure() -> Result<()> {
    if has_openblas() {
        return Ok(());
    }
    eprintln!("xtask: OpenBLAS not found; installing libopenblas-dev and pkg-config with apt-get");
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!("OpenBLAS (libopenblas-dev, found with pkg-config) is required and apt-get is not available: install it with your package manager");
    }
    apt(&["update", "-qq"])?;
    apt(&["install", "-y", "-qq", "libopenblas-dev", "pkg-config"])?;
    if !has_openblas() {
        bail!("libopenblas-dev was installed but pkg-config still cannot find openblas");
    }
    Ok(())
}
