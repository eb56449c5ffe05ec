//! `worker_memory_limit`: a limit on each worker's resident memory (what
//! its task touches, not the address space it reserves).
//!
//! Enforced by sampling: while a worker runs a task or a map batch and the
//! pool has a limit, the loop wakes at least every [`SAMPLE_EVERY`] (its
//! `epoll_wait` time-out) and reads each running worker's resident set from
//! `/proc/PID/statm`; a worker past the limit is SIGKILLed, and its death
//! names the limit, what was seen and the mechanism. Between two samples a
//! fast allocation can overshoot by what it touches in one interval (about
//! `SAMPLE_EVERY` x the touch rate: measured in tests/reports.rs,
//! `a_task_touching_1_gib_fails_naming_the_resident_limit`). A cgroup v2
//! `memory.max` (exact, enforced by the kernel) is not made yet: this
//! machine's cgroup v2 has no memory controller.

use std::time::{Duration, Instant};

use super::Live;

/// How often a running worker's resident memory is read.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// What enforced the resident limit, for the error.
pub(crate) const BY_SAMPLING: &str =
    "the pool sampling each worker's resident memory every 5 ms (no cgroup v2 memory.max could be made)";

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
