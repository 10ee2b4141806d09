//! Which tensors are compressed, kept losslessly, or dropped (ALGORITHM.md §0).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use ultradelta_archive::Policy;
use ultradelta_io::{Checkpoint, TensorInfo};

/// A model family with a tensor-selection preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// LLaMA, Mistral, Qwen and other decoder models with `q_proj … down_proj` linears.
    Llama,
    /// BERT encoders (`query key value attention.output.dense intermediate.dense output.dense`).
    Bert,
    /// RoBERTa / XLM-RoBERTa (same linears as BERT).
    Roberta,
    /// T5 (`q k v o wi wo`).
    T5,
    /// CLIP vision transformers, open_clip names or Hugging Face names.
    ClipVit,
    /// BEiT-3 (torchscale multiway attention and FFN linears).
    Beit3,
    /// Unknown family: every 2-D floating-point `*weight` except embeddings, heads and norms.
    Generic,
}

impl Family {
    /// Every family, in the order the CLI lists them.
    pub const ALL: [Family; 7] = [
        Family::Llama,
        Family::Bert,
        Family::Roberta,
        Family::T5,
        Family::ClipVit,
        Family::Beit3,
        Family::Generic,
    ];

    /// UltraDelta's default quantizer for this family, (bits, level placement), chosen by measurement on the real
    /// testbeds at equal bytes (README, "Choosing the defaults"; 2026-12-04). Both measured families gain from 3
    /// bits at a higher density, but not from the same levels: BERT encoders keep the paper's range fit (+0.9 to
    /// +4.3 points of in-domain retention over 4 bits on MiniLM at every ratio of the grid; levels fit by squared
    /// error lose 2.7–7.7), LLaMA decoders place the levels by squared error with the projection gain (+1.4 to +1.8
    /// points of log-perplexity retention on SmolLM2's four fine-tunes at 132.5× and 224.6×; the range fit at 3
    /// bits loses ~1). The families not measured on real fine-tunes keep the paper's 4-bit range fit.
    pub fn quantizer(self) -> (u8, crate::QuantFit) {
        use crate::QuantFit;
        match self {
            Family::Bert => (3, QuantFit::Range),
            Family::Llama => (3, QuantFit::MseUnbiased),
            Family::Roberta | Family::T5 | Family::ClipVit | Family::Beit3 | Family::Generic => {
                (4, QuantFit::Range)
            }
        }
    }

    /// Whether UltraDelta gives this family's matrices a low-rank part by default (`--lowrank-part`), chosen by
    /// measurement on the real testbeds at equal bytes (README, "Choosing the defaults"; 2026-12-05). BERT
    /// encoders: on, +1.0 to +4.9 points of in-domain retention on MiniLM's two embedding fine-tunes at every ratio
    /// of the grid, the BBC probe +2 to +5, the classifiers equal within one test text. LLaMA decoders: off, the
    /// rank rule gives rank 0 to most of SmolLM2's linears and the rest moved log-perplexity retention by −0.20 ±
    /// 0.04 at 132.5× (docs/results/2026-12-05-lowrank-residual-study/llama). The families not measured on real
    /// fine-tunes: off.
    pub fn lowrank_part(self) -> bool {
        matches!(self, Family::Bert)
    }

    /// Whether UltraDelta codes a matrix whose delta moved only some of its rows as those rows alone by default
    /// (`--row-subset`; record kind `row-subset`), chosen by measurement on the real testbeds at equal whole-file
    /// bytes (README, "Choosing the defaults"; 2026-12-06). BERT encoders: on; the rule finds MiniLM's word
    /// embeddings (0.6–40 % of their rows moved by the four fine-tunes) and nothing else. LLaMA decoders: off,
    /// where the rule finds nothing on SmolLM2's fine-tunes (the tied embedding is also the output layer: every row
    /// moves) and the whole-Δ path it needs would cost the streaming path's speed. The families not measured: off.
    pub fn row_subset(self) -> bool {
        matches!(self, Family::Bert)
    }

    /// The CLI name (`llama`, `bert`, `roberta`, `t5`, `clip-vit`, `beit3`, `generic`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::T5 => "t5",
            Family::ClipVit => "clip-vit",
            Family::Beit3 => "beit3",
            Family::Generic => "generic",
        }
    }

    /// Glob patterns of the linear-layer weights this family compresses by default.
    /// An empty list means "use the generic rule" (see [`Family::Generic`]).
    pub fn compress_patterns(self) -> &'static [&'static str] {
        match self {
            Family::Llama => &[
                "*.q_proj.weight",
                "*.k_proj.weight",
                "*.v_proj.weight",
                "*.o_proj.weight",
                "*.gate_proj.weight",
                "*.up_proj.weight",
                "*.down_proj.weight",
            ],
            Family::Bert | Family::Roberta => &[
                "*attention.self.query.weight",
                "*attention.self.key.weight",
                "*attention.self.value.weight",
                "*attention.output.dense.weight",
                "*intermediate.dense.weight",
                "*layer.*.output.dense.weight",
            ],
            Family::T5 => &[
                "*Attention.q.weight",
                "*Attention.k.weight",
                "*Attention.v.weight",
                "*Attention.o.weight",
                "*DenseReluDense.wi.weight",
                "*DenseReluDense.wi_0.weight",
                "*DenseReluDense.wi_1.weight",
                "*DenseReluDense.wo.weight",
            ],
            Family::ClipVit => &[
                "*attn.in_proj_weight",
                "*attn.out_proj.weight",
                "*mlp.c_fc.weight",
                "*mlp.c_proj.weight",
                "*self_attn.q_proj.weight",
                "*self_attn.k_proj.weight",
                "*self_attn.v_proj.weight",
                "*self_attn.out_proj.weight",
                "*mlp.fc1.weight",
                "*mlp.fc2.weight",
            ],
            Family::Beit3 => &[
                "*self_attn.q_proj*weight",
                "*self_attn.k_proj*weight",
                "*self_attn.v_proj*weight",
                "*self_attn.out_proj*weight",
                "*ffn*fc1*weight",
                "*ffn*fc2*weight",
            ],
            Family::Generic => &[],
        }
    }

    /// Glob patterns of this family's large tensors outside the linear layers: the token (word) embeddings and an
    /// untied LM head. [`Selection::embeddings`] decides their policy (compressed by default). Empty for the
    /// families whose embeddings were not measured (T5, the vision families, generic): theirs stay lossless.
    pub fn embedding_patterns(self) -> &'static [&'static str] {
        match self {
            Family::Llama => &["*embed_tokens.weight", "lm_head.weight"],
            Family::Bert | Family::Roberta => &["*word_embeddings.weight"],
            Family::T5 | Family::ClipVit | Family::Beit3 | Family::Generic => &[],
        }
    }

    /// Glob patterns of this family's learned position-embedding table. [`Selection::position_embeddings`] decides
    /// its policy (dropped by default). Empty for the families whose position embeddings were not measured (LLaMA
    /// has none; T5's relative biases are small; the vision families, generic): theirs stay lossless.
    pub fn position_embedding_patterns(self) -> &'static [&'static str] {
        match self {
            Family::Bert | Family::Roberta => &["*embeddings.position_embeddings.weight"],
            Family::Llama | Family::T5 | Family::ClipVit | Family::Beit3 | Family::Generic => &[],
        }
    }

    /// Maps a Hugging Face `config.json` `model_type` to a family.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        let t = model_type.to_ascii_lowercase();
        Some(match t.as_str() {
            "llama" | "mistral" | "mixtral" | "qwen2" | "qwen3" | "qwen" | "gemma" | "gemma2"
            | "phi3" | "yi" | "internlm2" => Family::Llama,
            "bert" => Family::Bert,
            "roberta" | "xlm-roberta" | "camembert" => Family::Roberta,
            "t5" | "mt5" | "umt5" => Family::T5,
            "clip" | "clip_vision_model" | "open_clip" | "vit_clip" => Family::ClipVit,
            "beit3" | "beit-3" => Family::Beit3,
            _ => return None,
        })
    }

    /// Guesses the family from tensor names when no `config.json` says it.
    pub fn from_tensor_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Family> {
        let names: Vec<&str> = names.into_iter().collect();
        let any = |needle: &str| names.iter().any(|n| n.contains(needle));
        if any("gate_proj") && any("q_proj") {
            Some(Family::Llama)
        } else if any("attention.self.query") {
            if names.iter().any(|n| n.starts_with("roberta.")) {
                Some(Family::Roberta)
            } else {
                Some(Family::Bert)
            }
        } else if any("SelfAttention.q") {
            Some(Family::T5)
        } else if any("attn.in_proj")
            || any("mlp.c_fc")
            || (any("self_attn.q_proj") && any("mlp.fc1"))
        {
            Some(Family::ClipVit)
        } else if any("self_attn.q_proj") && any("ffn") {
            Some(Family::Beit3)
        } else {
            None
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Family::ALL
            .iter()
            .copied()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown family \"{s}\" (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// How the family was decided, for the message the CLI prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FamilySource {
    /// Given by the user.
    User,
    /// From `config.json`'s `model_type`.
    ModelType(String),
    /// Guessed from tensor names.
    TensorNames,
    /// Nothing matched: the generic rule.
    Fallback,
}

/// Decides the family of a checkpoint: `config.json` `model_type` first, then tensor names.
pub fn detect_family(ckpt: &Checkpoint) -> (Family, FamilySource) {
    if let Some(mt) = ckpt.config().and_then(|c| {
        c.get("model_type")
            .and_then(|v| v.as_str().map(str::to_owned))
    }) {
        if let Some(f) = Family::from_model_type(&mt) {
            return (f, FamilySource::ModelType(mt));
        }
    }
    match Family::from_tensor_names(ckpt.tensors().iter().map(|t| t.name.as_str())) {
        Some(f) => (f, FamilySource::TensorNames),
        None => (Family::Generic, FamilySource::Fallback),
    }
}

/// Matches `name` against a glob: `*` is any run of characters (dots included), `?` one
/// character, everything else literal; the whole name must match.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with single-star backtracking: linear in practice, no recursion.
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// What the family presets do with the token embeddings and an untied LM head ([`Family::embedding_patterns`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmbeddingPolicy {
    /// Compressed with the linear layers (the default since 2026-12-03: measured better per whole-file byte on
    /// both real families, README "Choosing the defaults").
    #[default]
    Compress,
    /// Their deltas stored without loss (the default before; the paper's preset).
    Keep,
    /// Their deltas dropped (the rebuilt model uses the base's).
    Drop,
}

impl EmbeddingPolicy {
    /// The CLI names, in order.
    pub const NAMES: [&'static str; 3] = ["compress", "keep", "drop"];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            EmbeddingPolicy::Compress => "compress",
            EmbeddingPolicy::Keep => "keep",
            EmbeddingPolicy::Drop => "drop",
        }
    }

    fn policy(self) -> Policy {
        match self {
            EmbeddingPolicy::Compress => Policy::Compress,
            EmbeddingPolicy::Keep => Policy::Keep,
            EmbeddingPolicy::Drop => Policy::Drop,
        }
    }
}

impl FromStr for EmbeddingPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            EmbeddingPolicy::Compress,
            EmbeddingPolicy::Keep,
            EmbeddingPolicy::Drop,
        ]
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            format!(
                "unknown embedding policy \"{s}\" (expected one of: {})",
                EmbeddingPolicy::NAMES.join(", ")
            )
        })
    }
}

/// The user's rules plus a family preset; decides a [`Policy`] for every tensor.
///
/// Precedence: `drop` globs, then `keep`, then `compress` (all given by the
/// user), then the family preset (compress its linear weights; its embedding
/// tensors get [`Selection::embeddings`], its position-embedding table [`Selection::position_embeddings`]), then
/// `keep`.
/// Only floating-point tensors with at least two dimensions are compressed by a
/// preset; a user `compress` glob that names another tensor is an error at
/// compression time, not silently ignored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Selection {
    /// Tensor-name globs to compress.
    pub compress: Vec<String>,
    /// Tensor-name globs whose delta is stored without loss.
    pub keep: Vec<String>,
    /// Tensor-name globs whose delta is dropped (the base value is used).
    pub drop: Vec<String>,
    /// Preset family; `None` means detect it from the checkpoint.
    pub family: Option<Family>,
    /// The policy of the family's embedding tensors ([`Family::embedding_patterns`]) when no user glob names them.
    #[serde(default)]
    pub embeddings: EmbeddingPolicy,
    /// The policy of the family's position-embedding table ([`Family::position_embedding_patterns`]) when no user
    /// glob names it: [`EmbeddingPolicy::Drop`] by default (since 2026-12-04: on the four MiniLM fine-tunes dropping
    /// it kept every task's quality and made the default archive about a quarter smaller; README "Choosing the
    /// defaults").
    #[serde(default = "default_position_embeddings")]
    pub position_embeddings: EmbeddingPolicy,
}

fn default_position_embeddings() -> EmbeddingPolicy {
    EmbeddingPolicy::Drop
}

impl Default for Selection {
    fn default() -> Selection {
        Selection {
            compress: Vec::new(),
            keep: Vec::new(),
            drop: Vec::new(),
            family: None,
            embeddings: EmbeddingPolicy::default(),
            position_embeddings: default_position_embeddings(),
        }
    }
}

/// Why a policy was chosen (recorded in the archive for `inspect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleSource {
    /// A user glob.
    User,
    /// The family preset.
    Preset,
    /// Nothing matched.
    Default,
}

impl Selection {
    /// The policy for one tensor under `family`.
    pub fn policy(&self, family: Family, info: &TensorInfo) -> (Policy, RuleSource) {
        let name = info.name.as_str();
        let any = |globs: &[String]| globs.iter().any(|g| glob_match(g, name));
        if any(&self.drop) {
            return (Policy::Drop, RuleSource::User);
        }
        if any(&self.keep) {
            return (Policy::Keep, RuleSource::User);
        }
        if any(&self.compress) {
            return (Policy::Compress, RuleSource::User);
        }
        let compressible = info.dtype.is_float() && info.shape.len() >= 2 && info.numel() > 0;
        if compressible {
            let pats = family.compress_patterns();
            let hit = if pats.is_empty() {
                generic_linear(name)
            } else {
                pats.iter().any(|p| glob_match(p, name))
            };
            if hit {
                return (Policy::Compress, RuleSource::Preset);
            }
            if family
                .embedding_patterns()
                .iter()
                .any(|p| glob_match(p, name))
            {
                return (self.embeddings.policy(), RuleSource::Preset);
            }
            if family
                .position_embedding_patterns()
                .iter()
                .any(|p| glob_match(p, name))
            {
                return (self.position_embeddings.policy(), RuleSource::Preset);
            }
        }
        (Policy::Keep, RuleSource::Default)
    }
}

/// The generic rule: names ending in `weight` that are not embeddings, output heads or norms.
fn generic_linear(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with("weight")
        && ![
            "embed",
            "wte",
            "wpe",
            "lm_head",
            "norm",
            "ln_",
            "classifier",
            "head.",
        ]
        .iter()
        .any(|bad| lower.contains(bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ultradelta_io::DType;

    fn info(name: &str, shape: &[usize]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dtype: DType::F32,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn glob_basics() {
        assert!(glob_match("*", "a.b.c"));
        assert!(glob_match(
            "*.q_proj.weight",
            "model.layers.0.self_attn.q_proj.weight"
        ));
        assert!(!glob_match(
            "*.q_proj.weight",
            "model.layers.0.self_attn.q_proj.bias"
        ));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*a*b*", "xxaxxbxx"));
        assert!(!glob_match("*a*b", "xxbxxa"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
    }

    /// Every family preset on the real tensor names and shapes of its reference checkpoint (the synthetic
    /// shapes of `ultradelta-synth`): detected from the names, and compressing exactly the attention and MLP
    /// matrices of every layer (`per_layer` of them), nothing else.
    #[test]
    fn presets_on_the_real_tensor_sets() {
        use ultradelta_synth::{detailed_specs, Shape};
        // The linear preset alone; the embedding tensors are checked below (`embedding_policy`).
        let s = Selection {
            embeddings: EmbeddingPolicy::Keep,
            ..Selection::default()
        };
        for (shape, family, per_layer) in [
            (Shape::BertBase, Family::Bert, 6),
            (Shape::RobertaBase, Family::Roberta, 6),
            // Both towers: q, k, v, out_proj, fc1, fc2 per layer of each.
            (Shape::ClipVitB32, Family::ClipVit, 12),
            // Multiway: every projection and FFN matrix twice (experts A and B).
            (Shape::Beit3Base, Family::Beit3, 12),
            // Encoder q, k, v, o, wi, wo; decoder adds the cross-attention's four.
            (Shape::T5Base, Family::T5, 16),
            (Shape::Llama7b, Family::Llama, 7),
        ] {
            let specs = detailed_specs(shape);
            assert_eq!(
                Family::from_tensor_names(specs.iter().map(|t| t.name.as_str())),
                Some(family),
                "{shape}"
            );
            let compressed: Vec<&str> = specs
                .iter()
                .filter(|t| {
                    let i = TensorInfo {
                        name: t.name.clone(),
                        dtype: DType::BF16,
                        shape: t.shape.clone(),
                    };
                    s.policy(family, &i).0 == Policy::Compress
                })
                .map(|t| t.name.as_str())
                .collect();
            assert_eq!(
                compressed.len(),
                per_layer * shape.layers(),
                "{shape}: {compressed:?}"
            );
            for name in &compressed {
                let spec = specs.iter().find(|t| &t.name == name).unwrap();
                assert!(
                    spec.layer.is_some() && spec.shape.len() == 2,
                    "{shape}: {name}"
                );
                for not in [
                    "embed",
                    "norm",
                    "_ln",
                    "lm_head",
                    "relative_attention",
                    "pooler",
                ] {
                    assert!(!name.contains(not), "{shape}: {name}");
                }
            }
        }
    }

    #[test]
    fn bert_preset() {
        let s = Selection::default();
        let f = Family::Bert;
        for (name, want) in [
            (
                "encoder.layer.0.attention.self.query.weight",
                Policy::Compress,
            ),
            (
                "encoder.layer.0.attention.output.dense.weight",
                Policy::Compress,
            ),
            (
                "encoder.layer.5.intermediate.dense.weight",
                Policy::Compress,
            ),
            ("encoder.layer.5.output.dense.weight", Policy::Compress),
            ("encoder.layer.5.output.dense.bias", Policy::Keep),
            ("pooler.dense.weight", Policy::Keep),
            ("embeddings.word_embeddings.weight", Policy::Compress),
            ("embeddings.position_embeddings.weight", Policy::Drop),
            ("embeddings.token_type_embeddings.weight", Policy::Keep),
        ] {
            let shape: &[usize] = if name.ends_with("bias") {
                &[4]
            } else {
                &[4, 4]
            };
            assert_eq!(s.policy(f, &info(name, shape)).0, want, "{name}");
        }
    }

    #[test]
    fn embedding_policy() {
        use ultradelta_synth::{detailed_specs, Shape};
        for (shape, family, want) in [
            (
                Shape::Llama7b,
                Family::Llama,
                &["model.embed_tokens.weight", "lm_head.weight"][..],
            ),
            (
                Shape::BertBase,
                Family::Bert,
                &["embeddings.word_embeddings.weight"][..],
            ),
            (
                Shape::RobertaBase,
                Family::Roberta,
                &["roberta.embeddings.word_embeddings.weight"][..],
            ),
            (Shape::T5Base, Family::T5, &[][..]),
        ] {
            let specs = detailed_specs(shape);
            for (emb, policy) in [
                (EmbeddingPolicy::Compress, Policy::Compress),
                (EmbeddingPolicy::Keep, Policy::Keep),
                (EmbeddingPolicy::Drop, Policy::Drop),
            ] {
                let s = Selection {
                    embeddings: emb,
                    ..Selection::default()
                };
                let linear = Selection {
                    embeddings: EmbeddingPolicy::Keep,
                    ..Selection::default()
                };
                let mut named: Vec<&str> = Vec::new();
                for t in &specs {
                    let i = TensorInfo {
                        name: t.name.clone(),
                        dtype: DType::BF16,
                        shape: t.shape.clone(),
                    };
                    let (p, _) = s.policy(family, &i);
                    if p != linear.policy(family, &i).0 {
                        named.push(t.name.as_str());
                        assert_eq!(p, policy, "{shape}: {}", t.name);
                    }
                }
                if emb == EmbeddingPolicy::Keep {
                    assert!(named.is_empty());
                } else {
                    named.sort_unstable();
                    let mut want = want.to_vec();
                    want.sort_unstable();
                    assert_eq!(named, want, "{shape} {emb:?}");
                }
            }
        }
        // A user glob still decides, and 1-D tensors are never compressed by the preset.
        let s = Selection {
            keep: vec!["*embed_tokens*".into()],
            ..Selection::default()
        };
        let emb = info("model.embed_tokens.weight", &[8, 4]);
        assert_eq!(
            s.policy(Family::Llama, &emb),
            (Policy::Keep, RuleSource::User)
        );
        let flat = info("lm_head.weight", &[32]);
        assert_eq!(
            Selection::default().policy(Family::Llama, &flat).0,
            Policy::Keep
        );
        assert_eq!("Drop".parse::<EmbeddingPolicy>(), Ok(EmbeddingPolicy::Drop));
        assert!("lossless".parse::<EmbeddingPolicy>().is_err());
    }

    /// BERT/RoBERTa's position-embedding table is dropped by default, follows `position_embeddings` otherwise, and
    /// a user glob still decides; no other family's tensor changes policy with it, and `token_type_embeddings` stays
    /// lossless.
    #[test]
    fn position_embeddings_follow_their_policy() {
        let pos = info("embeddings.position_embeddings.weight", &[512, 384]);
        let rpos = info("roberta.embeddings.position_embeddings.weight", &[514, 768]);
        let tok = info("embeddings.token_type_embeddings.weight", &[2, 384]);
        for f in [Family::Bert, Family::Roberta] {
            for p in [&pos, &rpos] {
                assert_eq!(
                    Selection::default().policy(f, p),
                    (Policy::Drop, RuleSource::Preset)
                );
            }
            assert_eq!(Selection::default().policy(f, &tok).0, Policy::Keep);
            for (pe, want) in [
                (EmbeddingPolicy::Compress, Policy::Compress),
                (EmbeddingPolicy::Keep, Policy::Keep),
                (EmbeddingPolicy::Drop, Policy::Drop),
            ] {
                let s = Selection {
                    position_embeddings: pe,
                    ..Selection::default()
                };
                assert_eq!(s.policy(f, &pos), (want, RuleSource::Preset));
                assert_eq!(s.policy(f, &tok).0, Policy::Keep);
            }
            let s = Selection {
                keep: vec!["*position_embeddings*".into()],
                ..Selection::default()
            };
            assert_eq!(s.policy(f, &pos), (Policy::Keep, RuleSource::User));
        }
        // Families without a learned table of that name, and a 1-D tensor, are untouched.
        for f in [
            Family::Llama,
            Family::T5,
            Family::ClipVit,
            Family::Beit3,
            Family::Generic,
        ] {
            assert_eq!(Selection::default().policy(f, &pos).0, Policy::Keep, "{f}");
        }
        let flat = info("embeddings.position_embeddings.weight", &[384]);
        assert_eq!(
            Selection::default().policy(Family::Bert, &flat).0,
            Policy::Keep
        );
        // The paper's preset keeps it, as every tensor outside the linear layers.
        assert_eq!(
            crate::CompressConfig::paper()
                .selection
                .policy(Family::Bert, &pos)
                .0,
            Policy::Keep
        );
    }

    #[test]
    fn user_rules_take_precedence() {
        let s = Selection {
            compress: vec!["*pooler*".into()],
            keep: vec!["*layer.0.*".into()],
            drop: vec!["*layer.0.attention.self.key*".into()],
            family: None,
            embeddings: EmbeddingPolicy::Compress,
            position_embeddings: EmbeddingPolicy::Drop,
        };
        let f = Family::Bert;
        assert_eq!(
            s.policy(f, &info("pooler.dense.weight", &[4, 4])).0,
            Policy::Compress
        );
        assert_eq!(
            s.policy(
                f,
                &info("encoder.layer.0.attention.self.query.weight", &[4, 4])
            )
            .0,
            Policy::Keep
        );
        assert_eq!(
            s.policy(
                f,
                &info("encoder.layer.0.attention.self.key.weight", &[4, 4])
            )
            .0,
            Policy::Drop
        );
    }

    #[test]
    fn preset_never_compresses_1d_or_integers() {
        let s = Selection::default();
        let mut i = info("model.layers.0.self_attn.q_proj.weight", &[8]);
        assert_eq!(s.policy(Family::Llama, &i).0, Policy::Keep);
        i.shape = vec![8, 8];
        i.dtype = DType::I64;
        assert_eq!(s.policy(Family::Llama, &i).0, Policy::Keep);
    }

    #[test]
    fn family_detection_by_names() {
        let llama = [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.mlp.gate_proj.weight",
        ];
        assert_eq!(Family::from_tensor_names(llama), Some(Family::Llama));
        let roberta = ["roberta.encoder.layer.0.attention.self.query.weight"];
        assert_eq!(Family::from_tensor_names(roberta), Some(Family::Roberta));
        assert_eq!(Family::from_tensor_names(["foo.weight"]), None);
        assert_eq!("clip-vit".parse::<Family>(), Ok(Family::ClipVit));
        assert!("nope".parse::<Family>().is_err());
    }
}
