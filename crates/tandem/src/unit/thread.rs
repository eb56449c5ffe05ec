//! A task on its own OS thread.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use crate::Error;
use crate::watch::Outcome;

pub(crate) struct ThreadUnit<R> {
    /// Filled by the thread: read by `join` or by a poll (its waker woken).
    slot: Arc<Outcome<R>>,
    handle: std::thread::JoinHandle<()>,
}

impl<R> ThreadUnit<R> {
    pub(crate) fn id(&self) -> ThreadId {
        self.handle.thread().id()
    }
}

impl<R: Send + 'static> ThreadUnit<R> {
    pub(crate) fn start<A: Send + 'static>(arg: A, f: fn(A) -> R) -> Result<Self, Error> {
        let slot = Arc::new(Outcome::new());
        let theirs = slot.clone();
        let handle = std::thread::Builder::new()
            .spawn(move || {
                let result = crate::task::run_here(f, arg);
                theirs.fill(result);
            })
            .map_err(|e| Error::os("starting a thread", e))?;
        Ok(ThreadUnit { slot, handle })
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.slot.is_filled()
    }

    pub(crate) fn poll(&self, cx: &Context<'_>) -> Poll<Result<R, Error>> {
        self.slot.poll(cx)
    }

    pub(crate) fn join(self) -> Result<R, Error> {
        // The thread catches panics itself and always fills its slot.
        let ThreadUnit { slot, handle } = self;
        let _ = handle.join();
        slot.wait()
    }

    pub(crate) fn join_timeout(self, limit: Duration) -> Result<R, Error> {
        match self.slot.wait_until(Instant::now() + limit) {
            // A thread cannot be stopped: leave it detached.
            None => Err(Error::TimedOut),
            Some(result) => {
                let _ = self.handle.join();
                result
            }
        }
    }
}
