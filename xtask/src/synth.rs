//! `cargo xtask synth`: write a deterministic synthetic base + fine-tune pair shaped like a real
//! model (`DIR/base`, `DIR/finetuned`, Hugging Face layout) and report the write speed.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ultradelta_io::DType;
use ultradelta_synth::{Shape, SynthConfig};

/// Arguments of `cargo xtask synth`.
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Model shape: tiny, bert-mini, bert-base, roberta-base, clip-vit-b32, beit3-base, t5-base, llama-1b,
    /// llama-7b or llama-13b (real Hugging Face tensor names and shapes; beit3-base in torchscale's naming).
    #[arg(long, value_parser = parse_shape)]
    pub shape: Shape,
    /// Layers of every stack instead of the real count (CLIP's two towers, T5's encoder and decoder); each
    /// layer keeps its real tensor names and shapes. For small pairs in tests and CI.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub layers: Option<u64>,
    /// Storage dtype of the float tensors: f32, f16 or bf16.
    #[arg(long, default_value = "bf16", value_parser = parse_dtype)]
    pub dtype: DType,
    /// Output folder; the pair goes to OUT/base and OUT/finetuned.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seed: every value is a function of (seed, tensor name, position).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seed of the fine-tune's delta (default: --seed). The base depends on --seed alone, so runs with one --seed
    /// and different --delta-seed values write several fine-tunes of one byte-identical base.
    #[arg(long, value_name = "N")]
    pub delta_seed: Option<u64>,
    /// Replace existing OUT/base and OUT/finetuned folders.
    #[arg(long)]
    pub force: bool,
    /// Delta std relative to the base RMS, before the per-tensor multiplier in [0.5, 2].
    #[arg(long, default_value_t = 1e-3)]
    pub rel_scale: f64,
    /// Largest shard in bytes (Hugging Face's default "5GB").
    #[arg(long, default_value_t = 5_000_000_000)]
    pub max_shard_bytes: u64,
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

/// Writes the pair and prints where it went, how big it is and how fast it was written.
pub fn run(args: SynthArgs) -> Result<()> {
    if !(args.rel_scale.is_finite() && args.rel_scale >= 0.0) {
        bail!(
            "--rel-scale {}: expected a finite number >= 0",
            args.rel_scale
        );
    }
    let cfg = SynthConfig {
        dtype: args.dtype,
        seed: args.seed,
        rel_scale: args.rel_scale,
        max_shard_bytes: args.max_shard_bytes,
        overwrite: args.force,
        delta_seed: args.delta_seed,
        layers: args.layers.map(|n| n as usize),
        ..SynthConfig::new(args.shape)
    };
    let bytes = 2 * cfg.checkpoint_bytes();
    eprintln!(
        "xtask: writing a synthetic {}{} pair ({}, seed {}, {:.2} GB) into {}",
        args.shape,
        args.layers
            .map(|n| format!(" ({n} layers per stack)"))
            .unwrap_or_default(),
        args.dtype.name(),
        args.seed,
        bytes as f64 / 1e9,
        args.out.display()
    );
    let start = Instant::now();
    let mut last_percent = 0;
    let (base, ft) = ultradelta_synth::write_pair(&args.out, &cfg, |done, total| {
        let percent = done * 100 / total.max(1);
        if percent >= last_percent + 5 || done == total {
            last_percent = percent;
            eprint!("\rxtask: {done}/{total} tensors ({percent}%)");
            let _ = std::io::stderr().flush();
        }
    })
    .with_context(|| format!("writing the synthetic pair into {}", args.out.display()))?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!();
    println!("base:       {}", base.display());
    println!("finetuned:  {}", ft.display());
    println!(
        "wrote {:.3} GB in {:.2} s = {:.0} MB/s (tensor bytes of both checkpoints)",
        bytes as f64 / 1e9,
        secs,
        bytes as f64 / 1e6 / secs.max(1e-9)
    );
    Ok(())
}
