//! docs/FORMAT.md and the code must agree: the tables of constants, record kinds and dtype codes are parsed from the
//! markdown and compared with the crate's constants.

use ultradelta_archive::{
    DType, RecordKind, FLAG_INDEX_ZSTD, FORMAT_VERSION, KNOWN_FLAGS, MAGIC, OLDEST_FORMAT_VERSION,
    PREAMBLE_LEN, TRAILER_LEN, TRAILER_LEN_V1, TRAILER_MAGIC,
};

// The payload layout constants of the spec's table, as the code's kind table gives them.
const SPARSE_FIXED_BYTES: usize = RecordKind::SparseGolomb.fixed_bytes();
const SPARSE_F16_FIXED_BYTES: usize = RecordKind::SparseF16.fixed_bytes();
const SPARSE_SIGN_FIXED_BYTES: usize = RecordKind::SparseSign.fixed_bytes();
const DENSE_SIGN_FIXED_BYTES: usize = RecordKind::DenseSign.fixed_bytes();
const LOWRANK_FIXED_BYTES: usize = RecordKind::LowrankF16.fixed_bytes();
const DENSE_LEVELS_FIXED_BYTES: usize = RecordKind::DenseLevels.fixed_bytes();
const SPARSE_RANS_FIXED_BYTES: usize = RecordKind::SparseGolombRans.fixed_bytes();
const SEEDED_FIXED_BYTES: usize = RecordKind::SparseSeeded.fixed_bytes();
const SEEDED_RANS_FIXED_BYTES: usize = RecordKind::SparseSeededRans.fixed_bytes();
const LOWRANK_SEEDED_RANS_FIXED_BYTES: usize = RecordKind::LowrankSeededRans.fixed_bytes();
const ROW_SUBSET_FIXED_BYTES: usize = RecordKind::RowSubset.fixed_bytes();
const APPENDED_ROWS_FIXED_BYTES: usize = RecordKind::AppendedRows.fixed_bytes();

/// The format specification. `FORMAT.md` in this crate is a link to the workspace's docs/FORMAT.md, so the
/// published package carries the spec (and this test) with it.
fn format_md() -> String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/FORMAT.md");
    std::fs::read_to_string(p).expect("FORMAT.md (docs/FORMAT.md) must exist")
}

/// Rows (cells trimmed, backticks removed) of the first table after the heading line `heading`.
fn table(md: &str, heading: &str) -> Vec<Vec<String>> {
    let mut lines = md.lines().skip_while(|l| l.trim() != heading);
    assert!(
        lines.next().is_some(),
        "heading {heading:?} not found in FORMAT.md"
    );
    let rows: Vec<Vec<String>> = lines
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect()
        })
        .collect();
    assert!(rows.len() > 2, "no table under {heading:?}");
    // Drop the header row and the |---| separator.
    rows.into_iter().skip(2).collect()
}

fn hex_bytes(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

fn parse_u64(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap(),
        None => s.parse().unwrap(),
    }
}

#[test]
fn constants_table_matches_code() {
    let md = format_md();
    let rows = table(&md, "## Constants");
    let get = |name: &str| -> String {
        rows.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("{name} missing from the constants table"))[1]
            .clone()
    };
    assert_eq!(hex_bytes(&get("MAGIC")), MAGIC);
    assert_eq!(hex_bytes(&get("TRAILER_MAGIC")), TRAILER_MAGIC);
    assert_eq!(parse_u64(&get("FORMAT_VERSION")), u64::from(FORMAT_VERSION));
    assert_eq!(parse_u64(&get("KNOWN_FLAGS")), u64::from(KNOWN_FLAGS));
    assert_eq!(
        parse_u64(&get("FLAG_INDEX_ZSTD")),
        u64::from(FLAG_INDEX_ZSTD)
    );
    assert_eq!(parse_u64(&get("PREAMBLE_LEN")), PREAMBLE_LEN);
    assert_eq!(parse_u64(&get("TRAILER_LEN")), TRAILER_LEN);
    assert_eq!(parse_u64(&get("TRAILER_LEN_V1")), TRAILER_LEN_V1);
    assert_eq!(
        parse_u64(&get("OLDEST_FORMAT_VERSION")),
        u64::from(OLDEST_FORMAT_VERSION)
    );
    assert_eq!(
        parse_u64(&get("SPARSE_FIXED_BYTES")),
        SPARSE_FIXED_BYTES as u64
    );
    for (name, v) in [
        ("SPARSE_F16_FIXED_BYTES", SPARSE_F16_FIXED_BYTES),
        ("SPARSE_SIGN_FIXED_BYTES", SPARSE_SIGN_FIXED_BYTES),
        ("DENSE_SIGN_FIXED_BYTES", DENSE_SIGN_FIXED_BYTES),
        ("LOWRANK_FIXED_BYTES", LOWRANK_FIXED_BYTES),
        ("DENSE_LEVELS_FIXED_BYTES", DENSE_LEVELS_FIXED_BYTES),
        ("SPARSE_RANS_FIXED_BYTES", SPARSE_RANS_FIXED_BYTES),
        ("SEEDED_FIXED_BYTES", SEEDED_FIXED_BYTES),
        ("SEEDED_RANS_FIXED_BYTES", SEEDED_RANS_FIXED_BYTES),
        (
            "LOWRANK_SEEDED_RANS_FIXED_BYTES",
            LOWRANK_SEEDED_RANS_FIXED_BYTES,
        ),
        ("ROW_SUBSET_FIXED_BYTES", ROW_SUBSET_FIXED_BYTES),
        ("APPENDED_ROWS_FIXED_BYTES", APPENDED_ROWS_FIXED_BYTES),
    ] {
        assert_eq!(parse_u64(&get(name)), v as u64, "{name}");
    }
    assert_eq!(
        rows.len(),
        21,
        "constants table has rows the test does not check"
    );
}

#[test]
fn record_kinds_table_matches_code() {
    let md = format_md();
    let rows = table(&md, "### Record kinds");
    assert_eq!(rows.len(), RecordKind::ALL.len());
    for r in &rows {
        let code: u8 = r[0].parse().unwrap();
        let kind = RecordKind::from_code(code)
            .unwrap_or_else(|| panic!("code {code} unknown to the code"));
        assert_eq!(kind.name(), r[1], "kind code {code}");
    }
}

#[test]
fn dtype_table_matches_code() {
    let md = format_md();
    let rows = table(&md, "### Dtype codes");
    assert_eq!(rows.len(), DType::ALL.len());
    for r in &rows {
        let code: u8 = r[0].parse().unwrap();
        let dtype = DType::from_code(code).unwrap_or_else(|| panic!("dtype code {code} unknown"));
        assert_eq!(dtype.code(), code);
        assert_eq!(dtype.name(), r[1]);
        assert_eq!(dtype.size().to_string(), r[2]);
    }
    assert!(DType::from_code(0).is_none());
    assert!(DType::from_code(11).is_none());
}

#[test]
fn preamble_and_trailer_tables_match_written_bytes() {
    let md = format_md();
    let pre = table(&md, "## Preamble (16 bytes)");
    let offsets: Vec<(u64, u64)> = pre
        .iter()
        .map(|r| (parse_u64(&r[0]), parse_u64(&r[1])))
        .collect();
    assert_eq!(offsets, [(0, 8), (8, 4), (12, 4)]);
    let tr = table(&md, "## Trailer (last 64 bytes)");
    let offsets: Vec<(u64, u64)> = tr
        .iter()
        .map(|r| (parse_u64(&r[0]), parse_u64(&r[1])))
        .collect();
    assert_eq!(offsets, [(0, 8), (8, 8), (16, 8), (24, 32), (56, 8)]);
    assert_eq!(offsets.iter().map(|o| o.1).sum::<u64>(), TRAILER_LEN);
    // The bytes of a real archive agree.
    let b = crate::common::sample_bytes();
    assert_eq!(b[..8], MAGIC);
    assert_eq!(b[8..12], FORMAT_VERSION.to_le_bytes());
    assert_eq!(b[12..16], FLAG_INDEX_ZSTD.to_le_bytes());
    let plain = std::fs::read(crate::common::write_sample_with(
        &tempfile::tempdir().unwrap().path().join("p.udelta"),
        false,
    ))
    .unwrap();
    assert_eq!(plain[12..16], [0, 0, 0, 0]);
    assert_eq!(b[b.len() - 8..], TRAILER_MAGIC);
}

#[test]
fn sparse_payload_table_matches_layout() {
    let md = format_md();
    let rows = table(&md, "### Kind 1: sparse-golomb payload");
    // Fixed fields: contiguous, sizes summing to SPARSE_FIXED_BYTES.
    let mut expect = 0u64;
    for r in rows.iter().take(9) {
        assert_eq!(parse_u64(&r[0]), expect, "field {}", r[2]);
        expect += parse_u64(&r[1]);
    }
    assert_eq!(expect, SPARSE_FIXED_BYTES as u64);
}

/// Sum of the fixed (numeric-size) rows of a payload table, checking that offsets are contiguous.
fn fixed_part(md: &str, heading: &str) -> u64 {
    let rows = table(md, heading);
    let mut expect = 0u64;
    for r in &rows {
        let Ok(size) = r[1].parse::<u64>() else { break };
        assert_eq!(parse_u64(&r[0]), expect, "{heading}: field {}", r[2]);
        expect += size;
    }
    expect
}

#[test]
fn baseline_payload_tables_match_layout() {
    let md = format_md();
    let f = |h: &str| fixed_part(&md, h);
    assert_eq!(
        f("### Kinds 5 and 6: sparse-f16 and sparse-sign payloads"),
        SPARSE_F16_FIXED_BYTES as u64
    );
    assert_eq!(SPARSE_F16_FIXED_BYTES, SPARSE_SIGN_FIXED_BYTES);
    assert_eq!(
        f("### Kind 7: dense-sign payload"),
        DENSE_SIGN_FIXED_BYTES as u64
    );
    assert_eq!(
        f("### Kind 8: lowrank-f16 payload"),
        LOWRANK_FIXED_BYTES as u64
    );
    assert_eq!(
        f("### Kind 9: dense-levels payload"),
        DENSE_LEVELS_FIXED_BYTES as u64
    );
}

#[test]
fn coded_payload_tables_match_layout() {
    let md = format_md();
    for (heading, fixed_rows, fixed) in [
        (
            "#### Kind 10: sparse-golomb-rans payload",
            5,
            SPARSE_RANS_FIXED_BYTES,
        ),
        ("#### Kind 11: sparse-seeded payload", 4, SEEDED_FIXED_BYTES),
        (
            "#### Kind 12: sparse-seeded-rans payload",
            4,
            SEEDED_RANS_FIXED_BYTES,
        ),
    ] {
        let rows = table(&md, heading);
        let mut expect = 0u64;
        for r in rows.iter().take(fixed_rows) {
            assert_eq!(parse_u64(&r[0]), expect, "{heading}: field {}", r[2]);
            expect += parse_u64(&r[1]);
        }
        assert_eq!(expect, fixed as u64, "{heading}");
    }
    // Kind 16: rank and factor bits, then the scales (8 per rank).
    let rows = table(&md, "### Kind 16: lowrank-seeded-rans payload");
    let mut expect = 0u64;
    for r in rows.iter().take(2) {
        assert_eq!(parse_u64(&r[0]), expect, "kind 16: field {}", r[2]);
        expect += parse_u64(&r[1]);
    }
    assert_eq!(expect, LOWRANK_SEEDED_RANS_FIXED_BYTES as u64);
    assert_eq!(rows[2][0], "5");
    assert_eq!(rows[2][1], "8·r");
    // The common prefix of the coded kinds is 21 bytes.
    let rows = table(&md, "### Kinds 10, 11, 12: coded sparse levels");
    assert_eq!(rows.len(), 3, "the kinds overview table");
}
