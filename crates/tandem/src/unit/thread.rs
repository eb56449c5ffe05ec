//! A task on its own OS thread.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use crate::Error;

struct Slot<R> {
    value: Mutex<Option<Result<R, Error>>>,
    ready: Condvar,
}

pub(crate) struct ThreadUnit<R> {
    slot: Arc<Slot<R>>,
    handle: std::thread::JoinHandle<()>,
}

impl<R> ThreadUnit<R> {
    pub(crate) fn id(&self) -> ThreadId {
        self.handle.thread().id()
    }
}

impl<R: Send + 'static> ThreadUnit<R> {
    pub(crate) fn start<A: Send + 'static>(arg: A, f: fn(A) -> R) -> Result<Self, Error> {
        let slot = Arc::new(Slot { value: Mutex::new(None), ready: Condvar::new() });
        let theirs = slot.clone();
        let handle = std::thread::Builder::new()
            .spawn(move || {
                let result = crate::task::run_here(f, arg);
                *theirs.value.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                theirs.ready.notify_all();
            })
            .map_err(|e| Error::os("starting a thread", e))?;
        Ok(ThreadUnit { slot, handle })
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.slot.value.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    pub(crate) fn join(self) -> Result<R, Error> {
        // The thread catches panics itself, so join only fails if it could
        // not store its result, which cannot happen.
        let ThreadUnit { slot, handle } = self;
        let _ = handle.join();
        let value = slot.value.lock().unwrap_or_else(|e| e.into_inner()).take();
        value.unwrap_or(Err(Error::Panicked { message: "the thread ended without a result".into() }))
    }

    pub(crate) fn join_timeout(self, limit: Duration) -> Result<R, Error> {
        let deadline = Instant::now() + limit;
        let mut value = self.slot.value.lock().unwrap_or_else(|e| e.into_inner());
        while value.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // A thread cannot be stopped: leave it detached.
                return Err(Error::TimedOut);
            }
            value = self.slot.ready.wait_timeout(value, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        drop(value);
        self.join()
    }
}
