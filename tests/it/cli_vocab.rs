//! A vocabulary resized for added tokens: the fine-tune's token embedding has rows its base lacks. Compress codes
//! the delta of the base's rows as the tensor's policy says (compressed, kept without loss, dropped) and stores the
//! added rows whole (record kind `appended-rows`, the index's `base_rows`); apply rebuilds the base's rows by the
//! decoding formula and the added rows byte for byte; verify and eval accept it; a damaged or inconsistent one is
//! refused naming the tensor.

use std::path::{Path, PathBuf};

use ultradelta::archive::{ArchiveReader, Policy, Record};
use ultradelta::io::{
    f32_to_bytes, write_checkpoint, Checkpoint, DType, TensorInfo, WriterOptions,
};

use crate::cli_dtypes::converted;
use crate::hostile::with_entry_value;
use crate::support::*;

const EMB: &str = "embeddings.word_embeddings.weight";

/// `from`'s checkpoint with `added` rows appended to the word embedding (deterministic values of an embedding's
/// scale), written to `to` with `from`'s other files.
fn grown(from: &Path, to: &Path, added: usize) {
    let ck = Checkpoint::open(from).unwrap();
    let tensors: Vec<(TensorInfo, Vec<u8>)> = ck
        .tensors()
        .iter()
        .map(|i| {
            let v = ck.view(&i.name).unwrap();
            if i.name != EMB {
                return (i.clone(), v.bytes().to_vec());
            }
            let cols = i.shape[1];
            let rows: Vec<f32> = (0..added * cols)
                .map(|k| ((k * 37 % 101) as f32 - 50.0) * 1e-3)
                .collect();
            let mut added_bytes = Vec::new();
            f32_to_bytes(&rows, i.dtype, &mut added_bytes).unwrap();
            let bytes = [v.bytes(), &added_bytes].concat();
            let shape = vec![i.shape[0] + added, cols];
            (TensorInfo::new(i.name.clone(), i.dtype, shape), bytes)
        })
        .collect();
    write_checkpoint(to, &tensors, WriterOptions::default()).unwrap();
    copy_companions(from, to);
}

/// A base, its fine-tune, and the fine-tune with 3 tokens added, under `dir`.
fn grown_pair(dir: &Path, dtype: DType) -> (PathBuf, PathBuf, PathBuf) {
    let (base, ft) = pair(dir, dtype, false, 5);
    let big = dir.join("ft-grown");
    grown(&ft, &big, 3);
    (base, ft, big)
}

#[test]
fn a_vocabulary_grown_by_added_tokens_keeps_its_delta_and_stores_the_added_rows() {
    // The default (BERT: the whole-Δ path, row subset and low-rank part), the streaming path, a byte budget over
    // the compressed tensors, a baseline; the embedding kept without loss (the paper's preset) or dropped, with a
    // whole-file budget.
    let flags: [&[&str]; 7] = [
        &[],
        &["--no-lowrank-part", "--no-row-subset"],
        &["--target-ratio", "20"],
        &["--method", "dare", "--sparsity", "0.9"],
        &["--preset", "paper"],
        &["--embeddings", "drop", "--target-size", "60000"],
        &["--embeddings", "keep", "--target-size", "400000"],
    ];
    let dtypes = [
        DType::F32,
        DType::BF16,
        DType::F16,
        DType::BF16,
        DType::BF16,
        DType::F32,
        DType::F16,
    ];
    for (dtype, flags) in dtypes.into_iter().zip(flags) {
        let case = format!("{} {flags:?}", dtype.name());
        let dir = tempfile::tempdir().unwrap();
        let (base, ft, big) = grown_pair(dir.path(), dtype);
        let archive = dir.path().join("a.udelta");
        let out = ud_ok(&compress_cmd(&base, &big, &archive, flags));
        let line = out
            .lines()
            .find(|l| {
                l.contains(
                    "grown by rows the base lacks (added tokens?), the added rows stored whole",
                )
            })
            .unwrap_or_else(|| panic!("{case}: {out}"));
        assert!(
            line.contains(&format!("{EMB} (+3 rows on the base's ")),
            "{case}: {line}"
        );

        let reader = ArchiveReader::open(&archive).unwrap();
        let e = reader.entry(EMB).unwrap().clone();
        let b = Checkpoint::open(&base).unwrap();
        let base_rows = b.info(EMB).unwrap().shape[0];
        assert_eq!(e.kind, "appended-rows", "{case}");
        let policy = match flags {
            ["--preset", "paper"] | [_, "keep", ..] => Policy::Keep,
            [_, "drop", ..] => Policy::Drop,
            _ => Policy::Compress,
        };
        assert_eq!(e.policy, policy, "{case}");
        assert_eq!(e.base_rows, Some(base_rows), "{case}");
        assert_eq!(e.shape[0], base_rows + 3, "{case}");

        // The base's rows by the decoding formula, the added rows byte for byte.
        let rebuilt = dir.path().join("rebuilt");
        ud_ok(&apply_cmd(&base, &archive, &rebuilt, &[]));
        let (f, r) = (
            Checkpoint::open(&big).unwrap(),
            Checkpoint::open(&rebuilt).unwrap(),
        );
        let Record::AppendedRows(rec) = reader.read_record(EMB).unwrap() else {
            panic!("{case}: not an appended-rows record");
        };
        assert_eq!(rec.base_rows as usize, base_rows, "{case}");
        let fb = f.view(EMB).unwrap().bytes();
        let bb = b.view(EMB).unwrap().bytes();
        let mut want = match policy {
            // The base's rows plus the delta, by the decoding formula.
            Policy::Compress => {
                let mut w = b.view(EMB).unwrap().to_f32().unwrap();
                rec.head
                    .as_ref()
                    .unwrap()
                    .add_delta_into(reader.manifest().gamma as f32, &mut w)
                    .unwrap();
                let mut want = Vec::new();
                f32_to_bytes(&w, dtype, &mut want).unwrap();
                want
            }
            // The fine-tune's rows exactly.
            Policy::Keep => fb[..bb.len()].to_vec(),
            // The base's rows as they are.
            _ => bb.to_vec(),
        };
        let split = want.len();
        assert_eq!(split, bb.len(), "{case}");
        want.extend_from_slice(&fb[split..]);
        let got = r.view(EMB).unwrap();
        assert_eq!(got.info(), f.view(EMB).unwrap().info(), "{case}");
        assert!(
            got.bytes() == want.as_slice(),
            "{case}: rebuilt rows differ"
        );
        assert!(got.bytes()[split..] == fb[split..], "{case}: added rows");

        let v = ud_ok(&["verify", "--base", s(&base), s(&archive)]);
        assert!(v.contains(": OK: "), "{case}: {v}");
        let v = ud_ok(&["verify", s(&archive)]);
        assert!(v.contains(": OK: "), "{case}: {v}");
        let ev = ud_ok(&[
            "eval",
            "--base",
            s(&base),
            "--finetuned",
            s(&big),
            s(&archive),
        ]);
        assert!(ev.contains(EMB), "{case}: {ev}");
        let ins = ud_ok(&["inspect", s(&archive)]);
        assert!(
            ins.contains(&format!(
                "rows: 3 added to the base's {base_rows}, stored whole"
            )),
            "{case}: {ins}"
        );

        if matches!(flags, [] | ["--preset", "paper"]) {
            // Without a budget, the base's rows are coded exactly as the same fine-tune without the added tokens
            // codes them: the nested record is that archive's record, byte for byte.
            let plain = dir.path().join("plain.udelta");
            ud_ok(&compress_cmd(&base, &ft, &plain, flags));
            let p = ArchiveReader::open(&plain).unwrap();
            let inner = p.record_bytes(EMB).unwrap();
            let outer = reader.record_bytes(EMB).unwrap();
            let at = 12 + 16 + 16;
            assert_eq!(
                u64::from_le_bytes(outer[at - 8..at].try_into().unwrap()),
                inner.len() as u64,
                "{case}"
            );
            assert!(
                outer[at..at + inner.len()] == inner[..],
                "{case}: nested record"
            );
            // And the archive grows by about the added rows' bytes, not by the whole table.
            let (a, pl) = (
                std::fs::metadata(&archive).unwrap().len(),
                std::fs::metadata(&plain).unwrap().len(),
            );
            let row = (e.shape[1] * dtype.size()) as u64;
            assert!(a < pl + 3 * row + 512, "{case}: {a} bytes against {pl}");
        }
    }
}

/// A rule naming the grown tensor decides the policy of its base rows' delta; the added rows are stored whole under
/// each.
#[test]
fn a_rule_on_a_grown_tensor_decides_its_base_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _, big) = grown_pair(dir.path(), DType::F32);
    for (rule, policy) in [
        ("--keep", Policy::Keep),
        ("--drop", Policy::Drop),
        ("--compress", Policy::Compress),
    ] {
        let out = dir.path().join(format!("{rule}.udelta"));
        ud_ok(&compress_cmd(&base, &big, &out, &[rule, EMB]));
        let reader = ArchiveReader::open(&out).unwrap();
        let e = reader.entry(EMB).unwrap();
        assert_eq!(
            (e.kind.as_str(), e.policy),
            ("appended-rows", policy),
            "{rule}"
        );
        assert_eq!(
            e.extra.get("rule").and_then(|v| v.as_str()),
            Some("user"),
            "{rule}"
        );
        let v = ud_ok(&["verify", "--base", s(&base), s(&out)]);
        assert!(v.contains(": OK: "), "{rule}: {v}");
    }
}

/// An index whose `base_rows` contradicts its record or its kind, or a base whose tensor has other rows, is refused
/// naming the tensor; nothing is written.
#[test]
fn inconsistent_added_rows_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _, big) = grown_pair(dir.path(), DType::F32);
    let archive = dir.path().join("a.udelta");
    ud_ok(&compress_cmd(&base, &big, &archive, &[]));
    let bytes = std::fs::read(&archive).unwrap();
    let reader = ArchiveReader::open(&archive).unwrap();
    let rows = reader.entry(EMB).unwrap().shape[0];
    let other = reader
        .manifest()
        .tensors
        .iter()
        .find(|e| e.policy == Policy::Compress && e.name != EMB && e.shape.len() == 2)
        .unwrap()
        .name
        .clone();
    let cases: Vec<(Vec<u8>, &str, String)> = vec![
        (
            with_entry_value(&bytes, EMB, "base_rows", (rows - 4).into()),
            "expected F32 [999, 64]",
            EMB.to_string(),
        ),
        (
            with_entry_value(&bytes, EMB, "base_rows", rows.into()),
            "base_rows",
            EMB.to_string(),
        ),
        (
            with_entry_value(&bytes, EMB, "base_rows", serde_json::Value::Null),
            "no base_rows",
            EMB.to_string(),
        ),
        (
            with_entry_value(&bytes, EMB, "policy", "keep".into()),
            "which a tensor of policy keep cannot have",
            EMB.to_string(),
        ),
        (
            with_entry_value(&bytes, &other, "base_rows", 2.into()),
            "expected \"appended-rows\"",
            other.clone(),
        ),
    ];
    for (k, (hostile, says, tensor)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("h{k}.udelta"));
        std::fs::write(&path, hostile).unwrap();
        let out = dir.path().join(format!("out{k}"));
        let line = ud_err(&apply_cmd(&base, &path, &out, &[]));
        assert!(line.contains(says) && line.contains(&tensor), "{k}: {line}");
        assert!(line.contains(&format!("h{k}.udelta")), "{k}: {line}");
        assert!(!out.exists(), "{k}");
    }
    // Without a base, the record's own base rows disagree with the index's.
    let path = dir.path().join("h0.udelta");
    let line = ud_err(&["verify", s(&path)]);
    assert!(
        line.contains("record has 1000 base rows, index says 999") && line.contains(EMB),
        "{line}"
    );
    // The fine-tune given as the base: its tensor has the added rows already.
    let out = dir.path().join("out-wrong-base");
    let line = ud_err(&apply_cmd(&big, &archive, &out, &[]));
    assert!(
        line.contains(EMB) || line.contains("different base"),
        "{line}"
    );
    assert!(!out.exists());
}

/// A LoRA adapter has the base's shapes: an archive whose embedding gained rows cannot be exported as one, and the
/// export says so naming the tensor (the archive itself is written and applies).
#[test]
fn a_lora_export_of_a_grown_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _, big) = grown_pair(dir.path(), DType::F32);
    let (archive, lora) = (dir.path().join("a.udelta"), dir.path().join("lora"));
    let line = ud_err(&compress_cmd(
        &base,
        &big,
        &archive,
        &["--method", "lowrank", "--rank", "2", "--lora-out", s(&lora)],
    ));
    assert!(
        line.contains(EMB) && line.contains("cannot carry"),
        "{line}"
    );
    assert!(!lora.exists());
    let rebuilt = dir.path().join("rebuilt");
    ud_ok(&apply_cmd(&base, &archive, &rebuilt, &[]));
}

/// A fine-tune saved in another float dtype than its base (F32 base, BF16 fine-tune) that also added tokens: the
/// base rows' delta is taken in f32 (the index's `base_dtype`), compressed or dropped, and the added rows are stored
/// whole; kept without loss, the tensor is stored whole, as any tensor kept over a base of another dtype.
#[test]
fn a_grown_vocabulary_over_a_base_of_another_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), DType::F32, false, 7);
    // The fine-tune in BF16, its embedding grown by 3 rows.
    let bf16 = dir.path().join("ft-bf16");
    converted(&ft, &bf16, DType::BF16);
    let big = dir.path().join("ft-bf16-grown");
    grown(&bf16, &big, 3);
    let b = Checkpoint::open(&base).unwrap();
    let f = Checkpoint::open(&big).unwrap();
    let base_rows = b.info(EMB).unwrap().shape[0];
    for (flags, policy) in [
        (&[][..], Policy::Compress),
        (&["--embeddings", "drop"][..], Policy::Drop),
        (&["--embeddings", "keep"][..], Policy::New),
    ] {
        let archive = dir.path().join(format!("{policy:?}.udelta"));
        ud_ok(&compress_cmd(&base, &big, &archive, flags));
        let reader = ArchiveReader::open(&archive).unwrap();
        let e = reader.entry(EMB).unwrap();
        assert_eq!(e.policy, policy, "{flags:?}");
        let rebuilt = dir.path().join(format!("{policy:?}-rebuilt"));
        ud_ok(&apply_cmd(&base, &archive, &rebuilt, &[]));
        let got = Checkpoint::open(&rebuilt).unwrap();
        let got = got.view(EMB).unwrap();
        let want = f.view(EMB).unwrap();
        assert_eq!(got.info(), want.info(), "{flags:?}");
        let split = base_rows * e.shape[1] * 2;
        assert!(
            got.bytes()[split..] == want.bytes()[split..],
            "{flags:?}: added rows"
        );
        if policy == Policy::New {
            assert!(got.bytes() == want.bytes(), "{flags:?}");
            continue;
        }
        assert_eq!(
            (e.kind.as_str(), e.base_rows, e.base_dtype),
            ("appended-rows", Some(base_rows), Some(DType::F32)),
            "{flags:?}"
        );
        // The base's rows: its values in f32, plus the delta when compressed, written in BF16.
        let mut w = b.view(EMB).unwrap().to_f32().unwrap();
        if let Record::AppendedRows(r) = reader.read_record(EMB).unwrap() {
            if let Some(head) = r.head {
                head.add_delta_into(reader.manifest().gamma as f32, &mut w)
                    .unwrap();
            }
        }
        let mut head = Vec::new();
        f32_to_bytes(&w, DType::BF16, &mut head).unwrap();
        assert!(got.bytes()[..split] == head[..], "{flags:?}: base rows");
        let v = ud_ok(&["verify", "--base", s(&base), s(&archive)]);
        assert!(v.contains(": OK: "), "{flags:?}: {v}");
    }
}
