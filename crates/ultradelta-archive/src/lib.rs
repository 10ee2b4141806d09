//! The UltraDelta archive format: Golomb-coded positions, bit-packed levels, lossless records, streaming writer,
//! random-access reader. This crate owns every byte of a `.udelta` file — the preamble, the records, the JSON index
//! ([`Manifest`]) and the trailer, specified in `docs/FORMAT.md` — and the codecs inside it (Golomb-coded positions,
//! bit packing, rANS, byte-plane shuffled zstd; internal). Each record kind's bytes are owned by one module (the kind
//! table is [`RecordKind`]): its encoding, its decoding from untrusted bytes, its exact encoded length
//! ([`Record::encoded_len`]) and, with its payload type, its decoding formula ([`Record::add_delta_into`]). It must
//! NOT know how deltas are computed: it never quantizes, prunes, allocates sparsity or rescales, and never opens a
//! safetensors checkpoint; it takes finished [`Record`]s and gives them back. Its only workspace dependency is
//! `ultradelta-core` (dtype codes, [`QuantParams`], the seeded position sampler), re-exported as [`DType`] and
//! [`QuantParams`].
//!
//! ```
//! use ultradelta_archive::{
//!     ArchiveReader, ArchiveWriter, DType, FinetunedInfo, Policy, QuantParams, Record, SparseRecord, TensorEntry,
//! };
//! # fn main() -> ultradelta_archive::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("ultradelta-archive-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("delta.udelta");
//! let mut w = ArchiveWriter::create(&path, true)?;
//! let sparse = SparseRecord {
//!     numel: 6,
//!     quant: QuantParams { bits: 2, lo: -0.5, step: 0.25 },
//!     scale: 2.0,
//!     positions: vec![1, 4],
//!     levels: vec![0, 3],
//! };
//! let entry = TensorEntry::new("layer.weight", vec![2, 3], DType::BF16, Policy::Compress);
//! w.write_tensor(entry, &Record::Sparse(sparse))?;
//! w.add_file("config.json", b"{}")?;
//! w.finish("ultradelta", serde_json::json!({"sparsity": 0.97}), 1.0, "0123456789abcdef", FinetunedInfo::default())?;
//!
//! let r = ArchiveReader::open(&path)?;
//! let Record::Sparse(s) = r.read_record("layer.weight")? else { unreachable!() };
//! assert_eq!(s.to_dense(1.0), [0.0, -1.0, 0.0, 0.0, 0.5, 0.0]);
//! assert_eq!(r.read_file("config.json")?, b"{}");
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

mod bitpack;
mod bits;
mod coded;
mod error;
mod golomb;
pub mod json_layout;
mod kinds;
mod lossless;
mod manifest;
mod rans;
mod reader;
mod record;
mod writer;

pub use coded::{record_cost, CodedSparseRecord, LevelCoding, Positions, RecordCost};
pub use error::{Error, Result};
pub use half;
pub use kinds::appended_rows::AppendedRowsRecord;
pub use kinds::dense_levels::DenseLevelsRecord;
pub use kinds::lowrank_f16::LowRankRecord;
pub use kinds::lowrank_seeded_rans::LowRankSparseRecord;
pub use kinds::row_subset::RowSubsetRecord;
pub use kinds::sparse_f16::SparseValuesRecord;
pub use kinds::sparse_golomb::SparseRecord;
pub use kinds::sparse_sign::SignRecord;
pub use kinds::RecordKind;
pub use lossless::{tensor_zstd_level, SMALL_LOSSLESS_BYTES};
pub use manifest::{
    BaseFile, FileEntry, FinetunedInfo, Limits, Manifest, Policy, TensorEntry, KIND_NONE,
};
pub use reader::{ArchiveReader, MAX_ZSTD_EXPANSION};
pub use record::{
    companion_zstd_level, decode_diff_into, decode_full_into, decode_header, decode_record,
    decode_record_expecting, decode_xor_into, diff_bytes, encode_file_record,
    encode_file_record_against, encode_record, BaseFileRef, EncodedRecord, Record, RecordHeader,
};
pub use ultradelta_core::{DType, QuantParams};
pub use writer::{compress_index, ArchiveWriter, WriterOptions, DEFAULT_ZSTD_LEVEL};

/// First 8 bytes of every archive: `0x89 'U' 'D' 'E' 'L' 'T' 'A' '\n'`.
pub const MAGIC: [u8; 8] = *b"\x89UDELTA\n";

/// Format version written after the magic (u32 little-endian). Readers read every version from
/// [`OLDEST_FORMAT_VERSION`] up to this one and refuse any other. Version 2 added the content SHA-256 to the trailer.
pub const FORMAT_VERSION: u32 = 2;

/// The oldest format version a reader still reads (version 1: the 32-byte trailer without a SHA-256).
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// Preamble flag bit 0: the index is one zstd frame (declaring its content size) of the compact JSON index, not
/// the JSON itself. Written by default since 2026-12-04; a reader that predates it refuses the archive with
/// [`Error::UnsupportedFlags`]. The trailer's index length and xxh3-64 are those of the stored (compressed) bytes.
pub const FLAG_INDEX_ZSTD: u32 = 1;

/// Preamble flag bits this version understands: [`FLAG_INDEX_ZSTD`].
pub const KNOWN_FLAGS: u32 = FLAG_INDEX_ZSTD;

/// Last 8 bytes of every finished archive: `'U' 'D' 'E' 'L' 'T' 'A' 'I' 'X'`.
pub const TRAILER_MAGIC: [u8; 8] = *b"UDELTAIX";

/// Bytes before the first record: magic (8), version (4), flags (4).
pub const PREAMBLE_LEN: u64 = 16;

/// Bytes of the trailer: index offset (8), index length (8), index xxh3-64 (8), content SHA-256 (32), trailer
/// magic (8). The SHA-256 covers every byte of the file before it (`[0, size - 40)`).
pub const TRAILER_LEN: u64 = 64;

/// Bytes of a format-version-1 trailer: index offset (8), index length (8), index xxh3-64 (8), trailer magic (8).
pub const TRAILER_LEN_V1: u64 = 32;

/// Bytes of the trailer of an archive of format `version` (1 or 2).
pub const fn trailer_len(version: u32) -> u64 {
    if version == 1 {
        TRAILER_LEN_V1
    } else {
        TRAILER_LEN
    }
}

/// Bytes at the end of a version-2 archive that its content SHA-256 does not cover: the digest itself and the
/// trailer magic.
pub const SHA256_TAIL: u64 = 40;

/// Binary entropy `H2(d) = -d log2 d - (1-d) log2 (1-d)` in bits (0 at d = 0 and d = 1).
pub fn h2(d: f64) -> f64 {
    if d <= 0.0 || d >= 1.0 {
        return 0.0;
    }
    -d * d.log2() - (1.0 - d) * (1.0 - d).log2()
}

/// The paper's v2 compression ratio against 16-bit dense (ALGORITHM.md §5): `16 / (bits * density)`; positions
/// are counted as free.
pub fn paper_v2_ratio(bits: f64, density: f64) -> f64 {
    16.0 / (bits * density)
}

/// The paper's v3 (camera-ready) ratio: `16 / (bits * density + H2(density))`, positions at their entropy.
pub fn paper_v3_ratio(bits: f64, density: f64) -> f64 {
    16.0 / (bits * density + h2(density))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round1(x: f64) -> f64 {
        (x * 10.0).round() / 10.0
    }

    #[test]
    fn paper_ratios() {
        assert_eq!(round1(paper_v2_ratio(4.0, 0.03)), 133.3);
        assert_eq!(round1(paper_v3_ratio(4.0, 0.03)), 50.9);
        assert_eq!(round1(paper_v3_ratio(4.0, 0.01)), 132.5);
        assert_eq!(round1(paper_v3_ratio(4.0, 0.05)), 32.9);
        assert_eq!(round1(paper_v3_ratio(4.0, 0.10)), 18.4);
        // DARE with 16-bit values at 97%.
        assert_eq!(round1(paper_v3_ratio(16.0, 0.03)), 23.7);
        assert_eq!(h2(0.0), 0.0);
        assert_eq!(h2(1.0), 0.0);
        assert!((h2(0.5) - 1.0).abs() < 1e-15);
    }

    #[test]
    fn constants_are_consistent() {
        assert_eq!(MAGIC.len() + 8, PREAMBLE_LEN as usize);
        assert_eq!(MAGIC[0], 0x89);
        assert_ne!(MAGIC, TRAILER_MAGIC);
    }

    #[test]
    fn reader_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<ArchiveReader>();
        fn send<T: Send>() {}
        send::<ArchiveWriter>();
    }
}
