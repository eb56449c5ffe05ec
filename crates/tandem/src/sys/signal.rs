//! Process-wide signal settings a worker needs before `main` would set them.

/// Ignore SIGPIPE, as Rust's `main` does, so a write to a dead peer returns
/// `EPIPE` instead of killing the worker. A worker runs before `main`, so the
/// runtime has not done this yet. `signal(2)` with `SIG_IGN`.
pub fn ignore_sigpipe() {
    // SAFETY: signal(2) with SIG_IGN installs no handler code; it only changes
    // the disposition, which is sound at any time.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Restore default dispositions for signals a worker must die of, in case the
/// parent ignored them (ignored dispositions survive exec). `signal(2)`
/// with `SIG_DFL`.
pub fn default_fatal_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: as above; SIG_DFL installs no handler code.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// Ignore SIGXFSZ, so a write past RLIMIT_FSIZE fails with `EFBIG` instead
/// of killing the worker (a sandbox's `max_file_size`). `signal(2)`.
pub fn ignore_sigxfsz() {
    // SAFETY: as above; SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
