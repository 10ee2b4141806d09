//! A fine-tune whose tensor names carry a model prefix its base's lack, or the reverse — a task model
//! (`BertForSequenceClassification`: `bert.encoder…`, plus a `classifier`) fine-tuned from a bare encoder's
//! checkpoint (`BertModel`: `encoder…`): the tensors pair through the prefix, the index names the base's tensor
//! (`base_name`), and apply rebuilds the fine-tune's names from the base's tensors. The same for names whose
//! leading components differ otherwise (`transformer.…` against `model.…`, a merged PEFT model's
//! `base_model.model.…` against `…`), and for an untied output head coded against the base's tied embedding.

use std::path::Path;

use ultradelta::archive::{ArchiveReader, Policy};
use ultradelta::io::{
    f32_to_bytes, write_checkpoint, Checkpoint, DType, TensorInfo, WriterOptions,
};

use crate::hostile::with_entry_field;
use crate::support::*;

/// `from`'s checkpoint with every tensor renamed by `rename` (and `extra` added), written to `to` with `from`'s
/// other files.
fn renamed(from: &Path, to: &Path, rename: impl Fn(&str) -> String, extra: &[(&str, usize)]) {
    let ck = Checkpoint::open(from).unwrap();
    let mut tensors: Vec<(TensorInfo, Vec<u8>)> = ck
        .tensors()
        .iter()
        .map(|i| {
            let v = ck.view(&i.name).unwrap();
            (
                TensorInfo::new(rename(&i.name), i.dtype, i.shape.clone()),
                v.bytes().to_vec(),
            )
        })
        .collect();
    for &(name, n) in extra {
        let mut b = Vec::new();
        let values: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.01).collect();
        f32_to_bytes(&values, DType::F32, &mut b).unwrap();
        tensors.push((TensorInfo::new(name, DType::F32, vec![n]), b));
    }
    write_checkpoint(to, &tensors, WriterOptions::default()).unwrap();
    copy_companions(from, to);
}

#[test]
fn a_model_prefix_on_either_side_pairs_the_tensors() {
    for prefix_on_the_fine_tune in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (base0, ft0) = pair(dir.path(), DType::F32, false, 5);
        let (base, ft) = (dir.path().join("base-named"), dir.path().join("ft-named"));
        let add = |n: &str| format!("bert.{n}");
        let keep = |n: &str| n.to_string();
        if prefix_on_the_fine_tune {
            renamed(&base0, &base, keep, &[]);
            renamed(&ft0, &ft, add, &[("classifier.bias", 2)]);
        } else {
            renamed(&base0, &base, add, &[("cls.predictions.bias", 8)]);
            renamed(&ft0, &ft, keep, &[]);
        }
        let case = if prefix_on_the_fine_tune {
            "bert. on the fine-tune"
        } else {
            "bert. on the base"
        };
        let archive = dir.path().join("a.udelta");
        let out = ud_ok(&compress_cmd(&base, &ft, &archive, &[]));
        assert!(!out.contains("0 tensors compressed"), "{case}: {out}");

        let reader = ArchiveReader::open(&archive).unwrap();
        let m = reader.manifest();
        let b = Checkpoint::open(&base).unwrap();
        let mut compressed = 0;
        for e in &m.tensors {
            if e.policy == Policy::New {
                assert!(e.base_name.is_none(), "{case}: {}", e.name);
                continue;
            }
            let want = if prefix_on_the_fine_tune {
                e.name.strip_prefix("bert.").unwrap().to_string()
            } else {
                format!("bert.{}", e.name)
            };
            assert_eq!(e.base_name.as_deref(), Some(want.as_str()), "{case}");
            assert!(b.info(&want).is_some(), "{case}: {want}");
            compressed += usize::from(e.policy == Policy::Compress);
        }
        assert!(compressed > 0, "{case}");
        // `inspect` names the base's tensor beside the fine-tune's.
        let ins = inspect_json(&archive);
        let shown = ins["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["base_name"].is_string())
            .count();
        assert_eq!(
            shown,
            m.tensors.iter().filter(|e| e.base_name.is_some()).count(),
            "{case}"
        );
        // The base's tensor the fine-tune has no counterpart of is reported, not paired.
        if prefix_on_the_fine_tune {
            let e = m
                .tensors
                .iter()
                .find(|e| e.name == "classifier.bias")
                .unwrap();
            assert_eq!(e.policy, Policy::New, "{case}");
        } else {
            let line = out
                .lines()
                .find(|l| l.contains("only in the base"))
                .unwrap_or_default();
            assert!(line.contains("cls.predictions.bias"), "{case}: {out}");
        }

        rebuilds_the_fine_tune(dir.path(), &base, &ft, &archive, case);
    }
}

/// Names that differ by more than a prefix one side lacks: the fine-tune's first component replaced by another
/// (`transformer.…` against `model.…`), or two extra components in front (a merged PEFT model's
/// `base_model.model.…`). Compress pairs every tensor through the rewrite (each entry's `base_name`, the rebuilt
/// tensor keeps the fine-tune's name) and apply rebuilds every tensor from the base's.
#[test]
fn a_replaced_or_two_component_prefix_pairs_the_tensors() {
    type Rename = fn(&str) -> String;
    let cases: [(&str, Rename, Rename); 2] = [
        (
            "transformer. against model.",
            |n| format!("model.{n}"),
            |n| format!("transformer.{n}"),
        ),
        (
            "base_model.model. on the fine-tune",
            |n| n.to_string(),
            |n| format!("base_model.model.{n}"),
        ),
    ];
    for (case, base_name, ft_name) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (base0, ft0) = pair(dir.path(), DType::F32, false, 7);
        let (base, ft) = (dir.path().join("base-named"), dir.path().join("ft-named"));
        renamed(&base0, &base, base_name, &[]);
        renamed(&ft0, &ft, ft_name, &[]);
        let archive = dir.path().join("a.udelta");
        let out = ud_ok(&compress_cmd(&base, &ft, &archive, &[]));
        // Only what the synthetic base has beyond its fine-tune (a position-id buffer) is left unpaired.
        let (b0, f0) = (
            Checkpoint::open(&base0).unwrap(),
            Checkpoint::open(&ft0).unwrap(),
        );
        let base_only: Vec<String> = b0
            .tensors()
            .iter()
            .filter(|t| f0.info(&t.name).is_none())
            .map(|t| base_name(&t.name))
            .collect();
        let line = out
            .lines()
            .find(|l| l.contains("only in the base"))
            .unwrap_or_default();
        assert_eq!(
            line.split_once("): ")
                .map_or(vec![], |(_, l)| l.split(", ").collect()),
            base_only,
            "{case}: {out}"
        );

        let reader = ArchiveReader::open(&archive).unwrap();
        let b = Checkpoint::open(&base).unwrap();
        let m = reader.manifest();
        assert_eq!(m.tensors.len(), f0.tensors().len(), "{case}");
        let mut compressed = 0;
        for e in &m.tensors {
            // Every tensor pairs, with the base's name of the same synthetic tensor.
            assert_ne!(e.policy, Policy::New, "{case}: {}", e.name);
            let want = f0
                .tensors()
                .iter()
                .map(|t| (ft_name(&t.name), base_name(&t.name)))
                .find(|(f, _)| *f == e.name)
                .unwrap()
                .1;
            assert_eq!(e.base_name.as_deref(), Some(want.as_str()), "{case}");
            assert!(b.info(&want).is_some(), "{case}: {want}");
            compressed += usize::from(e.policy == Policy::Compress);
        }
        assert!(compressed > 0, "{case}");
        rebuilds_the_fine_tune(dir.path(), &base, &ft, &archive, case);
    }
}

/// Applies `archive` to `base` and checks the rebuilt checkpoint has the fine-tune's names and every tensor equals
/// the formula (the base's tensor named by the entry plus the decoded delta; a kept or new tensor the fine-tune's),
/// then that `verify --base` passes.
fn rebuilds_the_fine_tune(dir: &Path, base: &Path, ft: &Path, archive: &Path, case: &str) {
    let reader = ArchiveReader::open(archive).unwrap();
    let m = reader.manifest();
    let b = Checkpoint::open(base).unwrap();
    let rebuilt = dir.join("rebuilt");
    ud_ok(&apply_cmd(base, archive, &rebuilt, &[]));
    let (f, r) = (
        Checkpoint::open(ft).unwrap(),
        Checkpoint::open(&rebuilt).unwrap(),
    );
    assert_eq!(
        r.tensors().iter().map(|t| &t.name).collect::<Vec<_>>(),
        f.tensors().iter().map(|t| &t.name).collect::<Vec<_>>(),
        "{case}: the fine-tune's names"
    );
    let gamma = m.gamma as f32;
    for e in &m.tensors {
        let got = r.view(&e.name).unwrap();
        let want = match e.policy {
            Policy::Compress => {
                let mut w = b.view(e.base_tensor()).unwrap().to_f32().unwrap();
                reader
                    .read_record(&e.name)
                    .unwrap()
                    .add_delta_into(gamma, &mut w)
                    .unwrap();
                let mut bytes = Vec::new();
                f32_to_bytes(&w, e.dtype, &mut bytes).unwrap();
                bytes
            }
            Policy::Drop => b.view(e.base_tensor()).unwrap().bytes().to_vec(),
            Policy::Keep | Policy::New => f.view(&e.name).unwrap().bytes().to_vec(),
        };
        assert!(
            got.bytes() == want.as_slice(),
            "{case}: {} ({:?})",
            e.name,
            e.policy
        );
    }
    let v = ud_ok(&["verify", "--base", s(base), s(archive)]);
    assert!(v.contains(": OK: "), "{case}: {v}");
}

/// An index whose `base_name` names a tensor the base does not have is refused before anything is written, naming
/// both; one that repeats the entry's own name is refused at open.
#[test]
fn a_base_name_the_base_lacks_or_repeating_the_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), DType::F32, false, 6);
    let archive = dir.path().join("a.udelta");
    ud_ok(&compress_cmd(&base, &ft, &archive, &[]));
    let name = first_entry(&archive, |e| e.policy == Policy::Compress);
    let bytes = std::fs::read(&archive).unwrap();
    let rebuilt = dir.path().join("rebuilt");
    for (base_name, says) in [
        (
            "no.such.tensor",
            "is missing (the archive rebuilds it from the base's \"no.such.tensor\")",
        ),
        (name.as_str(), "must be another, non-empty name"),
    ] {
        let bad = dir.path().join("bad.udelta");
        std::fs::write(
            &bad,
            with_entry_field(&bytes, &name, "base_name", base_name),
        )
        .unwrap();
        let line = ud_err(&apply_cmd(&base, &bad, &rebuilt, &[]));
        assert!(
            line.contains(name.as_str()) && line.contains(says),
            "{line}"
        );
        assert!(!rebuilt.exists());
    }
}

/// A fine-tune that unties its output head from a base saved with tied embeddings (the base has no `lm_head`):
/// the head is coded as its delta from the base's token embedding (`base_name`), not stored whole.
#[test]
fn an_untied_head_is_coded_against_the_bases_tied_embedding() {
    let dir = tempfile::tempdir().unwrap();
    let (b, f) = (dir.path().join("base"), dir.path().join("ft"));
    let values = |n: usize, shift: f32| -> Vec<u8> {
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7) % 23) as f32 * 0.01 + shift * ((i % 5) as f32))
            .collect();
        let mut out = Vec::new();
        f32_to_bytes(&v, DType::BF16, &mut out).unwrap();
        out
    };
    let t = |name: &str, shape: &[usize]| TensorInfo::new(name, DType::BF16, shape.to_vec());
    let (emb, q) = (
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
    );
    write_checkpoint(
        &b,
        &[
            (t(emb, &[64, 32]), values(2048, 0.0)),
            (t(q, &[32, 32]), values(1024, 0.0)),
        ],
        WriterOptions::default(),
    )
    .unwrap();
    write_checkpoint(
        &f,
        &[
            (t(emb, &[64, 32]), values(2048, 0.001)),
            (t(q, &[32, 32]), values(1024, 0.002)),
            (t("lm_head.weight", &[64, 32]), values(2048, 0.003)),
        ],
        WriterOptions::default(),
    )
    .unwrap();
    let archive = dir.path().join("a.udelta");
    ud_ok(&compress_cmd(&b, &f, &archive, &["--family", "llama"]));
    let reader = ArchiveReader::open(&archive).unwrap();
    let head = reader
        .manifest()
        .tensors
        .iter()
        .find(|e| e.name == "lm_head.weight")
        .unwrap();
    assert_eq!(head.base_name.as_deref(), Some(emb));
    assert_ne!(head.policy, Policy::New);
    let rebuilt = dir.path().join("rebuilt");
    ud_ok(&apply_cmd(&b, &archive, &rebuilt, &[]));
    let r = Checkpoint::open(&rebuilt).unwrap();
    assert_eq!(r.info("lm_head.weight").unwrap().shape, vec![64, 32]);
    let v = ud_ok(&["verify", "--base", s(&b), s(&archive)]);
    assert!(v.contains(": OK: "), "{v}");

    // The same fine-tune with two tokens added: its embedding and its head have 66 rows. Both are coded against
    // the base's embedding's 64 rows, their added rows stored whole (kind 18), and rebuilt to 66 rows.
    let f2 = dir.path().join("ft-grown");
    write_checkpoint(
        &f2,
        &[
            (t(emb, &[66, 32]), values(2112, 0.001)),
            (t(q, &[32, 32]), values(1024, 0.002)),
            (t("lm_head.weight", &[66, 32]), values(2112, 0.003)),
        ],
        WriterOptions::default(),
    )
    .unwrap();
    let archive = dir.path().join("grown.udelta");
    ud_ok(&compress_cmd(&b, &f2, &archive, &["--family", "llama"]));
    let reader = ArchiveReader::open(&archive).unwrap();
    for (name, base) in [(emb, None), ("lm_head.weight", Some(emb))] {
        let e = reader.entry(name).unwrap();
        assert_eq!(e.base_name.as_deref(), base, "{name}");
        assert_eq!(
            (e.kind.as_str(), e.base_rows),
            ("appended-rows", Some(64)),
            "{name}"
        );
    }
    let rebuilt = dir.path().join("rebuilt-grown");
    ud_ok(&apply_cmd(&b, &archive, &rebuilt, &[]));
    let (r, want) = (
        Checkpoint::open(&rebuilt).unwrap(),
        Checkpoint::open(&f2).unwrap(),
    );
    for name in [emb, "lm_head.weight"] {
        let (got, want) = (r.view(name).unwrap(), want.view(name).unwrap());
        assert_eq!(got.info().shape, vec![66, 32], "{name}");
        assert!(
            got.bytes()[64 * 64..] == want.bytes()[64 * 64..],
            "{name}: added rows"
        );
    }
    let v = ud_ok(&["verify", "--base", s(&b), s(&archive)]);
    assert!(v.contains(": OK: "), "{v}");
}
