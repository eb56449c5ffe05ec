//! 1,000 units in a row leave descriptors, threads and children where they
//! started, and no zombie remains. One test in its own binary, so no other
//! test's threads or descriptors move the counts.
//!
//! A join returns as soon as the worker has answered; the exiting worker is
//! reaped moments later by the reaper thread. So the counts are compared
//! once that has happened (`eventually`), and a zombie may exist only for
//! those moments.

mod common;

use std::time::Duration;

use tandem::{Mode, StartMethod, UnitId};

/// How long the reaper may take to collect exited workers.
const SETTLE: Duration = Duration::from_secs(5);

#[test]
fn a_thousand_spawns_leave_no_trace() {
    let run = |mode: Mode, method: StartMethod| {
        let h = match mode {
            Mode::Thread => tandem::thread::spawn(1u32, |x| x + 1).unwrap(),
            Mode::Process => {
                tandem::process::Builder::new().start_method(method).spawn(1u32, |x| x + 1).unwrap()
            }
        };
        let id = h.id();
        assert_eq!(h.join().unwrap(), 2);
        id
    };
    let cases = [
        (Mode::Thread, StartMethod::Spawn, 1000),
        (Mode::Process, StartMethod::ForkServer, 1000),
        (Mode::Process, StartMethod::Spawn, 300),
    ];
    // Warm up once per case: the fork server, its status thread and the
    // reaper are started once, on first use, and live as long as the
    // process. Count from when the warm-up workers are gone (reaped: not
    // even a zombie is left).
    let warm: Vec<UnitId> = cases.iter().map(|&(mode, method, _)| run(mode, method)).collect();
    for id in warm {
        if let UnitId::Process(pid) = id {
            assert!(common::eventually(SETTLE, || !common::exists(pid)), "warm-up worker {pid} never reaped");
        }
    }
    let (fds, threads, children) = (common::open_fds(), common::threads(), common::children().len());
    for &(mode, method, count) in &cases {
        for i in 0..count {
            run(mode, method);
            if i % 100 == 0 {
                assert!(
                    common::eventually(SETTLE, || common::zombies().is_empty()),
                    "{mode:?}/{method:?}: zombies remain: {:?}",
                    common::zombies()
                );
            }
        }
        assert!(
            common::eventually(SETTLE, || common::open_fds() == fds),
            "{mode:?}/{method:?}: descriptors leaked: {} != {fds}",
            common::open_fds()
        );
        assert!(
            common::eventually(SETTLE, || common::threads() == threads),
            "{mode:?}/{method:?}: threads {} != {threads}",
            common::threads()
        );
        assert!(
            common::eventually(SETTLE, || common::children().len() == children),
            "{mode:?}/{method:?}: children left: {:?}",
            common::children()
        );
        assert!(common::zombies().is_empty());
    }
}
