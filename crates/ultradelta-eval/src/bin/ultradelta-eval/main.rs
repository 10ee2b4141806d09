//! `ultradelta-eval`: measures the quality of one model folder on one testbed task and prints it as JSON.
//!
//! This is the evaluator `cargo xtask reproduce` runs on every rebuilt model (it is named in the experiment
//! file like any external evaluator, e.g. an lm-eval-harness script, and speaks the same protocol: one JSON
//! object of numeric metrics on standard output, errors as one line on standard error and a non-zero exit).
//!
//! ```text
//! ultradelta-eval classify  --testbed DIR --task bbc --model DIR [--limit N]
//! ultradelta-eval embedding --testbed DIR --probe-task bbc|none --model DIR --finetuned DIR --base DIR
//!                           [--train-per-class K] [--limit N] [--max-tokens M] [--cache DIR] [--pairs FILE]
//! ultradelta-eval make-testbed --out DIR [--force]
//! ultradelta-eval convert-gguf --gguf FILE --out DIR [--keep-rope-permutation]
//! ultradelta-eval llama-data   --model DIR --moods DIR --mood a,b --moby DIR --out DIR [--max-tokens N]
//! ultradelta-eval perplexity   --testbed DIR [--task MOOD] --model DIR [--base DIR --finetuned DIR] [--limit N] [--cache DIR]
//! ultradelta-eval generate     --model DIR --prompt TEXT [--prompt TEXT ...] [--max-new N] [--raw]
//! ultradelta-eval logits       --model DIR --text TEXT [--text TEXT ...] --out FILE
//! ultradelta-eval delta-fidelity --base DIR --finetuned DIR --model DIR
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use ultradelta_eval::{
    centroid_probe, fidelity, gain_retention, pair_cosine, pair_retrieval, read_pairs, retention,
    Example, LinearHead, SentenceEncoder, Task,
};

mod generate;
mod generate_llama;
mod llama_cmd;
mod weights_cmd;

#[derive(Parser, Debug)]
#[command(
    name = "ultradelta-eval",
    version,
    about = "Measure a model folder on a testbed task; print the metrics as one JSON object"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Test accuracy of a classification fine-tune (encoder + the `classifier.*` head stored in the model).
    Classify(ClassifyArgs),
    /// Fidelity and retention against the uncompressed fine-tune, and a nearest-centroid probe, for an
    /// embedding fine-tune, on a labelled task's held-out texts; with --pairs, also on in-domain text pairs
    /// (retention, fidelity, retrieval among the pairs: `indomain.*`).
    Embedding(EmbeddingArgs),
    /// Write a small generated testbed with the real testbed's layout, both families: a tiny BERT with four
    /// fine-tunes and labelled generated texts, and a tiny LLaMA (`llama/`) with four fine-tunes and texts
    /// sampled from them; for CI and tests: the same code path in seconds instead of an hour.
    MakeTestbed(MakeTestbedArgs),
    /// Convert a llama.cpp GGUF (LLaMA architecture) into a Hugging Face LlamaForCausalLM folder: bf16
    /// safetensors, config, tokenizer.json from the GGUF's tokenizer, the chat template.
    ConvertGguf(llama_cmd::ConvertArgs),
    /// Tokenize the LLaMA family's data once for training and evaluation: mood prompt/response pairs in the
    /// chat template (fixed train/test split) and held-out Moby Dick windows.
    LlamaData(llama_cmd::DataArgs),
    /// Perplexity of a LLaMA model folder on a mood task's held-out responses and on held-out general text;
    /// with --base and --finetuned, task retention in log-perplexity and general drift.
    Perplexity(llama_cmd::PerplexityArgs),
    /// Greedy continuations of a few prompts (an illustration for reports).
    Generate(llama_cmd::GenerateArgs),
    /// Write the logits of a few texts to a binary file (to compare with another implementation).
    Logits(llama_cmd::LogitsArgs),
    /// How much of the fine-tune's weight change a model folder keeps, from the weights alone (cosine and
    /// relative error of its delta against the fine-tune's); the evaluator of the synthetic family pairs.
    DeltaFidelity(weights_cmd::FidelityArgs),
}

#[derive(clap::Args, Debug)]
struct ClassifyArgs {
    /// Testbed folder (holds models/<task>/task.json and data/<task>/).
    #[arg(long)]
    testbed: PathBuf,
    /// Task name (bbc, spam).
    #[arg(long)]
    task: String,
    /// Model folder to evaluate (say, rebuilt from a delta); the head is read from its weights.
    #[arg(long)]
    model: PathBuf,
    /// Evaluate the first N test examples only (default: all).
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(clap::Args, Debug)]
struct EmbeddingArgs {
    /// Testbed folder (holds the probe task's task.json and data).
    #[arg(long)]
    testbed: PathBuf,
    /// Labelled task whose texts serve as held-out texts and as the centroid probe; `none`: no probe, only
    /// the in-domain measures of --pairs.
    #[arg(long, default_value = "bbc")]
    probe_task: String,
    /// Model folder to evaluate.
    #[arg(long)]
    model: PathBuf,
    /// The uncompressed fine-tune (reference of fidelity and retention).
    #[arg(long)]
    finetuned: PathBuf,
    /// The base model (start of the fine-tune's change, for retention).
    #[arg(long)]
    base: PathBuf,
    /// Training examples per class for the probe's centroids (the first ones of the train file).
    #[arg(long, default_value_t = 30)]
    train_per_class: usize,
    /// Held-out texts: the first N of the probe task's test file.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Texts are cut to this many tokens.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Folder caching the reference models' embeddings (keyed by weights path, size and mtime).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// In-domain pair file (`kind<TAB>left<TAB>right`, e.g. crates/ultradelta-eval/data/indomain/sre.tsv):
    /// adds `indomain.*` metrics measured on its texts.
    #[arg(long)]
    pairs: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct MakeTestbedArgs {
    /// Folder to write (models/, data/, testbed.json).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing folder.
    #[arg(long)]
    force: bool,
}

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Classify(a) => classify(a),
        Cmd::Embedding(a) => embedding(a),
        Cmd::MakeTestbed(a) => generate::make_testbed(&a.out, a.force),
        Cmd::ConvertGguf(a) => llama_cmd::convert(a),
        Cmd::LlamaData(a) => llama_cmd::data(a),
        Cmd::Perplexity(a) => llama_cmd::perplexity_cmd(a),
        Cmd::Generate(a) => llama_cmd::generate(a),
        Cmd::Logits(a) => llama_cmd::logits(a),
        Cmd::DeltaFidelity(a) => weights_cmd::delta_fidelity(a),
    };
    match result {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ultradelta-eval: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn texts(examples: &[Example]) -> Vec<&str> {
    examples.iter().map(|e| e.text.as_str()).collect()
}

fn labels(examples: &[Example]) -> Vec<usize> {
    examples.iter().map(|e| e.label).collect()
}

fn weights_file(dir: &Path) -> AnyResult<PathBuf> {
    let p = dir.join("model.safetensors");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{}: no model.safetensors (expected a model folder)",
            dir.display()
        )
        .into())
    }
}

fn classify(a: ClassifyArgs) -> AnyResult<Value> {
    let t0 = Instant::now();
    let task = Task::load(&a.testbed, &a.task)?;
    let mut test = task.test()?;
    if let Some(n) = a.limit {
        test.truncate(n);
    }
    if test.is_empty() {
        return Err(format!("{}: empty test set", task.test_file.display()).into());
    }
    let weights = weights_file(&a.model)?;
    let head = LinearHead::from_checkpoint(&weights)?;
    if head.n_classes() != task.n_classes() {
        return Err(format!(
            "{}: classifier.weight has {} classes, task {} has {}",
            weights.display(),
            head.n_classes(),
            task.name,
            task.n_classes()
        )
        .into());
    }
    let enc = task.encoder_from(&a.model)?;
    let emb = enc.embed_raw(&texts(&test))?;
    let y = labels(&test);
    let correct = emb
        .iter()
        .zip(&y)
        .filter(|(e, &l)| head.predict(e) == l)
        .count();
    Ok(json!({
        "accuracy": correct as f64 / test.len() as f64,
        "correct": correct,
        "n": test.len(),
        "max_tokens": task.max_tokens,
        "seconds": t0.elapsed().as_secs_f64(),
    }))
}

/// The probe's training subset: the first `per_class` examples of each class, in file order.
fn per_class(examples: Vec<Example>, n_classes: usize, per_class: usize) -> Vec<Example> {
    let mut counts = vec![0usize; n_classes];
    examples
        .into_iter()
        .filter(|e| {
            let c = &mut counts[e.label];
            *c += 1;
            *c <= per_class
        })
        .collect()
}

/// Normalised embeddings of `texts` under the model in `dir`, cut to `max_tokens`.
fn embed_dir(dir: &Path, texts: &[&str], max_tokens: usize) -> AnyResult<Vec<Vec<f32>>> {
    let enc = SentenceEncoder::load_dir(dir)?.with_max_tokens(max_tokens)?;
    Ok(enc.embed(texts)?)
}

/// Like [`embed_dir`], through a cache keyed by the weights file's path, size and modification time, the
/// texts and the token limit (reference models do not change during a run).
fn embed_cached(
    cache: Option<&Path>,
    dir: &Path,
    texts: &[&str],
    max_tokens: usize,
) -> AnyResult<Vec<Vec<f32>>> {
    let Some(cache) = cache else {
        return embed_dir(dir, texts, max_tokens);
    };
    let weights = weights_file(dir)?;
    let md = std::fs::metadata(&weights)?;
    let mtime = md
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut key = format!(
        "{}\n{}\n{}\n{}\n",
        std::fs::canonicalize(&weights)?.display(),
        md.len(),
        mtime,
        max_tokens
    );
    for t in texts {
        key.push_str(t);
        key.push('\u{1f}');
    }
    let file = cache.join(format!("emb-{:016x}.json", fnv1a(key.as_bytes())));
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Ok(v) = serde_json::from_str::<Vec<Vec<f32>>>(&text) {
            if v.len() == texts.len() {
                return Ok(v);
            }
        }
    }
    let v = embed_dir(dir, texts, max_tokens)?;
    std::fs::create_dir_all(cache)?;
    // Write then rename: a concurrent or interrupted run never sees half a file.
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(&v)?)?;
    std::fs::rename(&tmp, &file)?;
    Ok(v)
}

/// 64-bit FNV-1a (a cache key, not a checksum).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn embedding(a: EmbeddingArgs) -> AnyResult<Value> {
    let t0 = Instant::now();
    let cache = a.cache.as_deref();
    let enc = SentenceEncoder::load_dir(&a.model)?.with_max_tokens(a.max_tokens)?;
    let mut out = if a.probe_task == "none" {
        if a.pairs.is_none() {
            return Err("--probe-task none measures nothing without --pairs".into());
        }
        json!({ "max_tokens": a.max_tokens })
    } else {
        probe_measures(&enc, &a, cache)?
    };
    if let Some(path) = &a.pairs {
        out["indomain"] = indomain(&enc, path, &a, cache)?;
    }
    out["seconds"] = json!(t0.elapsed().as_secs_f64());
    Ok(out)
}

/// Fidelity, retention and the nearest-centroid probe on the probe task's held-out texts.
fn probe_measures(
    enc: &SentenceEncoder,
    a: &EmbeddingArgs,
    cache: Option<&Path>,
) -> AnyResult<Value> {
    let task = Task::load(&a.testbed, &a.probe_task)?;
    let train = per_class(task.train()?, task.n_classes(), a.train_per_class);
    let mut test = task.test()?;
    test.truncate(a.limit);
    if train.is_empty() || test.is_empty() {
        return Err(format!(
            "{}: the probe needs training and test examples (got {} and {})",
            task.model_dir.join("task.json").display(),
            train.len(),
            test.len()
        )
        .into());
    }
    // The held-out texts go through every model in the same call (same batches), so a model identical to
    // the fine-tune scores fidelity and retention of exactly 1.
    let (held_out_texts, train_texts) = (texts(&test), texts(&train));
    let held_out = enc.embed(&held_out_texts)?;
    let probe_train = enc.embed(&train_texts)?;
    let ft = embed_cached(cache, &a.finetuned, &held_out_texts, a.max_tokens)?;
    let base = embed_cached(cache, &a.base, &held_out_texts, a.max_tokens)?;
    let probe = centroid_probe(&probe_train, &labels(&train), &held_out, &labels(&test));
    Ok(json!({
        "fidelity": fidelity(&held_out, &ft),
        "retention": retention(&held_out, &ft, &base),
        "probe_accuracy": probe,
        "n": test.len(),
        "probe_train": train.len(),
        "max_tokens": a.max_tokens,
    }))
}

/// The in-domain measures on a pair file's texts (README, "Testbed"; docs/REPRODUCE.md):
///
/// - `retention`, `fidelity`: the same formulas as on the held-out texts, over every left and right text;
/// - `recall_at_1`, `mrr`, `pair_cosine`: retrieval among the pairs in both directions and the mean cosine of
///   a pair's two texts, for the model, and under `base.*` and `finetuned.*` for the two references;
/// - `mrr_gain_retention`, `pair_cosine_gain_retention`: (model − base) / (fine-tune − base) of those scores.
fn indomain(
    enc: &SentenceEncoder,
    path: &Path,
    a: &EmbeddingArgs,
    cache: Option<&Path>,
) -> AnyResult<Value> {
    let pairs = read_pairs(path)?;
    let n = pairs.len();
    // Left texts first, then right texts, in one call per model (same batches for every model).
    let all: Vec<&str> = pairs
        .iter()
        .map(|p| p.left.as_str())
        .chain(pairs.iter().map(|p| p.right.as_str()))
        .collect();
    let model = enc.embed(&all)?;
    let ft = embed_cached(cache, &a.finetuned, &all, a.max_tokens)?;
    let base = embed_cached(cache, &a.base, &all, a.max_tokens)?;
    let scores = |e: &[Vec<f32>]| {
        let (l, r) = e.split_at(n);
        let ret = pair_retrieval(l, r);
        (ret.recall_at_1, ret.mrr, pair_cosine(l, r))
    };
    let (m, f, b) = (scores(&model), scores(&ft), scores(&base));
    let refs = |s: (f64, f64, f64)| json!({"recall_at_1": s.0, "mrr": s.1, "pair_cosine": s.2});
    Ok(json!({
        "retention": retention(&model, &ft, &base),
        "fidelity": fidelity(&model, &ft),
        "recall_at_1": m.0,
        "mrr": m.1,
        "pair_cosine": m.2,
        "mrr_gain_retention": gain_retention(m.1, f.1, b.1),
        "pair_cosine_gain_retention": gain_retention(m.2, f.2, b.2),
        "base": refs(b),
        "finetuned": refs(f),
        "pairs": n,
    }))
}
