//! UltraDelta's opt-in codecs past the paper's own bit count (ALGORITHM.md §5): seeded positions
//! ([`PositionCodec::Seeded`]: kept positions drawn from a seed, none stored) and entropy-coded levels
//! ([`ValueCodec::Entropy`]: rANS with a per-tensor static model), and the per-tensor choice
//! ([`CodecChoice::Auto`]).
//!
//! What `auto` decides, precisely: for the entries the method chose (DAC's with Golomb positions, the seeded
//! sample with seeded positions), it encodes the levels both bit-packed and entropy-coded and keeps the
//! smaller record (bit-packed on ties). It never changes which entries are kept, their values, or the positions
//! codec, so the rebuilt weights are the same as with either fixed values codec.

use serde::Serialize;
use ultradelta_archive::{
    CodedSparseRecord, LevelCoding, Positions, Record, RecordKind, SparseRecord,
};
use ultradelta_qgp::seeded::seeded_prune;
use ultradelta_qgp::{quantize, tensor_seed, QuantParams, Quantizer};
use ultradelta_rescale::rescale_factor;

use crate::compress::compress_tensor;
use crate::config::{CodecChoice, CompressConfig, PositionCodec, ValueCodec};

/// What the codec did for one tensor (written into the index entry's `extra`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TensorCodecInfo {
    /// `positions+values` as stored, e.g. `seeded+entropy`.
    pub codec: String,
    /// Seeded positions: the trial whose seed was kept.
    pub seed_trial: Option<u32>,
    /// Seeded positions: L1 distance between the kept-level histogram and DAC's kept counts (chosen trial).
    pub hist_l1: Option<u64>,
    /// Seeded positions: the same distance for trial 0 alone.
    pub hist_l1_first: Option<u64>,
}

/// The name of a sparse level kind's codec (`golomb+packed`, `golomb+entropy`, `seeded+packed`,
/// `seeded+entropy`), `None` for other kinds ([`RecordKind::codec_name`]).
pub fn codec_name(kind: RecordKind) -> Option<&'static str> {
    kind.codec_name()
}

/// Whether entropy-coded levels make a smaller record than bit-packed ones for `coded`'s kept entries (the
/// archive's exact lengths of both records, less the positions stream they share).
fn entropy_is_smaller(coded: &CodedSparseRecord) -> bool {
    let len = |coding| coded.len_without_positions(coding).unwrap_or(u64::MAX);
    len(LevelCoding::Rans) < len(LevelCoding::Packed)
}

/// UltraDelta's record for one tensor under `cfg`'s codecs, and what the codec did. With the default codecs
/// (Golomb positions, packed levels, fixed) this is exactly [`compress_tensor`]'s kind-1 record.
///
/// # Errors
/// The quantizer's error (non-finite delta).
pub fn ultradelta_coded(
    delta: &[f32],
    name: &str,
    rate: f64,
    cfg: &CompressConfig,
) -> Result<(Record, TensorCodecInfo), ultradelta_qgp::Error> {
    let mut info = TensorCodecInfo::default();
    let coded = match cfg.positions {
        PositionCodec::Golomb => {
            let s = compress_tensor(delta, name, rate, cfg)?;
            return Ok(ultradelta_from_sparse(s, cfg));
        }
        PositionCodec::Seeded => {
            let q = QuantParams::fit(delta, cfg.bits)?;
            let mut levels = vec![0u16; delta.len()];
            quantize(delta, &q, &mut levels);
            let seed = tensor_seed(cfg.seed, name);
            let pruned = seeded_prune(&levels, &q, rate, seed, cfg.seed_trials);
            info.seed_trial = Some(pruned.trial);
            info.hist_l1 = Some(pruned.distance);
            info.hist_l1_first = Some(pruned.distance_first);
            CodedSparseRecord {
                numel: delta.len() as u64,
                quant: q,
                scale: rescale_factor(cfg.rescale, cfg.sparsity, rate, cfg.rescale_factor) as f32,
                positions: Positions::Seeded {
                    seed,
                    trial: pruned.trial,
                },
                levels: pruned.levels,
                coding: LevelCoding::Packed,
            }
        }
    };
    Ok(finish_coded(coded, info, cfg))
}

/// [`ultradelta_coded`] for Golomb positions, from the pipeline's sparse record (the levels codec is chosen here).
pub(crate) fn ultradelta_from_sparse(
    s: SparseRecord,
    cfg: &CompressConfig,
) -> (Record, TensorCodecInfo) {
    finish_coded(
        CodedSparseRecord::from_sparse(s, LevelCoding::Packed),
        TensorCodecInfo::default(),
        cfg,
    )
}

/// Applies `cfg`'s levels codec to `coded`.
fn finish_coded(
    coded: CodedSparseRecord,
    mut info: TensorCodecInfo,
    cfg: &CompressConfig,
) -> (Record, TensorCodecInfo) {
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
    (record, info)
}

/// The record of one compressed tensor under `cfg` (as [`crate::compress_tensor_with`]), with the codec report
/// for UltraDelta with quantized levels (`None` for every other method).
///
/// # Errors
/// As [`crate::compress_tensor_with`].
pub fn tensor_record(
    delta: &[f32],
    name: &str,
    shape: &[usize],
    rate: f64,
    cfg: &CompressConfig,
) -> Result<(Record, Option<TensorCodecInfo>), ultradelta_baselines::Error> {
    if cfg.method == crate::Method::Ultradelta && cfg.quantize {
        let (r, i) = ultradelta_coded(delta, name, rate, cfg)?;
        return Ok((r, Some(i)));
    }
    Ok((
        crate::compress_tensor_with(delta, name, shape, rate, cfg)?,
        None,
    ))
}

/// Whether `cfg` asks for anything but the paper's codecs (Golomb positions, packed levels, fixed).
pub fn uses_new_codecs(cfg: &CompressConfig) -> bool {
    cfg.positions != PositionCodec::Golomb
        || cfg.values != ValueCodec::Packed
        || cfg.codec != CodecChoice::Fixed
}

/// Writes a tensor's codec report into its index entry's `extra` (`codec`, and for seeded positions
/// `seed_trial`, `hist_l1`, `hist_l1_first`).
pub fn annotate(entry: &mut ultradelta_archive::TensorEntry, info: &TensorCodecInfo) {
    entry
        .extra
        .insert("codec".into(), info.codec.clone().into());
    if let Some(t) = info.seed_trial {
        entry.extra.insert("seed_trial".into(), t.into());
    }
    if let Some(d) = info.hist_l1 {
        entry.extra.insert("hist_l1".into(), d.into());
    }
    if let Some(d) = info.hist_l1_first {
        entry.extra.insert("hist_l1_first".into(), d.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ultradelta_archive::encode_record;
    use ultradelta_io::DType;

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
                let (packed, _) =
                    ultradelta_coded(&d, "t", 0.9, &cfg(ValueCodec::Packed, CodecChoice::Fixed))
                        .unwrap();
                let (entropy, _) =
                    ultradelta_coded(&d, "t", 0.9, &cfg(ValueCodec::Entropy, CodecChoice::Fixed))
                        .unwrap();
                let (auto, info) =
                    ultradelta_coded(&d, "t", 0.9, &cfg(ValueCodec::Packed, CodecChoice::Auto))
                        .unwrap();
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

    #[test]
    fn default_codecs_write_the_papers_record() {
        let d = delta(5000, 9);
        let cfg = CompressConfig::default();
        let (r, info) = ultradelta_coded(&d, "t", 0.97, &cfg).unwrap();
        assert_eq!(
            r,
            Record::Sparse(compress_tensor(&d, "t", 0.97, &cfg).unwrap())
        );
        assert_eq!(info.codec, "golomb+packed");
        assert!(!uses_new_codecs(&cfg));
    }
}
