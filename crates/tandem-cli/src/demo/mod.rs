//! `tandem demo`: the classic textbook examples about threads and processes,
//! run for real with the tandem library.
//!
//! Each demo prints what happened, stamped with milliseconds since the demo
//! started, the pid and the kernel thread id of whoever saw it, then one line
//! starting with `shows:` that says what it demonstrates.
//!
//! Timestamps come from CLOCK_MONOTONIC, which is one clock for the whole
//! machine, so a worker process can stamp its own observations against the
//! parent's start time (sent to it in the task argument).

/// `println!` for demo output, except that a closed stdout (`tandem demo
/// NAME | head`) silences the demo instead of panicking.
macro_rules! out {
    () => {
        $crate::demo::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::demo::write_line(format_args!($($arg)*))
    };
}

mod crash;
mod fork;
mod lock;
mod memory;
mod pipe;
mod queue;
mod sandbox;
mod shared_memory;
mod thread_ids;
mod threads_and_processes;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::time::{ClockId, clock_gettime};

/// One demo: its name on the command line, what it is about, and its body.
pub struct Demo {
    /// The name given to `tandem demo NAME`.
    pub name: &'static str,
    /// One line for the list.
    pub about: &'static str,
    /// Runs the demo, printing as it goes.
    pub run: fn() -> Result<(), tandem::Error>,
}

/// Every demo, in the order a reader should meet them.
pub const DEMOS: &[Demo] = &[
    Demo {
        name: "threads-and-processes",
        about: "five threads and five processes each work for one second, all at once",
        run: threads_and_processes::run,
    },
    Demo {
        name: "fork",
        about: "a parent and its child process, with their pids (os.fork() in Python)",
        run: fork::run,
    },
    Demo {
        name: "thread-ids",
        about: "when two threads can share an id (one ended first) and when they cannot",
        run: thread_ids::run,
    },
    Demo {
        name: "memory",
        about: "a counter changed by threads is seen by all; changed by processes it is not",
        run: memory::run,
    },
    Demo {
        name: "crash",
        about: "a crashing thread kills its whole process; a crashing process harms no one else",
        run: crash::run,
    },
    Demo {
        name: "pipe",
        about: "a parent and a child process talk both ways through channels (multiprocessing.Pipe)",
        run: pipe::run,
    },
    Demo {
        name: "queue",
        about: "two producer and two consumer processes share one queue (multiprocessing.Queue)",
        run: queue::run,
    },
    Demo {
        name: "shared-memory",
        about: "processes write into shared memory and the parent reads it in place (multiprocessing.Array)",
        run: shared_memory::run,
    },
    Demo {
        name: "lock",
        about: "processes lose updates to a shared counter without a lock, none with one (multiprocessing.Lock)",
        run: lock::run,
    },
    Demo {
        name: "sandbox",
        about: "the same hostile task without and with a sandbox: files, network, signals, programs",
        run: sandbox::run,
    },
];

/// Exit code for a name that is not a demo (a usage error, as clap uses).
const EXIT_UNKNOWN_DEMO: i32 = 2;
/// Exit code for a demo that could not run (an OS call failed).
const EXIT_DEMO_FAILED: i32 = 1;

/// `tandem demo [NAME]`: list the demos, or run one. Returns the exit code.
pub fn main(name: Option<&str>) -> i32 {
    let Some(name) = name else {
        out!("tandem demo NAME runs one of the classic examples for real:\n");
        print_list();
        return if STDOUT_FAILED.load(Ordering::Relaxed) { EXIT_DEMO_FAILED } else { 0 };
    };
    let Some(demo) = DEMOS.iter().find(|d| d.name == name) else {
        eprintln!("tandem demo: there is no demo called {name:?}. Choose one of:\n");
        for d in DEMOS {
            eprintln!("  {:<24}{}", d.name, d.about);
        }
        eprintln!("\nfor example: tandem demo {}", DEMOS[0].name);
        return EXIT_UNKNOWN_DEMO;
    };
    out!("tandem demo {}: {}", demo.name, demo.about);
    out!("(times are ms since the demo started; pid = process id, tid = kernel thread id)\n");
    match (demo.run)() {
        Ok(()) if STDOUT_FAILED.load(Ordering::Relaxed) => EXIT_DEMO_FAILED,
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tandem demo {}: failed: {e}", demo.name);
            EXIT_DEMO_FAILED
        }
    }
}

fn print_list() {
    for d in DEMOS {
        out!("  {:<24}{}", d.name, d.about);
    }
}

/// Set once standard output cannot be written any more.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
/// Set if that was an error worth failing for (not a reader that left).
static STDOUT_FAILED: AtomicBool = AtomicBool::new(false);

/// Write one line of demo output to stdout. If the reader has gone away (a
/// closed pipe, as in `tandem demo NAME | head`), there is no one left to
/// tell: the rest of the output is dropped quietly and the demo runs to its
/// end. It does not exit on the spot: that would orphan process units that
/// are still starting. Any other write error is reported once.
pub fn write_line(line: std::fmt::Arguments<'_>) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}") {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            STDOUT_FAILED.store(true, Ordering::Relaxed);
            eprintln!("tandem: cannot write to standard output ({e}); the rest of the output is lost");
        }
    }
}

/// Nanoseconds on CLOCK_MONOTONIC: the same clock in every process of the
/// machine, so stamps taken in workers line up with the parent's.
pub fn now_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Milliseconds from `origin_ns` to `at_ns`, for printing.
pub fn ms(origin_ns: u64, at_ns: u64) -> f64 {
    at_ns.saturating_sub(origin_ns) as f64 / 1e6
}

/// This process's pid.
pub fn pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// The calling thread's kernel thread id (equal to the pid on the main thread).
pub fn tid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

/// The parent of this process, as the kernel sees it.
pub fn ppid() -> u32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32)
}

/// The pid of a process unit (0 for a thread unit, which has none of its own).
pub fn pid_of<R: serde::de::DeserializeOwned + Send + 'static>(handle: &tandem::JoinHandle<R>) -> u32 {
    match handle.id() {
        tandem::UnitId::Process(p) => p,
        tandem::UnitId::Thread(_) => 0,
    }
}

/// Print the closing line every demo ends with.
pub fn shows(what: &str) {
    out!("\nshows: {what}");
}

/// Describe how a unit ended when it did not return a result.
pub fn describe_failure(e: &tandem::Error) -> String {
    match e {
        tandem::Error::WorkerDied { signal: Some(sig), .. } => {
            format!("died, killed by signal {sig} ({})", tandem::signal_name(*sig))
        }
        other => format!("failed: {other}"),
    }
}
