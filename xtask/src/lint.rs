//! `cargo xtask lint`: the static checks CI runs beside the tests — formatting, clippy with every warning
//! denied, and the documentation built with warnings denied. (The repository's structural rules are the `tidy`
//! test of `cargo xtask test`.)

use std::process::Command;

use anyhow::{bail, Result};

/// Options of `cargo xtask lint`.
#[derive(clap::Args, Debug)]
pub struct LintArgs {
    /// Rewrite the sources with `cargo fmt` instead of only checking them.
    #[arg(long)]
    pub fix: bool,
}

/// One check: a cargo command line and the environment it needs.
struct Check {
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
}

const FMT_CHECK: Check = Check {
    args: &["fmt", "--all", "--", "--check"],
    env: &[],
};
const FMT_FIX: Check = Check {
    args: &["fmt", "--all"],
    env: &[],
};
const CLIPPY: Check = Check {
    args: &[
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ],
    env: &[],
};
const DOC: Check = Check {
    args: &["doc", "--workspace", "--no-deps", "--quiet"],
    env: &[("RUSTDOCFLAGS", "-D warnings")],
};

pub fn run(args: LintArgs) -> Result<()> {
    crate::deps::ensure()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let fmt = if args.fix { FMT_FIX } else { FMT_CHECK };
    let mut failed = Vec::new();
    for check in [fmt, CLIPPY, DOC] {
        let line = format!("cargo {}", check.args.join(" "));
        eprintln!("xtask: {line}");
        let mut cmd = Command::new(&cargo);
        cmd.args(check.args);
        for (k, v) in check.env {
            cmd.env(k, v);
        }
        if !cmd.status()?.success() {
            failed.push(line);
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join("; "));
    }
    Ok(())
}
