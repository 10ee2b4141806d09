//! Row subsets (`--row-subset`, record kind 17) through the real binary, on a BERT-shaped pair whose word-embedding
//! delta moved only a few rows (the rest by weight decay): the BERT default lists exactly those rows, apply
//! equals the in-memory result and leaves every other row at the base's bytes, the bytes do not depend on the
//! thread count, `--no-row-subset` and LLaMA keep the whole-matrix records, and `verify` passes.

use std::path::Path;

use ultradelta::archive::{ArchiveReader, Record};
use ultradelta::io::{Checkpoint, DType};
use ultradelta::Method;

use crate::cli_methods::check_apply_equals_in_memory;
use crate::support::{apply_cmd, compress_cmd, inspect_json, pair, ud_ok};

const EMB: &str = "embeddings.word_embeddings.weight";

/// The rows of the tiny pair's 1000 x 64 word embeddings the fine-tune moved.
const MOVED: [usize; 7] = [3, 40, 41, 217, 500, 871, 999];

/// Rewrites `ft`'s word embeddings in place: the moved rows keep their fine-tuned values, every other row becomes
/// the base's row shrunk by weight decay (`× (1 − 2e-6)`).
fn embedding_rows_only(base: &Path, ft: &Path) {
    let read = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    let (b, mut f) = (read(base), read(ft));
    let span = |bytes: &[u8]| {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let o = &h[EMB]["data_offsets"];
        assert_eq!(h[EMB]["shape"], serde_json::json!([1000, 64]));
        (
            8 + n + o[0].as_u64().unwrap() as usize,
            8 + n + o[1].as_u64().unwrap() as usize,
        )
    };
    let ((b0, b1), (f0, _)) = (span(&b), span(&f));
    for (i, chunk) in b[b0..b1].chunks_exact(4).enumerate() {
        if MOVED.contains(&(i / 64)) {
            continue;
        }
        let x = f32::from_le_bytes(chunk.try_into().unwrap()) * (1.0 - 2e-6);
        f[f0 + 4 * i..f0 + 4 * i + 4].copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(ft.join("model.safetensors"), f).unwrap();
}

fn listed_rows(archive: &Path) -> Option<Vec<u64>> {
    match ArchiveReader::open(archive)
        .unwrap()
        .read_record(EMB)
        .unwrap()
    {
        Record::RowSubset(r) => Some(r.listed),
        _ => None,
    }
}

#[test]
fn a_moved_rows_embedding_is_stored_as_its_rows_and_rebuilt_exactly_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), DType::F32, false, 17);
    embedding_rows_only(&base, &ft);
    let archive = dir.path().join("rows.udelta");
    ud_ok(&compress_cmd(&base, &ft, &archive, &["--sparsity", "0.9"]));
    let want: Vec<u64> = MOVED.iter().map(|&r| r as u64).collect();
    assert_eq!(listed_rows(&archive), Some(want));
    let ins = inspect_json(&archive);
    let emb = ins["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == EMB)
        .unwrap();
    assert_eq!(emb["kind"], "row-subset");
    assert_eq!(emb["listed_rows"], 7);
    ud_ok(&["verify", "--quiet", crate::support::s(&archive)]);
    // Apply equals the in-memory record, and the unlisted rows are the base's bytes exactly.
    let out = dir.path().join("rebuilt");
    ud_ok(&apply_cmd(&base, &archive, &out, &[]));
    check_apply_equals_in_memory(&base, &ft, &archive, &out, Method::Ultradelta);
    let (b, r) = (
        Checkpoint::open(&base).unwrap(),
        Checkpoint::open(&out).unwrap(),
    );
    let (bb, rb) = (b.view(EMB).unwrap(), r.view(EMB).unwrap());
    let row = 64 * 4;
    let mut moved = 0;
    for (i, (x, y)) in bb
        .bytes()
        .chunks_exact(row)
        .zip(rb.bytes().chunks_exact(row))
        .enumerate()
    {
        if MOVED.contains(&i) {
            moved += usize::from(x != y);
        } else {
            assert_eq!(x, y, "row {i} is not listed but changed");
        }
    }
    assert!(moved > 0, "no listed row changed");
    // The same bytes whatever the thread count.
    let one = dir.path().join("one.udelta");
    ud_ok(&compress_cmd(
        &base,
        &ft,
        &one,
        &["--sparsity", "0.9", "--threads", "1"],
    ));
    assert_eq!(
        std::fs::read(&one).unwrap(),
        std::fs::read(&archive).unwrap()
    );
}

#[test]
fn row_subsets_are_off_when_asked_and_for_llama() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), DType::F32, false, 17);
    embedding_rows_only(&base, &ft);
    let off = dir.path().join("off.udelta");
    ud_ok(&compress_cmd(
        &base,
        &ft,
        &off,
        &["--sparsity", "0.9", "--no-row-subset"],
    ));
    assert_eq!(listed_rows(&off), None);
    let params = &inspect_json(&off)["params"];
    assert!(params.get("row_subset").is_none(), "{params}");
    // The same pair read as LLaMA (its table compressed by a glob: the LLaMA selection does not know BERT's
    // names): off by default, on when asked.
    let as_llama = [
        "--sparsity",
        "0.9",
        "--family",
        "llama",
        "--compress",
        "*word_embeddings*",
    ];
    let llama = dir.path().join("llama.udelta");
    ud_ok(&compress_cmd(&base, &ft, &llama, &as_llama));
    let kind = |a: &Path| {
        ArchiveReader::open(a)
            .unwrap()
            .entry(EMB)
            .unwrap()
            .kind
            .clone()
    };
    assert_eq!(kind(&llama), "sparse-seeded-rans");
    let on = dir.path().join("on.udelta");
    ud_ok(&compress_cmd(
        &base,
        &ft,
        &on,
        &[&as_llama[..], &["--row-subset"]].concat(),
    ));
    assert_eq!(listed_rows(&on).map(|l| l.len()), Some(MOVED.len()));
    // A configuration that cannot carry it is refused in one line.
    let err = crate::support::ud_err(&compress_cmd(
        &base,
        &ft,
        &dir.path().join("x.udelta"),
        &["--row-subset", "--positions", "golomb"],
    ));
    assert!(
        err.contains("row_subset") || err.contains("row-subset"),
        "{err}"
    );
}
