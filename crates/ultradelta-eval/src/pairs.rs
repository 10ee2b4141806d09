//! In-domain text pairs for the embedding fine-tunes (`data/indomain/*.tsv` of this crate).
//!
//! A pair file is tab-separated UTF-8: a header line `kind<TAB>left<TAB>right`, then one pair per line, for
//! example a piece of site-reliability jargon and its plain description, or a job title and a resume line.
//! `kind` groups the pairs (say `jargon`, `symptom`, `alert`); it is informative only. Blank lines and lines
//! starting with `#` are skipped. Every left text and every right text is unique (compared case-insensitively
//! with runs of whitespace collapsed), because a retrieval among the pairs is only well defined when no two
//! candidates are the same text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The header a pair file starts with.
pub const PAIRS_HEADER: &str = "kind\tleft\tright";

/// One in-domain pair: two texts a good embedding of the domain should put close together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPair {
    /// Group of the pair (`jargon`, `symptom`, `alert`, a job family …).
    pub kind: String,
    /// The query side (a term, a symptom, an alert, a job title).
    pub left: String,
    /// The side to retrieve (a description, a cause, a runbook action, a resume line).
    pub right: String,
}

/// The folder of the committed in-domain pair files (`crates/ultradelta-eval/data/indomain`).
pub fn indomain_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join("indomain")
}

/// Lower-cased text with runs of whitespace collapsed to one space: the key duplicates are found by.
fn normalized(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Parses a pair file's contents; `path` only names the file in errors.
pub fn parse_pairs(text: &str, path: &Path) -> Result<Vec<TextPair>> {
    let bad = |line: usize, reason: String| Error::Task {
        path: path.to_path_buf(),
        reason: format!("line {line}: {reason}"),
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    match lines.next() {
        Some((_, h)) if h == PAIRS_HEADER => {}
        Some((n, h)) => {
            return Err(bad(
                n,
                format!("header {h:?}, expected {PAIRS_HEADER:?} (tab-separated)"),
            ))
        }
        None => {
            return Err(Error::Task {
                path: path.to_path_buf(),
                reason: "no header and no pairs".into(),
            })
        }
    }
    let mut out = Vec::new();
    let mut seen_left: HashMap<String, usize> = HashMap::new();
    let mut seen_right: HashMap<String, usize> = HashMap::new();
    for (n, line) in lines {
        let fields: Vec<&str> = line.split('\t').collect();
        let [kind, left, right] = fields[..] else {
            return Err(bad(
                n,
                format!("{} tab-separated fields, expected 3", fields.len()),
            ));
        };
        let (kind, left, right) = (kind.trim(), left.trim(), right.trim());
        if kind.is_empty() || left.is_empty() || right.is_empty() {
            return Err(bad(n, "an empty field".into()));
        }
        for (text, seen, side) in [
            (left, &mut seen_left, "left"),
            (right, &mut seen_right, "right"),
        ] {
            if let Some(first) = seen.insert(normalized(text), n) {
                return Err(bad(n, format!("{side} text {text:?} repeats line {first}")));
            }
        }
        out.push(TextPair {
            kind: kind.to_string(),
            left: left.to_string(),
            right: right.to_string(),
        });
    }
    if out.is_empty() {
        return Err(Error::Task {
            path: path.to_path_buf(),
            reason: "no pairs".into(),
        });
    }
    Ok(out)
}

/// Reads and checks a pair file (see the module documentation for the format).
pub fn read_pairs(path: &Path) -> Result<Vec<TextPair>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        op: "read",
        source,
    })?;
    parse_pairs(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn parse(text: &str) -> Result<Vec<TextPair>> {
        parse_pairs(text, Path::new("t.tsv"))
    }

    #[test]
    fn parses_and_skips_comments() {
        let p = parse("# a comment\nkind\tleft\tright\n\na\tx y\tz\r\nb\tu\t v \n").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[1],
            TextPair {
                kind: "b".into(),
                left: "u".into(),
                right: "v".into()
            }
        );
    }

    #[test]
    fn rejects_bad_files() {
        let err = |t: &str| parse(t).unwrap_err().to_string();
        assert!(err("left\tright\nx\ty\n").contains("header"));
        assert!(err("kind\tleft\tright\na\tb\n").contains("line 2: 2 tab-separated fields"));
        assert!(err("kind\tleft\tright\na\t \tc\n").contains("empty field"));
        assert!(err("kind\tleft\tright\na\tX  y\tc\na\tx Y\td\n").contains("repeats line 2"));
        assert!(err("kind\tleft\tright\na\tx\tc\na\ty\tC\n").contains("right text"));
        assert!(err("kind\tleft\tright\n").contains("no pairs"));
        assert!(err("").contains("no header"));
    }

    /// Lower-cased words of at least three letters or digits.
    fn words(text: &str) -> BTreeSet<String> {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() >= 3)
            .map(str::to_lowercase)
            .collect()
    }

    /// The committed sets: they parse, hold at least 60 pairs each, have no near-duplicate texts (no two texts
    /// of a side share more than 60% of their words) and are not trivially solved by word overlap alone.
    #[test]
    fn committed_sets() {
        for name in ["sre", "jobs"] {
            let path = indomain_data_dir().join(format!("{name}.tsv"));
            let pairs = read_pairs(&path).unwrap();
            assert!(pairs.len() >= 60, "{name}: {} pairs", pairs.len());
            for side in [0, 1] {
                let texts: Vec<&str> = pairs
                    .iter()
                    .map(|p| if side == 0 { &p.left } else { &p.right }.as_str())
                    .collect();
                let sets: Vec<BTreeSet<String>> = texts.iter().map(|t| words(t)).collect();
                for i in 0..sets.len() {
                    for j in i + 1..sets.len() {
                        let inter = sets[i].intersection(&sets[j]).count();
                        let union = sets[i].union(&sets[j]).count().max(1);
                        assert!(
                            inter * 10 <= union * 6,
                            "{name}: near-duplicates {:?} and {:?}",
                            texts[i],
                            texts[j]
                        );
                    }
                }
            }
            // Mixed difficulty: a good share of the pairs share no word at all, so matching needs meaning.
            let disjoint = pairs
                .iter()
                .filter(|p| words(&p.left).is_disjoint(&words(&p.right)))
                .count();
            assert!(
                disjoint * 3 >= pairs.len(),
                "{name}: only {disjoint} of {} pairs share no word",
                pairs.len()
            );
        }
    }
}
