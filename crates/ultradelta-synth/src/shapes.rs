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
    /// roberta-base as on the Hugging Face hub (`RobertaForMaskedLM`: `roberta.` encoder, `lm_head.*`,
    /// decoder tied to the word embeddings; 124,697,433 parameters).
    RobertaBase,
    /// openai/clip-vit-base-patch32 (`CLIPModel`: 12-layer ViT-B/32 vision tower, 12-layer text tower,
    /// both projections and `logit_scale`; 151,277,313 parameters).
    ClipVitB32,
    /// BEiT-3 base in torchscale's naming (`beit3.` prefix, Multiway `A`/`B` experts for every attention
    /// projection, FFN and norm, sub-LN; 220,987,392 parameters).
    Beit3Base,
    /// t5-base (`T5ForConditionalGeneration`: 12 encoder and 12 decoder blocks, relative attention bias in
    /// block 0 of each, `shared` embedding tied to both and to the LM head; 222,903,552 parameters).
    T5Base,
    /// TinyLlama-1.1B (22 layers, hidden 2048, intermediate 5632, 32 heads, 4 KV heads).
    Llama1b,
    /// LLaMA-2-7B (32 layers, hidden 4096, intermediate 11008).
    Llama7b,
    /// LLaMA-2-13B (40 layers, hidden 5120, intermediate 13824).
    Llama13b,
}

impl Shape {
    /// Every shape, smallest first.
    pub const ALL: [Shape; 10] = [
        Shape::Tiny,
        Shape::BertMini,
        Shape::BertBase,
        Shape::RobertaBase,
        Shape::ClipVitB32,
        Shape::Beit3Base,
        Shape::T5Base,
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
            Shape::RobertaBase => "roberta-base",
            Shape::ClipVitB32 => "clip-vit-b32",
            Shape::Beit3Base => "beit3-base",
            Shape::T5Base => "t5-base",
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
            Shape::RobertaBase => Arch::Roberta(BertDims {
                layers: 12,
                hidden: 768,
                heads: 12,
                intermediate: 3072,
                vocab: 50265,
                max_positions: 514,
                type_vocab: 1,
            }),
            Shape::ClipVitB32 => Arch::ClipVit(ClipDims {
                vision_layers: 12,
                vision_hidden: 768,
                vision_heads: 12,
                vision_intermediate: 3072,
                image_size: 224,
                patch_size: 32,
                text_layers: 12,
                text_hidden: 512,
                text_heads: 8,
                text_intermediate: 2048,
                vocab: 49408,
                text_positions: 77,
                projection: 512,
            }),
            Shape::Beit3Base => Arch::Beit3(Beit3Dims {
                layers: 12,
                hidden: 768,
                heads: 12,
                intermediate: 3072,
                vocab: 64010,
                image_size: 224,
                patch_size: 16,
                max_positions: 1024,
            }),
            Shape::T5Base => Arch::T5(T5Dims {
                layers: 12,
                d_model: 768,
                heads: 12,
                d_kv: 64,
                d_ff: 3072,
                vocab: 32128,
                buckets: 32,
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

    /// Number of transformer layers (of the deepest stack: CLIP's towers and T5's encoder and decoder
    /// each have this many).
    pub fn layers(self) -> usize {
        self.arch().layers()
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
    /// RoBERTa encoder with its masked-LM head (`RobertaForMaskedLM` tensor names).
    Roberta(BertDims),
    /// CLIP with a ViT image tower (`CLIPModel` tensor names).
    ClipVit(ClipDims),
    /// BEiT-3 (torchscale's `BEiT3` under `beit3.`, as in Microsoft's released checkpoints).
    Beit3(Beit3Dims),
    /// T5 encoder-decoder (`T5ForConditionalGeneration` tensor names).
    T5(T5Dims),
}

impl Arch {
    /// Layers of the deepest stack.
    pub fn layers(&self) -> usize {
        match self {
            Arch::Bert(d) | Arch::Roberta(d) => d.layers,
            Arch::Llama(d) => d.layers,
            Arch::ClipVit(d) => d.vision_layers.max(d.text_layers),
            Arch::Beit3(d) => d.layers,
            Arch::T5(d) => d.layers,
        }
    }

    /// The same architecture with every stack cut (or grown) to `layers` layers; every tensor of a
    /// layer keeps its real name and shape, only the layer count changes.
    pub fn with_layers(mut self, layers: usize) -> Arch {
        match &mut self {
            Arch::Bert(d) | Arch::Roberta(d) => d.layers = layers,
            Arch::Llama(d) => d.layers = layers,
            Arch::ClipVit(d) => {
                d.vision_layers = layers;
                d.text_layers = layers;
            }
            Arch::Beit3(d) => d.layers = layers,
            Arch::T5(d) => d.layers = layers,
        }
        self
    }
}

/// CLIP hyper-parameters (ViT image tower and text tower).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClipDims {
    /// Vision encoder layers.
    pub vision_layers: usize,
    /// Vision hidden size.
    pub vision_hidden: usize,
    /// Vision attention heads.
    pub vision_heads: usize,
    /// Vision MLP size.
    pub vision_intermediate: usize,
    /// Input image side in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Text encoder layers.
    pub text_layers: usize,
    /// Text hidden size.
    pub text_hidden: usize,
    /// Text attention heads.
    pub text_heads: usize,
    /// Text MLP size.
    pub text_intermediate: usize,
    /// Text vocabulary size.
    pub vocab: usize,
    /// Text positions.
    pub text_positions: usize,
    /// Shared embedding size of both projections.
    pub projection: usize,
}

/// BEiT-3 hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beit3Dims {
    /// Encoder layers.
    pub layers: usize,
    /// Embedding size.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// FFN size.
    pub intermediate: usize,
    /// Text vocabulary size.
    pub vocab: usize,
    /// Input image side in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Text positions (`max_source_positions`).
    pub max_positions: usize,
}

/// T5 hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct T5Dims {
    /// Encoder blocks (and decoder blocks).
    pub layers: usize,
    /// Model width.
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of one head.
    pub d_kv: usize,
    /// Feed-forward size.
    pub d_ff: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Relative-attention buckets.
    pub buckets: usize,
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
    } else if is_norm_weight(name) {
        Role::Norm
    } else {
        Role::Weight
    }
}

/// A norm's scale: `<module>.weight` whose module (a Multiway expert `A`/`B` looks through to its
/// parent) is named like a norm: `LayerNorm`, `input_layernorm`, `layer_norm1`, `pre_layrnorm`,
/// `inner_attn_ln`, `ln_f`.
fn is_norm_weight(name: &str) -> bool {
    let Some(module) = name.strip_suffix(".weight") else {
        return false;
    };
    let module = module
        .strip_suffix(".A")
        .or_else(|| module.strip_suffix(".B"))
        .unwrap_or(module);
    let last = module
        .rsplit('.')
        .next()
        .unwrap_or(module)
        .to_ascii_lowercase();
    last.contains("norm") || last == "ln" || last.ends_with("_ln") || last.starts_with("ln_")
}

fn push(out: &mut Vec<TensorSpec>, name: String, shape: Vec<usize>, layer: Option<usize>) {
    let role = role_of(&name);
    out.push(TensorSpec::new(name, shape, role, layer));
}

/// Every tensor of `shape`'s base checkpoint, in model order, with its role and layer.
pub fn detailed_specs(shape: Shape) -> Vec<TensorSpec> {
    arch_specs(shape.arch())
}

/// Every tensor of a checkpoint of `arch` (say, [`Arch::with_layers`] of a shape's), in model order.
pub fn arch_specs(arch: Arch) -> Vec<TensorSpec> {
    let mut out = Vec::new();
    match arch {
        Arch::Roberta(d) => roberta_specs(&mut out, d),
        Arch::ClipVit(d) => clip_specs(&mut out, d),
        Arch::Beit3(d) => beit3_specs(&mut out, d),
        Arch::T5(d) => t5_specs(&mut out, d),
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

/// `RobertaForMaskedLM` as stored on the hub: BERT's encoder under `roberta.` (no pooler, no
/// `position_ids` buffer), the LM head's dense + layer norm + bias (its decoder is tied to the word
/// embeddings and not stored).
fn roberta_specs(out: &mut Vec<TensorSpec>, d: BertDims) {
    let h = d.hidden;
    for s in arch_specs(Arch::Bert(d)) {
        if s.role == Role::PositionIds || s.name.starts_with("pooler.") {
            continue;
        }
        out.push(TensorSpec {
            name: format!("roberta.{}", s.name),
            ..s
        });
    }
    push(out, "lm_head.bias".into(), vec![d.vocab], None);
    push(out, "lm_head.dense.weight".into(), vec![h, h], None);
    push(out, "lm_head.dense.bias".into(), vec![h], None);
    push(out, "lm_head.layer_norm.weight".into(), vec![h], None);
    push(out, "lm_head.layer_norm.bias".into(), vec![h], None);
}

/// A weight and its bias.
fn linear(out: &mut Vec<TensorSpec>, p: &str, rows: usize, cols: usize, layer: Option<usize>) {
    push(out, format!("{p}.weight"), vec![rows, cols], layer);
    push(out, format!("{p}.bias"), vec![rows], layer);
}

/// A layer norm's scale and shift.
fn norm(out: &mut Vec<TensorSpec>, p: &str, h: usize, layer: Option<usize>) {
    push(out, format!("{p}.weight"), vec![h], layer);
    push(out, format!("{p}.bias"), vec![h], layer);
}

/// `CLIPModel`: text tower, vision tower, the two projections and `logit_scale` (a 0-d tensor).
fn clip_specs(out: &mut Vec<TensorSpec>, d: ClipDims) {
    let tower = |out: &mut Vec<TensorSpec>, prefix: &str, layers, h, ff| {
        for l in 0..layers {
            let p = format!("{prefix}.encoder.layers.{l}");
            for m in ["k_proj", "v_proj", "q_proj", "out_proj"] {
                linear(out, &format!("{p}.self_attn.{m}"), h, h, Some(l));
            }
            norm(out, &format!("{p}.layer_norm1"), h, Some(l));
            linear(out, &format!("{p}.mlp.fc1"), ff, h, Some(l));
            linear(out, &format!("{p}.mlp.fc2"), h, ff, Some(l));
            norm(out, &format!("{p}.layer_norm2"), h, Some(l));
        }
    };
    let (th, vh) = (d.text_hidden, d.vision_hidden);
    push(
        out,
        "text_model.embeddings.token_embedding.weight".into(),
        vec![d.vocab, th],
        None,
    );
    push(
        out,
        "text_model.embeddings.position_embedding.weight".into(),
        vec![d.text_positions, th],
        None,
    );
    tower(out, "text_model", d.text_layers, th, d.text_intermediate);
    norm(out, "text_model.final_layer_norm", th, None);
    let patches = (d.image_size / d.patch_size).pow(2);
    push(
        out,
        "vision_model.embeddings.class_embedding".into(),
        vec![vh],
        None,
    );
    push(
        out,
        "vision_model.embeddings.patch_embedding.weight".into(),
        vec![vh, 3, d.patch_size, d.patch_size],
        None,
    );
    push(
        out,
        "vision_model.embeddings.position_embedding.weight".into(),
        vec![patches + 1, vh],
        None,
    );
    norm(out, "vision_model.pre_layrnorm", vh, None);
    tower(
        out,
        "vision_model",
        d.vision_layers,
        vh,
        d.vision_intermediate,
    );
    norm(out, "vision_model.post_layernorm", vh, None);
    push(
        out,
        "visual_projection.weight".into(),
        vec![d.projection, vh],
        None,
    );
    push(
        out,
        "text_projection.weight".into(),
        vec![d.projection, th],
        None,
    );
    push(out, "logit_scale".into(), vec![], None);
}

/// torchscale's `BEiT3` under `beit3.`: every attention projection, FFN and layer norm is a
/// `MultiwayNetwork` with a vision expert `A` and a language expert `B`; sub-LN adds
/// `inner_attn_ln` and `ffn_layernorm`; no output layer.
fn beit3_specs(out: &mut Vec<TensorSpec>, d: Beit3Dims) {
    let h = d.hidden;
    let patches = (d.image_size / d.patch_size).pow(2);
    push(
        out,
        "beit3.text_embed.weight".into(),
        vec![d.vocab, h],
        None,
    );
    push(
        out,
        "beit3.vision_embed.mask_token".into(),
        vec![1, 1, h],
        None,
    );
    push(
        out,
        "beit3.vision_embed.cls_token".into(),
        vec![1, 1, h],
        None,
    );
    push(
        out,
        "beit3.vision_embed.proj.weight".into(),
        vec![h, 3, d.patch_size, d.patch_size],
        None,
    );
    push(out, "beit3.vision_embed.proj.bias".into(), vec![h], None);
    // Fairseq's positions start at 2: patches + CLS + 2 for vision, `max_source_positions` for text.
    push(
        out,
        "beit3.encoder.embed_positions.A.weight".into(),
        vec![patches + 3, h],
        None,
    );
    push(
        out,
        "beit3.encoder.embed_positions.B.weight".into(),
        vec![d.max_positions, h],
        None,
    );
    for l in 0..d.layers {
        let p = format!("beit3.encoder.layers.{l}");
        for m in ["k_proj", "v_proj", "q_proj", "out_proj"] {
            for e in ["A", "B"] {
                linear(out, &format!("{p}.self_attn.{m}.{e}"), h, h, Some(l));
            }
        }
        for e in ["A", "B"] {
            norm(out, &format!("{p}.self_attn.inner_attn_ln.{e}"), h, Some(l));
        }
        for e in ["A", "B"] {
            norm(out, &format!("{p}.self_attn_layer_norm.{e}"), h, Some(l));
        }
        for e in ["A", "B"] {
            linear(out, &format!("{p}.ffn.{e}.fc1"), d.intermediate, h, Some(l));
            linear(out, &format!("{p}.ffn.{e}.fc2"), h, d.intermediate, Some(l));
            norm(
                out,
                &format!("{p}.ffn.{e}.ffn_layernorm"),
                d.intermediate,
                Some(l),
            );
        }
        for e in ["A", "B"] {
            norm(out, &format!("{p}.final_layer_norm.{e}"), h, Some(l));
        }
    }
    for e in ["A", "B"] {
        norm(out, &format!("beit3.encoder.layer_norm.{e}"), h, None);
    }
}

/// `T5ForConditionalGeneration` as stored by `save_pretrained` (safetensors keeps one copy of the
/// tied `shared` embedding; no biases; RMS-style norms with a scale only).
fn t5_specs(out: &mut Vec<TensorSpec>, d: T5Dims) {
    let (h, inner) = (d.d_model, d.heads * d.d_kv);
    push(out, "shared.weight".into(), vec![d.vocab, h], None);
    let attention = |out: &mut Vec<TensorSpec>, p: &str, l: usize| {
        for m in ["q", "k", "v"] {
            push(out, format!("{p}.{m}.weight"), vec![inner, h], Some(l));
        }
        push(out, format!("{p}.o.weight"), vec![h, inner], Some(l));
    };
    let rel_bias = |out: &mut Vec<TensorSpec>, p: &str| {
        push(
            out,
            format!("{p}.relative_attention_bias.weight"),
            vec![d.buckets, d.heads],
            Some(0),
        );
    };
    let ffn = |out: &mut Vec<TensorSpec>, p: &str, l: usize| {
        push(
            out,
            format!("{p}.DenseReluDense.wi.weight"),
            vec![d.d_ff, h],
            Some(l),
        );
        push(
            out,
            format!("{p}.DenseReluDense.wo.weight"),
            vec![h, d.d_ff],
            Some(l),
        );
        push(out, format!("{p}.layer_norm.weight"), vec![h], Some(l));
    };
    for l in 0..d.layers {
        let p = format!("encoder.block.{l}.layer");
        attention(out, &format!("{p}.0.SelfAttention"), l);
        if l == 0 {
            rel_bias(out, &format!("{p}.0.SelfAttention"));
        }
        push(out, format!("{p}.0.layer_norm.weight"), vec![h], Some(l));
        ffn(out, &format!("{p}.1"), l);
    }
    push(out, "encoder.final_layer_norm.weight".into(), vec![h], None);
    for l in 0..d.layers {
        let p = format!("decoder.block.{l}.layer");
        attention(out, &format!("{p}.0.SelfAttention"), l);
        if l == 0 {
            rel_bias(out, &format!("{p}.0.SelfAttention"));
        }
        push(out, format!("{p}.0.layer_norm.weight"), vec![h], Some(l));
        attention(out, &format!("{p}.1.EncDecAttention"), l);
        push(out, format!("{p}.1.layer_norm.weight"), vec![h], Some(l));
        ffn(out, &format!("{p}.2"), l);
    }
    push(out, "decoder.final_layer_norm.weight".into(), vec![h], None);
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
    arch_config_json(shape, shape.arch(), dtype)
}

/// The `config.json` of a checkpoint of `arch` (`shape`'s, perhaps with fewer layers), tagged with
/// `shape`'s name.
pub fn arch_config_json(shape: Shape, arch: Arch, dtype: DType) -> serde_json::Value {
    match arch {
        Arch::Roberta(d) => json!({
            "architectures": ["RobertaForMaskedLM"],
            "model_type": "roberta",
            "attention_probs_dropout_prob": 0.1,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": d.hidden,
            "initializer_range": 0.02,
            "intermediate_size": d.intermediate,
            "layer_norm_eps": 1e-5,
            "max_position_embeddings": d.max_positions,
            "num_attention_heads": d.heads,
            "num_hidden_layers": d.layers,
            "pad_token_id": 1,
            "torch_dtype": torch_dtype(dtype),
            "type_vocab_size": d.type_vocab,
            "vocab_size": d.vocab,
            "ultradelta_synthetic": shape.name(),
        }),
        Arch::ClipVit(d) => json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "logit_scale_init_value": 2.6592,
            "projection_dim": d.projection,
            "text_config": {
                "hidden_size": d.text_hidden,
                "intermediate_size": d.text_intermediate,
                "max_position_embeddings": d.text_positions,
                "num_attention_heads": d.text_heads,
                "num_hidden_layers": d.text_layers,
                "vocab_size": d.vocab,
            },
            "vision_config": {
                "hidden_size": d.vision_hidden,
                "image_size": d.image_size,
                "intermediate_size": d.vision_intermediate,
                "num_attention_heads": d.vision_heads,
                "num_hidden_layers": d.vision_layers,
                "patch_size": d.patch_size,
            },
            "torch_dtype": torch_dtype(dtype),
            "ultradelta_synthetic": shape.name(),
        }),
        // BEiT-3 has no Hugging Face config; these are torchscale's `EncoderConfig` fields.
        Arch::Beit3(d) => json!({
            "architectures": ["BEiT3"],
            "model_type": "beit3",
            "encoder_attention_heads": d.heads,
            "encoder_embed_dim": d.hidden,
            "encoder_ffn_embed_dim": d.intermediate,
            "encoder_layers": d.layers,
            "img_size": d.image_size,
            "max_source_positions": d.max_positions,
            "multiway": true,
            "patch_size": d.patch_size,
            "subln": true,
            "vocab_size": d.vocab,
            "torch_dtype": torch_dtype(dtype),
            "ultradelta_synthetic": shape.name(),
        }),
        Arch::T5(d) => json!({
            "architectures": ["T5ForConditionalGeneration"],
            "model_type": "t5",
            "d_ff": d.d_ff,
            "d_kv": d.d_kv,
            "d_model": d.d_model,
            "decoder_start_token_id": 0,
            "eos_token_id": 1,
            "feed_forward_proj": "relu",
            "is_encoder_decoder": true,
            "layer_norm_epsilon": 1e-6,
            "num_decoder_layers": d.layers,
            "num_heads": d.heads,
            "num_layers": d.layers,
            "pad_token_id": 0,
            "relative_attention_num_buckets": d.buckets,
            "tie_word_embeddings": true,
            "torch_dtype": torch_dtype(dtype),
            "vocab_size": d.vocab,
            "ultradelta_synthetic": shape.name(),
        }),
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
    fn paper_families_match_the_real_checkpoints() {
        // Counts of the released checkpoints' stored tensors (tied copies stored once).
        assert_eq!(parameter_count(Shape::RobertaBase), 124_697_433);
        assert_eq!(parameter_count(Shape::ClipVitB32), 151_277_313);
        assert_eq!(parameter_count(Shape::T5Base), 222_903_552);
        // BEiT-3 base: 12 Multiway layers of 14,191,104, text embedding 64010 x 768, patch embedding,
        // CLS and mask tokens, positions 199 + 1024, final Multiway norm.
        assert_eq!(parameter_count(Shape::Beit3Base), 220_987_392);
        let shape_of = |shape: Shape, n: &str| {
            detailed_specs(shape)
                .into_iter()
                .find(|s| s.name == n)
                .unwrap_or_else(|| panic!("{shape}: no {n}"))
                .shape
        };
        use Shape::*;
        for (shape, name, want) in [
            (
                RobertaBase,
                "roberta.embeddings.word_embeddings.weight",
                vec![50265, 768],
            ),
            (
                RobertaBase,
                "roberta.embeddings.position_embeddings.weight",
                vec![514, 768],
            ),
            (
                RobertaBase,
                "roberta.embeddings.token_type_embeddings.weight",
                vec![1, 768],
            ),
            (
                RobertaBase,
                "roberta.encoder.layer.11.attention.self.value.weight",
                vec![768, 768],
            ),
            (
                RobertaBase,
                "roberta.encoder.layer.0.output.dense.weight",
                vec![768, 3072],
            ),
            (RobertaBase, "lm_head.bias", vec![50265]),
            (
                ClipVitB32,
                "text_model.embeddings.token_embedding.weight",
                vec![49408, 512],
            ),
            (
                ClipVitB32,
                "text_model.encoder.layers.11.mlp.fc1.weight",
                vec![2048, 512],
            ),
            (
                ClipVitB32,
                "vision_model.embeddings.patch_embedding.weight",
                vec![768, 3, 32, 32],
            ),
            (
                ClipVitB32,
                "vision_model.embeddings.position_embedding.weight",
                vec![50, 768],
            ),
            (
                ClipVitB32,
                "vision_model.encoder.layers.0.self_attn.out_proj.weight",
                vec![768, 768],
            ),
            (ClipVitB32, "vision_model.pre_layrnorm.weight", vec![768]),
            (ClipVitB32, "visual_projection.weight", vec![512, 768]),
            (ClipVitB32, "logit_scale", vec![]),
            (Beit3Base, "beit3.text_embed.weight", vec![64010, 768]),
            (
                Beit3Base,
                "beit3.vision_embed.proj.weight",
                vec![768, 3, 16, 16],
            ),
            (
                Beit3Base,
                "beit3.encoder.embed_positions.A.weight",
                vec![199, 768],
            ),
            (
                Beit3Base,
                "beit3.encoder.layers.11.self_attn.q_proj.B.weight",
                vec![768, 768],
            ),
            (
                Beit3Base,
                "beit3.encoder.layers.0.ffn.A.fc1.weight",
                vec![3072, 768],
            ),
            (
                Beit3Base,
                "beit3.encoder.layers.0.ffn.B.ffn_layernorm.weight",
                vec![3072],
            ),
            (T5Base, "shared.weight", vec![32128, 768]),
            (
                T5Base,
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                vec![32, 12],
            ),
            (
                T5Base,
                "decoder.block.11.layer.1.EncDecAttention.o.weight",
                vec![768, 768],
            ),
            (
                T5Base,
                "decoder.block.5.layer.2.DenseReluDense.wi.weight",
                vec![3072, 768],
            ),
            (
                T5Base,
                "encoder.block.3.layer.1.DenseReluDense.wo.weight",
                vec![768, 3072],
            ),
        ] {
            assert_eq!(shape_of(shape, name), want, "{shape}: {name}");
        }
        // Relative attention bias only in block 0 of each stack.
        let t5 = detailed_specs(T5Base);
        assert_eq!(
            t5.iter()
                .filter(|s| s.name.contains("relative_attention_bias"))
                .count(),
            2
        );
        assert!(t5
            .iter()
            .all(|s| !s.name.ends_with(".bias") || s.name.contains("relative")));
    }

    #[test]
    fn fewer_layers_keep_every_layer_tensor() {
        for shape in [
            Shape::RobertaBase,
            Shape::ClipVitB32,
            Shape::Beit3Base,
            Shape::T5Base,
            Shape::Llama7b,
        ] {
            let full = detailed_specs(shape);
            let cut = arch_specs(shape.arch().with_layers(2));
            assert_eq!(shape.arch().with_layers(2).layers(), 2);
            // The cut model's tensors are exactly the full model's outside layers >= 2.
            let kept: Vec<&TensorSpec> = full
                .iter()
                .filter(|s| s.layer.is_none_or(|l| l < 2))
                .collect();
            assert_eq!(cut.iter().collect::<Vec<_>>(), kept, "{shape}");
        }
    }

    #[test]
    fn norms_of_every_family_are_norms() {
        for name in [
            "roberta.encoder.layer.0.output.LayerNorm.weight",
            "lm_head.layer_norm.weight",
            "text_model.encoder.layers.0.layer_norm1.weight",
            "vision_model.pre_layrnorm.weight",
            "vision_model.post_layernorm.weight",
            "beit3.encoder.layers.0.self_attn.inner_attn_ln.A.weight",
            "beit3.encoder.layers.0.self_attn_layer_norm.B.weight",
            "beit3.encoder.layers.0.ffn.A.ffn_layernorm.weight",
            "encoder.block.0.layer.1.layer_norm.weight",
            "decoder.final_layer_norm.weight",
        ] {
            assert_eq!(role_of(name), Role::Norm, "{name}");
        }
        for name in [
            "beit3.encoder.layers.0.self_attn.q_proj.A.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "vision_model.embeddings.class_embedding",
            "logit_scale",
        ] {
            assert_eq!(role_of(name), Role::Weight, "{name}");
        }
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
        for (shape, ty) in [
            (Shape::RobertaBase, "roberta"),
            (Shape::ClipVitB32, "clip"),
            (Shape::Beit3Base, "beit3"),
            (Shape::T5Base, "t5"),
        ] {
            assert_eq!(config_json(shape, DType::BF16)["model_type"], ty);
        }
        let t5 = arch_config_json(
            Shape::T5Base,
            Shape::T5Base.arch().with_layers(2),
            DType::F32,
        );
        assert_eq!(
            (t5["num_layers"].as_u64(), t5["num_decoder_layers"].as_u64()),
            (Some(2), Some(2))
        );
        let c = config_json(Shape::Llama1b, DType::BF16);
        assert_eq!(c["model_type"], "llama");
        assert_eq!(c["num_key_value_heads"], 4);
        assert_eq!(c["torch_dtype"], "bfloat16");
    }
}
