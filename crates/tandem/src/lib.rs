//! tandem runs work on OS threads or OS processes behind one API.
//!
//! Switching a program from threads to processes is one changed line
//! ([`Mode::Thread`] to [`Mode::Process`]); results, errors and time-outs
//! keep the same shape.
//!
//! ```
//! fn main() {
//!     tandem::init(); // first line of main; in a worker it never returns
//!     let t = tandem::thread::spawn(21u64, |x| x * 2).unwrap();
//!     let p = tandem::process::spawn(21u64, |x| x * 2).unwrap();
//!     assert_eq!(t.join().unwrap(), p.join().unwrap());
//! }
//! ```
//!
//! A task is a plain function, or a closure that captures nothing, from `A`
//! to `R`, both `Serialize + DeserializeOwned + Send + 'static`.
//!
//! Layers, bottom up: `sys` (all `unsafe`: fork, the before-main hook, code
//! pointers), `wire` (frames with descriptors), `codec` (postcard), `child`
//! (a child process and its reaper), `launch` (the start methods), `worker`
//! (the loop inside a worker process), and the public units on top.
//!
//! # Cargo features
//!
//! Both are off by default.
//!
//! - `chaos`: the `chaos` module, deliberate failures (a real SIGSEGV,
//!   garbage written to a worker's socket to its parent, hanging that socket
//!   up) for demos and tests of how tandem reports them.
//! - `fuzzing`: hidden safe entry points into the decoders that read another
//!   process's bytes, for fuzz targets and property tests. Not an API.

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)] // CI's `clippy -D warnings` makes it an error
#![allow(clippy::needless_doctest_main)] // the crate example shows where init() goes

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;
mod answer;
mod backoff;
mod batch;
#[cfg(feature = "cluster")]
mod broker;
#[cfg(feature = "chaos")]
pub mod chaos;
mod child;
#[cfg(feature = "cluster")]
pub mod cluster;
mod codec;
mod error;
pub mod ipc;
mod launch;
mod mailbox;
mod output;
mod pool;
pub mod sandbox;
mod shared;
pub mod shm;
pub mod sync;
#[allow(unsafe_code)]
mod sys;
mod task;
mod unit;
mod usage;
mod watch;
mod wire;
mod worker;

pub use error::{Error, MemoryLimitBy, signal_name};
pub use pool::{
    Map, MapStream, MapUnordered, MapUnorderedStream, Pool, PoolBuilder, PoolStats, Progress, TaskHandle,
    TaskReport, WorkerStats,
};
pub use unit::{JoinHandle, Mode, StartMethod, UnitId, spawn};

// The before-`main` hook: `sys` holds the ELF constructor but names nothing
// above it, so the worker's entry point is handed down here, at compile time
// (see `sys::bootstrap::run_before_main`). A re-executed worker thus takes
// over before `main`, and before libtest's `main` under `cargo test`.
sys::bootstrap::run_before_main!(worker::run_if_worker);

/// Make this process ready for tandem: call it first thing in `main`.
///
/// In an ordinary process it costs one environment lookup. In a process that
/// tandem started as a worker it runs the worker loop and exits, never
/// returning. tandem also runs this check before `main` through an ELF
/// constructor, so tests and examples work without calling it; calling it
/// again is harmless.
///
/// ```
/// tandem::init();
/// tandem::init(); // idempotent
/// ```
pub fn init() {
    worker::run_if_worker();
}

/// Threads: the `threading.Thread` analogue.
///
/// ```
/// let h = tandem::thread::spawn(3u8, |x| x * 3).unwrap();
/// assert_eq!(h.join().unwrap(), 9);
/// ```
pub mod thread {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::{Error, JoinHandle};

    /// Run `f(arg)` on a new OS thread. The argument is moved, not serialized.
    ///
    /// ```
    /// let h = tandem::thread::spawn(String::from("hi"), |s| s.len()).unwrap();
    /// assert_eq!(h.join().unwrap(), 2);
    /// ```
    pub fn spawn<A, R>(arg: A, f: fn(A) -> R) -> Result<JoinHandle<R>, Error>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        JoinHandle::thread(arg, f)
    }
}

/// Processes: the `multiprocessing.Process` analogue.
///
/// ```
/// tandem::init();
/// let h = tandem::process::spawn(3u8, |x| x * 3).unwrap();
/// assert_ne!(h.id(), tandem::UnitId::Process(std::process::id()));
/// assert_eq!(h.join().unwrap(), 9);
/// ```
pub mod process {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::launch::WorkerConfig;
    use crate::{Error, JoinHandle, StartMethod};

    /// Run `f(arg)` in a new OS process started by re-executing this binary.
    ///
    /// ```
    /// tandem::init();
    /// let h = tandem::process::spawn(vec![1u32, 2, 3], |v| v.len()).unwrap();
    /// assert_eq!(h.join().unwrap(), 3);
    /// ```
    pub fn spawn<A, R>(arg: A, f: fn(A) -> R) -> Result<JoinHandle<R>, Error>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        Builder::new().spawn(arg, f)
    }

    /// Settings for starting a process unit.
    ///
    /// ```
    /// use tandem::StartMethod;
    /// tandem::init();
    /// let h = tandem::process::Builder::new()
    ///     .start_method(StartMethod::ForkServer)
    ///     .spawn(2u8, |x| x + 1)
    ///     .unwrap();
    /// assert_eq!(h.join().unwrap(), 3);
    /// ```
    #[derive(Clone, Debug, Default)]
    pub struct Builder {
        method: StartMethod,
        config: WorkerConfig,
        sandbox: Option<crate::sandbox::Sandbox>,
    }

    impl Builder {
        /// Default settings: [`StartMethod::Spawn`], no memory limit, 1 GiB
        /// largest message.
        ///
        /// ```
        /// tandem::init();
        /// let h = tandem::process::Builder::new().spawn(1u8, |x| x + 1).unwrap();
        /// assert_eq!(h.join().unwrap(), 2);
        /// ```
        pub fn new() -> Builder {
            Builder::default()
        }

        /// How the process starts.
        ///
        /// ```
        /// use tandem::StartMethod;
        /// tandem::init();
        /// for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        ///     let h = tandem::process::Builder::new().start_method(method).spawn(1u8, |x| x + 1).unwrap();
        ///     assert_eq!(h.join().unwrap(), 2);
        /// }
        /// ```
        pub fn start_method(mut self, method: StartMethod) -> Builder {
            self.method = method;
            self
        }

        /// Cap the process's address space at `bytes` (RLIMIT_AS). A task
        /// that allocates past it dies, and the error names the limit.
        ///
        /// ```
        /// use tandem::Error;
        /// tandem::init();
        /// let limited = tandem::process::Builder::new().memory_limit(256 << 20);
        /// let h = limited.spawn((), |()| vec![1u8; 1 << 30].len()).unwrap();
        /// let Err(e @ Error::WorkerDied { .. }) = h.join() else { panic!("allocated past the limit") };
        /// assert!(e.to_string().contains("memory limit of 268435456 bytes"));
        /// ```
        pub fn memory_limit(mut self, bytes: u64) -> Builder {
            self.config.memory_limit = bytes;
            self
        }

        /// The largest argument or result accepted, in bytes (default 1 GiB).
        /// A bigger message is refused without being allocated.
        ///
        /// ```
        /// tandem::init();
        /// let small = tandem::process::Builder::new().max_message_size(1024);
        /// assert_eq!(small.spawn((), |()| vec![0u8; 10]).unwrap().join().unwrap().len(), 10);
        /// assert!(small.spawn((), |()| vec![0u8; 4096]).unwrap().join().is_err());
        /// ```
        pub fn max_message_size(mut self, bytes: u64) -> Builder {
            self.config.max_message = bytes;
            self
        }

        /// Harden the process with `PR_SET_NO_NEW_PRIVS` (default off):
        /// programs its task executes cannot gain privileges through setuid
        /// bits or file capabilities. It cannot be undone inside the process.
        ///
        /// ```
        /// tandem::init();
        /// let h = tandem::process::Builder::new().no_new_privs(true).spawn((), |()| {
        ///     std::fs::read_to_string("/proc/self/status").unwrap().contains("NoNewPrivs:\t1")
        /// });
        /// assert!(h.unwrap().join().unwrap());
        /// ```
        pub fn no_new_privs(mut self, on: bool) -> Builder {
            self.config.no_new_privs = on;
            self
        }

        /// Sandbox the process (see [`crate::sandbox`]): it applies the
        /// sandbox before its task, and `spawn` fails with what it said
        /// ([`Error::Unsupported`] naming a layer the kernel lacks, unless
        /// `best_effort(true)`).
        ///
        /// ```
        /// use tandem::sandbox::Sandbox;
        /// tandem::init();
        /// let h = tandem::process::Builder::new().sandbox(Sandbox::new()).spawn((), |()| {
        ///     std::process::Command::new("/bin/true").status().is_ok()
        /// });
        /// assert!(!h.unwrap().join().unwrap()); // exec is refused
        /// ```
        pub fn sandbox(mut self, sandbox: crate::sandbox::Sandbox) -> Builder {
            self.sandbox = Some(sandbox);
            self
        }

        /// Start the process and run `f(arg)` in it.
        ///
        /// ```
        /// tandem::init();
        /// let builder = tandem::process::Builder::new();
        /// let handles: Vec<_> = (0..3u64).map(|i| builder.spawn(i, |x| x * 10).unwrap()).collect();
        /// let results: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        /// assert_eq!(results, [0, 10, 20]);
        /// ```
        pub fn spawn<A, R>(&self, arg: A, f: fn(A) -> R) -> Result<JoinHandle<R>, Error>
        where
            A: Serialize + DeserializeOwned + Send + 'static,
            R: Serialize + DeserializeOwned + Send + 'static,
        {
            JoinHandle::process(self.method, self.config, self.sandbox.as_ref(), arg, f)
        }
    }
}
