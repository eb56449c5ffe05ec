//! Thread mode: one OS thread per slot, plus a supervisor for time-outs.
//!
//! A thread cannot be killed. A task that times out or is cancelled while
//! running resolves at once; its thread is *abandoned*: the slot's generation
//! moves on, a new thread takes the slot, and the old one exits when its
//! task returns, its result discarded.

use std::sync::Arc;
use std::time::Instant;

use super::handle::Place;
use super::{Running, Shared, Work};
use crate::{Error, UnitId};

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
    shared.slot(slot).tid = Some(rustix::thread::gettid().as_raw_nonzero().get());
    let mut init_error = shared
        .config
        .initializer
        .and_then(|init| crate::task::run_here(|f: fn()| f(), init).err())
        .map(|e| format!("the pool's initializer failed in this worker: {e}"));
    let mut done_here = 0u64;
    while let Some(job) = shared.next_job(slot, Some(generation)) {
        if let Some(message) = init_error.take() {
            job.completion.resolve_err(Error::Panicked { message });
            continue;
        }
        let Work::Thread(run) = job.work else { unreachable!("thread pools queue thread work") };
        {
            let mut state = shared.lock();
            if state.generations[slot] != generation {
                // Abandoned between taking the job and starting it: give it back.
                drop(state);
                shared.requeue(super::Job { work: Work::Thread(run), ..job });
                return;
            }
            let deadline = shared.config.task_timeout.map(|t| Instant::now() + t);
            let clock = job.batch.as_ref().and_then(|b| b.clock.clone());
            state.running[slot] = Some(Running { deadline, completion: job.completion.clone(), clock });
            job.control.set(Place::OnThread { slot, generation });
        }
        if job.control.cancelled.load(std::sync::atomic::Ordering::SeqCst) {
            job.completion.resolve_err(Error::Cancelled);
            job.control.set(Place::Finished);
            continue;
        }
        shared.deadlines_changed.notify_all();
        let finish = run();
        job.control.set(Place::Finished);
        done_here += 1;
        let mut state = shared.lock();
        if state.generations[slot] != generation {
            drop(state);
            finish(); // resolves nothing: the handle already has its outcome
            return; // abandoned while running: the slot has a new thread
        }
        state.running[slot] = None;
        shared.slot(slot).tasks_done += 1;
        finish();
        if shared.config.task_timeout.is_some() {
            shared.deadlines_changed.notify_all();
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
fn replace(shared: &Arc<Shared>, state: &mut super::State, slot: usize) {
    state.joinable.retain(|(s, _)| *s != slot);
    state.generations[slot] += 1;
    state.running[slot] = None;
    shared.slot(slot).restarts += 1;
    match spawn_worker(shared, slot, state.generations[slot]) {
        Ok(handle) => state.joinable.push((slot, handle)),
        Err(e) => eprintln!("tandem pool: could not replace a worker thread: {e}"),
    }
}

/// Abandon the thread running in `slot` (generation `generation`) after its
/// task was cancelled, and start its replacement.
pub(crate) fn abandon(shared: &Arc<Shared>, slot: usize, generation: u64) {
    let mut state = shared.lock();
    if state.generations[slot] != generation || state.terminating {
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
        if state.closed && state.running.iter().all(Option::is_none) && state.queue.is_empty() {
            return;
        }
        let now = Instant::now();
        let deadline_of = |r: &Running| match &r.clock {
            Some(clock) => clock.item_started().map_or(now + limit, |t| t + limit),
            None => r.deadline.unwrap_or(now + limit),
        };
        let expired: Vec<usize> = (0..state.running.len())
            .filter(|&i| state.running[i].as_ref().is_some_and(|r| deadline_of(r) <= now))
            .collect();
        for slot in expired {
            if let Some(running) = state.running[slot].take() {
                let interrupted = match &running.clock {
                    Some(clock) => clock.interrupt(Error::TimedOut),
                    None => running.completion.resolve_err(Error::TimedOut),
                };
                if interrupted {
                    let generation = state.generations[slot];
                    drop(state);
                    abandon(shared, slot, generation);
                    state = shared.lock();
                }
            }
        }
        let now = Instant::now();
        let next = state.running.iter().flatten().map(|r| match &r.clock {
            Some(clock) => clock.item_started().map_or(now + limit, |t| t + limit),
            None => r.deadline.unwrap_or(now + limit),
        });
        state = match next.min() {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                shared.deadlines_changed.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0
            }
            None => shared.deadlines_changed.wait(state).unwrap_or_else(|e| e.into_inner()),
        };
    }
}
