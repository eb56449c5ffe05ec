//! A child process held by its pidfd: killed and reaped without pid-reuse
//! races, and handed to the reaper if dropped before it was waited for.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

use crate::forkserver::StatusBook;

/// How long a worker whose connection ended may take to exit on its own
/// before it is killed (see [`ChildProcess::wait_or_kill`]). A dying process
/// closes its descriptors moments before it exits, so this is only reached
/// by a worker that hung up and kept running.
pub(crate) const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

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
    /// The write end of a re-executed worker's lifeline: while it is open
    /// the worker may live; closing it SIGKILLs the worker (see
    /// `sys::bootstrap`). Held until the worker is reaped or let go.
    lifeline: Option<OwnedFd>,
}

/// A running or finished child process that must be reaped exactly once.
pub(crate) struct ChildProcess {
    inner: Option<Process>,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Take ownership of a child started with `std::process::Command`, and
    /// the write end of its lifeline.
    pub(crate) fn direct(child: std::process::Child, lifeline: OwnedFd) -> io::Result<ChildProcess> {
        let pid = Pid::from_raw(child.id() as i32).expect("a child's pid is positive");
        // Our unreaped child cannot be recycled, so this pid is still it.
        let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())?;
        let process = Process { pid, pidfd, origin: Origin::Direct, lifeline: Some(lifeline) };
        Ok(ChildProcess { inner: Some(process), status: None })
    }

    pub(crate) fn forked(pid: Pid, pidfd: OwnedFd, book: Arc<StatusBook>) -> ChildProcess {
        let process = Process { pid, pidfd, origin: Origin::ForkServer(book), lifeline: None };
        ChildProcess { inner: Some(process), status: None }
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

    /// SIGKILL it and its process group; a process that already exited is
    /// not an error.
    ///
    /// Every worker leads a process group of its own (`process_group(0)` for
    /// Spawn, `setpgid` after a fork-server fork), which holds whatever its
    /// task started and left running: killing the group takes those down
    /// with the worker instead of leaving them orphaned.
    pub(crate) fn kill(&self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        let process = self.process();
        // The group id is the worker's pid, and it cannot name anyone else's
        // group while the worker's pid is held: our own child is held until
        // we reap it; a fork-server worker until its template reaps it, which
        // happens only after it exits, so check that it is still running.
        let pid_held = match process.origin {
            Origin::Direct => true,
            Origin::ForkServer(_) => {
                !poll_ready(process.pidfd.as_fd(), Some(Timespec { tv_sec: 0, tv_nsec: 0 }))
            }
        };
        if pid_held {
            // ESRCH: no group (the task moved the worker out of it); the
            // pidfd signal below still reaches the worker.
            let _ = rustix::process::kill_process_group(process.pid, Signal::KILL);
        }
        match rustix::process::pidfd_send_signal(self.pidfd(), Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Let go of a worker that delivered its result and is exiting: reap our
    /// own child; a fork-server worker is reaped by its template, so only
    /// tell the book its status is not wanted (saves three wake-ups).
    ///
    /// Our own child's lifeline is cut first, which ends it at once even if
    /// its task answered and then lingers (a hostile task), so this never
    /// waits long; a fork-server worker gets a SIGKILL for the same reason
    /// (it flushed its output before answering, so nothing is lost).
    ///
    /// Reaping here rather than handing the exiting worker to the reaper
    /// thread is measured to be faster for back-to-back spawns: the exit then
    /// overlaps the next worker's start on a 2-CPU machine and slows it by
    /// more than it saves.
    pub(crate) fn release(mut self) -> io::Result<()> {
        match &mut self.inner {
            Some(Process { origin: Origin::ForkServer(book), pid, pidfd, .. }) => {
                let _ = rustix::process::pidfd_send_signal(&*pidfd, Signal::KILL);
                book.forget(pid.as_raw_nonzero().get() as u32);
                self.status = Some(ExitStatus { signal: None, code: None });
                Ok(())
            }
            Some(process) => {
                process.lifeline = None;
                self.wait().map(drop)
            }
            None => Ok(()),
        }
    }

    /// Reap a worker whose connection ended: give it `grace` to exit on its
    /// own (then its status tells what happened), else SIGKILL it. A worker
    /// that closed or cut off its connection but kept running is no longer
    /// speaking the protocol, and waiting for it could take forever.
    pub(crate) fn wait_or_kill(&mut self, grace: std::time::Duration) -> io::Result<ExitStatus> {
        if self.status.is_none() {
            let grace = Timespec::try_from(grace).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 });
            if !poll_ready(self.pidfd().as_fd(), Some(grace)) {
                self.kill()?;
            }
        }
        self.wait()
    }

    /// If it was never reaped, hand it to the reaper.
    fn hand_to_reaper(&mut self) {
        if self.status.is_none() {
            if let Some(process) = self.inner.take() {
                crate::reaper::adopt(process);
            }
        }
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

/// A child dropped before it was reaped goes to the reaper: it runs on (a
/// detached unit finishes its task) and is reaped when it exits.
impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.hand_to_reaper();
    }
}
