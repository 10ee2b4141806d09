//! The delta source: Δ = fine-tuned − base in f32, read straight from the two checkpoints' bytes a range at a time
//! (no f32 copy of either checkpoint). The fused kernels of [`ultradelta_qgp::fused`] quantize, count and prune
//! from it block by block; [`delta_into`] materialises it for the methods that need the whole Δ.

use rayon::prelude::*;
use ultradelta_io::{DType, TensorView};
use ultradelta_qgp::fused::DeltaSource;

use crate::error::TensorMismatch;
use crate::{Error, Result};

/// Entries converted at a time by the generic (not 16-bit float) source, and per parallel unit of [`delta_into`].
const CHUNK: usize = 1 << 14;

/// Runs `f` on the [`DeltaSource`] of the pair `ft − base`: their bytes when both are bf16 or both f16 (the
/// kernels convert in registers), otherwise a fill function that decodes both ranges to f32 and subtracts in f32.
///
/// # Errors
/// A non-float dtype or unequal element counts (named by tensor and file), before `f` runs.
pub(crate) fn with_source<R>(
    base: &TensorView<'_>,
    ft: &TensorView<'_>,
    f: impl FnOnce(&DeltaSource<'_>) -> R,
) -> Result<R> {
    let n = ft.info().numel();
    if base.info().numel() != n {
        return Err(Error::Mismatch(Box::new(TensorMismatch {
            tensor: ft.info().name.clone(),
            base_file: base.file().to_path_buf(),
            finetuned_file: ft.file().to_path_buf(),
            base_dtype: base.info().dtype.name().to_string(),
            base_shape: base.info().shape.clone(),
            ft_dtype: ft.info().dtype.name().to_string(),
            ft_shape: ft.info().shape.clone(),
        })));
    }
    match (base.info().dtype, ft.info().dtype) {
        (DType::BF16, DType::BF16) => {
            return Ok(f(&DeltaSource::Bf16 {
                base: base.bytes(),
                ft: ft.bytes(),
            }))
        }
        (DType::F16, DType::F16) => {
            return Ok(f(&DeltaSource::F16 {
                base: base.bytes(),
                ft: ft.bytes(),
            }))
        }
        _ => {}
    }
    // Dtype errors surface here, once, so the fill function cannot fail.
    ft.range_to_f32_into(0, &mut [])?;
    base.range_to_f32_into(0, &mut [])?;
    let fill = |start: usize, out: &mut [f32]| {
        // The base's values beside the fine-tune's: a few entries at a time when a seeded sample reads Δ entry by
        // entry (`DeltaSource::delta_at`), so the scratch is only as long as the call needs (zeroing a whole
        // chunk per entry was most of the time of a budgeted compression of an f32 checkpoint).
        let mut short = [0f32; 64];
        let mut long = Vec::new();
        let b: &mut [f32] = if out.len() <= short.len() {
            &mut short
        } else {
            long.resize(out.len().min(CHUNK), 0f32);
            &mut long
        };
        for (k, o) in out.chunks_mut(CHUNK).enumerate() {
            let s = start + k * CHUNK;
            let b = &mut b[..o.len()];
            ft.range_to_f32_into(s, o)
                .and_then(|()| base.range_to_f32_into(s, b))
                .expect("dtypes and lengths were checked");
            for (o, b) in o.iter_mut().zip(b.iter()) {
                *o -= *b;
            }
        }
    };
    Ok(f(&DeltaSource::Fill {
        len: n,
        fill: &fill,
    }))
}

/// Writes `ft − base` (each converted to f32, subtracted in f32) into `out`, resized to the tensor's element count.
///
/// Bit-identical to converting both tensors with [`TensorView::to_f32`] and subtracting element by element. `out`
/// keeps its capacity, so a buffer reused across tensors costs one allocation for the whole run; it is only
/// zero-extended when it must grow.
pub(crate) fn delta_into(
    base: &TensorView<'_>,
    ft: &TensorView<'_>,
    out: &mut Vec<f32>,
) -> Result<()> {
    resize(out, ft.info().numel());
    with_source(base, ft, |src| {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(k, o)| ultradelta_qgp::simd::wide(|| src.delta_into(k * CHUNK, o)));
    })
}

/// Δ = fine-tuned − base in f32 in a new buffer ([`delta_into`]).
pub(crate) fn delta_f32(base: &TensorView<'_>, ft: &TensorView<'_>) -> Result<Vec<f32>> {
    let mut d = Vec::new();
    delta_into(base, ft, &mut d)?;
    Ok(d)
}

/// Sets `v`'s length to `n`, keeping its capacity (zero-extends only when it grows).
pub(crate) fn resize<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() > n {
        v.truncate(n);
    } else {
        v.resize(n, T::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ultradelta_qgp::{QuantParams, Quantizer};

    /// The quantized levels of `ft − base` under `q` from the bytes (the fused kernels' level path).
    fn levels_into(
        base: &TensorView<'_>,
        ft: &TensorView<'_>,
        q: &QuantParams,
        out: &mut Vec<u16>,
    ) -> Result<()> {
        resize(out, ft.info().numel());
        with_source(base, ft, |src| {
            ultradelta_qgp::fused::levels_source(src, q, out)
        })
    }
    use ultradelta_io::{Checkpoint, TensorInfo};

    /// Every float dtype, odd lengths (a partial last chunk), against the plain to_f32 reference.
    #[test]
    fn delta_into_equals_to_f32_difference() {
        let dir = tempfile::tempdir().unwrap();
        let n = 3 * CHUNK + 17;
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
            let vals = |k: u32| -> Vec<f32> {
                (0..n)
                    .map(|i| ((i as f32) * 0.37 + k as f32).sin() * 0.02 * (1 + (i % 7)) as f32)
                    .collect()
            };
            let mut paths = Vec::new();
            for (k, name) in [(1, "base"), (2, "ft")] {
                let mut bytes = Vec::new();
                ultradelta_io::f32_to_bytes(&vals(k), dtype, &mut bytes).unwrap();
                let info = TensorInfo::new("w", dtype, vec![n]);
                let path = dir.path().join(format!("{name}-{}", dtype.name()));
                ultradelta_io::write_checkpoint(&path, &[(info, bytes)], Default::default())
                    .unwrap();
                paths.push(path);
            }
            let base = Checkpoint::open(&paths[0]).unwrap();
            let ft = Checkpoint::open(&paths[1]).unwrap();
            let (bv, fv) = (base.view("w").unwrap(), ft.view("w").unwrap());
            let want: Vec<f32> = fv
                .to_f32()
                .unwrap()
                .iter()
                .zip(bv.to_f32().unwrap())
                .map(|(f, b)| f - b)
                .collect();
            // A reused buffer, longer and then shorter than the tensor.
            let mut out = vec![7.0f32; n + 5];
            delta_into(&bv, &fv, &mut out).unwrap();
            assert_eq!(out.len(), n);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&want), "{}", dtype.name());
            out.truncate(10);
            delta_into(&bv, &fv, &mut out).unwrap();
            assert_eq!(bits(&out), bits(&want), "{} (grown buffer)", dtype.name());
            // Levels straight from the bytes equal quantizing the Δ buffer, for several bit widths.
            for b in [1u8, 4, 8] {
                let q = QuantParams::fit(&want, b).unwrap();
                let mut want_levels = vec![0u16; n];
                ultradelta_qgp::quantize(&want, &q, &mut want_levels);
                let mut levels = vec![9u16; n + 3];
                levels_into(&bv, &fv, &q, &mut levels).unwrap();
                assert_eq!(levels, want_levels, "{} {b} bits", dtype.name());
            }
        }
    }
}
