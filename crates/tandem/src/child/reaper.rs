//! Reaps children whose handles were dropped unjoined, so none stays a zombie.
//!
//! One thread, started on first use, waits in `epoll` on the pidfds of these
//! children and reaps each as it exits. Handing a child over is an
//! `epoll_ctl` by the caller, which wakes nobody: the reaper wakes once per
//! child, when it exits. Detached children still die with the parent: the
//! kernel kills a Spawn worker when the parent's end of its lifeline closes
//! (`sys::bootstrap`), and a fork-server worker with its template.
//!
//! A start method gives each [`ChildProcess`](super::ChildProcess) it makes
//! [`REAPER`] as its [`Orphanage`]; the child handle never names this module.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rustix::buffer::spare_capacity;
use rustix::event::epoll;

use super::{Orphanage, Unreaped};

/// The reaper thread, started on first use.
pub(crate) static REAPER: Reaper = Reaper { running: OnceLock::new(), starting: Mutex::new(()) };

/// The reaper: the thread's shared state once it runs.
pub(crate) struct Reaper {
    running: OnceLock<Arc<Running>>,
    /// Held while a start is tried, so only one thread starts it.
    starting: Mutex<()>,
}

struct Running {
    epoll: std::os::fd::OwnedFd,
    /// Adopted children by the key their pidfd is registered with.
    children: Mutex<Children>,
}

#[derive(Default)]
struct Children {
    next_key: u64,
    by_key: HashMap<u64, Unreaped>,
}

impl Reaper {
    /// The running reaper. A start that fails (out of descriptors or
    /// threads) is tried again next time instead of being remembered.
    fn running(&self) -> Option<&Arc<Running>> {
        if let Some(running) = self.running.get() {
            return Some(running);
        }
        let _one_at_a_time = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        if self.running.get().is_none() {
            let _ = self.running.set(start()?);
        }
        self.running.get()
    }
}

impl Orphanage for Reaper {
    /// Take over `child`: reap it when it exits.
    fn adopt(&self, child: Unreaped) {
        let Some(reaper) = self.running() else {
            // No reaper thread could be started: reap here, blocking.
            child.reap();
            return;
        };
        let mut children = reaper.children.lock().unwrap_or_else(|e| e.into_inner());
        let key = children.next_key;
        children.next_key += 1;
        // Registered under the lock, so the reaper, which takes the lock to
        // find the child of an event, sees it in the map.
        match epoll::add(&reaper.epoll, child.pidfd(), epoll::EventData::new_u64(key), epoll::EventFlags::IN)
        {
            Ok(()) => {
                children.by_key.insert(key, child);
            }
            Err(_) => {
                drop(children);
                child.reap();
            }
        }
    }
}

fn start() -> Option<Arc<Running>> {
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).ok()?;
    let reaper = Arc::new(Running { epoll, children: Mutex::new(Children::default()) });
    let theirs = reaper.clone();
    std::thread::Builder::new()
        .name("tandem-reaper".into())
        .stack_size(128 * 1024)
        .spawn(move || run(&theirs))
        .ok()?;
    Some(reaper)
}

fn run(reaper: &Running) {
    let mut events = Vec::with_capacity(32);
    loop {
        events.clear();
        if epoll::wait(&reaper.epoll, spare_capacity(&mut events), None).is_err() {
            continue;
        }
        for event in events.drain(..) {
            let key = event.data.u64();
            let exited = reaper.children.lock().unwrap_or_else(|e| e.into_inner()).by_key.remove(&key);
            // Reaping closes the pidfd, which also takes it out of the
            // epoll set.
            if let Some(child) = exited {
                child.reap();
            }
        }
    }
}
