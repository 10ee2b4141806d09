//! Files written by the real `torch.save` (torch 2.5.1; `tests/data/torch/make.py` wrote them, with each one's
//! tensors as torch loads them in `<name>.expected.json`): every tensor reads back with torch's dtype, shape and
//! values; what the reader refuses, it refuses with the file, the tensor and the reason.

use std::path::{Path, PathBuf};

use ultradelta_io::{Checkpoint, DType};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/torch")
        .join(name)
}

fn expected(name: &str) -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(data(&format!("{name}.expected.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["tensors"].as_object().unwrap().clone()
}

/// The values of an integer or bool tensor, widened to i64.
fn ints(dtype: DType, b: &[u8]) -> Vec<i64> {
    let w = dtype.size();
    b.chunks(w)
        .map(|c| match dtype {
            DType::I64 => i64::from_le_bytes(c.try_into().unwrap()),
            DType::I32 => i64::from(i32::from_le_bytes(c.try_into().unwrap())),
            DType::I16 => i64::from(i16::from_le_bytes(c.try_into().unwrap())),
            DType::I8 => i64::from(c[0] as i8),
            DType::U8 | DType::Bool => i64::from(c[0]),
            _ => unreachable!(),
        })
        .collect()
}

/// Checks every tensor of `ck` against the expected ones (their names with `strip` removed).
fn check(ck: &Checkpoint, name: &str, strip: &str) {
    let want = expected(name);
    let got: Vec<&str> = ck.tensors().iter().map(|t| t.name.as_str()).collect();
    let mut names: Vec<String> = want
        .keys()
        .map(|k| k.strip_prefix(strip).unwrap_or(k).to_string())
        .collect();
    names.sort();
    assert_eq!(got, names, "{name}");
    for (key, w) in &want {
        let t = ck.view(key.strip_prefix(strip).unwrap_or(key)).unwrap();
        let info = t.info();
        assert_eq!(
            info.dtype.name(),
            w["dtype"].as_str().unwrap(),
            "{name} {key}"
        );
        let shape: Vec<usize> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(info.shape, shape, "{name} {key}");
        let values = w["values"].as_array().unwrap();
        if info.dtype.is_float() {
            let got = t.to_f32().unwrap();
            let want: Vec<f32> = values.iter().map(|v| v.as_f64().unwrap() as f32).collect();
            assert_eq!(got.len(), want.len());
            for (g, e) in got.iter().zip(&want) {
                assert!(g.to_bits() == e.to_bits(), "{name} {key}: {g} vs {e}");
            }
        } else {
            let want: Vec<i64> = values.iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(ints(info.dtype, t.bytes()), want, "{name} {key}");
        }
    }
}

#[test]
fn real_torch_save_files_read_as_torch_loads_them() {
    for name in [
        "plain.bin",
        "dtypes.bin",
        "tied.bin",
        "offset.bin",
        "param.bin",
        "views.bin",
        "views-real.pth",
    ] {
        let ck = Checkpoint::open(data(name)).unwrap();
        check(&ck, name, "");
    }
    // {"model": state_dict, "epoch": 3, "args": Namespace(..)}: the state dict under "model".
    let ck = Checkpoint::open(data("wrapped.pth")).unwrap();
    check(&ck, "wrapped.pth", "model.");
    // PyTorch Lightning: the state dict under "state_dict", beside the optimizer's moments (tensors too, not read)
    let ck = Checkpoint::open(data("lightning.ckpt")).unwrap();
    check(&ck, "lightning.ckpt", "state_dict.");
}

/// A folder holding one Lightning `.ckpt` opens it; two (`last.ckpt` beside an epoch's) are named, not guessed.
#[test]
fn a_folder_with_one_lightning_checkpoint_opens_it() {
    let d = tempfile::tempdir().unwrap();
    let one = d.path().join("epoch=3-step=1200.ckpt");
    std::fs::copy(data("lightning.ckpt"), &one).unwrap();
    assert_eq!(Checkpoint::open(d.path()).unwrap().weight_files(), [one]);
    std::fs::copy(data("lightning.ckpt"), d.path().join("last.ckpt")).unwrap();
    let e = Checkpoint::open(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("2 PyTorch files (epoch=3-step=1200.ckpt, last.ckpt)"),
        "{e}"
    );
}

#[test]
fn every_pickle_protocol_reads_the_same_tensors() {
    // torch.save(pickle_protocol=2, 4) in the zip format, and 4, 5 in the legacy one (FRAME, MEMOIZE,
    // SHORT_BINUNICODE): the same state dict as protocol 2's.
    let reference = Checkpoint::open(data("protocol2.pt")).unwrap();
    assert_eq!(reference.tensors().len(), 4);
    assert_eq!(
        reference.view("c").unwrap().bytes(),
        (0..6i64).flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()
    );
    for name in ["protocol4.pt", "legacy-protocol4.pt", "legacy-protocol5.pt"] {
        let ck = Checkpoint::open(data(name)).unwrap();
        assert_eq!(ck.tensors(), reference.tensors(), "{name}");
        for (a, b) in ck.views().zip(reference.views()) {
            assert_eq!(a.bytes(), b.bytes(), "{name} {}", a.info().name);
        }
    }
}

#[test]
fn tied_weights_share_one_storage() {
    let ck = Checkpoint::open(data("tied.bin")).unwrap();
    let (a, b) = (
        ck.view("embed.weight").unwrap(),
        ck.view("lm_head.weight").unwrap(),
    );
    assert_eq!(a.bytes().as_ptr(), b.bytes().as_ptr());
}

#[test]
fn a_transformers_folder_saved_by_pytorch_is_the_same_checkpoint_as_its_safetensors() {
    let bin = Checkpoint::open(data("bert-bin")).unwrap();
    let st = Checkpoint::open(data("bert-st")).unwrap();
    check(&bin, "bert-bin", "");
    assert_eq!(bin.tensors(), st.tensors());
    for (a, b) in bin.views().zip(st.views()) {
        assert_eq!(a.bytes(), b.bytes(), "{}", a.info().name);
    }
    // The same weights in either format: the same fingerprint, so an archive made against one applies to the other.
    assert_eq!(bin.fingerprint(), st.fingerprint());
    assert_eq!(
        bin.weight_files(),
        [data("bert-bin").join("pytorch_model.bin")]
    );
    assert_eq!(
        bin.companion_files(),
        [data("bert-bin").join("config.json")]
    );
}

/// The strided tensors real checkpoints hold (a TensorFlow kernel transposed in place, a column slice of a fused
/// weight, a channels_last convolution, a permutation, an expanded buffer, a bf16 transpose) read row-major, as
/// torch's `.contiguous()` gives them, by every way a tensor's bytes are read; a view shares no bytes with its
/// storage's other tensors, and names its weight file.
#[test]
fn strided_views_read_row_major_every_way() {
    let ck = Checkpoint::open(data("views-real.pth")).unwrap();
    check(&ck, "views-real.pth", "");
    for v in ck.views() {
        let mut out = vec![0u8; v.bytes().len()];
        let hash = v.read_hashed_into(&mut out, 5, |_, _| {}).unwrap();
        assert_eq!(out, v.bytes(), "{}", v.info().name);
        assert_eq!(hash, v.content_hash(), "{}", v.info().name);
        assert_eq!(v.file(), data("views-real.pth"));
        ck.release(&v.info().name);
        ck.prefetch(&v.info().name);
    }
    assert_eq!(ck.weight_files(), [data("views-real.pth")]);
    assert_eq!(
        ck.size_on_disk(),
        std::fs::metadata(data("views-real.pth")).unwrap().len()
    );
    // views.bin: three views of one storage; the transpose reads as the transposed values
    let ck = Checkpoint::open(data("views.bin")).unwrap();
    let t: Vec<f32> = ck.view("transpose").unwrap().to_f32().unwrap();
    let want: Vec<f32> = (0..3)
        .flat_map(|j| (0..4).map(move |i| (i * 3 + j) as f32 + 0.5))
        .collect();
    assert_eq!(t, want);
}

/// `open_with` reports the views' copy after each view, ending at the total, and stops when told to.
#[test]
fn opening_reports_the_views_copy_and_can_be_stopped() {
    let mut calls = Vec::new();
    Checkpoint::open_with(data("views-real.pth"), &mut |done, total| {
        calls.push((done, total));
        true
    })
    .unwrap();
    assert!(calls.len() >= 2, "{calls:?}");
    assert!(
        calls
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 == w[1].1),
        "{calls:?}"
    );
    assert_eq!(calls.last().unwrap().0, calls[0].1);
    let mut n = 0;
    let e = Checkpoint::open_with(data("views-real.pth"), &mut |_, _| {
        n += 1;
        n < 2
    })
    .unwrap_err();
    assert!(matches!(e, ultradelta_io::Error::Cancelled { .. }), "{e}");
    assert_eq!(n, 2);
    assert!(
        e.to_string()
            .ends_with("views-real.pth: cancelled while its strided views were copied"),
        "{e}"
    );
    // no views: never called
    Checkpoint::open_with(data("plain.bin"), &mut |_, _| {
        panic!("plain.bin has no views")
    })
    .unwrap();
}

#[test]
fn every_truncation_is_an_error_and_no_byte_flip_panics() {
    let d = std::env::temp_dir().join(format!("ultradelta-io-torch-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    for name in ["plain.bin", "legacy.bin", "bert-bin/pytorch_model.bin"] {
        let bytes = std::fs::read(data(name)).unwrap();
        let p = d.join("pytorch_model.bin");
        for cut in 0..bytes.len() {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            assert!(Checkpoint::open(&p).is_err(), "{name} cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xa5;
            std::fs::write(&p, &b).unwrap();
            if let Ok(ck) = Checkpoint::open(&p) {
                let _ = ck.fingerprint();
                for v in ck.views() {
                    let _ = v.to_f32();
                }
            }
        }
    }
    std::fs::remove_dir_all(d).ok();
}
