//! Experiment files: which checkpoints, which evaluator, which grid (TOML; see docs/REPRODUCE.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One experiment file, as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Short name, used in the results folder's name.
    pub name: String,
    /// One line on what is measured.
    #[serde(default)]
    pub description: String,
    /// The base checkpoint folder (placeholders allowed).
    pub base: String,
    /// What to tell the user when a checkpoint is missing (say, the command that makes it).
    #[serde(default)]
    pub missing_hint: String,
    /// Extra arguments of every `ultradelta compress` (say, `["--family", "llama"]`).
    #[serde(default)]
    pub compress_args: Vec<String>,
    /// Free placeholders and their values (`{name}` in paths and evaluator arguments).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// The fine-tuned tasks.
    #[serde(rename = "task")]
    pub tasks: Vec<TaskSpec>,
    /// The full grid.
    pub grid: Grid,
    /// The `--quick` grid: any key given replaces the full grid's.
    #[serde(default)]
    pub quick: Option<QuickGrid>,
    /// Method variants beyond the built-in ones.
    #[serde(default, rename = "variant")]
    pub variants: Vec<Variant>,
    /// The testbed manifest whose checksum goes into the provenance, relative to `{testbed}` (default
    /// `testbed.json`).
    #[serde(default)]
    pub manifest: Option<String>,
    /// Text generations shown side by side in the report (an illustration, not a measurement).
    #[serde(default)]
    pub illustration: Option<Illustration>,
    /// How `--synthetic` runs this file without the real checkpoints: generated pairs with the family's real
    /// tensor names and shapes, and a weight-fidelity evaluator instead of the tasks' own.
    #[serde(default)]
    pub synthetic: Option<Synthetic>,
}

/// `[illustration]`: a command that prints continuations of a few prompts for a model folder, run on the base,
/// on the fine-tunes and on their rebuilt models at one grid point. Its JSON output must have
/// `continuations: [{prompt, continuation}, ...]` (as `ultradelta-eval generate` prints).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Illustration {
    /// The command (`{model}` is the folder); each prompt is appended as `--prompt TEXT`.
    pub command: Vec<String>,
    /// The prompts.
    pub prompts: Vec<String>,
    /// Whose rebuilt models are shown: this variant at its first point of the grid.
    pub variant: String,
    /// The tasks shown (default: every task).
    #[serde(default)]
    pub tasks: Vec<String>,
}

/// The `[synthetic]` table of an experiment file (see docs/REPRODUCE.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Synthetic {
    /// `cargo xtask synth`'s shape (`roberta-base`, `clip-vit-b32`, `beit3-base`, `t5-base`, ...).
    pub shape: String,
    /// Layers per stack (each with the real per-layer tensors); default: the real model's count.
    #[serde(default)]
    pub layers: Option<usize>,
    /// Delta std relative to the base RMS (default: the synth crate's 1e-3).
    #[serde(default)]
    pub rel_scale: Option<f64>,
    /// Evaluator run on every model in place of each task's (`{base}`, `{finetuned}`, `{model}` available).
    pub evaluator: Vec<String>,
    /// Its headline key.
    pub metric: String,
    /// Multiplier of the metric in the tables.
    #[serde(default = "one")]
    pub scale: f64,
}

/// One fine-tune and how to measure it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Column name in the report.
    pub name: String,
    /// The fine-tuned checkpoint folder.
    pub finetuned: String,
    /// The command run on each model to evaluate (`{model}` is its folder); it prints one JSON object.
    pub evaluator: Vec<String>,
    /// The key of that JSON object shown in the main table.
    pub metric: String,
    /// Multiplier of the metric in the tables (100 shows a fraction as a percentage).
    #[serde(default = "one")]
    pub scale: f64,
}

fn one() -> f64 {
    1.0
}

/// Which variants run at which ratios.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// Target real ratios (vs 16-bit, over the compressed tensors) of the budget variants.
    pub ratios: Vec<f64>,
    /// Variants run at every ratio with `--target-ratio`.
    pub budget: Vec<String>,
    /// Variants run once at their own ratio (no free parameter that reaches the grid's ratios).
    #[serde(default)]
    pub fixed: Vec<String>,
    /// The ablation ladder, run once each at s = 0.97 (their order is the table's).
    #[serde(default)]
    pub ablation: Vec<String>,
}

/// `--quick` overrides.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuickGrid {
    pub ratios: Option<Vec<f64>>,
    pub budget: Option<Vec<String>>,
    pub fixed: Option<Vec<String>>,
    pub ablation: Option<Vec<String>>,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

/// A named way of running `ultradelta compress`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    /// Row label in the report.
    pub label: String,
    /// Arguments added to `ultradelta compress`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Compress every task's fine-tune in one call (TNGR across them), as a user with several fine-tunes does.
    #[serde(default)]
    pub together: bool,
    /// Only these ratios when used as a budget variant (default: the grid's).
    #[serde(default)]
    pub ratios: Option<Vec<f64>>,
    /// Plotted as a line (budget variants) in the report's figure.
    #[serde(default)]
    pub plot: bool,
}

fn variant(name: &str, label: &str, args: &[&str], together: bool, plot: bool) -> Variant {
    Variant {
        name: name.into(),
        label: label.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        together,
        ratios: None,
        plot,
    }
}

/// The variants every experiment knows. The ablation ladder spells out the paper's setting so that it stays
/// the paper's whatever the CLI's defaults become.
pub fn builtin_variants() -> Vec<Variant> {
    const PAPER: [&str; 6] = ["--sparsity", "0.97", "--bits", "4", "--quant-fit", "range"];
    // The paper's codecs (Golomb positions, packed levels) and additive MSA, spelled out: the project's defaults
    // differ (seeded positions, rANS levels, relative tiers).
    // And the paper's tensor selection: the linear layers only (the project compresses the token embeddings too,
    // and drops BERT's position-embedding delta).
    const PAPER_CODECS: [&str; 8] = [
        "--positions",
        "golomb",
        "--values",
        "packed",
        "--embeddings",
        "keep",
        "--position-embeddings",
        "keep",
    ];
    fn ladder<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut v: Vec<&'a str> = PAPER.to_vec();
        v.extend_from_slice(&PAPER_CODECS);
        v.extend_from_slice(&["--rescale", "global"]);
        if !extra.contains(&"--no-msa") {
            v.extend_from_slice(&["--allocation", "msa"]);
        }
        v.extend_from_slice(extra);
        v
    }
    vec![
        variant(
            "ultradelta",
            "UltraDelta (project default)",
            &[],
            true,
            true,
        ),
        // `--preset paper` refuses `--target-ratio`; the same setting spelled out (sparsity comes from the budget).
        variant(
            "paper",
            "UltraDelta (paper's setting)",
            &[
                &[
                    "--bits",
                    "4",
                    "--quant-fit",
                    "range",
                    "--step",
                    "0.01",
                    "--rescale",
                    "global",
                    "--tngr",
                    "--allocation",
                    "msa",
                ][..],
                &PAPER_CODECS,
            ]
            .concat(),
            true,
            true,
        ),
        Variant {
            ratios: Some(vec![50.9, 132.5]),
            ..variant(
                "ud-entropy",
                "UltraDelta, Golomb positions + rANS-coded levels",
                &["--positions", "golomb", "--values", "entropy"],
                true,
                true,
            )
        },
        Variant {
            ratios: Some(vec![50.9, 132.5]),
            ..variant(
                "ud-golomb",
                "UltraDelta, Golomb positions + packed levels, additive MSA, embeddings kept, 4-bit range fit (the default before 2026-12-03)",
                &[
                    &PAPER_CODECS[..],
                    &["--allocation", "msa", "--bits", "4", "--quant-fit", "range"],
                ]
                .concat(),
                true,
                true,
            )
        },
        variant(
            "ud-lowrank",
            "UltraDelta + a low-rank part with 4-bit factors per matrix (--lowrank-part; BERT's default since 2026-12-05)",
            &["--lowrank-part"],
            true,
            true,
        ),
        variant(
            "ud-no-lowrank",
            "UltraDelta without the low-rank part (--no-lowrank-part; BERT's default before 2026-12-05)",
            &["--no-lowrank-part"],
            true,
            true,
        ),
        variant(
            "ud-no-rows",
            "UltraDelta coding every matrix whole (--no-row-subset; BERT's default before 2026-12-06)",
            &["--no-row-subset"],
            true,
            true,
        ),
        variant("dare", "DARE", &["--method", "dare"], false, true),
        variant(
            "magnitude",
            "Magnitude pruning",
            &["--method", "magnitude"],
            false,
            true,
        ),
        variant(
            "lowrank",
            "Low-rank (truncated SVD)",
            &["--method", "lowrank"],
            false,
            true,
        ),
        variant("compeft", "ComPEFT", &["--method", "compeft"], false, true),
        variant(
            "bitdelta",
            "BitDelta (data-free scale)",
            &["--method", "bitdelta"],
            false,
            false,
        ),
        variant(
            "quant-1bit",
            "Uniform quantization, 1 bit",
            &["--method", "quant", "--bits", "1"],
            false,
            false,
        ),
        variant(
            "abl-dare",
            "DARE 97% (fp16 values)",
            &["--method", "dare", "--sparsity", "0.97"],
            false,
            false,
        ),
        variant(
            "abl-dac",
            "+ DAC (4-bit levels, group-wise pruning)",
            &ladder(&["--no-msa", "--no-tngr"]),
            false,
            false,
        ),
        variant("abl-msa", "+ MSA", &ladder(&["--no-tngr"]), false, false),
        variant(
            "abl-tngr",
            "+ TNGR (the paper's UltraDelta)",
            &ladder(&["--tngr"]),
            true,
            false,
        ),
        variant(
            "abl-tngr-clamp",
            "TNGR with γ clamped to [0.5, 1] (paper's text)",
            &ladder(&["--tngr", "--gamma-clamp", "0.5,1"]),
            true,
            false,
        ),
        variant(
            "abl-per-tensor",
            "MSA + per-tensor rescale 1/(1−s_t), no TNGR",
            &[
                "--sparsity",
                "0.97",
                "--bits",
                "4",
                "--quant-fit",
                "range",
                "--positions",
                "golomb",
                "--values",
                "packed",
                "--allocation",
                "msa",
                "--rescale",
                "per-tensor",
                "--no-tngr",
            ],
            false,
            false,
        ),
        variant(
            "abl-drop-embeddings",
            "MSA + DAC, no TNGR, embedding deltas dropped (base values)",
            &ladder(&["--no-tngr", "--drop", "*embeddings*"]),
            false,
            false,
        ),
        variant(
            "emb-drop",
            "Project default, embedding deltas dropped",
            &["--drop", "*embeddings*"],
            false,
            false,
        ),
        variant(
            "emb-keep",
            "Project default, embedding deltas kept without loss (the default before 2026-12-03)",
            &["--embeddings", "keep"],
            false,
            false,
        ),
        variant(
            "pos-keep",
            "Project default, position-embedding delta kept without loss (the default before 2026-12-04)",
            &["--position-embeddings", "keep"],
            false,
            false,
        ),
        variant(
            "abl-no-quant",
            "MSA + DAC without quantization (fp16 values), no TNGR",
            &ladder(&["--no-quant", "--no-tngr"]),
            false,
            false,
        ),
    ]
}

/// An experiment with its placeholders resolved and the grid chosen.
#[derive(Debug, Clone, Serialize)]
pub struct Resolved {
    pub name: String,
    pub description: String,
    pub file: PathBuf,
    pub base: PathBuf,
    pub compress_args: Vec<String>,
    pub tasks: Vec<ResolvedTask>,
    pub ratios: Vec<f64>,
    pub budget: Vec<Variant>,
    pub fixed: Vec<Variant>,
    pub ablation: Vec<Variant>,
    pub vars: BTreeMap<String, String>,
    /// The testbed manifest (a file under `{testbed}`).
    pub manifest: String,
    /// The illustration, its command resolved except for `{model}`.
    pub illustration: Option<Illustration>,
    /// `--synthetic`: the generated shape (and layer count) the checkpoints are.
    pub synthetic: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResolvedTask {
    pub name: String,
    pub finetuned: PathBuf,
    /// Evaluator arguments; `{model}` still to be filled per model.
    pub evaluator: Vec<String>,
    pub metric: String,
    pub scale: f64,
}

/// Replaces every `{key}` of `vars` in `s`; an unknown `{...}` is an error naming the file and the text.
pub fn substitute(s: &str, vars: &BTreeMap<String, String>, file: &Path) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        let Some(j) = tail.find('}') else {
            bail!("{}: unclosed '{{' in {s:?}", file.display());
        };
        let key = &tail[..j];
        match vars.get(key) {
            Some(v) => out.push_str(v),
            None => bail!(
                "{}: unknown placeholder {{{key}}} in {s:?} (known: {})",
                file.display(),
                vars.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
        rest = &tail[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Placeholders filled per model at evaluation time (left as they are when resolving the file).
pub const LATE: [&str; 1] = ["model"];

/// Options that shape the resolution.
pub struct ResolveOptions<'a> {
    pub quick: bool,
    /// Built-in placeholders (`testbed`, `eval`, `ultradelta`, `cache`, `workspace`).
    pub builtins: BTreeMap<String, String>,
    /// `--var key=value` from the command line (win over the file).
    pub overrides: &'a [(String, String)],
    pub only_variants: &'a [String],
    pub only_ratios: &'a [f64],
    pub only_tasks: &'a [String],
    /// `--synthetic`: every task is measured by the file's `[synthetic]` evaluator.
    pub synthetic: bool,
}

pub fn load(path: &Path) -> Result<Experiment> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read experiment file {}", path.display()))?;
    let exp: Experiment = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            e.to_string().lines().collect::<Vec<_>>().join(" ")
        )
    })?;
    if exp.tasks.is_empty() {
        bail!("{}: no [[task]] given", path.display());
    }
    Ok(exp)
}

pub fn resolve(exp: &Experiment, file: &Path, o: &ResolveOptions<'_>) -> Result<Resolved> {
    let mut vars = o.builtins.clone();
    for (k, v) in &exp.vars {
        vars.insert(k.clone(), v.clone());
    }
    let quick = if o.quick {
        exp.quick.clone().unwrap_or_default()
    } else {
        QuickGrid::default()
    };
    for (k, v) in &quick.vars {
        vars.insert(k.clone(), v.clone());
    }
    for (k, v) in o.overrides {
        vars.insert(k.clone(), v.clone());
    }
    // Placeholder values may use built-ins ({testbed}/models/...), resolved once.
    let snapshot = vars.clone();
    for v in vars.values_mut() {
        *v = substitute(v, &snapshot, file)?;
    }
    let mut with_late = vars.clone();
    for k in LATE {
        with_late.insert(k.into(), format!("{{{k}}}"));
    }
    let path_of = |s: &str| -> Result<PathBuf> { Ok(PathBuf::from(substitute(s, &vars, file)?)) };

    let mut known = builtin_variants();
    for v in &exp.variants {
        if let Some(slot) = known.iter_mut().find(|k| k.name == v.name) {
            *slot = v.clone();
        } else {
            known.push(v.clone());
        }
    }
    let pick = |names: &[String], what: &str| -> Result<Vec<Variant>> {
        names
            .iter()
            .filter(|n| o.only_variants.is_empty() || o.only_variants.contains(n))
            .map(|n| {
                known
                    .iter()
                    .find(|k| &k.name == n)
                    .cloned()
                    .with_context(|| {
                        format!(
                            "{}: unknown variant {n:?} in grid.{what} (known: {})",
                            file.display(),
                            known
                                .iter()
                                .map(|k| k.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
            })
            .collect()
    };
    let ratios = quick
        .ratios
        .clone()
        .unwrap_or_else(|| exp.grid.ratios.clone());
    let ratios: Vec<f64> = ratios
        .into_iter()
        .filter(|r| o.only_ratios.is_empty() || o.only_ratios.iter().any(|x| (x - r).abs() < 1e-9))
        .collect();
    for r in &ratios {
        if !(r.is_finite() && *r > 1.0) {
            bail!("{}: ratio {r} is not a number above 1", file.display());
        }
    }
    for name in o.only_variants {
        if !known.iter().any(|k| &k.name == name) {
            bail!(
                "--methods: unknown variant {name:?} (known: {})",
                known
                    .iter()
                    .map(|k| k.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let budget = pick(quick.budget.as_ref().unwrap_or(&exp.grid.budget), "budget")?;
    let fixed = pick(quick.fixed.as_ref().unwrap_or(&exp.grid.fixed), "fixed")?;
    let ablation = pick(
        quick.ablation.as_ref().unwrap_or(&exp.grid.ablation),
        "ablation",
    )?;

    let synthetic = match (&exp.synthetic, o.synthetic) {
        (Some(s), true) => Some(s),
        (None, true) => bail!(
            "{}: --synthetic needs a [synthetic] table (shape, evaluator, metric)",
            file.display()
        ),
        (_, false) => None,
    };
    let base = path_of(&exp.base)?;
    let mut tasks = Vec::new();
    for t in &exp.tasks {
        if !(o.only_tasks.is_empty() || o.only_tasks.contains(&t.name)) {
            continue;
        }
        let (evaluator, metric, scale) = match synthetic {
            Some(s) => (&s.evaluator, &s.metric, s.scale),
            None => (&t.evaluator, &t.metric, t.scale),
        };
        if evaluator.is_empty() {
            bail!(
                "{}: task {}: empty evaluator command",
                file.display(),
                t.name
            );
        }
        if !evaluator.iter().any(|a| a.contains("{model}")) {
            bail!(
                "{}: task {}: the evaluator command never names {{model}}, the folder to evaluate",
                file.display(),
                t.name
            );
        }
        tasks.push(ResolvedTask {
            name: t.name.clone(),
            finetuned: path_of(&t.finetuned)?,
            evaluator: evaluator
                .iter()
                .map(|a| {
                    let mut v = with_late.clone();
                    v.insert("finetuned".into(), substitute(&t.finetuned, &vars, file)?);
                    v.insert("base".into(), base.display().to_string());
                    v.insert("task".into(), t.name.clone());
                    substitute(a, &v, file)
                })
                .collect::<Result<_>>()?,
            metric: metric.clone(),
            scale,
        });
    }
    for name in o.only_tasks {
        if !exp.tasks.iter().any(|t| &t.name == name) {
            bail!("--tasks: no task {name:?} in {}", file.display());
        }
    }
    if tasks.is_empty() {
        bail!("{}: no task left to run", file.display());
    }
    let illustration = match &exp.illustration {
        None => None,
        Some(il) => {
            if !il.command.iter().any(|a| a.contains("{model}")) {
                bail!(
                    "{}: illustration: the command never names {{model}}",
                    file.display()
                );
            }
            if let Some(t) = il
                .tasks
                .iter()
                .find(|t| !exp.tasks.iter().any(|x| &x.name == *t))
            {
                bail!("{}: illustration: no task {t:?}", file.display());
            }
            Some(Illustration {
                command: il
                    .command
                    .iter()
                    .map(|a| substitute(a, &with_late, file))
                    .collect::<Result<_>>()?,
                prompts: il.prompts.clone(),
                variant: il.variant.clone(),
                tasks: tasks
                    .iter()
                    .map(|t| t.name.clone())
                    .filter(|n| il.tasks.is_empty() || il.tasks.contains(n))
                    .collect(),
            })
        }
    };
    Ok(Resolved {
        name: exp.name.clone(),
        description: exp.description.clone(),
        file: file.to_path_buf(),
        base,
        compress_args: exp
            .compress_args
            .iter()
            .map(|a| substitute(a, &vars, file))
            .collect::<Result<_>>()?,
        tasks,
        ratios,
        budget,
        fixed,
        ablation,
        vars,
        manifest: exp
            .manifest
            .clone()
            .unwrap_or_else(|| "testbed.json".into()),
        illustration,
        synthetic: synthetic.map(|s| match s.layers {
            Some(n) => format!("{}, {n} layers per stack", s.shape),
            None => s.shape.clone(),
        }),
    })
}

/// Every checkpoint folder that does not exist, as one message per folder.
pub fn missing_checkpoints(r: &Resolved) -> Vec<String> {
    let mut out = Vec::new();
    if !r.base.is_dir() && !r.base.is_file() {
        out.push(format!(
            "base checkpoint {} does not exist",
            r.base.display()
        ));
    }
    for t in &r.tasks {
        if !t.finetuned.is_dir() && !t.finetuned.is_file() {
            out.push(format!(
                "task {}: fine-tuned checkpoint {} does not exist",
                t.name,
                t.finetuned.display()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        let mut v = BTreeMap::new();
        v.insert("a".to_string(), "x".to_string());
        let f = Path::new("e.toml");
        assert_eq!(substitute("{a}/b/{a}", &v, f).unwrap(), "x/b/x");
        assert_eq!(substitute("plain", &v, f).unwrap(), "plain");
        let e = substitute("{nope}", &v, f).unwrap_err().to_string();
        assert!(e.contains("e.toml") && e.contains("{nope}"), "{e}");
        assert!(substitute("{a", &v, f).is_err());
    }

    #[test]
    fn llama_experiment_resolves_its_illustration_and_manifest() {
        let root = crate::common::workspace_root();
        let f = root.join("xtask/experiments/llama.toml");
        let exp = load(&f).unwrap();
        let mut builtins = BTreeMap::new();
        for k in ["testbed", "eval", "ultradelta", "cache", "workspace"] {
            builtins.insert(k.to_string(), format!("/{k}"));
        }
        let opts = |only_tasks: &'static [String]| ResolveOptions {
            quick: true,
            builtins: builtins.clone(),
            overrides: &[],
            synthetic: false,
            only_variants: &[],
            only_ratios: &[],
            only_tasks,
        };
        let r = resolve(&exp, &f, &opts(&[])).unwrap();
        assert_eq!(r.manifest, "llama/testbed.json");
        assert_eq!(r.base, PathBuf::from("/testbed/llama/models/base"));
        let names: Vec<&str> = r.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["drunk", "childish", "zen", "scared"]);
        // The quick grid's vars reach the evaluator; TNGR runs across the four fine-tunes.
        let ev = r.tasks[0].evaluator.join(" ");
        assert!(
            ev.starts_with("/eval perplexity --testbed /testbed --task drunk --model {model}"),
            "{ev}"
        );
        assert!(ev.contains("--limit 8 --general-limit 2"), "{ev}");
        assert!(r
            .ablation
            .iter()
            .any(|v| v.name == "abl-tngr" && v.together));
        let il = r.illustration.as_ref().unwrap();
        assert_eq!(
            il.command[..2],
            ["/eval".to_string(), "generate".to_string()]
        );
        assert_eq!(il.tasks, ["drunk", "zen"]);
        // A task selection narrows the shown tasks too.
        static ZEN: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["zen".into()]);
        let r = resolve(&exp, &f, &opts(&ZEN)).unwrap();
        assert_eq!(r.illustration.unwrap().tasks, ["zen"]);
        // Other experiment files keep the default manifest and have no illustration.
        let t = root.join("xtask/experiments/testbed.toml");
        let r = resolve(&load(&t).unwrap(), &t, &opts(&[])).unwrap();
        assert_eq!(r.manifest, "testbed.json");
        assert!(r.illustration.is_none());
    }

    #[test]
    fn shipped_experiment_files_parse_and_resolve() {
        let root = crate::common::workspace_root();
        let mut files = vec![
            root.join("xtask/experiments/testbed.toml"),
            root.join("xtask/experiments/llama.toml"),
        ];
        for e in std::fs::read_dir(root.join("docs/experiments")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                files.push(p);
            }
        }
        assert!(files.len() >= 6, "{files:?}");
        let mut builtins = BTreeMap::new();
        for k in ["testbed", "eval", "ultradelta", "cache", "workspace"] {
            builtins.insert(k.to_string(), format!("/{k}"));
        }
        let mut synthetic_files = 0;
        for f in files {
            let exp = load(&f).unwrap();
            synthetic_files += usize::from(exp.synthetic.is_some());
            let modes: &[bool] = if exp.synthetic.is_some() {
                &[false, true]
            } else {
                &[false]
            };
            for (quick, synthetic) in [false, true]
                .into_iter()
                .flat_map(|q| modes.iter().map(move |&s| (q, s)))
            {
                let r = resolve(
                    &exp,
                    &f,
                    &ResolveOptions {
                        quick,
                        builtins: builtins.clone(),
                        overrides: &[],
                        only_variants: &[],
                        only_ratios: &[],
                        only_tasks: &[],
                        synthetic,
                    },
                )
                .unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
                if let (true, Some(spec)) = (synthetic, &exp.synthetic) {
                    assert!(
                        spec.shape.parse::<ultradelta_synth::Shape>().is_ok(),
                        "{}",
                        f.display()
                    );
                    for t in &r.tasks {
                        assert_eq!(t.metric, spec.metric);
                        assert!(t
                            .evaluator
                            .iter()
                            .all(|a| !a.contains("{base}") && !a.contains("{finetuned}")));
                        assert!(t
                            .evaluator
                            .iter()
                            .any(|a| a == &r.base.display().to_string()));
                    }
                }
                assert!(
                    !r.tasks.is_empty() && !r.ratios.is_empty(),
                    "{}",
                    f.display()
                );
                for t in &r.tasks {
                    assert!(t.evaluator.iter().any(|a| a.contains("{model}")));
                    assert!(!t.evaluator.iter().any(|a| a.contains("{testbed}")));
                }
            }
        }
        // RoBERTa, CLIP ViT-B/32, BEiT-3 and T5 run on synthetic pairs in CI.
        assert!(synthetic_files >= 4, "{synthetic_files}");
    }

    #[test]
    fn unknown_variant_is_named() {
        let root = crate::common::workspace_root();
        let f = root.join("xtask/experiments/testbed.toml");
        let mut exp = load(&f).unwrap();
        exp.grid.budget.push("nonesuch".into());
        let mut builtins = BTreeMap::new();
        for k in ["testbed", "eval", "ultradelta", "cache", "workspace"] {
            builtins.insert(k.to_string(), format!("/{k}"));
        }
        let e = resolve(
            &exp,
            &f,
            &ResolveOptions {
                quick: false,
                builtins,
                overrides: &[],
                only_variants: &[],
                only_ratios: &[],
                only_tasks: &[],
                synthetic: false,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nonesuch") && e.contains("testbed.toml"), "{e}");
    }
}
