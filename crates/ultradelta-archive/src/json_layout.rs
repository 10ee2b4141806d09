//! The whitespace layout of a JSON file, and re-laying a file out in another (docs/FORMAT.md, "Kind 14").
//!
//! A fine-tune's `tokenizer.json` is often the base's with a different layout: the base's written compact, the
//! fine-tune's pretty-printed by a later save (MiniLM's: 466 KB compact, 712 KB indented by two spaces, the same
//! vocabulary). zstd with the base's bytes as dictionary then finds only short matches (158 KB); with the base's
//! bytes re-laid out like the fine-tune's, a few hundred bytes. [`relayout`] is that transform: defined on any bytes
//! (it never parses numbers or validates, so it cannot fail or disagree with another implementation on what a
//! value is), it only moves whitespace outside strings.

/// Bytes of indentation per nesting level the layout may have (a layout of `0` is compact).
pub const MAX_INDENT: u8 = 16;

/// The layout of `bytes` when it looks like a JSON document (its first non-whitespace byte `{` or `[`): `0` when
/// no line break stands outside a string (compact), else the number of spaces that begin the line after the first
/// such break, if between 1 and [`MAX_INDENT`]. `None` for anything else.
pub fn detect_indent(bytes: &[u8]) -> Option<u8> {
    let first = bytes.iter().find(|b| !is_space(**b))?;
    if !matches!(first, b'{' | b'[') {
        return None;
    }
    let mut strings = Strings::default();
    for (i, &b) in bytes.iter().enumerate() {
        if strings.inside(b) {
            continue;
        }
        if b == b'\n' {
            let spaces = bytes[i + 1..].iter().take_while(|&&c| c == b' ').count();
            return u8::try_from(spaces)
                .ok()
                .filter(|&n| (1..=MAX_INDENT).contains(&n));
        }
    }
    Some(0)
}

/// Where a left-to-right scan stands with respect to strings: a string runs from a `"` outside a string to the
/// next `"` not escaped by a `\`.
#[derive(Default)]
struct Strings {
    inside: bool,
    escaped: bool,
}

impl Strings {
    /// Whether `b`, the next byte, belongs to a string (its quotes included).
    fn inside(&mut self, b: u8) -> bool {
        if self.inside {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.inside = false;
            }
            true
        } else {
            self.inside = b == b'"';
            self.inside
        }
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// `bytes` re-laid out with `indent` spaces per nesting level (0: compact), or `None` as soon as the output would
/// pass `max_len` bytes. Outside strings (a string runs from a `"` to the next `"` not escaped by a `\`),
/// whitespace is dropped and line breaks are written as serde_json's and Python's `json.dumps(indent=n)` pretty
/// printers write them: after `{`, `[` and `,`, and before `}` and `]`, a line break and `indent × depth` spaces,
/// but nothing between a bracket and its closer (`{}`, `[]`); a space after `:`. With `indent` 0 nothing is
/// added. Every other byte is copied as it is; a closer at depth 0 leaves the depth at 0.
pub fn relayout(bytes: &[u8], indent: u8, max_len: u64) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(
        bytes
            .len()
            .min(usize::try_from(max_len).unwrap_or(usize::MAX)),
    );
    let pretty = indent > 0;
    let mut depth = 0usize;
    // A line break is owed after an opening bracket, unless the next token closes it.
    let mut owed = false;
    let mut strings = Strings::default();
    let over = |out: &Vec<u8>| out.len() as u64 > max_len;
    let line = |out: &mut Vec<u8>, depth: usize| {
        if pretty {
            out.push(b'\n');
            let n = depth.saturating_mul(usize::from(indent));
            // The caller checks the length after each byte; a deep nesting must not allocate past it first.
            let room = usize::try_from(max_len)
                .unwrap_or(usize::MAX)
                .saturating_sub(out.len())
                .saturating_add(1);
            out.resize(out.len() + n.min(room), b' ');
        }
    };
    for &b in bytes {
        let opens = b == b'"' && !strings.inside;
        if strings.inside(b) && !opens {
            out.push(b);
        } else if is_space(b) {
            continue;
        } else if matches!(b, b'}' | b']') {
            if !std::mem::take(&mut owed) {
                line(&mut out, depth.saturating_sub(1));
            }
            depth = depth.saturating_sub(1);
            out.push(b);
        } else {
            if std::mem::take(&mut owed) {
                line(&mut out, depth);
            }
            out.push(b);
            match b {
                b'{' | b'[' => {
                    depth += 1;
                    owed = true;
                }
                b',' => line(&mut out, depth),
                b':' if pretty => out.push(b' '),
                _ => {}
            }
        }
        if over(&out) {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: Option<Vec<u8>>) -> String {
        String::from_utf8(b.unwrap()).unwrap()
    }

    #[test]
    fn pretty_and_compact_layouts_match_the_common_printers() {
        let compact = br#"{"a":[1,2,{}],"b":{"c":"x, y: {z}","d":[]},"e":"q\"]"}"#;
        // What serde_json's to_string_pretty and Python's json.dumps(indent=2) print for this document.
        let pretty = "{\n  \"a\": [\n    1,\n    2,\n    {}\n  ],\n  \"b\": {\n    \"c\": \"x, y: {z}\",\n    \
                      \"d\": []\n  },\n  \"e\": \"q\\\"]\"\n}";
        assert_eq!(s(relayout(compact, 2, 1 << 20)), pretty);
        assert_eq!(
            s(relayout(pretty.as_bytes(), 0, 1 << 20)).as_bytes(),
            compact
        );
        let v: serde_json::Value = serde_json::from_slice(compact).unwrap();
        let mut ser = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        serde::Serialize::serialize(
            &v,
            &mut serde_json::Serializer::with_formatter(&mut ser, fmt),
        )
        .unwrap();
        // serde_json sorts keys without `preserve_order`; the document's keys are already sorted.
        assert_eq!(relayout(compact, 4, 1 << 20).unwrap(), ser);
        assert_eq!(detect_indent(pretty.as_bytes()), Some(2));
        assert_eq!(detect_indent(&ser), Some(4));
        assert_eq!(detect_indent(compact), Some(0));
        assert_eq!(
            detect_indent(b"  [\"a\nb\"]"),
            Some(0),
            "a line break inside a string"
        );
        assert_eq!(detect_indent(b"hello"), None);
        assert_eq!(detect_indent(b""), None);
        assert_eq!(detect_indent(b"{\n\t\"a\": 1}"), None, "tabs");
    }

    #[test]
    fn any_bytes_relayout_within_the_bound_or_not_at_all() {
        // Unbalanced closers, an unterminated string, deep nesting: defined, bounded, no panic.
        assert_eq!(s(relayout(b"]]}{", 2, 100)), "\n]\n]\n}{");
        assert_eq!(s(relayout(b"[\"abc", 2, 100)), "[\n  \"abc");
        let deep = vec![b'['; 10_000];
        assert!(relayout(&deep, 16, 1 << 16).is_none());
        let out = relayout(&deep, 0, 1 << 16).unwrap();
        assert_eq!(out, deep);
        let doc = br#"{"a": [1, 2], "b": {}}"#;
        let full = relayout(doc, 3, u64::MAX).unwrap().len() as u64;
        for max in 0..full + 3 {
            match relayout(doc, 3, max) {
                Some(v) => assert_eq!(v.len() as u64, full, "max {max}"),
                None => assert!(max < full, "max {max}"),
            }
            assert_eq!(relayout(doc, 3, max).is_some(), max >= full);
        }
    }
}
