//! GGUF (llama.cpp) → Hugging Face `LlamaForCausalLM` folder.
//!
//! llama.cpp's GGUF files keep a LLaMA checkpoint quantized (Q4_1, Q8_0, ...) with its tokenizer and chat
//! template in the metadata. [`convert_gguf`] dequantizes every tensor (candle's GGML kernels), renames it to the
//! Hugging Face layout, undoes llama.cpp's rotary permutation of the query and key projections, and writes
//!
//! ```text
//! model.safetensors        bf16, Hugging Face tensor names (tied embeddings: no lm_head.weight)
//! config.json              LlamaForCausalLM configuration
//! tokenizer.json           byte-level BPE built from tokenizer.ggml.* (tokens, merges, special tokens, pre-tokenizer)
//! tokenizer_config.json    special tokens and the chat template (tokenizer.chat_template)
//! generation_config.json   bos / eos / pad token ids
//! ```
//!
//! The output bytes depend only on the GGUF file: converting twice gives identical files.
//!
//! **The rotary permutation.** Hugging Face LLaMA rotates the two *halves* of each head's query/key vector
//! (`rotate_half`), llama.cpp rotates *adjacent pairs*. llama.cpp's converter therefore reorders the rows of
//! `q_proj` and `k_proj` within each head: row `h·d + half·d/2 + i` of the Hugging Face matrix (head `h`, head
//! size `d`) becomes row `h·d + 2i + half` of the GGUF matrix. [`unpermute_rows`] maps it back; `k_proj` uses the
//! key/value head count. Getting it wrong does not break the model outright (only the pairing of rotary
//! frequencies), so it is checked by perplexity, see `docs/testbed-llama.md`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value as Json};

use crate::{Error, Result};

/// What [`convert_gguf`] may do differently.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvertOptions {
    /// Keep llama.cpp's row order of `q_proj` / `k_proj` (a deliberately wrong conversion, for the check that
    /// the un-permutation matters).
    pub keep_rope_permutation: bool,
}

/// What [`convert_gguf`] wrote.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    /// Tensors written.
    pub tensors: usize,
    /// Parameters written.
    pub parameters: usize,
    /// Source tensors per GGML type ("Q4_1", "Q8_0", "F32", ...).
    pub source_types: BTreeMap<String, usize>,
    /// Files written, in the output folder.
    pub files: Vec<PathBuf>,
    /// `general.name` of the GGUF, when present.
    pub name: Option<String>,
}

/// The model hyper-parameters read from `llama.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaHparams {
    /// Transformer blocks.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP inner size.
    pub ffn: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Context length the model was trained for.
    pub context: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// Rotary base frequency.
    pub rope_theta: f64,
}

/// The tokenizer read from `tokenizer.ggml.*` and `tokenizer.chat_template` metadata.
#[derive(Debug, Clone, Default)]
pub struct GgufTokenizer {
    /// `tokenizer.ggml.model` (only "gpt2", byte-level BPE, is supported).
    pub model: String,
    /// `tokenizer.ggml.pre`: llama.cpp's name of the pre-tokenizer.
    pub pre: String,
    /// The vocabulary, by id.
    pub tokens: Vec<String>,
    /// llama.cpp token types by id (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    pub token_types: Vec<i32>,
    /// BPE merges, "left right", by rank.
    pub merges: Vec<String>,
    /// Beginning-of-sequence token id.
    pub bos: Option<u32>,
    /// End-of-sequence token id.
    pub eos: Option<u32>,
    /// Unknown-token id.
    pub unk: Option<u32>,
    /// Padding token id.
    pub pad: Option<u32>,
    /// Whether llama.cpp prepends BOS.
    pub add_bos: bool,
    /// The Jinja chat template.
    pub chat_template: Option<String>,
}

/// Where llama.cpp's tensor names go in the Hugging Face layout.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's rotary permutation of a `rows × cols` row-major projection with `heads` heads: GGUF row
/// `h·d + 2i + half` goes to row `h·d + half·d/2 + i` (`d = rows / heads`).
///
/// # Panics
/// When `w.len() != rows * cols` or `rows` is not a multiple of `2 · heads`.
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    permute_impl(w, rows, cols, heads, false)
}

/// llama.cpp's rotary permutation (the inverse of [`unpermute_rows`]): Hugging Face row `h·d + half·d/2 + i`
/// goes to row `h·d + 2i + half`.
///
/// # Panics
/// As [`unpermute_rows`].
pub fn permute_rows(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    permute_impl(w, rows, cols, heads, true)
}

fn permute_impl(w: &[f32], rows: usize, cols: usize, heads: usize, to_gguf: bool) -> Vec<f32> {
    assert_eq!(w.len(), rows * cols, "matrix size");
    assert!(
        heads > 0 && rows.is_multiple_of(2 * heads),
        "rows {rows} not a multiple of 2 × {heads} heads"
    );
    let d = rows / heads;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for half in 0..2 {
            for i in 0..d / 2 {
                let hf = h * d + half * (d / 2) + i;
                let gg = h * d + 2 * i + half;
                let (src, dst) = if to_gguf { (hf, gg) } else { (gg, hf) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn gguf_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Gguf {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn meta_usize(v: &Value) -> Option<usize> {
    let n: i128 = match v {
        Value::U8(x) => (*x).into(),
        Value::I8(x) => (*x).into(),
        Value::U16(x) => (*x).into(),
        Value::I16(x) => (*x).into(),
        Value::U32(x) => (*x).into(),
        Value::I32(x) => (*x).into(),
        Value::U64(x) => (*x).into(),
        Value::I64(x) => (*x).into(),
        _ => return None,
    };
    usize::try_from(n).ok()
}

fn meta_f64(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => Some(f64::from(*x)),
        Value::F64(x) => Some(*x),
        _ => meta_usize(v).map(|n| n as f64),
    }
}

struct Meta<'a> {
    path: &'a Path,
    map: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.map
            .get(key)
            .ok_or_else(|| gguf_err(self.path, format!("no {key} metadata")))
    }
    fn usize(&self, key: &str) -> Result<usize> {
        meta_usize(self.get(key)?)
            .ok_or_else(|| gguf_err(self.path, format!("{key} is not a non-negative integer")))
    }
    fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => meta_usize(v)
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| gguf_err(self.path, format!("{key} is not a token id"))),
        }
    }
    fn f64(&self, key: &str) -> Result<f64> {
        meta_f64(self.get(key)?)
            .ok_or_else(|| gguf_err(self.path, format!("{key} is not a number")))
    }
    fn string(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            _ => Err(gguf_err(self.path, format!("{key} is not a string"))),
        }
    }
    fn opt_string(&self, key: &str) -> Option<&str> {
        match self.map.get(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key)? {
            Value::Array(a) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(gguf_err(self.path, format!("{key} holds a non-string"))),
                })
                .collect(),
            _ => Err(gguf_err(self.path, format!("{key} is not an array"))),
        }
    }
    fn ints(&self, key: &str) -> Result<Vec<i32>> {
        match self.get(key)? {
            Value::Array(a) => a
                .iter()
                .map(|v| {
                    meta_usize(v)
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| gguf_err(self.path, format!("{key} holds a non-integer")))
                })
                .collect(),
            _ => Err(gguf_err(self.path, format!("{key} is not an array"))),
        }
    }
}

/// Reads the `llama.*` hyper-parameters.
fn hparams(meta: &Meta<'_>) -> Result<LlamaHparams> {
    let arch = meta.string("general.architecture")?;
    if arch != "llama" {
        return Err(gguf_err(
            meta.path,
            format!("general.architecture is {arch:?}, expected \"llama\""),
        ));
    }
    let heads = meta.usize("llama.attention.head_count")?;
    let hp = LlamaHparams {
        layers: meta.usize("llama.block_count")?,
        hidden: meta.usize("llama.embedding_length")?,
        ffn: meta.usize("llama.feed_forward_length")?,
        heads,
        kv_heads: match meta.map.get("llama.attention.head_count_kv") {
            Some(_) => meta.usize("llama.attention.head_count_kv")?,
            None => heads,
        },
        vocab: match meta.map.get("llama.vocab_size") {
            Some(_) => meta.usize("llama.vocab_size")?,
            None => meta.strings("tokenizer.ggml.tokens")?.len(),
        },
        context: meta.usize("llama.context_length")?,
        rms_eps: meta.f64("llama.attention.layer_norm_rms_epsilon")?,
        rope_theta: match meta.map.get("llama.rope.freq_base") {
            Some(_) => meta.f64("llama.rope.freq_base")?,
            None => 10_000.0,
        },
    };
    if hp.heads == 0
        || hp.kv_heads == 0
        || !hp.heads.is_multiple_of(hp.kv_heads)
        || !hp.hidden.is_multiple_of(2 * hp.heads)
    {
        return Err(gguf_err(
            meta.path,
            format!(
                "{} heads / {} kv heads do not divide hidden size {}",
                hp.heads, hp.kv_heads, hp.hidden
            ),
        ));
    }
    if let Some(Value::U32(rot)) = meta.map.get("llama.rope.dimension_count") {
        if *rot as usize != hp.hidden / hp.heads {
            return Err(gguf_err(
                meta.path,
                format!(
                    "llama.rope.dimension_count {rot} (partial rotary) is not supported, expected the head size {}",
                    hp.hidden / hp.heads
                ),
            ));
        }
    }
    Ok(hp)
}

/// Reads the tokenizer metadata.
fn tokenizer_meta(meta: &Meta<'_>) -> Result<GgufTokenizer> {
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let token_types = match meta.map.get("tokenizer.ggml.token_type") {
        Some(_) => meta.ints("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    Ok(GgufTokenizer {
        model: meta.string("tokenizer.ggml.model")?.to_string(),
        pre: meta
            .opt_string("tokenizer.ggml.pre")
            .unwrap_or("default")
            .to_string(),
        token_types,
        merges: meta.strings("tokenizer.ggml.merges")?,
        bos: meta.opt_u32("tokenizer.ggml.bos_token_id")?,
        eos: meta.opt_u32("tokenizer.ggml.eos_token_id")?,
        unk: meta.opt_u32("tokenizer.ggml.unknown_token_id")?,
        pad: meta.opt_u32("tokenizer.ggml.padding_token_id")?,
        add_bos: matches!(
            meta.map.get("tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        ),
        chat_template: meta.opt_string("tokenizer.chat_template").map(String::from),
        tokens,
    })
}

/// llama.cpp pre-tokenizer names whose split is digits one by one, then GPT-2's byte-level regex (the
/// StarCoder tokenizer family, SmolLM included).
const DIGITS_THEN_GPT2: [&str; 4] = ["smollm", "starcoder", "refact", "codeshell"];
/// llama.cpp pre-tokenizer names that are GPT-2's byte-level regex alone.
const GPT2_ONLY: [&str; 2] = ["gpt2", "default"];

/// The Hugging Face pre-tokenizer matching llama.cpp's `tokenizer.ggml.pre`.
fn pre_tokenizer(pre: &str) -> std::result::Result<Json, String> {
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    if DIGITS_THEN_GPT2.contains(&pre) {
        Ok(json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level],
        }))
    } else if GPT2_ONLY.contains(&pre) {
        Ok(byte_level)
    } else {
        Err(format!(
            "tokenizer.ggml.pre {pre:?} is not supported (supported: {})",
            DIGITS_THEN_GPT2
                .iter()
                .chain(GPT2_ONLY.iter())
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// Whether a llama.cpp token type is an added token (control or user-defined) rather than a BPE vocabulary entry
/// reached by merges.
fn is_added(token_type: i32) -> bool {
    token_type == 3 || token_type == 4
}

/// A Hugging Face `tokenizer.json` (byte-level BPE) equivalent to the GGUF tokenizer: the vocabulary and merges,
/// control and user-defined tokens as added tokens (control ones marked special), the pre-tokenizer named by
/// `tokenizer.ggml.pre`, and byte-level decoding. No BOS/EOS is added on encoding (the chat template places the
/// special tokens); an `add_bos_token` tokenizer is refused rather than silently changed.
pub fn tokenizer_json(tok: &GgufTokenizer) -> std::result::Result<Json, String> {
    if tok.model != "gpt2" {
        return Err(format!(
            "tokenizer.ggml.model {:?} is not supported (expected \"gpt2\", byte-level BPE)",
            tok.model
        ));
    }
    if tok.add_bos {
        return Err(
            "tokenizer.ggml.add_bos_token is true; only tokenizers that add no BOS are supported"
                .into(),
        );
    }
    if tok.token_types.len() != tok.tokens.len() {
        return Err(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            tok.token_types.len(),
            tok.tokens.len()
        ));
    }
    let mut vocab = serde_json::Map::with_capacity(tok.tokens.len());
    let mut added = Vec::new();
    for (id, (t, &ty)) in tok.tokens.iter().zip(&tok.token_types).enumerate() {
        if vocab.insert(t.clone(), json!(id)).is_some() {
            return Err(format!(
                "token {t:?} appears twice in tokenizer.ggml.tokens"
            ));
        }
        if is_added(ty) {
            added.push(json!({
                "id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty == 3,
            }));
        }
    }
    for (rank, m) in tok.merges.iter().enumerate() {
        let Some((a, b)) = m.split_once(' ') else {
            return Err(format!("merge {rank} {m:?} is not \"left right\""));
        };
        if !vocab.contains_key(a)
            || !vocab.contains_key(b)
            || !vocab.contains_key(&format!("{a}{b}"))
        {
            return Err(format!(
                "merge {rank} {m:?} uses a token not in the vocabulary"
            ));
        }
    }
    let unk = tok
        .unk
        .and_then(|id| tok.tokens.get(id as usize))
        .filter(|_| tok.token_types.contains(&2));
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(&tok.pre)?,
        "post_processor": {
            "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": tok.merges,
        },
    }))
}

fn token_str(tok: &GgufTokenizer, id: Option<u32>) -> Json {
    id.and_then(|i| tok.tokens.get(i as usize))
        .map_or(Json::Null, |s| json!(s))
}

/// `tokenizer_config.json`: special tokens and the chat template.
pub fn tokenizer_config_json(tok: &GgufTokenizer, context: usize) -> Json {
    let mut decoder = serde_json::Map::new();
    for (id, (t, &ty)) in tok.tokens.iter().zip(&tok.token_types).enumerate() {
        if is_added(ty) {
            decoder.insert(
                id.to_string(),
                json!({"content": t, "lstrip": false, "normalized": false, "rstrip": false,
                       "single_word": false, "special": ty == 3}),
            );
        }
    }
    json!({
        "add_bos_token": tok.add_bos,
        "add_eos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "bos_token": token_str(tok, tok.bos),
        "eos_token": token_str(tok, tok.eos),
        "pad_token": token_str(tok, tok.pad),
        "unk_token": token_str(tok, tok.unk),
        "chat_template": tok.chat_template,
        "clean_up_tokenization_spaces": false,
        "model_max_length": context,
        "tokenizer_class": "GPT2Tokenizer",
    })
}

/// `config.json` of the converted model.
pub fn config_json(hp: &LlamaHparams, tok: &GgufTokenizer, tied: bool) -> Json {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": tok.bos,
        "eos_token_id": tok.eos,
        "pad_token_id": tok.pad,
        "head_dim": hp.hidden / hp.heads,
        "hidden_act": "silu",
        "hidden_size": hp.hidden,
        "initializer_range": 0.02,
        "intermediate_size": hp.ffn,
        "max_position_embeddings": hp.context,
        "mlp_bias": false,
        "num_attention_heads": hp.heads,
        "num_hidden_layers": hp.layers,
        "num_key_value_heads": hp.kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": hp.rms_eps,
        "rope_scaling": null,
        "rope_theta": hp.rope_theta,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "use_cache": true,
        "vocab_size": hp.vocab,
    })
}

/// A hidden temporary name next to `path`: files are written there, then renamed into place, so a reader never
/// sees half a file.
fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp"))
}

fn rename_into_place(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        op: "rename into place",
        source,
    })
}

fn write_json(path: &Path, v: &Json) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Llama {
        path: path.to_path_buf(),
        reason: format!("cannot serialise: {e}"),
    })? + "\n";
    let tmp = tmp_path(path);
    fs::write(&tmp, text).map_err(|source| Error::Io {
        path: tmp.clone(),
        op: "write",
        source,
    })?;
    rename_into_place(&tmp, path)
}

/// Converts the llama.cpp GGUF `gguf` into a Hugging Face `LlamaForCausalLM` folder `out` (created; files in it
/// are overwritten). See the module documentation for what is written.
pub fn convert_gguf(gguf: &Path, out: &Path, opts: ConvertOptions) -> Result<ConvertSummary> {
    let mut file = fs::File::open(gguf).map_err(|source| Error::Io {
        path: gguf.to_path_buf(),
        op: "open",
        source,
    })?;
    let mut reader = std::io::BufReader::new(&mut file);
    let content = Content::read(&mut reader).map_err(|e| gguf_err(gguf, e.to_string()))?;
    let meta = Meta {
        path: gguf,
        map: &content.metadata,
    };
    let hp = hparams(&meta)?;
    let tok = tokenizer_meta(&meta)?;
    if tok.tokens.len() != hp.vocab {
        return Err(gguf_err(
            gguf,
            format!(
                "{} tokens in tokenizer.ggml.tokens but llama.vocab_size {}",
                tok.tokens.len(),
                hp.vocab
            ),
        ));
    }
    let tokenizer = tokenizer_json(&tok).map_err(|r| gguf_err(gguf, r))?;

    let head_dim = hp.hidden / hp.heads;
    let mut expected: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    expected.insert(
        "model.embed_tokens.weight".into(),
        vec![hp.vocab, hp.hidden],
    );
    expected.insert("model.norm.weight".into(), vec![hp.hidden]);
    for l in 0..hp.layers {
        let p = format!("model.layers.{l}");
        let kv = hp.kv_heads * head_dim;
        for (n, s) in [
            ("input_layernorm.weight", vec![hp.hidden]),
            ("post_attention_layernorm.weight", vec![hp.hidden]),
            ("self_attn.q_proj.weight", vec![hp.hidden, hp.hidden]),
            ("self_attn.k_proj.weight", vec![kv, hp.hidden]),
            ("self_attn.v_proj.weight", vec![kv, hp.hidden]),
            ("self_attn.o_proj.weight", vec![hp.hidden, hp.hidden]),
            ("mlp.gate_proj.weight", vec![hp.ffn, hp.hidden]),
            ("mlp.up_proj.weight", vec![hp.ffn, hp.hidden]),
            ("mlp.down_proj.weight", vec![hp.hidden, hp.ffn]),
        ] {
            expected.insert(format!("{p}.{n}"), s);
        }
    }
    let tied = !content.tensor_infos.contains_key("output.weight");
    if !tied {
        expected.insert("lm_head.weight".into(), vec![hp.vocab, hp.hidden]);
    }

    let cpu = Device::Cpu;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: HashMap<String, Tensor> = HashMap::with_capacity(names.len());
    let mut source_types = BTreeMap::new();
    let mut parameters = 0usize;
    for name in names {
        let hf = hf_name(name).ok_or_else(|| {
            gguf_err(
                gguf,
                format!("tensor {name} has no Hugging Face LLaMA name"),
            )
        })?;
        let Some(shape) = expected.remove(&hf) else {
            return Err(gguf_err(
                gguf,
                format!(
                    "tensor {name} ({hf}) is not expected for a {}-layer model",
                    hp.layers
                ),
            ));
        };
        let q = content
            .tensor(&mut reader, name, &cpu)
            .map_err(|e| gguf_err(gguf, format!("tensor {name}: {e}")))?;
        *source_types
            .entry(format!("{:?}", q.dtype()))
            .or_insert(0usize) += 1;
        if q.shape().dims() != shape.as_slice() {
            return Err(gguf_err(
                gguf,
                format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    q.shape().dims()
                ),
            ));
        }
        let t = q
            .dequantize(&cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| gguf_err(gguf, format!("tensor {name}: cannot dequantize: {e}")))?;
        let heads = if hf.ends_with("q_proj.weight") {
            Some(hp.heads)
        } else if hf.ends_with("k_proj.weight") {
            Some(hp.kv_heads)
        } else {
            None
        };
        let t = match heads {
            Some(h) if !opts.keep_rope_permutation => unpermute_rows(&t, shape[0], shape[1], h),
            _ => t,
        };
        parameters += t.len();
        let t = Tensor::from_vec(t, shape.as_slice(), &cpu)
            .and_then(|t| t.to_dtype(DType::BF16))
            .map_err(|e| gguf_err(gguf, format!("tensor {name}: {e}")))?;
        tensors.insert(hf, t);
    }
    if let Some((missing, _)) = expected.iter().next() {
        return Err(gguf_err(
            gguf,
            format!(
                "no tensor for {missing} ({} missing in all)",
                expected.len()
            ),
        ));
    }

    fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        op: "create",
        source,
    })?;
    let weights = out.join("model.safetensors");
    let n_tensors = tensors.len();
    let tmp = tmp_path(&weights);
    candle_core::safetensors::save(&tensors, &tmp).map_err(|e| Error::Llama {
        path: tmp.clone(),
        reason: format!("cannot write: {e}"),
    })?;
    rename_into_place(&tmp, &weights)?;
    let mut files = vec![weights];
    let mut gen = serde_json::Map::new();
    gen.insert("bos_token_id".into(), json!(tok.bos));
    gen.insert("eos_token_id".into(), json!(tok.eos));
    gen.insert("pad_token_id".into(), json!(tok.pad));
    for (file, value) in [
        ("config.json", config_json(&hp, &tok, tied)),
        ("tokenizer.json", tokenizer),
        (
            "tokenizer_config.json",
            tokenizer_config_json(&tok, hp.context),
        ),
        ("generation_config.json", Json::Object(gen)),
    ] {
        let p = out.join(file);
        write_json(&p, &value)?;
        files.push(p);
    }
    Ok(ConvertSummary {
        tensors: n_tensors,
        parameters,
        source_types,
        files,
        name: meta.opt_string("general.name").map(String::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // 2 heads of size 4, 3 columns; each row holds its own Hugging Face row index.
        let (rows, cols, heads) = (8, 3, 2);
        let hf: Vec<f32> = (0..rows * cols).map(|i| (i / cols) as f32).collect();
        let gg = permute_rows(&hf, rows, cols, heads);
        // llama.cpp: w.reshape(heads, 2, d/2, cols).swapaxes(1, 2).reshape(rows, cols) -> per head the rows go
        // h0: [0, 2, 1, 3], h1: [4, 6, 5, 7].
        let order: Vec<f32> = (0..rows).map(|r| gg[r * cols]).collect();
        assert_eq!(order, [0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(unpermute_rows(&gg, rows, cols, heads), hf);
    }

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    fn tiny_tokenizer() -> GgufTokenizer {
        let mut tokens: Vec<String> = vec![
            "<|endoftext|>".into(),
            "<|im_start|>".into(),
            "<|im_end|>".into(),
        ];
        let mut token_types = vec![3, 3, 3];
        // The 256 byte-level symbols, then merged tokens.
        for b in 0u8..=255 {
            let s = byte_symbol(b);
            tokens.push(s);
            token_types.push(1);
        }
        for t in ["he", "ll", "llo", "hello", "Ġw", "Ġwo", "Ġwor"] {
            tokens.push(t.into());
            token_types.push(1);
        }
        GgufTokenizer {
            model: "gpt2".into(),
            pre: "smollm".into(),
            tokens,
            token_types,
            merges: ["h e", "l l", "ll o", "he llo", "Ġ w", "Ġw o", "Ġwo r"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            pad: Some(2),
            add_bos: false,
            chat_template: Some("{{ '<|im_start|>' }}".into()),
        }
    }

    /// GPT-2's byte-to-unicode table (printable bytes map to themselves, the others to U+0100 upwards).
    fn byte_symbol(b: u8) -> String {
        let printable =
            |b: u8| (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        if printable(b) {
            char::from(b).to_string()
        } else {
            let n = (0u8..b).filter(|&x| !printable(x)).count() as u32;
            char::from_u32(256 + n).expect("char").to_string()
        }
    }

    #[test]
    fn tokenizer_json_builds_a_working_byte_level_bpe() {
        let tok = tiny_tokenizer();
        let json = tokenizer_json(&tok).expect("tokenizer.json");
        let t = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&json).expect("bytes"))
            .expect("load");
        let enc = t
            .encode("<|im_start|>hello world 42<|im_end|>", false)
            .expect("encode");
        let toks: Vec<&str> = enc.get_tokens().iter().map(String::as_str).collect();
        assert_eq!(
            toks,
            [
                "<|im_start|>",
                "hello",
                "Ġwor",
                "l",
                "d",
                "Ġ",
                "4",
                "2",
                "<|im_end|>"
            ]
        );
        assert_eq!(enc.get_ids()[0], 1);
        assert_eq!(*enc.get_ids().last().expect("ids"), 2);
        let text = t.decode(enc.get_ids(), false).expect("decode");
        assert_eq!(text, "<|im_start|>hello world 42<|im_end|>");
        // Special tokens are skipped on request.
        assert_eq!(
            t.decode(enc.get_ids(), true).expect("decode"),
            "hello world 42"
        );
    }

    #[test]
    fn tokenizer_json_refuses_what_it_cannot_reproduce() {
        let mut tok = tiny_tokenizer();
        tok.pre = "llama3".into();
        assert!(tokenizer_json(&tok).unwrap_err().contains("llama3"));
        let mut tok = tiny_tokenizer();
        tok.model = "llama".into();
        assert!(tokenizer_json(&tok).unwrap_err().contains("gpt2"));
        let mut tok = tiny_tokenizer();
        tok.merges.push("zz q".into());
        assert!(tokenizer_json(&tok).unwrap_err().contains("zz q"));
    }
}
