//! The command line: what clap parses, and the one place where flags become library configuration
//! ([`CompressArgs::config`]). Choices are spelled as the configuration's serde names, with a help line each
//! ([`choice`]), so the facade's enums are used as they are (no mirrored copies). The library's errors name
//! configuration fields; [`flag_of`] gives the flag that sets each field, for the CLI's error line.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use ultradelta::{
    AllocationMode, CodecChoice, CompressConfig, EmbeddingPolicy, EstimateConfig, Family, Method,
    NuclearNormMethod, PositionCodec, Preset, PruningMode, QuantFit, RescaleMode, Selection,
    TngrConfig, TraceOn, ValueCodec, DEFAULT_SEED_TRIALS,
};

/// Data-free delta compression of fine-tuned models (UltraDelta).
#[derive(Parser, Debug)]
#[command(name = "ultradelta", version, about, long_about = None)]
pub struct Cli {
    /// No progress bars or notes on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Worker threads (default: all cores). Output bytes do not depend on it.
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Compress fine-tuned checkpoint(s) against their base into archive(s).
    Compress(Box<CompressArgs>),
    /// Rebuild the fine-tuned checkpoint from the base and an archive.
    Apply(ApplyArgs),
    /// Show what an archive holds, its real size and the paper's nominal ratios.
    Inspect(InspectArgs),
    /// Check an archive without writing anything: decode every record, check every checksum and limit, and with
    /// --base that it applies to that base. Exit status: 0 verified, 3 corrupt archive, 4 wrong base, 1 I/O error.
    Verify(VerifyArgs),
    /// Compare the rebuilt model with the fine-tuned one, per tensor and overall.
    Eval(EvalArgs),
    /// Run the compress jobs of a JSON Lines manifest (or this array task's share of them); `--report` gathers results.
    Batch(crate::batch::BatchArgs),
}

/// The values of one configuration enum on the command line: (spelling, help line, value).
type Choices<T> = &'static [(&'static str, &'static str, T)];

/// A clap parser accepting exactly the spellings of `values` (listed with their help in `--help`).
fn choice<T: Clone + Send + Sync + 'static>(
    values: Choices<T>,
) -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(
        values
            .iter()
            .map(|&(name, help, _)| PossibleValue::new(name).help(help)),
    )
    .map(move |s| {
        values
            .iter()
            .find(|(name, ..)| *name == s)
            .expect("clap accepts only the listed values")
            .2
            .clone()
    })
}

const METHODS: Choices<Method> = &[
    (
        "ultradelta",
        "The paper's pipeline: quantize, MSA, group-wise pruning, rescaling",
        Method::Ultradelta,
    ),
    (
        "dare",
        "DARE: random drop with probability --sparsity, survivors × 1/(1−p), fp16 values",
        Method::Dare,
    ),
    (
        "magnitude",
        "Magnitude pruning: keep the top (1 − --sparsity) by |Δ|, fp16 values",
        Method::Magnitude,
    ),
    (
        "bitdelta",
        "BitDelta (data-free): sign × mean |Δ| per tensor",
        Method::Bitdelta,
    ),
    (
        "lowrank",
        "Truncated SVD at --rank, fp16 factors",
        Method::Lowrank,
    ),
    (
        "compeft",
        "ComPEFT: top (1 − --sparsity) by |Δ|, sign × one magnitude",
        Method::Compeft,
    ),
    (
        "quant",
        "Uniform --bits quantization of every entry alone",
        Method::Quant,
    ),
];

const PRESETS: Choices<Preset> = &[(
    "paper",
    "The paper's exact setting: ultradelta, s 0.97, b 4, δ 0.01, global rescale, MSA, DAC, TNGR",
    Preset::Paper,
)];

const EMBEDDINGS: Choices<EmbeddingPolicy> = &[
    (
        "compress",
        "Compress the token embeddings and an untied LM head with the linear layers",
        EmbeddingPolicy::Compress,
    ),
    (
        "keep",
        "Store their deltas without loss",
        EmbeddingPolicy::Keep,
    ),
    (
        "drop",
        "Drop their deltas (the rebuilt model uses the base's)",
        EmbeddingPolicy::Drop,
    ),
];

const POSITION_EMBEDDINGS: Choices<EmbeddingPolicy> = &[
    (
        "drop",
        "Drop its delta (the rebuilt model uses the base's table)",
        EmbeddingPolicy::Drop,
    ),
    (
        "compress",
        "Compress it with the linear layers",
        EmbeddingPolicy::Compress,
    ),
    (
        "keep",
        "Store its delta without loss",
        EmbeddingPolicy::Keep,
    ),
];

const POSITIONS: Choices<PositionCodec> = &[
    ("golomb", "DAC's stratified positions, stored as Golomb-coded gaps (the paper's v3 count)", PositionCodec::Golomb),
    (
        "seeded",
        "Positions drawn from a seed independently of the values; the reader regenerates them, none are stored",
        PositionCodec::Seeded,
    ),
];

const VALUES: Choices<ValueCodec> = &[
    (
        "packed",
        "Levels bit-packed at --bits bits each",
        ValueCodec::Packed,
    ),
    (
        "entropy",
        "Levels rANS-coded with a per-tensor static model (about their entropy each)",
        ValueCodec::Entropy,
    ),
];

const QUANT_FITS: Choices<QuantFit> = &[
    ("range", "Levels from the delta's minimum to its maximum (the paper's)", QuantFit::Range),
    (
        "mse",
        "Levels centred on the mean, step minimising the squared error on a sample; outliers clamp to the end levels",
        QuantFit::Mse,
    ),
    (
        "mse-unbiased",
        "As mse, and the rescale factor times the gain that restores the delta's projection onto itself",
        QuantFit::MseUnbiased,
    ),
];

const CODECS: Choices<CodecChoice> = &[
    ("fixed", "Every tensor as --positions and --values say", CodecChoice::Fixed),
    (
        "auto",
        "Per tensor, the smaller of packed and entropy-coded levels (--values is ignored; positions stay as given)",
        CodecChoice::Auto,
    ),
];

const RESCALES: Choices<RescaleMode> = &[
    (
        "global",
        "1/(1 − s) with the global target s (the paper's reference code)",
        RescaleMode::Global,
    ),
    (
        "per-tensor",
        "1/(1 − s_t) with each tensor's own rate",
        RescaleMode::PerTensor,
    ),
];

const ALLOCATIONS: Choices<AllocationMode> = &[
    (
        "msa",
        "MSA with the paper's additive step: low/mid/high-σ thirds at s + δ, s, remainder",
        AllocationMode::Msa,
    ),
    (
        "msa-relative",
        "MSA with tiers as multiples of the density d = 1 − s: d·(1 − F), d, remainder (F = --tier-spread)",
        AllocationMode::MsaRelative,
    ),
    (
        "uniform",
        "the same sparsity for every tensor",
        AllocationMode::Uniform,
    ),
    (
        "rate-distortion",
        "each tensor's density ∝ σ^P (P = --rd-power), the squared-error optimum for P = 1",
        AllocationMode::RateDistortion,
    ),
];

const TRACE_ON: Choices<TraceOn> = &[
    (
        "compressed",
        "Nuclear norms of the compressed deltas (reference code)",
        TraceOn::Compressed,
    ),
    (
        "original",
        "Nuclear norms of the original deltas",
        TraceOn::Original,
    ),
];

/// How TNGR's nuclear norms are computed (a function: the estimate's settings are not a constant).
type NuclearNorm = fn() -> NuclearNormMethod;

const NUCLEAR_NORMS: Choices<NuclearNorm> = &[
    (
        "auto",
        "The faster route by shape: estimated from a short side of 1536, or of 768 when the long side is 2.5x it; else exact",
        || NuclearNormMethod::Auto,
    ),
    (
        "exact",
        "Always exact (Gram matrix + LAPACK eigenvalues)",
        || NuclearNormMethod::Exact,
    ),
    (
        "estimate",
        "Always estimated (deflation + stochastic Lanczos quadrature, ~0.25% standard error)",
        || NuclearNormMethod::Estimate(EstimateConfig::default()),
    ),
];

#[derive(Args, Debug)]
pub struct CompressArgs {
    /// Compression method (baselines write their own record kinds; see `inspect`).
    #[arg(long, value_parser = choice(METHODS), default_value = "ultradelta")]
    pub method: Method,
    /// A named configuration; refuses flags that would contradict it.
    #[arg(long, value_parser = choice(PRESETS), conflicts_with_all = [
        "method", "sparsity", "bits", "step", "rescale", "no_msa", "allocation", "tier_spread", "rd_power",
        "positions", "values", "codec", "no_dac", "no_quant", "no_tngr", "tngr", "target_ratio", "target_size",
        "rescale_factor", "trace_on", "embeddings", "position_embeddings", "quant_fit", "lowrank_part",
        "no_lowrank_part", "row_subset", "no_row_subset",
    ])]
    pub preset: Option<Preset>,
    /// Rank of every compressed tensor (--method lowrank).
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// ComPEFT magnitude α·σ(Δ) (default: mean |Δ| of the kept entries).
    #[arg(long, value_name = "ALPHA")]
    pub compeft_alpha: Option<f64>,
    /// Byte budget over the compressed tensors, a ceiling: pick the method's free parameter (sparsity, rank, bits)
    /// so the real ratio vs 16-bit over the compressed tensors is at least R (sparsity: within 1% above R; rank,
    /// bits: the largest that fits).
    #[arg(long, value_name = "R", conflicts_with = "target_size")]
    pub target_ratio: Option<f64>,
    /// Byte budget over the whole archive file, a ceiling: pick the method's free parameter so the archive
    /// (records, lossless deltas, companion files, index, everything) takes at most BYTES (sparsity: within 1%
    /// under it). BYTES is a count with an optional suffix: K, M, G, T are powers of 1000 (also KB, MB, GB, TB),
    /// KiB, MiB, GiB, TiB powers of 1024; e.g. 12M = 12000000, 1.5GiB = 1610612736.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub target_size: Option<u64>,
    /// Ablation (ultradelta): keep the pruned values at fp16 instead of quantizing them.
    #[arg(long)]
    pub no_quant: bool,
    /// How kept positions are stored (ultradelta) [default: seeded; golomb with --no-dac or --no-quant].
    #[arg(long, value_parser = choice(POSITIONS))]
    pub positions: Option<PositionCodec>,
    /// How kept levels are stored (ultradelta) [default: entropy; packed with --no-quant].
    #[arg(long, value_parser = choice(VALUES))]
    pub values: Option<ValueCodec>,
    /// How the quantizer's levels are placed (ultradelta) [default: the model family's, measured: mse-unbiased
    /// for LLaMA, range otherwise].
    #[arg(long, value_parser = choice(QUANT_FITS))]
    pub quant_fit: Option<QuantFit>,
    /// Fixed codecs, or the cheapest levels codec per tensor (ultradelta).
    #[arg(long, value_parser = choice(CODECS), default_value = "fixed")]
    pub codec: CodecChoice,
    /// Seeds tried per tensor with --positions seeded (at most: fewer when N draws would exceed 2^19 positions,
    /// one from 2^19 kept entries up); the one whose kept levels best match DAC's counts wins.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SEED_TRIALS)]
    pub seed_trials: u32,
    /// zstd level (1–22) of the lossless records: kept deltas, tensors only in the fine-tune (companion files:
    /// at least 19). Level 1 is the smallest and fastest on the testbed's real deltas (docs/FORMAT.md, "zstd
    /// level").
    #[arg(long, value_name = "LEVEL", default_value_t = ultradelta::archive::DEFAULT_ZSTD_LEVEL)]
    pub zstd_level: i32,
    /// Store every companion file (tokenizer, config) whole. By default one the base model also has is stored as
    /// a difference from the base's (a copy costs ~200 bytes), and `apply` then needs the base model's folder
    /// with that file unchanged.
    #[arg(long)]
    pub self_contained: bool,
    /// Give each compressed matrix a low-rank part with 4-bit factors (rank 0–16, chosen per tensor from its delta:
    /// the rank that leaves the seeded sample the least predicted error in the same bytes), the seeded sample
    /// coding the rest (record kind 16, which builds before 2026-12-05 cannot apply). Needs seeded positions. [default: the
    /// model family's, measured: on for BERT (+1.0 to +4.9 points of in-domain retention across the MiniLM
    /// testbed's grid; compress is slower, MiniLM 0.4 s → 1.5 s, BERT-base 0.5 s → 3.6 s), off for LLaMA and the
    /// families not measured; README, "Choosing the defaults"]
    #[arg(long, conflicts_with = "no_lowrank_part")]
    pub lowrank_part: bool,
    /// No low-rank part, whatever the model family (the BERT default before 2026-12-05).
    #[arg(long)]
    pub no_lowrank_part: bool,
    /// Code a compressed matrix whose delta moved only some of its rows (a token-embedding table: the rows of the
    /// tokens the fine-tuning saw) as the list of those rows and the record of those rows alone, the other rows
    /// keeping the base's values (record kind 17, which builds before 2026-12-06 cannot apply); a row moved when
    /// its delta's norm is over 4 times the median row's, if at most half the rows did and the others hold at
    /// most 2 % of the delta's energy. Needs seeded positions. [default: the model family's, measured: on for
    /// BERT (MiniLM in-domain retention +0.5 to +1.6 on sre at equal whole-file bytes, jobs within a seed's draw),
    /// off for LLaMA (the rule finds nothing there) and the families not measured; README, "Choosing the
    /// defaults"]
    #[arg(long, conflicts_with = "no_row_subset")]
    pub row_subset: bool,
    /// Code every compressed matrix whole, whatever the model family (the BERT default before 2026-12-06).
    #[arg(long)]
    pub no_row_subset: bool,
    /// Trace-norm-guided rescaling across several fine-tunes compressed together (γᵢ = T_min/Tᵢ; the paper's
    /// setting). Off by default: it cost quality on the testbed (README, "Choosing the defaults").
    #[arg(long, conflicts_with = "no_tngr")]
    pub tngr: bool,
    /// No trace-norm-guided rescaling (γ = 1): the default; kept so ablation scripts can say it.
    #[arg(long)]
    pub no_tngr: bool,
    /// Also export the low-rank factors as a PEFT LoRA adapter into DIR (--method lowrank, one fine-tune).
    #[arg(long, value_name = "DIR")]
    pub lora_out: Option<PathBuf>,
    /// Base checkpoint: a .safetensors file or a Hugging Face model folder (sharded or not).
    #[arg(long, value_name = "PATH")]
    pub base: PathBuf,
    /// Fine-tuned checkpoint(s) of that base. Several need --output-dir (and get TNGR with --tngr).
    #[arg(long, value_name = "PATH", required = true)]
    pub finetuned: Vec<PathBuf>,
    /// Archive to write (one fine-tune).
    #[arg(long, short, value_name = "FILE", conflicts_with = "output_dir")]
    pub output: Option<PathBuf>,
    /// Folder for one archive per fine-tune (several fine-tunes).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Target sparsity over the compressed tensors (fraction of entries dropped).
    #[arg(long, default_value_t = 0.97)]
    pub sparsity: f64,
    /// Quantization bits per kept value [default: the model family's, measured: 3 for BERT and LLaMA, 4 otherwise;
    /// 4 for the baselines].
    #[arg(long)]
    pub bits: Option<u8>,
    /// MSA step δ: low-variance third gets s+δ, mid s, high the remainder.
    #[arg(long, default_value_t = 0.01)]
    pub step: f64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fixed γ multiplier (default: 1; TNGR's γ across several fine-tunes with --tngr).
    #[arg(long, value_name = "F")]
    pub gamma: Option<f64>,
    // The help is an attribute: rustdoc would read `[LO,HI]` in a doc comment as a link.
    #[arg(long, value_name = "LO,HI", value_parser = parse_pair,
          help = "Clamp TNGR's γ to [LO,HI], e.g. 0.5,1 as the paper states")]
    pub gamma_clamp: Option<(f64, f64)>,
    /// Which deltas TNGR's trace norms are computed on.
    #[arg(long, value_parser = choice(TRACE_ON), default_value = "compressed")]
    pub trace_on: TraceOn,
    /// How TNGR's nuclear norms are computed.
    #[arg(long, value_parser = choice(NUCLEAR_NORMS), default_value = "auto")]
    pub nuclear_norm: NuclearNorm,
    /// Extra multiplier on the rescale factor.
    #[arg(long, default_value_t = 1.0)]
    pub rescale_factor: f64,
    /// Rescale survivors by each tensor's own rate (default, measured better) or the global target (paper).
    #[arg(long, value_parser = choice(RESCALES), default_value = "per-tensor")]
    pub rescale: RescaleMode,
    /// Ablation: same sparsity for every tensor instead of MSA (`--allocation uniform`).
    #[arg(long, conflicts_with = "allocation")]
    pub no_msa: bool,
    /// How the target sparsity is spread over the tensors (ultradelta).
    #[arg(long, value_parser = choice(ALLOCATIONS), default_value = "msa-relative")]
    pub allocation: AllocationMode,
    /// --allocation msa-relative: tiers at (1 ∓ F)× the density (1/3 is the paper's δ = 0.01 at s = 0.97).
    #[arg(long, value_name = "F", default_value_t = ultradelta::DEFAULT_TIER_SPREAD)]
    pub tier_spread: f64,
    /// --allocation rate-distortion: density ∝ σ^P (0 is uniform, 1 the squared-error optimum).
    #[arg(long, value_name = "P", default_value_t = 1.0)]
    pub rd_power: f64,
    /// Ablation: plain random drop instead of group-wise (stratified) pruning.
    #[arg(long)]
    pub no_dac: bool,
    /// Compress tensors whose name matches this glob (`*`, `?`).
    #[arg(long = "compress", value_name = "GLOB")]
    pub compress_globs: Vec<String>,
    /// Store these tensors' deltas without loss.
    #[arg(long = "keep", value_name = "GLOB")]
    pub keep_globs: Vec<String>,
    /// Drop these tensors' deltas (the rebuilt model uses the base values).
    #[arg(long = "drop", value_name = "GLOB")]
    pub drop_globs: Vec<String>,
    /// Tensor-selection preset (default: detected from config.json, then tensor names).
    #[arg(long, value_parser = parse_family)]
    pub family: Option<Family>,
    /// The family's token embeddings and untied LM head (LLaMA `embed_tokens`, `lm_head`; BERT/RoBERTa
    /// `word_embeddings`), unless a --compress/--keep/--drop glob names them.
    #[arg(long, value_parser = choice(EMBEDDINGS), default_value = "compress")]
    pub embeddings: EmbeddingPolicy,
    /// The family's learned position-embedding table (BERT/RoBERTa `position_embeddings`), unless a
    /// --compress/--keep/--drop glob names it.
    #[arg(long, value_parser = choice(POSITION_EMBEDDINGS), default_value = "drop")]
    pub position_embeddings: EmbeddingPolicy,
    /// Replace existing output.
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl CompressArgs {
    /// The configuration these flags describe, checked: the one place flags become configuration.
    ///
    /// # Errors
    /// Flags that contradict each other, and [`CompressConfig::validate`]'s errors (which name configuration
    /// fields; `main` adds the flag).
    pub fn config(&self) -> Result<CompressConfig> {
        let mut cfg = CompressConfig {
            method: self.method,
            sparsity: self.sparsity,
            bits: self.bits,
            step: self.step,
            seed: self.seed,
            gamma: self.gamma,
            rescale_factor: self.rescale_factor,
            rescale: self.rescale,
            allocation: if self.no_msa {
                AllocationMode::Uniform
            } else {
                self.allocation
            },
            tier_spread: self.tier_spread,
            rd_power: self.rd_power,
            pruning: if self.no_dac {
                PruningMode::Random
            } else {
                PruningMode::Group
            },
            tngr: TngrConfig {
                trace_on: self.trace_on,
                clamp: self.gamma_clamp,
                enabled: self.tngr && !self.no_tngr,
                nuclear_norm: (self.nuclear_norm)(),
            },
            selection: Selection {
                compress: self.compress_globs.clone(),
                keep: self.keep_globs.clone(),
                drop: self.drop_globs.clone(),
                family: self.family,
                embeddings: self.embeddings,
                position_embeddings: self.position_embeddings,
            },
            quantize: !self.no_quant,
            rank: self.rank,
            compeft_alpha: self.compeft_alpha,
            target_ratio: self.target_ratio,
            target_size: self.target_size,
            // Filled in below, once the method and the ablations are known.
            positions: PositionCodec::Golomb,
            values: ValueCodec::Packed,
            codec: self.codec,
            seed_trials: self.seed_trials,
            zstd_level: self.zstd_level,
            self_contained: self.self_contained,
            quant_fit: self.quant_fit,
            lowrank_part: match (self.lowrank_part, self.no_lowrank_part) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            row_subset: match (self.row_subset, self.no_row_subset) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
        };
        // Unnamed codecs: the project's where they apply, else the paper's (`CompressConfig::default_codecs`); a
        // codec the user names is checked by `validate` as given.
        let (positions, values) = cfg.default_codecs();
        cfg.positions = self.positions.unwrap_or(positions);
        cfg.values = self.values.unwrap_or(values);
        if let Some(preset) = self.preset {
            cfg = preset.apply_to(cfg);
        }
        if cfg.tngr.clamp.is_some() && !cfg.tngr.enabled {
            bail!("--gamma-clamp clamps TNGR's γ: add --tngr (TNGR is off by default)");
        }
        if self.no_quant && cfg.method != Method::Ultradelta {
            bail!("--no-quant applies to --method ultradelta only");
        }
        if self.lora_out.is_some() && (cfg.method != Method::Lowrank || self.output.is_none()) {
            bail!("--lora-out needs --method lowrank and one fine-tune (--output)");
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The flag that sets the configuration field `field` (as [`ultradelta::Error::InvalidConfig`] names it).
pub fn flag_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "method" => "--method",
        "sparsity" => "--sparsity",
        "bits" => "--bits",
        "step" => "--step",
        "seed" => "--seed",
        "gamma" => "--gamma",
        "rescale_factor" => "--rescale-factor",
        "rescale" => "--rescale",
        "allocation" => "--allocation",
        "tier_spread" => "--tier-spread",
        "rd_power" => "--rd-power",
        "pruning" => "--no-dac",
        "tngr.enabled" => "--tngr",
        "tngr.trace_on" => "--trace-on",
        "tngr.clamp" => "--gamma-clamp",
        "tngr.nuclear_norm" => "--nuclear-norm",
        "selection.compress" => "--compress",
        "selection.keep" => "--keep",
        "selection.drop" => "--drop",
        "selection.family" => "--family",
        "selection.embeddings" => "--embeddings",
        "selection.position_embeddings" => "--position-embeddings",
        "quantize" => "--no-quant",
        "rank" => "--rank",
        "compeft_alpha" => "--compeft-alpha",
        "target_ratio" => "--target-ratio",
        "target_size" => "--target-size",
        "positions" => "--positions",
        "values" => "--values",
        "codec" => "--codec",
        "seed_trials" => "--seed-trials",
        "zstd_level" => "--zstd-level",
        "quant_fit" => "--quant-fit",
        "lowrank_part" => "--lowrank-part",
        _ => return None,
    })
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Base checkpoint the archive was made against: its folder, or a weight file in it (companion files stored
    /// as differences from the base's, `inspect` lists them, are read from that folder).
    #[arg(long, value_name = "PATH")]
    pub base: PathBuf,
    /// Folder to write the rebuilt checkpoint into.
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,
    /// Shard the output above this many bytes (default 5 GB, like Hugging Face).
    #[arg(long, value_name = "BYTES")]
    pub max_shard_size: Option<u64>,
    /// Replace an existing output folder.
    #[arg(long)]
    pub force: bool,
    /// The archive.
    pub archive: PathBuf,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The archive.
    pub archive: PathBuf,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Also check that the archive applies to this base checkpoint (rebuilds every tensor in memory).
    #[arg(long, value_name = "PATH")]
    pub base: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The archive.
    pub archive: PathBuf,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Base checkpoint.
    #[arg(long, value_name = "PATH")]
    pub base: PathBuf,
    /// The fine-tuned checkpoint the archive was made from.
    #[arg(long, value_name = "PATH")]
    pub finetuned: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The archive.
    pub archive: PathBuf,
}

fn parse_family(s: &str) -> Result<Family, String> {
    s.parse()
}

/// A byte count with an optional unit: none or `B` (bytes), `K`/`KB`, `M`/`MB`, `G`/`GB`, `T`/`TB` (powers of
/// 1000), `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024); letters in any case, a fraction allowed (`1.5GiB`), rounded
/// down to whole bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("expected a byte count such as 12000000, 12M (10^6) or 1.5GiB (2^30), got \"{s}\"")
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let scale: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024f64.powi(2),
        "gi" | "gib" => 1024f64.powi(3),
        "ti" | "tib" => 1024f64.powi(4),
        _ => return Err(bad()),
    };
    if num.is_empty() {
        return Err(bad());
    }
    // Whole numbers without a unit stay exact integers.
    if scale == 1.0 && !num.contains('.') {
        return num.parse::<u64>().map_err(|_| bad());
    }
    let x: f64 = num.parse().map_err(|_| bad())?;
    let bytes = (x * scale).floor();
    if !(bytes.is_finite() && bytes < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

fn parse_pair(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("expected LO,HI, got \"{s}\""))?;
    let p = |x: &str| x.trim().parse::<f64>().map_err(|e| format!("\"{x}\": {e}"));
    Ok((p(a)?, p(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_take_decimal_and_binary_units() {
        for (text, bytes) in [
            ("12000000", 12_000_000u64),
            ("12M", 12_000_000),
            ("12mb", 12_000_000),
            ("1.5GiB", 1_610_612_736),
            ("1.5 gib", 1_610_612_736),
            ("64KiB", 65_536),
            ("3k", 3_000),
            ("2T", 2_000_000_000_000),
            ("100B", 100),
            ("2.5", 2),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        for text in ["", "M", "12X", "-3M", "1.2.3K", "12 MiBs", "1e9"] {
            let err = parse_bytes(text).unwrap_err();
            assert!(
                err.contains("byte count") && err.contains(text),
                "{text}: {err}"
            );
        }
    }

    /// Each choice is spelled as the configuration (and the archive's params) spell its value.
    #[test]
    fn spellings_are_the_configuration_names() {
        macro_rules! check {
            ($($values:expr),*) => {$(
                for (name, _, value) in $values {
                    assert_eq!(serde_json::to_value(value).unwrap(), *name);
                }
            )*};
        }
        check!(METHODS, PRESETS, EMBEDDINGS, POSITIONS, VALUES, CODECS, RESCALES, TRACE_ON);
        for (name, _, value) in NUCLEAR_NORMS {
            let v = serde_json::to_value(value()).unwrap();
            assert!(v == *name || v.get(name).is_some(), "{name}: {v}");
        }
        for m in Method::ALL {
            assert!(METHODS.iter().any(|(_, _, v)| *v == m), "{m}");
        }
    }

    /// Every field a configuration error can name has a flag (one invalid value per check of `validate`).
    #[test]
    fn every_invalid_field_has_a_flag() {
        let d = CompressConfig::default;
        let invalid = [
            CompressConfig {
                sparsity: 1.5,
                ..d()
            },
            CompressConfig {
                bits: Some(0),
                ..d()
            },
            CompressConfig { step: 1.0, ..d() },
            CompressConfig {
                rescale_factor: 0.0,
                ..d()
            },
            CompressConfig {
                method: Method::Lowrank,
                rank: 0,
                ..d()
            },
            CompressConfig {
                compeft_alpha: Some(-1.0),
                ..d()
            },
            CompressConfig {
                target_ratio: Some(0.0),
                ..d()
            },
            CompressConfig {
                target_size: Some(0),
                ..d()
            },
            CompressConfig {
                method: Method::Dare,
                positions: PositionCodec::Seeded,
                ..d()
            },
            CompressConfig {
                method: Method::Quant,
                values: ValueCodec::Entropy,
                ..d()
            },
            CompressConfig {
                method: Method::Dare,
                codec: CodecChoice::Auto,
                ..d()
            },
            CompressConfig {
                codec: CodecChoice::Auto,
                quantize: false,
                ..d()
            },
            CompressConfig {
                positions: PositionCodec::Seeded,
                pruning: PruningMode::Random,
                ..d()
            },
            CompressConfig {
                seed_trials: 0,
                ..d()
            },
            CompressConfig {
                zstd_level: 0,
                ..d()
            },
            CompressConfig {
                gamma: Some(0.0),
                ..d()
            },
            CompressConfig {
                tngr: TngrConfig {
                    clamp: Some((2.0, 1.0)),
                    ..TngrConfig::default()
                },
                ..d()
            },
        ];
        for cfg in invalid {
            match cfg.validate() {
                Err(ultradelta::Error::InvalidConfig { field, .. }) => {
                    assert!(flag_of(field).is_some(), "{field}")
                }
                other => panic!("{cfg:?}: {other:?}"),
            }
        }
    }

    fn try_parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut argv = vec![
            "ultradelta",
            "compress",
            "--base",
            "b",
            "--finetuned",
            "f",
            "-o",
            "a",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
    }

    fn parse(extra: &[&str]) -> CompressArgs {
        match try_parse(extra).unwrap().command {
            Command::Compress(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn default_flags_are_the_default_configuration() {
        assert_eq!(parse(&[]).config().unwrap(), CompressConfig::default());
    }

    #[test]
    fn the_paper_preset_keeps_what_is_not_the_method() {
        let cfg = parse(&["--preset", "paper", "--seed", "7", "--zstd-level", "3"])
            .config()
            .unwrap();
        assert_eq!(
            cfg,
            CompressConfig {
                seed: 7,
                zstd_level: 3,
                ..CompressConfig::paper()
            }
        );
        // The paper's codecs are part of the preset: seeded positions change which entries are kept.
        assert_eq!(cfg.positions, PositionCodec::Golomb);
        assert_eq!(cfg.values, ValueCodec::Packed);
        for flags in [
            ["--positions", "seeded"],
            ["--values", "entropy"],
            ["--codec", "auto"],
        ] {
            let mut args = vec!["--preset", "paper"];
            args.extend(flags);
            assert!(try_parse(&args).is_err(), "{flags:?}");
        }
    }
}
