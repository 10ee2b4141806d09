//! Unit tests of the value model and of `write_pair` (debug-mode fast: tiny and bert-mini tensors only).

use std::path::Path;

use ultradelta_io::{Checkpoint, DType};

use crate::generate::{Prepared, Scratch};
use crate::*;

fn cfg(shape: Shape, dtype: DType) -> SynthConfig {
    SynthConfig {
        dtype,
        ..SynthConfig::new(shape)
    }
}

/// (mean, standard deviation, excess kurtosis) of `v`, in f64.
pub(crate) fn moments(v: &[f32]) -> (f64, f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = v
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n;
    let m4 = v
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(4))
        .sum::<f64>()
        / n;
    (mean, var.sqrt(), m4 / (var * var) - 3.0)
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

const MLP: &str = "encoder.layer.3.intermediate.dense.weight";
const TINY_MLP: &str = "encoder.layer.1.intermediate.dense.weight";

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let c = cfg(Shape::Tiny, DType::BF16);
    let name = "embeddings.word_embeddings.weight";
    let a = tensor_bytes(&c, name).unwrap();
    assert_eq!(a, tensor_bytes(&c, name).unwrap());
    let other = SynthConfig {
        seed: 1,
        ..c.clone()
    };
    let b = tensor_bytes(&other, name).unwrap();
    assert_ne!(a.0, b.0);
    assert_ne!(a.1, b.1);
    // The base does not depend on the delta scale; the fine-tune does.
    let louder = SynthConfig {
        rel_scale: 1e-2,
        ..c
    };
    let l = tensor_bytes(&louder, name).unwrap();
    assert_eq!(a.0, l.0);
    assert_ne!(a.1, l.1);
}

#[test]
fn delta_seed_makes_another_finetune_of_the_same_base() {
    let c = cfg(Shape::Tiny, DType::F32);
    let other = SynthConfig {
        delta_seed: Some(99),
        ..c.clone()
    };
    for name in [TINY_MLP, "encoder.layer.0.attention.self.query.bias"] {
        let (base_a, ft_a) = tensor_bytes(&c, name).unwrap();
        let (base_b, ft_b) = tensor_bytes(&other, name).unwrap();
        assert_eq!(
            base_a, base_b,
            "{name}: the base must not depend on delta_seed"
        );
        assert_ne!(ft_a, ft_b, "{name}: the fine-tune must");
    }
    // delta_seed equal to seed is the default.
    let same = SynthConfig {
        delta_seed: Some(c.seed),
        ..c.clone()
    };
    assert_eq!(
        tensor_bytes(&c, TINY_MLP).unwrap(),
        tensor_bytes(&same, TINY_MLP).unwrap()
    );
}

#[test]
fn bytes_do_not_depend_on_thread_count() {
    let c = cfg(Shape::BertMini, DType::F32);
    // 1536 x 384: 18 blocks of 85 rows, the last one short.
    let one = pool(1).install(|| tensor_bytes(&c, MLP).unwrap());
    let three = pool(3).install(|| tensor_bytes(&c, MLP).unwrap());
    assert!(one == three, "bytes differ between 1 and 3 threads");
    let v1 = pool(1).install(|| generate_values(&c, MLP).unwrap());
    let v3 = pool(3).install(|| generate_values(&c, MLP).unwrap());
    assert!(v1 == v3);
}

#[test]
fn golden_bytes_pin_the_generator() {
    // Any change to key derivation, streams, block layout or transforms changes these values.
    // They use only IEEE basic operations, so they hold on every platform.
    let c = cfg(Shape::Tiny, DType::F32);
    let v = generate_values(&c, "encoder.layer.1.attention.self.key.weight").unwrap();
    let head: Vec<u32> = v.base[..2]
        .iter()
        .chain(&v.delta[..2])
        .map(|x| x.to_bits())
        .collect();
    assert_eq!(head, GOLDEN, "golden values changed: {head:#010x?}");
}

const GOLDEN: [u32; 4] = [0xbc7b_d9e2, 0xbb5c_070e, 0xb7e2_4548, 0x3736_bce6];

#[test]
fn f32_values_match_stored_bytes() {
    let c = cfg(Shape::Tiny, DType::F32);
    let name = "encoder.layer.0.output.dense.weight";
    let v = generate_values(&c, name).unwrap();
    let (b, f) = tensor_bytes(&c, name).unwrap();
    let f = f.unwrap();
    for i in 0..v.base.len() {
        let base = f32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap());
        let ft = f32::from_le_bytes(f[4 * i..4 * i + 4].try_into().unwrap());
        assert_eq!(base, v.base[i]);
        assert_eq!(ft, v.base[i] + v.delta[i]);
    }
}

#[test]
fn delta_has_the_documented_scale_and_heavy_tails() {
    let c = cfg(Shape::BertMini, DType::F32);
    let p = plan(&c).into_iter().find(|p| p.spec.name == MLP).unwrap();
    let v = generate_values(&c, MLP).unwrap();
    let (bmean, bstd, bkurt) = moments(&v.base);
    assert!(bmean.abs() < 1e-4, "base mean {bmean}");
    assert!((bstd - 0.02).abs() < 2e-4, "base std {bstd}");
    assert!(bkurt.abs() < 0.05, "base excess kurtosis {bkurt}");

    let (dmean, dstd, dkurt) = moments(&v.delta);
    let rel = dstd / 0.02;
    assert!(
        (rel / (1e-3 * p.delta_multiplier) - 1.0).abs() < 0.1,
        "relative delta std {rel}, plan {p:?}"
    );
    assert!((0.5e-3..=2e-3).contains(&rel));
    assert!(dmean.abs() < 0.05 * dstd, "delta mean {dmean}");
    // Student-t(5) noise with 70% of the energy: excess kurtosis about 0.49 * 6 = 2.9 (Gaussian: 0).
    assert!(dkurt > 1.5, "delta excess kurtosis {dkurt}");
    // Beyond 4 std: about 1.6e-3 here, 6.3e-5 for a Gaussian.
    let tail = v
        .delta
        .iter()
        .filter(|&&x| f64::from(x).abs() > 4.0 * dstd)
        .count() as f64
        / v.delta.len() as f64;
    assert!(tail > 5e-4, "tail fraction beyond 4 std: {tail}");
}

#[test]
fn student_t_noise_has_unit_variance_and_t5_tails() {
    let mut rng = math::stream_rng(&math::derive_key(3, "t", math::StreamRole::Noise), 0);
    let mut v = vec![0f32; 300_000];
    math::fill_student_t5(
        &mut rng,
        &mut v,
        &mut Vec::new(),
        &mut Vec::new(),
        &mut Vec::new(),
    );
    let (mean, std, kurt) = moments(&v);
    assert!(mean.abs() < 0.01, "mean {mean}");
    assert!((std - 1.0).abs() < 0.03, "std {std}");
    assert!(kurt > 3.0, "excess kurtosis {kurt} (t5: 6)");
    // P(|t5| > 3·sqrt(5/3)) = 0.01172 (numerical integration of the t5 density); Gaussian: 0.0027.
    let tail = v.iter().filter(|&&x| x.abs() > 3.0).count() as f64 / v.len() as f64;
    assert!((tail - 0.01172).abs() < 0.0012, "tail beyond 3 std: {tail}");
}

#[test]
fn delta_scale_varies_up_to_4x_across_tensors() {
    for shape in [Shape::BertMini, Shape::Llama7b] {
        let plans = plan(&cfg(shape, DType::BF16));
        let m: Vec<f64> = plans
            .iter()
            .filter(|p| p.in_finetuned)
            .map(|p| p.delta_multiplier)
            .collect();
        let (lo, hi) = m
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        assert!(
            lo >= 0.5 && hi <= 2.0,
            "{shape}: multipliers in [{lo}, {hi}]"
        );
        assert!(hi / lo > 3.0, "{shape}: spread only {}", hi / lo);
        // Deeper layers change more (on average).
        let layer_mean = |l: usize| {
            let v: Vec<f64> = plans
                .iter()
                .filter(|p| p.spec.layer == Some(l))
                .map(|p| p.delta_multiplier)
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        assert!(layer_mean(shape.layers() - 1) > 2.0 * layer_mean(0));
    }
}

#[test]
fn one_d_tensors_get_small_dense_deltas() {
    let c = cfg(Shape::Tiny, DType::F32);
    for name in [
        "encoder.layer.1.output.LayerNorm.weight",
        "encoder.layer.0.attention.self.query.bias",
    ] {
        let p = plan(&c).into_iter().find(|p| p.spec.name == name).unwrap();
        let v = generate_values(&c, name).unwrap();
        assert!(
            v.delta.iter().all(|&d| d != 0.0),
            "{name}: delta must be dense"
        );
        let (bmean, _, _) = moments(&v.base);
        let (_, dstd, _) = moments(&v.delta);
        let base_rms = (f64::from(p.base_mean).powi(2) + f64::from(p.base_std).powi(2)).sqrt();
        assert!(
            (dstd / (1e-3 * base_rms * p.delta_multiplier) - 1.0).abs() < 0.25,
            "{name}: delta std {dstd}"
        );
        if p.spec.role == Role::Norm {
            assert!((bmean - 1.0).abs() < 0.01, "{name}: norm base mean {bmean}");
        } else {
            assert!(bmean.abs() < 0.003, "{name}: bias base mean {bmean}");
        }
    }
}

/// Effective rank (Σλ)²/Σλ² of the Gram matrix DᵀD of a rows × cols matrix.
fn effective_rank(d: &[f32], rows: usize, cols: usize) -> f64 {
    let mut g = vec![0f64; cols * cols];
    for r in 0..rows {
        let row = &d[r * cols..(r + 1) * cols];
        for i in 0..cols {
            for j in 0..cols {
                g[i * cols + j] += f64::from(row[i]) * f64::from(row[j]);
            }
        }
    }
    let trace: f64 = (0..cols).map(|i| g[i * cols + i]).sum();
    let frob2: f64 = g.iter().map(|x| x * x).sum();
    trace * trace / frob2
}

#[test]
fn two_d_deltas_are_partly_low_rank() {
    let c = cfg(Shape::Tiny, DType::F32);
    let name = "embeddings.word_embeddings.weight"; // 1000 x 64
    let p = plan(&c).into_iter().find(|p| p.spec.name == name).unwrap();
    assert_eq!(p.low_rank_fraction, LOW_RANK_FRACTION);
    let v = generate_values(&c, name).unwrap();
    let with_low_rank = effective_rank(&v.delta, 1000, 64);

    // The same tensor with the low-rank share switched off: pure heavy-tailed noise.
    let noise_plan = TensorPlan {
        low_rank_fraction: 0.0,
        ..p.clone()
    };
    let prep = Prepared::new(&noise_plan, c.seed, c.delta_seed());
    let (mut base, mut delta) = (vec![0f32; 64_000], vec![0f32; 64_000]);
    generate::render_f32(&prep, &mut base, &mut delta);
    let noise_only = effective_rank(&delta, 1000, 64);
    // Marchenko–Pastur predicts about 64 / (1 + 64/1000) = 60 for noise; 8 directions carrying
    // 30% of the energy pull it down to about 40.
    assert!(noise_only > 55.0, "noise-only effective rank {noise_only}");
    assert!(
        with_low_rank < 48.0,
        "effective rank with the low-rank part {with_low_rank}"
    );

    // The low-rank factors carry about 30% of the energy of a large delta.
    let c = cfg(Shape::BertMini, DType::F32);
    let p = plan(&c).into_iter().find(|p| p.spec.name == MLP).unwrap();
    let full = Prepared::new(&p, c.seed, c.delta_seed());
    let noise_plan = TensorPlan {
        low_rank_fraction: 0.0,
        ..p.clone()
    };
    let noise = Prepared::new(&noise_plan, c.seed, c.delta_seed());
    let n = p.spec.numel();
    let (mut b, mut d_full, mut d_noise) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    generate::render_f32(&full, &mut b, &mut d_full);
    generate::render_f32(&noise, &mut b, &mut d_noise);
    let energy = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>();
    // The noise stream is shared, so full − noise·sqrt(0.7) isolates the low-rank part.
    let low: f64 = d_full
        .iter()
        .zip(&d_noise)
        .map(|(&f, &z)| (f64::from(f) - f64::from(z) * (1.0 - LOW_RANK_FRACTION).sqrt()).powi(2))
        .sum();
    let share = low / energy(&d_full);
    assert!(
        (share - LOW_RANK_FRACTION).abs() < 0.1,
        "low-rank energy share {share}"
    );
}

#[test]
fn position_ids_are_base_only_indices() {
    let c = cfg(Shape::BertMini, DType::BF16);
    let (b, f) = tensor_bytes(&c, "embeddings.position_ids").unwrap();
    assert!(f.is_none());
    assert_eq!(b.len(), 512 * 8);
    assert_eq!(i64::from_le_bytes(b[8 * 511..].try_into().unwrap()), 511);
    assert!(
        !plan(&c)
            .iter()
            .find(|p| p.spec.name == "embeddings.position_ids")
            .unwrap()
            .in_finetuned
    );
}

#[test]
fn bf16_deltas_survive_rounding_in_part() {
    let c = cfg(Shape::Tiny, DType::BF16);
    let name = "encoder.layer.1.intermediate.dense.weight";
    let (b, f) = tensor_bytes(&c, name).unwrap();
    let f = f.unwrap();
    let changed = b
        .chunks_exact(2)
        .zip(f.chunks_exact(2))
        .filter(|(x, y)| x != y)
        .count();
    let frac = changed as f64 / (b.len() / 2) as f64;
    eprintln!(
        "bf16, rel_scale 1e-3: {:.1}% of elements differ",
        100.0 * frac
    );
    assert!(frac > 0.0 && frac < 1.0);
}

fn folder_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn write_pair_writes_two_hf_folders_that_open() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(Shape::Tiny, DType::F32);
    let mut calls = Vec::new();
    let (base, ft) = write_pair(tmp.path(), &c, |done, total| calls.push((done, total))).unwrap();
    assert_eq!(base, tmp.path().join("base"));
    assert_eq!(ft, tmp.path().join("finetuned"));
    let total = tensor_specs(Shape::Tiny).len();
    assert_eq!(calls.len(), total);
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(calls.last(), Some(&(total, total)));

    let b = Checkpoint::open(&base).unwrap();
    let f = Checkpoint::open(&ft).unwrap();
    assert_eq!(b.tensors().len(), total);
    assert_eq!(f.tensors().len(), total - 1);
    assert!(f.info("embeddings.position_ids").is_none());
    assert_eq!(b.info("embeddings.position_ids").unwrap().dtype, DType::I64);
    for (name, shape) in tensor_specs(Shape::Tiny) {
        let info = b.info(&name).unwrap();
        assert_eq!(info.shape, shape, "{name}");
        let (want_b, want_f) = tensor_bytes(&c, &name).unwrap();
        assert!(
            b.view(&name).unwrap().bytes() == want_b.as_slice(),
            "{name}: base bytes"
        );
        if let Some(want_f) = want_f {
            assert_eq!(f.info(&name).unwrap().dtype, DType::F32);
            assert!(
                f.view(&name).unwrap().bytes() == want_f.as_slice(),
                "{name}: fine-tuned bytes"
            );
        }
    }
    for ck in [&b, &f] {
        let config = ck.config().unwrap();
        assert_eq!(config["model_type"], "bert");
        assert_eq!(config["hidden_size"], 64);
        assert_eq!(ck.metadata().get("format").map(String::as_str), Some("pt"));
    }
    assert_eq!(b.weight_files().len(), 1);
}

#[test]
fn write_pair_is_deterministic_across_thread_counts_and_shards_like_hf() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SynthConfig {
        max_shard_bytes: 150_000,
        ..cfg(Shape::Tiny, DType::BF16)
    };
    let one = tmp.path().join("one");
    let two = tmp.path().join("two");
    pool(1).install(|| write_pair(&one, &c, |_, _| {})).unwrap();
    pool(2).install(|| write_pair(&two, &c, |_, _| {})).unwrap();
    for side in ["base", "finetuned"] {
        let a = folder_bytes(&one.join(side));
        assert!(
            a == folder_bytes(&two.join(side)),
            "{side} differs between thread counts"
        );
        assert!(
            a.iter().any(|(n, _)| n == "model.safetensors.index.json"),
            "{side}: not sharded"
        );
        assert!(
            a.iter().any(|(n, _)| n.starts_with("model-00001-of-")),
            "{side}: no HF shard names"
        );
        let ck = Checkpoint::open(one.join(side)).unwrap();
        assert!(ck.weight_files().len() > 2);
        assert_eq!(ck.config().unwrap()["torch_dtype"], "bfloat16");
    }
}

#[test]
fn write_pair_refuses_to_overwrite_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(Shape::Tiny, DType::F16);
    write_pair(tmp.path(), &c, |_, _| {}).unwrap();
    let before = folder_bytes(&tmp.path().join("base"));
    let err = write_pair(
        tmp.path(),
        &SynthConfig {
            seed: 9,
            ..c.clone()
        },
        |_, _| {},
    )
    .unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err}");
    assert!(
        before == folder_bytes(&tmp.path().join("base")),
        "existing output was touched"
    );
    write_pair(
        tmp.path(),
        &SynthConfig {
            seed: 9,
            overwrite: true,
            ..c
        },
        |_, _| {},
    )
    .unwrap();
    assert!(before != folder_bytes(&tmp.path().join("base")));
}

#[test]
fn invalid_configs_are_rejected_with_context() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = cfg(Shape::Tiny, DType::I64);
    let err = write_pair(tmp.path(), &bad, |_, _| {}).unwrap_err();
    assert!(matches!(err, Error::UnsupportedDType { .. }), "{err}");
    assert!(
        err.to_string().contains("I64") && err.to_string().contains("tiny"),
        "{err}"
    );
    let nan = SynthConfig {
        rel_scale: f64::NAN,
        ..cfg(Shape::Tiny, DType::F32)
    };
    assert!(matches!(nan.validate(), Err(Error::InvalidRelScale { .. })));
    let zero = SynthConfig {
        max_shard_bytes: 0,
        ..cfg(Shape::Tiny, DType::F32)
    };
    assert!(matches!(zero.validate(), Err(Error::InvalidShardSize)));
    let err = tensor_bytes(&cfg(Shape::Tiny, DType::F32), "lm_head.weight").unwrap_err();
    assert!(
        matches!(err, Error::UnknownTensor { .. }) && err.to_string().contains("lm_head.weight"),
        "{err}"
    );
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = write_pair(&file.join("sub"), &cfg(Shape::Tiny, DType::F32), |_, _| {}).unwrap_err();
    assert!(
        matches!(err, Error::CreateDir { .. }) && err.to_string().contains("a-file"),
        "{err}"
    );
    assert!(
        tmp.path().read_dir().unwrap().count() == 1,
        "nothing else was created"
    );
}

#[test]
fn scratch_reuse_does_not_leak_between_blocks() {
    // A short last block after a full one must not see stale values.
    let c = cfg(Shape::BertMini, DType::F32);
    let p = plan(&c).into_iter().find(|p| p.spec.name == MLP).unwrap();
    let prep = Prepared::new(&p, c.seed, c.delta_seed());
    let be = prep.block_elems();
    let last = p.spec.numel().div_ceil(be) - 1;
    let short = p.spec.numel() - last * be;
    let mut s = Scratch::default();
    let (mut b1, mut d1) = (vec![0f32; be], vec![0f32; be]);
    prep.fill_block(0, &mut b1, &mut d1, &mut s);
    let (mut b2, mut d2) = (vec![0f32; short], vec![0f32; short]);
    prep.fill_block(last, &mut b2, &mut d2, &mut s);
    let (mut b3, mut d3) = (vec![0f32; short], vec![0f32; short]);
    prep.fill_block(last, &mut b3, &mut d3, &mut Scratch::default());
    assert!(b2 == b3 && d2 == d3);
}
