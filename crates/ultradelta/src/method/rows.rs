//! Row subsets (`--row-subset`, record kind `row-subset`): a matrix whose delta moved only some of its rows is coded
//! as the list of those rows and the record of those rows alone.
//!
//! A token-embedding table is looked up, not multiplied: fine-tuning moves the rows of the tokens it saw and leaves
//! the rest to weight decay (on the MiniLM testbed's four fine-tunes 0.6–40 % of the 30,522 rows hold 99.1–99.99 %
//! of the word-embedding delta's energy, the others' norms a decade lower). A seeded sample of the whole table
//! spends most of its entries on unmoved rows and, rescaled, adds to every token's embedding noise larger than
//! what moved; coded alone at the same rate, the moved rows take a fraction of the bytes, and the unmoved rows keep
//! the base's values (docs/results/2026-12-06-row-subset).

use ultradelta_archive::{Record, RowSubsetRecord};

use super::CompressedTensor;

/// A row moved when its delta's norm exceeds this many times the median row's.
const MOVED_OVER_MEDIAN: f64 = 4.0;

/// At most this share of the rows may be listed (past it, a row list saves little and the median is a moved row).
const MAX_LISTED_SHARE: f64 = 0.5;

/// The rows left out may hold at most this share of the delta's energy (on the testbed: 0.01–0.94 %).
const MAX_LEFT_OUT_ENERGY: f64 = 0.02;

/// The rows of a `rows × cols` delta that moved, when they split cleanly from the rest: every row whose squared
/// norm exceeds `MOVED_OVER_MEDIAN²` times the median row's (any non-zero row when the median row is zero), if
/// they are at least one, at most half the rows, and the rows left out hold at most 2 % of the delta's energy.
/// `None` otherwise (the matrix is coded whole). From Δ alone; sums in f64, row by row in order, so the same
/// rows whatever the thread count.
pub(crate) fn moved_rows(delta: &[f32], rows: usize, cols: usize) -> Option<Vec<u64>> {
    if rows < 2 || cols == 0 || delta.len() != rows * cols {
        return None;
    }
    let energy: Vec<f64> = delta
        .chunks_exact(cols)
        .map(|row| row.iter().map(|&x| f64::from(x) * f64::from(x)).sum())
        .collect();
    let total: f64 = energy.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        return None;
    }
    let mut sorted = energy.clone();
    let (_, &mut median, _) = sorted.select_nth_unstable_by(rows / 2, f64::total_cmp);
    let floor = median * MOVED_OVER_MEDIAN * MOVED_OVER_MEDIAN;
    let listed: Vec<u64> = (0..rows as u64)
        .filter(|&r| energy[r as usize] > floor)
        .collect();
    let left_out: f64 = energy.iter().filter(|&&e| e <= floor).sum();
    let fits = !listed.is_empty()
        && listed.len() as f64 <= MAX_LISTED_SHARE * rows as f64
        && left_out <= MAX_LEFT_OUT_ENERGY * total;
    fits.then_some(listed)
}

/// The rows `listed` of a row-major matrix of `cols` columns, gathered in order.
pub(crate) fn gather(delta: &[f32], cols: usize, listed: &[u64]) -> Vec<f32> {
    let mut out = Vec::with_capacity(listed.len() * cols);
    for &r in listed {
        let start = r as usize * cols;
        out.extend_from_slice(&delta[start..start + cols]);
    }
    out
}

/// `inner` (the listed rows' record) as a `row-subset` record of a `rows × cols` matrix, its codec report kept.
/// Only a seeded record (with or without a low-rank part) can be nested; anything else cannot come from the
/// configurations that allow row subsets, and is returned unwrapped.
pub(crate) fn with_rows(
    inner: CompressedTensor,
    (rows, cols): (usize, usize),
    listed: Vec<u64>,
) -> CompressedTensor {
    let CompressedTensor { record, codec } = inner;
    match record {
        record @ (Record::Coded(_) | Record::LowRankSparse(_)) => CompressedTensor {
            record: Record::RowSubset(RowSubsetRecord {
                rows: rows as u64,
                cols: cols as u64,
                listed,
                inner: Box::new(record),
            }),
            codec,
        },
        record => CompressedTensor { record, codec },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CompressConfig;

    /// 20 rows of 8: rows 3 and 11 moved (norm ~1), the rest weight-decay-sized (norm ~0.01).
    fn table() -> Vec<f32> {
        (0..20 * 8)
            .map(|i| {
                let (r, c) = (i / 8, i % 8);
                let x = ((i * 37 % 11) as f32 - 5.0) / 5.0;
                if r == 3 || r == 11 {
                    0.4 * x + 0.1 * c as f32
                } else {
                    0.004 * x
                }
            })
            .collect()
    }

    #[test]
    fn the_moved_rows_of_an_embedding_like_delta_are_listed() {
        let d = table();
        assert_eq!(moved_rows(&d, 20, 8), Some(vec![3, 11]));
        let g = gather(&d, 8, &[3, 11]);
        assert_eq!(&g[..8], &d[24..32]);
        assert_eq!(&g[8..], &d[88..96]);
    }

    #[test]
    fn a_delta_without_a_clean_split_is_coded_whole() {
        // Every row alike: nothing stands above the median.
        let dense: Vec<f32> = (0..20 * 8)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 50.0)
            .collect();
        assert_eq!(moved_rows(&dense, 20, 8), None);
        // A few rows stand out, but the others moved too (a tied embedding, every row read by the output): the rows
        // under the floor hold 17 of 92 parts of the energy.
        let tied: Vec<f32> = (0..20 * 8)
            .map(|i| if [2, 9, 15].contains(&(i / 8)) { 5.0 } else { 1.0 } / 8f32.sqrt())
            .collect();
        assert_eq!(moved_rows(&tied, 20, 8), None);
        let floor_ok: Vec<f32> = tied
            .iter()
            .map(|&x| if x > 1.0 { x } else { x * 0.01 })
            .collect();
        assert_eq!(moved_rows(&floor_ok, 20, 8), Some(vec![2, 9, 15]));
        // More than half the rows moved.
        let mut most = table();
        for r in 0..12 {
            most[r * 8..(r + 1) * 8].iter_mut().for_each(|x| *x = 1.0);
        }
        assert_eq!(moved_rows(&most, 20, 8), None);
        // A zero delta, and shapes it does not apply to.
        assert_eq!(moved_rows(&[0.0; 160], 20, 8), None);
        assert_eq!(moved_rows(&table()[..8], 1, 8), None);
    }

    /// 300 rows of 32: every tenth row moved, the others shrunk by weight decay.
    fn embedding() -> Vec<f32> {
        let mut x = 0x5eed_u64;
        (0..300 * 32)
            .map(|i| {
                x = ultradelta_qgp::rng::splitmix64(x);
                let u = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if (i / 32) % 10 == 0 {
                    0.02 * u
                } else {
                    2e-6 * u
                }
            })
            .collect()
    }

    #[test]
    fn bert_codes_the_moved_rows_alone_and_leaves_the_others_at_zero() {
        let cfg = CompressConfig::default().for_family(crate::Family::Bert);
        let d = embedding();
        let mut last = u64::MAX;
        for rate in [0.0, 0.5, 0.9, 0.97, 0.99] {
            let made = super::super::compress_tensor(&d, "w", &[300, 32], rate, &cfg).unwrap();
            let Record::RowSubset(r) = &made.record else {
                panic!("rate {rate}: a {} record", made.record.kind().name());
            };
            assert_eq!(r.listed, (0..300).step_by(10).collect::<Vec<u64>>());
            let mut w = vec![0f32; d.len()];
            made.record.add_delta_into(1.0, &mut w).unwrap();
            for (i, &y) in w.iter().enumerate() {
                if (i / 32) % 10 != 0 {
                    assert_eq!(y, 0.0, "rate {rate}: unlisted entry {i} rebuilt as {y}");
                }
            }
            // The listed rows are what the same record of the gathered rows alone rebuilds.
            let alone = super::super::compress_tensor(
                &gather(&d, 32, &r.listed),
                "w",
                &[30, 32],
                rate,
                &CompressConfig {
                    row_subset: Some(false),
                    ..cfg.clone()
                },
            )
            .unwrap();
            assert_eq!(*r.inner, alone.record, "rate {rate}");
            // Bytes never grow with the rate (the byte budget's search relies on it).
            let bytes = made.record.encoded_len(2, 1).unwrap();
            assert!(bytes <= last, "rate {rate}: {bytes} after {last}");
            last = bytes;
        }
        // Off: the whole matrix's record.
        let off = CompressConfig {
            row_subset: Some(false),
            ..cfg.clone()
        };
        let whole = super::super::compress_tensor(&d, "w", &[300, 32], 0.9, &off).unwrap();
        assert!(!matches!(whole.record, Record::RowSubset(_)));
        // LLaMA's default leaves it off (and so keeps its streaming path).
        let llama = CompressConfig::default().for_family(crate::Family::Llama);
        assert!(!llama.row_subset_on());
        assert!(super::super::streams_from_source(&llama));
    }

    #[test]
    fn unmoved_rows_at_exactly_zero_leave_the_moved_ones() {
        // A bf16 embedding fine-tuned without weight decay: unseen rows unchanged, the median row zero.
        let mut d = vec![0f32; 20 * 8];
        d[5 * 8..6 * 8].iter_mut().for_each(|x| *x = 1e-3);
        d[17 * 8] = -2e-3;
        assert_eq!(moved_rows(&d, 20, 8), Some(vec![5, 17]));
    }
}
