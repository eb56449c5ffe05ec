//! Shared or not: threads change one counter that everyone sees; processes
//! each change their own copy, and the parent's counter never moves.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tandem::Mode;

use super::{ms, now_ns, pid, shows, tid};

const UNITS: usize = 4;
const ADDS_PER_UNIT: u64 = 1000;

/// One counter, a plain static of this program. Threads share it; every
/// process has its own.
static COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Serialize, Deserialize)]
struct Seen {
    at_ns: u64,
    pid: u32,
    tid: u32,
    /// The counter as this unit saw it right after adding its share.
    after_my_adds: u64,
}

fn add_to_counter(_: ()) -> Seen {
    for _ in 0..ADDS_PER_UNIT {
        COUNTER.fetch_add(1, Ordering::SeqCst);
    }
    Seen { at_ns: now_ns(), pid: pid(), tid: tid(), after_my_adds: COUNTER.load(Ordering::SeqCst) }
}

/// Run `UNITS` units of `mode`, each adding `ADDS_PER_UNIT`, and print what
/// each saw. Returns the parent's counter afterwards.
fn round(origin: u64, mode: Mode) -> Result<u64, tandem::Error> {
    let before = COUNTER.load(Ordering::SeqCst);
    println!(
        "{:>8.1} ms  parent (pid {}): counter = {before}; starting {UNITS} {mode:?} units, each adds {ADDS_PER_UNIT}",
        ms(origin, now_ns()),
        pid()
    );
    let handles =
        (0..UNITS).map(|_| tandem::spawn(mode, (), add_to_counter)).collect::<Result<Vec<_>, _>>()?;
    let mut seen = handles.into_iter().map(|h| h.join()).collect::<Result<Vec<_>, _>>()?;
    seen.sort_by_key(|s| s.at_ns);
    for s in &seen {
        println!(
            "{:>8.1} ms  {mode:?} unit pid {:<7} tid {:<7}: counter after my adds = {}",
            ms(origin, s.at_ns),
            s.pid,
            s.tid,
            s.after_my_adds
        );
    }
    let after = COUNTER.load(Ordering::SeqCst);
    println!("{:>8.1} ms  parent: counter = {after}", ms(origin, now_ns()));
    Ok(after)
}

pub fn run() -> Result<(), tandem::Error> {
    let origin = now_ns();
    let total = UNITS as u64 * ADDS_PER_UNIT;

    println!("1) threads");
    let after_threads = round(origin, Mode::Thread)?;
    if after_threads == total {
        println!(
            "             all {UNITS} threads changed the parent's own counter: {total} = {UNITS} x {ADDS_PER_UNIT}"
        );
    } else {
        println!(
            "             unexpected: the threads' adds should make {total}, the parent sees {after_threads}"
        );
    }

    println!("\n2) processes");
    let after_processes = round(origin, Mode::Process)?;
    if after_processes == after_threads {
        println!(
            "             each process added {ADDS_PER_UNIT} to its own copy (it started from 0: a fresh \
             process, not a copy of this one);\n             the parent's counter is still {after_processes}"
        );
    } else {
        println!(
            "             unexpected: the parent's counter moved from {after_threads} to {after_processes}"
        );
    }
    shows(
        "threads share their process's memory, so a change by one is seen by all; each process has its own \
         memory, so a child's change never reaches the parent (use tandem's ipc or shm types to share on purpose)",
    );
    Ok(())
}
