//! A crash takes its whole process with it, and nothing outside it.
//!
//! 1. A sacrificial process runs several threads; one of them writes through
//!    a null pointer. The kernel kills the process with SIGSEGV, and every
//!    other thread in it dies mid-work: their results are gone. (This runs in a
//!    child process because done here it would kill the demo itself.)
//! 2. Several processes work side by side; one of them segfaults. Only that
//!    one dies: the others finish and return their results, and this process
//!    carries on.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{describe_failure, ms, now_ns, pid, pid_of, shows, tid};

const STEADY_THREADS: u32 = 3;
const STEPS: u32 = 10;
const STEP: Duration = Duration::from_millis(100);
const CRASH_AFTER: Duration = Duration::from_millis(350);

/// A crash should not leave core files behind in the user's directory.
fn no_core_dump() {
    let none = rustix::process::Rlimit { current: Some(0), maximum: Some(0) };
    let _ = rustix::process::setrlimit(rustix::process::Resource::Core, none);
}

/// A thread in the doomed process: counts its steps aloud. It prints straight
/// away (stdout is inherited from the demo) because its result will never
/// reach anyone.
fn steady_worker((origin, n): (u64, u32)) -> u32 {
    for step in 1..=STEPS {
        std::thread::sleep(STEP);
        println!(
            "{:>8.1} ms    [pid {} tid {}] thread {n}: step {step} of {STEPS} done",
            ms(origin, now_ns()),
            pid(),
            tid()
        );
    }
    STEPS
}

fn crashing_worker(origin: u64) -> u32 {
    std::thread::sleep(CRASH_AFTER);
    println!(
        "{:>8.1} ms    [pid {} tid {}] crashing thread: writing through a null pointer now",
        ms(origin, now_ns()),
        pid(),
        tid()
    );
    tandem::chaos::segfault()
}

/// The body of the sacrificial process: start the threads, wait for all.
/// It returns only if no thread took the process down.
fn doomed_process(origin: u64) -> Result<u32, String> {
    no_core_dump();
    let steady = (1..=STEADY_THREADS)
        .map(|n| tandem::thread::spawn((origin, n), steady_worker))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let crasher = tandem::thread::spawn(origin, crashing_worker).map_err(|e| e.to_string())?;
    let mut steps_done = 0;
    for h in steady {
        steps_done += h.join().map_err(|e| e.to_string())?;
    }
    crasher.join().map_err(|e| e.to_string())?;
    Ok(steps_done)
}

#[derive(Serialize, Deserialize)]
struct Finished {
    at_ns: u64,
    pid: u32,
    sum: u64,
}

/// A well-behaved process unit: works a little, then returns a sum. The one
/// numbered `crasher` segfaults instead, while the others are still working.
fn side_by_side((origin, n, crasher): (u64, u64, u64)) -> Finished {
    no_core_dump();
    if n == crasher {
        std::thread::sleep(Duration::from_millis(100));
        // Said from inside, as it happens: nobody will hear from it again.
        println!(
            "{:>8.1} ms    [pid {}] process {n}: writing through a null pointer now",
            ms(origin, now_ns()),
            pid()
        );
        tandem::chaos::segfault();
    }
    std::thread::sleep(Duration::from_millis(300));
    Finished { at_ns: now_ns(), pid: pid(), sum: (1..=n * 1000).sum() }
}

pub fn run() -> Result<(), tandem::Error> {
    let origin = now_ns();

    println!(
        "1) one process, {} threads: {STEADY_THREADS} count to {STEPS} in {STEP:?} steps, one crashes after \
         {CRASH_AFTER:?}",
        STEADY_THREADS + 1
    );
    let doomed = tandem::process::spawn(origin, doomed_process)?;
    let doomed_pid = pid_of(&doomed);
    println!("{:>8.1} ms  demo (pid {}): started the process, pid {doomed_pid}", ms(origin, now_ns()), pid());
    let outcome = doomed.join();
    let ended = now_ns();
    match &outcome {
        Ok(Ok(steps)) => println!(
            "{:>8.1} ms  demo: unexpected: the process survived and its threads did {steps} steps",
            ms(origin, ended)
        ),
        Ok(Err(e)) => {
            println!("{:>8.1} ms  demo: the process could not run its threads: {e}", ms(origin, ended))
        }
        Err(e) => println!(
            "{:>8.1} ms  demo: process {doomed_pid} {}; of the {} steps its threads were to do, none came \
             back, and the steps not yet printed never happened",
            ms(origin, ended),
            describe_failure(e),
            STEADY_THREADS * STEPS
        ),
    }

    const CRASHER: u64 = 3;
    println!("\n2) four processes side by side; process {CRASHER} crashes while the others work");
    let units = (1..=4u64)
        .map(|n| tandem::process::spawn((origin, n, CRASHER), side_by_side).map(|h| (n, h)))
        .collect::<Result<Vec<_>, _>>()?;
    let pids: Vec<String> = units.iter().map(|(n, h)| format!("{n} (pid {})", pid_of(h))).collect();
    println!("{:>8.1} ms  demo: started processes {}", ms(origin, now_ns()), pids.join(", "));
    // Print in the order things happened; a death is stamped when it was seen.
    let mut lines = Vec::new();
    let mut survivors = 0;
    for (n, h) in units {
        let unit_pid = pid_of(&h);
        match h.join() {
            Ok(f) => {
                survivors += 1;
                lines.push((
                    f.at_ns,
                    format!("process {n} (pid {}): finished, sum of 1..={} is {}", f.pid, n * 1000, f.sum),
                ));
            }
            Err(e) => lines.push((
                now_ns(),
                format!("process {n} (pid {unit_pid}): {} (seen when joined)", describe_failure(&e)),
            )),
        }
    }
    lines.sort_by_key(|(at, _)| *at);
    for (at, line) in lines {
        println!("{:>8.1} ms  {line}", ms(origin, at));
    }
    println!(
        "{:>8.1} ms  demo (pid {}): still running; {survivors} of 4 processes returned their results",
        ms(origin, now_ns()),
        pid()
    );
    shows(
        "a crash in one thread kills every thread of its process and their unfinished work; \
         a crash in one process kills only that process: the others and their parent carry on",
    );
    Ok(())
}
