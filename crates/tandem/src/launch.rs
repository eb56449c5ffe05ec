//! Starting a worker process, by either start method.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType, socketpair};

use crate::Error;
use crate::child::ChildProcess;
use crate::sys::bootstrap;
use crate::unit::StartMethod;
use crate::wire::{self, Kind};
use crate::worker::WorkerConfig;

/// A started worker process and the parent's end of its socket.
///
/// The socket is declared first so it is dropped first: a worker dropped on
/// an error path sees its connection close and exits, so reaping the child
/// (which may block when no reaper thread can be started) always ends.
pub(crate) struct Worker {
    pub socket: OwnedFd,
    pub child: ChildProcess,
}

/// Start a worker by `method` and send it `config`.
pub(crate) fn start(method: StartMethod, config: WorkerConfig) -> Result<Worker, Error> {
    let worker = match method {
        StartMethod::Spawn => reexec()?,
        StartMethod::ForkServer => crate::forkserver::start_worker()?,
    };
    if config != WorkerConfig::default() {
        wire::send(worker.socket.as_fd(), Kind::Config, &[&config.to_bytes()], &[])
            .map_err(|e| Error::os("configuring a new worker", e))?;
    }
    Ok(worker)
}

/// Start a worker by re-executing this binary (`/proc/self/exe`) with its
/// socket on standard input, in a process group of its own.
pub(crate) fn reexec() -> Result<Worker, Error> {
    let (ours, theirs) = socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
        .map_err(|e| Error::os("creating a socket for a new worker", e))?;
    let (token, hex) = bootstrap::new_token().map_err(|e| Error::os("making a worker token", e))?;
    let exe_name = std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tandem".into());
    let child = Command::new("/proc/self/exe")
        .arg0(format!("{exe_name} [tandem worker]"))
        .env(bootstrap::WORKER_ENV, hex)
        .stdin(Stdio::from(theirs))
        .process_group(0)
        .spawn()
        .map_err(|e| Error::os("starting a worker process (re-executing /proc/self/exe)", e))?;
    let child = ChildProcess::direct(child).map_err(|e| Error::os("opening a pidfd for a new worker", e))?;
    rustix::net::send(ours.as_fd(), &token, SendFlags::NOSIGNAL)
        .map_err(|e| Error::os("sending the token to a new worker", e))?;
    Ok(Worker { child, socket: ours })
}
