//! `reproduce --synthetic`: an experiment file of the paper's families run on generated pairs.
//!
//! No (base, fine-tune) pair of RoBERTa, CLIP, BEiT-3 or T5 is reachable here, so `--synthetic` writes one:
//! a base and one fine-tune per task (same base seed, delta seed = task number + 1) with the family's real
//! tensor names and shapes (`ultradelta_synth`, the shape named by the file's `[synthetic]` table, optionally
//! with fewer layers), at exactly the paths the file names once `{models}` points into
//! `target/synth-experiments/<name>/`. The file's `[synthetic]` evaluator (weight fidelity) replaces the tasks'
//! own. The pairs are kept and reused while the table's settings are unchanged (`synth.json`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;
use ultradelta_io::DType;
use ultradelta_synth::{Shape, SynthConfig};

use super::experiment::{Experiment, Resolved, Synthetic};
use crate::common::target_dir;

/// The folder `{models}` points to under `--synthetic`.
pub fn models_dir(exp: &Experiment) -> PathBuf {
    target_dir().join("synth-experiments").join(&exp.name)
}

/// The synthetic configuration of the file's `[synthetic]` table.
fn config(spec: &Synthetic, file: &Path) -> Result<SynthConfig> {
    let shape: Shape = spec
        .shape
        .parse()
        .with_context(|| format!("{}: [synthetic] shape", file.display()))?;
    let mut cfg = SynthConfig {
        dtype: DType::BF16,
        layers: spec.layers,
        ..SynthConfig::new(shape)
    };
    if let Some(r) = spec.rel_scale {
        cfg.rel_scale = r;
    }
    cfg.validate()
        .with_context(|| format!("{}: [synthetic]", file.display()))?;
    Ok(cfg)
}

/// Writes the base and every resolved task's fine-tune (unless `synth.json` says they are already there).
pub fn ensure_pairs(exp: &Experiment, r: &Resolved, models: &Path) -> Result<()> {
    let Some(spec) = &exp.synthetic else {
        bail!("{}: no [synthetic] table", r.file.display());
    };
    let cfg = config(spec, &r.file)?;
    for p in std::iter::once(&r.base).chain(r.tasks.iter().map(|t| &t.finetuned)) {
        if !p.starts_with(models) {
            bail!(
                "{}: with --synthetic every checkpoint must lie under {{models}}; {} does not",
                r.file.display(),
                p.display()
            );
        }
    }
    // Delta seeds by position in the file, so a task's fine-tune is the same whichever --tasks are chosen.
    let seeds: Vec<(String, PathBuf, u64)> = r
        .tasks
        .iter()
        .map(|t| {
            let i = exp.tasks.iter().position(|x| x.name == t.name).unwrap_or(0);
            (t.name.clone(), t.finetuned.clone(), 1 + i as u64)
        })
        .collect();
    let stamp = json!({
        "shape": cfg.shape.name(),
        "layers": cfg.layers,
        "rel_scale": cfg.rel_scale,
        "dtype": cfg.dtype.name(),
        "seed": cfg.seed,
    });
    let stamp_file = models.join("synth.json");
    let same = std::fs::read(&stamp_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v == stamp);
    if !same && models.exists() {
        std::fs::remove_dir_all(models).with_context(|| models.display().to_string())?;
    }
    std::fs::create_dir_all(models).with_context(|| models.display().to_string())?;
    let work = models.join(".pairs");
    let mut wrote = 0;
    for (name, finetuned, delta_seed) in &seeds {
        if finetuned.is_dir() && r.base.is_dir() {
            continue;
        }
        let pair = work.join(name);
        if pair.exists() {
            std::fs::remove_dir_all(&pair)?;
        }
        let c = SynthConfig {
            delta_seed: Some(*delta_seed),
            ..cfg.clone()
        };
        let (base, ft) = ultradelta_synth::write_pair(&pair, &c, |_, _| {})
            .with_context(|| format!("writing the synthetic pair of task {name}"))?;
        for (from, to) in [(ft, finetuned), (base, &r.base)] {
            if to.is_dir() {
                continue;
            }
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&from, to)
                .with_context(|| format!("{} -> {}", from.display(), to.display()))?;
        }
        wrote += 1;
    }
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    let mut bytes = serde_json::to_vec_pretty(&stamp)?;
    bytes.push(b'\n');
    std::fs::write(&stamp_file, bytes)?;
    eprintln!(
        "xtask: synthetic {}{} pairs in {} ({} written, {} reused)",
        cfg.shape,
        cfg.layers
            .map(|n| format!(" ({n} layers per stack)"))
            .unwrap_or_default(),
        models.display(),
        wrote,
        seeds.len() - wrote
    );
    Ok(())
}
