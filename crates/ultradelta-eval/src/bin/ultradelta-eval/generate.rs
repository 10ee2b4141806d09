//! `ultradelta-eval make-testbed`: a small generated testbed with the real testbed's layout.
//!
//! Both families: the MiniLM one below, the LLaMA one (`llama/`, a tiny LLaMA and four fine-tunes) in
//! `generate_llama.rs`.
//!
//! A tiny BERT base (ultradelta-synth's `tiny` shape, f32) and four fine-tunes of it named like the real ones
//! (`bbc`, `spam` with a classification head, `sre`, `jobs` without), a generated WordPiece vocabulary, and
//! labelled texts whose classes differ in their word distributions. The heads are nearest-centroid heads
//! fitted on each fine-tune's own embeddings of its training texts, so accuracy is well above chance and a
//! damaged delta shows. Nothing here is real data: it exists so CI and tests run `cargo xtask reproduce` on
//! the same code path in seconds.

use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use ultradelta_eval::{LinearHead, SentenceEncoder};
use ultradelta_synth::{Shape, SynthConfig};

use crate::AnyResult;

/// Tokens a generated text is cut to (the tiny model has 128 positions).
const MAX_TOKENS: usize = 64;
/// Words shared by every class; each class owns `CLASS_WORDS` more.
const COMMON_WORDS: usize = 300;
const CLASS_WORDS: usize = 60;
/// Special tokens first, as in BERT's vocab.txt.
const SPECIAL: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

struct GenTask {
    name: &'static str,
    labels: &'static [&'static str],
    train_per_class: usize,
    test: usize,
    head: bool,
}

const TASKS: [GenTask; 4] = [
    GenTask {
        name: "bbc",
        labels: &["business", "entertainment", "politics", "sports", "tech"],
        train_per_class: 40,
        test: 100,
        head: true,
    },
    GenTask {
        name: "spam",
        labels: &["ham", "spam"],
        train_per_class: 60,
        test: 100,
        head: true,
    },
    GenTask {
        name: "sre",
        labels: &[],
        train_per_class: 0,
        test: 0,
        head: false,
    },
    GenTask {
        name: "jobs",
        labels: &[],
        train_per_class: 0,
        test: 0,
        head: false,
    },
];

/// SplitMix64: a tiny deterministic generator for the texts (no platform or crate-version drift).
pub(crate) struct Mix(pub(crate) u64);

impl Mix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` distinct lowercase pseudo-words of two or three syllables ("bado", "kelumi", ...).
pub(crate) fn words(n: usize) -> Vec<String> {
    const C: &[u8] = b"bdfgklmnprstvz";
    const V: &[u8] = b"aeiou";
    let syll: Vec<String> = C
        .iter()
        .flat_map(|&c| {
            V.iter()
                .map(move |&v| format!("{}{}", c as char, v as char))
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    'outer: for a in &syll {
        for b in &syll {
            for c in ["", "n", "x"] {
                if out.len() == n {
                    break 'outer;
                }
                out.push(format!("{a}{b}{c}"));
            }
        }
    }
    out
}

/// One text of class `label`: 24–48 words, about half from the class's own words.
fn text(rng: &mut Mix, vocab: &[String], label: usize) -> String {
    let len = 24 + rng.below(25);
    (0..len)
        .map(|_| {
            let i = if rng.unit() < 0.5 {
                COMMON_WORDS + label * CLASS_WORDS + rng.below(CLASS_WORDS)
            } else {
                rng.below(COMMON_WORDS)
            };
            vocab[i].as_str()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn write_jsonl(path: &Path, rows: &[(String, usize)]) -> AnyResult<()> {
    let mut s = String::new();
    for (t, l) in rows {
        s.push_str(&serde_json::to_string(&json!({"text": t, "label": l}))?);
        s.push('\n');
    }
    std::fs::write(path, s)?;
    Ok(())
}

/// Adds `classifier.weight` / `classifier.bias` (f32) to a safetensors file, by rewrite and rename.
fn add_head(path: &Path, weight: &[f32], bias: &[f32], hidden: usize) -> AnyResult<()> {
    let bytes = std::fs::read(path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut views: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    let wb: Vec<u8> = weight.iter().flat_map(|v| v.to_le_bytes()).collect();
    let bb: Vec<u8> = bias.iter().flat_map(|v| v.to_le_bytes()).collect();
    views.push((
        LinearHead::WEIGHT.into(),
        TensorView::new(Dtype::F32, vec![bias.len(), hidden], &wb)?,
    ));
    views.push((
        LinearHead::BIAS.into(),
        TensorView::new(Dtype::F32, vec![bias.len()], &bb)?,
    ));
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, None, &tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Fits the nearest-centroid head of a classification task on its fine-tune's raw embeddings, stores it in
/// the model, and returns (correct, n) on the test set.
fn fit_head(
    model: &Path,
    task: &GenTask,
    train: &[(String, usize)],
    test: &[(String, usize)],
) -> AnyResult<(usize, usize)> {
    let enc = SentenceEncoder::load_dir(model)?.with_max_tokens(MAX_TOKENS)?;
    let hidden = enc.hidden_size();
    let k = task.labels.len();
    let emb = enc.embed_raw(&train.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>())?;
    let mut sums = vec![0f64; k * hidden];
    let mut counts = vec![0usize; k];
    for (e, (_, l)) in emb.iter().zip(train) {
        for (s, &v) in sums[l * hidden..(l + 1) * hidden].iter_mut().zip(e) {
            *s += f64::from(v);
        }
        counts[*l] += 1;
    }
    // argmax_c (c·x − |c|²/2) is the nearest centroid.
    let weight: Vec<f32> = sums
        .chunks(hidden)
        .zip(&counts)
        .flat_map(|(row, &n)| row.iter().map(move |s| (s / n.max(1) as f64) as f32))
        .collect();
    let bias: Vec<f32> = weight
        .chunks(hidden)
        .map(|c| -0.5 * c.iter().map(|v| v * v).sum::<f32>())
        .collect();
    let head = LinearHead::new(weight.clone(), bias.clone(), hidden)?;
    let test_emb = enc.embed_raw(&test.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>())?;
    let correct = test_emb
        .iter()
        .zip(test)
        .filter(|(e, (_, l))| head.predict(e) == *l)
        .count();
    drop(enc);
    add_head(&model.join("model.safetensors"), &weight, &bias, hidden)?;
    Ok((correct, test.len()))
}

pub(crate) fn list_files(root: &Path, dir: &Path, out: &mut Vec<Value>) -> AnyResult<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            list_files(root, &p, out)?;
        } else {
            let bytes = std::fs::read(&p)?;
            let rel = p.strip_prefix(root)?.to_string_lossy().replace('\\', "/");
            out.push(json!({
                "path": rel,
                "bytes": bytes.len(),
                "sha256": Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect::<String>(),
            }));
        }
    }
    Ok(())
}

pub fn make_testbed(out: &Path, force: bool) -> AnyResult<Value> {
    if out.exists() {
        if !force {
            return Err(format!(
                "{}: already exists (pass --force to replace it)",
                out.display()
            )
            .into());
        }
        std::fs::remove_dir_all(out)?;
    }
    let name = out
        .file_name()
        .ok_or_else(|| format!("{}: not a folder name", out.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = out.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let result = build(&tmp);
    match result {
        Ok(summary) => {
            std::fs::rename(&tmp, out)?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn build(root: &Path) -> AnyResult<Value> {
    let shape = Shape::Tiny;
    let n_vocab = match shape.arch() {
        ultradelta_synth::Arch::Bert(d) => d.vocab,
        _ => return Err("the tiny synthetic shape is not a BERT".into()),
    };
    let vocab_words = words(n_vocab - SPECIAL.len());
    let vocab_txt: String = SPECIAL
        .iter()
        .map(|s| s.to_string())
        .chain(vocab_words.iter().cloned())
        .map(|w| w + "\n")
        .collect();

    // Models: one base, four fine-tunes with their own delta seeds.
    let models = root.join("models");
    let synth = root.join("synth");
    for (i, task) in TASKS.iter().enumerate() {
        let cfg = SynthConfig {
            dtype: ultradelta_io::DType::F32,
            rel_scale: 0.03,
            delta_seed: Some(1 + i as u64),
            ..SynthConfig::new(shape)
        };
        let pair = synth.join(task.name);
        let (base, ft) = ultradelta_synth::write_pair(&pair, &cfg, |_, _| {})?;
        std::fs::create_dir_all(&models)?;
        if i == 0 {
            std::fs::rename(&base, models.join("base"))?;
        }
        std::fs::rename(&ft, models.join(task.name))?;
    }
    std::fs::remove_dir_all(&synth)?;
    for entry in std::fs::read_dir(&models)? {
        std::fs::write(entry?.path().join("vocab.txt"), &vocab_txt)?;
    }

    // Data and heads of the classification tasks.
    let mut accuracies = serde_json::Map::new();
    for (t, task) in TASKS.iter().enumerate().filter(|(_, t)| t.head) {
        let mut rng = Mix(0x5eed_0000 + t as u64);
        let k = task.labels.len();
        let train: Vec<(String, usize)> = (0..task.train_per_class * k)
            .map(|i| (text(&mut rng, &vocab_words, i % k), i % k))
            .collect();
        let test: Vec<(String, usize)> = (0..task.test)
            .map(|i| (text(&mut rng, &vocab_words, i % k), i % k))
            .collect();
        let data = root.join("data").join(task.name);
        std::fs::create_dir_all(&data)?;
        write_jsonl(&data.join("train.jsonl"), &train)?;
        write_jsonl(&data.join("test.jsonl"), &test)?;
        let model = models.join(task.name);
        let (correct, n) = fit_head(&model, task, &train, &test)?;
        let accuracy = correct as f64 / n as f64;
        accuracies.insert(task.name.into(), json!(accuracy));
        let info = json!({
            "format": 1,
            "task": task.name,
            "description": "generated texts (ultradelta-eval make-testbed); not real data",
            "labels": task.labels,
            "head": {
                "weight": LinearHead::WEIGHT,
                "bias": LinearHead::BIAS,
                "input": "attention-masked mean of the last hidden states, not normalised (embed_raw)",
                "fit": "nearest class centroid of the fine-tune's own training embeddings",
            },
            "split": {
                "train_file": format!("data/{}/train.jsonl", task.name),
                "test_file": format!("data/{}/test.jsonl", task.name),
                "train": train.len(),
                "test": test.len(),
            },
            "hyper_parameters": {"max_tokens": MAX_TOKENS},
            "test_accuracy": accuracy,
            "test_correct": correct,
        });
        std::fs::write(model.join("task.json"), serde_json::to_vec_pretty(&info)?)?;
    }

    let mut files = Vec::new();
    list_files(root, root, &mut files)?;
    let manifest = json!({
        "description": "UltraDelta-rs generated testbed (ultradelta-eval make-testbed): tiny BERT, generated texts",
        "generated": true,
        "files": files,
    });
    std::fs::write(
        root.join("testbed.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    let llama = crate::generate_llama::build_llama(root)?;
    Ok(json!({ "generated": true, "test_accuracy": accuracies, "llama_perplexity": llama }))
}
