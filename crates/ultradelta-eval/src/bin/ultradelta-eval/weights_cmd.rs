//! `delta-fidelity`: how much of a fine-tune's weight change a model folder keeps, from the weights alone.
//!
//! The evaluator of the synthetic family pairs (`cargo xtask reproduce --synthetic`): a synthetic fine-tune
//! has no task to score, so the rebuilt model is compared with the fine-tune tensor by tensor. For every
//! float tensor that base, fine-tune and model share with one shape, `Δ_ft = finetuned − base` and
//! `Δ_m = model − base` (in f64); the metrics sum over all of them:
//!
//! - `delta_cosine`: `⟨Δ_m, Δ_ft⟩ / (‖Δ_m‖·‖Δ_ft‖)` (1 when the model equals the fine-tune, 0 for the base);
//! - `rel_error`: `‖Δ_m − Δ_ft‖ / ‖Δ_ft‖` (0 for the fine-tune, 1 for the base);
//! - `norm_ratio`: `‖Δ_m‖ / ‖Δ_ft‖`;
//! - `worst_tensor_cosine`, `median_tensor_cosine` over tensors with a non-zero `Δ_ft`;
//! - `tensors`, `exact_tensors` (bit-identical to the fine-tune's), `entries`.
//!
//! Values are read in chunks, so memory stays at a few MB whatever the model size.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};
use ultradelta_io::Checkpoint;

use crate::AnyResult;

#[derive(clap::Args, Debug)]
pub struct FidelityArgs {
    /// The base model folder.
    #[arg(long)]
    base: PathBuf,
    /// The uncompressed fine-tune (the reference).
    #[arg(long)]
    finetuned: PathBuf,
    /// The model folder to measure (say, rebuilt from a delta archive).
    #[arg(long)]
    model: PathBuf,
}

/// Elements converted per chunk.
const CHUNK: usize = 1 << 18;

/// Sums of one tensor (or of all of them).
#[derive(Default, Clone, Copy)]
struct Sums {
    dot: f64,
    model2: f64,
    ft2: f64,
    err2: f64,
}

impl Sums {
    fn add(&mut self, o: Sums) {
        self.dot += o.dot;
        self.model2 += o.model2;
        self.ft2 += o.ft2;
        self.err2 += o.err2;
    }

    fn cosine(&self) -> f64 {
        if self.err2 == 0.0 && self.ft2 > 0.0 {
            1.0
        } else if self.model2 == 0.0 || self.ft2 == 0.0 {
            0.0
        } else {
            self.dot / (self.model2.sqrt() * self.ft2.sqrt())
        }
    }
}

pub fn delta_fidelity(a: FidelityArgs) -> AnyResult<Value> {
    let t0 = Instant::now();
    let base = Checkpoint::open(&a.base)?;
    let ft = Checkpoint::open(&a.finetuned)?;
    let model = Checkpoint::open(&a.model)?;
    let (mut total, mut cosines) = (Sums::default(), Vec::new());
    let (mut tensors, mut exact, mut entries) = (0usize, 0usize, 0u64);
    let (mut b, mut f, mut m) = (vec![0f32; CHUNK], vec![0f32; CHUNK], vec![0f32; CHUNK]);
    for info in ft.tensors() {
        if !info.dtype.is_float() {
            continue;
        }
        let same = |c: &Checkpoint| {
            c.info(&info.name)
                .is_some_and(|i| i.shape == info.shape && i.dtype.is_float())
        };
        if !same(&base) || !same(&model) {
            continue;
        }
        let (bv, fv, mv) = (
            base.view(&info.name)?,
            ft.view(&info.name)?,
            model.view(&info.name)?,
        );
        let n = info.numel();
        let mut sums = Sums::default();
        let mut start = 0;
        while start < n {
            let len = CHUNK.min(n - start);
            bv.range_to_f32_into(start, &mut b[..len])?;
            fv.range_to_f32_into(start, &mut f[..len])?;
            mv.range_to_f32_into(start, &mut m[..len])?;
            for i in 0..len {
                let (bb, ff, mm) = (f64::from(b[i]), f64::from(f[i]), f64::from(m[i]));
                let (dm, df) = (mm - bb, ff - bb);
                sums.dot += dm * df;
                sums.model2 += dm * dm;
                sums.ft2 += df * df;
                sums.err2 += (mm - ff) * (mm - ff);
            }
            start += len;
        }
        tensors += 1;
        entries += n as u64;
        if fv.bytes() == mv.bytes() {
            exact += 1;
        }
        if sums.ft2 > 0.0 {
            cosines.push(sums.cosine());
        }
        total.add(sums);
    }
    if tensors == 0 {
        return Err(format!(
            "{}: no float tensor shared by base, fine-tune and model",
            a.model.display()
        )
        .into());
    }
    if total.ft2 == 0.0 {
        return Err(format!("{}: the fine-tune equals the base", a.finetuned.display()).into());
    }
    cosines.sort_by(f64::total_cmp);
    let median = if cosines.is_empty() {
        0.0
    } else {
        cosines[cosines.len() / 2]
    };
    Ok(json!({
        "delta_cosine": total.cosine(),
        "rel_error": (total.err2 / total.ft2).sqrt(),
        "norm_ratio": (total.model2 / total.ft2).sqrt(),
        "worst_tensor_cosine": cosines.first().copied().unwrap_or(0.0),
        "median_tensor_cosine": median,
        "tensors": tensors,
        "exact_tensors": exact,
        "entries": entries,
        "seconds": t0.elapsed().as_secs_f64(),
    }))
}
