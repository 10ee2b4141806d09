//! The plan of a compression run: everything decided before any record is made. A fine-tune is paired with its
//! base and every tensor gets a policy (the tensor selection); for UltraDelta, pass 1 reads every compressed
//! tensor once for its quantizer, level histograms and σ; the sparsity allocation turns those into per-tensor
//! rates. The pipeline (pass 2) and the budget search both start from here.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ultradelta_alloc::{Allocation, MsaConfig, TensorStat};
use ultradelta_archive::{AppendedRowsRecord, EncodedRecord, Policy, Record, TensorEntry};
use ultradelta_io::{Checkpoint, DType, TensorInfo, TensorView};

use crate::config::{AllocationMode, CompressConfig};
use crate::delta::with_source;
use crate::error::{method_err, quant_err, TensorMismatch};
use crate::method::QuantScan;
use crate::progress::check_cancelled;
use crate::selection::{detect_family, Family, FamilySource, RuleSource};
use crate::{Error, Progress, Result};

/// One tensor of the fine-tune and what happens to it.
pub(crate) struct TensorPlan {
    pub(crate) info: TensorInfo,
    pub(crate) policy: Policy,
    /// Whether a user rule or the preset decided the policy.
    pub(crate) from: RuleSource,
    /// The base's dtype when it differs from the fine-tune's (both floating point): Δ is taken in f32, and a
    /// tensor kept without loss is stored whole.
    pub(crate) base_dtype: Option<DType>,
    /// The base's tensor it is paired with: its own name, or that name with a leading run of components rewritten
    /// (a model prefix added, removed or replaced, [`prefix_map`]), or the base's tied embedding for an untied head
    /// ([`tied_head`]); its own name for a tensor the base does not have.
    pub(crate) base_name: String,
    /// The fine-tune's leading rows the base has, for a 2-D tensor the fine-tune grew by rows (a vocabulary resized
    /// for added tokens): the delta is taken over these, and the added rows are stored whole (record kind
    /// `appended-rows`). `None` for every other tensor.
    pub(crate) head: Option<TensorInfo>,
}

impl TensorPlan {
    /// Its index entry before the writer fills in the record's fields: name, shape, dtype, policy, and the base's
    /// dtype and tensor name where they differ. The pipeline writes it; the budget's index estimate starts from it.
    pub(crate) fn entry(&self) -> TensorEntry {
        let info = &self.info;
        let mut e = TensorEntry::new(
            info.name.clone(),
            info.shape.clone(),
            info.dtype,
            self.policy,
        );
        e.base_dtype = self.base_dtype;
        e.base_name = (self.base_name != info.name).then(|| self.base_name.clone());
        e.base_rows = self.head.as_ref().map(|h| h.shape[0]);
        e
    }

    /// What the delta is taken over: the tensor, or its rows the base has ([`TensorPlan::head`]).
    pub(crate) fn delta_info(&self) -> &TensorInfo {
        self.head.as_ref().unwrap_or(&self.info)
    }
}

/// An output head the fine-tune stores on its own but the base ties to its token embedding (a decoder saved with
/// `tie_word_embeddings`, fine-tuned untied): `(head, embedding)`, the fine-tune's `…lm_head.weight` the base lacks
/// and the base's token embedding of the same shape (or of fewer rows, when the fine-tune added tokens) and dtype
/// class (`…embed_tokens.weight`, `…wte.weight`, `…word_embeddings.weight`; the first in name order) that it starts
/// from, so the head is coded as its delta from that embedding instead of stored whole. `None` when the base has a
/// head of its own or no such embedding.
fn tied_head(base: &Checkpoint, ft: &Checkpoint) -> Option<(String, String)> {
    if base
        .tensors()
        .iter()
        .any(|t| t.name.ends_with("lm_head.weight"))
    {
        return None;
    }
    let head = ft
        .tensors()
        .iter()
        .find(|t| t.name.ends_with("lm_head.weight") && t.dtype.is_float())?;
    let embedding = base.tensors().iter().find(|t| {
        [
            "embed_tokens.weight",
            "wte.weight",
            "word_embeddings.weight",
        ]
        .iter()
        .any(|s| t.name.ends_with(s))
            && grown_by_rows(&t.shape, &head.shape)
            && t.dtype.is_float()
    })?;
    Some((head.name.clone(), embedding.name.clone()))
}

/// Whether `grown` is `shape` or `shape` with more rows: both 2-D, the same columns, at least as many rows (a
/// vocabulary resized for added tokens).
fn grown_by_rows(shape: &[usize], grown: &[usize]) -> bool {
    shape == grown
        || (shape.len() == 2
            && grown.len() == 2
            && shape[1] == grown[1]
            && 0 < shape[0]
            && shape[0] < grown[0])
}

/// How the fine-tune's tensor names map to the base's when the two name the same tensors differently at the
/// front: `(from, to)`, a leading run `from` of whole dotted components of a fine-tune name replaced by `to`
/// ([`name_rewrite`] of the checkpoints' names). One side may carry a model prefix the other lacks —
/// `bert.encoder…` against `encoder…`, as when a task model (`BertForSequenceClassification`) is fine-tuned from a
/// bare encoder's checkpoint (`BertModel`), or the reverse — or the two may differ in it (`transformer.h…` against
/// `model.h…`; a merged PEFT model's `base_model.model.model.layers…` against `model.layers…`).
fn prefix_map(base: &Checkpoint, ft: &Checkpoint) -> Option<(String, String)> {
    fn names(c: &Checkpoint) -> Vec<&str> {
        c.tensors().iter().map(|t| t.name.as_str()).collect()
    }
    name_rewrite(&names(base), &names(ft))
}

/// Most leading components a rewrite replaces on either side ([`name_rewrite`]).
const REWRITE_COMPONENTS: usize = 3;
/// Most non-empty leading runs tried on either side ([`name_rewrite`]), the most frequent first: a checkpoint has
/// a few (`model.`, `model.layers.`, …), and one with 100k distinct first components stays fast.
const REWRITE_RUNS: usize = 64;

/// Every split of `name` into a leading run of up to [`REWRITE_COMPONENTS`] whole dotted components and the rest:
/// `("", name)` first, then `("bert.", "encoder…")`, `("bert.encoder.", …)`, ….
fn leading_runs(name: &str) -> impl Iterator<Item = (&str, &str)> {
    std::iter::once(("", name)).chain(
        name.match_indices('.')
            .take(REWRITE_COMPONENTS)
            .map(move |(i, _)| name.split_at(i + 1)),
    )
}

/// The empty run and the [`REWRITE_RUNS`] non-empty leading runs most frequent among `names` (ties in byte order),
/// each with its index.
fn frequent_runs<'n>(names: &[&'n str]) -> HashMap<&'n str, usize> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for name in names {
        for (run, _) in leading_runs(name).skip(1) {
            *count.entry(run).or_default() += 1;
        }
    }
    let mut runs: Vec<(&str, usize)> = count.into_iter().collect();
    runs.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    runs.truncate(REWRITE_RUNS);
    std::iter::once("")
        .chain(runs.into_iter().map(|(run, _)| run))
        .enumerate()
        .map(|(i, run)| (run, i))
        .collect()
}

/// The rewrite `(from, to)` that pairs the fine-tune's tensor names (`ft`) with the base's (`base`): a leading run
/// `from` of 0–3 whole dotted components of a fine-tune name (`bert.`, `base_model.model.`) replaced by a leading
/// run `to` of 0–3 of a base name (`model.`; either may be empty). A fine-tune tensor the base has by its
/// own name keeps it, and a base tensor paired that way is not paired again through the rewrite.
///
/// Used when it pairs more of the fine-tune's tensors than the names as they are, and at least half of them; a
/// rewrite changing more than one component must also pair more tensors by itself than the names as they are do,
/// so that it renames a model rather than matching leftover heads of a fine-tune that pairs by name (a
/// classifier's `classifier.dense.weight` with a masked-LM base's `lm_head.dense.weight`). The one pairing the
/// most wins; ties go to the fewest components changed (both sides), then to the smallest `(from, to)` in byte
/// order, so the choice depends on the names alone. `None` when every name pairs as it is or no rewrite
/// qualifies.
///
/// The candidates are the [`REWRITE_RUNS`] leading runs most frequent among the names left unpaired on each side,
/// and the empty run; one pass over those names counts every candidate's pairs, a hash lookup per name and run.
fn name_rewrite(base: &[&str], ft: &[&str]) -> Option<(String, String)> {
    let in_base: HashSet<&str> = base.iter().copied().collect();
    let (exact, ft_left): (HashSet<&str>, Vec<&str>) = {
        let (e, l): (Vec<&str>, Vec<&str>) = ft.iter().partition(|n| in_base.contains(*n));
        (e.into_iter().collect(), l)
    };
    if ft_left.is_empty() {
        return None;
    }
    let base_left: Vec<&str> = base
        .iter()
        .copied()
        .filter(|n| !exact.contains(n))
        .collect();
    let (froms, tos) = (frequent_runs(&ft_left), frequent_runs(&base_left));
    // What follows a candidate `to` run in the base's unpaired names, with the runs it follows.
    let mut rests: HashMap<&str, Vec<usize>> = HashMap::new();
    for name in &base_left {
        for (run, rest) in leading_runs(name) {
            if let Some(&t) = tos.get(run) {
                rests.entry(rest).or_default().push(t);
            }
        }
    }
    // pairs[f * tos + t]: the fine-tune's unpaired tensors that rewrite `f` → `t` pairs (at most one base name
    // each: the rest and `t` determine it).
    let mut pairs = vec![0usize; froms.len() * tos.len()];
    for name in &ft_left {
        for (run, rest) in leading_runs(name) {
            if let (Some(&f), Some(ts)) = (froms.get(run), rests.get(rest)) {
                for &t in ts {
                    pairs[f * tos.len() + t] += 1;
                }
            }
        }
    }
    let components = |run: &str| run.matches('.').count();
    let (n, exact) = (ft.len(), exact.len());
    let mut best: Option<(std::cmp::Reverse<usize>, usize, &str, &str)> = None;
    for (&from, &f) in &froms {
        for (&to, &t) in &tos {
            let paired = pairs[f * tos.len() + t];
            let changed = components(from) + components(to);
            if paired == 0 || 2 * (exact + paired) < n || (changed > 1 && paired <= exact) {
                continue;
            }
            let key = (std::cmp::Reverse(paired), changed, from, to);
            if best.as_ref().is_none_or(|b| key < *b) {
                best = Some(key);
            }
        }
    }
    best.map(|(_, _, from, to)| (from.to_owned(), to.to_owned()))
}

/// A fine-tune matched against the base, with a policy for every tensor.
pub(crate) struct Plan<'a> {
    pub(crate) base: &'a Checkpoint,
    pub(crate) ft: &'a Checkpoint,
    pub(crate) family: Family,
    family_source: FamilySource,
    /// The fine-tune's tensors in file order: the order records are written in.
    pub(crate) tensors: Vec<TensorPlan>,
    /// Tensors only in the base (absent from the rebuilt model, like in the fine-tune).
    pub(crate) base_only: Vec<String>,
    /// Tensors whose shape (or, outside floating point, dtype) differs from the base's — a vocabulary resized for
    /// added tokens, say — each as "name (its dtype and shape; the base's)": stored whole (policy `new`).
    pub(crate) reshaped: Vec<String>,
    /// 2-D tensors the fine-tune grew by rows ([`TensorPlan::head`]), each as "name (+k rows on the base's n)".
    pub(crate) appended: Vec<String>,
    /// Bytes added to the whole-file budget's estimate of the compressed index (0; raised by the pipeline when an
    /// archive came out over the budget, see `budget::fixed_part`; negative only in tests of that path).
    pub(crate) index_slack: i64,
    /// Lossless records encoded so far in this run ([`Plan::lossless_record`]).
    lossless: Mutex<LosslessCache>,
}

/// Encoded lossless records of one run, by tensor name and zstd level, at most [`LOSSLESS_CACHE_BYTES`] of them.
#[derive(Default)]
struct LosslessCache {
    records: HashMap<(String, i32), Arc<EncodedRecord>>,
    bytes: u64,
}

/// Bytes of encoded lossless records a run keeps for reuse: every norm, bias and small table, and a kept
/// embedding delta of a small model (MiniLM's, 15 MB compressed); larger ones are compressed again when needed.
const LOSSLESS_CACHE_BYTES: u64 = 64 << 20;

impl<'a> Plan<'a> {
    /// Pairs `ft` with `base` and decides every tensor's policy under `cfg.selection`.
    ///
    /// # Errors
    /// A tensor whose shape differs between the two (or whose dtype does, unless both are floating point) that a
    /// user rule asks to compress, keep or drop (without a rule it is stored whole, [`Plan::reshaped`]); a
    /// compressed tensor that is not floating point.
    pub(crate) fn new(
        base: &'a Checkpoint,
        ft: &'a Checkpoint,
        cfg: &CompressConfig,
    ) -> Result<Plan<'a>> {
        // The base's tensor of each of the fine-tune's: the same name, or the name with a leading run of components
        // rewritten (a model prefix added, removed or replaced) when that pairs the checkpoints ([`prefix_map`]).
        let map = prefix_map(base, ft);
        let exact: HashSet<&str> = ft
            .tensors()
            .iter()
            .filter(|t| base.info(&t.name).is_some())
            .map(|t| t.name.as_str())
            .collect();
        let tied = tied_head(base, ft);
        let base_name_of = |name: &str| -> Option<String> {
            if exact.contains(name) {
                return Some(name.to_owned());
            }
            if let Some((head, embedding)) = &tied {
                if name == head {
                    return Some(embedding.clone());
                }
            }
            let (from, to) = map.as_ref()?;
            let mapped = format!("{to}{}", name.strip_prefix(from.as_str())?);
            // A base tensor another fine-tune tensor has by its own name is not paired twice.
            (base.info(&mapped).is_some() && !exact.contains(mapped.as_str())).then_some(mapped)
        };
        // Floating-point tensors of the same shape pair whatever their dtypes (a base in F32, a fine-tune saved
        // in BF16): the delta is taken in f32.
        let float_pair = |b: &TensorInfo, f: &TensorInfo| {
            b.shape == f.shape && b.dtype.is_float() && f.dtype.is_float()
        };
        let (family, family_source) = match cfg.selection.family {
            Some(f) => (f, FamilySource::User),
            None => detect_family(ft),
        };
        let mut tensors = Vec::with_capacity(ft.tensors().len());
        let mut reshaped = Vec::new();
        let mut appended = Vec::new();
        let mut paired = HashSet::new();
        for info in ft.tensors() {
            // What the tensor's rule (a user glob, else the family preset) asks for it.
            let rule = cfg.selection.policy(family, info);
            let base_info = base_name_of(&info.name).and_then(|n| base.info(&n));
            if let Some(b) = base_info {
                paired.insert(b.name.clone());
            }
            // A tensor whose shape (or, outside floating point, dtype) differs has no delta (a vocabulary
            // resized for added tokens, say): the fine-tune's tensor is stored whole, as one the base lacks.
            let same = |b: &TensorInfo| b.dtype == info.dtype && b.shape == info.shape;
            let unpaired = base_info.filter(|b| !(same(b) || float_pair(b, info)));
            // A 2-D tensor grown by rows (a vocabulary resized for added tokens): its delta is taken over the base's
            // rows (compressed, kept or dropped by its rule) and the added rows are stored whole. Over a base of
            // another float dtype it cannot be kept without loss as a delta: it is then stored whole.
            let grown = unpaired.filter(|b| {
                let dtypes = b.dtype == info.dtype
                    || (b.dtype.is_float() && info.dtype.is_float() && rule.0 != Policy::Keep);
                dtypes && grown_by_rows(&b.shape, &info.shape)
            });
            let head =
                grown.map(|b| TensorInfo::new(info.name.clone(), info.dtype, b.shape.clone()));
            if let Some(b) = grown {
                let added = info.shape[0] - b.shape[0];
                let rows = if added == 1 { "row" } else { "rows" };
                appended.push(format!(
                    "{} (+{added} {rows} on the base's {})",
                    info.name, b.shape[0]
                ));
            }
            let (policy, from) = if grown.is_some() {
                rule
            } else if let Some(b) = unpaired {
                if rule.1 == RuleSource::User {
                    return Err(Error::Mismatch(Box::new(TensorMismatch {
                        tensor: b.name.clone(),
                        base_file: base.file_of(&b.name).unwrap_or(base.path()).to_path_buf(),
                        finetuned_file: ft.file_of(&info.name).unwrap_or(ft.path()).to_path_buf(),
                        base_dtype: b.dtype.name().to_string(),
                        base_shape: b.shape.clone(),
                        ft_dtype: info.dtype.name().to_string(),
                        ft_shape: info.shape.clone(),
                    })));
                }
                reshaped.push(format!(
                    "{} ({} {:?}; the base's {} {:?})",
                    info.name,
                    info.dtype.name(),
                    info.shape,
                    b.dtype.name(),
                    b.shape
                ));
                (Policy::New, RuleSource::Default)
            } else if base_info.is_some() {
                rule
            } else {
                (Policy::New, RuleSource::Default)
            };
            if policy == Policy::Compress && !info.dtype.is_float() {
                return Err(Error::NotCompressible {
                    file: ft.file_of(&info.name).unwrap_or(ft.path()).to_path_buf(),
                    tensor: info.name.clone(),
                    dtype: info.dtype.name().to_string(),
                });
            }
            let base_dtype = base_info
                .map(|b| b.dtype)
                .filter(|&d| d != info.dtype && policy != Policy::New);
            let base_name = match base_info {
                Some(b) if policy != Policy::New => b.name.clone(),
                _ => info.name.clone(),
            };
            tensors.push(TensorPlan {
                info: info.clone(),
                policy,
                from,
                base_dtype,
                base_name,
                head,
            });
        }
        let base_only = base
            .tensors()
            .iter()
            .filter(|b| !paired.contains(&b.name))
            .map(|b| b.name.clone())
            .collect();
        Ok(Plan {
            base,
            ft,
            family,
            family_source,
            tensors,
            base_only,
            reshaped,
            appended,
            index_slack: 0,
            lossless: Mutex::default(),
        })
    }

    /// How the tensor-selection family was decided (human-readable).
    pub(crate) fn family_source(&self) -> String {
        let family = self.family;
        match &self.family_source {
            FamilySource::User => format!("{family} (given)"),
            FamilySource::ModelType(t) => format!("{family} (from config.json model_type \"{t}\")"),
            FamilySource::TensorNames => format!("{family} (guessed from tensor names)"),
            FamilySource::Fallback => {
                "generic (no preset matched: compressing 2-D *weight tensors except embeddings, heads and norms)"
                    .to_string()
            }
        }
    }

    /// The fine-tune's view of what `t`'s delta is taken over: the tensor, or its rows the base has
    /// ([`TensorPlan::head`]).
    pub(crate) fn ft_view<'t>(&'t self, t: &'t TensorPlan) -> Result<TensorView<'t>> {
        let view = self.ft.view(&t.info.name)?;
        Ok(match &t.head {
            Some(head) => view
                .leading_rows(head)
                .expect("the plan's head is the tensor's leading rows"),
            None => view,
        })
    }

    /// `t`'s record from the record of its delta: that record, or for a tensor the fine-tune grew by rows
    /// ([`TensorPlan::head`]) an `appended-rows` record of it and the added rows' bytes.
    pub(crate) fn with_added_rows(&self, t: &TensorPlan, rec: Record) -> Result<Record> {
        let Some(head) = &t.head else {
            return Ok(rec);
        };
        let view = self.ft.view(&t.info.name)?;
        Ok(Record::AppendedRows(AppendedRowsRecord {
            base_rows: head.shape[0] as u64,
            cols: head.shape[1] as u64,
            dtype: head.dtype,
            head: Some(Box::new(rec)),
            tail: view.bytes()[head.nbytes()..].to_vec(),
        }))
    }

    /// The encoded record of a tensor under policy `keep` (its lossless delta, [`EncodedRecord::lossless_delta`];
    /// its whole bytes when the base's dtype differs) or `new` (its whole bytes), or of a tensor grown by rows under
    /// `keep` or `drop` (its `appended-rows` record: the base rows' lossless delta or none, and the added rows, the
    /// bytes no parameter changes): made once per run and zstd level
    /// while the cache has room, since the budget's fixed part sizes it and every pass of the pipeline writes it,
    /// and a lossless record is only chosen by compressing it.
    ///
    /// # Errors
    /// A tensor that cannot be read, or a record that cannot be encoded.
    pub(crate) fn lossless_record(
        &self,
        tensor: &TensorPlan,
        zstd_level: i32,
    ) -> Result<Arc<EncodedRecord>> {
        let info = &tensor.info;
        let name = info.name.as_str();
        let key = (info.name.clone(), zstd_level);
        if let Some(r) = self.lossless.lock().expect("cache lock").records.get(&key) {
            return Ok(Arc::clone(r));
        }
        let rec = Arc::new(match tensor.policy {
            // A tensor grown by rows: the lossless delta of the base's rows (none for a dropped one) and the added
            // rows, in one `appended-rows` record.
            Policy::Keep | Policy::Drop if tensor.head.is_some() => {
                let head = tensor.head.as_ref().expect("a tensor grown by rows");
                let f = self.ft.view(name)?;
                let nested = match tensor.policy {
                    Policy::Keep => Some(EncodedRecord::lossless_delta(
                        info.dtype,
                        &head.shape,
                        self.base.view(&tensor.base_name)?.bytes(),
                        &f.bytes()[..head.nbytes()],
                        zstd_level,
                    )?),
                    _ => None,
                };
                EncodedRecord::appended_rows(
                    info.dtype,
                    &info.shape,
                    head.shape[0],
                    nested.as_ref(),
                    &f.bytes()[head.nbytes()..],
                    zstd_level,
                )?
            }
            // A bitwise record needs the base in the fine-tune's dtype: with another, the tensor is stored whole.
            Policy::Keep if tensor.base_dtype.is_none() => {
                let (b, f) = (self.base.view(&tensor.base_name)?, self.ft.view(name)?);
                // The smaller of the XOR and the bit difference (kinds xor-zstd and diff-zstd).
                EncodedRecord::lossless_delta(
                    info.dtype,
                    &info.shape,
                    b.bytes(),
                    f.bytes(),
                    zstd_level,
                )?
            }
            policy => {
                debug_assert!(
                    matches!(policy, Policy::New | Policy::Keep),
                    "{name}: not a lossless tensor"
                );
                EncodedRecord::new(
                    info.dtype,
                    &info.shape,
                    &Record::Full {
                        dtype: info.dtype,
                        bytes: self.ft.view(name)?.bytes().to_vec(),
                    },
                    zstd_level,
                )?
            }
        });
        let mut cache = self.lossless.lock().expect("cache lock");
        if cache.bytes + rec.len() <= LOSSLESS_CACHE_BYTES {
            cache.bytes += rec.len();
            cache.records.insert(key, Arc::clone(&rec));
        }
        Ok(rec)
    }

    /// A method kernel's error for tensor `t` ([`method_err`]), naming the checkpoint at fault: a non-finite delta
    /// entry whose base value is itself not finite is the base's (its file, its tensor, its value), any other error
    /// the fine-tune's.
    pub(crate) fn kernel_err(&self, t: &TensorPlan, e: ultradelta_baselines::Error) -> Error {
        use ultradelta_baselines::Error as B;
        use ultradelta_qgp::Error as Q;
        let index = match &e {
            B::NonFinite { index, .. } | B::Quant(Q::NonFinite { index, .. }) => Some(*index),
            _ => None,
        };
        let base_value = index.and_then(|i| {
            let view = self.base.view(&t.base_name).ok()?;
            let mut v = [0f32];
            view.range_to_f32_into(i, &mut v).ok()?;
            (!v[0].is_finite()).then_some((i, v[0]))
        });
        match base_value {
            Some((index, value)) => {
                quant_err(self.base, &t.base_name, Q::NonFinite { index, value })
            }
            None => method_err(self.ft, &t.info.name, e),
        }
    }

    /// Indices of the tensors under policy `compress`.
    pub(crate) fn compressed(&self) -> Vec<usize> {
        (0..self.tensors.len())
            .filter(|&i| self.tensors[i].policy == Policy::Compress)
            .collect()
    }
}

/// Pass 1 (UltraDelta only): every compressed tensor's σ of its quantized delta (for the allocation) and its
/// quantizer and level scan (so pass 2 can quantize and prune straight from the checkpoints' bytes), in the order
/// of [`Plan::compressed`]. Δ is never materialised: each tensor is read twice (extremes, then levels).
pub(crate) fn pass_one(
    p: &Plan<'_>,
    cfg: &CompressConfig,
    progress: &dyn Progress,
) -> Result<(Vec<TensorStat>, Vec<QuantScan>)> {
    let idx = p.compressed();
    let total: u64 = idx
        .iter()
        .map(|&i| p.tensors[i].delta_info().numel() as u64)
        .sum();
    progress.begin("analysing deltas", total);
    let mut stats = Vec::with_capacity(idx.len());
    let mut scans = Vec::with_capacity(idx.len());
    // Last tensor first: pass 2 goes first to last, so when the checkpoints are larger than the page cache the
    // tensors it starts with are the ones this pass read most recently, still cached, instead of the ones the
    // cache dropped first. Each tensor's result is its own, so the order changes nothing else.
    for (k, &i) in idx.iter().enumerate().rev() {
        check_cancelled(progress)?;
        let info = p.tensors[i].delta_info();
        let name = info.name.as_str();
        // The disk reads the next tensor while this one is computed (when it is not cached already).
        if let Some(&prev) = k.checked_sub(1).and_then(|j| idx.get(j)) {
            p.base.prefetch(&p.tensors[prev].base_name);
            p.ft.prefetch(&p.tensors[prev].info.name);
        }
        let (base, ft) = (
            p.base.view(&p.tensors[i].base_name)?,
            p.ft_view(&p.tensors[i])?,
        );
        let scan = with_source(&base, &ft, |src| QuantScan::of(src, cfg))?
            .map_err(|e| p.kernel_err(&p.tensors[i], e.into()))?;
        stats.push(scan.stat(info.numel()));
        scans.push(scan);
        // The next pass maps the tensor in again; meanwhile its pages need not count against this process.
        p.base.release(&p.tensors[i].base_name);
        p.ft.release(name);
        progress.advance(info.numel() as u64);
    }
    progress.end();
    stats.reverse();
    scans.reverse();
    Ok((stats, scans))
}

/// Per-tensor rates of the `n` compressed tensors: the allocation for UltraDelta (from pass 1's `stats`), the
/// target sparsity for every tensor otherwise (`stats` is `None`).
pub(crate) fn rates(
    stats: Option<&[TensorStat]>,
    n: usize,
    cfg: &CompressConfig,
) -> Result<Allocation> {
    let Some(stats) = stats else {
        return Ok(Allocation {
            rates: vec![cfg.sparsity; n],
            tiers: vec![None; n],
        });
    };
    let alloc = match cfg.allocation {
        AllocationMode::Msa => ultradelta_alloc::msa(
            stats,
            cfg.sparsity,
            &MsaConfig {
                step: cfg.step,
                ..MsaConfig::default()
            },
        )?,
        AllocationMode::MsaRelative => ultradelta_alloc::msa_relative(
            stats,
            cfg.sparsity,
            cfg.tier_spread,
            MsaConfig::default().max_rate,
        )?,
        AllocationMode::Uniform => ultradelta_alloc::uniform(stats, cfg.sparsity)?,
        AllocationMode::RateDistortion => ultradelta_alloc::proportional(
            stats,
            cfg.sparsity,
            cfg.rd_power,
            MsaConfig::default().max_rate,
        )?,
    };
    Ok(alloc)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ultradelta_archive::{encode_record, Policy, Record};

    /// A kept tensor's lossless record is made once per run and level: the budget's fixed part and every pass of
    /// the pipeline get the same record, which is the one `Record::lossless_delta` chooses, encoded.
    #[test]
    fn a_kept_tensors_record_is_made_once_per_level() {
        let dir = tempfile::tempdir().unwrap();
        let (base, ft) = crate::test_pairs::tiny_f32(dir.path());
        let plan = super::Plan::new(&base, &ft, &crate::CompressConfig::default()).unwrap();
        let kept: Vec<_> = plan
            .tensors
            .iter()
            .filter(|t| t.policy == Policy::Keep)
            .collect();
        assert!(!kept.is_empty());
        for t in kept {
            let info = &t.info;
            let first = plan.lossless_record(t, 3).unwrap();
            assert!(Arc::ptr_eq(&first, &plan.lossless_record(t, 3).unwrap()));
            let other = plan.lossless_record(t, 1).unwrap();
            assert!(!Arc::ptr_eq(&first, &other));
            for (level, made) in [(3, &first), (1, &other)] {
                let (bb, fb) = (base.view(&info.name).unwrap(), ft.view(&info.name).unwrap());
                let rec =
                    Record::lossless_delta(info.dtype, bb.bytes(), fb.bytes(), level).unwrap();
                let want = encode_record(info.dtype, &info.shape, &rec, level).unwrap();
                assert_eq!(made.bytes(), want, "{}", info.name);
            }
        }
    }

    /// `name_rewrite` of two name lists, as `(&str, &str)`.
    fn rewrite(base: &[&str], ft: &[&str]) -> Option<(String, String)> {
        super::name_rewrite(base, ft)
    }

    fn some(from: &str, to: &str) -> Option<(String, String)> {
        Some((from.to_owned(), to.to_owned()))
    }

    /// Every name pairs as it is: no rewrite, whatever else the names would allow.
    #[test]
    fn names_that_pair_as_they_are_are_not_rewritten() {
        let names = [
            "model.layers.0.q.weight",
            "model.norm.weight",
            "lm_head.weight",
        ];
        assert_eq!(rewrite(&names, &names), None);
        assert_eq!(rewrite(&names, &names[..2]), None);
    }

    /// A model prefix one side lacks: one component added or removed (the rule before rewrites were general).
    #[test]
    fn one_component_is_added_or_removed() {
        let bare = [
            "encoder.layer.0.w",
            "encoder.layer.1.w",
            "embeddings.word.w",
        ];
        let task = [
            "bert.encoder.layer.0.w",
            "bert.encoder.layer.1.w",
            "bert.embeddings.word.w",
            "classifier.weight",
        ];
        assert_eq!(rewrite(&bare, &task), some("bert.", ""));
        assert_eq!(rewrite(&task, &bare), some("", "bert."));
    }

    /// A leading component replaced by another (`transformer.` → `model.`).
    #[test]
    fn a_component_is_replaced() {
        let base = [
            "model.h.0.attn.w",
            "model.h.1.attn.w",
            "model.wte.w",
            "lm_head.weight",
        ];
        let ft = [
            "transformer.h.0.attn.w",
            "transformer.h.1.attn.w",
            "transformer.wte.w",
            "lm_head.weight",
        ];
        assert_eq!(rewrite(&base, &ft), some("transformer.", "model."));
        assert_eq!(rewrite(&ft, &base), some("model.", "transformer."));
    }

    /// Two leading components removed: a merged PEFT model's `base_model.model.` (the three-component
    /// `base_model.model.model.` → `model.` pairs the layers too, but not the head, and changes more).
    #[test]
    fn two_components_are_removed() {
        let base = [
            "model.layers.0.q.weight",
            "model.layers.1.q.weight",
            "lm_head.weight",
        ];
        let ft = [
            "base_model.model.model.layers.0.q.weight",
            "base_model.model.model.layers.1.q.weight",
            "base_model.model.lm_head.weight",
        ];
        assert_eq!(rewrite(&base, &ft), some("base_model.model.", ""));
        // Without the head the two pair the same tensors: the fewer components changed wins.
        assert_eq!(rewrite(&base[..2], &ft[..2]), some("base_model.model.", ""));
        // The rewrite pairing the most wins over one changing fewer components (`a.` → `` pairs half).
        assert_eq!(
            rewrite(
                &["x", "y", "z", "v", "b.x", "b.y"],
                &["a.b.x", "a.b.y", "a.b.z", "a.b.v"]
            ),
            some("a.b.", "")
        );
    }

    /// Rewrites pairing as many tensors: the fewest components changed, then the smallest `(from, to)`; the order
    /// of the names does not matter.
    #[test]
    fn ties_go_to_the_fewest_components_then_byte_order() {
        let check = |base: &[&str], ft: &[&str], want: Option<(String, String)>| {
            assert_eq!(rewrite(base, ft), want, "{base:?} {ft:?}");
            let (mut b, mut f) = (base.to_vec(), ft.to_vec());
            b.reverse();
            f.reverse();
            assert_eq!(rewrite(&b, &f), want, "{b:?} {f:?}");
        };
        // `x.` → `` and `y.` → `` pair one each.
        check(&["m", "n"], &["x.m", "y.n"], some("x.", ""));
        // `` → `k.` and `x.` → `` pair one each: `` sorts first.
        check(&["m", "k.x.m"], &["x.m", "z"], some("", "k."));
        // `a.` → `b.` and `a.` → `c.` pair one each.
        check(&["b.w", "c.w"], &["a.w"], some("a.", "b."));
        // `` → `z.` (one component) and `` → `a.b.` (two) pair one each: the fewer components win over byte order.
        check(&["z.w", "a.b.w"], &["w"], some("", "z."));
        // `p.` → `` (one component) and `p.q.` → `q.` (three) pair both.
        check(&["q.w1", "q.w2"], &["p.q.w1", "p.q.w2"], some("p.", ""));
    }

    /// A rewrite is taken when it pairs more tensors than the names as they are, and with them at least half.
    #[test]
    fn a_rewrite_must_pair_at_least_half() {
        let base = ["a.w", "b.w"];
        assert_eq!(rewrite(&base, &["m.a.w", "x", "y", "z"]), None);
        assert_eq!(
            rewrite(&base, &["m.a.w", "m.b.w", "y", "z"]),
            some("m.", "")
        );
        // Names pairing as they are count towards the half.
        assert_eq!(
            rewrite(&["a.w", "v"], &["m.a.w", "v", "y", "z"]),
            some("m.", "")
        );
        assert_eq!(rewrite(&["a.w", "v"], &["m.a.w", "u", "y", "z"]), None);
    }

    /// A base tensor the fine-tune has by its own name is not paired again through a rewrite, nor counted.
    #[test]
    fn a_base_tensor_paired_by_name_is_not_paired_twice() {
        assert_eq!(
            rewrite(&["encoder.w"], &["encoder.w", "bert.encoder.w"]),
            None
        );
        let base = ["encoder.w", "encoder.v"];
        assert_eq!(
            rewrite(&base, &["encoder.w", "bert.encoder.w", "bert.encoder.v"]),
            some("bert.", "")
        );
    }

    /// A fine-tune that pairs by name does not get a rewrite of more than one component that only matches its
    /// leftover heads with the base's (a RoBERTa classifier against a masked-LM base, a BERT classifier against a
    /// pre-training base); one component changed keeps the rule of before.
    #[test]
    fn leftover_heads_are_not_paired_by_a_wider_rewrite() {
        let body = [
            "roberta.layer.0.w",
            "roberta.layer.1.w",
            "roberta.layer.2.w",
        ];
        let base: Vec<&str> = body
            .iter()
            .copied()
            .chain(["lm_head.dense.weight", "lm_head.dense.bias", "lm_head.bias"])
            .collect();
        let ft: Vec<&str> = body
            .iter()
            .copied()
            .chain([
                "classifier.dense.weight",
                "classifier.dense.bias",
                "classifier.out_proj.weight",
            ])
            .collect();
        assert_eq!(rewrite(&base, &ft), None);
        let base: Vec<&str> = body
            .iter()
            .copied()
            .chain(["cls.nsp.weight", "cls.nsp.bias"])
            .collect();
        let ft: Vec<&str> = body
            .iter()
            .copied()
            .chain(["classifier.weight", "classifier.bias"])
            .collect();
        assert_eq!(rewrite(&base, &ft), None);
        // One component changed: taken as before.
        let base: Vec<&str> = body.iter().copied().chain(["weight", "bias"]).collect();
        assert_eq!(rewrite(&base, &ft), some("classifier.", ""));
    }

    /// Thousands of distinct leading runs (a hostile checkpoint) are cut to the most frequent: the rewrite is
    /// still found, quickly.
    #[test]
    fn many_distinct_runs_stay_fast() {
        let base: Vec<String> = (0..30_000).map(|i| format!("l{i}.w")).collect();
        let ft: Vec<String> = (0..30_000)
            .map(|i| format!("bert.l{i}.w"))
            .chain((0..25_000).map(|i| format!("j{i}.k{i}.w")))
            .collect();
        let (b, f): (Vec<&str>, Vec<&str>) = (
            base.iter().map(String::as_str).collect(),
            ft.iter().map(String::as_str).collect(),
        );
        let start = std::time::Instant::now();
        assert_eq!(rewrite(&b, &f), some("bert.", ""));
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
    }

    /// Through `Plan::new`: each tensor's `base_name` and index entry, and a base tensor paired by name is not
    /// paired again.
    #[test]
    fn the_plan_pairs_through_the_rewrite() {
        use ultradelta_io::{write_checkpoint, DType, TensorInfo, WriterOptions};
        let dir = tempfile::tempdir().unwrap();
        let write = |path: &str, names: &[&str]| {
            let tensors: Vec<_> = names
                .iter()
                .map(|n| (TensorInfo::new(*n, DType::F32, vec![4]), vec![0u8; 16]))
                .collect();
            let p = write_checkpoint(dir.path().join(path), &tensors, WriterOptions::default())
                .unwrap();
            ultradelta_io::Checkpoint::open(p).unwrap()
        };
        let base = write("base", &["encoder.a", "encoder.b", "pooler.c"]);
        let ft = write(
            "ft",
            &[
                "encoder.a",
                "bert.encoder.a",
                "bert.encoder.b",
                "bert.pooler.c",
                "bert.head",
            ],
        );
        let plan = super::Plan::new(&base, &ft, &crate::CompressConfig::default()).unwrap();
        let mut got: Vec<(&str, &str, Option<String>)> = plan
            .tensors
            .iter()
            .map(|t| {
                (
                    t.info.name.as_str(),
                    t.base_name.as_str(),
                    t.entry().base_name,
                )
            })
            .collect();
        got.sort();
        let own = |n: &'static str| (n, n, None);
        let other = |n: &'static str, b: &'static str| (n, b, Some(b.to_owned()));
        assert_eq!(
            got,
            [
                own("bert.encoder.a"),
                other("bert.encoder.b", "encoder.b"),
                own("bert.head"),
                other("bert.pooler.c", "pooler.c"),
                own("encoder.a"),
            ]
        );
        let policy = |n: &str| {
            plan.tensors
                .iter()
                .find(|t| t.info.name == n)
                .unwrap()
                .policy
        };
        assert_eq!(policy("bert.encoder.a"), Policy::New);
        assert_ne!(policy("bert.encoder.b"), Policy::New);
        assert!(plan.base_only.is_empty());
    }
}
