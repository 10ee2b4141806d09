//! The `ultradelta` command-line tool: a thin layer over the `ultradelta` facade crate.
//!
//! It parses arguments, draws progress on a terminal, prints reports (human or JSON) and
//! turns errors into one line on stderr. It holds no compression logic of its own.

mod progress;

/// `println!` that ends the process quietly when stdout is closed (e.g. `| head`)
/// instead of panicking on a broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            panic!("writing to stdout: {e}");
        }
    }};
}

mod batch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ultradelta::archive::ArchiveReader;
use ultradelta::io::Checkpoint;
use ultradelta::{
    AllocationMode, ApplyOptions, CodecChoice, CompressConfig, EstimateConfig, Family, Method,
    NuclearNormMethod, PositionCodec, PruningMode, RescaleMode, Selection, TngrConfig, TraceOn,
    ValueCodec, DEFAULT_SEED_TRIALS,
};

use crate::progress::CliProgress;

/// Data-free delta compression of fine-tuned models (UltraDelta).
#[derive(Parser, Debug)]
#[command(name = "ultradelta", version, about, long_about = None)]
struct Cli {
    /// No progress bars or notes on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Worker threads (default: all cores). Output bytes do not depend on it.
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compress fine-tuned checkpoint(s) against their base into archive(s).
    Compress(Box<CompressArgs>),
    /// Rebuild the fine-tuned checkpoint from the base and an archive.
    Apply(ApplyArgs),
    /// Show what an archive holds, its real size and the paper's nominal ratios.
    Inspect(InspectArgs),
    /// Compare the rebuilt model with the fine-tuned one, per tensor and overall.
    Eval(EvalArgs),
    /// Run the compress jobs of a JSON Lines manifest (or this array task's share of them); `--report` gathers results.
    Batch(batch::BatchArgs),
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum RescaleArg {
    /// 1/(1 − s) with the global target s (the paper's reference code).
    Global,
    /// 1/(1 − s_t) with each tensor's own rate.
    PerTensor,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum NuclearArg {
    /// Exact for matrices whose short side is at most 1024, estimated above.
    Auto,
    /// Always exact (Gram matrix + LAPACK eigenvalues).
    Exact,
    /// Always estimated (deflation + stochastic Lanczos quadrature, ~0.25% standard error).
    Estimate,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum TraceArg {
    /// Nuclear norms of the compressed deltas (reference code).
    Compressed,
    /// Nuclear norms of the original deltas.
    Original,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum MethodArg {
    /// The paper's pipeline: quantize, MSA, group-wise pruning, rescaling.
    Ultradelta,
    /// DARE: random drop with probability --sparsity, survivors × 1/(1−p), fp16 values.
    Dare,
    /// Magnitude pruning: keep the top (1 − --sparsity) by |Δ|, fp16 values.
    Magnitude,
    /// BitDelta (data-free): sign × mean |Δ| per tensor.
    Bitdelta,
    /// Truncated SVD at --rank, fp16 factors.
    Lowrank,
    /// ComPEFT: top (1 − --sparsity) by |Δ|, sign × one magnitude.
    Compeft,
    /// Uniform --bits quantization of every entry alone.
    Quant,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Method {
        match m {
            MethodArg::Ultradelta => Method::Ultradelta,
            MethodArg::Dare => Method::Dare,
            MethodArg::Magnitude => Method::Magnitude,
            MethodArg::Bitdelta => Method::Bitdelta,
            MethodArg::Lowrank => Method::Lowrank,
            MethodArg::Compeft => Method::Compeft,
            MethodArg::Quant => Method::Quant,
        }
    }
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum PositionsArg {
    /// DAC's stratified positions, stored as Golomb-coded gaps (the paper's v3 count).
    Golomb,
    /// Positions drawn from a seed independently of the values; the reader regenerates them, none are stored.
    Seeded,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum ValuesArg {
    /// Levels bit-packed at --bits bits each.
    Packed,
    /// Levels rANS-coded with a per-tensor static model (about their entropy each).
    Entropy,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum CodecArg {
    /// Every tensor as --positions and --values say.
    Fixed,
    /// Per tensor, the smaller of packed and entropy-coded levels (--values is ignored; positions stay as given).
    Auto,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum PresetArg {
    /// The paper's exact setting: ultradelta, s 0.97, b 4, δ 0.01, global rescale, MSA, DAC, TNGR.
    Paper,
}

#[derive(Args, Debug)]
struct CompressArgs {
    /// Compression method (baselines write their own record kinds; see `inspect`).
    #[arg(long, value_enum, default_value_t = MethodArg::Ultradelta)]
    method: MethodArg,
    /// A named configuration; refuses flags that would contradict it.
    #[arg(long, value_enum, conflicts_with_all = [
        "method", "sparsity", "bits", "step", "rescale", "no_msa", "no_dac", "no_quant", "no_tngr", "tngr",
        "target_ratio", "rescale_factor", "trace_on",
    ])]
    preset: Option<PresetArg>,
    /// Rank of every compressed tensor (--method lowrank).
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// ComPEFT magnitude α·σ(Δ) (default: mean |Δ| of the kept entries).
    #[arg(long, value_name = "ALPHA")]
    compeft_alpha: Option<f64>,
    /// Byte budget: pick the method's free parameter (sparsity, rank, bits) so the real ratio vs 16-bit over the
    /// compressed tensors lands within 1% of R.
    #[arg(long, value_name = "R")]
    target_ratio: Option<f64>,
    /// Ablation (ultradelta): keep the pruned values at fp16 instead of quantizing them.
    #[arg(long)]
    no_quant: bool,
    /// How kept positions are stored (ultradelta).
    #[arg(long, value_enum, default_value_t = PositionsArg::Golomb)]
    positions: PositionsArg,
    /// How kept levels are stored (ultradelta).
    #[arg(long, value_enum, default_value_t = ValuesArg::Packed)]
    values: ValuesArg,
    /// Fixed codecs, or the cheapest levels codec per tensor (ultradelta).
    #[arg(long, value_enum, default_value_t = CodecArg::Fixed)]
    codec: CodecArg,
    /// Seeds tried per tensor with --positions seeded; the one whose kept levels best match DAC's counts wins.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SEED_TRIALS)]
    seed_trials: u32,
    /// zstd level (1–22) of the lossless records: kept deltas, tensors only in the fine-tune, companion files.
    /// Level 1 is the smallest and fastest on the testbed's real deltas (docs/FORMAT.md, "zstd level").
    #[arg(long, value_name = "LEVEL", default_value_t = ultradelta::archive::DEFAULT_ZSTD_LEVEL)]
    zstd_level: i32,
    /// Trace-norm-guided rescaling across several fine-tunes compressed together (γᵢ = T_min/Tᵢ; the paper's
    /// setting). Off by default: it cost quality on the testbed (README, "Choosing the defaults").
    #[arg(long, conflicts_with = "no_tngr")]
    tngr: bool,
    /// No trace-norm-guided rescaling (γ = 1): the default; kept so ablation scripts can say it.
    #[arg(long)]
    no_tngr: bool,
    /// Also export the low-rank factors as a PEFT LoRA adapter into DIR (--method lowrank, one fine-tune).
    #[arg(long, value_name = "DIR")]
    lora_out: Option<PathBuf>,
    /// Base checkpoint: a .safetensors file or a Hugging Face model folder (sharded or not).
    #[arg(long, value_name = "PATH")]
    base: PathBuf,
    /// Fine-tuned checkpoint(s) of that base. Several need --output-dir (and get TNGR with --tngr).
    #[arg(long, value_name = "PATH", required = true)]
    finetuned: Vec<PathBuf>,
    /// Archive to write (one fine-tune).
    #[arg(long, short, value_name = "FILE", conflicts_with = "output_dir")]
    output: Option<PathBuf>,
    /// Folder for one archive per fine-tune (several fine-tunes).
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Target sparsity over the compressed tensors (fraction of entries dropped).
    #[arg(long, default_value_t = 0.97)]
    sparsity: f64,
    /// Quantization bits per kept value.
    #[arg(long, default_value_t = 4)]
    bits: u8,
    /// MSA step δ: low-variance third gets s+δ, mid s, high the remainder.
    #[arg(long, default_value_t = 0.01)]
    step: f64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fixed γ multiplier (default: 1; TNGR's γ across several fine-tunes with --tngr).
    #[arg(long, value_name = "F")]
    gamma: Option<f64>,
    /// Clamp TNGR's γ to [LO,HI], e.g. 0.5,1 as the paper states.
    #[arg(long, value_name = "LO,HI", value_parser = parse_pair)]
    gamma_clamp: Option<(f64, f64)>,
    /// Which deltas TNGR's trace norms are computed on.
    #[arg(long, value_enum, default_value_t = TraceArg::Compressed)]
    trace_on: TraceArg,
    /// How TNGR's nuclear norms are computed.
    #[arg(long, value_enum, default_value_t = NuclearArg::Auto)]
    nuclear_norm: NuclearArg,
    /// Extra multiplier on the rescale factor.
    #[arg(long, default_value_t = 1.0)]
    rescale_factor: f64,
    /// Rescale survivors by each tensor's own rate (default, measured better) or the global target (paper).
    #[arg(long, value_enum, default_value_t = RescaleArg::PerTensor)]
    rescale: RescaleArg,
    /// Ablation: same sparsity for every tensor instead of MSA.
    #[arg(long)]
    no_msa: bool,
    /// Ablation: plain random drop instead of group-wise (stratified) pruning.
    #[arg(long)]
    no_dac: bool,
    /// Compress tensors whose name matches this glob (`*`, `?`).
    #[arg(long = "compress", value_name = "GLOB")]
    compress_globs: Vec<String>,
    /// Store these tensors' deltas without loss.
    #[arg(long = "keep", value_name = "GLOB")]
    keep_globs: Vec<String>,
    /// Drop these tensors' deltas (the rebuilt model uses the base values).
    #[arg(long = "drop", value_name = "GLOB")]
    drop_globs: Vec<String>,
    /// Tensor-selection preset (default: detected from config.json, then tensor names).
    #[arg(long, value_parser = parse_family)]
    family: Option<Family>,
    /// Replace existing output.
    #[arg(long)]
    force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ApplyArgs {
    /// Base checkpoint the archive was made against.
    #[arg(long, value_name = "PATH")]
    base: PathBuf,
    /// Folder to write the rebuilt checkpoint into.
    #[arg(long, short, value_name = "DIR")]
    output: PathBuf,
    /// Shard the output above this many bytes (default 5 GB, like Hugging Face).
    #[arg(long, value_name = "BYTES")]
    max_shard_size: Option<u64>,
    /// Replace an existing output folder.
    #[arg(long)]
    force: bool,
    /// The archive.
    archive: PathBuf,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// The archive.
    archive: PathBuf,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// Base checkpoint.
    #[arg(long, value_name = "PATH")]
    base: PathBuf,
    /// The fine-tuned checkpoint the archive was made from.
    #[arg(long, value_name = "PATH")]
    finetuned: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// The archive.
    archive: PathBuf,
}

fn parse_family(s: &str) -> Result<Family, String> {
    s.parse()
}

fn parse_pair(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("expected LO,HI, got \"{s}\""))?;
    let p = |x: &str| x.trim().parse::<f64>().map_err(|e| format!("\"{x}\": {e}"));
    Ok((p(a)?, p(b)?))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
        Command::Eval(a) => cmd_eval(a, &progress),
        Command::Batch(a) => batch::run(a, cli.quiet),
    }
}

fn open(path: &Path) -> Result<Checkpoint> {
    Ok(Checkpoint::open(path)?)
}

/// The configuration `compress`'s flags describe, checked (also each `batch` job's).
fn compress_config(a: &CompressArgs) -> Result<CompressConfig> {
    let mut cfg = CompressConfig {
        method: a.method.into(),
        sparsity: a.sparsity,
        bits: a.bits,
        step: a.step,
        seed: a.seed,
        gamma: a.gamma,
        rescale_factor: a.rescale_factor,
        rescale: match a.rescale {
            RescaleArg::Global => RescaleMode::Global,
            RescaleArg::PerTensor => RescaleMode::PerTensor,
        },
        allocation: if a.no_msa {
            AllocationMode::Uniform
        } else {
            AllocationMode::Msa
        },
        pruning: if a.no_dac {
            PruningMode::Random
        } else {
            PruningMode::Group
        },
        tngr: TngrConfig {
            trace_on: match a.trace_on {
                TraceArg::Compressed => TraceOn::Compressed,
                TraceArg::Original => TraceOn::Original,
            },
            clamp: a.gamma_clamp,
            enabled: a.tngr && !a.no_tngr,
            nuclear_norm: match a.nuclear_norm {
                NuclearArg::Auto => NuclearNormMethod::Auto,
                NuclearArg::Exact => NuclearNormMethod::Exact,
                NuclearArg::Estimate => NuclearNormMethod::Estimate(EstimateConfig::default()),
            },
        },
        selection: Selection {
            compress: a.compress_globs.clone(),
            keep: a.keep_globs.clone(),
            drop: a.drop_globs.clone(),
            family: a.family,
        },
        quantize: !a.no_quant,
        rank: a.rank,
        compeft_alpha: a.compeft_alpha,
        target_ratio: a.target_ratio,
        positions: match a.positions {
            PositionsArg::Golomb => PositionCodec::Golomb,
            PositionsArg::Seeded => PositionCodec::Seeded,
        },
        values: match a.values {
            ValuesArg::Packed => ValueCodec::Packed,
            ValuesArg::Entropy => ValueCodec::Entropy,
        },
        codec: match a.codec {
            CodecArg::Fixed => CodecChoice::Fixed,
            CodecArg::Auto => CodecChoice::Auto,
        },
        seed_trials: a.seed_trials,
        zstd_level: a.zstd_level,
    };
    if let Some(PresetArg::Paper) = a.preset {
        let p = CompressConfig::paper();
        cfg = CompressConfig {
            seed: cfg.seed,
            gamma: cfg.gamma,
            tngr: TngrConfig {
                clamp: cfg.tngr.clamp,
                nuclear_norm: cfg.tngr.nuclear_norm.clone(),
                ..p.tngr
            },
            selection: cfg.selection,
            // The preset fixes the method; how its choice is stored stays the user's.
            positions: cfg.positions,
            values: cfg.values,
            codec: cfg.codec,
            seed_trials: cfg.seed_trials,
            zstd_level: cfg.zstd_level,
            ..p
        };
    }
    if cfg.tngr.clamp.is_some() && !cfg.tngr.enabled {
        bail!("--gamma-clamp clamps TNGR's γ: add --tngr (TNGR is off by default)");
    }
    if a.no_quant && cfg.method != Method::Ultradelta {
        bail!("--no-quant applies to --method ultradelta only");
    }
    if a.lora_out.is_some() && (cfg.method != Method::Lowrank || a.output.is_none()) {
        bail!("--lora-out needs --method lowrank and one fine-tune (--output)");
    }
    cfg.validate()?;
    Ok(cfg)
}

fn cmd_compress(a: CompressArgs, progress: &CliProgress) -> Result<()> {
    let cfg = compress_config(&a)?;
    let base = open(&a.base)?;
    let reports = match (&a.output, &a.output_dir) {
        (Some(out), None) => {
            if a.finetuned.len() != 1 {
                bail!(
                    "--output takes one --finetuned; use --output-dir for {} fine-tunes",
                    a.finetuned.len()
                );
            }
            let ft = open(&a.finetuned[0])?;
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
                .map(|p| open(p))
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
                "wrote {} ({} bytes, method {}): {} tensors compressed, {} kept losslessly, {} dropped, {} stored whole; gamma {:.6}",
                r.output.display(),
                ins.bytes,
                r.method,
                c.compress,
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
                outln!(
                    "  budget: target {}x, achieved {:.3}x with {} = {}{} ({} passes)",
                    b.target,
                    b.achieved,
                    b.parameter,
                    b.value,
                    if b.within {
                        ""
                    } else {
                        " (closest achievable, outside 1%)"
                    },
                    b.evaluations
                );
            }
            if !r.base_only.is_empty() {
                outln!(
                    "  only in the base (not in the rebuilt model): {}",
                    r.base_only.join(", ")
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
            flag("allocation", "msa", "MSA", "uniform allocation"),
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

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.1}x"))
        .unwrap_or_else(|| "n/a".into())
}

fn ratio_line(ins: &ultradelta::Inspection) -> String {
    format!(
        "ratio vs 16-bit over compressed tensors: real {} (paper v3 count {}, v2 count {}); whole checkpoint {:.1}x",
        fmt_ratio(ins.ratio.real),
        fmt_ratio(ins.ratio.paper_v3),
        fmt_ratio(ins.ratio.paper_v2),
        ins.ratio.whole_checkpoint
    )
}

fn cmd_apply(a: ApplyArgs, progress: &CliProgress) -> Result<()> {
    let base = open(&a.base)?;
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
    format!(
        "codec {}{mixed}: {:.2} bits per kept entry = {:.2} position + {:.2} value + {:.2} overhead; density {:.3}% ({} kept)",
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
    outln!("{}", ratio_line(&ins));
    if let Some(c) = &ins.codec {
        outln!("{}", codec_line(c));
    }
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
        outln!(
            "{:<60} {:<8} {:<18} {:>9.4} {:>12}  {:?} {}",
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
    }
    Ok(())
}

fn cmd_eval(a: EvalArgs, progress: &CliProgress) -> Result<()> {
    let base = open(&a.base)?;
    let ft = open(&a.finetuned)?;
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
