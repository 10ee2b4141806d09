//! Atomic exchange of two paths (Linux `renameat2(RENAME_EXCHANGE)`), for replacing an output folder with no
//! moment at which the final path is missing. Elsewhere, or where the filesystem does not support it, the caller
//! falls back to two renames and the next run recovers (see `writer.rs`).

use std::path::Path;

/// Swaps `a` and `b` atomically. `Ok(false)` when this system or filesystem cannot (the caller falls back).
#[cfg(target_os = "linux")]
pub(crate) fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call; renameat2 only reads them,
    // and AT_FDCWD makes relative paths relative to the working directory, as std's rename does.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // not supported by the kernel, the C library or the filesystem
        Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(e),
    }
}

/// Swaps `a` and `b` atomically. `Ok(false)`: not available here (the caller falls back).
#[cfg(not(target_os = "linux"))]
pub(crate) fn exchange(_a: &Path, _b: &Path) -> std::io::Result<bool> {
    Ok(false)
}
