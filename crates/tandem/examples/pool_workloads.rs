//! tandem's side of `bench/compare_python.py`: the three pool workloads,
//! printed as one JSON object per line (stdout) so a script can set them
//! beside Python's `concurrent.futures` and `multiprocessing` run the same way.
//!
//! ```text
//! cargo run --release -p tandem --example pool_workloads [-- --quick] [--only round_trip|map|replace]
//! ```
//!
//! 1. `round_trip`: submit one trivial task, wait for its result; the median
//!    over many (a pool of 2 workers, warmed up first).
//! 2. `map`: `Pool::map` over 1,000,000 trivial tasks with 2 workers (the
//!    pool batches by itself); tasks per second, median of a few runs.
//! 3. `replace`: a task aborts its worker (1 worker, process mode); the next
//!    task was submitted right behind it. Times are from the moment of death
//!    (CLOCK_MONOTONIC stamped by the dying task into shared memory) to the
//!    next task starting in the new worker, and to its result in the caller.
//!
//! Also the raw OS floor in the same run: a 1-byte pipe round trip between
//! two processes (`tandem_floor::PipeEcho`), and for the replacement
//! workload a bare fork + exit + wait and a posix_spawn of /bin/true + wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tandem::shm::SharedSlice;
use tandem::{Mode, Pool, StartMethod};

/// Nanoseconds on CLOCK_MONOTONIC: the same clock in every process (and the
/// one Python's `time.monotonic_ns` reads), so stamps from different
/// processes can be subtracted.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// Median, 10th and 90th percentile of samples in nanoseconds, as microseconds.
fn summary(mut ns: Vec<u64>) -> (f64, f64, f64) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    (at(0.5), at(0.1), at(0.9))
}

fn variants() -> Vec<(String, Mode, StartMethod)> {
    vec![
        ("Thread".into(), Mode::Thread, StartMethod::Spawn),
        ("Process/Spawn".into(), Mode::Process, StartMethod::Spawn),
        ("Process/ForkServer".into(), Mode::Process, StartMethod::ForkServer),
    ]
}

fn pool(mode: Mode, method: StartMethod, workers: usize) -> Pool {
    Pool::builder().mode(mode).workers(workers).start_method(method).build().expect("building a pool")
}

fn print_latency(implementation: &str, variant: &str, workload: &str, samples: Vec<u64>) {
    let n = samples.len();
    let (median, p10, p90) = summary(samples);
    println!(
        r#"{{"impl":"{implementation}","variant":"{variant}","workload":"{workload}","n":{n},"median_us":{median:.3},"p10_us":{p10:.3},"p90_us":{p90:.3}}}"#
    );
}

/// Median pipe round trip between two processes. The kernel decides where
/// the echo child runs: on the same CPU a round trip is a few microseconds,
/// across CPUs of this VM tens (an idle vCPU must be woken), so the floor is
/// measured both as placed and with both ends pinned to one CPU.
fn pipe_floor(iterations: usize, pinned: bool) {
    let saved = rustix::thread::sched_getaffinity(None).expect("reading this thread's CPU affinity");
    if pinned {
        let mut one = rustix::thread::CpuSet::new();
        one.set((0..rustix::thread::CpuSet::MAX_CPU).find(|&c| saved.is_set(c)).unwrap_or(0));
        // The forked echo child inherits the mask.
        rustix::thread::sched_setaffinity(None, &one).expect("pinning to one CPU");
    }
    let mut echo = tandem_floor::PipeEcho::start().expect("starting the pipe echo child");
    for _ in 0..iterations / 10 {
        echo.round_trip().expect("pipe round trip");
    }
    let samples = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            echo.round_trip().expect("pipe round trip");
            start.elapsed().as_nanos() as u64
        })
        .collect();
    drop(echo);
    rustix::thread::sched_setaffinity(None, &saved).expect("restoring this thread's CPU affinity");
    let variant = if pinned { "pipe 1 byte, 2 processes, one CPU" } else { "pipe 1 byte, 2 processes" };
    print_latency("floor", variant, "round_trip", samples);
}

fn round_trips(iterations: usize) {
    pipe_floor(iterations, true);
    pipe_floor(iterations, false);

    for (name, mode, method) in variants() {
        let pool = pool(mode, method, 2);
        for _ in 0..iterations / 10 {
            pool.submit(3u64, square).join().expect("warm-up task");
        }
        let samples = (0..iterations)
            .map(|_| {
                let start = Instant::now();
                let r = pool.submit(3u64, square).join().expect("trivial task");
                let elapsed = start.elapsed().as_nanos() as u64;
                assert_eq!(r, 9);
                elapsed
            })
            .collect();
        print_latency("tandem", &name, "round_trip", samples);
    }
}

fn maps(items: u64, runs: usize) {
    let expected = (0..items).fold(0u64, |acc, x| acc.wrapping_add(square(x)));
    for (name, mode, method) in variants() {
        let pool = pool(mode, method, 2);
        // Warm up: start the workers and let the batch sizer see a few batches.
        let _ = pool.map(0..10_000u64, square).count();
        let mut rates: Vec<f64> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                let sum =
                    pool.map(0..items, square).map(|r| r.expect("map item")).fold(0u64, u64::wrapping_add);
                let seconds = start.elapsed().as_secs_f64();
                assert_eq!(sum, expected);
                items as f64 / seconds
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        let best = rates[rates.len() - 1];
        println!(
            r#"{{"impl":"tandem","variant":"{name}","workload":"map","items":{items},"runs":{runs},"tasks_per_s":{median:.0},"best_tasks_per_s":{best:.0}}}"#
        );
    }
}

fn replacements(iterations: usize) {
    // For reference: the OS floor of starting a process at all.
    let forks = (0..iterations).map(|_| tandem_floor::fork_wait().expect("fork").as_nanos() as u64).collect();
    print_latency("floor", "fork + _exit + wait", "replace", forks);
    let spawns = (0..iterations)
        .map(|_| tandem_floor::spawn_true_wait().expect("spawning /bin/true").as_nanos() as u64)
        .collect();
    print_latency("floor", "posix_spawn /bin/true + wait", "replace", spawns);

    let death = SharedSlice::<AtomicU64>::new(1).expect("a shared slot for the death stamp");
    for (name, mode, method) in variants() {
        if mode == Mode::Thread {
            // A thread cannot die alone: an abort takes the whole process.
            println!(
                r#"{{"impl":"tandem","variant":"{name}","workload":"replace","n":0,"note":"not applicable: an abort on a thread ends the whole process"}}"#
            );
            continue;
        }
        let pool = pool(mode, method, 1);
        pool.submit(3u64, square).join().expect("warm-up task");
        let (mut to_start, mut to_result) = (Vec::new(), Vec::new());
        for _ in 0..iterations {
            death[0].store(0, Ordering::SeqCst);
            let crash = pool.submit(death.clone(), |d: SharedSlice<AtomicU64>| -> u64 {
                d[0].store(monotonic_ns(), Ordering::SeqCst);
                std::process::abort()
            });
            let next = pool.submit(0u64, |_| monotonic_ns());
            assert!(matches!(crash.join(), Err(tandem::Error::WorkerDied { .. })));
            let started = next.join().expect("the task after a worker's death");
            let got = monotonic_ns();
            let died = death[0].load(Ordering::SeqCst);
            assert!(
                died > 0 && started > died,
                "the crash task stamps its death before the next task starts"
            );
            to_start.push(started - died);
            to_result.push(got - died);
        }
        let n = to_start.len();
        let (start_median, start_p10, start_p90) = summary(to_start);
        let (result_median, result_p10, result_p90) = summary(to_result);
        println!(
            r#"{{"impl":"tandem","variant":"{name}","workload":"replace","n":{n},"median_us":{result_median:.3},"p10_us":{result_p10:.3},"p90_us":{result_p90:.3},"to_start_median_us":{start_median:.3},"to_start_p10_us":{start_p10:.3},"to_start_p90_us":{start_p90:.3}}}"#
        );
    }
}

fn main() {
    tandem::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only round_trip|map|replace`: one workload (for profiling).
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).map(String::as_str);
    let wanted = |w: &str| only.is_none_or(|o| o == w);
    let (round_trip_n, map_items, map_runs, replace_n) =
        if quick { (500, 100_000, 1, 5) } else { (5_000, 1_000_000, 3, 40) };
    if wanted("round_trip") {
        round_trips(round_trip_n);
    }
    if wanted("map") {
        maps(map_items, map_runs);
    }
    if wanted("replace") {
        replacements(replace_n);
    }
}
