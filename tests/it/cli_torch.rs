//! PyTorch checkpoints (`pytorch_model.bin`, written by the real `torch.save` through transformers'
//! `save_pretrained(.., safe_serialization=False)`; crates/ultradelta-io/tests/data/torch/make.py) compress, apply,
//! verify and evaluate as their safetensors twins do: the same archive but for the fine-tune's size on disk, the
//! same rebuilt tensors, and an archive made against one format applies to a base in the other. PyTorch's legacy
//! format (before 1.6) pairs with the zip one.

use std::path::{Path, PathBuf};

use ultradelta::io::Checkpoint;

use crate::support::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ultradelta-io/tests/data/torch")
        .join(name)
}

/// Every tensor of two checkpoints, byte for byte.
fn same_tensors(a: &Path, b: &Path) {
    let (a, b) = (Checkpoint::open(a).unwrap(), Checkpoint::open(b).unwrap());
    assert_eq!(a.tensors(), b.tensors());
    for (x, y) in a.views().zip(b.views()) {
        assert_eq!(x.bytes(), y.bytes(), "{}", x.info().name);
    }
}

/// `inspect --json` without what depends on the fine-tune's size on disk or the archive's own bytes.
fn report(archive: &Path) -> serde_json::Value {
    let mut v = inspect_json(archive);
    let o = v.as_object_mut().unwrap();
    for k in ["bytes", "content_sha256", "ratio"] {
        o.remove(k);
    }
    o["breakdown"]
        .as_object_mut()
        .unwrap()
        .remove("index_and_framing");
    v
}

#[test]
fn pytorch_checkpoints_compress_and_apply_like_their_safetensors_twins() {
    let t = tempfile::tempdir().unwrap();
    let (base_bin, ft_bin) = (fixture("bert-bin"), fixture("bert-ft-bin"));
    let (base_st, ft_st) = (fixture("bert-st"), fixture("bert-ft-st"));
    for flags in [&[][..], &["--preset", "paper"][..]] {
        let (a_bin, a_st) = (t.path().join("bin.udelta"), t.path().join("st.udelta"));
        let mut bin = compress_cmd(&base_bin, &ft_bin, &a_bin, flags);
        bin.push("--force");
        ud_ok(&bin);
        let mut st = compress_cmd(&base_st, &ft_st, &a_st, flags);
        st.push("--force");
        ud_ok(&st);
        assert_eq!(report(&a_bin), report(&a_st), "{flags:?}");
        // The fine-tune's size on disk is its pytorch_model.bin.
        let bin_size = std::fs::metadata(ft_bin.join("pytorch_model.bin"))
            .unwrap()
            .len();
        assert_eq!(
            inspect_json(&a_bin)["ratio"]["finetuned_bytes"],
            serde_json::json!(bin_size)
        );
        // Rebuilt from either base, with either archive: the same tensors, in safetensors with transformers'
        // metadata.
        let outs: Vec<PathBuf> = [(&base_bin, &a_bin), (&base_st, &a_bin), (&base_bin, &a_st)]
            .iter()
            .enumerate()
            .map(|(i, (base, archive))| {
                let out = t.path().join(format!("out{i}"));
                ud_ok(&[apply_cmd(base, archive, &out, &[]), vec!["--force"]].concat());
                out
            })
            .collect();
        for o in &outs[1..] {
            same_tensors(&outs[0], o);
        }
        let rebuilt = Checkpoint::open(&outs[0]).unwrap();
        assert_eq!(
            rebuilt.metadata().get("format").map(String::as_str),
            Some("pt")
        );
        assert!(outs[0].join("model.safetensors").is_file());
        assert!(outs[0].join("config.json").is_file());
        // verify against a base in either format; eval against the PyTorch fine-tune.
        for base in [&base_bin, &base_st] {
            ud_ok(&["verify", "--quiet", "--base", s(base), s(&a_bin)]);
        }
        ud_ok(&[
            "eval",
            "--quiet",
            "--base",
            s(&base_bin),
            "--finetuned",
            s(&ft_bin),
            s(&a_bin),
        ]);
    }
}

#[test]
fn a_pytorch_file_torch_cannot_have_written_is_one_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let ft = t.path().join("ft");
    std::fs::create_dir(&ft).unwrap();
    std::fs::copy(fixture("bert-ft-bin/config.json"), ft.join("config.json")).unwrap();
    // The fine-tune's pytorch_model.bin cut in half.
    let bytes = std::fs::read(fixture("bert-ft-bin/pytorch_model.bin")).unwrap();
    std::fs::write(ft.join("pytorch_model.bin"), &bytes[..bytes.len() / 2]).unwrap();
    let out = t.path().join("a.udelta");
    let e = ud_err(&compress_cmd(&fixture("bert-bin"), &ft, &out, &[]));
    assert!(
        e.contains("pytorch_model.bin: invalid PyTorch checkpoint: zip container: no end-of-central-directory record (truncated file?)"),
        "{e}"
    );
    assert!(!out.exists());
}

/// A fine-tune whose matrices are strided views of their storages (the layout transformers' TensorFlow conversions
/// saved) compresses to the archive of its contiguous twin, but for its size on disk, and rebuilds the same tensors.
#[test]
fn a_fine_tune_of_strided_views_is_its_contiguous_twin() {
    let t = tempfile::tempdir().unwrap();
    let base = fixture("bert-bin");
    let (a_views, a_bin) = (t.path().join("views.udelta"), t.path().join("bin.udelta"));
    ud_ok(&compress_cmd(
        &base,
        &fixture("bert-ft-views"),
        &a_views,
        &[],
    ));
    ud_ok(&compress_cmd(&base, &fixture("bert-ft-bin"), &a_bin, &[]));
    assert_eq!(report(&a_views), report(&a_bin));
    let rebuilt = t.path().join("rebuilt");
    ud_ok(&apply_cmd(&base, &a_views, &rebuilt, &[]));
    let twin = t.path().join("twin");
    ud_ok(&apply_cmd(&base, &a_bin, &twin, &[]));
    same_tensors(&rebuilt, &twin);
    // lossless, the rebuilt fine-tune is the fine-tune, read row-major
    let lossless = t.path().join("lossless.udelta");
    ud_ok(&compress_cmd(
        &base,
        &fixture("bert-ft-views"),
        &lossless,
        &["--keep", "*"],
    ));
    let exact = t.path().join("exact");
    ud_ok(&apply_cmd(&base, &lossless, &exact, &[]));
    same_tensors(&exact, &fixture("bert-ft-st"));
    // without --quiet, a note says what was copied (the fine-tune's 10 matrices, 1,120 parameters)
    let out = ud(&[
        "eval",
        "--base",
        s(&base),
        "--finetuned",
        s(&fixture("bert-ft-views")),
        s(&a_views),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("bert-ft-views: 1120 parameters saved as strided views (without .contiguous()), copied row-major"),
        "{stderr}"
    );
}

/// A PyTorch Lightning checkpoint of a fine-tune (its state dict under `state_dict`, names prefixed `model.`, beside
/// the optimizer's moments) compresses against the plain base, with a note that the file holds more than the model;
/// kept without loss, it rebuilds the state dict exactly.
#[test]
fn a_lightning_checkpoint_is_a_fine_tune_with_a_note() {
    let t = tempfile::tempdir().unwrap();
    let (base, ft) = (fixture("plain.bin"), fixture("lightning.ckpt"));
    let archive = t.path().join("a.udelta");
    // not --quiet: the note is the point
    let mut args = compress_cmd(&base, &ft, &archive, &["--keep", "*"]);
    args.retain(|a| *a != "--quiet");
    let out = ud(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let size = std::fs::metadata(&ft).unwrap().len();
    let tensors = Checkpoint::open(&ft).unwrap().total_tensor_bytes();
    assert!(
        stderr.contains(&format!(
            "lightning.ckpt: its weight files hold {size} bytes, its model's tensors {tensors}: the rest"
        )),
        "{stderr}"
    );
    let rebuilt = t.path().join("rebuilt");
    ud_ok(&apply_cmd(&base, &archive, &rebuilt, &[]));
    same_tensors(&rebuilt, &ft);
}

#[test]
fn the_legacy_format_pairs_with_the_zip_one() {
    // legacy.bin holds plain.bin's state dict, saved in PyTorch's format before 1.6: nothing changed.
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("a.udelta");
    ud_ok(&compress_cmd(
        &fixture("plain.bin"),
        &fixture("legacy.bin"),
        &out,
        &[],
    ));
    let rebuilt = t.path().join("rebuilt");
    ud_ok(&apply_cmd(&fixture("plain.bin"), &out, &rebuilt, &[]));
    same_tensors(&rebuilt, &fixture("legacy.bin"));
}
