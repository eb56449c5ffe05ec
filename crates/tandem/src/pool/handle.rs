//! A task's completion, its cancel control, and the public `TaskHandle`.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::batch::RawBatch;
use super::processes::Processes;
use super::processes::lanes::Patience;
use super::shared::{Counters, Shared};
use super::threads::Threads;
use crate::usage::Usage;
use crate::wire::Frame;
use crate::{Error, UnitId};

/// Something that resolves exactly once: with a result frame or an error.
pub(crate) trait Resolve: Send + Sync {
    /// Resolve from a worker's Done frame. False if already resolved.
    fn resolve_frame(&self, frame: Frame) -> bool;
    /// Resolve from a map batch's outcome. False if already resolved.
    fn resolve_batch(&self, raw: RawBatch) -> bool;
    /// Resolve with an error. False if already resolved.
    fn resolve_err(&self, err: Error) -> bool;
    fn is_resolved(&self) -> bool;
}

pub(crate) struct Completion<R> {
    slot: Mutex<Slot<R>>,
    resolved: AtomicBool,
    ready: Condvar,
    /// map_unordered: told the key of each resolved batch.
    notify: Option<(Mutex<Sender<u64>>, u64)>,
    /// The largest result accepted from a worker (the pool's
    /// `max_message_size`; see [`Completion::with_max_message`]).
    max_message: u64,
    /// The pool's counters, told whether the task completed or failed
    /// when it resolves (a submitted task's; a map batch counts its items
    /// itself).
    counters: Option<Arc<Counters>>,
}

/// A completion's value, and whether anyone sleeps on its condition variable
/// (a notify is a system call: skipped when no one waits).
struct Slot<R> {
    value: Option<Result<R, Error>>,
    sleepers: u32,
    /// The latest poll's waker, if the handle is awaited: woken once, by
    /// `resolve`.
    waker: Option<Waker>,
    /// When it resolved (for [`TaskHandle::join_report`]).
    finished: Option<Instant>,
    /// What the task cost, if its worker measured it.
    usage: Option<Usage>,
    /// What it wrote to stdout and stderr, if its worker captured it.
    output: Option<(Vec<u8>, Vec<u8>)>,
}

impl<R> Completion<R> {
    pub(crate) fn new(notify: Option<(Sender<u64>, u64)>) -> Completion<R> {
        Completion {
            slot: Mutex::new(Slot {
                value: None,
                sleepers: 0,
                waker: None,
                finished: None,
                usage: None,
                output: None,
            }),
            resolved: AtomicBool::new(false),
            ready: Condvar::new(),
            notify: notify.map(|(tx, key)| (Mutex::new(tx), key)),
            max_message: crate::wire::DEFAULT_MAX_MESSAGE,
            counters: None,
        }
    }

    /// Count this task's outcome in `counters` when it resolves.
    pub(crate) fn counting(mut self, counters: Arc<Counters>) -> Completion<R> {
        self.counters = Some(counters);
        self
    }

    /// Accept results of at most `max` bytes (a task's result decoded by
    /// [`Resolve::resolve_frame`]).
    pub(crate) fn with_max_message(mut self, max: u64) -> Completion<R> {
        self.max_message = max;
        self
    }

    /// Store the outcome if none is stored yet.
    pub(crate) fn resolve(&self, value: Result<R, Error>) -> bool {
        self.resolve_with(value, None)
    }

    /// [`resolve`](Self::resolve), with what the task cost if its worker
    /// said.
    fn resolve_with(&self, value: Result<R, Error>, usage: Option<Usage>) -> bool {
        self.resolve_traced(value, usage, None)
    }

    /// [`resolve`](Self::resolve), with what the task cost and wrote.
    fn resolve_traced(
        &self,
        value: Result<R, Error>,
        usage: Option<Usage>,
        output: Option<(Vec<u8>, Vec<u8>)>,
    ) -> bool {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if self.resolved.swap(true, Ordering::SeqCst) {
            return false;
        }
        slot.finished = Some(Instant::now());
        slot.usage = usage;
        slot.output = output;
        // Counted before anyone can see the outcome: a joiner that returns
        // finds its task in the counters.
        if let Some(counters) = &self.counters {
            counters.finished(value.is_ok());
        }
        slot.value = Some(value);
        let sleepers = slot.sleepers > 0;
        let waker = slot.waker.take();
        drop(slot);
        if sleepers {
            self.ready.notify_all();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
        if let Some((tx, key)) = &self.notify {
            let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(*key);
        }
        true
    }

    fn wait(&self, limit: Option<Duration>) -> bool {
        // A short task often finishes within microseconds: look before
        // sleeping on the condition variable (see `backoff`).
        crate::backoff::Backoff::ANSWER.spin_until(|| self.resolved.load(Ordering::SeqCst));
        let deadline = limit.map(|l| Instant::now() + l);
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        while !self.resolved.load(Ordering::SeqCst) {
            slot.sleepers += 1;
            match deadline {
                None => slot = self.ready.wait(slot).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        slot.sleepers -= 1;
                        return false;
                    }
                    slot = self.ready.wait_timeout(slot, left).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
            slot.sleepers -= 1;
        }
        true
    }

    pub(crate) fn resolved(&self) -> bool {
        self.resolved.load(Ordering::SeqCst)
    }

    /// The outcome if there is one; otherwise remember `waker` (replacing
    /// an earlier poll's) for `resolve` to wake. Never blocks.
    pub(crate) fn poll_take(&self, waker: &Waker) -> Poll<Result<R, Error>> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if self.resolved.load(Ordering::SeqCst) {
            slot.waker = None;
            let value = slot.value.take().expect("a handle polled again after it returned its outcome");
            return Poll::Ready(value);
        }
        match &slot.waker {
            Some(old) if old.will_wake(waker) => {}
            _ => slot.waker = Some(waker.clone()),
        }
        Poll::Pending
    }

    fn take(&self) -> Result<R, Error> {
        self.take_traced().0
    }

    /// The outcome, when it resolved, and what the task cost if measured.
    #[allow(clippy::type_complexity)]
    fn take_traced(&self) -> (Result<R, Error>, Instant, Option<Usage>, Option<(Vec<u8>, Vec<u8>)>) {
        self.wait(None);
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let value = slot.value.take().expect("a resolved completion holds its value");
        (value, slot.finished.unwrap_or_else(Instant::now), slot.usage, slot.output.take())
    }
}

impl<R: DeserializeOwned + Send + 'static> Resolve for Completion<R> {
    fn resolve_frame(&self, frame: Frame) -> bool {
        if self.is_resolved() {
            return false;
        }
        let usage = crate::task::done_usage(&frame);
        let output = crate::task::done_output(&frame);
        self.resolve_traced(crate::task::decode_done_within(frame, self.max_message), usage, output)
    }
    fn resolve_batch(&self, _raw: RawBatch) -> bool {
        super::batch::not_a_batch(self)
    }
    fn resolve_err(&self, err: Error) -> bool {
        self.resolve(Err(err))
    }
    fn is_resolved(&self) -> bool {
        self.resolved.load(Ordering::SeqCst)
    }
}

/// Where a task is, for `cancel`.
pub(crate) enum Place {
    Queued,
    /// Running in the process worker of slot `slot`, which the pool's loop
    /// drives.
    InProcess {
        slot: usize,
        pool: Weak<Shared<Processes>>,
    },
    /// Sent by its submitter straight to the idle worker of lane `slot`; its
    /// handle may read the answer itself (see `lanes::claim_open_lane`).
    Direct {
        slot: usize,
        pool: Weak<Shared<Processes>>,
    },
    /// Running on a pool thread: the worker's slot and generation.
    OnThread {
        slot: usize,
        generation: u64,
        pool: Weak<Shared<Threads>>,
    },
    /// Sent to a cluster's broker (feature `cluster`).
    #[cfg(feature = "cluster")]
    Remote {
        pool: Weak<Shared<super::remote::Remote>>,
    },
    Finished,
}

impl Place {
    /// The worker slot's unit, if this place is on a worker.
    fn unit(&self) -> Option<UnitId> {
        match self {
            Place::InProcess { slot, pool } | Place::Direct { slot, pool } => {
                pool.upgrade()?.slot(*slot).unit
            }
            Place::OnThread { slot, pool, .. } => pool.upgrade()?.slot(*slot).unit,
            Place::Queued | Place::Finished => None,
            #[cfg(feature = "cluster")]
            Place::Remote { .. } => None,
        }
    }
}

/// A task's cancel control, shared by its handle and the pool.
pub(crate) struct Control {
    pub place: Mutex<Place>,
    pub cancelled: AtomicBool,
    /// Its runs so far, for [`TaskHandle::join_report`].
    trace: Mutex<Trace>,
}

/// When a task was submitted and started, how often, and on which worker.
struct Trace {
    submitted: Instant,
    first_start: Option<Instant>,
    last_start: Option<Instant>,
    attempts: u32,
    worker: Option<UnitId>,
}

impl Control {
    pub(crate) fn new() -> Control {
        let trace = Trace {
            submitted: Instant::now(),
            first_start: None,
            last_start: None,
            attempts: 0,
            worker: None,
        };
        Control {
            place: Mutex::new(Place::Queued),
            cancelled: AtomicBool::new(false),
            trace: Mutex::new(trace),
        }
    }

    /// Move the task to `place`. Leaving the queue for a worker is a start
    /// (a run; a retry is queued again first), which its trace records.
    pub(crate) fn set(&self, place: Place) {
        let mut current = self.place.lock().unwrap_or_else(|e| e.into_inner());
        // A cluster task starts when it is sent (the worker is on another
        // machine: none is named).
        #[cfg(feature = "cluster")]
        let sent = matches!(place, Place::Remote { .. });
        #[cfg(not(feature = "cluster"))]
        let sent = false;
        let unit = place.unit();
        if matches!(*current, Place::Queued) && (unit.is_some() || sent) {
            let now = Instant::now();
            let mut trace = self.trace.lock().unwrap_or_else(|e| e.into_inner());
            trace.first_start.get_or_insert(now);
            trace.last_start = Some(now);
            trace.attempts += 1;
            trace.worker = unit;
        }
        *current = place;
    }
}

/// What [`TaskHandle::join_report`] tells about a task: its result, and
/// how it ran.
///
/// `cpu` and `peak_memory` are measured by the worker process around the
/// task, in process mode on a pool built with
/// [`reports(true)`](crate::PoolBuilder::reports); `None` otherwise (a
/// thread shares its process's clock and memory with every other thread).
///
/// ```
/// tandem::init();
/// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).reports(true).build().unwrap();
/// let report = pool.submit(21u64, |x| x * 2).join_report();
/// assert_eq!(report.result.unwrap(), 42);
/// assert_eq!(report.attempts, 1);
/// assert!(matches!(report.worker, Some(tandem::UnitId::Process(_))));
/// assert!(report.cpu.is_some() && report.peak_memory.unwrap() > 0);
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct TaskReport<R> {
    /// What [`join`](TaskHandle::join) would have returned.
    pub result: Result<R, Error>,
    /// Who ran it last; `None` if it never ran (cancelled while queued,
    /// refused before it was sent), and on a cluster pool (another
    /// machine's worker: a death's error names its node).
    pub worker: Option<UnitId>,
    /// Runs, retries included (a send to a worker that was already dead
    /// counts as one, although the task never started there).
    pub attempts: u32,
    /// From submit to its first start (to its end if it never started).
    pub queued: Duration,
    /// The last run, from its start until its outcome was in.
    pub ran: Duration,
    /// User + system CPU time of the worker process during the task (its
    /// threads included, programs it ran and waited for not).
    pub cpu: Option<Duration>,
    /// The worker process's peak resident memory while the task ran, in
    /// bytes (`VmHWM`, reset when the task starts; where the kernel cannot
    /// reset it, the worker's peak since it started).
    pub peak_memory: Option<u64>,
    /// What the task wrote to its standard output (it and the programs it
    /// ran), on a process pool built with
    /// [`capture_output(true)`](crate::PoolBuilder::capture_output); `None`
    /// otherwise, and when its worker died (see [`Error::output_tail`]).
    pub stdout: Option<Vec<u8>>,
    /// What it wrote to its standard error, likewise.
    pub stderr: Option<Vec<u8>>,
}

/// The pending result of a task submitted to a [`Pool`](crate::Pool).
///
/// It resolves exactly once, whatever happens to the task: its result, its
/// panic, its worker's death, a time-out, a cancel, or the pool's end.
/// Dropping a handle unjoined lets the task run; its result is discarded.
///
/// ```
/// let pool = tandem::Pool::builder().workers(1).build().unwrap();
/// let h = pool.submit(20u32, |x| x + 1);
/// assert!(h.wait_timeout(std::time::Duration::from_secs(30)));
/// assert!(h.is_finished());
/// assert_eq!(h.join().unwrap(), 21);
/// ```
pub struct TaskHandle<R> {
    pub(crate) completion: Arc<Completion<R>>,
    pub(crate) control: Arc<Control>,
    pub(crate) id: u64,
    /// Set by [`cancel_on_drop`](Self::cancel_on_drop).
    pub(crate) cancel_on_drop: bool,
    /// A poll handed a direct task to the pool's loop (done once).
    pub(crate) handed_over: bool,
    /// When a poll first found a direct task's answer not there yet.
    pub(crate) first_pending: Option<Instant>,
    pub(crate) _result: PhantomData<fn() -> R>,
}

impl<R> TaskHandle<R> {
    /// Wait for the task's outcome, blocking this thread.
    ///
    /// Inside async code this blocks the executor's thread: `.await` the
    /// handle instead (it is a [`Future`] with the same output), which
    /// never blocks and costs no thread while it waits.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let pool = tandem::Pool::builder().workers(1).build().unwrap();
    /// assert_eq!(pool.submit(20u32, |x| x + 1).await.unwrap(), 21);
    /// # });
    /// ```
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(1).build().unwrap();
    /// assert_eq!(pool.submit(20u32, |x| x + 1).join().unwrap(), 21);
    /// let panicked = pool.submit((), |()| -> u8 { panic!("bad input") });
    /// assert!(matches!(panicked.join(), Err(tandem::Error::Panicked { .. })));
    /// ```
    pub fn join(self) -> Result<R, Error> {
        self.read_direct(Patience::Forever);
        self.completion.take()
    }

    /// Wait for the outcome, like [`join`](Self::join), and say how the
    /// task ran: which worker, how many attempts, how long it waited and
    /// ran, and (process mode, with [`reports`](crate::PoolBuilder::reports))
    /// what it cost. See [`TaskReport`].
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(1).build().unwrap();
    /// let report = pool.submit(2u8, |x| x + 1).join_report();
    /// assert_eq!(report.result.unwrap(), 3);
    /// assert_eq!(report.attempts, 1);
    /// assert!(matches!(report.worker, Some(tandem::UnitId::Thread(_))));
    /// assert_eq!((report.cpu, report.peak_memory), (None, None)); // thread mode
    /// ```
    pub fn join_report(self) -> TaskReport<R> {
        self.read_direct(Patience::Forever);
        let (result, finished, usage, output) = self.completion.take_traced();
        let (stdout, stderr) = output.unzip();
        let trace = self.control.trace.lock().unwrap_or_else(|e| e.into_inner());
        let queued = trace.first_start.unwrap_or(finished).saturating_duration_since(trace.submitted);
        let ran = trace.last_start.map_or(Duration::ZERO, |s| finished.saturating_duration_since(s));
        TaskReport {
            result,
            worker: trace.worker,
            attempts: trace.attempts,
            queued,
            ran,
            cpu: usage.map(|u| Duration::from_nanos(u.cpu_nanos)),
            peak_memory: usage.map(|u| u.peak_bytes),
            stdout,
            stderr,
        }
    }

    /// Whether the task has an outcome yet. Never blocks.
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(1).build().unwrap();
    /// let h = pool.submit(1u8, |x| x);
    /// while !h.is_finished() {
    ///     std::thread::yield_now();
    /// }
    /// assert_eq!(h.join().unwrap(), 1);
    /// ```
    pub fn is_finished(&self) -> bool {
        if !self.completion.resolved.load(Ordering::SeqCst) {
            self.read_direct(Patience::None);
        }
        self.completion.resolved.load(Ordering::SeqCst)
    }

    /// Wait at most `limit` for an outcome; true if there is one. The task
    /// is not stopped when the wait ends (see [`cancel`](Self::cancel)).
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = tandem::Pool::builder().workers(1).build().unwrap();
    /// let h = pool.submit(1u8, |x| x);
    /// assert!(h.wait_timeout(Duration::from_secs(30)));
    /// assert_eq!(h.join().unwrap(), 1);
    /// ```
    pub fn wait_timeout(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        self.read_direct(Patience::Until(deadline));
        self.completion.wait(Some(deadline.saturating_duration_since(Instant::now())))
    }

    /// A task sent straight to a process worker: read its answer here
    /// rather than wait for the pool's loop to (see
    /// `lanes::claim_open_lane`).
    /// True if the task was on the direct path.
    fn read_direct(&self, patience: Patience) -> bool {
        let (slot, pool) = match &*self.control.place.lock().unwrap_or_else(|e| e.into_inner()) {
            Place::Direct { slot, pool, .. } => (*slot, pool.clone()),
            _ => return false,
        };
        if let Some(pool) = pool.upgrade() {
            super::processes::lanes::join_direct(&pool, slot, self.id, patience);
        }
        true
    }

    /// The task's number in its pool (as named in error messages).
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(1).build().unwrap();
    /// let (a, b) = (pool.submit(1u8, |x| x), pool.submit(2u8, |x| x));
    /// assert_ne!(a.id(), b.id());
    /// ```
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Cancel the task; true if this call resolved it to `Err(Cancelled)`.
    ///
    /// A queued task never runs. A task running in a process worker is
    /// stopped by killing the worker, which the pool replaces. A task running
    /// on a pool thread cannot be stopped: the handle resolves now, the thread
    /// is no longer counted as a worker (it finishes the task and exits), and
    /// a new thread takes its place so the pool keeps its size.
    ///
    /// ```
    /// use std::time::Duration;
    /// tandem::init();
    /// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).build().unwrap();
    /// let slow = pool.submit(60u64, |s| {
    ///     std::thread::sleep(Duration::from_secs(s));
    ///     s
    /// });
    /// assert!(slow.cancel()); // queued: never runs; running: its worker is killed
    /// assert!(matches!(slow.join(), Err(tandem::Error::Cancelled)));
    /// ```
    pub fn cancel(&self) -> bool {
        cancel_task(&self.control, self.id, || self.completion.resolve(Err(Error::Cancelled)))
    }
}

/// Cancel task `id` of `control`, which `resolve` resolves `Cancelled`
/// (false if it was resolved already): a queued task never runs, a running
/// one is stopped where it runs. True if this call resolved it.
/// (`id` names the task to a cluster pool, which takes its entry back.)
#[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
pub(crate) fn cancel_task(control: &Control, id: u64, resolve: impl FnOnce() -> bool) -> bool {
    let place = control.place.lock().unwrap_or_else(|e| e.into_inner());
    if matches!(*place, Place::Finished) {
        return false;
    }
    control.cancelled.store(true, Ordering::SeqCst);
    if !resolve() {
        return false;
    }
    match &*place {
        Place::InProcess { slot, pool } | Place::Direct { slot, pool } => {
            super::processes::attend(pool, *slot)
        }
        Place::OnThread { slot, generation, pool } => {
            if let Some(pool) = pool.upgrade() {
                super::threads::abandon(&pool, *slot, *generation);
            }
        }
        #[cfg(feature = "cluster")]
        Place::Remote { pool } => {
            // The pool's lock is taken after the place's is let go (its
            // dispatcher sets places under the pool's lock).
            let pool = pool.clone();
            drop(place);
            super::remote::withdraw(&pool, id);
        }
        Place::Queued | Place::Finished => {}
    }
    true
}

impl<R> TaskHandle<R> {
    /// A map batch's way to stop: a queued batch never runs (it resolves
    /// `Cancelled`); a running one finishes its current item and stops,
    /// once its unit sees the stop flag the map set (a process batch's
    /// loop is asked to pass it on).
    pub(crate) fn stop_batch(&self) {
        let place = self.control.place.lock().unwrap_or_else(|e| e.into_inner());
        match &*place {
            Place::Queued => {
                self.control.cancelled.store(true, Ordering::SeqCst);
                self.completion.resolve(Err(Error::Cancelled));
            }
            Place::InProcess { slot, pool } | Place::Direct { slot, pool } => {
                super::processes::attend(pool, *slot)
            }
            #[cfg(feature = "cluster")]
            Place::Remote { pool } => {
                let pool = pool.clone();
                drop(place);
                super::remote::withdraw(&pool, self.id);
            }
            Place::OnThread { .. } | Place::Finished => {}
        }
    }
}

impl<R> TaskHandle<R> {
    /// Make dropping this handle [`cancel`](Self::cancel) its task: for an
    /// awaited handle whose future is dropped before it finished (a lost
    /// `select!` branch, a `tokio::time::timeout` that expired). A running
    /// process task's worker is killed (the pool replaces it); a queued task
    /// never runs. Without it a dropped handle lets its task finish.
    ///
    /// ```
    /// use std::time::Duration;
    /// tandem::init();
    /// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).build().unwrap();
    /// let slow = pool.submit(60u64, |s| {
    ///     std::thread::sleep(Duration::from_secs(s));
    ///     s
    /// });
    /// drop(slow.cancel_on_drop()); // its worker is killed now, not in a minute
    /// assert_eq!(pool.submit(2u8, |x| x * 2).join().unwrap(), 4);
    /// ```
    pub fn cancel_on_drop(mut self) -> TaskHandle<R> {
        self.cancel_on_drop = true;
        self
    }
}

/// Awaiting a handle never blocks the executor: the pool's side (its event
/// loop in process mode, the worker thread in thread mode) resolves
/// the task and wakes the latest waker. A task its submitter sent straight
/// to an idle worker (the direct path) is handed to the loop on the
/// first poll that does not find the answer already there.
///
/// ```
/// # futures::executor::block_on(async {
/// tandem::init();
/// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).build().unwrap();
/// assert_eq!(pool.submit(21u64, |x| x * 2).await.unwrap(), 42);
/// let crashed = pool.submit((), |()| -> u8 { std::process::abort() }).await;
/// assert!(matches!(crashed, Err(tandem::Error::WorkerDied { .. })));
/// # });
/// ```
impl<R> Future for TaskHandle<R> {
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(out) = this.completion.poll_take(cx.waker()) {
            return Poll::Ready(out);
        }
        if !this.handed_over {
            // Take a direct answer that is already there (no blocking wait).
            let direct = this.read_direct(Patience::None);
            if let Poll::Ready(out) = this.completion.poll_take(cx.waker()) {
                return Poll::Ready(out);
            }
            // A short task answers within microseconds: for as long as a
            // `join` would look before sleeping (`Backoff::ANSWER`'s budget),
            // ask to be polled again rather than hand the task to the loop,
            // so the answer is read here, without two more thread wake-ups.
            // The executor runs its other ready tasks in between.
            if direct
                && this.first_pending.get_or_insert_with(Instant::now).elapsed()
                    < crate::backoff::ANSWER_BUDGET
            {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // A poll must not wait on the socket: the pool's loop takes
            // the task over when woken (as for a dropped handle), and its
            // `resolve` wakes the waker stored above.
            this.handed_over = true;
            if let Place::Direct { slot, pool } =
                &*this.control.place.lock().unwrap_or_else(|e| e.into_inner())
            {
                super::processes::attend(pool, *slot);
            }
        }
        Poll::Pending
    }
}

impl<R> Drop for TaskHandle<R> {
    fn drop(&mut self) {
        if self.cancel_on_drop {
            self.cancel();
        }
        // Nobody will read a direct task's answer here: the loop must.
        if !self.completion.resolved.load(Ordering::SeqCst)
            && let Place::Direct { slot, pool } =
                &*self.control.place.lock().unwrap_or_else(|e| e.into_inner())
        {
            super::processes::attend(pool, *slot);
        }
    }
}

impl<R> std::fmt::Debug for TaskHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TaskHandle(task {}, finished: {})", self.id, self.is_finished())
    }
}
