//! Becoming a worker: a hook before `main`, and the parent handshake.
//!
//! A re-executed binary must turn into a worker before anything else runs:
//! under `cargo test` the binary is libtest, which would otherwise start
//! running the whole test suite again inside the worker. An `.init_array`
//! entry (an ELF constructor) gives us that moment without a custom harness.
//!
//! The environment variable alone never makes a process a worker. The process
//! must also hold, on standard input, a socket created by its own parent
//! (`SO_PEERCRED` pid == `getppid()`) that delivers the random token named in
//! the variable. An unrelated process that sets the variable just runs `main`.
//!
//! With the token comes the worker's *lifeline*: the read end of a pipe whose
//! only write end the parent holds. The worker asks the kernel to SIGKILL it
//! when that write end closes ([`arm_lifeline`]), which happens when the
//! parent dies, however it dies, or lets go of the worker. That needs no
//! thread in the worker, and a task cannot catch or ignore it.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use super::code::Trusted;

/// The environment variable a parent sets on a worker it starts.
pub const WORKER_ENV: &str = "TANDEM_WORKER";
/// Length of the random token, in bytes.
pub const TOKEN_LEN: usize = 16;
/// How long a starting worker waits for its parent's token.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Register `$entry`, a `fn()` of the layer above, to run before `main` in
/// every process of this executable: an ELF `.init_array` entry (an ELF
/// constructor), which the dynamic loader calls before `main` and before
/// libtest or the user's code runs (`ld.so(8)`).
///
/// This layer never calls up: it does not name the worker loop. The crate
/// root invokes this macro with the worker's entry point, and the expansion
/// there is a `#[used]` static, placed in `.init_array` at link time,
/// holding a C-ABI function that calls `$entry`. So the entry is handed down
/// as a function pointer fixed at compile time: it is in place before
/// `main`, which a registration made at run time (from `main` or `init`)
/// could not be. `#[used]` keeps the static although nothing refers to it.
///
/// The attribute is the only unsafe part, so it lives here with its
/// soundness argument, and the expansion allows `unsafe_code` for that item
/// alone; the entry itself is an ordinary safe Rust function.
macro_rules! run_before_main {
    ($entry:path) => {
        #[used]
        #[allow(unsafe_code)]
        // only the attribute below, argued where the macro is defined
        // SAFETY (of the attribute): `.init_array` entries are called by the
        // dynamic loader with the C ABI before `main`; the function stored
        // here has that ABI and takes no arguments it would misread (extra
        // register arguments are ignored). It must not unwind, and an
        // `extern "C"` function aborts instead of unwinding.
        #[unsafe(link_section = ".init_array")]
        static BEFORE_MAIN: extern "C" fn() = {
            extern "C" fn before_main() {
                $entry()
            }
            before_main
        };
    };
}
pub(crate) use run_before_main;

/// A worker's channel to its parent, proven to come from that parent.
pub struct ParentLink {
    /// The socket to the parent, moved off standard input and close-on-exec.
    pub socket: OwnedFd,
    /// Proof for [`super::code::resolve`].
    pub trusted: Trusted,
    /// The armed lifeline of a re-executed worker (see the module docs),
    /// held open for the process's life. `None` in a fork-server worker,
    /// which dies with its template through the parent-death signal.
    #[allow(dead_code)] // held open, never read
    pub lifeline: Option<OwnedFd>,
}

/// The outcome of looking for a parent handshake at start-up.
pub enum Claim {
    /// No marker in the environment: an ordinary process.
    NotAWorker,
    /// A worker: its parent link.
    Worker(ParentLink),
    /// The marker was set but the handshake failed; the reason.
    Refused(String),
    /// A worker whose parent died before the handshake finished: it must
    /// exit quietly, never run `main` in the background.
    Orphaned,
}

enum Failure {
    NotOurs(String),
    ParentGone,
}

impl From<String> for Failure {
    fn from(why: String) -> Failure {
        Failure::NotOurs(why)
    }
}

impl From<&str> for Failure {
    fn from(why: &str) -> Failure {
        Failure::NotOurs(why.into())
    }
}

/// Random token for a new worker, as hex for its environment: `getrandom(2)`.
pub fn new_token() -> io::Result<([u8; TOKEN_LEN], String)> {
    let mut token = [0u8; TOKEN_LEN];
    rustix::rand::getrandom(&mut token, rustix::rand::GetRandomFlags::empty())?;
    let hex = token.iter().map(|b| format!("{b:02x}")).collect();
    Ok((token, hex))
}

/// Look for a parent handshake. Call once, early, while single-threaded:
/// `getenv(3)`, `unsetenv(3)`, then the handshake on standard input
/// (`getsockopt(2)` `SO_PEERCRED`, `recvmsg(2)` with `SCM_RIGHTS`,
/// `fcntl(2)` for the lifeline, `close_range(2)`).
pub fn claim() -> Claim {
    let Some(value) = std::env::var_os(WORKER_ENV) else {
        return Claim::NotAWorker;
    };
    remove_marker();
    match handshake(value.to_str().unwrap_or("")) {
        Ok(link) => Claim::Worker(link),
        Err(Failure::NotOurs(why)) => Claim::Refused(why),
        Err(Failure::ParentGone) => Claim::Orphaned,
    }
}

/// Remove the marker so programs the task runs never see it: `unsetenv(3)`.
fn remove_marker() {
    // Changing the environment races with other threads reading it; only do
    // it while this process has one thread (true before `main`).
    if super::fork::is_single_threaded() {
        // SAFETY: the process has a single thread, so nothing reads the
        // environment concurrently.
        unsafe { std::env::remove_var(WORKER_ENV) };
    }
}

/// Check standard input and the token that comes on it: `fstat(2)`,
/// `getsockopt(2)` `SO_PEERCRED` (`unix(7)`), `getppid(2)`, `dup2(2)`.
fn handshake(hex: &str) -> Result<ParentLink, Failure> {
    let expected = parse_hex(hex).ok_or("the marker is not a token")?;
    // The raw descriptor: std's `Stdin` would set up a buffered reader
    // this process never uses.
    let fd = rustix::stdio::stdin();
    let stat = rustix::fs::fstat(fd).map_err(|e| format!("standard input: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err("standard input is not a socket".into());
    }
    let peer = rustix::net::sockopt::socket_peercred(fd)
        .map_err(|e| format!("standard input is not a local socket: {e}"))?;
    let (got, lifeline) = read_token(fd)?;
    if got != expected {
        return Err("the parent's token does not match".into());
    }
    let mut lifeline = lifeline.ok_or("the parent sent no lifeline with the token")?;
    if lifeline.as_raw_fd() < 3 {
        // It took the lowest free number, a standard stream the parent had
        // closed: move it out of the way of the streams.
        lifeline = rustix::io::fcntl_dupfd_cloexec(&lifeline, 3).map_err(|e| e.to_string())?;
    }
    arm_lifeline(&lifeline).map_err(|e| format!("arming the lifeline: {e}"))?;
    // Armed: from now on the parent's death kills us. If it died before,
    // its end is already closed, which shows as a hang-up.
    let mut pfd = [PollFd::new(&lifeline, PollFlags::empty())];
    if !matches!(rustix::event::poll(&mut pfd, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(0)) {
        return Err(Failure::ParentGone);
    }
    if Some(peer.pid) != rustix::process::getppid() {
        // The right token on a socket made by a process that is no longer
        // our parent: it was, and it died before the handshake finished
        // (we were re-parented). A stranger could not know the token.
        return Err(Failure::ParentGone);
    }
    close_inherited_descriptors(lifeline.as_fd());
    let socket = rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(|e| e.to_string())?;
    let null = std::fs::File::open("/dev/null").map_err(|e| e.to_string())?;
    rustix::stdio::dup2_stdin(&null).map_err(|e| e.to_string())?;
    Ok(ParentLink { socket, trusted: Trusted(()), lifeline: Some(lifeline) })
}

/// Read the token, and the lifeline that rides with it, within
/// [`HANDSHAKE_LIMIT`]: `poll(2)`, then `recvmsg(2)` with `SCM_RIGHTS`
/// (`unix(7)`).
fn read_token(fd: BorrowedFd<'_>) -> Result<([u8; TOKEN_LEN], Option<OwnedFd>), Failure> {
    let deadline = Instant::now() + HANDSHAKE_LIMIT;
    let mut got = [0u8; TOKEN_LEN];
    let mut filled = 0;
    let mut lifeline = None;
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    while filled < TOKEN_LEN {
        let left = Timespec::try_from(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| "the parent sent no token")?;
        let mut pfd = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut pfd, Some(&left)) {
            Ok(1) => {}
            Err(rustix::io::Errno::INTR) => continue,
            _ => return Err("the parent sent no token".into()),
        }
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut got[filled..])];
        let flags = RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC;
        let received = match rustix::net::recvmsg(fd, &mut iov, &mut control, flags) {
            Ok(received) => received,
            Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => continue,
            Err(e) => return Err(format!("reading the token: {e}").into()),
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                for received_fd in fds {
                    lifeline.get_or_insert(received_fd);
                }
            }
        }
        // The parent closed the socket without a token: it gave up on us.
        if received.bytes == 0 {
            return Err(Failure::ParentGone);
        }
        filled += received.bytes;
    }
    Ok((got, lifeline))
}

/// Have the kernel SIGKILL this process when every write end of the
/// `lifeline` pipe is closed: the pipe signals its owner (`F_SETOWN`) on a
/// hang-up once `O_ASYNC` is set, with the signal chosen by `F_SETSIG`.
/// SIGKILL cannot be caught, blocked or ignored, so no task can turn this
/// off by accident, and no thread has to watch for it. `fcntl(2)`
/// (`F_SETOWN`, `F_SETSIG`, `F_GETFL`/`F_SETFL`).
fn arm_lifeline(lifeline: &OwnedFd) -> io::Result<()> {
    // Linux's value on every architecture (asm-generic/fcntl.h); the libc
    // crate does not export it.
    const F_SETSIG: libc::c_int = 10;
    let fd = lifeline.as_raw_fd();
    let me = rustix::process::getpid().as_raw_nonzero().get();
    // SAFETY: fcntl on a descriptor we own, with integer arguments only
    // (F_SETOWN: our pid; F_SETSIG: a signal number; F_SETFL: flags); none
    // of these commands reads or writes memory through its argument.
    unsafe {
        if libc::fcntl(fd, libc::F_SETOWN, me) == -1 || libc::fcntl(fd, F_SETSIG, libc::SIGKILL) == -1 {
            return Err(io::Error::last_os_error());
        }
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags == -1 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The token from its hex form in the environment; no system call.
fn parse_hex(hex: &str) -> Option<[u8; TOKEN_LEN]> {
    if hex.len() != TOKEN_LEN * 2 {
        return None;
    }
    let mut out = [0u8; TOKEN_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Proof of trust for a process forked from a trusted worker (the fork-server
/// template): the child is a copy of an already-verified process. No system
/// call.
pub fn inherit(parent: &ParentLink, socket: OwnedFd) -> ParentLink {
    ParentLink { socket, trusted: parent.trusted, lifeline: None }
}

/// Close every descriptor above standard error but the lifeline: `exec`
/// keeps descriptors the parent opened without close-on-exec, and a Spawn
/// worker must inherit nothing but its socket (on standard input at this
/// point) and the lifeline that came with the token. `close_range(2)`.
fn close_inherited_descriptors(lifeline: BorrowedFd<'_>) {
    let keep = lifeline.as_raw_fd() as u32;
    // SAFETY: this runs during the handshake, before `main` and before any
    // code of this process has opened a descriptor it owns above 2 other
    // than the lifeline, which is skipped; nothing holds an `OwnedFd` that
    // this could invalidate.
    unsafe {
        if keep > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, keep - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
    }
}
