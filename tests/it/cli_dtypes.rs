//! A fine-tune saved in another floating-point dtype than its base (a base in F32 and the fine-tune in BF16, as
//! when a trainer saves in its compute dtype): compress takes the delta in f32 and records the base's dtype in the
//! index; apply rebuilds every tensor in the fine-tune's dtype — the compressed ones as `base + γ·Δ̂` in f32, the
//! ones kept without loss byte for byte (stored whole), the dropped ones as the base's values — and verify checks it.

use std::path::Path;

use ultradelta::archive::{ArchiveReader, Policy};
use ultradelta::io::{
    f32_to_bytes, write_checkpoint, Checkpoint, DType, TensorInfo, WriterOptions,
};

use crate::hostile::with_entry_field;
use crate::support::*;

/// `from`'s checkpoint with every floating-point tensor converted to `dtype`, written to `to` (with `from`'s other
/// files).
pub(crate) fn converted(from: &Path, to: &Path, dtype: DType) {
    let ck = Checkpoint::open(from).unwrap();
    let tensors: Vec<(TensorInfo, Vec<u8>)> = ck
        .tensors()
        .iter()
        .map(|i| {
            let v = ck.view(&i.name).unwrap();
            if !i.dtype.is_float() {
                return (i.clone(), v.bytes().to_vec());
            }
            let mut b = Vec::new();
            f32_to_bytes(&v.to_f32().unwrap(), dtype, &mut b).unwrap();
            (TensorInfo::new(i.name.clone(), dtype, i.shape.clone()), b)
        })
        .collect();
    write_checkpoint(to, &tensors, WriterOptions::default()).unwrap();
    copy_companions(from, to);
}

#[test]
fn a_fine_tune_in_another_float_dtype_than_its_base_round_trips() {
    // The default (BERT: the whole-Δ path with the low-rank part), the streaming path from both checkpoints'
    // bytes, and a byte budget.
    let flags: [&[&str]; 3] = [
        &[],
        &["--no-lowrank-part", "--no-row-subset"],
        &["--target-ratio", "10"],
    ];
    for ((base_dtype, ft_dtype), flags) in [
        (DType::F32, DType::BF16),
        (DType::BF16, DType::F16),
        (DType::F16, DType::F32),
    ]
    .into_iter()
    .zip(flags)
    {
        let case = format!(
            "{} base, {} fine-tune, {flags:?}",
            base_dtype.name(),
            ft_dtype.name()
        );
        let dir = tempfile::tempdir().unwrap();
        let (base, ft_same) = pair(dir.path(), base_dtype, false, 3);
        let ft = dir.path().join("ft-other");
        converted(&ft_same, &ft, ft_dtype);
        let archive = dir.path().join("a.udelta");
        let out = ud_ok(&compress_cmd(&base, &ft, &archive, flags));
        assert!(out.contains("compressed"), "{case}: {out}");

        let reader = ArchiveReader::open(&archive).unwrap();
        let m = reader.manifest();
        let mut seen = [0usize; 3];
        for e in &m.tensors {
            assert_eq!(e.dtype, ft_dtype, "{case}: {}", e.name);
            assert_eq!(e.base_dtype, Some(base_dtype), "{case}: {}", e.name);
            if e.policy == Policy::Keep {
                assert_eq!(e.kind, "full-zstd", "{case}: {}", e.name);
            }
        }
        let rebuilt = dir.path().join("rebuilt");
        ud_ok(&apply_cmd(&base, &archive, &rebuilt, &[]));
        let (b, f, r) = (
            Checkpoint::open(&base).unwrap(),
            Checkpoint::open(&ft).unwrap(),
            Checkpoint::open(&rebuilt).unwrap(),
        );
        let gamma = m.gamma as f32;
        for e in &m.tensors {
            let got = r.view(&e.name).unwrap();
            assert_eq!(got.info().dtype, ft_dtype, "{case}: {}", e.name);
            let want = match e.policy {
                Policy::Keep | Policy::New => f.view(&e.name).unwrap().bytes().to_vec(),
                Policy::Compress | Policy::Drop => {
                    // The decoding formula, in f32 from the base's values, then the fine-tune's dtype.
                    let mut w = b.view(&e.name).unwrap().to_f32().unwrap();
                    if e.policy == Policy::Compress {
                        seen[0] += 1;
                        let rec = reader.read_record(&e.name).unwrap();
                        rec.add_delta_into(gamma, &mut w).unwrap();
                    } else {
                        seen[2] += 1;
                    }
                    let mut bytes = Vec::new();
                    f32_to_bytes(&w, ft_dtype, &mut bytes).unwrap();
                    bytes
                }
            };
            if e.policy == Policy::Keep {
                seen[1] += 1;
            }
            assert!(
                got.bytes() == want.as_slice(),
                "{case}: {} ({:?})",
                e.name,
                e.policy
            );
        }
        assert!(
            seen.iter().all(|&n| n > 0),
            "{case}: {seen:?} compressed / kept / dropped"
        );
        let v = ud_ok(&["verify", "--base", s(&base), s(&archive)]);
        assert!(v.contains(": OK: "), "{case}: {v}");
    }
}

/// An index whose `base_dtype` contradicts its records is refused at open, before anything is decoded: the
/// field repeating the tensor's own dtype, and a bitwise record (`xor-zstd` or `diff-zstd`) over a base of another dtype.
#[test]
fn an_index_with_an_impossible_base_dtype_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), DType::F32, false, 4);
    let archive = dir.path().join("a.udelta");
    ud_ok(&compress_cmd(&base, &ft, &archive, &[]));
    let kept = first_entry(&archive, |e| {
        matches!(e.kind.as_str(), "xor-zstd" | "diff-zstd")
    });
    let compressed = first_entry(&archive, |e| e.policy == Policy::Compress);
    let bytes = std::fs::read(&archive).unwrap();
    for (name, base_dtype, says) in [
        (&compressed, "F32", "is the tensor's own"),
        (
            &kept,
            "BF16",
            "a bitwise record of the base's bytes cannot rebuild",
        ),
    ] {
        let bad = dir.path().join("bad.udelta");
        std::fs::write(
            &bad,
            with_entry_field(&bytes, name, "base_dtype", base_dtype),
        )
        .unwrap();
        let line = ud_err(&["verify", s(&bad)]);
        assert!(
            line.contains(name.as_str()) && line.contains(says),
            "{line}"
        );
    }
}
