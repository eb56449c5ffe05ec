//! `worker_memory_limit`: a limit on each worker's resident memory (what
//! its task touches, not the address space it reserves).
//!
//! Once per pool ([`Memory::new`]) the mechanism is chosen and recorded
//! (it names itself in the error of a worker it killed, as
//! [`MemoryLimitBy`]):
//!
//! - **A memory cgroup per worker** (`cgroup`: v2 `memory.max`, else v1
//!   `memory.limit_in_bytes`) when the process may make one: the kernel
//!   charges every page the worker and the programs it runs touch and its
//!   OOM killer kills the worker at the limit, so nothing overshoots; the
//!   loop does nothing while tasks run (no wake-ups) and tasks may take the
//!   lanes. A death by SIGKILL is the limit's when the worker's cgroup
//!   counted an OOM kill (`cgroup::Leaf::oom_kill`).
//! - **Sampling** otherwise: while a worker runs a task or a map batch, the
//!   loop wakes at least every [`SAMPLE_EVERY`] (its `epoll_wait` time-out)
//!   and reads each running worker's resident set from `/proc/PID/statm`;
//!   a worker past the limit is SIGKILLed, and its death names the limit,
//!   what was seen and the mechanism. Between two samples a fast
//!   allocation can overshoot by what it touches in one interval (about
//!   `SAMPLE_EVERY` x the touch rate: measured in tests/reports.rs,
//!   `a_task_touching_1_gib_fails_naming_the_limit_and_its_mechanism`),
//!   and programs the worker runs are not counted. Tasks take the loop's
//!   path, not the lanes (the loop samples only what it watches).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Live;
use super::cgroup::Tree;
use crate::MemoryLimitBy;

/// How often a running worker's resident memory is read.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// How a pool enforces its resident limit.
pub(crate) enum Memory {
    /// No limit.
    Unlimited,
    /// The loop samples each running worker.
    Sampling,
    /// Each worker in a memory cgroup of its own, below the pool's.
    Cgroup(Arc<Tree>),
}

impl Memory {
    /// The mechanism for a pool with a resident limit of `limit` bytes (0:
    /// none): a cgroup if one can be made (unless `sample` forces the
    /// sampler, for tests), else sampling.
    pub(crate) fn new(limit: u64, sample: bool) -> Memory {
        if limit == 0 {
            return Memory::Unlimited;
        }
        if sample {
            return Memory::Sampling;
        }
        match Tree::make(limit) {
            Ok(tree) => Memory::Cgroup(tree),
            // Why none could be made is not an error: the sampler stands in,
            // and the error of a worker it kills says it did.
            Err(_why) => Memory::Sampling,
        }
    }

    /// The loop must sample running workers.
    pub(super) fn samples(&self) -> bool {
        matches!(self, Memory::Sampling)
    }

    /// The pool's sub-tree, when the limit is a cgroup's.
    pub(super) fn tree(&self) -> Option<&Arc<Tree>> {
        match self {
            Memory::Cgroup(tree) => Some(tree),
            _ => None,
        }
    }
}

/// Why `live` (dead by now) was killed for the resident limit, if it was:
/// what was seen, and by what.
pub(super) fn kill_of(live: &Live) -> Option<(Option<u64>, MemoryLimitBy)> {
    if let Some(seen) = live.over_memory {
        return Some((Some(seen), MemoryLimitBy::Sampling));
    }
    live.cgroup.as_ref()?.oom_kill()
}

/// The time-out of a loop that must sample: the earlier of its next
/// deadline and the next sample.
pub(super) fn next_wake(deadline: Option<Instant>, sampling: bool) -> Option<Instant> {
    if !sampling {
        return deadline;
    }
    let sample = Instant::now() + SAMPLE_EVERY;
    Some(deadline.map_or(sample, |d| d.min(sample)))
}

/// Kill `live` if its resident memory is past `limit` bytes; remember what
/// was seen for its death's error.
pub(super) fn enforce(live: &mut Live, limit: u64) {
    if live.over_memory.is_some() {
        return;
    }
    let Some(rss) = resident_bytes(live.child.pid()) else { return };
    if rss > limit {
        live.over_memory = Some(rss);
        let _ = live.child.kill();
    }
}

/// Resident memory of process `pid` in bytes, from `/proc/PID/statm`.
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}
