//! Helpers shared by the fuzz targets: a scratch file per process (the readers take paths), and `reseal`, which
//! recomputes an archive's checksums so that mutated records and indexes get past the xxh3 checks and reach the
//! decoders and validators behind them.

use std::path::PathBuf;
use std::sync::OnceLock;

use xxhash_rust::xxh3::xxh3_64;

/// Trailer magic, the archive's last 8 bytes.
const TRAILER_MAGIC: &[u8; 8] = b"UDELTAIX";

/// A private folder for this process's scratch files (removed by nobody: it is small and under the temp dir).
pub fn scratch_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("ultradelta-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create scratch folder");
        d
    })
}

/// Writes `bytes` to the scratch file `name` and returns its path.
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch_dir().join(name);
    std::fs::write(&p, bytes).expect("write scratch file");
    p
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// `data` with every checksum recomputed: each index entry's xxh3 over the byte range it names (when inside
/// the file), `base_fingerprint` replaced when given, the index re-serialized and the trailer rewritten with its
/// hash (and, for format version 2, the content SHA-256); a compressed index is compressed again. `None` when `data` has no trailer or its index is not a
/// JSON object in range.
pub fn reseal(data: &[u8], base_fingerprint: Option<&str>) -> Option<Vec<u8>> {
    use sha2::Digest as _;
    if data.len() < 16 {
        return None;
    }
    let v2 = u32::from_le_bytes(data[8..12].try_into().unwrap()) >= 2;
    let tlen: usize = if v2 { 64 } else { 32 };
    if data.len() < 16 + tlen || &data[data.len() - 8..] != TRAILER_MAGIC {
        return None;
    }
    let t = data.len() - tlen;
    let off = usize::try_from(u64_at(data, t)).ok()?;
    let len = usize::try_from(u64_at(data, t + 8)).ok()?;
    if off < 16 || off.checked_add(len)? != t {
        return None;
    }
    // A compressed index (preamble flag bit 0) is decompressed (bounded), edited and compressed again.
    let zstd_index = u32::from_le_bytes(data[12..16].try_into().unwrap()) & 1 != 0;
    let mut index: serde_json::Value = if zstd_index {
        serde_json::from_slice(&zstd::bulk::decompress(&data[off..t], 64 << 20).ok()?).ok()?
    } else {
        serde_json::from_slice(&data[off..t]).ok()?
    };
    let obj = index.as_object_mut()?;
    if let Some(fp) = base_fingerprint {
        obj.insert("base_fingerprint".into(), fp.into());
    }
    for list in ["tensors", "files"] {
        let Some(entries) = obj.get_mut(list).and_then(|v| v.as_array_mut()) else {
            continue;
        };
        for e in entries.iter_mut().filter_map(|e| e.as_object_mut()) {
            let o = e.get("offset").and_then(|v| v.as_u64());
            let l = e.get("length").and_then(|v| v.as_u64());
            if let (Some(o), Some(l)) = (o, l) {
                let (o, l) = (o as usize, l as usize);
                if o <= off && l <= off - o {
                    let h = format!("{:016x}", xxh3_64(&data[o..o + l]));
                    e.insert("checksum".into(), h.into());
                }
            }
        }
    }
    let mut new_index = serde_json::to_vec(&index).ok()?;
    if zstd_index {
        new_index = zstd::bulk::compress(&new_index, 3).ok()?;
    }
    let mut out = Vec::with_capacity(off + new_index.len() + tlen);
    out.extend_from_slice(&data[..off]);
    out.extend_from_slice(&new_index);
    out.extend_from_slice(&(off as u64).to_le_bytes());
    out.extend_from_slice(&(new_index.len() as u64).to_le_bytes());
    out.extend_from_slice(&xxh3_64(&new_index).to_le_bytes());
    if v2 {
        let digest = sha2::Sha256::digest(&out);
        out.extend_from_slice(&digest);
    }
    out.extend_from_slice(TRAILER_MAGIC);
    Some(out)
}

/// Opens `data` as the checkpoint file `name` (a name the reader treats like any other: it goes by content), then
/// touches every tensor: the fingerprint, each view's conversion to f32 and its hash.
pub fn open_checkpoint(name: &str, data: &[u8]) {
    let path = scratch_file(name, data);
    let Ok(ck) = ultradelta_io::Checkpoint::open(&path) else {
        return;
    };
    let _ = ck.fingerprint();
    for v in ck.views() {
        let _ = v.to_f32();
        let _ = v.content_hash();
    }
}
