//! `Queue::get_async`: a future that never blocks the executor.
//!
//! A sleeping `get` waits on the ring's `not_empty` futex word. A futex
//! cannot be handed to `epoll`, so a queue's pending async getters in this
//! process share one watcher thread (per queue, not per waiter): it waits on
//! that word as a getter would, without taking anything, and when an item
//! may be there wakes every registered waker; each future then tries to take
//! the item on its own poll. The thread ends when no getter is left after a
//! wake (or after a quiet interval), and the next registration starts one.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Queue;
use super::ring::Ring;
use crate::Error;

/// How long the watcher sleeps before it looks whether anyone still waits.
const QUIET: Duration = Duration::from_millis(200);

/// A queue's pending async getters in this process.
#[derive(Default)]
pub(crate) struct Getters {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    wakers: HashMap<u64, Waker>,
    watching: bool,
}

impl Getters {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register (or refresh) the waker of getter `id`; start the watcher if
    /// none runs.
    fn register(
        self: &Arc<Self>,
        ring: &Arc<Ring>,
        id: &mut Option<u64>,
        waker: &Waker,
    ) -> Result<(), Error> {
        let mut state = self.lock();
        let key = *id.get_or_insert_with(|| {
            state.next_id += 1;
            state.next_id
        });
        state.wakers.insert(key, waker.clone());
        if !state.watching {
            let (getters, ring) = (self.clone(), ring.clone());
            std::thread::Builder::new()
                .name("tandem-queue-watch".into())
                .stack_size(64 * 1024)
                .spawn(move || watch(&getters, &ring))
                .map_err(|e| Error::os("starting a queue's watcher thread for get_async", e))?;
            state.watching = true;
        }
        Ok(())
    }

    fn withdraw(&self, id: u64) {
        self.lock().wakers.remove(&id);
    }
}

fn watch(getters: &Getters, ring: &Ring) {
    loop {
        // An error wakes them too: the futures see it on their own try.
        let woke = ring.wait_for_item(Instant::now() + QUIET).unwrap_or(true);
        let mut state = getters.lock();
        if woke {
            for (_, waker) in state.wakers.drain() {
                waker.wake();
            }
        }
        if state.wakers.is_empty() {
            state.watching = false;
            return;
        }
    }
}

/// The future of [`Queue::get_async`].
#[must_use = "a future does nothing unless awaited"]
pub struct GetFuture<'a, T> {
    queue: &'a Queue<T>,
    id: Option<u64>,
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// Take the oldest item without blocking the executor: a future with
    /// [`get`](Self::get)'s output. While it waits, one watcher thread per
    /// queue (shared by all of this process's pending getters of it) sleeps
    /// on the queue's futex and wakes them when an item may be there.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// tandem::init();
    /// let q = tandem::ipc::Queue::<u32>::bounded(4).unwrap();
    /// let h = tandem::process::spawn(q.clone(), |q| q.put(21).unwrap()).unwrap();
    /// assert_eq!(q.get_async().await.unwrap(), 21);
    /// h.await.unwrap();
    /// # });
    /// ```
    pub fn get_async(&self) -> GetFuture<'_, T> {
        GetFuture { queue: self, id: None }
    }
}

impl<T: Serialize + DeserializeOwned> Future for GetFuture<'_, T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // Register before looking, so an item that comes after the look
        // wakes this poll's waker.
        if let Err(e) = this.queue.getters.register(&this.queue.ring, &mut this.id, cx.waker()) {
            return Poll::Ready(Err(e));
        }
        match this.queue.try_get() {
            Ok(Some(item)) => {
                if let Some(id) = this.id.take() {
                    this.queue.getters.withdraw(id);
                }
                Poll::Ready(Ok(item))
            }
            Ok(None) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<T> Drop for GetFuture<'_, T> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.queue.getters.withdraw(id);
        }
    }
}
