//! One OpenBLAS/LAPACK call at a time per process.
//!
//! Debian 12's OpenBLAS (0.3.21, pthread build) returns wrong results when two threads of one process call it at
//! the same time: run in parallel, `ultradelta-rescale`'s tests saw `ssyev` fail to converge on well-conditioned
//! Gram matrices ("return_code = 399" of 400) and estimates off by far more than their bound, a different test
//! each run; with one test thread, or `OPENBLAS_NUM_THREADS=1`, every run passed (measured on the 2-core machine,
//! 2026-12-04). Long-standing upstream reports describe the same class of race (OpenMathLib/OpenBLAS #1755,
//! #2126, #5825). The compressor calls BLAS from one thread at a time, but library users, the Python binding and
//! test harnesses need not: every BLAS- or LAPACK-using function of this workspace (`ultradelta-rescale`'s nuclear
//! norms, `ultradelta-baselines`' low-rank SVD) runs inside [`serialized`], so concurrent callers queue instead of
//! corrupting each other. OpenBLAS keeps its own threads inside each call.
//!
//! The lock is re-entrant per thread (a locked function may call another), and a panic inside releases it.
//! Code inside must not wait on work that itself needs the lock from another thread (for instance a rayon job
//! that calls BLAS): none of the workspace's locked code uses rayon.

use std::cell::Cell;
use std::sync::{Mutex, PoisonError};

static LOCK: Mutex<()> = Mutex::new(());

thread_local! {
    static HELD: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` while holding the process-wide BLAS lock (at once if this thread already holds it).
pub fn serialized<R>(f: impl FnOnce() -> R) -> R {
    if HELD.with(Cell::get) {
        return f();
    }
    let _guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    struct Held;
    impl Drop for Held {
        fn drop(&mut self) {
            HELD.with(|h| h.set(false));
        }
    }
    HELD.with(|h| h.set(true));
    // Dropped before the guard: the flag is cleared, then the lock released (also on panic).
    let _held = Held;
    f()
}

#[cfg(test)]
mod tests {
    use super::serialized;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn reentrant_and_exclusive() {
        assert_eq!(serialized(|| serialized(|| 7)), 7);
        static INSIDE: AtomicUsize = AtomicUsize::new(0);
        let max = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        serialized(|| {
                            let n = INSIDE.fetch_add(1, Ordering::SeqCst) + 1;
                            max.fetch_max(n, Ordering::SeqCst);
                            std::thread::yield_now();
                            INSIDE.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                });
            }
        });
        assert_eq!(
            max.load(Ordering::SeqCst),
            1,
            "two threads were inside at once"
        );
    }

    #[test]
    fn a_panic_releases_the_lock() {
        let caught = std::panic::catch_unwind(|| serialized(|| panic!("inside")));
        assert!(caught.is_err());
        let other = std::thread::spawn(|| serialized(|| 1)).join().unwrap();
        assert_eq!(other, 1);
        assert_eq!(serialized(|| 2), 2);
    }
}
