//! What every worker of a pool shares, in any mode: the queue under one
//! lock, the pool's life (closed, terminating), the per-slot numbers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::backend::Backend;
use super::builder::Config;
use super::job::Job;
use crate::{Error, UnitId};

/// The queue and the pool's life, under the pool's one lock.
pub(crate) struct State<B: Backend> {
    pub queue: VecDeque<Job<B::Work>>,
    pub closed: bool,
    pub terminating: bool,
    /// Threads to join at shutdown (the loop and starters, current workers, supervisor).
    pub joinable: Vec<(usize, std::thread::JoinHandle<()>)>,
    /// What the mode keeps under the lock.
    pub mode: B::Locked,
}

/// Per-slot numbers for [`Pool::stats`](super::Pool::stats).
#[derive(Clone, Debug)]
pub(crate) struct SlotStats {
    pub unit: Option<UnitId>,
    pub tid: Option<i32>,
    pub tasks_done: u64,
    pub restarts: u64,
}

/// Pool-wide task counters for [`Pool::stats`](super::Pool::stats):
/// monotonic, counted per task and per map item. A submitted task counts
/// as finished when its completion resolves; a map item when its map
/// takes its batch's outcome (see `map::Engine::tally`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub submitted: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
}

impl Counters {
    /// Count `n` more in `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::SeqCst);
    }

    /// A finished task or item: completed if it has a value, else failed.
    pub(crate) fn finished(&self, ok: bool) {
        Counters::add(if ok { &self.completed } else { &self.failed }, 1);
    }
}

/// A pool's common part, and its mode's own (`backend`).
pub(crate) struct Shared<B: Backend> {
    pub config: Config,
    pub state: Mutex<State<B>>,
    pub slots: Vec<Mutex<SlotStats>>,
    /// Jobs in the queue, readable without the lock (for spinning workers).
    pub queued: AtomicUsize,
    pub next_id: AtomicU64,
    /// Tasks submitted, finished, retried (shared with completions).
    pub counters: std::sync::Arc<Counters>,
    pub backend: B,
}

impl<B: Backend> Shared<B> {
    pub(crate) fn new(config: Config, locked: B::Locked, backend: B) -> Shared<B> {
        let n = config.workers;
        Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                terminating: false,
                joinable: Vec::new(),
                mode: locked,
            }),
            slots: (0..n)
                .map(|_| Mutex::new(SlotStats { unit: None, tid: None, tasks_done: 0, restarts: 0 }))
                .collect(),
            queued: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            counters: std::sync::Arc::new(Counters::default()),
            backend,
            config,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State<B>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn slot(&self, index: usize) -> MutexGuard<'_, SlotStats> {
        self.slots[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `job` under the held lock (at the front for `front`: retries
    /// and map items that must run again go before new work) and wake a
    /// worker; a closed pool resolves it `Closed` instead.
    pub(crate) fn push(&self, mut state: MutexGuard<'_, State<B>>, job: Job<B::Work>, front: bool) {
        if state.closed {
            drop(state);
            job.completion.resolve_err(Error::Closed);
            return;
        }
        if front {
            state.queue.push_front(job);
        } else {
            state.queue.push_back(job);
        }
        self.queued.store(state.queue.len(), Ordering::SeqCst);
        B::queued(self, state);
    }

    /// Put a job back at the front (a retry after its worker died), even
    /// while the pool closes: it was submitted before.
    pub(crate) fn requeue(&self, job: Job<B::Work>) {
        let mut state = self.lock();
        state.queue.push_front(job);
        self.queued.store(state.queue.len(), Ordering::SeqCst);
        B::queued(self, state);
    }

    /// Finish every submitted task, then stop the workers and wait for them.
    pub(crate) fn shutdown(&self) {
        self.lock().closed = true;
        B::wake_all(self);
        self.join_workers();
    }

    /// Stop now: queued and running tasks resolve `Cancelled`.
    pub(crate) fn terminate(&self) {
        let (queued, running) = {
            let mut state = self.lock();
            state.closed = true;
            state.terminating = true;
            let queued: Vec<_> = state.queue.drain(..).collect();
            self.queued.store(0, Ordering::SeqCst);
            (queued, B::take_running(&mut state))
        };
        for job in queued {
            job.completion.resolve_err(Error::Cancelled);
        }
        for completion in running {
            completion.resolve_err(Error::Cancelled);
        }
        B::wake_all(self);
        self.join_workers();
    }

    fn join_workers(&self) {
        let me = std::thread::current().id();
        loop {
            let batch: Vec<_> = std::mem::take(&mut self.lock().joinable);
            if batch.is_empty() {
                break;
            }
            for (_, handle) in batch {
                // A task that shuts down its own pool cannot wait for itself.
                if handle.thread().id() != me {
                    let _ = handle.join();
                }
            }
        }
    }
}
