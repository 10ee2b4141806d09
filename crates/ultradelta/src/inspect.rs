//! inspect: what an archive holds and what it costs, with the paper's nominal ratios.

use serde::Serialize;
use ultradelta_archive::{paper_v2_ratio, paper_v3_ratio, ArchiveReader, Policy};

/// One tensor as `inspect` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct TensorSummary {
    /// Tensor name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Original dtype.
    pub dtype: String,
    /// compress, keep, drop or new.
    pub policy: Policy,
    /// Record kind in the file.
    pub kind: String,
    /// Achieved sparsity (fraction of the delta's entries not stored); 0 for lossless records.
    pub sparsity: f64,
    /// Allocated sparsity rate (compressed tensors).
    pub rate: Option<f64>,
    /// MSA tier (compressed tensors, under MSA).
    pub tier: Option<String>,
    /// Bytes of this tensor's record in the file.
    pub bytes: u64,
}

/// Compression ratios of an archive.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Compressed tensors' size at 16 bits per entry over their records' real bytes.
    pub real: Option<f64>,
    /// The paper's v2 count 16/(b·d) for the configured sparsity and bits. `None` (JSON null) unless the archive
    /// is UltraDelta with quantization: the count describes sparse b-bit levels only.
    pub paper_v2: Option<f64>,
    /// The paper's v3 count 16/(b·d + H₂(d)) for the configured sparsity and bits (`None` as for `paper_v2`).
    pub paper_v3: Option<f64>,
    /// The fine-tuned checkpoint's size on disk over the whole archive file.
    pub whole_checkpoint: f64,
}

/// Everything `ultradelta inspect` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// Archive format version.
    pub format_version: u32,
    /// Method that wrote the archive.
    pub method: String,
    /// Parameters needed to decode and to reproduce it.
    pub params: serde_json::Value,
    /// γ applied to the compressed tensors.
    pub gamma: f64,
    /// File size in bytes.
    pub bytes: u64,
    /// Base checkpoint fingerprint.
    pub base_fingerprint: String,
    /// Entries of the compressed tensors (the paper's denominator).
    pub compressed_entries: u64,
    /// Entries kept (non-zero) in the compressed tensors.
    pub kept_entries: u64,
    /// Bytes of the compressed tensors' records.
    pub compressed_bytes: u64,
    /// Every tensor.
    pub tensors: Vec<TensorSummary>,
    /// Companion files stored (config, tokenizer…).
    pub files: Vec<String>,
    /// The ratios.
    pub ratio: Ratios,
}

/// Summarises an opened archive.
pub fn inspect(reader: &ArchiveReader) -> Inspection {
    let m = reader.manifest();
    let mut compressed_entries = 0u64;
    let mut kept_entries = 0u64;
    let mut compressed_bytes = 0u64;
    let tensors: Vec<TensorSummary> = m
        .tensors
        .iter()
        .map(|e| {
            if e.policy == Policy::Compress {
                compressed_entries += e.numel;
                kept_entries += e.kept;
                compressed_bytes += e.length;
            }
            TensorSummary {
                name: e.name.clone(),
                shape: e.shape.clone(),
                dtype: e.dtype.name().to_string(),
                policy: e.policy,
                kind: e.kind.clone(),
                sparsity: e.sparsity,
                rate: e.rate,
                tier: e.tier.clone(),
                bytes: e.length,
            }
        })
        .collect();
    let param = |k: &str| m.params.get(k).and_then(|v| v.as_f64());
    let (bits, s) = (param("bits"), param("sparsity"));
    // The paper's counts describe sparse + b-bit levels: only UltraDelta with quantization.
    let quantized = m
        .params
        .get("quantize")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let paper_style = m.method == crate::METHOD && quantized;
    let nominal = |f: fn(f64, f64) -> f64| match (bits, s) {
        (Some(b), Some(s)) if compressed_entries > 0 && paper_style => Some(f(b, 1.0 - s)),
        _ => None,
    };
    let bytes = reader.file_size();
    Inspection {
        format_version: m.format_version,
        method: m.method.clone(),
        params: m.params.clone(),
        gamma: m.gamma,
        bytes,
        base_fingerprint: m.base_fingerprint.clone(),
        compressed_entries,
        kept_entries,
        compressed_bytes,
        tensors,
        files: m.files.iter().map(|f| f.name.clone()).collect(),
        ratio: Ratios {
            real: (compressed_bytes > 0)
                .then(|| 2.0 * compressed_entries as f64 / compressed_bytes as f64),
            paper_v2: nominal(paper_v2_ratio),
            paper_v3: nominal(paper_v3_ratio),
            whole_checkpoint: m.finetuned.size_on_disk as f64 / bytes.max(1) as f64,
        },
    }
}
