//! OpenBLAS's thread count, pinned to one for the calls whose rounding it would otherwise decide.
//!
//! OpenBLAS splits some of its routines' work among its threads, and with it their rounding: measured on
//! 2026-12-05, a single-precision [`crate::top_singular`]'s factors, and so an archive's bytes, differed between
//! `OPENBLAS_NUM_THREADS=1` and `2` (in double precision the rounding did not reach the factors' 4-bit levels on
//! the settings checked, but nothing guarantees it). On one thread the result depends on neither that variable nor
//! the machine's core count. The compressor's own threads keep the cores busy meanwhile.
#![allow(unsafe_code)] // two plain C calls into OpenBLAS's thread control; each block says why it is sound.

use std::os::raw::c_int;

extern "C" {
    fn openblas_get_num_threads() -> c_int;
    fn openblas_set_num_threads(n: c_int);
}

/// Runs `f` under the process-wide BLAS lock ([`ultradelta_core::blas::serialized`]) with OpenBLAS on one thread,
/// then gives OpenBLAS back the thread count it had (also if `f` panics).
pub(crate) fn one_thread<R>(f: impl FnOnce() -> R) -> R {
    ultradelta_core::blas::serialized(|| {
        struct Restore(c_int);
        impl Drop for Restore {
            fn drop(&mut self) {
                // SAFETY: a C call with no pointers, made while the BLAS lock is held (this closure runs inside
                // `serialized`, and every BLAS and LAPACK call of the workspace runs under that lock), so no other
                // thread of the process is inside OpenBLAS.
                unsafe { openblas_set_num_threads(self.0) }
            }
        }
        // SAFETY: as in `Restore::drop`.
        let _restore = Restore(unsafe { openblas_get_num_threads() });
        // SAFETY: as in `Restore::drop`.
        unsafe { openblas_set_num_threads(1) };
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_inside_and_the_count_restored_after() {
        // SAFETY: no BLAS call runs in this test binary's other tests while this one holds the lock.
        let before = ultradelta_core::blas::serialized(|| unsafe { openblas_get_num_threads() });
        // SAFETY: as above.
        let inside = one_thread(|| unsafe { openblas_get_num_threads() });
        assert_eq!(inside, 1);
        // SAFETY: as above.
        let after = ultradelta_core::blas::serialized(|| unsafe { openblas_get_num_threads() });
        assert_eq!(after, before);
    }
}
