//! Pools: the `concurrent.futures` analogue, one type for threads and processes.
//!
//! Layout: [`backend`] (the seam: what a mode provides; `Pool` holds the
//! common part of either mode), [`builder`] (settings), [`job`] (what is
//! queued, in each mode's shape), [`shared`] (the queue under one lock, the
//! pool's life and per-slot numbers, written once for any mode), [`handle`] (a task's
//! completion, cancel control and public handle), [`threads`] (thread
//! workers and the time-out supervisor), [`processes`] (one event loop
//! thread for every process worker, with its direct path and its map
//! batches), [`batch`] (what a map batch resolves to, and
//! how one runs on a thread), [`map`] (ordered and unordered maps), and
//! [`stats`]. Every mode pulls jobs from one queue under one lock; a job
//! resolves its handle exactly once.

mod backend;
mod batch;
mod builder;
mod feed;
mod handle;
mod job;
mod map;
mod processes;
#[cfg(feature = "cluster")]
pub(crate) mod remote;
mod shared;
mod stats;
mod threads;

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde::de::DeserializeOwned;

use backend::{Backend, Inner};
#[cfg(feature = "cluster")]
pub(crate) use batch::{BatchEnd, RawBatch};
pub use builder::PoolBuilder;
#[cfg(not(feature = "cluster"))]
use handle::Resolve;
use handle::{Completion, Control};
#[cfg(feature = "cluster")]
pub(crate) use handle::{Control as TaskControl, Resolve, cancel_task};
pub use handle::{TaskHandle, TaskReport};
pub(crate) use job::{BatchJob, Job, LocalRun, ProcessWork, ThreadWork};
pub use map::{Map, MapStream, MapUnordered, MapUnorderedStream, Progress};
use shared::Shared;
pub use stats::{PoolStats, WorkerStats};

use crate::Mode;
use crate::task::{self, Trampoline};

/// A pool of worker threads or worker processes behind one API.
///
/// Both modes give the same results, panics, time-outs, cancels and maps;
/// where the OS makes them differ (a thread cannot be killed) the docs of
/// each method say how. A worker process that dies fails only the task it
/// was running, with [`Error::WorkerDied`](crate::Error::WorkerDied); the pool replaces it and goes on.
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
    pub(crate) inner: Inner,
}

impl Pool {
    /// Start building a pool (thread mode, one worker per available CPU).
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(2).build().unwrap();
    /// assert_eq!(pool.workers(), 2);
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
    }

    /// The pool's mode.
    ///
    /// ```
    /// let pool = tandem::Pool::builder().build().unwrap();
    /// assert_eq!(pool.mode(), tandem::Mode::Thread);
    /// ```
    pub fn mode(&self) -> Mode {
        self.config().mode
    }

    /// How many workers the pool keeps.
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(2).build().unwrap();
    /// assert_eq!(pool.workers(), 2);
    /// ```
    pub fn workers(&self) -> usize {
        self.config().workers
    }

    pub(crate) fn config(&self) -> &builder::Config {
        match &self.inner {
            Inner::Threads(s) => &s.config,
            Inner::Processes(s) => &s.config,
            #[cfg(feature = "cluster")]
            Inner::Cluster(s) => &s.config,
        }
    }

    /// Submit `f(arg)`. Never blocks; the handle resolves to `Err(Closed)`
    /// if the pool is shut down, and to `Err(Codec)` if the argument cannot
    /// be serialized (process mode) or is over `max_message_size`.
    ///
    /// ```
    /// use tandem::{Mode, Pool};
    /// tandem::init();
    /// let pool = Pool::builder().mode(Mode::Process).workers(2).build().unwrap();
    /// let h = pool.submit(21u64, |x| x * 2);
    /// assert_eq!(h.join().unwrap(), 42);
    /// ```
    ///
    /// **Big arguments and results** (process mode): above 256 KiB
    /// serialized, a value is serialized straight into shared memory the
    /// sending process keeps for its big messages (an arena, written again
    /// once the reader is done; a sandboxed pool's arguments get a new
    /// sealed memfd each) and only its descriptor crosses the socket; the
    /// other side checks the memfd and copies the bytes out. Bytes cross
    /// fastest as bytes: a `Vec<u8>` or `serde_bytes::ByteBuf` argument or
    /// result is copied once on each side, straight into the value; a field
    /// marked `#[serde(with = "serde_bytes")]` is one copy more, and a
    /// `Vec<u8>` inside another type goes through serde byte by byte. A big
    /// `Vec<u8>` or `ByteBuf` argument is written after the task is queued
    /// and the worker copies it out as it comes, so the two copies overlap:
    /// on the 2-core test machine a `ByteBuf` argument of 1 MiB takes
    /// 104-106 us, 16 MiB 1.6 ms, 64 MiB 39-43 ms, beside 37-39 us, 1.25
    /// ms and 39-40 ms for one copy into a fresh buffer; a 64 MiB `Vec<u8>`
    /// inside a tuple 169 ms. A big `Vec<u8>` or `ByteBuf` *result* is
    /// lent where the machine allows a parent to read its children's
    /// memory (most do; seccomp profiles such as Docker's default do not):
    /// the pool reads it straight out of the worker, one copy, beyond
    /// making it 118-127 us at 1 MiB, 1.6-1.7 ms at 16 MiB, 32-41 ms at
    /// 64 MiB (BENCHMARKS.md, "Bulk data"). Thread mode moves the value.
    ///
    /// ```
    /// use serde_bytes::ByteBuf;
    /// use tandem::{Mode, Pool};
    /// tandem::init();
    /// let pool = Pool::builder().mode(Mode::Process).workers(1).build().unwrap();
    /// let image = ByteBuf::from(vec![1u8; 4 << 20]); // travels in a memfd
    /// let inverted = pool.submit(image, |mut img| {
    ///     img.iter_mut().for_each(|b| *b = !*b);
    ///     img
    /// });
    /// assert!(inverted.join().unwrap().iter().all(|&b| b == 0xfe));
    /// ```
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
        let counters = self.counters();
        shared::Counters::add(&counters.submitted, 1);
        let completion = Arc::new(
            Completion::<O>::new(None)
                .with_max_message(self.config().max_message_or_default())
                .counting(counters),
        );
        match &self.inner {
            Inner::Threads(shared) => {
                let done = completion.clone();
                let work: ThreadWork = Box::new(move || {
                    let result = local(f, arg);
                    Box::new(move || {
                        done.resolve(result);
                    })
                });
                enqueue(shared, id, completion, work, None, false)
            }
            Inner::Processes(shared) => match process_work(&arg, id, f, call, self.config(), true) {
                Ok((work, deferred)) => {
                    let handle = enqueue_process(shared, id, completion, work, None, false);
                    // The worker may be reading already: it copies the
                    // bytes out as they come.
                    if let Some(deferred) = deferred {
                        deferred.finish(&arg);
                    }
                    handle
                }
                Err(e) => {
                    completion.resolve(Err(e));
                    handle(id, completion)
                }
            },
            #[cfg(feature = "cluster")]
            // Read here before it goes across: not streamed.
            Inner::Cluster(shared) => match process_work(&arg, id, f, call, self.config(), false) {
                Ok((work, _)) => enqueue(shared, id, completion, work, None, false),
                Err(e) => {
                    completion.resolve(Err(e));
                    handle(id, completion)
                }
            },
        }
    }

    /// The pool's task counters.
    pub(crate) fn counters(&self) -> Arc<shared::Counters> {
        match &self.inner {
            Inner::Threads(s) => s.counters.clone(),
            Inner::Processes(s) => s.counters.clone(),
            #[cfg(feature = "cluster")]
            Inner::Cluster(s) => s.counters.clone(),
        }
    }

    pub(crate) fn next_task_id(&self) -> u64 {
        match &self.inner {
            Inner::Threads(s) => s.next_id.fetch_add(1, Ordering::Relaxed),
            Inner::Processes(s) => s.next_id.fetch_add(1, Ordering::Relaxed),
            #[cfg(feature = "cluster")]
            Inner::Cluster(s) => s.next_id.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// `f` over every item, results in input order: lazy (items are pulled
    /// as room frees up, so an endless iterator works), with a bounded number
    /// of tasks in flight, and with tiny tasks batched automatically so the
    /// per-task cost does not dominate ([`Map::batch_size`] fixes the size).
    ///
    /// Each item keeps the semantics of a submitted task, whatever its
    /// batch: a worker that dies fails only the item it was running
    /// (`WorkerDied` names it); the items of its batch that finished keep
    /// their results, and those that had not started run again elsewhere
    /// without counting as a try; `retries` counts per item; `task_timeout`
    /// limits each item. Dropping the map stops its batches after the items
    /// already running.
    ///
    /// ```
    /// use tandem::{Error, Mode, Pool};
    /// tandem::init();
    /// let pool = Pool::builder().mode(Mode::Process).workers(2).build().unwrap();
    /// let out: Vec<Result<u64, Error>> = pool.map(0..100u64, |x| if x == 7 { std::process::abort() } else { x }).collect();
    /// // Only the item that crashed its worker failed; its batch's others did not.
    /// assert!(matches!(out[7], Err(Error::WorkerDied { item: Some(7), .. })));
    /// assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 99);
    /// ```
    pub fn map<I, A, R>(&self, items: I, f: fn(A) -> R) -> Map<'_, I::IntoIter, A, R>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        Map::new(self, items.into_iter(), f)
    }

    /// Like [`map`](Pool::map) (the same per-item semantics), but yields
    /// `(input index, result)` as soon as each batch finishes.
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(2).build().unwrap();
    /// let mut sum = 0;
    /// for (i, r) in pool.map_unordered(0..10u64, |x| x * 10) {
    ///     assert_eq!(r.unwrap(), i as u64 * 10);
    ///     sum += i;
    /// }
    /// assert_eq!(sum, 45);
    /// ```
    pub fn map_unordered<I, A, R>(&self, items: I, f: fn(A) -> R) -> MapUnordered<'_, I::IntoIter, A, R>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        MapUnordered::new(self, items.into_iter(), f)
    }

    /// Per-worker numbers: id, tasks done, restarts, CPU time, memory.
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(1).build().unwrap();
    /// pool.submit(1u8, |x| x).join().unwrap();
    /// let stats = pool.stats();
    /// assert_eq!(stats.workers[0].tasks_done, 1);
    /// ```
    pub fn stats(&self) -> PoolStats {
        match &self.inner {
            Inner::Threads(s) => stats::snapshot(s),
            Inner::Processes(s) => stats::snapshot(s),
            #[cfg(feature = "cluster")]
            Inner::Cluster(s) => stats::snapshot(s),
        }
    }

    /// What the sandbox of this pool's workers enforces (see
    /// [`PoolBuilder::sandbox`]), as the first worker read it back from the
    /// kernel: e.g. `["landlock abi 7", "landlock network", "landlock signal
    /// scope", "seccomp", "no_new_privs", "capabilities none", "rlimit core
    /// 0"]`. Empty for a pool without a sandbox.
    ///
    /// ```
    /// use tandem::sandbox::Sandbox;
    /// tandem::init();
    /// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).sandbox(Sandbox::new()).build().unwrap();
    /// let report = pool.sandbox_report();
    /// assert!(report.iter().any(|l| l == "no_new_privs"), "{report:?}");
    /// assert!(tandem::Pool::builder().workers(1).build().unwrap().sandbox_report().is_empty());
    /// ```
    pub fn sandbox_report(&self) -> Vec<String> {
        match &self.inner {
            Inner::Threads(_) => Vec::new(),
            Inner::Processes(s) => s.backend.sandbox_report(),
            #[cfg(feature = "cluster")]
            Inner::Cluster(_) => Vec::new(),
        }
    }

    /// Finish every submitted task, then stop the workers and wait for
    /// them. Later submits resolve to `Err(Closed)`. Idempotent.
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(1).build().unwrap();
    /// let h = pool.submit(1u8, |x| x + 1);
    /// pool.shutdown();
    /// assert_eq!(h.join().unwrap(), 2); // submitted work finished
    /// assert!(matches!(pool.submit(1u8, |x| x).join(), Err(tandem::Error::Closed)));
    /// ```
    pub fn shutdown(&self) {
        match &self.inner {
            Inner::Threads(s) => s.shutdown(),
            Inner::Processes(s) => s.shutdown(),
            #[cfg(feature = "cluster")]
            Inner::Cluster(s) => s.shutdown(),
        }
    }

    /// Stop now: queued and running tasks resolve to `Err(Cancelled)`;
    /// process workers are killed; pool threads are abandoned (they finish
    /// their current task, whose result is discarded, and exit).
    ///
    /// ```
    /// use std::time::Duration;
    /// tandem::init();
    /// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).build().unwrap();
    /// let slow = pool.submit(60u64, |s| {
    ///     std::thread::sleep(Duration::from_secs(s));
    ///     s
    /// });
    /// pool.terminate();
    /// assert!(matches!(slow.join(), Err(tandem::Error::Cancelled)));
    /// ```
    pub fn terminate(&self) {
        match &self.inner {
            Inner::Threads(s) => s.terminate(),
            Inner::Processes(s) => s.terminate(),
            #[cfg(feature = "cluster")]
            Inner::Cluster(s) => s.terminate(),
        }
    }
}

/// A task's frame for a worker process (here or on an agent): its header
/// and encoded argument, and with `stream` (a worker of this process reads
/// it) the argument's bytes to write once the frame is queued (see
/// `codec::encode_argument`).
fn process_work<X: Serialize + 'static, A: 'static, R: 'static>(
    arg: &X,
    id: u64,
    f: fn(A) -> R,
    call: Trampoline,
    config: &builder::Config,
    stream: bool,
) -> Result<(ProcessWork, Option<crate::codec::Deferred>), crate::Error> {
    let max = config.max_message_or_default();
    let (encoded, deferred) = if stream {
        crate::codec::encode_argument(arg, max, config.bulk())?
    } else {
        (crate::codec::encode_message(arg, max, config.bulk())?, None)
    };
    let header = task::header_for(id, call, crate::sys::code::offset_of(f));
    Ok((ProcessWork { header, bytes: encoded.bytes, fds: encoded.fds, pin: encoded.pin }, deferred))
}

/// A handle for task `id` resolving through `completion`.
fn handle<O>(id: u64, completion: Arc<Completion<O>>) -> TaskHandle<O> {
    TaskHandle {
        completion,
        control: Arc::new(Control::new()),
        id,
        cancel_on_drop: false,
        handed_over: false,
        first_pending: None,
        _result: PhantomData,
    }
}

/// Queue `work` as task `id` on a pool of mode `B` (at the front for
/// `front`: map items that must run again go before new work).
pub(crate) fn enqueue<B: Backend, O>(
    shared: &Shared<B>,
    id: u64,
    completion: Arc<Completion<O>>,
    work: B::Work,
    batch: Option<BatchJob>,
    front: bool,
) -> TaskHandle<O>
where
    Completion<O>: Resolve,
    O: Send + 'static,
{
    let (handle, job) = new_job(id, completion, work, batch);
    shared.push(shared.lock(), job, front);
    handle
}

/// Task `id`'s handle and the job that resolves it.
fn new_job<O, W>(
    id: u64,
    completion: Arc<Completion<O>>,
    work: W,
    batch: Option<BatchJob>,
) -> (TaskHandle<O>, Job<W>)
where
    Completion<O>: Resolve,
    O: Send + 'static,
{
    let handle = handle(id, completion.clone());
    let job =
        Job { id, control: handle.control.clone(), completion, work, attempts: 0, undelivered: 0, batch };
    (handle, job)
}

/// [`enqueue`] on a process pool, which sends a small task straight to an
/// idle worker when the queue is empty (see `lanes`). Only a handle someone
/// holds can read its own answer, and a map batch reports item by item:
/// batches always go through the loop.
pub(crate) fn enqueue_process<O>(
    shared: &Arc<Shared<processes::Processes>>,
    id: u64,
    completion: Arc<Completion<O>>,
    work: ProcessWork,
    batch: Option<BatchJob>,
    front: bool,
) -> TaskHandle<O>
where
    Completion<O>: Resolve,
    O: Send + 'static,
{
    let direct_ok = batch.is_none();
    let (handle, job) = new_job(id, completion, work, batch);
    let state = shared.lock();
    let direct = direct_ok && !state.closed && state.queue.is_empty();
    if let Some(claim) = direct.then(|| processes::lanes::claim_open_lane(shared, &job)).flatten() {
        drop(state);
        processes::lanes::send_direct(shared, claim, job);
        return handle;
    }
    shared.push(state, job, front);
    handle
}

#[cfg(feature = "cluster")]
impl Pool {
    /// A cluster agent's way in: run a task or map batch (`items` > 0) that
    /// came from another machine on this process pool, resolving `sink`.
    /// The header's task id is replaced by this pool's. Its control and id,
    /// for [`cancel_task`].
    pub(crate) fn submit_frame(
        &self,
        mut header: [u8; 24],
        bytes: Vec<u8>,
        items: u32,
        sink: Arc<dyn Resolve>,
    ) -> Result<(Arc<Control>, u64), crate::Error> {
        let Inner::Processes(shared) = &self.inner else {
            return Err(crate::Error::Unsupported("a cluster agent runs its tasks on a process pool"));
        };
        let id = self.next_task_id();
        header[..8].copy_from_slice(&id.to_le_bytes());
        let batch = (items > 0).then(|| BatchJob {
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            items,
            clock: None,
        });
        let control = Arc::new(Control::new());
        let work = ProcessWork { header, bytes, fds: Vec::new(), pin: None };
        let job =
            Job { id, control: control.clone(), completion: sink, work, attempts: 0, undelivered: 0, batch };
        shared.push(shared.lock(), job, false);
        Ok((control, id))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({:?}, {} workers)", self.mode(), self.workers())
    }
}
