//! 1,000 units in a row leave descriptors, threads and children where they
//! started, and no zombie at any point. One test in its own binary, so no
//! other test's threads or descriptors move the counts.

mod common;

use std::time::Duration;

use tandem::{Mode, StartMethod};

#[test]
fn a_thousand_spawns_leave_no_trace() {
    let run = |mode: Mode, method: StartMethod| match mode {
        Mode::Thread => tandem::thread::spawn(1u32, |x| x + 1).unwrap().join().unwrap(),
        Mode::Process => tandem::process::Builder::new()
            .start_method(method)
            .spawn(1u32, |x| x + 1)
            .unwrap()
            .join()
            .unwrap(),
    };
    let cases = [
        (Mode::Thread, StartMethod::Spawn, 1000),
        (Mode::Process, StartMethod::ForkServer, 1000),
        (Mode::Process, StartMethod::Spawn, 300),
    ];
    // Warm up once per case: the fork server and its status thread are
    // started once, on first use, and live as long as the process.
    for &(mode, method, _) in &cases {
        assert_eq!(run(mode, method), 2);
    }
    let (fds, threads, children) = (common::open_fds(), common::threads(), common::children().len());
    for &(mode, method, count) in &cases {
        for i in 0..count {
            assert_eq!(run(mode, method), 2);
            if i % 100 == 0 {
                assert!(common::zombies().is_empty(), "{mode:?}/{method:?}: zombies {:?}", common::zombies());
            }
        }
        assert_eq!(common::open_fds(), fds, "{mode:?}/{method:?}: descriptors leaked");
        assert!(
            common::eventually(Duration::from_secs(5), || common::threads() == threads),
            "{mode:?}/{method:?}: threads {} != {threads}",
            common::threads()
        );
        assert_eq!(
            common::children().len(),
            children,
            "{mode:?}/{method:?}: children left: {:?}",
            common::children()
        );
        assert!(common::zombies().is_empty());
    }
}
