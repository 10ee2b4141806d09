//! Embeds texts with a BERT sentence encoder and prints the embeddings as JSON.
//!
//! ```text
//! cargo run --release -p ultradelta-eval --example embed -- <model-dir> [--raw] [--batch N] [--max-tokens N] < texts
//! ```
//!
//! Reads one text per line from standard input (empty lines are kept as empty texts), writes a JSON array of
//! embeddings to standard output, and the load time and throughput to standard error.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use ultradelta_eval::SentenceEncoder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let (mut raw, mut batch, mut max_tokens) = (false, None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--raw" => raw = true,
            "--batch" => {
                batch = Some(
                    args.next()
                        .ok_or("--batch needs a value")?
                        .parse::<usize>()?,
                )
            }
            "--max-tokens" => {
                max_tokens = Some(
                    args.next()
                        .ok_or("--max-tokens needs a value")?
                        .parse::<usize>()?,
                )
            }
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument {a:?}").into()),
        }
    }
    let dir = dir.ok_or("usage: embed <model-dir> [--raw] [--batch N] [--max-tokens N] < texts")?;

    let t = Instant::now();
    let mut enc = SentenceEncoder::load_dir(&dir)?;
    if let Some(b) = batch {
        enc = enc.with_batch_size(b)?;
    }
    if let Some(m) = max_tokens {
        enc = enc.with_max_tokens(m)?;
    }
    let load = t.elapsed().as_secs_f64();

    let lines: Vec<String> = std::io::stdin().lock().lines().collect::<Result<_, _>>()?;
    let texts: Vec<&str> = lines.iter().map(String::as_str).collect();
    let tokens: usize = texts
        .iter()
        .map(|t| enc.token_ids(t).map_or(0, |ids| ids.len()))
        .sum();
    let t = Instant::now();
    let out = enc.embed_with(&texts, !raw)?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "loaded in {load:.2} s; embedded {} texts ({tokens} tokens, batch {}, max {} tokens) in {secs:.2} s: \
         {:.1} texts/s, {:.0} tokens/s",
        texts.len(),
        enc.batch_size(),
        enc.max_tokens(),
        texts.len() as f64 / secs,
        tokens as f64 / secs
    );
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &out)?;
    writeln!(stdout)?;
    Ok(())
}
