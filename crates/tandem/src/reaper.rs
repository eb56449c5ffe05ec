//! Reaps children whose handles were dropped unjoined, so none stays a zombie.
//!
//! One thread, started on first use, waits in `epoll` on the pidfds of these
//! children and reaps each as it exits. Handing a child over is an
//! `epoll_ctl` by the caller, which wakes nobody: the reaper wakes once per
//! child, when it exits. Detached children still die with the parent: the
//! kernel kills a Spawn worker when the parent's end of its lifeline closes
//! (`sys::bootstrap`), and a fork-server worker with its template.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rustix::buffer::spare_capacity;
use rustix::event::epoll;

use crate::child::Process;

struct Reaper {
    epoll: std::os::fd::OwnedFd,
    /// Adopted children by the key their pidfd is registered with.
    children: Mutex<Children>,
}

#[derive(Default)]
struct Children {
    next_key: u64,
    by_key: HashMap<u64, Process>,
}

static REAPER: OnceLock<Arc<Reaper>> = OnceLock::new();

/// The reaper, started on first use. A start that fails (out of descriptors
/// or threads) is tried again next time instead of being remembered.
fn reaper() -> Option<&'static Arc<Reaper>> {
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

/// Take over `process`: reap it when it exits.
pub(crate) fn adopt(process: Process) {
    let Some(reaper) = reaper() else {
        // No reaper thread could be started: reap here, blocking.
        process.reap();
        return;
    };
    let mut children = reaper.children.lock().unwrap_or_else(|e| e.into_inner());
    let key = children.next_key;
    children.next_key += 1;
    // Registered under the lock, so the reaper, which takes the lock to
    // find the child of an event, sees it in the map.
    match epoll::add(&reaper.epoll, process.pidfd(), epoll::EventData::new_u64(key), epoll::EventFlags::IN) {
        Ok(()) => {
            children.by_key.insert(key, process);
        }
        Err(_) => {
            drop(children);
            process.reap();
        }
    }
}

fn start() -> Option<Arc<Reaper>> {
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).ok()?;
    let reaper = Arc::new(Reaper { epoll, children: Mutex::new(Children::default()) });
    let theirs = reaper.clone();
    std::thread::Builder::new()
        .name("tandem-reaper".into())
        .stack_size(128 * 1024)
        .spawn(move || run(&theirs))
        .ok()?;
    Some(reaper)
}

fn run(reaper: &Reaper) {
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
            if let Some(process) = exited {
                process.reap();
            }
        }
    }
}
