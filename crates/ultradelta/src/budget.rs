//! Compression to a byte budget: choose a method's free parameter so the archive fits a ceiling.
//!
//! Two budgets, both ceilings (the archive never takes more bytes than asked):
//!
//! - `target_ratio: Some(R)` bounds the compressed tensors: the real ratio `inspect` reports as `real`, 16 bits ×
//!   (entries of the compressed tensors) over the bytes of their records, is at least R, i.e. those records take at
//!   most ⌊2 · entries / R⌋ bytes.
//! - `target_size: Some(B)` bounds the whole archive file: preamble, every record (compressed tensors, deltas kept
//!   without loss, tensors only in the fine-tune, companion files), the JSON index and the trailer take at most B
//!   bytes. Everything but the compressed tensors' records is computed first (the lossless and companion records
//!   are encoded exactly as the writer encodes them; the compressed index is estimated by compressing it with every
//!   number and checksum the search can still change replaced by a pseudo-random one of its widest width), and the
//!   rest of B is the compressed records' ceiling. If that fixed part alone reaches B, the run fails saying how
//!   many bytes it takes. The estimate is not a proof (zstd sizes are not monotone), so the pipeline computes the
//!   finished archive's exact size before publishing it and, if it is over B, writes the records again with the
//!   overshoot kept for the index (at most 3 times); a file over B is never left behind. If a continuous
//!   parameter's file is more than 1 % under B because the real index is smaller than its widest form (about 1 %
//!   of an archive of a few tens of KB), the records are written again once with seven eighths of the difference.
//!
//! Record sizes are a deterministic function of their content, so the search is deterministic too. Each evaluation
//! is one full compression pass over the compressed tensors without writing (the deltas are cached in memory when
//! they total at most 64 M entries, otherwise re-read from the mapped checkpoints).
//!
//! | method | free parameter | search |
//! |---|---|---|
//! | ultradelta, dare, magnitude, compeft | sparsity s ∈ [0, 0.999] | Illinois (regula falsi) on ln bytes vs ln(1 − s); the largest feasible point found, to within 0.2 % under the ceiling |
//! | lowrank | rank r ∈ 1..=max min(rows, cols) | bisection: the largest rank that fits (sizes from the shapes: no SVD) |
//! | quant | bits b ∈ 1..=16 | as lowrank: the most bits that fit |
//! | bitdelta | none | checked once |
//!
//! Tolerance ([`BUDGET_TOLERANCE`], 1 %): the ceiling is never exceeded. A continuous parameter must also land
//! within 1 % under it — ratio in [R, 1.01 · R], whole file in [0.99 · B, B] — or the run fails. An integer
//! parameter takes the largest setting that fits, which may leave more than 1 % of the budget unused when its steps
//! are coarse (the report's `within` says so). If even the method's smallest setting (sparsity 0.999, rank 1, 1
//! bit, or BitDelta's only one) exceeds the budget, the run fails naming the method, the budget and what that
//! smallest setting takes. If its largest setting (sparsity 0, the full rank, 16 bits) fits, it is taken and
//! `within` is false: the budget is not used up.

use half::f16;
use serde::Serialize;
use ultradelta_alloc::TensorStat;
use ultradelta_archive::{
    compress_index, encode_file_record_against, encode_record, FileEntry, FinetunedInfo,
    LowRankRecord, Manifest, Policy, Record, FORMAT_VERSION, KIND_NONE, PREAMBLE_LEN, TRAILER_LEN,
};

use ultradelta_qgp::rng::DetRng;

use crate::config::{CompressConfig, Method};
use crate::delta::delta_f32;
use crate::method::{compress_tensor, matrix_view, uses_rate};
use crate::plan::{pass_one, rates, Plan};
use crate::progress::check_cancelled;
use crate::selection::RuleSource;
use crate::{Error, Progress, Result};

/// Relative tolerance of the budget: a continuous parameter lands at most 1 % under the ceiling (ratio at most
/// 1 % above `target_ratio`; archive at least 99 % of `target_size`). The ceiling itself is exact.
pub const BUDGET_TOLERANCE: f64 = 0.01;

/// The fewest bytes a whole-file budget of `budget` bytes must take with a continuous parameter: 1 %
/// ([`BUDGET_TOLERANCE`]) under it, rounded up.
pub(crate) fn size_floor(budget: u64) -> u64 {
    ((1.0 - BUDGET_TOLERANCE) * budget as f64).ceil() as u64
}

/// Largest sparsity the search tries.
const MAX_SPARSITY: f64 = 0.999;

/// Deltas cached across evaluations when the compressed tensors total at most this many entries.
const CACHE_ENTRIES: usize = 64 << 20;

/// What the byte-budget search chose.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetReport {
    /// Which budget: `ratio` (`target_ratio`, over the compressed tensors) or `size` (`target_size`, the whole
    /// archive file).
    pub kind: String,
    /// Requested ratio (`ratio`) or bytes of the whole archive (`size`).
    pub target: f64,
    /// Real ratio of the chosen parameter over the compressed tensors (16 bits × entries over their records'
    /// bytes).
    pub achieved: f64,
    /// Ceiling on the bytes of the compressed tensors' records the search used.
    pub record_budget: u64,
    /// Bytes of the compressed tensors' records at the chosen parameter (at most `record_budget`).
    pub record_bytes: u64,
    /// `size` only: bytes of the archive outside the compressed tensors' records (the index counted at its
    /// upper bound); the archive takes at most `fixed_bytes + record_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_bytes: Option<u64>,
    /// Name of the free parameter (`sparsity`, `rank`, `bits`, or `none`).
    pub parameter: String,
    /// Its chosen value.
    pub value: f64,
    /// Whether the chosen parameter uses the budget to within 1 % (it never exceeds it).
    pub within: bool,
    /// Compression passes evaluated.
    pub evaluations: usize,
}

impl BudgetReport {
    /// The budget as a user asked for it, e.g. `target ratio 40x` or `target size 1200000 bytes`.
    pub fn describe(&self) -> String {
        describe(&self.kind, self.target)
    }
}

fn describe(kind: &str, target: f64) -> String {
    if kind == "size" {
        format!("target size {} bytes", target as u64)
    } else {
        format!("target ratio {target}x")
    }
}

struct Evaluator<'p, 'a> {
    p: &'p Plan<'a>,
    idx: Vec<usize>,
    stats: Option<Vec<TensorStat>>,
    cache: Option<Vec<Vec<f32>>>,
    evaluations: usize,
    /// Polled before each tensor: a search may evaluate many settings.
    progress: &'p dyn Progress,
}

impl Evaluator<'_, '_> {
    /// Bytes of the compressed tensors' records under `cfg`, exactly as the writer encodes them. Each evaluation
    /// is a stage `budget search` of its own (a search makes up to about 40).
    fn bytes(&mut self, cfg: &CompressConfig) -> Result<u64> {
        self.evaluations += 1;
        let alloc = rates(self.stats.as_deref(), self.idx.len(), cfg)?;
        let total: u64 = self
            .idx
            .iter()
            .map(|&i| self.p.tensors[i].delta_info().numel() as u64)
            .sum();
        self.progress.begin("budget search", total);
        let mut bytes = 0u64;
        for (k, &i) in self.idx.iter().enumerate() {
            check_cancelled(self.progress)?;
            let t = &self.p.tensors[i];
            // The delta's tensor (`TensorPlan::head`) and the record's (`info`): they differ for a tensor the
            // fine-tune grew by rows, whose record adds the rows the base lacks.
            let (info, delta_info) = (&t.info, t.delta_info());
            let name = info.name.as_str();
            if cfg.method == Method::Lowrank {
                let rec = self
                    .p
                    .with_added_rows(t, lowrank_sized(&delta_info.shape, cfg.rank))?;
                bytes += encode_record(info.dtype, &info.shape, &rec, cfg.zstd_level)?.len() as u64;
                self.progress.advance(delta_info.numel() as u64);
                continue;
            }
            let owned;
            let delta: &[f32] = match &self.cache {
                Some(c) => &c[k],
                None => {
                    let base = &self.p.tensors[i].base_name;
                    owned = delta_f32(&self.p.base.view(base)?, &self.p.ft_view(t)?)?;
                    &owned
                }
            };
            let rec = compress_tensor(delta, name, &delta_info.shape, alloc.rates[k], cfg)
                .map_err(|e| self.p.kernel_err(t, e))?
                .record;
            let rec = self.p.with_added_rows(t, rec)?;
            bytes += encode_record(info.dtype, &info.shape, &rec, cfg.zstd_level)?.len() as u64;
            self.progress.advance(delta_info.numel() as u64);
        }
        self.progress.end();
        Ok(bytes.max(1))
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

/// The widest JSON number of an `f64` (24 characters: `-2.2250738585072014e-308`): every float the search can
/// still change is serialised as this when the index is bounded.
const WIDEST_F64: f64 = -f64::MIN_POSITIVE;

/// The archive's bytes outside the compressed tensors' records, for a whole-file budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FixedPart {
    /// Records of the deltas kept without loss and of the tensors only in the fine-tune.
    pub(crate) lossless: u64,
    /// Companion files' records.
    pub(crate) companions: u64,
    /// The compressed index's estimated size (see [`fixed_part`]).
    pub(crate) index: u64,
}

impl FixedPart {
    /// Preamble, lossless and companion records, index bound and trailer.
    pub(crate) fn total(&self) -> u64 {
        PREAMBLE_LEN + self.lossless + self.companions + self.index + TRAILER_LEN
    }
}

/// The archive's bytes outside the compressed tensors' records when `p` is written under `cfg` with a whole-file
/// budget of `budget` bytes (which bounds every offset in a file that fits it). The lossless and companion records
/// are encoded as the writer encodes them; the index is the writer's index with the compressed tensors' numbers,
/// every offset, γ and the solved parameters at their widest, so no choice of the free parameter makes it longer.
pub(crate) fn fixed_part(p: &Plan<'_>, cfg: &CompressConfig, budget: u64) -> Result<FixedPart> {
    let hex16 = || "0".repeat(16);
    let mut lossless = 0u64;
    let mut entries = Vec::with_capacity(p.tensors.len());
    for plan in &p.tensors {
        let info = &plan.info;
        let name = info.name.as_str();
        let mut e = plan.entry();
        let numel = e.numel;
        if plan.from == RuleSource::User {
            e.extra.insert("rule".into(), "user".into());
        }
        if plan.policy != Policy::New {
            e.base_hash = Some(hex16());
        }
        e.offset = budget;
        e.checksum = hex16();
        match plan.policy {
            Policy::Compress => {
                // Every number at its widest; the longest record kind name the method can write.
                e.kind = match cfg.method {
                    Method::Ultradelta => "sparse-golomb-rans",
                    Method::Dare | Method::Magnitude => "sparse-f16",
                    Method::Compeft => "sparse-sign",
                    Method::Bitdelta => "dense-sign",
                    Method::Lowrank => "lowrank-f16",
                    Method::Quant => "dense-levels",
                }
                .into();
                e.length = budget;
                e.kept = numel;
                e.sparsity = WIDEST_F64;
                if uses_rate(cfg.method) {
                    e.rate = Some(WIDEST_F64);
                }
                if cfg.method == Method::Ultradelta {
                    e.tier = Some("high".into());
                }
                if cfg.uses_new_codecs() {
                    e.extra.insert("codec".into(), "seeded+entropy".into());
                    e.extra.insert("seed_trial".into(), u32::MAX.into());
                    e.extra.insert("hist_l1".into(), u64::MAX.into());
                    e.extra.insert("hist_l1_first".into(), u64::MAX.into());
                }
            }
            Policy::Drop if plan.head.is_none() => {
                e.kind = KIND_NONE.to_string();
                e.offset = 0;
                e.checksum = String::new();
                e.sparsity = 1.0;
            }
            // A tensor grown by rows has a record under every policy: dropped, its added rows.
            Policy::Keep | Policy::New | Policy::Drop => {
                // Exactly the record the writer will write (kept for the pipeline while the run's cache has room).
                let rec = p.lossless_record(plan, cfg.zstd_level)?;
                p.base.release(&plan.base_name);
                p.ft.release(name);
                let len = rec.len();
                lossless += len;
                let kept = rec.kept().unwrap_or(numel);
                e.kind = rec.kind().name().to_string();
                e.length = len;
                e.kept = kept;
                e.sparsity = if numel == 0 {
                    0.0
                } else {
                    1.0 - kept as f64 / numel as f64
                };
            }
        }
        entries.push(e);
    }
    let mut companions = 0u64;
    let mut files = Vec::new();
    crate::companions::for_each(
        p.ft,
        p.ft.companions().0,
        p.base,
        cfg.self_contained,
        |name, bytes, base| {
            // Exactly the record the writer will make (same choice of kind, same level).
            let (rec, base_ref) = encode_file_record_against(bytes, base, cfg.zstd_level)?;
            companions += rec.len() as u64;
            files.push(FileEntry {
                name: name.to_string(),
                offset: budget,
                length: rec.len() as u64,
                checksum: hex16(),
                size: bytes.len() as u64,
                base: base_ref.map(Into::into),
            });
            Ok(())
        },
    )?;
    // The parameters as the pipeline writes them, with the solved ones and the report at their widest.
    let widest_cfg = CompressConfig {
        sparsity: WIDEST_F64,
        rank: usize::MAX,
        bits: Some(u8::MAX),
        ..cfg.clone()
    };
    let widest_report = BudgetReport {
        kind: "ratio".into(),
        target: WIDEST_F64,
        achieved: WIDEST_F64,
        record_budget: u64::MAX,
        record_bytes: u64::MAX,
        fixed_bytes: Some(u64::MAX),
        parameter: "sparsity".into(),
        value: WIDEST_F64,
        within: false,
        evaluations: usize::MAX,
    };
    let mut params = crate::pipeline::params_json(p, &widest_cfg, Some(&widest_report));
    if let serde_json::Value::Object(m) = &mut params {
        m.insert("gamma".into(), serde_json::json!(WIDEST_F64));
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        method: cfg.method.name().to_string(),
        params,
        gamma: WIDEST_F64,
        base_fingerprint: p.base.fingerprint(),
        finetuned: FinetunedInfo {
            size_on_disk: p.ft.size_on_disk(),
            metadata: p.ft.metadata().clone(),
            source: p.ft.path().display().to_string(),
        },
        tensors: entries,
        files,
        created_by: crate::pipeline::CREATED_BY.to_string(),
    };
    // The writer stores the index as one zstd frame of its compact JSON. Its compressed size is estimated from the
    // widest index with every number and checksum the search can change replaced by pseudo-random ones of the
    // same width (more entropy than real offsets and sparsities have), plus the plan's slack: the pipeline checks
    // the real size before finishing and, in the rare case it is over the budget, writes again with more slack.
    fn cannot(e: impl std::fmt::Display) -> Error {
        Error::InvalidConfig {
            field: "target_size",
            reason: format!("cannot size the index: {e}"),
        }
    }
    let mut value = serde_json::to_value(&manifest).map_err(cannot)?;
    fill_widest(&mut value, budget, &mut DetRng::new(0x5DEE_CE66_D1CE_4E5B));
    let json = serde_json::to_vec(&value).map_err(cannot)?;
    let estimate = compress_index(&json, cfg.zstd_level).map_err(cannot)?.len() as i64;
    let index = estimate.saturating_add(p.index_slack).max(0) as u64;
    Ok(FixedPart {
        lossless,
        companions,
        index,
    })
}

/// A pseudo-random integer with exactly `digits` decimal digits (1 ≤ digits ≤ 19; 20 gives a 20-digit u64).
fn random_width(digits: usize, rng: &mut DetRng) -> u64 {
    match digits {
        0 | 1 => rng.below(10),
        20.. => 10_000_000_000_000_000_000 + rng.below(8_000_000_000_000_000_000),
        d => {
            let lo = 10u64.pow(d as u32 - 1);
            lo + rng.below(9 * lo)
        }
    }
}

/// Replaces, in the serialised widest index, every value the search can still change by a pseudo-random one of
/// the same printed width: 16-digit hex checksums, the widest float, offsets and lengths (`budget`), the widest
/// integers, and the kept counts of compressed tensors (their numel's width).
fn fill_widest(v: &mut serde_json::Value, budget: u64, rng: &mut DetRng) {
    use serde_json::Value;
    match v {
        Value::String(s) if s.len() == 16 && s.bytes().all(|b| b == b'0') => {
            *s = format!("{:016x}", rng.next_u64());
        }
        Value::Number(n) => {
            if n.as_f64() == Some(WIDEST_F64) && n.is_f64() {
                *v = serde_json::json!(-f64::MIN_POSITIVE * (1.0 + rng.unit_f64()));
            } else if let Some(x) = n.as_u64() {
                if x == budget || x == u64::MAX || x == u64::from(u32::MAX) {
                    *v = serde_json::json!(random_width(x.to_string().len(), rng));
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| fill_widest(x, budget, rng)),
        Value::Object(m) => {
            let compressed = m.get("policy").and_then(Value::as_str) == Some("compress");
            for (k, x) in m.iter_mut() {
                match (k.as_str(), x.as_u64()) {
                    ("kept", Some(kept)) if compressed => {
                        *x = serde_json::json!(random_width(kept.to_string().len(), rng));
                    }
                    _ => fill_widest(x, budget, rng),
                }
            }
        }
        _ => {}
    }
}

/// Solves the budget for one fine-tune: returns `cfg` with its free parameter set, and the report.
pub(crate) fn solve_budget(
    p: &Plan<'_>,
    cfg: &CompressConfig,
    progress: &dyn Progress,
) -> Result<(CompressConfig, BudgetReport)> {
    let (kind, target) = match (cfg.target_ratio, cfg.target_size) {
        (Some(r), None) => ("ratio", r),
        (None, Some(b)) => ("size", b as f64),
        _ => {
            return Err(Error::InvalidConfig {
                field: "target_ratio",
                reason: "the budget search needs exactly one of target_ratio and target_size"
                    .into(),
            })
        }
    };
    let asked = describe(kind, target);
    let fail = |detail: String| Error::Budget {
        finetuned: p.ft.path().to_path_buf(),
        budget: asked.clone(),
        detail,
    };
    let idx = p.compressed();
    if idx.is_empty() {
        return Err(fail(
            "no tensor is compressed, so no parameter changes the archive's size".into(),
        ));
    }
    let numel: u64 = idx.iter().map(|&i| p.tensors[i].info.numel() as u64).sum();
    let ratio_of = |bytes: u64| 2.0 * numel as f64 / bytes.max(1) as f64;
    // The ceiling on the compressed records' bytes, and the floor of "within tolerance".
    let (fixed, ceiling, floor) = match cfg.target_size {
        Some(budget) => {
            let f = fixed_part(p, cfg, budget)?;
            let total = f.total();
            if total >= budget {
                return Err(fail(format!(
                    "the part of the archive no parameter changes already takes {total} bytes (lossless tensor records {}, companion files {}, index at most {}, preamble and trailer {}), so nothing is left for the {} compressed tensors",
                    f.lossless,
                    f.companions,
                    f.index,
                    PREAMBLE_LEN + TRAILER_LEN,
                    idx.len()
                )));
            }
            (
                Some(total),
                budget - total,
                size_floor(budget).saturating_sub(total),
            )
        }
        None => {
            let mut hi = (2.0 * numel as f64 / target).floor() as u64;
            // Ratio ≥ target exactly as it is computed in floating point.
            while hi > 0 && ratio_of(hi) < target {
                hi -= 1;
            }
            let lo = (2.0 * numel as f64 / (target * (1.0 + BUDGET_TOLERANCE))).ceil() as u64;
            (None, hi, lo.min(hi))
        }
    };
    let stats = if cfg.method == Method::Ultradelta {
        Some(pass_one(p, cfg, progress)?.0)
    } else {
        None
    };
    let cache = if cfg.method != Method::Lowrank && numel as usize <= CACHE_ENTRIES {
        let mut c = Vec::with_capacity(idx.len());
        for &i in &idx {
            let t = &p.tensors[i];
            c.push(delta_f32(&p.base.view(&t.base_name)?, &p.ft_view(t)?)?);
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
        evaluations: 0,
        progress,
    };
    progress.note(&format!(
        "{}: searching the {} parameter for {asked} (compressed records at most {ceiling} bytes)",
        p.ft.path().display(),
        cfg.method
    ));
    // What the smallest setting takes, for the error when it does not fit.
    let over = |setting: String, bytes: u64| -> Error {
        let takes = match fixed {
            Some(f) => format!(
                "an archive of at least {} bytes ({} compressed-record bytes, {:.2}x over the compressed tensors)",
                f + bytes,
                bytes,
                ratio_of(bytes)
            ),
            None => format!(
                "{:.2}x over the compressed tensors ({bytes} bytes of records, ceiling {ceiling})",
                ratio_of(bytes)
            ),
        };
        fail(format!(
            "the budget is a ceiling and even {}'s smallest setting ({setting}) exceeds it: it reaches only {takes}",
            cfg.method
        ))
    };
    let mut out = cfg.clone();
    let report = |bytes: u64, parameter: &str, value: f64, evaluations: usize| BudgetReport {
        kind: kind.into(),
        target,
        achieved: ratio_of(bytes),
        record_budget: ceiling,
        record_bytes: bytes,
        fixed_bytes: fixed,
        parameter: parameter.into(),
        value,
        within: bytes <= ceiling && bytes >= floor,
        evaluations,
    };
    let unused = |setting: String, bytes: u64| {
        if bytes < floor {
            progress.note(&format!(
                "{}: {}'s largest setting ({setting}) fits the {asked} with room to spare ({bytes} of {ceiling} compressed-record bytes)",
                p.ft.path().display(),
                cfg.method
            ));
        }
    };
    match cfg.method {
        Method::Bitdelta => {
            let b = ev.bytes(cfg)?;
            if b > ceiling {
                return Err(over("bitdelta has no free parameter".into(), b));
            }
            unused("its only one".into(), b);
            Ok((out, report(b, "none", 0.0, ev.evaluations)))
        }
        Method::Lowrank | Method::Quant => {
            let (name, kmax) = if cfg.method == Method::Lowrank {
                let kmax = ev
                    .idx
                    .iter()
                    .map(|&i| {
                        let (r, c) = matrix_view(&p.tensors[i].delta_info().shape);
                        r.min(c)
                    })
                    .max()
                    .unwrap_or(1)
                    .max(1);
                ("rank", kmax)
            } else {
                ("bits", 16)
            };
            let mut eval = |k: usize| -> Result<u64> {
                let mut c = cfg.clone();
                if cfg.method == Method::Lowrank {
                    c.rank = k;
                } else {
                    c.bits = Some(k as u8);
                }
                ev.bytes(&c)
            };
            // The bytes grow with k: the largest k whose records fit under the ceiling.
            let b1 = eval(1)?;
            if b1 > ceiling {
                return Err(over(format!("{name} 1"), b1));
            }
            let bmax = eval(kmax)?;
            let (k, b) = if bmax <= ceiling {
                unused(format!("{name} {kmax}"), bmax);
                (kmax, bmax)
            } else {
                // Invariant: lo fits, hi does not.
                let (mut lo, mut hi, mut b_lo) = (1usize, kmax, b1);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    let b = eval(mid)?;
                    if b <= ceiling {
                        lo = mid;
                        b_lo = b;
                    } else {
                        hi = mid;
                    }
                }
                (lo, b_lo)
            };
            if cfg.method == Method::Lowrank {
                out.rank = k;
            } else {
                out.bits = Some(k as u8);
            }
            Ok((out, report(b, name, k as f64, ev.evaluations)))
        }
        Method::Ultradelta | Method::Dare | Method::Magnitude | Method::Compeft => {
            // x = ln(density); g(x) = ln ceiling − ln bytes(x) decreases in x; g ≥ 0 fits.
            let mut at = |x: f64| -> Result<(f64, u64)> {
                let mut c = cfg.clone();
                c.sparsity = (1.0 - x.exp()).clamp(0.0, MAX_SPARSITY);
                let b = ev.bytes(&c)?;
                Ok((c.sparsity, b))
            };
            let lc = (ceiling as f64).ln();
            let (mut a, mut b) = ((1.0 - MAX_SPARSITY).ln(), 0.0f64);
            let (sa, ba) = at(a)?;
            if ba > ceiling {
                return Err(over(format!("sparsity {MAX_SPARSITY}"), ba));
            }
            let (sb, bb) = at(b)?;
            if bb <= ceiling {
                unused("sparsity 0".into(), bb);
                out.sparsity = sb;
                return Ok((out, report(bb, "sparsity", sb, ev.evaluations)));
            }
            // The largest fitting point so far, and the least bytes seen over the ceiling (for the error).
            let mut best = (sa, ba);
            let mut above = (sb, bb);
            // Stop once the fitting point uses all but a fifth of the tolerance band.
            let stop = ceiling - (ceiling - floor) / 5;
            let (mut ga, mut gb) = (lc - (ba as f64).ln(), lc - (bb as f64).ln());
            let mut side = 0i8;
            for _ in 0..40 {
                if best.1 >= stop {
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
                let (s, bytes) = at(x)?;
                if bytes <= ceiling {
                    if bytes > best.1 {
                        best = (s, bytes);
                    }
                } else if bytes < above.1 {
                    above = (s, bytes);
                }
                let g = lc - (bytes as f64).ln();
                if g >= 0.0 {
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
            if best.1 < floor {
                // The bytes jumped over the band between two settings the search cannot tell apart (a matrix's
                // low-rank part changing rank, say, on a small model): the budget is a ceiling, so the largest
                // setting found under it is taken, with the room it leaves said (the report's `within` is false).
                progress.note(&format!(
                    "{}: the bytes move in steps too coarse to land within 1% of the {asked}: the largest setting found under the ceiling, sparsity {:.6} ({:.2}x, {} of {ceiling} compressed-record bytes), is taken; the next found, sparsity {:.6}, takes {} bytes, over it",
                    p.ft.path().display(),
                    best.0,
                    ratio_of(best.1),
                    best.1,
                    above.0,
                    above.1
                ));
            }
            out.sparsity = best.0;
            Ok((out, report(best.1, "sparsity", best.0, ev.evaluations)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ultradelta_archive::DEFAULT_ZSTD_LEVEL;
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
