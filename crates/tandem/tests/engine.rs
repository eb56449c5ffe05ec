//! The process pool's engine: a fixed number of parent threads drives any
//! number of workers (one event loop, a few starters), and every worker of
//! a big pool takes tasks; a memory limit kept by a cgroup costs the loop
//! no wake-ups.

mod common;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use tandem::{Mode, Pool, StartMethod};

/// The tests here count this process's threads: one at a time.
static ALONE: Mutex<()> = Mutex::new(());

/// Threads a process pool may add to its parent, whatever its size: the
/// loop, the starters, the crate's one watcher (issue 13 allows 8).
const MOST_ADDED: usize = 8;

/// Raise the open-file limit to its hard limit: 256 workers hold about 770
/// descriptors here, near a common soft limit of 1,024.
fn raise_fd_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum },
    );
}

fn pid(_: u32) -> u32 {
    std::process::id()
}

#[test]
fn a_process_pool_of_any_size_adds_a_fixed_number_of_threads() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    tandem::init();
    raise_fd_limit();
    for workers in [1usize, 16, 256] {
        let before = common::threads();
        let pool = Pool::builder()
            .mode(Mode::Process)
            .workers(workers)
            .start_method(StartMethod::ForkServer)
            .build()
            .unwrap();
        // Enough tasks at once that every worker must take some: each
        // answers with its pid, and all `workers` pids must show up.
        let mut seen = HashSet::new();
        let mut most = 0;
        while seen.len() < workers {
            let handles: Vec<_> = (0..workers as u32 * 4).map(|i| pool.submit(i, pid)).collect();
            most = most.max(common::threads() - before);
            seen.extend(handles.into_iter().map(|h| h.join().unwrap()));
            most = most.max(common::threads() - before);
        }
        assert!(
            most <= MOST_ADDED,
            "a pool of {workers} workers added {most} threads (at most {MOST_ADDED} allowed)"
        );
        drop(pool);
    }
}

/// Thread ids of this process's pool loops (named `tandem-pool-loop`, which
/// `comm` cuts to 15 bytes).
fn pool_loops() -> HashSet<u32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "tandem-pool-loo")
        })
        .filter_map(|t| t.file_name().to_str()?.parse().ok())
        .collect()
}

/// Times thread `tid` of this process slept.
fn sleeps(tid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether the calling worker is in a memory cgroup its pool made.
fn in_a_pool_cgroup(parent: u32) -> bool {
    std::fs::read_to_string("/proc/self/cgroup").unwrap().contains(&format!("/tandem-{parent}-"))
}

/// The workload: a task that runs for 300 ms.
fn run_300_ms(_: ()) -> u8 {
    std::thread::sleep(Duration::from_millis(300));
    1
}

#[test]
fn a_memory_limit_wakes_the_loop_only_when_the_pool_samples() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    tandem::init();
    for sampled in [false, true] {
        let before = pool_loops();
        let builder = Pool::builder().mode(Mode::Process).workers(1).worker_memory_limit(256 << 20);
        let pool = if sampled { builder.__worker_memory_by_sampling() } else { builder }.build().unwrap();
        let cgroup = pool.submit(std::process::id(), in_a_pool_cgroup).join().unwrap();
        // Named by now: it started the worker that answered.
        let new: Vec<u32> = pool_loops().difference(&before).copied().collect();
        let [lp] = new[..] else { panic!("one new pool loop, not {new:?}") };
        if sampled {
            assert!(!cgroup, "sampling was forced");
        } else if cgroup_v1_must_work() {
            assert!(cgroup, "root with cgroup v1's memory controller must get a cgroup");
        } else if !cgroup {
            eprintln!("NOTE: no memory cgroup could be made here: the pool samples, checked as such");
        }
        let slept = sleeps(lp);
        assert_eq!(pool.submit((), run_300_ms).join().unwrap(), 1);
        let woke = sleeps(lp) - slept;
        eprintln!("sampled {sampled}, cgroup {cgroup}: the loop woke {woke} times in a 300 ms task");
        if cgroup {
            // The kernel keeps the limit: nothing wakes the loop.
            assert!(woke < 10, "the loop woke {woke} times");
        } else {
            // Every 5 ms: about 60 times.
            assert!(woke > 30, "the loop woke {woke} times");
        }
    }
}

/// Whether a pool here must get a memory cgroup: root, with cgroup v1's
/// memory controller at /sys/fs/cgroup/memory (the dev machine and CI).
fn cgroup_v1_must_work() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let root = status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    root && std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists()
}
