//! The raw OS floor: the cheapest way the OS does what tandem does, measured
//! by the benchmarks and by `tandem compare` in the same run as tandem.
//!
//! ```
//! let t = tandem::floor::fork_wait().unwrap();
//! assert!(t.as_nanos() > 0);
//! ```

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::process::{WaitId, WaitIdOptions};

use crate::sys::fork::{RawChild, fork_raw_child};

fn reap(pid: rustix::process::Pid) -> io::Result<()> {
    loop {
        match rustix::process::waitid(WaitId::Pid(pid), WaitIdOptions::EXITED) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// One bare `fork` + `_exit` + `waitid`: the floor of starting a process.
pub fn fork_wait() -> io::Result<Duration> {
    let start = Instant::now();
    let pid = fork_raw_child(RawChild::ExitImmediately)?;
    reap(pid)?;
    Ok(start.elapsed())
}

/// One `posix_spawn` of `/bin/true` and its wait (std's `Command` uses
/// posix_spawn when it can): the floor of starting a new program.
pub fn spawn_true_wait() -> io::Result<Duration> {
    let start = Instant::now();
    std::process::Command::new("/bin/true").status()?;
    Ok(start.elapsed())
}

/// One `std::thread::spawn` + `join`: the floor of starting a thread.
pub fn thread_spawn_join() -> Duration {
    let start = Instant::now();
    std::thread::spawn(|| {}).join().expect("empty thread");
    start.elapsed()
}

/// A child process that echoes bytes on a pair of pipes: the far side of a
/// pipe round trip. The child exits when it is dropped.
pub struct PipeEcho {
    to_child: Option<OwnedFd>,
    from_child: OwnedFd,
    pid: rustix::process::Pid,
}

impl PipeEcho {
    /// Fork the echoing child.
    pub fn start() -> io::Result<PipeEcho> {
        let (child_in, to_child) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (from_child, child_out) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let pid = fork_raw_child(RawChild::Echo { input: &child_in, output: &child_out })?;
        Ok(PipeEcho { to_child: Some(to_child), from_child, pid })
    }

    /// One byte there and back.
    pub fn round_trip(&mut self) -> io::Result<()> {
        let to = self.to_child.as_ref().expect("open until drop");
        rustix::io::write(to, &[1])?;
        let mut b = [0u8; 1];
        if rustix::io::read(&self.from_child, &mut b)? != 1 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the echo child exited"));
        }
        Ok(())
    }
}

impl Drop for PipeEcho {
    fn drop(&mut self) {
        // The forked child inherited this side's write end too, so closing
        // ours never gives it end of file: stop it outright.
        self.to_child = None;
        let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::KILL);
        let _ = reap(self.pid);
    }
}
