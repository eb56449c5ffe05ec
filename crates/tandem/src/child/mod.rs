//! A child process held by its pidfd: killed and reaped without pid-reuse
//! races, and handed on if dropped before it was waited for.
//!
//! This module names no start method and no reaper. Who collects a child's
//! exit status is a [`Reap`] the start method hands in (our own child is
//! waited with `waitid(P_PIDFD)`, [`OwnChild`]; a fork-server worker's
//! status comes from the template's reports); where a child dropped unjoined
//! goes is an [`Orphanage`] (the reaper, [`reaper::REAPER`], which hands it to the crate's watcher thread). The two
//! seams play the parts of tokio's `Wait` and `OrphanQueue`.

pub(crate) mod reaper;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, LazyLock};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

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

/// Who collects a child's exit status.
pub(crate) trait Reap: Send + Sync {
    /// Whether this process is the child's parent. The kernel then keeps
    /// the child's pid (a zombie holds it) until [`Reap::wait`] collects
    /// it, so the pid names nobody else meanwhile; and the child must be
    /// waited for: it cannot be [forgotten](Reap::forget).
    fn is_parent(&self) -> bool;

    /// Block until the child `pid` (whose pidfd is `pidfd`) has exited,
    /// collect its status and say how it ended. Called at most once per
    /// child.
    fn wait(&self, pid: Pid, pidfd: BorrowedFd<'_>) -> io::Result<ExitStatus>;

    /// Nobody will [wait](Reap::wait) for `pid`, which has been killed:
    /// drop its status now or when it comes. Called only when
    /// [`is_parent`](Reap::is_parent) is false.
    fn forget(&self, pid: Pid);
}

/// Where a child goes that is dropped before it was reaped: something that
/// reaps it when it exits, without blocking whoever dropped it.
pub(crate) trait Orphanage: Sync {
    /// Take over `child`: it runs on (a detached unit finishes its task)
    /// and is reaped when it exits.
    fn adopt(&self, child: Unreaped);
}

/// Our own child (started with `std::process::Command`): `waitid(2)` on its
/// pidfd (`P_PIDFD`).
pub(crate) struct OwnChild;

impl Reap for OwnChild {
    fn is_parent(&self) -> bool {
        true
    }

    fn wait(&self, _pid: Pid, pidfd: BorrowedFd<'_>) -> io::Result<ExitStatus> {
        loop {
            match rustix::process::waitid(WaitId::PidFd(pidfd), WaitIdOptions::EXITED) {
                Ok(Some(status)) => return Ok(ExitStatus::from_wait(&status)),
                Ok(None) => continue,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Never called (an own child is always waited for); nothing to drop.
    fn forget(&self, _pid: Pid) {}
}

/// One shared [`OwnChild`] origin, so starting a child allocates nothing for it.
static OWN_CHILD: LazyLock<Arc<dyn Reap>> = LazyLock::new(|| Arc::new(OwnChild));

/// A child that has not been reaped: what an [`Orphanage`] takes over.
pub(crate) struct Unreaped {
    pid: Pid,
    /// Shared with whoever polls for the child's end meanwhile (a pool's
    /// lane), so the descriptor cannot close, and its number go to another
    /// file, under them.
    pidfd: Arc<OwnedFd>,
    origin: Arc<dyn Reap>,
    /// The write end of a re-executed worker's lifeline: while it is open
    /// the worker may live; closing it SIGKILLs the worker (see
    /// `sys::bootstrap`). Held until the worker is reaped or let go.
    lifeline: Option<OwnedFd>,
}

/// A running or finished child process that must be reaped exactly once.
pub(crate) struct ChildProcess {
    inner: Option<Unreaped>,
    status: Option<ExitStatus>,
    orphanage: &'static dyn Orphanage,
}

impl ChildProcess {
    /// Take ownership of a child started with `std::process::Command`, and
    /// the write end of its lifeline; if dropped unreaped it goes to
    /// `orphanage`. Opens its pidfd: `pidfd_open(2)`.
    pub(crate) fn direct(
        child: std::process::Child,
        lifeline: OwnedFd,
        orphanage: &'static dyn Orphanage,
    ) -> io::Result<ChildProcess> {
        let pid = Pid::from_raw(child.id() as i32).expect("a child's pid is positive");
        // Our unreaped child cannot be recycled, so this pid is still it.
        let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())?;
        let process =
            Unreaped { pid, pidfd: Arc::new(pidfd), origin: OWN_CHILD.clone(), lifeline: Some(lifeline) };
        Ok(ChildProcess { inner: Some(process), status: None, orphanage })
    }

    /// A child of another process (the fork-server template), held by a
    /// pidfd it sent us, whose status `origin` collects.
    pub(crate) fn reported(
        pid: Pid,
        pidfd: OwnedFd,
        origin: Arc<dyn Reap>,
        orphanage: &'static dyn Orphanage,
    ) -> ChildProcess {
        let process = Unreaped { pid, pidfd: Arc::new(pidfd), origin, lifeline: None };
        ChildProcess { inner: Some(process), status: None, orphanage }
    }

    fn process(&self) -> &Unreaped {
        self.inner.as_ref().expect("a ChildProcess is only emptied by drop")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process().pid.as_raw_nonzero().get() as u32
    }

    pub(crate) fn pidfd(&self) -> &OwnedFd {
        &self.process().pidfd
    }

    /// Its pidfd, to keep for as long as the holder polls it (no second
    /// descriptor: a pool of N workers holds N pidfds, not 2N).
    pub(crate) fn shared_pidfd(&self) -> Arc<OwnedFd> {
        self.process().pidfd.clone()
    }

    /// Whether it has been reaped here (its status collected by a wait), so
    /// it can run no more.
    pub(crate) fn reaped(&self) -> bool {
        self.status.is_some()
    }

    /// Whether it has exited (its pidfd is readable), without waiting.
    pub(crate) fn has_exited(&self) -> bool {
        poll_ready(self.pidfd().as_fd(), Some(Timespec { tv_sec: 0, tv_nsec: 0 }))
    }

    /// SIGKILL it and its process group; a process that already exited is
    /// not an error. `kill(2)` on the group, `pidfd_send_signal(2)` on the
    /// process.
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
        // we reap it; another process's child until its parent reaps it,
        // which happens only after it exits, so check that it is running.
        let pid_held = process.origin.is_parent() || !self.has_exited();
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
    /// own child; another process's child (a fork-server worker) is reaped
    /// by its parent, so only tell its origin the status is not wanted
    /// (saves three wake-ups).
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
        let Some(process) = &mut self.inner else { return Ok(()) };
        if process.origin.is_parent() {
            process.lifeline = None;
            self.wait().map(drop)
        } else {
            let _ = rustix::process::pidfd_send_signal(&process.pidfd, Signal::KILL);
            process.origin.forget(process.pid);
            self.status = Some(ExitStatus { signal: None, code: None });
            Ok(())
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

impl Unreaped {
    fn wait(&self) -> io::Result<ExitStatus> {
        self.origin.wait(self.pid, self.pidfd.as_fd())
    }

    /// Its pidfd, readable once it has exited.
    pub(crate) fn pidfd(&self) -> &OwnedFd {
        &self.pidfd
    }

    /// Block until it exits and reap it.
    pub(crate) fn reap(self) {
        let _ = self.wait();
    }
}

/// Poll one descriptor for readability, `poll(2)`; `None` waits forever.
pub(crate) fn poll_ready(fd: BorrowedFd<'_>, timeout: Option<Timespec>) -> bool {
    let mut pfd = [PollFd::new(&fd, PollFlags::IN)];
    matches!(rustix::event::poll(&mut pfd, timeout.as_ref()), Ok(n) if n > 0)
}

/// A child dropped before it was reaped goes to its orphanage: it runs on
/// (a detached unit finishes its task) and is reaped when it exits.
impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.status.is_none()
            && let Some(process) = self.inner.take()
        {
            self.orphanage.adopt(process);
        }
    }
}
