//! The multiprocessing.Lock demo: lost updates, and how a lock prevents them.
//!
//! Several processes each add 1 to one counter in shared memory many times,
//! the naive way: read the counter, then write back what was read plus one.
//! Two processes that read the same value both write the same result, and one
//! increment is lost. A short pause between the read and the write (the
//! "work" of the update) makes that window wide enough to hit often.
//!
//! Then the same processes do the same three steps holding a
//! `tandem::sync::Mutex`: one process at a time is between its read and its
//! write, and no update is lost.
//!
//! A barrier starts every process's loop at the same moment, so they really
//! run side by side (on a 2-core machine, two at a time, and the scheduler
//! also switches between them mid-update).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tandem::shm::SharedSlice;
use tandem::sync::{Barrier, Mutex};

use super::{ms, now_ns, pid, shows};

const UNITS: usize = 4;
const INCREMENTS: u64 = 20_000;
/// CPU pause hints between the read and the write: the race window.
const WINDOW_SPINS: u32 = 20;

/// The unprotected read-modify-write: deliberately not `fetch_add`.
fn increment(counter: &AtomicU64) {
    let seen = counter.load(Ordering::Relaxed);
    for _ in 0..WINDOW_SPINS {
        std::hint::spin_loop();
    }
    counter.store(seen + 1, Ordering::Relaxed);
}

#[derive(Serialize, Deserialize)]
struct Task {
    counter: SharedSlice<AtomicU64>,
    start_together: Barrier,
    /// `None`: the race; `Some`: each increment holds the lock. Its value is
    /// unused: like Python's Lock, it guards the counter, it does not hold it.
    lock: Option<Mutex<u8>>,
}

#[derive(Serialize, Deserialize)]
struct Report {
    pid: u32,
    started_ns: u64,
    finished_ns: u64,
}

fn add_many(task: Task) -> Result<Report, String> {
    task.start_together.wait().map_err(|e| e.to_string())?;
    let started_ns = now_ns();
    let counter = &task.counter[0];
    for _ in 0..INCREMENTS {
        match &task.lock {
            None => increment(counter),
            Some(lock) => {
                let _held = lock.lock().map_err(|_| "the lock was poisoned: a holder died".to_string())?;
                increment(counter);
            }
        }
    }
    Ok(Report { pid: pid(), started_ns, finished_ns: now_ns() })
}

/// One round: every process adds `INCREMENTS`; returns the final count.
fn round(origin: u64, lock: Option<Mutex<u8>>) -> Result<u64, tandem::Error> {
    let counter = SharedSlice::<AtomicU64>::new(1)?;
    let start_together = Barrier::new(UNITS as u32)?;
    let handles = (0..UNITS)
        .map(|_| {
            let task =
                Task { counter: counter.clone(), start_together: start_together.clone(), lock: lock.clone() };
            tandem::process::spawn(task, add_many)
        })
        .collect::<Result<Vec<_>, _>>()?;
    out!(
        "{:>8.1} ms  parent (pid {}): counter = 0; started {UNITS} processes, each adds 1 {INCREMENTS} times",
        ms(origin, now_ns()),
        pid()
    );
    let mut reports = Vec::new();
    for (n, h) in handles.into_iter().enumerate() {
        let report =
            h.join()?.map_err(|e| tandem::Error::Broken(format!("a process could not count: {e}")))?;
        reports.push((n + 1, report));
    }
    reports.sort_by_key(|(_, r)| r.finished_ns);
    for (n, r) in &reports {
        out!(
            "{:>8.1} ms  process {n} (pid {}): did its {INCREMENTS} increments (began at {:.1} ms)",
            ms(origin, r.finished_ns),
            r.pid,
            ms(origin, r.started_ns)
        );
    }
    let got = counter[0].load(Ordering::SeqCst);
    let expected = UNITS as u64 * INCREMENTS;
    let lost = expected.saturating_sub(got);
    out!(
        "{:>8.1} ms  parent: counter = {got}, expected {expected} ({UNITS} x {INCREMENTS}): {lost} updates lost \
         ({:.1}%)",
        ms(origin, now_ns()),
        lost as f64 * 100.0 / expected as f64
    );
    Ok(got)
}

pub fn run() -> Result<(), tandem::Error> {
    let origin = now_ns();
    let expected = UNITS as u64 * INCREMENTS;

    out!("1) without a lock: read the counter, pause, write back what was read + 1");
    let unlocked = round(origin, None)?;
    if unlocked < expected {
        out!(
            "             processes read the same value and wrote the same result over each other: each such \
             collision lost an update"
        );
    } else {
        out!(
            "             this time no update was lost: the race is still there, the processes just did not \
             collide (run it again)"
        );
    }

    out!("\n2) with a tandem::sync::Mutex held around the same read, pause and write");
    let locked = round(origin, Some(Mutex::new(0u8)?))?;
    if locked == expected {
        out!("             one process at a time was between its read and its write: nothing was lost");
    } else {
        out!("             unexpected: updates were lost while holding the lock");
    }
    shows(
        "a read-modify-write of shared memory by several processes at once loses updates (a race); holding a \
         lock shared by the processes (multiprocessing.Lock) makes each update whole, and the count exact",
    );
    Ok(())
}
