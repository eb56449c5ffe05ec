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

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};

use super::code::Trusted;

/// The environment variable a parent sets on a worker it starts.
pub const WORKER_ENV: &str = "TANDEM_WORKER";
/// Length of the random token, in bytes.
pub const TOKEN_LEN: usize = 16;
/// How long a starting worker waits for its parent's token.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

#[used]
#[unsafe(link_section = ".init_array")]
// SAFETY (of the attribute): `.init_array` entries are called by the dynamic
// loader with the C ABI before `main`; `before_main` has that ABI and takes no
// arguments it would misread (extra register arguments are ignored).
static BEFORE_MAIN: extern "C" fn() = before_main;

extern "C" fn before_main() {
    crate::worker::run_if_worker();
}

/// A worker's channel to its parent, proven to come from that parent.
pub struct ParentLink {
    /// The socket to the parent, moved off standard input and close-on-exec.
    pub socket: OwnedFd,
    /// Proof for [`super::code::resolve`].
    pub trusted: Trusted,
}

/// The outcome of looking for a parent handshake at start-up.
pub enum Claim {
    /// No marker in the environment: an ordinary process.
    NotAWorker,
    /// A worker: its parent link.
    Worker(ParentLink),
    /// The marker was set but the handshake failed; the reason.
    Refused(String),
}

/// Random token for a new worker, as hex for its environment.
pub fn new_token() -> io::Result<([u8; TOKEN_LEN], String)> {
    let mut token = [0u8; TOKEN_LEN];
    rustix::rand::getrandom(&mut token, rustix::rand::GetRandomFlags::empty())?;
    let hex = token.iter().map(|b| format!("{b:02x}")).collect();
    Ok((token, hex))
}

/// Look for a parent handshake. Call once, early, while single-threaded.
pub fn claim() -> Claim {
    let Some(value) = std::env::var_os(WORKER_ENV) else {
        return Claim::NotAWorker;
    };
    remove_marker();
    match handshake(value.to_str().unwrap_or("")) {
        Ok(link) => Claim::Worker(link),
        Err(why) => Claim::Refused(why),
    }
}

/// Remove the marker so programs the task runs never see it.
fn remove_marker() {
    // Changing the environment races with other threads reading it; only do
    // it while this process has one thread (true before `main`).
    if super::fork::thread_count().ok() == Some(1) {
        // SAFETY: the process has a single thread, so nothing reads the
        // environment concurrently.
        unsafe { std::env::remove_var(WORKER_ENV) };
    }
}

fn handshake(hex: &str) -> Result<ParentLink, String> {
    let expected = parse_hex(hex).ok_or("the marker is not a token")?;
    let stdin = io::stdin();
    let fd = stdin.as_fd();
    let stat = rustix::fs::fstat(fd).map_err(|e| format!("standard input: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err("standard input is not a socket".into());
    }
    let peer = rustix::net::sockopt::socket_peercred(fd)
        .map_err(|e| format!("standard input is not a local socket: {e}"))?;
    if Some(peer.pid) != rustix::process::getppid() {
        return Err("the socket on standard input was not made by this process's parent".into());
    }
    let limit = Timespec::try_from(HANDSHAKE_LIMIT).expect("small duration");
    let mut pfd = [PollFd::new(&fd, PollFlags::IN)];
    match rustix::event::poll(&mut pfd, Some(&limit)) {
        Ok(1) => {}
        _ => return Err("the parent sent no token".into()),
    }
    let mut got = [0u8; TOKEN_LEN];
    {
        let mut reader = std::fs::File::from(fd.try_clone_to_owned().map_err(|e| e.to_string())?);
        reader.read_exact(&mut got).map_err(|e| format!("reading the token: {e}"))?;
    }
    if got != expected {
        return Err("the parent's token does not match".into());
    }
    close_inherited_descriptors();
    let socket = rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(|e| e.to_string())?;
    let null = std::fs::File::open("/dev/null").map_err(|e| e.to_string())?;
    rustix::stdio::dup2_stdin(&null).map_err(|e| e.to_string())?;
    Ok(ParentLink { socket, trusted: Trusted(()) })
}

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
/// template): the child is a copy of an already-verified process.
pub fn inherit(parent: &ParentLink, socket: OwnedFd) -> ParentLink {
    ParentLink { socket, trusted: parent.trusted }
}

/// Close every descriptor above standard error: `exec` keeps descriptors the
/// parent opened without close-on-exec, and a Spawn worker must inherit
/// nothing but its socket (which is on standard input at this point).
fn close_inherited_descriptors() {
    // SAFETY: this runs during the handshake, before `main` and before any
    // code of this process has opened a descriptor it owns above 2; nothing
    // holds an `OwnedFd` that this could invalidate.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
}
