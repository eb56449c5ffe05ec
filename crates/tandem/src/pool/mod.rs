//! Pools: the `concurrent.futures` analogue, one type for threads and processes.
//!
//! Layout: [`handle`] (a task's completion, cancel control and public
//! handle), [`threads`] (thread workers and the time-out supervisor),
//! [`processes`] (one driver thread per process worker), [`map`] (ordered and
//! unordered maps with automatic batching). Every mode pulls jobs from one
//! queue under one lock; a job resolves its handle exactly once.

mod batch;
mod handle;
mod map;
mod process_batch;
mod processes;
mod threads;

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use handle::TaskHandle;
use handle::{Completion, Control, Resolve};
pub use map::{Map, MapUnordered};

use crate::task::{self, Trampoline};
use crate::{Error, Mode, StartMethod, UnitId};

/// Settings shared by every worker of a pool.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    mode: Mode,
    workers: usize,
    method: StartMethod,
    task_timeout: Option<Duration>,
    max_tasks_per_worker: Option<u64>,
    memory_limit: u64,
    retries: u32,
    initializer: Option<fn()>,
    max_message: u64,
    no_new_privs: bool,
}

impl Config {
    pub(crate) fn max_message_or_default(&self) -> u64 {
        if self.max_message == 0 { crate::wire::DEFAULT_MAX_MESSAGE } else { self.max_message }
    }
}

/// How thread mode runs a task here: the user's `f` and the argument `X`
/// (one item, or a batch of them) to an output `O`.
pub(crate) type LocalRun<X, A, R, O> = fn(fn(A) -> R, X) -> Result<O, Error>;

/// What a queued task carries.
pub(crate) enum Work {
    /// Thread mode: runs the task and returns what resolves its completion,
    /// so the worker can count the task before anyone sees its result.
    Thread(Box<dyn FnOnce() -> Box<dyn FnOnce() + Send> + Send>),
    /// Process mode: the encoded Task frame.
    Process { header: [u8; 24], bytes: Vec<u8>, fds: Vec<OwnedFd> },
}

pub(crate) struct Job {
    pub id: u64,
    pub control: Arc<Control>,
    pub completion: Arc<dyn Resolve>,
    pub work: Work,
    /// Times the task was re-run after its worker died.
    pub attempts: u32,
    /// Times it could not be sent because its worker was already gone.
    pub undelivered: u32,
    /// A map batch: its items report one by one (see `batch`).
    pub batch: Option<BatchJob>,
}

/// What the pool knows of a map batch beyond its work.
pub(crate) struct BatchJob {
    /// Set by its map to stop the batch after the running item.
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    /// How many items it has.
    pub items: u32,
    /// Thread mode under a time limit: each item's start, for the supervisor.
    pub clock: Option<Arc<dyn batch::ItemClock>>,
}

/// A task on a pool thread, for time-outs and terminate.
pub(crate) struct Running {
    pub deadline: Option<Instant>,
    pub completion: Arc<dyn Resolve>,
    /// A timed map batch: its deadline is its running item's, not its own.
    pub clock: Option<Arc<dyn batch::ItemClock>>,
}

pub(crate) struct State {
    pub queue: VecDeque<Job>,
    pub closed: bool,
    pub terminating: bool,
    /// Thread mode: each slot's current generation; a thread whose
    /// generation is stale was abandoned and exits after its task.
    pub generations: Vec<u64>,
    /// Thread mode: what each slot's thread is running.
    pub running: Vec<Option<Running>>,
    /// Threads to join at shutdown (drivers, current workers, supervisor).
    pub joinable: Vec<(usize, std::thread::JoinHandle<()>)>,
}

/// Per-slot numbers for [`Pool::stats`].
#[derive(Clone, Debug)]
pub(crate) struct SlotStats {
    pub unit: Option<UnitId>,
    pub tid: Option<i32>,
    pub tasks_done: u64,
    pub restarts: u64,
}

pub(crate) struct Shared {
    pub config: Config,
    pub state: Mutex<State>,
    pub work_ready: Condvar,
    /// Wakes the time-out supervisor when deadlines change.
    pub deadlines_changed: Condvar,
    pub slots: Vec<Mutex<SlotStats>>,
    /// Process mode: each slot's lane, with its driver's eventfd (see
    /// `processes`).
    pub lanes: Vec<processes::Lane>,
    /// Jobs in the queue, readable without the lock (for spinning workers).
    pub queued: std::sync::atomic::AtomicUsize,
    next_id: AtomicU64,
}

impl Shared {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn slot(&self, index: usize) -> std::sync::MutexGuard<'_, SlotStats> {
        self.slots[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next job for a worker, or `None` when the worker should stop: the
    /// pool is closed and drained, it is terminating, or (thread mode) this
    /// worker's generation was abandoned.
    pub(crate) fn next_job(&self, slot: usize, generation: Option<u64>) -> Option<Job> {
        let mut state = self.lock();
        let mut spun = false;
        loop {
            if generation.is_some_and(|g| state.generations[slot] != g) || state.terminating {
                return None;
            }
            while let Some(job) = state.queue.pop_front() {
                self.queued.store(state.queue.len(), Ordering::SeqCst);
                if !job.completion.is_resolved() {
                    return Some(job);
                }
            }
            if state.closed {
                return None;
            }
            if !spun {
                // Look for the next job briefly before sleeping (wire::SPIN).
                spun = true;
                drop(state);
                let start = Instant::now();
                while self.queued.load(Ordering::SeqCst) == 0 && start.elapsed() < crate::wire::SPIN {
                    std::thread::yield_now();
                }
                state = self.lock();
                continue;
            }
            state = self.work_ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Put a job back at the front (a retry after its worker died).
    pub(crate) fn requeue(&self, job: Job) {
        let mut state = self.lock();
        state.queue.push_front(job);
        self.queued.store(state.queue.len(), Ordering::SeqCst);
        processes::wake_one_parked(self);
        drop(state);
        self.work_ready.notify_one();
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
    /// Threads (the default) or processes.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.config.mode = mode;
        self
    }
    /// How many workers (default: the available parallelism).
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n;
        self
    }
    /// How process workers start (process mode only).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.config.method = method;
        self
    }
    /// Per-task time limit. A process worker past it is killed and replaced;
    /// a pool thread cannot be killed, so it is abandoned (it finishes the
    /// task and exits) and replaced. Either way the task is `TimedOut`.
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.config.task_timeout = Some(limit);
        self
    }
    /// Replace a worker after it has run `n` tasks.
    pub fn max_tasks_per_worker(mut self, n: u64) -> Self {
        self.config.max_tasks_per_worker = Some(n.max(1));
        self
    }
    /// Cap each process worker's address space (RLIMIT_AS) at `bytes`. A task
    /// that allocates past it fails with `WorkerDied` naming the limit and the
    /// worker is replaced. Thread mode cannot limit a thread: ignored there.
    pub fn worker_memory_limit(mut self, bytes: u64) -> Self {
        self.config.memory_limit = bytes;
        self
    }
    /// Times a task is re-run after its worker died under it (default 0).
    /// A task that keeps killing workers fails for good after that.
    pub fn retries(mut self, n: u32) -> Self {
        self.config.retries = n;
        self
    }
    /// Runs once in each worker before its first task.
    pub fn initializer(mut self, f: fn()) -> Self {
        self.config.initializer = Some(f);
        self
    }
    /// Largest task argument or result in bytes (process mode; default 1 GiB).
    pub fn max_message_size(mut self, bytes: u64) -> Self {
        self.config.max_message = bytes;
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

    /// Start the workers.
    pub fn build(self) -> Result<Pool, Error> {
        let config = self.config;
        if config.workers == 0 {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a pool needs at least one worker: call workers(n) with n >= 1",
            )));
        }
        let n = config.workers;
        let lanes = match config.mode {
            Mode::Thread => Vec::new(),
            Mode::Process => processes::new_lanes(n)?,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                terminating: false,
                generations: vec![0; n],
                running: (0..n).map(|_| None).collect(),
                joinable: Vec::new(),
            }),
            work_ready: Condvar::new(),
            deadlines_changed: Condvar::new(),
            slots: (0..n)
                .map(|_| Mutex::new(SlotStats { unit: None, tid: None, tasks_done: 0, restarts: 0 }))
                .collect(),
            lanes,
            queued: std::sync::atomic::AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            config,
        });
        let pool = Pool { shared: shared.clone() };
        match shared.config.mode {
            Mode::Thread => threads::start(&shared)?,
            Mode::Process => processes::start(&shared)?,
        }
        Ok(pool)
    }
}

/// A pool of worker threads or worker processes behind one API.
///
/// Both modes give the same results, panics, time-outs, cancels and maps;
/// where the OS makes them differ (a thread cannot be killed) the docs of
/// each method say how. A worker process that dies fails only the task it
/// was running, with [`Error::WorkerDied`]; the pool replaces it and goes on.
/// Every handle resolves exactly once.
///
/// `Pool` is `Send + Sync`: submit from any thread. Dropping it is
/// [`shutdown`](Pool::shutdown).
///
/// ```
/// use tandem::{Mode, Pool};
/// tandem::init();
/// for mode in [Mode::Thread, Mode::Process] {
///     let pool = Pool::builder().mode(mode).workers(2).build().unwrap();
///     let squares: Vec<u64> = pool.map(0..100u64, |x| x * x).map(Result::unwrap).collect();
///     assert_eq!(squares[9], 81);
/// }
/// ```
pub struct Pool {
    shared: Arc<Shared>,
}

/// Numbers about one worker slot.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerStats {
    /// The thread or process in the slot now.
    pub id: UnitId,
    /// Tasks run to an outcome in this slot, across replacements.
    pub tasks_done: u64,
    /// Times the slot's worker was replaced (death, time-out, cancel, recycling).
    pub restarts: u64,
    /// CPU time used by the current worker (user + system).
    pub cpu_time: Duration,
    /// Resident memory of the current worker process in bytes; 0 for a
    /// thread, which shares its process's memory.
    pub memory_bytes: u64,
}

/// A snapshot of a pool.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PoolStats {
    /// One entry per worker slot.
    pub workers: Vec<WorkerStats>,
    /// Tasks waiting for a worker.
    pub queued: usize,
}

impl Pool {
    /// Start building a pool (thread mode, one worker per available CPU).
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            config: Config {
                mode: Mode::Thread,
                workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
                method: StartMethod::Spawn,
                task_timeout: None,
                max_tasks_per_worker: None,
                memory_limit: 0,
                retries: 0,
                initializer: None,
                max_message: 0,
                no_new_privs: false,
            },
        }
    }

    /// The pool's mode.
    pub fn mode(&self) -> Mode {
        self.shared.config.mode
    }

    /// How many workers the pool keeps.
    pub fn workers(&self) -> usize {
        self.shared.config.workers
    }

    /// Submit `f(arg)`. Never blocks; the handle resolves to `Err(Closed)`
    /// if the pool is shut down, and to `Err(Codec)` if the argument cannot
    /// be serialized (process mode).
    pub fn submit<A, R>(&self, arg: A, f: fn(A) -> R) -> TaskHandle<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.submit_with(arg, f, task::run_here, task::trampoline::<A, R>)
    }

    /// The one way in for a task: `local` runs the work in thread mode,
    /// `call` is the worker entry in process mode.
    pub(crate) fn submit_with<X, A, R, O>(
        &self,
        arg: X,
        f: fn(A) -> R,
        local: LocalRun<X, A, R, O>,
        call: Trampoline,
    ) -> TaskHandle<O>
    where
        X: Serialize + Send + 'static,
        A: 'static,
        R: 'static,
        O: DeserializeOwned + Send + 'static,
    {
        let id = self.next_task_id();
        let completion = Arc::new(Completion::<O>::new(None));
        let work = match self.shared.config.mode {
            Mode::Thread => {
                let done = completion.clone();
                Work::Thread(Box::new(move || {
                    let result = local(f, arg);
                    Box::new(move || {
                        done.resolve(result);
                    })
                }))
            }
            Mode::Process => match crate::codec::encode(&arg) {
                Ok(encoded) => Work::Process {
                    header: task::header_for(id, call, crate::sys::code::offset_of(f)),
                    bytes: encoded.bytes,
                    fds: encoded.fds,
                },
                Err(e) => {
                    completion.resolve(Err(e));
                    return self.handle(id, completion);
                }
            },
        };
        self.enqueue(id, completion, work, None, false)
    }

    pub(crate) fn next_task_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn handle<O>(&self, id: u64, completion: Arc<Completion<O>>) -> TaskHandle<O> {
        let control = Arc::new(Control::new(Arc::downgrade(&self.shared)));
        TaskHandle { completion, control, id, _result: PhantomData }
    }

    /// Queue `work` as task `id` (at the front for `front`: re-runs of map
    /// items go before new work), or send it straight to an idle worker.
    pub(crate) fn enqueue<O>(
        &self,
        id: u64,
        completion: Arc<Completion<O>>,
        work: Work,
        batch: Option<BatchJob>,
        front: bool,
    ) -> TaskHandle<O>
    where
        Completion<O>: Resolve,
        O: Send + 'static,
    {
        let handle = self.handle(id, completion.clone());
        let control = handle.control.clone();
        // Only a handle someone holds can read its own answer, and a map
        // batch reports item by item: batches go through the driver.
        let direct_ok = batch.is_none();
        let job =
            Job { id, control, completion: completion.clone(), work, attempts: 0, undelivered: 0, batch };
        let mut state = self.shared.lock();
        if state.closed {
            drop(state);
            completion.resolve_err(Error::Closed);
            return handle;
        }
        let direct = direct_ok && state.queue.is_empty() && !self.shared.lanes.is_empty();
        if let Some(claim) = direct.then(|| processes::claim_open_lane(&self.shared, &job)).flatten() {
            drop(state);
            processes::send_direct(&self.shared, claim, job);
            return handle;
        }
        if front {
            state.queue.push_front(job);
        } else {
            state.queue.push_back(job);
        }
        self.shared.queued.store(state.queue.len(), Ordering::SeqCst);
        match self.shared.config.mode {
            Mode::Process => {
                processes::wake_one_parked(&self.shared);
                drop(state);
            }
            Mode::Thread => {
                drop(state);
                self.shared.work_ready.notify_one();
            }
        }
        handle
    }

    /// `f` over every item, results in input order: lazy (items are pulled
    /// as room frees up, so an endless iterator works), with a bounded number
    /// of tasks in flight, and with tiny tasks batched automatically so the
    /// per-task cost does not dominate. A batch runs as one task: if its
    /// worker dies, each of its items fails with the same error.
    pub fn map<I, A, R>(&self, items: I, f: fn(A) -> R) -> Map<'_, I::IntoIter, A, R>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        Map::new(self, items.into_iter(), f)
    }

    /// Like [`map`](Pool::map), but yields `(input index, result)` as soon as
    /// each batch finishes.
    pub fn map_unordered<I, A, R>(&self, items: I, f: fn(A) -> R) -> MapUnordered<'_, I::IntoIter, A, R>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        MapUnordered::new(self, items.into_iter(), f)
    }

    /// Per-worker numbers: id, tasks done, restarts, CPU time, memory.
    pub fn stats(&self) -> PoolStats {
        let workers = (0..self.shared.config.workers)
            .map(|i| {
                let slot = self.shared.slot(i).clone();
                let (cpu_time, memory_bytes) = match (slot.unit, slot.tid) {
                    (Some(UnitId::Process(pid)), _) => {
                        (cpu_time(&format!("/proc/{pid}/stat")), resident_bytes(pid))
                    }
                    (_, Some(tid)) => (cpu_time(&format!("/proc/self/task/{tid}/stat")), 0),
                    _ => (Duration::ZERO, 0),
                };
                WorkerStats {
                    id: slot.unit.unwrap_or(UnitId::Process(0)),
                    tasks_done: slot.tasks_done,
                    restarts: slot.restarts,
                    cpu_time,
                    memory_bytes,
                }
            })
            .collect();
        PoolStats { workers, queued: self.shared.lock().queue.len() }
    }

    /// Finish every submitted task, then stop the workers and wait for
    /// them. Later submits resolve to `Err(Closed)`. Idempotent.
    pub fn shutdown(&self) {
        self.shared.lock().closed = true;
        self.shared.work_ready.notify_all();
        self.shared.deadlines_changed.notify_all();
        for lane in &self.shared.lanes {
            processes::wake(&lane.wake);
        }
        self.join_workers();
    }

    /// Stop now: queued and running tasks resolve to `Err(Cancelled)`;
    /// process workers are killed; pool threads are abandoned (they finish
    /// their current task, whose result is discarded, and exit).
    pub fn terminate(&self) {
        let (queued, running) = {
            let mut state = self.shared.lock();
            state.closed = true;
            state.terminating = true;
            let queued: Vec<Job> = state.queue.drain(..).collect();
            self.shared.queued.store(0, Ordering::SeqCst);
            let mut running: Vec<Arc<dyn Resolve>> = Vec::new();
            for slot in 0..state.running.len() {
                if let Some(r) = state.running[slot].take() {
                    running.push(r.completion);
                    // A busy pool thread cannot be stopped: detach it.
                    state.joinable.retain(|(s, _)| *s != slot);
                }
            }
            for g in state.generations.iter_mut() {
                *g += 1;
            }
            (queued, running)
        };
        for job in queued {
            job.completion.resolve_err(Error::Cancelled);
        }
        for completion in running {
            completion.resolve_err(Error::Cancelled);
        }
        for lane in &self.shared.lanes {
            processes::wake(&lane.wake);
        }
        self.shared.work_ready.notify_all();
        self.shared.deadlines_changed.notify_all();
        self.join_workers();
    }

    fn join_workers(&self) {
        let me = std::thread::current().id();
        loop {
            let batch: Vec<_> = std::mem::take(&mut self.shared.lock().joinable);
            if batch.is_empty() {
                break;
            }
            for (_, handle) in batch {
                // A task that shuts down its own pool cannot wait for itself.
                if handle.thread().id() != me {
                    let _ = handle.join();
                }
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({:?}, {} workers)", self.shared.config.mode, self.shared.config.workers)
    }
}

/// User + system CPU time from a /proc stat file.
fn cpu_time(path: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(path) else { return Duration::ZERO };
    let Some((_, rest)) = stat.rsplit_once(')') else { return Duration::ZERO };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

/// Resident memory of a process, from /proc/PID/statm.
fn resident_bytes(pid: u32) -> u64 {
    let Ok(statm) = std::fs::read_to_string(format!("/proc/{pid}/statm")) else { return 0 };
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * rustix::param::page_size() as u64
}
