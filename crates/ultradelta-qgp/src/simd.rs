//! Wider vectors for the per-entry loops, chosen at run time.
//!
//! The release build targets baseline x86-64 (SSE2: 4 f32 lanes) so one binary runs everywhere. [`wide`] runs a
//! closure compiled with AVX2 enabled (8 lanes) when the CPU has it: the loops inlined into it vectorise twice as
//! wide. Results are bit-identical either way: the kernels use only IEEE-exact operations (add, subtract,
//! divide, min/max, compare, conversions) and Rust never fuses a multiply and an add on its own.

/// Calls `f`, compiled with AVX2 enabled when this CPU supports it (checked once; a relaxed atomic load after).
///
/// Put the whole hot loop inside `f` (an `#[inline]` kernel called from it is compiled for AVX2 too); a call per
/// few thousand entries costs nothing measurable.
///
/// Caveat, measured: the closure is its own function, and it gets AVX2 code only if LLVM inlines it into the
/// wrapper. A large closure may not be inlined and then runs baseline SSE code (the bf16 delta + quantize loop
/// of compress did, with a scalar float-to-int conversion per entry). The hot kernels therefore use explicit
/// intrinsics instead ([`crate::fused`]); `wide` remains for small, secondary loops.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of `avx2`.
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Asks the CPU to bring the cache line of `v[i]` into cache (a hint: nothing happens when `i` is out of range or
/// on other architectures). For loops whose next addresses are known a few steps ahead.
#[inline(always)]
pub fn prefetch<T>(v: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(x) = v.get(i) {
        // SAFETY: SSE is part of the x86-64 baseline; a prefetch never faults and `x` is a valid reference anyway.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                (x as *const T).cast::<i8>(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (v, i);
}

#[cfg(test)]
mod tests {
    use super::wide;

    #[test]
    fn wide_runs_the_closure_once_and_returns_its_value() {
        let mut calls = 0;
        let v = wide(|| {
            calls += 1;
            (0..1000u32).map(|x| x as f32 * 0.5).sum::<f32>()
        });
        assert_eq!(calls, 1);
        assert_eq!(v, (0..1000u32).map(|x| x as f32 * 0.5).sum::<f32>());
    }
}
