//! Acceptance: real archive bytes against the paper's v3 count (ALGORITHM.md §5).
//!
//! Sparse records totalling >= 10M entries at s = 0.97 (uniformly random positions, as DAC produces) and b = 4 must
//! take no more than 2% above the v3 count `16-bit size / 50.9`, i.e. a real ratio of at least 49.9x.

use ultradelta_archive::{
    encode_record, h2, paper_v2_ratio, paper_v3_ratio, record_cost, ArchiveReader, ArchiveWriter,
    FinetunedInfo, Policy, Record, SparseRecord, TensorEntry,
};
use ultradelta_core::DType;
use ultradelta_core::QuantParams;

use crate::common::{random_positions, Rng};

#[test]
fn sparse_records_reach_the_v3_count() {
    let shapes: [[usize; 2]; 4] = [[1024, 2816], [1024, 2816], [2816, 1024], [2048, 1024]];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ratio.udelta");
    let mut w = ArchiveWriter::create(&path, false).unwrap();
    let mut rng = Rng::new(97);
    let (mut entries, mut kept_total, mut record_bytes, mut position_bits) =
        (0u64, 0u64, 0u64, 0u64);
    for (i, shape) in shapes.iter().enumerate() {
        let numel = (shape[0] * shape[1]) as u64;
        let kept = (numel as f64 * 0.03).round() as u64;
        let positions = random_positions(&mut rng, numel, kept);
        let levels: Vec<u16> = positions
            .iter()
            .map(|_| (rng.next_u64() % 16) as u16)
            .collect();
        let rec = Record::Sparse(SparseRecord {
            numel,
            quant: QuantParams {
                bits: 4,
                lo: -0.01,
                step: 0.02 / 15.0,
            },
            scale: 1.0 / 0.03,
            positions,
            levels,
        });
        // The positions stream's bits, rounded up to whole bytes (golomb.rs checks the parameter chosen).
        let bytes = encode_record(DType::BF16, shape, &rec, 1).unwrap();
        position_bits += record_cost(&bytes).unwrap().position_bits;
        let entry = TensorEntry::new(
            format!("layers.{i}.weight"),
            shape.to_vec(),
            DType::BF16,
            Policy::Compress,
        );
        record_bytes += w.write_tensor(entry, &rec).unwrap();
        entries += numel;
        kept_total += kept;
    }
    let p = w
        .finish(
            "ultradelta",
            serde_json::json!({}),
            1.0,
            "",
            FinetunedInfo::default(),
        )
        .unwrap();
    assert!(entries >= 10_000_000);

    let density = kept_total as f64 / entries as f64;
    let dense16 = entries as f64 * 2.0;
    let v3_bytes = dense16 / paper_v3_ratio(4.0, density);
    let real_ratio = dense16 / record_bytes as f64;
    let golomb_vs_entropy = position_bits as f64 / (entries as f64 * h2(density));
    eprintln!(
        "{entries} entries, density {density:.5}: records {record_bytes} B, v3 count {v3_bytes:.0} B; real ratio \
         {real_ratio:.2}x (v3 {:.2}x, v2 {:.2}x); positions {:.4} bits/entry = {golomb_vs_entropy:.4} x H2(d)",
        paper_v3_ratio(4.0, density),
        paper_v2_ratio(4.0, density),
        position_bits as f64 / entries as f64,
    );
    assert!(
        record_bytes as f64 <= 1.02 * v3_bytes,
        "records {record_bytes} B exceed v3 count {v3_bytes:.0} B by > 2%"
    );
    assert!(real_ratio >= 49.9, "real ratio {real_ratio:.2}x");
    assert!(
        golomb_vs_entropy < 1.02,
        "Golomb positions cost {golomb_vs_entropy:.4} x entropy"
    );

    // The whole file is barely larger than its records, and a record reads back.
    let r = ArchiveReader::open(&p).unwrap();
    assert!(r.file_size() < record_bytes + 4096);
    match r.read_record("layers.3.weight").unwrap() {
        Record::Sparse(s) => assert_eq!(
            s.positions.len() as u64,
            (2048.0f64 * 1024.0 * 0.03).round() as u64
        ),
        other => panic!("{other:?}"),
    }
}
