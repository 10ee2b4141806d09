//! The opt-in codecs (`--positions seeded`, `--values entropy`, `--codec auto`) through the real binary:
//! compress → apply equals the in-memory result, bytes do not depend on the thread count, `inspect` splits the
//! bits, the byte budget buys density, and methods the codecs do not apply to are refused in one line.

use ultradelta::archive::ArchiveReader;
use ultradelta::io::DType;
use ultradelta::{CompressConfig, Method};

use crate::cli_methods::{check_apply_equals_in_memory, matrix_pair};
use crate::support::{apply_cmd, compressed_kinds, inspect_json, pair, s, ud, ud_err, ud_ok};

fn compress_args<'a>(base: &'a str, ft: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "compress",
        "--quiet",
        "--base",
        base,
        "--finetuned",
        ft,
        "--output",
        out,
        "--sparsity",
        "0.9",
    ];
    a.extend(extra);
    a
}

#[test]
fn every_codec_round_trips_through_apply() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), DType::BF16, false, 7);
    let cases: [(&str, &[&str], &[&str]); 5] = [
        (
            "golomb-entropy",
            &["--positions", "golomb", "--values", "entropy"],
            &["sparse-golomb-rans"],
        ),
        (
            "seeded-packed",
            &["--positions", "seeded", "--values", "packed"],
            &["sparse-seeded"],
        ),
        (
            "seeded-entropy",
            &[
                "--positions",
                "seeded",
                "--values",
                "entropy",
                "--seed-trials",
                "3",
            ],
            &["sparse-seeded-rans"],
        ),
        (
            "auto",
            &["--positions", "golomb", "--codec", "auto"],
            &["sparse-golomb", "sparse-golomb-rans"],
        ),
        (
            "seeded-auto",
            &["--positions", "seeded", "--codec", "auto"],
            &["sparse-seeded", "sparse-seeded-rans"],
        ),
    ];
    for (label, flags, kinds) in cases {
        let archive = dir.path().join(format!("{label}.udelta"));
        ud_ok(&compress_args(s(&base), s(&ft), s(&archive), flags));
        let ins: serde_json::Value = inspect_json(&archive);
        let got: Vec<&str> = compressed_kinds(&ins);
        assert!(
            !got.is_empty() && got.iter().all(|k| kinds.contains(k)),
            "{label}: {got:?}"
        );
        let codec = &ins["codec"];
        assert!(codec["bits_per_kept"].as_f64().unwrap() > 0.0, "{label}");
        if label.starts_with("seeded") {
            assert_eq!(codec["position_bits_per_kept"], 0.0, "{label}");
        } else {
            assert!(
                codec["position_bits_per_kept"].as_f64().unwrap() > 1.0,
                "{label}"
            );
        }
        let rebuilt = dir.path().join(format!("{label}-rebuilt"));
        ud_ok(&apply_cmd(&base, &archive, &rebuilt, &[]));
        check_apply_equals_in_memory(&base, &ft, &archive, &rebuilt, Method::Ultradelta);
    }
    // Same kept entries under golomb+packed and golomb+entropy: the rebuilt weights are identical.
    let (a, b) = (
        dir.path().join("golomb-packed.udelta"),
        dir.path().join("golomb-entropy.udelta"),
    );
    ud_ok(&compress_args(s(&base), s(&ft), s(&a), &[]));
    let ra = ArchiveReader::open(&a).unwrap();
    let rb = ArchiveReader::open(&b).unwrap();
    for e in ra
        .manifest()
        .tensors
        .iter()
        .filter(|e| e.kind == "sparse-golomb")
    {
        let n = e.numel as usize;
        assert_eq!(
            ra.read_record(&e.name)
                .unwrap()
                .delta_to_dense(n, 1.0)
                .unwrap(),
            rb.read_record(&e.name)
                .unwrap()
                .delta_to_dense(n, 1.0)
                .unwrap(),
            "{}",
            e.name
        );
    }
    // Human-readable inspect names the codec and the split.
    let human = ud_ok(&["inspect", s(&dir.path().join("seeded-entropy.udelta"))]);
    assert!(human.contains("codec seeded+entropy:"), "{human}");
    assert!(human.contains("0.00 position"), "{human}");
}

#[test]
fn coded_archives_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), DType::F32, false, 9);
    for flags in [
        &["--positions", "seeded", "--values", "entropy"][..],
        &["--values", "entropy"][..],
        &["--positions", "seeded", "--codec", "auto"][..],
    ] {
        let mut bytes = Vec::new();
        for threads in ["1", "2"] {
            let out = dir.path().join(format!("t{threads}.udelta"));
            let mut args = compress_args(s(&base), s(&ft), s(&out), flags);
            args.extend(["--threads", threads, "--force"]);
            ud_ok(&args);
            bytes.push(std::fs::read(&out).unwrap());
        }
        assert_eq!(bytes[0], bytes[1], "{flags:?}");
    }
}

#[test]
fn budget_with_new_codecs_lands_on_target_and_keeps_more() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), DType::F32, false, 4);
    let density = |flags: &[&str]| -> f64 {
        let out = dir.path().join("b.udelta");
        let mut args = vec![
            "compress",
            "--quiet",
            "--force",
            "--base",
            s(&base),
            "--finetuned",
            s(&ft),
            "--output",
            s(&out),
            "--target-ratio",
            "20",
        ];
        args.extend(flags);
        ud_ok(&args);
        let ins = ultradelta::inspect(&ArchiveReader::open(&out).unwrap());
        let real = ins.ratio.real.unwrap();
        assert!((real / 20.0 - 1.0).abs() <= 0.01, "{flags:?}: {real}");
        ins.codec.unwrap().density
    };
    let paper = density(&["--positions", "golomb", "--values", "packed"]);
    let seeded = density(&["--positions", "seeded", "--values", "packed"]);
    let both = density(&["--positions", "seeded", "--values", "entropy"]);
    assert!(seeded > 1.5 * paper, "{seeded} vs {paper}");
    assert!(both > seeded, "{both} vs {seeded}");
}

#[test]
fn codecs_refuse_methods_they_do_not_apply_to() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), DType::F32, false, 2);
    let out = dir.path().join("x.udelta");
    let err = ud_err(&compress_args(
        s(&base),
        s(&ft),
        s(&out),
        &["--method", "magnitude", "--positions", "seeded"],
    ));
    assert!(err.contains("magnitude") && err.contains("seed"), "{err}");
    let err = ud_err(&compress_args(
        s(&base),
        s(&ft),
        s(&out),
        &["--method", "dare", "--values", "entropy"],
    ));
    assert!(err.contains("dare"), "{err}");
    let err = ud_err(&compress_args(
        s(&base),
        s(&ft),
        s(&out),
        &["--no-quant", "--values", "entropy"],
    ));
    assert!(err.contains("--no-quant"), "{err}");
    assert!(!out.exists());
}

#[test]
fn params_without_codec_fields_still_deserialize() {
    let mut v = serde_json::to_value(CompressConfig::default()).unwrap();
    for k in ["positions", "values", "codec", "seed_trials"] {
        v.as_object_mut().unwrap().remove(k);
    }
    let cfg: CompressConfig = serde_json::from_value(v).unwrap();
    // An archive's params without codec fields were written before the codecs existed: Golomb positions and
    // packed levels, whatever today's default is.
    assert_eq!(
        cfg,
        CompressConfig {
            positions: ultradelta::PositionCodec::Golomb,
            values: ultradelta::ValueCodec::Packed,
            ..CompressConfig::default()
        }
    );
}

/// `--bits` and `--quant-fit` left out are the model family's (BERT: 3 bits, range fit); given ones stay; the
/// archive's params record what was used (the paper's preset refusing `--quant-fit`: cli_methods).
#[test]
fn the_quantizer_left_out_is_the_familys() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = pair(dir.path(), DType::F32, false, 5);
    let params = |name: &str, extra: &[&str]| {
        let out = dir.path().join(format!("{name}.udelta"));
        ud_ok(&compress_args(s(&base), s(&ft), s(&out), extra));
        inspect_json(&out)["params"].clone()
    };
    let fit = |p: &serde_json::Value| p["quant_fit"].as_str().unwrap_or("range").to_string();
    let p = params("family", &[]);
    assert_eq!(
        (p["bits"].as_u64(), fit(&p)),
        (Some(3), "range".into()),
        "{p}"
    );
    let p = params("bits4", &["--bits", "4"]);
    assert_eq!(
        (p["bits"].as_u64(), fit(&p)),
        (Some(4), "range".into()),
        "{p}"
    );
    let p = params("mse", &["--quant-fit", "mse-unbiased"]);
    assert_eq!(
        (p["bits"].as_u64(), fit(&p)),
        (Some(3), "mse-unbiased".into()),
        "{p}"
    );
    let p = params("generic", &["--family", "generic"]);
    assert_eq!(
        (p["bits"].as_u64(), fit(&p)),
        (Some(4), "range".into()),
        "{p}"
    );
}

#[test]
fn lowrank_part_writes_kind_16_that_applies_as_in_memory_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    // Two matrices whose deltas are mostly rank 2 (plus noise a tenth of their size).
    let (base, ft) = matrix_pair(dir.path(), &[(96, 80), (120, 64)], 5, |(i, j), u| {
        let (i, j) = (i as f32, j as f32);
        1e-3 * ((i * 0.3).sin() * (j * 0.17).cos()
            + 0.5 * (i * 0.07).cos() * (j * 0.41).sin()
            + 0.1 * u)
    });
    let archive = dir.path().join("lr.udelta");
    let mut args = compress_args(
        s(&base),
        s(&ft),
        s(&archive),
        &["--lowrank-part", "--compress", "*"],
    );
    // 70 % sparsity: these small matrices at 90 % leave too few bytes for a part's fixed fields.
    let at = args.iter().position(|a| *a == "0.9").unwrap();
    args[at] = "0.7";
    ud_ok(&args);
    let ins = inspect_json(&archive);
    assert_eq!(
        compressed_kinds(&ins),
        vec!["lowrank-seeded-rans"; 2],
        "{ins}"
    );
    assert_eq!(ins["params"]["lowrank_part"], true);
    let rebuilt = dir.path().join("rebuilt");
    ud_ok(&apply_cmd(&base, &archive, &rebuilt, &[]));
    check_apply_equals_in_memory(&base, &ft, &archive, &rebuilt, Method::Ultradelta);
    ud_ok(&["verify", "--quiet", "--base", s(&base), s(&archive)]);
    // Same bytes whatever the thread count.
    let again = dir.path().join("lr1.udelta");
    let mut one = compress_args(
        s(&base),
        s(&ft),
        s(&again),
        &["--lowrank-part", "--compress", "*"],
    );
    one[at] = "0.7";
    one.insert(0, "1");
    one.insert(0, "--threads");
    ud_ok(&one);
    assert_eq!(
        std::fs::read(&archive).unwrap(),
        std::fs::read(&again).unwrap()
    );
    // inspect reports the sparse residual's sparsity and kept entries, the part's rank, and the part's bits in the
    // codec line (not a dense record of every entry).
    for t in ins["tensors"].as_array().unwrap() {
        let sparsity = t["sparsity"].as_f64().unwrap();
        assert!(
            t["lowrank_rank"].as_u64().unwrap() >= 1 && (0.6..0.8).contains(&sparsity),
            "{t}"
        );
    }
    let kept = ins["kept_entries"].as_u64().unwrap();
    assert!(
        kept < ins["compressed_entries"].as_u64().unwrap() / 2,
        "{ins}"
    );
    assert_eq!(ins["codec"]["lowrank_records"], 2, "{ins}");
    assert_eq!(ins["codec"]["kept_entries"].as_u64(), Some(kept));
    assert!(ins["codec"]["lowrank_bits_per_kept"].as_f64().unwrap() > 0.0);
    let text = ud_ok(&["inspect", s(&archive)]);
    assert!(
        text.contains("low-rank (2 matrices with a part)") && text.contains("low-rank part, rank "),
        "{text}"
    );
    // It needs seeded positions: refused in one line naming the flag.
    let err = ud_err(&compress_args(
        s(&base),
        s(&ft),
        s(&dir.path().join("x.udelta")),
        &["--lowrank-part", "--positions", "golomb"],
    ));
    assert!(
        err.contains("--lowrank-part") && err.lines().count() == 1,
        "{err}"
    );
}

/// The low-rank part is the BERT family's default and off for the others; `--no-lowrank-part` turns it off, and
/// the default gives way silently to codecs it cannot go with (only the flag is refused there).
#[test]
fn lowrank_part_is_the_bert_default() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = matrix_pair(dir.path(), &[(96, 80), (120, 64)], 5, |(i, j), u| {
        let (i, j) = (i as f32, j as f32);
        1e-3 * ((i * 0.3).sin() * (j * 0.17).cos() + 0.1 * u)
    });
    let run = |name: &str, extra: &[&str]| {
        let archive = dir.path().join(format!("{name}.udelta"));
        let mut flags = vec!["--compress", "*"];
        flags.extend_from_slice(extra);
        let mut args = compress_args(s(&base), s(&ft), s(&archive), &flags);
        let at = args.iter().position(|a| *a == "0.9").unwrap();
        args[at] = "0.7";
        ud_ok(&args);
        inspect_json(&archive)
    };
    let ins = run("bert", &["--family", "bert"]);
    assert_eq!(
        compressed_kinds(&ins),
        vec!["lowrank-seeded-rans"; 2],
        "{ins}"
    );
    assert_eq!(ins["params"]["lowrank_part"], true);
    for (name, extra) in [
        ("bert-off", &["--family", "bert", "--no-lowrank-part"][..]),
        ("llama", &["--family", "llama"][..]),
        ("generic", &["--family", "generic"][..]),
        (
            "bert-golomb",
            &["--family", "bert", "--positions", "golomb"][..],
        ),
    ] {
        let ins = run(name, extra);
        assert!(
            !compressed_kinds(&ins).contains(&"lowrank-seeded-rans"),
            "{name}: {ins}"
        );
        assert!(ins["params"].get("lowrank_part").is_none(), "{name}: {ins}");
    }
    let ins = run("generic-on", &["--family", "generic", "--lowrank-part"]);
    assert_eq!(
        compressed_kinds(&ins),
        vec!["lowrank-seeded-rans"; 2],
        "{ins}"
    );
    // The paper's preset decides it: the flags are refused beside it.
    for flag in ["--lowrank-part", "--no-lowrank-part"] {
        let out = ud(&[
            "compress",
            "--base",
            s(&base),
            "--finetuned",
            s(&ft),
            "-o",
            s(&dir.path().join("p.udelta")),
            "--preset",
            "paper",
            flag,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(flag), "{err}");
    }
}
