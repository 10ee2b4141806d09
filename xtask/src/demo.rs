//! `cargo xtask demo`: the whole pipeline on an embedded default that needs no download.
//!
//! It generates a deterministic synthetic pair shaped exactly like all-MiniLM-L6-v2
//! (22.7 M parameters, f32; fine-tune deltas about 1e-3 of the weights, heavy-tailed,
//! partly low-rank), then runs the real `ultradelta` binary: compress at the paper's
//! setting (s = 0.97, b = 4), inspect, apply, eval, and prints the sizes on disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use ultradelta_io::DType;
use ultradelta_synth::{Shape, SynthConfig};

/// Options of `cargo xtask demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Working folder (default: target/demo).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Target sparsity passed to `ultradelta compress`.
    #[arg(long, default_value_t = 0.97)]
    pub sparsity: f64,
    /// Bits passed to `ultradelta compress`.
    #[arg(long, default_value_t = 4)]
    pub bits: u8,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds the release `ultradelta` binary and returns its path.
pub fn build_cli() -> Result<PathBuf> {
    crate::deps::ensure()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo build --release -p ultradelta-cli");
    let ok = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "--release", "-p", "ultradelta-cli"])
        .status()?
        .success();
    if !ok {
        bail!("building ultradelta-cli failed");
    }
    Ok(target_dir().join("release").join("ultradelta"))
}

fn run_cli(bin: &Path, args: &[&str]) -> Result<String> {
    eprintln!("$ ultradelta {}", args.join(" "));
    let out = Command::new(bin).args(args).output().with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("ultradelta {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn dir_size(p: &Path) -> Result<u64> {
    let md = std::fs::metadata(p).with_context(|| p.display().to_string())?;
    if md.is_file() {
        return Ok(md.len());
    }
    let mut total = 0;
    for e in std::fs::read_dir(p)? {
        total += dir_size(&e?.path())?;
    }
    Ok(total)
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / (1024.0 * 1024.0))
}

pub fn run(args: DemoArgs) -> Result<()> {
    let bin = build_cli()?;
    let dir = args.dir.unwrap_or_else(|| target_dir().join("demo"));
    let (base, ft) = (dir.join("base"), dir.join("finetuned"));
    if !(base.join("model.safetensors").exists() && ft.join("model.safetensors").exists()) {
        eprintln!("xtask: generating a synthetic all-MiniLM-L6-v2-shaped pair in {}", dir.display());
        let cfg = SynthConfig { dtype: DType::F32, ..SynthConfig::new(Shape::BertMini) };
        ultradelta_synth::write_pair(&dir, &cfg, |_, _| {})?;
    }
    let archive = dir.join("finetuned.udelta");
    let rebuilt = dir.join("rebuilt");
    let (b, f, a, r) = (
        base.to_str().context("non-UTF-8 path")?,
        ft.to_str().context("non-UTF-8 path")?,
        archive.to_str().context("non-UTF-8 path")?,
        rebuilt.to_str().context("non-UTF-8 path")?,
    );
    let (s, bits) = (args.sparsity.to_string(), args.bits.to_string());
    run_cli(&bin, &["compress", "--base", b, "--finetuned", f, "--output", a, "--sparsity", &s, "--bits", &bits, "--force", "--quiet"])?;
    let ins: serde_json::Value = serde_json::from_str(&run_cli(&bin, &["inspect", "--json", a])?)?;
    run_cli(&bin, &["apply", "--base", b, "--output", r, "--force", "--quiet", a])?;
    let ev: serde_json::Value = serde_json::from_str(&run_cli(&bin, &["eval", "--json", "--quiet", "--base", b, "--finetuned", f, a])?)?;

    let ratio = |k: &str| ins["ratio"][k].as_f64().map(|v| format!("{v:.1}x")).unwrap_or_else(|| "n/a".into());
    println!();
    println!("UltraDelta demo (synthetic all-MiniLM-L6-v2-shaped pair, f32, s = {s}, b = {bits})");
    println!("  fine-tuned checkpoint : {:>12}", mib(dir_size(&ft)?));
    println!("  delta archive         : {:>12}", mib(dir_size(&archive)?));
    println!("  rebuilt checkpoint    : {:>12}", mib(dir_size(&rebuilt)?));
    println!(
        "  compressed tensors    : {} entries -> {} bytes",
        ins["compressed_entries"], ins["compressed_bytes"]
    );
    println!(
        "  ratio vs 16-bit       : real {}  (paper's v3 count {}, v2 count {})",
        ratio("real"),
        ratio("paper_v3"),
        ratio("paper_v2")
    );
    println!("  whole checkpoint      : {} smaller on disk than the fine-tuned folder", ratio("whole_checkpoint"));
    let c = &ev["compressed"];
    println!(
        "  compressed tensors    : delta cosine {:.4}, delta rel. error {:.4}, weight rel. error {:.2e}",
        c["delta_cosine"].as_f64().unwrap_or(f64::NAN),
        c["delta_rel_error"].as_f64().unwrap_or(f64::NAN),
        c["weight_rel_error"].as_f64().unwrap_or(f64::NAN)
    );
    println!("  files in {}", dir.display());
    Ok(())
}
