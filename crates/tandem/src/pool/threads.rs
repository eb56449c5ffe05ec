//! Thread mode: one OS thread per slot, plus a supervisor for time-outs.
//!
//! A thread cannot be killed. A task that times out or is cancelled while
//! running resolves at once; its thread is *abandoned*: the slot's generation
//! moves on, a new thread takes the slot, and the old one exits when its
//! task returns, its result discarded.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, MutexGuard};
use std::time::Instant;

use super::backend::Backend;
use super::handle::{Place, Resolve};
use super::job::{Job, Running, ThreadWork};
use super::shared::State;
use crate::backoff::Backoff;
use crate::{Error, UnitId};

/// Thread mode's own part of a pool.
pub(crate) struct Threads {
    /// Wakes idle pool threads when work is queued.
    work_ready: Condvar,
    /// Wakes the time-out supervisor when deadlines change.
    deadlines_changed: Condvar,
}

/// What thread mode keeps under the pool's lock, per slot.
pub(crate) struct Slots {
    /// Each slot's current generation; a thread whose generation is stale
    /// was abandoned and exits after its task.
    generations: Vec<u64>,
    /// What each slot's thread is running.
    running: Vec<Option<Running>>,
}

type Shared = super::shared::Shared<Threads>;

impl Threads {
    pub(crate) fn new(workers: usize) -> (Threads, Slots) {
        let threads = Threads { work_ready: Condvar::new(), deadlines_changed: Condvar::new() };
        (threads, Slots { generations: vec![0; workers], running: (0..workers).map(|_| None).collect() })
    }
}

impl Backend for Threads {
    type Work = ThreadWork;
    type Locked = Slots;

    fn queued(shared: &Shared, state: MutexGuard<'_, State<Threads>>) {
        drop(state);
        shared.backend.work_ready.notify_one();
    }

    fn wake_all(shared: &Shared) {
        shared.backend.work_ready.notify_all();
        shared.backend.deadlines_changed.notify_all();
    }

    fn take_running(state: &mut State<Threads>) -> Vec<Arc<dyn Resolve>> {
        let mut running = Vec::new();
        for slot in 0..state.mode.running.len() {
            if let Some(r) = state.mode.running[slot].take() {
                running.push(r.completion);
                // A busy pool thread cannot be stopped: detach it.
                state.joinable.retain(|(s, _)| *s != slot);
            }
        }
        for g in state.mode.generations.iter_mut() {
            *g += 1;
        }
        running
    }
}

/// The next job for the thread of `slot` at `generation`, or `None` when it
/// should stop: the pool is closed and drained, it is terminating, or this
/// thread was abandoned.
fn next_job(shared: &Shared, slot: usize, generation: u64) -> Option<Job<ThreadWork>> {
    let mut state = shared.lock();
    let mut spun = false;
    loop {
        if state.mode.generations[slot] != generation || state.terminating {
            return None;
        }
        while let Some(job) = state.queue.pop_front() {
            shared.queued.store(state.queue.len(), Ordering::SeqCst);
            if !job.completion.is_resolved() {
                return Some(job);
            }
        }
        if state.closed {
            return None;
        }
        if !spun {
            // Look for the next job briefly before sleeping (`backoff`).
            spun = true;
            drop(state);
            Backoff::ANSWER.spin_until(|| shared.queued.load(Ordering::SeqCst) != 0);
            state = shared.lock();
            continue;
        }
        state = shared.backend.work_ready.wait(state).unwrap_or_else(|e| e.into_inner());
    }
}

pub(crate) fn start(shared: &Arc<Shared>) -> Result<(), Error> {
    for slot in 0..shared.config.workers {
        let handle = spawn_worker(shared, slot, 0)?;
        shared.lock().joinable.push((slot, handle));
    }
    if shared.config.task_timeout.is_some() {
        let pool = shared.clone();
        let handle = std::thread::Builder::new()
            .name("tandem-pool-timeouts".into())
            .spawn(move || supervise(&pool))
            .map_err(|e| Error::os("starting the pool's time-out thread", e))?;
        shared.lock().joinable.push((usize::MAX, handle));
    }
    Ok(())
}

fn spawn_worker(
    shared: &Arc<Shared>,
    slot: usize,
    generation: u64,
) -> Result<std::thread::JoinHandle<()>, Error> {
    let pool = shared.clone();
    let handle = std::thread::Builder::new()
        .name(format!("tandem-pool-{slot}"))
        .spawn(move || work(&pool, slot, generation))
        .map_err(|e| Error::os("starting a pool thread", e))?;
    // Named at once, so stats never show a slot without its thread.
    shared.slot(slot).unit = Some(UnitId::Thread(handle.thread().id()));
    Ok(handle)
}

fn work(shared: &Arc<Shared>, slot: usize, generation: u64) {
    run_jobs(shared, slot, generation);
    // The supervisor exits once the pool is closed and idle: a thread that
    // ends may be what it waits for (the last queued job taken, or skipped
    // as cancelled), so tell it.
    shared.backend.deadlines_changed.notify_all();
}

fn run_jobs(shared: &Arc<Shared>, slot: usize, generation: u64) {
    shared.slot(slot).tid = Some(rustix::thread::gettid().as_raw_nonzero().get());
    let mut init_error = shared
        .config
        .initializer
        .and_then(|init| crate::task::run_here(|f: fn()| f(), init).err())
        .map(|e| format!("the pool's initializer failed in this worker: {e}"));
    let mut done_here = 0u64;
    while let Some(job) = next_job(shared, slot, generation) {
        if let Some(message) = init_error.take() {
            job.completion.resolve_err(Error::Panicked { message });
            continue;
        }
        let (job, run) = job.with_work(());
        {
            let mut state = shared.lock();
            if state.mode.generations[slot] != generation {
                // Abandoned between taking the job and starting it: give it back.
                drop(state);
                shared.requeue(job.with_work(run).0);
                return;
            }
            let deadline = shared.config.task_timeout.map(|t| Instant::now() + t);
            let clock = job.batch.as_ref().and_then(|b| b.clock.clone());
            state.mode.running[slot] = Some(Running { deadline, completion: job.completion.clone(), clock });
            job.control.set(Place::OnThread { slot, generation, pool: Arc::downgrade(shared) });
        }
        if job.control.cancelled.load(std::sync::atomic::Ordering::SeqCst) {
            // Cancelled while it was being taken: it never runs, and leaves
            // no running entry behind for the supervisor.
            let mut state = shared.lock();
            if state.mode.generations[slot] == generation {
                state.mode.running[slot] = None;
            }
            drop(state);
            job.completion.resolve_err(Error::Cancelled);
            job.control.set(Place::Finished);
            continue;
        }
        shared.backend.deadlines_changed.notify_all();
        let finish = run();
        job.control.set(Place::Finished);
        done_here += 1;
        let mut state = shared.lock();
        if state.mode.generations[slot] != generation {
            drop(state);
            finish(); // resolves nothing: the handle already has its outcome
            return; // abandoned while running: the slot has a new thread
        }
        state.mode.running[slot] = None;
        shared.slot(slot).tasks_done += 1;
        finish();
        if shared.config.task_timeout.is_some() {
            shared.backend.deadlines_changed.notify_all();
        }
        if shared.config.max_tasks_per_worker.is_some_and(|n| done_here >= n) && !state.closed {
            replace(shared, &mut state, slot);
            return;
        }
    }
}

/// Give `slot` a new thread of the next generation. The old thread exits
/// when it sees its generation is stale; it is detached, not joined, since
/// an abandoned one may still be running a task that never returns.
fn replace(shared: &Arc<Shared>, state: &mut State<Threads>, slot: usize) {
    state.joinable.retain(|(s, _)| *s != slot);
    state.mode.generations[slot] += 1;
    state.mode.running[slot] = None;
    shared.slot(slot).restarts += 1;
    match spawn_worker(shared, slot, state.mode.generations[slot]) {
        Ok(handle) => state.joinable.push((slot, handle)),
        Err(e) => eprintln!("tandem pool: could not replace a worker thread: {e}"),
    }
}

/// Abandon the thread running in `slot` (generation `generation`) after its
/// task was cancelled, and start its replacement.
pub(crate) fn abandon(shared: &Arc<Shared>, slot: usize, generation: u64) {
    let mut state = shared.lock();
    if state.mode.generations[slot] != generation || state.terminating {
        return;
    }
    replace(shared, &mut state, slot);
}

/// Resolve tasks that run past the time limit, and abandon their threads.
/// A timed map batch's deadline is its running item's: only that item
/// fails, and the batch's other items are handed back to its map.
fn supervise(shared: &Arc<Shared>) {
    let limit = shared.config.task_timeout.expect("a supervisor only with a time limit");
    let mut state = shared.lock();
    loop {
        if state.closed && state.mode.running.iter().all(Option::is_none) && state.queue.is_empty() {
            return;
        }
        let now = Instant::now();
        let deadline_of = |r: &Running| match &r.clock {
            Some(clock) => clock.item_started().map_or(now + limit, |t| t + limit),
            None => r.deadline.unwrap_or(now + limit),
        };
        let expired: Vec<usize> = (0..state.mode.running.len())
            .filter(|&i| state.mode.running[i].as_ref().is_some_and(|r| deadline_of(r) <= now))
            .collect();
        let abandoned = !expired.is_empty();
        for slot in expired {
            if let Some(running) = state.mode.running[slot].take() {
                // Replace the thread (and count it) before anyone can see
                // the time-out: a map that ends on it reads the pool's
                // numbers at once. If the task finished as we looked, its
                // thread was replaced for nothing; it ends at its next job.
                if !state.terminating {
                    replace(shared, &mut state, slot);
                }
                match &running.clock {
                    Some(clock) => {
                        let _ = clock.interrupt(Error::TimedOut);
                    }
                    None => {
                        let _ = running.completion.resolve_err(Error::TimedOut);
                    }
                }
            }
        }
        if abandoned {
            // The lock was let go meanwhile: look at the pool afresh.
            continue;
        }
        let now = Instant::now();
        let next = state.mode.running.iter().flatten().map(|r| match &r.clock {
            Some(clock) => clock.item_started().map_or(now + limit, |t| t + limit),
            None => r.deadline.unwrap_or(now + limit),
        });
        state = match next.min() {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                shared
                    .backend
                    .deadlines_changed
                    .wait_timeout(state, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => shared.backend.deadlines_changed.wait(state).unwrap_or_else(|e| e.into_inner()),
        };
    }
}
