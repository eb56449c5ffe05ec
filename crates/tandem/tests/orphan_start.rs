//! A worker whose parent exits before the handshake finishes must exit
//! quietly, never run the program's `main` in the background.
//!
//! Its own `main` (harness = false): the parent role runs this binary as a
//! "middle" process that starts a worker and exits at once, many times. If
//! a would-be worker ever ran `main`, it would arrive here with no role and
//! print a marker into the pipe the test reads.

use std::process::{Command, Stdio};

const CHILD_ENV: &str = "TANDEM_ORPHAN_TEST_CHILD";

fn main() {
    tandem::init();
    if std::env::args().nth(1).as_deref() == Some("middle") {
        let _ = tandem::process::spawn((), |()| 0u8);
        std::process::exit(0);
    }
    if std::env::var_os(CHILD_ENV).is_some() {
        println!("MAIN RAN IN A WORKER (pid {})", std::process::id());
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let runs = 40;
    for run in 0..runs {
        // `output` returns when every holder of the pipe has closed it:
        // the middle process and the worker it started.
        let out = Command::new(&exe).arg("middle").env(CHILD_ENV, "1").stdin(Stdio::null()).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("MAIN RAN"), "run {run}: a worker ran main: {stdout}");
        assert!(out.status.success(), "run {run}: {}", String::from_utf8_lossy(&out.stderr));
    }
    println!("orphan_start: {runs} passed, 0 failed");
}
