//! Reaps children nobody waits for, so none stays a zombie: those whose
//! handles were dropped unjoined, and workers that delivered their result
//! and are exiting (a join does not wait for that exit).
//!
//! One thread, started on first use, polls the pidfds of these children
//! (and drains their sockets, so a child blocked writing its result can
//! finish). Detached children still die with the parent: the kernel kills
//! them when its end of their lifeline closes (`sys::bootstrap`).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

use rustix::event::{PollFd, PollFlags};

use crate::child::Process;

struct Reaper {
    queue: Mutex<Vec<(Process, Option<OwnedFd>)>>,
    wake: OwnedFd,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

/// The reaper, started on first use. A start that fails (out of descriptors
/// or threads) is tried again next time instead of being remembered.
fn reaper() -> Option<&'static Reaper> {
    if let Some(reaper) = REAPER.get() {
        return Some(reaper);
    }
    static STARTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    if REAPER.get().is_none() {
        let _ = REAPER.set(start()?);
    }
    REAPER.get()
}

/// Take over `process`: reap it when it exits, draining `drain` meanwhile.
pub(crate) fn adopt(process: Process, drain: Option<OwnedFd>) {
    let Some(reaper) = reaper() else {
        // No reaper thread could be started: reap here, blocking.
        process.reap();
        return;
    };
    reaper.queue.lock().unwrap_or_else(|e| e.into_inner()).push((process, drain));
    let _ = rustix::io::write(&reaper.wake, &[1]);
}

fn start() -> Option<Reaper> {
    let (wake_read, wake) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK).ok()?;
    let spawned = std::thread::Builder::new()
        .name("tandem-reaper".into())
        .stack_size(128 * 1024)
        .spawn(move || run(wake_read));
    spawned.ok()?;
    Some(Reaper { queue: Mutex::new(Vec::new()), wake })
}

fn run(wake_read: OwnedFd) {
    let mut children: Vec<(Process, Option<OwnedFd>)> = Vec::new();
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        let (exited, readable) = {
            let mut fds = vec![PollFd::new(&wake_read, PollFlags::IN)];
            for (process, drain) in &children {
                fds.push(PollFd::new(process.pidfd(), PollFlags::IN));
                if let Some(sock) = drain {
                    fds.push(PollFd::new(sock, PollFlags::IN));
                }
            }
            if rustix::event::poll(&mut fds, None).is_err() {
                continue;
            }
            let mut exited = Vec::new();
            let mut readable = Vec::new();
            let mut i = 1;
            for (index, (_, drain)) in children.iter().enumerate() {
                if !fds[i].revents().is_empty() {
                    exited.push(index);
                }
                i += 1;
                if drain.is_some() {
                    if !fds[i].revents().is_empty() {
                        readable.push(index);
                    }
                    i += 1;
                }
            }
            (exited, readable)
        };
        for index in readable {
            if let Some(sock) = &children[index].1 {
                match rustix::net::recv(sock.as_fd(), &mut scratch[..], rustix::net::RecvFlags::DONTWAIT) {
                    Ok((0, _)) => children[index].1 = None,
                    Ok(_) | Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
                    Err(_) => children[index].1 = None,
                }
            }
        }
        for index in exited.into_iter().rev() {
            let (process, _) = children.swap_remove(index);
            process.reap();
        }
        while rustix::io::read(&wake_read, &mut scratch[..]).map(|n| n > 0).unwrap_or(false) {}
        if let Some(reaper) = REAPER.get() {
            children.extend(reaper.queue.lock().unwrap_or_else(|e| e.into_inner()).drain(..));
        }
    }
}
