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

mod crash;
mod fork;
mod memory;
mod thread_ids;
mod threads_and_processes;

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
];

/// Exit code for a name that is not a demo (a usage error, as clap uses).
const EXIT_UNKNOWN_DEMO: i32 = 2;
/// Exit code for a demo that could not run (an OS call failed).
const EXIT_DEMO_FAILED: i32 = 1;

/// `tandem demo [NAME]`: list the demos, or run one. Returns the exit code.
pub fn main(name: Option<&str>) -> i32 {
    let Some(name) = name else {
        println!("tandem demo NAME runs one of the classic examples for real:\n");
        print_list();
        return 0;
    };
    let Some(demo) = DEMOS.iter().find(|d| d.name == name) else {
        eprintln!("tandem demo: there is no demo called {name:?}. Choose one of:\n");
        for d in DEMOS {
            eprintln!("  {:<24}{}", d.name, d.about);
        }
        eprintln!("\nfor example: tandem demo {}", DEMOS[0].name);
        return EXIT_UNKNOWN_DEMO;
    };
    println!("tandem demo {}: {}", demo.name, demo.about);
    println!("(times are ms since the demo started; pid = process id, tid = kernel thread id)\n");
    match (demo.run)() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tandem demo {}: failed: {e}", demo.name);
            EXIT_DEMO_FAILED
        }
    }
}

fn print_list() {
    for d in DEMOS {
        println!("  {:<24}{}", d.name, d.about);
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
    println!("\nshows: {what}");
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
