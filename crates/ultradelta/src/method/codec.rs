//! UltraDelta's values codecs and the per-tensor choice between them (ALGORITHM.md §5): bit-packed levels
//! ([`ValueCodec::Packed`], kinds 1 and 11) or rANS-coded ones ([`ValueCodec::Entropy`]: a per-tensor static
//! model, kinds 10 and 12), fixed or chosen per tensor ([`CodecChoice::Auto`]). The positions codec
//! ([`crate::PositionCodec`]) is part of the pruning step, in the parent module: seeded positions change *which*
//! entries are kept.
//!
//! What `auto` decides, precisely: for the entries the method chose (DAC's with Golomb positions, the seeded
//! sample with seeded positions), it encodes the levels both bit-packed and entropy-coded and keeps the
//! smaller record (bit-packed on ties). It never changes which entries are kept, their values, or the positions
//! codec, so the rebuilt weights are the same as with either fixed values codec.

use serde::Serialize;
use ultradelta_archive::{CodedSparseRecord, LevelCoding, RecordKind};

use super::CompressedTensor;
use crate::config::{CodecChoice, CompressConfig, ValueCodec};

/// What the codec did for one tensor (written into the index entry's `extra`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TensorCodecInfo {
    /// `positions+values` as stored, e.g. `seeded+entropy`.
    pub codec: String,
    /// Seeded positions: the trial whose seed was kept.
    pub seed_trial: Option<u32>,
    /// Seeded positions: L1 distance between the kept-level histogram and the target kept counts (chosen trial).
    pub hist_l1: Option<u64>,
    /// Seeded positions: the same distance for trial 0 alone.
    pub hist_l1_first: Option<u64>,
    /// `--lowrank-part`: the rank of the tensor's low-rank part (`None`: no part, a plain seeded record).
    pub lowrank_rank: Option<u32>,
}

/// The name of a sparse level kind's codec (`golomb+packed`, `golomb+entropy`, `seeded+packed`,
/// `seeded+entropy`), `None` for other kinds ([`RecordKind::codec_name`]).
pub(crate) fn codec_name(kind: RecordKind) -> Option<&'static str> {
    kind.codec_name()
}

/// Whether entropy-coded levels make a smaller record than bit-packed ones for `coded`'s kept entries (the
/// archive's exact lengths of both records, less the positions stream they share).
fn entropy_is_smaller(coded: &CodedSparseRecord) -> bool {
    let len = |coding| coded.len_without_positions(coding).unwrap_or(u64::MAX);
    len(LevelCoding::Rans) < len(LevelCoding::Packed)
}

/// Applies `cfg`'s levels codec to `coded` (levels bit-packed as pruned): UltraDelta's record with quantized
/// levels, and what the codec did.
pub(crate) fn finish(
    coded: CodedSparseRecord,
    mut info: TensorCodecInfo,
    cfg: &CompressConfig,
) -> CompressedTensor {
    let coding = match cfg.codec {
        CodecChoice::Fixed => match cfg.values {
            ValueCodec::Packed => LevelCoding::Packed,
            ValueCodec::Entropy => LevelCoding::Rans,
        },
        CodecChoice::Auto if entropy_is_smaller(&coded) => LevelCoding::Rans,
        CodecChoice::Auto => LevelCoding::Packed,
    };
    let record = CodedSparseRecord { coding, ..coded }.into_record();
    info.codec = codec_name(record.kind()).unwrap_or_default().to_string();
    CompressedTensor {
        record,
        codec: Some(info),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PositionCodec;
    use crate::method::compress_tensor;
    use ultradelta_archive::{encode_record, Record, SparseRecord};
    use ultradelta_io::DType;
    use ultradelta_qgp::Quantizer;

    fn delta(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x >> 11) as f32 / (1u64 << 53) as f32 - 0.5;
                u * u * u * 1e-3
            })
            .collect()
    }

    fn size(r: &Record, n: usize) -> usize {
        encode_record(DType::F32, &[n], r, 3).unwrap().len()
    }

    fn coded(d: &[f32], rate: f64, cfg: &CompressConfig) -> (Record, TensorCodecInfo) {
        let t = compress_tensor(d, "t", &[d.len()], rate, cfg).unwrap();
        (t.record, t.codec.expect("UltraDelta reports its codec"))
    }

    #[test]
    fn auto_is_never_larger_and_never_changes_values() {
        for (n, seed) in [(50usize, 1u64), (3000, 2), (40_000, 3)] {
            let d = delta(n, seed);
            for positions in [PositionCodec::Golomb, PositionCodec::Seeded] {
                let cfg = |values, codec| CompressConfig {
                    positions,
                    values,
                    codec,
                    sparsity: 0.9,
                    ..CompressConfig::default()
                };
                let (packed, _) = coded(&d, 0.9, &cfg(ValueCodec::Packed, CodecChoice::Fixed));
                let (entropy, _) = coded(&d, 0.9, &cfg(ValueCodec::Entropy, CodecChoice::Fixed));
                let (auto, info) = coded(&d, 0.9, &cfg(ValueCodec::Packed, CodecChoice::Auto));
                let sizes = [size(&packed, n), size(&entropy, n), size(&auto, n)];
                assert_eq!(
                    sizes[2],
                    sizes[0].min(sizes[1]),
                    "{n} {positions:?}: {sizes:?}"
                );
                let dense = |r: &Record| r.delta_to_dense(n, 1.0).unwrap();
                assert_eq!(dense(&packed), dense(&entropy));
                assert_eq!(dense(&packed), dense(&auto));
                assert_eq!(info.codec, codec_name(auto.kind()).unwrap());
                assert_eq!(
                    info.seed_trial.is_some(),
                    positions == PositionCodec::Seeded
                );
            }
        }
    }

    /// The paper's codecs write its kind-1 record: quantize, DAC, rescale, step by step.
    #[test]
    fn papers_codecs_write_the_papers_record() {
        use ultradelta_qgp::{group_prune, quantize, tensor_seed, QuantParams};
        let d = delta(5000, 9);
        let cfg = CompressConfig {
            rescale: crate::RescaleMode::PerTensor,
            ..CompressConfig::paper()
        };
        let (r, info) = coded(&d, 0.97, &cfg);
        let q = QuantParams::fit(&d, cfg.bits()).unwrap();
        let mut levels = vec![0u16; d.len()];
        quantize(&d, &q, &mut levels);
        let kept = group_prune(&levels, &q, 0.97, tensor_seed(cfg.seed, "t"));
        let scale = ultradelta_rescale::rescale_factor(cfg.rescale, cfg.sparsity, 0.97, 1.0) as f32;
        let want = SparseRecord {
            numel: d.len() as u64,
            quant: q,
            scale,
            positions: kept.positions,
            levels: kept.levels,
        };
        assert_eq!(r, Record::Sparse(want));
        assert_eq!(info.codec, "golomb+packed");
        assert!(!cfg.uses_new_codecs());
        // The project's default stores the same choice's levels seeded and rANS-coded.
        assert!(CompressConfig::default().uses_new_codecs());
    }
}
