//! Reading a worker's memory from its parent: `process_vm_readv(2)` and
//! `process_vm_writev(2)`, one copy from the worker's heap to the parent's
//! with no shared mapping in between.
//!
//! A parent may read its descendants under the default ptrace rules (same
//! user, dumpable) and Yama's scope 1; seccomp profiles, Yama's scopes 2
//! and 3 and some LSMs forbid it, so [`parent_can_read_children`] tries it
//! once on a forked child before anything relies on it. A read names the
//! process by pid, which could be another process's by the time of the
//! read if the worker died and was reaped: each read is judged against
//! the worker's pidfd afterwards, and its bytes thrown away unless that
//! worker was still alive when the read ended (it was, then, all along).

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::OnceLock;

/// Why a read of another process's memory failed.
#[derive(Debug)]
pub enum ReadError {
    /// The process is gone (or exited during the read).
    Gone,
    /// Its memory does not hold what was asked for (`EFAULT`, a short
    /// read), or the call was refused.
    Failed(io::Error),
}

/// Append `len` bytes at `addr` in process `pid` (whose pidfd is `pidfd`)
/// to `out`. `out` is left as it was on failure.
pub fn read_from(
    pid: u32,
    pidfd: BorrowedFd<'_>,
    addr: u64,
    len: usize,
    out: &mut Vec<u8>,
) -> Result<(), ReadError> {
    out.reserve_exact(len);
    let start = out.len();
    let mut done = 0usize;
    while done < len {
        let spare = &mut out.spare_capacity_mut()[done..len];
        let local = libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() };
        let remote = libc::iovec {
            iov_base: (addr as usize).wrapping_add(done) as *mut libc::c_void,
            iov_len: len - done,
        };
        // SAFETY: `process_vm_readv(2)` writes at most `local.iov_len`
        // bytes into `local`, which is spare capacity of `out` this borrow
        // holds exclusively; the remote side is only read, in another
        // process, and a bad remote address is an error, not a fault here.
        let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            let e = if n < 0 {
                io::Error::last_os_error()
            } else {
                io::Error::new(io::ErrorKind::UnexpectedEof, format!("read {done} of {len} bytes"))
            };
            // A process that died may have taken its pid with it, or left
            // it to another: either way it is gone, not lying.
            return Err(if e.raw_os_error() == Some(libc::ESRCH) || exited(pidfd) {
                ReadError::Gone
            } else {
                ReadError::Failed(e)
            });
        }
        done += n as usize;
    }
    if exited(pidfd) {
        return Err(ReadError::Gone);
    }
    // SAFETY: the `len` bytes after `start` were written by the reads above.
    unsafe { out.set_len(start + len) };
    Ok(())
}

/// Write `bytes` at `addr` in process `pid`; best effort (a process that
/// is gone or lied about the address only loses what it asked for).
pub fn write_to(pid: u32, pidfd: BorrowedFd<'_>, addr: u64, bytes: &[u8]) {
    if exited(pidfd) {
        return;
    }
    let local = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    let remote = libc::iovec { iov_base: addr as usize as *mut libc::c_void, iov_len: bytes.len() };
    // SAFETY: `process_vm_writev(2)` only reads `local` (a live borrow) and
    // writes another process's memory, checked by the kernel; checked
    // against the pidfd first, so the pid is the worker's (a race with its
    // death and reaping is the worker's loss: it is gone).
    let _ = unsafe { libc::process_vm_writev(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
}

/// Whether the process of `pidfd` has exited (its pidfd reads ready).
fn exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [rustix::event::PollFd::new(&pidfd, rustix::event::PollFlags::IN)];
    let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    match rustix::event::poll(&mut fds, Some(&zero)) {
        Ok(n) => n > 0,
        Err(_) => true,
    }
}

/// A word the probe reads in its child (the same address there: the child
/// is a fork).
static PROBE: u64 = 0x7461_6e64_656d_2101;

/// Whether this process may read its children's memory: tried once, on a
/// forked child that only waits to be killed, and remembered.
pub fn parent_can_read_children() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(probe)
}

fn probe() -> bool {
    // SAFETY: `fork(2)` in a possibly multi-threaded process: the child
    // calls only async-signal-safe functions (`prctl`, `pause`, `_exit`)
    // and never returns into Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return false;
    }
    if pid == 0 {
        // SAFETY: async-signal-safe calls only, as above; the child dies
        // with the parent and otherwise waits for its SIGKILL.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            loop {
                libc::pause();
            }
        }
    }
    let child = pid as u32;
    let mut word = [0u8; 8];
    let local = libc::iovec { iov_base: word.as_mut_ptr().cast(), iov_len: 8 };
    let remote = libc::iovec { iov_base: std::ptr::addr_of!(PROBE) as *mut libc::c_void, iov_len: 8 };
    // SAFETY: writes at most 8 bytes into `word`, a live local array.
    let n = unsafe { libc::process_vm_readv(child as libc::pid_t, &local, 1, &remote, 1, 0) };
    let ok = n == 8 && u64::from_ne_bytes(word) == PROBE;
    // SAFETY: `kill(2)` and `waitpid(2)` of the child forked above, which
    // nothing else reaps (tandem waits on its workers through pidfds).
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
    ok
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn this_machine_lets_a_parent_read_its_child() {
        // The test machine allows it (no Yama, no seccomp profile); where
        // it does not, tandem falls back to arenas.
        assert!(parent_can_read_children());
    }

    #[test]
    fn a_read_of_a_process_that_is_gone_says_so() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::PidfdFlags::empty(),
        )
        .unwrap();
        child.wait().unwrap();
        let mut out = Vec::new();
        assert!(matches!(read_from(pid, pidfd.as_fd(), 0x1000, 8, &mut out), Err(ReadError::Gone)));
        assert!(out.is_empty());
    }
}
