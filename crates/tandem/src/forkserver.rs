//! The ForkServer start method: a single-threaded template process, started
//! once by re-executing this binary, forks every new worker.
//!
//! Workers forked from the template inherit nothing of the caller's threads,
//! locks or open files: the template was exec'd fresh and never starts a
//! thread. Forked workers are the template's children, so the template reaps
//! them and reports each exit status on a second socket; a thread in the
//! parent files those reports in a [`StatusBook`].

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

use rustix::event::{PollFd, PollFlags};
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

use crate::Error;
use crate::child::{ChildProcess, ExitStatus};
use crate::launch::Worker;
use crate::sys::bootstrap::{self, ParentLink};
use crate::sys::fork::{self, Forked};
use crate::wire::{self, Frame, Kind, RecvError};

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
    pub(crate) fn take(&self, pid: u32) -> ExitStatus {
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
    pub(crate) fn forget(&self, pid: u32) {
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

/// The parent's side of a running template.
struct Server {
    control: Mutex<OwnedFd>,
    book: Arc<StatusBook>,
    _template: ChildProcess,
}

static SERVER: Mutex<Option<Arc<Server>>> = Mutex::new(None);

/// Fork a new worker from the template, starting the template on first use
/// and again if it has died.
pub(crate) fn start_worker() -> Result<Worker, Error> {
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
        let template = crate::launch::reexec()?;
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
        let Frame { kind: Kind::Forked, payload, fds } = frame else {
            return Err(Error::Codec("the fork server sent an unexpected message".into()));
        };
        let pid = payload.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).unwrap_or(0);
        let mut fds = fds.into_iter();
        match (Pid::from_raw(pid as i32), fds.next(), fds.next()) {
            (Some(pid), Some(socket), Some(pidfd)) => {
                Ok(Worker { child: ChildProcess::forked(pid, pidfd, self.book.clone()), socket })
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

fn exited_payload(pid: u32, status: ExitStatus) -> [u8; 13] {
    let mut b = [0u8; 13];
    b[..4].copy_from_slice(&pid.to_le_bytes());
    let (tag, value) = match (status.signal, status.code) {
        (Some(sig), _) => (1u8, sig),
        (None, Some(code)) => (0u8, code),
        (None, None) => (2u8, 0),
    };
    b[4] = tag;
    b[5..9].copy_from_slice(&value.to_le_bytes());
    b
}

pub(crate) fn parse_exited(b: &[u8]) -> Option<(u32, ExitStatus)> {
    let pid = u32::from_le_bytes(b.get(..4)?.try_into().ok()?);
    let value = i32::from_le_bytes(b.get(5..9)?.try_into().ok()?);
    let status = match b.get(4)? {
        0 => ExitStatus { signal: None, code: Some(value) },
        1 => ExitStatus { signal: Some(value), code: None },
        _ => ExitStatus { signal: None, code: None },
    };
    Some((pid, status))
}

/// Inside the template: fork workers on request and report their deaths.
/// Returns the template's exit code; a forked child instead returns the
/// exit code of its own worker loop.
pub(crate) fn template(link: ParentLink, first: Frame) -> i32 {
    let Some(status_sock) = first.fds.into_iter().next() else {
        return 71;
    };
    // Parse our code ranges once, here, instead of in every forked worker.
    crate::sys::code::warm();
    let mut children: Vec<(u32, OwnedFd)> = Vec::new();
    loop {
        let (control_ready, exited) = {
            let mut fds = vec![PollFd::new(&link.socket, PollFlags::IN)];
            fds.extend(children.iter().map(|(_, pidfd)| PollFd::new(pidfd, PollFlags::IN)));
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return 71,
            }
            let exited: Vec<usize> =
                (1..fds.len()).filter(|&i| !fds[i].revents().is_empty()).map(|i| i - 1).collect();
            (!fds[0].revents().is_empty(), exited)
        };
        for index in exited.into_iter().rev() {
            let (pid, pidfd) = children.swap_remove(index);
            let status = loop {
                match rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED) {
                    Ok(Some(status)) => break ExitStatus::from_wait(&status),
                    Err(rustix::io::Errno::INTR) | Ok(None) => continue,
                    Err(_) => break ExitStatus { signal: None, code: None },
                }
            };
            let _ = wire::send(status_sock.as_fd(), Kind::Exited, &[&exited_payload(pid, status)], &[]);
        }
        if !control_ready {
            continue;
        }
        match wire::recv(link.socket.as_fd(), 64, None) {
            Ok(frame) if frame.kind == Kind::Fork => match fork_worker(&link) {
                ForkResult::Parent(pid, pidfd) => children.push((pid, pidfd)),
                ForkResult::Failed => {}
                ForkResult::InChild(socket) => {
                    drop(status_sock);
                    drop(children);
                    let child_link = bootstrap::inherit(&link, socket);
                    drop(link);
                    // PR_SET_PDEATHSIG (set in fork_worker) ties this worker
                    // to the template, which dies with the parent (its
                    // lifeline, see `sys::bootstrap`).
                    return crate::worker::serve(child_link, None);
                }
            },
            Err(RecvError::Closed) => return 0,
            _ => return 71,
        }
    }
}

enum ForkResult {
    Parent(u32, OwnedFd),
    InChild(OwnedFd),
    Failed,
}

fn fork_worker(link: &ParentLink) -> ForkResult {
    let control = link.socket.as_fd();
    let refuse = |err: std::io::Error| {
        let mut payload = [0u8; 8];
        payload[4..].copy_from_slice(&err.raw_os_error().unwrap_or(libc::EIO).to_le_bytes());
        let _ = wire::send(control, Kind::Forked, &[&payload], &[]);
        ForkResult::Failed
    };
    let (user_end, worker_end) =
        match socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None) {
            Ok(pair) => pair,
            Err(e) => return refuse(e.into()),
        };
    let template_pid = rustix::process::getpid();
    match fork::fork_single_threaded() {
        Err(e) => refuse(e),
        Ok(Forked::Child) => {
            drop(user_end);
            // Die with the template (which dies with the parent); the check
            // closes the race where the template died before prctl.
            let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
            if rustix::process::getppid() != Some(template_pid) {
                fork::exit_now(70);
            }
            // Lead a process group of our own, like a Spawn worker, so a kill
            // of the worker also reaches what its tasks start (see
            // `ChildProcess::kill`).
            let _ = rustix::process::setpgid(None, None);
            ForkResult::InChild(worker_end)
        }
        Ok(Forked::Parent(pid)) => {
            drop(worker_end);
            let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
                Ok(fd) => fd,
                Err(e) => return refuse(e.into()),
            };
            let raw = pid.as_raw_nonzero().get() as u32;
            let sent = pidfd.try_clone().and_then(|copy| {
                wire::send(control, Kind::Forked, &[&raw.to_le_bytes()], &[user_end.as_fd(), copy.as_fd()])
            });
            if sent.is_err() {
                let _ = rustix::process::pidfd_send_signal(&pidfd, Signal::KILL);
            }
            ForkResult::Parent(raw, pidfd)
        }
    }
}
