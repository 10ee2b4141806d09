//! Tests of the LLaMA path on a tiny random checkpoint built here: the forward pass against candle-transformers'
//! LLaMA, the KV cache against a full pass, perplexity of a uniform model, and a GGUF round trip through
//! llama.cpp's rotary permutation (with and without undoing it).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use ultradelta_eval::gguf::{convert_gguf, permute_rows, ConvertOptions};
use ultradelta_eval::llama::{CausalLm, KvCache};

const HIDDEN: usize = 32;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const LAYERS: usize = 2;
const FFN: usize = 48;
const MAX_POS: usize = 64;
const EPS: f64 = 1e-5;
const THETA: f64 = 10_000.0;

/// The tokenizer of the tiny model: 3 control tokens, the 256 byte-level symbols, no merges.
fn tokens() -> Vec<String> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut t: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut n = 0;
    for b in 0u8..=255 {
        if printable(b) {
            t.push(char::from(b).to_string());
        } else {
            t.push(char::from_u32(256 + n).expect("char").to_string());
            n += 1;
        }
    }
    t
}

fn vocab() -> usize {
    tokens().len()
}

/// Hugging Face-layout f32 tensors of a random tiny LLaMA (tied embeddings), values on the bf16 grid so that a
/// bf16 round trip is exact. `zero` gives an all-zero model (uniform predictions).
fn weights(seed: u64, zero: bool) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut t = HashMap::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, ones: bool| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                if zero {
                    return 0.0;
                }
                let u = (rng.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0;
                let x = if ones { 1.0 + 0.2 * u } else { scale * u };
                half::bf16::from_f32(x).to_f32()
            })
            .collect();
        t.insert(name, (shape, v));
    };
    let kv = KV_HEADS * HIDDEN / HEADS;
    add(
        "model.embed_tokens.weight".into(),
        vec![vocab(), HIDDEN],
        0.5,
        false,
    );
    add("model.norm.weight".into(), vec![HIDDEN], 0.0, true);
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        add(
            format!("{p}.input_layernorm.weight"),
            vec![HIDDEN],
            0.0,
            true,
        );
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![HIDDEN],
            0.0,
            true,
        );
        add(
            format!("{p}.self_attn.q_proj.weight"),
            vec![HIDDEN, HIDDEN],
            0.4,
            false,
        );
        add(
            format!("{p}.self_attn.k_proj.weight"),
            vec![kv, HIDDEN],
            0.4,
            false,
        );
        add(
            format!("{p}.self_attn.v_proj.weight"),
            vec![kv, HIDDEN],
            0.3,
            false,
        );
        add(
            format!("{p}.self_attn.o_proj.weight"),
            vec![HIDDEN, HIDDEN],
            0.3,
            false,
        );
        add(
            format!("{p}.mlp.gate_proj.weight"),
            vec![FFN, HIDDEN],
            0.3,
            false,
        );
        add(
            format!("{p}.mlp.up_proj.weight"),
            vec![FFN, HIDDEN],
            0.3,
            false,
        );
        add(
            format!("{p}.mlp.down_proj.weight"),
            vec![HIDDEN, FFN],
            0.3,
            false,
        );
    }
    t
}

fn config_json() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": vocab(),
        "rms_norm_eps": EPS, "rope_theta": THETA, "max_position_embeddings": MAX_POS,
        "tie_word_embeddings": true, "rope_scaling": null,
    })
}

/// Writes a Hugging Face folder (bf16 safetensors + config.json).
fn write_hf(dir: &Path, w: &HashMap<String, (Vec<usize>, Vec<f32>)>) {
    let dev = Device::Cpu;
    let tensors: HashMap<String, Tensor> = w
        .iter()
        .map(|(k, (s, v))| {
            let t = Tensor::from_vec(v.clone(), s.as_slice(), &dev)
                .and_then(|t| t.to_dtype(DType::BF16))
                .expect("tensor");
            (k.clone(), t)
        })
        .collect();
    std::fs::create_dir_all(dir).expect("mkdir");
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).expect("save");
    std::fs::write(dir.join("config.json"), config_json().to_string()).expect("config");
}

fn logits(model: &CausalLm, ids: &[u32]) -> Vec<Vec<f32>> {
    model
        .forward(ids, &mut KvCache::default())
        .expect("forward")
        .to_vec2()
        .expect("vec")
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const IDS: [u32; 9] = [1, 75, 72, 79, 79, 82, 35, 2, 40];

#[test]
fn forward_matches_candle_transformers_llama() {
    let dir = tempfile::tempdir().expect("tmp");
    write_hf(dir.path(), &weights(7, false));
    let ours = CausalLm::load_dir(dir.path()).expect("load");
    let all = logits(&ours, &IDS);

    use candle_transformers::models::llama as ct;
    let cfg = ct::Config {
        hidden_size: HIDDEN,
        intermediate_size: FFN,
        vocab_size: vocab(),
        num_hidden_layers: LAYERS,
        num_attention_heads: HEADS,
        num_key_value_heads: KV_HEADS,
        use_flash_attn: false,
        rms_norm_eps: EPS,
        rope_theta: THETA as f32,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: None,
        max_position_embeddings: MAX_POS,
        tie_word_embeddings: true,
    };
    let dev = Device::Cpu;
    let ts =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &dev).expect("load");
    let vb = candle_nn::VarBuilder::from_tensors(ts, DType::F32, &dev);
    let theirs = ct::Llama::load(vb, &cfg).expect("candle-transformers llama");
    for n in [1, 4, IDS.len()] {
        let mut cache = ct::Cache::new(false, DType::F32, &cfg, &dev).expect("cache");
        let input = Tensor::new(&IDS[..n], &dev)
            .and_then(|t| t.unsqueeze(0))
            .expect("ids");
        let last: Vec<f32> = theirs
            .forward(&input, 0, &mut cache)
            .and_then(|t| t.squeeze(0))
            .and_then(|t| t.to_vec1())
            .expect("forward");
        // Our logits of the first n positions end with the same last row (causal model).
        let d = max_diff(&[last], &[all[n - 1].clone()]);
        assert!(d < 1e-4, "position {}: max abs diff {d}", n - 1);
    }
}

#[test]
fn kv_cache_matches_a_full_pass_and_greedy_is_deterministic() {
    let dir = tempfile::tempdir().expect("tmp");
    write_hf(dir.path(), &weights(11, false));
    let m = CausalLm::load_dir(dir.path()).expect("load");
    let full = logits(&m, &IDS);
    let mut cache = KvCache::default();
    let mut rows: Vec<Vec<f32>> = m
        .forward(&IDS[..5], &mut cache)
        .expect("first part")
        .to_vec2()
        .expect("vec");
    for &id in &IDS[5..] {
        rows.extend(
            m.forward(&[id], &mut cache)
                .expect("step")
                .to_vec2::<f32>()
                .expect("vec"),
        );
    }
    assert_eq!(cache.len(), IDS.len());
    assert!(max_diff(&full, &rows) < 1e-4);
    let a = m.generate_greedy(&IDS[..3], 10, &[]).expect("generate");
    assert_eq!(a.len(), 10);
    assert_eq!(a, m.generate_greedy(&IDS[..3], 10, &[]).expect("generate"));
    // Greedy token i+1 is the argmax of the logits after the prompt and tokens 0..=i.
    let mut seq = IDS[..3].to_vec();
    seq.extend(&a[..4]);
    let l = logits(&m, &seq);
    assert_eq!(ultradelta_eval::argmax(&l[seq.len() - 1]) as u32, a[4]);
}

#[test]
fn uniform_model_has_vocabulary_perplexity() {
    let dir = tempfile::tempdir().expect("tmp");
    write_hf(dir.path(), &weights(0, true));
    let m = CausalLm::load_dir(dir.path()).expect("load");
    let nll = m.token_nll(&IDS).expect("nll");
    assert_eq!(nll.len(), IDS.len() - 1);
    let ppl = ultradelta_eval::llama::perplexity(nll.iter().sum(), nll.len());
    assert!(
        (ppl - vocab() as f64).abs() < 1e-6 * vocab() as f64,
        "{ppl}"
    );
}

#[test]
fn load_errors_name_the_file_and_tensor() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut w = weights(3, false);
    w.remove("model.layers.1.mlp.up_proj.weight");
    write_hf(dir.path(), &w);
    let e = CausalLm::load_dir(dir.path())
        .expect_err("missing tensor")
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
}

/// A GGUF of the tiny model as llama.cpp writes it: llama.cpp names, Q and K rows permuted, tokenizer and chat
/// template in the metadata; the token embedding in Q8_0, the rest in F32.
fn write_gguf(path: &Path, w: &HashMap<String, (Vec<usize>, Vec<f32>)>) {
    let dev = Device::Cpu;
    let gguf_name = |hf: &str| -> String {
        if hf == "model.embed_tokens.weight" {
            return "token_embd.weight".into();
        }
        if hf == "model.norm.weight" {
            return "output_norm.weight".into();
        }
        let rest = hf.strip_prefix("model.layers.").expect("layer");
        let (l, part) = rest.split_once('.').expect("part");
        let g = match part {
            "input_layernorm.weight" => "attn_norm",
            "post_attention_layernorm.weight" => "ffn_norm",
            "self_attn.q_proj.weight" => "attn_q",
            "self_attn.k_proj.weight" => "attn_k",
            "self_attn.v_proj.weight" => "attn_v",
            "self_attn.o_proj.weight" => "attn_output",
            "mlp.gate_proj.weight" => "ffn_gate",
            "mlp.up_proj.weight" => "ffn_up",
            "mlp.down_proj.weight" => "ffn_down",
            other => panic!("{other}"),
        };
        format!("blk.{l}.{g}.weight")
    };
    let mut qs: Vec<(String, QTensor)> = Vec::new();
    let mut names: Vec<&String> = w.keys().collect();
    names.sort();
    for hf in names {
        let (shape, v) = &w[hf];
        let v = if hf.ends_with("q_proj.weight") {
            permute_rows(v, shape[0], shape[1], HEADS)
        } else if hf.ends_with("k_proj.weight") {
            permute_rows(v, shape[0], shape[1], KV_HEADS)
        } else {
            v.clone()
        };
        let t = Tensor::from_vec(v, shape.as_slice(), &dev).expect("tensor");
        let dt = if hf == "model.embed_tokens.weight" {
            GgmlDType::Q8_0
        } else {
            GgmlDType::F32
        };
        qs.push((gguf_name(hf), QTensor::quantize(&t, dt).expect("quantize")));
    }
    let toks = tokens();
    let mut types = vec![Value::I32(3); 3];
    types.extend(std::iter::repeat_n(Value::I32(1), toks.len() - 3));
    let template = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("tiny".into())),
        ("llama.block_count", Value::U32(LAYERS as u32)),
        ("llama.context_length", Value::U32(MAX_POS as u32)),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.attention.head_count", Value::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", Value::U32(KV_HEADS as u32)),
        ("llama.rope.freq_base", Value::F32(THETA as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(EPS as f32),
        ),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(toks.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(vec![])),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.padding_token_id", Value::U32(2)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.chat_template", Value::String(template.into())),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = qs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).expect("create gguf");
    gguf_file::write(&mut f, &meta_refs, &q_refs).expect("write gguf");
}

#[test]
fn gguf_conversion_undoes_the_rotary_permutation() {
    let dir = tempfile::tempdir().expect("tmp");
    let w = weights(5, false);
    write_hf(&dir.path().join("hf"), &w);
    let gguf = dir.path().join("tiny.gguf");
    write_gguf(&gguf, &w);

    let out = dir.path().join("converted");
    let s = convert_gguf(&gguf, &out, ConvertOptions::default()).expect("convert");
    assert_eq!(s.tensors, w.len());
    assert_eq!(s.source_types.get("Q8_0"), Some(&1));
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // Every tensor but the Q8_0 embedding comes back exactly.
    let conv =
        candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).expect("load");
    assert!(!conv.contains_key("lm_head.weight"));
    for (name, (_, v)) in &w {
        let got: Vec<f32> = conv[name]
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("tensor");
        let tol = if name == "model.embed_tokens.weight" {
            0.01
        } else {
            0.0
        };
        let d = got
            .iter()
            .zip(v)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d <= tol, "{name}: max abs diff {d}");
    }
    let reference = logits(
        &CausalLm::load_dir(&dir.path().join("hf")).expect("hf"),
        &IDS,
    );
    let converted = logits(&CausalLm::load_dir(&out).expect("converted"), &IDS);
    let good = max_diff(&reference, &converted);
    // Only the Q8_0 rounding of the (tied) embedding separates the two.
    assert!(good < 0.25, "converted model: max abs logit diff {good}");

    // Skipping the un-permutation gives another model.
    let wrong = dir.path().join("wrong");
    convert_gguf(
        &gguf,
        &wrong,
        ConvertOptions {
            keep_rope_permutation: true,
        },
    )
    .expect("convert");
    let bad = max_diff(
        &reference,
        &logits(&CausalLm::load_dir(&wrong).expect("wrong"), &IDS),
    );
    assert!(bad > 4.0 * good, "kept permutation: diff {bad} vs {good}");
    eprintln!("max abs logit diff: converted {good}, permutation kept {bad}");

    // The tokenizer and the chat template work together.
    let tok = ultradelta_eval::llama::load_tokenizer(&out).expect("tokenizer");
    let chat = ultradelta_eval::chat::ChatFormat::from_dir(&out).expect("chat");
    assert_eq!(chat.system.as_deref(), Some("Be brief."));
    let pair = ultradelta_eval::chat::tokenize_pair(&tok, &chat, "Hi", "Yo", 64)
        .expect("tokenize")
        .expect("fits");
    assert_eq!(pair.ids[0], 1);
    assert_eq!(*pair.ids.last().expect("ids"), 2);
    // Byte-level symbols have id 3 + byte: "Y" (89), "o" (111), then <|im_end|>.
    assert_eq!(&pair.ids[pair.prompt_len..], &[92, 114, 2]);
    // Conversion is deterministic.
    let again = dir.path().join("again");
    convert_gguf(&gguf, &again, ConvertOptions::default()).expect("convert");
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).expect("read"),
        std::fs::read(again.join("model.safetensors")).expect("read")
    );
}

/// The `perplexity` subcommand on a tiny testbed: retention 1 and no drift for a model identical to the
/// fine-tune, the same numbers from the cache.
#[cfg(feature = "cli")]
#[test]
fn perplexity_subcommand_reports_retention_and_drift() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path();
    write_hf(&root.join("base"), &weights(0, true));
    write_hf(&root.join("ft"), &weights(9, false));
    let data = root.join("llama/data");
    std::fs::create_dir_all(data.join("mood")).expect("mkdir");
    std::fs::create_dir_all(data.join("moby-dick")).expect("mkdir");
    let pairs = [
        serde_json::json!({"ids": [1, 70, 71, 2, 1, 80, 81, 82, 2], "prompt_len": 5}),
        serde_json::json!({"ids": [1, 90, 2, 1, 100, 101, 2], "prompt_len": 4}),
    ];
    let lines: Vec<String> = pairs.iter().map(|p| p.to_string()).collect();
    std::fs::write(data.join("mood/test.jsonl"), lines.join("\n") + "\n").expect("write");
    std::fs::write(
        data.join("moby-dick/heldout.jsonl"),
        serde_json::json!({"chapter": 1, "ids": [40, 41, 42, 43, 44, 45]}).to_string() + "\n",
    )
    .expect("write");
    let run = || -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ultradelta-eval"))
            .arg("perplexity")
            .arg("--testbed")
            .arg(root)
            .args(["--task", "mood", "--model"])
            .arg(root.join("ft"))
            .arg("--finetuned")
            .arg(root.join("ft"))
            .arg("--base")
            .arg(root.join("base"))
            .arg("--cache")
            .arg(root.join("cache"))
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("one JSON object")
    };
    let first = run();
    // 4 + 3 response tokens, 5 general tokens (all but the first).
    assert_eq!(first["response_tokens"], 7);
    assert_eq!(first["general_tokens"], 5);
    assert!((first["retention"].as_f64().expect("retention") - 1.0).abs() < 1e-9);
    assert!((first["general_drift"].as_f64().expect("drift") - 1.0).abs() < 1e-9);
    assert!(
        (first["response_ppl_base"].as_f64().expect("base") - vocab() as f64).abs()
            < 1e-6 * vocab() as f64
    );
    assert!(
        std::fs::read_dir(root.join("cache"))
            .expect("cache")
            .count()
            >= 2
    );
    let second = run();
    for k in [
        "response_ppl",
        "retention",
        "general_drift",
        "response_ppl_base",
        "general_ppl",
    ] {
        assert_eq!(first[k], second[k], "{k}");
    }
}
