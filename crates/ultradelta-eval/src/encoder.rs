//! The BERT sentence encoder: WordPiece tokenization, candle forward pass, masked mean pooling.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Model, Tokenizer, TruncationParams};

use crate::{Error, Result};

/// Default number of texts per forward pass.
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// Default maximum sequence length in tokens, `[CLS]` and `[SEP]` included (sentence-transformers'
/// `max_seq_length` for all-MiniLM-L6-v2). Longer texts are truncated.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// Weight file names [`SentenceEncoder::load_dir`] looks for, in order.
const WEIGHT_NAMES: [&str; 2] = ["model.safetensors", "pytorch_model.safetensors"];

/// A BERT sentence-embedding model (the all-MiniLM-L6-v2 architecture) running on the CPU.
///
/// Pipeline of [`embed`](Self::embed): WordPiece tokenization as described by `tokenizer.json` (whatever fixed
/// padding or truncation the file declares is replaced: no padding, truncation to
/// [`max_tokens`](Self::with_max_tokens) tokens), `[CLS] … [SEP]`, texts grouped into batches by token length and
/// padded to the longest text of the batch with an attention mask, the BERT encoder, the mean of the last hidden
/// states over the unmasked tokens, and L2 normalisation. [`embed_raw`](Self::embed_raw) stops before the
/// normalisation, which is what a classification head trained on the mean-pooled output expects.
///
/// Results do not depend on the batch size or on which texts share a batch beyond float rounding (padding is
/// masked out), and the same texts always give the same bytes.
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    hidden_size: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
    batch_size: usize,
    max_tokens: usize,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("tokenizer", &self.tokenizer_path)
            .field("hidden_size", &self.hidden_size)
            .field("vocab_size", &self.vocab_size)
            .field("batch_size", &self.batch_size)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

impl SentenceEncoder {
    /// Loads a model from its three parts, which may live anywhere.
    ///
    /// `weights` is a safetensors checkpoint in the Hugging Face BERT layout (tensor names `embeddings.*`,
    /// `encoder.layer.N.*`, optionally under a `bert.` prefix; extra tensors such as a pooler, a classifier or
    /// `embeddings.position_ids` are ignored; F16/BF16 weights are converted to F32). It is memory-mapped while
    /// the tensors are copied out and unmapped before this returns. `config` is the model's `config.json`.
    /// `tokenizer` is a `tokenizer.json`, or a WordPiece `vocab.txt` from which the standard uncased BERT
    /// tokenizer is built.
    pub fn load(weights: &Path, config: &Path, tokenizer: &Path) -> Result<Self> {
        let config_text = std::fs::read_to_string(config).map_err(|source| Error::Io {
            path: config.to_path_buf(),
            op: "read",
            source,
        })?;
        let cfg: Config = serde_json::from_str(&config_text).map_err(|e| Error::Config {
            path: config.to_path_buf(),
            reason: e.to_string(),
        })?;
        validate_config(&cfg, config)?;

        let max_tokens = DEFAULT_MAX_TOKENS.min(cfg.max_position_embeddings);
        let mut tok = load_tokenizer(tokenizer)?;
        // The file's own padding (all-MiniLM-L6-v2 ships fixed 128-token padding) and truncation are replaced:
        // batches are padded here, with an attention mask.
        tok.with_padding(None);
        set_truncation(&mut tok, tokenizer, max_tokens)?;
        let tokenizer_vocab = tok.get_vocab_size(true);
        if tokenizer_vocab > cfg.vocab_size {
            return Err(Error::VocabMismatch {
                tokenizer: tokenizer.to_path_buf(),
                tokenizer_vocab,
                model_vocab: cfg.vocab_size,
            });
        }

        if !weights.is_file() {
            return Err(Error::Io {
                path: weights.to_path_buf(),
                op: "open",
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let model = load_model(weights, &cfg)?;

        Ok(Self {
            model,
            tokenizer: tok,
            tokenizer_path: tokenizer.to_path_buf(),
            hidden_size: cfg.hidden_size,
            vocab_size: cfg.vocab_size,
            max_position_embeddings: cfg.max_position_embeddings,
            batch_size: DEFAULT_BATCH_SIZE,
            max_tokens,
        })
    }

    /// Loads a model from a folder in the Hugging Face / sentence-transformers layout: `model.safetensors`
    /// (or `pytorch_model.safetensors`, or else the folder's only `*.safetensors` file), `config.json`, and
    /// `tokenizer.json` (or else `vocab.txt`).
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let weights = find_weights(dir)?;
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(Error::MissingFile {
                dir: dir.to_path_buf(),
                what: "config",
                expected: "config.json".into(),
            });
        }
        let tokenizer = ["tokenizer.json", "vocab.txt"]
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::MissingFile {
                dir: dir.to_path_buf(),
                what: "tokenizer",
                expected: "tokenizer.json or vocab.txt".into(),
            })?;
        Self::load(&weights, &config, &tokenizer)
    }

    /// Sets how many texts go through one forward pass (default [`DEFAULT_BATCH_SIZE`]).
    pub fn with_batch_size(mut self, batch_size: usize) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        self.batch_size = batch_size;
        Ok(self)
    }

    /// Sets the maximum sequence length in tokens, `[CLS]` and `[SEP]` included (default
    /// [`DEFAULT_MAX_TOKENS`], capped by the model's `max_position_embeddings`).
    pub fn with_max_tokens(mut self, max_tokens: usize) -> Result<Self> {
        if max_tokens < 2 || max_tokens > self.max_position_embeddings {
            return Err(Error::InvalidArgument(format!(
                "max tokens {max_tokens} outside 2..={} (the model's max_position_embeddings)",
                self.max_position_embeddings
            )));
        }
        set_truncation(&mut self.tokenizer, &self.tokenizer_path, max_tokens)?;
        self.max_tokens = max_tokens;
        Ok(self)
    }

    /// Width of an embedding (`hidden_size` of the config).
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// Texts per forward pass.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Maximum sequence length in tokens.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// L2-normalised sentence embeddings, one per text, each of length [`hidden_size`](Self::hidden_size).
    ///
    /// This is the sentence-transformers output of all-MiniLM-L6-v2 (Transformer → mean Pooling → Normalize).
    /// A text whose pooled vector is zero stays zero.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_with(texts, true)
    }

    /// Attention-masked mean of the last hidden states, not normalised: the input of a linear classification
    /// head fine-tuned on the mean-pooled output (see [`LinearHead`](crate::LinearHead)).
    pub fn embed_raw(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_with(texts, false)
    }

    /// [`embed`](Self::embed) when `normalize` is true, [`embed_raw`](Self::embed_raw) otherwise.
    pub fn embed_with(&self, texts: &[&str], normalize: bool) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = self.tokenize(texts)?;

        // Longest first, ties in input order: batches with similar lengths waste little on padding,
        // and the order is a pure function of the input.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by(|&a, &b| encoded[b].ids.len().cmp(&encoded[a].ids.len()));

        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(self.batch_size) {
            let rows: Vec<&Encoded> = chunk.iter().map(|&i| &encoded[i]).collect();
            let pooled = self
                .forward_pooled(&rows)
                .map_err(|source| Error::Forward {
                    batch: rows.len(),
                    source,
                })?;
            for (&i, mut v) in chunk.iter().zip(pooled) {
                if normalize {
                    l2_normalize(&mut v);
                }
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Token ids of `text` as the encoder sees them (`[CLS] … [SEP]`, truncated to
    /// [`max_tokens`](Self::max_tokens)).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenize(&[text])?.remove(0).ids)
    }

    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoded>> {
        let mut encoded = Vec::with_capacity(texts.len());
        for (index, text) in texts.iter().enumerate() {
            let enc = self
                .tokenizer
                .encode(*text, true)
                .map_err(|e| Error::Tokenize {
                    index,
                    reason: e.to_string(),
                })?;
            let ids = enc.get_ids().to_vec();
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
                return Err(Error::Tokenize {
                    index,
                    reason: format!(
                        "token id {id} is outside the model vocabulary of {} rows",
                        self.vocab_size
                    ),
                });
            }
            if ids.len() > self.max_tokens {
                return Err(Error::Tokenize {
                    index,
                    reason: format!(
                        "{} tokens after truncation to {}: the tokenizer's post-processor does not truncate",
                        ids.len(),
                        self.max_tokens
                    ),
                });
            }
            let type_ids = enc.get_type_ids().to_vec();
            encoded.push(Encoded { ids, type_ids });
        }
        Ok(encoded)
    }

    /// Forward pass of one batch; returns the masked mean of the last hidden states per row.
    fn forward_pooled(&self, rows: &[&Encoded]) -> candle_core::Result<Vec<Vec<f32>>> {
        let batch = rows.len();
        let len = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; batch * len];
        let mut type_ids = vec![0u32; batch * len];
        let mut mask = vec![0u32; batch * len];
        for (r, row) in rows.iter().enumerate() {
            let base = r * len;
            ids[base..base + row.ids.len()].copy_from_slice(&row.ids);
            type_ids[base..base + row.type_ids.len()].copy_from_slice(&row.type_ids);
            mask[base..base + row.ids.len()].fill(1);
        }
        let dev = &Device::Cpu;
        let ids = Tensor::from_vec(ids, (batch, len), dev)?;
        let type_ids = Tensor::from_vec(type_ids, (batch, len), dev)?;
        let mask = Tensor::from_vec(mask, (batch, len), dev)?;

        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?; // [batch, len, hidden]
        let maskf = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // [batch, len, 1]
        let summed = hidden.broadcast_mul(&maskf)?.sum(1)?; // [batch, hidden]
        let counts = maskf.sum(1)?.clamp(1e-9f32, f32::MAX)?; // [batch, 1]
        summed.broadcast_div(&counts)?.to_vec2::<f32>()
    }
}

/// Token ids and segment ids of one text.
struct Encoded {
    ids: Vec<u32>,
    type_ids: Vec<u32>,
}

/// Divides `v` by its Euclidean norm (at least 1e-12, as `torch.nn.functional.normalize`).
fn l2_normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    let norm = norm.max(1e-12);
    for x in v.iter_mut() {
        *x = (f64::from(*x) / norm) as f32;
    }
}

fn set_truncation(tok: &mut Tokenizer, path: &Path, max_tokens: usize) -> Result<()> {
    tok.with_truncation(Some(TruncationParams {
        max_length: max_tokens,
        ..TruncationParams::default()
    }))
    .map_err(|e| Error::Tokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(())
}

fn validate_config(cfg: &Config, path: &Path) -> Result<()> {
    let bad = |reason: String| Error::Config {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(mt) = &cfg.model_type {
        if mt != "bert" {
            return Err(bad(format!("model_type is {mt:?}, expected \"bert\"")));
        }
    }
    if cfg.hidden_size == 0 || cfg.num_attention_heads == 0 || cfg.num_hidden_layers == 0 {
        return Err(bad(
            "hidden_size, num_attention_heads and num_hidden_layers must be positive".into(),
        ));
    }
    if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
        return Err(bad(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            cfg.hidden_size, cfg.num_attention_heads
        )));
    }
    if cfg.max_position_embeddings < 2 || cfg.vocab_size == 0 || cfg.type_vocab_size == 0 {
        return Err(bad(
            "max_position_embeddings must be at least 2 and vocab_size, type_vocab_size positive"
                .into(),
        ));
    }
    Ok(())
}

fn find_weights(dir: &Path) -> Result<PathBuf> {
    if let Some(p) = WEIGHT_NAMES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
    {
        return Ok(p);
    }
    let listing = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        op: "list",
        source,
    })?;
    let mut found = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            op: "list",
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
            found.push(path);
        }
    }
    if found.len() == 1 {
        return Ok(found.remove(0));
    }
    Err(Error::MissingFile {
        dir: dir.to_path_buf(),
        what: "weights",
        expected: if found.is_empty() {
            "model.safetensors or a single *.safetensors file".into()
        } else {
            format!(
                "model.safetensors; {} *.safetensors files found, pass the weights path to SentenceEncoder::load",
                found.len()
            )
        },
    })
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let err = |reason: String| Error::Tokenizer {
        path: path.to_path_buf(),
        reason,
    };
    if path.extension().is_some_and(|e| e == "txt") {
        let vocab = path
            .to_str()
            .ok_or_else(|| err("path is not valid UTF-8".into()))?;
        let wordpiece = WordPiece::from_file(vocab)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| err(e.to_string()))?;
        let id = |t: &str| {
            wordpiece
                .token_to_id(t)
                .ok_or_else(|| err(format!("vocabulary lacks {t}")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        let mut tok = Tokenizer::new(wordpiece);
        tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
            .map_err(|e| err(e.to_string()))?;
        tok.with_pre_tokenizer(Some(BertPreTokenizer));
        tok.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
        Ok(tok)
    } else {
        Tokenizer::from_file(path).map_err(|e| err(e.to_string()))
    }
}

/// Builds the BERT model from a memory-mapped safetensors file.
#[allow(unsafe_code)]
fn load_model(weights: &Path, cfg: &Config) -> Result<BertModel> {
    let werr = |source| Error::Weights {
        path: weights.to_path_buf(),
        source,
    };
    // SAFETY: the map is only read while `BertModel::load` copies every tensor it needs into owned CPU
    // tensors; the `VarBuilder` (and with it the map) is dropped when this function returns. The file must not
    // be truncated or rewritten by another process during these few hundred milliseconds, which holds for the
    // read-only checkpoints this crate evaluates.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu).map_err(werr)?
    };
    BertModel::load(vb, cfg).map_err(werr)
}
