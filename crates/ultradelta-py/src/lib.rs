//! Python bindings of UltraDelta: the native module `ultradelta._native` behind the `ultradelta` package.
//!
//! This crate owns the translation between Python and the facade crate `ultradelta`: keyword options to a
//! [`CompressConfig`] (spelled like the command line's flags, in snake_case), reports to JSON text (the same text
//! as the command line's `--json`), errors to one Python exception class per cause, and rebuilt tensors to
//! `bytearray`s that the Python layer views as numpy arrays or torch tensors without a copy. It must not know the
//! method or the file formats: every compression, rebuilding and check is the facade's, so an archive written from
//! Python is the command line's archive byte for byte, and a tensor loaded in memory is the one `apply` writes.
//! The GIL is released while the facade works. The Python layer (`python/ultradelta/__init__.py`) adds numpy,
//! `ml_dtypes` and torch conversions, the iterator form and the docstrings users read.

use std::path::{Path, PathBuf};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict, PyList, PyString, PyType};
use ultradelta::archive::{ArchiveReader, TensorEntry};
use ultradelta::io::Checkpoint;
use ultradelta::{
    AllocationMode, ApplyOptions, CodecChoice, CompressConfig, EmbeddingPolicy, EstimateConfig,
    Family, Method, NuclearNormMethod, PositionCodec, Preset, PruningMode, RescaleMode, Selection,
    TraceOn, ValueCodec,
};

mod watch;

/// The Python exception classes, defined in `ultradelta/_errors.py` (so that they can also derive from
/// `ValueError` and `OSError`).
const ERRORS_MODULE: &str = "ultradelta._errors";

/// The causes a Python caller tells apart, one exception class each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The archive is damaged or hostile (a checksum, a limit, a record's contents, an escaping file name).
    Corrupt,
    /// The archive is fine but was made for another base (or the base does not match the fine-tune).
    WrongBase,
    /// An option is unknown, of the wrong type, out of range, or contradicts another.
    InvalidOption,
    /// Reading or writing a file failed (missing, unreadable, not a checkpoint, output exists).
    Io,
}

impl Cause {
    fn class_name(self) -> &'static str {
        match self {
            Cause::Corrupt => "CorruptArchiveError",
            Cause::WrongBase => "WrongBaseError",
            Cause::InvalidOption => "InvalidOptionError",
            Cause::Io => "UltraDeltaIOError",
        }
    }
}

/// A Python exception of `cause`'s class carrying `message`.
fn py_err(cause: Cause, message: String) -> PyErr {
    Python::attach(|py| {
        let class = py
            .import(ERRORS_MODULE)
            .and_then(|m| m.getattr(cause.class_name()))
            .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
        match class {
            Ok(class) => PyErr::from_type(class, message),
            Err(e) => e,
        }
    })
}

/// Which cause a facade error is: [`ultradelta::verify_failure`]'s split (corrupt, wrong base, I/O), with the
/// configuration errors as invalid options.
fn cause_of(e: &ultradelta::Error) -> Cause {
    use ultradelta::{archive, io, Error, VerifyFailure};
    match e {
        Error::InvalidConfig { .. }
        | Error::Budget { .. }
        | Error::NoFinetuned
        | Error::NotCompressible { .. }
        | Error::Unsupported { .. }
        | Error::OutputIsInput { .. } => Cause::InvalidOption,
        Error::Mismatch(_) | Error::FinetunedTensor { .. } => Cause::WrongBase,
        Error::OutputExists { .. }
        | Error::Archive(archive::Error::OutputExists { .. })
        | Error::Io(io::Error::OutputExists { .. }) => Cause::Io,
        _ => match ultradelta::verify_failure(e) {
            VerifyFailure::Corrupt => Cause::Corrupt,
            VerifyFailure::WrongBase => Cause::WrongBase,
            VerifyFailure::Io => Cause::Io,
        },
    }
}

/// The error and its causes on one line, each cause once — the line the command line prints after `error: `.
fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cur = err.source();
    }
    line
}

/// The option behind a configuration error, spelled as the Python keyword (the command line names its flag).
fn option_hint(e: &ultradelta::Error) -> String {
    use ultradelta::{archive, io, Error};
    let option = match e {
        Error::InvalidConfig { field, .. } => option_of(field),
        Error::NotCompressible { .. } => Some("keep=, drop="),
        Error::OutputExists { .. }
        | Error::Archive(archive::Error::OutputExists { .. })
        | Error::Io(io::Error::OutputExists { .. }) => return "; force=True replaces it".into(),
        Error::BaseFile { .. } => {
            return " (compress with self_contained=True stores companion files whole)".into()
        }
        _ => None,
    };
    option.map(|o| format!(" (set by {o})")).unwrap_or_default()
}

/// The keyword option that sets configuration field `field`.
fn option_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "method" => "method=",
        "sparsity" => "sparsity=",
        "bits" => "bits=",
        "step" => "step=",
        "seed" => "seed=",
        "gamma" => "gamma=",
        "rescale_factor" => "rescale_factor=",
        "rescale" => "rescale=",
        "allocation" => "allocation=",
        "pruning" => "no_dac=",
        "tngr.enabled" => "tngr=",
        "tngr.trace_on" => "trace_on=",
        "tngr.clamp" => "gamma_clamp=",
        "tngr.nuclear_norm" => "nuclear_norm=",
        "selection.compress" => "compress=",
        "selection.keep" => "keep=",
        "selection.drop" => "drop=",
        "selection.family" => "family=",
        "selection.embeddings" => "embeddings=",
        "selection.position_embeddings" => "position_embeddings=",
        "quantize" => "no_quant=",
        "rank" => "rank=",
        "compeft_alpha" => "compeft_alpha=",
        "target_ratio" => "target_ratio=",
        "target_size" => "target_size=",
        "tier_spread" => "tier_spread=",
        "rd_power" => "rd_power=",
        "positions" => "positions=",
        "values" => "values=",
        "codec" => "codec=",
        "seed_trials" => "seed_trials=",
        "zstd_level" => "zstd_level=",
        "self_contained" => "self_contained=",
        "quant_fit" => "quant_fit=",
        "lowrank_part" => "lowrank_part=",
        "row_subset" => "row_subset=",
        _ => return None,
    })
}

/// A facade error as the Python exception of its cause, with the command line's one-line message.
fn to_py(e: ultradelta::Error) -> PyErr {
    let message = format!("{}{}", error_line(&e), option_hint(&e));
    py_err(cause_of(&e), message)
}

fn invalid(message: String) -> PyErr {
    py_err(Cause::InvalidOption, message)
}

/// The keyword options of `compress`, as the command line's flags in snake_case (`--no-msa` is `no_msa`,
/// `--compress GLOB` is `compress=[...]`).
const OPTIONS: &[&str] = &[
    "method",
    "preset",
    "rank",
    "compeft_alpha",
    "target_ratio",
    "target_size",
    "no_quant",
    "positions",
    "values",
    "codec",
    "seed_trials",
    "zstd_level",
    "self_contained",
    "quant_fit",
    "lowrank_part",
    "row_subset",
    "tngr",
    "no_tngr",
    "sparsity",
    "bits",
    "step",
    "seed",
    "gamma",
    "gamma_clamp",
    "trace_on",
    "nuclear_norm",
    "rescale_factor",
    "rescale",
    "no_msa",
    "allocation",
    "tier_spread",
    "rd_power",
    "no_dac",
    "compress",
    "keep",
    "drop",
    "family",
    "embeddings",
    "position_embeddings",
];

/// Options a preset sets itself (the command line refuses the flags with `--preset`).
const PRESET_CONFLICTS: &[&str] = &[
    "method",
    "positions",
    "values",
    "codec",
    "sparsity",
    "bits",
    "step",
    "rescale",
    "no_msa",
    "allocation",
    "tier_spread",
    "rd_power",
    "no_dac",
    "no_quant",
    "no_tngr",
    "tngr",
    "target_ratio",
    "target_size",
    "rescale_factor",
    "trace_on",
    "embeddings",
    "position_embeddings",
    "quant_fit",
    "lowrank_part",
    "row_subset",
];

/// Reads one keyword option's value as `T`, naming the option and the expected type when it is not one.
fn value<'py, T: FromPyObjectOwned<'py>>(
    name: &str,
    v: &Bound<'py, PyAny>,
    expected: &str,
) -> PyResult<T> {
    v.extract::<T>().map_err(|_| {
        let found = v
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        invalid(format!(
            "option {name}: expected {expected}, got {found} {}",
            v.repr().map(|r| r.to_string()).unwrap_or_default()
        ))
    })
}

/// A choice option (a string the configuration spells the same way, e.g. `per-tensor`).
fn choice<T: serde::de::DeserializeOwned>(
    name: &str,
    v: &Bound<'_, PyAny>,
    choices: &[&str],
) -> PyResult<T> {
    let s: String = value(name, v, "a string")?;
    if choices.contains(&s.as_str()) {
        if let Ok(t) = serde_json::from_value(serde_json::Value::String(s.clone())) {
            return Ok(t);
        }
    }
    Err(invalid(format!(
        "option {name}: \"{s}\" is not one of: {}",
        choices.join(", ")
    )))
}

/// A list-of-globs option: a string or a list of strings.
fn globs(name: &str, v: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(vec![s.to_string()]);
    }
    value(name, v, "a string or a list of strings")
}

/// The configuration the keyword `options` describe, checked exactly as the command line checks its flags.
fn config_from(options: Option<&Bound<'_, PyDict>>) -> PyResult<CompressConfig> {
    let mut given: Vec<(String, Bound<'_, PyAny>)> = Vec::new();
    if let Some(d) = options {
        for (k, v) in d.iter() {
            let k: String = k
                .extract()
                .map_err(|_| PyTypeError::new_err("option names are strings"))?;
            if !OPTIONS.contains(&k.as_str()) {
                return Err(invalid(format!(
                    "unknown option {k} (the options are: {})",
                    OPTIONS.join(", ")
                )));
            }
            // None means "not given", as an absent flag.
            if !v.is_none() {
                given.push((k, v));
            }
        }
    }
    let get = |name: &str| given.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let flag = |name: &str| -> PyResult<bool> {
        get(name).map_or(Ok(false), |v| value(name, v, "True or False"))
    };
    let preset: Option<Preset> = get("preset")
        .map(|v| choice("preset", v, &["paper"]))
        .transpose()?;
    if preset.is_some() {
        if let Some(c) = PRESET_CONFLICTS.iter().find(|c| get(c).is_some()) {
            return Err(invalid(format!(
                "option {c} cannot be combined with preset (the preset sets it)"
            )));
        }
    }
    if flag("tngr")? && flag("no_tngr")? {
        return Err(invalid(
            "options tngr and no_tngr contradict each other".into(),
        ));
    }
    let method: Method = match get("method") {
        Some(v) => {
            let s: String = value("method", v, "a string")?;
            Method::from_name(&s).ok_or_else(|| {
                let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
                invalid(format!(
                    "option method: \"{s}\" is not one of: {}",
                    names.join(", ")
                ))
            })?
        }
        None => Method::default(),
    };
    let nuclear_norm = match get("nuclear_norm") {
        Some(v) => match value::<String>("nuclear_norm", v, "a string")?.as_str() {
            "auto" => NuclearNormMethod::Auto,
            "exact" => NuclearNormMethod::Exact,
            "estimate" => NuclearNormMethod::Estimate(EstimateConfig::default()),
            other => {
                return Err(invalid(format!(
                    "option nuclear_norm: \"{other}\" is not one of: auto, exact, estimate"
                )))
            }
        },
        None => NuclearNormMethod::Auto,
    };
    let family: Option<Family> = match get("family") {
        Some(v) => Some(
            value::<String>("family", v, "a string")?
                .parse()
                .map_err(|e: String| invalid(format!("option family: {e}")))?,
        ),
        None => None,
    };
    let policy = |name: &str, default: EmbeddingPolicy| -> PyResult<EmbeddingPolicy> {
        match get(name) {
            Some(v) => value::<String>(name, v, "a string")?
                .parse()
                .map_err(|e: String| invalid(format!("option {name}: {e}"))),
            None => Ok(default),
        }
    };
    let defaults = Selection::default();
    let embeddings = policy("embeddings", defaults.embeddings)?;
    let position_embeddings = policy("position_embeddings", defaults.position_embeddings)?;
    let num = |name: &str, default: f64| -> PyResult<f64> {
        get(name).map_or(Ok(default), |v| value(name, v, "a number"))
    };
    let opt_num = |name: &str| -> PyResult<Option<f64>> {
        get(name).map(|v| value(name, v, "a number")).transpose()
    };
    let no_quant = flag("no_quant")?;
    let mut cfg = CompressConfig {
        method,
        sparsity: num("sparsity", 0.97)?,
        bits: get("bits")
            .map(|v| value("bits", v, "an integer 0-255"))
            .transpose()?,
        step: num("step", 0.01)?,
        seed: get("seed").map_or(Ok(0), |v| value("seed", v, "a non-negative integer"))?,
        gamma: opt_num("gamma")?,
        rescale_factor: num("rescale_factor", 1.0)?,
        rescale: get("rescale")
            .map(|v| choice("rescale", v, &["global", "per-tensor"]))
            .transpose()?
            .unwrap_or(RescaleMode::PerTensor),
        allocation: if flag("no_msa")? {
            if get("allocation").is_some() {
                return Err(invalid(
                    "options no_msa and allocation contradict each other".into(),
                ));
            }
            AllocationMode::Uniform
        } else {
            get("allocation")
                .map(|v| {
                    choice(
                        "allocation",
                        v,
                        &["msa", "msa-relative", "uniform", "rate-distortion"],
                    )
                })
                .transpose()?
                .unwrap_or(AllocationMode::MsaRelative)
        },
        tier_spread: num("tier_spread", ultradelta::DEFAULT_TIER_SPREAD)?,
        rd_power: num("rd_power", 1.0)?,
        pruning: if flag("no_dac")? {
            PruningMode::Random
        } else {
            PruningMode::Group
        },
        tngr: ultradelta::TngrConfig {
            trace_on: get("trace_on")
                .map(|v| choice("trace_on", v, &["compressed", "original"]))
                .transpose()?
                .unwrap_or(TraceOn::Compressed),
            clamp: get("gamma_clamp")
                .map(|v| value("gamma_clamp", v, "a pair of numbers (lo, hi)"))
                .transpose()?,
            enabled: flag("tngr")? && !flag("no_tngr")?,
            nuclear_norm,
        },
        selection: Selection {
            compress: get("compress").map_or(Ok(vec![]), |v| globs("compress", v))?,
            keep: get("keep").map_or(Ok(vec![]), |v| globs("keep", v))?,
            drop: get("drop").map_or(Ok(vec![]), |v| globs("drop", v))?,
            family,
            embeddings,
            position_embeddings,
        },
        quantize: !no_quant,
        rank: get("rank").map_or(Ok(8), |v| value("rank", v, "a non-negative integer"))?,
        compeft_alpha: opt_num("compeft_alpha")?,
        target_ratio: opt_num("target_ratio")?,
        target_size: get("target_size")
            .map(|v| value("target_size", v, "a whole number of bytes"))
            .transpose()?,
        // Filled in below, once the method and the ablations are known (as the command line does).
        positions: PositionCodec::Golomb,
        values: ValueCodec::Packed,
        codec: get("codec")
            .map(|v| choice("codec", v, &["fixed", "auto"]))
            .transpose()?
            .unwrap_or(CodecChoice::Fixed),
        seed_trials: get("seed_trials").map_or(Ok(ultradelta::DEFAULT_SEED_TRIALS), |v| {
            value("seed_trials", v, "a non-negative integer")
        })?,
        zstd_level: get("zstd_level").map_or(Ok(ultradelta::archive::DEFAULT_ZSTD_LEVEL), |v| {
            value("zstd_level", v, "an integer")
        })?,
        self_contained: flag("self_contained")?,
        quant_fit: get("quant_fit")
            .map(|v| choice("quant_fit", v, &["range", "mse", "mse-unbiased"]))
            .transpose()?,
        // Not given (or None): the model family's, resolved by `compress` (`Family::lowrank_part`).
        lowrank_part: get("lowrank_part")
            .map(|v| value("lowrank_part", v, "True or False"))
            .transpose()?,
        // Not given (or None): the model family's (`Family::row_subset`).
        row_subset: get("row_subset")
            .map(|v| value("row_subset", v, "True or False"))
            .transpose()?,
    };
    // The codecs' defaults are the project's (seeded positions, rANS levels) where they apply, else the paper's.
    let (positions, values) = cfg.default_codecs();
    cfg.positions = get("positions")
        .map(|v| choice("positions", v, &["golomb", "seeded"]))
        .transpose()?
        .unwrap_or(positions);
    cfg.values = get("values")
        .map(|v| choice("values", v, &["packed", "entropy"]))
        .transpose()?
        .unwrap_or(values);
    if cfg.target_ratio.is_some() && cfg.target_size.is_some() {
        return Err(invalid(
            "options target_ratio and target_size are two budgets: give one".into(),
        ));
    }
    if let Some(preset) = preset {
        cfg = preset.apply_to(cfg);
    }
    if cfg.tngr.clamp.is_some() && !cfg.tngr.enabled {
        return Err(invalid(
            "gamma_clamp clamps TNGR's γ: add tngr=True (TNGR is off by default)".into(),
        ));
    }
    if no_quant && cfg.method != Method::Ultradelta {
        return Err(invalid(
            "no_quant applies to method=\"ultradelta\" only".into(),
        ));
    }
    cfg.validate().map_err(to_py)?;
    Ok(cfg)
}

/// `value` (a JSON object) with the run's notes added, as JSON text.
fn with_notes(mut value: serde_json::Value, notes: Vec<String>) -> String {
    value["notes"] = serde_json::json!(notes);
    serde_json::to_string_pretty(&value).expect("reports serialise")
}

/// `compress(base, finetuned, output, force, options, progress)`: writes the archive; returns the command line's
/// `compress --json` object, with the run's notes, as JSON text.
#[pyfunction]
#[pyo3(signature = (base, finetuned, output, force=false, options=None, progress=None))]
fn compress(
    py: Python<'_>,
    base: PathBuf,
    finetuned: PathBuf,
    output: PathBuf,
    force: bool,
    options: Option<&Bound<'_, PyDict>>,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<String> {
    let cfg = config_from(options)?;
    let (v, notes) = watch::run(py, progress, move |w| {
        let base = ultradelta::open_checkpoint(&base, w)?;
        let ft = ultradelta::open_checkpoint(&finetuned, w)?;
        archive_json(&ultradelta::compress(&base, &ft, &cfg, &output, force, w)?)
    })?;
    Ok(with_notes(v, notes))
}

/// The `compress --json` object of one written archive.
fn archive_json(
    report: &ultradelta::CompressReport,
) -> Result<serde_json::Value, ultradelta::Error> {
    let ins = ultradelta::inspect(&ArchiveReader::open(&report.output)?);
    Ok(serde_json::json!({
        "report": report, "ratio": ins.ratio, "bytes": ins.bytes, "codec": ins.codec
    }))
}

/// `compress_many(base, finetuned, output_dir, force, options, progress)`: one archive per fine-tune in
/// `output_dir` (TNGR across them with `tngr`), as `compress --finetuned A B … --output-dir DIR`; returns JSON text
/// `{"archives": [the compress --json object of each], "notes": [...]}`.
#[pyfunction]
#[pyo3(signature = (base, finetuned, output_dir, force=false, options=None, progress=None))]
fn compress_many(
    py: Python<'_>,
    base: PathBuf,
    finetuned: Vec<PathBuf>,
    output_dir: PathBuf,
    force: bool,
    options: Option<&Bound<'_, PyDict>>,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<String> {
    let cfg = config_from(options)?;
    let (v, notes) = watch::run(py, progress, move |w| {
        let base = ultradelta::open_checkpoint(&base, w)?;
        let fts = finetuned
            .iter()
            .map(|p| ultradelta::open_checkpoint(p, w))
            .collect::<Result<Vec<_>, _>>()?;
        let reports = ultradelta::compress_many(&base, &fts, &cfg, &output_dir, force, w)?;
        let archives = reports
            .iter()
            .map(archive_json)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(serde_json::json!({ "archives": archives }))
    })?;
    Ok(with_notes(v, notes))
}

/// `export_lora(archive, output, force)`: a `lowrank` archive's factors as a PEFT LoRA adapter folder (as
/// `compress --lora-out`); returns the folder.
#[pyfunction]
#[pyo3(signature = (archive, output, force=false))]
fn export_lora(
    py: Python<'_>,
    archive: PathBuf,
    output: PathBuf,
    force: bool,
) -> PyResult<PathBuf> {
    py.detach(|| ultradelta::export_lora(&archive, &output, force))
        .map_err(to_py)
}

/// `evaluate(base, finetuned, archive, progress)`: per-tensor and overall fidelity of the rebuilt model to the
/// fine-tune, the command line's `eval --json` text, with the run's notes.
#[pyfunction]
#[pyo3(signature = (base, finetuned, archive, progress=None))]
fn evaluate(
    py: Python<'_>,
    base: PathBuf,
    finetuned: PathBuf,
    archive: PathBuf,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<String> {
    let (v, notes) = watch::run(py, progress, move |w| {
        let base = ultradelta::open_checkpoint(&base, w)?;
        let ft = ultradelta::open_checkpoint(&finetuned, w)?;
        let r = ultradelta::eval(&base, &ft, &archive, w)?;
        Ok(serde_json::to_value(&r).expect("reports serialise"))
    })?;
    Ok(with_notes(v, notes))
}

/// `apply(base, archive, output, force, max_shard_bytes, progress)`: writes the rebuilt folder; returns JSON text
/// with the output folder, what it holds and the run's notes.
#[pyfunction]
#[pyo3(signature = (base, archive, output, force=false, max_shard_bytes=None, progress=None))]
fn apply(
    py: Python<'_>,
    base: PathBuf,
    archive: PathBuf,
    output: PathBuf,
    force: bool,
    max_shard_bytes: Option<u64>,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<String> {
    let (v, notes) = watch::run(py, progress, move |w| {
        let base = ultradelta::open_checkpoint(&base, w)?;
        let mut opts = ApplyOptions {
            overwrite: force,
            ..ApplyOptions::default()
        };
        if let Some(m) = max_shard_bytes {
            opts.max_shard_bytes = m;
        }
        let out = ultradelta::apply(&base, &archive, &output, &opts, w)?;
        let reader = ArchiveReader::open(&archive)?;
        let m = reader.manifest();
        Ok(serde_json::json!({
            "output": out,
            "tensors": m.tensors.len(),
            "files": m.files.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        }))
    })?;
    Ok(with_notes(v, notes))
}

/// `inspect(archive)`: the command line's `inspect --json` text.
#[pyfunction]
fn inspect(py: Python<'_>, archive: PathBuf) -> PyResult<String> {
    py.detach(|| -> Result<String, ultradelta::Error> {
        let ins = ultradelta::inspect(&ArchiveReader::open(&archive)?);
        Ok(serde_json::to_string_pretty(&ins).expect("reports serialise"))
    })
    .map_err(to_py)
}

/// `verify(archive, base, progress)`: the command line's `verify --json` text (without the file's SHA-256, which
/// the Python layer adds with `hashlib`), with the run's notes.
#[pyfunction]
#[pyo3(signature = (archive, base=None, progress=None))]
fn verify(
    py: Python<'_>,
    archive: PathBuf,
    base: Option<PathBuf>,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<String> {
    let (v, notes) = watch::run(py, progress, move |w| {
        let ck = match &base {
            Some(b) => Some(ultradelta::open_checkpoint(b, w)?),
            None => None,
        };
        let report = ultradelta::verify(&archive, ck.as_ref(), w)?;
        Ok(serde_json::json!({
            "archive": archive, "ok": true, "report": report, "base": base,
        }))
    })?;
    Ok(with_notes(v, notes))
}

/// A base checkpoint and an archive, checked against each other, from which tensors are rebuilt in memory one at
/// a time (the Python layer's `load`, `iter_tensors` and `load_torch`).
#[pyclass(module = "ultradelta._native", frozen)]
struct Loader {
    base: Checkpoint,
    reader: ArchiveReader,
    archive: PathBuf,
    /// The base's files companion files were stored against, checked at open.
    base_files: std::collections::HashMap<String, PathBuf>,
}

impl Loader {
    fn entry(&self, name: &str) -> PyResult<&TensorEntry> {
        self.reader
            .manifest()
            .tensors
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| {
                pyo3::exceptions::PyKeyError::new_err(format!(
                    "{}: no tensor named \"{name}\" in the archive",
                    self.archive.display()
                ))
            })
    }
}

#[pymethods]
impl Loader {
    /// Opens both and checks them as `apply` does before it writes anything: the base's fingerprint, then every
    /// tensor entry's shape and dtype against the base, then the companion file names.
    #[new]
    fn new(py: Python<'_>, base: PathBuf, archive: PathBuf) -> PyResult<Self> {
        py.detach(|| -> Result<Loader, ultradelta::Error> {
            let base = Checkpoint::open(&base)?;
            let reader = ArchiveReader::open(&archive)?;
            ultradelta::check_base(&base, &reader, &archive)?;
            for e in &reader.manifest().tensors {
                ultradelta::check_entry_against_base(&base, &archive, e)?;
            }
            ultradelta::check_companion_names(&reader, &archive)?;
            let base_files = ultradelta::check_base_files(&base, &reader, &archive)?;
            Ok(Loader {
                base,
                reader,
                archive,
                base_files,
            })
        })
        .map_err(to_py)
    }

    /// Tensor names in the archive's (and the rebuilt checkpoint's) order.
    fn names(&self) -> Vec<String> {
        self.reader
            .manifest()
            .tensors
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    /// `(dtype name, shape, byte size)` of tensor `name`.
    fn info(&self, name: &str) -> PyResult<(String, Vec<usize>, usize)> {
        let e = self.entry(name)?;
        let info = ultradelta::io::TensorInfo::new(e.name.clone(), e.dtype, e.shape.clone());
        let n = info
            .checked_nbytes()
            .ok_or_else(|| to_py(overflow(&self.archive, name)))?;
        Ok((e.dtype.name().to_string(), e.shape.clone(), n))
    }

    /// The fine-tune's safetensors `__metadata__`, as `apply` writes it.
    fn metadata(&self) -> std::collections::BTreeMap<String, String> {
        self.reader.manifest().finetuned.metadata.clone()
    }

    /// Companion file names (`config.json`, `1_Pooling/config.json`, ...).
    fn files(&self) -> Vec<String> {
        self.reader
            .manifest()
            .files
            .iter()
            .map(|f| f.name.clone())
            .collect()
    }

    /// The bytes of companion file `name`.
    fn read_file<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyByteArray>> {
        let bytes = py
            .detach(|| ultradelta::read_companion(&self.reader, name, &self.base_files))
            .map_err(to_py)?;
        Ok(PyByteArray::new(py, &bytes))
    }

    /// Rebuilds tensor `name` (the bytes `apply` writes for it, little-endian, in its dtype) into a new
    /// `bytearray`, the only copy: the Python layer views it as an array without copying.
    fn read<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyByteArray>> {
        let entry = self.entry(name)?;
        let (_, _, n) = self.info(name)?;
        let mut failure: Option<ultradelta::Error> = None;
        let out = PyByteArray::new_with(py, n, |buf: &mut [u8]| {
            // The bytearray is not visible to any other Python code yet: filling it without the GIL is safe.
            let r = py.detach(|| {
                ultradelta::rebuild_tensor_into(
                    &self.base,
                    &self.reader,
                    &self.archive,
                    entry,
                    buf,
                    &mut Vec::new(),
                )
            });
            if let Err(e) = r {
                failure = Some(e);
            }
            Ok(())
        })?;
        // The base pages of this tensor are not needed again (as in apply).
        self.base.release(name);
        match failure {
            Some(e) => Err(to_py(e)),
            None => Ok(out),
        }
    }
}

fn overflow(archive: &Path, tensor: &str) -> ultradelta::Error {
    ultradelta::Error::Overflow {
        archive: archive.to_path_buf(),
        tensor: tensor.to_string(),
        what: "byte size",
    }
}

/// The native module: the Python package `ultradelta` wraps it.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(compress, m)?)?;
    m.add_function(wrap_pyfunction!(compress_many, m)?)?;
    m.add_function(wrap_pyfunction!(export_lora, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(apply, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_class::<Loader>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "COMPRESS_OPTIONS",
        PyList::new(m.py(), OPTIONS.iter().copied())?,
    )?;
    Ok(())
}
