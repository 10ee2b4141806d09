//! Ctrl-C (SIGINT) and SIGTERM during `compress`, `apply`, `verify` and `eval`: the first one stops the work at the
//! next tensor (the facade polls [`ultradelta::Progress::cancelled`]), and the writers remove what they had started
//! (a hidden partial archive or folder); a second one ends the process at once, as without this module (the first
//! restores the default action).

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal received, or 0.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

#[cfg(unix)]
#[allow(unsafe_code)] // a signal handler: write(2) and signal(2) through libc; see the SAFETY note.
extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls here: an atomic store, write(2) and signal(2).
    RECEIVED.store(sig, Ordering::Relaxed);
    const MSG: &[u8] = b"\nultradelta: interrupted: stopping at the next tensor (interrupt again to quit at once)\n";
    // SAFETY: write(2) and signal(2) are async-signal-safe; MSG is a valid buffer of its length.
    unsafe {
        libc::write(2, MSG.as_ptr().cast(), MSG.len());
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// Catches SIGINT and SIGTERM from now on (Unix; elsewhere the default action stays). A signal the process was
/// started ignoring stays ignored (a shell's background job ignores SIGINT, `nohup` SIGHUP).
#[allow(unsafe_code)] // installing the handler with signal(2); see the SAFETY note.
pub fn install() {
    #[cfg(unix)]
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only makes async-signal-safe calls; signal(2) with a valid function pointer or
        // SIG_IGN.
        unsafe {
            let before = libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
            if before == libc::SIG_IGN {
                libc::signal(sig, libc::SIG_IGN);
            }
        }
    }
}

/// The signal received since [`install`], if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::Relaxed) {
        0 => None,
        sig => Some(sig),
    }
}

/// The signal's name, for the error line.
pub fn name(sig: i32) -> String {
    #[cfg(unix)]
    match sig {
        libc::SIGINT => return "SIGINT (Ctrl-C)".into(),
        libc::SIGTERM => return "SIGTERM".into(),
        _ => {}
    }
    format!("signal {sig}")
}
