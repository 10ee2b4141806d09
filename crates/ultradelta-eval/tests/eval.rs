//! Tests of the sentence encoder and the classification head on a tiny random BERT built here, checked against a
//! plain f64 reference forward pass; plus the real testbed models when `UD_TESTBED=<dir>` is set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use safetensors::{Dtype, View};
use ultradelta_eval::{cosine, Error, LinearHead, SentenceEncoder};

const HIDDEN: usize = 16;
const HEADS: usize = 2;
const LAYERS: usize = 2;
const INTER: usize = 32;
const MAX_POS: usize = 64;
const VOCAB: usize = 40;
const EPS: f64 = 1e-12;

/// Tokens of the tiny vocabulary; ids are positions. Padded to `VOCAB` rows in the model.
const TOKENS: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "dog", "sat", "on", "mat", "a",
    "runs", "fast", "pod", "crash", "##ing", "##es", "keeps", ".", ",", "!", "big", "small", "red",
    "blue",
];

struct Tiny {
    _dir: tempfile::TempDir,
    path: PathBuf,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Tiny {
    fn get(&self, name: &str) -> &[f32] {
        &self.tensors[name].1
    }
}

/// Owned tensor bytes for `safetensors::serialize`.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn f32_raw(shape: &[usize], values: &[f32]) -> Raw {
    Raw {
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn tokenizer_json() -> String {
    let vocab: Vec<String> = TOKENS
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{t:?}: {i}"))
        .collect();
    // Declares fixed 128-token padding and 128-token truncation, as all-MiniLM-L6-v2's file does: the encoder
    // must override both.
    format!(
        r###"{{
  "version": "1.0",
  "truncation": {{"max_length": 128, "strategy": "LongestFirst", "stride": 0}},
  "padding": {{"strategy": {{"Fixed": 128}}, "direction": "Right", "pad_to_multiple_of": null,
              "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}},
  "added_tokens": [],
  "normalizer": {{"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                 "strip_accents": null, "lowercase": true}},
  "pre_tokenizer": {{"type": "BertPreTokenizer"}},
  "post_processor": {{"type": "TemplateProcessing",
    "single": [{{"SpecialToken": {{"id": "[CLS]", "type_id": 0}}}}, {{"Sequence": {{"id": "A", "type_id": 0}}}},
               {{"SpecialToken": {{"id": "[SEP]", "type_id": 0}}}}],
    "pair": [{{"SpecialToken": {{"id": "[CLS]", "type_id": 0}}}}, {{"Sequence": {{"id": "A", "type_id": 0}}}},
             {{"SpecialToken": {{"id": "[SEP]", "type_id": 0}}}}, {{"Sequence": {{"id": "B", "type_id": 1}}}},
             {{"SpecialToken": {{"id": "[SEP]", "type_id": 1}}}}],
    "special_tokens": {{"[CLS]": {{"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}},
                       "[SEP]": {{"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}}}}},
  "decoder": {{"type": "WordPiece", "prefix": "##", "cleanup": true}},
  "model": {{"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100, "vocab": {{{}}}}}
}}"###,
        vocab.join(", ")
    )
}

fn config_json(vocab_size: usize, heads: usize) -> String {
    format!(
        r#"{{"architectures": ["BertModel"], "model_type": "bert", "vocab_size": {vocab_size},
  "hidden_size": {HIDDEN}, "num_hidden_layers": {LAYERS}, "num_attention_heads": {heads},
  "intermediate_size": {INTER}, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
  "attention_probs_dropout_prob": 0.1, "max_position_embeddings": {MAX_POS}, "type_vocab_size": 2,
  "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0}}"#
    )
}

/// A random BERT with the real model's tensor names, written to a temporary folder with `config.json`,
/// `tokenizer.json`, `vocab.txt` and `model.safetensors` (which also holds a 3-class `classifier.*` head and
/// the I64 `embeddings.position_ids` the real base carries).
fn tiny(seed: u64) -> Tiny {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tensors = BTreeMap::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let u = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32; // [0, 1)
                offset + scale * (2.0 * u - 1.0)
            })
            .collect();
        tensors.insert(name, (shape, values));
    };
    let h = HIDDEN;
    add(
        "embeddings.word_embeddings.weight".into(),
        vec![VOCAB, h],
        1.0,
        0.0,
    );
    add(
        "embeddings.position_embeddings.weight".into(),
        vec![MAX_POS, h],
        0.5,
        0.0,
    );
    add(
        "embeddings.token_type_embeddings.weight".into(),
        vec![2, h],
        0.5,
        0.0,
    );
    add("embeddings.LayerNorm.weight".into(), vec![h], 0.2, 1.0);
    add("embeddings.LayerNorm.bias".into(), vec![h], 0.1, 0.0);
    let ws = 1.0 / (h as f32).sqrt();
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        for m in ["query", "key", "value"] {
            add(
                format!("{p}.attention.self.{m}.weight"),
                vec![h, h],
                2.0 * ws,
                0.0,
            );
            add(format!("{p}.attention.self.{m}.bias"), vec![h], 0.1, 0.0);
        }
        add(
            format!("{p}.attention.output.dense.weight"),
            vec![h, h],
            ws,
            0.0,
        );
        add(
            format!("{p}.attention.output.dense.bias"),
            vec![h],
            0.1,
            0.0,
        );
        add(
            format!("{p}.attention.output.LayerNorm.weight"),
            vec![h],
            0.2,
            1.0,
        );
        add(
            format!("{p}.attention.output.LayerNorm.bias"),
            vec![h],
            0.1,
            0.0,
        );
        add(
            format!("{p}.intermediate.dense.weight"),
            vec![INTER, h],
            2.0 * ws,
            0.0,
        );
        add(
            format!("{p}.intermediate.dense.bias"),
            vec![INTER],
            0.1,
            0.0,
        );
        add(
            format!("{p}.output.dense.weight"),
            vec![h, INTER],
            1.0 / (INTER as f32).sqrt(),
            0.0,
        );
        add(format!("{p}.output.dense.bias"), vec![h], 0.1, 0.0);
        add(format!("{p}.output.LayerNorm.weight"), vec![h], 0.2, 1.0);
        add(format!("{p}.output.LayerNorm.bias"), vec![h], 0.1, 0.0);
    }
    add("classifier.weight".into(), vec![3, h], 1.0, 0.0);
    add("classifier.bias".into(), vec![3], 0.5, 0.0);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let mut raws: Vec<(String, Raw)> = tensors
        .iter()
        .map(|(n, (s, v))| (n.clone(), f32_raw(s, v)))
        .collect();
    raws.push((
        "embeddings.position_ids".into(),
        Raw {
            dtype: Dtype::I64,
            shape: vec![1, MAX_POS],
            bytes: (0..MAX_POS as i64).flat_map(|v| v.to_le_bytes()).collect(),
        },
    ));
    let bytes =
        safetensors::serialize(raws.iter().map(|(n, r)| (n.as_str(), r)), None).expect("serialize");
    std::fs::write(path.join("model.safetensors"), bytes).expect("write weights");
    std::fs::write(path.join("config.json"), config_json(VOCAB, HEADS)).expect("write config");
    std::fs::write(path.join("tokenizer.json"), tokenizer_json()).expect("write tokenizer");
    std::fs::write(path.join("vocab.txt"), TOKENS.join("\n") + "\n").expect("write vocab");
    Tiny {
        _dir: dir,
        path,
        tensors,
    }
}

// ---------- plain f64 reference of the BERT forward pass (one unpadded sequence) ----------

fn erf(x: f64) -> f64 {
    // Abramowitz & Stegun 7.1.26, |error| < 1.5e-7.
    let s = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    s * y
}

fn linear(m: &Tiny, name: &str, x: &[f64], out: usize) -> Vec<f64> {
    let w = m.get(&format!("{name}.weight"));
    let b = m.get(&format!("{name}.bias"));
    let inp = x.len();
    (0..out)
        .map(|o| {
            f64::from(b[o])
                + (0..inp)
                    .map(|i| f64::from(w[o * inp + i]) * x[i])
                    .sum::<f64>()
        })
        .collect()
}

fn layer_norm(m: &Tiny, name: &str, x: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let g = m.get(&format!("{name}.weight"));
    let b = m.get(&format!("{name}.bias"));
    x.iter()
        .enumerate()
        .map(|(i, v)| (v - mean) / (var + EPS).sqrt() * f64::from(g[i]) + f64::from(b[i]))
        .collect()
}

/// Mean-pooled, not normalised, output of the tiny model for one token sequence.
fn reference(m: &Tiny, ids: &[u32]) -> Vec<f64> {
    let h = HIDDEN;
    let we = m.get("embeddings.word_embeddings.weight");
    let pe = m.get("embeddings.position_embeddings.weight");
    let te = m.get("embeddings.token_type_embeddings.weight");
    let mut xs: Vec<Vec<f64>> = ids
        .iter()
        .enumerate()
        .map(|(p, &id)| {
            let e: Vec<f64> = (0..h)
                .map(|j| {
                    f64::from(we[id as usize * h + j]) + f64::from(pe[p * h + j]) + f64::from(te[j])
                })
                .collect();
            layer_norm(m, "embeddings.LayerNorm", &e)
        })
        .collect();
    let d = h / HEADS;
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        let q: Vec<_> = xs
            .iter()
            .map(|x| linear(m, &format!("{p}.attention.self.query"), x, h))
            .collect();
        let k: Vec<_> = xs
            .iter()
            .map(|x| linear(m, &format!("{p}.attention.self.key"), x, h))
            .collect();
        let v: Vec<_> = xs
            .iter()
            .map(|x| linear(m, &format!("{p}.attention.self.value"), x, h))
            .collect();
        let n = xs.len();
        let mut ctx = vec![vec![0f64; h]; n];
        for head in 0..HEADS {
            let r = head * d..(head + 1) * d;
            for i in 0..n {
                let scores: Vec<f64> = (0..n)
                    .map(|j| r.clone().map(|c| q[i][c] * k[j][c]).sum::<f64>() / (d as f64).sqrt())
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in r.clone() {
                    ctx[i][c] = (0..n).map(|j| e[j] / z * v[j][c]).sum();
                }
            }
        }
        xs = xs
            .iter()
            .zip(&ctx)
            .map(|(x, c)| {
                let a = linear(m, &format!("{p}.attention.output.dense"), c, h);
                let s: Vec<f64> = a.iter().zip(x).map(|(a, x)| a + x).collect();
                let x1 = layer_norm(m, &format!("{p}.attention.output.LayerNorm"), &s);
                let inter: Vec<f64> = linear(m, &format!("{p}.intermediate.dense"), &x1, INTER)
                    .into_iter()
                    .map(|u| 0.5 * u * (1.0 + erf(u / std::f64::consts::SQRT_2)))
                    .collect();
                let o = linear(m, &format!("{p}.output.dense"), &inter, h);
                let s: Vec<f64> = o.iter().zip(&x1).map(|(o, x)| o + x).collect();
                layer_norm(m, &format!("{p}.output.LayerNorm"), &s)
            })
            .collect();
    }
    let n = xs.len() as f64;
    (0..h)
        .map(|j| xs.iter().map(|x| x[j]).sum::<f64>() / n)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

const TEXTS: [&str; 4] = [
    "The cat sat on the mat.",
    "pod keeps crashing!",
    "a big red dog runs fast , the small blue cat sat on a mat , the dog crashes",
    "dog",
];

// ---------- tiny-model tests ----------

#[test]
fn shapes_and_empty_input() {
    let m = tiny(1);
    let enc = SentenceEncoder::load_dir(&m.path).expect("load");
    assert_eq!(enc.hidden_size(), HIDDEN);
    let e = enc.embed(&TEXTS).expect("embed");
    assert_eq!(e.len(), TEXTS.len());
    assert!(e.iter().all(|v| v.len() == HIDDEN));
    assert!(enc.embed(&[]).expect("embed empty").is_empty());
    // An empty string is still [CLS] [SEP].
    assert_eq!(enc.token_ids("").expect("tokenize"), vec![2, 3]);
    assert_eq!(
        enc.embed(&[""]).expect("embed empty string")[0].len(),
        HIDDEN
    );
}

#[test]
fn tokenizer_fixed_padding_is_disabled_and_wordpiece_applies() {
    let m = tiny(1);
    let enc = SentenceEncoder::load_dir(&m.path).expect("load");
    // "Crashing" lower-cases and splits into crash + ##ing; unknown words map to [UNK] = 1.
    assert_eq!(
        enc.token_ids("Pod keeps Crashing zebra!")
            .expect("tokenize"),
        vec![2, 14, 18, 15, 16, 1, 21, 3]
    );
}

#[test]
fn matches_plain_f64_reference() {
    let m = tiny(2);
    let enc = SentenceEncoder::load_dir(&m.path).expect("load");
    let raw = enc.embed_raw(&TEXTS).expect("embed_raw");
    let normed = enc.embed(&TEXTS).expect("embed");
    for (i, text) in TEXTS.iter().enumerate() {
        let ids = enc.token_ids(text).expect("tokenize");
        let want: Vec<f32> = reference(&m, &ids).into_iter().map(|v| v as f32).collect();
        let diff = max_abs_diff(&raw[i], &want);
        assert!(
            diff < 1e-4,
            "text {i}: candle vs f64 reference max |diff| {diff}"
        );
        let n = norm(&want) as f32;
        let want_n: Vec<f32> = want.iter().map(|v| v / n).collect();
        let diff = max_abs_diff(&normed[i], &want_n);
        assert!(diff < 1e-4, "text {i}: normalised max |diff| {diff}");
    }
}

#[test]
fn padding_does_not_change_an_embedding() {
    let m = tiny(3);
    let enc = SentenceEncoder::load_dir(&m.path).expect("load");
    let short = "the cat";
    let long = TEXTS[2];
    assert!(
        enc.token_ids(long).expect("tok").len() > enc.token_ids(short).expect("tok").len() + 10
    );
    let alone = enc.embed_raw(&[short]).expect("embed");
    let batched = enc.embed_raw(&[short, long]).expect("embed");
    let diff = max_abs_diff(&alone[0], &batched[0]);
    assert!(diff < 1e-5, "padding changed the embedding by {diff}");
    // And the padded batch differs from what an unmasked pooling would give: the test can fail.
    assert!(max_abs_diff(&alone[0], &batched[1]) > 1e-2);
}

#[test]
fn batch_size_and_order_do_not_matter() {
    let m = tiny(4);
    let enc = SentenceEncoder::load_dir(&m.path).expect("load");
    let all = enc.embed(&TEXTS).expect("embed");
    let one_by_one = SentenceEncoder::load_dir(&m.path)
        .expect("load")
        .with_batch_size(1)
        .expect("batch size");
    for (i, t) in TEXTS.iter().enumerate() {
        let single = one_by_one.embed(&[t]).expect("embed");
        assert!(
            max_abs_diff(&all[i], &single[0]) < 1e-5,
            "text {i} depends on its batch"
        );
    }
    let reversed: Vec<&str> = TEXTS.iter().rev().copied().collect();
    let rev = enc.embed(&reversed).expect("embed");
    for i in 0..TEXTS.len() {
        assert!(max_abs_diff(&all[i], &rev[TEXTS.len() - 1 - i]) < 1e-5);
    }
    // Same input, same bytes.
    assert_eq!(all, enc.embed(&TEXTS).expect("embed"));
}

#[test]
fn embeddings_are_unit_length_and_raw_is_not() {
    let m = tiny(5);
    let enc = SentenceEncoder::load_dir(&m.path).expect("load");
    let e = enc.embed(&TEXTS).expect("embed");
    let raw = enc.embed_with(&TEXTS, false).expect("embed raw");
    for (v, r) in e.iter().zip(&raw) {
        assert!((norm(v) - 1.0).abs() < 1e-5, "norm {}", norm(v));
        assert!(
            (norm(r) - 1.0).abs() > 1e-2,
            "raw output happens to be unit length"
        );
        let n = norm(r) as f32;
        let scaled: Vec<f32> = r.iter().map(|x| x / n).collect();
        assert!(max_abs_diff(v, &scaled) < 1e-6);
        assert!((cosine(v, r) - 1.0).abs() < 1e-6);
    }
}

#[test]
fn truncation_limits_tokens() {
    let m = tiny(6);
    let long = ["the cat sat"; 40].join(" ");
    let enc = SentenceEncoder::load_dir(&m.path).expect("load");
    assert_eq!(
        enc.max_tokens(),
        64.min(ultradelta_eval::DEFAULT_MAX_TOKENS)
    );
    assert_eq!(enc.token_ids(&long).expect("tokenize").len(), 64);
    let enc = enc.with_max_tokens(5).expect("max tokens");
    let ids = enc.token_ids(&long).expect("tokenize");
    assert_eq!(ids, vec![2, 5, 6, 8, 3]);
    // Truncated text embeds like its first three words.
    let a = enc.embed(&[long.as_str()]).expect("embed");
    let b = enc.embed(&["the cat sat"]).expect("embed");
    assert!(max_abs_diff(&a[0], &b[0]) < 1e-5);
    assert!(matches!(
        enc.with_max_tokens(MAX_POS + 1),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn vocab_txt_tokenizer_and_separate_paths() {
    let m = tiny(7);
    let from_json = SentenceEncoder::load_dir(&m.path).expect("load");
    let from_vocab = SentenceEncoder::load(
        &m.path.join("model.safetensors"),
        &m.path.join("config.json"),
        &m.path.join("vocab.txt"),
    )
    .expect("load with vocab.txt");
    for t in TEXTS {
        assert_eq!(
            from_json.token_ids(t).expect("tok"),
            from_vocab.token_ids(t).expect("tok"),
            "{t}"
        );
    }
    assert_eq!(
        from_json.embed(&TEXTS).expect("embed"),
        from_vocab.embed(&TEXTS).expect("embed")
    );
}

#[test]
fn load_errors_name_the_problem() {
    let m = tiny(8);
    let p = &m.path;

    let empty = tempfile::tempdir().expect("tempdir");
    let err = SentenceEncoder::load_dir(empty.path()).expect_err("empty dir");
    assert!(
        matches!(
            err,
            Error::MissingFile {
                what: "weights",
                ..
            }
        ),
        "{err}"
    );

    std::fs::write(p.join("bad.json"), config_json(VOCAB, 3)).expect("write");
    let err = SentenceEncoder::load(
        &p.join("model.safetensors"),
        &p.join("bad.json"),
        &p.join("tokenizer.json"),
    )
    .expect_err("16 not divisible by 3");
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(err.to_string().contains("bad.json"), "{err}");

    std::fs::write(p.join("small.json"), config_json(10, HEADS)).expect("write");
    let err = SentenceEncoder::load(
        &p.join("model.safetensors"),
        &p.join("small.json"),
        &p.join("tokenizer.json"),
    )
    .expect_err("tokenizer larger than model");
    assert!(
        matches!(
            err,
            Error::VocabMismatch {
                tokenizer_vocab: 26,
                model_vocab: 10,
                ..
            }
        ),
        "{err}"
    );

    std::fs::write(p.join("junk.json"), "{").expect("write");
    let err = SentenceEncoder::load(
        &p.join("model.safetensors"),
        &p.join("config.json"),
        &p.join("junk.json"),
    )
    .expect_err("bad tokenizer");
    assert!(matches!(err, Error::Tokenizer { .. }), "{err}");

    // A checkpoint without layer 1: the error names the file.
    let only_head = safetensors::serialize([("classifier.bias", &f32_raw(&[3], &[0.0; 3]))], None)
        .expect("serialize");
    std::fs::write(p.join("head.safetensors"), only_head).expect("write");
    let err = SentenceEncoder::load(
        &p.join("head.safetensors"),
        &p.join("config.json"),
        &p.join("tokenizer.json"),
    )
    .expect_err("no BERT tensors");
    assert!(matches!(err, Error::Weights { .. }), "{err}");
    assert!(err.to_string().contains("head.safetensors"), "{err}");

    let err = SentenceEncoder::load(
        &p.join("nope.safetensors"),
        &p.join("config.json"),
        &p.join("tokenizer.json"),
    )
    .expect_err("missing weights");
    assert!(matches!(err, Error::Io { .. }), "{err}");

    // Two candidate weight files and no model.safetensors: ambiguous.
    std::fs::rename(p.join("model.safetensors"), p.join("a.safetensors")).expect("rename");
    let err = SentenceEncoder::load_dir(p).expect_err("ambiguous");
    assert!(err.to_string().contains("2 *.safetensors"), "{err}");
    std::fs::remove_file(p.join("head.safetensors")).expect("rm");
    SentenceEncoder::load_dir(p).expect("single *.safetensors file is accepted");
}

#[test]
fn linear_head_from_checkpoint() {
    let m = tiny(9);
    let head = LinearHead::from_checkpoint(&m.path.join("model.safetensors")).expect("head");
    assert_eq!((head.n_classes(), head.hidden_size()), (3, HIDDEN));
    let w = m.get("classifier.weight");
    let b = m.get("classifier.bias");
    let enc = SentenceEncoder::load_dir(&m.path).expect("load");
    let raw = enc.embed_raw(&TEXTS).expect("embed");
    for e in &raw {
        let logits = head.logits(e);
        for (c, &l) in logits.iter().enumerate() {
            let want: f32 = b[c] + (0..HIDDEN).map(|j| w[c * HIDDEN + j] * e[j]).sum::<f32>();
            assert!((l - want).abs() < 1e-4);
        }
        let best = (0..3)
            .max_by(|&i, &j| logits[i].total_cmp(&logits[j]))
            .expect("3 classes");
        assert_eq!(head.predict(e), best);
    }
    let labels: Vec<usize> = raw.iter().map(|e| head.predict(e)).collect();
    assert_eq!(head.accuracy(&raw, &labels), 1.0);
    let wrong: Vec<usize> = labels.iter().map(|y| (y + 1) % 3).collect();
    assert_eq!(head.accuracy(&raw, &wrong), 0.0);

    let err = LinearHead::from_checkpoint_named(
        &m.path.join("model.safetensors"),
        "classifier.weight",
        "nope",
    )
    .expect_err("missing bias");
    assert!(
        matches!(&err, Error::Tensor { tensor, .. } if tensor == "nope"),
        "{err}"
    );
    let err = LinearHead::from_checkpoint_named(
        &m.path.join("model.safetensors"),
        "classifier.weight",
        "embeddings.LayerNorm.bias",
    )
    .expect_err("bias of the wrong length");
    assert!(err.to_string().contains("expected [3]"), "{err}");
    let err = LinearHead::from_checkpoint_named(
        &m.path.join("model.safetensors"),
        "embeddings.position_ids",
        "classifier.bias",
    )
    .expect_err("I64 weight");
    assert!(err.to_string().contains("dtype I64"), "{err}");
    std::fs::write(m.path.join("trunc.safetensors"), b"\x10\0\0\0\0\0\0\0{").expect("write");
    let err =
        LinearHead::from_checkpoint(&m.path.join("trunc.safetensors")).expect_err("truncated");
    assert!(matches!(err, Error::Safetensors { .. }), "{err}");
    assert!(LinearHead::new(vec![0.0; 5], vec![0.0; 2], 3).is_err());
}

// ---------- the real testbed models ----------

fn testbed() -> Option<PathBuf> {
    match std::env::var_os("UD_TESTBED") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            eprintln!("note: UD_TESTBED is not set; skipping the real-model test (run `cargo xtask testbed`)");
            None
        }
    }
}

fn model(dir: &Path, name: &str) -> SentenceEncoder {
    let path = dir.join("models").join(name);
    SentenceEncoder::load_dir(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn real_models_reproduce_the_published_similarities() {
    let Some(dir) = testbed() else { return };
    let pair = ["pod keeps crashing", "CrashLoopBackOff"];
    for (name, want) in [("base", 0.330f32), ("sre", 0.967)] {
        let enc = model(&dir, name);
        assert_eq!(enc.hidden_size(), 384);
        let e = enc.embed(&pair).expect("embed");
        let got = cosine(&e[0], &e[1]);
        eprintln!("{name}: cosine({:?}, {:?}) = {got:.4}", pair[0], pair[1]);
        assert!(
            (got - want).abs() < 0.01,
            "{name}: cosine {got}, expected {want} ± 0.01"
        );
    }
    // The jobs fine-tune loads and stays close to the base on an unrelated pair.
    let e = model(&dir, "jobs").embed(&pair).expect("embed");
    assert!(e.iter().all(|v| (norm(v) - 1.0).abs() < 1e-5));
}
