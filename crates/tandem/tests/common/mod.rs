//! Helpers shared by the integration tests: the start methods to run
//! against, and what the OS says about us.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags};
use tandem::StartMethod;

/// Both start methods, for tests that run against each.
pub const METHODS: [StartMethod; 2] = [StartMethod::Spawn, StartMethod::ForkServer];

/// The start method at `index` in [`METHODS`], for a task that gets it as a
/// number (a `StartMethod` is not serializable).
pub fn method(index: u8) -> StartMethod {
    METHODS[usize::from(index)]
}

/// A task (or the rest of one) that sleeps until its unit is killed.
pub fn sleep_forever(_: ()) -> u8 {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Threads of this process.
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// (pid, state) of every process whose parent is us.
pub fn children() -> Vec<(u32, char)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the command name (which is in parentheses).
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == me {
            out.push((pid, state));
        }
    }
    out
}

/// Zombie children of this process.
pub fn zombies() -> Vec<u32> {
    children().into_iter().filter(|&(_, s)| s == 'Z').map(|(p, _)| p).collect()
}

/// Whether a process with this pid exists (zombies included).
pub fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Block until process `pid` (not necessarily our child) has exited, or the
/// limit passes. Uses a pidfd, which becomes readable at exit: a real event.
pub fn wait_gone(pid: u32, limit: Duration) -> bool {
    let Ok(fd) = rustix::process::pidfd_open(Pid::from_raw(pid as i32).unwrap(), PidfdFlags::empty()) else {
        return true; // already gone and reaped
    };
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut pfd, Some(&Timespec::try_from(left).unwrap())) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(_) => continue,
        }
    }
}

/// Spin (yielding) until `cond` holds or the limit passes: for conditions
/// the OS offers no event for, such as a zombie being reaped by a thread.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::yield_now();
    }
    cond()
}

/// A named pipe for "I have started" signals from a task in any unit: the
/// task calls [`signal`] with the path; the test blocks in [`Fifo::wait`].
pub struct Fifo {
    pub path: String,
}

static FIFO_COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Fifo {
    pub fn new() -> Fifo {
        let n = FIFO_COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("tandem-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        rustix::fs::mknodat(rustix::fs::CWD, &path, rustix::fs::FileType::Fifo, 0o600.into(), 0).unwrap();
        Fifo { path: path.to_string_lossy().into_owned() }
    }

    /// Block until a task has written its line; return it.
    pub fn wait(&self) -> String {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(&self.path).unwrap().read_to_string(&mut text).unwrap();
        text.trim().to_string()
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// From inside a task: write `line` to the FIFO at `path`.
pub fn signal(path: &str, line: &str) {
    std::fs::write(path, format!("{line}\n")).unwrap();
}
