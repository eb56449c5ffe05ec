//! [`StartMethod::Spawn`](super::StartMethod::Spawn): start a worker by
//! re-executing this binary (`/proc/self/exe`).

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType, socketpair,
};
use rustix::pipe::{PipeFlags, pipe_with};

use super::Worker;
use crate::Error;
use crate::child::ChildProcess;
use crate::child::reaper::REAPER;
use crate::sys::bootstrap;

/// Start a worker by re-executing this binary (`/proc/self/exe`) with its
/// socket on standard input, in a process group of its own.
///
/// The token goes with the read end of the worker's lifeline pipe; the
/// write end stays here, inside the [`ChildProcess`], and closes when this
/// process dies or lets the worker go, which kills the worker (see
/// `sys::bootstrap`).
pub(crate) fn start() -> Result<Worker, Error> {
    let (ours, theirs) = socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
        .map_err(|e| Error::os("creating a socket for a new worker", e))?;
    let (lifeline_theirs, lifeline) = pipe_with(PipeFlags::CLOEXEC)
        .map_err(|e| Error::os("creating a lifeline pipe for a new worker", e))?;
    let (token, hex) = bootstrap::new_token().map_err(|e| Error::os("making a worker token", e))?;
    let exe_name = std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tandem".into());
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0(format!("{exe_name} [tandem worker]"))
        .env(bootstrap::WORKER_ENV, hex)
        .stdin(Stdio::from(theirs))
        .process_group(0);
    let child = command
        .spawn()
        .map_err(|e| Error::os("starting a worker process (re-executing /proc/self/exe)", e))?;
    let child = ChildProcess::direct(child, lifeline, &REAPER)
        .map_err(|e| Error::os("opening a pidfd for a new worker", e))?;
    send_token(ours.as_fd(), &token, lifeline_theirs)
        .map_err(|e| Error::os("sending the token to a new worker", e))?;
    Ok(Worker { child, socket: ours, stderr: None })
}

/// Send the token and the worker's end of its lifeline, in one message.
fn send_token(
    sock: BorrowedFd<'_>,
    token: &[u8; bootstrap::TOKEN_LEN],
    lifeline: OwnedFd,
) -> rustix::io::Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [lifeline.as_fd()];
    control.push(SendAncillaryMessage::ScmRights(&fds));
    // A fresh socket's buffer takes 16 bytes at once: one call sends all.
    loop {
        match rustix::net::sendmsg(sock, &[IoSlice::new(token)], &mut control, SendFlags::NOSIGNAL) {
            Ok(n) if n == token.len() => return Ok(()),
            Ok(_) => return Err(rustix::io::Errno::MSGSIZE),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
