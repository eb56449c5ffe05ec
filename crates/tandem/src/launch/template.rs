//! The fork-server template's side of
//! [`StartMethod::ForkServer`](super::StartMethod::ForkServer): what the
//! template process runs. It forks a worker whenever the parent asks, reaps
//! its workers and reports each exit status; the parent's side is
//! [`super::forkserver`].
//!
//! The template is a re-executed worker whose first message asked it to
//! become the fork server (`crate::worker` hands it over here, together with
//! the worker loop each forked child runs, so this module does not name the
//! worker module above it).

use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{PollFd, PollFlags};
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
use rustix::process::{PidfdFlags, Signal, WaitId, WaitIdOptions};

use crate::child::ExitStatus;
use crate::sys::bootstrap::{self, ParentLink};
use crate::sys::fork::{self, Forked};
use crate::wire::{self, Frame, Kind, RecvError};

/// The worker loop a forked child runs (`crate::worker::serve`): its link to
/// the parent, and the first frame if one was already read; returns its
/// exit code.
pub(crate) type Serve = fn(ParentLink, Option<Frame>) -> i32;

/// The payload of an Exited report: pid, then how it ended.
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

/// Read an Exited report's payload (see [`exited_payload`]).
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
/// `first` is the message that made this process the template (it brought
/// the status socket); `serve` is what a forked child runs. Returns the
/// template's exit code; a forked child instead returns the exit code of
/// its own worker loop.
pub(crate) fn run(link: ParentLink, first: Frame, serve: Serve) -> i32 {
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
                    return serve(child_link, None);
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
