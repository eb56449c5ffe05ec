//! What [`Pool::stats`](super::Pool::stats) reports.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use super::backend::Backend;
use super::shared::Shared;
use crate::UnitId;

/// Numbers about one worker slot.
#[derive(Clone, Debug)]
#[non_exhaustive]
///
/// ```
/// let pool = tandem::Pool::builder().workers(1).build().unwrap();
/// pool.submit(1u8, |x| x).join().unwrap();
/// let w = &pool.stats().workers[0];
/// assert_eq!((w.tasks_done, w.restarts), (1, 0));
/// ```
pub struct WorkerStats {
    /// The thread or process in the slot now.
    pub id: UnitId,
    /// Tasks run to an outcome in this slot, across replacements.
    pub tasks_done: u64,
    /// Times the slot's worker was replaced (death, time-out, cancel, recycling).
    pub restarts: u64,
    /// CPU time used by the current worker (user + system).
    pub cpu_time: Duration,
    /// Resident memory of the current worker process in bytes; 0 for a
    /// thread, which shares its process's memory.
    pub memory_bytes: u64,
}

/// A snapshot of a pool.
///
/// The task counters count submitted tasks and map items alike (a map item
/// is a task). `submitted`, `completed`, `failed` and `retried` only grow;
/// `queued` and `running` are what is in the pool now, and
/// `submitted = completed + failed + queued + running` in a snapshot taken
/// while nothing else submits or finishes. A submitted task counts as
/// finished when its handle resolves; a map item when its map takes its
/// batch's outcome (as its iterator reaches the batch), so a finished item
/// whose batch the map has not reached yet still counts as running. The
/// items of a map dropped before it finished count as failed (the map
/// stopped them).
#[derive(Clone, Debug)]
#[non_exhaustive]
///
/// ```
/// let pool = tandem::Pool::builder().workers(2).build().unwrap();
/// let stats = pool.stats();
/// assert_eq!(stats.workers.len(), 2);
/// assert_eq!(stats.queued, 0);
///
/// pool.submit(1u8, |x| x).join().unwrap();
/// assert!(pool.submit((), |()| -> u8 { panic!("no") }).join().is_err());
/// let ok = pool.map(0..10u32, |x| x).filter(Result::is_ok).count();
/// let s = pool.stats();
/// assert_eq!((s.submitted, s.completed, s.failed, s.running), (12, 1 + ok as u64, 1, 0));
/// ```
pub struct PoolStats {
    /// One entry per worker slot.
    pub workers: Vec<WorkerStats>,
    /// Tasks (and map items) waiting for a worker.
    pub queued: usize,
    /// Tasks and map items submitted so far (a re-run is not counted again).
    pub submitted: u64,
    /// Of those, how many finished with a value.
    pub completed: u64,
    /// Of those, how many finished with an error (a panic, a worker's
    /// death after its last retry, a time-out, a cancel, the pool's end).
    pub failed: u64,
    /// Re-runs after a worker died under a task or item (`retries`).
    pub retried: u64,
    /// Submitted, not queued, not finished: running, or (a map item)
    /// finished in a batch its map has not taken yet.
    pub running: usize,
}

/// A snapshot of every slot of `shared`.
pub(crate) fn snapshot<B: Backend>(shared: &Shared<B>) -> PoolStats {
    let workers = (0..shared.config.workers)
        .map(|i| {
            let slot = shared.slot(i).clone();
            let (cpu_time, memory_bytes) = match (slot.unit, slot.tid) {
                (Some(UnitId::Process(pid)), _) => {
                    (cpu_time(&format!("/proc/{pid}/stat")), resident_bytes(pid))
                }
                (_, Some(tid)) => (cpu_time(&format!("/proc/self/task/{tid}/stat")), 0),
                _ => (Duration::ZERO, 0),
            };
            WorkerStats {
                id: slot.unit.unwrap_or(UnitId::Process(0)),
                tasks_done: slot.tasks_done,
                restarts: slot.restarts,
                cpu_time,
                memory_bytes,
            }
        })
        .collect();
    let c = &shared.counters;
    // Finished first, submitted last: a task that moves during the
    // snapshot is counted where it was, never twice.
    let (completed, failed, retried) =
        (c.completed.load(SeqCst), c.failed.load(SeqCst), c.retried.load(SeqCst));
    // A queued job already resolved (cancelled) no longer counts.
    let queued: usize = shared
        .lock()
        .queue
        .iter()
        .filter(|job| !job.completion.is_resolved())
        .map(|job| job.batch.as_ref().map_or(1, |b| b.items as usize))
        .sum();
    let submitted = c.submitted.load(SeqCst);
    let running = submitted.saturating_sub(completed + failed + queued as u64) as usize;
    PoolStats { workers, queued, submitted, completed, failed, retried, running }
}

/// User + system CPU time from a /proc stat file.
fn cpu_time(path: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(path) else { return Duration::ZERO };
    let Some((_, rest)) = stat.rsplit_once(')') else { return Duration::ZERO };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

/// Resident memory of a process, from /proc/PID/statm.
fn resident_bytes(pid: u32) -> u64 {
    let Ok(statm) = std::fs::read_to_string(format!("/proc/{pid}/statm")) else { return 0 };
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * rustix::param::page_size() as u64
}
