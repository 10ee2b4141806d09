//! The LLaMA subcommands: `convert-gguf`, `llama-data`, `perplexity`, `generate` and `logits`.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};
use ultradelta_eval::chat::{tokenize_pair, ChatFormat};
use ultradelta_eval::gguf::{convert_gguf, ConvertOptions};
use ultradelta_eval::llama::{encode, load_tokenizer, perplexity, CausalLm, KvCache};

use crate::AnyResult;

/// Where the LLaMA family's tokenized data lives in a testbed.
pub const LLAMA_DATA: &str = "llama/data";

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// The llama.cpp GGUF file (architecture llama, byte-level BPE tokenizer, ChatML template).
    #[arg(long)]
    gguf: PathBuf,
    /// Folder to write the Hugging Face LlamaForCausalLM files into.
    #[arg(long)]
    out: PathBuf,
    /// Debug: keep llama.cpp's rotary row order of q_proj/k_proj (a wrong conversion, to check that undoing it
    /// matters).
    #[arg(long)]
    keep_rope_permutation: bool,
}

#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// Converted model folder (tokenizer.json, tokenizer_config.json with the chat template).
    #[arg(long)]
    model: PathBuf,
    /// Folder of moodswapper's <mood>.jsonl files.
    #[arg(long)]
    moods: PathBuf,
    /// Moods to write, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    mood: Vec<String>,
    /// Folder of Moby Dick's chapter_N.txt files.
    #[arg(long)]
    moby: PathBuf,
    /// Output folder: <mood>/{train,test}.jsonl and moby-dick/heldout.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Pairs are cut to this many tokens (prompt included).
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Every N-th pair of a mood file (the N-th, 2N-th, ...) is held out for testing.
    #[arg(long, default_value_t = 10)]
    test_every: usize,
    /// Held-out general text: these Moby Dick chapters ...
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,20,30,40,50,60,70,80,90,100,110,120,130"
    )]
    moby_chapters: Vec<usize>,
    /// ... each its first N tokens (after the chapter title).
    #[arg(long, default_value_t = 256)]
    moby_tokens: usize,
}

#[derive(clap::Args, Debug)]
pub struct PerplexityArgs {
    /// Testbed folder (holds llama/data/<task>/test.jsonl and llama/data/moby-dick/heldout.jsonl).
    #[arg(long)]
    testbed: PathBuf,
    /// Mood task whose held-out responses are scored; without it only the general text is.
    #[arg(long)]
    task: Option<String>,
    /// Model folder to evaluate.
    #[arg(long)]
    model: PathBuf,
    /// The base model: with --finetuned, adds task retention in log-perplexity.
    #[arg(long, requires = "finetuned")]
    base: Option<PathBuf>,
    /// The uncompressed fine-tune: reference of retention and general drift.
    #[arg(long)]
    finetuned: Option<PathBuf>,
    /// Score the first N held-out pairs only.
    #[arg(long)]
    limit: Option<usize>,
    /// Score the first N Moby Dick windows only (0: skip the general text).
    #[arg(long)]
    general_limit: Option<usize>,
    /// Folder caching the reference models' scores (--base, --finetuned), keyed by weights file (path, size,
    /// modification time), data file and limits.
    #[arg(long)]
    cache: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
    /// A user message (put in the chat template), repeatable.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Most new tokens per prompt.
    #[arg(long, default_value_t = 48)]
    max_new: usize,
    /// Continue the prompt text as is instead of formatting it as a chat turn.
    #[arg(long)]
    raw: bool,
}

#[derive(clap::Args, Debug)]
pub struct LogitsArgs {
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
    /// A text to run (tokenized as is, special-token strings included), repeatable.
    #[arg(long, required = true)]
    text: Vec<String>,
    /// File receiving the logits: per text, positions × vocab little-endian f32, texts one after the other.
    #[arg(long)]
    out: PathBuf,
}

pub fn convert(a: ConvertArgs) -> AnyResult<Value> {
    let t0 = Instant::now();
    let s = convert_gguf(
        &a.gguf,
        &a.out,
        ConvertOptions {
            keep_rope_permutation: a.keep_rope_permutation,
        },
    )?;
    Ok(json!({
        "tensors": s.tensors,
        "parameters": s.parameters,
        "source_types": s.source_types,
        "name": s.name,
        "rope_unpermuted": !a.keep_rope_permutation,
        "files": s.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "seconds": t0.elapsed().as_secs_f64(),
    }))
}

fn read_jsonl(path: &Path) -> AnyResult<Vec<Value>> {
    let f = fs::File::open(path).map_err(|e| format!("{}: cannot open: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| format!("{}:{}: not JSON: {e}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

fn write_jsonl(path: &Path, rows: &[Value]) -> AnyResult<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("jsonl.tmp");
    let mut w = std::io::BufWriter::new(
        fs::File::create(&tmp).map_err(|e| format!("{}: cannot create: {e}", tmp.display()))?,
    );
    for r in rows {
        writeln!(w, "{r}").map_err(|e| format!("{}: cannot write: {e}", tmp.display()))?;
    }
    w.flush()
        .map_err(|e| format!("{}: cannot write: {e}", tmp.display()))?;
    drop(w);
    fs::rename(&tmp, path).map_err(|e| format!("{}: cannot rename: {e}", path.display()))?;
    Ok(())
}

pub fn data(a: DataArgs) -> AnyResult<Value> {
    let t0 = Instant::now();
    if a.test_every < 2 {
        return Err("--test-every must be at least 2".into());
    }
    let tok = load_tokenizer(&a.model)?;
    let chat = ChatFormat::from_dir(&a.model)?;
    let mut summary = serde_json::Map::new();
    for mood in &a.mood {
        let src = a.moods.join(format!("{mood}.jsonl"));
        let rows = read_jsonl(&src)?;
        let (mut train, mut test) = (Vec::new(), Vec::new());
        let (mut cut, mut skipped, mut tokens) = (0usize, 0usize, 0usize);
        for (i, r) in rows.iter().enumerate() {
            let (Some(prompt), Some(response)) = (r["prompt"].as_str(), r["response"].as_str())
            else {
                return Err(format!(
                    "{}:{}: expected string fields \"prompt\" and \"response\"",
                    src.display(),
                    i + 1
                )
                .into());
            };
            let Some(p) = tokenize_pair(&tok, &chat, prompt, response, a.max_tokens)? else {
                skipped += 1;
                continue;
            };
            let full = encode(&tok, &chat.response(response))?.len() + p.prompt_len;
            cut += usize::from(full > p.ids.len());
            tokens += p.ids.len();
            let row = json!({
                "line": i + 1,
                "id": r["id"],
                "prompt": prompt,
                "response": response,
                "prompt_len": p.prompt_len,
                "ids": p.ids,
            });
            if (i + 1) % a.test_every == 0 {
                test.push(row);
            } else {
                train.push(row);
            }
        }
        let dir = a.out.join(mood);
        write_jsonl(&dir.join("train.jsonl"), &train)?;
        write_jsonl(&dir.join("test.jsonl"), &test)?;
        summary.insert(
            mood.clone(),
            json!({"train": train.len(), "test": test.len(), "cut_to_max_tokens": cut,
                   "skipped_long_prompt": skipped, "tokens": tokens}),
        );
    }
    let mut windows = Vec::new();
    for &c in &a.moby_chapters {
        let path = a.moby.join(format!("chapter_{c}.txt"));
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        // Drop the title line ("CHAPTER 10. A Bosom Friend.") and the blank line after it.
        let body = text
            .split_once("\n\n")
            .map_or(text.as_str(), |(_, b)| b)
            .trim_start();
        let mut ids = encode(&tok, body)?;
        if ids.len() < a.moby_tokens {
            return Err(format!(
                "{}: {} tokens, expected at least {}",
                path.display(),
                ids.len(),
                a.moby_tokens
            )
            .into());
        }
        ids.truncate(a.moby_tokens);
        windows.push(json!({"chapter": c, "ids": ids}));
    }
    write_jsonl(&a.out.join("moby-dick/heldout.jsonl"), &windows)?;
    Ok(json!({
        "moods": summary,
        "max_tokens": a.max_tokens,
        "test_every": a.test_every,
        "system_prompt": chat.system,
        "moby_windows": windows.len(),
        "moby_tokens": a.moby_tokens,
        "seconds": t0.elapsed().as_secs_f64(),
    }))
}

/// Held-out examples: token ids and where the scored part starts.
fn scored(path: &Path, limit: Option<usize>, general: bool) -> AnyResult<Vec<(Vec<u32>, usize)>> {
    let rows = read_jsonl(path)?;
    let mut out = Vec::new();
    for (i, r) in rows.iter().enumerate().take(limit.unwrap_or(usize::MAX)) {
        let ids: Option<Vec<u32>> = r["ids"].as_array().and_then(|a| {
            a.iter()
                .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect()
        });
        let start = if general {
            Some(1)
        } else {
            r["prompt_len"].as_u64().map(|n| n as usize)
        };
        match (ids, start) {
            (Some(ids), Some(start)) if start >= 1 && start < ids.len() => out.push((ids, start)),
            _ => {
                return Err(format!(
                    "{}:{}: expected \"ids\" (token ids) and a \"prompt_len\" inside them",
                    path.display(),
                    i + 1
                )
                .into())
            }
        }
    }
    if out.is_empty() {
        return Err(format!("{}: no examples", path.display()).into());
    }
    Ok(out)
}

/// Summed NLL and token count of the scored parts (tokens from `start` on, each given all before it).
fn score(model: &CausalLm, examples: &[(Vec<u32>, usize)]) -> AnyResult<(f64, usize)> {
    let (mut sum, mut n) = (0f64, 0usize);
    for (ids, start) in examples {
        let nll = model.token_nll(ids)?;
        // nll[i] is the loss of ids[i + 1].
        for v in &nll[start - 1..] {
            sum += v;
            n += 1;
        }
    }
    Ok((sum, n))
}

struct Scores {
    task: Option<(f64, usize)>,
    general: Option<(f64, usize)>,
}

fn score_model(
    dir: &Path,
    task: Option<&[(Vec<u32>, usize)]>,
    general: Option<&[(Vec<u32>, usize)]>,
) -> AnyResult<Scores> {
    let model = CausalLm::load_dir(dir)?;
    Ok(Scores {
        task: task.map(|t| score(&model, t)).transpose()?,
        general: general.map(|g| score(&model, g)).transpose()?,
    })
}

/// Identity of a file for a cache key: canonical path, size and modification time.
fn file_key(path: &Path) -> AnyResult<String> {
    let md = fs::metadata(path).map_err(|e| format!("{}: cannot stat: {e}", path.display()))?;
    let mtime = md
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(format!(
        "{}\n{}\n{mtime}\n",
        fs::canonicalize(path)?.display(),
        md.len()
    ))
}

/// [`score_model`] through a cache (reference models do not change during a run).
fn score_cached(
    cache: Option<&Path>,
    dir: &Path,
    key_data: &str,
    task: Option<&[(Vec<u32>, usize)]>,
    general: Option<&[(Vec<u32>, usize)]>,
) -> AnyResult<Scores> {
    let Some(cache) = cache else {
        return score_model(dir, task, general);
    };
    let key = format!(
        "llama-ppl\n{}{key_data}{}\n{}\n",
        file_key(&dir.join("model.safetensors"))?,
        task.is_some(),
        general.is_some()
    );
    let file = cache.join(format!("ppl-{:016x}.json", crate::fnv1a(key.as_bytes())));
    let pair = |v: &Value| -> Option<(f64, usize)> {
        Some((v.get(0)?.as_f64()?, v.get(1)?.as_u64()? as usize))
    };
    if let Ok(text) = fs::read_to_string(&file) {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            let (t, g) = (pair(&v["task"]), pair(&v["general"]));
            if t.is_some() == task.is_some() && g.is_some() == general.is_some() {
                return Ok(Scores {
                    task: t,
                    general: g,
                });
            }
        }
    }
    let s = score_model(dir, task, general)?;
    fs::create_dir_all(cache).map_err(|e| format!("{}: cannot create: {e}", cache.display()))?;
    let v = json!({"task": s.task.map(|(a, b)| json!([a, b])), "general": s.general.map(|(a, b)| json!([a, b]))});
    // Write then rename: a concurrent or interrupted run never sees half a file.
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, v.to_string())?;
    fs::rename(&tmp, &file)?;
    Ok(s)
}

fn log_ppl(s: Option<(f64, usize)>) -> Option<f64> {
    s.map(|(sum, n)| sum / n as f64)
}

pub fn perplexity_cmd(a: PerplexityArgs) -> AnyResult<Value> {
    let t0 = Instant::now();
    let data = a.testbed.join(LLAMA_DATA);
    let task = a
        .task
        .as_ref()
        .map(|t| scored(&data.join(t).join("test.jsonl"), a.limit, false))
        .transpose()?;
    let general = if a.general_limit == Some(0) {
        None
    } else {
        Some(scored(
            &data.join("moby-dick/heldout.jsonl"),
            a.general_limit,
            true,
        )?)
    };
    let (task, general) = (task.as_deref(), general.as_deref());
    let mut key_data = String::new();
    if let Some(t) = &a.task {
        key_data += &file_key(&data.join(t).join("test.jsonl"))?;
    }
    if general.is_some() {
        key_data += &file_key(&data.join("moby-dick/heldout.jsonl"))?;
    }
    key_data += &format!("{:?}\n{:?}\n", a.limit, a.general_limit);
    let cache = a.cache.as_deref();
    let me = score_model(&a.model, task, general)?;
    let mut out = serde_json::Map::new();
    if let Some((sum, n)) = me.task {
        out.insert("response_ppl".into(), json!(perplexity(sum, n)));
        out.insert("response_log_ppl".into(), json!(sum / n as f64));
        out.insert("n".into(), json!(task.map_or(0, <[_]>::len)));
        out.insert("response_tokens".into(), json!(n));
    }
    if let Some((sum, n)) = me.general {
        out.insert("general_ppl".into(), json!(perplexity(sum, n)));
        out.insert("general_tokens".into(), json!(n));
    }
    if let Some(ft_dir) = &a.finetuned {
        let ft = score_cached(cache, ft_dir, &key_data, task, general)?;
        if let (Some(f), Some(g)) = (log_ppl(ft.general), log_ppl(me.general)) {
            out.insert("general_ppl_finetuned".into(), json!(f.exp()));
            // Perplexity relative to the fine-tune's: 1 = no drift.
            out.insert("general_drift".into(), json!((g - f).exp()));
        }
        if let Some(f) = log_ppl(ft.task) {
            out.insert("response_ppl_finetuned".into(), json!(f.exp()));
        }
        if let Some(base_dir) = &a.base {
            let base = score_cached(cache, base_dir, &key_data, task, None)?;
            if let (Some(b), Some(f), Some(m)) =
                (log_ppl(base.task), log_ppl(ft.task), log_ppl(me.task))
            {
                out.insert("response_ppl_base".into(), json!(b.exp()));
                out.insert("retention".into(), json!((b - m) / (b - f)));
            }
        }
    }
    out.insert("seconds".into(), json!(t0.elapsed().as_secs_f64()));
    Ok(Value::Object(out))
}

/// Share of distinct token 4-grams among all 4-grams (1 = no repetition; a looping text tends to 0).
fn distinct_4grams(ids: &[u32]) -> f64 {
    if ids.len() < 4 {
        return 1.0;
    }
    let grams: Vec<&[u32]> = ids.windows(4).collect();
    let set: HashSet<&[u32]> = grams.iter().copied().collect();
    set.len() as f64 / grams.len() as f64
}

pub fn generate(a: GenerateArgs) -> AnyResult<Value> {
    let t0 = Instant::now();
    let model = CausalLm::load_dir(&a.model)?;
    let tok = load_tokenizer(&a.model)?;
    let chat = if a.raw {
        None
    } else {
        Some(ChatFormat::from_dir(&a.model)?)
    };
    let stop: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|s| tok.token_to_id(s))
        .collect();
    let mut outs = Vec::new();
    for p in &a.prompt {
        let text = chat.as_ref().map_or_else(|| p.clone(), |c| c.prompt(p));
        let ids = encode(&tok, &text)?;
        let new = model.generate_greedy(&ids, a.max_new, &stop)?;
        let stopped = new.last().is_some_and(|t| stop.contains(t));
        let decoded = tok
            .decode(&new, true)
            .map_err(|e| format!("cannot decode the continuation: {e}"))?;
        outs.push(json!({
            "prompt": p,
            "continuation": decoded,
            "new_tokens": new.len(),
            "stopped": stopped,
            "distinct_4grams": distinct_4grams(&new),
        }));
    }
    Ok(json!({"continuations": outs, "seconds": t0.elapsed().as_secs_f64()}))
}

pub fn logits(a: LogitsArgs) -> AnyResult<Value> {
    let model = CausalLm::load_dir(&a.model)?;
    let tok = load_tokenizer(&a.model)?;
    let mut w = std::io::BufWriter::new(
        fs::File::create(&a.out).map_err(|e| format!("{}: cannot create: {e}", a.out.display()))?,
    );
    let mut all_ids = Vec::new();
    for t in &a.text {
        let ids = encode(&tok, t)?;
        let l: Vec<Vec<f32>> = model.forward(&ids, &mut KvCache::default())?.to_vec2()?;
        for row in &l {
            for v in row {
                w.write_all(&v.to_le_bytes())
                    .map_err(|e| format!("{}: cannot write: {e}", a.out.display()))?;
            }
        }
        all_ids.push(ids);
    }
    w.flush()
        .map_err(|e| format!("{}: cannot write: {e}", a.out.display()))?;
    Ok(json!({"ids": all_ids, "vocab": model.config().vocab}))
}
