//! Pools built, used and dropped over and over leave descriptors, threads,
//! children and mappings where they started, and no zombie at any point. One
//! test in its own binary, so no other test's threads or descriptors move
//! the counts.

mod common;

use std::time::{Duration, Instant};

use tandem::{Mode, Pool, StartMethod};

/// Lines of /proc/self/maps: one per mapping (thread stacks, arenas, ...).
fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().count()
}

/// Resident memory of this process in KiB, from smaps_rollup.
fn rss_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
    let line = text.lines().find(|l| l.starts_with("Rss:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Build a pool, run a task on each worker and a small map, drop it.
fn cycle(mode: Mode, method: StartMethod) {
    let pool = Pool::builder().mode(mode).workers(2).start_method(method).build().unwrap();
    let a = pool.submit(20u64, |x| x + 1);
    let b = pool.submit(30u64, |x| x + 2);
    let sum: u64 = pool.map(0..8u64, |x| x * 2).map(Result::unwrap).sum();
    assert_eq!((a.join().unwrap(), b.join().unwrap(), sum), (21, 32, 56));
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    fds: usize,
    threads: usize,
    children: usize,
}

fn snapshot() -> Snapshot {
    Snapshot { fds: common::open_fds(), threads: common::threads(), children: common::children().len() }
}

#[test]
fn pools_built_and_dropped_repeatedly_leave_no_trace() {
    let cases = [
        (Mode::Thread, StartMethod::Spawn, 1000),
        (Mode::Process, StartMethod::ForkServer, 1000),
        (Mode::Process, StartMethod::Spawn, 1000),
    ];
    // Warm-up: the fork server and its status thread start once and live as
    // long as the process; malloc grows its arenas to the peak thread count.
    for &(mode, method, _) in &cases {
        for _ in 0..20 {
            cycle(mode, method);
        }
    }
    let before = snapshot();
    let (maps_before, rss_before) = (mappings(), rss_kib());
    for &(mode, method, count) in &cases {
        let start = Instant::now();
        for i in 0..count {
            cycle(mode, method);
            if i % 10 == 0 {
                assert!(common::zombies().is_empty(), "{mode:?}/{method:?}: zombies {:?}", common::zombies());
            }
        }
        let elapsed = start.elapsed();
        // Pool threads are joined before drop returns; the eventual check only
        // covers the kernel updating /proc/self/task after a thread exits.
        assert!(
            common::eventually(Duration::from_secs(5), || snapshot() == before),
            "{mode:?}/{method:?}: {:?} != {before:?}",
            snapshot()
        );
        assert!(common::zombies().is_empty());
        let (maps, rss) = (mappings(), rss_kib());
        eprintln!(
            "{mode:?}/{method:?}: {count} pools in {elapsed:?}; mappings {maps_before} -> {maps}, rss {rss_before} -> {rss} KiB"
        );
        // A leaked thread stack or shared mapping per pool would add
        // hundreds of lines; malloc may still split an arena now and then.
        assert!(maps <= maps_before + 16, "{mode:?}/{method:?}: mappings grew from {maps_before} to {maps}");
        assert!(rss <= rss_before + 8 * 1024, "{mode:?}/{method:?}: RSS grew from {rss_before} to {rss} KiB");
    }
}
