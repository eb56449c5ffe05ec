//! Children never outlive their parent, even when it dies by SIGKILL.

mod common;

use std::io::Read;
use std::time::Duration;

use tandem::{Error, UnitId};

/// Runs in a grandchild: report its pid through the FIFO once its task
/// runs (so the worker is past its start-up, where a parent found gone is
/// noticed anyway), then sleep forever.
fn grandchild(fifo: String) -> u8 {
    std::fs::write(&fifo, format!("{}\n", std::process::id())).unwrap();
    common::sleep_forever(())
}

/// Runs in a middle process: start a grandchild that sleeps forever, then
/// wait to be killed.
fn middle((fifo, method): (String, u8)) -> u8 {
    let method = common::method(method);
    let grandchild = tandem::process::Builder::new().start_method(method).spawn(fifo, grandchild).unwrap();
    let UnitId::Process(_) = grandchild.id() else { unreachable!() };
    common::sleep_forever(())
}

#[test]
fn killing_the_parent_with_sigkill_takes_its_children_down() {
    for (index, method) in common::METHODS.into_iter().enumerate() {
        let fifo = std::env::temp_dir().join(format!("tandem-parent-death-{}-{index}", std::process::id()));
        let _ = std::fs::remove_file(&fifo);
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, 0o600.into(), 0).unwrap();

        let parent =
            tandem::process::spawn((fifo.to_string_lossy().into_owned(), index as u8), middle).unwrap();
        // Opening the FIFO blocks until the middle process opens it to write.
        let mut text = String::new();
        std::fs::File::open(&fifo).unwrap().read_to_string(&mut text).unwrap();
        let grandchild: u32 = text.trim().parse().unwrap();
        assert!(common::exists(grandchild));

        parent.kill().unwrap();
        assert!(matches!(parent.join(), Err(Error::WorkerDied { signal: Some(9), .. })));
        if !common::wait_gone(grandchild, Duration::from_secs(1)) {
            // Do not leave it behind holding the harness's output open.
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(grandchild as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
            panic!("{method:?}: grandchild {grandchild} outlived its parent by more than a second");
        }
        let _ = std::fs::remove_file(&fifo);
    }
}
