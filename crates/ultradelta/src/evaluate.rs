//! eval: how far the rebuilt model is from the fine-tuned one, per tensor and overall.

use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;
use ultradelta_archive::{ArchiveReader, Policy};
use ultradelta_io::{Checkpoint, DType};

use crate::apply::{check_base, rebuild_tensor};
use crate::progress::check_cancelled;
use crate::{Error, Progress, Result};

/// Error measures for one tensor (or a group of tensors).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Fidelity {
    /// ‖Δ̂ − Δ‖ / ‖Δ‖ (Δ = fine-tuned − base, Δ̂ = rebuilt − base); 0 when Δ = 0 and Δ̂ = Δ.
    pub delta_rel_error: f64,
    /// cos(Δ̂, Δ); 1 when both are zero.
    pub delta_cosine: f64,
    /// ‖W_rebuilt − W_ft‖ / ‖W_ft‖.
    pub weight_rel_error: f64,
    /// cos(W_rebuilt, W_ft).
    pub weight_cosine: f64,
}

/// One tensor's evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct TensorEval {
    /// Tensor name.
    pub name: String,
    /// Its policy in the archive.
    pub policy: Policy,
    /// Number of entries.
    pub numel: u64,
    /// The measures.
    #[serde(flatten)]
    pub fidelity: Fidelity,
}

/// What `ultradelta eval` prints.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Per tensor (floating-point tensors only; others are checked for exact equality).
    pub tensors: Vec<TensorEval>,
    /// Over the compressed tensors together (entries weighted).
    pub compressed: Fidelity,
    /// Over every floating-point tensor together.
    pub overall: Fidelity,
    /// Non-floating-point tensors, all rebuilt bit-exactly (otherwise eval fails).
    pub exact_non_float: Vec<String>,
}

/// Sums from which the measures are formed (f64, combined in a fixed order).
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    err_d: f64,
    dd: f64,
    hh: f64,
    hd: f64,
    err_w: f64,
    ww: f64,
    rr: f64,
    rw: f64,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        self.err_d += o.err_d;
        self.dd += o.dd;
        self.hh += o.hh;
        self.hd += o.hd;
        self.err_w += o.err_w;
        self.ww += o.ww;
        self.rr += o.rr;
        self.rw += o.rw;
    }

    fn fidelity(&self) -> Fidelity {
        let rel = |e: f64, n: f64| {
            if n > 0.0 {
                (e / n).sqrt()
            } else if e == 0.0 {
                0.0
            } else {
                f64::INFINITY
            }
        };
        let cos = |xy: f64, xx: f64, yy: f64| {
            if xx > 0.0 && yy > 0.0 {
                xy / (xx.sqrt() * yy.sqrt())
            } else if xx == 0.0 && yy == 0.0 {
                1.0
            } else {
                0.0
            }
        };
        Fidelity {
            delta_rel_error: rel(self.err_d, self.dd),
            delta_cosine: cos(self.hd, self.hh, self.dd),
            weight_rel_error: rel(self.err_w, self.ww),
            weight_cosine: cos(self.rw, self.rr, self.ww),
        }
    }
}

fn tensor_sums(base: &[f32], ft: &[f32], rebuilt: &[f32]) -> Sums {
    const CHUNK: usize = 1 << 15;
    let parts: Vec<Sums> = base
        .par_chunks(CHUNK)
        .zip(ft.par_chunks(CHUNK))
        .zip(rebuilt.par_chunks(CHUNK))
        .map(|((b, f), r)| {
            let mut s = Sums::default();
            for ((&b, &f), &r) in b.iter().zip(f).zip(r) {
                let (b, f, r) = (b as f64, f as f64, r as f64);
                let (d, h) = (f - b, r - b);
                s.err_d += (h - d) * (h - d);
                s.dd += d * d;
                s.hh += h * h;
                s.hd += h * d;
                s.err_w += (r - f) * (r - f);
                s.ww += f * f;
                s.rr += r * r;
                s.rw += r * f;
            }
            s
        })
        .collect();
    let mut total = Sums::default();
    for p in &parts {
        total.add(p);
    }
    total
}

/// Decodes little-endian bytes of a floating-point dtype to f32.
fn float_bytes_to_f32(bytes: &[u8], dtype: DType) -> Option<Vec<f32>> {
    Some(match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        _ => return None,
    })
}

/// Rebuilds every tensor in memory (one at a time) and compares it with the fine-tune.
pub fn eval(
    base: &Checkpoint,
    finetuned: &Checkpoint,
    archive: &Path,
    progress: &dyn Progress,
) -> Result<EvalReport> {
    let reader = ArchiveReader::open(archive)?;
    check_base(base, &reader, archive)?;
    let manifest = reader.manifest();
    let total: u64 = manifest.tensors.iter().map(|e| e.numel).sum();
    progress.begin("evaluating", total);
    let mut tensors = Vec::new();
    let mut exact_non_float = Vec::new();
    let (mut comp, mut all) = (Sums::default(), Sums::default());
    for entry in &manifest.tensors {
        check_cancelled(progress)?;
        let name = entry.name.as_str();
        let ft_view = finetuned.view(name)?;
        if ft_view.info().dtype != entry.dtype || ft_view.info().shape != entry.shape {
            return Err(Error::FinetunedTensor {
                finetuned: finetuned.path().to_path_buf(),
                archive: archive.to_path_buf(),
                tensor: name.to_string(),
                what: format!(
                    "it is {} {:?}, the archive has {} {:?}",
                    ft_view.info().dtype.name(),
                    ft_view.info().shape,
                    entry.dtype.name(),
                    entry.shape
                ),
            });
        }
        let rebuilt = rebuild_tensor(base, &reader, archive, entry)?;
        if !entry.dtype.is_float() {
            if rebuilt != ft_view.bytes() {
                return Err(Error::FinetunedTensor {
                    finetuned: finetuned.path().to_path_buf(),
                    archive: archive.to_path_buf(),
                    tensor: name.to_string(),
                    what: format!("its {} bytes are not rebuilt exactly", entry.dtype.name()),
                });
            }
            exact_non_float.push(entry.name.clone());
            progress.advance(entry.numel);
            continue;
        }
        let ft = ft_view.to_f32()?;
        let mut b = match entry.policy {
            Policy::New => vec![0f32; ft.len()],
            _ => base.view(entry.base_tensor())?.to_f32()?,
        };
        // Rows the fine-tune added to the base's tensor (`appended-rows`) count from zero, as a new tensor's.
        b.resize(ft.len(), 0.0);
        let r = float_bytes_to_f32(&rebuilt, entry.dtype).expect("float dtype");
        let s = tensor_sums(&b, &ft, &r);
        all.add(&s);
        if entry.policy == Policy::Compress {
            comp.add(&s);
        }
        tensors.push(TensorEval {
            name: entry.name.clone(),
            policy: entry.policy,
            numel: entry.numel,
            fidelity: s.fidelity(),
        });
        progress.advance(entry.numel);
    }
    progress.end();
    Ok(EvalReport {
        tensors,
        compressed: comp.fidelity(),
        overall: all.fidelity(),
        exact_non_float,
    })
}
