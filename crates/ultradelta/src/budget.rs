//! Compression to a byte budget: choose a method's free parameter so the real ratio lands on a target.
//!
//! The ratio is the one `inspect` reports as `real`: 16 bits × (entries of the compressed tensors) over the
//! bytes of their records, exactly as the writer encodes them (every record kind's size is a deterministic
//! function of its content, so the search is deterministic too). Each evaluation is one full compression pass
//! over the compressed tensors without writing (the deltas are cached in memory when they total at most 64 M
//! entries, otherwise re-read from the mapped checkpoints).
//!
//! | method | free parameter | search |
//! |---|---|---|
//! | ultradelta, dare, magnitude, compeft | sparsity s ∈ [0, 0.999] | Illinois (regula falsi) on ln ratio vs ln(1 − s), to within 0.2 % |
//! | lowrank | rank r ∈ 1..=max min(rows, cols) | bisection on the integer, then the closer neighbour (sizes from the shapes: no SVD) |
//! | quant | bits b ∈ 1..=16 | as lowrank |
//! | bitdelta | none | checked once |
//!
//! Continuous parameters must land within 1 % of the target, or the run fails. Integer parameters take the
//! closest achievable ratio, which may be more than 1 % away for small matrices (the report's `within` says
//! so). A target outside the method's achievable range fails with the range in the message.

use half::f16;
use serde::Serialize;
use ultradelta_alloc::TensorStat;
use ultradelta_archive::{encode_record, LowRankRecord, Record, DEFAULT_ZSTD_LEVEL};

use crate::config::{CompressConfig, Method};
use crate::delta::delta_f32;
use crate::error::method_err;
use crate::method::{compress_tensor, matrix_view};
use crate::plan::{pass_one, rates, Plan};
use crate::{Error, Progress, Result};

/// Relative tolerance of the budget: the real ratio must be within 1 % of the target.
pub const BUDGET_TOLERANCE: f64 = 0.01;

/// Largest sparsity the search tries.
const MAX_SPARSITY: f64 = 0.999;

/// Deltas cached across evaluations when the compressed tensors total at most this many entries.
const CACHE_ENTRIES: usize = 64 << 20;

/// What the byte-budget search chose.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetReport {
    /// Requested ratio.
    pub target: f64,
    /// Real ratio of the chosen parameter.
    pub achieved: f64,
    /// Name of the free parameter (`sparsity`, `rank`, `bits`, or `none`).
    pub parameter: String,
    /// Its chosen value.
    pub value: f64,
    /// Whether `achieved` is within 1 % of `target`.
    pub within: bool,
    /// Compression passes evaluated.
    pub evaluations: usize,
}

struct Evaluator<'p, 'a> {
    p: &'p Plan<'a>,
    idx: Vec<usize>,
    stats: Option<Vec<TensorStat>>,
    cache: Option<Vec<Vec<f32>>>,
    numel: u64,
    evaluations: usize,
}

impl Evaluator<'_, '_> {
    /// Real ratio vs 16 bits of the compressed tensors' records under `cfg`.
    fn ratio(&mut self, cfg: &CompressConfig) -> Result<f64> {
        self.evaluations += 1;
        let alloc = rates(self.stats.as_deref(), self.idx.len(), cfg)?;
        let mut bytes = 0u64;
        for (k, &i) in self.idx.iter().enumerate() {
            let info = &self.p.tensors[i].info;
            let name = info.name.as_str();
            if cfg.method == Method::Lowrank {
                bytes += encode_record(
                    info.dtype,
                    &info.shape,
                    &lowrank_sized(&info.shape, cfg.rank),
                    DEFAULT_ZSTD_LEVEL,
                )?
                .len() as u64;
                continue;
            }
            let owned;
            let delta: &[f32] = match &self.cache {
                Some(c) => &c[k],
                None => {
                    owned = delta_f32(&self.p.base.view(name)?, &self.p.ft.view(name)?)?;
                    &owned
                }
            };
            let rec = compress_tensor(delta, name, &info.shape, alloc.rates[k], cfg)
                .map_err(|e| method_err(self.p.ft, name, e))?
                .record;
            bytes += encode_record(info.dtype, &info.shape, &rec, DEFAULT_ZSTD_LEVEL)?.len() as u64;
        }
        Ok(16.0 * self.numel as f64 / (8.0 * bytes.max(1) as f64))
    }
}

/// A `lowrank` record of the size `compress_tensor` writes for `shape` at `rank`, with zero factors: the
/// record's bytes depend only on its shape and rank (raw fp16 factors), so the rank search needs no SVD.
fn lowrank_sized(shape: &[usize], rank: usize) -> Record {
    let (rows, cols) = matrix_view(shape);
    let r = rank.min(rows).min(cols);
    Record::LowRank(LowRankRecord {
        rows: rows as u64,
        cols: cols as u64,
        rank: r as u64,
        u: vec![f16::ZERO; rows * r],
        v: vec![f16::ZERO; r * cols],
        scale: 1.0,
    })
}

fn rel(achieved: f64, target: f64) -> f64 {
    (achieved / target - 1.0).abs()
}

/// Solves the budget for one fine-tune: returns `cfg` with its free parameter set, and the report.
pub(crate) fn solve_budget(
    p: &Plan<'_>,
    cfg: &CompressConfig,
    progress: &dyn Progress,
) -> Result<(CompressConfig, BudgetReport)> {
    let target = cfg.target_ratio.ok_or_else(|| Error::InvalidConfig {
        field: "target_ratio",
        reason: "the budget search needs target_ratio".into(),
    })?;
    let fail = |detail: String| Error::Budget {
        finetuned: p.ft.path().to_path_buf(),
        target,
        detail,
    };
    let idx = p.compressed();
    if idx.is_empty() {
        return Err(fail(
            "no tensor is compressed, so no ratio can be met".into(),
        ));
    }
    let numel: u64 = idx.iter().map(|&i| p.tensors[i].info.numel() as u64).sum();
    let stats = if cfg.method == Method::Ultradelta {
        Some(pass_one(p, cfg, progress)?.0)
    } else {
        None
    };
    let cache = if cfg.method != Method::Lowrank && numel as usize <= CACHE_ENTRIES {
        let mut c = Vec::with_capacity(idx.len());
        for &i in &idx {
            let name = p.tensors[i].info.name.as_str();
            c.push(delta_f32(&p.base.view(name)?, &p.ft.view(name)?)?);
        }
        Some(c)
    } else {
        None
    };
    let mut ev = Evaluator {
        p,
        idx,
        stats,
        cache,
        numel,
        evaluations: 0,
    };
    progress.note(&format!(
        "{}: searching the {} parameter for ratio {target}x",
        p.ft.path().display(),
        cfg.method
    ));
    let mut out = cfg.clone();
    let report = |achieved: f64, parameter: &str, value: f64, evaluations: usize| BudgetReport {
        target,
        achieved,
        parameter: parameter.into(),
        value,
        within: rel(achieved, target) <= BUDGET_TOLERANCE,
        evaluations,
    };
    match cfg.method {
        Method::Bitdelta => {
            let r = ev.ratio(cfg)?;
            if rel(r, target) > BUDGET_TOLERANCE {
                return Err(fail(format!(
                    "bitdelta has no free parameter; its ratio here is fixed at {r:.2}x"
                )));
            }
            Ok((out, report(r, "none", 0.0, ev.evaluations)))
        }
        Method::Lowrank | Method::Quant => {
            let (name, kmax) = if cfg.method == Method::Lowrank {
                let kmax = ev
                    .idx
                    .iter()
                    .map(|&i| {
                        let (r, c) = matrix_view(&p.tensors[i].info.shape);
                        r.min(c)
                    })
                    .max()
                    .unwrap_or(1)
                    .max(1);
                ("rank", kmax)
            } else {
                ("bits", 16)
            };
            let mut eval = |k: usize| -> Result<f64> {
                let mut c = cfg.clone();
                if cfg.method == Method::Lowrank {
                    c.rank = k;
                } else {
                    c.bits = k as u8;
                }
                ev.ratio(&c)
            };
            // The ratio decreases as k grows.
            let (r1, rmax) = (eval(1)?, eval(kmax)?);
            if target > r1 * (1.0 + BUDGET_TOLERANCE) || target < rmax * (1.0 - BUDGET_TOLERANCE) {
                return Err(fail(format!(
                    "{} reaches {rmax:.2}x ({name} {kmax}) to {r1:.2}x ({name} 1)",
                    cfg.method
                )));
            }
            // Smallest k with ratio(k) <= target, in (lo, hi].
            let (mut lo, mut hi, mut r_hi) = (1usize, kmax, rmax);
            let mut r_lo = r1;
            if r1 <= target {
                hi = 1;
                r_hi = r1;
            }
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                let r = eval(mid)?;
                if r <= target {
                    hi = mid;
                    r_hi = r;
                } else {
                    lo = mid;
                    r_lo = r;
                }
            }
            let (k, r) = if hi == 1 || rel(r_hi, target) <= rel(r_lo, target) {
                (hi, r_hi)
            } else {
                (lo, r_lo)
            };
            if cfg.method == Method::Lowrank {
                out.rank = k;
            } else {
                out.bits = k as u8;
            }
            Ok((out, report(r, name, k as f64, ev.evaluations)))
        }
        Method::Ultradelta | Method::Dare | Method::Magnitude | Method::Compeft => {
            // x = ln(density); g(x) = ln ratio(x) − ln target decreases in x.
            let mut at = |x: f64| -> Result<(f64, f64)> {
                let mut c = cfg.clone();
                c.sparsity = (1.0 - x.exp()).clamp(0.0, MAX_SPARSITY);
                let r = ev.ratio(&c)?;
                Ok((c.sparsity, r))
            };
            let lt = target.ln();
            let (mut a, mut b) = ((1.0 - MAX_SPARSITY).ln(), 0.0f64);
            let (sa, ra) = at(a)?;
            let (sb, rb) = at(b)?;
            if target > ra * (1.0 + BUDGET_TOLERANCE) || target < rb * (1.0 - BUDGET_TOLERANCE) {
                return Err(fail(format!(
                    "{} reaches {rb:.2}x (sparsity 0) to {ra:.2}x (sparsity {MAX_SPARSITY})",
                    cfg.method
                )));
            }
            let mut best = if rel(ra, target) <= rel(rb, target) {
                (sa, ra)
            } else {
                (sb, rb)
            };
            let (mut ga, mut gb) = (ra.ln() - lt, rb.ln() - lt);
            let mut side = 0i8;
            for _ in 0..40 {
                if rel(best.1, target) <= BUDGET_TOLERANCE / 5.0 || ga <= 0.0 || gb >= 0.0 {
                    break;
                }
                let x = if (ga - gb).abs() > 1e-12 {
                    b - gb * (b - a) / (gb - ga)
                } else {
                    0.5 * (a + b)
                };
                let x = if x > a.min(b) && x < a.max(b) {
                    x
                } else {
                    0.5 * (a + b)
                };
                let (s, r) = at(x)?;
                if rel(r, target) < rel(best.1, target) {
                    best = (s, r);
                }
                let g = r.ln() - lt;
                if g > 0.0 {
                    a = x;
                    ga = g;
                    if side == 1 {
                        gb /= 2.0;
                    }
                    side = 1;
                } else {
                    b = x;
                    gb = g;
                    if side == -1 {
                        ga /= 2.0;
                    }
                    side = -1;
                }
                if (a - b).abs() < 1e-12 {
                    break;
                }
            }
            if rel(best.1, target) > BUDGET_TOLERANCE {
                return Err(fail(format!(
                    "the closest achievable ratio is {:.2}x (sparsity {:.6}); the ratio moves in steps too coarse here",
                    best.1, best.0
                )));
            }
            out.sparsity = best.0;
            Ok((out, report(best.1, "sparsity", best.0, ev.evaluations)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ultradelta_io::DType;

    #[test]
    fn lowrank_size_without_svd_matches_the_real_record() {
        for (shape, rank) in [
            (vec![12usize, 20], 3usize),
            (vec![20, 12], 12),
            (vec![7, 5], 9),
            (vec![6, 4, 3], 2),
            (vec![16], 1),
        ] {
            let n: usize = shape.iter().product();
            let delta: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 101) as f32 - 50.0) * 1e-3)
                .collect();
            let cfg = CompressConfig {
                method: Method::Lowrank,
                rank,
                ..CompressConfig::default()
            };
            let real = compress_tensor(&delta, "t", &shape, 0.0, &cfg)
                .unwrap()
                .record;
            let a = encode_record(DType::F32, &shape, &real, DEFAULT_ZSTD_LEVEL).unwrap();
            let b = encode_record(
                DType::F32,
                &shape,
                &lowrank_sized(&shape, rank),
                DEFAULT_ZSTD_LEVEL,
            )
            .unwrap();
            assert_eq!(a.len(), b.len(), "shape {shape:?} rank {rank}");
        }
    }
}
