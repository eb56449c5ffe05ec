//! How a pool is configured: [`PoolBuilder`] and the settings it builds.

use std::sync::Arc;
use std::time::Duration;

use super::backend::Inner;
use super::processes::Processes;
use super::shared::Shared;
use super::threads::Threads;
use super::{Pool, processes, threads};
use crate::{Error, Mode, StartMethod};

/// Settings shared by every worker of a pool.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) mode: Mode,
    pub(crate) workers: usize,
    pub(crate) method: StartMethod,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) max_tasks_per_worker: Option<u64>,
    /// The address-space cap (RLIMIT_AS), 0 for none.
    pub(crate) memory_limit: u64,
    /// The resident-memory limit (`worker_memory_limit`), 0 for none.
    pub(crate) resident_limit: u64,
    /// Enforce it by sampling even where a cgroup could be made (tests).
    pub(crate) sample_memory: bool,
    pub(crate) retries: u32,
    pub(crate) initializer: Option<fn()>,
    pub(crate) max_message: u64,
    pub(crate) no_new_privs: bool,
    pub(crate) reports: bool,
    pub(crate) capture: bool,
    pub(crate) sandbox: Option<crate::sandbox::Sandbox>,
    /// Its process workers lend their big byte results (`codec::lend`):
    /// decided once, when the pool is built (`launch::may_lend`).
    pub(crate) lend_results: bool,
    /// Cluster mode: the broker and how to treat lost nodes.
    #[cfg(feature = "cluster")]
    pub(crate) cluster: Option<super::remote::Settings>,
}

impl Config {
    pub(crate) fn max_message_or_default(&self) -> u64 {
        if self.max_message == 0 { crate::wire::DEFAULT_MAX_MESSAGE } else { self.max_message }
    }

    /// Where a big argument goes: a sandboxed worker must not be able to
    /// keep a descriptor that later shows it another task's argument.
    pub(crate) fn bulk(&self) -> crate::codec::Bulk {
        crate::codec::bulk_for(self.sandbox.is_some())
    }
}

/// Builder for a [`Pool`].
///
/// ```
/// use std::time::Duration;
/// use tandem::{Mode, Pool};
/// tandem::init();
/// let pool = Pool::builder()
///     .mode(Mode::Process)
///     .workers(2)
///     .task_timeout(Duration::from_secs(30))
///     .retries(1)
///     .build()
///     .unwrap();
/// assert_eq!(pool.submit(21u64, |x| x * 2).join().unwrap(), 42);
/// ```
#[derive(Clone, Debug)]
pub struct PoolBuilder {
    config: Config,
}

impl PoolBuilder {
    pub(crate) fn new() -> PoolBuilder {
        PoolBuilder {
            config: Config {
                mode: Mode::Thread,
                workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
                method: StartMethod::Spawn,
                task_timeout: None,
                max_tasks_per_worker: None,
                memory_limit: 0,
                resident_limit: 0,
                sample_memory: false,
                retries: 0,
                initializer: None,
                max_message: 0,
                no_new_privs: false,
                reports: false,
                capture: false,
                sandbox: None,
                lend_results: false,
                #[cfg(feature = "cluster")]
                cluster: None,
            },
        }
    }
}

impl PoolBuilder {
    /// Threads (the default) or processes.
    ///
    /// ```
    /// tandem::init();
    /// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).build().unwrap();
    /// assert_ne!(pool.submit((), |()| std::process::id()).join().unwrap(), std::process::id());
    /// ```
    pub fn mode(mut self, mode: Mode) -> Self {
        self.config.mode = mode;
        self
    }
    /// How many workers (default: the available parallelism).
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(3).build().unwrap();
    /// assert_eq!(pool.stats().workers.len(), 3);
    /// ```
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n;
        self
    }
    /// How process workers start (process mode only).
    ///
    /// ```
    /// use tandem::{Mode, Pool, StartMethod};
    /// tandem::init();
    /// let pool = Pool::builder().mode(Mode::Process).start_method(StartMethod::ForkServer).workers(1).build().unwrap();
    /// assert_eq!(pool.submit(2u8, |x| x * 2).join().unwrap(), 4);
    /// ```
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.config.method = method;
        self
    }
    /// Per-task time limit. A process worker past it is killed and replaced;
    /// a pool thread cannot be killed, so it is abandoned (it finishes the
    /// task and exits) and replaced. Either way the task is `TimedOut`.
    ///
    /// ```
    /// use std::time::Duration;
    /// tandem::init();
    /// let pool = tandem::Pool::builder()
    ///     .mode(tandem::Mode::Process)
    ///     .workers(1)
    ///     .task_timeout(Duration::from_millis(100))
    ///     .build()
    ///     .unwrap();
    /// let endless = pool.submit((), |()| -> u8 { loop { std::hint::spin_loop() } });
    /// let outcome = endless.join();
    /// assert!(matches!(outcome, Err(tandem::Error::TimedOut)), "{outcome:?}");
    /// ```
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.config.task_timeout = Some(limit);
        self
    }
    /// Replace a worker after it has run `n` tasks.
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(1).max_tasks_per_worker(2).build().unwrap();
    /// for _ in 0..4 {
    ///     pool.submit(1u8, |x| x).join().unwrap();
    /// }
    /// assert_eq!(pool.stats().workers[0].restarts, 2);
    /// ```
    pub fn max_tasks_per_worker(mut self, n: u64) -> Self {
        self.config.max_tasks_per_worker = Some(n.max(1));
        self
    }
    /// Limit each process worker's resident memory (what its task
    /// touches, not the address space it reserves) to `bytes`. A worker
    /// past it is killed; its task fails with `WorkerDied` naming the
    /// limit, the memory seen and the mechanism
    /// ([`MemoryLimitBy`](crate::MemoryLimitBy), in `memory_limit_by` and
    /// the message), and the worker is replaced. Thread mode cannot limit
    /// a thread: ignored there.
    ///
    /// The pool picks the mechanism once, when it is built:
    ///
    /// - **A memory cgroup per worker**, when the process can make one: a
    ///   cgroup v2 `memory.max` (where the process's cgroup, or its
    ///   parent, hands the `memory` controller to its children), otherwise
    ///   a cgroup v1 `memory.limit_in_bytes` (plus `memory.memsw.limit_in_bytes`
    ///   where swap is accounted, so swap does not dodge it). The kernel
    ///   charges every page the worker touches, and the programs it runs
    ///   too, and its OOM killer kills the worker at the limit: no
    ///   overshoot, and nothing for the pool to do while tasks run. The
    ///   worker joins its cgroup as soon as it exists, before its
    ///   initializer (what it touched starting up stays charged to the
    ///   pool process's cgroup); the pool's cgroups, `tandem-<pid>-<n>/`
    ///   beside or below the process's own, are removed as workers are
    ///   reaped and when the pool ends. Usually this needs root (or a
    ///   delegated cgroup).
    /// - **Sampling** otherwise: the pool reads each running worker's
    ///   resident memory every 5 ms (`/proc/PID/statm`), so a fast
    ///   allocation can overshoot by what it touches in one interval
    ///   (BENCHMARKS.md, "Reports and output"), programs the worker runs
    ///   are not counted, and tasks go through the pool's loop rather than
    ///   straight to an idle worker.
    ///
    /// ```
    /// tandem::init();
    /// let pool = tandem::Pool::builder()
    ///     .mode(tandem::Mode::Process)
    ///     .workers(1)
    ///     .worker_memory_limit(256 << 20)
    ///     .build()
    ///     .unwrap();
    /// let hog = pool.submit(1usize << 30, |n| vec![1u8; n].len());
    /// assert!(hog.join().unwrap_err().to_string().contains("memory limit of 268435456 bytes"));
    /// ```
    pub fn worker_memory_limit(mut self, bytes: u64) -> Self {
        self.config.resident_limit = bytes;
        self
    }

    /// Tests only: enforce `worker_memory_limit` by sampling even where a
    /// memory cgroup could be made, so both mechanisms are tested on one
    /// machine. Not part of the API.
    #[cfg(feature = "chaos")]
    #[doc(hidden)]
    pub fn __worker_memory_by_sampling(mut self) -> Self {
        self.config.sample_memory = true;
        self
    }

    /// Cap each process worker's address space (RLIMIT_AS) at `bytes`: the
    /// old `worker_memory_limit`. Allocators and runtimes that reserve
    /// address space they never touch fail under it; prefer
    /// [`worker_memory_limit`](Self::worker_memory_limit). A task that
    /// allocates past it fails with `WorkerDied` naming the limit. Thread
    /// mode: ignored.
    ///
    /// ```
    /// tandem::init();
    /// let pool = tandem::Pool::builder()
    ///     .mode(tandem::Mode::Process)
    ///     .workers(1)
    ///     .worker_address_space_limit(256 << 20)
    ///     .build()
    ///     .unwrap();
    /// let hog = pool.submit(1usize << 30, |n| vec![1u8; n].len());
    /// assert!(hog.join().unwrap_err().to_string().contains("address-space"));
    /// ```
    pub fn worker_address_space_limit(mut self, bytes: u64) -> Self {
        self.config.memory_limit = bytes;
        self
    }
    /// Times a task is re-run after its worker died under it (default 0).
    /// A task that keeps killing workers fails for good after that.
    ///
    /// ```
    /// tandem::init();
    /// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).retries(2).build().unwrap();
    /// let crash = pool.submit((), |()| -> u8 { std::process::abort() });
    /// // Three runs, three dead workers: then the task fails for good.
    /// assert!(matches!(crash.join(), Err(tandem::Error::WorkerDied { .. })));
    /// assert_eq!(pool.stats().workers[0].restarts, 3);
    /// ```
    pub fn retries(mut self, n: u32) -> Self {
        self.config.retries = n;
        self
    }
    /// Runs once in each worker before its first task.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// static READY: AtomicBool = AtomicBool::new(false);
    /// tandem::init();
    /// let pool = tandem::Pool::builder()
    ///     .mode(tandem::Mode::Process)
    ///     .workers(1)
    ///     .initializer(|| READY.store(true, Ordering::SeqCst))
    ///     .build()
    ///     .unwrap();
    /// assert!(pool.submit((), |()| READY.load(Ordering::SeqCst)).join().unwrap());
    /// ```
    pub fn initializer(mut self, f: fn()) -> Self {
        self.config.initializer = Some(f);
        self
    }
    /// Largest task argument or result in bytes (process mode; default 1 GiB).
    ///
    /// ```
    /// tandem::init();
    /// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).max_message_size(1 << 20).build().unwrap();
    /// assert_eq!(pool.submit(vec![7u8; 1000], |v| v.len()).join().unwrap(), 1000);
    /// ```
    pub fn max_message_size(mut self, bytes: u64) -> Self {
        self.config.max_message = bytes;
        self
    }

    /// Capture what each submitted task writes to its standard output and
    /// error (process mode; default off: output goes to the streams the
    /// pool's process inherited). Each worker's descriptors 1 and 2 are
    /// memfds of its own, emptied after every task, so a task's output is
    /// never mixed with another's, and programs the task runs (which
    /// inherit 1 and 2) are captured with it. It comes back in
    /// [`TaskReport::stdout`](crate::TaskReport::stdout) and `stderr` (the
    /// last 16 MiB of each); when a worker dies under a task, the last lines
    /// of its stderr (at most 4 KiB) are in the error
    /// ([`Error::output_tail`](crate::Error::output_tail)), so a panic under
    /// `panic = "abort"` shows its message. Map batches are not captured:
    /// their output is passed on to the inherited streams after each batch.
    /// Thread mode cannot give one thread its own descriptors: ignored there.
    ///
    /// ```
    /// tandem::init();
    /// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).capture_output(true).build().unwrap();
    /// let report = pool.submit(7u8, |x| { println!("seven"); eprintln!("to stderr"); x }).join_report();
    /// assert_eq!(report.result.unwrap(), 7);
    /// assert_eq!(report.stdout.unwrap(), b"seven\n");
    /// assert_eq!(report.stderr.unwrap(), b"to stderr\n");
    /// ```
    pub fn capture_output(mut self, on: bool) -> Self {
        self.config.capture = on;
        self
    }

    /// Have each process worker measure what every submitted task costs
    /// (default off): its CPU time and the worker's peak resident memory
    /// while it ran, in [`TaskHandle::join_report`](crate::TaskHandle::join_report).
    /// The worker resets its peak (`/proc/self/clear_refs`) and reads the
    /// CPU clock before the task, and reads both after it: a few
    /// microseconds per task (BENCHMARKS.md, "Reports and output"). Map
    /// items are not measured. Thread mode measures nothing (`None`).
    ///
    /// ```
    /// tandem::init();
    /// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).reports(true).build().unwrap();
    /// let report = pool.submit(16u32 << 20, |n| vec![1u8; n as usize].iter().map(|&b| b as u64).sum::<u64>()).join_report();
    /// assert_eq!(report.result.unwrap(), 16 << 20);
    /// assert!(report.peak_memory.unwrap() >= 16 << 20); // it touched 16 MiB
    /// ```
    pub fn reports(mut self, on: bool) -> Self {
        self.config.reports = on;
        self
    }

    /// Harden each process worker with `PR_SET_NO_NEW_PRIVS` (default off):
    /// programs its tasks execute cannot gain privileges through setuid bits
    /// or file capabilities. Thread mode cannot set it for one thread of a
    /// shared process without affecting the caller: ignored there.
    ///
    /// ```
    /// use tandem::{Mode, Pool};
    /// tandem::init();
    /// let pool = Pool::builder().mode(Mode::Process).workers(1).no_new_privs(true).build().unwrap();
    /// let status = pool.submit((), |()| std::fs::read_to_string("/proc/self/status").unwrap());
    /// assert!(status.join().unwrap().contains("NoNewPrivs:\t1"));
    /// ```
    pub fn no_new_privs(mut self, on: bool) -> Self {
        self.config.no_new_privs = on;
        self
    }

    /// Sandbox every process worker (see [`crate::sandbox`]): each applies
    /// it after the [`initializer`](Self::initializer), before its first
    /// task. `build()` waits for the first worker to apply it and fails
    /// with what it said ([`Error::Unsupported`] naming a layer the kernel
    /// lacks, unless `best_effort(true)`); [`Pool::sandbox_report`] lists
    /// what that worker enforced. Thread mode cannot be sandboxed: `build()`
    /// fails with [`Error::Unsupported`].
    ///
    /// ```
    /// use tandem::sandbox::Sandbox;
    /// use tandem::{Mode, Pool};
    /// tandem::init();
    /// let pool = Pool::builder().mode(Mode::Process).workers(1).sandbox(Sandbox::new()).build().unwrap();
    /// let tcp = pool.submit((), |()| std::net::TcpListener::bind("127.0.0.1:0").is_ok());
    /// assert!(!tcp.join().unwrap());
    /// assert!(Pool::builder().sandbox(Sandbox::new()).build().is_err()); // thread mode
    /// ```
    pub fn sandbox(mut self, sandbox: crate::sandbox::Sandbox) -> Self {
        self.config.sandbox = Some(sandbox);
        self
    }

    /// Run the pool's tasks on a cluster of machines (feature `cluster`):
    /// each task goes through the broker to an [`Agent`](crate::cluster::Agent),
    /// which runs it in a local process worker. Everything else is as in
    /// process mode: `submit`, `map`, `map_unordered`, `cancel`, `join`,
    /// `.await`, `stats`, `task_timeout` (enforced by the agent) and
    /// `retries`; see [`cluster`](crate::cluster) for what a lost node does.
    /// The pool's [`workers`](crate::Pool::workers) is the agents' worker
    /// count when it was built (at least the count given here), which sizes
    /// how many map batches are in flight.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tandem::cluster::Cluster;
    /// tandem::init();
    /// let cluster = Cluster::connect("redis://10.0.0.5:6379/0").unwrap().key(b"secret");
    /// let pool = tandem::Pool::builder()
    ///     .cluster(cluster.lease(Duration::from_secs(10)).node_losses(3))
    ///     .task_timeout(Duration::from_secs(60))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(pool.submit(21u64, |x| x * 2).join().unwrap(), 42);
    /// ```
    #[cfg(feature = "cluster")]
    pub fn cluster(mut self, cluster: crate::cluster::Cluster) -> Self {
        self.config.mode = Mode::Process;
        self.config.cluster = Some(cluster.settings());
        self
    }

    /// Start the workers.
    ///
    /// ```
    /// assert!(tandem::Pool::builder().workers(0).build().is_err());
    /// assert!(tandem::Pool::builder().workers(1).build().is_ok());
    /// ```
    pub fn build(self) -> Result<Pool, Error> {
        let config = self.config;
        if config.workers == 0 {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a pool needs at least one worker: call workers(n) with n >= 1",
            )));
        }
        if config.mode == Mode::Thread && config.sandbox.is_some() {
            return Err(Error::Unsupported(
                "a sandbox in thread mode: a thread shares its process, so nothing can be taken away from it alone; use Mode::Process",
            ));
        }
        #[cfg(feature = "cluster")]
        if let Some(settings) = config.cluster.clone() {
            let mut config = config;
            let (remote, flights) = super::remote::Remote::new(settings)?;
            let mut links = super::remote::Links::connect(&remote)?;
            config.workers = links.agent_workers(config.workers)?;
            let shared = Arc::new(Shared::new(config, flights, remote));
            super::remote::start(&shared, links)?;
            return Ok(Pool { inner: Inner::Cluster(shared) });
        }
        let n = config.workers;
        let inner = match config.mode {
            Mode::Thread => {
                let (threads, slots) = Threads::new(n);
                let shared = Arc::new(Shared::new(config, slots, threads));
                threads::start(&shared)?;
                Inner::Threads(shared)
            }
            Mode::Process => {
                let mut config = config;
                config.lend_results = crate::launch::may_lend();
                let memory = processes::Memory::new(config.resident_limit, config.sample_memory);
                let shared = Arc::new(Shared::new(config, (), Processes::new(n, memory)?));
                processes::start(&shared)?;
                Inner::Processes(shared)
            }
        };
        let pool = Pool { inner };
        if let Inner::Processes(shared) = &pool.inner
            && shared.config.sandbox.is_some()
        {
            // Fail closed: the pool exists only if a worker could apply it.
            if let Err(e) = shared.backend.wait_sandbox_outcome() {
                pool.terminate();
                return Err(e);
            }
        }
        Ok(pool)
    }
}
