//! A child process held by its pidfd: killed and reaped without pid-reuse
//! races, and handed to the reaper if dropped before it was waited for.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

use crate::forkserver::StatusBook;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExitStatus {
    pub signal: Option<i32>,
    pub code: Option<i32>,
}

impl ExitStatus {
    pub(crate) fn from_wait(status: &rustix::process::WaitIdStatus) -> ExitStatus {
        ExitStatus { signal: status.terminating_signal(), code: status.exit_status() }
    }
}

/// Who can collect the exit status.
#[derive(Clone)]
pub(crate) enum Origin {
    /// Our own child: `waitid(P_PIDFD)`.
    Direct,
    /// A child of the fork-server template, which reports its status.
    ForkServer(Arc<StatusBook>),
}

pub(crate) struct Process {
    pid: Pid,
    pidfd: OwnedFd,
    origin: Origin,
}

/// A running or finished child process that must be reaped exactly once.
pub(crate) struct ChildProcess {
    inner: Option<Process>,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Take ownership of a child started with `std::process::Command`.
    pub(crate) fn direct(child: std::process::Child) -> io::Result<ChildProcess> {
        let pid = Pid::from_raw(child.id() as i32).expect("a child's pid is positive");
        // Our unreaped child cannot be recycled, so this pid is still it.
        let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())?;
        Ok(ChildProcess { inner: Some(Process { pid, pidfd, origin: Origin::Direct }), status: None })
    }

    pub(crate) fn forked(pid: Pid, pidfd: OwnedFd, book: Arc<StatusBook>) -> ChildProcess {
        ChildProcess { inner: Some(Process { pid, pidfd, origin: Origin::ForkServer(book) }), status: None }
    }

    fn process(&self) -> &Process {
        self.inner.as_ref().expect("a ChildProcess is only emptied by drop")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process().pid.as_raw_nonzero().get() as u32
    }

    pub(crate) fn pidfd(&self) -> &OwnedFd {
        &self.process().pidfd
    }

    /// SIGKILL it; a process that already exited is not an error.
    pub(crate) fn kill(&self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        match rustix::process::pidfd_send_signal(self.pidfd(), Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether it has exited (without reaping it).
    pub(crate) fn has_exited(&self) -> bool {
        self.status.is_some() || poll_ready(self.pidfd().as_fd(), Some(Timespec { tv_sec: 0, tv_nsec: 0 }))
    }

    /// Let go of a worker that delivered its result and is exiting: reap our
    /// own child; a fork-server worker is reaped by its template, so only
    /// tell the book its status is not wanted (saves three wake-ups).
    pub(crate) fn release(mut self) -> io::Result<()> {
        if let Some(Process { origin: Origin::ForkServer(book), pid, .. }) = &self.inner {
            book.forget(pid.as_raw_nonzero().get() as u32);
            self.status = Some(ExitStatus { signal: None, code: None });
            return Ok(());
        }
        self.wait().map(drop)
    }

    /// Block until it exits, reap it, and say how it ended.
    pub(crate) fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.process().wait()?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Process {
    fn wait(&self) -> io::Result<ExitStatus> {
        match &self.origin {
            Origin::Direct => loop {
                match rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED) {
                    Ok(Some(status)) => return Ok(ExitStatus::from_wait(&status)),
                    Ok(None) => continue,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            },
            Origin::ForkServer(book) => {
                while !poll_ready(self.pidfd.as_fd(), None) {}
                Ok(book.take(self.pid.as_raw_nonzero().get() as u32))
            }
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            if let Some(process) = self.inner.take() {
                crate::reaper::adopt(process, None);
            }
        }
    }
}

/// Hand a child that nobody will join to the reaper, with the socket whose
/// output must be drained so the child can finish.
pub(crate) fn detach(mut child: ChildProcess, drain: Option<OwnedFd>) {
    if child.status.is_none() {
        if let Some(process) = child.inner.take() {
            crate::reaper::adopt(process, drain);
        }
    }
}

impl Process {
    pub(crate) fn pidfd(&self) -> &OwnedFd {
        &self.pidfd
    }
    pub(crate) fn reap(self) {
        let _ = self.wait();
    }
}

/// Poll one descriptor for readability; `None` waits forever.
pub(crate) fn poll_ready(fd: BorrowedFd<'_>, timeout: Option<Timespec>) -> bool {
    let mut pfd = [PollFd::new(&fd, PollFlags::IN)];
    matches!(rustix::event::poll(&mut pfd, timeout.as_ref()), Ok(n) if n > 0)
}
