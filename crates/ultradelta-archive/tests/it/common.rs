//! Shared helpers: a deterministic RNG, the small sample archive, and byte-level surgery on archives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ultradelta_archive::{
    compress_index, trailer_len, ArchiveWriter, FinetunedInfo, Policy, Record, SparseRecord,
    TensorEntry, WriterOptions, FLAG_INDEX_ZSTD, PREAMBLE_LEN, TRAILER_LEN, TRAILER_MAGIC,
};
use ultradelta_core::DType;
use ultradelta_core::QuantParams;
use xxhash_rust::xxh3::xxh3_64;

/// SplitMix64: tiny deterministic generator for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A uniformly random subset of exactly `k` of `0..n`, ascending (Knuth's selection sampling).
pub fn random_positions(rng: &mut Rng, n: u64, k: u64) -> Vec<u64> {
    let mut out = Vec::with_capacity(k as usize);
    let mut needed = k;
    for i in 0..n {
        if needed == 0 {
            break;
        }
        let left = n - i;
        if rng.unit() * (left as f64) < needed as f64 {
            out.push(i);
            needed -= 1;
        }
    }
    out
}

/// One tensor of the sample archive: its entry template and record (`None` = dropped).
pub struct SampleTensor {
    pub entry: TensorEntry,
    pub record: Option<Record>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The tensors of the small sample archive (also the committed v1 fixture).
pub fn sample_tensors() -> Vec<SampleTensor> {
    let q_positions: Vec<u64> = (0..128u64).filter(|i| (i * 7) % 5 == 0).collect();
    let q_levels: Vec<u16> = (0..q_positions.len() as u16)
        .map(|i| (i * 3) % 16)
        .collect();
    let mut q_entry = TensorEntry::new(
        "enc.layer0.attn.q.weight",
        vec![8, 16],
        DType::BF16,
        Policy::Compress,
    );
    q_entry.rate = Some(0.8);
    q_entry.tier = Some("mid".into());
    q_entry.base_hash = Some("00000000deadbeef".into());
    q_entry
        .extra
        .insert("std".into(), serde_json::json!(0.015625));
    let xor: Vec<u8> = (0..64u32)
        .map(|i| if i % 3 == 0 { (i * 29 % 256) as u8 } else { 0 })
        .collect();
    vec![
        SampleTensor {
            entry: q_entry,
            record: Some(Record::Sparse(SparseRecord {
                numel: 128,
                quant: QuantParams {
                    bits: 4,
                    lo: -0.5,
                    step: 0.0625,
                },
                scale: 2.0,
                positions: q_positions,
                levels: q_levels,
            })),
        },
        SampleTensor {
            entry: TensorEntry::new(
                "enc.layer0.mlp.const.weight",
                vec![4, 4],
                DType::F32,
                Policy::Compress,
            ),
            record: Some(Record::Sparse(SparseRecord {
                numel: 16,
                quant: QuantParams {
                    bits: 0,
                    lo: 0.25,
                    step: 0.0,
                },
                scale: 1.5,
                positions: vec![0, 5, 15],
                levels: vec![0, 0, 0],
            })),
        },
        SampleTensor {
            entry: TensorEntry::new(
                "enc.layer0.norm.weight",
                vec![32],
                DType::BF16,
                Policy::Keep,
            ),
            record: Some(Record::XorDelta {
                dtype: DType::BF16,
                xor_bytes: xor,
            }),
        },
        SampleTensor {
            entry: TensorEntry::new("head.new.bias", vec![3], DType::F32, Policy::New),
            record: Some(Record::Full {
                dtype: DType::F32,
                bytes: f32_bytes(&[1.0, -2.5, 3.25]),
            }),
        },
        SampleTensor {
            entry: TensorEntry::new(
                "enc.layer0.attn.k.weight",
                vec![8, 8],
                DType::F16,
                Policy::Drop,
            ),
            record: None,
        },
        SampleTensor {
            entry: TensorEntry::new("scalar", vec![], DType::F32, Policy::Compress),
            record: Some(Record::Sparse(SparseRecord {
                numel: 1,
                quant: QuantParams {
                    bits: 2,
                    lo: 1.0,
                    step: 0.5,
                },
                scale: 1.0,
                positions: vec![0],
                levels: vec![3],
            })),
        },
    ]
}

/// Companion files of the sample archive.
pub fn sample_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "config.json",
            br#"{"model_type": "bert", "hidden_size": 16}"#.to_vec(),
        ),
        ("vocab.txt", b"[PAD]\n[UNK]\nhello\nworld\n".to_vec()),
    ]
}

/// Writes the sample archive to `path` (overwriting), with today's default compressed index.
pub fn write_sample(path: &Path) -> PathBuf {
    write_sample_with(path, true)
}

/// Writes the sample archive to `path` (overwriting), its index compressed or (as before 2026-12-04) plain JSON.
pub fn write_sample_with(path: &Path, index_zstd: bool) -> PathBuf {
    let mut w = ArchiveWriter::create_with(
        path,
        WriterOptions {
            overwrite: true,
            created_by: "ultradelta-archive test fixture".into(),
            index_zstd,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    for t in sample_tensors() {
        match &t.record {
            Some(r) => {
                w.write_tensor(t.entry, r).unwrap();
            }
            None => w.write_dropped(t.entry).unwrap(),
        }
    }
    for (name, bytes) in sample_files() {
        w.add_file(name, &bytes).unwrap();
    }
    let params = serde_json::json!({"sparsity": 0.97, "bits": 4, "seed": 42, "rescale": "global"});
    let finetuned = FinetunedInfo {
        size_on_disk: 12345,
        metadata: BTreeMap::from([("format".to_string(), "pt".to_string())]),
        source: "synthetic/tiny".into(),
    };
    // The size announced before finishing is the finished file's (the compressed index made once for both).
    let size = w
        .size_if_finished(
            "ultradelta",
            params.clone(),
            0.875,
            "0123456789abcdef",
            finetuned.clone(),
        )
        .unwrap();
    let p = w
        .finish("ultradelta", params, 0.875, "0123456789abcdef", finetuned)
        .unwrap();
    assert_eq!(
        std::fs::metadata(&p).unwrap().len(),
        size,
        "size_if_finished"
    );
    p
}

/// The sample archive's bytes (written to a temp dir).
pub fn sample_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = write_sample(&dir.path().join("sample.udelta"));
    std::fs::read(p).unwrap()
}

/// The format version in an archive's preamble.
pub fn version_of(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[8..12].try_into().unwrap())
}

/// (index_offset, index_len) from an archive's trailer (32 bytes in version 1, 64 from version 2).
pub fn index_range(bytes: &[u8]) -> (usize, usize) {
    let t = bytes.len() - trailer_len(version_of(bytes)) as usize;
    let off = u64::from_le_bytes(bytes[t..t + 8].try_into().unwrap()) as usize;
    let len = u64::from_le_bytes(bytes[t + 8..t + 16].try_into().unwrap()) as usize;
    (off, len)
}

/// The preamble's flags word of an archive.
pub fn flags_of(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[12..16].try_into().unwrap())
}

/// The index's JSON bytes: the stored bytes, decompressed when the archive's index is compressed.
pub fn index_plain(bytes: &[u8]) -> Vec<u8> {
    let (off, len) = index_range(bytes);
    let stored = &bytes[off..off + len];
    if flags_of(bytes) & FLAG_INDEX_ZSTD != 0 {
        zstd::bulk::decompress(stored, 1 << 30).unwrap()
    } else {
        stored.to_vec()
    }
}

/// The parsed JSON index of an archive.
pub fn index_json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(&index_plain(bytes)).unwrap()
}

/// Replaces the index with the JSON `new_index`, stored as the archive stores its index (compressed when its
/// preamble says so), and writes a consistent trailer.
pub fn with_index_bytes(bytes: &[u8], new_index: &[u8]) -> Vec<u8> {
    if flags_of(bytes) & FLAG_INDEX_ZSTD != 0 {
        with_stored_index(bytes, &compress_index(new_index, 3).unwrap())
    } else {
        with_stored_index(bytes, new_index)
    }
}

/// Replaces the index's stored bytes with `stored` as they are and writes a consistent trailer (valid offset,
/// length, checksum and, from version 2, content SHA-256).
pub fn with_stored_index(bytes: &[u8], stored: &[u8]) -> Vec<u8> {
    let (off, _) = index_range(bytes);
    let mut out = bytes[..off].to_vec();
    out.extend_from_slice(stored);
    out.extend_from_slice(&(off as u64).to_le_bytes());
    out.extend_from_slice(&(stored.len() as u64).to_le_bytes());
    out.extend_from_slice(&xxh3_64(stored).to_le_bytes());
    if version_of(bytes) >= 2 {
        reseal_sha256(&mut out);
        return out;
    }
    out.extend_from_slice(&TRAILER_MAGIC);
    out
}

/// Appends the content SHA-256 of `out` (everything so far) and the trailer magic: the end of a version-2 archive.
pub fn reseal_sha256(out: &mut Vec<u8>) {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(&out[..]);
    out.extend_from_slice(&d);
    out.extend_from_slice(&TRAILER_MAGIC);
}

/// Applies `edit` to the parsed index and rewrites it consistently.
pub fn edit_index(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v = index_json(bytes);
    edit(&mut v);
    with_index_bytes(bytes, &serde_json::to_vec_pretty(&v).unwrap())
}

/// Byte range of tensor `name`'s record.
pub fn record_range(bytes: &[u8], name: &str) -> (usize, usize) {
    let v = index_json(bytes);
    let e = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap();
    (
        e["offset"].as_u64().unwrap() as usize,
        e["length"].as_u64().unwrap() as usize,
    )
}

/// Applies `edit` to tensor `name`'s record bytes (same length) and fixes its checksum in the index, so only the
/// record's content is wrong.
pub fn edit_record(bytes: &[u8], name: &str, edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let (off, len) = record_range(bytes, name);
    let mut out = bytes.to_vec();
    edit(&mut out[off..off + len]);
    let sum = format!("{:016x}", xxh3_64(&out[off..off + len]));
    edit_index(&out, |v| {
        for e in v["tensors"].as_array_mut().unwrap() {
            if e["name"] == name {
                e["checksum"] = serde_json::json!(sum);
            }
        }
    })
}

/// Writes `bytes` to a fresh file in `dir` and returns its path.
pub fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn sample_is_well_formed() {
    let b = sample_bytes();
    assert!(b.len() as u64 > PREAMBLE_LEN + TRAILER_LEN);
    assert_eq!(index_json(&b)["format_version"], 2);
}

/// Every truncation of `bytes` (one encoded record) fails to decode, a trailing byte is refused, and three random
/// single-bit flips of every byte decode to an error or to a record that is consistent enough to expand into a
/// tensor: never a panic or an over-allocation.
pub fn assert_hostile_record_bytes_never_panic(name: &str, bytes: &[u8], rng: &mut Rng) {
    let limits = ultradelta_archive::Limits::default();
    for cut in 0..bytes.len() {
        assert!(
            ultradelta_archive::decode_record(&bytes[..cut], &limits).is_err(),
            "{name}: truncated at {cut} decoded"
        );
    }
    let mut extended = bytes.to_vec();
    extended.push(0);
    assert!(
        ultradelta_archive::decode_record(&extended, &limits).is_err(),
        "{name}: trailing byte accepted"
    );
    for i in 0..bytes.len() {
        for _ in 0..3 {
            let mut b = bytes.to_vec();
            b[i] ^= 1 << (rng.next_u64() % 8);
            if let Ok((hdr, r)) = ultradelta_archive::decode_record(&b, &limits) {
                let n = usize::try_from(hdr.numel).unwrap();
                if n <= 1 << 20 {
                    let _ = r.delta_to_dense(n, 1.0);
                }
            }
        }
    }
}

/// The 2-bit quantizer of the small seeded records of the kind-16 and kind-17 tests: levels −1, −0.5, 0, 0.5.
pub const SEEDED_Q: QuantParams = QuantParams {
    bits: 2,
    lo: -1.0,
    step: 0.5,
};

/// A seeded sparse record over `numel` entries under [`SEEDED_Q`], scale 1, positions `(seed 5, trial 0)`.
pub fn seeded_record(
    numel: u64,
    levels: Vec<u16>,
    coding: ultradelta_archive::LevelCoding,
) -> ultradelta_archive::CodedSparseRecord {
    ultradelta_archive::CodedSparseRecord {
        numel,
        quant: SEEDED_Q,
        scale: 1.0,
        positions: ultradelta_archive::Positions::Seeded { seed: 5, trial: 0 },
        levels,
        coding,
    }
}

/// Writes the compressed tensors `records` (name, shape, record), BF16, into a finished archive at `path`, opened
/// and verified.
pub fn written_archive(
    path: &Path,
    records: impl IntoIterator<Item = (String, Vec<usize>, ultradelta_archive::Record)>,
) -> ultradelta_archive::ArchiveReader {
    let mut w = ultradelta_archive::ArchiveWriter::create(path, true).unwrap();
    for (name, shape, rec) in records {
        w.write_tensor(
            ultradelta_archive::TensorEntry::new(
                &name,
                shape,
                DType::BF16,
                ultradelta_archive::Policy::Compress,
            ),
            &rec,
        )
        .unwrap();
    }
    w.finish(
        "ultradelta",
        serde_json::json!({}),
        1.0,
        "0123456789abcdef",
        ultradelta_archive::FinetunedInfo::default(),
    )
    .unwrap();
    let reader = ultradelta_archive::ArchiveReader::open(path).unwrap();
    reader.verify().unwrap();
    reader
}
