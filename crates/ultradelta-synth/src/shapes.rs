//! Model shapes: real Hugging Face tensor names and shapes, and a matching `config.json`.

use std::fmt;
use std::str::FromStr;

use serde_json::json;
use ultradelta_io::DType;

use crate::Error;

/// A model architecture to imitate, with the exact Hugging Face tensor set of the real model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    /// 2-layer BERT-like model (hidden 64, intermediate 256, vocab 1000, 4 heads) for fast tests.
    Tiny,
    /// Exactly all-MiniLM-L6-v2's tensor set (BERT, 6 layers, hidden 384, 22,713,216 parameters).
    BertMini,
    /// BERT-base (12 layers, hidden 768, intermediate 3072), `BertModel` naming (no `bert.` prefix).
    BertBase,
    /// TinyLlama-1.1B (22 layers, hidden 2048, intermediate 5632, 32 heads, 4 KV heads).
    Llama1b,
    /// LLaMA-2-7B (32 layers, hidden 4096, intermediate 11008).
    Llama7b,
    /// LLaMA-2-13B (40 layers, hidden 5120, intermediate 13824).
    Llama13b,
}

impl Shape {
    /// Every shape, smallest first.
    pub const ALL: [Shape; 6] = [
        Shape::Tiny,
        Shape::BertMini,
        Shape::BertBase,
        Shape::Llama1b,
        Shape::Llama7b,
        Shape::Llama13b,
    ];

    /// The command-line name (`tiny`, `bert-mini`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Shape::Tiny => "tiny",
            Shape::BertMini => "bert-mini",
            Shape::BertBase => "bert-base",
            Shape::Llama1b => "llama-1b",
            Shape::Llama7b => "llama-7b",
            Shape::Llama13b => "llama-13b",
        }
    }

    /// The architecture hyper-parameters of this shape.
    pub fn arch(self) -> Arch {
        match self {
            Shape::Tiny => Arch::Bert(BertDims {
                layers: 2,
                hidden: 64,
                heads: 4,
                intermediate: 256,
                vocab: 1000,
                max_positions: 128,
                type_vocab: 2,
            }),
            Shape::BertMini => Arch::Bert(BertDims {
                layers: 6,
                hidden: 384,
                heads: 12,
                intermediate: 1536,
                vocab: 30522,
                max_positions: 512,
                type_vocab: 2,
            }),
            Shape::BertBase => Arch::Bert(BertDims {
                layers: 12,
                hidden: 768,
                heads: 12,
                intermediate: 3072,
                vocab: 30522,
                max_positions: 512,
                type_vocab: 2,
            }),
            Shape::Llama1b => Arch::Llama(LlamaDims {
                layers: 22,
                hidden: 2048,
                heads: 32,
                kv_heads: 4,
                intermediate: 5632,
                vocab: 32000,
                max_positions: 2048,
            }),
            Shape::Llama7b => Arch::Llama(LlamaDims {
                layers: 32,
                hidden: 4096,
                heads: 32,
                kv_heads: 32,
                intermediate: 11008,
                vocab: 32000,
                max_positions: 4096,
            }),
            Shape::Llama13b => Arch::Llama(LlamaDims {
                layers: 40,
                hidden: 5120,
                heads: 40,
                kv_heads: 40,
                intermediate: 13824,
                vocab: 32000,
                max_positions: 4096,
            }),
        }
    }

    /// Number of transformer layers.
    pub fn layers(self) -> usize {
        match self.arch() {
            Arch::Bert(d) => d.layers,
            Arch::Llama(d) => d.layers,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Shape {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Shape::ALL
            .into_iter()
            .find(|shape| shape.name() == s)
            .ok_or_else(|| Error::UnknownShape { name: s.to_owned() })
    }
}

/// Architecture family and hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// BERT encoder (`BertModel` tensor names).
    Bert(BertDims),
    /// LLaMA decoder (`LlamaForCausalLM` tensor names).
    Llama(LlamaDims),
}

/// BERT hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BertDims {
    /// Encoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward size.
    pub intermediate: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Maximum sequence length (`max_position_embeddings`).
    pub max_positions: usize,
    /// Token-type vocabulary size.
    pub type_vocab: usize,
}

/// LLaMA hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LlamaDims {
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when smaller than `heads`).
    pub kv_heads: usize,
    /// MLP size.
    pub intermediate: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Maximum sequence length (`max_position_embeddings`).
    pub max_positions: usize,
}

/// What a tensor is, which decides how its base values and delta are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A weight matrix or embedding table: base N(0, 0.02²); delta partly low-rank.
    Weight,
    /// A LayerNorm / RMSNorm scale: base 1 + N(0, 0.02²); small dense delta.
    Norm,
    /// A bias vector: base N(0, 0.01²); small dense delta.
    Bias,
    /// BERT's `embeddings.position_ids` buffer: I64 `0..max_positions`, base checkpoint only.
    PositionIds,
}

/// One tensor of a shape's Hugging Face tensor set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Hugging Face tensor name.
    pub name: String,
    /// Shape in the Hugging Face layout (`[out_features, in_features]` for linear layers).
    pub shape: Vec<usize>,
    /// How its values are drawn.
    pub role: Role,
    /// Transformer layer index, `None` for embeddings, final norm, pooler and LM head.
    pub layer: Option<usize>,
}

impl TensorSpec {
    fn new(name: String, shape: Vec<usize>, role: Role, layer: Option<usize>) -> Self {
        TensorSpec {
            name,
            shape,
            role,
            layer,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

fn role_of(name: &str) -> Role {
    if name.ends_with(".bias") {
        Role::Bias
    } else if name.ends_with("LayerNorm.weight")
        || name.ends_with("layernorm.weight")
        || name.ends_with("norm.weight")
    {
        Role::Norm
    } else {
        Role::Weight
    }
}

fn push(out: &mut Vec<TensorSpec>, name: String, shape: Vec<usize>, layer: Option<usize>) {
    let role = role_of(&name);
    out.push(TensorSpec::new(name, shape, role, layer));
}

/// Every tensor of `shape`'s base checkpoint, in model order, with its role and layer.
pub fn detailed_specs(shape: Shape) -> Vec<TensorSpec> {
    let mut out = Vec::new();
    match shape.arch() {
        Arch::Bert(d) => {
            let h = d.hidden;
            push(
                &mut out,
                "embeddings.word_embeddings.weight".into(),
                vec![d.vocab, h],
                None,
            );
            push(
                &mut out,
                "embeddings.position_embeddings.weight".into(),
                vec![d.max_positions, h],
                None,
            );
            push(
                &mut out,
                "embeddings.token_type_embeddings.weight".into(),
                vec![d.type_vocab, h],
                None,
            );
            push(
                &mut out,
                "embeddings.LayerNorm.weight".into(),
                vec![h],
                None,
            );
            push(&mut out, "embeddings.LayerNorm.bias".into(), vec![h], None);
            out.push(TensorSpec::new(
                "embeddings.position_ids".into(),
                vec![1, d.max_positions],
                Role::PositionIds,
                None,
            ));
            for l in 0..d.layers {
                let p = format!("encoder.layer.{l}.");
                for m in ["query", "key", "value"] {
                    push(
                        &mut out,
                        format!("{p}attention.self.{m}.weight"),
                        vec![h, h],
                        Some(l),
                    );
                    push(
                        &mut out,
                        format!("{p}attention.self.{m}.bias"),
                        vec![h],
                        Some(l),
                    );
                }
                push(
                    &mut out,
                    format!("{p}attention.output.dense.weight"),
                    vec![h, h],
                    Some(l),
                );
                push(
                    &mut out,
                    format!("{p}attention.output.dense.bias"),
                    vec![h],
                    Some(l),
                );
                push(
                    &mut out,
                    format!("{p}attention.output.LayerNorm.weight"),
                    vec![h],
                    Some(l),
                );
                push(
                    &mut out,
                    format!("{p}attention.output.LayerNorm.bias"),
                    vec![h],
                    Some(l),
                );
                push(
                    &mut out,
                    format!("{p}intermediate.dense.weight"),
                    vec![d.intermediate, h],
                    Some(l),
                );
                push(
                    &mut out,
                    format!("{p}intermediate.dense.bias"),
                    vec![d.intermediate],
                    Some(l),
                );
                push(
                    &mut out,
                    format!("{p}output.dense.weight"),
                    vec![h, d.intermediate],
                    Some(l),
                );
                push(&mut out, format!("{p}output.dense.bias"), vec![h], Some(l));
                push(
                    &mut out,
                    format!("{p}output.LayerNorm.weight"),
                    vec![h],
                    Some(l),
                );
                push(
                    &mut out,
                    format!("{p}output.LayerNorm.bias"),
                    vec![h],
                    Some(l),
                );
            }
            push(&mut out, "pooler.dense.weight".into(), vec![h, h], None);
            push(&mut out, "pooler.dense.bias".into(), vec![h], None);
        }
        Arch::Llama(d) => {
            let h = d.hidden;
            let kv = d.kv_heads * (h / d.heads);
            push(
                &mut out,
                "model.embed_tokens.weight".into(),
                vec![d.vocab, h],
                None,
            );
            for l in 0..d.layers {
                let p = format!("model.layers.{l}.");
                push(
                    &mut out,
                    format!("{p}self_attn.q_proj.weight"),
                    vec![h, h],
                    Some(l),
                );
                push(
                    &mut out,
                    format!("{p}self_attn.k_proj.weight"),
                    vec![kv, h],
                    Some(l),
                );
                push(
                    &mut out,
                    format!("{p}self_attn.v_proj.weight"),
                    vec![kv, h],
                    Some(l),
                );
                push(
                    &mut out,
                    format!("{p}self_attn.o_proj.weight"),
                    vec![h, h],
                    Some(l),
                );
                push(
                    &mut out,
                    format!("{p}mlp.gate_proj.weight"),
                    vec![d.intermediate, h],
                    Some(l),
                );
                push(
                    &mut out,
                    format!("{p}mlp.up_proj.weight"),
                    vec![d.intermediate, h],
                    Some(l),
                );
                push(
                    &mut out,
                    format!("{p}mlp.down_proj.weight"),
                    vec![h, d.intermediate],
                    Some(l),
                );
                push(
                    &mut out,
                    format!("{p}input_layernorm.weight"),
                    vec![h],
                    Some(l),
                );
                push(
                    &mut out,
                    format!("{p}post_attention_layernorm.weight"),
                    vec![h],
                    Some(l),
                );
            }
            push(&mut out, "model.norm.weight".into(), vec![h], None);
            push(&mut out, "lm_head.weight".into(), vec![d.vocab, h], None);
        }
    }
    out
}

/// Real Hugging Face names and shapes of `shape`'s base checkpoint, in model order
/// (for BERT shapes this includes the I64 `embeddings.position_ids` buffer, which the
/// fine-tuned checkpoint lacks, like the real all-MiniLM-L6-v2 fine-tunes).
pub fn tensor_specs(shape: Shape) -> Vec<(String, Vec<usize>)> {
    detailed_specs(shape)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect()
}

/// Number of trainable parameters (every tensor except `embeddings.position_ids`).
pub fn parameter_count(shape: Shape) -> u64 {
    detailed_specs(shape)
        .iter()
        .filter(|s| s.role != Role::PositionIds)
        .map(|s| s.numel() as u64)
        .sum()
}

/// `torch_dtype` string of a float dtype.
fn torch_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F64 => "float64",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// The `config.json` a Hugging Face checkpoint of `shape` stored as `dtype` carries.
pub fn config_json(shape: Shape, dtype: DType) -> serde_json::Value {
    match shape.arch() {
        Arch::Bert(d) => json!({
            "architectures": ["BertModel"],
            "model_type": "bert",
            "attention_probs_dropout_prob": 0.1,
            "classifier_dropout": null,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": d.hidden,
            "initializer_range": 0.02,
            "intermediate_size": d.intermediate,
            "layer_norm_eps": 1e-12,
            "max_position_embeddings": d.max_positions,
            "num_attention_heads": d.heads,
            "num_hidden_layers": d.layers,
            "pad_token_id": 0,
            "position_embedding_type": "absolute",
            "torch_dtype": torch_dtype(dtype),
            "type_vocab_size": d.type_vocab,
            "use_cache": true,
            "vocab_size": d.vocab,
            "ultradelta_synthetic": shape.name(),
        }),
        Arch::Llama(d) => json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": false,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": d.hidden,
            "initializer_range": 0.02,
            "intermediate_size": d.intermediate,
            "max_position_embeddings": d.max_positions,
            "num_attention_heads": d.heads,
            "num_hidden_layers": d.layers,
            "num_key_value_heads": d.kv_heads,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-5,
            "rope_scaling": null,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "torch_dtype": torch_dtype(dtype),
            "use_cache": true,
            "vocab_size": d.vocab,
            "ultradelta_synthetic": shape.name(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Shape::ALL {
            assert_eq!(s.name().parse::<Shape>().unwrap(), s);
            assert_eq!(s.to_string(), s.name());
        }
        let err = "llama-70b".parse::<Shape>().unwrap_err().to_string();
        assert!(
            err.contains("llama-70b") && err.contains("bert-mini"),
            "{err}"
        );
    }

    #[test]
    fn bert_mini_is_all_minilm_l6_v2() {
        assert_eq!(parameter_count(Shape::BertMini), 22_713_216);
        let specs = tensor_specs(Shape::BertMini);
        // 5 embedding tensors + position_ids + 6 layers x 16 + pooler weight and bias.
        assert_eq!(specs.len(), 6 + 6 * 16 + 2);
        let get = |n: &str| {
            specs
                .iter()
                .find(|(name, _)| name == n)
                .map(|(_, s)| s.clone())
        };
        assert_eq!(
            get("embeddings.word_embeddings.weight"),
            Some(vec![30522, 384])
        );
        assert_eq!(
            get("embeddings.position_embeddings.weight"),
            Some(vec![512, 384])
        );
        assert_eq!(
            get("embeddings.token_type_embeddings.weight"),
            Some(vec![2, 384])
        );
        assert_eq!(get("embeddings.position_ids"), Some(vec![1, 512]));
        assert_eq!(
            get("encoder.layer.5.attention.self.query.weight"),
            Some(vec![384, 384])
        );
        assert_eq!(
            get("encoder.layer.0.intermediate.dense.weight"),
            Some(vec![1536, 384])
        );
        assert_eq!(
            get("encoder.layer.3.output.dense.weight"),
            Some(vec![384, 1536])
        );
        assert_eq!(
            get("encoder.layer.2.output.LayerNorm.bias"),
            Some(vec![384])
        );
        assert_eq!(get("pooler.dense.weight"), Some(vec![384, 384]));
        assert_eq!(get("encoder.layer.6.output.dense.weight"), None);
    }

    #[test]
    fn parameter_counts_match_the_real_models() {
        // tiny: embeddings 1000*64 + 128*64 + 2*64 + 128; per layer 4*(64*64+64) + 256*64 + 256 + 64*256 + 64 + 4*64.
        let layer = 4 * (64 * 64 + 64) + 256 * 64 + 256 + 64 * 256 + 64 + 4 * 64;
        assert_eq!(
            parameter_count(Shape::Tiny),
            (1000 * 64 + 128 * 64 + 2 * 64 + 128 + 2 * layer + 64 * 64 + 64) as u64
        );
        assert_eq!(parameter_count(Shape::BertBase), 109_482_240); // bert-base-uncased BertModel
        assert_eq!(parameter_count(Shape::Llama1b), 1_100_048_384); // TinyLlama-1.1B
        assert_eq!(parameter_count(Shape::Llama7b), 6_738_415_616); // Llama-2-7b-hf
        assert_eq!(parameter_count(Shape::Llama13b), 13_015_864_320); // Llama-2-13b-hf
    }

    #[test]
    fn llama_names_and_gqa_shapes() {
        let specs = detailed_specs(Shape::Llama1b);
        assert_eq!(specs.len(), 1 + 22 * 9 + 2);
        let get = |n: &str| specs.iter().find(|s| s.name == n).unwrap();
        assert_eq!(
            get("model.layers.21.self_attn.k_proj.weight").shape,
            vec![256, 2048]
        );
        assert_eq!(
            get("model.layers.0.self_attn.q_proj.weight").shape,
            vec![2048, 2048]
        );
        assert_eq!(
            get("model.layers.0.mlp.down_proj.weight").shape,
            vec![2048, 5632]
        );
        assert_eq!(
            get("model.layers.0.input_layernorm.weight").role,
            Role::Norm
        );
        assert_eq!(get("model.norm.weight").role, Role::Norm);
        assert_eq!(get("lm_head.weight").shape, vec![32000, 2048]);
        assert!(specs.iter().all(|s| s.role != Role::PositionIds));
        let seven = detailed_specs(Shape::Llama7b);
        assert_eq!(
            seven
                .iter()
                .find(|s| s.name == "model.layers.31.self_attn.v_proj.weight")
                .unwrap()
                .shape,
            vec![4096, 4096]
        );
    }

    #[test]
    fn roles_follow_names() {
        assert_eq!(role_of("embeddings.LayerNorm.weight"), Role::Norm);
        assert_eq!(
            role_of("encoder.layer.0.attention.output.LayerNorm.bias"),
            Role::Bias
        );
        assert_eq!(
            role_of("model.layers.3.post_attention_layernorm.weight"),
            Role::Norm
        );
        assert_eq!(role_of("pooler.dense.weight"), Role::Weight);
    }

    #[test]
    fn config_has_model_type_and_dims() {
        let c = config_json(Shape::BertMini, DType::F32);
        assert_eq!(c["model_type"], "bert");
        assert_eq!(c["hidden_size"], 384);
        assert_eq!(c["torch_dtype"], "float32");
        let c = config_json(Shape::Llama1b, DType::BF16);
        assert_eq!(c["model_type"], "llama");
        assert_eq!(c["num_key_value_heads"], 4);
        assert_eq!(c["torch_dtype"], "bfloat16");
    }
}
