//! A LLaMA causal language model on the CPU (candle, f32): Hugging Face `LlamaForCausalLM` folders.
//!
//! candle-transformers' `llama::Llama::forward` returns the logits of the last position only; perplexity needs
//! every position, so this module runs the same architecture with candle's operations directly (RMSNorm,
//! half-split rotary embedding as Hugging Face's `rotate_half`, grouped-query attention, SwiGLU MLP, tied or
//! untied output embedding) and returns all logits. A test checks it against candle-transformers' model on the
//! last position.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// The hyper-parameters of `config.json` this model uses.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Hidden size.
    pub hidden: usize,
    /// MLP inner size.
    pub ffn: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Longest sequence.
    pub max_positions: usize,
    /// Output projection shares the token embedding.
    pub tied: bool,
}

impl LlamaConfig {
    /// Reads a Hugging Face LLaMA `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let err = |reason: String| Error::Llama {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            op: "read",
            source,
        })?;
        let v: Json = serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
        let int = |k: &str| -> Result<usize> {
            v[k].as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| err(format!("config.json has no integer {k:?}")))
        };
        let heads = int("num_attention_heads")?;
        let cfg = Self {
            hidden: int("hidden_size")?,
            ffn: int("intermediate_size")?,
            vocab: int("vocab_size")?,
            layers: int("num_hidden_layers")?,
            heads,
            kv_heads: v["num_key_value_heads"]
                .as_u64()
                .map_or(heads, |n| n as usize),
            rms_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta: v["rope_theta"].as_f64().unwrap_or(10_000.0),
            max_positions: int("max_position_embeddings")?,
            tied: v["tie_word_embeddings"].as_bool().unwrap_or(false),
        };
        if v["model_type"].as_str().is_some_and(|t| t != "llama") {
            return Err(err(format!(
                "model_type {}, expected \"llama\"",
                v["model_type"]
            )));
        }
        if !v["rope_scaling"].is_null() {
            return Err(err("rope_scaling is not supported (expected null)".into()));
        }
        if heads == 0
            || cfg.kv_heads == 0
            || !heads.is_multiple_of(cfg.kv_heads)
            || !cfg.hidden.is_multiple_of(2 * heads)
        {
            return Err(err(format!(
                "{heads} heads / {} kv heads do not fit hidden size {}",
                cfg.kv_heads, cfg.hidden
            )));
        }
        Ok(cfg)
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

struct Layer {
    attn_norm: Tensor,
    /// q, k and v projections stacked and transposed: (hidden, hidden + 2·kv).
    qkv_t: Tensor,
    o_t: Tensor,
    mlp_norm: Tensor,
    /// gate and up stacked and transposed: (hidden, 2·ffn).
    gate_up_t: Tensor,
    down_t: Tensor,
}

/// Key/value cache for incremental decoding, one entry per layer: (kv_heads, positions, head_dim).
#[derive(Default)]
pub struct KvCache {
    kv: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.kv
            .first()
            .and_then(|e| e.as_ref())
            .map_or(0, |(k, _)| k.dims()[1])
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A LLaMA causal LM in f32 on the CPU.
pub struct CausalLm {
    cfg: LlamaConfig,
    embed: Tensor,
    /// Output projection transposed: (hidden, vocab).
    head_t: Tensor,
    norm: Tensor,
    layers: Vec<Layer>,
    cos: Tensor,
    sin: Tensor,
    weights: PathBuf,
}

impl std::fmt::Debug for CausalLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CausalLm")
            .field("weights", &self.weights)
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn cerr<'a>(path: &'a Path, what: &str) -> impl Fn(candle_core::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::Llama {
        path: path.to_path_buf(),
        reason: format!("{what}: {e}"),
    }
}

impl CausalLm {
    /// Loads `config.json` and `model.safetensors` of a Hugging Face LLaMA folder (any float dtype; computed in
    /// f32).
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(Error::MissingFile {
                dir: dir.to_path_buf(),
                what: "weights",
                expected: "model.safetensors".into(),
            });
        }
        let dev = Device::Cpu;
        let mut map = candle_core::safetensors::load(&weights, &dev)
            .map_err(cerr(&weights, "cannot read"))?;
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = map.remove(name).ok_or_else(|| Error::Tensor {
                path: weights.clone(),
                tensor: name.into(),
                reason: format!("missing (expected shape {shape:?})"),
            })?;
            if t.dims() != shape {
                return Err(Error::Tensor {
                    path: weights.clone(),
                    tensor: name.into(),
                    reason: format!("shape {:?}, expected {shape:?}", t.dims()),
                });
            }
            t.to_dtype(DType::F32).map_err(cerr(&weights, name))
        };
        let (h, kv, ffn) = (cfg.hidden, cfg.kv_heads * cfg.head_dim(), cfg.ffn);
        let tr = |t: Tensor, name: &str| {
            t.t()
                .and_then(|t| t.contiguous())
                .map_err(cerr(&weights, name))
        };
        let embed = take("model.embed_tokens.weight", &[cfg.vocab, h])?;
        let head_t = if cfg.tied {
            tr(embed.clone(), "lm_head")?
        } else {
            let w = take("lm_head.weight", &[cfg.vocab, h])?;
            tr(w, "lm_head")?
        };
        let norm = take("model.norm.weight", &[h])?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("model.layers.{l}");
            let q = take(&format!("{p}.self_attn.q_proj.weight"), &[h, h])?;
            let k = take(&format!("{p}.self_attn.k_proj.weight"), &[kv, h])?;
            let v = take(&format!("{p}.self_attn.v_proj.weight"), &[kv, h])?;
            let qkv = Tensor::cat(&[&q, &k, &v], 0).map_err(cerr(&weights, &p))?;
            let gate = take(&format!("{p}.mlp.gate_proj.weight"), &[ffn, h])?;
            let up = take(&format!("{p}.mlp.up_proj.weight"), &[ffn, h])?;
            let gate_up = Tensor::cat(&[&gate, &up], 0).map_err(cerr(&weights, &p))?;
            layers.push(Layer {
                attn_norm: take(&format!("{p}.input_layernorm.weight"), &[h])?,
                qkv_t: tr(qkv, &p)?,
                o_t: tr(take(&format!("{p}.self_attn.o_proj.weight"), &[h, h])?, &p)?,
                mlp_norm: take(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate_up_t: tr(gate_up, &p)?,
                down_t: tr(take(&format!("{p}.mlp.down_proj.weight"), &[h, ffn])?, &p)?,
            });
        }
        let mut extra: Vec<&String> = map
            .keys()
            .filter(|k| !k.ends_with("rotary_emb.inv_freq"))
            .collect();
        extra.sort();
        if let Some(name) = extra.first() {
            return Err(Error::Tensor {
                path: weights.clone(),
                tensor: (*name).clone(),
                reason: format!("unexpected for a {}-layer LLaMA", cfg.layers),
            });
        }
        let (cos, sin) = rope_tables(&cfg).map_err(cerr(&weights, "rotary tables"))?;
        Ok(Self {
            cfg,
            embed,
            head_t,
            norm,
            layers,
            cos,
            sin,
            weights,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Logits (positions × vocab) of `ids` following the positions already in `cache` (pass a fresh cache for a
    /// whole sequence).
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        self.forward_inner(ids, cache)
            .map_err(cerr(&self.weights, "forward pass"))
    }

    fn forward_inner(&self, ids: &[u32], cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let start = cache.len();
        let t = ids.len();
        if t == 0 || start + t > self.cfg.max_positions {
            candle_core::bail!(
                "{t} new positions after {start}: outside 1..={} (max_position_embeddings)",
                self.cfg.max_positions
            );
        }
        if cache.kv.len() != self.layers.len() {
            cache.kv = vec![None; self.layers.len()];
        }
        let dev = Device::Cpu;
        let ids_t = Tensor::from_slice(ids, t, &dev)?;
        let mut x = self.embed.index_select(&ids_t, 0)?;
        let cos = self.cos.narrow(0, start, t)?;
        let sin = self.sin.narrow(0, start, t)?;
        let (nh, nkv, hd) = (self.cfg.heads, self.cfg.kv_heads, self.cfg.head_dim());
        let total = start + t;
        // Additive causal mask (t, total): position start+i sees keys 0..=start+i.
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..total).map(move |j| {
                    if j > start + i {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (1, t, total), &dev)?;
        let eps = self.cfg.rms_eps as f32;
        let scale = 1.0 / (hd as f64).sqrt();
        for (layer, slot) in self.layers.iter().zip(cache.kv.iter_mut()) {
            let hn = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let qkv = hn.matmul(&layer.qkv_t)?;
            let heads = |off: usize, n: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(1, off * hd, n * hd)?
                    .reshape((t, n, hd))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let q = heads(0, nh)?;
            let k = heads(nh, nkv)?;
            let v = heads(nh + nkv, nkv)?;
            let q = candle_nn::rotary_emb::rope(&q.unsqueeze(0)?, &cos, &sin)?.squeeze(0)?;
            let k = candle_nn::rotary_emb::rope(&k.unsqueeze(0)?, &cos, &sin)?.squeeze(0)?;
            let (k, v) = match slot.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
                None => (k, v),
            };
            *slot = Some((k.clone(), v.clone()));
            let rep = nh / nkv;
            let expand = |x: &Tensor| -> candle_core::Result<Tensor> {
                if rep == 1 {
                    return Ok(x.clone());
                }
                x.unsqueeze(1)?
                    .broadcast_as((nkv, rep, total, hd))?
                    .reshape((nh, total, hd))
            };
            let (k, v) = (expand(&k)?, expand(&v)?);
            let att = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&mask)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att.matmul(&v)?.transpose(0, 1)?.reshape((t, nh * hd))?;
            x = (x + y.matmul(&layer.o_t)?)?;
            let hn = candle_nn::ops::rms_norm(&x, &layer.mlp_norm, eps)?;
            let gu = hn.matmul(&layer.gate_up_t)?;
            let ffn = self.cfg.ffn;
            let act = (candle_nn::ops::silu(&gu.narrow(1, 0, ffn)?)? * gu.narrow(1, ffn, ffn)?)?;
            x = (x + act.matmul(&layer.down_t)?)?;
        }
        let x = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        x.matmul(&self.head_t)
    }

    /// Negative log-likelihood (natural log) of every token of `ids` after the first, given the tokens before
    /// it: `nll[i]` is for `ids[i + 1]`.
    pub fn token_nll(&self, ids: &[u32]) -> Result<Vec<f64>> {
        if ids.len() < 2 {
            return Ok(Vec::new());
        }
        let logits = self.forward(&ids[..ids.len() - 1], &mut KvCache::default())?;
        let rows: Vec<Vec<f32>> = logits.to_vec2().map_err(cerr(&self.weights, "logits"))?;
        Ok(rows
            .iter()
            .zip(&ids[1..])
            .map(|(row, &target)| nll_of(row, target as usize))
            .collect())
    }

    /// Greedy continuation of `prompt`: up to `max_new` tokens, stopping after any of `stop` (included).
    pub fn generate_greedy(
        &self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let mut cache = KvCache::default();
        let mut out = Vec::new();
        let mut next_in: Vec<u32> = prompt.to_vec();
        for _ in 0..max_new {
            if cache.len() + next_in.len() > self.cfg.max_positions {
                break;
            }
            let logits = self.forward(&next_in, &mut cache)?;
            let last: Vec<f32> = logits
                .get(next_in.len() - 1)
                .and_then(|r| r.to_vec1())
                .map_err(cerr(&self.weights, "logits"))?;
            let tok = crate::argmax(&last) as u32;
            out.push(tok);
            if stop.contains(&tok) {
                break;
            }
            next_in = vec![tok];
        }
        Ok(out)
    }
}

/// -log softmax(row)[target], computed in f64.
fn nll_of(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln() - row[target] as f64
}

/// cos and sin tables (max_positions × head_dim/2) of the rotary embedding.
fn rope_tables(cfg: &LlamaConfig) -> candle_core::Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let inv: Vec<f32> = (0..hd / 2)
        .map(|i| (1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32)
        .collect();
    let n = cfg.max_positions;
    let mut angles = Vec::with_capacity(n * hd / 2);
    for p in 0..n {
        angles.extend(inv.iter().map(|f| p as f32 * f));
    }
    let a = Tensor::from_vec(angles, (n, hd / 2), &Device::Cpu)?;
    Ok((a.cos()?, a.sin()?))
}

/// Loads `tokenizer.json` of a model folder.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
        path,
        reason: e.to_string(),
    })
}

/// Token ids of `text` (no special tokens added; special-token strings in `text` map to their ids).
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    tok.encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| Error::Tokenize {
            index: 0,
            reason: e.to_string(),
        })
}

/// Perplexity from summed NLL over `count` tokens.
pub fn perplexity(sum_nll: f64, count: usize) -> f64 {
    if count == 0 {
        f64::NAN
    } else {
        (sum_nll / count as f64).exp()
    }
}
