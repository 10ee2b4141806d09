//! The delta kernel: Δ = fine-tuned − base in f32, computed chunk by chunk straight from the two checkpoints' bytes
//! into a buffer the caller reuses across tensors (no per-tensor allocation, no zero-filling, no f32 copy of
//! either checkpoint).

use rayon::prelude::*;
use ultradelta_io::{DType, TensorView};
use ultradelta_qgp::QuantParams;

use crate::Result;

/// Elements per parallel work unit (the f32 scratch of one unit stays in L1/L2).
const CHUNK: usize = 1 << 14;

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
    each_delta_chunk(base, ft, out, |d, o| o.copy_from_slice(d))
}

/// Writes the quantized levels of `ft − base` under `q` into `out` (resized to the tensor's element count): exactly
/// [`delta_into`] followed by [`ultradelta_qgp::quantize`], without the f32 buffer (each chunk's Δ is quantized
/// while it is in cache).
pub(crate) fn levels_into(
    base: &TensorView<'_>,
    ft: &TensorView<'_>,
    q: &QuantParams,
    out: &mut Vec<u16>,
) -> Result<()> {
    resize(out, ft.info().numel());
    each_delta_chunk(base, ft, out, |d, o| q.quantize_slice(d, o))
}

/// Sets `v`'s length to `n`, keeping its capacity (zero-extends only when it grows).
fn resize<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() > n {
        v.truncate(n);
    } else {
        v.resize(n, T::default());
    }
}

/// Computes Δ = ft − base chunk by chunk ([`CHUNK`] entries, in parallel) into a scratch that stays in cache and
/// hands each chunk's Δ with the matching chunk of `out` (as long as the tensor) to `each`, compiled with AVX2
/// when the CPU has it.
fn each_delta_chunk<T: Send>(
    base: &TensorView<'_>,
    ft: &TensorView<'_>,
    out: &mut [T],
    each: impl Fn(&[f32], &mut [T]) + Sync,
) -> Result<()> {
    let n = out.len();
    if ft.info().dtype == DType::BF16
        && base.info().dtype == DType::BF16
        && base.info().numel() == n
    {
        // bf16 → f32 is a 16-bit shift: no conversion call, one vectorisable loop.
        let (b, f) = (base.bytes(), ft.bytes());
        out.par_chunks_mut(CHUNK)
            .zip(f.par_chunks(2 * CHUNK).zip(b.par_chunks(2 * CHUNK)))
            .for_each(|(o, (f, b))| {
                ultradelta_qgp::simd::wide(|| {
                    let mut scratch = [0f32; CHUNK];
                    let d = &mut scratch[..o.len()];
                    for ((d, f), b) in d.iter_mut().zip(f.chunks_exact(2)).zip(b.chunks_exact(2)) {
                        let f = f32::from_bits(u32::from(u16::from_le_bytes([f[0], f[1]])) << 16);
                        let b = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
                        *d = f - b;
                    }
                    each(d, o);
                })
            });
        return Ok(());
    }
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .try_for_each(|(c, o)| -> Result<()> {
            let mut fs = [0f32; CHUNK];
            let mut bs = [0f32; CHUNK];
            let (fs, bs) = (&mut fs[..o.len()], &mut bs[..o.len()]);
            ft.range_to_f32_into(c * CHUNK, fs)?;
            base.range_to_f32_into(c * CHUNK, bs)?;
            ultradelta_qgp::simd::wide(|| {
                for (f, b) in fs.iter_mut().zip(bs.iter()) {
                    *f -= *b;
                }
                each(fs, o);
            });
            Ok(())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
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
