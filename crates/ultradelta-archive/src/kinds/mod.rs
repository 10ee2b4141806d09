//! The record kinds (docs/FORMAT.md, "Record kinds"): one module per kind owns its payload's bytes.
//!
//! Each kind module has, for its payload (the bytes after the common header):
//!
//! - `FIXED_BYTES`: the fixed part of the payload, as docs/FORMAT.md's constants table lists it;
//! - `encode`: checks the record against the tensor, writes the common header ([`Head::put`]) and the payload;
//! - `encoded_len`: the exact byte length `encode` writes after the header (no offset arithmetic elsewhere);
//! - `decode`: the payload from untrusted bytes, every declared length checked against the bytes present before
//!   anything sized from it is allocated;
//! - `cost`: the split of a stored payload into position and value bits, for the kinds that store levels.
//!
//! The payload types and their decoding formula (`add_into`) live with the kind that stores them (kinds 10–12
//! share [`crate::CodedSparseRecord`]). Adding a kind: one module here, one line in the table below, and the
//! exhaustive matches the compiler then points at (the [`crate::Record`] variant that holds it, if it is new).

use crate::coded::RecordCost;
use crate::record::{Cursor, RecordHeader};
use crate::{Limits, Record, Result};

pub(crate) mod appended_rows;
pub(crate) mod common;
pub(crate) mod dense_levels;
pub(crate) mod dense_sign;
pub(crate) mod diff_zstd;
pub(crate) mod file_zstd;
pub(crate) mod file_zstd_base;
pub(crate) mod file_zstd_base_json;
pub(crate) mod full_zstd;
pub(crate) mod lowrank_f16;
pub(crate) mod lowrank_seeded_rans;
pub(crate) mod row_subset;
pub(crate) mod sparse_f16;
pub(crate) mod sparse_golomb;
pub(crate) mod sparse_golomb_rans;
pub(crate) mod sparse_seeded;
pub(crate) mod sparse_seeded_rans;
pub(crate) mod sparse_sign;
pub(crate) mod xor_zstd;

pub(crate) use common::Head;

/// The kind table: documentation, variant, header code, index name, the module that owns the bytes.
macro_rules! record_kinds {
    ($( $(#[doc = $doc:literal])* $variant:ident = $code:literal, $name:literal, $module:ident; )*) => {
        /// The record kinds of format version 1, with their codes (docs/FORMAT.md, "Record kinds").
        #[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
        pub enum RecordKind {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl RecordKind {
            /// Every record kind, in code order.
            pub const ALL: [RecordKind; record_kinds!(@count $($variant)*)] = [$(RecordKind::$variant),*];

            /// The `kind` byte of the record header.
            pub const fn code(self) -> u8 {
                match self {
                    $(RecordKind::$variant => $code,)*
                }
            }

            /// The name used in the index (`TensorEntry::kind`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(RecordKind::$variant => $name,)*
                }
            }

            /// Bytes of the fixed part of this kind's payload, after the common header (docs/FORMAT.md,
            /// "Constants": `SPARSE_FIXED_BYTES`, …; 8 for the zstd kinds' length field). For kinds 10 and 12 the
            /// part before the model table, for kind 16 the part before the factor scales.
            pub const fn fixed_bytes(self) -> usize {
                match self {
                    $(RecordKind::$variant => $module::FIXED_BYTES,)*
                }
            }
        }

        /// Decodes the payload of a record whose header is `header`, by its kind's module.
        pub(crate) fn decode_payload(
            c: &mut Cursor<'_>,
            header: &RecordHeader,
            limits: &Limits,
        ) -> Result<Record> {
            match header.kind {
                $(RecordKind::$variant => $module::decode(c, header, limits),)*
            }
        }

        /// The position/value split of a stored payload of `kind`; `None` for kinds without levels or a payload
        /// too short for its fixed fields.
        pub(crate) fn payload_cost(kind: RecordKind, c: &mut Cursor<'_>) -> Option<RecordCost> {
            match kind {
                $(RecordKind::$variant => $module::cost(c),)*
            }
        }
    };
    (@count) => { 0usize };
    (@count $x:ident $($xs:ident)*) => { 1usize + record_kinds!(@count $($xs)*) };
}

record_kinds! {
    /// Golomb-coded positions + bit-packed levels.
    SparseGolomb = 1, "sparse-golomb", sparse_golomb;
    /// XOR with the base tensor, byte-plane shuffled, zstd.
    XorZstd = 2, "xor-zstd", xor_zstd;
    /// Whole tensor, byte-plane shuffled, zstd.
    FullZstd = 3, "full-zstd", full_zstd;
    /// Companion file, zstd.
    FileZstd = 4, "file-zstd", file_zstd;
    /// Golomb-coded positions + fp16 values + one scale (DARE, magnitude, UltraDelta without quantization).
    SparseF16 = 5, "sparse-f16", sparse_f16;
    /// Golomb-coded positions + one sign bit each + one magnitude (ComPEFT).
    SparseSign = 6, "sparse-sign", sparse_sign;
    /// One sign bit per entry + one magnitude (BitDelta).
    DenseSign = 7, "dense-sign", dense_sign;
    /// Low-rank fp16 factors U and V.
    LowrankF16 = 8, "lowrank-f16", lowrank_f16;
    /// Every entry's quantization level, bit-packed (quantization alone).
    DenseLevels = 9, "dense-levels", dense_levels;
    /// Golomb-coded positions + rANS-coded levels (UltraDelta `--values entropy`).
    SparseGolombRans = 10, "sparse-golomb-rans", sparse_golomb_rans;
    /// Seeded positions (none stored) + bit-packed levels (UltraDelta `--positions seeded`).
    SparseSeeded = 11, "sparse-seeded", sparse_seeded;
    /// Seeded positions (none stored) + rANS-coded levels (`--positions seeded --values entropy`).
    SparseSeededRans = 12, "sparse-seeded-rans", sparse_seeded_rans;
    /// Companion file, zstd with the base model's file of the same name as the dictionary.
    FileZstdBase = 13, "file-zstd-base", file_zstd_base;
    /// JSON companion file, zstd with the base model's file of the same name re-laid out like it as the
    /// dictionary.
    FileZstdBaseJson = 14, "file-zstd-base-json", file_zstd_base_json;
    /// Lossless delta: the zigzag-mapped integer difference of each element's bits, byte-plane shuffled, zstd.
    DiffZstd = 15, "diff-zstd", diff_zstd;
    /// Low-rank part with quantized, rANS-coded factors + a sparse residual stored as kind 11 or 12 (2-D tensors).
    LowrankSeededRans = 16, "lowrank-seeded-rans", lowrank_seeded_rans;
    /// The delta of a 2-D tensor that is zero outside a listed set of rows: the Golomb-coded row list + a nested
    /// kind-11, 12 or 16 record of the listed rows.
    RowSubset = 17, "row-subset", row_subset;
    /// A 2-D tensor grown by rows its base lacks: a nested lossy record of the delta of the base's rows + the added
    /// rows whole (a nested kind-3 record).
    AppendedRows = 18, "appended-rows", appended_rows;
}

impl RecordKind {
    /// Kind from its header byte.
    pub fn from_code(code: u8) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// Kind from its index name.
    pub fn from_name(name: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The codec name of a kind that stores UltraDelta's sparse levels, as the index's `extra.codec` records it
    /// (docs/FORMAT.md, "Index annotations"): `golomb+packed`, `golomb+entropy`, `seeded+packed`,
    /// `seeded+entropy`; `None` for every other kind.
    pub fn codec_name(self) -> Option<&'static str> {
        match self {
            RecordKind::SparseGolomb => Some("golomb+packed"),
            RecordKind::SparseGolombRans => Some("golomb+entropy"),
            RecordKind::SparseSeeded => Some("seeded+packed"),
            RecordKind::SparseSeededRans => Some("seeded+entropy"),
            RecordKind::XorZstd
            | RecordKind::DiffZstd
            | RecordKind::FullZstd
            | RecordKind::FileZstd
            | RecordKind::FileZstdBase
            | RecordKind::FileZstdBaseJson
            | RecordKind::SparseF16
            | RecordKind::SparseSign
            | RecordKind::DenseSign
            | RecordKind::LowrankF16
            | RecordKind::LowrankSeededRans
            | RecordKind::RowSubset
            | RecordKind::AppendedRows
            | RecordKind::DenseLevels => None,
        }
    }
}
