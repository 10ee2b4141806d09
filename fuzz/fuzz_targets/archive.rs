//! The archive reader on arbitrary bytes: open (preamble, trailer, index validation), `inspect`, and every
//! record's check-only decode (`verify` without a base) and full decode, and every companion file's. Each input is
//! tried as given and resealed (checksums recomputed), so mutations inside records reach the record decoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ultradelta_archive::{ArchiveReader, KIND_NONE};
use ultradelta_fuzz::{reseal, scratch_file};

fn check(bytes: &[u8]) {
    let path = scratch_file("archive.udelta", bytes);
    let Ok(r) = ArchiveReader::open(&path) else {
        return;
    };
    let _ = r.check_content_sha256();
    let mut planes = Vec::new();
    for e in &r.manifest().tensors {
        if e.kind == KIND_NONE {
            continue;
        }
        // `verify` without a base: the check-only decode, which keeps nothing (rANS levels, zero-bit levels and
        // zstd frames are checked streaming); then the full decode.
        let _ = r.check_record(&e.name);
        let _ = r.read_record(&e.name);
        if e.kind == "xor-zstd" || e.kind == "diff-zstd" {
            // Sizes come from the validated index entry, bounded by the zstd expansion limit at open.
            let n = (e.numel as usize).saturating_mul(e.dtype.size());
            let base = vec![0x5au8; n];
            let mut out = vec![0u8; n];
            let _ = r.read_lossless_into(&e.name, &base, &mut out, &mut planes);
        }
    }
    for f in &r.manifest().files {
        let _ = r.read_file(&f.name);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(sealed) = reseal(data, None) {
        check(&sealed);
    }
});
