//! [`StartMethod::ForkServer`](super::StartMethod::ForkServer), the parent's
//! side: a single-threaded template process, started once by re-executing
//! this binary ([`super::reexec`]), forks every new worker.
//!
//! Workers forked from the template inherit nothing of the caller's threads,
//! locks or open files: the template was exec'd fresh and never starts a
//! thread. Forked workers are the template's children, so the template reaps
//! them and reports each exit status on a second socket; a thread in the
//! parent files those reports in a [`StatusBook`], which is how the
//! workers' [`ChildProcess`] handles collect them (it is their [`Reap`]).
//! The template's side is [`super::template`].

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
use rustix::process::Pid;

use super::template::parse_exited;
use super::{Worker, reexec};
use crate::Error;
use crate::child::reaper::REAPER;
use crate::child::{ChildProcess, ExitStatus, Reap, poll_ready};
use crate::wire::{self, Frame, Kind};

/// Exit statuses of forked workers, as the template reports them.
pub(crate) struct StatusBook {
    state: Mutex<BookState>,
    filed: Condvar,
}

#[derive(Default)]
struct BookState {
    exits: HashMap<u32, ExitStatus>,
    /// Workers whose status nobody will ask for: dropped when filed.
    unwanted: HashSet<u32>,
    template_gone: bool,
}

impl StatusBook {
    /// Wait for and remove the status of `pid`. If the template died first,
    /// the worker died with it (SIGKILL through its death signal).
    fn take(&self, pid: u32) -> ExitStatus {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(status) = state.exits.remove(&pid) {
                return status;
            }
            if state.template_gone {
                return ExitStatus { signal: Some(libc::SIGKILL), code: None };
            }
            state = self.filed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Nobody will `take` the status of `pid`: drop it now or when it comes.
    /// The template reports statuses in the order its workers exit, so a
    /// recycled pid's new status always comes after the old one.
    fn forget(&self, pid: u32) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.exits.remove(&pid).is_none() && !state.template_gone {
            state.unwanted.insert(pid);
        }
    }

    fn file(&self, pid: u32, status: ExitStatus) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.unwanted.remove(&pid) {
            state.exits.insert(pid, status);
            self.filed.notify_all();
        }
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).template_gone = true;
        self.filed.notify_all();
    }
}

/// A forked worker is the template's child, not ours: its status comes
/// through the book.
impl Reap for StatusBook {
    fn is_parent(&self) -> bool {
        false
    }

    fn wait(&self, pid: Pid, pidfd: BorrowedFd<'_>) -> io::Result<ExitStatus> {
        while !poll_ready(pidfd, None) {}
        Ok(self.take(pid.as_raw_nonzero().get() as u32))
    }

    fn forget(&self, pid: Pid) {
        StatusBook::forget(self, pid.as_raw_nonzero().get() as u32);
    }
}

/// The parent's side of a running template.
struct Server {
    control: Mutex<OwnedFd>,
    book: Arc<StatusBook>,
    _template: ChildProcess,
}

static SERVER: Mutex<Option<Arc<Server>>> = Mutex::new(None);

/// Fork a new worker from the template, starting the template on first use
/// and again if it has died.
pub(crate) fn start() -> Result<Worker, Error> {
    let mut last = None;
    for _ in 0..2 {
        let server = {
            let mut slot = SERVER.lock().unwrap_or_else(|e| e.into_inner());
            match &*slot {
                Some(server) => server.clone(),
                None => {
                    let server = Arc::new(Server::start()?);
                    *slot = Some(server.clone());
                    server
                }
            }
        };
        match server.fork() {
            Ok(worker) => return Ok(worker),
            Err(e) => {
                // The template may be gone: forget it and start a new one.
                let mut slot = SERVER.lock().unwrap_or_else(|e| e.into_inner());
                if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, &server)) {
                    *slot = None;
                }
                last = Some(e);
            }
        }
    }
    Err(last.expect("the loop ran"))
}

impl Server {
    fn start() -> Result<Server, Error> {
        let template = reexec::start()?;
        // The template inherited the CPU affinity of whichever thread started
        // it, and would pass it to every worker it forks. Give it the
        // process's own (the main thread's) instead.
        let main_thread = rustix::process::getpid();
        if let Ok(mask) = rustix::thread::sched_getaffinity(Some(main_thread)) {
            let pid = Pid::from_raw(template.child.pid() as i32).expect("a child's pid is positive");
            let _ = rustix::thread::sched_setaffinity(Some(pid), &mask);
        }
        let (ours, theirs) = socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
            .map_err(|e| Error::os("creating the fork server's status socket", e))?;
        wire::send(template.socket.as_fd(), Kind::BecomeForkServer, &[], &[theirs.as_fd()])
            .map_err(|e| Error::os("starting the fork server", e))?;
        drop(theirs);
        let book = Arc::new(StatusBook { state: Mutex::new(BookState::default()), filed: Condvar::new() });
        let filer = book.clone();
        std::thread::Builder::new()
            .name("tandem-forkserver-status".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                loop {
                    match wire::recv(ours.as_fd(), 64, None) {
                        Ok(frame) if frame.kind == Kind::Exited => {
                            if let Some((pid, status)) = parse_exited(&frame.payload) {
                                filer.file(pid, status);
                            }
                        }
                        _ => break,
                    }
                }
                filer.close();
            })
            .map_err(|e| Error::os("starting the fork server's status thread", e))?;
        Ok(Server { control: Mutex::new(template.socket), book, _template: template.child })
    }

    fn fork(&self) -> Result<Worker, Error> {
        let control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        wire::send(control.as_fd(), Kind::Fork, &[], &[])
            .map_err(|e| Error::os("asking the fork server for a worker", e))?;
        let frame = wire::recv(control.as_fd(), 64, None).map_err(|e| {
            Error::os("reading the fork server's answer", std::io::Error::other(e.to_string()))
        })?;
        drop(control);
        let Frame { kind: Kind::Forked, payload, fds, .. } = frame else {
            return Err(Error::Codec("the fork server sent an unexpected message".into()));
        };
        let pid = payload.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).unwrap_or(0);
        let mut fds = fds.into_iter();
        match (Pid::from_raw(pid as i32), fds.next(), fds.next()) {
            (Some(pid), Some(socket), Some(pidfd)) => {
                let child = ChildProcess::reported(pid, pidfd, self.book.clone(), &REAPER);
                Ok(Worker { child, socket, stderr: None })
            }
            _ => {
                let errno = payload
                    .get(4..8)
                    .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .unwrap_or(0);
                Err(Error::os("the fork server could not fork", std::io::Error::from_raw_os_error(errno)))
            }
        }
    }
}
