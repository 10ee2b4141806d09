//! `ultradelta-eval make-testbed`: the generated testbed has both families, and its tiny LLaMA has the real
//! model's tensor names and runs through `perplexity` and `generate` (the reproduce code path CI exercises).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn eval(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ultradelta-eval"))
        .args(args)
        .output()
        .expect("run ultradelta-eval");
    assert!(
        out.status.success(),
        "ultradelta-eval {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn generated_testbed_has_a_tiny_llama_with_the_real_names() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tb = tmp.path().join("tb");
    let summary = eval(&["make-testbed", "--out", s(&tb)]);
    assert!(tb.join("testbed.json").is_file() && tb.join("llama/testbed.json").is_file());
    assert!(tb.join("models/bbc/model.safetensors").is_file());

    // The converted SmolLM2's tensor names (tied embeddings: no lm_head), for a 2-layer model.
    let base = tb.join("llama/models/base");
    let bytes = std::fs::read(base.join("model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut want = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    for l in 0..2 {
        for t in [
            "input_layernorm",
            "mlp.down_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "post_attention_layernorm",
            "self_attn.k_proj",
            "self_attn.o_proj",
            "self_attn.q_proj",
            "self_attn.v_proj",
        ] {
            want.push(format!("model.layers.{l}.{t}.weight"));
        }
    }
    want.sort();
    assert_eq!(names, want);
    assert!(st
        .tensors()
        .iter()
        .all(|(_, v)| v.dtype() == safetensors::Dtype::BF16));
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(base.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(cfg["tie_word_embeddings"], true);

    // Each fine-tune beats the base on its held-out responses, and the evaluator's references hold.
    for task in ["drunk", "childish", "zen", "scared"] {
        let p = &summary["llama_perplexity"][task];
        assert!(
            p["ppl_finetuned"].as_f64() < p["ppl_base"].as_f64(),
            "{task}: {p}"
        );
    }
    let ft = tb.join("llama/models/zen");
    let ppl = |model: &Path| {
        eval(&[
            "perplexity",
            "--testbed",
            s(&tb),
            "--task",
            "zen",
            "--model",
            s(model),
            "--base",
            s(&base),
            "--finetuned",
            s(&ft),
        ])
    };
    let on_ft = ppl(&ft);
    assert_eq!(on_ft["retention"], 1.0);
    assert_eq!(on_ft["general_drift"], 1.0);
    assert_eq!(ppl(&base)["retention"], 0.0);
    let g = eval(&[
        "generate",
        "--model",
        s(&ft),
        "--prompt",
        "hello",
        "--max-new",
        "4",
    ]);
    assert_eq!(g["continuations"].as_array().map(Vec::len), Some(1));
}

/// `embedding --pairs`: the in-domain measures on the generated testbed's sre fine-tune. The fine-tune itself
/// keeps everything (retention and fidelity 1, its scores equal to the `finetuned.*` references); the base keeps
/// nothing (retention 0, its scores equal to the `base.*` references).
#[test]
fn embedding_reports_indomain_measures() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tb = tmp.path().join("tb");
    eval(&["make-testbed", "--out", s(&tb)]);
    let pairs = ultradelta_eval::indomain_data_dir().join("sre.tsv");
    let (ft, base) = (tb.join("models/sre"), tb.join("models/base"));
    let run = |model: &Path| {
        eval(&[
            "embedding",
            "--testbed",
            s(&tb),
            "--model",
            s(model),
            "--finetuned",
            s(&ft),
            "--base",
            s(&base),
            "--limit",
            "20",
            "--train-per-class",
            "5",
            "--pairs",
            s(&pairs),
        ])
    };
    let n = ultradelta_eval::read_pairs(&pairs).expect("pairs").len();
    let f = run(&ft);
    let i = &f["indomain"];
    assert_eq!(i["pairs"].as_u64(), Some(n as u64));
    assert!(
        (i["retention"].as_f64().unwrap() - 1.0).abs() < 1e-12,
        "{i}"
    );
    assert!((i["fidelity"].as_f64().unwrap() - 1.0).abs() < 1e-6, "{i}");
    for k in ["recall_at_1", "mrr", "pair_cosine"] {
        assert_eq!(i[k], i["finetuned"][k], "{k}: {i}");
    }
    assert!(
        (f["retention"].as_f64().unwrap() - 1.0).abs() < 1e-12,
        "{f}"
    );
    let b = run(&base);
    let i = &b["indomain"];
    assert!(i["retention"].as_f64().unwrap().abs() < 1e-12, "{i}");
    for k in ["recall_at_1", "mrr", "pair_cosine"] {
        assert_eq!(i[k], i["base"][k], "{k}: {i}");
    }
    let g = i["pair_cosine_gain_retention"].as_f64().unwrap();
    assert!(g.abs() < 1e-12, "{i}");
}
