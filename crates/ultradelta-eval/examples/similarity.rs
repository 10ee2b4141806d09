//! Cosine similarity of sentence pairs under several models, as JSON.
//!
//! ```text
//! cargo run --release -p ultradelta-eval --example similarity -- base=DIR finetuned=DIR ... < pairs.tsv
//! ```
//!
//! Reads one pair per line from standard input, the two sentences separated by a tab.
//! Prints `{"models": [labels...], "pairs": [{"a": .., "b": .., "cosine": {label: value}}]}`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use ultradelta_eval::{cosine, SentenceEncoder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut models: Vec<(String, PathBuf)> = Vec::new();
    for arg in std::env::args().skip(1) {
        let (label, dir) = arg
            .split_once('=')
            .ok_or_else(|| format!("expected LABEL=DIR, got {arg:?}"))?;
        models.push((label.to_string(), PathBuf::from(dir)));
    }
    if models.is_empty() {
        return Err("usage: similarity LABEL=DIR [LABEL=DIR ...] < pairs.tsv".into());
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let (a, b) = line
            .split_once('\t')
            .ok_or_else(|| format!("expected two tab-separated sentences: {line:?}"))?;
        pairs.push((a.to_string(), b.to_string()));
    }
    let texts: Vec<&str> = pairs
        .iter()
        .flat_map(|(a, b)| [a.as_str(), b.as_str()])
        .collect();
    let mut table = vec![serde_json::Map::new(); pairs.len()];
    for (label, dir) in &models {
        let enc = SentenceEncoder::load_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let emb = enc.embed(&texts)?;
        for (i, row) in table.iter_mut().enumerate() {
            let c = cosine(&emb[2 * i], &emb[2 * i + 1]);
            row.insert(label.clone(), serde_json::json!(c));
        }
    }
    let out = serde_json::json!({
        "models": models.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>(),
        "pairs": pairs.iter().zip(table).map(|((a, b), c)| serde_json::json!({"a": a, "b": b, "cosine": c})).collect::<Vec<_>>(),
    });
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &out)?;
    writeln!(stdout)?;
    Ok(())
}
