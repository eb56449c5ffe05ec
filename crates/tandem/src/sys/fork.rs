//! fork(2), only where it is sound, and `_exit(2)`.
//!
//! After `fork` in a multi-threaded process the child may only make
//! async-signal-safe calls, because locks held by other threads stay locked.
//! So this module offers one shape: a full fork from a process that is
//! verifiably single-threaded (the fork-server template). (The raw forked
//! children of the OS-floor measurements are the `tandem-floor` crate's own.)

use std::io;

use rustix::process::Pid;

/// Which side of a fork this is.
pub enum Forked {
    /// The new process.
    Child,
    /// The original process; the child's pid.
    Parent(Pid),
}

/// Whether this process has exactly one thread.
///
/// `unshare(CLONE_THREAD)` succeeds, changing nothing, only when the calling
/// thread is alone in its thread group, and fails with `EINVAL` otherwise:
/// one syscall, where reading `/proc/self/task` takes five and an allocation.
pub fn is_single_threaded() -> bool {
    // SAFETY: unshare with CLONE_THREAD alone either fails (more than one
    // thread) or succeeds without changing anything (one thread): there is
    // nothing to unshare, so no state of this process is altered.
    unsafe { libc::unshare(libc::CLONE_THREAD) == 0 }
}

/// `fork(2)` for a process that has exactly one thread.
///
/// Fails with `Unsupported` in a multi-threaded process, where the child
/// could inherit locks held by threads that no longer exist.
pub fn fork_single_threaded() -> io::Result<Forked> {
    if !is_single_threaded() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "fork from a process with more than one thread (the fork server must stay single-threaded)",
        ));
    }
    // SAFETY: the process has one thread (checked just above, and only this
    // thread could start another), so the child inherits no lock held by a
    // thread that does not exist in it and may run arbitrary code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid).expect("fork returned a positive pid"))),
    }
}

/// Exit now, without running atexit handlers or unwinding: `_exit(2)`.
///
/// For a worker whose parent is gone, and for forked children that must not
/// flush buffers they share with their parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_threaded_only_when_alone() {
        // A second thread, alive during the check.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || wait.recv());
        assert!(!is_single_threaded());
        release.send(()).unwrap();
        helper.join().unwrap().unwrap();

        // A forked child has one thread: the one that called fork.
        // SAFETY: the child only makes the unshare syscall (through
        // `is_single_threaded`) and `_exit`s, both async-signal-safe.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            exit_now(if is_single_threaded() { 0 } else { 1 });
        }
        let pid = Pid::from_raw(pid).unwrap();
        let status =
            rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()).unwrap().unwrap().1;
        assert_eq!(status.exit_status(), Some(0), "a lone thread was not seen as single-threaded");
    }
}
