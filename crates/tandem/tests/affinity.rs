//! A fork server started from a pinned thread must not pin every worker it
//! forks later. One test in its own binary: the fork server starts here.

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
use tandem::StartMethod;

fn allowed_cpus(_: ()) -> usize {
    sched_getaffinity(None).unwrap().count() as usize
}

#[test]
fn workers_get_the_process_affinity_not_the_starting_threads() {
    let process_cpus = sched_getaffinity(Some(rustix::process::getpid())).unwrap().count() as usize;
    if process_cpus < 2 {
        eprintln!("one CPU: nothing to pin away from");
        return;
    }
    let mut one = CpuSet::new();
    one.set(0);
    sched_setaffinity(None, &one).unwrap(); // this test's thread only
    let pinned = tandem::process::Builder::new().start_method(StartMethod::ForkServer);
    let got = pinned.spawn((), allowed_cpus).unwrap().join().unwrap();
    assert_eq!(got, process_cpus, "a fork-server worker inherited the starting thread's pinning");
}
