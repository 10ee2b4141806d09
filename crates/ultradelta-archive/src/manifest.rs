//! The JSON index ("manifest") of an archive and the reader's limits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use ultradelta_core::DType;

/// What the compressor decided for one tensor.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Lossy UltraDelta compression (a `sparse-golomb` record).
    Compress,
    /// Delta kept without loss (an `xor-zstd` record).
    Keep,
    /// Delta dropped: reconstruction uses the base value (no record, kind `none`).
    Drop,
    /// Present only in the fine-tuned model: stored whole (a `full-zstd` record).
    New,
}

/// `TensorEntry::kind` of a tensor without a record (policy `drop`).
pub const KIND_NONE: &str = "none";

/// Serde for `DType` as its safetensors name, so the index format does not depend on another crate's derive.
mod dtype_name {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};
    use ultradelta_core::DType;

    pub(crate) fn serialize<S: Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.name())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DType, D::Error> {
        let name = String::deserialize(d)?;
        DType::parse(&name).ok_or_else(|| D::Error::custom(format!("unknown dtype \"{name}\"")))
    }
}

/// Serde for an optional `DType` as its safetensors name (absent when `None`).
mod opt_dtype_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use ultradelta_core::DType;

    pub(crate) fn serialize<S: Serializer>(d: &Option<DType>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::dtype_name::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DType>, D::Error> {
        #[derive(Deserialize)]
        struct Named(#[serde(with = "super::dtype_name")] DType);
        Ok(Option::<Named>::deserialize(d)?.map(|Named(d)| d))
    }
}

/// Per-tensor index entry.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct TensorEntry {
    /// Tensor name (unique in the archive).
    pub name: String,
    /// Shape of the fine-tuned tensor, outermost first.
    pub shape: Vec<usize>,
    /// Dtype of the fine-tuned tensor.
    #[serde(with = "dtype_name")]
    pub dtype: DType,
    /// Dtype of the base's tensor when it differs from the fine-tune's (both floating point; absent from the index
    /// when they are the same). The delta is then taken in f32 and the rebuilt tensor written in `dtype`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_dtype_name"
    )]
    pub base_dtype: Option<DType>,
    /// Name of the base's tensor when it differs from `name` (a model prefix added, removed or replaced:
    /// `bert.encoder…` against `encoder…`, `transformer.h…` against `model.h…`; the base's tied embedding for an
    /// untied head; absent from the index when they are the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_name: Option<String>,
    /// Rows of the base's tensor when the fine-tune added rows to it (a vocabulary resized for added tokens; only
    /// with record kind `appended-rows`, and absent from the index otherwise): the base's tensor is
    /// `[base_rows, shape[1]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_rows: Option<usize>,
    /// What was done with it.
    pub policy: Policy,
    /// Record kind name: `"sparse-golomb" | "xor-zstd" | "full-zstd" | "none"`. Filled by the writer.
    pub kind: String,
    /// Absolute byte offset of the record in the file (0 for `none`). Filled by the writer.
    pub offset: u64,
    /// Byte length of the record (0 for `none`). Filled by the writer.
    pub length: u64,
    /// xxh3-64 of the record bytes, 16 lowercase hex digits (empty for `none`). Filled by the writer.
    pub checksum: String,
    /// xxh3-64 (hex) of the base tensor's bytes, if the compressor recorded it.
    pub base_hash: Option<String>,
    /// Element count (product of the shape). Filled by the writer.
    pub numel: u64,
    /// Stored entries: kept positions for sparse records, `numel` for lossless ones, 0 for `none`. Filled by the
    /// writer.
    pub kept: u64,
    /// Achieved sparsity `1 - kept / numel` (0 for an empty tensor). Filled by the writer.
    pub sparsity: f64,
    /// Allocated target sparsity, if any.
    pub rate: Option<f64>,
    /// MSA tier ("low" / "mid" / "high"), if any.
    pub tier: Option<String>,
    /// Free-form per-tensor data (e.g. statistics); keys are kept sorted.
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl TensorEntry {
    /// An entry with the caller's fields set, `numel` from the shape (saturating), and every other field empty
    /// (the writer fills kind, offset, length, checksum, numel, kept and sparsity).
    pub fn new(
        name: impl Into<String>,
        shape: Vec<usize>,
        dtype: DType,
        policy: Policy,
    ) -> TensorEntry {
        let numel = shape.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64));
        TensorEntry {
            name: name.into(),
            shape,
            dtype,
            base_dtype: None,
            base_name: None,
            base_rows: None,
            policy,
            kind: String::new(),
            offset: 0,
            length: 0,
            checksum: String::new(),
            base_hash: None,
            numel,
            kept: 0,
            sparsity: 0.0,
            rate: None,
            tier: None,
            extra: serde_json::Map::new(),
        }
    }

    /// The dtype the base's tensor must have: [`Self::base_dtype`] when set, else the fine-tune's.
    pub fn expected_base_dtype(&self) -> DType {
        self.base_dtype.unwrap_or(self.dtype)
    }

    /// The shape the base's tensor must have: the entry's, with [`Self::base_rows`] rows when set.
    pub fn expected_base_shape(&self) -> Vec<usize> {
        let mut shape = self.shape.clone();
        if let (Some(rows), Some(first)) = (self.base_rows, shape.first_mut()) {
            *first = rows;
        }
        shape
    }

    /// The base's tensor this entry is rebuilt from: [`Self::base_name`] when set, else `name`.
    pub fn base_tensor(&self) -> &str {
        self.base_name.as_deref().unwrap_or(&self.name)
    }

    /// Product of the shape, `None` on overflow.
    pub fn shape_numel(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(u64::try_from(d).ok()?))
    }
}

/// A companion file (config.json, tokenizer files, ...) stored in the archive.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct FileEntry {
    /// Path relative to the model folder (`config.json`, `1_Pooling/config.json`).
    pub name: String,
    /// Absolute byte offset of its record.
    pub offset: u64,
    /// Byte length of its record.
    pub length: u64,
    /// xxh3-64 of the record bytes (16 lowercase hex digits).
    pub checksum: String,
    /// Size of the file itself (decompressed).
    pub size: u64,
    /// The base model's file of the same name its record (kind `file-zstd-base`) was compressed against; `None`
    /// (and absent from the index) for a file stored whole (kind `file-zstd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseFile>,
}

/// The base model's companion file a `file-zstd-base` record needs, as the index names it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct BaseFile {
    /// Its size in bytes.
    pub size: u64,
    /// xxh3-64 of its bytes, 16 lowercase hex digits.
    pub xxh3: String,
}

impl From<crate::BaseFileRef> for BaseFile {
    fn from(r: crate::BaseFileRef) -> Self {
        BaseFile {
            size: r.size,
            xxh3: format!("{:016x}", r.xxh3),
        }
    }
}

/// What is known about the fine-tuned checkpoint the archive was made from.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug, Default)]
pub struct FinetunedInfo {
    /// Size of its weight files on disk, in bytes.
    pub size_on_disk: u64,
    /// Its safetensors `__metadata__`.
    pub metadata: BTreeMap<String, String>,
    /// Where it came from, as the caller describes it (path or model id).
    pub source: String,
}

/// The archive-level manifest, stored as the JSON index.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Manifest {
    /// Same as the preamble's format version.
    pub format_version: u32,
    /// Compression method (e.g. `"ultradelta"`).
    pub method: String,
    /// Method parameters (sparsity, bits, seed, ...), as the caller gives them.
    pub params: serde_json::Value,
    /// Global rescaling multiplier γ applied on reconstruction.
    pub gamma: f64,
    /// `Checkpoint::fingerprint` of the base model the deltas apply to.
    pub base_fingerprint: String,
    /// The fine-tuned checkpoint.
    pub finetuned: FinetunedInfo,
    /// Every tensor, in write order.
    pub tensors: Vec<TensorEntry>,
    /// Every companion file, in write order.
    pub files: Vec<FileEntry>,
    /// Software that wrote the archive, as the caller passes it (e.g. `"ultradelta 0.1.0"`).
    pub created_by: String,
}

/// Caps the reader applies to sizes declared by the file, before allocating anything sized from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest JSON index accepted (default 256 MiB).
    pub max_index_bytes: u64,
    /// Most dimensions a tensor may have (default 8).
    pub max_ndim: usize,
    /// Most elements a tensor may have (default 2^40).
    pub max_numel: u64,
    /// Largest companion file (decompressed) accepted (default 1 GiB).
    pub max_file_bytes: u64,
    /// Most levels an entropy-coded levels block with seeded positions (kind 12, also as kind 16's residual) or of
    /// kind 16's factors may declare (default 2^30):
    /// such a block can decode many levels from few bytes, so this caps what a hostile record can make the
    /// reader allocate.
    pub max_coded_levels: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_index_bytes: 256 << 20,
            max_ndim: 8,
            max_numel: 1 << 40,
            max_file_bytes: 1 << 30,
            max_coded_levels: 1 << 30,
        }
    }
}
