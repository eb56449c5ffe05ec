//! Pools: the `concurrent.futures` analogue, one type for threads and processes.
//!
//! Layout: [`builder`] (settings), [`job`] (what is queued), [`shared`] (the
//! queue under one lock and per-slot numbers), [`handle`] (a task's
//! completion, cancel control and public handle), [`threads`] (thread
//! workers and the time-out supervisor), [`processes`] (one driver thread per
//! process worker) with [`lanes`] (its direct path) and [`process_batch`] (a
//! map batch in a process), [`batch`] (what a map batch resolves to, and
//! how one runs on a thread), [`map`] (ordered and unordered maps), and
//! [`stats`]. Every mode pulls jobs from one queue under one lock; a job
//! resolves its handle exactly once.

mod batch;
mod builder;
mod feed;
mod handle;
mod job;
mod lanes;
mod map;
mod process_batch;
mod processes;
mod shared;
mod stats;
mod threads;

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use builder::PoolBuilder;
pub use handle::TaskHandle;
use handle::{Completion, Control, Resolve};
pub(crate) use job::{BatchJob, Job, LocalRun, Running, Work};
pub use map::{Map, MapUnordered};
pub(crate) use shared::{Shared, State};
pub use stats::{PoolStats, WorkerStats};

use crate::task::{self, Trampoline};
use crate::{Error, Mode};

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
    pub(crate) shared: Arc<Shared>,
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
        if let Some(claim) = direct.then(|| lanes::claim_open_lane(&self.shared, &job)).flatten() {
            drop(state);
            lanes::send_direct(&self.shared, claim, job);
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
                lanes::wake_one_parked(&self.shared);
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
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(1).build().unwrap();
    /// pool.submit(1u8, |x| x).join().unwrap();
    /// let stats = pool.stats();
    /// assert_eq!(stats.workers[0].tasks_done, 1);
    /// ```
    pub fn stats(&self) -> PoolStats {
        stats::snapshot(&self.shared)
    }

    /// What the sandbox of this pool's workers enforces (see
    /// [`PoolBuilder::sandbox`]), as the first worker read it back from the
    /// kernel: e.g. `["landlock abi 7", "landlock network", "landlock signal
    /// scope", "seccomp", "no_new_privs", "capabilities none", "rlimit core
    /// 0"]`. Empty for a pool without a sandbox.
    pub fn sandbox_report(&self) -> Vec<String> {
        match &*self.shared.sandbox_outcome.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(report)) => report.clone(),
            _ => Vec::new(),
        }
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
