//! The process pool's engine: a fixed number of parent threads drives any
//! number of workers (one event loop, a few starters), and every worker of
//! a big pool takes tasks.

mod common;

use std::collections::HashSet;

use tandem::{Mode, Pool, StartMethod};

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
