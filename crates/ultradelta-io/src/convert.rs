//! Conversions between raw little-endian tensor bytes and `f32`.
//!
//! Element-wise conversions, so the result does not depend on how the work is split; large inputs are still cut
//! at fixed boundaries ([`PAR_CHUNK`] elements) and converted in parallel with rayon. Inputs may be unaligned
//! (safetensors data offsets need not be multiples of the element size): aligned data on little-endian hosts is
//! reinterpreted in place, anything else is decoded byte by byte.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::{DType, Error, Result};

/// Elements per parallel work unit.
pub const PAR_CHUNK: usize = 1 << 16;

/// Inputs with at least this many elements are converted in parallel.
const PAR_MIN: usize = 2 * PAR_CHUNK;

/// Decodes `bytes` (little-endian `dtype`, float dtypes only) into `out`. `bytes.len()` must equal
/// `out.len() * dtype.size()`; the caller checks. Parallel for large inputs.
pub(crate) fn decode_into(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    debug_assert!(dtype.is_float());
    debug_assert_eq!(bytes.len(), out.len() * dtype.size());
    let es = dtype.size();
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(PAR_CHUNK)
            .zip(bytes.par_chunks(PAR_CHUNK * es))
            .for_each(|(o, b)| decode_chunk(dtype, b, o));
    } else {
        for (o, b) in out.chunks_mut(PAR_CHUNK).zip(bytes.chunks(PAR_CHUNK * es)) {
            decode_chunk(dtype, b, o);
        }
    }
}

/// Single-threaded decoding of one chunk.
pub(crate) fn decode_chunk(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    const LE: bool = cfg!(target_endian = "little");
    match dtype {
        DType::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(src) if LE => out.copy_from_slice(src),
            _ => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        },
        DType::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                *o = f64::from_le_bytes(a) as f32;
            }
        }
        DType::F16 => match bytemuck::try_cast_slice::<u8, f16>(bytes) {
            Ok(src) if LE => src.convert_to_f32_slice(out),
            _ => {
                let tmp: Vec<f16> = bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect();
                tmp.convert_to_f32_slice(out);
            }
        },
        DType::BF16 => match bytemuck::try_cast_slice::<u8, bf16>(bytes) {
            Ok(src) if LE => src.convert_to_f32_slice(out),
            _ => {
                let tmp: Vec<bf16> = bytes
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                    .collect();
                tmp.convert_to_f32_slice(out);
            }
        },
        _ => unreachable!("decode_chunk called with non-float dtype {dtype}"),
    }
}

/// Decodes little-endian `dtype` bytes into `out` on the calling thread, exactly as tensor views convert them.
///
/// # Errors
/// [`Error::NotFloat`] for a non-float dtype; [`Error::LengthMismatch`] unless `bytes.len() == out.len() *
/// dtype.size()`.
pub fn bytes_to_f32(bytes: &[u8], dtype: DType, out: &mut [f32]) -> Result<()> {
    if !dtype.is_float() {
        return Err(Error::NotFloat {
            context: "bytes_to_f32".into(),
            dtype,
        });
    }
    if bytes.len() != out.len() * dtype.size() {
        return Err(Error::LengthMismatch {
            context: format!("bytes_to_f32 of {} bytes of {}", bytes.len(), dtype.name()),
            expected: bytes.len() / dtype.size(),
            found: out.len(),
        });
    }
    decode_chunk(dtype, bytes, out);
    Ok(())
}

/// Converts `values` to `dtype`'s little-endian bytes, replacing the contents of `out`.
///
/// F32 is exact, F64 widens exactly, F16 and BF16 round to nearest, ties to even (as `half`'s `from_f32`);
/// NaN stays NaN and values beyond the range become infinities. Float dtypes only: anything else is
/// [`Error::NotFloat`]. Large inputs are converted in parallel; the bytes do not depend on the thread count.
pub fn f32_to_bytes(values: &[f32], dtype: DType, out: &mut Vec<u8>) -> Result<()> {
    if !dtype.is_float() {
        return Err(Error::NotFloat {
            context: "f32_to_bytes".into(),
            dtype,
        });
    }
    let es = dtype.size();
    out.clear();
    out.resize(values.len() * es, 0);
    if values.len() >= PAR_MIN {
        out.par_chunks_mut(PAR_CHUNK * es)
            .zip(values.par_chunks(PAR_CHUNK))
            .for_each(|(o, v)| encode_chunk(dtype, v, o));
    } else {
        for (o, v) in out.chunks_mut(PAR_CHUNK * es).zip(values.chunks(PAR_CHUNK)) {
            encode_chunk(dtype, v, o);
        }
    }
    Ok(())
}

fn encode_chunk(dtype: DType, values: &[f32], out: &mut [u8]) {
    match dtype {
        DType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(values) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F64 => {
            for (o, v) in out.chunks_exact_mut(8).zip(values) {
                o.copy_from_slice(&f64::from(*v).to_le_bytes());
            }
        }
        DType::F16 => {
            let mut tmp = vec![f16::ZERO; values.len()];
            tmp.convert_from_f32_slice(values);
            for (o, h) in out.chunks_exact_mut(2).zip(&tmp) {
                o.copy_from_slice(&h.to_le_bytes());
            }
        }
        DType::BF16 => {
            let mut tmp = vec![bf16::ZERO; values.len()];
            tmp.convert_from_f32_slice(values);
            for (o, h) in out.chunks_exact_mut(2).zip(&tmp) {
                o.copy_from_slice(&h.to_le_bytes());
            }
        }
        _ => unreachable!("encode_chunk called with non-float dtype {dtype}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain scalar reference decoder.
    fn reference(dtype: DType, bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(dtype.size())
            .map(|c| match dtype {
                DType::F32 => f32::from_le_bytes(c.try_into().unwrap()),
                DType::F64 => f64::from_le_bytes(c.try_into().unwrap()) as f32,
                DType::F16 => f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32(),
                DType::BF16 => bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32(),
                _ => unreachable!(),
            })
            .collect()
    }

    fn pseudo_random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    #[test]
    fn decode_matches_reference_aligned_and_unaligned() {
        for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            let n = 1000;
            let raw = pseudo_random_bytes(n * dtype.size() + 1, dtype.size() as u64);
            for shift in 0..2 {
                let bytes = &raw[shift..shift + n * dtype.size()];
                let mut out = vec![0f32; n];
                decode_into(dtype, bytes, &mut out);
                assert!(
                    same_bits(&out, &reference(dtype, bytes)),
                    "{dtype} shift {shift}"
                );
            }
        }
    }

    #[test]
    fn parallel_equals_sequential_for_any_thread_count() {
        // several parallel chunks plus a ragged tail
        let n = 3 * PAR_CHUNK + 123;
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
            let raw = pseudo_random_bytes(n * dtype.size() + 1, 7);
            let bytes = &raw[1..]; // unaligned on purpose
            let expected = reference(dtype, bytes);
            for threads in [1, 2, 4] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut out = vec![0f32; n];
                pool.install(|| decode_into(dtype, bytes, &mut out));
                assert!(same_bits(&out, &expected), "{dtype} threads {threads}");
            }
            let values: Vec<f32> = expected
                .iter()
                .map(|v| if v.is_nan() { 0.5 } else { *v })
                .collect();
            let mut one = Vec::new();
            let mut four = Vec::new();
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
                .install(|| f32_to_bytes(&values, dtype, &mut one).unwrap());
            rayon::ThreadPoolBuilder::new()
                .num_threads(4)
                .build()
                .unwrap()
                .install(|| f32_to_bytes(&values, dtype, &mut four).unwrap());
            assert_eq!(one, four, "{dtype}");
        }
    }

    #[test]
    fn f16_rounds_to_nearest_even() {
        // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even -> 1.0
        // 1 + 3*2^-11 is halfway between 1 + 2^-10 and 1 + 2^-9: ties to even -> 1 + 2^-9
        // just above the halfway point rounds up
        let cases: [(f32, f32); 5] = [
            (1.0 + 2f32.powi(-11), 1.0),
            (1.0 + 3.0 * 2f32.powi(-11), 1.0 + 2f32.powi(-9)),
            (1.0 + 2f32.powi(-11) + 2f32.powi(-20), 1.0 + 2f32.powi(-10)),
            (65520.0, f32::INFINITY), // halfway between max (65504) and 2^16: rounds to even = overflow
            (-0.0, -0.0),
        ];
        let values: Vec<f32> = cases.iter().map(|c| c.0).collect();
        let mut out = Vec::new();
        f32_to_bytes(&values, DType::F16, &mut out).unwrap();
        let back = reference(DType::F16, &out);
        for ((input, want), got) in cases.iter().zip(&back) {
            assert_eq!(got.to_bits(), want.to_bits(), "f16({input})");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        let cases: [(f32, f32); 4] = [
            (1.0 + 2f32.powi(-8), 1.0),
            (1.0 + 3.0 * 2f32.powi(-8), 1.0 + 2f32.powi(-6)),
            (1.0 + 2f32.powi(-8) + 2f32.powi(-20), 1.0 + 2f32.powi(-7)),
            (-3.0, -3.0),
        ];
        let values: Vec<f32> = cases.iter().map(|c| c.0).collect();
        let mut out = Vec::new();
        f32_to_bytes(&values, DType::BF16, &mut out).unwrap();
        let back = reference(DType::BF16, &out);
        for ((input, want), got) in cases.iter().zip(&back) {
            assert_eq!(got.to_bits(), want.to_bits(), "bf16({input})");
        }
        f32_to_bytes(&[f32::NAN], DType::BF16, &mut out).unwrap();
        assert!(reference(DType::BF16, &out)[0].is_nan());
    }

    #[test]
    fn slice_encoding_equals_scalar_from_f32() {
        // random bit patterns cover subnormals, ties and overflow
        let raw = pseudo_random_bytes(4 * 5000, 99);
        let values: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .filter(|v| !v.is_nan())
            .collect();
        let mut out = Vec::new();
        f32_to_bytes(&values, DType::F16, &mut out).unwrap();
        for (v, c) in values.iter().zip(out.chunks_exact(2)) {
            assert_eq!(
                u16::from_le_bytes([c[0], c[1]]),
                f16::from_f32(*v).to_bits(),
                "f16 of {v}"
            );
        }
        f32_to_bytes(&values, DType::BF16, &mut out).unwrap();
        for (v, c) in values.iter().zip(out.chunks_exact(2)) {
            assert_eq!(
                u16::from_le_bytes([c[0], c[1]]),
                bf16::from_f32(*v).to_bits(),
                "bf16 of {v}"
            );
        }
    }

    #[test]
    fn f32_and_f64_are_exact() {
        let values = [1.5f32, -0.0, f32::MIN_POSITIVE / 4.0, f32::MAX, 1e-30];
        for dtype in [DType::F32, DType::F64] {
            let mut out = vec![9u8; 3]; // replaced, not appended to
            f32_to_bytes(&values, dtype, &mut out).unwrap();
            assert_eq!(out.len(), values.len() * dtype.size());
            assert!(same_bits(&reference(dtype, &out), &values), "{dtype}");
        }
    }

    #[test]
    fn non_float_is_rejected() {
        let err = f32_to_bytes(&[1.0], DType::I32, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NotFloat {
                    dtype: DType::I32,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("I32"));
    }
}
