//! The multiprocessing.Array demo: several processes write into one
//! `tandem::shm::SharedSlice<AtomicU64>`, and the parent reads their writes
//! in place.
//!
//! The contrast is the `memory` demo, where each child process changed its
//! own copy of a counter and the parent never saw it. Here the slice is one
//! block of shared memory: the children's argument carries only its
//! descriptor, each child maps the very same pages, and what a child stores
//! is in the parent's memory at once — no result is sent back, nothing is
//! copied.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tandem::shm::SharedSlice;

use super::{ms, now_ns, pid, pid_of, shows};

const UNITS: usize = 4;
/// 8 MiB of u64s: big enough that copying it back would be noticed.
const VALUES: usize = 1 << 20;

/// The number process `unit` stores at `index`: says who wrote it and where.
fn value_for(unit: usize, index: usize) -> u64 {
    ((unit as u64 + 1) << 32) | index as u64
}

/// Header slots: a counter all units add to, then one pid slot per unit.
const TOTAL: usize = 0;
fn pid_slot(unit: usize) -> usize {
    1 + unit
}

#[derive(Serialize, Deserialize)]
struct Task {
    unit: usize,
    header: SharedSlice<AtomicU64>,
    values: SharedSlice<AtomicU64>,
}

/// Stamps only: everything the child produced stays in the shared slice.
#[derive(Serialize, Deserialize)]
struct Done {
    started_ns: u64,
    finished_ns: u64,
}

/// A child: write every `UNITS`th value starting at `unit`, count each write
/// in the shared total, and leave its pid in its header slot.
fn fill(task: Task) -> Done {
    let started_ns = now_ns();
    task.header[pid_slot(task.unit)].store(pid() as u64, Ordering::Relaxed);
    for index in (task.unit..task.values.len()).step_by(UNITS) {
        task.values[index].store(value_for(task.unit, index), Ordering::Relaxed);
        task.header[TOTAL].fetch_add(1, Ordering::Relaxed);
    }
    Done { started_ns, finished_ns: now_ns() }
}

pub fn run() -> Result<(), tandem::Error> {
    let origin = now_ns();
    let header = SharedSlice::<AtomicU64>::new(1 + UNITS)?;
    let values = SharedSlice::<AtomicU64>::new(VALUES)?;
    out!(
        "{:>8.1} ms  parent (pid {}): made a shared slice of {VALUES} AtomicU64 ({} MiB), all zero, and a small \
         header (a total counter and one pid slot per process)",
        ms(origin, now_ns()),
        pid(),
        (VALUES * 8) >> 20
    );
    let handles = (0..UNITS)
        .map(|unit| {
            let task = Task { unit, header: header.clone(), values: values.clone() };
            tandem::process::spawn(task, fill)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let spawned_pids: Vec<u32> = handles.iter().map(pid_of).collect();
    out!(
        "{:>8.1} ms  parent: started {UNITS} processes (pids {}); each is sent the slices' descriptors, not \
         their contents",
        ms(origin, now_ns()),
        spawned_pids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
    );
    let mut finished = Vec::new();
    for (unit, h) in handles.into_iter().enumerate() {
        finished.push((unit, h.join()?));
    }
    finished.sort_by_key(|(_, done)| done.finished_ns);
    for (unit, done) in &finished {
        out!(
            "{:>8.1} ms  process {} (pid {}): wrote its {} values (every {UNITS}th, from index {unit}; began at \
             {:.1} ms)",
            ms(origin, done.finished_ns),
            unit + 1,
            spawned_pids[*unit],
            VALUES / UNITS,
            ms(origin, done.started_ns)
        );
    }
    out!("{:>8.1} ms  parent: all joined; reading the slices in place:", ms(origin, now_ns()));
    let mut all_seen = true;
    for unit in 0..UNITS {
        let pid_seen = header[pid_slot(unit)].load(Ordering::Relaxed);
        let its_values = values.iter().enumerate().skip(unit).step_by(UNITS);
        let correct = its_values.filter(|(i, v)| v.load(Ordering::Relaxed) == value_for(unit, *i)).count();
        let is_its_pid = pid_seen == spawned_pids[unit] as u64;
        all_seen &= is_its_pid && correct == VALUES / UNITS;
        out!(
            "             process {}: pid slot says {pid_seen}{}; {correct} of its {} values are there",
            unit + 1,
            if is_its_pid { " (its pid)" } else { " (unexpected: not its pid)" },
            VALUES / UNITS
        );
    }
    let total = header[TOTAL].load(Ordering::Relaxed);
    out!("             total counter = {total} (expected {VALUES}, {UNITS} x {})", VALUES / UNITS);
    let seen_at = now_ns();
    if all_seen && total == VALUES as u64 {
        out!(
            "{:>8.1} ms  parent: every child's write is in the parent's memory: the same pages, so nothing was \
             copied back",
            ms(origin, seen_at)
        );
    } else {
        out!("{:>8.1} ms  parent: unexpected: some children's writes are missing", ms(origin, seen_at));
    }
    shows(
        "a SharedSlice is memory shared by every process that holds it (multiprocessing.Array/Value): what a \
         child stores the parent reads in place, with no copy; unlike the memory demo, where a child's change \
         stayed in the child",
    );
    Ok(())
}
