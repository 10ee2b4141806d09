//! Repository checks that run with the tests (`cargo test -p xtask --test tidy`, part of `cargo xtask test`).
//!
//! They hold the written rules of ARCHITECTURE.md against the code, so that a boundary broken by a change fails
//! a test instead of surviving until someone reads the map again:
//!
//! - the crate dependency rules (the table under "Dependency rules" in ARCHITECTURE.md is the source of truth);
//! - every library crate's `lib.rs` opens with a `//!` paragraph;
//! - every published crate declares a `readme` that exists, and every crate uses the workspace lints;
//! - library string literals do not spell command-line flags (library text speaks configuration; the CLI maps
//!   its flags onto it);
//! - `unsafe` is allowed only in the modules listed here, and every such module documents its blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// `cargo metadata` of the workspace members (no dependency resolution).
fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cannot run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata printed invalid JSON")
}

struct Package {
    name: String,
    manifest: PathBuf,
    dir: PathBuf,
    /// Workspace crates this package depends on (normal and build dependencies; dev-dependencies are free).
    deps: BTreeSet<String>,
    lib: Option<PathBuf>,
    readme: Option<String>,
    publish: bool,
}

fn packages() -> Vec<Package> {
    let meta = metadata();
    let pkgs = meta["packages"].as_array().expect("packages");
    let names: BTreeSet<String> = pkgs
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    pkgs.iter()
        .map(|p| {
            let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap());
            let dir = manifest.parent().unwrap().to_path_buf();
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .map(|d| d["name"].as_str().unwrap().to_string())
                .filter(|n| names.contains(n))
                .collect();
            let lib = p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| {
                    t["kind"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k == "lib" || k == "rlib")
                })
                .map(|t| PathBuf::from(t["src_path"].as_str().unwrap()));
            // `publish = false` is an empty registry list.
            let publish = !matches!(p["publish"].as_array(), Some(a) if a.is_empty());
            Package {
                name: p["name"].as_str().unwrap().to_string(),
                manifest,
                dir,
                deps,
                lib,
                readme: p["readme"].as_str().map(str::to_string),
                publish,
            }
        })
        .collect()
}

/// The "Dependency rules" table of ARCHITECTURE.md: crate → the workspace crates it may depend on.
fn dependency_rules() -> BTreeMap<String, BTreeSet<String>> {
    let text = fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let section = text
        .split("\n## Dependency rules")
        .nth(1)
        .expect("ARCHITECTURE.md has a \"## Dependency rules\" section");
    let section = section.split("\n## ").next().unwrap();
    let crate_names = |cell: &str| -> BTreeSet<String> {
        cell.split(',')
            .map(|s| s.trim().trim_matches('`').trim())
            .filter(|s| !s.is_empty() && *s != "—" && *s != "-")
            .map(|s| s.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    let mut rules = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
        assert!(cells.len() >= 2, "malformed rule row: {line}");
        let name = cells[0].trim().trim_matches('`').to_string();
        rules.insert(name, crate_names(cells[1]));
    }
    assert!(
        !rules.is_empty(),
        "no rule rows in ARCHITECTURE.md's dependency rules"
    );
    rules
}

#[test]
fn dependencies_follow_architecture() {
    let rules = dependency_rules();
    let mut problems = Vec::new();
    for p in packages() {
        let Some(allowed) = rules.get(&p.name) else {
            problems.push(format!(
                "{} is not in ARCHITECTURE.md's dependency rules",
                p.name
            ));
            continue;
        };
        for d in p.deps.difference(allowed) {
            problems.push(format!(
                "{} depends on {d}, which ARCHITECTURE.md does not allow (allowed: {allowed:?})",
                p.name
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_library_opens_with_crate_docs() {
    let mut problems = Vec::new();
    for p in packages() {
        let Some(lib) = &p.lib else { continue };
        let text = fs::read_to_string(lib).unwrap();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            problems.push(format!(
                "{}: {} does not open with a `//!` paragraph (what the crate owns and must not know)",
                p.name,
                lib.display()
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn manifests_declare_readme_and_workspace_lints() {
    let mut problems = Vec::new();
    for p in packages() {
        if p.publish {
            match &p.readme {
                None => problems.push(format!("{}: no `readme` in its manifest", p.name)),
                Some(r) if !p.dir.join(r).is_file() => problems.push(format!(
                    "{}: readme {r} does not exist in {}",
                    p.name,
                    p.dir.display()
                )),
                Some(_) => {}
            }
        }
        let manifest: toml::Table = fs::read_to_string(&p.manifest)
            .unwrap()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", p.manifest.display()));
        let uses_workspace_lints = manifest
            .get("lints")
            .and_then(|l| l.get("workspace"))
            .and_then(|w| w.as_bool())
            == Some(true);
        if !uses_workspace_lints {
            problems.push(format!(
                "{}: its manifest lacks `[lints] workspace = true`",
                p.name
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Rust sources of a library crate that are not command-line front ends or tests.
fn library_sources(p: &Package) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if path.is_dir() {
                // src/bin holds binaries (their own command lines); tests are not library text.
                if name != "bin" && name != "tests" {
                    walk(&path, out);
                }
            } else if name.ends_with(".rs") && name != "tests.rs" && !name.ends_with("_tests.rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(lib) = &p.lib {
        walk(lib.parent().unwrap(), &mut out);
    }
    out.sort();
    out
}

/// String literals of one line of Rust (escapes skipped; raw strings and literals spanning lines are read as
/// ordinary ones, which is good enough to find a flag spelled in a message).
fn string_literals(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    let mut current: Option<String> = None;
    let mut prev = ' ';
    while let Some(c) = chars.next() {
        match (&mut current, c) {
            (None, '/') if chars.peek() == Some(&'/') => break, // a comment
            (None, '"') if prev != '\'' => current = Some(String::new()),
            (Some(s), '\\') => {
                if let Some(n) = chars.next() {
                    s.push('\\');
                    s.push(n);
                }
            }
            (Some(_), '"') => out.push(current.take().unwrap()),
            (Some(s), c) => s.push(c),
            (None, _) => {}
        }
        prev = c;
    }
    out
}

/// `--word` inside a literal: a flag's spelling.
fn spells_flag(literal: &str) -> bool {
    let b = literal.as_bytes();
    (0..b.len().saturating_sub(2)).any(|i| {
        b[i] == b'-'
            && b[i + 1] == b'-'
            && b[i + 2].is_ascii_lowercase()
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'-')
    })
}

#[test]
fn library_text_does_not_spell_flags() {
    // Binaries speak flags; libraries speak configuration.
    let front_ends = ["ultradelta-cli", "xtask"];
    let mut problems = Vec::new();
    for p in packages()
        .iter()
        .filter(|p| !front_ends.contains(&p.name.as_str()))
    {
        for file in library_sources(p) {
            let text = fs::read_to_string(&file).unwrap();
            for (i, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("#[cfg(test)]") {
                    break; // the unit tests at the end of a module
                }
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for lit in string_literals(line).iter().filter(|l| spells_flag(l)) {
                    problems.push(format!(
                        "{}:{}: library text names a command-line flag: \"{lit}\"",
                        file.strip_prefix(root()).unwrap_or(&file).display(),
                        i + 1
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The modules that may contain `unsafe` code, and why. Everything else inherits the workspace's
/// `unsafe_code = "deny"`; clippy's `undocumented_unsafe_blocks` (a workspace lint, denied in CI) makes every
/// block in these modules carry a `// SAFETY:` comment.
const UNSAFE_MODULES: [(&str, &str); 8] = [
    (
        "crates/ultradelta-qgp/src/lib.rs",
        "declares the two kernel modules below",
    ),
    (
        "crates/ultradelta-qgp/src/simd.rs",
        "AVX2 intrinsics behind run-time CPU checks",
    ),
    (
        "crates/ultradelta-qgp/src/fused.rs",
        "AVX2/AVX-512/BMI2 kernels behind run-time CPU checks",
    ),
    (
        "crates/ultradelta-io/src/checkpoint.rs",
        "memory-maps checkpoints and advises the kernel on their pages",
    ),
    (
        "crates/ultradelta-io/src/exchange.rs",
        "renameat2(RENAME_EXCHANGE) through libc: an output folder replaced atomically",
    ),
    (
        "crates/ultradelta-eval/src/encoder.rs",
        "candle's memory-mapped safetensors loader is an unsafe fn",
    ),
    (
        "xtask/src/bench.rs",
        "wait4 (a child's peak RSS) and sync through libc",
    ),
    (
        "crates/ultradelta-cli/src/interrupt.rs",
        "a SIGINT/SIGTERM handler: an atomic store, write(2) and signal(2) through libc",
    ),
];

#[test]
fn unsafe_code_stays_in_its_modules() {
    let allowed: BTreeSet<PathBuf> = UNSAFE_MODULES
        .iter()
        .map(|(path, _)| root().join(path))
        .collect();
    let mut problems = Vec::new();
    for p in packages() {
        let mut files = Vec::new();
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|x| x == "rs") {
                    out.push(path);
                }
            }
        }
        walk(&p.dir.join("src"), &mut files);
        for file in files {
            let text = fs::read_to_string(&file).unwrap();
            if text.contains("allow(unsafe_code)") && !allowed.contains(&file) {
                problems.push(format!(
                    "{}: allows unsafe code but is not in tidy's UNSAFE_MODULES",
                    file.strip_prefix(root()).unwrap_or(&file).display()
                ));
            }
        }
    }
    for (path, _) in UNSAFE_MODULES {
        assert!(
            root().join(path).is_file(),
            "UNSAFE_MODULES names a missing file {path}"
        );
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_checks_themselves_work() {
    assert_eq!(
        string_literals(r#"let a = "x --force y"; // "--no" "#),
        vec!["x --force y"]
    );
    assert_eq!(
        string_literals(r#"f("a\"b", '"', "c")"#),
        vec![r#"a\"b"#, "c"]
    );
    assert!(spells_flag("use --positions seeded"));
    assert!(spells_flag("--keep"));
    assert!(!spells_flag("a -- b"));
    assert!(!spells_flag("x---y"));
    assert!(!spells_flag("pre--fix"));
}
