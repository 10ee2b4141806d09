//! `cargo xtask test`: the project's whole test suite, as CI runs it.

use std::process::Command;

use anyhow::{bail, Result};

/// Options of `cargo xtask test`.
#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Extra arguments passed to `cargo test` after `--` (e.g. a test-name filter).
    #[arg(trailing_var_arg = true)]
    pub rest: Vec<String>,
}

pub fn run(args: TestArgs) -> Result<()> {
    crate::deps::ensure()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["test", "--workspace"]);
    if !args.rest.is_empty() {
        cmd.arg("--").args(&args.rest);
    }
    eprintln!("xtask: cargo test --workspace");
    if !cmd.status()?.success() {
        bail!("tests failed");
    }
    Ok(())
}
