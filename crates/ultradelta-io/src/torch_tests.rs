//! Tests of the PyTorch reader on files built here (a stored zip and a pickle written opcode by opcode, as
//! `torch.save` writes them) and on hostile variants of them. Files written by the real `torch.save` are tested in
//! `tests/torch_files.rs`.

use std::path::Path;

use crate::{Checkpoint, DType};

/// A zip of stored entries, as `torch.save` writes it. `zip64` writes the zip64 end records as well.
pub(crate) fn zip(entries: &[(&str, &[u8])], zip64: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let at = out.len() as u32;
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method 0, time, date
        out.extend_from_slice(&0u32.to_le_bytes()); // crc (not checked by the reader)
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend_from_slice(&0u32.to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes
        central.extend_from_slice(&at.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u64;
    out.extend_from_slice(&central);
    let n = entries.len() as u64;
    if zip64 {
        let eocd64 = out.len() as u64;
        out.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(central.len() as u64).to_le_bytes());
        out.extend_from_slice(&cd_offset.to_le_bytes());
        out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&eocd64.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
    }
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let (n16, size32, off32) = if zip64 {
        (0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF)
    } else {
        (n as u16, central.len() as u32, cd_offset as u32)
    };
    out.extend_from_slice(&n16.to_le_bytes());
    out.extend_from_slice(&n16.to_le_bytes());
    out.extend_from_slice(&size32.to_le_bytes());
    out.extend_from_slice(&off32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A pickle written opcode by opcode.
#[derive(Default)]
pub(crate) struct Pickle(pub Vec<u8>);

impl Pickle {
    pub fn op(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.op(b"X")
            .op(&(s.len() as u32).to_le_bytes())
            .op(s.as_bytes())
    }
    pub fn int(&mut self, v: i32) -> &mut Self {
        self.op(b"J").op(&v.to_le_bytes())
    }
    pub fn ints(&mut self, v: &[i64]) -> &mut Self {
        self.op(b"(");
        for &x in v {
            self.int(x as i32);
        }
        self.op(b"t")
    }
    /// `torch._utils._rebuild_tensor_v2(storage, offset, shape, strides, False, OrderedDict())`, the storage
    /// memoized under `memo` the first time (`BINPUT`) and fetched (`BINGET`) after.
    pub fn tensor(&mut self, t: &T, first_use: bool) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
        if first_use {
            self.op(b"(")
                .str("storage")
                .global("torch", t.kind)
                .str(t.key)
                .str("cpu")
                .int(t.storage_numel as i32)
                .op(b"tQ")
                .op(&[b'q', t.memo]);
        } else {
            self.op(&[b'h', t.memo]);
        }
        self.int(t.offset as i32)
            .ints(t.shape)
            .ints(t.strides)
            .op(&[0x89])
            .global("collections", "OrderedDict")
            .op(b")R")
            .op(b"tR")
    }
}

/// A tensor of a test state dict.
pub(crate) struct T<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub key: &'a str,
    pub memo: u8,
    pub storage_numel: u64,
    pub offset: u64,
    pub shape: &'a [i64],
    pub strides: &'a [i64],
}

/// The pickle of an `OrderedDict` state dict of `tensors` (with a `_metadata` state, as torch writes it).
pub(crate) fn state_dict(tensors: &[T]) -> Vec<u8> {
    let mut p = Pickle::default();
    p.op(&[0x80, 2])
        .global("collections", "OrderedDict")
        .op(b")Rq\xff(");
    let mut seen = Vec::new();
    for t in tensors {
        p.str(t.name);
        let first = !seen.contains(&t.memo);
        seen.push(t.memo);
        p.tensor(t, first);
    }
    p.op(b"u}").str("_metadata").op(b"}sb.");
    p.0
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn sample() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let a = f32_bytes(&(0..12).map(|i| i as f32).collect::<Vec<_>>());
    let h: Vec<u8> = (0..5)
        .flat_map(|i| half::f16::from_f32(i as f32 * 0.5).to_le_bytes())
        .collect();
    let ids: Vec<u8> = (0..4i64).flat_map(|i| i.to_le_bytes()).collect();
    (a, h, ids)
}

fn sample_tensors() -> Vec<T<'static>> {
    vec![
        T {
            name: "w",
            kind: "FloatStorage",
            key: "0",
            memo: 1,
            storage_numel: 12,
            offset: 0,
            shape: &[4, 3],
            strides: &[3, 1],
        },
        T {
            name: "tail",
            kind: "FloatStorage",
            key: "0",
            memo: 1,
            storage_numel: 12,
            offset: 3,
            shape: &[3, 3],
            strides: &[3, 1],
        },
        T {
            name: "h",
            kind: "HalfStorage",
            key: "1",
            memo: 2,
            storage_numel: 5,
            offset: 0,
            shape: &[5],
            strides: &[1],
        },
        T {
            name: "ids",
            kind: "LongStorage",
            key: "2",
            memo: 3,
            storage_numel: 4,
            offset: 0,
            shape: &[1, 4],
            strides: &[7, 1],
        },
    ]
}

fn sample_file(pkl: &[u8]) -> Vec<u8> {
    let (a, h, ids) = sample();
    zip(
        &[
            ("archive/data.pkl", pkl),
            ("archive/byteorder", b"little"),
            ("archive/data/0", &a),
            ("archive/data/1", &h),
            ("archive/data/2", &ids),
            ("archive/version", b"3\n"),
        ],
        false,
    )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn open_err(bytes: &[u8]) -> String {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "pytorch_model.bin", bytes);
    match Checkpoint::open(&p) {
        Ok(_) => panic!("opened"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn reads_a_state_dict_as_torch_saves_it() {
    for zip64 in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let (a, h, ids) = sample();
        let pkl = state_dict(&sample_tensors());
        let bytes = zip(
            &[
                ("archive/data.pkl", &pkl),
                ("archive/byteorder", b"little"),
                ("archive/data/0", &a),
                ("archive/data/1", &h),
                ("archive/data/2", &ids),
            ],
            zip64,
        );
        let p = write(d.path(), "pytorch_model.bin", &bytes);
        // The file, and its folder.
        for ck in [
            Checkpoint::open(&p).unwrap(),
            Checkpoint::open(d.path()).unwrap(),
        ] {
            let names: Vec<&str> = ck.tensors().iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, ["h", "ids", "tail", "w"]);
            let w = ck.view("w").unwrap();
            assert_eq!(w.info().shape, [4, 3]);
            assert_eq!(
                w.to_f32().unwrap(),
                (0..12).map(|i| i as f32).collect::<Vec<_>>()
            );
            // An offset into a storage another tensor shares.
            assert_eq!(
                ck.view("tail").unwrap().to_f32().unwrap(),
                (3..12).map(|i| i as f32).collect::<Vec<_>>()
            );
            assert_eq!(ck.view("h").unwrap().info().dtype, DType::F16);
            assert_eq!(
                ck.view("h").unwrap().to_f32().unwrap(),
                [0.0, 0.5, 1.0, 1.5, 2.0]
            );
            let ids = ck.view("ids").unwrap();
            assert_eq!(ids.info().dtype, DType::I64);
            assert_eq!(ids.bytes(), &sample().2[..]);
            assert_eq!(ck.size_on_disk(), bytes.len() as u64);
            assert_eq!(ck.metadata().get("format").map(String::as_str), Some("pt"));
        }
    }
}

#[test]
fn a_wrapped_state_dict_is_found_under_its_key() {
    let inner = state_dict(&sample_tensors());
    // {"epoch": 3, "model": <state dict>}: the inner pickle without its protocol and STOP.
    let mut p = Pickle::default();
    p.op(&[0x80, 2, b'}', b'('])
        .str("epoch")
        .int(3)
        // A bare tensor beside the wrapped state dict ("best": tensor(..)) does not make the wrapper one.
        .str("best")
        .tensor(&sample_tensors()[2], true)
        .str("args")
        .global("argparse", "Namespace")
        .op(b")R}bq\x09")
        .str("model");
    p.op(&inner[2..inner.len() - 1]).op(b"u.");
    let d = tempfile::tempdir().unwrap();
    let f = write(d.path(), "checkpoint.pth", &sample_file(&p.0));
    let ck = Checkpoint::open(d.path()).unwrap();
    assert_eq!(ck.weight_files(), [f]);
    assert_eq!(ck.tensors().len(), 4);
}

#[test]
fn hostile_pickles_are_data_not_code() {
    // os.system("touch ..."): a name and a call, never run; not a state dict.
    let d = tempfile::tempdir().unwrap();
    let marker = d.path().join("ran");
    let mut p = Pickle::default();
    p.op(&[0x80, 2])
        .global("os", "system")
        .op(b"(")
        .str(&format!("touch {}", marker.display()))
        .op(b"tR.");
    let e = open_err(&sample_file(&p.0));
    assert!(
        e.ends_with("holds an object built by os.system, not a state dict (a dict of tensors); a whole model saved with torch.save(model)? save model.state_dict() instead"),
        "{e}"
    );
    assert!(!marker.exists());
    // The same call as a value beside a tensor in a state dict.
    let inner = state_dict(&sample_tensors()[..1]);
    let mut p = Pickle::default();
    p.op(&inner[..inner.len() - 19])
        .str("x")
        .global("os", "system")
        .op(b"(")
        .str("true")
        .op(b"tRs.");
    let e = open_err(&sample_file(&p.0));
    assert!(
        e.contains("tensor \"x\": is an object built by os.system, not a tensor"),
        "{e}"
    );
}

#[test]
fn every_error_names_the_file_and_what_was_expected() {
    let t = |f: &dyn Fn(&mut T)| {
        let mut ts = sample_tensors();
        f(&mut ts[0]);
        open_err(&sample_file(&state_dict(&ts)))
    };
    let cases: Vec<(String, &str)> = vec![
        (
            t(&|t| t.strides = &[1, 5]),
            "tensor \"w\": elements 0..14 lie outside its storage of 12 elements",
        ),
        (
            t(&|t| t.strides = &[-3, 1]),
            "tensor \"w\": a view of shape [4, 3] with strides [-3, 1]: expected non-negative strides",
        ),
        (
            t(&|t| t.offset = 1),
            "tensor \"w\": elements 1..13 lie outside its storage of 12 elements",
        ),
        (
            t(&|t| t.storage_numel = 13),
            "tensor \"w\": storage \"0\" holds 48 bytes, but 13 elements of torch.FloatStorage are declared",
        ),
        (
            t(&|t| t.key = "9"),
            "its storage \"archive/data/9\" is not in the zip",
        ),
        (
            t(&|t| t.kind = "ComplexFloatStorage"),
            "storage type torch.ComplexFloatStorage is not supported",
        ),
        (t(&|t| t.name = "h"), "tensor \"h\": appears twice in the state dict"),
        (
            // a stride-0 view may repeat its storage at will: its row-major copy is bounded by the file's size
            t(&|t| {
                t.shape = &[100_000, 12];
                t.strides = &[0, 1];
            }),
            "tensor \"w\": the strided views up to this one hold 4800000 bytes, more than the checkpoint's",
        ),
    ];
    for (e, want) in cases {
        assert!(e.contains(want), "{e}\nexpected: {want}");
        assert!(e.contains("pytorch_model.bin"), "{e}");
    }
    // Not a state dict at all.
    let e = open_err(&sample_file(&[0x80, 2, b'K', 7, b'.']));
    assert!(e.contains("holds an int, not a state dict"), "{e}");
    let mut p = Pickle::default();
    p.op(&[0x80, 2, b'}']).str("epoch").int(3).op(b"s.");
    let e = open_err(&sample_file(&p.0));
    assert!(
        e.contains("holds a dict of 1 entries (\"epoch\") with no tensors, and no state dict under state_dict, model"),
        "{e}"
    );
    // An opcode torch.save never writes; a pickle without its STOP; a memo read before it is written.
    let e = open_err(&sample_file(&[0x80, 2, b'i']));
    assert!(e.contains("pickle opcode 0x69"), "{e}");
    let e = open_err(&sample_file(&[0x80, 2, b'}']));
    assert!(e.contains("ends before its STOP"), "{e}");
    let e = open_err(&sample_file(&[0x80, 2, b'h', 4, b'.']));
    assert!(e.contains("memo entry 4 used before it is set"), "{e}");
    // A string longer than the pickle.
    let e = open_err(&sample_file(&[0x80, 2, b'X', 0xff, 0xff, 0xff, 0x7f, b'.']));
    assert!(e.contains("past the end of the pickle"), "{e}");
    // Legacy format, a zip without data.pkl, big-endian.
    let mut legacy = vec![
        0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
    ];
    legacy.extend_from_slice(b".\x80\x02}.");
    let e = open_err(&legacy);
    assert!(
        e.contains("legacy format: protocol version a dict of 0 entries, expected 1001"),
        "{e}"
    );
    let e = open_err(&zip(&[("a/b.txt", b"x")], false));
    assert!(e.contains("a zip without data.pkl"), "{e}");
    let (a, _, _) = sample();
    let pkl = state_dict(&sample_tensors()[..1]);
    let e = open_err(&zip(
        &[
            ("x/data.pkl", &pkl),
            ("x/byteorder", b"big"),
            ("x/data/0", &a),
        ],
        false,
    ));
    assert!(e.contains("byte order \"big\""), "{e}");
}

#[test]
fn a_compressed_entry_is_refused() {
    let mut bytes = sample_file(&state_dict(&sample_tensors()));
    // Set the method of the central entry of archive/data/0 to deflate (8).
    let cd = bytes
        .windows(4)
        .position(|w| w == 0x0201_4b50u32.to_le_bytes())
        .unwrap();
    let mut p = cd;
    for _ in 0..2 {
        let (n, e, c) = (
            u16::from_le_bytes([bytes[p + 28], bytes[p + 29]]) as usize,
            u16::from_le_bytes([bytes[p + 30], bytes[p + 31]]) as usize,
            u16::from_le_bytes([bytes[p + 32], bytes[p + 33]]) as usize,
        );
        p += 46 + n + e + c;
    }
    bytes[p + 10] = 8;
    let e = open_err(&bytes);
    assert!(
        e.contains("zip entry \"archive/data/0\": compressed (method 8)"),
        "{e}"
    );
}

#[test]
fn deep_nesting_and_many_values_are_bounded() {
    // A million nested tuples: built and dropped without recursion.
    let mut p = vec![0x80, 2, b'N'];
    p.extend(std::iter::repeat_n(0x85u8, 1_000_000));
    p.push(b'.');
    let e = open_err(&sample_file(&p));
    assert!(e.contains("holds a tuple of 1, not a state dict"), "{e}");
    // More values than the limit.
    let mut p = vec![0x80, 2];
    p.extend(std::iter::repeat_n(b'N', crate::MAX_PICKLE_NODES + 1));
    let e = open_err(&sample_file(&p));
    assert!(
        e.contains("more than 4194304 values, references and marks"),
        "{e}"
    );
}

#[test]
fn every_truncation_and_byte_flip_is_an_error_or_a_valid_file() {
    let bytes = sample_file(&state_dict(&sample_tensors()));
    let d = tempfile::tempdir().unwrap();
    for cut in 0..bytes.len() {
        let p = write(d.path(), "pytorch_model.bin", &bytes[..cut]);
        assert!(Checkpoint::open(&p).is_err(), "cut at {cut}");
    }
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        let p = write(d.path(), "pytorch_model.bin", &b);
        if let Ok(ck) = Checkpoint::open(&p) {
            for v in ck.views() {
                let _ = v.to_f32();
            }
            let _ = ck.fingerprint();
        }
    }
}

/// A safetensors file of one f32 tensor `x`, written by this crate's writer as `dir/name` (its working folder gone).
fn one_tensor_safetensors(dir: &Path, name: &str) -> std::path::PathBuf {
    crate::write_checkpoint(
        dir.join("st"),
        &[(
            crate::TensorInfo::new("x", DType::F32, vec![1]),
            1f32.to_le_bytes().to_vec(),
        )],
        crate::WriterOptions::default(),
    )
    .unwrap();
    let f = dir.join(name);
    std::fs::rename(dir.join("st/model.safetensors"), &f).unwrap();
    std::fs::remove_dir_all(dir.join("st")).unwrap();
    f
}

#[test]
fn folders_pick_the_model_file() {
    let bytes = sample_file(&state_dict(&sample_tensors()));
    // Hugging Face trainer output: the model beside the trainer's own pickles.
    let d = tempfile::tempdir().unwrap();
    let model = write(d.path(), "pytorch_model.bin", &bytes);
    write(d.path(), "training_args.bin", b"\x80\x02}.");
    write(d.path(), "optimizer.pt", &bytes);
    write(d.path(), "rng_state.pth", &bytes);
    let ck = Checkpoint::open(d.path()).unwrap();
    assert_eq!(ck.weight_files(), std::slice::from_ref(&model));
    // safetensors first, when both are there.
    one_tensor_safetensors(d.path(), "model.safetensors");
    let ck = Checkpoint::open(d.path()).unwrap();
    assert_eq!(ck.tensors().len(), 1);
    // A PEFT adapter's folder is not a model (either format); its file named explicitly opens.
    for weights in ["adapter_model.bin", "adapter_model.safetensors"] {
        let d = tempfile::tempdir().unwrap();
        let f = if weights.ends_with(".bin") {
            write(d.path(), weights, &bytes)
        } else {
            one_tensor_safetensors(d.path(), weights)
        };
        assert!(Checkpoint::open(d.path()).is_ok(), "{weights}");
        write(d.path(), "adapter_config.json", b"{}");
        let e = Checkpoint::open(d.path()).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "holds a PEFT adapter ({weights} and adapter_config.json)"
            )) && e.contains("merge_and_unload"),
            "{e}"
        );
        assert!(Checkpoint::open(&f).is_ok(), "{weights}");
    }
    // Two candidate files and no index: named, not guessed.
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.pt", &bytes);
    write(d.path(), "b.pt", &bytes);
    let e = Checkpoint::open(d.path()).unwrap_err().to_string();
    assert!(e.contains("holds 2 PyTorch files (a.pt, b.pt)"), "{e}");
}

#[test]
fn sharded_pytorch_checkpoints_open_through_their_index() {
    let d = tempfile::tempdir().unwrap();
    let ts = sample_tensors();
    let (a, h, _) = sample();
    let one = zip(
        &[
            ("archive/data.pkl", &state_dict(&ts[..2])),
            ("archive/data/0", &a),
        ],
        false,
    );
    let two = zip(
        &[
            (
                "pytorch_model-00002-of-00002/data.pkl",
                &state_dict(&ts[2..3]),
            ),
            ("pytorch_model-00002-of-00002/data/1", &h),
        ],
        false,
    );
    write(d.path(), "pytorch_model-00001-of-00002.bin", &one);
    write(d.path(), "pytorch_model-00002-of-00002.bin", &two);
    let index = r#"{"metadata": {}, "weight_map": {"w": "pytorch_model-00001-of-00002.bin", "tail": "pytorch_model-00001-of-00002.bin", "h": "pytorch_model-00002-of-00002.bin"}}"#;
    write(d.path(), crate::TORCH_INDEX_FILE_NAME, index.as_bytes());
    let ck = Checkpoint::open(d.path()).unwrap();
    assert_eq!(ck.tensors().len(), 3);
    assert_eq!(ck.weight_files().len(), 2);
    assert_eq!(
        ck.view("h").unwrap().to_f32().unwrap(),
        [0.0, 0.5, 1.0, 1.5, 2.0]
    );
    assert!(matches!(
        Checkpoint::open(d.path().join("pytorch_model-00002-of-00002.bin")),
        Ok(ck) if ck.tensors().len() == 1
    ));
}
