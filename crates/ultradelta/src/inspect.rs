//! inspect: what an archive holds and what it costs, with the paper's nominal ratios.

use std::collections::BTreeMap;

use serde::Serialize;
use ultradelta_archive::{
    paper_v2_ratio, paper_v3_ratio, record_cost, ArchiveReader, Policy, RecordCost, RecordKind,
};

/// One tensor as `inspect` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct TensorSummary {
    /// Tensor name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Original dtype.
    pub dtype: String,
    /// The base's dtype when it differs from the tensor's (the index's `base_dtype`), `None` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_dtype: Option<String>,
    /// The base's tensor name when it differs from the tensor's (the index's `base_name`), `None` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_name: Option<String>,
    /// Rows of the base's tensor when the fine-tune added rows to it (the index's `base_rows`, record kind
    /// `appended-rows`: the added rows are stored whole), `None` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_rows: Option<usize>,
    /// compress, keep, drop or new.
    pub policy: Policy,
    /// Record kind in the file.
    pub kind: String,
    /// Achieved sparsity (fraction of the delta's entries not stored); 0 for lossless records; for a record with a
    /// low-rank part (kind 16), its sparse residual's.
    pub sparsity: f64,
    /// Rank of the tensor's low-rank part (kind 16, or nested in kind 17), `None` for the other kinds.
    pub lowrank_rank: Option<u64>,
    /// Rows listed by a `row-subset` record (kind 17; the other rows keep the base's values), `None` for the other
    /// kinds.
    pub listed_rows: Option<u64>,
    /// Allocated sparsity rate (compressed tensors).
    pub rate: Option<f64>,
    /// MSA tier (compressed tensors, under MSA).
    pub tier: Option<String>,
    /// Bytes of this tensor's record in the file.
    pub bytes: u64,
}

/// Compression ratios of an archive, the whole file first.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// The whole file: the fine-tuned checkpoint as stored on disk (its `.safetensors` weight files plus, when
    /// sharded, the shard index `model.safetensors.index.json`; companion files such as `config.json` and the
    /// tokenizer are not counted) over the whole archive file (every byte of it: records, companion files, index).
    pub whole_checkpoint: f64,
    /// Bytes of the fine-tuned checkpoint counted by `whole_checkpoint` (as recorded at compression).
    pub finetuned_bytes: u64,
    /// Compressed tensors' size at 16 bits per entry over their records' real bytes.
    pub real: Option<f64>,
    /// The paper's v2 count 16/(b·d) for the configured sparsity and bits. `None` (JSON null) unless the archive
    /// is UltraDelta with quantization: the count describes sparse b-bit levels only.
    pub paper_v2: Option<f64>,
    /// The paper's v3 count 16/(b·d + H₂(d)) for the configured sparsity and bits (`None` as for `paper_v2`).
    pub paper_v3: Option<f64>,
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
    /// SHA-256 of the archive's content as stored in its trailer (format version 2 and later; `None` for version
    /// 1), 64 hex digits: read, not checked (`verify` checks it). The value to publish beside a download.
    pub content_sha256: Option<String>,
    /// Base checkpoint fingerprint.
    pub base_fingerprint: String,
    /// Entries of the compressed tensors (the paper's denominator).
    pub compressed_entries: u64,
    /// Entries kept (non-zero) in the compressed tensors' sparse records: for a record with a low-rank part (kind
    /// 16), its sparse residual's; every entry of a dense low-rank record (kind 8).
    pub kept_entries: u64,
    /// Bytes of the compressed tensors' records.
    pub compressed_bytes: u64,
    /// Every tensor.
    pub tensors: Vec<TensorSummary>,
    /// Companion files stored (config, tokenizer…).
    pub files: Vec<String>,
    /// Those of [`files`](Self::files) stored as differences from the base model's file of the same name (kind
    /// `file-zstd-base`): `apply` needs the base model's folder with these files unchanged.
    pub files_against_base: Vec<String>,
    /// The ratios.
    pub ratio: Ratios,
    /// Where the file's bytes go.
    pub breakdown: ByteBreakdown,
    /// Where the bytes of the compressed tensors' sparse levels go (UltraDelta records: kinds 1, 10–12 and 16).
    pub codec: Option<CodecSummary>,
}

/// Where an archive's bytes go: every byte of the file is in exactly one of these.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ByteBreakdown {
    /// Records of the compressed tensors (policy `compress`): what the paper's count is about.
    pub compressed_tensors: u64,
    /// Records of the deltas kept without loss (policy `keep`: norms, biases, …).
    pub kept_tensors: u64,
    /// How many tensors are kept without loss.
    pub kept_count: usize,
    /// Records of the tensors only the fine-tune has, stored whole (policy `new`).
    pub new_tensors: u64,
    /// Records of the companion files (config, tokenizer, …).
    pub companion_files: u64,
    /// The rest: the index, the preamble and the trailer.
    pub index_and_framing: u64,
}

/// Bits per kept entry of an archive's sparse-level records, split into positions, values and low-rank parts, and
/// the density they buy: with seeded positions or entropy-coded levels the same bytes keep more entries. A record
/// with a low-rank part (kind 16) counts as its residual's codec, its kept entries are the residual's, and its
/// factors' bits are `lowrank_bits_per_kept`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CodecSummary {
    /// Codec of the records (`golomb+packed`, `seeded+entropy`, …; `mixed` if they differ, e.g. under auto).
    pub codec: String,
    /// Records of each codec.
    pub records: BTreeMap<String, usize>,
    /// Kept entries over all entries of these records.
    pub density: f64,
    /// Entries kept in these records.
    pub kept_entries: u64,
    /// Bits of the positions streams per kept entry (0 for seeded positions).
    pub position_bits_per_kept: f64,
    /// Bits of the levels (packed stream, or rANS words and model table) per kept entry.
    pub value_bits_per_kept: f64,
    /// Bits of the low-rank parts (kind 16: factor levels, scales, their model table) per kept entry.
    pub lowrank_bits_per_kept: f64,
    /// Records with a low-rank part (kind 16), counted in `records` under their residual's codec.
    pub lowrank_records: usize,
    /// Headers and fixed fields per kept entry.
    pub overhead_bits_per_kept: f64,
    /// All record bits per kept entry (the sum of the four above).
    pub bits_per_kept: f64,
}

/// The cost of every compressed tensor's record whose bits [`record_cost`] splits, by tensor name, with the
/// codec it counts as and its length in bytes. Records that cannot be read are left out (`verify` reports them).
fn record_costs(reader: &ArchiveReader) -> BTreeMap<String, (&'static str, RecordCost, u64)> {
    let mut out = BTreeMap::new();
    for e in &reader.manifest().tensors {
        let Some(kind) = RecordKind::from_name(&e.kind) else {
            continue;
        };
        if crate::method::codec::codec_name(kind).is_none()
            && !matches!(
                kind,
                RecordKind::LowrankSeededRans | RecordKind::RowSubset | RecordKind::AppendedRows
            )
        {
            continue;
        }
        let Ok(bytes) = reader.record_bytes(&e.name) else {
            continue;
        };
        let Some(cost) = record_cost(&bytes) else {
            continue;
        };
        // Kinds 16, 17 and 18 count as their (nested) residual's codec.
        let Some(name) = crate::method::codec::codec_name(cost.residual_kind.unwrap_or(kind))
        else {
            continue;
        };
        out.insert(e.name.clone(), (name, cost, bytes.len() as u64));
    }
    out
}

/// Reads the sparse-level records of an archive and splits their bits (see [`CodecSummary`]). Records that
/// cannot be read are left out (`verify` reports them).
pub fn codec_summary(reader: &ArchiveReader) -> Option<CodecSummary> {
    summarise(reader, &record_costs(reader))
}

fn summarise(
    reader: &ArchiveReader,
    costs: &BTreeMap<String, (&'static str, RecordCost, u64)>,
) -> Option<CodecSummary> {
    let mut records = BTreeMap::new();
    let (mut numel, mut kept, mut pos, mut val, mut low, mut total) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut lowrank_records = 0;
    for e in &reader.manifest().tensors {
        let Some((name, cost, len)) = costs.get(&e.name) else {
            continue;
        };
        *records.entry(name.to_string()).or_insert(0) += 1;
        lowrank_records += usize::from(cost.sparse_kept.is_some());
        numel += e.numel;
        kept += cost.sparse_kept.unwrap_or(e.kept);
        pos += cost.position_bits;
        val += cost.value_bits;
        low += cost.lowrank_bits;
        total += 8 * len;
    }
    if records.is_empty() {
        return None;
    }
    let per = |b: u64| b as f64 / kept.max(1) as f64;
    Some(CodecSummary {
        codec: if records.len() == 1 {
            records.keys().next().cloned().unwrap_or_default()
        } else {
            "mixed".into()
        },
        records,
        density: kept as f64 / numel.max(1) as f64,
        kept_entries: kept,
        position_bits_per_kept: per(pos),
        value_bits_per_kept: per(val),
        lowrank_bits_per_kept: per(low),
        lowrank_records,
        overhead_bits_per_kept: per(total.saturating_sub(pos + val + low)),
        bits_per_kept: per(total),
    })
}

/// Summarises an opened archive.
pub fn inspect(reader: &ArchiveReader) -> Inspection {
    let m = reader.manifest();
    let costs = record_costs(reader);
    let mut compressed_entries = 0u64;
    let mut kept_entries = 0u64;
    let mut compressed_bytes = 0u64;
    let tensors: Vec<TensorSummary> = m
        .tensors
        .iter()
        .map(|e| {
            let part = costs
                .get(&e.name)
                .and_then(|(_, c, _)| c.sparse_kept.map(|k| (k, c.rank)));
            if e.policy == Policy::Compress {
                compressed_entries += e.numel;
                kept_entries += part.map_or(e.kept, |(k, _)| k);
                compressed_bytes += e.length;
            }
            TensorSummary {
                name: e.name.clone(),
                shape: e.shape.clone(),
                dtype: e.dtype.name().to_string(),
                base_dtype: e.base_dtype.map(|d| d.name().to_string()),
                base_name: e.base_name.clone(),
                base_rows: e.base_rows,
                policy: e.policy,
                kind: e.kind.clone(),
                sparsity: part.map_or(e.sparsity, |(k, _)| 1.0 - k as f64 / e.numel.max(1) as f64),
                lowrank_rank: part.map(|(_, r)| r),
                listed_rows: costs.get(&e.name).and_then(|(_, c, _)| c.listed_rows),
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
    let paper_style = m.method == crate::Method::Ultradelta.name() && quantized;
    let nominal = |f: fn(f64, f64) -> f64| match (bits, s) {
        (Some(b), Some(s)) if compressed_entries > 0 && paper_style => Some(f(b, 1.0 - s)),
        _ => None,
    };
    let bytes = reader.file_size();
    let of = |p: Policy| m.tensors.iter().filter(move |e| e.policy == p);
    let kept_tensors: u64 = of(Policy::Keep).map(|e| e.length).sum();
    let new_tensors: u64 = of(Policy::New).map(|e| e.length).sum();
    let companion_files: u64 = m.files.iter().map(|f| f.length).sum();
    let breakdown = ByteBreakdown {
        compressed_tensors: compressed_bytes,
        kept_tensors,
        kept_count: of(Policy::Keep).count(),
        new_tensors,
        companion_files,
        // The reader checked that every record and file lies before the index, without overlap.
        index_and_framing: bytes
            .saturating_sub(compressed_bytes + kept_tensors + new_tensors + companion_files),
    };
    Inspection {
        format_version: m.format_version,
        method: m.method.clone(),
        params: m.params.clone(),
        gamma: m.gamma,
        bytes,
        content_sha256: reader.content_sha256_hex(),
        base_fingerprint: m.base_fingerprint.clone(),
        compressed_entries,
        kept_entries,
        compressed_bytes,
        tensors,
        files: m.files.iter().map(|f| f.name.clone()).collect(),
        files_against_base: m
            .files
            .iter()
            .filter(|f| f.base.is_some())
            .map(|f| f.name.clone())
            .collect(),
        ratio: Ratios {
            whole_checkpoint: m.finetuned.size_on_disk as f64 / bytes.max(1) as f64,
            finetuned_bytes: m.finetuned.size_on_disk,
            real: (compressed_bytes > 0)
                .then(|| 2.0 * compressed_entries as f64 / compressed_bytes as f64),
            paper_v2: nominal(paper_v2_ratio),
            paper_v3: nominal(paper_v3_ratio),
        },
        codec: summarise(reader, &costs),
        breakdown,
    }
}
