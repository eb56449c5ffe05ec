//! Five threads and five processes each "work" for one second. They all run
//! at once, so the whole demo takes about one second, not ten; and they start
//! and finish in an order the OS scheduler picked, not the one we spawned in.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem::Mode;

use super::{ms, now_ns, pid, shows, tid};

const UNITS_PER_KIND: usize = 5;
const WORK: Duration = Duration::from_secs(1);

/// What a unit saw of itself, stamped on the machine-wide monotonic clock.
#[derive(Serialize, Deserialize)]
struct Report {
    started_ns: u64,
    finished_ns: u64,
    pid: u32,
    tid: u32,
}

/// The task: note the start, "work" (sleep) for one second, note the end.
fn work(_: ()) -> Report {
    let started_ns = now_ns();
    std::thread::sleep(WORK);
    Report { started_ns, finished_ns: now_ns(), pid: pid(), tid: tid() }
}

pub fn run() -> Result<(), tandem::Error> {
    let origin = now_ns();
    println!(
        "demo pid {}: spawning {UNITS_PER_KIND} threads, then {UNITS_PER_KIND} processes; each sleeps {WORK:?}\n",
        pid()
    );
    // Start every unit before joining any: that is what lets them overlap.
    let mut handles = Vec::new();
    for mode in [Mode::Thread, Mode::Process] {
        for n in 1..=UNITS_PER_KIND {
            let label = match mode {
                Mode::Thread => format!("thread {n}"),
                Mode::Process => format!("process {n}"),
            };
            handles.push((label, tandem::spawn(mode, (), work)?));
        }
    }
    let all_spawned = now_ns();

    let mut reports = Vec::new();
    for (label, handle) in handles {
        reports.push((label, handle.join()?));
    }
    let elapsed = now_ns() - origin;

    // Every event in the order it happened, whoever saw it.
    let mut events: Vec<(u64, &str, &str, &Report)> = Vec::new();
    for (label, r) in &reports {
        events.push((r.started_ns, "start ", label, r));
        events.push((r.finished_ns, "finish", label, r));
    }
    events.sort_by_key(|e| e.0);
    for (at, what, label, r) in &events {
        println!("{:>8.1} ms  {what}  {label:<10}  pid {:<7} tid {}", ms(origin, *at), r.pid, r.tid);
    }

    let order = |pick: fn(&Report) -> u64| {
        let mut by_time: Vec<&(String, Report)> = reports.iter().collect();
        by_time.sort_by_key(|(_, r)| pick(r));
        by_time.iter().map(|(l, _)| l.replace("thread ", "T").replace("process ", "P")).collect::<Vec<_>>()
    };
    println!("\nall {} units were spawned {:.1} ms after the start", reports.len(), ms(origin, all_spawned));
    println!("started  in order: {}", order(|r| r.started_ns).join(" "));
    println!("finished in order: {}", order(|r| r.finished_ns).join(" "));
    let last_start = reports.iter().map(|(_, r)| r.started_ns).max().unwrap_or(0);
    let first_finish = reports.iter().map(|(_, r)| r.finished_ns).min().unwrap_or(0);
    if last_start < first_finish {
        println!(
            "all {} units were running at once: the last one started {:.1} ms before the first one finished",
            reports.len(),
            ms(last_start, first_finish)
        );
    } else {
        println!("not all units overlapped: one finished before the last one started (a very busy machine?)");
    }
    let one_after_another = WORK.as_secs_f64() * reports.len() as f64;
    println!(
        "total elapsed: {:.3} s for {} units of {:.0} s each ({one_after_another:.0} s if run one after another)",
        elapsed as f64 / 1e9,
        reports.len(),
        WORK.as_secs_f64()
    );
    shows(
        "threads and processes run at the same time: ten one-second jobs took about one second, \
         and the OS scheduler, not the program, chose the order they started and finished in",
    );
    Ok(())
}
