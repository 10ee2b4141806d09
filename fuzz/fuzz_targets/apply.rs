//! Apply onto a small base, in memory, at the archive level: for every stored tensor whose index entry matches the
//! base tensor's dtype and shape (as `apply` requires before sizing anything), the record is read, decoded and
//! added onto the base's values with [`Record::add_delta_into`] (the decoding formula `apply` uses), or combined
//! with the base's bytes for the lossless deltas (`xor-zstd`, `diff-zstd`); a tensor grown by rows (`appended-rows`)
//! by its nested delta against the base's rows. The base is tests/hostile/base (or $ULTRADELTA_FUZZ_BASE); each input is tried
//! as given and resealed, so mutated records are decoded and applied rather than refused by a checksum.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ultradelta_archive::{ArchiveReader, Record, KIND_NONE};
use ultradelta_fuzz::{reseal, scratch_file};
use ultradelta_io::Checkpoint;

fn base() -> &'static Checkpoint {
    static BASE: OnceLock<Checkpoint> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = std::env::var_os("ULTRADELTA_FUZZ_BASE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../tests/hostile/base"
                ))
            });
        Checkpoint::open(dir).expect("open the fuzz base checkpoint")
    })
}

fn check(bytes: &[u8]) {
    let path = scratch_file("apply.udelta", bytes);
    let Ok(r) = ArchiveReader::open(&path) else {
        return;
    };
    let gamma = r.manifest().gamma as f32;
    let mut planes = Vec::new();
    for e in &r.manifest().tensors {
        if e.kind == KIND_NONE {
            continue;
        }
        let Ok(view) = base().view(&e.name) else {
            continue;
        };
        let info = view.info();
        // The base's shape: the entry's, or its base rows for a tensor grown by rows (`appended-rows`).
        if info.shape != e.expected_base_shape() || info.dtype.name() != e.dtype.name() {
            continue;
        }
        if e.kind == "xor-zstd" || e.kind == "diff-zstd" {
            let mut out = vec![0u8; view.bytes().len()];
            let _ = r.read_lossless_into(&e.name, view.bytes(), &mut out, &mut planes);
            continue;
        }
        let Ok(record) = r.read_record(&e.name) else {
            continue;
        };
        // A tensor grown by rows: its nested delta of the base's rows, applied as a record of the base's shape.
        let record = match record {
            Record::AppendedRows(r) => match r.head {
                Some(head)
                    if matches!(*head, Record::XorDelta { .. } | Record::DiffDelta { .. }) =>
                {
                    let mut out = vec![0u8; view.bytes().len()];
                    let _ = head.lossless_into(view.bytes(), &mut out);
                    continue;
                }
                Some(head) => *head,
                None => continue,
            },
            record => record,
        };
        if matches!(record, Record::Full { .. }) {
            continue;
        }
        if let Ok(mut values) = view.to_f32() {
            let _ = record.add_delta_into(gamma, &mut values);
        }
    }
    let _ = r.check_content_sha256();
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(sealed) = reseal(data, None) {
        check(&sealed);
    }
});
