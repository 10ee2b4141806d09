//! Checkpoints the unit tests share.

use std::path::Path;

use ultradelta_io::Checkpoint;

/// The tiny synthetic base and fine-tune, stored as F32, written into `dir` and opened.
pub(crate) fn tiny_f32(dir: &Path) -> (Checkpoint, Checkpoint) {
    let synth = ultradelta_synth::SynthConfig {
        dtype: ultradelta_io::DType::F32,
        ..ultradelta_synth::SynthConfig::new(ultradelta_synth::Shape::Tiny)
    };
    let (b, f) = ultradelta_synth::write_pair(dir, &synth, |_, _| {}).unwrap();
    (Checkpoint::open(&b).unwrap(), Checkpoint::open(&f).unwrap())
}
