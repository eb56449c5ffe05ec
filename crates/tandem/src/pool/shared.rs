//! What every worker of a pool shares: the queue under one lock, the
//! per-slot numbers, and how a worker takes its next job.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use super::builder::Config;
use super::job::{Job, Running};
use super::lanes;
use crate::UnitId;

/// The queue and the pool's life, under the pool's one lock.
pub(crate) struct State {
    pub queue: VecDeque<Job>,
    pub closed: bool,
    pub terminating: bool,
    /// Thread mode: each slot's current generation; a thread whose
    /// generation is stale was abandoned and exits after its task.
    pub generations: Vec<u64>,
    /// Thread mode: what each slot's thread is running.
    pub running: Vec<Option<Running>>,
    /// Threads to join at shutdown (drivers, current workers, supervisor).
    pub joinable: Vec<(usize, std::thread::JoinHandle<()>)>,
}

/// Per-slot numbers for [`Pool::stats`].
#[derive(Clone, Debug)]
pub(crate) struct SlotStats {
    pub unit: Option<UnitId>,
    pub tid: Option<i32>,
    pub tasks_done: u64,
    pub restarts: u64,
}

pub(crate) struct Shared {
    pub config: Config,
    pub state: Mutex<State>,
    pub work_ready: Condvar,
    /// Wakes the time-out supervisor when deadlines change.
    pub deadlines_changed: Condvar,
    pub slots: Vec<Mutex<SlotStats>>,
    /// Process mode: each slot's lane, with its driver's eventfd (see
    /// `processes`).
    pub lanes: Vec<lanes::Lane>,
    /// Jobs in the queue, readable without the lock (for spinning workers).
    pub queued: std::sync::atomic::AtomicUsize,
    pub(crate) next_id: AtomicU64,
    /// Sandboxed pools: what the first worker to finish starting enforced,
    /// or why it could not start.
    pub(crate) sandbox_outcome: Mutex<Option<Result<Vec<String>, crate::Error>>>,
    pub(crate) sandbox_ready: Condvar,
}

impl Shared {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep the first sandbox outcome of a worker start.
    pub(crate) fn note_sandbox_outcome(&self, outcome: Result<&[String], &crate::Error>) {
        let mut slot = self.sandbox_outcome.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(outcome.map(<[String]>::to_vec).map_err(crate::Error::duplicate));
            self.sandbox_ready.notify_all();
        }
    }

    /// Wait for the first sandbox outcome.
    pub(crate) fn wait_sandbox_outcome(&self) -> Result<Vec<String>, crate::Error> {
        let mut slot = self.sandbox_outcome.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(outcome) = &*slot {
                return match outcome {
                    Ok(report) => Ok(report.clone()),
                    Err(e) => Err(e.duplicate()),
                };
            }
            slot = self.sandbox_ready.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub(crate) fn slot(&self, index: usize) -> std::sync::MutexGuard<'_, SlotStats> {
        self.slots[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next job for a worker, or `None` when the worker should stop: the
    /// pool is closed and drained, it is terminating, or (thread mode) this
    /// worker's generation was abandoned.
    pub(crate) fn next_job(&self, slot: usize, generation: Option<u64>) -> Option<Job> {
        let mut state = self.lock();
        let mut spun = false;
        loop {
            if generation.is_some_and(|g| state.generations[slot] != g) || state.terminating {
                return None;
            }
            while let Some(job) = state.queue.pop_front() {
                self.queued.store(state.queue.len(), Ordering::SeqCst);
                if !job.completion.is_resolved() {
                    return Some(job);
                }
            }
            if state.closed {
                return None;
            }
            if !spun {
                // Look for the next job briefly before sleeping (wire::SPIN).
                spun = true;
                drop(state);
                let start = Instant::now();
                while self.queued.load(Ordering::SeqCst) == 0 && start.elapsed() < crate::wire::SPIN {
                    std::thread::yield_now();
                }
                state = self.lock();
                continue;
            }
            state = self.work_ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Put a job back at the front (a retry after its worker died).
    pub(crate) fn requeue(&self, job: Job) {
        let mut state = self.lock();
        state.queue.push_front(job);
        self.queued.store(state.queue.len(), Ordering::SeqCst);
        lanes::wake_one_parked(self);
        drop(state);
        self.work_ready.notify_one();
    }
}
