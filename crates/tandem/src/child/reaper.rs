//! Reaps children whose handles were dropped unjoined, so none stays a zombie.
//!
//! The crate's one watcher thread (`crate::watch`, started on first use)
//! waits in `epoll` on the pidfds of these children and reaps each as it
//! exits. Handing a child over is an `epoll_ctl` by the caller, which wakes
//! nobody: the watcher wakes once per child, when it exits. Detached
//! children still die with the parent: the kernel kills a Spawn worker when
//! the parent's end of its lifeline closes (`sys::bootstrap`), and a
//! fork-server worker with its template.
//!
//! A start method gives each [`ChildProcess`](super::ChildProcess) it makes
//! [`REAPER`] as its [`Orphanage`]; the child handle never names this module.

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use super::{Orphanage, Unreaped};
use crate::watch::{Finish, WATCHER};

/// The reaper: adopted children go to the crate's one watcher thread.
pub(crate) static REAPER: Reaper = Reaper;

/// Reaps the children given to it once they exit (see the module docs).
pub(crate) struct Reaper;

impl Orphanage for Reaper {
    /// Take over `child`: reap it when it exits.
    fn adopt(&self, child: Unreaped) {
        let unit = Arc::new(ReapOnExit(Mutex::new(Some(child))));
        let registered = {
            // Held while registering: the watcher may fire at once, and its
            // `finish` then waits here until the registration is done.
            let slot = unit.0.lock().unwrap_or_else(|e| e.into_inner());
            let pidfd = slot.as_ref().expect("just put there").pidfd().as_fd();
            WATCHER.try_watch(unit.clone(), &[pidfd]).is_ok()
        };
        if !registered {
            // No watcher thread could take it: reap here, blocking.
            unit.finish(&|_| {});
        }
    }
}

/// A child to reap when its pidfd says it exited.
struct ReapOnExit(Mutex<Option<Unreaped>>);

impl Finish for ReapOnExit {
    fn finish(&self, _again: &dyn Fn(std::os::fd::BorrowedFd<'_>)) -> bool {
        // Reaping closes the pidfd, which also takes it out of the epoll set.
        if let Some(child) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            child.reap();
        }
        true
    }
}
