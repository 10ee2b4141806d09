//! The LLaMA half of `ultradelta-eval make-testbed`: a tiny generated LLaMA with the real testbed's layout.
//!
//! `llama/models/base` is a random 2-layer LLaMA (hidden 64, 4 heads / 2 key-value heads, SwiGLU 128, tied
//! embeddings, bf16) with exactly the tensor names of the converted SmolLM2-135M-Instruct, a byte-level BPE
//! `tokenizer.json` (the 256 bytes and ChatML's special tokens, no merges), a ChatML chat template, and the
//! converted model's companion files. `llama/models/{drunk,childish,zen,scared}` are "fine-tunes": every tensor
//! of the base plus its own random delta (all weights change, as in a full fine-tune).
//!
//! Held-out data in the layout `ultradelta-eval perplexity` reads: per task, prompts in the chat template
//! followed by responses *sampled from that task's fine-tune*, so the fine-tune has a lower perplexity on them
//! than the base (the task's "skill") and a compressed delta that loses the change shows; general text sampled
//! from the base stands in for Moby Dick. Nothing here is real data or a real model: it exists so CI runs the
//! LLaMA family of `cargo xtask reproduce` on the same code path in seconds.

use std::path::Path;

use half::bf16;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use ultradelta_eval::chat::ChatFormat;
use ultradelta_eval::gguf::{
    config_json, tokenizer_config_json, tokenizer_json, GgufTokenizer, LlamaHparams,
};
use ultradelta_eval::llama::{encode, load_tokenizer, CausalLm, KvCache};

use crate::generate::{list_files, Mix};
use crate::AnyResult;

/// The fine-tunes, named as the real testbed's mood tasks.
pub const LLAMA_TASKS: [&str; 4] = ["drunk", "childish", "zen", "scared"];
/// Held-out pairs per task and sampled response tokens per pair.
const TEST_PAIRS: usize = 8;
const RESPONSE_TOKENS: usize = 24;
/// General-text windows (the stand-in for Moby Dick) and their length.
const GENERAL_WINDOWS: usize = 4;
const GENERAL_TOKENS: usize = 48;
/// Relative size of each fine-tune's delta (per tensor, against the tensor's own scale).
const DELTA_SCALE: f32 = 0.25;

const SYSTEM: &str = "You are a tiny generated test model";

fn hparams() -> LlamaHparams {
    LlamaHparams {
        layers: 2,
        hidden: 64,
        ffn: 128,
        heads: 4,
        kv_heads: 2,
        vocab: 259,
        context: 256,
        rms_eps: 1e-5,
        rope_theta: 10000.0,
    }
}

/// GPT-2's byte-to-unicode table (printable bytes map to themselves, the others to U+0100 upwards).
fn byte_symbol(b: u8) -> String {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    if printable(b) {
        char::from(b).to_string()
    } else {
        let n = (0u8..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).map_or_else(String::new, |c| c.to_string())
    }
}

/// The 256 byte tokens, then `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` (control tokens).
fn tokenizer() -> GgufTokenizer {
    let mut tokens: Vec<String> = (0..=255u8).map(byte_symbol).collect();
    let mut types = vec![6; 256];
    for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(s.into());
        types.push(3);
    }
    let template = format!(
        "{{% for message in messages %}}{{% if loop.first and messages[0]['role'] != 'system' %}}\
         {{{{ '<|im_start|>system\n{SYSTEM}<|im_end|>\n' }}}}{{% endif %}}\
         {{{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}}}\
         {{% endfor %}}{{% if add_generation_prompt %}}{{{{ '<|im_start|>assistant\n' }}}}{{% endif %}}"
    );
    GgufTokenizer {
        model: "gpt2".into(),
        pre: "smollm".into(),
        tokens,
        token_types: types,
        merges: Vec::new(),
        bos: Some(257),
        eos: Some(258),
        unk: None,
        pad: Some(256),
        add_bos: false,
        chat_template: Some(template),
    }
}

/// Standard normal draws (Box-Muller on [`Mix`]).
fn normal(rng: &mut Mix) -> f32 {
    let u1 = rng.unit().max(1e-300);
    let u2 = rng.unit();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// The tensor names and shapes of the model, in file order, with the standard deviation of their values
/// (norm weights: around 1).
fn tensor_specs(hp: &LlamaHparams) -> Vec<(String, Vec<usize>, f32, bool)> {
    let (h, f, kv) = (hp.hidden, hp.ffn, hp.kv_heads * (hp.hidden / hp.heads));
    let lin = |i: usize| 1.0 / (i as f32).sqrt();
    let mut v = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![hp.vocab, h],
        0.4,
        false,
    )];
    for l in 0..hp.layers {
        let p = format!("model.layers.{l}");
        v.push((format!("{p}.input_layernorm.weight"), vec![h], 0.1, true));
        v.push((
            format!("{p}.self_attn.q_proj.weight"),
            vec![h, h],
            lin(h),
            false,
        ));
        v.push((
            format!("{p}.self_attn.k_proj.weight"),
            vec![kv, h],
            lin(h),
            false,
        ));
        v.push((
            format!("{p}.self_attn.v_proj.weight"),
            vec![kv, h],
            lin(h),
            false,
        ));
        v.push((
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, h],
            lin(h),
            false,
        ));
        v.push((
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            0.1,
            true,
        ));
        v.push((
            format!("{p}.mlp.gate_proj.weight"),
            vec![f, h],
            lin(h),
            false,
        ));
        v.push((format!("{p}.mlp.up_proj.weight"), vec![f, h], lin(h), false));
        v.push((
            format!("{p}.mlp.down_proj.weight"),
            vec![h, f],
            lin(f),
            false,
        ));
    }
    v.push(("model.norm.weight".to_string(), vec![h], 0.1, true));
    v
}

/// Writes `model.safetensors` (bf16) from named f32 tensors.
fn write_weights(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> AnyResult<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| {
            v.iter()
                .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                .collect()
        })
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        views.push((
            name.clone(),
            TensorView::new(Dtype::BF16, shape.clone(), b)?,
        ));
    }
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path)?;
    Ok(())
}

/// Writes a model folder: weights and the companion files of the converted SmolLM2.
fn write_model(
    dir: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    hp: &LlamaHparams,
    tok: &GgufTokenizer,
) -> AnyResult<()> {
    std::fs::create_dir_all(dir)?;
    write_weights(&dir.join("model.safetensors"), tensors)?;
    let pretty = |v: &Value| serde_json::to_string_pretty(v).map(|s| s + "\n");
    std::fs::write(
        dir.join("config.json"),
        pretty(&config_json(hp, tok, true))?,
    )?;
    std::fs::write(dir.join("tokenizer.json"), pretty(&tokenizer_json(tok)?)?)?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        pretty(&tokenizer_config_json(tok, hp.context))?,
    )?;
    std::fs::write(
        dir.join("generation_config.json"),
        pretty(
            &json!({"bos_token_id": tok.bos, "eos_token_id": tok.eos, "pad_token_id": tok.pad}),
        )?,
    )?;
    Ok(())
}

/// Samples `n` byte tokens (never a special token) continuing `ids` from `model` at temperature 1.
fn sample(model: &CausalLm, ids: &[u32], n: usize, rng: &mut Mix) -> AnyResult<Vec<u32>> {
    let mut cache = KvCache::default();
    let mut next_in = ids.to_vec();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let logits = model.forward(&next_in, &mut cache)?;
        let last: Vec<f32> = logits.get(next_in.len() - 1)?.to_vec1()?;
        let bytes = &last[..256];
        let max = bytes.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let w: Vec<f64> = bytes.iter().map(|&x| (x as f64 - max).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut u = rng.unit() * total;
        let mut tok = 255u32;
        for (i, x) in w.iter().enumerate() {
            if u < *x {
                tok = i as u32;
                break;
            }
            u -= x;
        }
        out.push(tok);
        next_in = vec![tok];
    }
    Ok(out)
}

/// Mean NLL of the scored parts (tokens from `start` on) of `rows` under `model`.
fn mean_nll(model: &CausalLm, rows: &[(Vec<u32>, usize)]) -> AnyResult<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for (ids, start) in rows {
        let nll = model.token_nll(ids)?;
        sum += nll[start - 1..].iter().sum::<f64>();
        n += nll.len() + 1 - start;
    }
    Ok(sum / n as f64)
}

fn write_jsonl(path: &Path, rows: &[Value]) -> AnyResult<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut s = String::new();
    for r in rows {
        s.push_str(&r.to_string());
        s.push('\n');
    }
    std::fs::write(path, s)?;
    Ok(())
}

/// Pseudo-word prompts ("bado kelumi ...") for the chat turns.
fn prompt_text(rng: &mut Mix, words: &[String]) -> String {
    let n = 3 + rng.below(5);
    (0..n)
        .map(|_| words[rng.below(words.len())].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes `<root>/llama/` (models, data, testbed.json); returns a summary.
pub fn build_llama(root: &Path) -> AnyResult<Value> {
    let hp = hparams();
    let tok = tokenizer();
    let llama = root.join("llama");
    let models = llama.join("models");
    let specs = tensor_specs(&hp);
    let mut rng = Mix(0x11a3_a000);
    let base: Vec<(String, Vec<usize>, Vec<f32>)> = specs
        .iter()
        .map(|(name, shape, std, norm)| {
            let n: usize = shape.iter().product();
            let v = (0..n)
                .map(|_| {
                    if *norm {
                        1.0 + std * normal(&mut rng)
                    } else {
                        std * normal(&mut rng)
                    }
                })
                .collect();
            (name.clone(), shape.clone(), v)
        })
        .collect();
    write_model(&models.join("base"), &base, &hp, &tok)?;
    for (t, task) in LLAMA_TASKS.iter().enumerate() {
        let mut rng = Mix(0x11a3_a100 + t as u64);
        let ft: Vec<(String, Vec<usize>, Vec<f32>)> = base
            .iter()
            .zip(&specs)
            .map(|((name, shape, w), (_, _, std, _))| {
                let v = w
                    .iter()
                    .map(|x| x + DELTA_SCALE * std * normal(&mut rng))
                    .collect();
                (name.clone(), shape.clone(), v)
            })
            .collect();
        write_model(&models.join(task), &ft, &hp, &tok)?;
    }

    // Data: prompts in the chat template, responses sampled from each fine-tune; general text from the base.
    let words = crate::generate::words(200);
    let base_dir = models.join("base");
    let tk = load_tokenizer(&base_dir)?;
    let chat = ChatFormat::from_dir(&base_dir)?;
    let im_end = tk.token_to_id("<|im_end|>").ok_or("no <|im_end|> token")?;
    let base_model = CausalLm::load_dir(&base_dir)?;
    let data = llama.join("data");
    let mut summary = serde_json::Map::new();
    for (t, task) in LLAMA_TASKS.iter().enumerate() {
        let dir = models.join(task);
        let model = CausalLm::load_dir(&dir)?;
        let mut rng = Mix(0x11a3_a200 + t as u64);
        let mut rows = Vec::new();
        let mut scored = Vec::new();
        for i in 0..TEST_PAIRS {
            let prompt = prompt_text(&mut rng, &words);
            let mut ids = encode(&tk, &chat.prompt(&prompt))?;
            let prompt_len = ids.len();
            let response = sample(&model, &ids, RESPONSE_TOKENS, &mut rng)?;
            let text = tk.decode(&response, true).unwrap_or_default();
            ids.extend(&response);
            ids.push(im_end);
            rows.push(json!({"line": i + 1, "prompt": prompt, "response": text, "prompt_len": prompt_len, "ids": ids}));
            scored.push((ids, prompt_len));
        }
        let (b, f) = (mean_nll(&base_model, &scored)?, mean_nll(&model, &scored)?);
        if f >= b {
            return Err(format!(
                "generated fine-tune {task}: log-perplexity {f:.4} not below the base's {b:.4}"
            )
            .into());
        }
        write_jsonl(&data.join(task).join("test.jsonl"), &rows)?;
        let info = json!({
            "format": 1,
            "task": task,
            "description": "generated tiny LLaMA fine-tune (ultradelta-eval make-testbed): random delta; \
                            held-out responses sampled from it. Not a real model or real data",
            "split": {"test_file": format!("llama/data/{task}/test.jsonl"), "test": rows.len()},
            "test_ppl_base": b.exp(),
            "test_ppl_finetuned": f.exp(),
        });
        std::fs::write(dir.join("task.json"), serde_json::to_vec_pretty(&info)?)?;
        summary.insert(
            (*task).into(),
            json!({"ppl_base": b.exp(), "ppl_finetuned": f.exp()}),
        );
    }
    let mut rng = Mix(0x11a3_a300);
    let mut windows = Vec::new();
    for c in 0..GENERAL_WINDOWS {
        let start = vec![rng.below(256) as u32];
        let mut ids = start.clone();
        ids.extend(sample(&base_model, &start, GENERAL_TOKENS - 1, &mut rng)?);
        windows.push(json!({"chapter": c + 1, "ids": ids}));
    }
    write_jsonl(&data.join("moby-dick/heldout.jsonl"), &windows)?;

    let mut files = Vec::new();
    list_files(root, &llama, &mut files)?;
    let manifest = json!({
        "description": "UltraDelta-rs generated testbed, LLaMA family (ultradelta-eval make-testbed): tiny random LLaMA, sampled texts",
        "family": "llama",
        "generated": true,
        "files": files,
    });
    std::fs::write(
        llama.join("testbed.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    Ok(Value::Object(summary))
}
